"""Vector index: FAISS behind one small class, with the kind chosen from corpus size and memory.

Everything here speaks the catalog's global int64 item ids: they are the FAISS ids, search returns them,
and ``-1`` (with score ``-inf``) pads a result row that has fewer than ``k`` hits. Vectors are
L2-normalised float32 (float16 input is converted block by block), so the inner product is the cosine.

The pieces
----------
* :func:`choose_kind` / :func:`make_spec` / :func:`estimate_memory` pick an :class:`IndexSpec` (kind and
  parameters) for ``n`` vectors of dimension ``dim`` and estimate its resident size before anything is
  built, in the spirit of autofaiss:

  ==========  =========================================================================================
  ``flat``    exact inner product; chosen while ``n <= FLAT_MAX_N`` (100,000: one query scans 100k x d
              floats, a few ms; no training, no approximation)
  ``hnsw``    HNSW graph (M=32) over the raw float32 vectors; chosen while ``n <= HNSW_MAX_N``
              (300,000) and it fits in memory: the best recall per query time at that size, but its
              build time grows fast and FAISS cannot delete from it (see :meth:`VectorIndex.remove`).
              At 1M synthetic 256-d vectors on 2 cores (bench/index.py) IVF built 7x faster (50 s vs
              357 s for HNSW M=32, efConstruction=80), while HNSW served recall@10 >= 0.9 at 1.9x IVF's
              batch QPS: the build time and the missing deletes set the cap.
  ``ivf``     inverted lists over the raw vectors (``nlist ~ 4 sqrt(n)``); chosen past ``HNSW_MAX_N``
              while the raw vectors fit: fast to train and to add to, real deletes
  ``ivf-pq``  inverted lists with product-quantised codes (``m`` sub-quantizers, ``m`` divides ``dim``,
              about ``dim / 4`` bytes per vector); chosen when the raw vectors do not fit. The codes rank
              approximately; ``assay.search.Searcher`` re-ranks their candidates with the stored vectors
  ==========  =========================================================================================

  "Fits" means :func:`estimate_memory` ``<= MEMORY_FRACTION`` (one half) of the available memory, read
  from ``/proc/meminfo`` (``MemAvailable``) or ``os.sysconf`` when it is not given.
* :class:`VectorIndex` builds, adds, removes, searches, saves (atomically) and loads (memory-mapped
  where FAISS allows) one index.
* :func:`neighbors`, :func:`knn_graph` (a :class:`KnnGraph`), :func:`range_pairs` and
  :func:`brute_force_search` are the neighbourhood building blocks (SEALS pools, near-duplicates).
* :func:`rerank` re-scores candidates with the stored vectors (recall for ``ivf-pq``);
  :func:`recall_at_k` measures an approximate result against an exact one, tie-aware.

On disk, a directory holds one bundle: ``meta.json`` (the commit point, written last and swapped in with
``os.replace``) naming the data files it uses, whose names carry a fresh token on every save, so a reader
never sees a half-written index and a memory-mapped reader keeps its (unlinked) old file.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import (
    IndexNotBuiltError,
    InputError,
    NotFoundError,
    UnknownNameError,
    WorkspaceError,
)

__all__ = [
    "FLAT_MAX_N",
    "HNSW_MAX_N",
    "KINDS",
    "MEMORY_FRACTION",
    "ConcatRows",
    "IndexSpec",
    "KnnGraph",
    "VectorIndex",
    "available_memory",
    "brute_force_search",
    "choose_kind",
    "estimate_memory",
    "knn_graph",
    "make_spec",
    "neighbors",
    "range_pairs",
    "recall_at_k",
    "rerank",
]

KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivf-pq")
FLAT_MAX_N = 100_000
HNSW_MAX_N = 300_000
MEMORY_FRACTION = 0.5
NORM_TOLERANCE = 1e-2  # float16 at rest moves a unit norm by ~5e-4; anything further is not normalised
DEFAULT_BLOCK = 65_536  # rows converted to float32 and handed to FAISS at a time
MIN_POINTS_PER_CENTROID = 39  # below this FAISS warns that k-means is under-trained
TRAIN_POINTS_PER_CENTROID = 40

_IVF_KINDS = ("ivf", "ivf-pq")
_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "flat": (),
    "hnsw": ("M", "ef_construction", "ef_search"),
    "ivf": ("nlist", "nprobe", "train_size"),
    "ivf-pq": ("nlist", "nprobe", "train_size", "m", "nbits"),
}
_SMALL_BLOCK = 1 << 18  # query x database rows below which exact blocks use numpy rather than faiss.knn
_TOMBSTONE = -2  # id written over a removed HNSW entry; never a valid item id (ids are >= 0)
_INT64_MAX = np.iinfo(np.int64).max

_INDEX_FORMAT = "assay.vector_index"
_GRAPH_FORMAT = "assay.knn_graph"
_META_NAME = "meta.json"
_FORMAT_VERSION = 1


_FAISS: Any = None


def _faiss():
    """The faiss module, imported on first use (a core dependency, but heavy to import)."""
    global _FAISS
    if _FAISS is None:
        import faiss

        _FAISS = faiss
    return _FAISS


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build, and with which parameters. Frozen, hashable, JSON-serialisable.

    Parameters
    ----------
    kind : {"flat", "hnsw", "ivf", "ivf-pq"}
    params : mapping of str to int
        ``hnsw``: ``M``, ``ef_construction``, ``ef_search`` (the default search effort).
        ``ivf``: ``nlist``, ``nprobe`` (default lists visited per query), ``train_size`` (vectors sampled
        for k-means). ``ivf-pq``: the same plus ``m`` (sub-quantizers, divides ``dim``) and ``nbits``
        (bits per sub-quantizer code). ``flat``: none. Use :func:`make_spec` to fill in defaults.
    """

    kind: str
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownNameError("index kind", str(self.kind), KINDS)
        allowed = _PARAM_KEYS[self.kind]
        clean: dict[str, int] = {}
        for key, value in dict(self.params).items():
            if key not in allowed:
                valid = ", ".join(allowed) if allowed else "none"
                raise InputError(f"unknown parameter {key!r} for a {self.kind} index; valid: {valid}")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise InputError(f"index parameter {key} must be a positive integer, got {value!r}")
            clean[key] = int(value)
        object.__setattr__(self, "params", MappingProxyType(dict(sorted(clean.items()))))

    def __hash__(self) -> int:
        return hash((self.kind, tuple(self.params.items())))

    def __repr__(self) -> str:
        return f"IndexSpec(kind={self.kind!r}, params={dict(self.params)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexSpec):
            return NotImplemented
        return self.kind == other.kind and dict(self.params) == dict(other.params)

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "params": {...}}``, ready for JSON."""
        return {"kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndexSpec:
        return cls(kind=str(d["kind"]), params=dict(d.get("params", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexSpec:
        return cls.from_dict(json.loads(text))

    def factory_string(self) -> str:
        """The FAISS ``index_factory`` string of the core index (before the id map), for reports."""
        p = self.params
        if self.kind == "flat":
            return "IDMap,Flat"
        if self.kind == "hnsw":
            return f"IDMap,HNSW{p.get('M', 32)},Flat"
        if self.kind == "ivf":
            return f"IVF{p['nlist']},Flat"
        return f"IVF{p['nlist']},PQ{p['m']}x{p['nbits']}"


def _check_n_dim(n: int, dim: int) -> tuple[int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise InputError(f"dim must be a positive integer, got {dim!r}")
    return int(n), int(dim)


def _default_nlist(n: int) -> int:
    nlist = round(4.0 * math.sqrt(max(n, 1)))
    return max(1, min(nlist, 65_536, max(1, n // MIN_POINTS_PER_CENTROID)))


def _default_nprobe(nlist: int) -> int:
    return max(1, min(nlist, round(2.0 * math.sqrt(nlist))))


def _default_pq_m(dim: int) -> int:
    """The divisor of ``dim`` closest to ``dim / 4`` (about 4 dimensions per one-byte code)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 4.0), -m))


def _default_nbits(n: int) -> int:
    """8 bits (256 centroids per sub-quantizer) once there are 39 * 256 points to train them, fewer below."""
    if n < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    return int(min(8, math.floor(math.log2(n / MIN_POINTS_PER_CENTROID))))


