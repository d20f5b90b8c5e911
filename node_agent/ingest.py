"""MQTT ingest: sensor frames from ``edgebind/<node>/sensors/<modality>`` into the node store.

The subscriber keeps a persistent session (MQTT 3.1.1, ``clean_session=False``,
a client id derived from the node id) and takes QoS 1, so a frame the broker
accepted is delivered again after a broker restart or a network gap until the
node acknowledges it. The client acknowledges by hand (paho's ``manual_ack``):
the PUBACK goes out only once the frame is in the store (or was there already),
or once the frame is known to be bad. Redelivered frames are stored once: the
store keys frames by (sensor, modality, seq).

Every payload is checked (size, protobuf, topic, node, modality, channels,
rate, finite values) before it touches the store; a bad one is logged, counted
under a reason, acknowledged and dropped (sending it again would not make it
good), and never stops the subscriber.

A store that fails to write a good frame (a locked database, a full disk: any
error but the store's ``ValueError`` for bad input) is a different matter: the
frame is counted under ``store_errors`` and *not* acknowledged, and the
subscriber drops its connection. The broker resends a persistent session's
unacknowledged messages only when the client reconnects (mosquitto never
resends them on the same connection), so paho's reconnect (after its reconnect
delay, a natural back-off for a busy store) brings the frame back. Frames that
arrive on the dropped connection after the failure are neither stored nor
acknowledged, so they too come back, in their order, after the failed one.

``Publisher`` and ``replay`` play the sensor's side: they publish a dataset's
windows as SensorFrames and wait for the broker's PUBACKs; ``replay_dataset``
picks a node's windows from a dataset (by subjects, or as the fleet simulator
gives them to it) and replays them (``edgebind-node replay``).
"""

from __future__ import annotations

import getpass
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from common import codec
from common.codec import CodecError
from common.modalities import ModalitySpec, default_registry
from node_agent.store import NodeStore, open_store
from proto import edgebind_pb2 as pb

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_SEQ_JUMP",
    "Ingest",
    "IngestStats",
    "Publisher",
    "REJECT_REASONS",
    "StoreWriteError",
    "client_id_for",
    "mosquitto_conf",
    "node_specs",
    "parse_broker",
    "replay",
    "replayed_windows",
    "sensor_topic",
    "window_frames",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1 << 20
DEFAULT_MAX_SEQ_JUMP = 1_000_000  # frames a stream may skip at once (at 50 Hz in 64-sample frames, about 15 days)
RATE_TOLERANCE = 0.01  # a frame's rate may differ from its modality's by 1 %
T0_NS = 1_700_000_000_000_000_000  # when a replayed recording starts (any fixed time will do)

REJECT_REASONS = (
    "oversized",  # payload above max_payload
    "malformed",  # not a SensorFrame
    "bad-topic",  # not edgebind/<node>/sensors/<modality>
    "wrong-node",  # topic or frame names another node
    "unknown-modality",  # topic or frame names a modality this node does not take
    "modality-mismatch",  # frame's modality differs from its topic's
    "bad-channels",  # channel count differs from the modality's, or samples do not fill whole rows
    "bad-rate",  # sampling rate differs from the modality's
    "non-finite",  # NaN or Inf samples
    "invalid",  # any other field check (ids, seq, timestamp, empty samples)
    "seq-jump",  # seq more than max_seq_jump past the stream's highest stored seq (it would stall window cutting)
    "store",  # the store refused it (e.g. channels differ from the stream's earlier frames)
)


def sensor_topic(node_id: str, modality: str) -> str:
    return f"edgebind/{node_id}/sensors/{modality}"


def events_topic(node_id: str) -> str:
    return f"edgebind/{node_id}/events"


def client_id_for(node_id: str, role: str = "ingest") -> str:
    """A stable MQTT client id: the broker keys the persistent session on it."""
    return f"edgebind-{role}-{node_id}"[:128]


