"""Many sensors publishing at their real rates to one broker and one node: is every reading stored once, and how fast?

Starts mosquitto on 127.0.0.1 (a throwaway config) and one node's ``Ingest``
with a SQLite store, then ``--sensors`` simulated sensors, each its own MQTT
client, publish ``--modality`` frames of ``--frame-len`` samples at
``--rate`` Hz (times ``--speedup``) for ``--seconds``. Printed:

- readings in (published, acknowledged by the broker) and out (stored);
  losses (published but never stored) and duplicates (stored twice: the store
  refuses them, the node counts redeliveries): both must be 0;
- latency from publish to stored, p50 and p99;
- the same latency for a bare subscriber that stores nothing, measured in
  the same run (the broker's own share): the node's p50 and p99 as ratios of it.

Bounded in time; asserts nothing.

    python benchmarks/bench_ingest.py [--sensors 50] [--seconds 20] [--speedup 1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from common.processes import free_port  # noqa: E402
from node_agent.ingest import Ingest, mosquitto_conf, node_specs, sensor_topic  # noqa: E402
from node_agent.publish import Publisher  # noqa: E402
from node_agent.store import open_store  # noqa: E402
from proto import edgebind_pb2 as pb  # noqa: E402

NODE = "bench-node"


def sensor(k: int, args, broker, sent: dict, stop_at: float) -> None:
    """One sensor: a frame every frame_len / rate seconds (divided by speedup), each stamped with its send time."""
    sid = f"s{k:04d}"
    pub = Publisher(broker, f"bench-sensor-{k}")
    try:
        if not pub.wait_connected(20):
            raise SystemExit(f"sensor {sid}: no broker")
        period = args.frame_len / args.rate / args.speedup
        rng = np.random.default_rng(k)
        nxt, seq = time.monotonic() + rng.uniform(0, period), 0
        while nxt < stop_at:
            time.sleep(max(0.0, nxt - time.monotonic()))
            samples = rng.standard_normal(args.frame_len * 3).astype(np.float32)
            frame = pb.SensorFrame(node_id=NODE, sensor_id=sid, modality=args.modality, seq=seq, timestamp_ns=time.time_ns(),
                                   rate_hz=args.rate, channels=3, samples=samples.tolist())  # fmt: skip
            sent[(sid, seq)] = time.monotonic()
            pub.publish(sensor_topic(NODE, args.modality), frame.SerializeToString())
            seq, nxt = seq + 1, nxt + period
        pub.flush(60)
    finally:
        pub.close(10)


def run_load(args, broker) -> dict[tuple[str, int], float]:
    """Publish from every sensor at once; returns (sensor, seq) -> when it was published."""
    sent: dict[tuple[str, int], float] = {}
    stop_at = time.monotonic() + args.seconds
    threads = [threading.Thread(target=sensor, args=(k, args, broker, sent, stop_at), daemon=True) for k in range(args.sensors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.seconds + 120)
    return sent


def percentiles(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x) * 1e3
    return (float(np.percentile(a, 50)), float(np.percentile(a, 99))) if len(a) else (float("nan"), float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sensors", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0, help="how long every sensor publishes")
    p.add_argument("--rate", type=float, default=50.0, help="samples per second per sensor")
    p.add_argument("--frame-len", type=int, default=64, help="samples per frame")
    p.add_argument("--speedup", type=float, default=1.0, help="publish this many times faster than the real rate")
    p.add_argument("--modality", default="gyro")
    args = p.parse_args()
    exe = shutil.which("mosquitto")
    if exe is None:
        raise SystemExit("bench_ingest needs mosquitto (apt-get install -y mosquitto)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    port = free_port()
    (tmp / "data").mkdir()
    (tmp / "mosquitto.conf").write_text(mosquitto_conf(port, str(tmp / "data")))
    broker_proc = subprocess.Popen([exe, "-c", str(tmp / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    broker = ("127.0.0.1", port)
    per_s = args.sensors * args.rate * args.speedup / args.frame_len
    print(f"# bench_ingest: {args.sensors} sensors x {args.rate * args.speedup:g} Hz in {args.frame_len}-sample frames "
          f"({per_s:.0f} frames/s) for {args.seconds:g} s; mosquitto on 127.0.0.1:{port}")  # fmt: skip
    try:
        time.sleep(0.5)
        # baseline: a subscriber that only notes the arrival time
        arrived: dict[tuple[str, int], float] = {}

        def on_message(_c, _u, msg):
            f = pb.SensorFrame.FromString(msg.payload)
            arrived.setdefault((f.sensor_id, f.seq), time.monotonic())

        bare = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=True)
        bare.on_message = on_message
        bare.on_connect = lambda c, *_a: c.subscribe(f"edgebind/{NODE}/sensors/#", qos=1)
        bare.connect("127.0.0.1", port)
        bare.loop_start()
        time.sleep(0.5)
        sent = run_load(args, broker)
        time.sleep(2.0)
        bare.loop_stop()
        bare.disconnect()
        base = [arrived[k] - t for k, t in sent.items() if k in arrived]
        b50, b99 = percentiles(base)
        print(f"\nbare subscriber (baseline): {len(arrived)}/{len(sent)} readings arrived; latency p50 {b50:.1f} ms, p99 {b99:.1f} ms")

        # the node: ingest into its store, with the time each reading was stored
        store = open_store(tmp / "node.db")
        stored: dict[tuple[str, int], float] = {}
        real_add = store.add_frame

        def add_frame(sensor_id, modality, seq, *a, **kw):
            added = real_add(sensor_id, modality, seq, *a, **kw)
            if added:
                stored.setdefault((sensor_id, seq), time.monotonic())
            return added

        store.add_frame = add_frame
        node = Ingest(NODE, store, node_specs([args.modality], window=128, rate_hz=args.rate), broker)
        node.start()
        if not node.wait_connected(20):
            raise SystemExit("node: no broker")
        sent = run_load(args, broker)
        deadline = time.monotonic() + 60
        while len(stored) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
        node.stop()
        in_store = store.count_frames(args.modality)
        store.close()
        lat = [stored[k] - t for k, t in sent.items() if k in stored]
        n50, n99 = percentiles(lat)
        lost = len(set(sent) - set(stored))
        print(f"node ingest: readings in {len(sent)}, out {in_store} stored; losses {lost}, duplicates stored "
              f"{in_store - len(stored)} (redeliveries refused: {node.stats.duplicate}); rejected {dict(node.stats.rejected)}")  # fmt: skip
        if stored:
            span = max(stored.values()) - min(sent.values())
            print(f"stored {len(stored) / span:.0f} frames/s from the first publish to the last store ({per_s:.0f} frames/s offered); "
                  f"a p50 far above the baseline's means the node fell behind and worked through a backlog")  # fmt: skip
        print(f"latency publish -> stored: p50 {n50:.1f} ms, p99 {n99:.1f} ms; "
              f"ratio to the bare subscriber: p50 {n50 / b50:.2f}x, p99 {n99 / b99:.2f}x")  # fmt: skip
        print(f"goal: losses 0 and duplicates 0: {'met' if lost == 0 and in_store == len(stored) == len(sent) else 'NOT met'}")
    finally:
        broker_proc.terminate()
        broker_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
