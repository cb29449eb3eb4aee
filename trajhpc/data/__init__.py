"""The API-Bank data: records, calls, domain blocks and the held-out split, the prompt
of each condition, tool docs, token counts, and where the files come from."""

from trajhpc.core.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "apibank": ["Record", "Turn", "bundled_root", "load_dialogue_jsonl", "load_records"],
    "blocks": ["assign_blocks", "block_names", "is_heldout"],
    "ceiling": ["Ceiling", "ceiling", "study_ceiling_rows"],
    "calls": ["Call", "TOOL_SEARCHER", "call_names", "gold_name", "parse_call", "parse_gold"],
    "conditions": ["CONDITIONS", "Example", "build_messages", "tokenize_example", "tokenize_examples"],
    "source": ["SourceError", "pin_fingerprint"],
    "splits": ["StudyData", "load_study_data"],
    "tokens": ["TokenCounts", "count_tokens"],
})
