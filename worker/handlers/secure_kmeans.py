"""Secure k-means rounds, written once: SKMeans / DBSKMeans (Liu) and their CKKS ("PQC") variants.

The four operations share the protocol and differ only in how the data is encrypted. A
:class:`Scheme` says what differs (how the encrypted dataset and the centroids are stored and checked,
which compute-pool function runs each step, how step 2 judges convergence without ``is_zero``); the
step logic below (key names, the resume rule, the write order, the results) exists only here.
``worker.handlers.clustering`` binds it to the Liu schemes, ``worker.handlers.pqc_skmeans`` to the
CKKS ones.

A round, as the data owner drives it:

* step 1 reads the encrypted dataset, the UDM and, after the first round, the previous centroids
  ``<P>centj`` (the original V1 worker read ``<P>centi`` here: docs/original-rory.md); it writes
  ``<P>centi`` (the centroids this round started from), ``<P>encryptedshiftmatrix`` and, last,
  ``<P>centj`` (the new centroids), so a step that fails half-way can simply be retried: until
  ``centj`` is replaced the inputs are unchanged, and if a delete-then-put backend lost ``centj`` in
  the failure, ``centi`` holds exactly the centroids the step started from and the retry resumes from
  it (:func:`previous_centroids_info`);
* step 2 reads the UDM and the owner's decrypted (double-blind: FDH-OPE re-encrypted) shift.
  ``is_zero`` true -> COMPLETED without touching storage; false -> update the UDM -> WORK_IN_PROGRESS;
  absent -> the scheme's worker-side rule (:meth:`Scheme.converged`). Step 2 overwrites one object,
  the cumulative shift (below): atomic on the local backend; on MictlanX
  (delete-then-put) a write that fails after all retries loses it, and the owner must upload the UDM
  again (it can: U = D - c; a lost cumulative shift is answered 404 until it does, never taken for
  zero). docs/reliability.md states the same for every operation.

Cumulative UDM (every scheme: Liu and CKKS, plaintext and FDH-OPE UDM). Every record's UDM row is the
uploaded one plus the same k x a sum of the shifts so far, U = U0[:, :k] + C (core/algorithms/udm.py).
So the worker never rewrites the UDM: ``<P>udm`` / ``<P>encryptedudm`` stays exactly as the owner
uploaded it, and the running sum C lives in ``<P>udmshift`` / ``<P>encryptedudmshift`` (k x a
float64, :func:`udm_shift_key`), tagged with the version of the UDM it applies to (its etag,
:data:`UDM_VERSION_TAG`, and where the backend knows it the upload's write time,
:data:`UDM_WRITTEN_TAG`). Step 1 at START writes C = 0; step 1 later reads C and scores U0 + C block
by block; step 2 writes C + S (k x a numbers instead of n x k x a). A C tagged with another UDM
version (the owner uploaded a new UDM, e.g. ``refresh_udm``) counts as zero: exactly the old
behaviour, where uploading a UDM replaced the state; so does a missing C unless the round's centroids
were computed on this UDM version (:func:`current_udm_shift`). The owner reads the current UDM as
``core.algorithms.udm.update_udm(U0, C)``. Labels equal the in-place update's up to floating-point
rounding order. What the worker and storage see does not change (docs/privacy.md, §2, §3, §6, §7).

Small jobs skip the compute pool: step 1 runs on the event loop when its inputs (encrypted data and
UDM) hold at most :data:`INLINE_COMPUTE_BYTES` (well under a millisecond of numpy; the pool hop alone
cost ~3.8 ms at n = 1,500, benchmarks/bench_e2e.py); bigger jobs still run in the pool so health and
heartbeats answer while they compute. Step 2's k x a addition always runs inline.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from core.algorithms.udm import accumulate_shift
from schemas import keys
from schemas.operations import ClusteringStatus, DbsKMeansParams, SecureKMeansParams, Step1Result, Step2Result
from worker.errors import BadRequest, Conflict, NotFound, ValidationFailed
from worker.handlers.common import (
    Write,
    check_dtype,
    check_numeric,
    plan_labels_off_loop,
    put_all,
    result_chunks,
    shape_of,
)
from worker.runtime.context import JobContext
from worker.storage.base import BallInfo

__all__ = [
    "INLINE_COMPUTE_BYTES",
    "UDM_VERSION_TAG",
    "UDM_WRITTEN_TAG",
    "Phase1",
    "Scheme",
    "Together",
    "check_declared_matrix",
    "check_declared_udm",
    "check_udm",
    "current_udm_dtype",
    "fetch_checked_udm",
    "gathered",
    "previous_centroids_info",
    "run",
    "shape_of",
    "step1",
    "step2",
    "udm_key",
    "udm_shift_key",
]

#: Step 1 computes on the event loop when its encrypted data and UDM hold at most this many bytes:
#: ~0.6 ms of numpy at n = 1,500, a = 8, k = 5 (benchmarks/bench_e2e.py), against ~3.8 ms for the
#: pool's transfer and scheduling. Larger inputs go to the pool so health keeps answering.
INLINE_COMPUTE_BYTES = 1 << 20
#: Tag on the cumulative shift ``<P>udmshift``: the etag of the UDM version it applies to.
UDM_VERSION_TAG = "rory_udm_version"
#: With it, the UDM upload's write time (``BallInfo.written``) where the backend has one: MictlanX and
#: NATS name a version by its content, so identical bytes uploaded again have the same etag.
UDM_WRITTEN_TAG = "rory_udm_written"

#: How a scheme awaits several storage calls at once; results in order, the first failure raised.
Together = Callable[..., Awaitable[list[Any]]]
#: What one scheme's step 1 produces per centroid set and shift: an ndarray (Liu) or ciphertexts (CKKS).
S = TypeVar("S")
#: The key material a scheme's step 1 needs (CKKS: the public keys; Liu: nothing).
M = TypeVar("M")


async def gathered(*calls: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` as a list: the default :data:`Together`."""
    return list(await asyncio.gather(*calls))


