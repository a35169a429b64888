"""Scores: agreement with independent implementations (scikit-activeml, modAL) and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.errors import InputError, UnknownNameError
from assay.select import scores as S


@pytest.fixture(scope="module")
def ska():
    """scikit-activeml, a test-only reference implementation (skipped when not installed)."""
    pytest.importorskip("skactiveml")
    from skactiveml.pool import uncertainty_scores
    from skactiveml.pool._bald import batch_bald
    from skactiveml.pool._query_by_committee import vote_entropy

    return {"uncertainty_scores": uncertainty_scores, "batch_bald": batch_bald, "vote_entropy": vote_entropy}


@pytest.fixture(scope="module")
def modal_unc():
    """modAL's uncertainty module, a second test-only reference."""
    return pytest.importorskip("modAL.uncertainty")


def _dirichlet(n: int, c: int, seed: int, concentration: float = 0.7) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(c, concentration), size=n)  # [n, c]


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ uncertainty vs references


@pytest.mark.parametrize("c", [2, 3, 5])
def test_uncertainty_matches_scikit_activeml(c, ska):
    uncertainty_scores = ska["uncertainty_scores"]
    p = _dirichlet(400, c, seed=c)
    np.testing.assert_allclose(
        S.least_confidence(p), uncertainty_scores(p, method="least_confident"), atol=1e-12
    )
    np.testing.assert_allclose(S.margin(p), uncertainty_scores(p, method="margin_sampling"), atol=1e-12)
    np.testing.assert_allclose(S.entropy(p), uncertainty_scores(p, method="entropy"), atol=1e-12)


@pytest.mark.parametrize("c", [2, 4])
def test_uncertainty_matches_modal(c, modal_unc):
    p = _dirichlet(300, c, seed=10 + c)
    np.testing.assert_allclose(S.least_confidence(p), modal_unc._proba_uncertainty(p), atol=1e-12)
    # modAL's margin is the raw gap p1 - p2; ours is 1 - gap (higher = more uncertain)
    np.testing.assert_allclose(S.margin(p), 1.0 - modal_unc._proba_margin(p), atol=1e-12)
    np.testing.assert_allclose(S.entropy(p), modal_unc._proba_entropy(p), atol=1e-12)


def test_binary_vector_equals_two_column_form(ska):
    uncertainty_scores = ska["uncertainty_scores"]
    q = np.random.default_rng(1).random(200)
    p2 = np.stack([1 - q, q], axis=1)
    for fn in (S.least_confidence, S.margin, S.entropy):
        np.testing.assert_allclose(fn(q), fn(p2), atol=1e-12)
    np.testing.assert_allclose(S.entropy(q), uncertainty_scores(p2, method="entropy"), atol=1e-12)
    assert S.entropy([0.0, 1.0, 0.5]) == pytest.approx([0.0, 0.0, np.log(2)])


@pytest.mark.parametrize("c", [2, 3])
def test_vote_entropy_matches_scikit_activeml(c, ska):
    ska_vote_entropy = ska["vote_entropy"]
    m, n = 7, 250
    rng = np.random.default_rng(c)
    ens = rng.dirichlet(np.full(c, 0.5), size=(m, n))  # [m, n, c]
    votes = ens.argmax(axis=2).T  # [n, m]
    ref = ska_vote_entropy(votes, classes=np.arange(c))
    np.testing.assert_allclose(S.vote_entropy(ens), ref, atol=1e-12)


def test_bald_matches_scikit_activeml_batch_bald(ska):
    batch_bald = ska["batch_bald"]
    m, n, c = 6, 200, 3
    ens = np.random.default_rng(5).dirichlet(np.full(c, 0.6), size=(m, n))  # [m, n, c]
    ref = batch_bald(ens.copy(), batch_size=1, random_state=0)[0]  # BALD scores of a batch of one
    # scikit-activeml clips probabilities at 1e-7 before the log; agreement to that precision
    np.testing.assert_allclose(S.bald(ens), ref, atol=1e-5)


def test_bald_and_vote_entropy_hand_cases():
    same = np.tile(np.array([0.9, 0.2, 0.5]), (4, 1))  # [m=4, n=3]: every member agrees
    assert np.allclose(S.bald(same), 0.0)
    assert np.allclose(S.vote_entropy(same), 0.0)
    split = np.array([[0.999], [0.001], [0.999], [0.001]])  # confident members, opposite votes
    assert S.bald(split)[0] == pytest.approx(np.log(2), abs=1e-2)
    assert S.vote_entropy(split)[0] == pytest.approx(np.log(2))
    # binary [m, n] equals [m, n, 2]
    q = np.random.default_rng(2).random((5, 40))
    q3 = np.stack([1 - q, q], axis=2)
    np.testing.assert_allclose(S.bald(q), S.bald(q3), atol=1e-12)
    np.testing.assert_allclose(S.vote_entropy(q), S.vote_entropy(q3), atol=1e-12)


