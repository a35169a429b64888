"""Candidate pools: which unlabelled items a selection round scores at all.

* :func:`full_pool` — every unlabelled representative item (the full scan).
* :func:`seals_pool` / :class:`SealsPool` — SEALS (Coleman et al., "Similarity Search for Efficient
  Active Learning and Search of Rare Concepts", AAAI 2022): the union of the ``k`` nearest
  neighbours of every labelled item. The pool grows each round from the *newly* labelled items only,
  so a round costs ``O(new labels * k)`` neighbour lookups plus scoring the pool, independent of the
  corpus size.
* :func:`subsample_pool` — a uniform random subsample (the cheap baseline, Ertekin et al. 2007).

Everything speaks global int64 item ids and returns sorted, unique id arrays. Pools never hold an
index or embeddings: the caller injects a ``neighbors_fn(ids, k) -> (sims [m, k], nbr_ids [m, k])``
(an index search or a kNN-graph lookup; FAISS conventions: rows sorted by decreasing similarity,
missing neighbours marked with id ``-1``). :func:`exact_neighbors` is a brute-force ``neighbors_fn``
over an in-memory matrix, the reference for tests and fine for small corpora.

Non-representative duplicates (items that a dedup step folded into another item) are given either
as a boolean mask indexed by item id (``mask[id]`` is True for a non-representative) or as an array
of their ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from assay.errors import EmptyPoolError, InputError
from assay.select.scores import (
    _block_f32,
    _check_block_size,
    _check_ids,
    _iter_blocks,
    _small_vectors,
    _sorted_unique,
)

__all__ = [
    "NeighborsFn",
    "PoolStats",
    "full_pool",
    "subsample_pool",
    "seals_pool",
    "SealsPool",
    "exact_neighbors",
    "CachedNeighbors",
]

#: ``neighbors_fn(ids [m] int64, k) -> (sims [m, k] float, nbr_ids [m, k] int64)``.
NeighborsFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PoolStats:
    """Size of a candidate pool and how much of the corpus a round scans.

    Attributes
    ----------
    size : int
        Items in the pool.
    scanned : int
        Items whose scores a round computes (the pool size).
    corpus_size : int or None
    scanned_fraction : float or None
        ``scanned / corpus_size``; None when the corpus size is unknown.
    """

    size: int
    scanned: int
    corpus_size: int | None
    scanned_fraction: float | None

    @classmethod
    def of(cls, size: int, corpus_size: int | None) -> "PoolStats":
        frac = None if not corpus_size else size / float(corpus_size)
        return cls(size=int(size), scanned=int(size), corpus_size=corpus_size, scanned_fraction=frac)


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _excluded(ids: np.ndarray, non_representative: Any | None) -> np.ndarray:
    """Boolean ``[len(ids)]``: True where the id is a non-representative duplicate."""
    if non_representative is None:
        return np.zeros(ids.shape[0], dtype=bool)
    nr = np.asarray(non_representative)
    if nr.dtype == bool:
        if nr.ndim != 1:
            raise InputError(f"non_representative mask must be 1-D [corpus_size], got shape {nr.shape}")
        if ids.size and ids.max() >= nr.shape[0]:
            raise InputError(
                f"non_representative mask has {nr.shape[0]} entries but ids go up to {int(ids.max())}"
            )
        return nr[ids]
    nr_ids = _check_ids(nr, "non_representative", unique=False)
    return np.isin(ids, nr_ids)


def full_pool(
    corpus_ids: Any, *, labelled_ids: Any | None = None, non_representative: Any | None = None
) -> np.ndarray:
    """All unlabelled representative items: ``corpus - labelled - non-representatives``.

    Parameters
    ----------
    corpus_ids : array [n_corpus] int64
    labelled_ids : array [n_labelled] int64, optional
    non_representative : bool mask [corpus_size] or array of ids, optional

    Returns
    -------
    ndarray [n_pool] int64, sorted
    """
    ids = _sorted_unique(_check_ids(corpus_ids, "corpus_ids", unique=False))  # [n_corpus] sorted
    if labelled_ids is not None:
        lab = _check_ids(labelled_ids, "labelled_ids", unique=False)
        ids = ids[~np.isin(ids, lab)]
    return ids[~_excluded(ids, non_representative)]


def subsample_pool(
    pool_ids: Any,
    *,
    rng: np.random.Generator | int,
    size: int | None = None,
    fraction: float | None = None,
) -> np.ndarray:
    """A uniform random subsample of the pool, without replacement (Ertekin et al. 2007 baseline).

    Give exactly one of ``size`` (an item count; capped at the pool size) or ``fraction`` in
    ``(0, 1]`` (rounded up, at least one item).

    Returns
    -------
    ndarray [<= size] int64, sorted
    """
    from assay.select.diversity import _as_rng

    ids = _check_ids(pool_ids, "pool_ids")
    if ids.size == 0:
        raise EmptyPoolError("the pool is empty: there is nothing to subsample")
    if (size is None) == (fraction is None):
        raise InputError(f"give exactly one of size or fraction, got size={size!r}, fraction={fraction!r}")
    if size is not None:
        m = _check_k(size, "size")
    else:
        if not isinstance(fraction, (int, float, np.floating)) or not (0.0 < float(fraction) <= 1.0):
            raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
        m = max(1, int(np.ceil(float(fraction) * ids.size)))
    rng = _as_rng(rng)
    m = min(m, ids.size)
    pick = rng.choice(ids.size, size=m, replace=False)  # [m] positions
    return np.sort(ids[pick])


def _check_neighbor_result(result: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(result, tuple) or len(result) != 2:
        raise InputError("neighbors_fn must return a tuple (sims [m, k], nbr_ids [m, k])")
    sims = np.asarray(result[0])
    nbrs = np.asarray(result[1])
    if nbrs.ndim != 2 or nbrs.shape[0] != m or sims.shape != nbrs.shape:
        raise InputError(
            f"neighbors_fn must return sims and ids of shape [{m}, k], got {sims.shape} and {nbrs.shape}"
        )
    if nbrs.dtype.kind not in "iu":
        raise InputError(f"neighbors_fn must return integer neighbour ids, got dtype {nbrs.dtype}")
    return sims, nbrs.astype(np.int64, copy=False)


def _first_k_others(query_ids: np.ndarray, nbrs: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``[m, kk]``: each row's first ``k`` valid neighbours other than the query itself."""
    ok = (nbrs >= 0) & (nbrs != query_ids[:, None])  # [m, kk]: drop FAISS -1 and self-matches
    return ok & (np.cumsum(ok, axis=1) <= k)  # [m, kk]


