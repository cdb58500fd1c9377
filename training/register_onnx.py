"""Bring your own model: register an ONNX classifier trained elsewhere.

The reference CSV (labelled rows in the units clients will send) gives the version what
``argus train`` would have made: an evaluation, and the reference profile that the
monitors compare live traffic with. Half of the rows (seeded, stratified by nothing but
chance) build the input profile, the other half calibrate the anomaly threshold and the
prediction reference, so the threshold is not fitted on the rows it is judged by.
No torch is imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from errors import DataError, ModelFormatError
from models import store
from models.card import ModelCard, code_version, sha256_file
from monitoring.performance import classification_report, expected_calibration_error
from monitoring.profile import build_profile
from training.csvtable import load_csv_table
from training.data import dataset_fingerprint
from training.publish import profile_summary

PROBABILITY_TOLERANCE = 1e-3
MIN_REFERENCE_ROWS = 20


def inspect_onnx(path: Path) -> tuple[ort.InferenceSession, str, str, int | None, int | None]:
    """Open ``path`` and find its one float input and its probability output.

    Returns the session, the input name, the output name, and the feature and class counts
    when the graph fixes them (``None`` for a symbolic dimension).
    """
    if not path.is_file():
        raise DataError(f"ONNX file not found: {path}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{path} is not a loadable ONNX model: {first}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelFormatError(f"{path} has {len(inputs)} inputs ({names}); Argus needs exactly 1")
    inp = inputs[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 2:
        raise ModelFormatError(
            f"{path}: input {inp.name!r} is {inp.type} of shape {inp.shape}; "
            "Argus needs a float32 tensor [batch, features]"
        )
    candidates = [
        o for o in session.get_outputs() if o.type == "tensor(float)" and len(o.shape) == 2
    ]
    if not candidates:
        raise ModelFormatError(
            f"{path} has no float tensor output [batch, classes] (a scikit-learn model "
            "converted by skl2onnx needs options={'zipmap': False})"
        )
    probs = [o for o in candidates if "prob" in o.name.lower()]
    out = (probs or candidates)[0]
    n_features = inp.shape[1] if isinstance(inp.shape[1], int) else None
    n_classes = out.shape[1] if isinstance(out.shape[1], int) else None
    return session, inp.name, out.name, n_features, n_classes


def register_onnx(
    onnx_path: Path,
    reference_csv: Path,
    label_column: str,
    *,
    name: str,
    seed: int = 0,
    anomaly_fpr: float = 0.01,
) -> store.StoredVersion:
    """Check, evaluate, profile and register an external ONNX classifier."""
    onnx_path, reference_csv = Path(onnx_path), Path(reference_csv)
    session, input_name, output_name, n_features, n_classes = inspect_onnx(onnx_path)
    table = load_csv_table(reference_csv, label_column)
    assert table.y is not None  # a label column was named
    X, y = table.X, table.y
    if len(X) < MIN_REFERENCE_ROWS:
        raise DataError(
            f"{reference_csv} has {len(X)} rows; at least {MIN_REFERENCE_ROWS} are needed"
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ModelFormatError(
            f"{onnx_path.name} expects {n_features} features but {reference_csv.name} has "
            f"{X.shape[1]} feature columns"
        )
    try:
        (proba,) = session.run([output_name], {input_name: X})
    except Exception as exc:
        raise ModelFormatError(f"{onnx_path.name} failed on the reference rows: {exc}") from None
    proba = np.asarray(proba, dtype=np.float32)
    k = proba.shape[1] if proba.ndim == 2 else -1
    if proba.shape[0] != len(X) or (n_classes is not None and k != n_classes):
        raise ModelFormatError(f"{onnx_path.name} returned shape {proba.shape} for {len(X)} rows")
    if k != len(table.class_names):
        raise ModelFormatError(
            f"{onnx_path.name} outputs {k} classes but {reference_csv.name} has "
            f"{len(table.class_names)} ({', '.join(table.class_names)})"
        )
    sums = proba.sum(axis=1)
    if not np.all(np.isfinite(proba)) or np.abs(sums - 1).max() > PROBABILITY_TOLERANCE:
        raise ModelFormatError(
            f"output {output_name!r} of {onnx_path.name} is not a probability per class "
            "(rows must be finite and sum to 1)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    fit_rows, held_rows = order[: len(X) // 2], order[len(X) // 2 :]
    profile = build_profile(
        X[fit_rows],
        proba[held_rows],
        X_calibration=X[held_rows],
        feature_names=table.feature_names,
        target_fpr=anomaly_fpr,
        seed=seed,
    )
    report = classification_report(y, proba.argmax(axis=1), labels=list(range(k)))
    parent = store.newest(name)
    card = ModelCard(
        kind="external-onnx",
        input_name=input_name,
        output_name=output_name,
        n_features=int(X.shape[1]),
        n_classes=k,
        feature_names=table.feature_names,
        class_names=table.class_names,
        data={
            "source": f"csv:{reference_csv}",
            "label_column": label_column,
            "fingerprint": dataset_fingerprint(X, y),
            "rows": int(len(X)),
            "evaluated_on": "reference rows (they may overlap the model's training data)",
        },
        metrics=report.to_dict(),
        config={"onnx_file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path)},
        calibration={"ece": expected_calibration_error(proba, y)},
        profile=profile_summary(profile),
        parent=parent.version if parent else None,
        code_version=code_version(),
    )
    return store.register(name, onnx_path.read_bytes(), card, profile.to_json())
