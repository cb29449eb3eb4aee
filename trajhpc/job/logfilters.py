"""Silence the libraries' messages that ask nothing of the user, and only those.

Every job log used to start with two lines a user can do nothing about:

- bitsandbytes, on CPUs with AVX512-BF16, logs a warning that it could not load an
  optional ``kernels-community`` 4-bit matmul kernel (``pip install kernels``). trajhpc
  turns that kernel off on purpose (``trajhpc.job.train.load_base_model``: it would make a
  resumed run differ from an uninterrupted one), so the warning is noise.
- transformers warns (``FutureWarning``) that ``is_gradient_checkpointing`` and
  ``gradient_checkpointing_enable`` are deprecated: peft reads the one and calls the other
  (``prepare_model_for_kbit_training``), not trajhpc, which calls the new names itself.

Each is filtered by the logger or module that emits it *and* the start of its message;
every other warning of these libraries still reaches the log.
"""

from __future__ import annotations

import logging
import warnings

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"
HF_CHECKPOINTING = r"`(is_gradient_checkpointing|gradient_checkpointing_enable)` is deprecated"
HF_MODULE = r"transformers\.modeling_utils"


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def install() -> None:
    """Install the filters (idempotent); call before the libraries are imported."""
    logger = logging.getLogger(BNB_LOGGER)  # the same object bitsandbytes gets when it is imported
    if not any(isinstance(f, _DropMessage) and f.prefix == BNB_KERNELS for f in logger.filters):
        logger.addFilter(_DropMessage(BNB_KERNELS))
    warnings.filterwarnings("ignore", message=HF_CHECKPOINTING, category=FutureWarning, module=HF_MODULE)
