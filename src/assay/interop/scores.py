"""Model scores: per-item scores (and boxes) from any model, stored beside the catalog and used by the loop.

A *model score* is one number in ``[0, 1]`` per ``(model, concept, item)``: the probability some model
(a detector, a classifier, the built-in ImageNet tagger) gives that the item contains the concept.
Detectors may add boxes. They serve two purposes in the mining loop (:mod:`assay.loop`):

* **candidate generation**: the items in a medium-confidence band (default ``[0.3, 0.7]``: the items the
  model is unsure contain the object) join the candidate pool, like the query hits of a cold start and the
  kNN neighbourhoods of SEALS (:func:`band_candidates`);
* **a value term**: ``d * model_term`` in the ``value`` strategy (:mod:`assay.select.strategies`), where the
  term is the model's uncertainty (binary entropy of its score, the default) or its score (relevance).

Storage
    One table, ``model_scores``, on this module's own SQLAlchemy ``MetaData``, created on first use with
    ``create_all(catalog.engine, checkfirst=True)`` (SQLite and PostgreSQL). Primary key
    ``(model, concept, item_id)``: importing scores for an item again replaces that item's row for that
    model and concept. Boxes are stored normalised to ``[0, 1]`` as ``[[x0, y0, x1, y1, score], ...]``
    (``score`` is null when the source gave none). Concepts are referred to by name, so scores can be
    imported before the concept is created.

Import files (:func:`import_scores`): CSV, Parquet or JSONL with columns ``id`` or ``uri``, ``concept``
(or ``--concept``), ``score``, and optionally ``boxes`` (JSON ``[[x0, y0, x1, y1], ...]``, optionally a fifth
number per box, its score; in ``pixels`` of the original image or ``normalized`` to ``[0, 1]``). Every row is
validated before anything is written; the first bad row raises :class:`~assay.errors.InputError` naming the
row number and the value, and nothing is written.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from ..catalog import Catalog, items_table
from ..errors import InputError, NotFoundError, RowProblems, UnknownNameError, as_item_id

__all__ = [
    "metadata",
    "model_scores_table",
    "BOX_UNITS",
    "MODEL_TERMS",
    "ScoreImportReport",
    "ModelScoreUse",
    "ensure_tables",
    "write_scores",
    "read_scores",
    "read_boxes",
    "score_models",
    "delete_scores",
    "resolve_model",
    "import_scores",
    "read_score_records",
    "band_candidates",
    "score_lookup",
    "set_score_use",
    "get_score_use",
    "check_box",
]

BOX_UNITS = ("normalized", "pixels")
MODEL_TERMS = ("uncertainty", "relevance")
_TOL = 1e-6

metadata = sa.MetaData()

model_scores_table = sa.Table(
    "model_scores",
    metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("concept", sa.String(200), primary_key=True),
    sa.Column("item_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("boxes", sa.JSON(none_as_null=True)),  # [[x0, y0, x1, y1, score|null], ...] normalised to [0, 1]
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_model_scores_concept", model_scores_table.c.concept, model_scores_table.c.model)

_created: weakref.WeakSet[Any] = weakref.WeakSet()


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def ensure_tables(catalog: Catalog) -> sa.Engine:
    """Create the model-score table in the catalog's database if it is missing; return the engine."""
    engine = catalog.engine
    if engine not in _created:
        metadata.create_all(engine, checkfirst=True)
        _created.add(engine)
    return engine


# ---------------------------------------------------------------------------------------------- validation
def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InputError(f"{what} must be a non-empty string of at most 200 characters, got {value!r}")
    return value.strip()


