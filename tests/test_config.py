"""EdgeConfig and PeerConfig: what the CLI parses, what the lab writes, and the defaults are one thing.

The lab and the benches start daemons with ``config.argv()``; the CLI reads
flags back with ``from_options``.  A field whose flag were misspelt, typed or
defaulted differently on either side would break this round trip.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgeswarm.cli import build_parser, main, options
from edgeswarm.protocol.cors import PUBLIC, CorsPolicy
from edgeswarm.roles.config import EdgeConfig, PeerConfig


def parsed_edge(*flags: str) -> EdgeConfig:
    args = build_parser().parse_args(["edge", *flags])
    return EdgeConfig.from_options(args, token=options.token(args))


def parsed_peer(*flags: str) -> PeerConfig:
    args = build_parser().parse_args(["peer", *flags])
    return PeerConfig.from_options(args, token=options.token(args), bind=args.listen[0])


def test_the_clis_defaults_are_the_configs():
    assert parsed_edge("--cache", "c", "--parent", "http://o:1") == EdgeConfig(cache=Path("c"), parent="http://o:1")
    assert parsed_peer("--cache", "c", "--edge", "http://e:1") == PeerConfig(cache=Path("c"), edges=("http://e:1",), bind="0.0.0.0")


@pytest.fixture
def origin_pub(tmp_path: Path, monkeypatch) -> Path:
    """``origin.pub`` in the working folder: ``--origin-key`` reads its file as the flags are read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate().public_key()
    (tmp_path / "origin.pub").write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    monkeypatch.chdir(tmp_path)
    return Path("origin.pub")


