"""compose.yaml and its env files, checked against what the worker actually reads (worker/settings.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.util import REPO, WORKER_VARS, interpolate, interpolation_vars, read_env_file
from worker.settings import Settings, StorageBackend

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (pyproject [test])")

COMPOSE = REPO / "compose.yaml"
COMPOSE_MICTLANX = REPO / "compose.mictlanx.yaml"
ENV_DEV = REPO / "config" / ".env.dev"
ENV_MICTLANX = REPO / "config" / ".env.mictlanx.dev"
WORKERS = ("rory-worker-0", "rory-worker-1")
MICTLANX_SERVICES = {
    # service -> image from the original deployment (docs/original-rory.md, MictlanX deployment)
    "mictlanx-router-0": "nachocode/mictlanx:router-0.1.0a5",
    "mictlanx-rm-0": "nachocode/mictlanx:rm-0.1.0a3",
    "mictlanx-peer-0": "nachocode/mictlanx:peer-0.1.0a2",
    "mictlanx-peer-1": "nachocode/mictlanx:peer-0.1.0a2",
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an override file, for the mappings these files use (lists are replaced)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_MICTLANX.read_text())


@pytest.fixture(scope="module")
def merged(compose, override) -> dict[str, Any]:
    """compose.yaml + compose.mictlanx.yaml, as `-f compose.yaml -f compose.mictlanx.yaml` gives."""
    return _merge(compose, override)


@pytest.fixture(scope="module")
def env_dev() -> dict[str, str]:
    return read_env_file(ENV_DEV)[0]


def _strings(node: Any) -> list[str]:
    """Every string value of a loaded YAML tree (what compose interpolates; comments are not in it)."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


def _mounts(volumes: list[str]) -> dict[str, str]:
    """target -> source of short-syntax volumes (sources may contain ``${VAR:-/x}``)."""
    parsed = (re.fullmatch(r"(.+?):(/[^:]*)(?::(?:ro|rw))?", v) for v in volumes)
    return {m.group(2): m.group(1) for m in parsed if m}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _env_files(service: dict[str, Any]) -> list[Path]:
    files = service.get("env_file") or []
    return [REPO / f for f in ([files] if isinstance(files, str) else files)]


def test_services_and_the_mictlanx_override(compose, override, merged):
    assert set(compose["services"]) == {"nats", *WORKERS}
    assert set(override["services"]) == {*WORKERS, *MICTLANX_SERVICES}
    assert set(merged["services"]) == {"nats", *WORKERS, *MICTLANX_SERVICES}
    for name, service in merged["services"].items():
        assert "profiles" not in service, f"{name}: the override file is the opt-in, not a profile"


def test_docker_compose_1_29_compatible(compose, override):
    """Debian 12's docker-compose 1.29 refuses a top-level name: and depends_on.required."""
    for document in (compose, override):
        assert "name" not in document and "version" not in document
        for name, service in document["services"].items():
            depends = service.get("depends_on") or {}
            if isinstance(depends, dict):
                for target, condition in depends.items():
                    assert "required" not in condition, f"{name} -> {target}"
    assert read_env_file(ENV_DEV)[0]["COMPOSE_PROJECT_NAME"] == "rory"


def test_workers_environment_only_has_worker_variables(compose):
    for name in WORKERS:
        service = compose["services"][name]
        unknown = set(_environment(service)) - WORKER_VARS
        assert not unknown, f"{name} sets variables the worker never reads: {sorted(unknown)}"
        for env_file in _env_files(service):
            active, commented = read_env_file(env_file)
            assert not (set(active) | set(commented)) - WORKER_VARS, env_file


def test_workers_identity_and_nats(compose):
    services = compose["services"]
    for name in WORKERS:
        env = _environment(services[name])
        assert env["NODE_ID"] == name == services[name]["container_name"] == services[name]["hostname"]
        host_port = env["NATS_URLS"].removeprefix("nats://")
        host, port = host_port.split(":")
        assert host in services and port == "4222"
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy"
        assert _env_files(services[name]) == [REPO / "config" / "worker.env"]
        assert services[name]["image"] == "${RORY_IMAGE:-rory:worker}"
        assert services[name]["build"]["context"] == "."
        assert services[name]["user"] == "${RORY_UID:-10001}:${RORY_GID:-10001}"  # the image's user
        assert "rory-worker health" in " ".join(services[name]["healthcheck"]["test"])


def _resolved_settings(service: dict[str, Any], compose_env: dict[str, str], monkeypatch) -> Settings:
    """What the worker in this container would load: env_file, then the service environment."""
    for var in WORKER_VARS:
        monkeypatch.delenv(var, raising=False)
    merged: dict[str, str] = {}
    for env_file in _env_files(service):
        merged.update(read_env_file(env_file)[0])
    merged.update({k: interpolate(v, compose_env) for k, v in _environment(service).items()})
    for key, value in merged.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


