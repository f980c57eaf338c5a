"""Which client connections a node closes, so idle ones cannot take it offline.

Every connection is in one of four states:

- *head*: waiting for a request line and headers (a new connection, or a kept-alive
  one whose next request has begun to arrive).  It must complete them within
  ``header_timeout`` of its first byte (of being opened, for a new one), however
  slowly it trickles bytes: a slowloris client gains nothing by sending one a second;
- *body*: a request is handled and its body is still arriving.  Each
  ``BODY_STEP`` bytes of it must arrive within ``header_timeout`` (the clock
  starts again at each step): a small body (an announce) is then complete
  within that time of its head, however it trickles, while an upload over a
  slow uplink goes on for as long as it keeps coming (a whole body within
  the timeout cut every 8 MiB chunk below 0.5 Mbit/s, and `publish` failed:
  an adversarial session);
- *idle*: kept alive between requests; closed after ``idle_timeout``;
- *busy*: a request is being handled, its body complete; not closed here, unless
  the client stops reading the response: a connection whose writes stay paused
  (its client accepts no bytes) for ``idle_timeout`` is closed too.

Head and idle connections are *waiting*: they hold a file descriptor and serve
nobody.  At most ``cap`` connections are open; the one over the cap closes the
oldest waiting connection, as nginx reuses its oldest "reusable" connections, so
active transfers and new clients go on while idle ones make room.  Only when
every other connection is busy is the newcomer itself closed.

A node may keep part of the cap for one of its sites (``reserved``): the
connections of its other sites (*outside* ones) are held to ``cap -
reserved`` among themselves, the oldest waiting outside connection closed
first, and the reserved site may use the whole cap.  A peer keeps an eighth
for its gateway: other peers' HAVE streams are busy for as long as they last,
and 336 of them took a peer's whole cap, every request of its user's player
reset (an adversarial session).

How many connections by default: ``file_budget`` shares the open-file limit
between the node's own descriptors, the piece files its store keeps open and
its connections, so that all of them together stay under the limit and
accept() does not run out of descriptors (docs/configuration.md).

I/O-free and deterministic: the caller passes the clock and closes what it is told to.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgeswarm.store.piecestore import OPEN_FILES

C = TypeVar("C", bound=Hashable)
RESERVE = 128  # the node's own descriptors (listening sockets, logs, databases, locks, the event loop), or a quarter of the limit
MAX_CONNECTIONS = 16384  # about 10 KB of memory each
FLOOR = 4  # connections and piece files, under a limit too small to share
BODY_STEP = 64 * 1024  # body bytes that must come within each header_timeout (3.2 KB/s at 20 s): more than any small body


@dataclass(frozen=True)
class FileBudget:
    """How a node shares its open-file limit: ``reserve + piece_files + 2 * connections <= limit`` at the defaults."""

    limit: int
    reserve: int  # the node's own descriptors
    piece_files: int  # descriptors the piece store keeps open for hits (PieceStore open_files)
    connections: int  # client connections at once, each of which may hold an upstream fetch or a file being written too

    @property
    def fits(self) -> bool:
        """Whether the connections, one descriptor each at least, fit beside the reserve and the piece files."""
        return self.reserve + self.piece_files + self.connections <= self.limit


def file_budget(limit: int, connections: int | None = None) -> FileBudget:
    """The default shares of ``limit`` (``connections``: an operator's --max-connections instead of the default).

    After the reserve, a quarter of the rest (at most OPEN_FILES, nginx's
    open_file_cache) for piece files, and half of what remains for
    connections, the other half for what each may open besides its socket.
    """
    reserve = min(RESERVE, limit // 4)
    rest = limit - reserve
    pieces = max(FLOOR, min(OPEN_FILES, rest // 4))
    default = max(FLOOR, min(MAX_CONNECTIONS, (rest - pieces) // 2))
    return FileBudget(limit, reserve, pieces, connections or default)


class ConnectionPolicy(Generic[C]):
    def __init__(self, cap: int, header_timeout: float, idle_timeout: float):
        if cap < 1:
            raise ValueError(f"the connection cap must be at least 1, got {cap}")
        self.cap = cap
        self.reserved = 0  # connections outside ones leave free (module docstring)
        self._outside: set[C] = set()
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        # waiting connections -> since when, oldest first (the clock only moves forward)
        self._head: OrderedDict[C, float] = OrderedDict()
        self._idle: OrderedDict[C, float] = OrderedDict()
        self._body: OrderedDict[C, float] = OrderedDict()
        self._body_bytes: dict[C, int] = {}  # body bytes since its clock last started (BODY_STEP)
        self._busy: set[C] = set()
        self._stalled: OrderedDict[C, float] = OrderedDict()  # the client accepts no bytes, since

    def __len__(self) -> int:
        return len(self._head) + len(self._idle) + len(self._body) + len(self._busy)

    @property
    def waiting(self) -> int:
        return len(self._head) + len(self._idle)

    def reserve(self, count: int) -> int:
        """Keep ``count`` connections (one outside connection is always possible) free of outside ones; how many are kept."""
        self.reserved = max(0, min(count, self.cap - 1))
        return self.reserved

    def opened(self, conn: C, now: float, outside: bool = False) -> list[C]:
        """A new connection (``outside``: of a site the reserve is not for); returns those to close to stay within the
        cap, and the outside ones within theirs (forgotten already).  A TLS connection is opened at its handshake's
        start and again at its end: it moves to the back of the queue (it kept its place, and those behind it were
        closed up to a handshake late: a review)."""
        self._head.pop(conn, None)
        self._head[conn] = now
        victims = []
        if outside:
            self._outside.add(conn)
            victims = self._oldest_outside(len(self._outside) - (self.cap - self.reserved))
        return victims + self.oldest_waiting(len(self) - self.cap)

    def _oldest_outside(self, count: int) -> list[C]:
        """Up to ``count`` waiting outside connections, the longest waiting first, to close (forgotten already)."""
        if count <= 0:
            return []
        waiting = [(t, c) for queue in (self._head, self._idle) for c, t in queue.items() if c in self._outside]
        out = [c for _, c in sorted(waiting, key=lambda tc: tc[0])[:count]]
        for conn in out:
            self.closed(conn)
        return out

    def data(self, conn: C, now: float, size: int = 0) -> None:
        """``size`` bytes arrived: on an idle connection they start the next request's header clock; each ``BODY_STEP``
        of a body restarts its clock."""
        if conn in self._idle:
            del self._idle[conn]
            self._head[conn] = now
        elif conn in self._body:
            got = self._body_bytes.get(conn, 0) + size
            if got >= BODY_STEP:
                del self._body[conn]
                self._body[conn], got = now, 0  # re-inserted last: the queue stays in order of its clocks
            self._body_bytes[conn] = got

    def started(self, conn: C, now: float, body_pending: bool = False) -> None:
        """A request's head is complete and its handling begins; its body may still be arriving."""
        self._head.pop(conn, None)
        self._idle.pop(conn, None)
        if body_pending:
            self._body[conn] = now
        else:
            self._busy.add(conn)

    def body_done(self, conn: C) -> None:
        """The request's body has arrived in full."""
        self._body_bytes.pop(conn, None)
        if self._body.pop(conn, None) is not None:
            self._busy.add(conn)

    def finished(self, conn: C, now: float) -> None:
        """A response is done and the connection is kept alive for the next request."""
        if conn in self._busy or conn in self._body:
            self._busy.discard(conn)
            self._body.pop(conn, None)
            self._body_bytes.pop(conn, None)
            self._idle[conn] = now

    def stalled(self, conn: C, now: float) -> None:
        """Writes to the connection are paused: its client does not read what it is sent."""
        if conn not in self._stalled:
            self._stalled[conn] = now

    def flowing(self, conn: C) -> None:
        """The client reads again."""
        self._stalled.pop(conn, None)

    def closed(self, conn: C) -> None:
        """The connection is gone, whoever closed it (idempotent)."""
        self._head.pop(conn, None)
        self._idle.pop(conn, None)
        self._body.pop(conn, None)
        self._body_bytes.pop(conn, None)
        self._busy.discard(conn)
        self._stalled.pop(conn, None)
        self._outside.discard(conn)

    def expired(self, now: float) -> tuple[list[C], list[C], list[C]]:
        """(late requests: heads or bodies; idle between requests; not reading an answer) for too long as of ``now``: to close.

        They are forgotten already, except a stalled one, which stays counted
        until ``closed``.  Stalled ones apart: their answer's handler sees the
        cut as a hang-up, and the log should say the node cut them.
        """
        late = self._expire(self._head, self.header_timeout, now) + self._expire(self._body, self.header_timeout, now)
        return late, self._expire(self._idle, self.idle_timeout, now), self._expire(self._stalled, self.idle_timeout, now)

    @staticmethod
    def _expire(queue: OrderedDict[C, float], timeout: float, now: float) -> list[C]:
        out = []
        while queue:
            conn, since = next(iter(queue.items()))
            if now - since < timeout:
                break
            del queue[conn]
            out.append(conn)
        return out

    def oldest_waiting(self, count: int) -> list[C]:
        """Up to ``count`` waiting connections, the longest waiting first, to close (forgotten already).

        Also what a node sheds when it runs out of file descriptors.
        """
        out: list[C] = []
        while len(out) < count and (self._head or self._idle):
            head = next(iter(self._head.values()), None)
            idle = next(iter(self._idle.values()), None)
            queue = self._head if idle is None or (head is not None and head < idle) else self._idle
            out.append(queue.popitem(last=False)[0])
            self._outside.discard(out[-1])
        return out
