from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from training.data import Split
from training.gradcheck import gradient_check
from training.loop import TrainedNet


def test_passes_on_the_real_mlp(small_trained: TrainedNet, digits_split: Split) -> None:
    X, y = digits_split.X_train[:16], digits_split.y_train[:16]
    before = {k: v.clone() for k, v in small_trained.model.state_dict().items()}
    result = gradient_check(small_trained.model, X, y)
    n_params = sum(p.numel() for p in small_trained.model.parameters())
    assert result.n_checked == n_params == 64 * 100 + 100 + 100 * 10 + 10
    assert result.passed and result.n_failed == 0
    assert result.max_relative_error < 1e-4
    assert result.max_abs_error < 1e-8
    # the model itself is untouched (float32, same weights)
    for k, v in small_trained.model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k])


def test_seeded_subset(small_trained: TrainedNet, digits_split: Split) -> None:
    X, y = digits_split.X_train[:16], digits_split.y_train[:16]
    a = gradient_check(small_trained.model, X, y, n_params=200, seed=3)
    b = gradient_check(small_trained.model, X, y, n_params=200, seed=3)
    assert a == b and a.n_checked == 200 and a.passed


class _WrongReLU(torch.autograd.Function):
    """ReLU whose backward pass returns twice the true gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * grad * (x > 0).to(grad.dtype)


class _BrokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = nn.Linear(64, 20)
        self.b = nn.Linear(20, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_WrongReLU.apply(self.a(x / 16)))


def test_fails_on_a_wrong_backward_pass(digits_split: Split) -> None:
    X, y = digits_split.X_train[:16], digits_split.y_train[:16]
    result = gradient_check(_BrokenNet(), X, y)
    assert not result.passed
    # a doubled gradient gives |2n - n| / (2n + n) = 1/3 on the first layer
    assert result.max_relative_error == pytest.approx(1 / 3, abs=1e-4)
    # only first-layer parameters (behind the wrong ReLU) can fail; the last layer's are right
    assert 0 < result.n_failed <= 20 * 64 + 20


def test_argument_errors(small_trained: TrainedNet, digits_split: Split) -> None:
    X, y = digits_split.X_train[:4], digits_split.y_train[:4]
    with pytest.raises(ValueError, match="eps"):
        gradient_check(small_trained.model, X, y, eps=0)
    with pytest.raises(ValueError, match="n_params"):
        gradient_check(small_trained.model, X, y, n_params=0)
    with pytest.raises(ValueError, match="equal length"):
        gradient_check(small_trained.model, X, y[:2])
