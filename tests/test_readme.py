"""The README keeps exactly two set-up commands, and CI runs the second one verbatim."""

import re

from conftest import REPO


def _setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands), "each set-up command is one pasteable line"


def test_first_command_runs_the_smoke_manifest_then_aggregates():
    first = _setup_commands()[0]
    assert "trajhpc submit manifests/smoke.yaml" in first
    assert "trajhpc aggregate" in first
    assert (REPO / "manifests" / "smoke.yaml").exists()


def test_ci_runs_the_second_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.splitlines()
