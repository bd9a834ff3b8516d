"""Backends whose writes all go through a :class:`~worker.storage.codec.BallPlan`.

Splitting an array or a byte list into chunks, tagging and checksumming them is the same for every
backend (``codec.py``); only storing a finished plan differs. So the three ``put_*`` methods live
here once, and a backend implements ``_put(plan)``.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from worker.storage.base import BallInfo, ObjectStore
from worker.storage.codec import BallPlan, off_loop, plan_blob, plan_bytes_list, plan_ndarray, weight_of


class PlannedStore(ObjectStore):
    #: Pieces a single-blob ndarray is cut into (None: one piece); MictlanX cuts by its chunk size.
    blob_piece_size: int | None = None

    @abstractmethod
    async def _put(self, plan: BallPlan) -> BallInfo:
        """Store every chunk of ``plan`` so that readers see the old ball or the new one."""

    async def put_ndarray(
        self, ball_id: str, array: np.ndarray, *, num_chunks: int = 1, tags: Mapping[str, str] | None = None
    ) -> BallInfo:
        plan = await off_loop(weight_of(array), plan_ndarray, ball_id, array, num_chunks, tags)
        return await self._put(plan)

    async def put_blob(
        self, ball_id: str, array: np.ndarray, *, tags: Mapping[str, str] | None = None
    ) -> BallInfo:
        planner = functools.partial(plan_blob, piece_size=self.blob_piece_size)
        return await self._put(await off_loop(weight_of(array), planner, ball_id, array, tags))

    async def put_bytes_list(
        self,
        ball_id: str,
        items: Sequence[bytes],
        *,
        num_chunks: int = 1,
        shape: Sequence[int] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> BallInfo:
        plan = await off_loop(weight_of(items), plan_bytes_list, ball_id, items, num_chunks, shape, tags)
        return await self._put(plan)


__all__ = ["PlannedStore"]