def test_an_edge_config_with_every_field_set_survives_its_command_line(origin_pub: Path):
    config = EdgeConfig(
        cache=Path("/var/cache/es"),
        parent="https://mid:8080",
        siblings=("http://e2:8080", "http://e3:8080"),
        max_cache=50 * 10**9,
        only_origin=("cdn.example.com",),
        internal=("10.0.0.0/8", "fd00::/8"),
        origin_key=origin_pub,
        timeout=2.5,
        revalidate=0.25,
        upload_limit=1_250_000,
        p2p=True,
        regions=Path("regions.yaml"),
        locality="strict",
        announce_interval=30.0,
        max_peer_ids=3,
        announce_rate=7,
        max_peer_records=5000,
        tracker_store="redis://127.0.0.1:6379/2",
        max_peer_rate=5_000_000,
        require_token=True,
        ledger="postgresql://db/usage",
        name="edge-east",
        token="t0k3n",
        ca=Path("ca.pem"),
        cors=CorsPolicy(("https://player.example", "http://localhost:3000")),
        relay_peers=0,
        relay_requests=3,
        promote_upload=250_000,
        promote_uptime=60.0,
        register_with=("http://r1:8090", "http://r2:8090"),
        register_region="east",
        register_capacity=125_000_000,
        register_url="http://10.1.0.5:8080",
        register_secret_file=Path("router.secret"),
        workers=3,
    )
    defaults = EdgeConfig(cache=Path("c"), parent="http://o:1")
    assert all(getattr(config, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(EdgeConfig))  # every flag is written
    assert parsed_edge(*config.argv()) == config


def test_a_peer_config_survives_its_command_line(origin_pub: Path):
    config = PeerConfig(
        cache=Path("/tmp/p1"),
        edges=("http://e1:8080", "http://e2:8080"),
        upload_limit=2_000_000,
        download_limit=500_000,
        upload_slots=4,
        max_cache=512 * 2**20,
        origin_key=origin_pub,
        read_timeout=5.0,
        startup_window=0,
        token="t0k3n",
        ca=Path("ca.pem"),
        cors=CorsPolicy(()),
        gateway_hosts=("htpc.lan", "tv.lan"),
        router="http://router:8090",
        seeds=("films/a.mp4", "os/update.img"),
        accept_preheat=2_000_000_000,
        unreachable=True,
        bind="192.0.2.7",
    )
    defaults = PeerConfig(cache=Path("c"), edges=())
    written = [f for f in dataclasses.fields(PeerConfig) if f.name != "timeout"]  # timeout: the program's (get), no flag
    assert all(getattr(config, f.name) != getattr(defaults, f.name) for f in written)
    assert parsed_peer(*config.argv(), "--listen", "192.0.2.7:6881") == config


def test_cors_policies_survive_their_flags_and_a_bad_combination_is_refused():
    for policy in (PUBLIC, CorsPolicy(()), CorsPolicy(("https://a.example",)), CorsPolicy(("*", "https://a.example"))):
        config = EdgeConfig(cache=Path("c"), parent="http://o:1", cors=policy)
        assert parsed_edge(*config.argv()).cors == policy
    assert EdgeConfig(cache=Path("c"), parent="http://o:1", cors=CorsPolicy(())).argv()[-2:] == ["--cors-origin", "none"]
    with pytest.raises(ValueError, match="cannot be combined"):
        parsed_peer("--cache", "c", "--edge", "http://e:1", "--cors-origin", "none", "--cors-origin", "https://a.example")


def test_a_peer_with_a_router_needs_no_edge():
    config = parsed_peer("--cache", "c", "--router", "http://router:8090")
    assert config.edges == () and config.router == "http://router:8090"


def test_fields_the_program_sets_are_not_flags():
    config = PeerConfig(cache=Path("c"), edges=("http://e:1",), bind="192.0.2.7", timeout=3.0)
    assert config.argv() == ["--cache", "c", "--edge", "http://e:1"]


def test_configs_are_frozen_and_keyword_only():
    config = EdgeConfig(cache=Path("c"), parent="http://o:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        EdgeConfig(Path("c"), "http://o:1")  # type: ignore[misc]


def test_a_peer_without_edge_or_router_is_refused_before_it_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["peer", "--cache", str(tmp_path / "p")]) == 2
    assert "give --edge URL (repeatable) or --router URL" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before the peer made its cache


def test_a_peer_refuses_more_preheated_content_than_its_cache_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Preheated content is pinned against eviction: with room for more of it than --max-cache, the cache outgrew its
    quota without a word (an adversarial session)."""
    argv = ["peer", "--cache", str(tmp_path / "p"), "--edge", "http://127.0.0.1:9", "--max-cache", "10MB"]
    assert main([*argv, "--accept-preheat", "10MB"]) == 2
    assert "--accept-preheat (10,000,000 bytes) must be less than --max-cache (10,000,000 bytes)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_an_edge_refuses_the_trackers_flags_without_p2p(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``--regions`` without ``--p2p`` was neither read nor checked (a broken map too), with no word that it did nothing."""
    (tmp_path / "r.yaml").write_text("not: [a map")
    assert main(["edge", "--cache", str(tmp_path / "e"), "--parent", "http://o:1", "--regions", str(tmp_path / "r.yaml")]) == 2
    assert "--regions needs --p2p: without it, nothing reads it" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--announce-interval", "5"], "--announce-interval needs --p2p"),
        (["--locality", "strict"], "--locality needs --p2p"),
        (["--p2p", "--promote-upload", "1MB/s", "--relay-peers", "0"], "it needs relays (--relay-peers above 0)"),
        (["--register-region", "east"], "--register-region needs --register-with"),
    ],
)
def test_an_edge_refuses_flags_nothing_would_read(tmp_path: Path, flags: list[str], said: str, capsys):
    """Each did nothing, without a word: the tracker's flags without --p2p, promotion without relays, a router's
    registration details without a router (an adversarial session)."""
    assert main(["edge", "--cache", str(tmp_path / "e"), "--parent", "http://o:1", *flags]) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_an_edge_refuses_far_more_workers_than_cores(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``--workers 10000`` forked worker after worker of ~45 MB until the host fell over (an adversarial session)."""
    from edgeswarm.node.workers import MAX_PER_CORE, usable_cores

    most = MAX_PER_CORE * usable_cores()
    assert main(["edge", "--cache", str(tmp_path / "e"), "--parent", "http://o:1", "--workers", str(most + 1)]) == 2
    assert f"--workers {most + 1} is more than {MAX_PER_CORE} a usable core" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # refused before the edge made its cache


def test_an_edge_registering_with_a_router_needs_its_region_and_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["edge", "--cache", str(tmp_path / "e"), "--parent", "http://o:1", "--register-with", "http://r:8090"]
    assert main(base) == 2
    assert "needs --register-region NAME and --register-capacity RATE" in capsys.readouterr().err
    assert main([*base, "--register-region", "east", "--register-capacity", "1Gbit/s", "--listen", "0.0.0.0:0"]) == 2
    assert "give --register-url" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # refused before the edge made its cache


def test_relay_flags_are_checked_while_they_are_read(capsys: pytest.CaptureFixture[str]):
    assert parsed_edge("--cache", "c", "--parent", "http://o:1", "--relay-peers", "0").relay_peers == 0  # 0: this edge relays nobody
    for bad in (("--relay-peers", "-1"), ("--relay-requests", "0")):
        with pytest.raises(SystemExit):
            parsed_edge("--cache", "c", "--parent", "http://o:1", *bad)
    assert "expected a whole number" in capsys.readouterr().err


def test_a_peer_id_file_that_is_not_an_id_is_replaced(tmp_path, caplog):
    """A damaged cache's peer_id (not text) stopped every start with "'utf-8' codec can't decode byte 0xb5", naming no
    file; one the tracker refuses (not printable, too long) failed every announce."""
    from edgeswarm.roles.peer import _peer_id

    path = tmp_path / "peer_id"
    for damage in (b"\xff\xb5\x00", b"id with a\ttab", b"x" * 65):
        path.write_bytes(damage)
        pid = _peer_id(path)
        assert len(pid) == 16 and pid.isprintable() and path.read_text().strip() == pid
        assert _peer_id(path) == pid  # kept from now on
    assert "holds no usable peer id" in caplog.text


def test_publish_refuses_a_chunk_size_of_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``--chunk-size 0`` sent ``Content-Range: bytes 0--1/N`` and printed the origin's 400 (an adversarial session)."""
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(SystemExit) as exit:
        main(["publish", str(tmp_path / "f"), "--edge", "http://127.0.0.1:9", "--chunk-size", "0"])
    assert exit.value.code == 2 and "expected a size of at least one byte, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["lab", "flash-crowd"], ["bench", "swarm"], ["bench", "tracker"]],
)
def test_a_long_run_checks_where_it_writes_its_figures_before_it_starts(tmp_path: Path, capsys, command):
    """``lab --json garbage.bin/x.json`` ran the whole scenario, then failed writing (no report at all); ``--json DIR``
    printed the report and lost the JSON (an adversarial session)."""
    (tmp_path / "garbage.bin").write_bytes(b"x")
    for given, said in ((tmp_path / "garbage.bin" / "x.json", "is not a directory"), (tmp_path, "is a directory")):
        with pytest.raises(SystemExit) as exit:
            main([*command, "--json", str(given)])
        assert exit.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["lab", "flash-crowd", "--plots", str(tmp_path / "garbage.bin" / "plots")])
    assert exit.value.code == 2 and "cannot be a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["origin", "--publish", ".", "--user-quota", "al/ice=1GB"], "user 'al/ice' cannot publish"),
        (["router", "--poll-interval", "0.0001"], "expected at least 0.1 seconds"),
        (["lab", "vod", "--rate-scale", "-1"], "expected a positive factor"),
        (["origin", "--publish", ".", "--protect", ""], "argument --protect: must not be empty"),
        (["preheat", "a.bin", "--region", " ", "--edge", "http://127.0.0.1:9"], "argument --region: must not be empty"),
        (["router", "--default-region", ""], "argument --default-region: must not be empty"),
        (["edge", "--cache", ".", "--parent", "http://127.0.0.1:9", "--name", ""], "argument --name: must not be empty"),
        # an unset variable in a unit file: the current folder, no token, the default ledger (an adversarial session)
        (["edge", "--cache", "", "--parent", "http://127.0.0.1:9"], "argument --cache: an empty path (an unset variable?)"),
        (["get", "http://127.0.0.1:9/a.bin", "--token", ""], "argument --token: must not be empty"),
        (["edge", "--cache", ".", "--parent", "http://127.0.0.1:9", "--ledger", ""], "argument --ledger: must not be empty"),
        # a rate of nothing was no cap at all (--upload-limit 0MB/s served at full speed)
        (["edge", "--cache", ".", "--parent", "http://127.0.0.1:9", "--upload-limit", "0MB/s"], "expected a rate of at least 1 byte/s"),
        (["peer", "--cache", ".", "--edge", "http://127.0.0.1:9", "--download-limit", "1bit/s"], "expected a rate of at least 1 byte/s"),
        # a prefix of a flag is not that flag: --origin was --origin-key, --rate was --rate-scale
        (["edge", "--cache", ".", "--parent", "http://127.0.0.1:9", "--origin", "http://127.0.0.1:9"], "unrecognized arguments: --origin"),
        (["lab", "vod", "--rate", "4"], "edgeswarm lab: error: unrecognized arguments: --rate 4"),
        # named in the subcommand's words and usage, with the flag meant: it was "edgeswarm: error:" under the
        # top-level usage (a newcomer's walk through README)
        (["edge", "--cache", ".", "--parent", "http://127.0.0.1:9", "--max-cach", "1GB"], "edgeswarm edge: error: "),
        (["edge", "--cache", ".", "--parent", "http://127.0.0.1:9", "--max-cach=1GB"], "--max-cach=1GB: did you mean --max-cache?"),
        (["bench", "swarm", "--peerz", "3"], "usage: edgeswarm bench swarm"),
        (["token", "issue", "--use", "alice"], "required: --key, --user, --path"),  # --use was --user
    ],
)
def test_flags_a_run_could_never_use_are_refused_with_the_reason(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]):
    """Each was taken without a word: a quota for a name that can never publish, a router polling every edge 10 000
    times a second, a scale factor whose error spoke of seconds, and empty names and patterns (adversarial sessions)."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and said in capsys.readouterr().err


def test_a_lab_run_checks_its_default_plots_folder_before_it_starts(tmp_path: Path):
    """A file where lab-SCENARIO-plots goes was found after the whole run, and the JSON was never written (a review)."""
    (tmp_path / "lab-vod-plots").write_text("in the way")
    assert main(["lab", "vod", "--json", str(tmp_path / "vod.json")]) == 2
    assert not (tmp_path / "vod.json").exists()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:9/%2e%2e", "names no file: path segment '..' is not allowed"),
        ("http://127.0.0.1:9/big.bin%2F", "names no file: path segment '' is not allowed"),
        ("http://127.0.0.1:9/a%00b", "'http://127.0.0.1:9/a%00b' names no file: control character"),
        ("http://127.0.0.1:9/%ff", "names no file: percent-encoding is not UTF-8"),
        ("http://127.0.0.1:9//etc/passwd", "names no file: absolute path"),
        ("http://127.0.0.1:99999/a.bin", "not an http(s) URL: 'http://127.0.0.1:99999/a.bin' (Port out of range"),
    ],
)
def test_a_get_of_a_url_that_can_name_no_file_stops_before_any_request(url: str, said: str, capsys: pytest.CaptureFixture[str]):
    """Each cost a round trip and exit 1 (`%ff` was read as another name, `//x` as `x`), and a NUL or a newline went to
    the terminal raw (an adversarial session): checked as nodes check request paths, exit 2."""
    assert main(["get", url]) == 2
    err = capsys.readouterr().err
    assert said in err and "\x00" not in err, err


def test_a_get_into_a_directory_stops_before_the_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`-o DIR` failed at the rename, after the whole file had come (an adversarial session)."""
    assert main(["get", "http://127.0.0.1:9/films/a.bin", "-o", str(tmp_path)]) == 2
    assert f"-o {tmp_path} is a directory: name the file (-o {tmp_path / 'a.bin'})" in capsys.readouterr().err


