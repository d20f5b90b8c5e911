"""node_agent.ingest: every reject path, and a real mosquitto on 127.0.0.1 (duplicates, restarts, store failures)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from common.processes import free_port
from node_agent.ingest import REJECT_REASONS, Ingest, StoreWriteError, mosquitto_conf, node_specs, sensor_topic
from node_agent.publish import Publisher, replay, replayed_windows, window_frames
from node_agent.store import NodeStore, open_store
from proto import edgebind_pb2 as pb

NODE = "n1"
SPECS = node_specs(["gyro", "lin_acc"])
RATES = {m: s.rate_hz for m, s in SPECS.items()}


def _windows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((n, s.window, s.channels)).astype(np.float32) for m, s in SPECS.items()}


def _frame(**kw) -> pb.SensorFrame:
    args = dict(
        node_id=NODE, sensor_id="imu", modality="gyro", seq=0, timestamp_ns=10**18, rate_hz=50.0, channels=3,
        samples=np.arange(192, dtype=np.float32).tolist(),
    )  # fmt: skip
    args.update(kw)
    return pb.SensorFrame(**args)


def _snapshot(store: NodeStore) -> list[tuple]:
    return [(f.sensor_id, f.modality, f.seq, f.timestamp_ns, f.samples.tobytes()) for m in SPECS for f in store.frames(m)]


def _wait(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- the per-message path, without a broker ------------------------------------------


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    store = open_store("sqlite://")
    yield Ingest(NODE, store, SPECS)
    store.close()


def test_a_frame_is_stored_once(ingest):
    payload = _frame().SerializeToString()
    assert ingest.handle(sensor_topic(NODE, "gyro"), payload) == "accepted"
    assert ingest.handle(sensor_topic(NODE, "gyro"), payload) == "duplicate"
    (f,) = ingest.store.frames("gyro")
    assert (f.sensor_id, f.seq, f.samples.shape) == ("imu", 0, (64, 3))
    assert (ingest.stats.accepted, ingest.stats.duplicate, sum(ingest.stats.rejected.values())) == (1, 1, 0)


def _bad_payloads() -> list[tuple[str, str, bytes]]:
    gyro = sensor_topic(NODE, "gyro")
    nan = np.zeros(192, np.float32)
    nan[5] = np.nan
    return [
        ("oversized", gyro, _frame(samples=np.zeros(300_000, np.float32).tolist()).SerializeToString()),
        ("malformed", gyro, b"\xff\xff\xff\x0f not a protobuf"),
        ("bad-topic", f"edgebind/{NODE}/gyro", _frame().SerializeToString()),
        ("wrong-node", sensor_topic("n2", "gyro"), _frame().SerializeToString()),
        ("wrong-node", gyro, _frame(node_id="n2").SerializeToString()),
        ("unknown-modality", sensor_topic(NODE, "ecg"), _frame(modality="ecg").SerializeToString()),
        ("unknown-modality", gyro, _frame(modality="ecg").SerializeToString()),
        ("modality-mismatch", gyro, _frame(modality="lin_acc").SerializeToString()),
        ("bad-channels", gyro, _frame(channels=4).SerializeToString()),
        ("bad-channels", gyro, _frame(samples=[0.0] * 190).SerializeToString()),
        ("bad-rate", gyro, _frame(rate_hz=100.0).SerializeToString()),
        ("non-finite", gyro, _frame(samples=nan.tolist()).SerializeToString()),
        ("non-finite", gyro, _frame(samples=[float("inf")] * 192).SerializeToString()),
        ("invalid", gyro, _frame(sensor_id="").SerializeToString()),
        ("invalid", gyro, pb.SensorFrame(node_id=NODE, sensor_id="imu", modality="gyro", timestamp_ns=1, rate_hz=50, channels=3, samples=[0.0] * 3).SerializeToString()),
        ("invalid", gyro, _frame(timestamp_ns=0).SerializeToString()),
        ("invalid", gyro, _frame(samples=[]).SerializeToString()),
    ]  # fmt: skip


@pytest.mark.parametrize("reason,topic,payload", _bad_payloads(), ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_rejected_counted_and_changes_nothing(ingest, reason, topic, payload):
    ingest.handle(sensor_topic(NODE, "gyro"), _frame().SerializeToString())
    before = _snapshot(ingest.store)
    assert ingest.handle(topic, payload) == reason
    assert reason in REJECT_REASONS
    assert ingest.stats.rejected == {reason: 1}
    assert _snapshot(ingest.store) == before


def test_a_seq_far_past_the_stream_is_refused_and_the_bound_outlives_a_restart(ingest):
    topic = sensor_topic(NODE, "gyro")
    assert ingest.handle(topic, _frame(seq=5).SerializeToString()) == "accepted"
    assert ingest.handle(topic, _frame(seq=5 + ingest.max_seq_jump + 1).SerializeToString()) == "seq-jump"  # would stall window cutting
    assert ingest.handle(topic, _frame(seq=5 + ingest.max_seq_jump).SerializeToString()) == "accepted"  # the bound itself is fine
    assert ingest.handle(topic, _frame(sensor_id="other", seq=10**15).SerializeToString()) == "accepted"  # another sensor's first frame
    assert ingest.stats.rejected == {"seq-jump": 1}
    restarted = Ingest(NODE, ingest.store, SPECS, max_seq_jump=10)  # a new process reads the highest stored seq back
    assert restarted.handle(topic, _frame(seq=5 + ingest.max_seq_jump + 11).SerializeToString()) == "seq-jump"
    assert restarted.handle(topic, _frame(seq=5 + ingest.max_seq_jump + 10).SerializeToString()) == "accepted"
    assert [f.seq for f in ingest.store.frames("gyro") if f.sensor_id == "imu"] == [5, 5 + ingest.max_seq_jump, 5 + ingest.max_seq_jump + 10]


def _locked() -> OperationalError:
    return OperationalError("INSERT INTO frames ...", {}, sqlite3.OperationalError("database is locked"))


def _flaky(store: NodeStore, seq: int, failures: int) -> Callable[..., bool]:
    """``store.add_frame`` that raises a 'database is locked' OperationalError for the first
    ``failures`` attempts to write frame ``seq``; ``calls`` records every attempt's seq."""
    real = store.add_frame
    left = [failures]

    def add_frame(sensor_id, modality, s, *a, **kw):
        add_frame.calls.append(s)
        if s == seq and left[0] > 0:
            left[0] -= 1
            raise _locked()
        return real(sensor_id, modality, s, *a, **kw)

    add_frame.calls = []
    return add_frame


