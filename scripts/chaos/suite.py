"""The chaos runs: for each mode (jetstream, core) and fault, a batch of jobs, the fault, the count.

Hosts (one network namespace each, see scripts/chaos/net.py): ``n1``-``n3`` nats-servers (one
JetStream cluster, R3 streams), ``w1``/``w2`` workers, ``mgr`` the Manager (this process's main
thread runs there). Faults, each injected once most of the batch is still unanswered:

* ``meta-leader-kill``: SIGKILL the nats-server that ``/jsz`` names meta leader; restart it after the
  outage time (same config and store directory);
* ``worker-kill``: SIGKILL w1's process group mid-job; start it again 2 s later;
* ``link-cut``: take w1's bridge port down for the outage time, then up again;
* ``storage-outage``: the workers' STORAGE_PATH is a symlink to the real directory; it is atomically
  re-pointed at a regular file for the outage time, so every storage call fails with ENOTDIR (which
  root cannot override, unlike chmod) and the local store cannot recreate the directory (it would
  after a rename away: ``_make_dirs`` in worker/storage/local.py), then pointed back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.api import ClusterInfo

from schemas import subjects
from scripts.chaos import manager
from scripts.chaos.manager import Collector, Outcome
from scripts.chaos.net import Network
from scripts.chaos.procs import NatsNode, WorkerNode, meta_leader, nats_nodes, wait_cluster, worker_env
from worker.storage import LocalStore

FAULTS = ("none", "meta-leader-kill", "worker-kill", "link-cut", "storage-outage")
MODES = ("jetstream", "core")
STREAM = subjects.JOBS_STREAM  # what the workers use by default (JETSTREAM_STREAM)
SERVERS = ("n1", "n2", "n3")
WORKERS = ("w1", "w2")
VICTIM = "w1"
CORE_BUDGET = 30.0  # s a core Manager keeps retrying one job (longer than every outage here)


@dataclass
class Config:
    jobs: int = 120
    job_seconds: float = 0.25
    outage: float = 10.0
    ack_wait: float = 20.0
    capacity: int = 2
    modes: tuple[str, ...] = MODES
    faults: tuple[str, ...] = FAULTS
    keep: bool = False
    json_path: str | None = None

    @property
    def deadline(self) -> float:
        """Most seconds a run may take after its fault before unanswered jobs count as lost."""
        return 40.0 + 2 * self.ack_wait + self.outage


@dataclass
class Row:
    mode: str
    fault: str
    submitted: int
    in_flight: int  # submitted, not yet answered, when the fault hit
    completed: int  # final answer ok
    failed: int  # final answer an error Reply
    lost: int  # never answered (no Reply, no result record)
    twice: int  # jobs whose execution finished more than once (result balls)
    rerun: int  # jobs whose execution started more than once (run balls): at-least-once at work
    retries: int  # publishes (JetStream) or requests (core) the Manager sent beyond one per job
    extra_replies: int  # successful Replies beyond the first per job
    diverged: int  # jobs answered with two different results (effectively-once broken)
    from_record: int  # Replies the Manager missed and read from the result record
    recover_s: float  # fault start -> every job answered (or the deadline)
    stall_s: float  # longest time in which no job got its (final) answer, after the fault started
    notes: str = ""


@dataclass
class Cluster:
    cfg: Config
    workdir: Path
    net: Network
    nodes: dict[str, NatsNode] = field(default_factory=dict)
    workers: dict[str, WorkerNode] = field(default_factory=dict)
    nc: Client | None = None

    # ------------------------------------------------------------------ storage switch
    @property
    def storage_link(self) -> Path:
        return self.workdir / "storage"

    def storage(self, available: bool) -> None:
        """Point STORAGE_PATH at the real directory, or at a regular file (an outage)."""
        target = self.workdir / ("storage-real" if available else "storage-gone")
        temp = self.workdir / "storage.swap"
        temp.unlink(missing_ok=True)
        temp.symlink_to(target)
        os.replace(temp, self.storage_link)  # rename(2): the switch is atomic for the workers

    def prepare_storage(self) -> None:
        (self.workdir / "storage-real").mkdir(mode=0o700)
        (self.workdir / "storage-gone").write_bytes(b"")
        (self.workdir / "sink").mkdir(mode=0o700)
        self.storage(True)

    # ------------------------------------------------------------------ processes
    def start_servers(self) -> None:
        self.nodes = {node.name: node for node in nats_nodes(self.net, SERVERS, self.workdir)}
        for node in self.nodes.values():
            node.process.start()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    async def start_worker(self, name: str, mode: str) -> None:
        paths = {"storage": self.storage_link, "sink": self.workdir / "sink"}
        extra = {"WORKER_CAPACITY": str(self.cfg.capacity), "JETSTREAM_ACK_WAIT": str(self.cfg.ack_wait),
                 "JETSTREAM_MAX_DELIVER": "5"}
        env = worker_env(name, self.urls, mode, paths, extra)
        worker = WorkerNode(name, self.net, env, self.workdir / f"{name}.log")
        assert self.nc is not None
        started = await self.nc.subscribe(subjects.started(manager.PREFIX, name), max_msgs=1)
        worker.start()
        self.workers[name] = worker
        try:
            await started.next_msg(timeout=90)
        except Exception:
            tail = worker.log.read_text(errors="replace")[-2000:] if worker.log.exists() else ""
            raise RuntimeError(f"worker {name} did not start; log tail:\n{tail}") from None

    async def start_workers(self, mode: str) -> None:
        for worker in self.workers.values():
            await asyncio.to_thread(worker.stop)
        self.workers.clear()
        await asyncio.gather(*(self.start_worker(name, mode) for name in WORKERS))

    def stop_all(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        for node in self.nodes.values():
            node.process.stop()

    # ------------------------------------------------------------------ faults
    async def inject(self, fault: str, mode: str) -> str:
        """Cause ``fault``, hold it, heal it; returns what was done (for the notes column)."""
        if fault == "none":
            return "baseline"
        if fault == "meta-leader-kill":
            leader, _ = await asyncio.to_thread(meta_leader, list(self.nodes.values()))
            node = self.nodes[leader or "n1"]
            node.process.kill()
            await asyncio.sleep(self.cfg.outage)
            node.process.start()
            return f"killed {node.name}"
        if fault == "worker-kill":
            self.workers[VICTIM].kill()
            await asyncio.sleep(2.0)
            await self.start_worker(VICTIM, mode)
            return f"SIGKILL {VICTIM}, restarted"
        if fault == "link-cut":
            self.net.set_link(VICTIM, False)
            await asyncio.sleep(self.cfg.outage)
            self.net.set_link(VICTIM, True)
            return f"{VICTIM} unplugged"
        if fault == "storage-outage":
            self.storage(False)
            await asyncio.sleep(self.cfg.outage)
            self.storage(True)
            return "STORAGE_PATH -> file"
        raise ValueError(f"unknown fault {fault!r}")

    async def healed(self) -> None:
        """Back to a whole cluster before the next run: three current servers, and the jobs stream
        and every consumer on it with a leader and all replicas current. A restarted server rebuilds
        its copies after the meta group forms; a run started before that measured the catch-up,
        not the next fault."""
        await asyncio.to_thread(wait_cluster, list(self.nodes.values()), 60.0)
        assert self.nc is not None
        js = self.nc.jetstream(timeout=2.0)
        until = time.monotonic() + 60.0
        while time.monotonic() < until:
            try:
                infos = [(await js.stream_info(STREAM)).cluster]
                infos += [c.cluster for c in await js.consumers_info(STREAM)]
            except Exception:  # a leader election in progress: ask again
                await asyncio.sleep(0.25)
                continue
            if all(_replicas_current(info) for info in infos):
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{STREAM} or its consumers did not catch up within 60 s")


def _replicas_current(cluster: ClusterInfo | None) -> bool:
    """A stream's or consumer's cluster info: a leader, and every other replica current."""
    if cluster is None or not cluster.leader:
        return False
    return all(replica.current for replica in cluster.replicas or [])


def _stall(times: list[float], start: float, end: float) -> float:
    points = sorted([start, *[t for t in times if start <= t <= end], end])
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def _tags(replies: list[dict[str, Any]]) -> set[str]:
    return {str((r.get("result") or {}).get("tag")) for r in replies if r.get("ok")}


async def _until(predicate: Any, timeout: float) -> bool:
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_one(cluster: Cluster, mode: str, fault: str) -> Row:
    cfg, nc = cluster.cfg, cluster.nc
    assert nc is not None
    tag = f"{mode[0]}{FAULTS.index(fault)}{os.getpid()}"
    commands = [manager.command(f"{tag}x{i}", cfg.job_seconds) for i in range(cfg.jobs)]
    outcome = Outcome({body["id"]: body["params"]["key"] for body in commands})
    collector = Collector(outcome)
    if mode == "jetstream":
        await collector.start(nc)
        submit = asyncio.ensure_future(manager.publish_all(nc, commands, outcome))
    else:  # a careful core Manager: as many requests at once as the cluster has slots
        slots = asyncio.Semaphore(cfg.capacity * len(WORKERS))
        submit = asyncio.ensure_future(asyncio.gather(*(
            manager.request_with_retries(nc, body, outcome, slots, timeout=3.0, budget=CORE_BUDGET)
            for body in commands)))
    await _until(lambda: outcome.answered >= max(2, cfg.jobs // 25), 60)
    in_flight = cfg.jobs - outcome.answered
    start = time.monotonic()
    notes = await cluster.inject(fault, mode)
    if mode == "jetstream":
        await _until(lambda: outcome.answered >= cfg.jobs, cfg.deadline)
        await manager.read_records(nc, outcome)
    else:
        await asyncio.wait_for(asyncio.shield(submit), cfg.deadline)
    end = max(outcome.answered_at.values(), default=start)
    await asyncio.sleep(1.0)  # late duplicates
    submit.cancel()
    await collector.close()
    runs, results = await manager.count_markers(
        LocalStore(cluster.workdir / "storage-real"), set(outcome.keys.values()))
    finals = [outcome.final(job) for job in outcome.keys]
    return Row(
        mode=mode, fault=fault, submitted=cfg.jobs, in_flight=in_flight,
        completed=sum(1 for f in finals if f and f.get("ok")),
        failed=sum(1 for f in finals if f and not f.get("ok")),
        lost=sum(1 for f in finals if f is None),
        twice=sum(1 for key in outcome.keys.values() if results[key] > 1),
        rerun=sum(1 for key in outcome.keys.values() if runs[key] > 1),
        retries=sum(n - 1 for n in outcome.attempts.values() if n > 1),
        extra_replies=sum(outcome.extra_replies(job) for job in outcome.keys),
        diverged=sum(1 for r in outcome.replies.values() if len(_tags(r)) > 1),
        from_record=len(outcome.from_record),
        recover_s=round(end - start, 1),
        stall_s=round(_stall(list(outcome.answered_at.values()), start, end), 1),
        notes=notes + _error_note(finals),
    )


def _error_note(finals: list[dict[str, Any] | None]) -> str:
    kinds = sorted({f"{f['error'].get('code')} {f['error'].get('type', '')}".strip()
                    for f in finals if f and not f.get("ok") and f.get("error")})
    return f"; errors: {', '.join(kinds)}" if kinds else ""


COLUMNS = ("mode", "fault", "submitted", "in_flight", "completed", "failed", "lost", "twice", "rerun",
           "retries", "extra_replies", "diverged", "from_record", "recover_s", "stall_s", "notes")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = asdict(row)
        lines.append("| " + " | ".join(str(values[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


async def run_suite(cluster: Cluster) -> list[Row]:
    cfg = cluster.cfg
    cluster.start_servers()
    leader = await asyncio.to_thread(wait_cluster, list(cluster.nodes.values()), 60.0)
    print(f"chaos: nats cluster up (meta leader {leader}), workdir {cluster.workdir}", flush=True)
    cluster.nc = await manager.connect(cluster.urls)
    await manager.create_r3_topology(cluster.nc)
    rows: list[Row] = []
    try:
        for mode in cfg.modes:
            await cluster.start_workers(mode)
            for fault in cfg.faults:
                t0 = time.monotonic()
                row = await run_one(cluster, mode, fault)
                rows.append(row)
                took = time.monotonic() - t0
                print(f"chaos: {mode:9} {fault:16} ok={row.completed} failed={row.failed} lost={row.lost} "
                      f"twice={row.twice} recover={row.recover_s}s ({took:.0f}s)", flush=True)
                await cluster.healed()
    finally:
        await cluster.nc.close()
    return rows


def main(cfg: Config) -> int:
    """Build the cluster, run the suite, tear everything down; 1 when JetStream mode lost or re-ran a job."""
    workdir = Path(tempfile.mkdtemp(prefix="rory-chaos-"))
    net = Network(f"rc{os.getpid()}")
    cluster = Cluster(cfg, workdir, net)
    rows: list[Row] = []
    began = time.monotonic()
    try:
        net.up([*SERVERS, *WORKERS, "mgr"])
        cluster.prepare_storage()
        with net.inside("mgr"):
            rows = asyncio.run(run_suite(cluster))
    finally:
        cluster.stop_all()
        net.close()
        if not cfg.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nchaos suite: {len(rows)} runs in {time.monotonic() - began:.0f}s "
          f"({cfg.jobs} jobs of {cfg.job_seconds}s each, outage {cfg.outage}s, ack wait {cfg.ack_wait}s)\n")
    print(table(rows))
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r for r in rows if r.mode == "jetstream" and (r.lost or r.twice or r.diverged)]
    for row in bad:
        print(f"FAIL: jetstream {row.fault}: lost {row.lost}, ran twice {row.twice}, diverged {row.diverged}")
    return 1 if bad else 0