def test_a_get_into_a_folder_to_be_or_through_a_file_or_into_nothing_stops_before_the_download(tmp_path: Path, capsys):
    """`-o newdir/` wrote a file named newdir, `-o FILE/x` said mkdir's "File exists", `-o ''` was said as `-o .`
    (an adversarial session)."""
    (tmp_path / "afile").write_bytes(b"x")
    for output, said in [
        (f"{tmp_path}/newdir/", f"-o {tmp_path}/newdir/ is a directory: name the file (-o {tmp_path / 'newdir' / 'a.bin'})"),
        (f"{tmp_path}/afile/x/a.bin", f"-o {tmp_path}/afile/x/a.bin: {tmp_path / 'afile'} is not a directory"),
        ("", "-o '' is empty: name the file (-o a.bin)"),
        (f"{tmp_path}/newdir/.", f"-o {tmp_path}/newdir/. is a directory: name the file (-o {tmp_path / 'newdir' / 'a.bin'})"),
        (f"{tmp_path}/newdir/..", f"-o {tmp_path}/newdir/.. is a directory"),
        (f"{tmp_path}/afile/", f"-o {tmp_path}/afile/: {tmp_path / 'afile'} is not a directory"),
    ]:
        assert main(["get", "http://127.0.0.1:9/films/a.bin", "-o", output]) == 2
        assert said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_token_and_secret_files_that_cannot_be_read_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A directory, or bytes that are not UTF-8, said "[Errno 21] Is a directory" and "'utf-8' codec can't decode byte
    0xff in position 0", the latter without naming the file (an adversarial session)."""
    binary = tmp_path / "t.token"
    binary.write_bytes(b"\xff\xfe")
    for given, said in ((binary, f"{binary} is not text (UTF-8): no token file"), (tmp_path, f"cannot read the token file {tmp_path}: ")):
        assert main(["get", "http://127.0.0.1:9/a.bin", "--token-file", str(given)]) == 2
        assert said in capsys.readouterr().err


