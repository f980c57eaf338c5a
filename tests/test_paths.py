"""edgeswarm.protocol.paths: hostile request paths fail early with a 400."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.errors import HttpError
from edgeswarm.protocol.paths import (
    RESERVED,
    clean_request_path,
    file_request_path,
    manifest_request_path,
    manifest_url,
    path_problem,
    reserved_segment,
)


def rejected(raw: str) -> HttpError:
    with pytest.raises(HttpError) as err:
        clean_request_path(raw)
    assert err.value.status == 400
    return err.value


@pytest.mark.parametrize(
    ("raw", "rel"),
    [
        ("/a.mp4", "a.mp4"),
        ("/films/2024/a.mkv", "films/2024/a.mkv"),
        ("/films/a%20b.mp4", "films/a b.mp4"),
        ("/caf%C3%A9.mkv", "café.mkv"),
        ("/café.mkv", "café.mkv"),
        ("/a.mp4?x=1", "a.mp4"),  # the query is not part of the path
        ("/a?../../etc/passwd", "a"),
        ("/a.mp4?", "a.mp4"),
        ("/a%3Fb", "a?b"),  # an encoded '?' is a character of the name
        ("/a%2Fb", "a/b"),
        ("/...", "..."),  # only '.' and '..' are special, not every run of dots
        ("/.hidden", ".hidden"),
        ("/a..b/c..", "a..b/c.."),
        ("/%252e%252e/x", "%2e%2e/x"),  # decoded once: a literal name, not a traversal
        ("/a+b", "a+b"),  # '+' is not a space in a path
        ("/" + "a" * 4096, "a" * 4096),
    ],
)
def test_clean_request_path_accepts(raw, rel):
    assert clean_request_path(raw) == rel
    assert path_problem(rel) is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/", "empty path"),
        ("/?x=1", "empty path"),
        ("", "must be an absolute path"),
        ("a/b", "must be an absolute path"),
        ("//etc/passwd", "absolute path"),
        ("/%2Fetc/passwd", "absolute path"),
        ("/" + "a" * 4097, "path too long"),
        ("/..", "'..'"),
        ("/../etc/passwd", "'..'"),
        ("/a/..", "'..'"),
        ("/a/../b", "'..'"),
        ("/a/../../b", "'..'"),
        ("/.", "'.'"),
        ("/./a", "'.'"),
        ("/a/./b", "'.'"),
        ("/a/.", "'.'"),
        ("/a//b", "''"),
        ("/a/", "''"),
        ("/%2e%2e/etc/passwd", "'..'"),
        ("/%2E%2E/etc/passwd", "'..'"),
        ("/.%2e/x", "'..'"),
        ("/%2e./x", "'..'"),
        ("/a/%2e", "'.'"),
        ("/a%2F..%2Fb", "'..'"),
        ("/a%2f%2e%2e%2fb", "'..'"),
        ("/a\\b", "backslash"),
        ("/a%5cb", "backslash"),
        ("/..%5C..%5Cwindows", "backslash"),
        ("/a%00b", "control character"),
        ("/a%00", "control character"),
        ("/a%0ab", "control character"),
        ("/a%0d%0aSet-Cookie:%20x=1", "control character"),
        ("/a%09b", "control character"),
        ("/a%1fb", "control character"),
        ("/a%7fb", "control character"),
        ("/a\x01b", "control character"),
        ("/%ff", "not UTF-8"),
        ("/%zz", "not followed by two hex digits"),
        ("/100%.mp4", "not followed by two hex digits"),
        ("/a%2", "not followed by two hex digits"),
        ("/%c0%ae%c0%ae/x", "not UTF-8"),  # overlong UTF-8 for '..'
        ("/%e2%82", "not UTF-8"),  # truncated sequence
        ("/%ed%a0%80", "not UTF-8"),  # an encoded surrogate
    ],
)
def test_clean_request_path_rejects(raw, why):
    err = rejected(raw)
    assert why in err.message
    assert err.message.startswith("invalid path") or err.message.startswith("request target")


def test_path_problem_names_the_reason():
    assert path_problem("") == "empty path"
    assert path_problem("/a") == "absolute path"
    assert path_problem("a/../b") == "path segment '..' is not allowed"
    assert path_problem("a\x00") == "control character or backslash in path"
    assert path_problem("x" * 4097) == "path too long"
    assert path_problem("films/a.mp4") is None


def test_reserved_names_the_node_endpoints():
    """Files under these would be shadowed by the endpoints, so the catalogue and the nodes refuse them."""
    assert {
        "manifest",
        "content",
        "piece",
        "have",
        "announce",
        "healthz",
        "status",
        "metrics",
        "key",
        "origin-key",
        "torrent",
        "magnet",
        "relay",
    } <= RESERVED
    assert "films" not in RESERVED


def test_reserved_segment_is_the_first_segment_only():
    assert reserved_segment("manifest/a.mp4") == "manifest"
    assert reserved_segment("status") == "status"
    assert reserved_segment("films/manifest") is None
    assert reserved_segment("manifests/a.mp4") is None


def test_file_request_path_refuses_endpoint_names_with_404():
    """Every node's file handler: /status/x is no file (404), /../x no path at all (400)."""
    assert file_request_path("/films/a.mp4") == "films/a.mp4"
    with pytest.raises(HttpError) as err:
        file_request_path("/piece/abc/0")
    assert (err.value.status, err.value.message) == (404, "no such endpoint /piece")
    with pytest.raises(HttpError) as err:
        file_request_path("/films/../x")
    assert err.value.status == 400


