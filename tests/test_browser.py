"""A web player on another origin, in headless Chromium: fetch with Range, <video>, and HLS through edge and gateway.

Debian's chromium (``/usr/bin/chromium``, or ``EDGESWARM_CHROMIUM``) is driven
by playwright with the system browser; no browser is downloaded.  The page
comes from a small aiohttp server of its own (another port: another origin),
so every read of the edge or the gateway is cross-origin and works only with
their CORS headers: ``fetch`` with a Range, ``<video crossorigin>`` (whose
frames a canvas may then read), and hls.js (vendored in tests/assets/hls.js),
which reads playlists and segments with XHR.  The media are made here with
ffmpeg (H.264, which Debian's chromium decodes) and published by the origin.

Each test saves a screenshot: under ``$EDGESWARM_ARTIFACTS/browser/`` when that
is set, else in the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import serve_app

from edgeswarm.measure.process import ProcessGroup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHROMIUM = os.environ.get("EDGESWARM_CHROMIUM", "/usr/bin/chromium")
HLS_JS = Path(__file__).parent / "assets" / "hls.js" / "hls.light.min.js"
SECONDS = 8  # length of the test media: long enough for playback to be seen advancing
WAIT_MS = 20_000  # bound on each wait for a media event: generous, the tests take a few seconds

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edgeswarm browser test</title>
<script src="/hls.light.min.js"></script>
<style>body { font: 14px "Liberation Sans", sans-serif; } video { width: 320px; height: 240px; background: #000; }</style>
</head><body><h1 id="title">edgeswarm: a web player on another origin</h1><pre id="log"></pre></body></html>
"""


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=120)


# a page someone published on the CDN: opened at a user's gateway, its script would be of the gateway's origin, reading
# the user's /status (and protected films, decrypted with the user's token) as its own (an adversarial session)
STEAL = """<!doctype html><html><head><title>untouched</title><script>
document.title = 'ran';
fetch('/status').then(r => r.json()).then(s => { document.title = 'read ' + s.peer_id; });
</script></head><body></body></html>
"""


