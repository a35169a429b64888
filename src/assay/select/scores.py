"""Scores for selection: uncertainty, disagreement, relevance, novelty, and their combination.

Every score here is a pure function of arrays: probabilities or vectors in, one float per item out,
aligned with the input rows. **Higher always means "more worth labelling"** (more uncertain, more
relevant, more novel), so every score can be fed to :func:`assay.select.diversity.top_n` unchanged.

Layout (cleanlab ``rank.py`` style): each public function validates its input at the boundary and
raises :class:`~assay.errors.InputError` with a message that says what was expected and what came;
the private ``_compute_*`` functions assume valid input and carry the arithmetic. Method names map to
functions through dicts (:data:`UNCERTAINTY_METHODS`, :data:`DISAGREEMENT_METHODS`,
:data:`NORMALIZATIONS`); an unknown name raises :class:`~assay.errors.UnknownNameError` listing the
valid ones.

Probabilities
    Binary problems take ``[n]`` probabilities of the positive class; multi-class problems take
    ``[n, C]`` rows that sum to one. Ensembles take ``[m, n]`` (binary) or ``[m, n, C]``. NaN values
    raise :class:`InputError` naming how many there are; values outside ``[0, 1]`` (beyond a ``1e-6``
    tolerance) raise as well. Logarithms are natural (scores in nats).

Vectors
    Embeddings are L2-normalised, so the inner product is the cosine similarity. Vectors may be
    float16 (at rest, e.g. an ``np.memmap``) or float32/float64; they are converted to float32
    **blockwise** (numpy's float16 matmul is about 250x slower than float32) so memory stays bounded
    by ``block_size`` rows whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from scipy.special import entr

from assay.errors import InputError, UnknownNameError

__all__ = [
    "least_confidence",
    "margin",
    "entropy",
    "uncertainty",
    "vote_entropy",
    "bald",
    "disagreement",
    "most_likely_positive",
    "query_similarity",
    "exemplar_similarity",
    "distance_to_labelled",
    "density",
    "uniqueness",
    "normalize",
    "combine",
    "combine_multiplicative",
    "value",
    "model_score_term",
    "MODEL_TERMS",
    "UNCERTAINTY_METHODS",
    "DISAGREEMENT_METHODS",
    "NORMALIZATIONS",
    "REDUCTIONS",
    "DEFAULT_BLOCK_SIZE",
]

#: Rows converted to float32 at a time in blockwise vector code (65,536 x 256 x 4 B = 64 MiB).
DEFAULT_BLOCK_SIZE = 65_536

_PROBA_TOL = 1e-6  # tolerance for probabilities slightly outside [0, 1] from float error
_ROWSUM_TOL = 1e-3  # tolerance for multi-class rows that should sum to one
_MAX_SIM_ELEMENTS = 1 << 24  # bound on a [block, n_exemplars] similarity block (64 MiB in float32)


# --------------------------------------------------------------------------------------------
# shared validation helpers (used by diversity, pools and strategies as well)
# --------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """Method names are hyphenated; accept underscores and any case as a courtesy."""
    return str(name).strip().lower().replace("_", "-")


def _lookup(table: Mapping[str, Any], kind: str, name: str) -> Any:
    """Map a method name to its function, or raise :class:`UnknownNameError` listing the valid names."""
    key = _canonical(name)
    if key not in table:
        raise UnknownNameError(kind, name, list(table))
    return table[key]


def _count_nan(a: np.ndarray) -> int:
    return int(np.count_nonzero(np.isnan(a))) if a.dtype.kind == "f" else 0


def _check_finite(a: np.ndarray, name: str) -> None:
    """Raise InputError naming how many values are NaN or infinite."""
    if a.dtype.kind != "f":
        return
    n_nan = _count_nan(a)
    if n_nan:
        raise InputError(f"{name} contains {n_nan} NaN value(s) out of {a.size}; expected finite numbers")
    n_inf = int(np.count_nonzero(np.isinf(a)))
    if n_inf:
        raise InputError(
            f"{name} contains {n_inf} infinite value(s) out of {a.size}; expected finite numbers"
        )


def _as_numeric(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InputError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _check_ids(ids: Any, name: str = "ids", *, unique: bool = True) -> np.ndarray:
    """Validate global item ids: a 1-D integer array, returned as int64 (non-negative, unique)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of int64 item ids, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be integer item ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise InputError(f"{name} must be non-negative item ids, got minimum {int(arr.min())}")
    if unique and arr.size > 1:
        # cheap O(n) test first: sorted, strictly increasing ids are unique
        if not bool(np.all(arr[1:] > arr[:-1])):
            n_unique = _sorted_unique(arr).size
            if n_unique != arr.size:
                raise InputError(f"{name} must be unique, got {arr.size - n_unique} repeated id(s)")
    return arr