def test_method_dispatch_and_unknown_names():
    p = _dirichlet(20, 3, 0)
    assert np.array_equal(S.uncertainty(p, "least_confidence"), S.least_confidence(p))
    assert np.array_equal(S.uncertainty(p, "Margin"), S.margin(p))
    with pytest.raises(UnknownNameError) as exc:
        S.uncertainty(p, "entropyy")
    assert "entropy" in str(exc.value) and "least-confidence" in str(exc.value) and "margin" in str(exc.value)
    with pytest.raises(UnknownNameError, match="bald"):
        S.disagreement(np.random.default_rng(0).random((3, 4)), "kl")
    with pytest.raises(UnknownNameError, match="minmax"):
        S.normalize([1.0, 2.0], "zscore")


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.1, np.nan, np.nan, 0.4]), "2 NaN"),
        (np.array([0.1, 1.2]), r"\[0, 1\]"),
        (np.array([[0.5, 0.6], [0.5, 0.5]]), "sum to 1"),
        (np.zeros((2, 2, 2)), r"\[n\] \(binary\)"),
        (np.array(["a", "b"]), "numeric"),
        (np.array([[1.0], [1.0]]), "at least 2 class"),
    ],
)
def test_bad_probabilities(bad, match):
    with pytest.raises(InputError, match=match):
        S.entropy(bad)


def test_bad_ensembles():
    with pytest.raises(InputError, match="1 NaN"):
        S.bald(np.array([[0.2, np.nan], [0.3, 0.1]]))
    with pytest.raises(InputError, match="m_models"):
        S.bald(np.array([0.2, 0.3]))


def test_empty_probabilities_give_empty_scores():
    assert S.entropy(np.empty(0)).shape == (0,)
    assert S.bald(np.empty((3, 0))).shape == (0,)


# ------------------------------------------------------------------ relevance and novelty


def test_exemplar_similarity_matches_brute_force_including_float16_memmap(tmp_path):
    X = _unit(1000, 24, 0)
    E = _unit(7, 24, 1)
    sims = X @ E.T  # [n, e]
    for bs in (1, 97, 4096):
        np.testing.assert_allclose(
            S.exemplar_similarity(X, E, reduce="max", block_size=bs), sims.max(1), atol=1e-5
        )
        np.testing.assert_allclose(
            S.exemplar_similarity(X, E, reduce="mean", block_size=bs), sims.mean(1), atol=1e-5
        )
    mm = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float16, shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.load(tmp_path / "v.npy", mmap_mode="r")
    np.testing.assert_allclose(S.exemplar_similarity(ro, E, block_size=128), sims.max(1), atol=2e-3)
    np.testing.assert_allclose(S.query_similarity(X, E[0]), sims[:, 0], atol=1e-5)


def test_relevance_validation():
    X = _unit(10, 4, 0)
    with pytest.raises(InputError, match="dimension 4"):
        S.exemplar_similarity(X, np.ones((2, 5)))
    with pytest.raises(InputError, match="one vector"):
        S.query_similarity(X, np.ones((2, 4)))
    with pytest.raises(InputError, match="NaN"):
        S.exemplar_similarity(X, np.full(4, np.nan))
    with pytest.raises(InputError, match="2-D"):
        S.exemplar_similarity(np.ones(4), np.ones(4))
    with pytest.raises(UnknownNameError, match="max"):
        S.exemplar_similarity(X, X[:2], reduce="median")
    assert S.most_likely_positive([0.2, 0.9]) == pytest.approx([0.2, 0.9])
    with pytest.raises(InputError, match=r"\[n, 2\]"):
        S.most_likely_positive(_dirichlet(3, 3, 0))


def test_distance_to_labelled_matches_brute_force():
    X = _unit(500, 16, 2)
    L = _unit(40, 16, 3)
    ref = 1.0 - (X @ L.T).max(axis=1)
    np.testing.assert_allclose(S.distance_to_labelled(X, L, block_size=33), ref, atol=1e-5)
    assert np.all(S.distance_to_labelled(X, np.empty((0, 16))) == 1.0)  # no labels: documented fallback
    # a labelled item itself is at distance ~0
    assert S.distance_to_labelled(L, L).max() < 1e-5


