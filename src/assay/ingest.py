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

import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .catalog import Catalog
from .errors import (
    AssayError, DecodeError, InputError, MissingDependencyError, NotFoundError, StorageUnavailableError, WorkspaceError,
)
from .media import DEFAULT_MAX_PIXELS, file_uri, is_local, local_path, probe_image, read_bytes

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_EXTENSIONS", "IngestReport", "ingest", "probe_item"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
     ".tga", ".ico", ".jp2", ".j2k", ".dib", ".pcx", ".sgi", ".im", ".jfif", ".avif", ".heic"}
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".tsv", ".jsonl", ".ndjson", ".parquet"})
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
    revived: int = 0  # items in error before whose file is now fine (status back to ok)
    still_failing: int = 0  # items in error before, probed again, still failing
    changed: int = 0  # ok items whose file's bytes changed since they were ingested (probed again)
    changed_ids: list[int] = field(default_factory=list)  # their ids: their embeddings are stale
    missing: int = 0  # ok items whose file is gone now (status error, "missing file")
    repeated_rows: int = 0  # rows of a source that name a URI an earlier row of the same run named
    differing: int = 0  # already present items whose row now holds other text or metadata (kept as stored)
    differing_samples: list[str] = field(default_factory=list)
    differing_by_row: int = 0  # of them, text rows keyed by their row number (a manifest without an id column)
    embeddings_dropped: int = 0  # stored embeddings of changed items removed (when a workspace is given)
    changed_in_concepts: dict[str, int] = field(default_factory=dict)  # concept -> changed items it labelled/uses
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
            "revived": self.revived,
            "still_failing": self.still_failing,
            "changed": self.changed,
            "missing": self.missing,
            "repeated_rows": self.repeated_rows,
            "differing": self.differing,
            "differing_samples": self.differing_samples[:10],
            "differing_by_row": self.differing_by_row,
            "embeddings_dropped": self.embeddings_dropped,
            "changed_in_concepts": self.changed_in_concepts,
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
    size: int | None = None  # the file's size when the listing gave it (object stores)
    label: str = ""  # where it came from, for messages ("manifest.csv row 3")


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
    """Lower-case extension; an http(s) URL's query string is not part of it (a file name's ``?`` is)."""
    if uri.startswith(("http://", "https://")):
        uri = uri.split("?", 1)[0].split("#", 1)[0]
    return PurePosixPath(uri).suffix.lower()


