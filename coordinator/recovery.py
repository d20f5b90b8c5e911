"""Adapter numbering after the coordinator's store was lost (or restored from an old backup).

A node refuses a bundle whose version is not above the one it holds
(``replay``) or more than ``MAX_VERSION_JUMP`` past it (``version-jump``). The
store hands out versions; were it lost, numbering would restart at 1 and every
node would refuse every bundle. Nodes therefore say which versions they hold
(with their manifest, and in their Registry status reports), and numbering
resumes above them: before a campaign signs bundles (``resume_numbering``,
automatic) or by hand (``edgebind-coordinator recover``).

The floor is the held version that the most nodes can take the next version
after: a version v + 1 is accepted by a node holding h when h <= v < h +
MAX_VERSION_JUMP. So one node reporting a huge version cannot pin the fleet's
numbering beyond what the others accept, nor one reporting a tiny one hold it
back. Raising never lowers a floor: with an intact store this is a no-op.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Mapping, Sequence

from common.codec import MAX_VERSION_JUMP

__all__ = ["choose_floor", "held_versions", "recover", "resume_numbering"]

log = logging.getLogger("edgebind.campaign")

_MAX_VERSION = 2**63 - 1


def held_versions(raw: Mapping, modalities: Sequence[str]) -> dict[str, int]:
    """The adapter versions a node says it holds (modality -> version), checked: its own modalities, integers in [1, 2^63-1]."""
    out = {}
    for m, v in raw.items():
        if m not in modalities:
            raise ValueError(f"adapter version for {m!r}, a modality the node does not hold ({', '.join(modalities)})")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_VERSION:
            raise ValueError(f"adapter version of {m!r} must be an integer in [1, 2^63-1], got {v!r}")
        out[str(m)] = int(v)
    return out


def choose_floor(held: Iterable[int]) -> int:
    """The version to number above, given what each node holds (0: none): the one the most nodes accept the next version after,
    the highest of those on a tie."""
    hs = sorted(h for h in held if h > 0)
    best, best_n = 0, 0
    for v in hs:  # candidates are held versions; the nodes that accept v + 1 hold h in (v - MAX_VERSION_JUMP, v]
        n = bisect.bisect_right(hs, v) - bisect.bisect_right(hs, v - MAX_VERSION_JUMP)
        if n >= best_n:
            best, best_n = v, n
    return best


def resume_numbering(store, modalities: Sequence[str], held: Iterable[Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Raise each modality's version floor in ``store`` to what the nodes hold (``choose_floor``) where the store is behind it.

    Returns, per modality raised, ``{"was": store's floor, "now": new floor}``.
    """
    held = list(held)
    raised = {}
    for m in modalities:
        floor = choose_floor(h.get(m, 0) for h in held)
        was = store.adapter_floor(m)
        if floor > was:
            raised[m] = {"was": was, "now": store.raise_adapter_floor(m, floor)}
            log.warning("adapter versions of %s: the store had handed out up to v%d but nodes hold v%d (the store was lost or is an "
                        "old backup); numbering resumes above v%d", m, was, floor, floor)  # fmt: skip
    return raised


def recover(store, floors: Mapping[str, int] | None = None, from_nodes: bool = False) -> dict[str, dict[str, int]]:
    """``edgebind-coordinator recover``: raise version floors by hand (``floors``: modality -> version) and/or from the
    versions nodes last reported to this store (``from_nodes``: manifests and Registry status reports)."""
    raised: dict[str, dict[str, int]] = {}
    if from_nodes:
        held = [s.adapter_versions for s in (store.node_status(n.node_id) for n in store.nodes()) if s is not None]
        raised.update(resume_numbering(store, sorted({m for h in held for m in h}), held))
    for m, v in (floors or {}).items():
        was = store.adapter_floor(m)
        now = store.raise_adapter_floor(m, v)
        if now != was:
            raised[m] = {"was": raised.get(m, {}).get("was", was), "now": now}
    return raised
