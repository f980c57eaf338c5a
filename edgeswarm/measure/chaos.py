"""``edgeswarm chaos``: a lab run under a schedule of faults, and what the deployment delivered through them.

A chaos run is a lab download run (``lab.py``) whose scenario has ``faults``:
at given seconds it kills and restarts daemons, fills an edge's disk, and
starts misbehaving nodes (``doubles.py``) against a region: corrupting,
bloating and Sybil peers, a lying parent, a slowloris client.  Throughout, it

- reads the content through whatever each fault hits (an edge, a peer's
  gateway, a fresh peer started to be the victim) and compares every byte
  read with the original: corrupt bytes must stay 0;
- samples every process's VmRSS and notices any that exits on its own;
- times each fault's recovery: from the fault's end (the restart, the double
  stopped, the disk freed; a kill ends at once) to the first probe that got
  ``/healthz`` and correct bytes again;
- at the end checks every peer's copy, byte for byte: downloads completed,
  and data lost (a copy that was complete and no longer is).

It exits 1 when a byte delivered was wrong or a node crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from edgeswarm.errors import EdgeswarmError
from edgeswarm.measure.doubles import LIES
from edgeswarm.measure.lab import Lab, LabError
from edgeswarm.measure.process import NodeProcess
from edgeswarm.protocol.units import parse_rate
from edgeswarm.roles.config import PeerConfig

FAULT_KINDS = ("kill", "restart", "disk_full", "corrupt_peer", "bloating_peer", "lying_parent", "sybil", "slowloris")
SCALAR = {
    "kill": "node",
    "restart": "node",
    "disk_full": "node",
    "corrupt_peer": "count",
    "bloating_peer": "count",
    "lying_parent": "lie",
    "sybil": "ids",
    "slowloris": "connections",
}
OPTIONS = {
    "kill": ("node",),
    "restart": ("node",),
    "disk_full": ("node",),
    "corrupt_peer": ("count", "region"),
    "bloating_peer": ("count", "region", "rate"),
    "lying_parent": ("lie", "region"),
    "sybil": ("ids", "region"),
    "slowloris": ("connections", "target", "every"),
}
PREPARED = ("corrupt_peer", "bloating_peer", "lying_parent", "sybil", "slowloris")  # their processes start with the deployment
DEFAULT_FOR = {"kill": 0.0, "restart": 0.0}  # seconds a fault lasts; others: LASTS
LASTS = 8.0
RECOVERY_LIMIT = 20.0  # a fault not recovered from this long after its end is reported as not recovered
PROBE_EVERY = 0.25
PROBE_BYTES = 256 * 1024
FRESH_BYTES = 2 * 1024 * 1024  # the file a disk-full edge is asked for: it has to store it
DISK_SLACK = 16 * 1024 * 1024  # the tmpfs holds the content, its state and this much more
LEFT_FREE = 1024 * 1024  # what the ballast leaves: a few pieces fit, then the disk is full mid-file


class Skip(EdgeswarmError):
    """A fault that cannot be made here, and why."""


@dataclass
class Fault:
    at: float
    kind: str
    target: str  # the node hit, or the edge of the region attacked
    duration: float
    options: dict
    started: float | None = None
    ended: float | None = None
    recovered: float | None = None
    skipped: str | None = None
    ok: int = 0
    failed: int = 0
    corrupt: int = 0  # wrong bytes its probes read
    last_ok: bool = False  # the latest probe's verdict
    ok_at_end: bool = False  # serving when the fault ended, and no probe has failed since
    first_error: str = ""
    last_error: str = ""
    probe: Callable[[], str] | None = None  # the base URL to read through, looked up at each probe
    probe_file: str = "update.img"
    whole: bool = False  # read the whole file rather than a range
    undo: Callable | None = None  # prepared faults: how to end it
    activate: list[Callable] = field(default_factory=list)  # prepared faults: what starts it, given the run's session
    details: dict = field(default_factory=dict)

    def row(self) -> dict:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t, 2)

        return {
            "at": self.at,
            "kind": self.kind,
            "target": self.target,
            "for_s": self.duration,
            "options": self.options,
            "started_s": rel(self.started),
            "ended_s": rel(self.ended),
            "recover_s": None if self.recovered is None or self.ended is None else round(max(0.0, self.recovered - self.ended), 2),
            "probes": {"ok": self.ok, "failed": self.failed},
            "corrupt_bytes": self.corrupt,
            "first_error": self.first_error,
            "last_error": self.last_error,
            "skipped": self.skipped,
            "details": self.details,
        }


def parse_faults(docs: object, s) -> list[Fault]:
    """The scenario's ``faults``: ``[{at: SECONDS, KIND: VALUE-or-OPTIONS, for: SECONDS}, ...]``; ValueError says what is wrong."""
    if not isinstance(docs, list):
        raise ValueError("faults is a list of {at: SECONDS, KIND: ...}")
    return [_fault(doc, f"faults[{i}]", s) for i, doc in enumerate(docs)]


