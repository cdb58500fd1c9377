"""Fixtures shared by the monitoring tests."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """scikit-learn's digits as float32, split 60/20/20 (stratified, seeded)."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_rest, _, y_rest = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)
    X_val, X_test = train_test_split(X_rest, test_size=0.5, stratify=y_rest, random_state=0)
    return {"train": X_train, "val": X_val, "test": X_test}
