"""The uploader's choker: BitTorrent's fixed slots, tit-for-tat and optimistic unchoke.

Sans-IO, time passed in.  ``slots - 1`` regular slots go to the interested
peers that gave us most over the last ``window`` seconds (tit-for-tat); one
optimistic slot rotates round-robin among the others every
``optimistic_interval``, which is how a newcomer with nothing to give gets
its first pieces.  While slots are free nobody is refused.  A seed receives
nothing, so it ranks by who was served least lately instead: its slots
rotate fairly among everyone interested.  A peer that stops asking for
``idle`` seconds loses its slot at once, so slots never sit on peers that
have nothing left to get from us.

Requesters are named by their stated id at their address (``requester``),
and an address is one party: it holds at most half the slots, and a seed
ranks it by what all its ids got lately.  Ids cost nothing, addresses do:
one address running many ids (renewed, named to sort first) took every slot
of a seed, and another address stating a neighbour's id used up that
neighbour's places (an adversarial session; libtorrent takes one connection
per address by default for the same reason).  Several real peers behind one
address (a NAT) share its half.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable

from edgeswarm.policy.tracker import address_group, group_tag

SLOTS = 6  # peers served at once: 6 beat 4 and 8 in `bench swarm` (docs/configuration.md, --upload-slots)


def requester(peer_id: str, address: str) -> str:
    """The name an uploader knows a requester by (its choker's, its upload gate's): its stated id at its address group.

    The tracker's answers publish ids; keyed on the bare id, anyone could
    take another peer's places or ride its tit-for-tat credit by stating it.
    The group is named by its tag, as a relay URL names it: a relayed
    neighbour's pieces come through its relay and its requests from its own
    address, and the two must be one requester for its credit to count
    (``neighbour``).
    """
    return f"{peer_id}@{group_tag(address_group(address))}"


def neighbour(peer_id: str, host: str) -> str:
    """The requester name of a neighbour we download from, by where its URL points (``engine.host_of``): its address,
    or for a relayed one ``RELAY/relay/<group tag>``, its own address's tag."""
    _, relayed, tag = host.partition("/relay/")
    return f"{peer_id}@{tag}" if relayed else requester(peer_id, host)


