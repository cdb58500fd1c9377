"""A worker never switches because the live pointer vanished (``service/runtime.py``).

The state is a real SQLite file; "losing" it is deleting the file, as a Redis restarted
empty loses its keys. Two runtimes stand for two workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.store import StoredVersion
from service.runtime import ModelRuntime
from state.opener import open_state
from state.shared import SharedState
from state.types import SHADOW, Candidate


def worker(state: SharedState, name: str) -> ModelRuntime:
    def restore(version: str, held: Candidate | None) -> bool:
        if held is not None and state.get_candidate(name) is None:
            state.set_candidate(name, held)
        return state.restore_live(name, version, 5.0, actor=f"worker {os.getpid()}")

    return ModelRuntime(
        name,
        lambda: state.get_live(name),
        candidate=lambda: state.get_candidate(name),
        restore=restore,
    )


def lose(home: Path) -> SharedState:
    """Delete the state file and open an empty one in its place."""
    for path in home.glob("state.sqlite3*"):
        path.unlink()
    return open_state(None, home)


def test_a_vanished_pointer_is_kept_and_restored_once(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    old, new = registered
    name = old.name
    state = open_state(None, tmp_path)
    state.set_live(name, old.version, "activate", 1.0)  # the operator chose the older one
    state.set_candidate(name, Candidate(SHADOW, new.version, 1.0, 2.0))
    a, b = worker(state, name), worker(state, name)
    a.refresh(), b.refresh()
    assert a.live.version == b.live.version == old.version
    assert a.candidate is not None and a.candidate[0].version == new.version
    state.close()

    state = lose(tmp_path)  # the pointer and the shadow setting are gone
    a._live_version = b._live_version = lambda: state.get_live(name)
    a._candidate_setting = b._candidate_setting = lambda: state.get_candidate(name)
    for w in (a, b):
        w._restore = worker(state, name)._restore

    assert a.refresh() is False  # keeps serving, restores the pointer and the shadow
    assert b.refresh() is False  # finds it restored: nothing to do
    assert a.live.version == b.live.version == old.version
    assert state.get_live(name) == old.version
    assert [(s.version, s.reason) for s in state.history(name)] == [(old.version, "restored")]
    setting = state.get_candidate(name)
    assert setting is not None and setting.version == new.version
    assert b.candidate is not None and b.candidate[0].version == new.version

    fresh = worker(state, name)  # a worker started after the loss follows the pointer
    fresh.refresh()
    assert fresh.live.version == old.version
    state.close()


def test_a_worker_that_never_saw_a_pointer_serves_the_newest_then_converges(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    old, new = registered
    name = old.name
    state = open_state(None, tmp_path)
    newcomer = worker(state, name)
    newcomer.refresh()
    assert newcomer.live.version == new.version  # no pointer ever: the newest, as always
    assert state.get_live(name) is None  # and it restores nothing it never saw
    veteran = worker(state, name)
    veteran.pointer_seen = old.version  # it served the older one before the loss
    veteran._live = veteran.load(old.version)
    veteran.refresh()
    assert state.get_live(name) == old.version  # the veteran restored its pointer
    assert newcomer.refresh() is True and newcomer.live.version == old.version
    state.close()


def test_a_failed_pointer_read_changes_nothing(
    tmp_path: Path, registered: list[StoredVersion]
) -> None:
    from errors import StateError

    old, _ = registered
    state = open_state(None, tmp_path)
    state.set_live(old.name, old.version, "activate", 1.0)
    w = worker(state, old.name)
    w.refresh()

    def away() -> str | None:
        raise StateError("the state is away (test)")

    w._live_version = away
    assert w.refresh() is False and w.live.version == old.version
    assert w.last_error is not None and "away" in w.last_error
    state.close()
