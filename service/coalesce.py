"""Requests that arrive together share one pass of the model and of the monitoring.

A worker answers many small requests at once (16 connections over 2 workers keep about 8
in flight in each). Each used to pay for its own onnxruntime call, anomaly-scoring pass,
id block, journal record and counter updates. ``Coalescer`` groups them instead:

* a request joins the open group of the version that answers it; the first one in leads;
* the leader lets the requests of the same turn of the event loop join (those parsed
  while the worker was busy), then waits while other requests of this worker are on
  their way in (between their start and their ``submit``: client ids being checked), but
  never longer than ``max_wait`` (``ARGUS_COALESCE_WAIT_MS``, 2 ms) and never when none
  is -- so at low load a request waits for nobody;
* then ``run`` handles the whole group at once (``ArgusCore._run_group``: one model call,
  one scoring pass, one id block, one journal record written before any answer leaves,
  one update of each counter and histogram) and gives each request its own slice, or its
  own refusal: a request's bad rows or reused ids never refuse its neighbours.

``max_wait = 0`` turns grouping off: every request runs alone, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Entry:
    """One request in a group: its rows, its client ids, where its answer goes."""

    X: np.ndarray
    ids: list[str] | None
    future: asyncio.Future[Any]


@dataclass
class Group:
    version: Any  # the LoadedVersion every entry is answered by
    entries: list[Entry] = field(default_factory=list)
    rows: int = 0
    closed: bool = False


Runner = Callable[[Any, list[Entry]], Awaitable[None]]


class Coalescer:
    """One worker's groups, one open group per answering version (see the module doc)."""

    def __init__(self, run: Runner, max_wait: float = 0.002, max_rows: int = 1024) -> None:
        self.run = run
        self.max_wait = max_wait
        self.max_rows = max_rows
        self.arriving = 0  # requests started and not yet submitted (or refused before)
        self._open: dict[int, Group] = {}
        self._waiters: list[asyncio.Future[None]] = []  # leaders waiting for arrivals
        self.groups = 0  # groups run, and requests in them: the mean group size
        self.requests = 0
        self.waits = 0  # times a leader waited for a request on its way in

    def arrive(self) -> None:
        """A request started: a leader waits for it (up to ``max_wait``)."""
        self.arriving += 1

    def left(self) -> None:
        """A request that arrived was refused before it submitted."""
        self.arriving -= 1
        self._wake()

    async def submit(self, version: Any, X: np.ndarray, ids: list[str] | None) -> Any:
        """Join the open group of ``version``, or lead a new one; the request's answer.

        The leader lets the requests already on their way join (one turn of the event
        loop, then up to ``max_wait`` while ``arriving``), runs the group, and returns
        its own answer directly; the others wait for theirs."""
        self.arriving -= 1
        loop = asyncio.get_running_loop()
        entry = Entry(X, ids, loop.create_future())
        if self.max_wait <= 0:  # grouping off: every request alone
            await self._run(version, [entry])
            return entry.future.result()
        key = id(version)
        group = self._open.get(key)
        if group is not None and not group.closed and group.rows + len(X) <= self.max_rows:
            group.entries.append(entry)
            group.rows += len(X)
            self._wake()
            return await entry.future
        group = self._open[key] = Group(version, [entry], len(X))
        await asyncio.sleep(0)  # the requests of this loop turn join
        deadline = loop.time() + self.max_wait
        while self.arriving > 0 and group.rows < self.max_rows:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.waits += 1
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(remaining, _settle, waiter)
            await waiter  # someone joined or left, or the time is up
            timer.cancel()
        group.closed = True
        if self._open.get(key) is group:
            del self._open[key]
        await self._run(version, group.entries)
        return entry.future.result()

    async def _run(self, version: Any, entries: list[Entry]) -> None:
        self.groups += 1
        self.requests += len(entries)
        try:
            await self.run(version, entries)
        except BaseException as exc:  # every waiting request gets the failure, not a hang
            for entry in entries:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        for entry in entries:
            if not entry.future.done():  # a runner that forgot one: never hang a request
                entry.future.set_exception(RuntimeError("the group ran without this request"))

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
