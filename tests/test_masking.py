"""Masked pooling: against a per-sequence loop, through gradcheck, and padding must never leak."""
import warnings

import numpy as np
import pytest

import fastembed
from fastembed import _reference
from fastembed.masking import masked_mean, masked_mean_backward, masked_sum, masked_sum_backward
from conftest import FLOAT_DTYPES

POOLS = {
    "sum": (masked_sum, masked_sum_backward, _reference.masked_sum),
    "mean": (masked_mean, masked_mean_backward, _reference.masked_mean),
}
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _loop_backward(grad_pooled, mask, mean):
    """grad_x one position at a time: grad_pooled[b] (divided by the row's count for a mean) or zero."""
    grad_x = np.zeros(mask.shape + grad_pooled.shape[1:], grad_pooled.dtype)
    for b in range(mask.shape[0]):
        count = int(mask[b].sum())
        for t in range(mask.shape[1]):
            if mask[b, t]:
                grad_x[b, t] = grad_pooled[b] / count if mean else grad_pooled[b]
    return grad_x


def _batch(rng, dtype, shape=(5, 7, 3)):
    x = rng.standard_normal(shape).astype(dtype)
    mask = rng.random(shape[:2]) < 0.6
    mask[1] = False                      # a fully masked row
    mask[2] = True                       # a row with no padding
    return x, mask


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(5, 7, 3), (3, 1, 4), (4, 33, 17)])
def test_forward_and_backward_match_a_loop_over_sequences(rng, pool, dtype, shape):
    forward, backward, oracle = POOLS[pool]
    x, mask = _batch(rng, dtype, shape)
    pooled = forward(x, mask)
    assert pooled.dtype == dtype and pooled.shape == (shape[0], shape[2])
    np.testing.assert_allclose(pooled, oracle(x, mask), rtol=TOL[dtype], atol=TOL[dtype])

    grad_pooled = rng.standard_normal(pooled.shape).astype(dtype)
    grad_x = backward(grad_pooled, mask)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape and grad_x.flags.c_contiguous
    np.testing.assert_allclose(grad_x, _loop_backward(grad_pooled, mask, pool == "mean"), rtol=TOL[dtype])
    # Pooling is linear in x, so its backward is its adjoint: <pool(x), g> == <x, backward(g)>.
    np.testing.assert_allclose(np.vdot(pooled, grad_pooled), np.vdot(x, grad_x), rtol=100 * TOL[dtype])


def _pooled_loss(pool, mask, seed=0):
    """loss(y) for gradcheck: a logistic loss of ``pooled @ c`` plus ``0.5 * |pooled|^2``, pooled under mask."""
    forward, backward, _ = POOLS[pool]

    def loss(y):
        pooled = forward(y, mask)
        c = np.random.default_rng(seed).standard_normal(pooled.shape[1])
        logits = pooled @ c
        value = float(np.sum(np.logaddexp(0.0, -logits)) + 0.5 * np.sum(pooled * pooled))
        grad_pooled = -(1.0 / (1.0 + np.exp(logits)))[:, None] * c + pooled
        return value, backward(grad_pooled, mask)

    return loss


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gradcheck_through_masked_pooling(pool, dtype):
    ids = np.array([[0, 0, 1, 2, 3, 4], [0, 1, 2, 5, 3, 3], [0, 0, 0, 0, 0, 0], [6, 1, 1, 1, 7, 2]])
    layer = fastembed.Embedding(11, 3, mask_zero=True, dtype=dtype, seed=0)
    mask = layer.compute_mask(ids)
    loss = _pooled_loss(pool, mask)
    report = fastembed.gradcheck(layer, ids, loss=loss)
    assert report.ok, report
    assert report.untouched_nonzero == [] and report.max_abs_err < 1e-8

    # The padding row is looked up 9 times, yet its gradient is exactly zero.
    grad = layer.backward(ids, loss(layer(ids).astype(np.float64))[1])
    assert grad.rows[0] == 0 and not np.any(grad.values[0])


def test_gradcheck_catches_a_mean_backward_that_forgets_the_count():
    ids = np.array([[0, 0, 1, 2], [3, 1, 2, 2]])
    layer = fastembed.Embedding(5, 2, mask_zero=True, seed=0)
    mask = layer.compute_mask(ids)

    def wrong_loss(y):
        pooled = masked_mean(y, mask)
        return 0.5 * float(np.sum(pooled * pooled)), masked_sum_backward(pooled, mask)

    assert not fastembed.gradcheck(layer, ids, loss=wrong_loss).ok


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("padding_row", ["random", "huge", "inf", "nan"])
def test_padding_never_leaks_downstream(rng, pool, padding_row):
    forward, backward, _ = POOLS[pool]
    ids = np.array([[0, 0, 3, 1, 4], [2, 7, 1, 8, 2], [0, 0, 0, 0, 0], [0, 5, 0, 9, 0]])
    layer = fastembed.Embedding(10, 4, mask_zero=True, seed=0)
    mask = layer.compute_mask(ids)
    grad_pooled = rng.standard_normal((4, 4)).astype(np.float32)

    def downstream():
        grad = layer.backward(ids, backward(grad_pooled, mask))
        return forward(layer(ids), mask), grad.to_dense(10)

    pooled_before, grad_before = downstream()
    layer.embeddings[0] = {"random": rng.standard_normal(4), "huge": np.float32(3e38),
                           "inf": [np.inf, -np.inf, np.inf, 1.0], "nan": np.nan}[padding_row]
    pooled_after, grad_after = downstream()
    np.testing.assert_array_equal(pooled_after, pooled_before)
    np.testing.assert_array_equal(grad_after, grad_before)
    assert np.isfinite(pooled_after).all() and not np.any(grad_after[0])


