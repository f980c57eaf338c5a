"""Property-based tests of the parsers that face untrusted input: tokens, announces, ranges, bitfields.

Each of these takes bytes from the network; the property is always the same
shape - whatever arrives, the answer is a value or the one error the node turns
into a 4xx, never another exception (which would be a 500 or a dead task).
"""

from __future__ import annotations

import base64
import json
import string

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgeswarm.errors import HttpError
from edgeswarm.policy import bitfield, vocabulary
from edgeswarm.protocol.httpspec import parse_ranges
from edgeswarm.roles import announce
from edgeswarm.trust import tokens
from edgeswarm.trust.tokens import Grant, TokenError

NOW = 1_800_000_000.0
ORIGIN = Ed25519PrivateKey.generate()
PUBLIC = ORIGIN.public_key()
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
B64URL = string.ascii_letters + string.digits + "-_"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_error(call) -> TokenError | None:
    """The TokenError ``call`` raises, or None if it returns; any other exception fails the test."""
    try:
        call()
    except TokenError as exc:
        return exc
    return None


# ----- 1. verify on arbitrary input ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
headers = st.just({"alg": "EdDSA", "typ": "JWT"}) | st.fixed_dictionaries(
    {}, optional={"alg": st.sampled_from(["EdDSA", "none", "None", "HS256", "RS256", "ES256", ""]) | json_values, "typ": json_values}
)
VALID_CLAIMS = {"iss": "edgeswarm", "sub": "alice", "iat": NOW, "exp": NOW + 60, "use": "access", "path": "/films/"}
CLAIM_NAMES = (*VALID_CLAIMS, "region", "nbf", "peer", "cid")
claim_values = json_values | st.floats(NOW - 1e6, NOW + 1e6) | st.sampled_from(["access", "ticket", "/", "/films/", "edgeswarm", "east"])
REMOVE = object()
claim_dicts = st.builds(
    lambda changes: {k: v for k, v in {**VALID_CLAIMS, **changes}.items() if v is not REMOVE},
    st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=5), claim_values | st.just(REMOVE), max_size=3),
)
b64_parts = st.text(B64URL, max_size=120)
dotted = st.tuples(b64_parts, b64_parts, b64_parts).map(".".join)
encoded_json = st.tuples(
    headers.map(lambda h: b64(json.dumps(h).encode())),
    claim_dicts.map(lambda c: b64(json.dumps(c).encode())),
    st.binary(min_size=0, max_size=70).map(b64),
).map(".".join)
binaryish = st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)  # surrogates too
nearly_tokens = st.builds(lambda parts, sep: sep.join(parts), st.lists(b64_parts, max_size=5), st.sampled_from([".", "..", " ", "=."]))
hostile = any_text | binaryish | dotted | encoded_json | nearly_tokens


@PROPERTY
@given(hostile)
def test_verify_refuses_anything_with_401(text):
    err = token_error(lambda: tokens.verify(text, PUBLIC, now=NOW))
    assert err is not None and err.status == 401
    err = token_error(lambda: tokens.verify_ticket(text, [PUBLIC], "ab" * 32, now=NOW))
    assert err is not None and err.status == 401


@PROPERTY
@given(st.integers(4097, 20000), st.sampled_from("A.é\x00"))
def test_verify_refuses_huge_input(length, char):
    err = token_error(lambda: tokens.verify(char * length, PUBLIC, now=NOW))
    assert err is not None and err.status == 401


