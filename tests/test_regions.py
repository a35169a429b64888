"""Region embeddings, region search and mining with region evidence (assay.regions), with the mean-colour encoder."""

from __future__ import annotations

import json

import fake_encoder  # noqa: F401
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import InputError, NotFoundError, WorkspaceError
from assay.regions import (
    MAX_ITEM_ID,
    MAX_SLOTS,
    REGION_BASE,
    RegionMiner,
    RegionSpec,
    add_region_labels,
    best_per_parent,
    embed_regions,
    is_region_id,
    parent_ids,
    parse_region_spec,
    region_boxes,
    region_ids,
    region_labels,
    region_proba,
    region_proposals,
    region_store,
    region_training_set,
    regions_of,
    slot_of,
    square_crops,
    tile_boxes,
)
from assay.search import Searcher, build_index

TARGET_BOX = (64, 32, 96, 64)  # the 3x3 tile (row 1, column 2) of a 96x96 image


# ---------------------------------------------------------------------------------------------- geometry
@settings(max_examples=150, deadline=None)
@given(
    w=st.integers(1, 700), h=st.integers(1, 700),
    scales=st.lists(st.integers(1, 6), min_size=1, max_size=3, unique=True),
    overlap=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
)
def test_tiles_are_inside_nonempty_and_cover_the_image(w, h, scales, overlap):
    spec = RegionSpec(tuple(scales), overlap)
    boxes = tile_boxes(w, h, spec)
    assert boxes.shape == (spec.n_regions, 4) and boxes.dtype == np.int64
    x0, y0, x1, y1 = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    start = 0
    for n in spec.scales:
        b = boxes[start : start + n * n]
        start += n * n
        cover = np.zeros((h, w), dtype=np.int32)
        for bx0, by0, bx1, by1 in b:
            cover[by0:by1, bx0:bx1] += 1
        assert (cover >= 1).all()  # every pixel is in some tile of every scale
        if overlap == 0.0 and w >= n and h >= n:
            assert (cover == 1).all()  # without overlap the tiles partition the image


@settings(max_examples=60, deadline=None)
@given(w=st.integers(20, 800), h=st.integers(20, 800), n=st.integers(2, 5), overlap=st.sampled_from([0.25, 0.5]))
def test_overlapping_tiles_share_about_the_overlap_fraction(w, h, n, overlap):
    boxes = tile_boxes(w, h, RegionSpec((n,), overlap))
    a, b = boxes[0], boxes[1]  # two horizontal neighbours
    tile = a[2] - a[0]
    shared = a[2] - b[0]
    assert abs(shared - overlap * tile) <= 1.5


@settings(max_examples=100, deadline=None)
@given(w=st.integers(1, 600), h=st.integers(1, 600), n=st.integers(1, 8), overlap=st.sampled_from([0.0, 0.5]))
def test_square_crops_are_square_inside_and_hold_their_tile(w, h, n, overlap):
    tiles = tile_boxes(w, h, RegionSpec((n,), overlap, square=True))
    crops = square_crops(tiles, w, h)
    cw, ch = crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1]
    assert (crops[:, :2] >= 0).all() and (crops[:, 2] <= w).all() and (crops[:, 3] <= h).all()
    side = np.maximum(tiles[:, 2] - tiles[:, 0], tiles[:, 3] - tiles[:, 1])
    fits = (side <= w) & (side <= h)
    assert (cw[fits] == side[fits]).all() and (ch[fits] == side[fits]).all()  # square where the image allows
    inside = (crops[:, 0] <= tiles[:, 0]) & (crops[:, 1] <= tiles[:, 1]) & (crops[:, 2] >= tiles[:, 2]) & (crops[:, 3] >= tiles[:, 3])
    assert inside.all()  # the tile is always inside its crop


def test_tile_order_and_spec_parsing():
    boxes = tile_boxes(96, 96, parse_region_spec("grid:2,3"))
    assert boxes.shape == (13, 4)
    assert boxes[:4].tolist() == [[0, 0, 48, 48], [48, 0, 96, 48], [0, 48, 48, 96], [48, 48, 96, 96]]
    assert tuple(boxes[4 + 1 * 3 + 2]) == TARGET_BOX
    assert parse_region_spec("grid:3,4:overlap=0.5") == RegionSpec((3, 4), 0.5)
    assert parse_region_spec("grid:2", overlap=0.25).key == "grid:2:overlap=0.25"
    assert RegionSpec((2, 3)).key == "grid:2,3"
    assert parse_region_spec("grid:6:square") == RegionSpec((6,), 0.0, True)
    assert parse_region_spec("grid:2:overlap=0.5:square").key == "grid:2:overlap=0.5:square"
    assert parse_region_spec("grid:2:square:overlap=.5") == parse_region_spec("grid:2:overlap=0.5:square")
    for bad in ("tiles:2", "grid:", "grid:2,2", "grid:0", "grid:2:overlap=0.95", 3, "grid:2:overlap=.5.5",
                "grid:2:overlap=0.2:overlap=0.3", "grid:2:square:square"):
        with pytest.raises(InputError):
            parse_region_spec(bad)
    with pytest.raises(InputError, match="width must be a positive integer"):
        tile_boxes(0, 5, RegionSpec((2,)))


# ---------------------------------------------------------------------------------------------- ids
@settings(max_examples=200, deadline=None)
@given(item=st.integers(0, MAX_ITEM_ID - 1), slot=st.integers(0, MAX_SLOTS - 1),
       other=st.integers(0, MAX_ITEM_ID - 1), other_slot=st.integers(0, MAX_SLOTS - 1))
