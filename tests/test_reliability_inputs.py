"""The bad-input matrix: every public entry point against every kind of bad argument, one test row per case.

A bad row must raise its exact exception type with a message naming the argument, the position and the value,
and leave every input (arrays, their bases, a layer's table and gradient) bit-for-bit unchanged. An accepted row
(non-contiguous, read-only where only read, empty, other integer widths) must match the numpy oracle.

Decisions the matrix pins down: the functional ops accept a table with V == 0 (any id is then out of range, an
empty batch is fine) and D == 0 (empty rows); layers need V >= 1 and D >= 1, as in Keras. Integer gradients are
cast to float; bool, complex, object and string arrays are refused.

To cover a new entry point (a bag, an optimizer, an adapter): add an ``Entry`` to ``ENTRIES`` with the argument
names of its roles (``ids``, ``threads``, ``policy``; ``tensor_ids`` for an adapter taking torch tensors), and its
own rows (offsets, state, ...) to ``_specific_rows``. Entries for optional libraries skip when they are absent.
"""
import copy
import re
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import fastembed
from fastembed import _reference as ref
from fastembed.renorm import renorm_

V, D = 10, 3
SHAPE = (2, 3)          # every ids argument has this shape: the bad value goes to position [1, 1]
AT = r"\[1, 1\]"
INT64_MAX = np.iinfo(np.int64).max


def _ids():
    return np.array([[0, 1, 2], [3, 4, 9]], dtype=np.int64)


def _table(dtype=np.float32):
    return np.arange(V * D, dtype=dtype).reshape(V, D)


def _grad(dtype=np.float64):
    return np.linspace(-1.0, 1.0, num=6 * D).reshape(SHAPE + (D,)).astype(dtype)


def _layer(**kwargs):
    return fastembed.Embedding(V, D, embeddings_initializer=_table(), **kwargs)


def _sparse(result):
    return [result.rows, result.values]


def _oracle_sparse(ids, grad_out):
    rows, values = ref.sparse_grad(ids, grad_out)
    return [rows, values]


@dataclass
class Entry:
    """A public entry point: fresh valid arguments, how to call it, and what the result must be."""

    name: str
    make: Callable[[], dict]
    call: Callable[[dict], object]
    roles: dict = field(default_factory=dict)      # role -> argument name
    oracle: Callable[[dict], list] = None          # expected arrays, computed on a copy of the arguments
    result: Callable[[object], list] = lambda out: [out]
    checks_range: bool = True                      # does it check ids against V?


def _scatter_oracle(a):
    dense = np.array(a["dense_grad"], copy=True)
    return [ref.scatter_add(dense, a["ids"], a["grad_out"])]


def _bag_grad(dtype=np.float64):
    return np.linspace(-1.0, 1.0, num=SHAPE[0] * D).reshape(SHAPE[0], D).astype(dtype)


def _per_position(bag_grad):
    """A sum bag's gradient as a lookup's: every position of bag b receives bag_grad[b]."""
    bag_grad = np.asarray(bag_grad)
    return np.repeat(bag_grad[:, None, :], SHAPE[1], axis=1)


def _bag_layer():
    return fastembed.EmbeddingBag(V, D, mode="sum", weights=_table())


def _fused_step(args):
    args = dict(args)
    opt = args.pop("opt")
    opt.fused_step(**args)
    return opt.layer.embeddings


def _sgd_oracle(args):
    """SGD with lr 0.5 (a power of two: the same bits whichever precision the update is computed in)."""
    grad = np.asarray(args["grad_out"], np.float32)
    dense = ref.scatter_add(np.zeros((V, D), np.float32), args["ids"], grad)
    return [args["opt"].layer.embeddings - np.float32(0.5) * dense]


def _adam_after_a_step():
    opt = fastembed.optim.SparseAdam(_layer(), lr=0.1)
    opt.fused_step(_ids(), _grad(np.float32))
    return opt


def _torch():
    return pytest.importorskip("fastembed.torch")


def _torch_weight():
    import torch
    _torch()
    return torch.nn.Parameter(torch.from_numpy(_table()))


def _torch_module():
    return _torch().Embedding(V, D, _weight=_torch_weight().detach().clone())


def _torch_ids(values=None):
    import torch
    _torch()
    return torch.from_numpy(_ids() if values is None else values)


def _jax():
    return pytest.importorskip("fastembed.jax")


