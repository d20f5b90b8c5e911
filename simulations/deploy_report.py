"""What a local deployment reports: what each node did and what the campaign gave (JSON and text), which protections
were on, ``deployment.json`` for an operator, and the tally of the nodes' prediction events."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from common.files import write_json

if TYPE_CHECKING:
    from simulations.deploy_local import Deployment


def summary_of(d: Deployment) -> dict[str, Any]:
    """What a finished deployment did: per node what it replayed, ingested, uploaded, holds and runs; the campaign's figures."""
    from coordinator.cli import status as coordinator_status
    from coordinator.store import open_store

    res = d.results
    cstat = coordinator_status(d.coordinator_info["store"], [d.campaign_id])["campaigns"][d.campaign_id]
    arrived: dict[str, dict[str, int]] = {}  # node -> modality -> embeddings the coordinator stored
    by_group: dict[str, dict[str, int]] = {}  # node -> group -> windows stored (most of any modality)
    own = {p.node_id: p.group for p in d.plans}
    with open_store(d.coordinator_info["store"]) as cs:
        for m in sorted({m for p in d.plans for m in p.modalities}):
            e = cs.embeddings(d.campaign_id, m)
            for nid, k in Counter(e.node_ids.tolist()).items():
                arrived.setdefault(str(nid), {})[m] = int(k)
            for (nid, g), k in Counter(zip(e.node_ids.tolist(), e.groups.tolist())).items():
                g = g or own.get(nid, "")
                by_group.setdefault(str(nid), {})[g] = max(by_group.get(str(nid), {}).get(g, 0), int(k))
    collect = res["phases"].get("collect", {})
    nodes = []
    for p in d.plans:
        g, e = d.ingested[p.node_id], d.events.get(p.node_id, {})
        nodes.append({
            "node_id": p.node_id, "group": p.group, "role": p.role, "modalities": p.modalities, "subjects": p.subjects,
            "parts": [{"group": q.group, "role": q.role, "subjects": q.subjects} for q in p.parts],
            "windows_replayed": g["expected"], "windows_ingested": g["windows"], "frames_ingested": g["frames"],
            "labelled_windows": g["labelled"], "embeddings_uploaded": arrived.get(p.node_id, {}),
            "encoders": g.get("encoders", {}), "adapters": d.expected[p.node_id], "registry": d.registry_status[p.node_id],
            "loaded": {"adapter_versions": e.get("adapter_versions", {}), "predictions": e.get("events", 0),
                       "labels": dict(e.get("labels", {}))},
        })  # fmt: skip
    pairs = [{"groups": i["groups"], "pairs": int(i["pairs"]), "mean_similarity": i.get("mean_similarity"), "mean_weight": i.get("mean_weight")}
             for i in res.get("pairs", [])]  # fmt: skip
    return {
        "state": "done", "scenario": d.sc.name, "dataset": d.dataset, "seed": d.seed, "quick": d.quick,
        "windows_per_node": d.windows, "campaign_id": d.campaign_id, "campaign_seconds": round(res.get("seconds", 0.0), 1),
        "addresses": {"broker": d.broker, "superlink": d.superlink, "registry": d.registry},
        "nodes": nodes, "uploads_by_group": by_group,
        "embeddings": {"batches": int(collect.get("stored", 0)), "windows": {m: int(v) for m, v in collect.get("windows", {}).items()},
                       "bytes": int(collect.get("bytes", 0))},
        "pairs": {"total": sum(x["pairs"] for x in pairs), "by_groups": pairs},
        "stages": cstat["stages"],
        "adapters": {m: int(b["version"]) for m, b in res.get("bundles", {}).items()},
        "validation": res.get("validation", {}),
        "accuracy": {s: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"], "nodes": m["nodes"]}
                     for s, m in res.get("accuracy", {}).items()},
        "phases": {k: v.get("seconds") for k, v in res.get("phases", {}).items()},
        "steps": d.steps, "results": str(d.results_path), "logs": str(d.out / "logs"), "protections": protections(d),
    }  # fmt: skip


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"deploy-local: {s['scenario']} on {s['dataset']}, {len(s['nodes'])} nodes, campaign {s['campaign_id']} "
             f"({s['campaign_seconds']:.0f} s of {sum(s['steps'].values()):.0f} s)"]  # fmt: skip
    lines.append(f"{'node':<18}{'role':<22}{'modalities':<16}{'windows':>9}{'labels':>7}{'uploaded':>9}  {'adapters':<22}{'loaded (predictions)'}")
    for n in s["nodes"]:
        ad = " ".join(f"{m}:v{v}" for m, v in sorted(n["adapters"].items()))
        ok = "yes" if n["loaded"]["adapter_versions"] == n["adapters"] else "NO"
        lines.append(f"{n['node_id']:<18}{n['role']:<22}{'+'.join(n['modalities']):<16}{n['windows_ingested']:>5}/{n['windows_replayed']:<3}"
                     f"{n['labelled_windows']:>7}{sum(n['embeddings_uploaded'].values()):>9}  {ad:<22}{ok} ({n['loaded']['predictions']})")  # fmt: skip
    e = s["embeddings"]
    lines.append(f"embeddings uploaded: {e['batches']} batches, {' '.join(f'{m}={v}' for m, v in sorted(e['windows'].items()))} windows, {e['bytes'] / 1024:.0f} KiB")
    lines.append("pairs bound: " + (", ".join(f"{'~'.join(p['groups'])} {p['pairs']}" for p in s["pairs"]["by_groups"]) or "none"))
    lines.append("stages grown: " + (", ".join(f"{st['name']} ({st['status']})" for st in s["stages"]) or "none"))
    lines.append("adapters pushed: " + " ".join(f"{m}:v{v}" for m, v in sorted(s["adapters"].items())))
    lines.append("accuracy on the test node(s):")
    for subset, m in s["accuracy"].items():
        lines.append(f"  {subset:<20} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  ({m['n']} windows, {', '.join(m['nodes'])})")
    return "\n".join(lines)


