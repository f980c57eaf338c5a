"""The token bucket: long-run rate, burst, debt, unlimited; simulated time, plus one short real-time check."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeswarm.policy.ratelimit import TokenBucket

KIB = 1024
MB = 1_000_000


def send_all(bucket: TokenBucket, total: int, chunk: int, start: float = 0.0) -> list[tuple[float, int]]:
    """A sender that throttles each chunk and sends it when told: (send time, bytes sent so far) per chunk."""
    now, sent, log = start, 0, []
    while sent < total:
        n = min(chunk, total - sent)
        now += bucket.delay(now, n)
        sent += n
        log.append((now, sent))
    return log


def test_default_burst():
    assert TokenBucket(1 * MB).burst == 250_000
    assert TokenBucket(10_000).burst == 64 * KIB
    assert TokenBucket(1 * MB, burst=1000).burst == 1000


@pytest.mark.parametrize("rate", [None, 0])
def test_unlimited_never_waits(rate):
    bucket = TokenBucket(rate)
    assert all(bucket.delay(0.0, 1 << 30) == 0 for _ in range(100))


def test_long_run_rate_is_the_configured_rate():
    bucket = TokenBucket(1 * MB)
    log = send_all(bucket, 200 * MB, 64 * KIB)
    end, sent = log[-1]
    assert sent / end == pytest.approx(1 * MB, rel=0.05)


@settings(max_examples=40, deadline=None)
@given(rate=st.integers(10 * KIB, 10 * MB), chunk=st.sampled_from([1 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 1024 * KIB]))
def test_never_ahead_of_rate_plus_burst_and_within_5_percent_over_the_long_run(rate, chunk):
    bucket = TokenBucket(rate)
    total = max(40 * int(bucket.burst), 400 * chunk)
    log = send_all(bucket, total, max(chunk, total // 3000))
    for now, sent in log:
        assert sent <= bucket.burst + rate * now + 1e-6 * sent
    end, sent = log[-1]
    assert sent / end == pytest.approx(rate, rel=0.05)


def test_a_piece_larger_than_the_burst_goes_out_then_the_debt_is_paid():
    bucket = TokenBucket(1000, burst=100)
    assert bucket.delay(0.0, 1100) == pytest.approx(1.0)  # 100 in the bucket, 1000 owed
    assert bucket.delay(0.5, 0) == pytest.approx(0.5)  # half of the debt paid off
    assert bucket.delay(1.0, 100) == pytest.approx(0.1)  # debt paid, bucket empty: wait for 100 tokens
    assert bucket.delay(10.0, 100) == 0  # refilled meanwhile


def test_concurrent_reservations_queue_up():
    bucket = TokenBucket(1000, burst=0)
    waits = [bucket.delay(0.0, 500) for _ in range(4)]
    assert waits == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_idle_time_refills_only_up_to_the_burst():
    bucket = TokenBucket(1000, burst=500)
    assert bucket.delay(0.0, 500) == 0
    assert bucket.delay(3600.0, 500) == 0  # an hour idle: one burst back, not 3.6 MB
    assert bucket.delay(3600.0, 1000) == pytest.approx(1.0)


async def test_throttle_sleeps_for_the_debt():
    bucket = TokenBucket(1 * MB, burst=64 * KIB)
    start = time.monotonic()
    await bucket.throttle(64 * KIB)  # within the burst: no wait
    assert time.monotonic() - start < 0.05
    await bucket.throttle(100_000)  # 100 kB over at 1 MB/s
    assert 0.09 <= time.monotonic() - start < 1.0


async def test_throttle_unlimited_returns_at_once():
    start = time.monotonic()
    for _ in range(1000):
        await TokenBucket(None).throttle(1 << 30)
    assert time.monotonic() - start < 0.5


# -- one bucket for an edge's worker processes (node/sharedbucket.py) --------------------------------------------------


def test_buckets_on_one_file_share_one_cap(tmp_path):
    """Two workers' buckets on one file: what one reserves, the other waits for; together they keep the one rate."""
    from edgeswarm.node.sharedbucket import SharedTokenBucket

    path = str(tmp_path / "upload.bucket")
    a, b = SharedTokenBucket(path, 1 * MB), SharedTokenBucket(path, 1 * MB)
    now, sent = 0.0, 0
    for n in range(200):  # the two alternate, each 64 KiB at a time, as two workers' responses do
        now += (a if n % 2 else b).delay(now, 64 * KIB)
        sent += 64 * KIB
    assert now == pytest.approx((sent - a.burst) / MB)  # one cap: split in two, or doubled, would show here
    late = SharedTokenBucket(path, 1 * MB)  # a worker restarted meanwhile takes the bucket as it is, not a full one
    assert late.delay(now, 64 * KIB) > 0
    for bucket in (a, b, late):
        bucket.close()


def test_a_shared_bucket_holds_across_processes(tmp_path):
    """Forked processes (as node/workers.py forks workers) draw from one bucket: together they wait the one rate out."""
    import multiprocessing

    from edgeswarm.node.sharedbucket import SharedTokenBucket

    path = str(tmp_path / "upload.bucket")

    def draw(out) -> None:
        bucket = SharedTokenBucket(path, 1 * MB)
        out.put(sum(bucket.delay(0.0, 64 * KIB) for _ in range(8)))  # one instant: each reservation adds to the debt

    out = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=draw, args=(out,)) for _ in range(2)]
    for p in procs:
        p.start()
    waits = sorted(out.get(timeout=10) for _ in procs)
    for p in procs:
        p.join(10)
    last = SharedTokenBucket(path, 1 * MB)
    assert last.delay(0.0, 0) == pytest.approx((16 * 64 * KIB - last.burst) / MB)  # both processes' 16 reservations
    assert waits[1] > waits[0] > 0
    last.close()
