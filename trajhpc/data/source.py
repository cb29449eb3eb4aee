"""Where a study's data files come from, and what identifies them.

Three places, in the order ``load_data`` looks:

* ``data.source: {hf: REPO, revision: REV}``: the Hugging Face dataset (the full
  API-Bank is ``liminghao1630/API-Bank``: ``training-data/lv{1,2,3}-*-train.json``,
  ``test-data/level-*.json``) in the local Hugging Face cache, never downloaded. The
  snapshot folder is found with ``huggingface_hub`` (``local_files_only``): it is what
  ``hf download --repo-type dataset REPO`` and any online ``datasets.load_dataset(REPO, ...)``
  leave in ``$HF_HOME/hub``. Its JSON record files are read with the ``datasets`` JSON
  builder (into a temporary Arrow cache, removed afterwards), then checked record by
  record like any other file. ``datasets``' own prepared-Arrow cache is not consulted: an
  offline ``load_dataset(REPO)`` reads only that, and this repository's default
  configuration cannot be prepared at all (its test-data files have different columns).
* ``data.root``: a local folder in the same layout (read by trajhpc's own reader).
* neither: the copy bundled in the package.

A hub source is identified in the job spec by its repository, revision and a
:func:`fingerprint` of the files' contents (``data.fingerprint``, set by the grid), so
two caches with different contents never share a job id; the job checks the fingerprint
again before it trains. The bundled copy and ``root`` carry no fingerprint (their job ids
are as they were).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data.apibank import Record, bundled_root, load_any, missing_file_error, record_from_json
from trajhpc.data.blocks import CATALOGUE_FILE
from trajhpc.spec import DataSpec, HubSource

FINGERPRINT_PREFIX = "sha256:"


class SourceError(TrajhpcError):
    """A problem with the data source at one spec field (``data.source.hf``, ``data.files.0``);
    the grid turns it into an InputError at that field's line of the manifest."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def fetch_hint(repo: str) -> str:
    return (
        f"trajhpc never downloads: on a machine with network run `hf download --repo-type dataset {repo}` "
        "(or load it once with datasets.load_dataset), then copy that Hugging Face cache here "
        "or set HF_HOME to a copy of it"
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), read at call time."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_snapshot(source: HubSource, files: tuple[str, ...] = ()) -> Path:
    """The cached snapshot folder of a hub dataset; never downloads.

    ``files`` (paths in the repository) must be complete where the cache knows the
    repository's file list; whether they exist is checked by :func:`data_paths`.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    at = f" at revision {source.revision!r}" if source.revision else ""
    patterns = [p for f in files for p in (f, f.rstrip("/") + "/*")] or None
    try:
        folder = snapshot_download(
            source.hf,
            repo_type="dataset",
            revision=source.revision,
            cache_dir=cache,
            local_files_only=True,
            allow_patterns=patterns,
        )
    except HFValidationError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SourceError("data.source", f"not a valid hub dataset: {first}") from None
    except IncompleteSnapshotError as err:
        raise SourceError(
            "data.source.hf", f"the cached snapshot of {source.hf!r}{at} in {cache} is incomplete ({err}); "
            + fetch_hint(source.hf)
        ) from None
    except LocalEntryNotFoundError:
        raise SourceError(
            "data.source.hf",
            f"dataset {source.hf!r}{at} is not in the local Hugging Face cache ({cache}); " + fetch_hint(source.hf),
        ) from None
    return Path(folder)


def data_folder(data: DataSpec) -> Path:
    """The folder the data files are read from: the hub snapshot, ``root``, or the bundled copy."""
    if data.source is not None:
        return hub_snapshot(data.source, data.files)
    if data.root is None:
        return bundled_root()
    path = Path(data.root).expanduser()
    if not path.is_dir():
        raise TrajhpcError(f"data.root: folder {path} not found")
    return path


def data_paths(data: DataSpec, folder: Path) -> list[Path]:
    """One existing path per ``data.files`` entry; a missing one names the entry and where it was looked for."""
    paths: list[Path] = []
    for i, name in enumerate(data.files):
        path = folder / name
        if not path.exists():
            if data.source is None:
                raise missing_file_error(path)
            present = sorted(
                p.relative_to(folder).as_posix()
                for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )
            listing = ", ".join(present[:12]) + (f", ... ({len(present) - 12} more)" if len(present) > 12 else "")
            raise SourceError(
                f"data.files.{i}",
                f"{name} is not in the cached snapshot of {data.source.hf!r} ({folder}; it holds: "
                f"{listing or 'no files'}); " + fetch_hint(data.source.hf),
            )
        paths.append(path)
    return paths


def _member_files(path: Path) -> Iterator[Path]:
    """The files an entry stands for: itself, or the ``.jsonl`` dialogues of a folder (sorted)."""
    if path.is_dir():
        yield from sorted(path.glob("*.jsonl"))
    else:
        yield path


def fingerprint(data: DataSpec, folder: Path | None = None) -> str:
    """``sha256:`` of the data files' contents, as read for ``data``: every file of every
    ``files`` entry (a folder: its ``.jsonl`` files) by its path relative to the data folder,
    then the folder's ``data/all_apis.csv`` when it has one (scenario blocks read it)."""
    folder = data_folder(data) if folder is None else folder
    digest = hashlib.sha256()
    members = [f for path in data_paths(data, folder) for f in _member_files(path)]
    catalogue = folder / CATALOGUE_FILE
    if catalogue.is_file():
        members.append(catalogue)
    for path in members:
        name = path.relative_to(folder).as_posix().encode()
        try:
            content = path.read_bytes()
        except OSError as err:
            raise InputError(path, None, f"cannot read file ({err.strerror or err})") from None
        digest.update(len(name).to_bytes(8, "big") + name + len(content).to_bytes(8, "big"))
        digest.update(content)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def pin_fingerprint(data: DataSpec) -> DataSpec:
    """``data`` with its fingerprint, as the grid puts it into every job's spec.

    A hub source gets the fingerprint of its cached files; a fingerprint the manifest
    sets must equal the data's (for any source). Data without either is returned as is.
    """
    if data.source is None and data.fingerprint is None:
        return data
    found = fingerprint(data)
    if data.fingerprint is not None and data.fingerprint != found:
        raise SourceError(
            "data.fingerprint",
            f"the data files are not the ones this manifest pins: they hash to {found}, the manifest says "
            f"{data.fingerprint}",
        )
    return data.model_copy(update={"fingerprint": found})


