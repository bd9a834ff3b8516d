"""Progress display (TTY vs pipe) and the agreement measures used by the demo."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dataowner.metrics import accuracy, adjusted_rand_index, contingency
from dataowner.progress import ProgressDisplay, ProgressEvent, format_event


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _event(phase: str = "step1", it: int = 2, shift: float | None = 0.5) -> ProgressEvent:
    return ProgressEvent(
        op="clustering.skmeans",
        job_id="j1",
        phase=phase,
        iteration=it,
        max_iterations=10,
        shift=shift,
        elapsed=1.25,
    )


def test_format_event():
    text = format_event(_event())
    assert text.startswith("clustering.skmeans  round 2/10  step1  max|S|=0.5  1.2s")
    assert "max|S|" not in format_event(_event(shift=None))


def test_display_is_silent_on_a_pipe():
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    assert not display.enabled
    display(_event())
    display.close()
    assert stream.getvalue() == ""


def test_display_forced_on_a_pipe_prints_plain_lines():
    stream = io.StringIO()
    display = ProgressDisplay(stream, force=True, min_interval=0)
    display(_event())
    display(_event("done"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()


def test_display_rewrites_one_line_on_a_tty():
    stream = FakeTty()
    with ProgressDisplay(stream, min_interval=0) as display:
        assert display.enabled
        display(_event(it=1))
        display(_event(it=2))
    out = stream.getvalue()
    assert out.count("\r") == 2 and out.endswith("\n") and out.count("\n") == 1


def test_display_throttles_but_always_shows_the_end():
    stream = io.StringIO()
    display = ProgressDisplay(stream, force=True, min_interval=60)
    display(_event(it=1))
    display(_event(it=2))  # throttled
    display(_event("done", it=3))
    assert len(stream.getvalue().splitlines()) == 2


def test_ari_matches_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 0], [0, 0, 0]) == 1.0
    # value from scikit-learn's documentation example
    assert adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(0.5714285714)


def test_ari_agrees_with_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 60))
        a, b = rng.integers(0, 4, n), rng.integers(0, 5, n)
        assert adjusted_rand_index(a, b) == pytest.approx(sk.adjusted_rand_score(a, b), abs=1e-12)


def test_accuracy_and_contingency():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    np.testing.assert_array_equal(contingency([0, 0, 1], [5, 6, 6]), [[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1], [1, 2])
