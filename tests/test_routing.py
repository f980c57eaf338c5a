"""The router's policy (routing.py): ranking by region and rendezvous hash, hot edges, health states, input checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeswarm.policy.routing import (
    COMPARATORS,
    DOWN,
    MAX_EDGES,
    STOPPING,
    UNKNOWN,
    UP,
    EdgeHealth,
    EdgeSpec,
    RoutingError,
    RoutingTable,
    Sample,
    Thresholds,
    hrw_score,
    sample_from_status,
    shed_share,
)
from edgeswarm.protocol.registration import edge_spec, load_edge_list, parse_edge_flag

REGIONS = ["east", "west"]
PATHS = [f"films/{n}.mp4" for n in range(400)]


def table(*specs: EdgeSpec, thresholds: Thresholds | None = None) -> RoutingTable:
    t = RoutingTable(thresholds or Thresholds())
    for spec in specs:
        t.add(spec, 0.0)
        t.health[spec.url].succeeded(Sample(1.0, 0, 0, 0), t.thresholds)  # first good poll: up
    return t


def edge(n: int, region: str = "east", capacity: float = 1e6) -> EdgeSpec:
    return EdgeSpec(f"http://127.10.0.{n}:8080", region, capacity)


def first(t: RoutingTable, region: str, key: str) -> str:
    return t.decide(region, key).ranked[0].spec.url


def test_each_region_gets_only_its_own_edges():
    t = table(edge(1), edge(2), edge(3, "west"), edge(4, "west"))
    for path in PATHS[:50]:
        assert {c.spec.region for c in t.decide("east", path).ranked} == {"east"}
        assert {c.spec.region for c in t.decide("west", path).ranked} == {"west"}


def test_a_path_stays_on_its_edge_and_only_a_leaving_edges_paths_move():
    t = table(edge(1), edge(2), edge(3))
    before = {p: first(t, "east", p) for p in PATHS}
    assert before == {p: first(t, "east", p) for p in PATHS}  # deterministic
    assert len(set(before.values())) == 3  # and spread
    t.health[edge(2).url].failed(5.0, "killed", t.thresholds)
    after = {p: first(t, "east", p) for p in PATHS}
    moved = {p for p in PATHS if before[p] != after[p]}
    assert moved == {p for p in PATHS if before[p] == edge(2).url}
    assert edge(2).url not in after.values()


def test_an_edge_that_says_it_is_stopping_is_out_at_once_until_it_registers_again():
    """A restart fitting between two polls was not seen; the edge's polls while it drains must not bring it back, and
    the restarted one is taken at its first good poll, as a new one is."""
    t = table(edge(1), edge(2))
    h = t.health[edge(1).url]
    assert h.leave(3.0) and (h.state, h.reason, h.since) == (DOWN, STOPPING, 3.0)
    assert {c.spec.url for c in t.decide("east", "a").ranked} == {edge(2).url}
    for at in (4.0, 5.0, 6.0):  # it still answers /status while it drains
        assert not h.succeeded(Sample(at, 0, 0, 0), t.thresholds) and h.state == DOWN
    assert not h.leave(6.5) and h.since == 3.0  # said again: no change
    assert h.rejoin(7.0) and h.state == UNKNOWN
    assert h.succeeded(Sample(7.1, 0, 0, 0), t.thresholds) and h.state == UP  # one poll, not up_after
    assert not h.rejoin(8.0)  # a re-registration of an edge that never left changes nothing


def test_a_down_edge_that_says_it_is_stopping_keeps_its_time_and_gives_the_reason():
    t = table(edge(1))
    h = t.health[edge(1).url]
    h.failed(2.0, "connection refused", t.thresholds)
    assert not h.leave(3.0) and (h.state, h.reason, h.since) == (DOWN, STOPPING, 2.0)
    assert t.forgettable(2.0 + 601, 600) == []  # listed: stays, as any listed edge


def test_insertion_order_does_not_matter():
    a, b = table(edge(1), edge(2), edge(3)), table(edge(3), edge(1), edge(2))
    assert all(first(a, "east", p) == first(b, "east", p) for p in PATHS)


def test_capacity_weights_the_share_of_paths():
    t = table(edge(1, capacity=3e6), edge(2, capacity=1e6))
    share = Counter(first(t, "east", p) for p in PATHS)
    assert share[edge(1).url] > 2 * share[edge(2).url]


def test_a_hot_edge_sheds_a_share_of_its_paths_growing_with_its_load():
    def hot_table(load: float) -> RoutingTable:
        t = table(edge(1), edge(2))
        t.health[edge(1).url].egress_Bps = load * edge(1).capacity
        return t

    cool = {p for p in PATHS if first(hot_table(0.0), "east", p) == edge(1).url}
    kept = [sum(first(hot_table(load), "east", p) == edge(1).url for p in cool) for load in (0.5, 0.8, 0.85, 0.9, 0.95, 1.0, 1.5)]
    assert kept[0] == kept[1] == len(cool)  # at or below the threshold nothing moves
    assert kept == sorted(kept, reverse=True) and kept[2] < len(cool) and kept[-2] == kept[-1] == 0
    # the paths it keeps were its own: none of the other edge's comes to it
    assert all(first(hot_table(0.9), "east", p) == edge(2).url for p in set(PATHS) - cool)


def test_shed_share_bounds():
    assert shed_share(0.8, 0.8) == 0.0
    assert shed_share(0.9, 0.8) == pytest.approx(0.5)
    assert shed_share(2.0, 0.8) == 1.0
    assert shed_share(1.2, 1.0) == 1.0


def test_every_edge_shedding_keeps_hash_order():
    t = table(edge(1), edge(2))
    for spec in (edge(1), edge(2)):
        t.health[spec.url].egress_Bps = 5 * spec.capacity
    ranked = t.decide("east", "films/a.mp4").ranked
    assert all(c.shed for c in ranked)
    assert [c.spec.url for c in ranked] == [c.spec.url for c in sorted(ranked, key=lambda c: -c.score)]


def test_no_edge_up_in_the_region_falls_back_to_others():
    t = table(edge(1), edge(3, "west"))
    t.health[edge(1).url].failed(2.0, "refused", t.thresholds)
    d = t.decide("east", "x")
    assert d.fallback and [c.spec.url for c in d.ranked] == [edge(3).url]
    t.health[edge(3).url].failed(2.0, "refused", t.thresholds)
    blind = t.decide("east", "x")  # none up anywhere: the region's as if they were, not a 503 that fails for sure
    assert blind.blind and [c.spec.url for c in blind.ranked] == [edge(1).url]
    assert {c.spec.url for c in t.decide("north", "x").ranked} == {edge(1).url, edge(3).url}  # no edge of its own
    assert not t.decide("east", "x", want=lambda s: False).ranked  # none wanted: nothing to give (the router's 503)
    for at in (3.0, 4.0):  # one up again, of a kind not wanted (another address family):
        t.health[edge(3).url].succeeded(Sample(at, 0, 0, 0), t.thresholds)
    unwanted = t.decide("east", "x", want=lambda s: s.url != edge(3).url)  # not blind, nothing to give (a review)
    assert not unwanted.blind and unwanted.ranked == []


def test_comparators_are_named_and_ordered():
    assert [f.__name__ for f in COMPARATORS] == ["keeps_key_first", "sticky_first", "url_last"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50), st.text(min_size=1, max_size=30), st.floats(min_value=1, max_value=1e12))
def test_hrw_score_is_positive_and_deterministic(key, url, weight):
    s = hrw_score(url, key, weight)
    assert s > 0 and s == hrw_score(url, key, weight)


# -- health ------------------------------------------------------------------------------------------


def test_down_after_failures_and_up_after_successes():
    t = Thresholds(down_after=2, up_after=3)
    h = EdgeHealth()
    assert h.state == UNKNOWN
    assert h.succeeded(Sample(1.0, 0, 0, 0), t) and h.state == UP  # the first poll decides an unknown edge
    assert not h.failed(2.0, "refused", t) and h.state == UP
    assert h.failed(3.0, "refused", t) and h.state == DOWN and h.reason == "refused"
    for n, at in enumerate((4.0, 5.0, 6.0), 1):
        changed = h.succeeded(Sample(at, 0, 0, 0), t)
        assert changed == (n == 3)
    assert h.state == UP and h.since == 6.0


def test_default_thresholds_take_a_killed_edge_out_at_its_first_failed_poll():
    t = Thresholds()
    h = EdgeHealth()
    h.succeeded(Sample(1.0, 0, 0, 0), t)
    assert h.failed(2.0, "refused", t) and h.state == DOWN


def test_an_edge_capped_below_its_stated_capacity_is_loaded_against_its_cap():
    """An edge at --upload-limit 200KB/s registered with 10MB/s was never hot: new clients kept going to it while its
    region's other edge idled (an adversarial session)."""
    t = Thresholds()
    h = EdgeHealth()
    h.succeeded(Sample(0.0, 0, 0, 0, cap_Bps=200_000), t)
    h.succeeded(Sample(1.0, 190_000, 10, 0, cap_Bps=200_000), t)
    assert h.load(10_000_000) == pytest.approx(0.95) and shed_share(h.load(10_000_000), t.hot_load) > 0
    h.succeeded(Sample(2.0, 380_000, 20, 0), t)  # the cap lifted
    assert h.load(10_000_000) == pytest.approx(0.019)
    doc = {"role": "edge", "bytes_sent": {"client": 5}, "responses_by_endpoint": {}, "upload_limit_Bps": 200_000}
    assert sample_from_status(doc, 0.0).cap_Bps == 200_000
    for bad in (None, 0, -5, True, "fast"):
        assert sample_from_status({**doc, "upload_limit_Bps": bad}, 0.0).cap_Bps is None


