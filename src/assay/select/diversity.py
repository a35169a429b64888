"""Batch selection: plain top-n and three diverse-batch methods.

All functions take the pool as global ``ids`` ``[n_pool]`` with the matching rows of ``vectors``
``[n_pool, dim]`` (L2-normalised; float16 at rest is fine) and return **selected global ids**: int64,
unique, drawn from ``ids``, at most ``n`` of them, in selection order, and the same for the same input
and seed. When ``n`` is at least the pool size the whole pool comes back (ordered by the method).

``vectors`` may be any array-like with ``shape``, ``dtype`` and row indexing by slice and by an
integer array: an ``ndarray``, an ``np.memmap``, or a lazy view that gathers rows from an embedding
store. Vector work is done blockwise in float32. A pool whose float32 copy fits in ``cache_bytes``
(default 1 GiB, i.e. a million 256-d vectors) is converted once per call and reused across the
greedy passes; a larger pool is streamed from ``vectors`` on every pass. Nothing is kept between
calls.

Distances are cosine distances ``1 - <x, y>`` (for unit vectors a monotone function of the Euclidean
distance, so the greedy choices equal those of the Euclidean k-center).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from assay.errors import EmptyPoolError, InputError, UnknownNameError
from assay.select.scores import (
    DEFAULT_BLOCK_SIZE,
    _block_f32,
    _canonical,
    _check_block_size,
    _check_ids,
    _check_scores,
    _check_vectors,
    _compute_max_sim,
    _iter_blocks,
    _small_vectors,
)

__all__ = ["top_n", "k_center_greedy", "cluster_sample", "mmr", "ALLOCATIONS", "DEFAULT_CACHE_BYTES"]

#: A pool whose float32 copy is at most this many bytes is converted once per call (1 GiB).
DEFAULT_CACHE_BYTES = 1 << 30

#: Ways to spread a batch over clusters in :func:`cluster_sample`.
ALLOCATIONS = ("round-robin", "proportional")


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    return int(n)


def _as_rng(rng: Any, *, allow_none: bool = False) -> np.random.Generator | None:
    """Accept a ``np.random.Generator`` or an int seed (``None`` only where documented)."""
    if rng is None and allow_none:
        return None
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise InputError(f"rng must be a numpy.random.Generator or a non-negative int seed, got {rng!r}")


def _check_pool(ids: Any, vectors: Any | None = None) -> tuple[np.ndarray, Any]:
    ids = _check_ids(ids, "ids")
    if ids.size == 0:
        raise EmptyPoolError("the pool is empty: there is nothing to select from")
    if vectors is not None:
        vectors = _check_vectors(vectors)
        if vectors.shape[0] != ids.shape[0]:
            raise InputError(
                f"vectors must have one row per pool id ({ids.shape[0]}), got shape {tuple(vectors.shape)}"
            )
    return ids, vectors


def _take_rows(vectors: Any, positions: np.ndarray) -> np.ndarray:
    """Rows at sorted ``positions`` as float32 ``[len(positions), dim]``."""
    return np.ascontiguousarray(vectors[positions], dtype=np.float32)


def _maybe_cache(vectors: Any, cache_bytes: int, block_size: int) -> Any:
    """A float32 in-memory copy of a pool small enough for ``cache_bytes``; else the input, streamed."""
    n, d = vectors.shape
    if isinstance(vectors, np.ndarray) and not isinstance(vectors, np.memmap) and vectors.dtype == np.float32:
        return vectors
    if n * d * 4 > cache_bytes:
        return vectors
    out = np.empty((n, d), dtype=np.float32)  # [n_pool, dim]
    for start, stop in _iter_blocks(n, block_size):
        out[start:stop] = vectors[start:stop]  # float16 -> float32 once
    return out


def _labelled_f32(labelled_vectors: Any | None, dim: int) -> np.ndarray | None:
    if labelled_vectors is None:
        return None
    arr = np.asarray(labelled_vectors)
    if arr.size == 0:
        return None
    return _small_vectors(arr, "labelled_vectors", dim=dim)  # [L, dim]


# --------------------------------------------------------------------------------------------
# top-n
# --------------------------------------------------------------------------------------------


def _top_positions(scores: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` highest scores, ties broken by smaller id; O(N) plus the tied block."""
    N = scores.shape[0]
    n = min(n, N)
    if n == N:
        cand = np.arange(N)
    else:
        part = np.argpartition(-scores, n - 1)[:n]  # [n]: some n largest, unordered
        threshold = scores[part].min()
        cand = np.flatnonzero(scores >= threshold)  # [>= n]: every item tied at the boundary too
    order = np.lexsort((ids[cand], -scores[cand]))  # by score desc, then id asc
    return cand[order[:n]]  # [n]


