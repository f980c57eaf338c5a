"""Fuzzing real daemons, one target per surface: paths, ranges, announce, piece and have, tokens, raw HTTP.

An origin, an open and a ``--require-token`` edge (both ``--p2p``) and a peer
behind each are started once for the module (tests/fuzzkit.py).  Every input
must get an answer below 500 (a 4xx that says why), log no traceback, kill no
daemon and end within 10 s.  CI runs the "fuzz-ci" hypothesis profile: a
fixed, derandomised budget per surface.  ``./dev fuzz`` runs "fuzz-long"
(10 000 random inputs per surface) and prints the figures that
docs/security.md quotes.  Tracebacks that aiohttp's own server logs (requests
it cannot parse, clients that hang up) are counted but not failed on here:
issue 9's defect 10 is about them.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from fuzzkit import CLOSED_PORT, FILES, FUZZ_PEER, PATIENCE_S, Deployment, Tally, b64url, exchange, http_request, table
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from edgeswarm.policy import bitfield
from edgeswarm.policy.vocabulary import STAT_KINDS
from edgeswarm.roles.announce import EVENTS, MAX_COUNT, USAGE_KINDS
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import public_pem

pytestmark = pytest.mark.integration

settings.register_profile(
    "fuzz-ci",
    max_examples=150,
    deadline=None,
    derandomize=True,  # CI tries the same inputs every run: a red build is a regression, not luck
    database=None,
    phases=(Phase.explicit, Phase.generate),  # inputs are tallied, never raised: nothing to shrink
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("fuzz-long", settings.get_profile("fuzz-ci"), max_examples=10_000, derandomize=False)
FUZZ = settings(settings.get_profile(os.environ.get("EDGESWARM_FUZZ_PROFILE", "fuzz-ci")))  # per test: the suite's own profile stays

TALLIES: list[Tally] = []
HTTP_SERVERS = ("origin", "edge", "locked", "upload", "gateway", "locked-upload", "locked-gateway")
B64URL = string.ascii_letters + string.digits + "-_"
DROP = object()  # a mutation that removes the field


# -- the deployment and the figures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory, request) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path_factory.mktemp("fuzz"))
    try:
        yield deployment.start()
    finally:
        deployment.stop()
        if TALLIES:
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            with capture.global_and_fixture_disabled():
                print(f"\n\nfuzz figures ({os.environ.get('EDGESWARM_FUZZ_PROFILE', 'fuzz-ci')} profile):\n{table(TALLIES)}\n")


@contextmanager
def surface(fuzz: Deployment, name: str) -> Iterator[Tally]:
    """The tally of one surface; it fails on any 5xx, hang, crash, traceback of ours or 4xx without a reason."""
    tally = Tally(name)
    fuzz.watch_logs()
    started = time.monotonic()
    yield tally
    tally.seconds = time.monotonic() - started
    time.sleep(0.5)  # what the daemons log after their last answer
    fuzz.count_tracebacks(tally, final=True)
    TALLIES.append(tally)
    assert tally.inputs > 0
    failures = (tally.five_xx, tally.own_tracebacks, tally.crashes, tally.hangs, tally.unexplained)
    assert failures == (0, 0, 0, 0, 0), f"{name}: 5xx, tracebacks, crashes, hangs, 4xx without a reason = {failures}\n" + "\n".join(
        tally.samples
    )


# -- what the fuzzer found, kept as plain regression tests (issue 9, defect 9) ------------------------------------------

OTHER_SCRIPTS = ["%C2%B2", "%E2%91%A0", "%E2%81%B0", "%D9%A1", "%EF%BC%91", "%F0%9D%9F%99"]  # ² ① ⁰ ١ １ 𝟙


@pytest.mark.parametrize("server", ["origin", "edge", "locked", "upload", "locked-upload"])
def test_piece_index_in_another_scripts_digits_is_a_400(fuzz, server):
    """int() reads '١' as 1 and str.isdigit() passes '²': a 500, or piece 1 served for a name nobody sent."""
    cid = fuzz.cids["a.bin"]
    for index in OTHER_SCRIPTS:
        answer = exchange(fuzz.servers[server].port, http_request("GET", f"/piece/{cid}/{index}", fuzz.servers[server].credentials(cid)))
        assert answer.status == 400, (index, answer.body[-200:])
        assert b"no piece" in answer.body, answer.body[-200:]
    answer = exchange(fuzz.servers[server].port, http_request("GET", f"/piece/{cid}/1", fuzz.servers[server].credentials(cid)))
    assert answer.status == 200


@pytest.mark.parametrize("server", ["edge", "locked"])
def test_announce_body_in_another_charset_or_encoding_is_refused(fuzz, server):
    n = fuzz.pieces[fuzz.cids["announce-only-7c1e.bin"]]
    doc = {"peer_id": "charset", "port": CLOSED_PORT, "content": fuzz.cids["announce-only-7c1e.bin"], "pieces": n}
    body = json.dumps(doc | {"have": bitfield.encode((), n), "uploaded": 0, "downloaded": 0, "event": "started"}).encode()
    cases = [
        ([("Content-Type", "application/json; charset=bogus")], body, 400, b"charset"),
        ([("Content-Type", "application/json; charset=latin-1")], body, 400, b"charset"),
        ([("Content-Encoding", "gzip")], gzip.compress(body), 415, b"Content-Encoding"),
        ([("Content-Encoding", "gzip")], body, 415, b"Content-Encoding"),  # not even gzip
        ([("Content-Encoding", "deflate")], body, 415, b"Content-Encoding"),
        ([("Content-Encoding", "x-bogus")], body, 415, b"Content-Encoding"),
        ([("Content-Type", "application/json; charset=UTF-8"), ("Content-Encoding", "identity")], body, 200, b"interval"),
    ]
    for headers, payload, status, reason in cases:
        request = http_request("POST", "/announce", [*fuzz.servers[server].credentials(), *headers], payload)
        answer = exchange(fuzz.servers[server].port, request)
        assert answer.status == status and reason in answer.body, (headers, answer.body[-300:])


# -- strategies shared by the surfaces ---------------------------------------------------------------------------------

SAFE = st.characters(exclude_categories=("Cs", "Cc"))  # what a header value may hold and stay one header
BARE = st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))  # ... and a request target, unencoded


def text(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.text(SAFE, max_size=max_size)


def pct(value: str) -> str:
    return quote(value, safe="")


OTHER_DIGITS = st.text(st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=4)  # '²', '①', '١', 'Ⅻ', '𝟙'
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "0", "1", "-1", "+1", " 1", "1 ", "01", "1_0", "1.0", "1e3", "0x1", "NaN", "inf", "-0", "9" * 19, "9" * 40]),
    st.sampled_from(["²", "①", "⁰", "١", "१", "１", "𝟙", "٣"]),
    OTHER_DIGITS,
    text(6),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text(20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(8), inner, max_size=4),
    max_leaves=8,
)


def mutated(draw, base: dict, special: dict[str, st.SearchStrategy]) -> dict:
    """``base`` with a few fields dropped, or replaced by arbitrary JSON or by values chosen to sit on a check's edge."""
    doc = dict(base)
    for key in draw(st.lists(st.sampled_from([*base, *special, "extra"]), max_size=3, unique=True)):
        value = draw(st.one_of(st.just(DROP), JSON, special.get(key, JSON)))
        if value is DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


