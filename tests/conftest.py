"""Shared fixtures: one temporary BentoML home per test session, fresh names per test.

BentoML resolves its home once per process, so the whole session shares one temporary
store; tests stay independent by registering under a model name of their own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from models.store import StoredVersion
    from training.outcome import TrainingOutcome

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="argus-test-"))


def pytest_configure(config: pytest.Config) -> None:
    os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
    os.environ["ARGUS_HOME"] = str(_SESSION_HOME / "argus")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    for key in ("ARGUS_ADMIN_TOKEN", "ARGUS_FEEDBACK_TOKEN", "ARGUS_STATE_URL", "ARGUS_MODEL"):
        os.environ.pop(key, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's store and state: a test run leaves nothing in /tmp."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture
def model_name() -> str:
    """A model name no other test uses, so each test sees an empty registry."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def outcome() -> TrainingOutcome:
    """One run of ``argus train``'s pipeline with the defaults on digits (about 5 s)."""
    from training.config import TrainConfig
    from training.pipeline import run

    return run(TrainConfig(), gradient_check=True, out=None)


@pytest.fixture
def registered(outcome: TrainingOutcome, model_name: str) -> list[StoredVersion]:
    """Two versions of a fresh model name, both from the session's training run."""
    from training.publish import publish

    return [publish(outcome, model_name), publish(outcome, model_name)]


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> object:
    """One real ``redis-server`` on 127.0.0.1 for the session (``tests.redis_server``);
    skips without redis-server or redis-py, fails instead under ``ARGUS_REQUIRE_REDIS=1``.
    Share it safely by giving each test its own key prefix (``?prefix=`` in the URL)."""
    from tests.redis_server import session_server

    return session_server(request)
