"""Test-wide settings: fully offline, one shared model cache per session."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Set before any test imports transformers/datasets: nothing may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One model cache for the whole session (and the job processes it spawns), so a model built
# at first use (tiny-seed<N>, SmolLM2) is built once; kept out of the user's ~/.cache.
if "TRAJHPC_CACHE" not in os.environ:
    os.environ["TRAJHPC_CACHE"] = str(Path(tempfile.gettempdir()) / f"trajhpc-test-cache-{os.getuid()}")

import pytest  # noqa: E402
from rich.cells import cell_len  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = "TRAJHPC_UPDATE_GOLDEN"
# Fixture helper modules (synthetic_jobs, hub_api_bank) import by name.
sys.path.insert(0, str(FIXTURES))


@contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block takes longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds}s (hung?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def assert_fits(text: str, width: int, headers=()) -> None:
    """No line wider than ``width``, no column collapsed to nothing, no header or cell cut short."""
    for line in text.splitlines():
        assert cell_len(line.rstrip()) <= width, line
    assert "┳┳" not in text and "╇╇" not in text and "┃┃" not in text, text
    assert "…" not in text, text
    for header in headers:
        assert header in text, (header, text)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def golden():
    """``golden(name, text)``: ``text`` must equal ``tests/golden/<name>``, a rendered artifact
    reviewed by hand; with TRAJHPC_UPDATE_GOLDEN=1 the file is rewritten instead (review its diff)."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if os.environ.get(UPDATE_GOLDEN):
            path.write_text(text, encoding="utf-8")
        assert text == path.read_text(encoding="utf-8"), (
            f"{path.relative_to(REPO)} changed: review the diff, then rerun with {UPDATE_GOLDEN}=1"
        )

    return check


def _slurm_unavailable() -> str | None:
    """Why the local Slurm cluster can't be used, or None when it answers."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return "sinfo not on PATH (start the test cluster: bash scripts/slurm-ci-up.sh, as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0 or "up" not in out.stdout:
        return f"the Slurm cluster does not answer: {out.stderr.strip() or out.stdout.strip()}"
    return None


_SLURM_REASON: list[str | None] = []


def pytest_runtest_setup(item):
    """Slurm tests skip on a developer machine without the cluster, but fail in CI:
    a CI run that silently skipped them would prove nothing."""
    if "slurm" not in item.keywords:
        return
    if not _SLURM_REASON:
        _SLURM_REASON.append(_slurm_unavailable())
    reason = _SLURM_REASON[0]
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Slurm integration tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny():
    """(folder, tokenizer) of the tiny model as users get it: shipped built in the package
    (trajhpc/resources/tiny-v4); other seeds are built into the session cache ($TRAJHPC_CACHE)."""
    from transformers import AutoTokenizer

    from trajhpc.job.models import resolve_model

    path = resolve_model("tiny")
    return path, AutoTokenizer.from_pretrained(str(path))


# The one finished job that tests which only read a job directory share (built once per session).
FINISHED_SPEC = {
    "condition": "B",
    "order": ["cost-insurance-other", "care-appointments"],
    "seed": 1,
    "data": {"max_train_per_block": 12, "max_heldout_per_block": 2},
    "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 384},
    "lora": {"r": 4, "alpha": 8},
    "eval": {"batch_size": 8, "max_new_tokens": 4},
    "recipe": 2,  # a spec.json file without it is recipe 1, which this trajhpc no longer runs
}
FINISHED_CONTEXT = {"container_image": "/images/trajhpc.sif", "container_digest": "sha256:0123abcd"}


@dataclass(frozen=True)
class FinishedJob:
    """A complete condition-B job (:data:`FINISHED_SPEC`), its directory and its console output."""

    spec: Any
    job_dir: Path
    console: str


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory) -> FinishedJob:
    """:data:`FINISHED_SPEC` run as Slurm array task 77_3 with a container context; read it, never change it."""
    from rich.console import Console

    from trajhpc.job.run import run_job
    from trajhpc.spec import JobSpec

    spec = JobSpec.model_validate(FINISHED_SPEC)
    job_dir = tmp_path_factory.mktemp("finished") / "b"
    console = Console(record=True, width=300)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_JOB_ID", "80")
        mp.setenv("SLURM_ARRAY_JOB_ID", "77")
        mp.setenv("SLURM_ARRAY_TASK_ID", "3")
        run_job(spec, job_dir, study="s1", context=FINISHED_CONTEXT, console=console)
    return FinishedJob(spec, job_dir, console.export_text())


@pytest.fixture(scope="session")
def hub_api_bank_files(tmp_path_factory) -> Path:
    """A small API-Bank in the Hugging Face dataset's layout (tests/fixtures/hub_api_bank.py)."""
    import hub_api_bank

    return hub_api_bank.write_api_bank(tmp_path_factory.mktemp("api-bank"))


@pytest.fixture
def hub_cache(tmp_path, hub_api_bank_files, monkeypatch) -> Path:
    """A Hugging Face hub cache holding that dataset as liminghao1630/API-Bank, made the
    one huggingface_hub reads (what `hf download --repo-type dataset` leaves; no network)."""
    import hub_api_bank
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    hub_api_bank.write_hub_cache(cache, hub_api_bank_files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """The aggregate (200 resamples, no manifest: arms B, A@B, A) of synthetic_jobs.write_study: 18 complete
    jobs, arms A, B, A@B x seeds 0-2 x two orders, each with a train_log.jsonl of 3 steps per stage."""
    import synthetic_jobs as sj

    from trajhpc.results import aggregate as agg

    root = tmp_path_factory.mktemp("synthetic-runs")
    sj.write_study(root, "s1")
    (result,) = agg.aggregate([root], resamples=200)
    return result
