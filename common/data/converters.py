"""Converters from published dataset formats to the generic ``.npz`` (see ``dataset.py``).

- UTD-MHAD: ``a<action>_s<subject>_t<trial>_inertial.mat`` (variable ``d_iner``,
  T x 6: acc in g, gyro in deg/s, 50 Hz) and ``..._skeleton.mat`` (``d_skel``,
  20 joints x 3 x T, 30 Hz). Each clip becomes one window, resampled to a fixed
  length per modality.
- PAMAP2: ``subject<id>.dat`` (space-separated, 100 Hz: timestamp, activity id,
  heart rate, then hand, chest and ankle IMUs of 17 columns each). Resampled to
  50 Hz and cut into windows where one activity covers the window; activity 0
  (transient) and windows with missing samples are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.signal import resample

from common.data.dataset import WindowDataset

UTD_ACTIONS = [
    "swipe left", "swipe right", "wave", "clap", "throw", "arm cross", "basketball shoot", "draw x",
    "draw circle clockwise", "draw circle counter clockwise", "draw triangle", "bowling", "boxing",
    "baseball swing", "tennis swing", "arm curl", "tennis serve", "push", "knock", "catch",
    "pickup and throw", "jog", "walk", "sit to stand", "stand to sit", "lunge", "squat",
]
_UTD_NAME = re.compile(r"a(\d+)_s(\d+)_t(\d+)_(inertial|skeleton)\.mat$")


def _fixed_length(x: np.ndarray, length: int) -> np.ndarray:
    """Resample (T, C) to (length, C) along time (FFT resampling, as clip lengths vary)."""
    if len(x) < 2:
        raise ValueError(f"a clip of {len(x)} samples is too short to resample")
    return resample(x, length, axis=0).astype(np.float32)


def convert_utd_mhad(folder: Path, inertial_len: int = 128, skeleton_len: int = 64) -> WindowDataset:
    folder = Path(folder)
    clips: dict[tuple[int, int, int], dict[str, Path]] = {}
    for path in sorted(folder.rglob("*.mat")):
        m = _UTD_NAME.search(path.name)
        if m:
            a, s, t, kind = int(m[1]), int(m[2]), int(m[3]), m[4]
            clips.setdefault((a, s, t), {})[kind] = path
    if not clips:
        raise ValueError(f"no UTD-MHAD files (a<A>_s<S>_t<T>_inertial.mat / _skeleton.mat) under {folder}")
    kinds = {k for c in clips.values() for k in c}
    complete = {key: c for key, c in clips.items() if set(c) == kinds}
    X: dict[str, list[np.ndarray]] = {}
    ys, subs = [], []
    for (a, s, _t), files in sorted(complete.items()):
        if "inertial" in files:
            d = loadmat(files["inertial"])
            if "d_iner" not in d:
                raise ValueError(f"{files['inertial']}: no variable 'd_iner'")
            iner = np.asarray(d["d_iner"], dtype=np.float64)
            if iner.ndim != 2 or iner.shape[1] != 6:
                raise ValueError(f"{files['inertial']}: d_iner must be T x 6, got {iner.shape}")
            X.setdefault("acc", []).append(_fixed_length(iner[:, :3], inertial_len))
            X.setdefault("gyro", []).append(_fixed_length(np.deg2rad(iner[:, 3:]), inertial_len))
        if "skeleton" in files:
            d = loadmat(files["skeleton"])
            if "d_skel" not in d:
                raise ValueError(f"{files['skeleton']}: no variable 'd_skel'")
            sk = np.asarray(d["d_skel"], dtype=np.float64)
            if sk.ndim != 3 or sk.shape[1] != 3:
                raise ValueError(f"{files['skeleton']}: d_skel must be joints x 3 x T, got {sk.shape}")
            frames = sk.transpose(2, 0, 1).reshape(sk.shape[2], -1)  # T x (joints*3)
            X.setdefault("skeleton", []).append(_fixed_length(frames, skeleton_len))
        ys.append(a - 1)
        subs.append(s)
    rates = {}
    if "acc" in X:
        rates["acc"] = rates["gyro"] = 50.0
    if "skeleton" in X:
        rates["skeleton"] = 30.0
    return WindowDataset(
        X={m: np.stack(v) for m, v in X.items()}, y=np.array(ys), subject=np.array(subs),
        label_names=UTD_ACTIONS[: max(27, max(ys) + 1)], rates=rates, name="utd-mhad",
    )


PAMAP2_ACTIVITIES = {
    1: "lying", 2: "sitting", 3: "standing", 4: "walking", 5: "running", 6: "cycling", 7: "nordic walking",
    9: "watching TV", 10: "computer work", 11: "car driving", 12: "ascending stairs", 13: "descending stairs",
    16: "vacuum cleaning", 17: "ironing", 18: "folding laundry", 19: "house cleaning", 20: "playing soccer", 24: "rope jumping",
}
# column offsets of each IMU block (after timestamp, activity, heart rate); inside a block:
# temperature, acc ±16g (3), acc ±6g (3), gyro (3), magnetometer (3), orientation (4)
_PAMAP2_IMUS = {"hand": 3, "chest": 20, "ankle": 37}
_PAMAP2_G = 9.80665


def convert_pamap2(folder: Path, window: int = 128, step: int = 64) -> WindowDataset:
    folder = Path(folder)
    files = sorted(folder.rglob("subject*.dat")) if folder.is_dir() else [folder]
    if not files:
        raise ValueError(f"no PAMAP2 files (subject<id>.dat) under {folder}")
    ids = sorted(PAMAP2_ACTIVITIES)
    to_label = {a: i for i, a in enumerate(ids)}
    X: dict[str, list[np.ndarray]] = {}
    ys, subs = [], []
    for path in files:
        m = re.search(r"subject(\d+)", path.name)
        if not m:
            raise ValueError(f"{path}: cannot tell the subject from the file name")
        data = np.loadtxt(path, dtype=np.float64, ndmin=2)
        if data.shape[1] != 54:
            raise ValueError(f"{path}: PAMAP2 rows have 54 columns, this file has {data.shape[1]}")
        data = data[::2]  # 100 Hz -> 50 Hz
        act = data[:, 1].astype(int)
        streams = {}
        for imu, off in _PAMAP2_IMUS.items():
            prefix = "" if imu == "chest" else f"{imu}_"
            streams[f"{prefix}acc"] = data[:, off + 1 : off + 4] / _PAMAP2_G
            streams[f"{prefix}gyro"] = data[:, off + 7 : off + 10]
        starts = np.arange(0, len(act) - window + 1, step)
        for s0 in starts:
            a = act[s0 : s0 + window]
            if a[0] == 0 or a[0] not in to_label or (a != a[0]).any():
                continue
            chunk = {k: v[s0 : s0 + window] for k, v in streams.items()}
            if not all(np.isfinite(c).all() for c in chunk.values()):
                continue
            for k, c in chunk.items():
                X.setdefault(k, []).append(c.astype(np.float32))
            ys.append(to_label[a[0]])
            subs.append(int(m[1]))
    if not ys:
        raise ValueError(f"no complete labelled windows in {folder}")
    return WindowDataset(
        X={k: np.stack(v) for k, v in X.items()}, y=np.array(ys), subject=np.array(subs),
        label_names=[PAMAP2_ACTIVITIES[a] for a in ids], rates={k: 50.0 for k in X}, name="pamap2",
    )


CONVERTERS = {"utd-mhad": convert_utd_mhad, "pamap2": convert_pamap2}


def convert(fmt: str, source: Path, output: Path) -> Path:
    """Convert ``source`` in a published format to the generic ``.npz`` at ``output``."""
    try:
        fn = CONVERTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(CONVERTERS)}") from None
    if Path(output).suffix != ".npz":
        raise ValueError(f"output must be a .npz path, got {output}")
    return fn(Path(source)).save(output)
