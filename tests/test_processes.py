"""A child kept running: a node's SuperNode that exits is started again, with back-off, and stopped for good on the way out;
free ports that no outgoing connection can take before a slow server binds them."""

from __future__ import annotations

import logging
import re
import socket
import sys
import time

import common.processes as processes
from common.processes import Restarting, free_port, setup_logging


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


def test_free_ports_lie_below_the_ephemeral_range_are_never_handed_out_twice_and_skip_taken_ones(monkeypatch) -> None:
    lo, _ = processes._ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < lo for p in ports), "a port an outgoing connection could take as its source port"
    with socket.socket() as held:  # a port something already listens on is passed over
        held.bind(("127.0.0.1", ports[1]))
        held.listen()
        processes._handed_out.discard(ports[1])  # passed over for being bound, not for having been handed out
        picks, draw = iter([ports[1], ports[1], ports[0]]), processes._port_rng.randint
        monkeypatch.setattr(processes._port_rng, "randint", lambda a, b: next(picks, None) or draw(a, b))
        got = free_port()
    assert next(picks, None) is None and got not in ports  # ports[1]: bound; ports[0]: handed out before
    with socket.socket() as s:
        s.bind(("127.0.0.1", got))


def test_flowers_lines_show_once_after_setup_logging(capsys) -> None:
    """Flower's logger has a handler of its own and also passes its records on: the root handler leaves them out."""
    import flwr.common.logger  # noqa: F401  (gives the flwr logger its handler)

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []  # a fresh process's root logger (pytest's capture handlers put back below)
    try:
        setup_logging(brief=True)
        logging.getLogger("flwr").info("aggregate_train: one line")
        logging.getLogger("edgebind").info("an edgebind line")
    finally:
        root.handlers, root.level = saved, level
    # the root handler's lines (brief format: the time, then the message); Flower's own handler writes to whatever stderr
    # was when flwr was first imported, so its line may or may not reach this test's capture
    ours = [ln for ln in capsys.readouterr().err.splitlines() if re.match(r"\d\d:\d\d:\d\d ", ln)]
    assert [ln[9:] for ln in ours] == ["an edgebind line"], ours
