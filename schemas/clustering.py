"""Parameters and results of the clustering operations: k-means (plaintext, secure, double-blind, CKKS)
and nearest-neighbour clustering (plaintext, double-blind).

One module per operation family (as ``worker/handlers/clustering.py`` and ``worker/handlers/pqc.py``
serve them); the shared rules are ``schemas/base.py``, the contract that names each operation's
models is ``schemas/operations.py``.
"""

from __future__ import annotations

from pydantic import Field

from schemas import keys
from schemas.base import (
    ClusteringStatus,
    Compat,
    Count,
    Dtype,
    Key,
    LabelsResult,
    Params,
    Result,
    Shape,
    StepIndex,
    StorageClaim,
    claim,
    claims,
    legacy_field,
)

__all__ = [
    "DbsKMeansParams",
    "DbsNncParams",
    "KMeansParams",
    "KMeansResult",
    "NncParams",
    "NncResult",
    "PqcKMeansDistancesResult",
    "PqcKMeansParams",
    "PqcKMeansSumsResult",
    "SecureKMeansParams",
    "Step1Result",
    "Step2Result",
]


class KMeansParams(Params):
    plaintext_matrix_id: Key
    k: int = Field(3, ge=1, le=1000)
    max_iterations: int = Field(300, ge=1, le=100_000)
    tolerance: float = Field(1e-4, ge=0)


class KMeansResult(LabelsResult):
    iterations: int


class SecureKMeansParams(Params):
    """Shared by SKMeans, DBSKMeans and their CKKS variants (step 1 and step 2)."""

    step_index: StepIndex = 1
    clustering_status: ClusteringStatus = ClusteringStatus.START
    plaintext_matrix_id: Key
    encrypted_matrix_id: Key | None = Field(None, description="Default encrypted<plaintext_matrix_id>.")
    encrypted_matrix_shape: Shape | None = Field(None, description="Checked against storage when given.")
    encrypted_matrix_dtype: Dtype | None = None
    k: int = Field(3, ge=1, le=1000)
    m: int = Field(3, ge=3, le=64)
    iterations: Count = 0
    shift_matrix_id: Key | None = Field(None, description="Default <P>shiftmatrix (decrypted by the owner).")
    is_zero: bool | None = Field(
        None, description="Owner's convergence verdict; when absent step 2 applies MIN_ERROR to centroids."
    )
    # The original client's extra headers (reference section 4.3), which its worker ignored.
    request_id: str | None = legacy_field(Compat.IGNORED, "ignored", max_length=128)
    experiment_iteration: Count | None = legacy_field(Compat.IGNORED, "ignored")
    max_iterations: Count | None = legacy_field(Compat.IGNORED, "ignored (the data owner's iteration cap)")
    encrypted_udm_dtype: Dtype | None = legacy_field(Compat.IGNORED, "ignored (SKMeans has no encrypted UDM)")


class DbsKMeansParams(SecureKMeansParams):
    encrypted_udm_shape: Shape | None = None
    # A real field here (the dtype of the FDH-OPE UDM), not a legacy one: redeclared without the mark.
    encrypted_udm_dtype: Dtype | None = None
    shift_matrix_ope_id: Key | None = Field(
        None, description="Legacy name of the OPE-encrypted shift matrix."
    )
    start_time: float | None = legacy_field(
        Compat.IGNORED, "ignored (the V1 data owner's global start time)", ge=0
    )


class PqcKMeansParams(Params):
    """``clustering.pqc.kmeans``: Euclidean k-means over CKKS where the worker learns only the labels.

    One round = two worker calls, the data owner (who holds the secret key) in between:

    1. data owner stores the centroids ``C`` (k×a) encrypted and *replicated* over the block size:
       ``<P>encryptedcentroids``, a ciphertext list of shape ``[k, a]`` (item ``j*a + z`` = Enc(C[j, z]
       in every slot)); in round 1 usually the first k records.
    2. worker step 1 reads the column-packed dataset (``encrypted<P>``: ciphertext list of shape
       ``[blocks, a]``, item ``b*a + z`` = attribute z of records ``b*B .. b*B+B-1``, last block
       zero-padded) and the centroids, and stores ``<P>encrypteddistances`` (shape ``[blocks, k]``, item
       ``b*k + j`` = the squared distances of block b's records to centroid j, one per slot).
    3. data owner decrypts the distances, takes the argmin per record and stores the label vector
       ``<P>labels`` (int64, n): the only plaintext the worker ever reads.
    4. worker step 2 reads the dataset and the labels and stores ``<P>encryptedsums`` (shape ``[k, a]``,
       item ``j*a + z`` = attribute z of the records of cluster j, masked slot-wise and summed over the
       blocks; the data owner sums the slots).
    5. data owner decrypts the sums, divides by the counts it knows from its labels, tests convergence
       and, if not converged, stores the new centroids (1.) for the next round.

    No Galois keys are needed (no rotations); relinearisation keys are (step 1 squares ciphertexts).
    Keys under ``<P>`` (except the dataset) take the ``namespace`` prefix.
    """

    step_index: StepIndex = Field(1, description="1: encrypted distances; 2: encrypted per-cluster sums.")
    plaintext_matrix_id: Key = Field(..., description="Root id <P> of the derived keys (never read).")
    encrypted_matrix_id: Key | None = Field(
        None, description="Column-packed CKKS dataset, ciphertext list [blocks, a]; default encrypted<P>."
    )
    encrypted_matrix_shape: Shape | None = Field(
        None, description="[blocks, a], checked against storage when given (never used as a loop bound)."
    )
    encrypted_centroids_id: Key | None = Field(
        None, description="Step 1 input: k×a replicated centroid ciphertexts; default <P>encryptedcentroids."
    )
    labels_id: Key | None = Field(
        None, description="Step 2 input: the data owner's int label vector (n); default <P>labels."
    )
    k: int = Field(3, ge=1, le=1000, description="Clusters; checked against the stored centroids/labels.")
    iterations: Count = Field(0, description="Round counter kept by the data owner; echoed + 1.")


