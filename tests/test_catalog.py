"""The catalog suite: runs against SQLite and, when ASSAY_TEST_POSTGRES_URL is set, PostgreSQL."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from assay.catalog import Catalog, metadata
from assay.errors import CatalogError, InputError, NotFoundError


def _backends():
    out = ["sqlite"]
    if os.environ.get("ASSAY_TEST_POSTGRES_URL"):
        out.append("postgres")
    return out


@pytest.fixture(params=_backends())
def catalog(request, tmp_path):
    if request.param == "sqlite":
        cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
        yield cat
        cat.close()
        return
    # A fresh schema per test on the shared PostgreSQL database.
    base = os.environ["ASSAY_TEST_POSTGRES_URL"]
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(Catalog(base).url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = Catalog(base).url + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{schema}"
    cat = Catalog(url).open()
    yield cat
    cat.close()
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _row(uri, sha="a" * 64, **kw):
    return {"uri": uri, "sha256": sha, "size": 10, "width": 4, "height": 3, **kw}


def test_ids_are_stable_int64_and_ingest_is_idempotent(catalog):
    n = catalog.add_items([_row(f"/x/{i}.png", sha=f"{i:064d}") for i in range(10)])
    assert n == 10
    ids = catalog.ids()
    assert ids.dtype == np.int64 and len(ids) == 10 and len(set(ids.tolist())) == 10
    assert catalog.add_items([_row(f"/x/{i}.png", sha=f"{i:064d}") for i in range(10)]) == 0
    assert catalog.add_items([_row("/x/new.png", sha="f" * 64)]) == 1
    assert catalog.ids()[:10].tolist() == ids.tolist()
    assert catalog.count()["total"] == 11


def test_same_bytes_under_two_uris_are_exact_duplicates(catalog):
    catalog.add_items([_row("/a.png", sha="1" * 64), _row("/b.png", sha="2" * 64)])
    catalog.add_items([_row("/c.png", sha="1" * 64), _row("/d.png", sha="1" * 64)])
    a, c, d = (catalog.id_for_uri(u) for u in ("/a.png", "/c.png", "/d.png"))
    assert catalog.duplicate_map() == {c: a, d: a}
    assert catalog.count()["exact_duplicates"] == 2
    assert catalog.get(a).duplicate_of is None


def test_bulk_write_is_batched_and_reads_preserve_order(catalog):
    rows = [_row(f"/bulk/{i}.png", sha=f"{i:064x}", meta={"label": i % 3}) for i in range(12000)]
    assert catalog.add_items(rows) == 12000
    ids = catalog.ids()
    pick = ids[[5, 3, 11999, 0]]
    got = catalog.get_many(pick)
    assert [g.id for g in got] == pick.tolist()
    assert got[0].meta == {"label": 5 % 3}
    assert catalog.uris(pick[:2]) == {int(pick[0]): "/bulk/5.png", int(pick[1]): "/bulk/3.png"}


def test_errors_are_recorded_with_reason(catalog):
    catalog.add_items([_row("/e1.png", sha="3" * 64), _row("/e2.png", sha=None, status="error", error="missing file")])
    i1 = catalog.id_for_uri("/e1.png")
    catalog.mark_errors([(i1, "truncated image")])
    c = catalog.count()
    assert c["error"] == 2 and c["ok"] == 0
    reasons = {u: r for _, u, r in catalog.error_reasons()}
    assert reasons == {"/e1.png": "truncated image", "/e2.png": "missing file"}


def test_bad_input_and_unknown_ids(catalog):
    with pytest.raises(InputError, match="uri"):
        catalog.add_items([{"uri": ""}])
    with pytest.raises(InputError, match="status"):
        catalog.add_items([_row("/s.png", status="weird")])
    with pytest.raises(NotFoundError, match="12345"):
        catalog.get(12345)


def test_bad_url_and_unreachable_database(tmp_path):
    with pytest.raises(InputError, match="catalog URL"):
        Catalog("not a url")
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        Catalog("postgresql://nobody:x@127.0.0.1:1/none").open()


def test_schema_has_the_expected_tables():
    assert {"items", "sources", "assay_meta"} <= set(metadata.tables)


def test_near_duplicate_groups_replace_and_non_representatives(catalog):
    catalog.add_items([_row(f"/n/{i}.png", sha=f"{i:064d}") for i in range(6)])
    catalog.add_items([_row("/n/copy.png", sha=f"{0:064d}")])  # an exact duplicate of item 1
    ids = catalog.ids()
    a, b, c, d, e, f, copy = ids.tolist()
    assert catalog.replace_duplicate_groups({a: [a, b, c], d: [d, e]}, method="embedding", threshold=0.95) == 5
    assert catalog.duplicate_groups() == {a: [a, b, c], d: [d, e]}
    assert catalog.non_representative_ids().tolist() == sorted([b, c, e, copy])
    # Incremental: recomputing the grouping of d, e, f replaces only their rows.
    catalog.replace_duplicate_groups({f: [e, f]}, method="embedding", items=[d, e, f])
    assert catalog.duplicate_groups() == {a: [a, b, c], f: [e, f]}
    # Regrouping only some items (a dedup of one encoder's items) leaves the other groups alone, and a group
    # left with its representative alone is no group.
    catalog.replace_duplicate_groups({}, method="embedding", items=[b, c])
    assert catalog.duplicate_groups() == {f: [e, f]}
    catalog.replace_duplicate_groups({a: [a, b]}, method="phash", items=[a, b])
    assert catalog.duplicate_groups() == {a: [a, b], f: [e, f]}
    # A full replacement clears everything else.
    catalog.replace_duplicate_groups({}, method="embedding")
    assert catalog.duplicate_groups() == {}
    assert catalog.non_representative_ids().tolist() == [copy]


def test_a_concept_and_its_exemplar_labels_are_written_together(catalog):
    catalog.add_items([_row(f"/x/{i}.png", sha=f"{i:064d}") for i in range(4)])
    a, b = catalog.ids()[:2].tolist()
    c = catalog.add_concept("red", text="red things", exemplars=[a, b, a], exemplar_annotator="exemplar")
    ids, vals = catalog.current_labels(c.id)
    assert sorted(ids.tolist()) == sorted([a, b]) and vals.tolist() == [1, 1]
    # an unknown exemplar id leaves neither the concept nor any label behind
    with pytest.raises(NotFoundError, match="exemplar"):
        catalog.add_concept("blue", exemplars=[a, 10**12], exemplar_annotator="exemplar")
    assert [x.name for x in catalog.concepts()] == ["red"]


def test_an_ingest_racing_another_one_adds_only_what_the_other_did_not(catalog, monkeypatch):
    # The other ingest commits /x/1 and /x/2 after this one checked which URIs exist: the unique URI
    # refuses this batch, which is tried again without them instead of failing.
    other = [_row(f"/x/{i}.png", sha=f"{i:064d}") for i in (1, 2)]
    real = catalog.existing_uris
    calls = {"n": 0}

    def stale_then_real(uris):
        calls["n"] += 1
        if calls["n"] == 1:
            got = real(uris)
            catalog.add_items(other)  # what the other process commits meanwhile
            return got
        return real(uris)

    monkeypatch.setattr(catalog, "existing_uris", stale_then_real)
    n = catalog.add_items([_row(f"/x/{i}.png", sha=f"{i:064d}") for i in range(5)])
    monkeypatch.undo()
    assert n == 3 and catalog.count()["total"] == 5
    assert sorted(catalog.uris(catalog.ids()).values()) == sorted(f"/x/{i}.png" for i in range(5))
