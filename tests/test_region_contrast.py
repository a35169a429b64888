"""Contrast scoring of region search: an image scores by how far its best region stands out from the mean of
its regions (``score="contrast"``), exactly, through the joint index."""

from __future__ import annotations

import fake_encoder  # noqa: F401
import numpy as np
import pytest
from PIL import Image
from test_regions import TARGET_BOX, _red_query, _write_scenes
from typer.testing import CliRunner

from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import UnknownNameError
from assay.regions import embed_regions, parent_ids, region_store
from assay.search import Searcher, build_index


@pytest.fixture
def cws(tmp_path):
    """30 noisy scenes (scene_000 has a small red patch) and one image that is red all over."""
    imgs = _write_scenes(tmp_path / "imgs")
    Image.new("RGB", (96, 96), (230, 20, 20)).save(imgs / "all_red.png")
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [imgs])
    embed(w)
    embed_regions(w, spec="grid:3")
    build_index(w, kind="flat")
    yield w
    w.close()


def _id(ws, name):
    return int(ws.catalog.id_for_uri(str(ws.root.parent / "imgs" / name)))


def _brute(ws, q):
    """{image id: best region score - mean region score} from the stores."""
    rid, rv = region_store(ws).load()
    r = rv @ q
    par = parent_ids(rid)
    out = {}
    for p in np.unique(par):
        s = r[par == p]
        out[int(p)] = float(s.max() - s.mean())
    return out


def test_contrast_prefers_the_small_object_to_the_image_it_fills(cws):
    s = Searcher(cws)
    small, full = _id(cws, "scene_000.png"), _id(cws, "all_red.png")
    top = s.search_regions(vector=_red_query(), k=2)
    assert top[0].id == full  # by the best region, the all-red image wins (every region of it is red)
    hits = s.search_regions(vector=_red_query(), k=31, score="contrast")
    assert hits[0].id == small and hits[0].box == TARGET_BOX and hits[0].region is not None
    ranked = [h.id for h in hits]
    assert ranked.index(full) > 10  # all its regions match: nothing stands out
    brute = _brute(cws, _red_query())
    assert hits[0].score == pytest.approx(brute[small], abs=1e-4)


