"""The kernel proxy (assay.kernel) and the mixed strategies (assay.select.mixed)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from assay.errors import InputError
from assay.kernel import KernelSVMProxy, rbf_kernel
from assay.select.mixed import DiversePositiveStrategy, MixedStrategy, make, names
from assay.select.strategies import SealsStrategy, SelectionContext, vectors_by_id


def _data(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (X[:, 0] + 2.0 * X[:, 1] ** 2 > 0.25).astype(np.int64)  # not linearly separable
    return X, y


def test_rbf_kernel_matches_the_definition():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    want = np.exp(-0.7 * ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1))
    assert rbf_kernel(A, B, 0.7) == pytest.approx(want, rel=1e-5)


def test_decision_function_equals_sklearn_svc():
    X, y = _data()
    m = KernelSVMProxy(calibration="none").fit(X, y)
    ref = SVC(C=1.0, kernel="rbf", gamma=1.0 / (X.shape[1] * X.var()), class_weight="balanced").fit(X, y)
    Xq, _ = _data(n=50, seed=3)
    assert m.decision_function(Xq) == pytest.approx(ref.decision_function(Xq), abs=1e-4)
    assert m.decision_function(X[:7]) == pytest.approx(
        KernelSVMProxy(calibration="none", block_size=2).fit(X, y).decision_function(X[:7]), abs=1e-5)


def test_kernel_beats_a_linear_model_on_a_curved_boundary():
    from sklearn.metrics import average_precision_score

    from assay.learn import LogisticProxy

    X, y = _data(n=600)
    Xt, yt = _data(n=600, seed=5)
    ap_k = average_precision_score(yt, KernelSVMProxy(gamma_scale=2.0).fit(X, y).predict_proba(Xt))
    ap_l = average_precision_score(yt, LogisticProxy().fit(X, y).predict_proba(Xt))
    assert ap_k > ap_l + 0.05


def test_calibration_keeps_the_ranking_and_spans_the_classes():
    X, y = _data(n=400)
    m = KernelSVMProxy(random_state=1).fit(X, y)
    assert m.calibration_ == "sigmoid" and m.platt_[0] < 0
    p, f = m.predict_proba(X), m.decision_function(X)
    assert np.all((p >= 0) & (p <= 1))
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(f, kind="stable"))
    assert p[y == 1].mean() > 0.5 > p[y == 0].mean()
    few = np.r_[np.flatnonzero(y == 1)[:4], np.flatnonzero(y == 0)[:40]]
    assert KernelSVMProxy().fit(X[few], y[few]).calibration_ == "none"  # too few positives to calibrate


def test_kernel_proxy_bad_input():
    X, y = _data(n=40)
    with pytest.raises(InputError, match="both classes"):
        KernelSVMProxy().fit(X, np.zeros(40, dtype=int))
    with pytest.raises(InputError, match="C must be"):
        KernelSVMProxy(C=0).fit(X, y)
    with pytest.raises(InputError, match="gamma"):
        KernelSVMProxy(gamma="auto").fit(X, y)
    with pytest.raises(InputError, match="not fitted"):
        KernelSVMProxy().predict_proba(X)
    with pytest.raises(InputError, match="16 features"):
        KernelSVMProxy().fit(X, y).predict_proba(np.ones((2, 3), dtype=np.float32))


# ------------------------------------------------------------------------------------------ mixed strategies


def _ctx(p, vecs=None):
    ids = np.arange(100, 100 + len(p), dtype=np.int64)
    proba = dict(zip(ids.tolist(), p))
    return ids, SelectionContext(
        pool_ids=ids, proba=lambda q: np.array([proba[int(i)] for i in q]),
        vectors=None if vecs is None else vectors_by_id(vecs, ids),
    )


def test_mixed_takes_the_top_then_the_most_uncertain():
    p = np.array([0.9, 0.1, 0.55, 0.8, 0.45, 0.05, 0.3, 0.6])
    ids, ctx = _ctx(p)
    sel = MixedStrategy(explore=0.5).select(ctx, 4, np.random.default_rng(0))
    # two by P(positive): 0.9, 0.8; then two by entropy among the rest: 0.55 and 0.45 (tie by id: 0.55 first)
    assert sel.ids.tolist() == [ids[0], ids[3], ids[2], ids[4]]
    assert MixedStrategy(explore=0.0).select(ctx, 3, 0).ids.tolist() == [ids[0], ids[3], ids[7]]
    with pytest.raises(InputError, match="explore"):
        MixedStrategy(explore=1.5)


def test_diverse_positive_skips_near_copies():
    p = np.array([0.9, 0.89, 0.5, 0.1])
    v = np.array([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids, ctx = _ctx(p, v)
    assert DiversePositiveStrategy(max_sim=0.95).select(ctx, 2, 0).ids.tolist() == [ids[0], ids[2]]
    # the skipped item fills the batch when the ranking runs out
    assert DiversePositiveStrategy(max_sim=0.95).select(ctx, 4, 0).ids.tolist() == [ids[0], ids[2], ids[3], ids[1]]


def test_make_by_name():
    assert set(names()) == {"mixed", "diverse-positive", "seals:mixed", "seals:diverse-positive"}
    s = make("seals:mixed", seals_k=7)
    assert isinstance(s, SealsStrategy) and s.k == 7 and s.name == "seals:mixed"
    assert isinstance(make("diverse_positive"), DiversePositiveStrategy)
    assert make("entropy") is None and make("subsample:mixed") is None