@dataclass(frozen=True)
class Phase1(Generic[S]):
    """The encrypted phase's output: labels, the centroids it started from, the new ones, the shift."""

    labels: np.ndarray
    centi: S
    centj: S
    shift: S


def udm_key(p: SecureKMeansParams, double_blind: bool) -> str:
    """``<P>encryptedudm`` (FDH-OPE, double-blind) or ``<P>udm`` (namespaced: ``schemas.keys``)."""
    root, ns = p.plaintext_matrix_id, p.namespace
    return keys.encrypted_udm(root, ns) if double_blind else keys.udm(root, ns)


def udm_shift_key(p: SecureKMeansParams, double_blind: bool) -> str:
    """``<P>udmshift`` or ``<P>encryptedudmshift``: the cumulative shift C of the module docstring."""
    shift = keys.encrypted_udm_shift if double_blind else keys.udm_shift
    return shift(p.plaintext_matrix_id, p.namespace)


async def _info_or_none(ctx: JobContext, key: str) -> BallInfo | None:
    try:
        return await ctx.store.info(key)
    except NotFound:
        return None


async def fetch_udm_shift(ctx: JobContext, key: str) -> tuple[np.ndarray, BallInfo] | None:
    """The stored cumulative shift and the info of the version read, or None when there is none.

    One storage call (``fetch_ndarray``) instead of ``info`` then ``get``: the object is k x a and
    the worker's own, so nothing large is downloaded before it is checked.
    """
    try:
        array, info = await ctx.store.fetch_ndarray(key)
    except NotFound:
        return None
    if info is None:  # a backend that cannot describe the version it read
        info = await ctx.store.info(key)
    return array, info


async def fetch_checked_udm(ctx: JobContext, key: str, checked: BallInfo) -> np.ndarray:
    """The UDM ``key`` as of the version ``checked`` described: 409 when it was re-uploaded between
    the check and the read, since U0 and a cumulative shift bound to the version checked would not
    belong together (no labels are computed from the mix)."""
    udm, read = await ctx.store.fetch_ndarray(key)
    if read is not None and checked.etag is not None and read.etag != checked.etag:
        raise Conflict(f"{key} was replaced while this step ran; send the step again")
    return udm


