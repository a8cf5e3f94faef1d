"""Every kernel once or twice on small inputs, checked against numpy: the workload .ci/valgrind runs under
memcheck. Small enough for valgrind's ~50x slowdown, big enough (>= 64 KiB of work, >= 32768 ids) to take each
kernel's parallel path as well as its serial one."""
import os
import tempfile

import numpy as np

import fastembed
from fastembed import _index, lowp
from fastembed import _reference as ref
from fastembed.renorm import renorm_


def check_functional_ops(rng):
    for dtype in (np.float32, np.float64):
        for index_dtype in (np.int32, np.int64):
            for n in (37, 40_000):
                table = rng.standard_normal((300, 7)).astype(dtype)
                ids = rng.integers(0, 300, size=n).astype(index_dtype)
                grad_out = rng.standard_normal((n, 7)).astype(dtype)
                for n_threads in (1, 2):
                    assert np.array_equal(fastembed.gather(table, ids, n_threads=n_threads), table[ids])
                    grad = fastembed.sparse_grad(ids, grad_out, num_rows=300, n_threads=n_threads)
                    rows, values = ref.sparse_grad(ids, grad_out)
                    assert np.array_equal(grad.rows, rows) and np.array_equal(grad.values, values)
                    dense, expected = np.zeros((300, 7), dtype), np.zeros((300, 7), dtype)
                    fastembed.scatter_add(dense, ids, grad_out, n_threads=n_threads)
                    assert np.array_equal(dense, ref.scatter_add(expected, ids, grad_out))
                    strays = ids.copy()
                    strays[::5] = -1
                    for policy in ("clip", "zero", 4):
                        fastembed.gather(table, strays, n_threads=n_threads, out_of_range=policy)
                        fastembed.sparse_grad(strays, grad_out, num_rows=300, n_threads=n_threads,
                                              out_of_range=policy)
                    assert _index.first_out_of_range(strays, 300, n_threads) == 0
    wide = rng.integers(0, 2**62, size=40_000)
    rows, _, seg_ptr = _index.group_rows(wide, int(wide.max()), 2)
    assert np.array_equal(rows, np.unique(wide)) and seg_ptr[-1] == wide.size
    # Empty, 0-d, D == 0, a table without rows.
    assert fastembed.gather(np.zeros((0, 3), np.float32), []).shape == (0, 3)
    assert fastembed.gather(np.zeros((5, 0)), [[1, 2]]).shape == (1, 2, 0)
    assert fastembed.gather(np.ones((5, 2)), np.array(3)).shape == (2,)
    try:
        fastembed.gather(np.ones((5, 2)), [0, 5])
    except IndexError:
        pass
    else:
        raise AssertionError("an out-of-range id was accepted")


def check_low_precision_and_options(rng):
    table = rng.standard_normal((300, 40)).astype(np.float32)
    ids = rng.integers(0, 300, size=(40, 50))
    strays = np.where(rng.random(ids.shape) < 0.1, 300, ids)
    grad_out = rng.standard_normal(ids.shape + (40,)).astype(np.float32)
    for storage in lowp.STORAGES:
        encoded = lowp.encode(table, storage)
        decoded = lowp.decode(encoded)
        for n_threads in (1, 2):
            for index_dtype in (np.int32, np.int64):
                got = fastembed.gather(encoded, ids.astype(index_dtype), n_threads=n_threads)
                assert np.array_equal(got, decoded[ids])
            fastembed.gather(encoded, strays, n_threads=n_threads, out_of_range="zero")
    for n_threads in (1, 2):
        clipped = fastembed.gather(table, ids, n_threads=n_threads, max_norm=1.0)
        assert np.all(np.linalg.norm(clipped, axis=-1) <= 1.0 + 1e-5)
        fastembed.sparse_grad(ids, grad_out, n_threads=n_threads, max_norm=1.0, table=table)
        fastembed.sparse_grad(ids, grad_out, num_rows=300, n_threads=n_threads, padding_idx=3,
                              scale_grad_by_freq=True)
        renorm_(table.copy(), ids, 1.0, n_threads=n_threads)


def check_bags_and_optimizers(rng):
    table = rng.standard_normal((300, 7))
    lengths = rng.integers(0, 16, size=4600)              # empty bags too; >= 32768 ids in all
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    ids = rng.integers(0, 300, size=int(lengths.sum()))
    weights = rng.uniform(0.5, 1.5, size=ids.shape[0])
    grad_out = rng.standard_normal((offsets.shape[0], 7))
    for mode in ("sum", "mean", "max", "sqrtn"):
        bag_weights = None if mode == "max" else weights
        expected = ref.embedding_bag(table, ids, offsets, mode, bag_weights, padding_idx=5)
        expected_grad = ref.embedding_bag_grad(table, ids, grad_out, offsets, mode, bag_weights, padding_idx=5)
        for n_threads in (1, 2):
            pooled = fastembed.embedding_bag(table, ids, offsets, mode=mode, per_sample_weights=bag_weights,
                                             padding_idx=5, n_threads=n_threads)
            assert np.allclose(pooled, expected)
            grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode=mode, per_sample_weights=bag_weights,
                                                    padding_idx=5, table=table, n_threads=n_threads)
            assert np.allclose(grad.to_dense(300), expected_grad)
    hyper = {"SGD": dict(lr=0.1, momentum=0.9), "Adagrad": dict(lr=0.1), "RowWiseAdagrad": dict(lr=0.1),
             "SparseAdam": dict(lr=0.01)}
    for name, kwargs in hyper.items():
        for n_threads in (1, 2):
            fused, split = (fastembed.EmbeddingBag(300, 7, mode="mean", dtype="float64", weights=table)
                            for _ in range(2))
            fused_opt, split_opt = (getattr(fastembed.optim, name)(layer, **kwargs) for layer in (fused, split))
            fused_opt.fused_step(ids, grad_out, offsets=offsets, n_threads=n_threads)
            split.backward(ids, offsets, grad_out, n_threads=n_threads)
            split_opt.step(n_threads=n_threads)
            assert np.array_equal(fused.embeddings, split.embeddings)
        lookup = fastembed.Embedding(300, 7, out_of_range="clip", seed=0)
        opt = getattr(fastembed.optim, name)(lookup, **kwargs)
        opt.fused_step(rng.integers(-5, 305, size=(40, 50)), rng.standard_normal((40, 50, 7)), n_threads=2)
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "opt.npz")
            opt.save(path)
            getattr(fastembed.optim, name)(lookup, lr=1.0).load(path)


def check_layer_and_checkpoint(rng):
    layer = fastembed.Embedding(50, 4, dtype="float64", seed=0, out_of_range="zero")
    ids = rng.integers(-2, 52, size=(6, 9))
    for _ in range(3):
        y = layer(ids)
        layer.backward(ids, y)
        layer.step(0.1)
    assert fastembed.gradcheck(layer, ids[:2, :3]).ok
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "layer.npz")
        layer.save(path)
        assert np.array_equal(fastembed.Embedding.load(path).embeddings, layer.embeddings)


if __name__ == "__main__":
    generator = np.random.default_rng(0)
    check_functional_ops(generator)
    check_low_precision_and_options(generator)
    check_bags_and_optimizers(generator)
    check_layer_and_checkpoint(generator)
    print("all kernels ran and matched numpy")