def make_spec(kind: str, n: int, dim: int, **params: int) -> IndexSpec:
    """The :class:`IndexSpec` of ``kind`` for ``n`` vectors of ``dim``, defaults filled in.

    ``kind="auto"`` defers to :func:`choose_kind` (``params`` must then be empty). Explicit ``params``
    override the defaults: ``hnsw`` M=32, ef_construction=40, ef_search=64; ``ivf`` nlist ~ 4 sqrt(n)
    clamped to [1, 65536] and to at most n / 39, nprobe ~ 2 sqrt(nlist), train_size = 40 nlist (at most
    n); ``ivf-pq`` also m = the divisor of dim closest to dim / 4 and nbits = 8 (fewer on tiny corpora).
    """
    n, dim = _check_n_dim(n, dim)
    if kind == "auto":
        if params:
            raise InputError("parameters cannot be given with kind 'auto'; name the kind")
        return choose_kind(n, dim)
    if kind not in KINDS:
        raise UnknownNameError("index kind", str(kind), KINDS + ("auto",))
    defaults: dict[str, int] = {}
    if kind == "hnsw":
        defaults = {"M": 32, "ef_construction": 40, "ef_search": 64}
    elif kind in _IVF_KINDS:
        for key in ("nlist", "nbits", "nprobe", "m", "train_size"):
            v = params.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
                raise InputError(f"{kind} parameter {key} must be a positive integer, got {v!r}")
        nlist = int(params.get("nlist", _default_nlist(n)))
        defaults = {"nlist": nlist, "nprobe": _default_nprobe(nlist)}
        if kind == "ivf-pq":
            nbits = int(params.get("nbits", _default_nbits(n)))
            defaults.update(m=_default_pq_m(dim), nbits=nbits)
            min_train = TRAIN_POINTS_PER_CENTROID * max(nlist, 2**nbits)
        else:
            min_train = TRAIN_POINTS_PER_CENTROID * nlist
        defaults["train_size"] = max(1, min(n, min_train))
    merged = {**defaults, **params}
    spec = IndexSpec(kind, merged)
    if kind == "ivf-pq" and dim % spec.params["m"] != 0:
        raise InputError(f"ivf-pq needs m to divide dim; m={spec.params['m']} does not divide dim={dim}")
    if kind == "ivf-pq" and spec.params["nbits"] > 16:
        raise InputError(f"ivf-pq nbits must be at most 16, got {spec.params['nbits']}")
    return spec


def _per_vector_bytes(spec: IndexSpec, dim: int) -> float:
    """Resident bytes added by one more vector (codes, graph links, ids and assay's id cache)."""
    p = spec.params
    ids = 8 + 8  # FAISS's id (id map or inverted-list id) + the sorted live-id cache kept by VectorIndex
    if spec.kind == "flat":
        return 4.0 * dim + ids
    if spec.kind == "hnsw":
        m = p.get("M", 32)
        # level 0 holds 2M links, each upper level M links, and a node reaches level l with probability
        # M**-l, so upper levels add M / (M - 1) links on average; plus levels (int32) and offsets (size_t)
        links = 2 * m + m / max(m - 1, 1)
        return 4.0 * dim + 4.0 * links + 4 + 8 + ids
    if spec.kind == "ivf":
        return 4.0 * dim + ids
    return math.ceil(p["m"] * p["nbits"] / 8) + ids


def _fixed_bytes(spec: IndexSpec, dim: int) -> float:
    """Resident bytes independent of the number of vectors (centroids, codebooks, list headers)."""
    p = spec.params
    if spec.kind in _IVF_KINDS:
        nlist = p["nlist"]
        fixed = 4.0 * dim * nlist + 64.0 * nlist  # coarse centroids + two std::vector headers per list
        if spec.kind == "ivf-pq":
            fixed += 4.0 * dim * (2 ** p["nbits"])  # PQ codebooks: m x 2**nbits x (dim / m) floats
        return fixed
    return 0.0


def estimate_memory(spec: IndexSpec, n: int, dim: int) -> int:
    """Estimated resident bytes of ``spec`` holding ``n`` vectors of ``dim``, computed before building.

    Counts the stored vectors or codes, the HNSW links, the coarse centroids and codebooks, FAISS's
    int64 id per vector and the sorted id cache that :class:`VectorIndex` keeps. Transient build memory
    (the training sample, one float32 block) is not included; :func:`choose_kind` leaves room for it by
    budgeting only ``MEMORY_FRACTION`` of the available memory.
    """
    n, dim = _check_n_dim(n, dim)
    if not isinstance(spec, IndexSpec):
        raise InputError(f"spec must be an IndexSpec, got {type(spec).__name__}")
    return math.ceil(_fixed_bytes(spec, dim) + n * _per_vector_bytes(spec, dim))


def available_memory() -> int:
    """Bytes of memory available now: ``MemAvailable`` from /proc/meminfo, else ``os.sysconf``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 8 * 2**30


def choose_kind(n: int, dim: int, *, memory_bytes: int | None = None) -> IndexSpec:
    """Pick the index kind and parameters for ``n`` vectors of ``dim`` and a memory budget.

    Rules, in order (the budget is ``MEMORY_FRACTION`` of ``memory_bytes``, which defaults to the
    memory available when called, see :func:`available_memory`):

    1. ``n <= FLAT_MAX_N`` and the flat index fits: ``flat`` (exact).
    2. ``n <= HNSW_MAX_N`` and HNSW fits: ``hnsw``.
    3. the raw vectors fit in inverted lists: ``ivf``.
    4. otherwise ``ivf-pq``, with the largest ``m`` (at most the default ``~dim/4``) whose codes fit.

    Raises
    ------
    InputError
        When not even the smallest IVF-PQ fits; reduce the dimension first (:class:`assay.reduce.PCAReducer`).
    """
    n, dim = _check_n_dim(n, dim)
    if memory_bytes is None:
        memory_bytes = available_memory()
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer)) or memory_bytes <= 0:
        raise InputError(f"memory_bytes must be a positive integer, got {memory_bytes!r}")
    budget = MEMORY_FRACTION * int(memory_bytes)

    def fits(spec: IndexSpec) -> bool:
        return estimate_memory(spec, n, dim) <= budget

    if n <= FLAT_MAX_N:
        spec = make_spec("flat", n, dim)
        if fits(spec):
            return spec
    if n <= HNSW_MAX_N and n >= 2:
        spec = make_spec("hnsw", n, dim)
        if fits(spec):
            return spec
    if n >= 1:
        spec = make_spec("ivf", n, dim)
        if fits(spec):
            return spec
    default_m = _default_pq_m(dim)
    for m in sorted((m for m in range(1, default_m + 1) if dim % m == 0), reverse=True):
        spec = make_spec("ivf-pq", n, dim, m=m)
        if fits(spec):
            return spec
    need = estimate_memory(make_spec("ivf-pq", n, dim, m=1), n, dim)
    raise InputError(
        f"{n} vectors of dim {dim} need about {need} bytes even as ivf-pq with m=1, but only "
        f"{int(budget)} bytes ({MEMORY_FRACTION:.0%} of {int(memory_bytes)}) are budgeted: "
        "reduce the dimension first (assay.reduce.PCAReducer)"
    )


# ------------------------------------------------------------------------------------ array helpers


class ConcatRows:
    """A read-only row-wise concatenation of 2-D arrays (e.g. memory-mapped float16 shards).

    Supports what the blockwise code here needs (``len``, ``shape``, ``dtype``, ``x[a:b]`` and
    ``x[int_array]``) without ever materialising the whole matrix.

    Parameters
    ----------
    arrays : sequence of array-like, each ``[n_i, dim]`` with the same ``dim``
    """

    def __init__(self, arrays: Sequence[Any]) -> None:
        self._arrays = [a for a in arrays]
        if not self._arrays:
            raise InputError("ConcatRows needs at least one array")
        dims = {tuple(np.shape(a)[1:]) for a in self._arrays}
        if len(dims) != 1 or any(np.ndim(a) != 2 for a in self._arrays):
            raise InputError(
                f"ConcatRows needs 2-D arrays of one width, got shapes {[np.shape(a) for a in self._arrays]}"
            )
        self._offsets = np.cumsum([0] + [len(a) for a in self._arrays])  # [n_arrays + 1]
        self.dtype = np.result_type(*[a.dtype for a in self._arrays])
        self.shape = (int(self._offsets[-1]), int(np.shape(self._arrays[0])[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            parts = []
            for j, a in enumerate(self._arrays):
                lo, hi = self._offsets[j], self._offsets[j + 1]
                s, e = max(start, lo), min(stop, hi)
                if s < e:
                    parts.append(np.asarray(a[s - lo : e - lo]))
            if not parts:
                return np.empty((0, self.shape[1]), dtype=self.dtype)
            return parts[0] if len(parts) == 1 else np.concatenate(parts).astype(self.dtype, copy=False)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        which = np.searchsorted(self._offsets, idx, side="right") - 1  # [len(idx)]
        for j in np.unique(which):
            sel = which == j
            out[sel] = np.asarray(self._arrays[j])[idx[sel] - self._offsets[j]]
        return out


def _as_rows(vectors: Any, name: str = "vectors") -> Any:
    """Accept an ndarray, a memmap or a :class:`ConcatRows`; return something sliceable with 2-D shape."""
    if isinstance(vectors, ConcatRows) or (isinstance(vectors, np.ndarray) and vectors.ndim == 2):
        arr = vectors
    else:
        arr = np.asarray(vectors)
        if arr.ndim != 2:
            raise InputError(f"{name} must be a matrix [n, dim], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} must be floating point (float16/float32/float64), got {arr.dtype}")
    return arr


def _f32(block: Any) -> np.ndarray:
    return np.ascontiguousarray(block, dtype=np.float32)


def _check_block(block: np.ndarray, start: int, name: str = "vectors", check_norm: bool = True) -> None:
    """Reject NaN/inf and rows that are neither unit-norm nor zero. ``block`` is float32 ``[b, dim]``.

    One pass: the squared norms are finite exactly when the row is (barring float32 overflow, which the
    fallback tells apart).
    """
    if not len(block):
        return
    sq = np.einsum("ij,ij->i", block, block)  # [b] squared norms
    if not np.isfinite(sq).all():
        bad_rows = ~np.isfinite(block).all(axis=1)
        if bad_rows.any():
            raise InputError(f"{name} contain NaN or inf (row {start + int(np.flatnonzero(bad_rows)[0])})")
    if check_norm:
        norms = np.sqrt(sq)  # [b]
        off = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE) & (norms > 0)
        if off.any():
            r = int(np.flatnonzero(off)[0])
            raise InputError(f"{name} must be L2-normalised: row {start + r} has norm {norms[r]:.4f}")


def _check_ids(ids: Any, n: int | None = None, name: str = "ids") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of int64 item ids, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be integers (int64 item ids), got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and len(arr) != n:
        raise InputError(f"got {len(arr)} {name} for {n} vectors; expected one id per vector")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} must be non-negative item ids, got {int(arr.min())}")
    return arr


def _check_unique(ids: np.ndarray, name: str = "ids") -> np.ndarray:
    """Return ``ids`` sorted; raise when one repeats."""
    s = np.sort(ids)
    if len(s) > 1:
        dup = s[1:] == s[:-1]
        if dup.any():
            raise InputError(f"{name} must be unique; {int(s[1:][dup][0])} appears more than once")
    return s


def _check_k(k: Any) -> int:
    if type(k) is int and k > 0:  # the common case, cheaply
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _add_block(rows: Any, n: int, block: int) -> int:
    """Rows per ``add_with_ids`` call. Blocks bound the memory of converting to float32; rows that already
    are a C-contiguous float32 array need no conversion, so they go in one call (FAISS then sizes its
    storage once instead of growing and copying it block by block: 1.3x faster for a flat index)."""
    if isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.flags.c_contiguous:
        return max(block, n, 1)
    return block


def _check_block_size(block_size: Any) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


def _in_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean mask ``[len(ids)]``: which ``ids`` occur in the sorted array ``sorted_ids``."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def _pad(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad result columns up to ``k`` with score -inf / id -1."""
    if D.shape[1] >= k:
        return D[:, :k], I[:, :k]
    q = D.shape[0]
    Dp = np.full((q, k), -np.inf, dtype=np.float32)
    Ip = np.full((q, k), -1, dtype=np.int64)
    Dp[:, : D.shape[1]] = D
    Ip[:, : I.shape[1]] = I
    return Dp, Ip


