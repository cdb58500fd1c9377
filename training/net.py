"""The multi-layer perceptron, with feature standardisation inside the module.

The network takes features in their raw units: a :class:`Standardize` layer holding the
training data's mean and standard deviation as buffers comes first, so the exported ONNX
graph carries the scaling and the server never has to know about it. The output is logits;
softmax (and temperature) are applied by the loss, the calibration and the export wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from training.config import TrainConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed buffers.

    A standard deviation that is zero to float32 precision (at most ``1.2e-7 * max(|mean|,
    1)``, a constant column up to rounding) is replaced by 1, so such a feature passes
    through as ``x - mean`` instead of blowing up.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        m = torch.as_tensor(np.asarray(mean, dtype=np.float32)).flatten()
        s = torch.as_tensor(np.asarray(std, dtype=np.float32)).flatten()
        if m.shape != s.shape:
            raise ValueError(f"mean and std must have the same length, got {m.shape} and {s.shape}")
        if not (torch.isfinite(m).all() and torch.isfinite(s).all()) or (s < 0).any():
            raise ValueError("mean and std must be finite and std >= 0")
        self.register_buffer("mean", m.clone())
        floor = torch.finfo(torch.float32).eps * torch.clamp(m.abs(), min=1.0)
        self.register_buffer("std", torch.where(s > floor, s, torch.ones_like(s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    """Standardisation, then ``len(hidden)`` dense layers with an activation, then a dense
    layer to ``n_classes`` logits.

    Parameters
    ----------
    n_features, n_classes : int
        Input width and number of classes.
    hidden : sequence of int
        Width of each hidden layer.
    mean, std : array of shape (n_features,)
        Standardisation statistics of the training rows.
    activation : str
        ``"relu"``, ``"tanh"`` or ``"sigmoid"``.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int],
        mean: np.ndarray | torch.Tensor,
        std: np.ndarray | torch.Tensor,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}")
        self.n_features = n_features
        self.n_classes = n_classes
        self.scale = Standardize(mean, std)
        if self.scale.mean.numel() != n_features:
            raise ValueError(
                f"mean has {self.scale.mean.numel()} entries, n_features is {n_features}"
            )
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.scale(x))

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]


def init_weights(model: MLP, seed: int, scheme: str = "xavier_uniform") -> None:
    """Glorot (Xavier) initialisation of every weight from a generator seeded with ``seed``;
    biases set to zero. ``scheme`` is ``"xavier_uniform"`` or ``"xavier_normal"``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.linear_layers():
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(layer.weight, generator=gen)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(layer.weight, generator=gen)
            else:
                raise ValueError(f"scheme must be xavier_uniform or xavier_normal, got {scheme!r}")
            nn.init.zeros_(layer.bias)


def build_model(
    config: TrainConfig,
    n_features: int,
    n_classes: int,
    mean: np.ndarray | torch.Tensor,
    std: np.ndarray | torch.Tensor,
) -> MLP:
    """The config's network, initialised from ``config.seed``."""
    model = MLP(n_features, n_classes, config.hidden, mean, std, activation=config.activation)
    init_weights(model, config.seed, config.weight_init)
    return model


def feature_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and (population) standard deviation, computed in float64."""
    X64 = np.asarray(X, dtype=np.float64)
    return X64.mean(axis=0), X64.std(axis=0)
