"""The ``digits28`` source: the bundled 8x8 digits resized to MNIST's 28x28, and the
784-feature MNIST-shaped model ``training/mnist_shaped.toml`` trains from it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from argus.cli import main
from models import store
from monitoring.profile import ReferenceProfile
from training.config import DEFAULT_TOML, TrainConfig
from training.data import Dataset, load_dataset, split_dataset
from training.digits28 import bilinear_weights, upsample

MNIST_SHAPED = DEFAULT_TOML.with_name("mnist_shaped.toml")


@pytest.fixture(scope="module")
def digits28() -> Dataset:
    return load_dataset("digits28")


def test_rows_are_784_whole_grey_levels_with_the_8x8_labels(digits28: Dataset) -> None:
    ref = load_digits()
    assert digits28.X.dtype == np.float32 and digits28.X.shape == (1797, 784)
    assert digits28.n_features == 784 and digits28.source == "digits28"
    np.testing.assert_array_equal(digits28.y, ref.target)
    assert digits28.class_names == tuple(str(i) for i in range(10))
    assert digits28.feature_names[:2] == ("pixel_0_0", "pixel_0_1")
    assert digits28.feature_names[-1] == "pixel_27_27" and len(set(digits28.feature_names)) == 784
    np.testing.assert_array_equal(digits28.X, np.rint(digits28.X))  # whole grey levels
    # full ink (16) between full-ink pixels stays full ink (255); blank paper stays 0
    assert digits28.X.min() == 0 and digits28.X.max() == 255
    assert (digits28.X == 0).mean() > 0.25


def test_the_resize_is_torchs_bilinear_interpolation(digits28: Dataset) -> None:
    images = load_digits().images  # (1797, 8, 8) in 0..16
    want = F.interpolate(
        torch.as_tensor(images, dtype=torch.float64)[:, None],
        size=(28, 28),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    np.testing.assert_allclose(upsample(images), want, rtol=0, atol=1e-12)
    scaled = (want * 255 / 16).reshape(1797, 784)
    assert np.abs(digits28.X - scaled).max() <= 0.5 + 1e-9  # rounded to the nearest level
    weights = bilinear_weights(8, 28)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert weights.shape == (28, 8) and weights.min() >= 0


def test_the_data_and_the_split_are_the_same_for_a_seed(digits28: Dataset) -> None:
    again = load_dataset("digits28")
    np.testing.assert_array_equal(again.X, digits28.X)
    assert again.fingerprint == digits28.fingerprint
    assert digits28.fingerprint != load_dataset("digits").fingerprint
    a = split_dataset(digits28, 0.15, 0.15, seed=3)
    b = split_dataset(again, 0.15, 0.15, seed=3)
    c = split_dataset(digits28, 0.15, 0.15, seed=4)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)
    # the same seed puts the same images in each part as it does for the 8x8 source, so
    # every 784-pixel row is the resize of the 8x8 row with the same label
    small = split_dataset(load_dataset("digits"), 0.15, 0.15, seed=3)
    np.testing.assert_array_equal(a.y_test, small.y_test)
    resized = np.rint(upsample(small.X_test.reshape(-1, 8, 8)) * 255 / 16).reshape(-1, 784)
    np.testing.assert_array_equal(a.X_test, resized.astype(np.float32))


def test_the_mnist_shaped_config() -> None:
    config = TrainConfig.load_toml(MNIST_SHAPED)
    assert config.source == "digits28" and config.hidden == (512, 256)
    assert config.with_overrides(source="digits", hidden=(100,)) == TrainConfig()


def test_argus_train_registers_a_784_feature_version(
    capsys: pytest.CaptureFixture[str], model_name: str
) -> None:
    """``argus train --config training/mnist_shaped.toml``, cut to two epochs."""
    argv = ["train", "--config", str(MNIST_SHAPED), "--epochs", "2", "--name", model_name]
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"registered {model_name}:" in out
    (v,) = store.list_versions(model_name)
    card = v.card
    assert (card.n_features, card.n_classes) == (784, 10)
    assert card.feature_names[0] == "pixel_0_0" and len(card.feature_names) == 784
    assert card.data["source"] == "digits28" and card.data["rows"] == 1797
    assert card.config["hidden"] == [512, 256] and card.training["history"]["epochs_run"] == 2
    assert card.metrics["accuracy"] > 0.8  # two epochs of the wide net already learn digits
    profile = ReferenceProfile.from_dict(v.read_profile())
    assert profile.n_features == 784 and len(profile.edges) == 784
    assert profile.sample.shape[1] == 784
    session = ort.InferenceSession(str(v.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 784
    X = load_dataset("digits28").X[:5]
    (probabilities,) = session.run(None, {"input": X})
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