def test_the_tracker_keeps_as_many_records_as_a_quarter_of_the_memory_holds(monkeypatch):
    """A million records are about 4 GB: a machine of 2 GiB keeps 131 072 (its quarter at 4 KiB each)."""
    from edgeswarm.roles import edge

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": (2 << 30) // 4096}
    monkeypatch.setattr(edge.os, "sysconf", pages.__getitem__)
    assert edge.default_records() == 131_072
    pages["SC_PHYS_PAGES"] = (64 << 30) // 4096
    assert edge.default_records() == 1_000_000


@pytest.mark.parametrize("bad", ["0", "1B", "999KB"])
def test_a_cache_quota_that_holds_no_piece_is_refused(bad, capsys: pytest.CaptureFixture[str]):
    """--max-cache 0 was taken, and the edge cached nothing (every request fetched from its parent): an operator meant
    no limit by it (an adversarial session)."""
    for parse, flags in ((parsed_edge, ("--parent", "http://o:1")), (parsed_peer, ("--edge", "http://e:1"))):
        with pytest.raises(SystemExit):
            parse("--cache", "c", *flags, "--max-cache", bad)
        assert f"expected at least 1MB, got {bad!r} (to set no limit, leave --max-cache out)" in capsys.readouterr().err
    assert parsed_edge("--cache", "c", "--parent", "http://o:1", "--max-cache", "1MB").max_cache == 1_000_000


