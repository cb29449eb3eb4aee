"""Values with which every job would fail, or evaluate nothing, are refused once, up front, by the
dry run and the submit alike (trajhpc.study.preflight, called by launch.submit.prepare_submission),
naming the manifest's file, line and field: never "stage N: ..." after stage 0 ran."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from trajhpc.core.errors import InputError
from trajhpc.data.apibank import bundled_root
from trajhpc.launch.submit import prepare_submission, submit_command

HEAD = "study: s\nconditions: [A, B]\norders: [[care-appointments]]\n"
LV3 = "training-data/lv3-api-train.json"


def _refused(tmp_path: Path, text: str) -> str:
    """The one-line error prepare_submission (shared by the dry run and the submit) gives for this manifest."""
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        prepare_submission(path, tmp_path / "runs", "local")
    return str(err.value).removeprefix(f"{path}")


def _accepted(tmp_path: Path, text: str):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return prepare_submission(path, tmp_path / "runs", "local")


@pytest.fixture()
def root(tmp_path) -> Path:
    """A data folder with the bundled lv3 file (data.root), for files of one's own beside it."""
    folder = tmp_path / "data"
    (folder / "training-data").mkdir(parents=True)
    shutil.copy(bundled_root() / LV3, folder / LV3)
    return folder


# ---------------------------------------------------------------- item 7: nothing evaluated


def test_a_heldout_fraction_that_holds_out_nothing_is_refused(tmp_path):
    assert _refused(tmp_path, HEAD + "data:\n  heldout_fraction: 1.0e-9\n") == (
        ":5: data.heldout_fraction: 1e-09 holds out no dialogue of training-data/lv3-api-train.json in any block: "
        "the study would evaluate nothing (the default is 0.2)"
    )


def test_a_block_without_heldout_examples_is_refused(tmp_path):
    # One dialogue per block; a tiny fraction holds out none of them.
    text = _refused(tmp_path, HEAD + "data:\n  heldout_fraction: 0.01\n")
    assert text.startswith(":5: data.heldout_fraction: 0.01 holds out none of the ")
    assert "that block would never be evaluated; raise it" in text


# ---------------------------------------------------------------- item 13: blocks without training examples


def test_an_empty_files_list_is_refused(tmp_path):
    assert _refused(tmp_path, HEAD + "data:\n  files: []\n") == (
        ":5: data.files: lists no file: there would be no examples to train or evaluate on"
    )


def test_a_file_holding_an_empty_list_is_refused_naming_it(tmp_path, root):
    (root / "empty.json").write_text("[]")
    text = _refused(tmp_path, HEAD + f"data:\n  root: {root}\n  files: [{LV3}, empty.json]\n")
    assert text == f":6: data.files.1: {root / 'empty.json'} holds no record (an empty list): every job would find nothing to train on"


def test_an_empty_folder_is_refused_naming_it(tmp_path, root):
    (root / "dialogues").mkdir()
    text = _refused(tmp_path, HEAD + f"data:\n  root: {root}\n  files:\n    - dialogues\n")
    assert text == f":7: data.files.0: {root / 'dialogues'} holds no .jsonl dialogue: every job would find nothing to train on"


def test_a_block_whose_dialogues_are_all_held_out_is_refused_naming_block_and_file(tmp_path):
    text = _refused(tmp_path, HEAD + "data:\n  heldout_fraction: 0.999\n")
    assert text.startswith(":5: data.heldout_fraction: block 'care-appointments' of training-data/lv3-api-train.json "
                           "has no training example: heldout_fraction 0.999 holds out all ")
    assert text.endswith("every job would fail at the stage that trains it")


# ---------------------------------------------------------------- item 12: values that fail every job


@pytest.mark.parametrize(
    "lora, message",
    [
        ("lora: {target_modules: []}", ":4: lora.target_modules: lists no module: "),
        ("lora: {target_modules: ''}", ":4: lora.target_modules: is empty: "),
        ("lora: {target_modules: [q_proj, ' ']}", ":4: lora.target_modules.1: is empty: "),
    ],
)
def test_empty_target_modules_are_refused(tmp_path, lora, message):
    assert _refused(tmp_path, HEAD + lora + "\n").startswith(message)


