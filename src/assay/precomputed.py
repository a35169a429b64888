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
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embed import EmbedReport
from .errors import InputError, NotFoundError
from .workspace import Workspace

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
    cols = table.column_names
    if "id" in cols:
        try:
            return np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=np.int64), "id"
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: column 'id' must hold integers: {exc}") from exc
    for c in ("uri", "image_path", "url"):
        if c in cols:
            return np.asarray(table.column(c).to_pylist(), dtype=object), "uri"
    raise InputError(f"{where} has columns {cols}; expected one of {list(_KEY_COLUMNS)} to match catalog items")


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

            def load(col=col, f=f):
                rows = col.to_pylist()
                widths = {len(r) if r is not None else -1 for r in rows}
                if len(widths) != 1 or -1 in widths:
                    raise InputError(f"{f}: every embedding must be a list of the same length, got lengths {sorted(widths)[:5]}")
                return _read(lambda: np.asarray(rows, dtype=np.float32), f"{f} column 'embedding'")

            parts.append(_Part(f, load, keys, kind))
        else:
            raise InputError(f"{f}: expected .npy shards or .parquet files")
    if not parts:
        raise InputError(f"no embeddings found at {source} (expected .npy + .ids.npy, clip-retrieval folders, or .parquet)")
    return parts


def import_embeddings(
    ws: Workspace, source: str | os.PathLike[str], *, name: str = PRECOMPUTED, normalize: bool = True,
    shard_size: int = 65536, reset: bool = False,
) -> EmbedReport:
    """Import existing embeddings into the workspace under encoder ``name``; validate everything first.
    ``reset`` drops the store's embeddings (after validation) so that a new import may change the dim."""
    t0 = time.perf_counter()
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
            ids = np.empty(len(part.keys), dtype=np.int64)
            for k, uri in enumerate(part.keys):
                item_id = cat.id_for_uri(str(uri))
                if item_id is None:
                    raise InputError(f"{part.path}: row {k} names {uri!r}, which is not in the catalog; ingest it first")
                ids[k] = item_id
        dup = [int(i) for i in ids if int(i) in seen]
        if dup or len(np.unique(ids)) != len(ids):
            raise InputError(f"{part.path}: items appear more than once, e.g. {dup[:5] or 'within the file'}")
        seen.update(int(i) for i in ids)
        resolved.append((part, ids))
    assert dim is not None
    store = ws.vectors(name)
    report = EmbedReport(encoder=name, version=f"import:{Path(str(source)).name}", dim=dim)
    with store:
        if reset:
            store.reset()
        if store.exists():
            old = store.meta()
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
    report.seconds = time.perf_counter() - t0
    return report