def parse_broker(address: str, default_port: int = 1883) -> tuple[str, int]:
    """``host:port`` (or ``host``) as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    if not host or not port.isdigit():
        raise ValueError(f"broker address must be host:port, got {address!r}")
    return host, int(port)


def node_specs(modalities: Sequence[str], window: int = 128, rate_hz: float = 50.0) -> dict[str, ModalitySpec]:
    """Specs of the named modalities from the default registry (unknown names are refused)."""
    reg = default_registry(rate_hz=rate_hz, window=window)
    return {m: reg.get(m) for m in modalities}


def mosquitto_conf(port: int, data_dir: str, host: str = "127.0.0.1") -> str:
    """A mosquitto 2 config for a local broker that keeps QoS-1 messages across restarts.

    Queues for offline persistent sessions are unbounded (mosquitto's default of
    1000 would drop frames of a node that is away for a while). Started as root,
    mosquitto stays the current user rather than dropping to ``mosquitto``, who
    could not write to a private temporary directory.
    """
    return "\n".join(
        [
            f"listener {port} {host}",
            f"user {getpass.getuser()}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data_dir.rstrip('/')}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "persistent_client_expiration 1d",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]
    )


# --- the subscriber -------------------------------------------------------------------


@dataclass
class IngestStats:
    """What the subscriber did with every message: stored, stored before, rejected (by reason),
    or left for the broker to deliver again because the store failed to write it."""

    accepted: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    store_errors: int = 0  # good frames the store failed to write (not acknowledged: the broker resends them)
    windows: Counter[str] = field(default_factory=Counter)  # modality -> windows cut
    connects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": dict(self.rejected),
            "store_errors": self.store_errors,
            "windows": dict(self.windows),
            "connects": self.connects,
        }


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class StoreWriteError(RuntimeError):
    """The store failed to write a good frame (the cause is chained); the frame is not stored."""


class Ingest:
    """Subscribe to one node's sensor topics and write frames to its store.

    ``handle(topic, payload)`` is the whole per-message path and needs no broker;
    ``start``/``stop`` run it from paho's network thread, and ``cut`` turns stored
    frames into windows (``run`` does both until told to stop).
    """

    def __init__(
        self,
        node_id: str,
        store: NodeStore,
        specs: Mapping[str, ModalitySpec],
        broker: tuple[str, int] = ("127.0.0.1", 1883),
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_seq_jump: int = DEFAULT_MAX_SEQ_JUMP,
        steps: Mapping[str, int] | None = None,
        client_id: str | None = None,
        keepalive: int = 30,
    ) -> None:
        if not node_id or "/" in node_id or "+" in node_id or "#" in node_id:
            raise ValueError(f"node id must be non-empty without '/', '+' or '#', got {node_id!r}")
        if not specs:
            raise ValueError("ingest needs at least one modality")
        self.node_id = node_id
        self.store = store
        self.specs = dict(specs)
        self.broker = broker
        self.max_payload = max_payload
        self.max_seq_jump = max_seq_jump
        self._top_seq: dict[tuple[str, str], int | None] = {}  # (sensor, modality) -> highest seq stored, read once from the store
        self.steps = {m: (steps or {}).get(m, max(1, s.window // 2)) for m, s in self.specs.items()}
        self.client_id = client_id or client_id_for(node_id)
        self.keepalive = keepalive
        self.stats = IngestStats()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._redeliver = False  # a store write failed on this connection: ack nothing more on it
        self._client: mqtt.Client | None = None
        self._channels = {m: s.channels for m, s in self.specs.items()}

    # --- one message --------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Check and store one payload; return ``accepted``, ``duplicate`` or the reject reason.

        Raises ``StoreWriteError`` (counted under ``store_errors``) if the store
        fails to write a good frame for any reason but bad input; the frame is
        then not stored, and must come again.
        """
        try:
            frame, samples = self._check(topic, payload)
            try:
                added = self.store.add_frame(
                    frame.sensor_id, frame.modality, frame.seq, frame.timestamp_ns, samples, rate_hz=frame.rate_hz
                )
            except ValueError as e:
                raise _Rejected("store", str(e)) from e
            except Exception as e:  # the database, not the frame: locked, disk full, connection gone, ...
                with self._lock:
                    self.stats.store_errors += 1
                raise StoreWriteError(
                    f"store failed to write frame {frame.seq} of {frame.sensor_id!r}/{frame.modality!r}: "
                    f"{type(e).__name__}: {e}"
                ) from e
            key = (frame.sensor_id, frame.modality)
            if added and (self._top_seq.get(key) is None or frame.seq > self._top_seq[key]):
                self._top_seq[key] = frame.seq
        except _Rejected as r:
            with self._lock:
                self.stats.rejected[r.reason] += 1
            log.warning("node %s rejected a frame on %r: %s: %s", self.node_id, topic, r.reason, r.detail)
            return r.reason
        outcome = "accepted" if added else "duplicate"
        with self._lock:
            if added:
                self.stats.accepted += 1
            else:
                self.stats.duplicate += 1
        return outcome

    def _check(self, topic: str, payload: bytes) -> tuple[pb.SensorFrame, np.ndarray]:
        if len(payload) > self.max_payload:
            raise _Rejected("oversized", f"{len(payload)} bytes exceed max_payload={self.max_payload}")
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != "edgebind" or parts[2] != "sensors" or not parts[3]:
            raise _Rejected("bad-topic", f"expected edgebind/{self.node_id}/sensors/<modality>")
        if parts[1] != self.node_id:
            raise _Rejected("wrong-node", f"topic is for node {parts[1]!r}, this is {self.node_id!r}")
        if parts[3] not in self.specs:
            raise _Rejected("unknown-modality", f"topic modality {parts[3]!r}; this node takes {sorted(self.specs)}")
        try:
            frame = codec.parse_message(payload, pb.SensorFrame, self.max_payload)
        except CodecError as e:
            raise _Rejected("malformed", str(e)) from e
        if frame.node_id != self.node_id:
            raise _Rejected("wrong-node", f"frame is from node {frame.node_id!r}, this is {self.node_id!r}")
        if frame.modality != parts[3]:
            if frame.modality not in self.specs:
                raise _Rejected("unknown-modality", f"frame modality {frame.modality!r}")
            raise _Rejected("modality-mismatch", f"frame says {frame.modality!r}, topic says {parts[3]!r}")
        spec = self.specs[frame.modality]
        n = len(frame.samples)
        if frame.channels != spec.channels or n % spec.channels:
            raise _Rejected(
                "bad-channels", f"{frame.channels} channels, {n} samples; {spec.name!r} has {spec.channels} channels"
            )
        if not math.isfinite(frame.rate_hz) or abs(frame.rate_hz - spec.rate_hz) > RATE_TOLERANCE * spec.rate_hz:
            raise _Rejected("bad-rate", f"{frame.rate_hz} Hz; {spec.name!r} is sampled at {spec.rate_hz} Hz")
        try:
            samples = codec.validate_sensor_frame(frame, self._channels, max_samples=self.max_payload // 4)
        except CodecError as e:
            reason = "non-finite" if not np.isfinite(np.asarray(frame.samples, np.float32)).all() else "invalid"
            raise _Rejected(reason, str(e)) from e
        key = (frame.sensor_id, frame.modality)
        if key not in self._top_seq:
            self._top_seq[key] = self.store.max_seq(*key)
        top = self._top_seq[key]
        if top is not None and frame.seq > top + self.max_seq_jump:
            raise _Rejected("seq-jump", f"seq {frame.seq} is more than {self.max_seq_jump} past {top}, the highest stored for {key[0]!r}/{key[1]!r}")
        return frame, samples

    # --- windows --------------------------------------------------------------------

    def cut(self) -> dict[str, int]:
        """Cut newly stored frames into windows (each modality's spec window, half-window step)."""
        added = {}
        for m, spec in self.specs.items():
            try:
                added[m] = self.store.cut_windows(m, window=spec.window, step=self.steps[m])
            except ValueError as e:  # a stream cut earlier with other settings
                log.error("node %s: cannot cut %r windows: %s", self.node_id, m, e)
                added[m] = 0
        with self._lock:
            self.stats.windows.update({m: k for m, k in added.items() if k})
        return added

    # --- the broker -------------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying until the broker is up) and take messages on paho's thread."""
        if self._client is not None:
            raise RuntimeError("ingest already started")
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # PUBACK only once the frame is stored (see _on_message)
        )
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.connect_async(self.broker[0], self.broker[1], keepalive=self.keepalive)
        c.loop_start()
        self._client = c

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once subscribed (within ``timeout`` seconds)."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Disconnect, keeping the broker-side session (frames keep queueing for this node)."""
        c, self._client = self._client, None
        if c is None:
            return
        c.disconnect()
        c.loop_stop()
        self._connected.clear()

    def run(self, stop: threading.Event, cut_every: float = 5.0, report_every: float = 60.0) -> IngestStats:
        """Ingest and cut windows every ``cut_every`` seconds until ``stop`` is set; cut once more at the end."""
        self.start()
        last_report = time.monotonic()
        try:
            while not stop.wait(cut_every):
                self.cut()
                if time.monotonic() - last_report >= report_every:
                    log.info("node %s ingest: %s", self.node_id, self.stats.as_dict())
                    last_report = time.monotonic()
        finally:
            self.stop()
            self.cut()
            log.info("node %s ingest stopped: %s", self.node_id, self.stats.as_dict())
        return self.stats

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("node %s: broker refused the connection: %s", self.node_id, reason)
            return
        self._redeliver = False  # a new connection: the broker resends what was left unacknowledged
        client.subscribe(sensor_topic(self.node_id, "+"), qos=1)
        with self._lock:
            self.stats.connects += 1
        log.info(
            "node %s connected to %s:%d as %s (session present: %s)",
            self.node_id, *self.broker, self.client_id, flags.session_present,
        )  # fmt: skip
        self._connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning("node %s lost the broker (%s); reconnecting", self.node_id, reason)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Runs on paho's network thread; the client acknowledges by hand (manual_ack=True).
        if self._redeliver:  # after a failed write on this connection: leave it to the broker to resend, in order
            log.debug("node %s: left message %d on %r for redelivery", self.node_id, msg.mid, msg.topic)
            return
        try:
            self.handle(msg.topic, msg.payload)
        except StoreWriteError as e:
            self._redeliver = True
            log.warning(
                "node %s: %s; not acknowledged, reconnecting so that the broker delivers it again", self.node_id, e
            )
            self._drop_connection(client)
            return
        except Exception:  # a bug on one message: count it, and never let it kill paho's network thread
            with self._lock:
                self.stats.rejected["internal"] += 1
            log.exception("node %s: unexpected error on a message on %r", self.node_id, msg.topic)
        # Stored, stored before, or bad (sending it again would not help): the broker may forget it.
        client.ack(msg.mid, msg.qos)

    def _drop_connection(self, client: mqtt.Client) -> None:
        """Cut the connection as a network gap would, so that paho reconnects and the broker resends.

        ``disconnect()`` would not do: it ends paho's loop for good. Shutting the
        socket down makes paho's next read see the connection lost, and its loop
        reconnects (after the reconnect delay) with the same persistent session.
        """
        sock = client.socket()
        if sock is None:  # already gone; paho reconnects anyway
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as e:  # not connected any more: nothing to cut
            log.debug("node %s: shutting the broker socket down: %s", self.node_id, e)


