"""Retrieval-equivalent scoring of ToolSearcher calls (``exact_retrieval``).

Half of the lv3 targets are ToolSearcher calls, whose ``keywords`` are free text: a
prediction that paraphrases the gold keywords ("medical treatment information" for
"medical treatment recommendation") fails ``exact`` although it would find the same
tool. Upstream API-Bank counts a ToolSearcher call as correct when its keywords retrieve
the right tool; ``exact_retrieval`` does the same with BM25 (``bm25s``) over the tool
catalogue the study's data knows: every tool named with a description in a ToolSearcher
response of its records, and every tool the bundled documentation describes
(:func:`trajhpc.data.tooldocs.descriptions`). A ToolSearcher prediction is correct when
its keywords' best tool is the gold keywords' best tool; every other target is scored as
``exact``. It is computed from the stored predictions, so a finished study gains it
without rerunning a job.

The retriever is not upstream's (a sentence-embedding model): :func:`catalogue_sanity`
reports how often the gold keywords retrieve the tool the gold call's response named,
the figure that says how far to trust it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from trajhpc.core.errors import TrajhpcError, last_line
from trajhpc.data.apibank import CALL_PREFIX, Record
from trajhpc.data.calls import TOOL_SEARCHER, parse_call, parse_gold
from trajhpc.data.splits import load_study_data
from trajhpc.data.tooldocs import descriptions, searched_descriptions
from trajhpc.jobdir.documents import OK
from trajhpc.results.jobrecords import JobRecord
from trajhpc.spec import DataSpec

if TYPE_CHECKING:
    import bm25s  # imported where an index is built: only a study with predictions needs it

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def name_words(name: str) -> str:
    """``FindDoctorBySpecialty`` -> ``find doctor by specialty``: a tool's name as words BM25 can match."""
    return " ".join(w.lower() for w in _CAMEL.findall(name))


def _description(line: str) -> str:
    """The ``description`` of a description line (JSON), or the line itself when it has none."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return line
    text = value.get("description") if isinstance(value, dict) else None
    return text if isinstance(text, str) else line


def tool_catalogue(records: Iterable[Record]) -> dict[str, str]:
    """Tool name -> the text BM25 indexes (its name as words and its description), sorted by name.

    A tool a ToolSearcher response describes keeps that description (what the searcher
    returned in the data); the bundled documentation adds the tools it alone knows."""
    # A tool two responses describe differently takes the first in file order, whatever order
    # the records come in.
    ordered = sorted(records, key=lambda r: (r.source, r.index))
    lines = {**descriptions(), **searched_descriptions(ordered)}
    return {name: f"{name_words(name)} {_description(lines[name])}" for name in sorted(lines)}


@dataclass(frozen=True)
class ToolRetriever:
    """BM25 over a tool catalogue; :meth:`best` gives the top tool of a query."""

    names: tuple[str, ...]
    index: bm25s.BM25
    # Every job of a study asks about the same gold keywords: each query is scored once.
    _answers: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, catalogue: Mapping[str, str]) -> "ToolRetriever":
        import bm25s

        names = tuple(catalogue)
        index = bm25s.BM25()
        index.index(bm25s.tokenize([catalogue[n] for n in names], show_progress=False), show_progress=False)
        return cls(names, index)

    def best(self, keywords: str) -> str | None:
        """The catalogue's best tool for ``keywords``; None when no word of them is in the catalogue.
        Ties go to the first name in sorted order, so the answer never depends on BM25's internals."""
        if keywords not in self._answers:
            import bm25s

            tokens = bm25s.tokenize([keywords], return_ids=False, show_progress=False)[0]
            scores = self.index.get_scores(tokens) if tokens else None
            top = int(np.argmax(scores)) if scores is not None else 0
            self._answers[keywords] = self.names[top] if scores is not None and scores[top] > 0 else None
        return self._answers[keywords]


def _keywords(text: str, *, gold: bool) -> str | None:
    """The ``keywords`` of a ToolSearcher call in ``text``; None for any other call or none."""
    call = parse_gold(text) if gold else parse_call(text)
    if call is None or call.name != TOOL_SEARCHER:
        return None
    return call.args.get("keywords")


def exact_retrieval(prediction: str, gold: str, exact: bool, retriever: ToolRetriever) -> bool:
    """``exact``, except that a ToolSearcher target is also met by a ToolSearcher call whose
    keywords retrieve the same tool as the gold keywords (when the gold keywords retrieve one)."""
    gold_keywords = _keywords(gold, gold=True)
    if exact or gold_keywords is None:
        return exact
    predicted = _keywords(prediction, gold=False)
    if predicted is None:
        return False
    wanted = retriever.best(gold_keywords)
    return wanted is not None and retriever.best(predicted) == wanted


def _response_name(response: str | None) -> str | None:
    try:
        value = ast.literal_eval((response or "").strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) else None


