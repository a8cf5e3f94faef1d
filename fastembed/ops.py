"""The functional API: lookup (``gather``) and its gradients (``sparse_grad``, ``scatter_add``).

Each function coerces and validates its inputs in Python, resolves the thread count once, then hands
contiguous arrays to a trusting ``nogil`` kernel. Nothing is written before every id has been checked.
"""
import numpy as np

from fastembed import _gather, _index, _out_of_range, _remap, _rowscale, _scatter, lowp
from fastembed._interop import from_dlpack
from fastembed._options import check_max_norm, check_norm_type, check_padding_idx, reduce_segments
from fastembed._threads import MAX_THREADS, resolve_threads
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


def gather(table, ids, out=None, n_threads=None, max_norm=None, norm_type=2.0, out_of_range="raise"):
    """Look up rows: ``out[..., :] = table[ids[...], :]``.

    table: (V, D) float32/float64, or a low-precision table (float16 array, bfloat16 as a
    ``lowp.BFloat16Table`` or ``ml_dtypes.bfloat16`` array, int8 ``lowp.QuantizedTable``), read into float32.
    ids: integer array of any shape (0-d and empty included).
    out: optional C-contiguous array of shape ``ids.shape + (D,)`` and the output dtype, not overlapping table.
    max_norm / norm_type: when max_norm is given, each output row whose norm_type-norm exceeds it is scaled
    by ``max_norm / (norm + 1e-7)``: the rows ``renorm_`` would produce, but the table is left untouched.
    out_of_range: what an id outside ``[0, V)`` reads: ``"raise"`` (an ``IndexError`` naming the first one,
    before anything is written), ``"clip"`` (the nearest row), ``"zero"`` (a zero vector) or an int row.
    Returns an array of shape ``ids.shape + (D,)``, the table's dtype (float32 for low precision).
    """
    # Tensors from other libraries become numpy views first, so they get the fast path and low precision too.
    table, ids, out = from_dlpack(table, "table"), from_dlpack(ids, "ids"), from_dlpack(out, "out")
    # Work under 64 KiB runs on one thread whatever n_threads says, so any valid count may take the fast path.
    # It returns None for any out-of-range id, which then takes the general path below; an out= aliasing the
    # table goes there too, to be refused.
    if (max_norm is None and (n_threads is None or (type(n_threads) is int and 0 < n_threads <= MAX_THREADS))
            and (out is None or not (type(table) is np.ndarray and np.may_share_memory(out, table)))):
        small = _gather.gather_small(table, ids, out)
        if small is not None:
            if not (type(out_of_range) is str and out_of_range == "raise"):
                _out_of_range.parse(out_of_range, table.shape[0])    # every id was valid: only check it
            return small
    if max_norm is not None:
        max_norm, norm_type = check_max_norm(max_norm), check_norm_type(norm_type)
    reader = lowp.reader(table)
    if reader is None:
        table = as_table(table)
    ids = as_ids(ids)
    flat = ids.reshape(-1)
    n_rows, dim = table.shape if reader is None else reader.shape
    policy = _out_of_range.parse(out_of_range, n_rows)
    out_dtype = table.dtype if reader is None else np.dtype(np.float32)
    threads = resolve_threads(n_threads, flat.shape[0] * dim * out_dtype.itemsize)
    mapped = _out_of_range.needs_mapping(flat, n_rows, policy, threads, ids.shape)
    out = prepare_out(out, ids.shape + (dim,), out_dtype)
    out2d = out.reshape(flat.shape[0], dim)
    if reader is not None:
        if mapped:
            _out_of_range.read_mapped(reader.read, flat, out2d, n_rows, policy, threads)
        else:
            reader.read(flat, out2d, threads)
    else:
        check_no_overlap(out, "out", table, "table")
        if not table.flags.c_contiguous:
            table = np.ascontiguousarray(table)
        if mapped:
            _remap.gather_rows_mapped(table, flat, out2d, policy.code, policy.row, threads)
        else:
            _gather.gather_rows(table, flat, out2d, threads)
    if max_norm is not None:
        _rowscale.clip_rows(out2d, max_norm, norm_type, threads)
    return out


def _rows_to_read(flat_ids, num_rows, threads, shape, policy):
    """Validate ids against ``num_rows`` (or only for sign) and map them by ``policy``.

    Returns ``(ids, dropped)``: ``flat_ids`` itself when every id is valid, else the remapped copy, in which
    ids that read no row ("zero") hold ``num_rows`` and ``dropped`` is True.
    """
    limit = _NO_ROW_LIMIT if num_rows is None else num_rows
    if not _out_of_range.needs_mapping(flat_ids, limit, policy, threads, shape):
        return flat_ids, False
    return _out_of_range.remap(flat_ids, num_rows, policy, threads), policy.code == _out_of_range.ZERO


