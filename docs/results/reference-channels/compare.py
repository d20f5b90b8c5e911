"""Paired comparison of the reference-channel runs against the default 5-seed runs (same splits). PYTHONPATH=. python docs/results/reference-channels/compare.py sensor-bind label-bind"""
import json, sys
from simulations.experiments.common import mean_ci, mean_std
pairs0 = [("sensor-bind", "docs/results/mmbind-sensor-bind-self-train/results.json", "docs/results/reference-channels/sensor-bind/results.json"),
         ("label-bind", "docs/results/mmbind-label-bind-self-train/results.json", "docs/results/reference-channels/label-bind/results.json")]
pairs = [p for p in pairs0 if p[0] in sys.argv[1:]]
for name, a, b in pairs:
    A, B = json.load(open(a)), json.load(open(b))
    full = A["test_modalities"]
    assert [s["subjects"] for s in A["per_seed"]] == [s["subjects"] for s in B["per_seed"]], "different splits"
    print(name, "baseline", A["commit"][:7], "reference channels", B["commit"][:7], B["dataset_sha256"][:12])
    for m in ("lower_bound", "incomplete", "mmbind"):
        ta = [s["methods"][m]["subsets"][full]["accuracy"] for s in A["per_seed"]]
        tb = [s["methods"][m]["subsets"][full]["accuracy"] for s in B["per_seed"]]
        va = [s["methods"][m]["validation"]["val_macro_f1"] for s in A["per_seed"]]
        vb = [s["methods"][m]["validation"]["val_macro_f1"] for s in B["per_seed"]]
        d = mean_ci([y - x for x, y in zip(ta, tb)]); dv = mean_ci([y - x for x, y in zip(va, vb)])
        f = lambda v: ", ".join(f"{x:.3f}" for x in v)
        print(f"  {m:12s} test {mean_std(ta)['mean']:.3f} -> {mean_std(tb)['mean']:.3f} ± {mean_std(tb)['std']:.3f} [{f(tb)}]  paired {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
              f" | val {mean_std(va)['mean']:.3f} -> {mean_std(vb)['mean']:.3f}, paired {dv['mean']:+.3f} [{dv['ci_low']:+.3f}, {dv['ci_high']:+.3f}]")
