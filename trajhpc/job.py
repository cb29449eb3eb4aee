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
(:func:`trajhpc.train.restore_checkpoint`), exactly as a resumed run does after
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

import contextlib
import os
import re
import time
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import submitit
from rich.console import Console

from trajhpc import locks, provenance
from trajhpc.atomic import atomic_write_json, atomic_write_jsonl
from trajhpc.errors import InputError, TrajhpcError
from trajhpc.spec import JobSpec, load_spec, spec_from_dict

METRICS_SCHEMA = "trajhpc.metrics/1"
TOKENS_SCHEMA = "trajhpc.tokens/1"
FAULT_ENV = "TRAJHPC_FAULT_INJECT"
LOCK_FILE = ".lock"  # held by the process running the job (trajhpc.locks)
SUMMARY_KEYS = ("exact", "name", "name_excl_toolsearcher", "parse_fail", "arg_f1")
TOKEN_KEYS = (
    "examples", "prompt_tokens", "supervised_tokens", "total_tokens", "padded_tokens", "passes", "truncated_examples",
)


class InjectedFault(BaseException):
    """A simulated kill (tests only; see the module docstring)."""


# ---------------------------------------------------------------- entry points


def run_job_command(console: Console, spec_path: Path, job_dir: Path | None) -> dict[str, Any]:
    """``trajhpc run-job SPEC.json [--job-dir DIR]``: run (or resume) one job and print its final scores."""
    spec = load_spec(spec_path)
    job_dir = job_dir or Path("jobs") / spec.job_id
    use_threads(job_threads(os.environ, len(os.sched_getaffinity(0))))
    metrics = run_job(spec, job_dir, console=console)
    final = metrics["final"] or {}
    scores = "  ".join(f"{k} {final[k]:.3f}" for k in SUMMARY_KEYS if final.get(k) is not None)
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
    second run-job, a duplicate array task) is refused before it writes anything.
    """
    job_dir = Path(job_dir)
    with locks.exclusive(job_dir / LOCK_FILE) as held:
        if not held:
            who = locks.holder(job_dir / LOCK_FILE)
            raise TrajhpcError(
                f"{job_dir} is in use by another trajhpc job process{f' ({who})' if who else ''}; "
                "refusing to run it twice: wait for it to end, or stop it first"
            )
        return _run_locked(spec, job_dir, study, context, console)


def _run_locked(
    spec: JobSpec, job_dir: Path, study: str | None, context: Mapping[str, Any] | None, console: Console | None
) -> dict[str, Any]:
    claim_job_dir(spec, job_dir)
    metrics = read_json(job_dir / "metrics.json")
    n = len(spec.order)
    if metrics is not None and metrics.get("complete"):
        _mark_done(job_dir, metrics, n)
        return metrics
    started = provenance.now_iso()
    done = len(metrics["stages"]) - 1 if metrics else -1
    write_state(job_dir, "running", max(done, 0), n, started=started)
    sigint: list[int] = []
    try:
        with _noting_sigint(sigint):
            return _Run(spec, job_dir, study, context, console or Console()).run(metrics)
    except (Exception, KeyboardInterrupt) as err:
        # Ctrl-C (SIGINT) is no failure: "interrupted" resumes like a killed job when started again.
        # A library may turn the KeyboardInterrupt into another error (one landing mid-import does).
        interrupted = isinstance(err, KeyboardInterrupt) or bool(sigint)
        stage = len((read_json(job_dir / "metrics.json") or {"stages": [None]})["stages"]) - 1
        error = None if interrupted else last_line(err)
        write_state(job_dir, "interrupted" if interrupted else "failed", max(stage, 0), n, started=started, error=error)
        if interrupted and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise


@contextlib.contextmanager
def _noting_sigint(seen: list[int]) -> Iterator[None]:
    """Note in ``seen`` that SIGINT arrived, then handle it as before (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _mark_done(job_dir: Path, metrics: Mapping[str, Any], n_stages: int) -> None:
    """A complete job whose state.json does not say "done" (killed between the final
    metrics.json write and the state write, or state.json lost): write it now."""
    try:
        state = read_json(job_dir / "state.json")
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
        spec = spec_from_dict(spec_dict, source=Path(job_dir) / "spec.json")
        return run_job(spec, Path(job_dir), study=study, context=context)

    def checkpoint(
        self, spec_dict: dict[str, Any], job_dir: str | Path, study: str | None = None, context: dict | None = None
    ) -> submitit.helpers.DelayedSubmission:
        # The job directory is the checkpoint: requeue the same call, it resumes from disk.
        return submitit.helpers.DelayedSubmission(self, spec_dict, job_dir, study, context)


# ---------------------------------------------------------------- job directory


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file of the job directory, or None if absent; a corrupt or unreadable one
    (a FIFO, too large, too deep, not JSON) is an InputError, read through trajhpc.jobdir's
    bounded reader so a damaged job directory can never hang or crash the job."""
    from trajhpc.jobdir import FileProblem, read_json_object

    try:
        return read_json_object(path)
    except FileProblem as problem:
        raise InputError(path, None, f"{problem.detail}; delete the job directory to start over") from None


def claim_job_dir(spec: JobSpec, job_dir: Path) -> None:
    """Write spec.json, or check that the one there is this job's; never overwrite another job."""
    path = job_dir / "spec.json"
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


def write_state(
    job_dir: Path,
    state: str,
    stage: int,
    n_stages: int,
    *,
    started: str,
    error: str | None = None,
) -> None:
    atomic_write_json(
        job_dir / "state.json",
        {
            "state": state,
            "stage": stage,
            "n_stages": n_stages,
            "error": error,
            "started": started,
            "updated": provenance.now_iso(),
            "ended": provenance.now_iso() if state != "running" else None,
            "slurm_job_id": provenance.slurm_job_id(),
        },
    )


def last_line(err: BaseException) -> str:
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


def final_summary(per_block: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over blocks of each score (blocks where it is None are skipped)."""
    out: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        values = [b[key] for b in per_block.values() if b.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    out["per_block"] = dict(per_block)
    return out


def zero_tokens(stage: int = 0, *, budget: int | None = None) -> dict[str, Any]:
    """Stage 0's token entry (nothing trained); ``budget_cumulative`` 0 when the job has a budget."""
    entry: dict[str, Any] = {"stage": stage, "block": None, **{k: 0 for k in TOKEN_KEYS}}
    if budget is not None:
        entry["budget_cumulative"] = budget
    return entry


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


class _Run:
    """State of one attempt; :meth:`run` reads top to bottom as the protocol."""

    def __init__(
        self, spec: JobSpec, job_dir: Path, study: str | None, context: Mapping[str, Any] | None, console: Console
    ):
        self.spec, self.job_dir, self.study, self.console = spec, job_dir, study, console
        self.provenance = provenance.collect(context)
        self.fault = parse_fault(os.environ.get(FAULT_ENV))
        self.merged = None  # eval.backend "merged": the dense copy, built at the first evaluation

    def run(self, metrics: dict[str, Any] | None) -> dict[str, Any]:
        from trajhpc.data.study import load_study_data
        from trajhpc.models import resolve_model

        spec, job_dir, n = self.spec, self.job_dir, len(self.spec.order)
        # Data and model folder first: bad input fails before torch is even imported.
        data = load_study_data(spec.data)
        data.check_order(spec.order)
        model_path = resolve_model(spec.model)
        self._check_pretraining(model_path, data)

        import torch
        from transformers import AutoTokenizer, set_seed

        from trajhpc import train
        from trajhpc.progress import StageProgress, log

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device = device
        if device.type == "cuda":
            self.provenance["gpu"] = torch.cuda.get_device_name(device)
        dtype = train.resolve_compute_dtype(spec.compute_dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.blocks = data.blocks
        train_examples = {
            b: self._tokenize(tokenizer, data.train[b], spec.condition, spec.condition_k) for b in spec.order
        }
        heldout = self._heldout(tokenizer, data)
        self.truncated_gold = self._check_gold_lengths(heldout)
        budgets = self._budgets(tokenizer, data, train_examples) if spec.token_budget else None

        stages, token_stages, found = self._earlier_attempts(metrics, train.find_checkpoint(job_dir))
        if stages:
            log(self.console, f"job {spec.job_id}: resuming after stage {len(stages) - 1}")
        done = len(stages) - 1
        self.provenance["resumed_after_stage"] = done if done >= 0 else None

        # The model: quantized base + adapter (fresh, or the checkpoint's).
        self.gradient_checkpointing = self._gradient_checkpointing(model_path, train_examples, dtype, device)
        set_seed(spec.seed)
        base = train.load_base_model(
            model_path,
            quantization=spec.quantization,
            compute_dtype=dtype,
            device=device,
            gradient_checkpointing=self.gradient_checkpointing,
        )
        model = train.attach_lora(base, spec.lora, found[0] / "adapter" if found else None)
        optimizer = train.build_optimizer(model, spec.train)
        self.params = train.parameter_counts(model)
        if found is None:  # stage 0's checkpoint: the freshly initialized adapter
            meta = {"job_id": spec.job_id, "stage": 0, "consumed": 0, "train_loss": None, "train_seconds": 0.0,
                    "tokens": zero_tokens(budget=0 if budgets else None)}
            ckpt = train.save_checkpoint(job_dir, model, optimizer, meta)
        else:
            ckpt, meta = found
        # Mixed precision only on CUDA; on CPU the weights already are in the compute dtype.
        autocast = self.autocast = dtype if device.type == "cuda" else None

        k = meta["stage"]
        while True:
            if k > done:  # evaluate the checkpoint's stage
                log(self.console, f"stage {k}/{n}: evaluating {len(heldout)} held-out examples")
                stages.append(self._evaluate(model, tokenizer, heldout, k, meta))
                token_stages.append(meta["tokens"])
                done = k
                self._write_outputs(stages, token_stages, meta["consumed"], budgets, complete=k == n)
                if self.fault == ("after-stage", k, None):
                    raise InjectedFault(f"after stage {k}")
            if k == n:
                break
            # Both fresh and resumed runs continue from the checkpoint's bytes.
            train.restore_checkpoint(ckpt, model, optimizer)
            k += 1
            block = spec.order[k - 1]
            examples = train_examples[block]
            lengths = [len(e.input_ids) for e in examples]
            plan = self._plan(examples, lengths, k, budgets[k - 1] - meta["consumed"] if budgets else None)
            with StageProgress(f"stage {k}/{n} {block}", len(plan.steps), self.console) as progress:
                result = train.train_stage(
                    model, optimizer, examples, plan, spec.train,
                    pad_id=tokenizer.pad_token_id, autocast_dtype=autocast, on_step=self._step_hook(k, progress),
                )
            consumed = [examples[i] for i in plan.consumed()]
            counts = self._count(consumed)
            stage_tokens = {
                "stage": k, "block": block, **counts,
                "padded_tokens": train.padded_tokens(plan, lengths), "passes": plan.passes,
                "truncated_examples": sum(e.is_truncated for e in consumed),
            }
            if budgets:
                stage_tokens["budget_cumulative"] = budgets[k - 1]
            meta = {
                "job_id": spec.job_id,
                "stage": k,
                "consumed": meta["consumed"] + self._budget_count(counts),
                "train_loss": result.loss,
                "train_seconds": result.seconds,
                "tokens": stage_tokens,
            }
            ckpt = train.save_checkpoint(job_dir, model, optimizer, meta, result.scheduler_state)
            if self.fault == ("after-checkpoint", k, None):
                raise InjectedFault(f"after checkpoint {k}")
        return read_json(job_dir / "metrics.json")

    def _earlier_attempts(self, metrics, found):
        """(stage entries, token entries, checkpoint) that earlier attempts left, checked for consistency."""
        stages = list(metrics["stages"]) if metrics else []
        done = len(stages) - 1
        tokens_doc = read_json(self.job_dir / "tokens.json")
        # tokens.json is written before metrics.json: drop a stage metrics does not list yet.
        token_stages = list(tokens_doc["stages"][: done + 1]) if tokens_doc else []
        if found is not None:
            meta = found[1]
            if meta.get("job_id") != self.spec.job_id or meta["stage"] not in (done, done + 1):
                raise TrajhpcError(
                    f"{self.job_dir}: checkpoint (stage {meta['stage']}) does not fit metrics.json "
                    f"(stages 0..{done} done); delete the job directory to start over"
                )
        elif done >= 0:
            raise TrajhpcError(f"{self.job_dir}: metrics.json lists stages 0..{done} but checkpoint/ is missing")
        return stages, token_stages, found

    # -- data

    def _check_pretraining(self, model_path: Path, data) -> None:
        """Warn (and record in the provenance) when held-out dialogues were in the model's
        pre-training text: tiny pre-trains on the default split, and a study with another
        ``heldout_fraction`` over the same files holds out some of what it trained on."""
        from trajhpc.models import pretraining_dialogues
        from trajhpc.progress import log

        seen = pretraining_dialogues(model_path)
        if not seen:
            return
        heldout = {r.dialogue_key for records in data.heldout.values() for r in records}
        overlap = len(heldout & seen)
        self.provenance["heldout_dialogues_in_pretraining"] = overlap
        if overlap:
            log(
                self.console,
                f"warning: {overlap} of the {len(heldout)} held-out dialogues were in the pre-training text of "
                f"{self.spec.model} (it pre-trains on the default split, heldout_fraction 0.2): "
                "their scores do not measure held-out accuracy",
            )

    def _tokenize(self, tokenizer, records, condition: str, k: int | None):
        from trajhpc.data.conditions import tokenize_examples

        return tokenize_examples(tokenizer, records, condition, k=k, max_seq_len=self.spec.train.max_seq_len)

    def _heldout(self, tokenizer, data) -> list:
        from trajhpc.baselines import diagnostics
        from trajhpc.evaluate import HeldOut, gold_token_count

        special = set(tokenizer.all_special_ids)
        items = []
        for block in data.blocks:
            records = data.heldout[block]
            for r, ex in zip(records, self._tokenize(tokenizer, records, self.spec.condition, self.spec.condition_k)):
                gold = gold_token_count(ex.input_ids[len(ex.prompt_ids) :], special)
                seen = diagnostics(r.target, tokenizer.decode(ex.prompt_ids))  # the prompt as the model sees it
                items.append(HeldOut(block, r.dialogue_key, r.step, ex.prompt_ids, r.target, gold, seen))
        return items

    def _check_gold_lengths(self, heldout) -> dict[str, int]:
        """Per block, held-out examples whose gold call is longer than eval.max_new_tokens (never exact)."""
        from trajhpc.evaluate import truncated_gold
        from trajhpc.progress import log

        limit = self.spec.eval.max_new_tokens
        counts = truncated_gold(heldout, self.blocks, limit)
        if any(counts.values()):
            longest = max(it.gold_tokens for it in heldout)
            log(
                self.console,
                f"warning: {sum(counts.values())} of {len(heldout)} held-out gold calls are longer than "
                f"eval.max_new_tokens={limit} tokens (longest {longest}) and can never be generated exactly; "
                "raise eval.max_new_tokens (counted per stage as eval_truncated_gold in metrics.json)",
            )
        return counts

    def _count(self, examples) -> dict[str, int]:
        from trajhpc.data.tokens import count_tokens

        return count_tokens(examples).to_dict()

    def _budget_count(self, counts: Mapping[str, int]) -> int:
        if self.spec.token_budget is None:
            return 0
        return counts[f"{self.spec.token_budget.count}_tokens"]

    def _gradient_checkpointing(self, model_path, train_examples, dtype, device) -> bool:
        """The spec's choice; ``auto`` decided before the model loads, for the job's largest batch."""
        from trajhpc import train

        t = self.spec.train
        if isinstance(t.gradient_checkpointing, bool):
            return t.gradient_checkpointing
        from transformers import AutoConfig

        lengths = [len(e.input_ids) for examples in train_examples.values() for e in examples]
        return train.resolve_gradient_checkpointing(
            t.gradient_checkpointing,
            config=AutoConfig.from_pretrained(str(model_path)),
            batch_tokens=train.largest_batch_tokens(lengths, t.batch_size, t.tokens_per_batch),
            compute_dtype=dtype,
            quantization=self.spec.quantization,
            free_bytes=train.free_memory_bytes(device),
        )

    def _plan(self, examples, lengths, stage: int, budget: int | None):
        from trajhpc.train import plan_for

        counts = None
        if budget is not None:
            key = f"{self.spec.token_budget.count}_tokens"
            counts = [self._count([e])[key] for e in examples]
        return plan_for(self.spec.train, lengths, seed=self.spec.seed, stage=stage, budget=budget, counts=counts)

    def _budgets(self, tokenizer, data, own_examples) -> list[int]:
        """Cumulative count the matched condition consumes through each stage (same plans, same seeds).

        Warns when that equals what this job's own condition consumes without a budget:
        the arm would then train exactly like its condition (e.g. ``count: supervised``
        across A/B, whose supervised tokens are the same gold calls).
        """
        from trajhpc.progress import log

        budget = self.spec.token_budget
        k = self.spec.condition_k if budget.match == "last-k" else None  # JobSpec: match last-k => condition last-k
        matched = [self._tokenize(tokenizer, data.train[block], budget.match, k) for block in self.spec.order]
        cumulative = self._cumulative(matched)
        own = self._cumulative([own_examples[block] for block in self.spec.order])
        if cumulative == own:
            log(
                self.console,
                f"warning: token_budget of arm {self.spec.arm} (match {budget.match}, count: {budget.count}) "
                f"equals what condition {self.spec.condition} consumes without a budget at every stage "
                f"({cumulative[-1]} {budget.count} tokens): this arm trains exactly like {self.spec.condition}"
                + ("; supervised tokens are the gold calls, the same under every condition: use count: total"
                   if budget.count == "supervised" else ""),
            )
        return cumulative

    def _cumulative(self, examples_per_stage) -> list[int]:
        """Cumulative budget count through each stage of the unbudgeted plans over these examples."""
        out, total = [], 0
        for stage, examples in enumerate(examples_per_stage, start=1):
            plan = self._plan(examples, [len(e.input_ids) for e in examples], stage, None)
            total += self._budget_count(self._count([examples[i] for i in plan.consumed()]))
            out.append(total)
        return out

    # -- stages

    def _step_hook(self, stage: int, progress):
        def hook(step: int, n_steps: int, loss: float, tokens: int) -> None:
            progress.update(step, n_steps, loss, tokens)
            if self.fault == ("step", stage, step):
                raise InjectedFault(f"stage {stage} step {step}")
            if self.fault is not None and self.fault[0] == "slow":
                time.sleep(self.fault[1] / 1000)  # wall time that does not depend on the CPU

        return hook

    def _evaluate(self, model, tokenizer, heldout, stage: int, meta: Mapping[str, Any]) -> dict[str, Any]:
        from trajhpc.evaluate import evaluate

        cfg = self.spec.eval
        if cfg.backend == "merged":
            from trajhpc.merged import MergedEvalModel

            # Built once per attempt; later stages only re-merge the adapter into it.
            self.merged = self.merged.sync(model) if self.merged else MergedEvalModel.from_peft(model)
        ev = evaluate(
            model, tokenizer, heldout, self.blocks,
            batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, autocast_dtype=self.autocast,
            tokens_per_batch=cfg.tokens_per_batch, backend=cfg.backend, merged=self.merged,
        )
        atomic_write_jsonl(self.job_dir / "predictions" / f"stage-{stage}.jsonl", ev.rows)
        return {
            "stage": stage,
            "trained_block": self.spec.order[stage - 1] if stage else None,
            "train_loss": meta["train_loss"],
            "train_seconds": meta["train_seconds"],
            "eval_seconds": ev.seconds,
            "eval_backend": cfg.backend,
            "per_block": ev.per_block,
            "eval_truncated_gold": dict(self.truncated_gold),
        }

    def _write_outputs(self, stages, token_stages, consumed: int, budgets, *, complete: bool) -> None:
        spec, n = self.spec, len(self.spec.order)
        budget = None
        if spec.token_budget is not None:
            budget = {
                "match": spec.token_budget.match,
                "count": spec.token_budget.count,
                "budget": budgets[-1],
                "consumed": consumed,
            }
        atomic_write_json(
            self.job_dir / "tokens.json",
            {"schema": TOKENS_SCHEMA, "job_id": spec.job_id, "condition": spec.condition, "arm": spec.arm,
             "budget": budget, "stages": token_stages},
        )
        if complete:
            self.provenance["ended"] = provenance.now_iso()
        atomic_write_json(
            self.job_dir / "metrics.json",
            {
                "schema": METRICS_SCHEMA,
                "job_id": spec.job_id,
                "study": self.study,
                "condition": spec.condition,
                "arm": spec.arm,
                "seed": spec.seed,
                "order": list(spec.order),
                "model": spec.model,
                "quantization": spec.quantization,
                "device": self.device.type,
                "complete": complete,
                "stages": stages,
                "final": final_summary(stages[-1]["per_block"]) if complete else None,
                "resources": resources(
                    stages, token_stages, provenance.peak_memory_bytes(self.device.type), self.params,
                    self.gradient_checkpointing,
                ),
                "provenance": self.provenance,
            },
        )
        write_state(self.job_dir, "done" if complete else "running", len(stages) - 1, n,
                    started=self.provenance["started"])
