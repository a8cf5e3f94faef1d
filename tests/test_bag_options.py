"""Bag options beyond pooling: max_norm in both modes, low-precision tables, and the gradient of
per_sample_weights; against PyTorch where it has them and numpy oracles everywhere."""
import numpy as np
import pytest

import fastembed
from fastembed import _reference as ref
from fastembed import lowp
from conftest import FLOAT_DTYPES, THREADS

MODES = ["sum", "mean", "sqrtn", "max"]


def _batch(rng, n_rows=30, dim=5, dtype=np.float64):
    """Rows of every size around max_norm = 1, ids with duplicates, an empty bag, weights."""
    table = (rng.standard_normal((n_rows, dim)) * rng.uniform(0.1, 0.8, size=(n_rows, 1))).astype(dtype)
    ids = rng.integers(0, n_rows // 2, size=25)
    offsets = np.array([0, 3, 3, 10, 18])
    weights = rng.uniform(0.5, 1.5, size=ids.shape).astype(dtype)
    return table, ids, offsets, weights


def _clipped(rows, max_norm, norm_type):
    norms = np.linalg.norm(rows, ord=norm_type, axis=1, keepdims=True)
    return np.where(norms > max_norm, rows * (max_norm / (norms + 1e-7)), rows)


# --- max_norm -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, np.inf])
def test_inplace_max_norm_matches_torch_embedding_bag(rng, mode, norm_type):
    torch = pytest.importorskip("torch")
    table, ids, offsets, _ = _batch(rng)
    weight = torch.tensor(table, requires_grad=True)
    expected = torch.nn.functional.embedding_bag(torch.tensor(ids), weight, torch.tensor(offsets), mode=mode,
                                                 max_norm=1.0, norm_type=norm_type, padding_idx=4)
    grad_out = rng.standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_out))
    mine = table.copy()
    out = fastembed.embedding_bag(mine, ids, offsets, mode=mode, padding_idx=4, max_norm=1.0, norm_type=norm_type,
                                  max_norm_mode="inplace")
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mine, weight.detach().numpy(), rtol=1e-12, atol=1e-14)  # the same rows rescaled
    assert not np.array_equal(mine, table)
    # In place, the forward pass read the rescaled table: its gradient is the plain one.
    grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode=mode, padding_idx=4, table=mine)
    np.testing.assert_allclose(grad.to_dense(), weight.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_inplace_max_norm_layer_matches_torch_module(rng):
    torch = pytest.importorskip("torch")
    table, ids, offsets, _ = _batch(rng)
    module = torch.nn.EmbeddingBag.from_pretrained(torch.tensor(table), freeze=False, mode="mean", max_norm=0.9)
    layer = fastembed.EmbeddingBag.from_pretrained(table, trainable=True, max_norm=0.9)
    for _ in range(2):      # the second call reads rows the first one already rescaled
        np.testing.assert_allclose(layer(ids, offsets), module(torch.tensor(ids), torch.tensor(offsets))
                                   .detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.embeddings, module.weight.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_output_max_norm_pools_clipped_rows_and_leaves_the_table(rng, mode, dtype):
    table, ids, offsets, weights = _batch(rng, dtype=dtype)
    kwargs = {} if mode == "max" else {"per_sample_weights": weights}
    before = table.copy()
    for norm_type in (1.0, 2.0, np.inf):
        expected = ref.embedding_bag(_clipped(table.astype(np.float64), 1.0, norm_type), ids, offsets, mode,
                                     padding_idx=4, **kwargs)
        for n_threads in THREADS:
            out = fastembed.embedding_bag(table, ids, offsets, mode=mode, padding_idx=4, max_norm=1.0,
                                          norm_type=norm_type, n_threads=n_threads, **kwargs)
            assert out.dtype == dtype
            np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_array_equal(table, before)


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_output_max_norm_gradient_matches_torch_autograd_of_the_clip(rng, mode):
    """The reference: the clip and the pooling written out in torch, differentiated by autograd."""
    torch = pytest.importorskip("torch")
    table, ids, offsets, weights = _batch(rng)
    weight = torch.tensor(table, requires_grad=True)
    rows = weight[torch.tensor(ids)]
    norms = rows.norm(dim=1, keepdim=True)
    rows = torch.where(norms > 1.0, rows * (1.0 / (norms + 1e-7)), rows)
    w = torch.tensor(weights) * torch.tensor(ids != 4)
    bag_of = torch.tensor(np.repeat(np.arange(5), np.diff(np.append(offsets, ids.shape[0]))))
    sums = torch.zeros(5, table.shape[1], dtype=torch.float64).index_add(0, bag_of, rows * w[:, None])
    denom = torch.zeros(5, dtype=torch.float64).index_add(0, bag_of, w if mode != "sqrtn" else w * w)
    denom = {"sum": torch.ones(5, dtype=torch.float64), "mean": denom, "sqrtn": denom.sqrt()}[mode]
    pooled = sums / torch.where(denom == 0, torch.ones_like(denom), denom)[:, None]
    grad_out = rng.standard_normal(tuple(pooled.shape))
    pooled.backward(torch.tensor(grad_out))
    kwargs = dict(mode=mode, per_sample_weights=weights, padding_idx=4)
    np.testing.assert_allclose(fastembed.embedding_bag(table, ids, offsets, max_norm=1.0, **kwargs),
                               pooled.detach().numpy(), rtol=1e-12, atol=1e-14)
    grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, max_norm=1.0, table=table, **kwargs)
    np.testing.assert_allclose(grad.to_dense(), weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert 4 not in grad.rows


@pytest.mark.parametrize("mode", MODES)
def test_output_max_norm_layer_passes_gradcheck_and_fuses(rng, mode):
    layer = fastembed.EmbeddingBag(12, 3, mode=mode, padding_idx=0, embeddings_initializer="normal", seed=1,
                                   max_norm=1.1, max_norm_mode="output")
    ids, offsets = np.array([0, 2, 5, 5, 7, 1, 0, 2, 9, 3, 3]), np.array([0, 4, 4, 7])
    kwargs = {"offsets": offsets}
    if mode != "max":
        kwargs["per_sample_weights"] = rng.uniform(0.5, 1.5, size=ids.shape)
    before = layer.embeddings.copy()
    assert fastembed.gradcheck(layer, ids, call_kwargs=kwargs).ok
    np.testing.assert_array_equal(layer.embeddings, before)
    grad_out = rng.standard_normal((4, 3))
    expected = before.copy()
    grad = layer.backward(ids, offsets, grad_out, kwargs.get("per_sample_weights"))
    expected[grad.rows] -= 0.1 * grad.values
    fastembed.optim.SGD(layer, 0.1).fused_step(ids, grad_out, **kwargs)
    np.testing.assert_allclose(layer.embeddings, expected, rtol=1e-12, atol=1e-14)


def test_max_norm_arguments_are_checked(rng):
    table, ids, offsets, _ = _batch(rng)
    with pytest.raises(ValueError, match="max_norm_mode"):
        fastembed.embedding_bag(table, ids, offsets, max_norm=1.0, max_norm_mode="table")
    with pytest.raises(ValueError, match="max_norm must be a positive"):
        fastembed.embedding_bag(table, ids, offsets, max_norm=0.0)
    with pytest.raises(ValueError, match="norm_type"):
        fastembed.embedding_bag(table, ids, offsets, max_norm=1.0, norm_type=-1)
    with pytest.raises(ValueError, match="pass table="):
        fastembed.embedding_bag_backward(ids, np.ones((5, 5)), offsets, max_norm=1.0)
    with pytest.raises(ValueError, match="inplace"):
        fastembed.embedding_bag(lowp.encode(table, "float16"), ids, offsets, max_norm=1.0, max_norm_mode="inplace")


# --- low-precision tables -----------------------------------------------------------------------------------
STORAGES = ["float16", "bfloat16", "int8"]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_bags_match_the_oracle_on_decoded_rows(rng, storage, mode):
    table, ids, offsets, weights = _batch(rng, n_rows=40, dim=70, dtype=np.float32)   # 70: a block and a tail
    encoded = lowp.encode(table, storage)
    decoded = lowp.decode(encoded)
    kwargs = {} if mode == "max" else {"per_sample_weights": weights}
    expected = ref.embedding_bag(decoded, ids, offsets, mode, padding_idx=4, **kwargs)
    outs = [fastembed.embedding_bag(encoded, ids, offsets, mode=mode, padding_idx=4, n_threads=n, **kwargs)
            for n in THREADS]
    assert outs[0].dtype == np.float32
    np.testing.assert_allclose(outs[0], expected, rtol=2e-6, atol=2e-6)     # float32 accumulation
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    layer = fastembed.EmbeddingBag.from_pretrained(table, mode=mode, padding_idx=4, storage=storage)
    np.testing.assert_array_equal(layer(ids, offsets, **kwargs), outs[0])
    clipped = ref.embedding_bag(_clipped(decoded.astype(np.float64), 1.0, 2.0), ids, offsets, mode,
                                padding_idx=4, **kwargs)
    np.testing.assert_allclose(fastembed.embedding_bag(encoded, ids, offsets, mode=mode, padding_idx=4,
                                                       max_norm=1.0, **kwargs), clipped, rtol=2e-6, atol=2e-6)


def test_int8_bags_match_torch_quantized_embedding_bag(rng):
    """PyTorch's 8-bit row-wise bags read FBGEMM's fused rows (codes, then float32 scale and bias)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("fbgemm_gpu")
    table, ids, offsets, weights = _batch(rng, n_rows=40, dim=16, dtype=np.float32)
    fused = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(torch.tensor(table))
    codes = fused.numpy()[:, :16]
    scale_bias = fused.numpy()[:, 16:].copy().view(np.float32)
    quantized = lowp.QuantizedTable(codes, scale_bias[:, 0], scale_bias[:, 1])
    # Sum pooling (the operator pools by sum whatever its mode argument), with and without weights.
    for w in (None, weights):
        expected = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            fused, torch.tensor(ids), torch.tensor(np.append(offsets, ids.shape[0])), False, 0, False,
            None if w is None else torch.tensor(w), None, True)
        np.testing.assert_allclose(fastembed.embedding_bag(quantized, ids, offsets, per_sample_weights=w),
                                   expected.numpy(), rtol=1e-5, atol=1e-6)


def test_low_precision_bag_layer_is_for_inference(rng, tmp_path):
    table, ids, offsets, _ = _batch(rng, dtype=np.float32)
    with pytest.raises(ValueError, match="trainable=False"):
        fastembed.EmbeddingBag(30, 5, storage="int8")
    layer = fastembed.EmbeddingBag.from_pretrained(table, storage="int8", mode="sum")
    assert "storage='int8'" in repr(layer)
    with pytest.raises(ValueError, match="for inference"):
        layer.backward(ids, offsets, np.ones((5, 5)))
    path = tmp_path / "bag.npz"
    layer.save(path)
    loaded = fastembed.EmbeddingBag.load(path)
    assert loaded.storage == "int8" and loaded.mode == "sum"
    np.testing.assert_array_equal(loaded(ids, offsets), layer(ids, offsets))


# --- the gradient of per_sample_weights ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["offsets", "last_offset", "two_d"])
def test_per_sample_weights_grad_matches_torch_in_sum_mode(rng, layout):
    torch = pytest.importorskip("torch")
    table, ids, offsets, weights = _batch(rng)
    kwargs, torch_kwargs = {}, {}
    if layout == "two_d":
        ids, offsets = rng.integers(0, 15, size=(6, 4)), None
        weights = rng.uniform(0.5, 1.5, size=ids.shape)
    elif layout == "last_offset":
        offsets = np.append(offsets, ids.shape[0])
        kwargs["include_last_offset"] = torch_kwargs["include_last_offset"] = True
    w = torch.tensor(weights, requires_grad=True)
    out = torch.nn.functional.embedding_bag(torch.tensor(ids), torch.tensor(table),
                                            None if offsets is None else torch.tensor(offsets), mode="sum",
                                            per_sample_weights=w, padding_idx=4, **torch_kwargs)
    grad_out = rng.standard_normal(tuple(out.shape))
    out.backward(torch.tensor(grad_out))
    for n_threads in THREADS:
        got = fastembed.per_sample_weights_grad(table, ids, grad_out, offsets, per_sample_weights=weights,
                                                padding_idx=4, n_threads=n_threads, **kwargs)
        assert got.shape == ids.shape
        np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-12, atol=1e-14)


def _numeric_weights_grad(table, ids, offsets, mode, weights, grad_out, eps=1e-6, **kwargs):
    """Central differences of ``sum(grad_out * oracle(weights))``, one weight at a time."""
    out = np.zeros(weights.shape)
    for k in range(weights.size):
        plus, minus = weights.copy(), weights.copy()
        plus.flat[k] += eps
        minus.flat[k] -= eps
        up = ref.embedding_bag(table, ids, offsets, mode, per_sample_weights=plus, **kwargs)
        down = ref.embedding_bag(table, ids, offsets, mode, per_sample_weights=minus, **kwargs)
        out.flat[k] = np.sum(grad_out * (up - down)) / (2 * eps)
    return out


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_per_sample_weights_grad_matches_finite_differences(rng, mode):
    table, ids, offsets, weights = _batch(rng)
    grad_out = rng.standard_normal((5, table.shape[1]))
    expected = _numeric_weights_grad(table, ids, offsets, mode, weights, grad_out, padding_idx=4)
    got = fastembed.per_sample_weights_grad(table, ids, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                            padding_idx=4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert np.all(got[ids == 4] == 0)
    # Through rows clipped on the output, and from a low-precision table (its decoded rows, in float32).
    clipped = _clipped(table, 1.0, 2.0)
    expected = _numeric_weights_grad(clipped, ids, offsets, mode, weights, grad_out, padding_idx=4)
    got = fastembed.per_sample_weights_grad(table, ids, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                            padding_idx=4, max_norm=1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    encoded = lowp.encode(table, "bfloat16")
    expected = _numeric_weights_grad(lowp.decode(encoded).astype(np.float64), ids, offsets, mode, weights,
                                     grad_out, padding_idx=4)
    got = fastembed.per_sample_weights_grad(encoded, ids, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                            padding_idx=4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_per_sample_weights_grad_follows_out_of_range(rng, mode):
    table, ids, offsets, weights = _batch(rng)
    strays = ids.copy()
    strays[[1, 11, 20]] = [-1, table.shape[0], 10**6]
    grad_out = rng.standard_normal((5, table.shape[1]))
    # "zero" drops the stray positions from their bags: the gradient of the batch without them, 0 where they were.
    kept = np.ones(ids.shape[0], bool)
    kept[[1, 11, 20]] = False
    kept_offsets = np.concatenate([[0], np.cumsum(kept)])[offsets]
    expected = np.zeros(ids.shape[0])
    expected[kept] = _numeric_weights_grad(table, ids[kept], kept_offsets, mode, weights[kept], grad_out)
    got = fastembed.per_sample_weights_grad(table, strays, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                            out_of_range="zero")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    clipped_ids = np.clip(strays, 0, table.shape[0] - 1)
    got = fastembed.per_sample_weights_grad(table, strays, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                            out_of_range="clip")
    np.testing.assert_allclose(got, _numeric_weights_grad(table, clipped_ids, offsets, mode, weights, grad_out),
                               rtol=1e-6, atol=1e-8)
    layer = fastembed.EmbeddingBag.from_pretrained(table, trainable=True, mode=mode, out_of_range="zero")
    layer.backward(strays, offsets, grad_out, per_sample_weights=weights)
    np.testing.assert_allclose(layer.per_sample_weights_grad, expected, rtol=1e-6, atol=1e-8)


def test_layer_backward_keeps_the_weights_gradient(rng):
    table, ids, offsets, weights = _batch(rng)
    layer = fastembed.EmbeddingBag.from_pretrained(table, trainable=True, mode="mean", padding_idx=4)
    grad_out = rng.standard_normal((5, table.shape[1]))
    layer.backward(ids, offsets, grad_out, per_sample_weights=weights)
    np.testing.assert_allclose(layer.per_sample_weights_grad,
                               _numeric_weights_grad(table, ids, offsets, "mean", weights, grad_out, padding_idx=4),
                               rtol=1e-6, atol=1e-8)
    layer.backward(ids, offsets, grad_out)
    assert layer.per_sample_weights_grad is None


def test_per_sample_weights_grad_arguments_are_checked(rng):
    table, ids, offsets, weights = _batch(rng)
    with pytest.raises(ValueError, match="mode='max'"):
        fastembed.per_sample_weights_grad(table, ids, np.ones((5, 5)), offsets, mode="max")
    with pytest.raises(ValueError, match="pass per_sample_weights"):
        fastembed.per_sample_weights_grad(table, ids, np.ones((5, 5)), offsets, mode="mean")
    with pytest.raises(ValueError, match="grad_out must have shape"):
        fastembed.per_sample_weights_grad(table, ids, np.ones((4, 5)), offsets, per_sample_weights=weights)
    with pytest.raises(IndexError):
        fastembed.per_sample_weights_grad(table, np.append(ids[:-1], 99), np.ones((5, 5)), offsets)


def test_batches_without_ids_give_zeros_and_empty_gradients(rng):
    table, _, _, _ = _batch(rng, dtype=np.float32)
    ids, offsets = np.array([], np.int64), np.array([0, 0])
    zeros = np.zeros((2, table.shape[1]), np.float32)
    np.testing.assert_array_equal(fastembed.embedding_bag(table, ids, offsets, max_norm=1.0), zeros)
    np.testing.assert_array_equal(fastembed.embedding_bag(lowp.encode(table, "int8"), ids, offsets), zeros)
    grad = fastembed.embedding_bag_backward(ids, np.ones((2, 5)), offsets, max_norm=1.0, table=table)
    assert grad.rows.size == 0 and grad.num_rows == table.shape[0]
    assert fastembed.per_sample_weights_grad(table, ids, np.ones((2, 5)), offsets).shape == (0,)


def test_inplace_max_norm_needs_a_writeable_array(rng):
    table, ids, offsets, _ = _batch(rng)
    with pytest.raises(TypeError, match="written in place"):
        fastembed.embedding_bag(table.tolist(), ids, offsets, max_norm=1.0, max_norm_mode="inplace")
    table.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastembed.embedding_bag(table, ids, offsets, max_norm=1.0, max_norm_mode="inplace")
    np.testing.assert_array_equal(fastembed.embedding_bag(table.tolist(), ids, offsets),
                                  fastembed.embedding_bag(table, ids, offsets))
