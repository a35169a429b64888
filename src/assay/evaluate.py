"""Metrics of a mining run: pure functions, arrays in, numbers out.

Every function validates its input at the boundary (:class:`~assay.errors.InputError` with what was
expected and what came) and touches no files, models or databases. The simulator
(:mod:`assay.simulate`) composes them per round; the report (:mod:`assay.report`) draws them.

Metrics
    :func:`average_precision`
        AP of scores against binary ground truth (scikit-learn's ``average_precision_score``: the
        step-wise area under the precision-recall curve, no interpolation).
    :func:`recall`
        Share of the concept's positives found so far.
    :func:`mining_precision`
        Share of a proposed batch that turned out positive.
    :func:`ap_gain_per_1000`
        AP gained per 1,000 labels between consecutive points of a learning curve.
    :func:`cluster_positives`, :func:`coverage`
        k-means clusters of the concept's positives, and how many of them the found positives hit.
    :func:`novelty_hits`, :func:`novelty_hit_rate`, :func:`nearest_other_similarity`
        Whether each new positive lies far (cosine below a threshold) from every earlier positive,
        and the data-driven default threshold.
    :func:`labels_to_reach`
        Labels spent before a recall curve first reaches a target (how fast a concept was mined).

Vectors are L2-normalised rows, so the inner product is the cosine similarity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "ap_gain_per_1000",
    "average_precision",
    "cluster_positives",
    "coverage",
    "labels_to_reach",
    "mean_ignoring_none",
    "mining_precision",
    "nearest_other_similarity",
    "novelty_hit_rate",
    "novelty_hits",
    "recall",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _numbers(v: Any, name: str) -> np.ndarray:
    """``v`` as float64 numbers (an InputError naming ``name`` for text, objects or bare strings)."""
    if isinstance(v, (str, bytes)):
        raise InputError(f"{name} must be numbers, got a string {v!r}")
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numbers, got {type(v).__name__}") from None


def _binary(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of 0/1 labels, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or (arr.size and not np.all(np.isin(arr, (0, 1)))):
        raise InputError(f"{name} must hold binary labels 0/1 (or booleans), got values like {arr[:5].tolist()}")
    return arr.astype(bool)


def _vectors(v: Any, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D array [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{name} must have dimension {dim}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _count(n: Any, name: str, minimum: int = 0) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------------------------
# ranking quality
# --------------------------------------------------------------------------------------------


def average_precision(y_true: Any, scores: Any) -> float:
    """Average precision of ``scores`` against binary ``y_true``.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, the definition of
    scikit-learn's ``average_precision_score`` (ties share a threshold; no interpolation).

    Parameters
    ----------
    y_true : array [n] of 0/1 or bool
        Ground truth; must hold at least one positive.
    scores : array [n] float
        Higher means more likely positive.

    Returns
    -------
    float in [0, 1]
    """
    from sklearn.metrics import average_precision_score

    y = _binary(y_true, "y_true")
    s = _numbers(scores, "scores")
    if s.shape != y.shape:
        raise InputError(f"scores must have one value per label ({y.shape[0]}), got shape {s.shape}")
    if not y.any():
        raise InputError("average precision needs at least one positive in y_true, got none")
    if not np.isfinite(s).all():
        raise InputError(f"scores contain {int((~np.isfinite(s)).sum())} NaN or infinite value(s)")
    return float(min(1.0, average_precision_score(y, s)))  # summation can land a hair above 1


def recall(found: Any, total: Any) -> float:
    """``found / total``: the share of the concept's positives found (``total`` must be positive)."""
    f = _count(found, "found")
    t = _count(total, "total", 1)
    if f > t:
        raise InputError(f"found ({f}) cannot exceed total ({t})")
    return f / t


def mining_precision(batch_labels: Any) -> float | None:
    """Share of a proposed batch that was positive: ``mean(batch_labels)``; None for an empty batch."""
    y = _binary(batch_labels, "batch_labels")
    return float(y.mean()) if y.size else None


def ap_gain_per_1000(labels: Any, ap: Any) -> np.ndarray:
    """AP gained per 1,000 labels between consecutive points of a learning curve.

    Parameters
    ----------
    labels : array [r] int
        Labels spent at each point, strictly increasing.
    ap : array [r] float
        AP at each point.

    Returns
    -------
    ndarray [r - 1] float64
        ``1000 * (ap[i] - ap[i-1]) / (labels[i] - labels[i-1])``.
    """
    L = _numbers(labels, "labels")
    A = _numbers(ap, "ap")
    if L.ndim != 1 or A.shape != L.shape:
        raise InputError(f"labels and ap must be 1-D arrays of one length, got shapes {L.shape} and {A.shape}")
    if not np.isfinite(A).all():
        raise InputError("ap must be finite numbers (a round without an AP has none to gain from)")
    if L.size and np.any(np.diff(L) <= 0):
        raise InputError("labels must be strictly increasing")
    if L.size < 2:
        return np.zeros(0, dtype=np.float64)
    return 1000.0 * np.diff(A) / np.diff(L)  # [r - 1]


