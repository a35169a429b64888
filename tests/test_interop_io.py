"""Exports and imports: every format round-trips; Label Studio tasks validate; COCO loads; bad input names the row."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
import sqlalchemy as sa
from test_interop_common import cli_app, make_ws, runner, truth

from assay import Workspace, ingest
from assay.catalog import labels_table
from assay.errors import InputError, NotFoundError, UnknownNameError
from assay.interop.exports import EXPORT_COLUMNS, FORMATS, export, label_studio_config
from assay.interop.imports import import_labels
from assay.interop.scores import write_scores
from assay.loop import Miner


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A labelled workspace: human labels from two rounds, an imported label, pseudo-labels and detector boxes."""
    tmp = tmp_path_factory.mktemp("io")
    ws = make_ws(tmp, n_red=8, n_other=24)
    t = truth(ws)
    ws.catalog.add_concept("red")
    m = Miner(ws, "red")
    red = [i for i, v in sorted(t.items()) if v]
    other = [i for i, v in sorted(t.items()) if not v]
    m.record_labels(np.array(red[:3] + other[:3]), np.array([1, 1, 1, 0, 0, 0]), source="human", annotator="alice")
    _, out = m.propose(strategy="entropy", batch=4, seed=0)
    m.record_labels(out.ids, np.array([t[int(i)] for i in out.ids]), source="human", annotator="bob")
    c = ws.catalog.concept("red")
    labelled, _ = ws.catalog.current_labels(c.id)
    free_red = [i for i in red if i not in set(labelled.tolist())]
    ws.catalog.add_labels(c.id, [other[10]], [0], source="import", annotator="vendor")
    ws.catalog.add_labels(c.id, free_red[:2], [1, 1], source="pseudo", annotator="pseudo:test")
    # a relabel: the latest row wins
    ws.catalog.add_labels(c.id, [red[0]], [1], source="human", annotator="carol")
    write_scores(ws.catalog, "det", [("red", red[0], 0.9, [[0.1, 0.2, 0.6, 0.8, 0.9], [0.5, 0.5, 0.9, 0.9, 0.4]]),
                                     ("red", red[1], 0.7, None)])
    yield ws, tmp
    ws.close()


def _labels(ws, concept="red", include_pseudo=True):
    """{uri: (value, source)} of the latest label per item."""
    c = ws.catalog.concept(concept)
    latest = {}
    for h in ws.catalog.label_history(c.id):
        if h["source"] == "pseudo" and not include_pseudo:
            continue
        if h["item_id"] not in latest or h["id"] > latest[h["item_id"]]["id"]:
            latest[h["item_id"]] = h
    uris = ws.catalog.uris(list(latest))
    return {uris[i]: (h["value"], h["source"]) for i, h in latest.items()}


@pytest.fixture
def fresh(base, tmp_path):
    """A second workspace over the same images (same URIs), with concept 'red' and no labels."""
    _, tmp = base
    w = Workspace.init(tmp_path / "fresh", default_encoder="test-mean-color")
    ingest(w.catalog, [tmp / "imgs" / "manifest.csv"])
    w.catalog.add_concept("red")
    yield w
    w.close()


def _n_labels(ws):
    with ws.catalog.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(labels_table)).scalar()