@pytest.mark.parametrize("k", [1, 3, 10, 31, 100])
def test_contrast_ranking_equals_brute_force(cws, k):
    rng = np.random.default_rng(k)
    s = Searcher(cws)
    qs = rng.standard_normal((5, 12)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    for q, hits in zip(qs, s.search_regions_batch(qs, k=k, score="contrast")):
        brute = _brute(cws, q)
        want = sorted(brute.values(), reverse=True)[: min(k, len(brute))]
        assert len(hits) == len(want) and len({h.id for h in hits}) == len(hits)
        np.testing.assert_allclose([h.score for h in hits], want, atol=1e-4)
        for h in hits:
            assert h.score == pytest.approx(brute[h.id], abs=1e-4)
            assert h.region is not None and int(parent_ids([h.region])[0]) == h.id


def test_contrast_by_item_leaves_the_query_out_and_images_without_regions_come_last(cws, tmp_path):
    s = Searcher(cws)
    small = _id(cws, "scene_000.png")
    hits = s.search_regions(item=small, k=100, score="contrast")
    assert small not in {h.id for h in hits} and len(hits) == 30
    # an image added later, embedded and indexed without regions: contrast 0, ranked last
    more = tmp_path / "more"
    more.mkdir()
    Image.new("RGB", (96, 96), (200, 40, 40)).save(more / "late.png")  # (not a copy of all_red.png)
    ingest(cws.catalog, [more])
    embed(cws)
    build_index(cws, kind="flat")
    late = int(cws.catalog.id_for_uri(str(more / "late.png")))
    hits = Searcher(cws).search_regions(vector=_red_query(), k=100, score="contrast")
    assert len(hits) == 32 and hits[-1].id == late and hits[-1].score == 0.0 and hits[-1].region is None
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_contrast_follows_regions_embedded_after_indexing_and_a_known_score(cws, tmp_path):
    """Contrast is computed from the stores at query time: regions embedded after `assay index` (and an
    `assay index` again) count at once; nothing is cached that could go stale."""
    more = tmp_path / "more"
    more.mkdir()
    arr = np.full((96, 96, 3), 120, np.uint8)
    arr[0:32, 0:32] = (230, 20, 20)
    Image.fromarray(arr).save(more / "corner.png")
    ingest(cws.catalog, [more])
    embed(cws)
    build_index(cws, kind="flat")  # indexed before its regions exist: contrast 0
    corner = int(cws.catalog.id_for_uri(str(more / "corner.png")))
    hits = {h.id: h for h in Searcher(cws).search_regions(vector=_red_query(), k=100, score="contrast")}
    assert hits[corner].score == 0.0 and hits[corner].region is None
    embed_regions(cws, spec="grid:3")
    build_index(cws, kind="flat")
    hits = Searcher(cws).search_regions(vector=_red_query(), k=100, score="contrast")
    assert len(hits) == len({h.id for h in hits}) == 32
    got = {h.id: h for h in hits}
    assert got[corner].score == pytest.approx(_brute(cws, _red_query())[corner], abs=1e-4) and got[corner].score > 0.1
    assert got[corner].box == (0, 0, 32, 32)
    with pytest.raises(UnknownNameError, match="region score"):
        Searcher(cws).search_regions(vector=_red_query(), k=3, score="mean")


def test_cli_search_score_contrast(cws):
    runner = CliRunner()
    root = str(cws.root)
    r = runner.invoke(app, ["-w", root, "search", "--regions", "--score", "contrast", "--item", str(_id(cws, "all_red.png")),
                            "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    (cws.root.parent / "q.jsonl").write_text(f'{{"item": {_id(cws, "all_red.png")}}}\n')
    r = runner.invoke(app, ["-w", root, "search", "--regions", "--score", "contrast", "--batch",
                            str(cws.root.parent / "q.jsonl"), "-k", "2"])
    assert r.exit_code == 0 and "box [" in r.output, r.output
    r = runner.invoke(app, ["-w", root, "search", "--score", "contrast", "--item", "1"])
    assert r.exit_code == 2 and "add --regions" in r.output
    r = runner.invoke(app, ["-w", root, "search", "--regions", "--score", "median", "--item", "1"])
    assert r.exit_code == 2 and "contrast" in r.output


def test_regions_indexed_before_their_image_vector_count_for_their_own_image(tmp_path):
    """`embed --limit` then `embed --regions`: the joint index holds regions of images whose own vector is not
    embedded yet. Each region still counts for its own image, in max and contrast scoring alike."""
    imgs = _write_scenes(tmp_path / "imgs", n=12)
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [imgs])
    embed(w, limit=5)
    embed_regions(w, spec="grid:3")
    build_index(w, kind="flat")
    target = int(w.catalog.id_for_uri(str(imgs / "scene_000.png")))
    s = Searcher(w)
    for score in ("max", "contrast"):
        hits = s.search_regions(vector=_red_query(), k=20, score=score)
        assert hits[0].id == target and hits[0].box == TARGET_BOX, score
        assert len(hits) == len({h.id for h in hits}) == 12
        for h in hits:
            if h.region is not None:
                assert int(parent_ids([h.region])[0]) == h.id
    brute = _brute(w, _red_query())
    for h in s.search_regions(vector=_red_query(), k=20, score="contrast"):
        assert h.score == pytest.approx(brute[h.id], abs=1e-4)
    w.close()


def test_many_queries_are_scanned_in_blocks_with_the_same_results(cws, monkeypatch):
    import assay.search as search_mod

    rng = np.random.default_rng(7)
    qs = rng.standard_normal((9, 12)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    whole = Searcher(cws).search_regions_batch(qs, k=5, score="contrast")
    monkeypatch.setattr(search_mod, "_SCAN_QUERY_BLOCK", 2)
    blocked = Searcher(cws).search_regions_batch(qs, k=5, score="contrast")
    assert [[(h.id, h.region) for h in r] for r in blocked] == [[(h.id, h.region) for h in r] for r in whole]
    items = [int(i) for i in cws.catalog.ids()[:5]]
    a = Searcher(cws).search_regions_items(items, k=4, score="contrast")
    assert all(i not in {h.id for h in row} for i, row in zip(items, a))
