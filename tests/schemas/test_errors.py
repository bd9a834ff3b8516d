"""The error codes and types are the contract's (schemas/errors.py): the worker raises only those, and
docs/protocol.md lists every one."""

from __future__ import annotations

import importlib

import pytest

from schemas import docgen
from schemas import errors as contract
from worker import errors as worker_errors

# Modules that define their own RoryError subclasses (imported so __subclasses__ sees them).
WORKER_MODULES = ("worker.runtime.pool", "worker.runtime.jetstream", "worker.storage.base", "worker.keys")


def _all_subclasses(cls: type[contract.RoryError]) -> list[type[contract.RoryError]]:
    found, todo = [], [cls]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(current.__subclasses__())
    return found


def test_worker_errors_are_the_contract_classes() -> None:
    for name in worker_errors.__all__:
        if name != "classify":
            assert getattr(worker_errors, name) is getattr(contract, name), name


def test_every_error_the_worker_can_raise_is_listed() -> None:
    for module in WORKER_MODULES:
        importlib.import_module(module)
    listed = {(kind.code, kind.type, kind.retryable) for kind in contract.ERRORS}
    for cls in _all_subclasses(contract.RoryError):
        if not cls.__module__.startswith(("worker.", "schemas.")):
            continue  # a test's own subclass
        assert (cls.code, cls.type, cls.retryable) in listed, cls


@pytest.mark.parametrize("name", ["COMPUTE_CRASHED", "MAX_DELIVERIES"])
def test_the_errors_the_page_missed_are_listed(name: str) -> None:
    kind = contract.BY_TYPE[name]
    assert (kind.code, kind.retryable) == (500, False)
    assert f"| 500 | `{name}` | false |" in docgen.generate()


def test_pool_and_jetstream_errors_match_their_kinds() -> None:
    from worker.runtime.jetstream import MaxDeliveries
    from worker.runtime.pool import ComputeCrashed

    for cls, kind in ((ComputeCrashed, contract.COMPUTE_CRASHED), (MaxDeliveries, contract.MAX_DELIVERIES)):
        assert (cls.code, cls.type, cls.retryable) == (kind.code, kind.type, kind.retryable)


def test_kinds_are_unique_and_ordered() -> None:
    types = [kind.type for kind in contract.ERRORS]
    assert len(types) == len(set(types))
    assert list(contract.ERRORS) == sorted(contract.ERRORS, key=lambda k: (k.code, k.type))
    for kind in contract.ERRORS:
        assert kind.meaning and kind.type.isupper()


def test_docs_list_every_kind_once() -> None:
    text = docgen.generate()
    for kind in contract.ERRORS:
        assert text.count(f"| {kind.code} | `{kind.type}` |") == 1, kind.type


def test_subclass_takes_code_type_and_retry_hint_from_its_kind() -> None:
    class Example(contract.RoryError, kind=contract.BUSY):
        pass

    assert (Example.code, Example.type, Example.retryable) == (503, "BUSY", True)
    assert Example("x").message == "x"