def test_a_store_failure_is_counted_and_raised_not_rejected(ingest, monkeypatch):
    monkeypatch.setattr(ingest.store, "add_frame", _flaky(ingest.store, seq=0, failures=1))
    payload = _frame().SerializeToString()
    with pytest.raises(StoreWriteError, match="database is locked") as e:
        ingest.handle(sensor_topic(NODE, "gyro"), payload)
    assert isinstance(e.value.__cause__, OperationalError)
    assert ingest.store.frames("gyro") == []
    assert (ingest.stats.store_errors, ingest.stats.accepted, dict(ingest.stats.rejected)) == (1, 0, {})
    assert ingest.stats.as_dict()["store_errors"] == 1
    assert ingest.handle(sensor_topic(NODE, "gyro"), payload) == "accepted"  # once the store is back


def test_a_frame_that_never_stores_becomes_a_dead_letter_after_max_store_attempts(ingest, monkeypatch):
    monkeypatch.setattr(ingest.store, "add_frame", _flaky(ingest.store, seq=2, failures=10**9))  # frame 2 can never be written
    topic, poison = sensor_topic(NODE, "gyro"), _frame(seq=2).SerializeToString()
    for _ in range(ingest.max_store_attempts - 1):
        with pytest.raises(StoreWriteError, match="database is locked"):
            ingest.handle(topic, poison)
    assert ingest.handle(topic, poison) == "dead-letter"  # acknowledged: it no longer holds back the frames behind it
    (kept,) = ingest.store.dead_letters()
    assert kept["topic"] == topic and kept["payload"] == poison and kept["attempts"] == ingest.max_store_attempts
    assert "frame 2 of 'imu'/'gyro'" in kept["reason"] and "database is locked" in kept["reason"]
    assert ingest.handle(topic, _frame(seq=3).SerializeToString()) == "accepted"
    assert [f.seq for f in ingest.store.frames("gyro")] == [3]
    assert (ingest.stats.dead_letters, ingest.stats.store_errors, ingest.stats.accepted) == (1, ingest.max_store_attempts, 1)
    assert ingest.store.stats()["dead_letters"] == 1  # what `edgebind-node status` shows
    # when the store takes nothing at all (a full disk), not even the dead letter: the frame stays with the broker
    monkeypatch.setattr(ingest.store, "add_dead_letter", lambda *a, **kw: (_ for _ in ()).throw(OSError("No space left on device")))
    other = _frame(seq=2, sensor_id="imu2").SerializeToString()
    for _ in range(ingest.max_store_attempts - 1):
        with pytest.raises(StoreWriteError):
            ingest.handle(topic, other)
    with pytest.raises(StoreWriteError, match="nor could it be kept as a dead letter: OSError: No space left"):
        ingest.handle(topic, other)
    assert len(ingest.store.dead_letters()) == 1