def _compact(D: np.ndarray, I: np.ndarray, drop: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove the ``drop`` entries of each row (keeping order) and keep the first ``k`` (padded)."""
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # [q, k] kept entries first, in order
    Dk = np.take_along_axis(D, order, axis=1)
    Ik = np.take_along_axis(I, order, axis=1)
    gone = np.take_along_axis(drop, order, axis=1)
    Dk[gone] = -np.inf
    Ik[gone] = -1
    return _pad(Dk, Ik, k)


def _drop_self(D: np.ndarray, I: np.ndarray, self_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop exactly one entry per row: the row's own id where returned, else the last entry.

    ``D, I`` are ``[b, k + 1]`` best first; returns ``[b, k]``. When exact duplicates tie with the item
    itself, FAISS may return the duplicates and not the item; then the last (worst) entry goes, which is
    what excluding the item from a k+1 search leaves.
    """
    b, kp1 = I.shape
    is_self = I == self_ids[:, None]  # [b, k + 1]
    col = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kp1 - 1)  # [b]
    keep = np.ones((b, kp1), dtype=bool)
    keep[np.arange(b), col] = False
    return D[keep].reshape(b, kp1 - 1), I[keep].reshape(b, kp1 - 1)


# --------------------------------------------------------------------------------- atomic bundles


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - directories on some file systems
        pass
    finally:
        os.close(fd)


