"""Regression drivers: plaintext logistic regression (LR) and its CKKS variant (PPLR)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

import numpy as np
import tenseal as ts

from core import pqc_dataowner
from core.algorithms import pplr
from core.crypto import ckks
from dataowner.drivers.base import Driver
from dataowner.drivers.options import TrainingOptions
from dataowner.job import Job, JobReport
from dataowner.progress import ProgressCallback
from schemas import keys
from schemas.operations import (
    LrPredictParams,
    LrPredictResult,
    LrTrainParams,
    Op,
    PplrPredictParams,
    PplrPredictResult,
    PplrTrainParams,
    PplrTrainResult,
    TrainResult,
)

__all__ = ["RegressionDriver", "lr_keys", "pplr_model_keys"]


def lr_keys(train_id: str) -> tuple[str, str, str, str]:
    """Where LR training leaves X, y and the model: prediction reads the same names."""
    return f"{train_id}x", f"{train_id}y", f"{train_id}weights", f"{train_id}bias"


def pplr_model_keys(train_id: str) -> tuple[str, str]:
    """Where PPLR's encrypted weights and bias live: training and prediction must agree."""
    return f"{train_id}encryptedweights", f"{train_id}encryptedbias"


class RegressionDriver(Driver):
    # ------------------------------------------------------------------ PPLR (CKKS)
    async def pplr_train(
        self, options: TrainingOptions, x: np.ndarray, y: np.ndarray, *, profile: str,
        refresh_threshold: float, layout: Literal["rows", "packed"] = "rows",
    ) -> JobReport:
        """One encrypted gradient step per call; between epochs the owner decrypts, cleans
        (|v| < ``refresh_threshold`` -> 0) and re-encrypts the weights (instead of bootstrapping)."""
        epochs = options.epochs
        features = np.asarray(x, dtype=np.float64)
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        if features.ndim != 2 or target.size != features.shape[0]:
            raise ValueError(f"X {features.shape} and y {target.shape} disagree")
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        n, d = features.shape
        tid = self.dataset_id(options.train_id)
        job = self.job(Op.PPLR_TRAIN.value, tid, n, epochs, options.progress)
        x_key, y_key = keys.encrypted(tid), keys.encrypted(f"{tid}y")
        w_key, b_key = pplr_model_keys(tid)
        # One command serves every epoch; ``layout`` is sent only where it is not the default, so a
        # rows-layout command stays as the original client sent it (without the field).
        command = PplrTrainParams(
            encrypted_matrix_train_id=x_key,
            encrypted_label_vector_train_id=y_key,
            encrypted_weights_id=w_key,
            encrypted_bias_id=b_key,
            learning_rate=options.learning_rate,
            n_features=d,
            n_samples=n,
            epochs=1,
            **({"layout": layout} if layout != "rows" else {}),
            **self.common(),
        )
        train = self._pplr_train_packed if layout == "packed" else self._pplr_train_rows
        weights, bias = await train(job, features, target, command, options, profile, refresh_threshold)
        job.report.iterations = epochs
        job.report.extra.update(train_id=tid, weights=weights, bias=bias, profile=profile)
        if layout == "packed":
            job.report.extra["layout"] = layout
        return job.finish()

    async def _pplr_train_rows(
        self, job: Job, features: np.ndarray, target: np.ndarray, command: PplrTrainParams,
        options: TrainingOptions, profile: str, refresh_threshold: float,
    ) -> tuple[np.ndarray, float]:
        """Rows layout: one ciphertext per training row; per epoch the owner uploads the encrypted
        model, the worker takes one gradient step on it, the owner decrypts and cleans the result."""
        x_key, y_key = command.encrypted_matrix_train_id, command.encrypted_label_vector_train_id
        w_key, b_key = command.encrypted_weights_id, command.encrypted_bias_id
        with job.owner():
            ctx = self.keys.ckks(profile)
            y_blobs = ckks.serialize(pqc_dataowner.encrypt_labels(ctx, target))
        await asyncio.gather(
            self.upload_ckks_rows(job, x_key, features, profile),
            self.put_ciphertexts(job, y_key, y_blobs, [features.shape[0]]),
        )

        async def put(weights: np.ndarray, bias: float) -> None:
            await self.put_model(job, ctx, w_key, b_key, weights, bias)

        async def update(_: PplrTrainResult, weights: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
            w_vec, b_vec = await asyncio.gather(
                self.get_vectors(job, w_key, profile), self.get_vectors(job, b_key, profile)
            )
            with job.owner():
                return pqc_dataowner.decrypt_model(ctx, w_vec[0], b_vec[0], threshold=refresh_threshold)

        return await self._pplr_epochs(job, command, options.epochs, put, update)

    async def _pplr_epochs(
        self,
        job: Job,
        command: PplrTrainParams,
        epochs: int,
        put: Callable[[np.ndarray, float], Awaitable[None]],
        update: Callable[[PplrTrainResult, np.ndarray, float], Awaitable[tuple[np.ndarray, float]]],
    ) -> tuple[np.ndarray, float]:
        """The epochs both PPLR layouts share: ``put`` the current model, one encrypted step on the
        worker (``command``, the same every epoch), then the owner's ``update`` from what it left."""
        job.prepared()
        weights, bias = np.zeros(command.n_features), 0.0
        for epoch in range(1, epochs + 1):
            with job.round():
                await put(weights, bias)
                job.emit("train", epoch)
                result = await job.call(command, PplrTrainResult)
                weights, bias = await update(result, weights, bias)
        return weights, bias

    async def _pplr_train_packed(
        self, job: Job, features: np.ndarray, target: np.ndarray, command: PplrTrainParams,
        options: TrainingOptions, profile: str, refresh_threshold: float,
    ) -> tuple[np.ndarray, float]:
        """Packed layout (``core/algorithms/pplr.py``): X and y column-packed once; per epoch the
        owner uploads fresh replicated w and b, the worker returns per-slot gradients, the owner sums
        them and steps in plaintext. No Galois keys; 4 levels (the ``pplr-*`` profiles)."""
        x_key, y_key = command.encrypted_matrix_train_id, command.encrypted_label_vector_train_id
        w_key, b_key = command.encrypted_weights_id, command.encrypted_bias_id
        n = features.shape[0]
        with job.owner():
            ctx = self.keys.ckks(profile)
            x_blobs, x_shape, y_blobs, size = pplr.encrypt_training_packed(ctx, features, target)
        await asyncio.gather(
            self.put_ciphertexts(job, x_key, x_blobs, x_shape),
            self.put_ciphertexts(job, y_key, y_blobs, [x_shape[0]]),
        )

        async def put(weights: np.ndarray, bias: float) -> None:
            await self.put_model_packed(job, ctx, w_key, b_key, weights, bias, size)

        async def update(
            result: PplrTrainResult, weights: np.ndarray, bias: float
        ) -> tuple[np.ndarray, float]:
            assert result.encrypted_gradients_id is not None
            gradients = await self.get_vectors(job, result.encrypted_gradients_id, profile)
            with job.owner():
                return pplr.update_from_packed(
                    ctx, gradients, weights, bias, options.learning_rate, n, refresh_threshold
                )

        return await self._pplr_epochs(job, command, options.epochs, put, update)

    async def put_model_packed(
        self, job: Job, ctx: ts.Context, w_key: str, b_key: str, weights: np.ndarray, bias: float, size: int
    ) -> None:
        with job.owner():
            w_blobs, b_blob = pplr.packed_model_blobs(ctx, weights, bias, size)
        await asyncio.gather(
            job.store.put_bytes_list(w_key, w_blobs, num_chunks=1, shape=[len(w_blobs)]),
            job.store.put_bytes_list(b_key, [b_blob], num_chunks=1, shape=[1]),
        )

    async def put_model(
        self, job: Job, ctx: ts.Context, w_key: str, b_key: str, weights: np.ndarray, bias: float
    ) -> None:
        with job.owner():
            w_vec, b_vec = pqc_dataowner.encrypt_model(ctx, weights, bias)
            w_blob, b_blob = w_vec.serialize(), b_vec.serialize()
        await asyncio.gather(
            job.store.put_bytes_list(w_key, [w_blob], num_chunks=1, shape=[1]),
            job.store.put_bytes_list(b_key, [b_blob], num_chunks=1, shape=[1]),
        )

    async def pplr_predict(
        self,
        x: np.ndarray,
        *,
        train_id: str,
        weights: np.ndarray,
        bias: float,
        test_id: str | None,
        profile: str,
        namespace: str | None,
        progress: ProgressCallback | None,
        layout: Literal["rows", "packed"] = "rows",
    ) -> JobReport:
        """Encrypted predictions sigma~(x.w + b); the owner decrypts and thresholds at 0.5."""
        features, xid, job = self.start(Op.PPLR_PREDICT, x, test_id, progress)
        with job.owner():
            ctx = self.keys.ckks(profile)
        w_key, b_key = pplr_model_keys(train_id)
        x_key = keys.encrypted(xid)
        model = np.asarray(weights, dtype=np.float64), float(bias)
        if layout == "packed":
            with job.owner():
                x_blobs, x_shape, _, size = pplr.encrypt_training_packed(ctx, features)
            await asyncio.gather(
                self.put_ciphertexts(job, x_key, x_blobs, x_shape),
                self.put_model_packed(job, ctx, w_key, b_key, *model, size),
            )
        else:
            await asyncio.gather(
                self.upload_ckks_rows(job, x_key, features, profile),
                self.put_model(job, ctx, w_key, b_key, *model),
            )
        params = PplrPredictParams(
            encrypted_matrix_test_id=x_key,
            encrypted_weights_id=w_key,
            encrypted_bias_id=b_key,
            n_features=features.shape[1],
            layout=layout,
            **self.common(namespace),
        )

        async def decrypt(result: PplrPredictResult) -> np.ndarray:
            vectors = await self.get_vectors(job, result.encrypted_predictions_id, profile)
            with job.owner():
                return pqc_dataowner.decrypt_predictions(ctx, vectors, features.shape[0])

        _, probabilities = await self.one_round(job, params, PplrPredictResult, decrypt)
        job.report.predictions = (probabilities >= 0.5).astype(np.int64)
        job.report.extra["probabilities"] = probabilities
        return job.finish()

    # ------------------------------------------------------------------ LR (plaintext)
    async def lr_train(self, options: TrainingOptions, x: np.ndarray, y: np.ndarray) -> JobReport:
        features, tid, job = self.start(Op.LR_TRAIN, x, options.train_id, options.progress)
        target = np.asarray(y, dtype=np.float64).reshape(-1)
        x_key, y_key, weights_id, bias_id = lr_keys(tid)
        await asyncio.gather(self.put_matrix(job, x_key, features), self.put_matrix(job, y_key, target))
        params = LrTrainParams(
            plaintext_matrix_train_id=x_key,
            plaintext_label_vector_train_id=y_key,
            weights_id=weights_id,
            bias_id=bias_id,
            epochs=options.epochs,
            learning_rate=options.learning_rate,
            **self.common(),
        )

        async def download_model(_: TrainResult) -> tuple[np.ndarray, np.ndarray]:
            # The result names nothing: the worker stored the model where the command told it to.
            return await asyncio.gather(job.store.get_ndarray(weights_id), job.store.get_ndarray(bias_id))

        _, (weights, bias) = await self.one_round(job, params, TrainResult, download_model)
        job.report.iterations = options.epochs
        job.report.extra.update(
            train_id=tid,
            weights_id=weights_id,
            bias_id=bias_id,
            weights=np.asarray(weights).reshape(-1),
            bias=float(np.asarray(bias).reshape(-1)[0]),
        )
        return job.finish()

    async def lr_predict(
        self, x: np.ndarray, *, train_id: str, test_id: str | None, progress: ProgressCallback | None
    ) -> JobReport:
        features, xid, job = self.start(Op.LR_PREDICT, x, test_id, progress)
        await self.put_matrix(job, xid, features)
        train_x, _, weights_id, bias_id = lr_keys(train_id)
        params = LrPredictParams(
            plaintext_matrix_test_id=xid,
            plaintext_matrix_train_id=train_x,
            weights_id=weights_id,
            bias_id=bias_id,
            **self.common(),
        )
        _, predictions = await self.one_round(
            job, params, LrPredictResult, lambda result: job.store.get_ndarray(result.predictions_id)
        )
        job.report.predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
        return job.finish()
