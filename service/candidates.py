"""Candidates on live traffic, in one worker: the canary's share of requests, and the
shadow that predicts answered rows off the response path.

A **canary** answers ``share`` of the requests: the same rows' ids always go to the same
version (a hash of the request's first id), a request without ids is chosen at random.
A **shadow** predicts ``share`` of the rows the live version answered, after the answer
has left: the rows wait in a bounded queue for this worker's shadow task, which lets them
gather for ``GATHER_SECONDS``, then predicts the group in one onnxruntime call and logs
it in one journal record under the candidate's version, each row under its live id plus
``state.ids.SHADOW_SUFFIX``, so a label for the row joins both. When the queue is full
the rows are dropped and counted (``argus_candidate_dropped_total``): a shadow that cannot
keep up never delays answers nor grows memory without bound.

The task runs on the event loop, between answers, and a group is small (``MAX_GROUP_ROWS``
rows: a fraction of a millisecond). Not in a thread of its own: such a thread, even at
nice 19, holds the GIL while the kernel makes it wait for a core, and the answers wait
with it. Gathering is what makes the shadow cheap: a group of many requests costs the
worker far less than as many groups of one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable

import numpy as np

from errors import StateError
from service.metrics import ServiceMetrics
from service.runtime import LoadedVersion, ModelRuntime
from state.ids import shadow_id
from state.records import PredictionBatch
from state.shared import SharedState
from state.types import CANARY, SHADOW

log = logging.getLogger("argus.candidates")

MAX_PENDING = 64
"""Requests' worth of rows a worker's shadow queue holds before it drops."""
GATHER_SECONDS = 0.05
"""How long the shadow lets rows gather before it predicts them: the shadow is not in a
hurry, and a group of many requests costs the worker far less than as many groups."""
MAX_GROUP = 32
MAX_GROUP_ROWS = 256
"""Requests, and rows, the shadow predicts in one call: past a few hundred rows numpy's
BLAS splits the anomaly score across threads and a group costs more than its parts."""


def route(
    runtime: ModelRuntime, ids: list[str] | None, draw: Callable[[], float] = random.random
) -> LoadedVersion:
    """The version that answers a request to ``runtime``'s model: its canary for
    ``share`` of the requests, the live version otherwise."""
    live = runtime.live
    candidate = runtime.candidate
    if candidate is None or candidate[0].role != CANARY:
        return live
    setting, loaded = candidate
    return loaded if sticky_draw(ids, draw) < setting.share else live


def sticky_draw(ids: list[str] | None, draw: Callable[[], float] = random.random) -> float:
    """A number in [0, 1): a hash of the first id when there are ids, else ``draw()``."""
    if not ids:
        return draw()
    digest = hashlib.blake2b(ids[0].encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Shadow:
    """This worker's shadow queue and the task that empties it."""

    def __init__(
        self,
        state: SharedState,
        metrics: ServiceMetrics,
        *,
        max_pending: int = MAX_PENDING,
        seed: int | None = None,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.max_pending = max_pending
        self._seed = seed
        self._rng: np.random.Generator | None = None  # numpy.random: 2 MB, only if needed
        self._queue: asyncio.Queue[tuple[LoadedVersion, np.ndarray, list[str], float]] | None
        self._queue = None
        self._task: asyncio.Task[None] | None = None
        self._queued_rows = 0
        self._started: set[tuple[str, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def offer(
        self,
        runtime: ModelRuntime,
        answered: LoadedVersion,
        X: np.ndarray,
        row_ids: list[str],
        t: float,
    ) -> int:
        """Queue ``share`` of the rows ``answered`` (the live version) just answered for
        the model's shadow; the number of rows queued. Call from the event loop."""
        candidate = runtime.candidate
        if candidate is None or candidate[0].role != SHADOW:
            return 0
        setting, loaded = candidate
        if (loaded.name, loaded.version) not in self._started:  # the series reads 0 at once
            self.metrics.candidate_dropped.labels(loaded.name, loaded.version)
            self._started.add((loaded.name, loaded.version))
        if runtime.ready and answered is not runtime.live:
            return 0  # a canary's or an explicitly asked version's rows
        if setting.share >= 1.0:
            picked = np.arange(len(row_ids))
        else:
            if self._rng is None:
                self._rng = np.random.default_rng(self._seed)
            picked = np.flatnonzero(self._rng.random(len(row_ids)) < setting.share)
        if not len(picked):
            return 0
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # first use, or a new event loop
            self._queue, self._task, self._loop = asyncio.Queue(self.max_pending), None, loop
            self._queued_rows = 0
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait((loaded, X[picked], [row_ids[i] for i in picked], t))
        except asyncio.QueueFull:
            self.metrics.candidate_dropped.labels(loaded.name, loaded.version).inc(len(picked))
            return 0
        self._queued_rows += len(picked)
        return len(picked)

    async def _run(self) -> None:
        """Predict what the queue holds, coalesced: every queued request of the same
        version (up to ``MAX_GROUP`` requests or ``MAX_GROUP_ROWS`` rows) as one
        onnxruntime call and one journal record."""
        queue = self._queue
        assert queue is not None
        while True:
            first = await queue.get()
            if self._queued_rows < MAX_GROUP_ROWS and queue.qsize() + 1 < MAX_GROUP:
                await asyncio.sleep(GATHER_SECONDS)  # let a group gather: fewer, larger calls
            group = [first]
            rows = len(first[1])
            while not queue.empty() and len(group) < MAX_GROUP and rows < MAX_GROUP_ROWS:
                item = queue.get_nowait()
                if item[0] is not first[0]:  # another version: its own group, next round
                    queue.put_nowait(item)
                    queue.task_done()
                    break
                group.append(item)
                rows += len(item[1])
            self._queued_rows -= rows
            loaded = first[0]
            try:
                X = np.concatenate([item[1] for item in group])
                ids = [i for item in group for i in item[2]]
                for at in range(0, len(ids), MAX_GROUP_ROWS):  # a big request: in parts
                    if at:
                        await asyncio.sleep(0)  # answers go first
                    end = at + MAX_GROUP_ROWS
                    await self._predict_and_log(loaded, X[at:end], ids[at:end], group[-1][3])
            except Exception:  # keep the task alive whatever one group did
                log.exception("shadow %s:%s failed on a batch", loaded.name, loaded.version)
            finally:
                for _ in group:
                    queue.task_done()

    async def _predict_and_log(
        self, loaded: LoadedVersion, X: np.ndarray, ids: list[str], t: float
    ) -> None:
        pred = loaded.predict(X)
        finite = np.isfinite(pred.probabilities).all(axis=1) & np.isfinite(pred.anomaly_scores)
        if not finite.all():  # rows the candidate cannot score are not logged: counted
            self.metrics.candidate_dropped.labels(loaded.name, loaded.version).inc(
                int((~finite).sum())
            )
        keep = np.flatnonzero(finite)
        if not len(keep):
            return
        batch = PredictionBatch(
            model=loaded.name,
            version=loaded.version,
            t=t,
            ids=[shadow_id(ids[i]) for i in keep],
            labels=pred.labels[keep],
            confidences=pred.confidences[keep],
            probabilities=pred.probabilities[keep],
            anomaly_scores=pred.anomaly_scores[keep],
            anomalous=pred.anomalous[keep],
            inputs=X[keep],
        )
        try:
            await self.state.record_answered(batch)
        except StateError as exc:
            self.metrics.state_errors.labels("record").inc()
            log.error("shadow predictions not logged: %s", exc)

    async def drain(self) -> None:
        """Wait until every queued row is predicted and logged (tests, shutdown)."""
        if self._queue is not None and self._loop is asyncio.get_running_loop():
            await self._queue.join()