def current_udm_shift(
    found: tuple[np.ndarray, BallInfo] | None, udm: BallInfo, k: int, a: int, centroids: BallInfo | None
) -> np.ndarray | None:
    """The stored cumulative shift if it applies to this UDM version, else None (counts as zero).

    ``centroids``: the info of the centroids this round starts from; step 1 tags them with the UDM
    version it used. A missing shift counts as zero when the UDM was uploaded after them (the owner
    re-uploaded the current UDM) or they carry no version (an older worker updated the UDM in
    place); but when they were computed on this very UDM version the shift must exist, so it was
    lost (a delete-then-put write that failed, docs/reliability.md): 404, the owner uploads the
    current UDM again (U = D - c) or restarts. 422 when the shift applies but is not k x a numeric.
    A UDM whose backend names no version (etag None) cannot be told apart from a re-upload: its
    shift is trusted and a missing one counts as zero (START resets it).
    """
    if found is None:
        if udm.etag is not None and centroids is not None and bound_to(centroids.tags, udm):
            raise NotFound(
                f"the cumulative shift of {udm.ball_id} is missing although {centroids.ball_id} was computed "
                "on this UDM version (a failed write lost it): upload the current UDM again, or send START"
            )
        return None
    array, info = found
    if udm.etag is not None and not bound_to(info.tags, udm):
        return None
    check_numeric(info, info.ball_id, ndim=2)
    if shape_of(info) != (k, a) or array.shape != (k, a):
        raise ValidationFailed(
            f"{info.ball_id}: cumulative shift has shape {list(shape_of(info))}, expected {[k, a]} (k={k})"
        )
    return array


def bound_to(tags: Mapping[str, str], udm: BallInfo) -> bool:
    """Whether state tagged by :func:`with_udm_version` was computed on this very upload of ``udm``:
    the same etag and, where both know it, the same write time. State written before workers
    recorded the write time matches on the etag alone, as it did then."""
    if tags.get(UDM_VERSION_TAG) != udm.etag:
        return False
    written = tags.get(UDM_WRITTEN_TAG)
    return written is None or udm.written is None or written == udm.written


def with_udm_version(write: Write, udm: BallInfo) -> Write:
    """``write`` tagged with the UDM version it was computed on (:func:`current_udm_shift`)."""
    if udm.etag is None:
        return write
    version = {UDM_VERSION_TAG: udm.etag, **({UDM_WRITTEN_TAG: udm.written} if udm.written else {})}
    return replace(write, tags={**(write.tags or {}), **version})


def udm_shift_write(key: str, value: np.ndarray, udm: BallInfo) -> Write:
    """The write of a cumulative shift, bound to the UDM version it applies to."""
    return with_udm_version(Write(key, np.ascontiguousarray(value, dtype=np.float64), num_chunks=1), udm)


async def compute(ctx: JobContext, inline: bool, fn: Callable[..., Any], /, *args: Any) -> Any:
    """``fn(*args)`` on the event loop when ``inline`` (tiny work: the pool hop costs more than the
    work), else in the compute pool; timed as compute either way."""
    return await ctx.compute(fn, *args, inline=inline)


def check_udm(info: BallInfo, k: int, *, n: int | None = None, a: int | None = None) -> tuple[int, int, int]:
    """422 unless the UDM is n x n x a (as the owner uploads it) or n x k' x a with k' >= k (after an
    update); ``n`` and ``a`` are checked when the caller knows them from another object."""
    check_numeric(info, info.ball_id, ndim=3)
    rows, cols, attrs = shape_of(info)
    if (n is not None and rows != n) or (a is not None and attrs != a) or cols < k:
        fits = f"{rows if n is None else n} records, {attrs if a is None else a} attributes, k={k}"
        raise ValidationFailed(f"{info.ball_id}: UDM shape {[rows, cols, attrs]} does not fit {fits}")
    return rows, cols, attrs


def current_udm_dtype(info: BallInfo) -> np.dtype:
    """The dtype of the current UDM U0[:, :k] + C, as step 2 reports it: C is float64, so the sum
    is at least float64 whatever the upload's dtype."""
    return np.result_type(np.dtype(info.full_dtype or "float64"), np.float64, np.float32)


def check_declared_udm(info: BallInfo, p: SecureKMeansParams) -> None:
    """DBSKMeans commands may declare the encrypted UDM's shape and dtype: 422 when storage disagrees.

    Storage keeps the uploaded UDM (the cumulative form), so once a step 2 may have reported the
    n x k x a shape and the dtype of the current matrix (any step but a START step 1), those are
    accepted as well as the stored ones: a Manager may echo either.
    """
    if not isinstance(p, DbsKMeansParams):
        return
    stored = list(shape_of(info))
    accepted = [stored]
    reported = p.step_index == 2 or p.clustering_status != ClusteringStatus.START
    if reported and len(stored) == 3:
        accepted.append([stored[0], p.k, stored[2]])
    if p.encrypted_udm_shape is not None and list(p.encrypted_udm_shape) not in accepted:
        raise ValidationFailed(
            f"{info.ball_id}: declared shape {p.encrypted_udm_shape} but storage holds {stored}"
        )
    declared = p.encrypted_udm_dtype
    if not (reported and declared is not None and np.dtype(declared) == current_udm_dtype(info)):
        check_dtype(info, declared)


