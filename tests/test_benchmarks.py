"""Every benchmark runs at a tiny size on CPU and prints its figures, so none can rot (the GPU one
until the next time a GPU is available)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trajhpc.launch.cost import load_rates

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_all_quick_runs_every_step_and_writes_rates(tmp_path):
    env = {**os.environ, "QUICK": "1", "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_all.sh"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    log = (tmp_path / "gpu_all.log").read_text()
    assert out.returncode == 0, log[-3000:]
    for step in ("synthetic", "peer", "eval", "job"):
        assert f"== {step}: exit 0" in log
    assert "MFU" in log and "ratio: the job's loop is" in log and "agreement merged" in log
    rates = load_rates(tmp_path / "rates.json")
    assert rates.train_tokens_per_s > 0 and rates.eval_prompts_per_s > 0


# Each CPU benchmark at its smallest size, and the figure line that says it measured something.
QUICK = {
    "bench_aggregate.py --quick": "TOTAL without plots:",
    # More than 1,023 paired units per comparison (2.0 ** n overflowed there once; issue 22 item 19).
    # Without predictions it also prints the floors (issue 22 item 20).
    "bench_aggregate.py --jobs 3100 --repeat 1": "SUM of floors:",
    "bench_train.py --quick": "tok/s",
    "bench_eval.py --quick": "agreement",
    "bench_examples.py": "M tok/s",
    "bench_grid.py": "status over 1,000 job directories",
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(QUICK))
def test_every_benchmark_runs_at_its_quick_size_and_prints_its_figures(command):
    script, *args = command.split()
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert QUICK[command] in out.stdout, out.stdout[-2000:]


def test_every_benchmark_script_is_run_by_the_suite():
    scripts = {p.name for p in (REPO / "benchmarks").glob("bench_*.py")}
    covered = {c.split()[0] for c in QUICK} | {"bench_gpu_qlora.py"}  # gpu_all.sh runs the GPU one
    assert scripts == covered
