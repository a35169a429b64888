"""Discover items in sources and record them in the catalog.

A source is one of:

* a local folder, walked recursively in sorted order (symlinks followed, loops detected, hidden files and
  files without an image extension skipped and counted);
* a manifest: ``.csv``, ``.jsonl``/``.ndjson`` or ``.parquet`` with a ``uri`` column (relative URIs are
  resolved against the manifest's folder) and/or a ``text`` column (text items); every other column is kept
  as item metadata (``label``, ``split``, ...);
* an fsspec URL (``s3://bucket/prefix``, ``file:///data``, ...): a prefix is listed recursively, a single
  object is one item, a manifest URL is read as a manifest;
* a single image file.

For every new item the bytes are read once: sha256, byte size, and an image header probe (width, height,
format; no full decode). An item that cannot be read or is not an image is still recorded, with status
``error`` and the reason, and counted; the run goes on. URIs already in the catalog are skipped before any
byte is read, so ingesting the same source again adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .catalog import Catalog
from .errors import DecodeError, InputError, MissingDependencyError, NotFoundError
from .media import DEFAULT_MAX_PIXELS, file_uri, is_local, local_path, probe_image, read_bytes

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_EXTENSIONS", "IngestReport", "ingest", "probe_item"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
     ".tga", ".ico", ".jp2", ".j2k", ".dib", ".pcx", ".sgi", ".im", ".jfif", ".avif", ".heic"}
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl", ".ndjson", ".parquet"})
_CHUNK = 2000


@dataclass
class IngestReport:
    """What one ``ingest`` call did."""

    sources: list[str] = field(default_factory=list)
    seen: int = 0  # items found in the sources
    new: int = 0  # items added to the catalog
    already_present: int = 0  # items whose URI was in the catalog already
    errors: int = 0  # new items recorded with status "error"
    skipped_files: int = 0  # files in folders skipped: hidden or not an image extension
    skipped_rows: list[str] = field(default_factory=list)  # manifest rows that could not become items
    error_samples: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason), first few
    exact_duplicates: int = 0  # new items whose bytes equal an earlier item's
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.seen / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "seen": self.seen,
            "new": self.new,
            "already_present": self.already_present,
            "errors": self.errors,
            "exact_duplicates": self.exact_duplicates,
            "skipped_files": self.skipped_files,
            "skipped_rows": len(self.skipped_rows),
            "skipped_row_samples": self.skipped_rows[:10],
            "error_samples": [{"uri": u, "reason": r} for u, r in self.error_samples],
            "seconds": round(self.seconds, 3),
            "items_per_s": round(self.items_per_s, 1),
        }


@dataclass
class _Candidate:
    uri: str
    modality: str = "image"
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- probing
def probe_item(cand: _Candidate, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Turn a candidate into a catalog row: hash, size, header probe; errors become status ``error``."""
    row: dict[str, Any] = {"uri": cand.uri, "modality": cand.modality, "meta": cand.meta}
    if cand.modality == "text":
        data = (cand.text or "").encode("utf-8")
        row.update(text=cand.text, sha256=hashlib.sha256(data).hexdigest(), size=len(data), status="ok")
        if not cand.text or not cand.text.strip():
            row.update(status="error", error="empty text")
        return row
    try:
        data = read_bytes(cand.uri)
    except DecodeError as exc:
        row.update(status="error", error=str(exc))
        return row
    row.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    try:
        info = probe_image(data, max_pixels=max_pixels)
        row.update(width=info.width, height=info.height, format=info.format, status="ok")
    except DecodeError as exc:
        row.update(status="error", error=str(exc))
    return row


# ---------------------------------------------------------------------------------------------- discovery
def _suffix(uri: str) -> str:
    return PurePosixPath(uri.split("?", 1)[0]).suffix.lower()