def _write_bundle(
    directory: str | os.PathLike[str],
    files: Mapping[str, tuple[str, Callable[[Path], None]]],
    meta: Mapping[str, Any],
) -> Path:
    """Write one bundle atomically into ``directory``.

    ``files`` maps a logical name to ``(suffix, writer)``; each writer writes a fresh file named
    ``<name>.<token><suffix>``. Then ``meta.json`` (with ``"files": {name: file name}``) replaces the old
    one with ``os.replace``: that is the commit point. Files of older generations of the same names are
    removed afterwards (a memory-mapped reader keeps its unlinked file alive).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    written: dict[str, str] = {}
    tmp_meta = directory / f".{_META_NAME}.{token}.tmp"
    try:
        for name, (suffix, writer) in files.items():
            fname = f"{name}.{token}{suffix}"
            writer(directory / fname)
            _fsync_path(directory / fname)
            written[name] = fname
        body = dict(meta)
        body["files"] = dict(written)
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, directory / _META_NAME)
        _fsync_path(directory)
    except BaseException:
        for fname in written.values():
            (directory / fname).unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise
    keep = set(written.values())
    for p in directory.iterdir():
        stale_data = any(
            p.name.startswith(f"{name}.") and p.name.endswith(suffix) for name, (suffix, _) in files.items()
        )
        stale_meta = p.name.startswith(f".{_META_NAME}.") and p.name.endswith(".tmp")
        if (stale_data or stale_meta) and p.name not in keep:
            p.unlink(missing_ok=True)
    return directory


def _read_bundle_meta(directory: str | os.PathLike[str], fmt: str, what: str) -> tuple[Path, dict[str, Any]]:
    directory = Path(directory)
    path = directory / _META_NAME
    if not path.is_file():
        if fmt == _INDEX_FORMAT:
            raise IndexNotBuiltError(f"no index in {directory}: build one with `assay index`")
        raise NotFoundError(f"no {what} in {directory} (no {_META_NAME})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        hint = "; rebuild it with `assay index`" if fmt == _INDEX_FORMAT else ""
        raise WorkspaceError(f"cannot read {path}: {exc}{hint}") from exc
    if not isinstance(meta, dict):
        raise WorkspaceError(f"{path} is not a {what} description")
    if meta.get("format") != fmt:
        raise WorkspaceError(f"{path} holds {meta.get('format')!r}, not a {what} ({fmt!r})")
    if int(meta.get("format_version", 0)) > _FORMAT_VERSION:
        raise WorkspaceError(
            f"{path} has format version {meta.get('format_version')}; this assay reads up to {_FORMAT_VERSION}"
        )
    for fname in meta.get("files", {}).values():
        if not (directory / fname).is_file():
            raise WorkspaceError(f"{what} in {directory} is incomplete: {fname} is missing")
    return directory, meta


def _npy_writer(arr: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(arr))

    return write


# ----------------------------------------------------------------------------------------- the index


class VectorIndex:
    """A FAISS index over L2-normalised vectors keyed by int64 item ids (inner product = cosine).

    The constructor only stores parameters; :meth:`build` (or :meth:`load`) creates the index.

    Parameters
    ----------
    spec : IndexSpec or str, default "auto"
        What to build. A kind name (``"auto"``, ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"ivf-pq"``) is
        resolved with :func:`make_spec` when :meth:`build` knows ``n``.
    dim : int
        Vector dimension.
    encoder, encoder_version : str
        Who made the vectors; saved in the metadata and checked by :meth:`load`.
    metadata : mapping, optional
        Any JSON-serialisable notes saved with the index (e.g. the PCA reducer used).
    block_size : int, default 65536
        Rows converted to float32 and added at a time (bounds the extra memory of build/add). Rows given
        as a C-contiguous float32 array need no conversion and are added in one call.
    retrain_factor : float, default 10
        An IVF index reports :attr:`needs_retrain` once it holds more than this many times the number
        of vectors it was trained for.
    memory_bytes : int, optional
        The memory budget for ``spec="auto"`` (default: what is available when :meth:`build` runs).

    Examples
    --------
    >>> index = VectorIndex(spec="auto", dim=256, encoder="clip-vit-b32").build(ids, vectors, rng=0)
    >>> scores, found = index.search(query, k=10)          # [10], [10] for one query vector
    >>> index.save(workspace / "index")                    # later: VectorIndex.load(..., mmap=True)
    """

    def __init__(
        self,
        *,
        spec: IndexSpec | str = "auto",
        dim: int,
        encoder: str = "",
        encoder_version: str = "",
        metadata: Mapping[str, Any] | None = None,
        block_size: int = DEFAULT_BLOCK,
        retrain_factor: float = 10.0,
        memory_bytes: int | None = None,
    ) -> None:
        self.spec_request = spec
        self.dim_request = dim
        self.encoder = encoder
        self.encoder_version = encoder_version
        self.metadata = dict(metadata or {})
        self.block_size = block_size
        self.retrain_factor = retrain_factor
        self.memory_bytes = memory_bytes
        # fitted state
        self._index: Any = None
        self._spec: IndexSpec | None = spec if isinstance(spec, IndexSpec) else None
        self._dim: int | None = None
        self._tombstones = 0
        self._trained_size = 0
        self._trained_for_n = 0
        self._sorted_ids: np.ndarray | None = None
        self._mmapped = False
        self._load_mode: str | None = None
        self._live_sel: Any = None
        self._params_cache: dict[tuple[Any, ...], Any] = {}

    # ------------------------------------------------------------------ properties
    @property
    def is_built(self) -> bool:
        return self._index is not None

    @property
    def spec(self) -> IndexSpec:
        """The resolved spec (after :meth:`build` or :meth:`load`)."""
        if self._spec is None:
            raise IndexNotBuiltError("index not built yet: call build() or load(), or run `assay index`")
        return self._spec

    @property
    def kind(self) -> str:
        if self._spec is not None:
            return self._spec.kind
        return str(self.spec_request)

    @property
    def dim(self) -> int:
        return int(self._dim if self._dim is not None else self.dim_request)

    @property
    def ntotal(self) -> int:
        """Number of live (searchable) vectors."""
        if self._index is None:
            return 0
        return int(self._index.ntotal) - self._tombstones

    def __len__(self) -> int:
        return self.ntotal

    @property
    def tombstones(self) -> int:
        """HNSW entries removed by :meth:`remove` but still in the graph (always 0 for other kinds)."""
        return self._tombstones

    @property
    def trained_size(self) -> int:
        """Vectors sampled to train the index (0 for flat and hnsw, which need no training)."""
        return self._trained_size

    @property
    def trained_for_n(self) -> int:
        """Corpus size when the index was (re)trained."""
        return self._trained_for_n

    @property
    def needs_retrain(self) -> bool:
        """True when the index should be rebuilt with :meth:`retrain`.

        * ``ivf``/``ivf-pq``: it holds more than ``retrain_factor`` (10x) the vectors it was trained for,
          so its lists are too long for the chosen ``nlist`` (search gets slower, not wrong).
        * ``hnsw``: removed entries (tombstones) outnumber live ones, wasting memory and search effort.

        :meth:`add` never retrains on its own; the caller decides (``assay index`` says so and does it).
        """
        if self._index is None or self._spec is None:
            return False
        if self._spec.kind in _IVF_KINDS:
            return self.ntotal > self.retrain_factor * max(self._trained_for_n, 1)
        if self._spec.kind == "hnsw":
            return self._tombstones > max(self.ntotal, 0)
        return False

    @property
    def bytes_per_vector(self) -> float:
        """Resident bytes per stored vector (estimated from the spec, see :func:`estimate_memory`)."""
        return float(_per_vector_bytes(self.spec, self.dim))

    @property
    def mmapped(self) -> bool:
        """True while the FAISS data is a read-only memory map of the saved file."""
        return self._mmapped

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for inspection and benchmarks; do not modify it)."""
        return self._require_built()

    @property
    def ids(self) -> np.ndarray:
        """Sorted int64 ids of the live vectors (a copy)."""
        return self._live_ids().copy()

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask ``[len(ids)]``: which ids are searchable in the index."""
        arr = _check_ids(ids)
        return _in_sorted(self._live_ids(), arr)

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary (kind, params, counts, encoder, memory, state)."""
        return {
            "kind": self.kind,
            "spec": self.spec.to_dict() if self._spec is not None else None,
            "dim": self.dim,
            "count": self.ntotal,
            "tombstones": self._tombstones,
            "encoder": self.encoder,
            "encoder_version": self.encoder_version,
            "trained_size": self._trained_size,
            "trained_for_n": self._trained_for_n,
            "needs_retrain": self.needs_retrain,
            "bytes_per_vector": self.bytes_per_vector if self._spec is not None else None,
            "estimated_bytes": estimate_memory(self._spec, self.ntotal, self.dim)
            if self._spec is not None
            else None,
            "mmapped": self._mmapped,
            "load_mode": self._load_mode,
            "metadata": dict(self.metadata),
        }

    def __repr__(self) -> str:
        state = f"{self.ntotal} vectors" if self.is_built else "not built"
        return f"VectorIndex(kind={self.kind!r}, dim={self.dim}, encoder={self.encoder!r}, {state})"

    # ------------------------------------------------------------------ internals
    def _require_built(self) -> Any:
        if self._index is None:
            raise IndexNotBuiltError("index not built yet: call build() or load(), or run `assay index`")
        return self._index

    def _live_ids(self) -> np.ndarray:
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(_faiss_ids(self._require_built(), self.kind))
        return self._sorted_ids

    def _ensure_writable(self) -> None:
        """A memory-mapped FAISS index is read-only (writing to it aborts the process): copy it first."""
        if self._mmapped:
            faiss = _faiss()
            buf = faiss.serialize_index(self._index)
            self._index = faiss.deserialize_index(buf)
            del buf
            self._mmapped = False
            self._live_sel = None
            self._params_cache = {}
            self._apply_search_defaults()

    def _apply_search_defaults(self) -> None:
        faiss = _faiss()
        p = self.spec.params
        if self.kind == "hnsw":
            hnsw = faiss.downcast_index(self._index.index)
            hnsw.hnsw.efSearch = p.get("ef_search", 64)
        elif self.kind in _IVF_KINDS:
            self._index.nprobe = min(p["nprobe"], p["nlist"])

    def _check_vectors_arg(self, ids: Any, vectors: Any) -> tuple[np.ndarray, Any]:
        rows = _as_rows(vectors)
        if rows.shape[1] != self.dim:
            raise InputError(f"index has dim {self.dim}, vectors have dim {rows.shape[1]}")
        arr = _check_ids(ids, n=rows.shape[0])
        return arr, rows

    # ------------------------------------------------------------------ build / add / remove
    def build(self, ids: Any, vectors: Any, *, rng: np.random.Generator | int = 0) -> VectorIndex:
        """Build the index from scratch over ``vectors`` keyed by ``ids``; returns ``self``.

        Parameters
        ----------
        ids : array-like of int64, ``[n]``
            Unique, non-negative item ids.
        vectors : array-like ``[n, dim]``, float16/32/64
            L2-normalised rows (a memmap or :class:`ConcatRows` works; converted block by block).
        rng : numpy Generator or int seed
            Draws the training sample (IVF kinds) and seeds FAISS k-means.

        IVF kinds train on a seeded random sample of ``train_size`` rows, then every kind adds in blocks
        of ``block_size`` rows. The new index replaces the old one only once complete, so a failure
        (e.g. a NaN in row 123456) leaves the previous state untouched. HNSW graphs built with several
        threads are not bit-identical from run to run (FAISS inserts in parallel).
        """
        faiss = _faiss()
        dim = self.dim_request
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise InputError(f"dim must be a positive integer, got {dim!r}")
        rows = _as_rows(vectors)
        if rows.shape[1] != int(dim):
            raise InputError(f"index has dim {int(dim)}, vectors have dim {rows.shape[1]}")
        arr = _check_ids(ids, n=rows.shape[0])
        sorted_ids = _check_unique(arr)
        n = len(arr)
        block = _add_block(rows, n, _check_block_size(self.block_size))
        spec = self.spec_request
        if isinstance(spec, str):
            if spec == "auto":
                spec = choose_kind(n, int(dim), memory_bytes=self.memory_bytes)
            else:
                spec = make_spec(spec, n, int(dim))
        elif not isinstance(spec, IndexSpec):
            raise InputError(f"spec must be an IndexSpec or a kind name, got {type(spec).__name__}")
        gen = np.random.default_rng(rng)
        index, trained = _new_trained_index(faiss, spec, int(dim), rows, n, gen)
        for s in range(0, n, block):
            xb = _f32(rows[s : s + block])  # [b, dim]
            _check_block(xb, s)
            index.add_with_ids(xb, arr[s : s + block])
        # commit
        self._index = index
        self._spec = spec
        self._dim = int(dim)
        self._tombstones = 0
        self._trained_size = trained
        self._trained_for_n = n if spec.kind in _IVF_KINDS else 0
        self._sorted_ids = sorted_ids
        self._mmapped = False
        self._load_mode = None
        self._live_sel = None
        self._params_cache = {}
        self._apply_search_defaults()
        return self

    def retrain(
        self,
        ids: Any,
        vectors: Any,
        *,
        rng: np.random.Generator | int = 0,
        spec: IndexSpec | str | None = None,
    ) -> VectorIndex:
        """Rebuild from the full current set of ``ids`` / ``vectors`` (explicit; never automatic).

        Without ``spec``: an IVF index keeps its kind (and ``m``/``nbits`` for ivf-pq) and gets ``nlist``,
        ``nprobe`` and the training size recomputed for the new size; an HNSW or flat index keeps its spec
        (for HNSW this drops the tombstones). Use it when :attr:`needs_retrain` is True.
        """
        if spec is None:
            if self._spec is None:
                spec = self.spec_request
            elif self._spec.kind in _IVF_KINDS:
                rows = _as_rows(vectors)
                keep = {k: v for k, v in self._spec.params.items() if k in ("m", "nbits")}
                spec = make_spec(self._spec.kind, rows.shape[0], self.dim, **keep)
            else:
                spec = self._spec
        self.spec_request = spec
        if self._dim is not None:
            self.dim_request = self._dim
        return self.build(ids, vectors, rng=rng)

    def add(self, ids: Any, vectors: Any) -> VectorIndex:
        """Add new items without rebuilding; returns ``self``.

        IVF kinds reuse the trained quantizer (no retraining): check :attr:`needs_retrain` afterwards.
        All rows are validated (ids unique and not yet indexed, vectors finite and normalised) before
        anything is added, so a bad input changes nothing. An HNSW id that was removed may be added again.
        """
        index = self._require_built()
        arr, rows = self._check_vectors_arg(ids, vectors)
        block = _check_block_size(self.block_size)
        sorted_new = _check_unique(arr)
        present = _in_sorted(self._live_ids(), arr)
        if present.any():
            raise InputError(
                f"{int(present.sum())} ids are already in the index, e.g. {arr[present][:5].tolist()}; "
                "remove them first to re-embed"
            )
        n = len(arr)
        block = _add_block(rows, n, block)
        for s in range(0, n, block):  # validate everything first: a partial add would corrupt the index
            _check_block(_f32(rows[s : s + block]), s)
        if n == 0:
            return self
        self._ensure_writable()
        index = self._index
        for s in range(0, n, block):
            index.add_with_ids(_f32(rows[s : s + block]), arr[s : s + block])
        self._sorted_ids = np.union1d(self._live_ids(), sorted_new)
        return self

    def remove(self, ids: Any, *, missing_ok: bool = False) -> int:
        """Remove items by id; returns how many were removed.

        ``flat`` and the IVF kinds delete for real (FAISS ``remove_ids``, linear in the index size).
        FAISS cannot delete from an HNSW graph: the entries stay as *tombstones* whose id is overwritten
        with a sentinel and filtered out at search time by an id selector, so they are never returned but
        still cost memory and some search effort; :attr:`needs_retrain` turns True when they outnumber the
        live entries. Unknown ids raise :class:`~assay.errors.NotFoundError` (nothing is removed) unless
        ``missing_ok``.
        """
        self._require_built()
        arr = _check_ids(ids)
        arr = np.unique(arr)
        present = _in_sorted(self._live_ids(), arr)
        if not present.all() and not missing_ok:
            raise NotFoundError(
                f"{int((~present).sum())} ids are not in the index, e.g. {arr[~present][:5].tolist()}"
            )
        arr = arr[present]
        if len(arr) == 0:
            return 0
        faiss = _faiss()
        self._ensure_writable()
        if self.kind == "hnsw":
            id_map = self._index.id_map
            view = faiss.rev_swig_ptr(id_map.data(), id_map.size())  # [ntotal] int64, FAISS memory
            hit = np.flatnonzero(_in_sorted(arr, view))
            view[hit] = _TOMBSTONE
            removed = len(hit)
            self._tombstones += removed
            self._live_sel = None
            self._params_cache = {}
        else:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(arr)))
        self._sorted_ids = np.setdiff1d(self._live_ids(), arr, assume_unique=True)
        return removed

    # ------------------------------------------------------------------ search
    def _search_params(
        self, nprobe: Any, ef_search: Any, exclude: np.ndarray | None
    ) -> tuple[Any, list[Any]]:
        """FAISS SearchParameters (or None for the index defaults) and the objects to keep alive."""
        kind = self.kind
        if nprobe is not None:
            if kind not in _IVF_KINDS:
                raise InputError(f"nprobe applies to ivf and ivf-pq indexes, not {kind}")
            if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe <= 0:
                raise InputError(f"nprobe must be a positive integer, got {nprobe!r}")
        if ef_search is not None:
            if kind != "hnsw":
                raise InputError(f"ef_search applies to hnsw indexes, not {kind}")
            if isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer)) or ef_search <= 0:
                raise InputError(f"ef_search must be a positive integer, got {ef_search!r}")
        keep: list[Any] = []
        sel = None
        if kind == "hnsw" and self._tombstones:
            if self._live_sel is None:
                self._live_sel = _faiss().IDSelectorRange(0, _INT64_MAX)
            sel = self._live_sel
        if exclude is not None and len(exclude):
            faiss = _faiss()
            batch = faiss.IDSelectorBatch(exclude)
            notsel = faiss.IDSelectorNot(batch)
            keep += [batch, notsel]
            if sel is not None:
                both = faiss.IDSelectorAnd(sel, notsel)
                keep.append(both)
                sel = both
            else:
                sel = notsel
        if sel is None and nprobe is None and ef_search is None:
            return None, keep
        cacheable = sel is None or (sel is self._live_sel and not keep)
        key = (nprobe, ef_search, sel is not None)
        if cacheable and key in self._params_cache:
            return self._params_cache[key], keep
        faiss = _faiss()
        if kind in _IVF_KINDS:
            params = faiss.SearchParametersIVF()
            params.nprobe = int(nprobe) if nprobe is not None else int(self._index.nprobe)
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = (
                int(ef_search)
                if ef_search is not None
                else int(faiss.downcast_index(self._index.index).hnsw.efSearch)
            )
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        if cacheable:  # no per-call selector: reuse the object (the live-id selector is kept on self)
            if len(self._params_cache) > 64:
                self._params_cache.clear()
            self._params_cache[key] = params
        keep.append(params)
        return params, keep

    def search(
        self,
        queries: Any,
        k: int,
        *,
        exclude_ids: Any = None,
        exclude_per_query: Sequence[Any] | np.ndarray | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best items for each query, best first.

        Parameters
        ----------
        queries : array-like ``[dim]`` or ``[q, dim]``
            Query vectors (float16/32/64, finite; normally L2-normalised so that scores are cosines).
        k : int
            Results per query. When fewer than ``k`` items are searchable (``k`` larger than the index,
            removed items, an IVF probe that reaches too few lists), the row is padded with id ``-1`` and
            score ``-inf``; the result is always ``[q, k]``.
        exclude_ids : array-like of int, optional
            Ids never returned for any query (applied inside FAISS with an id selector).
        exclude_per_query : sequence of ``q`` id arrays, or an int array ``[q, e]`` padded with -1
            Ids excluded per query (the search fetches ``k + e`` and filters).
        nprobe : int, optional
            Inverted lists visited (``ivf``, ``ivf-pq``); default: the spec's ``nprobe``.
        ef_search : int, optional
            HNSW search breadth (``hnsw``); default: the spec's ``ef_search``.

        Returns
        -------
        scores : float32 ``[q, k]`` (``[k]`` for a single ``[dim]`` query)
        ids : int64 ``[q, k]`` (``[k]`` for a single query)
        """
        index = self._require_built()
        k = _check_k(k)
        q = np.asarray(queries)
        single = q.ndim == 1
        if single:
            q = q[None, :]
        if q.ndim != 2:
            raise InputError(f"queries must be a vector [dim] or a matrix [n, dim], got shape {q.shape}")
        if q.shape[1] != self._dim:
            raise InputError(f"index has dim {self._dim}, query has dim {q.shape[1]}")
        if q.dtype != np.float32 or not q.flags.c_contiguous:
            if q.dtype.kind not in "fiu":
                raise InputError(f"queries must be numeric, got dtype {q.dtype}")
            q = np.ascontiguousarray(q, dtype=np.float32)
        nq = q.shape[0]
        if nq == 1:  # a single query: its float64 dot product with itself is finite exactly when it is
            # (float32 values cannot overflow it), and is cheaper than isfinite().all() per query
            row = q[0].astype(np.float64)
            finite = bool(np.isfinite(row @ row))
        else:
            finite = bool(np.isfinite(q).all())
        if not finite:
            raise InputError("queries contain NaN or inf")
        exclude = None
        if exclude_ids is not None:
            exclude = np.unique(_check_ids(exclude_ids, name="exclude_ids"))
        per_query = _pad_exclusions(exclude_per_query, nq) if exclude_per_query is not None else None
        extra = per_query.shape[1] if per_query is not None else 0
        k_fetch = min(k + extra, int(index.ntotal))
        valid_ef = ef_search is None or (isinstance(ef_search, (int, np.integer)) and not isinstance(ef_search, bool)
                                         and ef_search > 0)
        if self.kind == "hnsw" and k_fetch > 0 and valid_ef:
            # HNSW returns at most efSearch results per query: a k above it (a harvest's --top 10000) would be
            # padded with -1 without a word. Search at least k wide.
            ef_now = int(ef_search) if ef_search is not None else int(
                _faiss().downcast_index(index.index).hnsw.efSearch)
            if k_fetch > ef_now:
                ef_search = k_fetch
        params, _keep = self._search_params(nprobe, ef_search, exclude)
        if k_fetch == 0:
            D = np.full((nq, k), -np.inf, dtype=np.float32)
            I = np.full((nq, k), -1, dtype=np.int64)
        else:
            D, I = index.search(q, k_fetch, params=params)
            if per_query is not None:
                if I.size * max(per_query.shape[1], 1) <= 2**24:
                    drop = (I[:, :, None] == per_query[:, None, :]).any(axis=2)  # [q, k_fetch]
                else:
                    drop = np.stack([np.isin(I[r], per_query[r]) for r in range(nq)])
                D, I = _compact(D, I, drop | (I < 0), k)
            elif k_fetch < k:
                D, I = _pad(D, I, k)
            if (I[0, -1] < 0) if nq == 1 else (I[:, -1].min() < 0):  # FAISS pads at the end of a row
                D[I < 0] = -np.inf
        if single:
            return D[0], I[0]
        return D, I

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save atomically to ``directory`` (the FAISS file plus ``meta.json``); returns the directory.

        The metadata holds the spec, dim, count, tombstones, encoder name and version, training sizes,
        the FAISS version and the caller's ``metadata``. Readers of the old version are not disturbed.
        """
        index = self._require_built()
        faiss = _faiss()
        meta = {
            "format": _INDEX_FORMAT,
            "format_version": _FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "dim": self.dim,
            "count": self.ntotal,
            "tombstones": self._tombstones,
            "encoder": self.encoder,
            "encoder_version": self.encoder_version,
            "trained_size": self._trained_size,
            "trained_for_n": self._trained_for_n,
            "faiss_version": faiss.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": self.metadata,
        }

        def write_faiss(path: Path) -> None:
            faiss.write_index(index, str(path))

        directory = _write_bundle(directory, {"index": (".faiss", write_faiss)}, meta)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        mmap: bool = True,
        expect_encoder: str | None = None,
        expect_dim: int | None = None,
        block_size: int = DEFAULT_BLOCK,
        retrain_factor: float = 10.0,
    ) -> VectorIndex:
        """Load a saved index.

        With ``mmap=True`` the FAISS file is memory-mapped (``IO_FLAG_MMAP_IFC``: the stored vectors or
        codes and the inverted lists stay on disk until touched, for every kind here); if FAISS refuses,
        it is read normally. :attr:`info` ``["load_mode"]`` says which (``"mmap"`` or ``"read"``). A
        mapped index is copied into memory on the first :meth:`add` or :meth:`remove`.

        Raises
        ------
        IndexNotBuiltError
            No index in ``directory``.
        WorkspaceError
            The index was built by another encoder or for another dimension than ``expect_encoder`` /
            ``expect_dim``, or its files are inconsistent.
        """
        directory, meta = _read_bundle_meta(directory, _INDEX_FORMAT, "vector index")
        enc, dim = str(meta.get("encoder", "")), int(meta["dim"])
        if (expect_encoder is not None and expect_encoder != enc) or (
            expect_dim is not None and int(expect_dim) != dim
        ):
            want_enc = expect_encoder if expect_encoder is not None else enc
            want_dim = int(expect_dim) if expect_dim is not None else dim
            raise WorkspaceError(
                f"index was built by encoder {enc or '?'} (dim {dim}); the workspace asks for "
                f"{want_enc} (dim {want_dim}): rebuild with `assay index`"
            )
        faiss = _faiss()
        path = directory / meta["files"]["index"]
        index, mode = None, "read"
        if mmap:
            try:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
                mode = "mmap"
            except RuntimeError:
                index = None
        if index is None:
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise WorkspaceError(
                    f"cannot read the FAISS index {path} ({exc}); it is damaged: rebuild it with `assay index`"
                ) from exc
        if int(index.d) != dim:
            raise WorkspaceError(f"{path} holds vectors of dim {index.d}, its metadata says {dim}")
        spec = IndexSpec.from_dict(meta["spec"])
        obj = cls(
            spec=spec,
            dim=dim,
            encoder=enc,
            encoder_version=str(meta.get("encoder_version", "")),
            metadata=meta.get("metadata") or {},
            block_size=block_size,
            retrain_factor=retrain_factor,
        )
        obj._index = index
        obj._spec = spec
        obj._dim = dim
        obj._trained_size = int(meta.get("trained_size", 0))
        obj._trained_for_n = int(meta.get("trained_for_n", 0))
        obj._mmapped = mode == "mmap"
        obj._load_mode = mode
        if spec.kind == "hnsw":
            id_map = faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())
            obj._tombstones = int((id_map < 0).sum())
        if obj.ntotal != int(meta["count"]):
            raise WorkspaceError(
                f"index in {directory} is inconsistent: metadata says {meta['count']} vectors, "
                f"the FAISS file holds {obj.ntotal}: rebuild with `assay index`"
            )
        obj._apply_search_defaults()
        return obj


