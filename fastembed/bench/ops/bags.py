"""Pooled bags and fused sparse optimizer steps, on the bag workloads (``bags20``, ``bags1_39``).

- ``bag_forward`` (sum) and ``bag_forward_mean``: ``fastembed.embedding_bag`` vs ``F.embedding_bag``, FBGEMM's CPU
  TBE forward and numpy (``np.add.reduceat`` over ``np.take``).
- ``bag_forward_int8`` (opt-in): the same over an int8 row-wise table vs PyTorch's quantized bag operator.
- ``bag_backward``: ``fastembed.embedding_bag_backward`` (a ``SparseGrad``) vs PyTorch's dense and sparse
  (+ coalesce) backward of ``F.embedding_bag``, and ``np.add.at``.
- ``fused_step`` (row-wise Adagrad), ``fused_step_adam`` (SparseAdam), and opt-in ``fused_step_sgd`` and
  ``fused_step_adagrad``: one ``fused_step`` (backward and update in one pass) vs PyTorch's ``sparse=True`` bag
  backward + the optimizer's ``step()``, and FBGEMM's fused backward-and-update TBEs.

The peers' forward passes run untimed (``prepare``): each timing is the backward and the update only. A fused
step is checked row by row against the textbook update of the peer's own rule (``_first_step``, from the numpy
oracles), applied to fastembed's bag gradient: PyTorch has no row-wise Adagrad, so its nearest, the element-wise
one, is checked as such and said so in its note.
"""
from dataclasses import dataclass

import numpy as np

import fastembed
from fastembed import _reference as ref
from fastembed import lowp, optim
from fastembed.bench import peers
from fastembed.bench.ops._common import ADD_AT_BUDGET_S, fbgemm_module, torch_autograd_backward, zeroed
from fastembed.bench.registry import (ATOL, RTOL_SUM, Case, Dense, Impl, Op, Sparse, check_gradient, compare_sums,
                                      register)

LR = 0.01
EPS = 1e-8


# ---- inputs shared by the ops (cached on the workload) ------------------------------------------------------------

def torch_bag_inputs(wl):
    """(table, ids, offsets with B + 1 entries, grad_out) as torch tensors sharing the numpy inputs' memory."""
    torch = peers.torch()
    return wl.cache("torch_bags", lambda: (torch.from_numpy(wl.table), torch.from_numpy(wl.ids),
                                           torch.from_numpy(wl.offsets), torch.from_numpy(wl.grad_out)))


def _bag_of_positions(wl):
    return wl.cache("bag_of", lambda: np.repeat(np.arange(wl.n_bags), np.diff(wl.offsets)))


def bag_grad(wl, magnitudes=False):
    """fastembed's sum-bag gradient of the workload as a ``Sparse``; with ``magnitudes``, that of |grad_out|
    (the scale of the tolerance of gradient checks)."""
    def make():
        grad_out = np.abs(wl.grad_out) if magnitudes else wl.grad_out
        grad = fastembed.embedding_bag_backward(wl.ids, grad_out, wl.offsets, include_last_offset=True,
                                                num_rows=wl.rows)
        return Sparse(grad.rows, grad.values)
    return wl.cache(("bag_grad", magnitudes), make)


# ---- forward ------------------------------------------------------------------------------------------------------

def _fastembed_forward(mode):
    def build(wl, n):
        return Case(lambda: fastembed.embedding_bag(wl.table, wl.ids, wl.offsets, mode=mode, include_last_offset=True,
                                                    n_threads=n), result=Dense)
    return build


def _torch_forward(mode):
    def build(wl, n):
        torch = peers.torch()
        table, ids, offsets, _ = torch_bag_inputs(wl)
        embedding_bag = torch.nn.functional.embedding_bag

        def call():
            with torch.no_grad():
                return embedding_bag(ids, table, offsets, mode=mode, include_last_offset=True)

        return Case(call, result=lambda r: Dense(r.numpy()))
    return build


def _fbgemm_forward(mode):
    def build(wl, n):
        torch = peers.torch()
        tbe, _ = fbgemm_module(wl, pooling=mode.upper())
        _, ids, offsets, _ = torch_bag_inputs(wl)

        def call():
            with torch.no_grad():
                return tbe(ids, offsets)

        return Case(call, result=lambda r: Dense(r.numpy()))
    return build


