"""One job: train one adapter through the blocks in order, evaluating after every block.

Protocol: stage 0 evaluates the untrained adapter on the held-out set of every
block of the partition; stage k (1..n) trains on block ``order[k-1]``, saves a
checkpoint, and evaluates on every block again. Outputs follow docs/CONTRACTS.md
and are all written atomically.

Resumption. The job directory always holds the checkpoint of the last trained
stage (stage 0 = the freshly initialized adapter). A stage's outputs are complete
once ``metrics.json`` lists it. Started again with the same spec, a job evaluates
the checkpoint's stage if that evaluation is missing, then trains on. To make a
resumed run EQUAL to an uninterrupted one, the uninterrupted run takes the same
path at every stage boundary: before training stage k+1 it restores adapter,
optimizer and RNG state from the checkpoint it just wrote
(:func:`trajhpc.job.checkpoint.restore_checkpoint`), exactly as a resumed run does after
``PeftModel.from_pretrained``. Data order is seeded by (seed, stage, pass), not by
global RNG state, and greedy evaluation draws no random numbers.

Test-only fault injection (``TRAJHPC_FAULT_INJECT``), to simulate kills at
chosen points: ``after-stage:K`` raises :class:`InjectedFault` once stage K's
outputs are written; ``after-checkpoint:K`` once stage K's checkpoint is written
(before its evaluation); ``stage:K:step:S`` after optimizer step S of training
stage K (before its checkpoint). :class:`InjectedFault` is a BaseException, so
like a real SIGKILL it leaves ``state.json`` at "running". ``slow:MS`` sleeps MS
milliseconds after every optimizer step (a job whose wall time does not depend on
the machine, for time-limit tests).
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import submitit
from rich.console import Console

from trajhpc.core import locks, provenance
from trajhpc.core.atomic import atomic_write_json, atomic_write_jsonl
from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.core.termout import make_console
from trajhpc.job import logfilters, stopping
from trajhpc.job.scoring import SCORE_KEYS
from trajhpc.jobdir import trainlog
from trajhpc.jobdir.documents import (
    METRICS_SCHEMA,
    TOKENS_SCHEMA,
    MetricsDoc,
    PredictionRow,
    TokensDoc,
    checked,
    identity,
)
from trajhpc.jobdir.paths import JobDir
from trajhpc.jobdir.state import write_state
from trajhpc.spec import JobSpec, check_recipe, load_spec, spec_from_dict

if TYPE_CHECKING:  # imported where used: they import torch, which bad input never waits for
    import torch

    from trajhpc.job.checkpoint import Checkpoint
    from trajhpc.job.recipe import Evaluator

FAULT_ENV = "TRAJHPC_FAULT_INJECT"


class InjectedFault(BaseException):
    """A simulated kill (tests only; see the module docstring)."""


# ---------------------------------------------------------------- entry points


def run_job_command(console: Console, spec_path: Path, job_dir: Path | None) -> dict[str, Any]:
    """``trajhpc run-job SPEC.json [--job-dir DIR]``: run (or resume) one job and print its final scores."""
    spec = load_spec(spec_path)
    check_recipe(spec, spec_path)
    job_dir = job_dir or Path("jobs") / spec.job_id
    use_threads(job_threads(os.environ, len(os.sched_getaffinity(0))))
    metrics = run_job(spec, job_dir, console=console)
    final = metrics["final"] or {}
    scores = "  ".join(f"{k} {final[k]:.3f}" for k in SCORE_KEYS if final.get(k) is not None)
    console.print(f"job {spec.job_id} done in {job_dir}: {scores}", highlight=False, soft_wrap=True)
    return metrics


def job_threads(env: Mapping[str, str], affinity: int) -> int:
    """CPU threads for a job run by hand: ``OMP_NUM_THREADS`` when set (what submitted jobs get:
    ``cpus_per_task``), else ``SLURM_CPUS_PER_TASK`` inside an allocation, else the cores this
    process may run on. torch's own default counts the machine's cores, and more threads than
    cores one owns makes every OpenMP barrier wait on a descheduled thread."""
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, affinity)


def use_threads(n: int) -> None:
    """Set the thread count: torch reads the variable when it is imported (after bad input is
    refused); a torch imported already is told directly."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


# A resubmitted task can start seconds after Slurm stopped the previous one, whose container
# may take that long to end (trajhpc.job.stopping).
LOCK_WAIT_S = 60.0


