"""How fast and how lean is ``bind``? Figures as ratios to a bare blocked matmul and to dense all-pairs.

    python benchmarks/bench_binding.py --n 200000 --dim 128 --k 1 --threads 2 --dense-n 20000

Every measurement runs in its own subprocess so that peak memory (VmHWM in
/proc/self/status, reset before the measured call) belongs to that call alone;
"beyond inputs" is the peak minus the resident size once the inputs exist and
the kernels have been warmed up. The baseline is ``q @ g.T`` over the same
blocks as ``bind`` with the result discarded: the same FLOPs, no top-k. CPU
time (all threads) is printed beside wall time because it is steadier on a
shared machine. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def _inputs(torch, n: int, dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, dim, generator=gen)
    g = torch.randn(n, dim, generator=gen)
    return q, g


def _blocked_matmul(torch, q, g, qb: int, gb: int) -> None:
    """The baseline: every (query block, gallery block) product into one reused buffer, then discarded."""
    buf = torch.empty(qb * gb)
    for g0 in range(0, g.shape[0], gb):
        gg = g[g0 : g0 + gb]
        for q0 in range(0, q.shape[0], qb):
            qq = q[q0 : q0 + qb]
            torch.matmul(qq, gg.T, out=buf[: len(qq) * len(gg)].view(len(qq), len(gg)))


def ab_worker(args: argparse.Namespace, torch, bind, qb: int, gb: int) -> None:
    """bind() and the baseline in turns on fresh query slices against the full gallery.

    Per query, bind's work does not depend on the other queries, so a slice
    costs the same per row as the full run; taking turns in one process puts
    both under the same load from whatever else the machine is doing.
    """
    gen = torch.Generator().manual_seed(args.seed)
    g = torch.randn(args.n, args.dim, generator=gen)
    bind(g[:2048], g[:4096], k=args.k, max_block_bytes=args.max_block_bytes)  # warm-up
    tot = {"bind": [0.0, 0.0], "matmul": [0.0, 0.0]}
    for r in range(args.ab_rounds):
        q = torch.randn(args.ab_queries, args.dim, generator=gen)
        order = ("matmul", "bind") if r % 2 == 0 else ("bind", "matmul")
        for kind in order:
            c0, t0 = time.process_time(), time.perf_counter()
            if kind == "bind":
                bind(q, g, k=args.k, max_block_bytes=args.max_block_bytes)
            else:
                _blocked_matmul(torch, q, g, qb, gb)
            tot[kind][0] += time.perf_counter() - t0
            tot[kind][1] += time.process_time() - c0
    print(json.dumps({kind: {"wall": w, "cpu": c} for kind, (w, c) in tot.items()} | {"load": os.getloadavg()[0]}))


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from common.binding import bind, choose_block_sizes
    from common.processes import reset_peak_rss, status_kib

    torch.set_num_threads(args.threads)
    if args.worker == "ab":
        qb, gb = choose_block_sizes(args.n, args.n, args.dim, args.k, args.max_block_bytes)
        if args.baseline_block:
            qb, gb = (int(v) for v in args.baseline_block.lower().split("x"))
        return ab_worker(args, torch, bind, qb, gb)
    n = args.dense_n if args.worker in ("bind-dense", "dense") else args.n
    q, g = _inputs(torch, n, args.dim, args.seed)
    qb, gb = choose_block_sizes(n, n, args.dim, args.k, args.max_block_bytes)
    if args.baseline_block:
        qb, gb = (int(v) for v in args.baseline_block.lower().split("x"))

    def run():
        if args.worker in ("bind", "bind-dense"):
            return bind(q, g, k=args.k, max_block_bytes=args.max_block_bytes).index
        if args.worker == "matmul":
            return _blocked_matmul(torch, q, g, qb, gb)
        sim = F.normalize(q) @ F.normalize(g).T
        return sim.topk(args.k, dim=1).indices

    # Warm up on a slice so that code pages and thread pools are not counted as the call's memory.
    q_full, g_full = q, g
    q, g = q_full[:2048], g_full[:4096]
    run()
    q, g = q_full, g_full
    rss0 = status_kib("VmRSS")
    reset = reset_peak_rss()
    hwm0 = status_kib("VmHWM")
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    out = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = status_kib("VmHWM")
    if args.save and out is not None:
        torch.save(out, args.save)
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": cpu,
                "peak_extra_bytes": (peak - (rss0 if reset else hwm0)) * 1024,
                "peak_reset": reset,
                "inputs_bytes": (q.numel() + g.numel()) * q.element_size(),
                "blocks": [qb, gb],
                "load": [load0, os.getloadavg()[0]],
            }
        )
    )


def measure(kind: str, args: argparse.Namespace, save: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for name in ("n", "dim", "k", "threads", "dense_n", "seed", "max_block_bytes", "ab_queries", "ab_rounds"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.baseline_block:
        cmd += ["--baseline-block", args.baseline_block]
    if save:
        cmd += ["--save", save]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best(runs: list[dict]) -> dict:
    return {
        "wall": min(r["wall"] for r in runs),
        "cpu": min(r["cpu"] for r in runs),
        "peak_extra_bytes": max(r["peak_extra_bytes"] for r in runs),
        "blocks": runs[0]["blocks"],
        "load": [round(x, 1) for r in runs for x in r["load"]],
    }


def _line(name: str, r: dict) -> str:
    return f"  {name:<34} wall {r['wall']:8.2f} s   cpu {r['cpu']:8.2f} s   peak beyond inputs {r['peak_extra_bytes'] / MB:8.1f} MB   (load avg {r['load']})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000, help="rows of query and of gallery")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dense-n", type=int, default=20_000, help="size for the comparison with dense all-pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-block-bytes", type=int, default=64 * MB)
    p.add_argument("--baseline-block", default="", help="QxG block of the matmul baseline (default: bind's)")
    p.add_argument("--repeats", type=int, default=1, help="alternate bind and baseline this many times; best of each")
    p.add_argument("--ab-queries", type=int, default=8192, help="query rows per turn of the interleaved comparison (0: skip it)")
    p.add_argument("--ab-rounds", type=int, default=4)
    p.add_argument("--worker", choices=["bind", "matmul", "bind-dense", "dense", "ab"], help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    print(f"bind {args.n} x {args.n}, dim {args.dim}, k {args.k}, threads {args.threads}, max_block_bytes {args.max_block_bytes // MB} MB", flush=True)
    runs: dict[str, list[dict]] = {"matmul": [], "bind": []}
    for _ in range(args.repeats):
        for kind in ("matmul", "bind"):
            runs[kind].append(measure(kind, args))
    mm, bd = _best(runs["matmul"]), _best(runs["bind"])
    print(f"  blocks (query rows x gallery rows): {bd['blocks'][0]} x {bd['blocks'][1]}")
    print(_line("bind()", bd))
    print(_line("blocked bare matmul (baseline)", mm))
    print(f"  ratio bind / matmul:   wall {bd['wall'] / mm['wall']:.3f}   cpu {bd['cpu'] / mm['cpu']:.3f}   (goal <= 1.25)")
    print(f"  peak beyond inputs / 512 MB:   bind {bd['peak_extra_bytes'] / (512 * MB):.3f}   matmul {mm['peak_extra_bytes'] / (512 * MB):.3f}", flush=True)
    if args.ab_queries:
        ab = measure("ab", args)
        b, m = ab["bind"], ab["matmul"]
        print(
            f"  taking turns in one process ({args.ab_rounds} x {args.ab_queries} query rows vs all {args.n}, load avg {ab['load']:.1f}):"
            f"  bind {b['wall']:.1f} s, matmul {m['wall']:.1f} s;  ratio wall {b['wall'] / m['wall']:.3f}   cpu {b['cpu'] / m['cpu']:.3f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        dn = {kind: _best([measure(kind, args, save=os.path.join(tmp, kind + ".pt"))]) for kind in ("dense", "bind-dense")}
        import torch

        a, b = (torch.load(os.path.join(tmp, kind + ".pt")) for kind in ("dense", "bind-dense"))
        agree = float((a == b).all(dim=1).float().mean())
    print(f"dense comparison at {args.dense_n} x {args.dense_n}:")
    print(_line("bind()", dn["bind-dense"]))
    print(_line("dense normalise + q @ g.T + topk", dn["dense"]))
    print(
        f"  ratio bind / dense:   wall {dn['bind-dense']['wall'] / dn['dense']['wall']:.3f}   cpu {dn['bind-dense']['cpu'] / dn['dense']['cpu']:.3f}"
        f"   peak memory {dn['bind-dense']['peak_extra_bytes'] / max(dn['dense']['peak_extra_bytes'], 1):.3f}"
        f"   same top-{args.k} for {agree:.4%} of queries"
    )


if __name__ == "__main__":
    main()
