"""``edgeswarm bench serve``: a warm edge against nginx, loaded by wrk in the same run.

One file is published by an origin and pulled through an edge until the edge
holds all of it; nginx (its own config, sendfile on) serves the same file from
disk.  Both run as many workers as there are usable cores: the edge by its
default (``--workers``), nginx by ``worker_processes``, each listening with
SO_REUSEPORT.  wrk loads each with the same connections and duration,
first with random 1 MiB ranges (the same sequence for both: a fixed seed),
then with whole-file GETs.  Measuring both in one run on one machine is the
point: absolute figures from a shared VM mean little, the ratio does.  The
rounds alternate edge/nginx and the median round is reported, because a
2-core VM has noisy neighbours.  Target (issue 13): edge ≥ 0.8 × nginx on
1 MiB ranges and ≥ 1.0 × on whole files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeswarm.errors import EdgeswarmError
from edgeswarm.measure.process import ProcessGroup
from edgeswarm.node.workers import usable_cores
from edgeswarm.roles.config import EdgeConfig

MiB = 1024 * 1024
ROUNDS = 3  # per case and server; a smoke run (duration < 3 s) does one
RANGES, WHOLE = "1 MiB ranges", "whole file"
TARGETS = {RANGES: 0.8, WHOLE: 1.0}  # edge / nginx, each case
STEAL_WARN = 10.0  # % of CPU time taken by the hypervisor during a run, above which figures are flagged as noisy
FILE = "/file.bin"
RANGE_SCRIPT = """\
-- one thread (wrk -t1), a fixed seed: both servers get the same ranges in the same order
math.randomseed(42)
local size = {size}
request = function()
  local first = math.random(0, size - 1048576)
  return wrk.format("GET", "{path}", {{Range = "bytes=" .. first .. "-" .. (first + 1048575){auth}}})
end
"""
NGINX_CONF = """\
daemon off;
worker_processes {workers};
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
  server {{ listen 127.0.0.1:{port} reuseport; root {publish}; }}
}}
"""


class BenchError(EdgeswarmError):
    """The benchmark could not produce figures (as opposed to figures that miss the target)."""


def run(size: int, duration: int, connections: int, json_path: Path | None, protected: bool = False, workers: int | None = None) -> int:
    console = Console()
    problem = _preflight(size, duration, connections)
    if problem:
        console.print(f"[red]bench serve:[/red] {problem}")
        return 2
    root = Path(tempfile.mkdtemp(prefix="edgeswarm-bench-serve-"))
    failed = False
    try:
        result = _measure(console, root, size, duration, connections, protected, workers or usable_cores())
    except (BenchError, RuntimeError, OSError) as exc:
        failed = True
        console.print(f"[red]bench serve failed:[/red] {exc}")
        return 1
    finally:
        _clean(console, root, keep_logs=failed)
    _report(console, result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    bad = [case for case, f in result["cases"].items() if f["failed"]]
    if bad:
        console.print(f"[red]bench serve: requests failed in {', '.join(bad)}[/red]: these figures are not comparable")
        return 1
    return 0


def _preflight(size: int, duration: int, connections: int) -> str | None:
    """Refuse early, with the fix, rather than after writing 64 MiB and starting daemons."""
    missing = [tool for tool in ("nginx", "wrk") if _tool(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (Debian packages): `./dev bench serve` installs them"
    if size < 2 * MiB:
        return "--size must be at least 2MiB (the benchmark asks for 1 MiB ranges)"
    if duration < 1 or connections < 1:
        return "--duration and --connections must be at least 1"
    return None


def _tool(name: str) -> str | None:
    """nginx lives in /usr/sbin, which is not on a normal user's PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _clean(console: Console, root: Path, keep_logs: bool) -> None:
    """Always drop the big files; keep the logs of a failed run, which say why."""
    if not keep_logs:
        shutil.rmtree(root, ignore_errors=True)
        return
    for big in ("publish", "cache"):
        shutil.rmtree(root / big, ignore_errors=True)
    console.print(f"logs kept in {root}")


