"""Embedding on a local Ray cluster (started here, shut down after): same vectors as the local path,
worker and driver faults resume with nothing lost and nothing repeated."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'assay[ray]')")

import fake_encoder
from conftest import write_images

from assay import Workspace, embed, ingest
from assay.distributed import embed_with_ray
from assay.errors import InputError

HERE = Path(__file__).parent


class DieOnceEncoder(fake_encoder.MeanColorEncoder):
    """Kills its worker process (os._exit) on the first batch it sees, once per marker file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def embed_batch(self, batch):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().embed_batch(batch)
        os.close(fd)
        os._exit(1)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}},
    )
    yield ray
    ray.shutdown()


def _ws(tmp_path: Path, n: int, name: str = "ws") -> Workspace:
    ws = Workspace.init(tmp_path / name, default_encoder="test-mean-color")
    write_images(tmp_path / f"{name}-imgs", n, size=(20, 16), fmt="JPEG")
    ingest(ws.catalog, [tmp_path / f"{name}-imgs"])
    return ws


def _sorted(store):
    ids, vecs = store.load(dtype=np.float16)
    o = np.argsort(ids)
    return ids[o], vecs[o]


def test_ray_and_local_give_identical_embeddings_and_bad_items_are_marked(ray_cluster, tmp_path):
    local = _ws(tmp_path, 23, "local")
    remote = _ws(tmp_path, 23, "remote")
    good = write_images(tmp_path / "big", 1, size=(64, 64), fmt="JPEG")[0].read_bytes()
    (tmp_path / "bad.jpeg").write_bytes(good[: int(len(good) * 0.7)])  # a header that probes, a body that does not decode
    for ws in (local, remote):
        ingest(ws.catalog, [tmp_path / "bad.jpeg"])
    rep_local = embed(local, batch_size=4, shard_size=5)
    rep = embed_with_ray(remote, batch_size=4, task_size=5, num_actors=2)
    assert rep.pending == 24 and rep.embedded == 23 and rep.errors == 1 and rep.shards == 5
    assert rep_local.errors == 1
    assert remote.catalog.count()["error"] == 1
    bad_id = remote.catalog.id_for_uri(str(tmp_path / "bad.jpeg"))
    assert remote.catalog.get(bad_id).status == "error" and remote.catalog.get(bad_id).error
    li, lv = _sorted(local.vectors())
    ri, rv = _sorted(remote.vectors())
    uri_l = local.catalog.uris(li)
    uri_r = remote.catalog.uris(ri)
    # Same image content under the same file name in both workspaces -> bit-identical float16 rows.
    name_l = [Path(uri_l[int(i)]).name for i in li]
    name_r = [Path(uri_r[int(i)]).name for i in ri]
    assert name_l == name_r
    assert np.array_equal(lv, rv)
    assert np.array_equal(local.vectors().load(extra="hist")[1].shape, remote.vectors().load(extra="hist")[1].shape)
    # Nothing left: a second run does nothing.
    again = embed_with_ray(remote, task_size=5)
    assert again.pending == 0 and again.embedded == 0
    local.close()
    remote.close()


def test_a_worker_killed_mid_task_is_retried_and_the_result_is_complete(ray_cluster, tmp_path):
    ws = _ws(tmp_path, 30)
    marker = str(tmp_path / "died-once")
    rep = embed_with_ray(ws, DieOnceEncoder(marker), batch_size=4, task_size=6, num_actors=2)
    assert os.path.exists(marker), "the worker was never killed: the test proves nothing"
    assert rep.embedded == 30 and rep.errors == 0
    ids = ws.vectors().ids()
    assert len(ids) == 30 and len(np.unique(ids)) == 30
    assert set(ids.tolist()) == set(ws.catalog.ids().tolist())
    # The vectors equal the plain encoder's.
    ref = _ws(tmp_path, 30, "ref")
    embed(ref, batch_size=4)
    assert np.array_equal(_sorted(ws.vectors())[1], _sorted(ref.vectors())[1])
    ws.close()
    ref.close()


def test_an_interrupted_driver_resumes_and_embeds_only_the_rest(ray_cluster, tmp_path):
    ws = _ws(tmp_path, 25)
    calls = []

    def progress(n):
        calls.append(n)
        raise Interrupt("driver stopped after its first commit")

    with pytest.raises(Interrupt):
        embed_with_ray(ws, batch_size=4, task_size=5, num_actors=2, progress=progress)
    committed = ws.vectors().ids()
    assert len(committed) >= 5 and len(committed) < 25
    assert len(committed) % 5 == 0  # whole tasks only
    rep = embed_with_ray(ws, batch_size=4, task_size=5, num_actors=2)
    assert rep.pending == 25 - len(committed) and rep.embedded == rep.pending
    ids = ws.vectors().ids()
    assert len(ids) == 25 and len(np.unique(ids)) == 25
    ws.close()


