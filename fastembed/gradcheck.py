"""Numerical-gradient check of an embedding layer's sparse backward pass."""
from dataclasses import dataclass

import numpy as np

from fastembed import _out_of_range
from fastembed._validation import as_ids, check_finite_scalar


@dataclass
class GradcheckReport:
    """Outcome of ``gradcheck``.

    ok: every checked entry within ``atol + rtol * |numeric|`` and untouched rows exactly zero.
    max_abs_err / max_rel_err: worst |analytic - numeric| and that divided by max(|numeric|, tiny).
    worst_row: the table row holding the worst absolute error (None when nothing was checked).
    checked_rows: rows compared by finite differences (looked-up rows plus sampled untouched ones).
    untouched_nonzero: untouched rows whose analytic or numeric gradient is not exactly zero.
    """

    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst_row: object
    checked_rows: int
    untouched_nonzero: list

    def __bool__(self):
        return self.ok


def default_loss(seed=0):
    """A smooth scalar loss of the output, ``sum(c * y) + 0.5 * sum(y**2)`` with fixed random c.

    Returns ``loss(y) -> (value, dL/dy)``; non-linear in the table when ids repeat.
    """
    cache = {}

    def loss(y):
        key = y.shape
        if key not in cache:
            cache[key] = np.random.default_rng(seed).standard_normal(y.shape)
        c = cache[key]
        return float(np.sum(c * y) + 0.5 * np.sum(y * y)), c + y

    return loss


def gradcheck(layer, ids, loss=None, eps=1e-6, atol=1e-8, rtol=1e-6, untouched_samples=8, seed=0, call_kwargs=None):
    """Compare ``layer.backward`` with central finite differences, in float64.

    layer: an ``Embedding`` (anything with ``embeddings``, ``__call__`` and ``backward``); its weights and
    gradient are left as they were. ids: integer array of any shape. loss: ``f(y) -> (scalar, dL/dy)`` over
    the layer's output (default ``default_loss()``). Every row read (after the layer's ``out_of_range`` policy)
    and up to ``untouched_samples`` other rows are perturbed entry by entry by ±eps; untouched rows must get
    exactly zero gradient. eps must be positive and finite.
    A layer's documented departures from the true derivative are expected too: ``padding_idx``'s row gets
    zero, and with ``scale_grad_by_freq`` each row gets its finite difference divided by its id's count.
    call_kwargs: extra keyword arguments of both ``layer(ids, **call_kwargs)`` and
    ``layer.backward(ids, grad_out=..., **call_kwargs)``, e.g. ``{"offsets": offsets}`` for an
    ``EmbeddingBag`` (``{"offsets": None}`` with 2-D ids).
    """
    call_kwargs = dict(call_kwargs or {})
    eps = check_finite_scalar(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    call_kwargs = dict(call_kwargs or {})
    if getattr(layer, "storage", "float64") not in ("float32", "float64"):
        raise ValueError(f"gradcheck needs a float32 or float64 table, not {layer.storage} storage")
    if getattr(layer, "max_norm", None) is not None and getattr(layer, "max_norm_mode", None) == "inplace":
        raise ValueError("gradcheck needs max_norm_mode='output': in-place renormalisation rewrites the "
                         "table on every call, so finite differences do not see the perturbed values")
    loss = loss or default_loss(seed)
    ids = as_ids(ids)
    saved_weights, saved_grad, saved_dtype = layer.embeddings, layer.grad, layer.dtype
    saved_trainable = layer.trainable
    table = np.array(saved_weights, dtype=np.float64)
    try:
        layer.embeddings, layer.dtype, layer.grad, layer.trainable = table, np.dtype(np.float64), None, True
        _, grad_y = loss(layer(ids, **call_kwargs))
        analytic = layer.backward(ids, grad_out=np.asarray(grad_y, dtype=np.float64), **call_kwargs)
        analytic_rows = dict(zip(analytic.rows.tolist(), analytic.values))
        policy = _out_of_range.parse(getattr(layer, "out_of_range", "raise"), table.shape[0])
        read = _out_of_range.rows_read(ids.reshape(-1), table.shape[0], policy)
        touched, counts = np.unique(read, return_counts=True)
        expected_scale = _expected_scale(layer, dict(zip(touched.tolist(), counts.tolist())))
        rng = np.random.default_rng(seed)
        untouched_pool = np.setdiff1d(np.arange(table.shape[0]), touched)
        untouched = rng.choice(untouched_pool, size=min(untouched_samples, untouched_pool.size), replace=False)

        def value():
            return loss(layer(ids, **call_kwargs))[0]

        max_abs = max_rel = 0.0
        worst_row, ok, untouched_nonzero = None, True, []
        for row in list(touched.tolist()) + list(untouched.tolist()):
            expected = analytic_rows.get(row)
            numeric = np.empty(table.shape[1])
            for j in range(table.shape[1]):
                original = table[row, j]
                table[row, j] = original + eps
                plus = value()
                table[row, j] = original - eps
                minus = value()
                table[row, j] = original
                numeric[j] = (plus - minus) / (2 * eps)
            numeric *= expected_scale(row)
            if row not in analytic_rows:
                if np.any(numeric != 0.0):
                    untouched_nonzero.append(row)
                    ok = False
                expected = np.zeros_like(numeric)
            err = np.abs(expected - numeric)
            rel = err / np.maximum(np.abs(numeric), np.finfo(np.float64).tiny)
            if not np.all(err <= atol + rtol * np.abs(numeric)):
                ok = False
            if err.size and err.max() >= max_abs:
                max_abs, worst_row = float(err.max()), row
            if rel.size:
                max_rel = max(max_rel, float(np.where(err == 0, 0.0, rel).max()))
        extra_rows = set(analytic_rows) - set(touched.tolist())
        if extra_rows:
            ok = False
            untouched_nonzero.extend(sorted(extra_rows))
    finally:
        layer.embeddings, layer.grad, layer.dtype = saved_weights, saved_grad, saved_dtype
        layer.trainable = saved_trainable
    return GradcheckReport(ok, max_abs, max_rel, worst_row, len(touched) + len(untouched), untouched_nonzero)


def _expected_scale(layer, counts):
    """``row -> factor`` by which a row's analytic gradient departs from its finite difference."""
    padding = getattr(layer, "padding_idx", None)
    by_freq = getattr(layer, "scale_grad_by_freq", False)

    def scale(row):
        if row == padding:
            return 0.0
        return 1.0 / counts[row] if by_freq and row in counts else 1.0

    return scale
