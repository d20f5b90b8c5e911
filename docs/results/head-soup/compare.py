"""Paired comparison of the head-soup runs against the default 5-seed runs (same code path; the soup only averages checkpoints). PYTHONPATH=. python docs/results/head-soup/compare.py"""
import json, sys
from simulations.experiments.common import mean_ci, mean_std
R = sys.argv[1] if len(sys.argv) > 1 else "docs/results/head-soup"
pairs = [("sensor-bind", "docs/results/mmbind-sensor-bind-self-train/results.json", f"{R}/sensor-bind/results.json"),
         ("label-bind", "docs/results/mmbind-label-bind-self-train/results.json", f"{R}/label-bind/results.json")]
for name, a, b in pairs:
    A, B = json.load(open(a)), json.load(open(b))
    full = A["test_modalities"]
    assert [s["subjects"] for s in A["per_seed"]] == [s["subjects"] for s in B["per_seed"]], "different splits"
    print(name, "default", A["commit"][:7], "soup of 5", B["commit"][:7])
    for m in ("lower_bound", "incomplete", "mmbind"):
        ta = [s["methods"][m]["subsets"][full]["accuracy"] for s in A["per_seed"]]
        tb = [s["methods"][m]["subsets"][full]["accuracy"] for s in B["per_seed"]]
        va = [s["methods"][m]["validation"]["val_macro_f1"] for s in A["per_seed"]]
        vb = [s["methods"][m]["validation"]["val_macro_f1"] for s in B["per_seed"]]
        st = [s["methods"][m]["validation"]["stage"] for s in B["per_seed"]]
        d = mean_ci([y - x for x, y in zip(ta, tb)]); dv = mean_ci([y - x for x, y in zip(va, vb)])
        f = lambda v: ", ".join(f"{x:.3f}" for x in v)
        print(f"  {m:12s} test {mean_std(ta)['mean']:.3f} -> {mean_std(tb)['mean']:.3f} [{f(tb)}] paired {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
              f" | val {mean_std(va)['mean']:.3f} -> {mean_std(vb)['mean']:.3f}, paired {dv['mean']:+.3f} | chosen: {', '.join(st)}")
