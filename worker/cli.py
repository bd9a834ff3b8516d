"""``rory-worker``: run the worker, or inspect running workers.

    rory-worker [run] [--embedded] [--data-dir DIR] [--nats-port N] [--operations MOD:FUNC]
    rory-worker ls | info [ID] | stats [ID] | health NODE | watch | req OP (--node NODE | --pool)

Configuration comes from the environment (see ``worker/settings.py``). A bad value prints one line
naming the variable and exits with status 2; no NATS server answering exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker import inspect as inspect_cmds
from worker.settings import Settings, SettingsError, load_settings

COMMANDS = ("run", "ls", "info", "stats", "health", "watch", "req", "dlq-mover")
EXIT_SETTINGS = 2
EXIT_UNAVAILABLE = 1


def add_bus_options(parser: argparse.ArgumentParser, flag: str, url_help: str) -> None:
    """The NATS server URL option (``flag``, repeatable) and ``--prefix``: every command that talks to
    the bus takes them, here and in ``rory-client`` (dataowner/cli.py), with the same defaults."""
    parser.add_argument(flag, action="append", default=None, metavar="URL", help=url_help)
    parser.add_argument("--prefix", default=None, help="subject prefix (default RORY_SUBJECT_PREFIX)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rory-worker",
        description="Rory privacy-preserving data-mining worker on NATS.",
        epilog="Without a command, 'run' is assumed. Settings come from environment variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the worker (default)")
    run.add_argument(
        "--embedded",
        action="store_true",
        help="start a local nats-server and use local storage under --data-dir",
    )
    run.add_argument(
        "--data-dir",
        default=".rory",
        type=Path,
        help="embedded mode: storage, keys, logs and the server's data (default ./.rory)",
    )
    run.add_argument(
        "--nats-port",
        type=int,
        default=4222,
        help="embedded mode: port of the local nats-server (0 = random; default 4222)",
    )
    run.add_argument(
        "--operations",
        action="append",
        default=[],
        metavar="MODULE:FUNC",
        help="also call FUNC(registry) from MODULE to register extra operations",
    )

    def inspection(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        add_bus_options(p, "--server", "NATS server URL (repeatable; default NATS_URLS)")
        p.add_argument("--timeout", type=float, default=None, help="seconds to wait for answers")
        return p

    p = inspection("ls", "list running workers ($SRV.PING.rory-worker)")
    p.add_argument("--json", action="store_true")
    p = inspection("info", "endpoints of each worker ($SRV.INFO.rory-worker[.ID])")
    p.add_argument("id", nargs="?")
    p.add_argument("--json", action="store_true")
    p = inspection("stats", "request/error/latency counters ($SRV.STATS.rory-worker[.ID])")
    p.add_argument("id", nargs="?")
    p.add_argument("--json", action="store_true")
    p = inspection("health", "health of one node (<p>.worker.NODE.health)")
    p.add_argument("node")
    p.add_argument("--msgpack", action="store_true", help="ask for the msgpack encoding")
    p = inspection("watch", "print heartbeats and started/stopped announcements")
    p.add_argument("--node", default="*", help="only this node")
    p.add_argument("--results", action="store_true", help="also print Replies on <p>.results.<node>.<job_id>")
    p.add_argument("--count", type=int, default=None, help="stop after this many messages")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p = inspection("req", "send one command and print its Reply as JSON")
    p.add_argument("op")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--node", help="send to <p>.worker.NODE.cmd.OP")
    target.add_argument("--pool", action="store_true", help="send to <p>.pool.cmd.OP")
    p.add_argument("--params", default=None, help="JSON object, @file.json, file.json or - (stdin)")
    p.add_argument("--job-id", default=None)
    p.add_argument("--deadline", type=float, default=None, help="deadline_s of the command")
    p.add_argument("--json", action="store_true", help="send JSON (Content-Type: application/json)")
    p = inspection(
        "dlq-mover",
        "move commands the server stopped redelivering to the DLQ (run as the manager, not a node)",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help")):
        args.insert(0, "run")
    return _parser().parse_args(args)


def _load_operations(specs: Sequence[str]) -> list[Callable[[Any], None]]:
    functions = []
    for spec in specs:
        module_name, _, func_name = spec.partition(":")
        if not module_name or not func_name:
            raise SettingsError(f"--operations: expected MODULE:FUNC, got {spec!r}")
        try:
            functions.append(getattr(importlib.import_module(module_name), func_name))
        except (ImportError, AttributeError) as error:
            raise SettingsError(f"--operations: cannot load {spec!r}: {error}") from None
    return functions


async def _run(args: argparse.Namespace) -> int:
    from worker.embedded import EmbeddedNats
    from worker.handlers import default_registry
    from worker.runtime.logs import setup_logging
    from worker.runtime.service import WorkerService

    overrides: dict[str, Any] = {}
    data_dir: Path = args.data_dir.resolve()
    if args.embedded:
        overrides = {
            "storage_backend": "local",
            "storage_path": str(data_dir / "storage"),
            "keys_path": str(data_dir / "keys"),
            "log_path": str(data_dir / "logs"),
            "sink_path": str(data_dir / "sink"),
            "source_path": str(data_dir / "source"),
        }
    settings = load_settings(**overrides)
    extra = _load_operations(args.operations)
    setup_logging(settings)
    registry = default_registry()
    for register in extra:
        register(registry)
    server = None
    if args.embedded:
        for sub in ("storage", "keys", "logs"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        port = None if args.nats_port <= 0 else args.nats_port
        server = await EmbeddedNats(
            data_dir / "nats", port=port, log_file=data_dir / "logs" / "nats-server.log"
        ).start()
        (data_dir / "nats.url").write_text(server.url + "\n")
        print(f"embedded nats-server at {server.url} (data in {data_dir})", file=sys.stderr)
        settings = settings.model_copy(update={"nats_urls": [server.url]})
    try:
        await WorkerService(settings, registry).run_until_stopped()
    finally:
        if server is not None:
            await server.stop()
    return 0


def _inspect_settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    update: dict[str, Any] = {}
    if args.server:
        urls = [url.strip() for value in args.server for url in value.split(",") if url.strip()]
        update["nats_urls"] = urls
    if args.prefix:
        update["rory_subject_prefix"] = args.prefix
    return settings.model_copy(update=update) if update else settings


async def _inspect(args: argparse.Namespace) -> int:
    from worker.runtime.connection import connect

    logging.getLogger("rory").setLevel(logging.ERROR)  # connection chatter is not output here
    logging.getLogger("rory").addHandler(logging.NullHandler())
    settings = _inspect_settings(args)
    nc = await connect(
        settings,
        name="rory-worker-inspect",
        timeout=min(5.0, settings.nats_connect_timeout),
        max_reconnect_attempts=1,
    )
    prefix = settings.rory_subject_prefix
    window = args.timeout or 1.0
    try:
        if args.command == "ls":
            return await inspect_cmds.ls(nc, window=window, as_json=args.json)
        if args.command == "info":
            return await inspect_cmds.info(nc, args.id, window=window, as_json=args.json)
        if args.command == "stats":
            return await inspect_cmds.stats(nc, args.id, window=window, as_json=args.json)
        if args.command == "health":
            return await inspect_cmds.health(
                nc, prefix, args.node, use_msgpack=args.msgpack, timeout=args.timeout or 2.0
            )
        if args.command == "watch":
            return await inspect_cmds.watch(
                nc,
                prefix,
                node=args.node,
                results=args.results,
                count=args.count,
                duration=args.duration or args.timeout,
            )
        if args.command == "req":
            try:
                params = inspect_cmds.load_params(args.params)
            except (ValueError, OSError) as error:
                raise SettingsError(f"--params: {error}") from None
            return await inspect_cmds.req(
                nc,
                prefix,
                args.op,
                node=None if args.pool else args.node,
                params=params,
                job_id=args.job_id,
                deadline_s=args.deadline,
                json_mode=args.json,
                timeout=args.timeout or 60.0,
            )
        if args.command == "dlq-mover":
            return await inspect_cmds.dlq_mover(
                nc,
                prefix,
                stream=settings.jetstream_stream,
                dlq_stream=settings.jetstream_dlq_stream,
                duration=args.duration,
            )
        raise SettingsError(f"unknown command {args.command!r}")
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    from worker.embedded import EmbeddedServerError
    from worker.runtime.connection import NatsUnavailable

    args = parse_args(argv)
    try:
        return asyncio.run(_run(args) if args.command == "run" else _inspect(args))
    except (SettingsError, NatsUnavailable, EmbeddedServerError) as error:
        # One line, not a traceback; the exit code says whether the settings or the server failed.
        print(f"rory-worker: {error}", file=sys.stderr)
        return EXIT_SETTINGS if isinstance(error, SettingsError) else EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