def test_a_repeated_seq_with_other_samples_keeps_the_first(ingest):
    gyro = sensor_topic(NODE, "gyro")
    ingest.handle(gyro, _frame().SerializeToString())
    assert ingest.handle(gyro, _frame(samples=[9.0] * 192).SerializeToString()) == "duplicate"
    assert ingest.store.frames("gyro")[0].samples[0, 0] == 0.0


def test_replayed_frames_cut_back_into_the_same_windows(ingest):
    x = _windows(4)
    for m in SPECS:
        for frame in window_frames(NODE, m, x[m], RATES[m]):
            assert ingest.handle(sensor_topic(NODE, m), frame.SerializeToString()) == "accepted"
    assert ingest.cut() == {"gyro": 4, "lin_acc": 4}
    assert ingest.cut() == {"gyro": 0, "lin_acc": 0}
    for m in SPECS:
        w = ingest.store.windows(m)
        np.testing.assert_array_equal(w.data, x[m])
        assert w.ids == [f"{m}:replay:{3 * i}:0" for i in range(4)] == replayed_windows(4, m, 128, RATES[m])[0]


def test_a_rebooted_sensor_starting_its_seq_again_is_new_data_not_duplicates(ingest):
    """A sensor that names its boot (``boot_id``) restarts seq at 0 after a reboot: its new frames are a stream of their own."""
    x, y = _windows(2), {m: w + 100.0 for m, w in _windows(2).items()}  # the second boot records something else
    for boot, data in ((0x1A, x), (0x2B, y)):
        for m in SPECS:
            for frame in window_frames(NODE, m, data[m], RATES[m], sensor_id="phone", boot_id=boot):
                assert ingest.handle(sensor_topic(NODE, m), frame.SerializeToString()) == "accepted"
    again = next(window_frames(NODE, "gyro", y["gyro"], RATES["gyro"], sensor_id="phone", boot_id=0x2B))
    assert ingest.handle(sensor_topic(NODE, "gyro"), again.SerializeToString()) == "duplicate"  # QoS 1 redelivery within a boot
    assert ingest.cut() == {"gyro": 4, "lin_acc": 4}
    for m in SPECS:
        w = ingest.store.windows(m)
        assert sorted(w.ids) == sorted(f"{m}:phone@{b}:{3 * i}:0" for b in ("1a", "2b") for i in range(2))
        by_id = dict(zip(w.ids, w.data))
        np.testing.assert_array_equal(np.stack([by_id[f"{m}:phone@2b:{3 * i}:0"] for i in range(2)]), y[m])
    # without a boot id a sensor keeps one stream: the same seq again is a duplicate, as before
    first = next(window_frames(NODE, "gyro", x["gyro"], RATES["gyro"], sensor_id="old"))
    assert ingest.handle(sensor_topic(NODE, "gyro"), first.SerializeToString()) == "accepted"
    assert ingest.handle(sensor_topic(NODE, "gyro"), first.SerializeToString()) == "duplicate"


# --- a real broker ----------------------------------------------------------------------


