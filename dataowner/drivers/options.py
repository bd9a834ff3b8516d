"""The option groups several protocol drivers share, each declared once.

Why: the facade (:class:`dataowner.client.DataOwnerClient`) declares every option with its default
and documentation; :func:`dataowner.forwarding.forward` builds these groups from the facade's bound
arguments (by field name), so a driver method takes one typed group instead of repeating the list.
A field the facade lacks must have a default here (checked when the facade method is decorated).
"""

from __future__ import annotations

from dataclasses import dataclass

from dataowner.progress import ProgressCallback

__all__ = ["ClassificationOptions", "KMeansOptions", "TrainingOptions"]


@dataclass(frozen=True)
class KMeansOptions:
    """One k-means job (plain, secure or PQC): where its data lives and when its rounds stop.

    ``namespace`` defaults to None (the client's) because plain k-means keeps no job state between
    commands, so its facade has no such option.
    """

    dataset_id: str | None
    max_iterations: int
    tolerance: float
    progress: ProgressCallback | None
    namespace: str | None = None


@dataclass(frozen=True)
class ClassificationOptions:
    """One 1-NN job: the storage ids of the model and the records.

    ``namespace`` defaults to None (the client's): plaintext KNN keeps no job state, so its facade has
    no such option.
    """

    model_id: str | None
    records_id: str | None
    progress: ProgressCallback | None
    namespace: str | None = None


@dataclass(frozen=True)
class TrainingOptions:
    """One logistic-regression training job (plaintext or PPLR)."""

    train_id: str | None
    epochs: int
    learning_rate: float
    progress: ProgressCallback | None