def _is_utf8(path: str) -> bool:
    """False for a file name that is not valid UTF-8: the catalog stores text, so such a file cannot be
    recorded (rename it)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk_local(root: Path, report: IngestReport, extensions: frozenset[str]) -> Iterator[_Candidate]:
    """Recursive sorted walk that follows symlinks but never enters the same directory twice."""
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    # Folders reached through a symlink are walked after every real folder, so that a file reachable both
    # ways is recorded under its real path, and the symlinked way is the one skipped.
    linked: list[Path] = []
    while stack or linked:
        d = stack.pop() if stack else linked.pop(0)
        try:
            st = d.stat()
        except OSError as exc:
            report.skipped_rows.append(f"{d}: {exc}")
            continue
        key = (st.st_dev, st.st_ino)
        try:
            is_workspace = d != root and (d / "assay.json").is_file() and (d / "vectors").is_dir()
        except OSError as exc:  # a folder that cannot be searched (no x permission): skipped with the reason
            report.skipped_rows.append(f"{d}: cannot list folder: {exc}")
            continue
        if is_workspace:
            report.skipped_rows.append(f"{d}: an assay workspace (its thumbnails and files are not corpus items)")
            continue
        if key in seen_dirs:
            log.info("folder already walked, skipped (a symlink to it, or a symlink loop): %s", d)
            report.skipped_rows.append(f"{d}: folder already walked (a symlink to it, or a symlink loop)")
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
            if not _is_utf8(e.path):
                shown = e.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                report.skipped_rows.append(f"{shown}: file name is not valid UTF-8 (rename it to ingest it)")
                report.skipped_files += 1
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
                is_file = not is_dir and e.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            if is_dir:
                (linked if e.is_symlink() else subdirs).append(Path(e.path))
            elif _suffix(e.name) in extensions:
                if is_file:
                    yield _Candidate(uri=file_uri(e.path))
                elif os.path.lexists(e.path) and not os.path.exists(e.path):
                    yield _Candidate(uri=file_uri(e.path))  # a broken symlink: recorded as "missing file"
                else:  # a FIFO, socket or device named like an image: opening it could block forever
                    report.skipped_rows.append(f"{e.path}: not a regular file")
                    report.skipped_files += 1
            else:
                report.skipped_files += 1
        stack.extend(reversed(subdirs))


def _remote_error(url: str, action: str, exc: BaseException) -> AssayError:
    """A one-line error for an object store that failed while ``action`` (listing, reading) ``url``."""
    from .media import _STORAGE_HINT, storage_failure

    reason = f"{type(exc).__name__}: {exc}".strip()
    if storage_failure(exc) is not None:
        return StorageUnavailableError(f"cannot {action} {url}: {reason}{_STORAGE_HINT}")
    return InputError(f"cannot {action} {url}: {reason}")


def _open_fsspec(url: str):
    """``(fs, path)`` of a folder or object URL, checked now (it exists; the store answers)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise MissingDependencyError(_fsspec_package(url), _fsspec_extra(url), url) from exc
    except ValueError as exc:
        raise InputError(f"cannot use {url}: {exc}") from None
    try:
        exists = fs.exists(path)
    except Exception as exc:  # unreachable endpoint, refused credentials, ...
        raise _remote_error(url, "list", exc) from exc
    if not exists:
        raise NotFoundError(f"source does not exist: {url}")
    return fs, path


def _fsspec_package(url: str) -> str:
    return {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs"}.get(url.split(":", 1)[0], url.split(":", 1)[0])


def _fsspec_extra(url: str) -> str | None:
    return "s3" if url.split(":", 1)[0] in ("s3", "s3a") else None


def _walk_fsspec(url: str, fs: Any, path: str, report: IngestReport, extensions: frozenset[str]) -> Iterator[_Candidate]:
    protocol = url.split("://", 1)[0]
    try:
        if fs.isfile(path):
            yield _Candidate(uri=url)
            return
        listing = fs.find(path, detail=True)
    except Exception as exc:
        raise _remote_error(url, "list", exc) from exc
    for p in sorted(listing):
        name = PurePosixPath(p).name
        if name.startswith("."):
            report.skipped_files += 1
        elif _suffix(p) in extensions:
            size = listing[p].get("size") if isinstance(listing[p], dict) else None
            yield _Candidate(uri=f"{protocol}://{p}" if protocol != "file" else file_uri(p),
                             size=int(size) if isinstance(size, (int, float)) else None)
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


def _jsonl_mixed_types(data: bytes, uri: str):
    """A JSONL manifest whose column changes type between lines (Arrow refuses it): read line by line, and
    keep such a column as text (as CSV columns are), so a label 1 and a label "yes" both arrive."""
    import pyarrow as pa

    from ._jsonutil import jsonl_objects

    rows = jsonl_objects(data.decode("utf-8", errors="strict"), f"manifest {uri}")
    cols: dict[str, set[type]] = {}
    for rec in rows:
        for k, v in rec.items():
            if v is not None:
                cols.setdefault(k, set()).add(type(v))
    mixed = {k for k, types in cols.items() if len(types - {bool}) > 1 or (bool in types and len(types) > 1)}
    for rec in rows:
        for k in mixed:
            v = rec.get(k)
            if v is not None and not isinstance(v, str):
                rec[k] = json.dumps(v) if isinstance(v, (dict, list, bool)) else str(v)
    if mixed:
        log.info("manifest %s: columns %s hold values of several types and are read as text", uri, sorted(mixed))
    keys = list(dict.fromkeys(k for rec in rows for k in rec))  # every line's columns, not the first line's
    try:
        return pa.table({k: pa.array([rec.get(k) for rec in rows]) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"cannot read manifest {uri}: {exc}") from None


def _in_one_block_if_needed(read: Callable[[Any], Any], options: Callable[..., Any], size: int) -> Any:
    """``read(None)``, Arrow's reader with its default blocks of 1 MB; where a value (a long document's text, a
    long JSON line) straddles two blocks, ``read`` again with the whole file in one block."""
    import pyarrow as pa

    try:
        return read(None)
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc):
            raise
        return read(options(block_size=size + 1))


def _check_utf8(data: bytes, uri: str, chunk: int = 1 << 24) -> None:
    """Refuse a text manifest that is not UTF-8, naming the line, before any row is read: Arrow's JSON reader
    lets bad bytes through to the rows, and a failure there would come after earlier rows were committed."""
    import codecs

    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"manifest {uri} is UTF-16 text; manifests must be UTF-8 text: re-save it as UTF-8")
    dec = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, max(len(data), 1), chunk):  # in pieces: no full decoded copy of a large manifest
        try:
            dec.decode(data[start : start + chunk], final=start + chunk >= len(data))
        except UnicodeDecodeError as exc:
            at = start + exc.start
            line = data.count(b"\n", 0, at) + 1
            raise InputError(f"manifest {uri} is not UTF-8 text (line {line}: byte {data[at:at + 1]!r} cannot be "
                             "decoded); manifests must be UTF-8 text: re-save it as UTF-8") from None


