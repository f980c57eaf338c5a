"""The user's daemon: a local gateway for players, an upload server for other peers.

p2pd's client mode.  The gateway serves the CDN namespace with the edge's
HTTP semantics, fetching pieces from the swarm as the player reads; the upload
server hands held pieces to other peers under a choker and a rate cap.  Peers
announce what they hold to their edges (the regional trackers) and get back
whom to trade with.  Pieces live in the same verified piece store as an
edge's, so a restarted download fetches only what is missing.

An announce carries the upload *port* only: the edge builds the peer's URL
from the address it sees the announce come from, so no peer can advertise
somebody else's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multidict import CIMultiDictProxy
from prometheus_client.core import GaugeMetricFamily

from edgeswarm.errors import HttpError
from edgeswarm.node import sleepwatch
from edgeswarm.node.collapse import Collapser
from edgeswarm.node.daemon import PRIVATE, ServerLimits, make_app, serve_many
from edgeswarm.node.logthrottle import Throttle, ThrottledLog
from edgeswarm.node.manifestfetch import ManifestFetcher
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.pinnedstore import PinnedStore
from edgeswarm.node.routerclient import RouterFollower
from edgeswarm.node.serving import LOOKAHEAD, send_piece, serve_file
from edgeswarm.node.upstream import (
    HEDGE_AFTER,
    MAX_ANNOUNCE,
    MAX_ANSWER,
    Hopeless,
    OutOfDescriptorsHere,
    Reply,
    Upstream,
    UpstreamError,
    client_error_text,
    first_answer,
    node_url,
    read_bounded,
    said_in,
    says_busy,
    source_address,
    source_family,
)
from edgeswarm.policy import bitfield, uploadgate
from edgeswarm.policy.choker import Choker, requester
from edgeswarm.policy.edgeclocks import EdgeClocks
from edgeswarm.policy.engine import LONELY_ASK_S
from edgeswarm.policy.live import is_playlist
from edgeswarm.policy.ratelimit import TokenBucket
from edgeswarm.policy.regions import url_host
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.policy.subtracking import AnnounceRoute
from edgeswarm.policy.tracker import ANNOUNCE_INTERVAL, address_group, peer_url, peer_url_problem
from edgeswarm.policy.vocabulary import SOURCE_KINDS, STAT_KEYS, peer_bytes, reported_share
from edgeswarm.protocol import havefeed, jsondoc
from edgeswarm.protocol.cors import NOSNIFF, SANDBOX, gateway_host, sandboxed
from edgeswarm.protocol.havefeed import QUANTILES, HaveEvent, HaveFeed, LatencyStats
from edgeswarm.protocol.httpspec import PEER_HEADER, PIECE_HEADER, URGENCY_HEADER, retry_after
from edgeswarm.protocol.manifest import Manifest, SignedManifest
from edgeswarm.protocol.paths import PATH, TAIL, file_request_path
from edgeswarm.protocol.units import ascii_decimal
from edgeswarm.protocol.wire import have_response, json_response, piece_index, status_limit
from edgeswarm.roles import livegateway
from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.relay import RelayClient, RelayHub, RelayLimits, relayed_middleware
from edgeswarm.roles.subtracker import SubTracker
from edgeswarm.roles.swarm import Choked, NotHeld, SeedUnsupported, StreamAbused, StreamUnsupported, Swarm, Withdrawn
from edgeswarm.roles.volunteer import Volunteer
from edgeswarm.store.piecestore import PieceStore, make_cache
from edgeswarm.trust import tls
from edgeswarm.trust.protect import cipher_for
from edgeswarm.trust.signing import KeyFileError, load_public_key
from edgeswarm.wholefile import write_whole

if TYPE_CHECKING:
    from edgeswarm.trust import tokens

log = logging.getLogger("edgeswarm.roles.peer")
REVALIDATE = 5.0  # seconds a manifest is trusted before asking an edge again
GATEWAY_CONNECTIONS = 1 / 8  # of the connection cap, kept for the gateway (at least 4); it may use the rest too
VOUCH_WITHIN = 0.2  # seconds within which a strict edge is asked to name a new subscriber (a crowd's arrive together)
VOUCH_GAP = 2.0  # seconds between two such rounds for one content: subscriptions made and dropped 10 a second made a peer
# announce 5 times a second, and four behind one address went over the edge's announce rate (an adversarial session)
FIRST_RETRY = 1.0  # seconds before a failed announce is tried again; doubling, up to the interval
MIN_INTERVAL, MAX_INTERVAL = 1.0, 3600.0  # an edge's announce interval, as this peer keeps it (_interval)
REFUSAL_CHECK_S = 0.5  # seconds between two looks, while a read waits for a piece, at whether every edge refuses our token
# what fixes an edge's refusal of this peer's token: the gateway sends its own token only, never one its player sends
# (docs/security.md), so the edge's "send Authorization: Bearer TOKEN" is no help to a player (an adversarial session)
TOKEN_REFUSED = "this peer's token is refused; renew it and restart the peer"
NO_TOKEN = "this peer has no token: give it one with --token or --token-file"
# at most this many announce rounds to one tracker within this many seconds, news or not: a live viewer's parts (a new
# content, then its completion, every 0.5-1 s) need 4 a second; a review saw 4 in 2 s hold their announces 1.5 s
NEWS_BURST, NEWS_WINDOW = 6, 1.0
BATCH = 50  # contents per announce request: an answer of 50 contents x 30 peers stays within a few hundred KB
STOP_WAIT = 2.0  # seconds a stopping peer lets an announce in flight finish before it says "stopped"
LEAVE_WAIT = 2.0  # seconds the "stopped" to the edges a router replaced may take before the new edges hear from us
RETIRE_IDLE = 120.0  # seconds a swarm with nothing to do is kept before it is closed (Peer.retire_idle)
BANS_KEPT = 1024  # contents whose banned addresses outlive their retired swarm (Peer.retire), the oldest forgotten first
REFUSED_QUIET = 60.0  # seconds a content an edge refused (a 4xx) is left out of its rounds, doubled by each refusal in a row
REFUSED_QUIET_MAX = 3600.0  # ... up to this: a version withdrawn for good (a live segment, a file changed) is asked about hourly
MAX_STREAMS = 1024  # HAVE subscriptions open at once, over all contents
Asked = tuple[float, float, float]  # an announce: monotonic when sent, when answered, and the wall clock then
FORMER_KEY_S = 900.0  # seconds an edge's replaced swarm key still checks tickets: three default announce intervals
EDGE_SLACK = 2.0  # seconds an edge's answer (a piece, a manifest) gets over our timeout: its own fetch upstream has the same 10 s (its
# --timeout), and its 504 naming a hung origin came in the millisecond our timeout fired: the edge was set aside and
# said unreachable for the origin's hang (an adversarial session)
PEER_HEAD_TIMEOUT = 5.0  # seconds for a neighbour to start answering a piece request: its head goes at once even
# when the body waits its turn under an upload cap (serving.send_piece); one that holds it is a stall, dropped at once
MAX_RELAYED_PIECE = 16 * 1024 * 1024  # a piece a promoted peer relays for a content it does not hold: the largest of files to 32 GiB


class AnnounceSchedule:
    """When to announce to each tracker: every interval, sooner for news, and soon again after a failure.

    Sans-IO (time is passed in).  A round carries every content once an
    interval (``full``); a round hurried in between (a new content, one
    completed) carries only the news, so a peer that gains a live stream's
    parts every half second costs its edge O(what changed), not its whole
    cache at every part.  An announce that fails is tried again after
    1 s, 2 s, 4 s... capped at the interval, so a restarted tracker has its
    peers back a few seconds after it, not an interval after.  A peer that
    meets its edge down on another request (a piece, a manifest) checks the
    tracker within ``FIRST_RETRY`` too, instead of at its next announce.
    News hurries a round at most ``NEWS_BURST`` times in ``NEWS_WINDOW``
    seconds: a user opening 420 small files in a row hurried a round for
    each, over the edge's 20 announces a second, and was refused (429) for
    seconds at a time (an adversarial session); the rounds that wait carry
    all the news of their wait, batched.  Six a second leave room under the
    edge's 20 for three such peers behind one address.
    """

    def __init__(self, interval: float):
        self.interval = interval  # the newest any tracker gave: what the peer's other work paces itself on
        self._intervals: dict[str, float] = {}  # tracker -> the interval it gave; absent: ``interval``
        self._next: dict[str, float] = {}  # tracker -> when it is due; absent: now
        self._failures: dict[str, int] = {}  # tracker -> announces failed in a row
        self._hurried: dict[str, float] = {}  # tracker -> when it was last hurried
        self._last_full: dict[str, float] = {}  # tracker -> when its last round carrying every content was answered; absent: never
        self._held: dict[str, float] = {}  # tracker -> no announce before this (its 429's Retry-After), news or not
        self._began: dict[str, deque[float]] = {}  # tracker -> when its last NEWS_BURST rounds began
        # tracker -> its last full round's answer (None: never) before a full one went on to its sub-tracker (elsewhere)
        self._full_out: dict[str, float | None] = {}

    def given(self, tracker: str, interval: float) -> None:
        """The tracker's answer gave this interval: its own rounds follow it, not another tracker's (an edge answering
        an hour stopped a peer's announces to every edge: an adversarial session)."""
        self._intervals[tracker] = self.interval = interval

    def interval_of(self, tracker: str) -> float:
        return self._intervals.get(tracker, self.interval)

    def full(self, tracker: str, now: float) -> bool:
        """Whether a round begun at ``now`` carries every content (an interval since the last full one), or only news."""
        last = self._last_full.get(tracker)
        return last is None or last + self.interval_of(tracker) <= now

    def due(self, trackers: list[str], now: float) -> list[str]:
        return [t for t in trackers if self._next.get(t, now) <= now]

    def wait(self, trackers: list[str], now: float) -> float:
        """Seconds until the next tracker is due (a whole interval without trackers)."""
        return max(0.0, min((self._next.get(t, now) for t in trackers), default=now + self.interval) - now)

    def succeeded(self, tracker: str, now: float, started: float | None = None, full: bool = True) -> int:
        """The tracker answered the announce begun at ``started``: next announce in an interval, unless it was
        hurried meanwhile.  Returns how many announces had failed before.

        A hurry while an announce is in flight is for something the announce
        did not carry: `edgeswarm get` creates its content's swarm while its
        first announce, made before it knew the content, is on its way.  That
        hurry was overwritten by the interval, so the content went unannounced
        for 300 s: no peer learned of the downloader, which took the whole file
        from the edge (`bench swarm --mode get`: one to five of 20 peers at
        0 % from peers in most runs).
        """
        if full:
            self._last_full[tracker] = now
            self._full_out.pop(tracker, None)
        if started is None or self._hurried.get(tracker, -math.inf) < started:
            self._next[tracker] = self._last_full.get(tracker, now) + self.interval_of(tracker)  # as an answer just gave it, too
        return self._failures.pop(tracker, 0)

    def elsewhere(self, tracker: str, now: float, started: float, full: bool) -> None:
        """The round begun at ``started`` goes on at the sub-tracker this tracker named, which the announce loop does not
        wait for: until it is answered it counts as answered now, so that the rounds hurried meanwhile (news, to the
        tracker) carry news only, and the next full one comes an interval on (unless hurried since); should the round
        fail there and at the tracker (``failed``), as never answered.  Its answer reschedules as ever."""
        if full:
            self._full_out.setdefault(tracker, self._last_full.get(tracker))
            self._last_full[tracker] = now
        if self._hurried.get(tracker, -math.inf) < started:
            self._next[tracker] = self._last_full.get(tracker, now) + self.interval_of(tracker)

    def failed(self, tracker: str, now: float) -> float:
        """The tracker did not answer: returns the seconds until the next try, which a refusal's hold (``refused``: a
        503's Retry-After, a full tracker's) makes no sooner: the back-off's 1 s, 2 s... overrode it (an adversarial
        session: a full tracker saying Retry-After 5 was asked again after 2 s and 4 s)."""
        if tracker in self._full_out:  # a full round counted as answered (elsewhere): the next try carries every content
            before = self._full_out.pop(tracker)
            if before is None:
                self._last_full.pop(tracker, None)
            else:
                self._last_full[tracker] = before
        failures = self._failures[tracker] = self._failures.get(tracker, 0) + 1
        delay = max(min(self.interval_of(tracker), FIRST_RETRY * 2 ** (failures - 1)), self._held.get(tracker, now) - now)
        self._next[tracker] = now + delay
        return delay

    def began(self, tracker: str, now: float) -> None:
        """A round to this tracker begins now."""
        self._began.setdefault(tracker, deque(maxlen=NEWS_BURST)).append(now)

    def hurry(self, tracker: str, now: float, within: float = 0.0) -> None:
        """Announce to this tracker no later than ``within`` seconds from now, or when ``NEWS_BURST`` rounds allow (or
        when a refusal's wait ends); a round due sooner stays due."""
        began = self._began.get(tracker)
        allowed = began[0] + NEWS_WINDOW if began is not None and len(began) == NEWS_BURST else -math.inf
        soon = min(self._next.get(tracker, now), max(now + within, allowed))
        self._next[tracker] = max(soon, self._held.get(tracker, -math.inf))
        self._hurried[tracker] = now

    def refused(self, tracker: str, now: float, wait: float) -> None:
        """The tracker said 429 (over its rate or its ids per address): nothing before ``wait`` seconds (an interval at
        most), whatever news comes.  Each new content hurried a round at once, 4 refusals a second for minutes."""
        self._held[tracker] = now + min(max(wait, FIRST_RETRY), self.interval_of(tracker))
        self._next[tracker] = max(self._next.get(tracker, now), self._held[tracker])

    def woke(self, now: float) -> None:
        """The machine slept (node/sleepwatch.py): every tracker now (or when its 429's hold ends), with every content,
        as after a start; the trackers have forgotten this peer meanwhile, and its tickets expired.  A hurry, so that a
        round in flight, answered after this, does not put the next one an interval away (a review)."""
        for tracker in {*self._next, *self._last_full, *self._hurried}:
            self._next[tracker] = max(now, self._held.get(tracker, -math.inf))
            self._hurried[tracker] = now
        self._last_full.clear()
        self._full_out.clear()

    def forgotten(self, tracker: str, now: float) -> None:
        """The tracker may have forgotten this peer: a round now, with every content (a hurried round carries only news,
        and after an edge's restart nothing was news: its relayed peers were handed out an interval later)."""
        self.hurry(tracker, now)
        self._last_full.pop(tracker, None)

    def unreachable(self, tracker: str, now: float) -> None:
        """Another request to this edge failed: check its tracker soon, unless it is being retried already."""
        if tracker not in self._failures:
            self.hurry(tracker, now, FIRST_RETRY)
            self._last_full.pop(tracker, None)  # a round of news only, maybe of nothing, would ask it nothing


def _error_said(error: object) -> str:
    """A batch item's ``{"error": {"status", "message"}}`` as a log line says it: "403 why", not the dict."""
    if not isinstance(error, dict):
        return str(error)[:200]
    return f"{error.get('status')} {str(error.get('message'))[:200]}"


EVICTED_TRIES = 3  # fetches of a piece evicted between the look that found it held and its read, before a 503


def _say_over_quota(store: PieceStore, path: str) -> None:
    """Warn when what ``--seed`` pins is more than ``--max-cache``: it is held whole all the same, over the quota for
    as long as it is seeded, and nothing said so (an adversarial session; --accept-preheat's room is checked at start,
    but a seed's size is known only once its manifest is)."""
    quota = store.capacity
    held = sum(m.manifest.size for cid in store.pinned if (m := store.manifest(cid)) is not None)
    if quota is not None and held > quota:
        log.warning(
            "seed %s: the files --seed holds (%s bytes in all) are more than --max-cache (%s bytes): they are kept whole, "
            "over the quota, while seeded",
            path,
            f"{held:,}",
            f"{quota:,}",
        )


class SwarmSource:
    """What the gateway reads: the store, else the swarm (with a deadline, never a hang)."""

    def __init__(self, peer: Peer, swarm: Swarm):
        self.peer, self.swarm = peer, swarm
        self._fetching = 0  # this read's fetches under way (its piece and those ahead of it)
        # a quarter of the swarm's read-ahead window (16 pieces: LOOKAHEAD), none under a small --max-cache: pieces
        # fetched ahead were evicted before their turn and fetched again (1.5 x a file read through a 2 MB cache)
        self._ahead = min(LOOKAHEAD, swarm.engine.window // 4)

    def ahead(self, piece_size: int) -> int:
        return self.peer.pinned.opened.read_ahead(self._ahead, piece_size)

    def local(self, index: int) -> int | None:
        self.swarm.touch()  # a read served from the store still uses the swarm: not retired under it
        return self.peer.pinned.opened.piece_fd(self.swarm.cid, index)

    def held(self, index: int) -> bool:
        return self.peer.pinned.opened.has(self.swarm.cid, index)

    async def fetch(self, index: int, stop: int | None = None) -> bytes:
        if self.swarm.retired:  # idle long enough between two pieces of this read (a paused player): a fresh one
            self.swarm = self.peer.swarm(self.swarm.signed)
        self._fetching += 1
        if self._fetching == 1:
            self.swarm.read_waits(True)
        try:
            for _ in range(EVICTED_TRIES):  # held when asked, evicted before read: a small cache under pieces coming at once
                got = await self._piece(index, stop)
                data = got if got is not None else self.peer.pinned.opened.read_piece(self.swarm.cid, index)
                if data is not None:
                    return data
        finally:
            self._fetching -= 1
            if not self._fetching:
                self.swarm.read_waits(False)
        raise HttpError(503, f"piece {index} was evicted before it could be sent; retry", {"Retry-After": "1"})

    async def _piece(self, index: int, stop: int | None) -> bytes | None:
        """The swarm's piece within --read-timeout; sooner a 403 once every edge refuses this peer's token.

        No retry changes that: a player whose peer's token expired mid-film
        waited out every read timeout, and its new requests too, while the
        peer asked the edges once a second (an adversarial session).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.peer.read_timeout
        task = asyncio.ensure_future(self.swarm.piece(index, stop))
        try:
            while not task.done():
                refusal = self.peer.token_refused()
                if refusal is not None:  # a 403, as for a manifest or a key (ManifestFetcher): it was a 502 here alone
                    raise HttpError(403, f"{refusal}: {self.peer.token_help()}")
                if loop.time() >= deadline:
                    raise self._undelivered(index)
                await asyncio.wait({task}, timeout=min(REFUSAL_CHECK_S, deadline - loop.time()))
            return task.result()
        finally:
            task.cancel()  # a no-op once done

    def _undelivered(self, index: int) -> HttpError:
        """No piece within --read-timeout: 504 if nothing answered in time, 502 saying so if the last try got a wrong
        answer (corrupt bytes, a 500): an operator reads which source failed, a player's user that it was not slowness."""
        status, why = self.swarm.failure(index) or (504, "")  # nothing said, or a request still under way: slowness
        said = f"no edge or peer delivered piece {index} within {self.peer.read_timeout:g} s"
        return HttpError(status, f"{said}; the last try: {why}" if why else said)


class Peer:
    def __init__(self, config: PeerConfig):
        self.config = config
        cache, bind = config.cache, config.bind
        self.cache = cache
        self.cors = config.cors  # who may read the gateway's answers from another origin (--cors-origin)
        self.edges = [e.rstrip("/") for e in config.edges]
        # --router: the edges come from it, and follow it; a client set up for HTTPS takes none in the clear from it
        https = config.ca is not None or any(u.startswith("https://") for u in (config.router or "", *self.edges))
        self.router = RouterFollower(config.router, https_only=https) if config.router else None
        self.origin_key = config.origin_key
        self.max_cache = config.max_cache
        self.read_timeout = config.read_timeout
        self.deadline = 2.0
        make_cache(cache)  # an unusable cache stops the peer here, with its reason
        self.peer_id = _peer_id(cache / "peer_id")
        source = source_address(bind, [*self.edges, config.router])
        self.upstream = Upstream(config.timeout, ssl=tls.client_context(config.ca), bind=source, family=source_family(bind))
        self.token = config.token  # managed mode: sent to edges only; other peers see tickets, never the token
        self.tickets: dict[str, str] = {}  # cid -> the newest swarm ticket an edge gave us
        # (edge, cid) -> that edge's newest ticket: a sub-tracker takes its own edge's only (a peer of two edges showed it
        # the other's, refused 401 at every round: an adversarial soak)
        self._edge_tickets: dict[tuple[str, str], str] = {}
        self._key_fetches: Collapser[bytes] = Collapser()
        self.ticket_keys: dict[str, Ed25519PublicKey] = {}  # edge -> its swarm-ticket public key
        self._former_ticket_keys: dict[str, tuple[Ed25519PublicKey, float]] = {}  # edge -> the key its current one replaced, until when
        self._keys_checked = 0.0  # when ticket keys were last fetched
        self._keys_task: asyncio.Task | None = None  # missing ticket keys being fetched (_fetch_missing_keys)
        self.volunteer: Volunteer | None = None  # --accept-preheat: its orders' polls, run once the peer starts
        self._no_key_said: set[str] = set()  # edges whose missing swarm-ticket key was said, until it comes
        self.edge_clocks = EdgeClocks()  # each edge's clock, read off its tickets to us: its tickets are judged by it
        self._clock_log = ThrottledLog(log, Throttle(burst=1, interval=60.0))  # neighbours' tickets refused for their times
        self.content_keys: dict[str, bytes] = {}  # protected contents' keys, in memory only
        self.from_edge: dict[str, Counter[str]] = {}  # cid -> edge -> bytes, for each edge's ledger
        self.refused: dict[str, str] = {}  # edge -> its last 401/403 for a piece, in its words (get gives up on it)
        self._booked: dict[str, Counter[tuple[str, str]]] = {}  # cid -> (edge or "", usage kind) -> bytes an edge acknowledged
        self._stats_taken: dict[str, dict[str, int]] = {}  # cid -> the highest "stats" an edge acknowledged (_item's stats_base)
        self.ranking = SourceRanking()
        self.choker = Choker(slots=config.upload_slots)
        self.gate = uploadgate.UploadGate(config.upload_slots)  # pieces in flight: per requester, per address, overall
        self.bucket = TokenBucket(config.upload_limit)
        self.upload_line = asyncio.Lock()  # under --upload-limit, background pieces' bodies one at a time (serving.in_line)
        self.down_bucket = TokenBucket(config.download_limit)  # the access link's downstream, for the lab
        self.metrics = Metrics("peer")
        self.manifests = ManifestFetcher(
            self.upstream,
            self.metrics,
            self.ranking,
            REVALIDATE,
            "edge",
            user_credential=True,
            on_failure=self._edge_unreachable,
            timeout=self.upstream.timeout + EDGE_SLACK,
        )
        self.pinned = PinnedStore(cache, config.origin_key, config.max_cache, "peer is still learning the origin key from its edges")
        self.pinned.on_drop = self.metrics.forget_content
        self.pinned.keep_paths = frozenset(path.lstrip("/") for path in config.seeds)
        self.pinned.count_write_failures(self.metrics)
        self.swarms: dict[str, Swarm] = {}
        self._closing: set[asyncio.Task] = set()  # swarms of a withdrawn version being closed (swarm())
        self._bans: dict[str, set[str]] = {}  # cid -> the addresses its retired swarm had banned, for its next swarm
        self.live = livegateway.LiveFollower(self)  # live playlists: their newest segments fetched ahead
        self.received: dict[str, Counter[str]] = {}  # cid -> bytes by source kind
        self.uploaded: Counter[str] = Counter()  # cid -> bytes sent to peers
        self._received_before: Counter[str] = Counter()  # bytes by source kind of contents since forgotten (_forget)
        self._uploaded_before = 0  # bytes sent to peers of contents since forgotten
        self.region: str | None = None
        # the edge's answers say --locality strict: a subscriber counts once a tracker answer names it (None: no answer yet, the same)
        self.strict: bool | None = None
        self._vouch: set[str] = set()  # contents with subscribers no answer named yet: news for the next round (_met_subscriber)
        self._vouch_at: dict[str, float] = {}  # content -> when the last round asked for its subscribers was due
        self._lonely_at: dict[str, float] = {}  # content -> when the last round asked for a lonely download's peers was due
        self.upload_port = 0
        self.schedule = AnnounceSchedule(ANNOUNCE_INTERVAL)
        self._clocks = sleepwatch.SleepWatch(time.time(), time.monotonic())
        self.havefeed = HaveFeed()  # our subscribers, told of every piece we store
        self.have_latency = LatencyStats()  # how late neighbours' HAVE lines reach us
        self.quiet = ThrottledLog(log, Throttle(burst=3, interval=60.0))  # what hostile neighbours could make us log often
        self.streams: aiohttp.ClientSession | None = None  # our subscriptions to neighbours' HAVE streams
        self._p2p_edges = set(self.edges)
        self._announced: dict[str, set[str]] = {}  # cid -> the edges that had its "started" and not yet its "stopped"
        self._refusals: dict[str, str] = {}  # edge -> why it refused our last announce (a 4xx: a limit), for /status
        # (edge, cid) it refused (a 4xx) -> (when, for how long it is left out of that edge's rounds: _refused_now)
        self._refused_items: dict[tuple[str, str], tuple[float, float]] = {}
        self._leaving: set[str] = set()  # edges the router replaced, to hear "stopped" before the next round (use_edges)
        self._piece_counts: dict[str, int] = {}  # cid -> its piece count, for a "stopped" after its manifest went
        self._single: set[str] = set()  # edges that take one content per announce (from before batches)
        self._completed: set[str] = set()
        self._wake_announcer = asyncio.Event()  # the schedule changed
        self._round: asyncio.Task | None = None  # the announces in flight (announce_loop's), which stop() lets finish
        self._at_subtrackers: set[asyncio.Task] = set()  # rounds at sub-trackers, which nothing waits for but stop()
        self.bound = asyncio.Event()  # the upload server has its port
        self.relay = RelayClient(self) if config.unreachable else None  # --unreachable: neighbours reach us through our edges
        self.hosting: RelayHub | None = None  # promoted by an edge: we relay for our region's unreachable peers
        self._promoted_by: dict[str, bool] = {}  # edge -> whether its last answer promoted us
        self.subtracker = SubTracker(  # promoted by an edge: POST /announce here for part of its region (roles/subtracker.py)
            lambda raw, cid, peer_id: self.verify_ticket(raw, cid, peer_id, self._promoting_edges()),
            self._subtracker_manifest,
            lambda cid: self.store.held(cid) if self.store is not None and self.store.manifest(cid) else None,
            self.peer_id,
        )
        self.metrics.registry.register(self.subtracker)
        self.route = AnnounceRoute()  # which rounds of announces go to the sub-tracker an edge named (policy/subtracking.py)
        self.metrics.gauge("upload_limit_bytes_per_second", "Upload cap, --upload-limit (0: none)", lambda: config.upload_limit or 0)
        self.metrics.gauge(
            "download_limit_bytes_per_second", "Download cap, --download-limit (0: none)", lambda: config.download_limit or 0
        )
        self.metrics.families(self._latency_metrics)
        self.metrics.gauge("have_subscribers", "Neighbours subscribed to our HAVE streams", lambda: self.havefeed.count())

    def _latency_metrics(self) -> list[GaugeMetricFamily]:
        """Availability latency by quantile, as the edge shows its regions' (none before the first sample)."""
        family = GaugeMetricFamily(
            "edgeswarm_have_latency_seconds",
            "Availability latency: when a neighbour's HAVE line arrived less when it stored the piece (median p50, p95)",
            labels=["quantile"],
        )
        for q, value in (self.have_latency.percentiles() or {}).items():
            family.add_metric([QUANTILES[q]], value)
        return [family]

    # -- start-up ----------------------------------------------------------------------
    @property
    def store(self) -> PieceStore | None:
        """The piece store, None until the origin key is pinned."""
        return self.pinned.store

    async def _store(self) -> PieceStore:
        """The piece store; requests that arrive before the origin key is known wait for it a while."""
        return await self.pinned.wait(self.upstream.timeout)

    # -- credentials -------------------------------------------------------------------
    def edge_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def peer_headers(self, cid: str) -> dict[str, str]:
        ticket = self.tickets.get(cid)
        return {"Authorization": f"Bearer {ticket}"} if ticket else {}

    async def learn_ticket_keys(self, again: bool = False) -> None:
        """Each edge's swarm-ticket key: in managed mode, the only tickets this peer's upload server accepts.

        ``again`` re-fetches known keys too (an edge's key changes when its
        cache is rebuilt), at most once every 10 s.  The key a new one
        replaces is kept beside it for ``FORMER_KEY_S``: the tickets it signed
        stay valid that long (a peer that learned the new key refused a
        neighbour's valid ticket every 2 s until the neighbour's next announce,
        up to 300 s: an adversarial session), and no longer (a stolen key is
        what a rebuild retires: kept for good, it signed tickets peers took
        for good, a review).
        """
        if again and time.monotonic() - self._keys_checked < 10:
            return
        self._keys_checked = time.monotonic()
        # all at once: one after another, an edge that was down held the announce loop (and a neighbour's piece request
        # waiting on a new key) up to 5 s per edge at every round
        await asyncio.gather(*(self._learn_ticket_key(edge) for edge in self.edges if again or edge not in self.ticket_keys))

    async def _learn_ticket_key(self, edge: str) -> None:
        """``edge``'s swarm-ticket key, the one it replaces kept (``learn_ticket_keys``); a failure said once an outage."""
        try:
            reply = await self.upstream.get(edge, "/swarm-key", timeout=5.0)
            if reply.status == 200:
                key, held = load_public_key(reply.body, f"{edge}/swarm-key"), self.ticket_keys.get(edge)
                if held is not None and held.public_bytes_raw() != key.public_bytes_raw():
                    self._former_ticket_keys[edge] = (held, time.monotonic() + FORMER_KEY_S)
                self.ticket_keys[edge] = key
                self._no_key_said.discard(edge)
        except (UpstreamError, KeyFileError) as exc:
            if edge not in self._no_key_said:  # asked again at every announce round while it is down: said once
                self._no_key_said.add(edge)
                log.info("no swarm-ticket key from %s yet: %s", edge, exc)

    async def check_ticket(self, request: web.Request, cid: str) -> float | None:
        """Managed mode: a requester must show a ticket from one of our edges, for this content and for itself (else
        401/403); returns when the ticket expires, by this machine's clock (None: open mode, no ticket)."""
        if not self.token:
            return None
        from edgeswarm.trust import access, tokens  # here: PyJWT costs an open-mode peer's (and get's) start-up ~25 ms of CPU

        try:
            ticket = await self.verify_ticket(tokens.from_request(request.headers, request.query), cid, request.headers.get(PEER_HEADER))
            return ticket.expires  # by this machine's clock
        except tokens.TokenError as exc:
            self.metrics.events[("refused_ticket", "")] += 1
            raise access.denied(exc) from None

    async def verify_ticket(self, raw: str | None, cid: str, peer_id: str | None, edges: list[str] | None = None) -> tokens.Ticket:
        """A swarm ticket signed by one of ``edges`` (default: all of ours), for ``cid`` and ``peer_id``: else TokenError 401/403.

        A ticket signed by no known key makes us fetch our edges' keys again
        first (at most every 10 s): an edge's key changes when its cache is rebuilt.
        Its times are judged by the clock of the edge that signed it, and its
        ``expires`` given back by this machine's clock (_signed_ticket).
        """
        from edgeswarm.trust import tokens  # here: PyJWT costs an open-mode peer's (and get's) start-up ~25 ms of CPU

        if raw is None:
            raise tokens.TokenError(401, "a swarm ticket is required: announce to an edge of this swarm to get one")
        try:
            edge, ticket = self._signed_ticket(raw, cid, edges)
        except tokens.TokenError as exc:
            if exc.status != 401 or "not signed" not in exc.message:
                raise
            await self.learn_ticket_keys(again=True)  # perhaps an edge has a new key
            edge, ticket = self._signed_ticket(raw, cid, edges)
        if ticket.peer_id != peer_id:
            raise tokens.TokenError(403, f"this ticket is peer {ticket.peer_id[:64]}'s, not yours")
        ahead = self.edge_clocks.ahead(edge, time.monotonic(), time.time()) or 0.0
        return dataclasses.replace(ticket, expires=ticket.expires - ahead)  # a HAVE stream ends by our clock (havefeed.serve)

    def _signed_ticket(self, raw: str, cid: str, edges: list[str] | None) -> tuple[str, tokens.Ticket]:
        """The ticket and the edge whose key (current or former) signed it, its times judged by that edge's clock as
        read off the edge's tickets to us (policy/edgeclocks.py).  Judged by ours, a peer whose clock ran more than the
        5 s leeway slow refused every neighbour's ticket as not valid yet, and uploaded nothing, silently (an
        adversarial session); such a refusal is now said in the log (_out_of_date)."""
        from edgeswarm.trust import tokens

        mono, wall = time.monotonic(), time.time()
        former = [(e, k) for e, (k, until) in self._former_ticket_keys.items() if mono < until]
        unsigned = None
        for edge, key in [(e, k) for e, k in [*self.ticket_keys.items(), *former] if edges is None or e in edges]:
            try:
                return edge, tokens.verify_ticket(raw, [key], cid, now=self.edge_clocks.now(edge, mono, wall))
            except tokens.OutOfDateError as exc:
                self._out_of_date(edge, exc)
                raise
            except tokens.TokenError as exc:
                if exc.status != 401 or "not signed" not in exc.message:
                    raise
                unsigned = exc  # "not signed by any of this peer's edges": true of them all once the loop ends
        if unsigned is not None:
            raise unsigned
        return "", tokens.verify_ticket(raw, [], cid)  # raises: why the ticket is malformed, or that we have no key yet

    def _out_of_date(self, edge: str, exc: tokens.OutOfDateError) -> None:
        """Say (once a minute) that a neighbour's ticket was refused for its times, and by which clock: a clock that is off is the usual cause."""
        ahead = self.edge_clocks.ahead(edge, time.monotonic(), time.time())
        if ahead is None:
            judged = "by this machine's clock, the edge's not read yet: if this machine's clock is off, set it (NTP)"
        else:
            judged = f"by that edge's clock (this machine's is {_gap(ahead)} it): if a clock is off, set it (NTP)"
        self._clock_log.log(
            logging.WARNING,
            "neighbours' tickets refused for their times",
            "refused a neighbour's swarm ticket from edge %s: %s, %s",
            edge,
            exc.message,
            judged,
        )

    async def content_key(self, signed: SignedManifest) -> bytes:
        """A protected file's key from an edge (which checks our token); kept in memory, never on disk.  One fetch
        however many reads wait for it (a player opens several connections at once), as an edge's (edge.py)."""
        cid = signed.content_id
        if cid not in self.content_keys:
            self.content_keys[cid] = await self._key_fetches.join(cid, lambda: self._fetch_key(signed)).future
        return self.content_keys[cid]

    async def _fetch_key(self, signed: SignedManifest) -> bytes:
        """The key from the first edge that gives it (``first_answer``: the next is asked too when one is slow to
        answer); every edge's 404 is a version no longer published (as an edge's)."""
        from edgeswarm.trust import access  # here: PyJWT costs an open-mode peer's (and get's) start-up ~25 ms of CPU

        async def ask(edge: str) -> bytes:
            try:
                return await access.fetch_key(self.upstream, edge, signed, self.edge_headers())
            except access.KeyRefused as exc:
                if exc.status in (401, 403):  # the user's token: another edge would say the same (403: ManifestFetcher)
                    raise HttpError(403, f"{exc.message}: {self.token_help()}") from None
                raise UpstreamError(exc.status, exc.message) from None
            except HttpError as exc:
                raise UpstreamError(exc.status, exc.message) from None

        problems: list[UpstreamError] = []
        edges = self.ranking.ranked(self.edges, time.monotonic()) or self.edges
        key = await first_answer(edges, ask, problems, self.ranking)
        if key is not None:
            return key
        path = signed.manifest.path
        if edges and all(p.status == 404 for p in problems):
            raise self.manifests.withdraw(path, signed.content_id)
        raise HttpError(502, f"no edge gave the key of /{path}: {'; '.join(p.message for p in problems)}")

    # -- manifests ---------------------------------------------------------------------
    async def resolve(self, path: str) -> SignedManifest:
        """The current manifest of ``path`` from the fastest edge; a cached one if no edge answers."""
        store = await self._store()
        cached = store.manifest_for_path(path)
        if cached is not None and self.manifests.fresh(path):
            store.used(cached.content_id)  # a read: not dropped as bare under it (PieceStore.used)
            return cached
        edges = self.ranking.ranked(self.edges, time.monotonic()) or self.edges
        try:
            signed = await self.manifests.revalidate(store, path, edges, self.edge_headers())
        except HttpError as exc:
            if exc.status == 403:  # our token (ManifestFetcher): what fixes it, as for a key (a new error: reads share this one)
                raise HttpError(403, f"{exc.message}: {self.token_help()}") from None
            raise
        store.used(signed.content_id)
        return signed

    def loopback_host(self) -> str:
        """Where this process reaches its own upload server (the relay client's requests)."""
        bind = self.config.bind
        return "127.0.0.1" if bind in (None, "", "0.0.0.0") else "::1" if bind == "::" else url_host(bind)

    def swarm(self, signed: SignedManifest) -> Swarm:
        cid = signed.content_id
        swarm = self.swarms.get(cid)
        if swarm is not None and swarm.withdrawn is not None:  # its edge said so once; the version may be back
            self.stop_swarm(swarm)
            swarm = None
        if swarm is None:
            swarm = self.swarms[cid] = Swarm(self, signed)
            if not swarm.completed.is_set():  # held whole (a retired swarm's content read again): every round announces it
                self.announce_soon()
        return swarm

    async def retire_idle(self, now: float, idle: float = RETIRE_IDLE) -> int:
        """Close the swarms with nothing to do for ``idle`` seconds (Swarm.retirable); how many.

        Each holds an engine, its workers (tasks) and its neighbours: kept for
        every file ever read, a gateway that had read 5 000 files held 10 000
        tasks and 87 MB more than at start (and an HLS video is a content per
        segment).  Their contents stay held, served and announced; a read of
        one starts a new swarm.  Live segments are retired by livegateway as
        they leave the window.
        """
        done = [s for s in self.swarms.values() if s.retirable(now, idle)]
        for swarm in done:
            self.retire(swarm)
        await asyncio.gather(*(swarm.close() for swarm in done))
        return len(done)

    def retire(self, swarm: Swarm) -> None:
        """Take ``swarm`` out of service (its caller closes it); what it banned is kept for the next swarm of its content.

        A swarm's bans are per content (engine.Engine.ban): gone with a
        retired swarm, a neighbour that had sent a corrupt piece got a new
        try from the next one.  At most BANS_KEPT contents' bans are kept.
        """
        if self.swarms.get(swarm.cid) is swarm:
            del self.swarms[swarm.cid]
        swarm.retired = True
        if swarm.banned:
            self._bans.pop(swarm.cid, None)
            self._bans[swarm.cid] = swarm.banned
            if len(self._bans) > BANS_KEPT:
                del self._bans[next(iter(self._bans))]

    def stop_swarm(self, swarm: Swarm) -> None:
        """Retire ``swarm`` and close it in the background: it fetches nothing more."""
        self.retire(swarm)
        task = asyncio.create_task(swarm.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def bans_of(self, cid: str) -> set[str]:
        """The addresses banned for ``cid`` by its retired swarm, for a new swarm of it (which holds them from then on)."""
        return self._bans.pop(cid, set())

    async def retire_loop(self) -> None:
        while True:
            await asyncio.sleep(RETIRE_IDLE / 4)
            try:
                await self.retire_idle(time.monotonic())
            except Exception:  # a bug here must not end the loop for the rest of the run
                log.exception("retiring idle swarms failed")

    # -- transfers (driven by Swarm) -----------------------------------------------------
    async def fetch_piece(self, url: str, cid: str, index: int, to_peer: bool, urgent: bool = False) -> bytes:
        """One piece, saying whether a reader's deadline forces it (an edge counts those copies; a peer sends the others in line)."""
        headers = {PEER_HEADER: self.peer_id, **(self.peer_headers(cid) if to_peer else self.edge_headers())}
        headers[URGENCY_HEADER] = "urgent" if urgent else "background"
        signed = self.store.manifest(cid) if self.store else None
        if signed is None:
            raise KeyError(cid)  # the content left the store meanwhile
        try:
            reply = await self.upstream.get(
                url,
                f"/piece/{cid}/{index}",
                headers,
                None if to_peer else self.upstream.timeout + EDGE_SLACK,
                limit=signed.manifest.piece_span(index)[1],
                head_timeout=PEER_HEAD_TIMEOUT if to_peer else None,
            )
        except UpstreamError as exc:
            if not to_peer:
                self._edge_failed(url, exc)
            raise
        if reply.status == 200:
            await self.down_bucket.throttle(len(reply.body))  # as if it had come down a link that slow
            if not to_peer:
                self.from_edge.setdefault(cid, Counter())[url] += len(reply.body)
                self.refused.pop(url, None)
                self.ranking.heard(url, reply.head_s)  # how many requests the engine keeps in flight there (edge_depth)
            return reply.body
        if reply.status in (401, 403) and to_peer:  # our ticket is missing or stale: the next announce brings a fresh one,
            self._look_at_clocks()  # at once if it expired while the machine slept (a neighbour's word alone changes nothing)
            raise Choked(2.0)
        if refusal := self._refusal(url, reply, f"piece {index} of {signed.manifest.path}"):
            raise refusal
        if reply.status == 429 or says_busy(reply.status, reply.headers):  # come back then: no failure
            retry = retry_after(reply.headers, 4)  # (a 503's: an edge passing on an origin that hashes a replaced file)
            raise Choked(min(max(1 if retry is None else retry, 0.2), 30))
        if reply.status in (404, 504) and to_peer:
            raise NotHeld()
        if reply.status == 404:  # the edge's parent no longer publishes it (a deleted live segment): gone, not the edge's failure
            raise Withdrawn(cid)
        # a gateway read that ends here says what the edge said: its 503 (busy) or 504 (its own sources timed out) as is
        status = reply.status if reply.status in (503, 504) else 502
        raise UpstreamError(status, f"{url} answered {reply.status} for piece {index}")

    async def fetch_seed(
        self,
        edge: str,
        cid: str,
        claimed: set[int],
        start: int,
        on_piece: Callable[[int], None] | None = None,
        whole: bool = False,
        unseen: Collection[int] = (),
    ) -> tuple[int, bytes] | None:
        """``POST /seed/<cid>``: the piece the edge wants this peer to spread, or None (204: trade with the region).

        ``claimed`` is what we hold or have in flight, ``start`` the lowest piece
        we are interested in, ``whole`` says no reader waits (the answer may
        queue behind others'), ``unseen`` what we lack and know no neighbour to
        hold.  SeedUnsupported: the edge does not seed (404/405).
        ``on_piece`` learns the piece's index from the answer's head, before its body.
        """
        signed = self.store.manifest(cid) if self.store else None
        if signed is None:
            raise KeyError(cid)
        m = signed.manifest
        headers = {PEER_HEADER: self.peer_id, **self.edge_headers()}
        doc: dict[str, object] = {"have": bitfield.encode(claimed, m.piece_count), "from": start}
        if whole:
            doc["whole"] = True
        if unseen:
            doc["unseen"] = bitfield.encode(unseen, m.piece_count)

        def head(status: int, headers: CIMultiDictProxy[str]) -> None:
            index = ascii_decimal(headers.get(PIECE_HEADER, ""))
            if on_piece is not None and status == 200 and index is not None and index < m.piece_count:
                on_piece(index)

        try:
            reply = await self.upstream.request("POST", edge, f"/seed/{cid}", headers, None, doc, limit=m.piece_size, on_head=head)
        except UpstreamError as exc:
            self._edge_failed(edge, exc)
            raise
        if reply.status == 204:
            return None
        if reply.status in (404, 405):
            raise SeedUnsupported()
        if refusal := self._refusal(edge, reply, f"/seed of {m.path}"):
            raise refusal
        if 400 <= reply.status < 500:  # refused this asker (403 under --internal, 429...): wait, as on 204; the edge is fine
            log.info("%s answered %d to /seed for %s: waiting, as on 204", edge, reply.status, cid[:12])
            return None
        if reply.status != 200:
            raise UpstreamError(502, f"{edge} answered {reply.status} to /seed")
        index = ascii_decimal(reply.headers.get(PIECE_HEADER, ""))
        if index is None:
            raise UpstreamError(502, f"{edge} answered /seed without a valid {PIECE_HEADER}")
        if not index < m.piece_count:
            raise UpstreamError(502, f"{edge} sent piece {index} of a {m.piece_count}-piece file")
        await self.down_bucket.throttle(len(reply.body))
        self.from_edge.setdefault(cid, Counter())[edge] += len(reply.body)
        self.refused.pop(edge, None)
        return index, reply.body

    async def have_stream(self, url: str, cid: str) -> AsyncGenerator[HaveEvent, None]:
        """A neighbour's HAVE stream, one event per line; ends when the stream does.

        A neighbour that answers a plain ``/have`` (an older peer) yields one
        snapshot and then raises StreamUnsupported: it is polled instead.
        UpstreamError when it cannot be opened or goes silent past heartbeats.
        """
        signed = self.store.manifest(cid) if self.store else None
        if signed is None or self.streams is None:
            return
        count = signed.manifest.piece_count
        headers = {
            PEER_HEADER: self.peer_id,
            "Accept": havefeed.CONTENT_TYPE,
            **({} if self.relay else {havefeed.UPLOAD_PORT_HEADER: str(self.upload_port)}),  # relayed: the tracker's URL only
            **({havefeed.REGION_HEADER: self.region} if self.region else {}),
            **self.peer_headers(cid),
        }
        silence = 3 * havefeed.HEARTBEAT
        try:
            async with asyncio.timeout(self.upstream.timeout):
                resp = await self.streams.get(node_url(url, f"/have/{cid}"), headers=headers)
            async with resp:
                if resp.status == 429:
                    raise UpstreamError(429, f"{url} has all the HAVE subscribers it takes")
                if resp.status != 200:
                    raise UpstreamError(502, f"{url} answered {resp.status} to a HAVE subscription")
                if resp.content_type != havefeed.CONTENT_TYPE:
                    body = await read_bounded(resp, MAX_ANSWER, url, "/have")
                    held = bitfield.decode(jsondoc.loads(body).get("bitfield"), count)
                    yield HaveEvent("snapshot", frozenset(held), None)
                    raise StreamUnsupported()
                budget = havefeed.StreamBudget(count, time.monotonic())
                while True:
                    async with asyncio.timeout(silence):
                        line = await resp.content.readline(max_line_length=budget.max_line)
                    if not line:
                        return
                    if not line.endswith(b"\n"):
                        raise UpstreamError(502, f"{url} sent a broken HAVE line")
                    if why := budget.spend(len(line), time.monotonic()):
                        raise StreamAbused(f"{url}'s HAVE stream sent {why}")
                    event = havefeed.parse_line(line, count)
                    if event.at is not None and event.kind == "have":
                        self.have_latency.add(time.time() - event.at)
                    yield event
        except TimeoutError:
            raise UpstreamError(504, f"{url}'s HAVE stream went silent") from None
        except LineTooLong:
            raise StreamAbused(f"{url}'s HAVE stream sent a line over {havefeed.max_line(count)} bytes") from None
        except HttpProcessingError as exc:  # a broken chunked body, say: not an aiohttp.ClientError, and no bug of ours
            raise UpstreamError(502, f"{url}'s HAVE stream is not valid HTTP: {exc.__class__.__name__}") from None
        except (aiohttp.ClientError, OSError, ValueError, AttributeError) as exc:
            raise UpstreamError(502, f"{url}'s HAVE stream failed: {client_error_text(exc, url)}") from None

    async def fetch_have(self, url: str, cid: str) -> set[int] | None:
        store = await self._store()
        signed = store.manifest(cid)
        try:
            headers = self.edge_headers() if url in self.edges else {PEER_HEADER: self.peer_id, **self.peer_headers(cid)}
            reply = await self.upstream.get(url, f"/have/{cid}", headers, timeout=2.0)
            if reply.status != 200 or signed is None:
                return None
            return bitfield.decode(jsondoc.loads(reply.body).get("bitfield"), signed.manifest.piece_count)
        except (UpstreamError, ValueError, AttributeError):
            return None

    def count_received(self, cid: str, kind: str, url: str, n: int) -> None:
        self.metrics.count_received(kind, url, n)
        self.metrics.count_content("received", cid, kind, n)
        self.received.setdefault(cid, Counter())[kind] += n

    def on_complete(self, swarm: Swarm) -> None:
        m, kept = swarm.signed.manifest, len(self.pinned.opened.held(swarm.cid))
        if kept < m.piece_count:  # "completed" read as held whole, by a peer whose --max-cache kept 8 of 153 pieces
            log.info("fetched every piece of %s (%d); the cache keeps %d of them (--max-cache)", m.path, m.piece_count, kept)
        else:
            log.info("completed %s (%d pieces)", m.path, m.piece_count)
        self.announce_soon()

    # -- announces -------------------------------------------------------------------------
    def announce_soon(self) -> None:
        """Something every tracker should hear now: a new content, or one completed."""
        for edge in self._p2p_edges:
            self.schedule.hurry(edge, time.monotonic())
        self._wake_announcer.set()

    def reintroduce(self, edge: str) -> None:
        """``edge`` may have forgotten this peer (our relay there opened again: it restarted), or hands us out at a relay
        we lost (one of another edge sharing its tracker store, RelayClient._lost): every content, now."""
        if edge in self._p2p_edges:
            self.schedule.forgotten(edge, time.monotonic())
            self._wake_announcer.set()

    def use_edges(self, urls: list[str]) -> None:
        """The router's edges (and --edge's): changed in place, as the swarms' engines hold this very list.

        When none of the router's edges stays (its fallback to another
        region's edges, or the way back), the trackers left behind hear
        ``stopped`` before the new ones hear from us (``_leave``): they counted
        us for three intervals, and the router's region totals with them
        (an adversarial session).  An edge that leaves while another stays gets no
        ``stopped``: the two may share a tracker store, where it would take us
        out of the swarm the staying edge hands out.
        """
        new = [u for u in urls if u not in self.edges]
        gone = [u for u in self.edges if u not in urls]
        for edge in gone:
            self.route.forget(edge)
            for swarm in self.swarms.values():
                swarm.source_gone(edge)
        fixed = set(self.router.fixed) if self.router is not None else set()
        if gone and not set(self.edges) & (set(urls) - fixed):
            self._leaving.update(e for e in gone if e in self._p2p_edges)
        self._leaving.difference_update(urls)
        self.edges[:] = urls
        self._p2p_edges.intersection_update(urls)
        self._p2p_edges.update(new)
        if new:
            self.announce_soon()

    def _refusal(self, edge: str, reply: Reply, what: str) -> Hopeless | None:
        """``edge``'s refusal of our token for ``what`` (a 401, or a 403 naming the token: an --internal edge's 403 for
        an uncached piece names none, and peers may still have it), kept for token_refused; None for another answer.
        Hopeless: no retry changes the edge's mind, so a download leaves that edge alone (engine._hopeless)."""
        if reply.status not in (401, 403) or "WWW-Authenticate" not in reply.headers:
            return None
        said = said_in(reply.body, 300)  # one line, whatever the edge sent
        self.refused[edge] = f"{edge} answered {reply.status} for {what}: {said}"
        return Hopeless(502, self.refused[edge])  # the edge's words: what to do is the gateway's and /status's to say

    def token_refused(self) -> str | None:
        """What an edge said, once every edge refuses this peer's token (a 401 or 403 naming it, for a piece), else None."""
        refusals = [self.refused[e] for e in self.edges if e in self.refused]
        return refusals[0] if refusals and len(refusals) == len(self.edges) else None

    def token_help(self) -> str:
        """What this peer's user does about an edge's refusal of its token (or of its request without one)."""
        return TOKEN_REFUSED if self.token else NO_TOKEN

    def token_problem(self) -> dict[str, str]:
        """What /status and a download's POST say once every edge refuses this peer's token, else nothing: a background
        download stops asking (engine._hopeless), and its POST answered 202 'complete: false' with no reason."""
        refusal = self.token_refused()
        return {} if refusal is None else {"token_error": f"{refusal}: {self.token_help()}"}

    def _edge_failed(self, edge: str, exc: UpstreamError) -> None:
        """A request to ``edge`` failed: it may be down, unless it was our own process out of descriptors."""
        if not isinstance(exc, OutOfDescriptorsHere):
            self._edge_unreachable(edge)

    def _edge_unreachable(self, edge: str) -> None:
        if self.router is not None:
            self.router.edge_failed()
        if edge in self._p2p_edges:
            self.schedule.unreachable(edge, time.monotonic())
            self._wake_announcer.set()

    async def announce_loop(self) -> None:
        await self.bound.wait()
        await self._store()
        if self.relay is not None:  # handed out before our relay is up, we would cost neighbours failures: give it a moment
            await self.relay.wait_connected(5.0)
        if (keys := self._fetch_missing_keys()) is not None:  # our first announce able to check neighbours' tickets
            await asyncio.wait({keys}, timeout=HEDGE_AFTER)
        while True:
            self._fetch_missing_keys()
            self._wake_announcer.clear()
            if self._leaving:
                await self._leave()
            due = self.schedule.due(sorted(self._p2p_edges), time.monotonic())
            for edge in due:
                self.schedule.began(edge, time.monotonic())
            if due:
                self._round = asyncio.create_task(self.announce_all("update", due))
                try:
                    await asyncio.shield(self._round)
                except Exception:  # a bug: said, and the next round goes on (one bad answer ended every edge's announces)
                    log.exception("an announce round failed; announcing goes on")
                    await asyncio.sleep(FIRST_RETRY)
            await self._until_due()

    def _fetch_missing_keys(self) -> asyncio.Task | None:
        """The swarm-ticket keys of edges we hold none of, asked for in the background (one fetch at a time): awaited in
        the announce loop, a wedged edge's (its 5 s timeout) held every round's announces to the other edges, a new
        content's first among them, while it lasted."""
        if len(self.ticket_keys) < len(self.edges) and (self._keys_task is None or self._keys_task.done()):
            self._keys_task = asyncio.create_task(self.learn_ticket_keys())
        return self._keys_task

    async def _leave(self) -> None:
        """``stopped`` to the edges the router replaced (``use_edges``), for every content each had from us: best effort,
        within ``LEAVE_WAIT`` (a dead edge refuses at once, a hung one is not waited for).  It goes before the round to
        the new edges, whose ``started`` then carries the stats the left ones took (``_item``).  Whether or not it was
        heard, a left edge no longer has our contents: should it come back, it hears ``started`` again."""
        edges, self._leaving = self._leaving, set()
        held = {edge: {cid for cid, at in self._announced.items() if edge in at} for edge in edges}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_WAIT):
                await asyncio.gather(*(self._announce_edge(edge, cids, "stopped") for edge, cids in held.items() if cids))
        for edge, cids in held.items():
            for cid in cids:
                self._left(edge, cid)

    async def _until_due(self) -> None:
        """Until a tracker is due, news wakes the announcer, or the machine is found to have slept: the clocks are looked
        at every ``sleepwatch.CHECK_S`` meanwhile, as a suspend stops the monotonic wait, not the wall clock (node/sleepwatch.py)."""
        while (wait := self.schedule.wait(sorted(self._p2p_edges), time.monotonic())) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(sleepwatch.CHECK_S, wait)):
                    await self._wake_announcer.wait()
                    return
            if self._look_at_clocks():
                return

    def _look_at_clocks(self) -> bool:
        """Whether the machine slept since the last look; if so, every edge is due at once (node/sleepwatch.py)."""
        slept = self._clocks.slept(time.time(), time.monotonic())
        if slept:
            log.info("this machine slept for about %.0f s: announcing to every edge now, for fresh tickets and neighbours", slept)
            self.edge_clocks.forget()  # read on the monotonic clock, which stood still: read again from those announces
            self.schedule.woke(time.monotonic())
            self._wake_announcer.set()
        return bool(slept)

    async def announce_all(self, event: str, edges: list[str] | None = None) -> None:
        store = self.store
        if store is None:
            return
        started = time.monotonic()  # before the contents are listed: a swarm created after this is hurried after it
        cids = self._live(store)
        gone = self._gone(cids)
        targets = list(self._p2p_edges) if edges is None else edges
        await asyncio.gather(*(self._announce_to(edge, cids, event, started, gone) for edge in targets))

    def _live(self, store: PieceStore) -> set[str]:
        """The contents to announce: those ``_in_use``, but live playlists, which come from the edge only (livegateway.py):
        their versions, each announced, made the edge ask the origin for ones it had forgotten (75 404s a minute)."""
        return {s.content_id for s in store.contents() if self._in_use(s.content_id) and not _from_edge_only(s)} | set(self.swarms)

    def _in_use(self, cid: str) -> bool:
        """We hold a piece of ``cid``, or a swarm of ours is fetching it: announced, and its tables kept (_forget)."""
        return cid in self.swarms or bool(self.store is not None and self.store.held(cid))

    def _gone(self, live: set[str]) -> set[str]:
        """Contents announced once and not ``live`` any more, for a ``stopped`` to the trackers that had them (_announce_to).

        A tracker that is no longer one of ours (the router dropped the
        edge, or it stopped tracking) is not waited for: a content only such
        trackers had is forgotten at once.
        """
        gone = set()
        for cid in set(self._announced) - live:
            self._announced[cid] &= self._p2p_edges
            if self._announced[cid]:
                gone.add(cid)
            else:
                del self._announced[cid]
                self._forget(cid)
        return gone

    async def _announce_to(self, edge: str, cids: set[str], event: str, started: float, gone: set[str]) -> None:
        """Every content to one tracker, in one request per BATCH contents; if it cannot be reached, a short back-off.

        An edge that refuses a batch (400: it predates them) gets one announce
        per content from then on, as before batches.  ``started`` is when
        ``cids`` was listed: gather starts this coroutine a loop turn later,
        and a swarm created in between (`edgeswarm get`'s, as its manifest
        arrives) is not in ``cids``, so its hurry must outlive this announce.
        ``gone``: contents announced once and no longer held (evicted, their
        swarms retired); the edge, and the sub-tracker it named, hear
        ``stopped`` for those it had, so that neither hands us out for them
        any more, with their last usage; then we forget them (_left).
        """
        leaving = {cid for cid in gone if edge in self._announced.get(cid, ())}
        if leaving and event == "stopped":
            cids = cids | leaving
        elif leaving:
            await asyncio.gather(self._announce_edge(edge, leaving, "stopped"), self._stop_at_subtracker(edge, leaving))
        full = event != "update" or self.schedule.full(edge, started)
        if not full:
            cids = {cid for cid in cids if self._news(edge, cid)}
        if event != "stopped":
            cids = {cid for cid in cids if not self._refused_now(edge, cid, started)}
        vouched, self._vouch = self._vouch & cids, self._vouch - cids
        # an empty round goes on: it is what reschedules the edge's next one
        if event == "update" and cids and self._to_subtracker(edge, cids, started, full, vouched):
            return
        if event == "stopped":
            await asyncio.gather(self._announce_edge(edge, cids, event), self._stop_at_subtracker(edge, cids))
            return
        await self._at_edge(edge, cids, event, started, full, vouched)

    async def _at_edge(
        self, edge: str, cids: set[str], event: str, started: float, full: bool, vouched: set[str], heard: float | None = None
    ) -> None:
        """The round (not ``stopped``) to the edge itself, and the edge's next one as its answer puts it. ``heard``: the
        round is what its sub-tracker refused of one, and this was when the edge last took a whole one of ours."""
        failed = [why for why in await self._announce_edge(edge, cids, event) if why]
        if heard is not None:  # the edge took the contents the sub-tracker refused, not the others: their turn stays due
            self.route.rewind(edge, heard)  # (a review: refreshed, it never came, and the edge forgot them after a ttl)
        now = time.monotonic()
        if failed:
            # what this round asked for stays asked: a lonely swarm's ask for neighbours was cleared as the round went
            # out, its retry carried nothing, and a round of nothing "succeeded" on a link still down (an adversarial
            # session: "EDGE answers announces again", the next round an interval away)
            self._vouch |= vouched
            delay = self.schedule.failed(edge, now)
            log.info("announce to %s failed (%s); trying again in %g s", edge, failed[0], round(delay, 1))
        elif self.schedule.succeeded(edge, now, started, full) and edge in self._p2p_edges and cids:  # a round of nothing heard nothing
            log.info("%s answers announces again", edge)
            self.ranking.revive(edge)  # its pieces too, perhaps: no need to wait out the back-off of a dead edge

    async def _announce_edge(self, edge: str, cids: set[str], event: str) -> list[str | None]:
        """The round to the edge itself: why each request failed, if it did."""
        if edge in self._single:
            return await asyncio.gather(*(self._announce(edge, cid, event) for cid in cids))
        ordered = sorted(cids)
        # one batch after another: sent at once, a peer holding 2 500 contents (an HLS viewer's segments) made its edge
        # handle 50 batches in one turn of its loop, which ran late past its flood guard and shed a third of them with
        # 503s, round after round: the tracker knew 1 500 of the 2 500 (an adversarial session)
        return [await self._announce_batch(edge, ordered[i : i + BATCH], event) for i in range(0, len(ordered), BATCH)]

    def _refused_now(self, edge: str, cid: str, now: float) -> bool:
        """Whether ``edge`` refused ``cid`` (a 4xx) recently enough to leave it out of a round.

        A withdrawn version held here (a file changed, a live segment gone from
        its window) asked at every round cost the edge a request to the origin
        each time (268 in 26 minutes, an adversarial soak), and, in its full
        rounds, a log line each time: 33 000 in 25 minutes for 15 peers at a
        2 s interval (another).  A content its parent had not published yet is
        asked again after REFUSED_QUIET (a review), a refusal in a row doubling
        that up to REFUSED_QUIET_MAX.
        """
        refused = self._refused_items.get((edge, cid))
        return refused is not None and now - refused[0] < refused[1]

    def _news(self, edge: str, cid: str) -> bool:
        """What a round between two intervals carries: a content this edge has not heard of, or one completed since,
        or one with subscribers its answers have not named (``_met_subscriber``)."""
        if cid in self._vouch:
            return True
        store = self.store
        signed = store.manifest(cid) if store else None
        if store is None or signed is None:
            return edge not in self._announced.get(cid, ())
        return self._event(edge, cid, len(store.held(cid)), signed.manifest.piece_count) != "update"

    def _event(self, edge: str, cid: str, held: int, count: int) -> str:
        """The event of a content's announce to ``edge`` (``stopped`` aside): started, completed or update."""
        if edge not in self._announced.get(cid, ()):
            return "started"
        return "completed" if held == count and cid not in self._completed else "update"

    def _to_subtracker(self, edge: str, cids: set[str], started: float, full: bool, vouched: set[str]) -> bool:
        """An ``update`` round for ``edge`` sent on to the sub-tracker it named, when the rule says so (False: not).

        policy/subtracking.py decides.  The round goes on in the background
        (``_round_at_subtracker``): awaited, a slow sub-tracker held the
        announce loop, and with it the peer's news to its edges, for
        ceil(contents / BATCH) times its answer time (an adversarial session).
        """
        parts = {cid: part for cid in sorted(cids) if (part := self._item(edge, cid, "update")) is not None}
        news = any(item["event"] != "update" or cid not in self.tickets for cid, (item, _, _) in parts.items())
        tracker = self.route.target(edge, time.monotonic(), self.schedule.interval_of(edge), news)
        if tracker is None or not parts:
            return False
        self.route.sent(edge)
        self.schedule.elsewhere(edge, time.monotonic(), started, full)
        task = asyncio.create_task(self._round_at_subtracker(edge, tracker, parts, cids, started, full, vouched))
        self._at_subtrackers.add(task)
        task.add_done_callback(self._at_subtrackers.discard)
        return True

    async def _round_at_subtracker(
        self,
        edge: str,
        tracker: str,
        parts: dict[str, tuple[dict, dict, int]],
        cids: set[str],
        started: float,
        full: bool,
        vouched: set[str],
    ) -> None:
        """The round at the sub-tracker; what it does not take goes to the edge.

        Any failure of the sub-tracker sends the round to the edge at once
        and forgets it until an edge answer names one again.  Contents it
        refused one by one (a ticket it does not take, a content it cannot
        look up) go to the edge, and it keeps the rest: under --require-token
        a sub-tracker asked for a content its user's token does not cover was
        set aside for the whole round, for up to 48 intervals (an adversarial
        session).
        """
        try:
            why, refused = await self._announce_subtracker(edge, tracker, parts, "update")
            if why is not None:
                self.route.failed(edge, tracker, time.monotonic(), self.schedule.interval_of(edge))
                log.info("sub-tracker %s failed (%s): announcing to %s again", tracker, why, edge)
            else:
                self.route.answered(tracker)
                self.schedule.succeeded(edge, time.monotonic(), started, full)
            rest = cids if why is not None else refused
            if rest:  # all of it after a failure; else what it refused, and the edge's turn for the others stays due
                await self._at_edge(edge, rest, "update", started, full, vouched, None if rest == cids else self.route.heard(edge))
        except Exception:  # a bug: said, and announcing goes on
            log.exception("an announce round at sub-tracker %s failed; announcing goes on", tracker)
        finally:
            self.route.ended(edge)
            self._wake_announcer.set()  # its answer, or its fallback's, moved the edge's next round

    async def _stop_at_subtracker(self, edge: str, cids: set[str]) -> None:
        """Shutting down: tell the sub-tracker ``edge`` named too, beside the edge, or it would hand us out for a ttl (best effort)."""
        tracker = self.route.named(edge)
        parts = {cid: part for cid in sorted(cids) if (part := self._item(edge, cid, "stopped")) is not None}
        if tracker is not None and parts:
            await self._announce_subtracker(edge, tracker, parts, "stopped")

    async def _announce_subtracker(
        self, edge: str, tracker: str, parts: dict[str, tuple[dict, dict, int]], event: str
    ) -> tuple[str | None, set[str]]:
        """The items to the sub-tracker ``edge`` named, with that edge's tickets and without usage (the edge's alone);
        why it failed, if it did (a request that failed, or every item refused), and the contents it refused one by one."""
        ordered = list(parts.items())
        refused: dict[str, str] = {}
        for i in range(0, len(ordered), BATCH):
            chunk = ordered[i : i + BATCH]
            items = [
                {
                    **{k: v for k, v in item.items() if k != "usage"},
                    "event": event if event == "stopped" else self.route.event(tracker, cid),
                    "ticket": self._edge_tickets.get((edge, cid), self.tickets.get(cid)),
                }
                for cid, (item, _, _) in chunk
            ]
            try:
                reply = await self.upstream.request(
                    "POST", tracker, "/announce", None, 5.0, {**self._head(), "contents": items}, MAX_ANNOUNCE * 4
                )
                if reply.status != 200:
                    return f"{reply.status} {said_in(reply.body)}", set()
                answers = jsondoc.loads(reply.body)["contents"]
                if event == "stopped":
                    for cid, _ in chunk:
                        self.route.left(tracker, cid)
                    continue
                for cid, (_, _, count) in chunk:
                    one = answers[cid]
                    if "error" in one:
                        refused[cid] = f"content {cid[:12]}: {_error_said(one['error'])}"
                        continue
                    self.route.joined(tracker, cid)
                    self._take_answer(cid, count, {"peers": one["peers"]})
            except UpstreamError as exc:
                return exc.message, set()
            except (ValueError, KeyError, TypeError) as exc:
                return f"an answer that does not parse ({exc.__class__.__name__})", set()
        if refused and len(refused) == len(parts):
            return next(iter(refused.values())), set()
        return None, set(refused)

    def _item(self, edge: str, cid: str, event: str) -> tuple[dict, dict[str, tuple[str, int]], int] | None:
        """One content's part of an announce: its fields, the usage it reports (and to whom), its piece count.

        A ``stopped`` needs no manifest: one whose pieces were all evicted
        may have been dropped since (store/piecestore.py, bare manifests).
        A ``started`` carries ``stats_base``, the highest ``stats`` an edge
        acknowledged for the content: the edge it goes to (another region's,
        after the router's fallback) books only what is above them, as the
        tracker that took them booked the rest (peerstore.added).
        """
        store = self.store
        signed = store.manifest(cid) if store else None
        if store is None:
            return None
        if signed is not None:
            count, held = signed.manifest.piece_count, store.held(cid)
        elif event == "stopped" and cid in self._piece_counts:
            count, held = self._piece_counts[cid], set()
        else:
            return None
        if event != "stopped":
            event = self._event(edge, cid, len(held), count)
        received = self.received.get(cid, Counter())
        usage = {"from_this_edge": (edge, self.from_edge.get(cid, Counter())[edge])}  # what has been reported, and to whom
        if edge == self._accounting_edge():  # P2P bytes to one edge only, or every edge's ledger would count them
            usage["from_peers"] = ("", peer_bytes(received))
            usage["uploaded"] = ("", self.uploaded[cid])
        item = {
            "content": cid,
            "pieces": count,
            "have": bitfield.encode(held, count),
            "uploaded": self.uploaded[cid],
            "downloaded": sum(received.values()),
            "event": event,
            "usage": {k: v - self._booked.get(cid, Counter())[where, k] for k, (where, v) in usage.items()},
            "stats": {STAT_KEYS[kind]: received[kind] for kind in SOURCE_KINDS},
        }
        taken = self._stats_taken.get(cid)
        if event == "started" and taken:  # booked already by the tracker that took them: not to be booked again here
            item["stats_base"] = dict(taken)
        return item, usage, count

    def _took(self, edge: str, item: dict, usage: dict[str, tuple[str, int]], count: int, answer: dict) -> None:
        """An edge accepted one content's announce: book what it acknowledged, and take its peers."""
        cid = item["content"]
        self._refused_items.pop((edge, cid), None)
        booked = self._booked.setdefault(cid, Counter())
        for k, (where, v) in usage.items():
            booked[where, k] = v  # acknowledged: the next announce reports only what comes after
        taken = self._stats_taken.setdefault(cid, {})
        for k, v in item["stats"].items():
            taken[k] = max(taken.get(k, 0), v)  # answers to two edges may come in either order
        if item["event"] == "stopped":
            self._left(edge, cid)
            return
        self._announced.setdefault(cid, set()).add(edge)
        self._piece_counts[cid] = count
        if item["event"] == "completed":
            self._completed.add(cid)
        if self.relay is not None:
            self.relay.via[edge] = answer["relay_via"] if isinstance(answer.get("relay_via"), str) else None
        elif item["event"] != "stopped":
            self._promote(edge, answer.get("promoted") is True)
            tracker = answer.get("tracker")
            self.route.edge_answered(edge, time.monotonic(), tracker if isinstance(tracker, str) and tracker.startswith("http") else None)
        self._take_answer(cid, count, answer, edge)
        if isinstance(answer.get("peers"), list):
            self.subtracker.edge_listed(cid, count, answer["peers"])

    def _left(self, edge: str, cid: str) -> None:
        """``edge`` took our ``stopped`` for ``cid`` (or refused it for good); once no edge has it, the content is forgotten.

        Unless it came back meanwhile (read again): then the next round
        announces it ``started``, and its tables stay.
        """
        edges = self._announced.get(cid)
        if edges is not None:
            edges.discard(edge)
            if edges:
                return
            del self._announced[cid]
        if not self._in_use(cid):
            self._forget(cid)

    def _forget(self, cid: str) -> None:
        """Drop what we keep per content of one we no longer hold and every edge heard ``stopped`` for.

        Every content ever held kept its usage counters, ticket, key and
        totals here for good (about 1.4 KB each with its manifest): a viewer
        of a live stream holds a new content every segment, 43 200 a day at
        two seconds.  What it received and uploaded stays in /status's totals.
        """
        self._received_before.update(self.received.pop(cid, Counter()))
        self._uploaded_before += self.uploaded.pop(cid, 0)
        self._refused_items = {(edge, c): t for (edge, c), t in self._refused_items.items() if c != cid}
        self._edge_tickets = {(edge, c): t for (edge, c), t in self._edge_tickets.items() if c != cid}
        for table in (self.from_edge, self._booked, self._stats_taken, self.tickets, self.content_keys, self._piece_counts):
            table.pop(cid, None)
        self._completed.discard(cid)
        self._vouch.discard(cid)
        self._vouch_at.pop(cid, None)
        self._lonely_at.pop(cid, None)

    def _promote(self, edge: str, promoted: bool) -> None:
        """An edge promoted us (a relay for its unreachable peers, a sub-tracker for others), or no longer does: both while any edge wants it."""
        self._promoted_by[edge] = promoted
        if any(self._promoted_by.values()) and self.hosting is None:
            log.info("promoted by %s: relaying for its region's unreachable peers and tracking for some of its others", edge)
            self.subtracker.start(self.schedule.interval_of(edge), self.region)
            self.hosting = RelayHub(
                RelayLimits(peers=64, timeout=self.upstream.timeout),
                lambda cid: self.store.manifest(cid) if self.store is not None else None,
                self.bucket,
                unknown_piece_limit=MAX_RELAYED_PIECE,
            )
        elif not any(self._promoted_by.values()) and self.hosting is not None:
            log.info("demoted: no edge wants this peer as a relay or sub-tracker any more")
            self.subtracker.stop()
            hub, self.hosting = self.hosting, None
            asyncio.get_running_loop().create_task(hub.close())

    def _promoting_edges(self) -> list[str]:
        """The edges whose answers promote us: a sub-tracker takes only their tickets."""
        return [e for e, promoted in self._promoted_by.items() if promoted]

    async def _subtracker_manifest(self, cid: str) -> Manifest:
        """A content's manifest for the sub-tracker: ours, else from an edge that promoted us (checked and kept); else 404/502."""
        store = await self._store()
        signed = store.manifest(cid)
        problems: list[UpstreamError] = []

        async def ask(edge: str) -> SignedManifest:  # under --require-token: with our token
            try:
                return await self.manifests.by_id(store, edge, cid, self.edge_headers())
            except HttpError as exc:  # a 404 too: the next edge may know it
                raise UpstreamError(exc.status, exc.message) from None

        if signed is None:  # asked as manifests are: a wedged edge held the announce for its timeout (first_answer)
            signed = await first_answer(self._promoting_edges(), ask, problems)
        if signed is None:
            status = 404 if all(p.status == 404 for p in problems) else 502
            raise HttpError(status, f"content {cid[:12]} is unknown here: {'; '.join(p.message for p in problems) or 'no edge to ask'}")
        return signed.manifest

    def _head(self, edge: str = "") -> dict:
        latency = self.have_latency.percentiles()
        relayed: dict[str, object] = {"relay": True} if self.relay else {}  # unreachable: the edge hands us out at its relay
        if self.relay is not None and (at := self.relay.relay_at(edge)):
            relayed["relay_at"] = at  # the promoted peer it named, whose relay we hold: it hands us out there
        return {"peer_id": self.peer_id, "port": self.upload_port, **relayed, **({"have_latency": latency} if latency else {})}

    async def _post_announce(self, edge: str, doc: dict, limit: int) -> tuple[int, bytes, Asked] | str:
        """POST /announce: (status, body, when it was asked and answered), or why the tracker could not be reached; a
        non-tracker is dropped from the announce list."""
        sent = time.monotonic()
        try:
            reply = await self.upstream.request("POST", edge, "/announce", self.edge_headers(), 5.0, doc, limit)
        except UpstreamError as exc:
            return exc.message
        asked = (sent, time.monotonic(), time.time())
        if reply.status in (404, 405):
            log.info("%s is not a tracker (p2p mode off): not announcing there", edge)
            self._p2p_edges.discard(edge)
        if reply.status == 429 or says_busy(reply.status, reply.headers):
            # over a limit, or an edge too busy (its loop late, its tracker full, its store down): no announce to it
            # before its Retry-After, news or not (a shed one was asked again within the second for a completed content)
            wait = retry_after(reply.headers, 5)
            self.schedule.refused(edge, time.monotonic(), FIRST_RETRY if wait is None else wait)
        return reply.status, reply.body, asked

    def _read_clock(self, edge: str, answers: Iterable[object], asked: Asked) -> None:
        """Managed mode: ``edge``'s clock, read off the first ticket of its announce answer (its ``iat``, if signed with
        the key we hold for it), to judge its tickets by (policy/edgeclocks.py); said when it parts from ours."""
        key = self.ticket_keys.get(edge)
        ticket = next((a["ticket"] for a in answers if isinstance(a, dict) and isinstance(a.get("ticket"), str)), None)
        if not self.token or key is None or ticket is None:
            return
        from edgeswarm.trust import tokens

        try:
            ahead = self.edge_clocks.heard(edge, tokens.issued_at(ticket, key), *asked, tokens.LEEWAY)
        except tokens.TokenError:
            return  # signed with a key we have not learned yet (the edge's cache rebuilt): a later answer
        if ahead is not None and abs(ahead) > tokens.LEEWAY:
            log.warning(
                "this machine's clock is %s edge %s's: neighbours' swarm tickets from it are judged by its clock; set the clock (NTP)",
                _gap(ahead),
                edge,
            )
        elif ahead is not None:
            log.info("this machine's clock agrees with edge %s's again (within %.0f s)", edge, tokens.LEEWAY)

    async def _announce_batch(self, edge: str, cids: list[str], event: str) -> str | None:
        """One request for several contents (docs/protocol.md#announce); returns why the tracker could not be reached, if it could not."""
        parts = {cid: part for cid in cids if (part := self._item(edge, cid, event)) is not None}
        if not parts:
            return None
        doc = {**self._head(edge), "contents": [item for item, _, _ in parts.values()]}
        got = await self._post_announce(edge, doc, MAX_ANNOUNCE * 4)
        if isinstance(got, str):
            return got
        status, body, asked = got
        if status == 400 and b"'content'" in body:  # an edge from before batches: it asks for a single content
            log.info("%s takes one content per announce: announcing so from now on", edge)
            self._single.add(edge)
            failed = [why for why in await asyncio.gather(*(self._announce(edge, cid, event) for cid in parts)) if why]
            return failed[0] if failed else None
        if status in (404, 405):
            return None
        if status != 200:
            why = f"{status} {said_in(body)}"
            if status >= 500:  # an edge starting up, one whose parent or tracker store is down: try again soon
                return why
            log.warning("announce to %s refused: %s", edge, why)
            self._refusals[edge] = why
            return None
        self._refusals.pop(edge, None)
        try:
            answer = jsondoc.loads(body)
            answers = answer["contents"]
            shared = {k: answer[k] for k in ("interval", "region", "locality") if k in answer}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad announce answer from %s: %s", edge, exc)
            return None
        if isinstance(answers, dict):
            self._read_clock(edge, answers.values(), asked)
        unreachable = None
        for cid, (item, usage, count) in parts.items():
            one = answers.get(cid) if isinstance(answers, dict) else None
            if not isinstance(one, dict) or "error" in one:
                error = one.get("error") if isinstance(one, dict) else None
                code = error.get("status") if isinstance(error, dict) else None
                said = _error_said(error) if isinstance(error, dict) else "no answer"
                if isinstance(code, int) and (code >= 500 or code == 429):
                    # the rest of the batch (a store down, or the sender over its rate part-way): try again soon, the
                    # stopped ones too (forgotten on a 429, they were handed out by the edge for a ttl: a review);
                    # not before the item's Retry-After (a full tracker's 503 was asked again after 1 s, 2 s...)
                    unreachable = said
                    wait = error.get("retry_after") if isinstance(error, dict) else None
                    if isinstance(wait, int) and not isinstance(wait, bool) and wait > 0:
                        self.schedule.refused(edge, time.monotonic(), wait)
                    elif code == 429:
                        self.schedule.refused(edge, time.monotonic(), FIRST_RETRY)
                elif item["event"] == "stopped":  # it will not take it later either: nothing more to tell it
                    log.info("announce of %s to %s refused: %s", cid[:12], edge, said)  # not the dict of its answer
                    self._left(edge, cid)
                else:  # left out of this edge's rounds a while (_refused_now), said once a streak
                    before = self._refused_items.get((edge, cid))
                    quiet = REFUSED_QUIET if before is None else min(2 * before[1], REFUSED_QUIET_MAX)
                    self._refused_items[edge, cid] = (time.monotonic(), quiet)
                    if before is None:
                        log.info("announce of %s to %s refused: %s; asked again in %g s", cid[:12], edge, said, quiet)
                continue
            self._took(edge, item, usage, count, {**one, **shared})
        return unreachable

    async def _announce(self, edge: str, cid: str, event: str) -> str | None:
        """One content's announce (edges from before batches); returns why the tracker could not be reached, if it could not."""
        part = self._item(edge, cid, event)
        if part is None:
            return None
        item, usage, count = part
        got = await self._post_announce(edge, {**self._head(edge), **item}, MAX_ANNOUNCE)
        if isinstance(got, str):
            return got
        status, body, asked = got
        if status in (404, 405):
            return None
        if status != 200:
            why = f"{status} {said_in(body)}"
            if status >= 500:  # an edge starting up, or one whose parent is down: try again soon
                return why
            log.warning("announce to %s refused: %s", edge, why)
            self._refusals[edge] = why
            if event == "stopped":  # it will not take it later either: nothing more to tell it
                self._left(edge, cid)
            return None
        self._refusals.pop(edge, None)
        try:
            answer = jsondoc.loads(body)
        except ValueError as exc:
            log.warning("bad announce answer: %s", exc)
            return None
        self._read_clock(edge, [answer], asked)
        self._took(edge, item, usage, count, answer)
        return None

    def _accounting_edge(self) -> str | None:
        """The one tracker that books this peer's P2P counters in its ledger: the first of our edges that tracks."""
        return next((e for e in self.edges if e in self._p2p_edges), None)

    def _learn_region(self, region: str | None) -> None:
        """Our region, as the tracker saw us; subscribers met before it was known are judged again by their claim.

        A neighbour can subscribe to us before our first announce is answered
        (it announced first, and its answer named us); judged against our
        unknown region, its pieces were booked as from another region until a
        tracker answer named it, which at the default interval may be never.
        """
        if region == self.region:
            return
        self.region = region
        for swarm in self.swarms.values():
            for n in swarm.neighbours.values():
                if n.region_claim is not None:
                    n.same_region = n.region_claim == region

    def _take_answer(self, cid: str, count: int, doc: dict, edge: str | None = None) -> None:
        """A tracker answer's peers (and ``edge``'s interval, region, locality and ticket, if from an edge)."""
        try:
            if edge is not None and "interval" in doc:
                self.schedule.given(edge, _interval(doc["interval"]))
            self._learn_region(doc.get("region", self.region))  # a sub-tracker's answer says nothing of it
            if "locality" in doc:  # nor of this
                self.strict = doc["locality"] == "strict"
            if isinstance(doc.get("ticket"), str):
                self.tickets[cid] = doc["ticket"]
                if edge is not None:
                    self._edge_tickets[edge, cid] = doc["ticket"]
            peers = [
                {
                    "peer_id": str(p["peer_id"]),
                    "url": str(p["url"]),
                    "have": bitfield.decode(p["have"], count),
                    "same_region": p.get("region") == self.region,
                    "placed": p.get("placed") is True,
                }
                for p in doc.get("peers", [])
            ]
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            log.warning("bad announce answer: %s", exc)
            return
        peers = self._buildable(peers)
        swarm = self.swarms.get(cid)
        if swarm is not None:
            swarm.update_neighbours(peers, from_edge=edge is not None)

    def _buildable(self, peers: list[dict]) -> list[dict]:
        """The peers of an answer at URLs a tracker builds (``tracker.peer_url_problem``); the others said (throttled)."""
        kept = []
        for p in peers:
            problem = peer_url_problem(p["url"])
            if problem is None:
                kept.append(p)
            else:
                self.quiet.log(
                    logging.WARNING, "unbuildable peer URL", "a tracker answer lists a peer at %.200r: %s; not used", p["url"], problem
                )
        return kept

    # -- the gateway -------------------------------------------------------------------------
    async def get_file(self, request: web.Request) -> web.StreamResponse:
        rel = file_request_path(request.raw_path)
        signed = await self.resolve(rel)
        return await self.manifests.serving(request, signed, lambda s: self._serve(request, s), lambda: self.resolve(rel))

    async def _serve(self, request: web.Request, signed: SignedManifest) -> web.StreamResponse:
        protection = signed.manifest.protection
        if protection is not None:  # decrypted with our user's token: for listed origins only, never "*"
            request[PRIVATE] = True
        transform = cipher_for(await self.content_key(signed), protection) if protection else None  # for the player only
        if _from_edge_only(signed):  # live: fresh from the edge, its new segments fetched ahead (livegateway.py)
            response = await serve_file(request, signed, livegateway.EdgeSource(self, signed), self.metrics)
            self.live.served(signed)
            return response
        return await serve_file(request, signed, SwarmSource(self, self.swarm(signed)), self.metrics, transform=transform)

    async def post_file(self, request: web.Request) -> web.Response:
        """``POST /<path>``: fetch the whole file in the background (rarest-first, to seed it later)."""
        rel = file_request_path(request.raw_path)
        swarm = self.swarm(await self.resolve(rel))
        swarm.want_whole()
        problems = {**(self.store.write_problem() if self.store else {}), **self.token_problem()}
        return json_response({**swarm.status(), **problems}, status=202)  # it waits for room, or a token

    async def get_status(self, request: web.Request) -> web.Response:
        request[PRIVATE] = True  # what this user watches: for listed origins only, never "*"
        totals = Counter(self._received_before)
        for c in self.received.values():
            totals.update(c)
        return json_response(
            {
                **self.metrics.status(),
                "peer_id": self.peer_id,
                "region": self.region,
                "edges": [self._edge_status(e) for e in self.edges],
                "received_by_kind": dict(totals),
                "uploaded_to_peers": self._uploaded_before + sum(self.uploaded.values()),
                "p2p_share": reported_share(peer_bytes(totals), sum(totals.values())),
                "swarms": [s.status() for s in self.swarms.values()],
                **(self.store.listed(status_limit(request)) if self.store is not None else {}),
                **(self.store.write_problem() if self.store is not None else {}),
                **self.token_problem(),
                "unchoked": sorted(self.choker.unchoked(time.monotonic())),
                "have_latency": self.have_latency.percentiles(),
                "have_subscribers": self.havefeed.count(),
                **({"relay": self.relay.status()} if self.relay else {}),
                **({"relaying_for": self.hosting.status()} if self.hosting else {}),
                "subtracker": self.subtracker.status(),
                "announce_route": self.route.status(time.monotonic()),
            }
        )

    def _edge_status(self, edge: str) -> dict:
        ahead = self.edge_clocks.ahead(edge, time.monotonic(), time.time())
        clock = {} if ahead is None else {"clock_ahead_s": round(ahead, 1)}  # read off its tickets (managed mode only)
        refused = {"announce_refused": self._refusals[edge]} if edge in self._refusals else {}  # a 4xx, until it takes one
        return {"url": edge, "rate_Bps": self.ranking.rate(edge), "tracker": edge in self._p2p_edges, **clock, **refused}

    # -- the upload server ---------------------------------------------------------------------
    async def get_piece(self, request: web.Request) -> web.StreamResponse:
        store = await self._store()
        cid = request.match_info["cid"]
        await self.check_ticket(request, cid)  # first: strangers learn nothing, not even what is held
        signed = store.manifest(cid)
        if signed is None:
            raise HttpError(404, f"content {cid[:80]} is not held here")
        index = piece_index(request, signed.manifest.piece_count)
        if not store.has(cid, index):
            raise HttpError(404, f"piece {index} of {cid[:12]} is not held here")
        address = address_group(request.remote or "")
        who = requester(request.headers.get(PEER_HEADER, "")[:64], address)  # a stated id counts only at its own address
        grant = self.gate.admit(who, address, signed.manifest.piece_span(index)[1])
        if isinstance(grant, str):  # before the choker: a refused request is no interest to rank
            self.metrics.events[("upload_busy", "")] += 1
            raise HttpError(429, f"busy: {grant}", {"Retry-After": str(uploadgate.RETRY_AFTER)})
        try:
            return await self._send_piece(request, store, cid, index, who, address)
        finally:
            self.gate.done(grant)

    async def _send_piece(
        self, request: web.Request, store: PieceStore, cid: str, index: int, who: str, address: str
    ) -> web.StreamResponse:
        """An admitted request: the choker's say, then the piece (held in memory only while this runs)."""
        now = time.monotonic()
        if not self.choker.request(now, who, address):
            self.metrics.events[("choked", "")] += 1
            raise HttpError(429, "choked: all upload slots are taken", {"Retry-After": str(self.choker.retry_after(now))})
        data = store.read_piece(cid, index)
        if data is None:
            raise HttpError(404, f"piece {index} of {cid[:12]} is not held here")
        background = request.headers.get(URGENCY_HEADER, "").strip().lower() == "background"
        resp = await send_piece(request, data, self.bucket, line=self.upload_line if background else None, delivered=True)
        self.uploaded[cid] += len(data)
        self.metrics.sent["peer"] += len(data)
        self.metrics.count_content("sent", cid, "peer", len(data))
        self.choker.sent(time.monotonic(), who, len(data))
        return resp

    async def get_have(self, request: web.Request) -> web.StreamResponse:
        """What we hold: a bitfield, or with ``Accept: application/x-ndjson`` the HAVE stream."""
        store = await self._store()
        cid = request.match_info["cid"]
        expires = await self.check_ticket(request, cid)
        signed = store.manifest(cid)
        if signed is None:
            raise HttpError(404, f"content {cid[:80]} is not held here")
        count = signed.manifest.piece_count
        if havefeed.CONTENT_TYPE not in request.headers.get("Accept", ""):
            return have_response(cid, count, store.held(cid))
        met = _subscriber(request)
        sub = self.havefeed.subscribe(cid, address_group(request.remote or ""))
        if sub is None:
            why = f"at most {self.havefeed.cap} HAVE subscribers for {cid[:12]}, {self.havefeed.per_source} from one address"
            raise HttpError(429, f"no room: {why}", {"Retry-After": "30"})
        try:
            if met is not None:
                self._met_subscriber(cid, *met)
            return await havefeed.serve(request, sub, havefeed.snapshot_line(store.held(cid), count, time.time()), expires)
        finally:
            self.havefeed.unsubscribe(cid, sub)

    async def get_relay(self, request: web.Request) -> web.StreamResponse:
        """``GET /relay`` (WebSocket) on a promoted peer: an unreachable peer of our region holds its relay here."""
        if self.hosting is None:
            raise HttpError(404, "this peer relays for nobody: no edge has promoted it")
        return await self.hosting.connect(request, None)

    async def get_relayed(self, request: web.Request) -> web.StreamResponse:
        if self.hosting is None:
            raise HttpError(503, "this peer relays for nobody any more: ask the tracker again", {"Retry-After": "5"})
        return await self.hosting.forward(request)

    def _met_subscriber(self, cid: str, peer_id: str, url: str, claimed: str | None) -> None:
        """A subscriber (``_subscriber``) is a peer downloading this content: our swarm may trade with it too (BitTorrent's
        incoming peers).

        Its URL is its connection's address and its announced port, as the
        tracker builds it, so nobody can point us at another's address.  Its
        region is its own word (``claimed``), though: under strict locality a peer of
        another region subscribing (it needs our address and port, which no
        tracker answer gave it) had us take half a file from it, booked as
        our region's if it said so.  There, and before any answer said which
        locality holds, a subscriber is a neighbour only once a tracker answer
        names it, and it makes the content news: the next round, within
        ``VOUCH_WITHIN`` but at most one every ``VOUCH_GAP`` for a content,
        asks for that answer.  Called once the subscription is admitted.
        """
        swarm = self.swarms.get(cid)
        if swarm is None:
            return
        if self.strict is not False:
            if url not in swarm.neighbours:
                self.ask_for_peers(cid)
            return
        swarm.add_neighbour(peer_id, url, same_region=claimed == self.region, subscriber=True, claim=claimed)

    def ask_for_peers(self, cid: str, lonely: bool = False) -> None:
        """A round carrying ``cid`` within ``VOUCH_WITHIN``: its answers name peers, a subscriber to vouch for (at most
        one every ``VOUCH_GAP`` for a content), or neighbours for a download left with none (``lonely``: Engine.lonely,
        one every ``LONELY_ASK_S``).  Each on a clock of its own: shared, a lonely ask put the next vouching 30 s away
        (a review).  A round already due for it asks for these too."""
        self._vouch.add(cid)
        now = time.monotonic()
        at, gap = (self._lonely_at, LONELY_ASK_S) if lonely else (self._vouch_at, VOUCH_GAP)
        due = at.get(cid, -math.inf)
        if due < now:
            at[cid] = due = max(now + VOUCH_WITHIN, due + gap)
            for edge in self._p2p_edges:
                self.schedule.hurry(edge, now, due - now)
            self._wake_announcer.set()

    # -- wiring -------------------------------------------------------------------------------
    def gateway_app(self) -> web.Application:
        """The user's gateway: its counters and /status for the user only (what the user watched), and answers only
        under the names a stranger's DNS cannot point here (cors.gateway_host)."""
        app = make_app(self.metrics, self.cors, scrape="private")
        app.router.add_get("/status", self.get_status)
        app.router.add_get("/" + PATH, self.get_file)
        app.router.add_post("/" + PATH, self.post_file)
        app.middlewares.append(self._addressed_here)
        app.on_response_prepare.append(_sandboxed)
        return app

    @web.middleware
    async def _addressed_here(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if not gateway_host(request.host, self.config.gateway_hosts):
            raise HttpError(
                421,
                f"this gateway answers under an IP address, localhost or a --gateway-host name, not {request.host[:100]!r} "
                "(a page whose DNS name points here must not read the user's gateway as its own)",
            )
        return await handler(request)

    def upload_app(self) -> web.Application:
        """What other peers reach: pieces, HAVE, relays, the sub-tracker; no /metrics (it names what the user fetched)."""
        app = make_app(self.metrics, scrape="none")
        app.router.add_get("/piece/{cid}/{index}", self.get_piece)
        app.router.add_get("/have/{cid}", self.get_have)
        app.router.add_get("/relay", self.get_relay)
        app.router.add_get("/relay/{rid}/" + TAIL, self.get_relayed)
        app.router.add_post("/announce", self.subtracker.post_announce)
        app.middlewares.append(relayed_middleware(self.relay))
        app.on_shutdown.append(lambda _: self._end_streams())

        async def lifecycle(app: web.Application):
            try:
                await self.start()
            except BaseException:  # a bad key file, a router that never answers: start-up stops with its reason
                await self._close_sessions()
                raise
            yield
            await self.stop()

        app.cleanup_ctx.append(lifecycle)
        return app

    async def start(self) -> None:
        await self.upstream.start()
        if self.router is not None:
            self.use_edges(await self.router.first(self.upstream, self.edges))
        # HAVE streams hold a connection each for as long as they last: their own pool, so that
        # piece requests never queue behind them; from the same source address (it names us to neighbours)
        bind = self.upstream.bind
        self.streams = aiohttp.ClientSession(
            # --ca, as every request of this peer: a relayed neighbour's stream goes through its edge, over HTTPS perhaps
            connector=aiohttp.TCPConnector(limit=MAX_STREAMS, local_addr=(bind, 0) if bind else None, ssl=self.upstream.ssl or True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),  # a stream lasts; have_stream times its opening and its silences
        )
        opener = await self.pinned.start(self.upstream, self.edges)  # a bad key file or cache stops start-up
        self._tasks = [asyncio.create_task(self.announce_loop()), asyncio.create_task(self.retire_loop())]
        self._tasks += [opener] if opener else []
        if self.router is not None:
            self._tasks.append(asyncio.create_task(self.router.follow(self.upstream, self.use_edges)))
        self._tasks += [asyncio.create_task(self.keep_seeded(path)) for path in self.config.seeds]
        if self.config.accept_preheat:  # the user lets edges ask this peer to seed content for the region
            self.volunteer = Volunteer(self, self.config.accept_preheat)
            self._tasks.append(asyncio.create_task(self.volunteer.run()))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run(lambda: set(self._p2p_edges))))

    async def keep_seeded(self, path: str, recheck: float = 60.0) -> None:
        """``--seed PATH``: hold the current version of ``path`` whole and pinned, for the region's other peers.

        Fetched through the swarm like a gateway download, so it costs the edge
        no more than any peer would; checked again every ``recheck`` seconds, so
        a new version published under the path replaces the old one."""
        delay, pinned = FIRST_RETRY, None
        while True:
            try:
                signed = await self.resolve(path.lstrip("/"))
                store = await self._store()
                if pinned != signed.content_id:  # a new version: the old one's pieces may go
                    store.pinned.discard(pinned or "")
                    store.pinned.add(pinned := signed.content_id)
                    _say_over_quota(store, path)
                swarm = self.swarm(signed)
                swarm.want_whole()
                await swarm.completed.wait()
                delay = FIRST_RETRY
                await asyncio.sleep(recheck)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an edge down or the path not there yet: the seeder keeps trying
                log.warning("seed %s: %s; trying again in %g s", path, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, recheck)

    async def _end_streams(self) -> None:
        self.havefeed.close()  # long-lived bodies end now, not at the server's shutdown timeout
        if self.hosting is not None:
            await self.hosting.close(stopping=True)  # so do relayed peers' WebSockets, when an edge promoted us

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._keys_task] if self._keys_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.volunteer is not None:  # its places go to others now, not three announce intervals on; after its polls
            await self.volunteer.leave(STOP_WAIT)  # end, or one answered meanwhile asked again, and volunteered anew
        await self._finish_round()
        await self.live.close()
        for swarm in self.swarms.values():
            await swarm.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_WAIT):
                await self.announce_all("stopped")
        await self._close_sessions()
        if self.store is not None:
            self.store.close()

    async def _close_sessions(self) -> None:
        await self.upstream.close()
        if self.streams is not None:
            await self.streams.close()

    async def _finish_round(self) -> None:
        """Let the announces in flight be answered (within ``STOP_WAIT``) before "stopped" is sent.

        Cut off, one still reached a busy edge, after our "stopped": the edge
        took it for a new peer, handed us out for a ttl after we had gone, and
        booked our received bytes against the wrong state (tests/test_swarm.py:
        the region's totals lost a ``get``'s bytes; a ``get`` stops right after
        the announce its last piece hurries).
        """
        rounds = {r for r in (self._round, *self._at_subtrackers) if r is not None and not r.done()}
        if rounds:
            await asyncio.wait(rounds, timeout=STOP_WAIT)
            for r in rounds:
                r.cancel()
            await asyncio.gather(*rounds, return_exceptions=True)