def top_n(ids: Any, scores: Any, n: int) -> np.ndarray:
    """The ``n`` highest-scoring ids (the non-diverse baseline).

    Ties are broken by the smaller id, so the result does not depend on the order of the pool.

    Parameters
    ----------
    ids : array [n_pool] int64
    scores : array [n_pool]
        Finite scores, higher is better (NaN raises :class:`InputError` naming how many).
    n : int

    Returns
    -------
    ndarray [min(n, n_pool)] int64
        In descending score order.
    """
    ids, _ = _check_pool(ids)
    s = _check_scores(scores, "scores", n=ids.shape[0])
    return ids[_top_positions(s, ids, _check_n(n))]


# --------------------------------------------------------------------------------------------
# greedy k-center (core-set)
# --------------------------------------------------------------------------------------------


def _compute_k_center(
    vectors: Any,
    n: int,
    labelled: np.ndarray | None,
    first: int,
    block_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy farthest-first; returns (positions [n], distance of each pick at its time [n])."""
    N = vectors.shape[0]
    n = min(n, N)
    if labelled is not None:
        min_dist = 1.0 - _compute_max_sim(vectors, labelled, block_size)  # [N] float32
    else:
        min_dist = np.full(N, np.inf, dtype=np.float32)  # [N]: no centre yet
    picks = np.empty(n, dtype=np.int64)  # [n]
    dists = np.empty(n, dtype=np.float64)  # [n]
    for t in range(n):
        j = first if (t == 0 and labelled is None) else int(np.argmax(min_dist))
        picks[t] = j
        dists[t] = 2.0 if np.isinf(min_dist[j]) else float(min_dist[j])  # first centre: max cosine distance
        min_dist[j] = -np.inf  # never again
        if t == n - 1:
            break
        x = np.asarray(vectors[j : j + 1], dtype=np.float32)[0]  # [dim]
        for start, stop in _iter_blocks(N, block_size):
            d = 1.0 - _block_f32(vectors, start, stop) @ x  # [block]
            np.minimum(min_dist[start:stop], d, out=min_dist[start:stop])  # running min; -inf stays
    return picks, dists


def k_center_greedy(
    ids: Any,
    vectors: Any,
    n: int,
    *,
    labelled_vectors: Any | None = None,
    rng: np.random.Generator | int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> np.ndarray:
    """Greedy k-center (core-set) batch: repeatedly take the item farthest from every centre.

    Sener & Savarese (2018), "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
    greedy 2-approximation. The centres start as the labelled items, so the batch covers the parts of
    the pool the labelled set does not. A running minimum-distance vector ``[n_pool]`` is updated after
    each pick with one blockwise pass over the pool; no ``n_pool x n_pool`` matrix is formed. Memory is
    ``O(n_pool + block_size * dim)`` (plus the optional float32 cache); time ``O(n * n_pool * dim)``.

    Parameters
    ----------
    ids : array [n_pool] int64
    vectors : array-like [n_pool, dim]
        Pool embeddings, row ``i`` for ``ids[i]``.
    n : int
        Batch size.
    labelled_vectors : array [n_labelled, dim], optional
        Already-labelled items: the initial centres. When absent or empty, the first centre is drawn
        uniformly with ``rng`` (or is the first pool item when ``rng`` is None).
    rng : numpy.random.Generator or int, optional
    block_size, cache_bytes : int
        Rows per float32 block; size under which the pool is converted to float32 once.

    Returns
    -------
    ndarray [min(n, n_pool)] int64
        Selected ids in pick order. Ties in the farthest distance go to the earlier pool position.
    """
    positions, _ = _k_center_positions(
        ids,
        vectors,
        n,
        labelled_vectors=labelled_vectors,
        rng=rng,
        block_size=block_size,
        cache_bytes=cache_bytes,
    )
    return np.asarray(ids, dtype=np.int64)[positions]


def _k_center_positions(ids, vectors, n, *, labelled_vectors, rng, block_size, cache_bytes):
    ids, vectors = _check_pool(ids, vectors)
    n = _check_n(n)
    block_size = _check_block_size(block_size)
    rng = _as_rng(rng, allow_none=True)
    labelled = _labelled_f32(labelled_vectors, vectors.shape[1])
    first = 0
    if labelled is None and rng is not None:
        first = int(rng.integers(ids.shape[0]))
    vectors = _maybe_cache(vectors, cache_bytes, block_size)
    return _compute_k_center(vectors, n, labelled, first, block_size)


# --------------------------------------------------------------------------------------------
# cluster-then-sample
# --------------------------------------------------------------------------------------------


def _kmeans_assign(
    vectors: Any,
    k: int,
    rng: np.random.Generator,
    niter: int,
    block_size: int,
    max_points_per_centroid: int,
    nredo: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (FAISS) trained on a seeded sample; returns (labels [N], sim to centroid [N])."""
    import faiss  # lazy: heavy import

    N, d = vectors.shape
    m = min(N, k * max_points_per_centroid)
    sample = np.sort(rng.choice(N, size=m, replace=False)) if m < N else np.arange(N)  # [m]
    train = _take_rows(vectors, sample)  # [m, dim] float32
    seed = int(rng.integers(2**31 - 1))
    extra = {}
    if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):  # newer FAISS; older ones: random init
        extra["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(m // k + 1, 1),
        **extra,
    )
    km.train(train)
    labels = np.empty(N, dtype=np.int64)  # [N]
    sims = np.empty(N, dtype=np.float32)  # [N]
    for start, stop in _iter_blocks(N, block_size):
        sim, lab = km.index.search(_block_f32(vectors, start, stop), 1)  # [block, 1] inner products, labels
        labels[start:stop] = lab[:, 0]
        sims[start:stop] = sim[:, 0]
    return labels, sims


