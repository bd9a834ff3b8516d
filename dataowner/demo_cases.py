"""What ``rory-client demo`` runs: one case per algorithm and dataset, checked against its
plaintext twin and entered in the outsourcing ledger (dataowner/ledger.py).

Each case runs the protocol through the data-owner client, then the same algorithm locally in
plaintext (scikit-learn or the core's plaintext functions): that run is both the reference the
agreement is computed against and the ``local`` column of the ledger (its CPU seconds, measured by
:func:`dataowner.ledger.cpu_seconds`). The owner's CPU and the workers' seconds come from the jobs'
reports (dataowner/job.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataowner.client import DataOwnerClient, JobReport
from dataowner.datasets import Dataset, load_bundled, scale, subset, train_test_split
from dataowner.ledger import CpuTimer, LedgerEntry, cpu_seconds, totals
from dataowner.metrics import accuracy, adjusted_rand_index
from dataowner.progress import ProgressCallback, ProgressDisplay

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "Context",
    "DemoRow",
    "Spec",
    "nnc_threshold",
    "prepare",
    "run_case",
    "train_and_predict",
]

DATASETS = ("iris", "wine", "breast_cancer")
PREFIX = "rory"
MAIN_NODE = "demo-0"
ML_NODE = "demo-ml"
ML_PROFILE = "pplr-128"


@dataclass(frozen=True)
class Spec:
    """One algorithm of the demo.

    ``rows``: at most this many records are used (None = all), ``quick_rows`` with ``--quick``.
    For classification ``rows`` bounds the training set and ``test_rows`` the test records.
    ``exact``: the protocol must reproduce its plaintext reference (agreement >= ``min_agreement``).
    """

    name: str
    kind: str  # "cluster" or "classify"
    ckks: bool = False
    rows: int | None = None
    quick_rows: int | None = None
    test_rows: int | None = None
    quick_test_rows: int | None = None
    exact: bool = True
    min_agreement: float = 0.95
    node: str = MAIN_NODE
    note: str = ""


ALGORITHMS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("kmeans", "cluster"),
        Spec("skmeans", "cluster"),
        Spec("dbskmeans", "cluster", exact=False, note="FDH-OPE: approximates SKMeans; UDM refreshed"),
        Spec("nnc", "cluster", quick_rows=150),
        Spec("dbsnnc", "cluster", quick_rows=150),
        Spec("pqc_kmeans", "cluster", ckks=True, quick_rows=150),
        Spec("pqc_skmeans", "cluster", ckks=True, rows=120, quick_rows=60),
        Spec(
            "pqc_dbskmeans",
            "cluster",
            ckks=True,
            rows=120,
            quick_rows=60,
            exact=False,
            note="FDH-OPE UDM: approximates SKMeans; owner refreshes it",
        ),
        Spec("knn", "classify"),
        Spec("sknn", "classify"),
        Spec("pqc_sknn", "classify", ckks=True, test_rows=30, quick_test_rows=12),
        Spec("lr", "classify"),
        Spec(
            "pplr",
            "classify",
            ckks=True,
            rows=40,
            quick_rows=24,
            test_rows=30,
            quick_test_rows=16,
            node=ML_NODE,
            note="CKKS pplr-128, packed layout (no rotation keys), 2 epochs (1 with --quick)",
        ),
    )
}
#: CKKS ciphertexts per test record in the packed SKNN layout = attributes; keep the total bounded.
PQC_SKNN_CIPHERTEXTS = 400
PQC_SKNN_CIPHERTEXTS_QUICK = 160


@dataclass
class DemoRow:
    algorithm: str
    dataset: str
    n: int = 0
    iterations: int | None = None
    seconds: float = 0.0
    agreement: float | None = None
    truth: float | None = None
    metric: str = ""
    ok: bool = False
    error: str = ""
    subset: str = ""
    reports: list[JobReport] = field(default_factory=list, repr=False)
    #: CPU seconds of the plaintext reference run locally (the ledger's ``local`` column).
    local_seconds: float | None = None

    @property
    def ledger(self) -> LedgerEntry | None:
        """This row's line of the outsourcing ledger (None when the protocol did not finish)."""
        if not self.reports or self.local_seconds is None:
            return None
        owner, worker = totals(self.reports)
        return LedgerEntry(
            self.algorithm, self.dataset, self.n, owner, self.local_seconds, worker, self.iterations
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "dataset": self.dataset,
            "n": self.n,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 3),
            "metric": self.metric,
            "agreement": self.agreement,
            "truth": self.truth,
            "ok": self.ok,
            "error": self.error,
            "subset": self.subset,
            "ledger": self.ledger.as_dict() if self.ledger is not None else None,
        }


# ----------------------------------------------------------------------------- the algorithms
@dataclass
class Context:
    client: DataOwnerClient
    ml_client: DataOwnerClient | None
    quick: bool
    progress: ProgressDisplay


