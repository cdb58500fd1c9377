"""A metrics file caught while a worker creates it (0 bytes) does not fail /metrics."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from service import prometheus_files


def _counter_file(directory: Path, pid: int, value: float) -> None:
    """A worker's counter file as prometheus_client writes it."""
    f = MmapedDict(str(directory / f"counter_{pid}.db"))
    key = mmap_key("argus_predictions", "argus_predictions_total", ["model"], ["m"], "Rows.")
    f.write_value(key, value, 0.0)
    f.close()


def _scrape(directory: Path) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry).decode()


def test_an_empty_file_reads_as_no_values_and_the_others_still_count(tmp_path: Path) -> None:
    _counter_file(tmp_path, 101, 3.0)
    _counter_file(tmp_path, 102, 4.0)
    (tmp_path / "histogram_103.db").touch()  # created, not yet sized
    (tmp_path / "counter_104.db").write_bytes(b"\x08\x00")  # shorter than the header
    prometheus_files.install()
    prometheus_files.install()  # once per process: a second call changes nothing
    assert getattr(MmapedDict.read_all_values_from_file, "argus_tolerant", False)
    text = _scrape(tmp_path)
    assert 'argus_predictions_total{model="m"} 7.0' in text


def test_a_corrupted_file_still_fails_loudly(tmp_path: Path) -> None:
    _counter_file(tmp_path, 101, 3.0)
    # a header claiming an entry longer than the file: prometheus_client's own check
    (tmp_path / "counter_102.db").write_bytes(struct.pack("ii", 64, 0) + struct.pack("i", 500))
    prometheus_files.install()
    with pytest.raises((RuntimeError, struct.error)):
        _scrape(tmp_path)


def test_forget_dead_workers_removes_only_the_gone_processes_gauges(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from service.prometheus_files import forget_dead_workers

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    mine = os.getpid()
    for name in (f"gauge_liveall_{gone.pid}.db", f"gauge_liveall_{mine}.db",
                 f"counter_{gone.pid}.db"):  # fmt: skip
        (tmp_path / name).write_bytes(b"\0" * 8)
    assert forget_dead_workers(str(tmp_path)) == [gone.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone.pid}.db", f"gauge_liveall_{mine}.db"]
    )  # a dead worker's counters stay: they are summed into the totals
