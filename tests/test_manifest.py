"""edgeswarm.protocol.manifest and edgeswarm.trust.signing: content ids, signatures, piece geometry, key files."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.node.manifestfetch import ManifestOrder
from edgeswarm.protocol.manifest import (
    FORMAT,
    MAX_PIECES,
    MIN_PIECE,
    SEGMENT_PIECE,
    Manifest,
    ManifestError,
    SignedManifest,
    hash_pieces,
    is_content_id,
    piece_size_for,
)
from edgeswarm.store import catalog as catalog_module
from edgeswarm.store.catalog import Catalog
from edgeswarm.trust.signing import KeyFileError, load_or_create_private_key, load_private_key, load_public_key, public_pem, verify

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def make_manifest(**kw) -> Manifest:
    fields = {
        "path": "films/café.mkv",
        "size": MIN_PIECE + 1,
        "content_type": "video/x-matroska",
        "piece_size": MIN_PIECE,
        "pieces": ("0" * 64, "f" * 64),
        "modified": 1700000000,
    }
    return Manifest(**(fields | kw))


def manifest_of(data: bytes, piece_size: int = MIN_PIECE, **kw) -> Manifest:
    pieces = tuple(hashlib.sha256(data[i : i + piece_size]).hexdigest() for i in range(0, len(data), piece_size))
    return make_manifest(size=len(data), piece_size=piece_size, pieces=pieces, **kw)


# -- piece geometry ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "piece"),
    [
        (0, MIN_PIECE),
        (1, MIN_PIECE),
        (MIN_PIECE * MAX_PIECES, MIN_PIECE),
        (MIN_PIECE * MAX_PIECES + 1, 2 * MIN_PIECE),
        (2**30, 2**19),  # 1 GiB: 512 KiB pieces
        (4 * 2**30, 2**21),
        (50 * 10**9, 2**25),
    ],
)
def test_piece_size_for(size, piece):
    assert piece_size_for(size) == piece


@given(st.integers(0, 2**46))
def test_piece_size_for_is_the_smallest_power_of_two_that_fits(size):
    p = piece_size_for(size)
    assert p >= MIN_PIECE and p & (p - 1) == 0
    assert -(-size // p) <= MAX_PIECES
    assert p == MIN_PIECE or -(-size // (p // 2)) > MAX_PIECES


@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_piece_size_for_never_shrinks_for_a_bigger_file(a, b):
    assert piece_size_for(min(a, b)) <= piece_size_for(max(a, b))


@given(st.integers(0, 2**40))
def test_a_media_segment_gets_pieces_of_64_kib_and_never_larger_than_a_files(size):
    p = piece_size_for(size, segment=True)
    assert p >= SEGMENT_PIECE and p & (p - 1) == 0 and -(-size // p) <= MAX_PIECES
    assert p == SEGMENT_PIECE or -(-size // (p // 2)) > MAX_PIECES
    assert p <= piece_size_for(size)  # never larger than a file's


def test_a_manifest_with_segment_pieces_is_valid():
    m = Manifest("live/seg00001.ts", 800_000, "video/mp2t", SEGMENT_PIECE, ("0" * 64,) * 13, 0)
    assert Manifest.from_dict(m.to_dict()) == m and m.piece_count == 13


def test_piece_span_and_count():
    m = make_manifest(size=2 * MIN_PIECE + 10, pieces=("0" * 64,) * 3)
    assert m.piece_count == 3
    assert m.piece_span(0) == (0, MIN_PIECE)
    assert m.piece_span(1) == (MIN_PIECE, MIN_PIECE)
    assert m.piece_span(2) == (2 * MIN_PIECE, 10)  # the last piece is short
    exact = make_manifest(size=2 * MIN_PIECE, pieces=("0" * 64,) * 2)
    assert exact.piece_span(1) == (MIN_PIECE, MIN_PIECE)


@pytest.mark.parametrize(
    ("first", "last", "indices"),
    [
        (0, 0, [0]),
        (0, MIN_PIECE - 1, [0]),
        (0, MIN_PIECE, [0, 1]),
        (MIN_PIECE - 1, MIN_PIECE, [0, 1]),
        (MIN_PIECE, 2 * MIN_PIECE + 9, [1, 2]),
        (2 * MIN_PIECE + 9, 2 * MIN_PIECE + 9, [2]),
    ],
)
def test_pieces_for_a_byte_range(first, last, indices):
    m = make_manifest(size=2 * MIN_PIECE + 10, pieces=("0" * 64,) * 3)
    assert list(m.pieces_for(first, last)) == indices


def test_check_piece():
    data = os.urandom(MIN_PIECE + 100)
    m = manifest_of(data)
    first, tail = data[:MIN_PIECE], data[MIN_PIECE:]
    assert m.check_piece(0, first) and m.check_piece(1, tail)
    assert not m.check_piece(1, first)  # another piece's bytes
    assert not m.check_piece(0, first[:-1] + bytes([first[-1] ^ 1]))  # one bit flipped
    assert not m.check_piece(1, tail + b"\0")  # right prefix, wrong length
    assert not m.check_piece(0, b"")
    assert not m.check_piece(2, tail)  # out of range
    assert not m.check_piece(-1, tail)  # negative indices do not wrap around...
    whole = os.urandom(2 * MIN_PIECE)
    assert not manifest_of(whole).check_piece(-1, whole[MIN_PIECE:])  # ...even when the last piece is full-size


def test_hash_pieces(tmp_path):
    data = os.urandom(2500)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert hash_pieces(path, 1000) == tuple(hashlib.sha256(data[i : i + 1000]).hexdigest() for i in (0, 1000, 2000))
    path.write_bytes(b"")
    assert hash_pieces(path, 1000) == ()


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0" * 64, True),
        ("0123456789abcdef" * 4, True),
        ("A" * 64, False),
        ("0" * 63, False),
        ("0" * 65, False),
        ("g" * 64, False),
        ("", False),
    ],
)
def test_is_content_id(text, ok):
    assert is_content_id(text) is ok


# -- canonical form and content id ------------------------------------------------------


def test_canonical_form_is_pinned():
    """Content ids are ETags and cache keys on every node: the canonical bytes must not drift."""
    m = make_manifest()
    assert m.canonical() == (
        b'{"content_type":"video/x-matroska","format":1,"modified":1700000000,"path":"films/caf\xc3\xa9.mkv",'
        b'"piece_size":262144,"pieces":["' + b"0" * 64 + b'","' + b"f" * 64 + b'"],"size":262145}'
    )
    assert m.content_id == "9447fd333ad7016a20c1d1c79a64e0711f60b8e89c565b2358ce5aaa5e7e7814"
    assert m.content_id == hashlib.sha256(m.canonical()).hexdigest()
    assert is_content_id(m.content_id)


@pytest.mark.parametrize(
    "change",
    [
        {"path": "films/cafe.mkv"},
        {"size": MIN_PIECE + 2},
        {"content_type": "video/webm"},
        {"piece_size": 2 * MIN_PIECE, "pieces": ("0" * 64,)},
        {"pieces": ("0" * 64, "e" * 64)},
        {"pieces": ("f" * 64, "0" * 64)},  # order matters
        {"modified": 1700000001},
    ],
)
def test_every_field_changes_the_content_id(change):
    assert make_manifest(**change).content_id != make_manifest().content_id


def test_from_dict_round_trip_keeps_the_id_whatever_the_wire_form():
    m = make_manifest()
    d = json.loads(json.dumps(m.to_dict(), indent=3, ensure_ascii=True))  # other spacing and escaping
    d = dict(reversed(list(d.items())))  # other key order
    again = Manifest.from_dict(d)
    assert again == m and again.content_id == m.content_id


def test_from_dict_ignores_unknown_fields():
    d = make_manifest().to_dict() | {"comment": "not part of the signed form"}
    assert Manifest.from_dict(d).content_id == make_manifest().content_id


def test_a_content_type_that_is_no_media_type_is_a_malformed_manifest():
    """A manifest's content_type becomes every answer's Content-Type header: a hostile parent's (signed by the key it
    serves) with CR/LF made each a 500 with a traceback, at the edge and the peer's gateway; 200 KB of it reached
    players as a 200 with no body (an adversarial session)."""
    d = make_manifest().to_dict()
    for ok in ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "video/mp2t", "audio/x-flac"):
        assert Manifest.from_dict(d | {"content_type": ok}).content_type == ok
    for bad in ("text/html\r\nX-Evil: 1", "video/mp4; codecs=avc1", "x" * 200_000 + "/y", "vidéo/mp4", "mp4", "", "a/b/c"):
        with pytest.raises(ManifestError, match="content_type must be a media type"):
            Manifest.from_dict(d | {"content_type": bad})


def test_empty_file_manifest_is_valid():
    m = Manifest.from_dict(make_manifest(size=0, pieces=()).to_dict())
    assert m.piece_count == 0


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"format": None},
        {"format": "1"},
        {"path": None},
        {"path": 7},
        {"content_type": b"video/mp4"},
        {"size": -1},
        {"size": "262145"},
        {"size": 262145.0},
        {"modified": -1},
        {"modified": 1.5},
        {"piece_size": 3 * MIN_PIECE},  # not a power of two
        {"piece_size": SEGMENT_PIECE // 2, "size": 10, "pieces": ["0" * 64]},  # below the minimum
        {"piece_size": 0},
        {"pieces": ["0" * 64]},  # too few for the size
        {"pieces": ["0" * 64] * 3},  # too many
        {"pieces": ["0" * 64, "f" * 63]},
        {"pieces": ["0" * 64, 7]},
        {"pieces": None},
        {"pieces": 2},
        {"pieces": "0" * 128},
    ],
)
def test_from_dict_rejects(change):
    with pytest.raises(ManifestError, match="malformed manifest"):
        Manifest.from_dict(make_manifest().to_dict() | change)


@pytest.mark.parametrize("field", ["format", "path", "size", "content_type", "piece_size", "pieces", "modified"])
def test_from_dict_rejects_a_missing_field(field):
    d = make_manifest().to_dict()
    del d[field]
    with pytest.raises(ManifestError):
        Manifest.from_dict(d)


@pytest.mark.parametrize("doc", [None, [], "manifest", 1, {}])
def test_from_dict_rejects_non_objects(doc):
    with pytest.raises(ManifestError):
        Manifest.from_dict(doc)


@pytest.mark.integration  # a python -O subprocess
def test_from_dict_validates_even_under_python_O():
    code = textwrap.dedent(
        """
        from edgeswarm.protocol.manifest import Manifest, ManifestError
        bad = {"format": 1, "path": 1, "size": -5, "content_type": None, "piece_size": 3, "pieces": ["x"], "modified": "no"}
        try:
            Manifest.from_dict(bad)
        except ManifestError:
            raise SystemExit(0)
        raise SystemExit("accepted a malformed manifest")
        """
    )
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr


# -- signed manifests ------------------------------------------------------------------


def signed_doc(m: Manifest | None = None) -> dict:
    return json.loads(SignedManifest.sign(m or make_manifest(), KEY).to_json())


def parse(doc: dict | bytes, key=None) -> SignedManifest:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return SignedManifest.parse(data, key or KEY.public_key())


def test_signed_manifest_round_trip():
    m = make_manifest()
    signed = SignedManifest.sign(m, KEY)
    doc = json.loads(signed.to_json())
    assert set(doc) == {"id", "manifest", "signature"}
    assert doc["id"] == m.content_id
    assert len(base64.b64decode(doc["signature"])) == 64
    back = parse(signed.to_json())
    assert back.manifest == m and back.signature == signed.signature
    assert back.content_id == m.content_id
    assert back.etag == f'"{m.content_id}"'


def test_signature_is_over_the_canonical_form():
    signed = SignedManifest.sign(make_manifest(), KEY)
    assert verify(KEY.public_key(), signed.signature, make_manifest().canonical())
    assert not verify(KEY.public_key(), signed.signature, make_manifest(modified=1).canonical())


@pytest.mark.parametrize(
    "tamper",
    [
        {"path": "films/other.mkv"},
        {"size": MIN_PIECE + 2},
        {"content_type": "text/html"},
        {"pieces": ["0" * 64, "e" * 64]},
        {"modified": 1800000000},
    ],
)
def test_tampered_manifest_fails_the_signature(tamper):
    doc = signed_doc()
    doc["manifest"] |= tamper
    with pytest.raises(ManifestError, match="not signed by the pinned origin key"):
        parse(doc)


def test_tampered_signature_fails():
    doc = signed_doc()
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[10] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(ManifestError, match="not signed"):
        parse(doc)


def test_another_origin_key_is_refused():
    with pytest.raises(ManifestError, match="not signed"):
        parse(signed_doc(), OTHER_KEY.public_key())


def test_a_signature_from_another_manifest_is_refused():
    doc = signed_doc()
    doc["signature"] = signed_doc(make_manifest(modified=1))["signature"]
    with pytest.raises(ManifestError, match="not signed"):
        parse(doc)


def test_the_advertised_id_is_not_trusted():
    """The id in the document is informational: the content id is always recomputed."""
    doc = signed_doc()
    doc["id"] = "0" * 64
    assert parse(doc).content_id == make_manifest().content_id


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"manifest"',
        b"null",
        b"{}",
        json.dumps({"manifest": {}, "signature": ""}).encode(),
    ],
)
def test_malformed_signed_manifest(data):
    with pytest.raises(ManifestError, match="malformed"):
        SignedManifest.parse(data, KEY.public_key())


@pytest.mark.parametrize("signature", ["not base64!", "AAA", "AA\nAA", None, 5])
def test_malformed_signature_field(signature):
    doc = signed_doc()
    doc["signature"] = signature
    with pytest.raises(ManifestError, match="malformed"):
        parse(doc)


@pytest.mark.parametrize("length", [0, 32, 63, 65])
def test_wrong_length_signature_is_refused_not_raised(length):
    doc = signed_doc()
    doc["signature"] = base64.b64encode(b"\1" * length).decode()
    with pytest.raises(ManifestError, match="not signed"):
        parse(doc)


def test_missing_signature_or_manifest():
    for field in ("signature", "manifest"):
        doc = signed_doc()
        del doc[field]
        with pytest.raises(ManifestError, match="malformed"):
            parse(doc)


# -- signing: key files ------------------------------------------------------------------


def test_private_key_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "deep" / "dir" / "origin.pem"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_private_key(path)
    assert public_pem(again.public_key()) == public_pem(key.public_key())
    assert verify(again.public_key(), key.sign(b"x"), b"x")


def test_garbage_private_key_file(tmp_path):
    path = tmp_path / "origin.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="not a PEM private key") as err:
        load_or_create_private_key(path)
    assert str(path) in str(err.value)
    assert path.read_bytes().startswith(b"-----BEGIN")  # never overwritten


def ec_private_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_non_ed25519_private_key_file(tmp_path):
    path = tmp_path / "origin.pem"
    path.write_bytes(ec_private_pem())
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_private_key(path)


def test_encrypted_private_key_file(tmp_path):
    path = tmp_path / "origin.pem"
    path.write_bytes(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    )
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_or_create_private_key(path)


def test_load_private_key_never_creates_one(tmp_path):
    """The reader `token issue` uses: a missing file is an error, where the origin would make a new key."""
    path = tmp_path / "origin.pem"
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_private_key(path)
    assert not path.exists()
    key = load_or_create_private_key(path)
    assert public_pem(load_private_key(path).public_key()) == public_pem(key.public_key())
    path.write_bytes(ec_private_pem())
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(path)


def test_load_public_key_from_public_or_private_pem():
    pem = public_pem(KEY.public_key())
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert public_pem(load_public_key(pem)) == pem
    private = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert public_pem(load_public_key(private)) == pem


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_load_public_key_garbage(data):
    with pytest.raises(KeyFileError, match=r"origin\.pub: not a PEM Ed25519 key"):
        load_public_key(data, "origin.pub")


def test_load_public_key_of_another_algorithm():
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = ec_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for data in (pem, ec_private_pem()):
        with pytest.raises(KeyFileError, match="not an Ed25519 key"):
            load_public_key(data)


def test_verify():
    sig = KEY.sign(b"data")
    assert verify(KEY.public_key(), sig, b"data") is True
    assert verify(KEY.public_key(), sig, b"Data") is False
    assert verify(OTHER_KEY.public_key(), sig, b"data") is False
    assert verify(KEY.public_key(), sig[:-1], b"data") is False
    assert verify(KEY.public_key(), b"", b"data") is False


def test_format_constant():
    """Bumping FORMAT changes every content id; it must be deliberate (and the golden id above updated)."""
    assert FORMAT == 1


# -- ManifestOrder: manifests of one path only move forward -----------------------------------


def versions(*modified: int, path: str = "a.txt") -> list[SignedManifest]:
    return [
        SignedManifest.sign(make_manifest(path=path, modified=t, pieces=(hashlib.sha256(str(i).encode()).hexdigest(),) * 4), KEY)
        for i, t in enumerate(modified)
    ]


def test_order_accepts_newer_and_the_same_version_refuses_older():
    old, new, newer = versions(10, 20, 30)
    order = ManifestOrder()
    assert order.problem(old, None) is None  # nothing known: anything signed goes
    order.accept(new)
    assert order.problem(new, None) is None  # the same version again (a revalidation)
    assert order.problem(newer, None) is None
    assert "older version of 'a.txt'" in order.problem(old, None)


def test_order_refuses_a_different_version_with_the_same_modified():
    a, b = versions(10, 10)
    assert "another version of 'a.txt' dated the same" in ManifestOrder().problem(b, held=a)  # not "older": the same date


def test_order_counts_what_the_store_holds_and_outlives_it():
    old, new = versions(10, 20)
    order = ManifestOrder()
    assert order.problem(old, held=new)  # held from a previous run: nothing in memory yet
    order.accept(new)
    assert order.problem(old, held=None)  # the store forgot the path (a 404): memory did not
    order.accept(old)  # accepting never moves the mark back
    assert order.problem(old, held=None)


def test_order_is_per_path():
    (a,) = versions(20, path="a.txt")
    (b,) = versions(10, path="b.txt")
    order = ManifestOrder()
    order.accept(a)
    assert order.problem(b, None) is None


def test_order_remembers_the_most_recent_paths_only(monkeypatch):
    """The newest version of every path ever accepted stayed in memory: a live stream names new paths for ever (an edge
    took 290 bytes a path, found by an adversarial session)."""
    monkeypatch.setattr("edgeswarm.node.manifestfetch.PATHS_KEPT", 3)
    order = ManifestOrder()
    marks = {f"s{i}.ts": versions(10, 20, path=f"s{i}.ts") for i in range(5)}
    for old, new in marks.values():
        order.accept(new)
        order.accept(old)  # accepting never moves a mark back
    assert [order.problem(old, held=None) is None for old, _ in marks.values()] == [True, True, False, False, False]


def test_a_republished_file_moves_forward_even_when_its_mtime_does_not(tmp_path):
    """The origin's side of the rule: a new version of a path always gets a later ``modified``."""
    root = tmp_path / "pub"
    root.mkdir()
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    f = root / "a.txt"
    f.write_bytes(b"one")
    os.utime(f, (1_700_000_000, 1_700_000_000))
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    first = catalog.by_path["a.txt"].signed.manifest
    f.write_bytes(b"two")
    os.utime(f, (1_600_000_000, 1_600_000_000))  # an older file copied in
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    second = catalog.by_path["a.txt"].signed.manifest
    assert second.modified == first.modified + 1
    assert ManifestOrder().problem(catalog.by_path["a.txt"].signed, held=SignedManifest.sign(first, KEY)) is None
    copy = root / ".copy"
    copy.write_bytes(b"two")
    os.utime(copy, (1_600_000_000, 1_600_000_000))
    os.replace(copy, f)  # a new inode, the same bytes and mtime: the same version, not a new one
    lines = catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert catalog.by_path["a.txt"].signed.manifest == second
    assert lines == ["hashed again, unchanged: a.txt (3 bytes)"], lines  # not "republished": nothing changed for nodes