# ---------------------------------------------------------------------------------------------- exports
def test_csv_export_columns_and_provenance(base, tmp_path):
    ws, _ = base
    rep = export(ws, "red", fmt="csv", out=tmp_path / "red.csv")
    with open(tmp_path / "red.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert rep.rows == len(rows) == len(_labels(ws)) and rep.pseudo == 2
    by_uri = {r["uri"]: r for r in rows}
    want = _labels(ws)
    assert {u: (int(r["label"]), r["source"]) for u, r in by_uri.items()} == want
    assert {r["annotator"] for r in rows} >= {"alice", "bob", "carol", "vendor", "pseudo:test"}
    assert all(0 <= float(r["score"]) <= 1 for r in rows)  # the proxy's P(positive)
    bob = [r for r in rows if r["annotator"] == "bob"]
    assert bob and all(r["round"] == "1" for r in bob)  # labelled from round 1's batch
    assert all(r["round"] == "" for r in rows if r["annotator"] == "alice")
    top = export(ws, "red", fmt="csv", out=tmp_path / "top.csv", top=5)
    assert top.unlabelled == 5 and top.rows == rep.rows + 5
    for fmt, out in (("coco", tmp_path / "top.json"), ("imagefolder", tmp_path / "top-if"),
                     ("fiftyone", tmp_path / "top-fo")):  # layouts without a place for unlabelled rows
        with pytest.raises(InputError, match="--top adds unlabelled rows"):
            export(ws, "red", fmt=fmt, out=out, top=5)
        assert not out.exists()
    nop = export(ws, "red", fmt="csv", out=tmp_path / "nop.csv", include_pseudo=False)
    assert nop.pseudo == 0 and nop.rows == rep.rows - 2


def test_parquet_export_types(base, tmp_path):
    import pyarrow.parquet as pq

    ws, _ = base
    export(ws, "red", fmt="parquet", out=tmp_path / "red.parquet", score_model="det")
    tab = pq.read_table(tmp_path / "red.parquet")
    assert tab.column_names == list(EXPORT_COLUMNS)
    assert str(tab.schema.field("id").type) == "int64" and str(tab.schema.field("label").type) == "int8"
    rows = tab.to_pylist()
    scored = {r["id"]: r["score"] for r in rows if r["score"] is not None}
    assert sorted(scored.values()) == [0.7, 0.9]  # --score-model: the imported model's scores


@pytest.mark.parametrize("fmt", ["csv", "parquet", "coco"])
def test_round_trip_keeps_values_and_pseudo(base, fresh, tmp_path, fmt):
    ws, _ = base
    out = tmp_path / f"red.{ {'csv': 'csv', 'parquet': 'parquet', 'coco': 'json'}[fmt] }"
    export(ws, "red", fmt=fmt, out=out)
    rep = import_labels(fresh, out, fmt="csv" if fmt == "parquet" else fmt)
    assert rep.written == len(_labels(ws)) and rep.pseudo == 2
    got = _labels(fresh)
    want = _labels(ws)
    assert {u: v for u, (v, _) in got.items()} == {u: v for u, (v, _) in want.items()}
    assert {u for u, (_, s) in got.items() if s == "pseudo"} == {u for u, (_, s) in want.items() if s == "pseudo"}
    assert {s for _, s in got.values()} == {"import", "pseudo"}
    assert _labels(fresh, include_pseudo=False).keys() == _labels(ws, include_pseudo=False).keys()


@pytest.mark.parametrize("fmt", ["imagefolder", "fiftyone"])
def test_round_trip_folders(base, fresh, tmp_path, fmt):
    ws, _ = base
    out = tmp_path / fmt
    export(ws, "red", fmt=fmt, out=out, include_pseudo=False)
    rep = import_labels(fresh, out, fmt=fmt)
    want = {u: v for u, (v, _) in _labels(ws, include_pseudo=False).items()}
    assert rep.written == len(want)
    assert {u: v for u, (v, _) in _labels(fresh).items()} == want


def test_round_trip_label_studio(base, fresh, tmp_path):
    ws, _ = base
    out = tmp_path / "tasks.json"
    export(ws, "red", fmt="label-studio", out=out)
    rep = import_labels(fresh, out, fmt="label-studio", annotator="ls-team")
    want = {u: v for u, (v, _) in _labels(ws, include_pseudo=False).items()}
    assert rep.written == len(want) and rep.skipped == 2  # the pseudo-labelled tasks carry predictions only
    assert {u: v for u, (v, _) in _labels(fresh).items()} == want
    hist = fresh.catalog.label_history(fresh.catalog.concept("red").id)
    assert {h["annotator"] for h in hist} == {"ls-team"} and {h["source"] for h in hist} == {"import"}


def test_label_studio_tasks_validate_with_the_sdk(base, tmp_path):
    li_mod = pytest.importorskip("label_studio_sdk.label_interface")
    ws, _ = base
    out = tmp_path / "tasks.json"
    rep = export(ws, "red", fmt="label-studio", out=out, top=4)
    tasks = json.loads(out.read_text())
    cfg = (tmp_path / "tasks.label_config.xml").read_text()
    assert rep.extra_files == [str(tmp_path / "tasks.label_config.xml")] and cfg == label_studio_config("red")
    li = li_mod.LabelInterface(cfg)
    li.validate()
    n_preds = n_rects = 0
    for task in tasks:
        assert set(task["data"]) == {"image", "assay_id", "assay_uri"}
        for ann in task.get("annotations", []):
            assert li.validate_annotation(ann), ann
        for pred in task.get("predictions", []):
            assert li.validate_prediction(pred, return_errors=True) == [], pred
            assert 0 <= pred["score"] <= 1 and pred["model_version"] in ("assay-logistic", "assay-pseudo")
            n_preds += 1
            n_rects += sum(r["type"] == "rectanglelabels" for r in pred["result"])
    assert n_preds == len(tasks) + 2 and len(tasks) == len(_labels(ws)) + 4
    assert n_rects == 2  # the detector's two boxes on one item
    # a prediction for another label config does not validate: the check is real
    bad = {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}], "score": 0.5}
    assert li.validate_prediction(bad, return_errors=True)


