"""Retrieval-equivalent ToolSearcher scoring: BM25 over the study data's tool catalogue."""

from __future__ import annotations

import pytest

from trajhpc.data.splits import load_study_data
from trajhpc.results.retrieval import (
    ToolRetriever,
    catalogue_sanity,
    exact_retrieval,
    name_words,
    searched_tools,
    tool_catalogue,
)
from trajhpc.spec import DataSpec

CATALOGUE = {
    "FindDoctor": "find doctor API for finding doctors by specialty and location.",
    "BookAppointment": "book appointment API for booking an appointment with a doctor at a time.",
    "MedicalTreatmentInfo": "medical treatment info API that returns information about a medical treatment.",
    "TreatmentRecommendation": "treatment recommendation API that recommends a treatment for symptoms.",
}
GOLD = "API-Request: [ToolSearcher(keywords='find a doctor by specialty')]"


@pytest.fixture(scope="module")
def retriever() -> ToolRetriever:
    return ToolRetriever.build(CATALOGUE)


@pytest.fixture(scope="module")
def study():
    data = load_study_data(DataSpec())
    everything = [r for block in data.blocks for r in [*data.train[block], *data.heldout[block]]]
    return data, everything


def test_name_words_split_camel_case_and_acronyms():
    assert name_words("FindDoctorBySpecialtyAndLocation") == "find doctor by specialty and location"
    assert name_words("AIConferenceSearch") == "ai conference search"
    assert name_words("GetToday") == "get today"


def test_best_tool_and_nothing_for_unknown_words(retriever):
    assert retriever.best("doctor specialty") == "FindDoctor"
    assert retriever.best("book an appointment") == "BookAppointment"
    assert retriever.best("zebra quantum") is None
    assert retriever.best("") is None


def test_a_paraphrase_that_retrieves_the_gold_tool_counts(retriever):
    paraphrase = "API-Request: [ToolSearcher(keywords='doctors by specialty and location')]"
    assert exact_retrieval(paraphrase, GOLD, False, retriever)
    other_tool = "API-Request: [ToolSearcher(keywords='book appointment')]"
    assert not exact_retrieval(other_tool, GOLD, False, retriever)
    assert not exact_retrieval("API-Request: [FindDoctor(specialty='x')]", GOLD, False, retriever)
    assert not exact_retrieval("no call at all", GOLD, False, retriever)
    assert exact_retrieval(GOLD, GOLD, True, retriever)  # exact stays correct


def test_other_targets_are_scored_as_exact(retriever):
    gold = "API-Request: [FindDoctor(specialty='cardiology')]"
    assert exact_retrieval(gold, gold, True, retriever)
    assert not exact_retrieval("API-Request: [FindDoctor(specialty='cardio')]", gold, False, retriever)


def test_gold_keywords_that_retrieve_nothing_need_an_exact_call(retriever):
    gold = "API-Request: [ToolSearcher(keywords='zebra quantum')]"
    assert not exact_retrieval("API-Request: [ToolSearcher(keywords='quantum zebra')]", gold, False, retriever)


def test_the_catalogue_holds_the_searched_lv3_tools_and_the_documented_ones(study):
    _, everything = study
    catalogue = tool_catalogue(everything)
    assert list(catalogue) == sorted(catalogue)
    assert "FindDoctorBySpecialtyAndLocation" in catalogue  # only an lv3 ToolSearcher response describes it
    assert "AddReminder" in catalogue  # the bundled level-1 documentation
    assert catalogue["FindDoctorBySpecialtyAndLocation"].startswith("find doctor by specialty and location API")


def test_the_gold_response_of_a_searcher_call_is_found_in_the_next_record(study):
    _, everything = study
    named = searched_tools(everything)
    first = next(r for r in everything if r.uid in named and "find doctor by specialty" in r.target)
    assert named[first.uid] == "FindDoctorBySpecialtyAndLocation"
    assert all("ToolSearcher" in r.target for r in everything if r.uid in named)


def test_catalogue_sanity_on_the_default_split(study):
    """How often gold keywords retrieve the tool the gold response named: the figure the
    report prints beside exact_retrieval (0.65 of the held-out ToolSearcher targets)."""
    data, everything = study
    heldout = [r for block in data.blocks for r in data.heldout[block]]
    sanity = catalogue_sanity(heldout, everything, ToolRetriever.build(tool_catalogue(everything)))
    assert (sanity.hits, sanity.n) == (60, 92)
    assert sanity.rate == pytest.approx(60 / 92)


def test_the_catalogue_does_not_depend_on_record_order(study):
    _, everything = study
    assert tool_catalogue(everything) == tool_catalogue(list(reversed(everything)))


# ---------------------------------------------------------------- in the aggregate

SEARCH = "API-Request: [ToolSearcher(keywords='{}')]"
FOUND = ("training-data/lv3-api-train.json#83", "a", "d83", 0)  # gold: find doctor by specialty and location
TOOL = ("training-data/lv3-api-train.json#84", "a", "d83", 1)


def _rows(paraphrase: str) -> list[dict]:
    import synthetic_jobs as sj

    rows = sj.prediction_rows([FOUND, TOOL], [False, True])
    rows[0].update(prediction=SEARCH.format(paraphrase), gold=SEARCH.format("find doctor by specialty and location"))
    return rows


