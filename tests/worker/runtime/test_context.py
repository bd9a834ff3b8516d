"""JobContext pieces: stage meters, the timed store proxy, per-worker resources, the registry."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, Field

from tests.ops import MemoryStore, NoParams, noop
from worker.errors import BadRequest
from worker.handlers import default_registry
from worker.runtime.context import Resources, StageMeter, TimedStore
from worker.runtime.registry import Operation, Registry


async def test_stage_meter_counts_overlapping_calls_once() -> None:
    meter = StageMeter()
    store = TimedStore(MemoryStore(delay=0.05), meter, StageMeter())
    await asyncio.gather(*(store.exists(f"k{i}") for i in range(5)))
    assert 0.05 <= meter.total < 0.25 * 5  # wall time of the overlap, not the sum of five calls


async def test_timed_store_routes_methods_to_stages() -> None:
    inner = MemoryStore()
    gets, puts = StageMeter(), StageMeter()
    store = TimedStore(inner, gets, puts)
    await store.put_ndarray("a", [1, 2])
    assert puts.total > 0 and gets.total == 0
    await store.get_ndarray("a")
    await store.info("a")
    assert gets.total > 0
    before = (gets.total, puts.total)
    assert await store.ping() is True  # untimed
    assert (gets.total, puts.total) == before
    assert store.inner is inner and store.backend == "memory"


async def test_resources_load_once_under_concurrency() -> None:
    resources = Resources()
    calls = []

    async def loader():
        calls.append(1)
        await asyncio.sleep(0.05)
        return "ctx"

    values = await asyncio.gather(*(resources.get_or_load("ckks", loader) for _ in range(5)))
    assert values == ["ctx"] * 5 and calls == [1]
    assert await resources.get_or_load("sync", lambda: 42) == 42
    assert resources["sync"] == 42

    async def failing():
        raise RuntimeError("no key")

    with pytest.raises(RuntimeError):
        await resources.get_or_load("bad", failing)
    assert "bad" not in resources


class Params(BaseModel):
    k: int = Field(3, ge=1)
    name: str


def test_operation_validation() -> None:
    async def handler(ctx, params):
        return {}

    def sync_handler(ctx, params):
        return {}

    Operation("a.b-c_d", Params, handler)
    for bad in (
        lambda: Operation("a..b", Params, handler),
        lambda: Operation("a b", Params, handler),
        lambda: Operation("a.b", dict, handler),  # type: ignore[arg-type]
        lambda: Operation("a.b", Params, sync_handler),
        lambda: Operation("a.b", Params, handler, metadata={"x": 1}),  # type: ignore[dict-item]
    ):
        with pytest.raises((TypeError, ValueError)):
            bad()


def test_params_errors_name_the_field() -> None:
    async def handler(ctx, params):
        return {}

    op = Operation("a.b", Params, handler)
    assert op.parse_params({"name": "x"}).k == 3
    with pytest.raises(BadRequest) as caught:
        op.parse_params({"k": 0})
    assert "params.k:" in caught.value.message and "params.name: Field required" in caught.value.message


def test_registry() -> None:
    registry = Registry()

    @registry.operation("z.last", NoParams, description="d")
    async def last(ctx, params):
        return {}

    registry.register(Operation("a.first", NoParams, noop))
    assert registry.names() == ["a.first", "z.last"] and "z.last" in registry and len(registry) == 2
    assert [op.name for op in registry] == ["a.first", "z.last"]
    assert registry.get("missing") is None
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Operation("a.first", NoParams, noop))
    registry.preload("numpy", "numpy")
    assert registry.preload_modules == ["numpy"]
    assert isinstance(default_registry(), Registry)
