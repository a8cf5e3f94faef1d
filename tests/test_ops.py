"""The three kernels against their numpy oracles (np.take, np.add.at, np.unique)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastembed
from fastembed import _reference as ref
from conftest import FLOAT_DTYPES, INDEX_DTYPES, THREADS

SHAPES = [(), (0,), (7,), (3, 5), (2, 0, 4), (2, 3, 4)]


def _table(rng, rows, dim, dtype):
    return rng.standard_normal((rows, dim)).astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_matches_take(rng, dtype, index_dtype, n_threads, shape):
    table = _table(rng, 50, 6, dtype)
    ids = rng.integers(0, 50, size=shape).astype(index_dtype)
    out = fastembed.gather(table, ids, n_threads=n_threads)
    assert out.shape == ids.shape + (6,) and out.dtype == dtype
    np.testing.assert_array_equal(out, ref.gather(table, ids))


@pytest.mark.parametrize("dim", [1, 3, 16, 17, 64, 300])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gather_large_batches_many_widths(rng, dim, n_threads):
    table = _table(rng, 1000, dim, np.float32)
    ids = rng.integers(0, 1000, size=40_000)
    np.testing.assert_array_equal(fastembed.gather(table, ids, n_threads=n_threads), table[ids])


def test_gather_equals_one_hot_matmul(rng):
    table = _table(rng, 13, 3, np.float64)
    ids = rng.integers(0, 13, size=(4, 9))
    one_hot = np.eye(13)[ids]
    np.testing.assert_allclose(fastembed.gather(table, ids), one_hot @ table, rtol=0, atol=0)


def test_gather_into_out(rng):
    table = _table(rng, 20, 4, np.float32)
    ids = rng.integers(0, 20, size=(3, 5))
    out = np.full((3, 5, 4), np.nan, np.float32)
    result = fastembed.gather(table, ids, out=out)
    assert result is out
    np.testing.assert_array_equal(out, table[ids])


def test_gather_non_contiguous_inputs(rng):
    base = _table(rng, 40, 10, np.float64)
    table = base[::2, ::3]                     # strided rows and columns
    ids = rng.integers(0, 20, size=(6, 8)).T   # Fortran-ordered ids
    np.testing.assert_array_equal(fastembed.gather(table, ids), table[ids])


def test_gather_read_only_table(rng):
    table = _table(rng, 30, 4, np.float32)
    table.flags.writeable = False
    ids = rng.integers(0, 30, size=100)
    np.testing.assert_array_equal(fastembed.gather(table, ids), table[ids])


def test_gather_accepts_lists_and_small_int_dtypes(rng):
    table = _table(rng, 300, 2, np.float32)
    np.testing.assert_array_equal(fastembed.gather(table, [[1, 2], [3, 299]]), table[[[1, 2], [3, 299]]])
    for dtype in (np.uint8, np.int16, np.uint16, np.uint32, np.uint64, np.int8):
        ids = np.array([0, 5, 100], dtype=dtype)
        np.testing.assert_array_equal(fastembed.gather(table, ids), table[ids.astype(np.int64)])
    assert fastembed.gather(table, []).shape == (0, 2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sparse_grad_matches_add_at(rng, dtype, index_dtype, n_threads, shape):
    ids = rng.integers(0, 30, size=shape).astype(index_dtype)
    grad_out = rng.standard_normal(ids.shape + (5,)).astype(dtype)
    grad = fastembed.sparse_grad(ids, grad_out, num_rows=30, n_threads=n_threads)
    rows, values = ref.sparse_grad(ids, grad_out)
    assert grad.rows.dtype == np.int64 and grad.values.dtype == dtype
    np.testing.assert_array_equal(grad.rows, rows)
    # Same summation order as np.add.at: bit-for-bit equal, not merely close.
    np.testing.assert_array_equal(grad.values, values)
    dense = np.zeros((30, 5), dtype)
    np.add.at(dense, ids.reshape(-1), grad_out.reshape(-1, 5))
    np.testing.assert_array_equal(grad.to_dense(), dense)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4, 8])
def test_sparse_grad_all_ids_equal(rng, n_threads):
    ids = np.full(100_000, 7)
    grad_out = rng.standard_normal((100_000, 3)).astype(np.float32)
    grad = fastembed.sparse_grad(ids, grad_out, n_threads=n_threads)
    np.testing.assert_array_equal(grad.rows, [7])
    expected = np.zeros((1, 3), np.float32)
    np.add.at(expected, np.zeros(100_000, np.int64), grad_out)
    np.testing.assert_array_equal(grad.values, expected)


def test_sparse_grad_bitwise_identical_across_threads(rng):
    ids = rng.zipf(1.3, size=200_000) % 5000
    grad_out = rng.standard_normal((200_000, 8)).astype(np.float32)
    results = [fastembed.sparse_grad(ids, grad_out, n_threads=t) for t in (1, 2, 3, 4, 8)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.rows, results[0].rows)
        assert other.values.tobytes() == results[0].values.tobytes()


def test_sparse_grad_memory_does_not_depend_on_num_rows(rng):
    ids = rng.integers(0, 10**10, size=1000)
    grad_out = rng.standard_normal((1000, 4))
    grad = fastembed.sparse_grad(ids, grad_out, num_rows=10**10)
    rows, values = ref.sparse_grad(ids, grad_out)
    np.testing.assert_array_equal(grad.rows, rows)
    np.testing.assert_array_equal(grad.values, values)
    assert grad.values.nbytes == rows.size * 4 * 8 and grad.num_rows == 10**10


def test_sparse_grad_wide_ids_many_radix_passes(rng):
    ids = np.concatenate([rng.integers(0, 2**62, size=5000), [0, 2**62, 2**62, 0]])
    grad_out = rng.standard_normal((ids.size, 2))
    for n_threads in (1, 2):
        grad = fastembed.sparse_grad(ids, grad_out, n_threads=n_threads)
        rows, values = ref.sparse_grad(ids, grad_out)
        np.testing.assert_array_equal(grad.rows, rows)
        np.testing.assert_array_equal(grad.values, values)


def test_sparse_grads_add(rng):
    ids_a, ids_b = rng.integers(0, 9, size=20), rng.integers(0, 9, size=15)
    g_a, g_b = rng.standard_normal((20, 3)), rng.standard_normal((15, 3))
    total = fastembed.sparse_grad(ids_a, g_a, num_rows=9) + fastembed.sparse_grad(ids_b, g_b, num_rows=9)
    dense = np.zeros((9, 3))
    np.add.at(dense, ids_a, g_a)
    np.add.at(dense, ids_b, g_b)
    np.testing.assert_allclose(total.to_dense(), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_scatter_add_matches_add_at(rng, dtype, index_dtype, n_threads, shape):
    dense = rng.standard_normal((25, 4)).astype(dtype)
    expected = dense.copy()
    ids = rng.integers(0, 25, size=shape).astype(index_dtype)
    grad_out = rng.standard_normal(ids.shape + (4,)).astype(dtype)
    result = fastembed.scatter_add(dense, ids, grad_out, n_threads=n_threads)
    assert result is dense
    ref.scatter_add(expected, ids, grad_out)
    np.testing.assert_array_equal(dense, expected)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
def test_scatter_add_large_skewed_is_exact(rng, n_threads):
    ids = rng.zipf(1.2, size=150_000) % 3000
    grad_out = rng.standard_normal((150_000, 16)).astype(np.float32)
    dense = np.zeros((3000, 16), np.float32)
    expected = dense.copy()
    fastembed.scatter_add(dense, ids, grad_out, n_threads=n_threads)
    np.add.at(expected, ids, grad_out)
    assert dense.tobytes() == expected.tobytes()


def test_scatter_add_into_non_contiguous_target(rng):
    base = np.zeros((10, 8))
    view = base[:, ::2]
    ids = rng.integers(0, 10, size=30)
    grad_out = rng.standard_normal((30, 4))
    fastembed.scatter_add(view, ids, grad_out)
    expected = np.zeros((10, 4))
    np.add.at(expected, ids, grad_out)
    np.testing.assert_allclose(base[:, ::2], expected, rtol=0, atol=1e-15)
    assert not base[:, 1::2].any()


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    rows=st.integers(1, 40),
    dim=st.integers(1, 9),
    n_threads=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from(FLOAT_DTYPES),
)
def test_property_kernels_agree_with_numpy(data, rows, dim, n_threads, dtype):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    ids = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, rows - 1)))
    table = data.draw(hnp.arrays(dtype, (rows, dim), elements=st.floats(-1e3, 1e3, width=32)))
    grad_out = data.draw(hnp.arrays(dtype, shape + (dim,), elements=st.floats(-1e3, 1e3, width=32)))
    np.testing.assert_array_equal(fastembed.gather(table, ids, n_threads=n_threads), table[ids])
    grad = fastembed.sparse_grad(ids, grad_out, num_rows=rows, n_threads=n_threads)
    expected_rows, expected_values = ref.sparse_grad(ids, grad_out)
    np.testing.assert_array_equal(grad.rows, expected_rows)
    np.testing.assert_array_equal(grad.values, expected_values)
    dense = np.zeros((rows, dim), dtype)
    expected_dense = dense.copy()
    fastembed.scatter_add(dense, ids, grad_out, n_threads=n_threads)
    ref.scatter_add(expected_dense, ids, grad_out)
    np.testing.assert_array_equal(dense, expected_dense)
