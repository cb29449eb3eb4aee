"""A damaged model folder, adapter or model cache is refused naming the file and the remedy
(trajhpc.job.modelfiles, trajhpc.job.models), never with transformers' or safetensors' own words."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from trajhpc.core.errors import TrajhpcError
from trajhpc.job import models
from trajhpc.job.modelfiles import check_model_folder, safetensors_problem
from trajhpc.job.models import resolve_model

torch = pytest.importorskip("torch")


def _tensors(path: Path) -> bytes:
    from safetensors.torch import save_file

    save_file({"a": torch.arange(10, dtype=torch.float32), "b": torch.ones(3, 4)}, str(path))
    return path.read_bytes()


def test_a_complete_safetensors_file_passes_and_each_damage_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    data = _tensors(path)
    assert safetensors_problem(path) is None
    path.write_bytes(data[:-1])
    assert safetensors_problem(path) == f"truncated ({len(data) - 1} bytes; its header describes {len(data)})"
    path.write_bytes(data[:5])
    assert safetensors_problem(path) == "truncated (5 bytes, not even a header)"
    path.write_bytes(data[:40])
    assert safetensors_problem(path).startswith("truncated or damaged (40 bytes; its header says")
    path.write_bytes((4).to_bytes(8, "little") + b"nope")
    assert safetensors_problem(path) == "damaged (its header is not safetensors JSON)"
    path.unlink()
    assert safetensors_problem(path) == "missing"


def _copy_of_shipped(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(models.SHIPPED_TINY, folder)
    return folder


def test_the_shipped_tiny_model_is_complete_and_needs_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJHPC_CACHE", str(tmp_path / "never-made"))
    assert resolve_model("tiny") == resolve_model(f"tiny-v{models.TINY_VERSION}-seed0") == models.SHIPPED_TINY
    assert not (tmp_path / "never-made").exists()
    check_model_folder(models.SHIPPED_TINY, models.TINY_FILES, "unused")


def test_a_shipped_tiny_without_its_tokenizer_names_the_file_not_sentencepiece(tmp_path, monkeypatch):
    folder = _copy_of_shipped(tmp_path, "tiny")
    (folder / "tokenizer.json").unlink()
    monkeypatch.setattr(models, "SHIPPED_TINY", folder)
    with pytest.raises(TrajhpcError) as err:
        resolve_model("tiny")
    text = str(err.value)
    assert text.startswith(f"{folder / 'tokenizer.json'}: missing from the model folder")
    assert "scripts/build_tiny.py" in text and "reinstall trajhpc" in text and "sentencepiece" not in text


@pytest.mark.parametrize("damage", ["no tokenizer", "truncated weights"])
def test_a_damaged_cached_tiny_names_the_file_and_says_delete_it(tmp_path, damage):
    folder = _copy_of_shipped(tmp_path, f"tiny-v{models.TINY_VERSION}-seed5")  # as a first use would leave it
    if damage == "no tokenizer":
        (folder / "tokenizer.json").unlink()
        bad = folder / "tokenizer.json"
    else:
        bad = folder / "model.safetensors"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(TrajhpcError, match=re.escape(f"{bad}: ") + ".*" + re.escape(f"delete {folder} and it is built again")):
        resolve_model("tiny-seed5", tmp_path)


def test_a_truncated_model_folder_is_refused_before_transformers_reads_it(tmp_path):
    from trajhpc.job.train import load_base_model

    folder = _copy_of_shipped(tmp_path, "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(TrajhpcError, match=re.escape(f"{weights}: truncated (") + ".*copy the model folder again"):
        load_base_model(folder, quantization="none", compute_dtype=torch.float32, device=torch.device("cpu"),
                        gradient_checkpointing=False)


def test_an_unwritable_home_names_the_model_cache_and_trajhpc_cache(tmp_path):
    """HOME=/proc (no ~/.cache can be made there): a model built at first use says where it
    would go and how to choose another place; the shipped tiny model needs no cache at all."""
    env = {k: v for k, v in os.environ.items() if k != "TRAJHPC_CACHE"}
    env.update(HOME="/proc", PYTHONPATH=str(REPO))
    code = (
        "from trajhpc.job.models import resolve_model\n"
        "print(resolve_model('tiny'))\n"
        "resolve_model('tiny-seed3')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == str(models.SHIPPED_TINY)
    last = out.stderr.strip().splitlines()[-1]
    assert "model cache /proc/.cache/trajhpc cannot be written" in last, out.stderr
    assert "set TRAJHPC_CACHE to a writable folder" in last and "HOME=/proc" in last
    assert "FileNotFoundError" not in out.stderr
