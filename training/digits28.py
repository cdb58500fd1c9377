"""The bundled 8x8 digits at MNIST's shape: 28x28 pixels in 0..255, nothing downloaded.

Source ``"digits28"`` of :func:`training.data.load_dataset`. Each of scikit-learn's 1797
8x8 images (grey levels 0..16) is resized to 28x28 by bilinear interpolation with
half-pixel centres and clamped edges (what ``torch.nn.functional.interpolate(...,
mode="bilinear", align_corners=False)`` computes), rescaled to 0..255 and rounded to whole
grey levels, so a row is 784 integer-valued pixels like an MNIST image flattened row by
row. Labels and their order are the 8x8 source's. Nothing is random: the same
scikit-learn gives the same rows, whatever the seed of the split that follows.

It gives the benchmarks and the tests a 784-feature model (an MNIST-shaped MLP) trained
on real digits without a download.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS28", "SIDE", "bilinear_weights", "load_digits28", "upsample"]

#: The source name in a config or a model card.
DIGITS28 = "digits28"
#: Side of the resized images, in pixels (MNIST's).
SIDE = 28
#: Largest grey level of the 8x8 source and of the resized images.
SOURCE_MAX, TARGET_MAX = 16.0, 255.0


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D linear interpolation weights.

    Output pixel ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5`` (pixel
    centres aligned), clamped to ``[0, n_in - 1]``, from its two nearest input pixels; each
    row sums to 1.

    Examples
    --------
    >>> bilinear_weights(2, 4).round(3).tolist()
    [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"n_in and n_out must be >= 1, got {n_in} and {n_out}")
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def upsample(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Bilinear resize of ``(n, h, w)`` images to ``(n, side, side)``, in float64.

    Separable: each image ``I`` becomes ``R @ I @ C.T`` with ``R`` and ``C`` from
    :func:`bilinear_weights` for its height and width.
    """
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim != 3:
        raise ValueError(f"images must be (n, h, w), got shape {imgs.shape}")
    rows = bilinear_weights(imgs.shape[1], side)
    cols = bilinear_weights(imgs.shape[2], side)
    return np.einsum("ij,njk,lk->nil", rows, imgs, cols)


def load_digits28() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """``(X, y, feature_names, class_names)`` of the resized digits.

    ``X`` is float32 ``(1797, 784)`` with whole grey levels in 0..255; feature
    ``pixel_R_C`` is row ``R``, column ``C`` of the 28x28 image (as for ``"mnist:DIR"``).
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    small = np.asarray(bunch.images, dtype=np.float64)
    big = upsample(small) * (TARGET_MAX / SOURCE_MAX)
    X = np.clip(np.rint(big), 0.0, TARGET_MAX).reshape(len(big), SIDE * SIDE).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    feature_names = tuple(f"pixel_{r}_{c}" for r in range(SIDE) for c in range(SIDE))
    class_names = tuple(str(int(c)) for c in bunch.target_names)
    return X, y, feature_names, class_names
