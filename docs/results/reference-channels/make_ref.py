"""HAPT with a per-subject reference: each stream's channels, then the same channels minus the subject's mean over all its windows."""
import sys
import numpy as np
from common.data import load_dataset
from common.data.dataset import WindowDataset
ds = load_dataset("hapt")
X = {}
for m, x in ds.X.items():
    ref = np.zeros_like(x)
    for s in np.unique(ds.subject):
        k = ds.subject == s
        ref[k] = x[k].mean((0, 1))
    X[m] = np.concatenate([x, x - ref], 2).astype(np.float32)
out = WindowDataset(X=X, y=ds.y, subject=ds.subject, label_names=ds.label_names, rates=dict(ds.rates), name="hapt-ref")
print(out.save(sys.argv[1]), {m: v.shape for m, v in X.items()})