def check_declared_matrix(p: SecureKMeansParams, key: str, n: int, a: int) -> None:
    """A declared ``encrypted_matrix_shape`` starts with the records and attributes the UDM has."""
    declared = p.encrypted_matrix_shape
    if declared is not None and (declared[0] != n or (len(declared) > 1 and declared[1] != a)):
        raise ValidationFailed(
            f"{key}: declared shape {list(declared)} but the data has {n} records, {a} attributes"
        )


async def previous_centroids_info(ctx: JobContext, root: str, ns: str | None) -> BallInfo:
    """Where this round's starting centroids are: ``<P>centj``, or ``<P>centi`` after a failed step 1.

    Step 1 writes ``centi`` (= the centroids it started from) before ``centj``. On a backend whose
    overwrite is delete-then-put (MictlanX), a step that failed on that last write leaves ``centj``
    deleted and ``centi`` holding exactly the centroids the step started from, so the retry reads
    them there and recomputes the same round. Nothing else deletes ``centj``.
    """
    current = keys.centroids_current(root, ns)
    try:
        return await ctx.store.info(current)
    except NotFound:
        try:
            info = await ctx.store.info(keys.centroids_previous(root, ns))
        except NotFound:
            raise NotFound(
                f"no previous centroids {current!r}: send clustering_status=START (1) for the first round"
            ) from None
        ctx.log.warning("resuming a failed step 1 from %s (%s is missing)", info.ball_id, current)
        return info


class Scheme(ABC, Generic[S, M]):
    """What one ciphertext family changes in a secure k-means round.

    ``double_blind``: the UDM is FDH-OPE-encrypted (``<P>encryptedudm``) and so is the shift step 2
    receives. ``together`` awaits several storage calls at once. The UDM is kept in the cumulative
    form of the module docstring: :meth:`encrypted_phase` takes ``udm_shift``, the current k x a
    shift C (None: zero), and scores U0 + C.
    """

    #: Step-1 results of double-blind rounds also report the encrypted UDM's shape and dtype.
    reports_udm_in_step1: ClassVar[bool] = False
    #: Step 2 of a double-blind round looks for ``<P>shiftmatrixope`` when no id is given.
    ope_shift_fallback: ClassVar[bool] = False

    def __init__(self, op: str, *, double_blind: bool, together: Together = gathered) -> None:
        self.op = op
        self.double_blind = double_blind
        self.together = together

    # -------------------------------------------------------------- step 1 (scheme-specific parts)
    @abstractmethod
    async def material(self, ctx: JobContext) -> M:
        """Key material step 1 needs, loaded before anything is read (a missing key fails first)."""

    def state_inputs(self, p: SecureKMeansParams) -> list[str]:
        """Other stored inputs of step 1 (CKKS: the owner's encrypted zero shift)."""
        return []

    @abstractmethod
    async def encrypted_info(self, ctx: JobContext, p: SecureKMeansParams, key: str) -> BallInfo:
        """The encrypted dataset's info (checked against a declared shape where the scheme can)."""

    @abstractmethod
    def check_step1(
        self, p: SecureKMeansParams, encrypted: BallInfo, udm: BallInfo, state: Sequence[BallInfo]
    ) -> int:
        """Validate step 1's stored inputs against each other and the command; return n (records).

        ``state``: the infos of :meth:`state_inputs`, then the previous centroids' (not at START).
        """

    @abstractmethod
    async def encrypted_phase(
        self,
        ctx: JobContext,
        p: SecureKMeansParams,
        material: M,
        inputs: Sequence[str],
        infos: Sequence[BallInfo],
        n: int,
        start: bool,
        udm_shift: np.ndarray | None,
    ) -> Phase1[S]:
        """Download ``inputs`` (dataset, UDM, :meth:`state_inputs`, previous centroids unless START;
        ``infos`` describe them, as checked) and run the encrypted phase on U0 + ``udm_shift``
        (:func:`fetch_checked_udm` reads the UDM version checked, or fails)."""

    @abstractmethod
    def state_write(self, key: str, value: S, chunks: int, k: int) -> Write:
        """How a centroid set or shift (k items) is stored."""

    # -------------------------------------------------------------- step 2 (scheme-specific parts)
    #: Whether :meth:`converged` can judge a round; when not, step 2 without ``is_zero`` is a 400
    #: before anything is read.
    judges_convergence: ClassVar[bool] = True

    @abstractmethod
    async def converged(
        self, ctx: JobContext, p: SecureKMeansParams, shift_key: str
    ) -> tuple[bool, np.ndarray | None]:
        """The worker-side rule when the command has no ``is_zero``; also returns the shift when it
        had to download it (so step 2 does not read it twice)."""


