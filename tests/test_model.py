"""The simulator's formulas against hand-computed cases, and the vectorised series against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from edgeswarm.sim import model, trace


# -- one group ---------------------------------------------------------------------------------
def test_server_rate_by_hand():
    # j=1: 400; j=2: 800 − 128 = 672; j=3: 1200 − (128 + 768) = 304
    assert model.server_rate([128, 768, 512], 400) == 672
    # the same viewers in another order: 400, 800 − 768 = 32, 1200 − 1280 < 0 → the first viewer's r
    assert model.server_rate([768, 512, 128], 400) == 400
    # uploads below r: every newcomer adds r − u; j=3: 1200 − 256 = 944
    assert model.server_rate([128, 128, 128], 400) == 944


def test_one_viewer_costs_r_and_nobody_costs_nothing():
    assert model.server_rate([6000], 400) == 400
    assert model.server_rate([], 400) == 0
    assert model.vod_group_bound([], 400) == 0


def test_bound_by_hand():
    assert model.vod_group_bound([128, 768, 512], 400) == 0  # 1200 − 1408 < 0
    assert model.vod_group_bound([128, 128, 128], 400) == 1200 - 384
    assert model.vod_group_bound([128], 400) == 272


def test_limited_is_a_third_of_the_upload():
    # u/3 = 128, 256: 400, 800 − 128 = 672, 1200 − 384 = 816
    assert model.server_rate(np.array([384, 768, 512]) / 3, 400) == pytest.approx(816)


def test_update_rate_by_hand():
    # demand 3 × 280 = 840; full supply 128 + 768 + 768 = 1664; a third: 554.67
    demand, supply = 840.0, 1664.0
    assert model.update_rate(demand, supply) == 0
    assert model.update_rate(demand, supply / 3) == pytest.approx(840 - 1664 / 3)
    assert list(model.update_rate([100, 500], [300, 200])) == [0, 300]


def test_segments_match_one_group_at_a_time():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 9, size=200)
    u = rng.choice([128.0, 384, 512, 768], size=sizes.sum())
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    got, bound = model.segment_server_rates(starts, u, 400), model.segment_bounds(starts, u, 400)
    for i, (a, n) in enumerate(zip(starts, sizes, strict=True)):
        assert got[i] == pytest.approx(model.server_rate(u[a : a + n], 400))
        assert bound[i] == pytest.approx(model.vod_group_bound(u[a : a + n], 400))
        assert bound[i] <= got[i]


# -- time series -----------------------------------------------------------------------------
def tiny():
    """Three viewers of video 0 in region 0 and one of video 1 in region 1; step 100 s."""
    start = np.array([0.0, 50, 150, 20])
    duration = np.array([300.0, 200, 100, 90])
    region = np.array([0, 0, 0, 1])
    content = np.array([0, 0, 0, 1])
    up = np.array([128.0, 768, 512, 768])
    return model.sessions(start, duration, region, content, up, np.full(4, 400.0), step=100)


def test_series_by_hand():
    s = tiny()
    # instants 0, 100, 200 (then nothing until the 5-minute bin ends at 300)
    # t=0: region 0 has viewer a (128) → 400; region 1: d starts at 20, not yet online
    # t=100: a, b (b arrived at 50) → max(400, 800 − 128) = 672; region 1: d (online 20..110) → 400
    # t=200: a, b, c → max(400, 672, 1200 − 896) = 672; region 1: nothing
    x = model.vod_series(s, ("x", "y"), 400, 1 / 3, 100)
    assert x.rates["cdn"].tolist() == [[400, 0], [800, 400], [1200, 0]]
    assert x.rates["p2p"].tolist() == [[400, 0], [672, 400], [672, 0]]
    assert x.rates["bound"].tolist() == [[272, 0], [0, 0], [0, 0]]
    # limited: u/3 = 42.67, 256, 170.67 → t=200: max(400, 800 − 42.67, 1200 − 298.67) = 901.33
    assert x.rates["limited"][2, 0] == pytest.approx(1200 - (128 + 768) / 3)


def test_update_series_by_hand():
    s = tiny()
    x = model.update_series(s, ("x", "y"), 1 / 3, 100)
    # t=100 region 0: demand 800, supply 896 → 0; a third: 800 − 298.67
    assert x.rates["cdn"][1].tolist() == [800, 400]
    assert x.rates["p2p"][1].tolist() == [0, 0]
    assert x.rates["limited"][1, 0] == pytest.approx(800 - 896 / 3)
    assert x.rates["limited"][1, 1] == pytest.approx(400 - 256)
    # t=0 region 0: demand 400, supply 128
    assert x.rates["p2p"][0, 0] == 272


def test_five_minute_mean_and_p95():
    x = np.arange(60, dtype=float)  # 10-second steps: 10 minutes, two bins
    assert model.five_minute_means(x, 10).tolist() == [14.5, 44.5]
    assert model.p95(np.arange(1, 21, dtype=float)) == pytest.approx(19.05)  # 1 + 0.95 · 19
    rates = {k: np.array([[100.0], [300.0]]).repeat(30, axis=0) for k in model.RATE_SERIES}  # one region, 2 bins
    f = model.figures({k: v[:, 0] for k, v in rates.items()}, 10)
    assert f["cdn_mbps"] == pytest.approx(0.29)  # 100 + 0.95 · 200 kbit/s
    assert f["savings"] == 0


def test_total_is_the_percentile_of_the_sum():
    # two regions peaking at different times: the total's p95 is below the sum of their p95s
    a = np.array([1000.0] * 30 + [0.0] * 30)
    b = a[::-1].copy()
    series = model.Series(0, 10, ("a", "b"), {k: np.stack([a, b], axis=1) for k in model.RATE_SERIES})
    out = model.summary(series)
    assert out["total"]["cdn_mbps"] == pytest.approx(1.0)
    assert out["total"]["sum_of_region_p95_mbps"]["cdn"] == pytest.approx(2 * 0.95)


def reference(s: model.Sessions, nreg: int, r: float, share: float) -> dict:
    """The per-instant formulas, one group at a time, with Python loops."""
    out = {k: np.zeros((s.steps, nreg)) for k in model.RATE_SERIES}
    for k in range(s.steps):
        on = np.flatnonzero((s.k0 <= k) & (k < s.k1))  # arrival order
        for g in {(s.region[i], s.content[i]) for i in on}:
            u = np.array([s.up[i] for i in on if (s.region[i], s.content[i]) == g])
            out["cdn"][k, g[0]] += u.size * r
            out["p2p"][k, g[0]] += model.server_rate(u, r)
            out["limited"][k, g[0]] += model.server_rate(share * u, r)
            out["bound"][k, g[0]] += model.vod_group_bound(u, r)
    return out


@pytest.fixture(scope="module")
def small():
    w = trace.Workload(viewers=400, days=0.2, videos=6, regions=("a", "b", "c"), length_s=600, seed=5, diurnal=0.8)
    t = trace.synthetic(w, trace.tiermod.table("att"))
    return model.sessions(t.start, t.duration, t.region, t.content, t.up_kbps, t.rate_kbps, step=30), len(w.regions)


def test_vectorised_matches_the_loop(small):
    s, nreg = small
    want = reference(s, nreg, 400, 1 / 3)
    got = model.vod_series(s, tuple("abc"), 400, 1 / 3, 30).rates
    for k in model.RATE_SERIES:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 500, 10**9])
def test_chunks_do_not_change_the_answer(small, chunk):
    s, _ = small
    one = model.vod_series(s, tuple("abc"), 400, 1 / 3, 30, chunk_pairs=10**12).rates
    many = model.vod_series(s, tuple("abc"), 400, 1 / 3, 30, chunk_pairs=chunk).rates
    for k in model.RATE_SERIES:
        np.testing.assert_allclose(many[k], one[k], atol=1e-6)


def test_step_must_divide_five_minutes():
    with pytest.raises(ValueError, match="divide"):
        model.sessions([0.0], [10.0], [0], [0], [1.0], [1.0], step=7)