def _numpy_forward(mode):
    def build(wl, n):
        starts = wl.offsets[:-1]
        lengths = np.diff(wl.offsets).astype(wl.table.dtype)[:, None]

        def call():
            pooled = np.add.reduceat(np.take(wl.table, wl.ids, axis=0, mode="clip"), starts, axis=0)
            return pooled / lengths if mode == "mean" else pooled

        return Case(call, result=Dense)
    return build


def _forward_check(mode):
    def check(expected, got, wl):
        magnitudes = wl.cache(("abs_pooled", mode), lambda: fastembed.embedding_bag(
            np.abs(wl.table), wl.ids, wl.offsets, mode=mode, include_last_offset=True))
        return compare_sums(expected.array, np.asarray(got.array), magnitudes)
    return check


for _mode, _order in (("sum", 10), ("mean", 11)):
    register(Op(
        name="bag_forward" if _mode == "sum" else f"bag_forward_{_mode}",
        title=f"bag forward ({_mode})",
        fastembed=Impl("fastembed", "fastembed", _fastembed_forward(_mode),
                       note=f"fastembed.embedding_bag(table, ids, offsets, mode={_mode!r}, n_threads=)"),
        peers=(
            Impl("F.embedding_bag", "torch", _torch_forward(_mode), short="F.embedding_bag",
                 note="under no_grad, allocates its output"),
            Impl("FBGEMM TBE fwd", "fbgemm_gpu", _fbgemm_forward(_mode), short="FBGEMM fwd",
                 note=f"SplitTableBatchedEmbeddingBagsCodegen, one CPU table, PoolingMode.{_mode.upper()}"),
            Impl("np.add.reduceat(np.take)", "numpy", _numpy_forward(_mode), short="np reduceat",
                 note="gathers every row, then sums each bag (bags are never empty here)"),
        ),
        check=_forward_check(_mode),
        order=_order,
        kind="bags",
    ))


def _quantized(wl):
    """The workload's table in int8 row-wise form (``lowp.QuantizedTable``), and its decoded float32 values."""
    def make():
        table = lowp.QuantizedTable.from_float(wl.table)
        return table, table.dequantize()
    return wl.cache("int8", make)


def _fastembed_int8(wl, n):
    table, _ = _quantized(wl)
    return Case(lambda: fastembed.embedding_bag(table, wl.ids, wl.offsets, include_last_offset=True, n_threads=n),
                result=Dense)


def _torch_int8(wl, n):
    torch = peers.torch()
    table, _ = _quantized(wl)
    # PyTorch's fused rows (FBGEMM's layout): the codes, then the float32 scale and bias as 8 bytes.
    fused = torch.from_numpy(np.concatenate([table.codes, table.scale_bias.view(np.uint8)], axis=1))
    _, ids, offsets, _ = torch_bag_inputs(wl)
    lookup = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
    return Case(lambda: lookup(fused, ids, offsets, False, 0, False, None, None, True),
                result=lambda r: Dense(r.numpy()))


def _int8_check(expected, got, wl):
    _, decoded = _quantized(wl)
    magnitudes = wl.cache("abs_pooled_int8", lambda: fastembed.embedding_bag(
        np.abs(decoded), wl.ids, wl.offsets, include_last_offset=True))
    return compare_sums(expected.array, np.asarray(got.array), magnitudes)


register(Op(
    name="bag_forward_int8",
    title="bag forward (sum), int8 row-wise table",
    fastembed=Impl("fastembed", "fastembed", _fastembed_int8,
                   note="fastembed.embedding_bag(QuantizedTable, ids, offsets, n_threads=): float32 out"),
    peers=(
        Impl("torch quantized embedding_bag_byte_rowwise_offsets", "torch", _torch_int8, short="torch int8 bag",
             note="the same codes, scales and biases in FBGEMM's fused row layout"),
    ),
    check=_int8_check,
    order=12,
    kind="bags",
    default=False,
))


# ---- backward -----------------------------------------------------------------------------------------------------

def _fastembed_backward(wl, n):
    return Case(lambda: fastembed.embedding_bag_backward(wl.ids, wl.grad_out, wl.offsets, include_last_offset=True,
                                                         num_rows=wl.rows, n_threads=n),
                result=lambda g: Sparse(g.rows, g.values))


