"""Facade methods that forward to a protocol driver: the signature is written once, on the facade.

Why: :class:`dataowner.client.DataOwnerClient` is the public face of every protocol (its methods carry
the defaults and the documentation users read), while the drivers in ``dataowner/drivers`` do the
work and take every option explicitly. Each facade method used to repeat its whole parameter list a
second time to pass it on; :func:`forward` binds the call to the facade method's own signature
(defaults applied) and passes the arguments on as they are bound, positional ones by position and
keyword-only ones by keyword, which is the drivers' calling convention.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["forward"]

P = ParamSpec("P")
R = TypeVar("R")
#: A facade method: ``self``, then its own parameters.
Method = Callable[Concatenate[Any, P], Awaitable[R]]


def forward(
    driver: str, method: str | None = None, *, lead: Callable[..., Any] | None = None
) -> Callable[[Method[P, R]], Method[P, R]]:
    """Make the decorated method (its body is only its docstring) call ``self.<driver>.<method>``.

    ``method`` defaults to the decorated method's name. ``lead``, when given, builds the driver's first
    argument from the facade parameters named like its own parameters, which the driver then does not
    receive (secure k-means: the facade's ``compact_udm``, ``profile``... make the driver's
    :class:`dataowner.drivers.secure_kmeans.Scheme`).
    """

    def decorate(stub: Method[P, R]) -> Method[P, R]:
        signature = inspect.signature(stub)
        target_name = method or stub.__name__
        lead_names = list(inspect.signature(lead).parameters) if lead is not None else []

        @functools.wraps(stub)
        async def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            options = dict(bound.kwargs)
            first = () if lead is None else (lead(**{name: options.pop(name) for name in lead_names}),)
            target = getattr(getattr(self, driver), target_name)
            return await target(*first, *bound.args[1:], **options)

        return call

    return decorate
