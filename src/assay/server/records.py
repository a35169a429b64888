"""Server-side records: idempotent label submissions, written in the same transaction as their labels.

A submission carries a client-made id. Its row (``server_submissions``, primary key = that id) and its
label rows are inserted in one transaction, so a retried POST (the answer was lost on the wire) finds the
key taken, writes nothing and gets the first answer back; two writers racing with the same id cannot both
commit. The table sits on :data:`assay.catalog.metadata` and is created by :func:`ensure_tables`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..catalog import LABEL_SOURCES, labels_table, metadata
from ..errors import CatalogError, InputError

__all__ = [
    "ConflictError",
    "StaleRoundError",
    "SubmissionResult",
    "replay_of",
    "ensure_tables",
    "payload_digest",
    "record_submission",
    "skipped_items",
    "submissions_table",
]

#: The longest annotator name (as the catalog's labels table takes it).
ANNOTATOR_MAX = 200

submissions_table = sa.Table(
    "server_submissions",
    metadata,
    sa.Column("submission_id", sa.String(64), primary_key=True, autoincrement=False),
    sa.Column("concept_id", sa.Integer, nullable=False, index=True),
    sa.Column("round_id", sa.Integer, index=True),
    sa.Column("annotator", sa.String(ANNOTATOR_MAX), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),  # sha256 of the canonical payload
    sa.Column("n_labels", sa.Integer, nullable=False),
    sa.Column("skipped", sa.JSON),  # item ids the annotator skipped
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


class StaleRoundError(InputError):
    """Labels sent for a round that is no longer open."""


class ConflictError(InputError):
    """A request that clashes with the server's state (a submission id reused with another body, a busy proposer)."""


def ensure_tables(engine: sa.Engine) -> None:
    """Create the server's tables if missing (the catalog's own tables are left as they are)."""
    metadata.create_all(engine, tables=[submissions_table])
    if engine.dialect.name == "postgresql":
        # tables made before names could be 200 characters long held 100: widen them in place
        cols = {c["name"]: c for c in sa.inspect(engine).get_columns("server_submissions")}
        length = getattr(cols.get("annotator", {}).get("type"), "length", None)
        if length is not None and length < ANNOTATOR_MAX:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE server_submissions ALTER COLUMN annotator TYPE VARCHAR({ANNOTATOR_MAX})"))


def payload_digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class SubmissionResult(dict):
    """``{"written": int, "replayed": bool}``."""


def record_submission(
    engine: sa.Engine, *, submission_id: str, concept_id: int, round_id: int | None, annotator: str, digest: str,
    item_ids: Sequence[int], values: Sequence[int], skipped: Sequence[int], source: str = "human",
    extra_rows: Sequence[tuple[sa.Table, list[dict[str, Any]]]] = (),
) -> SubmissionResult:
    """Write a submission and its labels at once, or nothing.

    Returns ``written`` (label rows added; an answer equal to the annotator's latest one for the item in this
    round adds none), ``recorded`` (answers acknowledged) and ``replayed`` (True when this id was recorded
    before with the same body: nothing is written again). Raises :class:`ConflictError` when the id was used for another body.
    The caller validates ids and values first; this function only writes. ``extra_rows`` (table, rows) go in
    the same transaction (e.g. region labels), so a retried submission never finds half of itself.
    """
    if source not in LABEL_SOURCES:
        raise InputError(f"label source must be one of {LABEL_SOURCES}, got {source!r}")
    if len(item_ids) != len(values):
        raise InputError(f"{len(item_ids)} item ids but {len(values)} label values")
    now = _dt.datetime.now(_dt.timezone.utc)
    rows = [{"concept_id": concept_id, "item_id": int(i), "value": int(v), "source": source, "annotator": annotator,
             "round_id": round_id, "created_at": now} for i, v in zip(item_ids, values)]
    try:
        with engine.begin() as conn:
            # The key row goes first: the transaction takes the write lock at once, and a second writer
            # with the same id fails here, before any label row.
            conn.execute(sa.insert(submissions_table).values(
                submission_id=submission_id, concept_id=concept_id, round_id=round_id, annotator=annotator,
                digest=digest, n_labels=len(rows), skipped=[int(i) for i in skipped], created_at=now,
            ))
            rows = _drop_repeats(conn, rows, concept_id=concept_id, round_id=round_id, annotator=annotator)
            if rows:
                conn.execute(sa.insert(labels_table), rows)
            for table, more in extra_rows:
                if more:
                    conn.execute(sa.insert(table), list(more))
    except sa.exc.IntegrityError:
        with engine.connect() as conn:
            prev = conn.execute(sa.select(submissions_table).where(submissions_table.c.submission_id == submission_id)).first()
        if prev is None:  # pragma: no cover - an integrity error from something else
            raise CatalogError(f"the catalog refused submission {submission_id!r}") from None
        if prev.digest != digest or prev.concept_id != concept_id:
            raise ConflictError(
                f"submission id {submission_id!r} was used before for a different set of labels; "
                "make a new id for every new submission (reuse one only to retry the same request)"
            ) from None
        return SubmissionResult(written=0, replayed=True, recorded=int(prev.n_labels))
    except sa.exc.DataError as exc:  # a value the database's column types refuse: the request's fault
        raise InputError(f"the catalog refused a value of this submission: {exc.orig}") from None
    except sa.exc.OperationalError as exc:
        raise CatalogError(f"the catalog rejected a write: {exc.orig}") from exc
    return SubmissionResult(written=len(rows), replayed=False, recorded=len(item_ids))


