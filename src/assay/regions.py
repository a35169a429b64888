"""Region embeddings: tiles of each image, embedded like items, searched with the items, mined per image.

A small object in a large photo (a stop sign at the edge of a street scene) is drowned in a whole-image
embedding. Embedding crops as well lets a query score an image by its *best region*.

The pieces
----------
* Geometry (pure): :class:`RegionSpec` (``grid:2,3`` = a 2x2 and a 3x3 grid of tiles, optionally
  overlapping) and :func:`tile_boxes`, the pixel boxes ``(x0, y0, x1, y1)`` of the tiles of a
  ``width x height`` image. The whole image is always a region too: it is the item's own vector.
* Ids (pure): a region id is ``REGION_BASE + item_id * MAX_SLOTS + slot`` (:func:`region_ids`,
  :func:`parent_ids`, :func:`slot_of`, :func:`is_region_id`). ``REGION_BASE = 2**62`` is far above any
  catalog id (item ids must be ``< 2**52``), so a region id never collides with an item id, the parent is
  arithmetic (no lookup in the hot path of a search) and the id of a region is the same in every run,
  which makes the embedding resumable the way :mod:`assay.embed` is.
* Storage: region vectors go to their own embedding store ``vectors/<encoder key>@regions`` (the store's
  version is the encoder's version plus the spec, so a changed spec asks for ``--reset``), and their
  boxes to the ``regions`` table (created beside the catalog's tables with ``checkfirst``). Every consumer
  that reads item vectors (dedup, selection, the kNN graph, the item index) never sees a region.
* :func:`embed_regions`: the resumable pipeline (decode in threads, tiles batched through the encoder,
  shard commits; undecodable images marked ``error``; progress callbacks).
* :func:`build_region_index` (called by :func:`assay.search.build_index`): one FAISS index holding the
  items *and* their regions (``index/<encoder key>/regions``), plus its ConSE text bridge for ImageNet
  classifier encoders. :class:`assay.search.Searcher` answers ``search_regions*`` queries on it.
* :func:`best_per_parent`: the pure step of a region query (max over an image and its regions).
* Mining: :func:`region_proba` (the proxy's image score = max over the image and its regions, with the
  triggering region), :func:`select_round_regions` (a round on top of :func:`assay.loop.select_round` and
  the strategies) and :class:`RegionMiner` (records the triggering box of each proposal).
* Labels: :func:`add_region_labels` stores a label for a region (``region_labels`` table); a positive
  region label also labels its image positive (the image does contain the concept), and the labelled
  region vectors join the proxy's training set (:func:`region_training_set`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from .embed import finite_rows, model_input, record_error
from .errors import (
    DecodeError, EmptyPoolError, InputError, NotFoundError, WorkspaceError, as_id_array, as_item_id, check_one_label_each,
)
from .loop import Miner
from .vectors import VectorStore, encoder_key
from .workspace import Workspace

__all__ = [
    "MAX_ITEM_ID",
    "MAX_SLOTS",
    "REGION_BASE",
    "RegionEmbedReport",
    "RegionMiner",
    "RegionSpec",
    "add_region_labels",
    "best_per_parent",
    "build_region_index",
    "embed_regions",
    "ensure_tables",
    "is_region_id",
    "parent_ids",
    "parse_region_spec",
    "region_boxes",
    "region_ids",
    "region_image_sizes",
    "region_labels",
    "record_region_labels",
    "region_labels_table",
    "region_proba",
    "region_proposals",
    "region_proposals_table",
    "region_spec_of",
    "region_store",
    "region_training_set",
    "regions_of",
    "regions_table",
    "select_round_regions",
    "slot_of",
    "tile_boxes",
    "square_crops",
]

log = logging.getLogger(__name__)

REGION_BASE = 1 << 62  # every region id is >= this; every catalog item id is < MAX_ITEM_ID
MAX_SLOTS = 1 << 10  # regions per image at most (sum of n*n over the grid scales)
MAX_ITEM_ID = 1 << 52  # REGION_BASE + MAX_ITEM_ID * MAX_SLOTS == 2**63 - ... fits int64
REGION_INDEX_DIR = "regions"
REGION_BRIDGE_DIR = "regions-conse"

# ---------------------------------------------------------------------------------------------- tables
_md = sa.MetaData()

regions_table = sa.Table(
    "regions",
    _md,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("spec", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("slot", sa.Integer, nullable=False),
    sa.Column("scale", sa.Integer, nullable=False),
    sa.Column("x0", sa.Integer, nullable=False),
    sa.Column("y0", sa.Integer, nullable=False),
    sa.Column("x1", sa.Integer, nullable=False),
    sa.Column("y1", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer),  # the decoded image's size, for drawing the box at any scale
    sa.Column("height", sa.Integer),
)

region_labels_table = sa.Table(
    "region_labels",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("concept_id", sa.Integer, nullable=False, index=True),
    sa.Column("region_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("item_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("value", sa.SmallInteger, nullable=False),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("annotator", sa.String(200)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The region spec the label was given under: a slot means another box under another spec.
    sa.Column("spec", sa.String(100)),
)

region_proposals_table = sa.Table(
    "region_proposals",
    _md,
    sa.Column("round_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("item_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("region_id", sa.BigInteger),  # None: the whole image scored best
    sa.Column("x0", sa.Integer),
    sa.Column("y0", sa.Integer),
    sa.Column("x1", sa.Integer),
    sa.Column("y1", sa.Integer),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("score", sa.Float),
)

_created: weakref.WeakSet[Any] = weakref.WeakSet()


def ensure_tables(ws: Workspace) -> None:
    """Create the region tables beside the catalog's (no-op when they exist)."""
    engine = ws.catalog.engine
    if engine not in _created:
        _md.create_all(engine, checkfirst=True)
        _created.add(engine)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# ---------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class RegionSpec:
    """Which regions each image gets besides the whole image.

    Parameters
    ----------
    scales : tuple of int
        Grid sizes: ``(2, 3)`` gives a 2x2 and a 3x3 grid of tiles (4 + 9 = 13 regions).
    overlap : float in [0, 0.9]
        Fraction of a tile shared with its neighbour along each axis (0: the tiles partition the image).
    square : bool
        Feed the encoder a square crop around each tile (side = the tile's longer side, moved inside the
        image where it fits) instead of the tile itself, so that an encoder's square centre crop does not
        cut off the sides of a wide or tall tile. The stored box is the tile either way.
    """

    scales: tuple[int, ...]
    overlap: float = 0.0
    square: bool = False

    def __post_init__(self) -> None:
        scales = tuple(self.scales)
        if not scales:
            raise InputError("a region spec needs at least one grid scale, got none")
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= int(s) <= 16:
                raise InputError(f"grid scales must be integers in 1..16, got {s!r}")
        if len(set(scales)) != len(scales):
            raise InputError(f"grid scales must be distinct, got {list(scales)}")
        if sum(int(s) ** 2 for s in scales) > MAX_SLOTS:
            raise InputError(f"at most {MAX_SLOTS} regions per image, the scales {list(scales)} give more")
        ov = float(self.overlap)
        if not (0.0 <= ov <= 0.9):
            raise InputError(f"overlap must be in [0, 0.9], got {self.overlap!r}")
        object.__setattr__(self, "scales", tuple(int(s) for s in scales))
        object.__setattr__(self, "overlap", ov)

    @property
    def n_regions(self) -> int:
        """Regions per image, the whole image not counted."""
        return sum(s * s for s in self.scales)

    @property
    def key(self) -> str:
        """Canonical text form, e.g. ``grid:2,3`` or ``grid:2,3:overlap=0.5``."""
        base = "grid:" + ",".join(str(s) for s in self.scales)
        if self.overlap != 0:
            base += f":overlap={self.overlap:g}"
        return base + (":square" if self.square else "")

    def slot_scales(self) -> np.ndarray:
        """The grid scale of each slot: ``[n_regions]`` int64."""
        return np.concatenate([np.full(s * s, s, dtype=np.int64) for s in self.scales])

    def __str__(self) -> str:
        return self.key


_SPEC_RE = re.compile(r"^grid:(\d+(?:,\d+)*)((?::(?:overlap=\d*\.?\d+|square))*)$")


_DENSE_RE = re.compile(r"^dense:(\d+(?:,\d+)*)((?::(?:window|stride|max)=\d+)*)$")


