"""Bad input raises a precise exception before anything is written."""
import numpy as np
import pytest

import fastembed


@pytest.fixture
def table():
    return np.arange(20, dtype=np.float32).reshape(10, 2)


@pytest.mark.parametrize("bad_value", [-1, 10, np.iinfo(np.int64).max])
def test_out_of_range_ids_name_position_and_value(table, bad_value):
    ids = np.array([[1, 2, 3], [4, bad_value, 6]])
    out = np.full((2, 3, 2), -7.0, np.float32)
    with pytest.raises(IndexError, match=rf"ids\[1, 1\] = {bad_value} is out of range \[0, 10\)"):
        fastembed.gather(table, ids, out=out)
    assert (out == -7.0).all()


def test_first_offending_position_is_reported(table):
    ids = np.zeros(100_000, np.int64)
    ids[70_000] = 11
    ids[90_000] = -3
    for n_threads in (1, 2, 4):
        with pytest.raises(IndexError, match=r"ids\[70000\] = 11"):
            fastembed.gather(table, ids, n_threads=n_threads)


@pytest.mark.parametrize("ids", [np.array([1.0, 2.0]), np.array([True, False]), np.array([1, "a"], dtype=object),
                                 np.array([np.nan]), np.array([1 + 2j])])
def test_non_integer_ids_raise_type_error(table, ids):
    with pytest.raises(TypeError, match="ids must be an integer array"):
        fastembed.gather(table, ids)


def test_uint64_beyond_int64_is_index_error(table):
    with pytest.raises(IndexError, match="does not fit in int64"):
        fastembed.gather(table, np.array([1, 2**63], dtype=np.uint64))


@pytest.mark.parametrize("bad", [np.zeros((3, 2), np.int32), np.zeros((3, 2, 1), np.float16), np.zeros(5, np.float32),
                                 np.zeros((2, 3, 4), np.float32)])
def test_bad_tables(bad):
    with pytest.raises((TypeError, ValueError), match="table"):
        fastembed.gather(bad, [0])


def test_bad_out(table):
    with pytest.raises(ValueError, match=r"out must have shape \(3, 2\)"):
        fastembed.gather(table, [1, 2, 3], out=np.empty((3, 3), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        fastembed.gather(table, [1, 2, 3], out=np.empty((3, 2), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        fastembed.gather(table, [1, 2, 3], out=np.empty((2, 3), np.float32).T)


def test_sparse_grad_bad_inputs():
    grad_out = np.ones((3, 2))
    with pytest.raises(IndexError, match=r"ids\[2\] = 5 is out of range \[0, 5\)"):
        fastembed.sparse_grad([0, 1, 5], grad_out, num_rows=5)
    with pytest.raises(IndexError, match=r"ids\[0\] = -1"):
        fastembed.sparse_grad([-1, 1, 2], grad_out)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        fastembed.sparse_grad([0, 1], grad_out)
    with pytest.raises(ValueError, match="num_rows"):
        fastembed.sparse_grad([0, 1, 2], grad_out, num_rows=0)
    with pytest.raises(TypeError, match="grad_out must be a float array"):
        fastembed.sparse_grad([0, 1, 2], np.array(["a", "b", "c"]))


def test_scatter_add_leaves_target_untouched_on_error():
    dense = np.zeros((4, 2))
    with pytest.raises(IndexError, match=r"ids\[3\] = 4"):
        fastembed.scatter_add(dense, [0, 1, 2, 4], np.ones((4, 2)))
    assert not dense.any()
    with pytest.raises(ValueError, match=r"grad_out must have shape ids.shape \+ \(D,\) = \(2, 2\)"):
        fastembed.scatter_add(dense, [0, 1], np.ones((2, 3)))
    read_only = np.zeros((4, 2))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastembed.scatter_add(read_only, [0], np.ones((1, 2)))


@pytest.mark.parametrize("n_threads", [0, -1, -8])
def test_non_positive_thread_counts(table, n_threads):
    with pytest.raises(ValueError, match="n_threads must be a positive int"):
        fastembed.gather(table, [0], n_threads=n_threads)
    with pytest.raises(ValueError, match="n_threads"):
        fastembed.set_num_threads(n_threads)


def test_thread_count_type(table):
    with pytest.raises(TypeError, match="n_threads"):
        fastembed.gather(table, [0], n_threads=1.5)


def test_layer_bad_inputs_leave_weights_untouched():
    layer = fastembed.Embedding(5, 2, seed=0)
    before = layer.embeddings.copy()
    with pytest.raises(IndexError, match=r"ids\[0, 2\] = 5"):
        layer.backward(np.array([[0, 1, 5]]), np.ones((1, 3, 2)))
    assert layer.grad is None
    layer.backward(np.array([0]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="grad_out must have shape"):
        layer.backward(np.array([0, 1]), np.ones((2, 3)))
    layer.step(0.1)
    assert not np.array_equal(layer.embeddings, before)
    with pytest.raises(ValueError, match="input_dim"):
        fastembed.Embedding(0, 2)
    with pytest.raises(TypeError, match="output_dim"):
        fastembed.Embedding(3, 2.5)
