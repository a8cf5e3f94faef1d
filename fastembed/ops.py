"""The functional API: lookup (``gather``) and its gradients (``sparse_grad``, ``scatter_add``).

Each function coerces and validates its inputs in Python, resolves the thread count once, then hands
contiguous arrays to a trusting ``nogil`` kernel. Nothing is written before every id has been checked.
"""
import numpy as np

from fastembed import _gather, _index, _out_of_range, _remap, _scatter
from fastembed._threads import resolve_threads
from fastembed._validation import (
    as_float,
    as_ids,
    as_table,
    check_grad_shape,
    check_no_overlap,
    check_positive_int,
    check_rows,
    prepare_out,
)
from fastembed.sparse import SparseGrad

_NO_ROW_LIMIT = np.iinfo(np.int64).max


def gather(table, ids, out=None, n_threads=None, out_of_range="raise"):
    """Look up rows: ``out[..., :] = table[ids[...], :]``.

    table: (V, D) float32/float64. ids: integer array of any shape (0-d and empty included).
    out: optional C-contiguous array of shape ``ids.shape + (D,)`` and the table's dtype, not overlapping table.
    out_of_range: what an id outside ``[0, V)`` reads: ``"raise"`` (an ``IndexError`` naming the first one,
    before anything is written), ``"clip"`` (the nearest row), ``"zero"`` (a zero vector) or an int row.
    Returns an array of shape ``ids.shape + (D,)``, the table's dtype.
    """
    table = as_table(table)
    ids = as_ids(ids)
    flat = ids.reshape(-1)
    n_rows, dim = table.shape
    policy = _out_of_range.parse(out_of_range, n_rows)
    threads = resolve_threads(n_threads, flat.shape[0] * dim * table.itemsize)
    mapped = _out_of_range.needs_mapping(flat, n_rows, policy, threads, ids.shape)
    out = prepare_out(out, ids.shape + (dim,), table.dtype)
    check_no_overlap(out, "out", table, "table")
    if not table.flags.c_contiguous:
        table = np.ascontiguousarray(table)
    # An explicit row count: reshape(-1, 0) cannot infer it when D == 0.
    out2d = out.reshape(flat.shape[0], dim)
    if mapped:
        _remap.gather_rows_mapped(table, flat, out2d, policy.code, policy.row, threads)
    else:
        _gather.gather_rows(table, flat, out2d, threads)
    return out


def _group(flat_ids, num_rows, threads, shape, policy=_out_of_range.RAISE_POLICY):
    """Validate ids against ``num_rows`` (or only for sign) and group them by the row they read.

    Returns ``group_rows``' ``(rows, order, seg_ptr)``; under ``out_of_range="zero"`` the positions that read
    no row are left out of the segments (they stay at the end of ``order``).
    """
    limit = _NO_ROW_LIMIT if num_rows is None else num_rows
    if _out_of_range.needs_mapping(flat_ids, limit, policy, threads, shape):
        flat_ids = _out_of_range.remap(flat_ids, num_rows, policy, threads)
    max_id = int(flat_ids.max()) if flat_ids.shape[0] else 0
    rows, order, seg_ptr = _index.group_rows(flat_ids, max_id, threads)
    if rows.shape[0] and rows[-1] == num_rows:
        # Under "zero" the ids that read nothing were mapped to num_rows, the last segment: drop it.
        rows, seg_ptr = rows[:-1], seg_ptr[:-1]
    return rows, order, seg_ptr


def sparse_grad(ids, grad_out, num_rows=None, n_threads=None, out_of_range="raise"):
    """Gradient of ``gather`` w.r.t. the table, as the looked-up rows only.

    ids: integer array of any shape. grad_out: float32/float64, shape ``ids.shape + (D,)``.
    num_rows: the table's row count V (at most 2**63 - 1); when given, ids must be below it. Memory is
    O(N * D), never O(V). out_of_range: as in ``gather`` (needs num_rows unless "raise"): "clip" and an int
    row send the gradient to the row that was read, "zero" drops those positions.
    Returns a ``SparseGrad`` with ``rows`` (U,) int64 sorted unique and ``values`` (U, D) of grad_out's
    dtype. Duplicates are summed in increasing position order: bit-for-bit the same for any thread count.
    """
    ids = as_ids(ids)
    grad = as_float(grad_out, "grad_out")
    if grad.ndim < 1:
        raise ValueError(f"grad_out must have shape ids.shape + (D,), got {grad.shape}")
    check_grad_shape(grad, ids.shape, None)
    if num_rows is not None:
        num_rows = check_positive_int(num_rows, "num_rows", maximum=_NO_ROW_LIMIT)
    policy = _out_of_range.parse(out_of_range, num_rows)
    dim = grad.shape[-1]
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * max(dim, 1) * grad.itemsize)
    rows, order, seg_ptr = _group(flat, num_rows, threads, ids.shape, policy)
    grad2d = np.ascontiguousarray(grad).reshape(flat.shape[0], dim)
    values = np.empty((rows.shape[0], dim), dtype=grad.dtype)
    _scatter.segment_sum_rows(grad2d, order, seg_ptr, values, threads)
    return SparseGrad._trusted(rows, values, num_rows)


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
    check_no_overlap(dense, "dense_grad", grad, "grad_out")
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * dim * dense.itemsize)
    check_rows(flat, n_rows, threads, ids.shape)
    grad2d = np.ascontiguousarray(grad).reshape(flat.shape[0], dim)
    if dense.flags.c_contiguous:
        _scatter.scatter_add_rows(dense, flat, grad2d, threads)
    else:
        work = np.ascontiguousarray(dense)
        _scatter.scatter_add_rows(work, flat, grad2d, threads)
        dense[...] = work
    return dense_grad
