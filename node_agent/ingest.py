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

The sensor's side (publishing frames, replaying a data set) is ``node_agent.publish``.
"""

from __future__ import annotations

import getpass
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from common import codec
from common.codec import CodecError
from common.modalities import ModalitySpec, default_registry
from node_agent.store import NodeStore
from proto import edgebind_pb2 as pb

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_SEQ_JUMP",
    "Ingest",
    "IngestStats",
    "REJECT_REASONS",
    "StoreWriteError",
    "client_id_for",
    "mosquitto_conf",
    "node_specs",
    "parse_broker",
    "resend_topic",
    "sensor_topic",
    "stream_of",
    "use_tls",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1 << 20
DEFAULT_MAX_SEQ_JUMP = 1_000_000  # frames a stream may skip at once (at 50 Hz in 64-sample frames, about 15 days)
DEFAULT_MAX_STORE_ATTEMPTS = 5  # a frame the store fails to write this often goes to the dead-letter table
RATE_TOLERANCE = 0.01  # a frame's rate may differ from its modality's by 1 %

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


def resend_topic(node_id: str) -> str:
    """Where a node asks its sensors to publish their recent frames again (below ``sensors/``, two levels down, so
    the node's own ``sensors/+`` subscription does not take it for a stream, and the ACL's ``sensors/#`` covers it)."""
    return f"edgebind/{node_id}/sensors/_control/resend"


def events_topic(node_id: str) -> str:
    return f"edgebind/{node_id}/events"


def client_id_for(node_id: str, role: str = "ingest") -> str:
    """A stable MQTT client id: the broker keys the persistent session on it."""
    return f"edgebind-{role}-{node_id}"[:128]


def use_tls(client: mqtt.Client, tls: Mapping[str, str] | None) -> None:
    """Make a paho client speak TLS with a client certificate (``ca``, ``cert``, ``key`` files), when given."""
    if tls is not None:
        client.tls_set(ca_certs=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])


def stream_of(frame: pb.SensorFrame) -> str:
    """The stream a frame belongs to: its sensor, and that sensor's boot when it names one (``boot_id``), since a
    rebooted sensor starts its seq again. The store keeps frames, and cuts windows, per stream."""
    return frame.sensor_id if frame.boot_id == 0 else f"{frame.sensor_id}@{frame.boot_id:x}"


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


MQTT_ACL = """# a node's certificate (its node id as common name): its own sensors' topics and its own events, nothing else
pattern readwrite edgebind/%u/sensors/#
pattern write edgebind/%u/events
# an operator's certificate: every node's events, to watch the fleet
user edgebind operator
topic read edgebind/+/events
"""


AUTOSAVE_INTERVAL = 1  # seconds between the broker's saves of its in-memory messages (see Publisher's resend window)


