"""Seed-0 sensor-bind diagnosis: per test subject accuracy and confusion of MMBind (frozen) and the lower bound."""
import json, sys
import numpy as np, torch
from simulations.experiments import mmbind as M
from common.evaluate import predict_proba
from common.data import load_dataset
from common.data.scenarios import Scenario
seed = int(sys.argv[1]); scen = sys.argv[2] if len(sys.argv) > 2 else "sensor-bind"
methods = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("lower_bound", "mmbind")
ds = load_dataset("hapt"); sc = Scenario.load(scen)
st = M.MMBindSettings()
from dataclasses import replace
st = replace(st, pretrain=replace(st.pretrain, objective=sc.objective or st.pretrain.objective))
rec = []
orig = M.evaluate_subsets
def wrap(m, head, t, device, features=False):
    rec.append((m, head, t, features)); return orig(m, head, t, device, features=features)
M.evaluate_subsets = wrap
captured = {}
orig_prepare = M.prepare
def prep(*a, **kw):
    sd, enc = orig_prepare(*a, **kw); captured["sd"] = sd; return sd, enc
M.prepare = prep
torch.set_num_threads(1)
out = M.run_seed(ds, sc, seed, st, torch.device("cpu"), methods)
sd = captured["sd"]
(part,) = sd.split.by_role("test")
rows = sd.rows[part.group.name]
subj = ds.subject[rows]
res = {}
for (m, head, t, features), name in zip(rec, [k for k in out["methods"]]):
    p = predict_proba(m, head, t, torch.device("cpu"), features=features).argmax(1)
    y = t.label
    conf = np.zeros((ds.n_classes, ds.n_classes), int)
    np.add.at(conf, (y, p), 1)
    per = {int(s): round(float((p[subj == s] == y[subj == s]).mean()), 3) for s in np.unique(subj)}
    res[name] = {"acc": float((p == y).mean()), "per_subject": per, "confusion": conf.tolist()}
    print(name, res[name]["acc"], per); print(conf)
json.dump(res, open(f"/tmp/diag/{scen}-{seed}.json", "w"))
