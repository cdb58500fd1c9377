"""Shared fixtures: one temporary BentoML home per test session, fresh names per test.

BentoML resolves its home once per process, so the whole session shares one temporary
store; tests stay independent by registering under a model name of their own.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="argus-test-"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
    os.environ["ARGUS_HOME"] = str(_SESSION_HOME / "argus")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    for key in ("ARGUS_ADMIN_TOKEN", "ARGUS_FEEDBACK_TOKEN", "ARGUS_STATE_URL", "ARGUS_MODEL"):
        os.environ.pop(key, None)


@pytest.fixture
def model_name() -> str:
    """A model name no other test uses, so each test sees an empty registry."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME
