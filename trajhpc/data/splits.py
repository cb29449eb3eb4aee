"""A study's data: records from the spec's files, grouped into blocks, split into train/held-out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.apibank import Record
from trajhpc.data.blocks import CATALOGUE_FILE, assign_blocks, bundled_catalogue, load_catalogue, split_heldout
from trajhpc.data.calls import parse_call
from trajhpc.data.source import load_data
from trajhpc.data.tooldocs import doc_names, searched_descriptions, with_docs
from trajhpc.spec import DataSpec

UNPARSEABLE_GOLD = "gold call does not parse as '[Name(...)]', so it cannot be scored"


@dataclass(frozen=True)
class Exclusion:
    """A record left out of training and evaluation, and why."""

    record: Record
    reason: str


@dataclass(frozen=True)
class StudyData:
    """Records per block (``blocks`` in partition order), caps applied, exclusions recorded."""

    blocks: tuple[str, ...]
    train: dict[str, list[Record]]
    heldout: dict[str, list[Record]]
    excluded: tuple[Exclusion, ...]
    dialogues: dict[str, int]  # distinct dialogues per block (before caps)

    @property
    def n_excluded(self) -> int:
        return len(self.excluded)

    def check_order(self, order: Sequence[str]) -> None:
        """Raise a TrajhpcError naming any block of ``order`` the partition does not have."""
        unknown = [b for b in order if b not in self.blocks]
        if unknown:
            raise TrajhpcError(f"order: unknown block(s) {unknown}; this partition has {list(self.blocks)}")


def exclusion_reason(record: Record) -> str | None:
    """Why a record cannot be used (its gold call cannot be scored), or None."""
    return UNPARSEABLE_GOLD if parse_call(record.target) is None else None


def _cap(records: list[Record], cap: int | None) -> list[Record]:
    # First N in file order: deterministic and independent of the seed.
    return records if cap is None else records[:cap]


def load_study_data(data: DataSpec, loaded: tuple[Path, list[Record]] | None = None) -> StudyData:
    """Load ``data.files`` from ``data.source``, ``data.root`` or the bundled copy
    (``trajhpc.data.source``), block, split and cap them.

    Records whose gold call does not parse (2 bracket-less lv3 targets) are excluded
    from both train and held-out and listed in ``excluded``. ``loaded``: the
    ``(folder, records)`` :func:`~trajhpc.data.source.load_data` returned for ``data``, when
    the caller has read them already.
    """
    root, records = loaded if loaded is not None else load_data(data)
    catalogue = None
    if data.blocks.kind == "scenario":
        local = root / CATALOGUE_FILE
        catalogue = load_catalogue(local) if local.exists() else bundled_catalogue()
    blocks = assign_blocks(records, data.blocks, catalogue)
    train: dict[str, list[Record]] = {}
    heldout: dict[str, list[Record]] = {}
    excluded: list[Exclusion] = []
    usable: dict[str, list[Record]] = {}
    for name, members in blocks.items():
        usable[name] = []
        for record in members:
            reason = exclusion_reason(record)
            if reason is None:
                usable[name].append(record)
            else:
                excluded.append(Exclusion(record, reason))
    # Documentation is decided over whole dialogues and blocks, before the split and the caps.
    docs = doc_names(usable, data.tool_docs)
    searched = searched_descriptions(r for records in usable.values() for r in records) if docs else {}
    for name, records in usable.items():
        tr, ho = split_heldout(with_docs(records, docs, searched) if docs else records, data.heldout_fraction)
        train[name] = _cap(tr, data.max_train_per_block)
        heldout[name] = _cap(ho, data.max_heldout_per_block)
    return StudyData(
        blocks=tuple(blocks),
        train=train,
        heldout=heldout,
        excluded=tuple(excluded),
        dialogues={name: len({r.dialogue_key for r in members}) for name, members in blocks.items()},
    )
