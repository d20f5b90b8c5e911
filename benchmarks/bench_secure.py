"""What security costs a local deployment: the same quick campaign secured (the default) and with --insecure, one run after
the other, in wall time and in bytes on the wire.

Secured means the SuperLink link over TLS, SuperNode authentication (node ids
bound to their keys), the Registry over mutual TLS, and MQTT over TLS with
per-node certificates and an ACL (signed bundles and the 0600 key file are on
in both).

Bytes on the wire: each deployment runs in a network namespace of its own
(``unshare -n``, root only), whose loopback carries that deployment's traffic
and nothing else on the machine; the bytes (IP and TCP headers included) and
packets the loopback sent are read from ``/proc/net/dev`` at the end of each
step. Every link of a local deployment is on 127.0.0.1 (MQTT, SuperLink,
Registry, and each SuperNode's own local SuperExec link, which is plain text
in both runs). Printed: each step's wall time and bytes, the campaign's own
phases' wall time, and secured / insecure ratios. Asserts nothing.

    sudo python benchmarks/bench_secure.py [--nodes 3] [--out /tmp/bench-secure]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lo_sent() -> tuple[int, int]:
    """(bytes, packets) the loopback interface of this network namespace has sent."""
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, data = line.partition(":")
        if name.strip() == "lo":
            f = data.split()
            return int(f[8]), int(f[9])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def one(name: str, nodes: int, scenario: str, out: Path) -> None:
    """One deployment, in this process's own network namespace; writes ``out/<name>.json`` (summary and bytes per step)."""
    from simulations.deploy_local import Deployment, deploy_local

    if os.readlink("/proc/self/ns/net") == os.environ.get("BENCH_SECURE_PARENT_NETNS", os.readlink("/proc/self/ns/net")):
        raise SystemExit("not in a network namespace of its own: the loopback's counters would include every other process's traffic")
    marks: list[tuple[str, int, int]] = [("begin", *lo_sent())]
    step = Deployment.step

    def counted(self, step_name: str, t_start: float) -> None:
        step(self, step_name, t_start)
        marks.append((step_name, *lo_sent()))

    Deployment.step = counted  # the counters at the end of every step: bytes between one step's end and the next's
    summary = deploy_local(nodes=nodes, scenario=scenario, out=out / name, quick=True, insecure=name == "insecure")
    marks.append(("end", *lo_sent()))
    wire = {n: {"bytes": b - marks[i][1], "packets": p - marks[i][2]} for i, (n, b, p) in enumerate(marks[1:])}
    wire["total"] = {"bytes": marks[-1][1] - marks[0][1], "packets": marks[-1][2] - marks[0][2]}
    (out / f"{name}.json").write_text(json.dumps({"summary": summary, "wire": wire}, indent=1, default=str))


def _in_namespace(name: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, __file__, "--one", name,
           "--nodes", str(args.nodes), "--scenario", args.scenario, "--out", str(out)]  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "BENCH_SECURE_PARENT_NETNS": os.readlink("/proc/self/ns/net")}
    subprocess.run(cmd, check=True, env=env)
    return json.loads((out / f"{name}.json").read_text())


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--scenario", default="sensor-bind")
    p.add_argument("--out", type=Path, default=None, help="folder for both deployments (default: a temporary one)")
    p.add_argument("--one", choices=("insecure", "secured"), help=argparse.SUPPRESS)  # the child, in its own network namespace
    args = p.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-secure-"))).resolve()
    if args.one:
        return one(args.one, args.nodes, args.scenario, out)
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        raise SystemExit("bytes on the wire need a network namespace per deployment: run as root, with unshare and ip on PATH")
    runs = {}
    for name in ("insecure", "secured"):
        print(f"## {name}", flush=True)
        runs[name] = _in_namespace(name, args, out)
    ins, sec = runs["insecure"], runs["secured"]
    print(f"\n## secured against insecure: {args.scenario}, {args.nodes} nodes, quick; protections {sec['summary'].get('protections')}")
    print(f"{'step':22s} {'insecure s':>11s} {'secured s':>10s} {'ratio':>7s} {'insecure MiB':>13s} {'secured MiB':>12s} {'ratio':>7s}")
    for k in [k for k in sec["wire"] if k in ins["wire"]]:
        a, b = ins["summary"]["steps"].get(k), sec["summary"]["steps"].get(k)
        t = f"{a:11.1f} {b:10.1f} {b / a if a else float('nan'):6.2f}x" if a is not None and b is not None else f"{'':11s} {'':10s} {'':7s}"
        wa, wb = ins["wire"][k]["bytes"], sec["wire"][k]["bytes"]
        print(f"{k:22s} {t} {_mib(wa):>13s} {_mib(wb):>12s} {wb / wa if wa else float('nan'):6.2f}x")
    total = {n: sum(v for v in r["summary"]["steps"].values()) for n, r in runs.items()}
    print(f"{'wall time, all steps':22s} {total['insecure']:11.1f} {total['secured']:10.1f} {total['secured'] / total['insecure']:6.2f}x")
    pk = {n: r["wire"]["total"]["packets"] for n, r in runs.items()}
    print(f"packets: insecure {pk['insecure']}, secured {pk['secured']} ({pk['secured'] / pk['insecure']:.2f}x)")
    print("# campaign phases (wall s)")
    for k in sorted(set(sec["summary"]["phases"]) & set(ins["summary"]["phases"])):
        a, b = ins["summary"]["phases"][k] or 0.0, sec["summary"]["phases"][k] or 0.0
        print(f"{k:22s} {a:11.1f} {b:10.1f} {b / a if a else float('nan'):6.2f}x")


if __name__ == "__main__":
    main()
