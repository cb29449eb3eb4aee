"""The CLI frame: lists its commands; user mistakes are one line on stderr and exit code 2."""

import subprocess
import sys


def _trajhpc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_help_lists_every_command():
    out = _trajhpc("--help")
    assert out.returncode == 0
    for command in ("data", "run-job", "submit", "status", "aggregate"):
        assert command in out.stdout


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
