"""fastembed.jax.lookup against jnp.take: same values, same gradients (duplicates included), under jit."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
fej = pytest.importorskip("fastembed.jax")

import jax.numpy as jnp  # noqa: E402

CASES = [(np.float32, np.int32), (np.float32, np.int64), (np.float64, np.int32), (np.float64, np.int64)]


def _take(table, ids):
    return jnp.take(table, ids, axis=0)


def _data(rng, dtype, index_dtype, shape=(6, 9)):
    table = rng.standard_normal((25, 5)).astype(dtype)
    ids = rng.integers(0, 25, size=shape).astype(index_dtype)
    ids.reshape(-1)[: min(ids.size, 4)] = 3       # duplicates for the gradient to sum
    weights = rng.standard_normal(shape + (5,)).astype(dtype)
    return jnp.asarray(table), jnp.asarray(ids), jnp.asarray(weights)


def _loss(lookup):
    def loss(table, ids, weights):
        return jnp.sum(jnp.sin(lookup(table, ids)) * weights)

    return loss


@pytest.mark.parametrize("dtype,index_dtype", CASES)
def test_values_and_gradient_equal_take(rng, dtype, index_dtype):
    with jax.enable_x64(True):
        table, ids, weights = _data(rng, dtype, index_dtype)
        assert table.dtype == dtype and ids.dtype == index_dtype
        out = fej.lookup(table, ids)
        assert out.dtype == dtype and out.shape == ids.shape + (5,)
        np.testing.assert_array_equal(out, _take(table, ids))
        expected = jax.grad(_loss(_take))(table, ids, weights)
        for transform in (jax.grad, lambda f: jax.jit(jax.grad(f))):
            np.testing.assert_array_equal(transform(_loss(fej.lookup))(table, ids, weights), expected)


@pytest.mark.parametrize("shape", [(), (0,), (2, 3, 4)])
def test_any_id_shape(rng, shape):
    table, ids, weights = _data(rng, np.float32, np.int32, shape)
    np.testing.assert_array_equal(fej.lookup(table, ids), _take(table, ids))
    np.testing.assert_array_equal(jax.grad(_loss(fej.lookup))(table, ids, weights),
                                  jax.grad(_loss(_take))(table, ids, weights))


def test_default_32_bit_mode_under_jit(rng):
    table, ids, weights = _data(rng, np.float32, np.int32)
    value, grad = jax.jit(jax.value_and_grad(_loss(fej.lookup)))(table, ids, weights)
    expected_value, expected_grad = jax.value_and_grad(_loss(_take))(table, ids, weights)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_array_equal(grad, expected_grad)


def test_gradient_of_the_gradient_and_vmap(rng):
    with jax.enable_x64(True):
        table, ids, weights = _data(rng, np.float64, np.int64, shape=(3, 4))

        def curvature(lookup):
            return lambda t: jnp.sum(jax.grad(_loss(lookup))(t, ids, weights) ** 2)

        np.testing.assert_allclose(jax.jit(jax.grad(curvature(fej.lookup)))(table),
                                   jax.grad(curvature(_take))(table), rtol=1e-13, atol=1e-13)

        def per_example(lookup):
            return jax.vmap(jax.grad(lambda t, i, w: _loss(lookup)(t, i, w)), in_axes=(None, 0, 0))

        np.testing.assert_array_equal(per_example(fej.lookup)(table, ids, weights),
                                      per_example(_take)(table, ids, weights))


def test_other_integer_ids_are_converted(rng):
    table, _, _ = _data(rng, np.float32, np.int32)
    ids = jnp.asarray(rng.integers(0, 25, size=10).astype(np.uint8))
    np.testing.assert_array_equal(fej.lookup(table, ids), _take(table, ids))


def test_bad_inputs():
    table = jnp.zeros((4, 3), jnp.float32)
    with pytest.raises(TypeError, match="table must be float32 or float64, got dtype float16"):
        fej.lookup(table.astype(jnp.float16), jnp.array([0]))
    with pytest.raises(ValueError, match=r"table must be 2-D"):
        fej.lookup(jnp.zeros(4), jnp.array([0]))
    with pytest.raises(TypeError, match="ids must be an integer array"):
        fej.lookup(table, jnp.array([0.0]))
    with pytest.raises(Exception, match=r"ids\[1\] = 4 is out of range \[0, 4\)"):
        jax.block_until_ready(jax.jit(fej.lookup)(table, jnp.array([0, 4])))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda t: fej.lookup(t, jnp.array([0])), (table,), (table,))
