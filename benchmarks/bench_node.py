"""What a sensor node costs: encoding speed, memory, upload size, and what quantisation does to binding.

On one CPU thread (``torch.set_num_threads(1)``), with the default towers
(``build_encoder`` for HAPT's modalities, ``TowerConfig()``):

1. windows encoded per second, in batches and one at a time;
2. peak memory (VmHWM) of a node agent process that takes frames over MQTT
   from a real mosquitto (when installed; else through the same per-message
   path without a socket), cuts windows, encodes them and packs the uploads;
3. uploaded bytes per window per modality (a serialised EmbeddingBatch of
   ``--batch-rows`` windows, as ``node_agent.tasks.encode_and_pack`` builds it)
   against the raw float32 window, for float32, float16 and int8;
4. the share of exact top-1 cosine binding matches (``common.binding.bind``)
   of one scenario group's gyro features against another's that stay the same
   when both sides travel as float16 or int8 instead of float32, with a random
   encoder and with one pretrained (as a campaign would) on other subjects.

5. the node agent's import time and the memory its imports take, in the
   interpreter given by ``--node-python`` (the ``python`` of an environment made
   with ``pip install '.[node]'``; default this one), against ``import torch``
   alone in the same interpreter. The process of 2. runs there too.

Goals: float16 >= 6x smaller than raw with >= 99 % of matches unchanged, int8
>= 12x with >= 95 %; the node agent's peak memory under 300 MB. The script
prints figures and ratios and asserts nothing.

    python benchmarks/bench_node.py [--windows 2048] [--seed 0] [--pretrain-epochs 5] [--node-python VENV/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.processes import free_port  # noqa: E402

GOALS = {"float16": (6.0, 0.99), "int8": (12.0, 0.95)}
NODE_PEAK_GOAL_MB = 300  # 10^6 bytes (286 MiB)
NODE_MODULES = ("node_agent.cli", "node_agent.client_app", "node_agent.runtime", "node_agent.ingest", "node_agent.publish", "node_agent.store", "node_agent.tasks")
IMPORT_PROBE = """
import json, sys, time
t0 = time.perf_counter()
for m in sys.argv[1].split(","):
    __import__(m)
seconds = time.perf_counter() - t0
kib = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmHWM", "VmRSS"))}
print(json.dumps({"seconds": seconds, "VmHWM": kib["VmHWM"], "VmRSS": kib["VmRSS"]}))
"""


def vm_status() -> dict[str, int]:
    """VmHWM and VmRSS of this process, in KiB."""
    from common.processes import status_kib

    return {k: v for k in ("VmHWM", "VmRSS") if (v := status_kib(k)) is not None}


def load():
    from common.data import load_dataset

    return load_dataset("hapt")


def default_encoders(ds, modalities, seed: int) -> dict[str, torch.nn.Module]:
    """Default towers, randomly initialised (seeded)."""
    from common.towers import TowerConfig, build_encoder

    out = {}
    for m in modalities:
        torch.manual_seed(seed)
        out[m] = build_encoder(ds.spec(m), TowerConfig()).eval()
    return out


def pretrained_encoder(ds, modality: str, rows: np.ndarray, epochs: int, seed: int) -> torch.nn.Module:
    """A default tower trained with the nodes' self-supervised objective on ``rows`` (as a campaign's pretraining would)."""
    from common.pretrain import PretrainConfig, pretrain_encoder

    enc = default_encoders(ds, [modality], seed)[modality]
    pretrain_encoder(enc, ds.X[modality][rows], PretrainConfig(epochs=epochs), seed=seed)
    return enc.eval()


# --- 1. encoding speed ---------------------------------------------------------------------


@torch.no_grad()
def encode_rate(encoder: torch.nn.Module, x: np.ndarray, batch: int, min_seconds: float = 1.0) -> float:
    """Windows per second through ``encoder`` in batches of ``batch`` (after one warm-up batch)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    encoder(t[:batch])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for i in range(0, len(t), batch):
            encoder(t[i : i + batch])
        done += len(t)
    return done / (time.perf_counter() - start)


# --- 2. the node agent's memory --------------------------------------------------------------