def test_region_ids_round_trip_and_never_collide(item, slot, other, other_slot):
    rid = region_ids([item], [slot])
    assert rid.dtype == np.int64 and rid[0] >= REGION_BASE and is_region_id(rid)[0]
    assert parent_ids(rid)[0] == item and slot_of(rid)[0] == slot
    assert not is_region_id([item])[0] and parent_ids([item])[0] == item and slot_of([item])[0] == -1
    if (item, slot) != (other, other_slot):
        assert region_ids([other], [other_slot])[0] != rid[0]


def test_region_id_bounds():
    with pytest.raises(InputError):
        region_ids([MAX_ITEM_ID], [0])
    with pytest.raises(InputError):
        region_ids([1], [MAX_SLOTS])
    assert int(region_ids([MAX_ITEM_ID - 1], [MAX_SLOTS - 1])[0]) <= np.iinfo(np.int64).max
    assert parent_ids([-1])[0] == -1


def test_best_per_parent_matches_brute_force():
    rng = np.random.default_rng(0)
    items = np.arange(1, 21)
    rows = np.concatenate([items, region_ids(items[:, None], np.arange(5)[None, :]).ravel()])
    for _ in range(20):
        s = rng.standard_normal(len(rows)).astype(np.float32)
        order = np.argsort(-s, kind="stable")
        got_s, got_p, got_t = best_per_parent(s[order][None], rows[order][None], 7)
        best = {}
        for sc, r in zip(s, rows):
            p = int(parent_ids([r])[0])
            if p not in best or sc > best[p][0]:
                best[p] = (sc, int(r))
        want = sorted(best.items(), key=lambda kv: -kv[1][0])[:7]
        assert got_p[0].tolist() == [p for p, _ in want]
        assert np.allclose(got_s[0], [v[0] for _, v in want])
        assert got_t[0].tolist() == [v[1] for _, v in want]
    s, p, t = best_per_parent(np.array([[0.5, -np.inf]]), np.array([[3, -1]]), 3)
    assert p.tolist() == [[3, -1, -1]] and t.tolist() == [[3, -1, -1]] and np.isinf(s[0, 1])