class Mosquitto:
    """A mosquitto on 127.0.0.1 with persistence in ``root``; stop and start it again on the same port."""

    def __init__(self, root: Path, tls: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        (root / "data").mkdir()
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(mosquitto_conf(self.port, str(root / "data"), tls=tls))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {(self.root / 'mosquitto.log').read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # mosquitto saves its persistence file on SIGTERM
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no chance to save its persistence file (what it saved last is what it restarts from)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is not installed, and CI=true requires the broker tests to run")
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def node(tmp_path, broker) -> Iterator[Ingest]:
    store = open_store(tmp_path / "node.db")
    ing = Ingest(NODE, store, SPECS, broker.address)
    ing.start()
    assert ing.wait_connected(10)
    yield ing
    ing.stop()
    store.close()


@pytest.mark.e2e
def test_frames_published_over_mqtt_arrive_in_the_store(broker, node):
    x = _windows(6, seed=1)
    with Publisher(broker.address, "test-replay") as pub:
        assert pub.wait_connected(10)
        sent = replay(pub, NODE, x, RATES, timeout=30)
    assert sent == {"gyro": 12, "lin_acc": 12}
    _wait(lambda: node.stats.accepted == 24, what="24 frames stored")
    node.cut()
    for m in SPECS:
        np.testing.assert_array_equal(node.store.windows(m).data, x[m])


@pytest.mark.e2e
def test_duplicates_and_bad_payloads_over_mqtt(broker, node):
    good = _frame().SerializeToString()
    bad = _bad_payloads()
    with Publisher(broker.address, "test-bad") as pub:
        assert pub.wait_connected(10)
        pub.publish(sensor_topic(NODE, "gyro"), good)
        pub.publish(sensor_topic(NODE, "gyro"), good)
        for _reason, topic, payload in bad:
            if topic.startswith(f"edgebind/{NODE}/sensors/"):  # only what this node subscribes to arrives
                pub.publish(topic, payload)
    expected = {}
    for reason, topic, _ in bad:
        if topic.startswith(f"edgebind/{NODE}/sensors/"):
            expected[reason] = expected.get(reason, 0) + 1
    _wait(lambda: node.stats.accepted + node.stats.duplicate + sum(node.stats.rejected.values()) == 2 + sum(expected.values()))
    assert (node.stats.accepted, node.stats.duplicate) == (1, 1)
    assert dict(node.stats.rejected) == expected
    assert [f.seq for f in node.store.frames("gyro")] == [0]


@pytest.mark.e2e
def test_broker_restart_and_offline_node_lose_nothing(tmp_path, broker, node):
    """Frames the broker accepted reach the store across a broker restart, and
    frames published while the node is away are queued in its persistent session."""
    x = _windows(12, seed=2)
    frames = {m: list(window_frames(NODE, m, x[m], RATES[m])) for m in SPECS}  # 24 per modality
    pub = Publisher(broker.address, "test-restart")
    assert pub.wait_connected(10)

    def send(lo: int, hi: int) -> None:
        for m in SPECS:
            for f in frames[m][lo:hi]:
                pub.publish(sensor_topic(NODE, m), f.SerializeToString())

    send(0, 6)  # node online
    pub.flush(20)
    _wait(lambda: node.stats.accepted == 12, what="the first frames")

    broker.stop()  # broker down: the publisher queues, the node retries
    send(6, 12)
    assert pub.pending() == 12
    broker.start()
    pub.flush(30)  # the broker accepted everything queued while it was down
    _wait(lambda: node.stats.accepted == 24, what="frames published while the broker was down")

    node.stop()  # node away: its persistent session queues on the broker
    send(12, 18)
    pub.flush(20)
    broker.stop()  # ...and the queue survives a broker restart (persistence)
    broker.start()
    send(18, 24)
    pub.flush(30)
    node.start()
    assert node.wait_connected(15)
    _wait(lambda: node.stats.accepted == 48, what="frames queued for the offline node")
    pub.close()

    assert node.stats.connects >= 3
    assert node.stats.sessions_lost == 0  # every restart kept the node's session
    assert sum(node.stats.rejected.values()) == 0
    node.cut()
    for m in SPECS:
        assert [f.seq for f in node.store.frames(m)] == [f.seq for f in frames[m]]
        np.testing.assert_array_equal(node.store.windows(m).data, x[m])


@pytest.mark.e2e
def test_a_broker_that_lost_the_nodes_session_loses_no_acknowledged_frame(tmp_path, broker, node, caplog):
    """A broker back without the node's session (killed before it saved it) drops what sensors publish until the node
    subscribes again, their own resends included. The node notices (counted, logged) and asks its sensors to publish
    their last seconds again: every frame the broker acknowledged is stored, once."""
    from node_agent.ingest import resend_topic

    x = _windows(12, seed=5)
    frames = {m: list(window_frames(NODE, m, x[m], RATES[m])) for m in SPECS}  # 24 per modality
    pub = Publisher(broker.address, "sensor-lost-session", resend_on=resend_topic(NODE))
    assert pub.wait_connected(10)

    def send(lo: int, hi: int) -> None:
        for m in SPECS:
            for f in frames[m][lo:hi]:
                pub.publish(sensor_topic(NODE, m), f.SerializeToString())

    send(0, 8)
    pub.flush(20)
    _wait(lambda: node.stats.accepted == 16, what="the first frames")
    node.stop()  # the node is away when the broker restarts...
    broker.stop()
    for f in (tmp_path / "data").iterdir():  # ...and the broker comes back without its session, as after a SIGKILL before a save
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="edgebind"):
        broker.start()
        assert pub.wait_connected(15)
        _wait(lambda: pub.resent >= 16, what="the sensor's resend on reconnect")  # into the void: no session takes it
        send(8, 24)  # acknowledged by the broker, kept for no one
        pub.flush(20)
        node.start()  # back: no session of its own, so it asks the sensors for their last seconds
        assert node.wait_connected(15)
        _wait(lambda: node.stats.accepted == 48, what="every acknowledged frame, after the node's request")
    pub.close()
    assert node.stats.sessions_lost == 1 and node.stats.as_dict()["sessions_lost"] == 1 and pub.resend_requests >= 1
    assert any("no longer held this node's session" in r.getMessage() for r in caplog.records)
    node.cut()
    for m in SPECS:
        assert [f.seq for f in node.store.frames(m)] == [f.seq for f in frames[m]]  # each once, none missing
        np.testing.assert_array_equal(node.store.windows(m).data, x[m])


@pytest.mark.e2e
def test_a_frame_the_store_failed_to_write_is_delivered_again_and_stored_once(broker, node, monkeypatch):
    """A store error (database locked) on a good frame must not acknowledge it: the node
    reconnects, the broker resends it, and it is stored once the store works again."""
    frames = [_frame(seq=k, timestamp_ns=10**18 + k * 1_280_000_000) for k in range(4)]
    flaky = _flaky(node.store, seq=1, failures=2)
    monkeypatch.setattr(node.store, "add_frame", flaky)
    connects = node.stats.connects
    with Publisher(broker.address, "test-store-error") as pub:
        assert pub.wait_connected(10)
        for f in frames:
            pub.publish(sensor_topic(NODE, "gyro"), f.SerializeToString())
        pub.flush(10)
    _wait(lambda: node.stats.accepted == 4, timeout=30, what="all 4 frames stored after two failed writes")
    assert node.stats.store_errors == 2
    assert node.stats.connects >= connects + 2  # one reconnect per failed write
    assert flaky.calls.count(1) == 3  # two failed writes, then the one that stored it
    assert sum(node.stats.rejected.values()) == 0
    assert [f.seq for f in node.store.frames("gyro")] == [0, 1, 2, 3]  # each once, in order
    # frames after the failed one were left for redelivery too, so they are written after it, in order
    # (frame 0 may come again as a duplicate if its PUBACK was lost with the dropped connection)
    assert [k for k in flaky.calls if k != 0] == [1, 1, 1, 2, 3]


def test_a_frame_that_never_stores_does_not_block_the_queue_over_mqtt(tmp_path, broker, monkeypatch):
    """The broker resends an unacknowledged frame on every reconnect; after ``max_store_attempts`` the node keeps it as a
    dead letter and acknowledges it, and the frames behind it are stored, each once."""
    store = open_store(tmp_path / "poison.db")
    node = Ingest(NODE, store, SPECS, broker.address, max_store_attempts=3)
    monkeypatch.setattr(store, "add_frame", _flaky(store, seq=1, failures=10**9))
    node.start()
    try:
        assert node.wait_connected(10)
        with Publisher(broker.address, "test-poison") as pub:
            assert pub.wait_connected(10)
            for k in range(4):
                pub.publish(sensor_topic(NODE, "gyro"), _frame(seq=k, timestamp_ns=10**18 + k * 1_280_000_000).SerializeToString())
            pub.flush(10)
        _wait(lambda: node.stats.dead_letters == 1 and node.stats.accepted == 3, timeout=60, what="frames 0, 2, 3 stored and frame 1 kept aside")
        assert [f.seq for f in store.frames("gyro")] == [0, 2, 3]
        assert [pb.SensorFrame.FromString(d["payload"]).seq for d in store.dead_letters()] == [1]
        assert node.stats.store_errors == 3 and sum(node.stats.rejected.values()) == 0
    finally:
        node.stop()
        store.close()


def test_a_full_disk_leaves_frames_with_the_broker_and_nothing_is_lost_when_space_returns(tmp_path, broker, monkeypatch):
    """While the disk is full neither the frame nor a dead letter can be written: the frame stays unacknowledged (the
    broker keeps it), past max_store_attempts too; once space returns every frame is stored once and none is set aside."""
    store = open_store(tmp_path / "full.db")
    node = Ingest(NODE, store, SPECS, broker.address, max_store_attempts=2)
    full, tries = [True], {"frame": 0, "dead_letter": 0}
    real_add, real_dead = store.add_frame, store.add_dead_letter

    def add_frame(sensor_id, modality, seq, *a, **kw):
        if seq == 1 and full[0]:
            tries["frame"] += 1
            raise OSError(28, "No space left on device")
        return real_add(sensor_id, modality, seq, *a, **kw)

    def add_dead_letter(*a, **kw):
        if full[0]:
            tries["dead_letter"] += 1
            full[0] = tries["dead_letter"] < 3  # space comes back after the third attempt to set the frame aside
            raise OSError(28, "No space left on device")
        return real_dead(*a, **kw)

    monkeypatch.setattr(store, "add_frame", add_frame)
    monkeypatch.setattr(store, "add_dead_letter", add_dead_letter)
    node.start()
    try:
        assert node.wait_connected(10)
        with Publisher(broker.address, "test-full-disk") as pub:
            assert pub.wait_connected(10)
            for k in range(3):
                pub.publish(sensor_topic(NODE, "gyro"), _frame(seq=k, timestamp_ns=10**18 + k * 1_280_000_000).SerializeToString())
            pub.flush(10)
        _wait(lambda: node.stats.accepted == 3, timeout=90, what="every frame stored once space returned")
        assert [f.seq for f in store.frames("gyro")] == [0, 1, 2]
        assert store.dead_letters() == [] and node.stats.dead_letters == 0
        assert tries == {"frame": 4, "dead_letter": 3} and node.stats.store_errors == 4  # each refused write left with the broker
    finally:
        node.stop()
        store.close()


def test_over_tls_the_broker_takes_a_nodes_certificate_for_its_own_topics_only(tmp_path):
    """With TLS (init-pki's files) the broker wants a client certificate; a node's may publish its own sensors' frames and
    read them, and a frame published with another node's certificate never reaches this node."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    from coordinator.pki import init_pki

    init_pki(tmp_path / "pki", [NODE, "n2"])
    who = lambda name: {"ca": str(tmp_path / "pki" / "ca.pem"), "cert": str(tmp_path / "pki" / f"{name}.pem"), "key": str(tmp_path / "pki" / f"{name}.key")}  # noqa: E731
    (tmp_path / "b").mkdir()
    b = Mosquitto(tmp_path / "b", tls={**who("coordinator"), "acl": str(tmp_path / "b" / "acl")})
    b.start()
    store = open_store(tmp_path / "node.db")
    node = Ingest(NODE, store, SPECS, b.address, tls=who(f"node-{NODE}"))
    node.start()
    try:
        assert node.wait_connected(15)
        with Publisher(b.address, "test-other", tls=who("node-n2")) as other:  # n2's certificate, n1's topic: the ACL drops it
            assert other.wait_connected(15)
            other.publish(sensor_topic(NODE, "gyro"), _frame(seq=9).SerializeToString())
            other.flush(10)
        with Publisher(b.address, "test-own", tls=who(f"node-{NODE}")) as own:
            assert own.wait_connected(15)
            own.publish(sensor_topic(NODE, "gyro"), _frame(seq=0).SerializeToString())
            own.flush(10)
        _wait(lambda: node.stats.accepted == 1, timeout=20, what="the node's own frame")
        time.sleep(1.0)
        assert [f.seq for f in store.frames("gyro")] == [0]  # seq 9 from n2's certificate never arrived
        anonymous = Publisher(b.address, "test-anonymous")  # no certificate: no connection at all
        try:
            assert not anonymous.wait_connected(3)
        finally:
            anonymous.close(1)
    finally:
        node.stop()
        store.close()
        b.stop()
