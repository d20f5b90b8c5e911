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
  would (``node_agent.publish.replay_dataset``, what ``edgebind-node replay`` runs, called
  here rather than in a process per node that would mostly import torch), with
  ``label_store`` for the nodes that may see labels (SensorFrames carry none);
- ``edgebind-coordinator campaign``: one whole campaign (``flwr run``).

All but the replays are processes of their own. Which node holds what is
planned in ``simulations.deploy_plan``; the processes are supervised by
``simulations.supervisor``; the summary is ``simulations.deploy_report``.

After the campaign every node is checked three ways: the adapter versions in its
state dir (``edgebind-node status --state-dir``), those the Registry reports for
it, and the versions on the predictions its running agent published (so the
agent process loaded them, not just received the files). A summary goes to
stdout and ``out/summary.json``; each process logs to ``out/logs/``.

Everything started is stopped on the way out, also on failure or Ctrl-C (see
``simulations.supervisor``). Every wait is bounded and a failure names what
did not happen and prints the end of the log concerned.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common.codec import new_signing_key, public_key_of
from common.files import private_file, write_json
from common.processes import free_port
from simulations.deploy_report import format_summary, listen_events, summary_of, write_deployment
from simulations.deploy_plan import NodePlan, Timeouts, check_fleet, plan_nodes, prepare_out
from simulations.supervisor import (
    HOST,
    Child,
    Supervisor,
    find_mosquitto,
    hurry_handler,
    listening,
    node_bin,
    process_running,
    read_log,
    script_path,
    signals_raise,
    symlink_log,
    tail,
)

FRAME_LEN = 64  # samples per SensorFrame (replay's default)

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


# --- the deployment ---------------------------------------------------------------------------


