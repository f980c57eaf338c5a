"""edgeswarm.trust.tokens: origin-signed access tokens, edge-signed swarm tickets, and the `token issue` command."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict

from edgeswarm.trust import tokens
from edgeswarm.trust.signing import public_pem
from edgeswarm.trust.tokens import Grant, Ticket, TokenError

NOW = 1_800_000_000.0
ORIGIN = Ed25519PrivateKey.generate()
EDGE = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
CID = "ab" * 32
CID2 = "cd" * 32


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unpack(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    return json.loads(base64.urlsafe_b64decode(header + "==")), json.loads(base64.urlsafe_b64decode(payload + "==")), signature


def claims(**extra) -> dict:
    base = {"iss": "edgeswarm", "sub": "alice", "iat": NOW, "exp": NOW + 60, "use": "access", "path": "/films/"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def signed(payload: dict, key: Ed25519PrivateKey = ORIGIN) -> str:
    return jwt.encode(payload, key, algorithm="EdDSA")


def rejected(token: str, key=ORIGIN, now: float = NOW) -> TokenError:
    with pytest.raises(TokenError) as err:
        tokens.verify(token, key.public_key(), now=now)
    assert err.value.status == 401
    return err.value


def grant(path: str = "/films/", region: str | None = None, user: str = "alice") -> Grant:
    return Grant(user=user, path=path, region=region, expires=NOW + 60, token="t")


# ----- access tokens ------------------------------------------------------------------------------------------------------


def test_round_trip():
    token = tokens.issue(ORIGIN, "alice", "/films/", 3600, region="east", now=NOW)
    g = tokens.verify(token, ORIGIN.public_key(), now=NOW + 10)
    assert g == Grant(user="alice", path="/films/", region="east", expires=NOW + 3600, token=token)


def test_round_trip_without_region_and_real_clock():
    token = tokens.issue(ORIGIN, "bob", "/", 60)
    g = tokens.verify(token, ORIGIN.public_key())
    assert (g.user, g.path, g.region) == ("bob", "/", None)
    assert time.time() < g.expires <= time.time() + 60


def test_claims_on_the_wire():
    header, payload, _ = unpack(tokens.issue(ORIGIN, "alice", "/films/", 60, region="east", now=NOW))
    assert header["alg"] == "EdDSA"
    assert payload == {
        "iss": "edgeswarm",
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 60,
        "use": "access",
        "path": "/films/",
        "region": "east",
    }


@pytest.mark.parametrize(
    ("user", "path", "ttl"),
    [
        ("", "/", 60),
        ("a" * 129, "/", 60),
        ("al\nice", "/", 60),
        ("alice", "films/", 60),
        ("alice", "", 60),
        ("alice", "/", 0),
        ("alice", "/", -5),
        ("alice", "/", float("nan")),
        ("alice", "/", float("inf")),
        ("alice", "/films/../x", 60),  # a prefix no clean request path matches (an adversarial session)
        ("alice", "/films//x/", 60),
    ],
)
def test_issue_refuses_bad_arguments(user, path, ttl):
    with pytest.raises(ValueError):
        tokens.issue(ORIGIN, user, path, ttl, now=NOW)


def test_issue_accepts_a_128_character_user():
    tokens.verify(tokens.issue(ORIGIN, "u" * 128, "/", 60, now=NOW), ORIGIN.public_key(), now=NOW)


def test_expired():
    token = tokens.issue(ORIGIN, "alice", "/films/", 60, now=NOW)
    err = rejected(token, now=NOW + 160)
    assert "expired" in err.message
    assert "100 s ago" in err.message


def test_leeway_of_five_seconds():
    token = tokens.issue(ORIGIN, "alice", "/films/", 60, now=NOW)
    tokens.verify(token, ORIGIN.public_key(), now=NOW + 64)  # within the leeway
    rejected(token, now=NOW + 66)
    tokens.verify(token, ORIGIN.public_key(), now=NOW - 4)  # the origin's clock a little ahead
    assert "not valid yet" in rejected(token, now=NOW - 60).message


def test_not_before_in_the_future():
    assert "not valid for another 100 s (its nbf; or the clocks disagree)" in rejected(signed(claims(nbf=NOW + 100))).message


def test_expired_by_the_real_clock():
    token = tokens.issue(ORIGIN, "alice", "/", 60, now=time.time() - 3600)
    assert "expired" in rejected(token, now=time.time()).message
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, ORIGIN.public_key())


def test_signed_by_another_key():
    token = tokens.issue(OTHER, "alice", "/films/", 60, now=NOW)
    assert rejected(token).message == "token is not signed by the origin key"


def test_tampered_payload():
    token = tokens.issue(ORIGIN, "alice", "/films/", 60, now=NOW)
    header, _, signature = token.split(".")
    forged = b64(json.dumps(claims(path="/")).encode())
    assert "not signed by the origin key" in rejected(f"{header}.{forged}.{signature}").message


def test_tampered_signature():
    token = tokens.issue(ORIGIN, "alice", "/films/", 60, now=NOW)
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 1
    rejected(f"{header}.{payload}.{b64(bytes(raw))}")
    rejected(f"{header}.{payload}.{b64(bytes(raw[:-1]))}")  # wrong length
    rejected(f"{header}.{payload}.")


def test_alg_none_refused():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.AAAA"):
        rejected(token)
    assert "EdDSA" in rejected(f"{header}.{payload}.AAAA").message


def test_hs256_forged_with_the_public_key_refused():
    """The classic key-confusion attack: HMAC with the (public) verification key as the secret."""
    secret = public_pem(ORIGIN.public_key())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert "EdDSA" in rejected(f"{header}.{payload}.{b64(mac)}").message
    rejected(jwt.encode(claims(), "a-secret-of-at-least-thirty-two-bytes!", algorithm="HS256"))


def test_other_asymmetric_alg_refused():
    rejected(jwt.encode(claims(), generate_private_key(SECP256R1()), algorithm="ES256"))


def test_ticket_is_not_an_access_token():
    ticket = tokens.issue_ticket(ORIGIN, "peer-1", "alice", CID, 60, now=NOW)  # even when signed by the origin key
    assert rejected(ticket).message == "token is a swarm ticket"


@pytest.mark.parametrize(
    "payload",
    [
        claims(iss=None),
        claims(iss="someone-else"),
        claims(sub=None),
        claims(sub=42),
        claims(sub=""),
        claims(iat=None),
        claims(iat="now"),
        claims(exp=None),
        claims(exp="tomorrow"),
        claims(exp=True),
        claims(exp=[1]),
        claims(use=None),
        claims(use="admin"),
        claims(path=None),
        claims(path=7),
        claims(path="films/"),
        claims(region=5),
        claims(region=""),
    ],
)
def test_missing_or_ill_typed_claims(payload):
    rejected(signed(payload))


def test_missing_exp_named():
    assert "'exp'" in rejected(signed(claims(exp=None))).message


@pytest.mark.parametrize("exp", [10**400, -(10**400), 2**53 + 1, 1e300])
def test_an_expiry_no_float_can_hold_or_no_clock_reaches_is_refused_not_a_500(exp):
    """``exp`` = 10**400 overflowed float() in the claim check: a 500 and a traceback at a managed peer."""
    header = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
    payload = b64(f'{{"iss":"edgeswarm","sub":"a","iat":1,"exp":{exp!r},"use":"access","path":"/"}}'.encode())
    signature = b64(ORIGIN.sign(f"{header}.{payload}".encode()))
    assert "'exp'" in rejected(f"{header}.{payload}.{signature}").message


def test_nan_expiry_refused():
    header = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
    payload = b64(b'{"iss":"edgeswarm","sub":"a","iat":1,"exp":NaN,"use":"access","path":"/"}')
    signature = b64(ORIGIN.sign(f"{header}.{payload}".encode()))
    rejected(f"{header}.{payload}.{signature}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a token",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "e30.e30.e30",  # {} . {} . junk
        "W10.e30.AAAA",  # a JSON list as the header
        b64(b'{"alg":"EdDSA"}') + ".!!!." + "AAAA",
        b64(b"\xff\xfe") + ".e30.AAAA",  # header not UTF-8
        b64(b"[" * 2500) + ".e30.AAAA",  # deeply nested header JSON
        "x" * 4097,
        "é.é.é",
        "\x00.\x00.\x00",
    ],
)
def test_malformed(text):
    rejected(text)


def test_huge_token_refused_before_parsing():
    token = tokens.issue(ORIGIN, "alice", "/films/", 60, now=NOW)
    assert "too long" in rejected(token + "A" * 4096).message


def test_non_string_token():
    for value in (None, b"abc", 12):
        rejected(value)  # type: ignore[arg-type]


def test_padding_and_whitespace_refused():
    token = tokens.issue(ORIGIN, "alice", "/films/", 60, now=NOW)
    for variant in (token + "==", " " + token, token + "\n", token.replace(".", ". ", 1)):
        rejected(variant)


# ----- authorize ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/films", "/films/", "/films//"])
@pytest.mark.parametrize("path", ["films/a.mp4", "films", "films/sub/b.mkv"])
def test_scope_covers_whole_segments(prefix, path):
    tokens.authorize(grant(prefix), path)


@pytest.mark.parametrize("prefix", ["/films", "/films/"])
@pytest.mark.parametrize("path", ["filmsX/a", "films2", "film", "music/x", "x/films/a", "films/../music/x", "films/./a"])
def test_scope_refuses_outside(prefix, path):
    with pytest.raises(TokenError) as err:
        tokens.authorize(grant(prefix), path)
    assert err.value.status == 403


def test_scope_message():
    with pytest.raises(TokenError) as err:
        tokens.authorize(grant("/films/"), "music/x")
    assert err.value.message == "token for user alice covers /films/, not /music/x"


@pytest.mark.parametrize("path", ["a", "films/a.mp4", "deep/er/still.ts"])
def test_root_covers_everything(path):
    tokens.authorize(grant("/"), path)


def test_single_file_scope():
    g = grant("/films/a.mp4")
    tokens.authorize(g, "films/a.mp4")
    for other in ("films/a.mp4x", "films/b.mp4", "films", "films/a.mp"):
        with pytest.raises(TokenError) as err:
            tokens.authorize(g, other)
        assert err.value.status == 403


def test_region_rule():
    g = grant("/", region="east")
    tokens.authorize(g, "films/a.mp4", "east")
    tokens.authorize(g, "films/a.mp4", None)  # the edge has no region map: no check
    tokens.authorize(grant("/"), "films/a.mp4", "west")  # a token without a region is valid everywhere
    with pytest.raises(TokenError) as err:
        tokens.authorize(g, "films/a.mp4", "west")
    assert err.value.status == 403
    assert "east" in err.value.message and "west" in err.value.message


def test_scope_and_region_with_a_real_token():
    g = tokens.verify(tokens.issue(ORIGIN, "carol", "/music", 60, region="west", now=NOW), ORIGIN.public_key(), now=NOW)
    tokens.authorize(g, "music/song.flac", "west")
    with pytest.raises(TokenError, match="covers /music, not /musicals/x"):
        tokens.authorize(g, "musicals/x", "west")


# ----- from_request -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "])
def test_bearer_header(header):
    assert tokens.from_request({"Authorization": header}, {}) == "abc"


def test_header_name_case_insensitive():
    assert tokens.from_request({"authorization": "Bearer abc"}, {}) == "abc"
    assert tokens.from_request(CIMultiDict({"AUTHORIZATION": "Bearer abc"}), {}) == "abc"


def test_query_parameter():
    assert tokens.from_request({}, {"token": "xyz"}) == "xyz"


def test_header_wins_over_query():
    assert tokens.from_request({"Authorization": "Bearer abc"}, {"token": "xyz"}) == "abc"


def test_neither():
    assert tokens.from_request({}, {}) is None
    assert tokens.from_request({"Accept": "*/*"}, {"other": "1"}) is None
    assert tokens.from_request({}, {"token": ""}) is None


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic YWxpY2U6cw==", "Token abc", "abc", "Bearer a b"])
def test_bad_authorization_header(header):
    with pytest.raises(TokenError) as err:
        tokens.from_request({"Authorization": header}, {"token": "xyz"})
    assert err.value.status == 401


# ----- swarm tickets ------------------------------------------------------------------------------------------------------


def test_ticket_round_trip():
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    t = tokens.verify_ticket(ticket, [EDGE.public_key()], CID, now=NOW + 1)
    assert t == Ticket(peer_id="peer-1", user="alice", content=CID, expires=NOW + 120)


def test_ticket_any_of_several_edges():
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    assert tokens.verify_ticket(ticket, [OTHER.public_key(), EDGE.public_key()], CID, now=NOW).peer_id == "peer-1"


def ticket_rejected(ticket: str, keys=None, content: str = CID, now: float = NOW, status: int = 401) -> TokenError:
    with pytest.raises(TokenError) as err:
        tokens.verify_ticket(ticket, [EDGE.public_key()] if keys is None else keys, content, now=now)
    assert err.value.status == status
    return err.value


def test_ticket_signed_by_an_unknown_key():
    ticket = tokens.issue_ticket(OTHER, "peer-1", "alice", CID, 120, now=NOW)
    assert "not signed" in ticket_rejected(ticket).message
    assert "not signed" in ticket_rejected(ticket, keys=[ORIGIN.public_key(), EDGE.public_key()]).message


def test_ticket_no_keys():
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    ticket_rejected(ticket, keys=[])


def test_ticket_expired():
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    assert "expired" in ticket_rejected(ticket, now=NOW + 200).message


def test_a_ticket_refused_for_its_times_says_so_by_its_type_and_nothing_else_does():
    """A peer logs its neighbours' tickets refused for their times, with the clocks (roles/peer.py _out_of_date)."""
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    for now in (NOW + 200, NOW - 60):  # expired; not valid yet
        assert isinstance(ticket_rejected(ticket, now=now), tokens.OutOfDateError)
    assert not isinstance(ticket_rejected(ticket, content=CID2, status=403), tokens.OutOfDateError)
    assert not isinstance(ticket_rejected(ticket, keys=[OTHER.public_key()]), tokens.OutOfDateError)


