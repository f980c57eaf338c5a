"""The HAVE stream: a peer tells its neighbours which pieces it stores as it stores them.

BitTorrent's HAVE message over HTTP.  ``GET /have/<cid>`` with ``Accept:
application/x-ndjson`` answers a long-lived body of JSON lines: the bitfield
first, then ``{"have": [...], "at": t}`` for each batch of newly stored pieces
(gathered over ``BATCH`` seconds), and ``{}`` every ``HEARTBEAT`` seconds so
no idle timeout cuts a live subscription.  Polling once a second told a
neighbour about a piece half a second late on average, and the tracker an
interval late; the stream tells it within a batch.

The rules (batching, the subscriber cap, the line format, latency
percentiles, reconnect back-off) are sans-IO and tested directly; ``serve``
is the thin asyncio shell the upload server runs per subscriber.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from edgeswarm.policy import bitfield
from edgeswarm.policy.vocabulary import quantile
from edgeswarm.protocol import jsondoc

log = logging.getLogger("edgeswarm.protocol.havefeed")
CONTENT_TYPE = "application/x-ndjson"
UPLOAD_PORT_HEADER = "X-Edgeswarm-Upload-Port"  # a subscriber's upload port: the uploader adds it as a neighbour
REGION_HEADER = "X-Edgeswarm-Region"  # a subscriber's region, as its tracker named it (ranking and accounting only)
BATCH = 0.02  # seconds newly stored pieces are gathered into one line
HEARTBEAT = 10.0  # seconds between two lines at most
CHECK = 0.5  # seconds between two looks at whether a quiet subscriber is still connected
MAX_BUFFER = 256 * 1024  # bytes queued for a subscriber that does not read before it is dropped
MAX_SUBSCRIBERS = 64  # per content per peer; the next one gets 429
PER_SOURCE = 4  # of those, from one address (an IPv6 /64): one address cannot take every place and push honest neighbours to polling
MAX_BACKOFF = 30.0  # seconds between two attempts to reopen a lost subscription, at most
HEARTBEAT_LINE = b"{}\n"
MAX_LATENCY_S = 3600.0  # an availability latency above this is a broken or lying clock, never a measurement


# -- the uploader's side ------------------------------------------------------------------
class Subscriber:
    """One subscription's pending batch: the pieces stored since its last line, and when the first of them was."""

    def __init__(self, source: str = "") -> None:
        self.source = source  # the address group it came from, for the per-address cap
        self.pending: dict[int, None] = {}  # ordered set, at most one entry per piece: bounded by the piece count
        self.first_at: float | None = None
        self.closed = False
        self.on_pending: Callable[[], None] = lambda: None  # wakes the writer

    def add(self, index: int, at: float) -> None:
        if self.first_at is None:
            self.first_at = at
        self.pending[index] = None
        self.on_pending()

    def take(self) -> bytes | None:
        """The line for what is pending (None if nothing is), and an empty batch."""
        if not self.pending or self.first_at is None:
            return None
        line = have_line(self.pending, self.first_at)
        self.pending, self.first_at = {}, None
        return line

    def close(self) -> None:
        self.closed = True
        self.on_pending()


class HaveFeed:
    """Every content's subscribers on one peer; told by the swarm when a piece is stored."""

    def __init__(self, cap: int = MAX_SUBSCRIBERS, per_source: int = PER_SOURCE):
        self.cap = cap
        self.per_source = per_source
        self._subs: dict[str, set[Subscriber]] = {}

    def subscribe(self, cid: str, source: str = "") -> Subscriber | None:
        """A new subscriber, or None when the content has ``cap`` already, or ``per_source`` from ``source``."""
        subs = self._subs.setdefault(cid, set())
        if len(subs) >= self.cap or (source and sum(s.source == source for s in subs) >= self.per_source):
            return None
        sub = Subscriber(source)
        subs.add(sub)
        return sub

    def unsubscribe(self, cid: str, sub: Subscriber) -> None:
        subs = self._subs.get(cid)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[cid]

    def stored(self, cid: str, index: int, at: float) -> None:
        for sub in self._subs.get(cid, ()):
            sub.add(index, at)

    def count(self, cid: str | None = None) -> int:
        return sum(len(s) for c, s in self._subs.items() if cid is None or c == cid)

    def close(self) -> None:
        """Shutting down: every writer ends its body."""
        for subs in self._subs.values():
            for sub in subs:
                sub.close()


