#!/usr/bin/env bash
# Every GPU figure of the speed work in one run: under 8 minutes on one H100/H200, no network.
#
#   bash benchmarks/gpu_all.sh [OUT_DIR]          # on the GPU node, from the project root
#   QUICK=1 bash benchmarks/gpu_all.sh /tmp/out   # the same steps on the tiny model on CPU (seconds)
#
# Needs torch with CUDA, transformers, peft, bitsandbytes, pydantic and submitit importable
# (scripts/gpu-carry.sh packs the ones a GPU node without network lacks). Builds a random-weight Llama-3.1-8B folder once
# (TRAJHPC_BENCH_FOLDER, default /tmp/llama31-8b-random, ~16 GB). Writes OUT_DIR/gpu_all.log
# (everything printed) and OUT_DIR/rates.json (for `trajhpc submit MANIFEST --dry-run --rates`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The tiny model that scripts/gpu-carry.sh built here and carried, if it did (else built below).
if [ -z "${TRAJHPC_CACHE:-}" ] && [ -d .gpu-carry/cache ]; then
    mkdir -p /tmp/trajhpc-cache && cp -rn .gpu-carry/cache/. /tmp/trajhpc-cache/
fi
export TRAJHPC_CACHE=${TRAJHPC_CACHE:-/tmp/trajhpc-cache}
FOLDER=${TRAJHPC_BENCH_FOLDER:-/tmp/llama31-8b-random}
PY=${PYTHON:-python3}
QUICK_FLAG=()
[ -n "${QUICK:-}" ] && QUICK_FLAG=(--quick)
LOG="$OUT/gpu_all.log"
: >"$LOG"
failed=0

step() {  # step NAME LIMIT_S ARGS...: one benchmark, its output appended to the log, a failure noted
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name: $PY $*" | tee -a "$LOG"
    timeout "$limit" "$PY" "$@" 2>&1 | grep -v -e "Failed to load CPU gemm_4bit" -e "FutureWarning" -e "^  warnings.warn(" -e "Loading weights:" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || failed=1
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
# The tiny model, whose API-Bank tokenizer every step uses: ~2.5 min on one core when not
# cached, longer than a step's limit below.
step tiny 400 -c "from trajhpc.job.models import resolve_model; print(resolve_model('tiny'))"
# MFU on the synthetic 4 x 1024 case, checkpointing off (what `auto` picks on an 80+ GB GPU).
step synthetic 150 benchmarks/bench_gpu_qlora.py --folder "$FOLDER" --no-gradient-checkpointing "${QUICK_FLAG[@]}"
# The standard Trainer recipe vs the job's loop on the same real lv3 examples.
step peer 150 benchmarks/bench_gpu_qlora.py --peer --folder "$FOLDER" "${QUICK_FLAG[@]}"
# Generation: today's path vs the merged backend, same prompts, grid settings; every disagreement listed.
if [ -n "${QUICK:-}" ]; then
    step eval 150 benchmarks/bench_eval.py --quick
else  # 64 prompts at the grid's batch 32 and 160 new tokens; then the same prompts batched by tokens
    step eval 200 benchmarks/bench_eval.py --merged --model "$FOLDER" --n 64 --batch-size 32 \
        --max-new-tokens 160 --tokens-per-batch 65536 --repeats 1
fi
# One real job at the grid's settings (capped data), and the rates file for the cost estimate.
step job 150 benchmarks/bench_gpu_qlora.py --job --folder "$FOLDER" --rates-out "$OUT/rates.json" "${QUICK_FLAG[@]}"
echo "gpu_all: done, $([ $failed -eq 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')" | tee -a "$LOG"
exit $failed
