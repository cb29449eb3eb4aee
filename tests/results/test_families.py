"""paired.csv's families (primary, secondary, exploratory) and the pre-registration check."""

import json
from pathlib import Path

import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402

from trajhpc.jobdir.paths import RECORD, RECORD_SCHEMA
from trajhpc.launch.submission import write_record
from trajhpc.launch.submit import Launch
from trajhpc.results import aggregate as agg
from trajhpc.results import itemstats
from trajhpc.results.itemstats import holm
from trajhpc.results.jobrecords import collect_jobs, recorded_analyses, submission_records
from trajhpc.results.tables import paired_table
from trajhpc.spec import spec_from_dict
from trajhpc.study.comparison import canonical_json, document_sha256
from trajhpc.study.grid import GridJob, expand
from trajhpc.study.manifest import load_manifest

ARMS = "conditions: [A, B, {condition: A, token_budget: {match: B}}]\n"
SECONDARY = ("analysis:\n  secondary:\n    - {metric: name}\n    - {arm: B, baseline: A@B, metric: exact}\n"
             "    - {metric: exact, test: item}\n")


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    """18 complete jobs: arms A, B, A@B x seeds 0-2 x two orders."""
    sj.write_study(tmp_path, "s1")
    return tmp_path


def _manifest(path: Path, root: Path, analysis: str = "") -> Path:
    path.write_text(f"study: s1\nrun_root: {root}\n{ARMS}{analysis}")
    return path


def _aggregate(target: Path):
    (result,) = agg.aggregate([target], resamples=100)
    return result


def _rows(frame: pl.DataFrame, family: str) -> list[tuple]:
    return frame.filter(pl.col("family") == family).select("arm", "baseline", "metric", "test").rows()


# ---------------------------------------------------------------- families


def test_holm_adjusts_within_the_declared_secondary_family_only(study, tmp_path):
    r = _aggregate(_manifest(tmp_path / "m.yaml", study, SECONDARY))
    out = agg.write_outputs(r, plots=False)
    paired = pl.read_csv(out / "paired.csv")
    assert paired.columns[-3:] == ["primary", "family", "p_holm"]
    assert _rows(paired, "primary") == [("B", "A", "exact", "sign-flip")]
    # No item rows here (no predictions): the declared item-level test adds none.
    assert sorted(_rows(paired, "secondary")) == [("B", "A", "name", "sign-flip"), ("B", "A@B", "exact", "sign-flip")]
    assert paired.filter(pl.col("family") == "exploratory").height == paired.height - 3
    secondary = paired.filter(pl.col("family") == "secondary")
    assert secondary["p_holm"].to_list() == pytest.approx(itemstats.holm(secondary["p_value"].to_list()))
    exploratory = paired.filter(pl.col("family") == "exploratory")
    assert exploratory["p_holm"].is_null().all() and exploratory["p_value"].is_not_null().all()
    primary = paired.filter(pl.col("primary")).row(0, named=True)
    assert primary["family"] == "primary" and primary["p_holm"] == primary["p_value"]
    text = (out / "report.md").read_text()
    assert ("Holm adjusts within the secondary family only: the 2 rows of paired.csv that the manifest's "
            "`analysis.secondary` declares (B − A in API name, sign-flip; B − A@B in exact, sign-flip; "
            "B − A in exact, item).") in text
    assert "Every other row is exploratory: its p is unadjusted and its p (Holm) is left empty" in text
    assert "| B − A | API name | sign-flip | secondary | 6 units |" in text
    assert "| A@B − A | exact | sign-flip | exploratory | 6 units |" in text
    paired_section = text.split("## Paired differences")[1].split("##")[0]
    assert "| B − A@B | exact | secondary | 6 |" in paired_section
    assert "| B − A (primary) | exact | primary | 6 |" in paired_section
    assert "| B − A | API name excl. ToolSearcher | exploratory | 6 |" in paired_section