async def step1(ctx: JobContext, p: SecureKMeansParams, scheme: Scheme[S, M]) -> Step1Result:
    """The encrypted phase of a round (see the module docstring for the keys and the write order)."""
    material = await scheme.material(ctx)
    root, ns = p.plaintext_matrix_id, p.namespace
    start = p.clustering_status == ClusteringStatus.START
    enc_key = p.encrypted_matrix_id or keys.encrypted(root)
    matrix_key = udm_key(p, scheme.double_blind)
    state_keys = scheme.state_inputs(p)
    centi_key, centj_key = keys.centroids_previous(root, ns), keys.centroids_current(root, ns)
    cumulative_key = udm_shift_key(p, scheme.double_blind)

    lookups: list[Awaitable[BallInfo]] = [
        scheme.encrypted_info(ctx, p, enc_key),
        ctx.store.info(matrix_key),
        *(ctx.store.info(key) for key in state_keys),
    ]
    if not start:
        lookups.append(previous_centroids_info(ctx, root, ns))
    # The cumulative shift (k x a) is read in the same round trip (START resets it: not read).
    found = await scheme.together(*lookups, *([] if start else [fetch_udm_shift(ctx, cumulative_key)]))
    stored_shift: tuple[np.ndarray, BallInfo] | None = None if start else found.pop()
    infos: list[BallInfo] = found
    n = scheme.check_step1(p, infos[0], infos[1], infos[2:])
    source_key = centj_key if start else infos[-1].ball_id
    inputs = [enc_key, matrix_key, *state_keys, *([] if start else [source_key])]
    started = None if start else infos[-1]
    udm_shift_shape = (p.k, shape_of(infos[1])[2])
    udm_shift = current_udm_shift(stored_shift, infos[1], *udm_shift_shape, started)
    phase = await scheme.encrypted_phase(ctx, p, material, inputs, infos, n, start, udm_shift)

    chunks = result_chunks(ctx, p)
    shift_key = keys.encrypted_shift_matrix(root, ns)
    # 1,000,000 labels: converted and copied in a thread, not on the event loop (health keeps answering).
    payload, label_write = await plan_labels_off_loop(ctx, phase.labels, keys.label_vector(root, ns))
    centi_write = with_udm_version(scheme.state_write(centi_key, phase.centi, chunks, p.k), infos[1])
    centj_write = with_udm_version(scheme.state_write(centj_key, phase.centj, chunks, p.k), infos[1])
    writes = [
        # START: the cumulative shift of this UDM is zero (a previous job's may remain).
        *([udm_shift_write(cumulative_key, np.zeros(udm_shift_shape), infos[1])] if start else []),
        # Skipped when resuming from centi: it already holds exactly these centroids.
        *([] if source_key == centi_key else [centi_write]),
        scheme.state_write(shift_key, phase.shift, chunks, p.k),
        *([label_write] if label_write else []),
    ]
    # Last: it is this step's input on the next round, so until it lands a retry is exact.
    await put_all(ctx, [*writes, centj_write])
    extra: dict[str, Any] = {}
    if scheme.double_blind and scheme.reports_udm_in_step1:
        extra = {"encrypted_udm_shape": list(shape_of(infos[1])), "encrypted_udm_dtype": infos[1].full_dtype}
    return Step1Result(**payload, **extra, n_iterations=p.iterations + 1, encrypted_shift_matrix_id=shift_key)


async def _shift_key(ctx: JobContext, p: SecureKMeansParams, scheme: Scheme[Any, Any]) -> str:
    """Explicit ids win. Default ``<P>shiftmatrix``; for the double-blind CKKS variant
    ``<P>shiftmatrixope`` first when it exists (what the V1 client writes; docs/original-rory.md)."""
    root, ns = p.plaintext_matrix_id, p.namespace
    if isinstance(p, DbsKMeansParams) and p.shift_matrix_ope_id:
        return p.shift_matrix_ope_id
    if p.shift_matrix_id:
        return p.shift_matrix_id
    if scheme.double_blind and scheme.ope_shift_fallback:
        ope = keys.shift_matrix_ope(root, ns)
        if await ctx.store.exists(ope):
            return ope
    return keys.shift_matrix(root, ns)