ENTRIES = {entry.name: entry for entry in [
    Entry("gather", lambda: {"table": _table(), "ids": _ids()},
          lambda a: fastembed.gather(**a), {"ids": "ids", "threads": "n_threads", "policy": "out_of_range"},
          oracle=lambda a: [np.asarray(a["table"])[np.asarray(a["ids"]).astype(np.int64)]]),
    Entry("sparse_grad", lambda: {"ids": _ids(), "grad_out": _grad(), "num_rows": V},
          lambda a: fastembed.sparse_grad(**a), {"ids": "ids", "threads": "n_threads", "policy": "out_of_range"},
          oracle=lambda a: _oracle_sparse(a["ids"], a["grad_out"]), result=_sparse),
    Entry("scatter_add", lambda: {"dense_grad": np.zeros((V, D)), "ids": _ids(), "grad_out": _grad()},
          lambda a: fastembed.scatter_add(**a), {"ids": "ids", "threads": "n_threads"}, oracle=_scatter_oracle),
    Entry("Embedding", lambda: {"input_dim": V, "output_dim": D}, lambda a: fastembed.Embedding(**a),
          {"policy": "out_of_range"}),
    Entry("Embedding.__call__", lambda: {"layer": _layer(), "ids": _ids()},
          lambda a: a["layer"](a["ids"], **{k: v for k, v in a.items() if k not in ("layer", "ids")}),
          {"ids": "ids", "threads": "n_threads"},
          oracle=lambda a: [a["layer"].embeddings[np.asarray(a["ids"])]]),
    Entry("Embedding.backward", lambda: {"layer": _layer(), "ids": _ids(), "grad_out": _grad(np.float32)},
          lambda a: a["layer"].backward(**{k: v for k, v in a.items() if k != "layer"}),
          {"ids": "ids", "threads": "n_threads"},
          oracle=lambda a: _oracle_sparse(a["ids"], np.asarray(a["grad_out"], np.float32)), result=_sparse),
    Entry("Embedding.compute_mask", lambda: {"layer": _layer(mask_zero=True), "ids": _ids()},
          lambda a: a["layer"].compute_mask(a["ids"]), {"ids": "ids"},
          oracle=lambda a: [np.asarray(a["ids"]) != 0], checks_range=False),
    Entry("Embedding.step", lambda: {"layer": _with_grad(_layer()), "lr": 0.1},
          lambda a: a["layer"].step(a["lr"])),
    Entry("Embedding.set_weights", lambda: {"layer": _layer(), "weights": [_table() + 1]},
          lambda a: a["layer"].set_weights(a["weights"])),
    Entry("Embedding.from_pretrained", lambda: {"matrix": _table()},
          lambda a: fastembed.Embedding.from_pretrained(**a)),
    Entry("Embedding.save", lambda: {"layer": _layer(), "path": "unused"},
          lambda a: a["layer"].save(a["path"])),
    Entry("SparseGrad", lambda: {"rows": np.array([1, 4]), "values": np.ones((2, D)), "num_rows": V},
          lambda a: fastembed.SparseGrad(**a)),
    Entry("SparseGrad.to_dense", lambda: {"grad": fastembed.SparseGrad([1, 4], np.ones((2, D)), V)},
          lambda a: a["grad"].to_dense(*a.get("args", ()))),
    Entry("SparseGrad.__add__", lambda: {"a": fastembed.SparseGrad([1], np.ones((1, D)), V),
                                         "b": fastembed.SparseGrad([2], np.ones((1, D)), V)},
          lambda a: a["a"] + a["b"]),
    Entry("renorm_", lambda: {"table": _table(), "ids": _ids(), "max_norm": 1.0},
          lambda a: renorm_(**a), {"ids": "ids", "threads": "n_threads"}),
    Entry("gradcheck", lambda: {"layer": _layer(dtype="float64"), "ids": _ids()},
          lambda a: fastembed.gradcheck(**a), {"ids": "ids"}),
    Entry("set_num_threads", dict, lambda a: _set_threads_and_restore(a["n_threads"]),
          {"threads": "n_threads"}),
    # bags: 2-D ids are fixed-length bags (one per row); the 1-D forms with offsets have their own rows
    Entry("embedding_bag", lambda: {"table": _table(), "ids": _ids()},
          lambda a: fastembed.embedding_bag(**a), {"ids": "ids", "threads": "n_threads", "policy": "out_of_range"},
          oracle=lambda a: [np.asarray(a["table"])[np.asarray(a["ids"]).astype(np.int64)].sum(axis=1)]),
    Entry("embedding_bag_backward", lambda: {"ids": _ids(), "grad_out": _bag_grad(), "num_rows": V},
          lambda a: fastembed.embedding_bag_backward(**a),
          {"ids": "ids", "threads": "n_threads", "policy": "out_of_range"},
          oracle=lambda a: _oracle_sparse(a["ids"], _per_position(a["grad_out"])), result=_sparse),
    Entry("EmbeddingBag", lambda: {"num_embeddings": V, "embedding_dim": D}, lambda a: fastembed.EmbeddingBag(**a),
          {"policy": "out_of_range"}),
    Entry("EmbeddingBag.__call__", lambda: {"layer": _bag_layer(), "ids": _ids()},
          lambda a: a["layer"](**{k: v for k, v in a.items() if k != "layer"}), {"ids": "ids", "threads": "n_threads"},
          oracle=lambda a: [a["layer"].embeddings[np.asarray(a["ids"])].sum(axis=1)]),
    Entry("EmbeddingBag.backward", lambda: {"layer": _bag_layer(), "ids": _ids(), "offsets": None,
                                            "grad_out": _bag_grad(np.float32)},
          lambda a: a["layer"].backward(**{k: v for k, v in a.items() if k != "layer"}),
          {"ids": "ids", "threads": "n_threads"},
          oracle=lambda a: _oracle_sparse(a["ids"], _per_position(a["grad_out"])), result=_sparse),
    # optimizers: construction, the fused step (a lookup layer and a bag layer), step, state
    Entry("SGD", lambda: {"layer": _layer(), "lr": 0.1}, lambda a: fastembed.optim.SGD(**a)),
    Entry("Adagrad", lambda: {"layer": _layer(), "lr": 0.1}, lambda a: fastembed.optim.Adagrad(**a)),
    Entry("RowWiseAdagrad", lambda: {"layer": _layer(), "lr": 0.1}, lambda a: fastembed.optim.RowWiseAdagrad(**a)),
    Entry("SparseAdam", lambda: {"layer": _layer(), "lr": 0.1}, lambda a: fastembed.optim.SparseAdam(**a)),
    Entry("fused_step", lambda: {"opt": fastembed.optim.SGD(_layer(), lr=0.5), "ids": _ids(),
                                 "grad_out": _grad(np.float32)},
          _fused_step, {"ids": "ids", "threads": "n_threads"}, oracle=_sgd_oracle),
    Entry("fused_step(bag)", lambda: {"opt": fastembed.optim.SparseAdam(_bag_layer(), lr=0.1), "ids": _ids(),
                                      "grad_out": _bag_grad(np.float32)},
          _fused_step, {"ids": "ids", "threads": "n_threads"}),
    Entry("SGD.step", lambda: {"opt": fastembed.optim.SGD(_with_grad(_layer()), lr=0.5)},
          lambda a: a["opt"].step(**{k: v for k, v in a.items() if k != "opt"}), {"threads": "n_threads"}),
    Entry("load_state_dict", lambda: {"opt": _adam_after_a_step(), "state": _adam_after_a_step().state_dict()},
          lambda a: a["opt"].load_state_dict(a["state"])),
    # adapters, imported only when their library is installed
    Entry("fastembed.torch.embedding", lambda: {"input": _torch_ids(), "weight": _torch_weight()},
          lambda a: _torch().embedding(**a), {"tensor_ids": "input"}),
    Entry("fastembed.torch.Embedding", lambda: {"module": _torch_module(), "input": _torch_ids()},
          lambda a: a["module"](a["input"]), {"tensor_ids": "input"}),
    Entry("fastembed.jax.lookup", lambda: _jax() and {"table": _table(), "ids": _ids()},
          lambda a: _jax().lookup(a["table"], a["ids"]), {"ids": "ids"},
          oracle=lambda a: [np.asarray(a["table"])[np.asarray(a["ids"]).astype(np.int64)]],
          result=lambda out: [np.asarray(out)]),
]}


def _with_grad(layer):
    layer.backward(_ids(), _grad(np.float32))
    return layer


def _set_threads_and_restore(n_threads):
    try:
        fastembed.set_num_threads(n_threads)
    finally:
        fastembed.set_num_threads(None)


@dataclass
class Row:
    id: str
    entry: str
    mutate: Callable[[dict], None]
    exc: type = None                   # None: an accepted input, checked against the oracle
    match: str = ""


def _set(name, value):
    """A mutation that replaces argument ``name`` by ``value(args)`` (or ``value`` itself when not callable)."""
    def mutate(args):
        args[name] = value(args) if callable(value) else value
    return mutate


def _put(value, dtype=np.int64):
    """The valid ids with ``value`` at position [1, 1], in ``dtype``."""
    def make(args):
        ids = _ids().astype(dtype)
        ids[1, 1] = value
        return ids
    return make


def _readonly(array):
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


def _strided(array):
    """The same values in a non-contiguous view (every other element of a bigger buffer)."""
    array = np.asarray(array)
    base = np.zeros(array.shape[:-1] + (2 * array.shape[-1],) if array.ndim else (2,), dtype=array.dtype)
    view = base[..., ::2] if array.ndim else base[::2].reshape(())
    view[...] = array
    return view


def _ids_rows(entry):
    a = entry.roles["ids"]
    rows = []
    if entry.checks_range:
        for case, value in [("negative", -1), ("equal-V", V), ("int64-max", INT64_MAX)]:
            shown = INT64_MAX if case == "int64-max" else value
            rows.append(Row(f"{a}-{case}", entry.name, _set(a, _put(value)), IndexError,
                            rf"^{a}{AT} = {shown} is out of range \[0, {V}\)"))
    rows += [
        Row(f"{a}-uint64-beyond-int64", entry.name, _set(a, _put(2**64 - 1, np.uint64)), IndexError,
            rf"^{a}{AT} = {2**64 - 1} does not fit in int64"),
        Row(f"{a}-float", entry.name, _set(a, lambda _: _ids().astype(np.float64)), TypeError,
            rf"^{a} must be an integer array, got dtype float64$"),
        Row(f"{a}-nan", entry.name, _set(a, _put(np.nan, np.float64)), TypeError,
            rf"^{a} must be an integer array, got dtype float64 \({a}{AT} = nan\)"),
        Row(f"{a}-fractional", entry.name, _set(a, _put(2.5, np.float32)), TypeError,
            rf"got dtype float32 \({a}{AT} = 2.5\)"),
        Row(f"{a}-bool", entry.name, _set(a, lambda _: _ids() > 2), TypeError, rf"^{a} .*got dtype bool"),
        Row(f"{a}-object", entry.name, _set(a, lambda _: _ids().astype(object)), TypeError,
            rf"^{a} .*got dtype object"),
        Row(f"{a}-complex", entry.name, _set(a, lambda _: _ids().astype(np.complex128)), TypeError,
            rf"^{a} .*got dtype complex128"),
        Row(f"{a}-strings", entry.name, _set(a, lambda _: _ids().astype(str)), TypeError, rf"^{a} .*got dtype <U"),
    ]
    return rows


