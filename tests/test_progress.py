"""Progress of long steps: plain log lines with the time left off a terminal, a bar on one."""

from __future__ import annotations

import logging

import pytest

from common import progress as prog


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(prog.time, "monotonic", lambda: now[0])
    return now


def test_plain_lines_say_how_far_and_how_long_is_left(clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgebind.progress")
    p = prog.Progress(4, "pretraining gyro", unit="epoch", every=0, bar=False)
    clock[0] += 30
    p.update(loss=3.25)
    clock[0] += 30
    p.update()
    clock[0] += 30
    p.update()
    clock[0] += 30
    p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "pretraining gyro: 1/4 epochs, 30 s so far, about 90 s left; loss 3.250"
    assert lines[1] == "pretraining gyro: 2/4 epochs, 60 s so far, about 60 s left"
    assert lines[-1] == "pretraining gyro: 4/4 epochs, 2 min so far"
    assert len(lines) == 4


def test_plain_lines_are_rate_limited_but_the_last_always_shows(clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgebind.progress")
    p = prog.Progress(10, "rounds", unit="round", every=30, bar=False)
    for _ in range(10):
        clock[0] += 5
        p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(":")[1].split()[0] for ln in lines] == ["6/10", "10/10"]


def test_a_bar_on_a_terminal_writes_no_log_lines(clock, caplog, capsys) -> None:
    caplog.set_level(logging.INFO, logger="edgebind.progress")
    with prog.Progress(3, "seeds", unit="seed", bar=True) as p:
        for _ in range(3):
            p.update(acc=0.5)
    assert not caplog.records
    assert "seeds" in capsys.readouterr().err


def test_time_left(clock) -> None:
    t0 = clock[0]
    clock[0] += 120
    assert prog.time_left(t0, 1, 5) == ", about 8 min left"
    assert prog.time_left(t0, 5, 5) == "" and prog.time_left(t0, 0, 5) == ""
    clock[0] = t0 + 4000
    assert prog.time_left(t0, 1, 2) == ", about 1.1 h left"
