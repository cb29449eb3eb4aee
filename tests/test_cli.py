"""The CLI frame: lists its commands; user mistakes are one line on stderr and exit code 2."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _trajhpc(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


COMMANDS = {"run-job", "submit", "status", "aggregate", "power", "data", "diff"}


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
    import trajhpc.launch.submit
    from trajhpc import cli

    monkeypatch.setattr(trajhpc.launch.submit, "submit_command", lambda *a, **k: 3)
    monkeypatch.setattr(sys, "argv", ["trajhpc", "submit", "m.yaml"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 3


# ---------------------------------------------------------------- what reaches the terminal (issue 22 items 10, 11, 17)


def _study(tmp_path):
    """A finished synthetic study under tmp_path/runs, and the environment to run trajhpc on it."""
    import synthetic_jobs as sj

    sj.write_study(tmp_path / "runs", "s1")
    return tmp_path / "runs"


COMMANDS_ON_A_STUDY = {
    "aggregate": lambda runs, tmp: ["aggregate", str(runs), "--no-plots"],
    "status": lambda runs, tmp: ["status", str(runs)],
    "submit --dry-run": lambda runs, tmp: [
        "submit", str(REPO / "manifests" / "smoke.yaml"), "--dry-run", "--executor", "local", "--run-root", str(tmp / "r"),
    ],
}


def _env(**extra):
    return {**os.environ, **extra}


def test_an_ascii_terminal_gets_ascii_not_a_traceback(tmp_path):
    runs = _study(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "aggregate", str(runs), "--no-plots"], capture_output=True,
        cwd=tmp_path, timeout=300, env=_env(PYTHONIOENCODING="ascii"),
    )
    assert out.returncode == 0 and b"Traceback" not in out.stderr, out.stderr.decode(errors="replace")
    text = out.stdout.decode("ascii")  # nothing else in it
    assert "B - A" in text, text


def test_ascii_text_spells_symbols_out():
    from trajhpc.core.termout import ascii_text

    assert ascii_text("B − A · 3×2 ≥ 1 … café ☃") == "B - A - 3x2 >= 1 ... cafe ?"


def test_a_full_disk_on_stdout_is_one_line_and_exit_2(tmp_path):
    runs = _study(tmp_path)
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [sys.executable, "-m", "trajhpc.cli", "status", str(runs)], stdout=full, stderr=subprocess.PIPE,
            text=True, cwd=tmp_path, timeout=120,
        )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == ["error: cannot write to standard output: No space left on device"]


@pytest.mark.parametrize("columns", ["0", "-3", "abc", ""])
def test_a_bad_columns_value_does_not_silence_output(tmp_path, columns):
    runs = _study(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "status", str(runs)], capture_output=True, text=True, cwd=tmp_path,
        timeout=120, env=_env(COLUMNS=columns),
    )
    assert out.returncode == 0, out.stderr
    assert "job id" in out.stdout and "18 jobs: 18 done" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80  # rich's width when not a terminal
    error = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "status", str(tmp_path / "nowhere")], capture_output=True, text=True,
        cwd=tmp_path, timeout=120, env=_env(COLUMNS=columns),
    )
    assert error.returncode == 2 and "no such manifest or run directory" in error.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS_ON_A_STUDY))
def test_a_closed_pipe_ends_every_command_quietly_with_0(tmp_path, command):
    runs = _study(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "trajhpc.cli", *COMMANDS_ON_A_STUDY[command](runs, tmp_path)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=tmp_path,
    )
    proc.stdout.close()  # the reader is gone before the first line: every write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert stderr == ""


def test_a_closed_stdout_is_no_reader_either(tmp_path):
    runs = _study(tmp_path)
    out = subprocess.run(f"{sys.executable} -m trajhpc.cli status {runs} >&-", shell=True, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr


# ---------------------------------------------------------------- --set and diff (issue 23)


SMOKE = REPO / "manifests" / "smoke.yaml"


def test_set_on_a_dry_run_changes_the_grid_and_a_bad_one_names_the_override(tmp_path):
    out = _trajhpc("submit", str(SMOKE), "--dry-run", "--set", "seeds=[7]", "--set", "train.lr=1e-4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 jobs: 4 to submit" in out.stdout and "overrides: --set 'seeds=[7]' --set train.lr=1e-4" in out.stdout
    bad = _trajhpc("submit", str(SMOKE), "--dry-run", "--set", "train.lr=abc", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith(
        "error: --set train.lr=abc: train.lr: Input should be a valid number"
    ), bad.stderr
    unknown = _trajhpc("status", str(SMOKE), "--set", "train.lrr=1", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "--set train.lrr=1: train.lrr: unknown key 'lrr' (did you mean 'lr'?)" in unknown.stderr
    assert not (tmp_path / "jobs").exists()


def test_status_with_the_same_set_lists_the_same_jobs_as_the_dry_run(tmp_path):
    from trajhpc.study.grid import expand
    from trajhpc.study.manifest import load_manifest

    ids = [j.job_id for j in expand(load_manifest(SMOKE, ["seeds=[7]"]))]
    out = _trajhpc("status", str(SMOKE), "--set", "seeds=[7]", cwd=tmp_path)
    assert out.returncode == 0 and all(i in out.stdout for i in ids), out.stdout
    plain = _trajhpc("status", str(SMOKE), cwd=tmp_path)
    assert not any(i in plain.stdout for i in ids)
    refused = _trajhpc("status", str(tmp_path), "--set", "seeds=[7]", cwd=tmp_path)
    assert refused.returncode == 2 and "--set applies to a manifest" in refused.stderr


def test_diff_exits_like_diff_1(tmp_path):
    import json

    from trajhpc.study.grid import expand
    from trajhpc.study.manifest import load_manifest

    root = tmp_path / "jobs"
    jobs = expand(load_manifest(SMOKE), root) + expand(load_manifest(SMOKE, ["lora.r=4"]), root)
    for job in jobs:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "spec.json").write_text(json.dumps(job.spec.to_dict()))
    a, b = jobs[0].job_id, jobs[len(jobs) // 2].job_id
    same = _trajhpc("diff", a, str(jobs[0].run_dir), cwd=tmp_path)
    assert same.returncode == 0 and "the specs are the same (one job)" in same.stdout, same.stdout + same.stderr
    differ = _trajhpc("diff", a, b, cwd=tmp_path)
    assert differ.returncode == 1 and "lora.r" in differ.stdout and "1 spec field differs" in differ.stdout
    assert "Traceback" not in differ.stderr
    other = re.sub(r"(?m)^(\s+lr:) \S+", r"\1 1.0e-5", SMOKE.read_text())
    assert other != SMOKE.read_text()
    (tmp_path / "m.yaml").write_text(other)
    grids = _trajhpc("diff", str(SMOKE), "m.yaml", cwd=tmp_path)
    assert grids.returncode == 1 and "jobs: 0 in both, 8 only in A, 8 only in B" in grids.stdout
    assert _trajhpc("diff", str(SMOKE), str(SMOKE), cwd=tmp_path).returncode == 0
    for args, message in [
        (("ffffffff", a), "ffffffff: no job with this id under jobs"),
        ((str(SMOKE), a), "diff compares two jobs or two manifests"),
    ]:
        out = _trajhpc("diff", *args, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, out.stderr


def test_data_inspect_and_power_take_set_with_a_manifest(tmp_path):
    out = _trajhpc("data", "inspect", "--manifest", str(SMOKE), "--set", "data.max_train_per_block=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    total = next(line for line in out.stdout.splitlines() if "total" in line)
    assert [c.strip() for c in total.split("│")][3] == "8"  # 2 train records in each of 4 blocks (the file: 24)
    bad = _trajhpc("data", "inspect", "--manifest", str(SMOKE), "--set", "data.max_train_per_block=0", cwd=tmp_path)
    assert bad.returncode == 2 and "--set data.max_train_per_block=0: data.max_train_per_block:" in bad.stderr
    alone = _trajhpc("data", "inspect", "--set", "data.max_train_per_block=2", cwd=tmp_path)
    assert alone.returncode == 2 and "name the manifest with --manifest" in alone.stderr
    power = _trajhpc("power", str(SMOKE), "--set", "seeds=x", cwd=tmp_path)
    assert power.returncode == 2 and power.stderr.startswith("error: --set seeds=x: seeds: "), power.stderr
