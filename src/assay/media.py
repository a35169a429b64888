"""Read and decode items: bytes through fsspec (plain ``open`` for local paths), images through Pillow.

Decoding is defensive: every way an image can be bad (empty, not an image, truncated, a decompression
bomb, too large, odd modes such as CMYK, 16-bit, palette with transparency, EXIF rotation) either yields
an RGB image or raises :class:`~assay.errors.DecodeError` with the reason, which callers record on the item.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Any

from .errors import DecodeError, InputError, MissingDependencyError, StorageUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REMOTE_RETRY_DELAYS",
    "ImageInfo",
    "decode_image",
    "decode_pixels",
    "is_local",
    "local_path",
    "probe_image",
    "read_bytes",
]

log = logging.getLogger(__name__)

#: Images with more pixels than this are refused (Pillow's own bomb limit is about 179 Mpx).
DEFAULT_MAX_PIXELS = 150_000_000


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI: a plain path as it is; a ``file://`` URI percent-decoded
    (``file:///a%20b.jpg`` -> ``/a b.jpg``), with an empty or ``localhost`` host (RFC 8089)."""
    if not uri.startswith("file://"):
        return uri
    from urllib.parse import unquote

    rest = uri[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    return unquote(rest)


#: Pauses between the attempts to read a remote object (``s3://`` ...) that failed with a server error or a
#: timeout: three attempts in all. Missing objects and denied access are not retried.
REMOTE_RETRY_DELAYS: tuple[float, ...] = (0.2, 0.8)


def read_bytes(uri: str) -> bytes:
    """All bytes of ``uri`` (a local path, ``file://`` or any fsspec URL such as ``s3://``).

    Remote reads that fail with anything but "not found", "permission denied" or a missing driver (a 5xx
    answer, a timeout, a reset connection) are retried after :data:`REMOTE_RETRY_DELAYS`; a read that still
    fails raises :class:`DecodeError` with the last reason, which callers record on the item. Endpoint,
    credentials and timeouts come from fsspec's configuration (``FSSPEC_S3_*`` / ``~/.config/fsspec``) and
    the usual AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...); see docs/scale.md.
    """
    if is_local(uri):
        return _read_once(uri)
    delays = REMOTE_RETRY_DELAYS
    for attempt in range(len(delays) + 1):
        try:
            return _read_once(uri)
        except (DecodeError, MissingDependencyError):
            raise
        except Exception as exc:  # a server error, a timeout, a dropped connection: worth another try
            reason = f"{type(exc).__name__}: {exc}".strip()
            if isinstance(exc, ValueError) and "Protocol not known" in str(exc):  # a typo in the URL: no retry
                raise DecodeError(f"cannot read {uri}: its URL scheme is not one fsspec knows ({exc})") from exc
            kind = storage_failure(exc)
            if kind == "credentials":  # no retry fixes a configuration
                raise StorageUnavailableError(f"cannot read {uri}: {reason}{_STORAGE_HINT}") from exc
            if attempt == len(delays):
                if kind == "endpoint" and uri.split("://", 1)[0].lower() in _PER_ITEM_HOST_SCHEMES:
                    # each row of a web URL list may name its own host: a dead one fails its items, not the run
                    raise DecodeError(f"cannot reach the host of {uri} after {attempt + 1} attempts: {reason}") from exc
                if kind == "endpoint":
                    raise StorageUnavailableError(
                        f"cannot reach the store of {uri} after {attempt + 1} attempts: {reason}{_STORAGE_HINT}"
                    ) from exc
                raise DecodeError(f"cannot read {uri} after {attempt + 1} attempts: {reason}") from exc
            log.warning("reading %s failed (%s); retry %d of %d", uri, reason, attempt + 1, len(delays))
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


#: URL schemes whose items each name their own host (web URL lists): an unreachable host is that item's
#: failure. For object stores (s3, gs, ...) one endpoint serves every item, so it stops the run instead.
_PER_ITEM_HOST_SCHEMES = frozenset({"http", "https", "ftp"})

_STORAGE_HINT = (" (check the endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..., see docs/scale.md;"
                 " no item was marked failed)")
_CREDENTIAL_ERRORS = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoRegionError",
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "InvalidToken",
    "DefaultCredentialsError", "ClientAuthenticationError",
})
_ENDPOINT_ERRORS = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError", "ClientConnectorError",
    "ServerDisconnectedError", "NameResolutionError", "gaierror",
})


