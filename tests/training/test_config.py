from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from errors import DataError
from training.config import DEFAULT_TOML, TrainConfig


def test_defaults_mirror_the_dl4j_mnist_example() -> None:
    c = TrainConfig()
    assert c.hidden == (100,) and c.activation == "relu"
    assert c.weight_init == "xavier_uniform"
    assert (c.learning_rate, c.momentum, c.nesterov) == (0.01, 0.9, True)
    assert (c.seed, c.batch_size, c.l2, c.log_every) == (12345, 64, 1e-4, 10)
    assert (c.val_fraction, c.test_fraction, c.anomaly_fpr) == (0.15, 0.15, 0.01)
    assert c.source == "digits" and c.label_column is None


def test_default_toml_equals_the_dataclass_defaults() -> None:
    assert TrainConfig.load_toml(DEFAULT_TOML) == TrainConfig()
    # every field is documented (label_column, None by default, as a commented example)
    text = DEFAULT_TOML.read_text()
    for f in dataclasses.fields(TrainConfig):
        assert f"{f.name} =" in text, f.name


def test_dict_round_trip_through_json() -> None:
    c = TrainConfig(hidden=(32, 16), source="csv:x.csv", label_column="y", nesterov=False)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["hidden"] == [32, 16]
    assert TrainConfig.from_dict(d) == c


def test_from_dict_unknown_key_names_it() -> None:
    with pytest.raises(DataError, match="'learnin_rate'"):
        TrainConfig.from_dict({"learnin_rate": 0.1})


def test_from_dict_bad_value_is_a_data_error_naming_the_field() -> None:
    with pytest.raises(DataError, match="'batch_size'"):
        TrainConfig.from_dict({"batch_size": 0})


def test_load_toml_partial_file_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('learning_rate = 0.05\nhidden = [50, 20]\nsource = "csv:d.csv"\n')
    c = TrainConfig.load_toml(p)
    assert c == TrainConfig(learning_rate=0.05, hidden=(50, 20), source="csv:d.csv")
    with pytest.raises(DataError, match="not found"):
        TrainConfig.load_toml(tmp_path / "missing.toml")
    p.write_text("learning_rate = = 1\n")
    with pytest.raises(DataError, match="not valid TOML"):
        TrainConfig.load_toml(p)


def test_with_overrides_returns_a_validated_copy() -> None:
    base = TrainConfig()
    c = base.with_overrides(max_epochs=5, learning_rate=1)
    assert c.max_epochs == 5 and c.learning_rate == 1.0 and isinstance(c.learning_rate, float)
    assert base.max_epochs == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0.0),
        ("learning_rate", "0.1"),
        ("learning_rate", float("nan")),
        ("momentum", 1.0),
        ("l2", -1e-4),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("max_epochs", True),
        ("patience", -1),
        ("hidden", (100, 0)),
        ("hidden", "100"),
        ("activation", "gelu"),
        ("weight_init", "he"),
        ("val_fraction", 0.0),
        ("test_fraction", 0.9),
        ("anomaly_fpr", 1.0),
        ("nesterov", 1),
        ("calibration_bins", 0),
        ("label_column", ""),
        ("source", ""),
    ],
)
def test_with_overrides_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=repr(field)):
        TrainConfig().with_overrides(**{field: value})


def test_with_overrides_unknown_field() -> None:
    with pytest.raises(ValueError, match="'epochs'"):
        TrainConfig().with_overrides(epochs=3)


def test_config_is_frozen_and_hashable() -> None:
    c = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 1  # type: ignore[misc]
    assert hash(c) == hash(TrainConfig())