def test_a_secondary_keeps_its_declared_direction(study, tmp_path):
    default = _aggregate(study).paired  # B − A@B by arm rank
    r = _aggregate(_manifest(tmp_path / "m.yaml", study, "analysis: {secondary: [{arm: A@B, baseline: B}]}\n"))
    assert ("A@B", "B") in r.paired.select("arm", "baseline").rows() and ("B", "A@B") not in r.paired.select(
        "arm", "baseline").rows()
    flipped = r.paired.filter((pl.col("baseline") == "B") & (pl.col("metric") == "exact"))["mean_diff"].item()
    assert flipped == pytest.approx(-default.filter((pl.col("baseline") == "A@B") & (pl.col("metric") == "exact"))
                                    ["mean_diff"].item())
    assert _rows(paired_table(r), "secondary") == [("A@B", "B", "exact", "sign-flip")]


def test_without_declared_secondaries_nothing_is_adjusted(study):
    paired = paired_table(_aggregate(study))
    assert _rows(paired, "primary") == [("B", "A", "exact", "sign-flip")]
    assert paired.filter(pl.col("family") == "secondary").height == 0
    assert paired.filter(~pl.col("primary"))["p_holm"].is_null().all()


def test_the_item_test_joins_the_family_when_declared_test_item(study, tmp_path):
    analysis = "analysis:\n  secondary:\n    - {metric: name}\n    - {metric: name, test: item}\n"
    r = _aggregate(_manifest(tmp_path / "m.yaml", study, analysis))
    r.item_paired = pl.DataFrame(
        [("B", "A", "name", "mcnemar-conditional-on-units", 0.0078),
         ("B", "A", "name", "item-sign-flip-by-dialogue", 0.02),
         ("B", "A", "exact", "item-sign-flip-by-dialogue", 0.01)],
        schema=["arm", "baseline", "metric", "test", "p_value"], orient="row",
    )
    paired = paired_table(r)
    # `test: item` takes the item test of its comparison; the McNemar test conditional on the
    # units (its p shrinks with repeated units) stays exploratory whatever is declared.
    assert sorted(_rows(paired, "secondary")) == [
        ("B", "A", "name", "item-sign-flip-by-dialogue"), ("B", "A", "name", "sign-flip")]
    mcnemar = paired.filter(pl.col("test") == "mcnemar-conditional-on-units").row(0, named=True)
    assert (mcnemar["family"], mcnemar["p_holm"]) == ("exploratory", None)
    # B − A in exact: the unit-level row is the primary, its item-level row exploratory.
    assert _rows(paired, "primary") == [("B", "A", "exact", "sign-flip")]
    item_exact = paired.filter((pl.col("test") != "sign-flip") & (pl.col("metric") == "exact")).row(0, named=True)
    assert (item_exact["family"], item_exact["p_holm"]) == ("exploratory", None)
    # Holm over the two secondary rows only, not over every row.
    secondary = paired.filter(pl.col("family") == "secondary").sort("test")
    assert secondary["p_holm"].to_list() == pytest.approx(holm(secondary["p_value"].to_list()))
    assert secondary.filter(pl.col("test") == "item-sign-flip-by-dialogue")["p_holm"].item() <= 2 * 0.02


# ---------------------------------------------------------------- pre-registration


def _submit_records(manifest_path: Path, study_dir: Path, jobs: slice = slice(None)) -> None:
    """What `trajhpc submit` records for each job: its Launch's submitter, through write_record."""
    launch = Launch(load_manifest(manifest_path), manifest_path, study_dir.parent, "local")
    dirs = sorted(d for d in study_dir.iterdir() if (d / "spec.json").exists())
    for job_dir in dirs[jobs]:
        spec = spec_from_dict(json.loads((job_dir / "spec.json").read_text()))
        write_record(GridJob(spec, job_dir.name, study_dir.name, job_dir), launch.submitter, slurm_job_id=None,
                     local_pid=4242)


def test_submit_records_the_analysis_and_its_hash(study, tmp_path):
    manifest = _manifest(tmp_path / "m.yaml", study, SECONDARY)
    _submit_records(manifest, study / "s1")
    document = load_manifest(manifest).analysis.document()
    assert document["secondary"][0] == {"arm": "B", "baseline": "A", "metric": "name", "test": "sign-flip"}
    for record_path in (study / "s1").glob(f"*/{RECORD}"):
        record = json.loads(record_path.read_text())
        assert record["analysis"] == document
        assert record["analysis_sha256"] == document_sha256(document)
        assert len(record["analysis_sha256"]) == 64


