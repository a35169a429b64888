from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import fake_encoder  # noqa: F401
from assay.cli.main import app

from conftest import write_images

runner = CliRunner()


def _run(*args, cwd=None):
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return runner.invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def test_init_ingest_embed_status_json(tmp_path):
    write_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    ws = str(tmp_path / "ws")
    r = _run("init", ws, "--encoder", "test-mean-color")
    assert r.exit_code == 0 and "created workspace" in r.output
    r = _run("-w", ws, "ingest", str(tmp_path / "imgs"), "--json")
    assert r.exit_code == 0
    rep = json.loads(r.stdout)
    assert rep["new"] == 6 and rep["errors"] == 1
    r = _run("embed", "-w", ws, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["embedded"] == 5
    r = _run("status", "--json", cwd=ws)  # the workspace in the current directory
    st = json.loads(r.stdout)
    assert st["items"] == {"total": 6, "ok": 5, "error": 1, "image": 6, "text": 0}
    assert st["exact_duplicates"] == 0 and st["embeddings"] == {"test-mean-color": 5}
    r = _run("status", "-w", ws)
    assert "not an image" in r.output and "test-mean-color: 5" in r.output


def test_errors_are_one_clear_line_and_exit_code(tmp_path):
    r = _run("status", "-w", str(tmp_path / "nowhere"))
    assert r.exit_code == 2 and "no assay workspace" in r.output
    ws = str(tmp_path / "ws")
    _run("init", ws)
    r = _run("-w", ws, "ingest", str(tmp_path / "missing"))
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "m.csv").write_text("path\nx.png\n")
    r = _run("-w", ws, "ingest", str(tmp_path / "m.csv"))
    assert r.exit_code == 2 and "expected a 'uri' column" in r.output
    r = _run("-w", ws, "embed", "--encoder", "nope")
    assert r.exit_code == 2 and "expected one of" in r.output
    r = _run("init", ws)
    assert r.exit_code == 2 and "already holds" in r.output
    r = _run("init", str(tmp_path / "ws" / "vectors"))  # a workspace's own folders are not a place for another
    assert r.exit_code == 2 and "lies inside the vectors/ folder" in r.output
    assert not (tmp_path / "ws" / "vectors" / "assay.json").exists()
    r = _run("init", "")
    assert r.exit_code == 2 and "got an empty value" in r.output
    cfg = tmp_path / "ws" / "assay.json"
    good = cfg.read_text()
    for bad, words in (('{"default_encoder": 5}', "'default_encoder' must be a non-empty string, got 5"),
                       ("[]", "expected a JSON object, got list")):
        cfg.write_text(bad)  # a hand edit gone wrong: one clear line, no traceback
        r = _run("-w", ws, "status")
        assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output, r.output
    cfg.write_text(good)
    r = _run("-w", ws, "embed", "--encoder", "precomputed")
    assert r.exit_code == 2 and "--from" in r.output


