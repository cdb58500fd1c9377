from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from errors import DataError
from training.data import (
    Dataset,
    dataset_fingerprint,
    load_csv_table,
    load_dataset,
    read_idx,
    split_dataset,
)

# ---------------------------------------------------------------- digits


def test_digits_is_sklearns_bundled_set_in_raw_units(digits: Dataset) -> None:
    ref = load_digits()
    assert digits.X.dtype == np.float32 and digits.y.dtype == np.int64
    assert digits.X.shape == (1797, 64)
    np.testing.assert_array_equal(digits.X, ref.data.astype(np.float32))
    np.testing.assert_array_equal(digits.y, ref.target)
    assert digits.X.min() == 0 and digits.X.max() == 16
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert len(digits.feature_names) == 64 and digits.source == "digits"


def test_fingerprint_is_sha256_of_the_documented_bytes(digits: Dataset) -> None:
    h = hashlib.sha256(b"argus-dataset-v1\0")
    h.update(struct.pack("<QQ", 1797, 64))
    h.update(digits.X.astype("<f4").tobytes())
    h.update(digits.y.astype("<i8").tobytes())
    assert digits.fingerprint == h.hexdigest()
    # independent of dtype and memory layout, sensitive to any value
    assert dataset_fingerprint(np.asfortranarray(digits.X.astype(np.float64)), digits.y) == (
        digits.fingerprint
    )
    y2 = digits.y.copy()
    y2[0] = (y2[0] + 1) % 10
    assert dataset_fingerprint(digits.X, y2) != digits.fingerprint


def test_unknown_source() -> None:
    with pytest.raises(DataError, match="unknown data source 'iris'"):
        load_dataset("iris")


# ---------------------------------------------------------------- MNIST IDX


def _idx(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1").tobytes()


def _write(path: Path, data: bytes, gz: bool) -> None:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _mnist_dir(tmp_path: Path, gz: bool, with_test: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.tile(np.arange(10, dtype=np.uint8), 3)
    _write(tmp_path / "train-images-idx3-ubyte", _idx(images), gz)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx(labels), gz)
    if not with_test:
        return images, labels
    t_images = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    t_labels = np.arange(10, dtype=np.uint8)[::-1].copy()
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx(t_images), not gz)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx(t_labels), not gz)
    return np.concatenate([images, t_images]), np.concatenate([labels, t_labels])


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_train_only(tmp_path: Path, gz: bool) -> None:
    images, labels = _mnist_dir(tmp_path, gz=gz, with_test=False)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.X.shape == (30, 784) and ds.X.dtype == np.float32
    np.testing.assert_array_equal(ds.X, images.reshape(30, 784))  # raw 0..255, row-major
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.class_names == tuple("0123456789")
    assert ds.feature_names[:2] == ("pixel_0_0", "pixel_0_1") and ds.feature_names[-1] == (
        "pixel_27_27"
    )


def test_mnist_t10k_is_appended_mixing_plain_and_gz(tmp_path: Path) -> None:
    images, labels = _mnist_dir(tmp_path, gz=True, with_test=True)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.X.shape == (40, 784)
    np.testing.assert_array_equal(ds.X, images.reshape(40, 784))
    np.testing.assert_array_equal(ds.y, labels)