def _read_with_datasets(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON record file read by the ``datasets`` JSON builder, offline, into a
    temporary Arrow cache; the columns a record lacks (``datasets`` fills None) are dropped."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="trajhpc-datasets-") as cache:
            try:
                table = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
                rows = table.to_list()
            except Exception as err:  # noqa: BLE001 - datasets/pyarrow raise many types for a bad file
                cause = err.__cause__ or err
                first = (str(cause).splitlines() or [type(cause).__name__])[0][:200]
                raise InputError(path, None, f"cannot be read as a JSON list of records ({first})") from None
            del table
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def load_data(data: DataSpec) -> tuple[Path, list[Record]]:
    """(data folder, records of every ``files`` entry in order), checking ``data.fingerprint`` when set.

    Records of a hub source's JSON files come through :func:`_read_with_datasets`;
    ``.jsonl`` dialogues, ``root`` and the bundled copy through trajhpc's own reader.
    """
    folder = data_folder(data)
    paths = data_paths(data, folder)
    if data.fingerprint is not None:
        found = fingerprint(data, folder)
        if found != data.fingerprint:
            raise TrajhpcError(
                f"data.fingerprint: the data files in {folder} hash to {found}, not to {data.fingerprint}, "
                "the data this job was made for (the cache or folder changed since it was submitted); "
                "restore those files, or submit the manifest again to make jobs for the new data"
            )
    records: list[Record] = []
    for path in paths:
        if data.source is not None and path.is_file() and path.suffix == ".json":
            source = path.relative_to(folder).as_posix()
            rows = _read_with_datasets(path)
            records.extend(record_from_json(row, path=path, source=source, index=i) for i, row in enumerate(rows))
        else:
            records.extend(load_any(path, root=folder))
    return folder, records