def test_a_bad_region_map_stops_the_edge_before_it_makes_its_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """It was refused with a good message, after the cache directory and its swarm key were made (an adversarial
    session)."""
    bad = tmp_path / "regions.yaml"
    bad.write_text("regions: [{name: east, isp: a, networks: [not-a-network]}]\n")
    for workers in ("1", "2"):
        cmd = ["edge", "--cache", str(tmp_path / "e"), "--parent", "http://o:1", "--p2p", "--regions", str(bad), "--workers", workers]
        assert main(cmd) == 2
        assert "not-a-network" in capsys.readouterr().err
        assert not (tmp_path / "e").exists()


def test_a_gets_default_listen_is_of_its_urls_ip_version():
    from edgeswarm.cli.get import wildcard_for

    assert wildcard_for("http://[::1]:8080/f") == ("::", 0)
    assert wildcard_for("/f", "http://[fd00::1]:8080") == ("::", 0)  # a bare path (with --router: its URL comes first)
    assert wildcard_for("http://127.0.0.1:8080/f") == wildcard_for("http://edge.test/f") == wildcard_for("/f") == ("0.0.0.0", 0)


def test_a_get_names_standard_output_as_such():
    """A get to ``-o -`` whose disk filled said "cannot write -" (an adversarial session)."""
    from edgeswarm.protocol.manifest import Manifest
    from edgeswarm.roles.get import OutputFile

    manifest = Manifest("a.bin", 10, "application/octet-stream", 16384, ("0" * 64,), 0)
    assert OutputFile(Path("-"), manifest).shown == "standard output" and OutputFile(Path("a.bin"), manifest).shown == "a.bin"


