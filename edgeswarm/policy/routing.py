"""The router's policy: which edges a client gets, and when an edge counts as up (sans-IO).

Deterministic and free of I/O, so that every rule is tested directly
(tests/test_routing.py); router.py feeds it polls and asks it questions.

Ranking (Apache Traffic Router's consistent hashing, with Traffic Monitor's
health): among the *up* edges of the client's region, each edge gets a
weighted rendezvous (HRW) score for the request's key (the path, or the DNS
name), its capacity as the weight; the highest score wins.  The same path then
always goes to the same edge while the set of edges is unchanged, and when an
edge leaves only its own paths move.  An edge whose measured egress is above
``hot_load`` of its stated capacity *sheds* a share of its paths, growing from
0 at ``hot_load`` to all of them at full capacity (each path decides by a
second, independent hash, so the rest stay put): shed paths rank after every
edge that keeps them.  A region with no edge up falls back to the up edges of
every region (flagged ``fallback``).

Health: an edge is down after ``down_after`` failed polls in a row (no answer
within the poll timeout, not 200, not a /status document, or more than
``max_error_rate`` of at least ``min_requests`` answers since the last poll
were 5xx), and up again after ``up_after`` good polls in a row.  An edge not
yet polled is neither: it gets no clients until its first poll says up.  An
edge that says it is stopping (``leave``) is down at once, whatever its polls
say while it drains, until it registers again: then it is as if new.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edgeswarm.errors import EdgeswarmError

UP, DOWN, UNKNOWN = "up", "down", "unknown"
STOPPING = "stopping (it told the router)"  # the reason of an edge that left (EdgeHealth.leave)
# polls and scrapes are not what an edge is for; nor is its tracker when judging its files: a tracker store that is
# down answers announces 503 while every file is served, and took every edge of every region out of rotation
NOT_CLIENT_TRAFFIC = frozenset({"status", "metrics", "healthz", "announce"})
# the parent's failure (502, 504), every edge of a region alike: counted against them, an origin outage took them all
# out of rotation, and the files they held in cache went unserved
UPSTREAM_FAILURES = frozenset({"502", "504"})
MAX_EDGES = 1024  # edges one router holds (listed and registered): a registration flood stops here


class RoutingError(EdgeswarmError, ValueError):
    """Input the router cannot use: a registration, an edge list, a flag; the message says what is wrong."""


@dataclass(frozen=True)
class EdgeSpec:
    """An edge as the operator states it: where it is, which region it serves, and what it can send."""

    url: str
    region: str
    capacity: float  # bytes per second it may send
    listed: bool = True  # from the command line or edge list (False: registered itself)

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The URL's host as an IP address (what a DNS answer holds), or None for a host name."""
        host = urlsplit(self.url).hostname or ""
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            return None


@dataclass(frozen=True)
class Thresholds:
    """When an edge is down, up, or hot (docs/operations.md#the-router-health-and-failover)."""

    down_after: int = 1  # failed polls in a row: a killed edge is out at the next poll, within one interval
    up_after: int = 2  # good polls in a row: a flapping edge does not come straight back
    max_error_rate: float = 0.5  # 5xx share of the answers between two polls above which the poll counts as failed
    min_requests: int = 10  # answers between two polls below which no error rate is judged
    hot_load: float = 0.8  # egress / capacity above which an edge starts shedding paths


@dataclass(frozen=True)
class Sample:
    """What one good poll of /status read: the edge's running totals at a time."""

    at: float
    bytes_sent: int
    requests: int  # answers to clients and nodes (not polls or scrapes)
    errors: int  # of which 5xx
    whole: bool = True  # every worker of the edge answered for these totals (``workers.answered``)
    cap_Bps: float | None = None  # the edge's own --upload-limit (``upload_limit_Bps``), if any


def sample_from_status(doc: object, at: float) -> Sample:
    """The totals of an edge's /status document; ValueError if it is not one."""
    if not isinstance(doc, dict):
        raise ValueError("/status is not a JSON object")
    if doc.get("role") != "edge":  # the router itself, an origin or a peer registered by mistake (or a lie): no clients
        raise ValueError(f"/status is not an edge's (its role is {str(doc.get('role'))[:40]!r})")
    sent, by_endpoint = doc.get("bytes_sent"), doc.get("responses_by_endpoint")
    if not isinstance(sent, dict) or not isinstance(by_endpoint, dict):
        raise ValueError("/status has no bytes_sent or responses_by_endpoint")
    total = sum(_count(v) for v in sent.values())
    requests = errors = 0
    for endpoint, counts in by_endpoint.items():
        if endpoint in NOT_CLIENT_TRAFFIC or not isinstance(counts, dict):
            continue
        for status, n in counts.items():
            requests += _count(n)
            if str(status).startswith("5") and str(status) not in UPSTREAM_FAILURES:
                errors += _count(n)
    workers = doc.get("workers")
    whole = not isinstance(workers, dict) or workers.get("answered") == workers.get("count")
    cap = status_number(doc.get("upload_limit_Bps"))
    return Sample(at, total, requests, errors, whole, float(cap) if cap else None)


