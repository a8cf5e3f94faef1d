"""Forward: look rows up, ``out[i] = table[ids[i]]``, into a preallocated output where the API allows one."""
import numpy as np

import fastembed
from fastembed.bench import peers
from fastembed.bench.ops._common import fbgemm_tbe, jax_inputs, torch_inputs
from fastembed.bench.registry import Case, Dense, Impl, Op, compare_exact, register


def _out(wl):
    out = np.empty(wl.ids.shape + (wl.dim,), dtype=wl.table.dtype)
    out.fill(0.0)
    return out


def _fastembed(wl, n):
    out = _out(wl)
    return Case(lambda: fastembed.gather(wl.table, wl.ids, out=out, n_threads=n), result=Dense)


def _np_take_clip(wl, n):
    out = _out(wl)
    return Case(lambda: np.take(wl.table, wl.ids, axis=0, out=out, mode="clip"), result=Dense)


def _np_take(wl, n):
    out = _out(wl)
    return Case(lambda: np.take(wl.table, wl.ids, axis=0, out=out), result=Dense)


def _index_select(wl, n):
    torch = peers.torch()
    table, _, flat, _, _ = torch_inputs(wl)
    out = torch.zeros(wl.n_ids, wl.dim)
    return Case(lambda: torch.index_select(table, 0, flat, out=out), result=lambda r: Dense(r.numpy()))


def _f_embedding(wl, n):
    torch = peers.torch()
    table, ids, _, _, _ = torch_inputs(wl)
    embedding = torch.nn.functional.embedding

    def call():
        with torch.no_grad():
            return embedding(ids, table)

    return Case(call, result=lambda r: Dense(r.numpy()))


def _jnp_take(wl, n):
    jax, jnp = peers.jax()
    table, flat, _ = jax_inputs(wl)
    take = jax.jit(lambda t, i: jnp.take(t, i, axis=0))
    return Case(lambda: take(table, flat).block_until_ready(), result=lambda r: Dense(np.asarray(r)))


def _fbgemm_forward(wl, n):
    torch = peers.torch()
    tbe, _, indices, offsets = fbgemm_tbe(wl, n)

    def call():
        with torch.no_grad():
            return tbe(indices, offsets)

    return Case(call, result=lambda r: Dense(r.numpy()))


def _check(expected, got, wl):
    return compare_exact(expected.array, got.array)


register(Op(
    name="gather",
    title="forward gather",
    fastembed=Impl("fastembed", "fastembed", _fastembed, note="fastembed.gather(table, ids, out=, n_threads=)"),
    peers=(
        Impl("np.take(out=, mode='clip')", "numpy", _np_take_clip, short="np.take clip"),
        Impl("np.take(out=)", "numpy", _np_take, short="np.take"),
        Impl("torch.index_select(out=)", "torch", _index_select, short="index_select"),
        Impl("F.embedding", "torch", _f_embedding, short="F.embedding", note="allocates its output"),
        Impl("jnp.take (jit)", "jax", _jnp_take, short="jnp.take", note="allocates its output"),
        Impl("FBGEMM TBE fwd (bags of 1)", "fbgemm_gpu", _fbgemm_forward, short="FBGEMM fwd",
             note="sum-pooled bags of one id, allocates its output"),
    ),
    check=_check,
    order=0,
))
