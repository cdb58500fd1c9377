"""``bentoml build`` makes the serving Bento from bentofile.yaml: the service and the
packages it imports, and no torch and no training code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_the_bento_serves_without_torch(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--version", "ci", str(ROOT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    bento = tmp_path / "bentoml" / "bentos" / "argus" / "ci"
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service.service:Argus"
    assert {"name": "ARGUS_HOST", "value": "0.0.0.0", "stage": "all"} in info["envs"]
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert {"/predict", "/feedback", "/models/activate", "/models/rollback"} <= routes
    src = bento / "src"
    for package in ("argus", "models", "monitoring", "service"):
        assert (src / package / "__init__.py").is_file(), package
    assert not (src / "training").exists() and not (src / "tests").exists()
    wanted = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime" in wanted and "prometheus-client" in wanted
    assert "torch" not in wanted and "scikit-learn" not in wanted