def _torch_backward(sparse):
    def build(wl, n):
        torch = peers.torch()
        table, ids, offsets, grad_out = torch_bag_inputs(wl)
        return torch_autograd_backward(
            table, lambda weight, sparse: torch.nn.functional.embedding_bag(ids, weight, offsets, mode="sum",
                                                                            include_last_offset=True, sparse=sparse),
            grad_out, sparse)
    return build


def _np_add_at_bags(wl, n):
    """``np.add.at(dense, ids, grad_out[bag of each id])`` into a zeroed (V, D) buffer; single-threaded."""
    dense = zeroed(wl)
    bag_of = _bag_of_positions(wl)
    return Case(lambda: np.add.at(dense, wl.ids, wl.grad_out[bag_of]), result=lambda _: Dense(dense))


register(Op(
    name="bag_backward",
    title="bag backward (sum)",
    fastembed=Impl("fastembed", "fastembed", _fastembed_backward,
                   note="fastembed.embedding_bag_backward(ids, grad_out, offsets, num_rows=V, n_threads=): "
                        "sorted unique rows + sums"),
    peers=(
        Impl("torch dense backward", "torch", _torch_backward(False), short="torch dense bwd",
             note="autograd backward of F.embedding_bag, incl. allocating the zeroed (V, D) grad"),
        Impl("torch sparse=True + coalesce", "torch", _torch_backward(True), short="torch sparse+coalesce",
             note="autograd backward of F.embedding_bag(sparse=True), then .coalesce()"),
        Impl("np.add.at (dense)", "numpy", _np_add_at_bags, short="np.add.at", budget_s=ADD_AT_BUDGET_S,
             note="each bag's gradient repeated per id, into a zeroed (V, D) buffer, zeroing excluded"),
    ),
    check=lambda expected, got, wl: check_gradient(expected, bag_grad(wl, magnitudes=True), got),
    order=13,
    kind="bags",
))


# ---- fused backward + update ----------------------------------------------------------------------------------------

@dataclass
class Stepped:
    """One fused step's table after the update, and the update rule it is checked against."""
    rule: str
    after: np.ndarray


def _first_step(rule, rows, grad):
    """The table rows after one step of ``rule`` from fresh state (float64, the numpy oracles)."""
    local = np.arange(rows.shape[0])
    if rule == "sgd":
        ref.sgd_update(rows, local, grad, LR)
    elif rule == "adagrad":
        ref.adagrad_update(rows, local, grad, np.zeros_like(rows), LR, EPS)
    elif rule == "rowwise_adagrad":
        ref.rowwise_adagrad_update(rows, local, grad, np.zeros(rows.shape[0]), LR, EPS)
    else:
        ref.sparse_adam_update(rows, local, grad, np.zeros_like(rows), np.zeros_like(rows), 1, LR, eps=EPS)
    return rows


# Rules that normalise each entry by its own magnitude: a gradient entry within rounding of 0 may go either way.
_SIGN_RULES = ("adagrad", "adam")


def _check_step(expected, got, wl):
    grad, magnitudes = bag_grad(wl), bag_grad(wl, magnitudes=True)
    rows = grad.rows
    before = wl.table
    after = np.asarray(got.after)
    if after.shape != before.shape:
        return f"updated table has shape {after.shape}, expected {before.shape}"
    want = _first_step(got.rule, before[rows].astype(np.float64), grad.values.astype(np.float64))
    tol = LR * 1e-3 + 1e-6 * np.abs(want) + ATOL
    if got.rule in _SIGN_RULES:
        tol = tol + np.where(np.abs(grad.values) <= RTOL_SUM * magnitudes.values + ATOL, 2 * LR, 0.0)
    bad = ~(np.abs(after[rows] - want) <= tol)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        return (f"updated row {int(rows[i])} differs at column {j} from {got.rule} applied to fastembed's gradient: "
                f"{after[rows[i], j]!r} vs {want[i, j]!r} ({int(bad.sum())} elements off)")
    if np.count_nonzero(after != before) != np.count_nonzero(after[rows] != before[rows]):
        return "a row that no id looks up was changed"
    return None


def _fastembed_fused(rule, make_optimizer):
    def build(wl, n):
        layer = fastembed.EmbeddingBag.from_pretrained(wl.table, trainable=True, mode="sum", include_last_offset=True)
        optimizer = make_optimizer(layer)
        return Case(lambda: optimizer.fused_step(wl.ids, wl.grad_out, offsets=wl.offsets, n_threads=n),
                    result=lambda _: Stepped(rule, layer.embeddings))
    return build


