"""Envelope models (contract section 3) and the fast-path command validator."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.envelopes import (
    Announcement,
    Command,
    Health,
    Heartbeat,
    Reply,
    parse_command,
)
from worker.errors import BadRequest, UnsupportedVersion


def _command(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": "c-1", "op": "clustering.kmeans", "ts": 1.5, "params": {"k": 3}, **fields}


def test_command_defaults_job_id_to_id() -> None:
    command = Command.model_validate(_command())
    assert command.job_id == "c-1"
    assert command.params == {"k": 3}
    assert command.deadline_s is None
    assert parse_command(_command()).job_id == "c-1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("v", True),
        ("v", 1.0),
        ("v", "1"),
        ("id", ""),
        ("id", "a" * 129),
        ("id", "has space"),
        ("id", "dot.ted"),
        ("id", "nl\n"),
        ("job_id", "x*"),
        ("job_id", 5),
        ("op", "a..b"),
        ("op", "a.>"),
        ("op", "o" * 129),
        ("ts", "now"),
        ("ts", True),
        ("ts", math.nan),
        ("ts", math.inf),
        ("params", [1, 2]),
        ("params", None),
        ("params", {1: "int key"}),
        ("deadline_s", 0),
        ("deadline_s", -1.0),
        ("deadline_s", "5"),
        ("deadline_s", math.inf),
    ],
)
def test_invalid_commands_rejected_by_model_and_fast_path(field: str, value: Any) -> None:
    data = _command(**{field: value})
    with pytest.raises(ValidationError):
        Command.model_validate(data)
    with pytest.raises(BadRequest) as caught:
        parse_command(data)
    assert field in caught.value.message


def test_missing_fields_and_version() -> None:
    for field in ("v", "id", "op", "ts"):
        data = _command()
        del data[field]
        with pytest.raises(BadRequest):
            parse_command(data)
    with pytest.raises(UnsupportedVersion):
        parse_command(_command(v=2))
    with pytest.raises(BadRequest):
        parse_command([1, 2])


def test_unknown_fields_are_ignored() -> None:
    data = _command(extra_field="x")
    assert Command.model_validate(data).id == parse_command(data).id == "c-1"


_token = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    _token,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_field_values = {
    "v": st.one_of(st.just(1), _values),
    "id": st.one_of(_token, _values),
    "job_id": st.one_of(_token, _values),
    "op": st.one_of(st.builds(lambda a, b: f"{a}.{b}", _token, _token), _values),
    "ts": st.one_of(st.floats(0, 2e9), st.integers(0, 10**10), _values),
    "params": st.one_of(st.dictionaries(st.text(max_size=4), st.integers(), max_size=3), _values),
    "deadline_s": st.one_of(st.floats(0.001, 100), _values),
}


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({}, optional=_field_values))
def test_fast_path_agrees_with_model(data: dict[str, Any]) -> None:
    try:
        expected = Command.model_validate(data)
    except ValidationError:
        expected = None
    try:
        got = parse_command(data)
    except BadRequest:
        got = None
    assert (expected is None) == (got is None), data
    if expected is not None and got is not None:
        assert got.model_dump() == expected.model_dump()


def _reply(**fields: Any) -> dict[str, Any]:
    base = {
        "v": 1,
        "id": "r-1",
        "in_reply_to": "c-1",
        "job_id": "c-1",
        "op": "x.y",
        "node_id": "n1",
        "ok": True,
        "result": {},
        "timings": {"queued": 0, "storage_get": 0, "compute": 0, "storage_put": 0, "total": 0.1},
    }
    base.update(fields)
    return base


def test_reply_ok_rules() -> None:
    Reply.model_validate(_reply())
    error = {"code": 400, "type": "BAD_REQUEST", "message": "m", "retryable": False}
    Reply.model_validate(_reply(ok=False, result=None, error=error, in_reply_to="", job_id=""))
    with pytest.raises(ValidationError):
        Reply.model_validate(_reply(ok=False, result=None))
    with pytest.raises(ValidationError):
        Reply.model_validate(_reply(ok=True, error=error))
    with pytest.raises(ValidationError):
        Reply.model_validate(_reply(error={**error, "type": "lower"}, ok=False, result=None))


def test_health_heartbeat_announcement_models() -> None:
    health = Health.model_validate(
        {
            "node_id": "n1",
            "instance_id": "i",
            "status": "ready",
            "version": "0.1.0",
            "uptime_s": 1.0,
            "inflight": 0,
            "capacity": 2,
            "operations": ["a.b"],
            "storage": {"backend": "local", "reachable": True},
            "nats": {"connected_url": None, "rtt_ms": None},
        }
    )
    assert next(iter(health.model_dump())) == "component_type"
    with pytest.raises(ValidationError):
        Health.model_validate({**health.model_dump(), "status": "sleepy"})
    Heartbeat.model_validate(
        {
            "node_id": "n1",
            "instance_id": "i",
            "seq": 1,
            "ts": 1.0,
            "status": "busy",
            "inflight": 2,
            "capacity": 2,
            "version": "0.1.0",
            "operations": [],
            "load": {"cpu": 12.5, "rss_mb": 100.0},
        }
    )
    Announcement.model_validate(
        {
            "node_id": "n1",
            "instance_id": "i",
            "event": "stopped",
            "ts": 1.0,
            "version": "0.1.0",
            "operations": [],
            "capacity": 1,
        }
    )