def _ids_ok_rows(entry):
    a = entry.roles["ids"]
    return [
        Row(f"{a}-fortran-order", entry.name, _set(a, lambda _: np.asfortranarray(_ids()))),
        Row(f"{a}-strided", entry.name, _set(a, lambda _: _strided(_ids()))),
        Row(f"{a}-read-only", entry.name, _set(a, lambda _: _readonly(_ids()))),
        Row(f"{a}-int32", entry.name, _set(a, lambda _: _ids().astype(np.int32))),
        Row(f"{a}-uint8", entry.name, _set(a, lambda _: _ids().astype(np.uint8))),
        Row(f"{a}-nested-list", entry.name, _set(a, lambda _: _ids().tolist())),
    ]


def _tensor_ids_rows(entry):
    """An adapter's ids are tensors: the values and dtypes a tensor can hold."""
    a = entry.roles["tensor_ids"]
    rows = [Row(f"{a}-{case}", entry.name, _set(a, lambda _, v=value: _torch_ids(_put(v)(None))), IndexError,
                rf"^ids{AT} = {value} is out of range \[0, {V}\)")
            for case, value in [("negative", -1), ("equal-V", V), ("int64-max", INT64_MAX)]]
    for case, dtype in [("float", np.float32), ("bool", np.bool_)]:
        rows.append(Row(f"{a}-{case}", entry.name, _set(a, lambda _, d=dtype: _torch_ids(_ids().astype(d))),
                        TypeError, r"^ids must be an integer array, got dtype"))
    rows.append(Row(f"{a}-nan", entry.name, _set(a, lambda _: _torch_ids(_put(np.nan, np.float64)(None))),
                    TypeError, rf"^ids must be an integer array, got dtype float64 \(ids{AT} = nan\)"))
    rows.append(Row(f"{a}-numpy", entry.name, _set(a, lambda _: _ids()), TypeError,
                    rf"^{a} must be a torch.Tensor of ids, got ndarray$"))
    return rows


def _threads_rows(entry):
    a = entry.roles["threads"]
    limit = fastembed._threads.MAX_THREADS
    return [
        Row(f"{a}-zero", entry.name, _set(a, 0), ValueError, rf"^{a} must be a positive int or None, got 0$"),
        Row(f"{a}-negative", entry.name, _set(a, -2), ValueError, rf"^{a} must be a positive int or None, got -2$"),
        Row(f"{a}-float", entry.name, _set(a, 1.5), TypeError, rf"^{a} must be a positive int or None, got 1.5$"),
        Row(f"{a}-bool", entry.name, _set(a, True), TypeError, rf"^{a} must be a positive int or None, got True$"),
        Row(f"{a}-too-many", entry.name, _set(a, 10**6), ValueError, rf"^{a} must be at most {limit} .*got 1000000$"),
        Row(f"{a}-2**40", entry.name, _set(a, 2**40), ValueError, rf"^{a} must be at most {limit} .*got {2**40}$"),
    ]


def _policy_rows(entry):
    a = entry.roles["policy"]
    expected = r"'raise', 'clip', 'zero' or an int row"
    return [
        Row(f"{a}-unknown", entry.name, _set(a, "wrap"), ValueError, rf"^{a} must be {expected}, got 'wrap'$"),
        Row(f"{a}-row-equal-V", entry.name, _set(a, V), ValueError,
            rf"^{a}={V} is not a row of the table: it must lie in \[0, {V}\)$"),
        Row(f"{a}-row-negative", entry.name, _set(a, -1), ValueError, rf"^{a}=-1 is not a row of the table"),
        Row(f"{a}-bool", entry.name, _set(a, True), TypeError, rf"^{a} must be {expected}, got True$"),
        Row(f"{a}-float", entry.name, _set(a, 2.0), TypeError, rf"^{a} must be {expected}, got 2.0$"),
        Row(f"{a}-none", entry.name, _set(a, None), TypeError, rf"^{a} must be {expected}, got None$"),
    ]


