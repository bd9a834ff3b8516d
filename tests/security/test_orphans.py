"""A SIGKILLed worker leaves no compute process and, after the next start, no transfer file behind.

Real processes: ``python -m worker run --operations tests.security.test_orphans:register`` with a
compute pool of two slots. One command leaves two transfer files in the worker (a result it keeps
mapped, and one it freed, idle in the file pool); another keeps a slot busy burning CPU. Then the
worker, and only the worker, gets SIGKILL (no cleanup runs):

* every process it had started (fork server, slots, resource tracker) exits by itself: the slots'
  watchdogs see the worker gone, and the rest follow (``worker/runtime/pool.py``);
* its transfer files are still there, all 0600, with its lock files (0600 too);
* a new worker's start removes them (``shared.sweep_stale``), and a clean stop of that worker leaves
  none of its own.

This module is also the operations module of those workers (``register``), so it keeps its imports
to what a worker process can load.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from pydantic import BaseModel, ConfigDict, Field

from worker.runtime.context import JobContext
from worker.runtime.registry import Operation, Registry

OPERATIONS_SPEC = "tests.security.test_orphans:register"
N_FLOATS = 1 << 16  # 512 KiB: above shared.THRESHOLD_BYTES, so results travel in transfer files


# ----------------------------------------------------------------------------- the worker's side
class HoldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(N_FLOATS, ge=1, le=1 << 22)


_HELD: list[np.ndarray] = []  # keeps one result mapped (its file in use) until the worker dies


async def hold(ctx: JobContext, params: HoldParams) -> dict[str, Any]:
    kept = await ctx.compute(np.ones, params.n)  # a result file the worker maps and keeps
    _HELD.append(kept)
    freed = await ctx.compute(np.zeros, params.n)  # another one, freed at once: idle in the file pool
    total = float(kept.sum() + freed.sum())
    del freed
    return {"pid": os.getpid(), "sum": total}


def register(registry: Registry) -> None:
    from tests.ops import register as register_test_ops

    if "test.noop" not in registry:
        register_test_ops(registry)  # test.cpu-burn keeps a slot busy
    registry.register(Operation("orphan.hold", HoldParams, hold, "leaves transfer files in the worker"))


# ----------------------------------------------------------------------------- the test's side
def _transfer_dirs() -> list[Path]:
    return [*dict.fromkeys(d for d in (Path("/dev/shm"), Path(tempfile.gettempdir())) if d.is_dir())]


def _owned(pid: int, suffix: str) -> list[str]:
    """Transfer files (``.bin``) or lock files (``.lock``) of the worker process ``pid``."""
    return sorted(p for d in _transfer_dirs() for p in glob.glob(str(d / f"rory-{pid}-*{suffix}")))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Worker:
    """A worker subprocess in its own session (a signal to it reaches no one else).

    Started like the fault tests' workers (tests/faults/support.py), with this module's operations;
    unlike theirs, :meth:`kill` hits the worker alone, so its children are left to notice.
    """

    def __init__(self, settings: Any, log_file: Path) -> None:
        self.settings = settings
        self.log_file = log_file
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, nc: Any) -> Worker:
        from tests.faults.support import WorkerProcess

        runner = WorkerProcess(self.settings, self.log_file, operations=OPERATIONS_SPEC)
        self.process = (await runner.start(nc, timeout=90)).process
        return self

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    async def kill(self) -> None:
        """SIGKILL the worker process alone (not its process group)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; the exit status (None if it never started)."""
        from worker.embedded import terminate

        if self.process is None:
            return None
        if self.process.returncode is None:
            await terminate(self.process, timeout)
        return self.process.returncode


def _kill_leftovers(processes: list[psutil.Process]) -> None:
    """If the test fails, do not leave our own processes behind (killed one by one, by pid)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if _alive(process):
                process.kill()


