"""A hostile ciphertext fails one part of a split PQC command: all its parts stop (``pqc._together``).

With ``asyncio.gather`` a failed part answered the error at once while its siblings kept computing in
their slots: the command's capacity was released and health said ready, but the slots were still
busy with abandoned work. Now the first failure cancels the siblings, whose slots are killed and
restarted before the reply goes out.

The command: ``classification.pqc.sknn.predict`` (rows layout) on two pool slots, where the first
record is a corrupt ciphertext. The first part fails while deserializing it; the second part has
thousands of ciphertext operations ahead of it, so it is certainly still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from core.crypto import ckks
from core.pqc_dataowner import encrypt_dataset
from schemas import keys
from tests.worker.handlers.pqc_support import PqcWorker, owner_context, start_pqc_worker, stop_pqc_worker
from worker.handlers import pqc

OP = "classification.pqc.sknn.predict"
N_RECORDS, N_MODEL, A = 8, 48, 3


@pytest.fixture(scope="module")
async def worker(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PqcWorker]:
    w = await start_pqc_worker(
        nats_url, tmp_path_factory.mktemp("pqcfanout"), keys_ctx=owner_context(), capacity=2
    )
    await w.service.pool.wait_ready(timeout=120)
    yield w
    await stop_pqc_worker(w)


async def until(predicate: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _upload(worker: PqcWorker, mid: str, rid: str, *, corrupt: bool) -> None:
    rng = np.random.default_rng(7)
    model, records = rng.normal(size=(N_MODEL, A)), rng.normal(size=(N_RECORDS, A))
    owner = owner_context()
    await worker.store.put_ndarray(keys.labels(mid), np.arange(N_MODEL).reshape(1, -1))
    await worker.put_ciphertexts(keys.encrypted(mid), encrypt_dataset(owner, model), [N_MODEL, A])
    items = ckks.serialize(encrypt_dataset(owner, records))
    if corrupt:  # one chunk-sized piece of garbage where the first record's ciphertext should be
        items[0] = b"\x00not a ciphertext" * 64
    await worker.store.put_bytes_list(keys.encrypted(rid), items, num_chunks=4, shape=[N_RECORDS, A])


async def test_a_failed_part_cancels_its_siblings_and_frees_their_slots(worker: PqcWorker) -> None:
    assert pqc.spans(N_RECORDS, N_MODEL, 2) == [(0, 4), (4, 8)]  # two parts, one per slot
    await _upload(worker, "fm", "fr", corrupt=True)
    pool, service = worker.service.pool, worker.service
    kills = pool.kills

    err = await worker.error(OP, {"model_id": "fm", "records_test_id": "fr", "layout": "rows"})

    assert (err["code"], err["type"]) == (422, "CORRUPT_OBJECT"), err
    # The reply went out after the healthy part was cancelled: its slot was killed, not left running.
    assert pool.busy == 0, "a slot is still busy with a part of the failed command"
    assert pool.kills == kills + 1, "the sibling part was not cancelled (it ran to its end)"
    await until(lambda: service.inflight == 0, 10, "the command's capacity to be released")
    assert (await service.health_body())["inflight"] == 0
    assert not await worker.store.exists(keys.distances("fr"))

    # Both slots work again (the killed one was restarted): the same command on good data succeeds.
    await _upload(worker, "gm", "gr", corrupt=False)
    result = await worker.ok(OP, {"model_id": "gm", "records_test_id": "gr", "layout": "rows"})
    assert result["distances_shape"] == [N_RECORDS, N_MODEL]
    assert pool.busy == 0 and pool.healthy()


async def test_together_raises_the_first_error_itself_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("first")

    with pytest.raises(ValueError, match="first"):
        await pqc._together(slow(), fail(), slow())
    assert cancelled.is_set()

    async def value(x: int) -> int:
        await asyncio.sleep(0)
        return x

    assert await pqc._together(value(1), value(2), value(3)) == [1, 2, 3]
    assert await pqc._together() == []