def _read_manifest_table(uri: str):
    import pyarrow as pa

    suffix = _suffix(uri)
    try:
        if is_local(uri):
            path = local_path(uri)
            if not os.path.exists(path):
                raise NotFoundError(f"manifest does not exist: {uri}")
            if os.path.isdir(path):
                raise InputError(f"manifest {uri} is a folder, not a file")
            with open(path, "rb") as f:
                data = f.read()
        else:
            import fsspec

            try:
                with fsspec.open(uri, "rb") as f:
                    data = f.read()
            except FileNotFoundError as exc:
                from .media import storage_failure

                if storage_failure(exc) == "endpoint":  # fsspec's http says "not found" for a host it cannot reach
                    cause = exc.__cause__ or exc.__context__
                    raise InputError(f"cannot read manifest {uri}: its host cannot be reached "
                                     f"({type(cause).__name__}: {cause})"[:500]) from None
                raise NotFoundError(f"manifest does not exist: {uri}") from None
            except ImportError as exc:
                raise MissingDependencyError(_fsspec_package(uri), _fsspec_extra(uri), uri) from exc
            except Exception as exc:
                raise _remote_error(uri, "read", exc) from exc
        if suffix in (".csv", ".tsv", ".jsonl", ".ndjson"):
            _check_utf8(data, uri)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            # CSV has no types: every column is read as text, so "0001" stays "0001" (a file name) and a
            # label "007" stays "007". The header is read first to name the columns.
            parse = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            try:
                names = pcsv.open_csv(pa.BufferReader(data), parse_options=parse).schema.names
            except pa.ArrowInvalid as exc:
                if "Empty CSV file" in str(exc):
                    names = []
                else:
                    raise
            types = {n: pa.string() for n in names}
            convert = pcsv.ConvertOptions(strings_can_be_null=False, column_types=types)
            return _in_one_block_if_needed(
                lambda opts: pcsv.read_csv(pa.BufferReader(data), parse_options=parse, convert_options=convert,
                                           read_options=opts), pcsv.ReadOptions, len(data))
        if suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pjson

            try:
                return _in_one_block_if_needed(
                    lambda opts: pjson.read_json(pa.BufferReader(data), read_options=opts), pjson.ReadOptions, len(data))
            except pa.ArrowInvalid as exc:
                if "changed from" in str(exc):
                    return _jsonl_mixed_types(data, uri)  # e.g. "label": 1 on one line and "yes" on another
                from ._jsonutil import jsonl_objects

                # Arrow counts rows from 0; the line-by-line reader names the line as an editor shows it
                jsonl_objects(data.decode("utf-8", errors="replace"), f"manifest {uri}")
                raise
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        msg = str(exc)
        if "UTF8" in msg or "utf8" in msg.lower():
            msg += " (manifests must be UTF-8 text: re-save it as UTF-8)"
        if "Multiple matches for FieldRef" in msg:
            msg = "a column name appears more than once; rename or drop the copies"
        raise InputError(f"cannot read manifest {uri}: {msg.strip().splitlines()[0]}") from exc


