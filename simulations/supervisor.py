"""The processes a local deployment starts: started in groups of their own, watched, and all stopped.

``Supervisor`` starts each child in its own process group (dying with this
process where the kernel allows), remembers every process it or its children
started (by pid and start time, so a reused pid is never mistaken for ours),
and stops them all: SIGTERM, then SIGKILL after a grace period. Also the
helpers that find the scripts and servers a deployment runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.processes import signal_group, signal_pid

HOST = "127.0.0.1"  # every server a local deployment starts listens here only

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


def _children(stats: dict[int, tuple[str, int, int, int, int]], live_only: bool = False) -> dict[int, list[int]]:
    """Parent pid -> its children's pids (``live_only``: zombies left out, and with them what is below them)."""
    kids: dict[int, list[int]] = {}
    for pid, st in stats.items():
        if not (live_only and st[0] in ("Z", "X")):
            kids.setdefault(st[1], []).append(pid)
    return kids


def _below(kids: dict[int, list[int]], root: int) -> list[int]:
    """Every pid below ``root`` in a parent -> children map."""
    out, stack = [], list(kids.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += kids.get(pid, [])
    return out


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, what it runs) of every live process below ``root``."""
    return [(pid, _cmd_name(pid)) for pid in _below(_children(_all_stats(), live_only=True), root)]


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
        kids = _children(stats)
        with self._lock:
            roots = [(c.proc.pid, c.name) for c in self.children]
            known = dict(self.seen)
        found = {}
        for root, name in roots:
            for pid in _below(kids, root):
                st = stats[pid]
                if pid != os.getpid():
                    found[(pid, st[4])] = known.get((pid, st[4])) or f"{name}/{_cmd_name(pid)}"
        with self._lock:
            for key, name in found.items():
                self.seen.setdefault(key, name)

    def watch_until_interrupted(self, say, skip: tuple[str, ...] = (), every: float = 1.0) -> None:
        """Block until KeyboardInterrupt (Ctrl-C, or SIGTERM under ``signals_raise``), saying when a child exits meanwhile
        (children whose name starts with one of ``skip`` are expected to end)."""
        gone: set[str] = set()
        try:
            while True:
                for c in self.children:
                    if c.name not in gone and c.proc.poll() is not None and not c.name.startswith(skip):
                        gone.add(c.name)
                        say(f"{c.name} exited with status {c.proc.returncode} while held (log: {c.log})")
                time.sleep(every)
        except KeyboardInterrupt:
            return

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


def listening(port: int) -> bool:
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


def script_path(name: str) -> str:
    """A console script next to this interpreter (the package's own), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not on PATH (pip install -e . installs it)")
    return found




def signals_raise() -> tuple[Any, Any]:
    """SIGTERM becomes KeyboardInterrupt (so the ``finally`` stops everything); returns the old handlers."""

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old_int = signal.getsignal(signal.SIGINT)
    old_term = signal.signal(signal.SIGTERM, on_term)
    return old_int, old_term


def hurry_handler(sup: Supervisor):
    def handler(_signum, _frame):
        print("[deploy-local] stopping: killing what is left", flush=True)
        sup.hurry.set()

    return handler


def symlink_log(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (relative), quietly: a log link is a convenience, never a failure."""
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))
    except OSError:
        pass


def read_log(path: Path) -> str:
    """A log's text so far, or an empty string when there is none yet."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
