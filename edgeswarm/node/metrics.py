"""Per-node counters: one source of truth for /status (JSON) and /metrics (Prometheus).

Every node counts what it sent (to clients, to other nodes) and what it
received, by the kind and address of the source, so that "how many bytes
crossed this hop" is read off the nodes themselves rather than guessed.

Label sets stay bounded (docs/operations.md#what-to-watch): an endpoint label
is a class of the matched route (``ENDPOINTS``), never a path; the one
per-content family keeps ``MAX_CONTENT_SERIES`` content ids and counts the
rest under ``content="other"``, and byte sources are capped the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

from prometheus_client import GC_COLLECTOR, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# the endpoint classes of /metrics' `endpoint` label: one per kind of route, whatever the path asked
ENDPOINTS = (
    "file",
    "piece",
    "manifest",
    "content",
    "have",
    "announce",
    "seed",
    "key",
    "torrent",
    "status",
    "metrics",
    "healthz",
    "dashboard",
    "relay",
    "preheat",
    "edges",
    "register",
    "other",
)
_BY_FIRST_SEGMENT = {
    "piece": "piece",
    "manifest": "manifest",
    "content": "content",
    "have": "have",
    "announce": "announce",
    "scrape": "announce",  # a BitTorrent client's scrape: the tracker's, as its announces
    "seed": "seed",
    "key": "key",
    "origin-key": "key",
    "swarm-key": "key",
    "torrent": "torrent",
    "magnet": "torrent",
    "status": "status",
    "metrics": "metrics",
    "healthz": "healthz",
    "dashboard": "dashboard",
    "relay": "relay",
    "preheat": "preheat",
    "edges": "edges",
    "register": "register",
}
OTHER = "other"  # the label value of what is past a cap, and of requests no route matched
MAX_CONTENT_SERIES = 256  # content ids with their own edgeswarm_content_bytes_total series; later ones count as "other"
MAX_SOURCE_SERIES = 128  # source URLs with their own edgeswarm_bytes_received_total series (a peer's neighbours come and go)
# request durations: a cached piece answers in about a millisecond, a whole film streams for minutes
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CACHE_RESULTS = ("hit", "miss", "collapsed")


def endpoint_class(route_template: str | None) -> str:
    """The endpoint class of a matched route's template (``/piece/{cid}/{index}`` -> ``piece``).

    From the route, not the path asked: a label built from paths would grow
    with every file and every probe.  A catch-all ``/{path}`` route is
    ``file``; no route (404, 405 from aiohttp's router) is ``other``.
    """
    if not route_template:
        return OTHER
    first = route_template.lstrip("/").split("/", 1)[0]
    if first.startswith("{"):
        return "file"
    return _BY_FIRST_SEGMENT.get(first, OTHER)


class Metrics:
    def __init__(self, role: str):
        self.role = role
        self.started = time.time()
        self._began = time.monotonic()  # uptime: a wall clock stepped back an hour made it -3590 s, and dashboards wiped
        self.sent: Counter[str] = Counter()  # bytes, by who asked: client | node
        self.received: Counter[tuple[str, str]] = Counter()  # bytes, by (source kind, source url); see count_received
        self.events: Counter[tuple[str, str]] = Counter()  # (event, detail): fetch, collapsed, corrupt, ...
        self.responses: Counter[tuple[int, str]] = Counter()  # (status, endpoint class)
        self.cache: Counter[str] = Counter()  # piece lookups at an edge's cache: hit | miss | collapsed
        self.content: Counter[tuple[str, str, str]] = Counter()  # bytes by (direction, content id, kind); see count_content
        self._content_ids: set[str] = set()  # those with their own series
        self._sources: set[str] = set()
        # values read from the node when scraped, by name: /status says them as they are, /metrics as gauges or counters
        self.readings: dict[str, tuple[str, Callable[[], float], type[GaugeMetricFamily | CounterMetricFamily]]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.durations = Histogram(
            "edgeswarm_http_request_duration_seconds",
            "Time from a request's head to its handler's end (a streamed body included), by endpoint class",
            labelnames=["role", "endpoint"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_*: CPU, memory, open files of this node
        PlatformCollector(registry=self.registry)  # python_info
        if GC_COLLECTOR is not None:
            GCCollector(registry=self.registry)  # python_gc_*

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A value read when scraped: ``edgeswarm_NAME`` in /metrics, ``NAME`` in /status."""
        self.readings[name] = (doc, read, GaugeMetricFamily)

    def families(self, collect: Callable[[], Sequence[Metric]]) -> None:
        """Families built when scraped, labelled ones too (a value per region, per quantile): ``collect`` gives them."""
        self.registry.register(Collected(collect))

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A total kept elsewhere that only grows while the node runs: ``edgeswarm_NAME_total`` in /metrics (a rate() of it
        means something; of a gauge, Prometheus's conventions say it does not), ``NAME`` in /status."""
        self.readings[name] = (doc, read, CounterMetricFamily)

    def response(self, status: int, endpoint: str, seconds: float) -> None:
        """One answer given: its status and how long it took, by endpoint class."""
        self.responses[(status, endpoint)] += 1
        self.durations.labels(self.role, endpoint).observe(seconds)

    def count_content(self, direction: str, cid: str, kind: str, nbytes: int) -> None:
        """Bytes of one content; past MAX_CONTENT_SERIES distinct ids, new ones count as content="other"."""
        self.content[(direction, _capped(cid, self._content_ids, MAX_CONTENT_SERIES), kind)] += nbytes

    def forget_content(self, cid: str) -> None:
        """A content the node no longer holds: its series go, and its place under MAX_CONTENT_SERIES is free again (a
        live stream's segments, each a content, took all 256 within ten minutes, and every file after them was
        "other" for the life of the process: a soak session)."""
        if cid in self._content_ids:
            self._content_ids.discard(cid)
            for key in [k for k in self.content if k[1] == cid]:
                del self.content[key]

    def count_received(self, kind: str, source: str, nbytes: int) -> None:
        """Bytes from one source; past MAX_SOURCE_SERIES distinct sources, new ones count as source="other"."""
        self.received[(kind, _capped(source, self._sources, MAX_SOURCE_SERIES))] += nbytes

    def collect(self):
        sent = CounterMetricFamily("edgeswarm_bytes_sent", "Payload bytes sent, by requester kind", labels=["role", "to"])
        for to, n in self.sent.items():
            sent.add_metric([self.role, to], n)
        received = CounterMetricFamily("edgeswarm_bytes_received", "Payload bytes received, by source", labels=["role", "kind", "source"])
        for (kind, source), n in self.received.items():
            received.add_metric([self.role, kind, source], n)
        events = CounterMetricFamily("edgeswarm_events", "Cache and transfer events", labels=["role", "event", "detail"])
        for (event, detail), n in self.events.items():
            events.add_metric([self.role, event, detail], n)
        responses = CounterMetricFamily(
            "edgeswarm_http_responses", "HTTP responses by status and endpoint class", labels=["role", "status", "endpoint"]
        )
        for (status, endpoint), n in self.responses.items():
            responses.add_metric([self.role, str(status), endpoint], n)
        cache = CounterMetricFamily(
            "edgeswarm_cache_lookups",
            "Pieces asked of the edge's cache: held (hit), fetched upstream (miss), or joined to a fetch in flight (collapsed)",
            labels=["role", "result"],
        )
        for result in CACHE_RESULTS:
            cache.add_metric([self.role, result], self.cache[result])
        content = CounterMetricFamily(
            "edgeswarm_content_bytes",
            f"Payload bytes per content, by direction and source kind (at most {MAX_CONTENT_SERIES} content ids, then other)",
            labels=["role", "direction", "content", "kind"],
        )
        for (direction, cid, kind), n in self.content.items():
            content.add_metric([self.role, direction, cid, kind], n)
        yield from (sent, received, events, responses, content)
        if self.role == "edge":  # the one role with a piece cache that answers others (a peer's is the engine's)
            yield cache
        for name, (doc, read, family) in self.readings.items():
            yield family(f"edgeswarm_{name}", doc, value=read(), labels=None)

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    def status(self) -> dict:
        by_status: Counter[int] = Counter()
        by_endpoint: dict[str, dict[str, int]] = {}
        for (s, endpoint), n in sorted(self.responses.items()):
            by_status[s] += n
            by_endpoint.setdefault(endpoint, {})[str(s)] = n
        return {
            "role": self.role,
            "uptime_s": round(time.monotonic() - self._began, 1),
            "started": self.started,  # Unix time: which process counted these (a merge tells a restart by it)
            "bytes_sent": dict(self.sent),
            "bytes_received": [{"kind": k, "source": s, "bytes": n} for (k, s), n in sorted(self.received.items())],
            "events": {f"{e}:{d}" if d else e: n for (e, d), n in sorted(self.events.items())},
            "responses": {str(s): n for s, n in sorted(by_status.items())},
            "responses_by_endpoint": by_endpoint,
            **({"cache_lookups": {r: self.cache[r] for r in CACHE_RESULTS}} if self.role == "edge" else {}),
            **{name: read() for name, (_, read, _) in self.readings.items()},
        }


class Collected:
    """A Prometheus collector around a function (a registry's, or ``generate_latest``'s: an object with ``collect``)."""

    def __init__(self, collect: Callable[[], Sequence[Metric]]):
        self.collect = collect


def _capped(value: str, known: set[str], cap: int) -> str:
    """``value`` itself if known, or made known while fewer than ``cap`` are; else OTHER."""
    if value in known:
        return value
    if len(known) < cap:
        known.add(value)
        return value
    return OTHER