def test_bad_arguments(tmp_path):
    ws = Workspace.init(tmp_path / "w", default_encoder="test-mean-color")
    with pytest.raises(InputError, match="task_size must be a positive integer, got 0"):
        embed_with_ray(ws, task_size=0)
    with pytest.raises(InputError, match="num_actors"):
        embed_with_ray(ws, num_actors=-1)
    ws.close()


def test_sharded_index_built_by_ray_tasks_equals_the_thread_build(ray_cluster, tmp_path):
    from assay.distributed import build_sharded_index, train_codebook
    from assay.index import make_spec

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(5, 3005, dtype=np.int64)
    spec = make_spec("ivf-pq", 3000, 16, nlist=16, nprobe=4, m=8, nbits=6)
    cb = train_codebook(x, spec=spec, rng=0)
    a = build_sharded_index(ids, x, tmp_path / "ray", n_shards=3, spec=spec, codebook=cb, use_ray=True)
    b = build_sharded_index(ids, x, tmp_path / "threads", n_shards=3, spec=spec, codebook=cb)
    assert a.meta["engine"] == "ray" and a.ntotal == 3000
    Da, Ia = a.search(x[:30], 10)
    Db, Ib = b.search(x[:30], 10)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(Da, Db)


def test_cli_embed_with_ray_and_sharded_index(ray_cluster, tmp_path):
    import json

    from typer.testing import CliRunner

    from assay.cli.main import app

    ws = _ws(tmp_path, 12, "cli")
    ws.close()
    runner = CliRunner()
    r = runner.invoke(app, ["embed", "-w", str(tmp_path / "cli"), "--address", "auto"])
    assert r.exit_code == 2 and "--address is only for --engine ray" in r.output
    r = runner.invoke(app, ["embed", "-w", str(tmp_path / "cli"), "--engine", "spark"])
    assert r.exit_code == 2 and "--engine must be" in r.output
    r = runner.invoke(app, ["embed", "-w", str(tmp_path / "cli"), "--engine", "ray", "--shard-size", "5", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["embedded"] == 12 and rep["shards"] == 3
    r = runner.invoke(app, ["index", "-w", str(tmp_path / "cli"), "--ray"])
    assert r.exit_code == 2 and "options of --sharded" in r.output
    r = runner.invoke(app, ["index", "-w", str(tmp_path / "cli"), "--sharded", "2", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)["index"]
    assert info["count"] == 12 and info["n_shards"] == 2 and info["bytes_per_vector"] > 0


def test_a_ray_address_that_does_not_answer_is_one_clear_error(tmp_path):
    import socket

    from assay.distributed.ray_embed import _check_reachable  # what _ray_session runs before ray.init(address)
    from assay.errors import ClusterUnavailableError, InputError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ClusterUnavailableError, match="cannot connect to the Ray cluster"):
            _check_reachable(address)
    with pytest.raises(InputError, match="host:port"):
        _check_reachable("somehost:notaport")
    _check_reachable("auto")


def test_a_port_that_answers_but_is_not_ray_is_one_clear_error(monkeypatch):
    """A web server at the address: ray.init would wait for minutes; the check says what is wrong at once."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from assay.distributed import ray_embed
    from assay.errors import ClusterUnavailableError

    monkeypatch.setattr(ray_embed, "CONNECT_TIMEOUT_S", 2.0)
    srv = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ClusterUnavailableError, match="does not answer as a Ray cluster"):
            ray_embed._check_reachable(f"127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("RAY_USE_TLS", "1")  # a TLS cluster cannot be told apart by a plain preface: let Ray try
        ray_embed._check_reachable(f"127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_live_ray_head_passes_the_check(ray_cluster):
    from assay.distributed.ray_embed import _check_reachable

    _check_reachable(ray_cluster.get_runtime_context().gcs_address)


def test_an_encoder_actor_runs_inference_on_the_cpus_ray_gave_it(monkeypatch):
    import importlib

    mod = importlib.import_module("assay.distributed.ray_embed")
    monkeypatch.setattr(mod, "load_encoder", lambda enc: enc)  # no weights needed to check the setting
    w = mod._EmbedWorker("efficientnet-lite0", 64, 2, cpus=2.0)
    assert w.enc.num_threads == 2 and w.enc.session_layout() == (2, 1)
    w = mod._EmbedWorker("efficientnet-lite0", 64, 2, cpus=None)  # GPU actors: left to the encoder
    assert w.enc.num_threads is None
