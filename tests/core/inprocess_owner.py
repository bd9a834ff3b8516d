"""Whole secure k-means jobs in this process: the data-owner driver over the in-process worker port.

The round loop exists once, in dataowner/drivers/secure_kmeans.py. Tests that need a whole job
(labels, every decrypted shift, the final centroids, the per-round accounting) run that driver
against the worker's own dispatcher and handlers (dataowner/inprocess_port.py) on a local store in
a temporary directory, with the keys the test chooses (a seeded Liu key, a given CKKS context) and
an ``rng`` that seeds the FDH-OPE key and every owner-side encryption.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from numpy.typing import ArrayLike

from core.crypto import fdhope, liu
from dataowner.drivers.base import DriverConfig
from dataowner.drivers.options import KMeansOptions
from dataowner.drivers.secure_kmeans import Scheme, SecureKMeansDriver
from dataowner.inprocess_port import InProcessPort
from dataowner.job import JobReport
from dataowner.keys import OwnerKeys
from schemas.operations import Op
from worker.storage import LocalStore

__all__ = ["InProcessOwner", "SecureKMeansRun", "scheme_for"]


@dataclass(frozen=True)
class SecureKMeansRun:
    """What a whole in-process secure k-means job gave the owner."""

    report: JobReport
    labels: np.ndarray
    n_iter: int
    converged: bool
    centroids: np.ndarray  # final plaintext centroids (k x a)
    shifts: list[np.ndarray]  # the decrypted shift of every round
    fdhope_key: fdhope.FdhopeKey | None  # the UDM's key of a double-blind job


def scheme_for(
    op: Op,
    *,
    compact: bool = True,
    profile: str = "default-128",
    sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
    refresh_udm: bool = False,
) -> Scheme:
    """The driver's scheme of one of the four secure k-means operations."""
    ckks_profile = profile if op in (Op.PQC_SKMEANS, Op.PQC_DBSKMEANS) else None
    blind = sensitivity if op in (Op.DBSKMEANS, Op.PQC_DBSKMEANS) else None
    return Scheme(op, compact, ckks_profile, blind, refresh_udm and blind is not None)


class InProcessOwner:
    """A data owner with its own key directory under ``directory`` and an in-process worker.

    ``liu_key`` / ``ctx`` replace the generated Liu key / the ``profile`` CKKS context (the worker
    gets the context's public part). Every job runs on a fresh local store, removed afterwards.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        liu_key: liu.LiuKey | None = None,
        ctx: ts.Context | None = None,
        profile: str = "default-128",
    ) -> None:
        self.directory = Path(directory if directory is not None else tempfile.mkdtemp(prefix="rory-owner-"))
        self.keys = OwnerKeys.generate(self.directory / "owner-keys", profiles=())
        if liu_key is not None:
            self.keys.import_liu(liu_key)
        self.keys_path: Path | None = None
        if ctx is not None:
            self.keys.import_ckks(ctx, profile)
            self.keys_path = self.directory / "worker-keys"
            self.keys.export_public(self.keys_path, profile)
        self.profile = profile
        self._jobs = 0

    def run(self, op: Op, data: ArrayLike, k: int, **options: Any) -> SecureKMeansRun:
        """One whole job of ``op`` (SKMeans, DBSKMeans or their CKKS variants) through the driver:
        :meth:`arun` (which holds the options and their defaults) for tests without an event loop."""
        return asyncio.run(self.arun(op, data, k, **options))

    async def arun(
        self,
        op: Op,
        data: ArrayLike,
        k: int,
        *,
        max_iterations: int = 10,
        tolerance: float = 1e-6,
        compact: bool = True,
        sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
        refresh_udm: bool = False,
        rng: np.random.Generator | None = None,
    ) -> SecureKMeansRun:
        """One whole job from a running event loop (async tests; :meth:`run` from synchronous ones)."""
        scheme = scheme_for(
            op, compact=compact, profile=self.profile, sensitivity=sensitivity, refresh_udm=refresh_udm
        )
        self._jobs += 1
        root = self.directory / f"css-{self._jobs}"
        try:
            x = np.asarray(data, dtype=np.float64)
            report = await self._job(scheme, x, k, max_iterations, tolerance, root, rng)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        assert report.labels is not None and report.converged is not None
        fkey = self.keys.fdhope(f"{report.dataset_id}-udm") if scheme.double_blind else None
        return SecureKMeansRun(
            report=report,
            labels=report.labels,
            n_iter=report.iterations,
            converged=report.converged,
            centroids=report.extra["centroids"],
            shifts=report.extra["shift_matrices"],
            fdhope_key=fkey,
        )

    async def _job(
        self,
        scheme: Scheme,
        data: np.ndarray,
        k: int,
        max_iterations: int,
        tolerance: float,
        root: Path,
        rng: np.random.Generator | None,
    ) -> JobReport:
        store = LocalStore(root)
        port = InProcessPort(store, keys_path=self.keys_path)
        try:
            driver = SecureKMeansDriver(port, store, self.keys, DriverConfig())
            options = KMeansOptions(None, max_iterations, tolerance, progress=None)
            return await driver.run(scheme, options, data, k, upload=True, rng=rng)
        finally:
            await port.close()
            await store.aclose()
