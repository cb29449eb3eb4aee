"""The GPU benchmark script runs every step end to end at a tiny size on CPU, so it cannot rot
before the next time a GPU is available."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trajhpc.cost import load_rates

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