def test_a_gets_url_token_is_taken_as_its_token_and_cut_from_the_url():
    from edgeswarm.roles.get import GetError, url_token

    assert url_token("http://e/a.bin?token=T", None) == ("http://e/a.bin", "T")
    assert url_token("http://e/a.bin?x=1&token=T", "T") == ("http://e/a.bin?x=1", "T")
    assert url_token("http://e/a.bin", "T") == ("http://e/a.bin", "T") and url_token("/a.bin?token=", None) == ("/a.bin?token=", None)
    with pytest.raises(GetError, match="two different tokens"):
        url_token("http://e/a.bin?token=T", "U")


def test_a_gets_url_naming_a_link_local_address_is_refused_saying_why():
    from edgeswarm.roles.get import GetError, split_url

    for url in ("http://[fe80::1]:8080/f.bin", "http://[fe80::1%25lo]:8080/f.bin"):
        with pytest.raises(GetError, match="a link-local address"):
            split_url(url)


def test_dev_says_what_its_jobs_do_and_refuses_an_unknown_one():
    """`./dev --help` (a new user's first question) printed a one-line usage to stderr and exited 2 (an adversarial
    session); it says each job, and an unknown job still gets the usage and exit 2, naming --help."""
    import subprocess

    dev = Path(__file__).resolve().parent.parent / "dev"
    helped = subprocess.run([str(dev), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and all(f"./dev {job} [ARGS]" in helped.stdout for job in ("demo", "test", "bench", "fuzz"))
    wrong = subprocess.run([str(dev), "frobnicate"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "./dev --help" in wrong.stderr


@pytest.mark.integration  # runs the bench as a subprocess
def test_dev_bench_writes_a_relative_path_where_the_user_typed_it(tmp_path):
    """`dev` changes to the repository to set up, and ran demo and bench there: `cd ~/x && ~/edgeswarm/dev demo --out
    results` wrote ~/edgeswarm/results (an adversarial session).  They run where the user typed them."""
    import subprocess

    dev = Path(__file__).resolve().parent.parent / "dev"
    args = ["bench", "tracker", "--peers", "20", "--contents", "1", "--pieces", "8", "--duration", "0.2", "--stores", "memory"]
    proc = subprocess.run([str(dev), *args, "--json", "figures.json"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "figures.json").read_text())["peers"] == 20


@pytest.mark.integration
@pytest.mark.parametrize("bad", [("--ledger", "/proc/nope/l.sqlite"), ("--ca", "/nope/ca.pem")])
def test_a_bad_ledger_or_ca_is_said_once_before_the_workers_start(tmp_path: Path, bad: tuple[str, str]):
    """With the default workers, each worker printed the refusal (as many times as it raced to), then their supervisor an
    ERROR that worker 0 exited (a newcomer's walk through README): the flag is checked before they start, as --regions is."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = ["edge", "--cache", str(tmp_path / "c"), "--parent", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--workers", "2"]
    run = subprocess.run([sys.executable, "-m", "edgeswarm", *argv, *bad], capture_output=True, text=True, timeout=60, env=env)
    said = [line for line in run.stderr.splitlines() if " INFO " not in line]
    assert run.returncode == 2 and len(said) == 1 and said[0].startswith("edgeswarm edge: "), run.stderr
