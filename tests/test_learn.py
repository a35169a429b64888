"""Proxy models: calibration against scikit-learn, class weighting on a rare concept, ensembles, SVP."""

from __future__ import annotations

import numpy as np
import pytest

from assay.errors import InputError, UnknownNameError
from assay.learn import (
    BootstrapEnsemble,
    LogisticProxy,
    MLPProxy,
    SelectionViaProxy,
    ensemble_proba_fn,
    platt_scaling,
    proba_fn,
)


def _rare_concept(n: int, d: int, rate: float, seed: int, sep: float = 2.5):
    """Unit vectors; positives lean towards a concept direction (a rare, linearly separable-ish concept)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int64)
    direction = np.zeros(d)
    direction[0] = 1.0
    X = rng.standard_normal((n, d)) + sep * y[:, None] * direction
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y


def _average_precision(y, s):
    from sklearn.metrics import average_precision_score

    return average_precision_score(y, s)


# ------------------------------------------------------------------ logistic proxy


def test_platt_calibration_matches_calibrated_classifier_cv():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    X, y = _rare_concept(600, 16, 0.1, seed=0)
    ours = LogisticProxy(cv=3, random_state=7).fit(X, y)
    assert ours.calibration_ == "sigmoid"
    ref = CalibratedClassifierCV(
        LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000),
        method="sigmoid",
        ensemble=False,
        cv=StratifiedKFold(3, shuffle=True, random_state=7),
    ).fit(X, y)
    Xt, _ = _rare_concept(300, 16, 0.1, seed=1)
    np.testing.assert_allclose(ours.predict_proba(Xt), ref.predict_proba(Xt)[:, 1], atol=1e-4)


def test_platt_scaling_matches_sklearn_private_reference():
    from sklearn.calibration import _sigmoid_calibration

    rng = np.random.default_rng(3)
    f = rng.standard_normal(200) * 3
    y = (rng.random(200) < 1 / (1 + np.exp(-f))).astype(int)
    a, b = platt_scaling(f, y)
    ra, rb = _sigmoid_calibration(f, y)
    assert a == pytest.approx(ra, abs=1e-4) and b == pytest.approx(rb, abs=1e-4)


def test_linear_weights_reproduce_probabilities_and_ranking():
    X, y = _rare_concept(400, 12, 0.2, seed=2)
    m = LogisticProxy().fit(X, y)
    w, b = m.linear_weights()
    assert w.dtype == np.float32 and w.shape == (12,)
    np.testing.assert_allclose(1 / (1 + np.exp(-(X @ w + b))), m.predict_proba(X), atol=1e-5)
    # the calibrated ranking equals the raw model's ranking (a monotone map)
    raw = X @ m.base_coef_ + m.base_intercept_
    assert np.array_equal(
        np.argsort(-raw, kind="stable")[:50], np.argsort(-(X @ w.astype(np.float64)), kind="stable")[:50]
    )


def test_class_weighting_helps_a_rare_concept():
    X, y = _rare_concept(3000, 32, 0.01, seed=4, sep=3.0)  # ~30 positives
    Xt, yt = _rare_concept(20_000, 32, 0.01, seed=5, sep=3.0)
    balanced = LogisticProxy(calibration="none").fit(X, y)
    plain = LogisticProxy(calibration="none", class_weight=None).fit(X, y)
    rec_bal = (balanced.predict_proba(Xt)[yt == 1] > 0.5).mean()
    rec_plain = (plain.predict_proba(Xt)[yt == 1] > 0.5).mean()
    # the unweighted model calls almost nothing positive, so its uncertain band (p ~ 0.5) misses the
    # positives; the balanced boundary runs through them
    assert rec_bal > 0.7 and rec_plain < 0.1
    assert _average_precision(yt, balanced.predict_proba(Xt)) > 0.3  # far above the 1 % base rate


def test_calibration_sanity_on_held_out_data():
    X, y = _rare_concept(4000, 16, 0.05, seed=6, sep=1.5)
    Xt, yt = _rare_concept(20_000, 16, 0.05, seed=7, sep=1.5)
    cal = LogisticProxy(calibration="sigmoid").fit(X, y)
    raw = LogisticProxy(calibration="none").fit(X, y)
    p_cal, p_raw = cal.predict_proba(Xt), raw.predict_proba(Xt)
    # balanced weights inflate P(positive); Platt scaling brings the mean back to the base rate
    assert p_raw.mean() > 3 * yt.mean()
    assert p_cal.mean() == pytest.approx(yt.mean(), abs=0.01)
    brier = lambda p: np.mean((p - yt) ** 2)  # noqa: E731
    assert brier(p_cal) < brier(p_raw)
    # reliability: in the top-probability bin, the observed rate is close to the mean prediction
    top = p_cal > 0.5
    assert top.sum() > 50 and abs(yt[top].mean() - p_cal[top].mean()) < 0.15


def test_few_labels_fall_back_to_no_calibration():
    X, y = _rare_concept(200, 8, 0.02, seed=8)
    y[:3] = 1  # a handful of positives, fewer than min_per_class
    m = LogisticProxy().fit(X, y)
    assert m.calibration_ == "none" and m.platt_ is None
    assert m.n_positive_ < 10
    with pytest.raises(InputError, match="cv=3"):
        LogisticProxy(calibration="sigmoid").fit(X[:40], np.r_[np.ones(2), np.zeros(38)].astype(int))


def test_one_class_only_is_a_clear_error():
    X, _ = _rare_concept(50, 8, 0.1, seed=9)
    for model in (LogisticProxy(), MLPProxy(), BootstrapEnsemble()):
        with pytest.raises(InputError, match="both classes .* 0 negative.*relevance"):
            model.fit(X, np.ones(50, dtype=int))


def test_bad_training_input():
    X, y = _rare_concept(50, 8, 0.3, seed=10)
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        LogisticProxy().fit(Xn, y)
    with pytest.raises(InputError, match="binary labels"):
        LogisticProxy().fit(X, y * 2)
    with pytest.raises(InputError, match="one per row"):
        LogisticProxy().fit(X, y[:-1])
    with pytest.raises(InputError, match="calibration"):
        LogisticProxy(calibration="isotonic").fit(X, y)
    with pytest.raises(InputError, match="not fitted"):
        LogisticProxy().predict_proba(X)
    m = LogisticProxy().fit(X, y.astype(bool))
    with pytest.raises(InputError, match="8 features"):
        m.predict_proba(X[:, :4])


def test_float16_memmap_prediction_matches_float32(tmp_path):
    X, y = _rare_concept(500, 16, 0.2, seed=11)
    m = LogisticProxy(block_size=64).fit(X, y)
    np.save(tmp_path / "x.npy", X.astype(np.float16))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_allclose(
        m.predict_proba(mm), m.predict_proba(X.astype(np.float16).astype(np.float32)), atol=1e-6
    )
    np.testing.assert_allclose(m.predict_proba(mm), m.predict_proba(X), atol=5e-3)


# ------------------------------------------------------------------ ensemble and MLP


def test_bootstrap_ensemble_shapes_seeding_and_disagreement():
    from assay.select.scores import bald

    X, y = _rare_concept(300, 12, 0.05, seed=12)
    ens = BootstrapEnsemble(n_models=4, random_state=3).fit(X, y)
    pm = ens.predict_proba_members(X)
    assert pm.shape == (4, 300)
    np.testing.assert_allclose(ens.predict_proba(X), pm.mean(axis=0))
    again = BootstrapEnsemble(n_models=4, random_state=3).fit(X, y).predict_proba_members(X)
    np.testing.assert_array_equal(pm, again)
    other = BootstrapEnsemble(n_models=4, random_state=4).fit(X, y).predict_proba_members(X)
    assert not np.allclose(pm, other)
    assert np.ptp(pm, axis=0).max() > 0.05  # members differ
    # disagreement is highest near the boundary, not deep inside the negatives
    b = bald(pm)
    p = ens.predict_proba(X)
    assert b[np.abs(p - 0.5) < 0.2].mean() > b[p < 0.05].mean()
    with pytest.raises(UnknownNameError, match="logistic"):
        BootstrapEnsemble(base="svm").fit(X, y)
    with pytest.raises(InputError, match="n_models"):
        BootstrapEnsemble(n_models=1).fit(X, y)


def test_bootstrap_members_always_see_both_classes():
    X, y = _rare_concept(100, 6, 0.0, seed=13)
    y[[4, 50]] = 1  # only two positives
    ens = BootstrapEnsemble(n_models=6, random_state=0).fit(X, y)
    assert all(est.n_positive_ == 2 and est.n_negative_ == 98 for est in ens.estimators_)


def test_mlp_proxy_learns_a_nonlinear_concept_and_switches_early_stopping():
    rng = np.random.default_rng(14)
    X = rng.standard_normal((800, 4)).astype(np.float32)
    y = ((X[:, 0] * X[:, 1]) > 0.5).astype(int)  # not linearly separable
    mlp = MLPProxy(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(X, y)
    assert mlp.early_stopping_
    Xt = rng.standard_normal((2000, 4)).astype(np.float32)
    yt = ((Xt[:, 0] * Xt[:, 1]) > 0.5).astype(int)
    ap_mlp = _average_precision(yt, mlp.predict_proba(Xt))
    ap_lr = _average_precision(yt, LogisticProxy().fit(X, y).predict_proba(Xt))
    assert ap_mlp > 0.7 and ap_mlp > ap_lr + 0.2
    small = MLPProxy(hidden_layer_sizes=(8,), max_iter=50).fit(
        X[:30], np.r_[np.ones(4), np.zeros(26)].astype(int)
    )
    assert not small.early_stopping_
    assert small.predict_proba(Xt[:5]).shape == (5,)
    mlp_ens = BootstrapEnsemble(n_models=2, base="mlp", hidden_layer_sizes=(8,)).fit(X[:200], y[:200])
    assert mlp_ens.predict_proba_members(Xt[:10]).shape == (2, 10)


# ------------------------------------------------------------------ Selection via Proxy and adapters


def test_selection_via_proxy_fits_the_target_only_at_checkpoints():
    X, y = _rare_concept(200, 8, 0.2, seed=15)
    fitted: list[int] = []

    class Target:
        def fit(self, X, y):
            fitted.append(len(y))
            return self

    svp = SelectionViaProxy(target_factory=Target, every=3, checkpoints=[1])
    rounds = [svp.fit_round(X, y, r, final=(r == 6)) for r in range(7)]
    assert [r.target is not None for r in rounds] == [False, True, True, False, False, True, True]
    assert all(isinstance(r.proxy, LogisticProxy) for r in rounds)
    assert len(fitted) == 4
    assert not SelectionViaProxy().is_checkpoint(5) and SelectionViaProxy().is_checkpoint(5, final=True)


def test_proba_adapters_speak_item_ids():
    X, y = _rare_concept(100, 8, 0.3, seed=16)
    m = LogisticProxy().fit(X, y)
    ens = BootstrapEnsemble(n_models=3).fit(X, y)
    lookup = lambda ids: X[ids]  # noqa: E731
    ids = np.array([5, 1, 70])
    np.testing.assert_allclose(proba_fn(m, lookup)(ids), m.predict_proba(X[ids]))
    assert ensemble_proba_fn(ens, lookup)(ids).shape == (3, 3)
    with pytest.raises(InputError, match="not fitted"):
        proba_fn(LogisticProxy(), lookup)
