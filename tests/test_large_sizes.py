"""Tables of more than 2**31 elements and id arrays of more than 2**31 entries index correctly (int64 offsets all
the way down, int32 ids included).

The big arrays cost almost no memory: the table is a memory-mapped sparse file and the huge id and gradient
arrays are untouched ``np.zeros`` pages (mapped to the kernel's shared zero page), with only a few rows written.
The test over 2**31 ids reads 16 GiB of address space and takes tens of seconds, so it is marked ``slow`` and
left out of the default run: ``python -m pytest -m slow`` runs it.
"""
import sys

import numpy as np
import pytest

import fastembed

BIG_ROWS = 2**31 // 4 + 10          # (BIG_ROWS, 4) float32: 2**31 + 40 elements, 8 GiB of address space
needs_64_bit = pytest.mark.skipif(sys.maxsize < 2**63 - 1, reason="needs a 64-bit address space")


@pytest.fixture
def big_table(tmp_path):
    path = tmp_path / "table.f32"
    table = np.memmap(path, dtype=np.float32, mode="w+", shape=(BIG_ROWS, 4))   # a sparse file
    yield table
    del table
    path.unlink()


def _row(r):
    return np.array([r, -r, 0.5, r % 7], np.float32)


@needs_64_bit
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_table_beyond_2_to_31_elements(big_table, index_dtype):
    special = [0, 1, 2**29, 2**29 + 1, BIG_ROWS - 2, BIG_ROWS - 1]     # rows 2**29 on start past element 2**31
    for r in special:
        big_table[r] = _row(r)
    ids = np.array([[BIG_ROWS - 1, 0, 2**29 + 1], [2**29, BIG_ROWS - 2, 1]], index_dtype)
    expected = np.stack([_row(int(r)) for r in ids.reshape(-1)]).reshape(2, 3, 4)
    for n_threads in (1, 2):
        np.testing.assert_array_equal(fastembed.gather(big_table, ids, n_threads=n_threads), expected)
    # The mapping kernel too: -1 and BIG_ROWS clip to the first and last rows.
    clipped = fastembed.gather(big_table, np.array([-1, BIG_ROWS, 2**29], np.int64), out_of_range="clip")
    np.testing.assert_array_equal(clipped, np.stack([_row(0), _row(BIG_ROWS - 1), _row(2**29)]))
    with pytest.raises(IndexError, match=rf"ids\[1\] = {BIG_ROWS} is out of range \[0, {BIG_ROWS}\)"):
        fastembed.gather(big_table, np.array([0, BIG_ROWS], np.int64))


@needs_64_bit
def test_scatter_add_into_a_table_beyond_2_to_31_elements(big_table):
    ids = np.array([BIG_ROWS - 1, 3, BIG_ROWS - 1, 2**29 + 2], np.int32)
    grad = np.arange(16, dtype=np.float32).reshape(4, 4)
    fastembed.scatter_add(big_table, ids, grad, n_threads=2)
    np.testing.assert_array_equal(big_table[BIG_ROWS - 1], grad[0] + grad[2])
    np.testing.assert_array_equal(big_table[3], grad[1])
    np.testing.assert_array_equal(big_table[2**29 + 2], grad[3])
    assert not big_table[BIG_ROWS - 2].any() and not big_table[2**29 + 1].any()
    sparse = fastembed.sparse_grad(ids, grad, num_rows=BIG_ROWS)
    np.testing.assert_array_equal(sparse.rows, [3, 2**29 + 2, BIG_ROWS - 1])


@needs_64_bit
def test_int8_table_beyond_2_to_30_rows(tmp_path):
    """The (scale, bias) pair of row r sits at element 2 * r: with int32 ids that product overflowed int32 from
    r = 2**30 on (a segfault)."""
    from fastembed import lowp

    n_rows, dim = 2**30 + 8, 4
    table = lowp.QuantizedTable.__new__(lowp.QuantizedTable)      # memory-mapped parts: no 8 GiB copy
    table.codes = np.memmap(tmp_path / "codes", dtype=np.uint8, mode="w+", shape=(n_rows, dim))
    table.scale_bias = np.memmap(tmp_path / "scale_bias", dtype=np.float32, mode="w+", shape=(n_rows, 2))
    special = [2**30 + 3, 1, 2**30 + 7]
    for k, r in enumerate(special):
        table.codes[r] = (np.arange(dim) + k) % 256
        table.scale_bias[r] = (2.0 + k, -1.0 - k)
    expected = np.stack([((np.arange(dim) + k) % 256) * (2.0 + k) - 1.0 - k for k in range(3)]).astype(np.float32)
    for index_dtype in (np.int32, np.int64):
        out = fastembed.gather(table, np.array(special, index_dtype), n_threads=1)
        np.testing.assert_array_equal(out, expected)
    del table


@needs_64_bit
@pytest.mark.slow
def test_more_than_2_to_31_ids():
    n = 2**31 + 16
    ids = np.zeros(n, np.int32)                     # untouched pages: no memory until written
    grad = np.zeros((n, 1), np.float32)
    for position, row, value in [(5, 1, 13.0), (2**31 + 5, 3, 7.0), (2**31 + 15, 2, 11.0)]:
        ids[position], grad[position] = row, value
    dense = np.zeros((4, 1), np.float32)
    fastembed.scatter_add(dense, ids, grad, n_threads=2)
    np.testing.assert_array_equal(dense[:, 0], [0.0, 13.0, 11.0, 7.0])
    ids[2**31 + 9] = -1
    with pytest.raises(IndexError, match=rf"ids\[{2**31 + 9}\] = -1 is out of range \[0, 4\)"):
        fastembed.scatter_add(dense, ids, grad, n_threads=2)
    np.testing.assert_array_equal(dense[:, 0], [0.0, 13.0, 11.0, 7.0])
