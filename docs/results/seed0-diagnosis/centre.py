"""Does per-subject centring of simple window statistics help the sit/stand confusion on held-out subjects?

Logistic regression on each channel's mean and log spread; the first split is seed 0's sensor-bind test subjects, the
other two are drawn at random. Run from the project root: PYTHONPATH=. python docs/results/seed0-diagnosis/centre.py
"""
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import accuracy_score, f1_score
from common.data import load_dataset
ds = load_dataset("hapt")
print(ds.label_names, {m: ds.X[m].shape for m in ds.X})
def feats(mods):
    out = []
    for m in mods:
        x = ds.X[m]
        out += [x.mean(1), np.log(x.std(1) + 1e-4)]
    return np.concatenate(out, 1)
subj = ds.subject
test_sets = {0: [2, 10, 16, 23, 25, 28]}
rng = np.random.default_rng(0)
for mods in (["gravity", "lin_acc"], ["acc"], ["gravity"]):
    F = feats(mods)
    Fc = F.copy()
    for s in np.unique(subj):
        k = subj == s
        Fc[k] -= F[k].mean(0)
    Fm = F.copy()  # centring by the median instead
    for s in np.unique(subj):
        k = subj == s
        Fm[k] -= np.median(F[k], 0)
    for trial in range(3):
        test = set(rng.choice(np.unique(subj), 6, replace=False)) if trial else set(test_sets[0])
        te = np.isin(subj, list(test)); tr = ~te
        row = []
        for name, X in (("raw", F), ("centred", Fc), ("median", Fm), ("both", np.concatenate([F, Fc], 1))):
            sc = StandardScaler().fit(X[tr])
            clf = LogisticRegression(max_iter=3000, C=1.0).fit(sc.transform(X[tr]), ds.y[tr])
            p = clf.predict(sc.transform(X[te]))
            s10 = te & (subj == 10)
            row.append(f"{name}: acc {accuracy_score(ds.y[te], p):.3f} F1 {f1_score(ds.y[te], p, average='macro'):.3f}" + (f" s10 {accuracy_score(ds.y[s10], clf.predict(sc.transform(X[s10]))):.3f}" if s10.any() else ""))
        print("+".join(mods), sorted(int(s) for s in test), " | ".join(row))
