"""Tests for assay.zeroshot (ConSE) on hand-made toy examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.errors import InputError, UnknownNameError
from assay.zeroshot import conse_image_vectors, conse_scores

# three class names with orthogonal text embeddings: "cat", "dog", "car"
EMB = np.eye(3, 4, dtype=np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_top1_is_the_class_name_embedding():
    logits = np.array([[5.0, 1.0, 0.0], [0.0, 0.5, 3.0]])
    v = conse_image_vectors(logits, EMB, top_t=1)
    np.testing.assert_allclose(v, EMB[[0, 2]], atol=1e-6)


def test_weights_are_softmax_over_top_t_then_normalised():
    logits = np.array([[2.0, 1.0, -3.0]])
    v = conse_image_vectors(logits, EMB, top_t=2)
    w = softmax(np.array([2.0, 1.0]))
    want = w[0] * EMB[0] + w[1] * EMB[1]
    np.testing.assert_allclose(v[0], want / np.linalg.norm(want), atol=1e-6)
    # the third class is outside the top 2 and contributes nothing
    assert v[0, 2] == 0.0


def test_temperature_flattens_the_weights():
    logits = np.array([[4.0, 1.0, 0.0]])
    sharp = conse_image_vectors(logits, EMB, top_t=2, temperature=0.1)
    flat = conse_image_vectors(logits, EMB, top_t=2, temperature=1e6)
    np.testing.assert_allclose(sharp[0], EMB[0], atol=1e-5)
    np.testing.assert_allclose(flat[0], (EMB[0] + EMB[1]) / np.sqrt(2), atol=1e-5)


def test_probabilities_give_the_same_vectors_as_logits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((20, 3)) * 3
    emb = rng.standard_normal((3, 5)).astype(np.float32)
    a = conse_image_vectors(logits, emb, top_t=2, temperature=0.7)
    b = conse_image_vectors(softmax(logits), emb, top_t=2, temperature=0.7, score_type="probs")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_text_query_ranks_matching_items_first():
    # items 0 and 3 look like cats, 1 like a dog, 2 like a car; "kitten" sits near "cat"
    logits = np.array([[6.0, 2.0, 0.0], [1.0, 5.0, 0.0], [0.0, 1.0, 7.0], [4.0, 3.5, 0.0]])
    kitten = np.array([0.9, 0.3, 0.0, 0.1], dtype=np.float32)
    s = conse_scores(kitten, logits, EMB, top_t=2)
    assert s.shape == (4,)
    assert set(np.argsort(-s)[:2].tolist()) == {0, 3}
    assert np.argmin(s) == 2
    both = conse_scores(np.stack([kitten, EMB[2]]), logits, EMB, top_t=2)
    assert both.shape == (2, 4)
    np.testing.assert_allclose(both[0], s, atol=1e-6)
    assert np.argmax(both[1]) == 2
    # scores are cosines between the normalised query and the ConSE vectors
    v = conse_image_vectors(logits, EMB, top_t=2)
    np.testing.assert_allclose(s, v @ (kitten / np.linalg.norm(kitten)), atol=1e-6)


@given(n=st.integers(1, 40), block=st.integers(1, 50), top_t=st.integers(1, 6), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_blockwise_equals_one_block(n, block, top_t, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, 6)) * 2).astype(np.float16)  # float16 at rest
    emb = rng.standard_normal((6, 7))
    q = rng.standard_normal((3, 7))
    a = conse_scores(q, logits, emb, top_t=top_t, block_size=block)
    b = conse_scores(q, logits, emb, top_t=top_t, block_size=10_000)
    np.testing.assert_allclose(a, b, atol=1e-6)
    v = conse_image_vectors(logits, emb, top_t=top_t, block_size=block)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_validation():
    logits = np.zeros((2, 3))
    with pytest.raises(InputError, match=r"top_t must be an integer in \[1, 3\]"):
        conse_image_vectors(logits, EMB, top_t=4)
    with pytest.raises(InputError, match="5 classes but class_text_emb has 3"):
        conse_image_vectors(np.zeros((2, 5)), EMB, top_t=2)
    with pytest.raises(InputError, match="temperature"):
        conse_image_vectors(logits, EMB, top_t=2, temperature=0)
    with pytest.raises(UnknownNameError, match="logits"):
        conse_image_vectors(logits, EMB, top_t=2, score_type="odds")
    with pytest.raises(InputError, match="non-negative"):
        conse_image_vectors(-np.ones((2, 3)), EMB, top_t=2, score_type="probs")
    with pytest.raises(InputError, match="NaN"):
        conse_image_vectors(np.full((2, 3), np.nan), EMB, top_t=2)
    with pytest.raises(InputError, match="dim 4, query has dim 2"):
        conse_scores(np.ones(2), logits, EMB, top_t=2)
    with pytest.raises(InputError, match="all zeros"):
        conse_image_vectors(logits, np.zeros((3, 4)), top_t=2)
