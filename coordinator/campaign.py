"""The phases of one campaign, each a plain function over a ``CampaignState``.

discover -> manifest -> pretrain (FedAvg per modality) -> collect -> bind ->
grow (MMBind's one stage, or a Babel growth plan, then MMBind) -> head ->
finetune (labelled nodes, all or a drawn share each round, train encoders and
adapters end to end under the head, which stays fixed unless finetune-head-lr
> 0; aggregated by a Flower strategy; the round kept is chosen on the
validation nodes) -> push -> evaluate.

A phase builds the messages for the nodes, exchanges them through
``st.send`` (``server_app.send``: nodes that fail are recorded missing), hands
the replies to the learning in ``coordinator.phases`` and
``coordinator.aggregation``, and returns its figures for the results. What it
learns it sets on the state, in the fields ``CampaignState`` declares.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from common.codec import public_key_of, state_version
from common.evaluate import confusion_metrics
from common.progress import time_left
from common.samples import SampleSet
from common.towers import SHARED_BLOCK, block_of, flat_state, model_from_flat
from coordinator import aggregation, identity, phases, recovery
from coordinator.phases import NodeInfo
from coordinator.state import CampaignState

UPLOAD_ROLES = ("train", "validation")  # whose windows' features go to the coordinator; test windows never do

log = logging.getLogger("edgebind.campaign")


def discover(st: CampaignState) -> dict:
    """Wait for the expected nodes (or, without a number, for the count to settle), at most ``discovery-timeout``."""
    cfg = st.cfg
    want, deadline = cfg.expected_nodes, time.monotonic() + cfg.discovery_timeout
    ids: list[int] = []
    stable_since, last = time.monotonic(), -1
    while time.monotonic() < deadline:
        ids = sorted(st.node_ids())
        if len(ids) != last:
            stable_since, last = time.monotonic(), len(ids)
        if (want and len(ids) >= want) or (not want and len(ids) >= cfg.min_nodes and time.monotonic() - stable_since > 2.0):
            break
        time.sleep(0.1)
    if len(ids) < max(cfg.min_nodes, 1):
        raise TimeoutError(f"only {len(ids)} node(s) connected within {cfg.discovery_timeout:g}s; need at least {cfg.min_nodes}")
    if want and len(ids) < want:
        log.warning("[discover] %d of %d expected nodes connected within %gs; going on without the rest", len(ids), want, cfg.discovery_timeout)
    st.flower_ids = ids
    return {"expected": want, "connected": len(ids)}


def manifest(st: CampaignState) -> dict:
    """Every node's ``NodeManifest``: who it is, its modalities' specs and the parts it holds; a bad one costs that node only."""
    replies = st.send("manifest", "query.manifest", {f: RecordDict() for f in st.flower_ids})
    st.specs = {}
    classes: list[str] = []
    check_identity = identity.identity_check(st.grid, st.store)  # an id bound to a registered SuperNode key is that key's alone
    for f, r in sorted(replies.items()):
        try:
            info, specs, node_classes = phases.read_manifest(r.content["manifest"]["node-manifest"], f, st.specs, [n.node_id for n in st.nodes.values()])
            check_identity(info.node_id, f)
            versions = recovery.held_versions(r.content.config_records.get("adapter-versions", {}), info.modalities)
            held = " ".join(f"{p.group}:{p.role}" for p in info.parts)
            st.store.upsert_node(info.node_id, {mod: asdict(spec) for mod, spec in specs.items()}, hardware=f"parts={held}")
            st.store.report_node_status(info.node_id, "manifest", versions)
        except (KeyError, ValueError, TypeError) as e:
            st.missing[f"flower:{f}"] = {"phase": "manifest", "round": 0, "reason": f"bad manifest: {type(e).__name__}: {e}"}
            log.warning("[manifest] node flower:%s sent a bad manifest (%s: %s); leaving it out", f, type(e).__name__, e)
            continue
        st.nodes[f] = info
        for mod, spec in specs.items():
            st.specs.setdefault(mod, spec)
        classes = classes or node_classes
    st.classes = classes
    roles = Counter(r for n in st.nodes.values() for r in n.roles)
    st.results["nodes"] = {n.node_id: {"group": n.group, "role": n.role, "modalities": n.modalities, "windows": n.windows, "labelled": n.labelled,
                                       "parts": [asdict(p) for p in n.parts]}
                           for n in sorted(st.nodes.values(), key=lambda n: n.node_id)}  # fmt: skip
    return {"nodes": len(st.nodes), "roles": dict(roles), "modalities": sorted(st.specs)}


REJOIN_TIMEOUT = 30.0  # seconds a returning node has to answer "who are you?" (at most round-timeout)


def rejoin(st: CampaignState, phase: str, rnd: int = 0) -> list[str]:
    """Missing nodes that are connected again take part from here on; their ids.

    A SuperNode that restarts (``edgebind-node up`` restarts it with back-off)
    comes back under a new Flower id. Before each round or phase that asks the
    nodes, any Flower id the campaign does not count among its live nodes is
    asked for its manifest (at most ``REJOIN_TIMEOUT`` s); one that names a
    node that went missing (not one refused for a bad manifest), passes the
    identity check and holds the same modalities and parts takes that node's
    place. What it missed stays on record in ``rejoined``; what it uploads is
    taken once, as from any node. Nobody is asked while no node is missing.
    """
    lost = {n.node_id: f for f, n in st.nodes.items() if n.node_id in st.missing}
    if not lost:
        return []
    live = st.live()
    candidates = sorted(set(st.node_ids()) - set(live))
    if not candidates:
        return []
    timeout = min(REJOIN_TIMEOUT, st.cfg.round_timeout)
    ask = RecordDict({"config": ConfigRecord({"rejoin": True})})
    replies = st.send(phase, "query.manifest", {f: ask for f in candidates}, rnd, timeout=timeout, record=False)
    check_identity = identity.identity_check(st.grid, st.store) if replies else None
    back = []
    for f, r in sorted(replies.items()):
        try:
            info, _, _ = phases.read_manifest(r.content["manifest"]["node-manifest"], f, st.specs, [n.node_id for n in live.values()])
        except (KeyError, ValueError, TypeError) as e:
            log.info("[%s] flower:%s answered with a manifest the campaign cannot take back (%s); not rejoined", phase, f, e)
            continue
        old = lost.get(info.node_id)
        if old is None:  # a newcomer, or a node left out for a bad manifest: it joins the next campaign
            continue
        was = st.nodes[old]
        if info.modalities != was.modalities or sorted(info.roles) != sorted(was.roles) or info.group != was.group:
            log.warning("[%s] node %s is back with other modalities or parts (%s, %s); not rejoined", phase, info.node_id, info.modalities, info.roles)
            continue
        try:
            check_identity(info.node_id, f)
        except ValueError as e:
            log.warning("[%s] flower:%s claims node %s: %s; not rejoined", phase, f, info.node_id, e)
            continue
        del st.nodes[old]
        st.nodes[f] = info
        st.rejoined.append({"node": info.node_id, "missed": st.missing.pop(info.node_id), "phase": phase, "round": rnd})
        back.append(info.node_id)
        log.info("[%s] node %s is back (flower:%s, was flower:%s); it takes part from round %d", phase, info.node_id, f, old, rnd)
    return back


def pretrain(st: CampaignState) -> dict:
    """FedAvg (or a robust Flower strategy) rounds of the self-supervised encoder objective, per modality, checkpointed each round."""
    cfg = st.cfg
    st.global_states = phases.initial_encoders(st.specs, st.tower, cfg.seed, cfg.pretrain())
    held = {m for n in st.live("train").values() for m in n.modalities}
    for m in sorted(set(st.specs) - held):
        log.warning("[pretrain] no training node holds %s: its encoder stays at its initialisation", m)
    losses, first = [], 1
    if cfg.resume and (st.checkpoints / "pretrain.pt").exists():
        ck = torch.load(st.checkpoints / "pretrain.pt", weights_only=True)
        st.global_states, losses, first = ck["states"], ck["losses"], int(ck["round"]) + 1
        log.info("[pretrain] resuming after round %d of %d (checkpoint)", first - 1, cfg.pretrain_rounds)
    t_rounds = time.monotonic()
    for rnd in range(first, cfg.pretrain_rounds + 1):
        rejoin(st, "pretrain", rnd)
        base = {"round": rnd, "rounds": cfg.pretrain_rounds, "epochs": cfg.local_epochs, "objective": cfg.pretrain_objective,
                "batch-size": cfg.pretrain_batch_size, "lr": cfg.pretrain_lr, "seed": cfg.seed, **st.tower_config()}  # fmt: skip
        arrays = {m: {part: ArrayRecord(s) for part, s in st.global_states[m].items()} for m in held}  # shared by all messages
        contents = {}
        for f, n in st.live("train").items():
            if n.part("train").windows == 0:
                continue
            rd = RecordDict({"config": ConfigRecord(base)})
            for m in n.modalities:
                rd[f"encoder.{m}"], rd[f"head.{m}"] = arrays[m]["encoder"], arrays[m]["head"]
            contents[f] = rd
        # each reply is checked and added to its modality's running mean as it arrives, then dropped (FedAvg), so
        # the coordinator holds one state per modality, whatever the fleet; a robust rule needs the round's states together
        streaming = cfg.pretrain_strategy == "fedavg"
        sums = {m: {"encoder": aggregation.RunningMean(), "head": aggregation.RunningMean()} for m in held}
        kept: dict[str, list] = {m: [] for m in held}  # (encoder, head, windows) of each good reply, robust rules only
        loss_sum, weight_sum = dict.fromkeys(held, 0.0), dict.fromkeys(held, 0.0)

        def take(f: int, r: Message) -> None:
            for m in sorted(held & set(st.nodes[f].modalities)):
                try:
                    cap = st.nodes[f].part("train").windows
                    enc, n = aggregation.checked_update(r.content[f"encoder.{m}"].to_torch_state_dict(), st.global_states[m]["encoder"], r.content["metrics"][f"n.{m}"], cap, f"{m} encoder")
                    head, _ = aggregation.checked_update(r.content[f"head.{m}"].to_torch_state_dict(), st.global_states[m]["head"], n, cap, f"{m} head")
                    loss = float(r.content["metrics"][f"loss.{m}"])
                    if not np.isfinite(loss):
                        raise ValueError(f"{m} loss is {loss}")
                except (KeyError, TypeError, ValueError) as e:
                    st.bad_reply(f, "pretrain", rnd, e)
                    continue
                if streaming:
                    sums[m]["encoder"].add(enc, n)
                    sums[m]["head"].add(head, n)
                else:
                    kept[m].append((enc, head, n))
                loss_sum[m] += loss * n
                weight_sum[m] += n

        replies = st.send("pretrain", "train.pretrain", contents, rnd, on_reply=take)
        round_loss = {}
        for m in sorted(held):
            if weight_sum[m] == 0:
                log.warning("[pretrain] round %d: no node returned %s; keeping the previous state", rnd, m)
                continue
            for part in ("encoder", "head"):
                if streaming:
                    st.global_states[m][part] = sums[m][part].result()
                else:  # a robust one of Flower's (median, trimmed mean), coordinate by coordinate
                    states = [(enc if part == "encoder" else head, n) for enc, head, n in kept[m]]
                    strategy = aggregation.make_strategy(cfg.pretrain_strategy, cfg)
                    st.global_states[m][part] = aggregation.strategy_average(strategy, rnd, st.global_states[m][part], states)
            round_loss[m] = loss_sum[m] / weight_sum[m]
        losses.append({"round": rnd, "nodes": len(replies), "loss": round_loss})
        log.info("[pretrain] round %d/%d: %d nodes, %s loss %s%s", rnd, cfg.pretrain_rounds, len(replies), cfg.pretrain_objective,
                 " ".join(f"{m}={v:.3f}" for m, v in round_loss.items()), time_left(t_rounds, rnd - first + 1, cfg.pretrain_rounds - first + 1))  # fmt: skip
        st.checkpoint("pretrain.pt", {"round": rnd, "states": st.global_states, "losses": losses})
    return {"rounds": losses, **({"resumed_after_round": first - 1} if first > 1 else {})}


def collect(st: CampaignState) -> dict:
    """The nodes encode their train and validation windows with the pretrained encoders and upload them, in waves."""
    cfg = st.cfg
    if "collect" in st.done_before:  # the uploads are in the store; the nodes hold the encoders they were sent
        st.encoder_versions = {m: state_version(s["encoder"]) for m, s in st.global_states.items()}
        log.info("[collect] resumed: the uploads of the earlier run are in the store; nothing asked again")
        return {"resumed": True}
    rejoin(st, "collect")
    base = {"campaign-id": st.campaign_id, "dtype": cfg.embedding_dtype, "signing-key-id": st.key_id, **st.tower_config()}
    if st.key_source == "generated":
        base["signing-public-key"] = public_key_of(st.key).hex()  # for simulated nodes only: see server_app's docstring
    encoders = {m: ArrayRecord(s["encoder"]) for m, s in st.global_states.items()}
    contents, allowed, quotas = {}, {}, {}
    for f, n in st.live().items():
        upload = [r for r in n.roles if r in UPLOAD_ROLES]  # test windows stay on the node
        allowed[n.node_id] = {p.group for p in n.parts if p.role in upload}
        # a node uploads at most the windows its manifest announced, per group and modality (its batches name their group)
        quotas[n.node_id] = {p.group: p.windows for p in n.parts if p.role in upload}
        rd = RecordDict({"config": ConfigRecord({**base, "upload-roles": upload})})
        for m in n.modalities:
            rd[f"encoder.{m}"] = encoders[m]
        contents[f] = rd
    # in waves of collect-wave nodes: each wave's uploads are stored before the next is asked, so the
    # coordinator holds one wave's replies at a time, whatever the fleet's size
    rep, versions, answered, order = phases.CollectReport(), {}, 0, sorted(contents)
    for w in range(0, len(order), cfg.collect_wave):
        replies = st.send("collect", "query.collect", {f: contents[f] for f in order[w : w + cfg.collect_wave]}, w // cfg.collect_wave)
        uploads = []
        for f, r in replies.items():
            node_id = st.nodes[f].node_id
            uploads += [(node_id, bytes(b)) for b in r.content["upload"].get("batches", [])]
            for m, v in r.content["versions"].items():
                versions.setdefault(m, Counter())[str(v)] += 1
        answered += len(replies)
        del replies
        rep.add(phases.collect(st.store, st.campaign_id, uploads, sorted(st.specs), expected_dim=st.tower.feature_dim, groups=allowed, quotas=quotas))
    st.encoder_versions = {m: c.most_common(1)[0][0] for m, c in versions.items()}
    for m, c in versions.items():
        if len(c) > 1:
            log.warning("[collect] nodes report different %s encoder versions %s", m, dict(c))
    return {**rep.to_dict(), "nodes": answered, "waves": -(-len(order) // cfg.collect_wave)}


def bind(st: CampaignState) -> dict:
    """The groups' natural samples from the store, and MMBind's pairs across every two training groups."""
    sc, cfg = st.scenario, st.cfg
    st.binding = sc.binding
    st.groups = phases.group_data(st.store, st.campaign_id, list(st.live().values()))
    settings = phases.BindSettings(sc.binding, sc.shared, cfg.weighting(), cfg.bind_k, cfg.label_pairs_per_sample)
    st.bound = phases.bind(st.groups, settings, cfg.seed, st.device, st.store, st.campaign_id)
    for p in st.bound.info:
        log.info("[bind] %s <-> %s: %d pairs, mean similarity %.3f, mean weight %.2f", *p["groups"], p["pairs"], p["mean_similarity"], p["mean_weight"])
    st.results["pairs"] = st.bound.info
    return {"groups": {g: len(d) for g, d in st.groups.items()}, "pairs": st.bound.n_pairs}


def grow(st: CampaignState) -> dict:
    """Babel's stages (with a growth plan), then MMBind's alignment stage; each stage checkpointed, so a resumed run loads it."""
    cfg = st.cfg
    train = [g for g in st.groups.values() if g.role == "train"]
    if not train:
        raise RuntimeError("no training group uploaded any window")
    st.natural = SampleSet.concat([g.samples() for g in train])
    encoders = {m: s["encoder"] for m, s in st.global_states.items()}
    st.model = phases.new_model(st.specs, st.tower, cfg.seed, encoders)
    ckdir = st.checkpoints
    babel = {}
    if cfg.growth_plan:
        # Babel grows the trunk stage by stage on the groups' natural pairs; MMBind's
        # alignment below then binds, through the pseudo-pairs, what no node holds together.
        babel = phases.grow_babel(st.model, cfg.growth_plan, st.groups, cfg.align(), st.device, cfg.seed, st.store, st.campaign_id, ckdir,
                                  resume=cfg.resume)  # fmt: skip
        st.results["stages"] = babel["stages"]
    index = len(babel.get("stages", []))
    done = {s.index: s for s in st.store.stages(st.campaign_id)}.get(index)
    if cfg.resume and done is not None and done.status == "done" and Path(done.checkpoint_path).exists():
        st.model.load_state_dict(torch.load(done.checkpoint_path, weights_only=True))
        log.info("[grow] resumed: stage %d (mmbind) finished before; its checkpoint is loaded", index)
        return {**done.metrics, "resumed": True}
    out = phases.align_mmbind(st.model, st.natural, st.bound.samples, cfg.align(), st.device, cfg.seed, st.store, st.campaign_id, index)
    if babel:
        out = {"babel": {k: v for k, v in babel.items() if k != "stages"}, **out}
    path = ckdir / f"stage-{index}-mmbind.pt"
    st.checkpoint(path.name, st.model.state_dict())
    st.store.record_stage(st.campaign_id, index, "mmbind", "done", metrics=out, checkpoint_path=str(path))
    return out


def head(st: CampaignState) -> dict:
    """The few-label head on uploaded features (labelled natural samples, and label-bound pairs); its step chosen on validation."""
    val = [g for g in st.groups.values() if g.role == "validation"]
    if not val:
        raise RuntimeError("no validation node uploaded labelled windows: the head's step cannot be chosen (the test set never is)")
    labelled = st.natural.take(np.flatnonzero(st.natural.label >= 0))
    if st.binding == "label" and st.bound.samples is not None:
        labelled = SampleSet.concat([labelled, st.bound.samples])
    if len(labelled) == 0:
        raise RuntimeError("no labelled training window was uploaded: the head cannot be fitted")
    st.n_classes = len(st.classes) or int(max(labelled.label.max(), max(g.labels.max() for g in val))) + 1
    ck = st.checkpoints / "head.pt"
    if st.cfg.resume and "head" in st.done_before and ck.exists():  # fitted before the kill: the same head, not fitted again
        saved = torch.load(ck, weights_only=True)
        st.model, st.fusion_head = model_from_flat(saved["state"], {m: st.specs[m] for m in st.model.modalities}, st.tower)
        report = json.loads(saved["report"])
        st.results["validation"] = report["choice"]
        log.info("[head] resumed: fitted before; its checkpoint is loaded")
        return {**report["figures"], "resumed": True}
    val_set = SampleSet.concat([g.samples() for g in val])
    # self-training reads what alignment read: the uploaded windows, and the sensor-bound pairs
    unlabelled = st.natural if st.binding != "sensor" or st.bound.samples is None else SampleSet.concat([st.natural, st.bound.samples])
    st.model, st.fusion_head, choice = phases.fit_head(st.model, labelled, val_set, st.n_classes, st.cfg.head(), st.device, st.cfg.seed, unlabelled=unlabelled)
    st.results["validation"] = choice
    figures = {"labelled": len(labelled), "validation": len(val_set), **choice}
    report = json.dumps({"choice": choice, "figures": figures}, default=float)  # plain text: numpy scalars become floats
    st.checkpoint(ck.name, {"state": flat_state(st.model, st.fusion_head), "report": report})
    return figures


def finetune(st: CampaignState) -> dict:
    """Federated fine-tuning rounds on the labelled training nodes; the round kept is the best on the validation nodes."""
    cfg = st.cfg
    if cfg.finetune_rounds > 0:
        rejoin(st, "finetune")
    trainers = {f: n for f, n in st.live("train").items() if n.part("train").labelled > 0}
    validators = {f: n for f, n in st.live("validation").items() if n.part("validation").labelled > 0}
    if cfg.finetune_rounds == 0 or not trainers or not validators:
        why = "finetune-rounds is 0" if cfg.finetune_rounds == 0 else "no labelled training node" if not trainers else "no validation node"
        log.info("[finetune] skipped: %s; the head on features is the final model", why)
        return {"rounds": 0, "skipped": why}
    aggregator = aggregation.FinetuneAggregator(cfg)
    base = {**cfg.local_finetune().to_wire(), "seed": cfg.seed, **st.tower_config()}
    draw = np.random.default_rng([cfg.seed, 0xF1])
    per_round = max(1, int(round(cfg.finetune_fraction * len(trainers))))
    ids = sorted(trainers)  # Flower node ids are 64-bit: draw positions, never the ids themselves (numpy would make them floats)
    first, stopped = 1, False
    if cfg.resume and (st.checkpoints / "finetune.pt").exists():  # the rounds an earlier run finished: not asked again
        ck = torch.load(st.checkpoints / "finetune.pt", weights_only=True)
        start, current, chosen, best, history = ck["start"], ck["current"], ck["chosen"], ck["best"], ck["history"]
        best_tuned = (ck["best_tuned"]["scored"], ck["best_tuned"]["state"]) if ck["best_tuned"] else None
        aggregator.load_state_dict(ck["aggregator"])
        first, stopped = int(ck["round"]) + 1, bool(ck["stopped"])
        for _ in range(1, first):  # the same draws as before the kill: round r picks what it picked then
            draw.choice(len(ids), size=per_round, replace=False)
        log.info("[finetune] resuming after round %d of %d (checkpoint)%s", first - 1, cfg.finetune_rounds, "; it had stopped" if stopped else "")
    else:
        current = flat_state(st.model.cpu(), st.fusion_head.cpu())
        start = current
        best = {"round": 0, **score(st, current, validators, "validation", 0)}
        chosen, history = current, [dict(best)]
        best_tuned = None  # the best fine-tuned round, whether or not it beats round 0
        log.info("[finetune] round 0 (head on features): validation accuracy %.3f macro-F1 %.3f", best["accuracy"], best["macro_f1"])

    def save(rnd: int, stopped: bool = False) -> None:
        st.checkpoint("finetune.pt", {
            "round": rnd, "stopped": stopped, "start": start, "current": current, "chosen": chosen, "best": best, "history": history,
            "best_tuned": {"scored": best_tuned[0], "state": best_tuned[1]} if best_tuned else None, "aggregator": aggregator.state_dict(),
        })  # fmt: skip

    t_rounds = time.monotonic()
    for rnd in range(first, cfg.finetune_rounds + 1):
        if stopped:
            break
        picked = [ids[i] for i in sorted(draw.choice(len(ids), size=per_round, replace=False))]  # FedAvg's client sampling
        arrays = records_for(current, {f: trainers[f] for f in picked})
        contents = {f: RecordDict({"config": ConfigRecord({**base, "round": rnd}), "arrays": arrays[f]}) for f in picked}
        # each reply is checked and taken into its blocks' running means as it arrives, then dropped (the robust
        # rules keep the round's replies): the coordinator holds about one model per block, not one per node
        aggregator.begin(current)
        taken = 0

        def take(f: int, r: Message) -> None:
            nonlocal taken
            try:
                sent = for_node(current, trainers[f])
                aggregator.add(*aggregation.checked_update(r.content["arrays"].to_torch_state_dict(), sent, r.content["metrics"]["num-examples"], trainers[f].part("train").labelled, "fine-tuned model"))
            except (KeyError, TypeError, ValueError) as e:
                st.bad_reply(f, "finetune", rnd, e)
                return
            taken += 1

        st.send("finetune", "train.finetune", contents, rnd, on_reply=take)
        if not taken:
            log.warning("[finetune] round %d: no node returned a model; stopping", rnd)
            save(rnd - 1, stopped=True)
            break
        current = aggregator.finish(rnd)
        scored = {"round": rnd, "nodes": taken, **score(st, current, validators, "validation", rnd)}
        history.append(scored)
        log.info("[finetune] round %d/%d: %d nodes, validation accuracy %.3f macro-F1 %.3f%s", rnd, cfg.finetune_rounds, taken,
                 scored["accuracy"], scored["macro_f1"], time_left(t_rounds, rnd, cfg.finetune_rounds))  # fmt: skip
        if best_tuned is None or scored["macro_f1"] > best_tuned[0]["macro_f1"]:
            best_tuned = (scored, current)
        if scored["macro_f1"] > best["macro_f1"]:
            best, chosen = scored, current
        save(rnd)
    if best["round"] > 0 or first > 1:  # a resumed run takes the model from the checkpoint, not from its own head phase
        st.model, st.fusion_head = model_from_flat(chosen, {m: st.specs[m] for m in st.model.modalities}, st.tower)
        st.finetuned = best["round"] > 0
    record = {"strategy": cfg.finetune_strategy, "rounds": history, "chosen_round": best["round"], **({"resumed_after_round": first - 1} if first > 1 else {})}
    # both paths on the test nodes, for the books: the choice above never saw these figures
    testers = {f: n for f, n in st.live("test").items() if n.part("test").labelled > 0}
    if testers:
        record["test"] = {"head_on_features": score(st, start, testers, "test", 0)}
        if best_tuned is not None:
            record["test"]["finetuned"] = {"round": best_tuned[0]["round"], **score(st, best_tuned[1], testers, "test", best_tuned[0]["round"])}
        for path, m in record["test"].items():
            log.info("[finetune] test, %s: accuracy %.3f macro-F1 %.3f", path, m["accuracy"], m["macro_f1"])
    st.results["finetune"] = record
    return {"strategy": cfg.finetune_strategy, "rounds": len(history) - 1, "chosen_round": best["round"], "val_macro_f1": best["macro_f1"]}


def score(st: CampaignState, flat: dict, nodes: dict[int, NodeInfo], role: str, rnd: int) -> dict:
    """Pooled accuracy and macro-F1 of a candidate model on the given nodes' ``role`` windows (nothing installed)."""
    arrays = records_for(flat, nodes)
    contents = {f: RecordDict({"config": ConfigRecord({"role": role, **st.tower_config()}), "arrays": arrays[f]}) for f in nodes}
    replies = st.send(f"finetune-{role}", "query.validate", contents, rnd)
    if not replies:  # unscored: never chosen (NaN compares false), and the campaign goes on
        log.warning("[finetune] round %d: no %s node could score the model", rnd, role)
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    conf = sum(np.asarray(r.content["metrics"]["confusion"], dtype=np.float64) for r in replies.values())
    k = int(round(np.sqrt(conf.size)))
    return {**confusion_metrics(conf.reshape(k, k)), "n": int(conf.sum())}