def _fault(doc: object, where: str, s) -> Fault:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: a fault is a mapping like {{at: 5, kill: edge-east}}")
    doc = dict(doc)
    at, duration = doc.pop("at", None), doc.pop("for", None)
    if type(at) not in (int, float) or at < 0:
        raise ValueError(f"{where}: 'at' must be the seconds after the start (>= 0)")
    if len(doc) != 1 or next(iter(doc)) not in FAULT_KINDS:
        raise ValueError(f"{where}: one fault kind of {', '.join(FAULT_KINDS)} besides 'at' and 'for', not {sorted(doc)}")
    kind, value = doc.popitem()
    options = dict(value) if isinstance(value, dict) else {SCALAR[kind]: value}
    unknown = set(options) - set(OPTIONS[kind])
    if unknown:
        raise ValueError(f"{where}: {kind} takes {', '.join(OPTIONS[kind])}, not {', '.join(sorted(unknown))}")
    duration = DEFAULT_FOR.get(kind, LASTS) if duration is None else duration
    if type(duration) not in (int, float) or duration < 0:
        raise ValueError(f"{where}: 'for' must be seconds >= 0")
    return Fault(float(at), kind, _target(kind, options, s, where), float(duration), options)


def _target(kind: str, o: dict, s, where: str) -> str:
    """The node a fault hits, checked against the scenario's nodes; options checked on the way."""
    regions = [r.name for r in s.regions]
    nodes = ["origin", *(f"edge-{r.name}" for r in s.regions), *(f"peer-{r.name}-{i + 1}" for r in s.regions for i in range(r.peers))]

    def need(ok: bool, why: str) -> None:
        if not ok:
            raise ValueError(f"{where}: {kind}: {why}")

    def number(name: str, low: int, high: int, default: int) -> None:
        o.setdefault(name, default)
        need(type(o[name]) is int and low <= o[name] <= high, f"{name} must be an integer {low}..{high}")

    if kind in ("kill", "restart", "disk_full"):
        need(o.get("node") in nodes, f"node must be one of origin, edge-REGION, peer-REGION-N, not {o.get('node')!r}")
        need(kind != "disk_full" or o["node"].startswith("edge-"), "only an edge's disk can be filled")
        return o["node"]
    if kind == "slowloris":
        o.setdefault("target", f"edge-{regions[0]}")
        need(o["target"] in nodes, f"target must be a node of the scenario, not {o['target']!r}")
        number("connections", 1, 5000, 300)
        o.setdefault("every", 10)
        need(type(o["every"]) in (int, float) and o["every"] > 0, "every must be positive seconds")
        return o["target"]
    o.setdefault("region", regions[0])
    need(o["region"] in regions, f"region must be one of {', '.join(regions)}")
    if kind in ("corrupt_peer", "bloating_peer"):
        number("count", 1, 20, 1)
    if kind == "bloating_peer":
        o.setdefault("rate", "4MB/s")
        try:
            parse_rate(str(o["rate"]))
        except ValueError as exc:
            need(False, str(exc))
    if kind == "sybil":
        number("ids", 1, 100_000, 2000)
    if kind == "lying_parent":
        o.setdefault("lie", "other-path")
        need(o["lie"] in LIES, f"lie is one of {', '.join(LIES)}")
    return f"edge-{o['region']}"


