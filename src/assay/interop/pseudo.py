"""Pseudo-labels: the items the final model is sure about, at a threshold chosen for a target precision.

The threshold is chosen on **out-of-fold** predictions: the labelled items are split into ``folds``
stratified folds, a proxy is trained on all but one fold and predicts the held-out one, so every labelled
item gets a probability from a model that never saw it (:func:`oof_predictions`). On those predictions,
:func:`threshold_for_precision` picks the lowest threshold ``t`` whose estimated precision, the share of
positives among the labelled items with ``p >= t``, reaches the target: the largest pseudo-labelled set the
labels vouch for. The estimate is reported with the number of labelled items it rests on and a Wilson 95 %
lower bound, because a precision measured on 12 items is not one measured on 1,200.

The final proxy (trained on every label) then scores the corpus, and every item with ``p >= t`` that has
no human, oracle or imported label gets a label with source ``pseudo`` (value 1). Pseudo-labels never
overwrite or mix with human labels: labelled items are skipped, ``Catalog.current_labels`` leaves pseudo
rows out unless asked, the proxy trains on them only when asked (``include_pseudo``), and every export can
leave them out (``--no-pseudo``).

Caveats, stated in the report's docs (docs/interop.md): labels gathered by active learning over-represent
hard and positive items, so the precision on the labelled set is an estimate for the corpus, not a
guarantee; fold models see a fifth fewer labels than the final model, which makes the estimate slightly
pessimistic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["oof_predictions", "threshold_for_precision", "PrecisionThreshold", "PseudoReport", "pseudo_label"]


def oof_predictions(X: Any, y: Any, *, proxy: str = "logistic", folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(positive) for each labelled row: ``X [n, dim]``, ``y [n]`` -> ``[n]`` float64.

    Stratified ``folds``-fold (fewer when a class has fewer items; at least 2 per class needed).
    """
    from sklearn.model_selection import StratifiedKFold

    from ..loop import make_proxy

    X = np.asarray(X, dtype=np.float32)  # [n, dim]
    y = np.asarray(y).astype(np.int64)  # [n]
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise InputError(f"X must be [n, dim] and y [n], got shapes {X.shape} and {y.shape}")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise InputError(f"folds must be an integer >= 2, got {folds!r}")
    k = min(folds, n_pos, n_neg)
    if k < 2:
        raise InputError(
            f"out-of-fold predictions need at least 2 labelled items of each class, got {n_pos} positive and {n_neg} negative"
        )
    out = np.empty(y.shape[0], dtype=np.float64)  # [n]
    for f, (tr, te) in enumerate(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y)):
        if y[tr].min() == y[tr].max():  # pragma: no cover - stratification keeps both classes
            raise InputError("a training fold lacks a class; label more items")
        model = make_proxy(proxy, seed=seed + f).fit(X[tr], y[tr])
        out[te] = model.predict_proba(X[te])  # [n_te]
    return out


@dataclass(frozen=True)
class PrecisionThreshold:
    """The outcome of :func:`threshold_for_precision`."""

    threshold: float
    precision: float  # positives / items among the labelled items with p >= threshold
    precision_lower95: float  # Wilson score interval, lower end
    support: int  # labelled items with p >= threshold
    recall: float  # share of labelled positives with p >= threshold


def _wilson_lower(k: int, n: int, z: float = 1.959963984540054) -> float:
    if n == 0:
        return 0.0
    p = k / n
    den = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / den)


def threshold_for_precision(proba: Any, y: Any, target: float, *, min_support: int = 1) -> PrecisionThreshold:
    """The lowest threshold ``t`` with ``precision(p >= t) >= target`` on labelled predictions.

    Parameters
    ----------
    proba : float [n]
        Predicted P(positive) of labelled items (out-of-fold, for an honest estimate).
    y : int [n] in {0, 1}
    target : float in (0, 1]
    min_support : int
        Thresholds that keep fewer labelled items than this are not considered.

    Raises
    ------
    InputError
        When no threshold reaches the target (the message gives the best precision there is).
    """
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise InputError(f"proba and y must be aligned non-empty 1-D arrays, got shapes {p.shape} and {y.shape}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise InputError(f"target precision must be in (0, 1], got {target!r}")
    order = np.argsort(-p, kind="stable")  # [n] most confident first
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)  # [n] positives among the top k+1
    k = np.arange(1, p.size + 1)  # [n]
    last = np.r_[ps[1:] != ps[:-1], True]  # [n] the last index of each run of equal p (a valid cut)
    prec = tp / k  # [n]
    ok = last & (prec >= target - 1e-12) & (k >= min_support)
    if not ok.any():
        valid = last & (k >= min_support)
        best = float(prec[valid].max()) if valid.any() else 0.0
        raise InputError(
            f"no threshold reaches precision {target} on the labelled data (the best is {best:.3f}); "
            "lower --target-precision or label more items"
        )
    i = int(np.flatnonzero(ok)[-1])  # the lowest threshold: the largest set
    n_pos = int(ys.sum())
    return PrecisionThreshold(
        threshold=float(ps[i]), precision=float(prec[i]), precision_lower95=_wilson_lower(int(tp[i]), int(k[i])),
        support=int(k[i]), recall=float(tp[i] / n_pos) if n_pos else 0.0,
    )


