"""Misbehaving nodes for ``edgeswarm chaos``: small servers and clients that attack a deployment.

Each runs as its own process (``edgeswarm double KIND --listen HOST:0 ...``,
started by the chaos run like any daemon), so a flood it sends does not slow
the run that measures it.  Each logs ``listening on URL`` and answers
``/status`` with what it did, which the chaos report quotes.

- ``corrupting``: announces every piece of the content to its region's
  tracker and serves random bytes of the right length for each piece.
- ``bloating``: announces the same, and answers a piece with an endless
  chunked body (at ``--rate`` per connection, so a run stays bounded).
- ``sybil``: announces ``--ids`` peer ids, all seeds, from one address.
- ``slowloris``: keeps ``--connections`` connections to a node open by
  sending one header line every ``--every`` seconds, never finishing a
  request; it reopens those the node closes and counts them.
- ``lying``: a parent that passes everything through to ``--edge`` except
  the content at ``--path``: ``--lie other-path`` answers its manifest with
  a validly signed manifest of another path, ``old-version`` with an older
  signed version of it, ``wrong-bytes`` answers its pieces with random bytes.
  With ``--wait`` it is honest until ``POST /go``, and after ``POST /end``.  Signing takes the origin's key (``--key``),
  as a replayed manifest would carry.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import signal
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from edgeswarm.policy import bitfield
from edgeswarm.protocol.manifest import Manifest, SignedManifest
from edgeswarm.protocol.paths import manifest_url
from edgeswarm.protocol.units import parse_listen, parse_rate

MISBEHAVIOURS = ("corrupting", "bloating", "sybil", "slowloris", "lying")  # the doubles this module can run
LIES = ("other-path", "old-version", "wrong-bytes")
CHUNK = 64 * 1024
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "host", "content-length"}


class Double:
    """What every double shares: its counters, its /status, and the content it attacks."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.host, self.port = args.listen
        self.counts: Counter[str] = Counter()
        self.content: dict = {}  # the manifest as the edge sends it (the double needs only id, size and pieces)
        self.http: aiohttp.ClientSession | None = None
        self.started = time.monotonic()
        self.go = asyncio.Event()  # set at once, or by POST /go (--wait)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/status", self.status), web.get("/healthz", self.healthz), web.post("/go", self.start)]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @property
    def client(self) -> aiohttp.ClientSession:
        """The client side, once ``setup`` opened it."""
        if self.http is None:
            raise RuntimeError("the double's client is not open yet")
        return self.http

    async def start(self, request: web.Request) -> web.Response:
        self.go.set()
        return web.Response(text="started\n")

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": self.args.kind, "uptime_s": round(time.monotonic() - self.started, 2), **self.counts})

    async def setup(self) -> None:
        """Open the client side from this double's own address, so the edge places it in its region."""
        connector = aiohttp.TCPConnector(local_addr=(self.host, 0), limit=64)
        self.http = aiohttp.ClientSession(connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30))

    async def learn(self) -> None:
        """The content's manifest from the edge, retried while the edge is not up yet."""
        for _ in range(100):
            try:
                async with self.client.get(self.args.edge + manifest_url(self.args.path)) as resp:
                    if resp.status == 200:
                        self.content = json.loads(await resp.read())
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError(f"no manifest of {self.args.path} from {self.args.edge}")

    @property
    def cid(self) -> str:
        return self.content["id"]

    @property
    def count(self) -> int:
        return len(self.content["manifest"]["pieces"])

    def span(self, index: int) -> int:
        m = self.content["manifest"]
        return min(m["piece_size"], m["size"] - index * m["piece_size"])

    async def work(self) -> None:
        """The attack itself, until the process is stopped."""

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    # -- a seed that lies: what corrupting, bloating and sybil doubles announce -------------------
    async def announce(self, peer_id: str, event: str) -> float | None:
        """One announce of every piece; the tracker's interval, or None when it was refused."""
        body = {
            "peer_id": peer_id,
            "port": self.port,
            "content": self.cid,
            "pieces": self.count,
            "have": bitfield.encode(range(self.count), self.count),
            "uploaded": 0,
            "downloaded": 0,
            "event": event,
        }
        t = time.monotonic()
        try:
            async with self.client.post(f"{self.args.edge}/announce", json=body) as resp:
                await resp.read()
                self.counts["announce_ms_total"] += round(1000 * (time.monotonic() - t))
                self.counts[f"announce_{resp.status}"] += 1
                return float((await resp.json()).get("interval", 1)) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.counts["announce_failed"] += 1
            return None

    async def have(self, request: web.Request) -> web.Response:
        if request.match_info["cid"] != self.cid:
            return web.Response(status=404, text="not held\n")
        full = bitfield.encode(range(self.count), self.count)
        return web.json_response({"id": self.cid, "pieces": self.count, "held": self.count, "bitfield": full})

    def piece_index(self, request: web.Request) -> int | None:
        if request.match_info["cid"] != self.cid or not request.match_info["index"].isascii():
            return None
        index = int(request.match_info["index"]) if request.match_info["index"].isdigit() else -1
        return index if 0 <= index < self.count else None


