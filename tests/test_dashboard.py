"""The live dashboard (issue 12): its files as served, and the page in headless Chromium against a real edge.

The browser test drives Debian's chromium through playwright with the system
binary (never a downloaded browser), reads the figures the page shows and
compares them with the edge's own /status, and saves a screenshot to
out/test-artifacts/ (or $EDGESWARM_TEST_ARTIFACTS).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from conftest import curl, make_file, serve_app, start_p2p_edge, start_peer, status

from edgeswarm.node import dashboard
from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.policy.regions import RegionMap
from edgeswarm.policy.routing import EdgeSpec, RoutingTable, Thresholds
from edgeswarm.protocol.paths import RESERVED
from edgeswarm.roles import router as router_module
from edgeswarm.roles.config import EdgeConfig
from edgeswarm.roles.edge import Edge
from edgeswarm.roles.router import Router, RouterConfig, polled_figures

CHROMIUM = os.environ.get("EDGESWARM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("EDGESWARM_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "out" / "test-artifacts"))


@pytest.fixture
async def dash():
    """Our node app (make_app: error middleware, /healthz, /metrics) with only the dashboard mounted, in this process."""
    app = make_app(Metrics("edge"))
    dashboard.mount(app)
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}"


def to_fixed(x: float, digits: int) -> str:
    """JavaScript's ``Number.prototype.toFixed``: the float's exact value rounded, a tie going up (22.25 -> "22.3",
    where Python's format gives "22.2"; CI once drew exactly that share)."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def referenced(page: str) -> list[str]:
    """The URLs the page loads (scripts and stylesheets), as written in it."""
    return [url for url in re.findall(r'(?:src|href)="([^"]+)"', page) if not url.startswith("data:")]


async def test_the_page_and_every_file_it_loads_are_served_with_their_types_and_cache_rules(dash):
    async with aiohttp.ClientSession() as s:
        async with s.get(dash + "/dashboard") as r:
            assert r.status == 200
            page = await r.text()
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert r.headers["Cache-Control"] == "no-cache"  # revalidated: a new edgeswarm's page shows at once
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert '<meta name="edgeswarm-status" content="status">' in page
        urls = referenced(page)
        assert {u.rsplit(".", 1)[-1] for u in urls} == {"js", "css"} and all(u.startswith("dashboard/") for u in urls)
        assert "@@" not in page
        expected = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
        for url in urls:
            async with s.get(f"{dash}/{url}") as r:
                assert r.status == 200, url
                body = await r.read()
                assert r.headers["Content-Type"] == expected[url.rsplit(".", 1)[-1]], url
                vendored = dashboard.UPLOT in url
                assert r.headers["Cache-Control"] == (dashboard.IMMUTABLE if vendored else dashboard.REVALIDATE), url
                assert body == (dashboard.STATIC / url.split("/", 1)[1]).read_bytes()
                etag = r.headers["ETag"]
            async with s.get(f"{dash}/{url}", headers={"If-None-Match": etag}) as r:
                assert r.status == 304 and await r.read() == b"", url
            async with s.head(f"{dash}/{url}") as r:
                assert r.status == 200 and r.headers["Content-Type"] == expected[url.rsplit(".", 1)[-1]]
        async with s.get(f"{dash}/dashboard/{dashboard.UPLOT}.LICENSE") as r:
            assert r.status == 200 and "MIT License" in await r.text()
        for missing in ("nope.js", "..%2fdashboard.py", "README.md", "dashboard.html"):
            async with s.get(f"{dash}/dashboard/{missing}") as r:
                assert r.status == 404, missing
        for typed, there in (("/dashboard/", "../dashboard"), ("/dashboard/?edge=a%20b", "../dashboard?edge=a%20b")):
            async with s.get(dash + typed, allow_redirects=False) as r:  # a 400 "path segment ''" (an adversarial session)
                assert r.status == 301 and r.headers["Location"] == there, (typed, r.status, r.headers.get("Location"))
        async with s.get(dash + "/dashboard/?x=1") as r:  # relative, so that a proxy's prefix is kept (a review)
            assert r.status == 200 and str(r.url).endswith("/dashboard?x=1"), r.url


def test_a_mounted_page_points_at_its_status_url_and_its_assets_relative_to_itself_escaped():
    app = web.Application()
    dashboard.mount(app, prefix="/edges/dashboard", status_url='../status?x="><script>')
    templates = {r.canonical for r in app.router.resources()}
    assert templates == {"/edges/dashboard", "/edges/dashboard/", "/edges/dashboard/{name}"}  # the slash: a redirect
    page = dashboard.load('../status?x="><script>', "dashboard")[""].body.decode()
    assert 'content="../status?x=&quot;&gt;&lt;script&gt;"' in page and "<script>" not in page.replace("<script src=", "")


def test_the_edge_serves_the_dashboard_and_no_file_can_hide_behind_it(tmp_path: Path):
    edge = Edge(EdgeConfig(cache=tmp_path / "edge", parent="http://127.0.0.1:9", timeout=5.0))
    templates = {r.canonical for r in edge.app().router.resources()}
    assert {"/dashboard", "/dashboard/{name}"} <= templates
    assert "dashboard" in RESERVED  # the origin publishes nothing under dashboard/, which the edge's route would shadow


def test_the_vendored_chart_library_is_the_pinned_release_and_the_page_evaluates_no_code():
    """uPlot is byte for byte the release static/README.md names; neither it nor our script builds HTML or code from strings."""
    readme = (dashboard.STATIC / "README.md").read_text()
    for name in (f"{dashboard.UPLOT}.iife.min.js", f"{dashboard.UPLOT}.min.css"):
        digest = hashlib.sha256((dashboard.STATIC / name).read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(name)}` sha256 `{digest}`", readme), f"{name} is not the release static/README.md records"
    version = dashboard.UPLOT.split("-", 1)[1]
    assert (
        (dashboard.STATIC / f"{dashboard.UPLOT}.iife.min.js")
        .read_text()
        .startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    )
    for name in ("common.js", "dashboard.js", "router.js", f"{dashboard.UPLOT}.iife.min.js"):
        code = (dashboard.STATIC / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", 'setAttribute("style'):
            assert sink not in code, f"{name} uses {sink}"
    for name in (dashboard.PAGE, dashboard.ROUTER_PAGE):
        page = (dashboard.STATIC / name).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), f"an inline script in {name}"
        assert not re.search(r"\sstyle=|\son\w+=|javascript:", page), f"an inline style or handler in {name}"


# -- in a browser ------------------------------------------------------------------------------------------

REGIONS = (
    "regions:\n"
    "  - {name: '<img src=x onerror=alert(1)>', isp: att, networks: [127.1.0.0/16]}\n"  # names come from operators: text, never HTML
    "  - {name: west, isp: verizon, networks: [127.2.0.0/16]}\n"
)
HOSTILE_REGION = "<img src=x onerror=alert(1)>"
HOSTILE_PATH = "films/<b>x</b>&.bin"
PIECE = 256 * 1024
EVENTS = {"hangups": "client_hangup", "corrupt": "corrupt_piece", "stale": "stale_manifest"}  # the health panel's counts

# what the page shows, read from the DOM: each figure's text and the raw value it keeps in data-value
READ_DOM = """() => {
  const fig = {};
  for (const el of document.querySelectorAll("[id]")) fig[el.id] = [el.textContent, el.getAttribute("data-value")];
  const rows = (id) => [...document.querySelectorAll("#" + id + " tbody tr")].map((tr) => ({
    region: tr.getAttribute("data-region"), content: tr.getAttribute("data-content"),
    cells: [...tr.cells].map((td) => [td.textContent, td.getAttribute("data-value")]),
  }));
  const legend = (id) => [...document.querySelectorAll("#" + id + " .u-legend .u-series .u-label")].map((e) => e.textContent);
  return {
    fig, regions: rows("regions"), swarms: rows("swarms"), health: document.getElementById("health").getAttribute("data-state"),
    shareLegend: legend("share-chart"), egressLegend: legend("egress-chart"),
    canvases: document.querySelectorAll(".chart canvas").length, images: document.images.length,
  };
}"""


def shown_figures(st: dict) -> dict:
    """The figures the page must show for this /status, in the page's terms (what dashboard.js derives from them)."""
    contents = st["contents"]
    regions = st["p2p"]["regions"]
    return {
        "cache-used": st["cache_bytes"],
        "cache-max": st["cache_max_bytes"],
        "cache-entries": len(contents),
        "cache-pieces": sum(c["held"] for c in contents),
        "cache-evicted": st["evicted_pieces"],
        "capacity": st["upload_limit_Bps"],
        "sent-node": st["bytes_sent"].get("node", 0),
        "sent-client": st["bytes_sent"].get("client", 0),
        "responses-5xx": sum(n for code, n in st["responses"].items() if code.startswith("5")),
        **{key: sum(n for e, n in st["events"].items() if e.split(":")[0] == event) for key, event in EVENTS.items()},
        "regions": {
            name: (
                r.get("peers", 0),
                len(r.get("swarms", {})),
                r.get("p2p_share"),
                r.get("bytes_from_edge", 0),
                r.get("bytes_from_peers_same_region", 0) + r.get("bytes_from_peers_other_region", 0),
            )
            for name, r in regions.items()
        },
        "swarms": {(name, cid): n for name, r in regions.items() for cid, n in r.get("swarms", {}).items()},
        "paths": {c["id"]: c["path"] for c in contents},
    }


def dom_figures(dom: dict) -> dict:
    """The same figures as the page shows them (raw values from data-value)."""
    fig = dom["fig"]

    def num(key: str):
        raw = fig[key][1]
        return None if raw is None else float(raw) if "." in raw else int(raw)

    regions = {}
    for row in dom["regions"]:
        cells = row["cells"]
        assert cells[0][0] == row["region"], "a region's name is shown as it is"
        share = None if cells[3][1] is None else float(cells[3][1])
        regions[row["region"]] = (int(cells[1][0]), int(cells[2][0]), share, int(cells[4][1]), int(cells[5][1]))
    return {
        **{
            k: num(k)
            for k in ("cache-used", "cache-max", "cache-entries", "cache-pieces", "cache-evicted", "capacity", "sent-node", "sent-client")
        },
        "responses-5xx": num("responses-5xx"),
        **{key: num(key) for key in EVENTS},
        "regions": regions,
        "swarms": {(row["region"], row["content"]): int(row["cells"][2][0]) for row in dom["swarms"]},
        "paths": {row["content"]: row["cells"][1][0] for row in dom["swarms"]},
    }


def comparable(st: dict) -> dict:
    """What must be equal between two /status answers for the page's figures to be checked against them."""
    figures = shown_figures(st)
    return {k: v for k, v in figures.items() if k != "paths"}


@pytest.fixture
async def browser():
    """Headless Debian chromium driven by playwright; skipped, saying why, when either is missing."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright==1.49.0: the test extras)")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (Debian package chromium; ./dev test installs it; or set EDGESWARM_CHROMIUM)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def wait_for_polls(page, count: int, timeout: float = 15.0) -> None:
    """Until the page has drawn ``count`` polls.  Polled from here: playwright's wait_for_function evaluates
    its predicate with eval, which the page's CSP forbids (as it should)."""
    deadline = time.monotonic() + timeout
    while await polls(page) < count:
        assert time.monotonic() < deadline, f"the page did not poll /status {count} times in {timeout} s"
        await asyncio.sleep(0.1)


async def wait_for_health(page, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while await page.get_attribute("#health", "data-state") != state:
        assert time.monotonic() < deadline, f"the page never said {state!r}"
        await asyncio.sleep(0.1)


async def polls(page) -> int:
    return int(await page.get_attribute("#polls", "data-value"))


@pytest.mark.integration
async def test_the_dashboard_shows_what_status_says_in_chromium_without_console_errors(
    browser, tmp_path: Path, nodes, origin, published, http
):
    data = make_file(published / HOSTILE_PATH, 9 * PIECE + 1000)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(
        nodes, tmp_path, origin.url, regions, "--announce-interval", "1", "--upload-limit", "8MB/s", "--max-cache", "64MiB"
    )
    peers = [
        start_peer(nodes, tmp_path, edge.url, addr, name) for addr, name in (("127.1.0.1", "e1"), ("127.1.0.2", "e2"), ("127.2.0.1", "w1"))
    ]

    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(edge.url) else None)
    response = await page.goto(edge.url + "/dashboard")
    assert response is not None and response.status == 200
    await wait_for_polls(page, 1)

    quoted = "/" + HOSTILE_PATH.replace("<", "%3C").replace(">", "%3E").replace("&", "%26")
    for peer in peers:  # a download through each peer's gateway: the edge and the peers before it serve the pieces
        async with http.get(peer.urls["gateway"] + quoted) as r:
            assert r.status == 200 and await r.read() == data
    deadline = time.monotonic() + 30
    while not all(row.get("peers") for row in (await status(http, edge.url))["p2p"]["regions"].values()):
        assert time.monotonic() < deadline, "the peers never announced"
        await asyncio.sleep(0.3)

    # Compare once /status holds still across a read of the page: figures from a poll made after the first /status
    # fetch, and equal to a second one, must be what both say.
    for _ in range(20):
        before = await status(http, edge.url)
        await wait_for_polls(page, await polls(page) + 2)  # a poll that started after `before` was answered, and drawn
        dom = await page.evaluate(READ_DOM)
        after = await status(http, edge.url)
        if comparable(before) == comparable(after):
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("the edge's /status never held still for two polls")

    expected = shown_figures(after)
    assert dom["health"] == "up"
    assert dom_figures(dom) == expected
    assert set(expected["regions"]) == {HOSTILE_REGION, "west"} and expected["swarms"]
    assert all(dom["fig"][k][1] is not None for k in ("egress-rate", "uptime", "error-rate"))
    for row in dom["regions"]:  # the share is shown as a percentage of what /status says
        share = expected["regions"][row["region"]][2]
        assert row["cells"][3][0] == f"{to_fixed(share * 100, 1)} %"
    assert set(dom["fig"]["cache-entries"][0]) <= set("0123456789") and int(dom["fig"]["cache-entries"][0]) == len(after["contents"])
    assert set(expected["paths"].values()) == {HOSTILE_PATH}, "the swarms table names the content by its path, as text"
    assert dom["shareLegend"] == ["Time", HOSTILE_REGION, "west"] and dom["egressLegend"] == ["Time", "egress", "capacity"]
    assert dom["canvases"] == 2 and dom["images"] == 0, "a hostile string became markup"
    assert not problems, problems
    assert not outside, f"the page loaded something from elsewhere: {outside}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")


@pytest.mark.integration
async def test_an_edge_without_p2p_has_no_regions_and_the_page_says_down_when_status_cannot_be_had(browser, tmp_path: Path, nodes, origin):
    """A plain edge (no tracker) shows no regions; when it stops while the page is open, the page says so."""
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if "/status" in r.url else None)
    await page.goto(edge.url + "/dashboard?token=t0k%26en")  # a token on the page's URL goes to /status (--require-token)
    await wait_for_health(page, "up")
    assert polled and all(url == edge.url + "/status?token=t0k%26en" for url in polled), polled
    assert "not a tracker" in await page.text_content("#p2p-note")
    assert await page.locator("#regions tbody tr").count() == 0 and await page.locator("#share-chart canvas").count() == 0
    assert await page.get_attribute("#capacity", "data-value") is None and await page.text_content("#capacity") == "no limit"
    edge.stop()
    await wait_for_health(page, "down")
    assert "/status" in await page.text_content("#health")
    assert not errors, errors  # the failed fetch is the browser's network error, not an error of the page's script


@pytest.mark.integration
async def test_a_status_of_one_worker_alone_is_not_taken_for_the_edges_history(browser, tmp_path: Path, nodes, origin):
    """While the primary worker restarts, another answers /status with its own counters: the page reset its history and
    drew a burst of egress at the next whole answer (the review of the carried counters)."""
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--workers", "1")
    whole = json.loads(curl(edge.url + "/status").stdout)
    answers = [
        {**whole, "bytes_sent": {"client": 10_000_000}},
        {**whole, "bytes_sent": {"client": 1_000_000}, "workers": {"count": 2, "answered": 1, "primary": "unanswered"}},
        {**whole, "bytes_sent": {"client": 12_000_000}},
    ]
    page = await browser.new_page()

    async def status(route) -> None:
        await route.fulfill(status=200, content_type="application/json", body=json.dumps(answers[min(len(answers) - 1, polled[0])]))
        polled[0] += 1

    polled = [0]
    await page.route("**/status*", status)
    await page.goto(edge.url + "/dashboard")
    await wait_for_polls(page, 3)  # the third answer drawn (polls are 2 s apart)
    egress = float(await page.get_attribute("#egress-rate", "data-value") or "nan")
    assert egress < 1_000_000, egress  # 2 MB over the two polls since the first; 11 MB in one when the history reset


# -- the router's page -------------------------------------------------------------------------------------


def make_router(*edges: tuple[str, str, float]) -> Router:
    """A router over REGIONS with these (url, region, capacity B/s) edges listed, not yet polled."""
    regions = RegionMap.from_doc(yaml.safe_load(REGIONS))
    table = RoutingTable(Thresholds())
    for url, region, capacity in edges:
        table.add(EdgeSpec(url, region, capacity), time.monotonic())
    return Router(regions, table, RouterConfig())


async def test_the_router_serves_its_own_page_and_files_and_never_redirects_them():
    """/dashboard is the router's own path (like /edges): never a 302 to an edge; its files are served as the edge's."""
    router = make_router(("http://127.0.0.1:9", "west", 1e6))
    async with serve_app(router.app()) as port, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{port}"
        async with s.get(base + "/dashboard", allow_redirects=False) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert r.headers["Content-Security-Policy"] == dashboard.CSP
            page = await r.text()
        assert '<meta name="edgeswarm-status" content="status">' in page and "@@" not in page
        urls = referenced(page)
        assert {"dashboard/common.js", "dashboard/router.js"} <= set(urls) and "dashboard/dashboard.js" not in urls
        for url in urls:
            async with s.get(f"{base}/{url}", allow_redirects=False) as r:
                assert r.status == 200, url
                assert await r.read() == (dashboard.STATIC / url.split("/", 1)[1]).read_bytes()
        for path in ("/dashboard/nope.js", "/dashboard/router.html"):
            async with s.get(base + path, allow_redirects=False) as r:
                assert r.status == 404, path  # the router's namespace: not redirected to an edge
        async with s.get(base + "/status") as r:
            st = await r.json()
    (edge,) = st["edges"]
    assert edge["state"] == "down" and edge["polled"] is None  # port 9 answers nothing: never a good poll
    assert set(st["region_totals"]) == set(st["regions"])
    west = st["region_totals"]["west"]
    assert (west["edges"], west["edges_up"], west["capacity_Bps"], west["peers"], west["p2p_share"]) == (1, 0, 1e6, 0, None)


def test_the_router_keeps_a_bounded_typed_summary_of_each_polled_status():
    """An edge's /status is input: odd values become None, long names are cut, the rows are capped."""
    doc = {
        "upload_limit_Bps": 5e6,
        "cache_bytes": True,  # not a count
        "cache_max_bytes": 0,  # no quota
        "contents": [{}, {}],
        "p2p": {
            "peers": 3,
            "regions": {
                "x" * 500: {"peers": 2, "bytes_from_edge": 10, "bytes_from_peers_same_region": 5, "bytes_from_peers_other_region": 1},
                "r0": {"peers": -1, "p2p_share": "lots", "bytes_from_edge": float("nan"), "bytes_from_peers_same_region": float("inf")},
                **{f"r{n}": {"peers": 1} for n in range(1, 200)},
            },
        },
    }
    got = polled_figures(doc, 1234.5)
    assert (got["at"], got["upload_limit_Bps"], got["cache_bytes"], got["cache_max_bytes"], got["cache_entries"], got["peers"]) == (
        1234.5,
        5e6,
        None,
        None,
        2,
        3,
    )
    assert len(got["regions"]) == router_module.MAX_POLLED_REGIONS
    assert got["regions"]["x" * router_module.MAX_NAME] == {"peers": 2, "bytes_from_edge": 10, "bytes_from_peers": 6, "p2p_share": None}
    assert got["regions"]["r0"] == {"peers": None, "bytes_from_edge": None, "bytes_from_peers": None, "p2p_share": None}
    assert polled_figures({"bytes_sent": {}}, 0)["regions"] is None  # no tracker: no rows, not zero rows
    json.dumps(got, allow_nan=False)  # what the router's /status passes on is JSON a browser parses


def test_edges_sharing_one_tracker_store_count_its_peers_once():
    """Two edges on one Redis report the same region rows: the region's peers and bytes are that store's, not their sum."""
    router = make_router(("http://a:1", "west", 4e6), ("http://b:1", "west", 6e6), ("http://c:1", "west", 1e6))
    shared = "redis://10.0.0.9:6379/0"

    def polled(store: str, peers: int, from_edge: int, at: float) -> dict:
        return polled_figures(
            {"p2p": {"store": store, "peers": peers, "regions": {"west": {"peers": peers, "bytes_from_edge": from_edge}}}}, at
        )

    router.polled["http://a:1"] = polled(shared, 5, 100, 1)
    router.polled["http://b:1"] = polled(shared, 6, 120, 2)  # the same store, polled later: newer figures
    router.polled["http://c:1"] = polled("memory", 2, 10, 1)  # an edge with a tracker of its own
    totals = router.region_totals()["west"]
    assert (totals["peers"], totals["bytes_from_edge"]) == (6 + 2, 120 + 10)
    assert router.polled["http://c:1"]["store"] is None


def test_region_totals_sum_the_tracker_rows_of_every_edge_for_each_region():
    router = make_router(("http://a:1", "west", 4e6), ("http://b:1", "west", 6e6), ("http://c:1", HOSTILE_REGION, 1e6))
    row = {"bytes_from_peers_same_region": 30, "bytes_from_peers_other_region": 0}
    router.polled["http://a:1"] = polled_figures({"p2p": {"peers": 2, "regions": {"west": {"peers": 2, "bytes_from_edge": 70, **row}}}}, 1)
    router.polled["http://b:1"] = polled_figures({"p2p": {"peers": 1, "regions": {"west": {"peers": 1, "bytes_from_edge": 100}}}}, 1)
    router.table.health["http://a:1"].egress_Bps = 2e6
    totals = router.region_totals()
    assert totals["west"] == {
        "edges": 2,
        "edges_up": 0,
        "capacity_Bps": 10e6,
        "egress_Bps": 2_000_000,
        "load": 0.2,
        "peers": 3,
        "bytes_from_edge": 170,
        "bytes_from_peers": 30,
        "p2p_share": 0.15,
    }
    assert totals[HOSTILE_REGION]["peers"] == 0 and totals[HOSTILE_REGION]["p2p_share"] is None


# what the router's page shows, read from the DOM at one instant (with the poll it drew)
READ_ROUTER_DOM = """() => {
  const rows = (id) => [...document.querySelectorAll("#" + id + " tbody tr")].map((tr) => ({
    region: tr.getAttribute("data-region"), url: tr.getAttribute("data-url"), cls: tr.className,
    cells: [...tr.cells].map((td) => [td.textContent, td.getAttribute("data-value")]),
  }));
  const legend = (id) => [...document.querySelectorAll("#" + id + " .u-legend .u-series .u-label")].map((e) => e.textContent);
  const value = (id) => document.getElementById(id).getAttribute("data-value");
  return {
    polls: Number(value("polls")), health: document.getElementById("health").getAttribute("data-state"),
    edgesUp: value("edges-up"), edgesKnown: value("edges-known"), regions: rows("regions"), edges: rows("edges"),
    loadLegend: legend("load-chart"), shareLegend: legend("share-chart"),
    canvases: document.querySelectorAll(".chart canvas").length, images: document.images.length,
  };
}"""


def _num(raw: str | None) -> float | None:
    return None if raw is None else float(raw)


def router_expected(st: dict) -> dict:
    """The figures the router's page must show for this /status (numbers as floats, None where it shows none)."""

    def f(v):
        return None if v is None else float(v)

    regions = {
        name: tuple(
            f(r[k]) for k in ("edges_up", "egress_Bps", "capacity_Bps", "load", "peers", "p2p_share", "bytes_from_edge", "bytes_from_peers")
        )
        for name, r in st["region_totals"].items()
    }
    edges = {}
    for e in st["edges"]:
        p = e["polled"] or {}
        edges[e["url"]] = (
            e["region"],
            e["state"],
            e["reason"],
            *(f(e[k]) for k in ("since_s", "egress_Bps", "capacity_Bps", "load")),
            *(f(p.get(k)) for k in ("peers", "cache_bytes", "cache_max_bytes", "at")),
        )
    return {"regions": regions, "edges": edges, "up": sum(e["state"] == "up" for e in st["edges"]), "known": len(st["edges"])}


def router_shown(dom: dict) -> dict:
    regions = {}
    for row in dom["regions"]:
        assert row["cells"][0][0] == row["region"], "a region's name is shown as it is"
        regions[row["region"]] = tuple(_num(c[1]) for c in row["cells"][1:])
    edges = {}
    for row in dom["edges"]:
        c = row["cells"]
        assert c[1][0] == row["url"] and c[0][0] == row["region"], "URLs and regions are shown as they are"
        assert c[2][0] == c[2][1] and c[3][0] == c[3][1], "the state and the reason are shown as /status says them"
        edges[row["url"]] = (row["region"], c[2][1], c[3][1], *(_num(x[1]) for x in c[4:]))
    return {"regions": regions, "edges": edges, "up": int(dom["edgesUp"]), "known": int(dom["edgesKnown"])}


async def shown_with_its_status(page, answers: list[asyncio.Future], polls_at_least: int) -> tuple[dict, dict]:
    """The page's figures and the /status answer it drew them from (the page's n-th poll is the n-th answer)."""
    await wait_for_polls(page, polls_at_least)
    dom = await page.evaluate(READ_ROUTER_DOM)
    assert len(answers) >= dom["polls"], "a poll with no answer: the router should be up throughout"
    return dom, await answers[dom["polls"] - 1]


@pytest.mark.integration
async def test_the_routers_dashboard_shows_its_edges_per_region_and_a_killed_edge_as_down(
    browser, tmp_path: Path, nodes, origin, published, http
):
    """A router with a p2p edge in each of two regions and peers behind them: the page shows what the router's
    /status said at the poll it drew (per region and per edge), with no console error; a killed edge turns down."""
    data = make_file(published / "films" / "a.bin", 9 * PIECE + 1000)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    flags = ("--p2p", "--regions", str(regions), "--announce-interval", "1", "--upload-limit", "8MB/s", "--max-cache", "64MiB")
    east = nodes.start("edge", "--cache", str(tmp_path / "east"), "--parent", origin.url, *flags, name="east")
    west = nodes.start("edge", "--cache", str(tmp_path / "west"), "--parent", origin.url, *flags, name="west")
    router = nodes.start(
        "router",
        *("--regions", str(regions), "--poll-interval", "1"),
        *("--edge", f"{east.url},{HOSTILE_REGION},10MB/s", "--edge", f"{west.url},west,20MB/s"),
        name="router",
    )
    peers = [
        start_peer(nodes, tmp_path, east.url, "127.1.0.1", "e1"),
        start_peer(nodes, tmp_path, east.url, "127.1.0.2", "e2"),
        start_peer(nodes, tmp_path, west.url, "127.2.0.1", "w1"),
    ]
    for peer in peers:
        async with http.get(peer.urls["gateway"] + "/films/a.bin") as r:
            assert r.status == 200 and await r.read() == data
    deadline = time.monotonic() + 30
    while not all(t["peers"] and t["edges_up"] for t in (await status(http, router.url))["region_totals"].values()):
        assert time.monotonic() < deadline, "the router never saw both regions' peers through its edges' /status"
        await asyncio.sleep(0.3)

    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(router.url) else None)
    answers: list[asyncio.Future] = []
    page.on("response", lambda r: answers.append(asyncio.ensure_future(r.json())) if r.url == router.url + "/status" else None)
    response = await page.goto(router.url + "/dashboard")
    assert response is not None and response.status == 200

    dom, st = await shown_with_its_status(page, answers, 3)
    assert dom["health"] == "up"
    assert router_shown(dom) == router_expected(st)
    assert set(st["region_totals"]) == {HOSTILE_REGION, "west"} and router_expected(st)["up"] == 2
    assert all(e["polled"]["cache_bytes"] and e["polled"]["peers"] for e in st["edges"]), "the edges' cache and peers reach the page"
    assert all(t["capacity_Bps"] and t["peers"] for t in st["region_totals"].values())
    assert dom["loadLegend"] == dom["shareLegend"] == ["Time", HOSTILE_REGION, "west"]
    assert dom["canvases"] == 2 and dom["images"] == 0, "a hostile string became markup"

    west.stop()
    deadline = time.monotonic() + 20
    while True:
        dom, st = await shown_with_its_status(page, answers, dom["polls"] + 1)
        if router_shown(dom)["edges"][west.url][1] == "down":
            break
        assert time.monotonic() < deadline, "the page never showed the killed edge as down"
    assert router_shown(dom) == router_expected(st)
    row = next(e for e in st["edges"] if e["url"] == west.url)
    assert row["reason"] and row["polled"]["cache_bytes"], "a down edge shows why, and the last figures polled from it"
    assert st["region_totals"]["west"]["edges_up"] == 0 and next(r for r in dom["edges"] if r["url"] == west.url)["cls"] == "edge down"
    assert not problems, problems
    assert not outside, f"the page loaded something from elsewhere: {outside}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "router-dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"router dashboard screenshot: {shot}")