def check_box(box: Any, *, units: str = "normalized", size: tuple[int, int] | None = None) -> list[float | None]:
    """Validate one box ``[x0, y0, x1, y1]`` (optionally a fifth number, its score); return it normalised.

    Parameters
    ----------
    box : sequence of 4 or 5 numbers
    units : {"normalized", "pixels"}
        ``pixels`` needs ``size = (width, height)`` of the image, and divides by it.

    Returns
    -------
    list ``[x0, y0, x1, y1, score or None]`` with coordinates in ``[0, 1]``.

    Raises
    ------
    InputError
        Not 4 or 5 finite numbers, ``x1 <= x0`` or ``y1 <= y0``, outside the image, or a box score
        outside ``[0, 1]``. The message says what was wrong, without the row (the caller adds it).
    """
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) not in (4, 5):
        raise InputError(f"a box must be [x0, y0, x1, y1] (optionally a 5th number, its score), got {box!r}")
    vals: list[float] = []
    if len(box) == 5 and box[4] is None:
        box = list(box[:4])
    for v in box:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
            raise InputError(f"box coordinates must be finite numbers, got {box!r}")
        vals.append(float(v))
    x0, y0, x1, y1 = vals[:4]
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"a box needs x1 > x0 and y1 > y0, got {box!r}")
    if units == "pixels":
        if size is None or not size[0] or not size[1]:
            raise InputError(f"pixel boxes need the image size, which the catalog does not know for this item; box {box!r}")
        w, h = float(size[0]), float(size[1])
        if x0 < -_TOL or y0 < -_TOL or x1 > w + _TOL or y1 > h + _TOL:
            raise InputError(f"box {box!r} lies outside the {int(w)}x{int(h)} image")
        x0, x1, y0, y1 = x0 / w, x1 / w, y0 / h, y1 / h
    elif units == "normalized":
        if x0 < -_TOL or y0 < -_TOL or x1 > 1 + _TOL or y1 > 1 + _TOL:
            raise InputError(
                f"normalized box {box!r} has coordinates outside [0, 1] (pixel boxes need --boxes pixels)"
            )
    else:
        raise UnknownNameError("box units", units, BOX_UNITS)
    score = None
    if len(vals) == 5:
        score = vals[4]
        if not 0.0 <= score <= 1.0:
            raise InputError(f"a box score must be in [0, 1], got {score} in {box!r}")
    clip = lambda v: min(max(v, 0.0), 1.0)
    return [clip(x0), clip(y0), clip(x1), clip(y1), score]


def _check_score(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError("score is empty")
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise InputError(f"score must be a number, got {value!r}") from None
    if not math.isfinite(s):
        raise InputError(f"score must be a finite number, got {value!r}")
    if not 0.0 <= s <= 1.0:
        raise InputError(f"score {value!r} is outside [0, 1] (scores are probabilities)")
    return s


# ---------------------------------------------------------------------------------------------- writes / reads
def write_scores(
    catalog: Catalog,
    model: str,
    rows: Sequence[tuple[str, int, float, list | None]],
) -> int:
    """Store ``(concept, item id, score, boxes)`` rows for ``model`` in one transaction; return the count.

    Rows for an ``(model, concept, item)`` already stored replace it. Scores must be in ``[0, 1]``; item
    ids must exist; boxes, when given, must be normalised ``[x0, y0, x1, y1, score|None]`` lists (see
    :func:`check_box`). Validated before anything is written.
    """
    model = _check_name(model, "model name")
    prepared = []
    seen: set[tuple[str, int]] = set()
    for k, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) != 4:
            raise InputError(f"score row {k + 1} must be (concept, item id, score, boxes or None), got {row!r}"[:300])
        concept, item_id, score, boxes = row
        concept = _check_name(concept, "concept")
        item_id = as_item_id(item_id, f"score row {k + 1}: item id")  # 1.7 is refused, not item 1
        key = (concept, item_id)
        if key in seen:
            raise InputError(f"score row {k + 1}: item {item_id} has two scores for concept {concept!r}")
        seen.add(key)
        s = _check_score(score)
        bx = None if boxes is None else [check_box(b) for b in boxes]
        prepared.append({"model": model, "concept": concept, "item_id": int(item_id), "score": s, "boxes": bx})
    ids = sorted({r["item_id"] for r in prepared})
    known = set(catalog.get_ids_existing(ids))
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFoundError(f"{len(missing)} scored item ids are not in the catalog, e.g. {missing[:5]}")
    if not prepared:
        return 0
    engine = ensure_tables(catalog)
    t = model_scores_table
    now = _now()
    by_concept: dict[str, list[int]] = {}
    for r in prepared:
        r["created_at"] = now
        by_concept.setdefault(r["concept"], []).append(r["item_id"])
    with engine.begin() as conn:
        for concept, cids in by_concept.items():
            stored = conn.execute(
                sa.select(t.c.item_id).where(t.c.model == model, t.c.concept == concept).limit(1)
            ).first()
            if stored is None:  # nothing to replace: skip the deletes
                continue
            for start in range(0, len(cids), 900):
                conn.execute(
                    sa.delete(t).where(t.c.model == model, t.c.concept == concept,
                                       t.c.item_id.in_(cids[start : start + 900]))
                )
        for start in range(0, len(prepared), 5000):
            conn.execute(sa.insert(t), prepared[start : start + 5000])
    return len(prepared)


