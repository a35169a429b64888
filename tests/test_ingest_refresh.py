"""Re-ingest brings the catalog up to date with the files: gone, changed, still failing, differing rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fake_encoder  # noqa: F401
from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.search import Searcher, build_index
from assay.workspace import CHANGED_IDS_FILE

from conftest import write_images


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    yield w
    w.close()


def _solid(path, colour, size=(16, 16)):
    Image.new("RGB", size, colour).save(path)


def test_a_deleted_file_becomes_missing_and_is_revived_when_put_back(ws, tmp_path):
    paths = write_images(tmp_path / "imgs", 6, size=(16, 16))
    ingest(ws.catalog, [tmp_path / "imgs"])
    embed(ws)
    build_index(ws, kind="flat")
    gone = paths[2]
    kept = tmp_path / "kept.png"
    shutil.move(gone, kept)
    rep = ingest(ws, [tmp_path / "imgs"])
    assert (rep.missing, rep.new, rep.changed) == (1, 0, 0)
    gone_id = ws.catalog.id_for_uri(str(gone))
    row = ws.catalog.get(gone_id)
    assert row.status == "error" and row.error.startswith("missing file")
    build_index(ws)  # the index drops items that are not ok
    hits = Searcher(ws).search(item=int(ws.catalog.ids()[0]), k=10)
    assert gone_id not in [h.id for h in hits] and len(hits) == 4
    # Put back: the next ingest revives it, and nothing else changes.
    shutil.move(kept, gone)
    rep = ingest(ws, [tmp_path / "imgs"])
    assert (rep.revived, rep.missing, rep.new) == (1, 0, 0)
    assert ws.catalog.get(gone_id).status == "ok"


def test_a_file_named_by_a_manifest_that_is_gone_becomes_missing(ws, tmp_path):
    paths = write_images(tmp_path / "imgs", 3, size=(16, 16))
    (tmp_path / "m.csv").write_text("uri\n" + "".join(f"imgs/{p.name}\n" for p in paths))
    ingest(ws.catalog, [tmp_path / "m.csv"])
    paths[0].unlink()
    rep = ingest(ws.catalog, [tmp_path / "m.csv"])
    assert rep.missing == 1 and rep.already_present == 3
    assert ws.catalog.count()["error"] == 1


def test_a_replaced_file_gets_its_new_hash_and_its_stale_embedding_is_dropped(ws, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _solid(folder / "a.png", (200, 10, 10))
    shutil.copy(folder / "a.png", folder / "b.png")  # b is an exact duplicate of a
    _solid(folder / "c.png", (10, 10, 200))
    ingest(ws.catalog, [folder])
    b_id = ws.catalog.id_for_uri(str(folder / "b.png"))
    assert ws.catalog.get(b_id).duplicate_of is not None
    embed(ws)
    build_index(ws, kind="flat")
    old_vec = ws.vectors().get([b_id])[0]
    _solid(folder / "b.png", (10, 200, 10), size=(20, 18))  # replaced: other bytes, other size
    rep = ingest(ws, [folder])
    assert (rep.changed, rep.changed_ids, rep.embeddings_dropped, rep.new) == (1, [b_id], 1, 0)
    row = ws.catalog.get(b_id)
    assert (row.width, row.height, row.duplicate_of, row.status) == (20, 18, None, "ok")
    assert not ws.vectors().contains(np.array([b_id]))[0]
    # Until the index is rebuilt, search leaves the changed item out (its old vector is still indexed).
    assert (ws.index_dir() / CHANGED_IDS_FILE).exists()
    hits = Searcher(ws).search(vector=old_vec, k=3)
    assert b_id not in [h.id for h in hits]
    assert ws.status()["indexes"]["test-mean-color"]["up_to_date"] is False
    assert ws.status()["pending"]["test-mean-color"] == 1
    embed(ws)
    report = build_index(ws)
    assert "changed" in report.get("rebuilt_because", "")
    assert not (ws.index_dir() / CHANGED_IDS_FILE).exists()
    new_vec = ws.vectors().get([b_id])[0]
    assert not np.allclose(new_vec, old_vec)
    top = Searcher(ws).search(vector=new_vec, k=1)[0]
    assert top.id == b_id and top.score == pytest.approx(1.0, abs=1e-3)
    assert ws.status()["indexes"]["test-mean-color"]["up_to_date"] is True


def test_an_edit_of_the_same_size_needs_verify(ws, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    p = folder / "x.bmp"  # BMP: the size depends on the dimensions only
    _solid(p, (1, 2, 3))
    ingest(ws.catalog, [folder])
    size = p.stat().st_size
    _solid(p, (200, 100, 50))
    assert p.stat().st_size == size
    assert ingest(ws.catalog, [folder]).changed == 0
    rep = ingest(ws.catalog, [folder], verify=True)
    assert rep.changed == 1
    assert ws.catalog.get(rep.changed_ids[0]).sha256 == __import__("hashlib").sha256(p.read_bytes()).hexdigest()


def test_rows_whose_text_or_metadata_changed_are_reported_and_the_catalog_keeps_its_own(ws, tmp_path, caplog):
    m = tmp_path / "t.csv"
    m.write_text("text,label\nalpha sentence,a\nbeta sentence,b\n")
    ingest(ws.catalog, [m])
    m.write_text("text,label\nNEW first sentence,n\nalpha sentence,a\nbeta sentence,b\n")
    rep = ingest(ws.catalog, [m])
    assert (rep.new, rep.already_present, rep.differing, rep.differing_by_row) == (1, 2, 2, 2)
    assert any("row 1" in s and "text" in s for s in rep.differing_samples)
    texts = sorted(r.text for r in ws.catalog.get_many(ws.catalog.ids()))
    assert texts == ["alpha sentence", "beta sentence", "beta sentence"]  # the catalog keeps what it had
    # With an id column, a moved row is the same item and an edited label is reported.
    m2 = tmp_path / "ids.csv"
    m2.write_text("id,text,label\n1,one,x\n2,two,y\n")
    ingest(ws.catalog, [m2])
    m2.write_text("id,text,label\n2,two,z\n1,one,x\n")
    rep = ingest(ws.catalog, [m2])
    assert (rep.new, rep.differing) == (0, 1) and "metadata label" in rep.differing_samples[0]


def test_items_that_still_fail_are_counted(ws, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "junk.jpg").write_bytes(b"not an image")
    assert ingest(ws.catalog, [folder]).errors == 2
    rep = ingest(ws.catalog, [folder])
    assert (rep.errors, rep.still_failing, rep.revived) == (0, 2, 0)


def test_ingest_takes_one_path_as_well_as_a_list(ws, tmp_path):
    write_images(tmp_path / "imgs", 2)
    assert ingest(ws.catalog, str(tmp_path / "imgs")).new == 2
    assert ingest(ws.catalog, tmp_path / "imgs").already_present == 2


def test_search_warns_when_the_store_lost_embeddings_since_the_index(ws, tmp_path, caplog):
    write_images(tmp_path / "imgs", 8, size=(16, 16))
    ingest(ws.catalog, [tmp_path / "imgs"])
    embed(ws)
    build_index(ws, kind="flat")
    embed(ws, reset=True, limit=3)
    with caplog.at_level("WARNING"):
        Searcher(ws).search(item=int(ws.catalog.ids()[0]), k=2)
    assert "the store holds 3 now" in caplog.text


def test_cli_status_lists_pending_index_state_and_every_error(ws, tmp_path):
    write_images(tmp_path / "imgs", 3)
    for i in range(7):
        (tmp_path / "imgs" / f"bad{i}.png").write_bytes(b"")
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    r = runner.invoke(app, [*w, "ingest", str(tmp_path / "imgs")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*w, "status"])
    assert "pending    test-mean-color: 3 ok items not embedded yet" in r.output
    assert "... and 2 more (`assay status --errors` lists them all)" in r.output
    r = runner.invoke(app, [*w, "status", "--errors", "--json"])
    errs = json.loads(r.output)["errors"]
    assert len(errs) == 7 and all(e["reason"] for e in errs)
    assert runner.invoke(app, [*w, "embed"]).exit_code == 0
    assert runner.invoke(app, [*w, "index"]).exit_code == 0
    st = json.loads(runner.invoke(app, [*w, "status", "--json"]).output)
    assert st["pending"] == {"test-mean-color": 0}
    assert st["indexes"]["test-mean-color"] == {"vectors": 3, "built_on": 3, "up_to_date": True}
    # A replaced file, through the CLI: reported, its embedding dropped.
    _solid(tmp_path / "imgs" / "img_000.png", (5, 5, 5), size=(30, 30))
    r = runner.invoke(app, [*w, "ingest", str(tmp_path / "imgs")])
    assert "1 files changed since they were ingested" in r.output and "1 stale embeddings were dropped" in r.output
    assert "of concept" not in r.output  # no concept uses it
    assert "7 items that had failed still fail" in r.output


def test_a_symlink_to_a_folder_of_the_walk_does_not_take_its_files(ws, tmp_path):
    root = tmp_path / "photos"
    write_images(root / "variants", 3)
    (root / "a_link").symlink_to(root / "variants", target_is_directory=True)  # sorts before "variants"
    rep = ingest(ws.catalog, [root])
    assert rep.new == 3
    uris = sorted(r.uri for r in ws.catalog.get_many(ws.catalog.ids()))
    assert all("/variants/" in u for u in uris)
    assert any("a_link: folder already walked" in s for s in rep.skipped_rows)
    assert ingest(ws.catalog, [root / "variants"]).new == 0


def test_manifest_quirks_binary_uris_rows_without_text_tsv_and_repeated_columns(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from assay.errors import InputError

    paths = write_images(tmp_path / "imgs", 3)
    noext = tmp_path / "imgs" / "blob"
    noext.write_bytes(paths[2].read_bytes())
    pq.write_table(pa.table({"uri": pa.array([f"imgs/{paths[0].name}".encode()], pa.binary())}), tmp_path / "b.parquet")
    assert ingest(ws.catalog, [tmp_path / "b.parquet"]).new == 1
    assert ws.catalog.id_for_uri(str(paths[0])) is not None
    # In a manifest with a text column, a row with a uri and no text is an image, whatever its name.
    (tmp_path / "mixed.csv").write_text("uri,text\nimgs/blob,\n,a text item\n")
    assert ingest(ws.catalog, [tmp_path / "mixed.csv"]).new == 2
    (tmp_path / "nulls.jsonl").write_text('{"uri": null, "text": null}\n{"uri": "", "text": "x"}\n')
    rep = ingest(ws.catalog, [tmp_path / "nulls.jsonl"])
    assert rep.new == 1 and rep.skipped_rows == [f"{tmp_path / 'nulls.jsonl'} row 1: no uri and no text"]
    row = ws.catalog.get(ws.catalog.id_for_uri(str(noext)))
    assert (row.modality, row.status, row.format) == ("image", "ok", "PNG")
    (tmp_path / "m.tsv").write_text(f"uri\tlabel\nimgs/{paths[1].name}\tcat, black\n")
    rep = ingest(ws.catalog, [tmp_path / "m.tsv"])
    assert rep.new == 1
    assert ws.catalog.get(ws.catalog.id_for_uri(str(paths[1]))).meta == {"label": "cat, black"}
    (tmp_path / "dup.csv").write_text(f"uri,label,label\nimgs/{paths[1].name},a,b\n")
    with pytest.raises(InputError, match=r"column\(s\) \['label'\] more than once"):
        ingest(ws.catalog, [tmp_path / "dup.csv"])


def test_a_huge_image_is_refused_with_assay_s_limit_in_the_message():
    import struct
    import zlib

    from assay.errors import DecodeError
    from assay.media import probe_image

    def png(w, h):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")

    with pytest.raises(DecodeError, match=r"decompression bomb refused: 1,600 Mpx is above the limit of 150 Mpx"):
        probe_image(png(40000, 40000))


def test_searching_a_text_item_with_an_image_encoder_names_the_modality(tmp_path):
    from assay.errors import NotFoundError

    w = Workspace.init(tmp_path / "ws2", default_encoder="test-dense-color")
    write_images(tmp_path / "imgs", 3, size=(16, 16))
    (tmp_path / "t.csv").write_text("text\nhello\n")
    ingest(w.catalog, [tmp_path / "imgs", tmp_path / "t.csv"])
    embed(w)
    build_index(w, kind="flat")
    text_id = int(w.catalog.ids(modality="text")[0])
    with pytest.raises(NotFoundError, match=r"are text items and 'test-dense-color' embeds image only"):
        Searcher(w).search(item=text_id, k=2)
    w.close()


def test_a_workspace_refuses_another_workspace_s_catalog(tmp_path, monkeypatch):
    from assay.errors import WorkspaceError

    a = Workspace.init(tmp_path / "a", default_encoder="test-mean-color")
    b = Workspace.init(tmp_path / "b", default_encoder="test-mean-color")
    write_images(tmp_path / "imgs", 3, size=(16, 16))
    ingest(b.catalog, [tmp_path / "imgs"])
    embed(b)
    a.close()
    b.close()
    assert json.loads((tmp_path / "a" / "assay.json").read_text())["catalog_id"]
    monkeypatch.setenv("ASSAY_CATALOG_URL", f"sqlite:///{tmp_path / 'a' / 'catalog.db'}")
    with pytest.raises(WorkspaceError, match="is not the one the workspace .* was made with"):
        Workspace.open(tmp_path / "b").status()
    # An empty catalog with no identity under a workspace that holds embeddings is refused too.
    monkeypatch.setenv("ASSAY_CATALOG_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    with pytest.raises(WorkspaceError, match="an empty catalog"):
        Workspace.open(tmp_path / "b").status()
    monkeypatch.delenv("ASSAY_CATALOG_URL")
    assert Workspace.open(tmp_path / "b").status()["items"]["total"] == 3
    # A workspace made before identities were recorded adopts its catalog's.
    cfg = json.loads((tmp_path / "b" / "assay.json").read_text())
    del cfg["catalog_id"]
    (tmp_path / "b" / "assay.json").write_text(json.dumps(cfg))
    w = Workspace.open(tmp_path / "b")
    assert w.status()["items"]["total"] == 3
    assert json.loads((tmp_path / "b" / "assay.json").read_text())["catalog_id"] == w.catalog.get_value("catalog_id")
    w.close()


def test_changes_are_logged_in_the_catalog_so_no_workspace_keeps_a_stale_embedding(tmp_path):
    """A file put back with other bytes, a re-ingest whose workspace never dropped the old vectors (killed,
    or run through the catalog alone), and a second workspace on the same catalog: all re-embed the item."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, c in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]):
        _solid(folder / f"{i}.png", c)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = Workspace.init(tmp_path / "a", catalog=url, default_encoder="test-mean-color")
    ingest(a, [folder])
    b = Workspace.init(tmp_path / "b", catalog=url, default_encoder="test-mean-color")  # shares a's catalog
    for w in (a, b):
        embed(w)
        build_index(w, kind="flat")
    item = a.catalog.id_for_uri(str(folder / "0.png"))
    old = a.vectors().get([item])[0]
    # 1. Gone, then back with other bytes: revived, and logged as a change.
    (folder / "0.png").unlink()
    assert ingest(a, [folder]).missing == 1
    _solid(folder / "0.png", (250, 250, 0), size=(20, 20))
    rep = ingest(a, [folder])
    assert rep.revived == 1 and rep.embeddings_dropped == 1
    embed(a)
    assert not np.allclose(a.vectors().get([item])[0], old)
    # 2. b never saw it: its search leaves the item out, its status says so, its next embed redoes it.
    assert item in b.pending_changes().tolist()
    hits = Searcher(b).search(vector=old, k=4)
    assert item not in [h.id for h in hits]
    assert b.status()["indexes"]["test-mean-color"]["up_to_date"] is False
    from assay.errors import NotFoundError

    with pytest.raises(NotFoundError, match="changed since they were embedded"):  # its old vector is no query
        Searcher(b).search(item=item, k=2)
    embed(b)
    assert not len(b.pending_changes())
    assert np.allclose(b.vectors().get([item])[0], a.vectors().get([item])[0])
    build_index(b)
    assert b.status()["indexes"]["test-mean-color"]["up_to_date"] is True
    # 3. A re-ingest through the catalog alone (as a killed run leaves it): the next embed drops and redoes it.
    before = a.vectors().get([item])[0]
    _solid(folder / "0.png", (10, 120, 250), size=(24, 24))
    assert ingest(a.catalog, [folder]).changed == 1
    assert a.vectors().contains(np.array([item]))[0]  # not dropped yet ...
    assert item not in [h.id for h in Searcher(a).search(vector=before, k=4)]  # ... but never served
    embed(a)
    assert not np.allclose(a.vectors().get([item])[0], before)
    a.close()
    b.close()


