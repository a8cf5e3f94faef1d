"""Pooled lookups ("bags"): ``embedding_bag`` and its gradient, and the ``EmbeddingBag`` layer.

A bag is a group of ids whose rows are pooled into one vector (PyTorch ``EmbeddingBag``, TensorFlow
``embedding_lookup_sparse``, FBGEMM's table-batched embeddings). Bags are given as a flat id array with CSR
``offsets`` (PyTorch's convention) or as a 2-D id array of fixed-length bags, one bag per row.

Bounding the norm of the rows a bag reads, two ways side by side (as for ``Embedding``):

- in place, PyTorch's ``max_norm``: ``max_norm_mode="inplace"`` rescales every looked-up table row whose
  norm exceeds max_norm (``renorm_``), then pools the table as it now is; the gradient is that of a plain bag.
- on the output, free of side effects: ``max_norm_mode="output"`` pools clipped copies of the rows and leaves
  the table as it is; ``embedding_bag_backward(..., max_norm=..., table=table)`` is the exact derivative.

Low-precision tables (``fastembed.lowp``: float16, bfloat16, int8 row-wise) are pooled straight into float32.
"""
import numpy as np

from fastembed import _bag, _out_of_range, _rowscale, lowp
from fastembed._interop import from_dlpack
from fastembed._options import check_max_norm, check_max_norm_mode, check_norm_type, check_padding_idx
from fastembed._plan import NO_ARGPOS, GradPlan, bag_plan
from fastembed._threads import resolve_threads
from fastembed._validation import FLOAT_DTYPES, as_float, as_ids, as_table, check_positive_int
from fastembed.layers import Embedding, _json_scalar
from fastembed.ops import _grouped, gather
from fastembed.renorm import renorm_
from fastembed.sparse import SparseGrad

MODES = ("sum", "mean", "max", "sqrtn")
_MODE_CODES = {"sum": 0, "mean": 1, "sqrtn": 2, "max": 3}
EMPTY_POLICIES = ("zeros", "raise")


class Bags:
    """Validated bag input: ``ids`` (N,) int32/int64, ``offsets`` (B + 1,) int64 from 0 to N, ``weights``
    (N,) or None, ``padding`` the id to skip or -1, ``shape`` the ids' original shape (for messages).
    ``kept``: None, or a (size of shape,) bool mask of the positions left in ``ids`` when out_of_range="zero"
    dropped some."""

    __slots__ = ("ids", "offsets", "weights", "mode", "padding", "shape", "num_rows", "threads", "kept")

    def __init__(self, ids, offsets, weights, mode, padding, shape, num_rows, threads, kept=None):
        self.ids, self.offsets, self.weights, self.mode = ids, offsets, weights, mode
        self.padding, self.shape, self.num_rows, self.threads = padding, shape, num_rows, threads
        self.kept = kept

    @property
    def n_bags(self):
        return self.offsets.shape[0] - 1

    @property
    def mode_code(self):
        return _MODE_CODES[self.mode]

    def weights_as(self, dtype):
        """The per-sample weights as a (N,) array of ``dtype``, or an empty one when there are none."""
        if self.weights is None:
            return np.empty(0, dtype)
        return np.ascontiguousarray(self.weights, dtype=dtype)

    def empty_bags(self):
        """Indices of the bags with no id left once ``padding`` ids are skipped."""
        counts = np.diff(self.offsets)
        if self.padding >= 0:
            padded = np.concatenate([[0], np.cumsum(self.ids == self.padding)])
            counts = counts - (padded[self.offsets[1:]] - padded[self.offsets[:-1]])
        return np.flatnonzero(counts == 0)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    return mode


