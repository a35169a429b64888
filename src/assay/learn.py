"""Proxy models on embeddings: the cheap classifiers that score the pool each round.

All models share one small interface (scikit-learn conventions: keyword-only constructors that only
store parameters, validation in ``fit``, fitted state in attributes ending in ``_``)::

    model.fit(X [n, d], y [n] in {0, 1}) -> model
    model.predict_proba(X [n, d]) -> [n] float64, P(positive)

``X`` may be float16 (at rest, an ``np.memmap``) or float32; prediction converts it to float32
``block_size`` rows at a time, so a whole corpus can be scored without a float32 copy.

Models
    :class:`LogisticProxy` — logistic regression with ``class_weight="balanced"`` and Platt-calibrated
    probabilities; a single linear function, so :meth:`LogisticProxy.linear_weights` gives the harvest
    step a vector for a maximum-inner-product search. :class:`BootstrapEnsemble` — ``m`` models on
    stratified bootstrap resamples, ``[m, n]`` probabilities for disagreement (BALD, vote entropy).
    :class:`MLPProxy` — a small multilayer perceptron (scikit-learn ``MLPClassifier``).

One labelled class only
    Every model raises :class:`~assay.errors.InputError` when the labels hold a single class: no
    classifier can be fitted, and a constant guess would make every uncertainty score meaningless.
    The documented fallback is on the caller's side: select by relevance alone (the
    ``most-likely-positive`` strategy without a proxy uses the text-query / exemplar similarity)
    until both classes have been labelled.

Selection via Proxy (Coleman et al., ICLR 2020)
    A cheap proxy chooses the items every round; the expensive target model is trained only at
    checkpoints or at the end, on the labels the proxy gathered. :class:`SelectionViaProxy` is that
    schedule in a dozen lines.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.special import expit

from assay.errors import InputError

__all__ = [
    "ProbabilisticModel",
    "LogisticProxy",
    "BootstrapEnsemble",
    "MLPProxy",
    "SelectionViaProxy",
    "ProxyRound",
    "platt_scaling",
    "proba_fn",
    "ensemble_proba_fn",
]

_BLOCK = 65_536


class ProbabilisticModel(Protocol):
    """The interface strategies and the loop rely on."""

    def fit(self, X: Any, y: Any) -> "ProbabilisticModel": ...

    def predict_proba(self, X: Any) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_X(X: Any, *, dim: int | None = None, load: bool = True) -> Any:
    shape = getattr(X, "shape", None)
    if shape is None:
        X = np.asarray(X)
        shape = X.shape
    if len(shape) != 2:
        raise InputError(f"X must be a 2-D array [n_items, dim], got shape {tuple(shape)}")
    if np.dtype(X.dtype).kind != "f":
        raise InputError(f"X must be float16/float32/float64 embeddings, got dtype {X.dtype}")
    if dim is not None and shape[1] != dim:
        raise InputError(f"X must have {dim} features (as in fit), got shape {tuple(shape)}")
    if not load:
        return X
    arr = np.ascontiguousarray(X, dtype=np.float32)  # [n, dim]
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise InputError(f"X contains {n_bad} NaN or infinite value(s); expected finite embeddings")
    return arr


def _check_Xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    X = _check_X(X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise InputError(f"y must be [n] labels, one per row of X ({X.shape[0]}), got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuf" or not np.all(np.isin(y, (0, 1))):
        raise InputError("y must hold binary labels 0 (negative) and 1 (positive)")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"a proxy model needs both classes labelled, got {n_pos} positive and {n_neg} negative; "
            "select by relevance only (most-likely-positive from a query or exemplars) until both exist"
        )
    return X, y, n_pos, n_neg


def _check_int(val: Any, name: str, minimum: int = 1) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {val!r}")
    return int(val)


def _check_fitted(model: Any, attr: str) -> None:
    if not hasattr(model, attr):
        raise InputError(f"{type(model).__name__} is not fitted yet; call fit(X, y) first")


def _blockwise(X: Any, fn: Callable[[np.ndarray], np.ndarray], block_size: int, width: int | None = None):
    n = X.shape[0]
    out = np.empty((n,) if width is None else (width, n), dtype=np.float64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        blk = np.ascontiguousarray(X[start:stop], dtype=np.float32)  # [block, dim] float16 -> float32
        if width is None:
            out[start:stop] = fn(blk)  # [block]
        else:
            out[:, start:stop] = fn(blk)  # [width, block]
    return out


def calibration_method(requested: str, n_pos: int, n_neg: int, min_per_class: int, cv: int) -> str:
    """``"sigmoid"`` or ``"none"`` for a requested calibration (``"auto"``: sigmoid with at least
    ``max(min_per_class, cv)`` labels per class); a forced sigmoid needs ``cv`` labels per class."""
    method = requested
    if method == "auto":
        method = "sigmoid" if min(n_pos, n_neg) >= max(min_per_class, cv) else "none"
    if method == "sigmoid" and min(n_pos, n_neg) < cv:
        raise InputError(
            f"calibration='sigmoid' needs at least cv={cv} labels per class, "
            f"got {n_pos} positive and {n_neg} negative"
        )
    return method


def platt_keeping_ranking(oof: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Platt's ``(A, B)`` on out-of-fold decision values, or None when the slope is ``A >= 0``.

    With few positives the out-of-fold values can fail to separate the classes (even anti-correlate with
    the labels); a sigmoid with ``A >= 0`` would then reverse the ranking, so the caller keeps the raw model.
    """
    A, B = platt_scaling(oof, y)
    return (A, B) if A < 0 else None


