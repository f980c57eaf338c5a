"""The edge cache: serves the origin's namespace, fetching only the pieces asked for.

p2pd's cache mode (``-c DIR -S parent -l sibling -A host -n subnet``).  On a
miss it asks siblings that already hold the piece (``Cache-Control:
only-if-cached``, so siblings never fetch for each other and cannot loop),
then its parent - the origin or another edge, which makes hierarchies.
Concurrent misses for one piece share one upstream fetch.  Every piece is
checked against the origin-signed manifest before it is stored or served;
a source that sends a bad one is set aside and the next one tried.  Manifests
are revalidated with the parent after ``--revalidate`` seconds (a cheap 304),
and when the parent is down the edge keeps serving what it holds.  In p2p
mode (``--p2p``) it is also its peers' tracker and their region's
super-seeder (``POST /seed``: superseed.py picks the piece).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import ipaddress
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edgeswarm.errors import HttpError
from edgeswarm.node import dashboard
from edgeswarm.node.collapse import Collapser
from edgeswarm.node.daemon import ServerLimits, make_app, serve_many
from edgeswarm.node.logthrottle import Throttle, ThrottledLog
from edgeswarm.node.looplag import LoopLag
from edgeswarm.node.manifestfetch import ManifestFetcher
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.pinnedstore import PinnedStore
from edgeswarm.node.registrar import Registration
from edgeswarm.node.serving import LOOKAHEAD, send_piece, serve_file
from edgeswarm.node.upstream import (
    MIN_RATE,
    Hopeless,
    OutOfDescriptorsHere,
    Upstream,
    UpstreamError,
    UpstreamTimeout,
    busy,
    passed_on,
    said_in,
)
from edgeswarm.policy import bitfield
from edgeswarm.policy.live import is_playlist
from edgeswarm.policy.peerstore import MemoryPeerStore, StoreUnavailable
from edgeswarm.policy.promotion import Promoter, PromotionRules
from edgeswarm.policy.ratelimit import RateMeter, TokenBucket
from edgeswarm.policy.recent import Recent
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.policy.superseed import URGENCIES, Region, RegionStats, SuperSeeder
from edgeswarm.policy.tracker import AnnounceRecord, Limits, OutOfOrder, PeerRecord, Refused, Tracker, owner_of, peer_url
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.cors import addressed_directly
from edgeswarm.protocol.havefeed import QUANTILES
from edgeswarm.protocol.httpspec import PEER_HEADER, PIECE_HEADER, URGENCY_HEADER, check_json_body, host_name
from edgeswarm.protocol.manifest import SignedManifest, is_content_id
from edgeswarm.protocol.paths import PATH, TAIL, file_request_path, manifest_request_path
from edgeswarm.protocol.torrent import KEPT, Torrent, TorrentError, announce_index, check, hand_out, seeds_of, web_seed, why_none
from edgeswarm.protocol.wire import (
    base_url,
    have_response,
    json_response,
    magnet_response,
    manifest_response,
    parse_latency,
    parse_request,
    piece_index,
    status_limit,
    torrent_link,
    torrent_response,
)
from edgeswarm.roles import bttracker, livewindow, publish
from edgeswarm.roles.announce import TrackerService, announced_content, batch_items, load_region_map
from edgeswarm.roles.config import EdgeConfig
from edgeswarm.roles.preheatdesk import PreheatDesk
from edgeswarm.roles.relay import RelayHub, RelayLimits
from edgeswarm.store import trackersnapshot
from edgeswarm.store.filllock import FillLocks
from edgeswarm.store.ledger import Ledger
from edgeswarm.store.piecestore import UNLINKED_SWEEP_S, CorruptPiece, PieceNotStored, PieceStore, make_cache
from edgeswarm.store.redispeers import open_store
from edgeswarm.trust import access, tls, tokens
from edgeswarm.trust.protect import cipher_for
from edgeswarm.trust.signing import load_or_create_private_key, public_pem
from edgeswarm.wholefile import SaidOnce

log = logging.getLogger("edgeswarm.roles.edge")
SIBLING_TIMEOUT = 2.0
LEFT_WINDOW_KEPT = 4096  # live segments dropped from a window whose peers' stops are taken without a lookup (about 2 h at 2 s)
# a sibling's piece gains a second on SIBLING_TIMEOUT for each of these bytes received: one sending 17 KiB/s (upstream's
# MIN_RATE floor) held each piece a leaf missed for 16 s, a success each time, and was asked first again (an adversarial
# session: 1.3 MB in 30 s of a file the parent sent in 0.06 s); slower than this (2 Mbit/s), the parent is the better bet.
# Not more: a piece grows with its file (8 MiB at 16 GiB), and a busy sibling cut at 1 MiB/s threw away 7 of 8 MiB (a review)
SIBLING_MIN_RATE = 256 * 1024
MIN_FILL_S = 0.5  # seconds of the client's --timeout a worker needs left to fetch a piece another worker failed to
REGION_KEY = "edgeswarm.region"  # where region_name keeps its answer in the request
TICKET_MIN_S = 60.0  # a swarm ticket outlives a few announce intervals, so peers always hold a valid one
TORRENT_MAX = 1 << 20  # a parent's torrent is refused beyond this (a full-size one is ~110 KB)
TORRENT_TIMEOUT = 120.0  # the origin hashes a file it has no torrent of yet: large files take a while
BT_COUNT_EVERY = 5.0  # seconds a BitTorrent swarm's count of seeds (its announces' "complete") is reused
BT_HASHES = "bt-hashes.json"  # in the cache: the hashes BitTorrent clients announce the kept torrents under (_keep_bt_hashes)
SHED_RETRY = {"Retry-After": "5"}  # a shed announce's: a flood is not over in a second, and peers back off anyway
ANNOUNCE_WINDOW = 10.0  # seconds /status's announces a second are averaged over
# /status's parts that the primary worker alone keeps (the swarm, its BitTorrent clients, the relay, the promoter):
# another worker's own answer (edgeworkers) says null for each.  Every worker builds a relay hub and a promoter it never
# uses, and their zeros in its answer read as nobody promoted, assigned or relayed (an adversarial session)
PRIMARY_STATUS = ("p2p", "announces", "bittorrent", "relay", "promotion", "subtracker_assignments", "relay_peers", "relay_sent_bytes")


# the 403 of --internal for an uncached file, piece or torrent
NOT_INTERNAL = "this edge fetches uncached content only for its internal network"


class EdgeSource:
    """Pieces from this edge's cache, else fetched (collapsed) from siblings or parent."""

    def __init__(self, edge: Edge, cid: str, may_fetch: bool):
        self.edge, self.cid, self.may_fetch = edge, cid, may_fetch
        self._hit: int | None = None  # the piece last counted as a hit: serving asks again for it after an await
        self._fetched: set[int] = set()  # counted by fill(); sent from disk afterwards (fetched ahead), not a hit too

    def local(self, index: int) -> int | None:
        fd = self.edge.pinned.opened.piece_fd(self.cid, index)
        if fd is not None and index != self._hit and index not in self._fetched:
            self.edge.metrics.cache["hit"] += 1  # a None goes on to fetch(): a miss or collapsed, counted by fill()
            self._hit = index
        return fd

    def ahead(self, piece_size: int) -> int:
        return self.edge.pinned.opened.read_ahead(LOOKAHEAD, piece_size)

    def held(self, index: int) -> bool:
        return self.edge.pinned.opened.has(self.cid, index)  # has(): also a piece another worker stored

    async def fetch(self, index: int, stop: int | None = None) -> bytes:
        if not self.may_fetch:
            raise HttpError(403, NOT_INTERNAL)
        self._fetched.add(index)
        return await self.edge.fill(self.cid, index)


