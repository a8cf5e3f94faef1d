"""The functional API: lookup (``gather``) and its gradients (``sparse_grad``, ``scatter_add``).

Each function coerces and validates its inputs in Python, resolves the thread count once, then hands
contiguous arrays to a trusting ``nogil`` kernel. Nothing is written before every id has been checked.
"""
import numpy as np

from fastembed import _gather, _index, _scatter
from fastembed._threads import resolve_threads
from fastembed._validation import (
    as_float,
    as_ids,
    as_table,
    check_grad_shape,
    check_positive_int,
    check_rows,
    prepare_out,
)
from fastembed.sparse import SparseGrad

_NO_ROW_LIMIT = np.iinfo(np.int64).max


def gather(table, ids, out=None, n_threads=None):
    """Look up rows: ``out[..., :] = table[ids[...], :]``.

    table: (V, D) float32/float64. ids: integer array of any shape (0-d and empty included).
    out: optional C-contiguous array of shape ``ids.shape + (D,)`` and the table's dtype.
    Returns an array of shape ``ids.shape + (D,)``, the table's dtype. Raises ``IndexError`` naming the
    first id outside ``[0, V)`` before anything is written.
    """
    if out is None and n_threads is None:
        small = _gather.gather_small(table, ids)
        if small is not None:
            return small
    table = as_table(table)
    ids = as_ids(ids)
    flat = ids.reshape(-1)
    n_rows, dim = table.shape
    threads = resolve_threads(n_threads, flat.shape[0] * dim * table.itemsize)
    check_rows(flat, n_rows, threads, ids.shape)
    out = prepare_out(out, ids.shape + (dim,), table.dtype)
    if not table.flags.c_contiguous:
        table = np.ascontiguousarray(table)
    _gather.gather_rows(table, flat, out.reshape(-1, dim), threads)
    return out


def _group(flat_ids, num_rows, threads, shape):
    """Validate ids against ``num_rows`` (or only for sign) and group them by row."""
    check_rows(flat_ids, _NO_ROW_LIMIT if num_rows is None else num_rows, threads, shape)
    max_id = int(flat_ids.max()) if flat_ids.shape[0] else 0
    return _index.group_rows(flat_ids, max_id, threads)


def sparse_grad(ids, grad_out, num_rows=None, n_threads=None):
    """Gradient of ``gather`` w.r.t. the table, as the looked-up rows only.

    ids: integer array of any shape. grad_out: float32/float64, shape ``ids.shape + (D,)``.
    num_rows: the table's row count V; when given, ids must be below it. Memory is O(N * D), never O(V).
    Returns a ``SparseGrad`` with ``rows`` (U,) int64 sorted unique and ``values`` (U, D) of grad_out's
    dtype. Duplicates are summed in increasing position order: bit-for-bit the same for any thread count.
    """
    ids = as_ids(ids)
    grad = as_float(grad_out, "grad_out")
    if grad.ndim < 1:
        raise ValueError(f"grad_out must have shape ids.shape + (D,), got {grad.shape}")
    check_grad_shape(grad, ids.shape, None)
    if num_rows is not None:
        num_rows = check_positive_int(num_rows, "num_rows")
    dim = grad.shape[-1]
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * max(dim, 1) * grad.itemsize)
    rows, order, seg_ptr = _group(flat, num_rows, threads, ids.shape)
    grad2d = np.ascontiguousarray(grad).reshape(-1, dim)
    values = np.empty((rows.shape[0], dim), dtype=grad.dtype)
    _scatter.segment_sum_rows(grad2d, order, seg_ptr, values, threads)
    return SparseGrad(rows, values, num_rows)


def scatter_add(dense_grad, ids, grad_out, n_threads=None):
    """Accumulate in place: ``dense_grad[ids[...]] += grad_out[...]``, duplicates summed.

    dense_grad: (V, D) float32/float64, writeable. ids: integer array of any shape, all in ``[0, V)``.
    grad_out: shape ``ids.shape + (D,)``, cast to dense_grad's dtype. Returns ``dense_grad``.
    Each row receives its contributions in increasing position order (same bits as ``np.add.at``, for any
    thread count).
    """
    dense = as_table(dense_grad, "dense_grad", writeable=True)
    ids = as_ids(ids)
    n_rows, dim = dense.shape
    grad = as_float(grad_out, "grad_out", dtype=dense.dtype)
    check_grad_shape(grad, ids.shape, dim)
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * dim * dense.itemsize)
    check_rows(flat, n_rows, threads, ids.shape)
    grad2d = np.ascontiguousarray(grad).reshape(-1, dim)
    if dense.flags.c_contiguous:
        _scatter.scatter_add_rows(dense, flat, grad2d, threads)
    else:
        work = np.ascontiguousarray(dense)
        _scatter.scatter_add_rows(work, flat, grad2d, threads)
        dense[...] = work
    return dense_grad