def test_a_protection_change_across_a_restart_is_a_later_version(tmp_path):
    """Restarted with --protect (or without it), the origin republishes the file later than the version nodes hold:
    at the same ``modified`` they refused the new manifest and kept serving the plaintext copy."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "a.bin").write_bytes(b"x" * 1000)
    os.utime(root / "a.bin", (1_700_000_000, 1_700_000_000))
    versions = []
    for protect in ([], ["*"], []):
        catalog = Catalog(root, tmp_path / "state.json", KEY, protect=protect)
        catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
        versions.append(catalog.by_path["a.bin"].signed)
    for held, fresh in itertools.pairwise(versions):
        assert ManifestOrder().problem(fresh, held=held) is None
        assert fresh.manifest.modified == held.manifest.modified + 1
    (tmp_path / "state.json").unlink()  # the state lost: the file is encrypted under a new key, later than any before
    catalog = Catalog(root, tmp_path / "state.json", KEY, protect=["*"])
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert ManifestOrder().problem(catalog.by_path["a.bin"].signed, held=versions[1]) is None


def test_a_version_after_a_withdrawal_or_a_lost_state_is_later_than_any_nodes_hold(tmp_path):
    """Re-hashed after a piece stopped matching (a file rewritten in place), or published with the state lost, a file's
    version took its mtime again: one nodes held was as new or newer, so they refused the new one and served the old
    for good (found by an adversarial session)."""
    root = tmp_path / "pub"
    root.mkdir()
    f = root / "a.bin"
    f.write_bytes(b"one")
    os.utime(f, (1_700_000_000, 1_700_000_000))
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    f.write_bytes(b"two")
    os.utime(f, (1_600_000_000, 1_600_000_000))  # an older file copied in: the previous version + 1
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    held = catalog.by_path["a.bin"].signed
    assert held.manifest.modified == 1_700_000_001
    f.write_bytes(b"six")
    os.utime(f, (1_600_000_000, 1_600_000_000))
    catalog.recheck("a.bin")  # the origin found a piece that no longer matches: withdrawn until hashed again
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert ManifestOrder().problem(catalog.by_path["a.bin"].signed, held=held) is None
    held = catalog.by_path["a.bin"].signed

    (tmp_path / "state.json").unlink()  # the state lost, the key kept
    catalog = Catalog(root, tmp_path / "state.json", KEY, new_key=False)
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert ManifestOrder().problem(catalog.by_path["a.bin"].signed, held=held) is None
    (tmp_path / "state.json").unlink()  # a new key: nobody holds a version, the mtime is the version
    assert Catalog(root, tmp_path / "state.json", KEY).scan_changes({})["a.bin"].signed.manifest.modified == 1_600_000_000


def test_saved_manifests_signed_with_another_key_are_signed_again_with_a_warning_naming_the_key(tmp_path, caplog):
    """A mistyped --key made a new key with one INFO line, signed everything again, and every edge then refused what
    changed (an adversarial session): the state proves another key was in use, which is worth a warning."""
    from edgeswarm.trust.signing import key_fingerprint

    root = tmp_path / "pub"
    root.mkdir()
    (root / "a.bin").write_bytes(b"a")
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    catalog.apply(catalog.scan_changes({}))
    caplog.clear()
    other = Ed25519PrivateKey.generate()
    again = Catalog(root, tmp_path / "state.json", other)
    assert again.by_path["a.bin"].signed.manifest == catalog.by_path["a.bin"].signed.manifest  # the same version, signed anew
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line.startswith("1 saved manifests were signed with another key than this start's (made at this start, SHA256:")
    assert key_fingerprint(other.public_key()) in line
    caplog.clear()
    Catalog(root, tmp_path / "state.json", KEY, new_key=False)  # nothing saved since: the state still holds KEY's
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_state_file_of_the_wrong_shape_and_a_file_from_before_1970(tmp_path, caplog):
    """A state file that was JSON of another shape stopped the origin at start with a traceback; a file with an mtime
    before 1970 was published with a negative ``modified`` that every node refused as malformed."""
    root = tmp_path / "pub"
    root.mkdir()
    old = root / "old.bin"
    old.write_bytes(b"1969")
    os.utime(old, (-18_489_600, -18_489_600))
    state = tmp_path / "state.json"
    for text in ("null", "[]", '{"old.bin": {"stat": null, "signed": {}}}', '{"old.bin": 5}'):
        state.write_text(text)
        catalog = Catalog(root, state, KEY, new_key=False)
        catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
        modified = catalog.by_path["old.bin"].signed.manifest.modified
        assert modified >= time.time() - 5, text
        Manifest.from_dict(catalog.by_path["old.bin"].signed.manifest.to_dict())  # what nodes check: valid
    assert "not a JSON object" in caplog.text


def test_a_file_whose_name_is_not_utf8_is_skipped_and_the_rest_published(tmp_path, caplog):
    """A Latin-1 name (b'caf\\xe9.txt') in the published folder stopped the origin at start and failed every scan
    after (nothing else published or withdrawn); no URL can name it, so it is skipped with one warning."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "ok.txt").write_bytes(b"ok")
    with open(os.fsencode(root) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name")
    os.mkdir(os.fsencode(root) + b"/d\xe9")
    with open(os.fsencode(root) + b"/d\xe9/in.txt", "wb") as f:
        f.write(b"in a latin-1 folder")
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert set(catalog.by_path) == {"ok.txt"}
    assert caplog.text.count("its name is not UTF-8") == 2, caplog.text


def test_an_unreadable_file_is_warned_about_once_per_state(tmp_path, caplog, monkeypatch):
    """A file the origin may not read (chmod 000) was warned about at every scan: once a second, for ever."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "locked.txt").write_bytes(b"locked")
    catalog = Catalog(root, tmp_path / "state.json", KEY)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")  # what chmod 000 does to an origin not run as root

    def scans(n: int) -> list[str]:
        caplog.clear()
        for _ in range(n):
            catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    monkeypatch.setattr("edgeswarm.store.catalog.hash_pieces", denied)
    assert scans(3) == ["not publishing locked.txt: cannot read it: Permission denied"]
    assert catalog.by_path == {}
    monkeypatch.undo()
    assert scans(1) == [] and set(catalog.by_path) == {"locked.txt"}  # readable again: published
    (root / "locked.txt").write_bytes(b"locked again")
    monkeypatch.setattr("edgeswarm.store.catalog.hash_pieces", denied)
    assert scans(2) == ["not publishing locked.txt: cannot read it: Permission denied"]  # a new state: one warning again


async def test_an_unreadable_large_file_is_warned_about_once_by_full_scans(tmp_path, caplog, monkeypatch):
    """The twin for files over LOCKED_HASH, which a full scan leaves to its prepare: that warning was forgotten by the
    scan under the lock, and said again at every scan, once a second (a review)."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "locked.bin").write_bytes(b"locked")
    catalog = Catalog(root, tmp_path / "state.json", KEY)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("edgeswarm.store.catalog.LOCKED_HASH", 1)  # every file is a large one here
    monkeypatch.setattr("edgeswarm.store.catalog.hash_pieces", denied)
    for _ in range(3):
        await catalog.scan()
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == ["not publishing locked.bin: cannot read it: Permission denied"] and catalog.by_path == {}


async def test_a_scan_of_a_folder_at_rest_walks_it_once_and_still_says_a_skipped_name_once(tmp_path, caplog, monkeypatch):
    """Every scan walked the folder twice (its hashing outside the lock, then the scan under it): 20 000 files were
    scanned every 28-31 s, where the pace promised 9 (an adversarial session).  A walk that found nothing to hash is
    taken up by the scan under the lock; a name the walk refuses is still said once, not at every scan."""
    root = tmp_path / "pub"
    root.mkdir()
    (root / "a.bin").write_bytes(b"a")
    with open(bytes(root) + b"/caf\xe9.bin", "wb") as f:  # a Latin-1 name: the walk refuses it
        f.write(b"latin")
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    walks = 0
    walk = catalog._walked_now

    def counted():
        nonlocal walks
        walks += 1
        return walk()

    monkeypatch.setattr(catalog, "_walked_now", counted)
    await catalog.scan()
    assert walks == 2 and set(catalog.by_path) == {"a.bin"}  # something new: walked again under the lock
    for n in (3, 4):
        await catalog.scan()
        assert walks == n
    (root / "b.bin").write_bytes(b"b")
    await catalog.scan()
    assert walks == 6 and set(catalog.by_path) == {"a.bin", "b.bin"} and catalog.walk_cpu_s > 0
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and said[0].endswith("its name is not UTF-8"), said


def test_symlinks_in_a_loop_or_to_hidden_files_are_not_published(tmp_path, caplog):
    """A symlink loop failed every scan (nothing else published or withdrawn) and stopped the origin at start; a link
    to .edgeswarm/origin.key published the origin's private signing key (found by an adversarial session)."""
    root = tmp_path / "pub"
    (root / ".edgeswarm").mkdir(parents=True)
    (root / ".edgeswarm" / "origin.key").write_bytes(b"secret")
    (root / "ok.txt").write_bytes(b"ok")
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    (root / "key.pem").symlink_to(".edgeswarm/origin.key")
    (root / "alias.txt").symlink_to("ok.txt")  # a link to a published file is published, as before
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert set(catalog.by_path) == {"ok.txt", "alias.txt"}
    assert "symlink to a hidden file" in caplog.text  # the loop: no file to publish, skipped as a dangling link is


def test_a_playlist_never_publishes_a_hidden_file(tmp_path):
    """A user's live playlist naming ../../.edgeswarm/origin.key as a segment had the live watch publish the origin's
    private signing key (found by an adversarial session): the files a playlist names pass the walk's rules."""
    root = tmp_path / "pub"
    (root / ".edgeswarm").mkdir(parents=True)
    (root / ".edgeswarm" / "origin.key").write_bytes(b"secret")
    (root / "users" / "m").mkdir(parents=True)
    (root / "users" / "m" / ".up.part").write_bytes(b"someone's upload")
    (root / "users" / "m" / "s1.ts").write_bytes(b"segment")
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    changes = catalog.changes_for([".edgeswarm/origin.key", "users/m/.up.part", "users/m/s1.ts"], dict(catalog.by_path))
    assert set(changes) == {"users/m/s1.ts"}


def test_a_manifest_nested_too_deep_is_malformed_not_a_crash():
    """A parent or neighbour answering 60 000 ``[`` (under the 64 KiB a manifest may take) gets a ManifestError (a 502)."""
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ManifestError, match="nested too deeply"):
        SignedManifest.parse(b"[" * 60_000, key.public_key())


