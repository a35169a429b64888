"""Concepts, rounds, labels and harvest through a workspace (assay.loop and the CLI)."""

from __future__ import annotations

import re

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fake_encoder  # noqa: F401
from conftest import colour_corpus
from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import EmptyPoolError, InputError, NotFoundError, UnknownNameError
from assay.loop import Miner, parse_label_value, read_label_file, select_round
from assay.search import build_index

runner = CliRunner()


def _colour_corpus(folder, n_red=12, n_other=60, seed=0):
    """Red images (the concept) among images of other colours; the test encoder sees mean colours."""
    return colour_corpus(folder, n_red, n_other, seed, size=(16, 16))


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [_colour_corpus(tmp_path / "imgs")])
    embed(w)
    build_index(w, kind="flat")
    yield w
    w.close()


def _truth(ws):
    return {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}


def test_cold_start_then_rounds_with_provenance(ws):
    ws.catalog.add_concept("red", text="red red red")
    m = Miner(ws, "red")
    row, out = m.propose(strategy="seals:entropy", batch=10, seed=1)
    assert out.cold_start and row.number == 1 and len(out.ids) == 10
    assert set(out.reasons) <= {"seed-query", "seed-random"} and "seed-random" in out.reasons
    truth = _truth(ws)
    m.record_labels(out.ids, [truth[int(i)] for i in out.ids], source="oracle", annotator="sim")
    row2, out2 = m.propose(strategy="seals:entropy", batch=10, seed=1)
    assert row2.number == 2
    labelled, _ = ws.catalog.current_labels(m.concept.id)
    if not out2.cold_start:
        assert out2.prelabels is not None and out2.scanned_fraction <= 1.0
    assert not set(out2.ids.tolist()) & set(labelled.tolist())  # never proposes labelled items
    assert not set(out2.ids.tolist()) & set(out.ids.tolist())
    r = ws.catalog.round(row2.id)
    assert r.encoder == "test-mean-color" and r.encoder_version == "1"
    assert r.params["batch"] == 10 and "total" in r.seconds and r.pool_size > 0
    props = ws.catalog.proposals(row2.id)
    assert [p["item_id"] for p in props] == out2.ids.tolist()
    hist = ws.catalog.label_history(m.concept.id)
    assert all(h["round_id"] == row.id and h["source"] == "oracle" and h["annotator"] == "sim" for h in hist)


def test_loop_finds_the_red_images(ws):
    truth = _truth(ws)
    red0 = min(i for i, t in truth.items() if t)
    ws.catalog.add_concept("red", exemplars=[red0])
    m = Miner(ws, "red")
    m.record_labels([red0], [1], annotator="exemplar")
    for _ in range(4):
        _, out = m.propose(strategy="most-likely-positive", batch=8, seed=0)
        m.record_labels(out.ids, [truth[int(i)] for i in out.ids], source="oracle")
    ids, vals = ws.catalog.current_labels(m.concept.id)
    assert vals.sum() >= 10  # of 12 red images, with 32 labels out of 72
    top = m.harvest(top=12)
    assert sum(truth[r["id"]] for r in top) >= 10
    assert all(a["score"] >= b["score"] for a, b in zip(top, top[1:]))
    assert top[0]["method"] == "mips"


def test_relabelling_keeps_history_and_latest_wins(ws):
    c = ws.catalog.add_concept("red")
    i = int(ws.catalog.ids()[0])
    m = Miner(ws, "red")
    m.record_labels([i], [1], annotator="ann")
    m.record_labels([i], [0], annotator="bob")
    ids, vals = ws.catalog.current_labels(c.id)
    assert ids.tolist() == [i] and vals.tolist() == [0]
    assert [h["annotator"] for h in ws.catalog.label_history(c.id, i)] == ["ann", "bob"]
    j = int(ws.catalog.ids()[1])
    ws.catalog.add_labels(c.id, [i, j], [1, 1], source="pseudo")
    assert ws.catalog.current_labels(c.id)[1].tolist() == [0]
    # a pseudo-label never overrides a person's answer, however recent; it stands for items nobody answered
    ids, vals = ws.catalog.current_labels(c.id, include_pseudo=True)
    assert ids.tolist() == [i, j] and vals.tolist() == [0, 1]