class Choker:
    def __init__(
        self, slots: int = SLOTS, rechoke_interval: float = 10.0, optimistic_interval: float = 30.0, window: float = 20.0, idle: float = 3.0
    ):
        self.slots = max(1, slots)
        self.idle = idle  # a peer that stops asking for this long gives its slot up
        self.rechoke_interval = rechoke_interval
        self.optimistic_interval = optimistic_interval
        self.window = window
        self._got: dict[str, deque[tuple[float, int]]] = {}  # what each peer gave us
        self._gave: dict[str, deque[tuple[float, int]]] = {}  # what we gave each peer
        self._interested: dict[str, float] = {}  # peer -> last request
        self._unchoked: set[str] = set()
        self._optimistic: str | None = None
        self._next_rechoke = -math.inf
        self._next_optimistic = -math.inf
        self._choked_at: dict[str, float] = {}  # when each peer last lost its slot
        self._since: dict[str, float] = {}  # unchoked peers: since when
        self._group: dict[str, str] = {}  # peer -> the address (group) it asks from: one party for the slots
        self.per_group = max(1, self.slots // 2)  # slots one address may hold
        self._records = 0

    def received(self, now: float, peer: str, nbytes: int) -> None:
        self._got.setdefault(peer, deque()).append((now, nbytes))
        self._tick(now)

    def sent(self, now: float, peer: str, nbytes: int) -> None:
        self._gave.setdefault(peer, deque()).append((now, nbytes))
        self._tick(now)

    def _tick(self, now: float) -> None:
        self._records += 1
        if self._records % 256 == 0:
            self._prune(now)

    def request(self, now: float, peer: str, group: str | None = None) -> bool:
        """May ``peer`` download from us now?  ``group``: the address it asks from (None: a party of its own)."""
        self._interested[peer] = now
        self._group[peer] = group = peer if group is None else group
        self._forget(now)
        if peer in self._unchoked:
            return True
        if len(self._unchoked) < self.slots and sum(self._group.get(p, p) == group for p in self._unchoked) < self.per_group:
            self._set_unchoked(self._unchoked | {peer}, now)
            if self._next_rechoke == -math.inf:  # the schedule starts with the first unchoke, not the first refusal
                self._next_rechoke = now + self.rechoke_interval
                self._next_optimistic = now + self.optimistic_interval
            return True
        if now >= self._next_rechoke:
            self._rechoke(now)
        return peer in self._unchoked

    def unchoked(self, now: float) -> set[str]:
        self._forget(now)
        return set(self._unchoked)

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(max(0.0, min(self._next_rechoke - now, self._next_optimistic - now, self.idle))))

    def _recent(self, log: dict[str, deque[tuple[float, int]]], peer: str, now: float) -> int:
        q = log.get(peer)
        if not q:
            return 0
        while q and now - q[0][0] > self.window:
            q.popleft()
        return sum(n for _, n in q)

    def _forget(self, now: float) -> None:
        for peer in [p for p, t in self._interested.items() if now - t > self.idle]:
            del self._interested[peer]
            self._unchoked.discard(peer)
            self._since.pop(peer, None)
            if self._optimistic == peer:
                self._optimistic = None

    def _rechoke(self, now: float) -> None:
        peers = sorted(self._interested)
        key: Callable[[str], tuple[float | str, ...]]  # ranked first: smallest
        if any(self._recent(self._got, p, now) for p in peers):
            key = lambda p: (-self._recent(self._got, p, now), -self._interested[p], p)  # noqa: E731
        else:  # a seed: serve the address that got least from us lately (all its ids: new ones inherit it), then the id;
            # on ties, who has held a slot for the shortest time
            served: Counter[str] = Counter()
            for p in self._gave:
                served[self._group.get(p, p)] += self._recent(self._gave, p, now)
            key = lambda p: (served[self._group[p]], self._recent(self._gave, p, now), -self._since.get(p, math.inf), p)  # noqa: E731
        regular: list[str] = []
        held: Counter[str] = Counter()  # slots each group holds among ``regular``
        for p in sorted(peers, key=key):
            if len(regular) < self.slots - 1 and held[self._group[p]] < self.per_group:
                regular.append(p)
                held[self._group[p]] += 1
        others = [p for p in peers if p not in regular]
        if now >= self._next_optimistic or self._optimistic not in others:
            # a choked peer first, the one choked longest ago (or never unchoked); else the newest holder: a true rotation;
            # never one of an address that holds its share already
            fits = [p for p in others if held[self._group[p]] < self.per_group]
            candidates = [p for p in fits if p != self._optimistic] or fits
            key = lambda p: (p in self._unchoked, -self._since[p] if p in self._since else self._choked_at.get(p, -math.inf), p)  # noqa: E731
            self._optimistic = min(candidates, key=key) if candidates else None
            self._next_optimistic = now + self.optimistic_interval
        self._set_unchoked(set(regular) | ({self._optimistic} if self._optimistic else set()), now)
        self._next_rechoke = now + self.rechoke_interval
        self._prune(now)

    def _set_unchoked(self, peers: set[str], now: float) -> None:
        for peer in peers - self._unchoked:
            self._since[peer] = now
        for peer in self._unchoked - peers:
            self._since.pop(peer, None)
            self._choked_at[peer] = now
        self._unchoked = peers

    def _prune(self, now: float) -> None:
        """Forget byte records older than the window, and peers left with none (a long-running daemon must not grow)."""
        for log in (self._got, self._gave):
            for peer in list(log):
                if not self._recent(log, peer, now):
                    del log[peer]
        for peer in [p for p in self._choked_at if p not in self._interested]:
            del self._choked_at[peer]
        for peer in [p for p in self._group if p not in self._interested and p not in self._gave]:
            del self._group[peer]
