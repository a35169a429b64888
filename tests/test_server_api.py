"""The REST API of `assay serve` through FastAPI's test client: the labelling loop, idempotency, conflicts,
thumbnails, search, auth, and bad input (4xx, a clear message, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path
import time

import pytest

pytest.importorskip("fastapi", reason="the web stack is an optional extra: pip install 'assay[server]'")

import fake_encoder  # noqa: F401
from conftest import colour_corpus
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from assay import Workspace, embed, ingest
from assay.catalog import labels_table
from assay.search import build_index
from assay.server.app import ServerConfig, create_app
from assay.server.records import submissions_table

TOKEN = "s3cret-token-123"


def make_workspace(tmp_path, n_red: int = 10, n_other: int = 40, seed: int = 0) -> Workspace:
    """Red images (the concept) among other colours, embedded with the fast test encoder, flat index."""
    folder = tmp_path / "imgs"
    colour_corpus(folder, n_red, n_other, seed)
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [folder / "manifest.csv"])
    embed(ws)
    build_index(ws, kind="flat")
    return ws


def truth(ws) -> dict[int, int]:
    return {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}


def label_rows(ws) -> int:
    with ws.catalog.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(labels_table)).scalar())


@pytest.fixture
def ws(tmp_path):
    w = make_workspace(tmp_path)
    yield w
    w.close()


@pytest.fixture
def client(ws):
    app = create_app(ws, ServerConfig(batch=8))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def _first_round(client, name="red", text="red"):
    assert client.post("/api/concepts", json={"name": name, "text": text}).status_code == 201
    r = client.post(f"/api/concepts/{name}/rounds", json={"batch": 8, "seed": 1})
    assert r.status_code == 202, r.text
    st = client.get(f"/api/concepts/{name}/proposer", params={"wait": 20}).json()
    assert st["state"] == "done", st
    return client.get(f"/api/concepts/{name}/rounds/latest").json()


def _sub(sid, annotator, rnd, labels, skipped=()):
    return {"submission_id": sid, "annotator": annotator, "round": rnd,
            "labels": [{"item_id": i, "value": v} for i, v in labels], "skipped": list(skipped)}


def test_labelling_loop_end_to_end(ws, client):
    assert client.get("/api/health").json()["ok"] is True
    assert client.get("/openapi.json").json()["info"]["title"] == "assay labelling API"
    batch = _first_round(client)
    assert batch["round"] == 1 and len(batch["items"]) == 8 and batch["open"]
    shas = {it.id: it.sha256 for it in ws.catalog.get_many([it["id"] for it in batch["items"]])}
    assert all(it["thumb"] == f"/api/items/{it['id']}/thumb?v={shas[it['id']][:12]}" for it in batch["items"])
    assert all(it["prelabel"] is None for it in batch["items"])  # a cold start has no model yet
    t = truth(ws)
    ids = [it["id"] for it in batch["items"]]
    answers = [(i, t[i]) for i in ids[:-1]]
    r = client.post("/api/concepts/red/labels", json=_sub("sub-0001", "ann", 1, answers, skipped=[ids[-1]]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["written"] == 7 and body["complete"] and body["remaining"] == 0
    assert body["next"]["state"] in ("running", "done")  # the next batch is proposed in the background
    st = client.get("/api/concepts/red/proposer", params={"wait": 20}).json()
    assert st["state"] == "done" and st["latest_round"] == 2
    b2 = client.get("/api/concepts/red/rounds/latest").json()
    assert b2["round"] == 2 and not set(ids) & {it["id"] for it in b2["items"]}
    if b2["strategy"].startswith("seals"):  # warm: pre-labels are probabilities
        assert all(0.0 <= it["prelabel"] <= 1.0 for it in b2["items"])
    # the catalog holds exactly the answers, with provenance
    hist = ws.catalog.label_history(ws.catalog.concept("red").id)
    assert sorted((h["item_id"], h["value"]) for h in hist) == sorted(answers)
    assert {h["annotator"] for h in hist} == {"ann"} and {h["source"] for h in hist} == {"human"}
    assert {h["round_id"] for h in hist} == {batch["round_id"]}
    r1 = client.get("/api/concepts/red/rounds/1").json()
    assert r1["answered"] == 8
    skipped = [it for it in r1["items"] if it["skipped"]]
    assert [it["id"] for it in skipped] == [ids[-1]]
    assert [k["annotator"] for k in skipped[0]["skipped_by"]] == ["ann"] and skipped[0]["skipped_by"][0]["at"].endswith("+00:00")
    rounds = client.get("/api/concepts/red/rounds").json()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    concepts = client.get("/api/concepts").json()["concepts"]
    assert concepts[0]["labels"] == 7 and concepts[0]["positives"] == sum(v for _, v in answers)


def test_retried_submission_is_written_once(ws, client):
    batch = _first_round(client)
    ids = [it["id"] for it in batch["items"]]
    sub = _sub("retry-abcdef", "ann", 1, [(ids[0], 1), (ids[1], 0)])
    first = client.post("/api/concepts/red/labels", json=sub).json()
    again = client.post("/api/concepts/red/labels", json=sub).json()
    assert first["written"] == 2 and not first["replayed"]
    assert again["written"] == 0 and again["replayed"] and again["recorded"] == 2
    assert label_rows(ws) == 2
    # the same id with another body is refused, and writes nothing
    other = _sub("retry-abcdef", "ann", 1, [(ids[0], 0)])
    r = client.post("/api/concepts/red/labels", json=other)
    assert r.status_code == 409 and "different set of labels" in r.json()["detail"]
    assert label_rows(ws) == 2


def test_an_answer_sent_again_under_a_new_id_is_not_a_second_label(ws, client):
    # A page whose reply was lost re-sends what was saved, plus a new answer, under a new submission id.
    batch = _first_round(client)
    ids = [it["id"] for it in batch["items"]]
    first = client.post("/api/concepts/red/labels", json=_sub("lost-reply-01", "ann", 1, [(ids[0], 1), (ids[1], 0)])).json()
    again = client.post("/api/concepts/red/labels",
                        json=_sub("lost-reply-02", "ann", 1, [(ids[0], 1), (ids[1], 0), (ids[2], 1)])).json()
    assert first["written"] == 2 and again["written"] == 1 and again["recorded"] == 3
    # a changed answer is a new row (the history keeps every change), and so is another annotator's
    changed = client.post("/api/concepts/red/labels", json=_sub("lost-reply-03", "ann", 1, [(ids[0], 0)])).json()
    other = client.post("/api/concepts/red/labels", json=_sub("lost-reply-04", "bea", 1, [(ids[0], 1)])).json()
    assert changed["written"] == 1 and other["written"] == 1
    hist = client.get("/api/concepts/red/labels").json()["labels"]
    assert [(h["item_id"], h["value"], h["annotator"]) for h in hist] == [
        (ids[0], 1, "ann"), (ids[1], 0, "ann"), (ids[2], 1, "ann"), (ids[0], 0, "ann"), (ids[0], 1, "bea")]
    # history rows carry the round's number and times carry their zone
    assert {h["round"] for h in hist} == {1} and all(h["created_at"].endswith("+00:00") for h in hist)


def test_ids_and_answers_must_be_json_integers(ws, client):
    batch = _first_round(client)
    i = batch["items"][0]["id"]
    for k, lab in enumerate([{"item_id": str(i), "value": 1}, {"item_id": i, "value": True},
                             {"item_id": i, "value": 1.0}, {"item_id": float(i), "value": 0}]):
        body = {"submission_id": f"strict-sub-{k:02d}", "annotator": "ann", "round": 1, "labels": [lab]}
        r = client.post("/api/concepts/red/labels", json=body)
        assert r.status_code == 422, (lab, r.text)
    r = client.post("/api/concepts/red/labels", json={"submission_id": "strict-sub-99", "annotator": "ann",
                                                      "round": "1", "labels": [{"item_id": i, "value": 1}]})
    assert r.status_code == 422
    assert label_rows(ws) == 0


def test_names_in_any_script_and_names_the_page_cannot_route(ws, client):
    batch = _first_round(client)
    r = client.post("/api/concepts/red/labels", json=_sub("unicode-ann-1", "王芳 / José", 1, [(batch["items"][0]["id"], 1)]))
    assert r.status_code == 200, r.text
    assert client.post("/api/concepts", json={"name": "voiture rouge é"}).status_code == 201
    for bad in ["..", ".", "a/b", " lead", "   "]:  # the CLI's rule: surrounding spaces are refused, not trimmed
        r = client.post("/api/concepts", json={"name": bad})
        assert r.status_code == 422 and ("only dots" in r.text or "'/'" in r.text or "non-empty" in r.text), (bad, r.text)
    assert "lead" not in {c.name for c in ws.catalog.concepts()}
    r = client.post("/api/concepts", json={"name": "dup-ex", "exemplars": [batch["items"][0]["id"]] * 2})
    assert r.status_code == 201 and r.json()["exemplars"] == [batch["items"][0]["id"]]


def test_two_annotators_keep_both_answers_and_conflicts_show(ws, client):
    batch = _first_round(client)
    a, b = batch["items"][0]["id"], batch["items"][1]["id"]
    client.post("/api/concepts/red/labels", json=_sub("ann-sub-001", "alice", 1, [(a, 1), (b, 0)]))
    client.post("/api/concepts/red/labels", json=_sub("bob-sub-001", "bob", 1, [(a, 0), (b, 0)]))
    hist = client.get("/api/concepts/red/labels", params={"item_id": a}).json()["labels"]
    assert [(h["annotator"], h["value"]) for h in hist] == [("alice", 1), ("bob", 0)]
    conf = client.get("/api/concepts/red/conflicts").json()
    assert conf["count"] == 1 and conf["conflicts"][0]["item_id"] == a
    assert {(x["annotator"], x["value"]) for x in conf["conflicts"][0]["answers"]} == {("alice", 1), ("bob", 0)}
    items = {it["id"]: it for it in client.get("/api/concepts/red/rounds/latest").json()["items"]}
    assert items[a]["conflict"] and not items[b]["conflict"]
    # alice changes her mind: her latest answer counts, the conflict goes, the history keeps all three rows
    client.post("/api/concepts/red/labels", json=_sub("ann-sub-002", "alice", 1, [(a, 0)]))
    assert client.get("/api/concepts/red/conflicts").json()["count"] == 0
    assert len(client.get("/api/concepts/red/labels", params={"item_id": a}).json()["labels"]) == 3


def test_progress_reports_labels_positives_and_prelabel_quality(ws, client):
    t = truth(ws)
    batch = _first_round(client)
    for rnd in (1, 2):
        ids = [it["id"] for it in batch["items"]]
        client.post("/api/concepts/red/labels", json=_sub(f"prog-sub-{rnd}", "ann", rnd, [(i, t[i]) for i in ids]))
        assert client.get("/api/concepts/red/proposer", params={"wait": 20}).json()["state"] == "done"
        batch = client.get("/api/concepts/red/rounds/latest").json()
    p = client.get("/api/concepts/red/progress").json()
    assert p["labels_spent"] == 16 and p["labelled_items"] == 16
    labelled = [h["item_id"] for h in client.get("/api/concepts/red/labels").json()["labels"]]
    assert p["positives_found"] == sum(t[i] for i in labelled)
    assert [c["labels_spent"] for c in p["curve"]] == [0, 8, 16, 16]
    assert p["curve"][-1]["positives_found"] == p["positives_found"]
    r2 = p["rounds"][1]
    assert r2["answered"] == 8 and r2["positives"] == sum(t[i] for i in labelled[8:])
    if r2["prelabel_quality"] is not None:
        assert 0 <= r2["prelabel_quality"]["accuracy"] <= 1 and p["quality_estimate"] == r2["prelabel_quality"]


def test_thumbnails_are_made_once_and_cached_by_id_hash_and_size(ws, client):
    item = ws.catalog.get(int(ws.catalog.ids()[0]))
    r = client.get(f"/api/items/{item.id}/thumb", params={"size": 96})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    cached = list((ws.cache_dir / "thumbs").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].name == f"{item.id}-{item.sha256[:16]}-96.jpg"
    mtime = cached[0].stat().st_mtime_ns
    assert client.get(f"/api/items/{item.id}/thumb", params={"size": 96}).content == r.content
    assert cached[0].stat().st_mtime_ns == mtime
    # the file changes and is re-ingested: the next request shows the new bytes, under a new URL
    from PIL import Image as _Image
    _Image.new("RGB", (40, 30), (0, 0, 255)).save(item.uri)
    ingest(ws.catalog, [Path(item.uri).parent])
    fresh = ws.catalog.get(item.id)
    assert fresh.sha256 != item.sha256
    r2 = client.get(f"/api/items/{item.id}/thumb", params={"size": 96})
    assert r2.status_code == 200 and r2.content != r.content
    assert client.get(f"/api/items/{item.id}").json()["thumb"].endswith(f"?v={fresh.sha256[:12]}")
    from io import BytesIO

    assert Image.open(BytesIO(r.content)).size == (32, 24)  # never upscaled; larger images shrink to <= size
    assert client.get(f"/api/items/{item.id}/thumb", params={"size": 97}).status_code == 400
    assert client.get("/api/items/999999/thumb").status_code == 404
    assert client.get("/api/items/..%2F..%2Fetc%2Fpasswd/thumb").status_code in (404, 422)  # ids only, never paths
    assert client.get("/api/items/abc/thumb").status_code == 422
    info = client.get(f"/api/items/{item.id}").json()
    assert info["name"] == item.uri.rsplit("/", 1)[-1] and "uri" not in info


def test_search_by_text_and_more_like_this(ws, client):
    ids = ws.catalog.ids()
    hits = client.get("/api/search", params={"item": int(ids[0]), "k": 5}).json()["hits"]
    assert len(hits) == 5 and int(ids[0]) not in [h["id"] for h in hits]
    t = truth(ws)
    assert sum(t[h["id"]] for h in hits) >= 4  # a red image's neighbours are red
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(4))
    th = client.get("/api/search", params={"text": "red", "k": 3}).json()["hits"]
    assert len(th) == 3 and all(h["thumb"] for h in th)
    assert client.get("/api/search").status_code == 400
    assert client.get("/api/search", params={"text": "a", "item": 1}).status_code == 400
    assert client.get("/api/search", params={"item": 999999}).status_code == 404
    assert client.get("/api/search", params={"text": "red", "k": 0}).status_code == 422
    # several items: one query by all of them (their mean vector), each left out
    two = [int(ids[0]), int(ids[1])]
    r = client.get("/api/search", params={"item": two, "k": 5}).json()
    assert r["query"]["item"] == two and len(r["hits"]) == 5 and set(two).isdisjoint(h["id"] for h in r["hits"])
    from assay.search import Searcher

    assert [h["id"] for h in r["hits"]] == [h.id for h in Searcher(ws).search(item=two, k=5)]
    for bad in ([0], [1, -2], [2**63], list(range(1, 102))):  # out of range, or more than 100: as before, 422
        assert client.get("/api/search", params={"item": bad}).status_code == 422


def test_exemplars_are_recorded_as_positive_labels(ws, client):
    red = [i for i, v in truth(ws).items() if v][:2]
    r = client.post("/api/concepts", json={"name": "red2", "exemplars": red})
    assert r.status_code == 201 and r.json()["exemplars"] == red
    hist = client.get("/api/concepts/red2/labels").json()["labels"]
    assert [(h["item_id"], h["value"], h["annotator"]) for h in hist] == [(i, 1, "exemplar") for i in red]
    assert client.post("/api/concepts", json={"name": "red2"}).status_code == 400  # exists already
    r = client.post("/api/concepts", json={"name": "red3", "exemplars": [999999]})
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    assert [c["name"] for c in client.get("/api/concepts").json()["concepts"]] == ["red2"]


def test_proposer_errors_and_busy_state_are_reported(ws, client):
    client.post("/api/concepts", json={"name": "red"})
    r = client.post("/api/concepts/red/rounds", json={"strategy": "no-such-strategy"})
    assert r.status_code == 400 and "unknown strategy" in r.json()["detail"]
    assert client.post("/api/concepts/red/rounds", json={"batch": 0}).status_code == 422
    assert client.post("/api/concepts/nope/rounds").status_code == 404
    assert client.get("/api/concepts/red/proposer").json()["state"] == "idle"
    assert client.get("/api/concepts/red/rounds/latest").status_code == 404
    assert client.get("/api/concepts/red/rounds/3").status_code == 404


# ---------------------------------------------------------------------------------------------- bad input
def _writes_nothing(ws, before_labels, before_subs):
    with ws.catalog.engine.connect() as conn:
        subs = conn.execute(sa.select(sa.func.count()).select_from(submissions_table)).scalar()
    return label_rows(ws) == before_labels and subs == before_subs


def test_bad_submissions_get_4xx_with_a_clear_message_and_write_nothing(ws, client):
    batch = _first_round(client)
    ids = [it["id"] for it in batch["items"]]
    outside = next(int(i) for i in ws.catalog.ids() if int(i) not in ids)
    client.post("/api/concepts/red/labels", json=_sub("good-sub-01", "ann", 1, [(ids[0], 1)]))
    n0 = label_rows(ws)
    cases = [
        (_sub("bad-sub-001", "ann", 1, [(outside, 1)]), 400, "not in the batch of round 1"),
        (_sub("bad-sub-002", "ann", 1, [(999999, 1)]), 400, "not in the catalog"),
        (_sub("bad-sub-003", "ann", 1, [(ids[1], 1), (ids[1], 0)]), 400, "repeated"),
        (_sub("bad-sub-004", "ann", 1, [(ids[1], 1)], skipped=[ids[1]]), 400, "repeated"),
        (_sub("bad-sub-005", "ann", 1, []), 400, "at least one"),
        (_sub("bad-sub-006", "ann", 7, [(ids[1], 1)]), 404, "no round 7"),
        (_sub("bad-sub-007", "ann", 1, [(ids[1], 2)]), 422, "value"),
        (_sub("short", "ann", 1, [(ids[1], 1)]), 422, "submission_id"),
        (_sub("bad-sub-008", "", 1, [(ids[1], 1)]), 422, "annotator"),
        (_sub("bad-sub-009", "a\x07b", 1, [(ids[1], 1)]), 422, "annotator"),
        ({**_sub("bad-sub-010", "ann", 1, [(ids[1], 1)]), "extra": 1}, 422, "extra"),
        ({"submission_id": "bad-sub-011", "annotator": "ann", "round": 1, "labels": [{"item_id": "x", "value": 1}]}, 422, "item_id"),
        (_sub("bad-sub-012", "ann", 1, [(i + 1_000_000, 1) for i in range(1001)]), 422, "1000"),
    ]
    for body, status, words in cases:
        r = client.post("/api/concepts/red/labels", json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.text, r.text
        assert _writes_nothing(ws, n0, 1), body
    for raw in (b"{not json", b"[]", b"null", b""):
        r = client.post("/api/concepts/red/labels", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, raw
    r = client.post("/api/concepts/nope/labels", json=_sub("bad-sub-013", "ann", 1, [(ids[1], 1)]))
    assert r.status_code == 404 and "no concept named 'nope'" in r.json()["detail"]
    assert _writes_nothing(ws, n0, 1)


def test_stale_round_is_refused(ws, client):
    t = truth(ws)
    b1 = _first_round(client)
    for rnd in (1, 2):  # two more rounds: round 1 falls out of the open window (latest two rounds)
        batch = client.get("/api/concepts/red/rounds/latest").json()
        ids = [it["id"] for it in batch["items"]]
        client.post("/api/concepts/red/labels", json=_sub(f"stale-ok-{rnd}", "ann", batch["round"], [(i, t[i]) for i in ids]))
        assert client.get("/api/concepts/red/proposer", params={"wait": 20}).json()["state"] == "done"
    assert client.get("/api/concepts/red/rounds/latest").json()["round"] == 3
    n0 = label_rows(ws)
    r = client.post("/api/concepts/red/labels", json=_sub("stale-sub-1", "bob", 1, [(b1["items"][0]["id"], 1)]))
    assert r.status_code == 409 and "round 1 is stale" in r.json()["detail"]
    assert label_rows(ws) == n0
    assert client.get("/api/concepts/red/rounds/1").json()["open"] is False


def test_a_retry_of_a_saved_submission_is_replayed_even_once_its_round_is_stale(ws, client):
    t = truth(ws)
    b1 = _first_round(client)
    first = _sub("retry-after-stale-1", "carol", 1, [(b1["items"][0]["id"], 1)])
    r = client.post("/api/concepts/red/labels", json=first)
    assert r.status_code == 200 and r.json()["written"] == 1
    for rnd in (1, 2):
        batch = client.get("/api/concepts/red/rounds/latest").json()
        ids = [it["id"] for it in batch["items"]]
        client.post("/api/concepts/red/labels", json=_sub(f"fill-{rnd}-xyz", "ann", batch["round"], [(i, t[i]) for i in ids]))
        assert client.get("/api/concepts/red/proposer", params={"wait": 20}).json()["state"] == "done"
    assert client.get("/api/concepts/red/rounds/latest").json()["round"] == 3
    n0 = label_rows(ws)
    r = client.post("/api/concepts/red/labels", json=first)  # the same request again: saved, so replayed
    assert r.status_code == 200 and r.json()["replayed"] is True and r.json()["written"] == 0
    changed = _sub("retry-after-stale-1", "carol", 1, [(b1["items"][0]["id"], 0)])
    assert client.post("/api/concepts/red/labels", json=changed).status_code == 409
    assert label_rows(ws) == n0


def test_nan_and_infinity_in_bodies_are_422_not_500(ws, client):
    _first_round(client)
    for raw in ('{"submission_id":"abcdefgh1","annotator":"a","round":NaN,"labels":[]}',
                '{"submission_id":"abcdefgh1","annotator":"a","round":1,"labels":[{"item_id":1e400,"value":1}]}',
                '{"submission_id":"abcdefgh1","annotator":"a","round":1,"labels":[{"item_id":1,"value":Infinity}]}'):
        r = client.post("/api/concepts/red/labels", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (raw, r.status_code, r.text)
        assert r.json()["detail"]
    r = client.post("/api/concepts", content='{"name":"x","exemplars":[Infinity]}', headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_thumbnail_errors_name_the_file_never_its_path(ws, client):
    from pathlib import Path

    item = ws.catalog.get(int(ws.catalog.ids()[0]))
    Path(item.uri).unlink()
    r = client.get(f"/api/items/{item.id}/thumb")
    assert r.status_code == 404 and Path(item.uri).name in r.json()["detail"]
    assert str(Path(item.uri).parent) not in r.json()["detail"]


def test_oversized_bodies_are_refused_before_parsing(ws):
    app = create_app(ws, ServerConfig(max_body_bytes=2000))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post("/api/concepts", content=b'{"name": "' + b"x" * 5000 + b'"}', headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over the limit of 2000 bytes" in r.json()["detail"]

        def chunks():
            for _ in range(10):
                yield b" " * 500

        r = c.post("/api/concepts", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get("/api/concepts").json()["concepts"] == []


def test_token_guards_every_route_pages_and_thumbnails_included(ws):
    app = create_app(ws, ServerConfig(token=TOKEN))
    item = int(ws.catalog.ids()[0])
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for path in ("/", "/static/app.js", "/api/concepts", f"/api/items/{item}/thumb", "/openapi.json", "/docs"):
            r = c.get(path)
            assert r.status_code == 401 and "missing token" in r.json()["detail"], path
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert c.get(path, headers={"Authorization": "Bearer wrong-token-000"}).status_code == 401
        r = c.post("/api/concepts", json={"name": "x"}, headers={"Authorization": "Bearer nope-nope-nope"})
        assert r.status_code == 401 and "wrong token" in r.json()["detail"]
        assert ws.catalog.concepts() == []
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/concepts", headers=auth).status_code == 200
        assert c.get(f"/api/items/{item}/thumb", headers=auth).status_code == 200
        # the page takes the token once in ?token=, answers with a cookie and a redirect that drops it
        assert c.get("/?token=wrong-token-000", follow_redirects=False).status_code == 401
        r = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert re.search(r"assay_token_\d+=", cookie) and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert c.get("/").status_code == 200  # the client kept the cookie
        assert c.get(f"/api/items/{item}/thumb").status_code == 200


def test_security_headers_and_config_validation(ws, client):
    r = client.get("/")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    with pytest.raises(ValueError, match="at least 8"):
        ServerConfig(token="short")
    with pytest.raises(ValueError, match="batch"):
        ServerConfig(batch=0)


def test_background_proposer_reports_failures(ws, client):
    """Every item labelled or pending: the background job ends in a clear error, not a silent thread death."""
    client.post("/api/concepts", json={"name": "all"})
    t = truth(ws)
    cid = ws.catalog.concept("all").id
    ids = ws.catalog.ids()
    ws.catalog.add_labels(cid, ids, [t[int(i)] for i in ids], source="import")
    assert client.post("/api/concepts/all/rounds", json={"batch": 4}).status_code == 202
    deadline = time.monotonic() + 20
    st = client.get("/api/concepts/all/proposer", params={"wait": 20}).json()
    while st["state"] == "running" and time.monotonic() < deadline:
        st = client.get("/api/concepts/all/proposer", params={"wait": 1}).json()
    assert st["state"] == "error" and "every item of the corpus is labelled" in st["error"]


def test_serve_command_binds_loopback_and_reads_the_token_from_the_environment(ws, monkeypatch):
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from assay.cli import serve_cmd

    seen = {}

    def fake_run(app, host, port, **kw):
        seen.update(host=host, port=port)
        with TestClient(app, base_url="http://127.0.0.1") as c:
            seen["anon"] = c.get("/api/concepts").status_code
            seen["auth"] = c.get("/api/concepts", headers={"Authorization": f"Bearer {TOKEN}"}).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("ASSAY_TOKEN", TOKEN)
    cli = typer.Typer()
    serve_cmd.register(cli)
    cli.callback()(lambda: None)
    r = CliRunner().invoke(cli, ["serve", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert seen == {"host": "127.0.0.1", "port": 8600, "anon": 401, "auth": 200}
    monkeypatch.delenv("ASSAY_TOKEN")
    r = CliRunner().invoke(cli, ["serve", "-w", str(ws.root), "--host", "0.0.0.0", "--port", "8601"])
    assert r.exit_code == 0 and "without a token" in r.output and seen["anon"] == 200
    r = CliRunner().invoke(cli, ["serve", "-w", str(ws.root), "--token", "short"])
    assert r.exit_code == 2 and "at least 8 characters" in r.output
    import socket

    with socket.socket() as busy:  # a port another program listens on: one clear line, before anything loads
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        seen.clear()
        r = CliRunner().invoke(cli, ["serve", "-w", str(ws.root), "--port", str(port)])
        assert r.exit_code == 2 and f"port {port} on 127.0.0.1 is in use" in r.output and "--port" in r.output
        assert seen == {} and "labelling app" not in r.output
    r = CliRunner().invoke(cli, ["serve", "-w", str(ws.root), "--host", "no-such-host.invalid"])
    assert r.exit_code == 2 and "--host" in r.output
    empty = ws.vectors("minilm")  # a store with no embedding in it serves nothing
    empty.create(encoder="minilm", version="v", dim=4)
    r = CliRunner().invoke(cli, ["serve", "-w", str(ws.root), "--encoder", "minilm"])
    assert r.exit_code == 2 and "has no embeddings by it" in r.output and seen == {}


def test_annotator_names_follow_the_cli_rule(ws, client):
    rnd = _first_round(client)
    items = [it["id"] for it in rnd["items"]]
    long_name = "Ann " + "é" * 150  # 154 characters: more than 100, within the 200 allowed
    for k, name in enumerate(["<b>Zoë</b>", long_name]):
        r = client.post("/api/concepts/red/labels", json=_sub(f"name-ok-{k}", name, 1, [(items[k], 1)]))
        assert r.status_code == 200, r.text
    for k, (name, words) in enumerate([("a\tb", "control characters"), ("x" * 201, "200"), ("  ", "only spaces"),
                                       ("\u200b", "visible character"), ("ana\u202egnp.exe", "bidirectional")]):
        r = client.post("/api/concepts/red/labels", json=_sub(f"name-bad-{k}", name, 1, [(items[3], 1)]))
        assert r.status_code == 422 and words in r.text, (name, r.text)
    r = client.post("/api/concepts/red/labels", json=_sub("name-trim-1", "  Bo  ", 1, [(items[2], 1)]))
    assert r.status_code == 200, r.text  # surrounding spaces are not part of the name
    long_name_set = {"<b>Zoë</b>", long_name, "Bo"}
    assert "control characters" in client.post(
        "/api/concepts/red/labels", json=_sub("name-bad-9", "a\nb", 1, [(items[3], 1)])).text
    hist = ws.catalog.label_history(ws.catalog.concept("red").id)
    assert {h["annotator"] for h in hist} == long_name_set
    from assay.errors import InputError
    with pytest.raises(InputError, match="control characters"):
        ws.catalog.add_labels(ws.catalog.concept("red").id, [items[4]], [1], source="human", annotator="a\tb")


def test_region_requests_on_a_workspace_or_round_without_regions_are_400(ws, client):
    batch = _first_round(client)
    r = client.post("/api/concepts/red/rounds", json={"regions": True})
    assert r.status_code == 400 and "needs region vectors" in r.text, r.text
    item = batch["items"][0]["id"]
    body = _sub("region-none-1", "ana", 1, [])
    body["labels"] = [{"item_id": item, "value": 1, "region_slot": 0}]
    r = client.post("/api/concepts/red/labels", json=body)
    assert r.status_code == 400 and "showed no regions" in r.text, r.text


def test_without_a_token_only_loopback_hosts_are_answered(ws):
    app = create_app(ws, ServerConfig())
    for base in ("http://127.0.0.1", "http://localhost:8123", "http://[::1]:8000"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/api/concepts").status_code == 200, base
    for evil in ("http://127.attacker.example", "http://127.0.0.1.nip.io:8000", "http://localhost.evil.example"):
        with TestClient(app, base_url=evil) as c:  # names an attacker's DNS can point at 127.0.0.1
            assert c.post("/api/concepts", json={"name": "evil"}).status_code == 421, evil
    with TestClient(app, base_url="http://127.0.0.2:8000") as c:  # a loopback address literal
        assert c.get("/api/concepts").status_code == 200
    with TestClient(app, base_url="http://attacker.example") as c:  # DNS rebinding: refused, nothing written
        assert c.get("/api/concepts").status_code == 421
        r = c.post("/api/concepts", json={"name": "evil"})
        assert r.status_code == 421 and "--token" in r.json()["detail"]
    assert ws.catalog.concepts() == []
    with TestClient(create_app(ws, ServerConfig(check_host=False)), base_url="http://box.lan:8000") as c:
        assert c.get("/api/concepts").status_code == 200  # `assay serve --host 0.0.0.0` serves other names
    with TestClient(create_app(ws, ServerConfig(token=TOKEN)), base_url="http://box.lan") as c:
        assert c.get("/api/concepts", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_token_cookie_is_per_port_and_other_cookies_do_not_break_it(ws):
    app = create_app(ws, ServerConfig(token=TOKEN))
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        r = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert "assay_token_8123=" in r.headers["set-cookie"]
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        # another local app's raw JSON cookie and another assay server's cookie sit beside ours
        raw = f'prefs={{"theme":"dark"}}; assay_token_9000=other-server-token; assay_token_8123={TOKEN}'
        assert c.get("/api/concepts", headers={"Cookie": raw}).status_code == 200
        r = c.get("/api/concepts", headers={"Cookie": "assay_token_9000=" + TOKEN})
        assert r.status_code == 401 and "missing token" in r.json()["detail"]  # another port's cookie is not ours
        r = c.get("/api/concepts", headers={"Cookie": "assay_token_8123=wrong-token-000"})
        assert r.status_code == 401 and "wrong token" in r.json()["detail"]
