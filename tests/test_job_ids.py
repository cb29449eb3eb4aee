"""Every job id of the shipped manifests is pinned: a spec change that moves one orphans
every run directory a user already has (new spec fields must hash out at their default).

manifests/paper.yaml reads bundled files, so its ids are pinned like the others; data from
the Hugging Face cache (``data.source``), which the tests do not have, is pinned on the
fixture dataset below (the hub_cache fixture, tests/fixtures/hub_api_bank.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajhpc.study.grid import expand
from trajhpc.study.manifest import load_manifest, parse_manifest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((REPO / "tests" / "golden" / "manifest_job_ids.json").read_text())


def test_every_shipped_manifest_is_pinned():
    assert sorted(GOLDEN) == sorted(p.name for p in (REPO / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_job_ids_of_shipped_manifests_are_unchanged(name):
    jobs = expand(load_manifest(REPO / "manifests" / name), Path("jobs"))
    assert sorted(job.job_id for job in jobs) == GOLDEN[name]


HUB_MANIFEST = """study: hub
model: tiny
conditions: [A, B]
data:
  source: {hf: liminghao1630/API-Bank}
  files: [training-data/lv1-api-train.json, training-data/lv2-api-train.json, training-data/lv3-api-train.json]
"""
# The fixture dataset's fingerprint and the ids it gives (tests/fixtures/hub_api_bank.py).
HUB_FINGERPRINT = "sha256:3b862b8df0a04a1897728ee0bf3a032d0acdc97e0e86e6873ed68c67e5de0648"
HUB_IDS = [  # model tiny is tiny-v3 in the spec (the pre-trained tiny model)
    "321dea248add", "4b16461102d4", "57a44017373f", "7951b4af7131",
    "7d6316e415ee", "83b389198076", "b7291140e8d6", "cb141c8636c5",
]


def test_job_ids_of_a_hub_source_are_pinned(hub_cache):
    """Data from the Hugging Face cache enter the id by repository and content fingerprint:
    pinned on the fixture dataset, so a change to how a source is identified (which would
    orphan every run directory made from one) shows here. Rebuilding the fixture with other
    content changes these values; the shipped manifests' ids above do not depend on it."""
    jobs = expand(parse_manifest(HUB_MANIFEST), Path("jobs"))
    assert {job.spec.data.fingerprint for job in jobs} == {HUB_FINGERPRINT}
    assert sorted(job.job_id for job in jobs) == HUB_IDS
