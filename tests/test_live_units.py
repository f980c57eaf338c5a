"""Live streaming's pieces without daemons: playlist parsing, hold times, the origin's live watcher, the engine's live mode."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.measure import livestream
from edgeswarm.measure.livestream import DiskWatch, LiveView, ffmpeg_command, floor_latencies, latencies
from edgeswarm.policy import engine, live
from edgeswarm.policy.engine import Engine
from edgeswarm.policy.live import LiveWindows
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.protocol import hls
from edgeswarm.protocol.manifest import MAX_FILE, SEGMENT_PIECE, Manifest, SignedManifest
from edgeswarm.roles.livewatch import MAX_PLAYLIST, LiveWatcher
from edgeswarm.roles.livewindow import LiveFollow
from edgeswarm.roles.peer import _from_edge_only
from edgeswarm.store import catalog as catalog_module
from edgeswarm.store.catalog import Catalog
from edgeswarm.store.piecestore import PieceStore
from edgeswarm.trust.signing import load_or_create_private_key

PLAYLIST = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:7
#EXTINF:2.000000,
seg00007.ts
#EXTINF:1.960000,
seg00008.ts
#EXTINF:2.0,
http://elsewhere.example/seg.ts
#EXTINF:2.0,
../../../escape.ts
#EXTINF:2.0,
seg00011.ts
"""


def test_a_media_playlist_names_its_segments_beside_it():
    pl = hls.parse(PLAYLIST, "live/ch1/index.m3u8")
    assert pl.target_duration == 2 and pl.media_sequence == 7 and not pl.ended
    assert [(s.sequence, s.path, s.duration) for s in pl.segments] == [
        (7, "live/ch1/seg00007.ts", 2.0),
        (8, "live/ch1/seg00008.ts", 1.96),
        (11, "live/ch1/seg00011.ts", 2.0),
    ]
    assert pl.last_sequence == 11, "absolute URLs and paths out of the tree are not ours, but keep their numbers"
    assert hls.parse(PLAYLIST + "#EXT-X-ENDLIST\n", "a.m3u8").ended


