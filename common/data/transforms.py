"""Virtual sensor streams derived from an accelerometer, as phones expose them."""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, filtfilt

from common.data.dataset import WindowDataset

GRAVITY_CUTOFF_HZ = 0.3  # the corner UCI HAR/HAPT use to split body and gravity acceleration


def gravity_of(acc: np.ndarray, rate_hz: float, cutoff_hz: float = GRAVITY_CUTOFF_HZ, axis: int = -2) -> np.ndarray:
    """Low-pass (3rd-order Butterworth, zero phase) of acceleration along the time axis."""
    if rate_hz <= 2 * cutoff_hz:
        raise ValueError(f"sampling rate {rate_hz} Hz is too low for a {cutoff_hz} Hz gravity filter")
    b, a = butter(3, cutoff_hz / (rate_hz / 2.0), btype="low")
    return filtfilt(b, a, acc, axis=axis).astype(np.float32)


def add_virtual_streams(ds: WindowDataset, source: str = "acc") -> WindowDataset:
    """Add ``gravity`` (low-pass of ``source``) and ``lin_acc`` (source minus gravity).

    A dataset without ``source``, or without its rate, is returned unchanged;
    streams the dataset already has are kept as they are.
    """
    if source not in ds.X or source not in ds.rates:
        return ds
    acc = ds.X[source]
    rate = ds.rates[source]
    X = dict(ds.X)
    rates = dict(ds.rates)
    grav = gravity_of(acc, rate)
    if "gravity" not in X:
        X["gravity"], rates["gravity"] = grav, rate
    if "lin_acc" not in X:
        X["lin_acc"], rates["lin_acc"] = (acc - grav).astype(np.float32), rate
    return WindowDataset(X=X, y=ds.y, subject=ds.subject, label_names=ds.label_names, rates=rates, name=ds.name)
