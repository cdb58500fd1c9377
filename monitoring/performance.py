"""Classification performance: labelled figures, calibration error and a label-free estimate.

``classification_report`` gives what a delayed label window measures (accuracy, per-class
and macro precision / recall / F1, confusion matrix) with scikit-learn's conventions:
labels default to the sorted union of the labels seen, and a ratio whose denominator is
zero is 0.0. ``expected_calibration_error`` measures how far the model's confidence is from
its accuracy; ``estimated_accuracy`` is the confidence-based estimate (CBPE) that needs no
labels at all and is only as good as the calibration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class ClassificationReport:
    """Figures of one set of (true, predicted) labels.

    Attributes
    ----------
    n : int
        Number of rows.
    labels : tuple of int
        Class ids the per-class figures cover, sorted.
    accuracy : float
        Share of rows whose prediction equals the truth (over every row).
    precision, recall, f1 : tuple of float
        Per label, in the order of ``labels``; 0.0 where the denominator is zero.
    support : tuple of int
        Number of true rows per label.
    macro_precision, macro_recall, macro_f1 : float
        Unweighted means over ``labels``.
    confusion : tuple of tuple of int
        Rows are true labels, columns predicted labels, both in the order of ``labels``.
    """

    n: int
    labels: tuple[int, ...]
    accuracy: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    confusion: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary (plain ints, floats and lists)."""
        return {
            "n": self.n,
            "labels": list(self.labels),
            "accuracy": self.accuracy,
            "precision": list(self.precision),
            "recall": list(self.recall),
            "f1": list(self.f1),
            "support": list(self.support),
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "confusion": [list(row) for row in self.confusion],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassificationReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            n=int(d["n"]),
            labels=tuple(int(v) for v in d["labels"]),
            accuracy=float(d["accuracy"]),
            precision=tuple(float(v) for v in d["precision"]),
            recall=tuple(float(v) for v in d["recall"]),
            f1=tuple(float(v) for v in d["f1"]),
            support=tuple(int(v) for v in d["support"]),
            macro_precision=float(d["macro_precision"]),
            macro_recall=float(d["macro_recall"]),
            macro_f1=float(d["macro_f1"]),
            confusion=tuple(tuple(int(v) for v in row) for row in d["confusion"]),
        )

    def stats(self, class_names: Sequence[str] | None = None) -> str:
        """A readable text report: summary, per-class table, confusion matrix.

        Parameters
        ----------
        class_names : sequence of str, optional
            One name per entry of ``labels``; the label ids are shown when omitted.
        """
        if class_names is None:
            names = [str(label) for label in self.labels]
        else:
            names = [str(name) for name in class_names]
            if len(names) != len(self.labels):
                raise ValueError(
                    f"class_names has {len(names)} entries but the report covers "
                    f"{len(self.labels)} labels"
                )
        lines = [
            "========== Evaluation Metrics ==========",
            f" Rows:          {self.n}",
            f" # of classes:  {len(self.labels)}",
            f" Accuracy:      {self.accuracy:.4f}",
            f" Precision:     {self.macro_precision:.4f}   (macro)",
            f" Recall:        {self.macro_recall:.4f}   (macro)",
            f" F1 Score:      {self.macro_f1:.4f}   (macro)",
            "",
            "---------- Per class ----------",
        ]
        width = max([5, *(len(name) for name in names)])
        lines.append(
            f" {'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>7}"
        )
        for i, name in enumerate(names):
            lines.append(
                f" {name:<{width}}  {self.precision[i]:>9.4f}  {self.recall[i]:>9.4f}"
                f"  {self.f1[i]:>9.4f}  {self.support[i]:>7d}"
            )
        lines += ["", "---------- Confusion matrix (rows: true, columns: predicted) ----------"]
        cells = [str(v) for row in self.confusion for v in row]
        cell = max([1, *(len(c) for c in cells), *(len(name) for name in names)])
        lines.append(" " + " " * width + "  " + " ".join(f"{name:>{cell}}" for name in names))
        for name, row in zip(names, self.confusion, strict=True):
            lines.append(f" {name:<{width}}  " + " ".join(f"{v:>{cell}d}" for v in row))
        lines.append("=" * 40)
        return "\n".join(lines)


