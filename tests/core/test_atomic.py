"""Atomic writes leave either the old file or the new one, never a partial file or temp litter."""

import json

import pytest

from trajhpc.core import atomic


def test_write_json_creates_parents_and_sorts(tmp_path):
    path = tmp_path / "a" / "b" / "m.json"
    atomic.atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')


def test_failed_write_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "m.json"
    atomic.atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic.atomic_write_json(path, {"v": object()})  # not serializable: fails before any write
    with pytest.raises(RuntimeError):

        class Boom:
            def __iter__(self):
                yield {"ok": 1}
                raise RuntimeError("killed mid-write")

        atomic.atomic_write_jsonl(path, Boom())
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_jsonl_one_object_per_line(tmp_path):
    path = tmp_path / "p.jsonl"
    atomic.atomic_write_jsonl(path, [{"x": 1}, {"x": 2}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"x": 1}, {"x": 2}]


def test_written_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = tmp_path / "shared.json"
        atomic.atomic_write_json(path, {})
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_refused_write_is_a_clean_error_naming_the_file(tmp_path, monkeypatch):
    import errno
    import os

    from trajhpc.core.errors import TrajhpcError

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # where a full disk (or NFS quota) shows up last
    path = tmp_path / "m.json"
    with pytest.raises(TrajhpcError, match=r"cannot write .*m\.json: No space left on device"):
        atomic.atomic_write_json(path, {"v": 1})
    assert list(tmp_path.iterdir()) == []
