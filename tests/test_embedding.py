"""The Keras-style layer: the examples users know, initializers, training, freezing, sharing."""
import numpy as np
import pytest

import fastembed
from fastembed import initializers


def test_months_example_shapes_and_params(rng):
    layer = fastembed.Embedding(13, 3, seed=0)
    ids = rng.integers(0, 13, size=(32, 1000))
    out = layer(ids)
    assert out.shape == (32, 1000, 3) and out.dtype == np.float32
    assert layer.count_params() == 39
    np.testing.assert_array_equal(out, layer.get_weights()[0][ids])


def test_padded_sentences_give_table_rows():
    sentences = np.array([[0, 0, 1, 2, 3, 4], [0, 1, 2, 5, 3, 4]])
    layer = fastembed.Embedding(6, 2, seed=3, mask_zero=True)
    out = layer(sentences)
    table = layer.get_weights()[0]
    for b in range(2):
        for t in range(6):
            np.testing.assert_array_equal(out[b, t], table[sentences[b, t]])
    np.testing.assert_array_equal(layer.compute_mask(sentences), sentences != 0)
    assert fastembed.Embedding(6, 2).compute_mask(sentences) is None


def test_default_initializer_is_keras_uniform():
    table = fastembed.Embedding(2000, 50, seed=1).embeddings
    assert table.min() >= -0.05 and table.max() < 0.05
    assert abs(table.mean()) < 2e-3 and 0.026 < table.std() < 0.032   # std of U(-.05, .05) = 0.0289


@pytest.mark.parametrize("name", ["uniform", "normal", "truncated_normal", "glorot_uniform"])
def test_random_initializers_are_reproducible_with_seed(name):
    a = fastembed.Embedding(100, 8, embeddings_initializer=name, seed=7).embeddings
    b = fastembed.Embedding(100, 8, embeddings_initializer=name, seed=7).embeddings
    c = fastembed.Embedding(100, 8, embeddings_initializer=name, seed=8).embeddings
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_initializer_distributions():
    big = (400, 500)
    normal = fastembed.Embedding(*big, embeddings_initializer="normal", seed=0, dtype="float64").embeddings
    assert abs(normal.std() - 0.05) < 1e-3
    truncated = fastembed.Embedding(*big, embeddings_initializer="truncated_normal", seed=0).embeddings
    assert np.abs(truncated).max() <= 0.1 + 1e-7
    glorot = fastembed.Embedding(*big, embeddings_initializer="glorot_uniform", seed=0).embeddings
    limit = np.sqrt(6 / (400 + 500))
    assert np.abs(glorot).max() <= limit and np.abs(glorot).max() > 0.99 * limit
    assert not fastembed.Embedding(3, 4, embeddings_initializer="zeros").embeddings.any()
    assert (fastembed.Embedding(3, 4, embeddings_initializer="ones").embeddings == 1).all()
    constant = fastembed.Embedding(3, 4, embeddings_initializer=initializers.Constant(2.5)).embeddings
    assert (constant == 2.5).all()


