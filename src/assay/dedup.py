"""Exact and near-duplicate groups: a pure core on arrays, and the workspace step behind ``assay dedup``.

How it works
------------
Duplicates are edges between item ids; groups are the connected components of those edges (union-find,
here :func:`scipy.sparse.csgraph.connected_components`), so a group is symmetric and transitive by
construction: every member is in exactly one group, and a chain ``a ~ b ~ c`` puts all three together.
Three kinds of edges feed the same grouping:

* **same bytes**: ``item -> duplicate_of`` from ingest (equal sha256);
* **same perceptual hash**: 64-bit pHash (``imagehash.phash``) within a Hamming ``radius``
  (:func:`hamming_pairs`: FAISS ``IndexBinaryFlat`` range search for small corpora, exact multi-index
  hashing with direct-address tables for large ones, chosen by a measured cost model; never all pairs in
  Python);
* **near-duplicate embeddings**: pairs with cosine ``>= threshold`` (:func:`embedding_pairs`: the kNN of
  each item from the vector index, widened until every neighbour above the threshold is found and
  re-scored exactly, or an exact blockwise range search; never an ``n x n`` matrix).

Representative rule
-------------------
One item per group is kept: the one with the **most pixels** (``width * height`` from ingest), ties broken
by the **smallest id** (the earliest ingested). Items without a known size count as 0 pixels. An item whose
bytes equal an earlier item's therefore never beats that earlier item.

The workspace step
------------------
:func:`dedup` records the groups in the catalog (``duplicate_members``), after which search and selection
skip every member but the representative (``Catalog.non_representative_ids``). It is incremental: the ids
already checked with the same settings are kept in ``<workspace>/cache/dedup/`` and only items not yet
checked are searched against the whole corpus; the new edges are merged with the recorded groups (a new
item may join a group or bridge two). Changed settings, an explicit ``incremental=False``, or items that
left the corpus since the last run make it a full run. For the embedding method the index of the encoder is
brought up to date first (as ``assay index`` would), so newly embedded items are searchable.
pHash codes are cached per item in ``<workspace>/cache/phash/<key>/`` (keyed by the hashing version, item
id and sha256) and computed once; an item that fails to decode is skipped, counted and marked ``error`` in
the catalog with the reason, as ``assay embed`` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import types
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DecodeError, IndexNotBuiltError, InputError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .index import VectorIndex
    from .workspace import Workspace

__all__ = [
    "METHODS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_RADIUS",
    "PHASH_BYTES",
    "PHASH_DRAFT",
    "check_threshold",
    "check_radius",
    "connected_components",
    "choose_representatives",
    "group_duplicates",
    "merge_edges",
    "phash_image",
    "phash_images",
    "phash_detail",
    "phash_pairs_to_keep",
    "phash_bytes",
    "hamming_distances",
    "hamming_pairs",
    "HAMMING_ENGINES",
    "choose_hamming_engine",
    "embedding_pairs",
    "DedupResult",
    "dedup",
    "workspace_phashes",
    "phash_cache_key",
    "PhashReport",
    "VARIANTS",
    "near_duplicate_variants",
    "pair_metrics",
    "group_pairs",
    "sweep_grouping",
]

log = logging.getLogger(__name__)

METHODS = ("embedding", "phash", "both")
#: Default cosine threshold for near duplicates (efficientnet-lite0; see docs/dedup.md for the sweep).
DEFAULT_THRESHOLD = 0.90
#: Default for text-only encoders (minilm): paraphrases with other meanings sit at 0.90-0.97 there, while
#: copies with small edits (case, spacing, punctuation, a typo) stay above 0.98.
DEFAULT_TEXT_THRESHOLD = 0.98
#: A run that sets aside more than this share of its items says so (a threshold too low for the corpus?).
SET_ASIDE_WARNING = 0.2


def default_threshold(encoder: str) -> float:
    """The default near-duplicate cosine for ``encoder``'s embeddings: stricter for text-only encoders."""
    from .encoders.base import get_encoder

    try:
        modalities = get_encoder(encoder).modalities
    except Exception:  # noqa: BLE001 - an encoder this installation cannot make (precomputed, a missing extra)
        return DEFAULT_THRESHOLD
    return DEFAULT_TEXT_THRESHOLD if set(modalities) == {"text"} else DEFAULT_THRESHOLD
#: Default Hamming radius (of 64 bits) for perceptual-hash duplicates (see docs/dedup.md for the sweep).
DEFAULT_RADIUS = 8
PHASH_BYTES = 8  # 64 bits: imagehash.phash with hash_size=8
#: JPEGs are decoded at a reduced scale that stays >= this size before hashing (pHash looks at 32x32).
PHASH_DRAFT = (64, 64)
_MAX_RADIUS = 32  # two random 64-bit hashes differ in 32 bits on average: beyond that nothing is "same"
#: An image whose 32 x 32 grey thumbnail (what pHash transforms) has a standard deviation below this (of 255)
#: is *low detail*: a flat or nearly flat image, whose hash bits are set by faint noise, so that flat images
#: of any colour hash alike. A pHash pair with a low-detail image counts only when the two images' mean
#: colours also agree within ``LOW_DETAIL_COLOUR`` (of 255, per channel): two black frames are duplicates,
#: a red and a blue swatch are not.
LOW_DETAIL_STD = 4.0
LOW_DETAIL_COLOUR = 8.0
_STATE_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------


def check_threshold(threshold: Any) -> float:
    """A cosine threshold in ``(0, 1]``, as float; raise :class:`InputError` otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise InputError(f"threshold must be a number in (0, 1], got {threshold!r}")
    t = float(threshold)
    if not math.isfinite(t) or not 0.0 < t <= 1.0:
        raise InputError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    return t


def check_radius(radius: Any) -> int:
    """A Hamming radius in ``[0, 32]`` bits (of 64), as int; raise :class:`InputError` otherwise."""
    if (
        isinstance(radius, bool)
        or not isinstance(radius, (int, np.integer))
        or not 0 <= radius <= _MAX_RADIUS
    ):
        raise InputError(f"radius must be an integer number of bits in [0, {_MAX_RADIUS}], got {radius!r}")
    return int(radius)


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise UnknownNameError("dedup method", str(method), METHODS)
    return str(method)


def _as_ids(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InputError(
            f"{name} must be a 1-D array of integer item ids, got dtype {arr.dtype} shape {arr.shape}"
        )
    return arr.astype(np.int64, copy=False)


def _empty_edges(score_dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = np.zeros(0, dtype=np.int64)
    return e, e.copy(), np.zeros(0, dtype=score_dtype)


def _canonical_edges(
    i: np.ndarray, j: np.ndarray, s: np.ndarray, *, larger_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unordered pair once with ``i < j``, no self pairs, sorted by ``(i, j)``; keeps the best score."""
    keep = i != j
    i, j, s = i[keep], j[keep], s[keep]
    if len(i) == 0:
        return _empty_edges(s.dtype)
    lo, hi = np.minimum(i, j), np.maximum(i, j)  # [m]
    order = np.lexsort((-s if larger_is_better else s, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], s[first]


# ---------------------------------------------------------------------------------------------------------
# grouping: connected components and representatives (pure)
# ---------------------------------------------------------------------------------------------------------


def merge_edges(
    *edges: tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate edge lists ``(i_ids, j_ids[, scores])`` into one ``(i_ids, j_ids)`` (scores dropped)."""
    iis = [_as_ids(e[0], "i_ids") for e in edges]
    jjs = [_as_ids(e[1], "j_ids") for e in edges]
    for a, b in zip(iis, jjs):
        if a.shape != b.shape:
            raise InputError(
                f"each edge list needs i_ids and j_ids of one length, got {a.shape} and {b.shape}"
            )
    if not iis:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy()
    return np.concatenate(iis), np.concatenate(jjs)


def connected_components(i_ids: Any, j_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the undirected graph with edges ``i_ids[e] -- j_ids[e]``.

    Parameters
    ----------
    i_ids, j_ids : int64 ``[m]``
        Global item ids; any order, repeats and self loops allowed.

    Returns
    -------
    nodes : int64 ``[n]``
        Every id that appears in an edge, ascending.
    labels : int64 ``[n]``
        Component of each node, numbered ``0..g-1`` in the order of each component's smallest id.
    """
    i = _as_ids(i_ids, "i_ids")
    j = _as_ids(j_ids, "j_ids")
    if i.shape != j.shape:
        raise InputError(f"i_ids and j_ids must have the same length, got {len(i)} and {len(j)}")
    if len(i) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy()
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as _cc

    nodes = np.unique(np.concatenate([i, j]))  # [n]
    pi = np.searchsorted(nodes, i)  # [m] positions
    pj = np.searchsorted(nodes, j)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(pi), dtype=np.int8), (pi, pj)), shape=(n, n)).tocsr()
    _, raw = _cc(graph, directed=True, connection="weak")  # [n]
    # renumber by the smallest node (nodes are ascending, so the first occurrence is the smallest id)
    _, first = np.unique(raw, return_index=True)  # [g]
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return nodes, rank[raw]


