"""QLoRA training throughput, peak memory and MFU at Llama-3.1-8B scale on one CUDA GPU.

No model hub on the GPU machines, so the Llama-3.1-8B architecture is built with
random weights from its config (same FLOPs and memory as the real weights), saved
once as a bf16 folder, and loaded through the job's own path
(``trajhpc.train.load_base_model``: NF4 + double quantization, bf16 compute,
``prepare_model_for_kbit_training``), with a LoRA adapter on all linear
projections, trained by ``trajhpc.train.train_stage`` on synthetic fixed-length
sequences (no padding; loss on the last ``--target-len`` tokens).

MFU counts, per trained token, 4 x (frozen base matmul parameters: forward +
input-gradient backward, no weight gradient) + 6 x (adapter parameters), over the
GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s, the default). The input embedding
(a lookup) is left out of the base count; attention-score FLOPs and activation
recomputation (gradient checkpointing) are not counted, as usual for MFU.

Needs CUDA and bitsandbytes (the GPU image lacks it: carry its manylinux wheel).

    python benchmarks/bench_gpu_qlora.py [--batch-size 4] [--seq-len 1024] [--steps 10] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json), hard-coded: no hub access.
LLAMA_31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)


@dataclass(frozen=True)
class Synthetic:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def base_matmul_params(cfg: dict) -> int:
    """Parameters that take part in a matmul per token: attention, MLP, LM head (not the embedding)."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i  # q, o; k, v; gate, up, down
    return layers * per_layer + h * cfg["vocab_size"]


def build_random_model(folder: Path) -> None:
    """Random-init Llama-3.1-8B in bf16 on the GPU, saved as a model folder (~16 GB)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMA_31_8B)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--target-len", type=int, default=32, help="supervised tokens at the end of each sequence")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (after 2 warm-up steps)")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--folder", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llama31-8b-random")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_qlora: no CUDA device here; run it on a GPU node (skipped).")
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        sys.exit("bench_gpu_qlora: bitsandbytes is not installed (pip install the manylinux wheel)")

    from trajhpc import train
    from trajhpc.spec import LoraSpec, TrainSpec

    device = torch.device("cuda")
    if not (args.folder / "config.json").exists():
        print(f"building random Llama-3.1-8B in {args.folder} ...", flush=True)
        build_random_model(args.folder)
    torch.cuda.reset_peak_memory_stats()
    base = train.load_base_model(
        args.folder,
        quantization="nf4",
        compute_dtype=torch.bfloat16,
        device=device,
        gradient_checkpointing=not args.no_gradient_checkpointing,
    )
    model = train.attach_lora(base, LoraSpec(r=args.r, alpha=2 * args.r, dropout=0.05))
    adapter_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_params = base_matmul_params(LLAMA_31_8B)
    flops_per_token = 4 * base_params + 6 * adapter_params

    cfg = TrainSpec(batch_size=args.batch_size, lr=1e-4, max_seq_len=args.seq_len, schedule="constant", warmup_ratio=0.0)
    gen = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.steps + 2)
    prompt_len = args.seq_len - args.target_len
    examples = []
    for _ in range(n):
        ids = torch.randint(0, LLAMA_31_8B["vocab_size"], (args.seq_len,), generator=gen).tolist()
        examples.append(Synthetic(tuple(ids), (-100,) * prompt_len + tuple(ids[prompt_len:])))
    lengths = [args.seq_len] * n
    optimizer = train.build_optimizer(model, cfg)

    def run(steps: int, stage: int):
        plan = train.plan_stage(lengths, batch_size=args.batch_size, grad_accum=1, seed=0, stage=stage, max_steps=steps)
        return train.train_stage(model, optimizer, examples, plan, cfg, pad_id=0, autocast_dtype=torch.bfloat16)

    run(2, 1)  # warm-up: kernels, allocator, cuBLAS handles
    torch.cuda.synchronize()
    result = run(args.steps, 2)
    torch.cuda.synchronize()
    tok_s = result.tokens / result.seconds
    mfu = tok_s * flops_per_token / (args.peak_tflops * 1e12)
    print(f"GPU {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    print(
        f"Llama-3.1-8B random init, QLoRA NF4 + double quant, bf16 compute, LoRA r={args.r} on all linear "
        f"({adapter_params / 1e6:.1f}M trainable), batch {args.batch_size} x {args.seq_len} tokens, "
        f"gradient checkpointing {'off' if args.no_gradient_checkpointing else 'on'}"
    )
    print(f"train: {tok_s:,.0f} tokens/s over {args.steps} steps ({result.seconds:.1f} s), loss {result.loss:.3f}")
    print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(
        f"MFU: {mfu:.1%} ({flops_per_token / 1e9:.1f} GFLOP/token = 4 x {base_params / 1e9:.2f}B base "
        f"+ 6 x {adapter_params / 1e6:.1f}M adapter; peak {args.peak_tflops:.0f} TFLOP/s)"
    )


if __name__ == "__main__":
    main()
