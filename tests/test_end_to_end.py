"""The README's main command for real: the smoke manifest through submit, then aggregate.

Runs the shipped `manifests/smoke.yaml` (8 tiny-model jobs on the local executor) in a
temporary run root, then checks what `trajhpc aggregate` made of its real output, and
that submitting again skips every finished job.
"""

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _trajhpc(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _trajhpc("submit", str(REPO / "manifests" / "smoke.yaml"), "--run-root", str(root), "--executor", "local", cwd=root)
    _trajhpc("aggregate", str(root), "--no-plots", cwd=root)
    return root


def test_every_smoke_job_completes_with_its_files(smoke_root):
    jobs = sorted(p for p in (smoke_root / "smoke").iterdir() if (p / "spec.json").exists())
    assert len(jobs) == 8
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["complete"] is True and metrics["job_id"] == job.name
        assert [s["stage"] for s in metrics["stages"]] == [0, 1, 2, 3, 4]
        assert len(list((job / "predictions").glob("stage-*.jsonl"))) == 5
        tokens = json.loads((job / "tokens.json").read_text())
        assert all(s["padded_tokens"] >= s["total_tokens"] for s in tokens["stages"])


def test_aggregate_of_the_real_smoke_output(smoke_root):
    out = smoke_root / "smoke" / "aggregate"
    long = pl.read_parquet(out / "long.parquet")
    # 8 jobs x 5 stages (zero-shot + 4 blocks) x 4 evaluated blocks
    assert long.height == 8 * 5 * 4
    assert sorted(long["arm"].unique().to_list()) == ["A", "B"]
    per_arm = long.group_by("arm").agg(pl.col("job_id").n_unique().alias("units"))
    assert dict(per_arm.iter_rows()) == {"A": 4, "B": 4}
    # B keeps the trajectory in the prompt, so it reads more tokens than A on the same data
    final = long.filter(pl.col("stage") == 4).group_by("arm").agg(pl.col("cum_total_tokens").mean())
    totals = dict(final.iter_rows())
    assert totals["B"] > totals["A"]
    report = (out / "report.md").read_text()
    assert "8 complete jobs" in report and "B vs A: 4" in report
    summary = pl.read_csv(out / "summary.csv")
    assert summary.height > 0


def test_submitting_again_skips_every_finished_job(smoke_root):
    text = _trajhpc(
        "submit", str(REPO / "manifests" / "smoke.yaml"), "--run-root", str(smoke_root), "--executor", "local", cwd=smoke_root
    )
    assert "8 done (skipped)" in text and "0 to submit" in text
