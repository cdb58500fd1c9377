"""The one way to open the shared state: ``open_state(url, home, ...)``.

It picks the backend from the URL and whether this machine's journal sits in front of
it (docs/architecture.md#shared-state): SQLite (one machine, the default) behind the
journal, so the request path appends to a local file and every reader ingests first;
Redis (replicas on several machines) written through, since replicas cannot read each
other's journal files, with a spill folder (``home/spill``) for the rows Redis cannot
take while it is away.
"""

from __future__ import annotations

from pathlib import Path

from errors import StateError
from state.shared import (
    DEFAULT_SPILL_MAX_BYTES,
    JournaledState,
    SharedState,
    WriteThroughState,
)
from state.types import StateOptions, StateStore


def open_state(
    url: str | None,
    home: Path,
    *,
    journal: bool | None = None,
    background: bool = False,
    spill: bool = True,
    spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
    **options: object,
) -> SharedState:
    """Open the shared state named by ``url``.

    ``None`` or ``"sqlite://"`` selects the SQLite file ``home / "state.sqlite3"``;
    ``"sqlite:///abs/path.db"`` an absolute path, ``"sqlite://rel.db"`` a path relative to
    ``home``; a ``?mode=ro`` suffix opens it read-only. ``"redis://[user:password@]host:port/db"``
    (or ``rediss://``) selects the Redis backend; ``?prefix=name:`` namespaces its keys
    (default ``argus:``). ``"redis+sentinel://host:port[,host:port...]/service/db"`` finds
    the primary of ``service`` through those Redis Sentinels, and follows a failover.

    ``journal``: put this machine's journal (``home/journal``) in front of the store;
    default yes for SQLite, and refused for Redis. ``spill``: without the journal, keep
    answered rows the store cannot take in ``home/spill`` until it takes them again.
    ``background``: ingest the journal (or replay the spill) in a thread of this process.
    ``spill_max_bytes``: how much one process may hold waiting for the store; beyond it,
    rows are dropped and counted. ``options`` are the fields of ``StateOptions``.
    """
    try:
        opts = StateOptions(**options)  # type: ignore[arg-type]
    except TypeError as exc:
        known = ", ".join(StateOptions.__dataclass_fields__)
        raise ValueError(f"unknown state option ({exc}); known options: {known}") from None
    home = Path(home).expanduser()
    local = url is None or url.startswith("sqlite://")
    if journal is None:  # a read-only store cannot take what the journal holds
        journal = local and not (url or "").endswith("?mode=ro")
    if journal and not local:
        raise ValueError("journal=True needs the SQLite backend: replicas cannot read it")
    inner = _backend(url, home, opts)
    if journal:
        return JournaledState(
            inner, home / "journal", background=background, spill_max_bytes=spill_max_bytes
        )
    return WriteThroughState(
        inner,
        home / "spill" if spill else None,
        background=background,
        spill_max_bytes=spill_max_bytes,
    )


def _backend(url: str | None, home: Path, opts: StateOptions) -> StateStore:
    if url is None or url.startswith("sqlite://"):
        from state.sqlite_store import SQLiteState

        rest = "" if url is None else url[len("sqlite://") :]
        rest, _, query = rest.partition("?")
        if query not in ("", "mode=ro"):
            raise StateError(f"state url {url!r}: the only supported query is ?mode=ro")
        if rest in (":memory:", "/:memory:"):
            raise StateError("state url: an in-memory SQLite database cannot be shared")
        path = home / rest if rest else home / "state.sqlite3"
        return SQLiteState(path, opts, read_only=query == "mode=ro")
    if url.startswith(("redis://", "rediss://", "redis+sentinel://")):
        try:
            from state.redis_store import RedisState
        except ImportError as exc:
            raise StateError(
                f"state url {url.split('://')[0]}://...: the Redis backend needs the redis "
                f"package ({exc}): pip install 'redis>=5'"
            ) from None
        return RedisState(url, opts)
    raise StateError(
        f"state url {url!r}: unsupported scheme (use sqlite://, redis:// or redis+sentinel://)"
    )
