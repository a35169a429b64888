"""Pseudo-labels: the out-of-fold threshold for a target precision, and labels that never mix with human ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_interop_common import cli_app, label_some, make_ws, runner, truth

from assay.errors import InputError
from assay.interop.pseudo import oof_predictions, pseudo_label, threshold_for_precision
from assay.loop import Miner


def _brute_threshold(p, y, target, min_support):
    best = None
    for t in sorted(set(p.tolist())):
        sel = p >= t
        k = int(sel.sum())
        if k >= min_support and y[sel].mean() >= target - 1e-12:
            best = (t, y[sel].mean(), k)
            break  # ascending: the first qualifying t is the lowest
    return best


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1)), min_size=1, max_size=40),
    st.sampled_from([0.5, 0.8, 0.9, 1.0]),
    st.integers(1, 4),
)
def test_threshold_matches_brute_force(pairs, target, min_support):
    p = np.asarray([a / 20 for a, _ in pairs])  # ties on purpose
    y = np.asarray([b for _, b in pairs])
    want = _brute_threshold(p, y, target, min_support)
    if want is None:
        with pytest.raises(InputError, match="no threshold reaches precision"):
            threshold_for_precision(p, y, target, min_support=min_support)
        return
    got = threshold_for_precision(p, y, target, min_support=min_support)
    assert got.threshold == want[0] and got.precision == pytest.approx(want[1]) and got.support == want[2]
    assert 0 <= got.precision_lower95 <= got.precision
    assert got.recall == pytest.approx(y[p >= got.threshold].sum() / max(y.sum(), 1))


def test_threshold_validation():
    with pytest.raises(InputError, match="target precision"):
        threshold_for_precision([0.5], [1], 0.0)
    with pytest.raises(InputError, match="aligned"):
        threshold_for_precision([0.5, 0.2], [1], 0.9)


def test_oof_predictions_are_out_of_fold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.r_[np.ones(20), np.zeros(20)].astype(int)
    X[y == 1, 0] += 3.0
    oof = oof_predictions(X, y, folds=4, seed=0)
    assert oof.shape == (40,) and ((oof >= 0) & (oof <= 1)).all()
    # A lone outlier labelled against its cluster: in-sample fits can bend towards it, out-of-fold cannot.
    y2 = y.copy()
    y2[0] = 0
    X2 = X.copy()
    X2[0] = X[1] + 0.01  # a twin of a positive, labelled negative
    oof2 = oof_predictions(X2, y2, folds=4, seed=0)
    assert oof2[0] > 0.5  # its held-out model calls it positive, like its twin
    with pytest.raises(InputError, match="at least 2 labelled items of each class"):
        oof_predictions(X[:3], np.array([1, 0, 0]))
    with pytest.raises(InputError, match="folds"):
        oof_predictions(X, y, folds=1)


@pytest.fixture
def ws(tmp_path):
    w = make_ws(tmp_path, n_red=16, n_other=40)
    yield w
    w.close()


def test_pseudo_label_writes_only_unlabelled_sure_items(ws):
    t = truth(ws)
    human_ids, _ = label_some(ws, n_pos=8, n_neg=24)
    c = ws.catalog.concept("red")
    dry = pseudo_label(ws, "red", target_precision=0.9, folds=4, dry_run=True)
    assert dry.written == 0 and len(ws.catalog.label_history(c.id)) == len(human_ids)
    rep = pseudo_label(ws, "red", target_precision=0.9, folds=4)
    assert rep.estimated_precision >= 0.9 and rep.support >= 5 and 0 < rep.threshold < 1
    assert rep.labelled_positive == 8 and rep.labelled_negative == 24 and rep.written > 0
    assert rep.written == rep.above_threshold - rep.skipped_labelled
    pseudo = [h for h in ws.catalog.label_history(c.id) if h["source"] == "pseudo"]
    assert len(pseudo) == rep.written and all(h["value"] == 1 for h in pseudo)
    assert not {h["item_id"] for h in pseudo} & set(human_ids.tolist())  # never on a human-labelled item
    assert sum(t[h["item_id"]] for h in pseudo) / len(pseudo) >= 0.9  # the red items, in fact
    # current labels leave pseudo rows out unless asked
    ids, _ = ws.catalog.current_labels(c.id)
    assert sorted(ids.tolist()) == sorted(human_ids.tolist())
    ids_all, _ = ws.catalog.current_labels(c.id, include_pseudo=True)
    assert len(ids_all) == len(human_ids) + rep.written
    # running again writes nothing new
    again = pseudo_label(ws, "red", target_precision=0.9, folds=4)
    assert again.written == 0 and again.already_pseudo == rep.written
    # the proxy trains without pseudo-labels unless asked
    m = Miner(ws, "red")
    row, _ = m.propose(strategy="entropy", batch=3, seed=0)
    assert row.proxy["n_positive"] == 8
    row2, _ = m.propose(strategy="entropy", batch=3, seed=0, include_pseudo=True)
    assert row2.proxy["n_positive"] == 8 + rep.written and row2.params["include_pseudo"] is True


def test_pseudo_label_errors(ws):
    label_some(ws, n_pos=1, n_neg=5)
    with pytest.raises(InputError, match="at least 2 positive and 2 negative"):
        pseudo_label(ws, "red")
    with pytest.raises(InputError, match="max_items"):
        pseudo_label(ws, "red", max_items=0)


def test_pseudo_label_unreachable_target(ws):
    t = truth(ws)
    c = ws.catalog.add_concept("red")
    # noisy labels: half of the "positives" are other-coloured items
    red = [i for i, v in sorted(t.items()) if v][:6]
    other = [i for i, v in sorted(t.items()) if not v]
    ids = red + other[:6] + other[6:20]
    vals = [1] * 12 + [0] * 14
    ws.catalog.add_labels(c.id, ids, vals, source="human")
    with pytest.raises(InputError, match="no threshold reaches precision 1.0"):
        pseudo_label(ws, "red", target_precision=1.0, folds=3, min_support=12)


def test_cli_pseudo_label(ws):
    label_some(ws, n_pos=8, n_neg=24)
    r = runner.invoke(cli_app(), ["pseudo-label", "red", "--target-precision", "0.9", "--folds", "4", "--max-items", "3",
                                  "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["written"] == 3 and d["estimated_precision"] >= 0.9 and "threshold" in d
    r = runner.invoke(cli_app(), ["pseudo-label", "red", "--dry-run", "-w", str(ws.root)])
    assert r.exit_code == 0 and "estimated precision" in r.output
