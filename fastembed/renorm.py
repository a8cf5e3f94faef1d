"""``renorm_``: PyTorch's ``max_norm`` behaviour, rescaling looked-up rows of the table in place.

Two ways to bound the norm of looked-up rows, side by side:

- in place (PyTorch's ``nn.Embedding(max_norm=...)``): ``renorm_(table, ids, max_norm)`` rewrites each
  looked-up row whose norm exceeds max_norm, then a plain lookup reads it. The table changes, and the
  gradient is that of a plain lookup of the rescaled rows.
- on the output: ``gather(table, ids, max_norm=...)`` returns the same rescaled rows and leaves the table
  as it is; ``sparse_grad(..., max_norm=..., table=table)`` is the exact derivative of that clipped output.
"""
import numpy as np

from fastembed import _rowscale
from fastembed._options import check_max_norm, check_norm_type
from fastembed._threads import resolve_threads
from fastembed._validation import as_ids, as_table
from fastembed.ops import _group


def renorm_(table, ids, max_norm, norm_type=2.0, n_threads=None):
    """In place, like ``torch.embedding_renorm_``: every row looked up in ``ids`` whose ``norm_type``-norm
    exceeds ``max_norm`` is multiplied by ``max_norm / (norm + 1e-7)``.

    table: (V, D) float32/float64, writeable. ids: integer array of any shape, all in ``[0, V)``; each
    distinct row is rescaled once however often it occurs. max_norm > 0; norm_type p > 0 or inf (1: sum
    of magnitudes, 2: Euclidean, inf: largest magnitude). The norm is accumulated in double in a fixed
    order (PyTorch accumulates float32 rows in float32, so a row within rounding of max_norm may be
    decided differently; the factor is then within 1e-7 of 1). Deterministic, parallel over distinct rows.
    Returns ``table``.
    """
    dense = as_table(table, writeable=True)
    max_norm, norm_type = check_max_norm(max_norm), check_norm_type(norm_type)
    ids = as_ids(ids)
    flat = ids.reshape(-1)
    n_rows, dim = dense.shape
    threads = resolve_threads(n_threads, flat.shape[0] * dim * dense.itemsize)
    rows = _group(flat, n_rows, threads, ids.shape)[0]
    work = dense if dense.flags.c_contiguous else np.ascontiguousarray(dense)
    _rowscale.renorm_rows(work, rows, max_norm, norm_type, threads)
    if work is not dense:
        dense[rows] = work[rows]
    return table
