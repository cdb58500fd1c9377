"""What every peer of ``bench/peers.py`` runs: one onnxruntime session over ``model.onnx``.

The FastAPI, LitServe and MLServer peers (``bench/peer_*.py``) each build one ``Model`` per
worker process and answer with its labels, confidences and probabilities, formatted their
own way. Like the bare BentoML service, a session gets ``cores // workers`` intra-op threads
and one inter-op thread. Settings come from the environment ``bench/peers.py`` gives:

* ``PEER_MODEL_PATH`` -- the ``model.onnx`` (MLServer passes its own ``uri`` instead);
* ``PEER_WORKERS`` (default 2) -- the server's worker processes, for the thread count;
* ``PEER_PID_DIR`` -- where each process that loads the model writes a file named after
  its pid, so the bench knows the model's processes (their RSS) and when all are up.

Imports nothing of a peer, and nothing of the project: it runs in the peers' own venv.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort


class Model:
    """The digits classifier of ``path`` (default ``PEER_MODEL_PATH``) in this process."""

    def __init__(self, path: str | None = None) -> None:
        workers = max(1, int(os.environ.get("PEER_WORKERS", "2")))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, (os.cpu_count() or 1) // workers)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            path or os.environ["PEER_MODEL_PATH"],
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        announce()

    def __call__(self, X: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, confidences, probabilities) of the rows ``X``."""
        feed = {self.input_name: np.asarray(X, dtype=np.float32)}
        (probabilities,) = self.session.run([self.output_name], feed)
        labels = probabilities.argmax(axis=1)
        return labels, probabilities[np.arange(len(labels)), labels], probabilities


def announce() -> None:
    """Tell the bench this process holds the model: a file named after its pid."""
    folder = os.environ.get("PEER_PID_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / str(os.getpid())).touch()