def test_mnist_bad_magic(tmp_path: Path) -> None:
    _mnist_dir(tmp_path, gz=False, with_test=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x01\x02" + path.read_bytes()[2:])
    with pytest.raises(DataError, match="bad magic number"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_truncated_and_mismatched_files(tmp_path: Path) -> None:
    _mnist_dir(tmp_path, gz=False, with_test=False)
    images = tmp_path / "train-images-idx3-ubyte"
    full = images.read_bytes()
    images.write_bytes(full[:-5])
    with pytest.raises(DataError, match="promises"):
        read_idx(images)
    images.write_bytes(full)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DataError, match="30 images but .* 10 labels"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"mnist:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path}")


# ---------------------------------------------------------------- CSV


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "data.csv"
    p.write_text(text)
    return p


def test_csv_with_string_labels(tmp_path: Path) -> None:
    rows = ["a,b,species"] + [f"{i},{i * 0.5},{'cat' if i % 2 else 'ant'}" for i in range(12)]
    p = _csv(tmp_path, "\n".join(rows) + "\n")
    ds = load_dataset(f"csv:{p}", "species")
    assert ds.feature_names == ("a", "b") and ds.class_names == ("ant", "cat")
    np.testing.assert_array_equal(ds.y, [i % 2 for i in range(12)])
    np.testing.assert_allclose(ds.X[:, 1], [i * 0.5 for i in range(12)])


def test_csv_with_int_labels_in_numeric_order_and_label_first(tmp_path: Path) -> None:
    rows = ["label,x"] + [f"{[10, 2, 9][i % 3]},{i}" for i in range(9)]
    ds = load_dataset(f"csv:{_csv(tmp_path, chr(10).join(rows))}", "label")
    assert ds.class_names == ("2", "9", "10")  # numeric, not string, order
    np.testing.assert_array_equal(ds.y, [[2, 0, 1][i % 3] for i in range(9)])
    assert ds.feature_names == ("x",)


def test_load_csv_table_without_label(tmp_path: Path) -> None:
    t = load_csv_table(_csv(tmp_path, "x,y\n1,2\n3,4\n"), None)
    assert t.y is None and t.feature_names == ("x", "y") and t.class_names == ()
    np.testing.assert_array_equal(t.X, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "is empty"),
        ("a,b,label\n", "no data rows"),
        ("a,b,kind\n1,2,x\n", r"label column 'label' not found; columns: a, b, kind"),
        ("a,b,label\n1,2,x\n3,oops,y\n", r"non-numeric value 'oops' at row 2 \(line 3\), col"),
        ("a,b,label\n1,2,x\n3,nan,y\n", r"non-finite value 'nan' at row 2 \(line 3\), column 'b'"),
        ("a,b,label\n1,inf,x\n", r"non-finite value 'inf' at row 1 \(line 2\), column 'b'"),
        ("a,b,label\n1,2,x\n,4,y\n", r"empty cell at row 2 \(line 3\), column 'a'"),
        ("a,b,label\n1,2,x\n3,4\n", r"row 2 \(line 3\) has 2 cells, the header has 3"),
        ("a,a,label\n1,2,x\n", "column 'a' appears twice"),
        ("a,b,label\n1,2,\n", r"empty label at row 1 \(line 2\)"),
        ("label\nx\n", "no feature columns"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path: Path, text: str, pattern: str) -> None:
    p = _csv(tmp_path, text)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(f"csv:{p}", "label")
    assert "\n" not in str(info.value)


def test_csv_missing_file_and_missing_label_column_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"csv:{tmp_path / 'none.csv'}", "label")
    with pytest.raises(DataError, match="label_column"):
        load_dataset(f"csv:{_csv(tmp_path, 'a,label' + chr(10) + '1,x')}")


def test_csv_class_checks(tmp_path: Path) -> None:
    one_class = "a,label\n" + "".join(f"{i},x\n" for i in range(10))
    with pytest.raises(DataError, match="at least 2 classes, found 1"):
        load_dataset(f"csv:{_csv(tmp_path, one_class)}", "label")
    small = "a,label\n" + "".join(f"{i},x\n" for i in range(10)) + "1,y\n2,y\n"
    with pytest.raises(DataError, match="class 'y' has 2 row"):
        load_dataset(f"csv:{_csv(tmp_path, small)}", "label")


# ---------------------------------------------------------------- split


def test_split_is_stratified_disjoint_and_complete(digits: Dataset) -> None:
    s = split_dataset(digits, 0.15, 0.15, seed=12345)
    sizes = s.sizes()
    assert sum(sizes.values()) == len(digits.y)
    assert sizes == {"train": len(s.y_train), "val": len(s.y_val), "test": len(s.y_test)}
    counts = np.bincount(digits.y)
    for part, frac in ((s.y_val, 0.15), (s.y_test, 0.15)):
        np.testing.assert_array_equal(np.bincount(part, minlength=10), np.round(counts * frac))

    # the parts partition the rows: compare multisets of (row, label) byte strings
    def rows(X: np.ndarray, y: np.ndarray) -> list[bytes]:
        return [x.tobytes() + bytes([int(c)]) for x, c in zip(X, y, strict=True)]

    together = sorted(
        rows(s.X_train, s.y_train) + rows(s.X_val, s.y_val) + rows(s.X_test, s.y_test)
    )
    assert together == sorted(rows(digits.X, digits.y))
    assert s.n_classes == 10


def test_split_is_seeded(digits: Dataset) -> None:
    a = split_dataset(digits, 0.2, 0.1, seed=1)
    b = split_dataset(digits, 0.2, 0.1, seed=1)
    c = split_dataset(digits, 0.2, 0.1, seed=2)
    np.testing.assert_array_equal(a.X_val, b.X_val)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)
    # parts are shuffled, not grouped by class
    assert np.any(np.diff(a.y_train) < 0)


def test_split_parameter_errors(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_dataset(digits, 0.0, 0.2, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        split_dataset(digits, 0.2, 1.5, seed=0)
    with pytest.raises(ValueError, match="must be < 1"):
        split_dataset(digits, 0.5, 0.5, seed=0)
    tiny = Dataset(
        X=np.zeros((6, 1), np.float32),
        y=np.array([0, 0, 0, 1, 1, 1]),
        feature_names=("a",),
        class_names=("p", "q"),
        source="t",
        fingerprint="",
    )
    split_dataset(tiny, 0.2, 0.2, seed=0)  # one row of each class per part works
    with pytest.raises(DataError, match="class 'p' has 3 row"):
        split_dataset(tiny, 0.5, 0.3, seed=0)
