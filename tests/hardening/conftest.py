"""Fixtures of the hardening suite.

``hardened`` is one real ``argus serve`` (2 workers) shared by the package's fuzzing,
bad-input, authentication and load tests: both tokens set, three stored versions, the
oldest of them corrupted in the server's own store copy (so activating it must be
refused). Tokens are fresh random strings, so grepping for them proves something.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from models.store import StoredVersion
from tests.hardening.support import corrupt, start_server, store_copy
from tests.harness import ArgusServer


@dataclass
class Hardened:
    server: ArgusServer
    versions: list[StoredVersion]  # oldest first; versions[0] is corrupted, [-1] is live
    admin_token: str
    feedback_token: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def feedback_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.feedback_token}"}


@pytest.fixture(scope="package")
def hardening_versions(outcome: Any) -> list[StoredVersion]:
    """Three versions of a fresh model name in the session's store, oldest first."""
    from training.publish import publish

    name = f"hd-{uuid.uuid4().hex[:8]}"
    return [publish(outcome, name) for _ in range(3)]


@pytest.fixture(scope="package")
def hardened(
    tmp_path_factory: pytest.TempPathFactory, hardening_versions: list[StoredVersion]
) -> Iterator[Hardened]:
    home = tmp_path_factory.mktemp("hardened")
    admin, feedback = f"adm-{uuid.uuid4().hex}", f"fbk-{uuid.uuid4().hex}"
    env = {"ARGUS_ADMIN_TOKEN": admin, "ARGUS_FEEDBACK_TOKEN": feedback}
    server = start_server(home, hardening_versions, env)
    try:
        corrupt(store_copy(server, hardening_versions[0]) / "model.onnx")
        yield Hardened(server, hardening_versions, admin, feedback)
    finally:
        server.stop()
