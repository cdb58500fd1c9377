"""Loaded model versions and the live pointer, as seen by one worker.

A worker keeps a small cache of loaded versions. Each request takes the live
``LoadedVersion`` once, at its start, and uses only that object, so a request in flight
finishes on the session it started with even if the pointer moves meanwhile. A
background poll (``refresh``) follows the pointer in the shared state.

A worker never switches because the pointer *vanished* (a Redis restarted empty or
flushed): once it has seen a pointer, it keeps serving its version when the pointer is
gone, and re-asserts it through ``restore`` (reason ``restored``; of several workers
exactly one succeeds), with its shadow or canary. Only a worker that never saw a pointer
serves the newest stored version. A failed read of the pointer changes nothing either.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from errors import ModelNotFoundError, ModelVerificationError, StateError
from models import store
from monitoring.profile import ReferenceProfile
from state.types import SHADOW, Candidate

log = logging.getLogger("argus.runtime")


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float32, rows x classes
    labels: np.ndarray  # int64
    confidences: np.ndarray  # float32
    anomaly_scores: np.ndarray  # float64
    anomalous: np.ndarray  # bool

    def slice(self, lo: int, hi: int) -> Prediction:
        """Rows ``lo`` to ``hi`` (views, no copy)."""
        return Prediction(
            self.probabilities[lo:hi], self.labels[lo:hi], self.confidences[lo:hi],
            self.anomaly_scores[lo:hi], self.anomalous[lo:hi],
        )  # fmt: skip

    def take(self, index: np.ndarray) -> Prediction:
        """The rows at ``index``."""
        return Prediction(
            self.probabilities[index], self.labels[index], self.confidences[index],
            self.anomaly_scores[index], self.anomalous[index],
        )  # fmt: skip


class LoadedVersion:
    """One verified version with its onnxruntime session and reference profile."""

    def __init__(self, stored: store.StoredVersion, threads: int = 1) -> None:
        store.verify(stored)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(stored.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelVerificationError(f"{stored.tag} does not load: {exc}") from None
        self.stored = stored
        self.card = stored.card
        self.name = stored.name
        self.version = stored.version
        self.n_features = int(stored.card.n_features)
        self.n_classes = int(stored.card.n_classes)
        self.input_name = stored.card.input_name
        self.output_name = stored.card.output_name
        self.profile = ReferenceProfile.from_dict(stored.read_profile())
        self.detector = self.profile.anomaly

    def predict(self, X: np.ndarray) -> Prediction:
        (probabilities,) = self.session.run([self.output_name], {self.input_name: X})
        probabilities = np.asarray(probabilities, dtype=np.float32)
        labels = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(labels)), labels]
        scores = self.detector.score(X)
        return Prediction(
            probabilities, labels, confidences, scores, scores > self.detector.threshold_
        )


class ModelRuntime:
    """The live version of one model name for this worker, following the shared pointer.

    ``live_version`` is a callable returning the pointer's version (or ``None`` when no
    pointer was ever set, in which case the newest stored version serves).
    """

    def __init__(
        self,
        name: str,
        live_version: Callable[[], str | None],
        threads: int = 1,
        cache_size: int = 3,
        model_source: Path | None = None,
        candidate: Callable[[], Candidate | None] = lambda: None,
        restore: Callable[[str, Candidate | None], bool] | None = None,
    ) -> None:
        self.name = name
        self._restore = restore
        self.pointer_seen: str | None = None  # the last pointer read (None: never one)
        self.lost = False  # the pointer this worker had seen is gone: keep what serves
        self._candidate_setting = candidate
        self.candidate: tuple[Candidate, LoadedVersion] | None = None
        self.had_shadow = False  # a shadow ran in this worker's life: labels credit it
        self.model_source = model_source
        self._live_version = live_version
        self.threads = threads
        self.cache_size = cache_size
        self._cache: OrderedDict[str, LoadedVersion] = OrderedDict()
        self._live: LoadedVersion | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self._newest: tuple[int, str] | None = None  # (store marker, newest version)

    @property
    def live(self) -> LoadedVersion:
        live = self._live
        if live is None:
            raise ModelNotFoundError(f"no version of {self.name} is loaded")
        return live

    @property
    def ready(self) -> bool:
        return self._live is not None

    def sync(self) -> list[str]:
        """Import versions this store lacks from the shared model source, if one is set."""
        if self.model_source is None:
            return []
        imported, problems = store.sync_from(self.model_source, self.name)
        for problem in problems:
            log.error("model source: %s", problem)
        return [v.version for v in imported]

    def target_version(self) -> str:
        version = self._live_version()
        if version is not None:
            self.pointer_seen, self.lost = version, False
            return version
        if self.pointer_seen is not None and self._live is not None:
            self._pointer_lost(self._live)  # never "newest" because the pointer vanished
            return self._live.version
        if store.store_marker(self.name) == 0:
            self.sync()
        marker = store.store_marker(self.name)  # re-list the store only when it changed
        if self._newest is None or self._newest[0] != marker:
            newest = store.newest(self.name)
            if newest is None:
                raise ModelNotFoundError(
                    f"the store holds no version of {self.name}: run `argus train` first"
                )
            self._newest = (marker, newest.version)
        return self._newest[1]

    def load(self, version: str) -> LoadedVersion:
        """Load (or take from the cache) ``version``; raises if it fails to verify or load."""
        with self._lock:
            cached = self._cache.get(version)
            if cached is not None:
                self._cache.move_to_end(version)
                return cached
        try:
            stored = store.get_version(self.name, version)
        except ModelNotFoundError:
            if not self.sync():  # another replica registered it: fetch it, then retry
                raise
            stored = store.get_version(self.name, version)
        loaded = LoadedVersion(stored, threads=self.threads)
        with self._lock:
            self._cache[version] = loaded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return loaded

    def refresh(self) -> bool:
        """Follow the pointer and the candidate; returns True when the live version
        changed.

        A version that fails to load leaves the current one serving; the error is kept in
        ``last_error`` and logged once per distinct message.
        """
        changed = self._follow_live()
        if not self.lost:  # a lost state's "no candidate" is a loss too, not a stop
            self._follow_candidate()
        return changed

    def _pointer_lost(self, live: LoadedVersion) -> None:
        """The pointer this worker followed is gone: re-assert it from what serves."""
        if not self.lost:
            log.error(
                "the live pointer of %s vanished from the shared state (was %s): "
                "keeping %s and restoring the pointer", self.name, self.pointer_seen,
                live.version,
            )  # fmt: skip
        self.lost = True
        if self._restore is None:
            return
        held = self.candidate[0] if self.candidate is not None else None
        try:
            if self._restore(live.version, held):
                log.warning("restored the live pointer of %s to %s", self.name, live.version)
        except StateError as exc:
            log.error("live pointer of %s not restored yet: %s", self.name, exc)

    def _follow_candidate(self) -> None:
        """Load the shadow or canary the shared state names (``None`` ends it)."""
        try:
            setting = self._candidate_setting()
        except Exception as exc:  # the state is away: keep what this worker had
            log.error("candidate of %s not read: %s", self.name, exc)
            return
        if setting is None or (self._live is not None and setting.version == self._live.version):
            self.candidate = None
            return
        self.had_shadow |= setting.role == SHADOW
        if self.candidate is not None and self.candidate[0] == setting:
            return
        try:
            self.candidate = (setting, self.load(setting.version))
            log.info("%s of %s: %s", setting.role, self.name, setting.version)
        except (ModelNotFoundError, ModelVerificationError, OSError, ValueError) as exc:
            log.error("%s %s:%s not loaded: %s", setting.role, self.name, setting.version, exc)
            self.candidate = None

    def _follow_live(self) -> bool:
        try:
            target = self.target_version()
            if self._live is not None and self._live.version == target:
                return False
            loaded = self.load(target)
        except (
            ModelNotFoundError, ModelVerificationError, StateError, OSError, ValueError,
        ) as exc:  # fmt: skip
            message = str(exc)
            if message != self.last_error:
                log.error("live version not switched: %s", message)
            self.last_error = message
            return False
        previous = self._live.version if self._live else None
        self._live = loaded
        self.last_error = None
        log.info("serving %s:%s (was %s)", self.name, loaded.version, previous)
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "live": self._live.version if self._live else None,
            "candidate": None if self.candidate is None else self.candidate[0].__dict__,
            "loaded": list(self._cache),
            "last_error": self.last_error,
        }
