"""The lookup options PyTorch users rely on: their validation, and the gradient reduction that honours them.

- ``padding_idx``: positions holding this id contribute no gradient, and its row is absent from the result.
- ``scale_grad_by_freq``: each row's summed gradient is divided by how many times the id occurs in the batch.
- ``max_norm`` / ``norm_type``: rows whose p-norm exceeds max_norm are scaled to it (see ``renorm``).
"""
import math
import numbers

import numpy as np

from fastembed import _rowscale, _scatter

MAX_NORM_MODES = ("inplace", "output")


def check_padding_idx(padding_idx, num_rows):
    """``padding_idx`` as an index in ``[0, num_rows)``, negative values counting from the end; None stays None.

    num_rows: the table's row count, or None when unknown (then only non-negative values are accepted).
    """
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
    padding_idx = int(padding_idx)
    if num_rows is None:
        if padding_idx < 0:
            raise ValueError(f"padding_idx={padding_idx} counts from the end of the table: pass num_rows")
        return padding_idx
    if not -num_rows <= padding_idx < num_rows:
        raise ValueError(f"padding_idx must be in [-{num_rows}, {num_rows}) for a table of {num_rows} rows, "
                         f"got {padding_idx}")
    return padding_idx % num_rows


def check_max_norm(max_norm):
    """``max_norm`` as a float > 0 (inf allowed: nothing is ever rescaled)."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
        raise TypeError(f"max_norm must be a positive number, got {max_norm!r}")
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm}")
    return max_norm


def check_norm_type(norm_type):
    """``norm_type`` p as a float > 0, or inf for the max-abs norm."""
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    if math.isnan(norm_type) or norm_type <= 0:
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type}")
    return norm_type


def check_max_norm_mode(mode):
    if mode not in MAX_NORM_MODES:
        raise ValueError(f"max_norm_mode must be one of {', '.join(map(repr, MAX_NORM_MODES))}, got {mode!r}")
    return mode


def reduce_segments(grad2d, rows, order, seg_ptr, padding_idx, scale_grad_by_freq, n_threads):
    """Per-row gradient sums from the grouping of ``group_rows``, honouring the options.

    grad2d: (N, D) float32/float64 C-contiguous; rows (U,), order (N,), seg_ptr (U + 1,) int64.
    Returns ``(rows, values)`` without padding_idx's row; with ``scale_grad_by_freq`` each sum is divided
    by its count. Sums run in increasing position order: the same bits for any thread count.
    """
    n_seg, dim = rows.shape[0], grad2d.shape[1]
    skip = None
    if padding_idx is not None:
        at = int(np.searchsorted(rows, padding_idx))
        if at < n_seg and rows[at] == padding_idx:
            skip = at
    pieces = [(0, n_seg)] if skip is None else [(0, skip), (skip + 1, n_seg)]
    values = np.empty((n_seg - (skip is not None), dim), dtype=grad2d.dtype)
    written = 0
    for first, last in pieces:
        if last == first:
            continue
        # Contiguous runs of segments: seg_ptr slices keep pointing into the shared `order`.
        seg = seg_ptr[first:last + 1]
        part = values[written:written + last - first]
        _scatter.segment_sum_rows(grad2d, order, seg, part, n_threads)
        if scale_grad_by_freq:
            _rowscale.divide_by_counts(part, seg, n_threads)
        written += last - first
    if skip is not None:
        rows = np.delete(rows, skip)
    return rows, values
