"""edgeswarm.node.upstream against a double that holds its answer's head, or its body."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from conftest import DoubleServer

from edgeswarm.errors import HttpError
from edgeswarm.node import upstream as upstream_module
from edgeswarm.node.upstream import Hopeless, Upstream, UpstreamError, UpstreamTimeout, client_error_text, said_in, source_address


class Slow(DoubleServer):
    """``/head``: the head after ``hold`` s; ``/body``: the head at once, the body after ``hold`` s."""

    hold = 0.6

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/head", self.late_head)
        app.router.add_get("/body", self.late_body)
        app.router.add_get("/rate/{bps}", self.at_rate)

    async def late_head(self, _: web.Request) -> web.Response:
        await asyncio.sleep(self.hold)
        return web.Response(body=b"x")

    async def late_body(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1"})
        await resp.prepare(request)
        await asyncio.sleep(self.hold)
        await resp.write(b"x")
        return resp

    async def at_rate(self, request: web.Request) -> web.StreamResponse:
        """48 KiB, 4 KiB at a time at ``bps`` bytes a second: a slow uplink, or a peer dripping its answer."""
        resp = web.StreamResponse(headers={"Content-Length": str(48 * 1024)})
        await resp.prepare(request)
        for _ in range(12):
            await asyncio.sleep(4096 / int(request.match_info["bps"]))
            await resp.write(b"x" * 4096)
        return resp


@pytest.fixture
async def upstream():
    up = Upstream(5.0)
    await up.start()
    yield up
    await up.close()


async def test_a_head_held_past_head_timeout_is_a_stall_at_once(upstream):
    """A neighbour that accepts a piece request and never starts answering costs its asker head_timeout, not the timeout."""
    async with Slow() as slow:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"did not answer /head within 0\.2 s"):
            await upstream.get(slow.url, "/head", head_timeout=0.2)
        assert time.monotonic() - started < slow.hold


async def test_a_body_that_takes_longer_than_head_timeout_has_the_whole_timeout(upstream):
    """The head came at once (a capped uploader's body waits its turn): the body may take the rest of the timeout."""
    async with Slow() as slow:
        assert (await upstream.get(slow.url, "/body", head_timeout=0.2)).body == b"x"
        with pytest.raises(UpstreamTimeout, match=r"within 0\.3 s"):
            await upstream.get(slow.url, "/body", timeout=0.3, head_timeout=0.2)


async def test_a_body_that_keeps_coming_outlasts_the_timeout(upstream):
    """A piece from an honest uplink slower than piece/timeout (24 KiB/s: 2 s for 48 KiB, timeout 1 s) arrives whole:
    each 16 KiB received buys a second. Before, it was cut at the timeout and its sender dropped as a staller."""
    async with Slow() as slow:
        started = time.monotonic()
        assert len((await upstream.get(slow.url, f"/rate/{24 * 1024}", timeout=1.0)).body) == 48 * 1024
        assert time.monotonic() - started > 1.5


async def test_a_dripping_body_is_still_cut_near_the_timeout(upstream):
    """8 KiB/s buys half a second a second: cut at about 2 s with a 1 s timeout, long before its 6 s."""
    async with Slow() as slow:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"did not answer /rate/8192 within [12]\.[0-9]+ s"):
            await upstream.get(slow.url, "/rate/8192", timeout=1.0)
        assert time.monotonic() - started < 3.0


