"""Interop with the official NATS tooling: the nats.js services client and a plain nats.js request.

npm-installs ``@nats-io/services`` and ``@nats-io/transport-node`` into a temporary folder, starts a
worker (the project's fixtures, a real nats-server) and runs tests/interop/nats_js_client.mjs: its
PING/INFO/STATS answers must be the ones nats-py sees and validate against schemas/nats-micro-v1, and a
JSON command sent by nats.js must get the JSON Reply the Python side gets. Skipped only when ``node``
is not installed (with a warning); an npm failure is a failure.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas import codec, subjects
from schemas.envelopes import Reply
from tests.ops import command, request
from worker.inspect import gather

HERE = Path(__file__).resolve().parent
SCHEMA_DIR = HERE.parents[1] / "schemas" / "nats-micro-v1"
PACKAGES = ("@nats-io/services", "@nats-io/transport-node")
SERVICE = "rory-worker"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed: the nats.js interop test (tests/interop) did NOT run"
        warnings.warn(reason, stacklevel=2)
        pytest.skip(reason)
    return node


@pytest.fixture(scope="module")
def nats_js(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(node, folder holding node_modules with the official clients and the .mjs script)."""
    node = _node()
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not"
    folder = tmp_path_factory.mktemp("nats-js")
    (folder / "package.json").write_text('{"name": "rory-interop", "private": true, "type": "module"}\n')

    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"npm install {' '.join(PACKAGES)} failed:\n{result.stderr}"
    shutil.copy(HERE / "nats_js_client.mjs", folder / "nats_js_client.mjs")
    return node, folder


async def _run_js(nats_js: tuple[str, Path], *args: str) -> dict[str, Any]:
    # Asynchronous on purpose: the worker under test serves on this same event loop.
    node, folder = nats_js
    proc = await asyncio.create_subprocess_exec(
        node,
        "nats_js_client.mjs",
        *args,
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def _validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMA_DIR / f"{kind}_response.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


async def _python_view(nc: Any, verb: str, instance_id: str) -> dict[str, Any]:
    answers = await gather(nc, f"$SRV.{verb}.{SERVICE}.{instance_id}", window=0.3)
    (body,) = [json.loads(msg.data) for msg, _ in answers]
    return body


async def test_nats_js_services_client_and_request_reply(nats_js, start_worker, nc, nats_url) -> None:
    worker = await start_worker()
    await request(nc, subjects.node_cmd(worker.prefix, worker.node_id, "test.echo"), command("test.echo"))
    python = {verb: await _python_view(nc, verb, worker.instance_id) for verb in ("PING", "INFO", "STATS")}

    body = command("test.echo", {"message": "from nats.js", "n": 7}, job_id="job-js")
    js = await _run_js(
        nats_js, nats_url, SERVICE, subjects.pool_cmd(worker.prefix, "test.echo"), json.dumps(body)
    )

    for verb, key in (("PING", "ping"), ("INFO", "info"), ("STATS", "stats")):
        mine = [answer for answer in js[key] if answer["id"] == worker.instance_id]
        assert len(mine) == 1, f"nats.js {key}: {js[key]}"
        _validator(verb.lower()).validate(mine[0])
        assert mine[0] == python[verb], f"nats.js and nats-py disagree on $SRV.{verb}"

    reply = js["reply"]
    Reply.model_validate(reply)
    assert js["reply_headers"][codec.CONTENT_TYPE] == [codec.JSON]
    assert reply["ok"] is True and reply["in_reply_to"] == body["id"] and reply["job_id"] == "job-js"
    expected = {"message": "from nats.js", "n": 7, "job_id": "job-js", "node_id": worker.node_id}
    assert reply["result"] == expected

    # The same command from nats-py gets the same answer (ids and timings aside).
    again = command("test.echo", {"message": "from nats.js", "n": 7}, job_id="job-js")
    py_reply, _ = await request(nc, subjects.pool_cmd(worker.prefix, "test.echo"), again, json_mode=True)
    ignore = {"id", "in_reply_to", "ts", "timings"}
    assert {k: v for k, v in py_reply.items() if k not in ignore} == {
        k: v for k, v in reply.items() if k not in ignore
    }
