"""`trajhpc data inspect --ceiling`: each condition's (or manifest arm's) ceiling from the data alone."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO
from rich.console import Console

from trajhpc.data.splits import load_study_data
from trajhpc.spec import DataSpec
from trajhpc.study.ceilingtable import PLAIN_CONDITIONS, condition_rows, manifest_rows
from trajhpc.study.inspect import inspect_command
from trajhpc.study.manifest import parse_manifest


def test_inspect_ceiling_golden(golden):
    console = Console(record=True, width=80, color_system=None)
    inspect_command(console, source=None, files=None, blocks=None, heldout_fraction=None, ceiling=True)
    text = console.export_text()
    table = text[text.index("ceiling of each condition"):]
    assert all(len(line) <= 80 for line in table.splitlines())
    golden("data_inspect_ceiling.txt", table)


def test_without_the_flag_no_ceiling_is_printed():
    console = Console(record=True, width=80, color_system=None)
    inspect_command(console, source=None, files=None, blocks=None, heldout_fraction=None)
    assert "ceiling" not in console.export_text()


def test_condition_rows_cover_every_condition_without_k_on_both_splits():
    rows = condition_rows(load_study_data(DataSpec()), DataSpec())
    assert [(r["arm"], r["split"]) for r in rows] == [(c, s) for c in PLAIN_CONDITIONS for s in ("train", "heldout")]
    held = {r["arm"]: r for r in rows if r["split"] == "heldout"}
    assert (held["A"]["distinct_prompts"], round(held["A"]["ceiling_exact"], 3), round(held["A"]["ceiling_name"], 3)) \
        == (71, 0.356, 0.505)
    assert round(held["A-slots"]["ceiling_exact"], 3) == 0.986 and round(held["B"]["ceiling_exact"], 3) == 0.990


def test_manifest_rows_follow_the_arms_as_their_jobs_run():
    manifest = parse_manifest(
        "study: s\nconditions:\n  - A\n  - {condition: last-k, k: 1}\n  - {condition: A, tool_docs: dialogue}\n"
        "  - {condition: A, token_budget: {match: B}}\n"
        "orders:\n  - [care-appointments, medication-treatment]\n"
        "data: {max_train_per_block: 10, max_heldout_per_block: 5}\n"
    )
    rows = manifest_rows(manifest)
    assert [(r["arm"], r["tool_docs"], r["split"]) for r in rows] == [
        (arm, docs, split) for arm, docs in (("A", "none"), ("last-1", "none"), ("A+docs-dialogue", "dialogue"),
                                             ("A@B", "none")) for split in ("train", "heldout")]
    by = {(r["arm"], r["split"]): r for r in rows}
    assert by[("A", "train")]["records"] == 20  # the two blocks of the order, capped at 10 each
    assert by[("A", "heldout")]["records"] == 20  # every block is evaluated, capped at 5 each
    assert by[("A@B", "heldout")] | {"arm": "A"} == by[("A", "heldout")]  # A@B runs on A's prompts
    assert by[("last-1", "heldout")]["ceiling_exact"] > by[("A", "heldout")]["ceiling_exact"]


def test_cli_flag_with_a_shipped_manifest():
    run = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "data", "inspect", "--ceiling", "--manifest",
         str(REPO / "manifests" / "factorial.yaml")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert "ceiling of the manifest's arms" in run.stdout
    assert "│ A-slots+docs-dialogue │ heldout │      24 │      24 │      0 │ 1.000 │ 1.000 │" in run.stdout


def test_cli_help_lists_the_flag():
    run = subprocess.run([sys.executable, "-m", "trajhpc.cli", "data", "inspect", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert "--ceiling" in run.stdout