def _grouped(flat_ids, num_rows, threads, dropped):
    """``group_rows``' ``(rows, order, seg_ptr)``; the positions that read no row (``dropped``: they hold
    ``num_rows``, the last segment) are left out of the segments, at the end of ``order``."""
    max_id = int(flat_ids.max()) if flat_ids.shape[0] else 0
    rows, order, seg_ptr = _index.group_rows(flat_ids, max_id, threads)
    if dropped and rows.shape[0] and rows[-1] == num_rows:
        rows, seg_ptr = rows[:-1], seg_ptr[:-1]
    return rows, order, seg_ptr


def _group(flat_ids, num_rows, threads, shape, policy=_out_of_range.RAISE_POLICY):
    """Validate ids against ``num_rows`` (or only for sign), map them by ``policy``, group them by row."""
    flat_ids, dropped = _rows_to_read(flat_ids, num_rows, threads, shape, policy)
    return _grouped(flat_ids, num_rows, threads, dropped)


# The row-to-slot map of sum_rows_by_slot is int32.
_SLOT_MAP_MAX_ROWS = 2**31 - 1


def _slot_map_applies(num_rows, n_ids):
    """Tables with at most as many rows as ids: the (V,) slot map is O(N) memory, and summing in place
    beats sorting the ids."""
    return num_rows is not None and num_rows <= n_ids and num_rows <= _SLOT_MAP_MAX_ROWS


def sparse_grad(ids, grad_out, num_rows=None, n_threads=None, padding_idx=None, scale_grad_by_freq=False,
                max_norm=None, norm_type=2.0, table=None, out_of_range="raise"):
    """Gradient of ``gather`` w.r.t. the table, as the looked-up rows only.

    ids: integer array of any shape. grad_out: float32/float64, shape ``ids.shape + (D,)``.
    num_rows: the table's row count V (at most 2**63 - 1); when given, ids must be below it. Memory is
    O(N * D), never O(V). out_of_range: as in ``gather`` (needs num_rows or table unless "raise"): "clip" and
    an int row send the gradient to the row that was read, "zero" drops those positions.
    padding_idx: positions holding this id contribute nothing and its row is left out (negative counts from
    the end of the table, which needs num_rows or table).
    scale_grad_by_freq: each row's sum is divided by the number of times its id occurs in ids.
    max_norm / norm_type / table: the gradient of ``gather(table, ids, max_norm=..., norm_type=...)``, the
    exact derivative of the clipped rows (table: the (V, D) table they were read from, grad_out's dtype).
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
    dim = grad.shape[-1]
    if table is not None:
        table, num_rows = _clip_table(table, grad, num_rows)
    policy = _out_of_range.parse(out_of_range, num_rows)
    if max_norm is not None:
        if table is None:
            raise ValueError("max_norm needs the table the rows were read from: pass table=")
        max_norm, norm_type = check_max_norm(max_norm), check_norm_type(norm_type)
    padding_idx = check_padding_idx(padding_idx, num_rows)
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * max(dim, 1) * grad.itemsize)
    # An explicit row count: reshape(-1, 0) cannot infer it when D == 0.
    grad2d = np.ascontiguousarray(grad).reshape(flat.shape[0], dim)
    flat, dropped = _rows_to_read(flat, num_rows, threads, ids.shape, policy)
    if (padding_idx is None and not scale_grad_by_freq and not dropped
            and _slot_map_applies(num_rows, flat.shape[0])):
        rows, values = _scatter.sum_rows_by_slot(flat, grad2d, num_rows, threads)
    else:
        rows, order, seg_ptr = _grouped(flat, num_rows, threads, dropped)
        rows, values = reduce_segments(grad2d, rows, order, seg_ptr, padding_idx, bool(scale_grad_by_freq),
                                       threads)
    if max_norm is not None:
        _rowscale.clip_rows_backward(table, rows, values, max_norm, norm_type, threads)
    return SparseGrad._trusted(rows, values, num_rows)


def _clip_table(table, grad, num_rows):
    """Check the ``table`` argument of ``sparse_grad``: C-contiguous, grad's dtype and width, num_rows rows."""
    table = as_table(table)
    if table.dtype != grad.dtype:
        raise TypeError(f"table has dtype {table.dtype} but grad_out has dtype {grad.dtype}: they must match")
    if table.shape[1] != grad.shape[-1]:
        raise ValueError(f"table has {table.shape[1]} columns but grad_out rows have {grad.shape[-1]}")
    if num_rows is not None and num_rows != table.shape[0]:
        raise ValueError(f"num_rows={num_rows} but the table has {table.shape[0]} rows")
    return np.ascontiguousarray(table), table.shape[0]


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
