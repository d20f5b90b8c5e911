"""Rotating the coordinator's signing key: a node takes a new key only when the key it replaces vouches for it.

A rotation record (``KeyRotation``) names the old and the new key and carries
the new public key and an issue time, signed by the old key.
``edgebind-coordinator rotate-key`` writes one; the coordinator puts the chain of
them into every bundle it signs with the new key, so the record reaches a node
with the next bundles whichever way they come (Flower push or the Registry).
The node's one bundle gate (``node_agent.runtime``) follows the chain from the
keys it trusts: it takes a record signed by a key it trusts for new bundles and
issued after the last one it took, then verifies new bundles against the new
key only, and keeps the old one for the adapters it already holds. A record
signed by any other key, a replayed older one, or one issued far in the future
is refused by name. The other way to a new key is by hand: re-provision the
node (``edgebind-node up --signing-public-key`` with the new key).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.codec import key_id_of, public_key_of
from proto import edgebind_pb2 as pb

__all__ = ["KeyTrust", "MAX_CLOCK_SKEW_NS", "follow_rotations", "make_rotation"]

MAX_CLOCK_SKEW_NS = 3600 * 10**9  # a rotation issued further in the future would make every honest later one a "replay"


def _signed_bytes(rec: pb.KeyRotation) -> bytes:
    unsigned = pb.KeyRotation()
    unsigned.CopyFrom(rec)
    unsigned.ClearField("signature")
    return unsigned.SerializeToString(deterministic=True)


def make_rotation(old_private_key: bytes, new_public_key: bytes, issued_ns: int | None = None) -> pb.KeyRotation:
    """A rotation record from the key ``old_private_key`` to ``new_public_key``, signed by the old key."""
    if len(new_public_key) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(new_public_key)}")
    rec = pb.KeyRotation(old_key_id=key_id_of(public_key_of(old_private_key)), new_key_id=key_id_of(new_public_key), new_public_key=new_public_key,
                         issued_ns=time.time_ns() if issued_ns is None else issued_ns)  # fmt: skip
    rec.signature = Ed25519PrivateKey.from_private_bytes(bytes(old_private_key)).sign(_signed_bytes(rec))
    return rec


@dataclass
class KeyTrust:
    """What a node learnt from rotations: keys taken (``rotated``), keys replaced (``retired``), the last record's issue time.

    Kept in the node's ``state.json`` (``key_trust``); the keys it was
    provisioned with come from its command line on every start.
    """

    rotated: dict[str, bytes] = field(default_factory=dict)
    retired: dict[str, bytes] = field(default_factory=dict)
    last_issued_ns: int = 0

    @classmethod
    def from_state(cls, state: Mapping) -> KeyTrust:
        raw = state.get("key_trust") or {}
        return cls({k: bytes.fromhex(v) for k, v in raw.get("rotated", {}).items()}, {k: bytes.fromhex(v) for k, v in raw.get("retired", {}).items()},
                   int(raw.get("last_issued_ns", 0)))  # fmt: skip

    def to_state(self) -> dict:
        return {"rotated": {k: v.hex() for k, v in self.rotated.items()}, "retired": {k: v.hex() for k, v in self.retired.items()}, "last_issued_ns": self.last_issued_ns}

    def signing_keys(self, provisioned: Mapping[str, bytes]) -> dict[str, bytes]:
        """The keys a new bundle may be signed with: those provisioned or taken, less every key replaced."""
        gone = set(self.retired.values())
        return {k: v for k, v in {**provisioned, **self.rotated}.items() if v not in gone}

    def serving_keys(self, provisioned: Mapping[str, bytes]) -> dict[str, bytes]:
        """The keys an adapter the node already holds may be signed with: a replaced key's bundles were admitted while it was trusted."""
        return {**provisioned, **self.retired, **self.rotated}


def follow_rotations(records: Sequence[pb.KeyRotation], provisioned: Mapping[str, bytes], trust: KeyTrust, now_ns: int | None = None) -> tuple[KeyTrust, dict[str, str]]:
    """Take the records that chain from the keys trusted now, in order; return the trust after them and the refused ones (name -> reason).

    Reasons: ``rotation-malformed``, ``rotation-replay`` (issued no later than
    the last rotation taken, or signed by a replaced key), ``rotation-future``,
    ``rotation-unknown-key`` (signed by a key the node does not trust),
    ``rotation-bad-signature``. A record to a key the node trusts or has
    replaced is history (the coordinator sends the whole chain with every
    bundle): skipped, it changes nothing.
    """
    now = time.time_ns() if now_ns is None else now_ns
    out = KeyTrust(dict(trust.rotated), dict(trust.retired), trust.last_issued_ns)
    refused: dict[str, str] = {}
    known = {*out.signing_keys(provisioned).values(), *out.retired.values()}
    start = max((i + 1 for i, r in enumerate(records) if bytes(r.new_public_key) in known), default=0)  # before it: history (or re-provisioned by hand)
    for rec in records[start:]:
        name = f"rotation {rec.old_key_id or '?'} -> {rec.new_key_id or '?'}"
        trusted = out.signing_keys(provisioned)
        if bytes(rec.new_public_key) in {*trusted.values(), *out.retired.values()}:
            continue  # a key the node holds or held: the chain's history, which every later bundle carries; taking it again changes nothing
        reason = _refusal(rec, trusted, out, now)
        if reason:
            refused[name] = reason
            continue
        old = next(v for v in trusted.values() if key_id_of(v) == rec.old_key_id)
        out.retired[key_id_of(old)] = old
        out.rotated = {k: v for k, v in out.rotated.items() if v != old}
        out.rotated[rec.new_key_id] = bytes(rec.new_public_key)
        out.last_issued_ns = rec.issued_ns
    return out, refused


def _refusal(rec: pb.KeyRotation, trusted: Mapping[str, bytes], trust: KeyTrust, now: int) -> str:
    if len(rec.new_public_key) != 32 or rec.new_key_id != key_id_of(bytes(rec.new_public_key)) or not rec.signature:
        return "rotation-malformed"
    if rec.old_key_id in {key_id_of(v) for v in trust.retired.values()} or rec.issued_ns <= trust.last_issued_ns:
        return "rotation-replay"
    if rec.issued_ns > now + MAX_CLOCK_SKEW_NS:
        return "rotation-future"
    old = next((v for v in trusted.values() if key_id_of(v) == rec.old_key_id), None)  # records name keys by key_id_of, whatever id a node files them under
    if old is None:
        return "rotation-unknown-key"
    try:
        Ed25519PublicKey.from_public_bytes(old).verify(bytes(rec.signature), _signed_bytes(rec))
    except (InvalidSignature, ValueError):
        return "rotation-bad-signature"
    return ""
