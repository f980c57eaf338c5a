"""``edgeswarm bench serve``: a warm edge against nginx, loaded by wrk in the same run.

One file is published by an origin and pulled through an edge until the edge
holds all of it; nginx (its own config, one worker, sendfile on) serves the
same file from disk.  wrk loads each with the same connections and duration,
first with random 1 MiB ranges (the same sequence for both: a fixed seed),
then with whole-file GETs.  The rounds alternate edge/nginx and the median is
reported, because a shared 2-core VM has noisy neighbours.  Target: edge ≥
0.5 × nginx on 1 MiB ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeswarm.process import ProcessGroup

MiB = 1024 * 1024
ROUNDS = 3
RANGE_SCRIPT = """\
math.randomseed(42)
local size = {size}
request = function()
  local first = math.random(0, size - 1048576)
  return wrk.format("GET", "{path}", {{Range = "bytes=" .. first .. "-" .. (first + 1048575)}})
end
"""
NGINX_CONF = """\
daemon off;
worker_processes 1;
{user}
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  sendfile on;
  tcp_nopush on;
  access_log off;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  server {{ listen 127.0.0.1:{port}; root {publish}; }}
}}
"""


class BenchError(Exception):
    pass


def run(size: int, duration: int, connections: int, json_path: Path | None) -> int:
    console = Console()
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        console.print(f"[red]bench serve needs {' and '.join(missing)}[/red]: `./dev bench serve` installs them (Debian packages)")
        return 2
    if size < 2 * MiB:
        console.print("[red]bench serve needs --size of at least 2MiB[/red] (it asks for 1 MiB ranges)")
        return 2
    root = Path(tempfile.mkdtemp(prefix="edgeswarm-bench-serve-"))
    try:
        result = _measure(console, root, size, duration, connections)
    except (BenchError, RuntimeError) as exc:
        console.print(f"[red]bench serve failed:[/red] {exc}")
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _report(console, result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _measure(console: Console, root: Path, size: int, duration: int, connections: int) -> dict:
    publish = root / "publish"
    publish.mkdir()
    digest = hashlib.sha256()
    with open(publish / "file.bin", "wb") as f:
        for left in range(size, 0, -MiB):
            chunk = os.urandom(min(left, MiB))
            digest.update(chunk)
            f.write(chunk)
    script = root / "ranges.lua"
    script.write_text(RANGE_SCRIPT.format(size=size, path="/file.bin"))
    with ProcessGroup(root / "logs") as group:
        with console.status("starting origin and edge, warming the edge"):
            origin = group.start("origin", "--publish", str(publish))
            edge = group.start("edge", "--cache", str(root / "cache"), "--parent", origin.url)
            _warm(edge.url, digest.hexdigest())
        nginx, nginx_url = _start_nginx(root, publish)
        try:
            cases = {}
            for case, extra in (("1 MiB ranges", ["-s", str(script)]), ("whole file", [])):
                rows = {"edge": [], "nginx": []}
                for n in range(ROUNDS):
                    for name, url in (("edge", edge.url), ("nginx", nginx_url)):
                        with console.status(f"{case}: {name}, round {n + 1} of {ROUNDS}"):
                            rows[name].append(_wrk(url + "/file.bin", duration, connections, extra))
                cases[case] = {name: _median(runs) for name, runs in rows.items()}
        finally:
            nginx.terminate()
            nginx.wait(10)
    for figures in cases.values():
        figures["ratio"] = round(figures["edge"]["Bps"] / figures["nginx"]["Bps"], 3) if figures["nginx"]["Bps"] else None
    return {
        "size": size,
        "duration_s": duration,
        "connections": connections,
        "rounds": ROUNDS,
        "cases": cases,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _warm(edge: str, expected: str) -> None:
    """One whole GET through the edge: afterwards it holds every piece, checked."""
    with urllib.request.urlopen(edge + "/file.bin", timeout=300) as resp:
        digest = hashlib.sha256()
        while chunk := resp.read(MiB):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise BenchError("the edge served different bytes than were published")
    status = json.loads(urllib.request.urlopen(edge + "/status", timeout=10).read())
    if not all(c["held"] == c["pieces"] for c in status["contents"]):
        raise BenchError("the edge is not warm after a whole GET")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nginx(root: Path, publish: Path) -> tuple[subprocess.Popen, str]:
    (root / "tmp").mkdir()
    port = _free_port()
    conf = root / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(root=root, port=port, publish=publish, user=user))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/file.bin", timeout=1).close()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise BenchError(f"nginx exited: {proc.stderr.read().decode(errors='replace')[-500:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise BenchError("nginx did not answer within 10 s")


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(text: str) -> dict:
    """Requests/s, bytes/s and failures from wrk's report."""
    req = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rate = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", text)
    if not req or not rate:
        raise BenchError(f"cannot read wrk's output:\n{text[-800:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "req_per_s": float(req.group(1)),
        "Bps": float(rate.group(1)) * _UNITS[rate.group(2)],
        "failures": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
    }


def _wrk(url: str, duration: int, connections: int, extra: list[str]) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "60s", *extra, url]  # whole 64 MiB GETs take seconds
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed: {proc.stderr.strip()[-500:]}")
    return parse_wrk(proc.stdout)


def _median(runs: list[dict]) -> dict:
    return {
        "Bps": statistics.median(r["Bps"] for r in runs),
        "req_per_s": statistics.median(r["req_per_s"] for r in runs),
        "failures": sum(r["failures"] for r in runs),
        "runs_Bps": [round(r["Bps"]) for r in runs],
    }


def _report(console: Console, r: dict) -> None:
    mb = 1e6
    table = Table(
        title=f"warm edge vs nginx: {r['size'] // MiB} MiB file, wrk -t1 -c{r['connections']} -d{r['duration_s']}s, median of {r['rounds']}"
    )
    for col in ("case", "edge MB/s", "nginx MB/s", "edge / nginx", "edge req/s", "nginx req/s", "failed requests"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for case, f in r["cases"].items():
        table.add_row(
            case,
            f"{f['edge']['Bps'] / mb:.0f}",
            f"{f['nginx']['Bps'] / mb:.0f}",
            f"{f['ratio']:.2f}" if f["ratio"] is not None else "-",
            f"{f['edge']['req_per_s']:.0f}",
            f"{f['nginx']['req_per_s']:.0f}",
            f"{f['edge']['failures']} / {f['nginx']['failures']}",
        )
    console.print(table)
    ratio = r["cases"]["1 MiB ranges"]["ratio"]
    met = ratio is not None and ratio >= 0.5
    console.print(f"target edge ≥ 0.5 × nginx on 1 MiB ranges: {'met' if met else 'NOT met'} (ratio {ratio})")