@pytest.mark.parametrize(
    "lora, message",
    [
        ("[q_proj, qproj]", ":4: lora.target_modules.1: 'qproj' matches no module of tiny; its adaptable modules are: "),
        ("'.*\\.attn\\.q'", ":4: lora.target_modules: '.*\\\\.attn\\\\.q' matches no module of tiny"),
        ("[self_attn]", ":4: lora.target_modules.0: 'self_attn' names only LlamaAttention modules (e.g. "
                        "model.layers.0.self_attn), which LoRA cannot adapt"),
    ],
)
def test_target_modules_the_model_lacks_are_refused(tmp_path, tiny, lora, message):
    text = _refused(tmp_path, HEAD + f"lora: {{target_modules: {lora}}}\n")
    assert text.startswith(message), text
    assert "down_proj" in text or "LoRA cannot adapt" in text


def test_target_modules_the_model_has_are_accepted(tmp_path, tiny):
    _accepted(tmp_path, HEAD + "lora: {target_modules: [q_proj, v_proj]}\n")
    _accepted(tmp_path, HEAD + "lora: {target_modules: '.*\\.(q|v)_proj'}\n")


def test_a_local_model_folder_that_does_not_exist_is_refused(tmp_path):
    text = _refused(tmp_path, HEAD + f"model: {tmp_path}/no-such-model\n")
    assert text.startswith(f":4: model: model '{tmp_path}/no-such-model' not found")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("", "not valid JSON"),
        ('[{"instruction": "x", "input": "User: hi\\n", "output": "API-Request: [A()]"}, {"instr', "not valid JSON"),
        ('[{"foo": 1}]', "record 0: missing field 'instruction'"),
    ],
    ids=["missing", "empty", "truncated", "wrong-schema"],
)
def test_a_bad_data_file_is_refused_naming_the_entry_and_the_file(tmp_path, root, content, message):
    if content is not None:
        (root / "bad.json").write_text(content)
    text = _refused(tmp_path, HEAD + f"data:\n  root: {root}\n  files: [{LV3}, bad.json]\n")
    assert text.startswith(f":6: data.files.1: {root / 'bad.json'}"), text
    assert message in text


def test_a_block_rule_that_matches_no_dialogue_is_refused_naming_the_rule(tmp_path):
    text = _refused(tmp_path, "study: s\nconditions: [A]\ndata:\n  blocks:\n    rules:\n"
                              "      - {block: care, regex: appointment}\n      - {block: never, regex: zzzqqq}\n")
    assert text == (
        ":7: data.blocks.rules.1: block 'never' gets no dialogue of training-data/lv3-api-train.json: regex 'zzzqqq' "
        "matches no dialogue's first user utterance; every job would fail on it (change the rule, or leave the block "
        "out of the partition)"
    )


def test_a_study_name_longer_than_a_folder_name_is_refused_by_the_dry_run_too(tmp_path):
    name = "s" * 256
    text = _refused(tmp_path, f"study: {name}\nconditions: [A]\n")
    assert text == ":1: study: is 256 characters; it names a folder, and a folder name has at most 255"
    _accepted(tmp_path, f"study: {'s' * 255}\nconditions: [A]\norders: [[care-appointments]]\n")


def test_max_new_tokens_must_leave_room_for_a_prompt(tmp_path):
    assert _refused(tmp_path, HEAD + "train: {max_seq_len: 64}\n") == (
        ":4: train.max_seq_len: eval.max_new_tokens (160) must be less than train.max_seq_len (64): a held-out prompt "
        "keeps max_seq_len - max_new_tokens tokens, the rest is room for the generated call"
    )
    assert _refused(tmp_path, HEAD + "train: {max_seq_len: 64}\neval: {max_new_tokens: 64}\n").startswith(
        ":5: eval.max_new_tokens: eval.max_new_tokens (64) must be less")


# ---------------------------------------------------------------- item 5: settings that truncate every example