def test_a_gone_file_is_left_out_of_search_at_once_and_the_index_is_out_of_date(ws, tmp_path):
    paths = write_images(tmp_path / "imgs", 5, size=(16, 16))
    ingest(ws, [tmp_path / "imgs"])
    embed(ws)
    build_index(ws, kind="flat")
    gone = ws.catalog.id_for_uri(str(paths[1]))
    vec = ws.vectors().get([gone])[0]
    paths[1].unlink()
    assert ingest(ws, [tmp_path / "imgs"]).missing == 1
    assert gone not in [h.id for h in Searcher(ws).search(vector=vec, k=5)]
    assert ws.status()["indexes"]["test-mean-color"]["up_to_date"] is False
    build_index(ws)
    assert ws.status()["indexes"]["test-mean-color"]["up_to_date"] is True


def test_a_changed_file_that_carries_labels_is_pointed_out(ws, tmp_path):
    from assay.loop import Miner

    paths = write_images(tmp_path / "imgs", 4, size=(16, 16))
    ingest(ws, [tmp_path / "imgs"])
    embed(ws)
    ids = [ws.catalog.id_for_uri(str(p)) for p in paths]
    ws.catalog.add_concept("fish", exemplars=[ids[0]], exemplar_annotator="exemplar")
    Miner(ws, "fish").record_labels([ids[1]], [0])
    _solid(paths[0], (1, 1, 1), size=(30, 30))
    _solid(paths[1], (2, 2, 2), size=(30, 30))
    _solid(paths[2], (3, 3, 3), size=(30, 30))
    rep = ingest(ws, [tmp_path / "imgs"])
    assert rep.changed == 3 and rep.changed_in_concepts == {"fish": 2}


