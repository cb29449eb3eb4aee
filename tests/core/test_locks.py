"""One holder per lock file; a waiter never shares it, even across the unlink on release."""

from __future__ import annotations

import threading
import time

from trajhpc.core import locks


def test_a_held_lock_is_refused_then_free_again_and_its_file_removed(tmp_path):
    path = tmp_path / "d" / ".lock"
    with locks.exclusive(path) as first:
        assert first and path.exists()
        assert locks.holder(path).startswith("pid ")
        with locks.exclusive(path) as second:
            assert second is False
        assert path.exists()  # the refused side removes nothing
    assert not path.exists()
    with locks.exclusive(path) as again:
        assert again


def test_a_waiter_gets_the_lock_once_released_and_never_two_at_once(tmp_path):
    path = tmp_path / ".lock"
    inside, overlaps = [], []

    def worker():
        with locks.exclusive(path, timeout_s=30, poll_s=0.001) as held:
            assert held
            if inside:
                overlaps.append(1)
            inside.append(1)
            time.sleep(0.01)
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not overlaps and not path.exists()