def parse_region_spec(text: str | RegionSpec | DenseSpec, *, overlap: float | None = None) -> RegionSpec | DenseSpec:
    """Parse ``grid:2,3`` / ``grid:2,3:overlap=0.5`` / ``grid:6:square`` (``overlap`` given here overrides the
    text's) or ``dense:896,1792[:window=4][:stride=2][:max=1024]`` (:class:`DenseSpec`)."""
    if isinstance(text, DenseSpec):
        if overlap:
            raise InputError("overlap applies to grid specs; a dense spec sets its stride instead")
        return text
    if isinstance(text, RegionSpec):
        return text if overlap is None else RegionSpec(text.scales, overlap, text.square)
    if not isinstance(text, str):
        raise InputError(f"a region spec must be a string like 'grid:2,3', got {text!r}")
    compact = text.strip().replace(" ", "")
    d = _DENSE_RE.match(compact)
    if d:
        if overlap:
            raise InputError("overlap applies to grid specs; a dense spec sets its stride instead")
        opts = dict(o.split("=") for o in d.group(2).split(":") if o)
        return DenseSpec(tuple(int(v) for v in d.group(1).split(",")), window=int(opts.get("window", 4)),
                         stride=int(opts.get("stride", 2)), max_regions=int(opts.get("max", MAX_SLOTS)))
    m = _SPEC_RE.match(compact)
    if not m:
        raise InputError("a region spec looks like 'grid:2,3', 'grid:2,3:overlap=0.5', 'grid:6:square' or "
                         f"'dense:896,1792:window=4:stride=2', got {text!r}")
    scales = tuple(int(s) for s in m.group(1).split(","))
    opts = [o for o in m.group(2).split(":") if o]  # overlap=F and square, in either order, each at most once
    given = [o.split("=", 1)[1] for o in opts if o.startswith("overlap=")]
    if len(given) > 1 or opts.count("square") > 1:
        raise InputError(f"the spec {text!r} repeats an option; give overlap= and square at most once each")
    text_ov = given[0] if given else None
    if overlap is not None and text_ov is not None and float(text_ov) != float(overlap):
        raise InputError(f"the spec {text!r} sets overlap={text_ov} and --region-overlap gives {overlap}; give one")
    ov = overlap if overlap is not None else float(text_ov) if text_ov is not None else 0.0
    return RegionSpec(scales, ov, "square" in opts)


