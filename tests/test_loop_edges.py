"""The loop's commands on awkward input: label files, output paths, exemplars, names, strategy spellings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fake_encoder  # noqa: F401
from conftest import colour_corpus
from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import InputError, UnknownNameError
from assay.loop import Miner, read_label_file
from assay.search import build_index

runner = CliRunner()


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [colour_corpus(tmp_path / "imgs", 12, 60, 0, size=(16, 16))])
    embed(w)
    build_index(w, kind="flat")
    yield w
    w.close()


def _cli(ws, *args):
    return runner.invoke(app, ["-w", str(ws.root), *args], catch_exceptions=False)


def test_zero_and_false_labels_are_negatives_in_jsonl_and_parquet(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [int(i) for i in ws.catalog.ids()[:4]]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": ids[0], "label": 1}, {"id": ids[1], "label": 0}, {"id": ids[2], "label": False},
        {"id": ids[3], "label": None}]) + "\n")
    got_ids, vals = read_label_file(ws, tmp_path / "l.jsonl")
    assert got_ids.tolist() == ids[:3] and vals.tolist() == [1, 0, 0]
    pq.write_table(pa.table({"id": ids[:3], "label": [1.0, 0.0, 0.0]}), tmp_path / "l.parquet")
    assert read_label_file(ws, tmp_path / "l.parquet")[1].tolist() == [1, 0, 0]


def test_label_files_that_cannot_be_read_are_clear_errors(ws, tmp_path):
    i = int(ws.catalog.ids()[0])
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "latin.csv").write_bytes("id,label,note\n%d,1,caf\xe9\n".encode("latin-1") % i)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    (tmp_path / "huge.csv").write_text("id,label\n99999999999999999999999,1\n")
    (tmp_path / "frac.jsonl").write_text(json.dumps({"id": i + 0.7, "label": 1}) + "\n")
    (tmp_path / "bool.jsonl").write_text(json.dumps({"id": True, "label": 1}) + "\n")
    for name, msg in [("dir.csv", "not a file"), ("latin.csv", "UTF-8"), ("broken.parquet", "cannot read"),
                      ("list.jsonl", "JSON object"), ("huge.csv", "2\\*\\*63"), ("frac.jsonl", "integer"),
                      ("bool.jsonl", "integer")]:
        with pytest.raises(InputError, match=msg):
            read_label_file(ws, tmp_path / name)
    n0 = len(ws.catalog.current_labels(ws.catalog.add_concept("red").id)[0])
    r = _cli(ws, "label", "red", "--file", str(tmp_path / "latin.csv"))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert len(ws.catalog.current_labels(ws.catalog.concept("red").id)[0]) == n0


def test_bom_file_uris_and_spaces_in_label_files(ws, tmp_path):
    from pathlib import Path

    rows = ws.catalog.get_many(ws.catalog.ids()[:3])
    lines = ["uri,label", f"{Path(rows[0].uri).as_uri()},1", f"  {rows[1].uri}  ,0", f"{rows[2].uri},yes"]
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())
    ids, vals = read_label_file(ws, tmp_path / "bom.csv")
    assert ids.tolist() == [r.id for r in rows] and vals.tolist() == [1, 0, 1]


def test_mine_takes_a_proxy_named_after_the_strategy(ws):
    ws.catalog.add_concept("red", text="red")
    r = _cli(ws, "mine", "red", "--batch", "4", "--strategy", "random@mlp", "--json")
    assert r.exit_code == 0, r.output
    assert ws.catalog.rounds(ws.catalog.concept("red").id)[-1].params["proxy"] == "mlp"
    r = _cli(ws, "mine", "red", "--batch", "4", "--strategy", "random@mlp", "--proxy", "svm")
    assert r.exit_code == 2 and "give one" in r.output
    r = _cli(ws, "mine", "red", "--batch", "4", "--strategy", "nope")
    listed = r.output.split("expected one of:")[1].replace("\n", " ").split(", ")
    assert r.exit_code == 2 and len(listed) == len(set(x.strip() for x in listed))


def test_mine_out_is_checked_before_a_round_is_recorded(ws, tmp_path):
    ws.catalog.add_concept("red", text="red")
    r = _cli(ws, "mine", "red", "--batch", "5", "--out", str(tmp_path))  # a folder
    assert r.exit_code == 2 and "is a folder" in r.output
    assert ws.catalog.rounds(ws.catalog.concept("red").id) == []
    r = _cli(ws, "mine", "red", "--batch", "5", "--out", str(tmp_path / "new" / "sub" / "batch.csv"))
    assert r.exit_code == 0, r.output
    text = (tmp_path / "new" / "sub" / "batch.csv").read_text()
    assert text.startswith("id,uri,score,prelabel,label,concept,round") and ",red,1" in text
    # the batch file names its concept: answering it for another concept is refused, not recorded there
    ws.catalog.add_concept("blue")
    filled = text.replace(",,red,1", ",1,red,1")
    (tmp_path / "answers.csv").write_text(filled)
    r = _cli(ws, "label", "blue", "--file", str(tmp_path / "answers.csv"))
    assert r.exit_code == 2 and "concept 'red' differs from 'blue'" in r.output, r.output
    assert ws.catalog.label_history(ws.catalog.concept("blue").id) == []
    r = _cli(ws, "label", "red", "--file", str(tmp_path / "answers.csv"))
    assert r.exit_code == 0 and "recorded 5 labels" in r.output, r.output
    hist = ws.catalog.label_history(ws.catalog.concept("red").id)
    assert {h["round_id"] for h in hist} == {ws.catalog.rounds(ws.catalog.concept("red").id)[-1].id}
    r = _cli(ws, "harvest", "red", "--out", str(tmp_path / "mined.txt"))
    assert r.exit_code == 2 and ".csv or .parquet" in r.output


def test_concept_add_checks_the_name_before_ingesting_exemplars(ws, tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), (230, 10, 10)).save(tmp_path / "new.png")
    ws.catalog.add_concept("red", text="red")
    n0 = ws.catalog.count()["total"]
    r = _cli(ws, "concept", "add", "red", "--exemplar", str(tmp_path / "new.png"))
    assert r.exit_code == 2 and "exists already" in r.output
    assert ws.catalog.count()["total"] == n0  # the exemplar file was not ingested
    r = _cli(ws, "concept", "add", "a/b")
    assert r.exit_code == 2 and "may not contain" in r.output
    for dots in ("..", "."):  # the page's URLs would resolve them away
        r = _cli(ws, "concept", "add", dots)
        assert r.exit_code == 2 and "only dots" in " ".join(r.output.split())
    r = _cli(ws, "concept", "add", "[bold]oops")  # rich markup characters are printed as they are
    assert r.exit_code == 0 and "[bold]oops" in r.output
    r = _cli(ws, "mine", "[bold]nope")
    assert r.exit_code == 2 and "[bold]nope" in r.output
    # every exemplar and the encoder are checked before a new exemplar file is ingested
    for args, words in ((["--exemplar", "999999"], "not in the catalog: [999999]"),
                        (["--encoder", "bogus"], "unknown encoder 'bogus'"),
                        (["--encoder", "minilm"], "embeds text only"),
                        (["--exemplar", " "], "got an empty value")):
        r = _cli(ws, "concept", "add", "blue", "--exemplar", str(tmp_path / "new.png"), *args)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), (args, r.output)
    assert ws.catalog.count()["total"] == n0 and "blue" not in {c.name for c in ws.catalog.concepts()}
    # a truncated file passes a header probe but not a decode: refused before the good exemplar is ingested
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    r = _cli(ws, "concept", "add", "blue", "--exemplar", str(tmp_path / "new.png"), "--exemplar", str(tmp_path / "cut.jpg"))
    assert r.exit_code == 2 and "cannot be used" in r.output and "truncated" in r.output, r.output
    assert ws.catalog.count()["total"] == n0


def test_a_broken_exemplar_file_is_refused_every_time(ws, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    for _ in range(2):
        r = _cli(ws, "concept", "add", "zz", "--exemplar", str(tmp_path / "bad.png"))
        assert r.exit_code == 2 and "cannot be used" in r.output
    assert [c.name for c in ws.catalog.concepts()] == []
    n0 = ws.catalog.count()["total"]
    (tmp_path / "folder").mkdir()
    (tmp_path / "m.csv").write_text("text\nsome text\n")
    for bad in (tmp_path / "folder", tmp_path / "m.csv"):  # a folder or a manifest is not one exemplar
        r = _cli(ws, "concept", "add", "zz", "--exemplar", str(bad))
        assert r.exit_code == 2 and "cannot be used" in r.output, r.output
    assert ws.catalog.count()["total"] == n0  # nothing was ingested, not even the broken file


def test_harvest_leaves_out_labels_on_items_without_an_embedding(ws, tmp_path):
    from PIL import Image

    truth = {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}
    c = ws.catalog.add_concept("red", text="red")
    ids = list(truth)[:30]
    Miner(ws, "red").record_labels(ids, [truth[i] for i in ids])
    Image.new("RGB", (16, 16), (230, 10, 10)).save(tmp_path / "late.png")
    ingest(ws.catalog, [tmp_path / "late.png"])  # ingested after the last embed
    late = ws.catalog.id_for_uri(str(tmp_path / "late.png"))
    Miner(ws, "red").record_labels([late], [1])
    rows = Miner(ws, "red").harvest(top=5)
    assert len(rows) == 5 and c.id


def test_strategy_spelling_proxy_and_seed_are_checked_up_front(ws):
    truth = {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}
    ws.catalog.add_concept("red", text="red")
    m = Miner(ws, "red")
    with pytest.raises(UnknownNameError):
        m.propose(strategy="seals:entropy", batch=5, proxy="bogus")  # a cold start: no proxy trained yet
    with pytest.raises(InputError, match="seed"):
        m.propose(strategy="seals:entropy", batch=5, seed=-1)
    assert ws.catalog.rounds(m.concept.id) == []
    ids = list(truth)[:20]
    m.record_labels(ids, [truth[i] for i in ids])
    with pytest.raises(InputError, match="k_positive must be at least k"):
        m.propose(strategy="seals:entropy", batch=3, seed=0, seals_k=5, seals_k_positive=2)
    row, _ = m.propose(strategy="seals:entropy", batch=3, seed=0, seals_k=2, seals_k_positive=2)
    assert row.params["seals_k_positive"] == 2  # the provenance records the pool used
    ws.catalog.add_concept("red1", text="red")
    m = Miner(ws, "red1")
    m.record_labels(ids, [truth[i] for i in ids])
    _, lower = m.propose(strategy="seals:entropy", batch=3, seed=0, seals_k=1)
    ws.catalog.add_concept("red2", text="red")
    m2 = Miner(ws, "red2")
    m2.record_labels(ids, [truth[i] for i in ids])
    _, upper = m2.propose(strategy="SEALS:entropy", batch=3, seed=0, seals_k=1)
    assert upper.pool_size == lower.pool_size < len(truth) - len(ids)


def test_simulate_out_onto_a_file_fails_before_simulating(ws, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = _cli(ws, "simulate", "--positive", "red", "--out", str(tmp_path / "afile"))
    assert r.exit_code == 2 and "is a file" in r.output


def test_a_label_file_giving_one_item_two_labels_is_refused(ws, tmp_path):
    i, j = (int(x) for x in ws.catalog.ids()[:2])
    (tmp_path / "dup.csv").write_text(f"id,label\n{i},1\n{j},0\n{i},1\n")
    ids, vals = read_label_file(ws, tmp_path / "dup.csv")  # the same answer twice is fine, recorded once
    assert (ids.tolist(), vals.tolist()) == ([i, j], [1, 0])
    (tmp_path / "conflict.csv").write_text(f"id,label\n{i},1\n{j},0\n{i},0\n")
    with pytest.raises(InputError, match="rows 1 and 3"):
        read_label_file(ws, tmp_path / "conflict.csv")
    uri_j = ws.catalog.get(j).uri
    (tmp_path / "mismatch.csv").write_text(f"id,uri,label\n{i},{uri_j},1\n")
    with pytest.raises(InputError, match=f"row 1: id {i} and uri .* name different items \\(the uri is item {j}\\)"):
        read_label_file(ws, tmp_path / "mismatch.csv")
    (tmp_path / "match.csv").write_text(f"id,uri,label\n{j},{uri_j},1\n")
    assert read_label_file(ws, tmp_path / "match.csv")[0].tolist() == [j]


def test_harvest_leaves_out_labelled_negatives_and_honours_min_score(ws):
    truth = {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}
    ws.catalog.add_concept("red", text="red")
    ids = list(truth)[:40]
    Miner(ws, "red").record_labels(ids, [truth[i] for i in ids])
    negatives = {i for i in ids if truth[i] == 0}
    rows = Miner(ws, "red").harvest(top=len(truth))
    assert not {r["id"] for r in rows} & negatives and len(rows) == len(truth) - len(negatives)
    every = Miner(ws, "red").harvest(top=len(truth), include_negatives=True)
    assert {r["id"] for r in every} >= negatives
    high = Miner(ws, "red").harvest(top=len(truth), min_score=0.5)
    assert high and all(r["score"] >= 0.5 or r["label"] == 1 for r in high) and len(high) < len(rows)
    # a person's yes outranks the model's score: no labelled positive is dropped by min_score
    strict = Miner(ws, "red").harvest(top=len(truth), min_score=0.999)
    assert {i for i in ids if truth[i] == 1} <= {r["id"] for r in strict}
    with pytest.raises(InputError, match="min_score"):
        Miner(ws, "red").harvest(min_score=2.0)
    r = _cli(ws, "harvest", "red", "--top", "5", "--json")
    assert r.exit_code == 0 and not {x["id"] for x in json.loads(r.stdout)["items"]} & negatives


def test_a_stale_index_is_reported(tmp_path, caplog):
    from assay.search import Searcher

    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [colour_corpus(tmp_path / "imgs", 4, 16, 0, size=(16, 16))])
    embed(w, limit=5)
    build_index(w, kind="flat")
    assert Searcher(w).index() is not None and Searcher(w).stale_rows == 0
    embed(w)
    s = Searcher(w)
    with caplog.at_level("WARNING"):
        s.index()
    assert s.stale_rows == 15 and "older than its embeddings" in caplog.text
    # the text bridge is built with the index: a text query through it says so too
    caplog.clear()
    s = Searcher(w)
    with caplog.at_level("WARNING"), pytest.raises(Exception):
        s.bridge_index()  # (this encoder has no bridge; the warning comes first)
    assert s.stale_rows == 15 and "older than its embeddings" in caplog.text
    build_index(w, kind="flat")
    assert Searcher(w).index().ntotal == 20 and Searcher(w).stale_rows == 0
    # region text search in a workspace without regions says to embed them (not only to index)
    from assay.errors import NoEmbeddingsError

    with pytest.raises(NoEmbeddingsError, match="embed --regions"):
        Searcher(w).region_bridge_index()
    w.close()


def test_version_option():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("assay ")


def test_a_later_pseudo_label_never_hides_a_human_answer_in_exports(ws):
    from assay.interop.exports import collect_rows

    c = ws.catalog.add_concept("red", text="red")
    i, j = (int(x) for x in ws.catalog.ids()[:2])
    ws.catalog.add_labels(c.id, [i], [0], source="human", annotator="carol")
    ws.catalog.add_labels(c.id, [i, j], [1, 1], source="pseudo")  # e.g. re-imported from an older export
    rows = {r.id: r for r in collect_rows(ws, "red", with_scores=False)[0]}
    assert (rows[i].label, rows[i].source, rows[i].annotator) == (0, "human", "carol")
    assert (rows[j].label, rows[j].source) == (1, "pseudo")
    rows = {r.id: r for r in collect_rows(ws, "red", include_pseudo=False, with_scores=False)[0]}
    assert set(rows) == {i}


def test_index_without_options_keeps_the_pca_and_kind_it_was_built_with(ws):
    rep = build_index(ws, kind="hnsw", pca=2, rebuild=True)
    assert rep["index"]["kind"] == "hnsw"
    again = build_index(ws)  # e.g. what `assay dedup` runs to bring the index up to date
    assert again["action"] == "updated" and "rebuilt_because" not in again
    assert again["index"]["kind"] == "hnsw"
    from assay.search import Searcher

    assert Searcher(ws).index().metadata.get("pca") == 2


def test_overlong_annotators_are_refused_and_imports_are_all_or_nothing(ws, tmp_path):
    from assay.interop.imports import import_labels

    ids = [int(x) for x in ws.catalog.ids()[:3]]
    c = ws.catalog.add_concept("red", text="red")
    with pytest.raises(InputError, match="200 characters"):
        ws.catalog.add_labels(c.id, ids[:1], [1], source="human", annotator="b" * 250)
    (tmp_path / "long.csv").write_text(f"id,label,annotator\n{ids[0]},1,alice\n{ids[1]},0,alice\n{ids[2]},1,{'b' * 250}\n")
    with pytest.raises(InputError, match="200 characters"):
        import_labels(ws, tmp_path / "long.csv", concept="dog", create_concepts=True)
    assert ws.catalog.label_history(c.id) == [] and "dog" not in {x.name for x in ws.catalog.concepts()}


def test_coco_files_that_would_mislabel_are_refused(ws, tmp_path):
    from assay.interop.imports import import_labels

    rows = ws.catalog.get_many(ws.catalog.ids()[:2])
    images = [{"id": k + 1, "file_name": r.uri} for k, r in enumerate(rows)]
    good = {"images": images, "categories": [{"id": 1, "name": "red"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}
    cases = {
        "dangling": ({**good, "annotations": [{"id": 1, "image_id": 9, "category_id": 1}]}, "not among the file's images"),
        "strcat": ({**good, "categories": [{"id": "1", "name": "red"}]}, "integer id"),
        "dupname": ({**good, "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "red"}]}, "appears twice"),
        "noimgid": ({**good, "images": [{"file_name": r.uri} for r in rows]}, "integer id"),
    }
    for name, (doc, msg) in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match=msg):
            import_labels(ws, tmp_path / f"{name}.json", fmt="coco", concept="red", create_concepts=True)
    (tmp_path / "good.json").write_text(json.dumps(good))
    rep = import_labels(ws, tmp_path / "good.json", fmt="coco", concept="red", create_concepts=True)
    assert rep.written == 2 and rep.positives == 1


def test_file_tree_exports_refuse_missing_files_before_writing(ws, tmp_path):
    from pathlib import Path

    from assay.interop.exports import export as export_concept

    c = ws.catalog.add_concept("red", text="red")
    rows = ws.catalog.get_many(ws.catalog.ids()[:3])
    ws.catalog.add_labels(c.id, [r.id for r in rows], [1, 0, 1], source="human")
    Path(rows[0].uri).unlink()
    for fmt in ("imagefolder", "fiftyone"):
        with pytest.raises(InputError, match="missing"):
            export_concept(ws, "red", fmt=fmt, out=tmp_path / fmt, copy=True)
        assert not (tmp_path / fmt).exists()
    export_concept(ws, "red", fmt="csv", out=tmp_path / "sub" / "red.csv")  # needs no files
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        export_concept(ws, "red", fmt="csv", out=tmp_path / "afile" / "red.csv")


def test_export_top_rows_skip_duplicates(ws, tmp_path):
    from assay.interop.exports import collect_rows

    truth = {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}
    red = [i for i, v in truth.items() if v][:1]
    src = ws.catalog.get(red[0]).uri
    (tmp_path / "dups").mkdir()
    for k in range(3):  # exact copies of a red image: they would top the ranking
        (tmp_path / "dups" / f"copy{k}.png").write_bytes(open(src, "rb").read())
    ingest(ws.catalog, [tmp_path / "dups"])
    embed(ws)
    ws.catalog.add_concept("red", text="red")
    ids = list(truth)[:30]
    Miner(ws, "red").record_labels(ids, [truth[i] for i in ids])
    rows, _ = collect_rows(ws, "red", top=10)
    extra = [r.id for r in rows if r.label is None]
    assert len(extra) == 10 and not set(extra) & set(ws.catalog.non_representative_ids().tolist())


def test_import_files_with_odd_shapes_are_clear_errors(ws, tmp_path):
    from pathlib import Path

    from assay.interop.imports import import_labels
    from assay.interop.scores import import_scores

    i = int(ws.catalog.ids()[0])
    uri = ws.catalog.get(i).uri
    ws.catalog.add_concept("red", text="red")
    (tmp_path / "extra.csv").write_text(f"id,label\n{i},1,surplus\n")
    with pytest.raises(InputError, match="more fields"):
        read_label_file(ws, tmp_path / "extra.csv")
    with pytest.raises(InputError, match="more fields"):
        import_labels(ws, tmp_path / "extra.csv", concept="red")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match="folder"):
        import_labels(ws, tmp_path / "dir.json", fmt="coco", concept="red")
    (tmp_path / "latin.json").write_bytes('{"images": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        import_labels(ws, tmp_path / "latin.json", fmt="label-studio", concept="red")
    (tmp_path / "ls.json").write_text(json.dumps([{"data": {"image": uri}, "annotations": [
        {"result": [{"type": "choices", "value": ["red"]}]}]}]))
    with pytest.raises(InputError, match="'value' must be an object"):
        import_labels(ws, tmp_path / "ls.json", fmt="label-studio", concept="red")
    # scores: other spellings of a corpus path resolve; ids beyond int64 are unknown ids, not a crash
    (tmp_path / "s.csv").write_text(f"uri,score\n{Path(uri).as_uri()},0.9\n")
    assert import_scores(ws.catalog, tmp_path / "s.csv", model="m", concept="red").rows == 1
    (tmp_path / "big.jsonl").write_text(json.dumps({"id": 10**30, "score": 0.5}) + "\n")
    with pytest.raises(InputError):
        import_scores(ws.catalog, tmp_path / "big.jsonl", model="m2", concept="red")


def test_label_studio_url_prefix_encodes_odd_file_names(ws, tmp_path):
    from PIL import Image

    from assay.interop.exports import export
    from assay.interop.imports import import_labels

    d = tmp_path / "odd"
    d.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(d / "my cat #1.png")
    ingest(ws.catalog, [d])
    embed(ws)
    item = ws.catalog.id_for_uri(str(d / "my cat #1.png"))
    c = ws.catalog.add_concept("red", text="red")
    ws.catalog.add_labels(c.id, [item], [1], source="human")
    out = tmp_path / "ls.json"
    export(ws, "red", fmt="label-studio", out=out, url_prefix="/data/local-files/?d=", include_pseudo=False)
    task = json.loads(out.read_text())[0]
    assert "%20" in task["data"]["image"] and "%231" in task["data"]["image"] and "#" not in task["data"]["image"]
    del task["data"]["assay_uri"]  # as a Label Studio export gives it back: only data.image
    task["annotations"] = [{"result": [{"type": "choices", "value": {"choices": ["red2"]}}]}]
    out.write_text(json.dumps([task]))
    ws.catalog.add_concept("red2", text="red")
    rep = import_labels(ws, out, fmt="label-studio", concept="red2", url_prefix="/data/local-files/?d=")
    assert rep.written == 1


def test_a_fiftyone_export_with_copied_media_and_null_classes_imports(ws, tmp_path):
    from assay.interop.imports import import_labels

    rows = ws.catalog.get_many(ws.catalog.ids()[:3])
    root = tmp_path / "fo"
    (root / "data").mkdir(parents=True)
    labels = {}
    for k, r in enumerate(rows):  # FiftyOne's default: media copied under its own names, classes null
        (root / "data" / f"img{k:03d}.png").write_bytes(open(r.uri, "rb").read())
        labels[f"img{k:03d}"] = {"label": "red" if k == 0 else "not-red"}
    (root / "labels.json").write_text(json.dumps({"classes": None, "labels": labels}))
    ws.catalog.add_concept("red", text="red")
    rep = import_labels(ws, root, fmt="fiftyone", concept="red")
    assert rep.written == 3 and rep.positives == 1
    ids, vals = ws.catalog.current_labels(ws.catalog.concept("red").id)
    assert dict(zip(ids.tolist(), vals.tolist())) == {rows[0].id: 1, rows[1].id: 0, rows[2].id: 0}


def test_two_index_builds_at_once_take_turns(ws):
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); import fake_encoder; from assay import Workspace; "
            "from assay.search import build_index; w = Workspace.open(sys.argv[1]); "
            "[build_index(w, kind='flat', rebuild=True) for _ in range(4)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ws.root)], cwd=Path(__file__).parents[1],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    from assay.search import Searcher

    s = Searcher(ws)
    assert s.index().ntotal == len(ws.vectors())
    assert len(s.search_items([int(ws.catalog.ids()[0])], k=3)[0]) == 3


def test_rounds_lists_provenance_and_writes_a_batch_again(ws, tmp_path):
    import csv

    ws.catalog.add_concept("red", text="red")
    r = _cli(ws, "rounds", "red")
    assert r.exit_code == 0 and "no rounds yet" in r.output
    r = _cli(ws, "rounds", "red", "--out", str(tmp_path / "b.csv"))
    assert r.exit_code != 0 and "no rounds yet" in r.output
    r = _cli(ws, "mine", "red", "--batch", "6", "--strategy", "random", "--seed", "1", "--json")
    first = json.loads(r.stdout)
    # Answer 4 of the first round, then run a second one (as after an interrupted `mine --out`: the round is
    # recorded but its CSV was never written).
    ids = [it["id"] for it in first["items"]]
    Miner(ws, "red").record_labels(np.array(ids[:4]), np.array([1, 0, 0, 1]))
    r = _cli(ws, "mine", "red", "--batch", "5", "--strategy", "random", "--seed", "2")
    assert r.exit_code == 0, r.output
    r = _cli(ws, "rounds", "red", "--json")
    got = json.loads(r.stdout)["rounds"]
    assert [(g["round"], g["batch"], g["answered"], g["positives"]) for g in got] == [(1, 6, 4, 2), (2, 5, 0, 0)]
    assert "random" in got[0]["strategy"] and got[0]["encoder"] == "test-mean-color"
    r = _cli(ws, "rounds", "red")
    assert "round 1" in r.output and "4 answered (2 positive)" in r.output
    # the latest round's batch, as `mine --out` writes it; an earlier one by number
    r = _cli(ws, "rounds", "red", "--out", str(tmp_path / "latest.csv"))
    assert r.exit_code == 0, r.output
    with open(tmp_path / "latest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "uri", "score", "prelabel", "label", "concept", "round"] and len(rows) == 5
    r = _cli(ws, "rounds", "red", "--round", "1", "--out", str(tmp_path / "r1.csv"), "--json")
    one = json.loads(r.stdout)
    assert one["round"] == 1 and [it["id"] for it in one["items"]] == ids
    assert [it["label"] for it in one["items"]][:4] == [1, 0, 0, 1]
    with open(tmp_path / "r1.csv", newline="") as f:
        assert [int(x["id"]) for x in csv.DictReader(f)] == ids
    assert not list(tmp_path.glob(".*.tmp"))
    r = _cli(ws, "rounds", "red", "--round", "9")
    assert r.exit_code != 0 and "no round 9" in r.output and "rounds 1-2" in r.output
    r = _cli(ws, "rounds", "nope")
    assert r.exit_code != 0 and "no concept named 'nope'" in r.output


def test_rounds_proposed_at_once_do_not_propose_the_same_items(ws, tmp_path):
    import subprocess
    import sys
    import threading

    truth = {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}
    ws.catalog.add_concept("red", text="red")
    ids = list(truth)[:20]
    Miner(ws, "red").record_labels(ids, [truth[i] for i in ids])
    # Threads (the server's proposer beside a request) ...
    results: list = []

    def run():
        row, out = Miner(Workspace.open(ws.root), "red").propose(strategy="most-likely-positive", batch=8)
        results.append(set(int(i) for i in out.ids))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(len(r) == 8 for r in results)
    assert not (results[0] & results[1]) and not (results[0] & results[2]) and not (results[1] & results[2])
    # ... and processes (two `assay mine` at once).
    code = ("import sys, json; sys.path.insert(0, sys.argv[2]); import fake_encoder; from assay import Workspace; "
            "from assay.loop import Miner; r, o = Miner(Workspace.open(sys.argv[1]), 'red').propose("
            "strategy='most-likely-positive', batch=6); print(json.dumps([int(i) for i in o.ids]))")
    tests_dir = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ws.root), tests_dir], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [set(json.loads(p.communicate(timeout=120)[0])) for p in procs]
    assert all(len(o) == 6 for o in outs) and not (outs[0] & outs[1])
    assert len(ws.catalog.rounds(ws.catalog.concept("red").id)) == 5


def test_a_label_file_with_an_unclosed_quote_says_so(ws, tmp_path):
    (tmp_path / "q.csv").write_text('id,label\n"5,1\n6,0\n')
    with pytest.raises(InputError, match="quote opened and never closed"):
        read_label_file(ws, tmp_path / "q.csv")


def test_importing_the_same_answers_again_writes_nothing_but_a_change_is_kept(ws, tmp_path):
    ids = [int(x) for x in ws.catalog.ids()[:4]]
    cid = ws.catalog.add_concept("red", text="red").id
    f = tmp_path / "a.csv"
    f.write_text("id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, [1, 0, 1, 0])))
    runner = CliRunner()
    for _ in range(3):  # the label command, run again on the same file
        r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(f), "--annotator", "ann", "--json"])
        assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["recorded"] == 0 and json.loads(r.stdout)["unchanged"] == 4
    assert len(ws.catalog.label_history(cid)) == 4
    # another annotator's same answers are theirs: written; a changed answer is a new row
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(f), "--annotator", "bob", "--json"])
    assert json.loads(r.stdout)["recorded"] == 4
    f.write_text(f"id,label\n{ids[0]},0\n{ids[1]},0\n")
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(f), "--annotator", "ann", "--json"])
    assert json.loads(r.stdout)["recorded"] == 2  # a change, and a repeat of an answer bob's came after
    assert [h["value"] for h in ws.catalog.label_history(cid, ids[0]) if h["annotator"] == "ann"] == [1, 0]
    # someone else answered since: the same file again makes ann's answer the current one again
    f.write_text(f"id,label\n{ids[2]},0\n")
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(f), "--annotator", "bob", "--json"])
    f.write_text(f"id,label\n{ids[2]},1\n")
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(f), "--annotator", "ann", "--json"])
    assert json.loads(r.stdout)["recorded"] == 1
    lab, val = ws.catalog.current_labels(cid)
    assert dict(zip(lab.tolist(), val.tolist()))[ids[2]] == 1
    # `labels import` (source import) does the same
    g = tmp_path / "imp.csv"
    g.write_text("id,label,concept\n" + "".join(f"{i},1,red\n" for i in ids))
    for k in range(2):
        r = runner.invoke(app, ["-w", str(ws.root), "labels", "import", str(g), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["written"] == (4 if k == 0 else 0)
    assert json.loads(r.stdout)["unchanged"] == 4
    # an export of these answers imported again adds nothing either
    out = tmp_path / "exp.csv"
    assert runner.invoke(app, ["-w", str(ws.root), "export", "red", "--format", "csv", "--out", str(out)]).exit_code == 0
    n_rows = len(ws.catalog.label_history(cid))
    r = runner.invoke(app, ["-w", str(ws.root), "labels", "import", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["written"] == 0 and len(ws.catalog.label_history(cid)) == n_rows


def test_seals_rounds_after_reingest_leave_out_changed_and_missing_files(ws, tmp_path):
    from PIL import Image

    cid = ws.catalog.add_concept("red", text="red").id
    rows = ws.catalog.get_many(ws.catalog.ids())
    reds = [r.id for r in rows if "red" in Path(r.uri).name]
    others = [r.id for r in rows if "red" not in Path(r.uri).name]
    m = Miner(ws, "red")
    m.record_labels(reds[:2] + others[:2], [1, 1, 0, 0])
    # two unlabelled red photos: one replaced by other bytes, one deleted; re-ingest (no embed, no index)
    changed, gone = (ws.catalog.get(i) for i in reds[2:4])
    Image.new("RGB", (16, 16), (250, 5, 5)).rotate(45).save(changed.uri)
    Path(gone.uri).unlink()
    ingest(ws, [Path(changed.uri).parent])
    for strategy in ("seals:most-likely-positive", "seals:entropy"):
        _, out = m.propose(strategy=strategy, batch=8, seed=0, seals_k=50)
        assert changed.id not in out.ids and gone.id not in out.ids, strategy
    assert cid == ws.catalog.concept("red").id


def test_k_top_and_batch_beyond_the_corpus_ask_for_what_there_is(ws):
    from assay.search import Searcher

    n = len(ws.catalog.ids())
    hits = Searcher(ws).search(item=int(ws.catalog.ids()[0]), k=10_000_000_000)
    assert len(hits) == n - 1
    scores, ids = Searcher(ws).neighbors(ws.catalog.ids()[:2], k=n + 5)  # padded to k, every other item found
    assert ids.shape == (2, n + 5) and (ids[:, : n - 1] >= 0).all() and (ids[:, n - 1 :] == -1).all()
    assert np.isinf(scores[:, n - 1 :]).all()
    ws.catalog.add_concept("red", text="red")
    m = Miner(ws, "red")
    rows = ws.catalog.get_many(ws.catalog.ids())
    reds = [r.id for r in rows if "red" in Path(r.uri).name][:3]
    others = [r.id for r in rows if "red" not in Path(r.uri).name][:3]
    m.record_labels(reds + others, [1, 1, 1, 0, 0, 0])
    got = m.harvest(top=100_000_000, include_negatives=True)
    assert 0 < len(got) <= n
    _, out = m.propose(strategy="seals:entropy", seals_k=3_000_000_000, batch=5, seed=0)  # all neighbours, no blow-up
    assert len(out.ids) == 5
    _, out = m.propose(strategy="information-density", strategy_params={"k": 1_000_000_000}, batch=5, seed=0)
    assert len(out.ids) == 5


def test_a_new_exemplar_file_is_embedded_alone_not_the_whole_pending_corpus(ws, tmp_path):
    from PIL import Image

    more = tmp_path / "more"
    more.mkdir()
    for k in range(3):
        Image.new("RGB", (16, 16), (10 * k, 200, 30)).save(more / f"late_{k}.png")
    ingest(ws.catalog, [more])  # ingested, not embedded
    ex = tmp_path / "exemplar.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(ex)
    r = _cli(ws, "concept", "add", "redder", "--exemplar", str(ex), "--json")
    assert r.exit_code == 0, r.output
    assert ws.status()["pending"]["test-mean-color"] == 3  # the three late photos are still waiting
    ex_id = ws.catalog.id_for_uri(str(ex.resolve())) or ws.catalog.id_for_uri(ex.resolve().as_uri())
    assert json.loads(r.stdout)["exemplars"] == [ex_id]
    assert ws.vectors().contains([ex_id]).all()
    late = ws.catalog.id_for_uri(str((more / "late_0.png").resolve())) or ws.catalog.id_for_uri((more / "late_0.png").resolve().as_uri())
    r = _cli(ws, "concept", "add", "greener", "--exemplar", str(late), "--json")  # ingested, not embedded: just it
    assert r.exit_code == 0, r.output
    assert ws.status()["pending"]["test-mean-color"] == 2
    busy = ws.vectors()
    busy.lock()  # an embed running elsewhere: a clear message, not a traceback
    try:
        r = _cli(ws, "concept", "add", "greenest", "--exemplar", str(more / "late_1.png"))
        assert r.exit_code == 2 and "`assay embed` is running" in r.output
    finally:
        busy.unlock()


def test_mine_takes_strategy_params_and_the_api_takes_a_proxy_suffix(ws):
    ws.catalog.add_concept("red", text="red")
    rows = ws.catalog.get_many(ws.catalog.ids())
    reds = [r.id for r in rows if "red" in Path(r.uri).name][:3]
    others = [r.id for r in rows if "red" not in Path(r.uri).name][:3]
    Miner(ws, "red").record_labels(reds + others, [1, 1, 1, 0, 0, 0])
    r = _cli(ws, "mine", "red", "--strategy", "value", "--param", "a=1", "--param", "b=0", "--param", "c=0.5",
             "--batch", "3", "--json")
    assert r.exit_code == 0, r.output
    last = ws.catalog.rounds(ws.catalog.concept("red").id)[-1]
    assert last.params["strategy_params"] == {"a": 1, "b": 0, "c": 0.5}
    for bad, words in ((["--param", "a"], "KEY=VALUE"), (["--param", "a=-1"], "non-negative"),
                       (["--param", "a=1", "--param", "a=2"], "twice")):
        r = _cli(ws, "mine", "red", "--strategy", "value", *bad, "--batch", "3")
        assert r.exit_code == 2 and words in r.output, r.output
    r = _cli(ws, "mine", "red", "--strategy", "entropy", "--param", "zz=1", "--batch", "3")
    assert r.exit_code == 2 and "does not take" in r.output
    _, out = Miner(ws, "red").propose(strategy="most-likely-positive@svm", batch=3, seed=0)
    assert out.proxy["kind"] == "svm"
    with pytest.raises(InputError, match="names the proxy"):
        Miner(ws, "red").propose(strategy="entropy@svm", proxy="mlp", batch=3)
