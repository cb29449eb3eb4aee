"""Every job id of the shipped manifests is pinned: a spec change that moves one orphans
every run directory a user already has (new spec fields must hash out at their default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajhpc.grid import expand
from trajhpc.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((REPO / "tests" / "fixtures" / "golden" / "manifest_job_ids.json").read_text())


def test_every_shipped_manifest_is_pinned():
    assert sorted(GOLDEN) == sorted(p.name for p in (REPO / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_job_ids_of_shipped_manifests_are_unchanged(name):
    jobs = expand(load_manifest(REPO / "manifests" / name), Path("jobs"))
    assert sorted(job.job_id for job in jobs) == GOLDEN[name]
