"""What ``trajhpc submit`` (its dry run too) checks once, before any job starts: values with
which every job would fail, or would finish having computed nothing worth having.

``load_manifest`` checks each field and the grid pins the data; these checks read the data
files and, where one is needed, the model's folder (its config and tokenizer; never the
weights). The first problem is an InputError at the manifest's line. A hub model that is
not in this machine's Hugging Face cache cannot be checked here and may exist where the jobs
run: it is returned as a problem that a dry run shows and a real submit refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data.apibank import Record
from trajhpc.data.source import SourceError, load_data
from trajhpc.data.splits import StudyData, load_study_data
from trajhpc.spec import TINY_VERSION, DataSpec, tiny_seed
from trajhpc.study.grid import GridJob
from trajhpc.study.manifest import Manifest

# A token is at least one byte of the rendered text, and chat templates add well under this
# many bytes around three messages (tiny 79, SmolLM2 91, Llama 3.1 about 150): an example
# whose message bytes plus this fit is known to fit without loading a tokenizer.
TEMPLATE_BYTES = 256
# Tokens a piece may gain where the template joins it to its neighbours (a word cut at the
# seam); with the messages' own token counts and TEMPLATE_BYTES, a bound that lets most checks
# use the model's tokenizer.json alone (transformers, for the exact count, takes seconds to import).
SEAM_TOKENS = 8
# Examples tokenized at a time while looking for one that fits (shortest in bytes first).
CHUNK = 32
# What LoRA can adapt (peft's LoRA layer types); other modules named in target_modules fail.
_LORA_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D")


def check_study(manifest: Manifest, jobs: Sequence[GridJob]) -> list[tuple[str, str]]:
    """Refuse (InputError at the manifest's line) what would fail every job or evaluate nothing;
    returns the (field, message) problems only a real submit refuses (see the module docstring)."""
    check_settings(manifest)
    if not jobs:
        return []
    studies = StudyLoader(manifest, jobs[0].spec.data)
    ordered = {block for job in jobs for block in job.spec.order}
    check_blocks(manifest, studies.get("none"), ordered)
    deferred: list[tuple[str, str]] = []
    model = ModelFolder(manifest, deferred)
    check_target_modules(manifest, model)
    check_truncation(manifest, jobs, studies, model, ordered)
    return deferred


# ---------------------------------------------------------------- settings alone


def check_settings(manifest: Manifest) -> None:
    """Values that need no file: empty target modules, no room for a prompt, no data file."""
    targets = manifest.lora.target_modules
    advice = "name the modules to adapt, e.g. [q_proj, v_proj], or write all-linear"
    if isinstance(targets, str) and not targets.strip():
        raise manifest.error("lora.target_modules", f"is empty: {advice}")
    if not isinstance(targets, str):
        if not targets:
            raise manifest.error("lora.target_modules", f"lists no module: {advice}")
        for i, name in enumerate(targets):
            if not name.strip():
                raise manifest.error(f"lora.target_modules.{i}", f"is empty: {advice}")
    new, seq = manifest.eval.max_new_tokens, manifest.train.max_seq_len
    if new >= seq:
        field = "eval.max_new_tokens" if manifest.written("eval.max_new_tokens") or not manifest.written(
            "train.max_seq_len") else "train.max_seq_len"
        raise manifest.error(
            field,
            f"eval.max_new_tokens ({new}) must be less than train.max_seq_len ({seq}): a held-out prompt keeps "
            "max_seq_len - max_new_tokens tokens, the rest is room for the generated call",
        )
    if not manifest.data.files:
        raise manifest.error("data.files", "lists no file: there would be no examples to train or evaluate on")


# ---------------------------------------------------------------- data files and blocks


class StudyLoader:
    """The study's records read once (each ``data.files`` entry checked on its own), then split per ``tool_docs``."""

    def __init__(self, manifest: Manifest, data: DataSpec):
        self.manifest = manifest
        self.base = data.model_copy(update={"tool_docs": "none"})
        self.loaded = read_files(manifest, self.base)
        self._studies: dict[str, StudyData] = {}

    def get(self, tool_docs: str) -> StudyData:
        if tool_docs not in self._studies:
            data = self.base.model_copy(update={"tool_docs": tool_docs})
            try:
                self._studies[tool_docs] = load_study_data(data, self.loaded)
            except InputError as err:
                if err.file is None and err.field:
                    raise self.manifest.error(err.field.replace("[", ".").replace("]", ""), err.message) from None
                raise self.manifest.error("data.blocks", str(err)) from None
            except TrajhpcError as err:
                raise self.manifest.error("data.blocks", str(err)) from None
        return self._studies[tool_docs]


def read_files(manifest: Manifest, data: DataSpec) -> tuple[Path, list[Record]]:
    """(data folder, records) of every ``data.files`` entry; one that cannot be read, or holds no
    record, is an InputError at that entry's line naming the file."""
    folder, records = None, []
    for i, name in enumerate(data.files):
        try:
            folder, found = load_data(data.model_copy(update={"files": (name,), "fingerprint": None}))
        except SourceError as err:
            field = f"data.files.{i}" if err.field.startswith("data.files") else err.field
            raise manifest.error(field, err.message) from None
        except TrajhpcError as err:
            raise manifest.error(f"data.files.{i}", str(err)) from None
        if not found:
            path = folder / name
            what = "no .jsonl dialogue" if path.is_dir() else "no record (an empty list)"
            raise manifest.error(f"data.files.{i}", f"{path} holds {what}: every job would find nothing to train on")
        records += found
    return folder, records


def block_field(manifest: Manifest, block: str) -> tuple[str, str]:
    """(manifest field, why) for a block of the partition that gets no record."""
    spec = manifest.data.blocks
    for i, rule in enumerate(spec.rules or ()):
        if rule.block == block:
            return f"data.blocks.rules.{i}", f"regex {rule.regex!r} matches no dialogue's first user utterance"
    if spec.kind == "scenario" and block in (spec.scenarios or {}):
        return f"data.blocks.scenarios.{block}", "no record's lead API belongs to its scenarios"
    if block == spec.default:
        return "data.blocks.default", "every record falls into another block first"
    return "data.blocks", "no record falls into it"


def check_blocks(manifest: Manifest, study: StudyData, ordered: set[str]) -> None:
    """Every block of the partition gets records and held-out examples; every block an order trains, training examples."""
    files = ", ".join(manifest.data.files)
    fraction = manifest.data.heldout_fraction
    for block in study.blocks:
        if not study.dialogues.get(block):
            field, why = block_field(manifest, block)
            raise manifest.error(field, f"block {block!r} gets no dialogue of {files}: {why}; every job would "
                                        "fail on it (change the rule, or leave the block out of the partition)")
    for block in study.blocks:
        if block in ordered and not study.train[block]:
            if not study.heldout[block]:
                raise manifest.error("data.files", f"block {block!r} of {files} has no record whose gold call can be "
                                                   "scored: it has nothing to train or evaluate on")
            raise manifest.error(
                "data.heldout_fraction",
                f"block {block!r} of {files} has no training example: heldout_fraction {fraction} holds out all "
                f"{study.dialogues[block]} of its dialogues, and every job would fail at the stage that trains it",
            )
    empty = [block for block in study.blocks if not study.heldout[block]]
    if len(empty) == len(study.blocks):
        raise manifest.error(
            "data.heldout_fraction",
            f"{fraction} holds out no dialogue of {files} in any block: the study would evaluate nothing "
            "(the default is 0.2)",
        )
    if empty:
        raise manifest.error(
            "data.heldout_fraction",
            f"{fraction} holds out none of the {study.dialogues[empty[0]]} dialogues of block {empty[0]!r} "
            f"({len(empty)} of {len(study.blocks)} blocks have no held-out example): that block would never be "
            "evaluated; raise it",
        )


# ---------------------------------------------------------------- the model


class ModelFolder:
    """The model's folder, found only when a check needs it, and never built here (a built-in model
    is built by the first job that needs it); its tokenizer and module names."""

    def __init__(self, manifest: Manifest, deferred: list[tuple[str, str]]):
        self.manifest = manifest
        self.deferred = deferred
        self._folder: Path | None | bool = False  # False: not looked up yet
        self._tokenizer: Any = None
        if not _built_in(manifest.model):
            self.folder()  # a folder that does not exist fails every job: refused whatever else is checked

    def folder(self) -> Path | None:
        if self._folder is False:
            self._folder = self._find()
        return self._folder or None

    def _find(self) -> Path | None:
        from trajhpc.job.models import default_cache_dir, resolve_model

        spec = self.manifest.model
        if tiny_seed(spec) == 0:
            return resolve_model(spec)  # shipped in the package: always here
        if _built_in(spec):
            return resolve_model(spec) if (default_cache_dir() / _cache_name(spec)).is_dir() else None
        try:
            return resolve_model(spec)
        except TrajhpcError as err:
            if _hub_like(spec):  # may be in the cache where the jobs run
                self.deferred.append(("model", f"{err}; its modules and prompt lengths are not checked"))
                return None
            raise self.manifest.error("model", str(err)) from None

    def fast_tokenizer(self) -> Any:
        """The model's ``tokenizer.json`` read by ``tokenizers`` alone (None without one)."""
        if self.folder() is None or not (self.folder() / "tokenizer.json").is_file():
            return None
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(self.folder() / "tokenizer.json"))
        except Exception:  # noqa: BLE001 - then only the exact count decides
            return None

    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.folder() is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder()))
            # Only lengths are measured here: no "longer than the model's maximum" warning on stderr.
            self._tokenizer.model_max_length = 2**62
        return self._tokenizer

    def modules(self) -> dict[str, str] | None:
        """Module name -> class name of the model, built on the meta device (no weights read)."""
        if self.folder() is None:
            return None
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(str(self.folder()))
            with init_empty_weights():
                model = AutoModelForCausalLM.from_config(config)
        except Exception as err:  # noqa: BLE001 - transformers raises many types for a config it cannot build
            raise self.manifest.error("model", f"{self.folder()}: cannot build the model from its config.json "
                                               f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        return {name: type(module).__name__ for name, module in model.named_modules() if name}


def _built_in(spec: str) -> bool:
    from trajhpc.job.models import SMOLLM2

    return tiny_seed(spec) is not None or spec == SMOLLM2


def _cache_name(spec: str) -> str:
    """The cache folder ``resolve_model`` builds a built-in model into (job.models' naming: a test
    checks the two agree)."""
    from trajhpc.job.models import SMOLLM2, SMOLLM2_VERSION

    seed = tiny_seed(spec)
    return f"tiny-v{TINY_VERSION}-seed{seed}" if seed is not None else f"{SMOLLM2}-v{SMOLLM2_VERSION}"


def _hub_like(spec: str) -> bool:
    """``org/name``, which resolve_model looks up in the Hugging Face cache; a path says where it is."""
    return spec.count("/") == 1 and not spec.startswith(("/", ".", "~")) and not Path(spec).expanduser().exists()


def check_target_modules(manifest: Manifest, model: ModelFolder) -> None:
    """Every ``lora.target_modules`` entry names a module of the model that LoRA can adapt (peft's matching:
    a list entry is a module name or its last dotted parts; a string is a regex over whole names)."""
    import re

    targets = manifest.lora.target_modules
    if targets == "all-linear":
        return
    modules = model.modules()
    if modules is None:
        return
    entries = [(f"lora.target_modules.{i}", t) for i, t in enumerate(targets)] if not isinstance(targets, str) \
        else [("lora.target_modules", targets)]
    for field, target in entries:
        if isinstance(targets, str):
            try:
                matched = [n for n in modules if re.fullmatch(target, n)]
            except re.error as err:
                raise manifest.error(field, f"invalid regex {target!r} ({err})") from None
        else:
            matched = [n for n in modules if n == target or n.endswith("." + target)]
        usable = [n for n in matched if modules[n] in _LORA_TYPES]
        if usable:
            continue
        leaves = sorted({n.rsplit(".", 1)[-1] for n, kind in modules.items() if kind in _LORA_TYPES})
        what = (f"names only {modules[matched[0]]} modules (e.g. {matched[0]}), which LoRA cannot adapt" if matched
                else "matches no module")
        raise manifest.error(field, f"{target!r} {what} of {manifest.model}; its adaptable modules are: "
                                    f"{', '.join(leaves[:20])}")


# ---------------------------------------------------------------- prompt lengths


def check_truncation(
    manifest: Manifest, jobs: Sequence[GridJob], studies: StudyLoader, model: ModelFolder, ordered: set[str]
) -> None:
    """Refuse an arm every training example or every held-out prompt of which is longer than
    ``train.max_seq_len`` allows (each would be shortened: e.g. ``tool_docs: block`` at 512)."""
    seq = manifest.train.max_seq_len
    arms: dict[tuple[str, int | None, str], str] = {}
    for job in jobs:
        spec = job.spec
        arms.setdefault((spec.condition, spec.condition_k, spec.data.tool_docs), spec.arm)
    for (condition, k, docs), arm in arms.items():
        study = studies.get(docs)
        train = [r for block in study.blocks if block in ordered for r in study.train[block]]
        heldout = [r for block in study.blocks for r in study.heldout[block]]
        for what, records, limit, with_target in (
            ("training examples", train, seq, True),
            ("held-out prompts", heldout, seq - manifest.eval.max_new_tokens, False),
        ):
            shortest = _shortest_if_none_fits(records, condition, k, limit, with_target, model)
            if shortest is None:
                continue
            need = shortest if with_target else shortest + manifest.eval.max_new_tokens
            docs_note = f" with tool_docs: {docs}" if docs != "none" else ""
            raise manifest.error(
                "train.max_seq_len",
                f"all {len(records)} {what} of arm {arm}{docs_note} are longer than {limit} tokens "
                f"(the shortest is {shortest} tokens"
                + ("" if with_target else f"; eval.max_new_tokens {manifest.eval.max_new_tokens} is kept for the answer")
                + f"): every one would be shortened, most losing their system message with the API descriptions; "
                f"raise train.max_seq_len to at least {need}"
                + (f", or give this arm less documentation than tool_docs: {docs}" if docs != "none" else ""),
            )


def _contents(record: Record, condition: str, k: int | None, with_target: bool) -> list[str]:
    from trajhpc.data.conditions import build_messages

    messages = build_messages(record, condition, k)
    return [m["content"] for m in (messages if with_target else messages[:2])]


def _message_bytes(record: Record, condition: str, k: int | None, with_target: bool) -> int:
    return sum(len(text.encode()) for text in _contents(record, condition, k, with_target))


def _fits_by_pieces(records: Sequence[Record], condition: str, k: int | None, limit: int, with_target: bool,
                    model: ModelFolder) -> bool:
    """Whether one of ``records`` surely fits: its messages' tokens (tokenizer.json alone) plus the template's bound."""
    fast = model.fast_tokenizer()
    if fast is None:
        return False
    for record in records:
        pieces = _contents(record, condition, k, with_target)
        tokens = sum(len(e.ids) for e in fast.encode_batch(pieces, add_special_tokens=False))
        if tokens + len(pieces) * SEAM_TOKENS + TEMPLATE_BYTES <= limit:
            return True
    return False


def _shortest_if_none_fits(
    records: Sequence[Record], condition: str, k: int | None, limit: int, with_target: bool, model: ModelFolder
) -> int | None:
    """The shortest length (prompt + target, or prompt alone) when no record fits ``limit``; None when one fits,
    there is none, or the model's tokenizer is not at hand."""
    if not records:
        return None
    sized = sorted(records, key=lambda r: _message_bytes(r, condition, k, with_target))
    if _message_bytes(sized[0], condition, k, with_target) + TEMPLATE_BYTES <= limit:
        return None  # fits by bytes alone: no tokenizer needed
    if _fits_by_pieces(sized[:CHUNK], condition, k, limit, with_target, model):
        return None
    tokenizer = model.tokenizer()
    if tokenizer is None:
        return None
    from trajhpc.data.conditions import full_lengths

    shortest = None
    for start in range(0, len(sized), CHUNK):
        for prompt, target in full_lengths(tokenizer, sized[start : start + CHUNK], condition, k=k):
            length = prompt + target if with_target else prompt
            if length <= limit:
                return None
            shortest = length if shortest is None else min(shortest, length)
    return shortest

