"""Test-wide settings: fully offline, one shared model cache per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Set before any test imports transformers/datasets: nothing may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One model cache for the whole session (and the job processes it spawns), so the
# tiny model is built once; kept out of the user's ~/.cache.
if "TRAJHPC_CACHE" not in os.environ:
    os.environ["TRAJHPC_CACHE"] = str(Path(tempfile.gettempdir()) / f"trajhpc-test-cache-{os.getuid()}")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Fixture helper modules (synthetic_jobs, hub_api_bank) import by name.
sys.path.insert(0, str(FIXTURES))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


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
    """(folder, tokenizer) of the tiny model as users get it: pre-trained offline (about
    3 minutes on one core) the first time, then read from the session cache ($TRAJHPC_CACHE,
    kept across sessions on one machine)."""
    from transformers import AutoTokenizer

    from trajhpc.job.models import resolve_model

    path = resolve_model("tiny")
    return path, AutoTokenizer.from_pretrained(str(path))


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
