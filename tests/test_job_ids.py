"""Every job id of the shipped manifests is pinned: a spec change that moves one orphans
every run directory a user already has (new spec fields must hash out at their default).

Changed on purpose once: recipe v2 (the same examples in every step of every arm, a first
step at a positive learning rate) computes something else from an unchanged spec, so every
new spec records ``recipe: 2`` and gets a new id. A recipe-1 spec (its spec.json has no
``recipe``) keeps the id it had: pinned below on the hub manifest's old ids.

Moved on purpose: grid.yaml and factorial.yaml score every arm again under B
(``eval.also_under: [B]``), which is part of what those jobs compute, so their other arms
have new ids; the B arms keep theirs (the grid drops an arm's own condition from the list).

manifests/paper.yaml reads bundled files, so its ids are pinned like the others; data from
the Hugging Face cache (``data.source``), which the tests do not have, is pinned on the
fixture dataset below (the hub_cache fixture, tests/fixtures/hub_api_bank.py)."""

from __future__ import annotations

import json
from pathlib import Path

from trajhpc.study.grid import expand
from trajhpc.study.manifest import load_manifest, parse_manifest

REPO = Path(__file__).resolve().parent.parent


def test_job_ids_of_shipped_manifests_are_unchanged(golden):
    """Every shipped manifest's ids (rewrite with TRAJHPC_UPDATE_GOLDEN=1 only when a change means to move them)."""
    ids = {
        path.name: sorted(job.job_id for job in expand(load_manifest(path), Path("jobs")))
        for path in sorted((REPO / "manifests").glob("*.yaml"))
    }
    golden("manifest_job_ids.json", json.dumps(ids, indent=1) + "\n")


HUB_MANIFEST = """study: hub
model: tiny
conditions: [A, B]
data:
  source: {hf: liminghao1630/API-Bank}
  files: [training-data/lv1-api-train.json, training-data/lv2-api-train.json, training-data/lv3-api-train.json]
"""
# The fixture dataset's fingerprint and the ids it gives (tests/fixtures/hub_api_bank.py).
HUB_FINGERPRINT = "sha256:3b862b8df0a04a1897728ee0bf3a032d0acdc97e0e86e6873ed68c67e5de0648"
HUB_IDS = [  # model tiny is tiny-v4 in the spec (the pre-trained tiny model), recipe 2
    "429631458faa", "53ee55ae0b71", "5611b66ea2c5", "63e48dbf6f77",
    "9998fc5df52e", "c8649dbae944", "deabb57d2e57", "def2da7f8f54",
]
# The same jobs as recipe-1 specs: the ids every run directory made before recipe 2 has.
HUB_IDS_RECIPE_1 = [
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


def test_a_recipe_1_spec_keeps_its_id(hub_cache):
    """spec.json files written before ``recipe`` existed read as recipe 1 and hash as they did."""
    from trajhpc.spec import spec_from_dict

    for job in expand(parse_manifest(HUB_MANIFEST), Path("jobs")):
        old = job.spec.to_dict()
        del old["recipe"]
        old["model"] = "tiny-v3"  # what specs recorded then
        spec = spec_from_dict(old)
        assert spec.recipe == 1 and "recipe" not in spec.to_dict()
        assert spec.job_id in HUB_IDS_RECIPE_1
