#!/usr/bin/env bash
# Builds .gpu-carry/site.tar.gz: the Python packages a GPU node without network lacks
# (bitsandbytes with the CUDA 13 libraries only, transformers, peft, pydantic, submitit), as
# wheels for CPython 3.12 x86-64 unpacked into one folder (~21 MB compressed). On the node:
#   mkdir -p /tmp/site && tar -xzf .gpu-carry/site.tar.gz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#   bash benchmarks/gpu_all.sh OUT
# Pins: pyproject.toml's (pydantic-core matches pydantic 2.14.3).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$work/whl" \
    bitsandbytes==0.50.2 transformers==5.24.0 peft==0.21.2 pydantic==2.14.3 pydantic-core==2.50.4 \
    annotated-types typing-inspection submitit==1.5.4
mkdir -p "$work/site" .gpu-carry
for w in "$work"/whl/*.whl; do python3 -m zipfile -e "$w" "$work/site"; done
# Only the CUDA 13 and CPU builds of bitsandbytes: 129 MB -> 8 MB.
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' \
    ! -name '*cuda130*' ! -name '*cuda132*' ! -name '*_cpu.so' -delete
tar -C "$work/site" -czf .gpu-carry/site.tar.gz .
# The tiny model, built here (one CPU thread, the same bytes anywhere): the node skips ~2.5 min.
if [ -x .venv/bin/python ]; then
    TRAJHPC_CACHE=$PWD/.gpu-carry/cache .venv/bin/python -c "from trajhpc.job.models import resolve_model; resolve_model('tiny')"
fi
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
ls -la .gpu-carry/site.tar.gz
