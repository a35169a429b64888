"""Strategies: one contract suite over the whole registry, bad input, and the pool wrappers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.errors import EmptyPoolError, InputError, NotFoundError, UnknownNameError
from assay.select import scores as S
from assay.select.pools import exact_neighbors, seals_pool
from assay.select.strategies import (
    PoolExhaustedWarning,
    SealsStrategy,
    Selection,
    SelectionContext,
    available_strategies,
    get_strategy,
    vectors_by_id,
    vectors_by_row,
)

N, D = 240, 8
REQUIRED = [
    "random",
    "entropy",
    "margin",
    "least-confidence",
    "most-likely-positive",
    "disagreement",
    "novelty",
    "value",
    "k-center",
    "cluster",
    "mmr",
]


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


X = _unit(N, D, 0)
X16 = X.astype(np.float16)
W = np.random.default_rng(1).standard_normal(D)
P = 1.0 / (1.0 + np.exp(-4.0 * (X @ W)))  # [N] a smooth "proxy" over the corpus
ENS = np.clip(P[None, :] + 0.15 * np.random.default_rng(2).standard_normal((5, N)), 0.0, 1.0)  # [5, N]
LABELLED = np.array([3, 17, 44, 90, 151, 200], dtype=np.int64)
NEIGHBORS = exact_neighbors(X)


def make_ctx(pool=None, **over) -> SelectionContext:
    if pool is None:
        pool = np.setdiff1d(np.arange(N), LABELLED)
    base = dict(
        pool_ids=pool,
        vectors=vectors_by_row(X16),
        proba=lambda ids: P[ids],
        ensemble_proba=lambda ids: ENS[:, ids],
        labelled_ids=LABELLED,
        query_vectors=X[5],
        neighbors=NEIGHBORS,
        corpus_size=N,
        block_size=64,
    )
    base.update(over)
    return SelectionContext(**base)


def fresh(name: str):
    params = {"pool_params": {"size": 100}} if name.startswith("subsample:") else {}
    return get_strategy(name, **params)


# ------------------------------------------------------------------ registry


def test_registry_has_every_required_name_and_wrappers():
    names = available_strategies()
    for base in REQUIRED:
        assert base in names and f"seals:{base}" in names and f"subsample:{base}" in names
    assert "information-density" in names


@pytest.mark.parametrize("bad", ["entropi", "seals:nope", "foo:entropy", "seals:seals:entropy", ""])
def test_unknown_names_list_the_valid_ones(bad):
    with pytest.raises(UnknownNameError) as exc:
        get_strategy(bad)
    msg = str(exc.value)
    assert "entropy" in msg and "seals:k-center" in msg and "subsample:mmr" in msg


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError, match="does not take parameter\\(s\\) lam; it takes none"):
        get_strategy("entropy", lam=0.3)
    with pytest.raises(InputError, match="does not take parameter\\(s\\) lamda; it takes: lam, relevance"):
        get_strategy("mmr", lamda=0.3)
    with pytest.raises(InputError, match="'seals' does not take parameter\\(s\\) kk; it takes: k, k_positive$"):
        get_strategy("seals:entropy", pool_params={"kk": 3})
    with pytest.raises(InputError, match="lam"):
        get_strategy("mmr", lam=2.0)
    with pytest.raises(InputError, match="pool_params"):
        get_strategy("entropy", pool_params={"k": 3})
    with pytest.raises(UnknownNameError, match="bald"):
        get_strategy("disagreement", method="kl")
    assert get_strategy("seals:mmr", pool_params={"k": 7}, lam=0.9).base.lam == 0.9


def test_every_strategy_docstring_cites_a_source():
    import re

    for name in available_strategies():
        s = fresh(name)
        doc = (type(s).__doc__ or "") + (type(getattr(s, "base", s)).__doc__ or "")
        assert re.search(r"(19|20)\d\d", doc), name


# ------------------------------------------------------------------ contract: every strategy


@pytest.mark.parametrize("name", available_strategies())
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_contract_unique_from_pool_at_most_n_repeatable(name, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    n = data.draw(st.integers(1, 40), label="n")
    rng = np.random.default_rng(seed)
    pool = np.sort(
        rng.choice(np.setdiff1d(np.arange(N), LABELLED), size=int(rng.integers(20, 200)), replace=False)
    )
    ctx = make_ctx(pool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoolExhaustedWarning)
        sel = fresh(name).select(ctx, n, np.random.default_rng(seed))
        again = fresh(name).select(ctx, n, np.random.default_rng(seed))
    assert isinstance(sel, Selection)
    assert sel.ids.dtype == np.int64
    assert 1 <= len(sel) <= n
    assert len(np.unique(sel.ids)) == len(sel.ids)
    assert np.isin(sel.ids, pool).all() and not np.isin(sel.ids, LABELLED).any()
    assert np.array_equal(sel.ids, again.ids)
    assert sel.scores.shape == sel.ids.shape and np.isfinite(sel.scores).all()
    assert sel.scanned == sel.pool_size and sel.scanned_fraction == pytest.approx(sel.pool_size / N)
    if not name.startswith("seals:"):
        assert len(sel) == min(n, sel.pool_size)


@pytest.mark.parametrize("name", [n for n in available_strategies() if not n.startswith("seals:")])
def test_empty_pool_raises(name):
    with pytest.raises(EmptyPoolError):
        fresh(name).select(make_ctx(np.array([], dtype=np.int64)), 5, 0)


@pytest.mark.parametrize("name", REQUIRED + ["information-density"])
def test_batch_larger_than_pool_returns_the_whole_pool(name):
    pool = np.array([10, 20, 30, 40, 50], dtype=np.int64)
    with pytest.warns(PoolExhaustedWarning, match="whole pool"):
        sel = get_strategy(name).select(make_ctx(pool), 9, 0)
    assert sel.truncated and sorted(sel.ids.tolist()) == pool.tolist()
    assert not get_strategy(name).select(make_ctx(pool), 5, 0).truncated


@pytest.mark.parametrize(
    "name",
    [
        "entropy",
        "margin",
        "least-confidence",
        "most-likely-positive",
        "information-density",
        "value",
        "cluster",
        "mmr",
    ],
)
def test_nan_probabilities_raise_naming_how_many(name):
    bad = P.copy()
    bad[[20, 21, 22]] = np.nan
    with pytest.raises(InputError, match=r"3 NaN"):
        get_strategy(name).select(make_ctx(proba=lambda ids: bad[ids]), 5, 0)


def test_nan_ensemble_and_nan_vectors_raise():
    bad = ENS.copy()
    bad[0, 30] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        get_strategy("disagreement").select(make_ctx(ensemble_proba=lambda ids: bad[:, ids]), 5, 0)
    Xn = X16.copy()
    Xn[[30, 31]] = np.nan
    with pytest.raises(InputError, match="2 of"):
        get_strategy("novelty").select(make_ctx(vectors=vectors_by_row(Xn)), 5, 0)


@pytest.mark.parametrize(
    "name, missing, field",
    [
        ("entropy", {"proba": None}, "ctx.proba"),
        ("disagreement", {"ensemble_proba": None}, "ctx.ensemble_proba"),
        ("k-center", {"vectors": None}, "ctx.vectors"),
        ("information-density", {"neighbors": None}, "ctx.neighbors"),
        ("seals:entropy", {"neighbors": None}, "ctx.neighbors"),
        ("most-likely-positive", {"proba": None, "query_vectors": None}, "ctx.query_vectors"),
        ("entropy", {"pool_ids": None}, "ctx.pool_ids"),
    ],
)
def test_missing_inputs_name_the_field(name, missing, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        get_strategy(name).select(make_ctx(**missing), 5, 0)


def test_context_validation():
    with pytest.raises(InputError, match="unique"):
        make_ctx(np.array([1, 1, 2]))
    with pytest.raises(InputError, match="function of item ids"):
        make_ctx(proba=P)
    with pytest.raises(InputError, match="one row per labelled id"):
        make_ctx(labelled_vectors=X[:2])
    with pytest.raises(InputError, match="positive integer"):
        get_strategy("entropy").select(make_ctx(), 0, 0)
    with pytest.raises(InputError, match="rng"):
        get_strategy("entropy").select(make_ctx(), 3, "x")
    with pytest.raises(InputError, match=r"\[m\]"):
        get_strategy("entropy").select(make_ctx(proba=lambda ids: P[ids][:, None]), 3, 0)


# ------------------------------------------------------------------ behaviour of single strategies


def test_uncertainty_strategies_take_the_top_scores():
    pool = np.setdiff1d(np.arange(N), LABELLED)
    for name, fn in (("entropy", S.entropy), ("margin", S.margin), ("least-confidence", S.least_confidence)):
        sel = get_strategy(name).select(make_ctx(), 10, 0)
        s = fn(P[pool])
        assert np.array_equal(sel.ids, pool[np.lexsort((pool, -s))][:10])
        np.testing.assert_allclose(sel.scores, np.sort(s)[::-1][:10])


def test_most_likely_positive_falls_back_to_the_query_without_a_proxy():
    pool = np.setdiff1d(np.arange(N), LABELLED)
    sel = get_strategy("most-likely-positive").select(make_ctx(proba=None), 5, 0)
    sims = X16[pool].astype(np.float32) @ X[5]
    assert np.array_equal(sel.ids, pool[np.argsort(-sims, kind="stable")][:5])
    assert sel.ids[0] == 5  # the query item itself
    with_proxy = get_strategy("most-likely-positive").select(make_ctx(), 5, 0)
    assert np.array_equal(with_proxy.ids, pool[np.argsort(-P[pool], kind="stable")][:5])


def test_disagreement_uses_bald_by_default_and_vote_entropy_on_request():
    pool = np.setdiff1d(np.arange(N), LABELLED)
    sel = get_strategy("disagreement").select(make_ctx(), 8, 0)
    b = S.bald(ENS[:, pool])
    assert np.array_equal(sel.ids, pool[np.lexsort((pool, -b))][:8])
    ve = get_strategy("disagreement", method="vote-entropy").select(make_ctx(), 8, 0)
    v = S.vote_entropy(ENS[:, pool])
    assert np.array_equal(ve.ids, pool[np.lexsort((pool, -v))][:8])


def test_value_strategy_weights_and_forms():
    pool = np.setdiff1d(np.arange(N), LABELLED)
    only_rel = get_strategy("value", a=1.0, b=0.0, c=0.0).select(make_ctx(vectors=None), 6, 0)
    assert np.array_equal(only_rel.ids, pool[np.lexsort((pool, -P[pool]))][:6])  # no vectors needed
    sel = get_strategy("value", a=1.0, b=2.0, c=0.5).select(make_ctx(), 6, 0)
    nov = 1.0 - (X16[pool].astype(np.float32) @ X[LABELLED].T).max(axis=1)
    v = S.combine({"r": P[pool], "u": S.entropy(P[pool]), "n": nov}, {"r": 1.0, "u": 2.0, "n": 0.5})
    assert np.array_equal(sel.ids, pool[np.lexsort((pool, -v))][:6])
    mult = get_strategy("value", form="multiplicative", c=0.0).select(make_ctx(), 6, 0)
    m = P[pool] * S.entropy(P[pool])
    assert np.array_equal(mult.ids, pool[np.lexsort((pool, -m))][:6])


def test_information_density_matches_manual_computation():
    pool = np.setdiff1d(np.arange(N), LABELLED)
    sel = get_strategy("information-density", k=5, beta=2.0).select(make_ctx(), 7, 0)
    Sm = X.astype(np.float64) @ X.T.astype(np.float64)
    np.fill_diagonal(Sm, -np.inf)
    dens = np.sort(Sm, axis=1)[:, ::-1][:, :5].mean(axis=1)[pool]
    val = S.entropy(P[pool]) * np.clip(dens, 0, None) ** 2
    assert np.array_equal(sel.ids, pool[np.lexsort((pool, -val))][:7])


def test_k_center_strategy_starts_from_the_labelled_items():
    from assay.select.diversity import k_center_greedy

    pool = np.setdiff1d(np.arange(N), LABELLED)
    sel = get_strategy("k-center").select(make_ctx(), 10, 0)
    ref = k_center_greedy(pool, X16[pool], 10, labelled_vectors=X16[LABELLED].astype(np.float32))
    assert np.array_equal(sel.ids, ref)
    assert np.all(np.diff(sel.scores) <= 1e-6)  # farthest-first distances never increase


# ------------------------------------------------------------------ SEALS and subsample wrappers


def test_seals_wrapper_scores_only_the_seals_pool_and_grows_each_round():
    calls: list[int] = []

    def proba(ids):
        calls.append(len(ids))
        return P[ids]

    strat = get_strategy("seals:entropy", pool_params={"k": 6})
    assert isinstance(strat, SealsStrategy)
    lab1 = LABELLED[:3]
    sel1 = strat.select(make_ctx(pool=None, proba=proba, labelled_ids=lab1), 5, 0)
    expected1 = seals_pool(lab1, NEIGHBORS, k=6)
    assert sel1.pool_size == len(expected1) == sum(calls)  # only pool items were scored
    assert np.isin(sel1.ids, expected1).all()
    assert sel1.scanned_fraction == pytest.approx(len(expected1) / N)
    assert sel1.strategy == "seals:entropy"
    lab2 = np.union1d(lab1, sel1.ids)
    sel2 = strat.select(make_ctx(pool=None, labelled_ids=lab2), 5, 0)
    expected2 = seals_pool(lab2, NEIGHBORS, k=6)
    assert np.array_equal(strat.pool.ids, expected2)
    assert sel2.pool_size == len(expected2)
    assert not np.isin(sel2.ids, lab2).any()
    assert strat.pool.n_queries == len(lab2)  # each labelled item looked up once over both rounds
    s = S.entropy(P[expected2])
    assert np.array_equal(sel2.ids, expected2[np.lexsort((expected2, -s))][:5])


def test_seals_wrapper_respects_pool_restriction_duplicates_and_empty_pool():
    strat = get_strategy("seals:random", pool_params={"k": 10})
    allowed = np.arange(0, N, 2)
    mask = np.zeros(N, dtype=bool)
    mask[np.arange(0, N, 3)] = True
    with pytest.warns(PoolExhaustedWarning):
        sel = strat.select(make_ctx(pool=allowed, non_representative=mask), 500, 0)
    expected = np.setdiff1d(
        np.intersect1d(seals_pool(LABELLED, NEIGHBORS, k=10), allowed), np.flatnonzero(mask)
    )
    assert np.array_equal(np.sort(sel.ids), expected)
    assert np.isin(sel.ids, allowed).all() and not mask[sel.ids].any()
    with pytest.raises(EmptyPoolError, match="SEALS pool is empty"):
        get_strategy("seals:entropy").select(
            make_ctx(pool=None, labelled_ids=np.array([], dtype=np.int64)), 3, 0
        )
    strat.reset()
    assert strat.pool.size == 0
    # every item labelled: say so, rather than suggest a full-scan strategy that would fail too
    with pytest.raises(EmptyPoolError, match="every item of the corpus is labelled"):
        get_strategy("seals:entropy").select(make_ctx(pool=np.array([], dtype=np.int64), corpus_size=LABELLED.size), 3, 0)


def test_subsample_wrapper_draws_from_the_pool_with_the_rng():
    strat = get_strategy("subsample:entropy", pool_params={"size": 30})
    a = strat.select(make_ctx(), 5, np.random.default_rng(4))
    b = strat.select(make_ctx(), 5, np.random.default_rng(4))
    assert a.pool_size == 30 and np.array_equal(a.ids, b.ids)
    sub = np.sort(np.random.default_rng(4).choice(np.setdiff1d(np.arange(N), LABELLED), 30, replace=False))
    assert np.array_equal(a.ids, sub[np.lexsort((sub, -S.entropy(P[sub])))][:5])  # entropy over the subsample
    frac = get_strategy("subsample:random", pool_params={"fraction": 0.5}).select(make_ctx(), 3, 0)
    assert frac.pool_size == int(np.ceil(0.5 * (N - len(LABELLED))))


def test_vector_lookups():
    by_row = vectors_by_row(X16)
    np.testing.assert_array_equal(by_row(np.array([5, 6, 7])), X16[5:8])  # contiguous slice
    np.testing.assert_array_equal(by_row(np.array([9, 5, 7])), X16[[9, 5, 7]])  # dense span, gathered
    np.testing.assert_array_equal(by_row(np.array([0, 200])), X16[[0, 200]])  # sparse gather
    with pytest.raises(NotFoundError):
        by_row(np.array([N]))
    ids = np.array([100, 7, 55])
    by_id = vectors_by_id(X16[:3], ids)
    np.testing.assert_array_equal(by_id(np.array([55, 100])), X16[[2, 0]])
    with pytest.raises(NotFoundError):
        by_id(np.array([8]))


def test_cached_vectors_fetch_each_id_once():
    from assay.select.strategies import CachedVectors

    fetched: list[int] = []

    def lookup(ids):
        fetched.extend(int(i) for i in ids)
        return X16[ids]

    cache = CachedVectors(lookup)
    np.testing.assert_array_equal(cache(np.array([7, 3, 7])), X16[[7, 3, 7]].astype(np.float32))
    for start in range(0, N, 50):  # grows past the initial capacity in several calls
        np.testing.assert_array_equal(
            cache(np.arange(start, min(start + 50, N))), X16[start : start + 50].astype(np.float32)
        )
    np.testing.assert_array_equal(cache(np.array([200, 3])), X16[[200, 3]].astype(np.float32))
    assert sorted(fetched) == list(range(N)) and cache.n_fetched == N == len(cache)
    sel = get_strategy("k-center").select(make_ctx(vectors=cache), 5, 0)
    ref = get_strategy("k-center").select(make_ctx(), 5, 0)
    assert np.array_equal(sel.ids, ref.ids) and cache.n_fetched == N


def test_select_package_all_is_honest():
    import types

    import assay.select as pkg

    assert len(pkg.__all__) == len(set(pkg.__all__))
    for name in pkg.__all__:
        assert hasattr(pkg, name), name
    exported = {
        n for n, v in vars(pkg).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert exported - {"annotations"} == set(pkg.__all__)


def test_cached_vectors_map_rows_equals_gather_then_score():
    from assay.select.strategies import CachedVectors

    rng = np.random.default_rng(3)
    table = rng.normal(size=(5000, 16)).astype(np.float32)  # [n, d]
    ids_all = np.sort(rng.choice(10**6, 5000, replace=False))

    def lookup(ids):
        return table[np.searchsorted(ids_all, ids)]

    w = rng.normal(size=16).astype(np.float32)
    fn = lambda X: X @ w  # noqa: E731
    memo = CachedVectors(lookup)
    memo(rng.choice(ids_all, 300, replace=False))  # some rows held already
    for q in (
        rng.choice(ids_all, 4000, replace=False),  # dense: scored on contiguous blocks
        rng.choice(ids_all, 7, replace=False),  # sparse: gathered
        np.repeat(ids_all[:5], 3),  # repeats
        ids_all[:0],  # empty
    ):
        got = memo.map_rows(fn, q, block=512)
        np.testing.assert_allclose(got, lookup(q) @ w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, fn(memo(q)), rtol=1e-6, atol=1e-6)


def test_proba_fn_scores_a_memo_in_place():
    from assay.learn import LogisticProxy, proba_fn
    from assay.select.strategies import CachedVectors

    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    model = LogisticProxy().fit(X, y)
    memo = CachedVectors(lambda ids: X[ids])
    ids = rng.permutation(400)
    np.testing.assert_allclose(proba_fn(model, memo)(ids), model.predict_proba(X[ids]), rtol=1e-6)
