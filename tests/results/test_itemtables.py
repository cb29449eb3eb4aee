"""Item-level tables: item ids, the item test that repeated units cannot strengthen, the conditional McNemar."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.splits import load_study_data
from trajhpc.results import aggregate as agg
from trajhpc.results import report
from trajhpc.results.itemtables import ITEM_TEST, MCNEMAR_TEST
from trajhpc.results.studyresult import StudyResult
from trajhpc.results.tables import paired_table
from trajhpc.spec import DataSpec

ARMS = ("A", "B")
SEEDS = (0, 1, 2)
ORDERS = [("a", "b", "c"), ("c", "b", "a")]


def _result(root: Path) -> StudyResult:
    (result,) = agg.aggregate([root], resamples=200)
    return result


def _write_unit(study_dir: Path, arm: str, seed: int, order, rows) -> Path:
    """One job of ``arm`` under ``seed`` with the given final prediction rows."""
    spec = sj.spec_for(arm, seed=seed, order=order)
    job = sj.write_job(study_dir, spec, sj.synthetic_matrix(arm, seed, order), blocks=sorted(order), study="s1")
    sj.write_predictions(job, spec, rows)
    return job


def _study(root: Path, copies: int = 1) -> Path:
    """A and B x 3 seeds x 2 orders on sj.ITEMS; ``copies`` > 1 repeats every unit under new seeds
    (seed + 10, + 20, ...) with the same scores and predictions."""
    for arm, seed, order in itertools.product(ARMS, SEEDS, ORDERS):
        rows = sj.synthetic_predictions(arm, seed, order)
        for copy in range(copies):
            _write_unit(root / "s1", arm, seed + 10 * copy, order, rows)
    return root


# ---------------------------------------------------------------- item ids on the real split


def test_default_split_items_have_distinct_ids_and_a_one_unit_test_is_computed_by_hand(tmp_path):
    data = load_study_data(DataSpec())
    records = [(block, r) for block in data.blocks for r in data.heldout[block]]
    assert len(records) == 208 and len({r.uid for _, r in records}) == 208
    # What rows were keyed by before: 24 items share a key with another.
    old = Counter(f"{b}|{r.dialogue_key}|{r.step}" for b, r in records)
    assert sum(n for n in old.values() if n > 1) == 24
    items = [(r.uid, b, r.dialogue_key, r.step) for b, r in records]

    # Discordant items in 11 dialogues: the three whose keys collide, and 8 more.
    colliding = sorted({r.dialogue_key for b, r in records if old[f"{b}|{r.dialogue_key}|{r.step}"] > 1})
    others = [k for k in sorted({r.dialogue_key for _, r in records}) if k not in colliding][:8]
    chosen = {k: j for j, k in enumerate(colliding + others)}
    a_right, b_right, seen = [], [], Counter()
    for uid, _, dialogue, _ in items:
        j, pos = chosen.get(dialogue), seen[dialogue]
        seen[dialogue] += 1
        if j is None:  # concordant: both right on even record indices, both wrong on odd
            both = int(uid.rsplit("#", 1)[1]) % 2 == 0
            a_right.append(both), b_right.append(both)
        elif j % 3 == 2:  # A better on the first item of every third chosen dialogue, else concordant wrong
            a_right.append(pos == 0), b_right.append(False)
        else:  # B better on two items out of three, A on the third
            a_right.append(pos % 3 == 2), b_right.append(pos % 3 != 2)
    root = tmp_path / "runs"
    _write_unit(root / "s1", "A", 0, sj.BLOCKS, sj.prediction_rows(items, a_right))
    _write_unit(root / "s1", "B", 0, sj.BLOCKS, sj.prediction_rows(items, b_right))

    # By hand: discordant counts, the exact McNemar p, and the sign-flip over the dialogues' sums.
    b = sum(y and not x for x, y in zip(a_right, b_right))
    c = sum(x and not y for x, y in zip(a_right, b_right))
    mcnemar = min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))
    sums: dict[str, int] = defaultdict(int)
    for (_, _, dialogue, _), x, y in zip(items, a_right, b_right):
        sums[dialogue] += int(y) - int(x)
    nonzero = [v for v in sums.values() if v]
    assert len(colliding) == 3 and len(nonzero) == 11 and b > c > 0  # 11 dialogues: 2^11 patterns, exact
    patterns = itertools.product((1, -1), repeat=len(nonzero))
    totals = [abs(sum(s * v for s, v in zip(signs, nonzero))) for signs in patterns]
    flip = sum(t >= abs(sum(nonzero)) for t in totals) / len(totals)

    rows = paired_table(_result(root)).filter(pl.col("metric") == "exact", pl.col("test") != "sign-flip")
    item, cond = (rows.filter(pl.col("test") == t).row(0, named=True) for t in (ITEM_TEST, MCNEMAR_TEST))
    for row in (item, cond):
        assert (row["arm"], row["baseline"], row["pairs"], row["items"]) == ("B", "A", 1, 208)
        assert row["mean_diff"] == pytest.approx((b - c) / 208, abs=1e-15)
    assert cond["p_value"] == pytest.approx(mcnemar, rel=1e-12)
    assert item["p_value"] == pytest.approx(flip, rel=1e-12) and item["p_kind"] == "exact"
    assert item["dialogues"] == len(sums) == 69


# ---------------------------------------------------------------- the item test and repeated units


def test_repeated_units_leave_the_item_test_bit_identical(tmp_path):
    """Copies of every job under new seeds: the item test's rows do not move; the conditional McNemar's p shrinks."""
    once = paired_table(_result(_study(tmp_path / "once")))
    twice = paired_table(_result(_study(tmp_path / "twice", copies=2)))
    columns = ["arm", "baseline", "metric", "items", "dialogues", "mean_diff", "ci_lo", "ci_hi", "p_value",
               "p_kind", "draws"]
    first, second = (t.filter(pl.col("test") == ITEM_TEST) for t in (once, twice))
    assert first.height == 2 and first.select(columns).equals(second.select(columns))
    assert first["pairs"].to_list() == [6, 6] and second["pairs"].to_list() == [12, 12]
    mcnemar = [t.filter(pl.col("test") == MCNEMAR_TEST).sort("metric")["p_value"] for t in (once, twice)]
    assert all(q < p for p, q in zip(*mcnemar) if p < 1)


def test_item_rows_lead_with_the_item_test_and_label_mcnemar_conditional(tmp_path):
    result = _result(_study(tmp_path))
    items = paired_table(result).filter(pl.col("test") != "sign-flip")
    assert items["test"].to_list() == [ITEM_TEST, ITEM_TEST, MCNEMAR_TEST, MCNEMAR_TEST]
    assert set(items["p_kind"]) == {"exact"}  # 9 dialogues: every sign pattern enumerated
    assert items["dialogues"].to_list() == [9, 9, None, None]
    text = report.render_markdown(result)
    lines = [line for line in text.splitlines() if line.startswith("| B − A |")]
    tests = [t for line in lines for t in (ITEM_TEST, MCNEMAR_TEST) if f"| {t} |" in line]
    assert tests == [ITEM_TEST, ITEM_TEST, MCNEMAR_TEST, MCNEMAR_TEST]  # exact, name; the item test first
    assert "holds only conditional on the units" in text and "mcnemar-cmh" not in text


# ---------------------------------------------------------------- jobs the item tests cannot pair


def test_jobs_without_item_ids_are_left_out_of_the_item_tests_with_a_note(tmp_path):
    root = _study(tmp_path)
    spec = sj.spec_for("B", seed=0, order=ORDERS[0])
    sj.write_predictions(root / "s1" / spec.job_id, spec, sj.synthetic_predictions("B", 0, ORDERS[0], with_ids=False))
    result = _result(root)
    assert any("leave out 1 job(s)" in n and "no `item` ids" in n for n in result.notes)
    items = paired_table(result).filter(pl.col("test") != "sign-flip")
    assert set(items["pairs"]) == {5}  # the unit of that job is not paired item by item
    assert result.paired["pairs"].max() == 6  # it still counts for the unit-level test
    # Strata need no pairing: that job's rows count there.
    kind = result.strata.filter(pl.col("stratum").str.starts_with("target_kind"), pl.col("metric") == "exact")
    assert dict(kind.group_by("arm").agg(pl.col("n").sum()).iter_rows()) == {"A": 6 * 18, "B": 6 * 18}
    assert "Note: item-level tests leave out 1 job(s)" in report.render_markdown(result)


def test_a_study_written_before_item_ids_prints_no_item_level_number(tmp_path):
    for arm, seed, order in itertools.product(ARMS, SEEDS, ORDERS):
        _write_unit(tmp_path / "s1", arm, seed, order, sj.synthetic_predictions(arm, seed, order, with_ids=False))
    result = _result(tmp_path)
    assert result.item_paired.height == 0
    assert any("leave out 12 job(s)" in n for n in result.notes)


def test_a_job_repeating_an_item_id_is_left_out(tmp_path):
    root = _study(tmp_path)
    spec = sj.spec_for("A", seed=1, order=ORDERS[1])
    rows = sj.synthetic_predictions("A", 1, ORDERS[1])
    rows[1]["item"] = rows[0]["item"]
    sj.write_predictions(root / "s1" / spec.job_id, spec, rows)
    result = _result(root)
    # Named as a corrupt file (it also fails --strict), its items left out of the item tables.
    assert any(spec.job_id in n and "corrupt: 17 distinct items in 18 rows" in n for n in result.notes), result.notes
    assert set(paired_table(result).filter(pl.col("test") != "sign-flip")["pairs"]) == {5}


# ---------------------------------------------------------------- unusable prediction files


def _two_units(root: Path) -> dict[str, Path]:
    items = sj.ITEMS[:4]
    return {arm: _write_unit(root / "s1", arm, 0, ORDERS[0], sj.prediction_rows(items, [True, False, True, False]))
            for arm in ARMS}


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (lambda lines: lines[:1] + [lines[1].replace('"exact": false', '"exact": "false"')] + lines[2:],
         "stage-3.jsonl:2: corrupt: exact: Input should be a valid boolean"),
        (lambda lines: lines[:1] + [lines[1].replace('"exact": false', '"exact": false, "gold_token_acc": "0.5"')]
         + lines[2:], "stage-3.jsonl:2: corrupt: gold_token_acc: Input should be a valid number"),
        (lambda lines: lines[:1] + [lines[1].replace('"exact": false', '"exact": false, "gold_token_acc": 1.5')]
         + lines[2:], "stage-3.jsonl:2: corrupt: gold_token_acc: Input should be less than or equal to 1"),
        (lambda lines: lines[:1] + [lines[1].replace('"exact": false', '"exact": false, "gold_nll": -0.1')]
         + lines[2:], "stage-3.jsonl:2: corrupt: gold_nll: Input should be greater than or equal to 0"),
        (lambda lines: lines[:2] + ["[1, 2]"] + lines[3:], "stage-3.jsonl:3: corrupt: not a JSON object"),
        (lambda lines: lines[:3] + ["{not json"], "stage-3.jsonl:4: corrupt: not a JSON object"),
        (lambda lines: [], "stage-3.jsonl: corrupt: no prediction rows"),
        (None, "stage-3.jsonl: missing"),
    ],
    ids=["string-bool", "string-gold-acc", "gold-acc-above-1", "negative-gold-nll", "not-an-object", "not-json",
         "empty", "missing"],
)
def test_an_unusable_prediction_file_is_named_never_read_as_something_else(tmp_path, damage, detail):
    jobs = _two_units(tmp_path)
    path = jobs["A"] / "predictions" / "stage-3.jsonl"
    if damage is None:
        path.unlink()
    else:
        path.write_text("".join(line + "\n" for line in damage(path.read_text().splitlines())))
    result = _result(tmp_path)
    # A's items are gone from the item tables, and the report says whose and why.
    assert result.item_paired.height == 0
    note = next(n for n in result.notes if "could not be used" in n)
    assert f"{jobs['A']}/predictions/{detail}" in note
    assert result.units.height == 2  # its unit still counts
    with pytest.raises(TrajhpcError, match=f"{jobs['A']}/predictions/" + detail.split(":")[0]):
        agg.aggregate([tmp_path], strict=True, resamples=200)


def test_baselines_say_when_the_jobs_data_settings_differ():
    """The baselines are computed on the first job's data; the note counts the distinct data settings."""
    from trajhpc.results.itemtables import study_baselines

    same = [sj.spec_for("A", seed=s) for s in range(3)]
    frame, note = study_baselines(same)
    assert note is None and frame.height > 0
    other = sj.spec_for("B", data=DataSpec(max_heldout_per_block=5))
    _, note = study_baselines([*same, other, other])
    assert note == "baselines use the first job's data settings (2 differ)"


