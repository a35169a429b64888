"""Diverse batches: top-n, fast k-center vs the textbook O(n^2) version, cluster-then-sample, MMR."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.errors import EmptyPoolError, InputError, UnknownNameError
from assay.select.diversity import cluster_sample, k_center_greedy, mmr, top_n


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int, seed: int) -> np.ndarray:
    """Non-contiguous, unsorted global ids, to make sure positions never leak out."""
    return np.random.default_rng(seed).choice(10 * n, size=n, replace=False).astype(np.int64)


# ------------------------------------------------------------------ references (slow, obvious)


def _k_center_reference(X: np.ndarray, n: int, labelled: np.ndarray | None, first: int) -> list[int]:
    """Textbook greedy k-center with the full pairwise distance matrix (Sener & Savarese 2018, Alg. 1)."""
    X = X.astype(np.float64)
    D = 1.0 - X @ X.T  # [N, N]
    centres: list[int] = []
    if labelled is not None:
        DL = 1.0 - X @ labelled.astype(np.float64).T  # [N, L]
    for t in range(min(n, len(X))):
        if t == 0 and labelled is None:
            j = first
        else:
            cols = [D[:, centres]] if centres else []
            if labelled is not None:
                cols.append(DL)
            mind = np.concatenate(cols, axis=1).min(axis=1)
            mind[centres] = -np.inf
            j = int(np.argmax(mind))
        centres.append(j)
    return centres


def _assert_same_greedy(fast_pos, ref_pos, X, labelled, tol=1e-5):
    """Tie-aware: where the sequences part, both choices must be (near-)tied farthest points."""
    if list(fast_pos) == list(ref_pos):
        return
    X = X.astype(np.float64)
    for t, (a, b) in enumerate(zip(fast_pos, ref_pos, strict=True)):
        if a == b:
            continue
        cents = list(fast_pos[:t])
        d = [1.0 - X @ X[cents].T] if cents else []
        if labelled is not None:
            d.append(1.0 - X @ labelled.astype(np.float64).T)
        mind = np.concatenate(d, axis=1).min(axis=1)
        assert abs(mind[a] - mind[b]) < tol, f"step {t}: {a} vs {b} are not tied"
        return


# ------------------------------------------------------------------ top-n


def test_top_n_orders_by_score_then_id():
    ids = np.array([40, 10, 30, 20, 50])
    s = np.array([0.5, 0.9, 0.9, 0.1, 0.5])
    assert top_n(ids, s, 3).tolist() == [10, 30, 40]
    assert top_n(ids, s, 10).tolist() == [10, 30, 40, 50, 20]  # n > pool: whole pool, ordered
    # the same result whatever the order of the pool
    perm = np.random.default_rng(0).permutation(5)
    assert top_n(ids[perm], s[perm], 3).tolist() == [10, 30, 40]


def test_top_n_matches_full_sort_with_many_ties():
    rng = np.random.default_rng(3)
    ids = _ids(3000, 1)
    s = rng.integers(0, 20, 3000).astype(float)
    ref = ids[np.lexsort((ids, -s))][:137]
    assert np.array_equal(top_n(ids, s, 137), ref)


def test_top_n_bad_input():
    with pytest.raises(EmptyPoolError):
        top_n(np.array([], dtype=np.int64), np.array([]), 3)
    with pytest.raises(InputError, match="2 NaN"):
        top_n(np.arange(4), np.array([0.1, np.nan, np.nan, 0.3]), 2)
    with pytest.raises(InputError, match="positive integer"):
        top_n(np.arange(4), np.ones(4), 0)
    with pytest.raises(InputError, match="unique"):
        top_n(np.array([1, 1, 2]), np.ones(3), 1)
    with pytest.raises(InputError, match="3 entries"):
        top_n(np.arange(3), np.ones(4), 1)


# ------------------------------------------------------------------ k-center


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_matches_textbook_reference_with_labelled_seed(seed):
    X = _unit(400, 12, seed)
    L = _unit(15, 12, 100 + seed)
    ids = _ids(400, seed)
    fast = k_center_greedy(ids, X, 40, labelled_vectors=L)
    pos = {int(v): i for i, v in enumerate(ids)}
    fast_pos = [pos[int(v)] for v in fast]
    ref = _k_center_reference(X, 40, L, first=0)
    _assert_same_greedy(fast_pos, ref, X, L)
    assert fast_pos == ref  # seeded continuous data has no ties


def test_k_center_streaming_float16_path_matches_reference(tmp_path):
    X = _unit(300, 8, 7)
    X16 = X.astype(np.float16)
    path = tmp_path / "v.npy"
    np.save(path, X16)
    mm = np.load(path, mmap_mode="r")
    ids = np.arange(300, dtype=np.int64)
    # cache_bytes=1 forces the streamed path: one blockwise pass over the memmap per pick
    fast = k_center_greedy(ids, mm, 25, labelled_vectors=X[:3], block_size=64, cache_bytes=1)
    ref = _k_center_reference(X16.astype(np.float32), 25, X[:3], first=0)
    _assert_same_greedy(list(fast), ref, X16.astype(np.float32), X[:3], tol=1e-3)


def test_k_center_without_labels_uses_rng_for_first_centre():
    X = _unit(200, 6, 4)
    ids = _ids(200, 4)
    a = k_center_greedy(ids, X, 10, rng=np.random.default_rng(5))
    b = k_center_greedy(ids, X, 10, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)
    first = int(np.random.default_rng(5).integers(200))
    pos = {int(v): i for i, v in enumerate(ids)}
    assert [pos[int(v)] for v in a] == _k_center_reference(X, 10, None, first)
    assert k_center_greedy(ids, X, 3)[0] == ids[0]  # rng=None: the first pool item


def test_k_center_covers_the_pool_and_handles_duplicates():
    X = np.repeat(_unit(5, 4, 0), 20, axis=0)  # 5 distinct points, 20 copies each
    ids = np.arange(100, dtype=np.int64)
    sel = k_center_greedy(ids, X, 5, rng=0)
    assert len({tuple(np.round(X[i], 5)) for i in sel}) == 5  # one per distinct point
    everything = k_center_greedy(ids, X, 500)
    assert np.array_equal(np.sort(everything), ids)  # n > pool: whole pool, unique


def test_k_center_validation():
    X = _unit(10, 4, 0)
    with pytest.raises(InputError, match="one row per pool id"):
        k_center_greedy(np.arange(9), X, 2)
    with pytest.raises(InputError, match="dimension 4"):
        k_center_greedy(np.arange(10), X, 2, labelled_vectors=np.ones((2, 3)))
    with pytest.raises(InputError, match="rng"):
        k_center_greedy(np.arange(10), X, 2, rng="seed")
    with pytest.raises(EmptyPoolError):
        k_center_greedy(np.empty(0, dtype=np.int64), np.empty((0, 4), dtype=np.float32), 2)


# ------------------------------------------------------------------ cluster-then-sample


def _blobs(sizes, d=16, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = _unit(len(sizes), d, seed + 1)
    X = np.concatenate(
        [c + spread * rng.standard_normal((s, d)) for c, s in zip(centres, sizes, strict=True)]
    )
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), labels


def test_cluster_round_robin_takes_one_per_blob():
    X, blob = _blobs([50, 80, 30, 60, 40], seed=3)
    ids = _ids(len(X), 3)
    sel = cluster_sample(ids, X, 5, rng=0)
    pos = {int(v): i for i, v in enumerate(ids)}
    assert sorted(blob[[pos[int(v)] for v in sel]].tolist()) == [0, 1, 2, 3, 4]


def test_cluster_best_scored_per_cluster_and_round_robin_order():
    X, blob = _blobs([40, 40, 40], seed=5)
    ids = np.arange(len(X), dtype=np.int64)
    scores = np.random.default_rng(0).random(len(X))
    sel = cluster_sample(ids, X, 6, rng=1, scores=scores, n_clusters=3)
    # rounds: the best item of each blob first (blobs ordered by their best score), then the 2nd best
    expected = []
    firsts = sorted(range(3), key=lambda b: -scores[blob == b].max())
    for r in range(2):
        for b in firsts:
            members = np.flatnonzero(blob == b)
            expected.append(members[np.argsort(-scores[members])][r])
    assert sel.tolist() == expected


def test_cluster_proportional_allocation_follows_cluster_sizes():
    X, blob = _blobs([200, 100, 50, 50], seed=8)
    ids = np.arange(len(X), dtype=np.int64)
    sel = cluster_sample(ids, X, 8, rng=2, n_clusters=4, allocation="proportional")
    counts = np.bincount(blob[sel], minlength=4)
    assert counts.tolist() == [4, 2, 1, 1]


def test_cluster_deterministic_and_validation():
    X = _unit(300, 8, 9)
    ids = _ids(300, 9)
    a = cluster_sample(ids, X, 12, rng=np.random.default_rng(3))
    b = cluster_sample(ids, X, 12, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert len(set(a.tolist())) == 12
    with pytest.raises(UnknownNameError, match="round-robin"):
        cluster_sample(ids, X, 3, rng=0, allocation="greedy")
    with pytest.raises(InputError, match="n_clusters"):
        cluster_sample(ids, X, 3, rng=0, n_clusters=0)
    with pytest.raises(InputError, match="NaN"):
        cluster_sample(ids, X, 3, rng=0, scores=np.full(300, np.nan))
    small = cluster_sample(ids[:4], X[:4], 10, rng=0)
    assert sorted(small.tolist()) == sorted(ids[:4].tolist())


# ------------------------------------------------------------------ MMR


def _mmr_reference(X, rel, n, lam, labelled=None):
    X = X.astype(np.float64)
    S = X @ X.T
    chosen: list[int] = []
    for _ in range(min(n, len(X))):
        red = [S[:, chosen]] if chosen else []
        if labelled is not None:
            red.append(X @ labelled.astype(np.float64).T)
        r = np.concatenate(red, axis=1).max(axis=1) if red else np.zeros(len(X))
        g = lam * rel - (1 - lam) * r
        g[chosen] = -np.inf
        chosen.append(int(np.argmax(g)))
    return chosen


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7])
def test_mmr_matches_reference(lam):
    X = _unit(250, 10, 11)
    rel = np.random.default_rng(1).random(250)
    ids = np.arange(250, dtype=np.int64)
    assert mmr(ids, X, rel, 20, lam=lam).tolist() == _mmr_reference(X, rel, 20, lam)
    L = _unit(5, 10, 12)
    assert mmr(ids, X, rel, 20, lam=lam, labelled_vectors=L).tolist() == _mmr_reference(X, rel, 20, lam, L)


def test_mmr_lambda_one_is_top_n_and_redundancy_is_avoided():
    X = _unit(100, 8, 13)
    rel = np.random.default_rng(2).random(100)
    ids = _ids(100, 13)
    assert np.array_equal(mmr(ids, X, rel, 10, lam=1.0), top_n(ids, rel, 10))
    Xd = np.concatenate([X[:1]] * 5 + [X[1:]])  # five copies of the most relevant vector
    reld = np.concatenate([np.full(5, 2.0), rel[1:]])
    idsd = np.arange(len(Xd), dtype=np.int64)
    sel = mmr(idsd, Xd, reld, 3, lam=0.5)
    assert sum(int(i) < 5 for i in sel) == 1  # only one of the copies
    with pytest.raises(InputError, match="lam"):
        mmr(ids, X, rel, 3, lam=1.5)


# ------------------------------------------------------------------ properties


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    n_pool=st.integers(1, 120),
    n=st.integers(1, 150),
    method=st.sampled_from(["top", "k-center", "cluster", "mmr"]),
)
def test_selection_properties(seed, n_pool, n, method):
    X = _unit(n_pool, 6, seed)
    ids = _ids(n_pool, seed)
    rel = np.random.default_rng(seed).random(n_pool)

    def run():
        if method == "top":
            return top_n(ids, rel, n)
        if method == "k-center":
            return k_center_greedy(ids, X, n, rng=np.random.default_rng(seed))
        if method == "cluster":
            return cluster_sample(ids, X, n, rng=np.random.default_rng(seed), scores=rel)
        return mmr(ids, X, rel, n)

    sel = run()
    assert sel.dtype == np.int64
    assert len(sel) == min(n, n_pool)
    assert len(np.unique(sel)) == len(sel)
    assert np.isin(sel, ids).all()
    assert np.array_equal(sel, run())
