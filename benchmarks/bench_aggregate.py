"""Benchmark `trajhpc aggregate` on many synthetic job directories (target (issue 22): < 3 s for 10,000 jobs, plots excluded).

Usage: python benchmarks/bench_aggregate.py [--jobs 10000] [--repeat 2] [--keep DIR]

Writes one study of 4-block jobs (5 stages: zero-shot + 4 training stages) for arms
A, B and A@B over all 24 block orders and as many seeds as needed, then times reading
+ validation, the analysis (bootstrap CIs, paired tests) and the output files, and
finally the plots. Prints figures; asserts nothing. Wall and CPU time are both shown:
on a shared machine the wall clock also counts other users' work.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import synthetic_jobs as sj  # noqa: E402

from trajhpc.core.gcpause import gc_paused  # noqa: E402
from trajhpc.results import aggregate as agg  # noqa: E402
from trajhpc.results.jobrecords import collect_jobs, group_by_study  # noqa: E402
from trajhpc.results.studyresult import StudyResult  # noqa: E402
from trajhpc.results.tables import analyze_study  # noqa: E402

BLOCKS = ("care", "meds", "fitness", "cost")


def generate(root: Path, n_jobs: int) -> int:
    """Write ``n_jobs`` job directories into ``root/bench``; returns how many were written."""
    arms = ("A", "B", "A@B")
    orders = list(itertools.permutations(BLOCKS))
    written = 0
    for seed in itertools.count():
        for order, arm in itertools.product(orders, arms):
            if written == n_jobs:
                return written
            condition, _, match = arm.partition("@")
            spec = sj.spec_for(condition, seed=seed, order=order, match=match or None)
            per_stage = sj.ARM_TOKENS[arm] + seed % 7
            sj.write_job(
                root / "bench", spec, sj.synthetic_matrix(arm, seed, order, BLOCKS), blocks=BLOCKS,
                supervised=[per_stage * (i + 1) for i in range(len(order))], study="bench",
            )
            written += 1
    return written


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def run_once(root: Path) -> StudyResult:
    """One aggregation without plots, as `trajhpc aggregate --no-plots` does it, phase by phase."""
    w0, c0 = _clock()
    with gc_paused():  # as aggregate() does
        records = collect_jobs([root])
        w1, c1 = _clock()
        ((folder, recs),) = group_by_study(records).items()
        result = analyze_study(folder.name, folder, recs)
    w2, c2 = _clock()
    agg.write_outputs(result, plots=False)
    w3, c3 = _clock()
    print(f"  read + validate {len(records)} jobs: {w1 - w0:.2f} s ({c1 - c0:.2f} s CPU)")
    size = f"{result.long.height} long-table rows, {result.units.height} units"
    print(f"  analysis ({size}): {w2 - w1:.2f} s ({c2 - c1:.2f} s CPU)")
    print(f"  write tables + report.md: {w3 - w2:.2f} s ({c3 - c2:.2f} s CPU)")
    print(f"  TOTAL without plots: {w3 - w0:.2f} s wall, {c3 - c0:.2f} s CPU (target < 3 s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Write the jobs here and keep them.")
    parser.add_argument("--quick", action="store_true", help="50 jobs, one run (the test suite's check that it runs)")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeat = 50, 1
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        n = generate(root, args.jobs)
        os.sync()  # flush the fresh files so their write-back does not land inside the timing
        print(f"generated {n} job directories in {time.perf_counter() - t0:.1f} s")
        for i in range(args.repeat):
            print(f"run {i + 1}:")
            result = run_once(root)
        w0, _ = _clock()
        agg.write_outputs(result, plots=True)
        print(f"plots + tables + report.md: {time.perf_counter() - w0:.2f} s")


if __name__ == "__main__":
    main()