# -- paths --------------------------------------------------------------------------------------------------------------

FRAGMENTS = [
    *FILES,
    *("films", "secret.bin", "manifest", "content", "key", "piece", "have", "announce", "status", "healthz", "metrics"),
    *("swarm-key", "origin-key", ".", "..", "", "%2e%2e", "%2F", "%2f..", "%00", "%", "%zz", "%C0%AE", "%ff", "%E2%80%AE"),
    *("~", "a.bin;x", "%3F", "*", "\\", "%5C", "%252e"),
]
SEGMENT = st.one_of(
    st.sampled_from(FRAGMENTS),
    text(12).map(pct),
    st.binary(max_size=8).map(lambda b: "".join(f"%{x:02X}" for x in b)),  # not always UTF-8
    st.text(BARE, max_size=8),  # raw, unencoded
)
QUERY = st.one_of(
    st.sampled_from(["", "?", "?token=", "?x=1&token=%ZZ", "?a=%FF", "?token=a&token=b"]), text(10).map(lambda t: "?" + pct(t))
)
TARGET = st.one_of(
    st.builds(lambda segs, q: "/" + "/".join(segs) + q, st.lists(SEGMENT, max_size=6), QUERY),
    st.sampled_from(["*", "a.bin", "http://127.0.0.1/a.bin", "//a.bin", "/./a.bin", "/a.bin/", "/films/", "/%2Fetc%2Fpasswd"]),
)


