"""``python scripts/cluster.py`` as an operator runs it: prints the URLs, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.util import REPO, runtime_available

RUNTIME_AVAILABLE, WHY_NOT = runtime_available()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "workers",
    [
        0,
        pytest.param(2, marks=pytest.mark.skipif(not RUNTIME_AVAILABLE, reason=WHY_NOT)),
    ],
)
def test_cluster_command_starts_and_ctrl_c_stops_everything(tmp_path, workers):
    base = tmp_path / "cluster"
    proc = subprocess.Popen(
        [
            sys.executable,
            "scripts/cluster.py",
            "--servers",
            "3",
            "--workers",
            str(workers),
            "--dir",
            str(base),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "Ctrl-C stops everything" in output, output
        assert (
            len(re.findall(r"node-[abc]  nats://127\.0\.0\.1:\d+  monitor http://127\.0\.0\.1:\d+", output))
            == 3
        )
        assert len(re.findall(r"rory-worker-\d  on node-[abc]", output)) == workers
        pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
        assert len(pids) == 3 + workers and all(_alive(pid) for pid in pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not [pid for pid in pids if _alive(pid)], "children left running"
        assert Path(base, "node-a.conf").exists()  # --dir is the caller's: kept
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