def _check_offsets(offsets, n_ids, include_last_offset):
    """CSR offsets as (B + 1,) int64: first 0, non-decreasing, ending at ``n_ids``."""
    arr = offsets if isinstance(offsets, np.ndarray) else np.asarray(offsets)
    if arr.size == 0 and not isinstance(offsets, np.ndarray):
        arr = arr.astype(np.int64)  # np.asarray([]) is float64: an empty list is a valid (empty) offsets list
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TypeError(f"offsets must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"offsets must be 1-D, got shape {arr.shape}")
    arr = as_ids(arr, "offsets").astype(np.int64, copy=False)
    if include_last_offset:
        if arr.shape[0] == 0:
            raise ValueError("offsets must have n_bags + 1 entries with include_last_offset=True, got none")
    elif arr.shape[0] == 0:
        if n_ids:
            raise ValueError(f"offsets is empty but there are {n_ids} ids: every id must belong to a bag")
        return np.zeros(1, np.int64)
    if arr[0] != 0:
        raise ValueError(f"offsets[0] = {int(arr[0])}: the first bag must start at 0")
    steps = np.diff(arr)
    if steps.size and steps.min() < 0:
        at = int(np.argmax(steps < 0)) + 1
        raise ValueError(f"offsets[{at}] = {int(arr[at])} is less than offsets[{at - 1}] = {int(arr[at - 1])}: "
                         f"offsets must be non-decreasing")
    last = int(arr[-1])
    if include_last_offset and last != n_ids:
        raise ValueError(f"offsets[{arr.shape[0] - 1}] = {last} must equal the number of ids ({n_ids}) "
                         f"with include_last_offset=True")
    if last > n_ids:
        raise ValueError(f"offsets[{arr.shape[0] - 1}] = {last} is beyond the number of ids ({n_ids})")
    if include_last_offset:
        return np.ascontiguousarray(arr)
    return np.concatenate([arr, [n_ids]]).astype(np.int64)


def prepare_bags(ids, offsets, per_sample_weights, mode, padding_idx, include_last_offset, num_rows, dim,
                 itemsize, n_threads, out_of_range="raise"):
    """Validate a bag batch and return ``Bags``; nothing is computed before every check has passed.

    ids: (N,) with ``offsets``, or (B, L) fixed-length bags with ``offsets=None``. per_sample_weights: ids'
    shape. num_rows: ids must lie in ``[0, num_rows)`` (None: only non-negative), or are mapped by
    ``out_of_range`` (see ``embedding_bag``).
    """
    mode = check_mode(mode)
    policy = _out_of_range.parse(out_of_range, num_rows)
    ids = as_ids(ids)
    if ids.ndim == 2:
        if offsets is not None:
            raise ValueError(f"offsets must be None when ids is 2-D (fixed-length bags), got ids of shape "
                             f"{ids.shape} and offsets")
        n_bags, length = ids.shape
        offsets = np.arange(0, n_bags * length + 1, max(length, 1), dtype=np.int64)
        if length == 0:
            offsets = np.zeros(n_bags + 1, np.int64)
    elif ids.ndim == 1:
        if offsets is None:
            raise ValueError("offsets is required when ids is 1-D (or pass 2-D ids of fixed-length bags)")
        offsets = _check_offsets(offsets, ids.shape[0], include_last_offset)
    else:
        raise ValueError(f"ids must be 1-D (with offsets) or 2-D (fixed-length bags), got shape {ids.shape}")
    weights = None
    if per_sample_weights is not None:
        if mode == "max":
            raise ValueError("per_sample_weights are not supported with mode='max' (use 'sum', 'mean' or 'sqrtn')")
        weights = as_float(per_sample_weights, "per_sample_weights")
        if weights.shape != ids.shape:
            raise ValueError(f"per_sample_weights must have the ids' shape {ids.shape}, got {weights.shape}")
        weights = weights.reshape(-1)
    padding = check_padding_idx(padding_idx, num_rows)
    padding = -1 if padding is None else padding
    flat = ids.reshape(-1)
    threads = resolve_threads(n_threads, flat.shape[0] * max(dim, 1) * itemsize)
    limit = num_rows if num_rows is not None else np.iinfo(np.int64).max
    kept = None
    if _out_of_range.needs_mapping(flat, limit, policy, threads, ids.shape):
        flat, offsets, weights, kept = _map_strays(flat, offsets, weights, num_rows, policy, threads)
    return Bags(flat, offsets, weights, mode, padding, ids.shape, num_rows, threads, kept)


def _map_strays(flat, offsets, weights, num_rows, policy, threads):
    """``(ids, offsets, weights, kept)`` with the ids outside the table mapped by ``policy``; under "zero" their
    positions leave their bags (as TensorFlow's ``safe_embedding_lookup_sparse`` prunes invalid ids) and
    ``kept`` masks the positions left, otherwise it is None."""
    mapped = _out_of_range.remap(flat, num_rows, policy, threads)
    if policy.code != _out_of_range.ZERO:
        return mapped, offsets, weights, None
    kept = mapped != num_rows
    kept_before = np.concatenate([[0], np.cumsum(kept)])
    return (np.ascontiguousarray(mapped[kept]), kept_before[offsets].astype(np.int64),
            None if weights is None else weights[kept], kept)


def _check_empty_policy(empty):
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {', '.join(map(repr, EMPTY_POLICIES))}; got {empty!r}")


def _pool(table, bags, empty):
    """Pool ``bags`` (validated) from a float table, or a low-precision one into float32."""
    if empty == "raise":
        empty_bags = bags.empty_bags()
        if empty_bags.size:
            b = int(empty_bags[0])
            raise ValueError(f"bag {b} (ids[{bags.offsets[b]}:{bags.offsets[b + 1]}]) has no id to pool "
                             f"and empty='raise'" + (f" ({empty_bags.size} empty bags in all)"
                                                     if empty_bags.size > 1 else ""))
    reader = lowp.reader(table)
    if reader is not None:
        out = np.empty((bags.n_bags, reader.shape[1]), dtype=np.float32)
        reader.pool(bags.ids, bags.offsets, bags.weights_as(np.float32), bags.mode_code, bags.padding, out,
                    bags.threads)
        return out
    out = np.empty((bags.n_bags, table.shape[1]), dtype=table.dtype)
    _bag.bag_forward(table, bags.ids, bags.offsets, bags.weights_as(table.dtype), bags.mode_code, bags.padding,
                     out, NO_ARGPOS, bags.threads)
    return out


def _max_norm_options(max_norm, norm_type, max_norm_mode):
    """``(max_norm, norm_type, mode)`` checked, or None when max_norm is None."""
    mode = check_max_norm_mode(max_norm_mode)
    norm_type = check_norm_type(norm_type)
    if max_norm is None:
        return None
    return check_max_norm(max_norm), norm_type, mode


def _compact_rows(table, bags, max_norm=None, norm_type=2.0):
    """The distinct rows the bags read, as a (U, D) float table, and the bags renumbered into it.

    Returns ``(rows, compact, compact_bags)``: ``compact[u] = table[rows[u]]`` (read into float32 from a
    low-precision table; clipped to ``max_norm`` when given), ``rows`` (U,) sorted unique ids. Each distinct
    row is read (and clipped) once, whatever its count.
    """
    rows, order, seg_ptr = _grouped(bags.ids, bags.num_rows, bags.threads, False)
    local = np.empty(bags.ids.shape[0], np.int64)
    local[order] = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(seg_ptr))
    compact = gather(table, rows, n_threads=bags.threads, max_norm=max_norm, norm_type=norm_type)
    padding = -1
    if bags.padding >= 0:
        at = int(np.searchsorted(rows, bags.padding))
        padding = at if at < rows.shape[0] and rows[at] == bags.padding else -1
    # At least one row: a row count must be positive, even for a batch without ids.
    compact_bags = Bags(local, bags.offsets, bags.weights, bags.mode, padding, bags.shape, max(rows.shape[0], 1),
                        bags.threads)
    return rows, compact, compact_bags