def _open_manifest(uri: str, report: IngestReport) -> Iterator[_Candidate]:
    """Read and check a manifest now (a bad one fails before anything is written); yield its rows later.

    A row is a **text item** when it has text and no image ``uri`` (an empty ``uri``, or one without an image
    extension, which then names the text item); otherwise an **image item**, its ``text`` (a caption) kept
    as metadata. A ``modality`` column (``image`` / ``text``) decides explicitly.
    """
    table = _read_manifest_table(uri)
    cols = table.column_names
    repeated = sorted({c for c in cols if cols.count(c) > 1})
    if repeated:
        raise InputError(f"manifest {uri} has the column(s) {repeated} more than once; rename or drop the copies")
    if "uri" not in cols and "text" not in cols:
        raise InputError(
            f"manifest {uri} has columns {cols}; expected a 'uri' column (or a 'text' column for text items)"
        )
    _check_column_types(uri, table)
    return _manifest_rows(uri, table, report)


def _check_column_types(uri: str, table: Any) -> None:
    """``uri`` must hold text (paths or URLs) and ``text`` text or plain values: a list, a struct or a
    number where a path belongs would become a junk item name, only found after ingest."""
    import pyarrow as pa

    def text_like(t: Any) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t) or pa.types.is_null(t) or pa.types.is_dictionary(t) and text_like(t.value_type)

    if "uri" in table.column_names and not text_like(table.schema.field("uri").type):
        raise InputError(f"manifest {uri}: the 'uri' column must hold text (file paths or URLs), got "
                         f"{table.schema.field('uri').type}")
    if "text" in table.column_names:
        t = table.schema.field("text").type
        if pa.types.is_nested(t):
            raise InputError(f"manifest {uri}: the 'text' column must hold text, got {t}")


def _manifest_rows(uri: str, table: Any, report: IngestReport) -> Iterator[_Candidate]:
    cols = table.column_names
    base = os.path.dirname(local_path(uri)) if is_local(uri) else uri.rsplit("/", 1)[0]
    has_text, has_modality = "text" in cols, "modality" in cols
    meta_cols = [c for c in cols if c not in ("uri", "text", "modality")]
    has_id = "id" in cols
    row_no = 0
    for batch in table.to_batches(max_chunksize=_CHUNK):
        for rec in batch.to_pylist():
            row_no += 1
            meta = {c: _json_safe(rec.get(c)) for c in meta_cols}
            raw_uri = rec.get("uri")
            text = rec.get("text")
            if isinstance(text, bytes):  # a binary column (Spark writes strings so): UTF-8 text
                text = text.decode("utf-8", errors="replace")
            elif text is not None and not isinstance(text, str):
                text = str(text)
            if isinstance(raw_uri, bytes):
                try:
                    raw_uri = raw_uri.decode("utf-8")
                except UnicodeDecodeError:
                    report.skipped_rows.append(f"{uri} row {row_no}: uri is binary and not UTF-8 text")
                    continue
            elif raw_uri is not None and not isinstance(raw_uri, str):
                raw_uri = str(raw_uri)
            raw_uri = raw_uri.strip() if raw_uri else ""
            modality = str(rec.get("modality") or "").strip().lower() if has_modality else ""
            if modality not in ("", "image", "text"):
                report.skipped_rows.append(f"{uri} row {row_no}: modality {modality!r} is not 'image' or 'text'")
                continue
            has_words = text is not None and bool(text.strip())
            if modality == "text" or (not modality and has_text and text is not None and (
                    not raw_uri or (has_words and _suffix(raw_uri) not in IMAGE_EXTENSIONS))):
                rid = rec.get("id") if has_id else None
                rid = str(rid).strip() if rid is not None else ""
                # a row's own id names it; a blank or null id does not (rows would merge), its row number does
                item_uri = raw_uri or f"{uri}#{'id=' + rid if rid else 'row=' + str(row_no)}"
                yield _Candidate(uri=item_uri, modality="text", text=text or "", meta=meta, label=f"{uri} row {row_no}")
                continue
            if has_text and text:
                meta.setdefault("text", text)  # an image's caption
            if not raw_uri:
                report.skipped_rows.append(f"{uri} row {row_no}: " + ("no uri and no text" if has_text else "empty uri"))
                continue
            if "://" in raw_uri and not raw_uri.startswith("file://"):
                item_uri = raw_uri
            else:
                p = local_path(raw_uri)
                if not is_local(uri):
                    item_uri = p if p.startswith("/") else f"{base}/{p}"
                else:
                    item_uri = file_uri(p if os.path.isabs(p) else os.path.join(base, p))
            yield _Candidate(uri=item_uri, meta=meta, label=f"{uri} row {row_no}")


