"""Backward to a sparse gradient: the unique looked-up rows and their summed output gradients."""
import numpy as np

import fastembed
from fastembed.bench import peers
from fastembed.bench.ops._common import (ADD_AT_BUDGET_S, abs_sum, fbgemm_tbe, jax_inputs, np_add_at,
                                         torch_autograd_backward, torch_inputs)
from fastembed.bench.registry import Case, Dense, Impl, Op, Sparse, Updated, check_gradient, register

SGD_LR = 0.01


def _fastembed(wl, n):
    return Case(lambda: fastembed.sparse_grad(wl.ids, wl.grad_out, num_rows=wl.rows, n_threads=n),
                result=lambda g: Sparse(g.rows, g.values))


def _torch_backward(wl, n, sparse):
    torch = peers.torch()
    table, ids, _, grad_out, _ = torch_inputs(wl)
    return torch_autograd_backward(table, lambda weight, sparse: torch.nn.functional.embedding(ids, weight,
                                                                                                sparse=sparse),
                                   grad_out, sparse)


def _segment_sum(wl, n):
    jax, _ = peers.jax()
    _, flat, grad = jax_inputs(wl)
    rows = wl.rows
    segment_sum = jax.jit(lambda g, i: jax.ops.segment_sum(g, i, num_segments=rows))
    return Case(lambda: segment_sum(grad, flat).block_until_ready(), result=lambda r: Dense(np.asarray(r)))


def _fbgemm_sgd(wl, n):
    peers.torch()
    tbe, weights, indices, offsets = fbgemm_tbe(wl, n, learning_rate=SGD_LR)
    _, _, _, _, grad2d = torch_inputs(wl)
    before = wl.table.copy()
    state = {}

    def prepare():  # the forward pass, untimed
        state["out"] = tbe(indices, offsets)

    def call():  # backward fused with the SGD update of the touched rows
        state.pop("out").backward(grad2d)

    return Case(call, prepare=prepare, result=lambda _: Updated(before, weights.detach().numpy(), SGD_LR))


def _check(expected, got, wl):
    return check_gradient(expected, abs_sum(wl), got)


register(Op(
    name="sparse_grad",
    title="sparse gradient",
    fastembed=Impl("fastembed", "fastembed", _fastembed,
                   note="fastembed.sparse_grad(ids, grad_out, num_rows=V, n_threads=): sorted unique rows + sums"),
    peers=(
        Impl("np.add.at (dense)", "numpy", np_add_at, short="np.add.at", budget_s=ADD_AT_BUDGET_S,
             note="into a zeroed (V, D) buffer, zeroing excluded"),
        Impl("torch dense backward", "torch", lambda wl, n: _torch_backward(wl, n, sparse=False),
             short="torch dense bwd", note="autograd backward of F.embedding, incl. allocating the zeroed (V, D) grad"),
        Impl("torch sparse=True + coalesce", "torch", lambda wl, n: _torch_backward(wl, n, sparse=True),
             short="torch sparse+coalesce", note="autograd backward of F.embedding(sparse=True), then .coalesce()"),
        Impl("jax segment_sum (jit)", "jax", _segment_sum, short="segment_sum",
             note="jax.ops.segment_sum(grad, ids, num_segments=V): a dense (V, D) result"),
        Impl("FBGEMM TBE fused SGD", "fbgemm_gpu", _fbgemm_sgd, short="FBGEMM SGD",
             note="backward fused with an exact-SGD update of the touched rows (does more work: the update)"),
    ),
    check=_check,
    order=1,
))
