"""The models one worker serves: a ``ModelRuntime`` per name, each on its own pointer.

``argus serve`` serves every model name in the store, or the names ``ARGUS_MODELS``
lists; ``ARGUS_MODEL`` is the default, the one a request that names no model gets. A
model registered while the server runs (``argus train``, ``argus models register-onnx``
or ``sync``) is found at the next poll (``ARGUS_POLL_SECONDS``): the store's models
folder changes when a name is added, so the store is listed again then, and every
``rescan_seconds`` besides (a name whose first version was still being written when the
folder changed lists no version yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from errors import ModelNotFoundError
from models import store
from service.runtime import ModelRuntime

log = logging.getLogger("argus.service")


class Fleet:
    """Every served model's runtime, by name; ``default`` answers unnamed requests.

    ``make`` builds the runtime of a newly found name; ``names`` says which names to
    serve now (default: every name in the store). Both are arguments so tests can
    give their own.
    """

    def __init__(
        self,
        runtimes: Iterable[ModelRuntime],
        default: str,
        *,
        make: Callable[[str], ModelRuntime] | None = None,
        names: Callable[[], Iterable[str]] | None = None,
        marker: Callable[[], int] = store.names_marker,
        clock: Callable[[], float] = time.monotonic,
        rescan_seconds: float = 5.0,
    ) -> None:
        self.runtimes: dict[str, ModelRuntime] = {r.name: r for r in runtimes}
        if default not in self.runtimes:
            raise ValueError(f"default model {default!r} has no runtime")
        self.default = default
        self._make = make
        self._names = names or store.model_names
        self._marker = marker
        self._clock = clock
        self.rescan_seconds = rescan_seconds
        self._seen: tuple[int, float] | None = None  # (marker, time) of the last listing
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.runtimes)

    def get(self, name: str | None = None) -> ModelRuntime:
        """The runtime of ``name`` (default: the default model)."""
        runtime = self.runtimes.get(self.default if name is None else name)
        if runtime is None:
            served = ", ".join(sorted(self.runtimes))
            raise ModelNotFoundError(f"model {name!r} is not served here (served: {served})")
        return runtime

    def discover(self) -> list[str]:
        """Add a runtime for every name to serve that has none yet; the names added."""
        if self._make is None:
            return []
        marker, now = self._marker(), self._clock()
        if self._seen is not None:
            seen_marker, seen_at = self._seen
            if marker == seen_marker and now - seen_at < self.rescan_seconds:
                return []
        self._seen = (marker, now)
        added = []
        with self._lock:
            for name in self._names():
                if name not in self.runtimes:
                    self.runtimes[name] = self._make(name)
                    added.append(name)
        for name in added:
            log.info("now serving model %s", name)
        return added

    def refresh(self) -> bool:
        """Find new models, then let every runtime follow its pointer; True if any
        live version changed."""
        self.discover()
        changed = False
        for runtime in list(self.runtimes.values()):
            changed |= runtime.refresh()
        return changed

    @property
    def ready(self) -> bool:
        """Ready when the default model serves a version."""
        return self.get().ready

    def describe(self) -> dict[str, object]:
        return {name: r.describe() for name, r in self.runtimes.items()}


__all__ = ["Fleet", "ModelNotFoundError"]
