"""API-Bank files -> normalized records.

Two record shapes exist:

* JSON list files (``test-data/level-{1,2}-api.json`` with ``file``/``id``,
  ``training-data/lv3-api-train.json`` without): ``instruction`` + ``input`` is the
  prompt, ``output`` or ``expected_output`` the gold call line.
* Raw dialogue ``.jsonl`` files (``lv1-lv2-samples/``): one turn per line with
  roles User/AI/API; every API line becomes one record whose history is the turns
  before it.

The dialogue history is parsed once into :class:`Turn` objects, so the prompt
conditions (``conditions.py``) select turns instead of regex-editing prompt text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Mapping

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data.calls import TOOL_SEARCHER

DESCRIPTIONS_MARKER = "API descriptions:"
GENERATE_MARKER = "Generate API Request:"
CALL_PREFIX = "API-Request: "
# responses-only: an earlier API turn shown by its response alone (the call left out).
RESPONSE_PREFIX = "API-Response: "
# A-slots: an earlier API turn shown as this fixed line: where a call was, not which or what it returned.
OMITTED_CALL_LINE = CALL_PREFIX + "[omitted]"
_ROLE_PREFIXES: tuple[tuple[str, Literal["user", "ai", "api"]], ...] = (
    ("User: ", "user"),
    ("AI: ", "ai"),
    (CALL_PREFIX, "api"),
)
_ROLE_LABELS = {"user": "User: ", "ai": "AI: ", "api": CALL_PREFIX}
# lv3 user lines carry the request time glued to the sentence: "...Indonesia.TIME: 2035-07-15 10:00:00".
_TIME_SUFFIX = re.compile(r"\s*TIME:.*$")
_JSONL_ROLES = {"User": "user", "AI": "ai", "API": "api"}

HF_DATASET = "liminghao1630/API-Bank"


@dataclass(frozen=True)
class Turn:
    """One line of dialogue history.

    ``text`` is the line without its role prefix, verbatim. For API turns ``call`` is
    the ``[Name(...)]`` part and ``response`` what followed ``->`` (None if nothing did).
    """

    role: Literal["user", "ai", "api"]
    text: str
    call: str | None = None
    response: str | None = None

    def line(self, *, with_response: bool = True) -> str:
        """The turn as a prompt line; ``with_response=False`` drops an API turn's ``->...``."""
        if self.role == "api" and not with_response:
            return CALL_PREFIX + (self.call or self.text)
        return _ROLE_LABELS[self.role] + self.text

    def response_line(self) -> str | None:
        """An API turn's response without its call (``API-Response: {...}``); None if it had none."""
        if self.role != "api" or self.response is None:
            return None
        return RESPONSE_PREFIX + self.response


@dataclass(frozen=True)
class Record:
    """One gold API call with the context that precedes it (see docs/CONTRACTS.md)."""

    source: str  # file path relative to the data root
    index: int  # position of the record in its file (0-based)
    dialogue_key: str  # identifies the dialogue: blocks and the held-out split are per dialogue
    step: int  # index of this call within its dialogue (= earlier API turns)
    instruction: str  # the instruction header, text before "API descriptions:"
    api_descriptions: tuple[str, ...]  # one description (a JSON object line) per API
    history: tuple[Turn, ...]
    target: str  # the gold call line "API-Request: [Name(...)]"
    lead_api: str | None  # level-1/2: first '-'-separated token of the dialogue file name

    @property
    def uid(self) -> str:
        """Stable identity across runs: ``source#index``."""
        return f"{self.source}#{self.index}"

    @property
    def api_turns(self) -> tuple[Turn, ...]:
        return tuple(t for t in self.history if t.role == "api")


# ---------------------------------------------------------------- pure parsing


def split_call(rest: str) -> tuple[str, str | None]:
    """Split the text after ``API-Request: `` into (call, response), once.

    The boundary is the ``]->`` that closes the call; two lv3 lines lack the brackets
    (``PharmacyLocator(location=New York)->...``), for which ``)->`` is used.
    """
    for boundary in ("]->", ")->"):
        i = rest.find(boundary)
        if i >= 0:
            return rest[: i + 1], rest[i + 3 :]
    return rest, None


def parse_turn(line: str) -> Turn | None:
    """A prompt line as a Turn, or None if it does not start with a role prefix."""
    for prefix, role in _ROLE_PREFIXES:
        if line.startswith(prefix):
            text = line[len(prefix) :]
            if role == "api":
                call, response = split_call(text)
                return Turn("api", text, call, response)
            return Turn(role, text)
    return None