def read_scores(catalog: Catalog, concept: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [n] ascending, scores float64 [n])`` of one model for one concept (empty if none)."""
    engine = ensure_tables(catalog)
    t = model_scores_table
    q = sa.select(t.c.item_id, t.c.score).where(t.c.model == model, t.c.concept == concept).order_by(t.c.item_id)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return ids, np.asarray([r[1] for r in rows], dtype=np.float64)


def read_boxes(catalog: Catalog, concept: str, model: str) -> dict[int, list[list[float | None]]]:
    """``{item id: [[x0, y0, x1, y1, score|None], ...]}`` (normalised) for the items with boxes."""
    engine = ensure_tables(catalog)
    t = model_scores_table
    q = sa.select(t.c.item_id, t.c.boxes).where(t.c.model == model, t.c.concept == concept, t.c.boxes.is_not(None))
    out: dict[int, list] = {}
    with engine.connect() as conn:
        for r in conn.execute(q):
            boxes = r.boxes
            if isinstance(boxes, str):  # pragma: no cover - drivers that return JSON as text
                boxes = json.loads(boxes)
            if boxes:
                out[int(r.item_id)] = [list(b) for b in boxes]
    return out


def score_models(catalog: Catalog, concept: str | None = None) -> list[dict[str, Any]]:
    """One dict per ``(model, concept)``: ``model, concept, items, with_boxes, mean_score``."""
    engine = ensure_tables(catalog)
    t = model_scores_table
    q = sa.select(
        t.c.model, t.c.concept, sa.func.count().label("n"), sa.func.avg(t.c.score).label("mean"),
        sa.func.count(t.c.boxes).label("nb"),
    ).group_by(t.c.model, t.c.concept).order_by(t.c.concept, t.c.model)
    if concept is not None:
        q = q.where(t.c.concept == concept)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for r in rows:
        out.append({"model": r.model, "concept": r.concept, "items": int(r.n),
                    "mean_score": round(float(r.mean), 6), "with_boxes": int(r.nb)})
    return out


def delete_scores(catalog: Catalog, model: str, concept: str | None = None) -> int:
    """Remove a model's scores (for one concept or all); return how many rows went."""
    engine = ensure_tables(catalog)
    t = model_scores_table
    q = sa.delete(t).where(t.c.model == model)
    if concept is not None:
        q = q.where(t.c.concept == concept)
    with engine.begin() as conn:
        return int(conn.execute(q).rowcount or 0)


def resolve_model(catalog: Catalog, concept: str, model: str | None = None) -> str:
    """The model whose scores to use for ``concept``: ``model`` if it has scores, else the only one there is."""
    models = [m["model"] for m in score_models(catalog, concept)]
    if model is not None:
        if model not in models:
            raise NotFoundError(
                f"model {model!r} has no scores for concept {concept!r}; "
                + (f"models with scores: {', '.join(models)}" if models else "import some with `assay scores import`")
            )
        return model
    if len(models) == 1:
        return models[0]
    if not models:
        raise NotFoundError(f"no model scores for concept {concept!r}; import some with `assay scores import`")
    raise InputError(f"concept {concept!r} has scores from several models ({', '.join(models)}); name one with --model")