def _drop_repeats(conn: Any, rows: list[dict[str, Any]], *, concept_id: int, round_id: int | None,
                  annotator: str) -> list[dict[str, Any]]:
    """The rows that say something new: an answer equal to this annotator's latest answer for the item in the
    same round is a repeat (a page that re-sent what was saved when the reply was lost, under a new
    submission id), not a second label. A changed answer is kept, so the history still shows every change."""
    if not rows:
        return rows
    t = labels_table
    latest: dict[int, int] = {}
    ids = sorted({int(r["item_id"]) for r in rows})
    for start in range(0, len(ids), 900):
        q = sa.select(t.c.item_id, t.c.value).where(
            t.c.concept_id == concept_id, t.c.annotator == annotator, t.c.item_id.in_(ids[start : start + 900]),
            t.c.round_id.is_(None) if round_id is None else t.c.round_id == round_id,
        ).order_by(t.c.id)
        for r in conn.execute(q):
            latest[int(r.item_id)] = int(r.value)  # ordered by id: the last one wins
    return [r for r in rows if latest.get(int(r["item_id"])) != int(r["value"])]


def replay_of(engine: sa.Engine, *, submission_id: str, concept_id: int, digest: str) -> SubmissionResult | None:
    """The result of a submission recorded before under this id (a retry), or None when the id is new.

    Raises :class:`ConflictError` when the id was used for a different body. Checked before anything that
    may have changed since the first attempt (e.g. the round going stale), so that a retry of an acknowledged
    submission is always answered "replayed", never refused."""
    with engine.connect() as conn:
        prev = conn.execute(sa.select(submissions_table).where(submissions_table.c.submission_id == submission_id)).first()
    if prev is None:
        return None
    if prev.digest != digest or prev.concept_id != concept_id:
        raise ConflictError(
            f"submission id {submission_id!r} was used before for a different set of labels; "
            "make a new id for every new submission (reuse one only to retry the same request)"
        )
    return SubmissionResult(written=0, replayed=True, recorded=int(prev.n_labels))


def skipped_items(engine: sa.Engine, round_id: int) -> set[int]:
    """Item ids skipped by anyone in submissions for a round."""
    return set(skips(engine, round_id))


def skips(engine: sa.Engine, round_id: int) -> dict[int, list[dict[str, Any]]]:
    """Who skipped which item of a round, and when: ``{item id: [{"annotator", "at"}, ...]}`` (oldest first).
    A skip writes no label; the submission that carried it is the record."""
    t = submissions_table
    out: dict[int, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        q = sa.select(t.c.skipped, t.c.annotator, t.c.created_at).where(t.c.round_id == round_id).order_by(t.c.created_at)
        for r in conn.execute(q):
            sk = r.skipped
            if isinstance(sk, str):  # pragma: no cover - drivers that hand JSON back as text
                sk = json.loads(sk)
            for i in sk or []:
                out.setdefault(int(i), []).append({"annotator": r.annotator, "at": r.created_at})
    return out
