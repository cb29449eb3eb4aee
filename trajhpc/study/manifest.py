"""The study manifest: one YAML file that names a whole grid of jobs and where they run.

``load_manifest(path)`` parses the YAML keeping every node's line, validates it with
pydantic (unknown keys rejected, with the closest valid key suggested) and turns the
first problem into one ``InputError`` naming the file, line and field path::

    manifests/x.yaml:12: train.lr: Input should be greater than 0

The schema is documented for users in README.md ("Manifests: a study in one YAML file").
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.spec import (
    CONDITIONS,
    SEED_MAX,
    ConditionName,
    CurriculumName,
    DataSpec,
    EvalSpec,
    Float,
    Int,
    JobSpec,
    LoraSpec,
    Seed,
    StrictModel,
    TokenBudget,
    TrainSpec,
    default_replay,
    versioned_model,
)
from trajhpc.study.comparison import Analysis, analysis_problem
from trajhpc.study.containerfields import (
    DOCKER_ONLY_BIND_OPTS,
    bind_options,
    check_digest,
    check_manifest_bind,
    check_manifest_image,
)
from trajhpc.study.fielderrors import UNION_TAG, line_map, line_of, to_input_error
from trajhpc.study.overrides import Override, apply_overrides, blamed, jsonable, parse_overrides, set_paths
from trajhpc.study.tracking import Tracking
from trajhpc.study.yamlread import MAX_BYTES, decode, read_yaml

# Same choices as the JobSpec, so the two can never drift apart.
Quantization = JobSpec.model_fields["quantization"].annotation
ComputeDtype = JobSpec.model_fields["compute_dtype"].annotation

DEFAULT_MAX_JOBS = 100_000
_STUDY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SBATCH_OPTION = re.compile(r"[a-z][a-z0-9-]*")
# Options trajhpc or submitit set themselves, or that clash with them: overriding them
# would break the array, the log paths, the requeue after a time-out, or the one task
# per job the job code expects. Each maps to what to use instead.
_TRAJHPC_SETS = "trajhpc sets it"
_ONE_TASK = "trajhpc runs one task on one node per job"
_SBATCH_RESERVED = {
    "array": _TRAJHPC_SETS, "output": _TRAJHPC_SETS, "error": _TRAJHPC_SETS, "open-mode": _TRAJHPC_SETS,
    "signal": "use resources.signal_delay_s", "job-name": _TRAJHPC_SETS, "wrap": _TRAJHPC_SETS,
    "parsable": _TRAJHPC_SETS,
    "requeue": "trajhpc requeues timed-out jobs itself: use resources.max_requeues",
    "no-requeue": "trajhpc requeues timed-out jobs itself: use resources.max_requeues (0: never)",
    "partition": "use resources.partition", "account": "use resources.account", "qos": "use resources.qos",
    "constraint": "use resources.constraint", "cpus-per-task": "use resources.cpus_per_task",
    "time": "use resources.timeout_min",
    "mem": "use resources.mem_gb", "mem-per-cpu": "use resources.mem_gb", "mem-per-gpu": "use resources.mem_gb",
    "gpus-per-node": "use resources.gpus_per_node", "gpus": "use resources.gpus_per_node",
    "gres": "use resources.gpus_per_node", "gpus-per-task": "use resources.gpus_per_node",
    "nodes": _ONE_TASK, "ntasks": _ONE_TASK, "ntasks-per-node": _ONE_TASK,
    "export": "trajhpc passes the submit environment (set variables before trajhpc submit)",
    "chdir": "jobs start in the folder trajhpc submit runs in",
}


def _one_line(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must be one line without control characters")
    return value


OneLine = Annotated[str, AfterValidator(_one_line)]


def _sbatch_option(name: str) -> str:
    if not _SBATCH_OPTION.fullmatch(name):
        raise ValueError(f"sbatch option {name!r} must match [a-z][a-z0-9-]* (no leading '--')")
    if name in _SBATCH_RESERVED:
        raise ValueError(f"sbatch option {name!r} cannot be set here ({_SBATCH_RESERVED[name]})")
    # sbatch accepts any unambiguous abbreviation (--no-req is --no-requeue): refuse those too.
    abbreviated = sorted(r for r in _SBATCH_RESERVED if r.startswith(name))
    if abbreviated:
        hint = _SBATCH_RESERVED[abbreviated[0]]
        raise ValueError(f"sbatch option {name!r} abbreviates {abbreviated[0]!r}, which cannot be set here ({hint})")
    return name


SbatchOption = Annotated[str, AfterValidator(_sbatch_option)]
SbatchValue = Annotated[
    Union[
        Annotated[bool, Tag(UNION_TAG + "bool")],
        Annotated[int, Tag(UNION_TAG + "int")],
        Annotated[float, Tag(UNION_TAG + "float")],
        Annotated[OneLine, Tag(UNION_TAG + "str")],
    ],
    Discriminator(
        lambda v: UNION_TAG + type(v).__name__ if type(v) in (bool, int, float, str) else None,
        custom_error_type="sbatch_value",
        custom_error_message="expected a string, number or true/false",
    ),
]


# ---------------------------------------------------------------- conditions


def _condition_name(value: str) -> str:
    if value == "last-k":
        raise ValueError("'last-k' needs k: write {condition: last-k, k: 2}")
    if value not in CONDITIONS:
        raise ValueError(
            f"unknown condition {value!r}; use one of A, A-slots, B, calls-only, responses-only, or {{condition: last-k, k: N}}"
        )
    return value


class ConditionEntry(StrictModel):
    """One study arm: a condition, its k (last-k only), an optional token budget,
    optionally its own ``tool_docs`` (else ``data.tool_docs``), so one manifest can run
    the arms with and without tool documentation, and a ``curriculum`` (``replay``: its share)."""

    condition: ConditionName
    k: Int | None = Field(None, ge=1)
    token_budget: TokenBudget | None = None
    tool_docs: Literal["none", "dialogue", "block"] | None = None
    curriculum: CurriculumName = "sequential"
    replay: Float | None = Field(None, gt=0.0, lt=1.0, validate_default=True)

    _default_replay = field_validator("replay", mode="after")(default_replay)  # as JobSpec's

    @model_validator(mode="after")
    def _check(self) -> "ConditionEntry":
        if self.condition == "last-k" and self.k is None:
            raise ValueError("condition last-k needs k (how many earlier calls to keep)")
        if self.condition != "last-k" and self.k is not None:
            raise ValueError("k is only used by condition last-k")
        if self.replay is not None and self.curriculum != "replay":
            raise ValueError(f"replay is the share of earlier blocks' examples of curriculum replay; "
                             f"add curriculum: replay (this entry's curriculum is {self.curriculum})")
        if self.token_budget is not None and self.curriculum != "sequential":
            raise ValueError(f"token_budget works with curriculum sequential only, not {self.curriculum}")
        # The same rule as JobSpec's, said here so it is refused with this entry's line.
        if self.token_budget is not None and self.token_budget.match == "last-k" and self.condition != "last-k":
            raise ValueError(
                f"token_budget.match last-k needs k, which only condition last-k has; "
                f"condition {self.condition} can match A, A-slots, B, calls-only or responses-only"
            )
        return self


def _by_kind(error: str, message: str, mapping: Any, **others: tuple[type, Any]) -> Any:
    """A union whose member is chosen by the Python type of the raw value: a mapping is ``mapping``;
    a value of type T is the annotation of the ``others`` entry ``(T, annotation)``; else ``message``."""
    members = [Annotated[mapping, Tag(UNION_TAG + "mapping")]]
    members += [Annotated[annotation, Tag(UNION_TAG + tag)] for tag, (_, annotation) in others.items()]

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            return UNION_TAG + "mapping"
        for tag, (kind, _) in others.items():
            if isinstance(value, kind) and not isinstance(value, bool):
                return UNION_TAG + tag
        return None

    return Annotated[Union[tuple(members)], Discriminator(pick, custom_error_type=error, custom_error_message=message)]


ConditionItem = _by_kind(
    "condition", "expected a condition name (A, A-slots, B, calls-only) or a mapping like {condition: A, ...}",
    ConditionEntry, name=(str, Annotated[str, AfterValidator(_condition_name)]),
)


# ---------------------------------------------------------------- seeds and orders


class SeedRange(StrictModel):
    """``count`` consecutive seeds from ``start``."""

    count: Int = Field(ge=1)
    start: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> "SeedRange":
        if self.start + self.count - 1 > SEED_MAX:
            raise ValueError(f"seeds {self.start} .. {self.start + self.count - 1} go past the largest seed {SEED_MAX}")
        return self


Seeds = _by_kind(
    "seeds", "expected a list of seeds like [0, 1, 2] or a mapping like {count: 5, start: 0}",
    SeedRange, list=(list, Annotated[list[Seed], Field(min_length=1)]),
)


class RandomOrders(StrictModel):
    """``random`` distinct random permutations of the blocks, drawn with ``seed``."""

    random: Int = Field(ge=1)
    seed: Int = 0


Orders = _by_kind(
    "orders", "expected a list of block lists, 'all', 'latin' or a mapping like {random: 4, seed: 0}",
    RandomOrders,
    list=(list, Annotated[list[Annotated[list[str], Field(min_length=1)]], Field(min_length=1)]),
    name=(str, Literal["all", "latin"]),
)


# ---------------------------------------------------------------- where jobs run


class Resources(StrictModel):
    """Per-job scheduler resources (Slurm); the local executor uses the CPU/GPU counts and time limit."""

    partition: OneLine | None = None
    account: OneLine | None = None
    qos: OneLine | None = None
    constraint: OneLine | None = None
    gpus_per_node: Int = Field(0, ge=0)
    cpus_per_task: Int = Field(1, ge=1)
    # sbatch gets whole megabytes, and --mem=0 means "all of the node's memory".
    mem_gb: Float = Field(8.0, ge=0.001)
    timeout_min: Int = Field(60, ge=1)
    array_parallelism: Int = Field(256, ge=1)
    signal_delay_s: Int = Field(90, ge=0)
    extra_sbatch: dict[SbatchOption, SbatchValue] = {}
    max_requeues: Int = Field(3, ge=0)

    @field_validator("extra_sbatch")
    @classmethod
    def _drop_false(cls, value: dict[str, Any]) -> dict[str, Any]:
        # `false` means "leave the flag out"; sbatch flags without a value are `true`.
        return {k: v for k, v in value.items() if v is not False}


class ContainerSpec(StrictModel):
    """The image every task runs in; ``runtime: none`` runs on the host's Python."""

    runtime: Literal["apptainer", "docker", "none"] = "none"
    image: Annotated[str, AfterValidator(check_manifest_image)] | None = None
    binds: tuple[Annotated[str, AfterValidator(check_manifest_bind)], ...] = ()
    digest: Annotated[str, AfterValidator(check_digest)] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ContainerSpec":
        if self.runtime != "none" and self.image is None:
            raise ValueError(f"runtime {self.runtime} needs an image")
        return self