def _specific_rows():
    def many(**changes):
        def mutate(args):
            for name, value in changes.items():
                args[name] = value(args) if callable(value) else value
        return mutate

    bad = [
        # gather: the table and out
        Row("table-int", "gather", _set("table", lambda _: np.arange(V * D).reshape(V, D)), TypeError,
            r"^table must be float32, float64, float16 or bfloat16 \(or a QuantizedTable\), got dtype int64$"),
        Row("table-rank-1", "gather", _set("table", lambda _: _table().reshape(-1)), ValueError,
            r"^table must be 2-D \(rows, dim\), got shape \(30,\)$"),
        Row("table-rank-3", "gather", _set("table", lambda _: _table().reshape(V, D, 1)), ValueError,
            r"^table must be 2-D \(rows, dim\), got shape \(10, 3, 1\)$"),
        Row("table-object", "gather", _set("table", lambda _: _table().astype(object)), TypeError,
            r"^table must be float32, float64, float16 or bfloat16 \(or a QuantizedTable\), got dtype object$"),
        Row("table-list-of-strings", "gather", _set("table", lambda _: _table().astype(str).tolist()), TypeError,
            r"^table must be float32 or float64, got dtype <U"),
        Row("ids-python-int-beyond-int64", "gather", _set("ids", 2**70), IndexError,
            rf"^ids = {2**70} does not fit in int64$"),
        Row("ids-list-int-beyond-int64", "gather", _set("ids", [[1, 2, 3], [4, -(2**70), 6]]), IndexError,
            rf"^ids{AT} = {-(2**70)} does not fit in int64$"),
        Row("max_norm-negative", "gather", _set("max_norm", -1.0), ValueError,
            r"^max_norm must be a positive number, got -1.0$"),
        Row("norm_type-string", "gather", many(max_norm=1.0, norm_type="2"), TypeError,
            r"^norm_type must be a positive number or inf, got '2'$"),
        Row("table-V0-with-ids", "gather", _set("table", lambda _: np.zeros((0, D), np.float32)), IndexError,
            r"^ids\[0, 0\] = 0 is out of range \[0, 0\) for a table of 0 rows$"),
        Row("out-shape", "gather", _set("out", lambda _: np.zeros((2, 3, 4), np.float32)), ValueError,
            r"^out must have shape \(2, 3, 3\), got \(2, 3, 4\)$"),
        Row("out-dtype", "gather", _set("out", lambda _: np.zeros((2, 3, 3))), TypeError,
            r"^out must have dtype float32, got float64$"),
        Row("out-non-contiguous", "gather", _set("out", lambda _: np.zeros((3, 3, 2), np.float32).T), ValueError,
            r"^out must be C-contiguous$"),
        Row("out-read-only", "gather", _set("out", lambda _: _readonly(np.zeros((2, 3, 3), np.float32))),
            ValueError, r"^out is read-only$"),
        Row("out-list", "gather", _set("out", [[0.0]]), TypeError, r"^out must be a numpy array or a CPU array speaking DLPack, got list$"),
        Row("out-overlaps-table", "gather", _set("out", lambda a: a["table"].reshape(-1)[:18].reshape(2, 3, 3)),
            ValueError, r"^out shares memory with table"),
        # sparse_grad: num_rows, grad_out and a policy without num_rows
        Row("num_rows-zero", "sparse_grad", _set("num_rows", 0),
            ValueError, r"^num_rows must be a positive int, got 0$"),
        Row("num_rows-negative", "sparse_grad", _set("num_rows", -5), ValueError,
            r"^num_rows must be a positive int, got -5$"),
        Row("num_rows-float", "sparse_grad", _set("num_rows", 10.0), TypeError,
            r"^num_rows must be a positive int, got 10.0$"),
        Row("num_rows-beyond-int64", "sparse_grad", _set("num_rows", 2**64), ValueError,
            rf"^num_rows must be at most {INT64_MAX}, got {2**64}$"),
        Row("policy-without-num_rows", "sparse_grad", many(num_rows=None, out_of_range="clip"), ValueError,
            r"^out_of_range='clip' needs the table's row count \(num_rows\)$"),
        Row("padding_idx-equal-V", "sparse_grad", _set("padding_idx", V), ValueError,
            rf"^padding_idx must be in \[-{V}, {V}\) for a table of {V} rows, got {V}$"),
        Row("padding_idx-float", "sparse_grad", _set("padding_idx", 1.5), TypeError,
            r"^padding_idx must be an int or None, got 1.5$"),
        Row("max_norm-without-table", "sparse_grad", _set("max_norm", 1.0), ValueError,
            r"^max_norm needs the table the rows were read from: pass table=$"),
        Row("grad_out-bool", "sparse_grad", _set("grad_out", lambda _: _grad() > 0), TypeError,
            r"^grad_out must be a float array, got dtype bool$"),
        Row("grad_out-object", "sparse_grad", _set("grad_out", lambda _: _grad().astype(object)), TypeError,
            r"^grad_out must be a float array, got dtype object$"),
        Row("grad_out-complex", "sparse_grad", _set("grad_out", lambda _: _grad().astype(complex)), TypeError,
            r"^grad_out must be a float array, got dtype complex128$"),
        Row("grad_out-0d", "sparse_grad", _set("grad_out", 1.0), ValueError,
            r"^grad_out must have shape ids.shape \+ \(D,\), got \(\)$"),
        Row("grad_out-rank", "sparse_grad", _set("grad_out", lambda _: _grad()[..., 0]), ValueError,
            r"^grad_out must have shape ids.shape \+ \(D,\) = \(2, 3\) \+ \(D,\), got \(2, 3\)$"),
        Row("grad_out-shape", "sparse_grad", _set("grad_out", lambda _: np.zeros((3, 2, D))), ValueError,
            r"^grad_out must have shape ids.shape \+ \(D,\) = \(2, 3\) \+ \(D,\), got \(3, 2, 3\)$"),
        # scatter_add: the written table and the gradient
        Row("dense_grad-read-only", "scatter_add", _set("dense_grad", lambda _: _readonly(np.zeros((V, D)))),
            ValueError, r"^dense_grad is read-only; it is written in place$"),
        Row("dense_grad-int", "scatter_add", _set("dense_grad", lambda _: np.zeros((V, D), int)), TypeError,
            r"^dense_grad must be float32 or float64, got dtype int64$"),
        Row("dense_grad-rank-1", "scatter_add", _set("dense_grad", lambda _: np.zeros(V)), ValueError,
            r"^dense_grad must be 2-D \(rows, dim\), got shape \(10,\)$"),
        Row("dense_grad-list", "scatter_add", _set("dense_grad", lambda _: np.zeros((V, D)).tolist()), TypeError,
            r"^dense_grad must be a numpy array \(it is written in place\), got list$"),
        Row("grad_out-wrong-D", "scatter_add", _set("grad_out", lambda _: np.zeros(SHAPE + (D + 1,))), ValueError,
            r"^grad_out must have shape ids.shape \+ \(D,\) = \(2, 3, 3\), got \(2, 3, 4\)$"),
        Row("grad_out-string", "scatter_add", _set("grad_out", lambda _: _grad().astype(str)), TypeError,
            r"^grad_out must be a float array, got dtype <U"),
        Row("grad_out-overlaps-dense_grad", "scatter_add",
            _set("grad_out", lambda a: a["dense_grad"].reshape(-1)[:18].reshape(SHAPE + (D,))),
            ValueError, r"^dense_grad shares memory with grad_out"),
        # the layer's constructor
        Row("input_dim-zero", "Embedding", _set("input_dim", 0),
            ValueError, r"^input_dim must be a positive int, got 0$"),
        Row("output_dim-zero", "Embedding", _set("output_dim", 0), ValueError,
            r"^output_dim must be a positive int, got 0$"),
        Row("input_dim-negative", "Embedding", _set("input_dim", -3), ValueError,
            r"^input_dim must be a positive int, got -3$"),
        Row("output_dim-float", "Embedding", _set("output_dim", 2.5), TypeError,
            r"^output_dim must be a positive int, got 2.5$"),
        Row("size-product-overflows", "Embedding", many(input_dim=2**62, output_dim=2**62), ValueError,
            rf"^input_dim \* output_dim = {2**62} \* {2**62} float32 values .* exceed the largest possible array"),
        Row("size-beyond-int64", "Embedding", many(input_dim=2**64, output_dim=1), ValueError,
            rf"^input_dim \* output_dim = {2**64} \* 1 float32 values"),
        Row("dtype-int", "Embedding", _set("dtype", "int32"),
            TypeError, r"^dtype must be float32 or float64, got int32$"),
        Row("weights-shape", "Embedding", _set("weights", lambda _: np.zeros((D, V))), ValueError,
            r"^weights must have shape \(10, 3\), got \(3, 10\)$"),
        Row("weights-object", "Embedding", _set("weights", lambda _: np.zeros((V, D), object)), TypeError,
            r"^weights must be numeric, got dtype object$"),
        Row("input_length-zero", "Embedding", _set("input_length", 0), ValueError,
            r"^input_length must be a positive int, got 0$"),
        Row("padding_idx-below-minus-V", "Embedding", _set("padding_idx", -V - 1), ValueError,
            rf"^padding_idx must be in \[-{V}, {V}\) for a table of {V} rows, got {-V - 1}$"),
        Row("max_norm-nan", "Embedding", _set("max_norm", float("nan")), ValueError,
            r"^max_norm must be a positive number, got nan$"),
        Row("max_norm_mode-unknown", "Embedding", many(max_norm=1.0, max_norm_mode="both"), ValueError,
            r"^max_norm_mode must be one of 'inplace', 'output', got 'both'$"),
        Row("storage-unknown", "Embedding", _set("storage", "int4"), ValueError,
            r"^storage must be None \(a float table of dtype\) or one of 'float16', 'bfloat16', 'int8', got 'int4'$"),
        Row("storage-trainable", "Embedding", _set("storage", "int8"), ValueError,
            r"^a int8 table is for inference: pass trainable=False"),
        # renorm_: the table is written in place
        Row("table-read-only", "renorm_", _set("table", lambda _: _readonly(_table())), ValueError,
            r"^table is read-only; it is written in place$"),
        Row("table-list", "renorm_", _set("table", lambda _: _table().tolist()), TypeError,
            r"^table must be a numpy array \(it is written in place\), got list$"),
        Row("max_norm-zero", "renorm_", _set("max_norm", 0),
            ValueError, r"^max_norm must be a positive number, got 0.0$"),
        Row("norm_type-zero", "renorm_", _set("norm_type", 0), ValueError,
            r"^norm_type must be a positive number or inf, got 0.0$"),
        # layer methods
        Row("input_length-mismatch", "Embedding.__call__", lambda a: a.update(layer=_layer(input_length=4)),
            ValueError, r"^input_length=4 but the ids have shape \(2, 3\)$"),
        Row("grad_out-shape", "Embedding.backward", _set("grad_out", lambda _: np.zeros((2, 3, D + 1))), ValueError,
            r"^grad_out must have shape \(2, 3, 3\), got \(2, 3, 4\)$"),
        Row("low-precision-table", "Embedding.backward",
            _set("layer", lambda _: fastembed.Embedding(V, D, trainable=False, storage="int8")), ValueError,
            r"^a int8 table is for inference: backward needs float32 or float64 storage$"),
        Row("grad_out-object", "Embedding.backward", _set("grad_out", lambda _: _grad().astype(object)), TypeError,
            r"^grad_out must be a float array, got dtype object$"),
        Row("lr-nan", "Embedding.step", _set("lr", float("nan")), ValueError, r"^lr must be finite, got nan$"),
        Row("lr-inf", "Embedding.step", _set("lr", np.inf), ValueError, r"^lr must be finite, got inf$"),
        Row("lr-string", "Embedding.step", _set("lr", "0.1"), TypeError, r"^lr must be a real number, got '0.1'$"),
        Row("lr-array", "Embedding.step", _set("lr", lambda _: np.ones(V)), TypeError, r"^lr must be a real number"),
        Row("weights-shape", "Embedding.set_weights", _set("weights", lambda _: [np.zeros((V + 1, D))]), ValueError,
            r"^weights must have shape \(10, 3\), got \(11, 3\)$"),
        Row("weights-bool", "Embedding.set_weights", _set("weights", lambda _: np.ones((V, D), bool)), TypeError,
            r"^weights must be numeric, got dtype bool$"),
        Row("matrix-rank-1", "Embedding.from_pretrained", _set("matrix", lambda _: np.zeros(V)), ValueError,
            r"^a pre-trained matrix must be 2-D \(V, D\), got shape \(10,\)$"),
        Row("matrix-V0", "Embedding.from_pretrained", _set("matrix", lambda _: np.zeros((0, D))), ValueError,
            r"^input_dim must be a positive int, got 0$"),
        Row("matrix-D0", "Embedding.from_pretrained", _set("matrix", lambda _: np.zeros((V, 0))), ValueError,
            r"^output_dim must be a positive int, got 0$"),
        Row("matrix-strings", "Embedding.from_pretrained", _set("matrix", lambda _: _table().astype(str)), TypeError,
            r"^weights must be numeric, got dtype <U"),
        Row("path-missing-directory", "Embedding.save", _set("path", "/nonexistent-dir/layer.npz"),
            FileNotFoundError, r"nonexistent-dir"),
        # SparseGrad
        Row("rows-negative", "SparseGrad", _set("rows", np.array([-1, 4])),
            ValueError, r"^rows\[0\] = -1 is negative$"),
        Row("rows-unsorted", "SparseGrad", _set("rows", np.array([4, 1])), ValueError,
            r"^rows must be sorted and unique: rows\[1\] = 1 follows 4$"),
        Row("rows-duplicate", "SparseGrad", _set("rows", np.array([4, 4])), ValueError,
            r"^rows must be sorted and unique: rows\[1\] = 4 follows 4$"),
        Row("rows-equal-num_rows", "SparseGrad", _set("rows", np.array([1, V])), ValueError,
            rf"^rows\[1\] = {V} is out of range \[0, {V}\)$"),
        Row("rows-float", "SparseGrad", _set("rows", np.array([1.0, 4.0])), TypeError,
            r"^rows must be integers, got dtype float64$"),
        Row("values-int", "SparseGrad", _set("values", np.ones((2, D), int)), TypeError,
            r"^values must be float32 or float64, got dtype int64$"),
        Row("values-rank-1", "SparseGrad", _set("values", np.ones(2)), ValueError,
            r"^rows must be \(U,\) and values \(U, D\); got \(2,\) and \(2,\)$"),
        Row("num_rows-zero", "SparseGrad", _set("num_rows", 0),
            ValueError, r"^num_rows must be a positive int, got 0$"),
        Row("num_rows-negative", "SparseGrad.to_dense", _set("args", (-1,)), ValueError,
            r"^num_rows must be a positive int, got -1$"),
        Row("num_rows-too-small", "SparseGrad.to_dense", _set("args", (4,)), ValueError,
            r"^num_rows=4 is too small: this gradient has row 4$"),
        Row("num_rows-float", "SparseGrad.to_dense", _set("args", (2.5,)), TypeError,
            r"^num_rows must be a positive int, got 2.5$"),
        Row("num_rows-unknown", "SparseGrad.to_dense",
            _set("grad", lambda _: fastembed.SparseGrad([1], np.ones((1, D)))),
            ValueError, r"^to_dense needs num_rows"),
        Row("num_rows-differ", "SparseGrad.__add__",
            _set("b", lambda _: fastembed.SparseGrad([2], np.ones((1, D)), V + 1)),
            ValueError, rf"^cannot add gradients of tables of {V} and {V + 1} rows$"),
        Row("dim-differ", "SparseGrad.__add__", _set("b", lambda _: fastembed.SparseGrad([2], np.ones((1, D + 1)), V)),
            ValueError, rf"^cannot add sparse gradients of widths {D} and {D + 1}$"),
        # gradcheck
        Row("eps-zero", "gradcheck", _set("eps", 0.0), ValueError, r"^eps must be positive, got 0.0$"),
        Row("eps-negative", "gradcheck", _set("eps", -1e-6), ValueError, r"^eps must be positive, got -1e-06$"),
        Row("eps-nan", "gradcheck", _set("eps", float("nan")), ValueError, r"^eps must be finite, got nan$"),
    ]
    bad += _bag_rows(many) + _optimizer_rows(many)
    ok = [
        Row("table-strided", "gather", _set("table", lambda _: _strided(_table()))),
        Row("table-fortran-order", "gather", _set("table", lambda _: np.asfortranarray(_table()))),
        Row("table-read-only", "gather", _set("table", lambda _: _readonly(_table()))),
        Row("table-float64", "gather", _set("table", lambda _: _table(np.float64))),
        Row("table-float16", "gather", _set("table", lambda _: _table(np.float16))),
        Row("table-V0-no-ids", "gather", many(table=lambda _: np.zeros((0, D), np.float32),
                                               ids=lambda _: np.zeros((0, 4), np.int64))),
        Row("table-D0", "gather", _set("table", lambda _: np.zeros((V, 0), np.float32))),
        Row("ids-0d", "gather", _set("ids", lambda _: np.array(7))),
        Row("ids-empty", "gather", _set("ids", lambda _: np.zeros((3, 0), np.int32))),
        Row("ids-empty-list", "gather", _set("ids", [])),
        Row("grad_out-strided", "sparse_grad", _set("grad_out", lambda _: _strided(_grad()))),
        Row("grad_out-read-only", "sparse_grad", _set("grad_out", lambda _: _readonly(_grad()))),
        Row("grad_out-int", "sparse_grad", _set("grad_out", lambda _: np.arange(6 * D).reshape(SHAPE + (D,)))),
        Row("grad_out-D0", "sparse_grad", _set("grad_out", lambda _: np.zeros(SHAPE + (0,)))),
        Row("ids-empty", "sparse_grad", many(ids=lambda _: np.zeros(0, np.int64), grad_out=lambda _: np.zeros((0, D)))),
        Row("num_rows-none", "sparse_grad", many(num_rows=None, ids=_put(2**40))),
        Row("dense_grad-strided", "scatter_add", _set("dense_grad", lambda _: _strided(np.zeros((V, D))))),
        Row("dense_grad-float32", "scatter_add", _set("dense_grad", lambda _: np.zeros((V, D), np.float32))),
        Row("dense_grad-D0", "scatter_add", many(dense_grad=lambda _: np.zeros((V, 0)),
                                                 grad_out=lambda _: np.zeros(SHAPE + (0,)))),
        Row("grad_out-read-only", "scatter_add", _set("grad_out", lambda _: _readonly(_grad()))),
        Row("grad_out-fortran", "scatter_add", _set("grad_out", lambda _: np.asfortranarray(_grad()))),
        Row("grad_out-list", "Embedding.backward", _set("grad_out", lambda _: _grad().tolist())),
        Row("table-strided", "embedding_bag", _set("table", lambda _: _strided(_table()))),
        Row("table-read-only", "embedding_bag", _set("table", lambda _: _readonly(_table()))),
        Row("table-float64", "embedding_bag", _set("table", lambda _: _table(np.float64))),
        Row("table-D0", "embedding_bag", _set("table", lambda _: np.zeros((V, 0), np.float32))),
        Row("ids-no-bags", "embedding_bag", _set("ids", lambda _: np.zeros((0, 3), np.int64))),
        Row("ids-empty-bags", "embedding_bag", _set("ids", lambda _: np.zeros((2, 0), np.int64))),
        Row("grad_out-strided", "embedding_bag_backward", _set("grad_out", lambda _: _strided(_bag_grad()))),
        Row("grad_out-read-only", "EmbeddingBag.backward",
            _set("grad_out", lambda _: _readonly(_bag_grad(np.float32)))),
        Row("grad_out-int", "embedding_bag_backward",
            _set("grad_out", lambda _: np.arange(SHAPE[0] * D).reshape(SHAPE[0], D))),
        Row("grad_out-strided", "fused_step", _set("grad_out", lambda _: _strided(_grad(np.float32)))),
        Row("grad_out-float64", "fused_step", _set("grad_out", lambda _: _grad())),
    ]
    return bad, ok


