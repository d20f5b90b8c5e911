"""The generic windowed dataset and its ``.npz`` file format.

One ``.npz`` file holds:

- ``X_<modality>``: float32 array (windows x time x channels), one per modality,
  all with the same number of windows (row i of every array is the same span);
- ``y``: int64 labels (0-based, -1 = unlabelled), one per window;
- ``subject``: int64 subject id per window;
- optional ``label_names``: array of str, indexed by label;
- optional ``rate_<modality>``: scalar float, the sampling rate in Hz;
- optional ``recording`` and ``start``: int64 per window, the continuous
  recording a window was cut from and the sample it starts at. A data set that
  gives them declares its windows contiguous: derived streams (gravity) are
  then filtered over the whole recording, as a phone does, not per window.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.modalities import ModalityRegistry, ModalitySpec


@dataclass
class WindowDataset:
    """Aligned windows of several modalities with labels and subjects."""

    X: dict[str, np.ndarray]
    y: np.ndarray
    subject: np.ndarray
    label_names: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    name: str = "dataset"
    recording: np.ndarray | None = None  # per window: which continuous recording it comes from
    start: np.ndarray | None = None  # per window: its first sample's index in that recording

    def __post_init__(self) -> None:
        self.y = _integers(self.y, "y", self.name)
        self.subject = _integers(self.subject, "subject", self.name)
        if (self.recording is None) != (self.start is None):
            raise ValueError(f"{self.name}: 'recording' and 'start' come together (a window's recording and first sample)")
        if self.recording is not None:
            self.recording = _integers(self.recording, "recording", self.name)
            self.start = _integers(self.start, "start", self.name)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first thing that is wrong."""
        if self.y.ndim != 1:
            raise ValueError(f"{self.name}: y must be 1-D, got shape {self.y.shape}")
        n = len(self.y)
        if self.subject.shape != (n,):
            raise ValueError(f"{self.name}: subject has shape {self.subject.shape}, expected ({n},)")
        if not self.X:
            raise ValueError(f"{self.name}: no modality arrays (X_<modality>)")
        for m, x in self.X.items():
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise ValueError(f"{self.name}: X_{m} must be a float32 numpy array, got {getattr(x, 'dtype', type(x))}")
            if x.ndim != 3:
                raise ValueError(f"{self.name}: X_{m} must be windows x time x channels, got shape {x.shape}")
            if x.shape[0] != n:
                raise ValueError(f"{self.name}: X_{m} has {x.shape[0]} windows but y has {n}")
            bad = ~np.isfinite(x).all(axis=(1, 2))
            if bad.any():
                raise ValueError(f"{self.name}: X_{m} has NaN or Inf in {int(bad.sum())} windows (first: {int(np.argmax(bad))})")
        if self.recording is not None:
            for what, a in (("recording", self.recording), ("start", self.start)):
                if a.shape != (n,):
                    raise ValueError(f"{self.name}: {what} has shape {a.shape}, expected ({n},)")
            if n and self.start.min() < 0:
                raise ValueError(f"{self.name}: start must be >= 0, got {int(self.start.min())}")
        if n and self.y.min() < -1:
            raise ValueError(f"{self.name}: labels must be >= 0 (-1 = unlabelled), got {int(self.y.min())}")
        for m, r in self.rates.items():
            if not (math.isfinite(r) and 0 < r <= 1e5):
                raise ValueError(f"{self.name}: rate_{m} must be a positive number of Hz (at most 1e5), got {r}")
        if self.label_names and n and self.y.max() >= len(self.label_names):
            raise ValueError(f"{self.name}: label {int(self.y.max())} has no name ({len(self.label_names)} names)")

    @property
    def modalities(self) -> list[str]:
        return sorted(self.X)

    def __len__(self) -> int:
        return len(self.y)

    def spec(self, modality: str) -> ModalitySpec:
        x = self.require(modality)
        return ModalitySpec(modality, channels=x.shape[2], rate_hz=self.rates.get(modality, 50.0), window=x.shape[1])

    def registry(self) -> ModalityRegistry:
        reg = ModalityRegistry()
        for m in self.X:
            reg.register(self.spec(m))
        return reg

    def require(self, modality: str) -> np.ndarray:
        try:
            return self.X[modality]
        except KeyError:
            raise KeyError(f"{self.name} has no modality {modality!r}; it has: {', '.join(self.modalities)}") from None

    def subset(self, rows: np.ndarray, modalities: list[str] | None = None) -> WindowDataset:
        mods = self.modalities if modalities is None else modalities
        return WindowDataset(
            X={m: self.require(m)[rows] for m in mods},
            y=self.y[rows],
            subject=self.subject[rows],
            label_names=list(self.label_names),
            rates={m: self.rates[m] for m in mods if m in self.rates},
            name=self.name,
            recording=None if self.recording is None else self.recording[rows],
            start=None if self.start is None else self.start[rows],
        )

    @property
    def subjects(self) -> np.ndarray:
        return np.unique(self.subject)

    @property
    def n_classes(self) -> int:
        return len(self.label_names) if self.label_names else int(self.y.max()) + 1

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays: dict[str, np.ndarray] = {f"X_{m}": x for m, x in self.X.items()}
        arrays["y"] = self.y
        arrays["subject"] = self.subject
        if self.label_names:
            arrays["label_names"] = np.array(self.label_names, dtype=str)
        for m, r in self.rates.items():
            arrays[f"rate_{m}"] = np.array(float(r))
        if self.recording is not None:
            arrays["recording"], arrays["start"] = self.recording, self.start
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> WindowDataset:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"dataset file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as f:
                keys = set(f.files)
                missing = {"y", "subject"} - keys
                if missing:
                    raise ValueError(f"{path}: missing array(s) {sorted(missing)}; see README 'Dataset format'")
                X = {k[2:]: f[k].astype(np.float32, copy=False) for k in keys if k.startswith("X_")}
                rates = {k[5:]: float(f[k]) for k in keys if k.startswith("rate_")}
                names = [str(s) for s in f["label_names"]] if "label_names" in keys else []
                extra = {k: f[k] for k in ("recording", "start") if k in keys}
                y, subject = f["y"], f["subject"]
        except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
            if isinstance(e, ValueError) and str(e).startswith(str(path)):
                raise
            raise ValueError(f"{path}: not a dataset in edgebind's .npz format ({type(e).__name__}: {e}); see README 'Dataset format'") from None
        return cls(X=X, y=y, subject=subject, label_names=names, rates=rates, name=path.stem, **extra)


def _integers(a, what: str, name: str) -> np.ndarray:
    """``a`` as int64, refusing what is not whole numbers (NaN or 1e30 would otherwise become INT64_MIN)."""
    arr = np.asarray(a)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "f" or arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all() and np.abs(arr).max() < 2**62):
        raise ValueError(f"{name}: {what} must hold integers, got dtype {arr.dtype}" + (" with non-integer or out-of-range values" if arr.dtype.kind == "f" else ""))
    return arr.astype(np.int64)
