"""Child processes, signals, logging set-up and /proc memory figures, shared by the command-line tools,
benchmarks and tests (standard library only)."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger("edgebind")


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux's default where /proc does not say)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(v) for v in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()
_port_lock = threading.Lock()
_port_rng = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (tests and local deployments listen on 127.0.0.1 only).

    Chosen at random *below* the kernel's ephemeral range, and never twice in one process. A port from
    ``bind(0)`` lies inside that range, so in the seconds before a slow server (a SuperLink takes about
    5 s to import) binds it, any outgoing connection, or a client retrying against that very port,
    can take it as its source port, and the server dies with "address already in use".
    """
    hi = _ephemeral_range()[0] - 1
    lo = 10000 if hi > 12000 else 1024  # above most well-known services, where the range leaves room
    with _port_lock:
        for _ in range(200 if hi > lo else 0):
            port = _port_rng.randint(lo, hi)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # a crowded range: fall back to whatever the kernel gives
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


class Restarting:
    """A child process kept running: started in a session of its own, restarted with back-off whenever it exits.

    ``check()`` (called from the owner's loop) notices an exit, logs it with the
    status, and starts the process again once the back-off has passed: 1 s,
    doubling up to ``max_backoff``, back to ``min_backoff`` after a run of
    ``steady`` seconds. ``stop()`` ends it and everything it started.
    """

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None, min_backoff: float = 1.0, max_backoff: float = 60.0,
                 steady: float = 60.0):  # fmt: skip
        self.name, self.cmd, self.env = name, list(cmd), env
        self.min_backoff, self.max_backoff, self.steady = min_backoff, max_backoff, steady
        self.backoff = min_backoff
        self.restarts = 0
        self.exits: list[int] = []  # every exit status seen
        self.proc: subprocess.Popen | None = None
        self._due = 0.0
        self._started = 0.0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True)
        self._started = time.monotonic()

    def check(self) -> bool:
        """True while the process runs; after an exit, restarts it once its back-off is due."""
        now = time.monotonic()
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return True
            signal_group(self.proc, signal.SIGTERM)  # what it started may outlive it
            self.exits.append(code)
            if now - self._started >= self.steady:
                self.backoff = self.min_backoff
            self._due = now + self.backoff
            log.error("%s exited with status %s; restarting in %.0f s", self.name, code, self.backoff)
            self.backoff = min(self.backoff * 2, self.max_backoff)
            self.proc = None
        if now >= self._due:
            self.restarts += 1
            log.info("%s: restart %d", self.name, self.restarts)
            self.start()
            return True
        return False

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace)
            self.proc = None


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


def _not_flower(record: logging.LogRecord) -> bool:
    """Flower's logger prints its records with a handler of its own and passes them on to the root logger too."""
    return record.name != "flwr" and not record.name.startswith("flwr.")


def setup_logging(verbose: bool = False, brief: bool = False) -> None:
    """A command-line tool's logging: INFO (DEBUG with ``verbose``) to stderr, with time, level and logger name
    (``brief``: time and message, for a researcher's terminal). Flower's own lines are left to Flower's handler,
    so that each shows once."""
    before = set(logging.getLogger().handlers)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s" if brief else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S" if brief else None,
        stream=sys.stderr,
    )
    for h in set(logging.getLogger().handlers) - before:  # only the handler made here (not a test harness's)
        h.addFilter(_not_flower)


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
