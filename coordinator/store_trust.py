"""The coordinator store's records of trust: which SuperNode key each node id belongs to, and adapter version floors.

A part of ``coordinator.store.CoordinatorStore`` (a mixin over its tables), kept
apart so each file holds one idea. Node keys are what ``edgebind-coordinator
register-node`` records and what a campaign checks a node's claimed id against
(``coordinator.identity``); version floors are how numbering resumes above what
nodes hold after the store was lost (``coordinator.recovery``).
"""

from __future__ import annotations

import time

from sqlalchemy import select, update

from node_agent.sqlbase import _insert_ignore, _int, _name
from coordinator.store_schema import _AdapterCounterRow, _NodeKeyRow, _text


class TrustRecords:
    """Node keys and adapter version floors (mixed into ``CoordinatorStore``, which provides ``_tx`` and ``_lock_counter``)."""

    def register_node_key(self, node_id: str, public_key_pem: str, flower_node_id: int = 0) -> None:
        """Record that ``node_id`` is the node holding this SuperNode key (PEM). A repeat changes nothing.

        Refused (ValueError): an id already bound to another key, a key already
        bound to another id (one key, one node).
        """
        _name("node_id", node_id)
        if not _text("public_key_pem", public_key_pem).startswith("-----BEGIN PUBLIC KEY-----"):
            raise ValueError(f"the public key of {node_id!r} must be PEM (SubjectPublicKeyInfo), as the SuperLink holds it")
        flower_node_id = str(_int("flower_node_id", flower_node_id, hi=2**64 - 1))  # Flower ids are uint64
        with self._tx(write=True) as s:  # type: ignore[attr-defined]
            held = s.get(_NodeKeyRow, node_id)
            if held is not None and held.public_key != public_key_pem:
                raise ValueError(f"node id {node_id!r} is already bound to another SuperNode key")
            other = s.scalars(select(_NodeKeyRow).where(_NodeKeyRow.public_key == public_key_pem)).first()
            if other is not None and other.node_id != node_id:
                raise ValueError(f"this SuperNode key is already bound to node {other.node_id!r}")
            if held is None:
                s.add(_NodeKeyRow(node_id=node_id, public_key=public_key_pem, flower_node_id=flower_node_id, registered_ns=time.time_ns()))
            elif flower_node_id != "0":
                held.flower_node_id = flower_node_id

    def node_keys(self) -> dict[str, str]:
        """Node id -> its registered SuperNode public key (PEM)."""
        with self._tx() as s:  # type: ignore[attr-defined]
            return {r.node_id: r.public_key for r in s.scalars(select(_NodeKeyRow))}

    def adapter_floor(self, modality: str) -> int:
        """The last adapter version handed out for ``modality`` (0: none)."""
        _name("modality", modality)
        with self._tx() as s:  # type: ignore[attr-defined]
            row = s.get(_AdapterCounterRow, modality)
            return 0 if row is None else int(row.last_version)

    def raise_adapter_floor(self, modality: str, floor: int) -> int:
        """Make every later adapter version of ``modality`` above ``floor`` (never lowers it); return the floor now."""
        _name("modality", modality)
        floor = _int(f"version floor of {modality!r}", floor)
        with self._tx(write=True) as s:  # type: ignore[attr-defined]
            _insert_ignore(s, _AdapterCounterRow.__table__, [dict(modality=modality, last_version=0)])
            s.execute(update(_AdapterCounterRow).where(_AdapterCounterRow.modality == modality, _AdapterCounterRow.last_version < floor).values(last_version=floor))
            return int(s.get(_AdapterCounterRow, modality, populate_existing=True).last_version)