FLAT_IDS = np.array([0, 1, 2, 3, 4, 9])


def _bag_rows(many):
    """Offsets (with 1-D ids), weights, modes and gradients of the bag entry points."""
    rows = []
    offsets_cases = [
        ("not-starting-at-0", [1, 2, 4], {}, ValueError, r"^offsets\[0\] = 1: the first bag must start at 0$"),
        ("negative-start", [-1, 2, 4], {}, ValueError, r"^offsets\[0\] = -1: the first bag must start at 0$"),
        ("non-monotone", [0, 4, 2], {}, ValueError,
         r"^offsets\[2\] = 2 is less than offsets\[1\] = 4: offsets must be non-decreasing$"),
        ("beyond-N", [0, 2, 7], {}, ValueError, r"^offsets\[2\] = 7 is beyond the number of ids \(6\)$"),
        ("last-not-N", [0, 2, 5], {"include_last_offset": True}, ValueError,
         r"^offsets\[2\] = 5 must equal the number of ids \(6\) with include_last_offset=True$"),
        ("empty-with-ids", [], {}, ValueError, r"^offsets is empty but there are 6 ids"),
        ("float", np.array([0.0, 2.0]), {}, TypeError, r"^offsets must be an integer array, got dtype float64$"),
        ("object", np.array([0, 2], dtype=object), {}, TypeError, r"^offsets must be an integer array, got dtype object$"),
        ("2-D", np.array([[0, 2]]), {}, ValueError, r"^offsets must be 1-D, got shape \(1, 2\)$"),
        ("uint64-beyond-int64", np.array([0, 2**64 - 1], np.uint64), {}, IndexError,
         rf"^offsets\[1\] = {2**64 - 1} does not fit in int64$"),
        ("missing", None, {}, ValueError, r"^offsets is required when ids is 1-D"),
    ]
    for entry in ("embedding_bag", "embedding_bag_backward", "EmbeddingBag.__call__", "EmbeddingBag.backward",
                  "fused_step(bag)"):
        for case, offsets, extra, exc, match in offsets_cases:
            if extra and entry not in ("embedding_bag", "embedding_bag_backward"):
                continue        # a layer's include_last_offset is its own, not an argument of the call
            rows.append(Row(f"offsets-{case}", entry, many(ids=lambda _: FLAT_IDS.copy(), offsets=offsets, **extra),
                            exc, match))
        rows.append(Row("offsets-with-2-D-ids", entry, _set("offsets", [0, 1]), ValueError,
                        r"^offsets must be None when ids is 2-D \(fixed-length bags\), got ids of shape \(2, 3\)"))
        rows.append(Row("ids-3-D", entry, _set("ids", lambda _: _ids()[None]), ValueError,
                        r"^ids must be 1-D \(with offsets\) or 2-D \(fixed-length bags\), got shape \(1, 2, 3\)$"))
        rows += [
            Row("per_sample_weights-shape", entry, _set("per_sample_weights", lambda _: np.ones(6)), ValueError,
                r"^per_sample_weights must have the ids' shape \(2, 3\), got \(6,\)$"),
            Row("per_sample_weights-bool", entry, _set("per_sample_weights", lambda _: np.ones(SHAPE, bool)),
                TypeError, r"^per_sample_weights must be a float array, got dtype bool$"),
            Row("per_sample_weights-object", entry, _set("per_sample_weights", lambda _: np.ones(SHAPE, object)),
                TypeError, r"^per_sample_weights must be a float array, got dtype object$"),
        ]
    for entry in ("embedding_bag", "embedding_bag_backward", "EmbeddingBag"):
        rows.append(Row("mode-typo", entry, _set("mode", "avg"), ValueError,
                        r"^mode must be one of 'sum', 'mean', 'max', 'sqrtn'; got 'avg'$"))
        rows.append(Row("mode-upper-case", entry, _set("mode", "SUM"), ValueError,
                        r"^mode must be one of 'sum', 'mean', 'max', 'sqrtn'; got 'SUM'$"))
    for entry in ("embedding_bag", "embedding_bag_backward"):
        rows.append(Row("per_sample_weights-with-max", entry,
                        many(mode="max", per_sample_weights=lambda _: np.ones(SHAPE), table=lambda _: _table()),
                        ValueError, r"^per_sample_weights are not supported with mode='max'"))
        rows.append(Row("padding_idx-equal-V", entry, _set("padding_idx", V), ValueError,
                        rf"^padding_idx must be in \[-{V}, {V}\) for a table of {V} rows, got {V}$"))
    grad_cases = [("rows", np.zeros((3, D)), ValueError,
                   r"^grad_out must have shape \(number of bags, D\) = \(2, D\), got \(3, 3\)$"),
                  ("rank-1", np.zeros(2), ValueError,
                   r"^grad_out must have shape \(number of bags, D\) = \(2, D\), got \(2,\)$"),
                  ("string", np.zeros((2, D)).astype(str), TypeError, r"^grad_out must be a float array, got dtype <U"),
                  ("width", np.zeros((2, D + 1)), ValueError, rf"^grad_out has width {D + 1} but the table has width {D}$")]
    for entry in ("embedding_bag_backward", "EmbeddingBag.backward", "fused_step(bag)"):
        for case, grad, exc, match in grad_cases:
            if case == "width" and entry == "embedding_bag_backward":
                rows.append(Row(f"grad_out-{case}", entry, many(grad_out=grad, table=lambda _: _table(np.float64),
                                                                num_rows=None), exc, match))
            else:
                rows.append(Row(f"grad_out-{case}", entry, _set("grad_out", grad), exc, match))
    rows += [
        Row("empty-typo", "embedding_bag", _set("empty", "skip"), ValueError,
            r"^empty must be one of 'zeros', 'raise'; got 'skip'$"),
        Row("empty-bag-raises", "embedding_bag", many(ids=lambda _: FLAT_IDS.copy(), offsets=[0, 3, 3], empty="raise"),
            ValueError, r"^bag 1 \(ids\[3:3\]\) has no id to pool and empty='raise'$"),
        Row("table-int", "embedding_bag", _set("table", lambda _: np.arange(V * D).reshape(V, D)), TypeError,
            r"^table must be float32, float64, float16 or bfloat16 \(or a QuantizedTable\), got dtype int64$"),
        Row("table-rank-1", "embedding_bag", _set("table", lambda _: _table().reshape(-1)), ValueError,
            r"^table must be 2-D \(rows, dim\), got shape \(30,\)$"),
        Row("table-V0", "embedding_bag", _set("table", lambda _: np.zeros((0, D), np.float32)), IndexError,
            r"^ids\[0, 0\] = 0 is out of range \[0, 0\) for a table of 0 rows$"),
        Row("max-without-table", "embedding_bag_backward", _set("mode", "max"), ValueError,
            r"^the gradient of mode='max' needs the table, to find each column's arg-max$"),
        Row("num_rows-zero", "embedding_bag_backward", _set("num_rows", 0), ValueError,
            r"^num_rows must be a positive int, got 0$"),
        Row("table-object", "embedding_bag_backward", many(table=lambda _: _table().astype(object), num_rows=None),
            TypeError, r"^table must be float32 or float64, got dtype object$"),
        Row("num_embeddings-zero", "EmbeddingBag", _set("num_embeddings", 0), ValueError,
            r"^num_embeddings must be a positive int, got 0$"),
        Row("embedding_dim-float", "EmbeddingBag", _set("embedding_dim", 2.5), TypeError,
            r"^embedding_dim must be a positive int, got 2.5$"),
        Row("empty-typo", "EmbeddingBag", _set("empty", "none"), ValueError,
            r"^empty must be one of 'zeros', 'raise'; got 'none'$"),
        Row("dtype-int", "EmbeddingBag", _set("dtype", "int64"), TypeError,
            r"^dtype must be float32 or float64, got int64$"),
        Row("size-product-overflows", "EmbeddingBag", many(num_embeddings=2**62, embedding_dim=2**62), ValueError,
            r"exceed the largest possible array"),
    ]
    return rows