def test_egress_and_error_rate_come_from_consecutive_polls():
    t = Thresholds(max_error_rate=0.5, min_requests=10)
    h = EdgeHealth()
    h.succeeded(Sample(0.0, 1000, 100, 0), t)
    h.succeeded(Sample(2.0, 5000, 120, 2), t)
    assert h.egress_Bps == 2000 and h.error_rate == pytest.approx(0.1) and h.state == UP
    assert h.load(4000) == pytest.approx(0.5)
    assert h.succeeded(Sample(4.0, 5000, 140, 14), t) is True  # 12 of 20 were 5xx: a failed poll
    assert h.state == DOWN and "5xx" in h.reason
    h.succeeded(Sample(6.0, 5000, 145, 14), t)  # 5 answers: too few to judge
    assert h.error_rate == 0.0


def test_a_restarted_edge_counts_afresh():
    t = Thresholds()
    h = EdgeHealth()
    h.succeeded(Sample(0.0, 10_000, 100, 0), t)
    h.succeeded(Sample(2.0, 50, 1, 0), t)  # counters went back: no rate from this interval
    assert h.egress_Bps == 0.0 and h.state == UP


def test_totals_a_worker_missed_give_no_rate_and_are_no_baseline():
    """A worker that did not answer in time was left out of one /status: the router read the drop as a restart, then
    the next whole totals' jump (the worker's lifetime bytes) as one interval's traffic: an idle edge at 60 MB/s, its
    paths shed as hot (a review)."""
    t = Thresholds()
    h = EdgeHealth()
    h.succeeded(Sample(0.0, 200_000_000, 1000, 0), t)
    h.succeeded(Sample(2.0, 200_000_000, 1000, 0), t)
    h.succeeded(Sample(4.0, 80_000_000, 400, 0, whole=False), t)  # a worker missing from these totals
    h.succeeded(Sample(6.0, 200_002_000, 1001, 0), t)
    assert h.egress_Bps == pytest.approx(500.0) and h.state == UP  # 2 000 bytes over the 4 s since the last whole totals
    doc = {"role": "edge", "bytes_sent": {"client": 5}, "responses_by_endpoint": {}, "workers": {"count": 2, "answered": 1}}
    assert not sample_from_status(doc, 0.0).whole
    assert sample_from_status({**doc, "workers": {"count": 2, "answered": 2}}, 0.0).whole


