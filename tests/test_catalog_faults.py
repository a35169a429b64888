"""Catalog faults: a database unreachable at start fails fast and clearly; a connection lost mid-run is
retried and loses nothing acknowledged. PostgreSQL cases need ASSAY_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from assay.catalog import Catalog
from assay.errors import CatalogError

PG = os.environ.get("ASSAY_TEST_POSTGRES_URL")
postgres = pytest.mark.skipif(not PG, reason="set ASSAY_TEST_POSTGRES_URL to run the PostgreSQL fault tests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_at_start_fails_fast_with_a_clear_redacted_message():
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(CatalogError) as err:
        Catalog(f"postgresql://alice:s3cret-pw@127.0.0.1:{port}/corpus").open()
    elapsed = time.perf_counter() - t0
    msg = str(err.value)
    assert elapsed < 10, f"took {elapsed:.1f} s to give up"
    assert "cannot open the catalog" in msg and f"127.0.0.1:{port}" in msg
    assert "s3cret-pw" not in msg and "***" in msg
    assert "'corpus'" in msg and "'alice'" in msg and "running" in msg


def _inject_failures(engine: sa.Engine, times: int, when: str = "INSERT INTO labels",
                     message: str = "disk I/O error (injected)"):
    """Make the next ``times`` statements starting with ``when`` fail as a lost connection would."""
    left = {"n": times}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def fail(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith(when.upper()) and left["n"] > 0:
            left["n"] -= 1
            raise sqlite3.OperationalError(message)

    return left


def _labels_setup(cat: Catalog) -> tuple[int, np.ndarray]:
    cat.add_items([{"uri": f"/f/{i}.png"} for i in range(50)])
    c = cat.add_concept("cat")
    return c.id, cat.ids()


def test_a_transient_failure_mid_call_is_retried_and_nothing_is_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(Catalog, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    cid, ids = _labels_setup(cat)
    left = _inject_failures(cat.engine, 2)
    assert cat.add_labels(cid, ids[:10], [1, 0] * 5, source="human") == 10
    assert left["n"] == 0  # both injected failures happened and were retried
    got_ids, got_vals = cat.current_labels(cid)
    assert got_ids.tolist() == ids[:10].tolist() and got_vals.tolist() == [1, 0] * 5
    assert len(cat.label_history(cid)) == 10  # the failed attempts rolled back: no duplicates
    cat.close()


def test_retries_are_bounded_and_then_name_the_call(tmp_path, monkeypatch):
    monkeypatch.setattr(Catalog, "RETRY_DELAYS", (0.01, 0.01))
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    cid, ids = _labels_setup(cat)
    _inject_failures(cat.engine, 100)
    with pytest.raises(CatalogError, match=r"failed during add_labels after 3 attempts.*injected"):
        cat.add_labels(cid, ids[:3], [1, 1, 1], source="human")
    assert cat.current_labels(cid)[0].size == 0
    cat.close()


@pytest.mark.parametrize("message, hint", [
    ("attempt to write a readonly database", "read-only"),
    ("database or disk is full", "disk is full"),
    ("database disk image is malformed", "damaged"),
])
def test_a_failure_no_retry_can_fix_is_reported_at_once_with_what_to_do(tmp_path, monkeypatch, message, hint):
    monkeypatch.setattr(Catalog, "RETRY_DELAYS", (0.01, 0.01))
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    cid, ids = _labels_setup(cat)
    left = _inject_failures(cat.engine, 100, message=message)
    with pytest.raises(CatalogError, match=rf"refused add_labels: {message}; .*{hint}"):
        cat.add_labels(cid, ids[:3], [1, 1, 1], source="human")
    assert left["n"] == 99  # one attempt: not retried
    assert cat.current_labels(cid)[0].size == 0
    cat.close()


# ------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def pg_catalog():
    schema = "f_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(Catalog(PG).url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = Catalog(PG).url + ("&" if "?" in PG else "?") + f"options=-csearch_path%3D{schema}&application_name={schema}"
    cat = Catalog(url).open()
    yield cat, admin, schema
    cat.close()
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _terminate(admin: sa.Engine, app: str) -> int:
    with admin.begin() as conn:
        return int(conn.execute(
            sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"), {"a": app}
        ).scalar())


@postgres
@pytest.mark.postgres
def test_postgres_backends_killed_between_calls_are_replaced(pg_catalog):
    cat, admin, app = pg_catalog
    cid, ids = _labels_setup(cat)
    cat.add_labels(cid, ids[:5], [1] * 5, source="human")
    assert _terminate(admin, app) >= 1  # every pooled connection of the catalog is gone
    cat.add_labels(cid, ids[5:10], [0] * 5, source="human")
    got, vals = cat.current_labels(cid)
    assert got.tolist() == ids[:10].tolist() and vals.tolist() == [1] * 5 + [0] * 5


@postgres
@pytest.mark.postgres
def test_postgres_connection_dropped_during_a_write_is_retried(pg_catalog, monkeypatch):
    monkeypatch.setattr(Catalog, "RETRY_DELAYS", (0.05, 0.1, 0.2))
    cat, admin, app = pg_catalog
    cid, ids = _labels_setup(cat)
    left = {"n": 1}

    @sa.event.listens_for(cat.engine, "before_cursor_execute")
    def kill_own_backend(conn, cursor, statement, params, context, executemany):
        if "INSERT INTO labels" in statement and left["n"] > 0:
            left["n"] -= 1
            _terminate(admin, app)  # the server drops this very connection, mid-transaction

    assert cat.add_labels(cid, ids[:20], [1] * 20, source="oracle") == 20
    assert left["n"] == 0
    got, vals = cat.current_labels(cid)
    assert got.tolist() == ids[:20].tolist() and (vals == 1).all()
    assert len(cat.label_history(cid)) == 20
    assert cat.count()["total"] == 50


def test_a_failure_after_a_commit_is_not_retried_so_nothing_is_written_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(Catalog, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    cid, ids = _labels_setup(cat)
    # add_round commits the round, then reads it back: fail that read as a lost connection would.
    left = _inject_failures(cat.engine, 1, when="SELECT rounds.id")
    with pytest.raises(CatalogError, match="after its write was committed"):
        cat.add_round(cid, strategy="random", params={}, encoder=None, encoder_version=None, proxy={},
                      pool_size=None, scanned_fraction=None, seconds={},
                      proposals=[{"item_id": int(ids[0]), "rank": 0, "score": 0.0, "prelabel": None, "reason": "x"}])
    assert left["n"] == 0
    assert len(cat.rounds(cid)) == 1  # recorded once, not once per attempt
    cat.close()


def test_a_one_shot_iterator_argument_survives_a_retry(tmp_path, monkeypatch):
    monkeypatch.setattr(Catalog, "RETRY_DELAYS", (0.01, 0.01))
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    cat.add_items([{"uri": f"/f/{i}.png"} for i in range(5)])
    ids = cat.ids()
    left = _inject_failures(cat.engine, 1, when="UPDATE items")
    assert cat.mark_errors((int(i), "bad") for i in ids[:3]) == 3
    assert left["n"] == 0 and cat.count()["error"] == 3
    cat.close()


def test_a_workspace_whose_catalog_is_unreachable_fails_once_not_twice(tmp_path, monkeypatch):
    from assay import Workspace

    Workspace.init(tmp_path / "ws").close()
    port = _free_port()
    monkeypatch.setenv("ASSAY_CATALOG_URL", f"postgresql://alice:pw@127.0.0.1:{port}/corpus")
    ws = Workspace(tmp_path / "ws")
    opens = {"n": 0}
    real_open = Catalog.open

    def counting_open(self):
        opens["n"] += 1
        return real_open(self)

    monkeypatch.setattr(Catalog, "open", counting_open)
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        ws.catalog  # the identity check meets the unreachable database: its error, at once
    assert opens["n"] == 1


def test_a_deleted_sqlite_catalog_is_named_missing_and_not_recreated(tmp_path):
    from assay import Workspace
    from assay.errors import WorkspaceError

    Workspace.init(tmp_path / "ws").close()
    (tmp_path / "ws" / "catalog.db").unlink()
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="catalog .* is missing"):
        ws.catalog
    assert not (tmp_path / "ws" / "catalog.db").exists()  # no empty stand-in was made


@postgres
@pytest.mark.postgres
def test_a_round_lock_on_postgres_makes_other_clients_of_the_catalog_wait(pg_catalog):
    import threading

    from assay.catalog import ROUND_LOCK

    cat, _admin, _schema = pg_catalog
    other = Catalog(cat.url).open()  # another workspace (another process) on the same catalog
    order: list[str] = []
    with cat.advisory_lock(ROUND_LOCK, 7):
        with cat.advisory_lock(ROUND_LOCK, 7):  # re-entrant in this thread
            pass

        def second():
            with other.advisory_lock(ROUND_LOCK, 7):
                order.append("second")
            with other.advisory_lock(ROUND_LOCK, 8):  # another concept's lock is free
                order.append("other concept")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first releases")
    t.join(10)
    assert order == ["first releases", "second", "other concept"]
    other.close()


def test_the_round_lock_on_sqlite_is_a_file_lock_beside_the_database(tmp_path):
    import subprocess
    import sys
    import threading

    from assay.catalog import ROUND_LOCK

    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    with cat.advisory_lock(ROUND_LOCK, 1), cat.advisory_lock(ROUND_LOCK, 1):  # re-entrant in a thread
        # another process (another workspace on this catalog file) waits for it
        code = ("import sys, time; from assay.catalog import Catalog, ROUND_LOCK\n"
                f"c = Catalog('sqlite:///{tmp_path / 'c.db'}').open(); t = time.time()\n"
                "with c.advisory_lock(ROUND_LOCK, 1): print(round(time.time() - t, 2))\n")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        threading.Event().wait(3.0)
    waited = float(proc.communicate(timeout=30)[0].strip())
    assert waited >= 1.0
    assert any(p.name.startswith(".c.db.lock-") for p in tmp_path.iterdir())
    cat.close()
