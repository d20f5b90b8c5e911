"""What do Babel's adaptive direction weights cost? One stage step against a plain symmetric InfoNCE step.

    python benchmarks/bench_stage.py --batch 256 --reps 200 --threads 1

Both steps run on the same model, the same batch of encoder features and in
the same process, interleaved (plain, adaptive, plain, ...) so that a busy
machine slows both alike; the figure is the ratio of medians. The adaptive
step is ``StageTrainer.step``: the two directions' gradients from one
``autograd.grad`` each, their norms over the two adapters, and the update
formed from those gradients (no third backward pass). The plain step is one
``backward()`` of (L_a<-b + L_b<-a) / 2 and the same AdamW step.

Two settings: stage 1 (trunk: contrastive loss only) and a growth stage
(distillation against the previous stage's frozen model with replay, and the
EMA prototype), where the plain step gets the same distillation term and EMA.
Wall and CPU time are both printed; CPU time is steadier on a shared machine.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.growth import GrowthConfig, Stage, StageTrainer  # noqa: E402
from common.losses import ema_update  # noqa: E402
from common.losses import symmetric_info_nce  # noqa: E402
from common.modalities import inertial  # noqa: E402
from common.towers import AlignedModel, TowerConfig  # noqa: E402


def _plain_step(trainer: StageTrainer, opt: torch.optim.Optimizer, fa: torch.Tensor, fb: torch.Tensor) -> None:
    a, b = trainer.stage.pair
    z = trainer.model.embed_features({a: fa, b: fb})
    loss = symmetric_info_nce(z[a], z[b], trainer.cfg.temperature)["contrastive_loss"]
    if trainer.use_kd:
        loss = loss + trainer.cfg.kd_weight * trainer._distillation(fa, z[a])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if trainer.ema is not None:
        ema_update(trainer.ema, trainer.model.prototype, trainer.cfg.ema_momentum)


def measure(growing: bool, batch: int, reps: int, warmup: int, seed: int) -> dict:
    torch.manual_seed(seed)
    tower = TowerConfig()
    model = AlignedModel({m: inertial(m) for m in ("gyro", "lin_acc", "gravity")}, tower)
    gen = torch.Generator().manual_seed(seed)
    d = tower.feature_dim
    if growing:
        stage, trunk = Stage("s2", "gyro", "gravity"), ["gyro", "lin_acc"]
        replay = {"lin_acc": torch.randn(1024, d, generator=gen)}
    else:
        stage, trunk, replay = Stage("s1", "gyro", "lin_acc"), [], None
    trainer = StageTrainer(model, stage, GrowthConfig(batch_size=batch), "cpu", trunk=trunk, replay=replay, index=len(trunk) // 2)
    plain_opt = torch.optim.AdamW(trainer.params, lr=trainer.cfg.lr, weight_decay=trainer.cfg.weight_decay, foreach=True)
    fa, fb = torch.randn(batch, d, generator=gen), torch.randn(batch, d, generator=gen)
    steps = {"plain": lambda: _plain_step(trainer, plain_opt, fa, fb), "adaptive": lambda: trainer.step(fa, fb)}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + reps):
        for name, fn in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    trainer.finish()
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    out = {f"{k}_wall_ms": med(v) for k, v in wall.items()} | {f"{k}_cpu_ms": med(v) for k, v in cpu.items()}
    out["ratio_wall"] = out["adaptive_wall_ms"] / out["plain_wall_ms"]
    out["ratio_cpu"] = out["adaptive_cpu_ms"] / out["plain_cpu_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"stage step vs plain symmetric InfoNCE step: batch {args.batch}, {args.reps} interleaved repetitions, "
          f"{args.threads} thread(s), torch {torch.__version__}; medians")
    for growing, label in ((False, "stage 1 (trunk)"), (True, "growth stage (+ distillation, replay, EMA)")):
        r = measure(growing, args.batch, args.reps, args.warmup, args.seed)
        print(f"  {label:<44} plain {r['plain_wall_ms']:6.2f} ms  adaptive {r['adaptive_wall_ms']:6.2f} ms  "
              f"ratio {r['ratio_wall']:.2f}x wall, {r['ratio_cpu']:.2f}x CPU  (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