class Seed(Double):
    """A peer that claims every piece: the base of the corrupting and bloating peers."""

    def routes(self) -> list[web.RouteDef]:
        return [*super().routes(), web.get("/have/{cid}", self.have), web.get("/piece/{cid}/{index}", self.piece)]

    async def work(self) -> None:
        await self.learn()
        peer_id, event = secrets.token_hex(8), "started"
        while True:
            interval = await self.announce(peer_id, event)
            event = "update" if interval is not None else "started"
            await asyncio.sleep(min(interval or 1.0, 5.0))

    async def piece(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


class Corrupting(Seed):
    async def piece(self, request: web.Request) -> web.StreamResponse:
        index = self.piece_index(request)
        if index is None:
            return web.Response(status=404, text="not held\n")
        self.counts["corrupt_pieces_served"] += 1
        self.counts["corrupt_bytes_served"] += self.span(index)
        return web.Response(body=os.urandom(self.span(index)), content_type="application/octet-stream")


class Bloating(Seed):
    async def piece(self, request: web.Request) -> web.StreamResponse:
        if self.piece_index(request) is None:
            return web.Response(status=404, text="not held\n")
        self.counts["bloated_answers"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()  # no Content-Length: only the reader's own limit can stop it
        await resp.prepare(request)
        block = os.urandom(CHUNK)
        try:
            while True:
                await resp.write(block)
                self.counts["bloat_bytes_sent"] += CHUNK
                await asyncio.sleep(CHUNK / self.args.rate)
        except (ConnectionError, asyncio.CancelledError):
            self.counts["bloated_answers_cut"] += 1
            raise


class Sybil(Double):
    """Thousands of seeds from one address: every answer slot the tracker has, if it lets them."""

    def routes(self) -> list[web.RouteDef]:
        return [*super().routes(), web.get("/have/{cid}", self.have)]

    async def work(self) -> None:
        await self.learn()
        ids = [secrets.token_hex(8) for _ in range(self.args.ids)]
        limit = asyncio.Semaphore(16)

        async def one(peer_id: str, event: str) -> bool:
            async with limit:
                return await self.announce(peer_id, event) is not None

        event = "started"
        while True:
            t = time.monotonic()
            accepted = sum(await asyncio.gather(*(one(i, event) for i in ids)))
            self.counts["rounds"] += 1
            self.counts["accepted_last_round"] = accepted
            event = "update"
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))


