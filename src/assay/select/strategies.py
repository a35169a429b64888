"""Selection strategies by name: one small interface, pools as wrappers.

Interface (small-text style)::

    strategy = get_strategy("seals:entropy")
    selection = strategy.select(ctx, n=100, rng=np.random.default_rng(0))
    selection.ids          # [<= n] int64 global ids, unique, from the pool, in selection order

A :class:`SelectionContext` carries everything a round knows, as arrays and **functions of ids**
(never positions): the candidate pool, a vector lookup ``ids -> [m, dim]`` (float16 or float32, e.g.
rows of the fp16 store), the proxy's ``ids -> P(positive)``, an ensemble's ``ids -> [m_models, m]``,
the labelled ids (and their vectors), text-query / exemplar vectors, a ``neighbors(ids, k)`` search,
and the non-representative duplicates. Functions of ids let a pool wrapper change the pool and still
score only the items in it: that is what makes SEALS cheap. Strategies are stateless apart from the
SEALS wrapper's pool of ids; no strategy keeps a model, an index or embeddings.

Registry (:func:`get_strategy`, :func:`available_strategies`)
    ``random``, ``entropy``, ``margin``, ``least-confidence``, ``most-likely-positive``,
    ``disagreement``, ``novelty``, ``information-density``, ``value``, ``k-center``, ``cluster``,
    ``mmr``; and the pool wrappers ``seals:<strategy>`` and ``subsample:<strategy>``.

Bad input
    An empty pool raises :class:`~assay.errors.EmptyPoolError`. A batch larger than the pool returns
    the whole pool (in the strategy's order) with ``Selection.truncated = True`` and a
    :class:`PoolExhaustedWarning`. NaN probabilities or scores raise :class:`~assay.errors.InputError`
    naming the strategy and how many values are NaN. A missing input a strategy needs (no ``proba``
    for ``entropy``, no ``vectors`` for ``k-center``) raises :class:`InputError` naming the field.
    An unknown name raises :class:`~assay.errors.UnknownNameError` listing the valid names.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from assay.errors import EmptyPoolError, InputError, NotFoundError, UnknownNameError
from assay.select import scores as S
from assay.select.diversity import (
    ALLOCATIONS,
    DEFAULT_CACHE_BYTES,
    _as_rng,
    _check_n,
    _compute_cluster_allocation,
    _k_center_positions,
    _kmeans_assign,
    _mmr_positions,
    _top_positions,
)
from assay.select.pools import NeighborsFn, SealsPool, _check_k, _first_k_others, subsample_pool
from assay.select.scores import (
    DEFAULT_BLOCK_SIZE,
    _canonical,
    _check_block_size,
    _check_ids,
    _check_vectors,
    _small_vectors,
    _sorted_unique,
)

__all__ = [
    "SelectionContext",
    "Selection",
    "Strategy",
    "PoolExhaustedWarning",
    "get_strategy",
    "available_strategies",
    "vectors_by_row",
    "vectors_by_id",
    "CachedVectors",
    "STRATEGIES",
    "POOL_WRAPPERS",
    "RandomStrategy",
    "UncertaintyStrategy",
    "EntropyStrategy",
    "MarginStrategy",
    "LeastConfidenceStrategy",
    "MostLikelyPositiveStrategy",
    "DisagreementStrategy",
    "NoveltyStrategy",
    "InformationDensityStrategy",
    "ValueStrategy",
    "KCenterStrategy",
    "ClusterStrategy",
    "MMRStrategy",
    "SealsStrategy",
    "SubsampleStrategy",
]

VectorLookup = Callable[[np.ndarray], Any]  # ids [m] -> [m, dim] float16/float32
ProbaFn = Callable[[np.ndarray], Any]  # ids [m] -> [m] P(positive)
EnsembleProbaFn = Callable[[np.ndarray], Any]  # ids [m] -> [n_models, m]


class PoolExhaustedWarning(UserWarning):
    """A batch larger than the pool was asked for; the whole pool was returned."""


# --------------------------------------------------------------------------------------------
# vector lookups
# --------------------------------------------------------------------------------------------


def vectors_by_row(matrix: Any) -> VectorLookup:
    """A lookup ``ids -> rows`` for a store whose row ``i`` holds item id ``i`` (fp16 memmap is fine).

    Contiguous or dense id runs are read as one slice (then gathered locally), which keeps a full
    scan of a memory-mapped store sequential.
    """
    mat = _check_vectors(matrix, "matrix")
    if isinstance(mat, np.memmap):
        mat = mat.view(np.ndarray)  # same mapped buffer, without np.memmap's per-call indexing overhead
    N, d = mat.shape

    def lookup(ids: np.ndarray) -> Any:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.empty((0, d), dtype=mat.dtype)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= N:
            raise NotFoundError(f"item ids must be in [0, {N}) for this store, got ids in [{lo}, {hi}]")
        span = hi - lo + 1
        if span == ids.size and ids[0] == lo and ids[-1] == hi and np.all(ids[1:] > ids[:-1]):
            return mat[lo : hi + 1]  # [m, dim] a plain slice
        if span <= 4 * ids.size:
            return np.asarray(mat[lo : hi + 1])[ids - lo]  # one sequential read, local gather
        return mat[ids]  # [m, dim] sparse gather

    return lookup


def vectors_by_id(matrix: Any, ids: Any) -> VectorLookup:
    """A lookup ``ids -> rows`` for a matrix whose row ``i`` holds item ``ids[i]``."""
    mat = _check_vectors(matrix, "matrix")
    row_ids = _check_ids(ids, "ids")
    if row_ids.shape[0] != mat.shape[0]:
        raise InputError(f"ids must have one entry per matrix row ({mat.shape[0]}), got {row_ids.shape[0]}")
    order = np.argsort(row_ids, kind="stable")
    sorted_ids = row_ids[order]

    def lookup(q: np.ndarray) -> Any:
        q = np.asarray(q, dtype=np.int64)
        pos = np.searchsorted(sorted_ids, q)
        pos_c = np.minimum(pos, max(sorted_ids.size - 1, 0))
        if q.size and (sorted_ids.size == 0 or np.any(sorted_ids[pos_c] != q)):
            raise NotFoundError("some item ids have no vector in this matrix")
        return mat[order[pos_c]]  # [m, dim]

    return lookup


class CachedVectors:
    """A caller-owned float32 memo in front of a vector lookup, keyed by item id.

    A SEALS pool changes little from round to round while the proxy is retrained every round, so
    the pool's vectors are worth keeping in float32 between rounds (``pool size * dim * 4`` bytes,
    e.g. 100 MB for 100,000 items of dimension 256) while its scores are not. The mining loop owns
    one of these per session and passes it as ``ctx.vectors`` (and to :func:`assay.learn.proba_fn`);
    strategies never keep one. Each call fetches only ids it has not seen, through ``lookup``.

    Parameters
    ----------
    lookup : callable ``ids [m] -> [m, dim]``

    Attributes
    ----------
    n_fetched : int
        Ids fetched through ``lookup`` so far (cache misses).
    """

    def __init__(self, lookup: VectorLookup) -> None:
        if not callable(lookup):
            raise InputError(f"lookup must be a function ids -> [m, dim], got {type(lookup).__name__}")
        self._lookup = lookup
        self._store: np.ndarray | None = None  # [capacity, dim] float32, rows in fetch order
        self._size = 0
        self._ids = np.empty(0, dtype=np.int64)  # [c] sorted ids
        self._slots = np.empty(0, dtype=np.int64)  # [c] row of each sorted id in the store
        self.n_fetched = 0

    def __len__(self) -> int:
        return self._size

    def _ensure(self, q: np.ndarray) -> np.ndarray:
        """Fetch the ids of ``q`` not held yet; return the position of each id of ``q`` in ``self._ids``."""
        pos = np.searchsorted(self._ids, q)  # [m]
        hit = pos < self._ids.size
        hit[hit] = self._ids[pos[hit]] == q[hit]
        if not hit.all():
            miss = _sorted_unique(q[~hit])
            rows = np.ascontiguousarray(self._lookup(miss), dtype=np.float32)  # [n_miss, dim]
            if rows.ndim != 2 or rows.shape[0] != miss.size:
                raise InputError(f"lookup(ids) must return [m, dim] rows, got shape {rows.shape}")
            need = self._size + miss.size
            if self._store is None or need > self._store.shape[0]:
                grown = np.empty(
                    (
                        max(need, 2 * (0 if self._store is None else self._store.shape[0]), 1024),
                        rows.shape[1],
                    ),
                    dtype=np.float32,
                )
                if self._store is not None:
                    grown[: self._size] = self._store[: self._size]
                self._store = grown
            self._store[self._size : need] = rows
            ids_all = np.concatenate([self._ids, miss])
            slots_all = np.concatenate([self._slots, np.arange(self._size, need, dtype=np.int64)])
            order = np.argsort(ids_all, kind="stable")
            self._ids, self._slots = ids_all[order], slots_all[order]
            self._size = need
            self.n_fetched += int(miss.size)
            pos = np.searchsorted(self._ids, q)
        return pos

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        q = np.asarray(ids, dtype=np.int64)
        pos = self._ensure(q)
        if q.size == 0:
            return np.empty((0, 0 if self._store is None else self._store.shape[1]), dtype=np.float32)
        return self._store[self._slots[pos]]  # [m, dim] float32

    def map_rows(self, fn: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, *, block: int = 16_384) -> np.ndarray:
        """``fn(self(ids))`` for a row-wise ``fn`` (``[b, dim] -> [b]``), without gathering the rows.

        When ``ids`` cover much of the memo (a SEALS pool scored each round), ``fn`` runs on contiguous
        blocks of the memo's storage, which streams through memory, and only the ``[m]`` results are
        gathered; a random gather of the ``[m, dim]`` rows first cost more than the scoring itself (95k
        rows of 256 floats: 67 ms gather against 25 ms of matrix-vector product). Few ids fall back to
        the gather. ``fn`` must treat rows independently (a proxy's ``predict_proba`` does).
        """
        q = np.asarray(ids, dtype=np.int64)
        if q.size == 0:
            return np.zeros(0, dtype=np.float64)
        pos = self._ensure(q)  # before reading self._slots: fetching misses replaces it
        slots = self._slots[pos]  # [m] rows in the memo
        lo, hi = int(slots.min()), int(slots.max()) + 1
        if 2 * q.size < hi - lo:  # sparse: scoring the span would cost more than the gather
            return np.asarray(fn(self._store[slots]), dtype=np.float64)
        out = np.empty(hi - lo, dtype=np.float64)
        for start in range(lo, hi, block):
            stop = min(start + block, hi)
            out[start - lo : stop - lo] = fn(self._store[start:stop])  # [b] on contiguous rows
        return out[slots - lo]


class _PoolVectors:
    """Array-like view ``[n_pool, dim]`` over a lookup: rows fetched on demand by slice or positions."""

    def __init__(self, lookup: VectorLookup, ids: np.ndarray) -> None:
        self._lookup = lookup
        self._ids = ids
        first = np.asarray(lookup(ids[:1]))
        if first.ndim != 2 or first.shape[0] != 1 or first.dtype.kind != "f":
            raise InputError(
                "ctx.vectors(ids) must return float rows [m, dim], "
                f"got shape {first.shape}, dtype {first.dtype}"
            )
        self.shape = (int(ids.shape[0]), int(first.shape[1]))
        self.dtype = first.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._lookup(self._ids[key]))


# --------------------------------------------------------------------------------------------
# context and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SelectionContext:
    """What one selection round knows. All ids are global int64 item ids.

    Parameters
    ----------
    pool_ids : array [n_pool] int64, optional
        The candidate pool (e.g. :func:`assay.select.pools.full_pool`); required by every base
        strategy. Under ``seals:`` it is optional and, when given, restricts the SEALS pool.
    vectors : callable ``ids [m] -> [m, dim]``, optional
        Embedding lookup (see :func:`vectors_by_row`); needed by vector-based strategies.
    proba : callable ``ids [m] -> [m]``, optional
        The proxy's P(positive) (see :func:`assay.learn.proba_fn`).
    ensemble_proba : callable ``ids [m] -> [n_models, m]``, optional
        An ensemble's per-member P(positive), for ``disagreement``.
    labelled_ids : array [n_labelled] int64
    labelled_labels : array [n_labelled], optional
        The labels of ``labelled_ids`` (exactly 1 or True: positive). ``seals:`` gives positives a wider
        neighbourhood.
    labelled_vectors : array [n_labelled, dim], optional
        Looked up through ``vectors`` when omitted.
    query_vectors : array [q, dim] or [dim], optional
        Text-query or exemplar embeddings (relevance without, or instead of, a proxy).
    neighbors : callable ``(ids [m], k) -> (sims [m, k], nbr_ids [m, k])``, optional
        Index search or kNN-graph lookup; needed by ``seals:`` and ``information-density``.
    non_representative : bool mask [corpus_size] or array of ids, optional
        Duplicates folded into a representative; SEALS leaves them out of its pool.
    model_scores : callable ``ids [m] -> [m]``, optional
        An external model's score in ``[0, 1]`` (NaN where it gave none): a weak detector, imported
        scores, the ImageNet tagger (:mod:`assay.interop.scores`). Used by ``value`` when ``d > 0``.
    extra_candidates : array [n_extra] int64, optional
        Candidates from another source (e.g. the model's medium-confidence band) that a ``seals:``
        strategy adds to its kNN pool for this call (labelled and non-representative ids are dropped).
    corpus_size : int, optional
        For the fraction of the corpus scanned.
    block_size : int
        Ids scored per call of ``proba`` / ``vectors``.
    """

    pool_ids: np.ndarray | None = None
    vectors: VectorLookup | None = None
    proba: ProbaFn | None = None
    ensemble_proba: EnsembleProbaFn | None = None
    labelled_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    labelled_labels: np.ndarray | None = None
    labelled_vectors: np.ndarray | None = None
    query_vectors: np.ndarray | None = None
    neighbors: NeighborsFn | None = None
    non_representative: Any | None = None
    model_scores: ProbaFn | None = None
    extra_candidates: np.ndarray | None = None
    corpus_size: int | None = None
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.pool_ids is not None:
            set_(self, "pool_ids", _check_ids(self.pool_ids, "pool_ids"))
        set_(self, "labelled_ids", _check_ids(self.labelled_ids, "labelled_ids"))
        if self.labelled_labels is not None:
            lab = np.asarray(self.labelled_labels)
            if lab.shape != self.labelled_ids.shape or lab.dtype.kind not in "biuf" or (
                    lab.dtype.kind == "f" and not np.isfinite(lab).all()):
                raise InputError(f"labelled_labels must hold one number or bool per labelled id "
                                 f"({self.labelled_ids.shape[0]}), got {lab.dtype} {list(lab.shape)}")
            set_(self, "labelled_labels", lab)
        if self.extra_candidates is not None:
            set_(self, "extra_candidates", _sorted_unique(_check_ids(self.extra_candidates, "extra_candidates", unique=False)))
        for name in ("vectors", "proba", "ensemble_proba", "neighbors", "model_scores"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise InputError(f"ctx.{name} must be a function of item ids, got {type(fn).__name__}")
        if self.query_vectors is not None:
            q = _small_vectors(self.query_vectors, "query_vectors")
            if q.shape[0] == 0:
                raise InputError("query_vectors must hold at least one vector, got 0")
            set_(self, "query_vectors", q)
        if self.labelled_vectors is not None:
            lv = np.asarray(self.labelled_vectors)
            if lv.size == 0:
                set_(self, "labelled_vectors", None)
            else:
                lv = _small_vectors(lv, "labelled_vectors")
                if lv.shape[0] != self.labelled_ids.shape[0]:
                    raise InputError(
                        f"labelled_vectors must have one row per labelled id ({self.labelled_ids.shape[0]}), "
                        f"got {lv.shape[0]}"
                    )
                set_(self, "labelled_vectors", lv)
        if self.corpus_size is not None:
            set_(self, "corpus_size", _check_k(self.corpus_size, "corpus_size"))
        set_(self, "block_size", _check_block_size(self.block_size))

    def replace(self, **changes: Any) -> "SelectionContext":
        """A copy with some fields changed (e.g. another pool)."""
        return dataclasses.replace(self, **changes)

    def require(self, name: str, strategy: str, what: str) -> Any:
        value = getattr(self, name)
        if value is None:
            raise InputError(f"strategy {strategy!r} needs ctx.{name} ({what}); got None")
        return value

    def get_labelled_vectors(self) -> np.ndarray | None:
        """``[n_labelled, dim]`` float32, from ``labelled_vectors`` or the lookup; None if no labels."""
        if self.labelled_vectors is not None:
            return self.labelled_vectors
        if self.labelled_ids.size == 0 or self.vectors is None:
            return None
        return _small_vectors(self.vectors(self.labelled_ids), "vectors(labelled_ids)")


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection.

    Attributes
    ----------
    ids : ndarray [<= n] int64
        Selected global ids, unique, from the pool, in selection order.
    scores : ndarray [len(ids)] float64
        The strategy's score of each selected item when it was chosen (e.g. entropy; for k-center
        the distance to the nearest centre; 0 for random).
    strategy : str
    pool_size : int
        Candidates considered.
    scanned : int
        Items whose scores were computed (the pool size).
    corpus_size : int or None
    scanned_fraction : float or None
        ``scanned / corpus_size``.
    truncated : bool
        True when ``n`` exceeded the pool and the whole pool was returned.
    """

    ids: np.ndarray
    scores: np.ndarray
    strategy: str
    pool_size: int
    scanned: int
    corpus_size: int | None
    scanned_fraction: float | None
    truncated: bool

    def __len__(self) -> int:
        return int(self.ids.size)


# --------------------------------------------------------------------------------------------
# base class and shared scoring
# --------------------------------------------------------------------------------------------


class Strategy(abc.ABC):
    """A selection strategy: ``select(ctx, n, rng) -> Selection``.

    Subclasses implement ``_select(ctx, pool_ids, n, rng) -> (ids, scores)`` for a non-empty pool
    and ``n <= len(pool_ids)``; :meth:`select` validates, handles the empty pool and the batch larger
    than the pool, and fills in the pool statistics.
    """

    name: ClassVar[str] = ""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def select(self, ctx: SelectionContext, n: int, rng: np.random.Generator | int) -> Selection:
        """Choose at most ``n`` items of ``ctx.pool_ids``.

        Parameters
        ----------
        ctx : SelectionContext
        n : int
            Batch size (positive).
        rng : numpy.random.Generator or int seed
            Used by strategies with random choices; the same seed gives the same selection.
        """
        if not isinstance(ctx, SelectionContext):
            raise InputError(f"ctx must be a SelectionContext, got {type(ctx).__name__}")
        n = _check_n(n)
        rng = _as_rng(rng)
        pool = ctx.require("pool_ids", self.name, "the candidate pool")
        if pool.size == 0:
            raise EmptyPoolError(f"strategy {self.name!r}: the pool is empty, there is nothing to select")
        truncated = n > pool.size
        if truncated:
            warnings.warn(
                f"strategy {self.name!r}: asked for {n} items but the pool holds {pool.size}; "
                "returning the whole pool",
                PoolExhaustedWarning,
                stacklevel=2,
            )
        ids, scores = self._select(ctx, pool, min(n, pool.size), rng)
        frac = None if ctx.corpus_size is None else pool.size / float(ctx.corpus_size)
        return Selection(
            ids=np.asarray(ids, dtype=np.int64),
            scores=np.asarray(scores, dtype=np.float64),
            strategy=self.name,
            pool_size=int(pool.size),
            scanned=int(pool.size),
            corpus_size=ctx.corpus_size,
            scanned_fraction=frac,
            truncated=truncated,
        )

    @abc.abstractmethod
    def _select(
        self, ctx: SelectionContext, pool: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (selected ids [n], their scores [n]) for a non-empty pool and ``n <= len(pool)``."""


def _gather(
    fn: Callable[[np.ndarray], Any],
    pool: np.ndarray,
    block: int,
    name: str,
    strategy: str,
    members: bool = False,
) -> np.ndarray:
    """Call ``fn`` on the pool blockwise; ``[n_pool]`` (or ``[n_models, n_pool]``) float64, NaN-checked."""
    P = pool.size
    out = None
    for start in range(0, P, block):
        stop = min(start + block, P)
        vals = np.asarray(fn(pool[start:stop]), dtype=np.float64)
        want = (stop - start,) if not members else (vals.shape[0] if vals.ndim == 2 else -1, stop - start)
        if vals.shape != want:
            shape = "[m]" if not members else "[n_models, m]"
            raise InputError(
                f"ctx.{name}(ids) must return {shape} for m={stop - start} ids, got {vals.shape}"
            )
        if out is None:
            out = np.empty((P,) if not members else (vals.shape[0], P), dtype=np.float64)
        out[..., start:stop] = vals
    n_nan = int(np.count_nonzero(np.isnan(out)))
    if n_nan:
        raise InputError(f"strategy {strategy!r}: ctx.{name} gave {n_nan} NaN value(s) out of {out.size}")
    return out


def _check_pool_scores(scores: np.ndarray, strategy: str) -> np.ndarray:
    n_nan = int(np.count_nonzero(np.isnan(scores)))
    if n_nan:
        raise InputError(f"strategy {strategy!r}: {n_nan} of {scores.size} scores are NaN")
    return np.asarray(scores, dtype=np.float64)


def _top(pool: np.ndarray, scores: np.ndarray, n: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    scores = _check_pool_scores(scores, strategy)
    pos = _top_positions(scores, pool, n)
    return pool[pos], scores[pos]


def _pool_vectors(ctx: SelectionContext, pool: np.ndarray, strategy: str) -> _PoolVectors:
    lookup = ctx.require("vectors", strategy, "a function ids -> [m, dim] embeddings")
    return _PoolVectors(lookup, pool)


_RELEVANCE_SOURCES = ("auto", "proxy", "query")


def _check_choice(value: str, kind: str, valid: tuple[str, ...]) -> str:
    key = _canonical(value)
    if key not in valid:
        raise UnknownNameError(kind, value, list(valid))
    return key


def _relevance(
    ctx: SelectionContext, pool: np.ndarray, source: str, reduce: str, strategy: str
) -> np.ndarray:
    """Relevance ``[n_pool]``: the proxy's P(positive), or the similarity to the query / exemplars.

    ``auto`` uses the proxy when ``ctx.proba`` is given and the query vectors otherwise: the
    documented fallback for a concept that cannot have a proxy yet (no labels, or one class only).
    """
    if source == "auto":
        source = "proxy" if ctx.proba is not None else "query"
    if source == "proxy":
        fn = ctx.require("proba", strategy, "a function ids -> P(positive); or give query_vectors")
        return S.most_likely_positive(_gather(fn, pool, ctx.block_size, "proba", strategy))
    q = ctx.require("query_vectors", strategy, "text-query or exemplar vectors; or give proba")
    sims = S.exemplar_similarity(
        _pool_vectors(ctx, pool, strategy), q, reduce=reduce, block_size=ctx.block_size
    )
    return _check_pool_scores(sims.astype(np.float64), strategy)


def _density(ctx: SelectionContext, pool: np.ndarray, k: int, strategy: str) -> np.ndarray:
    """Mean similarity to each pool item's ``k`` nearest neighbours (self-matches left out), ``[n_pool]``."""
    nfn = ctx.require("neighbors", strategy, "a function (ids, k) -> (sims, nbr_ids)")
    out = np.empty(pool.size, dtype=np.float64)  # [n_pool]
    for start in range(0, pool.size, ctx.block_size):
        blk = pool[start : start + ctx.block_size]  # [m]
        sims, nbrs = nfn(blk, k + 1)  # [m, k+1]: one extra for the self-match
        sims = np.asarray(sims, dtype=np.float64)
        nbrs = np.asarray(nbrs, dtype=np.int64)
        if sims.shape != nbrs.shape or sims.ndim != 2 or sims.shape[0] != blk.size:
            raise InputError(f"ctx.neighbors must return [m, k] sims and ids, got {sims.shape}, {nbrs.shape}")
        keep = _first_k_others(blk, nbrs, k)  # [m, k+1]: the first k valid neighbours other than self
        n_nan = int(np.count_nonzero(np.isnan(sims) & keep))
        if n_nan:
            raise InputError(f"strategy {strategy!r}: ctx.neighbors gave {n_nan} NaN similarities")
        out[start : start + blk.size] = S._compute_density(sims, keep, np.ones(sims.shape[1]))  # [m]
    return out


# --------------------------------------------------------------------------------------------
# base strategies
# --------------------------------------------------------------------------------------------


class RandomStrategy(Strategy):
    """Uniform random sampling without replacement: the passive-learning baseline (e.g. Settles 2009).

    Scores are all 0. Needs only ``ctx.pool_ids``.
    """

    name = "random"

    def _select(self, ctx, pool, n, rng):
        pick = rng.choice(pool.size, size=n, replace=False)  # [n] positions
        return pool[pick], np.zeros(n)


class UncertaintyStrategy(Strategy):
    """Uncertainty sampling: the items the proxy is least sure about (Lewis & Gale 1994).

    ``method`` is one of :data:`assay.select.scores.UNCERTAINTY_METHODS`: ``entropy`` (Shannon
    entropy, Settles 2009), ``margin`` (Scheffer et al. 2001), ``least-confidence`` (Lewis & Gale
    1994; Culotta & McCallum 2005). Needs ``ctx.proba``.
    """

    name = "uncertainty"

    def __init__(self, *, method: str = "entropy") -> None:
        self.method = _check_choice(method, "uncertainty method", tuple(S.UNCERTAINTY_METHODS))

    def _select(self, ctx, pool, n, rng):
        fn = ctx.require("proba", self.name, "a function ids -> P(positive)")
        p = _gather(fn, pool, ctx.block_size, "proba", self.name)  # [n_pool]
        return _top(pool, S.uncertainty(p, self.method), n, self.name)


class EntropyStrategy(UncertaintyStrategy):
    """Entropy uncertainty sampling (Shannon entropy of the proxy's prediction; Settles 2009, 3.1;
    uncertainty sampling after Lewis & Gale 1994). Needs ``ctx.proba``."""

    name = "entropy"

    def __init__(self) -> None:
        super().__init__(method="entropy")


class MarginStrategy(UncertaintyStrategy):
    """Margin sampling: smallest gap between the two most likely classes (Scheffer et al. 2001).
    Needs ``ctx.proba``."""

    name = "margin"

    def __init__(self) -> None:
        super().__init__(method="margin")


class LeastConfidenceStrategy(UncertaintyStrategy):
    """Least-confidence sampling: lowest probability of the predicted class (Lewis & Gale 1994;
    Culotta & McCallum 2005). Needs ``ctx.proba``."""

    name = "least-confidence"

    def __init__(self) -> None:
        super().__init__(method="least-confidence")


class MostLikelyPositiveStrategy(Strategy):
    """Most likely positive: the items the proxy rates most probably positive.

    The greedy active-search policy (Jiang et al. 2017, "Efficient nonmyopic active search"; the
    "MLP" strategy of Coleman et al. 2022, SEALS). Finds positives of a rare concept fast. Without a
    proxy (``relevance="auto"`` and no ``ctx.proba``) it ranks by similarity to ``ctx.query_vectors``
    (``reduce`` = ``max`` or ``mean`` over exemplars): the cold start, and the fallback while only one
    class is labelled.
    """

    name = "most-likely-positive"

    def __init__(self, *, relevance: str = "auto", reduce: str = "max") -> None:
        self.relevance = _check_choice(relevance, "relevance source", _RELEVANCE_SOURCES)
        self.reduce = _check_choice(reduce, "exemplar reduction", tuple(S.REDUCTIONS))

    def _select(self, ctx, pool, n, rng):
        return _top(pool, _relevance(ctx, pool, self.relevance, self.reduce, self.name), n, self.name)


class DisagreementStrategy(Strategy):
    """Query by committee over a bootstrap/seed ensemble.

    ``method="bald"`` (default): mutual information between the label and the ensemble member,
    ``H[mean p] - mean H[p]`` (Houlsby et al. 2011, "Bayesian Active Learning for Classification and
    Preference Learning"; over ensembles, Beluch et al. 2018). ``method="vote-entropy"``: entropy of
    the members' hard votes (Dagan & Engelson 1995; Seung et al. 1992). Needs ``ctx.ensemble_proba``.
    """

    name = "disagreement"

    def __init__(self, *, method: str = "bald") -> None:
        self.method = _check_choice(method, "disagreement method", tuple(S.DISAGREEMENT_METHODS))

    def _select(self, ctx, pool, n, rng):
        fn = ctx.require("ensemble_proba", self.name, "a function ids -> [n_models, m] probabilities")
        p = _gather(fn, pool, ctx.block_size, "ensemble_proba", self.name, members=True)  # [m, n_pool]
        return _top(pool, S.disagreement(p, self.method), n, self.name)


class NoveltyStrategy(Strategy):
    """Novelty: the items farthest from every labelled item (``1 - max cosine sim``).

    Farthest-first traversal one item at a time (Baram, El-Yaniv & Luz 2004, "Online choice of
    active learning algorithms", kernel farthest-first), without updating for the batch: use
    ``k-center`` for a batch that is also spread out. With no labels every item scores 1 and the
    order is by id. Needs ``ctx.vectors``.
    """

    name = "novelty"

    def _select(self, ctx, pool, n, rng):
        vec = _pool_vectors(ctx, pool, self.name)
        lab = ctx.get_labelled_vectors()
        nov = S.distance_to_labelled(
            vec, np.empty((0, vec.shape[1])) if lab is None else lab, block_size=ctx.block_size
        )
        return _top(pool, nov.astype(np.float64), n, self.name)


class InformationDensityStrategy(Strategy):
    """Information density: ``uncertainty * density ** beta`` (Settles & Craven 2008).

    Uncertainty weighted by how representative an item is, so outliers that are uncertain only
    because they are odd lose to uncertain items from dense regions. The density is the mean cosine
    similarity to the item's ``k`` nearest neighbours from ``ctx.neighbors`` (self-matches dropped),
    clipped at 0. Needs ``ctx.proba`` and ``ctx.neighbors``.
    """

    name = "information-density"

    def __init__(self, *, k: int = 10, beta: float = 1.0, method: str = "entropy") -> None:
        self.k = _check_k(k)
        if not isinstance(beta, (int, float)) or beta < 0 or not np.isfinite(beta):
            raise InputError(f"beta must be a non-negative number, got {beta!r}")
        self.beta = float(beta)
        self.method = _check_choice(method, "uncertainty method", tuple(S.UNCERTAINTY_METHODS))

    def _select(self, ctx, pool, n, rng):
        fn = ctx.require("proba", self.name, "a function ids -> P(positive)")
        p = _gather(fn, pool, ctx.block_size, "proba", self.name)  # [n_pool]
        unc = S.uncertainty(p, self.method)  # [n_pool]
        dens = np.clip(_density(ctx, pool, self.k, self.name), 0.0, None)  # [n_pool]
        return _top(
            pool, S.combine_multiplicative({"u": unc, "d": dens}, {"u": 1.0, "d": self.beta}), n, self.name
        )


_FORMS = ("additive", "multiplicative")


class ValueStrategy(Strategy):
    """Combined value of relevance, uncertainty and novelty.

    ``form="additive"``: ``a * rel + b * unc + c * nov``, each term rank-normalised within the pool
    (``normalize="rank"``, or ``"minmax"``; see :func:`assay.select.scores.normalize`).
    ``form="multiplicative"``: ``rel ** a * unc ** b * nov ** c`` on the raw terms (cosine-similarity
    relevance mapped to ``(1 + s) / 2``), which needs no scale tuning. The multiplicative form
    generalises information density (Settles & Craven 2008); the additive one is the usual weighted
    mix of relevance, uncertainty and diversity (e.g. Xu et al. 2003, "Representative sampling for
    text classification using support vector machines").

    Terms: relevance as in ``most-likely-positive`` (proxy P(positive), else query similarity),
    uncertainty = entropy of ``ctx.proba``, novelty = cosine distance to the nearest labelled item,
    and ``d * model``: an external model's scores (``ctx.model_scores``: a weak detector, imported
    scores, the ImageNet tagger), as its uncertainty (``model_term="uncertainty"``, the binary entropy
    of its score: the items the model is unsure contain the object) or its score
    (``model_term="relevance"``); see :func:`assay.select.scores.model_score_term`. ``d`` defaults to
    0, so without it the value is what it always was. Items the model did not score get the term's pool
    mean. In the multiplicative form the model term is shifted by a small floor (``1e-3``) so that a
    score of exactly 0 or 1 does not zero every other term.
    A term with weight 0 is not computed, so its inputs are not needed.
    """

    name = "value"

    def __init__(
        self,
        *,
        a: float = 1.0,
        b: float = 1.0,
        c: float = 1.0,
        d: float = 0.0,
        form: str = "additive",
        normalize: str = "rank",
        relevance: str = "auto",
        reduce: str = "max",
        model_term: str = "uncertainty",
    ) -> None:
        for key, w in (("a", a), ("b", b), ("c", c), ("d", d)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
                raise InputError(f"{key} must be a non-negative number, got {w!r}")
        if a == 0 and b == 0 and c == 0 and d == 0:
            raise InputError("at least one of a, b, c, d must be positive")
        self.a, self.b, self.c, self.d = float(a), float(b), float(c), float(d)
        self.model_term = _check_choice(model_term, "model term", S.MODEL_TERMS)
        self.form = _check_choice(form, "value form", _FORMS)
        self.normalize = _check_choice(normalize, "normalization", tuple(S.NORMALIZATIONS))
        self.relevance = _check_choice(relevance, "relevance source", _RELEVANCE_SOURCES)
        self.reduce = _check_choice(reduce, "exemplar reduction", tuple(S.REDUCTIONS))

    def _select(self, ctx, pool, n, rng):
        terms: dict[str, np.ndarray] = {}
        weights = {"relevance": self.a, "uncertainty": self.b, "novelty": self.c}
        if self.a > 0:
            src = (
                self.relevance
                if self.relevance != "auto"
                else ("proxy" if ctx.proba is not None else "query")
            )
            rel = _relevance(ctx, pool, src, self.reduce, self.name)
            if src == "query" and self.form == "multiplicative":
                rel = (1.0 + rel) / 2.0  # cosine in [-1, 1] -> [0, 1]
            terms["relevance"] = rel
        if self.b > 0:
            fn = ctx.require("proba", self.name, "a function ids -> P(positive), for the uncertainty term")
            terms["uncertainty"] = S.entropy(_gather(fn, pool, ctx.block_size, "proba", self.name))
        if self.c > 0:
            vec = _pool_vectors(ctx, pool, self.name)
            lab = ctx.get_labelled_vectors()
            nov = S.distance_to_labelled(
                vec, np.empty((0, vec.shape[1])) if lab is None else lab, block_size=ctx.block_size
            )
            terms["novelty"] = np.clip(nov.astype(np.float64), 0.0, None)
        if self.d > 0:
            fn = ctx.require("model_scores", self.name, "a function ids -> external model scores, for d > 0")
            raw = np.concatenate(
                [np.asarray(fn(pool[i : i + ctx.block_size]), dtype=np.float64) for i in range(0, pool.size, ctx.block_size)]
            )  # [n_pool], NaN where the model gave no score
            if raw.shape != (pool.size,):
                raise InputError(f"ctx.model_scores(ids) must return [m] scores, got shape {raw.shape}")
            term = S.model_score_term(raw, self.model_term)  # [n_pool]
            terms["model"] = term + 1e-3 if self.form == "multiplicative" else term
            weights["model"] = self.d
        w = {k: weights[k] for k in terms}
        if self.form == "additive":
            val = S.combine(terms, w, normalize=self.normalize)
        else:
            val = S.combine_multiplicative(terms, w)
        return _top(pool, val, n, self.name)


class KCenterStrategy(Strategy):
    """Greedy k-center core-set batch (Sener & Savarese 2018, "Active Learning for Convolutional
    Neural Networks: A Core-Set Approach").

    Farthest-first from the labelled items (the initial centres), one blockwise pass over the pool per
    pick; see :func:`assay.select.diversity.k_center_greedy`. Without labels the first centre is drawn
    with ``rng``. Needs ``ctx.vectors``.
    """

    name = "k-center"

    def __init__(self, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.cache_bytes = _check_k(cache_bytes, "cache_bytes")

    def _select(self, ctx, pool, n, rng):
        vec = _pool_vectors(ctx, pool, self.name)
        pos, dist = _k_center_positions(
            pool,
            vec,
            n,
            labelled_vectors=ctx.get_labelled_vectors(),
            rng=rng,
            block_size=ctx.block_size,
            cache_bytes=self.cache_bytes,
        )
        return pool[pos], dist


class ClusterStrategy(Strategy):
    """Cluster-then-sample: k-means on the pool, the batch spread over clusters, best-scored first.

    Nguyen & Smeulders (2004), "Active learning using pre-clustering"; Zhdanov (2019), "Diverse
    mini-batch active learning". ``score="auto"`` ranks within a cluster by the proxy's entropy when
    ``ctx.proba`` is given, else by closeness to the centroid (``"representative"``); any uncertainty
    method name or ``"most-likely-positive"`` also works. See
    :func:`assay.select.diversity.cluster_sample` for ``allocation``. Needs ``ctx.vectors``.
    """

    name = "cluster"

    _SCORES = ("auto", "representative", "most-likely-positive", *S.UNCERTAINTY_METHODS)

    def __init__(
        self,
        *,
        n_clusters: int | None = None,
        allocation: str = "round-robin",
        score: str = "auto",
        niter: int = 20,
        nredo: int = 3,
    ) -> None:
        if n_clusters is not None:
            n_clusters = _check_k(n_clusters, "n_clusters")
        self.n_clusters = n_clusters
        self.allocation = _check_choice(allocation, "cluster allocation", ALLOCATIONS)
        self.score = _check_choice(score, "cluster score", self._SCORES)
        self.niter = _check_k(niter, "niter")
        self.nredo = _check_k(nredo, "nredo")

    def _select(self, ctx, pool, n, rng):
        vec = _pool_vectors(ctx, pool, self.name)
        score = self.score
        if score == "auto":
            score = "entropy" if ctx.proba is not None else "representative"
        k = min(self.n_clusters or n, pool.size)
        labels, sims = _kmeans_assign(vec, k, rng, self.niter, ctx.block_size, 256, self.nredo)
        if score == "representative":
            s = sims.astype(np.float64)
        else:
            fn = ctx.require("proba", self.name, f"a function ids -> P(positive), for score={score!r}")
            p = _gather(fn, pool, ctx.block_size, "proba", self.name)
            s = S.most_likely_positive(p) if score == "most-likely-positive" else S.uncertainty(p, score)
        s = _check_pool_scores(s, self.name)
        pos = _compute_cluster_allocation(labels, s, n, self.allocation)
        return pool[pos], s[pos]


class MMRStrategy(Strategy):
    """Maximal marginal relevance (Carbonell & Goldstein 1998): relevance against redundancy.

    ``lam * relevance - (1 - lam) * max cosine sim to the items already chosen`` (labelled items
    count as chosen), greedily. Relevance as in ``most-likely-positive``. Needs ``ctx.vectors``.
    """

    name = "mmr"

    def __init__(
        self,
        *,
        lam: float = 0.5,
        relevance: str = "auto",
        reduce: str = "max",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if not isinstance(lam, (int, float)) or not (0.0 <= lam <= 1.0):
            raise InputError(f"lam must be a number in [0, 1], got {lam!r}")
        self.lam = float(lam)
        self.relevance = _check_choice(relevance, "relevance source", _RELEVANCE_SOURCES)
        self.reduce = _check_choice(reduce, "exemplar reduction", tuple(S.REDUCTIONS))
        self.cache_bytes = _check_k(cache_bytes, "cache_bytes")

    def _select(self, ctx, pool, n, rng):
        rel = _relevance(ctx, pool, self.relevance, self.reduce, self.name)
        vec = _pool_vectors(ctx, pool, self.name)
        pos, gains = _mmr_positions(
            pool,
            vec,
            rel,
            n,
            lam=self.lam,
            labelled_vectors=ctx.get_labelled_vectors(),
            block_size=ctx.block_size,
            cache_bytes=self.cache_bytes,
        )
        return pool[pos], gains


# --------------------------------------------------------------------------------------------
# pool wrappers
# --------------------------------------------------------------------------------------------


class SealsStrategy(Strategy):
    """SEALS: run a base strategy on the k-nearest-neighbour pool of the labelled items.

    Coleman et al. (AAAI 2022), "Similarity Search for Efficient Active Learning and Search of Rare
    Concepts". Each call grows a :class:`~assay.select.pools.SealsPool` from the labelled ids it has
    not seen (``ctx.neighbors`` is the injected index search) and hands the base strategy that pool,
    so a round scores ``O(labelled * k)`` items instead of the corpus. The wrapper keeps only the
    pool's ids between rounds; call :meth:`reset` for a new concept. ``ctx.extra_candidates`` (e.g. a
    weak detector's medium-confidence band) join the pool for the call; ``ctx.pool_ids``, when given,
    restricts the result (an intersection).

    Where ``ctx.labelled_labels`` says which labelled items are positive, each positive gets
    ``k_positive`` neighbours (default ``4 * k``) instead of ``k``. Positives are rare (about a tenth of the
    labels here) and their concept clusters, so this widens the pool by a tenth or so where the boundary is:
    on CIFAR-10 (docs/mining.md) entropy under SEALS went from 0.975 to 0.984 of the full scan's recall.
    ``k_positive = k`` is the paper's pool.
    """

    #: ``k_positive`` is this many times ``k`` unless given.
    POSITIVE_FACTOR = 4

    def __init__(self, base: Strategy, *, k: int = 100, k_positive: int | None = None) -> None:
        if not isinstance(base, Strategy):
            raise InputError(f"base must be a Strategy, got {type(base).__name__}")
        self.base = base
        self.k = _check_k(k)
        self.k_positive = self.POSITIVE_FACTOR * self.k if k_positive is None else _check_k(k_positive, "k_positive")
        if self.k_positive < self.k:
            raise InputError(f"k_positive must be at least k ({self.k}), got {self.k_positive}")
        self.name = f"seals:{base.name}"
        self.pool = SealsPool(k=self.k, k_positive=self.k_positive)

    def reset(self) -> None:
        """Forget the pool (a new concept or a rebuilt index)."""
        self.pool = SealsPool(k=self.k, k_positive=self.k_positive)

    def select(self, ctx: SelectionContext, n: int, rng: np.random.Generator | int) -> Selection:
        if not isinstance(ctx, SelectionContext):
            raise InputError(f"ctx must be a SelectionContext, got {type(ctx).__name__}")
        nfn = ctx.require("neighbors", self.name, "a function (ids, k) -> (sims, nbr_ids)")
        positives = None
        if ctx.labelled_labels is not None:
            positives = ctx.labelled_ids[np.asarray(ctx.labelled_labels) == 1]
        if ctx.corpus_size:  # no more neighbours than the corpus holds
            self.pool.k_positive = min(self.k_positive, max(self.k, int(ctx.corpus_size)))
        self.pool.update(ctx.labelled_ids, nfn, non_representative=ctx.non_representative, positive_ids=positives)
        cand = self.pool.ids
        if ctx.extra_candidates is not None and ctx.extra_candidates.size:
            extra = ctx.extra_candidates[~np.isin(ctx.extra_candidates, ctx.labelled_ids)]
            nonrep = ctx.non_representative
            if nonrep is not None:
                nonrep = np.asarray(nonrep)
                if nonrep.dtype == bool:
                    inside = extra < nonrep.size
                    drop = np.zeros(extra.size, dtype=bool)
                    drop[inside] = nonrep[extra[inside]]
                    extra = extra[~drop]
                else:
                    extra = extra[~np.isin(extra, nonrep)]
            cand = np.union1d(cand, extra)
        if ctx.pool_ids is not None:
            cand = np.intersect1d(cand, ctx.pool_ids, assume_unique=True)
        if cand.size == 0:
            if ctx.corpus_size and ctx.labelled_ids.size >= ctx.corpus_size:
                raise EmptyPoolError(
                    f"every item of the corpus is labelled ({ctx.labelled_ids.size}): nothing is left to propose; "
                    "`assay harvest` or `assay export` next")
            raise EmptyPoolError(
                f"strategy {self.name!r}: the SEALS pool is empty (labelled items: {ctx.labelled_ids.size}); "
                + ("every neighbour of the labelled items is labelled, proposed and not yet answered, or set "
                   "aside; answer the open batches, or use a full-scan strategy (e.g. entropy)"
                   if ctx.labelled_ids.size else
                   "label a few items first, e.g. with most-likely-positive from a text query")
            )
        sel = self.base.select(ctx.replace(pool_ids=cand), n, rng)
        return dataclasses.replace(sel, strategy=self.name)

    def _select(self, ctx, pool, n, rng):  # pragma: no cover - select() is overridden
        return self.base._select(ctx, pool, n, rng)


class SubsampleStrategy(Strategy):
    """Run a base strategy on a uniform random subsample of the pool (Ertekin et al. 2007,
    "Learning on the border": a random subset of the pool is searched instead of the whole pool).

    Give ``size`` (items, default 10,000) or ``fraction``; drawn with the ``rng`` of the call.
    """

    def __init__(self, base: Strategy, *, size: int | None = None, fraction: float | None = None) -> None:
        if not isinstance(base, Strategy):
            raise InputError(f"base must be a Strategy, got {type(base).__name__}")
        if size is None and fraction is None:
            size = 10_000
        if size is not None and fraction is not None:
            raise InputError(f"give one of size or fraction, got size={size!r}, fraction={fraction!r}")
        if size is not None:
            size = _check_k(size, "size")
        elif not isinstance(fraction, (int, float)) or not (0.0 < fraction <= 1.0):
            raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
        self.base = base
        self.size = size
        self.fraction = fraction
        self.name = f"subsample:{base.name}"

    def select(self, ctx: SelectionContext, n: int, rng: np.random.Generator | int) -> Selection:
        if not isinstance(ctx, SelectionContext):
            raise InputError(f"ctx must be a SelectionContext, got {type(ctx).__name__}")
        rng = _as_rng(rng)
        pool = ctx.require("pool_ids", self.name, "the candidate pool")
        if pool.size == 0:
            raise EmptyPoolError(f"strategy {self.name!r}: the pool is empty, there is nothing to select")
        sub = subsample_pool(pool, rng=rng, size=self.size, fraction=self.fraction)
        sel = self.base.select(ctx.replace(pool_ids=sub), n, rng)
        return dataclasses.replace(sel, strategy=self.name)

    def _select(self, ctx, pool, n, rng):  # pragma: no cover - select() is overridden
        return self.base._select(ctx, pool, n, rng)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

#: Base strategy name -> class.
STRATEGIES: dict[str, type[Strategy]] = {
    "random": RandomStrategy,
    "entropy": EntropyStrategy,
    "margin": MarginStrategy,
    "least-confidence": LeastConfidenceStrategy,
    "most-likely-positive": MostLikelyPositiveStrategy,
    "disagreement": DisagreementStrategy,
    "novelty": NoveltyStrategy,
    "information-density": InformationDensityStrategy,
    "value": ValueStrategy,
    "k-center": KCenterStrategy,
    "cluster": ClusterStrategy,
    "mmr": MMRStrategy,
}

#: Pool wrapper prefix -> class, used as ``"<prefix>:<base strategy>"``.
POOL_WRAPPERS: dict[str, type[Strategy]] = {"seals": SealsStrategy, "subsample": SubsampleStrategy}


def available_strategies() -> list[str]:
    """Every valid strategy name: the base strategies, then ``seals:<base>`` and ``subsample:<base>``."""
    names = list(STRATEGIES)
    for prefix in POOL_WRAPPERS:
        names += [f"{prefix}:{b}" for b in STRATEGIES]
    return names


def get_strategy(name: str, *, pool_params: dict[str, Any] | None = None, **params: Any) -> Strategy:
    """A strategy by name, e.g. ``get_strategy("seals:k-center", pool_params={"k": 50})``.

    Parameters
    ----------
    name : str
        A base name (``entropy``) or a wrapped one (``seals:entropy``, ``subsample:entropy``).
    pool_params : dict, optional
        Parameters of the pool wrapper (``k`` for ``seals``; ``size`` / ``fraction`` for ``subsample``).
    **params
        Parameters of the base strategy (e.g. ``lam=0.7`` for ``mmr``).

    Raises
    ------
    UnknownNameError
        For an unknown name; the message lists every valid name.
    InputError
        For parameters the strategy does not take, or bad values.
    """
    if not isinstance(name, str):
        raise InputError(f"strategy name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    prefix, _, base_name = key.rpartition(":")
    base_name = base_name.replace("_", "-")
    if base_name not in STRATEGIES or (prefix and prefix not in POOL_WRAPPERS):
        raise UnknownNameError("strategy", name, available_strategies())
    if pool_params and not prefix:
        raise InputError(f"pool_params are for seals:/subsample: strategies, got them for {name!r}")
    base = _construct(STRATEGIES[base_name], base_name, params)
    if not prefix:
        return base
    return _construct(POOL_WRAPPERS[prefix], prefix, dict(pool_params or {}), base)


def _accepted_params(cls: type, n_positional: int) -> list[str] | None:
    """The keyword parameters ``cls(...)`` takes after ``n_positional`` positional ones; None if it takes any."""
    import inspect

    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    names = []
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or i < n_positional:
            continue
        names.append(pname)
    return names


def _construct(cls: type, label: str, params: dict[str, Any], *args: Any) -> Any:
    accepted = _accepted_params(cls, len(args))
    if accepted is not None:
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes none"
            raise InputError(f"strategy {label!r} does not take parameter(s) {', '.join(unknown)}; {takes}")
    try:
        return cls(*args, **params)
    except TypeError as exc:
        raise InputError(f"strategy {label!r} does not take parameter(s) {sorted(params)}: {exc}") from None
