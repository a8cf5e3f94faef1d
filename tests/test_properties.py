"""Property tests: gather, sparse_grad, scatter_add and SparseGrad algebra against numpy, on arbitrary shapes
(empty and 0-d included, D == 0 included), heavily duplicated ids, both id widths, 1 to 8 threads, every
out_of_range policy, and the first-offending-position contract of "raise". Inputs must come back unchanged."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastembed
from fastembed import _reference as ref

SETTINGS = settings(max_examples=50, deadline=None)
THREADS = st.sampled_from([1, 2, 3, 8])
FLOATS = st.floats(-1e3, 1e3, width=32)


@st.composite
def id_batches(draw, n_rows, strays=False):
    """ids of any shape (up to 3-D, empty sides included) and either width; a small pool duplicates heavily."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7))
    pool = min(draw(st.sampled_from([1, 2, 3, n_rows])), n_rows)
    low, high = (-3, pool + 3) if strays else (0, pool - 1)
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    ids = draw(hnp.arrays(dtype, shape, elements=st.integers(low, high)))
    if draw(st.booleans()) and ids.ndim >= 2:
        ids = ids.T                                    # a non-contiguous view
    return ids


def _snapshot(*arrays):
    return [(a.shape, a.dtype.str, a.tobytes()) for a in arrays]


def _mapped(ids, n_rows, policy):
    ids = ids.astype(np.int64)
    if policy == "clip":
        return np.clip(ids, 0, n_rows - 1)
    valid = (ids >= 0) & (ids < n_rows)
    return np.where(valid, ids, -1 if policy == "zero" else policy)


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 30), dim=st.integers(0, 9), n_threads=THREADS,
       dtype=st.sampled_from([np.float32, np.float64]), policy=st.sampled_from(["clip", "zero", 0, "last"]))
def test_gather_with_any_policy(data, rows, dim, n_threads, dtype, policy):
    policy = rows - 1 if policy == "last" else policy
    ids = data.draw(id_batches(rows, strays=True))
    table = data.draw(hnp.arrays(dtype, (rows, dim), elements=FLOATS))
    before = _snapshot(ids, table)
    out = fastembed.gather(table, ids, n_threads=n_threads, out_of_range=policy)
    mapped = _mapped(ids, rows, policy)
    expected = np.take(table, np.maximum(mapped, 0), axis=0)     # a copy, even for 0-d ids
    expected[mapped < 0] = 0
    assert out.shape == ids.shape + (dim,) and out.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    assert _snapshot(ids, table) == before


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 30), n_threads=THREADS)
def test_raise_names_the_first_offending_position(data, rows, n_threads):
    ids = data.draw(id_batches(rows, strays=True))
    table = np.zeros((rows, 2), np.float32)
    bad = np.flatnonzero(((ids < 0) | (ids >= rows)).reshape(-1, order="C"))
    if bad.size == 0:
        np.testing.assert_array_equal(fastembed.gather(table, ids, n_threads=n_threads), table[ids])
        return
    position = np.unravel_index(bad[0], ids.shape)
    where = "[" + ", ".join(str(int(i)) for i in position) + "]" if ids.ndim else ""
    value = int(ids[position])
    with pytest.raises(IndexError) as info:
        fastembed.gather(table, ids, n_threads=n_threads)
    assert str(info.value).startswith(f"ids{where} = {value} is out of range [0, {rows})")


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 30), dim=st.integers(0, 9), n_threads=THREADS,
       dtype=st.sampled_from([np.float32, np.float64]), policy=st.sampled_from(["raise", "clip", "zero", 1]))
def test_sparse_grad_sums_like_add_at(data, rows, dim, n_threads, dtype, policy):
    policy = min(policy, rows - 1) if isinstance(policy, int) else policy
    ids = data.draw(id_batches(rows, strays=policy != "raise"))
    grad_out = data.draw(hnp.arrays(dtype, ids.shape + (dim,), elements=FLOATS))
    before = _snapshot(ids, grad_out)
    grad = fastembed.sparse_grad(ids, grad_out, num_rows=rows, n_threads=n_threads, out_of_range=policy)
    mapped = _mapped(ids, rows, policy).reshape(-1) if policy != "raise" else ids.reshape(-1).astype(np.int64)
    keep = mapped >= 0
    rows_expected, values_expected = ref.sparse_grad(mapped[keep], grad_out.reshape(mapped.shape[0], dim)[keep])
    np.testing.assert_array_equal(grad.rows, rows_expected)
    assert grad.values.dtype == dtype and grad.values.shape == values_expected.shape
    # Each row sums its contributions in position order, as np.add.at does: the same bits.
    assert grad.values.tobytes() == values_expected.tobytes()
    assert _snapshot(ids, grad_out) == before


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 30), dim=st.integers(0, 9), n_threads=THREADS,
       dtype=st.sampled_from([np.float32, np.float64]))
def test_scatter_add_into_a_nonzero_table_like_add_at(data, rows, dim, n_threads, dtype):
    ids = data.draw(id_batches(rows))
    dense = data.draw(hnp.arrays(dtype, (rows, dim), elements=FLOATS))
    grad_out = data.draw(hnp.arrays(dtype, ids.shape + (dim,), elements=FLOATS))
    expected = dense.copy()
    ref.scatter_add(expected, ids, grad_out)
    before = _snapshot(ids, grad_out)
    fastembed.scatter_add(dense, ids, grad_out, n_threads=n_threads)
    assert dense.tobytes() == expected.tobytes()
    assert _snapshot(ids, grad_out) == before


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 20), dim=st.integers(1, 5))
def test_sparse_gradients_add_like_dense_ones(data, rows, dim):
    ids_a, ids_b = data.draw(id_batches(rows)), data.draw(id_batches(rows))
    g_a = data.draw(hnp.arrays(np.float64, ids_a.shape + (dim,), elements=FLOATS))
    g_b = data.draw(hnp.arrays(np.float64, ids_b.shape + (dim,), elements=FLOATS))
    a = fastembed.sparse_grad(ids_a, g_a, num_rows=rows)
    b = fastembed.sparse_grad(ids_b, g_b, num_rows=rows)
    total = a + b
    # Equal values (0.0 + -0.0 is +0.0 on one side and -0.0 + -0.0 is -0.0 on the other, so not bytes).
    np.testing.assert_array_equal(total.to_dense(), a.to_dense() + b.to_dense())
    np.testing.assert_array_equal(total.rows, np.union1d(a.rows, b.rows))