def _step2_result(
    status: ClusteringStatus, double_blind: bool, shape: Sequence[int] | None = None, dtype: str | None = None
) -> Step2Result:
    extra: dict[str, Any] = {}
    if shape is not None:
        if double_blind:
            extra = {"encrypted_udm_shape": list(shape), "encrypted_udm_dtype": str(dtype)}
        else:
            extra = {"udm_shape": list(shape)}
    return Step2Result(clustering_status=status, **extra)


async def step2(ctx: JobContext, p: SecureKMeansParams, scheme: Scheme[Any, Any]) -> Step2Result:
    """The plaintext phase: no key material (the shift arrives decrypted, or OPE-encrypted)."""
    if p.is_zero:
        return _step2_result(ClusteringStatus.COMPLETED, scheme.double_blind)
    if p.is_zero is None and not scheme.judges_convergence:
        raise BadRequest(
            f"is_zero is required for {scheme.op} step 2: the worker cannot judge convergence "
            "from an FDH-OPE-encrypted shift (the data owner decides on the decrypted CKKS shift)"
        )
    matrix_key, shift_key = udm_key(p, scheme.double_blind), await _shift_key(ctx, p, scheme)
    cumulative_key = udm_shift_key(p, scheme.double_blind)
    udm_info, shift_info, stored = await scheme.together(
        ctx.store.info(matrix_key), ctx.store.info(shift_key), fetch_udm_shift(ctx, cumulative_key)
    )
    check_numeric(shift_info, shift_key, ndim=2)
    k, a = shape_of(shift_info)
    if "k" in p.model_fields_set and k != p.k:
        raise ValidationFailed(f"{shift_key}: the shift matrix has {k} rows but k={p.k}")
    check_numeric(udm_info, matrix_key, ndim=3)
    n, _, udm_a = shape_of(udm_info)
    if udm_a != a:
        raise ValidationFailed(
            f"{shift_key}: the shift matrix has {a} attributes, the UDM {matrix_key} has {udm_a}"
        )
    check_udm(udm_info, k, n=n, a=a)
    check_declared_udm(udm_info, p)
    check_declared_matrix(p, matrix_key, n, a)
    # The centroids' UDM version only matters when the shift is missing (lost, or not needed).
    centj_key = keys.centroids_current(p.plaintext_matrix_id, p.namespace)
    centroids = None if stored is not None else await _info_or_none(ctx, centj_key)
    current = current_udm_shift(stored, udm_info, k, a, centroids)

    shift: np.ndarray | None = None
    if p.is_zero is None:
        done, shift = await scheme.converged(ctx, p, shift_key)
        if done:
            dtype = str(current_udm_dtype(udm_info))
            return _step2_result(ClusteringStatus.COMPLETED, scheme.double_blind, (n, k, a), dtype)
    return await _step2_cumulative(ctx, scheme, (cumulative_key, current, udm_info), shift_key, shift)


async def _step2_cumulative(
    ctx: JobContext,
    scheme: Scheme[Any, Any],
    state: tuple[str, np.ndarray | None, BallInfo],
    shift_key: str,
    shift: np.ndarray | None,
) -> Step2Result:
    """Step 2 in the cumulative form: C' = C + S (k x a), written bound to the UDM's version; the
    UDM itself is neither read nor written. ``state``: C's key, C when current (None: zero), the
    UDM's info.
    """
    key, current, udm_info = state
    if shift is None:
        shift = await ctx.store.get_ndarray(shift_key)
    updated = accumulate_shift(current, shift)  # k x a: cheaper than any hop off the loop
    await put_all(ctx, [udm_shift_write(key, updated, udm_info)])
    n, _, a = shape_of(udm_info)
    dtype = current_udm_dtype(udm_info)
    return _step2_result(
        ClusteringStatus.WORK_IN_PROGRESS, scheme.double_blind, (n, updated.shape[0], a), str(dtype)
    )


async def run(ctx: JobContext, p: SecureKMeansParams, scheme: Scheme[Any, Any]) -> Step1Result | Step2Result:
    """Step 1 or step 2, as ``p.step_index`` says (the wire model admits only 1 and 2)."""
    if p.step_index == 1:
        return await step1(ctx, p, scheme)
    return await step2(ctx, p, scheme)

