"""The sensor's side of MQTT: SensorFrames published as a node's sensors would, and a data set replayed to a node.

``Publisher`` is a QoS-1 publisher that survives broker restarts and can wait
for every PUBACK (the node agent also publishes its predictions with it);
``window_frames`` cuts windows into frames; ``replay`` publishes a data set's
windows and waits for the broker; ``replay_dataset`` picks a node's windows
from a data set (by subjects, or as the fleet simulator gives them to it) and
replays them (``edgebind-node replay``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from node_agent.ingest import AUTOSAVE_INTERVAL, client_id_for, parse_broker, resend_topic, sensor_topic, use_tls
from node_agent.store import open_store
from proto import edgebind_pb2 as pb

__all__ = ["Publisher", "replay", "replay_dataset", "replayed_windows", "window_frames"]

log = logging.getLogger(__name__)

T0_NS = 1_700_000_000_000_000_000  # when a replayed recording starts (any fixed time will do)
RESEND_WINDOW = 10.0 * AUTOSAVE_INTERVAL  # seconds of acknowledged messages sent again after a lost connection


class Publisher:
    """A QoS-1 MQTT publisher that survives broker restarts and can wait for every PUBACK.

    Messages published while the broker is away stay in paho's queue and go out
    on reconnect; ``flush`` waits until the broker has acknowledged them all.
    ``tls`` (``ca``, ``cert``, ``key``) speaks TLS with that client certificate.

    A PUBACK alone does not make a message safe: mosquitto writes its messages
    to disk every ``AUTOSAVE_INTERVAL`` seconds, and a broker killed in between
    restarts without the ones it acknowledged since (those not yet passed on).
    So the publisher keeps what was acknowledged in the last ``resend_window``
    seconds before it last heard from the broker and, on every reconnect,
    publishes those again (``resent`` counts them); the node stores a frame once
    by its stream and seq, so a frame that did arrive is a duplicate, dropped.
    ``resend_window`` must exceed the broker's time between two saves.

    A broker killed before it saved a node's session also drops what sensors
    publish before that node subscribes again, resends included. With
    ``resend_on`` (the node's ``resend_topic``) the publisher listens there and
    sends its window again whenever the node asks, which it does on every
    connection that finds no session of its own.
    """

    def __init__(self, broker: tuple[str, int], client_id: str, keepalive: int = 30, tls: Mapping[str, str] | None = None,
                 resend_window: float = RESEND_WINDOW, resend_on: str | None = None) -> None:  # fmt: skip
        self.broker = broker
        self.resend_window = resend_window
        self.resend_on = resend_on
        self.resent = 0
        self.resend_requests = 0
        self._pending: dict[int, tuple[str, bytes]] = {}  # mid -> (topic, payload) awaiting its PUBACK
        self._early_acks: dict[int, float] = {}  # mid -> when, for a PUBACK that beat publish() to its bookkeeping
        self._acked: deque[tuple[float, str, bytes]] = deque()  # (when, topic, payload), oldest first, within resend_window
        self._connects = 0
        self._cond = threading.Condition()
        self._connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        use_tls(c, tls)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_a: self._connected.clear()
        c.on_publish = self._on_publish
        c.on_message = self._on_request
        c.connect_async(broker[0], broker[1], keepalive=keepalive)
        c.loop_start()
        self._client = c

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes) -> int:
        """Queue one QoS-1 message; returns its message id."""
        # Not under self._cond: paho calls on_publish holding its own lock, which publish() takes too.
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish on {topic!r} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if info.mid in self._early_acks:  # the PUBACK beat us here
                self._keep(self._early_acks.pop(info.mid), topic, payload)
            else:
                self._pending[info.mid] = (topic, payload)
        return info.mid

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def flush(self, timeout: float = 60.0, max_pending: int = 0) -> None:
        """Wait until at most ``max_pending`` messages await a PUBACK; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._pending) > max_pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._pending)} messages not acknowledged by the broker after {timeout}s")
                self._cond.wait(min(left, 0.5))

    def close(self, timeout: float = 60.0) -> None:
        """Flush, then disconnect."""
        try:
            self.flush(timeout)
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        now = time.monotonic()
        with self._cond:
            if mid in self._pending:
                self._keep(now, *self._pending.pop(mid))
                self._cond.notify_all()
            else:
                self._early_acks[mid] = now

    def _keep(self, when: float, topic: str, payload: bytes) -> None:
        """Hold an acknowledged message for ``resend_window`` seconds (called under ``_cond``)."""
        if self.resend_window <= 0:
            return
        self._acked.append((when, topic, payload))
        while self._acked and self._acked[0][0] < when - self.resend_window:
            self._acked.popleft()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", *self.broker, reason)
            return
        self._connects += 1
        if self.resend_on:
            client.subscribe(self.resend_on, qos=1)
        if self._connects > 1:  # a reconnect: the broker may have lost what it acknowledged since its last save
            self._resend("a reconnect")
        self._connected.set()

    def _on_request(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.resend_on:  # the node found no session of its own at the broker
            self.resend_requests += 1
            self._resend("the node's request")

    def _resend(self, why: str) -> None:
        """Publish again what the broker acknowledged in the last ``resend_window`` seconds."""
        with self._cond:
            again, self._acked = list(self._acked), deque()
        for _when, topic, payload in again:
            self.publish(topic, payload)
        self.resent += len(again)
        if again:
            log.info("sent %d messages the broker acknowledged in the last %.0fs again after %s", len(again), self.resend_window, why)


def window_frames(
    node_id: str,
    modality: str,
    windows: np.ndarray,
    rate_hz: float,
    *,
    sensor_id: str = "replay",
    frame_len: int = 64,
    t0_ns: int = T0_NS,
    seq0: int = 0,
    boot_id: int = 0,
) -> Iterator[pb.SensorFrame]:
    """(N, T, C) windows as the SensorFrames a sensor would send, ``frame_len`` samples each.

    Each window is a run of consecutive seq numbers and the next window starts
    one seq later, so the node cuts exactly these windows (a missing seq ends a
    run): window ``i`` becomes ``f"{modality}:{sensor_id}:{seq0 + i * (ceil(T / frame_len) + 1)}:0"``.
    Modalities replayed with the same settings get the same seqs and timestamps,
    which is how a node lines up windows of different modalities. ``boot_id``
    marks the frames of one start of the sensor (``SensorFrame.boot_id``).
    """
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"windows of {modality!r} must be (N, T, C), got shape {x.shape}")
    n, t, c = x.shape
    dt_ns = 1e9 / rate_hz
    ids, starts = replayed_windows(n, modality, t, rate_hz, sensor_id=sensor_id, frame_len=frame_len, t0_ns=t0_ns, seq0=seq0)
    for i in range(n):
        first = int(ids[i].split(":")[-2])
        for k in range(math.ceil(t / frame_len)):
            chunk = x[i, k * frame_len : (k + 1) * frame_len]
            yield pb.SensorFrame(
                node_id=node_id, sensor_id=sensor_id, modality=modality, seq=first + k,
                timestamp_ns=starts[i] + round(k * frame_len * dt_ns), rate_hz=rate_hz, channels=c,
                samples=chunk.reshape(-1).tolist(), boot_id=boot_id,
            )  # fmt: skip