def _compute_cluster_allocation(
    labels: np.ndarray, scores: np.ndarray, n: int, allocation: str
) -> np.ndarray:
    """Spread ``n`` picks over clusters; returns positions in selection order."""
    N = labels.shape[0]
    pos = np.arange(N)
    order = np.lexsort((pos, -scores, labels))  # [N]: by cluster, then score desc, then position
    lab_sorted = labels[order]  # [N]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])  # [n_clusters_nonempty]
    sizes = np.diff(np.r_[starts, N])  # [n_clusters_nonempty]
    rank_in_cluster = np.empty(N, dtype=np.int64)  # [N]
    rank_in_cluster[order] = pos - np.repeat(starts, sizes)
    # clusters visited in the order of their best score (ties by cluster label)
    best = scores[order[starts]]  # [n_clusters_nonempty]
    cluster_rank = np.empty(labels.max() + 1, dtype=np.int64)
    visit = np.argsort(-best, kind="stable")  # [n_clusters_nonempty]: visiting order
    ranks = np.empty_like(visit)
    ranks[visit] = np.arange(visit.size)  # inverse permutation: cluster -> its place in the visit
    cluster_rank[lab_sorted[starts]] = ranks
    if allocation == "round-robin":
        # round r takes the r-th best item of every cluster, clusters in order of their best item
        key = np.lexsort((cluster_rank[labels], rank_in_cluster))  # [N]
        return key[:n]
    # proportional: quota_c = n * size_c / N by largest remainder (Hamilton), best items of each cluster
    exact = n * sizes / N  # [n_clusters_nonempty]
    quota = np.floor(exact).astype(np.int64)
    rest = n - int(quota.sum())
    if rest > 0:
        frac_order = np.lexsort((np.arange(sizes.size), -(exact - quota)))
        quota[frac_order[:rest]] += 1
    quota_by_label = np.zeros(labels.max() + 1, dtype=np.int64)
    quota_by_label[lab_sorted[starts]] = quota
    chosen = np.flatnonzero(rank_in_cluster < quota_by_label[labels])  # [n]
    return chosen[np.lexsort((chosen, -scores[chosen]))]  # by score desc, then position


