"""Tests for assay.reduce.PCAReducer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.errors import InputError, NotFoundError
from assay.index import ConcatRows, brute_force_search, recall_at_k
from assay.reduce import PCAReducer


def low_rank(n: int, dim: int, rank: int, noise: float, seed: int) -> np.ndarray:
    """Unit vectors near a random ``rank``-dimensional subspace, with a common offset (non-zero mean)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # [rank, dim] orthonormal
    scales = np.linspace(3.0, 1.0, rank)
    x = (rng.standard_normal((n, rank)) * scales) @ basis + noise * rng.standard_normal((n, dim))
    x += 2.0 * rng.standard_normal(dim) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_fit_transform_shapes_norms_and_orthonormality():
    x = low_rank(2000, 48, 8, 0.01, seed=0)
    pca = PCAReducer(n_components=8).fit(x, rng=0)
    y = pca.transform(x)
    assert y.shape == (2000, 8) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pca.components_ @ pca.components_.T, np.eye(8), atol=1e-5)
    assert pca.n_features_in_ == 48 and pca.n_samples_seen_ == 2000
    # almost all variance lies in the 8-dimensional subspace, in decreasing order
    assert pca.explained_variance_ratio_.sum() > 0.95
    assert np.all(np.diff(pca.explained_variance_) <= 1e-9)
    one = pca.transform(x[5])
    np.testing.assert_allclose(one, y[5], atol=1e-6)


def test_matches_sklearn_pca():
    sklearn = pytest.importorskip("sklearn.decomposition")
    x = low_rank(1500, 32, 6, 0.05, seed=1)
    ours = PCAReducer(n_components=6).fit(x, rng=0)  # sample_size >= n: the whole set
    ref = sklearn.PCA(n_components=6, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-3)
    cos = np.abs(np.sum(ours.components_ * ref.components_, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-3)  # same directions up to sign
    np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-6)


def test_reduced_neighbours_are_preserved():
    x = low_rank(3000, 64, 12, 0.02, seed=2)
    ids = np.arange(3000, dtype=np.int64) * 3
    pca = PCAReducer(n_components=16, sample_size=1000).fit(x, rng=np.random.default_rng(5))
    y = pca.transform(x)
    TS, TI = brute_force_search(x[:100], ids, x, 10)
    S, I = brute_force_search(y[:100], ids, y, 10)
    assert recall_at_k(I, TI) > 0.8


def test_seeded_fit_is_reproducible_and_sample_is_used():
    x = low_rank(5000, 24, 5, 0.05, seed=3)
    a = PCAReducer(n_components=4, sample_size=700).fit(x, rng=7)
    b = PCAReducer(n_components=4, sample_size=700).fit(x, rng=7)
    c = PCAReducer(n_components=4, sample_size=700).fit(x, rng=8)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert a.n_samples_seen_ == 700
    assert not np.array_equal(a.mean_, c.mean_)


def test_float16_and_concat_rows_input():
    x = low_rank(1200, 16, 4, 0.05, seed=4)
    x16 = x.astype(np.float16)
    a = PCAReducer(n_components=4, block_size=100).fit(ConcatRows([x16[:500], x16[500:]]), rng=0)
    b = PCAReducer(n_components=4).fit(x16, rng=0)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-4)
    np.testing.assert_allclose(a.transform(x16), b.transform(x), atol=1e-2)


def test_save_load_round_trip(tmp_path):
    x = low_rank(800, 20, 5, 0.05, seed=6)
    pca = PCAReducer(n_components=5).fit(x, rng=0)
    pca.save(tmp_path / "pca")
    meta = json.loads((tmp_path / "pca" / "meta.json").read_text())
    assert meta["n_components"] == 5 and meta["input_dim"] == 20
    assert len(meta["explained_variance_ratio"]) == 5
    loaded = PCAReducer.load(tmp_path / "pca")
    np.testing.assert_array_equal(loaded.transform(x), pca.transform(x))
    np.testing.assert_allclose(loaded.explained_variance_ratio_, pca.explained_variance_ratio_)
    pca.save(tmp_path / "pca")
    assert len(list((tmp_path / "pca").glob("components.*.npy"))) == 1
    with pytest.raises(NotFoundError):
        PCAReducer.load(tmp_path / "nope")


def test_validation():
    x = low_rank(50, 8, 3, 0.1, seed=7)
    with pytest.raises(InputError, match="at most the input dim 8"):
        PCAReducer(n_components=9).fit(x)
    with pytest.raises(InputError, match="positive integer"):
        PCAReducer(n_components=0).fit(x)
    with pytest.raises(InputError, match="at least 6 vectors"):
        PCAReducer(n_components=6).fit(x[:4])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        PCAReducer(n_components=2).fit(bad)
    pca = PCAReducer(n_components=2).fit(x)
    with pytest.raises(InputError, match="fitted on dim 8"):
        pca.transform(np.ones((2, 4), np.float32))
    with pytest.raises(InputError, match="not fitted"):
        PCAReducer(n_components=2).transform(x)


@given(n_components=st.integers(1, 10), seed=st.integers(0, 1000))
@settings(max_examples=20, deadline=None)
def test_transform_rows_are_unit_or_zero(n_components, seed):
    x = low_rank(60, 10, 4, 0.1, seed=seed)
    y = PCAReducer(n_components=n_components).fit(x, rng=seed).transform(x)
    norms = np.linalg.norm(y, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms < 1e-6))
