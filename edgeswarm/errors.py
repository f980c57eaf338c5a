"""One base for the errors edgeswarm raises on purpose, and the one error that carries an HTTP status.

``EdgeswarmError``: every deliberate refusal or failure derives from it, so a
caller can tell ours from a bug (anything else, which gets a traceback).
Errors that were ValueError, OSError or RuntimeError still are: code that
catches those keeps working.

``HttpError``: a status, a sentence and optional headers - what a node
answers (the daemon's middleware sends them as they are), and what an
upstream failure (``UpstreamError``) or a refused token (``TokenError``)
means for that answer.

Standard library only, importing nothing of edgeswarm: every layer, policy
included, may import it.
"""

from __future__ import annotations


class EdgeswarmError(Exception):
    """Something edgeswarm refuses or cannot do, said in a sentence; never a bug."""


class HttpError(EdgeswarmError):
    """A request the node refuses; status and message go to the client as they are."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def said(exc: BaseException) -> str:
    """What ``exc`` says, on one line; its type's name when it says nothing (a TimeoutError: an exception is always true,
    so ``exc or name`` printed "unreachable: " with no reason, an adversarial session)."""
    return " ".join(str(exc).split()) or type(exc).__name__