def _discover(source: str, report: IngestReport, extensions: frozenset[str]) -> tuple[str, Iterator[_Candidate]]:
    """Return (kind, candidates) for one source, or raise InputError/NotFoundError for a bad source."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise InputError(f"a source must be a path or URL, got {source!r}")
    source = str(source)
    suffix = _suffix(source)
    if suffix in MANIFEST_EXTENSIONS:
        return "manifest", _open_manifest(source if "://" in source else file_uri(local_path(source)), report)
    if "://" in source and not source.startswith("file://"):
        fs, path = _open_fsspec(source)  # now: a bad URL fails before anything is written
        return "fsspec", _walk_fsspec(source, fs, path, report, extensions)
    if not _is_utf8(local_path(source)):
        raise InputError(f"source path is not valid UTF-8: {source!r} (rename it)")
    path = Path(local_path(source))
    if not path.exists():
        if path.is_symlink():
            raise NotFoundError(f"source is a broken symlink: {source}")
        raise NotFoundError(f"source does not exist: {source}")
    if path.is_dir():
        return "folder", _walk_local(path, report, extensions)
    if not path.is_file():
        raise InputError(f"source is not a regular file or folder (a FIFO, socket or device?): {source}")
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
    catalog: Catalog | Workspace,
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    workers: int | None = None,
    extensions: Iterable[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    retry_errors: bool = True,
    verify: bool = False,
) -> IngestReport:
    """Ingest every source into the catalog; return a report.

    ``catalog`` is a workspace's catalog, or the :class:`~assay.workspace.Workspace` itself (then the stored
    embeddings of items whose file changed are dropped too, so that ``embed`` embeds them again).
    ``sources`` is a list of folders, manifests or URLs (a single one is accepted too).

    Raises :class:`InputError` or :class:`NotFoundError` for a source that cannot be used at all (checked
    for every source before anything is written); per-item problems are recorded on the items instead.

    Ingesting a source again adds only what is new, and brings the catalog up to date with the files:

    * items with status ``error`` are probed again (unless ``retry_errors`` is false) and revived when their
      file is now fine (``report.revived``; ``report.still_failing`` counts the others);
    * an ok item whose local file is gone becomes ``error`` ("missing file"; ``report.missing``), also for
      files of a folder source that the walk no longer finds; it is revived when the file comes back;
    * an ok item whose file's size changed (local files, and object-store listings that give sizes), or any
      item with ``verify=True`` (every file read and hashed again), gets its new hash, size and dimensions
      (``report.changed``, ``report.changed_ids``): its embeddings are stale;
    * rows of a manifest whose text or metadata differ from what the catalog holds for the same item are
      counted (``report.differing``) and the catalog keeps what it had (labels already given stay tied to it).
    """
    from .workspace import Workspace

    if not isinstance(catalog, (Workspace, Catalog)):
        raise InputError(f"ingest needs a Workspace (or its catalog) first, got {type(catalog).__name__} {catalog!r}; "
                         "e.g. ingest(Workspace.open('my-corpus'), ['/data/photos'])")
    ws = catalog if isinstance(catalog, Workspace) else None
    cat: Catalog = ws.catalog if ws is not None else catalog  # type: ignore[assignment]
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if sources is None or not hasattr(sources, "__iter__"):
        raise InputError(f"sources must be a list of folders, manifests or URLs, got {sources!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        # (a bad limit would be recorded as an error on every new image)
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(extensions, str):
        extensions = [extensions]  # one extension, not its letters
    sources = list(sources)
    bad = [s for s in sources if not isinstance(s, (str, os.PathLike))]
    if bad:
        raise InputError(f"a source must be a path or URL (str or Path), got {bad[0]!r}")
    sources = [str(s) for s in sources]
    if not sources:
        raise InputError("ingest needs at least one source (a folder, manifest or URL), got none")
    if extensions is not None and (isinstance(extensions, (str, bytes))
                                   or not all(isinstance(e, str) and e.strip(".") for e in extensions)):
        raise InputError(f"extensions must be a list of file suffixes such as ['.jpg', '.png'], got {extensions!r}")
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in (extensions or IMAGE_EXTENSIONS))
    report = IngestReport()
    t0 = time.perf_counter()
    plans = [(s, *_discover(s, report, exts)) for s in sources]  # validates every source up front
    workers = workers or min(16, (os.cpu_count() or 2) * 4)

    def probe(c: _Candidate) -> dict[str, Any]:
        return probe_item(c, max_pixels)

    with ThreadPoolExecutor(max_workers=workers) as pool, cancel_on_error(pool):
        for source, kind, candidates in plans:
            report.sources.append(source)
            source_id = cat.add_source(source, kind)
            n_new = n_seen = conflicts = 0
            for chunk in _chunks(candidates, _CHUNK):
                n_seen += len(chunk)
                states = cat.item_states([c.uri for c in chunk])
                todo = []
                again: list[_Candidate] = []  # present items to probe again
                first: dict[str, _Candidate] = {}
                for c in chunk:
                    if c.uri in first:  # the same URI twice in a source: the first row is the item
                        report.repeated_rows += 1
                        other_text = (first[c.uri].text or "") != (c.text or "")
                        differs = other_text or first[c.uri].meta != c.meta
                        if differs and conflicts < 5:
                            what = "text" if other_text else "metadata"
                            log.warning("%s: %s appears more than once with different %s; the first row is kept "
                                        "(%s), the later one dropped (%s)", source, c.uri, what, first[c.uri].label,
                                        c.label)
                        conflicts += differs
                        continue
                    first[c.uri] = c
                    st = states.get(c.uri)
                    if st is None:
                        todo.append(c)
                        continue
                    report.already_present += 1
                    if kind == "manifest":
                        _compare_row(c, st, report)
                    if c.modality != "image" or st["modality"] != "image":
                        continue
                    if st["status"] == "error":
                        if retry_errors:
                            again.append(c)
                    elif verify or _file_changed(c, st):
                        again.append(c)
                if again:
                    _refresh(cat, list(pool.map(probe, again)), states, report)
                rows = list(pool.map(probe, todo))
                added = cat.add_items(rows, source_id=source_id)
                n_new += added
                # URIs a concurrent ingest added between our check and our insert were present, not new.
                report.already_present += len({r["uri"] for r in rows}) - added
                for r in rows:
                    if r["status"] == "error":
                        report.errors += 1
                        if len(report.error_samples) < 20:
                            report.error_samples.append((r["uri"], r.get("error", "")))
                if progress is not None:
                    progress(len(chunk))
            if kind == "folder":
                _mark_vanished(cat, file_uri(local_path(source)), report)
            cat.finish_source(source_id, n_new, n_seen)
            report.seen += n_seen
            report.new += n_new
            if n_seen == 0:
                log.warning("source %s holds no items", source)
    if report.differing:
        log.info("%d rows hold other text or metadata than the catalog has for the same item; the catalog "
                 "keeps what it had (e.g. %s)", report.differing, "; ".join(report.differing_samples[:3]))
    if report.changed_ids:
        report.changed_in_concepts = cat.concepts_using(report.changed_ids)
        if report.changed_in_concepts:
            log.info("changed items carry labels or are exemplars: %s", report.changed_in_concepts)
    if ws is not None:
        # The catalog logged every change with its new hash; dropping this workspace's stale embeddings now
        # (or, if a store is busy, at the next embed / index) cannot be lost between the two.
        try:
            report.embeddings_dropped = ws.apply_changes()
        except WorkspaceError as exc:
            log.warning("the embeddings of items that changed are dropped by the next `assay embed` or `assay "
                        "index` (%s)", exc)
    elif report.changed:
        log.info("%d items changed since they were ingested; `embed` and `index` drop their stale embeddings "
                 "(Workspace.apply_changes)", report.changed)
    report.exact_duplicates = cat.count()["exact_duplicates"]
    report.seconds = time.perf_counter() - t0
    return report


@contextlib.contextmanager
def cancel_on_error(pool: ThreadPoolExecutor) -> Iterator[None]:
    """On an error, drop the probes still queued instead of running them all before the error is raised."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _file_changed(c: _Candidate, st: dict[str, Any]) -> bool:
    """Whether an ok item's file looks different from when it was ingested, by one stat (or the listing's
    size): gone, or another size. A same-size edit needs ``verify``."""
    if c.size is not None:
        return st["size"] is not None and int(c.size) != int(st["size"])
    if not is_local(c.uri):
        return False  # a remote object named by a manifest: one request each; `verify` reads them
    try:
        size = os.stat(local_path(c.uri)).st_size
    except OSError:
        return True  # gone or unreadable: probing says which
    return st["size"] is not None and size != int(st["size"])


