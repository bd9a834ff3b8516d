"""Reading the owner's datasets: CSV/NPY parsing, bundled sets, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from dataowner.datasets import (
    Dataset,
    DatasetError,
    load_bundled,
    load_csv,
    load_dataset,
    load_npy,
    scale,
    shuffle,
    subset,
    train_test_split,
)


def test_csv_without_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,3\n4,5,6\n\n7,8,9\n")
    ds = load_csv(p)
    assert ds.name == "d"
    assert ds.x.shape == (3, 3) and ds.x.dtype == np.float64
    assert ds.y is None and ds.feature_names == ()
    np.testing.assert_array_equal(ds.x[2], [7, 8, 9])


def test_csv_header_and_string_labels(tmp_path):
    p = tmp_path / "flowers.csv"
    p.write_text("a,b,species\n1.5,2,setosa\n3,4e-1,virginica\n-1,0,setosa\n")
    ds = load_csv(p, label_column="species")
    assert ds.feature_names == ("a", "b")
    assert ds.label_names == ("setosa", "virginica")
    np.testing.assert_array_equal(ds.y, [0, 1, 0])
    np.testing.assert_allclose(ds.x, [[1.5, 2], [3, 0.4], [-1, 0]])


def test_csv_last_column_numeric_labels_without_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,5\n3,4,2\n5,6,5\n")
    ds = load_csv(p, label_column="last")
    np.testing.assert_array_equal(ds.y, [1, 0, 1])  # 2 -> 0, 5 -> 1
    assert ds.x.shape == (3, 2)


def test_csv_label_by_index_and_delimiter(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("0\t1\t2\n1\t3\t4\n")
    ds = load_csv(p, label_column=0, delimiter="\t")
    np.testing.assert_array_equal(ds.y, [0, 1])
    np.testing.assert_array_equal(ds.x, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty file"),
        ("a,b\n", "header only"),
        ("1,2\n3\n", "row 2 has 1 columns, expected 2"),
        ("1,2\n3,x\n", "row 2, column 2: 'x' is not a number"),
        ("1,2\n3,nan\n", "NaN or infinity"),
    ],
)
def test_csv_bad_files_are_rejected_clearly(tmp_path, content, fragment):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(DatasetError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
        load_csv(p)
    assert str(p) in str(info.value)


def test_csv_binary_and_missing_files(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DatasetError, match="not a UTF-8 text file"):
        load_csv(p)
    with pytest.raises(DatasetError, match="no such file"):
        load_csv(tmp_path / "missing.csv")


def test_csv_unknown_label_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="no column named 'c'"):
        load_csv(p, label_column="c")
    with pytest.raises(DatasetError, match="out of range"):
        load_csv(p, label_column=5)


def test_npy_roundtrip_and_label_column(tmp_path):
    arr = np.arange(12, dtype=np.int32).reshape(4, 3)
    p = tmp_path / "m.npy"
    np.save(p, arr)
    ds = load_npy(p)
    assert ds.x.dtype == np.float64 and ds.x.shape == (4, 3)
    ds2 = load_npy(p, label_column=-1)
    assert ds2.x.shape == (4, 2)
    np.testing.assert_array_equal(ds2.y, [0, 1, 2, 3])


def test_npy_object_array_is_never_unpickled(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"not a plain numeric \.npy file"):
        load_npy(p)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.array([["a", "b"]]), "expected real numbers"),
        (np.zeros((2, 2, 2)), "expected a 2-D matrix"),
        (np.array([[1.0, np.inf]]), "NaN or infinity"),
        (np.zeros((0, 3)), "non-empty 2-D"),
    ],
)
def test_npy_bad_contents(tmp_path, array, fragment):
    p = tmp_path / "bad.npy"
    np.save(p, array)
    with pytest.raises(DatasetError, match=fragment):
        load_npy(p)


def test_npy_truncated_file(tmp_path):
    p = tmp_path / "t.npy"
    np.save(p, np.zeros((10, 10)))
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"t\.npy"):
        load_npy(p)


def test_load_dataset_dispatch(tmp_path):
    with pytest.raises(DatasetError, match="neither a bundled dataset"):
        load_dataset(tmp_path / "nothing.csv.gz")
    p = tmp_path / "x.txt"
    p.write_text("1,2\n")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_dataset(p)
    q = tmp_path / "x.csv"
    q.write_text("1,2\n3,4\n")
    assert load_dataset(q).n == 2


def test_bundled_datasets():
    pytest.importorskip("sklearn")
    iris = load_bundled("iris")
    assert (iris.n, iris.a, iris.n_classes) == (150, 4, 3)
    assert load_dataset("wine").a == 13
    bc = load_bundled("breast-cancer")
    assert bc.name == "breast_cancer" and (bc.n, bc.a) == (569, 30)
    with pytest.raises(DatasetError, match="unknown bundled dataset"):
        load_bundled("mnist")


def test_scale_subset_split():
    rng = np.random.default_rng(1)
    x = rng.normal(5, 3, size=(60, 3))
    x[:, 2] = 7.0  # constant column
    y = np.repeat([0, 1, 2], 20)
    ds = Dataset("t", x, y)
    z = scale(ds.x)
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1)
    assert np.all(z[:, 2] == 0)
    mm = scale(ds.x, "minmax")
    assert mm[:, :2].min() == 0 and mm[:, :2].max() == 1
    with pytest.raises(DatasetError):
        scale(ds.x, "log")

    sub = subset(ds, 15, seed=3)
    assert sub.n == 15
    assert sorted(np.bincount(sub.y).tolist()) == [5, 5, 5]  # stratified
    assert not np.array_equal(sub.y, np.sort(sub.y))  # shuffled: first-k seeds are mixed
    np.testing.assert_array_equal(subset(ds, 15, seed=3).x, sub.x)  # deterministic
    assert shuffle(ds, 1).n == 60 and subset(ds, None).n == 60

    train, test = train_test_split(ds, 0.25, seed=0)
    assert (train.n, test.n) == (45, 15)
    assert train.name == "t-train"
    with pytest.raises(DatasetError):
        train_test_split(ds, 1.5)