def _measure(console: Console, root: Path, size: int, duration: int, connections: int, protected: bool, workers: int) -> dict:
    """``protected``: the origin encrypts the file and the edge decrypts it for every request (nginx serves plaintext)."""
    publish = root / "publish"
    with console.status(f"writing a {size // MiB} MiB file of random bytes"):
        digest = _write_file(publish / FILE.lstrip("/"), size)
    rounds = ROUNDS if duration >= 3 else 1
    with ProcessGroup(root / "logs") as group:
        with console.status("starting origin and edge, warming the edge with one whole GET"):
            origin = group.start("origin", "--publish", str(publish), *(("--protect", "*") if protected else ()), name="origin")
            token = _token(publish) if protected else None
            config = EdgeConfig(cache=root / "cache", parent=origin.url, token=token, workers=workers)
            edge = group.start("edge", *config.argv(), name="edge")
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            _warm(edge.url, digest, headers)
        script = root / "ranges.lua"
        script.write_text(RANGE_SCRIPT.format(size=size, path=FILE, auth=f', Authorization = "Bearer {token}"' if token else ""))
        with _nginx(root, publish, workers) as nginx_url:
            servers = {"edge": edge.url + FILE, "nginx": nginx_url + FILE}
            load = ["-t1", f"-c{connections}", f"-d{duration}s", *(("-H", f"Authorization: Bearer {token}") if token else ())]
            cases = {
                case: _case(console, case, servers, rounds, load + extra, duration + 90)
                for case, extra in ((RANGES, ["-s", str(script)]), (WHOLE, []))
            }
    met = not protected and all(
        cases[c]["ratio"] is not None and not cases[c]["failed"] and cases[c]["ratio"] >= t for c, t in TARGETS.items()
    )
    return {
        "size": size,
        "protected": protected,
        "duration_s": duration,
        "connections": connections,
        "rounds": rounds,
        "cases": cases,
        "workers": workers,
        "target": {"ratios": TARGETS, "met": met},
        "steal_pct_max": _max_steal(cases),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
    }


def _write_file(path: Path, size: int) -> str:
    """Random bytes in 1 MiB chunks: incompressible, and never 64 MiB in memory at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for left in range(size, 0, -MiB):
            chunk = os.urandom(min(left, MiB))
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _token(publish: Path) -> str:
    """A token for everything, signed with the key the origin just created: the edge's, and the load's."""
    from edgeswarm.trust import tokens
    from edgeswarm.trust.signing import load_private_key

    return tokens.issue(load_private_key(publish / ".edgeswarm" / "origin.key"), "bench", "/", 24 * 3600)


def _warm(edge: str, expected: str, headers: dict[str, str] | None = None) -> None:
    """One whole GET through the edge; afterwards it must hold every piece, so wrk measures hits only."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(urllib.request.Request(edge + FILE, headers=headers or {}), timeout=300) as resp:
        while chunk := resp.read(MiB):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise BenchError("the edge served different bytes than were published")
    with urllib.request.urlopen(edge + "/status", timeout=10) as resp:
        contents = json.loads(resp.read())["contents"]
    held = [c for c in contents if c["path"].lstrip("/") == FILE.lstrip("/")]
    if not held or held[0]["held"] != held[0]["pieces"]:
        raise BenchError(f"the edge is not warm after a whole GET: {held}")


def _free_port() -> int:
    """nginx cannot listen on port 0 and report it, so pick one the kernel just handed out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _nginx(root: Path, publish: Path, workers: int) -> Iterator[str]:
    """nginx on loopback with a config of our own; stopped on any exit, Ctrl-C included."""
    (root / "tmp").mkdir(exist_ok=True)
    port = _free_port()
    conf = root / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # else workers run as nobody and cannot read a 0700 mkdtemp
    conf.write_text(NGINX_CONF.format(root=root, port=port, publish=publish, user=user, workers=workers))
    with open(root / "nginx-stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [_tool("nginx") or "nginx", "-c", str(conf), "-p", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own group: Ctrl-C reaches us, and killpg reaches its worker too
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(proc, url + FILE, root)
        yield url
    finally:
        _stop(proc)


def _wait_http(proc: subprocess.Popen, url: str, root: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            text = "".join(p.read_text(errors="replace") for p in (root / "nginx-stderr.log", root / "nginx-error.log") if p.exists())
            raise BenchError(f"nginx exited with {proc.returncode}: {text.strip()[-800:]}")
        time.sleep(0.1)
    raise BenchError(f"nginx did not serve {url} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM is nginx's fast shutdown (the master waits for its worker); if that hangs, SIGKILL the whole group.

    The group is killed before the master is reaped, so its id cannot yet belong to anyone else.
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _case(console: Console, case: str, servers: dict[str, str], rounds: int, load: list[str], timeout: float) -> dict:
    """Alternate the servers round by round, so a noisy moment hurts both rather than one."""
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for n in range(rounds):
        for name, url in servers.items():
            with console.status(f"{case}: {name}, round {n + 1} of {rounds} (wrk {' '.join(load)})"):
                before = _cpu_ticks()
                one = _wrk(["wrk", *load, "--latency", "--timeout", "60s", url], timeout)  # a whole 64 MiB GET takes seconds
                runs[name].append({**one, "steal_pct": _steal_pct(before, _cpu_ticks())})
    figures = {name: _median(r) for name, r in runs.items()}
    edge, nginx = figures["edge"]["Bps"], figures["nginx"]["Bps"]
    return {
        **figures,
        "ratio": round(edge / nginx, 3) if nginx else None,
        "failed": any(f["failures"] for f in figures.values()) or not edge or not nginx,
    }


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks from /proc/stat; None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


def _steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """CPU time the hypervisor gave to other guests during a run: on a shared VM it swings figures by 2-10x."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def _max_steal(cases: dict[str, dict]) -> float | None:
    steals = [s for f in cases.values() for name in ("edge", "nginx") for s in f[name]["rounds_steal_pct"] if s is not None]
    return max(steals, default=None)