class Chaos(Lab):
    """The lab with a fault schedule, byte-for-byte checks of every read, RSS and crash watch."""

    def __init__(self, *args):
        super().__init__(*args)
        self.faults = parse_faults(self.s.faults, self.s)
        self.checked: Counter[str] = Counter()  # reads, bytes, corrupt
        self.corrupt: list[dict] = []  # where wrong bytes were read
        self.rss: dict[str, int] = {}
        self.crashes: list[dict] = []
        self.victims: list[NodeProcess] = []
        self.unchecked: list[str] = []  # peers down at the end: their copies could not be read
        self.bad_copies: dict[str, str] = {}  # peer -> why its copy could not be read back whole and right
        self.victim_copies: dict[str, bool | None] = {}
        self.refused: dict[str, str] = {}  # users whose download was refused at least once, and the last reason
        self._serial = itertools.count(1)  # names of doubles and victims
        self._background: set[asyncio.Task] = set()
        self._meant: set[int] = set()  # pids this run stopped on purpose
        self._mounted: list[Path] = []
        self._mount_skips: dict[str, str] = {}
        self._originals: dict[str, int] = {}  # file name -> fd of what the origin published

    # -- deployment ------------------------------------------------------------------------
    def _content(self) -> dict[str, int]:
        files = super()._content()
        for i, f in enumerate(self.faults):
            if f.kind == "disk_full":
                f.probe_file, f.whole = f"fresh-{i + 1}.img", True
                files[f.probe_file] = FRESH_BYTES
        return files

    async def deploy(self) -> None:
        if self.s.kind != "download" or self.net.name != "loopback":
            raise LabError("a chaos run is a download scenario on loopback: its doubles use this host's addresses")
        for f in self.faults:
            if f.kind == "disk_full" and f.target not in self._mount_skips and self.root / f.target not in self._mounted:
                self._mount(f.target)
        try:
            await super().deploy()
            for name in self.files:
                self._originals[name] = os.open(self.root / "publish" / name, os.O_RDONLY)
            await asyncio.gather(*(self._prepare(f) for f in self.faults if f.kind in PREPARED))
        except BaseException:  # Ctrl-C included: run() will not be there to unmount
            self._unmount()
            raise

    async def _prepare(self, f: Fault) -> None:
        """Start a fault's doubles and victim now, idle: on a busy machine a start takes seconds, and the fault is due at its time."""
        try:
            f.undo = await getattr(self, "_" + f.kind)(f)
        except (RuntimeError, OSError) as exc:
            f.skipped = f"could not make the fault: {exc}"

    def _mount(self, edge: str) -> None:
        """A tmpfs as this edge's cache, so that its disk can be filled; a reason to skip if it cannot be had."""
        path = self.root / edge
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self._mount_skips[edge] = "filling a disk needs a tmpfs, and mounting one needs root"
            return
        size = sum(self._content().values()) + DISK_SLACK
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode:
            self._mount_skips[edge] = f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
        else:
            self._mounted.append(path)

    def _unmount(self) -> None:
        """Lazily: the edge may still hold files there; the kernel frees the tmpfs when it exits."""
        for path in self._mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        self._mounted.clear()

    # -- the run ---------------------------------------------------------------------------
    async def run(self, progress) -> None:
        try:
            await super().run(progress)
        finally:
            for task in self._background:
                task.cancel()
            await self._stop_doubles()
            self._unmount()
            for fd in self._originals.values():
                os.close(fd)
            self._originals.clear()

    def _acts(self, http: aiohttp.ClientSession) -> list:
        return [*super()._acts(http), self._schedule(http)]

    def _late(self) -> None:
        """Downloads that did not finish are a figure of the report, not the end of the run."""

    async def _ask(self, http: aiohttp.ClientSession, u) -> None:
        """A user whose edge is down asks again, as a user would, until the run's timeout."""
        while True:
            try:
                return await super()._ask(http, u)
            except (LabError, aiohttp.ClientError) as exc:
                self.refused[u.name] = str(exc)[:200]
            await asyncio.sleep(1.0)

    async def _schedule(self, http: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._fault(http, f) for f in self.faults))

    async def _fault(self, http: aiohttp.ClientSession, f: Fault) -> None:
        await self._at(f.at)
        f.started = self.now()
        try:
            if f.skipped:
                return
            undo = await self._begin(http, f)
        except Skip as exc:
            f.skipped = str(exc)
            return
        except (RuntimeError, OSError, aiohttp.ClientError) as exc:  # a double or a node that would not start or answer
            f.skipped = f"could not make the fault: {exc}"
            return
        f.details["in_effect_after_s"] = round(self.now() - f.started, 2)  # a restart takes as long as a start
        probe = asyncio.create_task(self._probe(http, f))
        try:
            await asyncio.sleep(f.duration)
            if undo is not None:
                try:
                    await undo()
                except (RuntimeError, OSError, aiohttp.ClientError) as exc:  # a double that died: the crash check says so
                    f.details["could_not_end"] = str(exc)[:300]
            f.ended = self.now()
            f.ok_at_end = f.last_ok
            await probe
        finally:  # interrupted: the probe goes with the fault (left, it read through a closed session: tracebacks)
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)

    async def _begin(self, http: aiohttp.ClientSession, f: Fault):
        """Make the fault; how to end it, or None."""
        if f.kind not in PREPARED:
            return await getattr(self, "_" + f.kind)(http, f)
        await asyncio.gather(*(go(http) for go in f.activate))
        return f.undo

    async def _probe(self, http: aiohttp.ClientSession, f: Fault) -> None:
        """Read through the fault's target until it serves correct bytes after the fault ended."""
        rng = random.Random(f"{self.s.seed}-{f.at}-{f.kind}")
        while True:
            ok, why = await self._check(http, f, rng)
            t = self.now()
            f.last_ok = ok
            if ok:
                f.ok += 1
            else:
                f.failed += 1
                f.first_error = f.first_error or why[:300]
                f.last_error = why[:300]
                f.ok_at_end = False
            if f.ended is not None and ok:
                f.recovered = f.ended if f.ok_at_end else t  # serving throughout: nothing to recover from
                return
            if f.ended is not None and t - f.ended > RECOVERY_LIMIT:
                return
            await asyncio.sleep(PROBE_EVERY)

    async def _check(self, http: aiohttp.ClientSession, f: Fault, rng: random.Random) -> tuple[bool, str]:
        assert f.probe is not None, "set when the fault is injected, before probing starts"
        base = f.probe()
        try:
            async with http.get(base + "/healthz", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status != 200:
                    return False, f"/healthz answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"/healthz: {exc.__class__.__name__}"
        size = os.fstat(self._originals[f.probe_file]).st_size
        first = 0 if f.whole else rng.randrange(max(1, size - PROBE_BYTES))
        last = size - 1 if f.whole else min(size, first + PROBE_BYTES) - 1
        return await self._read(http, f"{base}/{f.probe_file}", f.probe_file, first, last, f"{f.kind} probe at {f.target}", f)

    async def _read(
        self, http: aiohttp.ClientSession, url: str, name: str, first: int, last: int, who: str, fault: Fault | None = None
    ) -> tuple[bool, str]:
        """GET bytes first..last and compare each with the original; (all there and right, why not)."""
        size = os.fstat(self._originals[name]).st_size
        whole = first == 0 and last == size - 1
        got = wrong = 0
        error = ""
        timeout = aiohttp.ClientTimeout(total=60, sock_read=10)
        try:
            async with http.get(url, headers={} if whole else {"Range": f"bytes={first}-{last}"}, timeout=timeout) as resp:
                if resp.status not in (200, 206):
                    return False, f"{resp.status} {(await resp.text(errors='replace'))[:200].strip()}"
                offset = first if resp.status == 206 else 0
                want = last - first + 1 if resp.status == 206 else size
                async for chunk in resp.content.iter_chunked(1 << 20):
                    wrong += self._compare(name, offset + got, chunk)
                    got += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"cut after {got} bytes: {exc.__class__.__name__} {exc}"
            want = last - first + 1
        self.checked["reads"] += 1
        self.checked["bytes"] += got
        if wrong:
            self.checked["corrupt"] += wrong
            if fault is not None:
                fault.corrupt += wrong
            self.corrupt.append({"t": round(self.now(), 2), "who": who, "url": url, "corrupt_bytes": wrong})
            return False, f"{wrong} of {got} bytes differ from the original"
        return not error and got == want, error or ("" if got == want else f"{got} of {want} bytes")

    def _compare(self, name: str, offset: int, chunk: bytes) -> int:
        """Bytes of the chunk that differ from the original at their offset (past its end: all)."""
        original = os.pread(self._originals[name], len(chunk), offset)
        if original == chunk:
            return 0
        n = len(original)
        return int(np.count_nonzero(np.frombuffer(original, np.uint8) != np.frombuffer(chunk[:n], np.uint8))) + len(chunk) - n

    # -- the faults: each makes its fault and returns how to end it, or None -------------------
    async def _kill(self, http: aiohttp.ClientSession, f: Fault):
        node = self._node(f.target)
        if not node.running:
            raise Skip(f"{f.target} is not running")
        self._meant.add(node.pid)
        await asyncio.to_thread(node.kill)
        f.probe = lambda: _base(node)
        return (lambda: self._start_again(http, f.target)) if f.duration else None

    async def _restart(self, http: aiohttp.ClientSession, f: Fault):
        node = self._node(f.target)
        if node.running:
            self._meant.add(node.pid)
            await asyncio.to_thread(node.stop)
        await self._start_again(http, f.target)
        f.probe = lambda: _base(node)

    async def _start_again(self, http: aiohttp.ClientSession, name: str) -> None:
        """On the same port, so that what points at it (peers at their edge, edges at the origin) finds it again."""
        node = self._node(name)
        port = urlsplit(node.urls.get("upload", node.url)).port
        assert port is not None, "a started node's URLs carry their port"
        node.port = port
        await asyncio.to_thread(node.start)
        user = next((u for u in self.users if u.node is node), None)
        if user is not None and user.done_at is None:
            await self._ask(http, user)

    async def _disk_full(self, http: aiohttp.ClientSession, f: Fault):
        if f.target in self._mount_skips:
            raise Skip(self._mount_skips[f.target])
        ballast = self.root / f.target / ".chaos-ballast"
        f.details["ballast_bytes"] = await asyncio.to_thread(_fill, ballast, LEFT_FREE)
        f.probe = lambda: self.edges[f.target[5:]].url

        async def free() -> None:
            ballast.unlink(missing_ok=True)

        return free

    # The doubles' faults are prepared with the deployment (_prepare) and started at their time (_begin).
    async def _corrupt_peer(self, f: Fault):
        return await self._seeds(f, "corrupting")

    async def _bloating_peer(self, f: Fault):
        return await self._seeds(f, "bloating", "--rate", str(f.options["rate"]))

    async def _sybil(self, f: Fault):
        f.options["count"] = 1
        return await self._seeds(f, "sybil", "--ids", str(f.options["ids"]))

    async def _seeds(self, f: Fault, kind: str, *args: str):
        """Doubles in the attacked region, and a fresh peer there that has to download through them."""
        region = f.options["region"]
        edge = self.edges[region].url
        *doubles, victim = await asyncio.gather(
            *(self._double(f, kind, region, "--edge", edge, *args) for _ in range(f.options["count"])),
            self._victim(f, region, [edge]),
        )
        f.probe = lambda: victim.urls["gateway"]
        return lambda: self._end_doubles(f, doubles)

    async def _lying_parent(self, f: Fault):
        """A parent that lies, and a fresh peer whose only edge it is; the fault ends when it turns honest.  To be
        told an old version, the victim must have had the new one: it downloads through the liar before the fault."""
        region = f.options["region"]
        edge = self.edges[region].url
        key = self.root / "publish" / ".edgeswarm" / "origin.key"
        liar = await self._double(f, "lying", region, "--edge", edge, "--lie", f.options["lie"], "--key", str(key))
        victim = await self._victim(f, region, [liar.url], early=f.options["lie"] == "old-version")
        f.probe = lambda: victim.urls["gateway"]
        return lambda: self._end_lies(f, liar)

    async def _end_lies(self, f: Fault, liar: NodeProcess) -> None:
        """The liar turns honest rather than going away: it is the victim's only edge."""
        async with aiohttp.ClientSession() as http:
            async with http.post(liar.url + "/end") as resp:
                await resp.read()
            f.details["doubles"][liar.log_path.stem] = await _json(http, liar.url + "/status")

    async def _slowloris(self, f: Fault):
        o = f.options
        target = self._node(f.target)
        region = next((r.name for r in self.s.regions if f.target in (f"edge-{r.name}", *self._peer_names(r))), None)
        args = ("--target", target.url, "--connections", str(o["connections"]), "--every", str(o["every"]))
        loris = await self._double(f, "slowloris", region, *args)
        f.probe = lambda: _base(target)
        return lambda: self._end_doubles(f, [loris])

    async def _double(self, f: Fault, kind: str, region: str | None, *args: str) -> NodeProcess:
        k = next((k for k, r in self._regions() if r.name == region), 0)
        name = f"{kind}-{next(self._serial)}"
        host = self.net.add(name, k)
        node = await asyncio.to_thread(self.group.start, "double", kind, "--wait", *args, name=name, host=host.address)
        f.details.setdefault("doubles", {})[name] = None

        async def go(http: aiohttp.ClientSession) -> None:
            async with http.post(node.url + "/go") as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{name} would not start: {resp.status}")

        f.activate.append(go)
        return node

    async def _victim(self, f: Fault, region: str, edges: list[str], early: bool = False) -> NodeProcess:
        """A peer that starts its download as the attack starts, slowed to last about as long as the attack."""
        k = next(k for k, r in self._regions() if r.name == region)
        name = f"victim-{f.kind}-{next(self._serial)}"
        host = self.net.add(name, k)
        rate = max(64 * 1024, int(self.s.size_bytes / max(f.duration, 1.0)))
        config = PeerConfig(cache=self.root / name, edges=tuple(edges), download_limit=rate)
        args = [*config.argv(), "--gateway", "127.0.0.1:0"]
        node = await asyncio.to_thread(self.group.start, "peer", *args, name=name, host=host.address)
        self.victims.append(node)
        f.details["victim"] = name

        async def ask(http: aiohttp.ClientSession) -> None:
            """Until its edge takes the request (it may be down): in the background, the fault is on already."""

            async def again() -> None:
                for _ in range(int(f.duration + RECOVERY_LIMIT)):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.post(node.urls["gateway"] + "/update.img") as resp:
                            f.details["victim_asked"] = resp.status
                            if resp.status == 202:
                                return
                    await asyncio.sleep(1.0)

            self._background.add(asyncio.create_task(again()))

        if early:
            async with aiohttp.ClientSession() as http, http.post(node.urls["gateway"] + "/update.img") as resp:
                f.details["victim_asked_early"] = resp.status
        else:
            f.activate.append(ask)
        return node

    async def _end_doubles(self, f: Fault, doubles: list[NodeProcess]) -> None:
        """What each double did (its /status), then stop it."""
        async with aiohttp.ClientSession() as http:
            for d in doubles:
                f.details["doubles"][d.log_path.stem] = await _json(http, d.url + "/status")
        await self._stop(doubles)

    async def _stop(self, nodes: list[NodeProcess]) -> None:
        """All at once: each takes a second or two to exit on a busy machine."""
        for node in nodes:
            if node.running:
                self._meant.add(node.pid)
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))

    async def _stop_doubles(self) -> None:
        await self._stop([node for node in self.group.nodes if node.role == "double"])

    def _peer_names(self, region) -> list[str]:
        return [u.name for u in self.users if u.region == region.name]

    def _node(self, name: str) -> NodeProcess:
        if name == "origin":
            assert self.origin is not None, "started first"
            return self.origin
        if name.startswith("edge-"):
            return self.edges[name[5:]]
        return next(u.node for u in self.users if u.name == name)

    # -- watching ----------------------------------------------------------------------------
    async def _sample(self, http: aiohttp.ClientSession) -> None:
        await super()._sample(http)
        churned = {id(u.node) for u in self.users if u.leave_at is not None}
        for node in list(self.group.nodes):
            name = node.log_path.stem
            if node.running:
                rss = _rss(node.pid)
                if rss is not None and rss > self.rss.get(name, 0):
                    self.rss[name] = rss
            elif node.proc is not None and node.pid not in self._meant and id(node) not in churned:
                self._meant.add(node.pid)  # reported once
                self.crashes.append({"node": name, "t": round(self.now(), 2), "exit": node.proc.returncode, "log": node.log_text()[-600:]})

    async def _verify(self, http: aiohttp.ClientSession) -> None:
        """Every copy - the users' and the victims' - read back whole and compared byte for byte."""
        size = self.s.size_bytes
        limit = asyncio.Semaphore(4)

        async def one(name: str, node: NodeProcess) -> bool | None:
            if not node.running:
                self.unchecked.append(name)
                return None
            async with limit:
                ok, why = await self._read(http, node.urls["gateway"] + "/update.img", "update.img", 0, size - 1, f"{name}'s copy")
            if not ok:
                self.bad_copies[name] = why[:300]
            return ok

        users = await asyncio.gather(*(one(u.name, u.node) for u in self.users))
        for u, ok in zip(self.users, users, strict=True):
            u.verified = ok
        victims = await asyncio.gather(*(one(v.log_path.stem, v) for v in self.victims))
        self.victim_copies = dict(zip((v.log_path.stem for v in self.victims), victims, strict=True))

    # -- the result ------------------------------------------------------------------------
    def result(self, network: str) -> dict:
        r = super().result(network)
        lost = [u.name for u in self.users if u.done_at is not None and u.verified is False]
        doubles = {n.log_path.stem for n in self.group.nodes if n.role == "double"}  # attackers: not the deployment's memory
        worst = max(((k, v) for k, v in self.rss.items() if k not in doubles), key=lambda kv: kv[1], default=(None, 0))
        failures = []
        if self.checked["corrupt"]:
            failures.append(f"{self.checked['corrupt']} corrupt bytes delivered")
        failures += [f"{c['node']} exited with {c['exit']} at {c['t']} s without being told to" for c in self.crashes]
        r["chaos"] = {
            "downloads": {
                "completed": sum(u.done_at is not None and u.verified is True for u in self.users),
                "expected": len(self.users),
                "victims_intact": self.victim_copies,
                "bad_copies": self.bad_copies,
                "refused_then_asked_again": self.refused,
            },
            "corrupt_bytes": self.checked["corrupt"],
            "checked": {"reads": self.checked["reads"], "bytes": self.checked["bytes"]},
            "corrupt_reads": self.corrupt[:50],
            "data_lost": {"copies": len(lost), "peers": lost, "unchecked": self.unchecked},
            "worst_rss": {"node": worst[0], "bytes": worst[1]},
            "rss": dict(sorted(self.rss.items())),
            "crashes": self.crashes,
            "faults": [f.row() for f in self.faults],
            "failures": failures,
        }
        return r


def _base(node: NodeProcess) -> str:
    """What a client reads through: a peer's gateway, or the node itself."""
    return node.urls.get("gateway", node.url)


def _fill(path: Path, leave: int) -> int:
    """Write zeros until only ``leave`` bytes are free on path's filesystem; the bytes written."""
    written = 0
    block = bytes(1 << 20)
    with open(path, "wb") as f:
        while True:
            st = os.statvfs(path.parent)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                written += f.write(block[: min(len(block), free)])
                f.flush()
            except OSError:
                break
    return written


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


async def _json(http: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
