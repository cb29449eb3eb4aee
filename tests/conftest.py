"""Test-wide settings: fully offline, one shared model cache per session."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
