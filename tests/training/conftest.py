"""Shared fixtures: the digits data, its default split and one briefly trained net."""

from __future__ import annotations

import pytest

from training.config import TrainConfig
from training.data import Dataset, Split, load_dataset, split_dataset
from training.loop import TrainedNet, train


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_split(digits: Dataset) -> Split:
    c = TrainConfig()
    return split_dataset(digits, c.val_fraction, c.test_fraction, c.seed)


@pytest.fixture(scope="session")
def small_trained(digits_split: Split) -> TrainedNet:
    """Ten epochs of the default net: enough to be a real, non-trivial model."""
    return train(TrainConfig(max_epochs=10), digits_split, out=None)
