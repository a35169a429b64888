"""The batch embedding pipeline: every ok item, embedded once per encoder, resumable.

Decoding and preprocessing run in a thread pool ahead of inference (Pillow, hashlib and ONNX Runtime
release the GIL), so the model is fed while the next batch is decoded. Rows are buffered and committed a
shard at a time (see :mod:`assay.vectors`); items that fail to decode are marked ``error`` in the catalog
with the reason when their shard commits. A run that is killed at any point, ``kill -9`` included, leaves
committed shards intact; the next run embeds exactly the items that are not in a committed shard, so every
item ends up embedded exactly once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .catalog import ItemRow
from .encoders.base import Encoder, draft_size, get_encoder
from .errors import (
    DecodeError, InputError, MissingDependencyError, StorageUnavailableError, WorkspaceError, as_id_array,
    check_encoder_name, check_workspace,
)
from .media import decode_image, decode_pixels, read_bytes
from .vectors import VectorStore
from .workspace import Workspace

__all__ = ["EmbedReport", "EmbedHook", "embed", "load_encoder"]

log = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    encoder: str
    version: str
    dim: int
    pending: int = 0  # items that needed embedding when the run started
    embedded: int = 0  # rows committed by this run
    errors: int = 0  # items marked error by this run
    error_samples: list[tuple[int, str]] = field(default_factory=list)
    shards: int = 0
    seconds: float = 0.0
    total_embedded: int = 0  # rows in the store after the run

    @property
    def items_per_s(self) -> float:
        return (self.embedded + self.errors) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder, "version": self.version, "dim": self.dim, "pending": self.pending,
            "embedded": self.embedded, "errors": self.errors, "shards": self.shards,
            "error_samples": [{"id": i, "reason": r} for i, r in self.error_samples],
            "seconds": round(self.seconds, 3), "items_per_s": round(self.items_per_s, 2),
            "total_embedded": self.total_embedded,
        }


def load_encoder(encoder: str | Encoder) -> Encoder:
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
    enc.load()
    return enc


#: Failed items a report keeps as examples (it counts them all).
ERROR_SAMPLES = 20


def finite_rows(vecs: np.ndarray, extras: dict[str, np.ndarray]) -> np.ndarray:
    """Boolean ``[n]``: rows whose vector and every extra are free of NaN and inf."""
    finite = np.isfinite(vecs).all(axis=1)  # [n]
    for arr in extras.values():
        finite &= np.isfinite(arr).all(axis=1)
    return finite


def record_error(report: Any, item_id: int, reason: str) -> None:
    """Count a failed item on ``report`` (``errors``) and keep the first few as ``error_samples``."""
    report.errors += 1
    if len(report.error_samples) < ERROR_SAMPLES:
        report.error_samples.append((item_id, reason))


class _ShardWriter:
    """Buffers rows and errors; commits them together, a shard at a time."""

    def __init__(self, ws: Workspace, store: VectorStore, shard_size: int, report: EmbedReport) -> None:
        self.ws, self.store, self.shard_size, self.report = ws, store, shard_size, report
        self.ids: list[np.ndarray] = []
        self.vecs: list[np.ndarray] = []
        self.extras: dict[str, list[np.ndarray]] = {}
        self.errors: list[tuple[int, str]] = []
        self.n = 0

    def add(self, ids: np.ndarray, vecs: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        finite = finite_rows(vecs, extras)  # [n]
        if not finite.all():
            for i in ids[~finite]:
                self.error(int(i), "the encoder produced NaN or inf for this item")
            ids, vecs = ids[finite], vecs[finite]
            extras = {k: v[finite] for k, v in extras.items()}
        self.ids.append(ids)
        self.vecs.append(vecs)
        for name, arr in extras.items():
            self.extras.setdefault(name, []).append(arr)
        self.n += len(ids)
        if self.n >= self.shard_size:
            self.commit()

    def error(self, item_id: int, reason: str) -> None:
        self.errors.append((item_id, reason))
        record_error(self.report, item_id, reason)

    def commit(self) -> None:
        if self.n:
            ids = np.concatenate(self.ids)
            vecs = np.concatenate(self.vecs)
            extras = {k: np.concatenate(v) for k, v in self.extras.items()}
            self.store.append(ids, vecs, extras)
            self.report.embedded += len(ids)
            self.report.shards += 1
        if self.errors:
            self.ws.catalog.mark_errors(self.errors)
        self.ids, self.vecs, self.extras, self.errors, self.n = [], [], {}, [], 0


class EmbedHook(Protocol):
    """Extra per-image work that rides along the embedding pass (e.g. a detector plugin,
    :class:`assay.interop.detector.DetectorHook`): each image is read and decoded once for both.

    ``preprocess(image)`` runs in the decode threads on the decoded RGB image; ``process(ids, inputs)``
    runs after each encoder batch with the ids of that batch's decoded items and what ``preprocess``
    returned for them; ``close()`` runs once at the end of the pass, also after an interruption.
    """

    def preprocess(self, image: Any) -> Any: ...

    def process(self, ids: Sequence[int], inputs: Sequence[Any]) -> None: ...

    def close(self) -> None: ...


def model_input(enc: Encoder) -> Callable[[Any], np.ndarray]:
    """The cheapest per-image preprocessing ``enc.embed_batch`` takes: ``preprocess_pixels`` (uint8 pixels,
    scaled inside the model) where the encoder has it, else ``preprocess``."""
    return getattr(enc, "preprocess_pixels", None) or enc.preprocess


def _decode_one(
    enc: Encoder, item: ItemRow, draft: tuple[int, int] | None, hooks: Sequence[EmbedHook] = ()
) -> np.ndarray | tuple[np.ndarray, list[Any]] | DecodeError:
    try:
        prep = model_input(enc)
        if not hooks and getattr(enc, "takes_pixels", False):  # upright RGB uint8 [H, W, 3], no Pillow image
            return prep(decode_pixels(read_bytes(item.uri), draft_size=draft))
        image = decode_image(read_bytes(item.uri), draft_size=draft)
        if not hooks:
            return prep(image)
        return prep(image), [h.preprocess(image) for h in hooks]
    except DecodeError as exc:
        return exc
    except (StorageUnavailableError, MissingDependencyError):
        raise  # the store or the installation, not this item: the run stops and no item is marked failed
    except Exception as exc:  # one bad item never stops the run; the reason is recorded on it
        return DecodeError(f"{type(exc).__name__}: {exc}")


def check_encoder_fits(ws: Workspace, encoder: str | Encoder) -> None:
    """Raise :class:`InputError` when ``encoder`` embeds none of the modalities the workspace's items have
    (a text encoder on a folder of photos): it would embed nothing, and say nothing useful about why."""
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder  # an unknown name: UnknownNameError
    mods = set(enc.modalities)
    encoder = enc.name
    n = ws.catalog.count()
    have = [m for m in ("image", "text") if n[m]]
    if have and not set(have) & mods:
        held = " and ".join(f"{n[m]} {m} items" for m in have)
        want = "an image encoder (efficientnet-lite0, clip:DIR)" if "image" in have else "a text encoder (minilm, clip:DIR)"
        raise InputError(f"encoder {encoder!r} embeds {' and '.join(sorted(mods))} items only, and the workspace "
                         f"holds {held}: pass --encoder with {want}")


def embed(
    ws: Workspace,
    encoder: str | Encoder | None = None,
    *,
    batch_size: int = 64,
    shard_size: int = 4096,
    workers: int | None = None,
    limit: int | None = None,
    reset: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    hooks: Sequence[EmbedHook] = (),
    ids: Sequence[int] | np.ndarray | None = None,
) -> EmbedReport:
    """Embed every ok item of the workspace that the encoder has not embedded yet.

    Parameters
    ----------
    encoder : name or Encoder, optional
        Default: the workspace's default encoder.
    batch_size : int
        Items per inference call.
    shard_size : int
        Rows per committed shard: the most work a crash can lose.
    workers : int, optional
        Decode threads (default: the number of CPUs).
    limit : int, optional
        Embed at most this many items (for trials).
    reset : bool
        Drop the encoder's stored embeddings first (needed when the encoder's version changed).
    progress : callable, optional
        Called with the number of items finished after each batch.
    on_start : callable, optional
        Called once with the number of pending items.
    hooks : sequence of EmbedHook, optional
        Extra per-image work in the same pass (see :class:`EmbedHook`), e.g. a detector plugin. Hooks see
        the items this run embeds (not those embedded before) at full resolution (JPEG draft decoding is
        off while hooks run), and only images.
    ids : sequence of int, optional
        Embed only these items (those of them that are ok and not embedded yet), e.g. new exemplar files.
    """
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    batch_size, shard_size = int(batch_size), int(shard_size)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise InputError(f"limit must be a non-negative integer, got {limit!r}")
    check_workspace(ws, "embed")
    if not isinstance(encoder, Encoder):
        check_encoder_name(encoder)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    if ids is not None:
        ids = as_id_array(ids, "ids")
    only = ids  # (the name is reused below)
    t0 = time.perf_counter()
    check_encoder_fits(ws, encoder or ws.default_encoder)  # before the weights load or a store is made
    enc = load_encoder(encoder or ws.default_encoder)
    ws.apply_changes()  # embeddings of items whose bytes changed since are dropped, so they are embedded again
    store = ws.vectors(enc.name)
    report = EmbedReport(encoder=enc.name, version=enc.version, dim=enc.dim)
    with store:
        if reset:
            store.reset()
        store.create(encoder=enc.name, version=enc.version, dim=enc.dim, extras=dict(getattr(enc, "extras_spec", {})))
        modalities = [m for m in ("image", "text") if m in enc.modalities]
        pending_by_mod = {}
        for m in modalities:
            ids = ws.catalog.ids(status="ok", modality=m)
            pending_by_mod[m] = ids[~store.contains(ids)] if len(ids) else ids
        if only is not None:
            wanted = np.asarray(list(only), dtype=np.int64).reshape(-1)
            pending_by_mod = {m: v[np.isin(v, wanted)] for m, v in pending_by_mod.items()}
        if limit is not None:
            left = limit
            for m in modalities:
                pending_by_mod[m] = pending_by_mod[m][:left]
                left -= len(pending_by_mod[m])
        report.pending = sum(len(v) for v in pending_by_mod.values())
        if on_start is not None:
            on_start(report.pending)
        writer = _ShardWriter(ws, store, shard_size, report)
        try:
            if len(pending_by_mod.get("image", [])):
                _embed_images(ws, enc, pending_by_mod["image"], writer, batch_size, workers, progress, hooks)
            if len(pending_by_mod.get("text", [])):
                _embed_texts(ws, enc, pending_by_mod["text"], writer, batch_size, progress)
        finally:
            # Whatever finished (also on Ctrl-C) is committed; a hard kill loses only this buffer.
            writer.commit()
            for hook in hooks:
                hook.close()
        report.total_embedded = len(store)
    report.seconds = time.perf_counter() - t0
    return report


def _embed_images(
    ws: Workspace, enc: Encoder, ids: np.ndarray, writer: _ShardWriter, batch_size: int, workers: int | None,
    progress: Callable[[int], None] | None, hooks: Sequence[EmbedHook] = (),
) -> None:
    draft = draft_size(enc) if not hooks else None
    workers = workers or max(2, os.cpu_count() or 2)
    window = batch_size * 3  # items decoded ahead of inference
    from .ingest import cancel_on_error

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assay-decode") as pool, cancel_on_error(pool):
        inflight: deque[tuple[int, Future]] = deque()
        items = ws.catalog.iter_items(ids)
        exhausted = False
        batch_ids: list[int] = []
        batch_arrays: list[np.ndarray] = []
        batch_extra: list[list[Any]] = []  # per item, one input per hook
        while True:
            while not exhausted and len(inflight) < window:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                inflight.append((item.id, pool.submit(_decode_one, enc, item, draft, hooks)))
            if not inflight:
                break
            item_id, fut = inflight.popleft()
            res = fut.result()
            if isinstance(res, DecodeError):
                writer.error(item_id, str(res))
                if progress is not None:
                    progress(1)
            else:
                if hooks:
                    res, extra = res
                    batch_extra.append(extra)
                batch_ids.append(item_id)
                batch_arrays.append(res)
            if len(batch_ids) >= batch_size or (not inflight and exhausted and batch_ids):
                _run_batch(enc, batch_ids, batch_arrays, writer)
                for k, hook in enumerate(hooks):
                    hook.process(list(batch_ids), [e[k] for e in batch_extra])
                if progress is not None:
                    progress(len(batch_ids))
                batch_ids, batch_arrays, batch_extra = [], [], []


def _run_batch(enc: Encoder, batch_ids: list[int], arrays: list[np.ndarray], writer: _ShardWriter) -> None:
    try:
        out = enc.embed_batch(np.stack(arrays))
    except Exception as exc:
        if len(batch_ids) == 1:
            writer.error(batch_ids[0], f"inference failed: {type(exc).__name__}: {exc}")
            return
        # Find the bad item instead of failing the whole batch.
        half = len(batch_ids) // 2
        _run_batch(enc, batch_ids[:half], arrays[:half], writer)
        _run_batch(enc, batch_ids[half:], arrays[half:], writer)
        return
    writer.add(np.asarray(batch_ids, dtype=np.int64), out.embeddings, out.extras)


#: Texts handed to the encoder per call by the pipeline (see _embed_texts).
TEXT_WINDOW = 1024


def _embed_texts(
    ws: Workspace, enc: Encoder, ids: np.ndarray, writer: _ShardWriter, batch_size: int,
    progress: Callable[[int], None] | None,
) -> None:
    # Texts go to the encoder a window at a time: it sorts a window by length and pads each of its own batches
    # to the longest text in it, so windows much larger than a batch waste far less on padding (2.5-3x faster
    # on banking77 with minilm than batches of 64 in catalog order).
    window = max(batch_size, TEXT_WINDOW)
    batch: list[ItemRow] = []
    for item in ws.catalog.iter_items(ids):
        batch.append(item)
        if len(batch) >= window:
            _text_batch(enc, batch, writer)
            if progress is not None:
                progress(len(batch))
            batch = []
    if batch:
        _text_batch(enc, batch, writer)
        if progress is not None:
            progress(len(batch))


def _text_batch(enc: Encoder, batch: list[ItemRow], writer: _ShardWriter) -> None:
    vecs = enc.embed_texts([it.text or "" for it in batch])
    writer.add(np.asarray([it.id for it in batch], dtype=np.int64), vecs, {})


def check_store_matches(store: VectorStore, enc: Encoder) -> None:
    """Raise WorkspaceError when the store was made by another encoder version or dim."""
    meta = store.meta()
    if meta["version"] != enc.version or int(meta["dim"]) != enc.dim:
        raise WorkspaceError(
            f"embeddings in {store.root} come from {meta['encoder']} {meta['version']} (dim {meta['dim']}), "
            f"but the encoder is {enc.name} {enc.version} (dim {enc.dim})"
        )