def _new_trained_index(faiss: Any, spec: IndexSpec, dim: int, rows: Any, n: int, gen: np.random.Generator):
    """A new, empty, trained FAISS index for ``spec``; returns ``(index, training sample size)``."""
    p = spec.params
    if spec.kind == "flat":
        return faiss.index_factory(dim, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT), 0
    if spec.kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap,HNSW{p.get('M', 32)},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.downcast_index(index.index)
        hnsw.hnsw.efConstruction = p.get("ef_construction", 40)
        hnsw.hnsw.efSearch = p.get("ef_search", 64)
        return index, 0
    nlist = p["nlist"]
    need = nlist if spec.kind == "ivf" else max(nlist, 2 ** p["nbits"])
    if n < need:
        raise InputError(
            f"{spec.kind} with nlist={nlist}"
            + (f" and nbits={p['nbits']}" if spec.kind == "ivf-pq" else "")
            + f" needs at least {need} vectors to train, got {n}; use a smaller nlist or kind 'flat'"
        )
    train_n = max(need, min(n, p.get("train_size", TRAIN_POINTS_PER_CENTROID * nlist)))
    sample = np.sort(gen.choice(n, size=train_n, replace=False)) if train_n < n else np.arange(n)
    xt = _f32(rows[sample])  # [train_n, dim]
    _check_block(xt, 0, name="training vectors")
    factory = spec.factory_string()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(gen.integers(0, 2**31 - 1))
    if spec.kind == "ivf-pq":
        # no polysemous training (unused, and slow); the sub-quantizer k-means on small dimensions is
        # slow in FAISS, so it runs 10 iterations on at most 64 residuals per centroid
        index.do_polysemous_training = False
        index.pq.cp.seed = int(gen.integers(0, 2**31 - 1))
        index.pq.cp.niter = 10
        index.pq.cp.max_points_per_centroid = 64
    index.verbose = False
    index.train(xt)
    index.nprobe = min(p["nprobe"], nlist)
    return index, int(train_n)