# ---------------------------------------------------------------------------------------------- workspace
def _write_scenes(folder, n=30, seed=0):
    """96x96 photos of noisy green/blue backgrounds; image 0 has a red 24x24 patch inside TARGET_BOX."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = np.array([rng.integers(0, 60), rng.integers(60, 200), rng.integers(60, 200)])
        arr = np.clip(base + rng.integers(-30, 30, size=(96, 96, 3)), 0, 255).astype(np.uint8)
        if i == 0:
            arr[36:60, 68:92] = [230, 20, 20]
        Image.fromarray(arr).save(folder / f"scene_{i:03d}.png")
    return folder


def _red_query():
    from fake_encoder import MeanColorEncoder
    from PIL import Image

    return MeanColorEncoder().embed_images([Image.new("RGB", (32, 32), (230, 20, 20))])[0]


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [_write_scenes(tmp_path / "imgs")])
    embed(w)
    yield w
    w.close()


def _target(ws):
    return int(ws.catalog.id_for_uri(str(ws.root.parent / "imgs" / "scene_000.png")) or ws.catalog.ids()[0])


def test_plain_embed_adds_no_regions(ws):
    assert not region_store(ws).exists()
    rep = build_index(ws, kind="flat")
    assert "regions" not in rep
    with pytest.raises(Exception, match="no region embeddings"):
        Searcher(ws).search_regions(vector=_red_query(), k=3)


def test_region_search_finds_the_small_patch_with_its_box(ws):
    rep = embed_regions(ws, spec="grid:2,3", batch_size=16)
    assert rep.images == 30 and rep.regions == 30 * 13 and rep.errors == 0
    assert rep.to_dict()["regions_per_image"] == 13 == rep.to_dict()["max_regions_per_image"]
    brep = build_index(ws, kind="flat")
    assert brep["regions"]["items"] == 30 and brep["regions"]["regions"] == 390
    s = Searcher(ws)
    target = _target(ws)
    hits = s.search_regions(vector=_red_query(), k=5)
    assert hits[0].id == target and hits[0].box == TARGET_BOX and hits[0].region is not None
    assert parent_ids([hits[0].region])[0] == target
    whole = s.search(vector=_red_query(), k=5)
    assert hits[0].score > next((h.score for h in whole if h.id == target), -1.0) + 0.05
    # the item index stays item-only: no region id in it, and item search is unchanged
    assert not is_region_id(s.index().ids).any()
    assert all(not is_region_id([h.id])[0] for h in whole)
    # the JSON form carries the box
    d = hits[0].to_dict()
    assert d["box"] == list(TARGET_BOX) and d["id"] == target and d["slot"] == 4 + 5
    assert int(region_ids([target], [d["slot"]])[0]) == d["region"]


def test_region_search_equals_brute_force_max_over_regions(ws):
    embed_regions(ws, spec="grid:2")
    build_index(ws, kind="flat")
    s = Searcher(ws)
    ids, V = ws.vectors().load()
    rids, RV = region_store(ws).load()
    all_ids, all_v = np.concatenate([ids, rids]), np.concatenate([RV.dtype.type(0) + V, RV])
    rng = np.random.default_rng(1)
    for _ in range(3):
        q = rng.standard_normal(12).astype(np.float32)
        q /= np.linalg.norm(q)
        sc = all_v @ q
        best = {}
        for v, i in zip(sc, all_ids):
            p = int(parent_ids([i])[0])
            best[p] = max(best.get(p, -9), float(v))
        want = sorted(best.items(), key=lambda kv: -kv[1])[:8]
        got = s.search_regions(vector=q, k=8)
        assert [h.id for h in got] == [p for p, _ in want]
        assert np.allclose([h.score for h in got], [v for _, v in want], atol=2e-3)
    # an item query leaves the item and its own regions out
    t = int(ids[3])
    got = s.search_regions(item=t, k=40)
    assert t not in [h.id for h in got] and len(got) == 29


def test_region_boxes_and_regions_of(ws):
    embed_regions(ws, spec="grid:2")
    t = _target(ws)
    regs = regions_of(ws, t)
    assert [r["slot"] for r in regs] == [0, 1, 2, 3] and regs[3]["box"] == [48, 48, 96, 96]
    assert regs[0]["image_size"] == [96, 96]
    assert region_boxes(ws, [regs[1]["id"], t]) == {regs[1]["id"]: (48, 0, 96, 48)}


def test_resume_after_interruption_embeds_every_region_exactly_once(ws, monkeypatch):
    from assay.vectors import VectorStore

    calls = {"n": 0}
    real = VectorStore.append

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(VectorStore, "append", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_regions(ws, spec="grid:2", batch_size=8, shard_size=8)
    monkeypatch.setattr(VectorStore, "append", real)
    first = len(region_store(ws))
    assert 0 < first < 120 and first % 4 == 0  # whole images only, never a half image
    rep = embed_regions(ws, spec="grid:2", batch_size=8, shard_size=8)
    ids = region_store(ws).ids()
    assert len(ids) == 120 and len(np.unique(ids)) == 120 and rep.pending == 30 - first // 4
    again = embed_regions(ws, spec="grid:2")
    assert again.pending == 0 and again.regions == 0
    # the box table has exactly one row per stored region
    assert sum(len(regions_of(ws, int(i))) for i in ws.catalog.ids()) == 120


def test_limit_and_spec_change_needs_reset(ws):
    rep = embed_regions(ws, spec="grid:2", limit=5)
    assert rep.images == 5 and len(region_store(ws)) == 20
    with pytest.raises(WorkspaceError, match="--reset"):
        embed_regions(ws, spec="grid:3")
    rep = embed_regions(ws, spec="grid:3", reset=True)
    assert rep.images == 30 and len(region_store(ws)) == 270


def test_bad_image_is_marked_and_skipped(ws):
    t = _target(ws)
    uri = ws.catalog.uris([t])[t]
    with open(uri, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rep = embed_regions(ws, spec="grid:2")
    assert rep.errors == 1 and rep.images == 29 and rep.error_samples[0][0] == t
    assert t not in ws.catalog.ids(status="ok").tolist()
    assert not region_store(ws).contains(region_ids([t], [0]))[0]
    build_index(ws, kind="flat")
    assert t not in [h.id for h in Searcher(ws).search_regions(vector=_red_query(), k=30)]


def test_an_image_whose_regions_fail_is_reported_but_stays_ok(ws, monkeypatch):
    import assay.regions as R

    t = _target(ws)
    real = R.tile_boxes

    def tiles(w, h, spec):  # this image's tiles cannot be made; the image itself decodes fine
        if (w, h) == _size_of(ws, t):
            raise ValueError("tile too small (injected)")
        return real(w, h, spec)

    monkeypatch.setattr(R, "tile_boxes", tiles)
    rep = embed_regions(ws, spec="grid:2")
    assert rep.errors >= 1 and t in [i for i, _ in rep.error_samples]
    assert "injected" in dict(rep.error_samples)[t]
    assert t in ws.catalog.ids(status="ok").tolist()  # still in the item index and the mining loop


def _size_of(ws, item_id):
    it = ws.catalog.get(item_id)
    return (it.width, it.height)


def test_index_update_adds_new_regions(ws, tmp_path):
    embed_regions(ws, spec="grid:2", limit=10)
    build_index(ws, kind="flat")
    rep = build_index(ws, kind="flat")
    assert rep["regions"]["action"] == "updated" and rep["regions"]["added"] == 0
    embed_regions(ws, spec="grid:2")
    rep = build_index(ws, kind="flat")
    assert rep["regions"]["added"] == 80 and rep["regions"]["index"]["count"] == 30 + 120


# ---------------------------------------------------------------------------------------------- labels and mining
def test_region_labels_and_mining_with_region_evidence(ws):
    embed_regions(ws, spec="grid:2,3")
    build_index(ws, kind="flat")
    ws.catalog.add_concept("red")
    target = _target(ws)
    patch_region = int(region_ids([target], [4 + 5])[0])
    others = [int(i) for i in ws.catalog.ids() if int(i) != target]
    with pytest.raises(InputError):
        add_region_labels(ws, "red", [target], [1])
    with pytest.raises(NotFoundError):
        add_region_labels(ws, "red", region_ids([10**6], [0]), [1])
    # everything is checked before a row is written: no region label without its image label
    for kw, words in ((dict(annotator="a\nb"), "control characters"), (dict(annotator=5), "at most 200"),
                      (dict(round_id=9999), "no round with id 9999")):
        with pytest.raises((InputError, NotFoundError), match=words):
            add_region_labels(ws, "red", [patch_region], [1], **kw)
    with pytest.raises(InputError, match="two different labels"):
        add_region_labels(ws, "red", [patch_region, patch_region], [1, 0])
    with pytest.raises(InputError, match="must be an integer"):
        add_region_labels(ws, "red", ["x"], [1])
    assert region_labels(ws, "red")[0].tolist() == []
    assert add_region_labels(ws, "red", [patch_region, int(region_ids([target], [0])[0])], [1, 0]) == 2
    rids, vals = region_labels(ws, "red")
    assert dict(zip(rids.tolist(), vals.tolist())) == {patch_region: 1, int(region_ids([target], [0])[0]): 0}
    labelled, labels = ws.catalog.current_labels(ws.catalog.concept("red").id)
    assert labelled.tolist() == [target] and labels.tolist() == [1]  # the positive region labels its image
    ws.catalog.add_labels(ws.catalog.concept("red").id, others[:5], [0] * 5, source="human")
    row, out = RegionMiner(ws, "red").propose(strategy="most-likely-positive", batch=5, seed=0)
    assert len(out.ids) == 5 and target not in out.ids.tolist()
    props = region_proposals(ws, row.id)
    assert set(props) == set(out.ids.tolist())
    for p in props.values():
        assert (p["region"] is None) == (p["box"] is None)
        assert p["box"] is None or p["image_size"] == [96, 96]
    assert any(p["box"] is not None for p in props.values())
    # prelabels are the max over the image and its regions
    rstore = region_store(ws)
    pr, trig = region_proba(out.model, out.ids, lambda i: ws.vectors().get(i), lambda i: rstore.get(i), 13, rstore.contains)
    assert np.allclose(pr, out.prelabels)
    for i, t in zip(out.ids.tolist(), trig.tolist()):
        whole = out.model.predict_proba(ws.vectors().get([i]))[0]
        regs = out.model.predict_proba(rstore.get(region_ids([i], np.arange(13))))
        assert np.isclose(pr[out.ids.tolist().index(i)], max(whole, regs.max()))
        assert (t == i) == (whole >= regs.max())
    # Another spec: a slot is another box, so the old region labels are kept but no longer used.
    embed_regions(ws, spec="grid:3", reset=True)
    assert len(region_labels(ws, "red")[0]) == 0 and len(region_training_set(ws, "red")[1]) == 0
    embed_regions(ws, spec="grid:2,3", reset=True)
    assert len(region_labels(ws, "red")[0]) == 2  # back under the spec they were given in


def test_region_proba_picks_the_best_region():
    class Model:
        def predict_proba(self, X):
            return X[:, 0]

    items = np.array([1, 2])
    vec = {1: [0.1], 2: [0.9]}
    rv = {int(region_ids([1], [0])[0]): [0.5], int(region_ids([1], [1])[0]): [0.7],
          int(region_ids([2], [0])[0]): [0.2], int(region_ids([2], [1])[0]): [0.3]}
    p, t = region_proba(Model(), items, lambda ids: np.array([vec[int(i)] for i in ids]),
                        lambda ids: np.array([rv[int(i)] for i in ids]), 2)
    assert np.allclose(p, [0.7, 0.9]) and t.tolist() == [int(region_ids([1], [1])[0]), 2]


def test_region_proba_in_blocks_equals_one_pass(monkeypatch):
    import assay.regions as R

    class Model:
        def predict_proba(self, X):
            return X[:, 0]

    rng = np.random.default_rng(3)
    items, n_regions = np.arange(1, 41, dtype=np.int64), 7
    rids = region_ids(items[:, None], np.arange(n_regions)[None, :]).ravel()
    table = {int(i): rng.random() for i in np.concatenate([items, rids])}
    stored = set(int(i) for i in rids[rng.random(len(rids)) < 0.6])  # some images have few or no regions
    args = (Model(), items, lambda ids: np.array([[table[int(i)]] for i in ids]),
            lambda ids: np.array([[table[int(i)]] for i in ids]), n_regions,
            lambda ids: np.array([int(i) in stored for i in ids]))
    p1, t1 = region_proba(*args)
    monkeypatch.setattr(R, "REGION_PROBA_BLOCK", 10)  # one image per block
    p2, t2 = region_proba(*args)
    assert np.array_equal(p1, p2) and np.array_equal(t1, t2)
    for k, i in enumerate(items):  # brute force: the best of the image and its stored regions
        cands = [int(i)] + [int(r) for r in region_ids(np.full(n_regions, i), np.arange(n_regions)) if int(r) in stored]
        best = max(cands, key=lambda c: table[c])
        assert p1[k] == np.float32(table[best]) and t1[k] == best


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_embed_regions_and_search_regions_json(tmp_path):
    runner = CliRunner()
    wdir = tmp_path / "w"
    assert runner.invoke(app, ["init", str(wdir), "--encoder", "test-mean-color"]).exit_code == 0
    _write_scenes(tmp_path / "imgs", n=12)
    assert runner.invoke(app, ["-w", str(wdir), "ingest", str(tmp_path / "imgs")]).exit_code == 0
    r = runner.invoke(app, ["-w", str(wdir), "embed", "--json"])
    assert r.exit_code == 0 and "regions" not in json.loads(r.stdout)
    r = runner.invoke(app, ["-w", str(wdir), "embed", "--regions", "grid:2,3", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["regions"]["regions"] == 12 * 13 and d["regions"]["spec"] == "grid:2,3"
    r = runner.invoke(app, ["-w", str(wdir), "embed", "--regions", "grid:9,9"])
    assert r.exit_code == 2 and "distinct" in r.output
    r = runner.invoke(app, ["-w", str(wdir), "embed", "--region-overlap", "0.5"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["-w", str(wdir), "index", "--kind", "flat"])
    assert r.exit_code == 0 and "regions index (items and regions together" in r.output
    assert f"({12} items, {12 * 13} regions)" in r.output
    with Workspace.open(wdir) as w:
        target = _target(w)
    r = runner.invoke(app, ["-w", str(wdir), "search", "--regions", "--text", "red", "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert len(res) == 3 and all("box" in h and "region" in h for h in res)
    r = runner.invoke(app, ["-w", str(wdir), "search", "--regions", "--item", str(target), "--json", "-k", "4"])
    res = json.loads(r.stdout)["results"]
    assert r.exit_code == 0 and len(res) == 4 and target not in [h["id"] for h in res]
    assert all(h["box"] is None or len(h["box"]) == 4 for h in res)
    r = runner.invoke(app, ["-w", str(wdir), "search", "--item", str(target), "--json"])
    assert "box" not in json.loads(r.stdout)["results"][0]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"text": "red"}) + "\n" + json.dumps({"item": target}) + "\n"
                     + json.dumps({"image": str(tmp_path / "imgs" / "scene_000.png")}) + "\n")
    r = runner.invoke(app, ["-w", str(wdir), "search", "--regions", "--batch", str(qfile), "--json", "-k", "2"])
    assert r.exit_code == 0, r.output
    qs = json.loads(r.stdout)["queries"]
    assert [len(q["results"]) for q in qs] == [2, 2, 2] and all("box" in h for q in qs for h in q["results"])
    assert qs[2]["results"][0]["id"] == target  # the image itself, found by its own whole-image vector
    r = runner.invoke(app, ["-w", str(wdir), "search", "--regions", "--image", str(tmp_path / "imgs" / "scene_000.png")])
    assert r.exit_code == 0 and ("box [" in r.stdout or "whole image" in r.stdout)
    assert runner.invoke(app, ["-w", str(wdir), "concept", "add", "red", "--text", "red"]).exit_code == 0
    r = runner.invoke(app, ["-w", str(wdir), "mine", "red", "--regions", "--strategy", "entropy", "--batch", "3", "--json"])
    assert r.exit_code == 0, r.output
    items = json.loads(r.stdout)["items"]
    assert len(items) == 3 and all("box" in it for it in items)
    out_csv = tmp_path / "rb.csv"
    r = runner.invoke(app, ["-w", str(wdir), "mine", "red", "--regions", "--strategy", "entropy", "--batch", "3",
                            "--out", str(out_csv)])
    assert r.exit_code == 0, r.output
    import csv as _csv

    rows = list(_csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["id", "uri", "score", "prelabel", "x0", "y0", "x1", "y1", "label", "concept", "round"] and len(rows) == 3
    # `assay rounds --out` writes a region round's batch again, boxes included
    r = runner.invoke(app, ["-w", str(wdir), "rounds", "red", "--out", str(tmp_path / "again.csv")])
    assert r.exit_code == 0, r.output
    assert list(_csv.DictReader((tmp_path / "again.csv").open())) == rows


def test_item_consumers_never_see_regions_and_cold_start_mining(ws):
    from assay.search import build_knn_graph

    embed_regions(ws, spec="grid:2")
    build_index(ws, kind="flat")
    g = build_knn_graph(ws, 5, exact=True)
    assert g.n == 30 and not is_region_id(np.asarray(g.ids)).any()
    assert not is_region_id(ws.vectors().ids()).any() and is_region_id(region_store(ws).ids()).all()
    assert ws.status()["embeddings"] == {"test-mean-color": 30, "test-mean-color@regions": 120}
    ws.catalog.add_concept("red", text="red")
    row, out = RegionMiner(ws, "red").propose(strategy="entropy", batch=4, seed=0, random_fraction=0.5)
    assert out.cold_start and len(out.ids) == 4
    props = region_proposals(ws, row.id)
    assert set(props) == set(out.ids.tolist())
    # a box shown on a cold start is that of the item's own region that its seed search matched
    assert all(p["box"] is None or int(parent_ids([p["region"]])[0]) == i for i, p in props.items())


def test_square_crops_spec_embeds_and_finds_the_patch(ws):
    rep = embed_regions(ws, spec="grid:3:square")
    assert rep.regions == 270 and rep.spec == "grid:3:square"
    build_index(ws, kind="flat")
    hits = Searcher(ws).search_regions(vector=_red_query(), k=3)
    assert hits[0].id == _target(ws) and hits[0].box == TARGET_BOX  # the stored box is the tile, not the crop


# ---------------------------------------------------------------------------------------------- dense regions
@settings(max_examples=150, deadline=None)
@given(
    w=st.integers(1, 3000), h=st.integers(1, 3000),
    sides=st.lists(st.integers(64, 2048), min_size=1, max_size=3, unique=True),
    window=st.integers(1, 8), stride=st.integers(1, 8), max_regions=st.sampled_from([3, 50, 300, MAX_SLOTS]),
)
def test_dense_layout_fits_the_budget_and_boxes_lie_inside(w, h, sides, window, stride, max_regions):
    from assay.regions import DenseSpec, dense_input_size, dense_layout

    if stride > window or max_regions < 4 * len(sides):
        with pytest.raises(InputError):
            DenseSpec(tuple(sides), window, stride, max_regions)
        return
    spec = DenseSpec(tuple(sides), window, stride, max_regions)
    layout = dense_layout(w, h, spec)
    assert [p["side"] for p in layout] == list(spec.sides)
    total = 0
    for p in layout:
        W, H = p["size"]
        assert (W, H) == dense_input_size(w, h, p["side"]) and W % 32 == 0 and H % 32 == 0
        gw, gh = W // 32, H // 32
        assert 1 <= p["window"] <= min(window, gw, gh)
        for starts, cells in ((p["xs"], gw), (p["ys"], gh)):
            assert starts[0] == 0 and starts[-1] == cells - p["window"]  # first and last cells covered
            assert (np.diff(starts) > 0).all() and (np.diff(starts) <= max(stride, np.diff(starts).max(initial=1))).all()
        total += len(p["xs"]) * len(p["ys"])
    assert 1 <= total <= max_regions
    boxes = tile_boxes(w, h, spec)
    assert boxes.shape == (total, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_overlap_given_twice_must_agree():
    assert parse_region_spec("grid:2:overlap=0.3", overlap=0.3).overlap == 0.3
    with pytest.raises(InputError, match="give one"):
        parse_region_spec("grid:2:overlap=0.3", overlap=0.5)


def test_dense_spec_parsing_and_errors():
    from assay.regions import DenseSpec

    spec = parse_region_spec("dense:896,1792")
    assert spec == DenseSpec((896, 1792), 4, 2) and spec.key == "dense:896,1792:window=4:stride=2"
    assert parse_region_spec(spec.key) == spec and spec.n_regions == MAX_SLOTS
    assert parse_region_spec("dense:448:window=3:stride=1:max=200").key == "dense:448:window=3:stride=1:max=200"
    for bad in ("dense:", "dense:32", "dense:896,896", "dense:896:window=2:stride=3", "dense:896:max=5000",
                "dense:896:foo=1", "dense:8000"):
        with pytest.raises(InputError):
            parse_region_spec(bad)
    with pytest.raises(InputError, match="overlap applies to grid"):
        parse_region_spec("dense:896", overlap=0.5)


def test_pool_windows_equals_the_mean_of_each_window():
    from assay.regions import pool_windows

    rng = np.random.default_rng(0)
    f = rng.standard_normal((5, 7, 9)).astype(np.float32)  # [C, h, w]
    xs, ys = np.array([0, 2, 6]), np.array([0, 1, 4])
    got = pool_windows(f, 3, xs, ys)  # [9, 5]
    want = np.array([f[:, y:y + 3, x:x + 3].mean(axis=(1, 2)) for y in ys for x in xs])
    assert got.shape == (9, 5) and np.allclose(got, want, atol=1e-5)
    assert np.allclose(pool_windows(f, 7, np.array([0]), np.array([0]))[0], f[:, :, :7].mean(axis=(1, 2)), atol=1e-5)


def _write_sized_scenes(folder, sizes, seed=0):
    """Noisy green/blue photos of the given sizes; image 0 has a red patch of 1/8 of its shorter side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        base = np.array([rng.integers(0, 60), rng.integers(60, 200), rng.integers(60, 200)])
        arr = np.clip(base + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
        if i == 0:
            s = min(w, h) // 8
            arr[h // 2 : h // 2 + s, w - 2 * s : w - s] = [230, 20, 20]
        Image.fromarray(arr).save(folder / f"scene_{i:03d}.png")
    return folder


@pytest.fixture
def dense_ws(tmp_path):
    sizes = [(160, 120)] + [(96, 96), (200, 100), (64, 128), (120, 160)] * 4  # 17 images, 4 shapes
    w = Workspace.init(tmp_path / "ws", default_encoder="test-dense-color")
    ingest(w.catalog, [_write_sized_scenes(tmp_path / "imgs", sizes)])
    embed(w)
    yield w
    w.close()


def _red_dense_query():
    v = np.array([230 / 255, 20 / 255, 20 / 255, 0.05], np.float32)
    return v / np.linalg.norm(v)


def test_dense_regions_find_the_small_patch_with_its_box(dense_ws):
    ws = dense_ws
    rep = embed_regions(ws, spec="dense:128,256:window=2:stride=1")
    assert rep.images == 17 and rep.errors == 0
    # a shape-dependent number of regions per image, each with its box and logits
    from assay.regions import dense_layout

    spec = parse_region_spec("dense:128,256:window=2:stride=1")
    want = {}
    for i in ws.catalog.ids():
        w, h = _size_of(ws, int(i))
        want[int(i)] = sum(len(p["xs"]) * len(p["ys"]) for p in dense_layout(w, h, spec, cell=8))
    assert rep.regions == sum(want.values()) == len(region_store(ws))
    # the report gives the mean count of this run, and the spec's cap apart
    d = rep.to_dict()
    assert d["regions_per_image"] == round(rep.regions / 17, 1) and d["max_regions_per_image"] == spec.n_regions
    assert d["regions_per_image"] < d["max_regions_per_image"]
    for i, n in want.items():
        assert len(regions_of(ws, i)) == n
    _ids, logits = region_store(ws).load(extra="head")
    assert logits.shape == (rep.regions, 2)
    build_index(ws, kind="flat")
    s = Searcher(ws)
    target = _target(ws)
    hits = s.search_regions(vector=_red_dense_query(), k=5)
    assert hits[0].id == target and hits[0].region is not None
    x0, y0, x1, y1 = hits[0].box
    w, h = _size_of(ws, target)
    side = min(w, h) // 8  # the patch: x in [w - 2 side, w - side), y in [h // 2, h // 2 + side)
    bx, by = (x0 + x1) / 2, (y0 + y1) / 2  # the centre of the box that found it lies on the patch
    assert w - 2 * side <= bx <= w - side and h // 2 <= by <= h // 2 + side and (x1 - x0) * (y1 - y0) < w * h / 16
    whole = s.search(vector=_red_dense_query(), k=5)
    assert hits[0].score > next((hh.score for hh in whole if hh.id == target), -1.0) + 0.05
    # every image scores by its best region: the library's ranking equals brute force
    ids, V = ws.vectors().load()
    rids, RV = region_store(ws).load()
    q = np.random.default_rng(3).standard_normal(4).astype(np.float32)
    q /= np.linalg.norm(q)
    best = {}
    for v, i in zip(np.concatenate([V, RV]).astype(np.float32) @ q, np.concatenate([ids, rids])):
        p = int(parent_ids([i])[0])
        best[p] = max(best.get(p, -9.0), float(v))
    from assay.index import VectorIndex

    calls = []
    real_search = VectorIndex.search

    def counting(self, *a, **kw):
        calls.append(a[1] if len(a) > 1 else kw.get("k"))
        return real_search(self, *a, **kw)

    for k in (10, 17):  # k = 17, every image: the first fetch names too few images and has to grow
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(VectorIndex, "search", counting)
            got = s.search_regions(vector=q, k=k)
        if k == 17:
            assert len(calls) >= 2 and calls[1] > calls[0]
        want_rank = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        assert len(got) == k and np.allclose([hh.score for hh in got], [v for _, v in want_rank], atol=2e-3)


def test_dense_regions_resume_exactly_once(dense_ws, monkeypatch):
    from assay.vectors import VectorStore

    ws = dense_ws
    calls = {"n": 0}
    real = VectorStore.append

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(VectorStore, "append", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_regions(ws, spec="dense:128:window=2", shard_size=40)
    monkeypatch.setattr(VectorStore, "append", real)
    first = len(region_store(ws))
    assert 0 < first
    rep = embed_regions(ws, spec="dense:128:window=2", shard_size=40)
    ids = region_store(ws).ids()
    assert len(ids) == len(np.unique(ids)) and rep.pending < 17
    total = sum(len(regions_of(ws, int(i))) for i in ws.catalog.ids())
    assert total == len(ids)
    assert embed_regions(ws, spec="dense:128:window=2").pending == 0


def test_dense_regions_need_a_feature_map(ws):
    with pytest.raises(InputError, match="feature map"):
        embed_regions(ws, spec="dense:128")


def test_cli_dense_regions_search_and_mine(tmp_path):
    runner = CliRunner()
    wdir = tmp_path / "w"
    assert runner.invoke(app, ["init", str(wdir), "--encoder", "test-dense-color"]).exit_code == 0
    _write_sized_scenes(tmp_path / "imgs", [(160, 120)] + [(96, 96), (200, 100)] * 4)
    assert runner.invoke(app, ["-w", str(wdir), "ingest", str(tmp_path / "imgs")]).exit_code == 0
    r = runner.invoke(app, ["-w", str(wdir), "embed", "--regions", "dense:128:window=2:stride=1", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)["regions"]
    assert d["spec"] == "dense:128:window=2:stride=1" and d["images"] == 9 and d["regions"] > 9 * 20
    r = runner.invoke(app, ["-w", str(wdir), "embed", "--regions", "dense:128", "--region-overlap", "0.5"])
    assert r.exit_code == 2 and "overlap applies to grid" in r.output
    assert runner.invoke(app, ["-w", str(wdir), "index", "--kind", "flat"]).exit_code == 0
    with Workspace.open(wdir) as w:
        target = _target(w)
        hits = Searcher(w).search_regions(vector=_red_dense_query(), k=3)
        assert hits[0].id == target and hits[0].box is not None
        # mining with region evidence: a positive region label joins the training set
        w.catalog.add_concept("red")
        add_region_labels(w, "red", [hits[0].region], [1])
        X, y = region_training_set(w, "red")
        assert X.shape == (1, 4) and y.tolist() == [1]
        others = [int(i) for i in w.catalog.ids() if int(i) != target]
        w.catalog.add_labels(w.catalog.concept("red").id, others[:3], [0] * 3, source="human")
    r = runner.invoke(app, ["-w", str(wdir), "mine", "red", "--regions", "--strategy", "entropy", "--batch", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["items"]) == 3


def test_a_dense_pass_enlarges_a_small_image_at_most_eight_times():
    from assay.regions import DENSE_MAX_UPSCALE, dense_input_size

    assert DENSE_MAX_UPSCALE == 8
    assert dense_input_size(80, 120, 4096) == (640, 960)  # not 4096 x 6144
    assert dense_input_size(500, 375, 2240) == (2976, 2240)  # photos of usual size: as before
    assert dense_input_size(2, 3, 256) == (32, 32)  # at least one cell


def test_a_cold_start_round_shows_the_box_its_region_search_found(ws, tmp_path):
    """The first round of a concept (no labels) is seeded by region searches; a proposal that came from one
    carries the box of the region that matched, as later rounds' proposals do."""
    from PIL import Image

    extra = tmp_path / "exemplar"
    extra.mkdir()
    Image.new("RGB", (48, 48), (230, 20, 20)).save(extra / "red.png")
    ingest(ws.catalog, [extra])
    embed(ws)
    embed_regions(ws, spec="grid:3")
    build_index(ws, kind="flat")
    red = int(ws.catalog.id_for_uri(str(extra / "red.png")))
    ws.catalog.add_concept("red", exemplars=[red])
    row, out = RegionMiner(ws, "red").propose(strategy="entropy", batch=4, seed=0, random_fraction=0.0)
    assert out.cold_start
    props = region_proposals(ws, row.id)
    target = _target(ws)
    assert target in props and props[target]["box"] == list(TARGET_BOX)
    # random picks show no box, even where a search also listed them
    ws.catalog.add_concept("red2", exemplars=[red])
    row2, out2 = RegionMiner(ws, "red2").propose(strategy="entropy", batch=20, seed=0, random_fraction=0.5)
    props2 = region_proposals(ws, row2.id)
    randoms = [int(i) for i, why in zip(out2.ids, out2.reasons) if why == "seed-random"]
    assert randoms and all(props2[i]["box"] is None for i in randoms)
    hits = {h.id: h for h in Searcher(ws).search_regions_items([red], k=10)[0]}
    for item, p in props.items():  # every box shown is the one its seed hit found
        if p["box"] is not None:
            assert hits[item].box is not None and list(hits[item].box) == p["box"]


def test_a_region_text_bridge_from_other_region_vectors_is_refused(ws):
    """After `embed --regions` with another spec and before `assay index`, the old text bridge's region ids
    name other boxes: region text search must refuse it, as the region index does."""
    from assay.errors import IndexNotBuiltError
    from assay.index import VectorIndex
    from assay.regions import REGION_BRIDGE_DIR

    embed_regions(ws, spec="grid:2")
    build_index(ws, kind="flat")
    version = region_store(ws).meta()["version"]
    d = ws.index_dir(ws.default_encoder) / REGION_BRIDGE_DIR
    rng = np.random.default_rng(0)
    for made_from, ok in (("grid:3-vectors", False), (version, True)):
        idx = VectorIndex(spec="flat", dim=8, encoder="test-mean-color@regions+conse",
                          encoder_version=f"{made_from}+minilm-v1")
        v = rng.standard_normal((5, 8)).astype(np.float32)
        idx.build(np.arange(1, 6, dtype=np.int64), v / np.linalg.norm(v, axis=1, keepdims=True))
        idx.save(d)
        if ok:
            assert Searcher(ws).region_bridge_index().ntotal == 5
        else:
            with pytest.raises(IndexNotBuiltError, match="older than the region vectors"):
                Searcher(ws).region_bridge_index()


def test_a_changed_image_keeps_no_box_rows_of_its_old_regions(ws, tmp_path):
    """Dense specs give a changed image another number of windows; rows of the old ones must not linger
    (simulated here by a leftover row of a slot the spec never fills)."""
    import sqlalchemy as sa
    from PIL import Image

    from assay.regions import regions_table

    embed_regions(ws, spec="grid:2")
    target = _target(ws)
    with ws.catalog.engine.begin() as conn:
        conn.execute(sa.insert(regions_table), [{"id": int(region_ids([target], [40])[0]), "spec": "grid:2",
                                                "item_id": target, "slot": 40, "scale": 9, "x0": 0, "y0": 0,
                                                "x1": 500, "y1": 500, "width": 900, "height": 900}])
    assert len(regions_of(ws, target)) == 5
    path = ws.root.parent / "imgs" / "scene_000.png"
    Image.new("RGB", (120, 80), (10, 200, 30)).save(path)  # the file changes
    ingest(ws, [path.parent])
    embed(ws)
    embed_regions(ws, spec="grid:2")
    rows = regions_of(ws, target)
    assert [r["slot"] for r in rows] == [0, 1, 2, 3] and all(r["image_size"] == [120, 80] for r in rows)


def test_status_says_when_the_region_index_is_missing_or_out_of_date(ws):
    embed_regions(ws, spec="grid:2")
    st = ws.status()["region_indexes"]["test-mean-color"]
    assert st["up_to_date"] is False and "assay index" in st["problem"]
    build_index(ws, kind="flat")
    st = ws.status()["region_indexes"]["test-mean-color"]
    assert st == {"spec": "grid:2", "vectors": 30 + 120, "up_to_date": True}
    embed_regions(ws, spec="grid:3", reset=True)  # new regions, not indexed yet
    st = ws.status()["region_indexes"]["test-mean-color"]
    assert st["spec"] == "grid:3" and st["up_to_date"] is False
    build_index(ws, kind="flat")
    assert ws.status()["region_indexes"]["test-mean-color"]["up_to_date"] is True


def test_embed_regions_refuses_before_the_whole_image_pass(ws, tmp_path):
    """A spec the stored regions were not made with (or an encoder without images) is refused before
    `assay embed --regions` embeds anything, not after its whole-image pass."""
    from assay.regions import check_regions_can_embed

    embed_regions(ws, spec="grid:2")
    with pytest.raises(WorkspaceError, match="--reset-regions"):
        check_regions_can_embed(ws, None, "grid:3")
    check_regions_can_embed(ws, None, "grid:3", reset=True)
    check_regions_can_embed(ws, None, "grid:2")
    folder = tmp_path / "more"
    from conftest import write_images

    write_images(folder, 3, size=(20, 20))
    ingest(ws.catalog, [folder])
    before = len(ws.vectors())
    r = CliRunner().invoke(app, ["embed", "-w", str(ws.root), "--regions", "grid:3"])
    assert r.exit_code != 0 and "--reset-regions" in r.output
    assert len(ws.vectors()) == before  # the new images were not embedded either


def test_a_run_with_nothing_to_embed_does_not_fix_the_region_spec(ws):
    rep = embed_regions(ws, spec="grid:2", limit=0)
    assert rep.pending == 0 and rep.total_regions == 0 and not region_store(ws).exists()
    rep = embed_regions(ws, spec="grid:3")  # another spec is still free to choose
    assert rep.spec == "grid:3" and rep.regions == 30 * 9


def test_a_region_cold_start_searches_its_exemplars_together_first(ws, tmp_path, monkeypatch):
    """With several exemplars the first ranked list is the region search by their prototype; its best image
    opens the batch, with the box that search found."""
    from PIL import Image

    extra = tmp_path / "exemplars"
    extra.mkdir()
    for j, c in enumerate([(230, 20, 20), (200, 40, 30)]):
        Image.new("RGB", (48, 48), c).save(extra / f"red{j}.png")
    ingest(ws.catalog, [extra])
    embed(ws)
    embed_regions(ws, spec="grid:3")
    build_index(ws, kind="flat")
    reds = [int(ws.catalog.id_for_uri(str(extra / f"red{j}.png"))) for j in range(2)]
    ws.catalog.add_concept("red", exemplars=reds)
    calls = []
    real = Searcher.search_regions

    def spy(self, **kw):
        calls.append(kw.get("item"))
        return real(self, **kw)

    monkeypatch.setattr(Searcher, "search_regions", spy)
    row, out = RegionMiner(ws, "red").propose(strategy="entropy", batch=4, seed=0, random_fraction=0.0)
    assert calls and calls[0] == reds  # the prototype's search, before each exemplar's own
    # the prototype's best image, by brute force over the stores, opens the batch
    proto = ws.vectors().get(reds, dtype=np.float32).mean(axis=0)
    rid, rv = region_store(ws).load()
    best = {}
    for r, sc in zip(parent_ids(rid).tolist(), (rv.astype(np.float32) @ proto).tolist()):
        best[r] = max(best.get(r, -9.0), sc)
    ids, V = ws.vectors().load()
    for i, sc in zip(ids.tolist(), (V.astype(np.float32) @ proto).tolist()):
        best[i] = max(best.get(i, -9.0), sc)
    top = max((i for i in best if i not in reds), key=lambda i: best[i])
    assert out.cold_start and int(out.ids[0]) == top