class SealsPool:
    """Incremental SEALS candidate pool (Coleman et al. 2022).

    The pool is the union of the ``k`` nearest neighbours of every labelled item, minus labelled
    items, minus non-representative duplicates, minus self-matches. Each :meth:`update` looks up
    neighbours for the labelled ids it has not seen before and nothing else; ids seen in earlier
    rounds cost nothing, so the caller may pass all labelled ids every round. Items labelled since
    leave the pool. The object holds ids only: no index, no vectors.

    Parameters
    ----------
    k : int
        Neighbours per labelled item (the paper uses 100). ``neighbors_fn`` is asked for ``k + 1``
        so that a self-match can be dropped and ``k`` others remain.
    k_positive : int, optional
        Neighbours per labelled *positive* given to :meth:`update` as ``positive_ids`` (default ``k``).
        A rare concept's positives are few and clustered, so a wider neighbourhood around them costs little
        and holds most of the boundary that uncertainty strategies look for (see :class:`SealsStrategy
        <assay.select.strategies.SealsStrategy>`). An item is looked up once, with the label it had then.

    Attributes
    ----------
    ids : ndarray [size] int64
        The current pool, sorted.
    labelled_ids : ndarray int64
        Every labelled id processed so far, sorted.
    n_queries : int
        Labelled items whose neighbours were looked up so far.
    """

    def __init__(self, *, k: int = 100, k_positive: int | None = None) -> None:
        self.k = _check_k(k)
        self.k_positive = self.k if k_positive is None else _check_k(k_positive, "k_positive")
        self._labelled = np.empty(0, dtype=np.int64)
        self._pool = np.empty(0, dtype=np.int64)
        self.n_queries = 0

    def __repr__(self) -> str:
        kp = f", k_positive={self.k_positive}" if self.k_positive != self.k else ""
        return f"SealsPool(k={self.k}{kp}, size={self.size}, labelled={self._labelled.size})"

    @property
    def ids(self) -> np.ndarray:
        return self._pool

    @property
    def labelled_ids(self) -> np.ndarray:
        return self._labelled

    @property
    def size(self) -> int:
        return int(self._pool.size)

    def stats(self, corpus_size: int | None = None) -> PoolStats:
        """Pool size and fraction of a corpus of ``corpus_size`` items that a round scans."""
        if corpus_size is not None:
            corpus_size = _check_k(corpus_size, "corpus_size")
        return PoolStats.of(self.size, corpus_size)

    def scanned_fraction(self, corpus_size: int) -> float:
        """``size / corpus_size``: the fraction of the corpus whose scores a round computes."""
        return float(self.stats(corpus_size).scanned_fraction)

    def update(
        self, labelled_ids: Any, neighbors_fn: NeighborsFn, *, non_representative: Any | None = None,
        positive_ids: Any | None = None,
    ) -> np.ndarray:
        """Grow the pool from the labelled ids not seen before; drop items labelled since.

        Parameters
        ----------
        labelled_ids : array [n_labelled] int64
            Newly labelled ids (ids already processed are skipped, so all labelled ids also work).
        neighbors_fn : callable ``(ids [m], k) -> (sims [m, k], nbr_ids [m, k])``
        non_representative : bool mask [corpus_size] or array of ids, optional
        positive_ids : array int64, optional
            Labelled positives: those not seen before get ``k_positive`` neighbours instead of ``k``.

        Returns
        -------
        ndarray int64, sorted
            The ids this update added to the pool.
        """
        lab = _sorted_unique(_check_ids(labelled_ids, "labelled_ids", unique=False))  # [L] sorted
        if not callable(neighbors_fn):
            raise InputError(f"neighbors_fn must be callable (ids, k) -> (sims, ids), got {neighbors_fn!r}")
        new = np.setdiff1d(lab, self._labelled, assume_unique=True)  # [m] never seen
        found = np.empty(0, dtype=np.int64)
        if new.size:
            wide = np.zeros(new.size, dtype=bool)  # [m] positives that get k_positive neighbours
            if positive_ids is not None and self.k_positive != self.k:
                wide = np.isin(new, _check_ids(positive_ids, "positive_ids", unique=False))
            parts = []
            for ids, k in ((new[~wide], self.k), (new[wide], self.k_positive)):
                if ids.size:
                    _, nbrs = _check_neighbor_result(neighbors_fn(ids, k + 1), ids.size)  # [m, k+1]
                    parts.append(nbrs[_first_k_others(ids, nbrs, k)])  # [<= m*k]
            found = _sorted_unique(np.concatenate(parts))
            found = found[~_excluded(found, non_representative)]
            self.n_queries += int(new.size)
        self._labelled = _sorted_unique(np.concatenate([self._labelled, new]))
        before = self._pool
        grown = _sorted_unique(np.concatenate([before, found])) if found.size else before
        self._pool = np.setdiff1d(grown, self._labelled, assume_unique=True)  # sorted
        return np.setdiff1d(self._pool, before, assume_unique=True)


