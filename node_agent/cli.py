"""``edgebind-node``: run a sensor node (ingest, Flower SuperNode, inference) and replay data to it.

    edgebind-node ingest --node-id n1 --broker 127.0.0.1:1883 --store n1.db --modalities gyro,lin_acc
    edgebind-node up     --node-id n1 --broker 127.0.0.1:1883 --store n1.db --modalities gyro,lin_acc \\
                         --superlink 127.0.0.1:9093 --state-dir n1-state (--root-certificates ca.pem --auth-key KEY | --insecure) \\
                         [--registry 127.0.0.1:9096 --cert node-n1.pem --key node-n1.key] \\
                         [--group G --role train] [--validation-subjects 4,9] [--test-subjects 2,11]
    edgebind-node infer  --state-dir n1-state --node-id n1 (--npz windows.npz | --store n1.db) [--publish BROKER]
    edgebind-node status --store n1.db --state-dir n1-state
    edgebind-node replay --broker 127.0.0.1:1883 --node-id n1 --dataset hapt --subjects 1,2 --modalities gyro,lin_acc

Each subcommand is a thin wrapper over the function of the same name here,
which tests and the local deployment call directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import command, parser as cli_parser, tls_or_insecure
from common.processes import Restarting, free_port, setup_logging, stop_on_signals
from node_agent.ingest import DEFAULT_MAX_PAYLOAD, Ingest, IngestStats, client_id_for, node_specs, parse_broker
from node_agent.publish import Publisher, replay_dataset
from node_agent.runtime import Inference, NodeRuntime, load_keys
from node_agent.store import open_store

log = logging.getLogger("edgebind.node")



# --- the library functions behind the subcommands ---------------------------------------


def ingest(
    node_id: str,
    broker: str,
    store: str,
    modalities: Sequence[str],
    *,
    window: int = 128,
    rate_hz: float = 50.0,
    cut_every: float = 5.0,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    stop: threading.Event | None = None,
    tls: dict[str, str] | None = None,
) -> IngestStats:
    """Take this node's sensor frames from MQTT into its store until ``stop`` is set (over TLS as this node with ``tls``)."""
    stop = stop or threading.Event()
    with open_store(store) as st:
        ing = Ingest(node_id, st, node_specs(modalities, window, rate_hz), parse_broker(broker), max_payload=max_payload, tls=tls)
        return ing.run(stop, cut_every=cut_every)


def node_config(
    node_id: str,
    store: str,
    state_dir: str,
    *,
    group: str = "",
    role: str = "",
    signing_public_key: str = "",
    signing_key_id: str = "",
    threads: int = 1,
    validation_subjects: Sequence[int] = (),
    test_subjects: Sequence[int] = (),
) -> str:
    """The SuperNode's ``--node-config`` for this node (read by ``node_agent.client_app``).

    ``validation_subjects`` / ``test_subjects``: the windows of these subjects
    are held out, as a validation or test part of the node, from its own group.
    """
    items: dict[str, Any] = {
        "node-id": node_id, "store": str(Path(store).resolve()), "state-dir": str(Path(state_dir).resolve()),
        "threads": threads,
    }  # fmt: skip
    held = {"validation-subjects": ",".join(map(str, validation_subjects)), "test-subjects": ",".join(map(str, test_subjects))}
    for k, v in (("group", group), ("role", role), ("signing-public-key", signing_public_key), ("signing-key-id", signing_key_id), *held.items()):
        if v:
            items[k] = v
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


