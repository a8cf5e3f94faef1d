"""The op registry: each op family declares what the runner times and how to check it.

An op module in ``fastembed/bench/ops/`` calls ``register(Op(...))`` at import; every module there is
imported by ``all_ops()``, so a new family is a new file and nothing else changes. An ``Op`` names:

- ``fastembed``: the ``Impl`` being measured, and ``peers``: the ``Impl`` s it is compared with;
- ``workloads``: the workload names it applies to (``None``: all of its ``kind``, "lookup" or "bags");
  ``order``: its place in tables;
- ``check(expected, got, workload)``: ``None`` when a peer's result matches fastembed's, else a message.

An ``Impl`` has a ``build(workload, n_threads) -> Case`` that does the untimed set-up (conversions,
output buffers, jit) and may raise ``Skip`` when it cannot run a workload. A ``Case`` holds the timed
``call``, an optional untimed ``prepare`` run before every call (e.g. the forward pass whose backward is
timed), and ``result``, which turns what ``call`` returned into a comparable ``Dense``/``Sparse``/``Updated``.
The first call of a case runs on fresh state and is the one checked.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np


class Skip(Exception):
    """An implementation cannot run this workload (the message says why)."""


# ---- results in comparable form -------------------------------------------------------------------------------

@dataclass
class Dense:
    """A dense array result (gather output, or a (V, D) gradient)."""
    array: np.ndarray


@dataclass
class Sparse:
    """Row-sparse gradient: sorted unique rows and their summed values."""
    rows: np.ndarray
    values: np.ndarray


@dataclass
class Updated:
    """A fused optimizer step: the table before and after ``after = before - lr * grad``."""
    before: np.ndarray
    after: np.ndarray
    lr: float


def identity(value):
    return value


@dataclass
class Case:
    call: Callable[[], Any]
    prepare: Optional[Callable[[], None]] = None
    result: Callable[[Any], Any] = identity

    def run_once(self):
        """``prepare`` then ``call``; the result in comparable form. On a fresh case: the checked call."""
        if self.prepare is not None:
            self.prepare()
        return self.result(self.call())


@dataclass(frozen=True)
class Impl:
    name: str  # the label in tables ("np.take(out=, mode='clip')")
    package: str  # "fastembed", "numpy", "torch", "jax" or "fbgemm_gpu"
    build: Callable[..., Case]  # (workload, n_threads) -> Case
    short: str = ""  # a short label for charts
    budget_s: Optional[float] = None  # timing budget per cell for slow peers (fewer samples, said in the output)
    note: str = ""  # what the table footnotes should say about it

    @property
    def label(self):
        return self.short or self.name


@dataclass(frozen=True)
class Op:
    name: str
    title: str
    fastembed: Impl
    peers: tuple
    check: Callable[..., Optional[str]]
    workloads: Optional[tuple] = None
    order: int = 100  # where it comes in tables and runs (then by name)
    kind: str = "lookup"  # the workloads it runs on when ``workloads`` is None: "lookup" or "bags"
    default: bool = True  # part of a run that names no ops (False: only with --ops NAME)

    def applies_to(self, workload_name):
        from fastembed.bench.workloads import WORKLOADS

        if self.workloads is not None:
            return workload_name in self.workloads
        spec = WORKLOADS.get(workload_name)
        return spec is None or spec.kind == self.kind

    def impls(self):
        return (self.fastembed,) + tuple(self.peers)

    def impl(self, name):
        for impl in self.impls():
            if impl.name == name or impl.short == name:
                return impl
        raise KeyError(f"op {self.name!r} has no implementation {name!r}")


_OPS = {}
_discovered = False


def register(op):
    """Add an op family (called by the modules of ``fastembed.bench.ops`` at import). Returns ``op``."""
    if op.name in _OPS and _OPS[op.name] is not op:
        raise ValueError(f"an op named {op.name!r} is already registered")
    names = [impl.name for impl in op.impls()]
    if len(set(names)) != len(names):
        raise ValueError(f"op {op.name!r} has two implementations with one name")
    _OPS[op.name] = op
    return op


def all_ops():
    """Every registered op, by name, in their ``order`` (importing every module of the ops package first)."""
    global _discovered
    if not _discovered:
        from fastembed.bench import ops as package

        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if module.name.startswith("_"):
                continue
            importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered = True
    return {op.name: op for op in sorted(_OPS.values(), key=lambda op: (op.order, op.name))}


def get_op(name):
    ops = all_ops()
    try:
        return ops[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(ops)}") from None


# ---- checks against fastembed's result ------------------------------------------------------------------------
# Gradients are sums whose order differs between libraries, so they are compared with a tolerance that grows
# with the sum of the magnitudes of the terms (``abs_sum``, the same scatter applied to |grad_out|): a missing,
# doubled or misrouted contribution is far outside it, float32 re-association stays well inside.

RTOL_SUM = 1e-5
ATOL = 1e-6


def _where_differs(diff_mask):
    first = np.argwhere(diff_mask)[0]
    return tuple(int(i) for i in first)


def compare_exact(expected, got):
    """For copies (gather): same shape, same bits."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        try:
            got = got.reshape(expected.shape)
        except ValueError:
            return f"shape {got.shape}, expected {expected.shape}"
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype}, expected {expected.dtype}"
    if not np.array_equal(got, expected):
        at = _where_differs(got != expected)
        return f"differs from fastembed at {at}: {got[at]!r} vs {expected[at]!r}"
    return None


