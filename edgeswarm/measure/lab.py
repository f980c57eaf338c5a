"""``edgeswarm lab``: a whole deployment of real daemons on this machine, and what it delivered.

An origin, one edge per region (tracker and super peer of its region) and the
scenario's peers run as separate processes.  The lab then plays the users:
peers ask for a download at their arrival time (and may crash and come back),
or viewers play a video through their gateway at its bitrate with a player's
buffer.  While it runs it samples every node's ``/status``; at the end it
checks every downloaded copy byte for byte and reports where the bytes came
from, how long users waited and how that compares with the lower bound.

Two networks: loopback, where a region is a 127.R.0.0/16 block and the
daemons cap their own rates (no privileges), and ``--netns``, where every node
is a network namespace behind a bridge and tc shapes its link.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from rich.console import Console

from edgeswarm.errors import EdgeswarmError
from edgeswarm.measure import labsim
from edgeswarm.measure.bench_serve import _cpu_ticks, _steal_pct
from edgeswarm.measure.process import NodeProcess, ProcessGroup
from edgeswarm.measure.scenario import Scenario
from edgeswarm.policy.vocabulary import PEER_OTHER_REGION, SOURCE_KINDS, flash_crowd_bound, peer_bytes, reported_share
from edgeswarm.roles.config import EdgeConfig, PeerConfig
from edgeswarm.sim import tiers
from edgeswarm.sim.tiers import Tier

SAMPLE_EVERY = 0.5  # seconds between status sweeps


class LabError(EdgeswarmError, RuntimeError):
    pass


class Interrupted(EdgeswarmError):
    """Ctrl-C or SIGTERM: stop everything, report nothing."""


@dataclass
class Host:
    address: str
    prefix: list[str] = field(default_factory=list)


class Loopback:
    """Regions are 127.R.0.0/16 blocks; every daemon caps its own rates."""

    name = "loopback"
    daemon_caps = True

    def __init__(self) -> None:
        self._count: Counter[int] = Counter()

    def add(self, name: str, region: int, up_bps: float | None = None, down_bps: float | None = None, delay_ms: float = 0.0) -> Host:
        if region == 0:
            return Host("127.0.0.1")
        self._count[region] += 1
        k = self._count[region] + 1
        return Host(f"127.{region}.{k // 250}.{k % 250 + 1}")

    def block_inbound(self, host: Host) -> None:
        """On loopback nothing can be firewalled: an unreachable peer is one that tells its edge so (``--unreachable``)."""

    def region_network(self, region: int) -> str:
        return f"127.{region}.0.0/16"

    def gateway_host(self, host: Host) -> str:
        return "127.0.0.1"

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc) -> None:
        pass


def netns_network():
    """The namespace network, or NetnsUnavailable saying why not."""
    from edgeswarm.measure import netns

    reason = netns.unavailable_reason()
    if reason:
        raise netns.NetnsUnavailable(f"--netns is not available here: {reason}")
    netns.cleanup_stale()  # a crashed run's bridge would otherwise hold our /16 and take our traffic

    class Namespaces(netns.Netns):
        name = "netns"
        daemon_caps = False

        def gateway_host(self, host) -> str:
            return host.address  # the lab, in the root namespace, reaches gateways over the bridge

    return Namespaces()


@dataclass
class User:
    """One peer daemon and what its user does and gets."""

    name: str
    region: str
    tier: Tier
    node: NodeProcess
    arrival: float  # seconds after the start
    leave_at: float | None = None  # churn: seconds after the start
    video: str | None = None
    watch_s: float = 0.0
    done_at: float | None = None
    left: int = 0
    verified: bool | None = None
    received: Counter[str] = field(default_factory=Counter)  # by source kind, over all its lives
    last: Counter[str] = field(default_factory=Counter)  # this life's, as last sampled
    view: dict | None = None
    unreachable: bool = False  # accepts no connections: uploads through its edge's relay
    uploaded: int = 0  # bytes sent to peers over its earlier lives
    up_last: int = 0  # this life's, as last sampled
    relayed: int = 0  # bytes it relayed for unreachable peers while promoted, as last sampled (the most seen: a demotion resets it)
    tracked: int = 0  # announces it answered as a sub-tracker, as last sampled
    route: dict = field(default_factory=dict)  # its /status "announce_route": rounds sent to a sub-tracker, fallbacks

    def got(self) -> Counter[str]:
        return self.received + self.last


class Lab:
    def __init__(self, s: Scenario, group: ProcessGroup, net, root: Path, console: Console):
        self.s, self.group, self.net, self.root, self.console = s, group, net, root, console
        self.rng = random.Random(s.seed)
        self.users: list[User] = []
        self.edges: dict[str, NodeProcess] = {}
        self.origin: NodeProcess | None = None
        self.files: dict[str, str] = {}  # published name -> sha256
        self.timeline: list[dict] = []
        self.t0 = 0.0
        self._ticks: tuple[int, int] | None = None  # (steal, total) CPU ticks at the start: the machine's share of the run
        self._edge_sent: dict[str, int] = {}
        self._edge_p2p: dict[str, dict] = {}  # region -> what its edge says it sent there and why (its /status "p2p")
        self._edge_relay: dict[str, dict] = {}  # region -> its edge's relay figures (its /status "relay")
        self._announces: dict[str, list[tuple[float, int, int]]] = {}  # region -> (t, requests, contents) its edge had received
        self._promoted: Counter[str] = Counter()  # region -> the most peers its edge had promoted at once
        self._all_done: float | None = None  # when the last user was done (the linger phase starts)
        self._origin_sent = 0

    # -- deployment ------------------------------------------------------------------------
    async def deploy(self) -> None:
        publish = self.root / "publish"
        publish.mkdir(parents=True, exist_ok=True)
        for name, size in self._content().items():
            self.files[name] = await asyncio.to_thread(_random_file, publish / name, size, self.rng.getrandbits(64))
        host = self.net.add("origin", 0)
        self.origin = await self._start("origin", "origin", host, "--publish", str(publish))
        regions_file = self.root / "regions.yaml"
        regions_file.write_text(
            json.dumps(
                {"regions": [{"name": r.name, "isp": self.s.tiers, "networks": [self.net.region_network(k)]} for k, r in self._regions()]}
            )
        )
        await asyncio.gather(*(self._start_edge(k, r.name, r.latency_ms, regions_file) for k, r in self._regions()))
        specs = [(k, r, i, t) for k, r in self._regions() for i, t in enumerate(tiers.apportion(tiers.table(self.s.tiers), r.peers))]
        self.users = list(
            await asyncio.gather(*(self._start_peer(k, r, i, t, _unreachable(i, self.s.unreachable)) for k, r, i, t in specs))
        )
        self._plan()

    def _regions(self):
        return list(enumerate(self.s.regions, start=1))

    def _content(self) -> dict[str, int]:
        if self.s.kind == "download":
            return {"update.img": self.s.size_bytes}
        size = int(self.s.scaled_Bps(self.s.vod.bitrate_kbps) * self.s.vod.duration_s)
        return {f"video{i + 1}.mp4": size for i in range(self.s.vod.videos)}

    async def _start(self, role: str, name: str, host, *args: str) -> NodeProcess:
        return await asyncio.to_thread(self.group.start, role, *args, name=name, host=host.address, prefix=host.prefix)

    async def _start_edge(self, k: int, region: str, delay_ms: float, regions_file: Path) -> None:
        rate = self.s.edge_upload_Bps
        host = self.net.add(f"edge-{region}", k, rate * 8 if rate else None, None, delay_ms)
        assert self.origin is not None, "started before the edges"
        config = EdgeConfig(  # no announce interval unless the scenario names one: the lab runs the defaults
            cache=self.root / f"edge-{region}",
            parent=self.origin.url,
            p2p=True,
            regions=regions_file,
            locality=self.s.locality,
            upload_limit=rate if rate and self.net.daemon_caps else None,
            promote_upload=self.s.promote_upload_Bps if self._promotes(region) else None,
            announce_interval=self.s.announce_interval or EdgeConfig.announce_interval,
            promote_uptime=self.s.promote_uptime,
        )
        self.edges[region] = await self._start("edge", f"edge-{region}", host, *config.argv())

    def _promotes(self, region: str) -> bool:
        """Whether this region's edge promotes peers (``promote_regions``: the others are the same run without it)."""
        return self.s.promote_regions is None or region in self.s.promote_regions

    async def _start_peer(self, k: int, region, i: int, tier: Tier, unreachable: bool = False) -> User:
        name = f"peer-{region.name}-{i + 1}"
        up, down = self.s.scaled_Bps(tier.up_kbps), self.s.scaled_Bps(tier.down_kbps)
        host = self.net.add(name, k, up * 8, down * 8, region.latency_ms)
        if unreachable:
            self.net.block_inbound(host)
        caps = self.net.daemon_caps
        config = PeerConfig(
            cache=self.root / name,
            edges=(self.edges[region.name].url,),
            upload_limit=int(up) if caps else None,
            download_limit=int(down) if caps else None,
            unreachable=unreachable,
        )
        node = await self._start("peer", name, host, *config.argv(), "--gateway", f"{self.net.gateway_host(host)}:0")
        return User(name, region.name, tier, node, 0.0, unreachable=unreachable)

    def _plan(self) -> None:
        """Arrival times, churn and what each viewer watches: all drawn from the seed, before anything runs."""
        order = list(self.users)
        self.rng.shuffle(order)
        t = 0.0
        for u in order:
            if self.s.arrival == "poisson":
                t += self.rng.expovariate(self.s.rate)
            u.arrival = t if self.s.arrival == "poisson" else 0.0
        if self.s.churn.leave:
            for u in self.rng.sample(order, round(self.s.churn.leave * len(order))):
                u.leave_at = u.arrival + self.rng.uniform(*self.s.churn.between_s)
        if self.s.kind == "vod":
            v = self.s.vod
            names = sorted(self.files, key=lambda n: int(n[5:-4]))
            weights = [1 / (i + 1) ** v.zipf for i in range(len(names))]
            for u in order:
                u.video = self.rng.choices(names, weights)[0]
                quits = self.rng.random() < v.quit_prob
                u.watch_s = v.duration_s * (self.rng.uniform(0.1, 1.0) if quits else 1.0)

    # -- the run ---------------------------------------------------------------------------
    async def run(self, progress) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self.t0, self._ticks = time.monotonic(), _cpu_ticks()
            sampler = asyncio.create_task(self._sample_loop(http, progress))
            try:
                async with asyncio.timeout(self.s.timeout_s):  # not wait_for: on Ctrl-C it left the gather's error unretrieved
                    await asyncio.gather(*self._acts(http))
                await self._linger(http)
            except TimeoutError:
                self._late()
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            await self._sample(http)
            if self.s.kind == "download":
                await self._verify(http)

    async def _linger(self, http: aiohttp.ClientSession) -> None:
        """``linger_s``: everyone is done; the peers stay and refresh, and the edges' steady announce load is measured."""
        await self._sample(http)
        self._all_done = self.now()
        if self.s.linger_s:
            await asyncio.sleep(self.s.linger_s)

    def _acts(self, http: aiohttp.ClientSession) -> list:
        """What runs while the users are served: the users (a chaos run adds its faults)."""
        act = self._download if self.s.kind == "download" else self._watch
        return [act(http, u) for u in self.users]

    def _late(self) -> None:
        late = [u.name for u in self.users if u.done_at is None]
        raise LabError(f"{len(late)} of {len(self.users)} users were not done after {self.s.timeout_s:g} s: {', '.join(late[:8])}")

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _at(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))

    async def _download(self, http: aiohttp.ClientSession, u: User) -> None:
        await self._at(u.arrival)
        await self._ask(http, u)
        if u.leave_at is not None:
            await self._at(u.leave_at)
            if u.done_at is None:
                await self._leave_and_return(http, u)
        while u.done_at is None:
            await asyncio.sleep(SAMPLE_EVERY / 2)

    async def _ask(self, http: aiohttp.ClientSession, u: User) -> None:
        async with http.post(u.node.urls["gateway"] + "/update.img") as resp:
            if resp.status != 202:
                raise LabError(f"{u.name} refused the download: {resp.status} {await resp.text()}")

    async def _leave_and_return(self, http: aiohttp.ClientSession, u: User) -> None:
        await self._sample_user(http, u)  # its last counters, before they die with it
        u.received, u.last = u.got(), Counter()
        u.uploaded, u.up_last = u.uploaded + u.up_last, 0
        await asyncio.to_thread(u.node.kill if self.s.churn.crash else u.node.stop)
        u.left += 1
        await asyncio.sleep(self.s.churn.away_s)
        await asyncio.to_thread(u.node.start)
        await self._ask(http, u)

    async def _watch(self, http: aiohttp.ClientSession, u: User) -> None:
        await self._at(u.arrival)
        rate = self.s.scaled_Bps(self.s.vod.bitrate_kbps)
        u.view = await play(http, f"{u.node.urls['gateway']}/{u.video}", rate, u.watch_s, self.s.vod)
        u.done_at = self.now()
        if self.s.vod.leave_after_watch:
            await self._sample_user(http, u)
            await asyncio.to_thread(u.node.stop)

    # -- watching the deployment -------------------------------------------------------------
    async def _sample_loop(self, http: aiohttp.ClientSession, progress) -> None:
        while True:
            await self._sample(http)
            progress(self)
            await asyncio.sleep(SAMPLE_EVERY)

    async def _sample(self, http: aiohttp.ClientSession) -> None:
        t = self.now()
        edges = dict(zip(self.edges, await asyncio.gather(*(_status(http, e.url) for e in self.edges.values())), strict=True))
        assert self.origin is not None, "sampled only once deployed"
        origin = await _status(http, self.origin.url)
        await asyncio.gather(*(self._sample_user(http, u) for u in self.users if u.node.running))
        row: dict[str, Any] = {"t": round(t, 2), "edges_Bps": {}, "origin_Bps": 0.0, "done": sum(u.done_at is not None for u in self.users)}
        dt = t - self.timeline[-1]["t"] if self.timeline else 0.0  # the first sample is the baseline: no rate yet (bytes over t ~ 0)
        for region, st in edges.items():
            if st is None:
                continue
            sent = sum(st["bytes_sent"].values())
            self._edge_p2p[region] = (st.get("p2p") or {}).get("regions", {}).get(region, {})
            self._edge_relay[region] = st.get("relay") or {}
            ann = st.get("announces")
            self._promoted[region] = max(self._promoted[region], len((st.get("promotion") or {}).get("promoted", [])))
            if ann:
                self._announces.setdefault(region, []).append((t, ann["requests"], ann["contents"]))
            row["edges_Bps"][region] = (sent - self._edge_sent.get(region, 0)) / dt if dt > 0 else 0.0
            self._edge_sent[region] = sent
        if origin is not None:
            sent = sum(origin["bytes_sent"].values())
            row["origin_Bps"] = (sent - self._origin_sent) / dt if dt > 0 else 0.0
            self._origin_sent = sent
        self.timeline.append(row)

    async def _sample_user(self, http: aiohttp.ClientSession, u: User) -> None:
        st = await _status(http, u.node.urls.get("gateway", ""))
        if st is None:
            return
        u.last = Counter({k: st["received_by_kind"].get(k, 0) for k in SOURCE_KINDS})
        u.up_last = st.get("uploaded_to_peers", 0)
        u.relayed = max(u.relayed, (st.get("relaying_for") or {}).get("bytes_out", 0))
        u.tracked = max(u.tracked, (st.get("subtracker") or {}).get("announces", 0))
        u.route = st.get("announce_route") or u.route
        if self.s.kind == "download" and u.done_at is None and any(w["complete"] for w in st.get("swarms", [])):
            u.done_at = self.now()

    async def _verify(self, http: aiohttp.ClientSession) -> None:
        """Every copy, byte for byte, against what the origin published."""
        limit = asyncio.Semaphore(4)

        async def one(u: User) -> None:
            async with limit, http.get(u.node.urls["gateway"] + "/update.img") as resp:
                digest = hashlib.sha256()
                async for chunk in resp.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                u.verified = resp.status == 200 and digest.hexdigest() == self.files["update.img"]

        await asyncio.gather(*(one(u) for u in self.users))
        bad = [u.name for u in self.users if not u.verified]
        if bad:
            raise LabError(f"{len(bad)} peers hold a copy that differs from the origin's: {', '.join(bad)}")

    # -- the result ------------------------------------------------------------------------
    def result(self, network: str) -> dict:
        s = self.s
        regions: dict[str, dict[str, Any]] = {}
        for k, r in self._regions():
            users = [u for u in self.users if u.region == r.name]
            got = sum((u.got() for u in users), Counter())
            total = sum(got.values())
            edge = self._edge_sent.get(r.name, 0)
            demand = sum(self._demand(u) for u in users)
            regions[r.name] = {
                "peers": len(users),
                "edge_bytes": edge,
                "demand_bytes": demand,
                "received": {k: got[k] for k in SOURCE_KINDS},
                "p2p_share": reported_share(peer_bytes(got), total),
                "savings": _ratio(demand - edge, demand),
                "bound_s": self._bound(users) if s.kind == "download" else None,
                "edge_why": _edge_why(self._edge_p2p.get(r.name, {})),
                "playback": playback([_user_row(u, s) for u in users]) if s.kind == "vod" else None,
            }
            _completion(regions[r.name], users)
        got = sum((u.got() for u in self.users), Counter())
        total = sum(got.values())
        edges_total = sum(self._edge_sent.values())
        demand = sum(x["demand_bytes"] for x in regions.values())
        result: dict[str, Any] = {
            "scenario": asdict(s),
            "network": network,
            "elapsed_s": round(self.now(), 2),
            "steal_pct": _steal_pct(self._ticks, _cpu_ticks()),  # CPU the hypervisor gave other guests: it swings lab figures
            "bytes": {
                "origin": self._origin_sent,
                "edges": dict(self._edge_sent),
                "edges_total": edges_total,
                "peers_received": {k: got[k] for k in SOURCE_KINDS},
                "crossed_regions": got[PEER_OTHER_REGION],
            },
            "p2p_share": reported_share(peer_bytes(got), total),
            "demand_bytes": demand,
            "savings": _ratio(demand - edges_total, demand),
            "regions": regions,
            "users": [_user_row(u, s) for u in self.users],
            "timeline": self.timeline,
        }
        result["playback"] = playback(result["users"]) if s.kind == "vod" else None
        result["relay"] = self._relay_result(edges_total) if s.unreachable else None
        result["announces"] = self._announce_result() if s.promote_upload else None
        result["model"] = labsim.compare(result)  # what the simulator's model says of the same sessions
        return result

    def _relay_result(self, edges_total: int) -> dict:
        """What the unreachable peers gave their regions, and what relaying it cost the edges.

        ``share_of_peer_uploads``: their part of all bytes peers sent each
        other (were the relay as good as a direct connection, about their
        share of the peers).  ``edge_relay_bytes``: what the edges' relays
        sent on (their egress beyond the pieces and files they serve, which
        ``edges_total`` counts), and its share of all the edges sent.
        """
        up = {u.name: u.uploaded + u.up_last for u in self.users}
        hidden = [u for u in self.users if u.unreachable]
        relayed = sum(r.get("bytes_out", 0) for r in self._edge_relay.values())
        return {
            "unreachable_peers": len(hidden),
            "firewalled": self.net.name == "netns",
            "uploaded_by_unreachable": sum(up[u.name] for u in hidden),
            "uploaded_by_all": sum(up.values()),
            "share_of_peer_uploads": _ratio(sum(up[u.name] for u in hidden), sum(up.values())),
            "edge_relay_bytes": relayed,
            "edge_relay_share_of_egress": _ratio(relayed, relayed + edges_total),
            "promoted_relay_bytes": sum(u.relayed for u in self.users),
            "promoted_peers": sum(1 for u in self.users if u.relayed),
            "edges": {region: r for region, r in self._edge_relay.items()},
        }

    def _announce_result(self) -> dict:
        """Each edge's announce load: requests (and contents) a second over the run and over the linger phase, and who promotes.

        Sub-trackers lower it: a region whose edge does not promote is the
        same run without them.  ``subtracker_announces``: what the region's
        promoted peers answered instead.
        """
        out: dict[str, dict] = {}
        for _, r in self._regions():
            region, samples = r.name, self._announces.get(r.name, [])
            users = [u for u in self.users if u.region == region]
            out[region] = {
                "promotes": self._promotes(region),
                "peers": len(users),
                "requests_per_s": _per_s(samples, 0.0, 1),
                "contents_per_s": _per_s(samples, 0.0, 2),
                "linger_requests_per_s": _per_s(samples, self._all_done, 1) if self.s.linger_s else None,
                "subtracker_announces": sum(u.tracked for u in users),
                "rounds_at_subtrackers": sum(u.route.get("rounds_answered", 0) for u in users),
                "subtracker_fallbacks": sum(u.route.get("fallbacks", 0) for u in users),
                "promoted_peers": self._promoted[region],
                "subtrackers_answering": sum(1 for u in users if u.tracked),
                "relay_bytes": self._edge_relay.get(region, {}).get("bytes_out", 0),
            }
        return {"linger_s": self.s.linger_s, "regions": out}

    def _demand(self, u: User) -> int:
        """What a pure CDN would have sent this user: the whole file, or what its player read."""
        if self.s.kind == "download":
            return self.s.size_bytes if u.done_at is not None else 0
        return (u.view or {}).get("bytes", 0)

    def _bound(self, users: list[User]) -> float:
        """The flash-crowd bound for these users' tiers and the edge's upload cap (none: unlimited)."""
        ups = [self.s.scaled_Bps(u.tier.up_kbps) for u in users]
        slowest = min(self.s.scaled_Bps(u.tier.down_kbps) for u in users)
        return round(flash_crowd_bound(self.s.size_bytes, len(users), self.s.edge_upload_Bps or math.inf, ups, slowest), 3)