def _faiss_ids(index: Any, kind: str) -> np.ndarray:
    """All live ids held by a FAISS index built by :class:`VectorIndex` (unsorted)."""
    faiss = _faiss()
    if kind in ("flat", "hnsw"):
        view = faiss.rev_swig_ptr(index.id_map.data(), index.id_map.size())
        ids = np.array(view, dtype=np.int64)
        return ids[ids >= 0]
    invlists = index.invlists
    parts = []
    for lst in range(index.nlist):
        size = invlists.list_size(lst)
        if size:
            ptr = invlists.get_ids(lst)
            parts.append(np.array(faiss.rev_swig_ptr(ptr, size), dtype=np.int64))
            invlists.release_ids(lst, ptr)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _pad_exclusions(exclude: Any, nq: int) -> np.ndarray:
    """Per-query exclusions as an int64 matrix ``[nq, e]`` padded with -1."""
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        if exclude.shape[0] != nq:
            raise InputError(f"exclude_per_query has {exclude.shape[0]} rows for {nq} queries")
        if exclude.size and exclude.dtype.kind not in "iu":
            raise InputError(f"exclude_per_query must hold integer ids, got dtype {exclude.dtype}")
        return exclude.astype(np.int64, copy=False)
    rows = list(exclude)
    if len(rows) != nq:
        raise InputError(
            f"exclude_per_query has {len(rows)} entries for {nq} queries; expected one per query"
        )
    rows = [_check_ids(r, name="exclude_per_query ids") for r in rows]
    width = max((len(r) for r in rows), default=0)
    out = np.full((nq, width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# ----------------------------------------------------------------------------------- neighbourhoods


def neighbors(
    index: VectorIndex,
    vectors_for_ids: Any,
    ids: Any,
    k: int,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    block_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest indexed items of each given item, the item itself excluded.

    Parameters
    ----------
    index : VectorIndex
    vectors_for_ids : array-like ``[n, dim]``
        The vectors of ``ids`` (from the vector store), same row order.
    ids : array-like of int64 ``[n]``
    k : int

    Returns
    -------
    scores : float32 ``[n, k]``, best first, ``-inf`` padding
    nbr_ids : int64 ``[n, k]``, ``-1`` padding

    Asks the index for ``k + 1`` and drops exactly one entry per row: the item's own id where returned,
    else the last entry (tie-aware: exact duplicates may outrank the item itself).
    """
    k = _check_k(k)
    bs = _check_block_size(block_size)
    if not isinstance(index, VectorIndex):
        raise InputError(f"index must be a VectorIndex, got {type(index).__name__}")
    rows = _as_rows(vectors_for_ids, "vectors_for_ids")
    arr = _check_ids(ids, n=rows.shape[0])
    n = len(arr)
    scores = np.empty((n, k), dtype=np.float32)
    nbr = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, bs):
        D, I = index.search(_f32(rows[s : s + bs]), k + 1, nprobe=nprobe, ef_search=ef_search)
        scores[s : s + bs], nbr[s : s + bs] = _drop_self(D, I, arr[s : s + bs])
    return scores, nbr


def _merge_topk(
    best_s: np.ndarray, best_p: np.ndarray, S: np.ndarray, P: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` largest of two candidate sets per row (unordered)."""
    cs = np.concatenate([best_s, S], axis=1)  # [b, k + k']
    cp = np.concatenate([best_p, P], axis=1)
    if cs.shape[1] <= k:
        return _pad(cs, cp, k)
    part = np.argpartition(-cs, k - 1, axis=1)[:, :k]  # [b, k]
    return np.take_along_axis(cs, part, axis=1), np.take_along_axis(cp, part, axis=1)


def _sort_rows(S: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, then id ascending (padding -1/-inf last)."""
    idkey = np.where(I < 0, _INT64_MAX, I)
    order = np.lexsort((idkey, -S), axis=-1)
    return np.take_along_axis(S, order, axis=1), np.take_along_axis(I, order, axis=1)


def _exact_block_topk(
    Q: np.ndarray, rows: Any, k: int, bs: int, self_offset: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of query block ``Q [b, d]`` against all ``rows`` in blocks of ``bs``.

    Returns (scores [b, k], positions [b, k]) unsorted. With ``self_offset``, query row ``r`` is database
    row ``self_offset + r`` and is excluded (tie-aware, as in :func:`_drop_self`).
    """
    faiss = _faiss()
    b = Q.shape[0]
    n = rows.shape[0]
    best_s = np.full((b, k), -np.inf, dtype=np.float32)
    best_p = np.full((b, k), -1, dtype=np.int64)
    own = None if self_offset is None else self_offset + np.arange(b, dtype=np.int64)  # [b]
    for ds in range(0, n, bs):
        X = _f32(rows[ds : ds + bs])  # [B, d]
        B = X.shape[0]
        overlap = own is not None and ds < self_offset + b and self_offset < ds + B
        kk = min(k + (1 if overlap else 0), B)
        if kk == 0:
            continue
        if b * B <= _SMALL_BLOCK:  # numpy: no per-call thread start-up, which dominates tiny blocks
            S = Q @ X.T  # [b, B]
            P = np.broadcast_to(np.arange(B, dtype=np.int64), (b, B))
            if kk < B:
                part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]  # [b, kk] unordered
                S, P = np.take_along_axis(S, part, axis=1), part.astype(np.int64)
            S, P = S.astype(np.float32, copy=True), P.copy()
        else:
            S, P = faiss.knn(Q, X, kk, metric=faiss.METRIC_INNER_PRODUCT)  # [b, kk] best first
        P = np.where(P >= 0, P + ds, -1)
        if overlap:
            # drop each query's own row; where exact duplicates tied it out of the k + 1, drop the worst
            is_self = P == own[:, None]  # [b, kk]
            in_block = (own >= ds) & (own < ds + B)  # [b]
            drop = is_self.copy()
            tied_out = np.flatnonzero(in_block & ~is_self.any(axis=1))
            drop[tied_out, np.argmin(S[tied_out], axis=1)] = True
            S[drop] = -np.inf
            P[drop] = -1
        best_s, best_p = _merge_topk(best_s, best_p, S, P, k)
    return best_s, best_p


def brute_force_search(
    queries: Any, ids: Any, vectors: Any, k: int, *, block_size: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search of ``queries [q, d]`` over ``vectors [n, d]`` keyed by ``ids``.

    Blockwise over the database with a running top-``k`` (memory ``O(q k + q block_size)``), no index.
    Returns ``(scores float32 [q, k], ids int64 [q, k])`` sorted by score then id, padded with -inf/-1.
    """
    k = _check_k(k)
    bs = _check_block_size(block_size)
    rows = _as_rows(vectors)
    arr = _check_ids(ids, n=rows.shape[0])
    q = np.asarray(queries)
    single = q.ndim == 1
    q = _f32(q[None, :] if single else q)
    if q.ndim != 2 or q.shape[1] != rows.shape[1]:
        raise InputError(f"vectors have dim {rows.shape[1]}, queries have shape {q.shape}")
    if not np.isfinite(q).all():
        raise InputError("queries contain NaN or inf")
    S, P = _exact_block_topk(q, rows, k, bs, None)
    I = np.where(P >= 0, arr[np.maximum(P, 0)], -1)
    S, I = _sort_rows(S, I)
    return (S[0], I[0]) if single else (S, I)


@dataclass(frozen=True)
class KnnGraph:
    """The k nearest neighbours of every item of a corpus (itself excluded).

    Attributes
    ----------
    ids : int64 ``[n]``
    nbr_ids : int64 ``[n, k]``, best first, ``-1`` padding
    scores : float32 ``[n, k]``, ``-inf`` padding
    info : dict
        How it was built (``exact``, ``kind``, ``k``, ``seconds`` ...), saved with it.
    """

    ids: np.ndarray
    nbr_ids: np.ndarray
    scores: np.ndarray
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", np.asarray(self.ids))
        object.__setattr__(self, "nbr_ids", np.asarray(self.nbr_ids))
        object.__setattr__(self, "scores", np.asarray(self.scores))
        if self.ids.ndim != 1 or self.nbr_ids.ndim != 2 or self.scores.shape != self.nbr_ids.shape:
            raise InputError(
                f"KnnGraph needs ids [n], nbr_ids [n, k] and scores [n, k]; got {self.ids.shape}, "
                f"{self.nbr_ids.shape}, {self.scores.shape}"
            )
        if self.nbr_ids.shape[0] != self.ids.shape[0]:
            raise InputError(f"KnnGraph has {len(self.ids)} ids but {self.nbr_ids.shape[0]} neighbour rows")

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.nbr_ids.shape[1])

    def edges(self, threshold: float, *, mutual: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edges with similarity ``>= threshold``, each pair once.

        Returns ``(i_ids, j_ids, sims)`` with ``i_ids < j_ids``, sorted by ``(i, j)``; a pair listed from
        both ends keeps the larger score. With ``mutual=True`` only pairs found from both ends are kept.
        """
        if not isinstance(threshold, (int, float, np.floating, np.integer)) or not np.isfinite(threshold):
            raise InputError(f"threshold must be a finite number, got {threshold!r}")
        src = np.repeat(self.ids, self.k)  # [n k]
        dst = self.nbr_ids.reshape(-1)
        sim = self.scores.reshape(-1)
        ok = (dst >= 0) & (sim >= threshold) & (src != dst)
        src, dst, sim = src[ok], dst[ok], sim[ok]
        lo, hi = np.minimum(src, dst), np.maximum(src, dst)
        if len(lo) == 0:
            e = np.zeros(0, dtype=np.int64)
            return e, e.copy(), np.zeros(0, dtype=np.float32)
        order = np.lexsort((-sim, hi, lo))
        lo, hi, sim = lo[order], hi[order], sim[order]
        first = np.ones(len(lo), dtype=bool)
        first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
        counts = np.diff(np.append(np.flatnonzero(first), len(lo)))  # [n_pairs]
        lo, hi, sim = lo[first], hi[first], sim[first]  # first of each group has the largest score
        if mutual:
            keep = counts >= 2
            lo, hi, sim = lo[keep], hi[keep], sim[keep]
        return lo, hi, sim.astype(np.float32, copy=False)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save atomically as ``.npy`` files plus ``meta.json`` in ``directory`` (one graph per directory)."""
        meta = {
            "format": _GRAPH_FORMAT,
            "format_version": _FORMAT_VERSION,
            "n": self.n,
            "k": self.k,
            "info": dict(self.info),
        }
        files = {
            "ids": (".npy", _npy_writer(self.ids.astype(np.int64, copy=False))),
            "nbr_ids": (".npy", _npy_writer(self.nbr_ids.astype(np.int64, copy=False))),
            "scores": (".npy", _npy_writer(self.scores.astype(np.float32, copy=False))),
        }
        return _write_bundle(directory, files, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = False) -> KnnGraph:
        """Load a saved graph (``mmap=True`` maps the arrays read-only)."""
        directory, meta = _read_bundle_meta(directory, _GRAPH_FORMAT, "kNN graph")
        mode = "r" if mmap else None
        arrays = {name: np.load(directory / fname, mmap_mode=mode) for name, fname in meta["files"].items()}
        graph = cls(
            ids=arrays["ids"], nbr_ids=arrays["nbr_ids"], scores=arrays["scores"], info=meta.get("info", {})
        )
        if graph.n != int(meta["n"]) or graph.k != int(meta["k"]):
            raise WorkspaceError(f"kNN graph in {directory} is inconsistent with its metadata")
        return graph


def knn_graph(
    ids: Any,
    vectors: Any,
    k: int,
    *,
    index: VectorIndex | None = None,
    exact: bool = False,
    block_size: int = 4096,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> KnnGraph:
    """The kNN graph of a whole corpus, built blockwise with bounded memory, self excluded.

    Parameters
    ----------
    ids : int64 ``[n]``
    vectors : ``[n, dim]`` (memmap / :class:`ConcatRows` fine; read block by block)
    k : int
    index : VectorIndex, optional
        Query it block by block (approximate kinds give an approximate graph). Without an index, or with
        ``exact=True``, the graph is exact: each block of ``block_size`` queries is compared with the
        corpus block by block with a running top-k (like ``faiss.contrib.exhaustive_search``).
    block_size : int
        Rows per block; memory is ``O(n k + block_size^2)`` for exact, ``O(n k + block_size k)`` else.

    Returns
    -------
    KnnGraph
        Rows in the order of ``ids``; neighbours best first (exact: ties by id), padded with -1/-inf
        when the corpus has at most ``k`` items.
    """
    k = _check_k(k)
    bs = _check_block_size(block_size)
    rows = _as_rows(vectors)
    arr = _check_ids(ids, n=rows.shape[0])
    _check_unique(arr)
    n = len(arr)
    t0 = time.perf_counter()
    if index is not None and not exact:
        if index.dim != rows.shape[1]:
            raise InputError(f"index has dim {index.dim}, vectors have dim {rows.shape[1]}")
        scores, nbr = neighbors(index, rows, arr, k, nprobe=nprobe, ef_search=ef_search, block_size=bs)
        info = {"exact": False, "kind": index.kind, "k": k, "nprobe": nprobe, "ef_search": ef_search}
    else:
        scores = np.empty((n, k), dtype=np.float32)
        nbr = np.empty((n, k), dtype=np.int64)
        for qs in range(0, n, bs):
            Q = _f32(rows[qs : qs + bs])  # [b, d]
            _check_block(Q, qs, check_norm=False)
            S, P = _exact_block_topk(Q, rows, k, bs, qs)
            I = np.where(P >= 0, arr[np.maximum(P, 0)], -1)
            scores[qs : qs + bs], nbr[qs : qs + bs] = _sort_rows(S, I)
        info = {"exact": True, "kind": "brute-force", "k": k}
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["block_size"] = bs
    return KnnGraph(ids=arr.copy(), nbr_ids=nbr, scores=scores, info=info)


def range_pairs(
    ids: Any, vectors: Any, threshold: float, *, block_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs with similarity ``>= threshold``, exact, blockwise (never an ``n x n`` matrix).

    Returns ``(i_ids, j_ids, sims)``: int64, int64, float32 ``[n_pairs]``, each unordered pair once with
    ``i_ids < j_ids``, sorted by ``(i, j)``. Memory is ``O(block_size^2 + n_pairs)``: a low threshold on a
    large corpus can yield very many pairs.
    """
    if not isinstance(threshold, (int, float, np.floating, np.integer)) or not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold!r}")
    bs = _check_block_size(block_size)
    rows = _as_rows(vectors)
    arr = _check_ids(ids, n=rows.shape[0])
    _check_unique(arr)
    n = len(arr)
    out_i, out_j, out_s = [], [], []
    for a in range(0, n, bs):
        A = _f32(rows[a : a + bs])  # [ba, d]
        _check_block(A, a, check_norm=False)
        for b in range(a, n, bs):
            B = A if b == a else _f32(rows[b : b + bs])  # [bb, d]
            S = A @ B.T  # [ba, bb]
            hit = S >= threshold
            if b == a:
                hit &= np.triu(np.ones(hit.shape, dtype=bool), k=1)  # each pair once, no self pairs
            r, c = np.nonzero(hit)
            if len(r):
                out_i.append(arr[a + r])
                out_j.append(arr[b + c])
                out_s.append(S[r, c])
    if not out_i:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0, dtype=np.float32)
    i = np.concatenate(out_i)
    j = np.concatenate(out_j)
    s = np.concatenate(out_s).astype(np.float32, copy=False)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((hi, lo))
    return lo[order], hi[order], s[order]


def rerank(
    queries: Any,
    candidate_ids: Any,
    get_vectors: Callable[[np.ndarray], Any],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidates exactly and keep the best ``k`` (e.g. after an ``ivf-pq`` search).

    Compressed codes rank approximately; asking the index for ``r * k`` candidates and re-scoring them
    with the stored vectors restores most of the recall at little cost, since only the candidates are read.

    Parameters
    ----------
    queries : ``[q, d]`` (or ``[d]``)
    candidate_ids : int64 ``[q, c]`` (or ``[c]``), ``-1`` padding ignored
    get_vectors : callable
        ``get_vectors(ids [u]) -> [u, d]`` rows in the order given (e.g. ``VectorStore.get``; float16 fine).
    k : int

    Returns
    -------
    scores float32 ``[q, k]``, ids int64 ``[q, k]``: best first (ties by id), padded with -inf / -1.
    """
    k = _check_k(k)
    q = np.asarray(queries)
    C = np.asarray(candidate_ids)
    single = q.ndim == 1
    if single:
        q, C = q[None, :], C.reshape(1, -1)
    q = _f32(q)
    if C.ndim != 2 or C.shape[0] != q.shape[0]:
        raise InputError(f"candidate_ids must be [q, c] for {q.shape[0]} queries, got shape {C.shape}")
    C = C.astype(np.int64, copy=False)
    uniq = np.unique(C[C >= 0])  # [u]
    if len(uniq) == 0:
        S, I = _pad(np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64), k)
        return (S[0], I[0]) if single else (S, I)
    V = _f32(get_vectors(uniq))  # [u, d]
    if V.shape != (len(uniq), q.shape[1]):
        raise InputError(f"get_vectors returned shape {V.shape}, expected {(len(uniq), q.shape[1])}")
    pos = np.searchsorted(uniq, np.maximum(C, 0))  # [q, c]
    S = np.einsum("qd,qcd->qc", q, V[pos]).astype(np.float32)  # [q, c]
    S[C < 0] = -np.inf
    I = np.where(C < 0, -1, C)
    S, I = _sort_rows(S, I)
    S, I = _pad(S, I, k)
    return (S[0], I[0]) if single else (S, I)


def recall_at_k(
    found_ids: Any,
    true_ids: Any,
    *,
    true_scores: Any = None,
    found_true_scores: Any = None,
    tol: float = 1e-5,
) -> float:
    """Mean recall@k of ``found_ids [q, k]`` against exact ``true_ids [q, k]``, tie-aware when scored.

    Without scores it is the plain overlap ``|found & true| / k``. With ``true_scores [q, k]`` (exact,
    best first) and ``found_true_scores [q, k]`` (the *exact* similarity of each found item, not the
    index's approximate score), a found item also counts when its exact score ties the k-th true score
    within ``tol``: any of several equally distant items is a correct answer. Padding (-1) never counts.
    """
    F = np.atleast_2d(np.asarray(found_ids, dtype=np.int64))
    T = np.atleast_2d(np.asarray(true_ids, dtype=np.int64))
    if F.shape[0] != T.shape[0]:
        raise InputError(f"found_ids has {F.shape[0]} rows, true_ids {T.shape[0]}")
    k = T.shape[1]
    F = F[:, :k]
    hit = (F[:, :, None] == T[:, None, :]).any(axis=2) & (F >= 0)  # [q, k]
    if true_scores is not None and found_true_scores is not None:
        TS = np.atleast_2d(np.asarray(true_scores, dtype=np.float64))
        FS = np.atleast_2d(np.asarray(found_true_scores, dtype=np.float64))[:, :k]
        kth = TS[:, -1:]  # [q, 1]
        hit |= (FS >= kth - tol) & (F >= 0)
    return float(np.minimum(hit.sum(axis=1), k).mean() / k)