def _walk_local(root: Path, report: IngestReport, extensions: frozenset[str]) -> Iterator[_Candidate]:
    """Recursive sorted walk that follows symlinks but never enters the same directory twice."""
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError as exc:
            report.skipped_rows.append(f"{d}: {exc}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            log.warning("symlink loop or repeated folder skipped: %s", d)
            report.skipped_rows.append(f"{d}: folder already visited (symlink loop)")
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            report.skipped_rows.append(f"{d}: cannot list folder: {exc}")
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                report.skipped_files += 1
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(Path(e.path))
            elif _suffix(e.name) in extensions:
                yield _Candidate(uri=file_uri(e.path))
            else:
                report.skipped_files += 1
        stack.extend(reversed(subdirs))


def _walk_fsspec(url: str, report: IngestReport, extensions: frozenset[str]) -> Iterator[_Candidate]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise MissingDependencyError("s3fs" if url.startswith("s3") else url.split(":")[0], "s3", url) from exc
    protocol = url.split("://", 1)[0]
    if not fs.exists(path):
        raise NotFoundError(f"source does not exist: {url}")
    if fs.isfile(path):
        yield _Candidate(uri=url)
        return
    for p in sorted(fs.find(path)):
        name = PurePosixPath(p).name
        if name.startswith("."):
            report.skipped_files += 1
        elif _suffix(p) in extensions:
            yield _Candidate(uri=f"{protocol}://{p}" if protocol != "file" else file_uri(p))
        else:
            report.skipped_files += 1


def _json_safe(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _read_manifest_table(uri: str):
    import pyarrow as pa

    suffix = _suffix(uri)
    try:
        if is_local(uri):
            src: Any = local_path(uri)
            if not os.path.exists(src):
                raise NotFoundError(f"manifest does not exist: {uri}")
        else:
            import fsspec

            with fsspec.open(uri, "rb") as f:
                src = pa.BufferReader(f.read())
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(src, convert_options=pcsv.ConvertOptions(strings_can_be_null=False))
        if suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pjson

            return pjson.read_json(src)
        import pyarrow.parquet as pq

        return pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read manifest {uri}: {exc}") from exc


def _walk_manifest(uri: str, report: IngestReport) -> Iterator[_Candidate]:
    table = _read_manifest_table(uri)
    cols = table.column_names
    if "uri" not in cols and "text" not in cols:
        raise InputError(
            f"manifest {uri} has columns {cols}; expected a 'uri' column (or a 'text' column for text items)"
        )
    base = os.path.dirname(local_path(uri)) if is_local(uri) else uri.rsplit("/", 1)[0]
    meta_cols = [c for c in cols if c not in ("uri", "text")]
    has_id = "id" in cols
    row_no = 0
    for batch in table.to_batches(max_chunksize=_CHUNK):
        for rec in batch.to_pylist():
            row_no += 1
            meta = {c: _json_safe(rec.get(c)) for c in meta_cols}
            raw_uri = rec.get("uri")
            text = rec.get("text")
            if text is not None and not isinstance(text, str):
                text = str(text)
            if raw_uri is not None and not isinstance(raw_uri, str):
                raw_uri = str(raw_uri)
            if "text" in cols and text is not None:
                item_uri = raw_uri or f"{uri}#{'id=' + str(rec['id']) if has_id else 'row=' + str(row_no)}"
                yield _Candidate(uri=item_uri, modality="text", text=text, meta=meta)
                continue
            if not raw_uri or not raw_uri.strip():
                report.skipped_rows.append(f"{uri} row {row_no}: empty uri")
                continue
            raw_uri = raw_uri.strip()
            if "://" in raw_uri and not raw_uri.startswith("file://"):
                item_uri = raw_uri
            else:
                p = local_path(raw_uri)
                if not is_local(uri):
                    item_uri = p if p.startswith("/") else f"{base}/{p}"
                else:
                    item_uri = file_uri(p if os.path.isabs(p) else os.path.join(base, p))
            yield _Candidate(uri=item_uri, meta=meta)


def _discover(source: str, report: IngestReport, extensions: frozenset[str]) -> tuple[str, Iterator[_Candidate]]:
    """Return (kind, candidates) for one source, or raise InputError/NotFoundError for a bad source."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise InputError(f"a source must be a path or URL, got {source!r}")
    source = str(source)
    suffix = _suffix(source)
    if suffix in MANIFEST_EXTENSIONS:
        return "manifest", _walk_manifest(source if "://" in source else str(Path(source).absolute()), report)
    if "://" in source and not source.startswith("file://"):
        return "fsspec", _walk_fsspec(source, report, extensions)
    path = Path(local_path(source))
    if not path.exists():
        if path.is_symlink():
            raise NotFoundError(f"source is a broken symlink: {source}")
        raise NotFoundError(f"source does not exist: {source}")
    if path.is_dir():
        return "folder", _walk_local(path, report, extensions)
    return "file", iter([_Candidate(uri=file_uri(path))])


def _chunks(it: Iterable[_Candidate], n: int) -> Iterator[list[_Candidate]]:
    buf: list[_Candidate] = []
    for c in it:
        buf.append(c)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


# ---------------------------------------------------------------------------------------------- entry point
def ingest(
    catalog: Catalog,
    sources: Iterable[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    extensions: Iterable[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest every source into ``catalog``; return a report.

    Raises :class:`InputError` or :class:`NotFoundError` for a source that cannot be used at all (checked
    for every source before anything is written); per-item problems are recorded on the items instead.
    """
    sources = [str(s) for s in sources]
    if not sources:
        raise InputError("ingest needs at least one source (a folder, manifest or URL), got none")
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in (extensions or IMAGE_EXTENSIONS))
    report = IngestReport()
    t0 = time.perf_counter()
    plans = [(s, *_discover(s, report, exts)) for s in sources]  # validates every source up front
    workers = workers or min(16, (os.cpu_count() or 2) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for source, kind, candidates in plans:
            report.sources.append(source)
            source_id = catalog.add_source(source, kind)
            n_new = n_seen = 0
            for chunk in _chunks(candidates, _CHUNK):
                n_seen += len(chunk)
                existing = catalog.existing_uris([c.uri for c in chunk])
                todo = [c for c in chunk if c.uri not in existing]
                report.already_present += len(chunk) - len(todo)
                rows = list(pool.map(lambda c: probe_item(c, max_pixels), todo))
                added = catalog.add_items(rows, source_id=source_id)
                n_new += added
                for r in rows:
                    if r["status"] == "error":
                        report.errors += 1
                        if len(report.error_samples) < 20:
                            report.error_samples.append((r["uri"], r.get("error", "")))
                if progress is not None:
                    progress(len(chunk))
            catalog.finish_source(source_id, n_new, n_seen)
            report.seen += n_seen
            report.new += n_new
            if n_seen == 0:
                log.warning("source %s holds no items", source)
    report.exact_duplicates = catalog.count()["exact_duplicates"]
    report.seconds = time.perf_counter() - t0
    return report


def manifest_rows_to_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write rows as a JSONL manifest (used by the demo and tests)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
