"""report.md against a golden file, the methods text, the terminal summary."""

import json

import pytest
import synthetic_jobs as sj  # noqa: E402
from rich.console import Console

from trajhpc.results import aggregate as agg
from trajhpc.results import report
from trajhpc.results.studyresult import StudyResult


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> StudyResult:
    """The fixed synthetic study: 18 complete jobs, one stopped early, one with damaged metrics."""
    root = tmp_path_factory.mktemp("runs")
    sj.write_study(root, "golden", also_under=("B",))  # A and A@B scored under B too: the train x eval section
    sj.write_job(root / "golden", sj.spec_for("B", seed=7), [[0.1] * 3] * 2, study="golden")  # stage 1 of 3
    broken = sj.write_job(root / "golden", sj.spec_for("A", seed=7), [[0.1] * 3] * 4, study="golden")
    (broken / "metrics.json").write_text(json.dumps({"schema": "trajhpc.metrics/1"})[:-1])
    (r,) = agg.aggregate([root])
    return r


def test_report_matches_the_golden_file(result, golden):
    golden("report.md", report.render_markdown(result))


def test_methods_paragraph_is_built_from_the_data(result):
    text = report.methods_paragraph(result)
    assert "20 job directories were found; 18 complete jobs" in text
    assert "2 were excluded (1 corrupt, 1 incomplete)" in text
    assert "3 seeds (0, 1, 2), 2 block orders" in text
    assert "3 pairs of arms, each over 6 matched units" in text and "10,000 resamples" in text and "default_rng(0)" in text
    assert "not API-Bank's execution-based metric" in text


def test_report_links_only_the_plots_it_is_given(result):
    assert "## Plots" not in report.render_markdown(result)
    assert "![rmatrix](rmatrix.png)" in report.render_markdown(result, ["rmatrix.png"])
    text = report.render_markdown(result, ["rmatrix.png", "rmatrix_by_block.png", "loss_curves.png"])
    assert "*R[stage][block] by domain: each block's exact accuracy (top row) and API-name accuracy (second row) " \
        "after each stage, mean over seeds and orders, the stages that trained it outlined; where the jobs " \
        "scored it (eval.gold_likelihood), a third row of teacher-forced gold-token accuracy on its own " \
        "colour scale.*\n\n" \
        "![rmatrix by block](rmatrix_by_block.png)" in text
    assert text.index("rmatrix.png") < text.index("rmatrix_by_block.png") < text.index("loss_curves.png")


def test_numbers_never_show_a_negative_zero():
    assert report._num(-0.0001) == "0.000" and report._num(-0.002) == "-0.002" and report._num(None) == "–"


def test_terminal_summary_lists_arms_pairs_and_exclusions(result):
    console = Console(record=True, width=200)
    report.print_summary(console, result)
    text = console.export_text()
    assert "18 complete jobs, 2 excluded" in text and "1 corrupt" in text and "1 incomplete" in text
    for line in ("B − A@B", "A@B − A", "compute, mean tokens per unit", "FLOPs"):
        assert line in text
    assert "@ total budget" not in text and "token budget" not in text  # the interpolation is exploratory: compute.csv


def test_excluded_table_escapes_cells_and_is_capped(result, monkeypatch):
    import polars as pl

    jobs = pl.DataFrame(
        {
            "study": ["s"] * 3, "job_id": ["j1", "j2", "j3"], "status": ["corrupt"] * 3,
            "reason": ["a | b\nc", "x", "y"], "file": [None] * 3, "path": [""] * 3,
        }
    )
    monkeypatch.setattr(report, "MAX_EXCLUDED_ROWS", 2)
    text = "\n".join(report._excluded_section(jobs))
    assert "| j1 | corrupt | a \\| b c |" in text
    assert "j3" not in text and "… and 1 more: see jobs.csv." in text


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_summary_fits_the_width_with_whole_cells(result, width):
    from conftest import assert_fits

    console = Console(record=True, width=width, color_system=None)
    report.print_summary(console, result)
    text = console.export_text()
    tables = "\n".join(line for line in text.splitlines() if line[:1] in "┏┃┡│└")
    assert_fits(tables, width)
    for arm in result.arms:
        cell = report._ci(report._lookup(result.summary, arm, "exact"))
        assert cell in text  # "mean [lo, hi]" on one line, never wrapped
    assert "B − A" in text and "p" in text
    if width == 120:
        assert "API name excl." in text and "BWT exact" in text and "not shown" not in text
    else:
        assert "not shown at 80 columns:" in text


def test_shortened_prompts_are_a_labelled_note_per_arm(tmp_path):
    """tokens.json counts the training examples and held-out prompts shortened to fit max_seq_len;
    the report names each arm that had any, and says nothing for an arm that had none."""
    dirs = sj.write_study(tmp_path, "cut", arms=("A", "B"), seeds=(0, 1))
    for job_dir in dirs:
        doc = json.loads((job_dir / "tokens.json").read_text())
        if doc["arm"] == "B":
            for stage in doc["stages"][1:]:
                stage.update(truncated_examples=2, cut_examples=1)
            doc["evaluation"] = {"examples": 10, "truncated_examples": 3, "cut_examples": 0, "prompt_room": 864}
        else:
            doc["evaluation"] = {"examples": 10, "truncated_examples": 0, "cut_examples": 0, "prompt_room": 864}
        (job_dir / "tokens.json").write_text(json.dumps(doc))
    (r,) = agg.aggregate([tmp_path])
    text = report.render_markdown(r)
    notes = [line for line in text.splitlines() if "truncated prompts" in line]
    n_train = sum(s["examples"] for d in dirs for s in json.loads((d / "tokens.json").read_text())["stages"]
                  if json.loads((d / "tokens.json").read_text())["arm"] == "B")
    assert notes == [
        f"Note: truncated prompts: arm B trained on 24 of {n_train} examples and was evaluated on 12 of 40 held-out "
        "prompts shortened to fit train.max_seq_len (oldest history turns left out; 12 of them lost the start of the "
        "system message, its API descriptions): its scores are for the shortened prompts (counts summed over its "
        "jobs, tokens.json)"
    ]


def test_the_continual_table_adds_gold_token_columns_only_where_jobs_scored_them(result):
    import dataclasses

    import polars as pl

    def section(r) -> str:
        return report.render_markdown(r).split("## Continual learning", 1)[1].split("\n## ", 1)[0]

    assert not report.scored_gold(result.summary) and "gold-token" not in section(result)
    gold = pl.col("metric").str.ends_with("gold_token_acc")
    scored = result.summary.with_columns(
        pl.when(gold).then(pl.lit(6, pl.Int64)).otherwise(pl.col("n")).alias("n"),
        pl.when(gold).then(pl.lit(0.0123)).otherwise(pl.col("mean")).alias("mean"),
        pl.when(gold).then(pl.lit(0.01)).otherwise(pl.col("ci_lo")).alias("ci_lo"),
        pl.when(gold).then(pl.lit(0.02)).otherwise(pl.col("ci_hi")).alias("ci_hi"),
    )
    text = section(dataclasses.replace(result, summary=scored))
    header = next(line for line in text.splitlines() if line.startswith("| arm |"))
    assert header.endswith("| BWT gold-token | forgetting (Chaudhry) gold-token | forgetting (since learned) gold-token "
                           "| FWT gold-token |")
    assert "0.012 [0.010, 0.020] |" in text and "gold-token: the same metrics on teacher-forced" in text
