"""An MLServer custom runtime over ``model.onnx``: a peer of ``bench/peers.py``.

``OnnxDigits`` is an ``MLModel``: ``load()`` opens the onnxruntime session at the model
settings' ``uri`` (in each of MLServer's parallel workers), ``predict()`` decodes the first
V2 input tensor with MLServer's NumPy codec and answers three output tensors, ``label``
(INT64), ``confidence`` (FP32) and ``probabilities`` (FP32, rows x classes). Called over the
Open Inference Protocol (V2) REST endpoint ``POST /v2/models/<name>/infer``.

``bench/peers.py`` writes the model repository (``settings.json`` with
``parallel_workers`` and the ports, ``model-settings.json`` naming this class) and starts
``mlserver start DIR`` with the repo root on ``PYTHONPATH``.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peer_model import Model


class OnnxDigits(MLModel):
    async def load(self) -> bool:
        self.model = Model(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        X = NumpyCodec.decode_input(payload.inputs[0])
        labels, confidences, probabilities = self.model(X)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("label", labels.astype(np.int64)),
                NumpyCodec.encode_output("confidence", confidences),
                NumpyCodec.encode_output("probabilities", probabilities),
            ],
        )
