"""``edgeswarm lab live``: viewers follow a live HLS stream that ffmpeg makes during the run.

The deployment is the lab's (an origin, a p2p edge per region, the peers);
the content is not a file made before the run but a stream: when the run
starts, ffmpeg writes a live HLS stream into the origin's directory
(measure/livestream.py), and the lab watches that directory to know when
each segment went live and what its bytes are.  Viewers join at the
scenario's times and play through their gateways until the stream ends.

Reported beside the lab's usual figures: P2P share; edge copies per segment
(what each edge sent its region over the bytes of the segments its viewers
played: 1.0 is one copy of each); latency behind live (a segment's play
start minus its capture start, p50/p95, in seconds and segments), beside
the player's floor (what it would be with instant delivery, given where the
player chose to start: ``floor_latencies``);
stalls and rebuffering; the age of the playlists handed out; and whether
every segment played was ffmpeg's bytes.
"""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import numpy as np

from edgeswarm.measure.lab import Lab, LabError, User, playback
from edgeswarm.measure.livestream import DiskWatch, LiveView, LowLatencyPackager, ffmpeg_command, floor_latencies, latencies, play_live

PLAYLIST = "live/live.m3u8"
TARGETS = {"p2p_share": 0.70, "latency_p95_segments": 3.0, "rebuffering": 0.01}  # issue 14's, with the defaults


class LiveLab(Lab):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.disk = DiskWatch(self.root / "publish", PLAYLIST)
        self.views: dict[str, LiveView] = {}

    def _content(self) -> dict[str, int]:
        return {}  # the stream is made during the run

    def _plan(self) -> None:
        """Join times: uniform in the scenario's window after the stream starts, drawn from the seed."""
        lo, hi = self.s.live.join_s
        for u in self.users:
            u.arrival = self.rng.uniform(lo, hi)

    def _acts(self, http: aiohttp.ClientSession) -> list:
        return [self._stream(), *(self._follow(http, u) for u in self.users)]

    async def _stream(self) -> None:
        lv = self.s.live
        out = self.root / "publish" / "live"
        out.mkdir(parents=True, exist_ok=True)
        bitrate = int(self.s.scaled_Bps(lv.bitrate_kbps) * 8)
        log = open(self.root / "logs" / "ffmpeg.log", "wb")  # noqa: SIM115 - closed below, after the process
        argv = ffmpeg_command(out, lv.duration_s, bitrate, lv.segment_s, part_s=lv.part_s)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log)
        watchers = [asyncio.create_task(self.disk.run())]
        if lv.part_s is not None:
            watchers.append(asyncio.create_task(LowLatencyPackager(out, lv.segment_s, lv.part_s, lv.hold_back_s).run()))
        try:
            code = await asyncio.to_thread(proc.wait)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            await asyncio.sleep(1.0)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if code != 0:
            raise LabError(f"ffmpeg exited with {code}: see {self.root / 'logs' / 'ffmpeg.log'}")

    async def _follow(self, http: aiohttp.ClientSession, u: User) -> None:
        await self._at(u.arrival)
        until = self.t0 + self.s.live.duration_s
        view = await play_live(http, u.node.urls["gateway"], PLAYLIST, until, self.s.live.start_behind, self.s.live.buffer_segments)
        self.views[u.name] = view
        u.watch_s = view.watched_s
        u.view = {
            "startup_s": None if view.startup_s is None else round(view.startup_s, 3),
            "stall_s": round(view.stall_s, 3),
            "stalls": view.stalls,
            "rebuffer_ratio": round(view.stall_s / (view.watched_s + view.stall_s), 4) if view.watched_s else 0.0,
            "bytes": view.bytes,
            "segments": len(view.played),
            "skipped": view.skipped,
            "failures": view.failures,
            "played": [[path, round(start - self.t0, 3)] for path, (_, start, _) in view.played.items()],  # when each file began to play
            **({"error": view.error} if view.error else {}),
        }
        u.done_at = self.now()

    def result(self, network: str) -> dict:
        result = super().result(network)
        result["playback"] = playback(result["users"])
        for name, region in result["regions"].items():
            region["playback"] = playback([row for row in result["users"] if row["region"] == name])
        result["live"] = self._live(result)
        return result

    def _live(self, result: dict) -> dict:
        seg = self.s.live.segment_s
        lats = [x for v in self.views.values() for x in latencies(v, self.disk)]
        floor = [x for v in self.views.values() for x in floor_latencies(v, self.disk)]
        ages = [self.disk.age(text, asked) for v in self.views.values() for asked, text in v.playlists]
        known = [a for a in ages if a is not None]
        wrong = sum(1 for v in self.views.values() for path, (digest, _, _) in v.played.items() if self.disk.digests.get(path) != digest)
        copies = {}
        for name in result["regions"]:
            played = {path for u in self.users if u.region == name for path in self.views.get(u.name, LiveView(0)).played}
            size = sum(self.disk.sizes.get(p, 0) for p in played)
            copies[name] = round(self._edge_sent.get(name, 0) / size, 3) if size else None
        pb = result["playback"] or {}
        live = {
            "segments_published": len(self.disk.appeared) - len(self.disk.parts),
            "parts_published": len(self.disk.parts),
            "files_played": sum(len(v.played) for v in self.views.values()),  # segments, or parts in low-latency mode
            "parts_played": sum(1 for v in self.views.values() for path in v.played if path in self.disk.parts),
            "segments_wrong": wrong,
            "segments_skipped": sum(v.skipped for v in self.views.values()),
            "segment_failures": sum(v.failures for v in self.views.values()),
            "errors": {n: v.error for n, v in self.views.items() if v.error},
            "edge_copies_per_segment": copies,
            "latency_p50_s": _pct(lats, 50),
            "latency_p95_s": _pct(lats, 95),
            "latency_p50_segments": _pct([x / seg for x in lats], 50),
            "latency_p95_segments": _pct([x / seg for x in lats], 95),
            "latency_floor_p50_segments": _pct([x / seg for x in floor], 50),  # the player's own start choice, instant delivery
            "latency_floor_p95_segments": _pct([x / seg for x in floor], 95),
            "playlists_handed": len(ages),
            "playlists_never_on_disk": len(ages) - len(known),
            "playlist_age_p95_s": _pct(known, 95),
            "playlist_age_max_s": round(max(known), 3) if known else None,
            "rebuffering": pb.get("rebuffering"),
            "stalls": pb.get("stalls"),
        }
        measured = {
            "p2p_share": result["p2p_share"],
            "latency_p95_segments": live["latency_p95_segments"],
            "rebuffering": live["rebuffering"],
        }
        live["targets"] = {
            k: {
                "target": t,
                "measured": measured[k],
                "met": measured[k] is not None and (measured[k] >= t if k == "p2p_share" else measured[k] <= t),
            }
            for k, t in TARGETS.items()
        }
        if wrong:
            raise LabError(f"{wrong} segments played differ from the bytes ffmpeg wrote")
        return live


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
