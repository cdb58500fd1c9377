"""ONNX export of the calibrated classifier and the torch-vs-onnxruntime parity check.

The exported graph is the whole serving model: raw features -> standardisation -> MLP ->
logits / T -> softmax. Its one input is ``"input"`` (float32, ``[batch, d]``) and its one
output ``"probabilities"`` (float32, ``[batch, k]``), the batch axis dynamic.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
OPSET = 17


class CalibratedSoftmax(nn.Module):
    """``softmax(model(x) / temperature)``, the temperature a fixed buffer."""

    temperature: torch.Tensor

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x) / self.temperature, dim=1)


def calibrated_probabilities(model: nn.Module, temperature: float, X: np.ndarray) -> np.ndarray:
    """Torch's calibrated probabilities for ``X`` (float32, eval mode, no gradients)."""
    wrapper = CalibratedSoftmax(model, temperature).eval()
    with torch.no_grad():
        out = wrapper(torch.as_tensor(np.asarray(X, dtype=np.float32)))
    return out.numpy()


def export_onnx(
    model: nn.Module, temperature: float, n_features: int, sample_X: np.ndarray
) -> bytes:
    """Serialise ``softmax(model(x) / temperature)`` as ONNX (opset :data:`OPSET`).

    Parameters
    ----------
    model : nn.Module
        Maps raw ``(batch, n_features)`` float32 features to logits; it is copied, not
        changed.
    temperature : float
        Calibration temperature, baked into the graph.
    n_features : int
        Input width; ``sample_X`` must match it.
    sample_X : array of shape (m, n_features)
        A few real rows used to trace the graph.

    Raises
    ------
    ExportError
        When tracing or serialisation fails, or the result is not a valid ONNX model.
    """
    sample = np.asarray(sample_X, dtype=np.float32)
    if sample.ndim != 2 or sample.shape[1] != n_features or len(sample) == 0:
        raise ValueError(f"sample_X must be (m >= 1, {n_features}), got shape {sample.shape}")
    net = CalibratedSoftmax(copy.deepcopy(model).float().cpu(), temperature).eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which
            # needs onnxscript; it is the supported path without it.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.as_tensor(sample[:8]),),
                buffer,  # type: ignore[arg-type]  # a binary stream works; the stub says path
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # torch raises many unrelated types here
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    data = buffer.getvalue()
    _check_onnx(data, n_features)
    return data


def _check_onnx(data: bytes, n_features: int) -> None:
    import onnx

    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"exported ONNX model is invalid: {exc}") from exc
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(f"exported graph has inputs {inputs} and outputs {outputs}")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or dims[1].dim_value != n_features or not dims[0].dim_param:
        raise ExportError(f"exported input shape is not [batch, {n_features}]")


def parity_check(
    model_bytes: bytes,
    torch_fn: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    tolerance: float = 1e-5,
) -> float:
    """Largest absolute difference between onnxruntime's and ``torch_fn``'s probabilities.

    Parameters
    ----------
    model_bytes : bytes
        The exported ONNX model.
    torch_fn : callable
        Maps a float32 ``(n, d)`` array to the reference ``(n, k)`` probabilities, e.g.
        ``lambda X: calibrated_probabilities(model, T, X)``.
    X : array of shape (n, d)
        Rows to compare on.
    tolerance : float
        Largest acceptable difference.

    Raises
    ------
    ExportError
        When the outputs differ in shape or by more than ``tolerance`` (naming the figure).
    """
    import onnxruntime as ort

    rows = np.asarray(X, dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        got = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0], dtype=np.float64)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the exported model: {exc}") from exc
    want = np.asarray(torch_fn(rows), dtype=np.float64)
    if got.shape != want.shape:
        raise ExportError(f"onnxruntime output shape {got.shape} != torch's {want.shape}")
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not diff <= tolerance:
        raise ExportError(
            f"ONNX parity check failed: max abs difference {diff:.3g} between onnxruntime and "
            f"torch probabilities on {len(rows)} rows exceeds tolerance {tolerance:g}"
        )
    return diff
