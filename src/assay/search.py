"""Indexes and search over a workspace: the shell around :mod:`assay.index`.

* :func:`build_index` builds the FAISS index of an encoder's stored embeddings, or brings an existing one up
  to date (adds newly embedded items, removes items that left the store, retrains when an IVF index has
  outgrown its training, rebuilds when the embeddings were re-made by another encoder version). With
  ``pca=N`` the index holds PCA-reduced vectors (the reducer is fitted on a sample and stored beside it).
  For an ImageNet classifier encoder (one whose store keeps ``imagenet_logits``), it also builds the ConSE
  text bridge: every item placed in the text space of ``minilm`` and indexed there.
* :class:`Searcher` answers queries by item id, image file, text or raw vector, one at a time or in a batch,
  and gives :meth:`Searcher.neighbors` (the building block of SEALS pools and near-duplicate search).
* Regions (``assay embed --regions``, :mod:`assay.regions`): :func:`build_index` also builds the joint index of
  items and their regions (and its ConSE bridge), and :meth:`Searcher.search_regions` (with ``_batch``,
  ``_items``, ``_texts``) ranks images by their best region and names its box (:class:`RegionHit`). The
  item index and every other query stay item-only.
* :func:`build_knn_graph` computes the kNN graph of the whole corpus blockwise and stores it for reuse.

Non-representative duplicates (exact duplicates from ingest, near-duplicates from ``assay dedup``) are
left out of results unless ``keep_duplicates=True``.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import (
    DecodeError, IndexNotBuiltError, InputError, MissingDependencyError, NoEmbeddingsError, NotFoundError, WorkspaceError,
    as_id_array, as_item_id, check_encoder_name, check_workspace,
)
from .index import ConcatRows, KnnGraph, VectorIndex, knn_graph, neighbors as _index_neighbors
from .index import rerank as _rerank
from .vectors import VectorStore
from .workspace import CHANGED_IDS_FILE, Workspace, exclusive_lock

__all__ = ["Hit", "RegionHit", "Searcher", "build_index", "build_knn_graph", "load_knn_graph", "TEXT_BRIDGE_ENCODER", "KINDS"]

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivf-pq")
TEXT_BRIDGE_ENCODER = "minilm"
CLASS_SCORES_EXTRA = "imagenet_logits"
#: How text reaches an ImageNet classifier's logits: "wordnet" (class sets under the WordNet node the text
#: names, an exact scan of the stored logits) or "conse" (the ConSE vectors' index, approximate, for huge corpora).
TEXT_BRIDGES = ("wordnet", "conse")
#: How region search scores an image: "max" (its best region, or the whole image) or "contrast" (how far its
#: best region stands out from the rest of the image: the best region's score minus the mean of its regions'
#: for cosines (exemplars, a text tower), and for probabilities (text through the WordNet bridge) the log of
#: their ratio, ``log(best / mean)``, the region's lift over the image; finds small objects in busy scenes
#: better, and ranks an image that the object fills lower, since all of its regions match; computed by an
#: exact scan of the stored regions).
REGION_SCORES = ("max", "contrast")
#: The floor of the lift of ``"contrast"`` scoring, which compares ``best + eps`` with ``mean + eps``: chance
#: for one class of 1,000 (ImageNet), so that a faint blip among near-zero windows (1e-4 against 1e-6) is no
#: lift, while a confident window (0.9 against 0.3) is.
_LIFT_EPS = 1e-3
_TEXT_VECTOR_MEMO = 256  # recent text queries' vectors kept per Searcher
#: Below this cosine between a text query and the WordNet word it matched, the match is reported as weak
#: (nonsense, emoji and most non-English text score 0.2-0.43; "a dog" 0.77, the bare word "ship" 0.51).
_WEAK_MATCH = 0.45


def _several(x: Any) -> bool:
    """Whether a query argument is a collection of exemplars (a list, tuple, set, range, array, ...), not one
    id or one path."""
    if isinstance(x, (str, bytes, os.PathLike)) or x is None:
        return False
    if isinstance(x, np.ndarray):
        return x.ndim > 0
    return isinstance(x, collections.abc.Iterable)


def _check_region_score(score: Any) -> None:
    if score not in REGION_SCORES:
        from .errors import UnknownNameError

        raise UnknownNameError("region score", str(score), REGION_SCORES)
_MAIN, _BRIDGE, _PCA, _KNN = "main", "conse", "pca", "knn"


@dataclass(frozen=True)
class Hit:
    """A found item: its id, cosine similarity to the query (in [-1, 1]), uri, and text (text items only)."""

    id: int
    score: float
    uri: str
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "score": self.score, "uri": self.uri}
        if self.text is not None:
            d["text"] = self.text
        return d


@dataclass(frozen=True)
class RegionHit:
    """An image found by its best region: ``region`` is the region id that scored best (None: the whole
    image did), ``box`` its pixel box ``(x0, y0, x1, y1)`` in the decoded image (None: the whole image)."""

    id: int
    score: float
    uri: str
    region: int | None
    box: tuple[int, int, int, int] | None

    def to_dict(self) -> dict[str, Any]:
        # "slot" (the region's place in its image) for JSON readers that hold numbers as doubles: region ids
        # (>= 2**62) are exact in Python but not in JavaScript.
        slot = None if self.region is None else (self.region - (1 << 62)) % 1024
        return {"id": self.id, "score": self.score, "uri": self.uri, "region": self.region, "slot": slot,
                "box": list(self.box) if self.box is not None else None}


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _query_vector(vector: Any) -> np.ndarray:
    """One query vector ``[d]`` (or ``[1, d]``) of finite numbers, not all zero -> float32 ``[1, d]`` of unit
    norm (scores are then cosines, as the stored vectors are normalised). Several rows are refused
    (search_batch takes those), as are strings and other non-numbers."""
    try:
        v = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"vector must be a vector of numbers [d], got {type(vector).__name__}") from None
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise InputError(f"vector must be one vector [d] (search_batch takes several), got shape {list(v.shape)}")
    if not np.isfinite(v).all() or not v.any():
        raise InputError(f"vector must be a finite, non-zero vector [d], got shape {list(v.shape)}")
    return _unit_rows(v[None, :])


def _unit_rows(q: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm, the norm taken in float64 (a float32 norm of 1e-40s or 3e38s under- or
    overflows)."""
    q64 = np.asarray(q, dtype=np.float64)
    q64 = q64 / np.abs(q64).max(axis=1, keepdims=True)  # first to [-1, 1]: no overflow in the squares
    return (q64 / np.linalg.norm(q64, axis=1, keepdims=True)).astype(np.float32)


def _query_batch(queries: Any) -> np.ndarray:
    """Query vectors ``[q, d]`` (or one ``[d]``) of finite numbers, no row all zero -> float32 rows of unit
    norm, as ``search(vector=)`` makes its one."""
    if isinstance(queries, (str, bytes)):
        raise InputError(f"queries must be vectors of numbers [q, d], got {type(queries).__name__}")
    try:
        q = np.asarray(queries, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"queries must be vectors of numbers [q, d], got {type(queries).__name__}") from None
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] == 0:
        raise InputError(f"queries must be vectors [q, d], got shape {list(q.shape)}")
    if len(q) == 0:
        return q.astype(np.float32)
    bad = ~np.isfinite(q).all(axis=1) | ~q.any(axis=1)
    if bad.any():
        raise InputError(f"query row {int(np.argmax(bad))} is not a finite, non-zero vector")
    return _unit_rows(q)