@PROPERTY
@given(headers, claim_dicts)
def test_verify_signed_arbitrary_claims(header, claims):
    """Even correctly signed, odd claims give a well-typed Grant or a 401: the origin is trusted, its JSON checked anyway."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    text = f"{signing_input}.{b64(ORIGIN.sign(signing_input.encode()))}"
    try:
        g = tokens.verify(text, PUBLIC, now=NOW)
    except TokenError as exc:
        assert exc.status == 401
        return
    assert header.get("alg") == "EdDSA" and claims["use"] == "access" and claims["iss"] == "edgeswarm"
    assert isinstance(g.user, str) and g.user and isinstance(g.path, str) and g.path.startswith("/")
    assert g.region is None or isinstance(g.region, str)
    assert isinstance(g.expires, float) and g.expires >= NOW - tokens.LEEWAY


# ----- 2. a one-character change never yields a different grant ----------------------------------------------------------

TOKEN = tokens.issue(ORIGIN, "alice", "/films/", 3600, region="east", now=NOW)
GRANT = tokens.verify(TOKEN, PUBLIC, now=NOW)


@PROPERTY
@given(st.integers(0, len(TOKEN) - 1), st.sampled_from(B64URL + ".=+/ \x00é"))
def test_single_character_change(position, char):
    assume(TOKEN[position] != char)
    mutated = TOKEN[:position] + char + TOKEN[position + 1 :]
    try:
        g = tokens.verify(mutated, PUBLIC, now=NOW)
    except TokenError as exc:
        assert exc.status == 401
        return
    # Only the unused low bits of the signature's last character can change without effect.
    assert position == len(TOKEN) - 1
    assert (g.user, g.path, g.region, g.expires) == (GRANT.user, GRANT.path, GRANT.region, GRANT.expires)


# ----- 3. authorize -------------------------------------------------------------------------------------------------------

segment = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=10).filter(lambda s: s not in (".", ".."))
segments = st.lists(segment, min_size=1, max_size=4)


@PROPERTY
@given(st.text(max_size=40), st.text(max_size=40), st.none() | st.text(max_size=5), st.none() | st.text(max_size=5))
def test_authorize_only_403(prefix, rel, grant_region, region):
    g = Grant(user="alice", path=prefix, region=grant_region, expires=NOW, token="t")
    err = token_error(lambda: tokens.authorize(g, rel, region))
    assert err is None or err.status == 403


@PROPERTY
@given(segments, segment, st.booleans(), st.none() | st.text(max_size=5))
def test_prefix_covers_its_children(prefix_segments, child, trailing_slash, region):
    prefix = "/" + "/".join(prefix_segments) + ("/" if trailing_slash else "")
    g = Grant(user="alice", path=prefix, region=region, expires=NOW, token="t")
    tokens.authorize(g, (prefix + "/" + child).lstrip("/"), region)
    tokens.authorize(g, "/".join(prefix_segments), region)
    tokens.authorize(Grant(user="alice", path="/", region=None, expires=NOW, token="t"), "/".join([*prefix_segments, child]))


@PROPERTY
@given(segments, segments)
def test_scope_is_segment_aware(scope, path):
    g = Grant(user="alice", path="/" + "/".join(scope), region=None, expires=NOW, token="t")
    err = token_error(lambda: tokens.authorize(g, "/".join(path)))
    assert (err is None) == (path[: len(scope)] == scope)


# ----- 4. parse_announce --------------------------------------------------------------------------------------------------

FIELDS = ("peer_id", "port", "content", "pieces", "have", "uploaded", "downloaded", "event", "stats")
STAT_KINDS = tuple(vocabulary.STAT_KINDS)
ADDRESS_FIELDS = tuple(getattr(announce, "ADDRESS_FIELDS", ()))
VALID = {
    "peer_id": "peer-1",
    "port": 6881,
    "content": "ab" * 32,
    "pieces": 10,
    "have": bitfield.encode({0, 3}, 10),
    "uploaded": 0,
    "downloaded": 5,
    "event": "started",
    "stats": dict.fromkeys(STAT_KINDS, 0),
}
stats_dicts = st.dictionaries(st.sampled_from(STAT_KINDS) | st.text(max_size=8), json_values | st.integers(-5, 10**20), max_size=5)
field_values = json_values | st.integers(-(2**70), 2**70) | st.text(max_size=80) | stats_dicts
announce_docs = (
    json_values
    | st.dictionaries(st.sampled_from(FIELDS + ADDRESS_FIELDS) | st.text(max_size=8), field_values, max_size=12)
    | st.builds(lambda changes: {**VALID, **changes}, st.dictionaries(st.sampled_from(FIELDS + ADDRESS_FIELDS), field_values, max_size=3))
    | st.builds(lambda name, value: {**VALID, name: value}, st.sampled_from(FIELDS), field_values)
    | st.builds(lambda stats: {**VALID, "stats": stats}, stats_dicts)
)


def parsed_or_400(doc):
    try:
        return announce.parse_announce(doc)
    except HttpError as exc:
        assert exc.status == 400
        return None


def test_valid_announce_parses():
    a = announce.parse_announce(VALID)
    assert (a.peer_id, a.port, a.cid, a.pieces) == ("peer-1", 6881, "ab" * 32, 10)


@PROPERTY
@given(announce_docs)
def test_parse_announce_value_or_400(doc):
    a = parsed_or_400(doc)
    if a is None:
        return
    for name in ("port", "pieces", "uploaded", "downloaded"):
        value = getattr(a, name)
        assert type(value) is int and value >= 0
    assert 0 < a.port < 65536
    assert isinstance(a.peer_id, str) and 0 < len(a.peer_id) <= 64
    assert isinstance(a.have_field, str) and a.event in announce.EVENTS
    assert set(a.stats) == set(STAT_KINDS)
    assert all(isinstance(v, int) and v >= 0 for v in a.stats.values())


def test_announce_stats_refuse_booleans():
    with pytest.raises(HttpError) as err:
        announce.parse_announce({**VALID, "stats": {STAT_KINDS[0]: True}})
    assert err.value.status == 400


# ----- 5. parse_ranges ----------------------------------------------------------------------------------------------------

sizes = st.integers(0, 10**12)
numbers = st.integers(0, 10**13).map(str) | st.text("0123456789", max_size=22)
range_specs = st.builds(lambda a, b: f"{a}-{b}", numbers | st.just(""), numbers | st.just(""))
range_headers = (
    st.text(max_size=60)
    | st.builds(
        lambda unit, specs, pad: f"{unit}{pad}={pad}{','.join(specs)}",
        st.sampled_from(["bytes", "BYTES", "Bytes", "items", ""]),
        st.lists(range_specs | st.text(",- 0123456789", max_size=8), max_size=3),
        st.sampled_from(["", " ", "\t"]),
    )
    | st.builds(lambda tail: "bytes=" + tail, st.text(max_size=30))
)


@PROPERTY
@given(st.none() | range_headers, sizes)
def test_parse_range_span_none_or_4xx(header, size):
    try:
        spans = parse_ranges(header, size)
    except HttpError as exc:
        assert exc.status in (400, 416)
        return
    for first, last in spans or []:
        assert 0 <= first <= last < size


@PROPERTY
@given(st.data(), st.integers(1, 10**12))
def test_parse_range_well_formed(data, size):
    first = data.draw(st.integers(0, size - 1))
    last = data.draw(st.integers(first, size - 1))
    assert parse_ranges(f"bytes={first}-{last}", size) == [(first, last)]
    assert parse_ranges(f"bytes={first}-", size) == [(first, size - 1)]
    assert parse_ranges(f"bytes=-{last + 1}", size) == [(size - last - 1, size - 1)]


# ----- 6. bitfield --------------------------------------------------------------------------------------------------------


@PROPERTY
@given(any_text | st.text(string.ascii_letters + string.digits + "+/=", max_size=40) | json_values, st.integers(0, 300))
def test_bitfield_decode_only_value_error(text, count):
    try:
        held = bitfield.decode(text, count)
    except ValueError:
        return
    assert all(0 <= i < count for i in held)
    assert bitfield.decode(bitfield.encode(held, count), count) == held  # text itself may be non-canonical base64


@PROPERTY
@given(st.integers(0, 2000).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)) if n else st.just(set()))))
def test_bitfield_round_trip(case):
    count, held = case
    assert bitfield.decode(bitfield.encode(held, count), count) == held