def parse_input(text: str) -> tuple[tuple[str, ...], tuple[Turn, ...]]:
    """Split a record's ``input`` into (API description lines, history turns).

    Lines before the first turn are API descriptions (lv3 inlines ToolSearcher's there).
    A later line without a role prefix continues the previous turn. Everything from
    ``Generate API Request:`` on is the generation cue and is dropped.
    """
    descriptions: list[str] = []
    turns: list[Turn] = []
    for line in text.split("\n"):
        if line.startswith(GENERATE_MARKER):
            break
        turn = parse_turn(line)
        if turn is not None:
            turns.append(turn)
        elif turns:
            prev = turns.pop()
            joined = prev.text + "\n" + line
            turns.append(parse_turn(_ROLE_LABELS[prev.role] + joined) or Turn(prev.role, joined))
        elif line.strip():
            descriptions.append(line)
    return tuple(descriptions), tuple(turns)


def split_instruction(instruction: str) -> tuple[str, tuple[str, ...]]:
    """(header before ``API descriptions:``, one description per non-empty line after it)."""
    header, marker, rest = instruction.partition(DESCRIPTIONS_MARKER)
    if not marker:
        return instruction, ()
    return header, tuple(line for line in rest.split("\n") if line.strip())


def first_user_key(history: tuple[Turn, ...]) -> str | None:
    """lv3 dialogue key: the first user utterance without its ``TIME: ...`` suffix, stripped.

    Dropping the time merges near-duplicate dialogues, so they cannot leak across blocks.
    """
    for turn in history:
        if turn.role == "user":
            return _TIME_SUFFIX.sub("", turn.text.split("\n", 1)[0]).strip()
    return None


def lead_api_of(file_name: str) -> str:
    """Lead API of a level-1/2 dialogue: ``AddAgenda-AddAlarm-...-level-2-1.jsonl`` -> ``AddAgenda``."""
    return Path(file_name).name.split("-", 1)[0]


def record_from_json(obj: Any, *, path: Path | str, source: str, index: int) -> Record:
    """Normalize one JSON record; bad content -> InputError naming file, record and field."""
    where = f"record {index}"
    if not isinstance(obj, dict):
        raise InputError(path, where, f"expected an object with 'instruction', 'input', 'output', got {type(obj).__name__}")

    def text_field(*names: str) -> str:
        for name in names:
            if name in obj:
                value = obj[name]
                if not isinstance(value, str):
                    raise InputError(path, f"{where}.{name}", f"expected a string, got {type(value).__name__}")
                return value
        raise InputError(path, where, "missing field " + " or ".join(repr(n) for n in names))

    instruction = text_field("instruction")
    input_text = text_field("input")
    target = text_field("output", "expected_output").strip()
    if not target.startswith(CALL_PREFIX.strip()):
        out_field = "output" if "output" in obj else "expected_output"
        raise InputError(
            path, f"{where}.{out_field}",
            f"expected an 'API-Request: [...]' line, got {target[:40]!r} (use the *-api files, not the response files)",
        )
    header, instr_descriptions = split_instruction(instruction)
    input_descriptions, history = parse_input(input_text)
    file_name = obj.get("file")
    if file_name is not None and not isinstance(file_name, str):
        raise InputError(path, f"{where}.file", f"expected a string, got {type(file_name).__name__}")
    if file_name:
        key, lead = file_name, lead_api_of(file_name)
    else:
        key, lead = first_user_key(history), None
        if not key:
            raise InputError(path, f"{where}.input", "no 'User: ' turn to identify the dialogue by")
    return Record(
        source=source,
        index=index,
        dialogue_key=key,
        step=sum(t.role == "api" for t in history),
        instruction=header,
        api_descriptions=instr_descriptions + input_descriptions,
        history=history,
        target=target,
        lead_api=lead,
    )


def format_call(api_name: str, params: Mapping[str, Any]) -> str:
    """``[Name(k='v', ...)]`` as API-Bank writes calls (every value quoted as a string)."""
    args = ", ".join(f"{k}='{v}'" for k, v in params.items())
    return f"[{api_name}({args})]"


# ---------------------------------------------------------------- file loading


def bundled_root() -> Path:
    """The API-Bank folder bundled in the package (lv3 train, level-1/2 api test, all_apis.csv)."""
    return Path(__file__).resolve().parent.parent / "resources" / "api-bank"


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def missing_file_error(path: Path) -> TrajhpcError:
    """A one-line error naming the missing file and how to obtain API-Bank files."""
    return TrajhpcError(
        f"{path}: file not found. The bundled copy has only training-data/lv3-*.json, "
        "test-data/level-{1,2}-api.json and data/all_apis.csv; for other files (e.g. the lv1/lv2 "
        f"training sets) download the Hugging Face dataset {HF_DATASET} on a machine with network "
        "into a local folder (same layout: training-data/, test-data/) and point data.root "
        "(or `trajhpc data inspect --source`) at it"
    )


