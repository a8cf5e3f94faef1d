"""Plain numpy oracles for the kernels, shared by the tests and the benchmarks."""
import numpy as np


def gather(table, ids):
    """``table[ids]`` via ``np.take``: shape ``ids.shape + (D,)``."""
    return np.take(np.asarray(table), np.asarray(ids), axis=0)


def scatter_add(dense, ids, grad_out):
    """``np.add.at`` over rows, in place; returns ``dense``."""
    np.add.at(dense, np.asarray(ids).reshape(-1), np.asarray(grad_out).reshape(-1, dense.shape[1]))
    return dense


def sparse_grad(ids, grad_out):
    """``(rows, values)``: sorted unique ids and their summed gradients, by ``np.unique`` + ``np.add.at``."""
    flat = np.asarray(ids).reshape(-1).astype(np.int64)
    grad_out = np.asarray(grad_out)
    grad = grad_out.reshape(flat.shape[0], grad_out.shape[-1])
    rows, inverse = np.unique(flat, return_inverse=True)
    values = np.zeros((rows.shape[0], grad.shape[1]), dtype=grad.dtype)
    np.add.at(values, inverse.reshape(-1), grad)
    return rows, values


def masked_sum(x, mask):
    """``(B, D)``: for each sequence b, the sum of ``x[b, t]`` over its unmasked t, one sequence at a time."""
    x, mask = np.asarray(x), np.asarray(mask, dtype=bool)
    out = np.zeros((x.shape[0], x.shape[2]), x.dtype)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                out[b] += x[b, t]
    return out


def masked_mean(x, mask):
    """``masked_sum`` divided by each sequence's count of unmasked steps; zeros for a fully masked one."""
    out = masked_sum(x, mask)
    for b in range(out.shape[0]):
        count = int(np.count_nonzero(mask[b]))
        if count:
            out[b] /= count
    return out