def _wrk(cmd: list[str], timeout: float) -> dict:
    """One wrk run; one that cannot finish (wrk stuck on a dead server) is an error, not a hang."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")
    return parse_wrk(proc.stdout)


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}  # wrk's are binary
_TIMES = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(text: str) -> dict:
    """Requests/s, bytes/s (wrk's Transfer/sec), failures and latency percentiles (ms) from wrk's report."""
    req = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rate = re.search(r"Transfer/sec:\s+([\d.]+)([KMGTP]?B)", text)
    if not req or not rate:
        raise BenchError(f"cannot read wrk's output:\n{text[-800:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    latency = {f"p{p}_ms": float(v) * _TIMES[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)}
    return {
        "req_per_s": float(req.group(1)),
        "Bps": float(rate.group(1)) * _UNITS[rate.group(2)],
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "failures": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
        **latency,
    }


def _median(runs: list[dict]) -> dict:
    """The median round by throughput, whole (its req/s and latencies belong with its bytes/s)."""
    middle = sorted(runs, key=lambda r: r["Bps"])[len(runs) // 2]
    return {
        **middle,
        "failures": sum(r["failures"] for r in runs),
        "rounds_Bps": [round(r["Bps"]) for r in runs],
        "rounds_steal_pct": [r["steal_pct"] for r in runs],
    }


def _version(cmd: list[str]) -> str:
    """For the JSON record: nginx prints its version on stderr, wrk on stdout (and exits 1)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except OSError:
        return "?"
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if (proc.stdout + proc.stderr).strip() else "?"


def _report(console: Console, r: dict) -> None:
    protected = " protected (the edge decrypts it)" if r.get("protected") else ""
    title = f"{r['size'] / MiB:g} MiB file{protected}, {r['workers']} workers each, wrk -t1 -c{r['connections']} -d{r['duration_s']}s, "
    table = Table(title=title + (f"median of {r['rounds']} rounds" if r["rounds"] > 1 else "one round"))
    table.add_column("case", no_wrap=True)
    for col in ("edge\nMB/s", "nginx\nMB/s", "edge /\nnginx", "edge\nreq/s", "nginx\nreq/s", "failed\nrequests"):
        table.add_column(col, justify="right")
    for case, f in r["cases"].items():
        edge, nginx = f["edge"], f["nginx"]
        table.add_row(
            case,
            f"{edge['Bps'] / 1e6:.0f}",
            f"{nginx['Bps'] / 1e6:.0f}",
            f"{f['ratio']:.2f}" if f["ratio"] is not None else "-",
            f"{edge['req_per_s']:.0f}",
            f"{nginx['req_per_s']:.0f}",
            f"{edge['failures']} / {nginx['failures']}",
            style="red" if f["failed"] else None,
        )
    console.print(table)
    verdict = "met" if r["target"]["met"] else "NOT met"
    why = " - requests failed, so no verdict" if any(f["failed"] for f in r["cases"].values()) else ""
    ratios = {c: f"{f['ratio']:.2f}" if f["ratio"] is not None else "-" for c, f in r["cases"].items()}
    if r.get("protected"):  # nginx sends plaintext with sendfile: the gap is the price of decrypting per request
        ratio = ratios[RANGES]
        console.print(f"protected file: edge / nginx on 1 MiB ranges {ratio}{why} (the target is for plain files; compare a plain run)")
    else:
        wanted = " and ".join(f"≥ {t} × nginx on {c}" for c, t in TARGETS.items())
        got = ", ".join(f"{c} {ratios[c]}" for c in TARGETS)
        console.print(f"target edge {wanted}: {verdict} ({got}){why}")
    if r["steal_pct_max"] is not None and r["steal_pct_max"] >= STEAL_WARN:
        console.print(
            f"[yellow]note:[/yellow] the hypervisor took up to {r['steal_pct_max']:.0f} % of CPU time during a run (steal); "
            "absolute figures are noisy, compare ratios, or rerun on a quieter machine"
        )
