"""The journal files behind ``state/shared.py``: framing, one writer, progress, and the
exactly-once ingestion of a folder of them.

Each process appends framed records -- a ``FRAME`` header (magic, payload length,
CRC-32 of the payload), then the payload (``state/records.py``) -- to a file of its
own, ``journal-{pid}-{ns}-{random}.log``, and holds an exclusive ``flock`` on the
matching ``.owner`` file while that file is its current one, so a reader can tell a
live writer from a dead one. ``{stem}.offset`` keeps how far the
file was ingested (8 bytes, little-endian); ``{stem}.lock`` serialises its readers.

``JournalFolder`` is one folder of such files as every process of a machine sees it: this
process's writer, and ``ingest``, which hands every complete record no one has ingested
yet to a ``store`` callback, file by file under the file's lock, then records the
progress. A file whose writer is gone is deleted once ingested. The service uses two
folders: ``journal/`` in front of SQLite (every answered row goes through it) and
``spill/`` behind Redis (only rows the store could not take).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
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


class JournalFolder:
    """Every journal file of ``directory``: this process's ``writer`` and the exactly-once
    ingestion of all of them (the module doc). ``store`` receives the payloads of one file
    not yet ingested, oldest first, and returns the rows they held; it must raise (a
    ``StateError``) unless it stored them all: the file's progress moves only after it
    returns."""

    def __init__(self, directory: Path, store: Callable[[list[bytes]], int]) -> None:
        self.directory = Path(directory)
        self.writer = Journal(self.directory)
        self._store = store
        self._offsets: dict[str, int] = {}

    def files(self) -> list[Path]:
        """The folder's journal files, in name order (per process, oldest first)."""
        try:
            names = sorted(p.name for p in self.directory.glob("journal-*.log"))
        except OSError:
            return []
        return [self.directory / name for name in names]

    def ingest(self) -> int:
        """Hand every record no process has ingested yet to ``store``; the rows moved."""
        return sum(self._ingest_file(path) for path in self.files())

    def waiting(self) -> list[bytes]:
        """The payloads not yet ingested, read without taking any lock (a snapshot)."""
        payloads = []
        for path in self.files():
            stem = path.name[: -len(".log")]
            try:
                offset = read_offset(self.directory / f"{stem}.offset")
                payloads += [payload for _, payload in read_frames(path, offset)]
            except FileNotFoundError:
                continue  # ingested and retired meanwhile
        return payloads

    def _ingest_file(self, path: Path) -> int:
        stem = path.name[: -len(".log")]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        if self._offsets.get(path.name) == size and not self._orphan(stem):
            return 0  # nothing new (fast path, no lock)
        try:
            lock = os.open(self.directory / f"{stem}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError:
            return 0
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                return 0
            # Decide "writer gone" BEFORE reading: a writer that appends and then rotates
            # releases its owner lock, and a file judged after the read could lose the
            # frame appended meanwhile.
            gone = self._orphan(stem)
            offset_path = self.directory / f"{stem}.offset"
            payloads: list[bytes] = []
            end = read_offset(offset_path)
            for frame_end, payload in read_frames(path, end):
                payloads.append(payload)
                end = frame_end
            moved = 0
            if payloads:
                moved = self._store(payloads)
                write_offset(offset_path, end)
            self._offsets[path.name] = end
            if gone:  # its writer was gone before we read: anything after `end` is torn
                for suffix in (".log", ".offset", ".owner", ".lock"):
                    (self.directory / f"{stem}{suffix}").unlink(missing_ok=True)
                self._offsets.pop(path.name, None)
            return moved
        finally:
            os.close(lock)

    def _orphan(self, stem: str) -> bool:
        """True when no process holds the journal's owner lock (its writer is gone)."""
        if self.writer.path is not None and self.writer.path.name == f"{stem}.log":
            return False
        try:
            fd = os.open(self.directory / f"{stem}.owner", os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing releases a lock we may have taken
        return True