def test_an_analysis_changed_after_submission_is_labelled_with_both_versions(study, tmp_path):
    manifest = _manifest(tmp_path / "m.yaml", study, SECONDARY)
    _submit_records(manifest, study / "s1")
    recorded = load_manifest(manifest).analysis.document()
    r = _aggregate(manifest)
    # (The synthetic jobs are not the manifest's grid, whose jobs the aggregate notes as missing.)
    assert not r.analysis_changed and r.recorded_analyses == ((recorded, 18),)
    assert [n for n in r.notes if "have no job directory" not in n and "is in the grid of" not in n] == []
    text = agg.write_outputs(r, plots=False).joinpath("report.md").read_text()
    assert "changed after submission" not in text
    assert "These families are the ones recorded when the jobs were submitted." in text

    ids = sorted(job.job_id for job in expand(load_manifest(manifest)))
    _manifest(manifest, study, "analysis:\n  secondary:\n    - {metric: name}\n    - {arm: A@B, baseline: A}\n")
    assert sorted(job.job_id for job in expand(load_manifest(manifest))) == ids  # no job id changes
    current = load_manifest(manifest).analysis.document()
    for target in (manifest, study):  # named as the target, or found through the jobs' records
        r = _aggregate(target)
        assert r.analysis_changed and r.analysis.document() == current
        assert r.notes[0].startswith("analysis changed after submission: 18 job record(s)")
        text = agg.write_outputs(r, plots=False).joinpath("report.md").read_text()
        assert text.startswith("# Study `s1`\n\n## Analysis changed after submission\n")
        assert (f"| recorded at submission | 18 | {document_sha256(recorded)[:12]} | B − A, exact | "
                "B − A, name (sign-flip); B − A@B, exact (sign-flip); B − A, exact (item) |") in text
        assert (f"| applied in this report | – | {document_sha256(current)[:12]} | B − A, exact | "
                "B − A, name (sign-flip); A@B − A, exact (sign-flip) |") in text
        assert "This analysis changed after submission: see the top of this report." in text

    # Resubmitting under the new analysis does not hide the old one: earlier attempts count too.
    _submit_records(manifest, study / "s1", slice(0, 9))
    r = _aggregate(manifest)
    assert r.analysis_changed and r.recorded_analyses == ((recorded, 18), (current, 9))
    # Without its manifest the aggregate applies the default analysis, and says why it differs.
    manifest.unlink()
    r = _aggregate(study)
    assert r.analysis_changed and r.manifest is None and r.secondary == ()
    text = agg.write_outputs(r, plots=False).joinpath("report.md").read_text()
    assert "No manifest of this study was found, so this report applies the default analysis" in text
    assert "| applied in this report | – | " in text and "| B − A, exact | none |" in text


def test_recorded_analyses_read_leniently_and_fill_new_defaults(study, tmp_path):
    dirs = sorted(d for d in (study / "s1").iterdir() if (d / "spec.json").exists())
    old = {"primary": {"arm": "B", "baseline": "A", "metric": "exact"}}  # recorded before `secondary` existed
    records = [
        {"schema": RECORD_SCHEMA, "analysis": old},
        {"schema": RECORD_SCHEMA, "analysis": "B - A", "previous": "?"},  # damaged: ignored
        {"schema": RECORD_SCHEMA},  # submitted before trajhpc recorded the analysis
        {"schema": RECORD_SCHEMA, "previous": [{"analysis": {"primary": {"metric": "nope"}}}, 7]},
    ]
    for job_dir, record in zip(dirs, records):
        (job_dir / RECORD).write_text(json.dumps(record))
    (dirs[4] / RECORD).write_text("{")
    found = recorded_analyses(submission_records(collect_jobs([study])).values())
    assert found == [({"primary": {"arm": "B", "baseline": "A", "metric": "exact"}, "secondary": []}, 1),
                     ({"primary": {"metric": "nope"}}, 1)]
    # The old record matches today's default analysis once its defaults are filled.
    assert canonical_json(found[0][0]) == canonical_json(_aggregate(study).analysis.document())
