"""Helpers for building large acyclic data in bulk (tens of thousands of small objects)."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (if on) while acyclic objects pile up.

    Each full collection walks every live object, so bulk reads and tokenization run
    several times slower with it on; reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
