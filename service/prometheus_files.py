"""Read a worker's metrics file that is still being created as empty, not as an error.

Under ``bentoml serve`` every worker keeps its counters and histograms in files of
``PROMETHEUS_MULTIPROC_DIR`` (one per metric type and process), and ``/metrics`` merges
all of them. prometheus_client creates such a file and only then sizes it, so for a
moment it exists with 0 bytes; a scrape that reads it then fails on the missing header
(``struct.error``) and the whole ``/metrics`` answers 500. That happens when a worker
creates its first histogram under load (the first prediction of a version), and a
worker killed in that moment leaves the empty file behind, failing every scrape after.

``install()`` makes the reader treat a file shorter than its 4-byte header as holding
nothing yet, which is what it holds. Files with a header are read by prometheus_client
itself, unchanged. ``tests/service/test_prometheus_files.py`` checks both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.mmap_dict import MmapedDict

_HEADER_BYTES = 4  # the "bytes used" integer every file starts with


def _tolerant(read: Callable[[str], Any]) -> Callable[[str], Any]:
    def read_all_values_from_file(filename: str) -> Any:
        with open(filename, "rb") as f:
            if len(f.read(_HEADER_BYTES)) < _HEADER_BYTES:
                return iter(())
        return read(filename)

    read_all_values_from_file.argus_tolerant = True  # type: ignore[attr-defined]
    return read_all_values_from_file


def install() -> None:
    """Patch ``MmapedDict.read_all_values_from_file`` once per process."""
    current = MmapedDict.read_all_values_from_file
    if getattr(current, "argus_tolerant", False):
        return
    MmapedDict.read_all_values_from_file = staticmethod(_tolerant(current))  # type: ignore[method-assign]


def forget_dead_workers(directory: str | None = None) -> list[int]:
    """Remove the per-process gauge files (``gauge_live*_{pid}.db``) of processes that are
    gone, as prometheus_client's ``mark_process_dead`` does; the pids forgotten.

    ``argus_state_available`` has one series per live worker (``multiprocess_mode=
    "liveall"``); BentoML replaces a killed worker without telling prometheus_client, so
    without this the dead worker's last value would be scraped forever.
    """
    import os
    from pathlib import Path

    from prometheus_client import multiprocess

    folder = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return []
    dead = []
    for path in Path(folder).glob("gauge_live*_*.db"):
        try:
            pid = int(path.stem.rsplit("_", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            dead.append(pid)
        except PermissionError:  # alive, another user's
            continue
    for pid in sorted(set(dead)):
        multiprocess.mark_process_dead(pid, folder)
    return sorted(set(dead))
