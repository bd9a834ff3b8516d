"""Datasets the data owner encrypts: CSV or NPY files, or scikit-learn's bundled UCI sets.

The owner reads data locally (it never leaves the machine in plaintext), so this module is about
clear failures: a ragged CSV, a non-numeric cell, an object array in an NPY file or a NaN is reported
with the file, row and column, before anything is encrypted or uploaded. NPY files are loaded with
``allow_pickle=False``: an NPY holding Python objects is rejected, never unpickled.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLED",
    "Dataset",
    "DatasetError",
    "load_bundled",
    "load_csv",
    "load_dataset",
    "load_npy",
    "scale",
    "shuffle",
    "subset",
    "train_test_split",
]

#: Short names accepted by :func:`load_bundled` -> scikit-learn loader name.
BUNDLED: dict[str, str] = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "breast-cancer": "load_breast_cancer",
}
MAX_CSV_BYTES = 2 * 1024**3


class DatasetError(ValueError):
    """A dataset file or name the owner cannot use; the message says which file and why."""


@dataclass(frozen=True)
class Dataset:
    """A numeric dataset: ``x`` is n x a float64, ``y`` an optional length-n int64 label vector."""

    name: str
    x: np.ndarray
    y: np.ndarray | None = None
    feature_names: tuple[str, ...] = field(default=())
    label_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise DatasetError(f"{self.name}: expected a non-empty 2-D matrix, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DatasetError(f"{self.name}: expected real numbers, got dtype {x.dtype}")
        x = x.astype(np.float64, copy=False)
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))[0]
            raise DatasetError(f"{self.name}: NaN or infinity at row {bad[0]}, column {bad[1]}")
        object.__setattr__(self, "x", x)
        if self.y is not None:
            y = np.asarray(self.y).reshape(-1)
            if y.shape[0] != x.shape[0]:
                raise DatasetError(f"{self.name}: {y.shape[0]} labels for {x.shape[0]} rows")
            object.__setattr__(self, "y", y.astype(np.int64, copy=False))

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def a(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_classes(self) -> int:
        return 0 if self.y is None else int(np.unique(self.y).size)


def _encode_labels(raw: Sequence[str] | np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map label values to 0..c-1 (numeric labels keep their order, strings sort)."""
    values = np.asarray(raw)
    try:
        numeric = values.astype(np.float64)
    except ValueError:
        names, codes = np.unique(values.astype(str), return_inverse=True)
        return codes.astype(np.int64), tuple(str(v) for v in names)
    if not np.all(np.isfinite(numeric)):
        raise DatasetError("label column contains NaN or infinity")
    uniq, codes = np.unique(numeric, return_inverse=True)
    return codes.astype(np.int64), tuple(f"{v:g}" for v in uniq)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_index(
    label_column: int | str | None, header: list[str] | None, width: int, path: Path
) -> int | None:
    if label_column is None:
        return None
    if isinstance(label_column, int):
        index = label_column if label_column >= 0 else width + label_column
        if not 0 <= index < width:
            raise DatasetError(f"{path}: label column {label_column} out of range for {width} columns")
        return index
    if label_column == "last":
        return width - 1
    if header is None or label_column not in header:
        raise DatasetError(f"{path}: no column named {label_column!r} (header: {header})")
    return header.index(label_column)