def storage_failure(exc: BaseException) -> str | None:
    """``"credentials"`` or ``"endpoint"`` when ``exc`` (or what it wraps) says the whole store is unusable
    (credentials missing or refused; the endpoint unreachable), else None (a fault of this one object)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        names = {type(e).__name__, *(str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
                                     for _ in [0] if isinstance(getattr(e, "response", None), dict))}
        if names & _CREDENTIAL_ERRORS or "Unable to locate credentials" in str(e):
            return "credentials"
        if names & _ENDPOINT_ERRORS:
            return "endpoint"
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _read_once(uri: str) -> bytes:
    try:
        if is_local(uri):
            with open(local_path(uri), "rb") as f:
                return f.read()
        import fsspec

        # One GET per object (``cat_file``), not a HEAD then a GET: half the requests, and no size taken
        # from a listing cache when the HEAD fails.
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise DecodeError(f"missing file: {uri}") from exc
    except IsADirectoryError as exc:
        raise DecodeError(f"is a directory, not a file: {uri}") from exc
    except PermissionError as exc:
        if not is_local(uri) and storage_failure(exc) == "credentials":  # refused keys, not this object's rights
            raise StorageUnavailableError(f"cannot read {uri}: {type(exc).__name__}: {exc}{_STORAGE_HINT}") from exc
        raise DecodeError(f"permission denied: {uri}") from exc
    except ImportError as exc:  # an fsspec protocol whose package is missing, e.g. s3fs
        from .ingest import _fsspec_extra, _fsspec_package

        raise MissingDependencyError(_fsspec_package(uri), _fsspec_extra(uri), uri) from exc
    except OSError as exc:
        if not is_local(uri):
            raise  # remote: read_bytes decides whether to retry
        raise DecodeError(f"cannot read {uri}: {exc}") from exc


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str | None
    mode: str


_BOMB_WARNING_SILENCED = False


def _silence_bomb_warning(Image) -> None:
    """assay enforces its own pixel limit (``max_pixels``, :data:`DEFAULT_MAX_PIXELS`) after opening, so
    Pillow's warning above ~89 Mpx is noise. It is silenced once, process-wide: turning it into an error
    inside ``warnings.catch_warnings`` per call is not thread-safe (decoding runs in threads), and made the
    same large image fail or pass at random."""
    global _BOMB_WARNING_SILENCED
    if not _BOMB_WARNING_SILENCED:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _BOMB_WARNING_SILENCED = True


def _open(data: bytes, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DecodeError("empty file (0 bytes)")
    _silence_bomb_warning(Image)
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's hard limit (2x its
        # warning level, ~179 Mpx); the warning only where an application made warnings errors (python -W error)
        import re

        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m.group(1)) / 1e6:,.0f} Mpx" if m else "its size"
        raise DecodeError(
            f"decompression bomb refused: {size} is above the limit of {max_pixels / 1e6:.0f} Mpx"
        ) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not an image: Pillow cannot identify the format") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"cannot open image: {exc}") from exc
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeError(f"image has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise DecodeError(
            f"image is {w}x{h} = {w * h / 1e6:.0f} Mpx, above the limit of {max_pixels / 1e6:.0f} Mpx"
        )
    return im


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read the header only: size, format and mode. Raises :class:`DecodeError` when it is not an image."""
    im = _open(data, max_pixels)
    w, h = im.size
    # EXIF orientations 5-8 swap width and height once the image is turned upright.
    if _orientation(im) in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo(width=w, height=h, format=im.format, mode=im.mode)


def decode_image(data: bytes, *, draft_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode bytes to an upright RGB :class:`PIL.Image.Image`.

    ``draft_size`` lets JPEG decode at a reduced scale that is still at least that size (much faster for
    large photos; the scale is Pillow's :meth:`~PIL.Image.Image.draft` choice, 1/2, 1/4 or 1/8). Alpha is
    composited on white; 16-bit and float images are scaled to 8 bits.
    """
    return _decode_opened(_open(data, max_pixels), _check_draft(draft_size))


def _check_draft(draft_size: Any) -> tuple[int, int] | None:
    """``draft_size`` as two whole numbers >= 1 (or None); anything else is a caller's mistake."""
    if draft_size is None:
        return None
    try:
        w, h = draft_size
        ok = all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in (w, h))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"draft_size must be two whole numbers of pixels >= 1 (width, height), got {draft_size!r}")
    return int(w), int(h)


def _orientation(im) -> Any:
    """The EXIF orientation tag of an opened image as stored (1 when absent or unreadable: a broken EXIF block
    does not make a broken image)."""
    try:
        return im.getexif().get(0x0112, 1)
    except Exception:
        return 1