def choose_representatives(nodes: Any, labels: Any, *, ids: Any = None, pixels: Any = None) -> np.ndarray:
    """The representative of each component: most pixels, then smallest id (earliest ingested).

    Parameters
    ----------
    nodes : int64 ``[n]``
    labels : int64 ``[n]``, components ``0..g-1``
    ids, pixels : int64 ``[p]``, optional
        Pixel counts (``width * height``) of items; items not listed count as 0 pixels.

    Returns
    -------
    int64 ``[g]``: the representative id of component ``c`` at position ``c``.
    """
    nodes = _as_ids(nodes, "nodes")
    labels = _as_ids(labels, "labels")
    if nodes.shape != labels.shape:
        raise InputError(f"nodes and labels must have the same length, got {len(nodes)} and {len(labels)}")
    if len(nodes) == 0:
        return np.zeros(0, dtype=np.int64)
    px = np.zeros(len(nodes), dtype=np.int64)  # [n]
    if ids is not None and pixels is not None:
        pid = _as_ids(ids, "ids")
        ppx = np.asarray(pixels, dtype=np.int64).reshape(-1)
        if ppx.shape != pid.shape:
            raise InputError(f"ids and pixels must have the same length, got {len(pid)} and {len(ppx)}")
        if len(pid):
            order = np.argsort(pid, kind="stable")
            sid, spx = pid[order], ppx[order]
            pos = np.minimum(np.searchsorted(sid, nodes), len(sid) - 1)
            hit = sid[pos] == nodes
            px[hit] = spx[pos[hit]]
    order = np.lexsort((nodes, -px, labels))  # by component, then most pixels, then smallest id
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    reps = np.empty(int(labels.max()) + 1, dtype=np.int64)
    reps[labels[order][first]] = nodes[order][first]
    return reps


def group_duplicates(i_ids: Any, j_ids: Any, *, ids: Any = None, pixels: Any = None) -> dict[int, np.ndarray]:
    """Duplicate groups from edges: connected components of two or more items, one representative each.

    Parameters
    ----------
    i_ids, j_ids : int64 ``[m]``
        Duplicate edges between global item ids (any direction; repeats and self loops are harmless).
    ids, pixels : int64 ``[p]``, optional
        Image sizes in pixels for the representative rule (:func:`choose_representatives`).

    Returns
    -------
    dict ``{representative id: int64 [members] ascending, representative included}``, ordered by each
    group's smallest id. Every id of an edge (other than a lone self loop) is in exactly one group.
    """
    nodes, labels = connected_components(i_ids, j_ids)
    if len(nodes) == 0:
        return {}
    reps = choose_representatives(nodes, labels, ids=ids, pixels=pixels)  # [g]
    order = np.argsort(labels, kind="stable")  # nodes ascending within each component
    sizes = np.bincount(labels, minlength=len(reps))  # [g]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    members = nodes[order]
    out: dict[int, np.ndarray] = {}
    for c in range(len(reps)):
        if sizes[c] >= 2:
            out[int(reps[c])] = members[bounds[c] : bounds[c + 1]]
    return out


# ---------------------------------------------------------------------------------------------------------
# perceptual hashes (pure)
# ---------------------------------------------------------------------------------------------------------


def phash_image(image: "Image.Image") -> np.ndarray:
    """The 64-bit pHash of a PIL image (``imagehash.phash``, hash_size 8), packed as uint8 ``[8]``."""
    import imagehash

    bits = np.asarray(imagehash.phash(image, hash_size=8).hash, dtype=bool).reshape(-1)  # [64]
    return np.packbits(bits)  # [8]


def phash_detail(image: "Image.Image") -> np.ndarray:
    """float32 ``[4]``: the standard deviation of the 32 x 32 grey thumbnail pHash transforms, and the image's
    mean R, G, B (0-255). See :data:`LOW_DETAIL_STD`."""
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float32)
    rgb = np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
    return np.concatenate([[grey.std()], rgb.reshape(-1, 3).mean(axis=0)]).astype(np.float32)


def phash_pairs_to_keep(i: np.ndarray, j: np.ndarray, ids: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """bool ``[len(i)]``: which pHash pairs ``(i, j)`` count. ``ids`` and ``detail`` (rows of
    :func:`phash_detail`) describe the hashed items; a pair with a low-detail image counts only when the mean
    colours agree (:data:`LOW_DETAIL_STD`, :data:`LOW_DETAIL_COLOUR`). Items missing from ``ids`` are kept."""
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    ids = np.asarray(ids, np.int64)
    detail = np.asarray(detail, np.float32).reshape(len(ids), 4)
    keep = np.ones(len(i), dtype=bool)
    if len(i) == 0 or len(ids) == 0:
        return keep
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(sorted_ids, x), len(ids) - 1)
        return order[pos], sorted_ids[pos] == x

    ri, fi = rows(i)
    rj, fj = rows(j)
    both = fi & fj
    di, dj = detail[ri], detail[rj]  # [p, 4]
    low = (di[:, 0] < LOW_DETAIL_STD) | (dj[:, 0] < LOW_DETAIL_STD)
    same_colour = np.abs(di[:, 1:] - dj[:, 1:]).max(axis=1) <= LOW_DETAIL_COLOUR
    keep[both & low & ~same_colour] = False
    return keep


def phash_images(images: Sequence["Image.Image"]) -> np.ndarray:
    """pHashes of many images: uint8 ``[n, 8]``."""
    out = np.zeros((len(images), PHASH_BYTES), dtype=np.uint8)
    for r, im in enumerate(images):
        out[r] = phash_image(im)
    return out


def phash_bytes(data: bytes) -> np.ndarray:
    """Decode image bytes (JPEG at a reduced draft scale, see ``PHASH_DRAFT``) and pHash them: uint8 ``[8]``.

    Raises :class:`~assay.errors.DecodeError` when the bytes are not a decodable image.
    """
    from .media import decode_image

    return phash_image(decode_image(data, draft_size=PHASH_DRAFT))


def phash_cache_key() -> str:
    """The version key of cached pHashes: the hashing library's version and the decode settings."""
    import imagehash

    return f"phash8d-imagehash{imagehash.__version__}-draft{PHASH_DRAFT[0]}"  # d: with phash_detail


def _check_codes(codes: Any, n: int | None = None) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[1] != PHASH_BYTES or c.dtype != np.uint8:
        raise InputError(
            f"codes must be uint8 [n, {PHASH_BYTES}] (64-bit hashes), got dtype {c.dtype} shape {c.shape}"
        )
    if n is not None and c.shape[0] != n:
        raise InputError(f"expected {n} codes (one per id), got {c.shape[0]}")
    return np.ascontiguousarray(c)


_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def hamming_distances(a: Any, b: Any) -> np.ndarray:
    """Hamming distances between rows of packed codes ``a [n, 8]`` and ``b [n, 8]`` (same shape): int ``[n]``."""
    a = _check_codes(a)
    b = _check_codes(b, a.shape[0])
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(axis=1, dtype=np.int64)  # [n]


