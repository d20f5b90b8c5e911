"""What security costs a local deployment: the same quick campaign secured (the default) and with --insecure, one run after
the other in the same process.

Secured means the SuperLink link over TLS, SuperNode authentication and the
Registry over mutual TLS (signed bundles and the 0600 key file are on in both).
Printed: each step's wall time (start, replay, ingest, campaign, checks) and
the campaign's own phases, and secured / insecure ratios. Bytes on the wire are
not measured (TLS adds a handshake per connection and a few dozen bytes per
record to the same messages). Asserts nothing.

    python benchmarks/bench_secure.py [--nodes 3] [--out /tmp/bench-secure]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations.deploy_local import deploy_local  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--scenario", default="sensor-bind")
    p.add_argument("--out", type=Path, default=None, help="folder for both deployments (default: a temporary one)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-secure-"))
    runs = {}
    for name, insecure in (("insecure", True), ("secured", False)):
        print(f"## {name}", flush=True)
        runs[name] = deploy_local(nodes=args.nodes, scenario=args.scenario, out=out / name, quick=True, insecure=insecure)
    print(f"\n## secured against insecure: {args.scenario}, {args.nodes} nodes, quick; protections {runs['secured']['protections']}")
    print(f"{'step':22s} {'insecure s':>11s} {'secured s':>10s} {'ratio':>7s}")
    for group, get in (("steps", lambda r: r["steps"]), ("campaign phases", lambda r: r["phases"])):
        keys = sorted(set(get(runs["secured"])) & set(get(runs["insecure"])))
        print(f"# {group}")
        for k in keys:
            a, b = get(runs["insecure"])[k] or 0.0, get(runs["secured"])[k] or 0.0
            print(f"{k:22s} {a:11.1f} {b:10.1f} {b / a if a else float('nan'):6.2f}x")
    total = {n: sum(v for v in r["steps"].values()) for n, r in runs.items()}
    print(f"{'total':22s} {total['insecure']:11.1f} {total['secured']:10.1f} {total['secured'] / total['insecure']:6.2f}x")


if __name__ == "__main__":
    main()