def test_paths(fuzz):
    with surface(fuzz, "paths") as tally:

        @FUZZ
        @given(
            server=st.sampled_from(HTTP_SERVERS), method=st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE"]), target=TARGET
        )
        def run(server: str, method: str, target: str) -> None:
            fuzz.send(tally, server, http_request(method, target, fuzz.servers[server].credentials()))

        run()


# -- ranges and conditionals --------------------------------------------------------------------------------------------

SIZE = FILES["a.bin"]
SPEC = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", st.integers(0, SIZE + 9), st.integers(0, SIZE + 9)),
    st.builds(lambda a, b: f"{a}-{b}", NUMBERS, NUMBERS),
    NUMBERS.map(lambda n: f"-{n}"),
    NUMBERS.map(lambda n: f"{n}-"),
    text(10),
)
RANGE = st.one_of(
    st.builds(
        lambda unit, eq, specs, sep: f"{unit}{eq}{sep.join(specs)}",
        st.sampled_from(["bytes", "BYTES", "bytes ", " bytes", "items", "", "bites"]),
        st.sampled_from(["=", " = ", "", "=="]),
        st.lists(SPEC, max_size=3),
        st.sampled_from([",", ", ", " ,", ",,"]),
    ),
    text(40),
)
DATE = st.one_of(
    st.builds(
        lambda wd, d, mon, y, h, m, s, zone: f"{wd}, {d:02d} {mon} {y} {h:02d}:{m:02d}:{s:02d} {zone}",
        st.sampled_from(["Sun", "Mon", "Xyz", ""]),
        st.integers(0, 99),
        st.sampled_from(["Jan", "Nov", "Foo"]),
        st.integers(0, 99999),
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from(["GMT", "UTC", "+0000", "-9999", "+2400", "PST", ""]),
    ),
    st.sampled_from(["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "0", "-1"]),
    st.sampled_from(["Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT"]),
    text(30),
)


def test_ranges(fuzz):
    etag = st.one_of(
        st.sampled_from([fuzz.etag, "W/" + fuzz.etag, "*", '"x"', 'W/"x"', "W/", '"', ""]),
        text(20),
        st.lists(st.sampled_from([fuzz.etag, '"x"', "*", "W/" + fuzz.etag]), max_size=4).map(", ".join),
    )
    headers = st.fixed_dictionaries(
        {},
        optional={
            "Range": RANGE,
            "If-Range": st.one_of(etag, DATE),
            "If-None-Match": etag,
            "If-Modified-Since": DATE,
            "If-Match": etag,
            "If-Unmodified-Since": DATE,
        },
    )
    with surface(fuzz, "ranges") as tally:

        @FUZZ
        @given(
            server=st.sampled_from(["origin", "edge", "locked", "gateway", "locked-gateway"]),
            method=st.sampled_from(["GET", "HEAD"]),
            path=st.sampled_from(["/a.bin", "/films/secret.bin", "/manifest/a.bin", "/announce-only-7c1e.bin"]),
            conditions=headers,
        )
        def run(server: str, method: str, path: str, conditions: dict[str, str]) -> None:
            fuzz.send(tally, server, http_request(method, path, [*fuzz.servers[server].credentials(), *conditions.items()]))

        run()


# -- announce -----------------------------------------------------------------------------------------------------------

COUNTS = st.one_of(st.integers(-1, 3), st.sampled_from([MAX_COUNT, MAX_COUNT + 1, -(2**63), 2**64]), st.floats(), JSON)


@st.composite
def announce_doc(draw, fuzz: Deployment) -> object:
    cid = draw(st.sampled_from([fuzz.cids["announce-only-7c1e.bin"], fuzz.cids["a.bin"]]))
    n = fuzz.pieces[cid]
    base = {
        "peer_id": draw(st.sampled_from(["fuzz-a", "fuzz-b", FUZZ_PEER])),
        "port": CLOSED_PORT,  # valid announces never send a daemon to a real port
        "content": cid,
        "pieces": n,
        "have": bitfield.encode(draw(st.sets(st.integers(0, n - 1))), n),
        "uploaded": draw(st.integers(0, 2**40)),
        "downloaded": draw(st.integers(0, 2**40)),
        "event": draw(st.sampled_from(sorted(EVENTS))),
    }
    special = {
        "peer_id": st.one_of(text(70), st.text(max_size=70)),
        "port": st.sampled_from([0, -1, 65536, 2**64, str(CLOSED_PORT), float(CLOSED_PORT), True, None]),
        "content": st.one_of(
            st.sampled_from([c.upper() for c in fuzz.cids.values()]), st.text("0123456789abcdef", min_size=63, max_size=65)
        ),
        "pieces": st.sampled_from([n - 1, n + 1, -1, 1 << 20, (1 << 20) + 1, float(n), str(n)]),
        "have": st.one_of(
            text(12),
            st.binary(max_size=4).map(lambda b: base64.b64encode(b).decode()),
            st.just(bitfield.encode(range(n), n)[:-1] + "/"),  # bits past the last piece
            OTHER_DIGITS,
        ),
        "uploaded": COUNTS,
        "downloaded": COUNTS,
        "event": st.one_of(text(10), st.sampled_from([e.upper() for e in EVENTS])),
        "stats": st.dictionaries(st.sampled_from([*STAT_KINDS, "other"]) | text(8), COUNTS, max_size=4),
        "usage": st.dictionaries(st.sampled_from([*USAGE_KINDS, "other"]) | text(8), COUNTS, max_size=4),
        **{k: st.sampled_from(["127.0.0.1", "http://127.0.0.1:1"]) for k in ("ip", "address", "url", "host")},
    }
    return draw(st.one_of(st.just(mutated(draw, base, special)), JSON))


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


@st.composite
def announce_request(draw, fuzz: Deployment, server: str) -> tuple[bytes, bool]:
    doc = draw(announce_doc(fuzz))
    body = json.dumps(doc).encode()
    form = draw(st.sampled_from(["json"] * 4 + ["utf-16", "trailing", "nested", "bytes", "empty", "bom"]))
    body = {
        "json": body,
        "utf-16": json.dumps(doc).encode("utf-16"),
        "trailing": body + draw(st.binary(min_size=1, max_size=8)),
        "nested": b"[" * draw(st.integers(1, 60_000)),
        "bytes": draw(st.binary(max_size=300)),
        "empty": b"",
        "bom": b"\xef\xbb\xbf" + body,
    }[form]
    headers = list(fuzz.servers[server].credentials())
    ctype = draw(
        st.one_of(
            st.sampled_from(["application/json", "application/json; charset=utf-8", "application/json; charset=UTF-8"]),
            st.sampled_from(["application/json; charset=bogus", "application/json; charset=utf-16", 'application/json; charset="utf-8"']),
            st.sampled_from(["application/json;charset=", "text/plain", "multipart/form-data; boundary=x", None]),
            text(40),
        )
    )
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    encoding = draw(st.one_of(st.none(), st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x-bogus", "gzip, gzip"]), text(10)))
    if encoding is not None:
        headers.append(("Content-Encoding", encoding))
        if encoding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
    framed = True
    if draw(st.booleans()):
        headers.append(("Transfer-Encoding", "chunked"))
        framed = draw(st.booleans())
        body = chunked(body, draw(st.integers(1, 4096))) if framed else body
    return http_request("POST", "/announce", headers, body), not framed  # unframed: the server waits for the end we send


def test_announce(fuzz):
    with surface(fuzz, "announce") as tally:

        @FUZZ
        @given(data=st.data(), server=st.sampled_from(["edge", "locked"]))
        def run(data, server: str) -> None:
            request, unframed = data.draw(announce_request(fuzz, server))
            fuzz.send(tally, server, request, PATIENCE_S if unframed else None)

        run()


# -- piece and have -----------------------------------------------------------------------------------------------------


def test_piece_and_have(fuzz):
    known = sorted(fuzz.cids.values())
    cids = st.one_of(
        st.sampled_from(known),
        st.sampled_from([c.upper() for c in known]),
        st.text("0123456789abcdef", min_size=64, max_size=64),
        text(70).map(pct),
        st.sampled_from(["", "%00", "..", "%2e%2e", known[0] + "0"]),
    )
    index = st.one_of(NUMBERS.map(lambda n: pct(n).encode()), OTHER_DIGITS.map(str.encode))  # percent-encoded, or raw UTF-8
    forms = {
        "piece": lambda cid, i: b"/piece/" + cid + b"/" + i,
        "have": lambda cid, i: b"/have/" + cid,
        "bare": lambda cid, i: b"/piece/" + cid,
        "deep": lambda cid, i: b"/piece/" + cid + b"/" + i + b"/0",
        "query": lambda cid, i: b"/piece/" + cid + b"/" + i + b"?" + i,
    }
    target = st.builds(lambda form, cid, i: forms[form](cid.encode(), i), st.sampled_from(["piece"] * 4 + sorted(forms)), cids, index)

    with surface(fuzz, "piece and have") as tally:

        @FUZZ
        @given(
            server=st.sampled_from(["origin", "edge", "locked", "upload", "locked-upload"]),
            path=target,
            who=st.one_of(st.none(), text(70)),
        )
        @example(server="upload", path=f"/piece/{fuzz.cids['a.bin']}/%C2%B2".encode(), who=None)  # what issue 9 found: always tried
        def run(server: str, path: bytes, who: str | None) -> None:
            cid = path.split(b"/")[2].decode(errors="replace")
            headers = fuzz.servers[server].credentials(cid)
            if who is not None and server != "locked-upload":
                headers.append(("X-Edgeswarm-Peer", who))
            fuzz.send(tally, server, http_request("GET", path, headers))

        run()


# -- tokens -------------------------------------------------------------------------------------------------------------


@st.composite
def token(draw, fuzz: Deployment) -> str:
    """A token as an attacker would try one: tampered, spliced, forged, or signed with the real key but odd claims."""
    alice, ticket = fuzz.alice, fuzz.ticket(fuzz.cids["a.bin"])
    kind = draw(st.sampled_from(["valid", "flip", "cut", "splice", "claims", "ticket", "forged", "hmac", "text", "long"]))
    now = time.time()
    claims = {"iss": tokens.ISSUER, "sub": "alice", "iat": now, "exp": now + 3600, "use": "access", "path": "/"}
    special = {
        "iat": st.one_of(st.floats(), st.integers(-(2**70), 2**70)),
        "exp": st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.just(now - 60)),
        "sub": st.one_of(text(200), st.text(max_size=10)),
        "path": st.one_of(st.sampled_from(["/films/", "/a.bin", "", "films/", "/../", "/a.bin/"]), text(10)),
        "use": st.sampled_from(["ticket", "ACCESS", "", "access "]),
        "iss": st.sampled_from(["", "edgeswarm ", "EDGESWARM", "other"]),
        "region": st.one_of(text(10), st.just("east")),
        "alg": st.just("none"),
    }
    if kind == "valid":
        return alice
    if kind == "flip":
        i = draw(st.integers(0, len(alice) - 1))
        return alice[:i] + draw(st.sampled_from(B64URL + ".=+/ ")) + alice[i + 1 :]
    if kind == "cut":
        return alice[: draw(st.integers(0, len(alice)))]
    if kind == "splice":
        parts = [draw(st.sampled_from([a, t])) for a, t in zip(alice.split("."), ticket.split("."), strict=True)]
        return ".".join(draw(st.permutations(parts)) if draw(st.booleans()) else parts)
    if kind == "claims":
        return fuzz.access_token(mutated(draw, claims, special))
    if kind == "ticket":  # signed by the edge's key: right at a peer, wrong at an edge
        ticket_claims = {**claims, "use": "ticket", "peer": FUZZ_PEER, "cid": fuzz.cids["a.bin"]}
        return fuzz.signed_ticket(mutated(draw, ticket_claims, {**special, "peer": text(70), "cid": text(70)}))
    if kind in ("forged", "hmac"):
        header = draw(
            st.one_of(st.fixed_dictionaries({"alg": st.sampled_from(["none", "HS256", "EdDSA", "RS256", ""]), "typ": st.just("JWT")}), JSON)
        )
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(mutated(draw, claims, special)).encode())
        if kind == "hmac":  # the classic: HS256 keyed with the public key
            header_b64 = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
            signing_input = header_b64 + "." + signing_input.split(".", 1)[1]
            signature = hmac.new(public_pem(fuzz.origin_key.public_key()), signing_input.encode(), hashlib.sha256).digest()
        else:
            signature = draw(st.binary(max_size=80))
        return signing_input + "." + b64url(signature)
    if kind == "text":
        return draw(text(60))
    return draw(st.text(B64URL + ".", min_size=4000, max_size=5000))


def test_tokens(fuzz):
    a, secret = fuzz.cids["a.bin"], fuzz.cids["films/secret.bin"]
    endpoints = {
        "locked": [
            ("GET", "/a.bin"),
            ("HEAD", "/films/secret.bin"),
            ("GET", "/manifest/a.bin"),
            ("GET", f"/content/{a}"),
            ("GET", f"/key/{secret}"),
            ("GET", f"/piece/{a}/0"),
            ("GET", f"/have/{a}"),
            ("GET", "/status"),
            ("POST", "/announce"),
        ],
        "origin": [("GET", f"/key/{secret}")],
        "locked-upload": [("GET", f"/piece/{a}/0"), ("GET", f"/have/{a}")],
    }
    announce = json.dumps(
        {"peer_id": FUZZ_PEER, "port": CLOSED_PORT, "content": a, "pieces": fuzz.pieces[a], "have": bitfield.encode((), fuzz.pieces[a])}
        | {"uploaded": 0, "downloaded": 0, "event": "started"}
    ).encode()

    @st.composite
    def request(draw) -> tuple[str, bytes]:
        server = draw(st.sampled_from(sorted(endpoints)))
        method, path = draw(st.sampled_from(endpoints[server]))
        value = draw(token(fuzz))
        headers: list[tuple[str, str]] = []
        how = draw(st.sampled_from(["bearer", "query", "both", "none"]))
        if how in ("bearer", "both"):
            scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "", "Bearer ", "Bearer\t"]))
            headers.append(("Authorization", f"{scheme} {value}"))
        if how in ("query", "both"):
            path += "?token=" + (pct(value) if draw(st.booleans()) else value.replace(" ", "+").replace("#", "%23"))
        if server == "locked-upload":
            headers.append(("X-Edgeswarm-Peer", draw(st.sampled_from([FUZZ_PEER, "someone-else"]) | text(70))))
        body = announce if method == "POST" else None
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        return server, http_request(method, path, headers, body)

    with surface(fuzz, "tokens") as tally:

        @FUZZ
        @given(req=request())
        def run(req: tuple[str, bytes]) -> None:
            fuzz.send(tally, *req)

        run()