# --- the sensor's side -------------------------------------------------------------------


class Publisher:
    """A QoS-1 MQTT publisher that survives broker restarts and can wait for every PUBACK.

    Messages published while the broker is away stay in paho's queue and go out
    on reconnect; ``flush`` waits until the broker has acknowledged them all.
    """

    def __init__(self, broker: tuple[str, int], client_id: str, keepalive: int = 30) -> None:
        self.broker = broker
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._cond = threading.Condition()
        self._connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = lambda *_a: self._connected.set()
        c.on_disconnect = lambda *_a: self._connected.clear()
        c.on_publish = self._on_publish
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
            if info.mid in self._early:  # the PUBACK beat us here
                self._early.discard(info.mid)
            else:
                self._pending.add(info.mid)
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
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
                self._cond.notify_all()
            else:
                self._early.add(mid)


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
) -> Iterator[pb.SensorFrame]:
    """(N, T, C) windows as the SensorFrames a sensor would send, ``frame_len`` samples each.

    Each window is a run of consecutive seq numbers and the next window starts
    one seq later, so the node cuts exactly these windows (a missing seq ends a
    run): window ``i`` becomes ``f"{modality}:{sensor_id}:{seq0 + i * (ceil(T / frame_len) + 1)}:0"``.
    Modalities replayed with the same settings get the same seqs and timestamps,
    which is how a node lines up windows of different modalities.
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
                samples=chunk.reshape(-1).tolist(),
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
) -> dict[str, Any]:
    """Publish a dataset's windows to a node over MQTT as its sensors would, waiting for every PUBACK.

    Windows are chosen by ``subjects`` or, with ``scenario`` and ``partition_id``,
    as the fleet simulator gives them to that node (``node_agent.data.node_spec_for``).
    Labels do not travel in SensorFrames: with ``label_store`` (the node's
    store) the windows are first registered there under the ids the node will
    cut, with their labels (those the fleet lets that node see; all with
    ``subjects``) and subjects; the frames that follow then add nothing twice.
    ``max_windows`` keeps at most that many, evenly spread over the node's windows.
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
    with Publisher(parse_broker(broker), client_id_for(node_id, "replay")) as pub:
        if not pub.wait_connected(30):
            raise ConnectionError(f"no MQTT broker at {broker}")
        sent = replay(pub, node_id, windows, rates, sensor_id=sensor_id, frame_len=frame_len, timeout=timeout)
    return {"node_id": node_id, "windows": len(rows), "frames": sent, "labelled": labelled,
            "subjects": sorted(set(ds.subject[rows].tolist()))}  # fmt: skip
