"""CORS for web players on another origin: the rule (cors.py) driven directly, our app's hooks in-process, and real daemons.

The edge and the peer's gateway say who may read their answers (``--cors-origin``,
default ``*``), answer preflights, and put the headers on errors too; the
gateway's private answers (protected content it decrypts with the user's
token, its /status) go only to listed origins.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from conftest import make_file, serve_app
from test_trust import bearer, issue

from edgeswarm.cli import build_parser, main
from edgeswarm.errors import HttpError
from edgeswarm.node.daemon import PRIVATE, make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.protocol.cors import (
    ALLOW_HEADERS,
    ANY,
    EXPOSE_HEADERS,
    MAX_AGE,
    PUBLIC,
    CorsPolicy,
    gateway_host,
    merge_vary,
    parse_origin,
    sandboxed,
)

PAGE = "http://player.test:8000"  # the web player's origin
OTHER = "https://evil.test"
LISTED = CorsPolicy((PAGE,))
BOTH = CorsPolicy((ANY, PAGE))
MEDIA_HEADERS = {"Accept-Ranges", "Content-Length", "Content-Range", "ETag"}  # what a player must read (issue 12)


def exposed(headers) -> set[str]:
    return {h.strip() for h in headers.get("Access-Control-Expose-Headers", "").split(",") if h.strip()}


# -- the rule --------------------------------------------------------------------------------------------------------


def test_default_is_anyone_for_public_answers_with_or_without_an_origin():
    for origin in (PAGE, OTHER, None):
        h = PUBLIC.headers(origin)
        assert h["Access-Control-Allow-Origin"] == "*"
        assert exposed(h) >= MEDIA_HEADERS
        assert "Vary" not in h  # the same answer for every origin: caches need not key on it
        assert "Access-Control-Allow-Credentials" not in h


def test_private_answers_never_go_to_star():
    assert PUBLIC.headers(PAGE, private=True) == {}
    assert BOTH.headers(OTHER, private=True) == {"Vary": "Origin"}
    assert BOTH.headers(PAGE, private=True)["Access-Control-Allow-Origin"] == PAGE
    assert LISTED.headers(PAGE, private=True)["Access-Control-Allow-Origin"] == PAGE


def test_listed_origins_are_echoed_and_vary():
    h = LISTED.headers(PAGE)
    assert h["Access-Control-Allow-Origin"] == PAGE and h["Vary"] == "Origin"
    assert LISTED.headers(OTHER) == {"Vary": "Origin"}
    assert LISTED.headers(None) == {"Vary": "Origin"}
    assert BOTH.headers(OTHER)["Access-Control-Allow-Origin"] == "*"  # listed and '*': anyone else gets '*'


def test_preflight_allows_range_and_authorization_for_a_while():
    h = PUBLIC.preflight(PAGE)
    assert h["Access-Control-Allow-Origin"] == "*"
    assert set(h["Access-Control-Allow-Methods"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    allowed = {x.lower() for x in h["Access-Control-Allow-Headers"].split(", ")}
    assert {"range", "authorization", "if-none-match", "if-range"} <= allowed
    assert int(h["Access-Control-Max-Age"]) == MAX_AGE > 0
    assert "Access-Control-Expose-Headers" not in h
    assert LISTED.preflight(OTHER) == {"Vary": "Origin"}  # an origin not listed learns nothing it may do


def test_a_page_of_another_origin_changes_nothing_unless_named():
    own = "http://127.0.0.1:1111"
    for policy in (PUBLIC, LISTED, BOTH, CorsPolicy(())):
        assert policy.may_change(None, own)  # curl, a node: no Origin
        assert policy.may_change("HTTP://127.0.0.1:1111", own)  # the node's own page
        assert not policy.may_change(OTHER, own)  # "*" lets any page read public answers, never act
        assert not policy.may_change("null", own)  # a sandboxed frame, a file:// page
        assert not policy.may_change(ANY, own)
    assert LISTED.may_change(PAGE, own) and BOTH.may_change(PAGE, own)
    assert not PUBLIC.may_change(PAGE, own) and not CorsPolicy(()).may_change(PAGE, own)


def test_off_sends_nothing():
    off = CorsPolicy.from_flags(["none"])
    assert not off.enabled and off.headers(PAGE) == {} and off.preflight(PAGE) == {}


@pytest.mark.parametrize(
    ("flags", "origins"),
    [
        (None, ("*",)),
        ([], ("*",)),
        (["*"], ("*",)),
        ([PAGE], (PAGE,)),
        ([PAGE, PAGE, "*"], (PAGE, "*")),
        (["none"], ()),
    ],
)
def test_policy_from_flags(flags, origins):
    assert CorsPolicy.from_flags(flags).origins == origins


def test_none_with_origins_is_refused():
    with pytest.raises(ValueError, match="none"):
        CorsPolicy.from_flags(["none", PAGE])


@pytest.mark.parametrize(
    ("text", "origin"),
    [("*", "*"), ("none", "none"), ("https://Player.Example", "https://player.example"), ("HTTP://a.b:8080", "http://a.b:8080")],
)
def test_parse_origin(text, origin):
    assert parse_origin(text) == origin


@pytest.mark.parametrize("text", ["player.example", "https://a.b/", "https://a.b/path", "https://a.b?x", "", "https://", "all", "* "])
def test_parse_origin_refuses_what_is_not_an_origin(text):
    if text.strip() == "*":
        assert parse_origin(text) == "*"  # surrounding blanks are forgiven
        return
    with pytest.raises(ValueError, match="not an origin"):
        parse_origin(text)


@pytest.mark.parametrize("role", ["edge", "peer"])
def test_cli_flag_on_edge_and_peer(role, capsys):
    base = ["edge", "--cache", "c", "--parent", "http://o:1"] if role == "edge" else ["peer", "--cache", "c", "--edge", "http://e:1"]
    args = build_parser().parse_args([*base, "--cors-origin", "https://A.example", "--cors-origin", "*"])
    assert args.cors_origin == ["https://a.example", "*"]
    assert build_parser().parse_args(base).cors_origin is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--cors-origin", "https://a.example/player"])
    assert "not an origin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("existing", "merged"), [(None, "Origin"), ("", "Origin"), ("Accept", "Accept, Origin"), ("origin", "origin"), ("*", "*")]
)
def test_merge_vary(existing, merged):
    assert merge_vary(existing, "Origin") == merged


def test_allowed_and_exposed_lists_name_real_headers():
    for name in (*ALLOW_HEADERS, *EXPOSE_HEADERS):
        assert name.replace("-", "").isalpha()


# -- our app's hooks, in this process ----------------------------------------------------------------------------------


def app_with(cors: CorsPolicy | None) -> web.Application:
    """make_app with handlers that answer as the nodes' do: plain, streamed, refused, private, and a POST route."""
    app = make_app(Metrics("edge"), cors)

    async def plain(_: web.Request) -> web.Response:
        return web.Response(text="x", headers={"ETag": '"e"', "Vary": "Accept-Encoding"})

    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Range": "bytes 0-1/10", "Content-Length": "2"})
        await resp.prepare(request)
        await resp.write(b"ab")
        return resp

    async def refused(_: web.Request) -> web.Response:
        raise HttpError(416, "outside the file", {"Content-Range": "bytes */10"})

    async def private(request: web.Request) -> web.Response:
        request[PRIVATE] = True
        return web.Response(text="mine")

    async def crash(_: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/plain", plain)
    app.router.add_get("/streamed", streamed)
    app.router.add_get("/refused", refused)
    app.router.add_get("/private", private)
    app.router.add_get("/crash", crash)
    app.router.add_post("/plain", plain)
    return app


async def test_every_answer_carries_the_headers_errors_included(http):
    async with serve_app(app_with(PUBLIC)) as port:
        base = f"http://127.0.0.1:{port}"
        for path, status in [("/plain", 200), ("/streamed", 206), ("/refused", 416), ("/crash", 500), ("/nowhere", 404)]:
            async with http.get(base + path, headers={"Origin": PAGE}) as r:
                assert r.status == status, path
                assert r.headers["Access-Control-Allow-Origin"] == "*", path
                assert exposed(r.headers) >= MEDIA_HEADERS, path
        async with http.put(base + "/plain", headers={"Origin": PAGE}) as r:  # aiohttp's own 405
            assert r.status == 405 and r.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(base + "/private", headers={"Origin": PAGE}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_listed_origin_gets_private_answers_and_vary_is_merged(http):
    async with serve_app(app_with(LISTED)) as port:
        base = f"http://127.0.0.1:{port}"
        async with http.get(base + "/private", headers={"Origin": PAGE}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == PAGE
        async with http.get(base + "/plain", headers={"Origin": OTHER}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
            assert r.headers["Vary"] == "Accept-Encoding, Origin"


async def test_options_is_a_preflight_or_says_what_is_allowed(http):
    async with serve_app(app_with(PUBLIC)) as port:
        base = f"http://127.0.0.1:{port}"
        ask = {"Origin": PAGE, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range, authorization"}
        async with http.options(base + "/streamed", headers=ask) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Range" in r.headers["Access-Control-Allow-Headers"]
            assert r.headers["Allow"] == "GET, HEAD, OPTIONS"
        async with http.options(base + "/plain") as r:  # no preflight: the methods of the path, no Allow-Methods
            assert r.status == 204
            assert r.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
            assert "Access-Control-Allow-Methods" not in r.headers


async def test_a_post_from_a_page_of_another_origin_is_refused(http):
    for policy in (PUBLIC, LISTED, None):  # None: an app that answers no browser (the origin's, the router's)
        async with serve_app(app_with(policy)) as port:
            base = f"http://127.0.0.1:{port}"
            async with http.post(base + "/plain", headers={"Origin": OTHER, "Content-Type": "text/plain"}, data="x") as r:
                assert r.status == 403 and "POST from a page on https://evil.test" in await r.text()
            async with http.post(base + "/plain", headers={"Origin": f"http://127.0.0.1:{port}"}) as r:
                assert r.status == 200  # its own page
            async with http.post(base + "/plain") as r:
                assert r.status == 200  # no Origin: not a page
            async with http.post(base + "/plain", headers={"Origin": PAGE}) as r:
                assert r.status == (200 if policy is LISTED else 403)
            async with http.get(base + "/plain", headers={"Origin": OTHER}) as r:
                assert r.status == 200  # reading is CORS's business, not this rule's


async def test_without_a_policy_nothing_changes(http):
    async with serve_app(app_with(None)) as port:
        base = f"http://127.0.0.1:{port}"
        async with http.get(base + "/plain", headers={"Origin": PAGE}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers and r.headers["Vary"] == "Accept-Encoding"
        async with http.options(base + "/plain", headers={"Origin": PAGE, "Access-Control-Request-Method": "GET"}) as r:
            assert r.status == 405


# -- real daemons ------------------------------------------------------------------------------------------------------


def start_gateway(nodes, tmp_path, edge_url: str, name: str, *extra: str):
    args = ("--cache", str(tmp_path / name), "--edge", edge_url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
    return nodes.start("peer", *args, *extra, name=name)


async def test_edge_and_gateway_answer_browsers_by_default(tmp_path, nodes, origin, published, http):
    data = make_file(published / "v" / "a.mp4", 600_000)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    peer = start_gateway(nodes, tmp_path, edge.url, "peer")
    for base in (edge.url, peer.urls["gateway"]):
        async with http.get(base + "/v/a.mp4", headers={"Origin": PAGE, "Range": "bytes=100-199"}) as r:
            assert r.status == 206 and await r.read() == data[100:200]
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert exposed(r.headers) >= MEDIA_HEADERS
        preflight = {"Origin": PAGE, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization,range"}
        async with http.options(base + "/v/a.mp4", headers=preflight) as r:
            assert r.status == 204
            assert {"range", "authorization"} <= {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
            assert "GET" in r.headers["Access-Control-Allow-Methods"]
        for path, headers, status in [("/v/none.mp4", {}, 404), ("/v/a.mp4", {"Range": "bytes=700000-"}, 416)]:
            async with http.get(base + path, headers={"Origin": PAGE, **headers}) as r:
                assert r.status == status
                assert r.headers["Access-Control-Allow-Origin"] == "*"  # so the page sees the status, not a network error
    async with http.get(peer.urls["gateway"] + "/status", headers={"Origin": PAGE}) as r:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers  # what the user watches is theirs
    async with http.get(edge.url + "/status", headers={"Origin": PAGE}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_listed_origin_only_and_off(tmp_path, nodes, origin, published, http):
    make_file(published / "a.bin", 1000)
    listed = nodes.start("edge", "--cache", str(tmp_path / "e1"), "--parent", origin.url, "--cors-origin", PAGE, name="listed")
    off = nodes.start("edge", "--cache", str(tmp_path / "e2"), "--parent", origin.url, "--cors-origin", "none", name="off")
    async with http.get(listed.url + "/a.bin", headers={"Origin": PAGE}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == PAGE and "Origin" in r.headers["Vary"]
    async with http.get(listed.url + "/a.bin", headers={"Origin": OTHER}) as r:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    async with http.get(off.url + "/a.bin", headers={"Origin": PAGE}) as r:
        assert r.status == 200 and not any(h.lower().startswith("access-control-") for h in r.headers)


@pytest.mark.parametrize("role", ["edge", "peer"])
def test_cli_refuses_none_with_an_origin_before_starting(role, tmp_path, capsys):
    where = ["--parent", "http://127.0.0.1:9"] if role == "edge" else ["--edge", "http://127.0.0.1:9"]
    assert main([role, "--cache", str(tmp_path / "c"), *where, "--cors-origin", "none", "--cors-origin", PAGE]) == 2
    assert "--cors-origin none" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


async def test_gateway_decrypted_content_goes_to_listed_origins_only(tmp_path, nodes, published, http):
    """The gateway decrypts protected content with its user's token: under '*' any page could read it through localhost."""
    secret = make_file(published / "films" / "secret.bin", 300_000)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2", "--protect", "films/*")
    key = published / ".edgeswarm" / "origin.key"
    edge = nodes.start(
        "edge", *("--cache", str(tmp_path / "edge"), "--parent", origin.url, "--require-token", "--token", issue(key, "node-edge"))
    )
    token = issue(key, "alice", "/films/")
    star = start_gateway(nodes, tmp_path, edge.url, "star", "--token", token)
    listed = start_gateway(nodes, tmp_path, edge.url, "listed", "--token", token, "--cors-origin", PAGE)
    for gw, allow in ((star, None), (listed, PAGE)):
        async with http.get(gw.urls["gateway"] + "/films/secret.bin", headers={"Origin": PAGE, "Range": "bytes=0-99"}) as r:
            assert r.status == 206 and await r.read() == secret[:100]
            assert r.headers.get("Access-Control-Allow-Origin") == allow
    async with http.get(listed.urls["gateway"] + "/films/secret.bin", headers={"Origin": PAGE, "Range": "bytes=0-9,299990-"}) as r:
        body = await r.read()  # several ranges of decrypted content: each part decrypted at its own offset
        assert r.status == 206 and r.headers["Content-Type"].startswith("multipart/byteranges")
        assert secret[:10] in body and secret[299990:] in body and r.headers["Access-Control-Allow-Origin"] == PAGE
    async with http.get(edge.url + "/films/secret.bin", headers={"Origin": PAGE, **bearer(token)}) as r:
        assert r.status == 200 and await r.read() == secret
        assert r.headers["Access-Control-Allow-Origin"] == "*"  # the page sent the token itself: nothing ambient


async def test_a_page_the_user_visits_cannot_make_the_gateway_download(tmp_path, nodes, origin, published, http):
    """A cross-site form POST needs no preflight: it reached the gateway and the peer fetched the whole file."""
    make_file(published / "big.bin", 2_000_000)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    for name, extra in (("default", ()), ("listed", ("--cors-origin", PAGE))):
        gateway = start_gateway(nodes, tmp_path, edge.url, name, *extra).urls["gateway"]
        page = {"Origin": OTHER, "Content-Type": "text/plain"}
        async with http.post(gateway + "/big.bin", headers=page, data="x") as r:
            assert r.status == 403, name
        async with http.get(gateway + "/status") as r:
            assert (await r.json())["swarms"] == [], name  # nothing was fetched, not even the manifest
        async with http.post(gateway + "/big.bin") as r:  # the user's own client (curl, a script) still may
            assert r.status == 202, name


async def test_the_gateway_answers_only_under_addresses_and_names_it_is_given(tmp_path, nodes, origin, published, http):
    """DNS rebinding: a page of rebind.test whose name its DNS then points at 127.0.0.1 reads the gateway as its own
    origin, where CORS never applies: a protected film, /status and a POST were all answered; now 421, unless the user
    named that host (--gateway-host)."""
    data = make_file(published / "a.bin", 1000)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    peer = start_gateway(nodes, tmp_path, edge.url, "peer", "--gateway-host", "TV.lan")
    url = peer.urls["gateway"]
    port = url.rsplit(":", 1)[1]
    for host in (f"rebind.test:{port}", "rebind.test", f"127.0.0.1.nip.io:{port}", f"tv.lan.evil.test:{port}"):
        for method, path in (("GET", "/a.bin"), ("GET", "/status"), ("GET", "/metrics"), ("POST", "/a.bin")):
            async with http.request(method, url + path, headers={"Host": host, "Origin": f"http://{host}"}) as r:
                assert r.status == 421, (host, method, path)
                assert "--gateway-host" in await r.text()
    for host in (f"localhost:{port}", f"tv.lan:{port}", "TV.LAN.", f"[::1]:{port}", f"127.0.0.1:{port}", "player.localhost"):
        async with http.get(url + "/a.bin", headers={"Host": host}) as r:
            assert r.status == 200 and await r.read() == data, host
            assert r.headers["Content-Security-Policy"] == "sandbox" and r.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(url + "/status") as r:
        assert (await r.json())["swarms"], "the POSTs above fetched nothing, the GETs did"
    # what strangers reach: the upload server has no /metrics (it names every content the user fetched)
    async with http.get(peer.urls["upload"] + "/metrics") as r:
        assert r.status == 404
    async with http.get(url + "/metrics", headers={"Origin": PAGE}) as r:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_gateway_host_takes_addresses_localhost_and_listed_names_only():
    assert all(
        gateway_host(h) for h in ("127.0.0.1:1111", "127.0.0.1", "[::1]:1111", "10.1.2.3:80", "localhost", "LocalHost:1", "a.localhost.")
    )
    assert not any(gateway_host(h) for h in ("evil.test:1111", "localhost.evil.test", "127.0.0.1.nip.io", "", "::1"))
    assert gateway_host("tv.lan:1111", ("tv.lan",)) and gateway_host("TV.LAN.", ("tv.lan",))
    assert not gateway_host("tv.lan.evil.test", ("tv.lan",))


@pytest.mark.parametrize("text", ["http://tv.lan", "tv lan", "", "user@tv.lan", "tv.lan/x", "tv.lan:99999"])
def test_cli_refuses_a_gateway_host_that_is_not_a_name(text, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["peer", "--cache", str(tmp_path), "--edge", "http://127.0.0.1:9", "--gateway-host", text])
    assert "not a host name" in capsys.readouterr().err


def test_a_host_name_flag_may_carry_a_port_which_is_dropped():
    """`--only-origin cdn.example.com:8443` started an edge before: the Host's port is never compared."""
    args = build_parser().parse_args(["edge", "--cache", "c", "--parent", "http://o:1", "--only-origin", "CDN.example.com:8443"])
    assert args.only_origin == ["cdn.example.com"]


def test_only_what_could_be_a_document_is_sandboxed():
    """A film opened at the gateway in a browser did not play by itself under the sandbox (an adversarial session), nor
    an HLS playlist, which Chromium plays natively (another one)."""
    for media in (
        "video/mp4",
        "audio/mpeg",
        "image/png",
        "image/jpeg; charset=binary",
        "application/vnd.apple.mpegurl",
        "application/x-mpegURL",
    ):
        assert not sandboxed(media), media
    for document in ("text/html; charset=utf-8", "image/svg+xml", "application/xml", "application/pdf", "application/octet-stream", ""):
        assert sandboxed(document), document
