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
