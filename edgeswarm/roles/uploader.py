"""The client of the upload protocol: ``edgeswarm publish`` sends a file to an edge in resumable chunks.

It hashes the file, asks how much of it the origin already holds (a status
query), and sends the rest in chunks of ``chunk`` bytes with
``Content-Range``.  A chunk that fails for a network reason or a 5xx is
retried from the offset the origin reports, so an interrupted upload - this
run's or an earlier one's - goes on where it stopped rather than from zero
(docs/protocol.md#publishing).  A 4xx is final: its message is the error;
so is a 507 (the origin's disk is full), which a retry would only send again.
An answer to a chunk that does not move the offset forward counts as a
failure too (an edge answering 202 at byte 0 forever got the same bytes
sent again forever), and an offset beyond the file's end is a protocol
error that ends the run at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from edgeswarm.errors import EdgeswarmError
from edgeswarm.node.upstream import MAX_ANSWER, answer_body, client_error_text
from edgeswarm.protocol import jsondoc, upload
from edgeswarm.trust import tls

READ = 1 << 16
DEFAULT_CHUNK = 8 << 20
FINISH_WAIT = 660.0  # the edge may wait 600 s for the origin to hash a large file after its last byte: asked meanwhile


class PublishError(EdgeswarmError):
    """The upload was refused (the edge's or origin's 4xx message) or could not be finished after retries."""


@dataclass
class Published:
    """What the origin answered once the file was whole, and how the upload went."""

    path: str
    size: int
    sha256: str
    content_id: str
    resumed_from: int  # bytes the origin already held when this run started
    sent: int  # bytes this run sent, retried chunks included


@dataclass
class Job:
    file: Path
    edge: str
    path: str  # the published path, such as users/alice/a.mp4
    token: str
    chunk: int = DEFAULT_CHUNK
    ca: Path | None = None
    retries: int = 5
    timeout: float = 60.0  # connecting, and each read: not the whole transfer


def file_url(edge: str, path: str) -> str:
    """Where a published path is fetched (and uploaded): percent-encoded, so that a name holding '%', '?', '#' or a
    space names that file (printed as it was, ``a%2Fb.bin`` served ``a/b.bin``: an adversarial session)."""
    return f"{edge.rstrip('/')}/{quote(path.lstrip('/'), safe='/')}"


def file_sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def _read(file: Path, start: int, end: int, on_bytes: Callable[[int], None]) -> AsyncIterator[bytes]:
    """Bytes [start, end) of ``file``, in READ-sized blocks."""
    with open(file, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(READ, left))
            if not block:
                raise PublishError(f"{file} shrank while it was being sent")
            left -= len(block)
            on_bytes(len(block))
            yield block


class _Attempt(EdgeswarmError):
    """A failure worth a retry: the network, or a 5xx."""


class _Checking(EdgeswarmError):
    """The last byte went, and no answer came within the timeout: the origin may be hashing a large file (asked next)."""


async def publish(
    job: Job,
    on_bytes: Callable[[int], None] = lambda n: None,
    on_offset: Callable[[int], None] = lambda n: None,
    on_retry: Callable[[str], None] = lambda why: None,
) -> Published:
    """Send ``job.file`` to ``job.edge`` as ``job.path``; ``on_offset`` hears each offset the origin reports, ``on_bytes``
    each block sent, ``on_retry`` why a request is retried and when.

    Each answer is waited for ``job.timeout``, the last chunk's too: an origin still hashing the whole file then says
    so to the status query that follows (busy: the offset at the end), which is asked every 2 s up to FINISH_WAIT.
    Waiting FINISH_WAIT for every answer left a publish through a hung edge silent for 11 minutes a request, an hour
    in all (an adversarial session)."""
    length = job.file.stat().st_size
    sha = await asyncio.to_thread(file_sha256, job.file)
    url = file_url(job.edge, job.path)
    base = {"Authorization": f"Bearer {job.token}", upload.LENGTH_HEADER: str(length), upload.SHA256_HEADER: sha}
    context: ssl.SSLContext | bool = tls.client_context(job.ca) or True  # ValueError naming a CA file it cannot read
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=job.timeout, sock_read=job.timeout)
    failures = 0
    checking = 0.0  # seconds spent asking while the origin checks a whole upload
    sent = 0
    first: int | None = None
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def put(headers: dict[str, str], start: int, end: int) -> tuple[int, dict]:
            nonlocal sent

            def count(n: int) -> None:
                nonlocal sent
                sent += n
                on_bytes(n)

            body = _read(job.file, start, end, count) if end > start else None
            try:
                async with session.put(url, headers={**base, **headers, "Content-Length": str(end - start)}, data=body, ssl=context) as r:
                    text = (await answer_body(r, MAX_ANSWER)).decode("utf-8", "replace")  # a few hundred bytes of JSON, or an error
                    if r.content_type == "text/html":  # no edgeswarm node answers with a page (its markup was printed): no retry
                        raise PublishError(
                            f"{r.status} from {job.edge}, as an HTML page: no edgeswarm edge answers with one (is that the edge's URL?)"
                        )
                    if r.status >= 500 and r.status != upload.FULL_STATUS:
                        raise _Attempt(_answer(r.status, text))
                    offset = r.headers.get(upload.OFFSET_HEADER)
                    if r.status == 409 and offset is None and "Retry-After" not in r.headers:  # the path: no retry changes it
                        raise PublishError(_answer(r.status, text))
                    if r.status in (201, 202, 409):
                        return r.status, {"text": text, "offset": int(offset) if offset and offset.isdigit() else None}
                    raise PublishError(_answer(r.status, text))
            except aiohttp.ClientConnectorCertificateError as exc:  # no retry verifies it
                raise PublishError(f"{job.edge}'s TLS certificate does not verify: {exc.certificate_error}") from None
            except TimeoutError:  # aiohttp's socket timeouts are TimeoutErrors too
                if end == length and end > start and not waited_once:  # the whole file is there: no failure, once
                    raise _Checking() from None
                raise _Attempt(f"{job.edge} did not answer within {job.timeout:g} s") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise _Attempt(f"{job.edge}: {client_error_text(exc, job.edge)}") from None

        offset: int | None = None
        waited_once = False  # a last chunk's answer that did not come was taken for the origin's hashing
        reached = 0  # the furthest offset the origin has reported: only an answer past it gives the retries back
        while True:
            sent_from = offset or 0  # where this request's bytes start (a file of 0 bytes: its only request)
            try:
                if offset is None:
                    if length == 0:
                        status, doc = await put({}, 0, 0)
                    else:
                        status, doc = await put({"Content-Range": upload.status_query(length)}, 0, 0)
                        if status != 201:  # 201: the origin held it whole and has (just) published it
                            offset = _within(doc["offset"] or 0, length)
                            first = offset if first is None else first
                            reached = max(reached, offset)
                            on_offset(offset)
                            if offset >= length:  # whole, and the origin is still checking it: ask again shortly
                                offset, checking = None, checking + 2.0
                                if checking > FINISH_WAIT:
                                    raise PublishError(f"the origin held all {length} bytes but did not publish them in {FINISH_WAIT:g} s")
                                await asyncio.sleep(2.0)
                            continue
                else:
                    end = min(length, offset + job.chunk)
                    status, doc = await put({"Content-Range": upload.content_range(offset, end, length)}, offset, end)
                if status == 201:
                    got = jsondoc.loads(doc["text"])
                    return Published(got["path"], got["size"], got["sha256"], got["content_id"], length if first is None else first, sent)
                offset = doc["offset"]  # 202: go on; 409: the origin says where, or (None) another request is still appending
                if offset is None:
                    if status != 409:
                        raise PublishError(f"{status} answer without {upload.OFFSET_HEADER}: {doc['text'][:300]}")
                    raise _Attempt(doc["text"].strip()[:300] or "409: another request is still appending")
                offset = _within(offset, length)
                if offset <= sent_from:  # the chunk was answered, but the origin holds no more than before: a retry, not a success
                    raise _Attempt(f"{status} with {upload.OFFSET_HEADER} {offset} after a chunk sent from byte {sent_from}: no progress")
                if offset > reached:  # new ground: the retries start afresh (an edge that swings back and forth gains none)
                    reached, failures = offset, 0
                if offset >= length:
                    offset = None  # whole: ask until the origin has checked it
            except _Checking:
                on_retry(f"all {length} bytes sent, no answer within {job.timeout:g} s: asking whether the origin is still checking them")
                offset, waited_once = None, True  # a second time counts as a failure: an edge that never answers a last chunk
            except _Attempt as exc:
                failures += 1
                if failures > job.retries:
                    raise PublishError(f"gave up after {job.retries} retries: {exc}") from None
                pause = min(8.0, 0.5 * 2**failures)
                on_retry(f"{exc}; retry {failures} of {job.retries} in {pause:g} s, from the origin's offset")
                await asyncio.sleep(pause)
                offset = None  # ask where to go on from


def _within(offset: int, length: int) -> int:
    """``offset`` as the origin reported it, if it can be one: beyond the file's end it is a protocol error, at once."""
    if offset > length:
        raise PublishError(f"protocol error: the edge reported {upload.OFFSET_HEADER} {offset}, beyond the file's {length} bytes")
    return offset


def _answer(status: int, text: str) -> str:
    """An answer's status and message, on one line."""
    return f"{status} {' '.join(text.split())[:500]}"
