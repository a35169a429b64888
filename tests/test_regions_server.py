"""The labelling server with regions: proposals carry the triggering box, a label can be given for the region."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the web stack is an optional extra: pip install 'assay[server]'")

import fake_encoder  # noqa: F401
from fastapi.testclient import TestClient

from assay import Workspace, embed, ingest
from assay.regions import embed_regions, parent_ids, region_ids, region_labels
from assay.search import build_index
from assay.server.app import ServerConfig, create_app
from test_regions import _write_scenes


@pytest.fixture
def client_ws(tmp_path):
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [_write_scenes(tmp_path / "imgs", n=24)])
    embed(ws)
    embed_regions(ws, spec="grid:2,3")
    build_index(ws, kind="flat")
    app = create_app(ws, ServerConfig(batch=6, auto_propose=False))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c, ws
    ws.close()


def _propose(c, body):
    r = c.post("/api/concepts/red/rounds", json=body)
    assert r.status_code == 202, r.text
    st = c.get("/api/concepts/red/proposer", params={"wait": 30}).json()
    assert st["state"] == "done", st
    return c.get("/api/concepts/red/rounds/latest").json()


def test_region_round_shows_boxes_and_takes_region_labels(client_ws):
    c, ws = client_ws
    target = int(ws.catalog.ids()[0])
    assert c.post("/api/concepts", json={"name": "red", "text": "red"}).status_code == 201
    # labels with both classes, then a region round: proposals carry the box that triggered them
    cid = ws.catalog.concept("red").id
    ids = [int(i) for i in ws.catalog.ids()]
    ws.catalog.add_labels(cid, [target] + ids[1:4], [1, 0, 0, 0], source="human")
    batch = _propose(c, {"regions": True, "strategy": "most-likely-positive"})
    assert batch["strategy"].startswith("regions(") and batch["params"]["regions"] == "grid:2,3"
    boxed = [it for it in batch["items"] if it["region"] is not None]
    assert boxed, batch["items"]
    for it in boxed:
        assert len(it["region"]["box"]) == 4 and it["region"]["image_size"] == [96, 96]
        assert int(parent_ids([it["region"]["id"]])[0]) == it["id"]
        assert int(region_ids([it["id"]], [it["region"]["slot"]])[0]) == it["region"]["id"]
    it = boxed[0]
    other = next(x for x in batch["items"] if x["id"] != it["id"])
    body = {"submission_id": "sub-regions-1", "annotator": "ann", "round": batch["round"],
            "labels": [{"item_id": it["id"], "value": 1, "region_slot": it["region"]["slot"]},
                       {"item_id": other["id"], "value": 0}]}
    # A failure while writing the region rows leaves nothing of the submission (one transaction), so the
    # client's retry with the same submission id writes all of it rather than being taken as a replay.
    import sqlalchemy as sa

    from assay.regions import region_labels_table

    n_labels = len(ws.catalog.label_history(ws.catalog.concept("red").id))
    left = {"n": 1}

    def fail(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO REGION_LABELS") and left["n"]:
            left["n"] -= 1
            raise RuntimeError("injected failure writing region labels")

    sa.event.listen(ws.catalog.engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            c.post("/api/concepts/red/labels", json=body)
    finally:
        sa.event.remove(ws.catalog.engine, "before_cursor_execute", fail)
    assert len(ws.catalog.label_history(ws.catalog.concept("red").id)) == n_labels
    assert len(region_labels(ws, "red")[0]) == 0
    r = c.post("/api/concepts/red/labels", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["replayed"] is False
    rids, vals = region_labels(ws, "red")
    assert rids.tolist() == [it["region"]["id"]] and vals.tolist() == [1]
    assert c.post("/api/concepts/red/labels", json=body).json()["replayed"] is True
    assert len(region_labels(ws, "red")[0]) == 1  # a replay writes nothing
    # a slot the image does not have is refused, nothing written
    bad = {**body, "submission_id": "sub-regions-2", "labels": [{"item_id": other["id"], "value": 1, "region_slot": 200}]}
    r = c.post("/api/concepts/red/labels", json=bad)
    assert r.status_code == 404 and "not embedded regions" in r.json()["detail"]
    assert len(region_labels(ws, "red")[0]) == 1
    # an embedded region, but not the box the round showed (another slot, or an image shown without a box)
    wrong_slot = (it["region"]["slot"] + 1) % 13
    for lab in ({"item_id": it["id"], "value": 0, "region_slot": wrong_slot},
                *({"item_id": x["id"], "value": 0, "region_slot": 1} for x in batch["items"] if x["region"] is None)):
        r = c.post("/api/concepts/red/labels", json={**body, "submission_id": f"sub-off-{lab['item_id']}", "labels": [lab]})
        assert r.status_code == 400 and "not the boxes round" in r.json()["detail"], r.text
    # the same region answer again, in a new submission, adds no row (as unchanged image labels add none)
    t = region_labels_table
    with ws.catalog.engine.connect() as conn:
        rows_before = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
    again = {**body, "submission_id": "sub-regions-again", "labels": [body["labels"][0]]}
    assert c.post("/api/concepts/red/labels", json=again).status_code == 200
    with ws.catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == rows_before
    # the next default round keeps mining with regions
    nxt = _propose(c, {})
    assert nxt["strategy"].startswith("regions(")


def test_a_region_label_is_refused_once_the_region_spec_changed(client_ws):
    c, ws = client_ws
    target = int(ws.catalog.ids()[0])
    assert c.post("/api/concepts", json={"name": "red", "text": "red"}).status_code == 201
    ids = [int(i) for i in ws.catalog.ids()]
    ws.catalog.add_labels(ws.catalog.concept("red").id, [target] + ids[1:4], [1, 0, 0, 0], source="human")
    batch = _propose(c, {"regions": True, "strategy": "most-likely-positive"})
    it = next(x for x in batch["items"] if x["region"] is not None)
    embed_regions(ws, spec="grid:3", reset=True)  # slot numbers now name other boxes
    body = {"submission_id": "sub-spec-changed", "annotator": "ann", "round": batch["round"],
            "labels": [{"item_id": it["id"], "value": 1, "region_slot": min(it["region"]["slot"], 5)}]}
    r = c.post("/api/concepts/red/labels", json=body)
    assert r.status_code == 409 and "grid:2,3" in r.json()["detail"] and "grid:3" in r.json()["detail"]
    assert len(region_labels(ws, "red")[0]) == 0
    # the image itself can still be labelled
    body = {**body, "submission_id": "sub-spec-changed-2", "labels": [{"item_id": it["id"], "value": 1}]}
    assert c.post("/api/concepts/red/labels", json=body).status_code == 200


def test_plain_rounds_have_no_region(client_ws):
    c, ws = client_ws
    assert c.post("/api/concepts", json={"name": "red", "text": "red"}).status_code == 201
    batch = _propose(c, {})
    assert all(it["region"] is None for it in batch["items"])
    r = c.post("/api/concepts/red/labels", json={
        "submission_id": "sub-regions-3", "annotator": "ann", "round": batch["round"],
        "labels": [{"item_id": batch["items"][0]["id"], "value": 1, "region_slot": 1024}]})
    assert r.status_code == 422  # not a slot
    assert int(region_ids([1], [0])[0]) >= 2**62


def test_browser_draws_the_box_and_labels_the_region(tmp_path):
    import os

    chromium = os.environ.get("ASSAY_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(chromium):
        pytest.skip(f"no chromium at {chromium} (set ASSAY_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from assay.regions import RegionMiner
    from assay.server.app import ServerThread

    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [_write_scenes(tmp_path / "imgs", n=24)])
    embed(ws)
    embed_regions(ws, spec="grid:2,3")
    build_index(ws, kind="flat")
    ws.catalog.add_concept("red", text="red")
    ids = [int(i) for i in ws.catalog.ids()]
    ws.catalog.add_labels(ws.catalog.concept("red").id, ids[:4], [1, 0, 0, 0], source="human")
    row, out = RegionMiner(ws, "red").propose(strategy="most-likely-positive", batch=6, seed=0)
    boxed = [i for i, p in region_proposals_of(ws, row.id).items() if p["box"] is not None]
    assert boxed
    app = create_app(ws, ServerConfig(batch=6, auto_propose=False))
    try:
        with ServerThread(app) as url, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.set_default_timeout(15000)
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready='1']")
                page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 6")
                drawn = page.eval_on_selector_all("#grid .card", "cs => cs.filter(c => c.querySelector('svg.region rect')).map(c => Number(c.dataset.id))")
                assert sorted(drawn) == sorted(boxed)
                # the box lies inside the thumbnail's area
                inside = page.eval_on_selector("#grid .card svg.region rect", """r => {
                    const a = r.getBoundingClientRect(), b = r.closest('.thumbwrap').querySelector('img').getBoundingClientRect();
                    return a.width > 0 && a.left >= b.left - 2 && a.right <= b.right + 2 && a.top >= b.top - 2 && a.bottom <= b.bottom + 2; }""")
                assert inside
                page.fill("#annotator", "browser")
                page.click("h1")
                for _ in range(6):
                    page.keyboard.press("Shift+Y")
                marks = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.answer)")
                assert sorted(marks) == sorted(["yes+box" if i in boxed else "yes" for i in out.ids.tolist()])
                page.keyboard.press("Enter")
                try:
                    page.wait_for_selector("body[data-submitted='1']")
                except Exception:
                    raise AssertionError(page.inner_text("#status")) from None
            finally:
                browser.close()
    finally:
        ws.close()
    rids, vals = region_labels(ws, "red")
    assert sorted(int(parent_ids([r])[0]) for r in rids) == sorted(boxed) and set(vals.tolist()) == {1}


def region_proposals_of(ws, round_id):
    from assay.regions import region_proposals

    return region_proposals(ws, round_id)
