"""``SparseGrad``: the gradient of an embedding table, stored as only the rows that were looked up."""
import numpy as np

from fastembed._validation import check_positive_int


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
        if rows.dtype.kind not in "iu":
            raise TypeError(f"rows must be integers, got dtype {rows.dtype}")
        if values.dtype not in (np.float32, np.float64):
            raise TypeError(f"values must be float32 or float64, got dtype {values.dtype}")
        if num_rows is not None:
            num_rows = check_positive_int(num_rows, "num_rows")
        rows = rows.astype(np.int64, copy=False)
        # Every consumer (to_dense, a fancy-indexed update) relies on sorted unique in-range rows.
        if rows.shape[0]:
            step = np.flatnonzero(rows[1:] <= rows[:-1])
            if rows[0] < 0:
                raise ValueError(f"rows[0] = {rows[0]} is negative")
            if step.size:
                k = int(step[0]) + 1
                raise ValueError(f"rows must be sorted and unique: rows[{k}] = {rows[k]} follows {rows[k - 1]}")
            if num_rows is not None and rows[-1] >= num_rows:
                raise ValueError(f"rows[{rows.shape[0] - 1}] = {rows[-1]} is out of range [0, {num_rows})")
        self.rows = rows
        self.values = values
        self.num_rows = num_rows

    @classmethod
    def _trusted(cls, rows, values, num_rows):
        """Wrap a kernel's output, already known valid, without the O(U) checks of ``__init__``."""
        grad = cls.__new__(cls)
        grad.rows, grad.values, grad.num_rows = rows, values, num_rows
        return grad

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
        if num_rows is None:
            num_rows = self.num_rows
            if num_rows is None:
                raise ValueError("to_dense needs num_rows: this gradient does not know its table's size")
        else:
            num_rows = check_positive_int(num_rows, "num_rows")
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

        if None not in (self.num_rows, other.num_rows) and self.num_rows != other.num_rows:
            raise ValueError(f"cannot add gradients of tables of {self.num_rows} and {other.num_rows} rows")
        num_rows = self.num_rows if self.num_rows is not None else other.num_rows
        values = np.concatenate([self.values, other.values.astype(self.values.dtype, copy=False)])
        return sparse_grad(np.concatenate([self.rows, other.rows]), values, num_rows=num_rows)

    def __repr__(self):
        size = "?" if self.num_rows is None else self.num_rows
        return f"SparseGrad(rows={len(self)} of {size}, dim={self.dim}, dtype={self.values.dtype})"
