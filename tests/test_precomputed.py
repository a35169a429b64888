from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assay import Workspace, import_embeddings, ingest
from assay.errors import InputError, NotFoundError

from conftest import write_images


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws")
    write_images(tmp_path / "imgs", 6)
    ingest(w.catalog, [tmp_path / "imgs"])
    yield w
    w.close()


def _vecs(n, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_npy_shards_with_ids(ws, tmp_path):
    ids = ws.catalog.ids()
    x = _vecs(6)
    np.save(tmp_path / "a.npy", x[:4])
    np.save(tmp_path / "a.ids.npy", ids[:4])
    np.save(tmp_path / "b.npy", x[4:].astype(np.float16))
    np.save(tmp_path / "b.ids.npy", ids[4:])
    rep = import_embeddings(ws, str(tmp_path / "*.npy"))
    assert rep.embedded == 6 and rep.dim == 8
    got = ws.vectors("precomputed").get(ids)
    assert np.allclose(got, x / np.linalg.norm(x, axis=1, keepdims=True), atol=2e-3)
    assert ws.status()["embeddings"] == {"precomputed": 6}
    # Importing again adds nothing.
    assert import_embeddings(ws, str(tmp_path / "*.npy")).embedded == 0


def test_clip_retrieval_layout_with_uris(ws, tmp_path):
    root = tmp_path / "cr"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    uris = [r.uri for r in ws.catalog.get_many(ws.catalog.ids())]
    x = _vecs(6, 16)
    np.save(root / "img_emb" / "img_emb_0.npy", x[:3])
    np.save(root / "img_emb" / "img_emb_1.npy", x[3:])
    pq.write_table(pa.table({"image_path": uris[:3]}), root / "metadata" / "metadata_0.parquet")
    pq.write_table(pa.table({"image_path": uris[3:]}), root / "metadata" / "metadata_1.parquet")
    rep = import_embeddings(ws, root, name="precomputed:clip-l14")
    assert rep.embedded == 6
    assert ws.vectors("precomputed:clip-l14").dim == 16


def test_parquet_with_embedding_column(ws, tmp_path):
    ids = ws.catalog.ids()
    x = _vecs(6, 4)
    pq.write_table(pa.table({"id": ids, "embedding": x.tolist()}), tmp_path / "e.parquet")
    assert import_embeddings(ws, tmp_path / "e.parquet").embedded == 6


def test_parquet_uris_are_spelled_as_ingest_spells_them(ws, tmp_path):
    rows = ws.catalog.get_many(ws.catalog.ids())
    sub = tmp_path / "emb"
    sub.mkdir()
    import os

    spellings = [
        Path(rows[0].uri).as_uri(),                             # file://
        os.path.relpath(rows[1].uri, sub),                       # relative to the Parquet's folder
        str(Path(rows[2].uri).parent / ".." / Path(rows[2].uri).parent.name / Path(rows[2].uri).name),  # with ..
        rows[3].uri, rows[4].uri, rows[5].uri,
    ]
    pq.write_table(pa.table({"uri": spellings, "embedding": _vecs(6, 4).tolist()}), sub / "e.parquet")
    rep = import_embeddings(ws, sub / "e.parquet")
    assert rep.embedded == 6 and sorted(ws.vectors("precomputed").ids().tolist()) == sorted(r.id for r in rows)


def test_parquet_problems_are_named_by_row(ws, tmp_path):
    ids = ws.catalog.ids()
    x = _vecs(6, 4)
    cases = {
        "nullid": (pa.table({"id": pa.array([int(ids[0]), None] + [int(i) for i in ids[2:]], pa.int64()),
                             "embedding": x.tolist()}), r"row 1: the id is empty"),
        "floatid": (pa.table({"id": [float(i) + 0.5 for i in ids], "embedding": x.tolist()}), "integer item ids"),
        "empty": (pa.table({"id": pa.array([], pa.int64()), "embedding": pa.array([], pa.list_(pa.float32()))}),
                  "holds no rows"),
        "binary": (pa.table({"id": ids, "embedding": [b"\x00" * 4000] * 6}), "must hold lists of numbers"),
        "ragged": (pa.table({"id": ids, "embedding": [[1.0, 2.0]] * 5 + [[1.0]]}), "row 5 has 1"),
        "nullvec": (pa.table({"id": ids, "embedding": [[1.0, 2.0]] * 5 + [None]}), "row 5: the embedding is empty"),
    }
    for name, (table, match) in cases.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        with pytest.raises(InputError, match=match) as exc:
            import_embeddings(ws, tmp_path / f"{name}.parquet")
        assert len(str(exc.value)) < 400, name  # no dump of the column
    assert not ws.vectors("precomputed").exists()


def test_reimport_and_failed_items_are_reported(ws, tmp_path, caplog):
    from assay import ingest as _ingest

    ids = ws.catalog.ids()
    np.save(tmp_path / "a.npy", _vecs(6))
    np.save(tmp_path / "a.ids.npy", ids)
    import_embeddings(ws, tmp_path / "a.npy")
    before = ws.vectors("precomputed").get(ids)
    np.save(tmp_path / "b.npy", _vecs(6, seed=9))
    np.save(tmp_path / "b.ids.npy", ids)
    with caplog.at_level("WARNING"):
        rep = import_embeddings(ws, tmp_path / "b.npy")
    assert rep.embedded == 0 and "6 rows of the import are already stored" in caplog.text and "--reset" in caplog.text
    np.testing.assert_array_equal(ws.vectors("precomputed").get(ids), before)
    # items whose files failed at ingest: stored, but the user hears they will never be indexed
    (tmp_path / "gone.csv").write_text("uri\n/nowhere/a.png\n/nowhere/b.png\n")
    _ingest(ws.catalog, [tmp_path / "gone.csv"])
    bad = ws.catalog.ids(status="error")
    np.save(tmp_path / "c.npy", _vecs(2))
    np.save(tmp_path / "c.ids.npy", bad)
    caplog.clear()
    with caplog.at_level("WARNING"):
        import_embeddings(ws, tmp_path / "c.npy")
    assert "2 imported ids are items whose files failed at ingest" in caplog.text


def test_every_check_fails_before_writing(ws, tmp_path):
    ids = ws.catalog.ids()
    x = _vecs(6)
    bad = x.copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "nan.ids.npy", ids)
    with pytest.raises(InputError, match="row 2 holds NaN"):
        import_embeddings(ws, tmp_path / "nan.npy")
    np.save(tmp_path / "unk.npy", x)
    np.save(tmp_path / "unk.ids.npy", ids + 1000)
    with pytest.raises(InputError, match="not in the catalog"):
        import_embeddings(ws, tmp_path / "unk.npy")
    np.save(tmp_path / "shape.npy", x[:, :, None])
    np.save(tmp_path / "shape.ids.npy", ids)
    with pytest.raises(InputError, match="2-D"):
        import_embeddings(ws, tmp_path / "shape.npy")
    np.save(tmp_path / "ints.npy", np.ones((6, 3), dtype=np.int32))
    np.save(tmp_path / "ints.ids.npy", ids)
    with pytest.raises(InputError, match="dtype"):
        import_embeddings(ws, tmp_path / "ints.npy")
    np.save(tmp_path / "count.npy", x[:5])
    np.save(tmp_path / "count.ids.npy", ids)
    with pytest.raises(InputError, match="5 vectors but 6 ids"):
        import_embeddings(ws, tmp_path / "count.npy")
    np.save(tmp_path / "noids.npy", x)
    with pytest.raises(InputError, match="no ids file"):
        import_embeddings(ws, tmp_path / "noids.npy")
    (tmp_path / "junk.npy").write_bytes(b"this is not numpy at all" * 10)  # numpy would call it a pickle
    np.save(tmp_path / "junk.ids.npy", ids)
    with pytest.raises(InputError, match="not a .npy file"):
        import_embeddings(ws, tmp_path / "junk.npy")
    with pytest.raises(NotFoundError):
        import_embeddings(ws, tmp_path / "absent.npy")
    assert not ws.vectors("precomputed").exists()


