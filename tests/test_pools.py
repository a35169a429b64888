"""Candidate pools: SEALS against brute-force neighbourhoods, incremental growth, full and subsampled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.errors import EmptyPoolError, InputError
from assay.select.pools import (
    CachedNeighbors,
    SealsPool,
    exact_neighbors,
    full_pool,
    seals_pool,
    subsample_pool,
)


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force_seals(X, ids, labelled, k, non_rep=()):
    """Full similarity matrix, argsort per labelled item, union of the k nearest others."""
    S = X.astype(np.float64) @ X.astype(np.float64).T  # [N, N]
    pos = {int(v): i for i, v in enumerate(ids)}
    out: set[int] = set()
    for lab in labelled:
        i = pos[int(lab)]
        order = [j for j in np.argsort(-S[i], kind="stable") if j != i][:k]
        out.update(int(ids[j]) for j in order)
    out -= {int(v) for v in labelled}
    out -= {int(v) for v in non_rep}
    return np.array(sorted(out), dtype=np.int64)


class CountingNeighbors:
    """Wraps a neighbors_fn and records every id asked for."""

    def __init__(self, fn):
        self.fn = fn
        self.asked: list[int] = []

    def __call__(self, ids, k):
        self.asked.extend(int(i) for i in ids)
        return self.fn(ids, k)


# ------------------------------------------------------------------ exact neighbours


def test_exact_neighbors_matches_argsort():
    X = _unit(300, 8, 0)
    ids = np.random.default_rng(0).choice(5000, 300, replace=False).astype(np.int64)
    fn = exact_neighbors(X, ids, block_size=37, query_block=11)
    q = ids[[3, 50, 299]]
    sims, nbrs = fn(q, 6)
    S = X @ X.T
    for row, qi in zip(range(3), [3, 50, 299], strict=True):
        order = np.argsort(-S[qi], kind="stable")[:6]
        assert nbrs[row].tolist() == ids[order].tolist()
        np.testing.assert_allclose(sims[row], S[qi, order], atol=1e-6)
    s2, n2 = fn(q[:1], 400)  # k larger than the corpus: padded with -1
    assert (n2[0, 300:] == -1).all() and np.isneginf(s2[0, 300:]).all()
    with pytest.raises(InputError, match="not in the corpus"):
        fn(np.array([999_999]), 3)


# ------------------------------------------------------------------ SEALS vs brute force


@pytest.mark.parametrize("seed,k", [(0, 5), (1, 12), (2, 1)])
def test_seals_pool_matches_brute_force(seed, k):
    X = _unit(400, 10, seed)
    ids = np.random.default_rng(seed).choice(10_000, 400, replace=False).astype(np.int64)
    labelled = ids[np.random.default_rng(seed + 1).choice(400, 25, replace=False)]
    non_rep = ids[np.random.default_rng(seed + 2).choice(400, 30, replace=False)]
    got = seals_pool(labelled, exact_neighbors(X, ids), k=k, non_representative=non_rep)
    assert np.array_equal(got, _brute_force_seals(X, ids, labelled, k, non_rep))
    # the same with a boolean mask indexed by id
    mask = np.zeros(10_000, dtype=bool)
    mask[non_rep] = True
    got_mask = seals_pool(labelled, exact_neighbors(X, ids), k=k, non_representative=mask)
    assert np.array_equal(got_mask, got)


def test_seals_pool_with_a_faiss_index_matches_brute_force():
    faiss = pytest.importorskip("faiss")
    X = _unit(500, 16, 4)
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    index.add_with_ids(X, ids)

    def neighbors_fn(q, k):
        rows = q - 1000
        return index.search(X[rows], k)

    labelled = ids[::37]
    got = seals_pool(labelled, neighbors_fn, k=8)
    assert np.array_equal(got, _brute_force_seals(X, ids, labelled, 8))


def test_incremental_seals_equals_one_shot_and_queries_only_new_labels():
    X = _unit(600, 12, 5)
    ids = np.arange(600, dtype=np.int64)
    rng = np.random.default_rng(5)
    rounds = [rng.choice(600, 10, replace=False) for _ in range(3)]
    counter = CountingNeighbors(exact_neighbors(X))
    pool = SealsPool(k=7)
    seen: set[int] = set()
    for r in range(len(rounds)):
        labelled_so_far = np.unique(np.concatenate(rounds[: r + 1]))
        before = len(counter.asked)
        added = pool.update(labelled_so_far, counter)  # all labels passed; only new ones are queried
        queried = set(counter.asked[before:])
        assert queried == set(map(int, labelled_so_far)) - seen
        seen |= queried
        expected = _brute_force_seals(X, ids, labelled_so_far, 7)
        assert np.array_equal(pool.ids, expected)
        assert not np.isin(pool.ids, labelled_so_far).any()  # items labelled since have left
        assert np.isin(added, pool.ids).all()
    assert pool.n_queries == len(seen) == len(counter.asked)
    stats = pool.stats(corpus_size=600)
    assert stats.size == stats.scanned == pool.size
    assert stats.scanned_fraction == pytest.approx(pool.size / 600)
    assert pool.scanned_fraction(600) == pytest.approx(pool.size / 600)
    assert pool.stats().scanned_fraction is None


def test_seals_drops_self_matches_missing_neighbours_and_keeps_k_others():
    # a neighbours function whose self-match is not first (an exact duplicate ties with it) and
    # which pads with -1, like FAISS with too few results
    def fn(q, k):
        nbrs = np.array([[7, 3, 8, -1], [2, 9, 5, 6]])[: len(q), :k]
        return np.ones(nbrs.shape, dtype=np.float32), nbrs

    got = seals_pool(np.array([3, 9]), fn, k=3)
    # row for 3: others 7, 8 (self 3 and -1 dropped); row for 9: first three others 2, 5, 6
    assert got.tolist() == [2, 5, 6, 7, 8]


def test_seals_rejects_malformed_neighbour_results():
    with pytest.raises(InputError, match="tuple"):
        seals_pool(np.array([1]), lambda q, k: np.zeros((1, k)), k=2)
    with pytest.raises(InputError, match="shape"):
        seals_pool(np.array([1, 2]), lambda q, k: (np.zeros((1, k)), np.zeros((1, k), dtype=int)), k=2)
    with pytest.raises(InputError, match="integer"):
        seals_pool(np.array([1]), lambda q, k: (np.zeros((1, k)), np.zeros((1, k))), k=2)
    with pytest.raises(InputError, match="callable"):
        SealsPool(k=2).update(np.array([1]), "index")
    with pytest.raises(InputError, match="positive integer"):
        SealsPool(k=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 500), k=st.integers(1, 10), n_rounds=st.integers(1, 4))
def test_seals_property_order_of_rounds_does_not_matter(seed, k, n_rounds):
    X = _unit(120, 6, seed)
    rng = np.random.default_rng(seed)
    batches = [rng.choice(120, int(rng.integers(1, 8)), replace=False) for _ in range(n_rounds)]
    fn = exact_neighbors(X)
    inc = SealsPool(k=k)
    for b in batches:
        inc.update(b, fn)
    everything = np.unique(np.concatenate(batches))
    assert np.array_equal(inc.ids, seals_pool(everything, fn, k=k))
    assert np.array_equal(inc.ids, _brute_force_seals(X, np.arange(120), everything, k))


# ------------------------------------------------------------------ full and subsampled pools


def test_full_pool_excludes_labelled_and_non_representatives():
    corpus = np.array([9, 3, 5, 7, 1, 11])
    assert full_pool(corpus).tolist() == [1, 3, 5, 7, 9, 11]
    assert full_pool(corpus, labelled_ids=[3, 11]).tolist() == [1, 5, 7, 9]
    mask = np.zeros(12, dtype=bool)
    mask[[5, 9]] = True
    assert full_pool(corpus, labelled_ids=[3], non_representative=mask).tolist() == [1, 7, 11]
    assert full_pool(corpus, non_representative=np.array([1, 7])).tolist() == [3, 5, 9, 11]
    with pytest.raises(InputError, match="mask has 4 entries"):
        full_pool(corpus, non_representative=np.zeros(4, dtype=bool))
    with pytest.raises(InputError, match="integer"):
        full_pool(np.array([1.5, 2.0]))


def test_subsample_pool():
    pool = np.arange(100, 200, dtype=np.int64)
    a = subsample_pool(pool, rng=np.random.default_rng(1), size=30)
    b = subsample_pool(pool, rng=np.random.default_rng(1), size=30)
    assert np.array_equal(a, b) and len(np.unique(a)) == 30 and np.isin(a, pool).all()
    assert np.all(np.diff(a) > 0)
    assert len(subsample_pool(pool, rng=0, fraction=0.25)) == 25
    assert len(subsample_pool(pool, rng=0, size=1000)) == 100  # capped at the pool
    with pytest.raises(InputError, match="exactly one"):
        subsample_pool(pool, rng=0)
    with pytest.raises(InputError, match="fraction"):
        subsample_pool(pool, rng=0, fraction=1.5)
    with pytest.raises(EmptyPoolError):
        subsample_pool(np.array([], dtype=np.int64), rng=0, size=3)


def test_cached_neighbors_serves_repeats_from_memory():
    X = _unit(200, 8, 6)
    counter = CountingNeighbors(exact_neighbors(X))
    cache = CachedNeighbors(counter)
    s1, n1 = cache(np.array([5, 9, 5]), 5)
    s2, n2 = cache(np.array([9, 40, 5]), 5)
    ref_s, ref_n = exact_neighbors(X)(np.array([9, 40, 5]), 5)
    assert np.array_equal(n2, ref_n) and np.allclose(s2, ref_s)
    assert np.array_equal(n1[0], n1[2])
    assert sorted(counter.asked) == [5, 9, 40] and cache.n_computed == 3 and len(cache) == 3
    s3, n3 = cache(np.array([5]), 3)  # another k: its own table
    assert n3.shape == (1, 3) and np.array_equal(n3[0], ref_n[2, :3])
    assert cache.n_computed == 4
    with pytest.raises(InputError, match="positive integer"):
        cache(np.array([1]), 0)


def test_seals_gives_positives_a_wider_neighbourhood():
    X = _unit(500, 12, 11)
    ids = np.arange(500, dtype=np.int64)
    labelled = np.arange(0, 500, 25, dtype=np.int64)  # 20 items
    positives = labelled[:3]
    pool = SealsPool(k=5, k_positive=20)
    pool.update(labelled, exact_neighbors(X), positive_ids=positives)
    # the union of the 20 nearest of each positive and the 5 nearest of each other labelled item
    wide = set(_brute_force_seals(X, ids, positives, 20).tolist()) | set(
        _brute_force_seals(X, ids, labelled[3:], 5).tolist())
    wide -= set(labelled.tolist())
    assert np.array_equal(pool.ids, np.array(sorted(wide), dtype=np.int64))
    assert pool.ids.size > seals_pool(labelled, exact_neighbors(X), k=5).size
    assert "k_positive=20" in repr(pool)
    # without positive_ids, or with k_positive = k, it is the paper's pool
    plain = SealsPool(k=5, k_positive=20)
    plain.update(labelled, exact_neighbors(X))
    assert np.array_equal(plain.ids, seals_pool(labelled, exact_neighbors(X), k=5))
    same = SealsPool(k=5)
    same.update(labelled, exact_neighbors(X), positive_ids=positives)
    assert np.array_equal(same.ids, plain.ids)
    with pytest.raises(InputError, match="k_positive"):
        SealsPool(k=5, k_positive=0)


def test_seals_strategy_reads_positives_from_the_context():
    from assay.select.strategies import SealsStrategy, SelectionContext, get_strategy

    X = _unit(400, 8, 3)
    nfn = exact_neighbors(X)
    labelled = np.arange(0, 400, 20, dtype=np.int64)
    y = np.zeros(labelled.size, dtype=np.int8)
    y[:2] = 1
    strat = get_strategy("seals:random", pool_params={"k": 4})
    assert isinstance(strat, SealsStrategy) and strat.k_positive == 16  # 4 x k unless given
    ctx = SelectionContext(labelled_ids=labelled, labelled_labels=y, neighbors=nfn, corpus_size=400)
    strat.select(ctx, 5, 0)
    expected = set(_brute_force_seals(X, np.arange(400), labelled[:2], 16).tolist()) | set(
        _brute_force_seals(X, np.arange(400), labelled[2:], 4).tolist())
    assert set(strat.pool.ids.tolist()) == expected - set(labelled.tolist())
    paper = get_strategy("seals:random", pool_params={"k": 4, "k_positive": 4})
    paper.select(ctx, 5, 0)
    assert np.array_equal(paper.pool.ids, seals_pool(labelled, nfn, k=4))
    with pytest.raises(InputError, match="at least k"):
        SealsStrategy(get_strategy("random"), k=10, k_positive=5)
    with pytest.raises(InputError, match="one number or bool per labelled id"):
        SelectionContext(labelled_ids=labelled, labelled_labels=y[:3])


def test_seals_caps_positive_neighbourhoods_at_the_corpus_and_reads_exact_positives():
    from assay.select.strategies import SelectionContext, get_strategy

    X = _unit(30, 6, 2)
    asked = []

    def nfn(q, k):
        asked.append(k)
        return exact_neighbors(X)(q, k)

    labelled = np.array([0, 5, 9], dtype=np.int64)
    strat = get_strategy("seals:random", pool_params={"k": 10})  # k_positive 40 > 30 items
    ctx = SelectionContext(labelled_ids=labelled, labelled_labels=np.array([1.0, 0.2, -1.0]), neighbors=nfn,
                           corpus_size=30)
    strat.select(ctx, 3, 0)
    assert max(asked) == 31  # capped at the corpus (+1 for the self-match), not 41
    # only an exact 1 is a positive: the 0.2 and -1 items got the plain neighbourhood
    assert sorted(asked) == [11, 31]