def run_job(
    spec: JobSpec,
    job_dir: Path,
    *,
    study: str | None = None,
    context: Mapping[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run or resume the job in ``job_dir``; returns its metrics (at once if already complete).

    Holds ``<job_dir>/.lock`` throughout: a second process on the same directory (a
    second run-job, a duplicate array task) is refused before it writes anything. A Slurm
    task waits ``LOCK_WAIT_S`` first: the attempt before it may still be stopping.
    """
    job_dir = Path(job_dir)
    check_recipe(spec, JobDir(job_dir).spec)
    logfilters.install()  # before torch, transformers and bitsandbytes are imported
    wait_s = LOCK_WAIT_S if os.environ.get("SLURM_JOB_ID") else 0.0
    with locks.exclusive(JobDir(job_dir).lock, timeout_s=wait_s) as held:
        if not held:
            who = locks.holder(JobDir(job_dir).lock)
            raise TrajhpcError(
                f"{job_dir} is in use by another trajhpc job process{f' ({who})' if who else ''}; "
                "refusing to run it twice: wait for it to end, or stop it first"
            )
        return _run_locked(spec, job_dir, study, context, console)


def _run_locked(
    spec: JobSpec, job_dir: Path, study: str | None, context: Mapping[str, Any] | None, console: Console | None
) -> dict[str, Any]:
    claim_job_dir(spec, job_dir)
    metrics = read_json(JobDir(job_dir).metrics)
    n = len(spec.stage_blocks)
    if metrics is not None and metrics.get("complete"):
        _mark_done(job_dir, metrics, n)
        return metrics
    started = provenance.now_iso()
    done = len(metrics["stages"]) - 1 if metrics else -1
    write_state(job_dir, "running", max(done, 0), n, started=started)
    sigint: list[int] = []
    try:
        with stopping.noting_sigint(sigint):
            return _Run(spec, job_dir, study, context, console or make_console()).run(metrics)
    except (Exception, KeyboardInterrupt) as err:
        # Ctrl-C or SIGTERM is no failure: "interrupted" resumes like a killed job when started again.
        interrupted = isinstance(err, KeyboardInterrupt) or bool(sigint)
        stage = len((read_json(JobDir(job_dir).metrics) or {"stages": [None]})["stages"]) - 1
        error = None if interrupted else exception_line(err)
        write_state(job_dir, "interrupted" if interrupted else "failed", max(stage, 0), n, started=started, error=error)
        if interrupted and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise


def _mark_done(job_dir: Path, metrics: Mapping[str, Any], n_stages: int) -> None:
    """A complete job whose state.json does not say "done" (killed between the final
    metrics.json write and the state write, or state.json lost): write it now."""
    try:
        state = read_json(JobDir(job_dir).state)
    except InputError:  # damaged: rewritten below
        state = None
    if state is not None and state.get("state") == "done":
        return
    started = (state or {}).get("started") or (metrics.get("provenance") or {}).get("started") or provenance.now_iso()
    write_state(job_dir, "done", len(metrics["stages"]) - 1, n_stages, started=started)


class JobTask(submitit.helpers.Checkpointable):
    """What the launcher submits: a timed-out or preempted task is requeued and resumes."""

    def __call__(
        self, spec_dict: dict[str, Any], job_dir: str | Path, study: str | None = None, context: dict | None = None
    ) -> dict[str, Any]:
        spec = spec_from_dict(spec_dict, source=JobDir(Path(job_dir)).spec)
        try:
            with stopping.sigterm_stops():  # submitit ignores SIGTERM; see trajhpc.job.stopping
                return run_job(spec, Path(job_dir), study=study, context=context)
        except stopping.Stopped as stop:
            print(f"stopped ({stop}): {job_dir} is left interrupted; `trajhpc submit` again resumes it", flush=True)
            raise SystemExit(stopping.Stopped.exit_code) from None

    def checkpoint(
        self, spec_dict: dict[str, Any], job_dir: str | Path, study: str | None = None, context: dict | None = None
    ) -> submitit.helpers.DelayedSubmission:
        # Called from submitit's handler of the time-out signal, in the middle of the run.
        blocked = stopping.requeue_blocked()
        if blocked:  # stop now, cleanly, rather than fail on the requeue or run on until killed
            raise stopping.Stopped(f"out of time, not requeued: {blocked}")
        # The job directory is the checkpoint: requeue the same call, it resumes from disk.
        return submitit.helpers.DelayedSubmission(self, spec_dict, job_dir, study, context)


# ---------------------------------------------------------------- job directory


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file of the job directory, or None if absent; a corrupt or unreadable one
    (a FIFO, too large, too deep, not JSON) is an InputError, read through trajhpc.jobdir.paths's
    bounded reader so a damaged job directory can never hang or crash the job."""
    from trajhpc.jobdir.paths import FileProblem, read_json_object

    try:
        return read_json_object(path)
    except FileProblem as problem:
        raise InputError(path, None, f"{problem.detail}; delete the job directory to start over") from None


def claim_job_dir(spec: JobSpec, job_dir: Path) -> None:
    """Write spec.json, or check that the one there is this job's; never overwrite another job."""
    path = JobDir(job_dir).spec
    existing = read_json(path)
    if existing is None:
        atomic_write_json(path, spec.to_dict())
        return
    other = spec_from_dict(existing, path)
    if other.job_id != spec.job_id:
        raise TrajhpcError(
            f"{job_dir} holds job {other.job_id} (its spec.json), not job {spec.job_id}; "
            "refusing to overwrite it: choose another --job-dir"
        )


def exception_line(err: BaseException) -> str:
    """``ValueError: <last line of its message>``: what state.json records of a failed attempt."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".rstrip(": ")


def parse_fault(value: str | None) -> tuple[str, int, int | None] | None:
    """``after-stage:K`` -> ("after-stage", K, None); ``stage:K:step:S`` -> ("step", K, S);
    ``slow:MS`` -> ("slow", MS, None); unset -> None."""
    if not value:
        return None
    m = re.fullmatch(r"(after-stage|after-checkpoint|slow):(\d+)|stage:(\d+):step:(\d+)", value)
    if m is None:
        raise TrajhpcError(
            f"{FAULT_ENV}: expected 'after-stage:K', 'after-checkpoint:K', 'stage:K:step:S' or 'slow:MS', got {value!r}"
        )
    if m.group(1):
        return m.group(1), int(m.group(2)), None
    return "step", int(m.group(3)), int(m.group(4))


# ---------------------------------------------------------------- pure assembly of outputs


def final_summary(
    per_block: Mapping[str, Mapping[str, Any]], also_under: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Unweighted mean over blocks of each score (blocks where it is None are skipped); with the last
    stage's ``also_under``, the same summary under each of those conditions."""
    out: dict[str, Any] = {}
    for key in SCORE_KEYS:
        values = [b[key] for b in per_block.values() if b.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    out["per_block"] = dict(per_block)
    if also_under:
        out["also_under"] = {c: final_summary(v["per_block"]) for c, v in also_under.items()}
    return out


def resources(
    stages: Sequence[Mapping[str, Any]],
    token_stages: Sequence[Mapping[str, Any]],
    peak: int,
    params: tuple[int, int],
    gradient_checkpointing: bool | None = None,
) -> dict[str, Any]:
    """Throughput over every stage recorded so far (earlier attempts included), memory, parameter counts,
    and whether this attempt trained with gradient checkpointing."""
    train_s = sum(s["train_seconds"] or 0.0 for s in stages)
    eval_s = sum(s["eval_seconds"] for s in stages)
    tokens = sum(t["total_tokens"] for t in token_stages)
    examples = sum(b["n"] for s in stages for b in s["per_block"].values())
    return {
        "peak_memory_bytes": peak,
        "train_tokens_per_s": tokens / train_s if train_s > 0 else None,
        "eval_examples_per_s": examples / eval_s if eval_s > 0 else None,
        # For FLOP estimates downstream (4 x base + 6 x trainable per token).
        "params_base": params[0],
        "params_trainable": params[1],
        "gradient_checkpointing": gradient_checkpointing,
    }


# ---------------------------------------------------------------- the run


@dataclass
class _Outputs:
    """The stage entries of metrics.json and of tokens.json so far, earlier attempts' included;
    each evaluated stage appends one to both."""

    stages: list[dict[str, Any]]
    token_stages: list[dict[str, Any]]

    @property
    def done(self) -> int:
        """The last evaluated stage (-1: none yet)."""
        return len(self.stages) - 1


class _Run:
    """One attempt at a job: the recipe's phases (:mod:`trajhpc.job.recipe`) driven through the
    job directory's checkpoints; :meth:`run` reads top to bottom as the protocol."""

    def __init__(
        self, spec: JobSpec, job_dir: Path, study: str | None, context: Mapping[str, Any] | None, console: Console
    ):
        self.spec, self.job_dir, self.study, self.console = spec, job_dir, study, console
        self.tracking = (context or {}).get("tracking")  # a study setting, in no spec (trajhpc.job.tracking)
        self.provenance = provenance.collect(context)
        self.fault = parse_fault(os.environ.get(FAULT_ENV))

    def run(self, metrics: dict[str, Any] | None) -> dict[str, Any]:
        from trajhpc.job import recipe

        spec, job_dir = self.spec, self.job_dir
        prep = self.prep = recipe.prepare(spec, self.console)
        if prep.heldout_in_pretraining is not None:
            self.provenance["heldout_dialogues_in_pretraining"] = prep.heldout_in_pretraining
        if prep.device.type == "cuda":
            import torch

            self.provenance["gpu"] = torch.cuda.get_device_name(prep.device)

        from trajhpc.job import checkpoint, tracking, train
        from trajhpc.job.progress import log

        found = checkpoint.find_checkpoint(job_dir)
        outputs = self._earlier_attempts(metrics, found)
        if outputs.stages:
            log(self.console, f"job {spec.job_id}: resuming after stage {outputs.done}")
        self.provenance["resumed_after_stage"] = outputs.done if outputs.done >= 0 else None
        self.tracker = tracking.JobTracker.open(self.tracking, spec, job_dir, self.study,
                                                found.state.stage if found else 0, lambda line: log(self.console, line))
        # The stage after the checkpoint's is trained from its first step: its logged steps go.
        trainlog.keep_through(job_dir, found.state.stage if found else 0)

        # The model: quantized base + adapter (fresh, or the checkpoint's).
        model, optimizer = recipe.load_model(prep, found.files.adapter if found else None)
        self.params = train.parameter_counts(model)
        ckpt = found
        if ckpt is None:  # stage 0's checkpoint: the freshly initialized adapter
            start = recipe.start_state(prep)
            ckpt = checkpoint.Checkpoint(checkpoint.save_checkpoint(job_dir, model, optimizer, start), start)
        evaluate = recipe.Evaluator(prep)
        try:
            with trainlog.TrainLog(job_dir) as self.train_log:
                self._stages(model, optimizer, evaluate, ckpt, outputs)
        finally:
            self.tracker.close()
        return read_json(JobDir(job_dir).metrics)

    def _stages(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, evaluate: Evaluator, ckpt: Checkpoint,
        outputs: _Outputs,
    ) -> None:
        """From the checkpoint's stage on: evaluate it (if not yet), train the next stage, checkpoint, repeat."""
        from trajhpc.job import checkpoint, recipe
        from trajhpc.job.progress import StageProgress, log

        spec, job_dir, prep, n = self.spec, self.job_dir, self.prep, len(self.spec.stage_blocks)
        k = ckpt.state.stage
        while True:
            if k > outputs.done:  # evaluate the checkpoint's stage
                self._activity(outputs.done, {"phase": "evaluating", "stage": k})
                under = "".join(f", again under {c}" for c in prep.heldout_under)
                log(self.console, f"stage {k}/{n}: evaluating {len(prep.heldout)} held-out examples{under}")
                entry, rows = evaluate(model, ckpt.state)
                atomic_write_jsonl(JobDir(job_dir).predictions(k), [checked(PredictionRow, r) for r in rows])
                outputs.stages.append(entry)
                outputs.token_stages.append(dict(ckpt.state.tokens))
                self._write_outputs(outputs, ckpt.state.consumed, prep.budgets, complete=k == n)
                self.tracker.stage(entry)
                if self.fault == ("after-stage", k, None):
                    raise InjectedFault(f"after stage {k}")
            if k == n:
                break
            # Both fresh and resumed runs continue from the checkpoint's bytes.
            checkpoint.restore_checkpoint(ckpt.path, model, optimizer)
            k += 1
            plan = recipe.next_stage_batches(prep, ckpt.state)
            self._activity(outputs.done, {"phase": "training", "stage": k, "steps": len(plan.steps)})
            with StageProgress(f"stage {k}/{n} {spec.stage_blocks[k - 1]}", len(plan.steps), self.console) as progress:
                state, scheduler_state = recipe.train_stage(
                    prep, model, optimizer, plan, ckpt.state, self.tracker.hook(k, self._step_hook(k, progress))
                )
            self.train_log.sync()  # the checkpoint's steps are on disk before it is
            ckpt = checkpoint.Checkpoint(
                checkpoint.save_checkpoint(job_dir, model, optimizer, state, scheduler_state), state
            )
            if self.fault == ("after-checkpoint", k, None):
                raise InjectedFault(f"after checkpoint {k}")

    def _activity(self, done: int, activity: Mapping[str, Any]) -> None:
        """state.json says what the job does now (a live view reads it with train_log.jsonl)."""
        write_state(self.job_dir, "running", max(done, 0), len(self.spec.stage_blocks), started=self.provenance["started"],
                    activity=activity)

    def _earlier_attempts(self, metrics: Mapping[str, Any] | None, found: Checkpoint | None) -> _Outputs:
        """The stage and token entries earlier attempts left, checked against the checkpoint."""
        stages = list(metrics["stages"]) if metrics else []
        done = len(stages) - 1
        tokens_doc = read_json(JobDir(self.job_dir).tokens)
        # tokens.json is written before metrics.json: drop a stage metrics does not list yet.
        token_stages = list(tokens_doc["stages"][: done + 1]) if tokens_doc else []
        if found is not None:
            state = found.state
            if state.job_id != self.spec.job_id or state.stage not in (done, done + 1):
                raise TrajhpcError(
                    f"{self.job_dir}: checkpoint (stage {state.stage}) does not fit metrics.json "
                    f"(stages 0..{done} done); delete the job directory to start over"
                )
        elif done >= 0:
            raise TrajhpcError(f"{self.job_dir}: metrics.json lists stages 0..{done} but checkpoint/ is missing")
        return _Outputs(stages, token_stages)

    def _step_hook(self, stage: int, progress):
        def hook(r) -> None:  # a trajhpc.job.train.StepReport
            progress.update(r.step, r.n_steps, r.loss, r.tokens)
            self.train_log.append(trainlog.entry(
                stage=stage, step=r.step, loss=r.loss, lr=r.lr, tokens=r.supervised_tokens,
                tokens_per_s=r.tokens / r.seconds if r.seconds > 0 else 0.0, examples=r.examples,
            ))
            if self.fault == ("step", stage, r.step):
                raise InjectedFault(f"stage {stage} step {r.step}")
            if self.fault is not None and self.fault[0] == "slow":
                time.sleep(self.fault[1] / 1000)  # wall time that does not depend on the CPU

        return hook

    def _write_outputs(
        self, outputs: _Outputs, consumed: int, budgets: Sequence[int] | None, *, complete: bool
    ) -> None:
        spec, n = self.spec, len(self.spec.stage_blocks)
        stages, token_stages = outputs.stages, outputs.token_stages
        budget = None
        if spec.token_budget is not None:
            budget = {
                "match": spec.token_budget.match,
                "count": spec.token_budget.count,
                "budget": budgets[-1],
                "consumed": consumed,
            }
        atomic_write_json(
            JobDir(self.job_dir).tokens,
            checked(TokensDoc, {"schema": TOKENS_SCHEMA, "job_id": spec.job_id, "condition": spec.condition,
                                "arm": spec.arm, "budget": budget, "stages": token_stages,
                                "evaluation": self.prep.eval_truncation}),
        )
        if complete:
            self.provenance["ended"] = provenance.now_iso()
        atomic_write_json(
            JobDir(self.job_dir).metrics,
            checked(MetricsDoc, {
                "schema": METRICS_SCHEMA,
                **identity(spec),
                "study": self.study,
                "device": self.prep.device.type,
                "complete": complete,
                "stages": stages,
                "final": final_summary(stages[-1]["per_block"], stages[-1].get("also_under")) if complete else None,
                "resources": resources(
                    stages, token_stages, provenance.peak_memory_bytes(self.prep.device.type), self.params,
                    self.prep.gradient_checkpointing,
                ),
                "provenance": self.provenance,
            }),
        )
        write_state(self.job_dir, "done" if complete else "running", len(stages) - 1, n,
                    started=self.provenance["started"])