class Edge:
    def __init__(self, config: EdgeConfig, bucket: TokenBucket | None = None):
        self.config = config
        self.cache = cache = config.cache
        self.cors = config.cors  # who may read answers from another origin (--cors-origin)
        self.parent = config.parent.rstrip("/")
        self.siblings = [s.rstrip("/") for s in config.siblings]
        self.max_cache = config.max_cache
        self.only_origin = [h.lower() for h in config.only_origin]
        self.internal = [ipaddress.ip_network(n, strict=False) for n in config.internal]
        self.origin_key = config.origin_key
        self.require_token = config.require_token
        token = config.token
        self.upstream = Upstream(
            config.timeout, ssl=tls.client_context(config.ca), headers={"Authorization": f"Bearer {token}"} if token else None
        )
        self.ledger = ledger = Ledger(
            config.ledger or str(cache / "ledger.sqlite"), config.name or f"{socket.gethostname()}:{cache.resolve()}"
        )
        make_cache(cache)  # an unusable cache stops the edge here, with its reason
        self.swarm_key = load_or_create_private_key(cache / "swarm.key")  # signs the tickets peers show each other
        self._keys: dict[str, bytes] = {}  # content keys of protected files, in memory only
        self._key_fetches: Collapser[bytes] = Collapser()
        self.ranking = SourceRanking()
        self.unusable: dict[str, str] = {}  # sibling -> why it cannot be used as configured (a certificate), as last logged
        self.slow_said = ThrottledLog(log, Throttle(burst=1, interval=10.0))  # a line per slow sibling every 10 s
        self.metrics = Metrics("edge")
        self.manifests = ManifestFetcher(self.upstream, self.metrics, self.ranking, config.revalidate, "parent")
        self.tracker = tracker = _tracker(config) if config.p2p else None
        self.bucket = bucket or TokenBucket(config.upload_limit)  # --upload-limit; one shared by an edge's workers (node/sharedbucket.py)
        self.pinned = PinnedStore(cache, config.origin_key, config.max_cache, f"edge is still learning the origin key from {self.parent}")
        self.pinned.on_drop = self.metrics.forget_content
        self._fills: Collapser[bytes] = Collapser()
        self.fill_locks: FillLocks | None = None  # set when worker processes share the cache (edgeworkers.py)
        self.metrics.gauge("cache_bytes", "Bytes of pieces held", lambda: self.store.used_bytes if self.store else 0)
        self.metrics.gauge("cache_max_bytes", "Cache quota (0: none)", lambda: self.max_cache or 0)
        self.pinned.count_write_failures(self.metrics)
        self.metrics.gauge("ledger_pending_rows", "Usage rows not yet written", lambda: ledger.pending() if ledger else 0)
        self.seeder = SuperSeeder()  # p2p mode: which piece POST /seed hands out, per region
        self.seed_line = asyncio.Lock()  # seed answers to whole-file downloads: their bodies one at a time (serving.in_line)
        self.seed_stats = RegionStats()
        self._departures_seen = -1  # Tracker.departures when _forget_departed last read every live peer
        self.file_egress: Counter[Region] = Counter()  # p2p mode: file bytes sent to clients, by region (/metrics only)
        self._torrents: Recent[str, tuple[Torrent, list[str]]] = Recent(KEPT)  # cid -> (torrent, the origin's web seeds)
        self._torrent_fetches: Collapser[tuple[Torrent, list[str]]] = Collapser()
        # the 20-byte hashes clients announce kept torrents under -> content id; p2p mode: as a restart found them
        self._bt_hashes: dict[bytes, str] = _kept_bt_hashes(cache / BT_HASHES) if config.p2p else {}
        self._bt_file = SaidOnce(
            cache / BT_HASHES,
            log,
            "could not keep the torrents' hashes in %s (%s): a restart forgets them until their torrents are asked again",
        )
        self._bt_seed_counts: Recent[str, tuple[float, int, int]] = Recent(KEPT)  # info hash -> (when counted, seeds, others)
        self._left_window: Recent[str, None] = Recent(LEFT_WINDOW_KEPT)  # live segments dropped here: their stops need no lookup
        self.live = livewindow.LiveFollow()  # the live playlists served: their segments dropped once left behind
        self.bt_tracker = (  # p2p mode: BitTorrent clients' swarms, by info hash, ranked as the peers' are
            Tracker(tracker.tracker.locality, bttracker.ttl(tracker.interval), limits=tracker.tracker.limits)
            if tracker is not None
            else None
        )
        self._p2p_last: dict = {"regions": {}}
        self.preheat = PreheatDesk(self) if tracker is not None else None  # p2p mode: preheat orders for the region's peers
        if tracker is not None:
            tracker.placed = self._placed
        self.relay = (  # p2p mode: neighbours reach peers that cannot accept connections through this edge
            RelayHub(RelayLimits(config.relay_peers, config.relay_requests, timeout=config.timeout), self._known_manifest, self.bucket)
            if tracker is not None and config.relay_peers
            else None
        )
        promote = config.promote_upload
        self.promoter = Promoter(PromotionRules(promote, config.promote_uptime)) if self.relay is not None and promote else None
        if self.promoter is not None:
            promoter = self.promoter
            self.metrics.gauge(
                "subtracker_assignments",
                "Reachable peers whose last announce answer named a promoted peer as their sub-tracker",
                lambda: promoter.assignments().total(),
            )
        if self.relay is not None:
            hub = self.relay
            self.metrics.gauge("relay_peers", "Peers that cannot accept connections relayed by this edge now", lambda: len(hub.links))
            self.metrics.counter(
                "relay_sent_bytes", "Bytes this edge's relay has sent on to relayed peers' requesters", lambda: hub.bytes["out"]
            )
        self.announces = {"requests": RateMeter(ANNOUNCE_WINDOW), "contents": RateMeter(ANNOUNCE_WINDOW)}  # the tracker's load
        self.forwards_tracker = False  # a worker whose announces the primary answers (edgeworkers): its store is unused
        self.lag = LoopLag()  # announces wait while the event loop runs late: files and /status do not (node/looplag.py)
        self.shed = 0  # announces answered 503 unread for that
        if tracker is not None:
            self.metrics.families(self._region_metrics)

    # -- start-up: learn and pin the origin key ---------------------------------
    @property
    def store(self) -> PieceStore | None:
        """The piece store, None until the origin key is pinned."""
        return self.pinned.store

    async def _store(self) -> PieceStore:
        """The piece store; requests that arrive before the origin key is known wait for it a while."""
        return await self.pinned.wait(self.upstream.timeout)

    # -- access --------------------------------------------------------------------
    def may_fetch(self, request: web.Request) -> bool:
        """``--internal``: only these clients may make the edge fetch uncached content."""
        if not self.internal:
            return True
        addr = _client_address(request)
        return addr is not None and any(addr in net for net in self.internal)

    def _trusted_client(self, request: web.Request) -> bool:
        """The operator's own machines: ``--internal`` networks when given, by address (routers and tools there name
        the edge as its certificate does); and loopback asking for the edge by an IP address or localhost, as a page
        a stranger's DNS rebinds to 127.0.0.1 never does."""
        addr = _client_address(request)
        if addr is None:
            return False
        return any(addr in net for net in self.internal) or (addr.is_loopback and addressed_directly(request.host))

    def check_host(self, request: web.Request) -> None:
        """``--only-origin``: serve the namespace only under the CDN host names given."""
        if not self.only_origin:
            return
        host = request.host or ""
        if host_name(host) not in self.only_origin:
            raise HttpError(403, f"this edge serves only {', '.join(self.only_origin)}, not {host[:100]!r}")

    def region_name(self, request: web.Request) -> str | None:
        """The client's region by its address; looked up once per request (a piece answer asks up to three times)."""
        if REGION_KEY not in request:
            region = self.tracker.region_of(request.remote or "") if self.tracker else None
            request[REGION_KEY] = region.name if region else None
        return request[REGION_KEY]

    async def grant(self, request: web.Request, path: str, required: bool = False) -> tokens.Grant | None:
        """The request's verified token for ``path``: checked whenever one is sent, required under --require-token."""
        store = await self._store()
        return access.grant(request, store.public_key, path, required=required or self.require_token, region=self.region_name(request))

    def account(self, grant: tokens.Grant | None, request: web.Request, signed: SignedManifest, kind: str, nbytes: int) -> None:
        if self.ledger is not None:
            user = grant.user if grant else access.ANONYMOUS
            self.ledger.add(user, signed.content_id, signed.manifest.path, self.region_name(request), kind, nbytes)

    async def content_key(self, signed: SignedManifest) -> bytes:
        """A protected file's key, from the parent (which checks this edge's own token); kept in memory only.

        One fetch however many requests wait for it, as for pieces (20 at once
        made 20 ``/key`` requests to a stalling parent: an adversarial
        session).  The parent's 404 is a version it no longer publishes, as
        for a piece: 404, and the next read asks for the manifest again (it
        was a 502 for the whole --revalidate window).
        """
        cid = signed.content_id
        if cid not in self._keys:
            self._keys[cid] = await self._key_fetches.join(cid, lambda: self._fetch_key(signed)).future
        return self._keys[cid]

    async def _fetch_key(self, signed: SignedManifest) -> bytes:
        try:
            return await access.fetch_key(self.upstream, self.parent, signed, who=f"parent {self.parent}")
        except access.KeyRefused as exc:  # the client is authorised; this edge's own credential is not
            if exc.status == 404:
                raise self.manifests.withdraw(signed.manifest.path, signed.content_id) from None
            raise HttpError(502, exc.message) from None

    def _known_manifest(self, cid: str) -> SignedManifest | None:
        return self.store.manifest(cid) if self.store is not None else None

    async def get_relay(self, request: web.Request) -> web.StreamResponse:
        """``GET /relay`` (WebSocket, p2p mode): a peer that cannot accept connections answers its neighbours through us.

        Any valid access token will do (the contents it serves were checked at
        its announces); under ``--require-token`` one is needed.
        """
        if self.relay is None:
            raise HttpError(404, "this edge relays no peers (it needs --p2p, and --relay-peers above 0)")
        store = await self._store()
        user = None
        try:
            raw = tokens.from_request(request.headers, request.query)
            if raw is None and self.require_token:
                raise tokens.TokenError(401, "a token is required: send Authorization: Bearer TOKEN")
            user = tokens.verify(raw, store.public_key).user if raw is not None else None
        except tokens.TokenError as exc:
            raise access.denied(exc) from None
        return await self.relay.connect(request, user)

    async def get_relayed(self, request: web.Request) -> web.StreamResponse:
        """``GET /relay/<id>/piece/..`` and ``/have/..``: a neighbour's request, passed to the relayed peer."""
        if self.relay is None:
            raise HttpError(404, "this edge relays no peers (it needs --p2p, and --relay-peers above 0)")
        return await self.relay.forward(request)

    # -- manifests ------------------------------------------------------------------
    async def resolve(self, path: str, may_fetch: bool) -> SignedManifest:
        """The manifest a request for ``path`` is served by (marked used: PieceStore.used)."""
        store = await self._store()
        cached = store.manifest_for_path(path)
        if cached is not None and (self.manifests.fresh(path) or not may_fetch):
            signed = cached
        elif not may_fetch:
            raise HttpError(403, NOT_INTERNAL)
        else:
            signed = await self.manifests.revalidate(store, path, [self.parent])
        store.used(signed.content_id)
        return signed

    async def content_for(
        self, request: web.Request, cid: str, may_fetch: bool, required: bool = False
    ) -> tuple[SignedManifest, tokens.Grant | None]:
        """A content by id and the request's grant for its path.  The token itself is checked first: under
        ``--require-token`` (or ``required``) a stranger learns nothing of what is held (401, never a 404 that says
        "not cached here") and makes nothing be fetched; only a token holder gets as far as the id, whose manifest
        is fetched (``may_fetch``) as on an open edge.  Tokens once made nothing be fetched by id, and an edge rebuilt
        with an empty cache answered its managed peers' pieces 404 "not cached here", which a peer reads as a file
        withdrawn at the origin: every player reading through one was cut (an adversarial session)."""
        store = await self._store()
        access.authenticated(request, store.public_key, required=required or self.require_token)
        signed = await self.manifest_by_id(cid, may_fetch)
        return signed, await self.grant(request, signed.manifest.path, required)

    async def manifest_by_id(self, cid: str, may_fetch: bool) -> SignedManifest:
        store = await self._store()
        signed = store.manifest(cid)
        if signed is not None:
            store.used(cid)
            return signed
        if not is_content_id(cid):
            raise HttpError(404, f"{cid[:80]!r} is not a content id")
        if not may_fetch:
            raise HttpError(404, f"content {cid[:80]} is not cached here")
        return await self.manifests.by_id(store, self.parent, cid)

    # -- pieces -------------------------------------------------------------------
    def fill(self, cid: str, index: int) -> asyncio.Future:
        """The verified piece, fetched once however many requests wait for it."""
        fill = self._fills.join((cid, index), lambda: self._fill_shared(cid, index))
        if not fill.new:
            self._count_fill(False)
        return fill.future

    def _count_fill(self, fetched: bool) -> None:
        self.metrics.events[("upstream_fetch" if fetched else "collapsed", "")] += 1
        self.metrics.cache["miss" if fetched else "collapsed"] += 1

    async def _fill_shared(self, cid: str, index: int) -> bytes:
        """With several workers (edgeworkers.py), one fetch across them: the lock's last holder stored the piece."""
        if self.fill_locks is None:
            self._count_fill(True)
            return await self._fill(cid, index)
        started = time.monotonic()
        async with self.fill_locks.hold(cid, index) as held:
            data = (await self._store()).read_piece(cid, index)
            self._count_fill(data is None)  # read: another worker's fetch was joined, as a collapsed miss here
            if data is not None:
                return data
            if not held:  # its holder is stuck (stopped, swapping) past --timeout + 5 s: fetched anyway, with a whole
                return await self._fill(cid, index)  # --timeout (the rule below cut the client's download with a 504)
            # the holder failed (or gave up): a fetch of our own gets what is left of the client's --timeout, not
            # another whole one, which made each worker in turn hold its clients a further timeout (4 workers: 11 s at 3)
            left = self.upstream.timeout - (time.monotonic() - started)
            if left < MIN_FILL_S:
                raise HttpError(504, f"piece {index}: another worker's fetch of it failed within --timeout ({self.upstream.timeout:g} s)")
            return await self._fill(cid, index, left)

    async def _fill(self, cid: str, index: int, timeout: float | None = None) -> bytes:
        store = await self._store()
        signed = store.manifest(cid)
        if signed is None:
            raise HttpError(502, f"content {cid[:12]} was withdrawn while being fetched")
        now = time.monotonic()
        candidates = [*self.ranking.ranked(self.siblings, now), self.parent]
        problems: list[UpstreamError] = []
        for source in candidates:
            sibling = source != self.parent
            started = time.monotonic()
            try:
                reply = await self.upstream.get(
                    source,
                    f"/piece/{cid}/{index}",
                    {"Cache-Control": "only-if-cached"} if sibling else None,
                    min(SIBLING_TIMEOUT, timeout or SIBLING_TIMEOUT) if sibling else timeout,
                    limit=signed.manifest.piece_span(index)[1],  # a piece is never longer: more is refused as it streams
                    min_rate=SIBLING_MIN_RATE if sibling else MIN_RATE,
                )
            except OutOfDescriptorsHere:
                raise  # ours, not the source's: a 503 to retry, and the source is not set aside
            except UpstreamError as exc:
                backoff = self.ranking.failure(source, time.monotonic(), started)
                problems.append(exc)
                if sibling and isinstance(exc, UpstreamTimeout):  # no failure the client sees: said here (pieces time out together)
                    self.slow_said.log(
                        logging.INFO, source, "sibling %s: %s; set aside for %.0f s, the parent asked", source, exc.message, backoff
                    )
                if sibling and isinstance(exc, Hopeless) and self.unusable.get(source) != exc.message:  # said once
                    self.unusable[source] = exc.message  # a sibling whose certificate fails was skipped without a word
                    log.warning("sibling %s cannot be used: %s; pieces come from the parent", source, exc.message)
                continue
            self.unusable.pop(source, None)
            if reply.status == 404 and not sibling:  # withdrawn upstream (a live segment the encoder deleted): not our failure
                raise self.manifests.withdraw(signed.manifest.path, cid)  # or a new version: the next read asks (not in --revalidate)
            if reply.status != 200:
                if not sibling:
                    said = said_in(reply.body)  # its reason, as for a manifest or a key: not a piece's bytes
                    why = f"parent {source} answered {reply.status} for piece {index}: {said}"
                    problems.append(busy(reply.status, reply.headers, why) or UpstreamError(502, why))
                continue  # a sibling that does not hold it says 504
            try:
                store.put_piece(cid, index, reply.body)
            except CorruptPiece:
                self.metrics.events[("corrupt_piece", source)] += 1
                backoff = self.ranking.failure(source, time.monotonic(), started)
                fate = f"set aside for {backoff:.0f} s" if sibling else "no other source to try"
                log.warning("%s sent a corrupt piece %d of %s; %s", source, index, signed.manifest.path, fate)
                problems.append(UpstreamError(502, f"{source} sent a corrupt piece {index} of {signed.manifest.path}"))
                continue
            except KeyError:  # superseded meanwhile: serve it if it is right, keep nothing
                if not signed.manifest.check_piece(index, reply.body):
                    problems.append(UpstreamError(502, f"{source} sent a corrupt piece {index}"))
                    continue
            except PieceNotStored:
                pass  # verified, but the disk would not take it: served from memory, not cached (the store logged it)
            self.ranking.success(source, len(reply.body), time.monotonic() - started)
            self.metrics.count_received("sibling" if sibling else "parent", source, len(reply.body))
            return reply.body
        status, headers = passed_on(problems)
        detail = "; ".join(p.message for p in problems) or "no source holds it"
        raise HttpError(status, f"cannot fetch piece {index} of {signed.manifest.path}: {detail}", headers)

    async def _unlinked_loop(self) -> None:
        """A worker's: the descriptors it keeps of pieces another worker evicted are closed within a second (PieceStore.close_unlinked)."""
        while True:
            await asyncio.sleep(UNLINKED_SWEEP_S)
            if self.store is not None:
                self.store.close_unlinked()

    async def _expire_loop(self) -> None:
        assert self.tracker is not None
        while True:
            await asyncio.sleep(self.tracker.interval)
            try:
                dropped = await self.tracker.expire()
            except HttpError:  # the store is down: logged by the tracker service; this edge's own tables still expire
                dropped = 0
            if self.bt_tracker is not None:
                await self.bt_tracker.expire(time.monotonic())
            self._forget_departed(whole=True)
            if self.promoter is not None:
                self.promoter.expire(time.monotonic(), 3 * self.tracker.interval)
                self._log_demotions()
            if dropped:
                log.info("tracker: %d silent peers expired", dropped)

    # -- handlers --------------------------------------------------------------------
    async def get_file(self, request: web.Request) -> web.StreamResponse:
        self.check_host(request)
        rel = file_request_path(request.raw_path)
        may_fetch = self.may_fetch(request)
        grant = await self.grant(request, rel)  # before anything is fetched for it; the user is billed when a token is sent
        signed = await self.resolve(rel, may_fetch)
        return await self.manifests.serving(
            request, signed, lambda s: self._serve(request, rel, s, may_fetch, grant), lambda: self.resolve(rel, may_fetch)
        )

    async def _serve(
        self, request: web.Request, rel: str, signed: SignedManifest, may_fetch: bool, grant: tokens.Grant | None
    ) -> web.StreamResponse:
        """``signed``'s file (or range) for ``request``, decrypted for a token that covers it, accounted as it leaves."""
        protection = signed.manifest.protection
        transform = None
        if protection is not None:  # plaintext for an authorised client, decrypted on the fly
            grant = grant or await self.grant(request, rel, required=True)
            transform = cipher_for(await self.content_key(signed), protection)
        source = EdgeSource(self, signed.content_id, may_fetch)

        def sent(n: int) -> None:  # what actually left, even when the client hung up
            self.account(grant, request, signed, "edge_sent", n)
            if self.tracker is not None:  # the region's edge egress counts files to clients too
                self.file_egress[self.region_name(request)] += n

        response = await serve_file(request, signed, source, self.metrics, self.bucket, transform, on_sent=sent)
        await self._follow_live(signed)
        return response

    async def _follow_live(self, signed: SignedManifest) -> None:
        """A live playlist served (to a client, or its manifest to a child edge): the segments that left its window go."""
        if is_playlist(signed.manifest.path) and signed.manifest.protection is None:
            store = await self._store()
            for gone in livewindow.drop(store, self.live.served(store, signed)[1]):
                log.debug("dropped %s: it left the live window of %s", gone.manifest.path, signed.manifest.path)
                self._left_window[gone.content_id] = None

    async def put_file(self, request: web.Request) -> web.Response:
        """A user publishes through this edge (roles/publish.py): the token checked here, the upload streamed to the parent."""
        self.check_host(request)
        rel = publish.upload_path(request)
        if not self.may_fetch(request):
            raise HttpError(403, "this edge takes uploads only from its internal network")
        store = await self._store()
        access.publish_grant(request, store.public_key, rel, self.region_name(request))
        resp = await publish.forward(self.upstream, self.parent, request, self.upstream.timeout)
        if resp.status == 201:
            self.manifests.expire(rel)  # a new version: the next GET asks the parent
        return resp

    async def get_manifest(self, request: web.Request) -> web.Response:
        rel = manifest_request_path(request.raw_path)
        if self.require_token:
            await self.grant(request, rel)
        signed = await self.resolve(rel, self.may_fetch(request))
        raw = (await self._store()).raw_manifest(signed.content_id) or signed.to_json()
        await self._follow_live(signed)  # a child edge's: it reads the playlist's pieces from us next (not whole yet: later)
        return manifest_response(request, signed.etag, raw, torrent_link(signed.manifest))

    # -- BitTorrent ------------------------------------------------------------------
    async def torrent(self, signed: SignedManifest, may_fetch: bool) -> tuple[Torrent, list[str]]:
        """The origin's signed torrent of a content, from the parent once, and the web seeds the origin lists.

        Fetching one makes the origin hash the whole file: under ``--internal``, only for an internal client.
        """
        cid = signed.content_id
        done = self._torrents.touch(cid)
        if done is not None:
            return done
        if not may_fetch:
            raise HttpError(403, NOT_INTERNAL)
        return await self._torrent_fetches.join(cid, lambda: self._fetch_torrent(signed)).future

    async def _fetch_torrent(self, signed: SignedManifest) -> tuple[Torrent, list[str]]:
        store = await self._store()
        path = f"/torrent/{quote(signed.manifest.path, safe='/')}"
        try:
            reply = await self.upstream.get(self.parent, path, None, max(TORRENT_TIMEOUT, self.upstream.timeout), limit=TORRENT_MAX)
        except UpstreamError as exc:
            raise HttpError(exc.status, exc.message) from None
        if reply.status != 200:
            raise HttpError(502 if reply.status != 404 else 404, f"parent {self.parent} answered {reply.status} for {path}")
        try:
            torrent = check(reply.body, signed.manifest, signed.content_id, store.public_key)
        except TorrentError as exc:
            raise HttpError(
                502, f"parent {self.parent} sent a torrent for {signed.manifest.path} that is not the origin's: {exc}"
            ) from None
        seeds = [s for s in seeds_of(reply.body) if not s.startswith(self.parent + "/")]  # the parent names itself: clients use us
        if self._torrents.put(signed.content_id, (torrent, seeds)):  # some forgotten: the hashes of those still kept
            self._bt_hashes = announce_index((cid, kept) for cid, (kept, _) in self._torrents.items())
        for h in torrent.announce_hashes:
            self._bt_hashes[h] = signed.content_id
        if self.tracker is not None:
            self._keep_bt_hashes()
        return torrent, seeds

    def _keep_bt_hashes(self) -> None:
        """Write the torrents' announce hashes to the cache: a restarted edge (or primary worker) answered every client
        that held a torrent "unknown torrent: get it from /torrent first" until someone fetched that torrent again,
        which a client never does by itself (an adversarial session).  Its swarms refill from the next announces.  A
        failure (a full disk) is one warning until a save succeeds, not one per torrent (an adversarial session)."""
        doc = {h.hex(): cid for h, cid in self._bt_hashes.items()}
        self._bt_file.write(json.dumps(doc, separators=(",", ":")).encode())

    async def _handed_out(self, request: web.Request) -> tuple[SignedManifest, bytes]:
        """The torrent a ``/torrent/<path>`` or ``/magnet/<path>`` request gets: this edge first among its web seeds."""
        self.check_host(request)
        rel = manifest_request_path(request.raw_path)  # /torrent/<path>, /magnet/<path>: the same shape
        await self.grant(request, rel)
        signed = await self.resolve(rel, self.may_fetch(request))
        reason = why_none(signed.manifest)
        if reason:
            raise HttpError(404, reason)
        torrent, seeds = await self.torrent(signed, self.may_fetch(request))
        base = base_url(request)
        # BitTorrent announces carry no token: under --require-token every one is refused, so the torrent names no tracker
        announce = base + "/announce" if self.tracker is not None and not self.require_token else None
        return signed, hand_out(torrent, [web_seed(base, rel), *seeds], announce)

    async def get_torrent(self, request: web.Request) -> web.Response:
        signed, data = await self._handed_out(request)
        return torrent_response(data, signed.manifest)

    async def get_magnet(self, request: web.Request) -> web.Response:
        _, data = await self._handed_out(request)
        return magnet_response(data)

    async def get_bt_announce(self, request: web.Request) -> web.Response:
        """p2p mode: a BitTorrent client's announce (BEP 3); it is handed BitTorrent clients of its own region."""
        if self.tracker is None or self.bt_tracker is None:
            raise HttpError(404, "this edge is not a tracker (start it with --p2p)")
        if self.require_token:
            return _bencoded(bttracker.failure("this edge requires access tokens, which BitTorrent announces cannot carry"))
        try:
            a = bttracker.parse(request.rel_url.raw_query_string, self.bt_tracker.max_answer)
        except ValueError as exc:
            return _bencoded(bttracker.failure(str(exc)))
        if a.info_hash not in self._bt_hashes:
            return _bencoded(bttracker.failure("unknown torrent: get it from this edge's /torrent/<path> first"))
        address = request.remote or ""
        have, key = ({0} if a.left == 0 else set()), a.info_hash.hex()
        try:
            heard = AnnounceRecord(
                cid=key,
                peer_id=a.peer_id.hex(),
                url=peer_url(address, a.port),
                address=address,
                region=self.tracker.region_of(address),
                have=have,
                piece_count=1,  # a BitTorrent client is a seed or not: one "piece"
                uploaded=a.uploaded,
                downloaded=a.downloaded,
                event=a.event,
            )
            peers, size = await self.bt_tracker.announce_sized(time.monotonic(), heard)
        except Refused as exc:
            return _bencoded(bttracker.failure(exc.message, exc.retry_after))
        except OutOfOrder as exc:
            return _bencoded(bttracker.failure(str(exc)))
        seeds = min(size, (await self._bt_counts(key))[0])
        return _bencoded(bttracker.answer(self.tracker.interval, peers[: a.numwant], seeds, size - seeds))

    async def get_bt_scrape(self, request: web.Request) -> web.Response:
        """p2p mode: a BitTorrent client's scrape (BEP 48), the seeds and the others of the torrents it names.  It was
        taken for a file named "scrape": a 404, and a request to the origin for each one (an adversarial session)."""
        if self.tracker is None or self.bt_tracker is None:
            raise HttpError(404, "this edge is not a tracker (start it with --p2p)")
        if self.require_token:
            return _bencoded(bttracker.failure("this edge requires access tokens, which BitTorrent scrapes cannot carry"))
        try:
            hashes = bttracker.parse_scrape(request.rel_url.raw_query_string)
        except ValueError as exc:
            return _bencoded(bttracker.failure(str(exc)))
        return _bencoded(bttracker.scrape_answer({h: await self._bt_counts(h.hex()) for h in hashes if h in self._bt_hashes}))

    async def _bt_counts(self, key: str) -> tuple[int, int]:
        """The seeds and the others of a BitTorrent swarm, counted afresh at most every BT_COUNT_EVERY seconds: a count
        on every announce read the whole swarm (1 ms of the edge's loop an announce at 16 000 clients; an adversarial
        session)."""
        assert self.bt_tracker is not None
        now = time.monotonic()
        counted = self._bt_seed_counts.get(key)
        if counted is None or not 0 <= now - counted[0] <= BT_COUNT_EVERY:
            swarm = await self.bt_tracker.swarm(key)
            seeds = sum(1 for p in swarm if p.complete)
            counted = (now, seeds, len(swarm) - seeds)
            self._bt_seed_counts.put(key, counted)
        return counted[1], counted[2]

    async def get_content(self, request: web.Request) -> web.Response:
        signed, _ = await self.content_for(request, request.match_info["cid"], self.may_fetch(request))
        return manifest_response(request, signed.etag, (await self._store()).raw_manifest(signed.content_id) or signed.to_json())

    async def get_content_key(self, request: web.Request) -> web.Response:
        """``GET /key/<content-id>``: a protected file's key, for a token that covers its path."""
        # a child edge may ask before it holds the manifest: fetched for a token holder, never for a stranger
        signed, _ = await self.content_for(request, request.match_info["cid"], self.may_fetch(request), required=True)
        if signed.manifest.protection is None:
            raise HttpError(404, f"{signed.manifest.path} is not protected: it has no key")
        return access.key_response(signed.content_id, await self.content_key(signed))

    async def get_swarm_key(self, _: web.Request) -> web.Response:
        """The public key of this edge's swarm tickets: peers check each other's tickets with it."""
        return web.Response(body=public_pem(self.swarm_key.public_key()), content_type="application/x-pem-file")

    async def get_piece(self, request: web.Request) -> web.StreamResponse:
        """Node to node.  ``Cache-Control: only-if-cached`` (siblings) never triggers a fetch."""
        store = await self._store()
        cid = request.match_info["cid"]
        only_cached = "only-if-cached" in request.headers.get("Cache-Control", "")
        may_fetch = self.may_fetch(request) and not only_cached
        signed, grant = await self.content_for(request, cid, may_fetch)
        index = piece_index(request, signed.manifest.piece_count)
        data = self._cached_piece(store, cid, index)
        if data is None and only_cached:
            raise HttpError(504, f"piece {index} of {cid[:12]} is not cached here")
        if data is None:
            data = await EdgeSource(self, cid, may_fetch).fetch(index)
        if self.tracker is not None and request.headers.get(PEER_HEADER):
            urgency = request.headers.get(URGENCY_HEADER, "").strip().lower()
            self.seed_stats.piece_requests[(self.region_name(request), urgency if urgency in URGENCIES else "none")] += 1
        with self._copy(request, cid, index):
            return await self._send_to_node(request, signed, grant, index, data, "piece")

    async def post_seed(self, request: web.Request) -> web.StreamResponse:
        """p2p mode: a peer asks the edge to pick a piece for it, one its region has no live copy of (else 204)."""
        if self.tracker is None:
            raise HttpError(404, "this edge is not a tracker (start it with --p2p): it does not seed")
        store = await self._store()
        cid = request.match_info["cid"]
        may_fetch = self.may_fetch(request)
        signed, grant = await self.content_for(request, cid, may_fetch)
        check_json_body(request.headers)
        try:
            have, start, whole, unseen = parse_request(await request.read(), signed.manifest.piece_count)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if not may_fetch:  # only what the edge holds: an uncached pick would be a 403 for an asker that did nothing wrong
            have |= set(range(signed.manifest.piece_count)) - store.held(cid)
        region = self.region_name(request)
        index = self.seeder.choose(time.monotonic(), region, cid, have, start, signed.manifest.piece_count, unseen)
        if index is None:
            self.seed_stats.seeded[(region, "none")] += 1
            return web.Response(status=204)
        with self._copy(request, cid, index):  # before any wait, so that concurrent askers get other pieces
            data = self._cached_piece(store, cid, index) or await EdgeSource(self, cid, may_fetch).fetch(index)
            resp = await self._send_to_node(request, signed, grant, index, data, "seed", self.seed_line if whole else None)
        self.seed_stats.seeded[(region, "sent")] += 1
        return resp

    def _cached_piece(self, store: PieceStore, cid: str, index: int) -> bytes | None:
        """The piece if the cache holds it, counted as a hit (a miss is counted by the fill that follows)."""
        data = store.read_piece(cid, index)
        if data is not None:
            self.metrics.cache["hit"] += 1
        return data

    async def _send_to_node(
        self,
        request: web.Request,
        signed: SignedManifest,
        grant: tokens.Grant | None,
        index: int,
        data: bytes,
        endpoint: str,
        line: asyncio.Lock | None = None,
    ) -> web.StreamResponse:
        """A piece to a node or peer under the upload cap, counted and billed as edge bytes (/piece and /seed alike)."""
        cid = signed.content_id
        peer = request.headers.get(PEER_HEADER)
        self.metrics.sent["node"] += len(data)
        self.metrics.count_content("sent", cid, "peer" if peer else "node", len(data))
        resp = await send_piece(request, data, self.bucket, {PIECE_HEADER: str(index)} if endpoint == "seed" else None, line)
        self.account(grant, request, signed, "edge_sent", len(data))
        if peer:  # the user's peer daemon: its reports can confirm these bytes
            self.account(grant, request, signed, "edge_sent_to_peers", len(data))
        if self.tracker is not None:
            self.seed_stats.sent(self.region_name(request), cid, endpoint, len(data))
        return resp

    # -- seeding: copies per region ------------------------------------------------------
    def _tracked(self, cid: str) -> set[tuple[str, str]]:
        """The seeder's names of the live peers of ``cid``'s swarm that announce to this edge (its copies are this edge's)."""
        assert self.tracker is not None
        return self.tracker.tracker.local(cid)

    @contextlib.contextmanager
    def _copy(self, request: web.Request, cid: str, index: int) -> Iterator[None]:
        """The piece counts as a copy in the asker's region while it is sent, and after if it arrived.

        Only a peer daemon makes a copy (p2p mode, its peer id and address):
        one that announces the content here (at once, or within the seeder's
        ``UNCONFIRMED_S``), so that the tracker will tell us when it has left.
        """
        peer = (request.remote or "", request.headers.get(PEER_HEADER, ""))
        if self.tracker is None or not peer[1]:
            yield
            return
        region = self.region_name(request)
        self.seeder.record(time.monotonic(), region, cid, index, peer)
        try:
            yield
        except BaseException:
            self.seeder.unrecord(region, cid, index, peer)
            raise

    def _forget_departed(self, whole: bool = False) -> None:
        """Copies and latency reports of peers the tracker no longer holds (stopped, expired) stop counting.

        That reads every live peer of every swarm here: done when a peer left
        this edge's tables since the last time (``Tracker.departures``), or
        when ``whole``; else only copies whose recipient never announced go
        (``UNCONFIRMED_S``).  Every /status and /metrics comes here: at 50 000
        peers, reading them all was 60 % of a poll.
        """
        assert self.tracker is not None
        now, tracker = time.monotonic(), self.tracker.tracker
        if not whole and tracker.departures == self._departures_seen:
            for region, cid in self.seeder.entries():
                self.seeder.expire_unconfirmed(now, region, cid)
            return
        self._departures_seen = tracker.departures
        live = {cid: self._tracked(cid) for cid in tracker.local_contents()}
        for region, cid in self.seeder.entries():
            self.seeder.retain(now, region, cid, live.get(cid, set()))
        self.seed_stats.retain_latency(set().union(*live.values()))

    async def _p2p_status(self) -> dict:
        """The tracker's status, each region with what the edge seeded there (docs/operations.md#the-edge-as-super-seeder)."""
        assert self.tracker is not None
        p2p = await self.tracker.status()
        self._forget_departed()  # after the tracker's own expiry, whenever that ran
        sizes = {s.content_id: s.manifest.size for s in self.store.contents()} if self.store else {}
        entries = self.seeder.entries()
        regions: set[Region] = self.seed_stats.regions() | {r for r, _ in entries}
        named = {_region_label(r): r for r in regions}
        for name in set(p2p["regions"]) | set(named):
            region = named.get(name, name if name != "unmapped" else None)
            requests = {u: self.seed_stats.piece_requests[(region, u)] for u in URGENCIES}
            p2p["regions"].setdefault(name, {}).update(
                copies=self.seed_stats.copies(region, sizes),
                live_copies={cid: self.seeder.live_copies(region, cid) for r, cid in entries if r == region},
                seeded={o: self.seed_stats.seeded[(region, o)] for o in ("sent", "none")},
                piece_requests=requests,
                deadline_forced=requests["urgent"],
                have_latency=self.seed_stats.latency(region),
            )
        return p2p

    async def _bt_status(self) -> dict:
        """BitTorrent clients this edge tracks (p2p mode): distinct clients, and swarms (a hybrid torrent is two: v1 and v2)."""
        assert self.bt_tracker is not None
        await self.bt_tracker.expire(time.monotonic())
        clients, swarms = await self.bt_tracker.peer_count(), await self.bt_tracker.contents()
        return {"torrents": len(self._torrents), "clients": clients, "swarms": len(swarms)}

    def _announce_load(self) -> dict[str, float]:
        """POST /announce requests and the contents in them: in all, and a second over the last ANNOUNCE_WINDOW s (sub-trackers lower it)."""
        now = time.monotonic()
        load: dict[str, float] = {"window_s": ANNOUNCE_WINDOW}
        for unit, meter in self.announces.items():
            load[unit] = meter.total
            load[f"{unit}_per_s"] = round(meter.rate(now), 3)
        load["shed"] = self.shed
        return load

    def _region_metrics(self):
        """/metrics per region (p2p mode); never a content id in a label."""
        p2p = self._p2p_last  # computed just before the scrape (app middleware), as collectors cannot wait
        announces = CounterMetricFamily("edgeswarm_announces", "POST /announce requests received (a batch is one)")
        announces.add_metric([], self.announces["requests"].total)
        contents = CounterMetricFamily("edgeswarm_announce_contents", "Contents in the POST /announce requests received")
        contents.add_metric([], self.announces["contents"].total)
        shed = CounterMetricFamily("edgeswarm_announces_shed", "POST /announce answered 503 unread: the event loop ran late (a flood)")
        shed.add_metric([], self.shed)
        seed = CounterMetricFamily(
            "edgeswarm_seed_pieces", "POST /seed answers by region: a piece sent, or none (204)", labels=["region", "outcome"]
        )
        for (region, outcome), n in self.seed_stats.seeded.items():
            seed.add_metric([_region_label(region), outcome], n)
        asked = CounterMetricFamily(
            "edgeswarm_edge_piece_requests",
            "Peers' GET /piece by region and X-Edgeswarm-Urgency (urgent: deadline-forced)",
            labels=["region", "urgency"],
        )
        for (region, urgency), n in self.seed_stats.piece_requests.items():
            asked.add_metric([_region_label(region), urgency], n)
        sent = CounterMetricFamily(
            "edgeswarm_edge_region_sent_bytes",
            "Edge egress to each region, by endpoint: file (to clients), piece and seed (to peers)",
            labels=["region", "endpoint"],
        )
        for (region, endpoint), n in self.seed_stats.bytes.items():
            sent.add_metric([_region_label(region), endpoint], n)
        for region, n in self.file_egress.items():
            sent.add_metric([_region_label(region), "file"], n)
        copies = GaugeMetricFamily(
            "edgeswarm_seed_live_copies", "Pieces sent to peers of the region that are still live", labels=["region"]
        )
        share = GaugeMetricFamily("edgeswarm_region_p2p_share_ratio", "Share of the region's bytes that came from peers", labels=["region"])
        peers = GaugeMetricFamily("edgeswarm_region_peers", "Distinct live peers the tracker holds in the region", labels=["region"])
        latency = GaugeMetricFamily(
            "edgeswarm_region_have_latency_seconds",
            "Peers' reported availability latency (median p50, p95 of p95s)",
            labels=["region", "quantile"],
        )
        for name, row in p2p["regions"].items():
            copies.add_metric([name], sum(row["live_copies"].values()))
            if "peers" in row:  # none while the store does not answer: a 0 read as the region's swarm gone (an adversarial
                peers.add_metric([name], row["peers"])  # session: Redis hung, the swarm intact in it); store_up says why
            if row.get("p2p_share") is not None:
                share.add_metric([name], row["p2p_share"])
            if row["have_latency"]:
                for q, label in QUANTILES.items():
                    latency.add_metric([name, label], row["have_latency"][q])
        records = GaugeMetricFamily(
            "edgeswarm_tracker_records", "(content, peer) records the tracker keeps from this edge's announces (--max-peer-records)"
        )
        records.add_metric([], p2p.get("state", {}).get("records", 0))
        crowded = CounterMetricFamily(
            "edgeswarm_tracker_crowded_out", "Records dropped at --max-peer-records to make room for another sender's"
        )
        crowded.add_metric([], p2p.get("crowded_out", 0))
        store_up = GaugeMetricFamily(
            "edgeswarm_tracker_store_up",
            "1 if the tracker store answered this scrape's question and took the last announce, else 0 (/status: store_error)",
        )
        failures = CounterMetricFamily(
            "edgeswarm_tracker_store_failures",
            "Announces the tracker store failed (answered 503), by how: unreachable (down, hung) or refuses (full, read-only)",
            labels=["how"],
        )
        if not self.forwards_tracker:  # the primary's alone among workers (theirs is no store's): their sum is its value
            store_up.add_metric([], 0 if "store_error" in p2p else 1)
            for how in ("unreachable", "refuses"):
                failures.add_metric([how], p2p.get("store_failures", {}).get(how, 0))
        return [seed, asked, sent, copies, share, peers, latency, announces, contents, shed, records, crowded, store_up, failures]

    async def post_announce(self, request: web.Request) -> web.Response:
        """p2p mode: a peer reports what it holds and gets peers of its region to trade with.

        One content per announce (``content``), or a batch (``contents``): all
        a peer holds in one request per interval, charged once against its
        announce rate; each item gets its own answer or error
        (docs/protocol.md#announce).
        """
        if self.tracker is None:
            raise HttpError(404, "this edge is not a tracker (start it with --p2p)")
        now = time.monotonic()
        self.announces["requests"].add(now)
        if self.lag.late(clock := asyncio.get_running_loop().time(), cpu := time.thread_time()):
            self.shed += 1
            late = f"its event loop runs {self.lag.lateness(clock, cpu):.2f} s late"
            raise HttpError(503, f"this edge is too busy to take announces ({late}); files are served as ever: retry", SHED_RETRY)
        check_json_body(request.headers)
        try:
            doc = jsondoc.loads(await request.read())
        except ValueError:
            raise HttpError(400, "announce body is not JSON (or nests too deep)") from None
        items = doc.get("contents") if isinstance(doc, dict) else None
        self.announces["contents"].add(now, len(items) if isinstance(items, list) else 1)
        if isinstance(doc, dict) and "contents" in doc:
            return json_response(await self._announce_batch(request, doc), compact=True)
        return json_response(await self._announce_one(request, doc, True), compact=True)

    async def _announced(self, request: web.Request, cid: str) -> tuple[SignedManifest, tokens.Grant | None]:
        """``content_for`` an announced content, looked up upstream only while its sender may (``_announce_one``)."""
        assert self.tracker is not None
        store = await self._store()
        if store.manifest(cid) is not None:
            return await self.content_for(request, cid, True)
        sender = access.authenticated(request, store.public_key, required=self.require_token)
        address, user = request.remote or "", sender.user if sender else None
        if self.tracker.unknown_wait(address, user):
            who = f"user {user}" if user else address
            raise HttpError(404, f"content {cid[:12]} is not known here, and {who} announced too many that no one publishes: not looked up")
        try:
            return await self.content_for(request, cid, True)
        except HttpError as exc:
            if exc.status == 404:
                self.tracker.unknown_found(address, user)
            raise

    async def _announce_batch(self, request: web.Request, doc: dict) -> dict:
        """Each item as a single announce with the batch's peer id, port and latency.

        A refusal of the sender (429) or a store that is down (503) before any
        item was taken answers the whole batch; after some were, those keep
        their answers (their usage is booked: the peer must see it
        acknowledged, or it would report it again) and the rest get the error.
        """
        assert self.tracker is not None
        items = batch_items(doc)
        shared = {k: doc[k] for k in ("peer_id", "port", "have_latency", "relay", "relay_at") if k in doc}
        answers: dict[str, dict] = {}
        charged, stop = False, None
        for item in items:
            single = {**item, **shared}
            cid = single.get("content")
            if stop is not None:
                answer = {"error": stop}
            else:
                try:
                    answer = await self._announce_one(request, single, not charged)
                    charged = True
                except HttpError as exc:
                    error: dict[str, object] = {"status": exc.status, "message": exc.message}
                    if (wait := exc.headers.get("Retry-After", "")).isdigit():  # the batch's 200 carries no header of it
                        error["retry_after"] = int(wait)
                    if exc.status in (429, 503):
                        if not charged:
                            raise
                        stop = error
                    answer = {"error": error}
            if isinstance(cid, str) and is_content_id(cid):
                for said_once in ("interval", "region", "locality"):  # the batch's, at its top
                    answer.pop(said_once, None)
                answers[cid] = answer
        return {
            "interval": self.tracker.interval,
            "region": self.region_name(request),
            "locality": self.tracker.locality,
            "contents": answers,
        }

    async def _announce_one(self, request: web.Request, doc: object, charge: bool) -> dict:
        """One content's announce; ``charge``: count it against the sender's announce rate (a batch's first).  A
        content this edge does not know is looked up upstream while the sender has not announced too many that proved
        unknown (``Tracker.unknown_wait``); past that, a 404 without a lookup."""
        assert self.tracker is not None
        doc, cid = announced_content(doc)
        if doc.get("event") == "stopped" and cid in self._left_window:  # a live segment dropped here, gone upstream too
            store = await self._store()
            if store.manifest(cid) is None:
                sender = access.authenticated(request, store.public_key, required=self.require_token)
                user = sender.user if sender else None
                answer = await self.tracker.stop_unknown(doc, request.remote or "", user, charge)
                self.seeder.leave(self.region_name(request), cid, (request.remote or "", doc["peer_id"]))
                self._promoted(request, doc, user, cid)  # the segment leaves its counters: at its last, the peer has left
                return answer
        signed, grant = await self._announced(request, cid)
        try:
            latency = parse_latency(doc.get("have_latency"))  # before the tracker: a refused announce changes nothing
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        user = grant.user if grant else None
        relay_url, via = None, None
        if doc.get("relay") is True and isinstance(doc.get("peer_id"), str):  # it cannot be reached: hand it out at a relay
            relay_url, via = self._relay_url(request, doc, user)
        answer, usage = await self.tracker.handle(doc, request.remote or "", signed.manifest, user, charge, relay_url)
        if via is not None:
            answer["relay_via"] = via
        elif relay_url is None and self._promoted(request, doc, user, cid):
            answer["promoted"] = True
        elif relay_url is None and (tracker := self._subtracker(request, doc, user)) is not None:
            answer["tracker"] = tracker
        for kind, nbytes in usage.items():
            self.account(grant, request, signed, kind, nbytes)
        peer, region = (request.remote or "", doc["peer_id"]), self.region_name(request)
        if doc["event"] == "stopped":
            self.seeder.leave(region, cid, peer)
        else:
            have = functools.partial(bitfield.decode, doc["have"], signed.manifest.piece_count)  # the tracker checked it
            self.seeder.observe(time.monotonic(), region, cid, peer, self._placed_seed(cid, peer, doc["have"], signed), have)
            if latency is not None:
                self.seed_stats.report_latency(region, peer, latency)
            ttl = max(TICKET_MIN_S, 3 * self.tracker.interval)
            if grant is not None:  # never past the token's own end: a user whose token had expired went on getting
                ttl = max(1.0, min(ttl, grant.expires - time.time()))  # pieces from peers for 15 min (an adversarial session)
            answer["ticket"] = tokens.issue_ticket(self.swarm_key, str(doc["peer_id"]), user or access.ANONYMOUS, cid, ttl, region=region)
        return answer

    def _placed(self, cid: str, rec: PeerRecord) -> bool:
        """A complete record a preheat order put there (its announce answers mark it ``placed``)."""
        return self.preheat is not None and self.preheat.orders.holds(cid, (rec.address, rec.peer_id))

    def _placed_seed(self, cid: str, peer: tuple[str, str], have: str, signed: SignedManifest) -> bool:
        """The peer holds the whole content because a preheat order put it there: its copies count apart (superseed.py)."""
        if self.preheat is None or not self.preheat.orders.holds(cid, peer):
            return False
        count = signed.manifest.piece_count  # the tracker checked the bitfield
        return bitfield.decode_mask(have, count).bit_count() >= count

    def _relay_url(self, request: web.Request, doc: dict, user: str | None) -> tuple[str, str | None]:
        """An unreachable peer's URL: at the promoted peer of its region it holds a relay at, else at ours; and that promoted peer."""
        if self.relay is None:
            raise HttpError(400, "this edge relays no peers (--relay-peers 0): announce without 'relay', from a reachable address")
        address, peer_id = request.remote or "", doc["peer_id"]
        ours = self.relay.url_for(self._own_url(request), address, user, peer_id)
        if self.promoter is None:
            return ours, None
        via = self.promoter.relay_for(self.region_name(request), RelayHub.relay_id(address, user, peer_id))
        if via is not None and doc.get("relay_at") == via:  # its relay there is open: neighbours go there, not through us
            return self.relay.url_for(via, address, None, peer_id), via  # a peer's relay knows no token users: owner by address
        return ours, via

    def _own_url(self, request: web.Request) -> str:
        """This edge's URL for the peers it hands a relayed peer out to: ``--register-url``, else the address the
        announce reached (never its ``Host`` header, which the announcer writes: it named any host and port, and its
        neighbours sent their requests there)."""
        url = self.config.register_url or request.get(REACHED_AT) or reached_at(request)
        if url is None:
            raise HttpError(503, "the connection closed before its announce was answered")
        return url

    def _promoted(self, request: web.Request, doc: dict, user: str | None, cid: str) -> bool:
        """A reachable peer's announce, for the promoter; whether that peer is promoted (module policy/promotion.py)."""
        if self.promoter is None or not isinstance(doc.get("port"), int) or doc.get("relay") is True:
            return False
        key, url = _promotion_key(request, doc, user)
        promoted = self.promoter.observe(
            time.monotonic(), key, url, self.region_name(request), cid, doc.get("uploaded", 0), doc["event"] == "stopped"
        )
        self._log_demotions()
        return promoted

    def _log_demotions(self) -> None:
        """A line for each demotion the promoter made, with its reason: only those of peers that stopped announcing had
        one, and a peer demoted for a ``stopped``, a move or a restart left none (an adversarial session)."""
        assert self.promoter is not None
        for key, why in self.promoter.take_demoted():
            log.info("demoted %s: %s", key, why)

    def _subtracker(self, request: web.Request, doc: dict, user: str | None) -> str | None:
        """The promoted peer of its region a reachable, unpromoted peer sends its refreshes to (``tracker``); None: us."""
        if self.promoter is None or not isinstance(doc.get("port"), int) or doc["event"] == "stopped":
            return None
        key, url = _promotion_key(request, doc, user)
        return self.promoter.tracker_for(self.region_name(request), key, url)

    async def get_have(self, request: web.Request) -> web.Response:
        store = await self._store()
        cid = request.match_info["cid"]
        signed, _ = await self.content_for(request, cid, may_fetch=False)
        return have_response(cid, signed.manifest.piece_count, store.held(cid))

    async def get_key(self, _: web.Request) -> web.Response:
        return web.Response(body=public_pem((await self._store()).public_key), content_type="application/x-pem-file")

    async def get_status(self, request: web.Request) -> web.Response:
        if self.require_token and not self._trusted_client(request):
            await self.grant(request, "", required=True)  # it names users and contents: not for strangers
        store = self.store
        limit = 0 if brief_status(request) else status_limit(request)
        listed = store.listed(limit) if store is not None else {"content_count": 0, **({"contents": []} if limit != 0 else {})}
        return json_response(
            {
                **self.metrics.status(),
                "parent": self.parent,
                "siblings": [{"url": s, "rate_Bps": self.ranking.rate(s)} for s in self.siblings],
                "upload_limit_Bps": self.bucket.rate,  # --upload-limit (null: none): the dashboard's egress capacity
                "evicted_pieces": store.evicted_pieces if store else 0,
                **(store.write_problem() if store is not None else {}),
                **listed,
                **({"p2p": listed_p2p(await self._p2p_status(), limit), "announces": self._announce_load()} if self.tracker else {}),
                **({"bittorrent": await self._bt_status()} if self.bt_tracker else {}),
                **({"relay": self.relay.status()} if self.relay else {}),
                **({"promotion": self.promoter.status()} if self.promoter else {}),
            }
        )

    def _take_up_swarms(self, started: contextlib.AsyncExitStack) -> None:
        """A memory store's swarms as this edge left them when it last stopped, and written again as it stops
        (store/trackersnapshot.py); nothing for a shared store, or a worker whose announces another answers."""
        assert self.tracker is not None
        store, tracker = self.tracker.store, self.tracker
        if not isinstance(store, MemoryPeerStore) or self.forwards_tracker:
            return
        path = self.config.cache / trackersnapshot.FILE
        # a memory store's time is the tracker's clock (monotonic): the file's is the wall clock's
        trackersnapshot.load(store, path, tracker.clock(), time.time(), tracker.region_of)

        async def save() -> None:
            try:
                count = trackersnapshot.save(store, path, tracker.clock(), time.time())
            except OSError as exc:  # a full or read-only disk: the next start rebuilds from announces, as without it
                log.warning("tracker: cannot write %s (%s); the next start learns its swarms from announces", path, exc.strerror or exc)
            else:
                log.info("tracker: %d peer records written to %s for the next start", count, path)

        started.push_async_callback(save)

    async def _check_store(self) -> None:
        """At start-up: say where the swarms are kept, and warn (never stop) when a shared store is not there yet."""
        assert self.tracker is not None
        store = self.tracker.store
        ping = getattr(store, "ping", None)
        try:
            if ping is not None:
                await ping()
            log.info("tracker store: %s", store.describe())
            evicts, too_old = getattr(store, "evicts", None), getattr(store, "too_old", None)
            policy = version = None
            with contextlib.suppress(StoreUnavailable):  # a Redis that keeps INFO from its clients (managed ones may) says nothing
                policy = None if evicts is None else await evicts()
                version = None if too_old is None else await too_old()
            if version is not None:
                log.warning(
                    "tracker store %s runs Redis %s, which refuses every announce: edgeswarm needs 7.0 or later", store.describe(), version
                )
            if policy is not None:
                log.warning(
                    "tracker store %s evicts keys when full (maxmemory-policy %s): swarms would lose peers and the P2P-share "
                    "totals count bytes twice; set maxmemory-policy noeviction (full, it refuses writes: announces get 503)",
                    store.describe(),
                    policy,
                )
        except StoreUnavailable as exc:
            log.warning("%s; announces are answered 503 until it is reachable (files are served as ever)", exc)

    @web.middleware
    async def _fresh_p2p_metrics(self, request: web.Request, handler):
        """Before a /metrics scrape, the tracker's figures (a store read: the collector itself cannot wait for one)."""
        if request.path == "/metrics":
            self._p2p_last = await self._p2p_status()
        return await handler(request)

    def app(self) -> web.Application:
        app = make_app(self.metrics, self.cors)
        if self.tracker is not None:
            app.middlewares.append(self._fresh_p2p_metrics)
        r = app.router
        r.add_get("/origin-key", self.get_key)
        r.add_get("/status", self.get_status)
        dashboard.mount(app)
        r.add_get("/manifest/" + PATH, self.get_manifest)
        r.add_get("/content/{cid}", self.get_content)
        r.add_get("/piece/{cid}/{index}", self.get_piece)
        r.add_get("/have/{cid}", self.get_have)
        r.add_get("/key/{cid}", self.get_content_key)
        r.add_get("/swarm-key", self.get_swarm_key)
        r.add_post("/announce", self.post_announce)
        r.add_get("/announce", self.get_bt_announce)  # BitTorrent clients' announce (BEP 3); peers POST theirs
        r.add_get("/scrape", self.get_bt_scrape)  # BitTorrent clients' scrape (BEP 48)
        r.add_get("/torrent/" + PATH, self.get_torrent)
        r.add_get("/magnet/" + PATH, self.get_magnet)
        r.add_post("/seed/{cid}", self.post_seed)
        if self.preheat is not None:
            r.add_post("/preheat", self.preheat.post_preheat)
            r.add_get("/preheat", self.preheat.get_preheat)
            r.add_get("/preheat/orders", self.preheat.get_orders)
            desk = self.preheat
            app.on_shutdown.append(lambda _: desk.close())  # held polls answered now, not at the shutdown timeout
            app.cleanup_ctx.append(desk.following)
        r.add_get("/relay", self.get_relay)
        if self.relay is not None:
            relay = self.relay
            app.on_shutdown.append(lambda _: relay.close(stopping=True))  # relayed peers' WebSockets end now, not at the shutdown timeout
        r.add_get("/relay/{rid}/" + TAIL, self.get_relayed)
        r.add_get("/" + PATH, self.get_file)
        r.add_put("/" + PATH, self.put_file)

        async def lifecycle(app: web.Application):
            async with contextlib.AsyncExitStack() as started:  # closed in reverse, also when a later start-up step fails
                await self.upstream.start()
                started.push_async_callback(self.upstream.close)
                if self.ledger is not None:
                    await self.ledger.start()  # an unusable ledger stops start-up with its reason
                    started.push_async_callback(self.ledger.close)
                if self.tracker is not None:
                    started.push_async_callback(self.tracker.store.close)
                    self._take_up_swarms(started)
                opener = await self.pinned.start(self.upstream, [self.parent])  # a bad key file or cache stops start-up
                expiry = asyncio.create_task(self._expire_loop()) if self.tracker else None
                lag = asyncio.create_task(self.lag.watch()) if self.tracker else None
                unlinked = asyncio.create_task(self._unlinked_loop()) if self.pinned.worker is not None else None
                for task in (opener, expiry, lag, unlinked):
                    if task is not None:
                        started.callback(task.cancel)
                if self.tracker is not None and not self.forwards_tracker:
                    await self._check_store()
                yield

        app.cleanup_ctx.append(lifecycle)
        return app


