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
