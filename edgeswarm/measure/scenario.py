"""Lab scenarios: what a lab run deploys and what its users do, from a YAML file.

A scenario names its regions and their peers, the tier table the peers' access
links are drawn from, the content, the arrival process, how viewers watch and
how peers churn.  Shipped scenarios live beside this module
(``scenarios/*.yaml``) and are found by name; any other path is read as a file.

Rates in the tier tables are those of 2007 access links (kbit/s).  A lab run
multiplies every rate - tiers, video bitrate, edge cap - by ``rate_scale`` and
keeps sizes and durations as written, so the ratios the paper's savings depend
on (upload over bitrate, edge over demand) are kept while a run takes a minute
rather than hours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edgeswarm.errors import EdgeswarmError
from edgeswarm.measure.livestream import FPS
from edgeswarm.protocol.units import parse_rate, parse_size
from edgeswarm.protocol.yamlfile import YamlFileError, read_yaml
from edgeswarm.sim import tiers

SHIPPED = Path(__file__).with_name("scenarios")
WORKLOADS = ("download", "vod", "live")  # what a scenario's users do: fetch a file, watch a video, or follow a live stream


class ScenarioError(EdgeswarmError, ValueError):
    pass


@dataclass
class Region:
    name: str
    peers: int
    latency_ms: float = 0.0  # one-way, per host; --netns only


@dataclass
class Churn:
    """Peers leave mid-download and come back to resume it (their pieces kept)."""

    leave: float = 0.0  # fraction of peers that leave once
    between_s: tuple[float, float] = (2.0, 6.0)  # they leave at a uniform time in this window after their arrival
    away_s: float = 3.0  # and rejoin this long after leaving
    crash: bool = False  # SIGKILL (a crash) rather than SIGTERM (a clean quit)


@dataclass
class Vod:
    bitrate_kbps: float = 400.0  # before rate_scale
    duration_s: float = 20.0  # every video's length
    videos: int = 3
    zipf: float = 0.8
    quit_prob: float = 0.3  # a quitter stops at a uniform point of the video
    startup_s: float = 2.0  # playback starts with this much video buffered
    resume_s: float = 1.0  # and resumes after a stall with this much
    max_buffer_s: float = 8.0  # the player stops reading ahead of this much
    leave_after_watch: bool = False  # stop the viewer's daemon when it stops watching (the model's viewer)


@dataclass
class Live:
    """A live HLS stream made by ffmpeg during the run (measure/livelab.py)."""

    bitrate_kbps: float = 200.0  # before rate_scale
    duration_s: float = 180.0  # how long ffmpeg streams; viewers watch until it ends
    segment_s: float = 2.0
    join_s: tuple[float, float] = (5.0, 60.0)  # viewers join at uniform times in this window after the stream starts
    start_behind: int = 2  # the player starts this many segments from the live edge (without parts)
    buffer_segments: int = 1  # and buffers at most this many ahead of playback
    part_s: float | None = None  # LL-HLS: the stream is also cut in parts this long, and players play them
    part_hold_back_s: float | None = None  # PART-HOLD-BACK: how far from the live edge a low-latency player stays (3 parts)

    @property
    def hold_back_s(self) -> float:
        return self.part_hold_back_s or 3 * (self.part_s or 0.0)


@dataclass
class Scenario:
    name: str
    description: str = ""
    kind: str = "download"
    tiers: str = "att"
    rate_scale: float = 16.0
    edge_upload: str | None = None  # after scaling: a rate like 4MB/s, or none for an unconstrained CDN
    locality: str = "strict"
    regions: list[Region] = field(default_factory=lambda: [Region("east", 12), Region("west", 12)])
    size: str = "8MiB"  # the download's size (kind download)
    arrival: str = "burst"  # burst: all at once; poisson: at `rate` arrivals per second
    rate: float = 1.0
    seed: int = 1
    timeout_s: float = 240.0
    vod: Vod = field(default_factory=Vod)
    live: Live = field(default_factory=Live)
    churn: Churn = field(default_factory=Churn)
    faults: list[dict] = field(default_factory=list)  # a chaos run's schedule (chaos.py)
    promote_upload: str | None = None  # the edges' --promote-upload (a rate at lab scale): promoted peers relay; none: never
    promote_uptime: float = 300.0  # the edges' --promote-uptime
    promote_regions: list[str] | None = None  # only these regions' edges promote (the others are the same run without it); none: all
    linger_s: float = 0.0  # after every user is done, the run goes on this long: peers only refresh (the edges' steady announce load)
    announce_interval: float | None = None  # the edges' --announce-interval; none: the default (promotion measures upload at announces)
    unreachable: float = 0.0  # share of each region's peers that accept no connections (--netns: a firewall): relayed by the edge

    @property
    def peers(self) -> int:
        return sum(r.peers for r in self.regions)

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)

    @property
    def promote_upload_Bps(self) -> int | None:
        return parse_rate(self.promote_upload) if self.promote_upload else None

    @property
    def edge_upload_Bps(self) -> int | None:
        return parse_rate(self.edge_upload) if self.edge_upload else None

    def scaled_Bps(self, kbps: float) -> float:
        """A 2007 rate in kbit/s as the lab runs it, in bytes/s."""
        return kbps * 1000 * self.rate_scale / 8


def load(name_or_path: str) -> Scenario:
    path = Path(name_or_path)
    if not path.exists():
        path = SHIPPED / f"{name_or_path}.yaml"
        if not path.exists():
            raise ScenarioError(f"no scenario {name_or_path!r}: not a file, and not one of {', '.join(shipped())}")
    try:
        doc = read_yaml(path, "scenario")
    except YamlFileError as exc:
        raise ScenarioError(str(exc)) from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping of settings")
    return from_doc(doc, str(path))


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def from_doc(doc: dict, where: str = "<scenario>") -> Scenario:
    doc = dict(doc)
    doc.setdefault("name", Path(where).stem)
    try:
        regions = [Region(**r) for r in doc.pop("regions", [])] or None
        vod = Vod(**doc.pop("vod", None) or {})
        live = doc.pop("live", None) or {}
        if "join_s" in live:
            live["join_s"] = tuple(live["join_s"])
        churn = doc.pop("churn", None) or {}
        if "between_s" in churn:
            churn["between_s"] = tuple(churn["between_s"])
        scenario = Scenario(**doc, vod=vod, live=Live(**live), churn=Churn(**churn))
    except TypeError as exc:
        raise ScenarioError(f"{where}: {_unknown(exc)}") from None
    if regions:
        scenario.regions = regions
    return validate(scenario, where)


def override(scenario: Scenario, **changes) -> Scenario:
    """Command-line flags over the file: only those given (not None)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "peers" in changes:
        n = changes.pop("peers")
        scenario.regions = [dataclasses.replace(r, peers=n) for r in scenario.regions]
    if "region_count" in changes:
        n = changes.pop("region_count")
        template = scenario.regions[0]
        scenario.regions = [dataclasses.replace(template, name=f"r{i + 1}") for i in range(n)]
    return validate(dataclasses.replace(scenario, **changes), "command line")