def seals_pool(
    labelled_ids: Any, neighbors_fn: NeighborsFn, *, k: int = 100, non_representative: Any | None = None
) -> np.ndarray:
    """One-shot SEALS pool: the union of the ``k`` nearest neighbours of every labelled item.

    Excludes labelled items, non-representative duplicates and self-matches. Equal to the
    :attr:`SealsPool.ids` after feeding the same labelled ids in any number of rounds.

    Returns
    -------
    ndarray [size] int64, sorted
    """
    pool = SealsPool(k=k)
    pool.update(labelled_ids, neighbors_fn, non_representative=non_representative)
    return pool.ids


def exact_neighbors(
    vectors: Any, ids: Any | None = None, *, block_size: int = 8192, query_block: int = 1024
) -> NeighborsFn:
    """A brute-force ``neighbors_fn`` by inner product over an in-memory matrix.

    The reference for tests and a fine choice for corpora up to ~1e5 items; use an index beyond.

    Parameters
    ----------
    vectors : array-like [n_corpus, dim]
        L2-normalised embeddings.
    ids : array [n_corpus] int64, optional
        Global id of each row; row ``i`` has id ``i`` when omitted.

    Returns
    -------
    callable ``(query_ids [m], k) -> (sims [m, k] float32, nbr_ids [m, k] int64)``
        Rows sorted by decreasing similarity, ties by smaller id; padded with ``-inf`` / ``-1`` when
        ``k`` exceeds the corpus. The query itself is included (similarity 1) like an index search.
    """
    mat = _small_vectors(vectors, "vectors")  # [N, dim] float32
    N = mat.shape[0]
    row_ids = np.arange(N, dtype=np.int64) if ids is None else _check_ids(ids, "ids")
    if row_ids.shape[0] != N:
        raise InputError(f"ids must have one entry per vector row ({N}), got {row_ids.shape[0]}")
    order = np.argsort(row_ids, kind="stable")
    sorted_ids = row_ids[order]
    block_size = _check_block_size(block_size)
    query_block = _check_block_size(query_block)

    def neighbors_fn(query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _check_ids(query_ids, "query_ids", unique=False)
        k = _check_k(k)
        pos = np.searchsorted(sorted_ids, q)
        if q.size and (np.any(pos >= N) or np.any(sorted_ids[np.minimum(pos, N - 1)] != q)):
            raise InputError("query_ids contains ids that are not in the corpus")
        rows = order[pos]  # [m]
        out_s = np.full((q.size, k), -np.inf, dtype=np.float32)  # [m, k]
        out_i = np.full((q.size, k), -1, dtype=np.int64)  # [m, k]
        for qs, qe in _iter_blocks(q.size, query_block):
            qv = mat[rows[qs:qe]]  # [mq, dim]
            best_s = np.full((qe - qs, 0), -np.inf, dtype=np.float32)
            best_i = np.full((qe - qs, 0), -1, dtype=np.int64)
            for start, stop in _iter_blocks(N, block_size):
                s = qv @ _block_f32(mat, start, stop).T  # [mq, block]
                cand_s = np.concatenate([best_s, s], axis=1)  # [mq, k + block]
                cand_i = np.concatenate([best_i, np.broadcast_to(row_ids[start:stop], s.shape)], axis=1)
                sel = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]  # [mq, k]: sim desc, id asc
                best_s = np.take_along_axis(cand_s, sel, axis=1)
                best_i = np.take_along_axis(cand_i, sel, axis=1)
            out_s[qs:qe, : best_s.shape[1]] = best_s
            out_i[qs:qe, : best_i.shape[1]] = best_i
        return out_s, out_i

    return neighbors_fn


