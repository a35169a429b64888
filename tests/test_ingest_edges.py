"""Ingest and embed on awkward inputs: file names, paths, manifests, failed items put right, precomputed files."""

from __future__ import annotations

import re

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fake_encoder  # noqa: F401  registers "test-mean-color"
from assay.catalog import Catalog
from assay.cli.main import app
from assay.embed import embed
from assay.encoders.base import get_encoder
from assay.errors import InputError, NoWorkspaceError, WorkspaceError
from assay.ingest import ingest
from assay.media import DEFAULT_MAX_PIXELS, local_path, probe_image
from assay.precomputed import import_embeddings
from assay.workspace import Workspace

from conftest import write_images

runner = CliRunner()


@pytest.fixture
def cat(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    yield c
    c.close()


def _uris(cat):
    return sorted(cat.uris(cat.ids(status=None)).values())


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_ingested(cat, tmp_path):
    d = tmp_path / "d"
    write_images(d, 2)
    bad = os.fsencode(str(d)) + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write((d / "img_000.png").read_bytes())
    rep = ingest(cat, [d])
    assert rep.new == 2 and any("not valid UTF-8" in s for s in rep.skipped_rows)


def test_the_same_folder_spelled_two_ways_is_ingested_once(cat, tmp_path, monkeypatch):
    write_images(tmp_path / "imgs" / "sub", 3)
    (tmp_path / "other").mkdir()
    assert ingest(cat, [tmp_path / "imgs" / "sub"]).new == 3
    monkeypatch.chdir(tmp_path / "other")
    rep = ingest(cat, ["../imgs/sub", "../imgs/./sub/"])
    assert rep.new == 0 and rep.already_present == 6
    assert all(".." not in u and "/./" not in u for u in _uris(cat))


def test_manifest_with_uri_and_text_columns_keeps_images_and_captions(cat, tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / "m.csv").write_text(
        "uri,text,label\n"
        "img_000.png,a red thing,a\n"      # image with a caption
        "img_001.png,,b\n"                 # image, empty caption
        ",a text item,c\n"                 # text only
        "doc-7,named text item,d\n"        # a text item named by a non-image uri
    )
    rep = ingest(cat, [tmp_path / "m.csv"])
    assert rep.new == 4 and rep.errors == 0
    rows = {r.uri: r for r in cat.get_many(cat.ids(status=None))}
    img0 = rows[str(tmp_path / "img_000.png")]
    assert img0.modality == "image" and img0.meta["text"] == "a red thing" and img0.meta["label"] == "a"
    assert rows[str(tmp_path / "img_001.png")].modality == "image"
    texts = sorted(r.text for r in rows.values() if r.modality == "text")
    assert texts == ["a text item", "named text item"]


def test_csv_manifest_values_stay_text(cat, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "0001", "PNG")  # a file named 0001 (no extension needed in a manifest)
    (tmp_path / "m.csv").write_text("uri,label\n0001,007\n")
    ingest(cat, [tmp_path / "m.csv"])
    (row,) = cat.get_many(cat.ids(status=None))
    assert row.uri == str(tmp_path / "0001") and row.status == "ok" and row.meta["label"] == "007"


def test_latin1_csv_is_refused_naming_the_encoding(cat, tmp_path):
    (tmp_path / "m.csv").write_bytes("uri,label\ncaf\xe9.png,x\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        ingest(cat, [tmp_path / "m.csv"])


@pytest.mark.parametrize("name,data,words", [
    ("hdr.csv", "uri,lab\xe9l\na.png,x\n".encode("latin-1"), "line 1: byte b'\\xe9'"),
    ("u16.csv", "uri,label\na.png,x\n".encode("utf-16"), "is UTF-16 text"),
    ("late.jsonl", b"".join(b'{"text": "hello %d"}\n' % n for n in range(2100)) + '{"text": "caf\xe9"}\n'.encode("latin-1"),
     "line 2101: byte b'\\xe9'"),
])
def test_a_manifest_that_is_not_utf8_is_refused_before_any_row_is_written(cat, tmp_path, name, data, words):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match="not UTF-8 text|UTF-16") as exc:
        ingest(cat, [tmp_path / name])
    assert words in str(exc.value) and "re-save it as UTF-8" in str(exc.value)
    assert cat.count()["total"] == 0  # nothing committed, not even the rows before the bad line


def test_manifest_columns_of_the_wrong_type_are_refused(cat, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"uri": [["a.png"], ["b.png"]]}), tmp_path / "list.parquet")
    pq.write_table(pa.table({"uri": [1, 2]}), tmp_path / "int.parquet")
    pq.write_table(pa.table({"text": [{"a": 1}, {"a": 2}]}), tmp_path / "struct.parquet")
    (tmp_path / "int.jsonl").write_text('{"uri": 1}\n{"uri": 2}\n')
    for name, words in (("list.parquet", "'uri' column must hold text (file paths or URLs), got list"),
                        ("int.parquet", "got int64"), ("int.jsonl", "got int64"),
                        ("struct.parquet", "'text' column must hold text, got struct")):
        with pytest.raises(InputError, match=re.escape(words)):
            ingest(cat, [tmp_path / name])
    assert cat.count()["total"] == 0