def _optimizer_rows(many):
    """Hyper-parameters, fused steps, hand-made gradients and saved state of the optimizers."""
    rows = []
    for entry in ("SGD", "Adagrad", "RowWiseAdagrad", "SparseAdam"):
        rows += [
            Row("lr-negative", entry, _set("lr", -0.1), ValueError,
                r"^Invalid learning rate: -0.1 \(must be finite and >= 0\)$"),
            Row("lr-nan", entry, _set("lr", float("nan")), ValueError, r"^Invalid learning rate: nan"),
            Row("lr-inf", entry, _set("lr", float("inf")), ValueError, r"^Invalid learning rate: inf"),
            Row("lr-string", entry, _set("lr", "0.1"), TypeError, r"^learning rate must be a number, got '0.1'$"),
            Row("lr-bool", entry, _set("lr", True), TypeError, r"^learning rate must be a number, got True$"),
            Row("lr-array", entry, _set("lr", lambda _: np.ones(2)), TypeError, r"^learning rate must be a number"),
            Row("layer-not-a-layer", entry, _set("layer", lambda _: _table()), TypeError,
                r"^an optimizer needs a layer with a 2-D table \(Embedding or EmbeddingBag\), got ndarray$"),
            Row("layer-int8", entry, _set("layer", lambda _: fastembed.Embedding(V, D, trainable=False,
                                                                                storage="int8")),
                ValueError, r"^a int8 table is for inference: an optimizer needs float32 or float64 storage$"),
        ]
        if entry != "SGD":
            rows.append(Row("eps-negative", entry, _set("eps", -1e-8), ValueError, r"^Invalid epsilon value: -1e-08"))
        if entry != "SparseAdam":
            rows.append(Row("weight_decay-nan", entry, _set("weight_decay", float("nan")), ValueError,
                            r"^Invalid weight_decay value: nan"))
    rows += [
        Row("momentum-negative", "SGD", _set("momentum", -0.5), ValueError, r"^Invalid momentum value: -0.5"),
        Row("initial_accumulator_value-inf", "Adagrad", _set("initial_accumulator_value", float("inf")), ValueError,
            r"^Invalid initial_accumulator_value: inf"),
        Row("betas-beta1-one", "SparseAdam", _set("betas", (1.0, 0.999)), ValueError,
            r"^Invalid beta parameter at index 0: 1.0 \(must be in \[0, 1\)\)$"),
        Row("betas-beta2-negative", "SparseAdam", _set("betas", (0.9, -0.1)), ValueError,
            r"^Invalid beta parameter at index 1: -0.1"),
        Row("betas-nan", "SparseAdam", _set("betas", (float("nan"), 0.9)), ValueError,
            r"^Invalid beta parameter at index 0: nan"),
        Row("betas-one-value", "SparseAdam", _set("betas", (0.9,)), ValueError,
            r"^betas must be a pair \(beta1, beta2\), got \(0.9,\)$"),
        Row("betas-scalar", "SparseAdam", _set("betas", 0.9), TypeError,
            r"^betas must be a pair \(beta1, beta2\), got 0.9$"),
        # the fused step of a lookup layer
        Row("grad_out-shape", "fused_step", _set("grad_out", lambda _: np.zeros((3, 2, D))), ValueError,
            r"^grad_out must have shape ids.shape \+ \(D,\) = \(2, 3, 3\), got \(3, 2, 3\)$"),
        Row("grad_out-width", "fused_step", _set("grad_out", lambda _: np.zeros(SHAPE + (D + 1,))), ValueError,
            rf"^grad_out has width {D + 1} but the table has width {D}$"),
        Row("grad_out-object", "fused_step", _set("grad_out", lambda _: _grad().astype(object)), TypeError,
            r"^grad_out must be a float array, got dtype object$"),
        Row("offsets-on-a-lookup-layer", "fused_step", _set("offsets", [0, 3]), TypeError,
            r"^offsets and per_sample_weights apply to an EmbeddingBag layer only$"),
        Row("table-read-only", "fused_step", lambda a: setattr(a["opt"].layer.embeddings.flags, "writeable", False),
            ValueError, r"^the layer's table must be a writeable C-contiguous array to be updated in place$"),
        # step with a gradient that does not fit the table: the gradient stays where it was
        Row("grad-width", "SGD.step", lambda a: setattr(a["opt"].layer, "grad",
                                                        fastembed.SparseGrad([1], np.ones((1, D + 1)))),
            ValueError, rf"^layer.grad has width {D + 1} but the table has width {D}$"),
        Row("grad-row-beyond-table", "SGD.step", lambda a: setattr(a["opt"].layer, "grad",
                                                                   fastembed.SparseGrad([1, V], np.ones((2, D)))),
            IndexError, rf"^ids\[1\] = {V} is out of range \[0, {V}\)"),
    ]
    state_cases = [
        ("foreign-optimizer", lambda s: s.update(optimizer=np.asarray("Adagrad")), ValueError,
         r"^this state is for Adagrad, not SparseAdam$"),
        ("no-optimizer-name", lambda s: s.pop("optimizer"), ValueError, r"^this state is for an unknown optimizer"),
        ("missing-hyper", lambda s: s.pop("betas"), KeyError, r"the state has no betas"),
        ("missing-array", lambda s: s.pop("exp_avg"), KeyError, r"the state has no 'exp_avg'"),
        ("unexpected-array", lambda s: s.update(sum=np.zeros((V, D))), KeyError,
         r"the state has unexpected arrays \['sum'\]"),
        ("array-shape", lambda s: s.update(exp_avg=np.zeros((V, D + 1))), ValueError,
         rf"^state 'exp_avg' must have shape \({V}, {D}\), got \({V}, {D + 1}\)$"),
        ("array-strings", lambda s: s.update(exp_avg=np.zeros((V, D)).astype(str)), TypeError,
         r"^state 'exp_avg' must have dtype float, got <U"),
        ("array-object", lambda s: s.update(exp_avg=np.zeros((V, D), object)), TypeError,
         r"^state 'exp_avg' must have dtype float, got object$"),
        ("array-list", lambda s: s.update(exp_avg=np.zeros((V, D)).tolist()), TypeError,
         r"^state 'exp_avg' must be an array, got list$"),
        ("lr-negative", lambda s: s.update(lr=np.asarray(-1.0)), ValueError, r"^Invalid learning rate: -1.0"),
        ("betas-three", lambda s: s.update(betas=np.asarray([0.9, 0.9, 0.9])), ValueError,
         r"^betas must be a pair"),
        ("step_count-negative", lambda s: s.update(step_count=np.asarray(-1)), ValueError,
         r"^step_count must be a non-negative int, got -1$"),
    ]
    for case, change, exc, match in state_cases:
        rows.append(Row(case, "load_state_dict", lambda a, c=change: c(a["state"]), exc, match))
    return rows


