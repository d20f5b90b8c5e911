"""``edgebind-sim deploy-local``: the whole system as real processes on 127.0.0.1, for one campaign.

    edgebind-sim deploy-local --nodes 3 --dataset hapt --scenario sensor-bind [--quick] [--out DIR]

What runs, all on 127.0.0.1 with free ports:

- a mosquitto broker (config from ``node_agent.ingest.mosquitto_conf``);
- the coordinator, ``edgebind-coordinator up``: the SuperLink (which starts the
  ServerApp of a campaign), the Registry gRPC service and the coordinator store;
- one ``edgebind-node up`` per node: MQTT ingest into the node's store, a Flower
  SuperNode (which starts the ClientApp for each message) and, with ``--events``,
  a prediction on ``edgebind/<node>/events`` for every window once the node runs
  adapters;
- a replay per node, publishing that node's windows over MQTT as its sensors
  would (``node_agent.ingest.replay_dataset``, what ``edgebind-node replay`` runs, called
  here rather than in a process per node that would mostly import torch), with
  ``label_store`` for the nodes that may see labels (SensorFrames carry none);
- ``edgebind-coordinator campaign``: one whole campaign (``flwr run``).

All but the replays are processes of their own.

Nodes. Every training group of the scenario needs a node of its own: for
``sensor-bind`` the two unlabelled groups bound through the gyroscope
(gyro+lin_acc, gyro+gravity) and the labelled group (lin_acc+gravity). The
validation and test subjects (the head's step is chosen on the first, only the
second is scored) are held out on a node that already holds their modalities,
here the labelled node, as parts of their own (``edgebind-node up
--validation-subjects/--test-subjects``): test windows never leave that node.
So ``sensor-bind`` and ``label-bind`` run on 3 nodes, ``babel-hapt`` on 4, and
fewer is refused with that explanation before anything starts. With more nodes
the held-out parts move to nodes of their own, and from one node per group on
the groups are rescaled exactly as the fleet simulator does
(``node_agent.data.fleet_layout``): node ``p`` holds the windows of the
simulator's partition ``p``.

After the campaign every node is checked three ways: the adapter versions in its
state dir (``edgebind-node status --state-dir``), those the Registry reports for
it, and the versions on the predictions its running agent published (so the
agent process loaded them, not just received the files). A summary goes to
stdout and ``out/summary.json``; each process logs to ``out/logs/``.

Everything started is stopped on the way out, also on failure or Ctrl-C: each
child runs in a session of its own, gets SIGTERM (so it stops its own children)
and SIGKILL after a grace period; every process seen below a child (watched
once a second) is then swept the same way. Every wait is bounded and a failure
names what did not happen and prints the end of the log concerned.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.codec import new_signing_key, public_key_of
from common.files import write_json
from common.processes import free_port, signal_group, signal_pid

HOST = "127.0.0.1"
FRAME_LEN = 64  # samples per SensorFrame (replay's default)
MARKER = ".edgebind-deploy-local"  # an out dir with this file is ours to clear
OWNED = ("logs", "nodes", "coordinator", "mosquitto", "campaign", "summary.json")

# Windows replayed per node: quick keeps a campaign to a few minutes on a loaded
# laptop; the full run is still a demonstration of the system (the experiments
# are `edgebind-sim experiment` and `edgebind-sim run`), so it is capped too.
QUICK_WINDOWS = 64
FULL_WINDOWS = 400


class DeployError(RuntimeError):
    """A step that did not happen in time, or a process that failed; ``logs`` are the files to look at."""

    def __init__(self, message: str, logs: list[Path] | tuple[Path, ...] = ()):
        super().__init__(message)
        self.logs = [Path(p) for p in logs]


@dataclass
class Timeouts:
    """Seconds every wait may take at most."""

    broker: float = 20.0  # mosquitto listening
    coordinator: float = 180.0  # `edgebind-coordinator up` ready (SuperLink + Registry)
    node: float = 180.0  # a node agent subscribed to its sensor topics
    replay: float = 300.0  # a replay's PUBACKs, per node
    ingest: float = 120.0  # every node stored every frame replayed to it
    campaign: float = 900.0  # the whole campaign
    round: float = 300.0  # one exchange in the campaign (run config round-timeout)
    discovery: float = 120.0  # the campaign waiting for the nodes to connect
    loaded: float = 120.0  # every node agent publishing predictions with the new adapters
    stop: float = 30.0  # SIGTERM -> SIGKILL

    @classmethod
    def for_run(cls, quick: bool) -> Timeouts:
        return cls() if quick else cls(ingest=900.0, campaign=7200.0, round=1800.0, replay=900.0)


@dataclass
class PartPlan:
    """Windows of one fleet partition that a node holds: its own group's, or held-out subjects'."""

    partition_id: int
    group: str
    role: str
    subjects: list[int]
    labels_visible: bool  # replay registers the windows' labels (and subjects) in the node's store


@dataclass
class NodePlan:
    """One node of the deployment: who it is, what it holds, where its files go."""

    node_id: str
    parts: list[PartPlan]  # its own group first, then held-out validation/test subjects
    fleet: int  # the size of the fleet layout the partition ids refer to
    modalities: list[str]
    store: Path
    state_dir: Path
    flwr_home: Path
    log: Path
    replay_log: Path
    window: int = 128
    rate_hz: float = 50.0

    @property
    def group(self) -> str:
        return self.parts[0].group

    @property
    def role(self) -> str:
        return "+".join(p.role for p in self.parts)

    @property
    def subjects(self) -> list[int]:
        return sorted(s for p in self.parts for s in p.subjects)

    def held_out(self, role: str) -> list[int]:
        return [s for p in self.parts[1:] if p.role == role for s in p.subjects]


# --- processes ---------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, pgid, sid, start time in ticks) of a live /proc entry, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    rest = text[text.rfind(")") + 2 :].split()
    try:
        return rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19])
    except (IndexError, ValueError):
        return None


def _all_stats() -> dict[int, tuple[str, int, int, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                out[int(entry)] = st
    return out


def process_running(pid: int, start: int) -> bool:
    """True while the process ``pid`` that started at ``start`` (ticks) runs (a zombie does not)."""
    st = _proc_stat(pid)
    return st is not None and st[4] == start and st[0] not in ("Z", "X")


@dataclass
class Child:
    name: str
    cmd: list[str]
    proc: subprocess.Popen
    log: Path
    start: int  # start time in ticks, to tell the process from a later one with the same pid
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts children (each in a session of its own, output to a log), watches what they start, stops them all."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.seen: dict[tuple[int, int], str] = {}  # (pid, start) -> name, every process we started or saw below one
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._watcher: threading.Thread | None = None
        self.hurry = threading.Event()  # a second Ctrl-C while stopping: SIGKILL at once

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            f.write(f"\n### {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        st = _proc_stat(proc.pid)
        child = Child(name, cmd, proc, log, st[4] if st else 0)
        with self._lock:
            self.children.append(child)
            self.seen[(proc.pid, child.start)] = name
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="deploy-local-watch", daemon=True)
            self._watcher.start()
        return child

    def _watch(self) -> None:
        while not self._halt.wait(1.0):
            self.scan()

    def scan(self) -> None:
        """Record every live process below a child (orphans keep their session, which ``sweep`` stops)."""
        stats = _all_stats()
        kids: dict[int, list[int]] = {}
        for pid, st in stats.items():
            kids.setdefault(st[1], []).append(pid)
        with self._lock:
            roots = [(c.proc.pid, c.name) for c in self.children]
            known = dict(self.seen)
        found = {}
        for root, name in roots:
            pending = list(kids.get(root, []))
            while pending:
                pid = pending.pop()
                st = stats.get(pid)
                if st is None or pid == os.getpid():
                    continue
                found[(pid, st[4])] = known.get((pid, st[4])) or f"{name}/{_cmd_name(pid)}"
                pending += kids.get(pid, [])
        with self._lock:
            for key, name in found.items():
                self.seen.setdefault(key, name)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": n, "pid": p, "start": s} for (p, s), n in sorted(self.seen.items())]

    def stop(self, children: list[Child], grace: float) -> None:
        """SIGTERM these children's process groups together; SIGKILL whatever is left after ``grace``."""
        live = [c for c in children if c.proc.poll() is None]
        for c in children:
            signal_group(c.proc.pid, signal.SIGTERM)  # also when it exited: its group may outlive it
        deadline = time.monotonic() + grace
        for c in live:
            while c.proc.poll() is None and time.monotonic() < deadline and not self.hurry.is_set():
                time.sleep(0.1)
            if c.proc.poll() is None:
                print(f"[deploy-local] {c.name} (pid {c.proc.pid}) ignored SIGTERM; killing it", flush=True)
                signal_group(c.proc.pid, signal.SIGKILL)
                c.proc.wait(10)

    def sweep(self, grace: float = 5.0) -> list[str]:
        """Stop every process we saw that still runs, and any other in their sessions; return their names."""
        self.scan()
        mine_sid = os.getsid(0)
        with self._lock:
            seen = dict(self.seen)
        sids = set()
        for pid, start in seen:
            st = _proc_stat(pid)
            if st is not None and st[4] == start:
                sids.add(st[3])
        sids |= {c.proc.pid for c in self.children}  # each child's own session, also after the child is gone
        for sid in list(sids):  # a session whose leader's pid now names another process is not ours
            leader = _proc_stat(sid)
            if leader is not None and (sid, leader[4]) not in seen:
                sids.discard(sid)
        sids.discard(mine_sid)
        left = {}
        for pid, st in _all_stats().items():
            if pid == os.getpid() or st[0] in ("Z", "X"):
                continue
            if (pid, st[4]) in seen or st[3] in sids:
                left[(pid, st[4])] = seen.get((pid, st[4]), f"session {st[3]}/{pid}")
        if not left:
            return []
        with self._lock:
            for key, name in left.items():
                self.seen.setdefault(key, name)
        for pid, _ in left:
            signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(process_running(p, s) for p, s in left):
            time.sleep(0.1)
        for pid, start in left:
            if process_running(pid, start):
                signal_pid(pid, signal.SIGKILL)
        return sorted(set(left.values()))

    def close(self) -> None:
        self._halt.set()
        for c in self.children:  # reap
            if c.proc.poll() is None:
                try:
                    c.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass


