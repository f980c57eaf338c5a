"""``edgeswarm router``: sends each client to the best healthy edge of its region.

The request-routing role (Akamai's mapping DNS, Apache Traffic Router with
Traffic Monitor).  The client's region comes from its source address and the
region map the edges use (regions.py); the choice among that region's edges
is routing.py's policy.  It answers three ways:

- ``GET|HEAD /<path>``: ``302`` to the chosen edge's ``/<path>`` (query kept),
  so curl -L, players and browsers follow it;
- ``GET /edges?path=P``: the ranked up edges of the client's region, JSON, for
  peers (``peer --router``, ``get --router``);
- DNS on a UDP port of its own (``--dns-port``): A/AAAA records of the chosen
  edges for ``--dns-name`` and names under it, the name being the key.

It polls every edge's ``/status`` each ``--poll-interval`` (health, egress
against stated capacity, 5xx rate) and keeps the routing table's states,
and the last polled figures the dashboard shows (cache, peers, P2P share:
``polled_figures``).  ``GET /dashboard`` is the live page over its ``/status``.
Edges come from ``--edge``/``--edge-list`` and from ``POST /register``
(a shared secret when ``--register-secret-file`` is given, else loopback only).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp import web
from dnslib import AAAA, CLASS, EDNS0, QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSRecord
from dnslib.label import DNSLabelError

from edgeswarm.errors import HttpError
from edgeswarm.node import dashboard
from edgeswarm.node.daemon import BACKLOG, ServerLimits, make_app, serve
from edgeswarm.node.logthrottle import Throttle, ThrottledLog
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.upstream import UpstreamError, answer_text, client_error_text, read_bounded
from edgeswarm.policy.regions import RegionMap, url_host
from edgeswarm.policy.routing import DOWN, UNKNOWN, UP, Decision, EdgeSpec, RoutingError, RoutingTable, sample_from_status, status_number
from edgeswarm.policy.vocabulary import reported_share
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.cors import PUBLIC, CorsPolicy, addressed_directly
from edgeswarm.protocol.httpspec import check_json_body
from edgeswarm.protocol.paths import PATH, clean_request_path
from edgeswarm.protocol.registration import edge_spec
from edgeswarm.protocol.wire import json_response

log = logging.getLogger("edgeswarm.roles.router")
FORGET_AFTER = 600.0  # seconds a registered edge may stay down before the router forgets it
MAX_STATUS = 4 * 1024 * 1024  # an edge's brief /status lists no content: generous, but bounded
MAX_POLLED_REGIONS = 64  # tracker rows kept per edge: an edge's /status is not ours to trust with our memory
MAX_NAME = 100  # characters of a region name kept from an edge's /status
DNS_TCP_IDLE = 10.0  # seconds a DNS connection over TCP may stay silent (RFC 7766 suggests seconds)
DNS_TCP_MAX = 256  # DNS connections over TCP at once; past them a new one is closed at once
EDNS_UDP_SIZE = 1232  # bytes of UDP answer we say we take (RFC 6891's OPT; DNS Flag Day 2020's figure)
BADVERS = 16  # the extended RCODE for an EDNS version we do not speak (RFC 6891): its upper 8 bits go in the OPT
DNS_PORT_TRIES = 20  # ports tried for --dns-port 0 before settling for UDP alone


def polled_figures(doc: dict, at: float) -> dict:
    """What the router keeps of one good /status poll for its dashboard (bounded; odd fields become None).

    ``at`` is the wall-clock time of the poll.  ``peers`` and ``regions`` are
    the edge's tracker's (null without ``--p2p``); each region row keeps the
    peers and the bytes the region's peers report, from the edge and from
    peers, so that the router can sum them over edges.
    """
    p2p = doc.get("p2p") if isinstance(doc.get("p2p"), dict) else None
    regions: dict[str, dict] | None = None
    if p2p is not None:
        rows = p2p.get("regions") if isinstance(p2p.get("regions"), dict) else {}
        regions = {}
        for name, row in list(rows.items())[:MAX_POLLED_REGIONS]:
            if not isinstance(row, dict):
                continue
            from_peers = [status_number(row.get(k)) for k in ("bytes_from_peers_same_region", "bytes_from_peers_other_region")]
            regions[str(name)[:MAX_NAME]] = {
                "peers": status_number(row.get("peers")),
                "bytes_from_edge": status_number(row.get("bytes_from_edge")),
                "bytes_from_peers": None if None in from_peers else sum(n for n in from_peers if n is not None),
                "p2p_share": status_number(row.get("p2p_share")),
            }
    contents = doc.get("contents")
    return {
        "at": round(at, 3),
        "upload_limit_Bps": status_number(doc.get("upload_limit_Bps")),
        "cache_bytes": status_number(doc.get("cache_bytes")),
        "cache_max_bytes": status_number(doc.get("cache_max_bytes")) or None,  # 0: no quota
        "cache_entries": status_number(
            doc.get("content_count", len(contents) if isinstance(contents, list) else None)
        ),  # older edges: the list
        "peers": status_number(p2p.get("peers")) if p2p is not None else None,
        "regions": regions,
        "store": _shared_store(p2p.get("store")) if p2p is not None else None,
    }


def _shared_store(name: object) -> str | None:
    """The tracker store an edge names in /status, when other edges may share it (not ``memory``); bounded."""
    return name[:500] if isinstance(name, str) and name and name != "memory" else None


REDIRECT_DRAIN_S = 1.0  # seconds a leaving edge is told to go on serving without DNS: a redirect's follow, at worst
MAX_REASON = 300  # bytes of an edge's refusal of a /status poll kept as the reason it is down
WITHHELD = " (the router sends its status token to listed edges, and to registered ones under --register-secret-file)"


@dataclass(frozen=True)
class RouterConfig:
    poll_interval: float = 2.0
    poll_timeout: float | None = None  # None: half the interval, so that a hung edge is out within 1.5 intervals
    dns_name: str = "cdn.example.com"
    dns_ttl: int = 5
    dns_answers: int = 1
    register_secret: str | None = None  # None: registrations from loopback only
    default_region: str | None = None  # the region of clients the map does not place (None: refuse them)
    edges_limit: int = 16  # edges in a JSON answer at most
    status_token: str | None = None  # sent as a bearer token with each /status poll: edges under --require-token want one
    ca: ssl.SSLContext | None = None  # --ca: HTTPS edges' certificates verified against it (None: the system's trust store)
    # who may follow its redirects from a web page on another origin (--cors-origin): hls.js, dash.js and <video
    # crossorigin> failed through a router that sent no Access-Control-Allow-Origin and answered preflights 405 (an
    # adversarial session), though the edges it sends them to allow them
    cors: CorsPolicy = PUBLIC

    @property
    def timeout(self) -> float:
        return self.poll_timeout or self.poll_interval / 2


class Router:
    def __init__(self, regions: RegionMap, table: RoutingTable, config: RouterConfig):
        names = {r.name for r in regions.regions}
        if config.default_region is not None and config.default_region not in names:
            raise RoutingError(f"--default-region {config.default_region!r} is not in the region map ({', '.join(sorted(names))})")
        self.regions = regions
        self.region_names = names
        self.table = table
        self.config = config
        self.metrics = Metrics("router")
        self.session: aiohttp.ClientSession | None = None
        self.dns_transport: asyncio.DatagramTransport | None = None
        self.dns_tcp: asyncio.Server | None = None
        self._dns_tcp_open = 0  # DNS connections over TCP open now
        self.dns_address: tuple[str, int] | None = None
        self.quiet = ThrottledLog(log, Throttle(burst=20, interval=10.0))
        self.polled: dict[str, dict] = {}  # url -> polled_figures of its last good poll (kept while it is down)
        self.metrics.gauge("router_edges_up", "Edges whose last polls say up", lambda: len(self.table.up()))
        self.metrics.gauge("router_edges", "Edges the router knows (listed and registered)", lambda: len(self.table.edges))

    # -- who is asking -------------------------------------------------------------------
    def region_of(self, address: str) -> str | None:
        region = self.regions.lookup(address)
        return region.name if region is not None else self.config.default_region

    def decide(self, address: str, key: str, way: str, want=None, kind: str = "edge", only: bool = False) -> Decision:
        """The ranked edges for a client address and key, counted by ``way``; HttpError when there is none to give.
        ``want``: which edges the client can use, of which ``kind`` (said when none can); ``only``: it can use no
        other (RoutingTable.decide)."""
        region = self.region_of(address)
        if region is None:
            raise HttpError(403, f"no region for client address {address[:60]}: the region map does not cover it (and no --default-region)")
        decision = self.table.decide(region, key, want, only)
        if not decision.ranked:
            raise HttpError(503, f"no {kind} serves region {region} (nor any other region)", {"Retry-After": str(self._retry_after())})
        self.metrics.events[("decision", way)] += 1
        if decision.fallback:
            self.metrics.events[("fallback", way)] += 1
        if decision.blind:
            self.metrics.events[("blind", way)] += 1
        return decision

    def _retry_after(self) -> int:
        return max(1, round(self.config.poll_interval))

    # -- HTTP ----------------------------------------------------------------------------------
    async def no_upload(self, request: web.Request) -> web.Response:
        """``PUT /<path>``: a router forwards no body, and a redirect of one is not followed by every client:
        ``edgeswarm publish --edge ROUTER`` printed "405 405: Method Not Allowed" (an adversarial session)."""
        raise HttpError(405, "a router takes no uploads: publish through an edge (GET /edges lists them)", {"Allow": "GET, HEAD"})

    async def redirect(self, request: web.Request) -> web.Response:
        """``/<path>``: 302 to the chosen edge, the request target kept as it came (query too), but for a raw ``#``,
        which a Location would start its fragment with (the client then asked the edge for the name's start: an
        adversarial session): escaped, it names what the nodes serve for it."""
        rel = clean_request_path(request.raw_path)
        if request.secure:  # never https to http: a player's ?token= and the decrypted file crossed the network in clear
            decision = self.decide(request.remote or "", rel, "http", _https, "HTTPS edge", only=True)  # (an adversarial session)
        else:
            decision = self.decide(request.remote or "", rel, "http")
        target = decision.ranked[0].spec.url + request.raw_path.replace("#", "%23")
        return web.Response(status=302, headers={"Location": target, "Cache-Control": "no-store"}, text=f"{target}\n")

    async def get_edges(self, request: web.Request) -> web.Response:
        """``/edges?path=P``: the client region's up edges, best first, for peers to choose among."""
        path = request.query.get("path", "")
        if len(path) > 4096:
            raise HttpError(400, "path is longer than 4096 characters")
        key = clean_request_path("/" + quote(path.lstrip("/"), safe="/")) if path.strip("/") else ""
        if "region" in request.query:
            return self._region_edges(request.query["region"], key)
        version = _version(request.remote or "")  # a peer keeps to its listener's family: the other's edges it cannot use
        decision = self.decide(
            request.remote or "", key, "json", _reachable_over(version), f"IPv{version} edge" if version else "edge", only=True
        )
        return json_response(
            {
                "client": request.remote,
                "region": decision.region,
                "path": key,
                "fallback": decision.fallback,
                "blind": decision.blind,
                "edges": [
                    {"url": c.spec.url, "region": c.spec.region, "capacity_Bps": c.spec.capacity, "load": round(c.load, 3), "shed": c.shed}
                    for c in decision.ranked[: self.config.edges_limit]
                ],
            }
        )

    def _region_edges(self, region: str, key: str) -> web.Response:
        """``/edges?region=R``: every edge of region R, up ones ranked first, for tools that act on a whole
        region (``edgeswarm preheat``); no fallback to other regions, and an unknown region is a 404."""
        if region not in self.region_names:
            raise HttpError(404, f"no region {region[:MAX_NAME]!r} in the router's map (regions: {', '.join(sorted(self.region_names))})")
        ranked = self.table.rank(self.table.up(region), key)
        down = sorted(s.url for s in self.table.edges.values() if s.region == region and self.table.health[s.url].state != UP)
        return json_response(
            {
                "region": region,
                "path": key,
                "edges": [{"url": c.spec.url, "region": c.spec.region, "capacity_Bps": c.spec.capacity} for c in ranked],
                "down": down,
            }
        )

    async def post_register(self, request: web.Request) -> web.Response:
        """``POST /register`` ``{url, region, capacity}``: an edge joins (or updates itself); polled at once.  With
        ``"leaving": true`` it says it is stopping: out of rotation at once (``leave``)."""
        self._check_registrar(request)
        check_json_body(request.headers)
        try:
            doc = jsondoc.loads(await request.read())
        except ValueError:
            raise HttpError(400, "registration body is not JSON") from None
        leaving = doc.get("leaving", False) if isinstance(doc, dict) else False
        if not isinstance(leaving, bool):
            raise HttpError(400, "registration: 'leaving' must be true or false")
        try:
            spec = edge_spec(doc, self.region_names, listed=False)
            if leaving:
                return self._leave(spec)
            new = self.table.add(spec, time.monotonic())
        except RoutingError as exc:
            raise HttpError(409 if "listed" in str(exc) else 400, str(exc)) from None
        log.info("%s %s: region %s, capacity %.0f B/s", "registered" if new else "re-registered", spec.url, spec.region, spec.capacity)
        if not new and self.table.health[spec.url].rejoin(time.monotonic()):
            self._moved(spec.url)
        await self._poll(spec.url)
        return json_response(self._edge_row(spec), status=201 if new else 200)

    def _leave(self, spec: EdgeSpec) -> web.Response:
        """A registered edge stopping (SIGTERM): down now, not at the next poll, which a restart could fit between
        (clients sent there meanwhile were refused: an adversarial session).  The answer's ``drain_s`` is how long
        clients this router sent there may still arrive: a DNS answer's TTL, or a redirect's follow."""
        try:
            if self.table.leave(spec.url, time.monotonic()):
                self._moved(spec.url)
        except KeyError:
            raise HttpError(404, f"{spec.url} is not registered here") from None
        # redirects go on with DNS too: a TTL of 0 left a redirect's follow no time (a review)
        drain = max(self.config.dns_ttl, REDIRECT_DRAIN_S) if self.dns_transport is not None else REDIRECT_DRAIN_S
        return json_response({**self._edge_row(self.table.edges[spec.url]), "drain_s": drain})

    def _check_registrar(self, request: web.Request) -> None:
        secret = self.config.register_secret
        if secret is None:
            try:
                loopback = ipaddress.ip_address(request.remote or "").is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise HttpError(403, "registrations are taken from loopback only (start the router with --register-secret-file)")
            if not addressed_directly(request.host):  # a page of a site rebound to 127.0.0.1 (DNS rebinding)
                raise HttpError(
                    403,
                    f"registrations without a secret address the router by its IP address or localhost, not {request.host[:100]!r} "
                    "(or start the router with --register-secret-file)",
                )
            return
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            raise HttpError(
                401, "registration needs Authorization: Bearer <the router's registration secret>", {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(given[7:].strip().encode(), secret.encode()):
            raise HttpError(403, "wrong registration secret")

    def _edge_row(self, spec: EdgeSpec) -> dict:
        h = self.table.health[spec.url]
        return {
            "url": spec.url,
            "region": spec.region,
            "capacity_Bps": spec.capacity,
            "listed": spec.listed,
            "state": h.state,
            "reason": h.reason,
            "since_s": round(time.monotonic() - h.since, 1),
            "egress_Bps": round(h.egress_Bps),
            "load": round(h.load(spec.capacity), 3),
            "error_rate": round(h.error_rate, 3),
            "polled": self.polled.get(spec.url),
        }

    def region_totals(self) -> dict[str, dict]:
        """Per region of the map: its edges' states, capacity and egress, and its peers and P2P share summed
        over the tracker rows of that region in every edge's last good poll, once per tracker store (what the
        dashboard shows per region)."""
        totals: dict[str, dict] = {}
        for name in sorted(self.region_names):
            specs = [s for s in self.table.edges.values() if s.region == name]
            capacity = sum(s.capacity for s in specs)
            egress = sum(self.table.health[s.url].egress_Bps for s in specs)
            rows = self._tracker_rows(name)
            from_edge = sum(r["bytes_from_edge"] or 0 for r in rows)
            from_peers = sum(r["bytes_from_peers"] or 0 for r in rows)
            totals[name] = {
                "edges": len(specs),
                "edges_up": sum(self.table.health[s.url].state == UP for s in specs),
                "capacity_Bps": capacity,
                "egress_Bps": round(egress),
                "load": round(egress / capacity, 3) if capacity else None,
                "peers": sum(r["peers"] or 0 for r in rows),
                "bytes_from_edge": from_edge,
                "bytes_from_peers": from_peers,
                "p2p_share": reported_share(from_peers, from_edge + from_peers),
            }
        return totals

    def _tracker_rows(self, region: str) -> list[dict]:
        """The region's rows of every distinct tracker: edges sharing one store (Redis) report the same swarms and
        totals, so their rows count once (the newest poll's); an edge with its own memory store is a tracker of its own."""
        newest: dict[str, tuple[float, dict]] = {}
        for url, f in self.polled.items():
            row = f["regions"].get(region) if f["regions"] else None
            if not isinstance(row, dict):
                continue
            tracker = f.get("store") or url
            if tracker not in newest or f["at"] > newest[tracker][0]:
                newest[tracker] = (f["at"], row)
        return [row for _, row in newest.values()]

    async def get_status(self, _: web.Request) -> web.Response:
        t = self.table.thresholds
        return json_response(
            {
                **self.metrics.status(),
                "poll_interval_s": self.config.poll_interval,
                "poll_timeout_s": self.config.timeout,
                "thresholds": {
                    "down_after": t.down_after,
                    "up_after": t.up_after,
                    "max_error_rate": t.max_error_rate,
                    "min_requests": t.min_requests,
                    "hot_load": t.hot_load,
                },
                "dns": {"name": self.config.dns_name, "port": self.dns_address[1]} if self.dns_address else None,
                "regions": sorted(self.region_names),
                "region_totals": self.region_totals(),
                "edges": [self._edge_row(s) for s in sorted(self.table.edges.values(), key=lambda s: (s.region, s.url))],
            }
        )

    # -- health ---------------------------------------------------------------------------------
    async def _poll(self, url: str) -> None:
        """One /status poll of one edge, its outcome handed to the table."""
        assert self.session is not None
        now = time.monotonic()
        health = self.table.health.get(url)
        if health is None:
            return
        try:
            async with (
                asyncio.timeout(self.config.timeout),
                self.session.get(url + "/status?brief=1", allow_redirects=False, headers=self._poll_headers(url)) as resp,
            ):
                if resp.status in (401, 403):  # the edge's reason: an expired --status-token-file said only "401"
                    why = await answer_text(resp, MAX_REASON)
                    if self.config.status_token and not self._trusted_with_token(url):
                        why += WITHHELD
                    raise UpstreamError(502, f"/status answered {resp.status}: {why}")  # (an adversarial session)
                if resp.status != 200:
                    raise UpstreamError(502, f"/status answered {resp.status}")  # the reason says which, as the log does
                body = await read_bounded(resp, MAX_STATUS, url, "/status")
            doc = jsondoc.loads(body)
            sample = sample_from_status(doc, time.monotonic())
            figures = polled_figures(doc, time.time())
        except TimeoutError:
            changed = health.failed(now, f"no answer within {self.config.timeout:g} s", self.table.thresholds)
        except UpstreamError as exc:
            changed = health.failed(now, exc.message, self.table.thresholds)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            changed = health.failed(now, client_error_text(exc, url), self.table.thresholds)
        else:
            changed = health.succeeded(sample, self.table.thresholds)
            if url in self.table.edges:
                self.polled[url] = figures
        if changed and url in self.table.edges:
            self._moved(url)

    def _moved(self, url: str) -> None:
        """An edge's state changed: a line, and a count of ups and downs (down is a WARNING, unless the edge said it
        was stopping)."""
        health = self.table.health[url]
        level = logging.WARNING if health.state == DOWN and not health.leaving else logging.INFO
        log.log(level, "edge %s (%s) is %s: %s", url, self.table.edges[url].region, health.state, health.reason)
        if health.state != UNKNOWN:
            self.metrics.events[(f"edge_{health.state}", "")] += 1

    def _poll_headers(self, url: str) -> dict[str, str]:
        """The status token for an edge the operator listed, or one registered under --register-secret-file: not for
        one any local process could register (no secret), which got this token for ``/`` at every poll, in clear to
        an ``http://`` URL (an adversarial session; over HTTPS too, to a host with any public certificate: a review)."""
        return {"Authorization": f"Bearer {self.config.status_token}"} if self._trusted_with_token(url) else {}

    def _trusted_with_token(self, url: str) -> bool:
        spec = self.table.edges.get(url)
        return bool(self.config.status_token) and spec is not None and (spec.listed or self.config.register_secret is not None)

    async def poll_all(self) -> None:
        urls = list(self.table.edges)
        await asyncio.gather(*(self._poll(u) for u in urls))
        now = time.monotonic()
        for url in self.table.forgettable(now, FORGET_AFTER):
            log.info("forgot %s: registered, and down for over %g s", url, FORGET_AFTER)
            self.table.remove(url)
            self.polled.pop(url, None)

    async def poll_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_all()
            except Exception:  # a bug must not stop health checks: the table would freeze as it is
                log.exception("health poll failed")
            await asyncio.sleep(max(0.0, self.config.poll_interval - (time.monotonic() - started)))

    # -- DNS --------------------------------------------------------------------------------------
    def dns_answer(self, packet: bytes, address: str) -> bytes | None:
        """The answer to one DNS packet from ``address``; None when nothing should be sent (not a query at all).

        EDNS (RFC 6891): a query with an OPT record of version 0 gets one back
        (our UDP payload size); another version gets BADVERS, as resolvers
        probing for a newer EDNS expect; two OPT records are FORMERR.
        """
        try:
            query = DNSRecord.parse(packet)
            query.pack()  # a name dnslib reads but cannot write back (a label over 63 bytes, a name over 255): malformed too
        except (DNSError, DNSLabelError, ValueError, IndexError, UnicodeError):
            self.metrics.events[("dns_refused", "formerr")] += 1
            if len(packet) < 12:
                return None
            return DNSRecord(DNSHeader(id=int.from_bytes(packet[:2], "big"), qr=1, rcode=RCODE.FORMERR)).pack()
        if query.header.qr or query.header.opcode != 0:  # an answer, or not a standard query: nothing to say
            return None
        # a header of our own: dnslib's reply() copies the query's flags, so a query with TC or an RCODE set was answered with them
        reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=1, rd=query.header.rd, ra=0), q=query.q)
        opts = [r for r in query.ar if r.rtype == QTYPE.OPT]
        if len(query.questions) != 1 or len(opts) > 1:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack()
        if opts:
            version = (opts[0].ttl >> 16) & 0xFF
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE, ext_rcode=BADVERS >> 4 if version else 0))  # BADVERS: 16, all in the OPT
            if version:
                self.metrics.events[("dns_refused", "edns_version")] += 1
                return reply.pack()
        self._fill(reply, query, address)
        return reply.pack()

    def _refuse(self, reply: DNSRecord, rcode: int, why: str) -> None:
        """A refusal or a failure, counted under ``why``: nothing authoritative in it (an unmapped client's REFUSED said
        aa, unlike the others)."""
        reply.header.aa = 0
        reply.header.rcode = rcode
        self.metrics.events[("dns_refused", why)] += 1

    def _fill(self, reply: DNSRecord, query: DNSRecord, address: str) -> None:
        """The answer to a well-formed query of ours: its RCODE, AA flag and records set in ``reply``."""
        if query.q.qclass not in (CLASS.IN, 255):  # IN and * (any); CHAOS and the rest: we serve the Internet class only
            self._refuse(reply, RCODE.REFUSED, "class")
            return
        qname = str(query.q.qname).rstrip(".").lower()
        zone = self.config.dns_name.lower()
        if qname != zone and not qname.endswith("." + zone):
            self._refuse(reply, RCODE.REFUSED, "zone")  # not our name: we answer for one zone only
            return
        qtype = query.q.qtype
        if qtype not in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            return  # the name exists, with no record of that type
        version = 6 if qtype == QTYPE.AAAA else 4
        try:
            decision = self.decide(address, qname, "dns", lambda s: s.address is not None and s.address.version == version)
        except HttpError as exc:
            if exc.status != 403 and self._addressed_up(address, qname):
                return  # edges are up, none with an address of this family: the name has no such record
            self._refuse(reply, *((RCODE.REFUSED, "region") if exc.status == 403 else (RCODE.SERVFAIL, "no_edge")))
            return
        if decision.fallback and self._addressed_up(address, qname) == "own":
            return  # the client's region has an edge up of the other family: no record of this one, not another region's
        for c in decision.ranked[: self.config.dns_answers]:
            rdata = A(str(c.spec.address)) if version == 4 else AAAA(str(c.spec.address))
            reply.add_answer(RR(query.q.qname, QTYPE.A if version == 4 else QTYPE.AAAA, rdata=rdata, ttl=self.config.dns_ttl))

    def _addressed_up(self, address: str, qname: str) -> str | None:
        """Whose edges with an address are up for this client: ``"own"`` (its region's), ``"other"`` (another's, none
        of its own), or None.  Some up of either family: an AAAA query where only IPv4 edges are up gets an empty
        NOERROR answer, not SERVFAIL (a resolver asked both for one name, as getaddrinfo does, fails the whole name on
        a SERVFAIL).  Its own region's up: a query of a family it lacks is empty too, not another region's edge (an A
        query from east, whose only edge up was IPv6, got west's IPv4 edge: an adversarial session)."""
        region = self.region_of(address)
        if region is None:
            return None
        decision = self.table.decide(region, qname, lambda s: s.address is not None)
        if not decision.ranked:
            return None
        return "other" if decision.fallback or decision.blind else "own"

    def safe_dns_answer(self, packet: bytes, address: str) -> bytes | None:
        """``dns_answer``, a bug in it logged (one line per kind) and answered with nothing: never a dead DNS server."""
        try:
            return self.dns_answer(packet, address)
        except Exception:
            if self.quiet.allow(logging.ERROR, "dns bug"):
                log.exception("DNS query from %s failed", address)
            return None

    async def start_dns(self, host: str, port: int) -> None:
        """DNS on UDP, and on TCP at the same port (RFC 7766: a resolver retries over TCP an answer that was cut, and
        ``dig +tcp`` asks so).  Port 0: a port free for both (the kernel picks a UDP port whose number another
        process may hold in TCP: CI met it), else UDP alone with a warning."""
        loop = asyncio.get_running_loop()
        for attempt in range(DNS_PORT_TRIES if port == 0 else 1):
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _DnsProtocol(self), local_addr=(host, port))
            except OSError as exc:
                raise SystemExit(f"edgeswarm router: cannot listen for DNS on udp {host}:{port}: {exc.strerror or exc}") from None
            self.dns_transport = transport
            self.dns_address = transport.get_extra_info("sockname")[:2]
            try:
                self.dns_tcp = await asyncio.start_server(self._dns_over_tcp, host, self.dns_address[1], backlog=BACKLOG)
                break
            except OSError as exc:
                if port == 0 and attempt < DNS_PORT_TRIES - 1:
                    transport.close()  # another port number, free for both
                    continue
                log.warning("router dns: no TCP on port %d (%s): UDP only", self.dns_address[1], exc.strerror or exc)
        assert self.dns_address is not None
        over = "udp and tcp" if self.dns_tcp is not None else "udp"
        host, port = self.dns_address
        log.info("router dns listening on %s %s:%d for %s", over, url_host(host), port, self.config.dns_name)

    async def _dns_over_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: queries prefixed by their length, answered in turn; closed after DNS_TCP_IDLE s of
        silence, and at once past DNS_TCP_MAX connections (a flood of idle ones must not hold the router's memory)."""
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else ""
        self._dns_tcp_open += 1
        try:
            while self._dns_tcp_open <= DNS_TCP_MAX:
                async with asyncio.timeout(DNS_TCP_IDLE):
                    packet = await reader.readexactly(int.from_bytes(await reader.readexactly(2), "big"))
                answer = self.safe_dns_answer(packet, address)
                if answer is None:
                    break
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._dns_tcp_open -= 1
            writer.close()

    # -- wiring ---------------------------------------------------------------------------------------
    def app(self, dns: tuple[str, int] | None = None) -> web.Application:
        app = make_app(self.metrics, self.config.cors)
        app.router.add_get("/status", self.get_status)
        app.router.add_get("/edges", self.get_edges)
        app.router.add_post("/register", self.post_register)
        dashboard.mount(app, page=dashboard.ROUTER_PAGE)  # before the catch-all: /dashboard is the router's own
        app.router.add_get("/" + PATH, self.redirect)  # HEAD too
        app.router.add_put("/" + PATH, self.no_upload)

        async def lifecycle(app: web.Application):
            self.session = aiohttp.ClientSession(
                auto_decompress=False,
                # a connection per poll: a kept-alive one was verified at its handshake only, and an edge whose
                # certificate expired while it ran stayed up, sent every client to fail (an adversarial session)
                connector=aiohttp.TCPConnector(limit=256, force_close=True, ssl=self.config.ca or True),
                headers={"User-Agent": "edgeswarm-router"},
            )
            if dns is not None:
                await self.start_dns(*dns)
            await self.poll_all()  # before the first client: every listed edge has a state
            poller = asyncio.create_task(self.poll_loop())
            yield
            poller.cancel()
            if self.dns_transport is not None:
                self.dns_transport.close()
            if self.dns_tcp is not None:
                self.dns_tcp.close()
            await self.session.close()

        app.cleanup_ctx.append(lifecycle)
        return app


def _https(spec: EdgeSpec) -> bool:
    return spec.url.startswith("https://")


def _version(address: str) -> int | None:
    """The IP version a client's address is of (an IPv4-mapped one is IPv4); None if it is no address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    return 4 if ip.version == 4 or ip.ipv4_mapped is not None else 6


def _reachable_over(version: int | None) -> Callable[[EdgeSpec], bool] | None:
    """The edges a client of this IP version can use: those named by a host name, or by an address of its version."""
    if version is None:
        return None
    return lambda s: s.address is None or s.address.version == version


class _DnsProtocol(asyncio.DatagramProtocol):
    """UDP: one query, one answer; whatever arrives, the router keeps running."""

    def __init__(self, router: Router):
        self.router = router
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        answer = self.router.safe_dns_answer(data, addr[0])
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        self.router.quiet.log(logging.INFO, "dns send", "DNS: %s", exc)


async def run(
    router: Router, listen: tuple[str, int], dns: tuple[str, int] | None, access_log: bool, limits: ServerLimits | None, ssl_context=None
) -> None:
    await serve(router.app(dns), *listen, "router", access_log, ssl_context, limits)