def push(st: CampaignState) -> dict:
    """Signed, versioned AdapterBundles to every live node (after fine-tuning, its new encoders first)."""
    rejoin(st, "push")  # a node back by now gets the campaign's adapters too
    mods = sorted(st.model.adapters)
    encoders = {}
    if st.finetuned:  # the encoders changed too: nodes install them first, and the bundles name their new versions
        encoders = {m: {k: v.detach().cpu() for k, v in st.model.encoders[m].state_dict().items()} for m in mods}
        st.encoder_versions = {m: state_version(s) for m, s in encoders.items()}
    floors = recovery.resume_numbering(st.store, mods, [st.store.node_status(n.node_id).adapter_versions for n in st.live().values()])
    bundles = phases.make_bundles(st.model, st.fusion_head, mods, st.store, st.campaign_id, st.key, st.key_id, st.classes, st.encoder_versions, st.rotations)
    blobs = {b.modality: b.SerializeToString(deterministic=True) for b in bundles}
    contents = {}
    for f, n in st.live().items():
        rd = RecordDict({"bundles": ConfigRecord({"bundles": [blobs[m] for m in n.modalities if m in blobs], "signing-key-id": st.key_id})})
        held = [m for m in n.modalities if m in encoders]
        if held:
            rd["encoders"] = ConfigRecord(st.tower_config())
            for m in held:
                rd[f"encoder.{m}"] = ArrayRecord(encoders[m])
        contents[f] = rd
    replies = st.send("push", "train.apply", contents)
    applied, refused = 0, {}
    for f, r in replies.items():
        node = st.nodes[f]
        versions = {m: int(v) for m, v in r.content["applied"].items()}
        applied += int(set(versions) == {m for m in node.modalities if m in blobs})
        if r.content["rejected"]:
            refused[node.node_id] = dict(r.content["rejected"])
        st.store.report_node_status(node.node_id, "adapters-applied", versions)
    st.results["bundles"] = {b.modality: {"version": b.version, "bytes": len(blobs[b.modality]), "encoder_version": b.encoder_version} for b in bundles}
    return {"bundles": len(bundles), "nodes_applied": applied, "nodes_refused": refused, **({"numbering_resumed": floors} if floors else {})}