def test_read_items_gives_the_same_rows_and_problems_however_it_chunks_them(tmp_path, monkeypatch):
    """read_items turns rows into frames a chunk at a time and drops a bad job's rows at the end: a
    chunk of one row gives what one chunk gives, rows in job order, the bad job named and left out."""
    from trajhpc.results import jobrecords
    from trajhpc.results.jobrecords import collect_jobs, read_items

    root = _study(tmp_path)
    spec = sj.spec_for("A", seed=1, order=ORDERS[1])
    rows = sj.synthetic_predictions("A", 1, ORDERS[1])
    rows[1]["item"] = rows[0]["item"]
    sj.write_predictions(root / "s1" / spec.job_id, spec, rows)
    records = collect_jobs([root])
    whole, problems = read_items(records)
    monkeypatch.setattr(jobrecords, "_ITEM_CHUNK_ROWS", 1)
    chunked, chunked_problems = read_items(records)
    assert chunked.equals(whole) and chunked_problems == problems
    assert len(problems) == 1 and spec.job_id in problems[0] and spec.job_id not in set(whole["job_id"])
    assert whole["job_id"].to_list() == sorted(whole["job_id"].to_list())  # jobs in order, each job's rows together
    assert whole.height == 18 * (len({r.path.name for r in records}) - 1)
