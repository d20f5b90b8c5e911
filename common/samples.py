"""Incomplete multimodal samples: each sample holds some modalities, a weight and maybe a label.

Windows are kept once per modality (``sources``) and samples point into them
(``index``, -1 where the modality is absent), so a window bound into many
pseudo-pairs is stored once and an absent modality is never materialised.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # modality -> windows of the samples that have it
    masks: dict[str, torch.Tensor]  # modality -> bool per sample of the batch
    weight: torch.Tensor
    label: torch.Tensor
    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> window key of each present window

    def __len__(self) -> int:
        return len(self.weight)


@dataclass
class SampleSet:
    sources: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    weight: np.ndarray
    label: np.ndarray
    kind: np.ndarray = field(default=None)  # 0 = natural sample, 1 = pseudo-pair
    keys: dict[str, np.ndarray] = field(default=None)  # modality -> one key per source window (window_keys)

    def __post_init__(self) -> None:
        n = len(self.weight)
        self.keys = {m: window_keys(x) for m, x in self.sources.items()} if self.keys is None else self.keys
        for m, x in self.sources.items():
            if m not in self.keys or self.keys[m].shape != (len(x),):
                raise ValueError(f"SampleSet: {m!r} needs one window key per source window ({len(x)})")
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.label = np.asarray(self.label, dtype=np.int64)
        if self.kind is None:
            self.kind = np.zeros(n, dtype=np.int8)
        if self.label.shape != (n,):
            raise ValueError(f"SampleSet: {len(self.label)} labels for {n} samples")
        if not np.isfinite(self.weight).all() or (self.weight < 0).any() or (self.weight > 1).any():
            raise ValueError("SampleSet: weights must be finite and in [0, 1]")
        for m, idx in self.index.items():
            if m not in self.sources:
                raise ValueError(f"SampleSet: index for {m!r} but no source windows")
            if idx.shape != (n,):
                raise ValueError(f"SampleSet: index of {m!r} has shape {idx.shape}, expected ({n},)")
            if len(idx) and idx.max() >= len(self.sources[m]):
                raise ValueError(f"SampleSet: index of {m!r} points past its {len(self.sources[m])} windows")
        present = np.stack([idx >= 0 for idx in self.index.values()]).any(0) if self.index else np.zeros(n, bool)
        if n and not present.all():
            raise ValueError(f"SampleSet: {int((~present).sum())} samples hold no modality")

    def __len__(self) -> int:
        return len(self.weight)

    @property
    def modalities(self) -> list[str]:
        return sorted(self.index)

    @classmethod
    def natural(cls, X: dict[str, np.ndarray], label: np.ndarray | None = None, weight: float = 1.0) -> SampleSet:
        """Real samples where every given modality is present for every row."""
        n = len(next(iter(X.values())))
        lab = np.full(n, -1, dtype=np.int64) if label is None else label
        return cls(sources=dict(X), index={m: np.arange(n) for m in X}, weight=np.full(n, weight, np.float32), label=lab)

    @classmethod
    def concat(cls, sets: list[SampleSet]) -> SampleSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ValueError("SampleSet.concat: nothing to concatenate")
        mods = sorted({m for s in sets for m in s.index})
        sources, index, all_keys = {}, {}, {}
        for m in mods:
            # sets that point into the same windows share them (and their keys, ``Batch.keys``)
            chunks, keys, idxs, offset, at = [], [], [], 0, {}
            for s in sets:
                if m in s.index:
                    src = s.sources[m]
                    if id(src) not in at:
                        at[id(src)] = offset
                        chunks.append(src)
                        keys.append(s.keys[m])
                        offset += len(src)
                    idxs.append(np.where(s.index[m] >= 0, s.index[m] + at[id(src)], -1))
                else:
                    idxs.append(np.full(len(s), -1, dtype=np.int64))
            sources[m] = chunks[0] if len(chunks) == 1 else RowStack(chunks)
            index[m] = np.concatenate(idxs)
            all_keys[m] = np.concatenate(keys)
        return cls(
            sources=sources,
            index=index,
            weight=np.concatenate([s.weight for s in sets]),
            label=np.concatenate([s.label for s in sets]),
            kind=np.concatenate([s.kind for s in sets]),
            keys=all_keys,
        )

    def take(self, rows: np.ndarray) -> SampleSet:
        return SampleSet(self.sources, {m: i[rows] for m, i in self.index.items()}, self.weight[rows], self.label[rows], self.kind[rows], self.keys)

    def restrict(self, modalities: list[str]) -> SampleSet:
        """Only the given modalities; samples left with none are dropped."""
        idx = {m: self.index[m] for m in modalities if m in self.index}
        if not idx:
            raise ValueError(f"none of {modalities} is in this sample set ({self.modalities})")
        keep = np.flatnonzero(np.stack([i >= 0 for i in idx.values()]).any(0))
        return SampleSet({m: self.sources[m] for m in idx}, {m: i[keep] for m, i in idx.items()}, self.weight[keep], self.label[keep], self.kind[keep], {m: self.keys[m] for m in idx})

    def batch(self, rows: np.ndarray, device: torch.device) -> Batch:
        inputs, masks, keys = {}, {}, {}
        for m, idx in self.index.items():
            sel = idx[rows]
            present = sel >= 0
            if present.any():
                inputs[m] = torch.from_numpy(np.ascontiguousarray(self.sources[m][sel[present]])).to(device)
                masks[m] = torch.from_numpy(present).to(device)
                keys[m] = torch.from_numpy(self.keys[m][sel[present]]).to(device)
        return Batch(inputs, masks, torch.from_numpy(self.weight[rows]).to(device), torch.from_numpy(self.label[rows]).to(device), keys)

    def copies(self) -> tuple[np.ndarray, np.ndarray]:
        """For each sample, how many samples share its most shared window (1: none other), and which of them it is (0-based).

        A window bound into many pseudo-pairs (a gallery window can be the best
        match of dozens) is held by that many samples; the rank follows row order.
        """
        n = len(self)
        count, rank = np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for m, idx in self.index.items():
            rows = np.flatnonzero(idx >= 0)
            if not len(rows):
                continue
            _, inverse, per_key = np.unique(self.keys[m][idx[rows]], return_inverse=True, return_counts=True)
            c = per_key[inverse]
            if c.max() == 1:
                continue
            by_key = np.argsort(inverse, kind="stable")  # rows of one key together, in row order
            starts = np.concatenate([[0], np.cumsum(per_key)[:-1]])
            r = np.empty(len(rows), dtype=np.int64)
            r[by_key] = np.arange(len(rows)) - np.repeat(starts, per_key)
            more = c > count[rows]
            count[rows[more]], rank[rows[more]] = c[more], r[more]
        return count, rank

    def spread_order(self, rng: np.random.Generator) -> np.ndarray:
        """A random order of the samples in which the samples holding one window lie about ``n / copies`` apart.

        Copy r of a window held by c samples goes to a uniform position in the
        r-th of c equal stretches of the epoch, so two copies rarely share a
        minibatch; every other sample goes to a uniform position anywhere. With
        no window held twice (natural samples) this is ``rng.permutation``,
        draw for draw.
        """
        order = rng.permutation(len(self))
        count, rank = self.copies()
        if count.max() <= 1:
            return order
        place = (rank[order] + rng.random(len(order))) / count[order]
        return order[np.argsort(place, kind="stable")]

    def batches(self, batch_size: int, device: torch.device, rng: np.random.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """Minibatches in a random order (``spread_order``), or in row order without ``rng``."""
        order = self.spread_order(rng) if rng is not None else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) > batch_size else 0)
        for i in range(0, stop, batch_size):
            yield self.batch(order[i : i + batch_size], device)


class RowStack:
    """Arrays stacked row-wise without a copy: ``x[rows]`` gathers those rows from the parts.

    ``SampleSet.concat`` stacks its sets' windows this way, so that windows kept
    in file-backed arrays (``coordinator.phases.spill_features``) stay there
    and a batch reads only its own rows.
    """

    def __init__(self, parts: list[Any]) -> None:
        self.parts = [q for p in parts for q in (p.parts if isinstance(p, RowStack) else [p])]
        if not self.parts or len({p.shape[1:] for p in self.parts}) != 1:
            raise ValueError(f"RowStack: parts must share their row shape, got {[p.shape for p in self.parts]}")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), *self.parts[0].shape[1:])
        self.dtype = np.result_type(*[p.dtype for p in self.parts])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"RowStack: index with a 1-D array of row numbers, got {rows.dtype} of shape {rows.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"RowStack: rows must be in [0, {len(self)}), got {int(rows.min())}..{int(rows.max())}")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(part):
            hit = part == k
            out[hit] = self.parts[k][rows[hit] - self.starts[k]]
        return out


_KEY_BASES: dict[int, tuple[weakref.ref, int]] = {}
_next_key = 0


def window_keys(source: np.ndarray) -> np.ndarray:
    """One key per window of ``source``, the same every time this array object is asked.

    Natural samples and the pseudo-pairs bound from them point into the same
    feature arrays, so a window keeps its key through ``concat``, ``take`` and
    ``restrict``, and the contrastive loss can tell when two samples of a batch
    hold the same window (``MultiViewContrastive``'s ``keys``).
    """
    global _next_key
    if len(_KEY_BASES) > 4096:  # forget arrays that are gone
        for k in [k for k, (ref, _) in _KEY_BASES.items() if ref() is None]:
            del _KEY_BASES[k]
    known = _KEY_BASES.get(id(source))
    if known is None or known[0]() is not source:
        try:
            ref = weakref.ref(source)
        except TypeError:  # not weak-referenceable: keys of its own
            ref = lambda: None  # noqa: E731
        known = _KEY_BASES[id(source)] = (ref, _next_key)
        _next_key += len(source)
    return np.arange(known[1], known[1] + len(source), dtype=np.int64)


def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place per-present-sample rows into a (batch, d) tensor; absent rows are never read (see masks)."""
    out = values.new_zeros((len(mask), values.shape[-1]))
    out[mask] = values
    return out