def _transpose_method(orientation: Any):
    """The Pillow transpose that turns an image with this EXIF orientation upright (that of
    ``ImageOps.exif_transpose``), or None: upright already, or a value that is no orientation."""
    from PIL import Image

    T = Image.Transpose
    try:
        return {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
                7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
    except TypeError:  # an unhashable value
        return None


def _decode_opened(im, draft_size: tuple[int, int] | None):
    from PIL import Image

    try:
        if draft_size is not None and im.format == "JPEG":
            im.draft("RGB", draft_size)
        im.load()
        # Turned upright here, not by ImageOps.exif_transpose: that also rewrites the EXIF block, and fails
        # (struct.error) on the malformed tags some cameras write, after turning the image.
        method = _transpose_method(_orientation(im))
        if method is not None:
            im = im.transpose(method)
        return _to_rgb(im)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower():
            raise DecodeError(f"truncated image: {msg}") from exc
        raise DecodeError(f"cannot decode image: {msg}") from exc


def decode_pixels(
    data: bytes, *, draft_size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode bytes to upright RGB pixels, uint8 ``[H, W, 3]``: the pixels of :func:`decode_image`.

    Baseline and progressive JPEGs in colour or grey (most photos) decode through simplejpeg, where it is
    installed: the same libjpeg-turbo decoder as Pillow's, writing straight into numpy, ~25 % faster and
    without Pillow's RGBX copy. The pixels are the same, with the same ``draft_size`` scale and EXIF
    orientation (tests compare them). Any other image, and any JPEG that simplejpeg refuses (even a mere
    warning, such as extra bytes before a marker), goes through :func:`decode_image`, so what decodes and
    which error a bad file gets are unchanged. The array is writable (the caller's to change) on either path.
    """
    import numpy as np

    draft_size = _check_draft(draft_size)
    im = _open(data, max_pixels)
    sj = _simplejpeg()
    if sj is not None and im.format == "JPEG" and im.mode in ("RGB", "L"):
        pixels = _jpeg_pixels(sj, data, im, draft_size)
        if pixels is not None:
            return pixels
    pixels = np.asarray(_decode_opened(im, draft_size))
    # Pillow's buffer is read-only; the caller gets a writable array on either path
    return pixels if pixels.flags.writeable else pixels.copy()


@functools.lru_cache(maxsize=1)
def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:  # optional: decode_pixels falls back on Pillow
        return None
    return simplejpeg


#: EXIF orientation -> the numpy steps that turn the stored pixels upright (Pillow's ``exif_transpose``).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _jpeg_pixels(sj, data: bytes, im, draft_size: tuple[int, int] | None):
    """simplejpeg's decode of an opened JPEG at Pillow's draft scale, upright; None to leave it to Pillow."""
    import numpy as np

    w, h = im.size
    s = 1
    if draft_size is not None:  # Pillow's choice (JpegImageFile.draft): the largest of 8, 4, 2, 1 that fits
        fit = min(w // draft_size[0], h // draft_size[1])
        s = next((c for c in (8, 4, 2) if fit >= c), 1)
    if s > 1 and min(w, h) < 8 * s:
        # Tiny images: another libjpeg-turbo scale (3/8 against 1/4, say) can give the same size, and
        # simplejpeg might take it. From 8 output pixels a side on, the sizes of neighbouring scales differ.
        return None
    out_w, out_h = (w + s - 1) // s, (h + s - 1) // s
    try:
        orientation = _orientation(im)
        if s == 1:
            a = sj.decode_jpeg(data, "RGB")
        else:  # the smallest libjpeg-turbo scale that keeps (out_w, out_h) is exactly 1/s at these sizes
            a = sj.decode_jpeg(data, "RGB", min_height=out_h, min_width=out_w)
    except Exception:  # truncated, corrupt or merely unusual: Pillow decides, and words any error
        return None
    if a.shape != (out_h, out_w, 3):
        return None
    try:
        turn = _ORIENT.get(orientation)  # the value as stored: "6" or 6.5 are no orientation, as for Pillow
    except TypeError:  # an unhashable value
        turn = None
    return a if turn is None else np.ascontiguousarray(turn(a))


def _to_rgb(im):
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
        return im.convert("RGB")
    if mode == "F":
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def file_uri(path: str | os.PathLike[str]) -> str:
    """The URI assay records for a local file: its absolute, normalised path (``.`` and ``..`` folded, so the
    same file reached by two spellings is one item; symlinks kept as given)."""
    return os.path.abspath(os.fspath(path))
