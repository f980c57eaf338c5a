"""The HAVE stream's rules, driven directly: batching, the subscriber cap, the line format, latency, back-off."""

from __future__ import annotations

import json

import pytest

from edgeswarm.policy import bitfield
from edgeswarm.policy.engine import Neighbour, refuse_neighbour
from edgeswarm.protocol.havefeed import (
    BATCH,
    HEARTBEAT_LINE,
    LINE_BURST,
    MAX_BACKOFF,
    MAX_BUFFER,
    MAX_LATENCY_S,
    HaveFeed,
    LatencyStats,
    StreamBudget,
    Subscriber,
    abuse_backoff,
    backoff,
    have_line,
    max_line,
    parse_line,
    snapshot_line,
    too_slow,
)


def test_a_batch_is_one_line_with_each_piece_once_and_the_time_of_the_first():
    sub = Subscriber()
    woken = []
    sub.on_pending = lambda: woken.append(1)
    sub.add(5, 100.0)
    sub.add(2, 100.01)
    sub.add(5, 100.02)  # stored again (evicted and refetched): said once
    assert len(woken) == 3
    assert json.loads(sub.take()) == {"have": [5, 2], "at": 100.0}
    assert sub.take() is None  # nothing new since
    sub.add(7, 101.0)
    assert json.loads(sub.take()) == {"have": [7], "at": 101.0}


def test_stored_pieces_reach_the_subscribers_of_that_content_only():
    feed = HaveFeed()
    a, b, other = feed.subscribe("c1"), feed.subscribe("c1"), feed.subscribe("c2")
    feed.stored("c1", 3, 1.0)
    assert parse_line(a.take(), 8).pieces == {3}
    assert parse_line(b.take(), 8).pieces == {3}
    assert other.take() is None
    feed.unsubscribe("c1", a)
    feed.stored("c1", 4, 2.0)
    assert a.take() is None and parse_line(b.take(), 8).pieces == {4}


def test_at_most_cap_subscribers_per_content():
    feed = HaveFeed(cap=64)
    subs = [feed.subscribe("c") for _ in range(64)]
    assert all(subs) and feed.count("c") == 64
    assert feed.subscribe("c") is None  # the 65th: 429
    assert feed.subscribe("d") is not None  # another content has its own cap
    feed.unsubscribe("c", subs[0])
    assert feed.subscribe("c") is not None


def test_close_wakes_every_writer():
    feed = HaveFeed()
    sub = feed.subscribe("c")
    woken = []
    sub.on_pending = lambda: woken.append(1)
    feed.close()
    assert sub.closed and woken


def test_a_subscriber_that_reads_nothing_is_dropped_past_the_buffer_cap():
    assert not too_slow(MAX_BUFFER)
    assert too_slow(MAX_BUFFER + 1)


def test_lines_round_trip():
    snap = parse_line(snapshot_line({0, 9}, 10, 5.5), 10)
    assert (snap.kind, snap.pieces, snap.at) == ("snapshot", {0, 9}, 5.5)
    have = parse_line(have_line([1, 2], 6.0), 10)
    assert (have.kind, have.pieces, have.at) == ("have", {1, 2}, 6.0)
    assert parse_line(HEARTBEAT_LINE, 10).kind == "heartbeat"


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"have": [10], "at": 1}\n',  # past the last piece
        b'{"have": [-1], "at": 1}\n',
        b'{"have": [true], "at": 1}\n',
        b'{"have": "1,2", "at": 1}\n',
        b'{"have": [1], "at": "soon"}\n',
        b'{"have": [1], "at": -Infinity}\n',  # json.loads takes these: a hostile clock would be an unbounded latency
        b'{"have": [1], "at": NaN}\n',
        b'{"bitfield": "gA==", "at": Infinity}\n',
        b'{"have": [1], "at": true}\n',
        b'{"bitfield": "!!", "at": 1}\n',
        json.dumps({"bitfield": bitfield.encode({1}, 32)}).encode(),  # wrong length for 10 pieces
        b"\xff\xfe\n",
    ],
)
def test_malformed_lines_are_refused(line):
    with pytest.raises(ValueError):
        parse_line(line, 10)


def test_latency_percentiles():
    stats = LatencyStats()
    assert stats.percentiles() is None
    for ms in range(1, 101):
        stats.add(ms / 1000)
    assert stats.percentiles() == {"p50": 0.05, "p95": 0.095}  # nearest rank, as the edge's region figures


def test_latency_ignores_samples_a_skewed_clock_made():
    stats = LatencyStats()
    for seconds in (-3.0, MAX_LATENCY_S + 1, 1e12, float("inf")):  # sender's clock ahead of ours, or far behind
        stats.add(seconds)
    assert stats.percentiles() is None  # nothing the edge would refuse in an announce
    stats.add(MAX_LATENCY_S)
    assert stats.percentiles() == {"p50": MAX_LATENCY_S, "p95": MAX_LATENCY_S}


