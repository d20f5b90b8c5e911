"""What the node-side pretraining costs a Raspberry Pi: seconds per epoch per 1000 windows, and peak memory.

Each objective runs in a process of its own on one CPU thread, on HAPT
windows, with the default towers and batch size:

- ``contrastive``: one stream, two augmented views (SimCLR form);
- ``masked``: one stream, spans rebuilt per time step (LIMU-BERT form);
- ``cross-modal``: two streams a node holds together (gyro, lin_acc), their
  views and the pair (per 1000 windows of *both* streams);
- ``supervised`` (the baseline, measured in the same run): one stream, plain
  cross-entropy on labels through the same encoder, no augmentation.

Printed: seconds per epoch per 1000 windows, its ratio to the baseline, and
the process's peak memory (VmHWM) above what it held before training.

    python benchmarks/bench_pretrain.py [--windows 2000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OBJECTIVES = ("supervised", "contrastive", "masked", "cross-modal")


def worker(objective: str, windows: int, epochs: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from common.data import load_dataset
    from common.pretrain import PretrainConfig, pretrain_encoder, pretrain_jointly
    from common.processes import reset_peak_rss, status_kib
    from common.towers import TowerConfig, build_encoder

    torch.set_num_threads(1)
    ds = load_dataset("hapt")
    rows = np.sort(np.random.default_rng(0).choice(len(ds), size=min(windows, len(ds)), replace=False))
    mods = ["gyro", "lin_acc"] if objective == "cross-modal" else ["lin_acc"]
    x = {m: np.ascontiguousarray(ds.X[m][rows]) for m in mods}
    torch.manual_seed(0)
    encoders = {m: build_encoder(ds.spec(m), TowerConfig()) for m in mods}
    reset_peak_rss()
    before = status_kib("VmHWM") or 0
    t0 = time.perf_counter()
    if objective == "supervised":
        enc = encoders["lin_acc"]
        head = torch.nn.Linear(enc.out_dim, ds.n_classes)
        opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=2e-3)
        data, y = torch.from_numpy(x["lin_acc"]), torch.from_numpy(ds.y[rows])
        for _ in range(epochs):
            for i in torch.randperm(len(data)).split(128):
                loss = F.cross_entropy(head(enc(data[i])), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
    elif objective == "cross-modal":
        pretrain_jointly(encoders, [x], PretrainConfig(objective="cross-modal", epochs=epochs), seed=0)
    else:
        pretrain_encoder(encoders["lin_acc"], x["lin_acc"], PretrainConfig(objective=objective, epochs=epochs), seed=0)
    seconds = time.perf_counter() - t0
    peak = (status_kib("VmHWM") or 0) - before
    return {"objective": objective, "streams": len(mods), "seconds_per_epoch_per_1000": seconds / epochs / (len(rows) / 1000), "peak_above_start_mib": peak / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.windows, args.epochs)))
        return
    rows = []
    for obj in OBJECTIVES:
        out = subprocess.run([sys.executable, __file__, "--worker", obj, "--windows", str(args.windows), "--epochs", str(args.epochs)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured {obj}", file=sys.stderr, flush=True)
    base = rows[0]["seconds_per_epoch_per_1000"]
    print(f"node-side pretraining on one thread, {args.windows} windows x {args.epochs} epochs (HAPT, default towers, batch 128)")
    print(f"{'objective':<14}{'streams':>8}{'s/epoch/1000':>14}{'x supervised':>14}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['objective']:<14}{r['streams']:>8}{r['seconds_per_epoch_per_1000']:>14.2f}{r['seconds_per_epoch_per_1000'] / base:>14.2f}{r['peak_above_start_mib']:>10.1f}")


if __name__ == "__main__":
    main()
