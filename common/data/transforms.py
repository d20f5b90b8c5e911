"""Virtual sensor streams derived from an accelerometer, as phones expose them."""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, filtfilt, lfilter, lfilter_zi

from common.data.dataset import WindowDataset

GRAVITY_CUTOFF_HZ = 0.3  # the corner UCI HAR/HAPT use to split body and gravity acceleration


def gravity_of(acc: np.ndarray, rate_hz: float, cutoff_hz: float = GRAVITY_CUTOFF_HZ, axis: int = -2) -> np.ndarray:
    """Low-pass (3rd-order Butterworth, zero phase) of acceleration along the time axis."""
    if rate_hz <= 2 * cutoff_hz:
        raise ValueError(f"sampling rate {rate_hz} Hz is too low for a {cutoff_hz} Hz gravity filter")
    b, a = butter(3, cutoff_hz / (rate_hz / 2.0), btype="low")
    return filtfilt(b, a, acc, axis=axis).astype(np.float32)


def causal_gravity(stream: np.ndarray, rate_hz: float, cutoff_hz: float = GRAVITY_CUTOFF_HZ) -> np.ndarray:
    """Causal low-pass (3rd-order Butterworth) of a continuous (time, channels) stream, as a phone's sensor fusion runs.

    The filter starts settled on the first sample, so the stream's start shows no transient.
    """
    if rate_hz <= 2 * cutoff_hz:
        raise ValueError(f"sampling rate {rate_hz} Hz is too low for a {cutoff_hz} Hz gravity filter")
    b, a = butter(3, cutoff_hz / (rate_hz / 2.0), btype="low")
    zi = lfilter_zi(b, a)[:, None] * stream[:1]
    out, _ = lfilter(b, a, stream, axis=0, zi=zi)
    return out.astype(np.float32)


def gravity_over_recordings(windows: np.ndarray, recording: np.ndarray, start: np.ndarray, rate_hz: float) -> np.ndarray:
    """Gravity of each window, filtered over its whole recording rather than inside the window.

    Each recording's stream is stitched back from its (possibly overlapping)
    windows; samples no window covers are linearly interpolated, then the
    causal filter runs over the stream and the windows are cut out again.
    """
    n, t, c = windows.shape
    out = np.empty_like(windows)
    for rec in np.unique(recording):
        rows = np.flatnonzero(recording == rec)
        length = int(start[rows].max()) + t
        stream = np.zeros((length, c), dtype=np.float64)
        covered = np.zeros(length, dtype=bool)
        for r in rows:
            stream[start[r] : start[r] + t] = windows[r]
            covered[start[r] : start[r] + t] = True
        if not covered.all():
            idx = np.arange(length)
            for k in range(c):
                stream[~covered, k] = np.interp(idx[~covered], idx[covered], stream[covered, k])
        grav = causal_gravity(stream, rate_hz)
        for r in rows:
            out[r] = grav[start[r] : start[r] + t]
    return out


def add_virtual_streams(ds: WindowDataset, source: str = "acc") -> WindowDataset:
    """Add ``gravity`` (low-pass of ``source``) and ``lin_acc`` (source minus gravity).

    Where the dataset declares its windows contiguous (``recording`` and
    ``start``) gravity is filtered causally over each recording; otherwise
    (zero phase) inside each window. A dataset without ``source``, or without
    its rate, is returned unchanged; streams it already has are kept as they are.
    """
    if source not in ds.X or source not in ds.rates:
        return ds
    acc = ds.X[source]
    rate = ds.rates[source]
    X = dict(ds.X)
    rates = dict(ds.rates)
    grav = gravity_over_recordings(acc, ds.recording, ds.start, rate) if ds.recording is not None else gravity_of(acc, rate)
    if "gravity" not in X:
        X["gravity"], rates["gravity"] = grav, rate
    if "lin_acc" not in X:
        X["lin_acc"], rates["lin_acc"] = (acc - grav).astype(np.float32), rate
    return WindowDataset(X=X, y=ds.y, subject=ds.subject, label_names=ds.label_names, rates=rates, name=ds.name, recording=ds.recording, start=ds.start)