def _per_s(samples: list[tuple[float, int, int]], since: float | None, column: int) -> float | None:
    """The growth of a sampled counter a second, from the first sample at or after ``since`` to the last."""
    span = [row for row in samples if since is not None and row[0] >= since]
    if len(span) < 2 or span[-1][0] <= span[0][0]:
        return None
    return round((span[-1][column] - span[0][column]) / (span[-1][0] - span[0][0]), 3)


async def play(http: aiohttp.ClientSession, url: str, rate: float, watch_s: float, v) -> dict:
    """A player: starts with ``startup_s`` buffered, stalls when the buffer runs dry and resumes
    with ``resume_s``, reads no further than ``max_buffer_s`` ahead, and quits after ``watch_s``."""
    p = _Playback(rate, watch_s)
    async with http.get(url) as resp:
        if resp.status != 200:
            return {"error": f"{resp.status} {(await resp.text())[:200]}", "startup_s": None, "stall_s": 0.0, "stalls": 0}
        async for chunk in resp.content.iter_chunked(64 * 1024):
            p.arrived(time.monotonic(), len(chunk), v.startup_s, v.resume_s)
            if p.buffered >= watch_s:
                break  # all it will watch is here
            ahead = p.ahead(time.monotonic())
            if p.playing_since is not None and ahead > v.max_buffer_s:
                await asyncio.sleep(ahead - v.max_buffer_s)
    now = time.monotonic()
    if p.startup is None and p.buffered > 0:  # shorter than the startup buffer: it plays once all is here
        p.start(now)
    await asyncio.sleep(max(0.0, p.remaining(now)))  # the viewer is present until it stops watching
    return p.summary()


