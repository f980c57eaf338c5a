"""The edge's side of preheating peers: orders from the operator, handed to the region's volunteering peers.

``POST /preheat`` (the operator, from loopback or ``--internal`` networks)
leaves an order per path: have this share of the region's volunteers fetch
and seed it.  ``GET /preheat/orders`` (a peer whose ``--accept-preheat``
allows it) registers the peer as a volunteer with the room it offers and
answers the orders assigned to it; policy/preheatorders.py decides which.
The peer holds that request open (a long poll, ``since`` and ``wait``) so a
new order reaches it at once, whatever the announce interval.  ``GET /preheat`` shows the orders and whom they went to.
Peers fetch through their swarm like any download, so the edge sends each
piece about once per region (docs/protocol.md#preheating-peers).

The orders are kept in ``CACHE/preheat-orders.json`` (their expiry as a
wall-clock time), so a restarted edge goes on handing them out; the peers
chosen are not kept: rendezvous hashing chooses the same ones again as they
volunteer.  An order follows its path: a version published over it is
ordered in its place within FOLLOW_S (``follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import Counter
from typing import TYPE_CHECKING

from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.policy.preheatorders import MAX_DECLINED, Order, PreheatOrders
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.httpspec import PEER_HEADER, check_json_body
from edgeswarm.protocol.manifest import is_content_id
from edgeswarm.protocol.paths import file_request_path
from edgeswarm.protocol.units import ascii_decimal
from edgeswarm.protocol.wire import json_response
from edgeswarm.trust import access, tokens
from edgeswarm.wholefile import SaidOnce

if TYPE_CHECKING:
    from edgeswarm.roles.edge import Edge

MAX_PATHS = 100  # paths in one order request
MAX_VOLUNTEERS = 1 << 16  # volunteers an edge remembers at once: beyond, newcomers wait (503)
MAX_TTL = 30 * 86400.0  # an order lasts at most a month
ORDERS_FILE = "preheat-orders.json"
log = logging.getLogger(__name__)
LEFT_S = 5.0  # seconds a volunteer that said it leaves is not taken back by a poll (``_rejoins``)
FOLLOW_S = 10.0  # seconds between two looks at whether the paths ordered were published again (``follow``)
MAX_WAIT = 30.0  # seconds a volunteer's poll is held at most: under the worker forwarder's 60 s, and a volunteer re-registers with each


def _declined(text: str) -> frozenset[str]:
    """The content ids a volunteer's poll names as ``declined`` (comma-separated); 400 for anything else."""
    if not text:
        return frozenset()
    cids = text.split(",")
    if len(cids) > MAX_DECLINED or not all(is_content_id(c) for c in cids):
        raise HttpError(400, f"preheat orders: 'declined' must be at most {MAX_DECLINED} content ids, comma-separated")
    return frozenset(cids)


