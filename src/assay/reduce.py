"""Dimensionality reduction: PCA fitted on a sample, stored with the workspace.

For corpora whose raw vectors do not fit in memory (or whose index would be too big), project the
L2-normalised embeddings to ``n_components`` dimensions (e.g. 128 or 256) before indexing. The output rows
are L2-normalised again, so inner product stays cosine similarity in the reduced space.

The fit is plain numpy: a seeded random sample of rows (converted block by block from float16), its mean,
the ``dim x dim`` scatter matrix accumulated in float64, and its eigendecomposition. Component signs are
fixed (largest-magnitude loading positive) so that the same sample gives the same projection.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, WorkspaceError
from .index import (
    _as_rows,
    _check_block,
    _check_block_size,
    _f32,
    _npy_writer,
    _read_bundle_meta,
    _write_bundle,
)

__all__ = ["PCAReducer"]

_PCA_FORMAT = "assay.pca"


class PCAReducer:
    """Principal component projection to ``n_components`` dimensions, L2-normalised output.

    Parameters
    ----------
    n_components : int
        Output dimension; at most the input dimension and the number of sampled rows.
    sample_size : int, default 100_000
        Rows drawn (without replacement, with the ``rng`` given to :meth:`fit`) to fit on.
    block_size : int, default 65_536
        Rows converted to float32 at a time when fitting and transforming.

    Attributes (after :meth:`fit` or :meth:`load`)
    ----------------------------------------------
    mean_ : float32 ``[dim]``
    components_ : float32 ``[n_components, dim]``, orthonormal rows
    explained_variance_ : float64 ``[n_components]``
    explained_variance_ratio_ : float64 ``[n_components]``
    n_features_in_ : int
        The input dimension.
    n_samples_seen_ : int
        Rows actually used for the fit.
    """

    def __init__(self, *, n_components: int, sample_size: int = 100_000, block_size: int = 65_536) -> None:
        self.n_components = n_components
        self.sample_size = sample_size
        self.block_size = block_size

    # ---------------------------------------------------------------- fitting
    def _check_params(self) -> None:
        for name in ("n_components", "sample_size", "block_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise InputError(f"{name} must be a positive integer, got {v!r}")

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "components_")

    def fit(self, vectors: Any, *, rng: np.random.Generator | int = 0) -> PCAReducer:
        """Fit on a seeded sample of ``vectors [n, dim]`` (float16/32/64, memmap fine); returns ``self``."""
        self._check_params()
        rows = _as_rows(vectors)
        n, dim = rows.shape
        if self.n_components > dim:
            raise InputError(f"n_components must be at most the input dim {dim}, got {self.n_components}")
        m = min(n, int(self.sample_size))
        if m < max(2, self.n_components):
            raise InputError(
                f"PCA to {self.n_components} dims needs at least {max(2, self.n_components)} vectors, got {m}"
            )
        gen = np.random.default_rng(rng)
        sample = np.sort(gen.choice(n, size=m, replace=False)) if m < n else np.arange(n)  # [m]
        bs = _check_block_size(self.block_size)
        total = np.zeros(dim, dtype=np.float64)
        for s in range(0, m, bs):
            xb = _f32(rows[sample[s : s + bs]])  # [b, dim]
            _check_block(xb, s, check_norm=False)
            total += xb.sum(axis=0, dtype=np.float64)
        mean = total / m  # [dim]
        scatter = np.zeros((dim, dim), dtype=np.float64)
        mean32 = mean.astype(np.float32)
        for s in range(0, m, bs):
            xc = _f32(rows[sample[s : s + bs]]) - mean32  # [b, dim] centred
            scatter += (xc.T @ xc).astype(np.float64)  # [dim, dim]
        cov = scatter / max(m - 1, 1)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(evals)[::-1][: self.n_components]
        evals = np.clip(evals[order], 0.0, None)  # [n_components]
        comps = evecs[:, order].T  # [n_components, dim]
        flip = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
        comps *= np.where(flip == 0, 1.0, flip)[:, None]
        total_var = float(np.clip(np.trace(cov), 1e-30, None))
        self.mean_ = mean32
        self.components_ = np.ascontiguousarray(comps, dtype=np.float32)
        self.explained_variance_ = evals
        self.explained_variance_ratio_ = evals / total_var
        self.n_features_in_ = int(dim)
        self.n_samples_seen_ = int(m)
        return self

    # ---------------------------------------------------------------- transform
    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise InputError("PCAReducer is not fitted: call fit() or load() first")

    def transform(self, vectors: Any) -> np.ndarray:
        """Project ``vectors [n, dim]`` (or one vector ``[dim]``) to ``[n, n_components]`` float32, unit rows.

        Rows that project to zero stay zero.
        """
        self._require_fitted()
        arr = vectors
        single = isinstance(arr, (list, tuple, np.ndarray)) and np.ndim(arr) == 1
        if single:
            arr = np.asarray(arr)[None, :]
        rows = _as_rows(arr)
        if rows.shape[1] != self.n_features_in_:
            raise InputError(f"PCA was fitted on dim {self.n_features_in_}, vectors have dim {rows.shape[1]}")
        n = rows.shape[0]
        bs = _check_block_size(self.block_size)
        out = np.empty((n, self.components_.shape[0]), dtype=np.float32)
        for s in range(0, n, bs):
            xb = _f32(rows[s : s + bs])  # [b, dim]
            _check_block(xb, s, check_norm=False)
            y = (xb - self.mean_) @ self.components_.T  # [b, n_components]
            norms = np.linalg.norm(y, axis=1, keepdims=True)  # [b, 1]
            out[s : s + bs] = y / np.maximum(norms, 1e-12)
        return out[0] if single else out

    def fit_transform(self, vectors: Any, *, rng: np.random.Generator | int = 0) -> np.ndarray:
        return self.fit(vectors, rng=rng).transform(vectors)

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save atomically (``.npy`` arrays + ``meta.json``) into ``directory`` (one reducer per directory)."""
        self._require_fitted()
        meta = {
            "format": _PCA_FORMAT,
            "format_version": 1,
            "n_components": int(self.components_.shape[0]),
            "input_dim": self.n_features_in_,
            "n_samples_seen": self.n_samples_seen_,
            "sample_size": int(self.sample_size),
            "explained_variance_ratio": [float(v) for v in self.explained_variance_ratio_],
            "explained_variance_ratio_total": float(np.sum(self.explained_variance_ratio_)),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        files = {
            "mean": (".npy", _npy_writer(self.mean_)),
            "components": (".npy", _npy_writer(self.components_)),
            "explained_variance": (
                ".npy",
                _npy_writer(np.asarray(self.explained_variance_, dtype=np.float64)),
            ),
        }
        return _write_bundle(directory, files, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PCAReducer:
        """Load a reducer saved by :meth:`save`."""
        directory, meta = _read_bundle_meta(directory, _PCA_FORMAT, "PCA reducer")
        arrays = {name: np.load(Path(directory) / fname) for name, fname in meta["files"].items()}
        obj = cls(n_components=int(meta["n_components"]), sample_size=int(meta.get("sample_size", 100_000)))
        obj.mean_ = arrays["mean"].astype(np.float32)
        obj.components_ = arrays["components"].astype(np.float32)
        obj.explained_variance_ = arrays["explained_variance"].astype(np.float64)
        obj.explained_variance_ratio_ = np.asarray(meta["explained_variance_ratio"], dtype=np.float64)
        obj.n_features_in_ = int(meta["input_dim"])
        obj.n_samples_seen_ = int(meta["n_samples_seen"])
        if obj.components_.shape != (obj.n_components, obj.n_features_in_) or obj.mean_.shape != (
            obj.n_features_in_,
        ):
            raise WorkspaceError(f"PCA reducer in {directory} is inconsistent with its metadata")
        return obj

    def __repr__(self) -> str:
        fitted = f", fitted on dim {self.n_features_in_}" if self.is_fitted else ""
        return f"PCAReducer(n_components={self.n_components}{fitted})"
