"""`data.source: {hf: ...}`: the full API-Bank from the local Hugging Face cache, read with
`datasets`, identified in job ids by a content fingerprint.

Everything runs on a small dataset in the Hugging Face dataset's layout, put into a
hub cache in a temporary folder (tests/fixtures/hub_api_bank.py): no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import hub_api_bank as hub
import pytest

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data import source as data_source
from trajhpc.data.source import SourceError, fingerprint, load_data, pin_fingerprint
from trajhpc.data.splits import load_study_data
from trajhpc.spec import DataSpec, HubSource, JobSpec
from trajhpc.study.grid import expand
from trajhpc.study.manifest import parse_manifest

FILES = (hub.LV1, hub.LV2, hub.LV3)


def _hub_data(**fields) -> DataSpec:
    return DataSpec(source=HubSource(hf=hub.REPO), files=FILES, **fields)


def _manifest(data: str, source: str = "<m>"):
    return parse_manifest(f"study: s\nmodel: tiny\nconditions: [A, B]\norders: [[care-appointments]]\n{data}", source)


HUB_MANIFEST = f"""data:
  source: {{hf: {hub.REPO}}}
  files: [{", ".join(FILES)}]
"""


# ---------------------------------------------------------------- loading


def test_hub_source_reads_the_cached_snapshot_with_datasets(hub_cache, hub_api_bank_files, monkeypatch):
    read: list[Path] = []
    real = data_source._read_with_datasets
    monkeypatch.setattr(data_source, "_read_with_datasets", lambda path: read.append(path) or real(path))
    folder, records = load_data(_hub_data())
    assert folder == hub_cache / f"datasets--liminghao1630--API-Bank/snapshots/{hub.COMMIT}"
    assert [p.relative_to(folder).as_posix() for p in read] == list(FILES)
    # The same records, field for field, as trajhpc's own reader makes of the same folder.
    assert records == load_data(DataSpec(root=str(hub_api_bank_files), files=FILES))[1]
    n1, n2 = len(hub.training_records(1)), len(hub.training_records(2))
    assert len(records) == n1 + n2 + hub.N_LV3
    lv1 = records[1]
    assert lv1.source == hub.LV1 and lv1.step == 1 and lv1.lead_api is None
    assert lv1.dialogue_key == "What does a flight to Paris cost next week? (L1-0)"
    assert [t.role for t in lv1.history] == ["user", "ai", "api", "ai"]
    assert lv1.target == "API-Request: [BookFlight(city='Paris', price='420')]"
    assert json.loads(lv1.api_descriptions[0])["apiCode"] == "FlightPrice"


def test_level_1_and_2_training_sets_block_and_split_like_lv3(hub_cache):
    study = load_study_data(_hub_data())
    block_of = {r.dialogue_key: b for b in study.blocks for r in study.train[b] + study.heldout[b]}
    # lv3-rules over the first user utterance, whichever level the dialogue comes from.
    assert block_of["What does a flight to Paris cost next week? (L1-0)"] == "cost-insurance-other"
    assert block_of["Find me a yoga class near Berlin. (L2-1)"] == "mental-wellness-fitness"
    assert block_of["Refill my prescription for insulin. (L1-2)"] == "medication-treatment"
    assert block_of["Book a dentist appointment on Friday. (L2-3)"] == "care-appointments"


def test_revision_by_commit_hash_and_a_revision_not_cached(hub_cache):
    folder, _ = load_data(DataSpec(source=HubSource(hf=hub.REPO, revision=hub.COMMIT), files=(hub.LV3,)))
    assert folder.name == hub.COMMIT
    with pytest.raises(SourceError) as err:
        load_data(DataSpec(source=HubSource(hf=hub.REPO, revision="v2"), files=(hub.LV3,)))
    assert err.value.field == "data.source.hf"
    assert "revision 'v2'" in str(err.value) and "not in the local Hugging Face cache" in str(err.value)


def test_a_bad_json_file_in_the_snapshot_names_the_file(hub_cache):
    snapshot = hub_cache / f"datasets--liminghao1630--API-Bank/snapshots/{hub.COMMIT}"
    bad = snapshot / "training-data" / "broken.json"
    bad.write_text('[{"instruction": "i", "input": "x"', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.json: cannot be read as a JSON list of records"):
        load_data(DataSpec(source=HubSource(hf=hub.REPO), files=("training-data/broken.json",)))
    bad.write_text('[{"instruction": "i", "input": "User: hi"}]', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.json: record 0: missing field 'output' or 'expected_output'"):
        load_data(DataSpec(source=HubSource(hf=hub.REPO), files=("training-data/broken.json",)))


# ---------------------------------------------------------------- errors at the manifest's line


def test_dataset_not_in_the_cache_is_an_error_at_the_manifest_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    manifest = _manifest(HUB_MANIFEST, "m.yaml")
    with pytest.raises(InputError) as err:
        expand(manifest)
    message = str(err.value)
    assert message.startswith("m.yaml:6: data.source.hf: dataset 'liminghao1630/API-Bank' is not in the local")
    assert str(tmp_path / "empty") in message
    assert "hf download --repo-type dataset liminghao1630/API-Bank" in message


def test_a_file_the_snapshot_lacks_is_an_error_at_its_entry(hub_cache):
    files = f"  files:\n    - {hub.LV3}\n    - training-data/lv9.json\n"
    manifest = _manifest(f"data:\n  source: {{hf: {hub.REPO}}}\n" + files)
    with pytest.raises(InputError) as err:
        expand(manifest)
    message = str(err.value)
    assert message.startswith("<m>:9: data.files.1: training-data/lv9.json is not in the cached snapshot")
    assert hub.LV1 in message and hub.LEVEL1 in message  # what the snapshot has


@pytest.mark.parametrize(
    "data, field, message",
    [
        ("data: {root: /tmp, source: {hf: a/b}}", "data", "set either root (a folder) or source"),
        ("data: {source: {hf: API-Bank}}", "data.source.hf", "expected a Hugging Face dataset id"),
        ("data: {source: {hf: a/b, revision: ../x}}", "data.source.revision", "expected a branch, tag or commit"),
        ("data: {fingerprint: abc}", "data.fingerprint", "expected 'sha256:' and 64"),
        ("data: {source: {repo: a/b}}", "data.source.repo", "unknown key 'repo'"),
    ],
)
def test_bad_source_fields_are_refused_at_load(data, field, message):
    with pytest.raises(InputError) as err:
        _manifest(data + "\n")
    assert f": {field}: " in str(err.value) and message in str(err.value)


# ---------------------------------------------------------------- identity: fingerprint and job ids


def test_job_specs_carry_source_and_content_fingerprint(hub_cache):
    jobs = expand(_manifest(HUB_MANIFEST))
    expected = fingerprint(_hub_data())
    assert expected.startswith("sha256:") and len(expected) == 7 + 64
    for job in jobs:
        data = job.spec.to_dict()["data"]
        assert data["source"] == {"hf": hub.REPO, "revision": None}
        assert data["fingerprint"] == expected
        # What the job itself loads matches what the id was made from.
        assert JobSpec.model_validate(job.spec.to_dict()).job_id == job.job_id
    assert load_study_data(jobs[0].spec.data).blocks


def test_same_content_elsewhere_same_ids_changed_content_new_ids(
    hub_cache, hub_api_bank_files, tmp_path, monkeypatch
):
    import huggingface_hub.constants

    ids = sorted(j.job_id for j in expand(_manifest(HUB_MANIFEST)))
    # A copy of the cache in another place (another user's HF_HOME): the same jobs.
    moved = tmp_path / "elsewhere"
    hub.write_hub_cache(moved, hub_api_bank_files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(moved))
    assert sorted(j.job_id for j in expand(_manifest(HUB_MANIFEST))) == ids
    # One changed record: other data, other jobs.
    lv1 = moved / f"datasets--liminghao1630--API-Bank/snapshots/{hub.COMMIT}" / hub.LV1
    records = json.loads(lv1.read_text(encoding="utf-8"))
    records[0]["output"] = "API-Request: [FlightPrice(city='Rome')]"
    lv1.write_text(json.dumps(records), encoding="utf-8")
    changed = sorted(j.job_id for j in expand(_manifest(HUB_MANIFEST)))
    assert set(changed).isdisjoint(ids)


def test_bundled_data_spec_has_no_source_nor_fingerprint():
    data = DataSpec().model_dump(mode="json")
    assert "source" not in data and "fingerprint" not in data
    assert pin_fingerprint(DataSpec()) == DataSpec()


def test_a_manifest_can_pin_the_fingerprint(hub_cache):
    good = fingerprint(_hub_data())
    jobs = expand(_manifest(HUB_MANIFEST + f"  fingerprint: '{good}'\n"))
    assert {j.spec.data.fingerprint for j in jobs} == {good}
    wrong = "sha256:" + "0" * 64
    with pytest.raises(InputError) as err:
        expand(_manifest(HUB_MANIFEST + f"  fingerprint: '{wrong}'\n"))
    assert str(err.value).startswith("<m>:8: data.fingerprint: the data files are not the ones this manifest pins")
    assert good in str(err.value)


def test_the_job_refuses_data_that_changed_since_submit(hub_cache):
    spec_data = pin_fingerprint(_hub_data())
    lv2 = hub_cache / f"datasets--liminghao1630--API-Bank/snapshots/{hub.COMMIT}" / hub.LV2
    lv2.write_text(lv2.read_text(encoding="utf-8").replace("Berlin", "Munich"), encoding="utf-8")
    with pytest.raises(TrajhpcError, match=r"^data\.fingerprint: the data files in .* hash to sha256:"):
        load_study_data(spec_data)
