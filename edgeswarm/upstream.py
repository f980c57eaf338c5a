"""The client side of a node: HTTP GETs to parents and siblings, errors made plain.

Every failure an edge can meet upstream - refused connection, DNS, reset,
timeout - becomes an UpstreamError carrying the status the edge should answer
with (502 for a bad or unreachable upstream, 504 for one too slow) and a
sentence an operator can act on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

MAX_BODY = 256 * 1024 * 1024


class UpstreamError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Upstream:
    def __init__(self, timeout: float, ssl: object = None, bind: str | None = None, headers: dict[str, str] | None = None):
        self.timeout = timeout
        self.ssl = ssl  # an SSLContext with the configured CA, or None for the system's trust store
        self.bind = bind  # source address for outgoing connections: how peers appear in their region
        self.headers = headers or {}  # sent with every request: an edge's own token for its parent and siblings
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=256,
            limit_per_host=64,
            ssl=self.ssl if self.ssl is not None else True,
            local_addr=(self.bind, 0) if self.bind else None,
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, headers=self.headers)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def get(self, base: str, path: str, headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        """GET base+path (path already percent-encoded); the body is read whole."""
        return await self.request("GET", base, path, headers, timeout)

    async def request(
        self, method: str, base: str, path: str, headers: dict[str, str] | None, timeout: float | None, doc: object = None
    ) -> Reply:
        assert self.session is not None
        limit = timeout or self.timeout
        url = URL(base.rstrip("/") + path, encoded=True)
        try:
            async with asyncio.timeout(limit):
                async with self.session.request(method, url, headers=headers, json=doc, allow_redirects=False) as resp:
                    length = resp.content_length
                    if length is not None and length > MAX_BODY:
                        raise UpstreamError(502, f"{base} sent a {length}-byte body for {path}; refusing")
                    body = await resp.read()
                    return Reply(resp.status, resp.headers, body)
        except TimeoutError:
            raise UpstreamError(504, f"{base} did not answer {path} within {limit:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamError(502, f"{base}'s TLS certificate does not verify: {exc.certificate_error}") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(502, f"{base} is unreachable: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(502, f"{base} failed on {path}: {exc.__class__.__name__} {exc}") from None