def up(
    node_id: str,
    broker: str,
    store: str,
    modalities: Sequence[str],
    superlink: str,
    state_dir: str,
    *,
    registry: str = "",
    keys: dict[str, bytes] | None = None,
    signing_public_key: str = "",
    signing_key_id: str = "",
    group: str = "",
    role: str = "",
    validation_subjects: Sequence[int] = (),
    test_subjects: Sequence[int] = (),
    supernode_port: int = 0,
    window: int = 128,
    rate_hz: float = 50.0,
    cut_every: float = 5.0,
    threads: int = 1,
    events: bool = False,
    stop: threading.Event | None = None,
    root_certificates: str | Path = "",
    node_tls: dict[str, str] | None = None,
    auth_key: str | Path = "",
) -> int:
    """Ingest plus a Flower SuperNode for this node, until ``stop`` is set.

    With ``root_certificates`` (the CA's PEM) the SuperNode reaches the SuperLink over TLS; without, in plain text.
    With ``node_tls`` (``ca``, ``cert``, ``key``: this node's certificate) the broker and the Registry are reached over
    TLS as this node.

    A node that comes back after a reboot first asks the Registry (``registry``)
    for adapters newer than the ones it holds. With ``events``, every new
    window is run through the runtime (with whatever adapters the ClientApp
    last swapped in) and its prediction published on ``edgebind/<node>/events``.
    A SuperNode that exits is restarted with back-off (1 s doubling to 60 s)
    while ingest keeps taking frames. Returns 0 once stopped.
    """
    stop = stop or threading.Event()
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    keys = dict(keys or {})
    if signing_public_key:
        keys.update(load_keys(None, signing_public_key, signing_key_id))
    with open_store(store) as st:
        rt = NodeRuntime(state_dir, node_id, keys=keys, store=st, registry_tls=node_tls)
        if registry:
            _fetch_on_boot(rt, registry)
        ing = Ingest(node_id, st, node_specs(modalities, window, rate_hz), parse_broker(broker), tls=node_tls)
        ing.start()
        if events:
            rt.publisher = Publisher(parse_broker(broker), client_id_for(node_id, "events"), tls=node_tls)
        published: set[str] = set()
        cfg = node_config(node_id, store, state_dir, group=group, role=role, signing_public_key=signing_public_key, signing_key_id=signing_key_id,
                          threads=threads, validation_subjects=validation_subjects, test_subjects=test_subjects)  # fmt: skip
        secure = ["--root-certificates", str(Path(root_certificates).resolve())] if root_certificates else ["--insecure"]
        if auth_key:  # the SuperLink admits this SuperNode only if the key's public half was registered with it
            secure += ["--auth-supernode-private-key", str(Path(auth_key).resolve())]
        cmd = [_beside_python("flower-supernode"), *secure, "--superlink", superlink,
               "--port", str(supernode_port or free_port()), "--node-config", cfg]  # fmt: skip
        log.info("node %s: starting %s", node_id, " ".join(cmd[:6]))
        supernode = Restarting(f"node {node_id}: the SuperNode", cmd, env=_flower_env())
        try:
            while not stop.wait(cut_every):
                ing.cut()
                if events:
                    try:
                        _publish_new(rt, st, list(modalities), published)
                    except Exception:  # inference trouble must not stop ingest or the SuperNode
                        log.exception("node %s: publishing predictions failed", node_id)
                supernode.check()  # a SuperNode that exits is started again (with back-off); ingest goes on meanwhile
        finally:
            supernode.stop()
            ing.stop()
            ing.cut()
            if rt.publisher is not None:
                rt.publisher.close(timeout=10)
            log.info("node %s stopped; ingest: %s; SuperNode restarts: %d", node_id, ing.stats.as_dict(), supernode.restarts)
    return 0


def _publish_new(rt: NodeRuntime, st: Any, modalities: list[str], published: set[str], chunk: int = 256) -> int:
    """Predictions for windows not yet published, over every modality that has an adapter."""
    rt.refresh()
    mods = [m for m in modalities if m in rt.modalities]
    if not mods:
        return 0
    try:
        ids, windows = _windows_from_store(st, mods, None)
    except ValueError:  # no window that all of them cover yet
        return 0
    new = [i for i, w in enumerate(ids) if w not in published]
    for lo in range(0, len(new), chunk):
        rows = new[lo : lo + chunk]
        rt.infer({m: x[rows] for m, x in windows.items()}, window_ids=[ids[i] for i in rows])
    published.update(ids[i] for i in new)
    return len(new)