def _clipped_grad(table, bags, grad, max_norm, norm_type, scale_grad_by_freq):
    """The table's ``SparseGrad`` through bags of rows clipped to ``max_norm`` (``max_norm_mode="output"``):
    the bag gradient of the clipped rows, then the clip's exact derivative row by row."""
    rows, compact, compact_bags = _compact_rows(table, bags, max_norm, norm_type)
    local = bag_plan(compact_bags, grad, table.dtype, scale_grad_by_freq, compact).sparse_grad()
    kept = rows[local.rows]
    values = np.ascontiguousarray(local.values)
    _rowscale.clip_rows_backward(table, kept, values, max_norm, norm_type, bags.threads)
    return SparseGrad(kept, values, bags.num_rows)


def _table_and_reader(table):
    """``(table, reader)``: a low-precision table with its ``lowp.Reader``, or a float ndarray and None."""
    table = from_dlpack(table, "table")
    reader = lowp.reader(table)
    return (table, reader) if reader is not None else (as_table(table), None)


def embedding_bag(table, ids, offsets=None, mode="sum", per_sample_weights=None, padding_idx=None,
                  include_last_offset=False, empty="zeros", n_threads=None, max_norm=None, norm_type=2.0,
                  max_norm_mode="output", out_of_range="raise"):
    """Pool the rows of each bag: ``out[b] = pool(table[ids in bag b])``.

    table: (V, D) float32/float64, or a low-precision table (float16 array, bfloat16 ``lowp.BFloat16Table``
    or ``ml_dtypes.bfloat16`` array, int8 ``lowp.QuantizedTable``): each row read into float32, the bag
    accumulated in float32, a float32 output. ids: (N,) int with ``offsets``, or (B, L) for B bags of L ids each.
    offsets: (B,) bag starts (PyTorch's convention: ``offsets[0] == 0``, non-decreasing, the last bag runs to
    N), or (B + 1,) ending with N when ``include_last_offset``. Any integer dtype.
    mode: ``"sum"``; ``"mean"`` (the sum divided by the bag's size, or by the sum of its weights);
    ``"sqrtn"`` (divided by the square root of the size, or of the sum of squared weights); ``"max"``
    (column-wise maximum). per_sample_weights: float, ids' shape, multiplies each row (not with max).
    padding_idx: ids equal to it are skipped and not counted. empty: ``"zeros"`` (a bag with no id, or only
    padding, or weights summing to 0 under mean/sqrtn, gives zeros) or ``"raise"`` (``ValueError`` naming the
    first bag with no id). max_norm / norm_type: bound the norm_type-norm of every row read by max_norm
    (a longer row is scaled by ``max_norm / (norm + 1e-7)``, PyTorch's rule) before pooling; max_norm_mode:
    ``"output"`` (the default here, as in ``gather``: clipped copies are pooled, the table is not touched) or
    ``"inplace"`` (PyTorch's ``F.embedding_bag(max_norm=...)``: the looked-up rows of the table itself are
    rescaled first, padding included; needs a writeable float table). out_of_range: what an id outside
    ``[0, V)`` does, as in ``gather``: ``"raise"`` (an ``IndexError`` naming it), ``"clip"`` (the nearest row),
    an int row (that row), or ``"zero"`` (it reads nothing: it adds nothing to its bag and is not counted by
    mean or sqrtn, like ``padding_idx``). Returns (B, D), the table's dtype (float32 for low precision). Each
    bag is summed in position order by one thread: the same bits for any
    thread count.
    """
    given = table
    table, reader = _table_and_reader(table)
    _check_empty_policy(empty)
    clip = _max_norm_options(max_norm, norm_type, max_norm_mode)
    if clip is not None and clip[2] == "inplace" and reader is not None:
        raise ValueError(f"max_norm_mode='inplace' rewrites table rows, which a {lowp.storage_of(table)} table "
                         f"cannot hold exactly: use max_norm_mode='output'")
    n_rows, dim = table.shape if reader is None else reader.shape
    bags = prepare_bags(ids, offsets, per_sample_weights, mode, padding_idx, include_last_offset, n_rows, dim,
                        4 if reader is not None else table.itemsize, n_threads, out_of_range)
    if clip is not None and clip[2] == "output":
        _, compact, compact_bags = _compact_rows(table, bags, clip[0], clip[1])
        return _pool(compact, compact_bags, empty)
    if clip is not None:
        # The table as given: a list would be converted to a temporary, and the rescaling silently lost.
        renorm_(given, bags.ids, clip[0], clip[1], n_threads=bags.threads)
    return _pool(table if reader is not None else np.ascontiguousarray(table), bags, empty)


