"""How many pieces an upload server sends at once: per requester, per address, and overall.

Sans-IO.  The choker decides *who* is served; this gate decides *how much
at once*.  The choker counts peers, not requests, so an unchoked id could open
hundreds of connections, ask each for a piece and read none of them: each
answer held a piece in memory until its connection timed out (600 requests:
+160 MB; docs/security.md).  Our own engine asks a neighbour for one piece at
a time (policy/engine.py ``peer_worker``), and a request it abandoned may
linger on the uploader a moment, so a few per requester is generous.  An
attacker can vary its id, so its address (an IPv4 address, an IPv6 /64)
is counted too; and the whole server has a budget, in pieces and in bytes, so
that the memory answers hold is bounded whoever asks.  Beyond any of these the
request is refused with 429 and a Retry-After, which our engine takes as
"choked" (a short pause on that neighbour, never a failure).
"""

from __future__ import annotations

from dataclasses import dataclass

# Our engine asks a neighbour one piece at a time per content; a live gateway reads one segment (a content) and
# fetches LIVE_AHEAD = 2 more, so one of our peers may have 3 requests at one uploader, plus one it abandoned.
PER_PEER = 4  # pieces in flight to one peer id
PER_ADDRESS = 8  # to one address (group): two peers behind one NAT at full pace; one address cannot take the server
PIECES_PER_SLOT = 4  # the whole server: this many pieces per upload slot (24 with the default 6 slots)
MAX_BYTES = 96 * 1024 * 1024  # ... and these bytes of answers at once: 6 of the largest pieces (16 MiB); one piece is always allowed
RETRY_AFTER = 1  # seconds a refused requester waits: the pieces in flight are sent within that, at most a few


@dataclass(frozen=True)
class Grant:
    """One admitted piece; handed back to ``UploadGate.done`` however its answer ends."""

    peer: str
    address: str
    nbytes: int


class UploadGate:
    """Pieces being sent now, by requester id and address; ``admit`` refuses what would exceed a bound."""

    def __init__(self, slots: int, per_peer: int = PER_PEER, per_address: int = PER_ADDRESS, max_bytes: int = MAX_BYTES):
        self.per_peer = per_peer
        self.per_address = per_address
        self.max_pieces = max(1, slots) * PIECES_PER_SLOT
        self.max_bytes = max_bytes
        self._peers: dict[str, int] = {}
        self._addresses: dict[str, int] = {}
        self.pieces = 0
        self.bytes = 0
        self.refused: dict[str, int] = {"peer": 0, "address": 0, "server": 0}

    def admit(self, peer: str, address: str, nbytes: int) -> Grant | str:
        """A grant for sending ``nbytes`` to ``peer`` at ``address``, or why not (a 429's reason)."""
        if self._peers.get(peer, 0) >= self.per_peer:
            return self._refuse("peer", f"{self.per_peer} pieces in flight to peer {peer[:64]} already")
        if self._addresses.get(address, 0) >= self.per_address:
            return self._refuse("address", f"{self.per_address} pieces in flight to {address} already")
        if self.pieces and self.pieces >= self.max_pieces:
            return self._refuse("server", f"{self.pieces} pieces ({self.bytes} bytes) in flight: every upload slot is busy")
        if self.pieces and self.bytes + nbytes > self.max_bytes:  # large pieces: fewer at once than there are slots
            return self._refuse("server", f"{self.pieces} pieces ({self.bytes} bytes) in flight: no room for {nbytes} bytes more")
        self._peers[peer] = self._peers.get(peer, 0) + 1
        self._addresses[address] = self._addresses.get(address, 0) + 1
        self.pieces += 1
        self.bytes += nbytes
        return Grant(peer, address, nbytes)

    def done(self, grant: Grant) -> None:
        """The answer of ``grant`` ended (sent, cut or failed): its place is free."""
        _release(self._peers, grant.peer)
        _release(self._addresses, grant.address)
        self.pieces -= 1
        self.bytes -= grant.nbytes

    def _refuse(self, bound: str, why: str) -> str:
        self.refused[bound] += 1
        return why


def _release(counts: dict[str, int], key: str) -> None:
    """One fewer for ``key``; a key at zero is forgotten, so the maps hold only requesters with pieces in flight."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