@pytest.mark.parametrize(
    ("env_path", "backend"), [(ENV_DEV, StorageBackend.LOCAL), (ENV_MICTLANX, StorageBackend.MICTLANX)]
)
def test_worker_containers_load_valid_settings(merged, monkeypatch, env_path, backend):
    compose_env = read_env_file(env_path)[0]
    for name in WORKERS:
        settings = _resolved_settings(merged["services"][name], compose_env, monkeypatch)
        assert settings.node_id == name
        assert settings.resolved_storage_backend is backend
        assert settings.storage_path == "/rory/css"
        _router_id, host, port = settings.mictlanx_routers[0].split(":")
        assert host in merged["services"] and port == "60666"


def test_worker_volumes_follow_the_seed_layout(compose):
    for name in WORKERS:
        volumes = compose["services"][name]["volumes"]
        mounts = _mounts(volumes)
        for sub in ("source", "sink", "log", "keys"):
            assert mounts[f"/rory/{sub}"] == f"${{RORY_BASE_PATH:-/rory}}/{name}/{sub}"
        assert mounts["/rory/css"] == "${RORY_BASE_PATH:-/rory}/css"  # shared local storage
        assert f"${{RORY_BASE_PATH:-/rory}}/{name}/keys:/rory/keys:ro" in volumes  # public material only


def test_nats_service(compose):
    nats = compose["services"]["nats"]
    mounts = {source: target for target, source in _mounts(nats["volumes"]).items()}
    conf_target = mounts["./config/nats-server.conf"]
    assert (REPO / "config" / "nats-server.conf").is_file()
    assert nats["command"] == ["-c", conf_target]
    assert "http://127.0.0.1:8222/healthz" in " ".join(nats["healthcheck"]["test"])
    assert nats["image"] == "${RORY_NATS_IMAGE:-rory:nats}"  # ./build.sh makes it (Dockerfile target nats)
    assert nats["build"]["target"] == "nats"
    assert mounts["nats-data"] == "/data"  # store_dir in config/nats-server.conf
    assert 'store_dir: "/data"' in (REPO / "config" / "nats-server.conf").read_text()


def test_published_ports_bind_to_loopback_by_default(merged, env_dev):
    for name, service in merged["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${RORY_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    assert env_dev["RORY_BIND_ADDRESS"] == "127.0.0.1"


def test_mictlanx_override(merged, env_dev):
    services = merged["services"]
    for name, image in MICTLANX_SERVICES.items():
        assert interpolate(services[name]["image"], {}) == image
        assert interpolate(services[name]["image"], env_dev) == image
        assert services[name]["container_name"] == name
    router = services["mictlanx-router-0"]
    assert router["ports"] == ["${RORY_BIND_ADDRESS:-127.0.0.1}:${RORY_MICTLANX_ROUTER_PORT:-63666}:60666"]
    assert router["environment"]["MICTLANX_DAEMON_HOSTNAME"] == "mictlanx-rm-0"
    for name in WORKERS:
        assert services[name]["depends_on"]["mictlanx-router-0"] == {"condition": "service_started"}
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy"  # kept by the merge


def test_network_can_be_switched_to_external_mictlanx(merged):
    network = merged["networks"]["rory"]
    assert network == {"name": "${RORY_NETWORK:-rory}", "external": "${RORY_NETWORK_EXTERNAL:-false}"}
    for name, service in merged["services"].items():
        assert service["networks"] == ["rory"], name
    assert interpolate(network["name"], {"RORY_NETWORK": "mictlanx"}) == "mictlanx"


def test_env_files_cover_exactly_the_compose_variables(compose, override, env_dev):
    used = interpolation_vars("\n".join(_strings(compose) + _strings(override)))
    assert all(default is not None for default in used.values()), "every ${VAR} needs a default"
    compose_own = {"COMPOSE_PROJECT_NAME"}  # read by Compose itself, not interpolated
    assert set(env_dev) - compose_own == set(used)
    for name, value in env_dev.items():
        assert name in compose_own or value == used[name], f"{name}: .env.dev and compose disagree"
    assert not set(env_dev) & WORKER_VARS, ".env.dev holds compose variables, never worker settings"
    mictlanx = read_env_file(ENV_MICTLANX)[0]
    assert set(mictlanx) == set(env_dev) | {"COMPOSE_FILE"}
    assert mictlanx["COMPOSE_FILE"] == "compose.yaml:compose.mictlanx.yaml"  # read by ./deploy.sh
    assert {k for k in env_dev if mictlanx[k] != env_dev[k]} == {"RORY_STORAGE_BACKEND"}


def test_the_nats_object_store_backend_needs_only_the_compose_variable(merged, monkeypatch):
    """``RORY_STORAGE_BACKEND=nats`` in the env file: workers keep chunks in the compose NATS server."""
    compose_env = {**read_env_file(ENV_DEV)[0], "RORY_STORAGE_BACKEND": "nats"}
    for name in WORKERS:
        settings = _resolved_settings(merged["services"][name], compose_env, monkeypatch)
        assert settings.resolved_storage_backend is StorageBackend.NATS
        assert settings.nats_urls == ["nats://nats:4222"]  # the bus server holds the bucket too
