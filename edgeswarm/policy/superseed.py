"""The edge as its region's super-seeder (BitTorrent's BEP 16, per region): which piece ``POST /seed`` hands out.

Sans-IO and deterministic: the edge feeds it what it sent to whom and who left,
time is passed in.  Per (region, content) it keeps the copies the edge sent to
peers of that region that are still live.  A seed request gets the lowest piece
the asker lacks, at or after its ``from``, of which the region holds no live
copy; when there is none the answer is "trade for it with your region" (204).
So N peers asking in turn get N different pieces, and each piece leaves the
edge about once per region; the region spreads it.  A copy to a peer that
stopped or expired stops counting (``leave``/``retain``): its pieces may go
out again.

A copy counts from the moment it is sent, also to a peer that has not
announced the content here yet: a peer opens a swarm and asks for its first
pieces at once, and its announce follows within a round trip.  Waiting for
that announce let each new segment of a live stream leave the edge 5 times a
region instead of once.  Such an *unconfirmed* recipient's copies count for
``UNCONFIRMED_S`` seconds; if no announce of it comes (``observe``) by then,
they stop counting, as a departed peer's do.

A copy held by a *placed seed* (a volunteer that a preheat order made fetch
the whole content) counts only while the region's placed seeds are enough
for the downloaders that came after the first of them was whole
(``SEED_CARRIES`` each): a crowd larger than that, arriving at a few seeds,
needs different pieces of its own to trade, or its readers all ask the seeds
for the same next piece (``observe`` tells which peers are placed seeds, and
since when).  Viewers who finished are not placed seeds: counting them too
cost staggered streams (one start a second, 25-50 peers) about one more edge
copy a region in the simulator, for the downloaders that kept arriving.

A copy the edge sent a while ago may be gone: its recipient evicted it (a
peer with a small ``--max-cache`` keeps a few pieces of a file it fetched
whole) and announces only every interval.  An asker says which pieces it
lacks and none of its neighbours holds (``unseen``); such a piece whose
newest copy in the region went out ``STALE_COPY_S`` or more ago is seeded to
it again.  Counting the copies of a peer that evicted them, the edge
answered "trade with your region" for pieces no one there held, and a
downloader waited for its fallback (10 s) to take them (an adversarial
session: 10.3 s for a 12 MB file against 0.41 s for one nobody had fetched).
A fresh copy is not sent again: the asker's neighbours learn of it within a
HAVE stream's latency, or trade for it within seconds.  Unless its recipient
announced since without it (``observe``'s ``have``), more than
``SENT_GRACE_S`` after it went out: evicted at once by a small cache, it was
counted for the whole ``STALE_COPY_S`` all the same, and the next reader of
the region crawled on its urgent pieces meanwhile (an adversarial session:
4.1 s for an 8 MiB file against 0.2 s, at ``--announce-interval 5``; at the
default interval no announce comes within ``STALE_COPY_S``, and that wait
stays).

Bounded memory: a (region, content) entry goes when its last recipient leaves;
at most ``max_copies`` live copies are kept over all entries, and past that the
least recently used entry's first recipient is forgotten.  Forgetting is safe: the edge
may then send a piece a second time, never withhold one.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field

from edgeswarm.policy.recent import Recent
from edgeswarm.policy.vocabulary import quantile

Region = str | None  # a region's name; None for addresses the region map does not place
MAX_COPIES = 1 << 18  # live copies remembered over all entries (~20 MB); 2^18 pieces of 256 KiB is 64 GiB sent
MAX_SENT_ENTRIES = 4096  # (region, content) byte tallies kept for /status, least recently used dropped
SEED_CARRIES = 4  # downloaders one placed seed's copy is counted for; past that the edge seeds the downloaders too
STALE_COPY_S = 10.0  # seconds after its newest copy went out that an asker's "no neighbour holds it" is believed
SENT_GRACE_S = 2.0  # seconds after a copy went out that an announce without it may have been written before it arrived
UNCONFIRMED_S = 10.0  # seconds a copy to a peer that has not announced the content here counts without its announce
URGENCIES = ("urgent", "background", "none")  # X-Edgeswarm-Urgency of a peer's /piece request; anything else is "none"


@dataclass
class _Entry:
    """One content in one region: the live copies, per recipient and per piece."""

    sent: dict[Hashable, dict[int, float]] = field(default_factory=dict)  # recipient -> piece -> when sent
    copies: Counter[int] = field(default_factory=Counter)  # piece -> live copies in the region
    unconfirmed: dict[Hashable, float] = field(default_factory=dict)  # recipient not announced here yet -> first sent to
    newest: dict[int, float] = field(default_factory=dict)  # piece -> when its newest live copy went out


class SuperSeeder:
    def __init__(self, max_copies: int = MAX_COPIES):
        self.max_copies = max_copies
        self._entries: OrderedDict[tuple[Region, str], _Entry] = OrderedDict()  # least recently used first
        self._total = 0  # live copies over all entries
        self._members: dict[tuple[Region, str], dict[Hashable, float]] = {}  # live peers announcing here -> since when
        self._seeds: dict[tuple[Region, str], dict[Hashable, float]] = {}  # placed seeds, whole at their last announce -> since

    def observe(
        self, now: float, region: Region, cid: str, peer: Hashable, placed_seed: bool, have: Callable[[], Collection[int]] | None = None
    ) -> None:
        """``peer`` of ``region`` announced ``cid``; ``placed_seed``: whole, and placed there by a preheat order
        (``leave`` and ``retain`` forget it); ``have``: the pieces the announce says it holds (read only if the edge
        sent it copies): one sent it more than ``SENT_GRACE_S`` ago that it no longer holds stops counting."""
        key = (region, cid)
        self._members.setdefault(key, {}).setdefault(peer, now)
        entry = self._entries.get(key)
        if entry is not None:
            entry.unconfirmed.pop(peer, None)
            sent = entry.sent.get(peer)
            if sent and have is not None:
                held = have()
                for i in [i for i, t in sent.items() if now - t > SENT_GRACE_S and i not in held]:
                    self.unrecord(region, cid, i, peer)
        if placed_seed:
            self._seeds.setdefault(key, {}).setdefault(peer, now)
        elif peer in self._seeds.get(key, ()):
            self._forget_seed(key, peer)

    def _forget_seed(self, key: tuple[Region, str], peer: Hashable) -> None:
        seeds = self._seeds[key]
        del seeds[peer]
        if not seeds:
            del self._seeds[key]

    def choose(
        self,
        now: float,
        region: Region,
        cid: str,
        have: Collection[int],
        start: int,
        piece_count: int,
        unseen: Collection[int] = (),
    ) -> int | None:
        """The piece for a seed request: lacked, at or after ``start``, no live copy in the region, or ``unseen`` by
        the asker's neighbours with no copy sent within ``STALE_COPY_S``; lowest index.

        None when every piece the asker lacks from ``start`` on already went to a
        live peer of its region: the asker should trade for it there.
        """
        self.expire_unconfirmed(now, region, cid)
        entry = self._entries.get((region, cid))
        if entry is None:
            return next((i for i in range(max(0, start), piece_count) if i not in have), None)
        copies, newest = self._counted(region, cid, entry), entry.newest

        def free(i: int) -> bool:
            return not copies[i] or (i in unseen and now - newest.get(i, -math.inf) >= STALE_COPY_S)

        return next((i for i in range(max(0, start), piece_count) if i not in have and free(i)), None)

    def _counted(self, region: Region, cid: str, entry: _Entry) -> Counter[int]:
        """The live copies that count: all, or, when the region's placed seeds are too few for the downloaders behind
        them, all but theirs (module docstring)."""
        seeds = self._seeds.get((region, cid), {})
        first = min(seeds.values(), default=None)
        behind = 0 if first is None else sum(1 for p, t in self._members[(region, cid)].items() if t >= first and p not in seeds)
        if behind <= SEED_CARRIES * len(seeds):  # no seed, or enough for the downloaders that came after one
            return entry.copies
        counted = Counter(entry.copies)
        for peer in seeds:
            counted.subtract(list(entry.sent.get(peer, {})))  # its pieces, one copy each
        return counted

    def record(self, now: float, region: Region, cid: str, index: int, peer: Hashable) -> None:
        """The edge sent (or is sending) piece ``index`` to ``peer`` of ``region``: one more live copy there."""
        key = (region, cid)
        entry = self._entries.get(key) or self._entries.setdefault(key, _Entry())
        self._entries.move_to_end(key)
        pieces = entry.sent.setdefault(peer, {})
        if peer not in self._members.get(key, ()):
            entry.unconfirmed.setdefault(peer, now)
        if index not in pieces:
            entry.copies[index] += 1
            self._total += 1
        pieces[index] = entry.newest[index] = now
        while self._total > self.max_copies:  # the least recently used entry's first recipient goes
            region, cid = next(iter(self._entries))
            self.leave(region, cid, next(iter(self._entries[(region, cid)].sent)))

    def unrecord(self, region: Region, cid: str, index: int, peer: Hashable) -> None:
        """A recorded copy never arrived (the send failed), or is gone (``observe``): it does not count."""
        entry = self._entries.get((region, cid))
        pieces = entry.sent.get(peer) if entry is not None else None
        if entry is None or pieces is None or pieces.pop(index, None) is None:
            return
        self._uncount(entry, [index])
        if not pieces:
            del entry.sent[peer]
            entry.unconfirmed.pop(peer, None)
        if not entry.sent:
            self._drop((region, cid))

    def leave(self, region: Region, cid: str, peer: Hashable) -> None:
        """``peer`` left the swarm of ``cid`` (stopped, or expired): its copies no longer count."""
        members = self._members.get((region, cid))
        if members is not None and peer in members:
            del members[peer]
            if not members:
                del self._members[(region, cid)]
            if peer in self._seeds.get((region, cid), ()):
                self._forget_seed((region, cid), peer)
        entry = self._entries.get((region, cid))
        if entry is None or peer not in entry.sent:
            return
        entry.unconfirmed.pop(peer, None)
        self._uncount(entry, entry.sent.pop(peer))
        if not entry.sent:
            self._drop((region, cid))

    def retain(self, now: float, region: Region, cid: str, live: Collection[Hashable]) -> None:
        """Only the recipients in ``live`` are still in the swarm: forget the copies of all others (but recent unconfirmed ones)."""
        self.expire_unconfirmed(now, region, cid)
        entry = self._entries.get((region, cid))
        gone = {p for p in entry.sent if p not in live and p not in entry.unconfirmed} if entry is not None else set()
        gone |= {p for p in self._members.get((region, cid), ()) if p not in live}
        for peer in gone:
            self.leave(region, cid, peer)

    def expire_unconfirmed(self, now: float, region: Region, cid: str) -> None:
        """Recipients whose announce did not follow their first copy within ``UNCONFIRMED_S``: their copies stop counting."""
        entry = self._entries.get((region, cid))
        for peer in [p for p, t in entry.unconfirmed.items() if now - t > UNCONFIRMED_S] if entry is not None else []:
            self.leave(region, cid, peer)

    def entries(self) -> list[tuple[Region, str]]:
        """Every (region, content) with copies or members to keep up to date (``retain``)."""
        return list(dict.fromkeys([*self._entries, *self._members]))

    def live_copies(self, region: Region, cid: str) -> int:
        entry = self._entries.get((region, cid))
        return entry.copies.total() if entry is not None else 0

    def size(self) -> int:
        """Live copies remembered, over all entries (bounded by ``max_copies``)."""
        return self._total

    def _uncount(self, entry: _Entry, pieces: Iterable[int]) -> None:
        for i in pieces:
            entry.copies[i] -= 1
            if not entry.copies[i]:
                del entry.copies[i]
                entry.newest.pop(i, None)
            self._total -= 1

    def _drop(self, key: tuple[Region, str]) -> None:
        entry = self._entries.pop(key)
        self._total -= entry.copies.total()


class RegionStats:
    """What /status and /metrics show per region about the edge's seeding: counters, byte tallies, latency reports.

    Bounded: counters are per region (the region map is finite); byte tallies
    per (region, content) keep the ``MAX_SENT_ENTRIES`` most recently used;
    latency reports are per live peer (``retain_latency`` drops the others).
    """

    def __init__(self, max_sent_entries: int = MAX_SENT_ENTRIES):
        self.seeded: Counter[tuple[Region, str]] = Counter()  # (region, "sent" | "none") -> /seed answers
        self.piece_requests: Counter[tuple[Region, str]] = Counter()  # (region, urgency) -> peers' /piece requests
        self.bytes: Counter[tuple[Region, str]] = Counter()  # (region, "seed" | "piece") -> bytes sent to peers
        self._sent: Recent[tuple[Region, str], int] = Recent(max_sent_entries)  # (region, cid) -> bytes via /seed and /piece
        self._latency: dict[Region, dict[Hashable, tuple[float, float]]] = {}

    def sent(self, region: Region, cid: str, endpoint: str, nbytes: int) -> None:
        self.bytes[(region, endpoint)] += nbytes
        key = (region, cid)
        self._sent[key] = self._sent.get(key, 0) + nbytes

    def report_latency(self, region: Region, peer: Hashable, p50_p95: tuple[float, float]) -> None:
        self._latency.setdefault(region, {})[peer] = p50_p95

    def retain_latency(self, live: Collection[Hashable]) -> None:
        for region in list(self._latency):
            reports = self._latency[region]
            for peer in [p for p in reports if p not in live]:
                del reports[peer]
            if not reports:
                del self._latency[region]

    def latency(self, region: Region) -> dict[str, float | int] | None:
        """The region's have-latency: the median of its peers' reported p50s, the 95th percentile of their p95s."""
        reports = list(self._latency.get(region, {}).values())
        if not reports:
            return None
        return {"p50": quantile([r[0] for r in reports], 0.5), "p95": quantile([r[1] for r in reports], 0.95), "peers": len(reports)}

    def regions(self) -> set[Region]:
        keys = [*self.seeded, *self.piece_requests, *self.bytes]
        return {r for r, _ in keys} | set(self._latency)

    def copies(self, region: Region, sizes: dict[str, int]) -> dict[str, float]:
        """Per content: bytes sent to the region over the content's size (``sizes``: content id -> bytes)."""
        return {cid: round(n / sizes[cid], 3) for (r, cid), n in self._sent.items() if r == region and sizes.get(cid)}