def test_label_studio_url_prefix(base, fresh, tmp_path):
    ws, _ = base
    out = tmp_path / "tasks.json"
    export(ws, "red", fmt="label-studio", out=out, url_prefix="/data/local-files/?d=", include_pseudo=False)
    tasks = json.loads(out.read_text())
    assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)
    for t in tasks:
        t["data"].pop("assay_uri")  # as a Label Studio export of that project would look
    out.write_text(json.dumps(tasks))
    with pytest.raises(InputError, match="task 1: image .*not in this corpus"):
        import_labels(fresh, out, fmt="label-studio")
    assert import_labels(fresh, out, fmt="label-studio", url_prefix="/data/local-files/?d=").written == len(tasks)


def test_coco_export_loads_with_pycocotools(base, tmp_path):
    ws, _ = base
    out = tmp_path / "coco.json"
    rep = export(ws, "red", fmt="coco", out=out)
    doc = json.loads(out.read_text())
    assert doc["categories"] == [{"id": 1, "name": "red", "supercategory": "assay"}]
    pos = {u for u, (v, _) in _labels(ws).items() if v == 1}
    assert {im["coco_url"] for im in doc["images"]} == set(_labels(ws))
    boxed = [a for a in doc["annotations"] if "bbox" in a]
    assert rep.boxes == len(boxed) == 2
    assert boxed[0]["bbox"] == pytest.approx([0.1 * 32, 0.2 * 24, 0.5 * 32, 0.6 * 24]) and boxed[0]["score"] == 0.9
    image_level = [a for a in doc["annotations"] if "bbox" not in a]
    assert len(image_level) == len(pos) - 1 and all(a["area"] == 0 for a in image_level)
    with_ann = {a["image_id"] for a in doc["annotations"]}
    id_to_uri = {im["id"]: im["coco_url"] for im in doc["images"]}
    assert {id_to_uri[i] for i in with_ann} == pos  # negatives: images without annotations
    coco_mod = pytest.importorskip("pycocotools.coco")
    coco = coco_mod.COCO(str(out))
    assert len(coco.getImgIds()) == len(doc["images"]) and coco.getCatIds(catNms=["red"]) == [1]
    assert len(coco.getAnnIds(catIds=[1])) == len(doc["annotations"])


def test_imagefolder_symlinks_or_copies(base, tmp_path):
    ws, _ = base
    export(ws, "red", fmt="imagefolder", out=tmp_path / "links")
    files = list((tmp_path / "links" / "red").iterdir()) + list((tmp_path / "links" / "not-red").iterdir())
    assert files and all(f.is_symlink() and f.resolve().exists() for f in files)
    export(ws, "red", fmt="imagefolder", out=tmp_path / "copies", copy=True)
    copies = list((tmp_path / "copies" / "red").iterdir())
    assert copies and not any(f.is_symlink() for f in copies)
    assert len(files) == len(_labels(ws))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        export(ws, "red", fmt="imagefolder", out=tmp_path / "afile")
    # A stale file from an earlier export (an item whose label has flipped since) goes; other files stay.
    pos = sorted((tmp_path / "links" / "red").iterdir())[0]
    stale = tmp_path / "links" / "not-red" / pos.name
    os.symlink(pos.resolve(), stale)
    (tmp_path / "links" / "red" / "README.txt").write_text("mine")
    export(ws, "red", fmt="imagefolder", out=tmp_path / "links")
    assert not stale.exists() and not stale.is_symlink() and pos.exists()
    assert (tmp_path / "links" / "red" / "README.txt").exists()


