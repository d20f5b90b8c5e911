"""The self-trained lower bound against the methods of other 5-seed MMBind runs on the same splits: per-seed test
accuracy, and per-seed paired differences (method minus the self-trained lower bound) with 95 % Student-t intervals.

    PYTHONPATH=. python docs/results/self-trained-lower-bound/pair.py REFERENCE.json RUN.json [RUN.json ...]

REFERENCE.json holds lower_bound and self_trained_lower_bound; each RUN.json (same scenario and seeds) is paired
against it for every method it holds. The lower bound in both must agree (the same code on the same split).
It made docs/results/self-trained-lower-bound/pair.txt.
"""
import json
import sys

from simulations.experiments.common import mean_ci, mean_std


def accuracies(res: dict, method: str) -> list[float]:
    return [s["methods"][method]["subsets"][res["test_modalities"]]["accuracy"] for s in res["per_seed"]]


def main(reference: str, runs: list[str]) -> None:
    R = json.load(open(reference))
    ref = accuracies(R, "self_trained_lower_bound")
    st = [s["methods"]["self_trained_lower_bound"]["validation"] for s in R["per_seed"]]
    print(f"{R['scenario']}: self-trained lower bound ({R['commit'][:7]}) {mean_std(ref)['mean']:.3f} ± {mean_std(ref)['std']:.3f} "
          f"[{', '.join(f'{x:.3f}' for x in ref)}]; chosen: {', '.join(v['stage'] for v in st)}")
    print(f"  pseudo-labels right, round 1: {', '.join(str(v.get('self_train', {}).get('rounds', [{}])[0].get('pseudo_label_accuracy')) for v in st)}")
    print(f"  self-trained - lower bound: {fmt(mean_ci([b - a for a, b in zip(accuracies(R, 'lower_bound'), ref)]))}")
    for path in runs:
        A = json.load(open(path))
        if A["scenario"] != R["scenario"] or [s["subjects"] for s in A["per_seed"]] != [s["subjects"] for s in R["per_seed"]]:
            raise SystemExit(f"{path}: not the reference's scenario and splits")
        if "lower_bound" in A["summary"]["methods"] and accuracies(A, "lower_bound") != accuracies(R, "lower_bound"):
            raise SystemExit(f"{path}: its lower bound differs from the reference's")
        print(f"  {path} ({A['commit'][:7]}, {A['few_label_step']}):")
        for m in A["summary"]["methods"]:
            if m in ("lower_bound", "self_trained_lower_bound"):
                continue
            acc = accuracies(A, m)
            d = mean_ci([a - b for a, b in zip(acc, ref)])
            wins = sum(a > b for a, b in zip(acc, ref))
            print(f"    {m:12s} {mean_std(acc)['mean']:.3f} [{', '.join(f'{x:.3f}' for x in acc)}]  minus self-trained lower bound {fmt(d)} ({wins} of {len(acc)} seeds above)")


def fmt(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