def cluster_sample(
    ids: Any,
    vectors: Any,
    n: int,
    *,
    rng: np.random.Generator | int,
    scores: Any | None = None,
    n_clusters: int | None = None,
    allocation: str = "round-robin",
    niter: int = 20,
    nredo: int = 3,
    max_points_per_centroid: int = 256,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> np.ndarray:
    """Cluster-then-sample: k-means on the pool, then the batch spread over the clusters.

    Nguyen & Smeulders (2004) "Active learning using pre-clustering"; Zhdanov (2019) "Diverse
    mini-batch active learning". Spherical k-means (FAISS, cosine, k-means++ initialisation where the
    installed FAISS has it) is trained on a seeded sample of at most
    ``n_clusters * max_points_per_centroid`` pool items and every pool item is then assigned to its
    nearest centroid blockwise. k-means finds a local optimum; ``nredo`` restarts keep the best.

    Allocation
        ``round-robin`` (default): clusters are ordered by their best score; round ``r`` takes the
        ``r``-th best item of every cluster in that order until ``n`` items are chosen. With
        ``n_clusters == n`` (the default) that is the best item of each cluster: the batch covers
        the pool's modes and no mode gets two picks before every mode has one.
        ``proportional``: cluster ``c`` gets ``round(n * size_c / n_pool)`` picks (largest-remainder
        rounding, the quotas sum to ``n``), its best-scored items; the batch mirrors the pool's
        distribution, so large clusters get more.

    Parameters
    ----------
    ids : array [n_pool] int64
    vectors : array-like [n_pool, dim]
    n : int
    rng : numpy.random.Generator or int
        Seeds the training sample and k-means initialisation.
    scores : array [n_pool], optional
        Per-item score (e.g. uncertainty), higher is better. Without it, the item closest to its
        centroid (the most representative) is best.
    n_clusters : int, optional
        Default ``n``; capped at the pool size.
    allocation : {"round-robin", "proportional"}
    niter, nredo, max_points_per_centroid, block_size : int

    Returns
    -------
    ndarray [min(n, n_pool)] int64
    """
    ids, vectors = _check_pool(ids, vectors)
    n = _check_n(n)
    rng = _as_rng(rng)
    block_size = _check_block_size(block_size)
    alloc = _canonical(allocation)
    if alloc not in ALLOCATIONS:
        raise UnknownNameError("cluster allocation", allocation, list(ALLOCATIONS))
    k = n if n_clusters is None else n_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    for name, val in (
        ("niter", niter),
        ("nredo", nredo),
        ("max_points_per_centroid", max_points_per_centroid),
    ):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise InputError(f"{name} must be a positive integer, got {val!r}")
    N = ids.shape[0]
    s = None if scores is None else _check_scores(scores, "scores", n=N)
    n = min(n, N)
    k = int(min(k, N))
    labels, sims = _kmeans_assign(
        vectors, k, rng, int(niter), block_size, int(max_points_per_centroid), int(nredo)
    )
    s = sims.astype(np.float64) if s is None else s
    return ids[_compute_cluster_allocation(labels, s, n, alloc)]


# --------------------------------------------------------------------------------------------
# maximal marginal relevance
# --------------------------------------------------------------------------------------------


def _compute_mmr(
    vectors: Any, rel: np.ndarray, n: int, lam: float, labelled: np.ndarray | None, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    N = vectors.shape[0]
    n = min(n, N)
    if labelled is not None:
        redundancy = _compute_max_sim(vectors, labelled, block_size).astype(np.float64)  # [N]
    else:
        redundancy = np.zeros(N, dtype=np.float64)  # [N]: nothing chosen yet -> no redundancy
    taken = np.zeros(N, dtype=bool)  # [N]
    picks = np.empty(n, dtype=np.int64)
    gains = np.empty(n, dtype=np.float64)
    have_redundancy = labelled is not None
    for t in range(n):
        gain = lam * rel - (1.0 - lam) * redundancy  # [N]
        gain[taken] = -np.inf
        j = int(np.argmax(gain))
        picks[t], gains[t] = j, gain[j]
        taken[j] = True
        if t == n - 1:
            break
        x = np.asarray(vectors[j : j + 1], dtype=np.float32)[0]  # [dim]
        for start, stop in _iter_blocks(N, block_size):
            sim = _block_f32(vectors, start, stop) @ x  # [block]
            if have_redundancy:
                np.maximum(redundancy[start:stop], sim, out=redundancy[start:stop])
            else:
                redundancy[start:stop] = sim
        have_redundancy = True
    return picks, gains


def mmr(
    ids: Any,
    vectors: Any,
    relevance: Any,
    n: int,
    *,
    lam: float = 0.5,
    labelled_vectors: Any | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> np.ndarray:
    """Maximal marginal relevance: ``lam * relevance - (1 - lam) * max sim to the already chosen``.

    Carbonell & Goldstein (1998). Greedy; the first pick is the most relevant item. A running
    maximum-similarity vector ``[n_pool]`` is updated after each pick (one blockwise pass), never a
    full similarity matrix. ``relevance`` should be on a similarity-like scale (a cosine similarity or
    a probability in ``[0, 1]``) so that ``lam`` trades like for like.

    Parameters
    ----------
    ids : array [n_pool] int64
    vectors : array-like [n_pool, dim]
    relevance : array [n_pool]
    n : int
    lam : float in [0, 1]
        1 is plain top-n by relevance; 0 is pure diversity.
    labelled_vectors : array [n_labelled, dim], optional
        Counted as already chosen, so the batch also avoids near-copies of labelled items.
    block_size, cache_bytes : int

    Returns
    -------
    ndarray [min(n, n_pool)] int64
        In pick order; ties go to the earlier pool position.
    """
    positions, _ = _mmr_positions(
        ids,
        vectors,
        relevance,
        n,
        lam=lam,
        labelled_vectors=labelled_vectors,
        block_size=block_size,
        cache_bytes=cache_bytes,
    )
    return np.asarray(ids, dtype=np.int64)[positions]


def _mmr_positions(ids, vectors, relevance, n, *, lam, labelled_vectors, block_size, cache_bytes):
    ids, vectors = _check_pool(ids, vectors)
    n = _check_n(n)
    rel = _check_scores(relevance, "relevance", n=ids.shape[0])
    if not isinstance(lam, (int, float, np.floating, np.integer)) or not (0.0 <= float(lam) <= 1.0):
        raise InputError(f"lam must be a number in [0, 1], got {lam!r}")
    block_size = _check_block_size(block_size)
    labelled = _labelled_f32(labelled_vectors, vectors.shape[1])
    vectors = _maybe_cache(vectors, cache_bytes, block_size)
    return _compute_mmr(vectors, rel, n, float(lam), labelled, block_size)
