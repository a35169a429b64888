"""`assay labels history` and `assay labels conflicts`: who said what, when, and where annotators disagree."""

from __future__ import annotations

import json

from test_interop_common import make_ws, runner, truth

from assay.cli.main import app


def _cli(ws, *args):
    return runner.invoke(app, ["-w", str(ws.root), *args])


def test_history_and_conflicts(tmp_path):
    ws = make_ws(tmp_path, index=False, n_red=3, n_other=5)
    cat = ws.catalog
    t = truth(ws)
    red = [i for i, v in sorted(t.items()) if v]
    other = [i for i, v in sorted(t.items()) if not v]
    c = cat.add_concept("red")
    cat.add_labels(c.id, [red[0], other[0]], [1, 0], source="human", annotator="alice")
    cat.add_labels(c.id, [red[0]], [0], source="human", annotator="bob")  # bob disagrees on red[0]
    cat.add_labels(c.id, [other[0]], [0], source="human", annotator="bob")  # agrees on other[0]
    cat.add_labels(c.id, [red[1]], [1], source="human", annotator="alice")
    cat.add_labels(c.id, [red[1]], [0], source="human", annotator="alice")  # alice changed her mind: no conflict
    cat.add_labels(c.id, [red[2]], [0], source="pseudo", annotator="pseudo:m")  # a pseudo-label is not an answer
    cat.add_labels(c.id, [red[2]], [1], source="human", annotator="carol")

    r = _cli(ws, "labels", "history", "red", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["count"] == 8 and [x["row"] for x in got["labels"]] == sorted(x["row"] for x in got["labels"])
    assert [(x["item_id"], x["label"], x["annotator"]) for x in got["labels"][:3]] == [
        (red[0], 1, "alice"), (other[0], 0, "alice"), (red[0], 0, "bob")]
    assert got["labels"][0]["uri"].endswith(".png") and got["labels"][0]["at"].endswith("+00:00")
    r = _cli(ws, "labels", "history", "red", "--item", str(red[1]), "--json")
    assert [x["label"] for x in json.loads(r.output)["labels"]] == [1, 0]
    r = _cli(ws, "labels", "history", "red", "--last", "2", "--json")
    assert [(x["item_id"], x["source"]) for x in json.loads(r.output)["labels"]] == [(red[2], "pseudo"), (red[2], "human")]
    r = _cli(ws, "labels", "history", "red")
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 8 and "bob" in r.output and "pseudo" in r.output

    r = _cli(ws, "labels", "conflicts", "red", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["count"] == 1 and got["conflicts"][0]["item_id"] == red[0] and got["conflicts"][0]["current"] == 0
    assert [(a["annotator"], a["value"]) for a in got["conflicts"][0]["answers"]] == [("alice", 1), ("bob", 0)]
    r = _cli(ws, "labels", "conflicts", "red")
    assert r.exit_code == 0 and "1 item(s)" in r.output and "alice: yes, bob: no" in r.output
    # settled: alice agrees with bob now
    cat.add_labels(c.id, [red[0]], [0], source="human", annotator="alice")
    r = _cli(ws, "labels", "conflicts", "red")
    assert r.exit_code == 0 and "no conflicts" in r.output


def test_history_and_conflicts_bad_input(tmp_path):
    ws = make_ws(tmp_path, index=False, n_red=1, n_other=2)
    ws.catalog.add_concept("red")
    for args in (["labels", "history", "nope"], ["labels", "conflicts", "nope"]):
        r = _cli(ws, *args)
        assert r.exit_code == 2 and "no concept named 'nope'" in r.output, r.output
    r = _cli(ws, "labels", "history", "red", "--item", "999999")
    assert r.exit_code == 2 and "item 999999 is not in the catalog" in r.output
    r = _cli(ws, "labels", "history", "red")
    assert r.exit_code == 0 and "no labels for 'red'" in r.output
    r = _cli(ws, "labels", "history", "red", "--last", "-1")
    assert r.exit_code == 2