def searched_tools(records: Sequence[Record]) -> dict[str, str]:
    """Record uid -> the tool the response to its gold ToolSearcher call named.

    The response is in the history of the dialogue's next record (same file, next index,
    next step); a target whose response the data does not hold is left out."""
    by_position = {(r.source, r.index): r for r in records}
    out = {}
    for r in records:
        if _keywords(r.target, gold=True) is None:
            continue
        after = by_position.get((r.source, r.index + 1))
        if after is None or after.dialogue_key != r.dialogue_key or after.step != r.step + 1:
            continue
        call = parse_gold(r.target)
        for turn in after.history:
            if turn.role == "api" and turn.call and parse_gold(CALL_PREFIX + turn.call) == call:
                name = _response_name(turn.response)
                if name is not None:
                    out[r.uid] = name
    return out


@dataclass(frozen=True)
class Sanity:
    """How often the gold keywords retrieve the tool the gold call's response named."""

    hits: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.n if self.n else None


def catalogue_sanity(targets: Sequence[Record], context: Sequence[Record], retriever: ToolRetriever) -> Sanity:
    """:class:`Sanity` over the ToolSearcher ``targets`` whose response ``context`` (all the
    study's records) holds."""
    named = searched_tools(context)
    checked = [(r, named[r.uid]) for r in targets if r.uid in named]
    hits = sum(retriever.best(_keywords(r.target, gold=True) or "") == name for r, name in checked)
    return Sanity(hits, len(checked))


# ---------------------------------------------------------------- a study's prediction rows


@dataclass(frozen=True)
class _Scorer:
    retriever: ToolRetriever
    sanity: Sanity


def _scorer(data: DataSpec) -> _Scorer:
    """The retriever over the catalogue of ``data``'s records, and its sanity on the held-out targets."""
    study = load_study_data(data)
    everything = [r for block in study.blocks for r in (*study.train[block], *study.heldout[block])]
    heldout = [r for block in study.blocks for r in study.heldout[block]]
    retriever = ToolRetriever.build(tool_catalogue(everything))
    return _Scorer(retriever, catalogue_sanity(heldout, everything, retriever))


def add_exact_retrieval(items: pl.DataFrame | None, records: Sequence[JobRecord]) -> tuple[pl.DataFrame | None, list[str]]:
    """``items`` (final prediction rows) with ``exact_retrieval``, and the notes the report prints:
    the catalogue's sanity figure, and why a job's rows could not be scored (their data cannot be
    read here, or the rows lack their text). A row that cannot be scored is null, never ``exact``."""
    if items is None or items.height == 0:
        return items, []
    scorers: dict[str, _Scorer | str] = {}  # one per distinct data spec; a str says why there is none
    data_of: dict[str, str] = {}  # job id -> its data spec (a key of scorers)
    for r in records:
        if r.status != OK or r.spec is None:
            continue
        key = r.spec.data.model_dump_json()
        if key not in scorers:
            try:
                scorers[key] = _scorer(r.spec.data)
            except TrajhpcError as err:
                scorers[key] = last_line(str(err))
        data_of[r.path.name] = key
    # Scored once per distinct (data, prediction, gold, exact): every unit of a study scores the same
    # items and often predicts the same calls, and each call is parsed to score it (a 10,000-job
    # study holds two million rows and far fewer distinct ones).
    retrievers = [s.retriever for s in scorers.values() if isinstance(s, _Scorer)]
    code = {key: i for i, key in enumerate(k for k, s in scorers.items() if isinstance(s, _Scorer))}
    jobs = pl.DataFrame({"job_id": list(data_of), "_data": [code.get(key) for key in data_of.values()]},
                        schema={"job_id": pl.String, "_data": pl.Int64})
    keys = ["_data", "prediction", "gold", "exact"]
    tagged = items.join(jobs, on="job_id", how="left", maintain_order="left")
    distinct = tagged.select(keys).unique()
    values = [
        None if data is None or prediction is None or gold is None
        else exact_retrieval(prediction, gold, exact, retrievers[data])
        for data, prediction, gold, exact in distinct.iter_rows()
    ]
    distinct = distinct.with_columns(pl.Series("exact_retrieval", values, dtype=pl.Boolean))
    scored = tagged.join(distinct, on=keys, how="left", nulls_equal=True, maintain_order="left").drop("_data")
    notes = []
    for scorer in (s for s in scorers.values() if isinstance(s, _Scorer)):
        s = scorer.sanity
        notes.append(
            f"exact_retrieval counts a ToolSearcher call as right when BM25 over the data's {len(scorer.retriever.names)} "
            f"described tools ranks first for its keywords the tool it ranks first for the gold keywords; those gold "
            f"keywords rank first the tool their gold response named for {s.hits} of {s.n} held-out ToolSearcher "
            f"targets ({s.rate:.2f}): the retriever is an approximation of upstream's, read exact_retrieval with that "
            "in mind." if s.rate is not None else "exact_retrieval: no held-out ToolSearcher target with a known response."
        )
    unscored = scored.filter(pl.col("exact_retrieval").is_null())["job_id"].unique().to_list()
    if unscored:
        reasons = sorted({s for s in scorers.values() if isinstance(s, str)}) or ["their prediction rows lack the text"]
        notes.append(f"exact_retrieval not computed for {len(unscored)} job(s): {'; '.join(reasons)}")
    return scored, notes
