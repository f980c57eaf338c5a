"""Per-node counters: one source of truth for /status (JSON) and /metrics (Prometheus).

Every node counts what it sent (to clients, to other nodes) and what it
received, by the kind and address of the source, so that "how many bytes
crossed this hop" is read off the nodes themselves rather than guessed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class Metrics:
    def __init__(self, role: str):
        self.role = role
        self.started = time.time()
        self.sent: Counter[str] = Counter()  # bytes, by who asked: client | node
        self.received: Counter[tuple[str, str]] = Counter()  # bytes, by (source kind, source url)
        self.events: Counter[tuple[str, str]] = Counter()  # (event, detail): fetch, collapsed, corrupt, ...
        self.responses: Counter[int] = Counter()
        self.content: Counter[tuple[str, str, str]] = Counter()  # bytes by (direction, content id, source/destination kind)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (doc, read)

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
        responses = CounterMetricFamily("edgeswarm_http_responses", "HTTP responses by status", labels=["role", "status"])
        for status, n in self.responses.items():
            responses.add_metric([self.role, str(status)], n)
        content = CounterMetricFamily(
            "edgeswarm_content_bytes",
            "Payload bytes per content, by direction and source kind",
            labels=["role", "direction", "content", "kind"],
        )
        for (direction, cid, kind), n in self.content.items():
            content.add_metric([self.role, direction, cid, kind], n)
        yield from (sent, received, events, responses, content)
        for name, (doc, read) in self.gauges.items():
            yield GaugeMetricFamily(f"edgeswarm_{name}", doc, value=read(), labels=None)

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    def status(self) -> dict:
        return {
            "role": self.role,
            "uptime_s": round(time.time() - self.started, 1),
            "bytes_sent": dict(self.sent),
            "bytes_received": [{"kind": k, "source": s, "bytes": n} for (k, s), n in sorted(self.received.items())],
            "events": {f"{e}:{d}" if d else e: n for (e, d), n in sorted(self.events.items())},
            "responses": {str(s): n for s, n in sorted(self.responses.items())},
            **{name: read() for name, (_, read) in self.gauges.items()},
        }
