"""A child kept running: a node's SuperNode that exits is started again, with back-off, and stopped for good on the way out."""

from __future__ import annotations

import logging
import sys
import time

from common.processes import Restarting


def _wait(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_process_that_exits_is_restarted_with_growing_back_off(caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgebind")
    r = Restarting("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], min_backoff=0.2, max_backoff=0.8, steady=30)
    try:
        assert _wait(lambda: (r.check() or True) and r.restarts >= 4)
        assert r.exits[:3] == [3, 3, 3]
        assert r.backoff == 0.8  # 0.2, 0.4, 0.8, then capped
        assert any("flaky exited with status 3; restarting in" in m for m in caplog.messages)
    finally:
        r.stop(grace=5)
    assert r.proc is None


def test_a_steady_process_is_left_alone_and_stopped() -> None:
    r = Restarting("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    proc = r.proc
    try:
        for _ in range(20):
            assert r.check()
            time.sleep(0.01)
        assert r.restarts == 0 and not r.exits
    finally:
        r.stop(grace=5)
    assert proc.poll() is not None


def test_back_off_returns_to_the_minimum_after_a_steady_run() -> None:
    r = Restarting("sometimes", [sys.executable, "-c", "import time; time.sleep(0.5)"], min_backoff=0.1, max_backoff=5, steady=0.3)
    try:
        r.backoff = 4.0  # as after a burst of quick exits
        assert _wait(lambda: not r.check())  # it ran 0.5 s (>= steady), so the wait before its restart is the minimum
        assert r.backoff == 0.2 and r.exits == [0]
        assert _wait(lambda: r.check() and r.restarts == 1, timeout=2)
    finally:
        r.stop(grace=5)