def test_latency_keeps_the_newest_samples_only():
    stats = LatencyStats(keep=10)
    for _ in range(10):
        stats.add(5.0)
    for _ in range(10):
        stats.add(0.01)
    assert stats.percentiles() == {"p50": 0.01, "p95": 0.01}


def test_reconnect_backoff_doubles_up_to_a_cap():
    assert [backoff(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backoff(50) == MAX_BACKOFF


def test_a_subscriber_cannot_take_a_known_id_nor_a_third_place_for_its_address():
    known = [Neighbour("a", "http://10.0.0.1:7000", True), Neighbour("b", "http://10.0.0.2:7000", True)]
    assert refuse_neighbour(known, "c", "http://10.0.0.3:7000") is None
    assert "already known" in refuse_neighbour(known, "a", "http://10.0.0.9:7000")  # a's id, claimed from elsewhere
    known.append(Neighbour("d", "http://10.0.0.3:7001", True))
    assert refuse_neighbour(known, "e", "http://10.0.0.3:7002") is None  # a second place for 10.0.0.3
    known.append(Neighbour("e", "http://10.0.0.3:7002", True))
    assert "address has 2" in refuse_neighbour(known, "f", "http://10.0.0.3:7003")
    v6 = [Neighbour("g", "http://[2001:db8::1]:7000", True), Neighbour("h", "http://[2001:db8::2]:7000", True)]
    assert refuse_neighbour(v6, "i", "http://[2001:db8::3]:7000"), "an IPv6 /64 counts as one address, as on the tracker"


def test_one_address_takes_at_most_per_source_places():
    feed = HaveFeed(cap=64, per_source=4)
    assert all(feed.subscribe("c", "10.0.0.9") is not None for _ in range(4))
    assert feed.subscribe("c", "10.0.0.9") is None  # the fifth from that address: 429
    assert feed.subscribe("c", "10.0.0.10") is not None  # another address still finds room
    assert feed.subscribe("d", "10.0.0.9") is not None  # another content has its own places


def test_a_legitimate_sender_stays_within_its_stream_budget():
    """Snapshot, a batch every BATCH seconds for a minute listing every piece about once, heartbeats: never over."""
    count = 4096
    budget = StreamBudget(count, 0.0)
    assert budget.spend(len(snapshot_line(range(count), count, 0.0)), 0.0) is None
    now, piece = 0.0, 0
    while now < 60.0:
        now += BATCH
        batch = range(piece % count, piece % count + 3)
        piece += 3
        assert budget.spend(len(have_line([i % count for i in batch], 1765432100.123456)), now) is None
    assert budget.spend(len(have_line(range(count), 1765432100.123456)), now) is None  # a whole backlog in one line
    for _ in range(LINE_BURST - 10):  # a backlog of batches arriving together after a stall
        assert budget.spend(60, now) is None


def test_a_heartbeat_flood_is_over_budget_within_a_few_hundred_lines():
    budget = StreamBudget(32, 0.0)
    spent = [budget.spend(len(HEARTBEAT_LINE), i * 1e-6) for i in range(1000)]
    first = next(i for i, why in enumerate(spent) if why)
    assert first <= LINE_BURST and "lines a second" in str(spent[first])


def test_a_slow_flood_of_lines_is_over_budget_too():
    """2.5 lines per batch interval, forever: over twice the batching rate."""
    budget = StreamBudget(32, 0.0)
    whys = [budget.spend(3, i * BATCH / 5) for i in range(100_000)]
    assert any(whys)


def test_lines_too_many_bytes_for_the_pieces_are_over_budget():
    count = 4096
    budget = StreamBudget(count, 0.0)
    line = len(have_line(range(count), 0.0))
    whys = [budget.spend(line, i * 0.05) for i in range(200)]  # every piece, 20 times a second: within the line rate
    assert any(whys) and "bytes" in str(next(w for w in whys if w))


def test_the_longest_line_is_what_the_piece_count_justifies():
    for count in (1, 32, 1000, 65536):
        assert len(have_line(range(count), 1765432100.123456)) <= max_line(count)
        assert len(snapshot_line(range(count), count, 1765432100.123456)) <= max_line(count)
    assert max_line(32) < 1024 and max_line(65536) < 1024 * 1024


def test_abuse_backoff_doubles_from_30_s_up_to_10_minutes():
    assert [abuse_backoff(n) for n in (1, 2, 3, 10)] == [30.0, 60.0, 120.0, 600.0]


def test_a_line_nested_too_deep_is_not_a_have_line():
    """A ValueError like any malformed line, so the subscriber closes the stream; json.loads alone raises RecursionError."""
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_line(b"[" * 5000 + b"\n", 20_000)