class PreheatDesk:
    def __init__(self, edge: Edge):
        assert edge.tracker is not None, "only a p2p edge knows its region's peers"
        self.edge = edge
        self.tracker = edge.tracker
        self.orders = PreheatOrders(forget_after=3 * edge.tracker.interval)
        self.orders.eligible = self._may_hold
        self._grants: dict[tuple[str, str], tuple[tokens.Grant, str | None]] = {}  # --require-token: a volunteer's token, region
        self.path = edge.cache / ORDERS_FILE
        self._file = SaidOnce(self.path, log, "preheat orders not saved to %s (%s): a restart will forget them")
        self._load()
        self.version = time.time_ns() // 1_000_000  # bumped by every order taken; from the clock, so a restart does not reuse one
        self._changed = asyncio.Event()
        self._closing = False
        self._unfollowed: dict[str, str] = {}  # path -> why ``follow`` could not look it up (said once)
        self._left: dict[tuple[str, str], float] = {}  # volunteers that said they leave -> when (``_rejoins``)

    def _load(self) -> None:
        """The orders a previous run of this edge took, those not expired; a damaged file is one line, and no orders."""
        try:
            doc = jsondoc.loads(self.path.read_text(encoding="utf-8"))
            now, wall = time.monotonic(), time.time()
            orders = [
                Order(
                    str(o["content"]), str(o["path"]), int(o["size"]), o["region"], float(o["share"]), now + float(o["expires_at"]) - wall
                )
                for o in doc
            ]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("preheat orders in %s not read (%s): starting without them", self.path, exc)
            return
        for order in orders:
            if order.expires > now and (order.region is None or isinstance(order.region, str)):
                with contextlib.suppress(ValueError):  # a share out of range
                    self.orders.add(order)
        if self.orders.orders:
            log.info("preheat: %d orders kept from the last run", len(self.orders.orders))

    def _save(self) -> None:
        """The orders on disk, whole or not at all (a temporary file renamed), for the next run of this edge; a failure
        (a full disk) is one warning until a save succeeds, not one per order taken."""
        now, wall = time.monotonic(), time.time()
        doc = [
            {
                "content": o.content,
                "path": o.path,
                "size": o.size,
                "region": o.region,
                "share": o.share,
                "expires_at": wall + o.expires - now,
            }
            for o in self.orders.orders.values()
        ]
        self._file.write(json.dumps(doc).encode())

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def following(self, _: web.Application):
        """``follow`` for as long as the edge runs, in the worker that answers the orders (the primary, or the only)."""
        task = None if self.edge.forwards_tracker else asyncio.create_task(self._follow_loop())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self.follow()
            except Exception:  # a bug must not end it: the orders would stay on withdrawn versions
                log.exception("preheat: following the orders' paths failed")

    async def follow(self) -> None:
        """Orders of a path published again move to its new version: they stayed on the withdrawn one for their life (a
        month at most), pinned on the volunteers' disks, and the new one was never preheated (an adversarial session).
        A path withdrawn (404) ends its order; one this edge cannot look up now (its parent down) keeps it as it is."""
        moved = 0
        for order in list(self.orders.orders.values()):
            try:
                signed = await self.edge.resolve(order.path, True)
            except HttpError as exc:
                if exc.status == 404 and (order.content, order.region) in self.orders.orders:
                    log.info("preheat %s: withdrawn (%s): its order ends", order.path, exc.message)
                    self.orders.drop(order)
                    moved += 1
                else:
                    self._unfollowable(order, exc.message)
                continue
            except Exception as exc:  # the parent down: asked again at the next look
                self._unfollowable(order, str(exc))
                continue
            self._unfollowed.pop(order.path, None)
            if signed.content_id != order.content and (order.content, order.region) in self.orders.orders:
                log.info(
                    "preheat %s: published again (%s): its order moves to it from %s",
                    order.path,
                    signed.content_id[:12],
                    order.content[:12],
                )
                self.orders.add(dataclasses.replace(order, content=signed.content_id, size=signed.manifest.size))
                moved += 1
        if moved:
            await asyncio.to_thread(self._save)
            self._bump()

    def _rejoins(self, volunteer: tuple[str, str]) -> bool:
        """A poll of a volunteer that said it leaves volunteers it again only LEFT_S later: one in flight as it stopped
        (or passed on by another worker) arrived after its leaving and made it a volunteer again, holding places."""
        now = time.monotonic()
        while self._left and now - next(iter(self._left.values())) >= LEFT_S:  # the oldest first: amortized O(1)
            del self._left[next(iter(self._left))]
        return volunteer not in self._left

    def _unfollowable(self, order: Order, why: str) -> None:
        """``follow`` could not look ``order``'s path up: said once while the reason lasts."""
        if self._unfollowed.get(order.path) != why:
            log.info("preheat %s: not looked up (%s); its order stays on %s", order.path, why, order.content[:12])
        self._unfollowed[order.path] = why

    async def close(self) -> None:
        """Shutdown: held polls are answered now, not at the server's shutdown timeout."""
        self._closing = True
        self._changed.set()

    async def _held(self, request: web.Request) -> None:
        """Wait while the poll's ``since`` is the current version, for at most its ``wait`` (capped: MAX_WAIT, a third of forget_after)."""
        since, wait = ascii_decimal(request.query.get("since", "")), request.query.get("wait", "")
        if since != self.version or self._closing:
            return
        try:
            asked = float(wait)
        except ValueError:
            asked = math.nan
        if not asked >= 0:  # nan and negatives too: not a duration
            raise HttpError(400, "preheat orders: 'wait' must be seconds (0 or more)")
        seconds = min(asked, MAX_WAIT, self.orders.forget_after / 3)
        if not seconds > 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    def _operator(self, request: web.Request) -> None:
        if not self.edge._trusted_client(request):
            raise HttpError(
                403,
                "preheat orders are taken from this edge's --internal networks, and from loopback addressing the edge by an "
                "IP address or localhost, only",
            )

    async def post_preheat(self, request: web.Request) -> web.Response:
        """``POST /preheat`` {"paths": [...], "share": 0.25, "region": "east", "ttl": 86400}: an order per path."""
        self._operator(request)
        check_json_body(request.headers)
        try:
            doc = jsondoc.loads(await request.read())
        except ValueError:
            raise HttpError(400, "preheat body is not JSON") from None
        paths, share, ttl = (doc.get(k) if isinstance(doc, dict) else None for k in ("paths", "share", "ttl"))
        if not isinstance(paths, list) or not 0 < len(paths) <= MAX_PATHS or not all(isinstance(p, str) for p in paths):
            raise HttpError(400, f"preheat field 'paths' must list 1 to {MAX_PATHS} paths")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise HttpError(400, "preheat field 'share' must be a number more than 0 and at most 1 (0.25: a quarter of the volunteers)")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
            raise HttpError(400, f"preheat field 'ttl' must be seconds, more than 0 and at most {MAX_TTL:g}")
        region = doc.get("region") if self.tracker.regions else None  # without a region map, all its peers are one region
        if region is not None and not isinstance(region, str):
            raise HttpError(400, "preheat field 'region' must be a region name")
        if region is not None and self.tracker.regions and region not in {r.name for r in self.tracker.regions.regions}:
            raise HttpError(400, f"preheat: no region {region[:64]!r} in this edge's region map")  # was taken: 0 of 0 asked
        # every path resolved before any order is taken: a missing one was a 404 that left the others' orders standing
        rels = [file_request_path("/" + path.lstrip("/")) for path in paths]
        signed = [await self.edge.resolve(rel, True) for rel in rels]
        now = time.monotonic()
        answer = []
        for rel, one in zip(rels, signed, strict=True):
            order = Order(one.content_id, rel, one.manifest.size, region, float(share), now + float(ttl))
            self.orders.add(order)
            answer.append(self._row(order))
        self.orders.expire(now)
        await asyncio.to_thread(self._save)
        self._bump()
        return json_response({"region": region, "volunteers": self.orders.count(region), "orders": answer})

    def _row(self, order: Order) -> dict:
        chosen = self.orders.chosen(order, time.monotonic())
        return {
            "path": order.path,
            "content": order.content,
            "region": order.region,
            "share": order.share,
            "volunteers": self.orders.count(order.region),
            "wanted": self.orders.wanted(order),
            "chosen": sorted(pid for _, pid in chosen),
        }

    async def get_preheat(self, request: web.Request) -> web.Response:
        """``GET /preheat``: the orders, their volunteers and whom each went to (operators only: it names peers)."""
        self._operator(request)
        self.orders.expire(time.monotonic())
        regions = Counter(s.region for s in self.orders.volunteers.values())
        return json_response(
            {
                "volunteers": {str(r) if r is not None else "unmapped": n for r, n in regions.items()},
                "orders": [self._row(o) for o in sorted(self.orders.orders.values(), key=lambda o: (o.path, str(o.region)))],
            }
        )

    async def _covers(self, request: web.Request, path: str) -> bool:
        """The request's token covers ``path`` (403: no); a missing or bad token is the request's 401."""
        try:
            await self.edge.grant(request, path, required=True)
            return True
        except HttpError as exc:
            if exc.status == 403:
                return False
            raise

    def _keep_grant(self, volunteer: tuple[str, str], grant: tokens.Grant, region: str | None) -> None:
        """A volunteer's verified token: only paths it covers are assigned to it (``_may_hold``)."""
        if self._grants.get(volunteer) != (grant, region):
            self._grants[volunteer] = (grant, region)
            self.orders.changed()
        if len(self._grants) > 2 * len(self.orders.volunteers) + 64:  # those that left
            self._grants = {v: g for v, g in self._grants.items() if v in self.orders.volunteers}

    def _may_hold(self, volunteer: tuple[str, str], order: Order) -> bool:
        """Under --require-token, a volunteer whose token covers the order's path (a volunteer chosen for a path its
        token did not cover kept its place, unfetched: an adversarial session); else any."""
        if not self.edge.require_token:
            return True
        kept = self._grants.get(volunteer)
        if kept is None or kept[0].expires <= time.time():  # an expired token fetches nothing: chosen, it held a place
            return False
        try:
            access.authorize(kept[0], order.path, kept[1])  # the rule its polls' listing is filtered by (_covers)
        except tokens.TokenError:
            return False
        return True

    async def get_orders(self, request: web.Request) -> web.Response:
        """``GET /preheat/orders?peer_id=ID&room=BYTES[&since=VERSION&wait=SECONDS]``: a peer volunteers, and hears what to fetch and seed.

        With ``since`` equal to the edge's current ``version`` the answer waits
        (up to ``wait`` seconds) for the next order, so volunteers hear of one
        at once; without, or with an older version, it comes at once.
        """
        peer_id = request.query.get("peer_id", "")
        if not 0 < len(peer_id) <= tokens.MAX_PEER_ID_LENGTH or not peer_id.isprintable():
            raise HttpError(400, "preheat orders: 'peer_id' must be 1-64 printable characters")
        if request.headers.get(PEER_HEADER) != peer_id:  # a page cannot send it (CORS allows it no such header): twelve
            # <img> tags on any site registered twelve volunteers that never fetch, at each visitor's address, and orders
            # went to them (an adversarial session; Sec-Fetch-Site, tried first, is not sent to a plain-http edge).  A 404:
            # peers from before 2026-12-07, which do not send it, take it for an edge with no orders and ask again an
            # interval on; a 403 they retried every 5 s, for good, a line at each end each time (an adversarial session)
            raise HttpError(
                404, f"preheat orders are for peer daemons: send {PEER_HEADER}: the peer_id (a peer from before 2026-12-07: upgrade it)"
            )
        room = ascii_decimal(request.query.get("room", ""))
        if room is None:
            raise HttpError(400, "preheat orders: 'room' must be the bytes this peer gives to preheated content")
        address = request.remote or ""
        volunteer = (address, peer_id)
        grant = None
        if self.edge.require_token:  # verified, not only present: "Bearer garbage" volunteered and took places
            try:
                grant = access.authenticated(request, (await self.edge._store()).public_key, required=True)
            except HttpError:  # refused, and the token it volunteered with has expired: it can no longer fetch, its
                kept = self._grants.get(volunteer)  # places go to others (an adversarial session); a refused poll alone
                if kept is not None and kept[0].expires + tokens.LEEWAY <= time.time():  # is anybody's at its address
                    self.orders.forget({volunteer})
                raise
        now = time.monotonic()
        known = self.orders.volunteers
        if volunteer not in known:
            if len(known) >= MAX_VOLUNTEERS:
                raise HttpError(503, "this edge has all the preheat volunteers it can keep", {"Retry-After": "60"})
            if self.orders.at(address) >= self.edge.config.max_peer_ids:
                raise HttpError(429, f"at most {self.edge.config.max_peer_ids} volunteering peer ids per address")
        if request.query.get("leaving") == "1":  # the peer stops: its places go to others at once (Volunteer.leave)
            placed = any(volunteer in peers for peers in self.orders.assigned.values())
            if volunteer in self.orders.volunteers:  # a leaving of an id never seen is nothing to remember
                self.orders.forget({volunteer})
                self._rejoins(volunteer)  # those left LEFT_S ago go: kept, they were 1 MB/s for a loop of new ids (a review)
                self._left.pop(volunteer, None)  # kept in the order of their leavings, for _rejoins
                if len(self._left) < MAX_VOLUNTEERS:
                    self._left[volunteer] = time.monotonic()
            if placed:
                self._bump()  # the held polls answer: the volunteers that take its places hear of it now
            return json_response({"interval": self.tracker.interval, "version": self.version, "orders": []})
        if volunteer in self._left and not self._rejoins(volunteer):  # a poll of a volunteer that left: late, or its restart
            # waits out the window, not registered: a late one ends there; a restart's was answered at once and asked
            # again at once, 9 000 polls in 5 s (a review): its answer names an older version, so its next comes at once
            await asyncio.sleep(max(0.0, LEFT_S - (time.monotonic() - self._left[volunteer])))
            return json_response({"interval": self.tracker.interval, "version": self.version - 1, "orders": []})
        region = self.edge.region_name(request)
        if grant is not None:
            self._keep_grant(volunteer, grant, region)
        declined = _declined(request.query.get("declined", ""))
        self.orders.seen(now, volunteer, region, room, declined)
        await self._held(request)
        now = time.monotonic()
        if volunteer in self.orders.volunteers:  # not if it left meanwhile: its poll, cut, ends here (Volunteer.leave)
            self.orders.seen(now, volunteer, region, room, declined)  # still here: a held poll is a live volunteer
        orders = self.orders.for_volunteer(now, volunteer)
        if self.edge.require_token:  # only what the peer's token may fetch
            orders = [o for o in orders if await self._covers(request, o.path)]
        return json_response(
            {
                "interval": self.tracker.interval,
                "version": self.version,
                "region": region,
                "orders": [{"path": o.path, "content": o.content, "size": o.size} for o in orders],
            }
        )