# ---------------------------------------------------------------- the manifest


class Manifest(StrictModel):
    """A study: the grid (conditions x seeds x orders) over shared model/data/training settings."""

    study: str
    model: OneLine = "tiny"
    quantization: Quantization = "nf4"  # type: ignore[valid-type]
    compute_dtype: ComputeDtype = "auto"  # type: ignore[valid-type]
    data: DataSpec = DataSpec()
    conditions: Annotated[list[ConditionItem], Field(min_length=1)]
    seeds: Seeds = [0]
    orders: Orders = "latin"
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    executor: Literal["slurm", "local", "auto"] = "auto"
    run_root: OneLine = "jobs"
    resources: Resources = Resources()
    container: ContainerSpec = ContainerSpec()
    # A guard against a typo that would expand into millions of jobs; like study and
    # run_root it is not in any job's spec, so changing it changes no job id.
    max_jobs: Int = Field(DEFAULT_MAX_JOBS, ge=1)
    # How `trajhpc aggregate` reads the study (its primary and secondary comparisons): in no job's spec either.
    analysis: Analysis = Analysis()
    # Which metric logger the jobs report to (trajhpc.study.tracking): in no job's spec either.
    tracking: Tracking = Tracking()

    # Where the manifest came from, so later checks (grid expansion) can name file and line.
    _source: str | None = PrivateAttr(None)
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    # The --set overrides applied over the file, and the mapping they gave (what the submission records).
    _overrides: tuple[Override, ...] = PrivateAttr(())
    _effective: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("study")
    @classmethod
    def _check_study(cls, value: str) -> str:
        if not _STUDY.fullmatch(value):
            raise ValueError("must be a simple name: letters, digits, '.', '_' or '-' (it names a folder)")
        if len(value) > 255:  # the longest folder name; ASCII only, so characters are bytes
            raise ValueError(f"is {len(value)} characters; it names a folder, and a folder name has at most 255")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        try:
            versioned_model(value)  # a tiny recipe this trajhpc no longer builds is refused here, with the line
        except TrajhpcError as err:
            raise ValueError(str(err).removeprefix(f"model {value!r}: ")) from None
        return value

    def written(self, field: str) -> bool:
        """Whether the manifest file sets ``field`` (dotted path: ``analysis.primary``), rather than leaving its default."""
        path = tuple(int(p) if p.isdigit() else p for p in field.split("."))
        return path in self._lines or path in set_paths(self._overrides)

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` texts applied over the file, in order."""
        return [o.text for o in self._overrides]

    def effective(self) -> dict[str, Any]:
        """The manifest as validated: the file's mapping with the overrides set, as JSON values."""
        return jsonable(self._effective)

    @property
    def source(self) -> str | None:
        """The file (or source name) the manifest was read from."""
        return self._source

    def arms(self) -> list[str]:
        """The arms of ``conditions`` in the order the manifest lists them (equal entries once)."""
        return list(dict.fromkeys(arm_name(item, self.data.tool_docs) for item in self.conditions))

    def error(self, field: str, message: str) -> InputError:
        """An InputError at ``field`` (dotted path) of this manifest, with its file and line."""
        path = tuple(int(p) if p.isdigit() else p for p in field.split("."))
        return blamed(InputError(self._source, field, message, line_of(path, self._lines)), self._overrides)


# ---------------------------------------------------------------- loading


def parse_manifest(text: str, source: str = "<manifest>", overrides: Sequence[str] = ()) -> Manifest:
    """Validate manifest YAML text with ``--set`` ``overrides`` applied; errors name ``source``, the line
    and the field, or the override that set the field."""
    changes = parse_overrides(overrides)
    node, data = read_yaml(text, source)
    if not isinstance(data, dict):
        raise InputError(source, None, "a manifest must be a YAML mapping (study: ..., conditions: ...)", 1)
    lines = line_map(node, source)
    data = apply_overrides(data, changes)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise blamed(to_input_error(err, Manifest, source, lines), changes) from None
    manifest._source = source
    manifest._lines = lines
    manifest._overrides = tuple(changes)
    manifest._effective = data
    check_manifest(manifest)
    return manifest


# ---------------------------------------------------------------- checks across fields


def arm_name(item: str | ConditionEntry, tool_docs: str = "none") -> str:
    """The arm a ``conditions`` entry produces (``JobSpec.arm``, so the two never disagree);
    ``tool_docs`` is the manifest's ``data.tool_docs``, which an entry may override."""
    fields: dict[str, Any] = {"data": DataSpec(tool_docs=tool_docs)}
    if isinstance(item, str):
        fields["condition"] = item
    else:
        fields.update(condition=item.condition, condition_k=item.k, token_budget=item.token_budget,
                      curriculum=item.curriculum, replay=item.replay)
        if item.tool_docs is not None:
            fields["data"] = DataSpec(tool_docs=item.tool_docs)
    return JobSpec(order=("_",), **fields).arm


def check_manifest(manifest: Manifest) -> None:
    """Rules across fields, raised as an InputError at the field's line."""
    res = manifest.resources
    if res.signal_delay_s >= res.timeout_min * 60:
        raise manifest.error(
            "resources.signal_delay_s",
            f"resources.signal_delay_s ({res.signal_delay_s} s) must be less than resources.timeout_min "
            f"({res.timeout_min} min = {res.timeout_min * 60} s): the warning would come before the job starts",
        )
    if manifest.data.root is not None and not _is_dir(Path(manifest.data.root).expanduser()):
        # Every job would fail on it: say so now, once.
        raise manifest.error("data.root", f"folder {Path(manifest.data.root).expanduser()} not found")
    for i, rule in enumerate(manifest.data.blocks.rules or ()):
        try:
            re.compile(rule.regex)
        except (re.error, RecursionError, OverflowError) as err:  # each job would compile it and fail
            raise manifest.error(f"data.blocks.rules.{i}.regex", f"invalid regex {rule.regex!r} ({err})") from None
    problem = run_root_problem(manifest.run_root)
    if problem:
        raise manifest.error("run_root", problem)
    box = manifest.container
    if box.runtime == "apptainer":
        for i, bind in enumerate(box.binds):
            docker_only = sorted(bind_options(bind) & DOCKER_ONLY_BIND_OPTS)
            if docker_only:
                raise manifest.error(
                    f"container.binds.{i}",
                    f"bind {bind!r}: option {', '.join(docker_only)} is Docker's (SELinux relabelling); "
                    "apptainer accepts ro or rw",
                )
    # Two different entries with one arm name would be merged by aggregate (and pair
    # their units twice); equal entries are the same jobs and collapse.
    seen: dict[str, tuple[int, str | ConditionEntry]] = {}
    for i, item in enumerate(manifest.conditions):
        arm = arm_name(item, manifest.data.tool_docs)
        first = seen.setdefault(arm, (i, item))
        if first[1] != item and _entry(first[1]) != _entry(item):
            raise manifest.error(
                f"conditions.{i}",
                f"this entry's arm {arm!r} is also the arm of conditions.{first[0]}, which trains differently; "
                "arms must have distinct names",
            )
    problem = analysis_problem(manifest.analysis, list(seen), manifest.written("analysis.primary"))
    if problem:
        raise manifest.error(*problem)


# The kernel's own file systems: no folder can be made there. (Other system folders are
# merely unusual, and the current folder may itself be in one, e.g. /usr/src/app.)
_PSEUDO_FOLDERS = ("/proc", "/sys")


def run_root_problem(run_root: str | Path) -> str | None:
    """Why job directories cannot go under ``run_root`` (relative to the current folder), or None."""
    path = Path(os.path.normpath(Path.cwd() / run_root))
    folder = next((f for f in _PSEUDO_FOLDERS if path.is_relative_to(f)), None)
    if folder is not None:
        return f"{path} is in the system folder {folder}; job directories cannot go there"
    try:
        for part in (path, *path.parents):  # the nearest existing path on the way must be a folder
            if part.exists():
                return None if part.is_dir() else f"{part} is a file, not a folder"
    except OSError as err:  # e.g. a name too long
        return f"{path}: {err.strerror or err}"
    return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a folder either way
        return False


def _entry(item: str | ConditionEntry) -> ConditionEntry:
    return ConditionEntry(condition=item) if isinstance(item, str) else item


def load_manifest(path: str | Path, overrides: Sequence[str] = ()) -> Manifest:
    """Read and validate a manifest file, with ``--set`` ``overrides`` (``train.lr=1e-4``) applied."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never more: a huge file is refused, not read
    except FileNotFoundError:
        raise InputError(path, None, "manifest file not found") from None
    except IsADirectoryError:
        raise InputError(path, None, "is a folder, expected a manifest YAML file") from None
    except OSError as err:
        raise InputError(path, None, f"cannot read manifest ({err.strerror or err})") from None
    return parse_manifest(decode(raw, str(path)), str(path), overrides)