def _refresh(cat: Catalog, rows: list[dict[str, Any]], states: dict[str, dict[str, Any]], report: IngestReport) -> None:
    """Apply the new probes of present items: revive failed ones, mark vanished ones, update changed ones."""
    revive, refresh, gone = [], [], []
    for r in rows:
        st = states[r["uri"]]
        if st["status"] == "error":
            if r["status"] == "ok":
                revive.append(r)
            else:
                report.still_failing += 1
        elif r["status"] == "error" and str(r.get("error", "")).startswith(cat.READ_ERROR_PREFIXES):
            gone.append((st["id"], f"{r['error']} (it was fine when ingested)"))
        else:
            refresh.append(r)
    if revive:
        n = cat.revive_items(revive)
        report.revived += n
        report.still_failing += len(revive) - n
    if gone:
        report.missing += cat.mark_errors(gone)
    if refresh:
        ids = cat.refresh_items(refresh)
        report.changed += len(ids)
        report.changed_ids.extend(ids)


def _mark_vanished(cat: Catalog, root: str, report: IngestReport) -> None:
    """Ok items under a walked folder whose file no longer exists become ``error`` ("missing file")."""
    for chunk in cat.ok_files_under(root):
        gone = [(i, f"missing file: {u} (it was there when ingested)") for i, u in chunk
                if is_local(u) and not os.path.exists(local_path(u))]
        if gone:
            report.missing += cat.mark_errors(gone)


def _compare_row(c: _Candidate, st: dict[str, Any], report: IngestReport) -> None:
    """Count a manifest row whose text or metadata differ from the stored item's (the catalog keeps its own)."""
    what = []
    if c.modality == "text" and st["modality"] == "text" and (c.text or "") != (st["text"] or ""):
        what.append("text")
    if c.meta != st["meta"]:
        keys = sorted(k for k in set(c.meta) | set(st["meta"]) if c.meta.get(k) != st["meta"].get(k))
        what.append("metadata " + ", ".join(keys[:5]))
    if what:
        report.differing += 1
        report.differing_by_row += "#row=" in c.uri
        if len(report.differing_samples) < 10:
            report.differing_samples.append(f"{c.label or c.uri}: {' and '.join(what)} changed")


def manifest_rows_to_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write rows as a JSONL manifest (used by the demo and tests)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