def test_fiftyone_layout(base, tmp_path):
    ws, _ = base
    export(ws, "red", fmt="fiftyone", out=tmp_path / "fo")
    doc = json.loads((tmp_path / "fo" / "labels.json").read_text())
    assert doc["classes"] == ["not-red", "red"]
    stems = {p.stem for p in (tmp_path / "fo" / "data").iterdir()}
    assert stems == set(doc["labels"]) and set(doc["labels"].values()) == {0, 1}
    try:
        import fiftyone as fo
    except ImportError:
        return
    ds = fo.Dataset.from_dir(str(tmp_path / "fo"), fo.types.FiftyOneImageClassificationDataset)  # pragma: no cover
    assert len(ds) == len(doc["labels"])  # pragma: no cover


def test_export_errors(base, tmp_path):
    ws, _ = base
    with pytest.raises(UnknownNameError):
        export(ws, "red", fmt="xml", out=tmp_path / "x")
    with pytest.raises(NotFoundError):
        export(ws, "blue", fmt="csv", out=tmp_path / "x.csv")
    with pytest.raises(InputError, match="is a folder"):
        export(ws, "red", fmt="csv", out=tmp_path)
    with pytest.raises(InputError, match="gave no boxes"):
        export(ws, "red", fmt="coco", out=tmp_path / "c.json", boxes_model="nobody")
    with pytest.raises(InputError, match="writes a folder"):
        export(ws, "red", fmt="fiftyone", out=tmp_path / "dog.fiftyone.json")
    assert not (tmp_path / "dog.fiftyone.json").exists()
    # options the format has no use for are errors, not silently ignored
    with pytest.raises(InputError, match="only the label-studio and coco exports hold"):
        export(ws, "red", fmt="csv", out=tmp_path / "b.csv", boxes_model="nobody")
    with pytest.raises(InputError, match="--url-prefix is for the label-studio export"):
        export(ws, "red", fmt="csv", out=tmp_path / "u.csv", url_prefix="/data/")
    with pytest.raises(UnknownNameError, match="unknown proxy 'bogus'"):
        export(ws, "red", fmt="csv", out=tmp_path / "p.csv", proxy="bogus")
    assert not any((tmp_path / f).exists() for f in ("b.csv", "u.csv", "p.csv"))
    with pytest.raises(UnknownNameError, match="test-mean-color"):  # a mistyped --encoder: an error naming the
        export(ws, "red", fmt="csv", out=tmp_path / "typo.csv", encoder="test-mean-colour")  # encoders, no export
    assert not (tmp_path / "typo.csv").exists()
    assert set(FORMATS) == {"csv", "parquet", "label-studio", "coco", "imagefolder", "fiftyone"}


# ---------------------------------------------------------------------------------------------- bad imports
def _tasks(ws, n=3):
    ids = ws.catalog.ids()[:n]
    uris = ws.catalog.uris(ids)
    return [{"id": 100 + k, "data": {"image": uris[int(i)]},
             "annotations": [{"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                          "value": {"choices": ["red" if k % 2 else "not-red"]}}],
                              "completed_by": {"email": "x@y"}}]}
            for k, i in enumerate(ids)]


