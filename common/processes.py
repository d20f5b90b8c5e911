"""Child processes, signals, logging set-up and /proc memory figures, shared by the command-line tools,
benchmarks and tests (standard library only)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

log = logging.getLogger("edgebind")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (tests and local deployments listen on 127.0.0.1 only)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def signal_group(proc: subprocess.Popen | int, sig: int) -> None:
    """Send ``sig`` to the process group a child (or a group id) leads; a group already gone, or not ours, is left alone."""
    try:
        os.killpg(proc if isinstance(proc, int) else proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to one process; one already gone, or not ours, is left alone."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM a child started with ``start_new_session`` and everything it started; SIGKILL after ``grace``."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("process %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace)
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    else:  # its own children may outlive it
        signal_group(proc, signal.SIGTERM)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (the second one exits at once)."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def setup_logging(verbose: bool = False, brief: bool = False) -> None:
    """A command-line tool's logging: INFO (DEBUG with ``verbose``) to stderr, with time, level and logger name
    (``brief``: time and message, for a researcher's terminal)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s" if brief else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S" if brief else None,
        stream=sys.stderr,
    )


def ensure_logging() -> None:
    """Where edgebind runs inside another program (a ServerApp, a fleet or an experiment called as a library): its INFO
    messages reach stderr unless the program has set up logging itself."""
    root = logging.getLogger("edgebind")
    if not root.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s edgebind | %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)


def status_kib(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``...) in KiB, or None where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
