"""A promoted peer's sub-tracker: ``POST /announce`` on its upload server, for the peers of its region its edge sends there.

Issue 14, item 3.  An edge with promoted peers names one of them in the
answers to its region's other reachable peers (``"tracker": URL``,
policy/promotion.py); those send their neighbour-list refreshes here and
announce to the edge itself less often (policy/subtracking.py), so the
edge's announce load falls.  Trust is unchanged:

- an item is taken only with a swarm ticket the edge that promoted us signed,
  for that content and that peer id (missing or invalid: 401; another
  content's or another peer's: 403), checked before anything else;
- we never mint tickets: answers carry none, the peer keeps its edge's;
- no usage is booked here: the peer reports it to its edge.

The tracking is the edge's own sans-IO ``Tracker`` over a memory store, with
its limits (rate and ids per address, batches of at most 100, the 64 KiB
body cap of every app).  An answer ranks, with the edge's ranking code, the
peers that announce here, the peers our edge's last answers listed (all of
the region, whoever they announce to), and ourselves when we hold the
content: at most 30, never the asker; the seeds our edge's answers say the
operator placed (``"placed"``) are placed in ours too.  While no edge
promotes us, every announce is a 404, so our peers go back to their edge.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edgeswarm.errors import HttpError
from edgeswarm.policy import bitfield
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import (
    AnnounceRecord,
    PeerKey,
    PeerRecord,
    Tracker,
    address_group,
    answer_peers,
    asker_record,
    handout,
    owner_of,
    peer_url,
)
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.httpspec import check_json_body
from edgeswarm.protocol.manifest import Manifest, is_content_id
from edgeswarm.protocol.wire import json_response
from edgeswarm.roles.announce import announced_content, batch_items, check_announce, tracker_refusals

if TYPE_CHECKING:
    from edgeswarm.trust import tokens

SHARED = ("peer_id", "port", "have_latency")  # a batch's fields that hold for each of its items
NOT_NOW = "this peer is not a sub-tracker now (no edge promotes it): announce to your edge"

VerifyTicket = Callable[[str | None, str, str | None], Awaitable["tokens.Ticket"]]
ManifestOf = Callable[[str], Awaitable[Manifest]]
Held = Callable[[str], set[int] | None]


class Listing(NamedTuple):
    """What our edge's last answer for a content said: when, the peers it listed, and the URLs of those among them
    it said the operator placed (``"placed"``)."""

    when: float
    records: list[PeerRecord]
    placed: set[str]


NOT_LISTED = Listing(0.0, [], set())


class SubTracker:
    """The sub-tracker of one promoted peer: inactive (404) until ``start``, and again after ``stop``."""

    def __init__(self, verify: VerifyTicket, manifest_of: ManifestOf, held: Held, self_id: str):
        self.verify, self.manifest_of, self.held, self.self_id = verify, manifest_of, held, self_id
        self.tracker: Tracker | None = None  # while promoted
        self.region: Region | None = None
        self.interval = 0.0
        self.heard: dict[str, Listing] = {}  # cid -> the peers our edge's last answer listed
        self._announcers: dict[tuple[str, PeerKey], str] = {}  # (cid, owner and peer id) live here -> its URL
        self._expired = 0.0
        self.counts: Counter[str] = Counter()  # announces (requests) and contents answered, refused by status: kept across promotions

    @property
    def active(self) -> bool:
        return self.tracker is not None

    def start(self, interval: float, region: str | None) -> None:
        """Promoted: track from now, forgetting for a record what the edge forgets (three intervals of silence)."""
        self.interval = interval
        self.region = Region(region, "") if region is not None else None
        self.tracker = Tracker(locality="prefer", ttl=3 * interval)
        self._expired = time.monotonic()
        self._announcers.clear()  # what an announce begun before a demotion left

    def stop(self) -> None:
        """Demoted: forget everything; announces get 404 and their senders go back to their edge."""
        self.tracker = None
        self.heard.clear()
        self._announcers.clear()

    def edge_listed(self, cid: str, count: int, peers: list[dict]) -> None:
        """Our edge's answer for ``cid`` listed these peers (wire form): they are in our answers too, until a ttl passes."""
        if self.tracker is None:
            return
        records, placed = [], set()
        for p in peers:
            try:
                records.append(_listed(p, count))
            except (KeyError, TypeError, ValueError):
                continue  # the peer's own parsing of the answer says so, once
            if p.get("placed") is True:
                placed.add(records[-1].url)
        self.heard[cid] = Listing(time.monotonic(), records, placed)

    # -- POST /announce -------------------------------------------------------------------
    async def post_announce(self, request: web.Request) -> web.Response:
        """One content (``content``) or a batch (``contents``), as at an edge (docs/protocol.md#promoted-peers-as-sub-trackers)."""
        if self.tracker is None:
            raise HttpError(404, NOT_NOW)
        from edgeswarm.trust import tokens  # here: PyJWT costs every peer's (and get's) start-up ~25 ms; few are promoted

        check_json_body(request.headers)
        try:
            doc = jsondoc.loads(await request.read())
        except ValueError:
            raise HttpError(400, "announce body is not JSON (or nests too deep)") from None
        await self._expire()
        self.counts["announces"] += 1
        try:
            if isinstance(doc, dict) and "contents" in doc:
                return json_response(await self._batch(request, doc), compact=True)
            ticket = doc.get("ticket") if isinstance(doc, dict) else None
            raw = ticket if isinstance(ticket, str) else tokens.from_request(request.headers, request.query)
            return json_response(await self._one(request, doc, True, raw), compact=True)
        except HttpError as exc:
            self.counts[f"refused_{exc.status}"] += 1
            raise

    async def _batch(self, request: web.Request, doc: dict) -> dict:
        """Each item as a single announce, with its own ``ticket``; a refused item gets its error in its place."""
        items = batch_items(doc)
        shared = {k: doc[k] for k in SHARED if k in doc}
        answers: dict[str, dict] = {}
        charged = False
        for item in items:
            cid = item.get("content")
            raw = item.get("ticket")
            try:
                answer = await self._one(request, {**item, **shared}, not charged, raw if isinstance(raw, str) else None)
                charged = True
            except HttpError as exc:
                if exc.status == 429 and not charged:
                    raise
                self.counts[f"refused_{exc.status}"] += 1
                answer = {"error": {"status": exc.status, "message": exc.message}}
            if isinstance(cid, str) and is_content_id(cid):
                answers[cid] = answer
        return {"interval": self.interval, "region": self.region.name if self.region else None, "contents": answers}

    async def _one(self, request: web.Request, doc: object, charge: bool, raw: str | None) -> dict:
        """The checks in order: content id (400), ticket (401/403), manifest (404), fields (400), limits (429), after stopped (409).

        The tracker is taken once: a demotion while a manifest is fetched
        lets this announce finish on the tracker it began with.
        """
        tracker = self.tracker
        if tracker is None:
            raise HttpError(404, NOT_NOW)
        doc, cid = announced_content(doc)
        if doc.get("relay") is True:
            raise HttpError(400, "a sub-tracker tracks reachable peers only: announce with 'relay' to your edge")
        from edgeswarm.trust import access, tokens  # here: PyJWT costs every peer's (and get's) start-up ~25 ms; few are promoted

        try:
            ticket = await self.verify(raw, cid, doc.get("peer_id") if isinstance(doc.get("peer_id"), str) else None)
            here = self.region.name if self.region else None
            if ticket.region != here:  # its records say our region: a peer of another one would be traded with as ours
                raise tokens.TokenError(403, f"this ticket is for a peer of region {ticket.region}, not of this sub-tracker's {here}")
        except tokens.TokenError as exc:
            raise access.denied(exc) from None
        manifest = await self.manifest_of(cid)
        a, have = check_announce(doc, manifest)
        address = request.remote or ""
        # No user: a peer is its address and id here, whatever user its ticket names. A managed peer shows its ticket
        # to every peer it fetches from, so one replayed from another address is another peer, not this one.
        record = AnnounceRecord(
            cid=cid,
            peer_id=a.peer_id,
            url=peer_url(address, a.port),
            address=address,
            region=self.region,
            have=have,
            piece_count=manifest.piece_count,
            uploaded=a.uploaded,
            downloaded=a.downloaded,
            event=a.event,
        )
        with tracker_refusals():
            ours = await tracker.announce(time.monotonic(), record, charge)
        self.counts["contents"] += 1
        owner = owner_of(address, None)
        key = (cid, (owner, a.peer_id))
        if a.event == "stopped":
            self._announcers.pop(key, None)
            return {"peers": []}
        self._announcers[key] = record.url
        asker = asker_record(record, 0.0, owner, address_group(address))
        answer = handout(asker, self._candidates(request, record, ours), "prefer", tracker.max_answer, tracker.limits.answer_per_address)
        placed = self.heard[cid].placed if cid in self.heard else set()  # our edge's say, passed on (picker.py, "Startup")
        return {"peers": answer_peers(answer, a.peer_id, lambda rec: rec.url in placed)}

    def _candidates(self, request: web.Request, asker: AnnounceRecord, ours: list[PeerRecord]) -> list[PeerRecord]:
        """Our announcers' best, then the peers our edge listed, then ourselves: each URL once, never the asker's."""
        out: dict[str, PeerRecord] = {}
        when, listed, _ = self.heard.get(asker.cid, NOT_LISTED)
        fresh = listed if time.monotonic() - when <= 3 * self.interval else []
        for rec in [*ours, *fresh, *self._ourselves(request, asker)]:
            if rec.url != asker.url and rec.url not in out:
                out[rec.url] = rec
        return list(out.values())

    def _ourselves(self, request: web.Request, asker: AnnounceRecord) -> list[PeerRecord]:
        """This peer, at the URL the asker reached it by, when it holds any of the content."""
        held = self.held(asker.cid)
        if not held:
            return []
        url = f"http://{request.host}"
        mask = bitfield.to_mask(held, asker.piece_count)
        rec = PeerRecord.from_mask(
            mask, peer_id=self.self_id, url=url, address=urlsplit(url).hostname or "", region=self.region, piece_count=asker.piece_count
        )
        rec.owner, rec.group = "self", address_group(rec.address)
        return [rec]

    async def _expire(self) -> None:
        """Forget silent announcers once an interval (the edge runs the same expiry on a timer)."""
        now = time.monotonic()
        if self.tracker is not None and now - self._expired >= self.interval:
            self._expired = now
            for cid, rec in await self.tracker.expire(now):
                self._announcers.pop((cid, rec.key), None)
            for cid in [c for c, listing in self.heard.items() if now - listing.when > 3 * self.interval]:
                del self.heard[cid]

    # -- what it shows -------------------------------------------------------------------------
    def peers_known(self) -> int:
        """Distinct peers (by URL) in our answers' reach: our announcers, and those our edge listed."""
        return len(set(self._announcers.values()) | {r.url for listing in self.heard.values() for r in listing.records})

    def status(self) -> dict[str, object]:
        return {
            "active": self.active,
            "announces": self.counts["announces"],
            "contents": self.counts["contents"],
            "refused": {k.removeprefix("refused_"): n for k, n in sorted(self.counts.items()) if k.startswith("refused_")},
            "announcers": self.tracker.state_size()["identities"] if self.tracker else 0,
            "peers_known": self.peers_known(),
        }

    def collect(self) -> list:
        """/metrics: a Prometheus collector's families (the peer's registry calls it)."""
        announces = CounterMetricFamily("edgeswarm_subtracker_announces", "POST /announce requests this peer answered as a sub-tracker")
        announces.add_metric([], self.counts["announces"])
        contents = CounterMetricFamily("edgeswarm_subtracker_announce_contents", "Contents announced to this peer as a sub-tracker, taken")
        contents.add_metric([], self.counts["contents"])
        refused = CounterMetricFamily(
            "edgeswarm_subtracker_refused", "Sub-tracker announces or items refused, by status", labels=["status"]
        )
        for k, n in self.counts.items():
            if k.startswith("refused_"):
                refused.add_metric([k.removeprefix("refused_")], n)
        active = GaugeMetricFamily("edgeswarm_subtracker_active", "1 while an edge promotes this peer and it answers announces")
        active.add_metric([], int(self.active))
        known = GaugeMetricFamily("edgeswarm_subtracker_peers", "Peers this sub-tracker knows: its announcers and those its edge listed")
        known.add_metric([], self.peers_known())
        return [announces, contents, refused, active, known]


def _listed(p: dict, count: int) -> PeerRecord:
    """A peer from our edge's answer, as a record to rank: owned by the edge's label for it, never one of our announcers' keys."""
    url = str(p["url"])
    address = urlsplit(url).hostname or ""
    region = Region(p["region"], "") if isinstance(p.get("region"), str) else None
    rec = PeerRecord.from_mask(
        bitfield.decode_mask(str(p["have"]), count), peer_id=str(p["peer_id"]), url=url, address=address, region=region, piece_count=count
    )
    rec.owner, rec.group = f"edge:{url}", address_group(address)
    return rec