# --------------------------------------------------------------------------------------------
# Small problems: one BLAS thread
# --------------------------------------------------------------------------------------------


def _small_blas(X: Any, limit: int = 20_000_000):
    """A context that runs BLAS on one thread while fitting a small model on ``X``.

    L-BFGS on a few thousand labelled rows makes many tiny BLAS calls; with a multi-threaded BLAS each
    one wakes the pool, and on a busy machine that dominated the fit (measured on 2 cores: a 700-label
    logistic fit with out-of-fold Platt scaling took 0.49 s threaded, 0.14 s single-threaded). Large
    ``X`` keeps the default threading.
    """
    import contextlib

    size = getattr(X, "size", None)
    if size is None or size > limit:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------------
# Platt scaling
# --------------------------------------------------------------------------------------------


def platt_scaling(decision: Any, y: Any) -> tuple[float, float]:
    """Fit Platt's sigmoid ``P(y=1 | f) = 1 / (1 + exp(A f + B))`` to decision values.

    Platt (1999), with his smoothed targets ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)`` that keep the
    fit finite on separable data; the same objective and start point as scikit-learn's
    ``CalibratedClassifierCV(method="sigmoid")``.

    Parameters
    ----------
    decision : array [n]
        Out-of-fold decision values.
    y : array [n] in {0, 1}

    Returns
    -------
    (A, B) : floats
    """
    from scipy.optimize import minimize

    F = np.asarray(decision, dtype=np.float64)  # [n]
    y = np.asarray(y)
    prior1 = float(np.sum(y > 0))
    prior0 = float(y.size - prior1)
    T = np.where(y > 0, (prior1 + 1.0) / (prior1 + 2.0), 1.0 / (prior0 + 2.0))  # [n] smoothed targets
    scale = max(1.0, float(np.abs(F).max())) if np.abs(F).max() >= 30 else 1.0
    Fs = F / scale  # [n]

    def loss_grad(AB: np.ndarray) -> tuple[float, np.ndarray]:
        z = AB[0] * Fs + AB[1]  # [n]; P(y=1) = sigmoid(-z)
        loss = float(np.sum(T * np.logaddexp(0.0, z) + (1.0 - T) * np.logaddexp(0.0, -z)))
        g = expit(z) - (1.0 - T)  # [n]: d loss / d z
        return loss, np.array([g @ Fs, g.sum()])

    x0 = np.array([0.0, np.log((prior0 + 1.0) / (prior1 + 1.0))])
    res = minimize(
        loss_grad, x0, method="L-BFGS-B", jac=True, options={"gtol": 1e-6, "ftol": 64 * np.finfo(float).eps}
    )
    return float(res.x[0] / scale), float(res.x[1])


