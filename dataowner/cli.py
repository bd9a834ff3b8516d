"""``rory-client``: the data owner's command line.

    rory-client demo [--quick] [--only ALGOS] [--datasets NAMES]     everything, locally, in one go
    rory-client keygen [--keys DIR] [--export DIR] [--ckks PROFILE] [--galois] [--force]
    rory-client upload DATASET --id ID [--scheme plain|liu|ckks-rows|ckks-columns]
    rory-client run ALGO DATASET [--k K] [--node NODE | --pool] [--json]

Defaults match ``rory-worker run --embedded`` (data directory ``.rory``): the owner's keys in
``.rory/owner-keys``, the worker's public keys in ``.rory/keys``, storage in ``.rory/storage`` and the
NATS URL from ``.rory/nats.url``. Otherwise storage and NATS come from the same environment variables
as the worker's (``STORAGE_BACKEND``, ``STORAGE_PATH``, ``MICTLANX_*``, ``NATS_URLS``,
``RORY_SUBJECT_PREFIX``). DATASET is iris, wine, breast_cancer, or a .csv/.npy file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataowner import demo
from dataowner.datasets import Dataset, DatasetError, load_dataset, scale, subset, train_test_split
from dataowner.keys import DEFAULT_PROFILES, KeysError, OwnerKeys
from worker.cli import add_bus_options

EXIT_USAGE = 2
EXIT_FAILED = 1
RUN_ALGORITHMS = tuple(demo.ALGORITHMS)
SCHEMES = ("plain", "liu", "ckks-rows", "ckks-columns")


def _common(p: argparse.ArgumentParser, *, network: bool = True) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("RORY_DATA_DIR", ".rory")),
        help="base of the defaults below (default .rory, as rory-worker run --embedded)",
    )
    p.add_argument(
        "--keys", type=Path, default=None, help="owner key directory (default <data-dir>/owner-keys)"
    )
    p.add_argument(
        "--storage-path",
        type=Path,
        default=None,
        help="local storage directory (default STORAGE_PATH, else <data-dir>/storage)",
    )
    p.add_argument(
        "--storage",
        choices=("local", "mictlanx", "nats"),
        default=None,
        help="storage backend (default STORAGE_BACKEND); nats = a JetStream object store on --nats",
    )
    if network:
        add_bus_options(p, "--nats", "NATS server URL (default <data-dir>/nats.url, else NATS_URLS)")
        target = p.add_mutually_exclusive_group()
        target.add_argument("--node", default=None, help="send commands to this worker node")
        target.add_argument("--pool", action="store_true", help="send commands to any worker (default)")
        p.add_argument("--namespace", default=None, help="isolate this job's state keys")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds per command (default 300)")
        p.add_argument(
            "--retries",
            type=int,
            default=5,
            help="re-sends of a command that failed retryably: 503/504, no responders (default 5)",
        )
        p.add_argument(
            "--retry-backoff",
            type=float,
            default=0.2,
            help="seconds before the first re-send, doubling each time up to 5 s, with jitter (default 0.2)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rory-client", description="Rory data owner: keys, uploads, secure jobs."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run every algorithm on real datasets with a local server and worker")
    demo.add_arguments(p)

    p = sub.add_parser("keygen", help="create the owner's keys and export the public CKKS material")
    _common(p, network=False)
    p.add_argument(
        "--ckks",
        action="append",
        default=None,
        metavar="PROFILE",
        help=f"CKKS profile(s) to create (default {', '.join(DEFAULT_PROFILES)}; ml-128 for PPLR)",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="KEYS_PATH",
        help="write the worker's public files here (default <data-dir>/keys)",
    )
    p.add_argument("--export-profile", default=None, help="profile to export (default: the first --ckks)")
    p.add_argument("--galois", action="store_true", help="include rotation keys (PPLR; ~400 MB for ml-128)")
    p.add_argument("--no-export", action="store_true", help="only create the keys")
    p.add_argument(
        "--force", action="store_true", help="replace existing keys (old ciphertexts become useless)"
    )

    p = sub.add_parser("upload", help="encrypt (or not) a dataset and store it under an id")
    _common(p, network=False)
    p.add_argument("dataset", help="iris | wine | breast_cancer | FILE.csv | FILE.npy")
    p.add_argument("--id", required=True, help="storage id <P> (the ciphertexts go to encrypted<P>)")
    p.add_argument("--scheme", choices=SCHEMES, default="liu")
    p.add_argument("--profile", default="default-128", help="CKKS profile for the ckks-* schemes")
    _dataset_options(p)

    p = sub.add_parser("run", help="run one algorithm through the worker and print the result")
    _common(p)
    p.add_argument("algorithm", choices=RUN_ALGORITHMS, metavar="ALGO", help=", ".join(RUN_ALGORITHMS))
    p.add_argument("dataset", help="iris | wine | breast_cancer | FILE.csv | FILE.npy")
    p.add_argument("--k", type=int, default=None, help="clusters (default: number of classes, else 3)")
    p.add_argument("--max-iterations", type=int, default=None)
    p.add_argument("--tolerance", type=float, default=None)
    p.add_argument("--threshold", type=float, default=-1.0, help="NNC threshold (-1: smallest distance)")
    p.add_argument("--epochs", type=int, default=None, help="LR / PPLR epochs")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.3, help="classification: held-out share")
    p.add_argument("--ml-node", default=None, help="PPLR: node whose KEYS_PATH holds ml-128 + rotation keys")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--labels-out", type=Path, default=None, help="write labels/predictions (.npy or .csv)")
    _dataset_options(p)
    return parser


def _dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-column",
        default=None,
        help="CSV/NPY: column holding labels (index, 'last', or a header name)",
    )
    p.add_argument("--scale", choices=("standard", "minmax", "none"), default="standard")
    p.add_argument("--rows", type=int, default=None, help="use a stratified random subset of this many rows")


# ----------------------------------------------------------------------------- helpers
def _keys_dir(args: argparse.Namespace) -> Path:
    return args.keys or args.data_dir / "owner-keys"


def _settings(args: argparse.Namespace) -> Any:
    from worker.settings import load_settings

    overrides: dict[str, Any] = {}
    if args.storage_path is not None:
        overrides.update(storage_backend="local", storage_path=str(args.storage_path))
    elif "STORAGE_PATH" not in os.environ and os.environ.get("STORAGE_BACKEND", "auto") in ("auto", "local"):
        overrides["storage_path"] = str(args.data_dir / "storage")
    if args.storage is not None:
        overrides["storage_backend"] = args.storage
    nats_urls = getattr(args, "nats", None)
    if nats_urls:
        overrides["nats_urls"] = [u.strip() for v in nats_urls for u in v.split(",") if u.strip()]
    elif "NATS_URLS" not in os.environ and (args.data_dir / "nats.url").is_file():
        overrides["nats_urls"] = [(args.data_dir / "nats.url").read_text().strip()]
    if getattr(args, "prefix", None):
        overrides["rory_subject_prefix"] = args.prefix
    return load_settings(**overrides)


def _label_column(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _load(args: argparse.Namespace) -> Dataset:
    label_column = _label_column(args.label_column)
    ds = load_dataset(args.dataset, label_column=label_column)
    ds = subset(ds, args.rows, seed=0)
    return Dataset(ds.name, scale(ds.x, args.scale), ds.y, ds.feature_names, ds.label_names)


# ----------------------------------------------------------------------------- commands
def cmd_keygen(args: argparse.Namespace) -> int:
    directory = _keys_dir(args)
    profiles = tuple(args.ckks) if args.ckks else DEFAULT_PROFILES
    if (directory / "keys.json").exists() and not args.force:
        keys = OwnerKeys.load(directory)
        for profile in profiles:
            keys.ckks(profile, create=True)
        print(
            f"keys exist in {keys.directory} (profiles: {', '.join(keys.profiles)}); use --force to replace"
        )
    else:
        keys = OwnerKeys.generate(directory, profiles=profiles, overwrite=args.force)
        print(f"created keys in {keys.directory} (Liu m={keys.liu.m}; CKKS {', '.join(keys.profiles)})")
    if not args.no_export:
        target = args.export or args.data_dir / "keys"
        profile = args.export_profile or profiles[0]
        from worker.settings import load_settings

        s = load_settings()
        paths = keys.export_public(
            target,
            profile,
            galois=args.galois,
            ctx_filename=s.ctx_filename,
            pubkey_filename=s.pubkey_filename,
            relinkey_filename=s.relinkey_filename,
            rotatekey_filename=s.rotatekey_filename,
        )
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths.values())
        print(f"exported public CKKS {profile} material to {Path(target).resolve()} ({sizes})")
        embedded = args.export is None  # where `rory-worker run --embedded --data-dir` looks
        print(
            f"a worker reads them with KEYS_PATH={Path(target).resolve()}"
            + (" (`rory-worker run --embedded` with the same --data-dir already does)" if embedded else "")
        )
    return 0


def _open_store(settings: Any) -> Any:
    """The configured store; with STORAGE_BACKEND=nats its connection logs in as the client does."""
    from worker.runtime import connection
    from worker.storage import open_store

    return open_store(
        settings, nats_connect=lambda: connection.connect(settings, name="rory-client-storage")
    )


async def _upload(args: argparse.Namespace) -> int:
    from dataowner.client import DataOwnerClient

    ds = _load(args)
    owner = OwnerKeys.open_or_generate(_keys_dir(args))  # first use creates the keys (0600)
    settings = _settings(args)
    store = _open_store(settings)
    try:
        client = DataOwnerClient(settings.nats_urls, store, owner)  # storage only: never connects
        target = await client.upload(args.id, ds.x, scheme=args.scheme, labels=ds.y, profile=args.profile)
        info = await store.info(target)
        print(
            f"stored {ds.name} ({ds.n}x{ds.a}, {args.scheme}) as {target} "
            f"({info.num_chunks} chunk(s), {info.size / 1e6:.2f} MB) in {store.backend} storage"
        )
    finally:
        await store.aclose()
    return 0


async def _run(args: argparse.Namespace) -> int:
    from dataowner.client import DataOwnerClient
    from dataowner.metrics import accuracy, adjusted_rand_index
    from dataowner.progress import ProgressDisplay

    spec = demo.ALGORITHMS[args.algorithm]
    ds = _load(args)
    owner = OwnerKeys.load(_keys_dir(args))
    settings = _settings(args)
    store = _open_store(settings)
    progress = ProgressDisplay()
    node = None if args.pool else args.node

    def client_for(nats: Any, target: str | None) -> DataOwnerClient:
        return DataOwnerClient(
            nats,
            store,
            owner,
            prefix=settings.rory_subject_prefix,
            node=target,
            namespace=args.namespace,
            timeout=args.timeout,
            retries=args.retries,
            retry_backoff=args.retry_backoff,
            progress=progress,
        )

    client = client_for(settings.nats_urls, node)
    try:
        await client.connect()
        reports = []
        truth = None
        if spec.kind == "cluster":
            k = args.k or (ds.n_classes if ds.y is not None else 3)
            kwargs: dict[str, Any] = {}
            if args.max_iterations:
                kwargs["max_iterations"] = args.max_iterations
            if args.tolerance is not None:
                kwargs["tolerance"] = args.tolerance
            if args.algorithm in ("nnc", "dbsnnc"):
                reports.append(await getattr(client, args.algorithm)(ds.x, threshold_value=args.threshold))
            else:
                reports.append(await getattr(client, args.algorithm)(ds.x, k, **kwargs))
            output = reports[-1].labels
            if ds.y is not None:
                truth = ("ARI", adjusted_rand_index(ds.y, output))
        else:
            if ds.y is None:
                raise DatasetError(f"{args.dataset}: classification needs labels (--label-column)")
            train, test = train_test_split(ds, args.test_fraction, seed=1)
            assert train.y is not None and test.y is not None
            y_train, y_test = train.y, test.y
            if args.algorithm in ("lr", "pplr"):
                y_train, y_test = (train.y == 0).astype(np.int64), (test.y == 0).astype(np.int64)
            if args.algorithm in ("knn", "sknn", "pqc_sknn"):
                reports.append(await getattr(client, args.algorithm)(train.x, train.y, test.x))
            else:
                # PPLR goes to the node whose KEYS_PATH holds the ml profile, over the same connection
                runner = client_for(client._nc, args.ml_node or node) if args.algorithm == "pplr" else client
                epochs = args.epochs or (10 if args.algorithm == "lr" else 2)
                reports += await demo.train_and_predict(
                    runner, args.algorithm, train.x, y_train, test.x, epochs, learning_rate=args.learning_rate
                )
            output = reports[-1].predictions
            truth = ("accuracy", accuracy(y_test, output))
        progress.close()
        assert output is not None
        if args.labels_out is not None:
            if args.labels_out.suffix == ".npy":
                np.save(args.labels_out, output)
            else:
                args.labels_out.write_text("\n".join(str(int(v)) for v in output) + "\n")
        if args.json:
            body = {"reports": [r.summary() for r in reports], "output": output.tolist()}
            if truth:
                body[truth[0]] = truth[1]
            print(json.dumps(body, indent=2))
        else:
            for r in reports:
                print(
                    f"{r.op}: job {r.job_id} on {', '.join(r.nodes)}: {r.iterations} iteration(s), "
                    f"{r.total_seconds:.3f}s total, {r.worker_seconds:.3f}s in the worker"
                    + (f", converged={r.converged}" if r.converged is not None else "")
                )
            counts = np.unique(output, return_counts=True)
            print(
                f"output: {len(output)} values, "
                + ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(*counts, strict=True))
            )
            if truth:
                print(f"{truth[0]} vs the dataset's labels: {truth[1]:.3f}")
    finally:
        progress.close()
        await client.close()
        await store.aclose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from dataowner.client import NoWorkerError, WorkerError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo.main(args)
        if args.command == "keygen":
            return cmd_keygen(args)
        if args.command == "upload":
            return asyncio.run(_upload(args))
        return asyncio.run(_run(args))
    except (DatasetError, KeysError, WorkerError, NoWorkerError) as error:
        # Bad input (dataset, keys) is a usage error; a worker that failed or never answered is not.
        print(f"rory-client: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, DatasetError | KeysError) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # settings, NATS connection, storage: one line, not a traceback
        from worker.settings import SettingsError

        if isinstance(error, SettingsError | OSError | ConnectionError) or type(error).__module__.startswith(
            "nats"
        ):
            print(f"rory-client: {type(error).__name__}: {error}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