def test_a_tickets_issue_time_is_read_only_with_the_key_that_signed_it():
    """What a peer reads its edge's clock off (policy/edgeclocks.py): a ticket with another key's signature reads nothing."""
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW + 0.25)
    assert tokens.issued_at(ticket, EDGE.public_key()) == NOW + 0.25
    for bad, key in ((ticket, OTHER.public_key()), ("x.y", EDGE.public_key())):
        with pytest.raises(TokenError) as err:
            tokens.issued_at(bad, key)
        assert err.value.status == 401


def test_ticket_for_other_content():
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    err = ticket_rejected(ticket, content=CID2, status=403)
    assert err.message == f"ticket is for content {CID[:12]}…, not {CID2[:12]}…"


def test_access_token_is_not_a_ticket():
    token = tokens.issue(EDGE, "alice", "/", 60, now=NOW)  # even when signed by a trusted edge key
    assert ticket_rejected(token).message == "ticket is an access token"


def test_ticket_malformed():
    for text in ("", "a.b.c", "x" * 5000, "e30.e30.e30"):
        ticket_rejected(text)


def test_ticket_tampered():
    ticket = tokens.issue_ticket(EDGE, "peer-1", "alice", CID, 120, now=NOW)
    header, _, signature = ticket.split(".")
    forged = b64(
        json.dumps({"iss": "edgeswarm", "sub": "mallory", "iat": NOW, "exp": NOW + 1e9, "use": "ticket", "peer": "p", "cid": CID}).encode()
    )
    ticket_rejected(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize(
    "extra",
    [{"peer": None}, {"peer": 3}, {"peer": ""}, {"cid": None}, {"cid": ["x"]}],
)
def test_ticket_ill_typed_claims(extra):
    payload = {"iss": "edgeswarm", "sub": "alice", "iat": NOW, "exp": NOW + 60, "use": "ticket", "peer": "p", "cid": CID}
    payload.update(extra)
    ticket_rejected(signed({k: v for k, v in payload.items() if v is not None}, EDGE))


@pytest.mark.parametrize(
    ("peer_id", "user", "content", "ttl"),
    [("", "alice", CID, 60), ("p" * 65, "alice", CID, 60), ("p", "", CID, 60), ("p", "alice", "", 60), ("p", "alice", CID, 0)],
)
def test_issue_ticket_refuses_bad_arguments(peer_id, user, content, ttl):
    with pytest.raises(ValueError):
        tokens.issue_ticket(EDGE, peer_id, user, content, ttl, now=NOW)


# ----- durations and the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1.5h", 5400), ("2w", 1209600), ("2H", 7200)],
)
def test_parse_ttl(text, seconds):
    assert tokens.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "5y", "h", "2 hours", "1e3", "nan", "inf", "٣", "5mm", "36501d", "1" * 400])