def test_label_studio_import_from_another_project(fresh, tmp_path):
    tasks = _tasks(fresh)
    p = tmp_path / "ls.json"
    p.write_text(json.dumps(tasks))
    rep = import_labels(fresh, p, fmt="label-studio")
    assert rep.written == 3 and rep.positives == 1
    assert {h["annotator"] for h in fresh.catalog.label_history(fresh.catalog.concept("red").id)} == {"label-studio:x@y"}
    n0 = _n_labels(fresh)
    other = _tasks(fresh)
    other[1]["data"]["image"] = "https://elsewhere.example/cat.jpg"
    p.write_text(json.dumps(other))
    with pytest.raises(InputError, match=r"task 2 \(id 101\): image 'https://elsewhere.example/cat.jpg' is not in this corpus"):
        import_labels(fresh, p, fmt="label-studio")
    boxes_only = _tasks(fresh)
    boxes_only[2]["annotations"][0]["result"] = [{"from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
                                                  "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["car"]}}]
    p.write_text(json.dumps(boxes_only))
    with pytest.raises(InputError, match=r"task 3 \(id 102\): the annotation has no 'choices' result .*another label config"):
        import_labels(fresh, p, fmt="label-studio")
    other_choice = _tasks(fresh)
    other_choice[0]["annotations"][0]["result"][0]["value"]["choices"] = ["cat"]
    p.write_text(json.dumps(other_choice))
    with pytest.raises(InputError, match=r"task 1 \(id 100\): choice 'cat'"):
        import_labels(fresh, p, fmt="label-studio")
    with pytest.raises(InputError, match=r"task 1 \(id 100\): choice 'cat' is neither 'red' nor 'not-red'"):
        import_labels(fresh, p, fmt="label-studio", concept="red")
    no_image = _tasks(fresh)
    no_image[0]["data"] = {"text": "hello"}
    p.write_text(json.dumps(no_image))
    with pytest.raises(InputError, match=r"task 1 \(id 100\): the task has no data.image"):
        import_labels(fresh, p, fmt="label-studio")
    p.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(InputError, match="list of tasks"):
        import_labels(fresh, p, fmt="label-studio")
    assert _n_labels(fresh) == n0  # nothing half-imported


def test_label_studio_import_picks_the_latest_live_annotation(fresh, tmp_path):
    tasks = _tasks(fresh, 1)
    res = tasks[0]["annotations"][0]["result"]
    tasks[0]["annotations"] = [
        {"result": json.loads(json.dumps(res)), "updated_at": "2024-01-01"},
        {"result": [dict(res[0], value={"choices": ["red"]})], "updated_at": "2024-02-01"},
        {"result": [dict(res[0], value={"choices": ["not-red"]})], "updated_at": "2024-03-01", "was_cancelled": True},
    ]
    tasks.append({"id": 9, "data": {"image": tasks[0]["data"]["image"].replace("000", "001")}, "annotations": []})
    p = tmp_path / "ls.json"
    p.write_text(json.dumps(tasks))
    rep = import_labels(fresh, p, fmt="label-studio", concept="red")
    assert rep.written == 1 and rep.positives == 1 and rep.skipped == 1


@pytest.mark.parametrize(
    "rows,match",
    [
        ([["ID", "maybe"]], r"row 1: label must be one of"),
        ([[999999, "1"]], r"row 1: item id 999999 is not in the catalog"),
        ([["ID", "1"], ["ID", "0"]], r"row 2: item .* is labelled for 'red' again, differently \(first in l.csv row 1\)"),
        ([["x1", "1"]], r"row 1: id must be an integer"),
        # several bad rows: all of them in one message
        ([["ID", "maybe"], ["x1", "1"], [999999, "1"]],
         r"l.csv: 3 bad rows, nothing recorded:\n  l.csv row 1: label must be one of.*\n  l.csv row 2: id must be an "
         r"integer.*"
         r"\n  l.csv row 3: item id 999999 is not in the catalog"),
    ],
)
def test_csv_import_bad_rows(fresh, tmp_path, rows, match):
    first = int(fresh.catalog.ids()[0])
    p = tmp_path / "l.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows([[first if v == "ID" else v for v in r] for r in rows])
    with pytest.raises(InputError, match=match):
        import_labels(fresh, p, fmt="csv", concept="red")
    assert _n_labels(fresh) == 0


def test_csv_import_records_an_exactly_repeated_row_once(fresh, tmp_path, caplog):
    first, second = (int(i) for i in fresh.catalog.ids()[:2])
    p = tmp_path / "l.csv"
    p.write_text(f"id,label\n{first},1\n{second},0\n{first},yes\n")  # the same answer twice
    with caplog.at_level("WARNING"):
        rep = import_labels(fresh, p, fmt="csv", concept="red")
    assert rep.written == 2 and _n_labels(fresh) == 2
    assert "1 entries repeat an item's label exactly" in caplog.text


def test_csv_import_by_uri_concepts_and_errors(fresh, tmp_path):
    ids = fresh.catalog.ids()[:3]
    uris = fresh.catalog.uris(ids)
    p = tmp_path / "l.csv"
    p.write_text("uri,label,concept,annotator\n" + "".join(f"{uris[int(i)]},yes,blue,ann{k}\n" for k, i in enumerate(ids))
                 + f"{uris[int(ids[0])]},,blue,\n")
    with pytest.raises(NotFoundError, match="no concept named 'blue'"):
        import_labels(fresh, p)
    rep = import_labels(fresh, p, create_concepts=True)
    assert rep.written == 3 and rep.created_concepts == ["blue"] and rep.skipped == 1
    hist = fresh.catalog.label_history(fresh.catalog.concept("blue").id)
    assert {h["annotator"] for h in hist} == {"ann0", "ann1", "ann2"} and {h["source"] for h in hist} == {"import"}
    p.write_text("uri,label\n/not/here.png,1\n")
    with pytest.raises(InputError, match=r"row 1: uri '/not/here.png' is not in the catalog"):
        import_labels(fresh, p, concept="red")
    p.write_text("id,label\n1,1\n")
    with pytest.raises(InputError, match="no 'concept' column"):
        import_labels(fresh, p)
    with pytest.raises(UnknownNameError):
        import_labels(fresh, p, fmt="yolo")
    with pytest.raises(NotFoundError):
        import_labels(fresh, tmp_path / "missing.csv")


def test_coco_and_folder_import_errors(base, fresh, tmp_path):
    ws, _ = base
    out = tmp_path / "coco.json"
    export(ws, "red", fmt="coco", out=out)
    doc = json.loads(out.read_text())
    doc["images"][1]["coco_url"] = doc["images"][1]["file_name"] = "/elsewhere/x.png"
    out.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"image 2 .*'/elsewhere/x.png' is not in this corpus"):
        import_labels(fresh, out, fmt="coco")
    with pytest.raises(InputError, match="has no category 'blue'"):
        import_labels(fresh, out, fmt="coco", concept="blue")
    (tmp_path / "folders" / "cats").mkdir(parents=True)
    with pytest.raises(InputError, match="class folders"):
        import_labels(fresh, tmp_path / "folders", fmt="imagefolder")
    # Ordinary files named like item ids are not taken for those items unless their bytes are the items'.
    (tmp_path / "numbered" / "red").mkdir(parents=True)
    (tmp_path / "numbered" / "not-red").mkdir(parents=True)
    first = int(fresh.catalog.ids()[0])
    Image.new("RGB", (9, 9), (1, 2, 3)).save(tmp_path / "numbered" / "red" / f"{first:06d}.png")
    with pytest.raises(InputError, match=f"bytes are not those of item {first}"):
        import_labels(fresh, tmp_path / "numbered", fmt="imagefolder")
    assert _n_labels(fresh) == 0


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_export_and_import(base, fresh, tmp_path):
    ws, _ = base
    app = cli_app()
    r = runner.invoke(app, ["export", "red", "--format", "label-studio", "--out", str(tmp_path / "t.json"),
                            "--no-pseudo", "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pseudo"] == 0
    r = runner.invoke(app, ["labels", "import", str(tmp_path / "t.json"), "--format", "label-studio",
                            "--annotator", "team", "-w", str(fresh.root), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["written"] == len(_labels(ws, include_pseudo=False))
    r = runner.invoke(app, ["export", "red", "--format", "bogus", "--out", str(tmp_path / "x"), "-w", str(ws.root)])
    assert r.exit_code == 2 and "unknown export format" in r.output
    for fmt, name in (("csv", "a.csv"), ("parquet", "a.parquet"), ("coco", "c.json"), ("imagefolder", "if"), ("fiftyone", "fo")):
        r = runner.invoke(app, ["export", "red", "--format", fmt, "--out", str(tmp_path / name), "-w", str(ws.root)])
        assert r.exit_code == 0, r.output
        assert os.path.exists(tmp_path / name)


def test_a_text_concept_round_trips_through_label_studio(tmp_path):
    import fake_encoder  # noqa: F401
    from assay import embed

    def text_ws(root):
        w = Workspace.init(root, default_encoder="test-mean-color")
        (tmp_path / "t.csv").write_text("uri,text\n" + "".join(f"m{i},message {i} about cards\n" for i in range(8)))
        ingest(w.catalog, [tmp_path / "t.csv"])
        embed(w)
        w.catalog.add_concept("cards", text="cards")
        return w

    ws = text_ws(tmp_path / "a")
    ids = [int(i) for i in ws.catalog.ids()[:4]]
    Miner(ws, "cards").record_labels(ids, [1, 0, 1, 0], annotator="ann")
    out = tmp_path / "texts.json"
    export(ws, "cards", fmt="label-studio", out=out, with_scores=False)
    assert all("text" in t["data"] and "image" not in t["data"] for t in json.loads(out.read_text()))
    fresh = text_ws(tmp_path / "b")  # same manifest, same uris
    rep = import_labels(fresh, out, fmt="label-studio")
    assert rep.written == 4
    got = {fresh.catalog.get(h["item_id"]).uri: h["value"] for h in fresh.catalog.label_history(fresh.catalog.concept("cards").id)}
    want = {ws.catalog.get(i).uri: v for i, v in zip(ids, [1, 0, 1, 0])}
    assert got == want
    ws.close()
    fresh.close()
