"""The publishing rules without daemons: quotas, the upload declaration, the publish scope, the staging area."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.cli.origin import quota_policy, user_quota
from edgeswarm.errors import HttpError
from edgeswarm.policy.quota import QuotaExceeded, QuotaPolicy
from edgeswarm.protocol import upload
from edgeswarm.store.uploads import Staging
from edgeswarm.trust import tokens

KEY = Ed25519PrivateKey.generate()
SHA = hashlib.sha256(b"x").hexdigest()


# ----- quotas ------------------------------------------------------------------------------------------------------------


def test_quota_counts_published_files_and_other_uploads_reservations():
    q = QuotaPolicy(100)
    q.check("alice", {"users/alice/a": 40}, {"users/alice/b": 30}, "users/alice/c", 30)  # 100: fits exactly
    with pytest.raises(QuotaExceeded) as exc:
        q.check("alice", {"users/alice/a": 40}, {"users/alice/b": 30}, "users/alice/c", 31)
    assert exc.value.status == 413 and "holds 70 bytes of a 100-byte quota" in exc.value.message and "at most 30 fit" in exc.value.message


def test_replacing_a_file_or_resuming_its_upload_does_not_count_it_twice():
    q = QuotaPolicy(100)
    q.check("alice", {"users/alice/a": 90}, {}, "users/alice/a", 100)  # the old version's bytes are freed
    q.check("alice", {}, {"users/alice/a": 90}, "users/alice/a", 100)  # its own reservation is not another's
    assert q.usage({"users/alice/a": 90, "users/alice/b": 5}, {"users/alice/a": 50, "users/alice/c": 1}, "users/alice/a") == 6


def test_per_user_quotas_override_the_default_and_zero_refuses_with_403():
    q = QuotaPolicy(10, {"big": 1000, "mallory": 0})
    assert (q.limit("alice"), q.limit("big"), q.limit("mallory")) == (10, 1000, 0)
    q.check("big", {}, {}, "users/big/x", 1000)
    with pytest.raises(QuotaExceeded) as exc:
        q.check("mallory", {}, {}, "users/mallory/x", 0)
    assert exc.value.status == 403


def test_user_quota_flags():
    assert user_quota("5GB") == (None, 5_000_000_000) and user_quota("alice=1MiB") == ("alice", 1 << 20)
    policy = quota_policy([(None, 5), ("alice", 7), (None, 9)], 1)
    assert (policy.default, dict(policy.per_user)) == (9, {"alice": 7})
    assert quota_policy([], 123).default == 123
    with pytest.raises(Exception, match="SIZE"):
        user_quota("=5GB")


# ----- the declaration ---------------------------------------------------------------------------------------------------


def test_declared_whole_chunk_and_query():
    base = {upload.LENGTH_HEADER: "100", upload.SHA256_HEADER: SHA.upper()}
    whole = upload.declared(base, {})
    assert (whole.length, whole.sha256, whole.whole) == (100, SHA, True)
    chunk = upload.declared({**base, "Content-Range": "bytes 10-19/100"}, {})
    assert (chunk.start, chunk.end, chunk.whole, chunk.query) == (10, 19, False, False)
    query = upload.declared({**base, "Content-Range": upload.status_query(100)}, {})
    assert query.query and not query.whole
    assert upload.declared({}, {"length": "5", "sha256": SHA}).length == 5  # the query's form
    assert upload.content_range(10, 20, 100) == "bytes 10-19/100"


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({}, "must declare"),
        ({upload.LENGTH_HEADER: "-1", upload.SHA256_HEADER: SHA}, "whole number"),
        ({upload.LENGTH_HEADER: "١٢", upload.SHA256_HEADER: SHA}, "whole number"),
        ({upload.LENGTH_HEADER: "10", upload.SHA256_HEADER: "abc"}, "64 hex"),
        ({upload.LENGTH_HEADER: "10", upload.SHA256_HEADER: SHA, "Content-Range": "bytes 0-9/11"}, "says the file has 11"),
        ({upload.LENGTH_HEADER: "10", upload.SHA256_HEADER: SHA, "Content-Range": "bytes 5-4/10"}, "not within"),
        ({upload.LENGTH_HEADER: "10", upload.SHA256_HEADER: SHA, "Content-Range": "bytes 5-10/10"}, "not within"),
        ({upload.LENGTH_HEADER: "10", upload.SHA256_HEADER: SHA, "Content-Range": "items 0-1/10"}, "must be 'bytes"),
    ],
)
def test_bad_declarations_are_400(headers, words):
    with pytest.raises(HttpError) as exc:
        upload.declared(headers, {})
    assert exc.value.status == 400 and words in exc.value.message


# ----- the publish scope -------------------------------------------------------------------------------------------------


def test_publish_scope_round_trip_and_old_tokens_have_none():
    g = tokens.verify(tokens.issue(KEY, "alice", "/users/alice/", 60, scopes=["publish"]), KEY.public_key())
    assert g.scopes == frozenset({"publish"})
    assert tokens.verify(tokens.issue(KEY, "alice", "/", 60), KEY.public_key()).scopes == frozenset()
    assert tokens.unverified_subject(tokens.issue(KEY, "alice", "/", 60)) == "alice"


def test_issue_refuses_unknown_scopes_and_users_that_cannot_be_a_path_segment():
    with pytest.raises(ValueError, match="unknown scope"):
        tokens.issue(KEY, "alice", "/", 60, scopes=["admin"])
    for user in ("a/b", "..", ".hidden", "a b"):
        with pytest.raises(ValueError, match="cannot publish"):
            tokens.issue(KEY, user, "/", 60, scopes=["publish"])
    tokens.issue(KEY, "a/b", "/", 60)  # reading only: any printable user, as before


@pytest.mark.parametrize(
    ("path", "scopes", "allowed"),
    [
        ("users/alice/a.mp4", ["publish"], True),
        ("users/alice/talks/2026/a.mp4", ["publish"], True),
        ("users/alice/a.mp4", [], False),
        ("users/bob/a.mp4", ["publish"], False),
        ("users/alice", ["publish"], False),
        ("users/alice/", ["publish"], False),
        ("users/alicex/a", ["publish"], False),
        ("users/alice/../bob/a", ["publish"], False),
        ("films/a.mp4", ["publish"], False),
    ],
)
def test_authorize_publish_only_under_the_users_own_prefix(path, scopes, allowed):
    g = tokens.verify(tokens.issue(KEY, "alice", "/", 60, scopes=scopes), KEY.public_key())
    if allowed:
        tokens.authorize_publish(g, path)
    else:
        with pytest.raises(tokens.TokenError) as exc:
            tokens.authorize_publish(g, path)
        assert exc.value.status == 403


def test_an_unknown_scope_in_a_token_grants_nothing():
    import jwt

    now = time.time()
    claims = {"iss": "edgeswarm", "sub": "alice", "iat": now, "exp": now + 60, "use": "access", "path": "/", "scope": "admin publish"}
    g = tokens.verify(jwt.encode(claims, KEY, algorithm="EdDSA"), KEY.public_key())
    assert g.scopes == frozenset({"publish"})
    claims["scope"] = ["publish"]
    with pytest.raises(tokens.TokenError, match="scope"):
        tokens.verify(jwt.encode(claims, KEY, algorithm="EdDSA"), KEY.public_key())


# ----- the staging area --------------------------------------------------------------------------------------------------


def test_staging_resumes_the_same_file_and_restarts_for_another(tmp_path):
    st = Staging(tmp_path / "up")
    a = st.open("alice", "users/alice/a", 10, SHA, fresh=False)
    a.part.write_bytes(b"12345")
    assert st.open("alice", "users/alice/a", 10, SHA, fresh=False).offset() == 5
    assert st.pending("alice") == {"users/alice/a": 10} and st.pending("bob") == {}
    assert st.open("alice", "users/alice/a", 11, SHA, fresh=False).offset() == 0  # another length: a new upload
    assert st.open("alice", "users/alice/a", 11, SHA, fresh=True).offset() == 0
    assert hashlib.sha256(b"").hexdigest() == st.sha256(st.find("alice", "users/alice/a"))  # type: ignore[arg-type]
    st.discard(st.find("alice", "users/alice/a"))  # type: ignore[arg-type]
    assert list((tmp_path / "up").iterdir()) == []


def test_sweep_removes_abandoned_uploads_and_strays_only(tmp_path):
    st = Staging(tmp_path / "up", ttl=100)
    old = st.open("alice", "users/alice/old", 10, SHA, fresh=False)
    live = st.open("alice", "users/alice/live", 10, SHA, fresh=False)
    stray = tmp_path / "up" / "0123.part"
    stray.write_bytes(b"x")
    now = time.time()
    for f in (old.part, old.meta, stray):
        os.utime(f, (now - 1000, now - 1000))
    os.utime(live.meta, (now - 1000, now - 1000))  # its part was written lately: still live
    assert st.sweep(now) == 3
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == sorted([live.part.name, live.meta.name])


def test_publish_staged_never_writes_through_a_symlink_out_of_the_published_directory(tmp_path):
    from edgeswarm.store.catalog import Catalog

    root, outside = tmp_path / "pub", tmp_path / "outside"
    (root / "users").mkdir(parents=True)
    outside.mkdir()
    (root / "users" / "alice").symlink_to(outside)
    catalog = Catalog(root, tmp_path / "catalog.json", KEY)
    staged = tmp_path / "staged.part"
    staged.write_bytes(b"hello")
    with pytest.raises(PermissionError):
        catalog.publish_staged("users/alice/sub/a.txt", staged)
    assert list(outside.iterdir()) == [] and staged.exists()
    entry = catalog.publish_staged("users/bob/a.txt", staged)
    assert (root / "users/bob/a.txt").read_bytes() == b"hello" and not staged.exists()
    assert entry.unchanged() and entry.signed.manifest.size == 5  # the next scan finds it as signed
