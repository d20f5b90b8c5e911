"""A node's state directory: its frozen encoders and current adapter bundles, on disk.

``state.json`` names ``encoders/<m>-<version>.pt`` and
``adapters/<m>-v<version>.pb``. Every file is written under a temporary name,
fsynced and renamed, ``state.json`` last, so a reader sees either the old set or
the new one, never half. This module only keeps files; what may be written here
is decided by the bundle gate in ``node_agent.runtime``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from common.codec import parse_message, state_version
from common.files import atomic_write, private_dir
from common.modalities import ModalitySpec
from common.towers import TowerConfig, build_encoder, load_strict
from proto import edgebind_pb2 as pb

__all__ = ["StateDir"]


class StateDir:
    """Frozen encoders and current adapter bundles of one node, in ``root``.

    ``store`` (a NodeStore) additionally records each adapter version swapped in.
    """

    def __init__(self, root: str | Path, store=None):
        self.root = private_dir(root)  # 0700: the node's models and keys are its owner's alone
        self.store = store

    # state.json --------------------------------------------------------------
    def state(self) -> dict:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"encoders": {}, "adapters": {}}

    def _write_state(self, state: dict) -> None:
        atomic_write(self.root / "state.json", json.dumps(state, indent=1, sort_keys=True).encode())

    # encoders ----------------------------------------------------------------
    def install_encoders(self, states: Mapping[str, Mapping[str, torch.Tensor]], specs: Mapping[str, ModalitySpec], tower: TowerConfig) -> dict[str, str]:
        """Keep these frozen encoders; return modality -> encoder version."""
        state = self.state()
        versions = {}
        for m, sd in states.items():
            enc = build_encoder(specs[m], tower)
            load_strict(enc, sd, f"{m!r} encoder")
            v = state_version(sd)
            buf = io.BytesIO()
            torch.save({k: t.detach().cpu() for k, t in sd.items()}, buf)
            name = f"encoders/{m}-{v}.pt"
            atomic_write(self.root / name, buf.getvalue())
            state["encoders"][m] = {"version": v, "file": name, "spec": asdict(specs[m])}
            versions[m] = v
        state["tower"] = tower.to_dict()
        self._write_state(state)
        return versions

    def encoder_versions(self) -> dict[str, str]:
        return {m: e["version"] for m, e in self.state()["encoders"].items()}

    def encoder_specs(self) -> dict[str, ModalitySpec]:
        return {m: ModalitySpec(**e["spec"]) for m, e in self.state()["encoders"].items()}

    def tower(self) -> TowerConfig:
        return TowerConfig.from_dict(self.state().get("tower"))

    def encoders(self) -> dict[str, nn.Module]:
        state = self.state()
        tower = TowerConfig.from_dict(state.get("tower"))
        out = {}
        for m, e in state["encoders"].items():
            enc = build_encoder(ModalitySpec(**e["spec"]), tower)
            enc.load_state_dict(torch.load(self.root / e["file"], weights_only=True, map_location="cpu"))
            out[m] = enc.eval()
        return out

    # keys --------------------------------------------------------------------
    def remember_key(self, key_id: str, hexkey: str) -> None:
        """Keep a campaign's public key the coordinator offered in-band (simulated nodes only; deployed nodes never call this)."""
        bytes.fromhex(hexkey)
        state = self.state()
        state.setdefault("in_band_keys", {})[key_id] = hexkey
        self._write_state(state)

    def in_band_keys(self) -> dict[str, bytes]:
        return {k: bytes.fromhex(v) for k, v in self.state().get("in_band_keys", {}).items()}

    # adapters ----------------------------------------------------------------
    def adapter_versions(self) -> dict[str, int]:
        return {m: int(a["version"]) for m, a in self.state()["adapters"].items()}

    def bundles(self) -> dict[str, pb.AdapterBundle]:
        return {m: parse_message((self.root / a["file"]).read_bytes(), pb.AdapterBundle) for m, a in self.state()["adapters"].items()}

    def swap_in(self, bundles: Mapping[str, pb.AdapterBundle], key_trust: dict | None = None) -> None:
        """Make ``bundles`` the current adapters, all at once (call only with bundles the gate admitted); ``key_trust``
        (``common.rotation.KeyTrust.to_state``: the coordinator keys taken by rotation) is pinned in the same write."""
        state = self.state()
        if key_trust is not None:
            state["key_trust"] = key_trust
        for m, b in bundles.items():
            blob = b.SerializeToString(deterministic=True)
            name = f"adapters/{m}-v{b.version}.pb"
            atomic_write(self.root / name, blob)
            state["adapters"][m] = {"version": int(b.version), "file": name, "sha256": hashlib.sha256(blob).hexdigest()}
        self._write_state(state)
        if self.store is not None:
            for m, b in bundles.items():
                a = state["adapters"][m]
                self.store.record_adapter(m, int(b.version), str(self.root / a["file"]), a["sha256"])