# --------------------------------------------------------------------------------------------
# coverage and novelty
# --------------------------------------------------------------------------------------------


def cluster_positives(vectors: Any, n_clusters: int = 10, *, seed: int = 0) -> np.ndarray:
    """k-means (Euclidean on unit vectors, i.e. cosine) cluster of each of the concept's positives.

    Parameters
    ----------
    vectors : array [n_pos, dim]
        The concept's positives in the pool.
    n_clusters : int
        Capped at ``n_pos``.
    seed : int
        Seeds scikit-learn's k-means++ initialisation (10 restarts).

    Returns
    -------
    ndarray [n_pos] int64
        Cluster index of each positive, in ``[0, min(n_clusters, n_pos))``.
    """
    from sklearn.cluster import KMeans

    X = _vectors(vectors, "vectors")
    k = _count(n_clusters, "n_clusters", 1)
    if X.shape[0] == 0:
        raise InputError("cluster_positives needs at least one positive vector, got none")
    k = min(k, X.shape[0])
    if k == 1:
        return np.zeros(X.shape[0], dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=10, random_state=int(seed)).fit(X)
    return km.labels_.astype(np.int64)  # [n_pos]


def coverage(found_clusters: Any) -> int:
    """How many distinct clusters the found positives span: ``len(unique(found_clusters))``."""
    c = np.asarray(found_clusters)
    if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
        raise InputError(f"found_clusters must be a 1-D integer array of cluster indices, got {c.dtype} {c.shape}")
    return int(np.unique(c).size)


def novelty_hits(new_vectors: Any, earlier_vectors: Any, threshold: float) -> np.ndarray:
    """Which new positives are novel: cosine similarity to **every** earlier positive below ``threshold``.

    Parameters
    ----------
    new_vectors : array [m, dim]
        Positives found in this round.
    earlier_vectors : array [e, dim]
        Positives found before this round (with none, every new positive is novel).
    threshold : float in [-1, 1]

    Returns
    -------
    ndarray [m] bool
    """
    if not isinstance(threshold, (int, float, np.floating)) or not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
    N = _vectors(new_vectors, "new_vectors")
    if N.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    E = np.asarray(earlier_vectors, dtype=np.float32)
    if E.size == 0:
        return np.ones(N.shape[0], dtype=bool)
    E = _vectors(E, "earlier_vectors", N.shape[1])
    best = (N @ E.T).max(axis=1)  # [m] max cosine to an earlier positive
    return best < float(threshold)


def novelty_hit_rate(new_vectors: Any, earlier_vectors: Any, threshold: float) -> float | None:
    """Share of the new positives that are novel (see :func:`novelty_hits`); None when there are none."""
    hits = novelty_hits(new_vectors, earlier_vectors, threshold)
    return float(hits.mean()) if hits.size else None


def nearest_other_similarity(vectors: Any) -> np.ndarray:
    """Each row's cosine similarity to its nearest *other* row: ``[n]`` float64 (needs ``n >= 2``).

    The median of this over a concept's positives is the simulator's default novelty threshold: a new
    positive is novel when it is farther from every positive found before than a typical positive is
    from its nearest fellow positive.
    """
    X = _vectors(vectors, "vectors")
    if X.shape[0] < 2:
        raise InputError(f"nearest_other_similarity needs at least 2 vectors, got {X.shape[0]}")
    out = np.empty(X.shape[0], dtype=np.float64)
    for s in range(0, X.shape[0], 4096):
        S = X[s : s + 4096] @ X.T  # [b, n]
        rows = np.arange(S.shape[0])
        S[rows, s + rows] = -np.inf  # leave out the row itself
        out[s : s + S.shape[0]] = S.max(axis=1)
    return np.clip(out, -1.0, 1.0, out=out)  # rounding (float16 storage) can put a cosine just past 1


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------


def labels_to_reach(labels: Any, values: Any, target: float) -> int | None:
    """Labels spent at the first point where ``values`` reaches ``target``; None if it never does."""
    L = _numbers(labels, "labels")
    V = _numbers(values, "values")
    if L.ndim != 1 or V.shape != L.shape:
        raise InputError(f"labels and values must be 1-D arrays of one length, got {L.shape} and {V.shape}")
    hit = np.flatnonzero(V >= float(_numbers(target, "target")))
    return int(L[hit[0]]) if hit.size else None


def mean_ignoring_none(values: Any) -> float | None:
    """Mean of the values that are not None / NaN; None when none are left."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InputError(f"values must be a sequence of numbers (or None), got {values!r}")
    vals = [float(_numbers(v, "values")) for v in values if v is not None]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else None
