"""Logistic regression on each channel's mean and log spread, with and without the per-subject reference channels of make_ref.py, over
seed 0's sensor-bind test subjects and five random 6-subject splits. PYTHONPATH=. python docs/results/reference-channels/logistic.py"""
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import accuracy_score
from common.data import load_dataset
ds = load_dataset("hapt")
subj = ds.subject
def stats(X):
    return np.concatenate([X.mean(1), np.log(X.std(1) + 1e-4)], 1)
def centred_signal(m):
    x = ds.X[m].copy()
    for s in np.unique(subj):
        k = subj == s
        x[k] -= ds.X[m][k].mean((0, 1))
    return x
rng = np.random.default_rng(0)
splits = [[2, 10, 16, 23, 25, 28]] + [sorted(int(v) for v in rng.choice(np.unique(subj), 6, replace=False)) for _ in range(5)]
for mods in (["gravity", "lin_acc"], ["acc"], ["gravity"], ["acc", "gyro"]):
    raw = np.concatenate([stats(ds.X[m]) for m in mods], 1)
    sig = np.concatenate([stats(np.concatenate([ds.X[m], centred_signal(m)], 2)) for m in mods], 1)
    gains = []
    for test in splits:
        te = np.isin(subj, test); tr = ~te
        accs = []
        for X in (raw, sig):
            sc = StandardScaler().fit(X[tr])
            p = LogisticRegression(max_iter=3000).fit(sc.transform(X[tr]), ds.y[tr]).predict(sc.transform(X[te]))
            accs.append(accuracy_score(ds.y[te], p))
        gains.append(accs[1] - accs[0])
        print("+".join(mods), test, f"raw {accs[0]:.3f} signal-centred copy {accs[1]:.3f}")
    print("  mean gain", np.mean(gains).round(3), "min", np.min(gains).round(3))
