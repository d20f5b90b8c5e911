"""Is the aligned space usable across modalities? The modality gap, window recall that counts overlapping
neighbours, and cross-modal transfer (a head trained on one modality's embedding, scored on another's).

Each takes L2-normalised aligned embeddings (``common.evaluate.embed``) whose row i is the same window
in every modality, so they need no model and are tested on constructed embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.evaluate import metrics


def _unit(z: np.ndarray, what: str) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"{what}: expected a non-empty (windows x dims) array, got shape {z.shape}")
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"{what}: {int((norm == 0).sum())} row(s) are all zero and have no direction")
    return z / norm


def modality_gap(za: np.ndarray, zb: np.ndarray) -> dict[str, float]:
    """How far apart two modalities' embeddings sit, against how spread out each is.

    Rows are L2-normalised first. With ``c_m`` the centroid (mean row) of
    modality m and ``s_m = sqrt(mean_i ||z_i - c_m||^2)`` its spread (root mean
    squared distance of its rows to their centroid):

        ``distance = ||c_a - c_b||``,  ``gap = distance / sqrt((s_a^2 + s_b^2) / 2)``.

    ``gap`` near 0: the two modalities fill the same region; above about 2: the
    centroids lie further apart than a typical row lies from its own centroid,
    so the modalities occupy separate regions (the "modality gap" of CLIP-like
    models). The rows need not be paired.
    """
    a, b = _unit(za, "modality_gap first"), _unit(zb, "modality_gap second")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"modality_gap: the embeddings have {a.shape[1]} and {b.shape[1]} dimensions")
    ca, cb = a.mean(0), b.mean(0)
    sa, sb = (float(np.sqrt(((x - c) ** 2).sum(1).mean())) for x, c in ((a, ca), (b, cb)))
    dist = float(np.linalg.norm(ca - cb))
    pooled = np.sqrt((sa**2 + sb**2) / 2)
    return {"gap": dist / pooled if pooled > 0 else float("inf"), "distance": dist, "spread_a": sa, "spread_b": sb}


def modality_gaps(z: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``modality_gap`` for every pair of modalities (keys ``"a-b"``, sorted)."""
    return {f"{a}-{b}": modality_gap(z[a], z[b]) for a, b in itertools.combinations(sorted(z), 2)}


def overlapping(recording: np.ndarray, start: np.ndarray, window: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Whether window ``i`` and window ``j`` share samples: the same window, or the same recording less than ``window`` samples apart."""
    recording, start = np.asarray(recording), np.asarray(start)
    return (i == j) | ((recording[i] == recording[j]) & (np.abs(start[i] - start[j]) < window))


def window_recall(za: np.ndarray, zb: np.ndarray, recording: np.ndarray, start: np.ndarray, window: int, block: int = 1024) -> dict[str, float]:
    """Window recall@1 of paired rows, counting overlapping neighbour windows as hits; both directions and their mean.

    Query row i of one modality retrieves the row of the other modality with
    the highest dot product among every row; it is a hit when that row is
    window i itself (``strict``, plain recall@1) or a window of the same
    recording that overlaps it (``neighbours``): with 50 % overlapping windows,
    the window before and after share half their samples, so retrieving them is
    not a miss of the content. ``recording`` and ``start`` (per row) say where
    each window was cut; ``window`` is its length in samples.
    """
    za, zb = np.asarray(za, np.float32), np.asarray(zb, np.float32)
    n = len(za)
    if za.shape != zb.shape or n == 0:
        raise ValueError(f"window_recall needs non-empty paired rows of equal shape, got {za.shape} and {zb.shape}")
    if np.shape(recording) != (n,) or np.shape(start) != (n,):
        raise ValueError(f"window_recall: recording and start need one value per row ({n}), got {np.shape(recording)} and {np.shape(start)}")
    if window < 1:
        raise ValueError(f"window_recall: window must be >= 1 sample, got {window}")
    rows = np.arange(n)
    out: dict[str, float] = {}
    for tag, q, g in (("a_to_b", za, zb), ("b_to_a", zb, za)):
        tq, tg = torch.from_numpy(q), torch.from_numpy(g)
        top = torch.cat([(tq[i : i + block] @ tg.T).argmax(1) for i in range(0, n, block)]).numpy()
        out[f"{tag}_strict"] = float((top == rows).mean())
        out[f"{tag}_neighbours"] = float(overlapping(recording, start, window, rows, top).mean())
    out["strict"] = (out["a_to_b_strict"] + out["b_to_a_strict"]) / 2
    out["neighbours"] = (out["a_to_b_neighbours"] + out["b_to_a_neighbours"]) / 2
    return out


def linear_head(z: np.ndarray, y: np.ndarray, n_classes: int, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0) -> torch.nn.Linear:
    """A softmax classifier on L2-normalised embeddings: full-batch AdamW for a fixed number of steps, seeded."""
    x = torch.from_numpy(_unit(z, "linear_head").astype(np.float32))
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(t) != len(x) or (t < 0).any() or (t >= n_classes).any():
        raise ValueError(f"linear_head: need one label in [0, {n_classes}) per row ({len(x)} rows, {len(t)} labels)")
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(head(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def predict_linear(head: torch.nn.Linear, z: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy(_unit(z, "predict_linear").astype(np.float32))).argmax(1).numpy()


def cross_modal_transfer(train: Mapping[str, np.ndarray], y_train: np.ndarray, test: Mapping[str, np.ndarray], y_test: np.ndarray,
                         n_classes: int, seed: int = 0, **head_args) -> dict[str, dict[str, float]]:
    """Zero-shot across modalities: a linear head trained on modality A's embeddings of ``train``, scored on B's of ``test``.

    Returns, for every ordered pair ``"A->B"`` (A != B), test accuracy and
    macro-F1, and for every ``"A->A"`` the same-modality figure (what the head
    reaches on the modality it was trained on). The head never sees B: only a
    shared space lets it read B.
    """
    mods = sorted(train)
    if sorted(test) != mods:
        raise ValueError(f"cross_modal_transfer: train holds {mods}, test {sorted(test)}")
    out = {}
    for a in mods:
        head = linear_head(train[a], y_train, n_classes, seed=seed, **head_args)
        for b in mods:
            out[f"{a}->{b}"] = metrics(np.asarray(y_test), predict_linear(head, test[b]))
    return out


def ordered_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Every ordered pair of two different modalities, sorted."""
    return list(itertools.permutations(sorted(modalities), 2))
