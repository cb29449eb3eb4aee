"""The manifest's ``tracking`` block: validated like every field, handed to jobs, in no job id."""

from __future__ import annotations

from pathlib import Path

import pytest

from trajhpc.core.errors import InputError
from trajhpc.launch.submit import Launch
from trajhpc.study.grid import expand
from trajhpc.study.manifest import parse_manifest
from trajhpc.study.tracking import tracking_context

HEAD = "study: s\nconditions: [A, B]\nseeds: [0, 1]\n"  # lines 1-3


def test_tracking_is_off_by_default_and_jobs_get_no_tracking_context(tmp_path):
    m = parse_manifest(HEAD)
    assert m.tracking.backend == "none"
    assert tracking_context(m.tracking, tmp_path) is None
    assert "tracking" not in Launch(m, tmp_path / "m.yaml", tmp_path / "jobs", "local").context


def test_tracking_changes_no_job_id():
    plain = [job.job_id for job in expand(parse_manifest(HEAD))]
    tracked = [job.job_id for job in expand(parse_manifest(HEAD + "tracking: {backend: wandb, project: p}\n"))]
    assert tracked == plain and len(plain) == 16  # 2 arms x 2 seeds x 4 latin orders


def test_every_job_of_a_submission_gets_the_block(tmp_path):
    m = parse_manifest(HEAD + "tracking:\n  backend: tensorboard\n  dir: tb\n")
    launch = Launch(m, tmp_path / "m.yaml", tmp_path / "jobs", "local")
    # A relative dir is made absolute at submit: a job may start in another folder.
    assert launch.context["tracking"] == {"backend": "tensorboard", "dir": str(Path.cwd().resolve() / "tb")}


def test_options_are_kept_as_written():
    m = parse_manifest(HEAD + "tracking: {backend: mlflow, uri: 'http://mlflow:5000', experiment: e}\n")
    assert tracking_context(m.tracking, Path("/x")) == {"backend": "mlflow", "uri": "http://mlflow:5000",
                                                        "experiment": "e"}


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("tracking: {backend: neptune}\n", "m.yaml:4: tracking.backend: Input should be 'none', 'tensorboard',"),
        ("tracking:\n  backend: mlflow\n  project: p\n",
         "m.yaml:4: tracking: 'project' is a wandb option, but backend is 'mlflow'"),
        ("tracking: {uri: 'sqlite:///x.db'}\n", "'uri' is a mlflow option, but backend is 'none'"),
        ("tracking: {backend: wandb, mode: disabled}\n", "tracking.mode: Input should be 'offline' or 'online'"),
        ("tracking: {backend: wandb, projct: p}\n", "tracking.projct"),
        ("tracking: {backend: tensorboard, dir: \"a\\nb\"}\n", "tracking.dir: String should match pattern"),
    ],
)
def test_bad_tracking_blocks_are_refused_with_file_line_and_field(block, expected):
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + block, "m.yaml")
    assert expected in str(err.value)
