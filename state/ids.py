"""Prediction ids: unique across worker processes, replicas and restarts, with no
coordination.

Ids (``new_ids``) are UUIDv7-shaped hex strings: 48 bits of Unix milliseconds, then 74
random bits from ``os.urandom``. They sort by creation time (to the millisecond), and the
random part makes collisions across processes and restarts negligible (about 1 in 2**37
even for 2**37 ids created in the same millisecond).
"""

from __future__ import annotations

import os
import time


def new_ids(n: int, now: float | None = None) -> list[str]:
    """``n`` UUIDv7-shaped ids (32 hex chars) for time ``now`` (default: the clock).

    Examples
    --------
    >>> ids = new_ids(3, now=0.0)
    >>> len(set(ids)), ids[0][:12], ids[0][12]
    (3, '000000000000', '7')
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    prefix = f"{ms:012x}"  # 48-bit milliseconds, then 10 bytes per id, set in strides:
    raw = bytearray(os.urandom(10 * n))
    raw[0::10] = bytes(raw[0::10]).translate(_VERSION_7)  # 0111 xxxx: version 7
    raw[2::10] = bytes(raw[2::10]).translate(_VARIANT_10)  # 10xx xxxx: the RFC variant
    text = raw.hex()
    return [prefix + text[i : i + 20] for i in range(0, 20 * n, 20)]


_VERSION_7 = bytes(0x70 | (b & 0x0F) for b in range(256))
_VARIANT_10 = bytes(0x80 | (b & 0x3F) for b in range(256))


SHADOW_SUFFIX = "#shadow"
"""Appended to a row's id to log a shadow's prediction of the same row beside it."""


def shadow_id(row_id: str) -> str:
    """The log id of a shadow's prediction of row ``row_id``.

    Examples
    --------
    >>> shadow_id("req-1")
    'req-1#shadow'
    """
    return row_id + SHADOW_SUFFIX