def embedding_bag_backward(ids, grad_out, offsets=None, mode="sum", per_sample_weights=None, padding_idx=None,
                           include_last_offset=False, scale_grad_by_freq=False, num_rows=None, table=None,
                           n_threads=None, max_norm=None, norm_type=2.0, out_of_range="raise"):
    """Gradient of ``embedding_bag`` with respect to the table, as a ``SparseGrad``.

    ids, offsets, mode, per_sample_weights, padding_idx, include_last_offset: as given to the forward pass.
    grad_out: (B, D), the gradient of its output. num_rows: V (defaults to the table's). table: the (V, D)
    table of the forward pass; required for ``mode="max"``, whose gradient goes, column by column, to the row
    that held the maximum (the first of equal maxima). scale_grad_by_freq: each term divided by the number of
    times its id occurs in the whole batch (PyTorch's ``nn.Embedding`` rule). out_of_range: as in the forward
    pass (needs num_rows or table unless "raise"): ids mapped to a row train it. Rows are the sorted unique ids
    but ``padding_idx``; values have grad_out's dtype (the table's when given). Memory O(N + B * D), never
    O(V); the same bits for any thread count.
    max_norm / norm_type: the gradient of ``embedding_bag(..., max_norm=..., max_norm_mode="output")``, the
    exact derivative of the clipped rows; needs ``table``. (After ``max_norm_mode="inplace"`` the forward
    pass read the rescaled table as it is: its gradient is the plain one, without max_norm.) The gradient of
    ``per_sample_weights`` is ``per_sample_weights_grad``.
    """
    if table is not None:
        table = np.ascontiguousarray(as_table(table))
        num_rows = table.shape[0] if num_rows is None else num_rows
    if num_rows is not None:
        num_rows = check_positive_int(num_rows, "num_rows")
    grad = as_float(grad_out, "grad_out", dtype=None if table is None else table.dtype)
    dim = grad.shape[-1] if grad.ndim else 0
    clip = _max_norm_options(max_norm, norm_type, "output")
    if clip is not None and table is None:
        raise ValueError("max_norm needs the table the rows were read from: pass table=")
    bags = prepare_bags(ids, offsets, per_sample_weights, mode, padding_idx, include_last_offset, num_rows, dim,
                        grad.itemsize, n_threads, out_of_range)
    if clip is not None:
        return _clipped_grad(table, bags, grad, clip[0], clip[1], scale_grad_by_freq)
    return bag_plan(bags, grad, grad.dtype, scale_grad_by_freq, table).sparse_grad()


