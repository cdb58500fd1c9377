"""Training data sources and the seeded, stratified split.

Sources, named by a string so a config or a model card can record them:

``"digits"``
    scikit-learn's bundled 8x8 handwritten digits (1797 rows, 64 features in 0..16).
``"digits28"``
    The same digits resized to MNIST's 28x28 (784 features, whole grey levels in 0..255),
    see :mod:`training.digits28`: an MNIST-shaped input without a download.
``"mnist:DIR"``
    MNIST in its IDX files inside ``DIR``: ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte``, plus ``t10k-*`` (appended) when present; each plain or
    ``.gz``. Pixels stay in raw 0..255 units, flattened row by row.
``"csv:PATH"``
    A numeric table with a header row and a label column (ints or strings).

Every source yields raw feature units: the network standardises inside itself, so the served
model takes exactly what the data held.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from errors import DataError
from training.csvtable import CsvTable, load_csv_table
from training.digits28 import DIGITS28, load_digits28

__all__ = [
    "MIN_ROWS_PER_CLASS",
    "CsvTable",
    "Dataset",
    "Split",
    "dataset_fingerprint",
    "load_csv_table",
    "load_dataset",
    "read_idx",
    "split_dataset",
]

#: A class needs a row in each of train, validation and test to be stratified.
MIN_ROWS_PER_CLASS = 3


@dataclass(frozen=True)
class Dataset:
    """Features and integer labels of one source.

    ``X`` is float32 ``(n, d)`` in the source's raw units; ``y`` is int64 with classes
    ``0..k-1``, class ``i`` being ``class_names[i]``. ``fingerprint`` is
    :func:`dataset_fingerprint` of ``X`` and ``y``.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    source: str
    fingerprint: str

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Split:
    """Train / validation / test parts of a dataset, disjoint and stratified."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1

    def sizes(self) -> dict[str, int]:
        """Rows per part: ``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def dataset_fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 hex digest of a canonical byte form of ``X`` and ``y``.

    The bytes hashed are, in order: the ASCII tag ``argus-dataset-v1`` and a NUL byte; the
    row count ``n`` and feature count ``d`` as little-endian uint64; ``X`` as C-ordered
    little-endian float32; ``y`` as little-endian int64. The same values give the same
    fingerprint whatever the source's dtype, memory layout or machine byte order.
    """
    X32 = np.ascontiguousarray(X, dtype="<f4")
    y64 = np.ascontiguousarray(y, dtype="<i8")
    if X32.ndim != 2 or y64.shape != (X32.shape[0],):
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    h = hashlib.sha256()
    h.update(b"argus-dataset-v1\0")
    h.update(np.asarray(X32.shape, dtype="<u8").tobytes())
    h.update(X32.tobytes())
    h.update(y64.tobytes())
    return h.hexdigest()


def load_dataset(source: str, label_column: str | None = None) -> Dataset:
    """Load a named source (see the module docstring) as a :class:`Dataset`.

    Raises
    ------
    DataError
        On an unknown source, unreadable or malformed files, fewer than two classes, or a
        class with fewer than :data:`MIN_ROWS_PER_CLASS` rows.
    """
    if source == "digits":
        X, y, feature_names, class_names = _load_digits()
    elif source == DIGITS28:
        X, y, feature_names, class_names = load_digits28()
    elif source.startswith("mnist:"):
        X, y, feature_names, class_names = _load_mnist(Path(source[len("mnist:") :]))
    elif source.startswith("csv:"):
        if not label_column:
            raise DataError(f"source {source!r} needs a label column (label_column)")
        table = load_csv_table(source[len("csv:") :], label_column)
        assert table.y is not None
        X, y, feature_names, class_names = (
            table.X,
            table.y,
            table.feature_names,
            table.class_names,
        )
    else:
        raise DataError(
            f"unknown data source {source!r}; expected 'digits', '{DIGITS28}', 'mnist:DIR' or "
            "'csv:PATH'"
        )
    _check_classes(y, class_names, source)
    return Dataset(
        X=X,
        y=y,
        feature_names=feature_names,
        class_names=class_names,
        source=source,
        fingerprint=dataset_fingerprint(X, y),
    )


def _check_classes(y: np.ndarray, class_names: tuple[str, ...], source: str) -> None:
    if len(class_names) < 2:
        raise DataError(f"{source}: need at least 2 classes, found {len(class_names)}")
    counts = np.bincount(y, minlength=len(class_names))
    for i, count in enumerate(counts):
        if count < MIN_ROWS_PER_CLASS:
            raise DataError(
                f"{source}: class {class_names[i]!r} has {count} row(s); at least "
                f"{MIN_ROWS_PER_CLASS} are needed to stratify train/validation/test"
            )


def _load_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    feature_names = tuple(str(n) for n in bunch.feature_names)
    class_names = tuple(str(int(c)) for c in bunch.target_names)
    return X, y, feature_names, class_names


# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain, or gzip when the name ends in ``.gz``).

    The header is two zero bytes, a type byte (0x08 unsigned byte ... 0x0E float64), the
    number of dimensions, then each dimension as a big-endian uint32; the values follow.

    Raises
    ------
    DataError
        On a bad magic number, an unknown type byte or a size that does not match the header.
    """
    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {p}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{p} is not an IDX file: bad magic number {raw[:4].hex() or 'empty'}")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise DataError(f"{p} is not an IDX file: unknown type byte 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{p}: truncated IDX header ({ndim} dimensions)")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{p}: IDX header {dims} promises {expected} bytes of data, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    # The usual names use dashes; some mirrors use a dot before "idx".
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_mnist(directory: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    if not directory.is_dir():
        raise DataError(f"MNIST directory not found: {directory}")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for part in ("train", "t10k"):
        img_path = _find_idx(directory, f"{part}-images-idx3-ubyte")
        lab_path = _find_idx(directory, f"{part}-labels-idx1-ubyte")
        if img_path is None and lab_path is None and part == "t10k":
            continue
        if img_path is None or lab_path is None:
            kind = "images-idx3" if img_path is None else "labels-idx1"
            raise DataError(f"{directory}: missing MNIST file {part}-{kind}-ubyte[.gz]")
        img, lab = read_idx(img_path), read_idx(lab_path)
        if img.ndim != 3:
            raise DataError(f"{img_path}: expected 3 dimensions (n, rows, cols), got {img.shape}")
        if lab.ndim != 1:
            raise DataError(f"{lab_path}: expected 1 dimension (n,), got {lab.shape}")
        if img.shape[0] != lab.shape[0]:
            raise DataError(
                f"{directory}: {img_path.name} has {img.shape[0]} images but "
                f"{lab_path.name} has {lab.shape[0]} labels"
            )
        if images and img.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{img_path}: image size {img.shape[1:]} differs from the train set's")
        images.append(img)
        labels.append(lab)
    rows, cols = images[0].shape[1:]
    X = np.concatenate([i.reshape(len(i), rows * cols) for i in images]).astype(np.float32)
    raw_labels = np.concatenate(labels).astype(np.int64)
    values, y = np.unique(raw_labels, return_inverse=True)
    feature_names = tuple(f"pixel_{r}_{c}" for r in range(rows) for c in range(cols))
    class_names = tuple(str(int(v)) for v in values)
    return X, y.astype(np.int64), feature_names, class_names


def split_dataset(ds: Dataset, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Seeded stratified split into train, validation and test rows.

    Each class is shuffled with ``numpy.random.default_rng(seed)`` and cut so that
    ``round(n_c * val_fraction)`` and ``round(n_c * test_fraction)`` of its ``n_c`` rows (at
    least one each) go to validation and test; the rest train. Each part is then shuffled.

    Raises
    ------
    ValueError
        Naming the fraction, when a fraction is outside (0, 1) or they sum to 1 or more.
    DataError
        When a class is too small to give every part a row.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(ds.n_classes):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        n = len(idx)
        n_val = max(1, round(n * val_fraction))
        n_test = max(1, round(n * test_fraction))
        if n - n_val - n_test < 1:
            name = ds.class_names[c]
            raise DataError(
                f"class {name!r} has {n} row(s): too few for a train/validation/test split"
            )
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    chosen = {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}
    return Split(
        X_train=ds.X[chosen["train"]],
        y_train=ds.y[chosen["train"]],
        X_val=ds.X[chosen["val"]],
        y_val=ds.y[chosen["val"]],
        X_test=ds.X[chosen["test"]],
        y_test=ds.y[chosen["test"]],
    )