@dataclass
class PseudoReport:
    concept: str
    target_precision: float
    threshold: float
    estimated_precision: float
    precision_lower95: float
    support: int
    estimated_recall: float
    labelled_positive: int
    labelled_negative: int
    scored: int
    above_threshold: int
    skipped_labelled: int
    already_pseudo: int
    written: int
    proxy: str
    folds: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pseudo_label(
    ws: Any, concept: str, *, target_precision: float = 0.95, proxy: str = "logistic", folds: int = 5,
    encoder: str | None = None, include_pseudo: bool = False, max_items: int | None = None, min_support: int = 5,
    dry_run: bool = False, seed: int = 0, annotator: str | None = None,
) -> PseudoReport:
    """Pseudo-label ``concept``'s sure items at a threshold chosen for ``target_precision`` (see the module doc).

    Parameters
    ----------
    ws : Workspace
    target_precision : float in (0, 1]
    proxy : str
        The proxy model (as in the loop: ``logistic``, ``mlp``, ``ensemble``, ``svm``).
    folds : int
        Folds for the out-of-fold estimate.
    include_pseudo : bool
        Train on earlier pseudo-labels as well (off by default; the threshold is still chosen on
        predictions of the labels used for training).
    max_items : int, optional
        Write at most this many (the highest-scoring).
    min_support : int
        A threshold must keep at least this many labelled items (default 5): a "precision" over one or
        two items is no estimate.
    dry_run : bool
        Report the threshold and counts, write nothing.
    """
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items <= 0):
        raise InputError(f"max_items must be a positive integer, got {max_items!r}")
    from ..catalog import Catalog
    from ..loop import make_proxy

    if annotator is not None:  # checked before the model is trained, not when the labels are written
        Catalog.check_annotator(Catalog.named(annotator))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    cat = ws.catalog
    c = cat.concept(concept)
    store = ws.vectors(encoder)
    train_ids, train_y = cat.current_labels(c.id, include_pseudo=include_pseudo)
    in_store = store.contains(train_ids) if len(train_ids) else np.zeros(0, dtype=bool)
    train_ids, train_y = train_ids[in_store], train_y[in_store]
    n_pos, n_neg = int((train_y == 1).sum()), int((train_y == 0).sum())
    if n_pos < 2 or n_neg < 2:
        raise InputError(
            f"concept {concept!r} needs at least 2 positive and 2 negative labels for pseudo-labelling "
            f"(has {n_pos} positive, {n_neg} negative)"
        )
    X = store.get(train_ids, dtype=np.float32)  # [L, dim]
    oof = oof_predictions(X, train_y, proxy=proxy, folds=folds, seed=seed)  # [L]
    thr = threshold_for_precision(oof, train_y, target_precision, min_support=min(min_support, n_pos))
    model = make_proxy(proxy, seed=seed).fit(X, train_y)
    ids_parts, p_parts = [], []
    for ids, vecs in store.iter_shards():
        if len(ids):
            ids_parts.append(np.asarray(ids, dtype=np.int64))
            p_parts.append(model.predict_proba(vecs))  # [n_shard]
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
    probs = np.concatenate(p_parts) if p_parts else np.zeros(0)
    above = probs >= thr.threshold
    cand, cp = ids[above], probs[above]
    human_ids, _ = cat.current_labels(c.id, include_pseudo=False)
    is_labelled = np.isin(cand, human_ids)
    # Items whose latest pseudo-label is already positive are not written again.
    latest_pseudo: dict[int, tuple[int, int]] = {}
    for h in cat.label_history(c.id):
        if h["source"] == "pseudo":
            prev = latest_pseudo.get(int(h["item_id"]))
            if prev is None or int(h["id"]) > prev[0]:
                latest_pseudo[int(h["item_id"])] = (int(h["id"]), int(h["value"]))
    already = np.asarray([latest_pseudo.get(int(i), (0, 0))[1] == 1 for i in cand.tolist()], dtype=bool)
    keep = ~is_labelled & ~already
    new_ids, new_p = cand[keep], cp[keep]
    order = np.argsort(-new_p, kind="stable")
    new_ids = new_ids[order]
    if max_items is not None:
        new_ids = new_ids[:max_items]
    written = 0
    if not dry_run and len(new_ids):
        who = annotator or f"pseudo:{proxy}:p>={thr.threshold:.4f}@{target_precision}"
        written = cat.add_labels(c.id, new_ids, np.ones(len(new_ids), dtype=np.int64), source="pseudo", annotator=who[:200])
    return PseudoReport(
        concept=concept, target_precision=float(target_precision), threshold=thr.threshold,
        estimated_precision=thr.precision, precision_lower95=thr.precision_lower95, support=thr.support,
        estimated_recall=thr.recall, labelled_positive=n_pos, labelled_negative=n_neg, scored=int(ids.size),
        above_threshold=int(above.sum()), skipped_labelled=int(is_labelled.sum()), already_pseudo=int((already & ~is_labelled).sum()),
        written=int(written), proxy=proxy, folds=int(folds), dry_run=bool(dry_run),
    )
