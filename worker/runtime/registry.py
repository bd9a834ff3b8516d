"""Operations and the registry the runtime dispatches on.

An :class:`Operation` is a name (the subject's ``<op>``), a pydantic model for its ``params``, and
an async handler ``(ctx, params) -> BaseModel | dict``. Handlers raise typed errors
(``worker/errors.py``); the runtime maps them to error Replies once.

A Rory operation is bound to its contract spec (``schemas.operations.OPERATIONS``) when it is
registered: its params model must be the spec's and its description is the spec's.

This module knows no handler: the handlers package registers its operations into a registry it is
given (``worker.handlers.register_all``) and builds the default one (``worker.handlers.default_registry``,
which it also installs here for :func:`default_registry` when it is imported).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from schemas.operations import SPECS, OperationSpec
from schemas.subjects import is_valid_op
from worker.errors import BadRequest

if TYPE_CHECKING:
    from worker.runtime.context import JobContext

Result = BaseModel | Mapping[str, Any]
Handler = Callable[["JobContext", Any], Awaitable[Result]]


@dataclass(frozen=True)
class Operation:
    """One operation the worker serves.

    ``metadata`` values must be strings: they are published as ADR-32 endpoint metadata.
    """

    name: str
    params: type[BaseModel]
    handler: Handler
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    spec: OperationSpec | None = None

    def __post_init__(self) -> None:
        if not is_valid_op(self.name):
            raise ValueError(f"invalid operation name {self.name!r}: dot-separated tokens of A-Z a-z 0-9 _ -")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise TypeError(f"{self.name}: params must be a pydantic model class")
        if not callable(self.handler):
            raise TypeError(f"{self.name}: handler must be an async callable")
        target = getattr(self.handler, "__call__", None)  # noqa: B004 - callable objects too
        if not (inspect.iscoroutinefunction(self.handler) or inspect.iscoroutinefunction(target)):
            raise TypeError(f"{self.name}: handler must be an async function (ctx, params)")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"{self.name}: metadata keys and values must be strings")
        if self.spec is not None and (self.spec.op.value != self.name or self.spec.params is not self.params):
            raise TypeError(
                f"{self.name}: params {self.params.__name__} is not the contract's "
                f"{self.spec.params.__name__} for {self.spec.op.value}"
            )

    def parse_params(self, raw: Mapping[str, Any]) -> BaseModel:
        """Validate ``params``; a failure is a 400 naming each field path and reason."""
        try:
            return self.params.model_validate(raw)
        except ValidationError as error:
            raise BadRequest(format_params_error(error)) from None


def bind_spec(operation: Operation) -> Operation:
    """Bind an operation named like one of the contract's to that spec (others are returned as they are).

    The params model must be the spec's (TypeError otherwise) and the description becomes the spec's.
    (The handlers check the command's legacy storage claims themselves: ``worker.handlers.common``
    ``with_claims_checked``.)
    """
    spec = SPECS.get(operation.name)
    if spec is None or operation.spec is not None:
        return operation
    # replace() runs __post_init__ again, which refuses a params model other than the spec's.
    return replace(operation, description=spec.description, spec=spec)


def format_params_error(error: ValidationError, limit: int = 5) -> str:
    """``params.k: Input should be greater than 0; params.x: Field required``."""
    parts = []
    items = error.errors(include_url=False)
    for item in items[:limit]:
        path = ".".join(str(part) for part in item["loc"])
        parts.append(f"params.{path}: {item['msg']}" if path else f"params: {item['msg']}")
    if len(items) > limit:
        parts.append(f"(+{len(items) - limit} more)")
    return "; ".join(parts)


class Registry:
    """The operations one worker serves, by name."""

    def __init__(self, operations: Iterable[Operation] = ()) -> None:
        self._ops: dict[str, Operation] = {}
        self._preload: list[str] = []
        for op in operations:
            self.register(op)

    def register(self, operation: Operation) -> Operation:
        """Add an operation; registering a name twice is an error (it would shadow silently)."""
        if operation.name in self._ops:
            raise ValueError(f"operation {operation.name!r} is already registered")
        operation = bind_spec(operation)
        self._ops[operation.name] = operation
        return operation

    def operation(
        self,
        name: str,
        params: type[BaseModel],
        *,
        description: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(Operation(name, params, handler, description, dict(metadata or {})))
            return handler

        return decorate

    def get(self, name: str) -> Operation | None:
        return self._ops.get(name)

    def names(self) -> list[str]:
        return sorted(self._ops)

    def preload(self, *modules: str) -> None:
        """Modules the compute processes import at start (e.g. ``tenseal``, ``core.crypto.ckks``)."""
        for module in modules:
            if module not in self._preload:
                self._preload.append(module)

    @property
    def preload_modules(self) -> list[str]:
        return list(self._preload)

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._ops[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._ops)


_default_factory: Callable[[], Registry] | None = None


def set_default_registry(factory: Callable[[], Registry]) -> None:
    """Install what :func:`default_registry` builds (``worker.handlers`` installs its own on import)."""
    global _default_factory
    _default_factory = factory


def default_registry() -> Registry:
    """The registry a service builds when it is given none: the installed factory's.

    Prefer building it explicitly (``worker.handlers.default_registry()``) and passing it on.
    """
    if _default_factory is None:
        raise RuntimeError(
            "no default registry installed: import worker.handlers (its default_registry) or pass a Registry"
        )
    return _default_factory()


__all__ = [
    "Handler",
    "Operation",
    "Registry",
    "Result",
    "bind_spec",
    "default_registry",
    "format_params_error",
    "set_default_registry",
]