def test_parse_ttl_refuses(text):
    with pytest.raises(ValueError, match="duration"):
        tokens.parse_ttl(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeswarm")
    sub = p.add_subparsers(dest="command", required=True)
    tokens.add_parser(sub)
    return p


def write_key(path: Path, key: Ed25519PrivateKey = ORIGIN) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = tokens.run(parser().parse_args(["token", "issue", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_issue(tmp_path, capsys):
    key = write_key(tmp_path / "origin.key")
    before = time.time()
    code, out, err = cli(capsys, "--key", str(key), "--user", "alice", "--path", "/films/", "--ttl", "2h", "--region", "east")
    assert code == 0
    token = out.splitlines()[-1]
    assert token == out.strip()  # the token alone on stdout
    g = tokens.verify(token, ORIGIN.public_key())
    assert (g.user, g.path, g.region) == ("alice", "/films/", "east")
    assert before + 7200 <= g.expires <= time.time() + 7200
    assert err.startswith("token for user alice, path /films/, region east, expires 20")
    assert err.strip().endswith("Z")


def test_cli_issue_without_region(tmp_path, capsys):
    code, out, err = cli(capsys, "--key", str(write_key(tmp_path / "k")), "--user", "bob", "--path", "/", "--ttl", "90")
    assert code == 0
    assert tokens.verify(out.splitlines()[-1], ORIGIN.public_key()).region is None
    assert "region" not in err


def test_cli_missing_key_file_is_not_created(tmp_path, capsys):
    missing = tmp_path / "nope.key"
    code, out, err = cli(capsys, "--key", str(missing), "--user", "alice", "--path", "/", "--ttl", "1h")
    assert code == 2
    assert out == ""
    assert err.startswith("edgeswarm token: ") and str(missing) in err and len(err.splitlines()) == 1
    assert not missing.exists()


def test_cli_not_an_ed25519_key(tmp_path, capsys):
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    ec = tmp_path / "ec.key"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(ORIGIN.public_key()))
    for path in (junk, ec, public, tmp_path):
        code, out, err = cli(capsys, "--key", str(path), "--user", "alice", "--path", "/", "--ttl", "1h")
        assert (code, out) == (2, "")
        assert err.startswith("edgeswarm token: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("user", "path", "ttl", "words"),
    [("", "/", "1h", "user"), ("alice", "films", "1h", "path"), ("alice", "/", "5y", "duration"), ("alice", "/", "0", "duration")],
)
def test_cli_bad_arguments(tmp_path, capsys, user, path, ttl, words):
    code, out, err = cli(capsys, "--key", str(write_key(tmp_path / "k")), "--user", user, "--path", path, "--ttl", ttl)
    assert (code, out) == (2, "")
    assert err.startswith("edgeswarm token: ") and words in err and len(err.splitlines()) == 1


def test_cli_needs_issue_and_options(capsys):
    for argv in (["token"], ["token", "issue"], ["token", "issue", "--key", "k", "--user", "u", "--path", "/"]):
        with pytest.raises(SystemExit) as exit_:
            parser().parse_args(argv)
        assert exit_.value.code == 2
    capsys.readouterr()


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["token", "issue", "--help"])
    out = capsys.readouterr().out
    assert "edgeswarm token issue --key" in out and "--ttl" in out and "7d" in out


def _cli_has_token() -> bool:
    from edgeswarm.cli import build_parser

    actions = build_parser()._actions
    return any(isinstance(a, argparse._SubParsersAction) and "token" in a.choices for a in actions)


@pytest.mark.integration
@pytest.mark.skipif(not _cli_has_token(), reason="edgeswarm.cli does not dispatch `token` yet")
def test_cli_subprocess(tmp_path):
    import subprocess
    import sys

    key = write_key(tmp_path / "origin.key")
    base = [sys.executable, "-m", "edgeswarm", "token", "issue", "--user", "alice", "--path", "/films/", "--ttl", "15m"]
    done = subprocess.run([*base, "--key", str(key)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert tokens.verify(done.stdout.splitlines()[-1], ORIGIN.public_key()).path == "/films/"
    done = subprocess.run([*base, "--key", str(tmp_path / "missing.key")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("edgeswarm token: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "missing.key").exists()
