"""The build has OpenMP, and the thread-count policy behaves as documented."""
import os

import numpy as np
import pytest

import fastembed


@pytest.mark.skipif(os.environ.get("FASTEMBED_ALLOW_NO_OPENMP") == "1", reason="compiler without OpenMP")
def test_build_has_openmp():
    assert fastembed.openmp_enabled()


def test_set_and_get_num_threads():
    default = fastembed.get_num_threads()
    assert default >= 1
    try:
        fastembed.set_num_threads(3)
        assert fastembed.get_num_threads() == 3
        table = np.arange(8.0).reshape(4, 2)
        np.testing.assert_array_equal(fastembed.gather(table, [3, 0]), table[[3, 0]])
    finally:
        fastembed.set_num_threads(None)
    assert fastembed.get_num_threads() == default


def test_all_thread_counts_same_bits():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((5000, 7)).astype(np.float32)
    ids = rng.integers(0, 5000, size=(300, 400))
    grad_out = rng.standard_normal(ids.shape + (7,)).astype(np.float32)
    outputs = [fastembed.gather(table, ids, n_threads=t).tobytes() for t in (1, 2, 3, 8)]
    assert len(set(outputs)) == 1
    grads = [fastembed.sparse_grad(ids, grad_out, n_threads=t).values.tobytes() for t in (1, 2, 3, 8)]
    assert len(set(grads)) == 1
    dense = [fastembed.scatter_add(np.zeros((5000, 7), np.float32), ids, grad_out, n_threads=t).tobytes()
             for t in (1, 2, 3, 8)]
    assert len(set(dense)) == 1
