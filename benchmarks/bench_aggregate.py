"""Benchmark `trajhpc aggregate` on many synthetic job directories (target (issue 22): < 3 s for 10,000 jobs, plots excluded).

Usage: python benchmarks/bench_aggregate.py [--jobs 10000] [--items 0] [--repeat 2] [--keep DIR [--reuse]]

Writes one study of 4-block jobs (5 stages: zero-shot + 4 training stages, each with its
train_log.jsonl) for arms A, B and A@B over all 24 block orders and as many seeds as
needed; with ``--items N``, N final prediction rows per job too (a real study has one per
held-out item, ~200: the example-level tables are then timed as well). Then times
`trajhpc aggregate --no-plots` as a user runs it, in a fresh process (the figure the target
is about, set without predictions); then the same command's code in this process, phase by
phase (reading and validating the documents, the predictions, the training logs, the
analysis, the output files); without predictions, the floors: what the command cannot go below
on this machine (the imports, the reads, pydantic's validation, the bootstrap, the long table's
serialisation, each alone), against the target; finally the plots. Prints figures; asserts
nothing. Wall and CPU time are both shown: on a shared machine the wall clock also counts other
users' work.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import synthetic_jobs as sj  # noqa: E402

from trajhpc.core.gcpause import gc_paused  # noqa: E402
from trajhpc.jobdir import trainlog  # noqa: E402
from trajhpc.jobdir.documents import MetricsDoc, TokensDoc, adapter  # noqa: E402
from trajhpc.jobdir.paths import METRICS, SPEC, TOKENS, TRAIN_LOG, find_job_dirs  # noqa: E402
from trajhpc.results import aggregate as agg  # noqa: E402
from trajhpc.results import stats  # noqa: E402
from trajhpc.results.studyresult import StudyResult  # noqa: E402
from trajhpc.spec import JobSpec  # noqa: E402

BLOCKS = ("care", "meds", "fitness", "cost")


def generate(root: Path, n_jobs: int, n_items: int = 0) -> int:
    """Write ``n_jobs`` job directories into ``root/bench``, each with ``n_items`` final prediction rows
    (none: no predictions file); returns how many were written."""
    # Items as a study's held-out set: four blocks, a few calls per dialogue, ids like the jobs write.
    items = [(f"heldout.json#{i}", BLOCKS[i % 4], f"{BLOCKS[i % 4]}-dialogue-{i // 12}", (i // 4) % 3)
             for i in range(n_items)]
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
            job_dir = sj.write_job(
                root / "bench", spec, sj.synthetic_matrix(arm, seed, order, BLOCKS), blocks=BLOCKS,
                supervised=[per_stage * (i + 1) for i in range(len(order))], study="bench",
            )
            if items:
                sj.write_predictions(job_dir, spec, sj.synthetic_predictions(arm, seed, order, items))
            written += 1
    return written


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


BOOTSTRAP = "  of the analysis: bootstrap CIs + sign-flip tests"  # indented: a part of the analysis

# The phases of `trajhpc aggregate`, timed where the command calls them (the benchmark runs the
# command's own code, so a step it adds is timed too; "analysis" is what the phases leave).
PHASES = {
    "read + validate spec/metrics/tokens": (agg, "read_studies"),
    "read final predictions": (agg, "read_items"),
    "read train logs": (agg, "read_logs"),
    BOOTSTRAP: (stats, "describe_and_flip"),
}


def _timed(phases: dict[str, list[float]], name: str, fn):
    def wrapper(*args, **kwargs):
        w0, c0 = _clock()
        try:
            return fn(*args, **kwargs)
        finally:
            w1, c1 = _clock()
            phases[name][0] += w1 - w0
            phases[name][1] += c1 - c0
    return wrapper


def run_once(root: Path) -> tuple[StudyResult, float]:
    """One `trajhpc aggregate --no-plots` in this process (its imports already paid), phase by phase;
    the result and the wall time of its bootstrap."""
    phases = {name: [0.0, 0.0] for name in PHASES}
    saved = {name: getattr(module, attr) for name, (module, attr) in PHASES.items()}
    for name, (module, attr) in PHASES.items():
        setattr(module, attr, _timed(phases, name, saved[name]))
    try:
        w0, c0 = _clock()
        (result,) = agg.aggregate([root])
        w1, c1 = _clock()
        agg.write_outputs(result, plots=False)
        w2, c2 = _clock()
    finally:
        for name, (module, attr) in PHASES.items():
            setattr(module, attr, saved[name])
    reads = {name: t for name, t in phases.items() if not name.startswith(" ")}  # indented: inside the analysis
    for name, (wall, cpu) in reads.items():
        print(f"  {name}: {wall:.2f} s ({cpu:.2f} s CPU)")
    rest_w, rest_c = w1 - w0 - sum(w for w, _ in reads.values()), c1 - c0 - sum(c for _, c in reads.values())
    size = f"{result.long.height} long-table rows, {result.units.height} units"
    print(f"  analysis ({size}): {rest_w:.2f} s ({rest_c:.2f} s CPU)")
    for name, (wall, cpu) in phases.items():
        if name not in reads:
            print(f"  {name}: {wall:.2f} s ({cpu:.2f} s CPU)")
    print(f"  write tables + report.md/.html/.tex: {w2 - w1:.2f} s ({c2 - c1:.2f} s CPU)")
    print(f"  TOTAL without plots: {w2 - w0:.2f} s wall, {c2 - c0:.2f} s CPU", flush=True)
    return result, phases[BOOTSTRAP][0]


def _best(fn, repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` calls (the floor: a busy machine only adds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def floors(root: Path, result: StudyResult, bootstrap_s: float) -> None:
    """What the command cannot go below on this machine while it does what it does: each part alone, on
    the same jobs, with nothing else around it (no checks, no error paths, no frames), fastest of three.
    Their sum against the target says whether tuning the command's own code could still reach it."""
    python = [sys.executable, "-c"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = _best(lambda: subprocess.run([*python, "pass"], check=True, env=env))
    imports = _best(lambda: subprocess.run([*python, "import trajhpc.cli, trajhpc.results.aggregate"],
                                           check=True, env=env))
    names = (SPEC, METRICS, TOKENS, TRAIN_LOG)
    dirs = [str(d) for d in find_job_dirs([root])]
    raw: dict[str, list[bytes]] = {}

    def read_all() -> None:
        raw.clear()
        for name in names:
            raw[name] = [data for d in dirs if (data := _read_or_none(os.path.join(d, name))) is not None]

    reading = _best(read_all)
    validators = {SPEC: adapter(JobSpec), METRICS: adapter(MetricsDoc), TOKENS: adapter(TokensDoc)}
    with gc_paused():  # as the command reads
        validating = _best(lambda: [validators[name].validate_json(b) for name in validators for b in raw[name]])
    lines = [line for data in raw[TRAIN_LOG] for line in data.splitlines() if line.strip()]
    with gc_paused():
        logs = _best(lambda: [trainlog._STRICT_ENTRY.validate_json(line) for line in lines])  # its fast path
    serialising = _best(lambda: (result.long.write_csv(float_precision=6), result.long.write_parquet(io.BytesIO())))
    parts = {
        "Python start + imports (fresh process)": imports,
        f"opening and reading the {sum(map(len, raw.values()))} spec/metrics/tokens/train-log files": reading,
        f"pydantic validation of the {sum(len(raw[n]) for n in validators)} documents from bytes": validating,
        f"pydantic validation of the {len(lines)} train-log lines from bytes": logs,
        "bootstrap CIs + sign-flip tests (as timed above)": bootstrap_s,
        f"long.csv + long.parquet ({result.long.height} rows) serialised": serialising,
    }
    print(f"floors on this machine (each alone, fastest of 3; Python start alone {start:.2f} s):")
    for name, seconds in parts.items():
        print(f"  {name}: {seconds:.2f} s")
    print(f"  SUM of floors: {sum(parts.values()):.2f} s (target < 3 s; the rest of what the command does, "
          "the long table, the checks across documents and every other table, comes on top)")


def _read_or_none(path: str) -> bytes | None:
    """The file's bytes, None when it cannot be opened: the least a read can do (the floor), where the
    command's reader (:func:`trajhpc.jobdir.paths.read_bytes`) also refuses FIFOs and oversized files."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, os.fstat(fd).st_size + 1)
    finally:
        os.close(fd)


def run_cli(root: Path) -> float:
    """`trajhpc aggregate --no-plots` in a fresh process, as a user runs it (imports included); its wall time."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "trajhpc.cli", "aggregate", str(root), "--no-plots"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"trajhpc aggregate failed (exit {out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Write the jobs here and keep them.")
    parser.add_argument("--reuse", action="store_true", help="with --keep: time the jobs already there")
    parser.add_argument("--items", type=int, default=0,
                        help="final prediction rows per job (a study's held-out items; 0: no predictions files)")
    parser.add_argument("--quick", action="store_true", help="50 jobs, one run (the test suite's check that it runs)")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeat, args.items = 50, 1, 24
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if args.reuse and args.keep:
            print(f"timing the {sum(1 for _ in (root / 'bench').iterdir())} entries of {root / 'bench'}")
        else:
            t0 = time.perf_counter()
            n = generate(root, args.jobs, args.items)
            os.sync()  # flush the fresh files so their write-back does not land inside the timing
            print(f"generated {n} job directories ({args.items} prediction rows each) in {time.perf_counter() - t0:.1f} s")
        for i in range(args.repeat):
            wall = run_cli(root)
            target = " (target < 3 s)" if not args.items else ""
            print(f"run {i + 1}: `trajhpc aggregate --no-plots` in a fresh process: {wall:.2f} s wall{target}")
        print("the same in this process, phase by phase (imports paid by a first run):")
        agg.write_outputs(agg.aggregate([root])[0], plots=False)
        result, bootstrap_s = run_once(root)
        if not args.items:
            floors(root, result, bootstrap_s)
        w0, _ = _clock()
        agg.write_outputs(result, plots=True)
        print(f"plots + tables + report.md: {time.perf_counter() - w0:.2f} s")


if __name__ == "__main__":
    main()
