"""Who a node is: its edgebind id bound to the SuperNode key the SuperLink authenticated, not to what its manifest says.

With ``--enable-supernode-auth`` the SuperLink admits a SuperNode only with a
public key registered beforehand (``flwr supernode register``), gives that key
its Flower node id, and checks every request against the key's signature; the
ServerApp sees each node's key with its Flower id (``Grid.get_nodes()``,
``NodeInfo.public_key``: PEM). ``edgebind-coordinator register-node`` records,
beside Flower's registration, which edgebind node id the key belongs to
(``CoordinatorStore.register_node_key``). A campaign then takes a node's id
from its key: a manifest claiming any other id is refused, and so is a node
whose key is registered to no id. No challenge is needed: the SuperLink
already proved that every message from a Flower node id came from the holder
of its key.

While the store binds no node id to a key (a simulation, a plain-text
deployment), a node's id is what its manifest says; two nodes claiming one id
are refused either way (``phases.read_manifest``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization

__all__ = ["check_identity", "flower_keys", "identity_check", "key_pem", "node_id_of_key_file"]

log = logging.getLogger("edgebind.campaign")


def key_pem(public_key: bytes | str) -> str:
    """A public key (OpenSSH or PEM, as ``init-pki`` and the SuperLink write them) as PEM SubjectPublicKeyInfo text."""
    raw = public_key.encode() if isinstance(public_key, str) else bytes(public_key)
    try:
        key = serialization.load_pem_public_key(raw) if raw.lstrip().startswith(b"-----BEGIN") else serialization.load_ssh_public_key(raw.strip())
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a public key (OpenSSH or PEM): {e}") from None
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def node_id_of_key_file(path: str | Path) -> str:
    """The node id in a key file named as ``init-pki`` names them (``supernode-<id>.pub``), or ValueError."""
    m = re.fullmatch(r"supernode-(.+)\.pub", Path(path).name)
    if not m:
        raise ValueError(f"{Path(path).name}: not named supernode-<node id>.pub; give the node id (--node-id)")
    return m.group(1)


def flower_keys(grid) -> dict[int, str]:
    """Flower node id -> the public key (PEM) the SuperLink authenticates it with, for every node that has one."""
    out = {}
    for info in grid.get_nodes():
        if info.public_key:
            try:
                out[int(info.node_id)] = key_pem(info.public_key)
            except ValueError:
                continue  # a key edgebind cannot read binds no id: that node is refused below when ids are bound
    return out


def check_identity(claimed: str, flower_id: int, keys: Mapping[int, str], registered: Mapping[str, str]) -> None:
    """Raise ValueError, naming why, unless the node ``flower_id`` may be ``claimed``.

    ``keys``: Flower node id -> authenticated key (``flower_keys``);
    ``registered``: node id -> its key (``CoordinatorStore.node_keys``), both
    PEM as ``key_pem`` writes it. With nothing registered every claim passes
    (ids come from manifests).
    """
    if not registered:
        return
    owners = {pem: node for node, pem in registered.items()}
    key = keys.get(flower_id)
    if key is None:
        raise ValueError(f"node claims id {claimed!r}, but the SuperLink shows no SuperNode key for Flower node {flower_id}: "
                         "node ids are bound to registered keys here (is --enable-supernode-auth on?)")  # fmt: skip
    owner = owners.get(key)
    if owner is None:
        raise ValueError(f"node claims id {claimed!r}, but its SuperNode key is bound to no node id (edgebind-coordinator register-node)")
    if owner != claimed:
        raise ValueError(f"node claims id {claimed!r}, but its SuperNode key is registered to node {owner!r}")


def identity_check(grid, store) -> Callable[[str, int], None]:
    """``check(claimed id, Flower node id)`` for one campaign's manifests: the store's bindings and the grid's keys, read once."""
    registered = {node: key_pem(pem) for node, pem in store.node_keys().items()}  # read once per campaign, in one form with the grid's
    keys = flower_keys(grid) if registered else {}
    log.info("[manifest] node ids: %s", f"bound to the SuperNode keys of {len(registered)} registered nodes" if registered else "as the manifests say (no node key registered)")
    return lambda claimed, flower_id: check_identity(claimed, flower_id, keys, registered)
