"""How long trajhpc takes to plan, submit and watch a big study (targets: each < 2 s).

1. Expanding a 1,000-job manifest and rendering its sbatch array script.
2. ``trajhpc submit`` of those 1,000 jobs through a fake ``sbatch`` on PATH (it counts
   its calls and prints a job id): one job array, so ONE sbatch call.
3. ``status`` over 1,000 job directories: reading every directory, one (fake) ``sacct``
   call for all recorded Slurm ids, building and rendering the table.

Run: ``python benchmarks/bench_grid.py``. Prints the figures; asserts only the
counts (1,000 jobs, one sbatch call), not the times.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from trajhpc.launch.status import collect_rows, counts_line, render_table
from trajhpc.launch.submit import render_sbatch, submit_command
from trajhpc.study.grid import expand
from trajhpc.study.manifest import parse_manifest

# 5 arms x 10 seeds x 20 random orders of the 4 lv3 blocks = 1,000 jobs
MANIFEST = """
study: bench
conditions: [A, B, calls-only, {condition: last-k, k: 2}, {condition: A, token_budget: {match: B}}]
seeds: {count: 10}
orders: {random: 20, seed: 0}
executor: slurm
resources: {gpus_per_node: 1, cpus_per_task: 8, mem_gb: 64, timeout_min: 480, array_parallelism: 50}
"""
REPEATS = 5


def best_of(fn, repeats: int = REPEATS) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_expand_and_render(root: Path) -> None:
    def run():
        manifest = parse_manifest(MANIFEST, "bench.yaml")
        jobs = expand(manifest, root)
        script = render_sbatch(manifest, folder=root / "bench" / ".submitit" / "x", python="python3", n_jobs=len(jobs))
        return jobs, script

    seconds, (jobs, script) = best_of(run)
    assert len(jobs) == 1000 and "#SBATCH --array=0-999%50" in script
    print(f"expand 1,000-job manifest + render sbatch array: {seconds * 1000:.0f} ms (best of {REPEATS}; target < 2000 ms)")


def _script(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def bench_submit(work: Path) -> None:
    """1,000 jobs through `trajhpc submit` with a fake sbatch that counts its calls."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True)
    _script(bin_dir, "sbatch", f'echo x >> {bin_dir}/sbatch.calls; echo "Submitted batch job 700"')
    _script(bin_dir, "srun", "exit 0")
    _script(bin_dir, "sacct", "echo 'JobID|State|NodeList|JobName'")  # nothing recorded yet
    _script(bin_dir, "squeue", "exit 0")
    (work / "bench.yaml").write_text(MANIFEST)
    old_path, old_cwd = os.environ["PATH"], Path.cwd()
    os.environ["PATH"] = f"{bin_dir}:{old_path}"
    os.chdir(work)
    try:
        out = io.StringIO()
        start = time.perf_counter()
        submit_command(Console(file=out, width=200, color_system=None), Path("bench.yaml"), dry_run=False,
                       run_root=Path("runs"), executor="slurm", wait=False)
        seconds = time.perf_counter() - start
    finally:
        os.environ["PATH"] = old_path
        os.chdir(old_cwd)
    calls = len((bin_dir / "sbatch.calls").read_text().splitlines())
    records = len(list((work / "runs" / "bench").glob("*/submission.json")))
    assert "submitted 1000 jobs as Slurm array 700" in out.getvalue(), out.getvalue()
    assert calls == 1 and records == 1000, (calls, records)
    print(f"submit 1,000 jobs through a fake sbatch: {seconds * 1000:.0f} ms, {calls} sbatch call "
          f"(one array), {records} submission records (target < 2000 ms)")


def _fake_sacct(bin_dir: Path, n: int) -> None:
    """A sacct that answers for array 500 at once, like the real one (one line per task)."""
    lines = ["JobID|State|NodeList|JobName"]
    states = ("COMPLETED", "RUNNING", "PENDING", "FAILED")
    lines += [f"500_{i}|{states[i % 4]}|node{i % 7}|trajhpc-bench" for i in range(n)]
    table = bin_dir / "sacct.out"
    table.write_text("\n".join(lines) + "\n")
    script = bin_dir / "sacct"
    script.write_text(f"#!/bin/sh\ncat {table}\n")
    script.chmod(0o755)


def make_job_dirs(root: Path, jobs) -> list[Path]:
    dirs = []
    for i, job in enumerate(jobs):
        d = job.run_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "spec.json").write_text(json.dumps(job.spec.to_dict()))
        state = "done" if i % 4 == 0 else "running" if i % 4 != 3 else "failed"
        (d / "state.json").write_text(json.dumps({
            "state": state, "stage": 4 if state == "done" else i % 4, "n_stages": 4,
            "error": "RuntimeError: CUDA out of memory" if state == "failed" else None,
            "started": "2026-01-01T00:00:00+00:00", "updated": "2026-01-01T01:00:00+00:00",
            "ended": "2026-01-01T02:00:00+00:00" if state == "done" else None, "slurm_job_id": f"500_{i}",
        }))
        (d / "metrics.json").write_text(json.dumps({"complete": state == "done", "stages": [{"stage": k} for k in range(5)]}))
        (d / "submission.json").write_text(json.dumps({
            "executor": "slurm", "slurm_job_id": f"500_{i}", "slurm_job_name": "trajhpc-bench", "local_pid": None,
        }))
        dirs.append(d)
    return dirs


def bench_status(root: Path) -> None:
    manifest = parse_manifest(MANIFEST, "bench.yaml")
    jobs = expand(manifest, root)
    dirs = make_job_dirs(root, jobs)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    _fake_sacct(bin_dir, len(dirs))
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"

    def run():
        rows = collect_rows(dirs)
        console = Console(file=io.StringIO(), width=160, color_system=None)
        console.print(render_table(rows, "study bench", width=console.width))
        console.print(counts_line(rows))
        return rows

    seconds, rows = best_of(run)
    assert len(rows) == 1000
    print(f"status over 1,000 job directories (read + 1 sacct + table): {seconds * 1000:.0f} ms "
          f"(best of {REPEATS}; target < 2000 ms) -> {counts_line(rows)}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        bench_expand_and_render(Path(tmp) / "runs")
        bench_submit(Path(tmp) / "submit")
        bench_status(Path(tmp) / "runs")
