from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from errors import ExportError
from training.data import Split
from training.export import calibrated_probabilities, export_onnx, parity_check
from training.loop import TrainedNet, predict_logits

T = 1.7


@pytest.fixture(scope="module")
def exported(small_trained: TrainedNet, digits_split: Split) -> bytes:
    return export_onnx(small_trained.model, T, 64, digits_split.X_train[:8])


def test_graph_signature(exported: bytes) -> None:
    proto = onnx.load_from_string(exported)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input" and out.name == "probabilities"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and in_dims[1].dim_value == 64
    assert out_dims[0].dim_param and out_dims[1].dim_value == 10
    assert proto.opset_import[0].version == 17


def test_parity_on_the_test_split(
    exported: bytes, small_trained: TrainedNet, digits_split: Split
) -> None:
    model = small_trained.model

    def torch_fn(X: np.ndarray) -> np.ndarray:
        return calibrated_probabilities(model, T, X)

    diff = parity_check(exported, torch_fn, digits_split.X_test)
    assert 0 <= diff <= 1e-5
    # the graph applies the temperature: compare with softmax(logits / T) done by hand
    z = predict_logits(model, digits_split.X_test).double().numpy() / T
    manual = np.exp(z - z.max(1, keepdims=True))
    manual /= manual.sum(1, keepdims=True)
    sess = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": digits_split.X_test})
    np.testing.assert_allclose(got, manual, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("n", [1, 300])
def test_dynamic_batch_axis(exported: bytes, digits_split: Split, n: int) -> None:
    X = np.concatenate([digits_split.X_train, digits_split.X_test])[:n]
    sess = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["probabilities"], {"input": X})
    assert got.shape == (n, 10) and got.dtype == np.float32


def test_a_different_torch_function_fails_the_parity_check(
    exported: bytes, small_trained: TrainedNet, digits_split: Split
) -> None:
    def wrong(X: np.ndarray) -> np.ndarray:  # forgot the temperature
        return calibrated_probabilities(small_trained.model, 1.0, X)

    with pytest.raises(ExportError, match=r"max abs difference [0-9.e-]+ .* exceeds tolerance"):
        parity_check(exported, wrong, digits_split.X_test)
    with pytest.raises(ExportError, match="shape"):
        parity_check(exported, lambda X: np.zeros((len(X), 3)), digits_split.X_test)


def test_export_argument_errors(small_trained: TrainedNet, digits_split: Split) -> None:
    with pytest.raises(ValueError, match="sample_X"):
        export_onnx(small_trained.model, T, 63, digits_split.X_train[:4])
    with pytest.raises(ValueError, match="temperature"):
        export_onnx(small_trained.model, 0.0, 64, digits_split.X_train[:4])
    with pytest.raises(ExportError, match="onnxruntime cannot run"):
        parity_check(b"not onnx", lambda X: X, digits_split.X_test)