@dataclass(frozen=True)
class DenseSpec:
    """Windows pooled from one high-resolution feature map per scale (R-MAC style regional pooling).

    For each shorter side in ``sides`` the whole image is resized (its shorter side to about that many pixels)
    and run once through the encoder's :meth:`feature_map`; every ``window x window`` block of cells, at a
    step of ``stride`` cells, is one region: the mean of its cells, the same pooling that makes the whole
    image's embedding, so a window embeds that part of the image as the network sees it in context. One pass
    gives hundreds of windows, each framing a small object far better than a grid tile can afford to.

    Parameters
    ----------
    sides : tuple of int
        Shorter sides of the passes, in pixels (64..4096). A larger side makes small objects larger for the
        network: an object of a fraction ``f`` of the image's side spans ``f * side`` pixels, and the
        network knows objects best at around 100-250 pixels.
    window : int
        Window side in cells (a cell is 32 input pixels for EfficientNet-Lite).
    stride : int
        Step between windows in cells (at most ``window``). It grows where an image would get more than
        ``max_regions`` windows (a panorama), so that every image fits.
    max_regions : int
        Regions per image at most (<= 1024, the id space of an image's regions; >= 4 per side), shared
        equally by the sides.
    """

    sides: tuple[int, ...]
    window: int = 4
    stride: int = 2
    max_regions: int = MAX_SLOTS
    overlap: float = 0.0  # the interface of RegionSpec (grids only)
    square: bool = False

    def __post_init__(self) -> None:
        sides = tuple(self.sides)
        if not sides:
            raise InputError("a dense region spec needs at least one side, got none")
        for v in sides:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 64 <= int(v) <= 4096:
                raise InputError(f"dense sides must be integers in 64..4096 (pixels), got {v!r}")
        if len(set(sides)) != len(sides):
            raise InputError(f"dense sides must be distinct, got {list(sides)}")
        for name, v, hi in (("window", self.window, 64), ("stride", self.stride, 64),
                            ("max_regions", self.max_regions, MAX_SLOTS)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= hi:
                raise InputError(f"{name} must be an integer in 1..{hi}, got {v!r}")
        if self.stride > self.window:
            raise InputError(f"stride ({self.stride}) must not exceed the window ({self.window}): cells would be skipped")
        if self.max_regions < 4 * len(sides):
            raise InputError(f"max_regions ({self.max_regions}) must allow 4 windows per side ({len(sides)} sides)")
        object.__setattr__(self, "sides", tuple(int(v) for v in sides))
        for name in ("window", "stride", "max_regions"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def scales(self) -> tuple[int, ...]:
        return self.sides

    @property
    def n_regions(self) -> int:
        """Slots per image at most (an image uses slots ``0 .. r - 1``, r depending on its shape)."""
        return self.max_regions

    @property
    def key(self) -> str:
        """Canonical text form, e.g. ``dense:896,1792:window=4:stride=2``."""
        base = f"dense:{','.join(str(v) for v in self.sides)}:window={self.window}:stride={self.stride}"
        return base + (f":max={self.max_regions}" if self.max_regions != MAX_SLOTS else "")

    def __str__(self) -> str:
        return self.key


#: A dense pass's longer side is at most this many times its ``side`` (a panorama is scaled down to fit),
#: which bounds the memory of one pass.
DENSE_MAX_ASPECT = 3
DENSE_MAX_UPSCALE = 8.0  # a dense pass enlarges an image at most this many times


def dense_input_size(width: int, height: int, side: int, cell: int = 32) -> tuple[int, int]:
    """``(W, H)`` of a ``width x height`` image resized for a dense pass: the shorter side scaled to about
    ``side`` (less where the longer side would exceed ``DENSE_MAX_ASPECT * side``, and never enlarged more
    than ``DENSE_MAX_UPSCALE`` times: a thumbnail at ``dense:4096`` would cost gigabytes and show nothing
    new), both sides rounded to a multiple of ``cell`` pixels (at least one cell)."""
    w, h = int(width), int(height)
    scale = min(int(side) / min(w, h), DENSE_MAX_ASPECT * int(side) / max(w, h), DENSE_MAX_UPSCALE)
    return (max(cell, int(round(w * scale / cell)) * cell), max(cell, int(round(h * scale / cell)) * cell))


def _window_starts(cells: int, window: int, stride: int) -> np.ndarray:
    """Start cells of windows along an axis: every ``stride`` cells, and one ending at the last cell."""
    last = cells - window
    starts = np.arange(0, last + 1, stride, dtype=np.int64)
    return starts if starts[-1] == last else np.append(starts, last)


def dense_layout(width: int, height: int, spec: DenseSpec, cell: int = 32) -> list[dict[str, Any]]:
    """The passes of a ``width x height`` image under ``spec``, in slot order: for each side
    ``{"side", "size": (W, H), "window", "xs", "ys"}`` (window start cells along each axis; a region per
    ``(y, x)`` pair, row by row). The window shrinks to the map where the map is smaller; the stride grows
    until the image's windows fit ``spec.max_regions`` (shared equally by the sides)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    n_sides = len(spec.sides)
    out = []
    for j, side in enumerate(spec.sides):
        budget = spec.max_regions // n_sides + (1 if j < spec.max_regions % n_sides else 0)
        size = dense_input_size(width, height, side, cell)
        gw, gh = size[0] // cell, size[1] // cell
        win = min(spec.window, gw, gh)

        def count(st: int) -> int:
            return len(_window_starts(gw, win, st)) * len(_window_starts(gh, win, st))

        stride = min(spec.stride, win)
        if count(stride) > budget:  # the smallest stride that fits (count falls as the stride grows)
            lo, hi = stride, max(gw, gh)
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if count(mid) <= budget else (mid + 1, hi)
            stride = lo
        xs, ys = _window_starts(gw, win, stride), _window_starts(gh, win, stride)
        out.append({"side": side, "size": size, "window": win, "xs": xs, "ys": ys})
    return out


def _dense_boxes(width: int, height: int, layout: list[dict[str, Any]], cell: int = 32) -> np.ndarray:
    """Pixel boxes ``[R, 5]`` (x0, y0, x1, y1, side) of a dense layout, in the image's own pixels."""
    rows = []
    for p in layout:
        sx, sy = width / p["size"][0], height / p["size"][1]
        gy, gx = np.meshgrid(p["ys"], p["xs"], indexing="ij")  # row-major
        cx0, cy0 = gx.ravel() * cell, gy.ravel() * cell
        cx1, cy1 = cx0 + p["window"] * cell, cy0 + p["window"] * cell
        x0 = np.clip(np.floor(cx0 * sx + 0.5), 0, width - 1)
        y0 = np.clip(np.floor(cy0 * sy + 0.5), 0, height - 1)
        x1 = np.clip(np.maximum(np.floor(cx1 * sx + 0.5), x0 + 1), 1, width)
        y1 = np.clip(np.maximum(np.floor(cy1 * sy + 0.5), y0 + 1), 1, height)
        rows.append(np.stack([x0, y0, x1, y1, np.full(len(x0), p["side"])], axis=1))
    return np.concatenate(rows).astype(np.int64)


def pool_windows(fmap: np.ndarray, window: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Means of ``window x window`` blocks of a feature map ``[C, h, w]`` starting at cells ``(ys x xs)``,
    row by row -> float32 ``[len(ys) * len(xs), C]`` (summed-area table: cost independent of the window)."""
    f = np.asarray(fmap, dtype=np.float32)
    c, h, w = f.shape
    sat = np.zeros((c, h + 1, w + 1), dtype=np.float64)  # float64: no cancellation over large maps
    np.cumsum(np.cumsum(f, axis=1, dtype=np.float64), axis=2, out=sat[:, 1:, 1:])
    y0, x0 = np.asarray(ys)[:, None], np.asarray(xs)[None, :]  # [ny, 1], [1, nx]
    y1, x1 = y0 + window, x0 + window
    sums = sat[:, y1, x1] - sat[:, y0, x1] - sat[:, y1, x0] + sat[:, y0, x0]  # [C, ny, nx]
    return (sums.reshape(c, -1).T / float(window * window)).astype(np.float32)


def _axis_bounds(length: int, n: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Start and end pixels ``[n]`` of ``n`` tiles along an axis of ``length`` pixels."""
    tile = length / (n - (n - 1) * overlap)  # tile length; the last tile ends exactly at `length`
    stride = tile * (1.0 - overlap)
    starts = np.arange(n, dtype=np.float64) * stride  # [n]
    lo = np.floor(starts + 0.5).astype(np.int64)
    hi = np.floor(starts + tile + 0.5).astype(np.int64)
    hi[-1] = length
    lo = np.clip(lo, 0, max(length - 1, 0))
    hi = np.clip(np.maximum(hi, lo + 1), 1, max(length, 1))
    return lo, hi


def square_crops(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Square crop boxes ``[n, 4]`` around tiles ``[n, 4]``: side = the tile's longer side, moved inside the
    image where it fits (clipped to the image where it does not)."""
    b = np.asarray(boxes, dtype=np.int64)[:, :4]
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # [n]
    out = np.empty_like(b)
    for lo_i, hi_i, length in ((0, 2, width), (1, 3, height)):
        centre2 = b[:, lo_i] + b[:, hi_i]  # twice the centre, to stay in integers
        lo = (centre2 - side) // 2
        lo = np.clip(lo, 0, np.maximum(length - side, 0))
        out[:, lo_i], out[:, hi_i] = lo, np.minimum(lo + side, length)
    return out


def tile_boxes(width: int, height: int, spec: RegionSpec | DenseSpec) -> np.ndarray:
    """Pixel boxes of the regions of a ``width x height`` image, in slot order.

    Returns
    -------
    boxes : int64 ``[R, 4]``
        ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height`` (end exclusive,
        Pillow's crop convention); scale by scale, row by row, left to right. ``R = spec.n_regions`` for a
        grid; for a dense spec it depends on the image's shape (at most ``spec.max_regions``).
    """
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(spec, DenseSpec):
        return _dense_boxes(int(width), int(height), dense_layout(int(width), int(height), spec))[:, :4]
    out = []
    for n in spec.scales:
        x0, x1 = _axis_bounds(int(width), n, spec.overlap)
        y0, y1 = _axis_bounds(int(height), n, spec.overlap)
        gy, gx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # [n, n] row-major
        out.append(np.stack([x0[gx.ravel()], y0[gy.ravel()], x1[gx.ravel()], y1[gy.ravel()]], axis=1))  # [n*n, 4]
    return np.concatenate(out).astype(np.int64)


# ---------------------------------------------------------------------------------------------- ids
def region_ids(item_ids: Any, slots: Any) -> np.ndarray:
    """Region ids of ``(item, slot)`` pairs (broadcast): ``REGION_BASE + item * MAX_SLOTS + slot``."""
    items = np.asarray(item_ids, dtype=np.int64)
    sl = np.asarray(slots, dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= MAX_ITEM_ID):
        raise InputError(f"item ids must be in [0, 2**52) to have regions, got {items.min()}..{items.max()}")
    if sl.size and (sl.min() < 0 or sl.max() >= MAX_SLOTS):
        raise InputError(f"region slots must be in [0, {MAX_SLOTS}), got {sl.min()}..{sl.max()}")
    return REGION_BASE + items * MAX_SLOTS + sl


def is_region_id(ids: Any) -> np.ndarray:
    """Boolean mask: which ids are region ids."""
    return np.asarray(ids, dtype=np.int64) >= REGION_BASE


def parent_ids(ids: Any) -> np.ndarray:
    """The item each id belongs to: a region's parent, an item itself; ``-1`` stays ``-1``."""
    a = np.asarray(ids, dtype=np.int64)
    return np.where(a >= REGION_BASE, (a - REGION_BASE) // MAX_SLOTS, a)


def slot_of(ids: Any) -> np.ndarray:
    """The slot of each region id; ``-1`` for item ids (the whole image)."""
    a = np.asarray(ids, dtype=np.int64)
    return np.where(a >= REGION_BASE, (a - REGION_BASE) % MAX_SLOTS, -1)


def best_per_parent(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold a ranked list of item and region hits into the top ``k`` images by their best region.

    Parameters
    ----------
    scores, ids : ``[q, m]``
        Search results, best first per row, ``-1`` padding (items and regions mixed).
    k : int

    Returns
    -------
    scores : float32 ``[q, k]`` the best score of each image (``-inf`` padding)
    parents : int64 ``[q, k]`` image ids (``-1`` padding)
    triggers : int64 ``[q, k]`` the id that gave the best score: a region id, or the item id itself
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if scores.ndim == 1:
        scores, ids = scores[None, :], ids[None, :]
    if scores.shape != ids.shape:
        raise InputError(f"scores and ids must have the same shape, got {scores.shape} and {ids.shape}")
    q = ids.shape[0]
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_p = np.full((q, k), -1, dtype=np.int64)
    out_t = np.full((q, k), -1, dtype=np.int64)
    par = parent_ids(ids)  # [q, m]
    for r in range(q):
        valid = ids[r] >= 0
        order = np.argsort(-np.where(valid, scores[r], -np.inf), kind="stable")  # best first, stable
        order = order[valid[order]]
        _, first = np.unique(par[r, order], return_index=True)  # first (= best) hit of each parent
        keep = order[np.sort(first)][:k]
        n = len(keep)
        out_s[r, :n], out_p[r, :n], out_t[r, :n] = scores[r, keep], par[r, keep], ids[r, keep]
    return out_s, out_p, out_t


# ---------------------------------------------------------------------------------------------- stores
def region_store(ws: Workspace, encoder: str | None = None) -> VectorStore:
    """The embedding store of ``encoder``'s region vectors (``vectors/<key>@regions``; never an encoder key)."""
    from .encoders.base import canonical_encoder_name

    return VectorStore(ws.root / "vectors" / (encoder_key(canonical_encoder_name(encoder or ws.default_encoder))
                                              + "@regions"))


def _store_version(enc_version: str, spec: RegionSpec) -> str:
    return f"{enc_version}+regions({spec.key})"


def region_spec_of(ws: Workspace, encoder: str | None = None) -> RegionSpec | None:
    """The spec the workspace's region store was made with, or None when it has no regions."""
    store = region_store(ws, encoder)
    if not store.exists():
        return None
    return parse_region_spec(store.meta()["version"].rsplit("+regions(", 1)[1][:-1])


@dataclass
class RegionEmbedReport:
    encoder: str
    spec: str
    max_regions_per_image: int  # a grid's exact count; a dense spec's cap (its count depends on the image's shape)
    pending: int = 0  # images whose regions needed embedding
    images: int = 0  # images whose regions this run committed
    regions: int = 0  # region rows committed by this run
    errors: int = 0
    error_samples: list[tuple[int, str]] = field(default_factory=list)
    shards: int = 0
    seconds: float = 0.0
    total_regions: int = 0

    @property
    def regions_per_image(self) -> float:
        """Mean regions per image committed by this run (the spec's cap when it committed none)."""
        return round(self.regions / self.images, 1) if self.images else float(self.max_regions_per_image)

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder, "spec": self.spec, "regions_per_image": self.regions_per_image,
            "max_regions_per_image": self.max_regions_per_image,
            "pending": self.pending, "images": self.images, "regions": self.regions, "errors": self.errors,
            "error_samples": [{"id": i, "reason": r} for i, r in self.error_samples], "shards": self.shards,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images / self.seconds, 2) if self.seconds > 0 else 0.0,
            "total_regions": self.total_regions,
        }


class _RegionWriter:
    """Buffers region rows, boxes and errors; commits them together a shard at a time (box rows first)."""

    def __init__(self, ws: Workspace, store: VectorStore, spec: RegionSpec, shard_size: int, report: RegionEmbedReport):
        self.ws, self.store, self.spec, self.shard_size, self.report = ws, store, spec, shard_size, report
        self._clear()

    def _clear(self) -> None:
        self.ids: list[np.ndarray] = []
        self.vecs: list[np.ndarray] = []
        self.extras: dict[str, list[np.ndarray]] = {}
        self.boxes: list[np.ndarray] = []
        self.errors: list[tuple[int, str]] = []
        self.items = 0
        self.n = 0

    def add(self, ids: np.ndarray, vecs: np.ndarray, extras: dict[str, np.ndarray], boxes: np.ndarray, n_items: int) -> None:
        finite = finite_rows(vecs, extras)  # [n]
        if not finite.all():
            log.warning("%d regions gave NaN or inf and were left out", int((~finite).sum()))
            ids, vecs, boxes = ids[finite], vecs[finite], boxes[finite]
            extras = {k: v[finite] for k, v in extras.items()}
        self.ids.append(ids)
        self.vecs.append(vecs)
        self.boxes.append(boxes)
        for name, arr in extras.items():
            self.extras.setdefault(name, []).append(arr)
        self.n += len(ids)
        self.items += n_items
        if self.n >= self.shard_size:
            self.commit()

    def error(self, item_id: int, reason: str, *, broken: bool = False) -> None:
        """Report a failed image; ``broken`` (it does not decode at all) also marks the item ``error``."""
        if broken:
            self.errors.append((item_id, reason))
        record_error(self.report, item_id, reason)

    def commit(self) -> None:
        if self.n:
            ids = np.concatenate(self.ids)
            boxes = np.concatenate(self.boxes)
            # Box rows first (idempotent: a crash before the shard marker leaves rows that the rerun replaces).
            rows = [
                {"id": int(i), "spec": self.spec.key, "item_id": int(p), "slot": int(s), "scale": int(sc),
                 "x0": int(b[0]), "y0": int(b[1]), "x1": int(b[2]), "y1": int(b[3]), "width": int(b[4]),
                 "height": int(b[5])}
                for i, p, s, sc, b in zip(ids, parent_ids(ids), slot_of(ids), boxes[:, 6], boxes)
            ]
            t = regions_table
            items = np.unique(parent_ids(ids)).tolist()
            with self.ws.catalog.engine.begin() as conn:
                # every earlier row of these images goes: a changed image can have fewer (dense) windows now
                for start in range(0, len(items), 900):
                    conn.execute(sa.delete(t).where(t.c.spec == self.spec.key, t.c.item_id.in_(items[start : start + 900])))
                for start in range(0, len(rows), 900):
                    conn.execute(sa.insert(t), rows[start : start + 900])
            self.store.append(ids, np.concatenate(self.vecs), {k: np.concatenate(v) for k, v in self.extras.items()})
            self.report.regions += len(ids)
            self.report.images += self.items
            self.report.shards += 1
        # Only images that do not decode are marked `error` (as `assay embed` marks them). A failure of the
        # regions alone (tiles, inference) is reported and leaves the item `ok`: its whole-image vector may be
        # fine, and an `error` status would take it out of the item index and the mining loop. A rerun retries.
        if self.errors:
            self.ws.catalog.mark_errors(self.errors)
        self._clear()


class RegionFailure(Exception):
    """An image that decodes but whose regions fail (crops, inference): reported, the item stays ``ok``."""


def _decode_regions(enc: Any, uri: str, spec: RegionSpec | DenseSpec) -> tuple[np.ndarray, Any] | DecodeError:
    """``(boxes [R, 7], inputs)`` of one image, or the reason it cannot be decoded.

    A box row is ``x0, y0, x1, y1, width, height, scale`` (the image's size repeated on every row; ``scale``
    is the grid size, or the dense pass's side). ``inputs`` is ``[R, *input_shape]`` for a grid (one crop
    per tile), and for a dense spec the list of ``(pixels [3, H, W], layout pass)`` of its passes."""
    from .media import decode_image, read_bytes

    try:
        image = decode_image(read_bytes(uri))
    except DecodeError as exc:
        return exc
    except Exception as exc:  # one bad image never stops the run; the reason is recorded on it
        return DecodeError(f"{type(exc).__name__}: {exc}")
    try:
        w, h = image.size
        if isinstance(spec, DenseSpec):
            cell = int(getattr(enc, "feature_stride", 32))
            layout = dense_layout(w, h, spec, cell)
            boxes5 = _dense_boxes(w, h, layout, cell)  # [R, 5]
            inputs: Any = [(enc.preprocess_dense(image, p["size"]), p) for p in layout]
            boxes, scale = boxes5[:, :4], boxes5[:, 4:5]
        else:
            boxes = tile_boxes(w, h, spec)  # [R, 4]
            crops = square_crops(boxes, w, h) if spec.square else boxes  # [R, 4]
            prep = model_input(enc)
            inputs = np.stack([prep(image.crop(tuple(int(v) for v in b))) for b in crops])
            scale = spec.slot_scales()[:, None]
        size = np.broadcast_to(np.asarray(image.size, dtype=np.int64), (len(boxes), 2))  # [R, 2]
        return np.concatenate([boxes, size, scale], axis=1), inputs
    except Exception as exc:  # the image is fine, its tiles are not (e.g. too small to crop): regions only
        return RegionFailure(f"its regions could not be made: {type(exc).__name__}: {exc}")


def dense_region_vectors(enc: Any, inputs: list[tuple[np.ndarray, dict[str, Any]]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Region vectors of one image's dense passes: ``(L2-normalised [R, dim], extras)`` in slot order.

    The encoder's ``dense_extra`` (efficientnet: ``"imagenet_logits"``) is computed for each window by its
    ``logits_from_features`` from the window's pooled features, as the whole image's logits are from its
    pooled features."""
    raw = np.concatenate([pool_windows(enc.feature_map(x[None])[0], p["window"], p["xs"], p["ys"])
                          for x, p in inputs])  # [R, dim] unnormalised window means
    extras = {}
    name = getattr(enc, "dense_extra", None)  # the extra its head computes from pooled features, if any
    if name in getattr(enc, "extras_spec", {}) and hasattr(enc, "logits_from_features"):
        extras[name] = enc.logits_from_features(raw)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return raw / np.maximum(norms, 1e-12), extras


def check_regions_can_embed(ws: Workspace, encoder: Any, spec: str | RegionSpec | DenseSpec, *, reset: bool = False) -> None:
    """Raise before any work when ``embed_regions(ws, encoder, spec=spec, reset=reset)`` would refuse: an
    encoder without images (or without a feature map, for dense specs), or stored regions of another spec or
    encoder version (without ``reset``). `assay embed --regions` calls it before its whole-image pass."""
    from .encoders.base import get_encoder

    spec = parse_region_spec(spec)
    enc = get_encoder(encoder or ws.default_encoder) if encoder is None or isinstance(encoder, str) else encoder
    if "image" not in enc.modalities:
        raise InputError(f"encoder {enc.name!r} does not embed images; regions need an image encoder")
    if isinstance(spec, DenseSpec) and not (hasattr(enc, "feature_map") and hasattr(enc, "preprocess_dense")
                                            and getattr(enc, "supports_dense", True)):
        raise InputError(f"dense regions pool a convolutional feature map into the encoder's embedding space, "
                         f"which encoder {enc.name!r} does not offer (levels > 1 adds block pools no window has); "
                         "use efficientnet-lite0 / efficientnet-lite2 without levels, or a grid spec")
    store = region_store(ws, enc.name)
    if not reset and store.exists():
        made = store.meta().get("version")
        if made != _store_version(enc.version, spec):
            have = region_spec_of(ws, enc.name)
            raise WorkspaceError(
                f"the stored regions of {enc.name!r} were made with {have.key if have else 'another spec'} "
                f"({made}), not {spec.key} with this encoder version; add --reset-regions to embed them afresh "
                "(then `assay index`)")


def embed_regions(
    ws: Workspace,
    encoder: Any = None,
    *,
    spec: str | RegionSpec = "grid:2,3",
    batch_size: int = 64,
    shard_size: int = 4096,
    workers: int | None = None,
    limit: int | None = None,
    reset: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RegionEmbedReport:
    """Embed the regions of every ok image whose regions are not stored yet (resumable).

    Parameters
    ----------
    ws : Workspace
    encoder : name or Encoder, optional
        Default: the workspace's encoder. The whole image is the item's own vector (``assay embed``).
    spec : str or RegionSpec
        ``grid:2,3`` (the default), ``grid:3,4:overlap=0.5``, ...
    batch_size : int
        Regions per inference call.
    shard_size : int
        Region rows per committed shard (an image's regions always share a shard).
    workers : int, optional
        Decode threads (default: the number of CPUs).
    limit : int, optional
        At most this many images.
    reset : bool
        Drop the stored regions first (needed when the spec or the encoder version changed).
    progress : callable, optional
        Called with the number of images finished.
    on_start : callable, optional
        Called once with the number of pending images.
    """
    from .embed import load_encoder

    spec = parse_region_spec(spec)
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InputError(f"limit must be a non-negative integer, got {limit!r}")
    t0 = time.perf_counter()
    check_regions_can_embed(ws, encoder, spec, reset=reset)
    enc = load_encoder(encoder or ws.default_encoder)
    ensure_tables(ws)
    ws.apply_changes()  # regions of items whose bytes changed since are dropped, so they are embedded again
    store = region_store(ws, enc.name)
    report = RegionEmbedReport(encoder=enc.name, spec=spec.key, max_regions_per_image=spec.n_regions)
    R = spec.n_regions
    with store:
        if reset:
            store.reset()
            t = regions_table
            with ws.catalog.engine.begin() as conn:
                conn.execute(sa.delete(t).where(t.c.spec == spec.key))
        def create() -> None:  # or check that the stored regions have this spec and encoder version
            store.create(encoder=f"{enc.name}@regions", version=_store_version(enc.version, spec), dim=enc.dim,
                         extras=dict(getattr(enc, "extras_spec", {})))

        if store.exists():
            create()
        ids = ws.catalog.ids(status="ok", modality="image")
        if len(ids) and store.exists():
            if ids.max() >= MAX_ITEM_ID:
                raise WorkspaceError(f"item id {int(ids.max())} is too large for region ids (must be < 2**52)")
            # An image's regions are committed together, slot 0 first: it is done when slot 0 is stored (a
            # dense image has a shape-dependent number of regions). Grids check every slot, as they always did.
            R_check = 1 if isinstance(spec, DenseSpec) else R
            done = store.contains(region_ids(ids[:, None], np.arange(R_check)[None, :]).ravel()).reshape(
                len(ids), R_check).any(axis=1)
            ids = ids[~done]
        if limit is not None:
            ids = ids[:limit]
        report.pending = len(ids)
        if on_start is not None:
            on_start(report.pending)
        if len(ids) and not store.exists():
            create()  # only now: a run with nothing to embed (--limit 0, no images yet) does not fix the spec
        writer = _RegionWriter(ws, store, spec, shard_size, report)
        try:
            if len(ids):
                _run_pipeline(ws, enc, ids, spec, writer, batch_size, workers, progress)
        finally:
            writer.commit()
        report.total_regions = len(store) if store.exists() else 0
    report.seconds = time.perf_counter() - t0
    return report


def _run_pipeline(ws, enc, ids, spec, writer, batch_size, workers, progress) -> None:
    workers = workers or max(2, os.cpu_count() or 2)
    R = spec.n_regions
    slots = np.arange(R, dtype=np.int64)
    window = 2 * workers if isinstance(spec, DenseSpec) else max(4, (batch_size * 3) // max(R, 1))  # decoded ahead
    pend_ids: list[np.ndarray] = []
    pend_arrays: list[np.ndarray] = []
    pend_boxes: list[np.ndarray] = []
    n_pend = 0

    def flush() -> None:
        nonlocal pend_ids, pend_arrays, pend_boxes, n_pend
        if not pend_ids:
            return
        _infer(enc, np.concatenate(pend_ids), np.concatenate(pend_arrays), np.concatenate(pend_boxes), writer, n_pend)
        if progress is not None:
            progress(n_pend)
        pend_ids, pend_arrays, pend_boxes, n_pend = [], [], [], 0

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assay-regions") as pool:
        inflight: deque[tuple[int, Future]] = deque()
        items = ws.catalog.iter_items(ids)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < window:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                inflight.append((item.id, pool.submit(_decode_regions, enc, item.uri, spec)))
            if not inflight:
                break
            item_id, fut = inflight.popleft()
            res = fut.result()
            if isinstance(res, (DecodeError, RegionFailure)):
                writer.error(item_id, str(res), broken=isinstance(res, DecodeError))
                if progress is not None:
                    progress(1)
                continue
            boxes, arrays = res
            if isinstance(spec, DenseSpec):  # one image at a time: its passes differ in size from any other's
                rids = region_ids(np.full(len(boxes), item_id), np.arange(len(boxes)))
                try:
                    vecs, extras = dense_region_vectors(enc, arrays)
                except Exception as exc:
                    writer.error(item_id, f"region inference failed: {type(exc).__name__}: {exc}")
                else:
                    writer.add(rids, vecs, extras, boxes, 1)
                if progress is not None:
                    progress(1)
                continue
            pend_ids.append(region_ids(np.full(R, item_id), slots))
            pend_arrays.append(arrays)
            pend_boxes.append(boxes)
            n_pend += 1
            if n_pend * R >= batch_size:
                flush()
        flush()


def _infer(enc, ids: np.ndarray, arrays: np.ndarray, boxes: np.ndarray, writer: _RegionWriter, n_items: int) -> None:
    try:
        out = enc.embed_batch(arrays)
    except Exception as exc:
        R = len(ids) // max(n_items, 1)
        if n_items <= 1:
            writer.error(int(parent_ids(ids[:1])[0]), f"region inference failed: {type(exc).__name__}: {exc}")
            return
        half = (n_items // 2) * R  # split on an image boundary to find the bad image
        _infer(enc, ids[:half], arrays[:half], boxes[:half], writer, n_items // 2)
        _infer(enc, ids[half:], arrays[half:], boxes[half:], writer, n_items - n_items // 2)
        return
    writer.add(ids, out.embeddings, dict(out.extras), boxes, n_items)


# ---------------------------------------------------------------------------------------------- boxes
def region_boxes(ws: Workspace, ids: Any, encoder: str | None = None) -> dict[int, tuple[int, int, int, int]]:
    """``{region id: (x0, y0, x1, y1)}`` for the region ids among ``ids`` (item ids are skipped)."""
    a = np.asarray(ids, dtype=np.int64).reshape(-1)
    a = np.unique(a[is_region_id(a)])
    if not len(a):
        return {}
    spec = region_spec_of(ws, encoder)
    if spec is None:
        return {}
    ensure_tables(ws)
    t = regions_table
    out: dict[int, tuple[int, int, int, int]] = {}
    with ws.catalog.engine.connect() as conn:
        for start in range(0, len(a), 900):
            chunk = [int(i) for i in a[start : start + 900]]
            for r in conn.execute(sa.select(t.c.id, t.c.x0, t.c.y0, t.c.x1, t.c.y1).where(t.c.spec == spec.key, t.c.id.in_(chunk))):
                out[int(r[0])] = (int(r[1]), int(r[2]), int(r[3]), int(r[4]))
    return out


def region_image_sizes(ws: Workspace, ids: Any, encoder: str | None = None) -> dict[int, tuple[int, int]]:
    """``{region id: (width, height)}`` of the decoded image each region was cut from."""
    a = np.asarray(ids, dtype=np.int64).reshape(-1)
    a = np.unique(a[is_region_id(a)])
    spec = region_spec_of(ws, encoder) if len(a) else None
    if spec is None:
        return {}
    ensure_tables(ws)
    t = regions_table
    out: dict[int, tuple[int, int]] = {}
    with ws.catalog.engine.connect() as conn:
        for start in range(0, len(a), 900):
            chunk = [int(i) for i in a[start : start + 900]]
            for r in conn.execute(sa.select(t.c.id, t.c.width, t.c.height).where(t.c.spec == spec.key, t.c.id.in_(chunk))):
                out[int(r[0])] = (int(r[1] or 0), int(r[2] or 0))
    return out


def regions_of(ws: Workspace, item_id: int, encoder: str | None = None) -> list[dict[str, Any]]:
    """The stored regions of one image: ``[{"id", "slot", "scale", "box"}]`` in slot order."""
    item_id = as_item_id(item_id, "item id")
    spec = region_spec_of(ws, encoder)
    if spec is None:
        return []
    ensure_tables(ws)
    t = regions_table
    with ws.catalog.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.spec == spec.key, t.c.item_id == int(item_id)).order_by(t.c.slot)).all()
    return [{"id": int(r.id), "slot": int(r.slot), "scale": int(r.scale), "box": [r.x0, r.y0, r.x1, r.y1],
             "image_size": [r.width, r.height]} for r in rows]


# ---------------------------------------------------------------------------------------------- index
def _ok_region_rows(ws: Workspace, rstore: VectorStore) -> np.ndarray:
    ids = rstore.ids()
    return ids[np.isin(parent_ids(ids), ws.catalog.ids(status="ok"))]


def build_region_index(ws: Workspace, encoder: str | None = None, *, kind: str = "auto", rebuild: bool = False,
                       rng: np.random.Generator | int = 0, bridge: bool = True) -> dict[str, Any]:
    """Build or update the joint index of items and regions (``index/<key>/regions``).

    It holds every ok item's vector (id = item id) and every region of an ok item (id = region id), so a
    single search ranks whole images and regions together. The item-only index stays as it is.
    """
    from .index import ConcatRows, VectorIndex

    name = encoder or ws.default_encoder
    istore, rstore = ws.vectors(name), region_store(ws, name)
    imeta, rmeta = istore.meta(), rstore.meta()
    if not rmeta["version"].startswith(imeta["version"] + "+regions("):
        raise WorkspaceError(
            f"the region vectors at {rstore.root} ({rmeta['version']}) were not made by the item encoder version "
            f"{imeta['version']}; re-embed them with `assay embed --regions SPEC --reset-regions`"
        )
    version = rmeta["version"]
    d = ws.index_dir(name) / REGION_INDEX_DIR
    report: dict[str, Any] = {"spec": version.rsplit("+regions(", 1)[1][:-1]}
    index = None
    if not rebuild and (d / "meta.json").exists():
        index = VectorIndex.load(d, mmap=False)
        if index.encoder_version != version or (kind != "auto" and index.kind != kind):
            index = None
    ok_items = ws.catalog.ids(status="ok")
    want_items = istore.ids()
    want_items = want_items[np.isin(want_items, ok_items)]
    want_regions = _ok_region_rows(ws, rstore)
    if index is None:
        parts_ids, parts = [], []
        for st in (istore, rstore):
            for i, v in st.iter_shards():
                if len(i):
                    parts_ids.append(i)
                    parts.append(v)
        if not parts:
            raise WorkspaceError("no item or region vectors to index; run `assay embed --regions SPEC` first")
        all_ids = np.concatenate(parts_ids)
        keep = np.isin(all_ids, want_items) | np.isin(all_ids, want_regions)
        rows = ConcatRows(parts)
        from .search import _Reduced

        index = VectorIndex(spec=kind, dim=int(imeta["dim"]), encoder=f"{name}@regions", encoder_version=version)
        index.build(all_ids[keep], _Reduced(rows, None, keep), rng=rng)
        report.update(action="built", added=int(index.ntotal), removed=0)
    else:
        want = np.concatenate([want_items, want_regions])
        have = index.ids
        stale = have[~np.isin(have, want)]
        removed = index.remove(stale, missing_ok=True) if len(stale) else 0
        new_items = want_items[~np.isin(want_items, have)]
        new_regions = want_regions[~np.isin(want_regions, have)]
        if len(new_items):
            index.add(new_items, istore.get(new_items))
        if len(new_regions):
            index.add(new_regions, rstore.get(new_regions))
        report.update(action="updated", added=int(len(new_items) + len(new_regions)), removed=int(removed))
    index.save(d)
    report["index"] = index.info()
    report["items"] = len(want_items)
    report["regions"] = len(want_regions)
    from .search import CLASS_SCORES_EXTRA

    from .search import imagenet_1k_scores

    if bridge and CLASS_SCORES_EXTRA in rmeta.get("extras", {}) and not imagenet_1k_scores(rmeta):
        report["text_bridge"] = {"skipped": f"the stored {CLASS_SCORES_EXTRA} are not the 1,000 ImageNet-1k classes"}
    elif bridge and CLASS_SCORES_EXTRA in rmeta.get("extras", {}) and CLASS_SCORES_EXTRA in imeta.get("extras", {}):
        from .errors import MissingDependencyError

        try:
            report["text_bridge"] = _build_region_bridge(ws, name, istore, rstore, want_items, want_regions, version, rebuild, rng)
        except MissingDependencyError as exc:
            report["text_bridge"] = {"skipped": str(exc)}
    return report


def in_sorted(sorted_ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_ids)`` for a sorted array, by binary search (no hashing of the large side)."""
    x = np.asarray(x)
    if not len(sorted_ids):
        return np.zeros(x.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, x), len(sorted_ids) - 1)
    return sorted_ids[pos] == x


def _build_region_bridge(ws, name, istore, rstore, want_items, want_regions, version, rebuild, rng) -> dict[str, Any]:
    from .index import VectorIndex
    from .search import CLASS_SCORES_EXTRA, TEXT_BRIDGE_ENCODER, _class_text_embeddings
    from .zeroshot import conse_image_vectors

    class_emb, text_version = _class_text_embeddings(ws)
    bversion = f"{version}+{text_version}"
    d = ws.index_dir(name) / REGION_BRIDGE_DIR
    index = None
    if not rebuild and (d / "meta.json").exists():
        index = VectorIndex.load(d, mmap=False)
        if index.encoder_version != bversion:
            index = None

    def vecs(store: VectorStore, ids: np.ndarray) -> np.ndarray:
        out = [conse_image_vectors(store.get(ids[s : s + 16384], extra=CLASS_SCORES_EXTRA, dtype=np.float16), class_emb)
               for s in range(0, len(ids), 16384)]
        return np.concatenate(out) if out else np.zeros((0, class_emb.shape[1]), np.float32)

    if index is None:
        ids = np.concatenate([want_items, want_regions])
        v = np.concatenate([vecs(istore, want_items), vecs(rstore, want_regions)])
        index = VectorIndex(spec="auto", dim=v.shape[1], encoder=f"{name}@regions+conse", encoder_version=bversion)
        index.build(ids, v, rng=rng)
        action = "built"
    else:
        want = np.concatenate([want_items, want_regions])
        have = index.ids
        stale = have[~np.isin(have, want)]
        if len(stale):
            index.remove(stale, missing_ok=True)
        ni = want_items[~np.isin(want_items, have)]
        nr = want_regions[~np.isin(want_regions, have)]
        if len(ni):
            index.add(ni, vecs(istore, ni))
        if len(nr):
            index.add(nr, vecs(rstore, nr))
        action = "updated"
    index.save(d)
    return {"action": action, "count": index.ntotal, "text_encoder": TEXT_BRIDGE_ENCODER, "kind": index.kind}


# ---------------------------------------------------------------------------------------------- labels
_SOURCES = ("human", "oracle", "import", "pseudo")


def add_region_labels(
    ws: Workspace, concept: str, region_ids_: Sequence[int] | np.ndarray, values: Sequence[int] | np.ndarray, *,
    source: str = "human", annotator: str | None = None, round_id: int | None = None, encoder: str | None = None,
) -> int:
    """Label regions for a concept; a positive region label also labels its image positive.

    Region labels are rows of the ``region_labels`` table (the catalog's labels table speaks item ids
    only). A negative region label says nothing about the rest of the image, so it stays region-only.
    Returns the number of region label rows written.
    """
    from .catalog import Catalog, _label_values

    ensure_tables(ws)
    c = ws.catalog.concept(concept)
    # everything is checked before the region rows are written: they and the image labels go in together
    if source not in _SOURCES:
        raise InputError(f"label source must be one of {_SOURCES}, got {source!r}")
    annotator = Catalog.named(annotator)
    Catalog.check_annotator(annotator)
    if round_id is not None:
        ws.catalog._check_concept_and_round(c.id, round_id)
    rids = as_id_array(region_ids_, "region ids")
    vals = np.asarray(_label_values(values), dtype=np.int64)
    if len(rids) != len(vals):
        raise InputError(f"{len(rids)} region ids but {len(vals)} label values")
    if not len(rids):
        return 0
    check_one_label_each(rids.tolist(), vals.tolist(), "region")
    if not is_region_id(rids).all():
        raise InputError(f"region ids are >= 2**62; got item ids {rids[~is_region_id(rids)][:5].tolist()}")
    store = region_store(ws, encoder)
    if not store.exists() or not store.contains(rids).all():
        missing = rids if not store.exists() else rids[~store.contains(rids)]
        raise NotFoundError(f"{len(missing)} region ids are not embedded regions, e.g. {missing[:5].tolist()}")
    parents = parent_ids(rids)
    now = _now()
    spec_key = region_spec_of(ws, encoder).key
    rows = [{"concept_id": c.id, "region_id": int(r), "item_id": int(p), "value": int(v), "source": source,
             "annotator": annotator, "created_at": now, "spec": spec_key} for r, p, v in zip(rids, parents, vals)]
    with ws.catalog.engine.begin() as conn:
        conn.execute(sa.insert(region_labels_table), rows)
    pos = np.unique(parents[vals == 1])
    if len(pos):
        ws.catalog.add_labels(c.id, pos, np.ones(len(pos), dtype=np.int8), source=source, annotator=annotator,
                              round_id=round_id)
    return len(rows)


def record_region_labels(
    ws: Workspace, concept_id: int, region_ids_: Sequence[int], values: Sequence[int], *, source: str = "human",
    annotator: str | None = None, encoder: str | None = None,
) -> int:
    """Write region label rows only (the caller has written the image labels, e.g. the labelling server).

    The caller validates; this checks only that the ids are region ids of stored region vectors.
    """
    rows = region_label_rows(ws, concept_id, region_ids_, values, source=source, annotator=annotator, encoder=encoder)
    if rows:
        with ws.catalog.engine.begin() as conn:
            conn.execute(sa.insert(region_labels_table), rows)
    return len(rows)


def region_label_rows(
    ws: Workspace, concept_id: int, region_ids_: Sequence[int], values: Sequence[int], *, source: str = "human",
    annotator: str | None = None, encoder: str | None = None,
) -> list[dict[str, Any]]:
    """The ``region_labels`` rows for these labels, for a caller that writes them in its own transaction
    (the labelling server writes them with the submission they belong to). Creates the table if needed."""
    ensure_tables(ws)
    rids = np.asarray(region_ids_, dtype=np.int64).reshape(-1)
    if not len(rids):
        return []
    if not is_region_id(rids).all():
        raise InputError(f"region ids are >= 2**62; got {rids[~is_region_id(rids)][:5].tolist()}")
    now = _now()
    spec = region_spec_of(ws, encoder)
    spec_key = None if spec is None else spec.key
    return [{"concept_id": int(concept_id), "region_id": int(r), "item_id": int(p), "value": int(v), "source": source,
             "annotator": annotator, "created_at": now, "spec": spec_key}
            for r, p, v in zip(rids, parent_ids(rids), values)]


def region_labels(ws: Workspace, concept: str, encoder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The current label of each labelled region (the latest row wins): ``(region ids [L], values [L])``.

    Only labels given under the workspace's current region spec count: after ``embed --regions SPEC --reset``
    with another spec a slot is another box, so older region labels are kept (never deleted) but not used.
    """
    ensure_tables(ws)
    c = ws.catalog.concept(concept)
    t = region_labels_table
    spec = region_spec_of(ws, encoder)
    if spec is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
    latest: dict[int, int] = {}
    q = sa.select(t.c.region_id, t.c.value).where(t.c.concept_id == c.id, t.c.spec == spec.key).order_by(t.c.id)
    with ws.catalog.engine.connect() as conn:
        for r in conn.execute(q):
            latest[int(r[0])] = int(r[1])
    ids = np.asarray(sorted(latest), dtype=np.int64)
    return ids, np.asarray([latest[i] for i in ids.tolist()], dtype=np.int8)


def region_training_set(ws: Workspace, concept: str, encoder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Region vectors and labels to add to a proxy's training set: ``([L, dim] float32, [L] int8)``."""
    rids, vals = region_labels(ws, concept, encoder)
    store = region_store(ws, encoder)
    if not len(rids) or not store.exists():
        return np.zeros((0, store.dim if store.exists() else 0), np.float32), np.zeros(0, np.int8)
    keep = store.contains(rids)
    return store.get(rids[keep]), vals[keep]


# ---------------------------------------------------------------------------------------------- mining
def _check_batch(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise InputError(f"batch must be a positive integer, got {n!r}")
    return int(n)


REGION_PROBA_BLOCK = 1 << 18  # region ids looked up per block in region_proba


def region_proba(model: Any, item_ids: np.ndarray, item_vectors: Callable[[np.ndarray], np.ndarray],
                 region_vectors: Callable[[np.ndarray], np.ndarray], n_regions: int,
                 has_regions: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The proxy's image score = max of P(positive) over the image and its regions.

    Parameters
    ----------
    model : fitted proxy with ``predict_proba(X [m, dim]) -> [m]``
    item_ids : int64 ``[m]``
    item_vectors, region_vectors : ids -> ``[., dim]``
    n_regions : int
        Regions per image (slots ``0 .. n_regions - 1``).
    has_regions : ids -> bool ``[.]``, optional
        Which region ids are stored (images without regions are scored on the whole image only).

    Returns
    -------
    proba : float64 ``[m]`` the best probability per image
    trigger : int64 ``[m]`` the id that gave it (a region id, or the item id for the whole image)
    """
    item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    m = len(item_ids)
    best = np.asarray(model.predict_proba(np.asarray(item_vectors(item_ids), dtype=np.float32)), dtype=np.float64)  # [m]
    trig = item_ids.copy()
    if n_regions and m:
        step = max(1, REGION_PROBA_BLOCK // n_regions)  # images per block: bounds memory for dense specs' 1,024 slots
        slots = np.arange(n_regions)[None, :]
        for s in range(0, m, step):
            blk = item_ids[s : s + step]
            b = len(blk)
            rids = region_ids(blk[:, None], slots).ravel()  # [b * R]
            ok = has_regions(rids) if has_regions is not None else np.ones(len(rids), bool)
            if not ok.any():
                continue
            p = np.full(len(rids), -np.inf)
            p[ok] = model.predict_proba(np.asarray(region_vectors(rids[ok]), dtype=np.float32))
            p = p.reshape(b, n_regions)  # [b, R]
            j = np.argmax(p, axis=1)  # [b]
            pr = p[np.arange(b), j]
            better = pr > best[s : s + step]
            best[s : s + step] = np.where(better, pr, best[s : s + step])
            trig[s : s + step] = np.where(better, rids.reshape(b, n_regions)[np.arange(b), j], trig[s : s + step])
    return best, trig


def select_round_regions(
    *, strategy: Any, n: int, rng: np.random.Generator, corpus_ids: np.ndarray,
    vectors: Callable[[np.ndarray], np.ndarray], region_vectors: Callable[[np.ndarray], np.ndarray],
    n_regions: int, labelled_ids: np.ndarray, labels: np.ndarray,
    has_regions: Callable[[np.ndarray], np.ndarray] | None = None,
    extra_X: np.ndarray | None = None, extra_y: np.ndarray | None = None,
    neighbors: Any = None, excluded_ids: np.ndarray | None = None, query_vectors: np.ndarray | None = None,
    seed_hits: Sequence[np.ndarray] = (), proxy: str = "logistic", random_fraction: float = 0.2, seed: int = 0,
) -> tuple[Any, np.ndarray]:
    """A mining round per image with region evidence: ``(RoundOutcome, trigger ids [n])``.

    The proxy is trained on the labelled images (plus ``extra_X``/``extra_y``: labelled regions) and the
    strategy sees, for every candidate image, the max of P(positive) over the image and its regions. A
    cold start (a class missing) is :func:`assay.loop.select_round`'s, with region-search seed hits.
    """
    from .learn import ensemble_proba_fn
    from .loop import RoundOutcome, make_proxy, select_round
    from .select.strategies import SelectionContext, get_strategy

    n = _check_batch(n)
    labels = np.asarray(labels, dtype=np.int8)
    labelled_ids = np.asarray(labelled_ids, dtype=np.int64)
    ex_y = np.zeros(0, np.int8) if extra_y is None else np.asarray(extra_y, dtype=np.int8)
    n_pos = int((labels == 1).sum() + (ex_y == 1).sum())
    n_neg = int((labels == 0).sum() + (ex_y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        out = select_round(strategy=strategy, n=n, rng=rng, corpus_ids=corpus_ids, vectors=vectors,
                           labelled_ids=labelled_ids, labels=labels, neighbors=neighbors, excluded_ids=excluded_ids,
                           query_vectors=query_vectors, seed_hits=seed_hits, proxy=proxy,
                           random_fraction=random_fraction, seed=seed)
        return out, np.full(len(out.ids), -1, dtype=np.int64)
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    X = np.asarray(vectors(labelled_ids), dtype=np.float32)  # [L, dim]
    Xt, yt = X, labels
    if extra_X is not None and len(ex_y):
        Xt = np.concatenate([X, np.asarray(extra_X, dtype=np.float32)])  # [L + L_r, dim]
        yt = np.concatenate([labels, ex_y])
    model = make_proxy(proxy, seed=seed).fit(Xt, yt)
    ensemble = None
    if strat.name.rpartition(":")[2] == "disagreement":
        from .learn import BootstrapEnsemble

        ensemble = model if isinstance(model, BootstrapEnsemble) else BootstrapEnsemble(random_state=seed).fit(Xt, yt)
    timings["train"] = time.perf_counter() - t0

    def proba(ids: np.ndarray) -> np.ndarray:
        return region_proba(model, ids, vectors, region_vectors, n_regions, has_regions)[0]

    t0 = time.perf_counter()
    excluded = np.asarray(excluded_ids if excluded_ids is not None else [], dtype=np.int64)
    corpus_ids = np.asarray(corpus_ids, dtype=np.int64)
    pool = None
    if not strat.name.startswith("seals:"):
        pool = corpus_ids[~np.isin(corpus_ids, labelled_ids)]
        pool = pool[~np.isin(pool, excluded)]
        if len(pool) == 0:
            raise EmptyPoolError("every candidate item is labelled or excluded; there is nothing left to propose")
    ctx = SelectionContext(
        pool_ids=pool, vectors=vectors, proba=proba,
        ensemble_proba=ensemble_proba_fn(ensemble, vectors) if ensemble is not None else None,
        labelled_ids=labelled_ids, labelled_labels=np.asarray(labels), labelled_vectors=X,
        query_vectors=query_vectors, neighbors=neighbors,
        non_representative=excluded if len(excluded) else None, corpus_size=len(corpus_ids),
    )
    timings["pool"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = strat.select(ctx, n, rng)
    timings["select"] = time.perf_counter() - t0
    pre, trig = region_proba(model, sel.ids, vectors, region_vectors, n_regions, has_regions) if len(sel.ids) else (
        np.zeros(0), np.zeros(0, np.int64))
    out = RoundOutcome(
        ids=sel.ids, scores=np.asarray(sel.scores, dtype=np.float64), prelabels=np.asarray(pre, dtype=np.float64),
        reasons=["strategy"] * len(sel.ids), strategy=f"regions({strat.name})", cold_start=False,
        pool_size=int(sel.pool_size), scanned=int(sel.scanned), corpus_size=len(corpus_ids),
        proxy={"kind": proxy, "n_positive": n_pos, "n_negative": n_neg, "region_labels": len(ex_y),
               "calibration": getattr(model, "calibration_", None)},
        seconds=timings, model=model,
    )
    return out, np.asarray(trig, dtype=np.int64)


class RegionMiner(Miner):
    """Mining rounds per image with region evidence; each proposal records the box that triggered it.

    Works on a workspace embedded with ``assay embed --regions``. Labels given to regions
    (:func:`add_region_labels`) train the proxy beside the image labels.
    """

    def propose(  # type: ignore[override]
        self, *, strategy: str = "seals:entropy", batch: int = 50, seed: int | None = None, proxy: str = "logistic",
        random_fraction: float = 0.2, seals_k: int = 100, seals_k_positive: int | None = None,
        keep_duplicates: bool = False,
        strategy_params: dict[str, Any] | None = None, include_pseudo: bool = False, model_scores: Any = None,
    ) -> tuple[Any, Any]:
        """Run one round with region evidence and record it (with each proposal's triggering box).

        Parameters are :meth:`assay.loop.Miner.propose`'s. External model scores (``model_scores``) are not
        combined with region evidence: pass ``None`` or ``False``; a model name raises InputError.
        """
        with self._round_lock():
            return self._propose(strategy=strategy, batch=batch, seed=seed, proxy=proxy,
                random_fraction=random_fraction, seals_k=seals_k, seals_k_positive=seals_k_positive,
                keep_duplicates=keep_duplicates,
                strategy_params=strategy_params, include_pseudo=include_pseudo, model_scores=model_scores)

    def _propose(  # type: ignore[override]
        self, *, strategy: str = "seals:entropy", batch: int = 50, seed: int | None = None, proxy: str = "logistic",
        random_fraction: float = 0.2, seals_k: int = 100, seals_k_positive: int | None = None,
        keep_duplicates: bool = False,
        strategy_params: dict[str, Any] | None = None, include_pseudo: bool = False, model_scores: Any = None,
    ) -> tuple[Any, Any]:
        from .select.strategies import get_strategy

        if model_scores not in (None, False):
            raise InputError(f"region mining does not combine external model scores; got model_scores={model_scores!r}")
        t_all = time.perf_counter()
        batch = _check_batch(batch)
        spec = region_spec_of(self.ws, self.encoder_name)
        if spec is None:
            raise WorkspaceError("the workspace has no region vectors; run `assay embed --regions grid:2,3` first")
        ensure_tables(self.ws)
        concept = self.concept
        cat = self.ws.catalog
        searcher = self._searcher()
        seals_k, params = self._capped(searcher, strategy, seals_k, dict(strategy_params or {}))
        strat = get_strategy(strategy, pool_params={"k": seals_k, "k_positive": seals_k_positive}
                             if strategy.startswith("seals:") else None, **params)
        store, rstore = searcher.store, region_store(self.ws, self.encoder_name)
        stale = searcher.stale_ids()  # read once: left out of the corpus and never proposed
        corpus = self._corpus(searcher, stale)
        labelled, labels = cat.current_labels(concept.id, include_pseudo=include_pseudo)
        labelled_in = np.isin(labelled, corpus)
        excluded = self._excluded(concept.id, labelled, keep_duplicates, stale)
        round_no = len(cat.rounds(concept.id)) + 1
        rng = np.random.default_rng(seed if seed is not None else [concept.id, round_no])
        rX, ry = region_training_set(self.ws, concept.name, self.encoder_name)
        cold = (labels == 1).sum() + (ry == 1).sum() == 0 or (labels == 0).sum() + (ry == 0).sum() == 0
        seed_hits: list[np.ndarray] = []
        seed_region: dict[int, tuple[float, int]] = {}  # cold start: item -> (score, region) of its best seed hit
        if cold:
            k = max(batch * 4, 50)
            hit_rows = []
            if concept.text:
                try:
                    hit_rows += searcher.search_regions_texts([concept.text], k=k)
                except InputError as exc:
                    log.warning("text seeding skipped: %s", exc)
            seeds = list(dict.fromkeys(list(concept.exemplars) + [int(i) for i in labelled[labels == 1]]))
            if len(seeds) > 1:  # all of them together first: their prototype finds what they share
                try:
                    hit_rows.append(searcher.search_regions(item=seeds, k=k))
                except InputError as exc:  # e.g. exemplars that cancel out: each still seeds on its own
                    log.warning("seeding by the exemplars together skipped: %s", exc)
            if seeds:
                hit_rows += searcher.search_regions_items(seeds, k=k)
            for hits in hit_rows:
                seed_hits.append(np.asarray([h.id for h in hits], dtype=np.int64))
                for h in hits:
                    if h.region is not None and h.score > seed_region.get(h.id, (-np.inf, 0))[0]:
                        seed_region[h.id] = (h.score, h.region)
        query_vectors = store.get(concept.exemplars) if concept.exemplars else None
        out, trig = select_round_regions(
            strategy=strat, n=batch, rng=rng, corpus_ids=corpus, vectors=lambda ids: store.get(ids, dtype=np.float32),
            region_vectors=lambda ids: rstore.get(ids, dtype=np.float32), n_regions=spec.n_regions,
            has_regions=rstore.contains, extra_X=rX, extra_y=ry,
            labelled_ids=labelled[labelled_in], labels=labels[labelled_in], neighbors=searcher.neighbors,
            excluded_ids=excluded, query_vectors=query_vectors, seed_hits=seed_hits, proxy=proxy,
            random_fraction=random_fraction, seed=round_no,
        )
        if seed_region:  # a cold start's proposals found by a region search show that region's box (not the
            # random picks, even where a search also listed them: no search put them in the batch)
            trig = np.asarray([t if t >= REGION_BASE or why == "seed-random" else seed_region.get(int(i), (0.0, t))[1]
                               for i, t, why in zip(out.ids.tolist(), trig.tolist(), out.reasons)], dtype=np.int64)
        proposals = [
            {"item_id": int(i), "rank": r, "score": float(s),
             "prelabel": None if out.prelabels is None else float(out.prelabels[r]), "reason": out.reasons[r]}
            for r, (i, s) in enumerate(zip(out.ids, out.scores))
        ]
        out.seconds["total"] = time.perf_counter() - t_all
        row = cat.add_round(
            concept.id, strategy=out.strategy,
            params={"batch": batch, "proxy": proxy, "seals_k": seals_k,
                    "seals_k_positive": getattr(strat, "k_positive", None), "random_fraction": random_fraction,
                    "seed": seed, "keep_duplicates": keep_duplicates, "regions": spec.key,
                    "strategy_params": dict(strategy_params or {}), "include_pseudo": include_pseudo},
            encoder=self.encoder_name, encoder_version=store.meta()["version"], proxy=out.proxy,
            pool_size=out.pool_size, scanned_fraction=out.scanned_fraction,
            seconds={k: round(v, 4) for k, v in out.seconds.items()}, proposals=proposals,
        )
        boxes = region_boxes(self.ws, trig[trig >= REGION_BASE], self.encoder_name)
        sizes = region_image_sizes(self.ws, trig[trig >= REGION_BASE], self.encoder_name)
        rows = []
        for r, (i, t) in enumerate(zip(out.ids.tolist(), trig.tolist())):
            b = boxes.get(int(t)) if t >= REGION_BASE else None
            wh = sizes.get(int(t), (None, None)) if b else (None, None)
            rows.append({"round_id": row.id, "item_id": int(i), "region_id": int(t) if b else None,
                         "x0": b[0] if b else None, "y0": b[1] if b else None, "x1": b[2] if b else None,
                         "y1": b[3] if b else None, "width": wh[0], "height": wh[1],
                         "score": None if out.prelabels is None else float(out.prelabels[r])})
        if rows:
            with self.ws.catalog.engine.begin() as conn:
                conn.execute(sa.insert(region_proposals_table), rows)
        return row, out


def region_proposals(ws: Workspace, round_id: int) -> dict[int, dict[str, Any]]:
    """``{item id: {"region": id | None, "box": [x0, y0, x1, y1] | None, "score"}}`` for a round's proposals."""
    ensure_tables(ws)
    t = region_proposals_table
    with ws.catalog.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.round_id == int(round_id))).all()
    return {
        int(r.item_id): {"region": None if r.region_id is None else int(r.region_id),
                         "box": None if r.region_id is None else [r.x0, r.y0, r.x1, r.y1],
                         "image_size": None if r.region_id is None else [r.width, r.height], "score": r.score}
        for r in rows
    }