def _fetch_on_boot(rt: NodeRuntime, registry: str) -> None:
    if not rt.state_dir.encoder_versions():
        log.info("node %s has no encoders yet: nothing to fetch from the registry", rt.node_id)
        return
    try:
        result = rt.fetch_latest(registry)
        rt.report_status(registry, state="booted")
        log.info("node %s after boot: adapters %s (fetched %s)", rt.node_id, rt.adapter_versions, result["applied"])
    except Exception as e:  # the registry being away must not keep the node from ingesting
        log.warning("node %s could not reach the registry at %s: %s", rt.node_id, registry, e)


def infer(
    state_dir: str,
    node_id: str,
    *,
    keys: dict[str, bytes] | None = None,
    npz: str = "",
    store: str = "",
    modalities: Sequence[str] | None = None,
    limit: int | None = None,
    publish: str = "",
    registry: str = "",
) -> Inference:
    """Run the node's runtime on windows from a ``.npz`` (``X_<modality>`` arrays) or from its store."""
    if bool(npz) == bool(store):
        raise ValueError("give windows from exactly one of --npz or --store")
    st = open_store(store) if store else None
    pub = None
    try:
        rt = NodeRuntime(state_dir, node_id, keys=keys, store=st)
        if registry:
            rt.fetch_latest(registry)
        mods = list(modalities) if modalities else rt.modalities
        if not mods:
            raise RuntimeError(f"node {node_id} has no adapters in {state_dir} yet")
        ids, windows = _windows_from_npz(npz, mods, limit) if npz else _windows_from_store(st, mods, limit)
        if publish:
            pub = Publisher(parse_broker(publish), client_id_for(node_id, "events"))
            rt.publisher = pub
        return rt.infer(windows, window_ids=ids)
    finally:
        if pub is not None:
            pub.close()
        if st is not None:
            st.close()