def _check_vectors(vectors: Any, name: str = "vectors", *, dim: int | None = None) -> Any:
    """Validate a 2-D float array-like ``[n, d]`` without loading it (memmaps and lazy views pass through)."""
    shape = getattr(vectors, "shape", None)
    dtype = getattr(vectors, "dtype", None)
    if shape is None or dtype is None:
        vectors = np.asarray(vectors)
        shape, dtype = vectors.shape, vectors.dtype
    if len(shape) != 2:
        raise InputError(f"{name} must be a 2-D array [n_items, dim], got shape {tuple(shape)}")
    if np.dtype(dtype).kind != "f":
        raise InputError(f"{name} must be float16/float32/float64, got dtype {dtype}")
    if shape[1] == 0:
        raise InputError(f"{name} must have a positive dimension, got shape {tuple(shape)}")
    if dim is not None and shape[1] != dim:
        raise InputError(f"{name} must have dimension {dim}, got shape {tuple(shape)}")
    return vectors


def _small_vectors(vectors: Any, name: str, *, dim: int | None = None) -> np.ndarray:
    """Validate and load a small matrix (queries, exemplars, labelled vectors) as float32, finite."""
    arr = _as_numeric(vectors, name)
    if arr.ndim == 1:
        arr = arr[None, :]  # [1, dim]
    arr = _check_vectors(arr, name, dim=dim)
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # [m, dim]
    _check_finite(arr, name)
    return arr


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values by sort + neighbour comparison (faster here than numpy's hash-based unique)."""
    a = np.sort(np.asarray(a).ravel())
    if a.size < 2:
        return a
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def _iter_blocks(n: int, block_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, block_size):
        yield start, min(start + block_size, n)


def _block_f32(vectors: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a C-contiguous float32 array (the float16 -> float32 step)."""
    return np.ascontiguousarray(vectors[start:stop], dtype=np.float32)  # [stop - start, dim]


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


def _check_scores(scores: Any, name: str = "scores", *, n: int | None = None) -> np.ndarray:
    """A 1-D float64 score vector, finite, of length ``n`` when given."""
    arr = _as_numeric(scores, name)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array [n_items], got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InputError(f"{name} must have {n} entries (one per item), got {arr.shape[0]}")
    arr = arr.astype(np.float64, copy=False)
    n_nan = _count_nan(arr)
    if n_nan:
        raise InputError(f"{name} contains {n_nan} NaN value(s) out of {arr.size}; expected finite scores")
    if arr.size and not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} infinite value(s)")
    return arr


# --------------------------------------------------------------------------------------------
# probabilities
# --------------------------------------------------------------------------------------------


def _check_proba(proba: Any, name: str = "proba") -> np.ndarray:
    """Validate ``[n]`` (binary, P(positive)) or ``[n, C]`` probabilities; return ``[n, C]`` float64."""
    arr = _as_numeric(proba, name).astype(np.float64, copy=False)
    if arr.ndim not in (1, 2):
        raise InputError(f"{name} must be [n] (binary) or [n, C] probabilities, got shape {arr.shape}")
    if arr.ndim == 2 and arr.shape[1] < 2 and arr.shape[0] > 0:
        raise InputError(f"{name} must have at least 2 class columns [n, C], got shape {arr.shape}")
    _check_range(arr, name)
    binary = arr.ndim == 1
    if binary:
        arr = np.stack([1.0 - arr, arr], axis=1)  # [n, 2]: P(negative), P(positive)
    if not binary and arr.size:
        row_err = np.abs(arr.sum(axis=1) - 1.0)  # [n]
        n_bad = int(np.count_nonzero(row_err > _ROWSUM_TOL))
        if n_bad:
            raise InputError(f"{name} rows must sum to 1, got {n_bad} row(s) off by more than {_ROWSUM_TOL}")
    return np.clip(arr, 0.0, 1.0)


def _check_range(arr: np.ndarray, name: str) -> None:
    n_nan = _count_nan(arr)
    if n_nan:
        raise InputError(f"{name} contains {n_nan} NaN value(s) out of {arr.size}; expected probabilities")
    if arr.size and (arr.min() < -_PROBA_TOL or arr.max() > 1.0 + _PROBA_TOL):
        raise InputError(
            f"{name} must be probabilities in [0, 1], got values in [{arr.min():.6g}, {arr.max():.6g}]"
        )


def _check_ensemble(proba: Any, name: str = "ensemble_proba") -> np.ndarray:
    """Validate ``[m, n]`` (binary) or ``[m, n, C]`` ensemble probabilities; return ``[m, n, C]``."""
    arr = _as_numeric(proba, name).astype(np.float64, copy=False)
    if arr.ndim not in (2, 3):
        raise InputError(
            f"{name} must be [m_models, n] (binary) or [m_models, n, C] probabilities, got shape {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] < 2 and arr.shape[1] > 0:
        raise InputError(f"{name} must have at least 2 classes [m, n, C], got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise InputError(f"{name} must hold at least one ensemble member, got shape {arr.shape}")
    _check_range(arr, name)
    binary = arr.ndim == 2
    if binary:
        arr = np.stack([1.0 - arr, arr], axis=2)  # [m, n, 2]
    if not binary and arr.size:
        row_err = np.abs(arr.sum(axis=2) - 1.0)  # [m, n]
        n_bad = int(np.count_nonzero(row_err > _ROWSUM_TOL))
        if n_bad:
            raise InputError(f"{name} rows must sum to 1, got {n_bad} row(s) off by more than {_ROWSUM_TOL}")
    return np.clip(arr, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# uncertainty (Lewis & Gale 1994; Scheffer et al. 2001; Settles 2009)
# --------------------------------------------------------------------------------------------


def _compute_least_confidence(p: np.ndarray) -> np.ndarray:
    return 1.0 - p.max(axis=1)  # [n]


def _compute_margin(p: np.ndarray) -> np.ndarray:
    top2 = -np.partition(-p, 1, axis=1)[:, :2]  # [n, 2]: largest, second largest
    return 1.0 - (top2[:, 0] - top2[:, 1])  # [n]


def _compute_entropy(p: np.ndarray) -> np.ndarray:
    return entr(p).sum(axis=1)  # [n, C] -> [n]; entr(0) = 0


def least_confidence(proba: Any) -> np.ndarray:
    """Least-confidence uncertainty ``1 - max_c p(c | x)`` (Lewis & Gale 1994).

    Parameters
    ----------
    proba : array [n] or [n, C]
        P(positive) for a binary concept, or class probabilities whose rows sum to one.

    Returns
    -------
    ndarray [n] float64
        In ``[0, 1 - 1/C]``; higher is more uncertain.
    """
    return _compute_least_confidence(_check_proba(proba))


def margin(proba: Any) -> np.ndarray:
    """Margin uncertainty ``1 - (p_top1 - p_top2)`` (Scheffer et al. 2001).

    The margin between the two most likely classes is turned around so that higher means more
    uncertain (the same convention as scikit-activeml's ``margin_sampling``).

    Parameters
    ----------
    proba : array [n] or [n, C]

    Returns
    -------
    ndarray [n] float64
        In ``[0, 1]``; 1 for a tie between the top two classes.
    """
    return _compute_margin(_check_proba(proba))


def entropy(proba: Any) -> np.ndarray:
    """Shannon entropy of the predictive distribution, in nats (Settles 2009, section 3.1).

    Parameters
    ----------
    proba : array [n] or [n, C]

    Returns
    -------
    ndarray [n] float64
        In ``[0, log C]``; ``0 log 0`` is taken as 0.
    """
    return _compute_entropy(_check_proba(proba))


#: Uncertainty method name -> function of ``[n]`` / ``[n, C]`` probabilities.
UNCERTAINTY_METHODS: dict[str, Callable[[Any], np.ndarray]] = {
    "least-confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def uncertainty(proba: Any, method: str = "entropy") -> np.ndarray:
    """Uncertainty by method name: one of :data:`UNCERTAINTY_METHODS`.

    Raises
    ------
    UnknownNameError
        For a name not in :data:`UNCERTAINTY_METHODS` (the message lists the valid ones).
    """
    return _lookup(UNCERTAINTY_METHODS, "uncertainty method", method)(proba)


# --------------------------------------------------------------------------------------------
# ensemble disagreement (Dagan & Engelson 1995; Houlsby et al. 2011)
# --------------------------------------------------------------------------------------------


def _compute_vote_entropy(p: np.ndarray) -> np.ndarray:
    m, n, c = p.shape
    votes = p.argmax(axis=2)  # [m, n]: each member's hard vote (ties -> lowest class index)
    counts = np.stack([(votes == k).sum(axis=0) for k in range(c)], axis=1)  # [n, C]
    return _compute_entropy(counts / float(m))  # [n]


def _compute_bald(p: np.ndarray) -> np.ndarray:
    mean_p = p.mean(axis=0)  # [n, C]: the ensemble's predictive distribution
    total = _compute_entropy(mean_p)  # [n]: H[y | x]
    expected = entr(p).sum(axis=2).mean(axis=0)  # [m, n, C] -> [m, n] -> [n]: E_theta H[y | x, theta]
    return np.maximum(total - expected, 0.0)  # [n]; clamp float error below zero


def vote_entropy(ensemble_proba: Any) -> np.ndarray:
    """Vote entropy: entropy of the members' hard votes (Dagan & Engelson 1995).

    Parameters
    ----------
    ensemble_proba : array [m, n] or [m, n, C]
        Per-member probabilities (binary P(positive), or class probabilities).

    Returns
    -------
    ndarray [n] float64
        In ``[0, log min(m, C)]``; 0 when all members vote alike. A member's vote is its argmax
        (a binary probability of exactly 0.5 votes negative).
    """
    return _compute_vote_entropy(_check_ensemble(ensemble_proba))


def bald(ensemble_proba: Any) -> np.ndarray:
    """BALD mutual information ``H[E_m p] - E_m H[p]`` (Houlsby et al. 2011).

    Over a bootstrap or seed ensemble the members stand in for posterior samples: the score is high
    where members are individually confident but disagree with each other.

    Parameters
    ----------
    ensemble_proba : array [m, n] or [m, n, C]

    Returns
    -------
    ndarray [n] float64
        Non-negative, at most ``log C``.
    """
    return _compute_bald(_check_ensemble(ensemble_proba))


#: Disagreement method name -> function of ``[m, n]`` / ``[m, n, C]`` ensemble probabilities.
DISAGREEMENT_METHODS: dict[str, Callable[[Any], np.ndarray]] = {
    "vote-entropy": vote_entropy,
    "bald": bald,
}


def disagreement(ensemble_proba: Any, method: str = "bald") -> np.ndarray:
    """Ensemble disagreement by method name: one of :data:`DISAGREEMENT_METHODS`."""
    return _lookup(DISAGREEMENT_METHODS, "disagreement method", method)(ensemble_proba)


# --------------------------------------------------------------------------------------------
# relevance
# --------------------------------------------------------------------------------------------


def most_likely_positive(proba: Any) -> np.ndarray:
    """The proxy's probability of the positive class ("most likely positive", Jiang et al. 2017).

    Parameters
    ----------
    proba : array [n] or [n, 2]
        P(positive), or two-column probabilities whose second column is the positive class.

    Returns
    -------
    ndarray [n] float64
    """
    arr = _as_numeric(proba, "proba")
    if arr.ndim == 2 and arr.shape[1] != 2:
        raise InputError(f"proba must be [n] or [n, 2] for a binary concept, got shape {arr.shape}")
    return _check_proba(arr)[:, 1].copy()  # [n]


def _compute_max_sim(vectors: Any, exemplars: np.ndarray, block_size: int) -> np.ndarray:
    n = vectors.shape[0]
    out = np.empty(n, dtype=np.float32)  # [n]
    rows = max(1, min(block_size, _MAX_SIM_ELEMENTS // max(1, exemplars.shape[0])))
    et = np.ascontiguousarray(exemplars.T)  # [dim, n_exemplars]
    for start, stop in _iter_blocks(n, rows):
        sims = _block_f32(vectors, start, stop) @ et  # [block, n_exemplars]
        out[start:stop] = sims.max(axis=1)  # [block]
    return out


def _compute_dot(vectors: Any, q: np.ndarray, block_size: int) -> np.ndarray:
    n = vectors.shape[0]
    out = np.empty(n, dtype=np.float32)  # [n]
    for start, stop in _iter_blocks(n, block_size):
        out[start:stop] = _block_f32(vectors, start, stop) @ q  # [block, dim] @ [dim] -> [block]
    return out


def exemplar_similarity(
    vectors: Any, exemplars: Any, *, reduce: str = "max", block_size: int = DEFAULT_BLOCK_SIZE
) -> np.ndarray:
    """Cosine similarity of each item to a set of exemplars (or one text-query vector).

    Parameters
    ----------
    vectors : array-like [n, dim] float16/float32
        L2-normalised item embeddings; an ``np.memmap`` works, read ``block_size`` rows at a time.
    exemplars : array [e, dim] or [dim]
        L2-normalised exemplar (or query) embeddings.
    reduce : {"max", "mean"}
        ``max``: similarity to the closest exemplar (any-of semantics). ``mean``: the mean similarity
        over exemplars, computed exactly as the dot product with the mean exemplar vector.
    block_size : int

    Returns
    -------
    ndarray [n] float32
        In ``[-1, 1]`` for normalised inputs.
    """
    vectors = _check_vectors(vectors)
    ex = _small_vectors(exemplars, "exemplars", dim=vectors.shape[1])  # [e, dim]
    if ex.shape[0] == 0:
        raise InputError("exemplars must hold at least one vector, got 0")
    block_size = _check_block_size(block_size)
    fn = _lookup(REDUCTIONS, "exemplar reduction", reduce)
    return fn(vectors, ex, block_size)


def query_similarity(vectors: Any, query: Any, *, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Cosine similarity of each item to one query vector (e.g. an encoded text query).

    Parameters
    ----------
    vectors : array-like [n, dim]
    query : array [dim] or [1, dim]

    Returns
    -------
    ndarray [n] float32
    """
    q = _as_numeric(query, "query")
    if not (q.ndim == 1 or (q.ndim == 2 and q.shape[0] == 1)):
        raise InputError(f"query must be one vector [dim] or [1, dim], got shape {q.shape}")
    return exemplar_similarity(vectors, q, reduce="max", block_size=block_size)


#: Exemplar reduction name -> function(vectors, exemplars [e, d] float32, block_size) -> [n].
REDUCTIONS: dict[str, Callable[[Any, np.ndarray, int], np.ndarray]] = {
    "max": _compute_max_sim,
    "mean": lambda v, ex, bs: _compute_dot(v, ex.mean(axis=0), bs),  # mean_e <x, e> = <x, mean_e e>
}


# --------------------------------------------------------------------------------------------
# novelty (Baram et al. 2004 farthest-first; Settles & Craven 2008 information density)
# --------------------------------------------------------------------------------------------


def distance_to_labelled(
    vectors: Any, labelled_vectors: Any, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> np.ndarray:
    """Novelty: cosine distance to the nearest labelled item, ``1 - max_l <x, l>``.

    Computed blockwise over both the items and the labelled set, never as a full matrix.

    Parameters
    ----------
    vectors : array-like [n, dim]
    labelled_vectors : array [n_labelled, dim]
        May be empty: then every item is equally novel and the result is all ones (as if every item
        were orthogonal to the labelled set), a documented fallback rather than ``+inf``.

    Returns
    -------
    ndarray [n] float32
        In ``[0, 2]`` for normalised inputs.
    """
    vectors = _check_vectors(vectors)
    lab = _as_numeric(labelled_vectors, "labelled_vectors")
    if lab.size == 0:
        return np.ones(vectors.shape[0], dtype=np.float32)  # [n]
    lab = _small_vectors(lab, "labelled_vectors", dim=vectors.shape[1])  # [L, dim]
    block_size = _check_block_size(block_size)
    return 1.0 - _compute_max_sim(vectors, lab, block_size)  # [n]


def _check_neighbors(neighbor_sims: Any, neighbor_ids: Any | None) -> tuple[np.ndarray, np.ndarray]:
    sims = _as_numeric(neighbor_sims, "neighbor_sims")
    if sims.ndim != 2:
        raise InputError(f"neighbor_sims must be [n, k], got shape {sims.shape}")
    if neighbor_ids is None:
        valid = np.ones(sims.shape, dtype=bool)  # [n, k]
    else:
        nid = _as_numeric(neighbor_ids, "neighbor_ids")
        if nid.shape != sims.shape:
            raise InputError(f"neighbor_ids must match neighbor_sims {sims.shape}, got shape {nid.shape}")
        valid = nid >= 0  # [n, k]; FAISS marks a missing neighbour with id -1
    sims = sims.astype(np.float64)
    n_nan = int(np.count_nonzero(np.isnan(sims) & valid))
    if n_nan:
        raise InputError(f"neighbor_sims contains {n_nan} NaN value(s) at valid neighbours")
    return sims, valid


def density(neighbor_sims: Any, neighbor_ids: Any | None = None, *, weights: Any | None = None) -> np.ndarray:
    """Local density: the weighted mean cosine similarity to an item's k nearest neighbours.

    The kNN form of the information-density term of Settles & Craven (2008): their density is the
    mean similarity to the whole pool; the k nearest neighbours carry nearly all of it and are what an
    index gives cheaply. The caller computes the neighbours (an index search or a kNN graph) and must
    leave out self-matches.

    Parameters
    ----------
    neighbor_sims : array [n, k]
        Cosine similarities to each item's neighbours.
    neighbor_ids : array [n, k] of int, optional
        Neighbour ids; entries ``< 0`` (FAISS's "no neighbour") are left out of the mean. A row with no
        valid neighbour gets density 0.
    weights : array [k], optional
        Non-negative weights by neighbour rank (e.g. decaying with rank); uniform by default.

    Returns
    -------
    ndarray [n] float64
    """
    sims, valid = _check_neighbors(neighbor_sims, neighbor_ids)
    k = sims.shape[1]
    if weights is None:
        w = np.ones(k, dtype=np.float64)  # [k]
    else:
        w = _as_numeric(weights, "weights").astype(np.float64)
        if w.shape != (k,):
            raise InputError(f"weights must have shape ({k},) (one per neighbour rank), got {w.shape}")
        _check_finite(w, "weights")
        if np.any(w < 0):
            raise InputError("weights must be non-negative")
    return _compute_density(sims, valid, w)


def _compute_density(sims: np.ndarray, valid: np.ndarray, w: np.ndarray) -> np.ndarray:
    wv = valid * w[None, :]  # [n, k]: weight of each valid neighbour
    total = wv.sum(axis=1)  # [n]
    num = np.where(valid, sims, 0.0) * wv  # [n, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num.sum(axis=1) / total  # [n]
    return np.where(total > 0, out, 0.0)  # [n]; no valid neighbour -> 0


def uniqueness(
    neighbor_sims: Any, neighbor_ids: Any | None = None, *, weights: Any | None = None
) -> np.ndarray:
    """Uniqueness: the weighted mean cosine distance to the k nearest neighbours, ``1 - density``.

    High for items in sparse regions (outliers, rare content), low inside dense clusters.
    Parameters as in :func:`density`; a row with no valid neighbour gets 1.

    Returns
    -------
    ndarray [n] float64
    """
    return 1.0 - density(neighbor_sims, neighbor_ids, weights=weights)


# --------------------------------------------------------------------------------------------
# combined value
# --------------------------------------------------------------------------------------------


def _compute_rank_norm(s: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    n = s.shape[0]
    if n < 2 or s.min() == s.max():
        return np.zeros(n, dtype=np.float64)  # constant term: carries no ranking information
    return (rankdata(s, method="average") - 1.0) / (n - 1.0)  # [n] in [0, 1]; ties share their mean rank


def _compute_minmax_norm(s: np.ndarray) -> np.ndarray:
    n = s.shape[0]
    if n < 2 or s.min() == s.max():
        return np.zeros(n, dtype=np.float64)
    return (s - s.min()) / (s.max() - s.min())  # [n] in [0, 1]


#: Normalisation name -> function of a finite ``[n]`` vector returning ``[n]`` in ``[0, 1]``.
NORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rank": _compute_rank_norm,
    "minmax": _compute_minmax_norm,
}


def normalize(scores: Any, method: str = "rank") -> np.ndarray:
    """Normalise one score within the pool to ``[0, 1]``.

    ``rank`` (the default) maps each score to its percentile rank ``(rank - 1) / (n - 1)`` with ties
    sharing their average rank. Scores of different kinds live on unrelated and skewed scales (cosine
    similarities crowd into a narrow band, entropies pile up near zero in a confident pool, a single
    outlier stretches any range), so ranks make a weight mean the same thing for every term and for
    every pool: "how much a percentile of this term is worth". They are invariant to any monotone
    transform of the term. ``minmax`` keeps the gaps between values, at the price of sensitivity to
    outliers. A constant term (or a pool of one) normalises to all zeros under both methods: it does
    not change the ranking, and a zero keeps it from shifting the combined value.

    Returns
    -------
    ndarray [n] float64 in ``[0, 1]``
    """
    s = _check_scores(scores)
    return _lookup(NORMALIZATIONS, "normalization", method)(s)


def _check_terms(terms: Mapping[str, Any], coefs: Mapping[str, float], what: str) -> tuple[list, int]:
    if not isinstance(terms, Mapping) or not terms:
        raise InputError(f"terms must be a non-empty mapping name -> [n] scores, got {type(terms).__name__}")
    unknown = set(coefs) - set(terms)
    if unknown:
        raise InputError(f"{what} given for unknown term(s) {sorted(unknown)}; terms are {sorted(terms)}")
    n = None
    out = []
    for name, vals in terms.items():
        arr = _check_scores(vals, f"term {name!r}", n=n)
        n = arr.shape[0]
        c = coefs.get(name, 1.0)
        if not np.isfinite(c):
            raise InputError(f"{what} for term {name!r} must be finite, got {c}")
        out.append((name, arr, float(c)))
    return out, int(n)


def combine(
    terms: Mapping[str, Any], weights: Mapping[str, float] | None = None, *, normalize: str = "rank"
) -> np.ndarray:
    """Additive value ``sum_t w_t * norm(term_t)``, each term normalised within the pool.

    Parameters
    ----------
    terms : mapping name -> array [n]
        E.g. ``{"relevance": ..., "uncertainty": ..., "novelty": ..., "model": ...}``; all the same
        length (``model``: an external model's term, :func:`model_score_term`).
    weights : mapping name -> float, optional
        Weight of each term (default 1 for a term not named).
    normalize : {"rank", "minmax"}
        See :func:`normalize`.

    Returns
    -------
    ndarray [n] float64
    """
    checked, n = _check_terms(terms, weights or {}, "weight")
    norm = _lookup(NORMALIZATIONS, "normalization", normalize)
    out = np.zeros(n, dtype=np.float64)  # [n]
    for _, arr, w in checked:
        if w != 0.0:
            out += w * norm(arr)  # [n]
    return out


def combine_multiplicative(
    terms: Mapping[str, Any], strengths: Mapping[str, float] | None = None
) -> np.ndarray:
    """Multiplicative value ``prod_t term_t ** strength_t`` (no scale tuning needed).

    Multiplying a term by a constant multiplies every value by the same constant, so the ranking is
    unchanged: only the strengths (exponents) matter, never the units of a term. This is the form of
    information density (Settles & Craven 2008: ``uncertainty * density ** beta``).

    Parameters
    ----------
    terms : mapping name -> array [n]
        Non-negative scores (map a cosine similarity ``s`` to ``(1 + s) / 2`` first).
    strengths : mapping name -> float, optional
        Non-negative exponents (default 1). A strength of 0 ignores the term.

    Returns
    -------
    ndarray [n] float64
    """
    checked, n = _check_terms(terms, strengths or {}, "strength")
    out = np.ones(n, dtype=np.float64)  # [n]
    for name, arr, s in checked:
        if s < 0:
            raise InputError(f"strength for term {name!r} must be non-negative, got {s}")
        if arr.size and arr.min() < 0:
            raise InputError(
                f"term {name!r} must be non-negative for the multiplicative form, got minimum {arr.min():.6g}"
            )
        if s != 0.0:
            out *= arr**s  # [n]
    return out


def model_score_term(model_scores: Any, kind: str = "uncertainty") -> np.ndarray:
    """The value term from an external model's scores (a weak detector, the ImageNet tagger, ...).

    Parameters
    ----------
    model_scores : array [n]
        The model's probability that each item contains the concept, in ``[0, 1]``; NaN for items the
        model did not score.
    kind : {"uncertainty", "relevance"}
        ``uncertainty``: the binary entropy of the score (highest at 0.5: the items the model is unsure
        about). ``relevance``: the score itself.

    Returns
    -------
    ndarray [n] float64
        Items without a score get the mean of the scored items' term (a neutral value that neither
        promotes nor buries them); all zeros when no item has a score.
    """
    arr = _as_numeric(model_scores, "model_scores").astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise InputError(f"model_scores must be a 1-D array [n_items], got shape {arr.shape}")
    if kind not in MODEL_TERMS:
        raise UnknownNameError("model term", kind, list(MODEL_TERMS))
    scored = ~np.isnan(arr)  # [n]
    out = np.zeros(arr.shape[0], dtype=np.float64)  # [n]
    if not scored.any():
        return out
    _check_range(arr[scored], "model_scores")
    p = np.clip(arr[scored], 0.0, 1.0)
    out[scored] = _compute_entropy(np.stack([1.0 - p, p], axis=1)) if kind == "uncertainty" else p
    out[~scored] = out[scored].mean()
    return out


#: Kinds of model-score term for :func:`model_score_term`.
MODEL_TERMS = ("uncertainty", "relevance")


def value(
    *,
    relevance: Any | None = None,
    uncertainty: Any | None = None,
    novelty: Any | None = None,
    model: Any | None = None,
    a: float = 1.0,
    b: float = 1.0,
    c: float = 1.0,
    d: float = 0.0,
    normalize: str = "rank",
) -> np.ndarray:
    """Combined value ``a * relevance + b * uncertainty + c * novelty + d * model``, terms normalised in the pool.

    A term left as ``None`` is omitted (its weight must then be 0 or the term is simply absent).
    ``model`` is a term from an external model's scores (see :func:`model_score_term`); its weight ``d``
    defaults to 0, so it changes nothing unless asked for.
    See :func:`normalize` for the normalisation and :func:`combine_multiplicative` for the
    scale-free multiplicative form.

    Returns
    -------
    ndarray [n] float64
    """
    given = {"relevance": relevance, "uncertainty": uncertainty, "novelty": novelty, "model": model}
    terms = {k: v for k, v in given.items() if v is not None}
    if not terms:
        raise InputError("value needs at least one of relevance, uncertainty, novelty, model; got none")
    w = {"relevance": a, "uncertainty": b, "novelty": c, "model": d}
    return combine(terms, {k: w[k] for k in terms}, normalize=normalize)
