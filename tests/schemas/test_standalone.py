"""``schemas`` stands alone: a Manager installs it with pydantic and msgpack only.

Importing the package and every submodule in a fresh interpreter must load nothing from the worker,
the core, the data owner, nor nats, TenSEAL or numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import schemas

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("worker", "core", "dataowner", "nats", "tenseal", "numpy")

_PROBE = """
import importlib, json, pkgutil, sys
sys.path.insert(0, {root!r})
import schemas
names = sorted(m.name for m in pkgutil.iter_modules(schemas.__path__))
for name in names:
    importlib.import_module("schemas." + name)
print(json.dumps({{"submodules": names, "loaded": sorted(sys.modules)}}))
"""


def _probe() -> dict[str, list[str]]:
    done = subprocess.run(
        # -I: a fresh interpreter that ignores PYTHON* variables and the user site (nothing preloaded).
        [sys.executable, "-I", "-c", _PROBE.format(root=str(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_schemas_loads_no_worker_core_nats_tenseal_or_numpy() -> None:
    result = _probe()
    # The probe really imported every submodule (a module added later is covered too).
    assert {"codec", "docgen", "envelopes", "errors", "keys", "operations", "subjects"} <= set(
        result["submodules"]
    )
    loaded = {name.split(".")[0] for name in result["loaded"]}
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
    assert {"schemas", "pydantic", "msgpack"} <= loaded


def test_the_probe_reports_what_was_loaded() -> None:
    """The probe itself works: a module that is loaded shows up (guards against an empty answer)."""
    assert "schemas.errors" in _probe()["loaded"]


def test_no_schemas_source_imports_the_worker() -> None:
    for path in Path(schemas.__file__).parent.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in FORBIDDEN, f"{path.name}: {stripped}"
