"""Import embeddings a user already has, as the ``precomputed`` encoder (or any name they choose).

Accepted layouts (``source`` is a file, a folder, or a glob):

* ``.npy`` shards, each with its ids beside it: ``X.npy`` + ``X.ids.npy`` (or ``X_ids.npy``), ids being
  catalog item ids;
* the clip-retrieval layout: ``img_emb/img_emb_<i>.npy`` (or ``text_emb``) with ``metadata/metadata_<i>.parquet``
  aligned row for row, holding an ``id`` column or a ``uri``/``image_path``/``url`` column;
* Parquet files with an ``embedding`` (list of floats) column and an ``id`` or ``uri``/``image_path`` column.

Everything is checked before anything is written: shape and dtype (a 2-D float array, the same width in
every file), NaN/inf, ids or URIs that match catalog items, and rows repeated. A failure names the file and
row and writes nothing. Rows are L2-normalised (set ``normalize=False`` to refuse un-normalised input
instead) and stored as float16 shards like any encoder's output.
"""

from __future__ import annotations


import glob
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np

from .embed import EmbedReport
from .errors import InputError, NotFoundError, check_workspace
from .workspace import Workspace

log = logging.getLogger(__name__)

__all__ = ["import_embeddings", "PRECOMPUTED"]

PRECOMPUTED = "precomputed"
_KEY_COLUMNS = ("id", "uri", "image_path", "url")


@dataclass
class _Part:
    path: str  # file the vectors come from, for messages
    load_vectors: object  # () -> np.ndarray [n, d]
    keys: np.ndarray  # ids (int64) or uris (object)
    key_kind: str  # "id" or "uri"


def _ids_for_npy(p: Path) -> Path | None:
    for cand in (p.with_name(p.stem + ".ids.npy"), p.with_name(p.stem + "_ids.npy")):
        if cand.exists():
            return cand
    return None


def _keys_from_table(table, where: str) -> tuple[np.ndarray, str]:
    import pyarrow as pa

    cols = table.column_names
    if "id" in cols:
        col = table.column("id")
        if not pa.types.is_integer(col.type):
            raise InputError(f"{where}: column 'id' must hold integer item ids, got {col.type}")
        if col.null_count:
            first = int(np.argmax(np.asarray(col.is_null().to_numpy(zero_copy_only=False))))
            raise InputError(f"{where}: row {first}: the id is empty ({col.null_count} rows have none)")
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64), "id"
    for c in ("uri", "image_path", "url"):
        if c in cols:
            keys = table.column(c).to_pylist()
            empty = [k for k, u in enumerate(keys) if u is None or not str(u).strip()]
            if empty:
                raise InputError(f"{where}: row {empty[0]}: the {c!r} is empty ({len(empty)} rows have none)")
            return np.asarray([str(u).strip() for u in keys], dtype=object), "uri"
    raise InputError(f"{where} has columns {cols}; expected one of {list(_KEY_COLUMNS)} to match catalog items")


