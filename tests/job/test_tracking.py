"""Metric loggers, for real and offline: each backend's run read back through the library's own reader.

Every job here is killed mid-stage (the fault injection of tests/job/test_resume.py) and
started again: the run it leaves must be ONE run, holding every optimizer step once, every
evaluated stage's block scores, and the spec as parameters.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from conftest import FINISHED_SPEC
from rich.console import Console

from trajhpc.job.run import FAULT_ENV, InjectedFault, run_job
from trajhpc.job.tracking import JobTracker, run_name
from trajhpc.jobdir.paths import find_job_dirs
from trajhpc.spec import JobSpec

SPEC = JobSpec.model_validate(FINISHED_SPEC)  # 2 stages of 2 optimizer steps
STUDY = "trk"
STEPS = [1, 2, 3, 4]
BLOCKS = SPEC.order


def killed_and_resumed(tmp_path: Path, monkeypatch, tracking: dict) -> tuple[Path, str]:
    """The job killed after step 1 of stage 2, then run to the end; its job dir and console output."""
    job_dir = tmp_path / STUDY / SPEC.job_id
    console = Console(record=True, width=300)
    monkeypatch.setenv(FAULT_ENV, "stage:2:step:1")
    with pytest.raises(InjectedFault):
        run_job(SPEC, job_dir, study=STUDY, context={"tracking": tracking}, console=console)
    monkeypatch.delenv(FAULT_ENV)
    metrics = run_job(SPEC, job_dir, study=STUDY, context={"tracking": tracking}, console=console)
    assert metrics["complete"] and metrics["provenance"]["context"]["tracking"] == tracking
    return job_dir, console.export_text()


def losses(job_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (job_dir / "train_log.jsonl").read_text().splitlines()]


def exact(job_dir: Path) -> dict[tuple[int, str], float]:
    """(stage, block) -> exact score, from metrics.json."""
    metrics = json.loads((job_dir / "metrics.json").read_text())
    return {(s["stage"], b): v["exact"] for s in metrics["stages"] for b, v in s["per_block"].items()}


@pytest.mark.slow
def test_tensorboard_run_folder_read_back_with_event_accumulator(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job_dir, console = killed_and_resumed(tmp_path, monkeypatch, {"backend": "tensorboard"})
    assert "tracking" not in console
    assert [p.name for p in (tmp_path / STUDY / "tensorboard").iterdir()] == [SPEC.job_id]  # one run per job
    acc = EventAccumulator(str(tmp_path / STUDY / "tensorboard" / SPEC.job_id))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    # The killed attempt's step 3 is purged by TensorBoard's own reader: each step once.
    assert [e.step for e in loss] == STEPS
    assert [e.value for e in loss] == pytest.approx(losses(job_dir), rel=1e-6)
    assert {t for t in acc.Tags()["scalars"]} >= {"train/lr", "train/tokens_per_s", "stage"}
    scores = exact(job_dir)
    for block in BLOCKS:
        events = acc.Scalars(f"eval/{block}/exact")
        assert [e.step for e in events] == [0, 2, 4]  # after stage 0, 1, 2: the R-matrix rows
        assert [e.value for e in events] == pytest.approx([scores[(k, block)] for k in (0, 1, 2)])
    assert find_job_dirs(tmp_path / STUDY) == [job_dir]
    assert SPEC.job_id in acc.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_mlflow_sqlite_store_read_back_with_mlflow_client(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job_dir, console = killed_and_resumed(tmp_path, monkeypatch, {"backend": "mlflow", "uri": uri})
    assert "tracking" not in console
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed attempt continued the same run
    run = runs[0]
    assert run.info.run_name == run_name(SPEC) and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("arm", "seed", "order")} == {"arm": "B", "seed": "1",
                                                                      "order": " ".join(SPEC.order)}
    assert run.data.params["job_id"] == SPEC.job_id and run.data.params["train.max_steps"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == STEPS
    assert [m.value for m in history] == pytest.approx(losses(job_dir))
    scores = exact(job_dir)
    for block in BLOCKS:
        history = client.get_metric_history(run.info.run_id, f"eval/{block}/exact")
        assert [(m.step, m.value) for m in history] == [(s, pytest.approx(scores[(k, block)]))
                                                         for k, s in ((0, 0), (1, 2), (2, 4))]


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``), parsed with wandb's own protobuf schema.

    wandb 0.30 ships no Python reader for the file; its framing is LevelDB's log format
    (32 KiB blocks of CRC32C, length, type + data) after a 7-byte ``:W&B`` header."""
    from wandb.proto import wandb_internal_pb2

    data, out, pos, chunk = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def key(item) -> str:
    """A history or config item's key (W&B writes it as ``nested_key`` parts or as ``key``)."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    job_dir, console = killed_and_resumed(tmp_path, monkeypatch, {"backend": "wandb"})
    assert "tracking" not in console
    run_id = json.loads((job_dir / "tracking.json").read_text())["run_id"]
    folders = sorted((tmp_path / STUDY / "wandb").glob("offline-run-*"))
    # Offline, each attempt writes a folder of the SAME run id: `wandb sync` uploads them as one run.
    # Two attempts started within one second share the timestamp, and wandb adds "-1" to the second folder.
    folder_name = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?")
    assert len(folders) == 2 and all(folder_name.fullmatch(f.name) for f in folders), folders
    history: list[dict] = []
    config: dict = {}
    for folder in folders:
        for record in wandb_records(folder / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
                assert (run.run_id, run.run_group, run.job_type, run.display_name, run.project) == (
                    run_id, STUDY, "B", run_name(SPEC), STUDY)
            elif kind == "history":
                row = {key(item): json.loads(item.value_json) for item in record.history.item}
                history.append(row | {"_step": record.history.step.num})
            elif kind == "config":
                config |= {key(u): json.loads(u.value_json) for u in record.config.update}
    assert find_job_dirs(tmp_path / STUDY) == [job_dir]  # status and aggregate see no job in the tools' folders
    assert config["job_id"] == SPEC.job_id and config["train.max_steps"] == 2  # the spec, as parameters
    steps = [h["_step"] for h in history if "train/loss" in h]
    assert steps == STEPS  # the killed attempt's step 3 is not logged again
    assert [h["train/loss"] for h in history if "train/loss" in h] == pytest.approx(losses(job_dir))
    scores = exact(job_dir)
    rows = [h for h in history if f"eval/{BLOCKS[0]}/exact" in h]
    assert [(h["stage"], h[f"eval/{BLOCKS[0]}/exact"]) for h in rows] == [
        (k, pytest.approx(scores[(k, BLOCKS[0])])) for k in (0, 1, 2)]


@pytest.mark.slow
def test_a_failing_tracker_is_logged_once_and_the_job_goes_on(tmp_path):
    not_a_folder = tmp_path / "tb"
    not_a_folder.write_text("a file where the run folders would go")
    console = Console(record=True, width=300)
    job_dir = tmp_path / STUDY / SPEC.job_id
    metrics = run_job(SPEC, job_dir, study=STUDY, context={"tracking": {"backend": "tensorboard",
                                                                         "dir": str(not_a_folder)}}, console=console)
    assert metrics["complete"] and metrics["final"]["exact"] is not None
    text = console.export_text()
    assert text.count("tracking (tensorboard) failed, the job goes on without it") == 1


class RaisingLogger:
    """A backend whose tool went away mid-run: every call raises."""

    run_id, last_step = "r", -1

    def __init__(self):
        self.calls = 0

    def log_params(self, params):
        raise OSError("disk full")

    def log_dict(self, values, step):
        self.calls += 1
        raise ConnectionError("tracking server gone")

    def close(self):
        raise ConnectionError("tracking server gone")


def test_a_backend_raising_mid_run_is_logged_once_then_left_alone():
    lines: list[str] = []
    tracker = JobTracker(lines.append)
    tracker.logger = backend = RaisingLogger()
    hook = tracker.hook(1, lambda r: None)

    class Step:
        loss, lr, tokens, seconds = 1.0, 1e-4, 100, 0.5

    for _ in range(3):
        hook(Step())
    tracker.stage({"stage": 1, "per_block": {"b": {"exact": 0.5, "n": 2}}})
    tracker.close()
    assert backend.calls == 1 and tracker.step == 3  # steps still counted: a later stage's numbers stay right
    assert lines == ["tracking (RaisingLogger) failed, the job goes on without it: ConnectionError: tracking server gone"]


def test_no_tracking_opens_nothing(tmp_path):
    tracker = JobTracker.open(None, SPEC, tmp_path / "job", STUDY, 0, print)
    assert tracker.logger is None and not (tmp_path / "job").exists()


def test_a_missing_library_names_its_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if `trajhpc[wandb]` were not installed
    lines: list[str] = []
    tracker = JobTracker.open({"backend": "wandb"}, SPEC, tmp_path / "job", STUDY, 0, lines.append)
    assert tracker.logger is None
    assert len(lines) == 1 and lines[0].endswith("(pip install 'trajhpc[wandb]')")


def _open_mlflow(args: tuple[int, str]) -> list[str]:
    seed, job_dir = args
    lines: list[str] = []
    spec = JobSpec.model_validate(FINISHED_SPEC | {"seed": seed})
    tracker = JobTracker.open({"backend": "mlflow"}, spec, Path(job_dir), STUDY, 0, lines.append)
    tracker.close()
    return lines


@pytest.mark.slow
def test_jobs_starting_together_share_the_default_mlflow_store(tmp_path):
    """Two jobs of a study open the default SQLite store at once (both failed before the store lock)."""
    from concurrent.futures import ProcessPoolExecutor

    from mlflow.tracking import MlflowClient

    with ProcessPoolExecutor(2) as pool:
        lines = list(pool.map(_open_mlflow, [(seed, str(tmp_path / STUDY / f"job{seed}")) for seed in (1, 2)]))
    assert lines == [[], []]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / STUDY / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
