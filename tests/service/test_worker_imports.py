"""What a serving worker imports: none of the heavy libraries monitoring once pulled in.

Each module a worker imports is resident in every worker process: ``scipy.stats`` alone
cost about 60 MB per worker (``bench/README.md``). The p-values come from
``monitoring/kolmogorov.py`` and ``monitoring/tails.py`` instead; scipy, scikit-learn and
pandas stay test-time references, and torch belongs to training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEVER = ("scipy", "sklearn", "pandas", "torch", "tritonclient", "matplotlib", "training")

_PROBE = """
import json, sys
import service.service
from monitoring import compare, drift, ks, multivariate, windows
tops = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps(tops))
"""


def test_a_worker_imports_no_heavy_library(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGUS_", "BENTOML_"))}
    env.update(
        ARGUS_HOME=str(tmp_path),
        BENTOML_HOME=str(tmp_path / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        PYTHONPATH=str(ROOT),
    )
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "service" in imported and "monitoring" in imported
    assert imported.isdisjoint(NEVER), sorted(imported & set(NEVER))
