"""Read a numeric CSV table with an optional label column.

Shared by the ``csv:`` training source and by anything else that takes a user's table (the
bring-your-own-model path). Imports numpy only, so it works without torch.

Rules: the first row is the header; blank lines are skipped; every feature cell must parse
as a finite number; the label column may hold integers (classes in numeric order) or any
strings (classes in sorted string order); ``class_names`` keep the labels as written. Every
problem raises :class:`~errors.DataError` with a one-line message naming the file,
and where it applies the row and column.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from errors import DataError


@dataclass(frozen=True)
class CsvTable:
    """A parsed table: float32 features, int64 class ids (or None without a label column)."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    path: str


def load_csv_table(path: str | Path, label_column: str | None) -> CsvTable:
    """Parse ``path``; ``label_column`` names the label, or None when every column is a feature.

    Row numbers in messages count data rows from 1 (the header is not a row); the file line
    is given too.

    Raises
    ------
    DataError
        Missing or empty file, duplicate or absent columns, ragged rows, non-numeric or
        non-finite (NaN, inf, empty) feature cells, empty labels.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"CSV file not found: {p}")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue
                if header is None:
                    header = [cell.strip() for cell in record]
                    continue
                rows.append(record)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV file {p}: {exc}") from exc
    if header is None:
        raise DataError(f"CSV file {p} is empty")
    if not rows:
        raise DataError(f"CSV file {p} has a header but no data rows")
    seen: set[str] = set()
    for name in header:
        if not name:
            raise DataError(f"{p}: the header has an empty column name")
        if name in seen:
            raise DataError(f"{p}: column {name!r} appears twice in the header")
        seen.add(name)
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(
                f"{p}: row {i + 1} (line {lines[i]}) has {len(row)} cells, "
                f"the header has {len(header)}"
            )

    label_idx: int | None = None
    if label_column is not None:
        if label_column not in header:
            raise DataError(
                f"{p}: label column {label_column!r} not found; columns: {', '.join(header)}"
            )
        label_idx = header.index(label_column)
    feature_idx = [j for j in range(len(header)) if j != label_idx]
    if not feature_idx:
        raise DataError(f"{p}: no feature columns besides the label column {label_column!r}")
    feature_names = tuple(header[j] for j in feature_idx)

    X = _parse_features(p, rows, lines, feature_idx, header)
    if label_idx is None:
        return CsvTable(X=X, y=None, feature_names=feature_names, class_names=(), path=str(p))
    y, class_names = _parse_labels(p, rows, lines, label_idx, header)
    return CsvTable(X=X, y=y, feature_names=feature_names, class_names=class_names, path=str(p))


def _parse_features(
    p: Path, rows: list[list[str]], lines: list[int], feature_idx: list[int], header: list[str]
) -> np.ndarray:
    cells = np.array([[row[j] for j in feature_idx] for row in rows], dtype=str)
    try:
        values = np.char.strip(cells).astype(np.float64)
    except ValueError:
        values = None
    if values is None:
        # Slow path, only to name the first bad cell.
        for i, row in enumerate(rows):
            for j in feature_idx:
                cell = row[j].strip()
                where = f"row {i + 1} (line {lines[i]}), column {header[j]!r}"
                if not cell:
                    raise DataError(f"{p}: empty cell at {where}")
                try:
                    float(cell)
                except ValueError:
                    raise DataError(f"{p}: non-numeric value {cell!r} at {where}") from None
        raise DataError(f"{p}: cannot parse the feature columns as numbers")
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, k = (int(v) for v in bad[0])
        j = feature_idx[k]
        raise DataError(
            f"{p}: non-finite value {rows[i][j].strip()!r} at row {i + 1} (line {lines[i]}), "
            f"column {header[j]!r}"
        )
    too_big = np.abs(values) > np.finfo(np.float32).max
    if too_big.any():
        i, k = (int(v) for v in np.argwhere(too_big)[0])
        j = feature_idx[k]
        raise DataError(
            f"{p}: value {rows[i][j].strip()!r} at row {i + 1} (line {lines[i]}), "
            f"column {header[j]!r} overflows float32"
        )
    return values.astype(np.float32)


def _parse_labels(
    p: Path, rows: list[list[str]], lines: list[int], label_idx: int, header: list[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    raw = [row[label_idx].strip() for row in rows]
    for i, value in enumerate(raw):
        if not value:
            raise DataError(
                f"{p}: empty label at row {i + 1} (line {lines[i]}), column {header[label_idx]!r}"
            )
    as_ints = _all_ints(raw)
    if as_ints is not None:
        distinct = sorted(set(as_ints))
        index = {v: k for k, v in enumerate(distinct)}
        y = np.array([index[v] for v in as_ints], dtype=np.int64)
        return y, tuple(str(v) for v in distinct)
    names = sorted(set(raw))
    index_s = {v: k for k, v in enumerate(names)}
    return np.array([index_s[v] for v in raw], dtype=np.int64), tuple(names)


def _all_ints(values: list[str]) -> list[int] | None:
    out: list[int] = []
    for v in values:
        try:
            out.append(int(v))
        except ValueError:
            return None
    return out