def per_sample_weights_grad(table, ids, grad_out, offsets=None, mode="sum", per_sample_weights=None,
                            padding_idx=None, include_last_offset=False, max_norm=None, norm_type=2.0,
                            n_threads=None, out_of_range="raise"):
    """Gradient of ``embedding_bag`` with respect to its ``per_sample_weights``: ``d loss / d w_k``.

    table: the (V, D) table the forward pass read (float, or low precision read as float32); ids, offsets,
    mode, per_sample_weights, padding_idx, include_last_offset: as given to it; grad_out: (B, D), the gradient
    of its output. For position k of bag b, with ``x_k = table[ids[k]]`` and ``g = grad_out[b]``:

    - ``"sum"``: ``g . x_k`` (PyTorch's ``per_sample_weights`` gradient; the weights themselves may be None);
    - ``"mean"``: ``(g . x_k - g . out[b]) / sum(w)``;
    - ``"sqrtn"``: ``(g . x_k - (g . out[b]) * w_k / r) / r`` with ``r = sqrt(sum(w^2))``.

    Positions holding ``padding_idx``, and bags whose weights sum to 0 (their output is defined as 0), get 0.
    max_norm / norm_type: the forward pass clipped its rows with ``max_norm_mode="output"`` (x_k is then the
    clipped row). out_of_range: as in the forward pass; a position whose id it dropped ("zero") gets 0.
    Returns an array of the ids' shape, grad_out's dtype (the table's; float32 for low
    precision). Each dot is summed in a fixed order: the same bits for any thread count.
    """
    table, reader = _table_and_reader(table)
    mode = check_mode(mode)
    if mode == "max":
        raise ValueError("mode='max' takes no per_sample_weights, so it has no gradient for them")
    if mode != "sum" and per_sample_weights is None:
        raise ValueError(f"the gradient of mode={mode!r} depends on the weights: pass per_sample_weights")
    clip = _max_norm_options(max_norm, norm_type, "output")
    n_rows, dim = table.shape if reader is None else reader.shape
    dtype = np.dtype(np.float32) if reader is not None else table.dtype
    grad = np.ascontiguousarray(as_float(grad_out, "grad_out", dtype=dtype))
    bags = prepare_bags(ids, offsets, per_sample_weights, mode, padding_idx, include_last_offset, n_rows, dim,
                        dtype.itemsize, n_threads, out_of_range)
    if grad.shape != (bags.n_bags, dim):
        raise ValueError(f"grad_out must have shape (number of bags, D) = ({bags.n_bags}, {dim}), got {grad.shape}")
    read_bags = bags
    if reader is not None or clip is not None:
        _, read_table, read_bags = _compact_rows(table, bags, *(clip[:2] if clip else (None, 2.0)))
    else:
        read_table = np.ascontiguousarray(table)
    dots = np.empty(bags.ids.shape[0], dtype)
    _bag.position_dots(read_table, read_bags.ids, bags.offsets, grad, read_bags.padding, dots, bags.threads)
    weights_grad = _weights_grad_from_dots(bags, dots)
    if bags.kept is not None:
        dropped_zero = np.zeros(bags.kept.shape[0], weights_grad.dtype)
        dropped_zero[bags.kept] = weights_grad
        weights_grad = dropped_zero
    return weights_grad.reshape(bags.shape)