def mosquitto_conf(port: int, data_dir: str, host: str = "127.0.0.1", tls: Mapping[str, str] | None = None) -> str:
    """A mosquitto 2 config for a local broker that keeps QoS-1 messages across restarts.

    Queues for offline persistent sessions are unbounded (mosquitto's default of
    1000 would drop frames of a node that is away for a while). Started as root,
    mosquitto stays the current user rather than dropping to ``mosquitto``, who
    could not write to a private temporary directory. With ``tls`` (``ca``,
    ``cert``, ``key`` of the broker, and ``acl``, the path ``MQTT_ACL`` is
    written to) the listener speaks TLS only, every client shows a certificate
    of the CA whose common name is its user name, and the ACL lets a node touch
    its own topics alone; without, anyone may connect (a trusted network only).
    The broker refuses messages above 4 x ``DEFAULT_MAX_PAYLOAD`` either way (the
    node itself refuses, by name, any above its ``max_payload``).
    mosquitto saves its messages every ``AUTOSAVE_INTERVAL`` seconds, not on
    each PUBACK: a SIGKILLed broker restarts without what it acknowledged since
    its last save, which is why ``Publisher`` sends its recently acknowledged
    messages again after a lost connection.
    """
    if tls is not None:
        Path(tls["acl"]).write_text(MQTT_ACL)
        access = [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}", "require_certificate true",
                  "use_identity_as_username true", "allow_anonymous false", f"acl_file {tls['acl']}"]  # fmt: skip
    else:
        access = ["allow_anonymous true"]
    return "\n".join(
        [
            f"listener {port} {host}",
            *access,
            f"user {getpass.getuser()}",
            f"message_size_limit {4 * DEFAULT_MAX_PAYLOAD}",  # the broker's own cap; the node names anything above max_payload
            "persistence true",
            f"persistence_location {data_dir.rstrip('/')}/",
            f"autosave_interval {AUTOSAVE_INTERVAL}",
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
    dead_letters: int = 0  # frames that failed ``max_store_attempts`` times: kept in the store's dead-letter table, acknowledged
    windows: Counter[str] = field(default_factory=Counter)  # modality -> windows cut
    connects: int = 0
    sessions_lost: int = 0  # reconnects that found no session of this node at the broker (see Ingest._on_connect)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": dict(self.rejected),
            "store_errors": self.store_errors,
            "dead_letters": self.dead_letters,
            "windows": dict(self.windows),
            "connects": self.connects,
            "sessions_lost": self.sessions_lost,
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
        max_store_attempts: int = DEFAULT_MAX_STORE_ATTEMPTS,
        steps: Mapping[str, int] | None = None,
        client_id: str | None = None,
        keepalive: int = 30,
        tls: Mapping[str, str] | None = None,
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
        if max_store_attempts < 1:
            raise ValueError(f"max_store_attempts must be >= 1, got {max_store_attempts}")
        self.max_store_attempts = max_store_attempts
        self._failures: Counter[tuple[str, str, int]] = Counter()  # (stream, modality, seq) -> failed writes so far
        self._top_seq: dict[tuple[str, str], int | None] = {}  # (sensor, modality) -> highest seq stored, read once from the store
        self.steps = {m: (steps or {}).get(m, max(1, s.window // 2)) for m, s in self.specs.items()}
        self.client_id = client_id or client_id_for(node_id)
        self.tls = tls  # ca, cert, key: the broker over TLS with this node's certificate
        self.keepalive = keepalive
        self.stats = IngestStats()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._redeliver = False  # a store write failed on this connection: ack nothing more on it
        self._client: mqtt.Client | None = None
        self._channels = {m: s.channels for m, s in self.specs.items()}

    # --- one message --------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Check and store one payload; return ``accepted``, ``duplicate``, ``dead-letter`` or the reject reason.

        Raises ``StoreWriteError`` (counted under ``store_errors``) if the store
        fails to write a good frame for any reason but bad input; the frame is
        then not stored, and must come again. A frame that fails
        ``max_store_attempts`` times is kept in the store's dead-letter table
        with the reason instead (``dead-letter``), so it no longer blocks the
        frames behind it; if even that write fails (a full disk), it must come
        again like any other.
        """
        try:
            frame, samples = self._check(topic, payload)
            stream = stream_of(frame)
            try:
                added = self.store.add_frame(stream, frame.modality, frame.seq, frame.timestamp_ns, samples, rate_hz=frame.rate_hz)
            except ValueError as e:
                raise _Rejected("store", str(e)) from e
            except Exception as e:  # the database, not the frame: locked, disk full, connection gone, ...
                reason = f"store failed to write frame {frame.seq} of {stream!r}/{frame.modality!r}: {type(e).__name__}: {e}"
                return self._failed(topic, payload, (stream, frame.modality, frame.seq), reason, e)
            self._failures.pop((stream, frame.modality, frame.seq), None)
            key = (stream, frame.modality)
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

    def _failed(self, topic: str, payload: bytes, key: tuple[str, str, int], reason: str, error: Exception) -> str:
        with self._lock:
            self.stats.store_errors += 1
            self._failures[key] += 1
            attempts = self._failures[key]
        if attempts >= self.max_store_attempts:
            try:
                self.store.add_dead_letter(topic, payload, reason, attempts)
            except Exception as e:  # the store takes nothing at all: leave the frame with the broker
                raise StoreWriteError(f"{reason}; nor could it be kept as a dead letter: {type(e).__name__}: {e}") from error
            with self._lock:
                self.stats.dead_letters += 1
                del self._failures[key]
            log.error("node %s: %s, %d times: kept as a dead letter and acknowledged", self.node_id, reason, attempts)
            return "dead-letter"
        raise StoreWriteError(reason) from error

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
        key = (stream_of(frame), frame.modality)
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
        use_tls(c, self.tls)
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
        if not flags.session_present:
            # No session of ours at the broker: what sensors published before this subscription was not kept for us.
            # Ask them (after the subscription, on the same connection, so the broker has it in place) to publish
            # what they sent in their last resend_window seconds again; what did arrive is a duplicate, dropped.
            client.publish(resend_topic(self.node_id), b"", qos=1)
        with self._lock:
            lost = self.stats.connects > 0 and not flags.session_present
            self.stats.connects += 1
            self.stats.sessions_lost += lost
        if lost:  # the broker restarted without this node's session (killed before it saved it, or its store lost)
            log.warning(
                "node %s: the broker at %s:%d no longer held this node's session (killed before it saved it?); asked the "
                "sensors to publish their last seconds again (Publisher.resend_window)",
                self.node_id, *self.broker,
            )  # fmt: skip
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
