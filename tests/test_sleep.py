"""A peer whose machine slept: it announces within seconds of waking, not at its next interval.

A laptop's suspend stops the monotonic clock that a peer's timers run on, while
the wall clock (tickets' expiry, the trackers' expiry of silent peers) goes on.
Here the peer's wall clock is set forward while it runs (``sitecustomize``
below, loaded by Python at start from PYTHONPATH), which is what a wake-up
looks like from inside: the monotonic clock moved seconds, the wall clock
minutes.  The edge runs with the default announce interval (300 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from conftest import make_file, post, status

pytestmark = pytest.mark.integration
SLEPT = 900  # seconds the wall clock jumps: a 15-minute sleep, past a ticket's life at the defaults

SITECUSTOMIZE = """
import signal, time

_wall, _ahead = time.time, [0.0]
time.time = lambda: _wall() + _ahead[0]


def _slept(signum, frame):
    _ahead[0] += {slept}


signal.signal(signal.SIGUSR2, _slept)
"""


async def announces(http, edge) -> int:
    return (await status(http, edge.url))["announces"]["requests"]


async def test_a_peer_announces_at_once_when_its_machine_wakes(tmp_path, nodes, origin, published, http):
    make_file(published / "f.bin", 1024 * 1024)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p")
    clock = tmp_path / "clock"
    clock.mkdir()
    (clock / "sitecustomize.py").write_text(SITECUSTOMIZE.format(slept=SLEPT))
    path = os.pathsep.join(p for p in (str(clock), os.environ.get("PYTHONPATH")) if p)
    laptop = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "laptop"), "--edge", edge.url, "--gateway", "127.0.0.1:0"),
        name="laptop",
        env={"PYTHONPATH": path},
    )
    await post(http, laptop, "/f.bin")
    deadline = time.monotonic() + 60
    while not ((s := await status(http, laptop.urls["gateway"]))["swarms"] and s["swarms"][0]["complete"]):
        assert time.monotonic() < deadline, s["swarms"]
        await asyncio.sleep(0.2)
    before, steady = await announces(http, edge), time.monotonic()
    while time.monotonic() - steady < 3:  # its news announced (started, completed): no more for an interval
        await asyncio.sleep(0.5)
        if (now := await announces(http, edge)) != before:
            before, steady = now, time.monotonic()
        assert time.monotonic() < deadline, "the peer kept announcing"
    laptop.proc.send_signal(signal.SIGUSR2)  # the lid opens: its wall clock is SLEPT s ahead
    woke = time.monotonic()
    while await announces(http, edge) == before:
        assert time.monotonic() - woke < 30, "the woken peer did not announce (its next announce was an interval away)"
        await asyncio.sleep(0.2)
    assert f"this machine slept for about {SLEPT}" in laptop.log_text()