class PqcKMeansDistancesResult(Result):
    """Step 1 of ``clustering.pqc.kmeans``."""

    encrypted_distances_id: str
    distances_shape: list[int] = Field(..., description="[blocks, k] ciphertexts.")
    block_size: int = Field(..., description="Slots per ciphertext B; record i is block i // B, slot i % B.")
    n_iterations: int


class PqcKMeansSumsResult(Result):
    """Step 2 of ``clustering.pqc.kmeans``."""

    encrypted_sums_id: str
    sums_shape: list[int] = Field(..., description="[k, a] ciphertexts; sum the first B slots of each.")
    n_iterations: int


class Step1Result(LabelsResult):
    n_iterations: int
    encrypted_shift_matrix_id: str


class Step2Result(Result):
    clustering_status: ClusteringStatus
    udm_shape: list[int] | None = None
    encrypted_udm_shape: list[int] | None = None
    encrypted_udm_dtype: str | None = None


class NncParams(Params):
    plaintext_matrix_id: Key
    dm_id: Key | None = Field(None, description="Default <P>dm.")
    threshold: float = Field(..., description="-1 picks the smallest non-zero distance.")
    # Required but unused by the original worker (reference section 4.5).
    plaintext_matrix_shape: Shape | None = legacy_field(Compat.CHECKED, "checked against <P> when given")
    plaintext_matrix_dtype: Dtype | None = legacy_field(Compat.CHECKED, "checked against <P> when given")
    dm_shape: Shape | None = legacy_field(Compat.CHECKED, "checked against the distance matrix")
    dm_dtype: Dtype | None = legacy_field(Compat.CHECKED, "checked against the distance matrix")

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        dm_key = self.dm_id or keys.distance_matrix(self.plaintext_matrix_id)
        return claims(
            claim(self, self.plaintext_matrix_id, "plaintext_matrix_shape", "plaintext_matrix_dtype"),
            claim(self, dm_key, "dm_shape", "dm_dtype"),
        )


_CHECKED_DM = "checked against the encrypted distance matrix when given"


class DbsNncParams(Params):
    plaintext_matrix_id: Key
    encrypted_dm_id: Key | None = Field(None, description="Default <P>encrypteddm.")
    encrypted_threshold: float
    # Required but unused by the original worker (reference section 4.6): it downloaded the encrypted
    # matrix only to report its shape.
    encrypted_matrix_id: Key | None = legacy_field(
        Compat.CHECKED, "must exist when given (default encrypted<P>)"
    )
    encrypted_matrix_shape: Shape | None = legacy_field(
        Compat.CHECKED, "checked against the encrypted matrix when given (a prefix suffices)"
    )
    encrypted_matrix_dtype: Dtype | None = legacy_field(
        Compat.CHECKED, "checked against the encrypted matrix when given"
    )
    encrypted_dm_shape: Shape | None = legacy_field(Compat.CHECKED, _CHECKED_DM)
    encrypted_dm_dtype: Dtype | None = legacy_field(Compat.CHECKED, _CHECKED_DM)
    m: int | None = legacy_field(Compat.IGNORED, "ignored", ge=3, le=64)

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        matrix_key = self.encrypted_matrix_id or keys.encrypted(self.plaintext_matrix_id)
        dm_key = self.encrypted_dm_id or keys.encrypted_distance_matrix(self.plaintext_matrix_id)
        return claims(
            claim(
                self, matrix_key, "encrypted_matrix_shape", "encrypted_matrix_dtype", "encrypted_matrix_id",
                allow_prefix=True,
            ),
            claim(self, dm_key, "encrypted_dm_shape", "encrypted_dm_dtype"),
        )


class NncResult(LabelsResult):
    threshold: float | None = Field(None, description="The threshold used (resolves -1); plaintext NNC only.")

