"""build.sh and deploy.sh pass the seed's arguments to docker: a stand-in ``docker`` records its argv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.util import REPO

BUILD = REPO / "build.sh"
DEPLOY = REPO / "deploy.sh"


@pytest.fixture
def fake_docker(tmp_path: Path):
    """A ``docker`` first on PATH that appends its arguments (one JSON list per call) to a log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker-calls.jsonl"
    script = bin_dir / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['FAKE_DOCKER_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(0o755)

    def run(script_path: Path, *args: str, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, list]:
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_DOCKER_LOG": str(log),
        }
        log.unlink(missing_ok=True)
        result = subprocess.run(
            [str(script_path), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return result, calls

    return run


# ------------------------------------------------------------------------------------------ deploy.sh
def _compose(env_file: str, compose_file: str, *tail: str) -> list[str]:
    return ["compose", "--env-file", env_file, "-f", compose_file, "up", *tail]


@pytest.mark.parametrize(
    ("args", "tail"),
    [
        ((), ()),
        (("0",), ()),
        (("0", "0"), ()),
        (("1",), ("--build",)),
        (("0", "1"), ("-d",)),
        (("1", "1"), ("-d", "--build")),
    ],
)
def test_deploy_modes(fake_docker, args, tail):
    result, calls = fake_docker(DEPLOY, *args)
    assert result.returncode == 0, result.stderr
    # Defaults: .env.dev is found in config/, the manifest is ./compose.yaml (the seed's ./${COMPOSE_FILE}).
    assert calls == [_compose("config/.env.dev", "./compose.yaml", *tail)]
    assert ("Building Docker images..." in result.stdout) == ("--build" in tail)


def test_deploy_env_file_and_compose_file_arguments(fake_docker, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env.prod").write_text("RORY_IMAGE=rory:prod\n")
    (work / "docker-compose.yml").write_text("services: {}\n")
    result, calls = fake_docker(DEPLOY, "0", "1", ".env.prod", cwd=work)
    assert result.returncode == 0, result.stderr
    assert calls == [_compose(".env.prod", f"{REPO}/compose.yaml", "-d")]
    result, calls = fake_docker(DEPLOY, "1", "0", ".env.prod", "docker-compose.yml", cwd=work)
    assert result.returncode == 0, result.stderr
    assert calls == [_compose(".env.prod", "./docker-compose.yml", "--build")]
    absolute = str(work / "docker-compose.yml")
    result, calls = fake_docker(DEPLOY, "0", "0", str(work / ".env.prod"), absolute, cwd=work)
    assert calls == [_compose(str(work / ".env.prod"), absolute)]


def test_deploy_from_another_directory_uses_the_checkout(fake_docker, tmp_path):
    result, calls = fake_docker(DEPLOY, "0", "1", ".env.mictlanx.dev", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == [_compose(f"{REPO}/config/.env.mictlanx.dev", f"{REPO}/compose.yaml", "-d")]


@pytest.mark.parametrize(
    "args", [("2",), ("0", "yes"), ("0", "0", "missing.env"), ("0", "0", ".env.dev", "missing.yml")]
)
def test_deploy_rejects_bad_arguments_without_calling_docker(fake_docker, args):
    result, calls = fake_docker(DEPLOY, *args)
    assert result.returncode == 2
    assert calls == []
    assert "deploy.sh:" in result.stderr


# ------------------------------------------------------------------------------------------- build.sh
def _checkout(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    return root


def test_build_seed_layout(fake_docker, tmp_path):
    """The seed builds ${BASE_PATH}/worker/: this repository checked out as <base>/worker."""
    _checkout(tmp_path / "rory" / "worker")
    result, calls = fake_docker(BUILD, str(tmp_path / "rory"))
    assert result.returncode == 0, result.stderr
    assert calls == [["build", "-t", "rory:worker", f"{tmp_path}/rory/worker/"]]
    result, calls = fake_docker(BUILD, str(tmp_path / "rory"), "shanelreyes/rory:worker-prod")
    assert calls == [["build", "-t", "shanelreyes/rory:worker-prod", f"{tmp_path}/rory/worker/"]]


def test_build_base_path_is_the_checkout(fake_docker, tmp_path):
    checkout = _checkout(tmp_path / "src")
    result, calls = fake_docker(BUILD, str(checkout), "me/rory:dev")
    assert result.returncode == 0, result.stderr
    assert calls == [["build", "-t", "me/rory:dev", f"{checkout}/"]]


@pytest.mark.skipif(Path("/rory/worker/Dockerfile").exists(), reason="a real /rory/worker checkout exists")
def test_build_without_arguments_uses_this_checkout(fake_docker, tmp_path):
    result, calls = fake_docker(BUILD, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == [["build", "-t", "rory:worker", f"{REPO}/"]]


def test_build_rejects_a_path_without_dockerfile(fake_docker, tmp_path):
    result, calls = fake_docker(BUILD, str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert calls == []


def test_scripts_are_strict_and_executable():
    for script in (BUILD, DEPLOY):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
        assert os.access(script, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    result = subprocess.run(["shellcheck", str(BUILD), str(DEPLOY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