def test_label_files_are_validated_before_anything_is_written(ws, tmp_path):
    c = ws.catalog.add_concept("red")
    ids = ws.catalog.ids()
    uri0 = ws.catalog.get(int(ids[0])).uri
    good = tmp_path / "good.csv"
    good.write_text(f"id,label\n{ids[1]},yes\n{ids[2]},0\n")
    got_ids, got_vals = read_label_file(ws, good)
    assert got_ids.tolist() == [ids[1], ids[2]] and got_vals.tolist() == [1, 0]
    by_uri = tmp_path / "uri.csv"
    by_uri.write_text(f"uri,label\n{uri0},positive\n")
    assert read_label_file(ws, by_uri)[0].tolist() == [ids[0]]
    partial = tmp_path / "partial.csv"
    partial.write_text(f"id,label\n{ids[1]},1\n{ids[2]},\n{ids[3]},no\n")
    assert read_label_file(ws, partial)[0].tolist() == [ids[1], ids[3]]
    bad_value = tmp_path / "v.csv"
    bad_value.write_text(f"id,label\n{ids[1]},1\n{ids[2]},maybe\n")
    with pytest.raises(InputError, match="row 2: label must be"):
        read_label_file(ws, bad_value)
    unknown = tmp_path / "u.csv"
    unknown.write_text(f"id,label\n{ids[1]},1\n99999,0\n")
    with pytest.raises(InputError, match="row 2: item id 99999"):
        read_label_file(ws, unknown)
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(unknown)])
    assert r.exit_code == 2 and "99999" in r.output
    assert len(ws.catalog.label_history(c.id)) == 0  # nothing half-written
    r = runner.invoke(app, ["-w", str(ws.root), "label", "nope", "--file", str(good)])
    assert r.exit_code == 2 and "no concept named 'nope'" in r.output
    with pytest.raises(InputError):
        parse_label_value("2")
    # an export (or answer sheet) of another concept is refused, not recorded for this one
    other = tmp_path / "other.csv"
    other.write_text(f"id,concept,label\n{ids[1]},red,1\n{ids[2]},circle,0\n")
    with pytest.raises(InputError, match="row 2: concept 'circle' differs from 'red'"):
        read_label_file(ws, other, "red")
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(other)])
    assert r.exit_code == 2 and "circle" in r.output
    assert len(ws.catalog.label_history(c.id)) == 0
    # every bad row is reported in one run (grouped by check), with the count beyond the first ten
    many = tmp_path / "many.csv"
    many.write_text("id,label\n" + f"{ids[1]},maybe\n" + f"{ids[2]},1\n" + "99999,0\n" + "x,1\n"
                    + f"{ids[3]},1\n{ids[3]},0\n" + "".join(f"{90000 + n},1\n" for n in range(12)))
    with pytest.raises(InputError) as exc:
        read_label_file(ws, many)
    msg = str(exc.value)
    assert "16 bad rows, nothing recorded" in msg and "... and 6 more" in msg
    lines = msg.splitlines()[1:]
    assert lines[0].strip().startswith("row 1: label must be") and "row 3: id must be" not in msg
    assert lines[1].strip() == "row 4: id must be an integer, got 'x'"
    assert lines[2].strip() == "row 3: item id 99999 is not in the catalog"
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(many)])
    assert r.exit_code == 2 and "16 bad rows" in r.output and "row 4: id must be" in r.output
    assert len(ws.catalog.label_history(c.id)) == 0
    # a space after a header's comma is not part of the name; a .tsv file is tab-separated; letter case is
    # not guessed, but named
    (tmp_path / "sp.csv").write_text(f"id, label\n{ids[1]}, 1\n")
    assert read_label_file(ws, tmp_path / "sp.csv")[0].tolist() == [ids[1]]
    (tmp_path / "t.tsv").write_text(f"id\tlabel\n{ids[2]}\t0\n")
    assert read_label_file(ws, tmp_path / "t.tsv")[1].tolist() == [0]
    (tmp_path / "case.csv").write_text(f"ID,Label\n{ids[1]},1\n")
    with pytest.raises(InputError, match="case-sensitive: rename 'ID' -> 'id', 'Label' -> 'label'"):
        read_label_file(ws, tmp_path / "case.csv")
    # JSONL rows need not all carry every key; a row with neither id nor uri says so
    (tmp_path / "sparse.jsonl").write_text(f'{{"id": {ids[1]}}}\n{{"id": {ids[2]}, "label": 1}}\n{{"label": 0}}\n')
    with pytest.raises(InputError, match="row 3: neither id nor uri is given"):
        read_label_file(ws, tmp_path / "sparse.jsonl")
    (tmp_path / "sparse.jsonl").write_text(f'{{"id": {ids[1]}}}\n{{"id": {ids[2]}, "label": 1}}\n')
    assert read_label_file(ws, tmp_path / "sparse.jsonl")[0].tolist() == [ids[2]]
    # a repeated column would be read as its last copy: refused in every format
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "dup.csv").write_text(f"id,label,id\n{ids[1]},1,{ids[2]}\n")
    (tmp_path / "dup.jsonl").write_text(f'{{"id": {ids[1]}, "label": 1, "id": {ids[2]}}}\n')
    pq.write_table(pa.Table.from_arrays([pa.array([ids[1]]), pa.array([1]), pa.array([ids[2]])],
                                        names=["id", "label", "id"]), tmp_path / "dup.parquet")
    for name, words in (("dup.csv", "the column(s) ['id'] more than once"),
                        ("dup.jsonl", "the key 'id' appears more than once"),
                        ("dup.parquet", "the column(s) ['id'] more than once")):
        with pytest.raises(InputError, match=re.escape(words)):
            read_label_file(ws, tmp_path / name)
    assert len(ws.catalog.label_history(c.id)) == 0
    # a blank annotator is nobody named: running the file again with --annotator "" writes nothing new
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(good)])
    assert r.exit_code == 0, r.output
    n_rows = len(ws.catalog.label_history(c.id))
    r = runner.invoke(app, ["-w", str(ws.root), "label", "red", "--file", str(good), "--annotator", " "])
    assert r.exit_code == 0 and len(ws.catalog.label_history(c.id)) == n_rows
    # a relative uri is relative to the label file's folder (as in a manifest), wherever the command runs
    import os

    sub = tmp_path / "answers" / "round1"
    sub.mkdir(parents=True)
    rel = sub / "rel.csv"
    rel.write_text(f"uri,label\n{os.path.relpath(uri0, sub)},1\n")
    cwd = os.getcwd()
    try:
        os.chdir(ws.root)
        assert read_label_file(ws, rel)[0].tolist() == [ids[0]]
    finally:
        os.chdir(cwd)
    same = tmp_path / "same.csv"
    same.write_text(f"id,concept,label\n{ids[1]},red,1\n{ids[2]},,0\n")
    assert read_label_file(ws, same, "red")[0].tolist() == [ids[1], ids[2]]


