"""Static scoring of predicted API calls against gold calls (no execution).

Calls are parsed by :mod:`trajhpc.data.calls`; values are compared as whitespace-stripped
strings. README.md ("How calls are scored") says how this differs from upstream's
execution-based metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from trajhpc.data.calls import TOOL_SEARCHER, parse_call, parse_gold

ERROR_TYPES = ("no_call", "name_mismatch", "missing_arg", "extra_arg", "wrong_value")
# The fractions :func:`summarize` gives per evaluation set (beside ``n`` and ``errors``), in the order
# a job's final scores, the aggregate's tables and the report show them.
SCORE_KEYS = ("exact", "name", "name_excl_toolsearcher", "parse_fail", "arg_f1")
# The teacher-forced scores of the gold call (eval.gold_likelihood; evaluate.teacher_forced), per
# item and as means per block: token accuracy (higher is better) and mean -log p in nats (lower).
GOLD_KEYS = ("gold_token_acc", "gold_nll")


@dataclass(frozen=True)
class Score:
    """How one prediction compares with its gold call.

    ``error`` is the first failing check in the order of ERROR_TYPES, or None when exact.
    Argument precision/recall are over (key, value) pairs and are 0 when there is no
    call or the name is wrong (arguments of another API are not comparable).
    """

    exact: bool
    name: bool
    error: str | None
    arg_precision: float
    arg_recall: float

    @property
    def arg_f1(self) -> float:
        p, r = self.arg_precision, self.arg_recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- scoring


def _pair_scores(pred: dict[str, str], gold: dict[str, str]) -> tuple[float, float]:
    if not pred and not gold:
        return 1.0, 1.0
    if not pred or not gold:
        return 0.0, 0.0
    hits = len(set(pred.items()) & set(gold.items()))
    return hits / len(pred), hits / len(gold)


def score(prediction: str, gold: str) -> Score:
    """Compare a model output with the gold call line.

    Raises ValueError when the gold itself has no call (a data bug, not a model error).
    """
    gold_call = parse_gold(gold)
    if gold_call is None:
        raise ValueError(f"gold has no parsable call: {gold!r}")
    pred = parse_call(prediction)
    if pred is None:
        return Score(False, False, "no_call", 0.0, 0.0)
    if pred.name != gold_call.name:
        return Score(False, False, "name_mismatch", 0.0, 0.0)
    precision, recall = _pair_scores(pred.args, gold_call.args)
    if gold_call.args.keys() - pred.args.keys():
        error: str | None = "missing_arg"
    elif pred.args.keys() - gold_call.args.keys():
        error = "extra_arg"
    elif pred.args != gold_call.args:
        error = "wrong_value"
    else:
        error = None
    return Score(error is None, True, error, precision, recall)


def _mean(values: Sequence[float | bool]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(scores: Sequence[Score], gold_names: Sequence[str | None]) -> dict[str, Any]:
    """Aggregate scores of one evaluation set.

    Fractions are means over examples (None when there are none);
    ``name_excl_toolsearcher`` leaves out examples whose gold is ToolSearcher;
    ``arg_f1`` is the mean per-example F1 of argument precision and recall.
    """
    if len(scores) != len(gold_names):
        raise ValueError(f"{len(scores)} scores but {len(gold_names)} gold names")
    errors = {e: 0 for e in ERROR_TYPES}
    for s in scores:
        if s.error is not None:
            errors[s.error] += 1
    not_ts = [s.name for s, g in zip(scores, gold_names) if g != TOOL_SEARCHER]
    return {
        "n": len(scores),
        "exact": _mean([s.exact for s in scores]),
        "name": _mean([s.name for s in scores]),
        "name_excl_toolsearcher": _mean(not_ts),
        "parse_fail": _mean([s.error == "no_call" for s in scores]),
        "arg_f1": _mean([s.arg_f1 for s in scores]),
        "errors": errors,
    }


def mean_gold_scores(pairs: Sequence[tuple[float | None, float | None]]) -> dict[str, float | None]:
    """Means over items of the teacher-forced (token accuracy, NLL) pairs, items without a gold left out."""
    scored = [p for p in pairs if p[0] is not None]
    return {key: _mean([p[j] for p in scored]) for j, key in enumerate(GOLD_KEYS)}
