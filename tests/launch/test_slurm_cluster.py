"""Integration tests against the real local Slurm cluster of scripts/slurm-ci-up.sh.

Skipped when Slurm is not installed or the cluster does not answer. The job
functions come from the standard library: a function defined in this module
would fail inside the job with ``ModuleNotFoundError: No module named
'test_slurm_cluster'`` (pytest imports test modules by path, the job cannot).
"""

from __future__ import annotations

import math
import operator
import subprocess
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

pytestmark = pytest.mark.slurm

JOB_DEADLINE_S = 120.0
# sacct lags slurmctld by 1-3 s for array tasks.
SACCT_DEADLINE_S = 30.0


@pytest.fixture
def slurm_executor(tmp_path: Path):
    """A SlurmExecutor with a fresh folder per test: job ids restart at 1 when the
    cluster's state is wiped, and a reused folder would hand back old results."""
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    # time >= 2 min: submitit signals 90 s before the limit (a 1-min job is told
    # to stop at once).
    executor.update_parameters(time=5, mem="1G", cpus_per_task=1, array_parallelism=3, job_name="trajhpc-ci")
    submitted: list = []
    yield executor, submitted
    # Leave nothing running on the shared cluster when a test fails half-way.
    ids = sorted({job.job_id.split("_")[0] for job in submitted if not job.done()})
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def _wait_done(jobs: list) -> None:
    deadline = time.monotonic() + JOB_DEADLINE_S
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            states = {job.job_id: job.state for job in jobs}
            pytest.fail(f"jobs not done after {JOB_DEADLINE_S:.0f} s: {states}")
        time.sleep(0.2)


def _sacct_states(array_id: str, expected: dict[str, str]) -> dict[str, str]:
    """Poll `sacct` until the array tasks show the expected states (or the deadline)."""
    deadline = time.monotonic() + SACCT_DEADLINE_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array_id],
            capture_output=True,
            text=True,
            check=True,
        )
        states = dict(line.split("|", 1) for line in out.stdout.splitlines() if line)
        if all(states.get(task) == state for task, state in expected.items()):
            return states
        time.sleep(0.5)
    return states


def test_map_array_completes_with_results_and_sacct_completed(slurm_executor) -> None:
    executor, submitted = slurm_executor
    jobs = executor.map_array(operator.add, [1, 2, 3], [10, 20, 30])
    submitted.extend(jobs)

    assert len(jobs) == 3
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(3)]

    _wait_done(jobs)
    assert [job.result() for job in jobs] == [11, 22, 33]

    expected = {f"{array_id}_{i}": "COMPLETED" for i in range(3)}
    assert _sacct_states(array_id, expected) == expected
    # What `trajhpc status` reads: submitit's own sacct query agrees.
    assert [job.get_info(mode="force").get("State") for job in jobs] == ["COMPLETED"] * 3


def test_failing_task_is_failed_in_sacct_and_raises(slurm_executor) -> None:
    executor, submitted = slurm_executor
    jobs = executor.map_array(math.sqrt, [4.0, -1.0])
    submitted.extend(jobs)
    array_id = jobs[0].job_id.split("_")[0]

    _wait_done(jobs)
    assert jobs[0].result() == 2.0
    with pytest.raises(submitit.core.utils.FailedJobError) as info:
        jobs[1].result()
    # The job's own error, not a pickling/import failure passing for it.
    assert "math domain error" in str(info.value)

    expected = {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "FAILED"}
    assert _sacct_states(array_id, expected) == expected