def test_a_version_dated_ahead_of_the_clock_stays_behind_the_next_across_a_restart(tmp_path):
    """A playlist rewritten more than once a second is dated a second after its last version, ahead of the clock.  Its
    folder emptied and the origin restarted, the next stream's playlist was dated now: older than what nodes held,
    who served the dead playlist until the clock caught up (an adversarial session).  Floors ahead of the clock are
    saved with the state; the state itself is the same document as before."""
    root = tmp_path / "pub"
    (root / "live").mkdir(parents=True)
    f = root / "live" / "live.m3u8"
    catalog = Catalog(root, tmp_path / "state.json", KEY)
    for i in range(20):  # 20 versions within a second or two: each dated a second after the last
        f.write_text(f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{i}\n")
        catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    held = catalog.by_path["live/live.m3u8"].signed
    assert held.manifest.modified > time.time() + 10, "ahead of the clock"
    f.unlink()  # the stream ends, its folder is emptied
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert "live/live.m3u8" not in catalog.by_path
    withdrawal = json.loads((tmp_path / "state.journal").read_text().splitlines()[-1])  # the save: a journal line
    assert withdrawal == {"live/live.m3u8": None, "/floors": {"live/live.m3u8": held.manifest.modified}}

    catalog = Catalog(root, tmp_path / "state.json", KEY)  # the origin restarts; a new stream begins
    f.write_text("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n")
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert ManifestOrder().problem(catalog.by_path["live/live.m3u8"].signed, held=held) is None


def test_the_saved_state_reloads_every_entry_as_it_was(tmp_path):
    """The state file is written from each entry's cached row (no parse of every manifest on each save)."""
    root = tmp_path / "pub"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}.bin").write_bytes(bytes([i]) * (1000 + i))
    catalog = Catalog(root, tmp_path / "state.json", KEY, protect=["f1.bin"])
    catalog.apply(catalog.scan_changes({}))
    again = Catalog(root, tmp_path / "state.json", KEY, protect=["f1.bin"])
    assert {rel: (e.stat, e.raw, e.key) for rel, e in again.by_path.items()} == {
        rel: (e.stat, e.raw, e.key) for rel, e in catalog.by_path.items()
    }
    assert again.by_path["f1.bin"].key is not None