def protections(d: Deployment) -> dict[str, bool]:
    """Which links and artefacts of the deployment are protected (docs/security.md says what is not yet)."""
    return {"superlink_tls": not d.insecure, "signed_bundles": True, "signing_key_in_0600_file": True,
            "registry_mutual_tls": not d.insecure, "supernode_auth": not d.insecure,
            "mqtt_tls_and_acl": not d.insecure}  # fmt: skip


def write_deployment(d: Deployment, state: str) -> None:
    """``out/deployment.json``: every endpoint and each node's files, for an operator or a script."""
    host_port = lambda a: {"host": a.rsplit(":", 1)[0], "port": int(a.rsplit(":", 1)[1])}  # noqa: E731
    write_json(d.out / "deployment.json", {
        "state": state, "campaign_id": d.campaign_id,
        "broker": host_port(d.broker), "superlink": host_port(d.superlink), "registry": host_port(d.registry),
        "protections": protections(d), "ca_certificate": None if d.insecure else str(d.pki / "ca.pem"),
        "coordinator": {"dir": str(d.out / "coordinator"), "signing_key_file": str(d.out / "coordinator" / "signing.key"),
                        "signing_key_id": d.key_id, "signing_public_key": d.public_key},
        "nodes": [{"node_id": p.node_id, "modalities": p.modalities, "group": p.group, "role": p.role, "store": str(p.store),
                   "state_dir": str(p.state_dir), "log": str(p.log),
                   "credentials": None if d.insecure else {"cert": str(d.pki / f"node-{p.node_id}.pem"), "key": str(d.pki / f"node-{p.node_id}.key")}}
                  for p in d.plans],
        "logs": str(d.out / "logs"),
    })  # fmt: skip


def listen_events(host: str, port: int, events: dict[str, dict[str, Any]], lock: threading.Lock, tls: dict[str, str] | None = None):
    """Tally every node's prediction events (``edgebind/+/events``) into ``events`` (node id -> counts, the adapter
    versions and modalities of its newest event, labels predicted); returns the running MQTT client."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from node_agent.ingest import use_tls

    def on_connect(client, _u, _f, reason, _p):
        if not reason.is_failure:
            client.subscribe("edgebind/+/events", qos=1)

    def on_message(_c, _u, msg):
        try:
            e = json.loads(msg.payload)
            nid = str(e["node_id"])
            with lock:
                rec = events.setdefault(nid, {"events": 0, "labels": Counter(), "adapter_versions": {}, "modalities": []})
                rec["events"] += 1
                rec["adapter_versions"] = {str(k): int(v) for k, v in e.get("adapter_versions", {}).items()}
                rec["modalities"] = list(e.get("modalities", []))
                if "label" in e:
                    rec["labels"][str(e["label"])] += 1
        except (ValueError, KeyError, TypeError):
            pass

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgebind-deploy-local-events-{os.getpid()}", clean_session=True)
    c.on_connect, c.on_message = on_connect, on_message
    use_tls(c, tls)  # the operator's certificate: the ACL lets it read every node's events
    c.connect_async(host, port)
    c.loop_start()
    return c
