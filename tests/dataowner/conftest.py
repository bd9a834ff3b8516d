"""Markers of the data-owner tests (registered here so ``-m "not demo"`` works without warnings)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "demo: runs `rory-client demo` as a subprocess (~30 s); deselect with -m 'not demo'"
    )