def _all_rows():
    bad, ok = _specific_rows()
    for entry in ENTRIES.values():
        if "ids" in entry.roles:
            bad += _ids_rows(entry)
            if entry.oracle is not None:
                ok += _ids_ok_rows(entry)
        if "threads" in entry.roles:
            bad += _threads_rows(entry)
            if entry.oracle is not None:
                ok += [Row(f"n_threads-{t}", entry.name, _set("n_threads", t)) for t in (1, 2, 3, 8)]
                ok += [Row("n_threads-numpy-int", entry.name, _set("n_threads", np.int64(2)))]
        if "policy" in entry.roles:
            bad += _policy_rows(entry)
        if "tensor_ids" in entry.roles:
            bad += _tensor_ids_rows(entry)
    return bad, ok


BAD_ROWS, OK_ROWS = _all_rows()


def _fingerprint(value):
    """Everything a call could have changed, as comparable bytes (a view's base is included)."""
    if isinstance(value, np.ndarray):
        own = (value.dtype.str, value.shape, value.tobytes() if value.dtype != object else tuple(value.flat))
        return own + (_fingerprint(value.base) if isinstance(value.base, np.ndarray) else None,)
    if isinstance(value, fastembed.Embedding):
        return ("layer", _fingerprint(value.embeddings), _fingerprint(value.grad), repr(value))
    if isinstance(value, fastembed.optim.SparseOptimizer):
        return ("optimizer", repr(value), _fingerprint(value.state), _fingerprint(value.layer))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.nn.Module):
        return ("module", _fingerprint(dict(value.state_dict())))
    if torch is not None and isinstance(value, torch.Tensor):
        return ("tensor", _fingerprint(value.detach().numpy()), _fingerprint(value.grad))
    if isinstance(value, fastembed.SparseGrad):
        return ("sparse", _fingerprint(value.rows), _fingerprint(value.values), value.num_rows)
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _fingerprint(v)) for k, v in sorted(value.items()))
    return repr(value)