class Slowloris(Double):
    """Connections that send a header line now and then and never end their request."""

    async def work(self) -> None:
        target = urlsplit(self.args.target)
        await asyncio.gather(*(self.hold(target.hostname, target.port) for _ in range(self.args.connections)))

    async def hold(self, host: str, port: int) -> None:
        while True:
            opened = time.monotonic()
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(host, port, local_addr=(self.host, 0))
            except (OSError, TimeoutError):
                self.counts["connect_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            self.counts["opened"] += 1
            self.counts["open"] += 1
            try:
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n".encode())
                n = 0
                while True:
                    try:
                        async with asyncio.timeout(self.args.every):
                            data = await reader.read(1024)
                    except TimeoutError:
                        n += 1
                        writer.write(f"X-Slow-{n}: {n}\r\n".encode())
                        await writer.drain()
                        continue
                    if not data:
                        break  # the node closed it: what a header timeout does
                    self.counts["answered"] += 1  # the node answered something (a 408, say) before closing
            except (OSError, ConnectionError):
                pass
            finally:
                self.counts["open"] -= 1
                writer.close()
            self.counts["closed_by_target"] += 1
            self.counts["held_ms_total"] += round(1000 * (time.monotonic() - opened))


class Lying(Double):
    """A parent that tells the truth about everything except the one path it lies about."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.decoy: SignedManifest | None = None
        self.decoy_bytes = b""

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/status", self.status),
            web.post("/go", self.start),
            web.post("/end", self.end),
            web.route("*", "/{tail:.*}", self.handle),
        ]

    async def end(self, request: web.Request) -> web.Response:
        """Honest from now on: does the node that was lied to come back?"""
        self.go.clear()
        return web.Response(text="ended\n")

    async def work(self) -> None:
        await self.learn()
        self.make_decoy()
        await asyncio.Event().wait()  # then it serves, until stopped

    def make_decoy(self) -> None:
        """Random bytes of the real size, in a manifest signed with the origin's key."""
        from edgeswarm.trust.signing import load_or_create_private_key

        real = Manifest.from_dict(self.content["manifest"])
        self.decoy_bytes = random.Random(7).randbytes(real.size)
        pieces = tuple(hashlib.sha256(self.decoy_bytes[i : i + real.piece_size]).hexdigest() for i in range(0, real.size, real.piece_size))
        path = "decoy/" + real.path if self.args.lie == "other-path" else real.path
        modified = real.modified - 86400 if self.args.lie == "old-version" else real.modified
        m = Manifest(path, real.size, real.content_type, real.piece_size, pieces, modified)
        self.decoy = SignedManifest.sign(m, load_or_create_private_key(self.args.key))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        if self.decoy is not None and self.go.is_set() and request.method in ("GET", "HEAD"):
            lie = self.lie(parts)
            if lie is not None:
                self.counts[f"lies_{parts[0]}"] += 1
                return lie
        return await self.proxy(request)

    def lie(self, parts: list[str]) -> web.Response | None:
        decoy, lie = self.decoy, self.args.lie
        assert decoy is not None, "made before the double serves"
        if parts[0] == "manifest" and "/".join(parts[1:]) == self.args.path and lie != "wrong-bytes":
            return web.Response(body=decoy.to_json(), content_type="application/json", headers={"ETag": decoy.etag})
        if parts[0] == "content" and parts[1:] == [decoy.content_id]:
            return web.Response(body=decoy.to_json(), content_type="application/json", headers={"ETag": decoy.etag})
        if parts[0] == "have" and parts[1:] == [decoy.content_id]:
            n = decoy.manifest.piece_count
            return web.json_response({"id": decoy.content_id, "pieces": n, "held": n, "bitfield": bitfield.encode(range(n), n)})
        if parts[0] == "piece" and len(parts) == 3 and parts[2].isdigit() and int(parts[2]) < decoy.manifest.piece_count:
            start, length = decoy.manifest.piece_span(int(parts[2]))
            if parts[1] == decoy.content_id:
                return web.Response(body=self.decoy_bytes[start : start + length], content_type="application/octet-stream")
            if parts[1] == self.cid and lie == "wrong-bytes":
                return web.Response(body=os.urandom(length), content_type="application/octet-stream")
        return None

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read() if request.can_read_body else None
        try:
            async with self.client.request(request.method, self.args.edge + request.path_qs, headers=headers, data=body) as up:
                resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS})
                if up.content_length is not None:
                    resp.content_length = up.content_length
                await resp.prepare(request)
                async for chunk in up.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
                self.counts["passed_through"] += 1
                return resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"lying parent: {self.args.edge} failed: {exc}\n")


CLASSES = {"corrupting": Corrupting, "bloating": Bloating, "sybil": Sybil, "slowloris": Slowloris, "lying": Lying}


def add_parser(sub) -> None:
    """``edgeswarm double``: not for users; the chaos run starts these."""
    p = sub.add_parser("double", description="A misbehaving node for `edgeswarm chaos` (see edgeswarm/measure/doubles.py).")
    p.add_argument("kind", choices=MISBEHAVIOURS)
    p.add_argument("--listen", type=parse_listen, required=True, metavar="HOST:PORT", help="its /status (and piece server)")
    p.add_argument("--edge", metavar="URL", help="the tracker edge it announces to, or the upstream a lying parent passes through")
    p.add_argument("--wait", action="store_true", help="start the attack at POST /go rather than at once")
    p.add_argument("--path", default="update.img", metavar="PATH", help="the content it attacks")
    p.add_argument("--ids", type=int, default=2000, metavar="N", help="sybil: peer ids to announce")
    p.add_argument("--target", metavar="URL", help="slowloris: the node to hold connections to")
    p.add_argument("--connections", type=int, default=300, metavar="N", help="slowloris: connections to hold")
    p.add_argument("--every", type=float, default=10.0, metavar="SECONDS", help="slowloris: seconds between header lines")
    p.add_argument("--rate", type=parse_rate, default=parse_rate("4MB/s"), metavar="RATE", help="bloating: bytes/s per answer")
    p.add_argument("--lie", choices=LIES, default="other-path", help="lying: what it lies about")
    p.add_argument("--key", type=Path, metavar="FILE", help="lying: the origin's private key, to sign what it lies with")


async def _after(event: asyncio.Event, work) -> None:
    await event.wait()
    await work()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(CLASSES[args.kind](args)))


async def _serve(double: Double) -> int:
    app = web.Application()
    app.add_routes(double.routes())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)  # a bloating answer never ends by itself
    await runner.setup()
    site = web.TCPSite(runner, double.host, double.port)
    await site.start()
    double.port = runner.addresses[0][1]
    print(f"listening on http://{double.host}:{double.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await double.setup()
    if not double.args.wait:
        double.go.set()
    work = asyncio.create_task(_after(double.go, double.work))
    await asyncio.wait([work, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    work.cancel()
    (failure,) = await asyncio.gather(work, return_exceptions=True)
    await double.close()
    await runner.cleanup()
    if isinstance(failure, Exception):
        print(f"double {double.args.kind}: {failure}", flush=True)
        return 1
    return 0