def _text_list(texts: Any) -> list[str]:
    """A list of text queries; a bare string is one query mistaken for a list (it would be one per letter)."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise InputError(f"texts must be a list of strings (search(text=...) takes one), got {type(texts).__name__}")
    return list(texts)


def _store_rows(store: VectorStore, extra: str | None = None) -> tuple[np.ndarray, ConcatRows]:
    ids, arrays = [], []
    for i, v in store.iter_shards(extra=extra):
        if len(i):
            ids.append(i)
            arrays.append(v)
    if not ids:
        raise NoEmbeddingsError(f"no embeddings stored at {store.root}; run `assay embed` first")
    return np.concatenate(ids), ConcatRows(arrays)


def _ok_store_ids(ws: Workspace, store: VectorStore) -> np.ndarray:
    """Stored ids whose item is still ok in the catalog."""
    ids = store.ids()
    return ids[np.isin(ids, ws.catalog.ids(status="ok"))]


# ---------------------------------------------------------------------------------------------- building
@contextlib.contextmanager
def _index_write_lock(root: Path):
    """One index writer per encoder at a time (`assay index`, dedup's update, `concept add --exemplar`): a
    second waits for the first instead of deleting its files. Re-entrant within a thread."""
    with exclusive_lock(root / ".write.lock", f"another process is writing the index at {root}; waiting for it"):
        yield


def build_index(
    ws: Workspace,
    encoder: str | None = None,
    *,
    kind: str = "auto",
    pca: int | None = None,
    rebuild: bool = False,
    rng: np.random.Generator | int = 0,
    bridge: bool = True,
) -> dict[str, Any]:
    """Build or update the index of ``encoder``'s embeddings; return a JSON-ready report. Writers of one
    encoder's index take turns (a second waits for the first)."""
    with _index_write_lock(ws.index_dir(encoder or ws.default_encoder)):
        return _build_index_locked(ws, encoder, kind, pca, rebuild, rng, bridge)


def _build_index_locked(
    ws: Workspace, encoder: str | None, kind: str, pca: int | None, rebuild: bool, rng: np.random.Generator | int,
    bridge: bool,
) -> dict[str, Any]:
    if kind not in KINDS:
        from .errors import UnknownNameError

        raise UnknownNameError("index kind", kind, KINDS)
    if pca is not None and (isinstance(pca, bool) or not isinstance(pca, int) or pca <= 0):
        raise InputError(f"pca must be a positive integer number of dimensions, got {pca!r}")
    t0 = time.perf_counter()
    name = encoder or ws.default_encoder
    ws.apply_changes()  # stale embeddings of changed items go first (and mark the index for a rebuild)
    store = ws.vectors(name)
    meta = store.meta()  # raises NoEmbeddingsError with a hint
    root = ws.index_dir(name)
    report: dict[str, Any] = {"encoder": name, "encoder_version": meta["version"]}
    main_dir = root / _MAIN
    existing = None
    if not rebuild and (main_dir / "meta.json").exists():
        try:
            existing = VectorIndex.load(main_dir, mmap=False)
        except WorkspaceError as exc:  # a damaged index is rebuilt from the store, not updated
            log.warning("the existing index is unreadable and is rebuilt from the embeddings (%s)", exc)
    if existing is not None:
        # Options left out keep what the index was built with (`assay index` after `--pca 64 --kind ivf`, or
        # the update `assay dedup` makes, must not quietly rebuild a full-size flat index).
        if pca is None:
            pca = existing.metadata.get("pca") or None
        if kind == "auto":
            kind = existing.kind if existing.kind in KINDS else "auto"
        reasons = []
        changed = ws.changed_since_index(name)
        if changed is not None:
            reasons.append(f"{len(changed)} items changed since it was built")
            rebuild = True  # its text bridge and region index hold the old vectors too
        if existing.encoder_version != meta["version"]:
            reasons.append(f"the embeddings were re-made (version {existing.encoder_version} -> {meta['version']})")
        if kind != "auto" and existing.kind != kind:
            reasons.append(f"kind {existing.kind} -> {kind}")
        old_pca = existing.metadata.get("pca")
        if (pca or None) != (old_pca or None):
            reasons.append(f"pca {old_pca} -> {pca}")
        elif old_pca and pca_mismatch(root, existing.metadata):
            reasons.append("its PCA was replaced by a rebuild that did not finish")
        if reasons:
            report["rebuilt_because"] = "; ".join(reasons)
            existing = None
    reducer = _load_or_fit_pca(root, store, pca, existing is None, rng)
    if existing is None:
        index = _build_main(ws, store, name, meta, kind, reducer, rng)
        report.update(action="built", added=index.ntotal, removed=0)
    else:
        index = existing
        added, removed = _sync(ws, store, index, reducer)
        report.update(action="updated", added=added, removed=removed)
        if index.needs_retrain:
            log.warning("index of %s outgrew its training; retraining", name)
            ids, rows = _store_rows(store)
            keep = np.isin(ids, _ok_store_ids(ws, store))
            index.retrain(ids[keep], _Reduced(rows, reducer, keep), rng=rng)
            report["retrained"] = True
    if index.ntotal == 0 and len(store):
        n_err = int(np.isin(store.ids(), ws.catalog.ids(status="error")).sum())
        log.warning("the index of %s holds no vectors: none of its %d embeddings belongs to an item with status ok "
                    "(%d are items whose files failed at ingest); searches will find nothing", name, len(store), n_err)
    unchanged = (report.get("action") == "updated" and not report.get("added") and not report.get("removed")
                 and not report.get("retrained") and index.metadata.get("store_rows") == len(store))
    index.metadata["store_rows"] = len(store)  # lets a searcher tell that embeddings were added since
    if reducer is not None:  # the PCA this index's vectors went through (a rebuild cut short can leave another)
        index.metadata["pca_fingerprint"] = _pca_fingerprint(reducer)
    if not unchanged or (reducer is not None and existing is not None
                         and existing.metadata.get("pca_fingerprint") is None):
        index.save(main_dir)  # (left as it is when nothing changed: a kNN graph built on it stays current)
    changed_marker = root / CHANGED_IDS_FILE
    report["index"] = index.info()
    if bridge and CLASS_SCORES_EXTRA in meta.get("extras", {}) and not imagenet_1k_scores(meta):
        report["text_bridge"] = {"skipped": f"the stored {CLASS_SCORES_EXTRA} are not the 1,000 ImageNet-1k classes"}
    elif bridge and CLASS_SCORES_EXTRA in meta.get("extras", {}):
        try:
            report["text_bridge"] = _build_bridge(ws, store, name, root, rebuild or existing is None, rng)
            _node_text_embeddings(ws)  # the WordNet bridge's node names, embedded once here, not at the first query
        except MissingDependencyError as exc:
            report["text_bridge"] = {"skipped": str(exc)}
    from .regions import build_region_index, region_store

    if region_store(ws, name).exists():
        # Items and their regions in one joint index (index/<key>/regions); the item index above stays item-only.

        try:
            report["regions"] = build_region_index(ws, name, kind=kind, rebuild=rebuild, rng=rng, bridge=bridge)
        except WorkspaceError as exc:  # e.g. items re-embedded by a new encoder version, regions not yet
            log.warning("region index not built: %s", exc)
            report["regions"] = {"skipped": str(exc)}
    changed_marker.unlink(missing_ok=True)  # every index of this encoder is built from the store as it is now
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


class _Reduced(ConcatRows):
    """Rows of a ConcatRows, optionally filtered by a mask and PCA-reduced, read block by block.

    A ConcatRows by type (so the index reads it block by block like any store), with its own row access.
    """

    def __init__(self, rows: Any, reducer: Any, keep: np.ndarray | None = None) -> None:  # ConcatRows.__init__ is deliberately not called
        self.rows, self.reducer = rows, reducer
        self.sel = np.nonzero(keep)[0] if keep is not None and not keep.all() else None
        n = len(rows) if self.sel is None else len(self.sel)
        dim = rows.shape[1] if reducer is None else reducer.n_components
        self.shape = (n, dim)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            idx = np.arange(*key.indices(self.shape[0]))
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
        src = idx if self.sel is None else self.sel[idx]
        if self.sel is None and self.reducer is None and isinstance(key, slice):
            return np.asarray(self.rows[key], dtype=np.float32)
        block = np.asarray(self.rows[src], dtype=np.float32)
        return block if self.reducer is None else self.reducer.transform(block)


def _pca_fingerprint(reducer: Any) -> str:
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(reducer.mean_, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(reducer.components_, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def pca_mismatch(root: Path, metadata: dict[str, Any]) -> bool:
    """Whether the PCA on disk under the index folder ``root`` is not the one the index with this ``metadata``
    was built with (indexes from before fingerprints pass)."""
    want = metadata.get("pca_fingerprint")
    if not want:
        return False
    from .reduce import PCAReducer

    try:
        return _pca_fingerprint(PCAReducer.load(root / _PCA)) != want
    except Exception:  # noqa: BLE001 - missing or unreadable: not the one the index needs
        return True


def _load_or_fit_pca(root: Path, store: VectorStore, pca: int | None, refit: bool, rng: Any):
    if not pca:
        return None
    from .reduce import PCAReducer

    pdir = root / _PCA
    if not refit and pdir.exists():
        return PCAReducer.load(pdir)
    _, rows = _store_rows(store)
    reducer = PCAReducer(n_components=pca).fit(rows, rng=rng)
    reducer.save(pdir)
    return reducer


def _build_main(ws, store, name, meta, kind, reducer, rng) -> VectorIndex:
    ids, rows = _store_rows(store)
    keep = np.isin(ids, ws.catalog.ids(status="ok"))
    data = _Reduced(rows, reducer, keep)
    dim = data.shape[1]
    index = VectorIndex(
        spec=kind, dim=dim, encoder=name, encoder_version=meta["version"],
        metadata={"pca": reducer.n_components if reducer is not None else None, "input_dim": int(meta["dim"])},
    )
    return index.build(ids[keep], data, rng=rng)


def _sync(ws: Workspace, store: VectorStore, index: VectorIndex, reducer: Any) -> tuple[int, int]:
    """Add what the store has and the index lacks; remove what the index has and the store lost."""
    want = _ok_store_ids(ws, store)
    have = index.ids
    stale = have[~np.isin(have, want)]
    removed = index.remove(stale, missing_ok=True) if len(stale) else 0
    new = want[~np.isin(want, have)]
    if len(new):
        vecs = store.get(new)
        index.add(new, vecs if reducer is None else reducer.transform(vecs))
    return int(len(new)), int(removed)


def _class_text_embeddings(ws: Workspace) -> tuple[np.ndarray, str]:
    """Embeddings of the 1000 ImageNet class names with the bridge text encoder, cached by its version."""
    from .encoders.efficientnet import imagenet_class_names

    return _cached_text_embeddings(ws, "classes", [f"a photo of a {n}" for n in imagenet_class_names()])


def _cached_text_embeddings(ws: Workspace, stem: str, texts: list[str], *, family: str | None = None
                            ) -> tuple[np.ndarray, str]:
    """``texts`` embedded by the bridge text encoder (float32), cached in the workspace as
    ``cache/conse/<stem>-<encoder version>.npy``; a cache of another length is recomputed.

    The texts are fixed (bundled class names and WordNet words; ``stem`` names them, with a digest where they
    can change), so the embeddings are also kept in the machine's cache (``$ASSAY_CACHE_DIR``, default
    ``~/.cache/assay``, under ``text-embeddings/``): a new workspace copies them instead of embedding
    11,000 texts again. That copy is best effort (an unwritable cache folder is skipped). With ``family``, the
    family's files for the same encoder under another name (an older digest) are removed from both places."""
    from .encoders.base import get_encoder
    from .encoders.cache import default_cache_dir

    text_enc = get_encoder(TEXT_BRIDGE_ENCODER)
    name = f"{stem}-{_safe(text_enc.version)}.npy"
    cache = ws.cache_dir / "conse" / name
    shared = default_cache_dir() / "text-embeddings" / name
    if family:  # older lists of the family for this encoder (another digest: an older assay's texts) go
        pattern = f"{family}-*-{_safe(text_enc.version)}.npy"
        for old in (*cache.parent.glob(pattern), *shared.parent.glob(pattern)):
            if old.name != name and ".tmp" not in old.name:  # (never another writer's temporary file)
                with contextlib.suppress(OSError):
                    old.unlink()
    for path in (cache, shared):
        try:
            emb = np.load(path)
        except Exception:  # noqa: BLE001 - absent, unreadable, empty or torn (EOFError, ValueError, ...): next place
            continue
        if (emb.ndim == 2 and emb.shape[0] == len(texts) and emb.shape[1] == (text_enc.dim or emb.shape[1])
                and np.isfinite(emb).all()):
            with contextlib.suppress(OSError):  # each place gets the copy it lacks (the machine's: best effort)
                other = cache if path is shared else shared
                if not other.exists():
                    _save_npy(other, emb)
            return emb.astype(np.float32, copy=False), text_enc.version
    log.info("embedding %d texts for the text bridge with %s (once: kept in %s)", len(texts), TEXT_BRIDGE_ENCODER,
             shared.parent)
    text_enc.load()
    emb = text_enc.embed_texts(texts).astype(np.float32)
    _save_npy(cache, emb)
    try:
        _save_npy(shared, emb)
    except OSError:
        pass  # the machine's cache is a convenience; the workspace's copy is what counts
    return emb, text_enc.version


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` atomically (a temporary file per writer, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
    try:
        np.save(tmp, arr)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def imagenet_1k_scores(meta: dict[str, Any]) -> bool:
    """Whether a store's metadata says its class scores are ImageNet-1k's 1,000 (what the text bridges read)."""
    width = meta.get("extras", {}).get(CLASS_SCORES_EXTRA)
    return width is not None and int(np.prod(np.atleast_1d(width))) == 1000


def _node_text_embeddings(ws: Workspace) -> tuple[np.ndarray, str]:
    """Embeddings of the lemmas of the WordNet nodes above the ImageNet classes (``ClassHierarchy.lemma_texts``)
    with the bridge text encoder, cached by its version and the texts."""
    import hashlib

    from .zeroshot import ClassHierarchy

    texts, _ = ClassHierarchy.imagenet().lemma_texts()
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    return _cached_text_embeddings(ws, f"wordnet-{digest}", texts, family="wordnet")


def _safe(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:80]


def _build_bridge(ws, store, name, root, rebuild, rng) -> dict[str, Any]:
    from .zeroshot import conse_image_vectors

    class_emb, text_version = _class_text_embeddings(ws)
    bdir = root / _BRIDGE
    version = f"{store.meta()['version']}+{text_version}"
    index = None
    if not rebuild and (bdir / "meta.json").exists():
        index = VectorIndex.load(bdir, mmap=False)
        if index.encoder_version != version:
            index = None
    want = _ok_store_ids(ws, store)
    if index is None:
        logits = store.get(want, extra=CLASS_SCORES_EXTRA, dtype=np.float16) if len(want) else None
        vecs = conse_image_vectors(logits, class_emb)
        index = VectorIndex(spec="auto", dim=vecs.shape[1], encoder=f"{name}+conse", encoder_version=version)
        index.build(want, vecs, rng=rng)
        action = "built"
    else:
        have = index.ids
        stale = have[~np.isin(have, want)]
        if len(stale):
            index.remove(stale, missing_ok=True)
        new = want[~np.isin(want, have)]
        if len(new):
            index.add(new, conse_image_vectors(store.get(new, extra=CLASS_SCORES_EXTRA, dtype=np.float16), class_emb))
        action = "updated"
    index.save(bdir)
    return {"action": action, "count": index.ntotal, "text_encoder": TEXT_BRIDGE_ENCODER, "kind": index.kind}


# ---------------------------------------------------------------------------------------------- kNN graph
def build_knn_graph(
    ws: Workspace, k: int = 32, encoder: str | None = None, *, exact: bool = False, block_size: int = 4096
) -> KnnGraph:
    """The kNN graph of the whole corpus (blockwise, bounded memory), saved in the workspace for reuse."""
    k = _check_k(k)
    searcher = Searcher(ws, encoder)
    index = searcher.index()
    ids = index.ids
    store = searcher.store
    vecs = _Reduced(_IdRows(store, ids), searcher.reducer())
    graph = knn_graph(ids, vecs, k, index=None if exact else index, exact=exact, block_size=block_size)
    graph.save(ws.index_dir(searcher.encoder_name) / _KNN)
    return graph


class _IdRows:
    """Store rows for a fixed id list, fetched block by block (duck-types ConcatRows for _Reduced)."""

    def __init__(self, store: VectorStore, ids: np.ndarray) -> None:
        self.store, self.ids = store, ids
        self.shape = (len(ids), store.dim)
        self.dtype = np.float16

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: Any) -> np.ndarray:
        sel = self.ids[key]
        return self.store.get(sel, dtype=np.float32)


def load_knn_graph(ws: Workspace, encoder: str | None = None) -> KnnGraph:
    d = ws.index_dir(encoder or ws.default_encoder) / _KNN
    if not d.exists():
        raise IndexNotBuiltError(f"no kNN graph in {d}; build it with `assay index --knn K`")
    return KnnGraph.load(d)


# ---------------------------------------------------------------------------------------------- search
#: ``ivf-pq`` only: a query fetches ``RERANK_FACTOR x k`` candidates (at most ``max(k, RERANK_MAX_CANDIDATES)``)
#: and re-scores them exactly with the stored vectors. On the 1M bench (bench/index.py) 10x reached recall@10
#: 0.87 and 50x 0.97, against 0.48 for the compressed codes alone.
RERANK_FACTOR = 50
_SCAN_QUERY_BLOCK = 32  # queries per pass of a region scan (its memory is images x queries)
RERANK_MAX_CANDIDATES = 1000


class Searcher:
    """Queries over one encoder's index in a workspace. Loads the index (memory-mapped) on first use.

    ``rerank``: for an ``ivf-pq`` index, how many candidates per wanted result the index returns before
    they are re-scored exactly with the workspace's stored vectors (``0`` or ``1``: no re-ranking, the
    compressed codes' ranking as it is). Other kinds hold the vectors themselves and are never re-ranked.
    """

    def __init__(self, ws: Workspace, encoder: str | None = None, *, rerank: int = RERANK_FACTOR,
                 text_bridge: str = "wordnet") -> None:
        check_workspace(ws, "Searcher")
        check_encoder_name(encoder)
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            raise InputError(f"rerank must be a non-negative integer (0 = off), got {rerank!r}")
        if text_bridge not in TEXT_BRIDGES:
            from .errors import UnknownNameError

            raise UnknownNameError("text bridge", str(text_bridge), TEXT_BRIDGES)
        self.rerank = int(rerank)
        self.text_bridge = text_bridge
        self.ws = ws
        self.encoder_name = encoder or ws.default_encoder
        self.store = ws.vectors(self.encoder_name)
        self._index: VectorIndex | None = None
        self._bridge: VectorIndex | None = None
        self._reducer: Any = None
        self._reducer_loaded = False
        self._encoder: Any = None
        self._text_encoder: Any = None
        self._text_vectors: collections.OrderedDict[tuple[str, str], np.ndarray] = collections.OrderedDict()  # recent
        self._region_index: VectorIndex | None = None
        self._region_bridge: VectorIndex | None = None
        self._region_spec: Any = None
        self._graph: Any = None  # KnnGraph, or False when there is none fit to use
        self._graph_order: np.ndarray | None = None
        self._graph_ids_sorted: np.ndarray | None = None
        self.stale_rows = 0  # embeddings stored since the index was built (0 when up to date or unknown)
        self._hierarchy: Any = None  # (ClassHierarchy, unit lemma text embeddings, node of each text, which
        # texts are back-off words, and their words), on first use
        self._scan_ids: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}  # per loaded index: sorted ids, images
        self._lock = threading.Lock()

    # -------------------------------------------------------------- parts
    def index(self) -> VectorIndex:
        if self._index is None:
            meta = self.store.meta()
            d = self.ws.index_dir(self.encoder_name) / _MAIN
            if not (d / "meta.json").exists():
                flag = "" if self.encoder_name == self.ws.default_encoder else f" --encoder {self.encoder_name}"
                raise IndexNotBuiltError(f"no index for encoder {self.encoder_name!r}; build it with `assay index{flag}`")
            self._index = VectorIndex.load(d, mmap=True, expect_encoder=self.encoder_name)
            if self._index.encoder_version != meta["version"]:
                raise IndexNotBuiltError(
                    f"the index of {self.encoder_name!r} was built from embeddings version {self._index.encoder_version}, "
                    f"the store now holds version {meta['version']}; run `assay index` to rebuild it"
                )
            built_on = self._index.metadata.get("store_rows")
            if built_on is not None:
                now = len(self.store)
                if now > int(built_on):
                    log.warning("the index of %s is older than its embeddings: %d embedded since it was built are "
                                "not searched, mined or harvested; run `assay index` to add them",
                                self.encoder_name, now - int(built_on))
                    self.stale_rows = now - int(built_on)
                elif now < int(built_on):
                    log.warning("the index of %s was built on %d embeddings, the store holds %d now (reset, "
                                "repaired or dropped since): results can name items that have no embedding; run "
                                "`assay index` to bring it up to date", self.encoder_name, int(built_on), now)
            changed = self.ws.changed_since_index(self.encoder_name)
            if changed is not None:
                log.warning("%d items of the index of %s changed since it was built (their files were replaced); "
                            "they are left out of results until `assay index` rebuilds it", len(changed),
                            self.encoder_name)
        return self._index

    def reducer(self):
        if not self._reducer_loaded:
            pca = self.index().metadata.get("pca")
            if pca:
                from .reduce import PCAReducer

                self._reducer = PCAReducer.load(self.ws.index_dir(self.encoder_name) / _PCA)
                want = self.index().metadata.get("pca_fingerprint")
                if want and _pca_fingerprint(self._reducer) != want:
                    self._reducer = None
                    raise IndexNotBuiltError(
                        f"the index of {self.encoder_name!r} and its PCA come from different builds (a rebuild that "
                        "did not finish?); run `assay index` to rebuild it")
            self._reducer_loaded = True
        return self._reducer

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        r = self.reducer()
        return x if r is None else r.transform(np.asarray(x, dtype=np.float32))

    def encoder(self):
        if self._encoder is None:
            from .embed import load_encoder

            if self.encoder_name.split(":", 1)[0] == "precomputed":
                raise InputError(
                    f"{self.encoder_name!r} holds embeddings made elsewhere: it cannot embed a new image or text "
                    "query; search with --item ID (an item of the corpus), or with an encoder that can embed it")
            enc = load_encoder(self.encoder_name)
            made_by = self.store.meta().get("version") if self.store.exists() else None
            if made_by is not None and made_by != enc.version:
                # a query embedded by another version (new weights or preprocessing) is not comparable with
                # the stored vectors: refuse rather than return subtly wrong neighbours
                raise WorkspaceError(
                    f"the embeddings of {self.encoder_name!r} were made by version {made_by}, but this installation's "
                    f"encoder is version {enc.version} (its weights or preprocessing changed): run "
                    f"`assay embed --encoder {self.encoder_name} --reset` and `assay index` to re-embed, then search")
            self._encoder = enc
        return self._encoder

    def stale_ids(self) -> np.ndarray:
        """Ids the index may still hold but must not serve until `assay index` runs: items whose files were
        replaced (their embeddings dropped, or not yet dropped from this workspace), and items whose files
        are gone or failed since the index was built."""
        ex = np.union1d(self.ws.pending_changes(), self.ws.catalog.ids(status="error"))
        changed = self.ws.changed_since_index(self.encoder_name)
        return ex if changed is None else np.union1d(ex, changed)

    def _sorted_exclusions(self, keep_duplicates: bool) -> np.ndarray | None:
        """:meth:`excluded_ids`, sorted for :func:`assay.regions.in_sorted`; None when there are none."""
        ex = self.excluded_ids(keep_duplicates)
        return np.sort(ex) if ex is not None and len(ex) else None

    def excluded_ids(self, keep_duplicates: bool) -> np.ndarray | None:
        """Ids never returned: non-representative duplicates (unless kept), and items whose files changed since
        the index was built (until `assay index` rebuilds it)."""
        ex = self.stale_ids()
        if not keep_duplicates:
            ex = np.union1d(ex, self.ws.catalog.non_representative_ids())
        return ex if len(ex) else None

    # -------------------------------------------------------------- query vectors
    def query_vectors_for_items(self, ids: np.ndarray) -> np.ndarray:
        """:meth:`vectors_for_items` for items a user queries by: an item whose file was replaced since it was
        embedded, and whose old vector is still stored (an embed held the store when the change came), is
        refused rather than searched with what its file used to hold."""
        changed = np.intersect1d(np.asarray(ids, dtype=np.int64), self.ws.pending_changes())
        if len(changed):
            raise NotFoundError(
                f"item(s) {changed[:5].tolist()} changed since they were embedded (their files were replaced); "
                "run `assay embed` to embed them again, then search")
        return self.vectors_for_items(ids)

    def vectors_for_items(self, ids: np.ndarray | list[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        known = self.ws.catalog.get_many(ids)
        if len(known) != len(ids):
            missing = sorted(set(ids.tolist()) - {r.id for r in known})[:5]
            raise NotFoundError(f"unknown item id(s) {missing}")
        if not self.store.exists():  # no store of this encoder at all (or no such encoder): say that, not "item"
            raise self.store._missing()
        has = self.store.contains(ids)
        if not has.all():
            rows = {r.id: r for r in known}
            missing = ids[~has][:5].tolist()
            from .encoders.base import get_encoder

            try:
                modalities = get_encoder(self.encoder_name).modalities
            except Exception:  # an encoder this installation cannot make: no modality hint
                modalities = None
            other = sorted({rows[i].modality for i in missing} - set(modalities)) if modalities else []
            if other:
                raise NotFoundError(
                    f"item(s) {missing} are {other[0]} items and {self.encoder_name!r} embeds "
                    f"{' and '.join(sorted(modalities))} only: search them with an encoder of that modality "
                    f"(--encoder, e.g. minilm for text)"
                )
            statuses = {rows[i].status for i in missing}
            hint = ("status error: the file failed" if statuses == {"error"} else
                    "not embedded yet: run `assay embed`" if "error" not in statuses else
                    "status error, or not embedded yet")
            raise NotFoundError(f"item(s) {missing} have no embedding from {self.encoder_name!r} ({hint})")
        return self.store.get(ids)

    def vector_for_image(self, path: str | os.PathLike[str]) -> np.ndarray:
        from .media import decode_image, read_bytes

        enc = self.encoder()
        if "image" not in enc.modalities:
            raise InputError(f"encoder {self.encoder_name!r} does not embed images")
        p = str(path)
        if "://" not in p and not Path(p).exists():
            raise NotFoundError(f"query image not found: {p}")
        try:
            from .encoders.base import draft_size

            image = decode_image(read_bytes(p), draft_size=draft_size(enc))
        except DecodeError as exc:
            raise InputError(f"query image {p} cannot be used: {exc}") from exc
        return enc.embed_images([image])[0]

    def text_route(self) -> str:
        """How text queries reach this encoder's vectors: ``"tower"`` (a text tower) or ``"bridge"`` (the stored
        ImageNet logits, read through :attr:`text_bridge`: ``"wordnet"`` class sets or the ``"conse"`` index);
        InputError when neither exists. Nothing loads."""
        return self._text_route()

    def _text_route(self) -> str:
        from .encoders.base import get_encoder
        from .errors import UnknownNameError

        try:  # constructing an encoder only stores parameters; nothing loads here
            has_tower = "text" in get_encoder(self.encoder_name).modalities
        except (UnknownNameError, InputError):  # e.g. precomputed embeddings
            has_tower = False
        if has_tower:
            return "tower"
        if CLASS_SCORES_EXTRA in self.store.meta().get("extras", {}):
            return "bridge"
        raise InputError(
            f"encoder {self.encoder_name!r} has no text tower and no zero-shot bridge; use a CLIP encoder "
            "(clip:<model>) or an ImageNet classifier such as efficientnet-lite0"
        )

    def vectors_for_texts(self, texts: list[str]) -> tuple[np.ndarray, str]:
        """Query vectors for texts, and the route: ``"tower"`` (the encoder's text tower) or ``"bridge"`` (ConSE)."""
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError(f"text queries must be non-empty strings, got {texts!r}")
        route = self._text_route()
        with self._lock:  # a text searched and then described (CLI, server) is embedded once
            hit = [self._text_vectors.get((route, t)) for t in texts]
        if all(v is not None for v in hit):
            return np.stack(hit), route
        if route == "tower":
            q = self.encoder().embed_texts(texts)
        else:
            if self._text_encoder is None:
                from .embed import load_encoder

                self._text_encoder = load_encoder(TEXT_BRIDGE_ENCODER)
            q = self._text_encoder.embed_texts(texts)
        q = np.asarray(q, dtype=np.float32)
        with self._lock:
            for t, v in zip(texts, q):
                self._text_vectors[(route, t)] = v.copy()
                self._text_vectors.move_to_end((route, t))
            while len(self._text_vectors) > _TEXT_VECTOR_MEMO:
                self._text_vectors.popitem(last=False)
        return q, route

    def _class_weights(self, q: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """WordNet class weights ``[q, 1000]`` of bridge text embeddings, and what each query matched."""
        from .zeroshot import BACKOFF_MARGIN, ClassHierarchy, _backoff_used, hierarchy_weights

        self._check_imagenet_scores()

        with self._lock:
            if self._hierarchy is None:
                h = ClassHierarchy.imagenet()
                emb = _node_text_embeddings(self.ws)[0]
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                via = h.backoff_of_texts()
                self._hierarchy = (h, emb, h.lemma_texts()[1], np.asarray([v is not None for v in via]), via)
        h, node_emb, text_node, backoff, via = self._hierarchy
        w, node_w = hierarchy_weights(q, node_emb, h.members_f32, text_node=text_node, backoff=backoff)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sim = (qn @ node_emb.T).astype(np.float64)  # [q, texts], once for the back-off word and the match's cosine
        used = _backoff_used(sim, backoff, BACKOFF_MARGIN)  # the back-off word each query backed off by, if any
        best = np.where(used >= 0, sim[np.arange(len(q)), np.maximum(used, 0)], np.where(backoff, -1.0, sim).max(axis=1))
        out = []
        for row, b, c in zip(node_w, used, best):
            m = h.describe_match(row, via=via[int(b)] if b >= 0 else None)
            if c < _WEAK_MATCH:  # nonsense, another language, a scene: say so rather than look sure
                m += (f"; a weak match (cosine {c:.2f} to its nearest WordNet word): the text names no ImageNet class "
                      "or English noun for a thing well")
            out.append(m)
        return w, out

    def _check_imagenet_scores(self) -> None:
        width = self.store.meta().get("extras", {}).get(CLASS_SCORES_EXTRA)
        if width is not None and not imagenet_1k_scores(self.store.meta()):
            raise InputError(
                f"encoder {self.encoder_name!r} stores {width} class scores, not the 1,000 ImageNet-1k classes the "
                "WordNet and ConSE text bridges read; text search needs an ImageNet-1k classifier or a text tower"
            )

    def class_weights(self, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        """The WordNet bridge's reading of text queries: class weights ``[q, 1000]`` (an item scores
        ``sum_c weights[c] * p(c | item)``) and what each query matched (``"dog (118 classes)"``)."""
        texts = _text_list(texts)
        if self._text_route() != "bridge":
            raise InputError(f"encoder {self.encoder_name!r} reads text with its own text tower, not through ImageNet classes")
        return self._class_weights(self.vectors_for_texts(texts)[0])

    def text_matches(self, texts: list[str]) -> list[str] | None:
        """What each text query means to the WordNet bridge (``"dog (118 classes)"``), or None when text goes
        another way (a text tower, or ``text_bridge="conse"``)."""
        texts = _text_list(texts)
        if self._text_route() != "bridge" or self.text_bridge != "wordnet":
            return None
        return self.class_weights(texts)[1]

    def _class_set_search(self, q: np.ndarray, k: int, keep_duplicates: bool, *, regions: bool, score: str = "max"
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact scan of the stored ImageNet logits: ``(scores, image ids, trigger ids)``, each ``[q, k]``.

        An item (or, with ``regions``, an image by its best row among itself and its regions, or with
        ``score="contrast"`` by the log of its best region's over the mean of its regions') scores by the probability its
        classifier gives to the classes under the WordNet node(s) each query matched. The rows scanned are
        those of the item index (or of the joint region index), so the corpus is the one the other routes
        search.
        """
        from .regions import in_sorted
        from .zeroshot import class_set_scores

        weights, _ = self._class_weights(q)
        nq = len(q)
        if regions:
            return self._region_scan(lambda block, sl: class_set_scores(block, weights[sl]), nq, k, keep_duplicates,
                                     score=score, extra=CLASS_SCORES_EXTRA, probabilities=True)
        if score != "max":
            raise InputError("contrast scoring ranks images by their regions; use search_regions_texts")
        k = _check_k(k)
        allowed = self._sorted_ids(self.index())[0]
        k = max(1, min(k, len(allowed)))  # never more rows than the index holds
        excluded = self._sorted_exclusions(keep_duplicates)
        cand_s, cand_i = [], []
        for ids, logits in self.store.iter_shards(extra=CLASS_SCORES_EXTRA):
            keep = in_sorted(allowed, ids)
            if excluded is not None:
                keep &= ~in_sorted(excluded, ids)
            rows = np.flatnonzero(keep)
            if not len(rows):
                continue
            sc = class_set_scores(logits[rows] if len(rows) < len(ids) else logits, weights)  # [r, q]
            part = np.argpartition(-sc, k - 1, axis=0)[:k] if k < len(rows) else np.tile(np.arange(len(rows))[:, None], (1, nq))
            cand_s.append(np.take_along_axis(sc, part, axis=0))
            cand_i.append(ids[rows][part])
        out_s, out_i = np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        if cand_s:
            S, ids_ = np.concatenate(cand_s, axis=0), np.concatenate(cand_i, axis=0)  # [m, q]
            for j in range(nq):
                order = np.lexsort((ids_[:, j], -S[:, j]))  # best first; ties by id
                _, first = np.unique(ids_[order, j], return_index=True)  # an id stored twice counts once
                pick = order[np.sort(first)][:k]
                out_s[j, : len(pick)], out_i[j, : len(pick)] = S[pick, j], ids_[pick, j]
        return out_s, out_i, out_i.copy()

    def _sorted_ids(self, index: VectorIndex) -> tuple[np.ndarray, np.ndarray]:
        """``(the index's ids sorted, its images sorted)`` (cached per loaded index). An image is an item id of
        the index or the parent of one of its region ids (a region can be indexed before its image's own
        vector, e.g. after `embed --limit` then `embed --regions`)."""
        with self._lock:
            hit = self._scan_ids.get(id(index))
            if hit is None or hit[0] is not index:
                from .regions import is_region_id, parent_ids

                ids = np.sort(np.asarray(index.ids, dtype=np.int64))
                reg = is_region_id(ids)
                images = np.union1d(ids[~reg], parent_ids(ids[reg]))
                hit = (index, ids, images)
                self._scan_ids[id(index)] = hit
            return hit[1], hit[2]

    def _region_scan(self, score_rows: Callable[[np.ndarray, slice], np.ndarray], nq: int, k: int, keep_duplicates: bool,
                     *, score: str, extra: str | None = None, exclude_items: np.ndarray | None = None,
                     probabilities: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images ranked exactly by a scan of the item and region stores: ``(scores, image ids, triggers)``.

        ``score_rows(block [r, C], queries: slice) -> [r, nq]`` scores a block of stored rows (vectors, or the
        ``extra``) for a slice of the queries. The
        rows are those of the joint region index. Per image it keeps the best region (and its id), the sum and
        count of its regions' scores, and its own row's score, in ``O(images x queries)`` memory; score
        ``"max"`` ranks by the best of the image and its regions, ``"contrast"`` by the best region minus the
        mean of the image's regions, or with ``probabilities`` (scores in [0, 1]) by the log of their ratio
        (0 for an image without regions).
        """
        k = _check_k(k)
        _check_region_score(score)
        allowed, images = self._sorted_ids(self.region_index())
        k = max(1, min(k, max(len(images), 1)))
        ex = None if exclude_items is None else np.asarray(exclude_items, dtype=np.int64).reshape(nq, -1)  # [q, m]
        excluded = self._sorted_exclusions(keep_duplicates)
        parts = [self._region_scan_block(score_rows, slice(a, min(a + _SCAN_QUERY_BLOCK, nq)), k, score, extra, ex,
                                         excluded, allowed, images, probabilities)
                 for a in range(0, max(nq, 1), _SCAN_QUERY_BLOCK)]  # memory grows as images x queries: a block at a time
        return tuple(np.concatenate([p[i] for p in parts], axis=0) for i in range(3))  # type: ignore[return-value]

    def _region_scan_block(self, score_rows, sl: slice, k: int, score: str, extra: str | None,
                           exclude_items: np.ndarray | None, excluded: np.ndarray | None, allowed: np.ndarray,
                           images: np.ndarray, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_region_scan` for the queries ``sl`` (``excluded``: sorted ids never returned)."""
        from .regions import in_sorted, is_region_id, parent_ids, region_store

        nq = sl.stop - sl.start
        n = len(images)
        best = np.full((n, nq), -np.inf, np.float32)  # the best region of each image
        trig = np.full((n, nq), -1, np.int64)
        sums = np.zeros((n, nq), np.float64)
        counts = np.zeros(n, np.int64)
        own = np.full((n, nq), -np.inf, np.float32)  # the image's own row
        for ids, block in region_store(self.ws, self.encoder_name).iter_shards(extra=extra):
            keep = in_sorted(allowed, ids) & is_region_id(ids)
            par = parent_ids(ids)
            if excluded is not None:
                keep &= ~in_sorted(excluded, par)
            rows = np.flatnonzero(keep)
            if not len(rows):
                continue
            rows = rows[np.argsort(par[rows], kind="stable")]  # an image's regions together
            ids_r, par_r = ids[rows], par[rows]
            sc = np.asarray(score_rows(np.asarray(block[rows], dtype=np.float32), sl), dtype=np.float32)  # [r, nq]
            starts = np.flatnonzero(np.r_[True, par_r[1:] != par_r[:-1]])  # [g] one run per image
            lens = np.diff(np.r_[starts, len(rows)])
            run_max = np.maximum.reduceat(sc, starts, axis=0)  # [g, nq]
            at = np.arange(len(rows))[:, None]
            first = -np.maximum.reduceat(np.where(sc >= np.repeat(run_max, lens, axis=0), -at, -len(rows)), starts, axis=0)
            pidx = np.searchsorted(images, par_r[starts])  # each image once per shard
            cur = best[pidx]
            upd = run_max > cur
            best[pidx] = np.where(upd, run_max, cur)
            trig[pidx] = np.where(upd, ids_r[first], trig[pidx])
            sums[pidx] += np.add.reduceat(sc, starts, axis=0)
            counts[pidx] += lens
        for ids, block in self.store.iter_shards(extra=extra):
            keep = in_sorted(allowed, ids)  # the image's own row, where the index holds it
            if excluded is not None:
                keep &= ~in_sorted(excluded, ids)
            rows = np.flatnonzero(keep)
            if len(rows):
                own[np.searchsorted(images, ids[rows])] = score_rows(np.asarray(block[rows], dtype=np.float32), sl)
        seen = (counts > 0) | np.isfinite(own[:, 0])  # images with any row to score
        if score == "contrast":
            mean = sums / np.maximum(counts, 1)[:, None]
            if probabilities:  # the best region's lift over the image: log(best / mean)
                lift = np.log(np.maximum(best, 0.0) + _LIFT_EPS) - np.log(np.maximum(mean, 0.0) + _LIFT_EPS)
                value = np.where(counts[:, None] > 0, lift, 0.0)
            else:
                value = np.where(counts[:, None] > 0, best - mean, 0.0)
            value = np.maximum(value, 0.0).astype(np.float32)  # (float rounding can dip below 0 = no contrast)
            whole = counts == 0
            trig = np.where(whole[:, None], images[:, None], trig)
        else:
            whole = own > best
            value = np.where(whole, own, best)
            trig = np.where(whole, images[:, None], trig)
        value = np.where(seen[:, None], value, -np.inf)
        if exclude_items is not None:
            ex = exclude_items[sl]  # [nq, m]
            pos = np.searchsorted(images, ex)
            hit = (pos < n) & (images[np.minimum(pos, n - 1)] == ex)
            value[pos[hit], np.broadcast_to(np.arange(nq)[:, None], ex.shape)[hit]] = -np.inf
        out = [np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64), np.full((nq, k), -1, np.int64)]
        for j in range(nq):
            v = value[:, j]
            cand = np.flatnonzero(np.isfinite(v))
            if len(cand) > k:
                cand = cand[np.argpartition(-v[cand], k - 1)[:k]]
            cand = cand[np.lexsort((images[cand], -v[cand]))]  # best first; ties by image id
            m = len(cand)
            out[0][j, :m], out[1][j, :m], out[2][j, :m] = v[cand], images[cand], trig[cand, j]
        return out[0], out[1], out[2]

    def bridge_index(self) -> VectorIndex:
        self._check_imagenet_scores()
        if self._bridge is None:
            self.index()  # built with the bridge: warns when both are older than the embeddings
            d = self.ws.index_dir(self.encoder_name) / _BRIDGE
            if not (d / "meta.json").exists():
                raise IndexNotBuiltError(f"no text bridge for {self.encoder_name!r} yet; run `assay index`")
            self._bridge = VectorIndex.load(d, mmap=True)
        return self._bridge

    # -------------------------------------------------------------- search
    def search_vectors(
        self, queries: np.ndarray, k: int, *, exclude_per_query: Any = None, keep_duplicates: bool = False,
        index: VectorIndex | None = None, reduce: bool = True, exclude_ids: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Batch search: ``(scores [q, k'], ids [q, k'])``, best first, ``-1`` padding, where ``k' = min(k, the
        index's size)`` (at least 1): a ``k`` beyond the corpus asks for every item, never for memory it lacks.
        ``exclude_ids``: ids left out of every query's results (a filter of the index, besides duplicates);
        ``exclude_per_query`` ``[q, m]``: per query."""
        k = _check_k(k)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        idx = index if index is not None else self.index()
        k = max(1, min(k, idx.ntotal))
        raw = q
        if reduce and index is None:
            q = self._reduce(q)
        excluded = self.excluded_ids(keep_duplicates)
        if exclude_ids is not None and len(exclude_ids):
            mine = np.asarray(exclude_ids, dtype=np.int64).reshape(-1)
            excluded = mine if excluded is None else np.union1d(excluded, mine)
        if index is None and idx.kind == "ivf-pq" and self.rerank > 1:
            fetch = min(k * self.rerank, max(k, RERANK_MAX_CANDIDATES))
            if fetch > k:
                # Compressed codes rank approximately: re-score the candidates with the stored vectors (in
                # the stored, unreduced space when the index holds PCA-reduced codes).
                _, cand = idx.search(q, fetch, exclude_ids=excluded, exclude_per_query=exclude_per_query)
                return _rerank(raw, cand, self.store.get, k)
        return idx.search(q, k, exclude_ids=excluded, exclude_per_query=exclude_per_query)

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        flat = sorted({int(i) for i in ids.reshape(-1) if i >= 0})
        rows = {r.id: r for r in self.ws.catalog.get_many(flat)} if flat else {}
        # float16 vectors at rest give inner products a hair outside [-1, 1]; cosine is reported as such
        scores = np.clip(scores, -1.0, 1.0)
        return [
            [Hit(int(i), float(s), rows[int(i)].uri if int(i) in rows else "",
                 (rows[int(i)].text or "") if int(i) in rows and rows[int(i)].modality == "text" else None)
             for s, i in zip(srow, irow) if i >= 0]
            for srow, irow in zip(scores, ids)
        ]

    def exemplar_query(self, *, items: Any = None, images: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """One query from several exemplars, ``(vector [d], the item ids among them)``: the mean of their unit
        vectors, normalised (their prototype: what they share weighs more than what each has of its own).
        ``items``: item ids of the corpus (left out of the results); ``images``: image files (searched as
        given: a file of the corpus is not left out, as with one ``image``). Each exemplar counts once."""
        if (items is None) == (images is None):
            raise InputError("give exemplars as item ids or as image files, not both")
        if items is not None:  # (an exemplar given twice counts once)
            ids = as_id_array(list(dict.fromkeys(items.tolist() if isinstance(items, np.ndarray) else items))
                              if _several(items) else [items], "exemplar item ids")
            if not len(ids):
                raise InputError("give at least one exemplar item id")
            vecs = self.query_vectors_for_items(ids)
        else:
            paths = list(dict.fromkeys(str(p) for p in ([images] if not _several(images) else images)))
            if not paths:
                raise InputError("give at least one exemplar image")
            vecs = np.stack([self.vector_for_image(p) for p in paths])
            ids = np.zeros(0, np.int64)
        v = np.asarray(vecs, dtype=np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        proto = v.mean(axis=0)
        norm = float(np.linalg.norm(proto))
        if not norm > 1e-6:
            raise InputError("the exemplars cancel out (their mean vector is zero): give exemplars of one concept")
        return proto / norm, ids

    def search(
        self, *, item: Any = None, image: Any = None, text: str | None = None,
        vector: np.ndarray | None = None, k: int = 10, keep_duplicates: bool = False,
    ) -> list[Hit]:
        """One query by exactly one of ``item``, ``image``, ``text`` or ``vector``; best first. ``item`` or
        ``image`` may be a list: several exemplars make one query (:meth:`exemplar_query`), and the exemplar
        items are left out."""
        given = [x is not None for x in (item, image, text, vector)]
        if sum(given) != 1:
            raise InputError("give exactly one query: an item id, an image path, a text or a vector")
        if _several(item) or _several(image):
            q, ids = self.exemplar_query(items=item, images=image)
            s, i = self.search_vectors(q[None, :], k, exclude_ids=ids if len(ids) else None,
                                       keep_duplicates=keep_duplicates)
            return self._hits(s, i)[0]
        if item is not None:  # one id (search_items takes several)
            return self.search_items([as_item_id(item, "item")], k=k, keep_duplicates=keep_duplicates)[0]
        if image is not None:
            return self.search_batch(self.vector_for_image(image)[None, :], k=k, keep_duplicates=keep_duplicates)[0]
        if text is not None:
            return self.search_texts([text], k=k, keep_duplicates=keep_duplicates)[0]
        return self.search_batch(_query_vector(vector), k=k, keep_duplicates=keep_duplicates)[0]

    def search_batch(self, queries: np.ndarray, *, k: int = 10, keep_duplicates: bool = False) -> list[list[Hit]]:
        """Several query vectors ``[q, d]`` (normalised here); one hit list per query."""
        q = _query_batch(queries)
        if not len(q):
            return []
        s, i = self.search_vectors(q, k, keep_duplicates=keep_duplicates)
        return self._hits(s, i)

    def search_items(self, ids: list[int] | np.ndarray, *, k: int = 10, keep_duplicates: bool = False) -> list[list[Hit]]:
        """Items most like each given item; the query item itself is left out."""
        ids = as_id_array(ids, "item ids")
        if not len(ids):
            return []
        vecs = self.query_vectors_for_items(ids)
        s, i = self.search_vectors(vecs, k, exclude_per_query=ids[:, None], keep_duplicates=keep_duplicates)
        return self._hits(s, i)

    def search_texts(self, texts: list[str], *, k: int = 10, keep_duplicates: bool = False) -> list[list[Hit]]:
        texts = _text_list(texts)
        if not texts:
            return []
        q, route = self.vectors_for_texts(texts)
        if route == "bridge" and self.text_bridge == "wordnet":
            s, i, _ = self._class_set_search(q, k, keep_duplicates, regions=False)
        elif route == "bridge":
            s, i = self.search_vectors(q, k, keep_duplicates=keep_duplicates, index=self.bridge_index(), reduce=False)
        else:
            s, i = self.search_vectors(q, k, keep_duplicates=keep_duplicates)
        return self._hits(s, i)

    def neighbors(self, ids: list[int] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each given item, itself excluded: ``(scores [n, k], ids [n, k])``, padded
        with ``-inf`` / ``-1`` where the corpus holds fewer (callers keep ``k`` small: a round caps it at the
        corpus size)."""
        k = _check_k(k)
        ids = as_id_array(ids, "ids")
        index = self.index()
        graph = self.knn_graph()
        # SEALS pools and information density ask for one neighbour more than they use, to drop a self-match;
        # the graph has dropped it already, so a graph of K answers requests of up to K + 1 (last column empty)
        if graph is None or k > graph.k + 1 or not len(ids):
            return _index_neighbors(index, self._reduce(self.vectors_for_items(ids)), ids, k)
        # rows of the stored graph (`assay index --knn K`, saved after the index): no search for those items
        pos = np.searchsorted(self._graph_ids_sorted, ids)  # [n]
        pos = np.minimum(pos, len(self._graph_ids_sorted) - 1)
        hit = self._graph_ids_sorted[pos] == ids  # [n]
        rows = self._graph_order[pos[hit]]  # [h] row of each found id in the graph
        scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        nbrs = np.full((len(ids), k), -1, dtype=np.int64)
        kk = min(k, graph.k)
        scores[hit, :kk], nbrs[hit, :kk] = graph.scores[rows, :kk], graph.nbr_ids[rows, :kk]
        if (~hit).any():  # items the graph does not hold: the index
            miss = ids[~hit]
            s, i = _index_neighbors(index, self._reduce(self.vectors_for_items(miss)), miss, k)
            scores[~hit], nbrs[~hit] = s, i
        return scores, nbrs

    def knn_graph(self) -> KnnGraph | None:
        """The stored kNN graph when it is at least as new as the index (else None: the index answers)."""
        if self._graph is False:
            return None
        if self._graph is None:
            d = self.ws.index_dir(self.encoder_name) / _KNN
            main = self.ws.index_dir(self.encoder_name) / _MAIN / "meta.json"
            if not (d / "meta.json").exists():  # none was built (`assay index --knn K` builds one)
                self._graph = False
                return None
            try:
                fresh = (d / "meta.json").stat().st_mtime_ns >= main.stat().st_mtime_ns
                g = KnnGraph.load(d, mmap=True) if fresh else None
            except Exception as exc:  # noqa: BLE001 - a damaged graph only costs speed: the index answers
                log.warning("the kNN graph at %s cannot be read (%s); neighbours come from the index", d, exc)
                g = None
            if g is None:
                self._graph = False
                return None
            order = np.argsort(g.ids, kind="stable")
            self._graph, self._graph_order, self._graph_ids_sorted = g, order, np.asarray(g.ids)[order]
        return self._graph

    # -------------------------------------------------------------- regions
    def region_spec(self):
        """The :class:`~assay.regions.RegionSpec` of the workspace's region vectors (NoEmbeddingsError if none)."""
        if self._region_spec is None:
            from .regions import region_spec_of

            spec = region_spec_of(self.ws, self.encoder_name)
            if spec is None:
                raise NoEmbeddingsError(
                    f"no region embeddings for {self.encoder_name!r}; run `assay embed --regions grid:2,3` and `assay index`"
                )
            self._region_spec = spec
        return self._region_spec

    def region_index(self) -> VectorIndex:
        """The joint index of items and their regions (``index/<key>/regions``)."""
        if self._region_index is None:
            from .regions import REGION_INDEX_DIR, region_store

            self.region_spec()
            d = self.ws.index_dir(self.encoder_name) / REGION_INDEX_DIR
            if not (d / "meta.json").exists():
                raise IndexNotBuiltError(f"no region index for {self.encoder_name!r}; build it with `assay index`")
            idx = VectorIndex.load(d, mmap=True)
            if idx.encoder_version != region_store(self.ws, self.encoder_name).meta()["version"]:
                raise IndexNotBuiltError("the region index is older than the region vectors; run `assay index`")
            self._region_index = idx
        return self._region_index

    def region_bridge_index(self) -> VectorIndex:
        self._check_imagenet_scores()
        if self._region_bridge is None:
            from .regions import REGION_BRIDGE_DIR

            self.region_spec()  # no region vectors at all: say to embed them, not only to index
            d = self.ws.index_dir(self.encoder_name) / REGION_BRIDGE_DIR
            if not (d / "meta.json").exists():
                raise IndexNotBuiltError(f"no region text bridge for {self.encoder_name!r} yet; run `assay index`")
            idx = VectorIndex.load(d, mmap=True)
            # built from the region vectors of one version ("<region store version>+<text encoder version>"):
            # after `embed --regions` with another spec, its region ids would name other boxes
            from .regions import region_store

            if not str(idx.encoder_version).startswith(f"{region_store(self.ws, self.encoder_name).meta()['version']}+"):
                raise IndexNotBuiltError("the region text bridge is older than the region vectors; run `assay index`")
            self._region_bridge = idx
        return self._region_bridge

    def _region_exclusions(self, keep_duplicates: bool) -> np.ndarray | None:
        from .regions import region_ids

        ex = self.excluded_ids(keep_duplicates)
        if ex is None:
            return None
        R = self.region_spec().n_regions
        return np.concatenate([ex, region_ids(ex[:, None], np.arange(R)[None, :]).ravel()])

    def search_regions_vectors(
        self, queries: np.ndarray, k: int, *, exclude_items: np.ndarray | None = None, keep_duplicates: bool = False,
        index: VectorIndex | None = None, score: str = "max",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images ranked by their best region: ``(scores [q, k], image ids [q, k], trigger ids [q, k])``.

        The score of an image is the max over the image and its regions; ``trigger`` is the id that gave it
        (a region id, or the image id when the whole image scored best). ``exclude_items`` ``[q]`` (or ``[q, m]``,
        -1 padded) leaves one image (or m) and its regions out of each query's results. With ``score="contrast"`` an image scores by its
        best region minus the mean of its regions' scores: how far its best region stands out from the rest of
        the image (see :data:`REGION_SCORES`); that is an exact scan of the stored region vectors, not an index
        search (``index`` is not used).
        """
        from .regions import best_per_parent, region_ids

        k = _check_k(k)
        _check_region_score(score)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if score == "contrast":  # an exact scan of the stored region vectors
            return self._region_scan(lambda block, sl: block @ q[sl].T, len(q), k, keep_duplicates,
                                     score="contrast", exclude_items=exclude_items)
        idx = index if index is not None else self.region_index()
        k = max(1, min(k, idx.ntotal))  # images: at most as many as the index holds rows
        R = self.region_spec().n_regions
        # If the top F rows name at least k distinct images, the top-k images by best region are exact (for
        # an exact index): an image missing from them has no row above the F-th, so none above the k-th
        # image's best. k images hold at most k * (R + 1) rows, so F = k * (R + 1) always suffices; start
        # smaller (a dense spec allows up to 1,024 regions per image, most of them far from any one query)
        # and grow F 4x for the queries that are still short of k images.
        cap = min(k * (R + 1), max(idx.ntotal, 1))
        fetch = min(cap, max(4 * k, k * min(R + 1, 16)))
        per_query = None
        excluded = self._region_exclusions(keep_duplicates)
        if exclude_items is not None:
            ex = np.asarray(exclude_items, dtype=np.int64).reshape(len(q), -1)  # [q, m], -1 padded
            rid = region_ids(np.maximum(ex, 0)[:, :, None], np.arange(R)[None, None, :])  # [q, m, R]
            per_query = np.concatenate([ex, np.where(ex[:, :, None] >= 0, rid, -1).reshape(len(q), -1)], axis=1)
            if len(q) == 1:  # one query (several exemplars): a filter of the index, not a larger fetch
                mine = per_query[0][per_query[0] >= 0]
                excluded = mine if excluded is None else np.union1d(excluded, mine)
                per_query = None
        rows = np.arange(len(q))
        out = [np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64),
               np.full((len(q), k), -1, np.int64)]
        while len(rows):
            s, i = idx.search(q[rows], fetch, exclude_ids=excluded,
                              exclude_per_query=None if per_query is None else per_query[rows])
            bs, bp, bt = best_per_parent(s, i, k)
            done = (bp[:, -1] >= 0) | (fetch >= cap) | ((i < 0).any(axis=1))  # k images, or all there are
            for arr, val in zip(out, (bs, bp, bt)):
                arr[rows[done]] = val[done]
            rows = rows[~done]
            fetch = min(cap, fetch * 4)
        return out[0], out[1], out[2]

    def _region_hits(self, scores: np.ndarray, ids: np.ndarray, trig: np.ndarray) -> list[list[RegionHit]]:
        from .regions import region_boxes

        flat = [int(i) for i in ids.reshape(-1) if i >= 0]
        uris = self.ws.catalog.uris(flat)
        boxes = region_boxes(self.ws, trig.reshape(-1), self.encoder_name)
        out = []
        for srow, irow, trow in zip(scores, ids, trig):
            row = []
            for s, i, t in zip(srow, irow, trow):
                if i < 0:
                    continue
                b = boxes.get(int(t))
                row.append(RegionHit(int(i), float(s), uris.get(int(i), ""), int(t) if b is not None else None, b))
            out.append(row)
        return out

    def search_regions(
        self, *, item: Any = None, image: Any = None, text: str | None = None,
        vector: np.ndarray | None = None, k: int = 10, keep_duplicates: bool = False, score: str = "max",
    ) -> list[RegionHit]:
        """Like :meth:`search`, but images score by their best region and each hit names that region's box.

        ``score``: ``"max"`` (the best region's score) or ``"contrast"`` (how far the best region stands out
        from the image's other regions; for small objects in busy scenes, see :data:`REGION_SCORES`). Several
        exemplars (``item`` or ``image`` a list) make one query, their prototype (:meth:`exemplar_query`)."""
        given = [x is not None for x in (item, image, text, vector)]
        if sum(given) != 1:
            raise InputError("give exactly one query: an item id, an image path, a text or a vector")
        kw = dict(k=k, keep_duplicates=keep_duplicates, score=score)
        if _several(item) or _several(image):
            _check_region_score(score)
            q, ids = self.exemplar_query(items=item, images=image)
            return self._region_hits(*self.search_regions_vectors(
                q[None, :], k, exclude_items=ids[None, :] if len(ids) else None, keep_duplicates=keep_duplicates,
                score=score))[0]
        if item is not None:
            return self.search_regions_items([item], **kw)[0]
        if image is not None:
            return self.search_regions_batch(self.vector_for_image(image)[None, :], **kw)[0]
        if text is not None:
            return self.search_regions_texts([text], **kw)[0]
        return self.search_regions_batch(_query_vector(vector), **kw)[0]

    def search_regions_batch(self, queries: np.ndarray, *, k: int = 10, keep_duplicates: bool = False,
                             score: str = "max") -> list[list[RegionHit]]:
        q = _query_batch(queries)
        if not len(q):
            return []
        return self._region_hits(*self.search_regions_vectors(q, k, keep_duplicates=keep_duplicates, score=score))

    def search_regions_items(self, ids: list[int] | np.ndarray, *, k: int = 10, keep_duplicates: bool = False,
                             score: str = "max") -> list[list[RegionHit]]:
        """Images most like each given image (its whole-image vector), by their best region; the query image is left out."""
        ids = as_id_array(ids, "item ids")
        if not len(ids):
            return []
        vecs = self.query_vectors_for_items(ids)
        return self._region_hits(*self.search_regions_vectors(vecs, k, exclude_items=ids, keep_duplicates=keep_duplicates,
                                                              score=score))

    def search_regions_texts(self, texts: list[str], *, k: int = 10, keep_duplicates: bool = False,
                             score: str = "max") -> list[list[RegionHit]]:
        texts = _text_list(texts)
        _check_region_score(score)
        if not texts:
            return []
        q, route = self.vectors_for_texts(texts)
        if route == "bridge" and self.text_bridge == "wordnet":
            return self._region_hits(*self._class_set_search(q, k, keep_duplicates, regions=True, score=score))
        if route == "bridge" and score == "contrast":
            raise InputError("contrast scoring of text works through the WordNet bridge or a text tower, not the "
                             "ConSE index (drop --bridge conse)")
        idx = self.region_bridge_index() if route == "bridge" else None
        return self._region_hits(*self.search_regions_vectors(q, k, keep_duplicates=keep_duplicates, index=idx,
                                                              score=score))