def test_every_entry_point_has_rows():
    covered = {row.entry for row in BAD_ROWS}
    assert covered == set(ENTRIES), set(ENTRIES) - covered
    assert len({(row.entry, row.id) for row in BAD_ROWS + OK_ROWS}) == len(BAD_ROWS) + len(OK_ROWS)


@pytest.mark.parametrize("row", BAD_ROWS, ids=lambda row: f"{row.entry}:{row.id}")
def test_bad_input_raises_precisely_and_changes_nothing(row):
    args = ENTRIES[row.entry].make()
    row.mutate(args)
    before = _fingerprint(args)
    before_threads = fastembed.get_num_threads()
    with pytest.raises(row.exc, match=row.match) as info:
        ENTRIES[row.entry].call(args)
    assert type(info.value) is row.exc, f"raised {type(info.value).__name__}, not {row.exc.__name__}"
    assert _fingerprint(args) == before
    assert fastembed.get_num_threads() == before_threads


@pytest.mark.parametrize("row", OK_ROWS, ids=lambda row: f"{row.entry}:{row.id}")
def test_accepted_input_matches_oracle(row):
    entry = ENTRIES[row.entry]
    args = entry.make()
    row.mutate(args)
    expected = entry.oracle(copy.deepcopy(args))
    results = entry.result(entry.call(args))
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_save_failure_leaves_no_file_behind(tmp_path):
    layer = _layer()
    target = tmp_path / "layer.npz"
    layer.save(target)
    before = target.read_bytes()
    layer.embeddings[...] = 1.0
    with pytest.raises(TypeError, match="meta must be JSON-serialisable"):
        fastembed.checkpoint.save_arrays(target, {"embeddings": layer.embeddings}, {"bad": object()})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.npz"]


LOADER_ROWS = [
    # (id, file bytes or None for a missing file, format, exception, message after the file's name)
    ("missing-file", None, "auto", FileNotFoundError, r"No such file or directory"),
    ("header-only-dimension-0", b"2 0\nhello\n", "auto", ValueError, r", line 1: the header declares dimension 0$"),
    ("short-line", b"2 3\nhello 1 2 3\nworld 1 2\n", "auto", ValueError,
     r", line 3: expected a word and 3 numbers separated by spaces, found 3 fields$"),
    ("not-a-number", b"2 3\nhello 1 2 x\nworld 1 2 3\n", "word2vec", ValueError, r", line 2: "),
    ("fewer-vectors-than-the-header", b"3 3\nhello 1 2 3\n", "auto", ValueError,
     r": file ends after 1 vectors, but its header declares 3$"),
    ("truncated-binary", b"2 3\nhello " + np.ones(3, np.float32).tobytes() + b"\nworld " + b"\x00" * 4,
     "word2vec-binary", ValueError, r", vector 2: truncated record \(\d+ bytes left; a record is a word, a space and "
     r"12 bytes\)$"),
    ("garbage-bytes", bytes(range(256)), "auto", ValueError, r", line 1: expected a word followed by numbers$"),
    ("empty-glove", b"", "glove", ValueError, r": no vectors found \(empty file\?\)$"),
]


@pytest.mark.parametrize("case, data, fmt, exc, match", LOADER_ROWS, ids=[row[0] for row in LOADER_ROWS])
def test_vector_loader_bad_files(tmp_path, case, data, fmt, exc, match):
    from fastembed.pretrained import load_vectors
    path = tmp_path / "vectors.txt"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(exc, match=re.escape(str(path)) + match if exc is ValueError else match):
        load_vectors(path, format=fmt)
    assert data is None or path.read_bytes() == data


@pytest.mark.parametrize("content, exc, match", [
    (None, FileNotFoundError, r"No such file or directory"),
    ("{not json", ValueError, r"^not a tokenizer JSON string: Expecting property name"),
    ("[1, 2]", ValueError, r'^not a tokenizer JSON string: expected an object with a "config" object$'),
])
def test_tokenizer_loader_bad_files(tmp_path, content, exc, match):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    from fastembed.text import Tokenizer
    with pytest.raises(exc, match=match):
        Tokenizer.load(path)
