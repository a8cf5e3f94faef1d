"""Plain numpy oracles for the kernels, shared by the tests and the benchmarks."""
import numpy as np


def gather(table, ids):
    """``table[ids]`` via ``np.take``: shape ``ids.shape + (D,)``."""
    return np.take(np.asarray(table), np.asarray(ids), axis=0)


def scatter_add(dense, ids, grad_out):
    """``np.add.at`` over rows, in place; returns ``dense``."""
    flat = np.asarray(ids).reshape(-1)
    np.add.at(dense, flat, np.asarray(grad_out).reshape(flat.shape[0], dense.shape[1]))
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


def bag_bounds(ids, offsets=None, include_last_offset=False):
    """``(flat_ids, bounds)``: bag b holds ``flat_ids[bounds[b]:bounds[b + 1]]`` (2-D ids: one bag per row)."""
    ids = np.asarray(ids)
    if ids.ndim == 2:
        return ids.reshape(-1), np.arange(ids.shape[0] + 1) * ids.shape[1]
    bounds = np.asarray(offsets, dtype=np.int64)
    if not include_last_offset:
        bounds = np.append(bounds, ids.shape[0])
    return ids, bounds


def _bag_members(flat_ids, bounds, b, padding_idx):
    positions = np.arange(bounds[b], bounds[b + 1])
    return positions if padding_idx is None else positions[flat_ids[positions] != padding_idx]


def _bag_denominator(mode, w):
    return {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt(np.sum(w * w))}[mode]


def embedding_bag(table, ids, offsets=None, mode="sum", per_sample_weights=None, padding_idx=None,
                  include_last_offset=False):
    """Pooled lookup, bag by bag in float64 (padding skipped; empty bags and zero denominators give zeros)."""
    table = np.asarray(table, dtype=np.float64)
    flat, bounds = bag_bounds(ids, offsets, include_last_offset)
    weights = None if per_sample_weights is None else np.asarray(per_sample_weights, np.float64).reshape(-1)
    out = np.zeros((bounds.shape[0] - 1, table.shape[1]))
    for b in range(out.shape[0]):
        positions = _bag_members(flat, bounds, b, padding_idx)
        if positions.size == 0:
            continue
        rows = table[flat[positions]]
        if mode == "max":
            out[b] = rows.max(axis=0)
            continue
        w = np.ones(positions.size) if weights is None else weights[positions]
        denominator = _bag_denominator(mode, w)
        out[b] = 0.0 if denominator == 0 else (w @ rows) / denominator
    return out


def embedding_bag_grad(table, ids, grad_out, offsets=None, mode="sum", per_sample_weights=None, padding_idx=None,
                       include_last_offset=False, scale_grad_by_freq=False):
    """Dense (V, D) gradient of ``embedding_bag`` in float64, term by term: max goes to the first arg-max of
    each column; ``scale_grad_by_freq`` divides by the id's count over the whole batch."""
    table = np.asarray(table, dtype=np.float64)
    grad_out = np.asarray(grad_out, dtype=np.float64)
    flat, bounds = bag_bounds(ids, offsets, include_last_offset)
    weights = None if per_sample_weights is None else np.asarray(per_sample_weights, np.float64).reshape(-1)
    counts = np.bincount(flat, minlength=table.shape[0]) if flat.size else np.zeros(table.shape[0])
    dense = np.zeros_like(table)
    for b in range(bounds.shape[0] - 1):
        positions = _bag_members(flat, bounds, b, padding_idx)
        if positions.size == 0:
            continue
        freq = counts[flat[positions]] if scale_grad_by_freq else np.ones(positions.size)
        if mode == "max":
            winners = table[flat[positions]].argmax(axis=0)        # first maximum of each column
            for j, k in enumerate(winners):
                dense[flat[positions[k]], j] += grad_out[b, j] / freq[k]
            continue
        w = np.ones(positions.size) if weights is None else weights[positions]
        denominator = _bag_denominator(mode, w)
        if denominator == 0:
            continue
        for k, position in enumerate(positions):
            dense[flat[position]] += (w[k] / denominator / freq[k]) * grad_out[b]
    return dense


def sgd_update(table, rows, values, lr, momentum=0.0, weight_decay=0.0, buffer=None):
    """Lazy SGD on the unique ``rows`` (textbook form, in place)."""
    grad = values + weight_decay * table[rows]
    if momentum:
        buffer[rows] = momentum * buffer[rows] + grad
        grad = buffer[rows]
    table[rows] -= lr * grad


def adagrad_update(table, rows, values, state_sum, lr, eps=1e-10, weight_decay=0.0):
    grad = values + weight_decay * table[rows]
    state_sum[rows] += grad * grad
    table[rows] -= lr * grad / (np.sqrt(state_sum[rows]) + eps)


def rowwise_adagrad_update(table, rows, values, state_sum, lr, eps=1e-10, weight_decay=0.0):
    grad = values + weight_decay * table[rows]
    state_sum[rows] += np.mean(grad * grad, axis=1)
    table[rows] -= (lr / (np.sqrt(state_sum[rows]) + eps))[:, None] * grad


def sparse_adam_update(table, rows, values, exp_avg, exp_avg_sq, step, lr, betas=(0.9, 0.999), eps=1e-8):
    """Lazy Adam on the unique ``rows`` at global step ``step`` (1-based), textbook form."""
    beta1, beta2 = betas
    exp_avg[rows] = beta1 * exp_avg[rows] + (1 - beta1) * values
    exp_avg_sq[rows] = beta2 * exp_avg_sq[rows] + (1 - beta2) * values * values
    step_size = lr * np.sqrt(1 - beta2**step) / (1 - beta1**step)
    table[rows] -= step_size * exp_avg[rows] / (np.sqrt(exp_avg_sq[rows]) + eps)


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