class CachedNeighbors:
    """A caller-owned memo in front of a ``neighbors_fn``, keyed by item id (and ``k``).

    Neighbourhoods do not change while the index does not, so a mining loop can keep one of these
    per index for the whole session and ask each round only for the items it has not seen (e.g. the
    density of SEALS pool items). Strategies never hold one themselves; drop it when the index is
    rebuilt. Each ``k`` asked for has its own table.

    Parameters
    ----------
    neighbors_fn : callable ``(ids [m], k) -> (sims [m, k], nbr_ids [m, k])``

    Attributes
    ----------
    n_computed : int
        Ids looked up through ``neighbors_fn`` so far (cache misses, over every ``k``).
    """

    def __init__(self, neighbors_fn: NeighborsFn) -> None:
        if not callable(neighbors_fn):
            raise InputError(f"neighbors_fn must be callable, got {neighbors_fn!r}")
        self._fn = neighbors_fn
        self._tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # k -> (ids, sims, nbrs)
        self.n_computed = 0

    def __len__(self) -> int:
        return int(sum(t[0].size for t in self._tables.values()))

    def __call__(self, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _check_ids(ids, "ids", unique=False)
        k = _check_k(k)
        c_ids, c_sims, c_nbrs = self._tables.get(
            k,
            (
                np.empty(0, dtype=np.int64),
                np.empty((0, k), dtype=np.float32),
                np.empty((0, k), dtype=np.int64),
            ),
        )
        pos = np.searchsorted(c_ids, q)  # [m]
        hit = pos < c_ids.size
        hit[hit] = c_ids[pos[hit]] == q[hit]
        miss = _sorted_unique(q[~hit])
        if miss.size:
            sims, nbrs = _check_neighbor_result(self._fn(miss, k), miss.size)  # [n_miss, k]
            self.n_computed += int(miss.size)
            all_ids = np.concatenate([c_ids, miss])
            order = np.argsort(all_ids, kind="stable")
            c_ids = all_ids[order]
            c_sims = np.concatenate([c_sims, sims.astype(np.float32)])[order]  # [c, k]
            c_nbrs = np.concatenate([c_nbrs, nbrs])[order]  # [c, k]
            self._tables[k] = (c_ids, c_sims, c_nbrs)
            pos = np.searchsorted(c_ids, q)
        return c_sims[pos], c_nbrs[pos]