# -- raw HTTP -----------------------------------------------------------------------------------------------------------


def raw_templates(fuzz: Deployment) -> list[bytes]:
    cid = fuzz.cids["a.bin"]
    only = fuzz.cids["announce-only-7c1e.bin"]
    n = fuzz.pieces[only]
    doc = {"peer_id": "raw", "port": CLOSED_PORT, "content": only, "pieces": n, "have": bitfield.encode((), n)}
    body = json.dumps(doc | {"uploaded": 0, "downloaded": 0, "event": "started"}).encode()
    return [
        b"GET /a.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\nIf-Range: " + fuzz.etag.encode() + b"\r\n\r\n",
        f"GET /piece/{cid}/1 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"HEAD /manifest/a.bin HTTP/1.0\r\n\r\n",
        b"POST /announce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"POST /announce HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, 50),
        f"GET /have/{cid} HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # pipelined
        f"GET /a.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fuzz.alice}\r\n\r\n".encode(),
    ]


@st.composite
def mutation(draw, template: bytes) -> bytes:
    data = bytearray(template)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "repeat", "cut"]))
        if op == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=16) | st.sampled_from([b"\r\n", b"\n", b"\x00", b" ", b":", b"\r\n\r\n", b"%"])
            )
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 200))
        elif op == "cut":
            del data[at:]
    return bytes(data)