def agent_worker(args: argparse.Namespace) -> None:
    """Child process: ingest frames, cut, encode, pack; print JSON with VmHWM."""
    torch.set_num_threads(1)
    from common.modalities import ModalitySpec
    from common.towers import TowerConfig, build_encoder
    from node_agent.ingest import Ingest, parse_broker, sensor_topic
    from node_agent.publish import window_frames
    from node_agent.data import StoreNodeData
    from node_agent.store import open_store
    from node_agent.tasks import encode_and_pack

    mods = args.modalities.split(",")
    after_import = vm_status()
    specs = {m: ModalitySpec(m, 3, 50.0, 128) for m in mods}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "node.db") as store:
        ing = Ingest("bench", store, specs, parse_broker(args.broker) if args.broker else ("127.0.0.1", 1))
        expected = args.frames
        if args.broker:
            ing.start()
            if not ing.wait_connected(30):
                raise SystemExit("worker: no broker")
            print("ready", flush=True)
            deadline = time.monotonic() + 600
            while ing.stats.accepted < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            ing.stop()
        else:
            rng = np.random.default_rng(0)
            for m in mods:
                x = rng.standard_normal((args.windows, 128, 3)).astype(np.float32)
                for f in window_frames("bench", m, x, 50.0):
                    ing.handle(sensor_topic("bench", m), f.SerializeToString())
        t0 = time.perf_counter()
        ing.cut()
        data = StoreNodeData("bench", store)
        encoders = {m: build_encoder(specs[m], TowerConfig()).eval() for m in mods}
        with torch.no_grad():
            batches = encode_and_pack(data, encoders, "bench", "c1", dtype="float16")
        seconds = time.perf_counter() - t0
        print(json.dumps({
            "accepted": ing.stats.accepted, "expected": expected, "windows": {m: store.count_windows(m) for m in mods},
            "upload_bytes": sum(b.ByteSize() for b in batches), "cut_encode_pack_s": round(seconds, 2),
            "after_import": after_import, "end": vm_status(),
        }), flush=True)  # fmt: skip