def load_csv(
    path: str | Path,
    *,
    label_column: int | str | None = None,
    delimiter: str = ",",
    header: bool | None = None,
    name: str | None = None,
) -> Dataset:
    """Read a numeric CSV file.

    ``header=None`` detects a header row (the first row has a non-numeric cell). ``label_column`` is an
    index (negative counts from the end), ``"last"``, or a header name; that column may hold strings
    (encoded 0..c-1 in sorted order). Every other cell must be a finite number.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    if p.stat().st_size > MAX_CSV_BYTES:
        raise DatasetError(f"{p}: larger than {MAX_CSV_BYTES} bytes; convert it to .npy")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{p}: not a UTF-8 text file ({exc.reason})") from None
    try:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise DatasetError(f"{p}: malformed CSV: {exc}") from None
    if not rows:
        raise DatasetError(f"{p}: empty file")
    names: list[str] | None = None
    first = [c.strip() for c in rows[0]]
    width = len(first)
    if header is None:
        if isinstance(label_column, str) and label_column != "last":
            has_header = True  # a column name needs a header row
        else:
            skip = _label_index(label_column, None, width, p)
            has_header = not all(_is_number(c) for i, c in enumerate(first) if i != skip)
    else:
        has_header = header
    if has_header:
        names = first
        rows = rows[1:]
        if not rows:
            raise DatasetError(f"{p}: header only, no data rows")
    for number, row in enumerate(rows, start=2 if has_header else 1):
        if len(row) != width:
            raise DatasetError(f"{p}: row {number} has {len(row)} columns, expected {width}")
    label_index = _label_index(label_column, names, width, p)
    cells = np.array([[c.strip() for c in row] for row in rows], dtype=object)
    feature_cols = [i for i in range(width) if i != label_index]
    if not feature_cols:
        raise DatasetError(f"{p}: no feature columns")
    x = np.empty((len(rows), len(feature_cols)), dtype=np.float64)
    for j, col in enumerate(feature_cols):
        try:
            x[:, j] = cells[:, col].astype(np.float64)
        except ValueError:
            bad = next(i for i, c in enumerate(cells[:, col]) if not _is_number(c))
            line = bad + (2 if has_header else 1)
            raise DatasetError(
                f"{p}: row {line}, column {col + 1}: {cells[bad, col]!r} is not a number"
            ) from None
    y = None
    label_names: tuple[str, ...] = ()
    if label_index is not None:
        try:
            y, label_names = _encode_labels(cells[:, label_index].astype(str))
        except DatasetError as exc:
            raise DatasetError(f"{p}: {exc}") from None
    feature_names = tuple(names[i] for i in feature_cols) if names else ()
    try:
        return Dataset(name or p.stem, x, y, feature_names, label_names)
    except DatasetError as exc:
        raise DatasetError(f"{p}: {exc}") from None


def load_npy(path: str | Path, *, label_column: int | None = None, name: str | None = None) -> Dataset:
    """Read a 2-D numeric ``.npy`` file (never unpickles: object arrays are rejected)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode=None)
    except ValueError as exc:
        raise DatasetError(f"{p}: not a plain numeric .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{p}: not a readable .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise DatasetError(f"{p}: expected one array, got an archive")
    if (
        arr.dtype.names is not None
        or not np.issubdtype(arr.dtype, np.number)
        or np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise DatasetError(f"{p}: expected real numbers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DatasetError(f"{p}: expected a 2-D matrix, got shape {arr.shape}")
    y = None
    label_names: tuple[str, ...] = ()
    if label_column is not None:
        width = arr.shape[1]
        index = label_column if label_column >= 0 else width + label_column
        if not 0 <= index < width or width < 2:
            raise DatasetError(f"{p}: label column {label_column} out of range for {width} columns")
        y, label_names = _encode_labels(arr[:, index])
        arr = np.delete(arr, index, axis=1)
    try:
        return Dataset(name or p.stem, arr, y, (), label_names)
    except DatasetError as exc:
        raise DatasetError(f"{p}: {exc}") from None


def load_bundled(name: str) -> Dataset:
    """iris, wine or breast_cancer from scikit-learn (``pip install -e '.[demo]'``)."""
    key = name.strip().lower()
    if key not in BUNDLED:
        raise DatasetError(f"unknown bundled dataset {name!r}; choose from {', '.join(sorted(set(BUNDLED)))}")
    try:
        import sklearn.datasets as skd
    except ImportError:
        raise DatasetError(f"dataset {name!r} needs scikit-learn: pip install -e '.[demo]'") from None
    bunch = getattr(skd, BUNDLED[key])()
    canonical = key.replace("-", "_")
    return Dataset(
        canonical,
        np.asarray(bunch.data, dtype=np.float64),
        np.asarray(bunch.target, dtype=np.int64),
        tuple(str(f) for f in bunch.feature_names),
        tuple(str(t) for t in bunch.target_names),
    )


def load_dataset(spec: str | Path, *, label_column: int | str | None = None) -> Dataset:
    """A bundled name (``iris``) or a path ending in ``.csv`` / ``.npy``."""
    text = str(spec)
    if text.strip().lower() in BUNDLED:
        return load_bundled(text)
    p = Path(text)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return load_csv(p, label_column=label_column)
    if suffix == ".npy":
        if isinstance(label_column, str):
            label_column = -1 if label_column == "last" else None
            if label_column is None:
                raise DatasetError(f"{p}: .npy files have no column names; give an index")
        return load_npy(p, label_column=label_column)
    if not p.exists():
        raise DatasetError(
            f"{text!r}: neither a bundled dataset ({', '.join(sorted(set(BUNDLED)))}) nor an existing file"
        )
    raise DatasetError(f"{p}: unsupported file type {suffix or '(none)'!r}; use .csv or .npy")


def scale(x: np.ndarray, method: str = "standard") -> np.ndarray:
    """Column-wise scaling: ``standard`` (z-score), ``minmax`` ([0, 1]) or ``none``.

    Constant columns map to 0. The secure protocols work on any real data, but unscaled features
    (breast cancer spans 1e-3..4e3) make one attribute dominate the L1 distances and CKKS precision.
    """
    arr = np.asarray(x, dtype=np.float64)
    if method == "none":
        return arr.copy()
    if method == "standard":
        centre = arr.mean(axis=0)
        spread = arr.std(axis=0)
    elif method == "minmax":
        centre = arr.min(axis=0)
        spread = arr.max(axis=0) - centre
    else:
        raise DatasetError(f"unknown scaling {method!r}; choose standard, minmax or none")
    spread = np.where(spread > 0, spread, 1.0)
    return (arr - centre) / spread


def subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """At most ``n`` rows, chosen at random (stratified by label when there are labels), shuffled.

    Shuffling matters: the secure k-means variants seed their centroids with the first k rows, and
    the bundled sets are sorted by class. Deterministic for a given ``seed``.
    """
    if n is None or n >= ds.n:
        return shuffle(ds, seed)
    if n < 1:
        raise DatasetError(f"subset size must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    if ds.y is None:
        picked = np.sort(rng.choice(ds.n, size=n, replace=False))
    else:
        classes, counts = np.unique(ds.y, return_counts=True)
        quota = np.maximum(1, np.floor(counts / ds.n * n).astype(int))
        while quota.sum() > n:
            quota[np.argmax(quota)] -= 1
        while quota.sum() < n:
            room = counts - quota
            quota[np.argmax(room)] += 1
        chosen = [
            rng.choice(np.flatnonzero(ds.y == c), size=q, replace=False)
            for c, q in zip(classes, quota, strict=True)
        ]
        picked = np.sort(np.concatenate(chosen))
    # Shuffle once so the first k rows (initial centroids) are not all from one class.
    picked = picked[rng.permutation(picked.size)]
    return replace(ds, x=ds.x[picked], y=None if ds.y is None else ds.y[picked])


def shuffle(ds: Dataset, seed: int = 0) -> Dataset:
    """The same rows in a seeded random order."""
    order = np.random.default_rng(seed).permutation(ds.n)
    return replace(ds, x=ds.x[order], y=None if ds.y is None else ds.y[order])


def train_test_split(ds: Dataset, test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A shuffled split; both halves keep the feature and label names."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(ds.n * test_fraction))
    if n_test >= ds.n:
        raise DatasetError(f"{ds.name}: too few rows ({ds.n}) to split")
    order = np.random.default_rng(seed).permutation(ds.n)
    test, train = order[:n_test], order[n_test:]
    y = ds.y

    def part(idx: np.ndarray, suffix: str) -> Dataset:
        return replace(ds, name=f"{ds.name}-{suffix}", x=ds.x[idx], y=None if y is None else y[idx])

    return part(train, "train"), part(test, "test")