def status_number(value: object) -> float | int | None:
    """A non-negative number from an edge's /status, else None (a missing or odd field is shown as unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None  # json.loads takes NaN and Infinity, which our own JSON must not pass on
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"/status holds {str(value)[:40]!r} where a count belongs")
    return value


@dataclass
class EdgeHealth:
    """One edge's health, moved by polls: the Traffic Monitor part."""

    state: str = UNKNOWN
    failures: int = 0  # failed polls in a row
    successes: int = 0  # good polls in a row
    egress_Bps: float = 0.0  # over the last interval between two good polls
    cap_Bps: float | None = None  # the edge's --upload-limit, as its last good poll said
    error_rate: float = 0.0
    reason: str = "not polled yet"
    since: float = 0.0  # when the state last changed
    last: Sample | None = None
    leaving: bool = False  # it said it is stopping: down until it registers again, its polls notwithstanding

    def leave(self, now: float) -> bool:
        """The edge says it is stopping; returns whether the state changed.  It still answers while it drains, and a
        poll then would have put it back in rotation."""
        self.leaving = True
        self.successes, self.last = 0, None
        if self.state == DOWN:
            self.reason = STOPPING
            return False
        return self._move(DOWN, now, STOPPING)

    def rejoin(self, now: float) -> bool:
        """A registration after ``leave``: a restarted edge, taken at its next good poll (as a new one is), not after
        ``up_after`` of them; returns whether there was anything to undo."""
        if not self.leaving:
            return False
        self.leaving = False
        return self._move(UNKNOWN, now, "registered again after stopping")

    def succeeded(self, sample: Sample, t: Thresholds) -> bool:
        """A poll answered with /status; returns whether the state changed.

        Totals that lack a worker (``whole`` false: it did not answer in time) give no rate and are no baseline: the
        next whole ones counted its lifetime bytes as one interval's, an idle edge at 60 MB/s, shed as hot (a review).
        """
        if self.leaving:
            return False
        self.cap_Bps = sample.cap_Bps
        if sample.whole:  # else the rates and the baseline stay as the last whole totals left them
            prev, self.last = self.last, sample
            if prev is not None and sample.at > prev.at and sample.bytes_sent >= prev.bytes_sent and sample.requests >= prev.requests:
                self.egress_Bps = (sample.bytes_sent - prev.bytes_sent) / (sample.at - prev.at)
                asked = sample.requests - prev.requests
                self.error_rate = (sample.errors - prev.errors) / asked if asked >= t.min_requests else 0.0
            else:  # first poll, or the edge restarted (its counters began again): no rate from this interval
                self.egress_Bps, self.error_rate = 0.0, 0.0
        if self.error_rate > t.max_error_rate:
            return self.failed(sample.at, f"{self.error_rate:.0%} of answers were 5xx", t, keep_baseline=True)
        self.failures, self.successes = 0, self.successes + 1
        if self.state != UP and (self.successes >= t.up_after or self.state == UNKNOWN):
            return self._move(UP, sample.at, "answers /status")
        return False

    def failed(self, now: float, reason: str, t: Thresholds, keep_baseline: bool = False) -> bool:
        """A poll failed (``reason`` says how); returns whether the state changed.

        ``keep_baseline``: the poll read valid totals (too many errors): the next rates count from them.
        """
        self.successes, self.failures = 0, self.failures + 1
        self.reason = reason
        if not keep_baseline:
            self.last = None
        if self.state != DOWN and self.failures >= t.down_after:
            return self._move(DOWN, now, reason)
        return False

    def _move(self, state: str, now: float, reason: str) -> bool:
        self.state, self.since, self.reason = state, now, reason
        return True

    def load(self, capacity: float) -> float:
        """Egress over the stated capacity, or over the edge's own --upload-limit when that is lower: an edge capped
        below what it was registered with was never hot, and kept its clients while its region's other edge idled (an
        adversarial session)."""
        return self.egress_Bps / (capacity if self.cap_Bps is None else min(capacity, self.cap_Bps))


def _listed(url: str) -> str:
    return f"{url} is listed in the router's configuration; a registration cannot change it"


def hrw_score(url: str, key: str, weight: float) -> float:
    """Weighted rendezvous score of an edge for a key: the highest wins; an edge's share of keys is its share of weight."""
    h = int.from_bytes(hashlib.blake2b(f"{url}\0{key}".encode(errors="surrogatepass"), digest_size=8).digest(), "big")
    u = (h + 0.5) / 2**64  # in (0, 1)
    return weight / -math.log(u)


def shed_share(load: float, hot_load: float) -> float:
    """The share of its paths a hot edge gives away: 0 up to ``hot_load``, all of them at full capacity."""
    if load <= hot_load:
        return 0.0
    if hot_load >= 1.0:
        return 1.0
    return min(1.0, (load - hot_load) / (1.0 - hot_load))


