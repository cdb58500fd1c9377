"""The model card: everything known about one stored version, as JSON.

A card is written once, when the version is registered, and never changed afterwards
(BentoML's ``Model.info`` is frozen too). Mutable facts, such as which version is live,
live in the shared state instead.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from errors import ModelVerificationError

CARD_SCHEMA = 1
CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"
PROFILE_FILE = "profile.json"


@dataclass(frozen=True)
class ModelCard:
    """What a version is, where it came from and how good it was when it was made.

    ``kind`` is ``"argus-mlp"`` for a model trained by ``argus train`` and ``"external-onnx"``
    for one registered with ``argus models register-onnx``; the sections a kind does not
    have (training history for an external model) are empty.
    """

    kind: str
    input_name: str
    output_name: str
    n_features: int
    n_classes: int
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    data: Mapping[str, Any]
    metrics: Mapping[str, Any]
    config: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    export: Mapping[str, Any] = field(default_factory=dict)
    profile: Mapping[str, Any] = field(default_factory=dict)
    parent: str | None = None
    code_version: str = ""
    created_at: str = ""
    name: str = ""
    version: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    schema: int = CARD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        schema = d.get("schema")
        if schema != CARD_SCHEMA:
            raise ModelVerificationError(f"model card schema {schema!r} is not supported")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in d.items() if k in known}
        values["feature_names"] = tuple(values.get("feature_names", ()))
        values["class_names"] = tuple(values.get("class_names", ()))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.from_dict(json.loads(text))

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if value is not None else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """The git commit of the Argus checkout, or the package version when not in git."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("argus-serving")
    except PackageNotFoundError:
        return "unknown"