def _torch_fused(rule, optimizer_name, **hyper):
    def build(wl, n):
        torch = peers.torch()
        table, ids, offsets, grad_out = torch_bag_inputs(wl)
        module = torch.nn.EmbeddingBag.from_pretrained(table.clone(), freeze=False, mode="sum", sparse=True,
                                                       include_last_offset=True)
        optimizer = getattr(torch.optim, optimizer_name)(module.parameters(), lr=LR, **hyper)
        state = {}

        def prepare():  # the forward pass, untimed
            optimizer.zero_grad()
            state["out"] = module(ids, offsets)

        def call():
            state.pop("out").backward(grad_out)
            optimizer.step()

        return Case(call, prepare=prepare, result=lambda _: Stepped(rule, module.weight.detach().numpy()))
    return build


def _fbgemm_fused(rule, optimizer_name):
    def build(wl, n):
        _, ids, offsets, grad_out = torch_bag_inputs(wl)
        tbe, weights = fbgemm_module(wl, optimizer=optimizer_name, learning_rate=LR, eps=EPS)
        state = {}

        def prepare():  # the forward pass, untimed
            state["out"] = tbe(ids, offsets)

        def call():  # backward fused with the update of the touched rows
            state.pop("out").backward(grad_out)

        return Case(call, prepare=prepare, result=lambda _: Stepped(rule, weights.detach().numpy()))
    return build


_FBGEMM_SGD = Impl("FBGEMM fused SGD", "fbgemm_gpu", _fbgemm_fused("sgd", "EXACT_SGD"), short="FBGEMM SGD",
                   note="TBE backward fused with exact SGD: the cheapest fused update, for reference")

# name, title, fastembed's optimizer and hyper-parameters, its rule, torch's optimizer, rule and hyper-parameters,
# FBGEMM's own fused version (or None), part of a default run. SGD and element-wise Adagrad are opt-in (--ops).
_FUSED = (
    ("fused_step", "fused backward + row-wise Adagrad", "RowWiseAdagrad", dict(eps=EPS), "rowwise_adagrad",
     ("Adagrad", "adagrad", dict(eps=EPS)), "EXACT_ROWWISE_ADAGRAD", True),
    ("fused_step_adam", "fused backward + SparseAdam", "SparseAdam", dict(eps=EPS), "adam",
     ("SparseAdam", "adam", dict(eps=EPS)), None, True),
    ("fused_step_sgd", "fused backward + SGD", "SGD", {}, "sgd", ("SGD", "sgd", {}), None, False),
    ("fused_step_adagrad", "fused backward + Adagrad", "Adagrad", dict(eps=EPS), "adagrad",
     ("Adagrad", "adagrad", dict(eps=EPS)), None, False),
)


def _optimizer(name, hyper):
    return lambda layer: getattr(optim, name)(layer, LR, **hyper)


for _order, (_name, _title, _ours, _our_hyper, _rule, (_torch_name, _torch_rule, _torch_hyper), _fbgemm_own,
             _default) in enumerate(_FUSED, 14):
    _torch_note = "F.embedding_bag(sparse=True) backward, then optimizer.step()"
    if _torch_rule != _rule:
        _torch_note += f"; element-wise {_torch_name} (PyTorch has no row-wise one), checked as such"
    _peers = [Impl(f"torch sparse + {_torch_name}", "torch", _torch_fused(_torch_rule, _torch_name, **_torch_hyper),
                   short=f"torch+{_torch_name}", note=_torch_note)]
    if _fbgemm_own is not None:
        _peers.append(Impl(f"FBGEMM fused {_fbgemm_own}", "fbgemm_gpu", _fbgemm_fused(_rule, _fbgemm_own),
                           short="FBGEMM " + _fbgemm_own.lower(), note="TBE backward fused with the same update"))
    _peers.append(_FBGEMM_SGD)
    register(Op(
        name=_name,
        title=_title,
        fastembed=Impl("fastembed", "fastembed", _fastembed_fused(_rule, _optimizer(_ours, _our_hyper)),
                       note=f"optim.{_ours}(layer, lr).fused_step(ids, grad_out, offsets=, n_threads=)"),
        peers=tuple(_peers),
        check=_check_step,
        order=_order,
        kind="bags",
        default=_default,
    ))
