from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from training.config import TrainConfig
from training.data import Split
from training.net import MLP, Standardize, build_model, feature_stats


def test_standardisation_matches_sklearn_and_constant_columns_pass_through(
    digits_split: Split,
) -> None:
    X = digits_split.X_train
    mean, std = feature_stats(X)
    layer = Standardize(mean, std)
    got = layer(torch.as_tensor(X)).numpy()
    scaler = StandardScaler().fit(X.astype(np.float64))
    constant = scaler.scale_ == 1.0  # sklearn also maps a zero std to 1
    assert constant.any()  # digits has always-blank pixels
    np.testing.assert_allclose(got, scaler.transform(X), rtol=1e-5, atol=1e-5)
    assert np.all(layer.std.numpy()[constant] == 1.0)


def test_near_zero_std_from_rounding_is_treated_as_constant() -> None:
    layer = Standardize(np.array([0.1, 5.0]), np.array([1e-17, 2.0]))
    np.testing.assert_allclose(layer.std.numpy(), [1.0, 2.0])


def test_model_takes_raw_features_and_outputs_logits(digits_split: Split) -> None:
    X = digits_split.X_train
    mean, std = feature_stats(X)
    model = build_model(TrainConfig(hidden=(30, 20)), 64, 10, mean, std)
    out = model(torch.as_tensor(X[:5]))
    assert out.shape == (5, 10)
    assert [m.out_features for m in model.linear_layers()] == [30, 20, 10]
    # standardisation is inside the module: buffers, saved with the weights, not trained
    assert set(dict(model.named_buffers())) == {"scale.mean", "scale.std"}
    assert "scale.mean" in model.state_dict()
    assert all("scale" not in name for name, _ in model.named_parameters())


def test_xavier_init_is_seeded_and_glorot_bounded() -> None:
    c = TrainConfig()
    zeros, ones = np.zeros(64), np.ones(64)
    a = build_model(c, 64, 10, zeros, ones)
    b = build_model(c, 64, 10, zeros, ones)
    d = build_model(c.with_overrides(seed=1), 64, 10, zeros, ones)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.linear_layers()[0].weight, d.linear_layers()[0].weight)
    first = a.linear_layers()[0]
    bound = math.sqrt(6 / (64 + 100))
    w = first.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    # uniform on [-b, b] has std b / sqrt(3)
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.01
    assert torch.count_nonzero(first.bias) == 0


def test_xavier_normal_and_other_activations() -> None:
    c = TrainConfig(weight_init="xavier_normal", activation="tanh")
    m = build_model(c, 64, 10, np.zeros(64), np.ones(64))
    assert isinstance(m.layers[1], torch.nn.Tanh)
    w = m.linear_layers()[0].weight.detach()
    assert abs(float(w.std()) - math.sqrt(2 / (64 + 100))) < 0.01


def test_mlp_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        MLP(3, 1, (4,), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="mean has 2 entries"):
        MLP(3, 2, (4,), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="activation"):
        MLP(3, 2, (4,), np.zeros(3), np.ones(3), activation="elu")
