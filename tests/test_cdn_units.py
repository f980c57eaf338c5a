"""The CDN half's pure parts, driven directly: ranges, paths, units, manifests, eviction, source ranking."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.errors import HttpError
from edgeswarm.policy.eviction import EvictionPolicy
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.protocol.httpspec import parse_ranges
from edgeswarm.protocol.manifest import MIN_PIECE, Manifest, ManifestError, SignedManifest, piece_size_for
from edgeswarm.protocol.paths import clean_request_path
from edgeswarm.protocol.units import UnitError, parse_rate, parse_size


@pytest.mark.parametrize(
    ("header", "span"),
    [("bytes=0-9", (0, 9)), ("bytes=10-", (10, 99)), ("bytes=-10", (90, 99)), ("bytes=90-500", (90, 99)), ("items=0-1", None)],
)
def test_parse_range_forms(header, span):
    assert parse_ranges(header, 100) == (None if span is None else [span])


@pytest.mark.parametrize(
    ("header", "status"),
    [("bytes=5", 400), ("bytes=9-3", 400), ("0-1", 400), ("bytes=100-,200-300", 416), ("bytes=100-", 416), ("bytes=-0", 416)],
)
def test_parse_range_errors(header, status):
    with pytest.raises(HttpError) as err:
        parse_ranges(header, 100)
    assert err.value.status == status
    if status == 416:
        assert err.value.headers["Content-Range"] == "bytes */100"


@given(st.integers(1, 10**12), st.text(max_size=40))
def test_parse_range_never_escapes_the_file(size, header):
    try:
        spans = parse_ranges(header, size)
    except HttpError as exc:
        assert exc.status in (400, 416)
        return
    assert spans is None or all(0 <= first <= last < size for first, last in spans)


@pytest.mark.parametrize(
    "raw", ["/a/../b", "/%2e%2e/etc/passwd", "/a/./b", "//etc/passwd", "/a//b", "/a%5cb", "/a%00b", "/%ff", "/a/%2E%2E/%2e%2e/x"]
)
def test_clean_request_path_rejects_traversal(raw):
    with pytest.raises(HttpError) as err:
        clean_request_path(raw)
    assert err.value.status == 400


@given(st.text(max_size=60))
def test_clean_request_path_output_has_no_dot_segments(text):
    try:
        rel = clean_request_path("/" + text)
    except HttpError:
        return
    assert ".." not in rel.split("/") and not rel.startswith("/") and "\\" not in rel


def test_units():
    assert parse_size("50GB") == 50 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_rate("2MB/s") == 2_000_000 and parse_rate("20Mbit/s") == 2_500_000 and parse_rate("500KB/s") == 500_000
    for bad in ("", "-1MB", "lots", "5 parsecs"):
        with pytest.raises(UnitError):
            parse_size(bad)


def manifest(**kw) -> Manifest:
    d = {"path": "a.bin", "size": 3 * MIN_PIECE + 1, "content_type": "application/octet-stream", "piece_size": MIN_PIECE}
    d |= {"pieces": ("0" * 64,) * 4, "modified": 1700000000} | kw
    return Manifest(**d)


def test_manifest_id_is_stable_and_signature_binds_it():
    key = Ed25519PrivateKey.generate()
    m = manifest()
    assert m.content_id == manifest().content_id != manifest(modified=1).content_id
    signed = SignedManifest.sign(m, key)
    assert SignedManifest.parse(signed.to_json(), key.public_key()).content_id == m.content_id
    with pytest.raises(ManifestError):
        SignedManifest.parse(SignedManifest.sign(manifest(size=5), key).to_json().replace(b'"size":5', b'"size":6'), key.public_key())
    with pytest.raises(ManifestError):
        SignedManifest.parse(signed.to_json(), Ed25519PrivateKey.generate().public_key())


@given(st.integers(0, 2**44))
def test_piece_size_rule(size):
    p = piece_size_for(size)
    assert p >= MIN_PIECE and p & (p - 1) == 0
    assert -(-size // p) <= 2048
    assert p == MIN_PIECE or -(-size // (p // 2)) > 2048  # never larger than needed


def test_lfu_da_keeps_popular_items_and_never_evicts_the_newcomer():
    policy = EvictionPolicy(3)
    for key in "abc":
        policy.add(key, 1)
    for _ in range(5):
        policy.hit("a")
    assert policy.add("d", 1) == ["b"]  # b and c were equally cold: the older goes
    assert policy.add("e", 1) == ["c"]  # d came in at the raised age: c is now the coldest
    assert all(k in policy for k in "ade") and len(policy) == 3 and policy.used == 3
    assert policy.add("big", 3) == ["d", "e", "a"]  # room is made, but never by evicting the newcomer


def test_lfu_da_ages_out_old_popularity():
    policy = EvictionPolicy(2)
    policy.add("old", 1)
    for _ in range(3):
        policy.hit("old")
    for n in range(10):  # a stream of new items, each read a few times, raises the age
        policy.add(f"new{n}", 1)
        for _ in range(5):
            policy.hit(f"new{n}")
    assert "old" not in policy


def test_source_ranking_prefers_measured_speed_and_backs_off_failures():
    r = SourceRanking()
    r.success("slow", 100, 1.0)
    r.success("fast", 1000, 1.0)
    assert r.ranked(["slow", "fast", "new"], 0) == ["fast", "slow", "new"]
    assert r.failure("fast", 10) == 2 and r.failure("fast", 10) == 4
    assert r.ranked(["slow", "fast"], 11) == ["slow"]
    assert r.ranked(["slow", "fast"], 15) == ["fast", "slow"]