def _limit(spec: Spec, quick: bool) -> int | None:
    return spec.quick_rows if quick and spec.quick_rows is not None else spec.rows


def _test_limit(spec: Spec, quick: bool, a: int) -> int | None:
    limit = spec.quick_test_rows if quick and spec.quick_test_rows is not None else spec.test_rows
    if spec.name == "pqc_sknn":
        budget = PQC_SKNN_CIPHERTEXTS_QUICK if quick else PQC_SKNN_CIPHERTEXTS
        limit = min(limit or budget, max(4, budget // max(1, a)))
    return limit


def prepare(name: str, seed: int = 0) -> Dataset:
    """A bundled dataset, shuffled (first-k seeds mix classes) and z-scored."""
    ds = subset(load_bundled(name), None, seed)
    return Dataset(ds.name, scale(ds.x), ds.y, ds.feature_names, ds.label_names)


def nnc_threshold(dm: np.ndarray) -> float:
    """The largest nearest-neighbour distance: every record has a neighbour within it.

    Rory's default (the smallest distance, threshold -1) leaves almost every record alone on
    z-scored data; this parameter-free choice gives a handful of clusters on the demo datasets.
    """
    masked = dm + np.diag(np.full(dm.shape[0], np.inf))
    return float(np.max(np.min(masked, axis=1)))


def _sklearn_kmeans(x: np.ndarray, k: int) -> np.ndarray:
    try:
        from sklearn.cluster import KMeans as SkKMeans
    except ImportError:  # the demo extra installs scikit-learn; fall back to the core's copy
        from core.algorithms.kmeans import KMeans

        return np.asarray(KMeans(n_clusters=k).fit(x).labels_)
    return np.asarray(SkKMeans(n_clusters=k, init=x[:k], n_init=1).fit(x).labels_)


async def _cluster(ctx: Context, spec: Spec, ds: Dataset, row: DemoRow) -> None:
    from core.algorithms import nnc as core_nnc
    from core.algorithms.kmeans import l1_kmeans
    from core.dataowner import distance_matrix

    x, y = ds.x, ds.y
    k = ds.n_classes
    c, p = ctx.client, ctx.progress
    local = CpuTimer()
    if spec.name in ("kmeans", "pqc_kmeans"):
        # neither the import nor scikit-learn's first-call set-up is part of the local run's work
        with contextlib.suppress(ImportError):
            import sklearn.cluster  # noqa: F401
        _sklearn_kmeans(x[: 2 * k], k)
    if spec.name == "kmeans":
        report = await c.kmeans(x, k, progress=p)
        with cpu_seconds(local):
            reference = _sklearn_kmeans(x, k)
    elif spec.name in ("skmeans", "dbskmeans", "pqc_skmeans", "pqc_dbskmeans"):
        driver: Callable[..., Awaitable[JobReport]] = getattr(c, spec.name)
        tolerance = 1e-4 if spec.ckks else 1e-6
        # the double-blind variants let the owner refresh the OPE UDM each round (no drift)
        refresh = {"refresh_udm": True} if spec.name.endswith("dbskmeans") else {}
        report = await driver(x, k, max_iterations=20, tolerance=tolerance, progress=p, **refresh)
        with cpu_seconds(local):
            reference = l1_kmeans(x, k, max_iter=20, tolerance=tolerance).labels
    elif spec.name in ("nnc", "dbsnnc"):
        dm = distance_matrix(x)
        theta = nnc_threshold(dm)
        report = await getattr(c, spec.name)(x, threshold_value=theta, progress=p)
        with cpu_seconds(local):  # locally the owner computes the distance matrix too
            reference = core_nnc.nnc(distance_matrix(x), theta)
    elif spec.name == "pqc_kmeans":
        report = await c.pqc_kmeans(x, k, progress=p)
        with cpu_seconds(local):
            reference = _sklearn_kmeans(x, k)
    else:  # pragma: no cover - ALGORITHMS and this switch are kept in step by a test
        raise ValueError(f"unknown clustering algorithm {spec.name}")
    assert report.labels is not None
    row.reports.append(report)
    row.local_seconds = local.seconds
    row.iterations = report.iterations
    row.seconds = report.total_seconds
    row.metric = "ARI"
    row.agreement = adjusted_rand_index(reference, report.labels)
    row.truth = adjusted_rand_index(y, report.labels) if y is not None else None
    if spec.name in ("nnc", "dbsnnc"):
        row.subset += f" {int(np.unique(report.labels).size)} clusters"


async def train_and_predict(
    client: DataOwnerClient,
    name: str,
    train_x: np.ndarray,
    y_train: np.ndarray,
    test_x: np.ndarray,
    epochs: int,
    *,
    learning_rate: float = 0.1,
    progress: ProgressCallback | None = None,
    profile: str | None = None,
) -> list[JobReport]:
    """LR or PPLR (``name`` "lr" or "pplr") end to end: training, then prediction with its model.

    Shared by the demo and ``rory-client run`` so both hand the trained model over the same way.
    ``profile``: PPLR's CKKS profile (None = the client's default).
    """
    fit = client.lr_train if name == "lr" else client.pplr_train
    chosen = {"profile": profile} if profile is not None and name == "pplr" else {}
    trained = await fit(
        train_x, y_train, epochs=epochs, learning_rate=learning_rate, progress=progress, **chosen
    )
    model = trained.extra
    if name == "lr":
        predicted = await client.lr_predict(test_x, train_id=model["train_id"], progress=progress)
    else:
        predicted = await client.pplr_predict(
            test_x,
            train_id=model["train_id"],
            weights=model["weights"],
            bias=model["bias"],
            progress=progress,
            **chosen,
        )
    return [trained, predicted]


async def _classify(ctx: Context, spec: Spec, ds: Dataset, row: DemoRow) -> None:
    from core.algorithms.knn import knn_predict
    from core.algorithms.lr import LogisticRegression

    train, test = train_test_split(ds, 0.3, seed=1)
    train_limit, test_limit = _limit(spec, ctx.quick), _test_limit(spec, ctx.quick, ds.a)
    if train_limit is not None and train.n > train_limit:
        train = subset(train, train_limit, seed=2)
    if test_limit is not None and test.n > test_limit:
        test = subset(test, test_limit, seed=3)
    row.n = test.n
    row.subset = f"train {train.n} / test {test.n}"
    assert train.y is not None and test.y is not None
    c, p = ctx.client, ctx.progress
    reports: list[JobReport] = []
    local = CpuTimer()
    if spec.name in ("knn", "sknn", "pqc_sknn"):
        metric = "manhattan" if spec.name == "knn" else "euclidean"
        if spec.name == "knn":
            reports.append(await c.knn(train.x, train.y, test.x, distance="MANHATTAN", progress=p))
        elif spec.name == "sknn":
            reports.append(await c.sknn(train.x, train.y, test.x, distance="EUCLIDEAN", progress=p))
        else:
            reports.append(await c.pqc_sknn(train.x, train.y, test.x, layout="packed", progress=p))
        predicted = reports[-1].predictions
        with cpu_seconds(local):
            reference = knn_predict(train.x, train.y, test.x, metric)
        truth = test.y
    else:
        # Binary task: the first class against the rest (breast cancer is binary already).
        y_train, y_test = (train.y == 0).astype(np.int64), (test.y == 0).astype(np.int64)
        epochs = 1 if (ctx.quick and spec.name == "pplr") else (2 if spec.name == "pplr" else 10)
        with cpu_seconds(local):  # the local run: train, then predict
            model = LogisticRegression(epochs=epochs, learning_rate=0.1).fit(train.x, y_train)
            if spec.name == "lr":
                # The worker decides on the margin x.w + b >= 0: the Taylor sigmoid turns back below
                # 0.5 for z > sqrt(12), so thresholding it would flip confident predictions.
                reference = (test.x @ model.weights_ + model.bias_ >= 0).astype(np.int64)
            else:
                reference = model.predict(test.x)  # PPLR: the owner sees sigma~(z) and thresholds it
        truth = y_test
        client = c if spec.name == "lr" else ctx.ml_client
        assert client is not None
        reports += await train_and_predict(
            client, spec.name, train.x, y_train, test.x, epochs, progress=p, profile=ML_PROFILE
        )
        predicted = reports[-1].predictions
        row.subset += f", {epochs} epoch{'s' if epochs > 1 else ''}, class 0 vs rest"
    assert predicted is not None
    row.reports += reports
    row.local_seconds = local.seconds
    row.iterations = reports[0].iterations
    row.seconds = sum(r.total_seconds for r in reports)
    row.metric = "acc"
    row.agreement = accuracy(reference, predicted)
    row.truth = accuracy(truth, predicted)


async def run_case(ctx: Context, spec: Spec, ds: Dataset) -> DemoRow:
    row = DemoRow(spec.name, ds.name)
    started = time.perf_counter()
    try:
        if spec.kind == "cluster":
            limit = _limit(spec, ctx.quick)
            if limit is not None and ds.n > limit:
                ds = subset(ds, limit, seed=4)
                row.subset = f"{ds.n} of {load_size(ds.name)} rows"
            row.n = ds.n
            await _cluster(ctx, spec, ds, row)
        else:
            await _classify(ctx, spec, ds, row)
        row.ok = row.agreement is not None and (not spec.exact or row.agreement >= spec.min_agreement)
        if not row.ok:
            row.error = f"agreement {row.agreement:.3f} below {spec.min_agreement}"
    except Exception as error:  # one failing algorithm must not hide the others
        row.ok = False
        row.error = f"{type(error).__name__}: {error}"
        row.seconds = time.perf_counter() - started
    finally:
        ctx.progress.close()
    return row


_SIZES: dict[str, int] = {}


def load_size(name: str) -> int:
    if name not in _SIZES:
        _SIZES[name] = load_bundled(name).n
    return _SIZES[name]