# --------------------------------------------------------------------------------------------
# logistic regression
# --------------------------------------------------------------------------------------------


class LogisticProxy:
    """Class-weighted, Platt-calibrated logistic regression on embeddings.

    ``class_weight="balanced"`` lets a rare concept (a few positives among many negatives) shape the
    boundary instead of being drowned; it also shifts the raw probabilities towards the positive
    class (the model behaves as if the prior were 1/2). Platt scaling on **out-of-fold** decision
    values (stratified ``cv``-fold) maps the decision value back to probabilities that match the
    labelled data's class balance. This is what ``CalibratedClassifierCV(method="sigmoid",
    ensemble=False)`` does; it is done here directly so that the calibrated model stays one linear
    function ``sigmoid(x . w + b)``: :meth:`linear_weights` hands the harvest step an exact vector
    for a maximum-inner-product search, and the calibrated ranking equals the uncalibrated one.

    Calibration ``"auto"`` uses Platt scaling only when each class has at least ``min_per_class``
    labels (default 10). Below that, a 2-parameter sigmoid fitted on ``cv`` folds of three or four
    positives is noisier than the balanced model's own probabilities, so the model is left
    uncalibrated (``calibration_ == "none"``): fine for ranking and for uncertainty sampling, which
    then centres on the balanced decision boundary. ``"sigmoid"`` forces Platt scaling (it needs at
    least ``cv`` labels per class); ``"none"`` skips it.

    Note that labels gathered by active learning over-represent positives, so calibrated
    probabilities reflect the labelled set's balance, not the corpus prevalence.

    Parameters
    ----------
    C : float
        Inverse L2 regularisation strength.
    class_weight : "balanced" or None
    calibration : {"auto", "sigmoid", "none"}
    cv : int
        Folds for the out-of-fold decision values.
    min_per_class : int
        Labels per class needed for ``calibration="auto"`` to calibrate.
    max_iter : int
    random_state : int
        Seeds the fold shuffling.
    block_size : int
        Rows per float32 block at prediction time.

    Attributes
    ----------
    coef_ : ndarray [dim] float64
        Calibrated weights: ``predict_proba(X) == sigmoid(X @ coef_ + intercept_)``.
    intercept_ : float
    base_coef_, base_intercept_ :
        The logistic regression's own weights, before calibration.
    calibration_ : str
        ``"sigmoid"`` or ``"none"``: what was applied.
    platt_ : tuple (A, B) or None
    n_positive_, n_negative_, n_features_in_ : int
    """

    def __init__(
        self,
        *,
        C: float = 1.0,
        class_weight: str | None = "balanced",
        calibration: str = "auto",
        cv: int = 3,
        min_per_class: int = 10,
        max_iter: int = 1000,
        random_state: int = 0,
        block_size: int = _BLOCK,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.calibration = calibration
        self.cv = cv
        self.min_per_class = min_per_class
        self.max_iter = max_iter
        self.random_state = random_state
        self.block_size = block_size

    def _make_lr(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter)

    def fit(self, X: Any, y: Any) -> "LogisticProxy":
        """Fit on ``X [n, dim]``, ``y [n]`` in {0, 1} (BLAS single-threaded: see :func:`_small_blas`)."""
        with _small_blas(X):
            return self._fit(X, y)

    def _fit(self, X: Any, y: Any) -> "LogisticProxy":
        """Fit on labelled embeddings ``X [n, dim]`` and labels ``y [n]`` in {0, 1}."""
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise InputError(f"C must be a positive number, got {self.C!r}")
        if self.class_weight not in ("balanced", None):
            raise InputError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if self.calibration not in ("auto", "sigmoid", "none"):
            raise InputError(
                f"calibration must be one of 'auto', 'sigmoid', 'none', got {self.calibration!r}"
            )
        cv = _check_int(self.cv, "cv", 2)
        min_per_class = _check_int(self.min_per_class, "min_per_class", 2)
        _check_int(self.block_size, "block_size")
        X, y, n_pos, n_neg = _check_Xy(X, y)
        lr = self._make_lr().fit(X, y)
        w = lr.coef_[0].astype(np.float64)  # [dim]
        b = float(lr.intercept_[0])
        method = calibration_method(self.calibration, n_pos, n_neg, min_per_class, cv)
        platt = None
        if method == "sigmoid":
            folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=self.random_state)
            oof = cross_val_predict(self._make_lr(), X, y, cv=folds, method="decision_function")  # [n]
            platt = platt_keeping_ranking(oof, y)
            if platt is None:
                method = "none"
        if platt is not None:
            A, B = platt
            # P = 1 / (1 + exp(A (x.w + b) + B)) = sigmoid(x.(-A w) + (-A b - B))
            self.coef_, self.intercept_ = -A * w, -A * b - B
            self.platt_ = (A, B)
        else:
            self.coef_, self.intercept_ = w, b
            self.platt_ = None
        self.base_coef_, self.base_intercept_ = w, b
        self.calibration_ = method
        self.n_positive_, self.n_negative_ = n_pos, n_neg
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Calibrated logit ``X @ coef_ + intercept_``: ``[n]`` float64 (blockwise float32)."""
        _check_fitted(self, "coef_")
        X = _check_X(X, dim=self.n_features_in_, load=False)
        w = self.coef_.astype(np.float32)  # [dim]
        return _blockwise(X, lambda blk: blk @ w, self.block_size) + self.intercept_  # [n]

    def predict_proba(self, X: Any) -> np.ndarray:
        """P(positive) for each row of ``X [n, dim]``: ``[n]`` float64."""
        return expit(self.decision_function(X))

    def linear_weights(self) -> tuple[np.ndarray, float]:
        """``(w [dim] float32, b)`` with ``predict_proba(x) == sigmoid(x . w + b)``.

        Ranking a corpus by ``x . w`` is ranking by calibrated probability (the sigmoid is monotone),
        so the harvest step can run a maximum-inner-product search with ``w`` as the query.
        """
        _check_fitted(self, "coef_")
        return self.coef_.astype(np.float32), float(self.intercept_)


# --------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------


class MLPProxy:
    """A small multilayer perceptron on embeddings (scikit-learn ``MLPClassifier``, Adam).

    Class weighting is done with balanced sample weights. Early stopping holds out a stratified
    ``validation_fraction`` of the labels; with ``early_stopping="auto"`` it is on only when each
    class has at least ``max(10, ceil(1 / validation_fraction))`` labels, so that the validation
    split holds both classes. Otherwise the model trains for ``max_iter`` epochs with the L2 penalty
    ``alpha`` as the only brake.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int
    alpha : float
    max_iter : int
    early_stopping : {"auto", True, False}
    validation_fraction : float
    class_weight : "balanced" or None
    random_state : int
    block_size : int

    Attributes
    ----------
    model_ : sklearn.neural_network.MLPClassifier
    early_stopping_ : bool
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] = (256,),
        alpha: float = 1e-4,
        max_iter: int = 200,
        early_stopping: bool | str = "auto",
        validation_fraction: float = 0.1,
        class_weight: str | None = "balanced",
        random_state: int = 0,
        block_size: int = _BLOCK,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.random_state = random_state
        self.block_size = block_size

    def fit(self, X: Any, y: Any) -> "MLPProxy":
        """Fit on labelled embeddings ``X [n, dim]`` and labels ``y [n]`` in {0, 1}."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from sklearn.utils.class_weight import compute_sample_weight

        if self.early_stopping not in ("auto", True, False):
            raise InputError(f"early_stopping must be 'auto', True or False, got {self.early_stopping!r}")
        if self.class_weight not in ("balanced", None):
            raise InputError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if not (0.0 < float(self.validation_fraction) < 1.0):
            raise InputError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        _check_int(self.max_iter, "max_iter")
        _check_int(self.block_size, "block_size")
        X, y, n_pos, n_neg = _check_Xy(X, y)
        need = max(10, int(np.ceil(1.0 / float(self.validation_fraction))))
        es = self.early_stopping
        if es == "auto":
            es = min(n_pos, n_neg) >= need
        model = MLPClassifier(
            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=bool(es),
            validation_fraction=self.validation_fraction,
            random_state=self.random_state,
        )
        sw = compute_sample_weight("balanced", y) if self.class_weight == "balanced" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y, sample_weight=sw)
        self.model_ = model
        self.early_stopping_ = bool(es)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """P(positive) for each row of ``X [n, dim]``: ``[n]`` float64."""
        _check_fitted(self, "model_")
        X = _check_X(X, dim=self.n_features_in_, load=False)
        return _blockwise(X, lambda blk: self.model_.predict_proba(blk)[:, 1], self.block_size)


# --------------------------------------------------------------------------------------------
# bootstrap ensemble
# --------------------------------------------------------------------------------------------


_BASES = ("logistic", "mlp")


class BootstrapEnsemble:
    """``n_models`` proxies on stratified bootstrap resamples, for disagreement scores.

    Each member is fitted on a resample drawn with replacement **within each class** (as many
    positives and negatives as labelled), so no member sees a single class even when positives are
    few; members differ by their resample (and, for MLPs, their initial weights). Members are
    uncalibrated (``LogisticProxy(calibration="none")``): disagreement compares members with each
    other, and calibration would spend labels on folds.

    Parameters
    ----------
    n_models : int
    base : {"logistic", "mlp"}
    C : float
        For logistic members.
    hidden_layer_sizes : tuple of int
        For MLP members.
    random_state : int
        Seeds the resamples and the members.
    block_size : int

    Attributes
    ----------
    estimators_ : list of fitted members
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        n_models: int = 5,
        base: str = "logistic",
        C: float = 1.0,
        hidden_layer_sizes: tuple[int, ...] = (64,),
        random_state: int = 0,
        block_size: int = _BLOCK,
    ) -> None:
        self.n_models = n_models
        self.base = base
        self.C = C
        self.hidden_layer_sizes = hidden_layer_sizes
        self.random_state = random_state
        self.block_size = block_size

    def _member(self, seed: int):
        if self.base == "logistic":
            return LogisticProxy(C=self.C, calibration="none", block_size=self.block_size)
        return MLPProxy(
            hidden_layer_sizes=self.hidden_layer_sizes,
            random_state=seed,
            early_stopping=False,
            block_size=self.block_size,
        )

    def fit(self, X: Any, y: Any) -> "BootstrapEnsemble":
        """Fit every member on its own stratified bootstrap resample of ``(X, y)``."""
        m = _check_int(self.n_models, "n_models", 2)
        if self.base not in _BASES:
            from assay.errors import UnknownNameError

            raise UnknownNameError("ensemble base model", str(self.base), list(_BASES))
        X, y, _, _ = _check_Xy(X, y)
        rng = np.random.default_rng(self.random_state)
        pos = np.flatnonzero(y == 1)
        neg = np.flatnonzero(y == 0)
        members = []
        for _ in range(m):
            idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])  # [n] resample
            seed = int(rng.integers(2**31 - 1))
            members.append(self._member(seed).fit(X[idx], y[idx]))
        self.estimators_ = members
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba_members(self, X: Any) -> np.ndarray:
        """Each member's P(positive): ``[n_models, n]`` float64 (the input of BALD / vote entropy)."""
        _check_fitted(self, "estimators_")
        X = _check_X(X, dim=self.n_features_in_, load=False)
        return np.stack([est.predict_proba(X) for est in self.estimators_])  # [m, n]

    def predict_proba(self, X: Any) -> np.ndarray:
        """The ensemble mean P(positive): ``[n]`` float64."""
        return self.predict_proba_members(X).mean(axis=0)  # [m, n] -> [n]


