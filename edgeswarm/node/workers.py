"""Several processes serving one port, supervised as nginx's master supervises its workers.

``Supervisor`` reserves the port (resolving port 0 to a real one), then forks
N workers that each listen on it with SO_REUSEPORT: the kernel spreads new
connections over their accept queues.  The supervisor itself serves nothing
and runs no event loop (a fork from a process with a running loop or threads
is unsafe); it waits for signals with ``sigwaitinfo``:

- SIGTERM, SIGINT or SIGHUP (daemon.STOP_SIGNALS): every worker gets
  SIGTERM, and the supervisor exits once they have (SIGKILL after
  ``STOP_GRACE`` seconds).  A worker stops on any of them as on SIGTERM (the
  whole process group gets a closed terminal's SIGHUP);
- SIGCHLD: a worker that exits unasked is logged and forked again (after a
  back-off when it keeps dying young).  A first-generation worker that dies
  before it listens (a bad key file, say) ends the whole node, with its code:
  restarting cannot fix a configuration;
- SIGUSR1: a worker says it is listening (its index goes down a pipe first:
  two signals at once arrive as one).

Once listening, a worker's event loop sends its pid down another pipe every
``BEAT_S``; one silent for ``WEDGED_S`` (stopped, or its loop stuck in a
busy loop or a blocking call) is killed with SIGKILL, and so restarted.  The
kernel went on handing it connections, which hung: a router polling the
edge reached the other worker each time and kept the edge up, and a third of
the clients it sent there waited for good (an adversarial session).

If the supervisor is SIGKILLed, each worker gets SIGKILL from the kernel
(``PR_SET_PDEATHSIG``), so the port is free for a restart at once.  The
supervisor keeps its own bound (not listening) socket on the port, so that no
other program takes the port while a worker restarts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeswarm.node.daemon import FORCE_AFTER, STOP_SIGNALS
from edgeswarm.processes import pid_alive

log = logging.getLogger("edgeswarm.workers")
STOP_GRACE = 10.0  # seconds workers get to finish after SIGTERM before SIGKILL
YOUNG_S = 2.0  # a worker that dies younger than this is restarted after a back-off
MAX_BACKOFF_S = 30.0
BEAT_S = 1.0  # a listening worker's heartbeat
WEDGED_S = 10.0  # a worker whose heartbeat is this late is killed (and restarted)
AWAY_S = 3 * BEAT_S  # the supervisor itself did not look at the beats this long: it was stopped too (_watch_beats)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_STOPS = set(STOP_SIGNALS)  # as a single process's (a closed terminal's SIGHUP too: it killed the workers at once)
_WATCHED = {signal.SIGCHLD, signal.SIGUSR1, *_STOPS}


MAX_PER_CORE = 4  # edge --workers beyond this many a usable core is refused: a typo of 10000 forked until the host fell over


def private_dir(role: str) -> str:
    """A new 0700 directory for the workers' sockets and shared files, named after this supervisor's pid; those of
    supervisors no longer running go first (a SIGKILLed one cannot remove its own: CI's runs left hundreds)."""
    prefix = f"edgeswarm-{role}-"
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            pid = entry.name.removeprefix(prefix).split("-", 1)[0]
            if entry.name.startswith(prefix) and pid.isdigit() and entry.is_dir(follow_symlinks=False) and not pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Slot:
    """What a worker is told: its index (0 is the primary), how many there are, the port, and the private directory."""

    index: int
    count: int
    host: str
    port: int
    rundir: str  # 0700 directory of the workers' private unix sockets
    restarted: bool = False  # forked again after a worker of this index died (piecestore.py: it counts every piece found)

    def socket_path(self, index: int) -> str:
        return os.path.join(self.rundir, f"worker-{index}.sock")

    @property
    def primary_path(self) -> str:
        """The primary's copy of the node's own app, for requests the other workers forward (roles/edgeworkers.py)."""
        return os.path.join(self.rundir, "primary.sock")


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening; port 0 becomes a free one.

    A plain bind is tried first, so that a port another program listens on
    (even one with SO_REUSEPORT, such as a second edge) is refused rather than shared.
    """
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT connections of a previous run are no conflict
        probe.bind(address)
        address = (address[0], probe.getsockname()[1], *address[2:])
    keep = socket.socket(family, socket.SOCK_STREAM)
    keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    keep.set_inheritable(False)
    keep.bind(address)
    return keep


def die_with_parent(parent: int) -> None:
    """In a worker: SIGKILL from the kernel when the supervisor dies, however it dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive a killed supervisor", ctypes.get_errno())
    if os.getppid() != parent:
        os._exit(1)


_ready_fd = -1  # in a worker: the pipe to the supervisor
_beat_fd = -1  # in a worker: the heartbeat pipe to the supervisor


def _pid_bytes() -> bytes:
    """This process's pid as the supervisor's pipes carry it (``_pids`` reads them)."""
    return os.getpid().to_bytes(4, "little")


def _pids(data: bytes) -> list[int]:
    return [int.from_bytes(data[at : at + 4], "little") for at in range(0, len(data) - 3, 4)]


def ready() -> None:
    """In a worker, once it listens: tells the supervisor (first-generation deaths after this are restarted)."""
    with contextlib.suppress(OSError):
        os.write(_ready_fd, _pid_bytes())
        os.kill(os.getppid(), signal.SIGUSR1)


async def heartbeat() -> None:
    """In a worker, from its event loop for as long as it runs: its pid to the supervisor every BEAT_S (module docstring)."""
    import asyncio

    pid = _pid_bytes()
    while True:
        with contextlib.suppress(OSError):  # a full pipe (a supervisor behind): the next beat says the same
            os.write(_beat_fd, pid)
        await asyncio.sleep(BEAT_S)


class Supervisor:
    """Forks ``count`` workers that run ``work(slot)`` (its return value is the exit code), and keeps them running."""

    def __init__(self, role: str, count: int, host: str, port: int, rundir: str, work: Callable[[Slot], int], on_ready: Callable[[], None]):
        self.role, self.count, self.work = role, count, work
        self.on_ready = on_ready  # once, when every worker of the first generation listens: the node's "listening on"
        self.host, self.port, self.rundir = host, port, rundir
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # index -> when its current process was forked
        self.ever_ready: set[int] = set()
        self.fails: dict[int, int] = {}  # index -> consecutive young deaths
        self.due: dict[int, float] = {}  # index -> when to fork it again
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        self._beat_r, self._beat_w = os.pipe()
        os.set_blocking(self._beat_r, False)
        os.set_blocking(self._beat_w, False)  # a worker never waits on a beat
        self.beats: dict[int, float] = {}  # pid -> when it last beat (workers that said they listen, or beat)
        self._looked = time.monotonic()  # when the supervisor last read the beats

    def run(self) -> int:
        """Fork the workers and supervise them until a stop signal; the exit code for the node."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            for index in range(self.count):
                self._fork(index)
            log.info("%s: %d workers on port %d (supervisor pid %d)", self.role, self.count, self.port, os.getpid())
            return self._loop()
        finally:
            self._stop()
            while signal.sigtimedwait(_WATCHED, 0) is not None:  # a stop signal sent again meanwhile: taken, not deadly
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _fork(self, index: int) -> None:
        parent = os.getpid()
        slot = Slot(index, self.count, self.host, self.port, self.rundir, restarted=index in self.ever_ready)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            global _ready_fd, _beat_fd
            try:
                die_with_parent(parent)
                os.close(self._ready_r)
                os.close(self._beat_r)
                _ready_fd, _beat_fd = self._ready_w, self._beat_w
                for sig in _WATCHED:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                code = self.work(slot)
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    log.error("%s", exc.code)
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("%s worker %d failed", self.role, index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = index
        self.started[index] = time.monotonic()

    def _loop(self) -> int:
        while True:
            timeout = max(0.0, min([*self.due.values(), time.monotonic() + BEAT_S]) - time.monotonic())
            info = signal.sigtimedwait(_WATCHED, timeout)
            self._watch_beats()
            if info is None:
                pass
            elif info.si_signo in _STOPS:
                log.info("%s: %s: stopping %d workers", self.role, signal.Signals(info.si_signo).name, len(self.pids))
                return 0
            elif info.si_signo == signal.SIGUSR1:
                self._read_ready()
            fatal = self._reap()
            if fatal is not None:
                return fatal
            now = time.monotonic()
            for index, when in list(self.due.items()):
                if when <= now:
                    del self.due[index]
                    self._fork(index)

    def _watch_beats(self) -> None:
        """Note the heartbeats that came; SIGKILL a worker whose last one is WEDGED_S old (``_reap`` restarts it)."""
        now = time.monotonic()
        if now - self._looked > AWAY_S:  # stopped with its workers (a SIGSTOP to the group, ^Z): their silence was its
            self.beats = dict.fromkeys(self.beats, now)  # own, and woken first it killed one still being continued (a CI run)
        self._looked = now
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._beat_r, 4096):
                for pid in _pids(data):
                    if pid in self.pids:
                        self.beats[pid] = now
        for pid, last in list(self.beats.items()):
            if pid not in self.pids:
                del self.beats[pid]
            elif now - last >= WEDGED_S:
                log.error(
                    "%s worker %d (pid %d) has not run for %.0f s (stopped, or its loop stuck): killing it",
                    self.role,
                    self.pids[pid],
                    pid,
                    now - last,
                )
                del self.beats[pid]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _read_ready(self) -> None:
        """The pids of workers that now listen, from the pipe; each is watched for heartbeats from then on.

        A worker stopped after it said it listens and before its first beat
        was never watched, so never killed: its share of connections hung
        for good (a CI run: the node said it listens, and a SIGSTOP came in
        that window)."""
        try:
            data = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        was = len(self.ever_ready)
        now = time.monotonic()
        for pid in _pids(data):
            index = self.pids.get(pid)
            if index is not None:
                self.ever_ready.add(index)
                self.beats.setdefault(pid, now)
        if was < self.count == len(self.ever_ready):
            self.on_ready()

    def _reap(self) -> int | None:
        """Collect exited workers and schedule their restart; an exit code if the node must end."""
        self._read_ready()  # a worker may have said so just before it died
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            if index not in self.ever_ready:
                log.error("%s worker %d (pid %d) %s before it listened: stopping", self.role, index, pid, how)
                return code if code > 0 else 1
            young = time.monotonic() - self.started[index] < YOUNG_S
            self.fails[index] = self.fails.get(index, 0) + 1 if young else 0
            delay = min(MAX_BACKOFF_S, 2.0 ** self.fails[index]) if young else 0.0
            log.warning("%s worker %d (pid %d) %s; restarting it%s", self.role, index, pid, how, f" in {delay:g} s" if delay else "")
            self.due[index] = time.monotonic() + delay
        return None

    def _stop(self) -> None:
        """SIGTERM every worker, wait for them: SIGKILL after STOP_GRACE, or at once when a stop signal comes again
        FORCE_AFTER or more after the first (an operator who means it; one within it is a tool's double send, as a
        test harness's group stop: its workers lost their last ledger rows).  Restoring the signal mask with such a
        signal pending ended the supervisor with 143 and its workers' directory left."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        began = time.monotonic()
        deadline = began + STOP_GRACE
        while self.pids:
            again = signal.sigtimedwait(_WATCHED, 0)
            stop = again.si_signo if again is not None and again.si_signo in _STOPS else None
            if stop is not None and time.monotonic() - began >= FORCE_AFTER and deadline != float("inf"):
                log.info("%s: %s again: killing the workers still stopping (%d) now", self.role, signal.Signals(stop).name, len(self.pids))
                deadline = time.monotonic()
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.pids.pop(pid, None)
                continue
            if time.monotonic() > deadline:
                if time.monotonic() - began >= STOP_GRACE:  # not asked to (a second stop signal says its own line)
                    log.warning(
                        "%s: %d workers still stopping after %g s: killed, their last cleanup undone", self.role, len(self.pids), STOP_GRACE
                    )
                for pid in self.pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)