@pytest.mark.parametrize(
    ("text", "message"), [("", "EXTM3U"), ("<html>", "EXTM3U"), ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n", "MEDIA-SEQUENCE")]
)
def test_what_is_not_a_media_playlist(text, message):
    with pytest.raises(hls.PlaylistError, match=message):
        hls.parse(text, "a.m3u8")


def test_playlists_are_held_briefly_and_other_files_as_configured():
    assert live.revalidate_after("live/index.M3U8", 1.0) == live.PLAYLIST_REVALIDATE < 1.0
    assert live.revalidate_after("live/index.m3u8", 0.1) == 0.1, "a shorter --revalidate still wins"
    assert live.revalidate_after("live/seg00001.ts", 1.0) == 1.0
    assert live.LIVE_POLL + 2 * live.PLAYLIST_REVALIDATE < 2.0, "origin poll and two hops stay under one 2 s segment"


def test_ffmpeg_writes_two_second_segments_with_temp_files(tmp_path):
    argv = ffmpeg_command(tmp_path, 10, 400_000)
    assert argv[argv.index("-hls_time") + 1] == "2" and "delete_segments+temp_file" in argv
    assert argv[-1] == str(tmp_path / "live.m3u8")


def test_with_parts_ffmpeg_writes_the_stream_twice_cut_at_the_same_key_frames(tmp_path):
    argv = ffmpeg_command(tmp_path, 10, 400_000, part_s=0.5)
    assert argv[argv.index("-g") + 1] == "12", "a key frame at every half-second part, at 24 fps"
    segments, parts = argv[-1].split("|")
    assert "hls_time=2:" in segments and segments.endswith(str(tmp_path / "segments.m3u8"))
    assert "hls_time=0.5:" in parts and "hls_list_size=24:" in parts and parts.endswith(str(tmp_path / "parts.m3u8"))


LL_PLAYLIST = """#EXTM3U
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=12,PART-HOLD-BACK=1.500
#EXT-X-PART-INF:PART-TARGET=0.5
#EXT-X-MEDIA-SEQUENCE:3
#EXTINF:2.0,
seg00003.ts
#EXT-X-PART:DURATION=0.5,URI="part00016.ts",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.5,URI="part00017.ts"
#EXT-X-PART:DURATION=0.5,URI="part00018.ts",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.5,URI="part00019.ts",INDEPENDENT=YES
#EXTINF:2.0,
seg00004.ts
#EXT-X-PART:DURATION=0.5,URI="part00020.ts",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.48,URI="http://elsewhere/part.ts"
"""


def test_segment_uris_are_percent_decoded_as_players_resolve_them():
    """`seg%201.ts` names the file `seg 1.ts`: taken literally, its segment was published after its playlist and
    gateways prefetched a file of that name (an adversarial session).  A URI that decodes out of the tree, or is no
    valid encoding, names nothing."""
    text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + "".join(
        f"#EXTINF:2.0,\n{uri}\n" for uri in ("seg%200.ts", "caf%C3%A9.ts", "%2e%2e/%2e%2e/x.ts", "bad%zz.ts", "bad%ff.ts")
    )
    assert hls.parse(text, "live/index.m3u8").media_paths == ["live/seg 0.ts", "live/café.ts"]


def test_a_low_latency_playlist_names_the_parts_of_its_newest_segments():
    pl = hls.parse(LL_PLAYLIST, "live/live.m3u8")
    assert pl.part_target == 0.5 and pl.part_hold_back == 1.5 and pl.last_sequence == 4
    assert [(p.sequence, p.index, p.path) for p in pl.parts] == [
        (4, 0, "live/part00016.ts"),
        (4, 1, "live/part00017.ts"),
        (4, 2, "live/part00018.ts"),
        (4, 3, "live/part00019.ts"),
        (5, 0, "live/part00020.ts"),
    ], "parts belong to the segment that follows them; one out of the tree is skipped"
    assert pl.media_paths[-1] == "live/part00020.ts" and "live/seg00004.ts" in pl.media_paths
    parts, reached = pl.newest_parts(1.5)
    assert reached and [p.path for p in parts] == ["live/part00018.ts", "live/part00019.ts", "live/part00020.ts"]
    parts, reached = pl.newest_parts(10.0)
    assert not reached and parts == list(pl.parts), "too few parts for the span: all of them"
    with pytest.raises(hls.PlaylistError, match="EXT-X-PART"):
        hls.parse('#EXTM3U\n#EXT-X-PART:URI="a.ts"\n', "a.m3u8")


def test_the_packager_lists_parts_of_the_newest_whole_segments_and_of_the_one_being_made():
    segments = hls.parse(_playlist(0, 4), "segments.m3u8")
    parts = hls.parse("#EXTM3U\n#EXT-X-TARGETDURATION:1\n" + "".join(f"#EXTINF:0.5,\npart{i:05d}.ts\n" for i in range(22)), "parts.m3u8")
    pl = hls.parse(hls.low_latency(segments, parts, 4, 1.5), "live.m3u8")
    assert [s.path for s in pl.segments] == [f"seg{i:05d}.ts" for i in range(5)]
    assert {p.sequence for p in pl.parts} == {2, 3, 4, 5}, "three whole segments keep their parts, then the one being made"
    assert [p.path for p in pl.parts if p.sequence == 5] == ["part00020.ts", "part00021.ts"]
    assert pl.part_hold_back == 1.5 and pl.part_target == 0.5
    ended = hls.parse(hls.low_latency(hls.parse(_playlist(0, 4) + "#EXT-X-ENDLIST\n", "s.m3u8"), parts, 4, 1.5), "live.m3u8")
    assert ended.ended and {p.sequence for p in ended.parts} == {2, 3, 4}, "an ended stream has no segment being made"


def test_a_low_latency_player_starts_its_hold_back_from_the_live_edge_and_plays_parts():
    pl = hls.parse(LL_PLAYLIST, "live/live.m3u8")
    assert livestream._start(pl, 2) == (4, 2), "1.5 s back from the end of part 0 of segment 5: part 2 of segment 4"
    assert livestream._file_at(pl, 4, 2).path == "live/part00018.ts"
    assert livestream._past_parts(pl, 4, 4) and not livestream._past_parts(pl, 4, 3)
    assert livestream._file_at(pl, 5, 1) is None, "not out yet"
    whole = livestream._file_at(pl, 3, 2)
    assert (whole.path, whole.offset, whole.duration, whole.part) == ("live/seg00003.ts", 1.0, 1.0, False), (
        "behind the parts: the rest of the segment"
    )
    plain = hls.parse(PLAYLIST, "live/ch1/index.m3u8")
    assert livestream._start(plain, 2) == (10, 0) and livestream._file_at(plain, 11, 0).path == "live/ch1/seg00011.ts"


def _catalog(tmp_path):
    root = tmp_path / "pub"
    (root / "live").mkdir(parents=True)
    return Catalog(root, tmp_path / "state.json", load_or_create_private_key(tmp_path / "key.pem"))


def _write(path, text: str | bytes) -> None:
    """As ffmpeg does with temp_file: write NAME.tmp, then rename it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def _playlist(first: int, last: int) -> str:
    body = "".join(f"#EXTINF:2.0,\nseg{i:05d}.ts\n" for i in range(first, last + 1))
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n{body}"


async def test_the_watcher_publishes_new_segments_with_their_playlist_and_never_a_partial_file(tmp_path):
    catalog = _catalog(tmp_path)
    root = catalog.root / "live"
    _write(root / "seg00000.ts", b"a" * 1000)
    _write(root / "live.m3u8", _playlist(0, 0))
    catalog.apply(catalog.scan_changes({}))  # the full scan finds the stream first
    assert set(catalog.by_path) == {"live/seg00000.ts", "live/live.m3u8"}
    watcher = LiveWatcher(catalog)
    await watcher.check()
    assert watcher.published == 0, "nothing changed"

    (root / "seg00002.ts.tmp").write_bytes(b"half")  # ffmpeg is still writing the next one
    _write(root / "seg00001.ts", b"b" * 1000)
    _write(root / "live.m3u8", _playlist(0, 1))
    old = catalog.by_path["live/live.m3u8"].signed
    await watcher.check()
    assert watcher.published == 1
    assert "live/seg00001.ts" in catalog.by_path and not any(p.endswith(".tmp") for p in catalog.by_path)
    assert catalog.by_path["live/seg00001.ts"].signed.manifest.piece_size == SEGMENT_PIECE, "a segment spreads in small pieces"
    new = catalog.by_path["live/live.m3u8"].signed
    assert new.content_id != old.content_id and new.manifest.modified > old.manifest.modified, "a newer version moves forward"
    assert not any(p.endswith(".tmp") for p in catalog.scan_changes(dict(catalog.by_path))), "nor does the full scan publish one"


async def test_a_playlist_rewritten_while_it_is_published_waits_for_the_next_poll(tmp_path):
    catalog = _catalog(tmp_path)
    root = catalog.root / "live"
    _write(root / "seg00000.ts", b"a" * 100)
    _write(root / "live.m3u8", _playlist(0, 0))
    catalog.apply(catalog.scan_changes({}))
    watcher = LiveWatcher(catalog)
    _write(root / "seg00001.ts", b"b" * 100)
    _write(root / "live.m3u8", _playlist(0, 1))
    changed = watcher.changed_playlists()
    read_too_early = watcher._changes(changed, dict(catalog.by_path))
    assert "live/live.m3u8" in read_too_early
    # the same, but the encoder rewrites the playlist between the read and the hashing: it names a segment not yet published
    original = catalog.changes_for

    def rewrite_first(rels, known):
        _write(root / "seg00002.ts", b"c" * 100)
        _write(root / "live.m3u8", _playlist(0, 2))
        return original(rels, known)

    catalog.changes_for = rewrite_first
    changes = watcher._changes(changed, dict(catalog.by_path))
    assert "live/live.m3u8" not in changes, "published only with the segments it names, at the next poll"


def test_the_disk_watch_ages_a_handed_out_playlist(tmp_path):
    disk = DiskWatch(tmp_path, "live.m3u8")
    disk.versions = [(10.0, "v1"), (12.0, "v2")]
    assert disk.age("v2", 20.0) == 0.0, "the newest version is never outdated"
    assert disk.age("v1", 11.0) == 0.0 and disk.age("v1", 13.5) == 1.5
    assert disk.age("forged", 13.0) is None


def test_the_latency_floor_is_the_players_start_choice_for_every_segment_it_played(tmp_path):
    """The player chose segment 4 at t=21 when segment 5 had appeared at t=20.5: 4 was captured from 17 on (appeared at
    19, 2 s long), so with instant delivery and no stall every segment plays 4 s behind its capture."""
    disk = DiskWatch(tmp_path, "live.m3u8")
    disk.appeared = {"s4": 19.0, "s5": 20.5}
    view = LiveView(joined=20.9, first=("s4", 21.0, 0.0), played={"s4": ("h", 21.3, 0.0), "s5": ("h", 23.3, 0.0), "s6": ("h", 26.0, 0.0)})
    assert floor_latencies(view, disk) == [4.0, 4.0]  # segment 6 never appeared on disk: neither figure counts it
    assert latencies(view, disk) == pytest.approx([4.3, 4.8])
    assert floor_latencies(LiveView(joined=0.0), disk) == []  # never started


def _engine(count: int) -> Engine:
    host = type("Host", (), {"spawn": lambda s, w: None, "changed": lambda s: None, "gone": lambda s: False})()
    return Engine(host, count, (), seed="me", deadline=2.0, edges=["http://edge:8000"], ranking=SourceRanking(), clock=lambda: 0.0)


def test_a_live_segment_is_left_to_the_swarm_and_seeding_not_to_the_tail_rule():
    whole, seg = _engine(3), _engine(3)
    whole.want_whole()
    seg.want_live()
    assert whole.tail() and whole.fallback(0.0), "a small file without neighbours: the edge fills it"
    assert not seg.tail() and not seg.fallback(0.0), "a live segment waits for /seed and the region"
    seg.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert seg.fallback(engine.FALLBACK_AFTER + 1), "known peers that deliver nothing: the edge takes over"


def test_a_blocked_live_reader_gets_the_edge_sooner_than_a_files_reader():
    """The edge races a peer that is late with an urgent live piece after LIVE_DEADLINE, not the file's 2 s."""
    seg = _engine(3)
    seg.want_live()
    seg.add_neighbour("b", "http://10.0.0.2:7000", True)
    seg.picker.peer_has("b", {0, 1, 2})
    seg.reading(0)
    assert seg.picker.pick("b", 0.0) == 0  # the neighbour takes the urgent piece
    seg.picker.start("b", 0, 0.0)
    assert seg.picker.pick_urgent("edge#0", engine.LIVE_DEADLINE - 0.1, edge=True, seeding=True) is None
    assert seg.picker.pick_urgent("edge#0", engine.LIVE_DEADLINE + 0.1, edge=True, seeding=True) == 0
    file = _engine(3)
    file.want_whole()
    file.add_neighbour("b", "http://10.0.0.2:7000", True)
    file.picker.peer_has("b", {0, 1, 2})
    file.reading(0)
    assert file.picker.pick("b", 0.0) == 0
    file.picker.start("b", 0, 0.0)
    assert file.picker.pick_urgent("edge#0", engine.LIVE_DEADLINE + 0.1, edge=True, seeding=True) is None


def test_a_playlist_is_kept_as_signed_and_its_last_versions_stay_servable(tmp_path):
    """An edge handed version N just before the rewrite still gets N's bytes (the file now holds N+1)."""
    catalog = _catalog(tmp_path)
    root = catalog.root / "live"
    _write(root / "seg00000.ts", b"0")
    _write(root / "live.m3u8", _playlist(0, 0))
    catalog.apply(catalog.scan_changes({}))
    first = catalog.by_path["live/live.m3u8"]
    assert first.data == _playlist(0, 0).encode() and first.signed.manifest.check_piece(0, first.data)
    for last in range(1, 12):
        _write(root / f"seg{last:05d}.ts", b"s")  # a version names segments that are there (else it is held back)
        _write(root / "live.m3u8", _playlist(0, last))
        catalog.apply(catalog.changes_for(["live/live.m3u8"], dict(catalog.by_path)))
    assert first.signed.content_id not in catalog.superseded, "only the last few versions are kept"
    kept = list(catalog.superseded.values())
    assert len(kept) == 8 and all(e.signed.manifest.check_piece(0, e.data) for e in kept)
    assert catalog.by_path["live/live.m3u8"].signed.content_id not in catalog.superseded


async def test_the_watcher_publishes_the_newest_segments_of_a_playlist_over_a_megabyte(tmp_path):
    """An event or DVR playlist grows past MAX_PLAYLIST: read from its start, its newest segments (at its end) waited
    for the next full scan, and players got 404s for them meanwhile (an adversarial session: 51 in 20 s)."""
    catalog = _catalog(tmp_path)
    root = catalog.root / "live"
    old = "".join(f"#EXTINF:2.0,\nold{i:05d}.ts\n" for i in range(3))
    for i in range(3):
        _write(root / f"old{i:05d}.ts", b"o" * 100)
    _write(root / "live.m3u8", f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n{old}")
    catalog.apply(catalog.scan_changes({}))
    watcher = LiveWatcher(catalog)
    padding = "".join(f"#EXT-X-PROGRAM-DATE-TIME:2026-12-05T00:00:{i % 60:02d}.000Z\n" for i in range(30_000))  # 1.4 MB
    _write(root / "new00000.ts", b"n" * 100)
    _write(root / "live.m3u8", f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n{old}{padding}#EXTINF:2.0,\nnew00000.ts\n")
    assert (root / "live.m3u8").stat().st_size > MAX_PLAYLIST
    await watcher.check()
    assert "live/new00000.ts" in catalog.by_path


def test_live_windows_drop_what_fell_behind_and_the_orphans_of_an_earlier_run():
    """A node keeps a live playlist's segments until they are RETIRE_AFTER segments behind its window; what an earlier
    run held (named by no version this run sees) goes once the window has left its date behind."""
    w = LiveWindows(retire_after=2)
    assert not w.seen("live/a.m3u8")
    held = [("live/seg00001.ts", 100), ("live/seg00002.ts", 102), ("other/seg00001.ts", 100), ("live/poster.jpg", 0)]
    w.found("live/a.m3u8", {"live/seg00010.ts"}, held, 10)
    assert w.orphaned("live/a.m3u8")
    assert w.named("live/a.m3u8", [(10, "live/seg00010.ts")], 10) == []
    assert w.behind("live/a.m3u8", oldest=105, target=2.0) == ["live/seg00001.ts"]  # 100 < 105 - 4; 102 is not yet
    assert w.behind("live/a.m3u8", oldest=120, target=2.0) == ["live/seg00002.ts"]  # another folder's, a poster: never
    assert not w.orphaned("live/a.m3u8") and w.seen("live/a.m3u8")
    for first in range(11, 14):
        gone = w.named("live/a.m3u8", [(first, f"live/seg{first:05d}.ts")], first)
    assert gone == ["live/seg00010.ts"]  # 10 < 13 - 2: a player far behind had two segments' time to finish it


def test_live_windows_look_for_orphans_again_as_the_window_moves():
    """A segment stored while no version read here named it (fetched by peers by id, in a viewer's gap) was never named
    and never dropped: an edge kept a fifth of a stream for good (an adversarial soak).  The look for orphans is taken
    again each time the window has moved ``retire_after`` segments on."""
    w = LiveWindows(retire_after=2)
    assert w.due("live/a.m3u8", 10)
    w.found("live/a.m3u8", {"live/seg00010.ts"}, [], 10)
    assert not w.due("live/a.m3u8", 11) and w.due("live/a.m3u8", 12) and w.due("live/a.m3u8", 3)  # a restarted stream
    w.found("live/a.m3u8", {"live/seg00012.ts"}, [("live/seg00011.ts", 102), ("live/seg00012.ts", 104)], 12)
    assert w.behind("live/a.m3u8", oldest=104, target=2.0) == []  # 102 is not yet 2 segments behind
    assert w.behind("live/a.m3u8", oldest=108, target=2.0) == ["live/seg00011.ts"]
    w.asked("live/a.m3u8", 0.0)
    w.idle(1000.0)
    assert w.due("live/a.m3u8", 13)  # forgotten with its window


def _store_of(tmp_path):
    """A piece store, and a function that puts one whole one-piece content in it (path, bytes, modified)."""
    key = Ed25519PrivateKey.generate()
    store = PieceStore(tmp_path / "cache", key.public_key(), None)

    def held(path: str, data: bytes, modified: int) -> SignedManifest:
        m = Manifest(path, len(data), "video/mp2t", SEGMENT_PIECE, (hashlib.sha256(data).hexdigest(),), modified)
        signed = SignedManifest.sign(m, key)
        store.put_manifest(signed, signed.to_json())
        store.put_piece(signed.content_id, 0, data)
        return signed

    return store, held


def test_a_playlist_that_ended_drops_nothing(tmp_path):
    """Video on demand (#EXT-X-ENDLIST) never slides: no segment leaves its window, and the other renditions of its
    folder, encoded at other times, are no one's orphans."""
    store, held = _store_of(tmp_path)

    held("vod/720p_00000.ts", b"a" * 100, 1_000)  # another rendition, encoded long before
    held("vod/360p_00000.ts", b"b" * 100, 5_000)
    vod = held("vod/360p.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n360p_00000.ts\n#EXT-X-ENDLIST\n", 5_001)
    follow = LiveFollow()
    playlist, gone = follow.served(store, vod)
    assert playlist is not None and playlist.ended and gone == []
    live = held("vod/live.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n360p_00000.ts\n", 5_002)
    assert follow.served(store, live)[1] == ["vod/720p_00000.ts"]  # the control: a live one's folder has that orphan


def test_a_live_playlist_no_one_asks_for_gives_its_window_up():
    """Its viewers left or the stream ended: the last window was kept for good (about 9 segments a stream ever watched)."""
    w = LiveWindows(retire_after=2)
    w.asked("a.m3u8", 0.0)
    w.named("a.m3u8", [(5, "a5.ts"), (6, "a6.ts")], 5)
    w.asked("b.m3u8", 100.0)
    w.named("b.m3u8", [(1, "b1.ts")], 1)
    assert w.idle(60.0, after=120.0) == []
    assert sorted(w.idle(125.0, after=120.0)) == ["a5.ts", "a6.ts"]  # b was asked for 25 s ago
    assert not w.seen("a.m3u8") and w.seen("b.m3u8")
    assert w.idle(130.0, after=120.0) == []  # looked at most every 12 s
    assert w.idle(300.0, after=120.0) == ["b1.ts"]


def test_a_playlist_drops_only_segments_of_its_own_folder_and_a_repeated_one_once_its_last_naming_left():
    """A user's playlist naming ../../films/big.bin made an edge drop that film each time its window moved; a slate
    repeated at every sequence was dropped while the window still named it (an adversarial session)."""
    w = LiveWindows(retire_after=1)
    for first in range(5):
        assert w.named("users/m/x.m3u8", [(first, "films/big.bin"), (first, "users/m/notes.txt")], first) == []
    for first in range(3, 12):
        gone = w.named("live/a.m3u8", [(first, "live/slate.ts"), (first, f"live/s{first}.ts")], first)
        assert "live/slate.ts" not in gone, first
    assert gone == ["live/s9.ts"]
    assert w.named("live/a.m3u8", [(20, "live/s20.ts")], 20) == ["live/s10.ts", "live/s11.ts", "live/slate.ts"]


def test_a_recording_beside_a_live_stream_is_no_orphan_of_it(tmp_path):
    """The live playlist's folder also holds a finished recording, still published: its segments, named by its own
    playlist, were dropped as leftovers of an earlier run (an adversarial session)."""
    store, held = _store_of(tmp_path)

    held("ch/rec_00000.ts", b"r" * 100, 1_000)
    held("ch/rec.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nrec_00000.ts\n#EXT-X-ENDLIST\n", 1_001)
    held("ch/old_00000.ts", b"o" * 100, 1_000)  # an earlier run's live segment: named by no playlist
    held("ch/live_00050.ts", b"l" * 100, 5_000)
    live = held("ch/live.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:50\n#EXTINF:2.0,\nlive_00050.ts\n", 5_001)
    assert LiveFollow().served(store, live)[1] == ["ch/old_00000.ts"]


def test_a_peer_announces_no_playlist_it_takes_from_the_edge():
    """Each version of a live playlist it served was announced: the edge fetched the manifests of versions the origin
    still kept (contents that piled up, 27 a minute) and refused the others after asking the origin (75 404s a minute
    on a soak session's stream)."""
    key = Ed25519PrivateKey.generate()

    def signed(path: str) -> SignedManifest:
        return SignedManifest.sign(Manifest(path, 1, "x", SEGMENT_PIECE, (hashlib.sha256(b"x").hexdigest(),), 1), key)

    assert [_from_edge_only(signed(p)) for p in ("live/a.m3u8", "live/a0.ts", "films/a.mp4")] == [True, False, False]


def test_names_the_origin_refused_are_forgotten_once_gone_and_warned_about_once_while_there(tmp_path, caplog):
    """Every name ever refused (a reserved first folder, a backslash) stayed in the origin's memory for good: 2 200
    entries with one file on disk after a tool wrote rotating names (an adversarial session)."""
    from edgeswarm.store.catalog import Catalog
    from edgeswarm.trust.signing import load_or_create_private_key

    root = tmp_path / "pub"
    (root / "status").mkdir(parents=True)  # a first segment reserved for node endpoints
    cat = Catalog(root, tmp_path / "state.json", load_or_create_private_key(tmp_path / "key.pem"))
    kept = root / "status" / "kept.json"
    kept.write_text("{}")
    with caplog.at_level("WARNING", logger="edgeswarm.store.catalog"):
        for r in range(50):
            rotating = root / "status" / f"probe-{r}.json"
            rotating.write_text("{}")
            cat.scan_changes(dict(cat.by_path))
            rotating.unlink()
        cat.scan_changes(dict(cat.by_path))
    assert set(cat._skipped) == {"status/kept.json"}
    assert sum("not publishing status/kept.json" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.integration  # no daemon, but seconds of hashing: not for the fast layer
async def test_the_watcher_publishes_while_the_full_scan_hashes_a_large_file(tmp_path, caplog):
    """A 30 GiB file being hashed held a live playlist's next version 35 s, a small file 3 minutes behind a 100 GiB one
    (an adversarial session): the full scan held the catalogue's lock while it hashed."""
    catalog = _catalog(tmp_path)
    root = catalog.root / "live"
    _write(root / "seg00000.ts", b"a" * 1000)
    _write(root / "live.m3u8", _playlist(0, 0))
    catalog.apply(catalog.scan_changes({}))
    with open(catalog.root / "film.bin", "wb") as f:  # 1 GiB of zeros, sparse: seconds of hashing, no disk
        f.truncate(1 << 30)
    caplog.set_level(logging.INFO, "edgeswarm.store.catalog")
    scan = asyncio.create_task(catalog.scan())
    while "hashing film.bin (1.0 GiB)" not in caplog.text:  # said as it begins: minutes, for the largest files
        await asyncio.sleep(0.01)
    _write(root / "seg00001.ts", b"b" * 1000)
    _write(root / "live.m3u8", _playlist(0, 1))
    await LiveWatcher(catalog).check()
    assert not scan.done(), "the live watcher waited for the full scan's hash"
    assert "live/seg00001.ts" in catalog.by_path and "film.bin" not in catalog.by_path
    assert "published film.bin (1073741824 bytes)" in await scan
    assert catalog.by_path["film.bin"].signed.manifest.size == 1 << 30
    assert catalog.by_path["live/live.m3u8"].signed.manifest.size == len(_playlist(0, 1)), "the scan kept the newest"


@pytest.mark.integration  # no daemon, but seconds of hashing: not for the fast layer
async def test_a_full_scan_publishes_small_files_and_smaller_large_ones_while_it_hashes_a_larger_one(tmp_path, caplog):
    """A new small file waited 3 minutes behind a 100 GiB one being hashed, and a 100 MiB one as long, the walk's
    order deciding (a stop's note): the large files are hashed smallest first, beside rounds that publish the rest."""
    catalog = _catalog(tmp_path)
    for name, size in (("film.bin", 1 << 30), ("clip.bin", 100 << 20)):
        with open(catalog.root / name, "wb") as f:  # zeros, sparse: seconds of hashing for the film, no disk
            f.truncate(size)
    said: list[str] = []
    caplog.set_level(logging.INFO, "edgeswarm.store.catalog")
    scan = asyncio.create_task(catalog.scan(said.append, every=0.05))
    while "hashing film.bin (1.0 GiB)" not in caplog.text:
        await asyncio.sleep(0.01)
    (catalog.root / "note.txt").write_bytes(b"new while the film is hashed")
    while "note.txt" not in catalog.by_path:
        assert not scan.done(), "the small file waited for the large one"
        await asyncio.sleep(0.01)
    assert "clip.bin" in catalog.by_path and "film.bin" not in catalog.by_path
    assert sorted(said) == ["published clip.bin (104857600 bytes)", "published note.txt (28 bytes)"], "each said as it happens"
    assert await scan == said and said[-1] == "published film.bin (1073741824 bytes)"
    assert catalog.by_path["film.bin"].signed.manifest.size == 1 << 30


@pytest.mark.integration  # no daemon, but seconds of hashing: not for the fast layer
async def test_a_large_file_deleted_during_its_hash_is_let_go_and_one_new_meanwhile_is_hashed_by_the_same_scan(tmp_path, caplog):
    """A 6 GiB file deleted 1 s into its hash was read to its end, then said to be unreadable, the next file waiting;
    and a large file new during a large hash waited for the next scan, the whole queue's time (an adversarial
    session)."""
    catalog = _catalog(tmp_path)
    with open(catalog.root / "gone.bin", "wb") as f:  # zeros, sparse: seconds of hashing, no disk
        f.truncate(8 << 30)
    caplog.set_level(logging.INFO, "edgeswarm.store.catalog")
    scan = asyncio.create_task(catalog.scan(every=0.05))
    while "hashing gone.bin" not in caplog.text:
        await asyncio.sleep(0.01)
    with open(catalog.root / "later.bin", "wb") as f:
        f.truncate(1 << 30)
    await asyncio.sleep(0.3)  # a round queues it
    (catalog.root / "gone.bin").unlink()
    started = asyncio.get_running_loop().time()
    assert await scan == ["published later.bin (1073741824 bytes)"]
    assert asyncio.get_running_loop().time() - started < 20, "the deleted file was read to its end first"
    assert "not publishing" not in caplog.text and catalog.hashed_bytes == 1 << 30


def test_a_version_hashed_before_a_read_withdrew_the_old_one_is_taken_up_not_hashed_again(tmp_path):
    """A file replaced by a rename and read meanwhile: the read withdrew the old version (``recheck``), and the scan
    threw the new one's finished hash away, hashing it again: twice the reading, twice the 503s (an adversarial
    session)."""
    catalog = _catalog(tmp_path)
    (catalog.root / "a.bin").write_bytes(b"one" * 1000)
    catalog.apply(catalog.scan_changes({}))
    (catalog.root / ".a.new").write_bytes(b"two" * 2000)
    (catalog.root / ".a.new").rename(catalog.root / "a.bin")
    catalog.prepare(dict(catalog.by_path))  # the scan's hash of the new version, outside the lock
    catalog.recheck("a.bin")  # a read found the old one replaced
    hashed = catalog.hashed_bytes
    catalog.apply(catalog.scan_changes(dict(catalog.by_path)))
    assert catalog.by_path["a.bin"].signed.manifest.size == 6000 and catalog.hashed_bytes == hashed


async def test_a_file_over_512_gib_is_not_published_and_the_origin_says_why(tmp_path, caplog):
    """Its pieces (512 MiB) are over what any node reads: every edge answered 502 for it, blaming the origin, after the
    origin had hashed it for many minutes (an adversarial session)."""
    catalog = _catalog(tmp_path)
    with open(catalog.root / "disk.img", "wb") as f:
        f.truncate(MAX_FILE + 1)
    caplog.set_level(logging.INFO, "edgeswarm.store.catalog")
    assert await catalog.scan() == [] and "disk.img" not in catalog.by_path
    assert f"not publishing disk.img: its {MAX_FILE + 1} bytes are more than a file may have" in caplog.text
    assert catalog.hashed_bytes == 0 and "hashing disk.img" not in caplog.text, "it was hashed first"


def test_a_scan_holding_the_catalogue_leaves_a_large_file_new_since_its_prepare_to_the_next_scan(tmp_path):
    """A file that appeared after ``prepare`` walked (or changed since) was hashed while the scan held the catalogue:
    for a large one, minutes of a live stream held up again.  It waits for the next scan's prepare instead."""
    catalog = _catalog(tmp_path)
    (catalog.root / "small.txt").write_bytes(b"s" * 10)
    (catalog.root / "large.bin").write_bytes(b"l" * 1000)
    assert set(catalog.scan_changes({}, hash_up_to=100)) == {"small.txt"}
    catalog.prepare({})
    assert set(catalog.scan_changes({}, hash_up_to=100)) == {"small.txt", "large.bin"}


async def test_files_moved_within_the_folder_are_published_under_their_new_paths_without_a_hash(tmp_path):
    """``mv new archive`` re-hashed every file moved (5 GiB for one command, each new path 404 until its hash ended: an
    adversarial session).  A rename keeps size, mtime and inode, and piece hashes do not depend on the path: the new
    path is published in the same scan that withdraws the old one, with the same pieces, signed for its path.  What
    would hash differently there (a media segment's smaller pieces, a protected path's encryption) is hashed."""
    catalog = _catalog(tmp_path)
    catalog.protect = ["locked/*"]
    root = catalog.root
    for name in ("film.mp4", "clip.bin", "other.bin"):
        (root / name).write_bytes(os.urandom(3 << 20))
    assert len(await catalog.scan()) == 3
    before = {rel: catalog.by_path[rel].signed.manifest for rel in catalog.by_path}
    hashed = catalog.hashed_bytes
    for folder in ("archive", "live", "locked"):
        (root / folder).mkdir(exist_ok=True)
    (root / "film.mp4").rename(root / "archive" / "film.mp4")
    (root / "clip.bin").rename(root / "live" / "clip.ts")  # a segment now: pieces of 64 KiB
    (root / "other.bin").rename(root / "locked" / "other.bin")
    lines = await catalog.scan()
    assert sorted(line.split(" (")[0] for line in lines) == [
        "published archive/film.mp4",
        "published live/clip.ts",
        "published locked/other.bin",
        "withdrew clip.bin",
        "withdrew film.mp4",
        "withdrew other.bin",
    ]
    assert catalog.hashed_bytes == hashed + 2 * (3 << 20), "the moved film was read again"
    moved = catalog.by_path["archive/film.mp4"]
    assert moved.signed.manifest.path == "archive/film.mp4" and moved.signed.manifest.pieces == before["film.mp4"].pieces
    assert SignedManifest.parse(moved.raw, catalog.key.public_key()).manifest == moved.signed.manifest
    assert catalog.by_path["live/clip.ts"].signed.manifest.piece_size == SEGMENT_PIECE
    assert catalog.by_path["locked/other.bin"].key is not None


def test_a_file_that_changes_during_its_hash_is_let_go_at_the_next_piece(tmp_path, monkeypatch):
    """A file copied into the folder in place was read whole at every scan while it grew, 6.9 GiB read for 768 MiB
    copied (an adversarial session): its hash now stops at the first piece after its size or mtime moved."""
    catalog = _catalog(tmp_path)
    f = catalog.root / "copying.bin"
    f.write_bytes(b"x" * (16 << 20))
    read: list[int] = []
    hash_pieces = catalog_module.hash_pieces

    def growing(path, piece_size, transform):
        def piece(data: bytes, offset: int) -> bytes:
            read.append(offset)
            with open(f, "ab") as out:  # the copy goes on
                out.write(b"y")
            return transform(data, offset)

        return hash_pieces(path, piece_size, piece)

    monkeypatch.setattr(catalog_module, "hash_pieces", growing)
    catalog.apply(catalog.scan_changes({}))
    assert "copying.bin" not in catalog.by_path and catalog.hashed_bytes == 0
    assert len(read) == 1, f"{len(read)} pieces read of a file that kept changing"


async def test_a_playlist_rewritten_in_place_is_not_published_half_written(tmp_path, caplog, monkeypatch):
    """A packager that rewrites its playlist in place (no rename) had a version cut mid-line published, naming
    ``seg0000`` for ``seg00001.ts``, or an empty one: every viewer's read-ahead got 404s for it (an adversarial
    session).  Such a version is held back, the previous one served, until the writer is done; one that stays so
    for UNFINISHED_GRACE is what its writer meant, published with a warning."""
    catalog = _catalog(tmp_path)
    root = catalog.root / "live"
    _write(root / "seg00000.ts", b"a" * 100)
    _write(root / "live.m3u8", _playlist(0, 0))
    catalog.apply(catalog.scan_changes({}))
    first = catalog.by_path["live/live.m3u8"].signed
    watcher = LiveWatcher(catalog)
    _write(root / "seg00001.ts", b"b" * 100)
    playlist = root / "live.m3u8"
    header = _playlist(0, 1).split("#EXTINF", 1)[0]
    # the first write() of two, a truncated file not yet written, and cuts at a line's end: its header alone, or its
    # segments' first line without the next (a review: only cuts within a name were caught)
    for cut in (_playlist(0, 1)[:-6], "", header, _playlist(0, 1)[:-1]):
        playlist.write_text(cut)
        await watcher.check()
        assert catalog.by_path["live/live.m3u8"].signed == first, f"published half-written: {cut!r}"
        catalog.apply(catalog.scan_changes(dict(catalog.by_path)))  # nor by the full scan
        assert catalog.by_path["live/live.m3u8"].signed == first
    playlist.write_text(_playlist(0, 1))  # the writer is done
    await watcher.check()
    assert catalog.by_path["live/live.m3u8"].data == _playlist(0, 1).encode() and "live/seg00001.ts" in catalog.by_path
    caplog.set_level(logging.WARNING, "edgeswarm.store.catalog")
    monkeypatch.setattr(catalog_module, "UNFINISHED_GRACE", 0.3)
    for last in (2, 3):  # rewritten at every poll, each version naming a segment a cleanup job deleted: the grace runs
        playlist.write_text(_playlist(0, last))  # on over versions (reset at each, the stream froze for good: a review)
        await watcher.check()
        assert catalog.by_path["live/live.m3u8"].data == _playlist(0, 1).encode(), "held back"
        await asyncio.sleep(0.2)
    playlist.write_text(_playlist(0, 4))
    await watcher.check()
    assert catalog.by_path["live/live.m3u8"].data == _playlist(0, 4).encode()
    assert "publishing the new version of live/live.m3u8 though it names live/seg00002.ts, which is not there" in caplog.text


def test_a_large_file_moved_where_its_hashes_do_not_hold_is_queued_as_any_new_one(tmp_path, monkeypatch):
    """Moved into a protected path (or to a playlist's name), a large file cannot keep its hashes: it was hashed on the
    spot by the scan's prepare, 4-10 s for 4 GiB with every other change waiting, and whole under the catalogue's
    lock past LOCKED_HASH (a review).  It goes to the large files' queue, as any new file of its size."""
    monkeypatch.setattr(catalog_module, "QUEUED_HASH", 1 << 20)
    monkeypatch.setattr(catalog_module, "LOCKED_HASH", 1 << 20)
    catalog = _catalog(tmp_path)
    catalog.protect = ["locked/*"]
    (catalog.root / "locked").mkdir()
    (catalog.root / "big.bin").write_bytes(os.urandom(2 << 20))
    catalog.apply(catalog.scan_changes({}))
    hashed = catalog.hashed_bytes
    (catalog.root / "big.bin").rename(catalog.root / "locked" / "big.bin")
    changes = catalog.scan_changes(dict(catalog.by_path), hash_up_to=catalog_module.LOCKED_HASH)
    assert changes == {"big.bin": None} and catalog.hashed_bytes == hashed, "hashed under the lock"
    assert [rel for rel, *_ in catalog.prepare(dict(catalog.by_path))] == ["locked/big.bin"]
    assert catalog.hashed_bytes == hashed, "hashed by prepare, not queued"


def test_an_uploaded_playlist_is_published_as_sent_whatever_it_names(tmp_path):
    """The hold-back of a half-written playlist is for files written in place: an upload is staged whole, and held back
    its publish failed ("changed while it was hashed"), a client uploading a playlist before its segments refused."""
    catalog = _catalog(tmp_path)
    _write(catalog.root / "live" / "seg00000.ts", b"a")
    _write(catalog.root / "live" / "live.m3u8", _playlist(0, 0))
    catalog.apply(catalog.scan_changes({}))
    staged = tmp_path / "staged.m3u8"
    staged.write_text(_playlist(0, 1))  # names seg00001.ts, not uploaded yet
    entry = catalog.publish_staged("live/live.m3u8", staged)
    assert entry.data == _playlist(0, 1).encode()