async def _health(nc: Any, settings: Any) -> dict[str, Any]:
    from schemas import subjects

    msg = await nc.request(subjects.health(settings.rory_subject_prefix, settings.node_id), b"", timeout=5)
    return json.loads(msg.data)


async def test_a_killed_worker_leaves_no_process_and_its_files_are_swept(nats_url, nc, tmp_path) -> None:
    from schemas import codec, subjects
    from tests.conftest import settings_for
    from tests.faults.support import wait_for as _until
    from tests.ops import command, request

    settings = settings_for(nats_url, tmp_path / "doomed", worker_capacity=2)
    doomed = Worker(settings, tmp_path / "doomed.log")
    await doomed.start(nc)
    family: list[psutil.Process] = []
    try:
        prefix, node = settings.rory_subject_prefix, settings.node_id
        reply, _ = await request(
            nc, subjects.node_cmd(prefix, node, "orphan.hold"), command("orphan.hold", {}), timeout=60
        )
        assert reply["ok"], reply
        assert reply["result"]["pid"] == doomed.pid and reply["result"]["sum"] == N_FLOATS
        files = _owned(doomed.pid, ".bin")
        assert len(files) >= 2, f"expected a kept and an idle transfer file, found {files}"

        family = doomed.descendants()
        forkserver = [p for p in family if p.ppid() == doomed.pid and "forkserver" in " ".join(p.cmdline())]
        assert len(forkserver) == 1, [p.cmdline() for p in family]
        slots = [p for p in family if p.ppid() == forkserver[0].pid]
        assert len(slots) == 2, [p.cmdline() for p in family]

        # Keep one slot busy when the worker dies.
        burn = command("test.cpu-burn", {"seconds": 30.0})
        await nc.publish(subjects.node_cmd(prefix, node, "test.cpu-burn"), codec.encode(burn))
        await _until(lambda: sum(p.cpu_times().user for p in slots) > 0.5, 30, "a slot burning CPU")
        assert (await _health(nc, settings))["inflight"] == 1

        await doomed.kill()
        assert doomed.process is not None and doomed.process.returncode == -signal.SIGKILL

        # Everything it started goes away on its own: slots, fork server, resource tracker.
        await _until(lambda: not any(_alive(p) for p in family), 60, "the dead worker's processes to exit")

        # Its files are left (no cleanup ran), all private to this user.
        leftovers = _owned(doomed.pid, ".bin")
        locks = _owned(doomed.pid, ".lock")
        assert set(files) <= set(leftovers) and locks, (files, leftovers, locks)
        for path in leftovers + locks:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path, oct(os.stat(path).st_mode))

        # A new worker's start sweeps them; a clean stop of it leaves nothing of its own.
        fresh_settings = settings_for(nats_url, tmp_path / "fresh", worker_capacity=1)
        fresh = Worker(fresh_settings, tmp_path / "fresh.log")
        await fresh.start(nc)
        try:
            # The sweep removes a dead owner's transfer files, then its lock files: wait for both.
            await _until(
                lambda: not _owned(doomed.pid, ".bin") and not _owned(doomed.pid, ".lock"),
                30,
                "the new worker to sweep the files",
            )
            reply, _ = await request(
                nc,
                subjects.node_cmd(fresh_settings.rory_subject_prefix, fresh_settings.node_id, "orphan.hold"),
                command("orphan.hold", {}),
                timeout=60,
            )
            assert reply["ok"], reply
            mine = _owned(fresh.pid, ".bin") + _owned(fresh.pid, ".lock")
            assert mine and all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in mine), mine
            fresh_family = fresh.descendants()
        finally:
            assert await fresh.stop() == 0, fresh.log_file.read_text()[-3000:]
        await _until(lambda: not any(_alive(p) for p in fresh_family), 30, "the stopped worker's processes")
        assert not _owned(fresh.pid, ".bin") and not _owned(fresh.pid, ".lock")
    finally:
        await doomed.kill()
        _kill_leftovers(family)
