"""Bit-identical results for 1, 2, 3 and 8 threads, for every kernel that promises it.

What promises it, and why (a new kernel goes into DETERMINISTIC, or into NOT_DETERMINISTIC with its reason):
  gather (_gather.gather_rows)           each output row is a plain copy; how rows are split cannot matter.
  gather, out_of_range (_remap.*)        each id is mapped on its own by integer logic.
  first_out_of_range (_index)            a parallel count; the reported position comes from a serial scan.
  group_rows (_index)                    a stable radix sort; chunk histograms are combined digit-major.
  sparse_grad (segment_sum_rows)         each row sums its contributions in increasing position order.
  scatter_add (scatter_add_rows)         each thread owns whole rows and visits the ids in order.
  sparse_grad, V <= N (sum_rows_by_slot) each thread owns whole output rows and visits the ids in order.
  low-precision gathers (_lowp)          per-row conversions, as the float gather.
  max_norm, renorm_, scale_grad_by_freq (_rowscale)   one thread per row, a fixed order inside a row.
  bags (_bag.bag_forward, embedding_bag_backward)   one thread pools a whole bag in position order; the
                                         backward reduces each row's terms in the grouped order, as sparse_grad.
  fused optimizers (_optim.fused_update)  each touched row is reduced and updated by one thread; the update is
                                         element-wise, so step and fused_step give the same bits for any split.
  Embedding call/backward/step, SparseGrad.__add__: built only from the above.
Nothing in fastembed is non-deterministic today. A kernel that is not (atomics, Hogwild updates, a reduction
whose order follows the thread split) would be listed here with what varies, and left out of DETERMINISTIC.
"""
import numpy as np
import pytest

import fastembed
from fastembed import _index, lowp
from fastembed.renorm import renorm_

THREAD_COUNTS = (1, 2, 3, 8)
N, V, D = 200_000, 5000, 8       # large enough for every kernel's parallel path


def _inputs():
    rng = np.random.default_rng(42)
    ids = (rng.zipf(1.3, size=N) % V).astype(np.int64)        # skewed: long segments for a few rows
    strays = ids.copy()
    strays[rng.random(N) < 0.05] = -7
    strays[rng.random(N) < 0.05] = V + 3
    table = rng.standard_normal((V, D)).astype(np.float32)
    grad_out = rng.standard_normal((N, D)).astype(np.float32)
    return ids, strays, table, grad_out


IDS, STRAYS, TABLE, GRAD = _inputs()
# Destinations beyond the caches: the only ones whose rows the backward kernels split over threads.
V_WIDE, D_WIDE = N, 16
IDS_WIDE = np.random.default_rng(7).integers(0, V_WIDE, size=N)
GRAD_WIDE = np.repeat(GRAD, 2, axis=1)
LOWP = {storage: lowp.encode(TABLE, storage) for storage in lowp.STORAGES}


def _sparse(grad):
    return grad.rows, grad.values


def _layer_step(t):
    layer = fastembed.Embedding(V, D, weights=TABLE)
    layer.backward(IDS, GRAD, n_threads=t)
    layer.backward(IDS[::-1], GRAD, n_threads=t)
    layer.step(0.1)
    return (layer.embeddings,)


def _first_bad(t):
    bad = IDS.copy()
    bad[150_001] = -1
    bad[190_000] = V
    return (np.array(_index.first_out_of_range(bad, V, t)),)


LENGTHS = np.random.default_rng(7).integers(0, 60, size=N // 30)         # empty bags and long ones
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)])[:-1]
BAG_IDS = IDS[:int(LENGTHS.sum())]
BAG_WEIGHTS = np.random.default_rng(8).uniform(0.1, 2.0, size=BAG_IDS.shape[0]).astype(np.float32)
BAG_GRAD = GRAD[:OFFSETS.shape[0]]
OPTIMIZERS = {"SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.01), "Adagrad": dict(lr=0.1, weight_decay=0.01),
              "RowWiseAdagrad": dict(lr=0.1), "SparseAdam": dict(lr=0.01)}


def _bag(mode, t, weighted=False):
    weights = BAG_WEIGHTS if weighted else None
    forward = fastembed.embedding_bag(TABLE, BAG_IDS, OFFSETS, mode=mode, per_sample_weights=weights, padding_idx=3,
                                      n_threads=t)
    grad = fastembed.embedding_bag_backward(BAG_IDS, BAG_GRAD, OFFSETS, mode=mode, per_sample_weights=weights,
                                            padding_idx=3, scale_grad_by_freq=True, table=TABLE, n_threads=t)
    return forward, grad.rows, grad.values


def _optimizer(name, t, fused, bags):
    layer = (fastembed.EmbeddingBag(V, D, mode="mean", weights=TABLE) if bags
             else fastembed.Embedding(V, D, weights=TABLE))
    opt = getattr(fastembed.optim, name)(layer, **OPTIMIZERS[name])
    for _ in range(2):
        if fused:
            opt.fused_step(*((BAG_IDS, BAG_GRAD, OFFSETS) if bags else (IDS, GRAD)), n_threads=t)
        else:
            if bags:
                layer.backward(BAG_IDS, OFFSETS, BAG_GRAD, n_threads=t)
            else:
                layer.backward(IDS, GRAD, n_threads=t)
            opt.step(n_threads=t)
    return (layer.embeddings,) + tuple(opt.state[key] for key in sorted(opt.state))


