"""build.sh and deploy.sh pass the seed's arguments to docker: a stand-in ``docker`` records its argv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.util import REPO

BUILD = REPO / "build.sh"
DEPLOY = REPO / "deploy.sh"
SMOKE = REPO / "scripts" / "container-smoke.sh"


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

    def run(
        script_path: Path, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
    ) -> tuple[subprocess.CompletedProcess, list]:
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_DOCKER_LOG": str(log),
            # deploy.sh creates the bind-mount sources under RORY_BASE_PATH: keep them in tmp_path
            "RORY_BASE_PATH": str(tmp_path / "base"),
            **(env or {}),
        }
        log.unlink(missing_ok=True)
        result = subprocess.run(
            [str(script_path), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return result, calls

    return run


# ------------------------------------------------------------------------------------------ deploy.sh
def _compose(env_file: str, compose_file: str, *tail: str) -> list[list[str]]:
    """deploy.sh's docker calls: the v2 probe, then up (the stand-in answers the probe, so v2)."""
    files = [arg for name in compose_file.split(":") for arg in ("-f", name)]
    return [["compose", "version"], ["compose", "--env-file", env_file, *files, "up", *tail]]


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
    assert calls == _compose("config/.env.dev", "./compose.yaml", *tail)
    assert ("Building Docker images..." in result.stdout) == ("--build" in tail)


