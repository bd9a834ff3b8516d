"""The facade's forwarding (dataowner/forwarding.py): every option a user passes reaches the driver,
grouped where the driver takes a group, and a facade/builder mismatch fails when the class is defined
instead of silently running with a default."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dataowner.forwarding import forward


@dataclass(frozen=True)
class Window:
    start: int
    size: int
    label: str | None = None


class Driver:
    async def run(self, window: Window, data: str, *, scale: float) -> tuple[Window, str, float]:
        return window, data, scale


class Facade:
    def __init__(self) -> None:
        self._driver = Driver()

    @forward("_driver", "run", lead=[Window])
    async def run(self, data: str, *, start: int = 0, size: int = 10, label: str | None = None,
                  scale: float = 1.0) -> tuple[Window, str, float]:
        """Run."""
        raise AssertionError("the body never runs")


async def test_options_reach_their_group_and_the_rest_reach_the_driver() -> None:
    window, data, scale = await Facade().run("rows", size=3, label="a", scale=2.0)
    assert window == Window(start=0, size=3, label="a")
    assert (data, scale) == ("rows", 2.0)


def test_a_group_field_named_like_a_positional_facade_parameter_is_refused() -> None:
    with pytest.raises(TypeError, match="by position"):

        class Positional:
            @forward("_driver", "run", lead=[Window])
            async def run(self, label: str, *, start: int = 0, size: int = 1) -> None:
                """``label`` is positional: Window would keep its default None."""


def test_a_group_field_without_default_that_the_facade_lacks_is_refused() -> None:
    with pytest.raises(TypeError, match="lacks"):

        class Lacking:
            @forward("_driver", "run", lead=[Window])
            async def run(self, data: str, *, start: int = 0) -> None:
                """No ``size``."""


def test_an_option_two_groups_take_is_refused() -> None:
    with pytest.raises(TypeError, match="two builders"):

        class Twice:
            @forward("_driver", "run", lead=[Window, Window])
            async def run(self, data: str, *, start: int = 0, size: int = 1) -> None:
                """Both groups want ``start`` and ``size``."""