def replayed_windows(
    n: int,
    modality: str,
    window: int,
    rate_hz: float,
    *,
    sensor_id: str = "replay",
    frame_len: int = 64,
    t0_ns: int = T0_NS,
    seq0: int = 0,
) -> tuple[list[str], list[int]]:
    """The ids and start times a node gives the ``n`` windows ``window_frames`` sends.

    With them a replay can attach labels to those windows in the node's store
    (labels do not travel in SensorFrames).
    """
    per = math.ceil(window / frame_len)
    ids = [f"{modality}:{sensor_id}:{seq0 + i * (per + 1)}:0" for i in range(n)]
    starts = [t0_ns + round(i * (window + frame_len) * 1e9 / rate_hz) for i in range(n)]
    return ids, starts


def replay(
    publisher: Publisher,
    node_id: str,
    windows: Mapping[str, np.ndarray],
    rates: Mapping[str, float],
    *,
    sensor_id: str = "replay",
    frame_len: int = 64,
    max_in_flight: int = 1000,
    timeout: float = 120.0,
) -> dict[str, int]:
    """Publish every modality's windows (see ``window_frames``) and wait for all PUBACKs.

    Returns frames published per modality.
    """
    sent: dict[str, int] = {}
    for m, x in windows.items():
        sent[m] = 0
        for frame in window_frames(node_id, m, x, rates[m], sensor_id=sensor_id, frame_len=frame_len):
            publisher.publish(sensor_topic(node_id, m), frame.SerializeToString())
            sent[m] += 1
            if publisher.pending() >= max_in_flight:
                publisher.flush(timeout, max_pending=max_in_flight // 2)
        log.info("replayed %d windows of %r to node %s as %d frames", len(x), m, node_id, sent[m])
    publisher.flush(timeout)
    return sent


def replay_dataset(
    broker: str,
    node_id: str = "",
    *,
    dataset: str = "hapt",
    subjects: Sequence[int] | None = None,
    modalities: Sequence[str] | None = None,
    scenario: str = "",
    partition_id: int | None = None,
    num_partitions: int | None = None,
    seed: int = 0,
    max_windows: int | None = None,
    frame_len: int = 64,
    sensor_id: str = "replay",
    timeout: float = 300.0,
    label_store: str = "",
    tls: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Publish a dataset's windows to a node over MQTT as its sensors would, waiting for every PUBACK.

    Windows are chosen by ``subjects`` or, with ``scenario`` and ``partition_id``,
    as the fleet simulator gives them to that node (``node_agent.data.node_spec_for``).
    Labels do not travel in SensorFrames: with ``label_store`` (the node's
    store) the windows are first registered there under the ids the node will
    cut, with their labels (those the fleet lets that node see; all with
    ``subjects``) and subjects; the frames that follow then add nothing twice.
    ``max_windows`` keeps at most that many, evenly spread over the node's windows.
    ``tls`` (``ca``, ``cert``, ``key``) reaches a TLS broker as the node, whose sensors these are.
    Reading a data set needs the ``sim`` install profile (a node-only install has no scipy).
    """
    from common.data import load_dataset

    try:
        ds = load_dataset(dataset)
    except ModuleNotFoundError as e:
        raise RuntimeError(f"replaying a data set needs edgebind[sim] ({e.name} is not installed here): pip install 'edgebind[sim]'") from e
    if scenario:
        if partition_id is None:
            raise ValueError("--scenario needs --partition-id (which node of the fleet)")
        from common.data.scenarios import Scenario
        from node_agent.data import node_spec_for

        spec = node_spec_for(Scenario.load(scenario), ds, seed, partition_id, num_partitions)
        rows, node_id, held, visible = spec.rows, node_id or spec.node_id, spec.modalities, spec.labelled
        observed = spec.labels  # as the fleet lets that node see them (label noise included)
    else:
        if not subjects:
            raise ValueError("give --subjects, or --scenario with --partition-id")
        if not node_id:
            raise ValueError("--node-id is required with --subjects")
        rows, held = np.flatnonzero(np.isin(ds.subject, list(subjects))), ds.modalities
        visible = np.ones(len(rows), dtype=bool)
        observed = ds.y[rows]
    mods = list(modalities) if modalities else list(held)
    unknown = [m for m in mods if m not in held]
    if unknown:
        raise ValueError(f"modality {unknown[0]!r} is not among this node's {sorted(held)}")
    if max_windows is not None and max_windows < len(rows):  # spread over the recording: a prefix is one subject's first activities
        keep = np.unique(np.linspace(0, len(rows) - 1, max(max_windows, 0)).round().astype(np.int64))
        rows, visible, observed = rows[keep], visible[keep], observed[keep]
    windows = {m: ds.X[m][rows] for m in mods}
    rates = {m: ds.rates.get(m, 50.0) for m in mods}
    labelled = 0
    if label_store:
        labels = np.where(visible, observed, -1)
        with open_store(label_store) as st:
            for m in mods:
                ids, starts = replayed_windows(len(rows), m, windows[m].shape[1], rates[m], sensor_id=sensor_id, frame_len=frame_len)
                st.add_windows(m, ids, starts, windows[m], labels=labels, subjects=ds.subject[rows])
        labelled = int((labels >= 0).sum())
    with Publisher(parse_broker(broker), client_id_for(node_id, "replay"), tls=tls, resend_on=resend_topic(node_id)) as pub:
        if not pub.wait_connected(30):
            raise ConnectionError(f"no MQTT broker at {broker}")
        sent = replay(pub, node_id, windows, rates, sensor_id=sensor_id, frame_len=frame_len, timeout=timeout)
    return {"node_id": node_id, "windows": len(rows), "frames": sent, "labelled": labelled,
            "subjects": sorted(set(ds.subject[rows].tolist()))}  # fmt: skip