def _saved_catalog(tmp_path, files: int) -> tuple[Path, Path, Path, Catalog]:
    """A published folder of ``files`` files, its catalogue applied and saved: (folder, state, journal, catalogue)."""
    root = tmp_path / "pub"
    root.mkdir()
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    state = tmp_path / "state.json"
    catalog = Catalog(root, state, KEY)
    catalog.apply(catalog.scan_changes({}))
    return root, state, tmp_path / "state.journal", catalog


def test_a_save_appends_what_changed_and_a_restart_replays_it(tmp_path, monkeypatch):
    """Each change rewrote the whole state: 9 MB at 20 000 files, 25-46 ms of the origin's loop, at every segment of a
    live stream.  A save now appends the change to a journal; the state is written whole when the journal has grown to
    its size, and a restart reads both."""
    monkeypatch.setattr(catalog_module, "JOURNAL_MIN", 2000)
    root, state, journal, catalog = _saved_catalog(tmp_path, 8)
    snapshot = state.read_bytes()
    withdrawn = catalog.by_path["f1.bin"].signed.manifest.modified
    (root / "f0.bin").write_bytes(b"changed")
    (root / "f1.bin").unlink()
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert state.read_bytes() == snapshot and len(journal.read_text().splitlines()) == 2  # its header and one change

    again = Catalog(root, state, KEY)
    assert {rel: e.raw for rel, e in again.by_path.items()} == {rel: e.raw for rel, e in catalog.by_path.items()}
    assert again.scan_changes(dict(again.by_path)) == {}  # nothing to hash again
    (root / "f1.bin").write_bytes(b"back, older")
    os.utime(root / "f1.bin", (1_600_000_000, 1_600_000_000))
    again.apply(again.scan_changes(dict(again.by_path)))
    assert again.by_path["f1.bin"].signed.manifest.modified > withdrawn  # the withdrawal's floor was journalled
    for i in range(2, 8):  # the journal outgrows the snapshot: the state is written whole, a new journal begun
        (root / f"f{i}.bin").write_bytes(b"x" * (100 + i))
        again.apply(again.scan_changes(dict(again.by_path)))
    assert state.read_bytes() != snapshot and len(journal.read_text().splitlines()) < 8
    third = Catalog(root, state, KEY)
    assert {rel: e.raw for rel, e in third.by_path.items()} == {rel: e.raw for rel, e in again.by_path.items()}


