"""End to end in a real headless browser (Debian's chromium driven by Playwright): sign in with ?token=,
label a batch with the keyboard (yes/no/skip/undo/arrows/Enter), then check the rows in the catalog and
that the next batch was proposed and shown."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi", reason="the web stack is an optional extra: pip install 'assay[server]'")
CHROMIUM = os.environ.get("ASSAY_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium, or set ASSAY_CHROMIUM)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; never `playwright install`)")

from playwright.sync_api import sync_playwright
from test_server_api import TOKEN, make_workspace

from assay.loop import Miner
from assay.server.app import ServerConfig, ServerThread, create_app

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture
def ws(tmp_path):
    w = make_workspace(tmp_path)
    w.catalog.add_concept("red", text="red")
    Miner(w, "red").propose(strategy="seals:entropy", batch=6, seed=1)
    yield w
    w.close()


def test_label_a_batch_with_the_keyboard(ws):
    app = create_app(ws, ServerConfig(token=TOKEN, batch=6))
    concept = ws.catalog.concept("red")
    batch_ids = [int(p["item_id"]) for p in ws.catalog.proposals(ws.catalog.rounds(concept.id)[-1].id)]
    with ServerThread(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(15000)
            assert page.goto(url + "/").status == 401  # no token, no page
            page.goto(f"{url}/?token={TOKEN}")
            assert page.url == url + "/"  # the token left the address bar for an HttpOnly cookie
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 6")
            # thumbnails load through the cookie
            page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
            assert [int(x) for x in page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.id)")] == batch_ids
            page.fill("#annotator", "browser")
            page.click("h1")  # leave the text field, so keys go to the grid
            for key in ["y", "n", "s", "u", "y", "n", "ArrowLeft", "y", "s", "y"]:
                page.keyboard.press(key)
            marks = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.answer)")
            assert marks == ["yes", "no", "yes", "yes", "skip", "yes"]
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-submitted='1']")
            # the whole batch is answered: the next one is proposed in the background and shown
            page.wait_for_function("() => document.querySelector('#round-info').textContent.startsWith('round 2')", timeout=30000)
            new_ids = [int(x) for x in page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.id)")]
            assert len(new_ids) == 6 and not set(new_ids) & set(batch_ids)
            assert "saved 5 answers for round 1" in page.inner_text("#status")
            # the progress view draws its curves
            page.click("button[data-view='progress']")
            page.wait_for_selector("#charts svg polyline")
            assert "5" in page.inner_text("#stats")
        finally:
            browser.close()
    hist = ws.catalog.label_history(concept.id)
    expected = {batch_ids[0]: 1, batch_ids[1]: 0, batch_ids[2]: 1, batch_ids[3]: 1, batch_ids[5]: 1}
    assert {h["item_id"]: h["value"] for h in hist} == expected and len(hist) == 5
    assert {h["annotator"] for h in hist} == {"browser"} and {h["source"] for h in hist} == {"human"}
    assert {h["round_id"] for h in hist} == {ws.catalog.rounds(concept.id)[0].id}
    assert len(ws.catalog.rounds(concept.id)) == 2


def _open(pw, url, annotator="browser"):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15000)
    page.goto(f"{url}/?token={TOKEN}")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 6")
    page.fill("#annotator", annotator)
    page.click("h1")
    return browser, page


def test_answers_given_while_a_submit_is_on_its_way_are_sent_once_each(ws):
    import time as _time

    app = create_app(ws, ServerConfig(token=TOKEN, batch=6, auto_propose=False))
    concept = ws.catalog.concept("red")
    batch_ids = [int(p["item_id"]) for p in ws.catalog.proposals(ws.catalog.rounds(concept.id)[-1].id)]
    with ServerThread(app) as url, sync_playwright() as pw:
        browser, page = _open(pw, url, annotator="José Núñez")  # any script is a name

        def slow(route):
            _time.sleep(1.5)
            route.continue_()

        page.route("**/labels", slow)
        page.keyboard.press("y")
        page.keyboard.press("Enter")  # on its way for 1.5 s ...
        page.keyboard.press("n")      # ... while two more answers are given
        page.keyboard.press("y")
        page.keyboard.press("Enter")  # ignored while in flight: the answers go right after
        page.wait_for_selector("body[data-submitted='2']")
        page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('saved')")
        page.unroute("**/labels")
        # counts include what the server holds, after the reload
        page.wait_for_function("() => document.querySelector('#counts').textContent.includes('3 to go')")
        assert "2 yes · 1 no" in page.inner_text("#counts")
        # Enter on a focused button is the button's own action, not a submit
        page.focus("button[data-view='progress']")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view-progress:not([hidden])")
        browser.close()
    hist = ws.catalog.label_history(concept.id)
    assert sorted((h["item_id"], h["value"]) for h in hist) == sorted([(batch_ids[0], 1), (batch_ids[1], 0), (batch_ids[2], 1)])
    assert {h["annotator"] for h in hist} == {"José Núñez"}


def test_a_stale_round_keeps_the_answers_for_items_still_in_a_batch(ws):
    app = create_app(ws, ServerConfig(token=TOKEN, batch=6, auto_propose=False, open_rounds=1))
    concept = ws.catalog.concept("red")
    with ServerThread(app) as url, sync_playwright() as pw:
        browser, page = _open(pw, url)
        page.keyboard.press("y")
        page.keyboard.press("n")
        # another annotator's page (here: the API) proposes the next round before these are sent
        Miner(ws, "red").propose(strategy="random", batch=6, seed=7)
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('closed')")
        assert page.inner_text("#round-info").startswith("round 2")
        msg = page.inner_text("#status")
        assert "round 1 closed before these answers were sent" in msg
        browser.close()
    assert ws.catalog.label_history(concept.id) == []  # nothing was written for the stale round


def test_mouse_labelling_and_unsent_answers_survive_other_views(ws):
    ws.catalog.add_concept("blue", text="blue")
    app = create_app(ws, ServerConfig(token=TOKEN, batch=6, auto_propose=False))
    concept = ws.catalog.concept("red")
    batch_ids = [int(p["item_id"]) for p in ws.catalog.proposals(ws.catalog.rounds(concept.id)[-1].id)]
    with ServerThread(app) as url, sync_playwright() as pw:
        browser, page = _open(pw, url)
        try:
            # buttons on the cards label without a keyboard
            page.click("#card-0 .mark-yes")
            page.click("#card-2 .mark-no")
            page.click("#card-1 .mark-skip")
            marks = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.answer)")
            assert marks[:3] == ["yes", "skip", "no"]
            page.click("#undo")
            assert page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.answer)")[:3] == ["yes", "", "no"]
            # another view and back: the unsent answers are still there
            page.click("button[data-view='progress']")
            page.wait_for_selector("#view-progress:not([hidden])")
            page.click("button[data-view='label']")
            page.wait_for_function("() => document.querySelector('#counts').textContent.includes('2 not sent')")
            assert page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.answer)")[:3] == ["yes", "", "no"]
            # the cursor is on the first card without an answer, not back on an answered one
            assert page.eval_on_selector("#grid .card.current", "c => c.dataset.idx") == "1"
            # switching concept asks first; declining keeps the concept and the answers
            page.once("dialog", lambda d: d.dismiss())
            page.select_option("#concept", "blue")
            page.wait_for_function("() => document.querySelector('#concept').value === 'red'")
            assert "2 not sent" in page.inner_text("#counts")
            page.click("#submit")
            page.wait_for_selector("body[data-submitted='1']")
        finally:
            browser.close()
    hist = ws.catalog.label_history(concept.id)
    assert sorted((h["item_id"], h["value"]) for h in hist) == sorted([(batch_ids[0], 1), (batch_ids[2], 0)])