def test_a_bad_manifest_fails_before_any_source_is_written(cat, tmp_path):
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "nouri.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(InputError, match="expected a 'uri' column"):
        ingest(cat, [tmp_path / "imgs", tmp_path / "nouri.csv"])
    assert cat.count()["total"] == 0
    with pytest.raises(Exception):
        ingest(cat, [tmp_path / "imgs", tmp_path / "missing.csv"])
    assert cat.count()["total"] == 0


def test_file_uris_are_percent_decoded(cat, tmp_path):
    d = tmp_path / "sp ace #1"
    write_images(d, 1)
    p = d / "img_000.png"
    assert local_path(p.as_uri()) == str(p)
    assert local_path("file://localhost" + str(p)) == str(p)
    (tmp_path / "m.csv").write_text(f"uri\n{p.as_uri()}\n")
    rep = ingest(cat, [tmp_path / "m.csv"])
    assert rep.new == 1 and rep.errors == 0 and _uris(cat) == [str(p)]


def test_question_marks_in_local_names_and_fifos(cat, tmp_path):
    write_images(tmp_path, 1)
    os.rename(tmp_path / "img_000.png", tmp_path / "what?.png")
    os.mkfifo(tmp_path / "pipe.jpg")  # would block an open() forever
    rep = ingest(cat, [tmp_path])
    assert rep.new == 1 and _uris(cat) == [str(tmp_path / "what?.png")]
    assert any("not a regular file" in s for s in rep.skipped_rows)


def test_large_images_follow_assay_limit_in_threads():
    # 144 Mpx is under assay's 150 Mpx limit (Pillow only warns above 89 Mpx): ok in every thread, every time
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")
    data = buf.getvalue()
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: probe_image(data), range(32)))
    assert all(i.width == 12000 for i in infos)
    buf = io.BytesIO()
    Image.new("1", (13000, 12000)).save(buf, "PNG")  # 156 Mpx
    with pytest.raises(Exception, match="above the limit"):
        probe_image(buf.getvalue())
    assert 12000 * 12000 < DEFAULT_MAX_PIXELS < 13000 * 12000


def test_a_file_put_back_after_failing_is_revived_and_embedded(tmp_path):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    paths = write_images(tmp_path / "imgs", 4)
    ingest(ws.catalog, [tmp_path / "imgs"])
    paths[1].rename(tmp_path / "away.png")
    rep = embed(ws)
    assert rep.embedded == 3 and rep.errors == 1
    assert ws.catalog.count()["error"] == 1
    # still missing: nothing revived
    assert ingest(ws.catalog, [tmp_path / "imgs"]).revived == 0
    (tmp_path / "away.png").rename(paths[1])
    r = CliRunner().invoke(app, ["-w", str(ws.root), "ingest", str(tmp_path / "imgs"), "--no-retry", "--json"])
    assert r.exit_code == 0 and '"revived": 0' in r.stdout and ws.catalog.count()["error"] == 1  # not probed
    again = ingest(ws.catalog, [tmp_path / "imgs"])
    assert again.revived == 1 and again.new == 0 and ws.catalog.count()["error"] == 0
    assert embed(ws).embedded == 1 and len(ws.vectors()) == 4
    # an item whose bytes failed to decode stays in error while its bytes are the same, and is tried again
    # once they change
    bad = tmp_path / "imgs" / "img_002.png"
    ws.catalog.mark_errors([(ws.catalog.id_for_uri(str(bad)), "cannot decode image: broken data stream")])
    assert ingest(ws.catalog, [tmp_path / "imgs"]).revived == 0
    Image.new("RGB", (9, 9), "red").save(bad)
    assert ingest(ws.catalog, [tmp_path / "imgs"]).revived == 1
    ws.close()


