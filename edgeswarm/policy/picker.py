"""Which piece to ask which source for next: the heart of the download engine.

Sans-IO and deterministic (time is passed in), so the download engine
(edgeswarm.policy.engine) drives it alike in the peer daemon and in the swarm
simulator, and tests replay it.  The rules, after BitTorrent and
the hybrid CDN-P2P literature:

* Streaming: the pieces just ahead of the reader are *urgent*.  Any source
  that holds one takes it first; the edge takes one no peer holds, or one a
  peer has had in flight for longer than its deadline (then two sources race
  and the first verified copy wins).
* Otherwise peers pick rarest-first among what they hold, so the swarm keeps
  many distinct pieces in circulation; ties are broken by a per-downloader
  hash so two newcomers do not chase the same piece.
* The edge fills only what peers cannot deliver: pieces no known peer holds,
  or anything when the engine says peers are not delivering (``fallback``).
  An edge that seeds its region (``POST /seed``) is asked by the engine for
  non-urgent pieces instead: then the picker gives it urgent ones only
  (``pick_urgent``), and the edge chooses what the region lacks
  (p2p-media-loader's HTTP window near the playhead, P2P window beyond it).
* Startup: a reader that starts where a neighbour well ahead of it holds
  its first pieces, all of them (a late viewer of a video others are
  watching or have watched, a seek into what they watched), takes them
  (``startup``) from the edge, and nothing else is fetched until they are
  in or ``deadline`` has passed: those neighbours' uplinks carry the
  streams already playing, and a player waits for its whole startup buffer
  (p2p-media-loader's HTTP window at the playhead).  A crowd pressing play
  together finds no neighbour that far ahead within ``STARTUP_DECIDE`` and
  trades those pieces as it trades the rest, and so does a reader behind a
  seed the operator placed (preheat): startups are what it is there for.
* Downloads: ``DOWNLOAD_READERS`` reads of one file waiting for pieces at
  once (``reads_waiting``) are a segmented downloader's connections (aria2c
  -x8, a download manager), not a player (one read, a second for the index
  at the end or a seek; one left idle waits for nothing): there is no
  playback to keep, so no startup, and no wait of a reader's makes the edge
  step in: as for a whole file, the edge takes what no peer holds and races
  a peer that is late (with a complete neighbour at 8 MB/s, aria2c -x8
  through a gateway drew 42 % of a file from the edge, where one connection
  draws its startup window).
* Endgame: when every missing piece is already requested, a source may
  duplicate a request still in flight elsewhere, so one slow source cannot
  hold up the tail.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterable

STARTUP_DECIDE = 0.5  # seconds after a reader starts within which a neighbour holding its startup pieces makes them the edge's
DOWNLOAD_READERS = 4  # reads of one file at once that make it a download, not a player's (module docstring)
ENDGAME_COPIES = 2  # at most this many sources race for one piece
WORKING = 2.0  # seconds since a peer source last asked for a piece within which it counts as worked on


class PiecePicker:
    def __init__(self, piece_count: int, have: Iterable[int] = (), seed: str = "", deadline: float = 2.0):
        self.count = piece_count
        self.have: set[int] = set(have)
        self.availability = [0] * piece_count
        self.deadline = deadline
        self.whole_file = False
        self.wanted: set[int] = set()  # streaming: the reader's window
        self.paused: set[str] = set()  # peers choking us or backed off
        self.urgent: list[int] = []  # reading order
        self.position = 0  # streaming: the reader's piece
        self.downloading = False  # DOWNLOAD_READERS reads at once (module docstring)
        self.awaited: dict[int, float] = {}  # piece -> since when a reader waits for it
        self.startup: dict[int, float] = {}  # piece -> since when a reader's startup wants it from the edge (``starting``)
        # readers' first pieces, when, and how many pieces a neighbour ahead holds (_ahead): not decided yet
        self._starts: list[tuple[frozenset[int], float, int]] = []
        self._placed: set[str] = set()  # seeds the operator placed (preheat): a startup behind them is theirs
        self.only_awaited = False  # our store cannot write (a full disk): what no reader waits for would be fetched in vain
        self.patience = 0.5  # seconds a reader waits for a busy holder before the edge may step in
        # the same with an edge that seeds: a piece reaches the region from it anyway, and a neighbour
        # serving several requesters at 2 MB/s takes about a second for a 256 KiB piece
        self.seed_patience = 1.0
        self._peers: dict[str, set[int]] = {}
        self._asked: dict[str, float] = {}  # peer source -> when its worker last asked for a piece
        self._in_flight: dict[int, dict[str, float]] = {}  # piece -> {source: started}
        self._edge_sources: set[str] = set()  # the names edges go by in _in_flight
        self._tiebreak = [int.from_bytes(hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=4).digest()) for i in range(piece_count)]

    # -- what others hold ------------------------------------------------------------
    def peer_has(self, peer: str, pieces: Iterable[int]) -> None:
        """Replace what we know ``peer`` holds (from an announce answer or a bitfield)."""
        new = {i for i in pieces if 0 <= i < self.count}
        old = self._peers.get(peer, set())
        for i in old - new:
            self.availability[i] -= 1
        for i in new - old:
            self.availability[i] += 1
        self._peers[peer] = new

    def peer_got(self, peer: str, index: int) -> None:
        held = self._peers.setdefault(peer, set())
        if 0 <= index < self.count and index not in held:
            held.add(index)
            self.availability[index] += 1

    def placed(self, peer: str, placed: bool) -> None:
        """Whether ``peer`` is a seed the operator placed (the tracker says so)."""
        if placed:
            self._placed.add(peer)
        else:
            self._placed.discard(peer)

    def peer_gone(self, peer: str) -> None:
        self.peer_has(peer, ())
        self._placed.discard(peer)
        del self._peers[peer]
        self._asked.pop(peer, None)
        for index, sources in list(self._in_flight.items()):  # a piece left with no source is not in flight (finish's rule)
            sources.pop(peer, None)
            if not sources:
                del self._in_flight[index]

    def held(self, peer: str) -> set[int]:
        """What we know ``peer`` holds (a copy)."""
        return set(self._peers.get(peer, ()))

    def useful(self, peer: str) -> int:
        """How many pieces we still want that ``peer`` holds."""
        held = self._peers.get(peer, set())
        return len(held - self.have) if self.whole_file else len((held & self.wanted) - self.have)

    # -- what we want ------------------------------------------------------------------
    def stream(self, position: int | Iterable[int], urgent: int, window: int) -> None:
        """Readers wait at these pieces: want ``window`` pieces from each, the first ``urgent`` of each urgently.

        Consecutive pieces are one reader (a response waits on its read-ahead
        at once), whose window runs from its first piece past its last.  The
        urgent pieces alternate between readers, so a player's second
        connection (the index at the end of an MP4, a seek) is served beside
        the first instead of waiting behind its read-ahead; the reader that has
        waited longest first (``_by_wait``): in file order, 64 readers at once
        kept those near the end waiting past the gateway's read timeout while
        new ones nearer the start went first (an adversarial session: random
        1-byte ranges, 82 of 3 000 answered 504).
        """
        runs: list[list[int]] = []  # [first, last] waited piece of each reader
        for p in sorted({position} if isinstance(position, int) else set(position)):
            if runs and p == runs[-1][1] + 1:
                runs[-1][1] = p
            else:
                runs.append([p, p])
        self.position = runs[0][0]
        runs.sort(key=lambda run: self._by_wait(run[0]))
        self.wanted = {i for first, last in runs for i in range(first, min(self.count, last + window))}
        lists = [[i for i in range(first, min(self.count, last + urgent)) if i not in self.have] for first, last in runs]
        self.urgent = list(dict.fromkeys(i for rank in itertools.zip_longest(*lists) for i in rank if i is not None))

    def readers_at(self, positions: Iterable[int], urgent: int, window: int) -> None:
        """Readers wait at these pieces: streaming, their windows (``stream``); a whole file, they are its urgent pieces."""
        if self.whole_file:
            self.urgent = sorted((i for i in set(positions) if i not in self.have), key=self._by_wait)[:urgent]
        else:
            self.stream(positions, urgent, window)

    def reads_waiting(self, n: int) -> bool:
        """``n`` reads of the file wait for pieces now: ``DOWNLOAD_READERS`` of them are a download (module docstring),
        which has no startup.  Whether a startup was dropped."""
        self.downloading = n >= DOWNLOAD_READERS or (self.downloading and n >= DOWNLOAD_READERS - 1)
        return self.downloading and self.drop_startup()

    def _by_wait(self, index: int) -> tuple[float, int]:
        """The order readers' pieces are served in: the longest waited for first, then in file order."""
        return self.awaited.get(index, math.inf), index

    def wait_for(self, index: int, now: float) -> None:
        """A reader waits for ``index`` from ``now`` on (the first reader's time counts)."""
        self.awaited.setdefault(index, now)

    def start_reader(self, pieces: Iterable[int], now: float, window: int) -> None:
        """A reader starts on these pieces: the edge's if a neighbour well ahead of it (``_ahead``) is known to hold them within
        ``STARTUP_DECIDE`` (what neighbours hold comes from tracker answers and HAVE streams meanwhile), for
        ``deadline`` at most (module docstring).  ``window``: the startup window in pieces, of which ``pieces`` may
        be fewer (a short read); a neighbour is well ahead at twice the window in, whatever the read's length."""
        wanted = frozenset(i for i in pieces if i not in self.have)
        if wanted:
            self._starts.append((wanted, now, 2 * window))
            self.starting(now)

    def starting(self, now: float) -> bool:
        """Whether a reader's startup waits for the edge.  Readers' starts are decided here; startup pieces older than
        ``deadline`` are anyone's again (an edge that does not deliver them must not keep the download waiting)."""
        if self._starts:
            self._decide_starts(now)
        if self.startup and now - min(self.startup.values()) > self.deadline:
            self.startup = {i: t for i, t in self.startup.items() if now - t <= self.deadline}
        return bool(self.startup)

    def _decide_starts(self, now: float) -> None:
        undecided = []
        for wanted, since, reach in self._starts:
            missing = wanted - self.have
            if not missing or now - since > STARTUP_DECIDE:
                continue
            if any(self._ahead(peer, held, missing, reach) for peer, held in self._peers.items()):
                for i in missing:
                    self.startup.setdefault(i, now)
            else:
                undecided.append((wanted, since, reach))
        self._starts = undecided

    def startup_changes_in(self, now: float) -> float | None:
        """Seconds until a startup ends by the clock (its deadline, or a start's ``STARTUP_DECIDE``), if one is on:
        nothing else tells the workers waiting on it, which looked again only after their timeout (a second)."""
        ends = [t + self.deadline for t in self.startup.values()] + [since + STARTUP_DECIDE for _, since, _ in self._starts]
        return max(0.0, min(ends) - now) if ends else None

    def drop_startup(self) -> bool:
        """No reader waits for a startup any more (its client went away), or no edge can send one now: its pieces
        are anyone's at once.  Pieces already requested from the edge come as they come.  Whether there was one
        (decided or not yet)."""
        dropped = bool(self.startup or self._starts)
        self.startup.clear()
        self._starts.clear()
        return dropped

    def _ahead(self, peer: str, held: set[int], missing: frozenset[int], reach: int) -> bool:
        """``peer`` holds all of a starting reader's ``missing`` pieces and is well ahead of it: a viewer ``reach``
        pieces in (twice the startup window), or one done, not a fellow starter; a seed the operator placed is there
        for startups."""
        if not missing <= held or len(held) < min(self.count, reach):
            return False
        return len(held) < self.count or peer not in self._placed

    def stop_waiting(self, index: int) -> None:
        """No reader waits for ``index`` any more."""
        self.awaited.pop(index, None)

    def lost(self, index: int) -> None:
        """A piece counted as held is not in the store (evicted, or bad on disk): it is wanted again."""
        self.have.discard(index)

    def pause(self, peer: str) -> None:
        """``peer`` choked us or failed: ask it nothing until ``unpause``."""
        self.paused.add(peer)

    def unpause(self, peer: str) -> None:
        self.paused.discard(peer)

    def is_paused(self, peer: str) -> bool:
        return peer in self.paused

    def whole(self) -> None:
        self.whole_file = True

    def missing(self) -> list[int]:
        pool = range(self.count) if self.whole_file else sorted(self.wanted)
        return [i for i in pool if i not in self.have]

    def done(self) -> bool:
        return not self.missing()

    def complete(self) -> bool:
        """Every piece of the file is held, whether it was fetched whole or read by a player."""
        return len(self.have) >= self.count

    def wants(self, index: int) -> bool:
        """Is ``index`` one we still need (cheaper than ``index in missing()``)?"""
        return index not in self.have and (self.whole_file or index in self.wanted)

    def is_urgent(self, index: int) -> bool:
        """Does a reader need ``index`` now (its deadline window, or it is waiting for it)?"""
        return index in self.urgent or index in self.awaited or index in self.startup

    def seed_from(self) -> int:
        """The lowest piece we are interested in, for the edge's seeding: the reader's, or 0 for a whole file."""
        return 0 if self.whole_file else self.position

    def claimed(self) -> set[int]:
        """Pieces held or being fetched: what an edge should not seed to us again."""
        return self.have | set(self._in_flight)

    def unseen(self, start: int) -> set[int]:
        """Pieces from ``start`` on that we lack, nobody is fetching, and no neighbour we know holds: the edge seeds
        one of them though it sent the region a copy long ago (superseed.py: its recipient may have evicted it)."""
        flying, have, availability = self._in_flight, self.have, self.availability
        return {i for i in range(max(0, start), self.count) if not availability[i] and i not in have and i not in flying}

    # -- transfers ---------------------------------------------------------------------
    def start(self, source: str, index: int, now: float, edge: bool = False) -> None:
        """``source`` is fetching ``index`` (since ``now``, or since it first said so); ``edge``: it is an edge."""
        self._in_flight.setdefault(index, {}).setdefault(source, now)
        if edge:
            self._edge_sources.add(source)

    def finish(self, source: str, index: int, ok: bool) -> None:
        """A transfer ended; ``ok`` means the piece was verified and stored."""
        sources = self._in_flight.get(index)
        if sources is not None:
            sources.pop(source, None)
            if not sources or ok:
                del self._in_flight[index]
        if ok:
            self.have.add(index)
            self.startup.pop(index, None)
            if index in self.urgent:
                self.urgent.remove(index)

    def in_flight(self, index: int) -> set[str]:
        return set(self._in_flight.get(index, ()))

    # -- the decision --------------------------------------------------------------------
    def pick(
        self, source: str, now: float, edge: bool = False, fallback: bool = False, tail: bool = False, seeding: bool = False
    ) -> int | None:
        """The next piece to request from ``source``, or None if it should wait.

        ``tail``: the file's last few pieces; the edge may also take one whose
        every holder is choking us or backing off, so the file does not wait
        on an optimistic unchoke.  In the endgame the edge races a peer's
        request only once it is late (``deadline``): a neighbour sharing a
        1 MB/s uplink among six takes over a second for a piece, and each race
        is a copy the edge pays for.
        """
        if not edge:
            self._asked[source] = now
        if source in self.paused:
            return None
        urgent = self.pick_urgent(source, now, edge, fallback, seeding)
        if urgent is not None or self.startup:  # a startup has the viewer's downlink to itself (pick_urgent's ``starting``)
            return urgent
        usable = self._usable(source, edge)
        free = [i for i in self.missing() if usable(i) and i not in self._in_flight]
        if edge and not fallback:
            free = [i for i in free if self.availability[i] == 0 or (tail and not self._reachable_holder(i))]
        if free:
            return min(free, key=lambda i: (self.availability[i], self._tiebreak[i]))
        if any(i not in self._in_flight for i in self.missing()):
            return None  # unrequested pieces remain, just not from this source
        late = self._endgame(usable, now - self.deadline) if edge else None
        return late if late is not None or (edge and not fallback) else self._endgame(usable)

    def pick_spread(self, source: str) -> int | None:
        """A piece to take from ``source`` so that the crowd holds different pieces: one it holds that nobody reads yet
        (not urgent) and nobody of ours is fetching, the rarest, ties broken by this downloader's own order."""
        if source in self.paused or self.only_awaited or self.startup:
            return None
        holds = self._peers.get(source, set())
        free = [i for i in self.missing() if i in holds and i not in self._in_flight and not self.is_urgent(i)]
        return min(free, key=lambda i: (self.availability[i], self._tiebreak[i])) if free else None

    def pick_urgent(
        self, source: str, now: float, edge: bool = False, fallback: bool = False, seeding: bool = False, race: bool = False
    ) -> int | None:
        """A piece of the reader's urgent window for ``source``, or None.

        A peer takes any it holds; the edge one no peer holds, one a reader has
        waited ``patience`` for with no idle holder, or one a peer is late with.
        A reader's startup pieces (``start_reader``) are the edge's first, lowest
        first, and no peer's (the edge races one a peer was already sending).
        ``seeding``: the edge seeds the region, lowest lacked piece first, so a
        piece no peer holds yet is on its way to one (readers that start
        together all lack the same next pieces): the edge takes it only once a
        reader has waited ``seed_patience`` for it.  ``race``: ``source`` is another edge relieving one that is late
        (the engine's relief worker): it races a piece in flight for longer than the deadline, at an edge too.
        """
        if source in self.paused:
            return None
        usable = self._usable(source, edge)
        starting = self.starting(now)
        if starting and edge:
            for i in sorted(self.startup):
                if usable(i) and not self._at_edge(self._in_flight.get(i, {})):
                    return i
        for i in self.urgent:
            if not usable(i) or (starting and not edge and i in self.startup):
                continue
            flying = self._in_flight.get(i)
            if not flying:
                if not edge or fallback or (self.availability[i] == 0 and not seeding) or self._overdue(i, now, self._patience(seeding)):
                    return i
            elif edge and self._late_at_peers(flying, now - self.deadline):
                return i  # a peer is late with an urgent piece: race it (an edge already sending it would only be slowed down)
            elif race and min(flying.values()) <= now - self.deadline:
                return i  # late, at an edge too: another edge races it
        return None

    def pick_race(self, source: str, pieces: Iterable[int]) -> int | None:
        """The first of ``pieces`` (in flight at an edge that is overdue with them: the engine's relief worker) that
        the edge ``source`` may race, or None."""
        if source in self.paused:
            return None
        usable = self._usable(source, edge=True)
        return next((i for i in pieces if usable(i)), None)

    def _patience(self, seeding: bool) -> float:
        """How long a reader waits for a piece no idle holder can take before the edge may; a downloader's readers
        never make the edge step in by waiting (module docstring): they wait for what they asked of peers."""
        return math.inf if self.downloading else self.seed_patience if seeding else self.patience

    def _late_at_peers(self, flying: dict[str, float], started_before: float) -> bool:
        """Only peers fetch this piece, the first since before ``started_before``: the edge may race it, however many
        peers hold a request for it (two that never answer kept a download's last piece from the edge for good: the
        copy limit is for peers racing each other)."""
        return not self._at_edge(flying) and min(flying.values()) <= started_before

    def _at_edge(self, flying: dict[str, float]) -> bool:
        """An edge is among a piece's sources in flight."""
        return bool(flying.keys() & self._edge_sources)

    def _usable(self, source: str, edge: bool) -> Callable[[int], bool]:
        holds = None if edge else self._peers.get(source, set())
        return lambda i: (
            i not in self.have
            and (holds is None or i in holds)
            and source not in self._in_flight.get(i, ())
            and (not self.only_awaited or i in self.awaited)
        )

    def _overdue(self, index: int, now: float, patience: float) -> bool:
        """A reader has waited ``patience`` for a piece no idle holder can take: the edge may.
        Earlier the edge took it at once, and a viewer's read-ahead went to the edge whenever
        its one holder was busy with the previous piece."""
        since = self.awaited.get(index)
        return since is not None and now - since >= patience and not self._idle_holder(index, now)

    def _idle_holder(self, index: int, now: float) -> bool:
        """Some peer holds this piece, has nothing in flight and has a worker (it asked for a piece
        within ``WORKING`` s): it can take it now.

        Only a few neighbours are worked at once (the swarm's MAX_PEERS); the
        others are known, from tracker answers and HAVE streams, but nobody asks
        them.  Counted as idle holders, they kept the edge from a blocked reader
        for as long as every worker was busy with read-ahead: in the demo's VoD,
        stalls of seconds (1.6-5.3 % of viewing time).
        """
        busy = {s for sources in self._in_flight.values() for s in sources}
        return any(
            index in held and peer not in busy and peer not in self.paused and now - self._asked.get(peer, -math.inf) <= WORKING
            for peer, held in self._peers.items()
        )

    def _reachable_holder(self, index: int) -> bool:
        """Some peer that is not choking us (nor backing off) holds this piece."""
        return any(index in held and peer not in self.paused for peer, held in self._peers.items())

    def _endgame(self, usable: Callable[[int], bool], started_before: float | None = None) -> int | None:
        """A piece in flight elsewhere to race, the oldest request first; only requests started before
        ``started_before`` when given (the edge's races)."""
        racing = [
            i
            for i, sources in self._in_flight.items()
            if usable(i) and (len(sources) < ENDGAME_COPIES if started_before is None else self._late_at_peers(sources, started_before))
        ]
        return min(racing, key=lambda i: (min(self._in_flight[i].values()), i)) if racing else None
