"""A worker with ``STORAGE_BACKEND=nats`` and no store handed to it: it opens the bucket over its own
connection, logged in with the worker's settings, and the data owner reads the results there."""

from __future__ import annotations

import uuid
from pathlib import Path

from nats.aio.client import Client

from core.algorithms.kmeans import KMeans
from schemas.operations import Op
from tests.conftest import settings_for
from tests.worker.handlers.conftest import handler_registry
from tests.worker.handlers.owner import Rig, blobs
from tests.worker.storage.conftest import nats_store
from worker.runtime.service import WorkerService


async def test_a_worker_opens_the_nats_bucket_from_its_settings(
    nats_url: str, nc: Client, tmp_path: Path
) -> None:
    bucket = f"w-{uuid.uuid4().hex[:12]}"
    owner_store = nats_store(nc, bucket)
    data = blobs(300, 2, 3, seed=2)
    await owner_store.put_ndarray("natsds", data, num_chunks=2)
    settings = settings_for(  # a small message limit: the labels go to storage, not into the reply
        nats_url, tmp_path, storage_backend="nats", nats_object_bucket=bucket, max_message_bytes=1024
    )
    worker = WorkerService(settings, handler_registry())
    try:
        await worker.start()
        rig = Rig(nc=nc, settings=settings, store=owner_store)
        result = await rig.ok(Op.KMEANS, {"plaintext_matrix_id": "natsds", "k": 3})
        labels = await owner_store.get_ndarray(result["label_vector_id"])
        assert labels.reshape(-1).tolist() == KMeans(3).fit(data).labels_.tolist()
        assert worker.store.backend == "nats"
    finally:
        await worker.stop(grace=2.0)
        await owner_store.aclose()
        await nc.jetstream().delete_object_store(bucket)