def test_initializer_from_callable_and_matrix():
    layer = fastembed.Embedding(3, 2, embeddings_initializer=lambda shape, dtype: np.arange(6).reshape(shape))
    np.testing.assert_array_equal(layer.embeddings, [[0, 1], [2, 3], [4, 5]])
    matrix = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(fastembed.Embedding(3, 2, embeddings_initializer=matrix).embeddings, matrix)
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), the table needs \(3, 2\)"):
        fastembed.Embedding(3, 2, embeddings_initializer=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown initializer"):
        fastembed.Embedding(3, 2, embeddings_initializer="orthogonal_please")


def test_weights_argument_matrix_or_keras_list():
    matrix = np.arange(12.0).reshape(4, 3)
    for weights in (matrix, [matrix]):
        layer = fastembed.Embedding(4, 3, weights=weights)
        np.testing.assert_array_equal(layer.embeddings, matrix)
    layer.embeddings[0, 0] = 99.0
    assert matrix[0, 0] == 0.0   # the layer owns a copy
    with pytest.raises(ValueError, match=r"weights must have shape \(4, 3\), got \(3, 4\)"):
        fastembed.Embedding(4, 3, weights=matrix.T)


def test_frozen_pretrained_matrix():
    matrix = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    layer = fastembed.Embedding(10, 4, weights=[matrix], trainable=False, mask_zero=True)
    ids = np.array([[0, 3, 3, 9]])
    np.testing.assert_array_equal(layer(ids), matrix[ids])
    layer.backward(ids, np.ones((1, 4, 4), np.float32))
    assert layer.grad is None
    layer.step(0.1)
    np.testing.assert_array_equal(layer.embeddings, matrix)
    pretrained = fastembed.Embedding.from_pretrained(matrix, mask_zero=True)
    assert not pretrained.trainable and pretrained.mask_zero
    np.testing.assert_array_equal(pretrained.embeddings, matrix)


def test_input_length_is_checked():
    layer = fastembed.Embedding(10, 2, input_length=5)
    assert layer(np.zeros((3, 5), int)).shape == (3, 5, 2)
    with pytest.raises(ValueError, match="input_length=5"):
        layer(np.zeros((3, 4), int))


def test_backward_accumulates_and_step_touches_only_those_rows(rng):
    layer = fastembed.Embedding(50, 4, seed=0, dtype="float64")
    before = layer.embeddings.copy()
    ids = np.array([[1, 2, 2], [7, 1, 1]])
    grad_out = rng.standard_normal((2, 3, 4))
    grad = layer.backward(ids, grad_out)
    np.testing.assert_array_equal(grad.rows, [1, 2, 7])
    dense = np.zeros((50, 4))
    np.add.at(dense, ids.reshape(-1), grad_out.reshape(-1, 4))
    np.testing.assert_allclose(layer.grad.to_dense(), dense, rtol=1e-15)
    layer.step(0.5)
    assert layer.grad is None
    np.testing.assert_allclose(layer.embeddings, before - 0.5 * dense, rtol=1e-15)
    untouched = np.setdiff1d(np.arange(50), [1, 2, 7])
    assert layer.embeddings[untouched].tobytes() == before[untouched].tobytes()


def test_shared_layer_gets_both_contributions(rng):
    """One layer called on two inputs (a Keras functional model) sums both gradients."""
    layer = fastembed.Embedding(20, 3, seed=0, dtype="float64")
    left, right = rng.integers(0, 20, size=(4, 6)), rng.integers(0, 20, size=(4, 9))
    g_left, g_right = rng.standard_normal((4, 6, 3)), rng.standard_normal((4, 9, 3))
    layer.backward(left, g_left)
    layer.backward(right, g_right)
    dense = np.zeros((20, 3))
    np.add.at(dense, left.reshape(-1), g_left.reshape(-1, 3))
    np.add.at(dense, right.reshape(-1), g_right.reshape(-1, 3))
    np.testing.assert_allclose(layer.grad.to_dense(), dense, rtol=1e-12, atol=1e-15)
    layer.zero_grad()
    assert layer.grad is None


def test_training_reduces_a_loss():
    rng = np.random.default_rng(5)
    layer = fastembed.Embedding(30, 4, seed=0, dtype="float64")
    target = rng.standard_normal((30, 4))
    ids = rng.integers(0, 30, size=(8, 10))
    losses = []
    for _ in range(50):
        diff = layer(ids) - target[ids]
        losses.append(0.5 * float(np.sum(diff**2)))
        layer.backward(ids, diff)
        layer.step(0.05)
    assert losses[-1] < 1e-3 * losses[0]


def test_weights_roundtrip_and_repr():
    layer = fastembed.Embedding(5, 2, name="words", mask_zero=True)
    new = np.ones((5, 2))
    table = layer.embeddings
    layer.set_weights([new])
    assert layer.embeddings is table     # updated in place
    np.testing.assert_array_equal(layer.get_weights()[0], new)
    text = repr(layer)
    assert "words" in text and "input_dim=5" in text and "output_dim=2" in text and "params=10" in text
    with pytest.raises(ValueError):
        layer.set_weights([np.ones((2, 5))])


def test_float64_layer(rng):
    layer = fastembed.Embedding(9, 3, dtype="float64", seed=0)
    assert layer(np.array([1, 2])).dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        fastembed.Embedding(9, 3, dtype="int32")
