"""Gradient plans: a batch's ids grouped by table row, with what each position contributes to its row.

The bag backward (``embedding_bag_backward``) and the fused optimizers (``fastembed.optim``) reduce the same
plan with the same kernel (``_segment.reduce_segment``): a fused step sums exactly the terms, in exactly the
order, that backward followed by ``step`` would. Memory is O(N) plus the batch's gradient, never O(V).
"""
import numpy as np

from fastembed import _bag, _out_of_range
from fastembed._threads import resolve_threads
from fastembed._validation import as_float, as_ids, check_grad_shape
from fastembed.ops import _group
from fastembed.sparse import SparseGrad

NO_INDEX = np.empty(0, np.int64)
NO_ARGPOS = np.empty((0, 0), np.int64)


class GradPlan:
    """The rows a batch touches and how to sum each row's gradient.

    rows (U,) int64 sorted unique ids; order (N,), seg_ptr (U + 1,) from ``group_rows``; grad (R, D) the
    output gradient; src (N,) the grad row (bag) of each term, in segment order, empty when it is the term's
    position; coef (N,) each term's factor in segment order, or empty (all 1); argpos (R, D) max-mode
    winners or empty; by_freq: divide
    each term by its row's count in the batch; skip: the segment of ``padding_idx`` (left out), or -1;
    threads: the thread count resolved for this batch.
    """

    __slots__ = ("rows", "order", "seg_ptr", "grad", "src", "coef", "argpos", "by_freq", "skip", "num_rows",
                 "threads")

    def __init__(self, rows, order, seg_ptr, grad, num_rows, threads, src=NO_INDEX, coef=None,
                 argpos=NO_ARGPOS, by_freq=False, padding=-1):
        self.rows, self.order, self.seg_ptr, self.grad = rows, order, seg_ptr, grad
        self.src, self.argpos, self.by_freq = src, argpos, bool(by_freq)
        self.coef = np.empty(0, grad.dtype) if coef is None else coef
        self.num_rows, self.threads = num_rows, threads
        self.skip = -1
        if padding >= 0:
            at = int(np.searchsorted(rows, padding))
            if at < rows.shape[0] and rows[at] == padding:
                self.skip = at

    def kernel_args(self):
        """The arguments every segment kernel takes, in its order."""
        return (self.grad, self.order, self.seg_ptr, self.src, self.coef, self.argpos, self.by_freq, self.skip)

    def kept_rows(self):
        """The rows that receive a gradient: ``rows`` without the padding row."""
        return self.rows if self.skip < 0 else np.delete(self.rows, self.skip)

    def sparse_grad(self):
        """Reduce the plan into a ``SparseGrad`` (rows without padding, values of grad's dtype)."""
        rows = self.kept_rows()
        values = np.empty((rows.shape[0], self.grad.shape[1]), dtype=self.grad.dtype)
        _bag.segment_reduce(*self.kernel_args(), values, self.threads)
        return SparseGrad(rows, values, self.num_rows)


def row_plan(rows, values, num_rows, n_threads=None):
    """The plan of a gradient given row by row: ``values`` (U, D) belongs to ``rows`` (U,) int64.

    Sorted unique rows in ``[0, num_rows)`` (a coalesced gradient) are applied as they are, one term per row;
    anything else is grouped first (which also checks every id), duplicates summed in position order.
    """
    if rows.shape[0] and (rows[0] < 0 or rows[-1] >= num_rows or np.any(rows[1:] <= rows[:-1])):
        return lookup_plan(rows, values, num_rows, values.dtype, n_threads=n_threads)
    threads = resolve_threads(n_threads, values.size * values.itemsize)
    return GradPlan(rows, np.arange(rows.shape[0], dtype=np.int64), np.arange(rows.shape[0] + 1, dtype=np.int64),
                    values, num_rows, threads)


def lookup_plan(ids, grad_out, num_rows, dtype, padding_idx=None, scale_grad_by_freq=False, n_threads=None,
                out_of_range="raise"):
    """The plan of a plain lookup: ``grad_out`` has shape ``ids.shape + (D,)``; every position is its own term.

    ids are validated against ``num_rows`` and mapped by ``out_of_range`` as ``sparse_grad`` maps them ("zero"
    positions are left out of every segment); grad_out is cast to ``dtype``.
    """
    ids = as_ids(ids)
    grad = as_float(grad_out, "grad_out", dtype=dtype)
    check_grad_shape(grad, ids.shape, grad.shape[-1] if grad.ndim else None)
    dim = grad.shape[-1]
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * max(dim, 1) * grad.itemsize)
    policy = _out_of_range.parse(out_of_range, num_rows)
    rows, order, seg_ptr = _group(flat, num_rows, threads, ids.shape, policy)
    grad2d = np.ascontiguousarray(grad).reshape(-1, dim)
    padding = -1 if padding_idx is None else int(padding_idx)
    return GradPlan(rows, order, seg_ptr, grad2d, num_rows, threads, by_freq=scale_grad_by_freq, padding=padding)


def bag_plan(bags, grad_out, dtype, scale_grad_by_freq=False, table=None):
    """The plan of a pooled lookup: ``bags`` from ``bags.prepare_bags``, grad_out (B, D) cast to ``dtype``.

    Max mode needs ``table`` (the one the forward pass read) to find each column's arg-max again.
    """
    grad = as_float(grad_out, "grad_out", dtype=dtype)
    if grad.ndim != 2 or grad.shape[0] != bags.n_bags:
        raise ValueError(f"grad_out must have shape (number of bags, D) = ({bags.n_bags}, D), got {grad.shape}")
    grad = np.ascontiguousarray(grad)
    dim = grad.shape[1]
    if table is not None and table.shape[1] != dim:
        raise ValueError(f"grad_out has width {dim} but the table has width {table.shape[1]}")
    rows, order, seg_ptr = _group(bags.ids, bags.num_rows, bags.threads, bags.shape)
    n_ids = bags.ids.shape[0]
    src = np.empty(n_ids, np.int64)
    needs_coef = bags.mode in ("mean", "sqrtn") or (bags.mode == "sum" and bags.weights is not None)
    coef = np.empty(n_ids if needs_coef else 0, grad.dtype)
    weights = bags.weights_as(grad.dtype)
    _bag.bag_terms(bags.ids, bags.offsets, weights, bags.mode_code, bags.padding, order, src, coef, bags.threads)
    argpos = NO_ARGPOS
    if bags.mode == "max":
        if table is None:
            raise ValueError("the gradient of mode='max' needs the table, to find each column's arg-max")
        argpos = np.empty((bags.n_bags, dim), np.int64)
        scratch = np.empty((bags.n_bags, dim), table.dtype)
        _bag.bag_forward(table, bags.ids, bags.offsets, np.empty(0, table.dtype), bags.mode_code,
                         bags.padding, scratch, argpos, bags.threads)
    return GradPlan(rows, order, seg_ptr, grad, bags.num_rows, bags.threads, src=src, coef=coef, argpos=argpos,
                    by_freq=scale_grad_by_freq, padding=bags.padding)
