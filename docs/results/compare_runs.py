"""Paired comparison of a variant's 5-seed MMBind runs against the default runs on the same splits, per method:
test accuracy and validation macro-F1, with 95 % Student-t intervals of the per-seed differences, and the stage
validation chose in each variant run.

    PYTHONPATH=. python docs/results/compare_runs.py NAME DEFAULT.json VARIANT.json [NAME DEFAULT.json VARIANT.json ...]

It made docs/results/reference-channels/compare.txt and docs/results/head-soup/compare.txt, each against
docs/results/mmbind-{sensor,label}-bind-self-train/results.json.
"""
import json
import sys

from simulations.experiments.common import mean_ci, mean_std


def interval(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def compare(name: str, default: str, variant: str) -> None:
    A, B = json.load(open(default)), json.load(open(variant))
    full = A["test_modalities"]
    if [s["subjects"] for s in A["per_seed"]] != [s["subjects"] for s in B["per_seed"]]:
        raise SystemExit(f"{name}: the two runs do not share their splits")
    print(name, "default", A["commit"][:7], "variant", B["commit"][:7], B["dataset"], B["dataset_sha256"][:12])
    for m in ("lower_bound", "incomplete", "mmbind"):
        test = [[s["methods"][m]["subsets"][full]["accuracy"] for s in R["per_seed"]] for R in (A, B)]
        val = [[s["methods"][m]["validation"]["val_macro_f1"] for s in R["per_seed"]] for R in (A, B)]
        chosen = [s["methods"][m]["validation"]["stage"] for s in B["per_seed"]]
        paired = lambda v: mean_ci([y - x for x, y in zip(*v)])  # noqa: E731
        print(f"  {m:12s} test {mean_std(test[0])['mean']:.3f} -> {mean_std(test[1])['mean']:.3f} ± {mean_std(test[1])['std']:.3f} "
              f"[{', '.join(f'{x:.3f}' for x in test[1])}] paired {interval(paired(test))} | val {mean_std(val[0])['mean']:.3f} -> "
              f"{mean_std(val[1])['mean']:.3f}, paired {interval(paired(val))} | chosen: {', '.join(chosen)}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 3:
        raise SystemExit(__doc__)
    for i in range(0, len(args), 3):
        compare(*args[i : i + 3])
