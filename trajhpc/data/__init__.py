"""The API-Bank data layer: records, blocks and split, prompt conditions, token counts."""

from trajhpc.data.apibank import Record, Turn, bundled_root, load_dialogue_jsonl, load_records
from trajhpc.data.blocks import assign_blocks, block_names, is_heldout
from trajhpc.data.conditions import CONDITIONS, Example, build_messages, tokenize_example, tokenize_examples
from trajhpc.data.study import StudyData, load_study_data
from trajhpc.data.tokens import TokenCounts, count_tokens

__all__ = [
    "CONDITIONS",
    "Example",
    "Record",
    "StudyData",
    "TokenCounts",
    "Turn",
    "assign_blocks",
    "block_names",
    "build_messages",
    "bundled_root",
    "count_tokens",
    "is_heldout",
    "load_dialogue_jsonl",
    "load_records",
    "load_study_data",
    "tokenize_example",
    "tokenize_examples",
]
