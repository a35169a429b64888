"""Keyed on-disk caches for encoders: where they live, how files are fingerprinted, how they are written.

A cache entry is only ever keyed explicitly (weights fingerprint, preprocessing spec, exporter and versions)
and written atomically (a temporary file in the same folder, then :func:`os.replace`), so a crash or a
``kill -9`` mid-write leaves either the old state or the complete new file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "default_cache_dir",
    "dir_fingerprint",
    "file_fingerprint",
    "spec_hash",
]

# Files up to this size are hashed in full; bigger ones (multi-GB checkpoints) are fingerprinted by
# size, mtime and the sha256 of their first and last 4 MiB.
FULL_HASH_LIMIT = 256 * 1024 * 1024
_EDGE = 4 * 1024 * 1024
_CHUNK = 1024 * 1024

_fingerprint_memo: dict[tuple[str, int, int], str] = {}


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir`` when given, else ``$ASSAY_CACHE_DIR`` (read now, at call time),
    else ``~/.cache/assay``. Not created here."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ASSAY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "assay"


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 hex digest identifying a file's content.

    Files up to :data:`FULL_HASH_LIMIT` bytes are hashed in full. Larger files are identified by their
    size, modification time and the bytes of their first and last 4 MiB (hashing a multi-GB checkpoint on
    every load would cost seconds). Memoised per process on (path, size, mtime).
    """
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    hit = _fingerprint_memo.get(memo_key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if st.st_size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        else:
            h.update(f"size={st.st_size};mtime_ns={st.st_mtime_ns};".encode())
            h.update(f.read(_EDGE))
            f.seek(st.st_size - _EDGE)
            h.update(f.read(_EDGE))
    digest = h.hexdigest()
    _fingerprint_memo[memo_key] = digest
    return digest


def dir_fingerprint(folder: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 hex digest over the relative names and :func:`file_fingerprint` of the files in ``folder``
    (recursive, sorted, hidden files skipped), optionally only those whose name ends with one of
    ``suffixes``."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if suffixes is not None and not p.name.endswith(suffixes):
            continue
        h.update(rel.as_posix().encode())
        h.update(b"\0")
        h.update(file_fingerprint(p).encode())
        h.update(b"\n")
    return h.hexdigest()


def spec_hash(spec: dict) -> str:
    """sha256 hex digest of a JSON-serialisable spec (keys sorted, so order does not matter)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, stale_after_s: float = 24 * 3600) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on a clean exit move it onto ``target`` atomically.

    On an exception the temporary file is removed and ``target`` is untouched. Temporary files left by
    crashed writers (older than ``stale_after_s``) are swept up on the way in.
    """
    from .._atomic import atomic_output

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(target, stale_after_s)
    with atomic_output(target) as tmp:
        yield tmp


def _sweep_stale_tmp(target: Path, stale_after_s: float) -> None:
    now = time.time()
    for p in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > stale_after_s:
                p.unlink()