class _Playback:
    """Playback position against bytes received; time is passed in, so it is exact whatever the read pattern."""

    def __init__(self, rate: float, watch_s: float):
        self.rate, self.watch_s = rate, watch_s
        self.t0 = time.monotonic()
        self.got = 0
        self.played = 0.0
        self.playing_since: float | None = None
        self.stalled_since: float | None = None
        self.startup: float | None = None
        self.first_byte: float | None = None  # seconds from asking to the first bytes: startup is this plus the buffer's fill
        self.stall_s = 0.0
        self.stalls = 0

    @property
    def buffered(self) -> float:
        return self.got / self.rate

    def arrived(self, now: float, n: int, startup_s: float, resume_s: float) -> None:
        self._advance(now)
        if self.first_byte is None:
            self.first_byte = now - self.t0
        self.got += n
        if self.startup is None and self.buffered >= min(startup_s, self.watch_s):
            self.start(now)
        elif self.stalled_since is not None and self.buffered - self.played >= min(resume_s, self.watch_s - self.played):
            self.stall_s += now - self.stalled_since
            self.stalled_since, self.playing_since = None, now

    def start(self, now: float) -> None:
        self.startup, self.playing_since = now - self.t0, now

    def _advance(self, now: float) -> None:
        if self.playing_since is None:
            return
        can = self.buffered - self.played
        elapsed = now - self.playing_since
        if elapsed >= can and self.played + can < self.watch_s:  # ran dry before now
            self.played += can
            self.stalled_since, self.playing_since = self.playing_since + can, None
            self.stalls += 1
        else:
            self.played = min(self.watch_s, self.played + elapsed)
            self.playing_since = now

    def ahead(self, now: float) -> float:
        self._advance(now)
        return self.buffered - self.played

    def remaining(self, now: float) -> float:
        self._advance(now)
        return self.watch_s - self.played

    def summary(self) -> dict:
        return {
            "startup_s": None if self.startup is None else round(self.startup, 3),
            "first_byte_s": None if self.first_byte is None else round(self.first_byte, 3),
            "stall_s": round(self.stall_s, 3),
            "stalls": self.stalls,
            "rebuffer_ratio": round(self.stall_s / (self.watch_s + self.stall_s), 4),
            "bytes": self.got,
        }


