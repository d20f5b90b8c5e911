"""Where the simulation driver's Python memory sits after each phase, by package (tracemalloc), at N nodes.

Run from the project root at e56a37c: PYTHONPATH=. python docs/results/driver-memory/trace_phases.py N OUT (N = 100, 1000),
printing per phase the traced Python heap (MiB) at its end, the traced peak since the phase before, and the largest
allocators by package.
"""
import json, sys, tracemalloc
from collections import Counter
from pathlib import Path
tracemalloc.start(1)
import coordinator.server_app as S
orig = S.process_peak_mib
rows = {}
def traced() -> float:
    snap = tracemalloc.take_snapshot()
    by = Counter()
    for st in snap.statistics("filename"):
        f = st.traceback[0].filename
        key = "other"
        for pkg in ("/flwr/", "/ray/", "/torch/", "/numpy/", "/sqlalchemy/", "/google/protobuf/", "/grpc/", "coordinator/", "common/", "node_agent/", "simulations/", "/json/", "/logging/", "/threading.py", "/copy.py", "/dataclasses.py", "/uuid.py"):
            if pkg in f:
                key = pkg.strip("/"); break
        else:
            key = f.rsplit("/", 2)[-2] + "/" + f.rsplit("/", 1)[-1] if "/" in f else f
        by[key] += st.size
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    rows[len(rows)] = {"current": round(cur / 2**20, 1), "peak_since_last": round(peak / 2**20, 1), "top": {k: round(v / 2**20, 1) for k, v in by.most_common(12)}}
    return orig()
S.process_peak_mib = traced
from simulations.fleet import run_fleet
n = int(sys.argv[1])
res = run_fleet("hapt", "sensor-bind", n, 0, Path(sys.argv[2]), True, 0.0, None, cpus=2, max_windows_per_group=10**9, round_timeout=1800.0, discovery_timeout=600.0)
for (i, r), phase in zip(rows.items(), res["phases"]):
    print(n, phase, json.dumps(r))