class Odd(DoubleServer):
    """``/big``: a 20 KB header; anything else: plain HTTP, where the client may expect TLS."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/big", self.big)
        app.router.add_get("/plain", self.plain)

    async def big(self, _: web.Request) -> web.Response:
        return web.Response(body=b"x", headers={"X-Big": "a" * 20_000})

    async def plain(self, _: web.Request) -> web.Response:
        return web.Response(body=b"x")


async def test_what_an_upstream_did_wrong_is_said_as_its_fault():
    """A 200 KB header was "ClientResponseError 400, message='Got more than 8190 bytes when reading: b'aaaa...'",
    which reads as the user's bad request; an https:// parent speaking plain HTTP was "unreachable: WRONG_VERSION_NUMBER",
    retried for ever; a plain-HTTP client of an HTTPS server was told "Server disconnected" (adversarial sessions)."""
    async with Odd() as odd:
        up = Upstream(5.0)
        await up.start()
        try:
            with pytest.raises(UpstreamError) as big:
                await up.get(odd.url, "/big")
            with pytest.raises(Hopeless) as tls:
                await up.get(odd.url.replace("http://", "https://"), "/plain")
        finally:
            await up.close()
    assert "its answer is not valid HTTP" in big.value.message and "aaaa" not in big.value.message, big.value.message
    assert "does not speak TLS: is it http://?" in tls.value.message, tls.value.message
    closed = client_error_text(aiohttp.ServerDisconnectedError(), "http://edge:8443")
    assert "if the URL should be https://" in closed


def test_a_broken_servers_bytes_stay_out_of_the_messages_that_quote_it():
    """A garbage status line put the server's bytes, and a caret under them, on five lines of `get`'s last error; a
    body cut short read "ContentLengthError: 400", a status nobody sent; a parent answering a piece 206 had 200 bytes
    of the piece pasted in as its reason (an adversarial session)."""
    message = "Bad status line:\n  Expected HTTP/, RTSP/ or ICE/:\n\n  b'\\x00\\xff garbage'\n    ^"  # llhttp's words
    garbage = aiohttp.ClientResponseError(None, (), status=400, message=message)  # type: ignore[arg-type]
    said = client_error_text(garbage, "http://edge:1")
    assert said == "its answer is not valid HTTP: Bad status line", said
    cut = aiohttp.ClientPayloadError("Response payload is not completed: <ContentLengthError: 400, message='Not enough data'>")
    assert "400" not in client_error_text(cut, "http://edge:1") and "cut short" in client_error_text(cut, "http://edge:1")
    assert said_in(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4) == "(1032 bytes that are not text)"
    assert said_in(b"  too many\n requests,\tslow down  ") == "too many requests, slow down"
    assert said_in("caf\u00e9 ".encode() * 100, 201) == " ".join(["caf\u00e9"] * 33) + " caf"  # cut mid-character: text


def test_connections_leave_from_a_loopback_listen_address_only_when_every_node_to_reach_is_on_loopback():
    """A loopback lab gives each peer an address of its own (its region); a peer listening on loopback because it
    takes no connections (--unreachable) must still reach edges on other machines."""
    assert source_address("127.1.0.5", ["http://127.0.0.1:8080", None]) == "127.1.0.5"
    assert source_address("::1", ["http://[::1]:8080", "http://localhost:8090"]) == "::1"
    assert source_address("127.0.0.1", ["http://10.1.2.3:8080"]) is None
    assert source_address("127.0.0.1", ["http://127.0.0.1:8080", "https://edge.example.net"]) is None
    assert source_address("10.0.0.7", ["http://edge.example.net"]) == "10.0.0.7"  # how the edge places it
    assert source_address("0.0.0.0", ["http://127.0.0.1:8080"]) is None and source_address("::", []) is None


async def test_a_node_the_listen_address_cannot_reach_is_named_with_that_address():
    """Bound to loopback, a connection to another machine fails with EINVAL: "Invalid argument" alone was the clue."""
    upstream = Upstream(2.0, bind="127.0.0.1")
    await upstream.start()
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.get("http://192.0.2.1:80", "/x")  # TEST-NET-1: never on this machine
    finally:
        await upstream.close()
    said = str(caught.value)
    assert "unreachable from 127.0.0.1, the --listen address" in said or "Network is unreachable" in said, said


async def asks_of(answers: dict[str, object], monkeypatch) -> tuple[list[object], list[str]]:
    """``first_answer`` over ``answers`` (source -> its answer after a delay: (seconds, value or exception), or None:
    never), HEDGE_AFTER 0.2 s: what it returned or raised, and the sources it asked, in order."""
    monkeypatch.setattr(upstream_module, "HEDGE_AFTER", 0.2)
    asked, cancelled = [], []

    async def ask(source: str) -> str:
        asked.append(source)
        answer = answers[source]
        try:
            if answer is None:
                await asyncio.sleep(3600)
            assert isinstance(answer, tuple)
            await asyncio.sleep(answer[0])
        except asyncio.CancelledError:
            cancelled.append(source)
            raise
        if isinstance(answer[1], Exception):
            raise answer[1]
        return answer[1]

    problems: list[UpstreamError] = []
    result = await upstream_module.first_answer(list(answers), ask, problems)
    await asyncio.sleep(0)  # the cancellations land
    return [result, *(p.message for p in problems)], asked + [f"cancelled {c}" for c in cancelled]


async def test_first_answer_asks_the_next_source_too_when_one_is_slow_and_keeps_the_first_answer(monkeypatch):
    """Sources were asked one after another with the whole timeout each: a wedged first edge (it takes connections and
    never answers) held a peer's new file, or a protected file's key, for 12 s (an adversarial session)."""
    got, asked = await asks_of({"wedged": None, "good": (0.0, "it"), "third": (0.0, "not asked")}, monkeypatch)
    assert got == ["it"] and asked == ["wedged", "good", "cancelled wedged"]
    got, asked = await asks_of({"cold": (0.3, "cold's"), "slower": (1.0, "slower's")}, monkeypatch)
    assert got == ["cold's"] and asked == ["cold", "slower", "cancelled slower"], "the first answer, whoever was asked first"


async def test_first_answer_asks_the_next_at_once_after_a_failure_and_passes_any_other_error_on(monkeypatch):
    """A failure (UpstreamError) is kept and the next source asked; a 404 or a token refused is the answer, as before."""
    got, asked = await asks_of({"down": (0.0, UpstreamError(502, "refused")), "good": (0.0, "it")}, monkeypatch)
    assert got == ["it", "refused"] and asked == ["down", "good"]
    got, _ = await asks_of({"a": (0.0, UpstreamError(502, "a down")), "b": (0.0, UpstreamError(504, "b hung"))}, monkeypatch)
    assert got == [None, "a down", "b hung"]
    with pytest.raises(HttpError) as err:
        await asks_of({"wedged": None, "gone": (0.0, HttpError(404, "not published"))}, monkeypatch)
    assert err.value.status == 404
