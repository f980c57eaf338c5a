"""What every edgeswarm daemon shares: the HTTP server, errors, logs, shutdown.

One aiohttp application per node.  Errors raised as HttpError become a short
plain-text answer with the right status; anything unexpected becomes a 500
with a log line, never a traceback on the wire.  Once an answer has started,
a failure cuts the connection instead: nothing is ever appended to a body.
The bound address is logged as ``listening on http://HOST:PORT`` so tests and
scripts can use port 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from edgeswarm.httpspec import HttpError
from edgeswarm.metrics import Metrics

log = logging.getLogger("edgeswarm")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def text_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message.rstrip() + "\n", headers=headers)


_TOKEN_PARAM = re.compile(r"([?&]token=)[^&]*")


def shown(request: web.BaseRequest) -> str:
    """The request target as logs may show it: a ``?token=`` is a credential, so it is cut out."""
    return _TOKEN_PARAM.sub(r"\1***", request.path_qs)[:200]


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log, minus credentials: the client, the request (tokens cut), status, size and time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3f',
            request.remote,
            request.method,
            shown(request),
            *request.version,
            response.status,
            response.body_length,
            time,
        )


def make_app(metrics: Metrics) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            resp = await handler(request)
        except HttpError as exc:
            log.info("%s %s -> %d %s", request.method, shown(request), exc.status, exc.message)
            resp = text_error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own refusals, such as 413 for a body over client_max_size
            if exc.status >= 400:
                log.info("%s %s -> %d %s", request.method, shown(request), exc.status, exc.reason)
            resp = exc
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, shown(request))
            resp = text_error(500, "internal error; see the node's log")
        metrics.responses[resp.status] += 1
        return resp

    app = web.Application(middlewares=[errors, cut_after_start], client_max_size=64 * 1024)
    app.on_response_prepare.append(_note_started)
    app.router.add_get("/healthz", lambda _: _ok())
    app.router.add_get("/metrics", lambda _: web.Response(body=metrics.prometheus(), content_type="text/plain"))
    return app


_STARTED = web.RequestKey("edgeswarm.started", web.StreamResponse)  # the answer whose head went out


async def _note_started(request: web.Request, response: web.StreamResponse) -> None:
    request[_STARTED] = response


@web.middleware
async def cut_after_start(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Once an answer's head is on the wire, a failure can only cut the connection: never a second answer in the body.

    The client then sees a short body (curl: "transfer closed with N bytes
    remaining"), keeps what is right, and resumes with a range.  One log line;
    a traceback only for an internal error.
    """
    try:
        return await handler(request)
    except Exception as exc:
        started = request.get(_STARTED)
        if started is None or request.writer.output_size == 0:
            raise
        sent = request.writer.output_size
        if isinstance(exc, ConnectionError):  # reset, broken pipe, "Connection lost" while draining
            log.info("%s %s: client went away after %d bytes", request.method, shown(request), sent)
        elif isinstance(exc, HttpError):  # a piece that could not be had, say: the client resumes from elsewhere
            log.warning("%s %s: cut after %d bytes: %d %s", request.method, shown(request), sent, exc.status, exc.message)
        else:
            log.exception("internal error on %s %s after %d bytes: connection cut", request.method, shown(request), sent)
        if request.transport is not None:
            request.transport.abort()
        started.force_close()
        return started


async def _ok() -> web.Response:
    return web.Response(text="ok\n")


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=1) + "\n", status=status, content_type="application/json")


async def serve(app: web.Application, host: str, port: int, role: str, access_log: bool = False, ssl_context=None) -> None:
    await serve_many([(app, host, port, "")], role, access_log, ssl_context=ssl_context)


async def serve_many(
    sites: list[tuple[web.Application, str, int, str]],
    role: str,
    access_log: bool = False,
    on_bound: Callable[[str, str, int], None] | None = None,
    ssl_context=None,
) -> None:
    """Run apps (app, host, port, label) until SIGINT/SIGTERM, then shut down cleanly (cleanup hooks run).

    With ``ssl_context`` the first site (the node's public one) serves HTTPS.
    """
    runners = []
    try:
        for n, (app, host, port, label) in enumerate(sites):
            tls = ssl_context if n == 0 else None
            runner = web.AppRunner(
                app,
                access_log=logging.getLogger("edgeswarm.access") if access_log else None,
                access_log_class=AccessLogger,
                handle_signals=False,
            )
            await runner.setup()
            runners.append(runner)
            try:
                site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls)
                await site.start()
            except OSError as exc:
                raise SystemExit(f"edgeswarm {role}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            bound = site._server.sockets[0].getsockname()  # port 0 -> the real one
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            log.info("%s %slistening on %s://%s:%d", role, f"{label} " if label else "", "https" if tls else "http", shown, bound[1])
            if on_bound is not None:
                on_bound(label, bound[0], bound[1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("%s shutting down", role)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