def test_a_clean_stop_folds_the_journal_into_the_state(tmp_path):
    """An origin from before the journal reads the state file alone: rolled back after a clean stop, it signed a changed
    protected file again dated as the version nodes held, and they refused it (an adversarial session)."""
    root, state, journal, catalog = _saved_catalog(tmp_path, 3)
    catalog.fold()  # nothing journalled: nothing written
    snapshot = state.read_bytes()
    catalog.fold()
    assert state.read_bytes() == snapshot
    (root / "f2.bin").write_bytes(b"new")
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert len(journal.read_text().splitlines()) == 2  # the change is in the journal only
    catalog.fold()
    assert len(journal.read_text().splitlines()) == 1  # a new journal, empty
    rows = json.loads(state.read_text())
    assert rows["f2.bin"] == json.loads(catalog.by_path["f2.bin"].row)
    again = Catalog(root, state, KEY)
    assert {rel: e.raw for rel, e in again.by_path.items()} == {rel: e.raw for rel, e in catalog.by_path.items()}
    assert again.scan_changes(dict(again.by_path)) == {}


def test_a_clean_stop_after_a_failed_save_writes_the_state_whole(tmp_path, monkeypatch, caplog):
    """A change saved while the disk was full is in neither file: the fold at stop writes it (a review); a fold that
    fails says the journal keeps what changed, or that a restart hashes it again, whichever is true."""
    root, state, _, catalog = _saved_catalog(tmp_path, 2)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(catalog_module, "write_whole", full)
        m.setattr(Catalog, "_append", lambda self, changes: False)
        (root / "f1.bin").write_bytes(b"new")
        catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
        catalog.fold()
    assert "a restart hashes again what changed since" in caplog.text
    assert Catalog(root, state, KEY).scan_changes({}) != {}  # the change is in neither file yet
    catalog.fold()  # room again
    again = Catalog(root, state, KEY)
    assert again.by_path["f1.bin"].raw == catalog.by_path["f1.bin"].raw
    (root / "f0.bin").write_bytes(b"newer")  # journalled; then a fold that fails leaves the journal, and says so
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    caplog.clear()
    with monkeypatch.context() as m:
        m.setattr(catalog_module, "write_whole", full)
        catalog.fold()
    assert "the journal beside it keeps what changed" in caplog.text
    assert Catalog(root, state, KEY).by_path["f0.bin"].raw == catalog.by_path["f0.bin"].raw


