"""The CLI frame: lists its commands; user mistakes are one line on stderr and exit code 2."""

import subprocess
import sys


def _trajhpc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


COMMANDS = {"run-job", "submit", "status", "aggregate", "power", "data"}


def _help_commands(text: str) -> dict[str, str]:
    """The ``Commands:`` section of click's help: name -> its one-line summary."""
    section = text.split("\nCommands:\n", 1)[1]
    rows = [line.split(None, 1) for line in section.splitlines() if line.startswith("  ") and line.strip()]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def test_help_lists_every_command_with_a_summary():
    out = _trajhpc("--help")
    assert out.returncode == 0
    listed = _help_commands(out.stdout)
    assert set(listed) == COMMANDS, out.stdout
    assert all(summary.strip() for summary in listed.values()), listed
    assert set(_help_commands(_trajhpc("data", "--help").stdout)) == {"inspect"}


def test_every_listed_command_is_registered_and_answers_help():
    import typer.main

    from trajhpc import cli

    group = typer.main.get_command(cli.app)
    assert set(group.commands) == COMMANDS
    for name in sorted(COMMANDS - {"data"}):
        out = _trajhpc(name, "--help")
        assert out.returncode == 0 and out.stdout.startswith("Usage:") and f" {name} " in out.stdout.splitlines()[0]


def test_user_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"condition": "Z", "order": ["a"]}')
    out = _trajhpc("run-job", str(bad))
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "bad.json" in lines[0] and "condition" in lines[0]
    assert "Traceback" not in out.stderr


def test_unknown_command_exits_2():
    out = _trajhpc("frobnicate")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_run_job_on_a_folder_is_one_line_not_a_traceback(tmp_path):
    out = _trajhpc("run-job", str(tmp_path), "--job-dir", str(tmp_path / "job"))
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "folder" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_ctrl_c_in_any_command_exits_130_with_a_message(monkeypatch, capsys):
    import pytest

    import trajhpc.launch.statuscmd
    from trajhpc import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trajhpc.launch.statuscmd, "status_command", interrupted)
    monkeypatch.setattr(sys, "argv", ["trajhpc", "status"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_an_exit_status_raised_by_a_command_reaches_the_shell(monkeypatch):
    import pytest

    import trajhpc.launch.submit
    from trajhpc import cli

    monkeypatch.setattr(trajhpc.launch.submit, "submit_command", lambda *a, **k: 3)
    monkeypatch.setattr(sys, "argv", ["trajhpc", "submit", "m.yaml"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 3
