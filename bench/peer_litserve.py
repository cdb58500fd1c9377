"""A LitServe server over ``model.onnx``: a peer of ``bench/peers.py``.

A ``LitAPI`` whose ``setup`` loads the model in each inference worker, ``decode_request``
turns LitServe's parsed JSON body into rows, ``predict`` runs onnxruntime and
``encode_response`` answers a label, confidence and probabilities per row (the JSON
contract of the bare BentoML service: ``POST /predict {"instances": [[...], ...]}``).

``LitServer(accelerator="cpu", workers_per_device=N)`` runs N inference worker processes
and, by LitServe's default, as many HTTP (uvicorn) processes, which hand each request to
the workers through a queue; ``fast_queue=True`` (ZeroMQ) is what LitServe's docs advise
above about 100 requests per second. No batching (LitServe's default). Access logs off,
as on every server the bench runs. From the repo root::

    PEER_MODEL_PATH=.../model.onnx python -m bench.peer_litserve --port 3001 --workers 2
"""

from __future__ import annotations

import argparse
import os

import litserve as ls
import numpy as np

from bench.peer_model import Model


class DigitsAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Model()

    # decode_request and encode_response stay unannotated, as in LitServe's examples: it
    # takes their annotations for the route's request and answer types (FastAPI's), and
    # without them hands over the parsed JSON body and returns the answer as it is

    def decode_request(self, request):
        return np.asarray(request["instances"], dtype=np.float32)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.model(X)

    def encode_response(self, output):
        labels, confidences, probabilities = output
        return {
            "predictions": [
                {"label": label, "confidence": confidence, "probabilities": row}
                for label, confidence, row in zip(
                    labels.tolist(), confidences.tolist(), probabilities.tolist(), strict=True
                )
            ]
        }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=int(os.environ.get("PEER_WORKERS", "2")))
    p.add_argument("--queue", choices=("zmq", "mp"), default="zmq", help="LitServe's transport")
    args = p.parse_args(argv)
    server = ls.LitServer(
        DigitsAPI(),
        accelerator="cpu",
        workers_per_device=args.workers,
        timeout=60,
        fast_queue=args.queue == "zmq",
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