@pytest.mark.parametrize("path", ["a.mp4", "films/a b.mp4", "café/é.mkv", "manifest/x", "a%2Fb"])
def test_manifest_request_path_reads_what_manifest_url_writes(path):
    assert manifest_request_path(manifest_url(path)) == path


@pytest.mark.parametrize("raw", ["/manifest", "/manifest/", "/manifest/..", "/manifest//a"])
def test_manifest_request_path_refuses_no_path(raw):
    with pytest.raises(HttpError) as err:
        manifest_request_path(raw)
    assert err.value.status == 400


# -- properties ---------------------------------------------------------------------

# Characters that may appear in a published name (no '/', no control characters, no backslash).
NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\")
SEGMENT = st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@given(st.text(max_size=60))
def test_clean_request_path_never_returns_a_dangerous_path(text):
    try:
        rel = clean_request_path("/" + text)
    except HttpError as exc:
        assert exc.status == 400
        return
    segments = rel.split("/")
    assert ".." not in segments and "." not in segments and "" not in segments
    assert "\\" not in rel and not any(ord(c) < 0x20 or c == "\x7f" for c in rel)
    assert path_problem(rel) is None


@given(st.lists(st.sampled_from(["a", "..", ".", "", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%", "%e9", "b%20c", "?"]), max_size=10))
def test_clean_request_path_never_returns_a_dangerous_path_from_encoded_pieces(pieces):
    raw = "/" + "/".join(pieces)
    try:
        rel = clean_request_path(raw)
    except HttpError:
        return
    assert path_problem(rel) is None
    assert ".." not in rel.split("/")


@given(st.lists(SEGMENT, min_size=1, max_size=6))
def test_clean_request_path_decodes_what_quote_encodes(segments):
    rel = "/".join(segments)
    assert clean_request_path(quote("/" + rel)) == rel
    assert clean_request_path(quote("/" + rel, safe="")) == rel  # even with every '/' encoded


@given(
    st.lists(SEGMENT, max_size=3),
    st.lists(SEGMENT, max_size=3),
    st.lists(st.sampled_from([".", "%2e", "%2E"]), min_size=2, max_size=2),
)
def test_clean_request_path_rejects_dot_dot_however_it_is_encoded(before, after, dots):
    raw = quote("/" + "/".join([*before, ""])) + "".join(dots) + quote("".join(["/" + s for s in after]))
    assert "'..'" in rejected(raw).message


def test_the_reserved_names_origin_help_and_readme_list_are_the_ones_refused():
    """`origin --help` and README listed the reserved names without ``scrape``, which the origin refuses to publish under
    (a newcomer's walk through README)."""
    import re
    from pathlib import Path

    from edgeswarm.cli.origin import EPILOG

    said = re.search(r"reserved for node endpoints \(([^)]*)\)", " ".join(EPILOG.split()))
    assert said is not None and set(said.group(1).split(", ")) == RESERVED
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    listed = re.search(r"the reserved top-level names \(([^)]*)\)", readme)
    assert listed is not None and set(listed.group(1).split(", ")) == RESERVED
