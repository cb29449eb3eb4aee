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


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    return " ".join(text.split(f"### {title}\n", 1)[1].split("\n#", 1)[0].split())


def test_how_many_seeds_quotes_what_trajhpc_power_computes():
    from trajhpc.results import power as pw
    from trajhpc.results import stats

    text = _section("How many seeds?")
    a = pw.Assumptions()
    p = pw.plan(a)
    at_20 = p.unit_power[p.units.index(pw.GRID_UNITS)]
    expected = [
        f"gain of {a.effect:g} points", f"unit SD of {a.unit_sd:g} points", f"disagree on {a.discordance:.0%}",
        f"{a.items} held-out items", f"smallest p with 5 pairs is {stats.smallest_sign_flip_p(5):g}",
        f"grid.yaml's {pw.GRID_UNITS} units", f"power {at_20:.2f};",
        f"80% power needs {p.min_units[0.8]} units and 90% needs {p.min_units[0.9]}",
        f"at {p.detect_units} units the smallest effect detected with 80% power is {p.unit_detectable[0.8]:.1f} "
        f"points ({p.unit_detectable[0.9]:.1f} points for 90%)",
        f"on {a.items} items the SE of the difference is {p.item_se:.1f} points",
        f"has power {p.item_power:.2f} for {a.effect:g} points", f"detects {p.item_detectable[0.8]:.1f} points",
        f"({p.draws:,} studies",
    ]
    assert [e for e in expected if e not in text] == []


def test_the_exit_status_table_is_what_trajhpc_returns():
    """The README's table lists exactly the statuses the code has names for (issue 22: true for every case)."""
    from trajhpc import cli
    from trajhpc.core.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
    from trajhpc.launch.submit import EXIT_JOBS_FAILED
    from trajhpc.study.diffcmd import EXIT_DIFFERENT

    text = (REPO / "README.md").read_text()
    table = text.split("| exit | when |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = {int(line.split("|")[1]): line for line in table.splitlines()}
    assert sorted(rows) == sorted({0, 1, 2, EXIT_JOBS_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_DIFFERENT})
    assert "`submit` waited" in rows[EXIT_JOBS_FAILED] and "Ctrl-C" in rows[EXIT_INTERRUPTED]
    assert "SIGTERM" in rows[EXIT_TERMINATED] and "head" in rows[0] and "no Slurm" in rows[2]
    assert "trajhpc diff" in rows[EXIT_DIFFERENT] and "differ" in rows[EXIT_DIFFERENT]
    for status in rows:
        assert str(status) in cli.main.__doc__, status
