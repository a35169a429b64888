"""What the loop writes for people and tools: text corpora carry their text, failed files stay out of image
exports, output names fit their format, batch files are readable by the team; the API checks as the CLI."""

from __future__ import annotations

import csv
import json
import os
import stat

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import fake_encoder  # noqa: F401
from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import InputError
from assay.interop.exports import export
from assay.loop import Miner
from assay.search import build_index

from conftest import colour_corpus

runner = CliRunner()
TOPICS = ["card lost", "card stolen", "refund please", "exchange rate", "top up failed"]


@pytest.fixture
def text_ws(tmp_path):
    w = Workspace.init(tmp_path / "tws", default_encoder="test-mean-color")
    rows = [f"{TOPICS[i % 5]} number {i}" for i in range(60)]
    (tmp_path / "t.csv").write_text("text,topic\n" + "".join(f"{r},{TOPICS[i % 5]}\n" for i, r in enumerate(rows)))
    ingest(w.catalog, [tmp_path / "t.csv"])
    embed(w)
    build_index(w, kind="flat")
    yield w
    w.close()


def _cli(ws, *args):
    return runner.invoke(app, ["-w", str(ws.root), *args], catch_exceptions=False)


def test_text_corpora_carry_their_text_into_batches_harvests_and_exports(text_ws, tmp_path):
    ws = text_ws
    ws.catalog.add_concept("lost", text="card lost")
    r = _cli(ws, "mine", "lost", "--batch", "6", "--out", str(tmp_path / "batch.csv"))
    assert r.exit_code == 0, r.output
    with open(tmp_path / "batch.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["id", "uri", "text"] and all(" number " in row["text"] for row in rows)
    # Readable by the team, as any new file (mkstemp alone would make it private).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "batch.csv").stat().st_mode) == 0o666 & ~umask
    truth = {r.id: int(r.text.startswith("card lost")) for r in ws.catalog.get_many(ws.catalog.ids())}
    for row in rows:
        row["label"] = truth[int(row["id"])]
    ids = [i for i in truth][:20]
    Miner(ws, "lost").record_labels(ids, [truth[i] for i in ids])
    r = _cli(ws, "rounds", "lost", "--json")
    assert r.exit_code == 0
    one = json.loads(_cli(ws, "rounds", "lost", "--round", "1", "--json").output)
    assert all("text" in it for it in one["items"])
    mined = Miner(ws, "lost").harvest(top=5)
    assert all(m["text"] and " number " in m["text"] for m in mined)
    export(ws, "lost", fmt="csv", out=tmp_path / "e.csv")
    with open(tmp_path / "e.csv", newline="") as f:
        assert all(row["text"] for row in csv.DictReader(f))
    export(ws, "lost", fmt="parquet", out=tmp_path / "e.parquet")
    assert "text" in pq.read_table(tmp_path / "e.parquet").column_names
    export(ws, "lost", fmt="label-studio", out=tmp_path / "ls.json")
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert all(t["data"]["text"] and "image" not in t["data"] for t in tasks)
    cfg = (tmp_path / "ls.label_config.xml").read_text()
    assert '<Text name="text" value="$text"/>' in cfg and "<Image" not in cfg
    for fmt, out in (("coco", tmp_path / "c.json"), ("imagefolder", tmp_path / "if"), ("fiftyone", tmp_path / "fo")):
        with pytest.raises(InputError, match="is for images"):
            export(ws, "lost", fmt=fmt, out=out)


def test_image_exports_leave_out_failed_files_and_names_must_fit_the_format(tmp_path, caplog):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [colour_corpus(tmp_path / "imgs", 6, 20, 0, size=(16, 16))])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    ingest(ws.catalog, [tmp_path / "bad.png"])
    embed(ws)
    build_index(ws, kind="flat")
    bad = ws.catalog.id_for_uri(str(tmp_path / "bad.png"))
    ws.catalog.add_concept("red", text="red")
    good = [int(i) for i in ws.catalog.ids()[:6]]
    (tmp_path / "l.csv").write_text("id,label\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(good)) + f"{bad},1\n")
    with caplog.at_level("WARNING"):
        r = _cli(ws, "label", "red", "--file", str(tmp_path / "l.csv"))
    assert r.exit_code == 0 and "1 labelled items have status error" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        rep = export(ws, "red", fmt="imagefolder", out=tmp_path / "if")
    assert rep.left_out == 1 and rep.rows == 6 and "left out of the imagefolder export" in caplog.text
    assert not any(p.stem == str(bad) for p in (tmp_path / "if").rglob("*"))
    coco = export(ws, "red", fmt="coco", out=tmp_path / "c.json")
    assert coco.left_out == 1
    assert bad not in [im["id"] for im in json.loads((tmp_path / "c.json").read_text())["images"]]
    assert export(ws, "red", fmt="csv", out=tmp_path / "all.csv").rows == 7  # the label itself is kept
    for fmt, name in (("csv", "x.parquet"), ("parquet", "x.csv"), ("coco", "x.csv"), ("label-studio", "x.parquet")):
        with pytest.raises(InputError, match="does not fit --format"):
            export(ws, "red", fmt=fmt, out=tmp_path / name)
    # An empty harvest written to Parquet still has its columns.
    from assay.cli.mining import _write_rows

    _write_rows([], tmp_path / "h.parquet")  # what `harvest --out h.parquet` writes when nothing passes
    t = pq.read_table(tmp_path / "h.parquet")
    assert t.num_rows == 0 and t.column_names[:3] == ["id", "uri", "concept"]
    ws.close()


def test_the_api_checks_exemplars_as_the_cli_and_takes_json_integers_only(text_ws, tmp_path):
    from fastapi.testclient import TestClient

    from assay.server.app import ServerConfig, create_app

    ws = text_ws
    (tmp_path / "more.csv").write_text("text\nan unembedded sentence\n")
    ingest(ws.catalog, [tmp_path / "more.csv"])
    late = int(ws.catalog.ids()[-1])
    with TestClient(create_app(ws, ServerConfig(batch=4)), base_url="http://127.0.0.1") as c:
        r = c.post("/api/concepts", json={"name": "late", "exemplars": [late]})
        assert r.status_code == 400 and "run `assay embed` first" in r.text
        assert c.post("/api/concepts", json={"name": "ok", "exemplars": [1]}).status_code == 201
        r = c.post("/api/concepts/ok/rounds", json={"batch": "4"})
        assert r.status_code == 422
        assert c.post("/api/concepts/ok/rounds", json={"batch": 4}).status_code in (200, 202)


def test_copies_of_a_labelled_item_are_not_proposed_again(tmp_path):
    import shutil

    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    folder = colour_corpus(tmp_path / "imgs", 6, 20, 0, size=(16, 16)).parent
    originals = sorted(p for p in folder.glob("*.png"))[:3]
    for p in originals:  # byte-identical copies, ingested after the originals
        shutil.copy(p, folder / f"zz_copy_{p.name}")
    ingest(ws.catalog, [folder])
    embed(ws)
    build_index(ws, kind="flat")
    ws.catalog.add_concept("red", text="red")
    copies = [ws.catalog.id_for_uri(str(folder / f"zz_copy_{p.name}")) for p in originals]
    orig_ids = [ws.catalog.id_for_uri(str(p)) for p in originals]
    assert ws.catalog.group_mates(copies).tolist() == sorted(orig_ids)
    Miner(ws, "red").record_labels(copies, [1, 0, 1])  # labels given on the copies
    _, out = Miner(ws, "red").propose(strategy="random", batch=40)
    assert not set(out.ids.tolist()) & set(orig_ids + copies)
    # Harvest shows the originals with their copies' answers (a "no" leaves it out), and export --top does
    # not offer them for labelling.
    more = [int(i) for i in ws.catalog.ids() if int(i) not in orig_ids + copies][:10]
    Miner(ws, "red").record_labels(more, [int(ws.catalog.get(i).meta.get("label") == "red") for i in more])
    rows = {r["id"]: r for r in Miner(ws, "red").harvest(top=200, keep_duplicates=True)}
    assert rows[orig_ids[0]]["label"] == 1 and rows[orig_ids[2]]["label"] == 1 and orig_ids[1] not in rows
    rep = export(ws, "red", fmt="csv", out=tmp_path / "top.csv", top=50)
    with open(tmp_path / "top.csv", newline="") as f:
        offered = [int(r["id"]) for r in csv.DictReader(f) if r["label"] == ""]
    assert rep.unlabelled == len(offered) > 0 and not set(offered) & set(orig_ids)
    ws.close()


def test_a_labelled_file_that_was_renamed_is_exported_from_its_new_path(tmp_path):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    folder = colour_corpus(tmp_path / "imgs", 6, 20, 0, size=(16, 16)).parent
    ingest(ws, [folder])
    embed(ws)
    build_index(ws, kind="flat")
    ws.catalog.add_concept("red", text="red")
    ids = [int(i) for i in ws.catalog.ids()[:4]]
    Miner(ws, "red").record_labels(ids, [1, 0, 1, 0])
    moved = ws.catalog.get(ids[0]).uri
    os.rename(moved, str(folder / "renamed.png"))
    rep = ingest(ws, [folder])
    assert rep.missing == 1 and rep.new == 1
    out = export(ws, "red", fmt="imagefolder", out=tmp_path / "if")
    assert out.left_out == 0 and out.positives == 2
    placed = [p for p in (tmp_path / "if").rglob(f"{ids[0]}.png")]
    assert len(placed) == 1 and os.path.realpath(placed[0]) == str(folder / "renamed.png")
    ws.close()
