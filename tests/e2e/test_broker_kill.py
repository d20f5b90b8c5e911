"""SIGKILL the node's mosquitto while a sensor publishes: every reading the broker acknowledged is stored exactly once.

A real mosquitto process, the node's real ingest (paho, manual acks, a SQLite
store on disk) and a real QoS-1 publisher. The publisher sends faster than the
node stores (its writes are slowed to a slow SD card's), so the broker holds a backlog when it is killed; it restarts on
the same port from what it had saved, the publisher resends what was not
acknowledged, and the node must end with every frame the broker had
acknowledged (PUBACK), each once. Without the publisher's resend window
(``Publisher.resend_window``) hundreds are lost: mosquitto saves its messages
once a second, and restarts without those it acknowledged since.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from node_agent.ingest import AUTOSAVE_INTERVAL, Ingest, sensor_topic
from node_agent.publish import Publisher, window_frames
from node_agent.store import open_store
from tests.test_ingest import NODE, RATES, SPECS, _wait, _windows, broker  # noqa: F401  (broker is a fixture)

WINDOWS = 300  # 2 frames per window and modality: 1200 frames


class _Recording(Publisher):
    """A Publisher that remembers which message ids the broker acknowledged."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        self.acked: set[int] = set()
        super().__init__(*a, **kw)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self.acked.add(mid)
        super()._on_publish(client, userdata, mid, reason, props)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_sigkill_of_the_broker_while_a_sensor_publishes_loses_no_acknowledged_reading(tmp_path, broker):
    x = _windows(WINDOWS, seed=3)
    frames = [(m, f) for m in SPECS for f in window_frames(NODE, m, x[m], RATES[m])]
    store = open_store(tmp_path / "node.db")
    add_frame = store.add_frame

    def slow_add_frame(*a: Any, **kw: Any) -> bool:  # a slow SD card: at most 100 frames a second
        time.sleep(0.01)
        return add_frame(*a, **kw)

    store.add_frame = slow_add_frame  # type: ignore[method-assign]
    node = Ingest(NODE, store, SPECS, broker.address)
    node.start()
    assert node.wait_connected(10)
    subscribed = time.monotonic()
    pub = _Recording(broker.address, "sensor-under-test")
    assert pub.wait_connected(10)

    sent: dict[int, tuple[str, int]] = {}  # mid -> (modality, seq)
    done = threading.Event()

    def publish_all() -> None:
        for k, (m, f) in enumerate(frames):
            mid = pub.publish(sensor_topic(NODE, m), f.SerializeToString())
            sent[mid] = (m, f.seq)
            if k % 20 == 19:
                time.sleep(0.1)  # at most 200 frames a second: faster than the node stores, so the broker holds a backlog
            if pub.pending() >= 200:  # the sensor's own buffer: wait for the broker, as a device would
                try:
                    pub.flush(60, max_pending=100)
                except TimeoutError:
                    return
        done.set()

    t = threading.Thread(target=publish_all, daemon=True)
    t.start()
    # Not before the broker has saved the node's session: one killed sooner forgets the
    # subscription too, and drops what comes before the node subscribes again (docs/reliability.md).
    _wait(lambda: time.monotonic() - subscribed > 3 * AUTOSAVE_INTERVAL and len(pub.acked) >= len(frames) // 4,
          timeout=60, what="a quarter of the frames acknowledged")  # fmt: skip
    broker.kill()
    with pub._cond:
        acked_before_kill = {sent[mid] for mid in pub.acked if mid in sent}
    stored_at_kill = node.stats.accepted
    time.sleep(0.5)
    broker.start()
    assert pub.wait_connected(20), "the publisher did not reconnect"
    t.join(120)
    assert done.is_set(), "the publisher did not get through its frames after the broker came back"
    pub.flush(60)
    assert pub.pending() == 0
    assert pub.resent > 0  # what the broker acknowledged just before it died went out again
    pub.close()
    assert len(sent) == len(frames)  # message ids did not wrap: each names one frame

    want = {m: sorted(f.seq for mm, f in frames if mm == m) for m in SPECS}
    assert node.wait_connected(30), "the node did not reconnect to the restarted broker"
    _settle(node, store, want, timeout=90)
    node.stop()
    assert acked_before_kill and stored_at_kill < len(acked_before_kill), "the broker was killed with no backlog to lose"
    for m in SPECS:
        seqs = [f.seq for f in store.frames(m)]
        assert len(seqs) == len(set(seqs)), f"{m}: a frame stored twice"
        lost = {s for mm, s in acked_before_kill if mm == m} - set(seqs)
        assert not lost, f"{m}: {len(lost)} frames the broker had acknowledged before it was killed are not stored"
        assert seqs == want[m]
        node.cut()
        np.testing.assert_array_equal(store.windows(m).data, x[m])
    assert sum(node.stats.rejected.values()) == 0
    store.close()


def _settle(node: Ingest, store, want: dict[str, list[int]], timeout: float, quiet: float = 5.0) -> None:
    """Wait until every frame is stored, or the node has taken no message (new or duplicate) for ``quiet`` seconds while connected."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if all(store.count_frames(m) >= len(seqs) for m, seqs in want.items()):
            return
        handled = node.stats.accepted + node.stats.duplicate + sum(node.stats.rejected.values())
        if handled != last or not node.connected:
            last, since = handled, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.1)