def import_cost(python: str, modules: tuple[str, ...], repeats: int = 3) -> dict[str, float]:
    """Fastest of ``repeats`` fresh interpreters importing ``modules``: seconds, and VmHWM/VmRSS in MiB after."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([python, "-c", IMPORT_PROBE, ",".join(modules)], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": best["seconds"], "VmHWM_MiB": best["VmHWM"] / 1024, "VmRSS_MiB": best["VmRSS"] / 1024}


def agent_memory(ds, modalities: list[str], n_windows: int, python: str = sys.executable) -> dict:
    """Run a node agent in a child process (under ``python``) and read its peak resident memory."""
    from node_agent.ingest import mosquitto_conf
    from node_agent.publish import Publisher, replay

    frames = n_windows * 2 * len(modalities)
    cmd = [python, __file__, "--worker", "agent", "--windows", str(n_windows), "--frames", str(frames),
           "--modalities", ",".join(modalities)]  # fmt: skip
    broker = None
    tmp = tempfile.mkdtemp(prefix="bench-node-")
    try:
        if shutil.which("mosquitto"):
            port = free_port()
            (Path(tmp) / "data").mkdir()
            conf = Path(tmp) / "mosquitto.conf"
            conf.write_text(mosquitto_conf(port, str(Path(tmp) / "data")))
            broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            cmd += ["--broker", f"127.0.0.1:{port}"]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert child.stdout is not None
        if broker is not None:
            line = child.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"agent worker did not start: {line!r}")
            rows = np.arange(n_windows)
            with Publisher(("127.0.0.1", port), "bench-replay") as pub:
                pub.wait_connected(10)
                t0 = time.perf_counter()
                replay(pub, "bench", {m: ds.X[m][rows] for m in modalities}, {m: 50.0 for m in modalities}, timeout=600)
                publish_s = time.perf_counter() - t0
        out, _ = child.communicate(timeout=900)
        res = json.loads(out.strip().splitlines()[-1])
        res["transport"] = "mqtt (mosquitto)" if broker is not None else "in-process (no mosquitto)"
        if broker is not None:
            res["publish_s"] = round(publish_s, 2)
        return res
    finally:
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


# --- 3. upload sizes -------------------------------------------------------------------------


def upload_sizes(feats: np.ndarray, modality: str, batch_rows: int) -> dict[str, dict[str, float]]:
    """Bytes per window of EmbeddingBatches of ``batch_rows`` rows, as the ClientApp packs them."""
    from common.codec import encode_embeddings

    n = len(feats) // batch_rows * batch_rows or len(feats)
    ids = [f"replay:{3 * i}:0" for i in range(n)]  # the span ids a replayed node uploads
    out = {}
    for dtype in ("float32", "float16", "int8"):
        total = payload = 0
        for i in range(0, n, batch_rows):
            b = encode_embeddings("gyro-linacc-000", "campaign-1", f"{modality}-{i // batch_rows:05d}", modality,
                                  ids[i : i + batch_rows], feats[i : i + batch_rows],
                                  labels=np.full(len(ids[i : i + batch_rows]), -1), dtype=dtype)  # fmt: skip
            total += b.ByteSize()
            payload += len(b.embeddings.data) + 4 * len(b.embeddings.scale)
        lean = 0
        for i in range(0, n, batch_rows):  # the same without the all -1 labels (10 varint bytes each)
            b = encode_embeddings("gyro-linacc-000", "campaign-1", f"{modality}-{i // batch_rows:05d}", modality,
                                  ids[i : i + batch_rows], feats[i : i + batch_rows], dtype=dtype)  # fmt: skip
            lean += b.ByteSize()
        out[dtype] = {"message": total / n, "no_labels": lean / n, "embedding_only": payload / n}
    return out


# --- 4. binding agreement ------------------------------------------------------------------


def quantised(x: np.ndarray, dtype: str) -> torch.Tensor:
    """``x`` as it arrives at the coordinator after travelling as ``dtype``."""
    from common.codec import tensor_from_proto, tensor_to_proto

    return torch.from_numpy(tensor_from_proto(tensor_to_proto(x, dtype=dtype)))


def top1(query: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
    try:
        from common.binding import bind

        return bind(query, gallery, k=1).index[:, 0].numpy()
    except ImportError:
        q = torch.nn.functional.normalize(query, dim=-1)
        g = torch.nn.functional.normalize(gallery, dim=-1)
        return (q @ g.T).argmax(1).numpy()


def binding_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    ref = top1(torch.from_numpy(a), torch.from_numpy(b))
    return {dtype: float((top1(quantised(a, dtype), quantised(b, dtype)) == ref).mean()) for dtype in ("float16", "int8")}


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=2048, help="windows per modality for speed and memory")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batch-rows", type=int, default=1024, help="rows per EmbeddingBatch (as encode_and_pack)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-epochs", type=int, default=5, help="pretrain a gyro encoder for the binding figures (0: random init only)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--broker", default="", help=argparse.SUPPRESS)
    p.add_argument("--modalities", default="gyro,lin_acc", help="modalities of the node agent process")
    p.add_argument("--node-python", default=sys.executable,
                   help="interpreter of a node-only environment (pip install '.[node]') for 2. and 5. (default: this one)")
    args = p.parse_args()
    if args.worker == "agent":
        agent_worker(args)
        return

    torch.set_num_threads(1)
    from common.data.scenarios import Scenario, split
    from common.pretrain import embed_windows

    t_load = time.perf_counter()
    ds = load()
    print(f"# bench_node: HAPT {len(ds)} windows of {ds.X['gyro'].shape[1:]} per modality ({time.perf_counter() - t_load:.1f}s to load); "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, seed {args.seed}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (timings are noisy under load)")  # fmt: skip
    raw = ds.X["gyro"].shape[1] * ds.X["gyro"].shape[2] * 4
    mods = ds.modalities
    encoders = default_encoders(ds, mods, args.seed)

    print("\n## 1. encoding speed (default InertialEncoder, 1 thread)")
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(ds), size=min(args.windows, len(ds)), replace=False)
    for m in mods:
        n_params = sum(p.numel() for p in encoders[m].parameters())
        batched = encode_rate(encoders[m], ds.X[m][rows], args.batch)
        single = encode_rate(encoders[m], ds.X[m][rows[:256]], 1)
        print(f"{m:8s} {n_params:7d} params   batch {args.batch}: {batched:8.0f} windows/s   batch 1: {single:6.0f} windows/s ({1e3 / single:.2f} ms/window)")

    print("\n## 2. peak memory of a node agent process (ingest over MQTT + cut + encode + pack)")
    print(f"# interpreter: {args.node_python}")
    mem = agent_memory(ds, args.modalities.split(","), min(args.windows, len(ds)), args.node_python)
    print(f"transport {mem['transport']}; {mem['accepted']}/{mem['expected']} frames stored; windows {mem['windows']}; "
          f"cut+encode+pack {mem['cut_encode_pack_s']}s" + (f"; published in {mem['publish_s']}s" if "publish_s" in mem else ""))  # fmt: skip
    print(f"VmHWM after imports {mem['after_import']['VmHWM'] / 1024:.0f} MiB; peak {mem['end']['VmHWM'] / 1024:.0f} MiB "
          f"(VmRSS at end {mem['end']['VmRSS'] / 1024:.0f} MiB)")  # fmt: skip

    print(f"\n## 5. the node agent's imports ({args.node_python}; fastest of 3 fresh interpreters)")
    base = import_cost(args.node_python, ("torch",))
    agent = import_cost(args.node_python, NODE_MODULES)
    print(f"{'import':34s} {'seconds':>8s} {'VmHWM MiB':>10s}")
    print(f"{'torch alone (baseline)':34s} {base['seconds']:8.2f} {base['VmHWM_MiB']:10.0f}")
    print(f"{'the node agent (' + str(len(NODE_MODULES)) + ' modules)':34s} {agent['seconds']:8.2f} {agent['VmHWM_MiB']:10.0f}")
    print(f"ratio to torch alone: time {agent['seconds'] / base['seconds']:.2f}x, memory {agent['VmHWM_MiB'] / base['VmHWM_MiB']:.2f}x; "
          f"node agent peak {mem['end']['VmHWM'] / 1024:.0f} MiB ({mem['end']['VmHWM'] * 1024 / 1e6:.0f} MB) against the goal of "
          f"{NODE_PEAK_GOAL_MB} MB: {'met' if mem['end']['VmHWM'] * 1024 <= NODE_PEAK_GOAL_MB * 1e6 else 'NOT met'}")  # fmt: skip

    sc = Scenario.load("sensor-bind")
    sp = split(sc, ds, args.seed)
    a_rows, b_rows = sp.parts["gyro-linacc"].rows, sp.parts["gyro-gravity"].rows
    others = np.concatenate([p.rows for name, p in sp.parts.items() if name not in ("gyro-linacc", "gyro-gravity")])
    t0 = time.perf_counter()
    trained = pretrained_encoder(ds, "gyro", others, args.pretrain_epochs, args.seed) if args.pretrain_epochs else None
    t_pre = time.perf_counter() - t0
    feats = {}
    with torch.no_grad():
        for name, enc in (("random init", encoders["gyro"]), ("pretrained", trained)):
            if enc is not None:
                feats[name] = (embed_windows(enc, ds.X["gyro"][a_rows]).numpy(), embed_windows(enc, ds.X["gyro"][b_rows]).numpy())
    fa, _ = feats["pretrained" if trained is not None else "random init"]

    print(f"\n## 3. uploaded bytes per window per modality (raw float32 window: {raw} B; EmbeddingBatches of {args.batch_rows} rows)")
    sizes = upload_sizes(fa, "gyro", args.batch_rows)
    print(f"{'dtype':8s} {'message':>9s} {'x raw':>7s} {'no labels':>10s} {'x raw':>7s} {'embedding':>10s} {'x raw':>7s}")
    for dtype, sz in sizes.items():
        print(f"{dtype:8s} {sz['message']:9.1f} {raw / sz['message']:6.2f}x {sz['no_labels']:10.1f} {raw / sz['no_labels']:6.2f}x "
              f"{sz['embedding_only']:10.1f} {raw / sz['embedding_only']:6.2f}x")  # fmt: skip
    print("# message: as encode_and_pack sends it (window ids, labels of -1, header); no labels: the same without")
    print("# the labels field; embedding: the tensor bytes (and int8 scales) alone")

    print(f"\n## 4. binding matches unchanged (exact top-1 cosine of gyro features, both sides sent as dtype):\n"
          f"#    A = group gyro-linacc, {len(a_rows)} windows of subjects {sp.subjects_of('gyro-linacc')}\n"
          f"#    B = group gyro-gravity, {len(b_rows)} windows of subjects {sp.subjects_of('gyro-gravity')}")  # fmt: skip
    if trained is not None:
        print(f"#    pretrained: the node objective, {args.pretrain_epochs} epochs on the {len(others)} windows of the other "
              f"groups' subjects ({t_pre:.0f}s)")  # fmt: skip
    agree = {}
    for name, (a, b) in feats.items():
        ab, ba = binding_agreement(a, b), binding_agreement(b, a)
        agree[name] = {d: min(ab[d], ba[d]) for d in ab}
        for dtype in ("float16", "int8"):
            print(f"{name:12s} {dtype:8s} A->B {100 * ab[dtype]:6.2f} %   B->A {100 * ba[dtype]:6.2f} %")

    print("\n## goals (sizes as packed today; matches with the " + ("pretrained" if trained is not None else "random") + " encoder)")
    for dtype, (ratio_goal, match_goal) in GOALS.items():
        ratio = raw / sizes[dtype]["message"]
        match = agree["pretrained" if trained is not None else "random init"][dtype]
        print(f"{dtype:8s} {ratio:5.2f}x smaller (goal >= {ratio_goal:g}x: {'met' if ratio >= ratio_goal else 'NOT met'}); "
              f"{100 * match:.2f} % of matches unchanged (goal >= {100 * match_goal:g} %: {'met' if match >= match_goal else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