def _find_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _find_prctl()
_PR_SET_PDEATHSIG, _SIGTERM = 1, int(signal.SIGTERM)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if deploy-local dies without stopping it (even by SIGKILL).

    Looked up beforehand: nothing is imported between fork and exec.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM)


def _cmd_name(pid: int) -> str:
    """What a process runs: its script's name for a Python script, else its program's."""
    try:
        argv = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return str(pid)
    for a in argv:
        base = os.path.basename(a)
        if not base.startswith("python") and not a.startswith("-"):
            return base
    return os.path.basename(argv[0]) if argv else str(pid)


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-64_000:].decode(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(data.splitlines()[-lines:])


def find_mosquitto() -> str | None:
    """The mosquitto binary (on PATH, or in sbin where distributions put it), or None."""
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def node_bin(venv: Path) -> Path:
    """The scripts folder of a virtual environment that has ``edgebind-node`` (e.g. one made with ``pip install 'edgebind[node]'``)."""
    bin_dir = Path(venv).resolve() / "bin"
    for script in ("edgebind-node", "flower-supernode"):
        if not (bin_dir / script).exists():
            raise ValueError(f"--node-venv {venv}: {bin_dir / script} does not exist (make it with `python -m venv {venv} && {venv}/bin/pip install '.[node]'`)")
    return bin_dir


def _script(name: str) -> str:
    """A console script next to this interpreter (the package's own), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not on PATH (pip install -e . installs it)")
    return found


# --- planning ---------------------------------------------------------------------------------


def plan_nodes(scenario: str, dataset: str, nodes: int, seed: int, out: Path) -> tuple[list[NodePlan], Any]:
    """The deployment's nodes: the fleet simulator's partitions of ``scenario``, held-out parts merged as ``node_layout`` says."""
    from common.data import load_dataset
    from common.data.scenarios import split
    from node_agent.data import node_spec_for

    sc = check_fleet(scenario, nodes)
    fleet, layout = node_layout(sc, nodes)
    ds = load_dataset(dataset)
    sp = split(sc, ds, seed)
    plans = []
    for pids in layout:
        specs = [node_spec_for(sc, ds, seed, p, fleet, split_=sp) for p in pids]
        for spec in specs:
            if len(spec.rows) == 0:
                raise ValueError(f"node {spec.node_id} of {sc.name!r} over {nodes} nodes holds no window; use fewer nodes")
        node_id, mods = specs[0].node_id, list(specs[0].modalities)
        shapes = {(ds.spec(m).window, ds.spec(m).rate_hz) for m in mods}
        if len(shapes) != 1:
            raise ValueError(f"node {node_id}: its modalities differ in window or rate ({shapes}); `edgebind-node up` takes one of each")
        window, rate = shapes.pop()
        root = out / "nodes" / node_id
        parts = [PartPlan(p, s.group, s.role, list(s.subjects), bool(s.labelled.any())) for p, s in zip(pids, specs)]
        plans.append(NodePlan(
            node_id=node_id, parts=parts, fleet=fleet, modalities=mods, store=root / "store.db",
            state_dir=root / "state", flwr_home=root / "flwr-home", log=out / "logs" / f"node-{node_id}.log",
            replay_log=out / "logs" / f"replay-{node_id}.log", window=int(window), rate_hz=float(rate),
        ))  # fmt: skip
    return plans, sc


def node_layout(sc, nodes: int) -> tuple[int, list[list[int]]]:
    """(fleet size, the fleet's partition ids each node holds, its own first).

    From one node per scenario group on, node ``p`` is partition ``p`` of a
    fleet of ``nodes``. With fewer, the fleet has one partition per group and
    the validation and test groups are held out on a node whose own group
    holds the same modalities (a labelled training group first), or share one
    node of their own; ``nodes`` above that minimum gives held-out groups
    nodes of their own again, validation first.
    """
    groups = sc.groups
    if nodes >= len(groups):
        return nodes, [[p] for p in range(nodes)]
    hosts = [[i] for i, g in enumerate(groups) if g.role == "train"]
    for i, g in enumerate(groups):
        if g.role == "train":
            continue
        same = [h for h in hosts if set(groups[h[0]].modalities) == set(g.modalities) and not any(groups[j].role == g.role for j in h)]
        same.sort(key=lambda h: (groups[h[0]].role != "train", not groups[h[0]].labelled))
        if same:
            same[0].append(i)
        else:
            hosts.append([i])
    if nodes < len(hosts):
        raise ValueError(_too_few(sc, nodes, len(hosts)))
    while len(hosts) < nodes:
        host = next(h for h in hosts if len(h) > 1)  # a node holding held-out subjects gives one group a node of its own
        hosts.append([host.pop(1)])
    return len(groups), sorted(hosts)


def _too_few(sc, nodes: int, need: int) -> str:
    groups = ", ".join(f"{g.name} ({g.role}: {'+'.join(sorted(g.modalities))})" for g in sc.groups)
    why = "binding pairs two training groups through " + repr(sc.shared) if sc.binding == "sensor" else "label binding pairs two labelled training groups"
    return (f"--nodes {nodes}: scenario {sc.name!r} needs at least {need} nodes. Its groups are {groups}; every training group "
            f"needs a node of its own ({why}), and the validation and test subjects are held out on a node that holds their "
            f"modalities, or on one of their own: run with --nodes {need} or more")


def check_fleet(scenario: str, nodes: int):
    """The scenario, if ``nodes`` nodes can run a campaign on it; else ValueError saying why not."""
    from common.data.scenarios import Scenario

    sc = Scenario.load(scenario)
    node_layout(sc, nodes)
    return sc


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and was not made by deploy-local: give an empty or new --out")
    for name in OWNED:  # a previous deployment's stores, broker queue and logs would leak into this one
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / MARKER).write_text("made by edgebind-sim deploy-local; its subfolders are replaced on the next run\n")


# --- the deployment ---------------------------------------------------------------------------


class Deployment:
    def __init__(self, nodes: int, dataset: str, scenario: str, out: Path, quick: bool, seed: int,
                 max_windows: int | None, timeouts: Timeouts | None, node_venv: Path | None = None):  # fmt: skip
        self.n, self.quick, self.seed = nodes, quick, seed
        self.node_bin = node_bin(node_venv) if node_venv else None
        self.dataset = str(Path(dataset).resolve()) if Path(dataset).suffix == ".npz" else dataset
        self.scenario = str(Path(scenario).resolve()) if Path(scenario).suffix == ".toml" else scenario
        self.out = Path(out).resolve()
        self.windows = max_windows or (QUICK_WINDOWS if quick else FULL_WINDOWS)
        self.t = timeouts or Timeouts.for_run(quick)
        self.sup = Supervisor()
        self.t0 = time.monotonic()
        self.steps: dict[str, float] = {}
        # the coordinator's Ed25519 key: the private half goes to the coordinator only, the public half to every node
        private = new_signing_key()
        self.key, self.public_key, self.key_id = private.hex(), public_key_of(private).hex(), f"deploy-local-{secrets.token_hex(4)}"
        self.campaign_id = f"deploy-local-{time.strftime('%Y%m%d-%H%M%S')}"
        self.events: dict[str, dict[str, Any]] = {}
        self._events_lock = threading.Lock()
        self.replayed: dict[str, dict[str, Any]] = {}
        self.ingested: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}

    # --- output --------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[deploy-local {time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def step(self, name: str, t_start: float) -> None:
        self.steps[name] = round(time.monotonic() - t_start, 2)

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
               "EDGEBIND_SIGNING_PUBLIC_KEY": self.public_key, "EDGEBIND_SIGNING_KEY_ID": self.key_id}  # fmt: skip
        env.pop("EDGEBIND_SIGNING_KEY", None)  # the private key reaches the coordinator's process alone (``coordinator_env``)
        env.update(extra)
        return env

    def node_env(self, **extra: str) -> dict[str, str]:
        """A node agent's environment: with ``node_venv``, that environment's scripts come first on PATH, so the
        SuperNode and the ClientApp it starts run there too."""
        env = self.env(**extra)
        if self.node_bin:
            env["PATH"] = f"{self.node_bin}{os.pathsep}{env.get('PATH', '')}"
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        return env

    def coordinator_env(self) -> dict[str, str]:
        return self.env(EDGEBIND_SIGNING_KEY=self.key)

    def _alive_or_fail(self, child: Child, what: str) -> None:
        code = child.proc.poll()
        if code is not None:
            raise DeployError(f"{child.name} exited with status {code} {what}", [child.log])

    # --- steps ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.say(f"out: {self.out}")
        self.plans, self.sc = plan_nodes(self.scenario, self.dataset, self.n, self.seed, self.out)
        for p in self.plans:
            held = "".join(f"; holds out {q.role} subjects {','.join(map(str, q.subjects))}" for q in p.parts[1:])
            self.say(f"node {p.node_id}: {p.parts[0].role:<10} {'+'.join(p.modalities):<16} subjects {','.join(map(str, p.parts[0].subjects))}"
                     f"{'  (sees labels)' if p.parts[0].labels_visible else ''}{held}")  # fmt: skip
        self.app_dir = Path(__file__).resolve().parents[1]
        if "[tool.flwr.app" not in _read(self.app_dir / "pyproject.toml"):
            raise FileNotFoundError(f"{self.app_dir} holds no Flower app (pyproject.toml with [tool.flwr.app]): run from an edgebind checkout (pip install -e .)")
        self.start_broker()
        self.start_coordinator_and_nodes()
        self.replay()
        self.wait_ingested()
        self.run_campaign()
        self.check_adapters()
        self.summarise()
        return self.summary

    def start_broker(self) -> None:
        from node_agent.ingest import mosquitto_conf

        t = time.monotonic()
        exe = find_mosquitto()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install -y mosquitto)")
        root = self.out / "mosquitto"
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.mqtt_port = free_port(HOST)
        conf = root / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.mqtt_port, str(root / "data"), host=HOST))
        self.broker = f"{HOST}:{self.mqtt_port}"
        self.mosquitto = self.sup.start("mosquitto", [exe, "-c", str(conf)], self.out / "logs" / "mosquitto.log", self.env())
        deadline = time.monotonic() + self.t.broker
        while not _listening(self.mqtt_port):
            self._alive_or_fail(self.mosquitto, f"before listening on {self.broker}")
            if time.monotonic() > deadline:
                raise DeployError(f"mosquitto did not listen on {self.broker} within {self.t.broker:g} s", [self.mosquitto.log])
            time.sleep(0.1)
        self.step("broker", t)
        self.say(f"mosquitto listening on {self.broker}")

    def start_coordinator_and_nodes(self) -> None:
        """The coordinator and the node agents start together (SuperNodes retry until the SuperLink listens)."""
        t = time.monotonic()
        self.superlink_port, self.registry_port = free_port(HOST), free_port(HOST)
        while self.registry_port == self.superlink_port:
            self.registry_port = free_port(HOST)
        cdir = self.out / "coordinator"
        cdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = cdir / "ready.json"
        self.coordinator = self.sup.start(
            "coordinator",
            [_script("edgebind-coordinator"), "up", "--dir", str(cdir), "--host", HOST, "--superlink-port", str(self.superlink_port),
             "--registry-port", str(self.registry_port), "--ready-file", str(self.ready_file)],
            self.out / "logs" / "coordinator.log", self.coordinator_env(),
        )  # fmt: skip
        _symlink(self.out / "logs" / "superlink.log", cdir / "superlink.log")  # the SuperLink and ServerApp write there
        self.superlink = f"{HOST}:{self.superlink_port}"
        self.registry = f"{HOST}:{self.registry_port}"
        self.say(f"coordinator starting: SuperLink {self.superlink}, Registry {self.registry}")
        self._events_listener()
        self.nodes: dict[str, Child] = {}
        for p in self.plans:
            p.state_dir.mkdir(parents=True, exist_ok=True)
            p.flwr_home.mkdir(parents=True, exist_ok=True)
            cmd = [str(self.node_bin / "edgebind-node") if self.node_bin else _script("edgebind-node"), "up", "--node-id", p.node_id, "--broker", self.broker, "--store", str(p.store),
                   "--modalities", ",".join(p.modalities), "--window", str(p.window), "--rate", str(p.rate_hz),
                   "--cut-every", "1" if self.quick else "2", "--superlink", self.superlink, "--state-dir", str(p.state_dir),
                   "--registry", self.registry, "--group", p.group, "--role", p.parts[0].role, "--threads", "1", "--events"]  # fmt: skip
            for role in ("validation", "test"):
                if p.held_out(role):
                    cmd += [f"--{role}-subjects", ",".join(map(str, p.held_out(role)))]
            self.nodes[p.node_id] = self.sup.start(f"node {p.node_id}", cmd, p.log, self.node_env(FLWR_HOME=str(p.flwr_home), OMP_NUM_THREADS="1"))
        self.say(f"{len(self.plans)} node agents starting (ingest + SuperNode each)")
        deadline = time.monotonic() + self.t.coordinator
        while not self.ready_file.exists():
            self._alive_or_fail(self.coordinator, "before it was ready")
            if time.monotonic() > deadline:
                raise DeployError(f"the coordinator was not ready (SuperLink + Registry listening) within {self.t.coordinator:g} s",
                                  [self.coordinator.log, cdir / "superlink.log"])  # fmt: skip
            time.sleep(0.2)
        self.coordinator_info = json.loads(self.ready_file.read_text())
        self.say(f"coordinator up: {json.dumps(self.coordinator_info)}")
        waiting = {p.node_id: p for p in self.plans}
        deadline = t + self.t.node  # from their start
        while waiting:
            for nid, p in list(waiting.items()):
                self._alive_or_fail(self.nodes[nid], "while starting")
                if re.search(rf"node {re.escape(nid)} connected to ", _read(p.log)):
                    del waiting[nid]
                    self.say(f"node {nid} subscribed to edgebind/{nid}/sensors/+")
            if waiting and time.monotonic() > deadline:
                nid = sorted(waiting)[0]
                raise DeployError(f"node {nid} did not subscribe to the broker within {self.t.node:g} s "
                                  f"({len(waiting)} of {len(self.plans)} nodes not up)", [waiting[nid].log])  # fmt: skip
            time.sleep(0.3)
        self.step("start", t)

    def _events_listener(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        def on_connect(client, _u, _f, reason, _p):
            if not reason.is_failure:
                client.subscribe("edgebind/+/events", qos=1)

        def on_message(_c, _u, msg):
            try:
                e = json.loads(msg.payload)
                nid = str(e["node_id"])
                with self._events_lock:
                    rec = self.events.setdefault(nid, {"events": 0, "labels": Counter(), "adapter_versions": {}, "modalities": []})
                    rec["events"] += 1
                    rec["adapter_versions"] = {str(k): int(v) for k, v in e.get("adapter_versions", {}).items()}
                    rec["modalities"] = list(e.get("modalities", []))
                    if "label" in e:
                        rec["labels"][str(e["label"])] += 1
            except (ValueError, KeyError, TypeError):
                pass

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgebind-deploy-local-events-{os.getpid()}", clean_session=True)
        c.on_connect, c.on_message = on_connect, on_message
        c.connect_async(HOST, self.mqtt_port)
        c.loop_start()
        self.events_client = c

    def replay(self) -> None:
        """Each node's windows over MQTT, as ``edgebind-node replay`` publishes them (the same function, here).

        Run in this process, one node after the other: a replay process per
        node would spend more time importing torch than publishing. Each
        replay's log and result go to ``logs/replay-<node>.log``.
        """
        import logging

        from node_agent.ingest import replay_dataset as replay

        t = time.monotonic()
        self.say(f"replaying up to {self.windows} windows to each of {len(self.plans)} nodes over MQTT")
        logger = logging.getLogger("node_agent")
        for p in self.plans:
            p.replay_log.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(p.replay_log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            level, propagate = logger.level, logger.propagate
            logger.setLevel(logging.INFO)
            logger.propagate = False  # to the replay's log only, not the console
            logger.addHandler(handler)
            t_node = time.monotonic()
            results = []
            try:
                for part in p.parts:  # each part as a sensor of its own, so that the streams do not mix
                    args = {"dataset": self.dataset, "scenario": self.scenario, "partition_id": part.partition_id, "num_partitions": p.fleet,
                            "seed": self.seed, "max_windows": self.windows, "frame_len": FRAME_LEN, "timeout": self.t.replay,
                            "sensor_id": f"replay-p{part.partition_id}", "label_store": str(p.store) if part.labels_visible else ""}  # fmt: skip
                    with open(p.replay_log, "a") as f:
                        f.write(f"### {time.strftime('%H:%M:%S')} replay {self.broker} {p.node_id} {json.dumps(args)}\n")
                    results.append(replay(self.broker, p.node_id, **args))
            except (ValueError, KeyError, OSError, RuntimeError, TimeoutError) as e:  # ConnectionError is an OSError
                logger.error("replay to %s failed: %s: %s", p.node_id, type(e).__name__, e)
                raise DeployError(f"the replay to node {p.node_id} failed: {type(e).__name__}: {e}", [p.replay_log, self.mosquitto.log]) from e
            finally:
                logger.removeHandler(handler)
                handler.close()
                logger.setLevel(level)
                logger.propagate = propagate
            res = {"node_id": p.node_id, "windows": sum(r["windows"] for r in results), "labelled": sum(r["labelled"] for r in results),
                   "frames": dict(sum((Counter(r["frames"]) for r in results), Counter())),
                   "subjects": sorted({s for r in results for s in r["subjects"]}), "seconds": round(time.monotonic() - t_node, 2)}  # fmt: skip
            with open(p.replay_log, "a") as f:
                f.write(json.dumps(res) + "\n")
            self.replayed[p.node_id] = res
            frames = sum(res["frames"].values())
            self.say(f"replayed {res['windows']} windows ({frames} frames, {res['labelled']} labelled) to {p.node_id} in {res['seconds']:.1f} s")
        self.step("replay", t)

    def wait_ingested(self) -> None:
        """Until every node's store holds every frame replayed to it, cut into windows."""
        from sqlalchemy.exc import OperationalError

        from node_agent.cli import status

        t = time.monotonic()
        deadline = t + self.t.ingest
        waiting = {p.node_id: p for p in self.plans}
        for p in self.plans:
            r = self.replayed[p.node_id]
            self.ingested[p.node_id] = {"expected": int(r["windows"]), "windows": 0, "frames": 0, "labelled": 0,
                                        "frames_expected": sum(int(v) for v in r["frames"].values())}  # fmt: skip
        while True:
            for nid, p in list(waiting.items()):
                self._alive_or_fail(self.nodes[nid], "while ingesting")
                try:
                    got = self._ingest_state(p, status(str(p.store))["store"])
                except OperationalError:  # the store busy with the node's writes: ask again
                    continue
                self.ingested[nid] = got
                if got["windows"] >= got["expected"] and got["frames"] >= got["frames_expected"]:
                    del waiting[nid]
                    self.say(f"node {nid} ingested {got['windows']}/{got['expected']} windows ({got['frames']} frames)")
            if not waiting:
                break
            if time.monotonic() > deadline:
                nid = sorted(waiting)[0]
                g = self.ingested[nid]
                raise DeployError(f"node {nid} ingested {g['windows']}/{g['expected']} windows ({g['frames']}/{g['frames_expected']} frames) "
                                  f"after {self.t.ingest:g} s", [waiting[nid].log, self.mosquitto.log])  # fmt: skip
            time.sleep(1.0)
        self.step("ingest", t)

    def _ingest_state(self, p: NodePlan, st: dict) -> dict[str, Any]:
        res = self.replayed[p.node_id]
        per = math.ceil(p.window / FRAME_LEN)
        frames = {m: int(st["frames"].get(m, 0)) for m in p.modalities}
        whole = min(min(frames[m] // per for m in p.modalities), min(int(st["windows"].get(m, 0)) for m in p.modalities))
        return {
            "expected": int(res["windows"]), "windows": int(whole), "frames": sum(frames.values()),
            "frames_expected": sum(int(v) for v in res["frames"].values()),
            "labelled": max((int(v) for v in st["labelled_windows"].values()), default=0),
        }  # fmt: skip

    def run_campaign(self) -> None:
        t = time.monotonic()
        self.results_path = self.out / "campaign" / "results.json"
        schedule = {"quick": True} if self.quick else {}  # the campaign's one quick schedule (CampaignConfig.QUICK)
        rc = {"dataset": self.dataset, "scenario": self.scenario, "seed": self.seed, "campaign-id": self.campaign_id,
              "results-path": str(self.results_path), "expected-nodes": self.n, "min-nodes": self.n,
              "discovery-timeout": self.t.discovery, "round-timeout": self.t.round, "coordinator-threads": 1 if self.quick else 2,
              **schedule}  # fmt: skip
        cmd = [_script("edgebind-coordinator"), "campaign", "--superlink", self.superlink, "--app", str(self.app_dir),
               "--store", self.coordinator_info["store"], "--flwr-home", self.coordinator_info["flwr_home"],
               "--timeout", str(int(self.t.campaign))]  # fmt: skip
        for k, v in rc.items():
            cmd += ["-c", f"{k}={json.dumps(v)}"]
        self.say(f"campaign {self.campaign_id}: {' '.join(f'{k}={v}' for k, v in schedule.items()) or 'the run config defaults'}")
        camp = self.sup.start("campaign", cmd, self.out / "logs" / "campaign.log", self.env())
        logs = [camp.log, self.out / "logs" / "superlink.log"]
        deadline = time.monotonic() + self.t.campaign + 30
        pos, shown = 0, set()
        while camp.proc.poll() is None:
            pos = self._progress(camp.log, pos, shown)
            for nid, c in self.nodes.items():
                self._alive_or_fail(c, "during the campaign")
            if time.monotonic() > deadline:
                raise DeployError(f"campaign {self.campaign_id} did not finish within {self.t.campaign:g} s", logs)
            time.sleep(1.0)
        self._progress(camp.log, pos, shown)
        if not self.results_path.exists():
            raise DeployError(f"campaign {self.campaign_id} wrote no results (flwr run exited with {camp.proc.returncode})", logs)
        self.results = json.loads(self.results_path.read_text())
        if self.results.get("state") != "done":
            raise DeployError(f"campaign {self.campaign_id} {self.results.get('state', 'did not finish')}: {self.results.get('error', '')}", logs)
        if camp.proc.returncode != 0:
            raise DeployError(f"campaign {self.campaign_id} finished but `edgebind-coordinator campaign` exited with {camp.proc.returncode}", logs)
        missing = self.results.get("missing_nodes") or []
        if missing:
            raise DeployError(f"campaign {self.campaign_id}: nodes went missing: {self.results.get('missing')}", logs)
        self.step("campaign", t)
        self.say(f"campaign {self.campaign_id} done in {self.results.get('seconds', 0):.1f} s")

    def _progress(self, log: Path, pos: int, shown: set) -> int:
        try:
            with open(log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            return pos
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].decode(errors="replace").splitlines():
            m = re.search(r"(\[\w+\] (done in|round \d+/\d+).*|\[\w+\] node .* (is missing|refused).*|campaign \S+ (failed|done).*)", line)
            if m and m.group(1) not in shown:
                shown.add(m.group(1))
                self.say(f"  campaign | {m.group(1)[:160]}")
        return pos + end

    def check_adapters(self) -> None:
        """Each node has the campaign's adapters: in its state dir, at the Registry, and in its running agent."""
        from node_agent.cli import status

        t = time.monotonic()
        bundles = {m: int(b["version"]) for m, b in self.results.get("bundles", {}).items()}
        self.expected = {p.node_id: {m: bundles[m] for m in p.modalities if m in bundles} for p in self.plans}
        for p in self.plans:
            want = self.expected[p.node_id]
            if set(want) != set(p.modalities) or min(want.values(), default=0) < 1:
                raise DeployError(f"campaign {self.campaign_id} pushed no adapters for all of node {p.node_id}'s {p.modalities} (bundles: {bundles})",
                                  [self.out / "logs" / "campaign.log"])  # fmt: skip
            held = status(str(p.store), str(p.state_dir))
            if held["adapters"] != want:
                raise DeployError(f"node {p.node_id} holds adapters {held['adapters']} in {p.state_dir}, the campaign pushed {want}", [p.log])
            self.ingested[p.node_id]["encoders"] = held["encoders"]
        self.registry_status = self._registry_status()
        for p in self.plans:
            got = self.registry_status[p.node_id]["adapter_versions"]
            if got != self.expected[p.node_id]:
                raise DeployError(f"the Registry says node {p.node_id} runs adapters {got}, the campaign pushed {self.expected[p.node_id]}",
                                  [self.coordinator.log])  # fmt: skip
        self.say("every node holds the new adapters (state dirs and Registry agree); waiting for each node agent to run them")
        deadline = time.monotonic() + self.t.loaded
        waiting = {p.node_id: p for p in self.plans}
        while waiting:
            with self._events_lock:
                events = {k: dict(v) for k, v in self.events.items()}
            for nid, p in list(waiting.items()):
                e = events.get(nid)
                if e and e["adapter_versions"] == self.expected[nid]:
                    del waiting[nid]
                    self.say(f"node {nid} runs adapters {e['adapter_versions']}: {e['events']} predictions published")
            if waiting and time.monotonic() > deadline:
                nid = sorted(waiting)[0]
                e = events.get(nid, {})
                raise DeployError(f"node {nid}'s agent published no prediction with adapters {self.expected[nid]} within {self.t.loaded:g} s "
                                  f"(last seen: {e.get('adapter_versions', 'no event at all')})", [waiting[nid].log])  # fmt: skip
            if waiting:
                time.sleep(0.5)
        self.step("check", t)

    def _registry_status(self) -> dict[str, dict]:
        import grpc

        from proto import edgebind_pb2 as pb
        from proto import edgebind_pb2_grpc as pb_grpc

        out = {}
        with grpc.insecure_channel(self.registry) as ch:
            stub = pb_grpc.RegistryStub(ch)
            for p in self.plans:
                try:
                    r = stub.NodeStatus(pb.NodeStatusRequest(node_id=p.node_id), timeout=10)
                except grpc.RpcError as e:
                    raise DeployError(f"the Registry at {self.registry} cannot say how node {p.node_id} is: {e.code().name}: {e.details()}",
                                      [self.coordinator.log]) from None  # fmt: skip
                out[p.node_id] = {"state": r.state, "adapter_versions": dict(r.adapter_versions), "windows_uploaded": int(r.windows_uploaded)}
        return out

    def summarise(self) -> None:
        from coordinator.cli import status as coordinator_status

        from coordinator.store import open_store

        res = self.results
        cstat = coordinator_status(self.coordinator_info["store"], [self.campaign_id])["campaigns"][self.campaign_id]
        arrived: dict[str, dict[str, int]] = {}  # node -> modality -> embeddings the coordinator stored
        by_group: dict[str, dict[str, int]] = {}  # node -> group -> windows stored (most of any modality)
        own = {p.node_id: p.group for p in self.plans}
        with open_store(self.coordinator_info["store"]) as cs:
            for m in sorted({m for p in self.plans for m in p.modalities}):
                e = cs.embeddings(self.campaign_id, m)
                for nid, k in Counter(e.node_ids.tolist()).items():
                    arrived.setdefault(str(nid), {})[m] = int(k)
                for (nid, g), k in Counter(zip(e.node_ids.tolist(), e.groups.tolist())).items():
                    g = g or own.get(nid, "")
                    by_group.setdefault(str(nid), {})[g] = max(by_group.get(str(nid), {}).get(g, 0), int(k))
        collect = res["phases"].get("collect", {})
        nodes = []
        for p in self.plans:
            g, e = self.ingested[p.node_id], self.events.get(p.node_id, {})
            nodes.append({
                "node_id": p.node_id, "group": p.group, "role": p.role, "modalities": p.modalities, "subjects": p.subjects,
                "parts": [{"group": q.group, "role": q.role, "subjects": q.subjects} for q in p.parts],
                "windows_replayed": g["expected"], "windows_ingested": g["windows"], "frames_ingested": g["frames"],
                "labelled_windows": g["labelled"], "embeddings_uploaded": arrived.get(p.node_id, {}),
                "encoders": g.get("encoders", {}), "adapters": self.expected[p.node_id], "registry": self.registry_status[p.node_id],
                "loaded": {"adapter_versions": e.get("adapter_versions", {}), "predictions": e.get("events", 0),
                           "labels": dict(e.get("labels", {}))},
            })  # fmt: skip
        pairs = [{"groups": i["groups"], "pairs": int(i["pairs"]), "mean_similarity": i.get("mean_similarity"), "mean_weight": i.get("mean_weight")}
                 for i in res.get("pairs", [])]  # fmt: skip
        self.summary = {
            "state": "done", "scenario": self.sc.name, "dataset": self.dataset, "seed": self.seed, "quick": self.quick,
            "windows_per_node": self.windows, "campaign_id": self.campaign_id, "campaign_seconds": round(res.get("seconds", 0.0), 1),
            "addresses": {"broker": self.broker, "superlink": self.superlink, "registry": self.registry},
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
            "steps": self.steps, "results": str(self.results_path), "logs": str(self.out / "logs"),
        }  # fmt: skip

    # --- shutdown ------------------------------------------------------------------
    def shutdown(self) -> list[str]:
        t = time.monotonic()
        c = getattr(self, "events_client", None)
        if c is not None:
            c.disconnect()
            c.loop_stop()
        by_name = lambda prefix: [c for c in self.sup.children if c.name.startswith(prefix)]  # noqa: E731
        self.sup.stop(by_name("campaign") + by_name("replay"), self.t.stop)
        self.sup.stop(by_name("node"), self.t.stop)
        self.sup.stop(by_name("coordinator"), self.t.stop)
        self.sup.stop(by_name("mosquitto"), self.t.stop)
        swept = self.sup.sweep()
        self.sup.close()
        self.steps["stop"] = round(time.monotonic() - t, 2)
        return swept


def _symlink(link: Path, target: Path) -> None:
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))
    except OSError:
        pass


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


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


def deploy_local(
    nodes: int = 3,
    dataset: str = "hapt",
    scenario: str = "sensor-bind",
    out: Path = Path("runs") / "deploy-local",
    quick: bool = False,
    *,
    seed: int = 0,
    max_windows: int | None = None,
    timeouts: Timeouts | None = None,
    node_venv: Path | None = None,
) -> dict[str, Any]:
    """Deploy broker, coordinator and ``nodes`` node agents on 127.0.0.1, run one campaign, check, stop everything.

    Returns the summary (also in ``out/summary.json``). ``max_windows`` replays
    at most that many windows per node (default 64 with ``quick``, else 400).
    ``node_venv`` runs the node agents (and their SuperNodes and ClientApps)
    from that virtual environment, e.g. a node-only install.
    Raises ``ValueError`` for a fleet that cannot run a campaign (before
    anything starts) and ``DeployError`` naming the step that did not happen.
    """
    out = Path(out)
    check_fleet(scenario, nodes)  # refused before anything starts
    if node_venv:
        node_bin(node_venv)
    _prepare_out(out)
    d = Deployment(nodes, dataset, scenario, out, quick, seed, max_windows, timeouts, node_venv)
    restore = _signals_raise() if threading.current_thread() is threading.main_thread() else None
    error: BaseException | None = None
    try:
        d.run()
    except BaseException as e:
        error = e
        d.say(f"FAILED: {e}" if not isinstance(e, KeyboardInterrupt) else "interrupted")
        for log in [p for p in getattr(e, "logs", []) if p.exists()][:2]:
            print(f"--- the last lines of {log} ---\n{tail(log)}\n---", file=sys.stderr, flush=True)
    finally:
        if restore is not None:  # Ctrl-C or SIGTERM while stopping: SIGKILL at once rather than stop half-way
            signal.signal(signal.SIGTERM, _hurry(d.sup))
            signal.signal(signal.SIGINT, _hurry(d.sup))
        try:
            d.say("stopping everything")
            swept = d.shutdown()
            if swept:
                d.say(f"stopped leftovers: {', '.join(swept)}")
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore[0])
                signal.signal(signal.SIGTERM, restore[1])
        procs = d.sup.records()
        running = [r for r in procs if process_running(r["pid"], r["start"])]
        d.say(f"stopped {len(procs)} processes" + (f"; STILL RUNNING: {running}" if running else ""))
        summary = d.summary or {"state": "failed", "campaign_id": d.campaign_id, "steps": d.steps, "logs": str(out.resolve() / "logs")}
        if error is not None:
            summary = {**summary, "state": "interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
                       "error": f"{type(error).__name__}: {error}"}  # fmt: skip
        summary["processes"] = procs
        summary["left_running"] = running
        write_json(out / "summary.json", summary)
        if error is None:
            print(format_summary(summary), flush=True)
            print(f"summary: {out / 'summary.json'}", flush=True)
    if error is not None:
        raise error
    if running:
        raise DeployError(f"{len(running)} processes still run after stopping: {running}")
    return summary


def _signals_raise() -> tuple[Any, Any]:
    """SIGTERM becomes KeyboardInterrupt (so the ``finally`` stops everything); returns the old handlers."""

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old_int = signal.getsignal(signal.SIGINT)
    old_term = signal.signal(signal.SIGTERM, on_term)
    return old_int, old_term


def _hurry(sup: Supervisor):
    def handler(_signum, _frame):
        print("[deploy-local] stopping: killing what is left", flush=True)
        sup.hurry.set()

    return handler


__all__ = ["DeployError", "Timeouts", "check_fleet", "deploy_local", "find_mosquitto", "format_summary", "node_layout", "plan_nodes", "process_running"]
