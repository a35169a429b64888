"""The sharded IVF-PQ index: against exact search, against one IVF-PQ with the same codebook, on disk."""

from __future__ import annotations

import json

import fake_encoder  # noqa: F401
import numpy as np
import pytest

from assay.distributed.shards import (
    ShardedIndex,
    build_sharded_index,
    build_workspace_sharded_index,
    train_codebook,
)
from assay.errors import IndexNotBuiltError, InputError
from assay.index import brute_force_search, make_spec, recall_at_k


def _data(n=8000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(10_000, 10_000 + 3 * n, 3, dtype=np.int64))  # global ids, not positions
    return ids, x.astype(np.float16)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    ids, x = _data()
    spec = make_spec("ivf-pq", len(ids), x.shape[1], nlist=32, nprobe=8, m=32, nbits=6)
    cb = train_codebook(x, spec=spec, rng=0)
    d = tmp_path_factory.mktemp("sharded")
    idx = build_sharded_index(ids, x, d, n_shards=3, spec=spec, codebook=cb, workers=2)
    return ids, x, spec, cb, idx, d


def test_recall_against_exact_search(built):
    ids, x, _spec, _cb, idx, _ = built
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 50, replace=False)].astype(np.float32)
    _, I = idx.search(q, 10)
    _, Ie = brute_force_search(q, ids, x, 10)
    rec = recall_at_k(I, Ie)
    print(f"sharded IVF-PQ recall@10 vs exact: {rec:.3f}")
    assert rec >= 0.7
    assert set(np.unique(I[I >= 0])) <= set(ids.tolist())  # global ids come back
    # More probes, no worse.
    _, I2 = idx.search(q, 10, nprobe=32)
    rec2 = recall_at_k(I2, Ie)
    assert rec2 >= rec - 1e-9


def test_sharded_equals_one_index_with_the_same_codebook(built):
    import faiss

    ids, x, _spec, cb, idx, _ = built
    one = faiss.deserialize_index(np.frombuffer(cb, dtype=np.uint8))
    one.add_with_ids(x.astype(np.float32), ids)
    one.nprobe = idx.nprobe
    q = x[:40].astype(np.float32)
    D1, I1 = one.search(q, 10)
    D, I = idx.search(q, 10)
    np.testing.assert_allclose(D, D1, rtol=1e-5, atol=1e-5)
    # Ids agree wherever scores are not tied with a neighbour.
    for r in range(len(q)):
        for c in range(10):
            tied = np.sum(np.isclose(D1[r], D1[r, c], atol=1e-6)) > 1
            if not tied:
                assert I[r, c] == I1[r, c]


def test_on_disk_mmap_bytes_per_vector_and_atomic_rebuild(built):
    ids, x, spec, cb, idx, d = built
    assert idx.n_shards == 3 and idx.ntotal == len(ids)
    assert sorted(idx.info()["shard_counts"]) == [2666, 2667, 2667]
    assert idx.load_mode == "mmap"
    meta = json.loads((d / "sharded.json").read_text())
    assert meta["code_bytes_per_vector"] == 24  # 32 codes of 6 bits
    assert 32 <= idx.bytes_per_vector < 48  # 24 code bytes + 8 id bytes + list and codebook overhead
    again = ShardedIndex.load(d)
    q = x[:5].astype(np.float32)
    assert np.array_equal(again.search(q, 5)[1], idx.search(q, 5)[1])
    # Rebuilding in place swaps the commit file and removes the old shards.
    build_sharded_index(ids, x, d, n_shards=2, spec=spec, codebook=cb)
    assert ShardedIndex.load(d).n_shards == 2
    assert len(list(d.glob("shard-*.faiss"))) == 2 and len(list(d.glob("codebook-*.faiss"))) == 1
    # A search on the old (still open) object keeps working on its mapped files.
    assert idx.search(q, 5)[1].shape == (5, 5)


def test_workspace_build_reads_the_vector_store(tmp_path):
    from assay import Workspace

    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ids, x = _data(n=3000, d=12, seed=3)
    ids = np.sort(ids)
    ws.catalog.add_items([{"uri": f"/x/{i}.png"} for i in range(len(ids))])
    cat_ids = ws.catalog.ids()
    store = ws.vectors("test-mean-color")
    with store:
        store.create(encoder="test-mean-color", version="1", dim=12)
        for s in range(0, 3000, 500):
            store.append(cat_ids[s : s + 500], x[s : s + 500].astype(np.float32))
    spec = make_spec("ivf-pq", 3000, 12, nlist=16, nprobe=16, m=12, nbits=6)
    idx = build_workspace_sharded_index(ws, n_shards=4, spec=spec)
    assert idx.ntotal == 3000 and idx.n_shards == 4
    assert idx.directory == ws.index_dir("test-mean-color") / "sharded"
    q = x[:20].astype(np.float32)
    _, I = idx.search(q, 5)
    _, Ie = brute_force_search(q, cat_ids, x, 5)
    assert set(I.ravel().tolist()) <= set(cat_ids.tolist())
    assert recall_at_k(I, Ie) >= 0.7
    ws.close()


def test_bad_input(tmp_path):
    ids, x = _data(n=500, d=16)
    with pytest.raises(InputError, match="n_shards must be a positive integer"):
        build_sharded_index(ids, x, tmp_path / "a", n_shards=0)
    with pytest.raises(InputError, match="ids but"):
        build_sharded_index(ids[:10], x, tmp_path / "a")
    with pytest.raises(InputError, match="ivf-pq"):
        build_sharded_index(ids, x, tmp_path / "a", spec=make_spec("flat", 500, 16))
    with pytest.raises(IndexNotBuiltError):
        ShardedIndex.load(tmp_path / "nothing")
