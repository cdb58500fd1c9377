"""What the prediction log holds: one ``PredictionRecord`` per row, and the
``PredictionBatch`` of a whole request with its journal encoding.

A batch keeps a request's rows as arrays (no per-row objects on the hot path). ``encode``
gives the payload the journal (``state/journal.py``) frames: a small JSON head (model,
version, time, ids, shapes) and the little-endian arrays; ``decode`` reads it back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pydantic_core import from_json, to_json


@dataclass(frozen=True)
class PredictionRecord:
    """One predicted row. ``true_label``/``feedback_t`` are set once feedback arrives.

    ``probabilities`` (and ``inputs``) are stored as float32, so values read back are
    rounded to float32 precision.
    """

    id: str
    model: str
    version: str
    t: float
    label: int
    confidence: float
    probabilities: tuple[float, ...]
    anomaly_score: float
    anomalous: bool
    inputs: tuple[float, ...] | None = None
    true_label: int | None = None
    feedback_t: float | None = None


class Outcome(NamedTuple):
    """What a comparison needs of one logged row, and no more (``StateStore.outcomes``)."""

    version: str
    label: int  # predicted
    true_label: int | None  # None until feedback


_HEAD = struct.Struct("<I")  # JSON header length inside the payload


@dataclass(frozen=True, eq=False)
class PredictionBatch:
    """The rows one request predicted, as arrays (no per-row objects on the hot path).

    Row ``i`` is ``ids[i]``; every row shares ``model``, ``version`` and ``t``. ``inputs``
    feeds the input window (and the log, with ``store_inputs``). ``encode`` gives the
    payload that ``decode`` reads back.
    """

    model: str
    version: str
    t: float
    ids: Sequence[str]
    labels: np.ndarray  # int, (n,)
    confidences: np.ndarray  # float32, (n,)
    probabilities: np.ndarray  # float32, (n, k)
    anomaly_scores: np.ndarray  # float64, (n,)
    anomalous: np.ndarray  # bool, (n,)
    inputs: np.ndarray | None = None  # float32, (n, d)

    def encode(self) -> bytes:
        probs = np.ascontiguousarray(self.probabilities, dtype="<f4")
        n, k = probs.shape
        inputs = None if self.inputs is None else np.ascontiguousarray(self.inputs, dtype="<f4")
        head = to_json(  # one Rust call: a quarter of json.dumps's time
            {
                "model": self.model,
                "version": self.version,
                "t": self.t,
                "ids": list(self.ids),
                "n": n,
                "k": k,
                "d": 0 if inputs is None else int(inputs.shape[1]),
            }
        )
        parts = [
            _HEAD.pack(len(head)),
            head,
            np.ascontiguousarray(self.labels, dtype="<i4").tobytes(),
            np.ascontiguousarray(self.confidences, dtype="<f4").tobytes(),
            probs.tobytes(),
            np.ascontiguousarray(self.anomaly_scores, dtype="<f8").tobytes(),
            np.ascontiguousarray(self.anomalous, dtype=np.uint8).tobytes(),
        ]
        if inputs is not None:
            parts.append(inputs.tobytes())
        return b"".join(parts)

    @staticmethod
    def rows_of(payload: bytes) -> int:
        """How many rows an encoded batch holds, read from its header alone."""
        (hlen,) = _HEAD.unpack_from(payload, 0)
        return int(from_json(payload[_HEAD.size : _HEAD.size + hlen])["n"])

    @classmethod
    def decode(cls, payload: bytes) -> PredictionBatch:
        (hlen,) = _HEAD.unpack_from(payload, 0)
        head = from_json(payload[_HEAD.size : _HEAD.size + hlen])
        n, k, d = head["n"], head["k"], head["d"]
        at = _HEAD.size + hlen

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal at
            arr = np.frombuffer(payload, dtype=dtype, count=count, offset=at)
            at += arr.nbytes
            return arr

        labels = take("<i4", n)
        confidences = take("<f4", n)
        probabilities = take("<f4", n * k).reshape(n, k)
        scores = take("<f8", n)
        anomalous = take("u1", n).view(bool)  # encode wrote 0 or 1
        inputs = take("<f4", n * d).reshape(n, d) if d else None
        return cls(
            head["model"], head["version"], head["t"], head["ids"], labels, confidences,
            probabilities, scores, anomalous, inputs,
        )  # fmt: skip

    def check(self, where: str = "batch") -> tuple[int, int, int]:
        """``(n, k, d)`` -- rows, classes and input width (-1: no inputs) -- once every
        array was checked to hold one entry (row) per id; ``ValueError`` naming the
        array (prefixed with ``where``) otherwise."""
        n = len(self.ids)
        k = _rows(self.probabilities, n, 2, f"{where}.probabilities")[1]
        for name in ("labels", "confidences", "anomaly_scores", "anomalous"):
            array = getattr(self, name)
            if (array.shape if type(array) is np.ndarray else np.shape(array)) != (n,):
                _rows(array, n, 1, f"{where}.{name}")
        d = -1 if self.inputs is None else _rows(self.inputs, n, 2, f"{where}.inputs")[1]
        return n, k, d

    def take(self, index: Sequence[int] | np.ndarray) -> PredictionBatch:
        """The batch of the rows at ``index`` (positions, in the order given)."""
        at = np.asarray(index, dtype=np.intp)
        return PredictionBatch(
            model=self.model,
            version=self.version,
            t=self.t,
            ids=[self.ids[i] for i in at.tolist()],
            labels=np.asarray(self.labels)[at],
            confidences=np.asarray(self.confidences)[at],
            probabilities=np.asarray(self.probabilities)[at],
            anomaly_scores=np.asarray(self.anomaly_scores)[at],
            anomalous=np.asarray(self.anomalous)[at],
            inputs=None if self.inputs is None else np.asarray(self.inputs)[at],
        )

    def records(self) -> list[PredictionRecord]:
        probs = np.asarray(self.probabilities).tolist()
        return [
            PredictionRecord(
                id=self.ids[i],
                model=self.model,
                version=self.version,
                t=self.t,
                label=int(self.labels[i]),
                confidence=float(self.confidences[i]),
                probabilities=tuple(probs[i]),
                anomaly_score=float(self.anomaly_scores[i]),
                anomalous=bool(self.anomalous[i]),
            )
            for i in range(len(self.ids))
        ]


def _rows(array: Any, n: int, ndim: int, what: str) -> tuple[int, ...]:
    """The shape of ``array``, checked to be ``ndim``-dimensional with ``n`` rows."""
    shape = array.shape if type(array) is np.ndarray else np.shape(array)
    if len(shape) != ndim or shape[0] != n:
        want = f"{n} values" if ndim == 1 else f"{n} rows x columns"
        raise ValueError(f"{what}: expected {want} (one per id), got shape {shape}")
    return tuple(shape)
