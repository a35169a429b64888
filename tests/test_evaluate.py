"""Metric functions of assay.evaluate: hand-computed values, scikit-learn, and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from assay import evaluate as E
from assay.errors import InputError


def _ap_brute(y: np.ndarray, s: np.ndarray) -> float:
    """AP = sum over distinct thresholds t (descending) of (R(t) - R(prev)) * P(t)."""
    total = y.sum()
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        sel = s >= t
        tp = (y & sel).sum()
        r, p = tp / total, tp / sel.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_average_precision_by_hand():
    # ranks: +, -, +, -  ->  P@1 = 1 at R = 1/2, P@3 = 2/3 at R = 1
    assert E.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a tie at the top shares one threshold: P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert E.average_precision([1, 0, 1], [0.5, 0.5, 0.1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert E.average_precision(np.array([True, False]), [0.2, 0.1]) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=1, max_size=30))
def test_average_precision_matches_sklearn_and_brute_force(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=np.float64) / 6.0
    if not y.any():
        with pytest.raises(InputError, match="at least one positive"):
            E.average_precision(y, s)
        return
    got = E.average_precision(y, s)
    assert got == pytest.approx(average_precision_score(y, s))
    assert got == pytest.approx(_ap_brute(y, s))


def test_average_precision_rejects_bad_input():
    with pytest.raises(InputError, match="one value per label"):
        E.average_precision([1, 0], [0.1])
    with pytest.raises(InputError, match="binary labels"):
        E.average_precision([2, 0], [0.1, 0.2])
    with pytest.raises(InputError, match="NaN"):
        E.average_precision([1, 0], [np.nan, 0.2])


def test_recall_and_mining_precision():
    assert E.recall(3, 10) == 0.3
    assert E.recall(0, 4) == 0.0
    with pytest.raises(InputError, match="cannot exceed"):
        E.recall(5, 4)
    with pytest.raises(InputError, match="total must be an integer >= 1"):
        E.recall(0, 0)
    assert E.mining_precision([1, 0, 0, 1]) == 0.5
    assert E.mining_precision(np.array([True, True, False])) == pytest.approx(2 / 3)
    assert E.mining_precision([]) is None


def test_ap_gain_per_1000():
    got = E.ap_gain_per_1000([100, 200, 400], [0.5, 0.6, 0.7])
    assert got == pytest.approx([1.0, 0.5])  # 0.1 per 100 labels, then 0.1 per 200 labels
    assert E.ap_gain_per_1000([100], [0.5]).size == 0
    with pytest.raises(InputError, match="strictly increasing"):
        E.ap_gain_per_1000([100, 100], [0.5, 0.6])
    with pytest.raises(InputError, match="one length"):
        E.ap_gain_per_1000([100, 200], [0.5])


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_cluster_positives_and_coverage():
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:3]  # three orthogonal directions
    group = np.repeat(np.arange(3), 20)
    X = _unit(centres[group] + 0.05 * rng.normal(size=(60, 6)))
    labels = E.cluster_positives(X, 3, seed=1)
    assert labels.shape == (60,) and set(labels.tolist()) == {0, 1, 2}
    # each true group is exactly one cluster
    assert all(len(set(labels[group == g].tolist())) == 1 for g in range(3))
    assert np.array_equal(labels, E.cluster_positives(X, 3, seed=1))  # seeded
    assert E.cluster_positives(X[:2], 10).shape == (2,)  # capped at the number of positives
    assert E.cluster_positives(X[:1], 10).tolist() == [0]
    assert E.coverage(labels[group == 0]) == 1
    assert E.coverage(labels[::7]) == 3
    assert E.coverage(np.array([0, 2, 2, 5])) == 3
    assert E.coverage(np.array([], dtype=np.int64)) == 0
    with pytest.raises(InputError, match="at least one positive"):
        E.cluster_positives(np.zeros((0, 4)), 3)


def test_novelty_hits_by_hand():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    new = np.stack([e1, _unit(e1 + e2), e2])  # cosine to e1: 1, 0.707, 0
    assert E.novelty_hits(new, e1[None], 0.8).tolist() == [False, True, True]
    assert E.novelty_hits(new, e1[None], 0.7).tolist() == [False, False, True]
    assert E.novelty_hit_rate(new, e1[None], 0.8) == pytest.approx(2 / 3)
    # "every earlier positive": close to any one of them is not novel
    assert E.novelty_hits(new, np.stack([e1, e2]), 0.8).tolist() == [False, True, False]
    assert E.novelty_hits(new, np.zeros((0, 3)), 0.5).all()  # nothing earlier: all novel
    assert E.novelty_hit_rate(np.zeros((0, 3)), e1[None], 0.5) is None
    with pytest.raises(InputError, match="threshold"):
        E.novelty_hits(new, e1[None], 1.5)
    with pytest.raises(InputError, match="dimension 3"):
        E.novelty_hits(new, np.ones((1, 4)), 0.5)


def test_nearest_other_similarity_leaves_out_the_row_itself():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    got = E.nearest_other_similarity(np.stack([e1, e1, e2]))
    assert got.tolist() == pytest.approx([1.0, 1.0, 0.0])
    rng = np.random.default_rng(2)
    X = _unit(rng.normal(size=(50, 8)))
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    assert E.nearest_other_similarity(X) == pytest.approx(S.max(axis=1), abs=1e-5)
    with pytest.raises(InputError, match="at least 2"):
        E.nearest_other_similarity(X[:1])


def test_labels_to_reach_and_mean():
    assert E.labels_to_reach([100, 200, 300], [0.1, 0.5, 0.8], 0.5) == 200
    assert E.labels_to_reach([100, 200, 300], [0.1, 0.5, 0.8], 0.9) is None
    assert E.mean_ignoring_none([1.0, None, 3.0, float("nan")]) == 2.0
    assert E.mean_ignoring_none([None]) is None


def test_nearest_other_similarity_stays_a_cosine_for_near_identical_float16_rows():
    from assay.evaluate import nearest_other_similarity

    rng = np.random.default_rng(0)
    v = rng.normal(size=(1, 64))
    v /= np.linalg.norm(v)
    rows = np.repeat(v, 6, axis=0).astype(np.float16)  # copies stored at rest as float16: inner products > 1
    sims = nearest_other_similarity(rows)
    assert (sims <= 1.0).all() and (sims > 0.999).all()  # usable as the default novelty threshold
