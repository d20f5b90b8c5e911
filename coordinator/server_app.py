"""The coordinator's Flower ServerApp: one campaign, phase by phase.

discover -> manifest -> pretrain (FedAvg per modality) -> collect -> bind ->
grow (MMBind's one stage, or a Babel growth plan) -> head -> finetune (labelled
nodes, all or a drawn share each round, train encoders and adapters end to end
under the head, which stays fixed unless finetune-head-lr > 0; aggregated by a
Flower strategy; the round kept is chosen on the validation nodes) -> push ->
evaluate.
The learning is in ``coordinator.phases``;
this module only sends messages, waits for replies (never longer than
``discovery-timeout`` / ``round-timeout``), keeps the books and logs progress.
A node that errs or does not answer in time is recorded as missing (with the
phase and round) and not asked again in this campaign; the campaign goes on
with the others.

Signing key: bundles are signed with Ed25519. The coordinator's private key
is read from a 0600 file named by ``signing-key-file`` in the run config or by
``EDGEBIND_SIGNING_KEY_FILE`` (a simulation may give ``signing-key`` hex
instead; see ``phases.signing_key``);
deployed nodes are provisioned with its public key (``edgebind-node up
--signing-public-key``) and accept no key in-band. Without a configured key the
campaign makes one of its own and offers its *public* key with the encoders:
only simulated nodes take it (they share the simulation's trust); deployed
nodes then refuse every bundle as signed by an unknown key. The fleet
simulator puts a fresh key in the run config of every campaign.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.evaluate import confusion_metrics
from common.data.scenarios import Scenario
from common.codec import public_key_of, state_version
from common.config import CampaignConfig
from common.device import pick_device
from common.files import atomic_write, write_json
from common.modalities import ModalitySpec
from common.processes import ensure_logging
from common.progress import time_left
from common.samples import SampleSet
from common.towers import SHARED_BLOCK, AlignedModel, FusionHead, TowerConfig, block_of, flat_state, model_from_flat
from coordinator import aggregation, identity, phases, recovery
from coordinator.keys import rotations_for
from coordinator.phases import NodeInfo
from coordinator.store import CoordinatorStore, open_store

UPLOAD_ROLES = ("train", "validation")  # whose windows' features go to the coordinator; test windows never do

log = logging.getLogger("edgebind.campaign")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one campaign with the run config's settings; results go to ``results-path`` and the store."""
    ensure_logging()
    cfg = CampaignConfig.from_run_config(context.run_config)
    Campaign(grid, cfg, run_id=context.run_id).run()


def exchange(grid: Grid, messages: dict[int, Message], timeout: float) -> tuple[dict[int, Message], dict[int, str]]:
    """Send one message per node with Flower's ``send_and_receive`` and wait at most ``timeout`` seconds.

    Returns the replies that carry content, by node, and for every other node
    why it is missing (a Flower error, or no reply in time).
    """
    if not messages:
        return {}, {}
    replies: dict[int, Message] = {}
    missing: dict[int, str] = {}
    for r in grid.send_and_receive(list(messages.values()), timeout=timeout):
        node = r.metadata.src_node_id
        if node not in messages:
            continue
        if r.has_error():
            missing[node] = f"error {r.error.code}: {_first_line(r.error.reason)}"
        else:
            replies[node] = r
    for node in messages:
        if node not in replies and node not in missing:
            missing[node] = f"no reply within {timeout:g}s"
    return replies, missing


def _first_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "Exception" in ln or "Error" in ln), lines[-1] if lines else "")
    return last[:limit]