def _make_media(pub: Path) -> None:
    """An H.264 MP4 (index at the front, as web video is published) and the same as HLS: 1-second MPEG-TS segments;
    and a published HTML page (STEAL)."""
    source = ["-f", "lavfi", "-i", f"testsrc=size=320x240:rate=25:duration={SECONDS}"]
    h264 = ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "800k", "-pix_fmt", "yuv420p", "-profile:v", "baseline", "-g", "25"]
    (pub / "v").mkdir(parents=True)
    (pub / "v" / "page.html").write_text(STEAL)
    _ffmpeg(*source, *h264, "-movflags", "+faststart", str(pub / "v" / "film.mp4"))
    (pub / "hls").mkdir()
    _ffmpeg(
        *source,
        *h264,
        *("-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"),
        *("-hls_segment_filename", str(pub / "hls" / "seg%03d.ts"), str(pub / "hls" / "index.m3u8")),
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """An origin publishing the media, an edge in front of it, a peer on that edge, and an edge with CORS off."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (Debian package ffmpeg; ./dev test installs it)")
    root = tmp_path_factory.mktemp("browser")
    _make_media(root / "pub")
    with ProcessGroup(root / "logs") as group:
        origin = group.start("origin", "--publish", str(root / "pub"))
        edge = group.start("edge", "--cache", str(root / "edge"), "--parent", origin.url, name="edge")
        closed = group.start("edge", "--cache", str(root / "closed"), "--parent", origin.url, "--cors-origin", "none", name="closed")
        peer = group.start(
            "peer", *("--cache", str(root / "peer"), "--edge", edge.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
        )
        yield {"edge": edge.url, "gateway": peer.urls["gateway"], "closed": closed.url, "pub": root / "pub"}


@pytest.fixture
def artifacts(request, tmp_path: Path) -> Path:
    """Where screenshots go: $EDGESWARM_ARTIFACTS/browser/ (kept after the run), else the test's tmp_path."""
    base = os.environ.get("EDGESWARM_ARTIFACTS")
    where = Path(base) / "browser" if base else tmp_path
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
async def page_origin() -> AsyncIterator[str]:
    """The web player's own origin: the page and hls.js, served on another port than any node."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def hls_js(_: web.Request) -> web.FileResponse:
        return web.FileResponse(HLS_JS, headers={"Content-Type": "text/javascript"})

    async def no_icon(_: web.Request) -> web.Response:
        return web.Response(status=204)  # the browser asks; a 404 would be a console error of its own

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/hls.light.min.js", hls_js)
    app.router.add_get("/favicon.ico", no_icon)
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def page(page_origin: str):
    """A fresh Chromium tab on the player's page; the console's errors are collected in ``page.errors``."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright==1.49.0: the test extras)")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (Debian package chromium; ./dev test installs it; or set EDGESWARM_CHROMIUM)")
    args = ["--autoplay-policy=no-user-gesture-required", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            tab = await browser.new_page(viewport={"width": 800, "height": 600})
            tab.errors = []
            tab.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
            tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
            await tab.goto(page_origin + "/")
            yield tab
        finally:
            await browser.close()


async def screenshot(tab, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    await tab.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


FETCH = """async ([url, range]) => {
  const r = await fetch(url, {headers: range ? {Range: range} : {}});
  const body = new Uint8Array(await r.arrayBuffer());
  const h = (n) => r.headers.get(n);
  document.getElementById('log').textContent += `${r.status} ${url} ${range} -> ${h('Content-Range')}\\n`;
  return {status: r.status, body: Array.from(body), contentRange: h('Content-Range'), contentLength: h('Content-Length'),
          etag: h('ETag'), acceptRanges: h('Accept-Ranges'), contentType: h('Content-Type')};
}"""


@pytest.mark.parametrize("via", ["edge", "gateway"])
async def test_fetch_with_range_from_another_origin(deployment, page, artifacts, via):
    """fetch() with Range: 206, the right bytes, and the headers a player reads (Content-Range, ETag...) visible to JS."""
    data = (deployment["pub"] / "v" / "film.mp4").read_bytes()
    url = deployment[via] + "/v/film.mp4"
    got = await page.evaluate(FETCH, [url, "bytes=100-1123"])
    assert got["status"] == 206
    assert bytes(got["body"]) == data[100:1124]
    assert got["contentRange"] == f"bytes 100-1123/{len(data)}"
    assert got["contentLength"] == "1024" and got["acceptRanges"] == "bytes" and got["etag"].startswith('"')
    # several ranges (not a CORS-safelisted Range: a preflight first) come back as one multipart answer
    multi = await page.evaluate(FETCH, [url, "bytes=0-9,2000-2009"])
    assert multi["status"] == 206 and multi["contentType"].startswith("multipart/byteranges; boundary=")
    body = bytes(multi["body"])
    assert data[0:10] in body and data[2000:2010] in body and f"bytes 2000-2009/{len(data)}".encode() in body
    # an error is seen as its status, not as a network failure
    missing = await page.evaluate(FETCH, [deployment[via] + "/v/nothing.mp4", "bytes=0-9"])
    assert missing["status"] == 404
    assert page.errors == ["Failed to load resource: the server responded with a status of 404 (Not Found)"]
    await screenshot(page, artifacts, f"fetch-{via}")


async def test_a_page_published_on_the_cdn_runs_no_script_at_the_gateway_nor_at_the_edge(deployment, page, tmp_path):
    """Files are served sandboxed: a published HTML page opened at the gateway is a document of no origin, its script
    blocked (it read the user's /status before); at the edge too, where its script read the viewer's token from its own
    ``?token=`` and sent it away, or placed preheat orders when the operator opened it (an adversarial session).  The
    control: the same page served by a plain web server runs."""
    for node in ("gateway", "edge"):
        page.errors.clear()
        await page.goto(deployment[node] + "/v/page.html")
        assert await page.title() == "untouched", node
        assert any("sandboxed" in e and "allow-scripts" in e for e in page.errors), (node, page.errors)
    (tmp_path / "page.html").write_text(STEAL)
    await page.goto((tmp_path / "page.html").as_uri())
    assert await page.title() != "untouched", "the control: the page's script runs where nothing sandboxes it"


async def test_a_film_opened_at_the_gateway_plays_by_itself(deployment, page):
    """Media are not sandboxed: under the sandbox a film opened straight from the gateway stayed at 0 s in Chromium."""
    await page.goto(deployment["gateway"] + "/v/film.mp4")
    await page.wait_for_function("document.querySelector('video') && document.querySelector('video').currentTime > 0.5", timeout=WAIT_MS)


async def test_a_page_of_another_origin_cannot_read_the_gateways_metrics(deployment, page):
    """The gateway's /metrics names every content its user fetched: for the user only, as its /status (no CORS "*")."""
    with pytest.raises(Exception, match="Failed to fetch"):
        await page.evaluate(FETCH, [deployment["gateway"] + "/metrics", None])
    assert (await page.evaluate(FETCH, [deployment["edge"] + "/metrics", None]))["status"] == 200  # an edge's: public


async def test_without_cors_the_browser_refuses(deployment, page):
    """The control: the same fetch against an edge with --cors-origin none fails in the page, so the tests above can fail."""
    with pytest.raises(Exception, match="Failed to fetch"):
        await page.evaluate(FETCH, [deployment["closed"] + "/v/film.mp4", "bytes=0-9"])


PLAY = """async (url) => {
  const v = document.createElement('video');
  v.crossOrigin = 'anonymous';  // CORS mode: without the node's headers the video would not load at all
  v.muted = true;
  v.controls = true;
  document.body.appendChild(v);
  window.video = v;
  v.src = url;
  await v.play();
}"""

PLAY_HLS = """async (url) => {
  if (!Hls.isSupported()) throw new Error('hls.js: no MediaSource');
  const v = document.createElement('video');
  v.muted = true;
  v.controls = true;
  document.body.appendChild(v);
  window.video = v;
  window.fatal = [];
  const hls = new Hls({enableWorker: false});
  hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.fatal.push(`${d.type}: ${d.details}`); });
  hls.loadSource(url);
  hls.attachMedia(v);
  await new Promise((resolve, reject) => {
    hls.on(Hls.Events.MANIFEST_PARSED, resolve);
    hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) reject(new Error(`${d.type}: ${d.details}`)); });
  });
  await v.play();
}"""


async def wait_playing(tab) -> dict:
    """Until the video has enough data (readyState 4) and its clock has moved on by half a second while we watched."""
    await tab.wait_for_function("window.video && window.video.readyState === 4", timeout=WAIT_MS)
    start = await tab.evaluate("window.video.currentTime")
    t0 = time.monotonic()
    await tab.wait_for_function(f"window.video.currentTime > {start} + 0.5", timeout=WAIT_MS)
    state = await tab.evaluate(
        "({t: video.currentTime, rs: video.readyState, err: video.error && video.error.code, w: video.videoWidth, d: video.duration})"
    )
    state["waited"] = time.monotonic() - t0
    return state


async def frame_is_drawn(tab) -> bool:
    """A frame drawn on a canvas can be read back (a cross-origin video without CORS would taint it) and is not blank."""
    return await tab.evaluate(
        """() => {
      const c = document.createElement('canvas');
      c.width = 32; c.height = 24;
      const g = c.getContext('2d');
      g.drawImage(video, 0, 0, 32, 24);
      const px = g.getImageData(0, 0, 32, 24).data;
      let lit = 0;
      for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 60) lit++;
      return lit > 32 * 24 / 4;
    }"""
    )


@pytest.mark.parametrize("via", ["edge", "gateway"])
async def test_video_plays_an_mp4(deployment, page, artifacts, via):
    await page.evaluate(PLAY, deployment[via] + "/v/film.mp4")
    state = await wait_playing(page)
    assert state["rs"] == 4 and state["err"] is None and state["w"] == 320
    assert abs(state["d"] - SECONDS) < 0.5
    assert await frame_is_drawn(page)
    assert page.errors == []
    await screenshot(page, artifacts, f"video-{via}")


async def test_hls_plays_through_the_gateway_with_hls_js(deployment, page, artifacts):
    """Chromium has no native HLS: hls.js (MSE) reads the playlist and the segments from the gateway with XHR."""
    await page.evaluate(PLAY_HLS, deployment["gateway"] + "/hls/index.m3u8")
    state = await wait_playing(page)
    assert state["rs"] == 4 and state["err"] is None and state["w"] == 320
    assert await page.evaluate("window.fatal") == []
    assert await frame_is_drawn(page)
    assert page.errors == []
    await screenshot(page, artifacts, "hls-gateway")
