"""``edgebind-coordinator``: the SuperLink, the Registry service and the store; campaigns; status.

    edgebind-coordinator init-pki coord/pki --nodes n1,n2 [--host HOST]
    edgebind-coordinator up --dir coord/ (--tls-dir coord/pki | --insecure) [--superlink-port 9093] [--registry-port 9096]
    edgebind-coordinator register-node coord/pki/supernode-n1.pub --dir coord/
    edgebind-coordinator campaign --superlink 127.0.0.1:9093 (--root-certificates coord/pki/ca.pem | --insecure) \\
        --store coord/coordinator.db -c seed=1 -c quick=true [--resume ID]
    edgebind-coordinator status --store coord/coordinator.db [--campaign ID] [--json]
    edgebind-coordinator keygen --dir coord/
    edgebind-coordinator rotate-key --dir coord/
    edgebind-coordinator recover --store coord/coordinator.db (--from-nodes | --floor gyro=57)

Each subcommand is a thin wrapper over the function of the same name here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.cli import command, parser as cli_parser, tls_or_insecure
from common.processes import free_port, setup_logging, stop_on_signals, stop_process_group
from coordinator.registry import serve
from coordinator.store import open_store

log = logging.getLogger("edgebind.coordinator")

CONNECTION = "edgebind"  # the SuperLink connection `campaign` writes into $FLWR_HOME/config.toml


def flower_env(flwr_home: str | Path) -> dict[str, str]:
    """The environment for Flower's processes: our FLWR_HOME, no telemetry, no update check."""
    return {**os.environ, "FLWR_HOME": str(Path(flwr_home).resolve()), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1"}  # fmt: skip


def _last_error(log_path: Path) -> str:
    """The last line of a log that says ERROR (or the last line at all), for a message that names the cause."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()] if log_path.exists() else []
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return (errors or lines or [""])[-1]


def _wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the SuperLink exited with status {proc.returncode} before listening on {host}:{port}: "
                                   f"{_last_error(log_path)} (see {log_path})") from None  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SuperLink did not listen on {host}:{port} within {timeout:g}s") from None
            time.sleep(0.2)


def up(
    workdir: str | Path,
    *,
    host: str = "127.0.0.1",
    superlink_port: int = 9093,
    registry_port: int = 9096,
    store: str = "",
    ready_file: str = "",
    start_timeout: float = 60.0,
    stop: threading.Event | None = None,
    tls_dir: str | Path = "",
) -> int:
    """Run the SuperLink (state in ``<workdir>/superlink.db``), the Registry and the store until ``stop``.

    With ``tls_dir`` (as ``init-pki`` makes it: ``ca.pem``, ``coordinator.pem``,
    ``coordinator.key``) the SuperLink speaks only TLS and admits only
    registered SuperNodes (``register_node``), and the Registry speaks only
    mutual TLS (a node shows its own certificate); without, both plain text.

    Port 0 means a free port. Once both listen, their addresses are logged and,
    with ``ready_file``, written there as JSON (``superlink``, ``registry``,
    ``store``, ``flwr_home``). Returns the SuperLink's exit status if it dies
    on its own, else 0.
    """
    stop = stop or threading.Event()
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    store_url = store or str(root / "coordinator.db")
    port = superlink_port or free_port(host)
    tls = tls_files(tls_dir) if tls_dir else None
    # with TLS, SuperNodes are authenticated too: only those whose public key was registered (register-node) may join
    secure = ["--ssl-ca-certfile", tls["ca"], "--ssl-certfile", tls["cert"], "--ssl-keyfile", tls["key"], "--enable-supernode-auth"] if tls else ["--insecure"]
    cmd = ["flower-superlink", *secure, "--host", host, "--port", str(port),
           "--database", str(root / "superlink.db"), "--disable-runtime-dependency-installation"]  # fmt: skip
    write_connection(root / "flwr-home", f"{host}:{port}", root_certificates=tls["ca"] if tls else "")  # so `FLWR_HOME=<dir>/flwr-home flwr ls` finds it
    with open_store(store_url) as st:
        server, reg_port = serve(st, host=host, port=registry_port, tls=tls)  # mutual TLS with the SuperLink's files
        log_file = open(root / "superlink.log", "ab")
        proc = subprocess.Popen(cmd, env=flower_env(root / "flwr-home"), stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        code = 0
        try:
            _wait_listening(host, port, proc, start_timeout, root / "superlink.log")
            info = {"superlink": f"{host}:{port}", "registry": f"{host}:{reg_port}", "store": store_url,
                    "flwr_home": str(root / "flwr-home"), "superlink_log": str(root / "superlink.log"), "superlink_tls": bool(tls)}  # fmt: skip
            log.info("coordinator up: %s", json.dumps(info))
            if ready_file:
                tmp = Path(ready_file).with_suffix(".tmp")
                tmp.write_text(json.dumps(info))
                os.replace(tmp, ready_file)
            print(json.dumps(info), flush=True)
            while not stop.wait(1.0):
                if proc.poll() is not None:
                    code = proc.returncode
                    log.error("the SuperLink exited with status %s (see %s)", code, root / "superlink.log")
                    break
        finally:
            server.stop(5).wait()
            stop_process_group(proc)
            log_file.close()
            log.info("coordinator stopped")
    return code


def register_node(workdir: str | Path, public_key: str | Path, timeout: float = 60.0, node_id: str = "", store: str = "") -> str:
    """Register a SuperNode's public key (``supernode-<id>.pub``) with the SuperLink that ``up`` runs in ``workdir``;
    returns Flower's node id for it. A SuperNode whose key is not registered is refused when it connects.

    The key is also bound to the node's edgebind id (``node_id``, by default the one in the file's name) in the
    coordinator store (``store``, by default ``<workdir>/coordinator.db``): a campaign then refuses a node whose
    manifest claims any id but the one its key is bound to (``coordinator.identity``).
    """
    from coordinator.identity import key_pem, node_id_of_key_file

    pub = Path(public_key).resolve()
    if not pub.exists():
        raise FileNotFoundError(f"no public key at {pub} (init-pki writes supernode-<id>.pub)")
    node_id = node_id or node_id_of_key_file(pub)
    pem = key_pem(pub.read_bytes())
    with open_store(store or Path(workdir).resolve() / "coordinator.db") as st:
        st.register_node_key(node_id, pem)  # refused before Flower admits the key, if the id or the key is bound otherwise
        env = {**flower_env(Path(workdir).resolve() / "flwr-home")}
        out = subprocess.run(["flwr", "supernode", "register", str(pub), "--format", "json"], capture_output=True, text=True, env=env, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"registering {pub.name} failed: {(out.stderr or out.stdout).strip()[-500:]}")
        try:
            flower_id = str(json.loads(out.stdout)["node-id"])
        except (ValueError, KeyError):
            return out.stdout.strip()[-200:]
        st.register_node_key(node_id, pem, int(flower_id))
    return flower_id


def tls_files(tls_dir: str | Path) -> dict[str, str]:
    """The CA, certificate and key of the coordinator in a folder ``init-pki`` made, or ValueError naming what is missing."""
    root = Path(tls_dir).resolve()
    files = {"ca": root / "ca.pem", "cert": root / "coordinator.pem", "key": root / "coordinator.key"}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise ValueError(f"--tls-dir {tls_dir}: {missing[0]} does not exist (make the folder with `edgebind-coordinator init-pki {tls_dir}`)")
    return {k: str(p) for k, p in files.items()}


def write_connection(flwr_home: str | Path, superlink: str, name: str = CONNECTION, root_certificates: str | Path = "") -> Path:
    """Make ``name`` the default SuperLink connection at ``superlink`` in ``$FLWR_HOME/config.toml``: over TLS verified
    against ``root_certificates`` (a CA's PEM) when given, else in plain text.

    The file is edgebind's own: ``campaign`` keeps its FLWR_HOME apart from the user's ``~/.flwr``.
    """
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    link = f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}" if root_certificates else "insecure = true"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = {json.dumps(superlink)}\n{link}\n')
    return path


def campaign(
    superlink: str,
    *,
    app_dir: str | Path = ".",
    run_config: Sequence[str] = (),
    store: str = "",
    flwr_home: str | Path = "",
    stream: bool = True,
    timeout: float | None = None,
    resume: str = "",
    root_certificates: str | Path = "",
) -> int:
    """Submit one campaign (a ServerApp run) to the SuperLink with ``flwr run``; return its exit status.

    ``root_certificates`` (a CA's PEM) reaches a SuperLink that speaks TLS.
    ``resume`` names a campaign in ``store`` to continue (run config ``campaign-id`` and ``resume``): the
    phases and pretraining rounds it finished, its uploads and its growth stages are not repeated.

    ``run_config`` items are ``key=value`` overrides of ``[tool.flwr.app.config]``
    (TOML values: strings quoted); ``store`` sets the coordinator store the
    ServerApp writes to. With ``stream`` the command follows the run's logs
    until it ends.
    """
    if shutil.which("flwr") is None:
        raise FileNotFoundError("the `flwr` command is not on PATH (pip install flwr)")
    app = Path(app_dir).resolve()
    if not (app / "pyproject.toml").exists():
        raise FileNotFoundError(f"{app} is not a Flower app (no pyproject.toml)")
    home = Path(flwr_home or Path.home() / ".edgebind" / "flwr").resolve()
    write_connection(home, superlink, root_certificates=root_certificates)
    overrides = list(run_config)
    if resume:
        if not store:
            raise ValueError("--resume needs --store: the store that holds the campaign")
        overrides += [f"campaign-id={json.dumps(resume)}", "resume=true"]
    if store:
        overrides.append(f"store={json.dumps(str(Path(store).resolve()) if '://' not in store else store)}")
    cmd = ["flwr", "run", str(app), CONNECTION]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"run config override {item!r} is not key=value")
        cmd += ["--run-config", item]
    if stream:
        cmd.append("--stream")
    log.info("submitting: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=flower_env(home), start_new_session=True)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.error("flwr run did not finish within %gs", timeout)
        return 124
    finally:
        stop_process_group(proc, grace=10)


def status(store: str, campaign_ids: Sequence[str] = (), last: int = 5) -> dict[str, Any]:
    """The fleet as the store knows it: one entry per node, the newest adapter per modality, and campaigns.

    Per node: group and role (from the newest campaign that named it),
    modalities, seconds since last seen, adapter version per modality, the
    accuracy its test windows last gave, and how the newest campaign went for
    it (``ok``, ``missing: ...``, ``refused: ...``, or ``absent``). Per
    campaign (the ``last`` newest and any named): state, phases with their
    times, how many nodes were missing or refused, and its accuracy.
    """
    with open_store(store) as st:
        known = {c.campaign_id: c for c in st.campaigns()}
        for cid in campaign_ids:
            if cid not in known:
                raise KeyError(f"no campaign {cid!r} in {store}")
        shown = list(dict.fromkeys([*list(known)[:last], *campaign_ids]))
        reports = {cid: st.report(cid) or {} for cid in shown}
        newest = next(iter(known), None)
        node_metrics: dict[str, dict[str, float]] = {}
        for m in st.metrics(newest) if newest else []:
            if m.node_id and m.name == "accuracy":
                node_metrics.setdefault(m.node_id, {})[m.subset] = m.value
        latest_report = reports.get(newest, {}) if newest else {}
        nodes, modalities = {}, set()
        for n in st.nodes():
            s = st.node_status(n.node_id)
            modalities |= set(n.modalities)
            seen = _last_seen_in(reports, n.node_id)
            accuracy = node_metrics.get(n.node_id, {})
            full = max(accuracy, key=lambda k: (k.count("+"), k), default=None)
            nodes[n.node_id] = {
                "group": seen.get("group", ""), "role": seen.get("role", ""), "modalities": sorted(n.modalities), "hardware": n.hardware,
                "state": s.state if s else "", "adapters": s.adapter_versions if s else {}, "windows_uploaded": s.windows_uploaded if s else 0,
                "last_seen_s_ago": round((time.time_ns() - n.last_seen_ns) / 1e9, 1),
                "accuracy": {"subset": full, "value": accuracy[full]} if full else None,
                "last_campaign": _outcome(latest_report, n.node_id) if newest else "",
            }  # fmt: skip
        adapters = {}
        for m in sorted(modalities):
            latest = st.latest_adapter(m)
            if latest is not None:
                adapters[m] = latest[0]
        campaigns = {}
        for cid in shown:
            c, rep = known[cid], reports[cid]
            full = max(rep.get("accuracy", {}), key=lambda k: (k.count("+"), k), default=None)
            campaigns[cid] = {
                "state": c.state, "detail": c.detail[:500], "created_ns": c.created_ns, "updated_ns": c.updated_ns,
                "phases": {p: f.get("seconds") for p, f in rep.get("phases", {}).items()},
                "missing": len(rep.get("missing", {})), "refused": len({r["node"] for r in rep.get("refused", [])}),
                "accuracy": {"subset": full, **{k: rep["accuracy"][full][k] for k in ("accuracy", "macro_f1")}} if full else None,
                "stages": [{"name": s.name, "status": s.status} for s in st.stages(cid)],
                "metrics": [{"node": m.node_id, "name": m.name, "subset": m.subset, "value": m.value} for m in st.metrics(cid)] if cid in campaign_ids else [],
            }  # fmt: skip
    return {"store": str(store), "newest_campaign": newest, "nodes": nodes, "adapters": adapters, "campaigns": campaigns}


def _last_seen_in(reports: Mapping[str, dict], node_id: str) -> dict:
    """The group, role and modalities the newest report naming ``node_id`` gives it (reports newest first)."""
    for rep in reports.values():
        if node_id in rep.get("nodes", {}):
            return rep["nodes"][node_id]
    return {}


def _outcome(report: dict, node_id: str) -> str:
    if node_id in report.get("missing", {}):
        m = report["missing"][node_id]
        return f"missing in {m.get('phase', '?')}: {m.get('reason', '')}"
    refused = [r for r in report.get("refused", []) if r.get("node") == node_id]
    if refused:
        return f"refused {len(refused)}x, first in {refused[0].get('phase', '?')}: {refused[0].get('reason', '')}"[:160]
    return "ok" if node_id in report.get("nodes", {}) else "absent"


def format_status(view: dict[str, Any]) -> str:
    """``status`` as an operator reads it: a row per node, then a row per campaign with its phases' times."""
    lines = [f"store {view['store']}: {len(view['nodes'])} nodes; newest adapters "
             + (", ".join(f"{m} v{v}" for m, v in view["adapters"].items()) or "none")]  # fmt: skip
    newest = view["newest_campaign"]
    head = ("node", "group", "role", "modalities", "last seen", "adapters", "accuracy", f"in {newest}" if newest else "last campaign")
    rows = []
    for nid, n in sorted(view["nodes"].items()):
        acc = n["accuracy"]
        rows.append((nid, n["group"] or "-", n["role"] or "-", ",".join(n["modalities"]), _ago(n["last_seen_s_ago"]),
                     " ".join(f"{m}:v{v}" for m, v in sorted(n["adapters"].items())) or "-",
                     f"{acc['value']:.3f} ({acc['subset']})" if acc else "-", n["last_campaign"] or "-"))  # fmt: skip
    lines += _table(head, rows)
    if view["campaigns"]:
        lines.append("")
        head = ("campaign", "state", "missing", "refused", "accuracy", "phases (seconds)")
        rows = []
        for cid, c in view["campaigns"].items():
            acc = c["accuracy"]
            rows.append((cid, c["state"], str(c["missing"]), str(c["refused"]),
                         f"{acc['accuracy']:.3f} / F1 {acc['macro_f1']:.3f} ({acc['subset']})" if acc else "-",
                         " ".join(f"{p} {t:.0f}" for p, t in c["phases"].items() if t is not None) or "-"))  # fmt: skip
        lines += _table(head, rows)
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]
    fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def keygen(directory: str | Path) -> dict[str, str]:
    """Make the coordinator's Ed25519 signing key: ``signing.key`` (private, hex, 0600) and ``signing.pub`` (public, hex).

    The coordinator is given the private key file's path (``EDGEBIND_SIGNING_KEY_FILE``
    or the run config's ``signing-key-file``); every node is provisioned with the public one
    (``edgebind-node up --signing-public-key``). An existing key is never overwritten.
    """
    from common.codec import key_id_of, new_signing_key, public_key_of
    from common.files import private_dir, write_secret

    d = private_dir(directory)
    priv, pub = d / "signing.key", d / "signing.pub"
    if priv.exists():
        raise FileExistsError(f"{priv} exists; remove it first to make a new key (nodes must then be given the new public key)")
    key = new_signing_key()
    write_secret(priv, (key.hex() + "\n").encode())
    pub.write_text(public_key_of(key).hex() + "\n")
    return {"private_key_file": str(priv), "public_key_file": str(pub), "public_key": public_key_of(key).hex(), "key_id": key_id_of(public_key_of(key))}


def _floors(items: Sequence[str]) -> dict[str, int]:
    """``--floor MODALITY=VERSION`` items as a dict, or ValueError naming the bad one."""
    out = {}
    for item in items:
        m, _, v = item.partition("=")
        if not m or not v.isdigit():
            raise ValueError(f"--floor {item!r}: expected MODALITY=VERSION, e.g. gyro=57")
        out[m] = int(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("edgebind-coordinator", __doc__.split("\n")[0], "edgebind-coordinator keygen --dir coord",
                        "edgebind-coordinator up --dir coord --host 0.0.0.0 --tls-dir coord/pki",
                        "edgebind-coordinator campaign --superlink HOST:9093 --root-certificates coord/pki/ca.pem --store coord/coordinator.db",
                        "edgebind-coordinator status --store coord/coordinator.db")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command(sub, "up", "run the SuperLink, the Registry service and the store", "edgebind-coordinator up --dir coord --host 0.0.0.0 --tls-dir coord/pki",
                "edgebind-coordinator up --dir coord --insecure   # plain text: a trusted network only")  # fmt: skip
    p.add_argument("--dir", default="edgebind-coordinator", help="SuperLink database, store, logs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--superlink-port", type=int, default=9093, help="0: a free port")
    p.add_argument("--registry-port", type=int, default=9096, help="0: a free port")
    p.add_argument("--store", default="", help="store URL or SQLite path (default <dir>/coordinator.db)")
    p.add_argument("--ready-file", default="", help="write the addresses here as JSON once listening")
    p.add_argument("--tls-dir", default="", help="folder made by init-pki (ca.pem, coordinator.pem, coordinator.key): the SuperLink speaks TLS")
    p.add_argument("--insecure", action="store_true", help="run the SuperLink in plain text (anyone on the network can read and join); needed without --tls-dir")

    p = command(sub, "campaign", "submit a campaign run (flwr run) to the SuperLink",
                "edgebind-coordinator campaign --superlink HOST:9093 --root-certificates coord/pki/ca.pem --store coord/coordinator.db -c scenario=sensor-bind",
                "edgebind-coordinator campaign --superlink HOST:9093 --root-certificates coord/pki/ca.pem --store coord/coordinator.db --resume campaign-7")  # fmt: skip
    p.add_argument("--superlink", default="127.0.0.1:9093", help="the SuperLink's Exec API host:port")
    p.add_argument("--app", default=".", help="the Flower app directory (edgebind's checkout)")
    p.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config value (repeatable), e.g. -c seed=1 -c 'scenario=\"sensor-bind\"'")  # fmt: skip
    p.add_argument("--store", default="", help="the coordinator store the campaign writes to (as `up` uses)")
    p.add_argument("--flwr-home", default="", help="default ~/.edgebind/flwr")
    p.add_argument("--no-stream", action="store_true", help="submit and return instead of following the logs")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the run")
    p.add_argument("--root-certificates", default="", metavar="CA_PEM", help="the CA that signed the SuperLink's certificate (init-pki's ca.pem)")
    p.add_argument("--insecure", action="store_true", help="reach a plain-text SuperLink; needed without --root-certificates")
    p.add_argument("--resume", default="", metavar="CAMPAIGN_ID",
                   help="continue this campaign of --store where it stopped (a coordinator that died mid-campaign); results go where they went")

    p = command(sub, "init-pki", "make a CA, the coordinator's TLS certificate and a certificate per node (a test or a small deployment)",
                "edgebind-coordinator init-pki coord/pki --nodes n1,n2,n3 --host 127.0.0.1 --host coordinator.lan")  # fmt: skip
    p.add_argument("dir", help="the folder to write (0700; private keys 0600); must not hold a CA yet")
    p.add_argument("--nodes", default="", help="comma-separated node ids to make client certificates for")
    p.add_argument("--host", action="append", default=[], help="a name or address the coordinator is reached at (repeatable; default 127.0.0.1 and localhost)")

    p = command(sub, "register-node", "let a SuperNode join: register its public key with the SuperLink that `up --dir DIR` runs",
                "edgebind-coordinator register-node coord/pki/supernode-n1.pub --dir coord")  # fmt: skip
    p.add_argument("public_key", help="the SuperNode's public key (init-pki's supernode-<id>.pub, OpenSSH ECDSA)")
    p.add_argument("--dir", default="edgebind-coordinator", help="the folder `up` runs in")
    p.add_argument("--node-id", default="", help="the node's edgebind id the key is bound to (default: <id> in supernode-<id>.pub)")
    p.add_argument("--store", default="", help="the coordinator store (default: DIR/coordinator.db, as `up` uses it)")

    p = command(sub, "keygen", "make the coordinator's Ed25519 signing key (private 0600, public for the nodes)", "edgebind-coordinator keygen --dir coord")
    p.add_argument("--dir", default="edgebind-coordinator", help="writes signing.key and signing.pub here")

    p = command(sub, "rotate-key", "replace the signing key with a new one the old one vouches for (nodes follow with the next bundles)",
                "edgebind-coordinator rotate-key --dir coord")  # fmt: skip
    p.add_argument("--dir", default="edgebind-coordinator", help="the folder keygen wrote signing.key in")

    p = command(sub, "recover", "after the store was lost: number adapters above the versions nodes hold (campaigns also do this on their own)",
                "edgebind-coordinator recover --store coord/coordinator.db --from-nodes", "edgebind-coordinator recover --store coord/coordinator.db --floor gyro=57")  # fmt: skip
    p.add_argument("--store", required=True, help="the coordinator store (a new one, after the old was lost)")
    p.add_argument("--from-nodes", action="store_true", help="from the versions nodes reported (their manifests, Registry status reports)")
    p.add_argument("--floor", action="append", default=[], metavar="MODALITY=VERSION", help="number MODALITY's adapters above VERSION (repeatable)")

    p = command(sub, "status", "nodes, adapter versions and campaigns in the store",
                "edgebind-coordinator status --store coord/coordinator.db", "edgebind-coordinator status --store coord/coordinator.db --json")  # fmt: skip
    p.add_argument("--store", required=True, help="store URL or SQLite path (as `up` used)")
    p.add_argument("--campaign", action="append", default=[], help="show this campaign too, with every metric it recorded (repeatable)")
    p.add_argument("--last", type=int, default=5, help="show this many of the newest campaigns")
    p.add_argument("--json", action="store_true", help="print the view as JSON, for scripts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "up":
            tls_or_insecure(args.tls_dir, args.insecure, "--tls-dir DIR (made by `edgebind-coordinator init-pki DIR`)")
            return up(args.dir, host=args.host, superlink_port=args.superlink_port, registry_port=args.registry_port,
                      store=args.store, ready_file=args.ready_file, stop=stop_on_signals(), tls_dir=args.tls_dir)  # fmt: skip
        if args.command == "campaign":
            tls_or_insecure(args.root_certificates, args.insecure, "--root-certificates CA_PEM")
            return campaign(args.superlink, app_dir=args.app, run_config=args.run_config, store=args.store, flwr_home=args.flwr_home,
                            stream=not args.no_stream, timeout=args.timeout, resume=args.resume, root_certificates=args.root_certificates)  # fmt: skip
        if args.command == "recover":
            from coordinator.recovery import recover

            with open_store(args.store) as st:
                print(json.dumps(recover(st, _floors(args.floor), from_nodes=args.from_nodes), indent=2))
            return 0
        if args.command == "rotate-key":
            from coordinator.keys import rotate_key

            print(json.dumps(rotate_key(args.dir), indent=2))
            return 0
        if args.command == "register-node":
            print(register_node(args.dir, args.public_key, node_id=args.node_id, store=args.store))
            return 0
        if args.command == "init-pki":
            from coordinator.pki import init_pki

            nodes = [n for n in args.nodes.split(",") if n]
            print(json.dumps(init_pki(args.dir, nodes, args.host or ("127.0.0.1", "localhost")), indent=2))
            return 0
        if args.command == "status":
            view = status(args.store, args.campaign, last=args.last)
            print(json.dumps(view, indent=2, sort_keys=True) if args.json else format_status(view))
            return 0
        if args.command == "keygen":
            print(json.dumps(keygen(args.dir), indent=2))
            return 0
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, TimeoutError, OSError) as e:
        print(f"edgebind-coordinator {args.command}: {e}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
