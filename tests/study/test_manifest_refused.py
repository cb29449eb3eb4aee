"""Bad manifests refused at the door: one InputError naming file, line and field, quickly,
before any job is built (each case here once hung, exhausted memory, raised a traceback,
or passed `submit` only for every job to fail)."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajhpc.core.errors import InputError
from trajhpc.launch.submit import Launch
from trajhpc.study import containerfields as fields
from trajhpc.study.grid import expand
from trajhpc.study.manifest import load_manifest, parse_manifest, run_root_problem
from trajhpc.study.yamlread import MAX_BYTES, MAX_DEPTH

HEAD = "study: s\nconditions: [A]\n"  # lines 1-2


def _refused(text: str) -> str:
    with pytest.raises(InputError) as err:
        expand(parse_manifest(text, "m.yaml"))
    return str(err.value)


def _bomb(levels: int = 10) -> str:
    """``levels`` anchors, each a list of ten aliases of the one before: 10**levels nodes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _bounded(fn) -> tuple[float, int]:
    """(seconds, peak bytes allocated by Python) of calling ``fn``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, peak


# ---------------------------------------------------------------- YAML: aliases, depth, size, encoding


@pytest.mark.parametrize(
    "text",
    [
        HEAD + "zzz:\n" + "".join("  " + line + "\n" for line in _bomb().splitlines()),  # under an unknown key
        HEAD + "x: 1\n" + _bomb() + "orders: *a9\n",  # used as orders
    ],
    ids=["unknown-key", "orders"],
)
def test_alias_bomb_is_refused_fast_and_small(tmp_path, text):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert path.stat().st_size < 1000
    caught: list[InputError] = []

    def load() -> None:
        with pytest.raises(InputError) as err:
            load_manifest(path)
        caught.append(err.value)

    seconds, peak = _bounded(load)
    assert seconds < 2 and peak < 200 * 1024**2, (seconds, peak)
    message = str(caught[0])
    assert message.startswith(f"{path}:") and "YAML anchors (&a0) are not allowed in a manifest" in message
    assert caught[0].line is not None


def test_alias_cycle_and_lone_alias_name_the_line():
    assert _refused("study: s\nconditions: &c [A, *c]\n") == (
        "m.yaml:2: YAML anchors (&c) are not allowed in a manifest; write the value out"
    )
    assert _refused(HEAD + "seeds: *s\n").startswith("m.yaml:3: ")  # an undefined alias is a YAML error


def test_deep_nesting_is_refused_not_a_recursion_error():
    message = _refused(HEAD + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert message == f"m.yaml:3: nested more than {MAX_DEPTH} levels deep"
    message = _refused(HEAD + "x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    assert message == f"m.yaml:3: nested more than {MAX_DEPTH} levels deep"


def test_size_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(HEAD + "#" * MAX_BYTES + "\n")
    with pytest.raises(InputError, match=r"big\.yaml: manifest is 1,000,001 bytes, more than the 1,000,000 allowed"):
        load_manifest(big)
    with pytest.raises(InputError, match="more than the 1,000,000 allowed"):
        parse_manifest(HEAD + "#" * MAX_BYTES, "m.yaml")


def test_non_utf8_names_the_line_of_the_first_bad_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + "model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError) as err:
        load_manifest(path)
    assert str(err.value) == f"{path}:3: not UTF-8 text (invalid continuation byte: byte 0xe9)"


def test_control_character_names_its_line():
    assert _refused(HEAD + "model: a\x00b\n").startswith("m.yaml:3: not valid YAML (")


def test_a_folder_is_not_a_manifest(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_manifest(tmp_path)


# ---------------------------------------------------------------- the size of the grid


def test_huge_seed_count_is_refused_before_expanding():
    messages: list[str] = []
    seconds, peak = _bounded(lambda: messages.append(_refused(HEAD + "seeds: {count: 10_000_000}\n")))
    assert seconds < 2 and peak < 50 * 1024**2, (seconds, peak)
    assert messages == [
        "m.yaml:3: seeds: the grid is 1 arms x 10,000,000 seeds x 4 orders = 40,000,000 jobs, "
        "more than max_jobs (100,000); set max_jobs higher if you mean it"
    ]


def test_all_orders_of_many_blocks_are_counted_not_listed():
    rules = ", ".join(f"{{block: b{i}, regex: x{i}}}" for i in range(30))
    message = _refused(HEAD + f"orders: all\ndata:\n  blocks:\n    rules: [{rules}]\n")
    assert message.startswith("m.yaml:3: orders: the grid is 1 arms x 1 seeds x about 8.2e+33 orders")


def test_max_jobs_overrides_and_is_not_in_job_ids():
    text = HEAD + "seeds: {count: 3}\n"
    assert _refused(text + "max_jobs: 11\n").startswith("m.yaml:3: seeds: the grid is 1 arms x 3 seeds x 4 orders = 12 jobs")
    raised = expand(parse_manifest(text + "max_jobs: 12\n"))
    assert [j.job_id for j in raised] == [j.job_id for j in expand(parse_manifest(text))]
    assert _refused(HEAD + "max_jobs: 0\n") == "m.yaml:3: max_jobs: Input should be greater than or equal to 1"


# ---------------------------------------------------------------- values every job would reject

VALUES = [
    (HEAD + "seeds: [0, -1]\n", "m.yaml:3: seeds.1: Input should be greater than or equal to 0"),
    (HEAD + "seeds: [100000000000000000000000]\n", "m.yaml:3: seeds.0: Input should be less than or equal to 4294967295"),
    (HEAD + "seeds: [true, false]\n", "m.yaml:3: seeds.0: expected a number, not true/false"),
    (HEAD + "seeds: {count: 2, start: 4294967295}\n",
     "m.yaml:3: seeds: seeds 4294967295 .. 4294967296 go past the largest seed 4294967295"),
    (HEAD + "seeds: {count: true}\n", "m.yaml:3: seeds.count: expected a number, not true/false"),
    (HEAD + "lora: {r: true}\n", "m.yaml:3: lora.r: expected a number, not true/false"),
    (HEAD + "train:\n  batch_size: false\n", "m.yaml:4: train.batch_size: expected a number, not true/false"),
    (HEAD + "resources: {gpus_per_node: true}\n", "m.yaml:3: resources.gpus_per_node: expected a number, not true/false"),
    (HEAD + "train:\n  epochs: .inf\n", "m.yaml:4: train.epochs: Input should be a finite number"),
    (HEAD + "train:\n  lr: .nan\n", "m.yaml:4: train.lr: Input should be a finite number"),
    (HEAD + "train:\n  lr: 1e999\n", "m.yaml:4: train.lr: Input should be a finite number"),
    (HEAD + "executor: slurm\nresources:\n  mem_gb: .inf\n", "m.yaml:5: resources.mem_gb: Input should be a finite number"),
    (HEAD + "resources: {mem_gb: 0.0001}\n", "m.yaml:3: resources.mem_gb: Input should be greater than or equal to 0.001"),
    (HEAD + 'train: {"a\\nb": 1}\n', "m.yaml:3: train.'a\\nb': unknown key 'a\\nb'; valid keys: batch_size, epochs, "
     "examples_per_step, grad_accum, gradient_checkpointing, lr, max_grad_norm, max_seq_len, max_steps, schedule, "
     "tokens_per_batch, warmup_ratio, weight_decay"),
    (HEAD + "data:\n  blocks:\n    rules:\n      - {block: a, regex: '('}\n",
     "m.yaml:6: data.blocks.rules.0.regex: invalid regex '(' (missing ), unterminated subpattern at position 0)"),
    (HEAD + "data:\n  root: /nowhere/at/all\n", "m.yaml:4: data.root: folder /nowhere/at/all not found"),
    ("study: s\nconditions:\n  - {condition: A, token_budget: {match: last-k}}\n",
     "m.yaml:3: conditions.0: token_budget.match last-k needs k, which only condition last-k has; "
     "condition A can match A, A-slots, B, calls-only or responses-only"),
    (HEAD + "run_root: /proc/runs\n", "m.yaml:3: run_root: /proc/runs is in the system folder /proc; job directories cannot go there"),
    (HEAD + "run_root: /sys\n", "m.yaml:3: run_root: /sys is in the system folder /sys; job directories cannot go there"),
    (HEAD + "container: {runtime: docker, image: t:1, binds: [/]}\n",
     "m.yaml:3: container.binds.0: bind '/': the source is the whole file system (/); bind the folders a job needs"),
    (HEAD + "container:\n  runtime: apptainer\n  image: t.sif\n  binds: [/data, /etc/shadow]\n",
     "m.yaml:6: container.binds.1: bind '/etc/shadow': the source /etc/shadow is in the system folder /etc, "
     "which a manifest may not bind"),
    (HEAD + "container: {runtime: docker, image: t:1, binds: ['/data:/proc']}\n",
     "m.yaml:3: container.binds.0: bind '/data:/proc': the destination /proc is in the system folder /proc, "
     "which a manifest may not bind"),
    (HEAD + "container: {runtime: docker, image: t:1, binds: [/dev/../dev/sda]}\n",
     "m.yaml:3: container.binds.0: bind '/dev/../dev/sda': the source /dev/sda is in the system folder /dev, "
     "which a manifest may not bind"),
]


@pytest.mark.parametrize("text, message", VALUES, ids=[m.split(": ")[1] + "-" + str(i) for i, (_, m) in enumerate(VALUES)])
def test_values_jobs_would_reject_are_refused_at_load(text, message):
    assert _refused(text) == message


def test_values_still_accepted(tmp_path):
    m = parse_manifest(
        HEAD + f"seeds: [0, 4294967295]\ntrain: {{lr: 2e-4, epochs: 2}}\ndata: {{root: {tmp_path}}}\n"
        "container: {runtime: docker, image: t:1, binds: [/data, ~/x, 'rel:/home/me', /etcetera]}\n"
    )
    assert m.seeds == [0, 4294967295] and m.train.lr == 2e-4 and m.train.epochs == 2.0


def test_run_root_under_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("")
    assert _refused(HEAD + "run_root: taken/runs\n") == f"m.yaml:3: run_root: {tmp_path}/taken is a file, not a folder"
    assert _refused(HEAD + "run_root: taken\n") == f"m.yaml:3: run_root: {tmp_path}/taken is a file, not a folder"
    assert run_root_problem("new/runs") is None and run_root_problem(str(tmp_path)) is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("/a:b", r"the source expands to '/a:b/x', not one path"),
        ("/a\nb", r"the source expands to '/a\\nb/x', not one path"),
        ("-rf", r"the source expands to '-rf/x', not one path"),
        ("/etc", r"the source /etc/x is in the system folder /etc"),
    ],
)
def test_bind_variables_are_checked_once_expanded(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BADV", value)
    text = HEAD + "container:\n  runtime: apptainer\n  image: t.sif\n  binds:\n    - /data\n    - $BADV/x:/d\n"
    with pytest.raises(InputError, match=r"^m\.yaml:8: container\.binds\.1: bind '\$BADV/x:/d': " + message):
        Launch(parse_manifest(text, "m.yaml"), tmp_path / "m.yaml", Path("runs"), "slurm")
    monkeypatch.setenv("BADV", "/scratch")
    assert fields.expand_bind("$BADV/x:/d") == "/scratch/x:/d"


# ---------------------------------------------------------------- the command line


def test_cli_prints_messages_as_written_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "resources: {extra_sbatch: {'[a-z][a-z0-9-]': 1}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "submit", str(bad), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {bad}:3: resources.extra_sbatch.[a-z][a-z0-9-]: sbatch option '[a-z][a-z0-9-]' "
        "must match [a-z][a-z0-9-]* (no leading '--')"
    ], out.stderr


def test_cli_refuses_a_run_root_override_in_a_system_folder(repo_root):
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "submit", str(repo_root / "manifests" / "smoke.yaml"), "--dry-run",
         "--run-root", "/proc/x"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: --run-root: /proc/x is in the system folder /proc; job directories cannot go there"


# ---------------------------------------------------------------- anything at all: loads or InputError

_KEYS = ["study", "conditions", "seeds", "orders", "train", "data", "resources", "container", "max_jobs", "lr",
         "count", "start", "random", "condition", "k", "token_budget", "match", "rules", "regex", "binds", "mem_gb"]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["A", "B", "last-k", "latin", "all", "(", "/", "~"]),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
_SETTINGS = settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow])


def _loads_or_input_error(text: str) -> None:
    try:
        manifest = parse_manifest(text, "m.yaml")
    except InputError as err:
        assert str(err).startswith("m.yaml") and "\n" not in str(err), str(err)
        return
    try:
        expand(manifest)
    except InputError:
        pass


@_SETTINGS
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6))
def test_random_structures_load_or_raise_input_error(data):
    import yaml

    _loads_or_input_error(yaml.safe_dump({"study": "s", "conditions": ["A"], **data}))


_TOKENS = list("ab:-[]{}&*!|>'\"#, \n\t0.%@`?") + [
    "study: s\n", "conditions: [A]\n", "seeds: ", "orders: ", "!!int ", "!!float ", "!!timestamp ", "!!binary ",
    "!!python/name:os.system ", "&a ", "*a ", "<<: ", "\x00", "\xe9", "\ufeff", "---\n", "...\n", "%YAML 1.1\n",
]


@_SETTINGS
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join))
def test_random_yaml_text_loads_or_raises_input_error(text):
    _loads_or_input_error(text)