def run(s: Scenario, *, netns: bool = False, json_path: Path | None = None, plots: Path | None = None, workdir: Path | None = None) -> int:
    """The command: exit 0 with a report, 1 when the run failed, 2 when it could not start, 130 on Ctrl-C."""
    from edgeswarm.measure import labreport

    console = labreport.report_console()
    plots = plots or (json_path.parent if json_path else Path.cwd()) / f"lab-{s.name}-plots"
    try:  # made before the run: one it cannot be (a file there, no write access) was said only after it (a review)
        plots.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.print(f"[red]lab:[/red] the plots cannot go to {plots}: {exc.strerror or exc}")
        return 2
    try:
        result = execute(s, console, netns=netns, workdir=workdir)
    except NetworkUnavailable as exc:
        console.print(f"[red]lab:[/red] {exc}")
        return 2
    except Interrupted:
        console.print("[yellow]lab: interrupted; every daemon it started has been stopped[/yellow]")
        return 130
    except LabError as exc:
        console.print(f"[red]lab {s.name} failed:[/red] {exc}")
        return 1
    result["plots"] = [str(p) for p in labreport.plot(result, plots)]
    labreport.print_report(console, result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"figures written to {json_path}")
    return 1 if result.get("chaos", {}).get("failures") else 0


SIGNAL_GRACE = 0.2  # seconds a failed run waits for a stop signal that may have caused it (_guarded)