def validate(s: Scenario, where: str) -> Scenario:
    try:
        return _check(s, where)
    except TypeError:  # a string where a number belongs, a list where a name does
        raise ScenarioError(f"{where}: a setting has the wrong type; see the shipped scenarios for the form") from None


def _check(s: Scenario, where: str) -> Scenario:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ScenarioError(f"{where}: {message}")

    need(s.kind in WORKLOADS, f"kind must be one of {', '.join(WORKLOADS)}, not {s.kind!r}")
    try:
        tiers.table(s.tiers)
        s.size_bytes  # noqa: B018 - parsed for its error
        s.edge_upload_Bps  # noqa: B018
        s.promote_upload_Bps  # noqa: B018
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    need(s.size_bytes > 0, "size must be positive")
    need(s.rate_scale > 0, "rate_scale must be positive")
    need(s.locality in ("strict", "prefer"), "locality is strict or prefer")
    need(s.arrival in ("burst", "poisson"), "arrival is burst or poisson")
    need(s.rate > 0, "rate (arrivals per second) must be positive")
    need(s.timeout_s > 0, "timeout_s must be positive")
    need(1 <= len(s.regions) <= 200, "between 1 and 200 regions")
    need(len({r.name for r in s.regions}) == len(s.regions), "region names must differ")
    for r in s.regions:
        need(isinstance(r.peers, int) and 1 <= r.peers <= 250, f"region {r.name}: peers must be 1..250")
        need(r.latency_ms >= 0, f"region {r.name}: latency_ms must not be negative")
    v = s.vod
    need(v.bitrate_kbps > 0 and v.duration_s > 0 and v.videos >= 1, "vod: bitrate_kbps, duration_s and videos must be positive")
    need(0 <= v.quit_prob <= 1, "vod: quit_prob is a probability")
    need(0 < v.startup_s <= v.max_buffer_s and 0 < v.resume_s <= v.max_buffer_s, "vod: 0 < startup_s, resume_s <= max_buffer_s")
    lv = s.live
    need(lv.bitrate_kbps > 0 and lv.duration_s > 0 and lv.segment_s > 0, "live: bitrate_kbps, duration_s and segment_s must be positive")
    need(0 <= lv.join_s[0] <= lv.join_s[1] < lv.duration_s, "live: join_s is [from, to] within the stream")
    need(lv.start_behind >= 1 and lv.buffer_segments >= 1, "live: start_behind and buffer_segments are at least 1")
    if lv.part_s is not None:
        per, frames = lv.segment_s / lv.part_s, lv.part_s * FPS
        need(per >= 2 and per == round(per) and frames == round(frames), f"live: part_s divides segment_s and is whole frames at {FPS} fps")
        need(lv.hold_back_s >= 2 * lv.part_s, "live: part_hold_back_s is at least two parts (RFC 8216bis)")
    need(0 <= s.unreachable <= 1, "unreachable is a share of the peers, 0..1")
    need(s.announce_interval is None or s.announce_interval > 0, "announce_interval must be positive")
    names = {r.name for r in s.regions}
    need(s.promote_regions is None or set(s.promote_regions) <= names, "promote_regions must name regions of the scenario")
    need(s.linger_s >= 0, "linger_s must not be negative")
    c = s.churn
    need(0 <= c.leave <= 1, "churn: leave is a fraction")
    need(0 <= c.between_s[0] <= c.between_s[1] and c.away_s >= 0, "churn: between_s is [from, to], away_s >= 0")
    if s.faults:
        from edgeswarm.measure import chaos

        need(s.kind == "download", "faults need kind: download")
        try:
            chaos.parse_faults(s.faults, s)
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    return s


def _unknown(exc: TypeError) -> str:
    text = str(exc)
    if "unexpected keyword argument" in text:
        return "unknown setting " + text.split("argument", 1)[1].strip()
    return text