def snapshot_line(held: Iterable[int], count: int, at: float) -> bytes:
    return json.dumps({"bitfield": bitfield.encode(held, count), "at": at}).encode() + b"\n"


def have_line(pieces: Iterable[int], at: float) -> bytes:
    return json.dumps({"have": list(pieces), "at": at}, separators=(",", ":")).encode() + b"\n"


def too_slow(buffered: int) -> bool:
    """A subscriber with this much unsent is not reading: drop it rather than queue more."""
    return buffered > MAX_BUFFER


async def serve(request: web.Request, sub: Subscriber, first: bytes, until: float | None = None) -> web.StreamResponse:
    """Write one subscription's body until the subscriber leaves, stops reading, or the peer shuts down; or, once wall
    time ``until`` (the swarm ticket's expiry) has passed, within a HEARTBEAT: the subscriber opens it again with its
    newest ticket.  A stream opened with a valid ticket ran for as long as its subscriber stayed, whose user's token
    had long expired (an adversarial session)."""
    resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
    await resp.prepare(request)
    transport = request.transport
    if transport is None:
        return resp
    transport.set_write_buffer_limits(high=MAX_BUFFER)  # writes block only past the point where we drop anyway
    wake = asyncio.Event()
    sub.on_pending = wake.set
    line: bytes | None = first
    try:
        while not sub.closed and not transport.is_closing() and (until is None or time.time() < until):
            if line is not None:
                if too_slow(transport.get_write_buffer_size()):
                    log.info("dropped a HAVE subscriber from %s: it reads nothing (over %d bytes queued)", request.remote, MAX_BUFFER)
                    transport.abort()
                    break
                async with asyncio.timeout(HEARTBEAT):
                    await resp.write(line)
            line = await _next_line(sub, wake, transport)
    except (ConnectionError, TimeoutError):
        transport.abort()  # gone, or its buffer stayed full: nothing more to say to it
    return resp


async def _next_line(sub: Subscriber, wake: asyncio.Event, transport: asyncio.BaseTransport) -> bytes | None:
    """The next batch after BATCH seconds of gathering, a heartbeat after HEARTBEAT, or None when the subscriber left.

    aiohttp does not tell a handler that its client went away, so the
    transport is looked at every CHECK seconds: a subscriber that left frees
    its place under the cap within that, not at the next heartbeat.
    """
    for _ in range(int(HEARTBEAT / CHECK)):
        try:
            async with asyncio.timeout(CHECK):
                await wake.wait()
        except TimeoutError:
            if transport.is_closing():
                return None
            continue
        await asyncio.sleep(BATCH)  # gather what else is stored meanwhile into the same line
        wake.clear()
        return sub.take()
    return HEARTBEAT_LINE


# -- the subscriber's side ----------------------------------------------------------------
@dataclass(frozen=True)
class HaveEvent:
    kind: str  # "snapshot" (pieces is everything held), "have" (pieces were just stored), "heartbeat"
    pieces: frozenset[int]
    at: float | None


def parse_line(line: bytes, count: int) -> HaveEvent:
    """One line of a HAVE stream; ValueError if it is not one (the subscriber then closes the stream)."""
    try:
        doc = jsondoc.loads(line)
    except ValueError as exc:
        raise ValueError(f"not a JSON line: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("a HAVE line must be a JSON object")
    at = doc.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at)):
        raise ValueError("'at' must be a finite number")
    if "bitfield" in doc:
        return HaveEvent("snapshot", frozenset(bitfield.decode(doc["bitfield"], count)), at)
    if "have" in doc:
        pieces = doc["have"]
        if not isinstance(pieces, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in pieces):
            raise ValueError(f"'have' must list piece indices below {count}")
        return HaveEvent("have", frozenset(pieces), at)
    return HaveEvent("heartbeat", frozenset(), None)


QUANTILES = {"p50": "0.5", "p95": "0.95"}  # LatencyStats.percentiles' keys as Prometheus's quantile labels


