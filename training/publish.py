"""Turn a training outcome into a registered version: profile, model card, store.

This is the last step of ``argus train``. Registration is all or nothing: the profile and
the card are built in memory first and ``models.store.register`` writes the version in
one BentoML ``create`` block.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from models import store
from models.card import ModelCard, code_version
from monitoring.profile import build_profile

if TYPE_CHECKING:
    from training.outcome import TrainingOutcome


def publish(outcome: TrainingOutcome, name: str) -> store.StoredVersion:
    """Build the reference profile and the card for ``outcome`` and register it."""
    from training.export import OPSET  # torch is imported only when training

    config = outcome.config
    data = outcome.dataset
    profile = build_profile(
        outcome.X_train,
        outcome.val_probabilities,
        X_calibration=outcome.X_val,
        feature_names=data.feature_names,
        target_fpr=config.anomaly_fpr,
        seed=config.seed,
    )
    parent = store.newest(name)
    card = ModelCard(
        kind="argus-mlp",
        input_name="input",
        output_name="probabilities",
        n_features=data.n_features,
        n_classes=data.n_classes,
        feature_names=tuple(data.feature_names),
        class_names=tuple(data.class_names),
        data={
            "source": data.source,
            "fingerprint": data.fingerprint,
            "rows": data.n_rows,
            "split_sizes": dict(outcome.split_sizes),
            "evaluated_on": "test split",
        },
        metrics=outcome.evaluation.to_dict(),
        config=config.to_dict(),
        training={
            "history": outcome.history,
            "best_epoch": outcome.best_epoch,
            "verdict": _plain(outcome.verdict),
            "training_time_s": outcome.training_time_s,
            "wall_time_s": outcome.wall_time_s,
            "gradient_check": _plain(outcome.gradient_check),
        },
        calibration=_plain(outcome.calibration),
        export={"parity_max_abs_diff": outcome.parity_max_abs_diff, "opset": OPSET},
        profile=profile_summary(profile),
        parent=parent.version if parent else None,
        code_version=code_version(),
    )
    return store.register(name, outcome.onnx_bytes, card, profile.to_json())


def profile_summary(profile: Any) -> dict[str, Any]:
    """The card's view of a profile: what it holds, not the arrays themselves."""
    return {
        "schema": profile.schema,
        "n_reference": profile.n_reference,
        "sample_rows": int(profile.sample.shape[0]),
        "anomaly_threshold": float(profile.anomaly.threshold_),
        "anomaly_target_fpr": float(profile.anomaly.target_fpr),
        "class_share": list(profile.class_share),
    }


def _plain(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return obj
