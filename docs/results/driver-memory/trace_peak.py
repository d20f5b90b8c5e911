"""Catch the driver's largest Python allocation moment during a campaign (tracemalloc, 6 frames) and say who allocated it.

Run from the project root at e56a37c: PYTHONPATH=. python docs/results/driver-memory/trace_peak.py 1000 OUT.
"""
import sys, threading, time, tracemalloc
from pathlib import Path
tracemalloc.start(6)
best = {"cur": 0, "snap": None, "t": 0}
base = {"snap": None}
stop = False
def sampler():
    while not stop:
        cur, _ = tracemalloc.get_traced_memory()
        if cur > best["cur"] + 10 * 2**20:
            best.update(cur=cur, snap=tracemalloc.take_snapshot(), t=time.time())
        time.sleep(0.5)
from simulations.fleet import run_fleet
import coordinator.server_app as S
orig = S.process_peak_mib
def mark():
    if base["snap"] is None:  # after discover: the imports are in
        base["snap"] = tracemalloc.take_snapshot(); best["cur"] = tracemalloc.get_traced_memory()[0]
    return orig()
S.process_peak_mib = mark
th = threading.Thread(target=sampler, daemon=True); th.start()
n = int(sys.argv[1])
res = run_fleet("hapt", "sensor-bind", n, 0, Path(sys.argv[2]), True, 0.0, None, cpus=2, max_windows_per_group=10**9, round_timeout=1800.0, discovery_timeout=600.0)
stop = True
print("peak traced", round(best["cur"] / 2**20, 1), "MiB at", time.strftime("%H:%M:%S", time.localtime(best["t"])))
for st in best["snap"].compare_to(base["snap"], "traceback")[:12]:
    print(f"{st.size_diff / 2**20:+.1f} MiB in {st.count_diff:+d} blocks")
    for fr in st.traceback.format()[-12:]:
        print("   ", fr)