# Measured costs on the reference machine (2 cores), in ns: FAISS IndexBinaryFlat range search per (query,
# code); FAISS IndexBinaryMultiHash per bucket probe and per shortlist candidate (an unordered_set insert and a
# random read); the numpy multi-index hashing per probe (a table gather), per candidate and per indexed code.
_FLAT_NS = 1.5
_FAISS_PROBE_NS, _FAISS_CAND_NS = 500.0, 650.0
_MIH_PROBE_NS, _MIH_CAND_NS, _MIH_BUILD_NS = 70.0, 15.0, 300.0
_MIH_MAX_BITS = 22  # direct-address table of 2**b + 1 int64 offsets: 32 MiB at most
_MIH_MAX_CANDIDATES = 8_000_000  # candidates verified at once (memory ~ 40 bytes each)
HAMMING_ENGINES = ("auto", "flat", "mih", "faiss-multihash")


def _probes(b: int, nflip: int) -> int:
    return sum(math.comb(b, f) for f in range(nflip + 1))


def _multihash_plan(
    n: int, radius: int, n_queries: int | None = None, *, engine: str = "mih"
) -> tuple[int, int, int, float]:
    """``(nhash, b, nflip, estimated ns)`` for exact multi-index hashing of ``n`` uniform 64-bit codes.

    Pigeonhole: split (some of) the 64 bits into ``nhash`` disjoint chunks of ``b`` bits; two codes within
    ``radius`` differ in at most ``nflip = radius // nhash`` bits of some chunk, so probing, for every query,
    each bucket within ``nflip`` flips of each of its chunks finds every pair (the candidates are then
    verified exactly). The plan minimises the cost model of ``engine`` ("mih": numpy tables, or
    "faiss-multihash") for ``n_queries`` queries (default ``n``).
    """
    nq = n if n_queries is None else n_queries
    best = (1, 1, 0, math.inf)
    max_b = _MIH_MAX_BITS if engine == "mih" else 32
    for nhash in range(1, 65):
        b = min(64 // nhash, max_b)
        if b < 1:
            break
        nflip = radius // nhash
        if nflip > b:
            continue
        probes = nhash * _probes(b, nflip)
        per_probe_cands = n / 2.0**b
        if engine == "mih":
            cost = nhash * n * _MIH_BUILD_NS + probes * nq * (_MIH_PROBE_NS + _MIH_CAND_NS * per_probe_cands)
        else:
            cost = probes * nq * (_FAISS_PROBE_NS + _FAISS_CAND_NS * per_probe_cands)
        if cost < best[3]:
            best = (nhash, b, nflip, cost)
    return best


def _codes_u64(c: np.ndarray) -> np.ndarray:
    """uint8 ``[n, 8]`` packed codes as uint64 ``[n]`` (first byte most significant)."""
    return np.ascontiguousarray(c).view(">u8").reshape(-1).astype(np.uint64)


def _flip_masks(b: int, nflip: int) -> np.ndarray:
    """Every ``b``-bit mask with at most ``nflip`` bits set: int64 ``[probes]``, 0 first."""
    from itertools import combinations

    masks = [0]
    for f in range(1, nflip + 1):
        masks.extend(sum(1 << x for x in combo) for combo in combinations(range(b), f))
    return np.asarray(masks, dtype=np.int64)


def _mih_pairs(
    v: np.ndarray, qpos: np.ndarray, radius: int, nhash: int, b: int, nflip: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-index hashing with direct-address tables, vectorised: positions ``(src, dst, dist)``.

    Queries are visited in the order of their chunk value, so the table reads for ``value ^ mask`` walk the
    table almost sequentially (XOR with a mask only swaps aligned blocks) instead of at random.
    """
    mask = np.uint64((1 << b) - 1)
    flips = _flip_masks(b, nflip)  # [probes]
    qv_all = v[qpos]  # [q]
    out_s, out_d, out_h = [], [], []
    for h in range(nhash):
        shift = np.uint64(h * b)
        vals = ((v >> shift) & mask).astype(np.int64)  # [n] chunk h of every code
        order = np.argsort(vals, kind="stable")  # [n] positions grouped by chunk value
        starts = np.zeros((1 << b) + 1, dtype=np.int64)  # [2**b + 1] bucket offsets into `order`
        np.cumsum(np.bincount(vals, minlength=1 << b), out=starts[1:])
        qvals = ((qv_all >> shift) & mask).astype(np.int64)  # [q]
        qorder = np.argsort(qvals, kind="stable")
        qvals, qsrc = qvals[qorder], qpos[qorder]  # queries sorted by their chunk value
        qcodes = qv_all[qorder]  # [q] their codes, in that order
        codes_sorted = v[order]  # [n] codes in bucket order: reads below are near sequential
        for m in flips.tolist():
            probe = qvals ^ m  # [q] bucket probed by each query
            lo = starts[probe]  # [q]
            cnt = starts[probe + 1] - lo  # [q]
            nz = np.flatnonzero(cnt)  # most probes of a sparse table are empty
            if len(nz) == 0:
                continue
            lo, cnt = lo[nz], cnt[nz]
            csum = np.cumsum(cnt)  # [nz]
            total = int(csum[-1])
            # split so that at most _MIH_MAX_CANDIDATES candidates are expanded at once
            cuts = np.searchsorted(
                csum, np.arange(_MIH_MAX_CANDIDATES, total, _MIH_MAX_CANDIDATES), side="left"
            )
            for a, z in zip(np.r_[0, cuts + 1], np.r_[cuts + 1, len(nz)]):
                c = cnt[a:z]
                if len(c) == 0:
                    continue
                if (c == 1).all():  # the common case: one code per bucket
                    qi, slot = nz[a:z], lo[a:z]  # [t] query rank, slot in bucket order
                else:
                    tot = int(c.sum())
                    qi = np.repeat(nz[a:z], c)  # [tot]
                    first = np.repeat(np.cumsum(c) - c, c)  # [tot] start of each query's run
                    slot = np.repeat(lo[a:z], c) + (np.arange(tot, dtype=np.int64) - first)  # [tot]
                dist = np.bitwise_count(qcodes[qi] ^ codes_sorted[slot]).astype(np.int32)  # [t]
                src, dst = qsrc[qi], order[slot]
                keep = (dist <= radius) & (src != dst)
                if keep.any():
                    out_s.append(src[keep])
                    out_d.append(dst[keep])
                    out_h.append(dist[keep])
    if not out_s:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0, dtype=np.int32)
    return np.concatenate(out_s), np.concatenate(out_d), np.concatenate(out_h)


def choose_hamming_engine(n: int, n_queries: int, radius: int) -> str:
    """``"flat"`` or ``"mih"``: the cheaper by the measured cost model, for ``n_queries`` queries over ``n`` codes."""
    mih_cost = _multihash_plan(n, radius, n_queries, engine="mih")[3]
    return "flat" if _FLAT_NS * n * n_queries <= mih_cost else "mih"


def hamming_pairs(
    ids: Any,
    codes: Any,
    radius: int,
    *,
    query_ids: Any = None,
    engine: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of items whose 64-bit codes are within ``radius`` bits, without comparing all pairs.

    Parameters
    ----------
    ids : int64 ``[n]``, unique
    codes : uint8 ``[n, 8]``
        Packed 64-bit hashes (:func:`phash_images`), one row per id.
    radius : int
        Largest Hamming distance that counts (inclusive), 0..32.
    query_ids : int64 ``[q]``, optional
        Only pairs with at least one end among these ids (each must be in ``ids``): the incremental case.
        Default: every pair.
    engine : {"auto", "flat", "mih", "faiss-multihash"}
        ``flat``: FAISS ``IndexBinaryFlat`` exhaustive range search (``q n`` popcounts, fast per pair,
        quadratic); ``mih``: exact multi-index hashing (pigeonhole over ``nhash`` chunks of ``b`` bits,
        probing every bucket within ``radius // nhash`` flips) with direct-address tables in numpy, near
        linear for uniform codes and radius up to ~8; ``faiss-multihash``: the same idea through FAISS
        ``IndexBinaryMultiHash`` (slower per candidate here: it keeps a hash set per query); ``auto``
        picks ``flat`` or ``mih`` by a cost model measured on the reference machine.

    Returns
    -------
    i_ids, j_ids : int64 ``[m]`` with ``i < j``, each pair once, sorted by ``(i, j)``
    dist : int32 ``[m]`` Hamming distances

    Memory is ``O(n + m)``: many identical codes (say, thousands of blank images) give quadratically many
    pairs.
    """
    radius = check_radius(radius)
    arr = _as_ids(ids, "ids")
    c = _check_codes(codes, len(arr))
    if len(np.unique(arr)) != len(arr):
        raise InputError("ids must be unique")
    if engine not in HAMMING_ENGINES:
        raise UnknownNameError("hamming engine", str(engine), HAMMING_ENGINES)
    n = len(arr)
    if query_ids is None:
        qpos = np.arange(n, dtype=np.int64)
    else:
        q = _as_ids(query_ids, "query_ids")
        order = np.argsort(arr, kind="stable")
        pos = np.searchsorted(arr[order], q)
        pos = np.minimum(pos, max(n - 1, 0))
        if n == 0 or not (arr[order][pos] == q).all():
            missing = q[(arr[order][pos] != q)] if n else q
            raise InputError(f"query_ids must be among ids; e.g. {missing[:5].tolist()} are not")
        qpos = np.unique(order[pos])
    if n < 2 or len(qpos) == 0:
        return _empty_edges(np.int32)
    if engine == "auto":
        engine = choose_hamming_engine(n, len(qpos), radius)
    if engine == "mih":
        nhash, b, nflip, _ = _multihash_plan(n, radius, len(qpos), engine="mih")
        src, dst, dist = _mih_pairs(_codes_u64(c), qpos, radius, nhash, b, nflip)
        return _canonical_edges(arr[src], arr[dst], dist, larger_is_better=False)
    faiss = _faiss()
    if engine == "flat":
        index = faiss.IndexBinaryFlat(64)
        index.add(c)
        qcodes_all = c
    else:
        nhash, b, nflip, _ = _multihash_plan(n, radius, len(qpos), engine="faiss-multihash")
        # 16-byte rows (8 zero bytes of padding): the hash extraction reads 8 bytes from each chunk's first
        # byte, which would run past the end of 8-byte rows; zeros do not change any distance.
        c16 = np.zeros((n, 16), dtype=np.uint8)
        c16[:, :PHASH_BYTES] = c
        index = faiss.IndexBinaryMultiHash(128, nhash, b)
        index.nflip = nflip
        index.add(c16)
        qcodes_all = c16
    out_i, out_j, out_d = [], [], []
    for s in range(0, len(qpos), 65_536):
        qp = qpos[s : s + 65_536]  # [bq] positions of the queries
        lims, D, I = index.range_search(
            np.ascontiguousarray(qcodes_all[qp]), radius + 1
        )  # FAISS keeps d < radius
        counts = np.diff(lims).astype(np.int64)  # [bq]
        out_i.append(arr[np.repeat(qp, counts)])
        out_j.append(arr[I.astype(np.int64)])
        out_d.append(D.astype(np.int32))
    return _canonical_edges(
        np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d), larger_is_better=False
    )


def _faiss():
    from .errors import require

    return require("faiss", "faiss", "duplicate search")


# ---------------------------------------------------------------------------------------------------------
# embedding pairs (pure)
# ---------------------------------------------------------------------------------------------------------


def _rows_at(vectors: Any, pos: np.ndarray) -> np.ndarray:
    """float32 rows of ``vectors`` at positions ``pos`` (memmap / ConcatRows friendly: sorted reads)."""
    if len(pos) == 0:
        return np.zeros((0, vectors.shape[1]), dtype=np.float32)
    uniq, inv = np.unique(pos, return_inverse=True)
    return np.asarray(vectors[uniq], dtype=np.float32)[inv]


def _exact_query_pairs(
    arr: np.ndarray, rows: Any, qpos: np.ndarray, threshold: float, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query, any) with cosine >= threshold, exact, blockwise: memory O(block_size^2)."""
    n = len(arr)
    out_i, out_j, out_s = [], [], []
    for a in range(0, len(qpos), block_size):
        qp = qpos[a : a + block_size]
        Q = _rows_at(rows, qp)  # [bq, d]
        for b in range(0, n, block_size):
            X = np.asarray(rows[b : b + block_size], dtype=np.float32)  # [bx, d]
            if a == 0 and not np.isfinite(X).all():
                raise InputError(f"vectors contain NaN or inf (in rows {b}..{b + len(X) - 1})")
            S = Q @ X.T  # [bq, bx]
            r, col = np.nonzero(S >= threshold)
            if len(r):
                out_i.append(arr[qp[r]])
                out_j.append(arr[b + col])
                out_s.append(S[r, col])
    if not out_i:
        return _empty_edges()
    return _canonical_edges(
        np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)
    )


def embedding_pairs(
    ids: Any,
    vectors: Any,
    threshold: float,
    *,
    index: "VectorIndex | None" = None,
    query_ids: Any = None,
    k: int = 16,
    max_k: int = 1024,
    reducer: Any = None,
    block_size: int = 4096,
    nprobe: int | None = None,
    ef_search: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of items whose embeddings have cosine ``>= threshold``, never through an ``n x n`` matrix.

    Parameters
    ----------
    ids : int64 ``[n]``, unique
    vectors : ``[n, dim]`` L2-normalised rows of ``ids`` (float16/32; memmap or ConcatRows fine)
    threshold : float in (0, 1]
    index : VectorIndex, optional
        Without it the search is exact: :func:`assay.index.range_pairs` (blockwise, upper triangle) for the
        whole corpus, or each query block against every block. With it, each query asks the index for its
        ``k`` nearest items; every candidate is re-scored exactly from ``vectors`` (so the threshold means
        the same for every index kind, PCA or PQ included), and a query whose ``k`` neighbours all pass is
        asked again with 4x ``k`` (up to ``max_k``), so no neighbour above the threshold is cut off by
        ``k``. Recall is then that of the index (exact for ``flat``). Neighbours the index returns that are
        not in ``ids`` are ignored.
    query_ids : int64 ``[q]``, optional
        Only pairs with at least one end among these ids (incremental). Default: all pairs.
    reducer : object with ``transform``, optional
        Applied to query vectors before they go to the index (an index built on PCA-reduced vectors).
    progress : callable, optional
        Called with the number of queries finished after each block (index path).

    Returns
    -------
    i_ids, j_ids : int64 ``[m]`` with ``i < j``, each pair once, sorted by ``(i, j)``
    sims : float32 ``[m]`` exact cosines
    """
    threshold = check_threshold(threshold)
    for name, v in (("k", k), ("max_k", max_k), ("block_size", block_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    from .index import _as_rows, range_pairs

    rows = _as_rows(vectors)
    arr = _as_ids(ids, "ids")
    if rows.shape[0] != len(arr):
        raise InputError(f"ids has {len(arr)} entries but vectors has {rows.shape[0]} rows")
    order = np.argsort(arr, kind="stable")
    sorted_ids = arr[order]
    if len(arr) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
        raise InputError("ids must be unique")
    if query_ids is None:
        qpos = np.arange(len(arr), dtype=np.int64)
    else:
        q = np.unique(_as_ids(query_ids, "query_ids"))
        pos = np.minimum(np.searchsorted(sorted_ids, q), max(len(arr) - 1, 0))
        if len(arr) == 0 or not (sorted_ids[pos] == q).all():
            bad = q if len(arr) == 0 else q[sorted_ids[pos] != q]
            raise InputError(f"query_ids must be among ids; e.g. {bad[:5].tolist()} are not")
        qpos = order[pos]
    if len(arr) < 2 or len(qpos) == 0:
        return _empty_edges()
    if index is None:
        if query_ids is None:
            return range_pairs(arr, rows, threshold, block_size=block_size)
        return _exact_query_pairs(arr, rows, qpos, threshold, block_size)
    return _index_pairs(
        arr,
        rows,
        sorted_ids,
        order,
        qpos,
        threshold,
        index,
        int(k),
        int(max_k),
        reducer,
        block_size,
        nprobe,
        ef_search,
        progress,
    )


_RESCORE_CHUNK = 1 << 14  # candidate pairs re-scored at once in _index_pairs (2 x 84 MB at 1280-d)


def _index_pairs(
    arr,
    rows,
    sorted_ids,
    order,
    qpos,
    threshold,
    index,
    k,
    max_k,
    reducer,
    block_size,
    nprobe,
    ef_search,
    progress,
):
    from .index import neighbors

    cap = max(1, min(max_k, index.ntotal - 1)) if index.ntotal > 1 else 1
    out_i, out_j, out_s = [], [], []
    for a in range(0, len(qpos), block_size):
        qp = qpos[a : a + block_size]  # [b]
        Q = _rows_at(rows, qp)  # [b, d] float32, original space
        todo = np.arange(len(qp))  # rows of this block still to (re)query
        kk = min(k, cap)
        while len(todo):
            Qi = Q[todo] if reducer is None else np.asarray(reducer.transform(Q[todo]), dtype=np.float32)
            _, nbr = neighbors(
                index, Qi, arr[qp[todo]], kk, nprobe=nprobe, ef_search=ef_search, block_size=max(len(todo), 1)
            )  # [t, kk]
            # re-score every candidate exactly from the stored vectors
            flat = nbr.reshape(-1)  # [t kk]
            p = np.minimum(np.searchsorted(sorted_ids, flat), len(sorted_ids) - 1)
            known = (flat >= 0) & (sorted_ids[p] == flat)
            sims = np.full(flat.shape, -np.inf, dtype=np.float32)
            if known.any():
                kpos = np.nonzero(known)[0]  # [c]
                qrow_all = np.repeat(np.arange(len(todo)), kk)  # [t kk]
                Qt = Q[todo]
                # In chunks of pairs: when every neighbour passes (near-identical frames), kk grows towards
                # the corpus size and one [t kk, d] gather would need gigabytes.
                for c0 in range(0, len(kpos), _RESCORE_CHUNK):
                    sel = kpos[c0 : c0 + _RESCORE_CHUNK]
                    cand_rows = _rows_at(rows, order[p[sel]])  # [c, d]
                    sims[sel] = np.einsum("cd,cd->c", Qt[qrow_all[sel]], cand_rows)
            sims = sims.reshape(nbr.shape)  # [t, kk]
            hit = sims >= threshold
            r, col = np.nonzero(hit)
            if len(r):
                out_i.append(arr[qp[todo[r]]])
                out_j.append(nbr[r, col])
                out_s.append(sims[r, col])
            saturated = hit.all(axis=1) & (nbr >= 0).all(axis=1)  # every neighbour passed: maybe more
            if kk >= cap or not saturated.any():
                break
            todo = todo[saturated]
            kk = min(kk * 4, cap)
        if progress is not None:
            progress(len(qp))
    if not out_i:
        return _empty_edges()
    return _canonical_edges(
        np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)
    )


# ---------------------------------------------------------------------------------------------------------
# workspace level: pHash cache
# ---------------------------------------------------------------------------------------------------------


class _PhashCache:
    """pHash codes of items, in append-only ``part-*.npz`` files under ``cache/phash/<key>/``.

    Each part holds ``ids`` int64 ``[n]``, ``sha`` (sha256 hex, ``S64`` ``[n]``), ``codes`` uint8 ``[n, 8]``,
    ``detail`` float32 ``[n, 4]`` (:func:`phash_detail`) and ``ok`` bool ``[n]`` (False: the item could not be
    decoded). An entry is used only while the item's sha256 in the catalog is the one it was computed from.
    """

    MAX_PARTS = 16

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ids, sha, codes, detail, ok = [], [], [], [], []
        if self.root.exists():
            for p in sorted(self.root.glob("part-*.npz")):
                try:
                    with np.load(p, allow_pickle=False) as z:
                        part = (z["ids"].astype(np.int64), z["sha"].astype("S64"), z["codes"].astype(np.uint8),
                                z["detail"].astype(np.float32).reshape(-1, 4), z["ok"].astype(bool))
                except (OSError, ValueError, KeyError) as exc:  # a damaged part is recomputed, not trusted
                    log.warning("ignoring unreadable pHash cache file %s: %s", p, exc)
                    continue
                for out, a in zip((ids, sha, codes, detail, ok), part):
                    out.append(a)
        if not ids:
            return (
                np.zeros(0, np.int64),
                np.zeros(0, "S64"),
                np.zeros((0, PHASH_BYTES), np.uint8),
                np.zeros((0, 4), np.float32),
                np.zeros(0, bool),
            )
        i, s, c = np.concatenate(ids), np.concatenate(sha), np.concatenate(codes)
        d, o = np.concatenate(detail), np.concatenate(ok)
        # later parts win: keep the last entry of each id
        rev = np.arange(len(i))[::-1]
        _, last = np.unique(i[rev], return_index=True)
        keep = np.sort(rev[last])
        return i[keep], s[keep], c[keep], d[keep], o[keep]

    def _write(self, ids: np.ndarray, sha: np.ndarray, codes: np.ndarray, detail: np.ndarray, ok: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        tmp = self.root / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                ids=ids.astype(np.int64),
                sha=sha.astype("S64"),
                codes=codes.astype(np.uint8),
                detail=detail.astype(np.float32),
                ok=ok.astype(bool),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)

    def append(self, ids: np.ndarray, sha: np.ndarray, codes: np.ndarray, detail: np.ndarray, ok: np.ndarray) -> None:
        """Add entries durably (one new part file); an interrupted run keeps every part written."""
        if len(ids):
            self._write(ids, sha, codes, detail, ok)

    def compact(self) -> None:
        """Merge the parts into one once there are more than ``MAX_PARTS``."""
        parts = sorted(self.root.glob("part-*.npz")) if self.root.exists() else []
        if len(parts) <= self.MAX_PARTS:
            return
        self._write(*self.load())
        for p in parts:
            p.unlink(missing_ok=True)


_SCAN_ABOVE = 20_000


def _sha_and_uri(ws: "Workspace", ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """sha256 (``S64``, empty when unknown) and URI of each id, read as two columns (not whole rows)."""
    import sqlalchemy as sa

    from .catalog import items_table as t

    sha = np.zeros(len(ids), dtype="S64")
    uris = [""] * len(ids)
    if len(ids) == 0:
        return sha, uris
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    found_id, found_sha, found_uri = [], [], []
    with ws.catalog.engine.connect() as conn:
        if len(ids) > _SCAN_ABOVE:  # one range scan beats thousands of IN (...) queries
            q = sa.select(t.c.id, t.c.sha256, t.c.uri).where(
                t.c.id.between(int(sorted_ids[0]), int(sorted_ids[-1]))
            )
            results = [conn.execute(q)]
        else:
            results = (
                conn.execute(
                    sa.select(t.c.id, t.c.sha256, t.c.uri).where(t.c.id.in_(sorted_ids[s : s + 900].tolist()))
                )
                for s in range(0, len(sorted_ids), 900)
            )
        for res in results:
            for r in res:
                found_id.append(int(r.id))
                found_sha.append((r.sha256 or "").encode("ascii"))
                found_uri.append(r.uri)
    if found_id:
        fid = np.asarray(found_id, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, fid), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == fid
        fsha = np.asarray(found_sha, dtype="S64")
        sha[order[pos[hit]]] = fsha[hit]
        for p, u in zip(order[pos[hit]].tolist(), (u for u, h in zip(found_uri, hit.tolist()) if h)):
            uris[p] = u
    return sha, uris


def _hash_one(uri: str) -> tuple[np.ndarray | None, np.ndarray | None, str | None, float, float]:
    """``(code or None, detail or None, error or None, decode seconds, hash seconds)`` for one item."""
    from .media import decode_image, read_bytes

    t0 = time.perf_counter()
    try:
        image = decode_image(read_bytes(uri), draft_size=PHASH_DRAFT)
    except DecodeError as exc:
        return None, None, str(exc), time.perf_counter() - t0, 0.0
    except Exception as exc:  # one bad item never stops the run; the reason is recorded
        return None, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, 0.0
    t1 = time.perf_counter()
    try:
        code, detail = phash_image(image), phash_detail(image)
    except Exception as exc:  # pragma: no cover - imagehash on a decoded RGB image does not fail
        return None, None, f"pHash failed: {type(exc).__name__}: {exc}", t1 - t0, time.perf_counter() - t1
    return code, detail, None, t1 - t0, time.perf_counter() - t1


@dataclass
class PhashReport:
    """What :func:`workspace_phashes` did."""

    computed: int = 0
    cached: int = 0
    failed: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # the first 20 failures with reasons
    failed_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # every item that failed
    #: float32 [m, 4], a row per returned id: :func:`phash_detail` (for :func:`phash_pairs_to_keep`)
    detail: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    decode_seconds: float = 0.0  # summed over worker threads
    hash_seconds: float = 0.0
    wall_seconds: float = 0.0


def workspace_phashes(
    ws: "Workspace",
    ids: Any,
    *,
    workers: int | None = None,
    chunk: int = 2048,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    mark_errors: bool = True,
) -> tuple[np.ndarray, np.ndarray, PhashReport]:
    """pHash codes of the items ``ids``, from the cache or computed (and cached) now.

    Returns ``(ok_ids int64 [m], codes uint8 [m, 8], report)`` for the items that could be decoded, in the
    order of ``ids``; the others are counted in the report (with reasons) and, with ``mark_errors``,
    marked ``error`` in the catalog like an embedding failure.
    """
    t0 = time.perf_counter()
    want = _as_ids(ids, "ids")
    cache = _PhashCache(ws.cache_dir / "phash" / phash_cache_key())
    c_ids, c_sha, c_codes, c_detail, c_ok = cache.load()
    sha_now, uris = _sha_and_uri(ws, want)  # S64 [n], list[str]
    codes = np.zeros((len(want), PHASH_BYTES), dtype=np.uint8)
    detail = np.zeros((len(want), 4), dtype=np.float32)
    ok = np.zeros(len(want), dtype=bool)
    known = np.zeros(len(want), dtype=bool)
    rep = PhashReport()
    if len(c_ids):
        order = np.argsort(c_ids)
        pos = np.minimum(np.searchsorted(c_ids[order], want), len(c_ids) - 1)
        src = order[pos]
        known = (c_ids[src] == want) & (c_sha[src] == sha_now) & (sha_now != b"")
        codes[known] = c_codes[src[known]]
        detail[known] = c_detail[src[known]]
        ok[known] = c_ok[src[known]]
        rep.cached = int(known.sum())
        rep.failed += int((known & ~ok).sum())
    todo = np.flatnonzero(~known)
    if on_start is not None:
        on_start(len(todo))
    errors: list[tuple[int, str]] = []
    if len(todo):
        workers = workers or max(1, min(8, (os.cpu_count() or 2)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for s in range(0, len(todo), chunk):
                part = todo[s : s + chunk]
                results = list(pool.map(_hash_one, [uris[p] for p in part.tolist()]))
                new_ok = np.zeros(len(part), dtype=bool)
                for r, (code, det, err, dt_dec, dt_hash) in enumerate(results):
                    rep.decode_seconds += dt_dec
                    rep.hash_seconds += dt_hash
                    if code is None:
                        errors.append((int(want[part[r]]), err or "cannot decode"))
                    else:
                        codes[part[r]] = code
                        detail[part[r]] = det
                        new_ok[r] = True
                ok[part] = new_ok
                rep.computed += int(new_ok.sum())
                rep.failed += int((~new_ok).sum())
                # cache successes and failures alike (keyed by sha256), one part per chunk
                cache.append(want[part], sha_now[part], codes[part], detail[part], new_ok)
                if progress is not None:
                    progress(len(part))
    cache.compact()
    if errors and mark_errors:
        ws.catalog.mark_errors((i, f"pHash decode: {e}") for i, e in errors)
    rep.errors = errors[:20]
    rep.failed_ids = np.sort(want[~ok])
    rep.detail = detail[ok]
    rep.wall_seconds = time.perf_counter() - t0
    return want[ok], codes[ok], rep


# ---------------------------------------------------------------------------------------------------------
# workspace level: the dedup step
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DedupResult:
    """What one :func:`dedup` run found and recorded.

    ``groups`` holds every near-duplicate group recorded in the catalog after the run (old and new),
    ``{representative: [member ids ascending, representative included]}``; ``removed`` counts the
    members that are not representatives.
    """

    method: str
    threshold: float | None
    radius: int | None
    encoder: str | None
    mode: str  # "full" or "incremental"
    universe: int = 0  # items taking part (embedded and/or decodable images)
    checked: int = 0  # items searched against the corpus in this run
    pairs: dict[str, int] = field(default_factory=dict)  # edges found in this run, per kind
    groups: dict[int, list[int]] = field(default_factory=dict)
    changed_groups: int = 0
    skipped_decode: int = 0  # items whose image could not be decoded for pHash (this run)
    decode_errors: list[tuple[int, str]] = field(default_factory=list)
    index: dict[str, Any] | None = None  # what was done to bring the index up to date, if anything
    phash: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def removed(self) -> int:
        return int(sum(len(m) - 1 for m in self.groups.values()))

    def to_dict(self, uris: dict[int, str] | None = None) -> dict[str, Any]:
        """The ``--json`` object: ``groups`` and ``removed`` first, then the run's details (``uris``: ``{id:
        uri}`` to name the members; without it they carry their ids only)."""
        uris = uris or {}
        return {
            "groups": [
                {
                    "representative": int(rep),
                    "items": [{"id": int(i), "uri": uris.get(int(i), "")} for i in members],
                }
                for rep, members in self.groups.items()
            ],
            "removed": self.removed,
            "method": self.method,
            "threshold": self.threshold,
            "radius": self.radius,
            "encoder": self.encoder,
            "mode": self.mode,
            "universe": self.universe,
            "checked": self.checked,
            "pairs": dict(self.pairs),
            "changed_groups": self.changed_groups,
            "skipped_decode": self.skipped_decode,
            "decode_errors": [{"id": i, "reason": r} for i, r in self.decode_errors],
            "index": self.index,
            "phash": self.phash,
            "seconds": round(self.seconds, 3),
        }


def _state_dir(ws: "Workspace") -> Path:
    return ws.cache_dir / "dedup"


def _load_state(ws: "Workspace") -> tuple[dict[str, Any] | None, np.ndarray]:
    d = _state_dir(ws)
    try:
        state = json.loads((d / "state.json").read_text())
        checked = np.load(d / state["checked_file"], allow_pickle=False).astype(np.int64)
        if state.get("format") != _STATE_FORMAT:
            return None, np.zeros(0, np.int64)
        return state, checked
    except (OSError, ValueError, KeyError, TypeError):
        return None, np.zeros(0, np.int64)


def _save_state(ws: "Workspace", key: dict[str, Any], checked: np.ndarray, changes_seq: int = 0) -> None:
    d = _state_dir(ws)
    d.mkdir(parents=True, exist_ok=True)
    name = f"checked-{uuid.uuid4().hex[:12]}.npy"
    tmp = d / (name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.unique(checked).astype(np.int64))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / name)
    state = {"format": _STATE_FORMAT, "key": key, "checked_file": name, "updated": time.time(),
             "changes_seq": int(changes_seq)}  # the catalog's change log, read up to here
    from ._atomic import atomic_output

    with atomic_output(d / "state.json") as tmp:  # a temporary name of its own: concurrent runs do not collide
        tmp.write_text(json.dumps(state, indent=1))
    for p in d.glob("checked-*.npy"):  # the previous list, now unreferenced
        if p.name != name:
            p.unlink(missing_ok=True)


def _ensure_index(ws: "Workspace", encoder: str) -> tuple[Any, dict[str, Any] | None]:
    """A Searcher whose index holds exactly the embedded ok items, updating the index when it does not."""
    from .search import Searcher, build_index

    store = ws.vectors(encoder)
    store.meta()  # NoEmbeddingsError: run `assay embed` first
    want = store.ids()
    if len(want) == 0:
        from .errors import NoEmbeddingsError

        raise NoEmbeddingsError(f"no embeddings from {encoder!r} yet; run `assay embed` first")
    want = want[np.isin(want, ws.catalog.ids(status="ok"))]
    searcher = Searcher(ws, encoder)
    try:
        have = searcher.index().ids
        if len(have) == len(want) and np.array_equal(np.sort(have), np.sort(want)):
            return searcher, None
    except IndexNotBuiltError:
        pass
    report = build_index(ws, encoder, bridge=False)
    return Searcher(ws, encoder), {k: report[k] for k in ("action", "added", "removed") if k in report} | {
        "kind": report["index"]["kind"],
        "count": report["index"]["count"],
    }


def _store_rows(store: Any) -> tuple[np.ndarray, Any]:
    from .index import ConcatRows

    ids, arrays = [], []
    for i, v in store.iter_shards():
        if len(i):
            ids.append(i)
            arrays.append(v)
    if not ids:
        from .errors import NoEmbeddingsError

        raise NoEmbeddingsError(f"no embeddings stored at {store.root}; run `assay embed` first")
    return np.concatenate(ids), ConcatRows(arrays)


def dedup(
    ws: "Workspace",
    *,
    method: str = "embedding",
    threshold: float | None = None,
    radius: int = DEFAULT_RADIUS,
    encoder: str | None = None,
    incremental: bool = True,
    k: int = 16,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> DedupResult:
    """Find duplicate groups in the workspace and record them in the catalog.

    Parameters
    ----------
    method : {"embedding", "phash", "both"}
        Which near-duplicate edges to use; same-bytes edges (sha256, from ingest) are always included.
    threshold : float in (0, 1], optional
        Cosine similarity at or above which two embeddings are near duplicates (methods embedding, both).
        Default: :func:`default_threshold` of the encoder (0.90; 0.98 for text-only encoders).
    radius : int in [0, 32]
        Hamming distance (bits of 64) at or below which two pHashes are duplicates (methods phash, both).
    encoder : str, optional
        Whose embeddings (default: the workspace's encoder). The index is brought up to date first.
    incremental : bool
        Search only the items not checked by an earlier run with the same settings (default). False, or
        different settings, re-checks everything and replaces every recorded group.
    k : int
        Neighbours asked per item at first (widened automatically where all ``k`` pass the threshold).
    workers : int, optional
        Decode threads for pHash.
    progress, on_start : callable, optional
        Progress of the long steps, as one count of work: ``on_start(total)`` (called again when a later
        step raises the total: items to search, then pHashes to compute), then ``progress(n done)``.

    Returns
    -------
    DedupResult

    Raises
    ------
    InputError
        A threshold outside (0, 1], a radius outside [0, 32], an unknown method.
    NoEmbeddingsError
        Method embedding/both and the encoder has no embeddings (run ``assay embed``).
    """
    t0 = time.perf_counter()
    method = _check_method(method)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(incremental, (bool, np.bool_)):  # a truthy string such as "no" is a mistake, not True
        raise InputError(f"incremental must be True or False, got {incremental!r}")
    use_emb = method in ("embedding", "both")
    use_ph = method in ("phash", "both")
    radius = check_radius(radius) if use_ph else None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    cat = ws.catalog
    enc_name = (encoder or ws.default_encoder) if use_emb else None
    if use_emb:
        threshold = check_threshold(threshold) if threshold is not None else default_threshold(enc_name)
    else:
        threshold = None

    searcher = None
    index_report = None
    key: dict[str, Any] = {"method": method, "threshold": threshold, "radius": radius}
    if use_emb:
        searcher, index_report = _ensure_index(ws, enc_name)
        key["encoder"] = enc_name
        key["encoder_version"] = searcher.store.meta()["version"]
    if use_ph:
        key["phash"] = phash_cache_key()

    ok_ids = cat.ids(status="ok")
    universe_parts = []
    emb_ids = searcher.index().ids if use_emb else np.zeros(0, np.int64)
    if use_emb:
        universe_parts.append(emb_ids)
    if use_ph:
        universe_parts.append(cat.ids(status="ok", modality="image"))
    universe = np.unique(np.concatenate(universe_parts)) if universe_parts else np.zeros(0, np.int64)

    state, checked = _load_state(ws)
    changed_ids, changes_seq = cat.changes_since(int(state.get("changes_seq", 0)) if state else 0)
    mode = "incremental"
    if not incremental or state is None or state.get("key") != key:
        mode, checked = "full", np.zeros(0, np.int64)
    elif len(checked) and not np.isin(checked, universe).all():
        # items left the corpus (errors, removed embeddings): their old edges cannot be undone piecemeal
        mode, checked = "full", np.zeros(0, np.int64)
    elif len(checked) and np.isin(changed_ids, checked).any():
        # items whose bytes changed since they were checked (a replaced file): their old edges are wrong now
        mode, checked = "full", np.zeros(0, np.int64)
    query = universe[~np.isin(universe, checked)] if mode == "incremental" else universe

    failed = np.zeros(0, np.int64)  # items that could not be decoded: not checked, so never "left the corpus"
    result = DedupResult(
        method=method,
        threshold=threshold,
        radius=radius,
        encoder=enc_name,
        mode=mode,
        universe=int(len(universe)),
        checked=int(len(query)),
        index=index_report,
    )
    edges: list[tuple[np.ndarray, np.ndarray]] = []

    # same bytes (from ingest): always, between ok items
    dmap = cat.duplicate_map()
    if dmap:
        a = np.fromiter(dmap.keys(), dtype=np.int64, count=len(dmap))
        b = np.fromiter(dmap.values(), dtype=np.int64, count=len(dmap))
        keep = np.isin(a, ok_ids) & np.isin(b, ok_ids)
        edges.append((a[keep], b[keep]))
        result.pairs["sha256"] = int(keep.sum())

    # one progress bar for the whole run: the embedding search, then the pHash computation
    done = 0

    def _start(extra: int) -> None:
        if on_start is not None:
            on_start(done + extra)

    if use_emb and len(query):
        q = query[np.isin(query, emb_ids)]
        _start(len(q))
        s_ids, rows = _store_rows(searcher.store)  # a superset of the index's ids (row order of the store)
        i, j, _ = embedding_pairs(
            s_ids,
            rows,
            threshold,
            index=searcher.index(),
            query_ids=q,
            k=int(k),
            reducer=searcher.reducer(),
            progress=progress,
        )
        done += len(q)
        emb_pos = len(edges)
        edges.append((i, j))
        result.pairs["embedding"] = int(len(i))
    else:
        emb_pos = None

    if use_ph:
        img_ids = cat.ids(status="ok", modality="image")
        ph_ids, codes, ph_rep = workspace_phashes(
            ws, img_ids, workers=workers, progress=progress, on_start=_start
        )
        result.skipped_decode = ph_rep.failed
        failed = ph_rep.failed_ids
        result.decode_errors = ph_rep.errors
        result.phash = {
            "computed": ph_rep.computed,
            "cached": ph_rep.cached,
            "failed": ph_rep.failed,
            "decode_seconds": round(ph_rep.decode_seconds, 3),
            "hash_seconds": round(ph_rep.hash_seconds, 3),
        }
        q = query[np.isin(query, ph_ids)]
        if len(q):
            i, j, _ = hamming_pairs(ph_ids, codes, radius, query_ids=q)
            keep = phash_pairs_to_keep(i, j, ph_ids, ph_rep.detail)  # flat images of other colours are not copies
            result.phash["low_detail_pairs_dropped"] = int((~keep).sum())
            i, j = i[keep], j[keep]
            edges.append((i, j))
            result.pairs["phash"] = int(len(i))

    if use_ph and emb_pos is not None and len(edges[emb_pos][0]):
        # Featureless images (flat black, flat white) sit close together in an encoder's space too: with
        # --method both, whose pHash pass measured every image's detail and colour anyway, the low-detail rule
        # applies to embedding pairs as well (the mean colours must agree). The embedding method alone decodes
        # no image, so it keeps such pairs.
        i, j = edges[emb_pos]
        keep = phash_pairs_to_keep(i, j, ph_ids, ph_rep.detail)
        if not keep.all():
            log.info("%d embedding pairs of low-detail images with different colours dropped", int((~keep).sum()))
            edges[emb_pos] = (i[keep], j[keep])
            result.pairs["embedding"] = int(keep.sum())
            result.pairs["embedding_low_detail_dropped"] = int((~keep).sum())

    # merge with the recorded groups (incremental), group, pick representatives
    old = cat.duplicate_groups() if mode == "incremental" else {}
    for rep, members in old.items():
        m = np.asarray(members, dtype=np.int64)
        edges.append((np.full(len(m), rep, dtype=np.int64), m))
    i_all, j_all = merge_edges(*edges) if edges else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    nodes = np.unique(np.concatenate([i_all, j_all]))
    sizes = [(r.id, (r.width or 0) * (r.height or 0)) for r in cat.iter_items(nodes)]
    px_ids = np.array([s[0] for s in sizes], dtype=np.int64)
    px = np.array([s[1] for s in sizes], dtype=np.int64)
    groups = group_duplicates(i_all, j_all, ids=px_ids, pixels=px)
    new_groups = {int(r): [int(x) for x in m] for r, m in groups.items()}

    if mode == "full":
        # Only the groups of the items checked now are replaced: a dedup of the text encoder's items leaves
        # the image groups of a mixed workspace alone.
        cat.replace_duplicate_groups(
            new_groups, method=method, threshold=_recorded_threshold(threshold, radius), items=universe
        )
        result.changed_groups = len(new_groups)
    else:
        changed = {r: m for r, m in new_groups.items() if old.get(r) != m}
        if changed:
            touched = sorted({x for m in changed.values() for x in m})
            cat.replace_duplicate_groups(
                changed, method=method, threshold=_recorded_threshold(threshold, radius), items=touched
            )
        result.changed_groups = len(changed)
    done = np.setdiff1d(np.union1d(checked, universe), failed)
    if use_emb and use_ph:
        # an image not embedded yet was only compared by pHash: it is not checked until its embedding is too
        done = done[np.isin(done, emb_ids)]
    _save_state(ws, key, done, changes_seq)
    result.groups = cat.duplicate_groups()
    result.seconds = time.perf_counter() - t0
    n_ok = int(cat.count()["ok"])
    if n_ok and result.removed > SET_ASIDE_WARNING * n_ok:
        log.warning("dedup set aside %d of %d items (%.0f %%) as copies of others: search, mining and harvest skip "
                    "them. If they are not copies, raise --threshold (now %s) and run `assay dedup --full`; "
                    "`assay dedup --report DIR` shows the groups.", result.removed, n_ok,
                    100.0 * result.removed / n_ok, threshold)
    return result


def _recorded_threshold(threshold: float | None, radius: int | None) -> float | None:
    return threshold if threshold is not None else (float(radius) if radius is not None else None)


# ---------------------------------------------------------------------------------------------------------
# evaluation: planted near duplicates and pair metrics (used by the quality test and the benchmark)
# ---------------------------------------------------------------------------------------------------------

#: The planted transformations of :func:`near_duplicate_variants`, in order.
VARIANTS = ("jpeg", "resize", "crop", "jitter", "text", "flip")


def near_duplicate_variants(image: "Image.Image", rng: np.random.Generator) -> dict[str, bytes]:
    """Encoded near duplicates of one RGB image, one per entry of :data:`VARIANTS`.

    * ``jpeg``: re-compressed as JPEG at quality 30-50;
    * ``resize``: scaled to 0.5x (Lanczos);
    * ``crop``: a random crop keeping 80-90 % of the width and of the height;
    * ``jitter``: brightness, contrast and saturation each scaled by a factor in [0.9, 1.1];
    * ``text``: a caption drawn across the lower part (white with a dark outline, ~7 % of the height);
    * ``flip``: mirrored left-right.

    All but ``jpeg`` are saved losslessly (PNG), so each variant isolates one change.
    """
    import io

    from PIL import Image as _Image
    from PIL import ImageDraw, ImageEnhance, ImageFont

    im = image.convert("RGB")
    w, h = im.size

    def png(x: "Image.Image") -> bytes:
        buf = io.BytesIO()
        x.save(buf, "PNG")
        return buf.getvalue()

    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(30, 51)))
    out["jpeg"] = buf.getvalue()
    out["resize"] = png(im.resize((max(1, w // 2), max(1, h // 2)), _Image.Resampling.LANCZOS))
    fw, fh = rng.uniform(0.8, 0.9, size=2)
    cw, ch = max(1, int(round(w * fw))), max(1, int(round(h * fh)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out["crop"] = png(im.crop((x0, y0, x0 + cw, y0 + ch)))
    j = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.9, 1.1)))
    j = ImageEnhance.Contrast(j).enhance(float(rng.uniform(0.9, 1.1)))
    j = ImageEnhance.Color(j).enhance(float(rng.uniform(0.9, 1.1)))
    out["jitter"] = png(j)
    t = im.copy()
    draw = ImageDraw.Draw(t)
    size = max(8, int(h * 0.07))
    font = ImageFont.load_default(size=size)
    words = ["sample", "copyright", "photo", "2024", "shared", "via", "assay", "stock"]
    caption = " ".join(rng.choice(words, size=3).tolist())
    draw.text(
        (int(w * 0.05), int(h * 0.85) - size // 2),
        caption,
        fill=(255, 255, 255),
        font=font,
        stroke_width=max(1, size // 12),
        stroke_fill=(0, 0, 0),
    )
    out["text"] = png(t)
    out["flip"] = png(im.transpose(_Image.Transpose.FLIP_LEFT_RIGHT))
    return out


def pair_metrics(pred_i: Any, pred_j: Any, family: Any, ids: Any) -> dict[str, float]:
    """Pair precision and recall of predicted duplicate pairs against known families.

    Parameters
    ----------
    pred_i, pred_j : int64 ``[m]``
        Predicted duplicate pairs (each unordered pair once), e.g. every pair within a predicted group.
    family : int64 ``[n]``
        Ground truth: items with the same family value are duplicates of each other.
    ids : int64 ``[n]``
        The item id of each ``family`` entry.

    Returns
    -------
    dict with ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``positives`` (true pairs).
    """
    ids = _as_ids(ids, "ids")
    fam = np.asarray(family).reshape(-1)
    if fam.shape != ids.shape:
        raise InputError(f"family and ids must have the same length, got {len(fam)} and {len(ids)}")
    i = _as_ids(pred_i, "pred_i")
    j = _as_ids(pred_j, "pred_j")
    order = np.argsort(ids)
    fi = fam[order][np.searchsorted(ids[order], i)] if len(i) else fam[:0]
    fj = fam[order][np.searchsorted(ids[order], j)] if len(j) else fam[:0]
    tp = int((fi == fj).sum())
    fp = int(len(i) - tp)
    _, counts = np.unique(fam, return_counts=True)
    positives = int((counts * (counts - 1) // 2).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / positives if positives else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "positives": positives}


def group_pairs(groups: dict[int, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of items that share a group: ``(i_ids, j_ids)`` with ``i < j``."""
    out_i, out_j = [], []
    for members in groups.values():
        m = np.sort(np.asarray(members, dtype=np.int64))
        a, b = np.triu_indices(len(m), k=1)
        out_i.append(m[a])
        out_j.append(m[b])
    if not out_i:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy()
    return np.concatenate(out_i), np.concatenate(out_j)


def sweep_grouping(
    i_ids: Any,
    j_ids: Any,
    scores: Any,
    family: Any,
    ids: Any,
    cutoffs: Sequence[float],
    *,
    larger_is_better: bool = True,
) -> list[dict[str, float]]:
    """Pair precision and recall of the groups obtained at each cutoff.

    For each cutoff, the edges with ``scores >= cutoff`` (cosines; ``<=`` for distances with
    ``larger_is_better=False``) are grouped into connected components, and every pair of items sharing a
    group is scored against ``family`` (:func:`pair_metrics`). Returns one dict per cutoff, with ``cutoff``.
    """
    i = _as_ids(i_ids, "i_ids")
    j = _as_ids(j_ids, "j_ids")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = []
    for c in cutoffs:
        keep = s >= c if larger_is_better else s <= c
        gi, gj = group_pairs(group_duplicates(i[keep], j[keep]))
        out.append({"cutoff": float(c), **pair_metrics(gi, gj, family, ids)})
    return out


class _DedupModule(types.ModuleType):
    """``assay.dedup`` is this module and, called, the :func:`dedup` function: ``assay.dedup(ws)`` and
    ``assay.dedup.dedup(ws)`` both work whichever of ``assay.dedup`` or ``from assay.dedup import ...`` came
    first (importing a submodule binds its name on the package, over a function of the same name)."""

    def __call__(self, *args: Any, **kwargs: Any) -> DedupResult:
        return dedup(*args, **kwargs)


sys.modules[__name__].__class__ = _DedupModule