def test_density_and_uniqueness():
    sims = np.array([[0.9, 0.7, 0.5], [0.2, 0.1, 0.0], [0.8, 0.8, 0.8]])
    np.testing.assert_allclose(S.density(sims), [0.7, 0.1, 0.8])
    np.testing.assert_allclose(S.uniqueness(sims), [0.3, 0.9, 0.2])
    w = np.array([3.0, 1.0, 0.0])
    np.testing.assert_allclose(S.density(sims, weights=w), [(2.7 + 0.7) / 4, 0.7 / 4, 0.8])
    ids = np.array([[5, -1, 7], [-1, -1, -1], [1, 2, 3]])
    np.testing.assert_allclose(S.density(sims, ids), [0.7, 0.0, 0.8])  # -1 left out; none valid -> 0
    sims_nan = sims.copy()
    sims_nan[1, :] = np.nan
    np.testing.assert_allclose(S.density(sims_nan, ids), [0.7, 0.0, 0.8])  # NaN where no neighbour is fine
    with pytest.raises(InputError, match="1 NaN"):
        S.density(np.array([[0.1, np.nan]]))
    with pytest.raises(InputError, match="weights"):
        S.density(sims, weights=[1.0, 2.0])


# ------------------------------------------------------------------ normalisation and combination


def test_rank_and_minmax_normalisation():
    s = np.array([3.0, 1.0, 2.0, 2.0, 10.0])
    np.testing.assert_allclose(S.normalize(s, "rank"), [0.75, 0.0, 0.375, 0.375, 1.0])
    np.testing.assert_allclose(S.normalize(s, "minmax"), [2 / 9, 0.0, 1 / 9, 1 / 9, 1.0])
    for method in ("rank", "minmax"):
        assert np.all(S.normalize(np.full(4, 7.0), method) == 0.0)  # constant term -> zeros
        assert np.all(S.normalize([5.0], method) == 0.0)
    with pytest.raises(InputError, match="1 NaN"):
        S.normalize([1.0, np.nan])


def test_combine_and_value():
    rel = np.array([0.1, 0.9, 0.5])
    unc = np.array([0.6, 0.1, 0.3])
    nov = np.array([5.0, 5.0, 5.0])  # constant: contributes nothing
    v = S.value(relevance=rel, uncertainty=unc, novelty=nov, a=2.0, b=1.0, c=7.0)
    np.testing.assert_allclose(v, 2.0 * S.normalize(rel) + S.normalize(unc))
    assert np.argmax(v) == 1
    assert np.array_equal(S.value(relevance=rel), S.normalize(rel))
    with pytest.raises(InputError, match="at least one"):
        S.value()
    with pytest.raises(InputError, match="3 entries"):
        S.combine({"a": rel, "b": np.ones(4)})
    with pytest.raises(InputError, match="unknown term"):
        S.combine({"a": rel}, {"zz": 1.0})


def test_multiplicative_form():
    u = np.array([0.5, 0.2, 0.9])
    d = np.array([0.4, 0.9, 0.1])
    np.testing.assert_allclose(S.combine_multiplicative({"u": u, "d": d}, {"d": 2.0}), u * d**2)
    np.testing.assert_allclose(S.combine_multiplicative({"u": u, "d": d}, {"d": 0.0}), u)
    with pytest.raises(InputError, match="non-negative"):
        S.combine_multiplicative({"u": u - 1.0})
    with pytest.raises(InputError, match="non-negative"):
        S.combine_multiplicative({"u": u}, {"u": -1.0})


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    strength=st.floats(0.1, 3.0),
)
def test_multiplicative_ranking_ignores_term_scale(seed, scale, strength):
    rng = np.random.default_rng(seed)
    u, d = rng.random(50), rng.random(50)
    base = S.combine_multiplicative({"u": u, "d": d}, {"d": strength})
    scaled = S.combine_multiplicative({"u": u * scale, "d": d}, {"d": strength})
    assert np.array_equal(np.argsort(base, kind="stable"), np.argsort(scaled, kind="stable"))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60))
def test_rank_normalisation_is_monotone_invariant(seed, n):
    s = np.random.default_rng(seed).integers(0, 10, n).astype(float)  # with ties
    r = S.normalize(s)
    assert r.min() >= 0.0 and r.max() <= 1.0
    np.testing.assert_allclose(S.normalize(np.exp(s)), r)  # invariant to a monotone transform