def test_a_workspace_with_only_precomputed_embeddings_harvests_and_exports_with_encoder(tmp_path):
    import json

    from typer.testing import CliRunner

    from assay.cli.main import app

    w = Workspace.init(tmp_path / "ws")  # default encoder efficientnet-lite0: never embedded here
    write_images(tmp_path / "imgs", 30)
    ingest(w.catalog, [tmp_path / "imgs"])
    ids = w.catalog.ids()
    x = _vecs(30, d=16)
    x[:10] += 3.0  # ten alike
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "e.ids.npy", ids)
    import_embeddings(w, str(tmp_path / "e.npy"))
    w.close()
    run = lambda *a: CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), *a], catch_exceptions=False)  # noqa: E731
    assert run("index", "--encoder", "precomputed").exit_code == 0
    assert run("concept", "add", "pos").exit_code == 0
    (tmp_path / "l.csv").write_text("id,label\n" + "".join(f"{int(i)},{int(k < 3)}\n" for k, i in
                                                          enumerate(list(ids[:3]) + list(ids[20:25]))))
    assert run("label", "pos", "--file", str(tmp_path / "l.csv")).exit_code == 0
    r = run("harvest", "pos", "--top", "5")
    assert r.exit_code != 0 and "holds embeddings of precomputed (30 rows)" in " ".join(r.output.split())
    r = run("harvest", "pos", "--top", "5", "--encoder", "precomputed", "--json")
    assert r.exit_code == 0, r.output
    got = [row["id"] for row in json.loads(r.stdout)["items"]]
    assert len(got) == 5 and set(got) <= set(ids[:10].tolist())
    r = run("export", "pos", "--format", "csv", "--out", str(tmp_path / "x.csv"), "--top", "4")
    assert r.exit_code != 0 and "--encoder" in r.output
    r = run("export", "pos", "--format", "csv", "--out", str(tmp_path / "x.csv"), "--top", "4", "--encoder", "precomputed")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "x.csv").read_text().strip().splitlines()) == 1 + 8 + 4


def test_an_index_of_only_failed_items_says_it_is_empty(tmp_path, caplog):
    from typer.testing import CliRunner

    from assay import ingest as _ingest
    from assay.cli.main import app
    from assay.search import build_index

    w = Workspace.init(tmp_path / "ws")
    (tmp_path / "gone.csv").write_text("uri\n/nowhere/a.png\n/nowhere/b.png\n")
    _ingest(w.catalog, [tmp_path / "gone.csv"])
    np.save(tmp_path / "e.npy", _vecs(2))
    np.save(tmp_path / "e.ids.npy", w.catalog.ids(status="error"))
    import_embeddings(w, tmp_path / "e.npy")
    with caplog.at_level("WARNING"):
        build_index(w, "precomputed")
    assert "holds no vectors" in caplog.text and "2 are items whose files failed" in caplog.text
    w.close()
    r = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "search", "--encoder", "precomputed", "--item", "1"])
    assert "no results" in r.output
