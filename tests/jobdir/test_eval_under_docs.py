"""metrics.json's also_under and prediction rows' eval_condition, read strictly (eval.also_under)."""

from __future__ import annotations

import json

import pytest
import synthetic_jobs as sj

from trajhpc.jobdir.documents import CORRUPT, JobProblem, PredictionRow, adapter, read_job_docs
from trajhpc.results.itemtables import read_final_predictions
from trajhpc.spec import EvalSpec

MATRIX = [[0.5, 0.5, 0.5]] * 4


def _job(tmp_path, under=("B",), also_under=None):
    spec = sj.spec_for("A", eval=EvalSpec(also_under=under))
    also = {c: MATRIX for c in under} if also_under is None else also_under
    return spec, sj.write_job(tmp_path / "s", spec, MATRIX, also_under=also)


def test_scores_under_every_listed_condition_are_read(tmp_path):
    _, job_dir = _job(tmp_path)
    _, metrics, _ = read_job_docs(job_dir)
    assert [set(s.also_under) for s in metrics.stages] == [{"B"}] * 4
    assert metrics.stages[3].also_under["B"].per_block["a"].exact == 0.5


def test_a_job_without_the_option_reads_as_before(tmp_path):
    _, job_dir = _job(tmp_path, under=())
    _, metrics, _ = read_job_docs(job_dir)
    assert all(s.also_under == {} for s in metrics.stages)


@pytest.mark.parametrize(
    "under, also, detail",
    [
        (("B",), {}, r"stages\.0\.also_under: scores under \[\], spec\.json's eval\.also_under is \['B'\]"),
        ((), {"B": MATRIX}, r"stages\.0\.also_under: scores under \['B'\], spec\.json's eval\.also_under is \[\]"),
    ],
)
def test_scores_that_do_not_match_the_spec_make_the_job_corrupt(tmp_path, under, also, detail):
    _, job_dir = _job(tmp_path, under=under, also_under=also)
    with pytest.raises(JobProblem, match=detail) as err:
        read_job_docs(job_dir)
    assert err.value.status == CORRUPT


def test_scores_under_a_condition_for_other_blocks_make_the_job_corrupt(tmp_path):
    _, job_dir = _job(tmp_path)
    doc = json.loads((job_dir / "metrics.json").read_text())
    del doc["stages"][2]["also_under"]["B"]["per_block"]["a"]
    (job_dir / "metrics.json").write_text(json.dumps(doc))
    with pytest.raises(JobProblem, match=r"stages\.2\.also_under\.B\.per_block: evaluates \['b', 'c'\]"):
        read_job_docs(job_dir)


def test_prediction_rows_name_a_known_condition_or_none(tmp_path):
    spec, job_dir = _job(tmp_path)
    row = sj.prediction_rows(sj.ITEMS[:1], [True])[0]
    assert adapter(PredictionRow).validate_json(json.dumps(row)).get("eval_condition") is None  # files written before the option
    assert adapter(PredictionRow).validate_json(json.dumps({**row, "eval_condition": "B"}))["eval_condition"] == "B"
    sj.write_predictions(job_dir, spec, [row, {**row, "eval_condition": "Bee"}])
    frame, problem = read_final_predictions(job_dir, 3, spec.job_id)
    assert frame.height == 0 and problem.startswith("predictions/stage-3.jsonl:2: corrupt: eval_condition: Input should be")
    # Rows under another condition are not the arm's items: the item tables read the own rows only.
    sj.write_predictions(job_dir, spec, [row, {**row, "eval_condition": "B", "exact": False}])
    frame, problem = read_final_predictions(job_dir, 3, spec.job_id)
    assert problem is None and frame["exact"].to_list() == [True]