def _weights_grad_from_dots(bags, dots):
    """Each weight's derivative from ``dots[k] = g_b . x_k``: the sum's as it is, mean's and sqrtn's with the
    derivative of their denominator (per-bag sums in float64, in numpy: O(N))."""
    if bags.mode == "sum":
        return dots
    n_bags = bags.n_bags
    bag_of = np.repeat(np.arange(n_bags), np.diff(bags.offsets))
    live = bags.ids != bags.padding if bags.padding >= 0 else np.ones(bags.ids.shape[0], bool)
    weights = np.where(live, bags.weights.astype(np.float64), 0.0)
    d = dots.astype(np.float64)
    if bags.mode == "mean":
        denom = np.bincount(bag_of, weights, minlength=n_bags)
    else:
        denom = np.sqrt(np.bincount(bag_of, weights * weights, minlength=n_bags))
    safe = np.where(denom == 0, 1.0, denom)
    g_dot_out = np.bincount(bag_of, weights * d, minlength=n_bags) / safe
    if bags.mode == "mean":
        result = (d - g_dot_out[bag_of]) / safe[bag_of]
    else:
        result = (d - g_dot_out[bag_of] * weights / safe[bag_of]) / safe[bag_of]
    result[~live | (denom[bag_of] == 0)] = 0.0
    return result.astype(dots.dtype)