class Campaign:
    """The books of one campaign: nodes, who went missing, per-phase figures."""

    def __init__(self, grid: Grid, cfg: CampaignConfig, run_id: int = 0):
        self.grid, self.cfg = grid, cfg
        self.campaign_id = cfg.campaign_id or f"campaign-{run_id}"
        self.results_path = Path(cfg.results_path or Path("edgebind-results") / self.campaign_id / "results.json")
        self.device = pick_device(cfg.device or None)
        self.tower = TowerConfig()
        self.nodes: dict[int, NodeInfo] = {}  # flower id -> manifest
        self.missing: dict[str, dict] = {}  # node id -> phase, round, reason
        self.refused: list[dict] = []  # nodes that answered with an error record (alive, but could not do it)
        self.bad_replies: list[dict] = []  # replies refused on arrival (malformed, non-finite, implausible): that node's part in that step only
        self.node_compute = 0.0  # seconds of learning work the nodes report in the current phase
        self.results: dict = {"campaign_id": self.campaign_id, "config": {k: v for k, v in cfg.to_run_config().items() if k not in ("signing-key", "resume")}, "phases": {}}
        self.key, self.key_id, self.key_source = phases.signing_key(cfg.signing_key, cfg.signing_key_id, os.environ, cfg.signing_key_file)
        self.rotations = rotations_for(cfg.signing_key_file, os.environ, self.key)  # how nodes that trust an earlier key reach this one
        self.finetuned = False  # set by the finetune phase when a fine-tuned round beat the head on features on validation
        # what the phases learn, each declared here and set by the phase named (so a phase reads nothing undeclared)
        self.store: CoordinatorStore | None = None  # run: opened when the campaign starts
        self.flower_ids: list[int] = []  # discover
        self.specs: dict[str, ModalitySpec] = {}  # manifest
        self.classes: list[str] = []  # manifest
        self.global_states: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # pretrain: modality -> encoder/head state
        self.encoder_versions: dict[str, str] = {}  # collect (what the nodes encoded with), push (fine-tuned encoders)
        self.binding = ""  # bind: "sensor" or "label"
        self.groups: dict[str, phases.GroupData] = {}  # bind
        self.bound: phases.BoundSamples | None = None  # bind
        self.natural: SampleSet | None = None  # grow: every natural training sample
        self.model: AlignedModel | None = None  # grow, then head and finetune
        self.n_classes = 0  # head
        self.fusion_head: FusionHead | None = None  # head, then finetune
        self.done_before: dict[str, dict] = {}  # run, with resume: the phases earlier runs of this campaign finished (their report)
        self.checkpoints = self.results_path.parent / "checkpoints"  # pretraining rounds and growth stages, for resume
        # the scenario and growth plan are read and checked now, before any node is asked for anything
        self.scenario = Scenario.load(cfg.scenario)
        if cfg.growth_plan:
            from common.growth import GrowthPlan

            GrowthPlan.from_toml(cfg.growth_plan)

    # --- the whole campaign ----------------------------------------------------------
    def run(self) -> dict:
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = open_store(self.cfg.store or self.results_path.parent / "coordinator.db")
        if self.cfg.resume:
            if self.store.campaign(self.campaign_id) is None:
                raise ValueError(f"resume: no campaign {self.campaign_id!r} in the store to resume (give its campaign-id and store)")
            self.done_before = dict((self.store.report(self.campaign_id) or {}).get("phases", {}))
            log.info("campaign %s: resuming; finished before: %s", self.campaign_id, ", ".join(sorted(self.done_before)) or "nothing")
        self.store.create_campaign(self.campaign_id, self.results["config"])  # a resumed campaign must have the same settings
        log.info("campaign %s: %s on %s, seed %d%s; signing key %s (%s)", self.campaign_id, self.cfg.scenario, self.cfg.dataset,
                 self.cfg.seed, " [quick]" if self.cfg.quick else "", self.key_id, self.key_source)  # fmt: skip
        t0, threads = time.time(), torch.get_num_threads()
        if self.cfg.coordinator_threads > 0:
            torch.set_num_threads(self.cfg.coordinator_threads)
        try:
            for name, step in (("discover", self.discover), ("manifest", self.manifest), ("pretrain", self.pretrain),
                               ("collect", self.collect), ("bind", self.bind), ("grow", self.grow), ("head", self.head),
                               ("finetune", self.finetune), ("push", self.push), ("evaluate", self.evaluate)):  # fmt: skip
                self._phase(name, step)
            self.results["state"] = "done"
            self.store.set_campaign_state(self.campaign_id, "done")
        except Exception as e:
            self.results["state"] = "failed"
            self.results["error"] = f"{type(e).__name__}: {e}"
            self.store.set_campaign_state(self.campaign_id, "failed", self.results["error"][:2000])
            log.error("campaign %s failed: %s", self.campaign_id, self.results["error"])
            raise
        finally:
            torch.set_num_threads(threads)
            self.results["seconds"] = time.time() - t0
            self.results["missing"] = self.missing
            self.results["missing_nodes"] = sorted(self.missing)
            self.results["refused"] = self.refused
            self.results["bad_replies"] = self.bad_replies
            write_json(self.results_path, self.results)
            self._save_report()
            self.store.close()
        log.info("campaign %s done in %.1fs; results in %s", self.campaign_id, self.results["seconds"], self.results_path)
        return self.results

    def _phase(self, name: str, step: Callable[[], dict]) -> None:
        self.store.set_campaign_state(self.campaign_id, name)
        log.info("[%s] ...", name)
        t = time.time()
        self.node_compute = 0.0
        figures = step() or {}
        figures["seconds"] = round(time.time() - t, 3)
        figures["node_compute_seconds"] = round(self.node_compute, 3)  # summed over nodes: work, not orchestration
        self.results["phases"][name] = figures
        log.info("[%s] done in %.1fs %s", name, figures["seconds"], _brief(figures))
        self._save_report(name)

    def _save_report(self, phase: str = "") -> None:
        """What ``edgebind-coordinator status`` shows of this campaign, saved after every phase; never fails the campaign."""
        r = self.results
        report = {
            "state": r.get("state") or f"{phase} done",
            # phases an earlier run finished stay on record, so a resumed run that dies again still knows them
            "phases": {**self.done_before, **{p: {k: f[k] for k in ("seconds", "node_compute_seconds") if k in f} for p, f in r["phases"].items()}},
            "nodes": {nid: {k: n[k] for k in ("group", "role", "modalities") if k in n} for nid, n in r.get("nodes", {}).items()},
            "missing": self.missing,
            "refused": self.refused,
            "accuracy": {sub: {k: m[k] for k in ("accuracy", "macro_f1", "n", "nodes") if k in m} for sub, m in r.get("accuracy", {}).items()},
        }
        try:
            self.store.save_report(self.campaign_id, report)
        except ValueError as e:
            log.warning("campaign %s: its report could not be saved: %s", self.campaign_id, e)

    # --- messaging -------------------------------------------------------------------
    def live(self, role: str | None = None) -> dict[int, NodeInfo]:
        return {f: n for f, n in self.nodes.items() if n.node_id not in self.missing and (role is None or role in n.roles)}

    def send(self, phase: str, kind: str, contents: dict[int, RecordDict], rnd: int = 0) -> dict[int, Message]:
        """One exchange; nodes that fail are recorded missing, nodes that refuse are logged."""
        ttl = self.cfg.round_timeout + 60
        msgs = {f: Message(c, dst_node_id=f, message_type=kind, group_id=f"{phase}-{rnd}", ttl=ttl) for f, c in contents.items()}
        replies, missing = exchange(self.grid, msgs, self.cfg.round_timeout)
        for f, reason in missing.items():
            who = self.nodes[f].node_id if f in self.nodes else f"flower:{f}"
            self.missing[who] = {"phase": phase, "round": rnd, "reason": reason}
            log.warning("[%s] node %s is missing: %s", phase, who, reason)
        ok = {}
        for f, r in replies.items():
            if "error" in r.content.config_records:
                who = self.nodes[f].node_id if f in self.nodes else f"flower:{f}"
                reason = str(r.content["error"]["reason"])
                self.refused.append({"node": who, "phase": phase, "round": rnd, "reason": reason})
                log.warning("[%s] node %s refused the message: %s", phase, who, reason)
            else:
                ok[f] = r
                if "timing" in r.content.metric_records:
                    self.node_compute += float(r.content["timing"]["compute-seconds"])
        return ok

    def bad_reply(self, f: int, phase: str, rnd: int, error: Exception) -> None:
        """Leave one node's reply out of one step, with the reason on record; the campaign goes on."""
        who = self.nodes[f].node_id if f in self.nodes else f"flower:{f}"
        reason = f"{type(error).__name__}: {error}"
        self.bad_replies.append({"node": who, "phase": phase, "round": rnd, "reason": reason})
        log.warning("[%s] round %d: left out the reply of node %s: %s", phase, rnd, who, reason)

    # --- phases ----------------------------------------------------------------------
    def discover(self) -> dict:
        want, deadline = self.cfg.expected_nodes, time.monotonic() + self.cfg.discovery_timeout
        ids: list[int] = []
        stable_since, last = time.monotonic(), -1
        while time.monotonic() < deadline:
            ids = sorted(self.grid.get_node_ids())
            if len(ids) != last:
                stable_since, last = time.monotonic(), len(ids)
            if (want and len(ids) >= want) or (not want and len(ids) >= self.cfg.min_nodes and time.monotonic() - stable_since > 2.0):
                break
            time.sleep(0.1)
        if len(ids) < max(self.cfg.min_nodes, 1):
            raise TimeoutError(f"only {len(ids)} node(s) connected within {self.cfg.discovery_timeout:g}s; need at least {self.cfg.min_nodes}")
        if want and len(ids) < want:
            log.warning("[discover] %d of %d expected nodes connected within %gs; going on without the rest", len(ids), want, self.cfg.discovery_timeout)
        self.flower_ids = ids
        return {"expected": want, "connected": len(ids)}

    def manifest(self) -> dict:
        replies = self.send("manifest", "query.manifest", {f: RecordDict() for f in self.flower_ids})
        self.specs = {}
        classes: list[str] = []
        check_identity = identity.identity_check(self.grid, self.store)  # an id bound to a registered SuperNode key is that key's alone
        for f, r in sorted(replies.items()):
            try:  # one malformed manifest costs that node, not the campaign
                info, specs, node_classes = phases.read_manifest(r.content["manifest"]["node-manifest"], f, self.specs, [n.node_id for n in self.nodes.values()])
                check_identity(info.node_id, f)
                versions = recovery.held_versions(r.content.config_records.get("adapter-versions", {}), info.modalities)
                held = " ".join(f"{p.group}:{p.role}" for p in info.parts)
                self.store.upsert_node(info.node_id, {mod: asdict(spec) for mod, spec in specs.items()}, hardware=f"parts={held}")
                self.store.report_node_status(info.node_id, "manifest", versions)
            except (KeyError, ValueError, TypeError) as e:
                self.missing[f"flower:{f}"] = {"phase": "manifest", "round": 0, "reason": f"bad manifest: {type(e).__name__}: {e}"}
                log.warning("[manifest] node flower:%s sent a bad manifest (%s: %s); leaving it out", f, type(e).__name__, e)
                continue
            self.nodes[f] = info
            for mod, spec in specs.items():
                self.specs.setdefault(mod, spec)
            classes = classes or node_classes
        self.classes = classes
        roles = Counter(r for n in self.nodes.values() for r in n.roles)
        self.results["nodes"] = {n.node_id: {"group": n.group, "role": n.role, "modalities": n.modalities, "windows": n.windows, "labelled": n.labelled,
                                             "parts": [asdict(p) for p in n.parts]}
                                 for n in sorted(self.nodes.values(), key=lambda n: n.node_id)}  # fmt: skip
        return {"nodes": len(self.nodes), "roles": dict(roles), "modalities": sorted(self.specs)}

    def pretrain(self) -> dict:
        self.global_states = phases.initial_encoders(self.specs, self.tower, self.cfg.seed, self.cfg.pretrain())
        held = {m for n in self.live("train").values() for m in n.modalities}
        for m in sorted(set(self.specs) - held):
            log.warning("[pretrain] no training node holds %s: its encoder stays at its initialisation", m)
        losses, first = [], 1
        if self.cfg.resume and (self.checkpoints / "pretrain.pt").exists():
            ck = torch.load(self.checkpoints / "pretrain.pt", weights_only=True)
            self.global_states, losses, first = ck["states"], ck["losses"], int(ck["round"]) + 1
            log.info("[pretrain] resuming after round %d of %d (checkpoint)", first - 1, self.cfg.pretrain_rounds)
        t_rounds = time.monotonic()
        for rnd in range(first, self.cfg.pretrain_rounds + 1):
            base = {"round": rnd, "rounds": self.cfg.pretrain_rounds, "epochs": self.cfg.local_epochs, "objective": self.cfg.pretrain_objective,
                    "batch-size": self.cfg.pretrain_batch_size, "lr": self.cfg.pretrain_lr, "seed": self.cfg.seed, **self._tower_cfg()}  # fmt: skip
            arrays = {m: {part: ArrayRecord(st) for part, st in self.global_states[m].items()} for m in held}  # shared by all messages
            contents = {}
            for f, n in self.live("train").items():
                if n.part("train").windows == 0:
                    continue
                rd = RecordDict({"config": ConfigRecord(base)})
                for m in n.modalities:
                    rd[f"encoder.{m}"], rd[f"head.{m}"] = arrays[m]["encoder"], arrays[m]["head"]
                contents[f] = rd
            replies = self.send("pretrain", "train.pretrain", contents, rnd)
            round_loss = {}
            for m in sorted(held):
                got = []  # (encoder state, head state, windows, loss) of each node whose reply checks out
                for f, r in replies.items():
                    if m not in self.nodes[f].modalities:
                        continue
                    try:
                        cap = self.nodes[f].part("train").windows
                        enc, n = aggregation.checked_update(r.content[f"encoder.{m}"].to_torch_state_dict(), self.global_states[m]["encoder"], r.content["metrics"][f"n.{m}"], cap, f"{m} encoder")
                        head, _ = aggregation.checked_update(r.content[f"head.{m}"].to_torch_state_dict(), self.global_states[m]["head"], n, cap, f"{m} head")
                        loss = float(r.content["metrics"][f"loss.{m}"])
                        if not np.isfinite(loss):
                            raise ValueError(f"{m} loss is {loss}")
                        got.append((enc, head, n, loss))
                    except (KeyError, TypeError, ValueError) as e:
                        self.bad_reply(f, "pretrain", rnd, e)
                if not got:
                    log.warning("[pretrain] round %d: no node returned %s; keeping the previous state", rnd, m)
                    continue
                w = [n for _, _, n, _ in got]
                for part, states in (("encoder", [enc for enc, _, _, _ in got]), ("head", [head for _, head, _, _ in got])):
                    if self.cfg.pretrain_strategy == "fedavg":
                        self.global_states[m][part] = aggregation.fedavg(states, w)
                    else:  # a robust one of Flower's (median, trimmed mean), coordinate by coordinate
                        strategy = aggregation.make_strategy(self.cfg.pretrain_strategy, self.cfg)
                        self.global_states[m][part] = aggregation.strategy_average(strategy, rnd, self.global_states[m][part], list(zip(states, w)))
                round_loss[m] = float(np.average([loss for *_, loss in got], weights=w))
            losses.append({"round": rnd, "nodes": len(replies), "loss": round_loss})
            log.info("[pretrain] round %d/%d: %d nodes, %s loss %s%s", rnd, self.cfg.pretrain_rounds, len(replies), self.cfg.pretrain_objective,
                     " ".join(f"{m}={v:.3f}" for m, v in round_loss.items()), time_left(t_rounds, rnd - first + 1, self.cfg.pretrain_rounds - first + 1))  # fmt: skip
            self._checkpoint("pretrain.pt", {"round": rnd, "states": self.global_states, "losses": losses})
        return {"rounds": losses, **({"resumed_after_round": first - 1} if first > 1 else {})}

    def _checkpoint(self, name: str, obj: Any) -> None:
        """Write a checkpoint atomically: a coordinator killed while writing leaves the previous one whole."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write(self.checkpoints / name, buf.getvalue())

    def collect(self) -> dict:
        if "collect" in self.done_before:  # the uploads are in the store; the nodes hold the encoders they were sent
            self.encoder_versions = {m: state_version(st["encoder"]) for m, st in self.global_states.items()}
            log.info("[collect] resumed: the uploads of the earlier run are in the store; nothing asked again")
            return {"resumed": True}
        base = {"campaign-id": self.campaign_id, "dtype": self.cfg.embedding_dtype, "signing-key-id": self.key_id, **self._tower_cfg()}
        if self.key_source == "generated":
            base["signing-public-key"] = public_key_of(self.key).hex()  # for simulated nodes only: see the module docstring
        encoders = {m: ArrayRecord(st["encoder"]) for m, st in self.global_states.items()}
        contents, allowed = {}, {}
        for f, n in self.live().items():
            upload = [r for r in n.roles if r in UPLOAD_ROLES]  # test windows stay on the node
            allowed[n.node_id] = {p.group for p in n.parts if p.role in upload}
            rd = RecordDict({"config": ConfigRecord({**base, "upload-roles": upload})})
            for m in n.modalities:
                rd[f"encoder.{m}"] = encoders[m]
            contents[f] = rd
        # in waves of collect-wave nodes: each wave's uploads are stored before the next is asked, so the
        # coordinator holds one wave's replies at a time, whatever the fleet's size
        rep, versions, answered, order = phases.CollectReport(), {}, 0, sorted(contents)
        for w in range(0, len(order), self.cfg.collect_wave):
            replies = self.send("collect", "query.collect", {f: contents[f] for f in order[w : w + self.cfg.collect_wave]}, w // self.cfg.collect_wave)
            uploads = []
            for f, r in replies.items():
                node_id = self.nodes[f].node_id
                uploads += [(node_id, bytes(b)) for b in r.content["upload"].get("batches", [])]
                for m, v in r.content["versions"].items():
                    versions.setdefault(m, Counter())[str(v)] += 1
            answered += len(replies)
            del replies
            rep.add(phases.collect(self.store, self.campaign_id, uploads, sorted(self.specs), expected_dim=self.tower.feature_dim, groups=allowed))
        self.encoder_versions = {m: c.most_common(1)[0][0] for m, c in versions.items()}
        for m, c in versions.items():
            if len(c) > 1:
                log.warning("[collect] nodes report different %s encoder versions %s", m, dict(c))
        return {**rep.to_dict(), "nodes": answered, "waves": -(-len(order) // self.cfg.collect_wave)}

    def bind(self) -> dict:
        sc = self.scenario
        self.binding = sc.binding
        self.groups = phases.group_data(self.store, self.campaign_id, list(self.live().values()))
        settings = phases.BindSettings(sc.binding, sc.shared, self.cfg.weighting(), self.cfg.bind_k, self.cfg.label_pairs_per_sample)
        self.bound = phases.bind(self.groups, settings, self.cfg.seed, self.device, self.store, self.campaign_id)
        for p in self.bound.info:
            log.info("[bind] %s <-> %s: %d pairs, mean similarity %.3f, mean weight %.2f", *p["groups"], p["pairs"], p["mean_similarity"], p["mean_weight"])
        self.results["pairs"] = self.bound.info
        return {"groups": {g: len(d) for g, d in self.groups.items()}, "pairs": self.bound.n_pairs}

    def grow(self) -> dict:
        train = [g for g in self.groups.values() if g.role == "train"]
        if not train:
            raise RuntimeError("no training group uploaded any window")
        self.natural = SampleSet.concat([g.samples() for g in train])
        encoders = {m: s["encoder"] for m, s in self.global_states.items()}
        self.model = phases.new_model(self.specs, self.tower, self.cfg.seed, encoders)
        ckdir = self.results_path.parent / "checkpoints"
        babel = {}
        if self.cfg.growth_plan:
            # Babel grows the trunk stage by stage on the groups' natural pairs; MMBind's
            # alignment below then binds, through the pseudo-pairs, what no node holds together.
            babel = phases.grow_babel(self.model, self.cfg.growth_plan, self.groups, self.cfg.align(), self.device, self.cfg.seed, self.store, self.campaign_id, ckdir,
                                     resume=self.cfg.resume)  # fmt: skip
            self.results["stages"] = babel["stages"]
        index = len(babel.get("stages", []))
        done = {st.index: st for st in self.store.stages(self.campaign_id)}.get(index)
        if self.cfg.resume and done is not None and done.status == "done" and Path(done.checkpoint_path).exists():
            self.model.load_state_dict(torch.load(done.checkpoint_path, weights_only=True))
            log.info("[grow] resumed: stage %d (mmbind) finished before; its checkpoint is loaded", index)
            return {**done.metrics, "resumed": True}
        out = phases.align_mmbind(self.model, self.natural, self.bound.samples, self.cfg.align(), self.device, self.cfg.seed, self.store, self.campaign_id, index)
        if babel:
            out = {"babel": {k: v for k, v in babel.items() if k != "stages"}, **out}
        ckdir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        atomic_write(ckdir / f"stage-{index}-mmbind.pt", buf.getvalue())
        self.store.record_stage(self.campaign_id, index, "mmbind", "done", metrics=out, checkpoint_path=str(ckdir / f"stage-{index}-mmbind.pt"))
        return out

    def head(self) -> dict:
        val = [g for g in self.groups.values() if g.role == "validation"]
        if not val:
            raise RuntimeError("no validation node uploaded labelled windows: the head's step cannot be chosen (the test set never is)")
        labelled = self.natural.take(np.flatnonzero(self.natural.label >= 0))
        if self.binding == "label" and self.bound.samples is not None:
            labelled = SampleSet.concat([labelled, self.bound.samples])
        if len(labelled) == 0:
            raise RuntimeError("no labelled training window was uploaded: the head cannot be fitted")
        self.n_classes = len(self.classes) or int(max(labelled.label.max(), max(g.labels.max() for g in val))) + 1
        val_set = SampleSet.concat([g.samples() for g in val])
        self.model, self.fusion_head, choice = phases.fit_head(self.model, labelled, val_set, self.n_classes, self.cfg.head(), self.device, self.cfg.seed)
        self.results["validation"] = choice
        return {"labelled": len(labelled), "validation": len(val_set), **choice}

    def finetune(self) -> dict:
        trainers = {f: n for f, n in self.live("train").items() if n.part("train").labelled > 0}
        validators = {f: n for f, n in self.live("validation").items() if n.part("validation").labelled > 0}
        if self.cfg.finetune_rounds == 0 or not trainers or not validators:
            why = "finetune-rounds is 0" if self.cfg.finetune_rounds == 0 else "no labelled training node" if not trainers else "no validation node"
            log.info("[finetune] skipped: %s; the head on features is the final model", why)
            return {"rounds": 0, "skipped": why}
        current = flat_state(self.model.cpu(), self.fusion_head.cpu())
        aggregator = aggregation.FinetuneAggregator(self.cfg)
        base = {**self.cfg.local_finetune().to_wire(), "seed": self.cfg.seed, **self._tower_cfg()}
        start = current
        best = {"round": 0, **self.score(current, validators, "validation", 0)}
        chosen, history = current, [dict(best)]
        best_tuned: tuple[dict, dict] | None = None  # the best fine-tuned round, whether or not it beats round 0
        log.info("[finetune] round 0 (head on features): validation accuracy %.3f macro-F1 %.3f", best["accuracy"], best["macro_f1"])
        draw = np.random.default_rng([self.cfg.seed, 0xF1])
        per_round = max(1, int(round(self.cfg.finetune_fraction * len(trainers))))
        ids = sorted(trainers)  # Flower node ids are 64-bit: draw positions, never the ids themselves (numpy would make them floats)
        t_rounds = time.monotonic()
        for rnd in range(1, self.cfg.finetune_rounds + 1):
            picked = [ids[i] for i in sorted(draw.choice(len(ids), size=per_round, replace=False))]  # FedAvg's client sampling
            contents = {f: RecordDict({"config": ConfigRecord({**base, "round": rnd}), "arrays": ArrayRecord(_for_node(current, trainers[f]))}) for f in picked}
            replies = self.send("finetune", "train.finetune", contents, rnd)
            got = []
            for f, r in replies.items():
                try:
                    sent = _for_node(current, trainers[f])
                    got.append(aggregation.checked_update(r.content["arrays"].to_torch_state_dict(), sent, r.content["metrics"]["num-examples"], trainers[f].part("train").labelled, "fine-tuned model"))
                except (KeyError, TypeError, ValueError) as e:
                    self.bad_reply(f, "finetune", rnd, e)
            if not got:
                log.warning("[finetune] round %d: no node returned a model; stopping", rnd)
                break
            current = aggregator.aggregate(rnd, current, got)
            score = {"round": rnd, "nodes": len(got), **self.score(current, validators, "validation", rnd)}
            history.append(score)
            log.info("[finetune] round %d/%d: %d nodes, validation accuracy %.3f macro-F1 %.3f%s", rnd, self.cfg.finetune_rounds, len(got),
                     score["accuracy"], score["macro_f1"], time_left(t_rounds, rnd, self.cfg.finetune_rounds))  # fmt: skip
            if best_tuned is None or score["macro_f1"] > best_tuned[0]["macro_f1"]:
                best_tuned = (score, current)
            if score["macro_f1"] > best["macro_f1"]:
                best, chosen = score, current
        if best["round"] > 0:
            self.model, self.fusion_head = model_from_flat(chosen, {m: self.specs[m] for m in self.model.modalities}, self.tower)
            self.finetuned = True
        record = {"strategy": self.cfg.finetune_strategy, "rounds": history, "chosen_round": best["round"]}
        # both paths on the test nodes, for the books: the choice above never saw these figures
        testers = {f: n for f, n in self.live("test").items() if n.part("test").labelled > 0}
        if testers:
            record["test"] = {"head_on_features": self.score(start, testers, "test", 0)}
            if best_tuned is not None:
                record["test"]["finetuned"] = {"round": best_tuned[0]["round"], **self.score(best_tuned[1], testers, "test", best_tuned[0]["round"])}
            for path, m in record["test"].items():
                log.info("[finetune] test, %s: accuracy %.3f macro-F1 %.3f", path, m["accuracy"], m["macro_f1"])
        self.results["finetune"] = record
        return {"strategy": self.cfg.finetune_strategy, "rounds": len(history) - 1, "chosen_round": best["round"], "val_macro_f1": best["macro_f1"]}

    def score(self, flat: dict, nodes: dict[int, NodeInfo], role: str, rnd: int) -> dict:
        """Pooled accuracy and macro-F1 of a candidate model on the given nodes' ``role`` windows (nothing installed)."""
        contents = {f: RecordDict({"config": ConfigRecord({"role": role, **self._tower_cfg()}), "arrays": ArrayRecord(_for_node(flat, n))}) for f, n in nodes.items()}
        replies = self.send(f"finetune-{role}", "query.validate", contents, rnd)
        if not replies:  # unscored: never chosen (NaN compares false), and the campaign goes on
            log.warning("[finetune] round %d: no %s node could score the model", rnd, role)
            return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
        conf = sum(np.asarray(r.content["metrics"]["confusion"], dtype=np.float64) for r in replies.values())
        k = int(round(np.sqrt(conf.size)))
        return {**confusion_metrics(conf.reshape(k, k)), "n": int(conf.sum())}

    def push(self) -> dict:
        mods = sorted(self.model.adapters)
        encoders = {}
        if self.finetuned:  # the encoders changed too: nodes install them first, and the bundles name their new versions
            encoders = {m: {k: v.detach().cpu() for k, v in self.model.encoders[m].state_dict().items()} for m in mods}
            self.encoder_versions = {m: state_version(st) for m, st in encoders.items()}
        floors = recovery.resume_numbering(self.store, mods, [self.store.node_status(n.node_id).adapter_versions for n in self.live().values()])
        bundles = phases.make_bundles(self.model, self.fusion_head, mods, self.store, self.campaign_id, self.key, self.key_id, self.classes, self.encoder_versions,
                                      self.rotations)  # fmt: skip
        blobs = {b.modality: b.SerializeToString(deterministic=True) for b in bundles}
        contents = {}
        for f, n in self.live().items():
            rd = RecordDict({"bundles": ConfigRecord({"bundles": [blobs[m] for m in n.modalities if m in blobs], "signing-key-id": self.key_id})})
            held = [m for m in n.modalities if m in encoders]
            if held:
                rd["encoders"] = ConfigRecord(self._tower_cfg())
                for m in held:
                    rd[f"encoder.{m}"] = ArrayRecord(encoders[m])
            contents[f] = rd
        replies = self.send("push", "train.apply", contents)
        applied, refused = 0, {}
        for f, r in replies.items():
            node = self.nodes[f]
            versions = {m: int(v) for m, v in r.content["applied"].items()}
            applied += int(set(versions) == {m for m in node.modalities if m in blobs})
            if r.content["rejected"]:
                refused[node.node_id] = dict(r.content["rejected"])
            self.store.report_node_status(node.node_id, "adapters-applied", versions)
        self.results["bundles"] = {b.modality: {"version": b.version, "bytes": len(blobs[b.modality]), "encoder_version": b.encoder_version} for b in bundles}
        return {"bundles": len(bundles), "nodes_applied": applied, "nodes_refused": refused, **({"numbering_resumed": floors} if floors else {})}

    def evaluate(self) -> dict:
        ask = RecordDict({"config": ConfigRecord({"role": "test"})})
        replies = self.send("evaluate", "evaluate", {f: ask for f, n in self.live("test").items() if n.part("test").labelled > 0})
        per_node = {}
        for f, r in replies.items():
            flat = r.content["metrics"]
            subsets = sorted({k.rsplit("/", 1)[0] for k in flat})
            per_node[self.nodes[f].node_id] = {s: {k: flat[f"{s}/{k}"] for k in ("accuracy", "macro_f1", "n", "confusion")} for s in subsets}
        if not per_node:
            raise RuntimeError("no test node reported metrics")
        acc = phases.summarise(per_node, self.n_classes)
        for s, m in acc.items():
            for k in ("accuracy", "macro_f1"):
                self.store.record_metric(self.campaign_id, "", k, m[k], subset=s)
        for node, res in per_node.items():
            for s, m in res.items():
                self.store.record_metric(self.campaign_id, node, "accuracy", float(m["accuracy"]), subset=s)
        self.results["accuracy"] = acc
        for s, m in acc.items():
            log.info("[evaluate] %-18s accuracy %.3f  macro-F1 %.3f  (%d windows, %d nodes)", s, m["accuracy"], m["macro_f1"], m["n"], len(m["nodes"]))
        return {"test_nodes": len(per_node)}

    def _tower_cfg(self) -> dict:
        return {f"tower.{k.replace('_', '-')}": int(v) for k, v in self.tower.to_dict().items()}


def _for_node(flat: dict, node: NodeInfo) -> dict:
    """The part of a flat model state a node can use: its modalities' blocks and the shared prototype."""
    return {k: v for k, v in flat.items() if block_of(k) in (*node.modalities, SHARED_BLOCK)}


def _brief(figures: dict) -> str:
    parts = [f"{k}={v}" for k, v in figures.items() if k != "seconds" and isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return "(" + ", ".join(parts) + ")" if parts else ""
