"""Conversions and builders shared by the op modules (cached on the workload, so ops share them)."""
import numpy as np

import fastembed
from fastembed.bench import peers
from fastembed.bench.registry import Case, Dense, Sparse


def torch_inputs(wl):
    """(table, ids, flat ids, grad_out, flat grad) as torch tensors sharing the numpy inputs' memory."""
    torch = peers.torch()
    return wl.cache("torch", lambda: (
        torch.from_numpy(wl.table),
        torch.from_numpy(wl.ids),
        torch.from_numpy(wl.flat_ids),
        torch.from_numpy(wl.grad_out),
        torch.from_numpy(wl.grad2d),
    ))


def jax_inputs(wl):
    """(table, flat ids, flat grad) as jax arrays on the CPU (copies; ids become int32 unless x64 is on)."""
    jax, _ = peers.jax()
    return wl.cache("jax", lambda: tuple(jax.block_until_ready(jax.device_put(a))
                                         for a in (wl.table, wl.flat_ids, wl.grad2d)))


def zeroed(wl):
    """A (V, D) float32 buffer of zeros whose pages are already faulted in (no page fault gets timed)."""
    out = np.empty_like(wl.table)
    out.fill(0.0)
    return out


# np.add.at takes ~0.2 s a call on the large workloads: it gets this many seconds of timing per cell (at
# least 3 samples), and the report says how many samples it got.
ADD_AT_BUDGET_S = 1.5


def np_add_at(wl, n):
    """``np.add.at(dense, ids, grad)`` into a zeroed (V, D) buffer (zeroing excluded); single-threaded."""
    from fastembed.bench.registry import Case, Dense

    dense = zeroed(wl)
    return Case(lambda: np.add.at(dense, wl.flat_ids, wl.grad2d), result=lambda _: Dense(dense))


def abs_sum(wl):
    """Sparse sums of |grad_out| per looked-up row: the scale of the tolerance of gradient checks."""
    def make():
        grad = fastembed.sparse_grad(wl.ids, np.abs(wl.grad_out), num_rows=wl.rows)
        return Sparse(grad.rows, grad.values)
    return wl.cache("abs_sum", make)


def fbgemm_module(wl, optimizer="EXACT_SGD", pooling="SUM", **hyper):
    """FBGEMM's CPU table-batched embedding over one table holding (a copy of) the workload's table.

    Constructed as FBGEMM's own CPU tests do: ``embedding_specs=[(V, D, EmbeddingLocation.HOST,
    ComputeDevice.CPU)]``; optimizer: an ``EmbOptimType`` name; pooling: a ``PoolingMode`` name; hyper:
    ``learning_rate``, ``eps``, ... Returns ``(tbe, weights)``, weights the table's (V, D) tensor.
    """
    from fastembed.bench.registry import Skip

    fb = peers.fbgemm()
    torch = peers.torch()
    if wl.dim % 4:
        raise Skip(f"FBGEMM TBE needs D % 4 == 0 (D = {wl.dim})")
    tbe = fb["TBE"](
        [(wl.rows, wl.dim, fb["EmbeddingLocation"].HOST, fb["ComputeDevice"].CPU)],
        optimizer=getattr(fb["EmbOptimType"], optimizer),
        pooling_mode=getattr(fb["PoolingMode"], pooling),
        **hyper,
    )
    weights = tbe.split_embedding_weights()[0]
    with torch.no_grad():
        weights.copy_(torch.from_numpy(wl.table))
    return tbe, weights


def fbgemm_tbe(wl, n_threads, learning_rate=0.01):
    """FBGEMM's CPU TBE (sum pooling, exact SGD) with bags of one id (offsets 0..N), which make its pooled
    forward a plain lookup. Returns ``(tbe, weights, indices, offsets)``."""
    torch = peers.torch()
    tbe, weights = fbgemm_module(wl, learning_rate=learning_rate)
    indices = torch.from_numpy(wl.flat_ids)
    offsets = torch.arange(wl.n_ids + 1, dtype=torch.int64)
    return tbe, weights, indices, offsets


def torch_autograd_backward(table, forward, grad_out, sparse):
    """A ``Case`` timing torch's backward into ``table`` (a tensor): ``forward(weight, sparse)`` runs untimed
    before each call; the timed part is ``backward`` (and ``coalesce`` of a sparse gradient)."""
    weight = table.detach().requires_grad_(True)  # shares the table's memory; backward never writes it
    state = {}

    def prepare():  # the forward pass, untimed; a fresh gradient each call
        weight.grad = None
        state["out"] = forward(weight, sparse)

    def call():
        state.pop("out").backward(grad_out)
        return weight.grad.coalesce() if sparse else weight.grad

    if sparse:
        result = lambda g: Sparse(g.indices()[0].numpy(), g.values().numpy())  # noqa: E731
    else:
        result = lambda g: Dense(g.numpy())  # noqa: E731
    return Case(call, prepare=prepare, result=result)
