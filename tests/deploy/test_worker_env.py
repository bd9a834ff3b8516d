"""config/worker.env lists every worker variable with the model's default, and stays generated."""

from __future__ import annotations

import re
import subprocess
import sys

from scripts.gen_worker_env import MACHINE_DEPENDENT, UNSET_ON_PURPOSE, render
from tests.deploy.util import REPO, SEED_VARS, WORKER_VARS, read_env_file
from worker.settings import Settings

WORKER_ENV = REPO / "config" / "worker.env"


def _clean_env(monkeypatch) -> None:
    for var in WORKER_VARS:
        monkeypatch.delenv(var, raising=False)


def test_file_is_generated_from_the_model():
    assert WORKER_ENV.read_text() == render(), "run: python scripts/gen_worker_env.py > config/worker.env"
    check = subprocess.run(
        [sys.executable, "scripts/gen_worker_env.py", "--check", str(WORKER_ENV)], cwd=REPO, check=False
    )
    assert check.returncode == 0


def test_every_settings_field_and_every_seed_variable_is_listed():
    active, commented = read_env_file(WORKER_ENV)
    listed = set(active) | set(commented)
    assert listed == WORKER_VARS
    assert listed >= SEED_VARS
    assert set(commented) == {name.upper() for name in UNSET_ON_PURPOSE}
    assert not set(active) & set(commented)


def test_active_lines_hold_the_model_defaults(monkeypatch):
    _clean_env(monkeypatch)
    from_file = Settings(_env_file=str(WORKER_ENV))
    defaults = Settings(_env_file=None)
    assert from_file.model_dump() == defaults.model_dump()
    # Loading the file must not change derived behaviour either (e.g. the storage backend choice).
    assert from_file.resolved_storage_backend is defaults.resolved_storage_backend


def test_commented_lines_show_the_model_defaults(monkeypatch):
    _clean_env(monkeypatch)
    _, commented = read_env_file(WORKER_ENV)
    defaults = Settings(_env_file=None).model_dump()
    for var, value in commented.items():
        name = var.lower()
        if name in MACHINE_DEPENDENT:
            continue
        if name == "env_file_path":
            assert value == defaults[name]
            continue
        monkeypatch.setenv(var, value)
        assert Settings(_env_file=None).model_dump()[name] == defaults[name], var
        monkeypatch.delenv(var)


def test_every_variable_has_a_one_line_comment():
    lines = WORKER_ENV.read_text().splitlines()
    for i, line in enumerate(lines):
        name = line.lstrip("#").split("=", 1)[0]
        if "=" in line and name in WORKER_VARS:
            previous = lines[i - 1]
            assert previous.startswith("# ") and not re.match(r"#?\s*[A-Z][A-Z0-9_]*=", previous), name
