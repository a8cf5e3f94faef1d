"""No leaks: thousands of calls through every kernel (lookups, bags, a fused optimizer), error paths included,
leave resident memory flat."""
import gc
import os

import numpy as np
import pytest

import fastembed

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")

V, D, N = 5000, 32, 2048            # one round allocates about 1.5 MiB of outputs and temporaries


def _resident_bytes():
    gc.collect()
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _one_round(rng, table, layer, grad_out, bag, opt):
    ids = rng.integers(0, V, size=N)
    strays = ids.copy()
    strays[::97] = -1
    fastembed.gather(table, ids, n_threads=2)
    fastembed.gather(table, strays, out_of_range="zero", n_threads=2)
    fastembed.sparse_grad(ids, grad_out, num_rows=V, n_threads=2)
    fastembed.sparse_grad(strays, grad_out, num_rows=V, out_of_range="clip")
    fastembed.scatter_add(np.zeros((V, D), np.float32), ids, grad_out)
    layer(ids)
    layer.backward(ids, grad_out)
    layer.step(1e-3)
    for bad in (strays, ids.astype(np.float64)):
        try:
            fastembed.gather(table, bad)
        except (IndexError, TypeError):
            pass
    offsets = np.arange(0, N, 16)
    bag_grad = grad_out[:offsets.shape[0]]
    for mode in ("sum", "max"):
        fastembed.embedding_bag(table, ids, offsets, mode=mode, n_threads=2)
        fastembed.embedding_bag_backward(ids, bag_grad, offsets, mode=mode, table=table, n_threads=2)
    bag(ids, offsets)
    opt.fused_step(ids, bag_grad, offsets=offsets, n_threads=2)
    bag.backward(ids, offsets, bag_grad)
    opt.step()
    try:
        opt.fused_step(strays, bag_grad, offsets=offsets)
    except IndexError:
        pass


def test_resident_memory_stays_flat_over_many_calls():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, D)).astype(np.float32)
    layer = fastembed.Embedding(V, D, seed=0)
    grad_out = rng.standard_normal((N, D)).astype(np.float32)
    bag = fastembed.EmbeddingBag(V, D, mode="mean", seed=0)
    opt = fastembed.optim.SparseAdam(bag, lr=1e-3)
    for _ in range(20):                      # let the allocator and the thread pool reach their steady state
        _one_round(rng, table, layer, grad_out, bag, opt)
    samples = []
    for _ in range(3):
        for _ in range(40):
            _one_round(rng, table, layer, grad_out, bag, opt)
        samples.append(_resident_bytes())
    # Measured flat to the page; leaking even one 256 KiB output per round would add 20 MiB over 80 rounds.
    growth = samples[-1] - samples[0]
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB: {samples}"
