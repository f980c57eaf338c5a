"""Which pieces a node holds, on the wire: a BitTorrent-style bitfield, base64 in JSON."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable


def encode(held: Iterable[int], count: int) -> str:
    """Most significant bit first: bit 7 of byte 0 is piece 0."""
    bits = bytearray((count + 7) // 8)
    for i in held:
        bits[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bits).decode()


def _checked(text: object, count: int) -> bytes:
    """The field's bytes; a malformed field (wrong type or length, bits past the end) raises ValueError."""
    if not isinstance(text, str):
        raise ValueError("bitfield must be a base64 string")
    try:
        bits = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bitfield is not base64: {exc}") from None
    if len(bits) != (count + 7) // 8:
        raise ValueError(f"bitfield has {len(bits)} bytes; {count} pieces need {(count + 7) // 8}")
    if count % 8 and bits[-1] & (0xFF >> (count % 8)):
        raise ValueError("bitfield has bits set past the last piece")
    return bits


def decode(text: object, count: int) -> set[int]:
    """The held pieces; a malformed field (wrong type or length, bits past the end) raises ValueError."""
    bits = _checked(text, count)
    return {i for i in range(count) if bits[i // 8] & (0x80 >> (i % 8))}


# -- the same bits as one integer: what the tracker ranks with and stores (bit order of the wire field) --
def width(count: int) -> int:
    """Bits of a ``count``-piece field: whole bytes, piece 0 the most significant bit."""
    return 8 * ((count + 7) // 8)


def to_mask(held: Iterable[int], count: int) -> int:
    top = width(count) - 1
    mask = 0
    for i in held:
        mask |= 1 << (top - i)
    return mask


def from_mask(mask: int, count: int) -> set[int]:
    top = width(count) - 1
    return {i for i in range(count) if mask >> (top - i) & 1}


def encode_mask(mask: int, count: int) -> str:
    """``encode`` of the same pieces, without building a set: O(bytes)."""
    return base64.b64encode(mask.to_bytes(width(count) // 8, "big")).decode()


def decode_mask(text: object, count: int) -> int:
    """``decode`` as an integer (same checks), O(bytes): the tracker never needs the pieces one by one."""
    return int.from_bytes(_checked(text, count), "big")
