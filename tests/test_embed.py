"""The embedding pipeline's mechanics, with a small deterministic encoder (tests/fake_encoder.py).

The real encoders are tested in test_encoders.py and, end to end, in test_integration_real.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fake_encoder  # noqa: F401  registers "test-mean-color"
from assay import Workspace, embed, ingest
from assay.errors import InputError, WorkspaceError

from conftest import write_images

HERE = Path(__file__).parent


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    yield w
    w.close()


def test_embeds_every_ok_item_once_and_marks_decode_failures(ws, tmp_path):
    paths = write_images(tmp_path / "imgs", 10, fmt="JPEG")
    good = paths[0].read_bytes()
    (tmp_path / "imgs" / "trunc.jpeg").write_bytes(good[: int(len(good) * 0.7)])
    ingest(ws.catalog, [tmp_path / "imgs"])
    rep = embed(ws, batch_size=4, shard_size=5)
    assert rep.pending == 11 and rep.embedded == 10 and rep.errors == 1
    assert "truncated" in rep.error_samples[0][1]
    store = ws.vectors()
    ids, vecs = store.load()
    assert len(ids) == 10 and len(np.unique(ids)) == 10
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-2)
    assert store.load(extra="hist")[1].shape == (10, 3)
    st = ws.status()
    assert st["embeddings"] == {"test-mean-color": 10} and st["items"]["error"] == 1
    # A second run has nothing to do.
    rep2 = embed(ws)
    assert rep2.pending == 0 and rep2.embedded == 0
    # Newly ingested items are embedded incrementally.
    write_images(tmp_path / "more", 3, seed=5)
    ingest(ws.catalog, [tmp_path / "more"])
    assert embed(ws).embedded == 3
    assert len(ws.vectors()) == 13


def test_same_vectors_whatever_the_batching(ws, tmp_path):
    write_images(tmp_path / "imgs", 7)
    ingest(ws.catalog, [tmp_path / "imgs"])
    embed(ws, batch_size=3, shard_size=2)
    ids1, v1 = ws.vectors().load()
    embed(ws, reset=True, batch_size=7, shard_size=100)
    ids2, v2 = ws.vectors().load()
    o1, o2 = np.argsort(ids1), np.argsort(ids2)
    assert (ids1[o1] == ids2[o2]).all() and np.allclose(v1[o1], v2[o2], atol=1e-3)


def test_text_items_are_embedded_by_a_text_encoder(ws, tmp_path):
    (tmp_path / "t.csv").write_text("text\nhello there\ngeneral kenobi\n")
    ingest(ws.catalog, [tmp_path / "t.csv"])
    rep = embed(ws)
    assert rep.embedded == 2


def test_bad_arguments(ws):
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        embed(ws, batch_size=0)
    from assay.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="expected one of"):
        embed(ws, "no-such-encoder")


def test_concurrent_runs_are_refused(ws, tmp_path):
    write_images(tmp_path / "imgs", 2)
    ingest(ws.catalog, [tmp_path / "imgs"])
    store = ws.vectors()
    store.lock()
    try:
        with pytest.raises(WorkspaceError, match="another process"):
            embed(ws)
    finally:
        store.unlock()


_RUNNER = """
import sys, time
sys.path.insert(0, {tests!r})
import numpy as np
import fake_encoder
from assay import Workspace, embed
from assay.encoders.base import EncoderOutput

class Slow(fake_encoder.MeanColorEncoder):
    def embed_batch(self, batch):
        time.sleep(0.05)
        return super().embed_batch(batch)

ws = Workspace.open({ws!r})
embed(ws, Slow(), batch_size=4, shard_size=8)
print("finished", flush=True)
"""


def test_kill_9_then_resume_embeds_everything_exactly_once(ws, tmp_path):
    n = 120
    write_images(tmp_path / "imgs", n, size=(16, 16))
    ingest(ws.catalog, [tmp_path / "imgs"])
    script = _RUNNER.format(tests=str(HERE), ws=str(ws.root))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = ws.vectors()
    deadline = time.time() + 60
    while time.time() < deadline and (not store.exists() or len(store) < 24):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(store)
    assert 0 < partial < n, f"expected a partial run, found {partial} rows"
    # The rerun finishes the job: every item exactly once, nothing lost, nothing duplicated.
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "finished" in out.stdout, out.stderr
    ids = store.ids()
    assert len(ids) == n and len(np.unique(ids)) == n
    assert set(ids.tolist()) == set(ws.catalog.ids().tolist())
