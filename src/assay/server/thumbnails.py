"""Item thumbnails, made server side with Pillow and cached on disk.

A thumbnail is addressed by item id only: the item's URI comes from the catalog, never from a request.
The cache key is the item id, its content hash (sha256 from ingest) and the size, so a re-ingested item
with other bytes gets a new thumbnail and a stale one is never served::

    <workspace>/cache/thumbs/<id % 256 as 2 hex digits>/<id>-<sha256[:16]>-<size>.jpg

Files are written to a temporary name and renamed, so concurrent requests for the same thumbnail never
see a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..errors import DecodeError, InputError, NotFoundError
from ..workspace import Workspace

__all__ = ["DEFAULT_THUMB_SIZE", "THUMB_SIZES", "thumbnail_path"]

#: The sizes (longest side, pixels) a client may ask for; anything else is refused.
THUMB_SIZES = (96, 160, 256, 384)
DEFAULT_THUMB_SIZE = 160
_QUALITY = 82


def _key(item_id: int, sha256: str | None, uri: str, size: int) -> str:
    digest = sha256 or hashlib.sha256(uri.encode("utf-8")).hexdigest()
    return f"{item_id}-{digest[:16]}-{size}.jpg"


def thumbnail_path(ws: Workspace, item_id: int, size: int = DEFAULT_THUMB_SIZE) -> Path:
    """The cached JPEG thumbnail of an image item, made on first use.

    Parameters
    ----------
    ws : Workspace
    item_id : int
        A catalog item id.
    size : int
        Longest side in pixels, one of :data:`THUMB_SIZES`.

    Raises
    ------
    NotFoundError
        No such item, the item is not an image, or its bytes cannot be read or decoded (the reason is given).
    InputError
        A size outside :data:`THUMB_SIZES`.
    """
    if size not in THUMB_SIZES:
        raise InputError(f"thumbnail size must be one of {list(THUMB_SIZES)}, got {size!r}")
    item = ws.catalog.get(int(item_id))  # NotFoundError for an unknown id
    if item.modality != "image":
        raise NotFoundError(f"item {item_id} is a {item.modality} item and has no thumbnail")
    folder = ws.cache_dir / "thumbs" / f"{item.id % 256:02x}"
    path = folder / _key(item.id, item.sha256, item.uri, size)
    if path.exists():
        return path
    from ..media import decode_image, read_bytes

    try:
        image = decode_image(read_bytes(item.uri), draft_size=(size, size))
    except DecodeError as exc:
        # The reason names the file, never its path on the server.
        msg = str(exc)
        for u in sorted({item.uri, item.uri.removeprefix("file://")}, key=len, reverse=True):
            msg = msg.replace(u, u.rstrip("/").rsplit("/", 1)[-1] or u)
        raise NotFoundError(f"item {item_id} has no viewable image: {msg}") from exc
    image.thumbnail((size, size))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, "JPEG", quality=_QUALITY, optimize=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