def test_settings_that_truncate_every_example_are_refused(tmp_path, tiny):
    text = _refused(tmp_path, "study: s\nconditions:\n  - A\n  - {condition: B, tool_docs: block}\n"
                              "train: {max_seq_len: 512}\neval: {max_new_tokens: 48}\n")
    assert text.startswith(":5: train.max_seq_len: all ")
    assert " training examples of arm B+docs-block with tool_docs: block are longer than 512 tokens (the shortest is " in text
    need = text.split("(the shortest is ")[1].split(" ")[0]
    assert text.endswith(f"{need} tokens): every one would be shortened, most losing their system message with the "
                         f"API descriptions; raise train.max_seq_len to at least {need}, or give this arm less "
                         "documentation than tool_docs: block")
    # Arm A alone fits: only some of its examples are shortened, and the job counts them.
    _accepted(tmp_path, "study: s\nconditions: [A]\norders: [[care-appointments]]\ntrain: {max_seq_len: 512}\n"
                        "eval: {max_new_tokens: 48}\n")


def test_settings_that_truncate_every_heldout_prompt_are_refused(tmp_path, tiny):
    text = _refused(tmp_path, HEAD + "train: {max_seq_len: 300}\neval: {max_new_tokens: 280}\n")
    assert text.startswith(":4: train.max_seq_len: all ")
    assert "held-out prompts of arm A are longer than 20 tokens" in text
    assert "eval.max_new_tokens 280 is kept for the answer" in text


# ---------------------------------------------------------------- dry run and submit, command line


def test_the_dry_run_refuses_with_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "data:\n  heldout_fraction: 1.0e-9\n")
    for extra in (["--dry-run"], []):
        out = subprocess.run(
            [sys.executable, "-m", "trajhpc.cli", "submit", str(bad), "--executor", "local",
             "--run-root", str(tmp_path / "runs"), *extra],
            capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert [line for line in out.stderr.splitlines() if line.strip()] == [
            f"error: {bad}:5: data.heldout_fraction: 1e-09 holds out no dialogue of training-data/lv3-api-train.json "
            "in any block: the study would evaluate nothing (the default is 0.2)"
        ]
        assert not (tmp_path / "runs").exists()  # nothing written, no job started


def test_truncation_is_refused_on_the_command_line_with_one_line(tmp_path, tiny):
    """The exact count tokenizes prompts longer than the model's positions: no library warning beside the error."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: s\nconditions: [{condition: B, tool_docs: block}]\ntrain: {max_seq_len: 512}\n")
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "submit", str(bad), "--dry-run", "--executor", "local",
         "--run-root", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:3: train.max_seq_len: all "), out.stderr


def test_a_hub_model_missing_here_is_a_dry_run_warning_and_a_submit_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + "model: someorg/some-model\n")
    out = io.StringIO()
    assert submit_command(Console(file=out, width=300), path, dry_run=True, run_root=None, executor="local",
                          wait=False) == 0
    warning = next(line for line in out.getvalue().splitlines() if line.startswith("warning: "))
    assert warning.startswith(f"warning: {path}:4: model: model 'someorg/some-model' is not in the local Hugging Face cache")
    assert warning.endswith("its modules and prompt lengths are not checked; a real submit stops here")
    with pytest.raises(InputError, match="is not in the local Hugging Face cache"):
        submit_command(Console(file=io.StringIO()), path, dry_run=False, run_root=None, executor="local", wait=False)
    assert not list(tmp_path.glob("jobs/s/*/submission.json"))


def test_the_preflight_finds_the_shipped_tiny_and_names_the_cache_resolve_model_builds_into(tiny):
    """Seed 0 ships in the package (always checked); other seeds only once built into the cache."""
    from trajhpc.job.models import SHIPPED_TINY
    from trajhpc.spec import TINY_VERSION
    from trajhpc.study.manifest import parse_manifest
    from trajhpc.study.preflight import ModelFolder, _cache_name

    assert tiny[0] == SHIPPED_TINY == ModelFolder(parse_manifest(HEAD), []).folder()
    assert json.loads((tiny[0] / "config.json").read_text())["model_type"] == "llama"
    assert _cache_name("tiny-seed3") == f"tiny-v{TINY_VERSION}-seed3"  # job.models' naming (resolve_model)