class Deployment:
    def __init__(self, nodes: int, dataset: str, scenario: str, out: Path, quick: bool, seed: int,
                 max_windows: int | None, timeouts: Timeouts | None, node_venv: Path | None = None, hold: bool = False,
                 insecure: bool = False):  # fmt: skip
        self.n, self.quick, self.seed, self.hold, self.insecure = nodes, quick, seed, hold, insecure
        self.node_bin = node_bin(node_venv) if node_venv else None
        self.dataset = str(Path(dataset).resolve()) if Path(dataset).suffix == ".npz" else dataset
        self.scenario = str(Path(scenario).resolve()) if Path(scenario).suffix == ".toml" else scenario
        self.out = Path(out).resolve()
        self.pki = self.out / "pki"  # the run's CA and certificates (unless insecure)
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
        for name in ("EDGEBIND_SIGNING_KEY", "EDGEBIND_SIGNING_KEY_FILE"):  # only the coordinator's process learns where the key is
            env.pop(name, None)
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

    def identity(self, name: str) -> dict[str, str]:
        """The CA and ``name``'s certificate and key in the run's PKI (``coordinator``, ``operator``, ``node-<id>``)."""
        return {"ca": str(self.pki / "ca.pem"), "cert": str(self.pki / f"{name}.pem"), "key": str(self.pki / f"{name}.key")}

    def tls(self, flag: str, path: Path) -> list[str]:
        """The command-line arguments for the SuperLink link: TLS by default, ``--insecure`` when asked."""
        return ["--insecure"] if self.insecure else [flag, str(path)]

    def coordinator_env(self) -> dict[str, str]:
        """The coordinator's environment: the path of its private key, a 0600 file (never the key itself)."""
        path = private_file(self.out / "coordinator" / "signing.key")
        path.write_text(self.key + "\n")
        return self.env(EDGEBIND_SIGNING_KEY_FILE=str(path))

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
        if "[tool.flwr.app" not in read_log(self.app_dir / "pyproject.toml"):
            raise FileNotFoundError(f"{self.app_dir} holds no Flower app (pyproject.toml with [tool.flwr.app]): run from an edgebind checkout (pip install -e .)")
        if not self.insecure:  # a CA, certificates for the coordinator (SuperLink, Registry, broker), the operator and each node
            from coordinator.pki import init_pki

            init_pki(self.pki, [p.node_id for p in self.plans], (HOST, "localhost"))
        self.start_broker()
        self.start_coordinator_and_nodes()
        self.replay()
        self.wait_ingested()
        self.run_campaign()
        self.check_adapters()
        self.summarise()
        if self.hold:
            self.hold_until_interrupted()
        return self.summary

    def write_deployment(self, state: str) -> None:
        write_deployment(self, state)

    def hold_until_interrupted(self) -> None:
        """Keep everything running after the campaign until Ctrl-C or SIGTERM."""
        self.write_deployment("held")
        self.say(f"holding: everything stays up until Ctrl-C; endpoints in {self.out / 'deployment.json'}, "
                 f"`edgebind-coordinator status --store {self.coordinator_info['store']}` shows the fleet")  # fmt: skip
        self.sup.watch_until_interrupted(self.say, skip=("campaign", "replay"))
        self.say("released")

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
        tls = None if self.insecure else {**self.identity("coordinator"), "acl": str(root / "acl")}
        conf.write_text(mosquitto_conf(self.mqtt_port, str(root / "data"), host=HOST, tls=tls))
        self.broker = f"{HOST}:{self.mqtt_port}"
        self.mosquitto = self.sup.start("mosquitto", [exe, "-c", str(conf)], self.out / "logs" / "mosquitto.log", self.env())
        deadline = time.monotonic() + self.t.broker
        while not listening(self.mqtt_port):
            self._alive_or_fail(self.mosquitto, f"before listening on {self.broker}")
            if time.monotonic() > deadline:
                raise DeployError(f"mosquitto did not listen on {self.broker} within {self.t.broker:g} s", [self.mosquitto.log])
            time.sleep(0.1)
        self.step("broker", t)
        self.say(f"mosquitto listening on {self.broker}")

    def start_coordinator_and_nodes(self) -> None:
        """The coordinator and the node agents start together (SuperNodes retry until the SuperLink listens and, over TLS,
        until their keys are registered with it)."""
        t = time.monotonic()
        self.superlink_port, self.registry_port = free_port(HOST), free_port(HOST)
        while self.registry_port == self.superlink_port:
            self.registry_port = free_port(HOST)
        cdir = self.out / "coordinator"
        cdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = cdir / "ready.json"
        self.coordinator = self.sup.start(
            "coordinator",
            [script_path("edgebind-coordinator"), "up", "--dir", str(cdir), "--host", HOST, "--superlink-port", str(self.superlink_port),
             "--registry-port", str(self.registry_port), "--ready-file", str(self.ready_file), *self.tls("--tls-dir", self.pki)],
            self.out / "logs" / "coordinator.log", self.coordinator_env(),
        )  # fmt: skip
        symlink_log(self.out / "logs" / "superlink.log", cdir / "superlink.log")  # the SuperLink and ServerApp write there
        self.superlink = f"{HOST}:{self.superlink_port}"
        self.registry = f"{HOST}:{self.registry_port}"
        self.say(f"coordinator starting: SuperLink {self.superlink}, Registry {self.registry}")
        self._events_listener()
        self.nodes: dict[str, Child] = {}
        for p in self.plans:
            p.state_dir.mkdir(parents=True, exist_ok=True)
            p.flwr_home.mkdir(parents=True, exist_ok=True)
            cmd = [str(self.node_bin / "edgebind-node") if self.node_bin else script_path("edgebind-node"), "up", "--node-id", p.node_id, "--broker", self.broker, "--store", str(p.store),
                   "--modalities", ",".join(p.modalities), "--window", str(p.window), "--rate", str(p.rate_hz),
                   "--cut-every", "1" if self.quick else "2", "--superlink", self.superlink, "--state-dir", str(p.state_dir),
                   "--registry", self.registry, "--group", p.group, "--role", p.parts[0].role, "--threads", "1", "--events",
                   *self.tls("--root-certificates", self.pki / "ca.pem")]  # fmt: skip
            if not self.insecure:  # the node's certificate (mutual TLS with the Registry) and SuperNode key (registered below)
                cmd += ["--cert", str(self.pki / f"node-{p.node_id}.pem"), "--key", str(self.pki / f"node-{p.node_id}.key"),
                        "--auth-key", str(self.pki / f"supernode-{p.node_id}.key")]  # fmt: skip
            for role in ("validation", "test"):
                if p.held_out(role):
                    cmd += [f"--{role}-subjects", ",".join(map(str, p.held_out(role)))]
            self.nodes[p.node_id] = self.sup.start(f"node {p.node_id}", cmd, p.log, self.node_env(FLWR_HOME=str(p.flwr_home), OMP_NUM_THREADS="1"))
        self.say(f"{len(self.plans)} node agents starting (ingest + SuperNode each)")
        self.write_deployment("starting")
        deadline = time.monotonic() + self.t.coordinator
        while not self.ready_file.exists():
            self._alive_or_fail(self.coordinator, "before it was ready")
            if time.monotonic() > deadline:
                raise DeployError(f"the coordinator was not ready (SuperLink + Registry listening) within {self.t.coordinator:g} s",
                                  [self.coordinator.log, cdir / "superlink.log"])  # fmt: skip
            time.sleep(0.2)
        self.coordinator_info = json.loads(self.ready_file.read_text())
        self.say(f"coordinator up: {json.dumps(self.coordinator_info)}")
        if not self.insecure:  # until then the SuperLink refuses the SuperNodes, which their agents restart with back-off
            from coordinator.cli import register_node

            for p in self.plans:
                register_node(cdir, self.pki / f"supernode-{p.node_id}.pub", store=self.coordinator_info["store"])
            self.say(f"{len(self.plans)} SuperNode keys registered with the SuperLink and bound to their node ids")
        waiting = {p.node_id: p for p in self.plans}
        deadline = t + self.t.node  # from their start
        while waiting:
            for nid, p in list(waiting.items()):
                self._alive_or_fail(self.nodes[nid], "while starting")
                if re.search(rf"node {re.escape(nid)} connected to ", read_log(p.log)):
                    del waiting[nid]
                    self.say(f"node {nid} subscribed to edgebind/{nid}/sensors/+")
            if waiting and time.monotonic() > deadline:
                nid = sorted(waiting)[0]
                raise DeployError(f"node {nid} did not subscribe to the broker within {self.t.node:g} s "
                                  f"({len(waiting)} of {len(self.plans)} nodes not up)", [waiting[nid].log])  # fmt: skip
            time.sleep(0.3)
        self.step("start", t)

    def _events_listener(self) -> None:
        self.events_client = listen_events(HOST, self.mqtt_port, self.events, self._events_lock, None if self.insecure else self.identity("operator"))

    def replay(self) -> None:
        """Each node's windows over MQTT, as ``edgebind-node replay`` publishes them (the same function, here, one node
        after the other: a process per node would mostly import torch); logs go to ``logs/replay-<node>.log``."""
        import logging

        from node_agent.publish import replay_dataset as replay

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
                    results.append(replay(self.broker, p.node_id, **args, tls=None if self.insecure else self.identity(f"node-{p.node_id}")))
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
        cmd = [script_path("edgebind-coordinator"), "campaign", "--superlink", self.superlink, "--app", str(self.app_dir),
               "--store", self.coordinator_info["store"], "--flwr-home", self.coordinator_info["flwr_home"],
               "--timeout", str(int(self.t.campaign)), *self.tls("--root-certificates", self.pki / "ca.pem")]  # fmt: skip
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

        from node_agent.runtime import registry_channel
        from proto import edgebind_pb2 as pb
        from proto import edgebind_pb2_grpc as pb_grpc

        out = {}
        with registry_channel(self.registry, None if self.insecure else self.identity("operator")) as ch:
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
        self.summary = summary_of(self)

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
    hold: bool = False,
    insecure: bool = False,
) -> dict[str, Any]:
    """Deploy broker, coordinator and ``nodes`` node agents on 127.0.0.1, run one campaign, check, stop everything.

    Returns the summary (also in ``out/summary.json``). ``max_windows`` replays
    at most that many windows per node (default 64 with ``quick``, else 400).
    ``node_venv`` runs the node agents (and their SuperNodes and ClientApps)
    from that virtual environment, e.g. a node-only install. Every run writes
    ``out/deployment.json``, naming each endpoint and each node's files, as
    soon as everything listens; with ``hold`` everything then stays up after
    the campaign until Ctrl-C (or SIGTERM), for an operator to explore. The
    SuperLink link (coordinator, nodes, campaign) is TLS, with a CA made for
    the run in ``out/pki``; ``insecure`` runs it in plain text.
    Raises ``ValueError`` for a fleet that cannot run a campaign (before
    anything starts) and ``DeployError`` naming the step that did not happen.
    """
    out = Path(out)
    check_fleet(scenario, nodes)  # refused before anything starts
    if node_venv:
        node_bin(node_venv)
    prepare_out(out)
    d = Deployment(nodes, dataset, scenario, out, quick, seed, max_windows, timeouts, node_venv, hold, insecure)
    restore = signals_raise() if threading.current_thread() is threading.main_thread() else None
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
            signal.signal(signal.SIGTERM, hurry_handler(d.sup))
            signal.signal(signal.SIGINT, hurry_handler(d.sup))
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
        if (out / "deployment.json").exists():
            d.write_deployment("stopped")
        write_json(out / "summary.json", summary)
        if error is None:
            print(format_summary(summary), flush=True)
            print(f"summary: {out / 'summary.json'}", flush=True)
    if error is not None:
        raise error
    if running:
        raise DeployError(f"{len(running)} processes still run after stopping: {running}")
    return summary


__all__ = ["DeployError", "deploy_local", "format_summary"]