def _promotion_key(request: web.Request, doc: dict, user: str | None) -> tuple[str, str]:
    """A checked announce's peer as the promoter knows it: (owner/peer id, upload URL)."""
    address = request.remote or ""
    return f"{owner_of(address, user)}/{doc['peer_id']}", peer_url(address, doc["port"])


def _client_address(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(request.remote or "")
    except ValueError:
        return None


def _bencoded(body: bytes) -> web.Response:
    """A BitTorrent tracker's answer (an announce's, a scrape's, a refusal): bencoded, never cached."""
    return web.Response(body=body, content_type="text/plain", headers={"Cache-Control": "no-cache"})


def _kept_bt_hashes(path: Path) -> dict[bytes, str]:
    """The announce hashes ``_keep_bt_hashes`` wrote, or none (no file yet; a damaged one is said and set aside)."""
    try:
        doc = json.loads(path.read_bytes())
        return {bytes.fromhex(h): cid for h, cid in doc.items() if len(h) == 40 and isinstance(cid, str)}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: cannot read it (%s); BitTorrent clients of earlier torrents get them again first", path, exc)
        return {}


def _region_label(region: Region) -> str:
    return region if region is not None else "unmapped"


REACHED_AT = "edgeswarm.reached_at"  # a request's key: reached_at() of a request another worker passed on (edgeworkers)


def reached_at(request: web.Request) -> str | None:
    """This edge's URL as the request's connection reached it (its local address and port), None when it is gone."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not isinstance(sockname, tuple):
        return None
    host, port = sockname[0], sockname[1]
    return f"{request.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def brief_status(request: web.Request) -> bool:
    """``GET /status?brief=1``: the figures without the per-content lists, what a router polls (an edge with 25 000
    contents in cache sent it more than its 4 MiB cap for one poll, and stayed out of rotation)."""
    return request.query.get("brief", "0") not in ("", "0")


PER_CONTENT = ("swarms", "live_copies", "copies")  # the tracker's per-region rows that list contents


def listed_p2p(p2p: dict, limit: int | None) -> dict:
    """The tracker's part of /status, each per-content list (and the token users) cut to its ``limit`` largest (none
    when brief, 0; all when None), each region saying how many swarms it has (``swarm_count``) and the whole how many
    users (``user_count``), whatever the lists show."""
    regions = {}
    for name, row in p2p.get("regions", {}).items():
        regions[name] = {k: v for k, v in row.items() if k not in PER_CONTENT} | {"swarm_count": len(row.get("swarms", {}))}
        for key in PER_CONTENT if limit != 0 else ():
            regions[name][key] = _largest(row.get(key, {}), limit)
    users = p2p.get("users", {})
    out = {**p2p, "regions": regions, "user_count": len(users)}
    if limit == 0:
        out.pop("users", None)
    else:
        out["users"] = _largest(users, limit)
    return out


def _largest(rows: dict, limit: int | None) -> dict:
    """The ``limit`` rows of largest value (every one when None), in key order."""
    kept = rows if limit is None or len(rows) <= limit else heapq.nlargest(limit, rows, key=rows.__getitem__)
    return {k: rows[k] for k in sorted(kept)}


RECORD_BYTES = 4096  # a tracker record with its claims and report state: 3 KB measured, 4.6 KB under a flood of stats


def default_records() -> int:
    """``Limits.records``, or fewer where a quarter of this machine's memory would not hold them (``RECORD_BYTES`` each)."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return Limits.records
    return max(1, min(Limits.records, memory // 4 // RECORD_BYTES))


def _tracker(config: EdgeConfig) -> TrackerService:
    """p2p mode's tracker, with the region map, locality, limits and swarm store the config names."""
    regions = load_region_map(config.regions) if config.regions else None
    records = config.max_peer_records or default_records()
    limits = Limits(config.max_peer_ids, config.max_peer_ids, config.announce_rate, 10 * config.announce_rate, records=records)
    store = open_store(config.tracker_store, 3 * config.announce_interval)  # ValueError for a bad URL: a message and exit 2
    return TrackerService(regions, config.locality, config.announce_interval, limits, config.max_peer_rate, store)


async def run(
    edge: Edge,
    listen: tuple[str, int],
    access_log: bool,
    ssl_context=None,
    limits: ServerLimits | None = None,
    registration: Registration | None = None,
) -> None:
    app = edge.app()
    on_bound = None
    if registration is not None:  # --register-with: the routers learn this edge once it listens, and when it leaves
        registration.attach(app)
        scheme = "https" if ssl_context is not None else "http"

        def on_bound(_: str, host: str, port: int) -> None:
            registration.on_bound(scheme, host, port)

    drain = registration.drain if registration is not None else None
    await serve_many([(app, *listen, "")], "edge", access_log, on_bound, ssl_context, limits, drain=drain)
