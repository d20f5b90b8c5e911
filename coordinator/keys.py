"""The coordinator's signing key over time: rotating it, and the chain of rotation records its bundles carry.

``keygen`` (``coordinator.cli``) makes ``signing.key``/``signing.pub`` in a
folder; ``rotate_key`` replaces them with a new pair and writes
``rotations/NNNN-<new key id>.pb``, a record signed by the old key
(``common.rotation``), keeping the old private key in ``retired/``. Every
bundle signed with the new key carries the whole chain (``rotation_chain``),
so a node provisioned with any earlier key follows it to the new one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from common.codec import key_from_file, key_id_of, new_signing_key, public_key_of
from common.files import atomic_write, private_dir, write_secret
from common.rotation import make_rotation
from proto import edgebind_pb2 as pb

__all__ = ["rotate_key", "rotation_chain", "rotations_for"]


def rotate_key(directory: str | Path) -> dict[str, str]:
    """Replace the signing key in ``directory`` (as ``keygen`` made it) with a new one the old one vouches for.

    Writes ``signing.key`` (new, 0600) and ``signing.pub``, the rotation record
    ``rotations/NNNN-<new id>.pb`` and ``retired/signing-<old id>.key`` (0600).
    The coordinator keeps its key file's path, so the next campaign signs with
    the new key and sends the chain with its bundles; nodes need nothing by hand.
    """
    d = Path(directory)
    priv = d / "signing.key"
    if not priv.exists():
        raise FileNotFoundError(f"no signing key at {priv} (make one with `edgebind-coordinator keygen --dir {d}`)")
    old = key_from_file(priv, "private")
    old_id = key_id_of(public_key_of(old))
    rot_dir = private_dir(d / "rotations")
    rotation_chain(rot_dir, old)  # the folder is consistent now, or nothing is written
    new = new_signing_key()
    new_pub = public_key_of(new)
    record = make_rotation(old, new_pub)
    pending = d / "signing.key.new"
    pending.unlink(missing_ok=True)
    write_secret(pending, (new.hex() + "\n").encode())
    retired = private_dir(d / "retired") / f"signing-{old_id}.key"
    if not retired.exists():
        write_secret(retired, (old.hex() + "\n").encode())
    path = rot_dir / f"{len(list(rot_dir.glob('*.pb'))) + 1:04d}-{record.new_key_id}.pb"
    atomic_write(path, record.SerializeToString(deterministic=True))
    os.replace(pending, priv)  # the record is on disk before the key it names takes over
    atomic_write(d / "signing.pub", (new_pub.hex() + "\n").encode())
    return {"private_key_file": str(priv), "public_key_file": str(d / "signing.pub"), "public_key": new_pub.hex(), "key_id": record.new_key_id,
            "replaces": old_id, "rotation_record": str(path), "retired_key_file": str(retired)}  # fmt: skip


def rotation_chain(rot_dir: str | Path, key: bytes) -> list[pb.KeyRotation]:
    """The rotation records in ``rot_dir`` (in order), checked to chain one to the next and to end at ``key``; [] without any.

    ValueError names a broken chain (a record removed, or a rotation that did not finish).
    """
    files = sorted(Path(rot_dir).glob("*.pb")) if Path(rot_dir).is_dir() else []
    chain = [pb.KeyRotation.FromString(p.read_bytes()) for p in files]
    want = key_id_of(public_key_of(key))
    for prev, (rec, p) in zip([None, *chain], zip(chain, files)):
        if prev is not None and rec.old_key_id != prev.new_key_id:
            raise ValueError(f"{p}: replaces key {rec.old_key_id}, but the record before it made {prev.new_key_id}: the chain is broken")
    if chain and chain[-1].new_key_id != want:
        raise ValueError(f"{files[-1]} makes key {chain[-1].new_key_id}, but the signing key is {want}: a rotation did not finish "
                         f"(signing.key.new is the key it made) or the key was replaced by hand")  # fmt: skip
    return chain


def rotations_for(config_key_file: str, env: Mapping[str, str], key: bytes) -> list[pb.KeyRotation]:
    """The rotation chain beside the coordinator's key file (the run config's or ``EDGEBIND_SIGNING_KEY_FILE``), for its bundles."""
    path = config_key_file or env.get("EDGEBIND_SIGNING_KEY_FILE", "")
    return rotation_chain(Path(path).parent / "rotations", key) if path else []
