"""The ``rory-worker`` command: settings errors, a real SIGTERM, and the inspection commands."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from schemas import subjects
from tests.ops import Collector, command, request
from worker import inspect
from worker.cli import parse_args

ROOT = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "RORY_", "NODE_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


async def _spawn_cli(*args: str, env: dict[str, str], stdout: int) -> asyncio.subprocess.Process:
    """``python -m worker <args>`` from the checkout (what the ``rory-worker`` entry point runs), its
    stderr piped: every test here reads the worker's log lines or its one-line errors from it."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, env=env, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE
    )


async def _run_cli(*args: str, env: dict[str, str], timeout: float = 20) -> tuple[int, str, str]:
    proc = await _spawn_cli(*args, env=env, stdout=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("NODE_ID", "bad id!"), ("WORKER_CAPACITY", "0"), ("NATS_URLS", "http://x")],
)
async def test_settings_error_is_one_clear_line(variable: str, value: str, tmp_path) -> None:
    code, out, err = await _run_cli("run", env=_env(**{variable: value}, LOG_PATH=str(tmp_path)))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], err
    assert out == ""


async def test_no_server_fails_with_clear_message(tmp_path) -> None:
    code, _, err = await _run_cli(
        "ls", env=_env(NATS_URLS="nats://127.0.0.1:1", NATS_CONNECT_TIMEOUT="0.5", LOG_PATH=str(tmp_path))
    )
    assert code == 1
    assert "no NATS server answered at nats://127.0.0.1:1" in err


def test_default_command_is_run() -> None:
    assert parse_args([]).command == "run"
    args = parse_args(["--embedded", "--data-dir", "x"])
    assert args.command == "run" and args.embedded and args.data_dir == Path("x")
    assert parse_args(["req", "a.b", "--pool"]).pool


async def test_sigterm_stops_gracefully_with_command_in_flight(nats_url, nc, tmp_path) -> None:
    node, prefix = f"cli-{uuid.uuid4().hex[:6]}", f"cli{uuid.uuid4().hex[:6]}"
    started = await Collector.on(nc, subjects.started(prefix, node))
    stopped = await Collector.on(nc, subjects.stopped(prefix, node))
    env = _env(
        NATS_URLS=nats_url,
        NODE_ID=node,
        RORY_SUBJECT_PREFIX=prefix,
        WORKER_CAPACITY="1",
        STORAGE_BACKEND="local",
        STORAGE_PATH=str(tmp_path / "css"),
        LOG_PATH=str(tmp_path / "log"),
        SINK_PATH=str(tmp_path),
        SHUTDOWN_GRACE_PERIOD="10",
    )
    proc = await _spawn_cli("run", "--operations", "tests.ops:register", env=env, stdout=subprocess.DEVNULL)
    try:
        await started.wait(1, timeout=20)
        health = json.loads((await nc.request(subjects.health(prefix, node), b"", timeout=2)).data)
        assert health["storage"] == {"backend": "local", "reachable": True, "last_error": None}
        slow = asyncio.create_task(
            request(
                nc,
                subjects.node_cmd(prefix, node, "test.sleep"),
                command("test.sleep", {"seconds": 0.5}),
                timeout=10,
            )
        )
        await asyncio.sleep(0.15)
        proc.send_signal(signal.SIGTERM)
        reply, _ = await slow
        assert reply["ok"], reply
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        (bye,) = await stopped.wait(1)
        assert bye["event"] == "stopped"
        err = (await proc.stderr.read()).decode()
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any(line["msg"] == "worker stopped" for line in lines)
        assert (tmp_path / "log" / f"{node}.log").is_file()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_inspection_commands(start_worker, nc, nats_url) -> None:
    worker = await start_worker()
    out = io.StringIO()
    assert await inspect.ls(nc, window=0.3, out=out) == 0
    assert worker.instance_id in out.getvalue() and worker.node_id in out.getvalue()

    out = io.StringIO()
    assert await inspect.info(nc, worker.instance_id, window=0.3, out=out) == 0
    assert (
        "test_echo" in out.getvalue()
        and subjects.node_cmd(worker.prefix, worker.node_id, "test.echo") in out.getvalue()
    )

    out = io.StringIO()
    assert (
        await inspect.req(
            nc, worker.prefix, "test.echo", node=worker.node_id, params={"message": "cli"}, out=out
        )
        == 0
    )
    assert json.loads(out.getvalue())["result"]["message"] == "cli"
    out = io.StringIO()
    assert (
        await inspect.req(nc, worker.prefix, "test.fail", params={"code": 404}, json_mode=True, out=out) == 1
    )
    assert json.loads(out.getvalue())["error"]["code"] == 404

    out = io.StringIO()
    assert await inspect.stats(nc, worker.instance_id, window=0.3, out=out) == 0
    assert "test_echo" in out.getvalue() and "404 NOT_FOUND" in out.getvalue()

    for use_msgpack in (False, True):
        out = io.StringIO()
        assert await inspect.health(nc, worker.prefix, worker.node_id, use_msgpack=use_msgpack, out=out) == 0
        assert json.loads(out.getvalue())["component_type"] == "worker"
    out = io.StringIO()
    assert await inspect.health(nc, worker.prefix, "nobody", out=out) == 3

    out = io.StringIO()
    assert await inspect.watch(nc, worker.prefix, node=worker.node_id, count=2, duration=5, out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2 and all(line["subject"].endswith(".heartbeat") for line in lines)

    assert inspect.load_params('{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        inspect.load_params("[1]")

    # the console entry point itself, end to end
    code, stdout, _ = await _run_cli("ls", "--json", "--server", nats_url, "--timeout", "0.5", env=_env())
    assert code == 0 and worker.instance_id in {b["id"] for b in json.loads(stdout)}
    code, stdout, _ = await _run_cli(
        "req",
        "test.echo",
        "--node",
        worker.node_id,
        "--prefix",
        worker.prefix,
        "--server",
        nats_url,
        "--params",
        '{"message": "from the cli"}',
        "--json",
        env=_env(),
    )
    assert code == 0 and json.loads(stdout)["result"]["message"] == "from the cli"


async def test_health_command_fails_for_a_degraded_worker(start_worker, nc):
    """The container HEALTHCHECK runs `rory-worker health`: unreachable storage must make it fail."""
    from worker.runtime.service import UnavailableStore

    worker = await start_worker(store=UnavailableStore("storage is down for this test"))
    out = io.StringIO()
    assert await inspect.health(nc, worker.prefix, worker.node_id, out=out) == inspect.EXIT_UNHEALTHY
    assert json.loads(out.getvalue())["status"] == "degraded"


async def test_dlq_mover_command_runs_for_its_duration(nats_url, tmp_path) -> None:
    code, out, err = await _run_cli(
        "dlq-mover", "--server", nats_url, "--duration", "0.3", env=_env(), timeout=60
    )
    assert code == 0, err
    assert "moving abandoned commands of RORY_JOBS to RORY_DLQ" in out