def test_sample_from_status_ignores_polls_and_scrapes():
    doc = {
        "role": "edge",
        "bytes_sent": {"client": 100, "node": 50},
        "responses_by_endpoint": {"file": {"200": 10, "500": 3}, "piece": {"200": 5}, "status": {"200": 99, "500": 9}},
    }
    assert sample_from_status(doc, 1.0) == Sample(1.0, 150, 18, 3)


def test_an_edge_is_not_judged_by_its_tracker_store_nor_by_its_parent():
    """Redis down (announces 503), Redis full (500) or the origin down (502, 504 for what is not cached) took every
    edge of a region out of rotation (`5xx` past --max-error-rate) while each served the files it held."""
    doc = {
        "role": "edge",
        "bytes_sent": {"client": 100},
        "responses_by_endpoint": {"file": {"200": 10, "502": 30, "504": 5, "503": 1}, "announce": {"503": 80, "500": 20}},
    }
    assert sample_from_status(doc, 1.0) == Sample(1.0, 100, 46, 1)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"role": "edge", "bytes_sent": {}},
        {"role": "edge", "bytes_sent": {"client": -1}, "responses_by_endpoint": {}},
        {"role": "edge", "bytes_sent": {"c": "x"}, "responses_by_endpoint": {}},
        {"role": "router", "bytes_sent": {}, "responses_by_endpoint": {}},  # the router registered as its own edge: a loop
        {"bytes_sent": {}, "responses_by_endpoint": {}},
    ],
)
def test_sample_from_status_refuses_what_is_not_a_status(doc):
    with pytest.raises(ValueError):
        sample_from_status(doc, 0.0)


# -- input ------------------------------------------------------------------------------------------


