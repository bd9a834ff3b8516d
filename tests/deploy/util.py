"""Shared helpers for the deployment tests: repo paths, the Settings variable names, env-file parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
WORKER_VARS = frozenset(name.upper() for name in Settings.model_fields)

# Every variable the original worker's documentation lists in its "Configuration & Environment"
# section; each must still be configurable and documented in config/worker.env.
SEED_VARS = frozenset(
    {
        "NODE_ID",
        "NODE_PORT",
        "NODE_INDEX",
        "NODE_IP_ADDR",
        "RORY_MANAGER_IP_ADDR",
        "RORY_MANAGER_PORT",
        "SERVER_IP_ADDR",
        "DISTANCE",
        "MIN_ERROR",
        "CKKS_ROUND",
        "CKKS_DECIMALS",
        "CTX_FILENAME",
        "PUBKEY_FILENAME",
        "SECRET_KEY_FILENAME",
        "RELINKEY_FILENAME",
        "MICTLANX_ROUTERS",
        "MICTLANX_BUCKET_ID",
        "MICTLANX_CHUNK_SIZE",
        "MICTLANX_TIMEOUT",
        "MICTLANX_MAX_WORKERS",
        "MICTLANX_MAX_RETRIES",
        "SOURCE_PATH",
        "SINK_PATH",
        "LOG_PATH",
        "KEYS_PATH",
        "ENV_FILE_PATH",
    }
)

_ASSIGN = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(set, commented-out) assignments of a KEY=VALUE file; other comment lines are ignored."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _ASSIGN.match(line.strip())
        if match:
            (commented if match.group(1) else active)[match.group(2)] = match.group(3)
    return active, commented


def interpolation_vars(text: str) -> dict[str, str | None]:
    """``${VAR:-default}`` references in a compose file: name -> default (None when there is none)."""
    found: dict[str, str | None] = {}
    for name, op, default in _INTERPOLATION.findall(text):
        found[name] = default if op else None
    return found


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Resolve ``${VAR}``, ``${VAR-d}`` and ``${VAR:-d}`` the way docker compose does."""

    def replace(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if name in env and (op != ":-" or env[name] != ""):
            return env[name]
        if op:
            return default
        raise KeyError(f"${{{name}}} has no value and no default")

    return _INTERPOLATION.sub(replace, value)


def runtime_available() -> tuple[bool, str]:
    """Whether ``rory-worker run`` and ``rory-worker health`` exist yet (the runtime is another issue)."""
    try:
        from worker.cli import parse_args
        from worker.runtime.service import WorkerService  # noqa: F401 - presence check
    except ImportError as error:
        return False, f"worker runtime not importable yet ({error})"
    try:
        if parse_args(["health", "n"]).command != "health" or parse_args(["run"]).command != "run":
            return False, "rory-worker lacks the run/health commands"
    except SystemExit:
        return False, "rory-worker lacks the run/health commands"
    return True, ""
