"""Metric loggers: a job reports to TensorBoard, MLflow or Weights & Biases (README "Tracking").

One small interface, torchtune-style (:class:`MetricLogger`: params once, a dict of scalars
at a step, close), one backend per library, each through the library's own API and
imported only when chosen (the extras ``trajhpc[tensorboard]``, ``[mlflow]``, ``[wandb]``).
:class:`JobTracker` is what the job talks to: it numbers steps across stages, keeps the run
id in ``<job_dir>/tracking.json`` so a resumed job continues the SAME run, and turns every
tracking failure into one line of the job log, after which the job goes on without it.

What is logged: the spec as parameters when the run is created; per optimizer step
``train/loss``, ``train/lr``, ``train/tokens_per_s`` (step = the job's optimizer step
counted over all stages, as in train_log.jsonl); after each evaluated stage ``stage`` and
``eval/<block>/<score>`` for every block and score: the stage's row of the R-matrix.

No duplicated steps after a resume. The stage after the checkpoint is retrained from its
first step, so the killed attempt may have logged some of its steps already:
TensorBoard hides them itself (``purge_step`` at the first retrained step); MLflow and
W&B skip the steps the run already holds (MLflow: its metric history; W&B offline: the
steps the killed attempt took, from train_log.jsonl; online: the resumed run's step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from trajhpc.core import locks
from trajhpc.core.atomic import atomic_write_json
from trajhpc.job.scoring import SCORE_KEYS
from trajhpc.jobdir import trainlog
from trajhpc.spec import JobSpec

STATE_FILE = "tracking.json"
BACKENDS = ("tensorboard", "mlflow", "wandb")
_STEP_KEY = "train/loss"  # the metric whose history tells MLflow's last logged step


class MetricLogger(Protocol):
    """One run of one job in one tracking tool."""

    run_id: str
    last_step: int  # the highest step the run already holds (-1: none); earlier ones are not logged again

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_dict(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def flat_params(spec: JobSpec) -> dict[str, Any]:
    """The spec as flat ``a.b.c`` parameters (lists as JSON text), plus the job id."""
    out: dict[str, Any] = {"job_id": spec.job_id, "arm": spec.arm}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value

    walk("", spec.to_dict())
    return out


def run_name(spec: JobSpec) -> str:
    """``<arm>-seed<S>-<order>``: what a tool's run list shows."""
    return f"{spec.arm}-seed{spec.seed}-{'.'.join(spec.order)}"


# ---------------------------------------------------------------- backends


