"""What differs between two jobs' specs, or two manifests' grids (``trajhpc diff``), without I/O.

A spec (or manifest) mapping is flattened into dotted keys (``train.lr``, ``data.blocks.kind``;
a list of mappings by entry, ``data.blocks.rules.0``, each entry one value; any other list is
one value), and
two flattened mappings are compared key by key. A key one side lacks is ``MISSING``: in a
``spec.json`` that means the field's default (specs leave defaults out so ids stay put).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from trajhpc.study.grid import GridJob


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
# Manifest keys that make up the grid itself: compared as arms, seeds and orders, not as settings.
GRID_KEYS = ("conditions", "seeds", "orders")


@dataclass(frozen=True)
class Difference:
    """One dotted key whose value differs; ``a`` or ``b`` is ``MISSING`` where that side lacks it."""

    key: str
    a: Any
    b: Any


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``; lists of mappings by entry, other lists whole."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            out.update(flatten(item, name + "."))
        elif isinstance(item, (list, tuple)) and item and all(isinstance(i, Mapping) for i in item):
            # An entry (a block rule, a declared comparison) reads best whole, one row each.
            out.update({f"{name}.{i}": dict(sub) for i, sub in enumerate(item)})
        else:
            out[name] = list(item) if isinstance(item, tuple) else item
    return out


def _same(a: Any, b: Any) -> bool:
    # JSON has one number type: 1 and 1.0 are the same setting, but true is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def diff_mappings(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """The dotted keys whose values differ between ``a`` and ``b``, sorted by key."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [
        Difference(k, fa.get(k, MISSING), fb.get(k, MISSING))
        for k in keys
        if not (k in fa and k in fb and _same(fa[k], fb[k]))
    ]


@dataclass
class GridDiff:
    """Two grids compared: what only one side has, the jobs they share, and the settings that differ."""

    only_a: dict[str, list[Any]]  # "arms" / "seeds" / "orders" -> values only A's grid has
    only_b: dict[str, list[Any]]
    shared_jobs: list[str]
    jobs_only_a: list[str]
    jobs_only_b: list[str]
    settings: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        """Same jobs and same settings (two manifests that would submit the same grid the same way)."""
        return not (self.jobs_only_a or self.jobs_only_b or self.settings or any(self.only_a.values())
                    or any(self.only_b.values()))


def _axes(jobs: Sequence[GridJob]) -> dict[str, list[Any]]:
    """Arms, seeds and orders of a grid, each in first-seen order."""
    return {
        "arms": list(dict.fromkeys(j.spec.arm for j in jobs)),
        "seeds": list(dict.fromkeys(j.spec.seed for j in jobs)),
        "orders": list(dict.fromkeys(tuple(j.spec.order) for j in jobs)),
    }


def shared_settings(specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The flattened keys every spec has with one value (what the grid's jobs share)."""
    flat = [flatten(s) for s in specs]
    if not flat:
        return {}
    return {k: v for k, v in flat[0].items() if all(k in f and _same(f[k], v) for f in flat[1:])}


def diff_grids(
    manifest_a: Mapping[str, Any], jobs_a: Sequence[GridJob], manifest_b: Mapping[str, Any], jobs_b: Sequence[GridJob]
) -> GridDiff:
    """Two manifests (``Manifest.model_dump(mode="json")``, defaults filled) and their expanded grids.

    Settings are the manifests' fields other than the grid's (``GRID_KEYS``), then the job-spec
    fields every job of a side shares that no manifest field explains (``spec.`` keys: a data
    fingerprint, the recipe), so that grids whose ids differ always show why.
    """
    axes_a, axes_b = _axes(jobs_a), _axes(jobs_b)
    ids_a, ids_b = [j.job_id for j in jobs_a], [j.job_id for j in jobs_b]
    plain = {k: v for k, v in manifest_a.items() if k not in GRID_KEYS}
    other = {k: v for k, v in manifest_b.items() if k not in GRID_KEYS}
    settings = diff_mappings(plain, other)
    said = {d.key for d in settings}
    spec_a = shared_settings([j.spec.to_dict() for j in jobs_a])
    spec_b = shared_settings([j.spec.to_dict() for j in jobs_b])
    for d in diff_mappings(spec_a, spec_b):
        if d.key not in said and d.key not in ("condition", "seed", "order", "condition_k", "token_budget"):
            settings.append(Difference(f"spec.{d.key}", d.a, d.b))
    return GridDiff(
        only_a={k: [v for v in axes_a[k] if v not in axes_b[k]] for k in axes_a},
        only_b={k: [v for v in axes_b[k] if v not in axes_a[k]] for k in axes_b},
        shared_jobs=[i for i in ids_a if i in set(ids_b)],
        jobs_only_a=[i for i in ids_a if i not in set(ids_b)],
        jobs_only_b=[i for i in ids_b if i not in set(ids_a)],
        settings=settings,
    )