def test_cli_concept_mine_label_harvest(ws, tmp_path):
    root = str(ws.root)
    img = sorted((tmp_path / "imgs").glob("red_*.png"))[0]
    r = runner.invoke(app, ["-w", root, "concept", "add", "red", "--text", "red things", "--exemplar", str(img)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["-w", root, "concept", "list", "--json"])
    c = json.loads(r.stdout)["concepts"][0]
    assert c["name"] == "red" and c["positives"] == 1 and len(c["exemplars"]) == 1
    r = runner.invoke(app, ["-w", root, "mine", "red", "--batch", "6", "--strategy", "most-likely-positive", "--json",
                            "--out", str(tmp_path / "batch.csv")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["round"] == 1 and len(res["items"]) == 6
    truth = _truth(ws)
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n" + "".join(f"{it['id']},{truth[it['id']]}\n" for it in res["items"]))
    r = runner.invoke(app, ["-w", root, "label", "red", "--file", str(answers), "--annotator", "me", "--json"])
    assert json.loads(r.stdout)["recorded"] == 6
    r = runner.invoke(app, ["-w", root, "harvest", "red", "--top", "5", "--out", str(tmp_path / "mined.csv")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "mined.csv").read_text().splitlines()
    assert lines[0].startswith("id,uri,concept,score,label") and len(lines) == 6
    r = runner.invoke(app, ["-w", root, "mine", "red", "--strategy", "nope"])
    assert r.exit_code == 2 and "expected one of" in r.output
    r = runner.invoke(app, ["-w", root, "mine", "ghost"])
    assert r.exit_code == 2 and "no concept named" in r.output


def test_select_round_core_bad_input_and_exhaustion():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(20, 4)).astype(np.float32)
    lookup = lambda ids: vecs[ids]  # noqa: E731
    ids = np.arange(20, dtype=np.int64)
    with pytest.raises(InputError, match="batch must be a positive integer"):
        select_round(strategy="entropy", n=0, rng=rng, corpus_ids=ids, vectors=lookup, labelled_ids=ids[:0], labels=[])
    with pytest.raises(UnknownNameError):
        select_round(strategy="bogus", n=2, rng=rng, corpus_ids=ids, vectors=lookup, labelled_ids=ids[:0], labels=[])
    out = select_round(strategy="entropy", n=5, rng=rng, corpus_ids=ids, vectors=lookup, labelled_ids=ids[:0], labels=[])
    assert out.cold_start and len(out.ids) == 5 and set(out.reasons) == {"seed-random"}
    with pytest.raises(EmptyPoolError):
        select_round(strategy="entropy", n=5, rng=rng, corpus_ids=ids, vectors=lookup,
                     labelled_ids=ids, labels=np.r_[np.ones(10), np.zeros(10)])
    # One class only: a cold start seeded by the given hit list.
    out = select_round(strategy="entropy", n=4, rng=rng, corpus_ids=ids, vectors=lookup, labelled_ids=ids[:2],
                       labels=[0, 0], seed_hits=[np.array([5, 1, 6, 7, 8])], random_fraction=0.25)
    assert out.ids[:3].tolist() == [5, 6, 7] and out.reasons.count("seed-random") == 1


def test_harvest_needs_both_classes(ws):
    ws.catalog.add_concept("red")
    m = Miner(ws, "red")
    with pytest.raises(InputError, match="at least one positive and one negative"):
        m.harvest(top=5)
    with pytest.raises(NotFoundError):
        Miner(ws, "ghost").harvest(top=5)


def test_a_cold_start_searches_its_exemplars_together_first(ws):
    from assay.search import Searcher

    truth = _truth(ws)
    reds = sorted(i for i, t in truth.items() if t)[:3]
    ws.catalog.add_concept("red", exemplars=reds)
    m = Miner(ws, "red")
    s = Searcher(ws)
    lists = m._seed_hits(s, m.concept, np.zeros(0, np.int64), batch=4)
    assert len(lists) == 1 + len(reds)  # the prototype of the three, then each one's own neighbours
    ids, V = ws.vectors().load()  # the prototype ranking, by brute force
    proto = V[np.searchsorted(ids, reds)].mean(axis=0)
    order = [int(i) for i in ids[np.argsort(-(V @ proto), kind="stable")] if int(i) not in reds]
    assert lists[0].tolist()[:10] == order[:10]
    _, out = m.propose(strategy="most-likely-positive", batch=4, seed=0, random_fraction=0.0)
    assert out.cold_start and out.ids[0] == lists[0][0]  # the round-robin starts with the prototype's best
