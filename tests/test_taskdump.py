"""SIGUSR1 makes a node or a get log every asyncio task's stack and run on; run_cli sends it to a command that hangs.

faulthandler's stacks (SIGABRT) show a hung asyncio process's main thread in
``select``, whatever its tasks wait on: the tasks' own stacks say which await.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from aiohttp import web
from conftest import DoubleServer, run_cli

integration = pytest.mark.integration


@integration
async def test_sigusr1_logs_every_task_stack_and_the_node_runs_on(origin, http):
    os.kill(origin.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "SIGUSR1" not in origin.log_text():
        assert time.monotonic() < deadline and origin.running, origin.log_text()[-2000:]
        await asyncio.sleep(0.05)
    os.kill(origin.pid, signal.SIGUSR1)  # and again: the handler stays
    while origin.log_text().count("SIGUSR1") < 2:
        assert time.monotonic() < deadline and origin.running, origin.log_text()[-2000:]
        await asyncio.sleep(0.05)
    dump = origin.log_text().split("SIGUSR1", 1)[1]
    assert "in stop_signal\n    await stop.wait()" in dump  # the main task, down to the await it sleeps in
    assert "in sweep" in dump  # and the others: the connection sweeper's
    async with http.get(origin.url + "/healthz") as r:
        assert r.status == 200
    assert origin.running


class Silent(DoubleServer):
    """An edge that never answers (but a HEAD of the file, 404: so ``get`` takes it for an edge, not a router)."""

    def routes(self, app: web.Application) -> None:
        async def head(_: web.Request) -> web.Response:
            return web.Response(status=404)

        async def hang(_: web.Request) -> web.Response:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        app.router.add_route("HEAD", "/{tail:.*}", head)
        app.router.add_route("*", "/{tail:.*}", hang)


@integration
async def test_run_cli_fails_a_hung_get_with_its_task_stacks(tmp_path):
    async with Silent() as edge:
        cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/app.bin", "-o", str(tmp_path / "app.bin")]
        cmd += ["--cache", str(tmp_path / "cache"), "--listen", "127.0.0.1:0"]
        with pytest.raises(pytest.fail.Exception) as failed:  # the get waits 10 s for the origin key: killed at 6
            await asyncio.to_thread(run_cli, cmd, 6)
    text = str(failed.value)
    assert "get: SIGUSR1: the stacks of" in text, text
    assert "in download\n    signed = await peer.resolve(path)" in text  # where the main task waits
    assert "Current thread" in text or "Thread 0x" in text  # and faulthandler's threads, on SIGABRT


SECOND_SIGNAL = """
import asyncio, os, signal
from edgeswarm.node.daemon import stop_signal

async def main():
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    await stop_signal()
    close = loop._close_self_pipe

    def close_then_signal():  # the window a worker's second SIGTERM (its group's, its supervisor's) once fell in
        close()
        os.kill(os.getpid(), signal.SIGTERM)

    loop._close_self_pipe = close_then_signal

asyncio.run(main())
print("exited")
"""


@integration
def test_a_stop_signal_while_the_loop_closes_is_ignored_quietly():
    """A second stop signal that came while asyncio's loop closed (its self-pipe gone, its handlers not yet) printed
    "Exception ignored ... signal wakeup fd ... Bad file descriptor" at an edge worker's exit (an adversarial session)."""
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "exited"), done.stderr
    assert "wakeup fd" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
