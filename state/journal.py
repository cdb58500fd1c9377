"""The journal files behind ``state/shared.py``: framing, one writer, progress.

Each process appends framed records -- a ``FRAME`` header (magic, payload length,
CRC-32 of the payload), then the payload (``state/records.py``) -- to a file of its
own, ``journal-{pid}-{ns}-{random}.log``, and holds an exclusive ``flock`` on the
matching ``.owner`` file while that file is its current one, so a reader can tell a
live writer from a dead one. ``{stem}.offset`` keeps how far the
file was ingested (8 bytes, little-endian); ``{stem}.lock`` serialises its readers.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from errors import StateError

MAGIC = b"ARJ1"
FRAME = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload


def frame(payload: bytes) -> bytes:
    """``payload`` with its ``FRAME`` header, as ``Journal.append`` writes it."""
    return FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_frames(path: Path, offset: int) -> Iterator[tuple[int, bytes]]:
    """Complete, checksummed records of ``path`` from ``offset``: (end offset, payload).

    Stops at the first incomplete or damaged frame (a write still in progress, or the
    torn tail of a process killed in the middle of a write whose response never left).
    """
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    at = 0
    while at + FRAME.size <= len(data):
        magic, length, crc = FRAME.unpack_from(data, at)
        end = at + FRAME.size + length
        if magic != MAGIC or end > len(data):
            return
        payload = data[at + FRAME.size : end]
        if zlib.crc32(payload) != crc:
            return
        at = end
        yield offset + at, payload


class Journal:
    """This process's append-only journal file in ``directory``; rotates by size."""

    def __init__(self, directory: Path, rotate_bytes: int = 4 << 20) -> None:
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._owner_fd = -1
        self.path: Path | None = None
        self._size = 0

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"journal-{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        path = self.directory / f"{name}.log"
        owner = os.open(self.directory / f"{name}.owner", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(owner, fcntl.LOCK_EX)  # held for this file's life: "owner alive"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
            fcntl.flock(self._owner_fd, fcntl.LOCK_UN)  # the old file may now be retired
            os.close(self._owner_fd)
        self._fd, self._owner_fd, self.path, self._size = fd, owner, path, 0
        self._pid = os.getpid()

    def append(self, payload: bytes) -> None:
        """Append ``payload`` as one framed record: durable once this returns."""
        record = frame(payload)
        with self._lock:
            try:
                if self._pid != os.getpid() or self._size >= self.rotate_bytes:
                    self._open()  # first use, after fork, or rotation
                written = os.write(self._fd, record)
            except OSError as exc:
                raise StateError(f"prediction journal in {self.directory}: {exc}") from None
            if written != len(record):
                raise StateError(f"prediction journal: short write ({written}/{len(record)})")
            self._size += written

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid() and self._fd >= 0:
                os.close(self._fd)
                fcntl.flock(self._owner_fd, fcntl.LOCK_UN)
                os.close(self._owner_fd)
            self._fd = self._owner_fd = -1
            self._pid = -1


_OFFSET = struct.Struct("<Q")


def read_offset(path: Path) -> int:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return _OFFSET.unpack(data)[0] if len(data) == _OFFSET.size else 0


def write_offset(path: Path, offset: int) -> None:
    """Overwrite the 8-byte progress in place: one pwrite, no rename, no new inode.

    A lost or stale offset only makes the next reader re-ingest records it will skip
    by id, so a plain in-place write is enough.
    """
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.pwrite(fd, _OFFSET.pack(offset), 0)
    finally:
        os.close(fd)