def compare_sums(expected, got, abs_sum):
    """For accumulated gradients: |got - expected| <= RTOL_SUM * abs_sum + ATOL elementwise."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    bad = ~(np.abs(got.astype(np.float64) - expected) <= RTOL_SUM * abs_sum + ATOL)
    if bad.any():
        at = _where_differs(bad)
        return f"differs from fastembed at {at}: {got[at]!r} vs {expected[at]!r} ({int(bad.sum())} elements off)"
    return None


def check_gradient(reference, abs_sum, got):
    """Compare a gradient result with fastembed's, given as ``reference`` (a ``Sparse``: the looked-up rows and
    their sums) and ``abs_sum`` (a ``Sparse`` with the same rows: the sums of |grad_out|).

    ``got`` may be ``Sparse`` (rows must match exactly), ``Dense`` (a (V, D) gradient: the looked-up rows must
    match and every other row must be zero) or ``Updated`` (a fused SGD step: ``before - lr * grad`` on the
    looked-up rows, every other row unchanged). No extra (V, D) array is made.
    """
    rows, values = reference.rows, reference.values
    if isinstance(got, Sparse):
        got_rows = np.asarray(got.rows)
        if got_rows.shape != rows.shape:
            return f"{got_rows.shape[0]} unique rows, expected {rows.shape[0]}"
        if not np.array_equal(got_rows, rows):
            return f"row ids differ from fastembed's at position {_where_differs(got_rows != rows)[0]}"
        return compare_sums(values, got.values, abs_sum.values)
    if isinstance(got, Dense):
        dense = np.asarray(got.array)
        if dense.ndim != 2 or dense.shape[1] != values.shape[1] or (len(rows) and dense.shape[0] <= rows[-1]):
            return f"dense gradient of shape {dense.shape} cannot hold rows up to {rows[-1] if len(rows) else 0}"
        message = compare_sums(values, dense[rows], abs_sum.values)
        if message is None and np.count_nonzero(dense) != np.count_nonzero(dense[rows]):
            return "nonzero gradient in a row that no id looks up"
        return message
    if isinstance(got, Updated):
        before, after = np.asarray(got.before), np.asarray(got.after)
        if after.shape != before.shape:
            return f"updated table has shape {after.shape}, expected {before.shape}"
        want = before[rows].astype(np.float64) - got.lr * values
        tol = got.lr * RTOL_SUM * abs_sum.values + 1e-6 * np.abs(want) + ATOL
        bad = ~(np.abs(after[rows] - want) <= tol)
        if bad.any():
            i, j = _where_differs(bad)
            return (f"updated row {int(rows[i])} differs at column {j}: {after[rows[i], j]!r} vs {want[i, j]!r} "
                    f"({int(bad.sum())} elements off)")
        if np.count_nonzero(after != before) != np.count_nonzero(after[rows] != before[rows]):
            return "a row that no id looks up was changed"
        return None
    return f"unexpected result type {type(got).__name__}"
