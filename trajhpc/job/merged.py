"""A dense copy of a QLoRA model for fast evaluation: dequantized base + merged adapter.

Decoding through the training model pays, at every step, the 4-bit dequantization
of every weight and one small LoRA side-matmul pair per adapted projection. The
copy holds, for each adapted (or quantized) linear layer, ``W_deq + scaling * B @ A``
as a plain weight in the compute dtype: the same function up to rounding, with
none of that per-step work. Everything else (embeddings, norms, lm_head, rotary
buffers) is copied as it is, dtype included: ``prepare_model_for_kbit_training``
keeps those in fp32, and so keeping them keeps the residual stream as today.

The copy is built once per job (:meth:`MergedEvalModel.from_peft`); after each
stage :meth:`MergedEvalModel.sync` rewrites only the merged linear weights. The
training model is only read, never modified.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import torch


def _is_4bit(module: torch.nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:  # no bitsandbytes: no 4-bit layers either
        return False
    return isinstance(module, bnb.nn.Linear4bit)


def base_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a dense fp32 matrix (dequantized for a 4-bit layer)."""
    if _is_4bit(layer):
        import bitsandbytes.functional as F

        return F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.float32, copy=True)
    # A copy: the caller adds the delta to it, and the training weight must stay as it is.
    return layer.weight.detach().to(torch.float32, copy=True)


def lora_delta(layer: Any) -> torch.Tensor:
    """Sum over the active adapters of ``scaling * B @ A`` (fp32), in the base weight's layout."""
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}):
            raise NotImplementedError(f"merged evaluation supports plain LoRA only, not {layer.lora_variant[name]}")
        a = layer.lora_A[name].weight.detach().float()
        b = layer.lora_B[name].weight.detach().float()
        d = (b @ a) * layer.scaling[name]
        d = d.T if layer.fan_in_fan_out else d
        delta = d if delta is None else delta + d
    return delta


def _compute_dtype(layer: torch.nn.Module) -> torch.dtype:
    """The dtype the layer computes in: bitsandbytes' compute dtype, else its weight's."""
    if _is_4bit(layer) and layer.compute_dtype is not None:
        return layer.compute_dtype
    return layer.weight.dtype


class MergedEvalModel:
    """A plain ``AutoModelForCausalLM`` mirroring a peft (Q)LoRA model with the adapter merged."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @classmethod
    def from_peft(cls, peft_model: torch.nn.Module) -> "MergedEvalModel":
        """Allocate the dense copy (same config, device), copy non-linear weights, then :meth:`sync`."""
        from transformers import AutoModelForCausalLM

        source = peft_model.get_base_model()
        config = copy.deepcopy(source.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # On the meta device: no random init of a copy that is overwritten at once.
        with torch.device("meta"):
            dense = AutoModelForCausalLM.from_config(config)
        device = next(peft_model.parameters()).device
        dense.to_empty(device=device)
        dense.generation_config = copy.deepcopy(source.generation_config)
        dense.eval().requires_grad_(False)
        self = cls(dense)
        merged = {name for name, _, _ in self._linear_pairs(source)}
        src_modules = dict(source.named_modules())
        covered: set[str] = set()
        with torch.no_grad():
            for name, module in dense.named_modules():
                if name in merged:
                    continue
                src = src_modules[name]
                for attr, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                    value = getattr(src, attr)
                    kind = "_parameters" if attr in module._parameters else "_buffers"
                    new = value.detach().clone()
                    getattr(module, kind)[attr] = torch.nn.Parameter(new, False) if kind == "_parameters" else new
                    covered.add(f"{name}.{attr}" if name else attr)
                # Plain tensor attributes (not registered) would still be on the meta device.
                for attr, value in list(vars(module).items()):
                    if isinstance(value, torch.Tensor) and value.is_meta:
                        setattr(module, attr, getattr(src, attr).detach().clone())
        self.sync(peft_model)
        covered |= {f"{name}.{attr}" for name in merged for attr in ("weight", "bias")}
        missing = [n for n, _ in dense.named_parameters(remove_duplicate=False) if n not in covered]
        missing += [n for n, _ in dense.named_buffers() if n not in covered]
        if missing:
            raise RuntimeError(f"merged copy: no source for {missing[:3]}")
        if getattr(source.config, "tie_word_embeddings", False):
            dense.tie_weights()
        return self

    def _linear_pairs(self, source: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, torch.nn.Module]]:
        """(name, source layer, dense linear) for every LoRA-adapted or 4-bit layer."""
        from peft.tuners.lora import LoraLayer

        dense = dict(self.model.named_modules())
        for name, module in source.named_modules():
            if isinstance(module, LoraLayer):
                yield name, module, dense[name]
            elif _is_4bit(module) and not name.endswith(".base_layer"):
                yield name, module, dense[name]

    @torch.no_grad()
    def sync(self, peft_model: torch.nn.Module) -> "MergedEvalModel":
        """Write ``W_deq + delta`` of the current adapter into every merged layer (in place)."""
        from peft.tuners.lora import LoraLayer

        for _, src, dst in self._linear_pairs(peft_model.get_base_model()):
            base = src.get_base_layer() if isinstance(src, LoraLayer) else src
            weight = base_weight(base)
            if isinstance(src, LoraLayer) and not src.disable_adapters and not src.merged:
                delta = lora_delta(src)
                if delta is not None:
                    weight = weight + delta
            dtype = _compute_dtype(base)
            if dst.weight.dtype != dtype or dst.weight.device != weight.device:
                dst.weight = torch.nn.Parameter(torch.empty(weight.shape, dtype=dtype, device=weight.device), False)
            dst.weight.copy_(weight)
            if base.bias is not None:
                dst.bias = torch.nn.Parameter(base.bias.detach().to(dtype).clone(), False)
        return self
