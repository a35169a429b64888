"""A kernel proxy: an RBF-kernel support vector machine on embeddings, Platt-calibrated.

A linear proxy is the right default (cheap, and its weight vector turns harvesting into a maximum
inner-product search), but on a rare concept whose positives do not sit on one side of a hyperplane it
stops finding them early: on CIFAR-10 with efficientnet-lite0 embeddings even a logistic regression
trained on *every* training label finds only ~72 % of a 0.5 %-prevalence concept in its top 900 items
(docs/mining.md). An RBF kernel bends the boundary around the found positives with no more labels, and
with ~1,000 labels it costs little: the kernel between labelled items is one ``[n, dim] x [dim, n]``
product, handed to libsvm as a precomputed kernel; scoring a block of the pool is one
``[block, dim] x [dim, n_support]`` product.

The interface is that of :mod:`assay.learn` (``fit(X, y)``, ``predict_proba(X) -> [n]``), so the
mining loop, the strategies and the simulator use it as they use :class:`~assay.learn.LogisticProxy`.

References: Cortes & Vapnik (1995), support-vector networks; Platt (1999), probabilistic outputs for
SVMs (out-of-fold decision values, smoothed targets), as in :func:`assay.learn.platt_scaling`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from .errors import InputError

__all__ = ["KernelSVMProxy", "rbf_kernel"]

_BLOCK = 8192


def rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float, *, b_sq: np.ndarray | None = None) -> np.ndarray:
    """``exp(-gamma * ||a - b||^2)`` for every row pair: ``[n_a, n_b]`` float64 (float32 products).

    Parameters
    ----------
    A : [n_a, dim], B : [n_b, dim]
    gamma : float > 0
    b_sq : [n_b], optional
        Precomputed squared norms of ``B``'s rows.
    """
    A = np.ascontiguousarray(A, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    a_sq = np.einsum("ij,ij->i", A, A, dtype=np.float64)  # [n_a]
    if b_sq is None:
        b_sq = np.einsum("ij,ij->i", B, B, dtype=np.float64)  # [n_b]
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (A @ B.T).astype(np.float64)  # [n_a, n_b]
    np.maximum(d2, 0.0, out=d2)
    return np.exp(-gamma * d2)


class KernelSVMProxy:
    """RBF-kernel SVM with balanced class weights and Platt-calibrated probabilities.

    ``gamma="scale"`` is scikit-learn's ``1 / (dim * X.var())`` on the labelled vectors, times
    ``gamma_scale``. Calibration as in :class:`~assay.learn.LogisticProxy`: ``"auto"`` fits Platt's
    sigmoid on ``cv``-fold out-of-fold decision values when each class has at least ``min_per_class``
    labels, else uses ``sigmoid(decision)`` (the decision boundary maps to 0.5). Ranking never depends on
    calibration: a fitted slope that would invert it (out-of-fold decision values anti-correlated with the
    labels, which happens with a dozen positives) is rejected and ``sigmoid(decision)`` used instead.

    Parameters
    ----------
    C : float
        Soft-margin penalty.
    gamma : "scale" or float
    gamma_scale : float
        Multiplies ``gamma`` (handy with ``"scale"``).
    class_weight : "balanced" or None
    calibration : {"auto", "sigmoid", "none"}
    cv : int
    min_per_class : int
    random_state : int
        Seeds the calibration folds.
    block_size : int
        Rows scored per kernel block at prediction time.

    Attributes
    ----------
    support_vectors_ : [n_support, dim] float32
    dual_coef_ : [n_support] float64
    intercept_ : float
    gamma_ : float
    platt_ : (A, B) or None
    calibration_ : str
    n_features_in_, n_positive_, n_negative_ : int
    """

    def __init__(
        self,
        *,
        C: float = 1.0,
        gamma: str | float = "scale",
        gamma_scale: float = 1.0,
        class_weight: str | None = "balanced",
        calibration: str = "auto",
        cv: int = 3,
        min_per_class: int = 10,
        random_state: int = 0,
        block_size: int = _BLOCK,
    ) -> None:
        self.C = C
        self.gamma = gamma
        self.gamma_scale = gamma_scale
        self.class_weight = class_weight
        self.calibration = calibration
        self.cv = cv
        self.min_per_class = min_per_class
        self.random_state = random_state
        self.block_size = block_size

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        if not isinstance(self.C, (int, float)) or not self.C > 0:
            raise InputError(f"C must be a positive number, got {self.C!r}")
        if not (self.gamma == "scale" or (isinstance(self.gamma, (int, float)) and self.gamma > 0)):
            raise InputError(f"gamma must be 'scale' or a positive number, got {self.gamma!r}")
        if not isinstance(self.gamma_scale, (int, float)) or not self.gamma_scale > 0:
            raise InputError(f"gamma_scale must be a positive number, got {self.gamma_scale!r}")
        if self.class_weight not in ("balanced", None):
            raise InputError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if self.calibration not in ("auto", "sigmoid", "none"):
            raise InputError(f"calibration must be one of 'auto', 'sigmoid', 'none', got {self.calibration!r}")
        for name in ("cv", "min_per_class", "block_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (2 if name != "block_size" else 1):
                raise InputError(f"{name} must be an integer >= {2 if name != 'block_size' else 1}, got {v!r}")

    def _svc(self, K: np.ndarray, y: np.ndarray):
        from sklearn.svm import SVC

        return SVC(C=float(self.C), kernel="precomputed", class_weight=self.class_weight).fit(K, y)

    def fit(self, X: Any, y: Any) -> KernelSVMProxy:
        """Fit on labelled embeddings ``X [n, dim]`` and labels ``y [n]`` in {0, 1}."""
        from sklearn.model_selection import StratifiedKFold

        from .learn import _check_Xy, calibration_method, platt_keeping_ranking

        self._check_params()
        X, y, n_pos, n_neg = _check_Xy(X, y)  # [n, dim] float32, [n] int64
        var = float(X.var())
        gamma = (1.0 / (X.shape[1] * var) if var > 0 else 1.0) if self.gamma == "scale" else float(self.gamma)
        gamma *= float(self.gamma_scale)
        K = rbf_kernel(X, X, gamma)  # [n, n]
        svc = self._svc(K, y)
        sv = svc.support_  # [n_support] rows of X
        self.support_vectors_ = np.ascontiguousarray(X[sv])  # [n_support, dim]
        self._sv_sq = np.einsum("ij,ij->i", self.support_vectors_, self.support_vectors_, dtype=np.float64)
        self.dual_coef_ = svc.dual_coef_[0].astype(np.float64)  # [n_support]; decision > 0 means class 1
        self.intercept_ = float(svc.intercept_[0])
        self.gamma_ = gamma
        method = calibration_method(self.calibration, n_pos, n_neg, self.min_per_class, self.cv)
        self.platt_ = None
        if method == "sigmoid":
            oof = np.empty(y.size, dtype=np.float64)  # [n] out-of-fold decision values
            folds = StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
            for tr, te in folds.split(K, y):
                m = self._svc(K[np.ix_(tr, tr)], y[tr])
                oof[te] = m.decision_function(K[np.ix_(te, tr)])
            self.platt_ = platt_keeping_ranking(oof, y)
            if self.platt_ is None:
                method = "none"
        self.calibration_ = method
        self.n_positive_, self.n_negative_ = n_pos, n_neg
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    # ------------------------------------------------------------------ prediction
    def decision_function(self, X: Any) -> np.ndarray:
        """The SVM's decision value ``sum_i a_i K(sv_i, x) + b`` per row of ``X [n, dim]``: ``[n]`` float64."""
        from .learn import _blockwise, _check_fitted, _check_X

        _check_fitted(self, "dual_coef_")
        X = _check_X(X, dim=self.n_features_in_, load=False)

        def score(blk: np.ndarray) -> np.ndarray:  # [b, dim] float32 -> [b]
            K = rbf_kernel(blk, self.support_vectors_, self.gamma_, b_sq=self._sv_sq)  # [b, n_support]
            return K @ self.dual_coef_ + self.intercept_

        return _blockwise(X, score, self.block_size)

    def predict_proba(self, X: Any) -> np.ndarray:
        """P(positive) per row of ``X [n, dim]``: ``[n]`` float64 (Platt sigmoid, or sigmoid of the decision)."""
        f = self.decision_function(X)
        if self.platt_ is None:
            return expit(f)
        A, B = self.platt_
        return expit(-(A * f + B))