def evaluate(st: CampaignState) -> dict:
    """The test nodes score the model they now serve, per modality subset; pooled and recorded."""
    ask = RecordDict({"config": ConfigRecord({"role": "test"})})
    replies = st.send("evaluate", "evaluate", {f: ask for f, n in st.live("test").items() if n.part("test").labelled > 0})
    per_node = {}
    for f, r in replies.items():
        flat = r.content["metrics"]
        subsets = sorted({k.rsplit("/", 1)[0] for k in flat})
        per_node[st.nodes[f].node_id] = {s: {k: flat[f"{s}/{k}"] for k in ("accuracy", "macro_f1", "n", "confusion")} for s in subsets}
    if not per_node:
        raise RuntimeError("no test node reported metrics")
    acc = phases.summarise(per_node, st.n_classes)
    for s, m in acc.items():
        for k in ("accuracy", "macro_f1"):
            st.store.record_metric(st.campaign_id, "", k, m[k], subset=s)
    for node, res in per_node.items():
        for s, m in res.items():
            st.store.record_metric(st.campaign_id, node, "accuracy", float(m["accuracy"]), subset=s)
    st.results["accuracy"] = acc
    for s, m in acc.items():
        log.info("[evaluate] %-18s accuracy %.3f  macro-F1 %.3f  (%d windows, %d nodes)", s, m["accuracy"], m["macro_f1"], m["n"], len(m["nodes"]))
    return {"test_nodes": len(per_node)}


def for_node(flat: dict, node: NodeInfo) -> dict:
    """The part of a flat model state a node can use: its modalities' blocks and the shared prototype."""
    return {k: v for k, v in flat.items() if block_of(k) in (*node.modalities, SHARED_BLOCK)}


def records_for(flat: dict, nodes: dict[int, NodeInfo]) -> dict[int, ArrayRecord]:
    """Each node's part of a flat model state as an ArrayRecord, made once per set of modalities and shared by the
    nodes holding that set: a round's messages cost the coordinator one serialised model per kind of node, not one
    per node (at 1000 nodes that was a copy of the model per node, held until the round ended)."""
    made: dict[tuple[str, ...], ArrayRecord] = {}
    out = {}
    for f, n in nodes.items():
        key = tuple(sorted(n.modalities))
        if key not in made:
            made[key] = ArrayRecord(for_node(flat, n))
        out[f] = made[key]
    return out