def test_edge_flag_and_registration():
    spec = parse_edge_flag("http://10.1.0.5:8080/,east,1Gbit/s", REGIONS)
    assert spec == EdgeSpec("http://10.1.0.5:8080", "east", 125_000_000, True)
    assert str(spec.address) == "10.1.0.5"
    assert edge_spec({"url": "http://edge.example:80", "region": "west", "capacity": 5e6}, REGIONS, False).address is None


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("not a dict", "JSON object"),
        ({"url": "ftp://x", "region": "east", "capacity": "1MB/s"}, "http(s) URL"),
        ({"url": "http://x:8080/films", "region": "east", "capacity": "1MB/s"}, "base URL"),
        ({"url": "http://x:99999", "region": "east", "capacity": "1MB/s"}, "bad port"),
        ({"url": "http://edge:secret@x:8080", "region": "east", "capacity": "1MB/s"}, "user or password"),
        ({"url": "http://a b:8080", "region": "east", "capacity": "1MB/s"}, "base URL"),
        ({"url": "http://x:8080", "region": "north", "capacity": "1MB/s"}, "unknown region 'north'"),
        ({"url": "http://x:8080", "region": "east", "capacity": "fast"}, "cannot read rate"),
        ({"url": "http://x:8080", "region": "east", "capacity": 0}, "above zero"),
        ({"url": "http://x:8080", "region": "east", "capacity": True}, "capacity"),
        ({"url": "http://x:8080", "region": "east", "capacity": float("nan")}, "above zero"),
        ({"url": "http://x:8080", "region": "east", "capacity": 1e308}, "between 1kB/s and 10TB/s, not 1e+308 B/s"),
        ({"url": "http://x:8080", "region": "east", "capacity": 1e-6}, "between 1kB/s and 10TB/s"),
        ({"url": "http://x:8080", "region": "east", "capacity": "9" * 300 + "TB/s"}, "between 1kB/s and 10TB/s"),
    ],
)
def test_bad_registrations_say_what_is_wrong(doc, words):
    with pytest.raises(RoutingError, match=None) as exc:
        edge_spec(doc, REGIONS, False)
    assert words in str(exc.value)


def test_bad_edge_flag():
    with pytest.raises(RoutingError, match="URL,REGION,CAPACITY"):
        parse_edge_flag("http://x:1,east", REGIONS)


def test_edge_list_file(tmp_path: Path):
    f = tmp_path / "edges.yaml"
    f.write_text("edges:\n  - {url: 'http://127.10.0.1:8080', region: east, capacity: 10MB/s}\n")
    assert load_edge_list(f, REGIONS) == [EdgeSpec("http://127.10.0.1:8080", "east", 10_000_000)]
    f.write_text("edges:\n  - {url: 'http://127.10.0.1:8080', region: south, capacity: 10MB/s}\n")
    with pytest.raises(RoutingError, match="edge #1: unknown region 'south'"):
        load_edge_list(f, REGIONS)
    with pytest.raises(RoutingError, match="cannot read edge list"):
        load_edge_list(tmp_path / "missing.yaml", REGIONS)


def test_a_registration_cannot_change_a_listed_edge_and_the_table_is_bounded():
    t = table(edge(1))
    with pytest.raises(RoutingError, match="listed"):
        t.add(EdgeSpec(edge(1).url, "west", 1.0, listed=False), 1.0)
    assert t.add(EdgeSpec("http://127.10.1.1:1", "east", 1.0, listed=False), 1.0)
    assert not t.add(EdgeSpec("http://127.10.1.1:1", "west", 2.0, listed=False), 1.0)  # an update
    while len(t.edges) < MAX_EDGES:
        t.add(EdgeSpec(f"http://h{len(t.edges)}:1", "east", 1.0, listed=False), 1.0)
    with pytest.raises(RoutingError, match="holds"):
        t.add(EdgeSpec("http://one-more:1", "east", 1.0, listed=False), 1.0)


def test_registered_edges_down_too_long_are_forgotten_listed_ones_never():
    t = table(edge(1), EdgeSpec("http://127.10.1.1:1", "east", 1.0, listed=False))
    for url in list(t.edges):
        t.health[url].failed(10.0, "refused", t.thresholds)
    assert t.forgettable(100.0, 600.0) == []
    assert t.forgettable(700.0, 600.0) == ["http://127.10.1.1:1"]


def test_a_listed_edge_cannot_leave_by_registration_nor_an_unknown_one():
    t = table(edge(1))  # listed, as the operator's --edge
    with pytest.raises(RoutingError, match="listed in the router's configuration"):
        t.leave(edge(1).url, 1.0)
    with pytest.raises(KeyError):
        t.leave(edge(2).url, 1.0)
    assert t.health[edge(1).url].state == UP