class EmbeddingBag(Embedding):
    """Pools bags of ids into vectors: ``layer(ids, offsets)[b] == pool(layer.embeddings[bag b])``.

    Mirrors ``Embedding`` (initializers, ``trainable``, ``grad``, ``step``, ``zero_grad``,
    ``get_weights``/``set_weights``, ``count_params``, ``from_pretrained``), with PyTorch's bag options.

    Args:
        num_embeddings: table rows V; embedding_dim: width D.
        mode: ``"mean"`` (PyTorch's default), ``"sum"``, ``"sqrtn"`` or ``"max"`` (see ``embedding_bag``).
        padding_idx: an id that is skipped in every bag; its row starts at zeros (under a random or constant
            initializer; ``weights`` are kept as given) and never receives gradient.
        scale_grad_by_freq: divide each id's gradient by its count in the batch.
        include_last_offset: offsets have B + 1 entries, the last equal to the number of ids.
        empty: ``"zeros"`` or ``"raise"`` for bags with no id (see ``embedding_bag``).
        max_norm, norm_type, max_norm_mode: as for ``Embedding``: ``"inplace"`` (PyTorch's behaviour, the
            default: each call rescales the looked-up table rows, then pools them) or ``"output"`` (the table is
            left as it is, the pooled rows are clipped copies, and ``backward`` is the clip's exact derivative).
        storage: None, or ``"float16"``, ``"bfloat16"``, ``"int8"`` for a low-precision inference table
            (``trainable=False``), pooled into float32 (see ``Embedding``).
        out_of_range: ``"raise"``, ``"clip"``, ``"zero"`` or an int row (see ``embedding_bag``), in the call,
            ``backward`` and the optimizers' ``fused_step``.
        embeddings_initializer, trainable, weights, dtype, seed, name: as for ``Embedding``.

    ``backward`` with ``per_sample_weights`` also leaves their gradient in ``per_sample_weights_grad``.
    """

    def __init__(self, num_embeddings, embedding_dim, mode="mean", padding_idx=None, scale_grad_by_freq=False,
                 include_last_offset=False, empty="zeros", embeddings_initializer="uniform", trainable=True,
                 weights=None, dtype="float32", seed=None, name=None, max_norm=None, norm_type=2.0,
                 max_norm_mode="inplace", storage=None, out_of_range="raise"):
        # Checked under this layer's own names (Embedding's are input_dim and output_dim).
        check_positive_int(num_embeddings, "num_embeddings")
        check_positive_int(embedding_dim, "embedding_dim")
        super().__init__(num_embeddings, embedding_dim, embeddings_initializer=embeddings_initializer,
                         trainable=trainable, weights=weights, dtype=dtype, seed=seed, name=name or "embedding_bag",
                         padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq, max_norm=max_norm,
                         norm_type=norm_type, max_norm_mode=max_norm_mode, storage=storage,
                         out_of_range=out_of_range)
        self.mode = check_mode(mode)
        self.include_last_offset = bool(include_last_offset)
        _check_empty_policy(empty)
        self.empty = empty
        self.per_sample_weights_grad = None

    def get_config(self):
        """The constructor arguments that rebuild this layer, weights and initializer aside (a JSON-able dict)."""
        return {"num_embeddings": self.input_dim, "embedding_dim": self.output_dim, "mode": self.mode,
                "padding_idx": self.padding_idx, "scale_grad_by_freq": self.scale_grad_by_freq,
                "include_last_offset": self.include_last_offset, "empty": self.empty,
                "trainable": self.trainable, "dtype": self.dtype.name, "name": self.name,
                "max_norm": self.max_norm, "norm_type": self.norm_type, "max_norm_mode": self.max_norm_mode,
                "storage": self.storage if self.storage in lowp.STORAGES else None,
                "out_of_range": _json_scalar(self.out_of_range)}

    @staticmethod
    def _table_shape(config):
        return config.get("num_embeddings"), config.get("embedding_dim")

    @classmethod
    def from_pretrained(cls, matrix, trainable=False, storage=None, **kwargs):
        """A bag layer whose table is (a copy of) ``matrix`` (V, D), frozen unless ``trainable=True``.

        matrix: a float matrix or a low-precision table (``lowp``); storage: as in the constructor.
        """
        if lowp.storage_of(matrix) is None:
            matrix = np.asarray(matrix)
        if len(matrix.shape) != 2:
            raise ValueError(f"a pre-trained matrix must be 2-D (V, D), got shape {matrix.shape}")
        dtype = matrix.dtype if isinstance(matrix, np.ndarray) else None
        kwargs.setdefault("dtype", dtype if dtype is not None and dtype in FLOAT_DTYPES else "float32")
        return cls(matrix.shape[0], matrix.shape[1], weights=matrix, trainable=trainable, storage=storage,
                   **kwargs)

    @property
    def num_embeddings(self):
        return self.input_dim

    @property
    def embedding_dim(self):
        return self.output_dim

    def _bags(self, ids, offsets, per_sample_weights, n_threads):
        return prepare_bags(ids, offsets, per_sample_weights, self.mode, self.padding_idx, self.include_last_offset,
                            self.input_dim, self.output_dim, self.dtype.itemsize, n_threads, self.out_of_range)

    def __call__(self, ids, offsets=None, per_sample_weights=None, n_threads=None):
        """Pool the bags → (B, embedding_dim), the layer's dtype. ids/offsets as in ``embedding_bag``.

        With ``max_norm`` in "inplace" mode the looked-up rows of the table are rescaled first."""
        bags = self._bags(ids, offsets, per_sample_weights, n_threads)
        if self.max_norm is not None and self.max_norm_mode == "output":
            _, compact, compact_bags = _compact_rows(self.embeddings, bags, self.max_norm, self.norm_type)
            return _pool(compact, compact_bags, self.empty)
        if self.max_norm is not None:
            renorm_(self.embeddings, bags.ids, self.max_norm, self.norm_type, n_threads=bags.threads)
        return _pool(self.embeddings, bags, self.empty)

    def _clipped(self):
        return self.max_norm is not None and self.max_norm_mode == "output"

    def _sparse_grad(self, bags, grad_out):
        if self._clipped():
            grad = as_float(grad_out, "grad_out", dtype=self.dtype)
            return _clipped_grad(self.embeddings, bags, grad, self.max_norm, self.norm_type, self.scale_grad_by_freq)
        return bag_plan(bags, grad_out, self.dtype, self.scale_grad_by_freq, self.embeddings).sparse_grad()

    def _grad_plan(self, ids, offsets, grad_out, per_sample_weights=None, n_threads=None):
        """The grouped gradient of one call (see ``fastembed._plan``); used by the fused optimizers. In max
        mode the arg-max is recomputed from the current table."""
        self._check_trainable_storage()
        bags = self._bags(ids, offsets, per_sample_weights, n_threads)
        if self._clipped():
            # The clip's derivative applies to each row's summed gradient: reduce first, then one term per row.
            grad = self._sparse_grad(bags, grad_out)
            n = grad.rows.shape[0]
            return GradPlan(grad.rows, np.arange(n, dtype=np.int64), np.arange(n + 1, dtype=np.int64),
                            grad.values, self.input_dim, bags.threads)
        return bag_plan(bags, grad_out, self.dtype, self.scale_grad_by_freq, self.embeddings)

    def _check_trainable_storage(self):
        if self.storage in lowp.STORAGES:
            raise ValueError(f"a {self.storage} table is for inference: backward needs float32 or float64 storage")

    def backward(self, ids, offsets, grad_out, per_sample_weights=None, n_threads=None):
        """Gradient of the table for one call's ``grad_out`` (B, embedding_dim), with the call's ids, offsets
        and weights. Returns the call's ``SparseGrad`` and, when trainable, adds it to ``self.grad``. Max mode
        finds each arg-max again from the table, which must be the one the forward pass read.

        With ``per_sample_weights``, their gradient (ids' shape, see ``per_sample_weights_grad``) is left in
        ``self.per_sample_weights_grad``; without, that is None."""
        self._check_trainable_storage()
        bags = self._bags(ids, offsets, per_sample_weights, n_threads)
        grad = self._sparse_grad(bags, grad_out)
        self.per_sample_weights_grad = None
        if per_sample_weights is not None:
            clip = {"max_norm": self.max_norm, "norm_type": self.norm_type} if self._clipped() else {}
            self.per_sample_weights_grad = per_sample_weights_grad(
                self.embeddings, ids, grad_out, offsets, self.mode, per_sample_weights, self.padding_idx,
                self.include_last_offset, n_threads=n_threads, out_of_range=self.out_of_range, **clip)
        if self.trainable:
            self.grad = grad if self.grad is None else self.grad + grad
        return grad

    def __repr__(self):
        flags = [f"mode={self.mode!r}"]
        if self.padding_idx is not None:
            flags.append(f"padding_idx={self.padding_idx}")
        if self.scale_grad_by_freq:
            flags.append("scale_grad_by_freq=True")
        if self.include_last_offset:
            flags.append("include_last_offset=True")
        if self.empty != "zeros":
            flags.append(f"empty={self.empty!r}")
        if self.max_norm is not None:
            flags.append(f"max_norm={self.max_norm}, norm_type={self.norm_type}, max_norm_mode={self.max_norm_mode!r}")
        if self.storage in lowp.STORAGES:
            flags.append(f"storage={self.storage!r}")
        if not self.trainable:
            flags.append("trainable=False")
        if not (isinstance(self.out_of_range, str) and self.out_of_range == "raise"):
            flags.append(f"out_of_range={self.out_of_range!r}")
        return (f"EmbeddingBag(name={self.name!r}, num_embeddings={self.input_dim}, "
                f"embedding_dim={self.output_dim}, dtype={self.dtype.name}, {', '.join(flags)}, "
                f"params={self.count_params()})")
