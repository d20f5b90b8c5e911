"""How sensor-bind's self-training threshold and rounds were chosen on validation (docs/results.md, "Which objective and head won").

The thresholds were compared first with variants (off, 0.9, 0.8, 0.95) at one round; this is the rounds comparison."""
import copy
import dataclasses
import json
import sys
import time

import numpy as np
import torch

sys.path.insert(0, ".")  # run from the repository root
torch.set_num_threads(1)
from simulations.experiments.mmbind import MMBindSettings, prepare, natural_samples, pseudo_pairs, eval_set, _fresh
from simulations.experiments.common import seed_everything
from common.data import load_dataset
from common.data.scenarios import Scenario
from common.evaluate import fit_head, evaluate_subsets
from common.mmbind import align
from common.samples import SampleSet

dev = torch.device("cpu")
ds = load_dataset("hapt")
sc = Scenario.load("sensor-bind")
st = MMBindSettings(); st = dataclasses.replace(st, pretrain=dataclasses.replace(st.pretrain, objective=sc.objective))
out = {}
variants = [("off", 0, 0.8, 1), ("r1", 300, 0.8, 1), ("r2", 300, 0.8, 2), ("r3", 300, 0.8, 3)]
for seed in map(int, sys.argv[1].split(",")):
    seed_everything(seed); t0 = time.time()
    sd, enc = prepare(ds, sc, seed, st, dev)
    groups = [p.group.name for p in sd.split.by_role("train")]
    test, val = eval_set(sd, ds, "test"), eval_set(sd, ds, "validation")
    natural = natural_samples(sd, groups)
    labelled = natural.take(np.flatnonzero(natural.label >= 0))
    pseudo, info, _ = pseudo_pairs(sd, sc, ds, st, seed, dev)
    full = "+".join(sorted(test.modalities))
    res = {}
    for method, train in (("incomplete", natural), ("mmbind", SampleSet.concat([natural, pseudo]))):
        model = _fresh(enc, ds, sc.modalities, st, seed)
        align(model, train, copy.copy(st.align), dev, seed)
        for name, steps, thr, rounds in variants:
            cfg = dataclasses.replace(st.head, self_train_steps=steps, self_train_threshold=thr, self_train_rounds=rounds)
            m, h, choice = fit_head(model, labelled, val, ds.n_classes, cfg, dev, seed=seed, features=True, unlabelled=train)
            r = evaluate_subsets(m, h, test, dev, features=True)[full]
            res[f"{method}/{name}"] = {"val": choice["val_macro_f1"], "stage": choice["stage"], "acc": r["accuracy"], "f1": r["macro_f1"], "st": choice.get("self_train")}
            print(seed, method, name, res[f"{method}/{name}"], flush=True)
    out[seed] = res
    print("seed", seed, "took", time.time() - t0, flush=True)
    json.dump(out, open(f"self-train-choice-{sys.argv[1]}.json", "w"), indent=1)