def read_text_file(path: Path) -> str:
    """A data file's text; a missing file, a folder, unreadable or non-UTF-8 bytes -> one-line error."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise missing_file_error(path) from None
    except IsADirectoryError:
        raise InputError(path, None, "is a folder, expected a data file") from None
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(path, None, f"cannot read file ({err.strerror or err})") from None


def load_records(path: str | Path, *, root: str | Path | None = None) -> list[Record]:
    """Records of a JSON list file (``output`` or ``expected_output`` targets).

    ``root`` makes ``Record.source`` relative to the data folder.
    """
    path = Path(path)
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, None, f"not valid JSON ({err.msg})", line=err.lineno) from None
    if not isinstance(data, list):
        raise InputError(path, None, f"expected a JSON list of records at the top level, got {type(data).__name__}")
    source = _relative(path, Path(root) if root is not None else None)
    return [record_from_json(obj, path=path, source=source, index=i) for i, obj in enumerate(data)]


def description_name(line: str) -> str | None:
    """The API an ``API descriptions`` line describes: its ``name`` (level-1/2) or ``apiCode`` (lv3)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    name = obj.get("name", obj.get("apiCode")) if isinstance(obj, dict) else None
    return name if isinstance(name, str) else None


@cache
def bundled_descriptions() -> dict[str, str]:
    """API name -> description line, from the bundled level-1/level-2 test prompts.

    These are the descriptions of the real tools as upstream prompts show them
    (all_apis.csv describes older versions of the tools).
    """
    found: dict[str, str] = {}
    for name in ("test-data/level-1-api.json", "test-data/level-2-api.json"):
        for record in load_records(bundled_root() / name, root=bundled_root()):
            for line in record.api_descriptions:
                try:
                    api = json.loads(line).get("name")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if isinstance(api, str):
                    found.setdefault(api, line)
    return found


def _jsonl_turn(obj: Any, *, path: Path, line: int) -> Turn:
    if not isinstance(obj, dict) or obj.get("role") not in _JSONL_ROLES:
        raise InputError(path, "role", "expected an object with role User, AI or API", line=line)
    role = _JSONL_ROLES[obj["role"]]
    if role != "api":
        text = obj.get("text")
        if not isinstance(text, str):
            raise InputError(path, "text", f"{obj['role']} line needs a string 'text'", line=line)
        return Turn(role, text)
    name, params = obj.get("api_name"), obj.get("param_dict", {})
    if not isinstance(name, str) or not isinstance(params, dict):
        raise InputError(path, "api_name", "API line needs a string 'api_name' and an object 'param_dict'", line=line)
    call = format_call(name, params)
    result = obj.get("result")
    # History shows the tool's output the way Python prints it ("->success", "->{'token': ...}").
    response = str(result.get("output")) if isinstance(result, dict) else None
    text = call if response is None else f"{call}->{response}"
    return Turn("api", text, call, response)


def load_dialogue_jsonl(
    path: str | Path,
    *,
    root: str | Path | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> list[Record]:
    """One record per API line of a raw dialogue file; its history is the turns before it.

    The prompt follows the level-1/level-2 test files: their instruction header, and
    the descriptions (``descriptions``, default: those in the bundled test prompts) of
    every API the dialogue uses, in order of first use -- or only ToolSearcher's for
    retrieval dialogues (that call ToolSearcher or are named ``*-level-3-*``: level-2 style).
    """
    path = Path(path)
    lines = read_text_file(path).split("\n")
    turns: list[Turn] = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(path, None, f"not valid JSON ({err.msg})", line=n) from None
        turns.append(_jsonl_turn(obj, path=path, line=n))

    descriptions = bundled_descriptions() if descriptions is None else descriptions
    used = list(dict.fromkeys(t.call[1:].split("(", 1)[0] for t in turns if t.role == "api" and t.call))
    # Retrieval dialogues (upstream names them *-level-3-*) describe only ToolSearcher.
    if TOOL_SEARCHER in used or "-level-3-" in path.name:
        used = [TOOL_SEARCHER]
    described = tuple(descriptions[name] for name in used if name in descriptions)
    source = _relative(path, Path(root) if root is not None else None)
    records: list[Record] = []
    for i, turn in enumerate(turns):
        if turn.role != "api":
            continue
        records.append(
            Record(
                source=source,
                index=len(records),
                dialogue_key=path.name,
                step=len(records),
                instruction=level_header(),
                api_descriptions=described,
                history=tuple(turns[:i]),
                target=CALL_PREFIX + (turn.call or ""),
                lead_api=lead_api_of(path.name),
            )
        )
    return records


@cache
def level_header() -> str:
    """The instruction header of the level-1/level-2 test prompts (used for raw dialogues)."""
    first = load_records(bundled_root() / "test-data/level-1-api.json")[0]
    return first.instruction


def load_any(path: str | Path, *, root: str | Path | None = None) -> list[Record]:
    """Records of a JSON list file, a ``.jsonl`` dialogue, or a folder of ``.jsonl`` dialogues."""
    path = Path(path)
    if path.is_dir():
        return [r for f in sorted(path.glob("*.jsonl")) for r in load_dialogue_jsonl(f, root=root)]
    if path.suffix == ".jsonl":
        return load_dialogue_jsonl(path, root=root)
    return load_records(path, root=root)
