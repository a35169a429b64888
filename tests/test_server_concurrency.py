"""Many annotators at once against a real uvicorn server: every submission sent twice at the same time (a
client retry racing its original), then the rows are counted: none lost, none duplicated."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the web stack is an optional extra: pip install 'assay[server]'")
httpx = pytest.importorskip("httpx")

from test_server_api import TOKEN, make_workspace

from assay.loop import Miner
from assay.server.app import ServerConfig, ServerThread, create_app

N_ANNOTATORS = 8
PER_SUBMISSION = 10


@pytest.fixture
def ws(tmp_path):
    w = make_workspace(tmp_path, n_red=10, n_other=50)
    w.catalog.add_concept("red", text="red")
    Miner(w, "red").propose(strategy="seals:entropy", batch=40, seed=3)
    yield w
    w.close()


def test_parallel_submissions_lose_and_duplicate_nothing(ws):
    concept = ws.catalog.concept("red")
    rnd = ws.catalog.rounds(concept.id)[-1]
    items = [int(p["item_id"]) for p in ws.catalog.proposals(rnd.id)]
    assert len(items) == 40
    jobs = []
    for a in range(N_ANNOTATORS):
        for s in range(0, len(items), PER_SUBMISSION):
            chunk = items[s : s + PER_SUBMISSION]
            body = {"submission_id": f"ann{a}-part{s:03d}", "annotator": f"ann{a}", "round": rnd.number,
                    "labels": [{"item_id": i, "value": (i + a) % 2} for i in chunk]}
            jobs += [body, body]  # the original and its retry, racing
    app = create_app(ws, ServerConfig(token=TOKEN, batch=40))
    with ServerThread(app) as url:
        def post(body):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
                r = c.post("/api/concepts/red/labels", json=body)
                return r.status_code, r.json()

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(post, jobs))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            c.get("/api/concepts/red/proposer", params={"wait": 30})  # let the background round finish
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    written = Counter(b["submission_id"] for b, (_, res) in zip(jobs, results) if res["written"])
    replayed = Counter(b["submission_id"] for b, (_, res) in zip(jobs, results) if res["replayed"])
    n_subs = N_ANNOTATORS * len(items) // PER_SUBMISSION
    assert len(written) == n_subs and set(written.values()) == {1}  # each submission written exactly once
    assert len(replayed) == n_subs and set(replayed.values()) == {1}  # and its twin answered as a replay
    hist = ws.catalog.label_history(concept.id)
    assert len(hist) == N_ANNOTATORS * len(items)
    pairs = Counter((h["annotator"], h["item_id"]) for h in hist)
    assert set(pairs.values()) == {1} and len(pairs) == N_ANNOTATORS * len(items)
    assert all(h["value"] == (h["item_id"] + int(h["annotator"][3:])) % 2 for h in hist)
    assert {h["round_id"] for h in hist} == {rnd.id}
    # the batch was complete after the first full submission set: exactly one next round, not one per request
    assert len(ws.catalog.rounds(concept.id)) == 2
