"""Several exemplars as one query: the normalised mean of their vectors (their prototype), in whole-image and
region search, from Python and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_region_contrast import _brute, _id, cws  # noqa: F401  (the fixture: 30 scenes and an all-red image)
from test_regions import _red_query
from typer.testing import CliRunner

from assay.cli.main import app
from assay.errors import InputError
from assay.search import Searcher

runner = CliRunner()


def _proto(vecs):
    v = np.asarray(vecs, dtype=np.float32)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    m = v.mean(axis=0)
    return m / np.linalg.norm(m)


def test_several_items_are_one_query_by_their_mean_and_are_left_out(cws):  # noqa: F811
    s = Searcher(cws)
    a, b = _id(cws, "scene_001.png"), _id(cws, "scene_002.png")
    q, ids = s.exemplar_query(items=[a, b])
    np.testing.assert_allclose(q, _proto(s.query_vectors_for_items(np.array([a, b]))), atol=1e-6)
    assert ids.tolist() == [a, b]
    hits = s.search(item=[a, b], k=40)
    assert {a, b}.isdisjoint(h.id for h in hits) and len(hits) == 29  # 31 images less the two exemplars
    want = [h.id for h in s.search(vector=q, k=40) if h.id not in (a, b)]
    assert [h.id for h in hits] == want
    assert [h.id for h in s.search(item=[a, b], k=5)] == want[:5]  # left out before the cut: still 5 hits
    assert [h.id for h in s.search(item=[a], k=5)] == [h.id for h in s.search(item=a, k=5)]  # one is the usual query
    for same in ([a, b, a, a], (b, a), {a, b}, np.array([a, b]), iter([a, b])):  # each exemplar counts once
        assert [h.id for h in s.search(item=same, k=5)] == want[:5]


@pytest.mark.parametrize("score", ["max", "contrast"])
def test_several_exemplars_in_region_search_match_the_prototype_query(cws, score):  # noqa: F811
    s = Searcher(cws)
    a, b = _id(cws, "scene_003.png"), _id(cws, "all_red.png")
    q, _ = s.exemplar_query(items=[a, b])
    hits = s.search_regions(item=[a, b], k=40, score=score)
    assert {a, b}.isdisjoint(h.id for h in hits) and len(hits) == 29
    want = [h.id for h in s.search_regions(vector=q, k=40, score=score) if h.id not in (a, b)]
    assert [h.id for h in hits] == want
    assert [h.id for h in s.search_regions(item=[a, b], k=5, score=score)] == want[:5]
    # several queries, each with its own exclusions (-1 pads a shorter list)
    c = _id(cws, "scene_000.png")
    red = _red_query()
    S, ids, _ = s.search_regions_vectors(np.stack([q, red]), 5, exclude_items=np.array([[a, b], [c, -1]]), score=score)
    assert ids[0].tolist() == want[:5]
    full = [h.id for h in s.search_regions(vector=red, k=40, score=score) if h.id != c]
    assert ids[1].tolist() == full[:5] and c not in ids[1].tolist()
    if score == "contrast":  # exact: the brute-force contrast of the prototype
        brute = _brute(cws, q)
        assert [h.score for h in hits] == pytest.approx([brute[h.id] for h in hits], abs=1e-4)


def test_several_image_files_and_bad_exemplar_sets(cws, monkeypatch):  # noqa: F811
    s = Searcher(cws)
    imgs = cws.root.parent / "imgs"
    paths = [str(imgs / "scene_000.png"), str(imgs / "all_red.png")]
    q, ids = s.exemplar_query(images=paths)
    assert len(ids) == 0
    np.testing.assert_allclose(q, _proto([s.vector_for_image(p) for p in paths]), atol=1e-6)
    assert [h.id for h in s.search(image=paths, k=5)] == [h.id for h in s.search(vector=q, k=5)]
    assert [h.id for h in s.search_regions(image=paths, k=5)] == [h.id for h in s.search_regions(vector=q, k=5)]
    for kw, msg in [({"items": []}, "at least one exemplar item"), ({"images": []}, "at least one exemplar image"),
                    ({}, "not both"), ({"items": [1], "images": paths}, "not both"), ({"items": [-3]}, "item ids")]:
        with pytest.raises(InputError, match=msg):
            s.exemplar_query(**kw)
    with pytest.raises(InputError, match="exactly one query"):
        s.search(item=[1, 2], text="red")
    red = _red_query()
    monkeypatch.setattr(Searcher, "query_vectors_for_items", lambda self, ids: np.stack([red, -red]))
    with pytest.raises(InputError, match="cancel out"):
        s.exemplar_query(items=[1, 2])


def test_cli_repeated_item_and_image_make_one_query(cws):  # noqa: F811
    root = str(cws.root)
    a, b = _id(cws, "scene_001.png"), _id(cws, "scene_002.png")
    r = runner.invoke(app, ["-w", root, "search", "--item", str(a), "--item", str(b), "-k", "5", "--json"])
    assert r.exit_code == 0, r.output
    got = [h["id"] for h in json.loads(r.stdout)["results"]]
    assert got == [h.id for h in Searcher(cws).search(item=[a, b], k=5)] and {a, b}.isdisjoint(got)
    imgs = cws.root.parent / "imgs"
    r = runner.invoke(app, ["-w", root, "search", "--image", str(imgs / "scene_000.png"), "--image",
                            str(imgs / "all_red.png"), "--regions", "--score", "contrast", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert len(res) == 3 and all("box" in h for h in res)
    r = runner.invoke(app, ["-w", root, "search", "--item", str(a), "--image", str(imgs / "all_red.png")])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_cli_batch_takes_exemplar_sets_beside_single_queries(cws, tmp_path):  # noqa: F811
    root = str(cws.root)
    s = Searcher(cws)
    a, b = _id(cws, "scene_001.png"), _id(cws, "scene_002.png")
    imgs = cws.root.parent / "imgs"
    paths = [str(imgs / "scene_000.png"), str(imgs / "all_red.png")]
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join(json.dumps(q) for q in [{"item": [a, b]}, {"item": a}, {"image": paths}, {"text": "red"}]) + "\n")
    for regions in (False, True):
        args = ["-w", root, "search", "--batch", str(f), "-k", "4", "--json"] + (["--regions"] if regions else [])
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        q = json.loads(r.stdout)["queries"]
        fn = s.search_regions if regions else s.search
        assert [x["query"] for x in q] == [{"item": [a, b]}, {"item": a}, {"image": paths}, {"text": "red"}]
        assert [h["id"] for h in q[0]["results"]] == [h.id for h in fn(item=[a, b], k=4)]
        assert [h["id"] for h in q[1]["results"]] == [h.id for h in fn(item=a, k=4)]
        assert [h["id"] for h in q[2]["results"]] == [h.id for h in fn(image=paths, k=4)]
        assert len(q[3]["results"]) == 4
    for bad, msg in [({"item": []}, "1 to 1,000 entries"), ({"image": [3]}, "file paths"), ({"item": [a, "x"]}, "exemplar item ids")]:
        f.write_text(json.dumps(bad) + "\n")
        r = runner.invoke(app, ["-w", root, "search", "--batch", str(f)])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output


def test_cli_batch_names_the_line_that_failed_and_reads_paths_beside_the_file(cws, tmp_path):  # noqa: F811
    root = str(cws.root)
    a = _id(cws, "scene_001.png")
    sub = tmp_path / "queries"
    sub.mkdir()
    import shutil

    shutil.copy(cws.root.parent / "imgs" / "scene_000.png", sub / "here.png")
    f = sub / "q.jsonl"
    f.write_text("\n".join(json.dumps(q) for q in [{"item": a}, {"image": "here.png"}, {"image": ["here.png", "here.png"]}]) + "\n")
    r = runner.invoke(app, ["-w", root, "search", "--batch", str(f), "-k", "2", "--json"])  # run from elsewhere
    assert r.exit_code == 0, r.output
    assert [len(x["results"]) for x in json.loads(r.stdout)["queries"]] == [2, 2, 2]
    for lines, line_no, msg in [([{"item": a}, {"text": "red"}, {"item": 999999}], 3, "unknown item id"),
                                ([{"item": a}, {"image": "nope.png"}], 2, "not found"),
                                ([{"text": "red"}, {"item": [a, 999999]}], 2, "unknown item id"),
                                ([{"item": a}, {"item": "x"}], 2, "integer")]:
        f.write_text("\n".join(json.dumps(q) for q in lines) + "\n")
        r = runner.invoke(app, ["-w", root, "search", "--batch", str(f)])
        assert r.exit_code != 0 and f"line {line_no}:" in r.output and msg in r.output and "Traceback" not in r.output, r.output
    f.write_text("\n\n")
    r = runner.invoke(app, ["-w", root, "search", "--batch", str(f), "--json"])
    assert r.exit_code == 0 and "holds no queries" in r.output