def test_deploy_env_file_and_compose_file_arguments(fake_docker, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env.prod").write_text("RORY_IMAGE=rory:prod\n")
    (work / "docker-compose.yml").write_text("services: {}\n")
    result, calls = fake_docker(DEPLOY, "0", "1", ".env.prod", cwd=work)
    assert result.returncode == 0, result.stderr
    assert calls == _compose(".env.prod", f"{REPO}/compose.yaml", "-d")
    result, calls = fake_docker(DEPLOY, "1", "0", ".env.prod", "docker-compose.yml", cwd=work)
    assert result.returncode == 0, result.stderr
    assert calls == _compose(".env.prod", "./docker-compose.yml", "--build")
    absolute = str(work / "docker-compose.yml")
    result, calls = fake_docker(DEPLOY, "0", "0", str(work / ".env.prod"), absolute, cwd=work)
    assert calls == _compose(str(work / ".env.prod"), absolute)


def test_deploy_from_another_directory_uses_the_checkout(fake_docker, tmp_path):
    result, calls = fake_docker(DEPLOY, "0", "1", ".env.mictlanx.dev", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # .env.mictlanx.dev names both files in COMPOSE_FILE; each is found next to deploy.sh
    both = f"{REPO}/compose.yaml:{REPO}/compose.mictlanx.yaml"
    assert calls == _compose(f"{REPO}/config/.env.mictlanx.dev", both, "-d")


def test_deploy_compose_file_list_argument(fake_docker):
    result, calls = fake_docker(DEPLOY, "0", "1", ".env.dev", "compose.yaml:compose.mictlanx.yaml")
    assert result.returncode == 0, result.stderr
    assert calls == _compose("config/.env.dev", "./compose.yaml:./compose.mictlanx.yaml", "-d")


def test_deploy_prepares_the_host_directories_for_the_image_user(fake_docker, tmp_path):
    result, _calls = fake_docker(DEPLOY, "0", "1")
    assert result.returncode == 0, result.stderr
    base = tmp_path / "base"
    expected = {"css"} | {f"rory-worker-{i}/{d}" for i in (0, 1) for d in ("source", "sink", "log", "keys")}
    made = {str(p.relative_to(base)) for p in [*base.glob("rory-worker-*/*"), *base.glob("css")]}
    assert made == expected
    if os.geteuid() == 0:  # as root, deploy.sh gives them to RORY_UID:RORY_GID (10001, the image's user)
        assert {(base / d).stat().st_uid for d in expected} == {10001}
        assert {(base / d).stat().st_gid for d in expected} == {10001}


def test_deploy_falls_back_to_docker_compose_1_29(fake_docker, tmp_path):
    result, calls = fake_docker(DEPLOY, "0", "1", env={"RORY_COMPOSE": "docker compose-1.29"})
    assert result.returncode == 0, result.stderr
    assert calls == [["compose-1.29", "--env-file", "config/.env.dev", "-f", "./compose.yaml", "up", "-d"]]


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


def _builds(calls: list[list[str]]) -> list[list[str]]:
    return [call for call in calls if call[0] == "build"]


def _online(image: str, context: str, nats: str = "rory:nats") -> list[list[str]]:
    return [["build", "-t", image, context], ["build", "--target", "nats", "-t", nats, context]]


def test_build_seed_layout(fake_docker, tmp_path):
    """The seed builds ${BASE_PATH}/worker/: this repository checked out as <base>/worker."""
    _checkout(tmp_path / "rory" / "worker")
    result, calls = fake_docker(BUILD, str(tmp_path / "rory"))
    assert result.returncode == 0, result.stderr
    # auto mode: the stand-in "has" python:3.11-slim, so the build is the online one
    assert calls[:2] == [["version"], ["image", "inspect", "python:3.11-slim"]]
    assert _builds(calls) == _online("rory:worker", f"{tmp_path}/rory/worker/")
    result, calls = fake_docker(BUILD, str(tmp_path / "rory"), "shanelreyes/rory:worker-prod")
    assert _builds(calls) == _online("shanelreyes/rory:worker-prod", f"{tmp_path}/rory/worker/")


def test_build_base_path_is_the_checkout(fake_docker, tmp_path):
    checkout = _checkout(tmp_path / "src")
    result, calls = fake_docker(
        BUILD, str(checkout), "me/rory:dev", env={"RORY_BUILD_MODE": "online", "RORY_NATS_IMAGE": "me/nats"}
    )
    assert result.returncode == 0, result.stderr
    assert _builds(calls) == _online("me/rory:dev", f"{checkout}/", nats="me/nats")
    result, calls = fake_docker(BUILD, str(checkout), env={"RORY_NATS_IMAGE": "none"})
    assert _builds(calls) == [["build", "-t", "rory:worker", f"{checkout}/"]]


def test_build_offline_uses_the_base_image_and_the_wheelhouse(fake_docker, tmp_path):
    """Offline: FROM the debootstrap base, pip only from build/wheelhouse (a current one is reused)."""
    checkout = _checkout(tmp_path / "src")
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    wheelhouse = checkout / "build" / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (wheelhouse / ".requirements").write_text("\n".join([*deps, "setuptools>=68", "wheel"]))
    env = {"RORY_BUILD_MODE": "offline", "RORY_WHEEL_PYTHON": sys.executable}
    result, calls = fake_docker(BUILD, str(checkout), env=env)
    assert result.returncode == 0, result.stderr
    assert ["image", "inspect", "rory-base:bookworm"] in calls  # exists (stand-in): no debootstrap
    assert "Wheelhouse" in result.stdout and "is up to date" in result.stdout
    offline = ["--build-arg", "PYTHON_IMAGE=rory-base:bookworm", "--build-arg", "WHEELHOUSE_ONLY=1"]
    assert _builds(calls) == [
        ["build", *offline, "-t", "rory:worker", f"{checkout}/"],
        ["build", *offline, "--target", "nats", "-t", "rory:nats", f"{checkout}/"],
    ]


def test_build_rejects_an_unknown_mode(fake_docker, tmp_path):
    result, calls = fake_docker(BUILD, env={"RORY_BUILD_MODE": "sometimes"})
    assert result.returncode == 2 and calls == []


@pytest.mark.skipif(Path("/rory/worker/Dockerfile").exists(), reason="a real /rory/worker checkout exists")
def test_build_without_arguments_uses_this_checkout(fake_docker, tmp_path):
    result, calls = fake_docker(BUILD, cwd=tmp_path, env={"RORY_BUILD_MODE": "online"})
    assert result.returncode == 0, result.stderr
    assert _builds(calls) == _online("rory:worker", f"{REPO}/")


def test_build_rejects_a_path_without_dockerfile(fake_docker, tmp_path):
    result, calls = fake_docker(BUILD, str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert calls == []


def test_scripts_are_strict_and_executable():
    for script in (BUILD, DEPLOY, SMOKE):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
        assert os.access(script, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    result = subprocess.run(
        ["shellcheck", str(BUILD), str(DEPLOY), str(SMOKE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