def test_revived_item_takes_its_place_among_exact_duplicates(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    write_images(tmp_path / "a", 1)
    src = tmp_path / "a" / "img_000.png"
    data = src.read_bytes()
    src.rename(tmp_path / "hidden.png")
    # item 1 is recorded missing (a manifest naming it), item 2 has the same bytes
    (tmp_path / "m.csv").write_text(f"uri\n{src}\n")
    ingest(c, [tmp_path / "m.csv"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.png").write_bytes(data)
    ingest(c, [tmp_path / "b"])
    first, second = c.ids(status=None)
    assert c.get(int(first)).status == "error" and c.get(int(second)).duplicate_of is None
    (tmp_path / "hidden.png").rename(src)
    assert ingest(c, [tmp_path / "m.csv"]).revived == 1
    assert c.get(int(first)).duplicate_of is None and c.get(int(second)).duplicate_of == int(first)
    c.close()


@pytest.mark.parametrize("name", ["qu?x", "pc%41t"])
def test_workspace_paths_with_url_characters_keep_their_catalog_inside(tmp_path, name):
    ws = Workspace.init(tmp_path / name)
    write_images(tmp_path / "imgs", 1)
    ingest(ws.catalog, [tmp_path / "imgs"])
    ws.close()
    assert (tmp_path / name / "catalog.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["imgs", name])
    with Workspace.open(tmp_path / name) as again:
        assert again.catalog.count()["total"] == 1


def test_workspace_and_encoder_errors_are_input_errors(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        Workspace.init(tmp_path / "afile" / "sub")
    with pytest.raises(InputError, match="unknown encoder"):
        Workspace.init(tmp_path / "w", default_encoder="bogus")
    with pytest.raises(InputError, match="takes no argument"):
        get_encoder("minilm:foo")
    with pytest.raises(NoWorkspaceError):
        Workspace.open(tmp_path / "nowhere")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "catalog.db").write_text("garbage, not a database")
    r = runner.invoke(app, ["init", str(tmp_path / "g")])
    assert r.exit_code == 1 and "not a database" in r.output
    r = runner.invoke(app, ["init", str(tmp_path / "b"), "--catalog", "bogus://x"])
    assert r.exit_code == 2 and "unsupported catalog URL" in r.output


def test_a_corrupt_store_description_is_a_clear_error(tmp_path):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    write_images(tmp_path / "imgs", 2)
    ingest(ws.catalog, [tmp_path / "imgs"])
    embed(ws)
    (ws.vectors().root / "store.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match="unreadable"):
        ws.vectors().meta()
    ws.close()


def test_precomputed_files_that_cannot_be_read_or_have_no_direction(tmp_path):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    write_images(tmp_path / "imgs", 3)
    ingest(ws.catalog, [tmp_path / "imgs"])
    ids = ws.catalog.ids()
    pre = tmp_path / "pre"
    pre.mkdir()
    np.save(pre / "e.ids.npy", ids)
    (pre / "e.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="cannot read"):
        import_embeddings(ws, pre / "e.npy")
    np.save(pre / "e.npy", np.array([["a"] * 4] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read"):
        import_embeddings(ws, pre / "e.npy")
    v = np.ones((3, 4), np.float32)
    v[1] = 0
    np.save(pre / "e.npy", v)
    with pytest.raises(InputError, match="all zeros"):
        import_embeddings(ws, pre / "e.npy")
    np.save(pre / "e.npy", np.full((3, 4), 1e30, np.float32))  # squares overflow float32
    assert import_embeddings(ws, pre / "e.npy").embedded == 3
    _, got = ws.vectors("precomputed").load(dtype=np.float32)
    assert np.allclose(got, 0.5, atol=1e-3)
    np.save(pre / "e.npy", np.ones((3, 8), np.float32))
    with pytest.raises(InputError, match="holds dim 4"):
        import_embeddings(ws, pre / "e.npy")
    assert import_embeddings(ws, pre / "e.npy", reset=True).embedded == 3
    assert ws.vectors("precomputed").dim == 8
    np.save(pre / "e.ids.npy", ids[None, :])
    with pytest.raises(InputError, match="1-D"):
        import_embeddings(ws, pre / "e.npy")
    ws.close()


def test_a_workspace_inside_the_ingested_folder_is_skipped(tmp_path):
    write_images(tmp_path / "data", 3)
    ws = Workspace.init(tmp_path / "data" / "ws", default_encoder="test-mean-color")
    write_images(ws.cache_dir / "thumbs", 2, fmt="JPEG")  # like the labelling page's thumbnails
    rep = ingest(ws.catalog, [tmp_path / "data"])
    assert rep.new == 3 and any("an assay workspace" in s for s in rep.skipped_rows)
    ws.close()


def test_a_copy_stands_in_for_an_original_that_failed(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    write_images(tmp_path / "a", 1)
    data = (tmp_path / "a" / "img_000.png").read_bytes()
    for name in ("b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "copy.png").write_bytes(data)
    ingest(c, [tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    a, b, cc = (int(i) for i in c.ids())
    assert c.non_representative_ids().tolist() == [b, cc]
    c.mark_errors([(a, "cannot decode image: broken")])
    assert c.non_representative_ids().tolist() == [cc]  # b represents the group now
    c.mark_errors([(b, "cannot decode image: broken")])
    assert cc not in c.non_representative_ids().tolist()  # the first copy that is fine
    c.close()


def test_rounds_recorded_at_once_all_get_a_number(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    concept = c.add_concept("x")

    def one(_):
        return c.add_round(concept.id, strategy="s", params={}, encoder=None, encoder_version=None, proxy={},
                           pool_size=None, scanned_fraction=None, seconds={}, proposals=[]).number

    with ThreadPoolExecutor(4) as pool:
        numbers = list(pool.map(one, range(20)))
    assert sorted(numbers) == list(range(1, 21))
    c.close()


def test_a_reset_killed_part_way_never_leaves_a_new_description_over_old_vectors(tmp_path, monkeypatch):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    write_images(tmp_path / "imgs", 6)
    ingest(ws.catalog, [tmp_path / "imgs"])
    embed(ws, shard_size=2)
    store = ws.vectors()
    removed = []
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        removed.append(self.name)
        if len(removed) == 3:
            raise KeyboardInterrupt  # the kill
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        store.reset()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    markers = sorted(p.name for p in store.root.glob("shard-*.json")) + removed[:1]
    assert removed[0].startswith("shard-") and removed[0].endswith(".json") and markers  # a marker first
    assert not list(store.root.glob("shard-*.json"))  # every marker went before any array or store.json
    assert (store.root / "store.json").exists()  # the description goes last
    ws.close()


def test_near_duplicate_pairs_of_a_clique_are_rescored_in_bounded_chunks(monkeypatch):
    import assay.dedup as D
    from assay.index import VectorIndex

    rng = np.random.default_rng(0)
    base = rng.normal(size=16).astype(np.float32)
    vecs = base + 0.01 * rng.normal(size=(300, 16)).astype(np.float32)  # near-identical frames
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, 301, dtype=np.int64)
    index = VectorIndex(spec="flat", dim=16).build(ids, vecs, rng=0)
    want = D.embedding_pairs(ids, vecs, 0.9, index=index, k=8)
    monkeypatch.setattr(D, "_RESCORE_CHUNK", 97)
    got = D.embedding_pairs(ids, vecs, 0.9, index=index, k=8)
    assert len(want[0]) == 300 * 299 // 2
    for a, b in zip(want, got):
        assert np.array_equal(a, b)


def test_jsonl_columns_whose_type_changes_between_lines_are_read_as_text(cat, tmp_path):
    import json

    write_images(tmp_path / "imgs", 3)
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    lines = [{"uri": f"imgs/{names[0]}", "label": 1}, {"uri": f"imgs/{names[1]}", "label": "yes"},
             {"uri": f"imgs/{names[2]}", "label": None, "extra": {"a": 1}}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    rep = ingest(cat, [tmp_path / "m.jsonl"])
    assert rep.new == 3
    metas = sorted((r.meta for r in cat.get_many(cat.ids())), key=lambda m: str(m.get("label")))
    assert [m["label"] for m in metas] == ["1", None, "yes"]  # 1 and "yes" both arrive, as text
    assert any(m.get("extra") == {"a": 1} for m in metas)  # a column only a later line has is kept
    (tmp_path / "bad.jsonl").write_text('{"uri": "a.png", "label": 1}\n{"uri": "b.png", "label": "x"}\nnot json\n')
    with pytest.raises(InputError, match="line 3: not JSON"):
        ingest(cat, [tmp_path / "bad.jsonl"])


def test_a_uri_twice_in_a_manifest_counts_once_and_conflicting_metadata_is_reported(cat, tmp_path, caplog):
    write_images(tmp_path / "imgs", 2)
    a, b = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    (tmp_path / "m.csv").write_text(f"uri,label\nimgs/{a},cat\nimgs/{a},dog\nimgs/{b},cat\n")
    with caplog.at_level("WARNING"):
        rep = ingest(cat, [tmp_path / "m.csv"])
    assert (rep.seen, rep.new, rep.already_present, rep.repeated_rows) == (3, 2, 0, 1)
    assert "appears more than once with different metadata" in caplog.text
    assert sorted(r.meta["label"] for r in cat.get_many(cat.ids())) == ["cat", "cat"]


def test_a_url_with_an_unknown_scheme_fails_at_once_without_retries(cat, tmp_path, caplog):
    (tmp_path / "m.csv").write_text("uri\nbogus://x.png\n")
    with caplog.at_level("WARNING"):
        rep = ingest(cat, [tmp_path / "m.csv"])
    assert rep.errors == 1 and "retry" not in caplog.text
    (row,) = cat.get_many(cat.ids(status=None))
    assert row.status == "error" and "URL scheme is not one fsspec knows" in row.error


def test_a_folder_that_cannot_be_searched_is_skipped_and_the_rest_ingested(cat, tmp_path, monkeypatch):
    """A subfolder without search (x) permission, as lost+found is to a user: reported, not fatal."""
    root = tmp_path / "corpus"
    (root / "aa").mkdir(parents=True)
    (root / "zz_closed").mkdir()
    for p in (root / "aa" / "a.png", root / "b.png", root / "zz_closed" / "c.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(p)
    real_is_file = Path.is_file

    def is_file(self):
        if self.parent.name == "zz_closed":
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    rep = ingest(cat, [root])
    assert rep.new == 2
    assert any("zz_closed: cannot list folder" in s and "Permission denied" in s for s in rep.skipped_rows)


def test_a_dead_web_host_fails_its_items_not_the_run(cat, tmp_path, monkeypatch):
    pytest.importorskip("aiohttp")
    import socket

    from assay import media

    monkeypatch.setattr(media, "REMOTE_RETRY_DELAYS", (0.01,))
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "m.csv").write_text(f"uri\nok.png\nhttp://127.0.0.1:{port}/x.jpg\n")
    rep = ingest(cat, [tmp_path / "m.csv"])
    assert rep.new == 2 and rep.errors == 1
    bad = [r for r in cat.get_many(cat.ids(status=None)) if r.uri.startswith("http")]
    assert bad[0].status == "error" and "cannot reach the host" in bad[0].error


def test_a_jsonl_manifest_error_names_the_line_as_an_editor_counts(cat, tmp_path):
    (tmp_path / "m.jsonl").write_text('{"uri": "a.png"}\n{"uri": "b.png"}\n{bad\n')
    with pytest.raises(InputError, match=r"m.jsonl line 3: not JSON"):
        ingest(cat, [tmp_path / "m.jsonl"])


def test_a_manifest_url_whose_host_cannot_be_reached_says_so(cat, tmp_path):
    pytest.importorskip("aiohttp")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match="its host cannot be reached"):
        ingest(cat, [f"http://127.0.0.1:{port}/m.csv"])
    assert cat.count()["total"] == 0
