"""Incomplete multimodal samples: each sample holds some modalities, a weight and maybe a label.

Windows are kept once per modality (``sources``) and samples point into them
(``index``, -1 where the modality is absent), so a window bound into many
pseudo-pairs is stored once and an absent modality is never materialised.
"""

from __future__ import annotations

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

    def __len__(self) -> int:
        return len(self.weight)


@dataclass
class SampleSet:
    sources: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    weight: np.ndarray
    label: np.ndarray
    kind: np.ndarray = field(default=None)  # 0 = natural sample, 1 = pseudo-pair

    def __post_init__(self) -> None:
        n = len(self.weight)
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
        sources, index = {}, {}
        for m in mods:
            chunks, idxs, offset, at = [], [], 0, {}
            for s in sets:
                if m in s.index:
                    src = s.sources[m]
                    if id(src) not in at:  # sets that point into the same windows share them
                        at[id(src)] = offset
                        chunks.append(src)
                        offset += len(src)
                    idxs.append(np.where(s.index[m] >= 0, s.index[m] + at[id(src)], -1))
                else:
                    idxs.append(np.full(len(s), -1, dtype=np.int64))
            sources[m] = chunks[0] if len(chunks) == 1 else RowStack(chunks)
            index[m] = np.concatenate(idxs)
        return cls(
            sources=sources,
            index=index,
            weight=np.concatenate([s.weight for s in sets]),
            label=np.concatenate([s.label for s in sets]),
            kind=np.concatenate([s.kind for s in sets]),
        )

    def take(self, rows: np.ndarray) -> SampleSet:
        return SampleSet(self.sources, {m: i[rows] for m, i in self.index.items()}, self.weight[rows], self.label[rows], self.kind[rows])

    def restrict(self, modalities: list[str]) -> SampleSet:
        """Only the given modalities; samples left with none are dropped."""
        idx = {m: self.index[m] for m in modalities if m in self.index}
        if not idx:
            raise ValueError(f"none of {modalities} is in this sample set ({self.modalities})")
        keep = np.flatnonzero(np.stack([i >= 0 for i in idx.values()]).any(0))
        return SampleSet({m: self.sources[m] for m in idx}, {m: i[keep] for m, i in idx.items()}, self.weight[keep], self.label[keep], self.kind[keep])

    def batch(self, rows: np.ndarray, device: torch.device) -> Batch:
        inputs, masks = {}, {}
        for m, idx in self.index.items():
            sel = idx[rows]
            present = sel >= 0
            if present.any():
                inputs[m] = torch.from_numpy(np.ascontiguousarray(self.sources[m][sel[present]])).to(device)
                masks[m] = torch.from_numpy(present).to(device)
        return Batch(inputs, masks, torch.from_numpy(self.weight[rows]).to(device), torch.from_numpy(self.label[rows]).to(device))

    def batches(self, batch_size: int, device: torch.device, rng: np.random.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
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


def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place per-present-sample rows into a (batch, d) tensor; absent rows are never read (see masks)."""
    out = values.new_zeros((len(mask), values.shape[-1]))
    out[mask] = values
    return out
