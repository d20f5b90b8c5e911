"""How a simulated campaign's cost grows with the fleet: 10, 100, 1000 virtual nodes on this machine.

Each size runs one whole campaign (``simulations.fleet.run_fleet``, the real
ServerApp and ClientApp in Flower's simulation engine, quick schedule, every
window of HAPT spread over the nodes) in a child process, and prints per phase: wall seconds, the learning work the nodes
report (CPU-seconds summed over nodes), and the coordinator's own learning
(bind, grow, head). The orchestration share is what is left of the wall time
once the learning work, spread over the engine's CPUs, is taken out. Figures
are ratios against the smallest fleet, measured in the same run. The driver's
peak memory is printed after each phase, so the phase that grows with the fleet shows.

    python benchmarks/bench_sim.py --sizes 10,100,1000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COORDINATOR_LEARNING = ("bind", "grow", "head")

CHILD = """
import json, sys
from pathlib import Path
from simulations.fleet import run_fleet
# quick schedule, but every window of the dataset (quick alone would cap each group at 160)
res = run_fleet("hapt", sys.argv[1], int(sys.argv[2]), 0, Path(sys.argv[3]), True, 0.0, None, cpus=int(sys.argv[4]),
                max_windows_per_group=10**9, round_timeout=1800.0, discovery_timeout=600.0)
print("RESULT " + json.dumps({"phases": res["phases"], "missing": res.get("missing_nodes", []), "state": res.get("state")}))
"""


def run_size(n: int, scenario: str, cpus: int, workdir: Path) -> dict:
    out = workdir / f"fleet-{n}"
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", CHILD, scenario, str(n), str(out), str(cpus)], capture_output=True, text=True)
    wall = time.time() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {n}-node campaign failed (exit {proc.returncode})")
    res = json.loads(line[7:])
    res.update(nodes=n, wall=wall, peak_mib=max(peak_kib, before) / 1024)
    return res


def summarise(r: dict, cpus: int) -> dict:
    phases = r["phases"]
    node_work = sum(p.get("node_compute_seconds", 0.0) for p in phases.values())
    coord_work = sum(phases[p]["seconds"] for p in COORDINATOR_LEARNING if p in phases)
    campaign = sum(p["seconds"] for p in phases.values())
    learning = node_work / cpus + coord_work
    return {"campaign": campaign, "node_work": node_work, "coord_work": coord_work, "orchestration_share": max(0.0, 1 - learning / campaign) if campaign else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--scenario", default="sensor-bind")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            print(f"running a campaign with {n} virtual nodes ...", flush=True)
            r = run_size(n, args.scenario, args.cpus, Path(tmp))
            r.update(summarise(r, args.cpus))
            r["driver_mib"] = max((v["process_peak_mib"] for v in r["phases"].values() if "process_peak_mib" in v), default=float("nan"))
            rows.append(r)
            phases = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in r["phases"].items())
            print(f"  {n} nodes: state {r['state']}, {len(r['missing'])} missing; wall {r['wall']:.1f}s (campaign {r['campaign']:.1f}s); {phases}", flush=True)
            peaks = ", ".join(f"{k} {v['process_peak_mib']:.0f}" for k, v in r["phases"].items() if "process_peak_mib" in v)
            print(f"  driver's peak MiB after each phase (it only rises; where it rises is where the memory went): {peaks}", flush=True)
    base = rows[0]
    # "largest": ru_maxrss over the children so far, which never falls, so a later run shows at least an earlier one's
    print(f"\n{'nodes':>6} {'wall s':>8} {'x base':>7} {'per node':>9} {'campaign s':>11} {'node work':>10} {'coord work':>11} {'orchestration':>14} "
          f"{'driver MiB':>11} {'x base':>7} {'largest MiB':>12}")
    for r in rows:
        print(f"{r['nodes']:>6} {r['wall']:>8.1f} {r['wall'] / base['wall']:>7.2f} {r['wall'] / r['nodes']:>9.3f} {r['campaign']:>11.1f} "
              f"{r['node_work']:>10.1f} {r['coord_work']:>11.1f} {r['orchestration_share']:>13.0%} {r['driver_mib']:>11.0f} "
              f"{r['driver_mib'] / base['driver_mib']:>7.2f} {r['peak_mib']:>12.0f}")
    worst = max(rows, key=lambda r: r["nodes"])
    dominant = max(worst["phases"].items(), key=lambda kv: kv[1]["seconds"])
    print(f"\nat {worst['nodes']} nodes the largest phase is {dominant[0]} ({dominant[1]['seconds']:.0f}s of {worst['campaign']:.0f}s); "
          f"orchestration takes {worst['orchestration_share']:.0%} of the campaign")


if __name__ == "__main__":
    main()