def sheds(url: str, key: str, share: float) -> bool:
    """Does the edge give this key away at this shed share?  A hash independent of the HRW score, so kept keys stay put."""
    if share <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(f"shed\0{url}\0{key}".encode(errors="surrogatepass"), digest_size=8).digest(), "big")
    return h / 2**64 < share


@dataclass(frozen=True)
class Candidate:
    """An up edge considered for one key."""

    spec: EdgeSpec
    score: float
    shed: bool
    load: float


# The ranking, criterion by criterion: an edge that keeps the key before one that sheds it, then the highest HRW score.
def keeps_key_first(c: Candidate) -> int:
    return 1 if c.shed else 0


def sticky_first(c: Candidate) -> float:
    return -c.score


def url_last(c: Candidate) -> str:  # ties (equal scores) broken by name: deterministic whatever the insertion order
    return c.spec.url


COMPARATORS: tuple[Callable[[Candidate], object], ...] = (keeps_key_first, sticky_first, url_last)


@dataclass(frozen=True)
class Decision:
    """The ranked edges for one client region and key; ``fallback``: none of the region was up, these are others';
    ``blind``: none was up anywhere, these are the region's (else every edge) as if they were (``RoutingTable.decide``)."""

    region: str
    key: str
    ranked: list[Candidate]
    fallback: bool
    blind: bool = False


@dataclass
class RoutingTable:
    """The edges a router knows, with their health; answers who serves a (region, key)."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    edges: dict[str, EdgeSpec] = field(default_factory=dict)
    health: dict[str, EdgeHealth] = field(default_factory=dict)

    def add(self, spec: EdgeSpec, now: float) -> bool:
        """Add or update an edge (a listed one is not changed by a registration); returns whether it is new."""
        old = self.edges.get(spec.url)
        if old is not None and old.listed and not spec.listed:
            raise RoutingError(_listed(spec.url))
        if old is None and len(self.edges) >= MAX_EDGES:
            raise RoutingError(f"the router holds {MAX_EDGES} edges already")
        self.edges[spec.url] = spec
        if old is None:
            self.health[spec.url] = EdgeHealth(since=now)
        return old is None

    def leave(self, url: str, now: float) -> bool:
        """A registered edge says it is stopping (``EdgeHealth.leave``); returns whether its state changed.  KeyError:
        not known here; RoutingError: a listed one, which no registration changes."""
        if self.edges[url].listed:
            raise RoutingError(_listed(url))
        return self.health[url].leave(now)

    def remove(self, url: str) -> None:
        self.edges.pop(url, None)
        self.health.pop(url, None)

    def forgettable(self, now: float, after: float) -> list[str]:
        """Registered edges down for longer than ``after`` seconds (listed ones stay, whatever their state)."""
        return [u for u, s in self.edges.items() if not s.listed and self.health[u].state == DOWN and now - self.health[u].since > after]

    def up(self, region: str | None = None) -> list[EdgeSpec]:
        return [s for u, s in self.edges.items() if self.health[u].state == UP and (region is None or s.region == region)]

    def decide(self, region: str, key: str, want: Callable[[EdgeSpec], bool] | None = None, only: bool = False) -> Decision:
        """Ranked up edges of ``region`` for ``key`` (only those ``want`` accepts); others' if none of the region is up.

        With none up anywhere, the region's edges whatever their state (else
        every edge), as Route 53 answers for a group whose records are all
        unhealthy: a 503 fails every client for sure, and a region's only
        edge that missed one poll on a lossy path (down after 1, up after 2)
        was a 503 for 3 s while it served every file (an adversarial session).
        ``only``: the client can use no edge ``want`` refuses (an HTTPS
        request, a peer of one IP version), so none of those up is "none up"
        for it (an HTTPS client got a 503 while its region's HTTPS edge missed
        polls and an http:// one was up: a review); else edges of any kind up
        leave it none (a DNS AAAA was answered with a down IPv6 edge while an
        IPv4 one was up).
        """
        wanted = [s for s in self.edges.values() if want is None or want(s)]
        up = {s.url for s in self.up()}
        pool = [s for s in wanted if s.url in up and s.region == region]
        fallback = not pool
        if fallback:
            pool = [s for s in wanted if s.url in up]
        blind = not (pool if only else up)
        if blind:
            pool = [s for s in wanted if s.region == region] or wanted
        return Decision(region, key, self.rank(pool, key), fallback, blind)

    def rank(self, pool: Iterable[EdgeSpec], key: str) -> list[Candidate]:
        hot = self.thresholds.hot_load
        candidates = []
        for spec in pool:
            load = self.health[spec.url].load(spec.capacity)
            candidates.append(Candidate(spec, hrw_score(spec.url, key, spec.capacity), sheds(spec.url, key, shed_share(load, hot)), load))
        return sorted(candidates, key=lambda c: tuple(f(c) for f in COMPARATORS))