def test_a_non_finite_value_at_an_unmasked_position_still_shows(rng):
    x, mask = _batch(rng, np.float64)
    x[~mask] = np.inf                       # padding holds infinities: stays out
    t = int(np.flatnonzero(mask[3])[0])
    x[3, t, 1] = np.nan                     # a real NaN: must reach its own row and entry only
    for forward in (masked_sum, masked_mean):
        pooled = forward(x, mask)
        assert np.isnan(pooled[3, 1]) and np.isfinite(np.delete(pooled.reshape(-1), 3 * 3 + 1)).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fully_masked_rows_pool_to_zero_without_warnings(dtype):
    x = np.ones((3, 4, 2), dtype)
    mask = np.zeros((3, 4), bool)
    grad_pooled = np.ones((3, 2), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for forward, backward, _ in POOLS.values():
            pooled, grad_x = forward(x, mask), backward(grad_pooled, mask)
            assert pooled.dtype == dtype and not np.any(pooled) and not np.isnan(pooled).any()
            assert grad_x.shape == (3, 4, 2) and not np.any(grad_x)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 0, 3), (2, 4, 0)])
def test_empty_batches_steps_and_dims(shape):
    x, mask = np.zeros(shape, np.float32), np.ones(shape[:2], bool)
    for forward, backward, _ in POOLS.values():
        assert forward(x, mask).shape == (shape[0], shape[2])
        assert not np.any(forward(x, mask))
        assert backward(np.ones((shape[0], shape[2]), np.float32), mask).shape == shape


def test_masked_positions_get_positive_zero_and_inputs_are_not_modified(rng):
    x, mask = _batch(rng, np.float64)
    strided = np.repeat(x, 2, axis=2)[:, :, ::2]     # a non-contiguous view with x's values
    x_before = strided.copy()
    np.testing.assert_array_equal(masked_mean(strided, mask), masked_mean(x, mask))
    np.testing.assert_array_equal(strided, x_before)
    grad_x = masked_mean_backward(-np.ones((5, 3)), mask)
    assert not np.signbit(grad_x[~mask]).any() and (grad_x[~mask] == 0).all()


def test_integer_inputs_are_pooled_in_float64():
    x = np.arange(12).reshape(1, 4, 3)
    pooled = masked_mean(x, np.array([[False, True, True, False]]))
    assert pooled.dtype == np.float64
    np.testing.assert_array_equal(pooled, [[4.5, 5.5, 6.5]])


@pytest.mark.parametrize(("x", "mask", "error", "message"), [
    (np.zeros((2, 3)), np.ones((2, 3), bool), ValueError, r"x must be 3-D \(batch, steps, dim\), got shape \(2, 3\)"),
    (np.zeros((2, 3, 4)), np.ones((2, 4), bool), ValueError,
     r"mask must have shape x.shape\[:2\] = \(2, 3\), got \(2, 4\)"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 1), bool), ValueError, r"mask must be 2-D \(batch, steps\), got shape"),
    (np.zeros((2, 3, 4)), np.ones((2, 3), np.int64), TypeError, "mask must be a bool array .* got dtype int64"),
    (np.zeros((2, 3, 4)), None, TypeError, "mask is None: .*mask_zero=True"),
    (np.zeros((2, 3, 4), bool), np.ones((2, 3), bool), TypeError, "x must be a float array, got dtype bool"),
    (np.zeros((2, 3, 4), complex), np.ones((2, 3), bool), TypeError, "x must be a float array, got dtype complex"),
])
def test_bad_forward_inputs(x, mask, error, message):
    for forward in (masked_sum, masked_mean):
        with pytest.raises(error, match=message):
            forward(x, mask)


@pytest.mark.parametrize(("grad", "mask", "error", "message"), [
    (np.zeros((2, 3, 4)), np.ones((2, 3), bool), ValueError,
     r"grad_pooled must be 2-D \(batch, dim\), got shape \(2, 3, 4\)"),
    (np.zeros((3, 4)), np.ones((2, 5), bool), ValueError,
     r"grad_pooled has 3 rows but mask has 2 \(shapes \(3, 4\) and \(2, 5\)\)"),
    (np.zeros((2, 4)), np.ones(2, bool), ValueError, r"mask must be 2-D \(batch, steps\), got shape \(2,\)"),
    (np.zeros((2, 4)), np.ones((2, 5), np.float32), TypeError, "mask must be a bool array .* got dtype float32"),
    (np.zeros((2, 4), object), np.ones((2, 5), bool), TypeError, "grad_pooled must be a float array"),
])
def test_bad_backward_inputs(grad, mask, error, message):
    for backward in (masked_sum_backward, masked_mean_backward):
        with pytest.raises(error, match=message):
            backward(grad, mask)
