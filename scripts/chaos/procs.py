"""The processes of the chaos cluster: nats-servers and real workers, each on its own host (namespace).

Each process is started through ``ip netns exec`` (which execs the program, so the pid is the
program's) in a session of its own, so a SIGKILL of its process group takes the worker's compute
processes with it, like a host losing power (as tests/faults/support.py does for one worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.chaos.net import Network
from scripts.cluster_conf import LIVENESS_LINES, ROUTE_LIVENESS_LINES
from worker.embedded import find_nats_server

REPO = Path(__file__).resolve().parents[2]
CLIENT_PORT, HTTP_PORT, CLUSTER_PORT = 4222, 8222, 6222


class Process:
    """One child in its own session; stop = SIGTERM then SIGKILL of the group, by our own pid."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        self.name, self.argv, self.log, self.env = name, list(argv), log, env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None, cwd=str(REPO),
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group (the worker and its compute processes) and reap the child."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()  # the rest of the group, if anything is left


def server_conf(name: str, address: str, peers: Sequence[str], store: Path) -> str:
    """One member of the three-server JetStream cluster (same layout as scripts/cluster.py)."""
    routes = [f"    nats-route://{peer}:{CLUSTER_PORT}" for peer in peers]
    lines = [
        f"server_name: {name}",
        f"listen: {address}:{CLIENT_PORT}",
        f"http: {address}:{HTTP_PORT}",
        "max_payload: 1MB",
        *LIVENESS_LINES,
        f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n  max_memory_store: 64MB",
        "  max_file_store: 512MB\n}",
        f"cluster {{\n  name: chaos\n  listen: {address}:{CLUSTER_PORT}",
        *(f"  {line}" for line in ROUTE_LIVENESS_LINES),
        "  routes: [",
        *routes,
        "  ]\n}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class NatsNode:
    name: str
    address: str
    process: Process

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{CLIENT_PORT}"

    def jsz(self, timeout: float = 1.0) -> dict[str, Any]:
        """Monitoring ``/jsz`` (meta leader and peers); callable from any host on the bridge.

        No proxy: the address exists only inside our namespaces."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{self.address}:{HTTP_PORT}/jsz", timeout=timeout) as response:
            return json.loads(response.read())


def nats_nodes(net: Network, names: Sequence[str], workdir: Path) -> list[NatsNode]:
    binary = find_nats_server()
    nodes = []
    for name in names:
        host = net.hosts[name]
        peers = [net.hosts[other].address for other in names if other != name]
        conf = workdir / f"{name}.conf"
        conf.write_text(server_conf(name, host.address, peers, workdir / f"js-{name}"))
        argv = [*net.exec_prefix(name), binary, "-c", str(conf)]
        nodes.append(NatsNode(name, host.address, Process(name, argv, workdir / f"{name}.log")))
    return nodes


def _meta(node: NatsNode) -> dict[str, Any]:
    if not node.process.alive:
        return {}
    try:
        return node.jsz().get("meta_cluster") or {}
    except OSError:
        return {}


def meta_leader(nodes: Sequence[NatsNode]) -> tuple[str | None, int]:
    """(meta leader's name, servers current in the meta group), both as the leader's own ``/jsz`` says.

    A follower's ``/jsz`` names the leader too, but its view of the other peers is not kept current.
    """
    by_name = {node.name: node for node in nodes}
    for node in nodes:
        leader = _meta(node).get("leader")
        if leader in by_name:
            meta = _meta(by_name[leader])
            if meta.get("leader") == leader:
                replicas = meta.get("replicas") or []
                return leader, 1 + sum(1 for p in replicas if p.get("current") and not p.get("offline"))
    return None, 0


def wait_cluster(nodes: Sequence[NatsNode], timeout: float = 60.0) -> str:
    """Wait until a meta leader sees every other server as current; returns the leader's name."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        leader, current = meta_leader(nodes)
        if leader and current >= len(nodes):
            return leader
        time.sleep(0.25)
    raise RuntimeError(f"the JetStream meta group did not form within {timeout}s")


@dataclass
class WorkerNode:
    """A real worker: ``python -m worker run`` with env settings, plus the fault operations.

    ``--operations tests.faults.ops:register`` adds ``fault.work`` (tests/faults/ops.py): it writes a
    ``<key>-run-<tag>`` ball when an execution starts and ``<key>-result-<tag>`` when it finishes, so
    executions are counted from storage, across processes and restarts.
    """

    name: str
    net: Network
    env: dict[str, str]
    log: Path
    process: Process | None = field(default=None)

    def start(self) -> None:
        argv = [*self.net.exec_prefix(self.name), sys.executable, "-m", "worker", "run",
                "--operations", "tests.faults.ops:register"]
        self.process = Process(self.name, argv, self.log, self.env)
        self.process.start()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def worker_env(node_id: str, urls: Sequence[str], mode: str, paths: Mapping[str, Path],
               extra: Mapping[str, str]) -> dict[str, str]:
    """Environment of one worker; names from worker/settings.py (the process reads nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "RORY_", "JETSTREAM_"))}
    env.update({
        "NODE_ID": node_id,
        "NATS_URLS": ",".join(urls),
        "RORY_SUBJECT_PREFIX": "chaos",
        "RORY_JOBS_MODE": mode,
        "STORAGE_BACKEND": "local",
        "STORAGE_PATH": str(paths["storage"]),
        "STORAGE_CACHE_BYTES": "0",
        "SINK_PATH": str(paths["sink"]),
        "SOURCE_PATH": str(paths["sink"]),
        "KEYS_PATH": str(paths["sink"]),
        "LOG_PATH": str(paths["sink"]),
        "ENV_FILE_PATH": str(paths["sink"] / "no-such.env"),
        "PYTHONPATH": str(REPO),
        "HEARTBEAT_INTERVAL": "2",
        "SHUTDOWN_GRACE_PERIOD": "3",
    })
    env.update(extra)
    return env