class TensorBoardLogger:
    """One run folder per job: ``<dir>/<job_id>``, written with torch's SummaryWriter (tensorboard's event format)."""

    def __init__(
        self, options: Mapping[str, Any], spec: JobSpec, study_dir: Path, run_id: str | None, resume_step: int
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = run_id or spec.job_id
        self.last_step = -1  # TensorBoard purges what lies past resume_step itself
        folder = Path(options.get("dir") or study_dir / "tensorboard") / self.run_id
        # Events at steps >= purge_step that an earlier attempt wrote are hidden by every reader.
        self.writer = SummaryWriter(str(folder), purge_step=resume_step + 1 if run_id else None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("spec", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """Experiment = the study, one run per job, tags arm/seed/order; through MlflowClient."""

    def __init__(self, options: Mapping[str, Any], spec: JobSpec, study_dir: Path, run_id: str | None, study: str):
        # The study's jobs start together, and each would create (migrate) the SQLite store and the
        # experiment at once: found in a real 2-job study, both failed. One at a time here.
        with locks.exclusive(study_dir / ".mlflow.lock", timeout_s=300) as held:
            if not held:
                raise TimeoutError(f"{study_dir / '.mlflow.lock'} stayed busy for 300 s")
            self._open(options, spec, run_id, study, study_dir)

    def _open(self, options: Mapping[str, Any], spec: JobSpec, run_id: str | None, study: str, study_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=options.get("uri") or f"sqlite:///{study_dir / 'mlflow.db'}")
        if run_id is None:
            name = options.get("experiment") or study
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                experiment_id = self.client.create_experiment(name)
            else:
                experiment_id = experiment.experiment_id
            tags = {"arm": spec.arm, "seed": str(spec.seed), "order": " ".join(spec.order), "job_id": spec.job_id,
                    "study": study}
            run_id = self.client.create_run(experiment_id, tags=tags, run_name=run_name(spec)).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, _STEP_KEY)
        self.last_step = max((m.step for m in history), default=-1)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger:
    """group = the study, job_type = the arm, name with seed and order; offline unless ``mode: online``.

    Offline runs land in ``<study_dir>/wandb/offline-run-*``; ``wandb sync`` uploads them."""

    def __init__(self, options: Mapping[str, Any], spec: JobSpec, study_dir: Path, run_id: str | None, study: str,
                 attempted: int):
        import wandb

        mode = options.get("mode") or "offline"
        self.run = wandb.init(
            project=options.get("project") or study, entity=options.get("entity"), group=study, job_type=spec.arm,
            name=run_name(spec), id=run_id, dir=str(study_dir), mode=mode, reinit="create_new",
            # Offline, the same id is enough (`wandb sync` joins the folders); online, W&B must resume.
            resume="allow" if run_id and mode == "online" else None,
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self.run.id
        # Offline, a resumed run knows nothing of the killed attempt's steps: those are in train_log.jsonl.
        self.last_step = max(attempted if run_id else -1, self.run.step - 1)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_dict(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------- what the job talks to


class JobTracker:
    """The job's tracker: never raises; after a failure it logs one line and does nothing more."""

    def __init__(self, log: Callable[[str], None]):
        self.logger: MetricLogger | None = None
        self.step = 0  # optimizer steps of this job so far (all stages)
        self._log = log
        self._skip_through = -1

    @classmethod
    def open(
        cls, options: Mapping[str, Any] | None, spec: JobSpec, job_dir: Path, study: str | None, ckpt_stage: int,
        log: Callable[[str], None],
    ) -> "JobTracker":
        """The job's run (created, or the one ``tracking.json`` names); call before the train log is cut back."""
        tracker = cls(log)
        backend = (options or {}).get("backend", "none")
        if backend == "none":
            return tracker
        study = study or job_dir.parent.name
        state_path = Path(job_dir) / STATE_FILE
        try:
            steps = trainlog.read_train_log(job_dir)
            tracker.step = sum(1 for e in steps if e["stage"] <= ckpt_stage)  # steps through the checkpoint
            state = _read_state(state_path, backend)
            run_id = state.get("run_id")
            study_dir = Path(job_dir).parent
            if backend == "tensorboard":
                logger: MetricLogger = TensorBoardLogger(options, spec, study_dir, run_id, tracker.step)
            elif backend == "mlflow":
                logger = MLflowLogger(options, spec, study_dir, run_id, study)
            elif backend == "wandb":
                logger = WandbLogger(options, spec, study_dir, run_id, study, len(steps))
            else:
                raise ValueError(f"unknown tracking backend {backend!r} (one of none, {', '.join(BACKENDS)})")
            if run_id is None:
                atomic_write_json(state_path, {"backend": backend, "run_id": logger.run_id})
                logger.log_params(flat_params(spec))
            tracker.logger, tracker._skip_through = logger, logger.last_step
        except Exception as err:
            tracker._fail(backend, err)
        return tracker

    def train_step(self, stage: int, loss: float, lr: float, tokens_per_s: float) -> None:
        """One optimizer step; steps the run already holds (a resumed attempt's retrained ones) are skipped."""
        self.step += 1
        if self.step > self._skip_through:
            self._call(lambda lg: lg.log_dict(
                {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s, "stage": stage}, self.step))

    def hook(self, stage: int, inner: Callable[[Any], None]) -> Callable[[Any], None]:
        """The step hook of a training stage: logs each step (a train.StepReport), then runs ``inner``.
        Logged first: a kill inside ``inner`` then never leaves a step in train_log.jsonl that the run lacks."""

        def hook(r: Any) -> None:
            self.train_step(stage, r.loss, r.lr, r.tokens / r.seconds if r.seconds > 0 else 0.0)
            inner(r)

        return hook

    def stage(self, entry: Mapping[str, Any]) -> None:
        """An evaluated stage's metrics entry: every block's scores (the R-matrix row)."""
        values = {"stage": entry["stage"]}
        for block, scores in entry["per_block"].items():
            for key in SCORE_KEYS:
                if scores.get(key) is not None:  # None: a score this block has no items for
                    values[f"eval/{block}/{key}"] = scores[key]
        self._call(lambda lg: lg.log_dict(values, self.step))

    def close(self) -> None:
        self._call(lambda lg: lg.close())
        self.logger = None

    def _call(self, fn: Callable[[MetricLogger], None]) -> None:
        if self.logger is None:
            return
        try:
            fn(self.logger)
        except Exception as err:
            self._fail(type(self.logger).__name__, err)

    def _fail(self, what: str, err: Exception) -> None:
        self.logger = None  # once: the job goes on without tracking
        hint = f" (pip install 'trajhpc[{err.name}]')" if isinstance(err, ImportError) and err.name in BACKENDS else ""
        first = (str(err).strip().splitlines() or [""])[0][:300]  # one line: some carry whole SQL statements
        self._log(f"tracking ({what}) failed, the job goes on without it: {type(err).__name__}: {first}{hint}")


def _read_state(path: Path, backend: str) -> dict[str, Any]:
    """``tracking.json`` of an earlier attempt ({} if none, or if it was another backend's run)."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return state if isinstance(state, dict) and state.get("backend") == backend else {}