def test_a_journal_the_state_does_not_name_or_a_cut_line_is_not_replayed(tmp_path):
    """A crash after a snapshot and before its new journal leaves the old journal, whose changes are in the snapshot:
    replaying it would undo later ones.  A line cut by a crash is skipped (its file is hashed again)."""
    root, state, journal, catalog = _saved_catalog(tmp_path, 3)
    (root / "f2.bin").write_bytes(b"new")
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    with open(journal, "ab") as f:
        f.write(b'{"f0.bin": null, "f1.bin": {"stat": [1, 2')  # a withdrawal and a row, cut by a crash
    again = Catalog(root, state, KEY)
    assert {rel: e.raw for rel, e in again.by_path.items()} == {rel: e.raw for rel, e in catalog.by_path.items()}
    (root / "f0.bin").write_bytes(b"after the cut")  # appended after the cut bytes, it was lost with them (a review)
    again.apply(again.scan_changes(dict(again.by_path)))
    assert Catalog(root, state, KEY).by_path["f0.bin"].raw == again.by_path["f0.bin"].raw
    (root / "f2.bin").write_bytes(b"newest")  # a line of the journal begun then
    again.apply(again.scan_changes(dict(again.by_path)))
    header, *changes = journal.read_text().splitlines()
    journal.write_text("\n".join([header.replace('":', '":1'), *changes]))  # another journal's number
    stale = Catalog(root, state, KEY)
    assert set(stale.scan_changes(dict(stale.by_path))) == {"f2.bin"}  # the snapshot's version of it, not the journal's
