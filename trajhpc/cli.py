"""The `trajhpc` command line: thin wrappers that parse arguments and call the modules.

Heavy imports (torch, transformers, polars) happen inside the commands so that
``trajhpc --help`` stays fast.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from trajhpc.core.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, TrajhpcError
from trajhpc.core.termout import GuardedOutput, make_console

app = typer.Typer(
    name="trajhpc",
    help="Continual fine-tuning studies of API-call trajectories (API-Bank) on HPC clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: a flag reads as a flag (rich panels print `--dry-run <bool>`), and it fits 80 columns.
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Inspect the API-Bank data: blocks, splits, counts.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")

console = make_console()
err_console = make_console(stderr=True)


def _set_option(what: str) -> object:
    """The ``--set`` option, read by the study package (``trajhpc.study.overrides``)."""
    return typer.Option(
        None, "--set", metavar="KEY=VALUE",
        help=f"Override a field of {what}, the value read as YAML: "
        "--set train.lr=1e-4 --set 'seeds=[0,1]' (repeatable).",
    )


@data_app.command("inspect", short_help="Per block: dialogues, records, APIs, ToolSearcher share.")
def data_inspect(
    source: Optional[Path] = typer.Option(
        None, "--source", help="API-Bank folder (default: the bundled copy)."
    ),
    hf: Optional[str] = typer.Option(
        None, "--hf", help="Hugging Face dataset in the local cache, e.g. liminghao1630/API-Bank (never downloaded)."
    ),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit hash of --hf."),
    file: list[str] = typer.Option(
        None, "--file", metavar="<path>",
        help="A record file relative to the source (repeatable; default: training-data/lv3-api-train.json).",
    ),
    blocks: Optional[str] = typer.Option(
        None, "--blocks", metavar="lv3-rules|scenario", help="The block partition (default: lv3-rules)."
    ),
    heldout_fraction: Optional[float] = typer.Option(
        None, "--heldout-fraction",
        help="Share of dialogues held out for evaluation, by a hash of the dialogue (default: 0.2).",
    ),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Take the data settings (and train.max_seq_len) from this manifest."
    ),
    tokens: Optional[str] = typer.Option(
        None, "--tokens", metavar="MODEL",
        help="Also count training tokens with this model's tokenizer: B/A per level and block, and per mix of levels.",
    ),
    max_seq_len: Optional[int] = typer.Option(
        None, "--max-seq-len", help="Truncation for --tokens (default: the manifest's, else 2048 as in grid.yaml)."
    ),
    ceiling: bool = typer.Option(
        False, "--ceiling",
        help="Also each condition's (with --manifest: each arm's) ceiling from the data alone, train and held-out.",
    ),
    set_: list[str] = _set_option("the --manifest"),
) -> None:
    """Per block: dialogues, train/held-out records, distinct API names, ToolSearcher share."""
    from trajhpc.study.inspect import inspect_command

    inspect_command(
        console,
        source=source,
        files=file,
        blocks=blocks,
        heldout_fraction=heldout_fraction,
        hf=hf,
        revision=revision,
        manifest=manifest,
        tokens=tokens,
        max_seq_len=max_seq_len,
        ceiling=ceiling,
        overrides=set_ or [],
    )


@app.command("run-job", short_help="Run or resume one job from its spec file.")
def run_job(
    spec: Path = typer.Argument(..., help="Job spec JSON file."),
    job_dir: Optional[Path] = typer.Option(
        None, "--job-dir",
        help="Job directory (default: jobs/<job id>; submitted jobs live in <run root>/<study>/<job id>).",
    ),
) -> None:
    """Train one adapter through the blocks in order, evaluating after every block (resumable)."""
    from trajhpc.job.run import run_job_command

    run_job_command(console, spec, job_dir)


@app.command("submit", short_help="Submit a manifest's pending jobs (Slurm array or local run).")
def submit(
    manifest: Path = typer.Argument(..., help="Manifest YAML file."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the grid, what would be submitted and the sbatch script; submit nothing."
    ),
    run_root: Optional[Path] = typer.Option(None, "--run-root", help="Run root (default: the manifest's, else jobs/)."),
    executor: Optional[str] = typer.Option(
        None, "--executor", metavar="slurm|local|auto", help="Override the manifest's executor."
    ),
    wait: bool = typer.Option(
        False, "--wait",
        help="Slurm: watch the jobs (stage, loss, tok/s, ETA) until every one has ended. A local run always waits.",
    ),
    rates: Optional[Path] = typer.Option(
        None, "--rates", help="Rates file from benchmarks/bench_gpu_qlora.py --job: print the estimated GPU-hours."
    ),
    set_: list[str] = _set_option("the manifest (recorded in each job's submission.json)"),
) -> None:
    """Expand a manifest into jobs and submit the pending ones (Slurm job array or local)."""
    from trajhpc.launch.submit import submit_command

    code = submit_command(
        console, manifest, dry_run=dry_run, run_root=run_root, executor=executor, wait=wait, rates=rates,
        overrides=set_ or [],
    )
    if code:
        raise typer.Exit(code)


@app.command("status", short_help="Where every job stands, one table per study.")
def status(
    target: Optional[Path] = typer.Argument(
        None, help="Manifest YAML or run directory (default: the run root; one table per study)."
    ),
    run_root: Optional[Path] = typer.Option(
        None, "--run-root", help="Run root: of the manifest's jobs (default: the manifest's), or to list (default: jobs/)."
    ),
    watch: bool = typer.Option(False, "--watch", help="Refresh until interrupted (Ctrl-C), with each job's progress."),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between refreshes with --watch."),
    set_: list[str] = _set_option("a manifest TARGET, for the grid submitted with the same --set"),
) -> None:
    """Per job: Slurm state and job-directory state (stage k of n, done, failed); counts per state.

    A manifest's jobs are listed in its grid's order; a run directory's, one table per study.
    """
    from trajhpc.launch.statuscmd import status_command

    status_command(console, target, run_root=run_root, watch=watch, interval=interval, overrides=set_ or [])


@app.command("aggregate", short_help="Compare the arms of finished studies: CSVs, report.md, plots.")
def aggregate(
    targets: list[Path] = typer.Argument(None, metavar="TARGET", help="Run roots or manifests (default: jobs/)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on any incomplete or corrupt job."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
    set_: list[str] = _set_option("the manifest TARGETs, for the grid submitted with the same --set"),
) -> None:
    """Join metrics with token counts and compare conditions at matched compute."""
    from trajhpc.results.aggregate import aggregate_command

    aggregate_command(console, targets or [Path("jobs")], strict=strict, plots=plots, overrides=set_ or [])


@app.command("diff", short_help="The spec fields two jobs, or two manifests' grids, differ in.")
def diff(
    a: str = typer.Argument(..., metavar="A", help="A job id (or a unique prefix), a job directory, or a manifest."),
    b: str = typer.Argument(..., metavar="B", help="The same kind as A."),
    run_root: Path = typer.Option(
        Path("jobs"), "--run-root", help="Where job ids are looked up: a run root or a study folder."
    ),
) -> None:
    """Print the spec fields that differ between two jobs, or between two manifests' grids (arms, seeds
    and orders only one has, jobs in both, settings that differ). Exit status as diff(1): 0 the same,
    1 different, 2 a mistake in the input."""
    from trajhpc.study.diffcmd import diff_command

    code = diff_command(console, a, b, run_root=run_root)
    if code:
        raise typer.Exit(code)


@app.command("power", short_help="How many units (seeds x orders) a comparison needs: power tables.")
def power(
    targets: list[Path] = typer.Argument(
        None, metavar="TARGET",
        help="Finished studies (run roots or manifests, as for aggregate): estimate the values from them.",
    ),
    effect: Optional[float] = typer.Option(
        None, "--effect", help="Arm − baseline in accuracy POINTS (7.7 = 7.7 percentage points; default: the study's, else 7.7)."
    ),
    unit_sd: Optional[float] = typer.Option(
        None, "--unit-sd", help="SD of the paired difference over units, in points (default: the study's, else 10)."
    ),
    discordance: Optional[float] = typer.Option(
        None, "--discordance", help="Share of held-out items on which the arms disagree, 0-1 (default: the study's, else 0.30)."
    ),
    items: Optional[int] = typer.Option(None, "--items", help="Held-out items (default: the study's, else 208)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Two-sided significance level."),
    units: Optional[int] = typer.Option(
        None, "--units", help="Units for the smallest detectable effect (default: the study's pairs, else 20)."
    ),
    max_units: int = typer.Option(40, "--max-units", help="Last row of the table (rows every 4 units)."),
    set_: list[str] = _set_option("the manifest TARGETs, for the grid submitted with the same --set"),
) -> None:
    """Power of the sign-flip test over units and of the item-level test, at 4, 8, ... units.

    A value given on the command line wins; with TARGETs the others are estimated from each
    study's primary comparison (effect and unit SD from the paired differences, discordance and
    items from the final predictions), and any left fall back to the defaults.
    """
    from trajhpc.results.power import power_command

    power_command(
        console, targets or [], effect=effect, unit_sd=unit_sd, discordance=discordance, items=items, alpha=alpha,
        units=units, max_units=max_units, overrides=set_ or [],
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program stands so that it unwinds as from Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise _Terminated


_terminated = False


def main() -> None:
    """Console-script entry point. Exit statuses: 0 success (also when the reader of the output
    went away, ``| head``); 1 a bug (traceback), or ``diff`` found a difference (``EXIT_DIFFERENT``,
    as diff(1)); 2 a user mistake or an output that cannot be written (one line on stderr); 3 submit
    ran or watched jobs and some did not finish (``EXIT_JOBS_FAILED``); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM), which stops
    what runs the way Ctrl-C does."""
    global _terminated
    _terminated = False
    saved = sys.stdout, sys.stderr
    sys.stdout = GuardedOutput(sys.stdout)
    sys.stderr = GuardedOutput(sys.stderr, "standard error")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.stdout, sys.stderr = saved
    sys.exit(code)


def _run() -> int:
    """The command's exit status (see ``main``)."""
    from typer.exceptions import TyperException

    try:
        # Without standalone mode typer turns Ctrl-C into a *returned* 130, and returns
        # the code of a raised typer.Exit too: both must reach sys.exit.
        code = app(standalone_mode=False)
    except TrajhpcError as err:
        # The message is user text (a regex, a path): escaped, so rich shows it as written.
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except typer.Exit as err:
        code = err.exit_code
    except TyperException as err:  # usage errors: unknown command, bad option
        if hasattr(err, "show"):
            err.show()
        else:
            err_console.print(f"error: {err.format_message()}")
        return 2
    if code == EXIT_INTERRUPTED and _terminated:
        err_console.print("terminated (SIGTERM)")
        return EXIT_TERMINATED
    if code == EXIT_INTERRUPTED:
        err_console.print("interrupted (Ctrl-C)")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
