"""`trajhpc diff`: flattened dotted keys, the differences of two specs or two grids, the 80-column tables."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from trajhpc.core.errors import TrajhpcError
from trajhpc.study.diff import MISSING, Difference, diff_grids, diff_mappings, flatten
from trajhpc.study.diffcmd import GRID_KEYS, find_job, render_grids, render_jobs
from trajhpc.study.grid import expand
from trajhpc.study.manifest import parse_manifest

BASE = (
    "study: s\nconditions: [A, B]\nseeds: [0, 1]\n"
    "orders: [[care-appointments, medication-treatment]]\n"
    "data: {max_train_per_block: 4, max_heldout_per_block: 2}\ntrain: {lr: 1.0e-3, max_steps: 1}\n"
)


def _grid(text: str, overrides=()):
    m = parse_manifest(text, "m.yaml", overrides)
    return m.model_dump(mode="json", exclude=set(GRID_KEYS)), expand(m)


def _render(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=80, color_system=None, legacy_windows=False).print(renderable, highlight=False)
    return out.getvalue()


def test_flatten_gives_dotted_keys_lists_whole_and_mapping_entries_one_each():
    spec = {"train": {"lr": 1, "sched": {"kind": "cos"}}, "order": ["a", "b"], "empty": {},
            "rules": [{"block": "x", "regex": "a"}, {"block": "y", "regex": "b"}]}
    assert flatten(spec) == {
        "train.lr": 1, "train.sched.kind": "cos", "order": ["a", "b"], "empty": {},
        "rules.0": {"block": "x", "regex": "a"}, "rules.1": {"block": "y", "regex": "b"},
    }


def test_diff_mappings_lists_each_differing_key_once_sorted_with_missing_sides():
    a = {"train": {"lr": 1e-3, "epochs": 1}, "seed": 0, "order": ["x", "y"], "data": {"tool_docs": "dialogue"}}
    b = {"train": {"lr": 1e-4, "epochs": 1.0}, "seed": 0, "order": ["y", "x"], "recipe": 2}
    assert diff_mappings(a, b) == [
        Difference("data.tool_docs", "dialogue", MISSING),
        Difference("order", ["x", "y"], ["y", "x"]),
        Difference("recipe", MISSING, 2),
        Difference("train.lr", 1e-3, 1e-4),
    ]  # 1 and 1.0 are one JSON number: train.epochs is the same


def test_true_is_not_one():
    assert diff_mappings({"x": True}, {"x": 1}) == [Difference("x", True, 1)]
    assert diff_mappings({"x": {"y": [1, 2]}}, {"x": {"y": [1, 2]}}) == []


def test_equal_manifests_are_equal():
    ma, ja = _grid(BASE)
    mb, jb = _grid(BASE + "executor: auto\n")  # the default, written out
    d = diff_grids(ma, ja, mb, jb)
    assert d.equal and len(d.shared_jobs) == 4 and not d.settings


def test_a_setting_in_no_spec_differs_without_moving_an_id():
    ma, ja = _grid(BASE)
    mb, jb = _grid(BASE, ["executor=slurm"])
    d = diff_grids(ma, ja, mb, jb)
    assert d.settings == [Difference("executor", "auto", "slurm")]
    assert len(d.shared_jobs) == 4 and not d.jobs_only_a and not d.equal


def test_grids_name_arms_seeds_orders_only_one_has_and_the_shared_jobs():
    ma, ja = _grid(BASE)
    mb, jb = _grid(BASE, ["conditions=[A, calls-only]", "seeds=[1, 2]"])
    d = diff_grids(ma, ja, mb, jb)
    assert d.only_a == {"arms": ["B"], "seeds": [0], "orders": []}
    assert d.only_b == {"arms": ["calls-only"], "seeds": [2], "orders": []}
    assert len(d.shared_jobs) == 1 and len(d.jobs_only_a) == 3 and len(d.jobs_only_b) == 3
    assert d.settings == []  # only the grid differs


def test_a_spec_field_no_manifest_field_explains_is_a_spec_row():
    ma, ja = _grid(BASE)
    mb, jb = _grid(BASE)
    pin = "sha256:" + "0" * 64  # what grid expansion pins for a hub source whose files changed
    jb = [type(j)(j.spec.model_copy(update={"data": j.spec.data.model_copy(update={"fingerprint": pin})}),
                  j.job_id + "x", j.study, j.run_dir) for j in jb]
    d = diff_grids(ma, ja, mb, jb)
    assert d.settings == [Difference("spec.data.fingerprint", MISSING, pin)]
    assert "–: not set, or not the same in every job" in _render(render_grids(("a", 4), ("b", 4), d, 80))


def test_grid_diff_golden(golden):
    ma, ja = _grid(BASE)
    mb, jb = _grid(BASE, ["conditions=[A, calls-only]", "seeds=[1, 2]", "train.lr=1.0e-4",
                          "orders=[[medication-treatment, care-appointments]]",
                          "analysis={primary: {arm: calls-only, baseline: A}}"])
    text = _render(render_grids(("a.yaml", len(ja)), ("b.yaml", len(jb)), diff_grids(ma, ja, mb, jb), 80))
    assert max(len(line) for line in text.splitlines()) <= 80
    golden("diff_grids.txt", text)


def test_job_diff_golden(golden, tmp_path):
    (_, ja), (_, jb) = _grid(BASE), _grid(BASE, ["train.lr=1.0e-4", "data.tool_docs=dialogue", "lora.r=4"])
    a, b = ja[0], jb[0]
    diffs = diff_mappings(a.spec.to_dict(), b.spec.to_dict())
    assert [d.key for d in diffs] == ["data.tool_docs", "lora.r", "train.lr"]
    text = _render(render_jobs((a.job_id, "jobs/s/" + a.job_id), (b.job_id, "jobs/s/" + b.job_id), diffs, 80))
    assert max(len(line) for line in text.splitlines()) <= 80
    golden("diff_jobs.txt", text)


def test_find_job_by_folder_id_or_unique_prefix(tmp_path):
    root = tmp_path / "jobs"
    for name in ("abcdef000001", "abcdef000002", "123456789abc"):
        (root / "s" / name).mkdir(parents=True)
        (root / "s" / name / "spec.json").write_text("{}")
    assert find_job("123456789abc", root) == root / "s" / "123456789abc"
    assert find_job("1234", root) == root / "s" / "123456789abc"
    assert find_job(str(root / "s" / "abcdef000001"), root) == root / "s" / "abcdef000001"
    with pytest.raises(TrajhpcError, match="several jobs under .* start with it"):
        find_job("abcdef", root)
    with pytest.raises(TrajhpcError, match="ffff: no job with this id under"):
        find_job("ffff", root)
    with pytest.raises(TrajhpcError, match=r"not a job directory \(no spec.json\)"):
        find_job(str(root / "s"), root)