class LatencyStats:
    """How long availability takes to reach us: receive time minus the sender's "at", over the last samples."""

    def __init__(self, keep: int = 1024):
        self._samples: deque[float] = deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        """One sample; ignored outside [0, MAX_LATENCY_S]: a skewed or hostile sender's clock is no measurement.

        Kept samples are what this peer reports in announces, and the edge
        refuses an announce whose figures are out of that range.
        """
        if 0.0 <= seconds <= MAX_LATENCY_S:
            self._samples.append(seconds)

    def percentiles(self) -> dict[str, float] | None:  # QUANTILES name them as /metrics labels
        """``{"p50": s, "p95": s}``, or None before the first sample."""
        if not self._samples:
            return None
        samples = list(self._samples)
        return {"p50": round(quantile(samples, 0.50), 4), "p95": round(quantile(samples, 0.95), 4)}


# -- what a subscriber accepts from one stream ----------------------------------------------
# A sender batches every BATCH seconds (at most 1/BATCH lines a second) and sends a heartbeat every HEARTBEAT
# seconds when idle; what it lists is what it stores, each piece about once.  Two neighbours sending 600 kB/s of
# heartbeats each cost their victim a whole core and its gateway download (docs/security.md): a stream beyond
# twice those figures is closed, and reopened only after ``abuse_backoff``.
MAX_LINES_PER_S = 2 / BATCH  # lines a second, sustained: twice a sender's batching
LINE_BURST = 200  # lines at once, over the sustained rate: a batch backlog after a short network stall
LINE_SAVINGS = MAX_LINES_PER_S * 3 * HEARTBEAT  # at most this many saved up (a stall past 3 heartbeats closes the stream anyway)
LINE_OVERHEAD = 64  # bytes of a "have" line besides its indices: {"have":[...],"at":1765432100.123456}
ABUSE_BACKOFF = 30.0  # seconds before reopening a stream closed for abuse, doubled each time again...
MAX_ABUSE_BACKOFF = 600.0  # ... up to this


def max_line(count: int) -> int:
    """The longest line a sender of a ``count``-piece content can justify: every piece in one "have" line, or the
    snapshot's bitfield, with room to spare.  A longer one is a broken or hostile stream (and never buffered whole)."""
    listing = count * (len(str(max(0, count - 1))) + 1)
    snapshot = 4 * ((count + 7) // 8 + 2) // 3
    return 2 * LINE_OVERHEAD + max(listing, snapshot)


class StreamBudget:
    """What one HAVE stream may cost its subscriber: lines and bytes per second, as two token buckets.

    Sans-IO (time passed in).  Lines refill at MAX_LINES_PER_S (LINE_BURST to
    start, at most LINE_SAVINGS saved up); bytes start at, and save up to,
    four times ``max_line`` (the snapshot and every piece listed, twice over)
    and refill at one line's overhead per allowed line plus a whole listing
    every 3 heartbeats.  A legitimate sender never comes near either.
    """

    def __init__(self, count: int, now: float):
        self.max_line = max_line(count)
        self._byte_cap = 4.0 * self.max_line
        self._byte_rate = MAX_LINES_PER_S * LINE_OVERHEAD + self.max_line / (3 * HEARTBEAT)
        self._lines = float(LINE_BURST)
        self._bytes = self._byte_cap
        self._at = now

    def spend(self, nbytes: int, now: float) -> str | None:
        """Count one line of ``nbytes``: None while within budget, else why the stream is to be closed."""
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._lines = min(LINE_SAVINGS, self._lines + elapsed * MAX_LINES_PER_S) - 1
        self._bytes = min(self._byte_cap, self._bytes + elapsed * self._byte_rate) - nbytes
        if self._lines < 0:
            return f"more than {MAX_LINES_PER_S:g} lines a second"
        if self._bytes < 0:
            return f"more bytes than its pieces justify (over {self._byte_rate:.0f} bytes a second)"
        return None


def abuse_backoff(abuses: int) -> float:
    """Seconds before reopening a stream closed for abuse ``abuses`` times: 30, 60, 120... up to MAX_ABUSE_BACKOFF."""
    return min(MAX_ABUSE_BACKOFF, ABUSE_BACKOFF * 2.0 ** max(0, abuses - 1))


def backoff(failures: int) -> float:
    """Seconds before reopening a subscription lost ``failures`` times in a row: 1, 2, 4... up to MAX_BACKOFF."""
    return min(MAX_BACKOFF, 2.0 ** max(0, failures - 1))