DETERMINISTIC = {
    "gather": lambda t: (fastembed.gather(TABLE, IDS, n_threads=t),),
    "gather int32 ids": lambda t: (fastembed.gather(TABLE, IDS.astype(np.int32), n_threads=t),),
    "gather clip": lambda t: (fastembed.gather(TABLE, STRAYS, n_threads=t, out_of_range="clip"),),
    "gather zero": lambda t: (fastembed.gather(TABLE, STRAYS, n_threads=t, out_of_range="zero"),),
    "gather oov row": lambda t: (fastembed.gather(TABLE, STRAYS, n_threads=t, out_of_range=0),),
    "first_out_of_range": _first_bad,
    "group_rows": lambda t: _index.group_rows(IDS, int(IDS.max()), t),
    "sparse_grad": lambda t: _sparse(fastembed.sparse_grad(IDS, GRAD, num_rows=V, n_threads=t)),
    "sparse_grad float64": lambda t: _sparse(fastembed.sparse_grad(IDS, GRAD.astype(np.float64), n_threads=t)),
    "sparse_grad zero": lambda t: _sparse(fastembed.sparse_grad(STRAYS, GRAD, num_rows=V, n_threads=t,
                                                                out_of_range="zero")),
    "sparse_grad clip": lambda t: _sparse(fastembed.sparse_grad(STRAYS, GRAD, num_rows=V, n_threads=t,
                                                                out_of_range="clip")),
    "sparse_grad padding + freq": lambda t: _sparse(fastembed.sparse_grad(IDS, GRAD, num_rows=V, n_threads=t,
                                                                          padding_idx=0, scale_grad_by_freq=True)),
    "sparse_grad max_norm": lambda t: _sparse(fastembed.sparse_grad(IDS, GRAD, n_threads=t, max_norm=1.0,
                                                                    table=TABLE)),
    "gather max_norm": lambda t: (fastembed.gather(TABLE, IDS, n_threads=t, max_norm=1.0, norm_type=3.0),),
    "renorm_": lambda t: (renorm_(TABLE.copy(), IDS, 1.0, n_threads=t),),
    "gather float16": lambda t: (fastembed.gather(LOWP["float16"], IDS, n_threads=t),),
    "gather bfloat16": lambda t: (fastembed.gather(LOWP["bfloat16"], IDS, n_threads=t),),
    "gather int8": lambda t: (fastembed.gather(LOWP["int8"], IDS, n_threads=t),),
    "gather int8 zero": lambda t: (fastembed.gather(LOWP["int8"], STRAYS, n_threads=t, out_of_range="zero"),),
    "scatter_add": lambda t: (fastembed.scatter_add(np.ones((V, D), np.float32), IDS, GRAD, n_threads=t),),
    "scatter_add large table": lambda t: (fastembed.scatter_add(np.ones((V_WIDE, D_WIDE), np.float32), IDS_WIDE,
                                                                GRAD_WIDE, n_threads=t),),
    "sparse_grad V = N": lambda t: _sparse(fastembed.sparse_grad(IDS_WIDE, GRAD_WIDE, num_rows=V_WIDE, n_threads=t)),
    "Embedding backward + step": _layer_step,
    "SparseGrad add": lambda t: _sparse(fastembed.sparse_grad(IDS[:N // 2], GRAD[:N // 2], num_rows=V, n_threads=t)
                                        + fastembed.sparse_grad(IDS[N // 2:], GRAD[N // 2:], num_rows=V,
                                                                n_threads=t)),
    **{f"bag {mode}": (lambda t, mode=mode: _bag(mode, t)) for mode in ("sum", "mean", "max", "sqrtn")},
    **{f"bag {mode} weighted": (lambda t, mode=mode: _bag(mode, t, True)) for mode in ("sum", "mean", "sqrtn")},
    **{f"bag mean {policy}": (lambda t, policy=policy: (fastembed.embedding_bag(
        TABLE, STRAYS[:BAG_IDS.shape[0]], OFFSETS, mode="mean", out_of_range=policy, n_threads=t),))
       for policy in ("clip", "zero")},
    **{f"{name} {how} {layer}": (lambda t, name=name, fused=fused, bags=bags: _optimizer(name, t, fused, bags))
       for name in OPTIMIZERS for fused, how in ((False, "step"), (True, "fused_step"))
       for bags, layer in ((False, "lookup"), (True, "bags"))},
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_same_bits_for_every_thread_count(name):
    results = {t: [(a.dtype.str, a.shape, a.tobytes()) for a in DETERMINISTIC[name](t)] for t in THREAD_COUNTS}
    for t in THREAD_COUNTS[1:]:
        assert results[t] == results[1], f"{name}: {t} threads differ from 1"