def _as_labels(y: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_int = arr.astype(np.int64)
        if not np.array_equal(as_int, arr):
            raise ValueError(f"{name} must hold integer class ids")
        return as_int
    return arr.astype(np.int64)


def classification_report(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Sequence[int] | None = None
) -> ClassificationReport:
    """Accuracy, per-class and macro precision / recall / F1, and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : array_like of int
        True and predicted class ids, one per row.
    labels : sequence of int, optional
        Class ids to report on (sorted in the report). Default: the sorted union of the ids
        present in ``y_true`` and ``y_pred``. Precision counts every row predicted as a
        label; accuracy always covers every row; the confusion matrix only the rows whose
        true and predicted labels are both listed.

    Returns
    -------
    ClassificationReport

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y_true = rng.integers(0, 3, 200)
    >>> y_pred = np.where(rng.random(200) < 0.8, y_true, rng.integers(0, 3, 200))
    >>> report = classification_report(y_true, y_pred)
    >>> report.labels, round(report.accuracy, 3)
    ((0, 1, 2), 0.83)
    """
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.size == 0:
        raise ValueError("y_true is empty")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} rows but y_pred has {p.size}")
    if labels is None:
        lab = np.union1d(t, p)
    else:
        lab = np.sort(np.asarray(labels, dtype=np.int64).ravel())
        if lab.size == 0:
            raise ValueError("labels is empty")
        if np.any(lab[1:] == lab[:-1]):
            raise ValueError("labels holds duplicates")
    k = lab.size
    # Position of each row's label within `lab`, or k when the label is not listed.
    ti = np.searchsorted(lab, t)
    ti[(ti >= k) | (lab[np.minimum(ti, k - 1)] != t)] = k
    pi = np.searchsorted(lab, p)
    pi[(pi >= k) | (lab[np.minimum(pi, k - 1)] != p)] = k
    full = np.bincount(ti * (k + 1) + pi, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    confusion = full[:k, :k]
    tp = np.diag(confusion).astype(np.float64)
    true_count = full[:k, :].sum(axis=1)
    pred_count = full[:, :k].sum(axis=0)
    precision = _ratio(tp, pred_count)
    recall = _ratio(tp, true_count)
    f1 = _ratio(2.0 * tp, true_count + pred_count)
    return ClassificationReport(
        n=int(t.size),
        labels=tuple(int(v) for v in lab),
        accuracy=float(np.mean(t == p)),
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in true_count),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    den = den.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(den), where=den > 0)


def _check_probabilities(probabilities: ArrayLike) -> np.ndarray:
    prob = np.asarray(probabilities, dtype=np.float64)
    if prob.ndim != 2 or prob.shape[0] == 0 or prob.shape[1] == 0:
        raise ValueError(
            f"probabilities must be a non-empty (rows, classes) array, got shape {prob.shape}"
        )
    if not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError("probabilities must be finite and within [0, 1]")
    if not np.allclose(prob.sum(axis=1), 1.0, rtol=0.0, atol=1e-3):
        raise ValueError("probabilities rows must sum to 1")
    return prob


def expected_calibration_error(
    probabilities: ArrayLike, y_true: ArrayLike, n_bins: int = 15
) -> float:
    """Expected calibration error over equal-width confidence bins.

    The confidence of a row is its largest probability and its prediction the arg max.
    Bin ``b`` holds the rows with ``b / n_bins < confidence <= (b + 1) / n_bins`` (bin 0
    also takes a confidence of exactly 0). The error is
    ``sum_b |accuracy_b - mean confidence_b| * n_b / n`` over non-empty bins.

    Parameters
    ----------
    probabilities : array_like, shape (n, classes)
        Predicted class probabilities; rows sum to 1.
    y_true : array_like of int, shape (n,)
        True class ids.
    n_bins : int
        Number of bins on [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> prob = rng.dirichlet(np.ones(3), size=500)
    >>> y = np.array([rng.choice(3, p=row) for row in prob])
    >>> round(expected_calibration_error(prob, y), 3)
    0.049
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    prob = _check_probabilities(probabilities)
    y = _as_labels(y_true, "y_true")
    if y.size != prob.shape[0]:
        raise ValueError(f"y_true has {y.size} rows but probabilities has {prob.shape[0]}")
    confidence = prob.max(axis=1)
    correct = (prob.argmax(axis=1) == y).astype(np.float64)
    boundaries = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(boundaries[1:-1], confidence, side="left")
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    # |acc_b - conf_b| * n_b / n == |sum correct - sum confidence| / n within a bin.
    return float(np.sum(np.abs(acc_sum - conf_sum)) / confidence.size)


def estimated_accuracy(probabilities: ArrayLike) -> float:
    """Label-free accuracy estimate: the mean of each row's largest probability.

    This is confidence-based performance estimation (CBPE): if the probabilities are
    calibrated, a row's prediction is right with probability equal to its confidence, so
    the expected accuracy of a window is the mean confidence. It degrades exactly as far as
    the calibration does (for instance under concept drift).

    Parameters
    ----------
    probabilities : array_like, shape (n, classes)
        Predicted class probabilities; rows sum to 1.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> prob = rng.dirichlet(np.ones(3), size=1000)
    >>> round(estimated_accuracy(prob), 3)
    0.614
    """
    prob = _check_probabilities(probabilities)
    return float(prob.max(axis=1).mean())