def _list_column(col, where: str) -> np.ndarray:
    """An Arrow column of equal-length number lists -> float32 ``[n, dim]``, without a Python list per row
    (a 1M x 1280 column as Python floats would need ~40 GB)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise InputError(f"{where}: column 'embedding' must hold lists of numbers, got {str(t)[:80]}")
    n = len(col)
    if n == 0:
        raise InputError(f"{where} holds no rows")
    if col.null_count:
        first = int(np.argmax(np.asarray(col.is_null().to_numpy(zero_copy_only=False))))
        raise InputError(f"{where}: row {first}: the embedding is empty ({col.null_count} rows have none)")
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise InputError(f"{where}: column 'embedding' must hold numbers, got lists of {t.value_type}")
    lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
    if lengths.min() != lengths.max() or lengths[0] == 0:
        odd = int(np.argmax(lengths != lengths[0])) if lengths.min() != lengths.max() else 0
        raise InputError(f"{where}: every embedding must be a list of the same length; row 0 has {int(lengths[0])} "
                         f"values, row {odd} has {int(lengths[odd])}")
    values = col.flatten()
    if values.null_count:
        raise InputError(f"{where}: column 'embedding' holds empty values inside its lists")
    flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(n, int(lengths[0]))


def _read(fn, where: str):
    """Run a file reader; a file numpy or pyarrow cannot read becomes an InputError naming it."""
    import pyarrow as pa

    try:
        return fn()
    except InputError:
        raise
    except (ValueError, TypeError, OSError, EOFError, pa.ArrowException) as exc:
        raise InputError(f"{where}: cannot read it ({type(exc).__name__}: {exc})") from exc


def _np_load(f, **kw):
    try:
        with open(f, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise InputError(f"{f}: cannot read it ({exc})") from exc
    if head != b"\x93NUMPY":  # numpy would take any other bytes for a pickle, and say so
        raise InputError(f"{f}: not a .npy file (it does not start with numpy's header); save the array with numpy.save")
    return _read(lambda: np.load(f, allow_pickle=False, **kw), str(f))


def _discover(source: str) -> list[_Part]:
    import pyarrow.parquet as pq

    p = Path(source)
    if any(ch in source for ch in "*?["):
        files = sorted(glob.glob(source))
    elif p.is_dir():
        emb_dirs = [d for d in (p / "img_emb", p / "text_emb") if d.is_dir()]
        if emb_dirs and (p / "metadata").is_dir():
            parts = []
            for f in sorted(emb_dirs[0].glob("*.npy"), key=lambda x: (len(x.name), x.name)):
                suffix = f.stem.rsplit("_", 1)[-1]
                meta = p / "metadata" / f"metadata_{suffix}.parquet"
                if not meta.exists():
                    raise InputError(f"{f} has no matching metadata file {meta}")
                keys, kind = _keys_from_table(_read(lambda meta=meta: pq.read_table(meta), str(meta)), str(meta))
                parts.append(_Part(str(f), (lambda f=f: _np_load(f, mmap_mode="r")), keys, kind))
            return parts
        files = sorted(str(x) for x in p.rglob("*") if x.suffix in (".npy", ".parquet") and not x.name.endswith((".ids.npy", "_ids.npy")))
    elif p.exists():
        files = [str(p)]
    else:
        raise NotFoundError(f"precomputed embeddings not found: {source}")
    parts = []
    for f in files:
        fp = Path(f)
        if f.endswith((".ids.npy", "_ids.npy")):
            continue
        if fp.suffix == ".npy":
            ids_path = _ids_for_npy(fp)
            if ids_path is None:
                raise InputError(f"{f} has no ids file beside it (expected {fp.stem}.ids.npy)")
            keys = _np_load(ids_path)
            if keys.dtype.kind not in "iu":
                raise InputError(f"{ids_path} must hold integer item ids, got dtype {keys.dtype}")
            if keys.ndim != 1:
                raise InputError(f"{ids_path} must be a 1-D array of item ids, got shape {keys.shape}")
            parts.append(_Part(f, (lambda f=f: _np_load(f, mmap_mode="r")), keys.astype(np.int64), "id"))
        elif fp.suffix == ".parquet":
            table = _read(lambda f=f: pq.read_table(f), f)
            if "embedding" not in table.column_names:
                raise InputError(f"{f} has columns {table.column_names}; expected an 'embedding' column")
            keys, kind = _keys_from_table(table, f)
            col = table.column("embedding")

            parts.append(_Part(f, (lambda col=col, f=f: _list_column(col, f)), keys, kind))
        else:
            raise InputError(f"{f}: expected .npy shards or .parquet files")
    if not parts:
        raise InputError(f"no embeddings found at {source} (expected .npy + .ids.npy, clip-retrieval folders, or .parquet)")
    return parts


def _ids_of_uris(cat: Any, uris: list[str], base: Path, where: str) -> np.ndarray:
    """Catalog ids of ``uris`` in one bulk lookup, spelled as ingest spells them: a relative path is relative to
    the embeddings file's folder (as in a manifest; else to the current folder), ``file://`` URIs are decoded
    and paths normalised. An unknown one raises InputError naming its row."""
    from .interop.imports import _resolve_uris
    from .media import is_local, local_path

    def beside(u: str) -> str:
        if is_local(u):
            pth = local_path(u)
            if not os.path.isabs(pth):
                return str(base / pth)
        return u

    first = _resolve_uris(cat, sorted({beside(u) for u in uris}))
    missing = sorted({u for u in uris if beside(u) not in first})
    second = _resolve_uris(cat, missing) if missing else {}
    ids = np.empty(len(uris), dtype=np.int64)
    for k, u in enumerate(uris):
        i = first.get(beside(u), second.get(u))
        if i is None:
            raise InputError(f"{where}: row {k} names {u!r}, which is not in the catalog; ingest it first")
        ids[k] = i
    return ids


def import_embeddings(
    ws: Workspace, source: str | os.PathLike[str], *, name: str = PRECOMPUTED, normalize: bool = True,
    shard_size: int = 65536, reset: bool = False,
) -> EmbedReport:
    """Import existing embeddings into the workspace under encoder ``name``; validate everything first.
    ``reset`` drops the store's embeddings (after validation) so that a new import may change the dim.
    ``name`` is ``precomputed`` or ``precomputed:NAME``: the store of an encoder assay runs holds only vectors
    that encoder made (its version and extras describe them)."""
    t0 = time.perf_counter()
    if not isinstance(name, str) or name.split(":", 1)[0] != PRECOMPUTED or name.endswith(":"):
        raise InputError(f"name must be 'precomputed' or 'precomputed:NAME' (imported embeddings never join the "
                         f"store of an encoder assay runs), got {name!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size <= 0:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    check_workspace(ws, "import_embeddings")
    parts = _discover(str(source))
    cat = ws.catalog
    known_ids = cat.ids(status=None)
    dim = None
    resolved: list[tuple[_Part, np.ndarray]] = []
    seen: set[int] = set()
    for part in parts:
        vecs = part.load_vectors()
        if not isinstance(vecs, np.ndarray) or vecs.ndim != 2:
            raise InputError(f"{part.path}: expected a 2-D array [n, dim], got shape {getattr(vecs, 'shape', None)}")
        if vecs.dtype.kind != "f":
            raise InputError(f"{part.path}: expected float16/float32 embeddings, got dtype {vecs.dtype}")
        if len(part.keys) != vecs.shape[0]:
            raise InputError(f"{part.path}: {vecs.shape[0]} vectors but {len(part.keys)} ids")
        if dim is None:
            dim = int(vecs.shape[1])
        elif vecs.shape[1] != dim:
            raise InputError(f"{part.path}: dim {vecs.shape[1]} differs from the first file's dim {dim}")
        for start in range(0, vecs.shape[0], 65536):
            block = np.asarray(vecs[start : start + 65536], dtype=np.float32)
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                raise InputError(f"{part.path}: row {start + int(np.argmax(bad))} holds NaN or inf")
            zero = np.linalg.norm(block.astype(np.float64), axis=1) == 0
            if zero.any():
                raise InputError(f"{part.path}: row {start + int(np.argmax(zero))} is all zeros (it has no direction)")
            if not normalize:
                norms = np.linalg.norm(block, axis=1)
                if np.abs(norms - 1).max() > 1e-2:
                    raise InputError(f"{part.path}: row {start + int(np.argmax(np.abs(norms - 1)))} is not unit-norm")
        if part.key_kind == "id":
            ids = part.keys
            unknown = ~np.isin(ids, known_ids)
            if unknown.any():
                raise InputError(
                    f"{part.path}: {int(unknown.sum())} ids are not in the catalog, e.g. {ids[unknown][:5].tolist()}"
                )
        else:
            ids = _ids_of_uris(cat, [str(u) for u in part.keys], Path(part.path).parent, part.path)
        dup = [int(i) for i in ids if int(i) in seen]
        if dup or len(np.unique(ids)) != len(ids):
            raise InputError(f"{part.path}: items appear more than once, e.g. {dup[:5] or 'within the file'}")
        seen.update(int(i) for i in ids)
        resolved.append((part, ids))
    assert dim is not None
    all_ids = np.concatenate([ids for _, ids in resolved]) if resolved else np.zeros(0, np.int64)
    broken = np.isin(all_ids, cat.ids(status="error"))
    if broken.any():
        log.warning("%d imported ids are items whose files failed at ingest (status error, e.g. ids %s): their "
                    "vectors are stored but they are never indexed, searched or mined; fix or re-ingest the files",
                    int(broken.sum()), all_ids[broken][:5].tolist())
    store = ws.vectors(name)
    report = EmbedReport(encoder=name, version=f"import:{Path(str(source)).name}", dim=dim)
    with store:
        if reset:
            store.reset()
        if store.exists():
            old = store.meta()
            if old["encoder"] != name:
                raise store._shared_folder(str(old["encoder"]), name)
            if int(old["dim"]) != dim:
                raise InputError(f"the store {name!r} holds dim {old['dim']}; the import has dim {dim}")
            report.version = old["version"]
        store.create(encoder=name, version=report.version, dim=dim)
        for part, ids in resolved:
            vecs = part.load_vectors()
            new = ~store.contains(ids)
            report.pending += int(new.sum())
            for start in range(0, len(ids), shard_size):
                sel = np.nonzero(new[start : start + shard_size])[0] + start
                if len(sel) == 0:
                    continue
                raw = np.asarray(vecs[sel], dtype=np.float64)  # float64: norms of huge values do not overflow
                block = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
                store.append(ids[sel], block)
                report.embedded += len(sel)
                report.shards += 1
        report.total_embedded = len(store)
    kept = len(all_ids) - report.pending
    if kept and not reset:
        log.warning("%d rows of the import are already stored for %s and were kept as they were (the import's "
                    "vectors for them are not used); import with --reset to replace them", kept, name)
    report.seconds = time.perf_counter() - t0
    return report