def _windows_from_npz(path: str, modalities: Sequence[str], limit: int | None) -> tuple[list[str], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as f:
        missing = [m for m in modalities if f"X_{m}" not in f.files]
        if missing:
            raise KeyError(f"{path} has no X_{missing[0]} (it has {sorted(f.files)})")
        windows = {m: np.asarray(f[f"X_{m}"][:limit], dtype=np.float32) for m in modalities}
    n = len(next(iter(windows.values())))
    return [str(i) for i in range(n)], windows


def _windows_from_store(st: Any, modalities: Sequence[str], limit: int | None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Windows that every modality has, lined up by span (the window id without its modality)."""
    spans: dict[str, dict[str, str]] = {}
    for m in modalities:
        spans[m] = {wid[len(m) + 1 :]: wid for wid in st.windows(m).ids}
    shared = set.intersection(*(set(s) for s in spans.values()))
    common = [span for span in spans[modalities[0]] if span in shared][:limit]  # in the store's order
    if not common:
        raise ValueError(f"the store holds no window that all of {list(modalities)} cover")
    return common, {m: st.windows(m, ids=[spans[m][s] for s in common]).data for m in modalities}


def status(store: str, state_dir: str = "") -> dict[str, Any]:
    """The node's store counts and, with ``state_dir``, its encoder and adapter versions."""
    with open_store(store) as st:
        out: dict[str, Any] = {"store": st.stats()}
    if state_dir:
        from node_agent.state_dir import StateDir

        sd = StateDir(state_dir)
        out["encoders"] = sd.encoder_versions()
        out["adapters"] = sd.adapter_versions()
    return out


# --- processes ------------------------------------------------------------------------------


def _flower_env() -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _subjects(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated subject numbers, got {text!r}") from None


def _add_identity(p: argparse.ArgumentParser) -> None:
    """The node's TLS identity for the broker, for commands that talk MQTT only."""
    p.add_argument("--root-certificates", default="", metavar="CA_PEM", help="the CA of the broker's certificate: MQTT over TLS")
    p.add_argument("--cert", default="", help="this node's certificate (init-pki's node-<id>.pem), shown to the broker")
    p.add_argument("--key", dest="cert_key", default="", help="the private key of --cert (node-<id>.key, 0600)")


def _keys(args: argparse.Namespace) -> dict[str, bytes]:
    return load_keys(args.keys or None, args.signing_public_key, args.signing_key_id)


def _add_node(p: argparse.ArgumentParser, store: bool = True) -> None:
    p.add_argument("--node-id", required=True, help="this node's name: its MQTT topics, its Flower node config and its uploads carry it")
    p.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker host:port")
    if store:
        p.add_argument("--store", required=True, help="node store: a SQLite file path or a SQLAlchemy URL")
    p.add_argument("--modalities", type=_csv, required=True, help="comma-separated, e.g. gyro,lin_acc")
    p.add_argument("--window", type=int, default=128, help="samples per window")
    p.add_argument("--rate", type=float, default=50.0, help="sampling rate (Hz) the sensors must send")
    p.add_argument("--cut-every", type=float, default=5.0, help="seconds between window cuts")


def _add_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", default="", help='JSON file {"key-id": "hex public key"}: the coordinator public keys adapter bundles may be signed with')
    p.add_argument("--signing-public-key", default=os.environ.get("EDGEBIND_SIGNING_PUBLIC_KEY", ""),
                   help="the coordinator's Ed25519 public key, hex (default $EDGEBIND_SIGNING_PUBLIC_KEY); bundles signed by any other key are refused")
    p.add_argument("--signing-key-id", default=os.environ.get("EDGEBIND_SIGNING_KEY_ID", ""),
                   help="the name of that key (default $EDGEBIND_SIGNING_KEY_ID, else derived from the key)")


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("edgebind-node", __doc__.split("\n")[0],
                        "edgebind-node up --node-id n1 --broker HOST:1883 --store n1.db --modalities gyro,lin_acc --superlink HOST:9093 --state-dir n1 "
                        "--root-certificates ca.pem --auth-key supernode-n1.key",
                        "edgebind-node status --store n1.db --state-dir n1")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command(sub, "ingest", "take sensor frames from MQTT into the node store",
                "edgebind-node ingest --node-id n1 --broker 127.0.0.1:1883 --store n1.db --modalities gyro,lin_acc")  # fmt: skip
    _add_node(p)
    p.add_argument("--max-payload", type=int, default=DEFAULT_MAX_PAYLOAD, help="largest SensorFrame accepted, in bytes; larger ones are refused by name")
    _add_identity(p)

    p = command(sub, "up", "ingest plus a Flower SuperNode with this node's config",
                "edgebind-node up --node-id n1 --broker HOST:1883 --store n1.db --modalities gyro,lin_acc --superlink HOST:9093 --state-dir n1 "
                "--root-certificates ca.pem --auth-key supernode-n1.key --registry HOST:9096 --cert node-n1.pem --key node-n1.key",
                "edgebind-node up --node-id n3 --broker HOST:1883 --store n3.db --modalities lin_acc,gravity --superlink HOST:9093 "
                "--state-dir n3 --root-certificates ca.pem --auth-key supernode-n3.key --group labelled --validation-subjects 4,9 --test-subjects 2,11",
                "edgebind-node up --node-id n1 --broker 127.0.0.1:1883 --store n1.db --modalities gyro --superlink 127.0.0.1:9093 --state-dir n1 --insecure")  # fmt: skip
    _add_node(p)
    _add_keys(p)
    p.add_argument("--superlink", required=True, help="SuperLink host:port")
    p.add_argument("--root-certificates", default="", metavar="CA_PEM", help="the CA that signed the SuperLink's certificate: the link is TLS")
    p.add_argument("--insecure", action="store_true", help="reach the SuperLink in plain text instead (needed without --root-certificates)")
    p.add_argument("--cert", default="", help="this node's certificate (init-pki's node-<id>.pem): the broker and the Registry are reached over TLS as this node")
    p.add_argument("--key", dest="cert_key", default="", help="the private key of --cert (node-<id>.key, 0600)")
    p.add_argument("--auth-key", default="", help="this SuperNode's authentication key (init-pki's supernode-<id>.key), registered with the SuperLink")
    p.add_argument("--state-dir", required=True, help="where encoders and adapters live")
    p.add_argument("--registry", default="", help="Registry host:port to fetch newer adapters from at boot")
    p.add_argument("--group", default="", help="the scenario group this node's data belongs to (default: its modalities joined)")
    p.add_argument("--role", default="", help="the node's own role: train (default), validation or test")
    p.add_argument("--validation-subjects", type=_subjects, default=[], metavar="1,2",
                   help="hold these subjects' windows out as a validation part (labels for choosing the head)")
    p.add_argument("--test-subjects", type=_subjects, default=[], metavar="1,2",
                   help="hold these subjects' windows out as a test part (never uploaded, only evaluated)")
    p.add_argument("--supernode-port", type=int, default=0, help="SuperNode's local API port (0: a free one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the ClientApp")
    p.add_argument("--events", action="store_true", help="publish a prediction for every new window on edgebind/<node>/events")

    p = command(sub, "infer", "run the runtime on windows and print predictions",
                "edgebind-node infer --state-dir n1 --node-id n1 --store n1.db --limit 20", "edgebind-node infer --state-dir n1 --node-id n1 --npz windows.npz --json")
    p.add_argument("--state-dir", required=True, help="where the node's encoders and adapters live (as `up` was given)")
    p.add_argument("--node-id", required=True, help="this node's name (events are published under it)")
    _add_keys(p)
    p.add_argument("--npz", default="", help="a .npz with X_<modality> arrays (windows x time x channels)")
    p.add_argument("--store", default="", help="take windows from the node store instead")
    p.add_argument("--modalities", type=_csv, default=None, help="comma-separated modalities to use (default: every one the runtime serves)")
    p.add_argument("--limit", type=int, default=None, help="at most this many windows (default: all)")
    p.add_argument("--publish", default="", metavar="BROKER", help="publish events on edgebind/<node>/events")
    p.add_argument("--registry", default="", help="fetch newer adapters first")
    p.add_argument("--json", action="store_true", help="print one JSON event per window")

    p = command(sub, "status", "store counts and adapter versions", "edgebind-node status --store n1.db --state-dir n1")
    p.add_argument("--store", required=True, help="node store: a SQLite file path or a SQLAlchemy URL")
    p.add_argument("--state-dir", default="", help="the node's runtime dir, for its adapter versions (default: store counts only)")

    p = command(sub, "replay", "publish a dataset's windows over MQTT as a node's sensors would (needs edgebind[sim])",
                "edgebind-node replay --broker 127.0.0.1:1883 --node-id n1 --subjects 1,2 --modalities gyro,lin_acc",
                "edgebind-node replay --scenario fleet-labelled --partition-id 3 --max-windows 200")  # fmt: skip
    p.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker host:port")
    p.add_argument("--node-id", default="", help="default with --scenario: the fleet's name for that node")
    _add_identity(p)
    p.add_argument("--dataset", default="hapt", help="'hapt' or a .npz path")
    p.add_argument("--subjects", type=_subjects, default=None, help="e.g. 1,2")
    p.add_argument("--modalities", type=_csv, default=None, help="default: all the node holds")
    p.add_argument("--scenario", default="", help="take the windows the fleet gives --partition-id")
    p.add_argument("--partition-id", type=int, default=None, help="which node of the fleet (with --scenario)")
    p.add_argument("--num-partitions", type=int, default=None, help="fleet size (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0, help="the fleet's seed (with --scenario): subject split and node data")
    p.add_argument("--max-windows", type=int, default=None, help="at most this many windows, evenly spread over the node's")
    p.add_argument("--frame-len", type=int, default=64, help="samples per SensorFrame")
    p.add_argument("--sensor-id", default="replay", help="the sensor name the frames carry")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the broker's PUBACKs")
    p.add_argument("--label-store", default="", help="the node's store: register the windows there with their labels first")
    return parser


def _node_tls(args: argparse.Namespace) -> dict[str, str] | None:
    """This node's TLS identity (the CA, its certificate and key) for the broker and the Registry: all three, or none."""
    given = [bool(args.root_certificates), bool(args.cert), bool(args.cert_key)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("over TLS a node shows its own certificate to the broker and the Registry: give --root-certificates, --cert and --key "
                         "(init-pki's ca.pem, node-<id>.pem and node-<id>.key)")  # fmt: skip
    return {"ca": args.root_certificates, "cert": args.cert, "key": args.cert_key}


def _beside_python(script: str) -> str:
    """A console script of this interpreter's environment (so a node's SuperNode runs where the node agent runs), else from PATH."""
    here = Path(sys.executable).parent / script
    return str(here) if here.exists() else script


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "ingest":
            stats = ingest(args.node_id, args.broker, args.store, args.modalities, window=args.window,
                           rate_hz=args.rate, cut_every=args.cut_every, max_payload=args.max_payload,
                           stop=stop_on_signals(), tls=_node_tls(args))  # fmt: skip
            print(json.dumps(stats.as_dict()))
            return 0
        if args.command == "up":
            tls_or_insecure(args.root_certificates, args.insecure, "--root-certificates CA_PEM (the coordinator's CA)")
            if args.root_certificates and not args.auth_key:
                raise ValueError("a SuperLink that speaks TLS admits registered SuperNodes only: give --auth-key (init-pki's supernode-<id>.key)")
            return up(args.node_id, args.broker, args.store, args.modalities, args.superlink, args.state_dir,
                      registry=args.registry, keys=load_keys(args.keys or None), signing_public_key=args.signing_public_key,
                      signing_key_id=args.signing_key_id, group=args.group, role=args.role,
                      validation_subjects=args.validation_subjects, test_subjects=args.test_subjects, supernode_port=args.supernode_port, window=args.window, rate_hz=args.rate,
                      cut_every=args.cut_every, threads=args.threads, events=args.events,
                      stop=stop_on_signals(), root_certificates=args.root_certificates, node_tls=_node_tls(args),
                      auth_key=args.auth_key)  # fmt: skip
        if args.command == "infer":
            out = infer(args.state_dir, args.node_id, keys=_keys(args), npz=args.npz, store=args.store,
                        modalities=args.modalities, limit=args.limit, publish=args.publish,
                        registry=args.registry)  # fmt: skip
            _print_inference(out, args.node_id, args.json)
            return 0
        if args.command == "status":
            print(json.dumps(status(args.store, args.state_dir), indent=2, sort_keys=True))
            return 0
        if args.command == "replay":
            t0 = time.monotonic()
            res = replay_dataset(args.broker, args.node_id, dataset=args.dataset, subjects=args.subjects,
                         modalities=args.modalities, scenario=args.scenario, partition_id=args.partition_id,
                         num_partitions=args.num_partitions, seed=args.seed, max_windows=args.max_windows,
                         frame_len=args.frame_len, sensor_id=args.sensor_id, timeout=args.timeout,
                         label_store=args.label_store, tls=_node_tls(args))  # fmt: skip
            res["seconds"] = round(time.monotonic() - t0, 2)
            print(json.dumps(res))
            return 0
    except (ValueError, KeyError, FileNotFoundError, ConnectionError, RuntimeError, TimeoutError) as e:
        print(f"edgebind-node {args.command}: {e}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def _print_inference(out: Inference, node_id: str, as_json: bool) -> None:
    if as_json:
        for e in out.events(node_id):
            print(json.dumps(e))
        return
    labels = out.labels()
    print(f"# node {node_id}, modalities {'+'.join(out.modalities)}, adapters {out.adapter_versions}")
    for i, wid in enumerate(out.window_ids):
        print(f"{wid}\t{labels[i] if labels else '-'}")
    if labels:
        names, counts = np.unique(labels, return_counts=True)
        print("# " + ", ".join(f"{n}: {c}" for n, c in zip(names, counts)))


if __name__ == "__main__":
    sys.exit(main())
