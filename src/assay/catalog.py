"""The catalog: items and their provenance, in SQLite by default or PostgreSQL by URL (SQLAlchemy Core).

Every item has one global int64 id, assigned here and never reused. Everything downstream (vectors,
indexes, pools, selections, labels, exports) speaks in these ids.

Writes are batched (``executemany``), idempotent where they can be (ingesting the same URI twice adds
nothing), and each batch is one transaction, so a crash loses at most the batch in flight and never
leaves a half-written one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import CatalogError, InputError, MissingDependencyError, NotFoundError

__all__ = ["Catalog", "ItemRow", "ITEM_STATUSES", "MODALITIES", "metadata", "items_table", "sources_table", "dup_members_table"]

log = logging.getLogger(__name__)

ITEM_STATUSES = ("ok", "error")
MODALITIES = ("image", "text")
SCHEMA_VERSION = 1

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere use a 64-bit integer.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

items_table = sa.Table(
    "items",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False, unique=True),
    sa.Column("modality", sa.String(8), nullable=False, default="image"),
    sa.Column("sha256", sa.String(64), index=True),
    sa.Column("size", sa.BigInteger),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("format", sa.String(16)),
    sa.Column("status", sa.String(8), nullable=False, index=True),
    sa.Column("error", sa.Text),
    sa.Column("duplicate_of", sa.BigInteger, index=True),
    sa.Column("text", sa.Text),
    sa.Column("meta", sa.JSON),
    sa.Column("source_id", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

sources_table = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("n_new", sa.Integer, nullable=False, default=0),
    sa.Column("n_seen", sa.Integer, nullable=False, default=0),
)

# Near-duplicate groups (``assay dedup``): one row per member of a group of two or more items.
dup_members_table = sa.Table(
    "duplicate_members",
    metadata,
    sa.Column("item_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("representative", sa.BigInteger, nullable=False, index=True),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("threshold", sa.Float),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

kv_table = sa.Table(
    "assay_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class ItemRow:
    """One item as read from the catalog."""

    id: int
    uri: str
    modality: str
    sha256: str | None
    size: int | None
    width: int | None
    height: int | None
    format: str | None
    status: str
    error: str | None
    duplicate_of: int | None
    text: str | None
    meta: dict[str, Any]

    @classmethod
    def _from(cls, r: Any) -> "ItemRow":
        meta = r.meta
        if isinstance(meta, str):  # pragma: no cover - drivers that hand JSON back as text
            meta = json.loads(meta)
        return cls(
            id=int(r.id), uri=r.uri, modality=r.modality, sha256=r.sha256, size=r.size, width=r.width,
            height=r.height, format=r.format, status=r.status, error=r.error,
            duplicate_of=None if r.duplicate_of is None else int(r.duplicate_of), text=r.text,
            meta=dict(meta or {}),
        )


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # pragma: no cover - a URL SQLAlchemy cannot parse is reported as given
        return url


class Catalog:
    """The item catalog of one workspace.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL: ``sqlite:////abs/path/catalog.db`` or ``postgresql+psycopg://user@host/db``
        (``postgresql://`` is accepted and mapped to the psycopg 3 driver).

    The constructor only stores the URL; :meth:`open` connects and creates missing tables.
    """

    BATCH = 5000

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise InputError(f"catalog URL must look like sqlite:///path or postgresql://..., got {url!r}")
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.url = url
        self._engine: Engine | None = None

    # ------------------------------------------------------------------ connection
    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self.open()
        assert self._engine is not None
        return self._engine

    def open(self) -> "Catalog":
        """Connect, create missing tables and check the schema version."""
        if self._engine is not None:
            return self
        kwargs: dict[str, Any] = {"future": True}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = sa.create_engine(self.url, **kwargs)
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(exc.name or "psycopg", "postgres", "a PostgreSQL catalog") from exc
        if engine.dialect.name == "sqlite":

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every sqlite test
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

        try:
            metadata.create_all(engine)
            with engine.begin() as conn:
                row = conn.execute(sa.select(kv_table.c.value).where(kv_table.c.key == "schema_version")).first()
                if row is None:
                    conn.execute(sa.insert(kv_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(row.value) > SCHEMA_VERSION:
                    raise CatalogError(
                        f"catalog schema version {row.value} is newer than this assay ({SCHEMA_VERSION}); upgrade assay"
                    )
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise CatalogError(f"cannot open the catalog at {_redact(self.url)}: {exc.orig}") from exc
        self._engine = engine
        return self

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> "Catalog":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ key/value
    def get_value(self, key: str, default: str | None = None) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(kv_table.c.value).where(kv_table.c.key == key)).first()
        return default if row is None else row.value

    def set_value(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(sa.select(kv_table.c.key).where(kv_table.c.key == key)).first() is None:
                conn.execute(sa.insert(kv_table).values(key=key, value=value))
            else:
                conn.execute(sa.update(kv_table).where(kv_table.c.key == key).values(value=value))

    # ------------------------------------------------------------------ sources
    def add_source(self, uri: str, kind: str) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(sa.insert(sources_table).values(uri=uri, kind=kind, added_at=_now()))
            return int(res.inserted_primary_key[0])

    def finish_source(self, source_id: int, n_new: int, n_seen: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(sources_table).where(sources_table.c.id == source_id).values(n_new=n_new, n_seen=n_seen)
            )

    # ------------------------------------------------------------------ items: writes
    def existing_uris(self, uris: Sequence[str]) -> set[str]:
        """The subset of ``uris`` already in the catalog."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(uris), 900):
                chunk = list(uris[start : start + 900])
                rows = conn.execute(sa.select(items_table.c.uri).where(items_table.c.uri.in_(chunk)))
                found.update(r.uri for r in rows)
        return found

    def add_items(self, rows: Sequence[dict[str, Any]], source_id: int | None = None) -> int:
        """Insert items whose URI is not in the catalog yet; return how many were new.

        Each row is a dict with ``uri`` and any of: modality, sha256, size, width, height, format, status,
        error, text, meta. Rows whose URI exists already are skipped (ingest is idempotent). Items whose
        sha256 equals that of an earlier item get ``duplicate_of`` = the earliest such item's id.
        """
        if not rows:
            return 0
        now = _now()
        prepared = []
        for r in rows:
            if not r.get("uri"):
                raise InputError(f"every item needs a non-empty uri, got {r!r}")
            status = r.get("status", "ok")
            if status not in ITEM_STATUSES:
                raise InputError(f"item status must be one of {ITEM_STATUSES}, got {status!r}")
            prepared.append(
                {
                    "uri": r["uri"],
                    "modality": r.get("modality", "image"),
                    "sha256": r.get("sha256"),
                    "size": r.get("size"),
                    "width": r.get("width"),
                    "height": r.get("height"),
                    "format": r.get("format"),
                    "status": status,
                    "error": r.get("error"),
                    "duplicate_of": None,
                    "text": r.get("text"),
                    "meta": r.get("meta") or {},
                    "source_id": source_id,
                    "created_at": now,
                }
            )
        # Keep the first occurrence of a URI within the batch, and drop URIs already stored.
        seen: set[str] = set()
        unique = []
        for r in prepared:
            if r["uri"] not in seen:
                seen.add(r["uri"])
                unique.append(r)
        existing = self.existing_uris([r["uri"] for r in unique])
        new = [r for r in unique if r["uri"] not in existing]
        if not new:
            return 0
        try:
            with self.engine.begin() as conn:
                first_id = None
                for start in range(0, len(new), self.BATCH):
                    chunk = new[start : start + self.BATCH]
                    conn.execute(sa.insert(items_table), chunk)
                new_uris = [r["uri"] for r in new]
                # The smallest id among the rows just inserted bounds the duplicate update below.
                for start in range(0, len(new_uris), 900):
                    m = conn.execute(
                        sa.select(sa.func.min(items_table.c.id)).where(items_table.c.uri.in_(new_uris[start : start + 900]))
                    ).scalar()
                    first_id = m if first_id is None else min(first_id, m)
                self._mark_exact_duplicates(conn, first_id)
        except sa.exc.IntegrityError as exc:
            raise CatalogError(f"could not add {len(new)} items (another ingest running?): {exc.orig}") from exc
        except sa.exc.OperationalError as exc:
            raise CatalogError(f"the catalog rejected a write: {exc.orig}") from exc
        return len(new)

    @staticmethod
    def _mark_exact_duplicates(conn: sa.Connection, first_id: int) -> None:
        # Only hashes that occur among the new rows can gain duplicates; group those once (UPDATE ... FROM,
        # which SQLite >= 3.33 and PostgreSQL both run with the sha256 index, not a scan per row).
        t = items_table
        new_hashes = sa.select(t.c.sha256).where(t.c.id >= first_id).where(t.c.sha256.is_not(None))
        i2 = t.alias("i2")
        groups = (
            sa.select(i2.c.sha256.label("sha"), sa.func.min(i2.c.id).label("first"))
            .where(i2.c.sha256.in_(new_hashes))
            .group_by(i2.c.sha256)
            .having(sa.func.count() > 1)
            .subquery("dups")
        )
        conn.execute(
            sa.update(t)
            .where(t.c.sha256 == groups.c.sha)
            .where(t.c.id > groups.c.first)
            .where(t.c.id >= first_id)
            .where(t.c.duplicate_of.is_(None))
            .values(duplicate_of=groups.c.first)
        )

    def mark_errors(self, errors: Iterable[tuple[int, str]]) -> int:
        """Set status ``error`` with a reason on each ``(id, reason)``; return how many were marked."""
        pairs = [{"_id": int(i), "_err": str(e)[:2000]} for i, e in errors]
        if not pairs:
            return 0
        stmt = (
            sa.update(items_table)
            .where(items_table.c.id == sa.bindparam("_id"))
            .values(status="error", error=sa.bindparam("_err"))
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, pairs)
        return len(pairs)

    # ------------------------------------------------------------------ items: reads
    def count(self) -> dict[str, int]:
        """``{"total", "ok", "error", "exact_duplicates", "image", "text"}``."""
        t = items_table
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0
            by_status = dict(conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status)).all())
            by_mod = dict(conn.execute(sa.select(t.c.modality, sa.func.count()).group_by(t.c.modality)).all())
            dups = conn.execute(
                sa.select(sa.func.count()).select_from(t).where(t.c.duplicate_of.is_not(None))
            ).scalar() or 0
        return {
            "total": int(total),
            "ok": int(by_status.get("ok", 0)),
            "error": int(by_status.get("error", 0)),
            "exact_duplicates": int(dups),
            "image": int(by_mod.get("image", 0)),
            "text": int(by_mod.get("text", 0)),
        }

    def error_reasons(self, limit: int = 20) -> list[tuple[int, str, str]]:
        t = items_table
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.id, t.c.uri, t.c.error).where(t.c.status == "error").order_by(t.c.id).limit(limit)
            ).all()
        return [(int(r.id), r.uri, r.error or "") for r in rows]

    def ids(self, *, status: str | None = "ok", modality: str | None = None) -> np.ndarray:
        """All item ids (int64, ascending) with the given status and modality (None = any)."""
        t = items_table
        q = sa.select(t.c.id).order_by(t.c.id)
        if status is not None:
            q = q.where(t.c.status == status)
        if modality is not None:
            q = q.where(t.c.modality == modality)
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(q)]
        return np.asarray(ids, dtype=np.int64)

    def get(self, item_id: int) -> ItemRow:
        rows = self.get_many([item_id])
        if not rows:
            raise NotFoundError(f"no item with id {item_id} in the catalog")
        return rows[0]

    def get_many(self, ids: Sequence[int] | np.ndarray) -> list[ItemRow]:
        """Rows for the ids that exist, in the order given (unknown ids are left out)."""
        wanted = [int(i) for i in ids]
        found: dict[int, ItemRow] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 900):
                chunk = wanted[start : start + 900]
                for r in conn.execute(sa.select(items_table).where(items_table.c.id.in_(chunk))):
                    found[int(r.id)] = ItemRow._from(r)
        return [found[i] for i in wanted if i in found]

    def iter_items(self, ids: Sequence[int] | np.ndarray, chunk: int = 900) -> Iterator[ItemRow]:
        """Rows for ``ids`` in the order given, fetched a chunk at a time (bounded memory)."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), chunk):
            yield from self.get_many(ids[start : start + chunk])

    def uris(self, ids: Sequence[int] | np.ndarray) -> dict[int, str]:
        wanted = [int(i) for i in ids]
        out: dict[int, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 900):
                chunk = wanted[start : start + 900]
                for r in conn.execute(sa.select(items_table.c.id, items_table.c.uri).where(items_table.c.id.in_(chunk))):
                    out[int(r.id)] = r.uri
        return out

    def id_for_uri(self, uri: str) -> int | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(items_table.c.id).where(items_table.c.uri == uri)).first()
        return None if r is None else int(r.id)

    def non_representative_ids(self) -> np.ndarray:
        """Ids that search and selection skip by default (sorted, unique): items whose bytes equal an earlier
        item's (from ingest), and members of a near-duplicate group other than its representative."""
        t, d = items_table, dup_members_table
        with self.engine.connect() as conn:
            exact = [r[0] for r in conn.execute(sa.select(t.c.id).where(t.c.duplicate_of.is_not(None)))]
            near = [r[0] for r in conn.execute(sa.select(d.c.item_id).where(d.c.item_id != d.c.representative))]
        return np.unique(np.asarray(exact + near, dtype=np.int64))

    def replace_duplicate_groups(
        self, groups: "dict[int, Sequence[int]]", *, method: str, threshold: float | None = None,
        items: "Sequence[int] | np.ndarray | None" = None,
    ) -> int:
        """Record near-duplicate groups ``{representative: [member ids, representative included]}`` in one
        transaction. Rows of every item named in ``groups``, and of every id in ``items`` (the items whose
        grouping was recomputed; ``None`` = all), are replaced. Returns the number of member rows written."""
        d = dup_members_table
        now = _now()
        rows = []
        for rep, members in groups.items():
            members = sorted({int(m) for m in members} | {int(rep)})
            if len(members) < 2:
                continue
            rows.extend({"item_id": m, "representative": int(rep), "method": method, "threshold": threshold,
                         "created_at": now} for m in members)
        touched = sorted({r["item_id"] for r in rows} | {int(x) for x in (items if items is not None else [])})
        with self.engine.begin() as conn:
            if items is None:
                conn.execute(sa.delete(d))
            else:
                for start in range(0, len(touched), 900):
                    conn.execute(sa.delete(d).where(d.c.item_id.in_(touched[start : start + 900])))
            for start in range(0, len(rows), self.BATCH):
                conn.execute(sa.insert(d), rows[start : start + self.BATCH])
        return len(rows)

    def duplicate_groups(self) -> dict[int, list[int]]:
        """``{representative: [members, representative included]}`` for every recorded near-duplicate group."""
        d = dup_members_table
        out: dict[int, list[int]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(sa.select(d.c.item_id, d.c.representative).order_by(d.c.representative, d.c.item_id)):
                out.setdefault(int(r.representative), []).append(int(r.item_id))
        return out

    def duplicate_map(self) -> dict[int, int]:
        """``{item id: id of the earliest item with the same bytes}`` for every exact duplicate."""
        t = items_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.duplicate_of).where(t.c.duplicate_of.is_not(None))).all()
        return {int(r.id): int(r.duplicate_of) for r in rows}