def test_console_script_runs(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "assay")
    if not os.path.exists(exe):
        pytest.skip("the assay console script is not installed in this environment")
    out = subprocess.run([exe, "init", str(tmp_path / "w")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([exe, "-w", str(tmp_path / "w"), "status", "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["items"]["total"] == 0
    (tmp_path / "empty").mkdir()  # a library warning reads as the CLI's own: "warning: ...", once
    out = subprocess.run([exe, "-w", str(tmp_path / "w"), "ingest", str(tmp_path / "empty")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "warning: source" in out.stderr and "holds no items" in out.stderr, out.stderr
    assert "WARNING" not in out.stderr and "none of the sources" not in out.stdout + out.stderr


def test_demo_pipeline_end_to_end_with_mining(tmp_path):
    """The demo's whole loop on the bundled digits (with the fast test encoder instead of efficientnet)."""
    from assay.datasets import write_digits
    from assay.demo import run_demo

    manifest = write_digits(tmp_path / "data")
    res = run_demo(tmp_path / "ws", manifest, encoder="test-mean-color", positive="digit-3", budget=150, batch=25,
                   report_dir=tmp_path / "report")
    assert res["ingest"]["new"] == 1797 and res["embed"]["embedded"] == 1797
    assert res["knn_label_agreement"] > res["chance_agreement"]
    strategies = res["mining"]["strategies"]
    assert set(strategies) == {"random", "most-likely-positive", "seals:most-likely-positive", "seals:entropy"}
    assert all(s["labels"] <= 150 for s in strategies.values())
    assert (tmp_path / "report" / "index.html").exists()


def test_demo_checks_what_it_mines_before_writing_anything(tmp_path):
    import numpy as np

    fake = tmp_path / "fake" / "cifar10"
    fake.mkdir(parents=True)
    np.savez(fake / "cifar10_jpeg_bytes.npz", jpeg=np.zeros(4, np.uint8), offsets=np.arange(3), label=np.zeros(2, np.int8),
             split=np.zeros(2, np.int8), name=np.array(["a.jpg", "b.jpg"]), classes=np.array(["cat", "truck"]))
    broken = tmp_path / "broken" / "cifar10"
    broken.mkdir(parents=True)
    np.savez(broken / "cifar10_jpeg_bytes.npz", x=np.zeros(3))
    for args, words in (
        (["--positive", "bogus"], "--positive 'bogus' is not a class of the dataset; expected one of: digit-0"),
        (["--budget", "50"], "--budget 50 is too few labels"),
        (["--data", str(tmp_path / "fake"), "--positive", "dog"], "expected one of: cat, truck"),
        (["--data", str(tmp_path / "broken")], "is not a CIFAR-10 npz as the shared data holds it: it lacks jpeg"),
    ):
        out = tmp_path / "demo"
        r = _run("demo", "--out", str(out), "--encoder", "test-mean-color", *args)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), (args, r.output)
        assert not out.exists()  # nothing written, embedded or indexed


def test_damaged_shard_and_index_are_reported_and_repaired(tmp_path):
    write_images(tmp_path / "imgs", 12)
    ws = str(tmp_path / "ws")
    assert _run("init", ws, "--encoder", "test-mean-color").exit_code == 0
    assert _run("-w", ws, "ingest", str(tmp_path / "imgs")).exit_code == 0
    assert _run("-w", ws, "embed", "--shard-size", "5", "--batch-size", "5").exit_code == 0
    assert _run("-w", ws, "index").exit_code == 0
    store = tmp_path / "ws" / "vectors" / "test-mean-color"
    (store / "shard-000002.json").write_text("garbage")
    data = (store / "shard-000001.npy").read_bytes()
    (store / "shard-000001.npy").write_bytes(data[:100])
    # status still answers, and says what is damaged and what to run
    st = json.loads(_run("-w", ws, "status", "--json").stdout)
    assert st["embeddings"]["test-mean-color"] == 7 and "--repair" in st["damaged"]["test-mean-color"]
    r = _run("-w", ws, "index")
    assert r.exit_code != 0 and "shard-000002.json" in r.output and "assay embed --repair" in r.output
    assert "Traceback" not in r.output
    r = _run("-w", ws, "embed", "--repair", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert sorted(d["shard"] for d in rep["repaired"]) == [1, 2]
    assert rep["embedded"] == 10 and rep["total_embedded"] == 12
    st = json.loads(_run("-w", ws, "status", "--json").stdout)
    assert st["embeddings"]["test-mean-color"] == 12 and "damaged" not in st
    r = _run("-w", ws, "embed", "--repair")
    assert r.exit_code == 0 and "reads back whole" in r.output
    # a damaged index file is rebuilt by `assay index`, and searching it first says how
    index_dir = tmp_path / "ws" / "index" / "test-mean-color" / "main"
    assert _run("-w", ws, "index").exit_code == 0
    for f in index_dir.glob("*.faiss"):
        f.write_bytes(f.read_bytes()[:50])
    r = _run("-w", ws, "search", "--item", "1")
    assert r.exit_code != 0 and "rebuild it with `assay index`" in r.output
    assert _run("-w", ws, "index").exit_code == 0
    assert _run("-w", ws, "search", "--item", "1").exit_code == 0


def test_search_shows_the_words_of_text_hits(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nmy card has not arrived,a\nhow do I top up,b\nwhere is my new card,a\n")
    ws = str(tmp_path / "ws")
    assert _run("init", ws, "--encoder", "test-mean-color").exit_code == 0
    assert _run("-w", ws, "ingest", str(tmp_path / "t.csv")).exit_code == 0
    assert _run("-w", ws, "embed").exit_code == 0
    assert _run("-w", ws, "index").exit_code == 0
    r = _run("-w", ws, "search", "--text", "card", "-k", "3")
    assert r.exit_code == 0 and "my card has not arrived" in r.output and "#row=" in r.output
    res = json.loads(_run("-w", ws, "search", "--text", "card", "-k", "3", "--json").stdout)["results"]
    assert sorted(h["text"] for h in res) == ["how do I top up", "my card has not arrived", "where is my new card"]
    (tmp_path / "q.jsonl").write_text('{"text": "top up"}\n')
    res = json.loads(_run("-w", ws, "search", "--batch", str(tmp_path / "q.jsonl"), "--json").stdout)
    assert all("text" in h for h in res["queries"][0]["results"])


def test_embed_and_index_before_ingest_name_the_step_that_is_missing(tmp_path):
    ws = str(tmp_path / "ws")
    _run("init", ws, "--encoder", "test-mean-color")
    r = _run("-w", ws, "embed")
    assert r.exit_code == 0 and "run `assay ingest SOURCE...` first" in r.output
    r = _run("-w", ws, "index")
    assert r.exit_code == 2 and "no items yet: run `assay ingest" in r.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    _run("-w", ws, "ingest", str(tmp_path / "bad"))
    r = _run("-w", ws, "index")
    assert r.exit_code == 2 and "could be read at ingest" in r.output and "status --errors" in r.output


def test_disk_errors_are_one_line_with_what_to_do(tmp_path, monkeypatch):
    import errno

    write_images(tmp_path / "imgs", 3)
    ws = str(tmp_path / "ws")
    _run("init", ws, "--encoder", "test-mean-color")
    _run("-w", ws, "ingest", str(tmp_path / "imgs"))
    import sys

    embed_mod = sys.modules["assay.embed"]  # (the package's `assay.embed` is the function)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ws" / "vectors" / "x.npy"))

    monkeypatch.setattr(embed_mod._ShardWriter, "commit", full)
    r = _run("-w", ws, "embed")
    assert r.exit_code == 1 and "No space left on device" in r.output and "free some space" in r.output
    assert "Traceback" not in r.output


def test_a_batch_file_that_cannot_be_written_says_how_to_write_it_again(tmp_path, monkeypatch):
    import sys

    write_images(tmp_path / "imgs", 6)
    ws = str(tmp_path / "ws")
    _run("init", ws, "--encoder", "test-mean-color")
    _run("-w", ws, "ingest", str(tmp_path / "imgs"))
    _run("-w", ws, "embed")
    _run("-w", ws, "index")
    _run("-w", ws, "concept", "add", "x", "--text", "red")
    mining = sys.modules["assay.cli.mining"]

    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mining, "_write_batch_csv", full)
    r = _run("-w", ws, "mine", "x", "--batch", "3", "--out", str(tmp_path / "b.csv"))
    assert r.exit_code == 1 and "round 1 of 'x' was recorded" in r.output
    assert "assay rounds x --round 1 --out" in r.output


def test_init_takes_its_folder_from_w_as_other_commands_do(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    r = _run("-w", a, "init", "--encoder", "test-mean-color")
    assert r.exit_code == 0 and (tmp_path / "a" / "assay.json").exists(), r.output
    r = _run("-w", b, "init", b)  # the same folder twice is fine
    assert r.exit_code == 0 and (tmp_path / "b" / "assay.json").exists(), r.output
    r = _run("-w", a, "init", str(tmp_path / "c"))
    assert r.exit_code == 2 and "two folders" in r.output and not (tmp_path / "c").exists()
    r = _run("init")
    assert r.exit_code == 2 and "assay -w DIR init" in r.output