# --------------------------------------------------------------------------------------------
# Selection via Proxy, and adapters for strategies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyRound:
    """The models of one round: the proxy always, the target only at a checkpoint."""

    round_index: int
    proxy: Any
    target: Any | None


class SelectionViaProxy:
    """Selection via Proxy (Coleman et al., ICLR 2020): a cheap proxy selects, the target trains rarely.

    Every round the proxy (default :class:`LogisticProxy`) is refitted on all labels and scores the
    pool; the target (default :class:`MLPProxy`, or a :class:`BootstrapEnsemble`, or any model with
    ``fit``) is fitted only at checkpoint rounds and at the end. Coleman et al. show that the labels a
    small proxy selects train the large target about as well as the target's own selections, at a
    fraction of the cost.

    Parameters
    ----------
    proxy_factory, target_factory : callables returning a fresh unfitted model
    every : int, optional
        Fit the target every ``every`` rounds (rounds ``every - 1``, ``2 * every - 1``, ...).
    checkpoints : iterable of int
        Extra round indices (0-based) at which to fit the target.

    Examples
    --------
    >>> svp = SelectionViaProxy(every=5)                                   # doctest: +SKIP
    >>> for r in range(n_rounds):                                          # doctest: +SKIP
    ...     models = svp.fit_round(X_lab, y_lab, r, final=(r == n_rounds - 1))
    ...     ctx = SelectionContext(..., proba=proba_fn(models.proxy, vectors))
    ...     if models.target is not None: evaluate(models.target)
    """

    def __init__(
        self,
        *,
        proxy_factory: Callable[[], Any] = LogisticProxy,
        target_factory: Callable[[], Any] = MLPProxy,
        every: int | None = None,
        checkpoints: Iterable[int] = (),
    ) -> None:
        self.proxy_factory = proxy_factory
        self.target_factory = target_factory
        self.every = every
        self.checkpoints = frozenset(int(c) for c in checkpoints)

    def is_checkpoint(self, round_index: int, *, final: bool = False) -> bool:
        """Whether round ``round_index`` (0-based) fits the target."""
        r = _check_int(round_index, "round_index", 0)
        if final or r in self.checkpoints:
            return True
        if self.every is not None:
            return (r + 1) % _check_int(self.every, "every") == 0
        return False

    def fit_round(self, X: Any, y: Any, round_index: int, *, final: bool = False) -> ProxyRound:
        """Fit the proxy, and the target too when this round is a checkpoint."""
        proxy = self.proxy_factory().fit(X, y)
        target = self.target_factory().fit(X, y) if self.is_checkpoint(round_index, final=final) else None
        return ProxyRound(round_index=int(round_index), proxy=proxy, target=target)


def proba_fn(model: Any, vectors: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Adapt a fitted model to ``SelectionContext.proba``: ``ids [m] -> P(positive) [m]``.

    ``vectors(ids)`` returns the embeddings of ``ids`` (e.g. rows of the fp16 store).
    """
    _check_fitted(model, "n_features_in_")
    map_rows = getattr(vectors, "map_rows", None)  # a CachedVectors memo: score its rows in place
    if map_rows is not None:
        return lambda ids: map_rows(model.predict_proba, np.asarray(ids, dtype=np.int64))
    return lambda ids: model.predict_proba(vectors(np.asarray(ids, dtype=np.int64)))


def ensemble_proba_fn(
    ensemble: BootstrapEnsemble, vectors: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """Adapt a fitted ensemble to ``SelectionContext.ensemble_proba``: ``ids [m] -> [n_models, m]``."""
    _check_fitted(ensemble, "estimators_")
    return lambda ids: ensemble.predict_proba_members(vectors(np.asarray(ids, dtype=np.int64)))
