"""A bare BentoML service over the same ``model.onnx``: the baseline of ``bench/serving.py``.

No monitoring, no prediction log, no validation beyond BentoML's own schema: onnxruntime
and JSON in and out. Settings come from the environment:

* ``BARE_MODEL_PATH`` (required) -- the ``model.onnx`` to serve;
* ``BARE_WORKERS`` (default 2) -- worker processes; onnxruntime gets cores // workers
  intra-op threads per worker, like Argus;
* ``BARE_RESPONSE`` (default ``raw``) -- ``raw`` serialises the response in one call as
  Argus does, so a comparison isolates the monitoring; ``dict`` returns the dict and lets
  BentoML serialise it, the conventional way to write a BentoML service; ``constant``
  answers the same small JSON to every request without running the model: BentoML's
  floor, what a request costs in the server itself (``bench/peers.py``).

It gets Argus's server fixes, which have nothing to do with monitoring: the request
timeout that lets finished requests go (``service/timeout.py``; BentoML's own keeps every
request alive for 60 s), ``gc.freeze()`` once the worker is set up (full collections then
skip everything the worker loaded at start) and the reader of metrics files that a scrape
catches while a worker creates them (``service/prometheus_files.py``).

Run from the repo root, with a ``BENTOML_HOME`` of its own::

    BARE_MODEL_PATH=.../model.onnx python -m bentoml serve bench.bare_service:Bare --port 3001
"""

from __future__ import annotations

import gc
import os
from typing import Any, cast

import bentoml
import numpy as np
import onnxruntime as ort
from pydantic_core import to_json
from starlette.responses import Response

from service import prometheus_files, timeout

timeout.install()
prometheus_files.install()

WORKERS = max(1, int(os.environ.get("BARE_WORKERS", "2")))
RESPONSE = os.environ.get("BARE_RESPONSE", "raw")  # "raw" (as Argus), "dict" or "constant"
CONSTANT = b'{"model":"bare","predictions":[]}'


@bentoml.service(
    name="bare",
    workers=WORKERS,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
class Bare:
    """Serve one ONNX classifier: labels, confidences and probabilities per row."""

    def __init__(self) -> None:
        path = os.environ["BARE_MODEL_PATH"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, (os.cpu_count() or 1) // WORKERS)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        gc.collect()
        gc.freeze()  # as Argus does (service/service.py)

    @bentoml.api
    async def predict(self, instances: list[list[float]]) -> dict[str, Any]:
        if RESPONSE == "constant":  # the floor: BentoML parsed the body, nothing more
            return cast(dict[str, Any], Response(CONSTANT, media_type="application/json"))
        X = np.asarray(instances, dtype=np.float32)
        (probabilities,) = self.session.run([self.output_name], {self.input_name: X})
        labels = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(labels)), labels]
        result = {
            "model": "bare",
            "predictions": [
                {"label": label, "confidence": confidence, "probabilities": row}
                for label, confidence, row in zip(
                    labels.tolist(), confidences.tolist(), probabilities.tolist(), strict=True
                )
            ],
        }
        if RESPONSE == "dict":  # the conventional way: BentoML serialises the dict
            return result
        # Serialised the way Argus does (one pydantic_core call, skipping BentoML's per-call
        # schema work for a dict output), so the ratio measures the monitoring alone.
        return cast(dict[str, Any], Response(to_json(result), media_type="application/json"))
