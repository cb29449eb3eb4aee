"""Checks that a model or adapter folder is complete before transformers or peft reads it.

Their own errors name neither the file nor what to do: a missing ``tokenizer.json`` says
"You need to have sentencepiece or tiktoken installed", a truncated ``.safetensors`` file
``SafetensorError: invalid header length``. These checks read only file sizes and safetensors
headers (a few KB, whatever the model's size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from trajhpc.core.errors import TrajhpcError

_HEADER_MAX = 100_000_000  # safetensors' own limit on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a safetensors file (missing, truncated, damaged header), or None.

    Complete means: an 8-byte header length, that many bytes of JSON header, and exactly as
    many bytes of data after it as the header's tensors end at."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes, not even a header)"
            length = int.from_bytes(head, "little")
            if length > min(_HEADER_MAX, size - 8):
                return f"truncated or damaged ({size} bytes; its header says {length} bytes of header)"
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "a folder, not a file"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "damaged (its header is not safetensors JSON)"
    if 8 + length + end != size:
        return f"truncated ({size} bytes; its header describes {8 + length + end})"
    return None


def check_safetensors(path: Path, advice: str) -> None:
    """TrajhpcError naming ``path`` and ``advice`` unless it is a complete safetensors file."""
    problem = safetensors_problem(Path(path))
    if problem is not None:
        raise TrajhpcError(f"{path}: {problem}; {advice}")


def check_model_folder(folder: Path, required: Iterable[str], advice: str) -> None:
    """Every file of ``required`` present in ``folder`` and every ``*.safetensors`` file in it complete;
    otherwise a TrajhpcError naming the file and ``advice``."""
    folder = Path(folder)
    for name in required:
        if not (folder / name).is_file():
            raise TrajhpcError(f"{folder / name}: missing from the model folder; {advice}")
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path, advice)