def test_a_finished_study_gains_exact_retrieval_from_its_predictions(tmp_path):
    """B paraphrases the gold keywords into ones that retrieve the same tool, A into another tool's:
    both fail exact on the ToolSearcher item, only B passes exact_retrieval."""
    import json

    import polars as pl
    import synthetic_jobs as sj

    from trajhpc.results.aggregate import aggregate
    from trajhpc.results.tables import paired_table

    for job_dir in sj.write_study(tmp_path, "s1", arms=("A", "B")):
        spec = sj.JobSpec.model_validate(json.loads((job_dir / "spec.json").read_text()))
        words = "doctors by specialty and location" if spec.condition == "B" else "book an appointment"
        sj.write_predictions(job_dir, spec, _rows(words))
    (result,) = aggregate([tmp_path], resamples=200)
    units = result.units.sort("arm")
    # One block: the mean of a ToolSearcher item (0 or 1) and an exact tool call (1).
    assert set(units.filter(pl.col("arm") == "A")["exact_retrieval"]) == {0.5}
    assert set(units.filter(pl.col("arm") == "B")["exact_retrieval"]) == {1.0}
    summary = result.summary.filter(pl.col("metric") == "exact_retrieval")
    assert dict(zip(summary["arm"], summary["mean"])) == {"A": 0.5, "B": 1.0}
    row = paired_table(result).filter((pl.col("metric") == "exact_retrieval") & (pl.col("test") == "sign-flip"))
    assert row["mean_diff"].to_list() == [0.5] and row["family"].to_list() == ["exploratory"]
    assert any("60 of 92 held-out ToolSearcher targets (0.65)" in note for note in result.notes)


def test_rows_without_their_text_are_not_scored_and_the_report_says_so(tmp_path):
    import json

    import synthetic_jobs as sj

    from trajhpc.results.aggregate import aggregate

    for job_dir in sj.write_study(tmp_path, "s1", arms=("A", "B"), seeds=(0,)):
        spec = sj.JobSpec.model_validate(json.loads((job_dir / "spec.json").read_text()))
        rows = _rows("x")
        for r in rows:
            del r["prediction"]
        sj.write_predictions(job_dir, spec, rows)
    (result,) = aggregate([tmp_path], resamples=200)
    assert result.units["exact_retrieval"].is_null().all()
    assert any("exact_retrieval not computed for 4 job(s)" in note for note in result.notes)


def test_without_prediction_files_paired_csv_leaves_exact_retrieval_out_unless_declared(tmp_path):
    import synthetic_jobs as sj

    from trajhpc.results import tables as tbl
    from trajhpc.results.aggregate import aggregate
    from trajhpc.study.comparison import Analysis

    sj.write_study(tmp_path, "s1", arms=("A", "B"), seeds=(0,))
    (result,) = aggregate([tmp_path], resamples=200)
    assert "exact_retrieval" not in tbl.compared_metrics(result.units)
    assert "exact_retrieval" not in result.paired["metric"].to_list()
    declared = Analysis.model_validate({"secondary": [{"metric": "exact_retrieval"}]})
    assert "exact_retrieval" in tbl.compared_metrics(result.units, declared)  # its missing pairs must show


def test_a_study_scores_each_row_as_exact_retrieval_does_alone(tmp_path):
    """Rows are scored once per distinct (data, prediction, gold, exact): the result must be, row by
    row and in the rows' order, what exact_retrieval gives each row alone (null for a job whose data
    cannot be read or a row without its text)."""
    from pathlib import Path

    import polars as pl
    import synthetic_jobs as sj

    from trajhpc.jobdir.documents import OK
    from trajhpc.results.itemtables import _ITEM_SCHEMA
    from trajhpc.results.jobrecords import JobRecord
    from trajhpc.results.retrieval import _scorer, add_exact_retrieval

    good = sj.spec_for("B", seed=0, order=("care", "meds", "fitness", "cost"))
    unreadable = good.model_copy(update={"data": DataSpec(root=str(tmp_path / "nowhere"))})
    records = [JobRecord(Path(f"s/{name}"), OK, spec=spec) for name, spec in (("j1", good), ("j2", good), ("j3", unreadable))]
    gold = SEARCH.format("find doctor by specialty and location")
    predictions = [SEARCH.format("doctors by specialty and location"), SEARCH.format("book an appointment"), None, "x"]
    rows = [
        {"job_id": job, "prediction": p, "gold": g, "exact": ex}
        for job in ("j3", "j1", "j2") for p in predictions for g in (gold, TOOL[0], None) for ex in (False, True)
    ]
    items = pl.DataFrame(rows * 2, schema={k: _ITEM_SCHEMA[k] for k in ("job_id", "prediction", "gold", "exact")})
    scored, notes = add_exact_retrieval(items, records)
    retriever = _scorer(good.data).retriever
    expected = [
        None if r["job_id"] == "j3" or r["prediction"] is None or r["gold"] is None
        else exact_retrieval(r["prediction"], r["gold"], r["exact"], retriever)
        for r in rows * 2
    ]
    assert scored.drop("exact_retrieval").equals(items)
    assert scored["exact_retrieval"].to_list() == expected
    assert True in expected and False in expected
    assert any("exact_retrieval not computed for 3 job(s)" in n for n in notes)
