"""The edge's remembered token checks: a hit skips the signature check, never the expiry."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.trust import access, tokens


@pytest.fixture
def key() -> Ed25519PrivateKey:
    access._cache.clear()
    return Ed25519PrivateKey.generate()


def test_a_verified_token_is_remembered(key, monkeypatch):
    raw = tokens.issue(key, "alice", "/", 3600)
    first = access._verified(raw, key.public_key())

    def no_more(*_):
        raise AssertionError("verified again")

    monkeypatch.setattr(tokens, "verify", no_more)
    assert access._verified(raw, key.public_key()) is first


def test_a_remembered_token_still_expires(key):
    raw = tokens.issue(key, "alice", "/", 60, now=time.time() - 3600)
    grant = tokens.Grant("alice", "/", None, time.time() - 3540, raw)
    access._cache[(key.public_key().public_bytes_raw(), raw)] = grant  # as if remembered while it was valid
    with pytest.raises(tokens.TokenError) as err:
        access._verified(raw, key.public_key())
    assert err.value.status == 401 and "expired" in err.value.message
    assert not access._cache


def test_only_good_tokens_are_remembered_and_the_cache_is_bounded(key, monkeypatch):
    with pytest.raises(tokens.TokenError):
        access._verified("not.a.token", key.public_key())
    assert not access._cache
    monkeypatch.setattr(access._cache, "limit", 3)
    raws = [tokens.issue(key, f"u{i}", "/", 3600) for i in range(5)]
    for raw in raws:
        access._verified(raw, key.public_key())
    assert [r for _, r in access._cache] == raws[2:]


def test_a_token_is_remembered_per_origin_key(key):
    raw = tokens.issue(key, "alice", "/", 3600)
    access._verified(raw, key.public_key())
    with pytest.raises(tokens.TokenError):
        access._verified(raw, Ed25519PrivateKey.generate().public_key())  # another origin: checked afresh, refused