class NetworkUnavailable(EdgeswarmError, RuntimeError):
    pass


def execute(s: Scenario, console: Console, *, netns: bool = False, workdir: Path | None = None) -> dict:
    """Deploy, run and tear down; the result, or LabError (logs kept), Interrupted or NetworkUnavailable."""
    root = workdir or Path(tempfile.mkdtemp(prefix=f"edgeswarm-lab-{s.name}-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        net = netns_network() if netns else Loopback()
    except RuntimeError as exc:
        raise NetworkUnavailable(str(exc)) from None
    with _Teardown() as pressed:
        try:
            with net, ProcessGroup(root / "logs") as group:
                try:
                    result = asyncio.run(_guarded(_lab(s, group, net, root, console), console))
                finally:
                    pressed.arm()
        except Interrupted:
            if workdir is None:
                shutil.rmtree(root, ignore_errors=True)
            raise
        except (LabError, RuntimeError, OSError, aiohttp.ClientError) as exc:
            from edgeswarm.measure.netns import NetnsUnavailable

            if isinstance(exc, NetnsUnavailable):  # the network could not be made (another lab's): a run that could not start
                if workdir is None:  # nor any log to keep (it said "logs kept" of a folder never made: an adversarial session)
                    shutil.rmtree(root, ignore_errors=True)
                raise NetworkUnavailable(str(exc)) from None
            raise LabError(f"{exc}\nlogs kept in {root / 'logs'}") from None
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if pressed:
        raise Interrupted()
    return result


class _Teardown:
    """Ctrl-C and SIGTERM while a run's daemons stop and its folder goes (from ``arm`` to the ``with``'s end):
    remembered (``bool``), not acted on, so the teardown runs whole.  A Ctrl-C in it, or a second one after the run's,
    cut it short, left 84-273 MB and daemons behind and exited with no word (an adversarial session); the caller
    raises Interrupted once the teardown is done."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._before: dict[int, Any] = {}

    def __enter__(self) -> _Teardown:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disarm()

    def arm(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers are the main thread's to set
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._before[sig] = signal.signal(sig, lambda signum, _: self.signals.append(signum))

    def disarm(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before.clear()

    def __bool__(self) -> bool:
        return bool(self.signals)


def _lab(s: Scenario, *args) -> Lab:
    """A chaos run when the scenario has faults (chaos.py), a live one for kind live (livelab.py), a plain lab run otherwise."""
    if s.faults:
        from edgeswarm.measure.chaos import Chaos

        return Chaos(s, *args)
    if s.kind == "live":
        from edgeswarm.measure.livelab import LiveLab

        return LiveLab(s, *args)
    return Lab(s, *args)


async def _guarded(lab: Lab, console: Console) -> dict:
    """Deploy and run with Ctrl-C and SIGTERM turned into a clean stop."""
    from edgeswarm.measure import labreport

    task = asyncio.current_task()
    assert task is not None, "called from a task"
    loop = asyncio.get_running_loop()
    stopped: list[int] = []

    def stop(sig: int) -> None:
        stopped.append(sig)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        with labreport.Progress(console, lab) as progress:
            progress.phase(f"starting an origin, {len(lab.s.regions)} edges and {lab.s.peers} peers")
            await lab.deploy()
            progress.phase("running")
            await lab.run(progress.update)
        return lab.result(lab.net.name)
    except asyncio.CancelledError:
        raise Interrupted() from None
    except Exception:
        # a Ctrl-C that killed a command or daemon the setup started (`ip … failed: exit status -2`, `peer exited with
        # 1`) reaches our handler only once the loop turns, or came while a cleanup took its cancellation: a moment
        # for it, so that the run says "interrupted" (130), not "failed" (an adversarial session)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(SIGNAL_GRACE)
        if stopped:
            raise Interrupted() from None
        raise


async def _status(http: aiohttp.ClientSession, url: str) -> dict | None:
    if not url:
        return None
    try:
        async with http.get(url + "/status", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None  # a peer that is down or restarting: counted when it is back


def _random_file(path: Path, size: int, seed: int) -> str:
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for left in range(size, 0, -(1 << 20)):
            block = rng.randbytes(min(left, 1 << 20))
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def _unreachable(i: int, share: float) -> bool:
    """Whether a region's ``i``-th peer is one of its unreachable ones: spread evenly, the same in every run."""
    return math.floor((i + 1) * share) > math.floor(i * share)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def playback(users: list[dict]) -> dict | None:
    """What the viewers of a VoD run got: startup delay (median, 95th percentile as numpy's linear
    interpolation, worst) and rebuffering (stalled over stalled plus watched time); None without a view."""
    views = [u for u in users if u.get("startup_s") is not None]
    if not views:
        return None
    startups = np.array([u["startup_s"] for u in views])
    stalled = sum(u["stall_s"] for u in views)
    return {
        "views": len(views),
        "startup_median_s": round(float(np.median(startups)), 3),
        "startup_p95_s": round(float(np.percentile(startups, 95)), 3),
        "startup_max_s": round(float(startups.max()), 3),
        **_first_bytes(views),
        "rebuffering": round(stalled / (stalled + sum(u["watch_s"] for u in views)), 5),
        "stalls": sum(u["stalls"] for u in views),
    }


def _first_bytes(views: list[dict]) -> dict:
    """Seconds from asking to the first bytes (median, p95): the part of startup before the buffer fills (the
    manifest, the swarm's start, the first piece's source)."""
    firsts = np.array([u["first_byte_s"] for u in views if u.get("first_byte_s") is not None])
    if not firsts.size:
        return {}
    return {"first_byte_median_s": round(float(np.median(firsts)), 3), "first_byte_p95_s": round(float(np.percentile(firsts, 95)), 3)}


def _edge_why(p2p: dict) -> dict:
    """Why the edge sent its region what it did, from its own counters: pieces it seeded (``POST /seed``),
    and pieces peers asked for (``GET /piece``) because a reader's deadline forced them or not."""
    asked = p2p.get("piece_requests") or {}
    return {"seeded": (p2p.get("seeded") or {}).get("sent", 0), **{f"asked_{k}": n for k, n in sorted(asked.items())}}


def _completion(row: dict, users: list[User]) -> None:
    times = sorted(u.done_at - u.arrival for u in users if u.done_at is not None and u.view is None)
    if times:
        row["completion_median_s"] = round(times[len(times) // 2], 2)
        row["completion_max_s"] = round(times[-1], 2)
        if row.get("bound_s"):
            row["max_over_bound"] = round(times[-1] / row["bound_s"], 3)


def _user_row(u: User, s: Scenario) -> dict:
    row = {
        "name": u.name,
        "region": u.region,
        "up_kbps": u.tier.up_kbps,
        "down_kbps": u.tier.down_kbps,
        "arrival_s": round(u.arrival, 3),
        "received": dict(u.got()),
    }
    if s.kind == "download":
        row |= {"complete_s": None if u.done_at is None else round(u.done_at - u.arrival, 3), "left": u.left, "verified": u.verified}
    else:
        row |= {"video": u.video, "watch_s": round(u.watch_s, 3), **(u.view or {})}
    return row
