"""The server's kept searcher: memoised neighbours, vectors and corpus give the same answers as the store."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web stack is an optional extra: pip install 'assay[server]'")

from test_server_api import make_workspace  # noqa: E402

from assay.search import Searcher  # noqa: E402
from assay.server.app import _KeptSearcherMiner, _MemoSearcher  # noqa: E402


@pytest.fixture
def ws(tmp_path):
    w = make_workspace(tmp_path)
    yield w
    w.close()


def test_memo_neighbors_match_the_index(ws):
    plain = Searcher(ws, "test-mean-color")
    memo = _MemoSearcher(Searcher(ws, "test-mean-color"))
    ids = np.sort(plain.index().ids)[:7]
    for batch in (ids[:3], ids, ids[::-1], ids[2:5]):  # hits, misses, repeats, any order
        s0, n0 = plain.neighbors(batch, 4)
        s1, n1 = memo.neighbors(batch, 4)
        np.testing.assert_array_equal(n0, n1)
        np.testing.assert_allclose(s0, s1, rtol=1e-6)
    assert memo._memo.n_computed == ids.size  # each id searched once


def test_memo_store_matches_the_store_and_respects_its_budget(ws):
    store = ws.vectors("test-mean-color")
    ids = np.sort(Searcher(ws, "test-mean-color").index().ids)
    memo = _MemoSearcher(Searcher(ws, "test-mean-color"))
    np.testing.assert_array_equal(memo.store.get(ids[::-1]), store.get(ids[::-1]))
    np.testing.assert_array_equal(memo.store.get(ids[:5], dtype=np.float16), store.get(ids[:5], dtype=np.float16))
    assert len(memo.store._memo) == ids.size
    tiny = _MemoSearcher(Searcher(ws, "test-mean-color"), vector_memo_bytes=4 * store.dim * 3)
    np.testing.assert_array_equal(tiny.store.get(ids), store.get(ids))  # over budget: read through
    assert len(tiny.store._memo) == 0
    assert tiny.store.dim == store.dim  # everything else goes to the store


def test_kept_miner_uses_the_sorted_corpus_once(ws):
    ws.catalog.add_concept("x")
    memo = _MemoSearcher(Searcher(ws, "test-mean-color"))
    miner = _KeptSearcherMiner(ws, "x", encoder="test-mean-color", searcher=memo)
    c1 = miner._corpus(memo)
    assert np.all(np.diff(c1) > 0)
    assert miner._corpus(memo) is c1


def test_memo_store_map_rows_matches_scoring_the_store(ws):
    store = ws.vectors("test-mean-color")
    ids = np.sort(Searcher(ws, "test-mean-color").index().ids)
    w = np.linspace(-1, 1, store.dim).astype(np.float32)
    for budget in (512 << 20, 4 * store.dim * 3):  # in the memo, and read through
        memo = _MemoSearcher(Searcher(ws, "test-mean-color"), vector_memo_bytes=budget)
        got = memo.store.map_rows(lambda X: X @ w, ids[::-1])
        np.testing.assert_allclose(got, store.get(ids[::-1]) @ w, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(memo.store(ids[:3]), store.get(ids[:3]))


def test_the_kept_searcher_is_renewed_when_a_knn_graph_is_built_later(ws):
    """`assay index --knn K` while the server runs: the next round uses the graph, not the decision kept from
    before it existed."""
    from assay.search import build_knn_graph
    from assay.server.app import _Proposer

    proposer = _Proposer(ws, "test-mean-color")
    s1 = proposer.searcher()
    assert s1.knn_graph() is None
    assert proposer.searcher() is s1  # nothing changed: kept
    build_knn_graph(ws, 5, encoder="test-mean-color", exact=True)
    s2 = proposer.searcher()
    assert s2 is not s1 and s2.knn_graph() is not None