# ---------------------------------------------------------------------------------------------- pure helpers
def band_candidates(ids: Any, scores: Any, *, low: float = 0.3, high: float = 0.7, limit: int | None = None) -> np.ndarray:
    """Items whose model score lies in ``[low, high]``, closest to the band's centre first.

    Parameters
    ----------
    ids : int64 [n]
    scores : float [n] in [0, 1]
    low, high : float
        The medium-confidence band, ``0 <= low < high <= 1``.
    limit : int, optional
        Keep at most this many (the most central).

    Returns
    -------
    int64 [m] item ids, ordered by ``|score - (low + high) / 2|`` ascending, ties by id.
    """
    _check_band(low, high)
    ids = np.asarray(ids, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if ids.shape != s.shape or ids.ndim != 1:
        raise InputError(f"ids and scores must be 1-D and aligned, got shapes {ids.shape} and {s.shape}")
    inside = (s >= low) & (s <= high)  # [n]
    cand, cs = ids[inside], s[inside]  # [m]
    order = np.lexsort((cand, np.abs(cs - 0.5 * (low + high))))  # primary: distance to the centre
    out = cand[order]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise InputError(f"limit must be a non-negative integer, got {limit!r}")
        out = out[: int(limit)]
    return out


def score_lookup(ids: Any, scores: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``query ids [m] -> scores [m]`` (float64, NaN for items the model did not score)."""
    ids = np.asarray(ids, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    sid, ss = ids[order], s[order]

    def lookup(q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.int64)
        out = np.full(q.shape, np.nan, dtype=np.float64)  # [m]
        if sid.size == 0 or q.size == 0:
            return out
        pos = np.minimum(np.searchsorted(sid, q), sid.size - 1)  # [m]
        hit = sid[pos] == q
        out[hit] = ss[pos[hit]]
        return out

    return lookup


def _check_band(low: Any, high: Any) -> None:
    for name, v in (("band low", low), ("band high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(float(v)):
            raise InputError(f"{name} must be a number in [0, 1], got {v!r}")
    if not 0.0 <= low < high <= 1.0:
        raise InputError(f"the band must satisfy 0 <= low < high <= 1, got [{low}, {high}]")


# ---------------------------------------------------------------------------------------------- per-concept use
@dataclass(frozen=True)
class ModelScoreUse:
    """How the mining loop uses one model's scores for a concept.

    Attributes
    ----------
    model : str
        The model whose scores to use.
    band : (low, high)
        The medium-confidence band whose items join the candidate pool (default ``(0.3, 0.7)``).
    max_candidates : int
        At most this many band items join the pool per round (the most central; default 1000).
    weight : float
        ``d``, the weight of the model term in the ``value`` strategy (default 0: the term is off).
    term : {"uncertainty", "relevance"}
        The model term: binary entropy of the model's score (default) or the score itself.
    """

    model: str
    band: tuple[float, float] = (0.3, 0.7)
    max_candidates: int = 1000
    weight: float = 0.0
    term: str = "uncertainty"

    def __post_init__(self) -> None:
        _check_name(self.model, "model name")
        if not isinstance(self.band, (tuple, list)) or len(self.band) != 2:
            raise InputError(f"band must be (low, high), got {self.band!r}")
        object.__setattr__(self, "band", (float(self.band[0]), float(self.band[1])))
        _check_band(*self.band)
        if isinstance(self.max_candidates, bool) or not isinstance(self.max_candidates, int) or self.max_candidates < 0:
            raise InputError(f"max_candidates must be a non-negative integer, got {self.max_candidates!r}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise InputError(f"weight must be a non-negative number, got {self.weight!r}")
        if self.term not in MODEL_TERMS:
            raise UnknownNameError("model term", self.term, MODEL_TERMS)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["band"] = list(self.band)
        return d


def _use_key(concept_id: int) -> str:
    return f"interop.score-use.{int(concept_id)}"


def set_score_use(catalog: Catalog, concept: str, use: ModelScoreUse | None) -> None:
    """Record (or clear, with ``None``) how the loop uses model scores for ``concept``."""
    c = catalog.concept(concept)
    if use is not None:
        resolve_model(catalog, concept, use.model)  # the model must have scores for this concept
    catalog.set_value(_use_key(c.id), json.dumps(None if use is None else use.to_dict()))


def get_score_use(catalog: Catalog, concept: str) -> ModelScoreUse | None:
    """The recorded :class:`ModelScoreUse` of ``concept``, or None."""
    c = catalog.concept(concept)
    raw = catalog.get_value(_use_key(c.id))
    if not raw:
        return None
    d = json.loads(raw)
    if not d:
        return None
    d["band"] = tuple(d["band"])
    return ModelScoreUse(**d)


# ---------------------------------------------------------------------------------------------- import files
@dataclass
class ScoreImportReport:
    model: str
    rows: int
    concepts: dict[str, int] = field(default_factory=dict)
    with_boxes: int = 0
    box_units: str = "normalized"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refuse_repeated_columns(names: Sequence[str], p: Path) -> None:
    """A column named twice would be read as its last copy, silently: refuse it, as a manifest's is."""
    repeated = sorted({c for c in names if list(names).count(c) > 1})
    if repeated:
        raise InputError(f"{p} has the column(s) {repeated} more than once; rename or drop the copies")


def concept_of_row(rec: dict[str, Any], concept: str | None) -> str:
    """The concept a file row is for: its ``concept`` cell, else ``concept`` (``--concept``); a row naming
    another concept than ``--concept``, or naming none when there is no ``--concept``, raises InputError."""
    cell = rec.get("concept")
    if cell in (None, ""):
        if concept is None:
            raise InputError("concept is empty; fill the column or pass --concept")
        return concept
    name = str(cell).strip()
    if concept is not None and name != concept:
        raise InputError(f"concept {name!r} differs from --concept {concept!r}")
    return name


_SCORE_COLS = ("id", "uri", "concept", "score", "boxes")


def column_hint(cols: Any, wanted: Sequence[str]) -> str:
    """A hint for a file whose columns miss ``wanted`` names only by letter case ("ID" for "id"), or ""."""
    have = {str(c).strip().lower(): str(c) for c in cols}
    near = [f"{have[w]!r} -> {w!r}" for w in wanted if w not in cols and w in have]
    return f" (column names are case-sensitive: rename {', '.join(near)})" if near else ""


def read_score_records(path: str | Path, what: str = "scores file") -> list[dict[str, Any]]:
    """The rows of a CSV, Parquet or JSONL file as dicts (by suffix: .parquet, .jsonl/.ndjson, else CSV).

    Every way the file can be unreadable (missing, a folder, not UTF-8, broken Parquet, a JSONL line that is
    not an object, a CSV row with more fields than the header) raises InputError/NotFoundError naming it;
    a BOM is fine. ``what`` names the file in messages (e.g. "labels file")."""
    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"{what} not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder, not a file")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(p).schema_arrow.names
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise InputError(f"cannot read {what} {p}: not a readable Parquet file: {exc}") from exc
        _refuse_repeated_columns(names, p)
        try:
            return pq.read_table(p).to_pylist()
        except Exception as exc:
            raise InputError(f"cannot read {what} {p}: not a readable Parquet file: {exc}") from exc
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            from .._jsonutil import jsonl_objects

            return jsonl_objects(p.read_text(encoding="utf-8-sig"), str(p))
        with open(p, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
            dialect = csv.excel_tab if suffix == ".tsv" else csv.excel
            reader = csv.DictReader(f, dialect=dialect, strict=True)
            try:
                if reader.fieldnames:  # "id, label": the space after a comma is not part of the name
                    reader.fieldnames = [c.strip() for c in reader.fieldnames]
                _refuse_repeated_columns(reader.fieldnames or [], p)
                rows = list(reader)
            except csv.Error as exc:
                raise InputError(f"{p} line {reader.line_num}: {exc} (a quote opened and never closed?)") from None
        for n, r in enumerate(rows, 2):
            if None in r:  # csv puts fields beyond the header under the key None
                raise InputError(f"{p} line {n}: more fields than the header has columns")
        return rows
    except UnicodeDecodeError as exc:
        raise InputError(f"{p} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc


def _uri_map(catalog: Catalog, uris: Sequence[str]) -> dict[str, tuple[int, int | None, int | None]]:
    """``{uri: (id, width, height)}`` for the uris in the catalog (exactly as stored)."""
    out: dict[str, tuple[int, int | None, int | None]] = {}
    t = items_table
    uris = list(dict.fromkeys(uris))
    with catalog.engine.connect() as conn:
        for start in range(0, len(uris), 900):
            for r in conn.execute(sa.select(t.c.id, t.c.uri, t.c.width, t.c.height).where(t.c.uri.in_(uris[start : start + 900]))):
                out[r.uri] = (int(r.id), r.width, r.height)
    return out


def _id_map(catalog: Catalog, ids: Sequence[int]) -> dict[int, tuple[int | None, int | None]]:
    out: dict[int, tuple[int | None, int | None]] = {}
    t = items_table
    ids = [i for i in dict.fromkeys(ids) if isinstance(i, int) and 0 <= i < 2**63]  # no stored id lies beyond
    with catalog.engine.connect() as conn:
        for start in range(0, len(ids), 900):
            for r in conn.execute(sa.select(t.c.id, t.c.width, t.c.height).where(t.c.id.in_(ids[start : start + 900]))):
                out[int(r.id)] = (r.width, r.height)
    return out


def _parse_boxes(raw: Any) -> list | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(f"boxes must be JSON like [[x0, y0, x1, y1], ...], got {raw!r}") from None
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise InputError(f"boxes must be a list of [x0, y0, x1, y1] boxes, got {raw!r}")
    return list(raw)


def import_scores(
    catalog: Catalog, path: str | Path, *, model: str, concept: str | None = None, box_units: str = "normalized",
) -> ScoreImportReport:
    """Import a scores file for ``model``, all or nothing.

    Parameters
    ----------
    path : CSV, Parquet or JSONL
        Columns ``id`` or ``uri``; ``concept`` (unless ``concept`` is given); ``score`` in ``[0, 1]``;
        optional ``boxes``.
    model : str
        The name the scores are stored under (e.g. ``yolo-v8n`` or ``vendor-2024-06``).
    concept : str, optional
        The concept of every row. When the file has a ``concept`` column too, every row must name it.
    box_units : {"normalized", "pixels"}
        Units of the boxes; pixel boxes are divided by the item's width and height from the catalog.

    Raises
    ------
    InputError
        A missing column, an id or uri not in the catalog, a score outside ``[0, 1]``, a malformed box, a
        repeated ``(item, concept)``: the message names the row number (1 = the first data row) and the
        value. Nothing is written.
    """
    model = _check_name(model, "--model")
    if box_units not in BOX_UNITS:
        raise UnknownNameError("box units", box_units, BOX_UNITS)
    if concept is not None:
        concept = _check_name(concept, "--concept")
    p = Path(path)
    records = read_score_records(p)
    if not records:
        raise InputError(f"{p} holds no score rows")
    cols = set().union(*(r.keys() for r in records[:1000]))
    if "score" not in cols:
        raise InputError(f"{p} has no 'score' column; columns are {sorted(cols)}{column_hint(cols, _SCORE_COLS)}")
    if not ({"id", "uri"} & cols):
        raise InputError(f"{p} needs an 'id' or a 'uri' column; columns are {sorted(cols)}{column_hint(cols, _SCORE_COLS)}")
    if concept is None and "concept" not in cols:
        raise InputError(f"{p} has no 'concept' column; add one or pass --concept{column_hint(cols, _SCORE_COLS)}")
    # Resolve ids and uris in bulk first.
    uris = [str(r["uri"]) for r in records if r.get("id") in (None, "") and r.get("uri") not in (None, "")]
    uri_map: dict[str, tuple[int, int | None, int | None]] = {}
    if uris:  # every spelling of a local path (file://, relative, unnormalised), as label imports resolve them
        from .imports import _resolve_uris

        resolved = _resolve_uris(catalog, list(dict.fromkeys(uris)))
        sizes = _id_map(catalog, list(resolved.values()))
        uri_map = {u: (i, *sizes.get(i, (None, None))) for u, i in resolved.items()}
    raw_ids: list[int] = []
    for r in records:
        v = r.get("id")
        if v not in (None, ""):
            try:
                raw_ids.append(int(v))
            except (TypeError, ValueError):
                pass
    id_map = _id_map(catalog, raw_ids) if raw_ids else {}
    rows: list[tuple[str, int, float, list | None]] = []
    seen: dict[tuple[str, int], int] = {}
    n_boxes = 0
    problems = RowProblems(p.name)  # every bad row is reported, not only the first
    checked_names: set[str] = set()
    for n, rec in enumerate(records, 1):
        with problems.row(f"row {n}"):
            raw_id = rec.get("id")
            if raw_id not in (None, ""):
                item_id = as_item_id(raw_id, "id")
                if item_id not in id_map:
                    raise InputError(f"item id {item_id} is not in the catalog")
                size = id_map[item_id]
            else:
                uri = rec.get("uri")
                if uri in (None, ""):
                    raise InputError("neither id nor uri is given")
                if str(uri) not in uri_map:
                    raise InputError(f"uri {uri!r} is not in the catalog")
                item_id, *wh = uri_map[str(uri)]
                size = (wh[0], wh[1])
            row_concept = concept_of_row(rec, concept)
            if row_concept not in checked_names:
                Catalog.check_concept_name(row_concept)  # a name no concept could have would never be used
                checked_names.add(row_concept)
            score = _check_score(rec.get("score"))
            boxes = _parse_boxes(rec.get("boxes"))
            if boxes is not None:
                boxes = [check_box(b, units=box_units, size=size) for b in boxes]
                n_boxes += 1
            key = (row_concept, item_id)
            if key in seen:
                raise InputError(f"item {item_id} already has a score for {row_concept!r} in row {seen[key]}")
            seen[key] = n
            rows.append((row_concept, item_id, score, boxes))
    problems.raise_if_any()
    write_scores(catalog, model, rows)
    per: dict[str, int] = {}
    for c, *_ in rows:
        per[c] = per.get(c, 0) + 1
    return ScoreImportReport(model=model, rows=len(rows), concepts=per, with_boxes=n_boxes, box_units=box_units)