def _gap(ahead: float) -> str:
    """Where this machine's clock stands to an edge's that runs ``ahead`` seconds ahead of it: "N s behind" or "N s ahead of"."""
    return f"{abs(ahead):.0f} s {'behind' if ahead > 0 else 'ahead of'}"


def _interval(value: object) -> float:
    """An answer's announce interval, within [MIN_INTERVAL, MAX_INTERVAL]: a 400-digit integer raised OverflowError
    and silently ended this peer's announces to every edge, and 0 made it announce twice a second (an adversarial
    session); ValueError for what is no number."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:
        seconds = math.inf
    if math.isnan(seconds):
        raise ValueError(f"interval {value!r:.40} is no number")
    return min(MAX_INTERVAL, max(MIN_INTERVAL, seconds))


def _peer_id(path: Path) -> str:
    """A random id kept in the cache dir, so a restarted peer is the same peer to its trackers."""
    try:
        pid = path.read_text().strip()
        if 0 < len(pid) <= 64 and pid.isprintable():  # what announces accept
            return pid
        if pid:
            log.warning("%s holds no usable peer id: a new one is made", path)
    except FileNotFoundError:
        pass
    except UnicodeDecodeError:
        log.warning("%s holds no usable peer id (not text): a new one is made", path)
    pid = secrets.token_hex(8)
    write_whole(path, f"{pid}\n".encode())
    return pid


def _subscriber(request: web.Request) -> tuple[str, str, str | None] | None:
    """A HAVE subscriber's (peer id, upload URL, claimed region), or None if it names no port (a plain watcher); 400 for a
    malformed header.  The claimed region is absent without a region map (or before the subscriber was told its own)."""
    port = request.headers.get(havefeed.UPLOAD_PORT_HEADER, "")
    peer_id = request.headers.get(PEER_HEADER, "")
    number = ascii_decimal(port, max_digits=5)
    if (port and not (number is not None and 0 < number < 65536)) or len(peer_id) > 64:
        raise HttpError(400, f"bad {havefeed.UPLOAD_PORT_HEADER} or {PEER_HEADER} header")
    if number is None or not peer_id or not request.remote:
        return None
    return peer_id, peer_url(request.remote, number), request.headers.get(havefeed.REGION_HEADER)


async def _sandboxed(_: web.Request, response: web.StreamResponse) -> None:
    """A gateway answer that could be a document is one of no origin, running no script (cors.sandboxed): a CDN file
    opened in the browser, an HTML page a user published, must not be a page of the gateway's origin, which reads the
    user's protected films and /status as its own.  Media are not (a film opened there plays by itself)."""
    response.headers.update(NOSNIFF)
    if sandboxed(response.content_type):
        response.headers.update(SANDBOX)


async def run(peer: Peer, listen: tuple[str, int], gateway: tuple[str, int], access_log: bool, limits: ServerLimits | None = None) -> None:
    def bound(label: str, host: str, port: int) -> None:
        if label == "upload":
            peer.upload_port = port
            peer.bound.set()

    sites = [(peer.upload_app(), *listen, "upload"), (peer.gateway_app(), *gateway, "gateway")]
    # connections kept for the gateway: other peers' HAVE streams (busy, never reclaimed) filled the whole cap, and
    # every request of the user's player was reset (an adversarial session)
    await serve_many(sites, "peer", access_log, on_bound=bound, limits=limits, reserve=("gateway", GATEWAY_CONNECTIONS))


def _from_edge_only(signed: SignedManifest) -> bool:
    """A content the gateway takes from the edge only, never through a swarm: a playlist in the clear (get_file)."""
    return is_playlist(signed.manifest.path) and signed.manifest.protection is None
