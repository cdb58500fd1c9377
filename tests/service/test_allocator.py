"""service/allocator.py: the fixed mmap threshold, and what it does to freed temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")

_PROBE = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    from service import allocator

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])

    installed = allocator.install() if sys.argv[1] == "install" else False

    def work():  # a thread's temporaries: 2 MB and 1 MB blocks, freed, and a survivor
        keep = []
        for _ in range(20):
            a = np.ones(2 << 18)  # 2 MB
            b = np.ones(1 << 17)  # 1 MB
            keep.append(np.ones(16))
            del a, b

    before = rss_kb()
    for _ in range(4):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    print(installed, rss_kb() - before)
    """
)


def _run(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    installed, grown = out.stdout.split()
    return installed, int(grown)


def test_install_keeps_freed_temporaries_out_of_rss() -> None:
    installed, grown = _run("install")
    assert installed == "True"
    assert grown < 2048  # KiB: every large block went back to the system when freed
    _, default_grown = _run("default")
    assert default_grown > grown + 2048  # glibc's adjusted threshold keeps them in arenas


def test_install_is_idempotent_and_respects_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service import allocator

    monkeypatch.setattr(allocator, "_installed", False)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.setenv(name, "65536" if name.endswith("_") else "4")
        assert allocator.install() is False  # the operator chose
        monkeypatch.delenv(name)
    assert allocator.install() is True
    assert allocator.install() is True