FIELD = st.binary(max_size=40)
REQUEST_LINE = st.builds(
    lambda m, t, v: m + b" " + t + b" " + v,
    st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"PRI", b"get", b"G\xc3\xa9T", b""]) | FIELD,
    st.sampled_from([b"/", b"/a.bin", b"*", b"http://x/a.bin", b"/%", b"/\xff", b"/a b", b"//", b"/" * 9000]) | FIELD,
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"HTTP/9.9", b"http/1.1", b""]) | FIELD,
)
HEADER_LINE = st.one_of(
    st.sampled_from(
        [
            b"Content-Length: -1",
            b"Content-Length: 1, 2",
            b"Content-Length: 99999999999999999999",
            b"Content-Length: \xd9\xa1",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Expect: 100-continue",
            b"Connection: upgrade\r\nUpgrade: websocket",
            b"Host:",
            b" folded: header",
            b"X: " + b"y" * 9000,
            b"Range: bytes=\xc2\xb2-",
            b"Authorization: Bearer \xff",
        ]
    ),
    st.builds(lambda k, v: k + b": " + v, FIELD, FIELD),
)
STRUCTURED = st.builds(
    lambda line, headers, body: line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body,
    REQUEST_LINE,
    st.lists(HEADER_LINE, max_size=6),
    st.binary(max_size=200),
)


def test_raw_http(fuzz):
    templates = raw_templates(fuzz)
    garbage = st.one_of(st.sampled_from(templates).flatmap(mutation), STRUCTURED, st.binary(max_size=2048))
    with surface(fuzz, "raw HTTP") as tally:

        @FUZZ
        @given(server=st.sampled_from(HTTP_SERVERS), data=garbage)
        def run(server: str, data: bytes) -> None:
            fuzz.send(tally, server, data, PATIENCE_S)

        run()
