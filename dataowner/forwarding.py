"""Facade methods that forward to a protocol driver: the signature is written once, on the facade.

Why: :class:`dataowner.client.DataOwnerClient` is the public face of every protocol (its methods carry
the defaults and the documentation users read), while the drivers in ``dataowner/drivers`` do the
work. Each facade method used to repeat its whole parameter list a second time to pass it on;
:func:`forward` binds the call to the facade method's own signature (defaults applied) and passes the
arguments on as they are bound, positional ones by position and keyword-only ones by keyword, which is
the drivers' calling convention. Options that several drivers share travel grouped (the dataclasses
of :mod:`dataowner.drivers.options`), built here, so no driver re-declares them one by one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["forward"]

P = ParamSpec("P")
R = TypeVar("R")
#: A facade method: ``self``, then its own parameters.
Method = Callable[Concatenate[Any, P], Awaitable[R]]
#: Builds one leading argument of a driver method from facade options named like its parameters.
Builder = Callable[..., object]


def forward(
    driver: str, method: str | None = None, *, lead: Sequence[Builder] = ()
) -> Callable[[Method[P, R]], Method[P, R]]:
    """Make the decorated method (its body is only its docstring) call ``self.<driver>.<method>``.

    ``method`` defaults to the decorated method's name. ``lead``: builders of the driver's first
    arguments, in order; each is called with the facade's keyword-only parameters named like its own
    parameters, which the driver then does not receive. An option group of
    :mod:`dataowner.drivers.options` is such a builder (its fields are its parameters), and so is
    a lambda making secure k-means' :class:`dataowner.drivers.secure_kmeans.Scheme` from the
    facade's ``compact_udm``, ``profile``...
    """

    def decorate(stub: Method[P, R]) -> Method[P, R]:
        signature = inspect.signature(stub)
        target_name = method or stub.__name__
        taken: set[str] = set()
        claims = [_claim(stub.__qualname__, signature, builder, taken) for builder in lead]

        @functools.wraps(stub)
        async def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            options = dict(bound.kwargs)
            first = [
                builder(**{name: options.pop(name) for name in names})
                for builder, names in zip(lead, claims, strict=True)
            ]
            target = getattr(getattr(self, driver), target_name)
            return await target(*first, *bound.args[1:], **options)

        return call

    return decorate


def _claim(where: str, facade: inspect.Signature, builder: Builder, taken: set[str]) -> list[str]:
    """The facade options ``builder`` takes, checked once, at import.

    A builder parameter the facade lacks keeps its default; without one, fail now rather than at the
    first call. An option two builders name would reach only the first (the other keeping its
    default, silently), and a builder parameter named like a positional facade parameter would keep
    its default while the driver gets the value by position, so both fail too.
    """
    keyword = {name for name, p in facade.parameters.items() if p.kind is p.KEYWORD_ONLY}
    params = inspect.signature(builder).parameters
    missing = [name for name, p in params.items() if name not in keyword and p.default is p.empty]
    positional = [name for name in params if name in facade.parameters and name not in keyword]
    names = [name for name in params if name in keyword]
    twice = taken.intersection(names)
    if missing or twice or positional:
        if missing:
            problem = f"lacks {missing}"
        elif positional:
            problem = f"takes {positional} by position, not by keyword,"
        else:
            problem = f"passes {sorted(twice)} to two builders"
        raise TypeError(f"{where} {problem} for {builder!r}")
    taken.update(names)
    return names