def test_changes_wait_while_an_embed_holds_the_store_instead_of_failing(ws, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _solid(folder / "a.png", (200, 10, 10))
    _solid(folder / "b.png", (10, 10, 200))
    ingest(ws.catalog, [folder])
    embed(ws)
    build_index(ws, kind="flat")
    b_id = ws.catalog.id_for_uri(str(folder / "b.png"))
    _solid(folder / "b.png", (10, 200, 10), size=(20, 18))
    ingest(ws.catalog, [folder])  # the catalog changed; this workspace has not dropped the old vector yet
    busy = ws.vectors()
    busy.lock()  # an `assay embed` running in another process
    try:
        assert ws.apply_changes() == 0  # no error: the change waits
        rep = build_index(ws)  # index runs meanwhile, and the changed item is not served
        assert rep["index"]["count"] >= 1
        assert b_id not in [h.id for h in Searcher(ws).search(item=ws.catalog.id_for_uri(str(folder / "a.png")), k=5)]
    finally:
        busy.unlock()
    assert ws.apply_changes() == 1  # the embed finished: the stale vector goes now
    assert not ws.vectors().contains([b_id]).any()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_text_longer_than_a_parse_block_is_ingested(ws, tmp_path, suffix):
    long_text = "word " * 400_000  # 2 MB in one value
    path = tmp_path / f"docs{suffix}"
    if suffix == ".csv":
        path.write_text(f'uri,text\nshort,"a short one"\nlong,"{long_text}"\n')
    else:
        path.write_text(json.dumps({"uri": "short", "text": "a short one"}) + "\n"
                        + json.dumps({"uri": "long", "text": long_text}) + "\n")
    rep = ingest(ws.catalog, [path])
    assert rep.new == 2
    texts = sorted(len(r.text) for r in ws.catalog.get_many(ws.catalog.ids()))
    assert texts == [len("a short one"), len(long_text)]


def test_text_rows_with_blank_ids_stay_apart_and_a_repeated_id_with_other_text_is_reported(ws, tmp_path, caplog):
    import logging

    (tmp_path / "t.csv").write_text('id,text\n,"first text"\n,"second text"\n7,"seven"\n7,"not seven"\n')
    with caplog.at_level(logging.WARNING):
        rep = ingest(ws.catalog, [tmp_path / "t.csv"])
    assert rep.new == 3 and rep.repeated_rows == 1
    texts = sorted(r.text for r in ws.catalog.get_many(ws.catalog.ids()))
    assert texts == ["first text", "second text", "seven"]
    assert "different text" in caplog.text and "row 4" in caplog.text
    (tmp_path / "n.jsonl").write_text('{"id": null, "text": "a"}\n{"id": null, "text": "b"}\n')
    assert ingest(ws.catalog, [tmp_path / "n.jsonl"]).new == 2
