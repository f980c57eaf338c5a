"""JSON read from another node or a client: ``loads`` fails only with ValueError, whatever the text.

``json.loads`` raises RecursionError for arrays or objects nested a few
thousand deep, which fit in any body a node accepts (64 KiB): every caller
that caught ValueError for a malformed document let that one through, as a
traceback and a dead task (an adversarial session's lying neighbour).
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes | bytearray) -> Any:
    """The document in ``text``; ValueError when it is not JSON, or nested too deep to read."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
