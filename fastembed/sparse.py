"""``SparseGrad``: the gradient of an embedding table, stored as only the rows that were looked up."""
import numpy as np


class SparseGrad:
    """Row-sparse gradient of a ``(num_rows, D)`` table.

    Attributes:
        rows: (U,) int64, sorted unique row ids.
        values: (U, D) float32/float64, the summed gradient of each of those rows.
        num_rows: the table's row count when known (needed by ``to_dense`` without an argument), else None.

    Memory is O(U * D) whatever ``num_rows`` is.
    """

    __slots__ = ("rows", "values", "num_rows")

    def __init__(self, rows, values, num_rows=None):
        rows = np.asarray(rows)
        values = np.asarray(values)
        if rows.ndim != 1 or values.ndim != 2 or rows.shape[0] != values.shape[0]:
            raise ValueError(f"rows must be (U,) and values (U, D); got {rows.shape} and {values.shape}")
        self.rows = rows
        self.values = values
        self.num_rows = None if num_rows is None else int(num_rows)

    @property
    def dim(self):
        """D, the width of each row."""
        return self.values.shape[1]

    @property
    def dtype(self):
        return self.values.dtype

    def __len__(self):
        return self.rows.shape[0]

    def to_dense(self, num_rows=None):
        """The full ``(num_rows, D)`` gradient, zeros in the rows that were not looked up."""
        num_rows = self.num_rows if num_rows is None else int(num_rows)
        if num_rows is None:
            raise ValueError("to_dense needs num_rows: this gradient does not know its table's size")
        if len(self.rows) and self.rows[-1] >= num_rows:
            raise ValueError(f"num_rows={num_rows} is too small: this gradient has row {int(self.rows[-1])}")
        dense = np.zeros((num_rows, self.dim), dtype=self.values.dtype)
        dense[self.rows] = self.values
        return dense

    def __add__(self, other):
        """The sum of two sparse gradients of the same table (rows merged, duplicates summed)."""
        if not isinstance(other, SparseGrad):
            return NotImplemented
        if other.dim != self.dim:
            raise ValueError(f"cannot add sparse gradients of widths {self.dim} and {other.dim}")
        from fastembed.ops import sparse_grad

        num_rows = self.num_rows if self.num_rows is not None else other.num_rows
        values = np.concatenate([self.values, other.values.astype(self.values.dtype, copy=False)])
        return sparse_grad(np.concatenate([self.rows, other.rows]), values, num_rows=num_rows)

    def __repr__(self):
        size = "?" if self.num_rows is None else self.num_rows
        return f"SparseGrad(rows={len(self)} of {size}, dim={self.dim}, dtype={self.values.dtype})"
