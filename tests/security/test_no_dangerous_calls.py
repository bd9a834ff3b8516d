"""The project's own code never evaluates or unpickles data (docs/original-rory.md: the
original ``eval``'d shape headers and tags and ``pickle.loads``'d ciphertext chunks).

An AST scan (not a grep: comments and docstrings that *mention* pickle are fine) of ``worker/``,
``schemas/``, ``core/`` and ``dataowner/`` for: ``eval``/``exec``/``compile``/``__import__``; any
``pickle``/``cPickle``/``dill``/``cloudpickle``/``marshal``/``shelve``/``jsonpickle`` import or call;
``yaml.load``/``yaml.unsafe_load``/``yaml.full_load`` (``yaml.safe_load`` would be fine);
``numpy.load(..., allow_pickle=True)``; ``subprocess`` with ``shell=True``; ``os.system``/``os.popen``.
The compute pool's own pickling (stdlib multiprocessing, our own processes only) is not a call site here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "schemas", "core", "dataowner")
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
BANNED_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}


def _sources() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20, "the scan found suspiciously few files"
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _banned_call(name: str) -> bool:
    head, last = name.split(".")[0], name.split(".")[-1]
    return (
        name in BANNED_BUILTINS
        or head in ("builtins", *BANNED_MODULES)
        or (head == "yaml" and last in BANNED_YAML)
        or name in ("os.system", "os.popen")
    )


def _findings(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if _banned_call(name):
                found.append(f"{name}()")
            elif name.endswith(".load") and name.split(".")[0] in ("np", "numpy"):
                flag = keywords.get("allow_pickle")
                if flag is None or not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{name}() without allow_pickle=False")
            elif "shell" in keywords and not (
                isinstance(keywords["shell"], ast.Constant) and keywords["shell"].value is False
            ):
                found.append(f"{name}(shell=...)")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_eval_exec_or_unpickling(path: Path) -> None:
    findings = _findings(ast.parse(path.read_text(), filename=str(path)))
    assert findings == [], f"{path.relative_to(ROOT)}: {findings}"


@pytest.mark.parametrize(
    "snippet",
    [
        "eval(x)",
        "exec(code)",
        "__import__('os')",
        "import pickle",
        "from pickle import loads",
        "import cloudpickle as cp",
        "pickle.loads(b)",
        "yaml.load(text)",
        "yaml.unsafe_load(text)",
        "np.load(f)",
        "numpy.load(f, allow_pickle=True)",
        "subprocess.run(cmd, shell=True)",
        "os.system('ls')",
    ],
)
def test_the_scanner_catches(snippet: str) -> None:
    assert _findings(ast.parse(snippet)), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "yaml.safe_load(text)",
        "np.load(f, allow_pickle=False)",
        "json.loads(b)",
        "msgpack.unpackb(b)",
        "ast.parse(s)",
    ],
)
def test_the_scanner_allows(snippet: str) -> None:
    assert _findings(ast.parse(snippet)) == []
