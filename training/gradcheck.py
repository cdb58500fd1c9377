"""Gradient check: autograd gradients against central finite differences.

Like DeepLearning4j's ``GradientCheckUtil``: the model is copied to float64, the mean
cross-entropy of a small batch is differentiated by autograd, and each checked parameter
``w`` is nudged by ``+-eps`` to get ``(L(w + eps) - L(w - eps)) / (2 eps)``. The relative
error of a parameter is ``|a - n| / max(|a| + |n|, tiny)``; a parameter fails when its
relative error exceeds ``tolerance`` *and* its absolute error exceeds ``min_abs_error``
(gradients that are both about zero carry only rounding noise).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Relative error above which a parameter fails (float64, eps = 1e-6).
DEFAULT_TOLERANCE = 1e-5
#: Absolute error below which a parameter passes whatever its relative error.
DEFAULT_MIN_ABS_ERROR = 1e-8
_TINY = 1e-300


@dataclass(frozen=True)
class GradCheckResult:
    """Outcome of a gradient check.

    ``max_relative_error`` and ``max_abs_error`` are maxima over every checked parameter;
    ``n_above_tolerance`` counts parameters whose relative error exceeds ``tolerance``, and
    ``n_failed`` those of them whose absolute error also exceeds ``min_abs_error`` (the rest
    are rounding noise on near-zero gradients); ``passed`` is ``n_failed == 0``.
    """

    max_relative_error: float
    n_checked: int
    passed: bool
    tolerance: float
    max_abs_error: float = 0.0
    n_above_tolerance: int = 0
    n_failed: int = 0
    min_abs_error: float = DEFAULT_MIN_ABS_ERROR
    eps: float = 1e-6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gradient_check(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    eps: float = 1e-6,
    n_params: int | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    min_abs_error: float = DEFAULT_MIN_ABS_ERROR,
) -> GradCheckResult:
    """Compare autograd with finite differences on a float64 copy of ``model``.

    Parameters
    ----------
    model : nn.Module
        Maps ``(batch, d)`` features to logits; left untouched (a copy is checked).
    X, y : arrays
        A small batch of rows and their integer labels.
    eps : float
        Finite-difference step.
    n_params : int or None
        Check this many scalar parameters, drawn without replacement with ``seed``; None
        checks all of them.
    tolerance, min_abs_error : float
        Failure thresholds (see the module docstring).

    Returns
    -------
    GradCheckResult

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    >>> gradient_check(net, X, torch.tensor([0, 1, 0, 1, 1])).passed
    True
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if n_params is not None and n_params < 1:
        raise ValueError(f"n_params must be >= 1 or None, got {n_params}")
    net = copy.deepcopy(model).double().eval()
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(Xt) == 0 or len(Xt) != len(yt):
        raise ValueError(f"X and y must be non-empty and of equal length, got {len(Xt)}, {len(yt)}")
    params = [p for p in net.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    if total == 0:
        raise ValueError("model has no trainable parameters")

    def loss_value() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(net(Xt), yt))

    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(Xt), yt).backward()
    analytic = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten() for p in params]
    ).numpy()

    if n_params is None or n_params >= total:
        chosen = np.arange(total)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=n_params, replace=False))
    offsets = np.cumsum([0, *sizes])
    numeric = np.empty(len(chosen))
    with torch.no_grad():
        for k, flat in enumerate(chosen):
            which = int(np.searchsorted(offsets, flat, side="right") - 1)
            view = params[which].view(-1)
            i = int(flat - offsets[which])
            original = float(view[i])
            view[i] = original + eps
            plus = loss_value()
            view[i] = original - eps
            minus = loss_value()
            view[i] = original
            numeric[k] = (plus - minus) / (2 * eps)

    a = analytic[chosen]
    abs_err = np.abs(a - numeric)
    rel_err = abs_err / np.maximum(np.abs(a) + np.abs(numeric), _TINY)
    above = rel_err > tolerance
    failed = above & (abs_err > min_abs_error)
    return GradCheckResult(
        max_relative_error=float(rel_err.max()),
        n_checked=len(chosen),
        passed=not bool(failed.any()),
        tolerance=tolerance,
        max_abs_error=float(abs_err.max()),
        n_above_tolerance=int(above.sum()),
        n_failed=int(failed.sum()),
        min_abs_error=min_abs_error,
        eps=eps,
    )
