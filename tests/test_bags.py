"""Pooled bags: every mode and option against the numpy oracle, PyTorch where it is installed, gradcheck,
FBGEMM's corner cases, and the same bits for any thread count."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastembed
from fastembed import _reference as ref
from conftest import FLOAT_DTYPES, INDEX_DTYPES, THREADS

MODES = ["sum", "mean", "sqrtn", "max"]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _batch(rng, n_rows=40, dim=6, n_bags=9, max_len=7, dtype=np.float64, index_dtype=np.int64):
    """A table, flat ids with duplicates, offsets with empty bags, per-sample weights and an output gradient."""
    lengths = rng.integers(0, max_len + 1, size=n_bags)
    lengths[[1, 4]] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(index_dtype)
    ids = rng.integers(0, n_rows // 2, size=int(lengths.sum())).astype(index_dtype)
    table = rng.standard_normal((n_rows, dim)).astype(dtype)
    weights = rng.uniform(0.1, 2.0, size=ids.shape).astype(dtype)
    grad_out = rng.standard_normal((n_bags, dim)).astype(dtype)
    return table, ids, offsets, weights, grad_out


OPTIONS = [dict(), dict(weights=True), dict(padding_idx=3), dict(weights=True, padding_idx=-37),
           dict(include_last_offset=True), dict(two_d=True), dict(two_d=True, padding_idx=5, weights=True)]


def _call_args(table, ids, offsets, weights, mode, option, rng):
    """Turn one OPTIONS entry into (ids, offsets, kwargs) for embedding_bag and the oracle."""
    kwargs = {}
    if option.get("two_d"):
        ids = rng.integers(0, table.shape[0] // 2, size=(5, 4))
        weights = rng.uniform(0.1, 2.0, size=ids.shape)
        offsets = None
    elif option.get("include_last_offset"):
        offsets = np.append(offsets, ids.shape[0])
        kwargs["include_last_offset"] = True
    if option.get("weights") and mode != "max":
        kwargs["per_sample_weights"] = weights.astype(table.dtype)
    if "padding_idx" in option:
        kwargs["padding_idx"] = option["padding_idx"]
    return ids, offsets, kwargs


def _oracle_kwargs(kwargs, n_rows):
    out = dict(kwargs)
    if out.get("padding_idx") is not None and out["padding_idx"] < 0:
        out["padding_idx"] += n_rows
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_forward_and_backward_match_the_oracle(rng, mode, dtype, index_dtype):
    table, ids, offsets, weights, _ = _batch(rng, dtype=dtype, index_dtype=index_dtype)
    for option in OPTIONS:
        call_ids, call_offsets, kwargs = _call_args(table, ids, offsets, weights, mode, option, rng)
        expected = ref.embedding_bag(table, call_ids, call_offsets, mode, **_oracle_kwargs(kwargs, 40))
        for n_threads in THREADS:
            out = fastembed.embedding_bag(table, call_ids, call_offsets, mode=mode, n_threads=n_threads, **kwargs)
            assert out.dtype == dtype and out.shape == expected.shape
            np.testing.assert_allclose(out, expected, **TOL[dtype], err_msg=str(option))
        grad_out = rng.standard_normal(expected.shape).astype(dtype)
        for by_freq in (False, True):
            grad = fastembed.embedding_bag_backward(call_ids, grad_out, call_offsets, mode=mode, table=table,
                                                    scale_grad_by_freq=by_freq, n_threads=2, **kwargs)
            dense = ref.embedding_bag_grad(table, call_ids, grad_out, call_offsets, mode,
                                           scale_grad_by_freq=by_freq, **_oracle_kwargs(kwargs, 40))
            np.testing.assert_allclose(grad.to_dense(), dense, **TOL[dtype], err_msg=str(option))
            padding = _oracle_kwargs(kwargs, 40).get("padding_idx")
            expected_rows = np.setdiff1d(np.unique(call_ids), [] if padding is None else [padding])
            np.testing.assert_array_equal(grad.rows, expected_rows)
            assert grad.values.dtype == dtype and grad.num_rows == 40


def test_max_ties_go_to_the_first_position():
    table = np.array([[1.0, 5.0], [1.0, 2.0], [3.0, 5.0]])
    ids, offsets = np.array([0, 1, 2, 1, 0]), np.array([0, 2])
    out = fastembed.embedding_bag(table, ids, offsets, mode="max")
    np.testing.assert_array_equal(out, [[1.0, 5.0], [3.0, 5.0]])
    grad = fastembed.embedding_bag_backward(ids, np.array([[10.0, 20.0], [30.0, 40.0]]), offsets, mode="max",
                                            table=table)
    # Bag 0: column 0 ties between rows 0 and 1 (row 0 first), column 1 is row 0's. Bag 1: column 0 is row 2's,
    # column 1 ties between rows 2 and 0 (row 2 comes first in the bag).
    np.testing.assert_array_equal(grad.to_dense(3), [[10.0, 20.0], [0.0, 0.0], [30.0, 40.0]])
    np.testing.assert_array_equal(grad.rows, [0, 1, 2])


def test_mean_and_sqrtn_with_weights_follow_tensorflow_combiners():
    table = np.array([[1.0, 0.0], [0.0, 2.0]])
    ids, offsets, w = np.array([0, 1, 1]), np.array([0]), np.array([1.0, 2.0, 1.0])
    np.testing.assert_allclose(fastembed.embedding_bag(table, ids, offsets, "mean", per_sample_weights=w),
                               [[1.0 / 4, 6.0 / 4]])
    np.testing.assert_allclose(fastembed.embedding_bag(table, ids, offsets, "sqrtn", per_sample_weights=w),
                               [[1.0 / np.sqrt(6), 6.0 / np.sqrt(6)]])
    # Weights summing to zero: the bag is defined as zeros (no division by zero), and so is its gradient.
    zero = fastembed.embedding_bag(table, ids, offsets, "mean", per_sample_weights=np.array([1.0, 1.0, -2.0]))
    np.testing.assert_array_equal(zero, [[0.0, 0.0]])


def test_scale_grad_by_freq_counts_each_id_over_the_whole_batch():
    ids, offsets = np.array([1, 1, 2, 3, 1, 2, 4]), np.array([0, 3, 5])
    grad = fastembed.embedding_bag_backward(ids, np.ones((3, 2)), offsets, scale_grad_by_freq=True, num_rows=6)
    # Every id's terms sum to one: id 1 appears three times (each 1/3), id 2 twice, ids 3 and 4 once.
    np.testing.assert_allclose(grad.to_dense(), [[0, 0], [1, 1], [1, 1], [1, 1], [1, 1], [0, 0]])


# --- PyTorch ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("option", ["plain", "weights", "padding", "last_offset", "two_d"])
@pytest.mark.parametrize("sparse", [False, True])
def test_agrees_with_torch_embedding_bag(rng, mode, option, sparse):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    if option == "weights" and mode != "sum":
        pytest.skip("PyTorch takes per_sample_weights with mode='sum' only")
    if sparse and mode == "max":
        pytest.skip("PyTorch has no sparse gradient for mode='max'")
    table, ids, offsets, weights, _ = _batch(rng)
    kwargs, torch_kwargs = {}, {}
    if option == "two_d":
        ids, offsets = rng.integers(0, 20, size=(6, 5)), None
    if option == "weights":
        kwargs["per_sample_weights"] = weights
        torch_kwargs["per_sample_weights"] = torch.tensor(weights)
    if option == "padding":
        kwargs["padding_idx"] = torch_kwargs["padding_idx"] = int(ids[2])
    if option == "last_offset":
        offsets = np.append(offsets, ids.shape[0])
        kwargs["include_last_offset"] = torch_kwargs["include_last_offset"] = True
    weight = torch.tensor(table, requires_grad=True)
    expected = F.embedding_bag(torch.tensor(ids), weight, None if offsets is None else torch.tensor(offsets),
                               mode=mode, sparse=sparse, **torch_kwargs)
    grad_out = rng.standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_out))
    out = fastembed.embedding_bag(table, ids, offsets, mode=mode, **kwargs)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-13, atol=1e-14)
    grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode=mode, table=table, **kwargs)
    torch_grad = weight.grad.to_dense().numpy() if sparse else weight.grad.numpy()
    np.testing.assert_allclose(grad.to_dense(), torch_grad, rtol=1e-13, atol=1e-14)


def test_scale_grad_by_freq_agrees_with_torch_embedding_then_pooling(rng):
    """PyTorch's ``embedding_bag`` miscounts ids under scale_grad_by_freq; ``F.embedding`` counts them right,
    so the reference is a per-id lookup followed by a sum per bag."""
    torch = pytest.importorskip("torch")
    table, ids, offsets, _, grad_out = _batch(rng)
    weight = torch.tensor(table, requires_grad=True)
    looked_up = torch.nn.functional.embedding(torch.tensor(ids), weight, scale_grad_by_freq=True)
    bag_of = np.repeat(np.arange(offsets.shape[0]), np.diff(np.append(offsets, ids.shape[0])))
    pooled = torch.zeros(offsets.shape[0], table.shape[1], dtype=torch.float64)
    pooled = pooled.index_add(0, torch.tensor(bag_of), looked_up)
    pooled.backward(torch.tensor(grad_out))
    grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, scale_grad_by_freq=True, num_rows=40)
    np.testing.assert_allclose(grad.to_dense(), weight.grad.numpy(), rtol=1e-13, atol=1e-14)


# --- gradcheck ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["offsets", "fixed"])
def test_gradcheck_every_mode(rng, mode, layout):
    layer = fastembed.EmbeddingBag(12, 3, mode=mode, padding_idx=0, embeddings_initializer="normal", seed=1)
    layer.embeddings[0] = rng.standard_normal(3)     # padding must get no gradient even when its row is not 0
    if layout == "offsets":
        ids, kwargs = np.array([0, 2, 5, 5, 7, 1, 0, 2, 9, 3, 3]), {"offsets": np.array([0, 4, 4, 7])}
    else:
        ids, kwargs = np.array([[0, 2, 5, 5], [7, 1, 0, 2], [9, 3, 3, 0]]), {"offsets": None}
    if mode != "max":
        kwargs["per_sample_weights"] = rng.uniform(0.5, 1.5, size=ids.shape)
    report = fastembed.gradcheck(layer, ids, call_kwargs=kwargs)
    assert report.ok, report
    assert layer.grad is None
    # scale_grad_by_freq departs from the true gradient by exactly each id's count, which gradcheck expects.
    layer.scale_grad_by_freq = True
    assert fastembed.gradcheck(layer, ids, call_kwargs=kwargs).ok
    layer.scale_grad_by_freq = False
    report = fastembed.gradcheck(layer, ids, call_kwargs=kwargs)
    layer.backward = lambda ids, offsets, grad_out, **kw: fastembed.embedding_bag_backward(
        ids, grad_out, offsets, mode=mode, padding_idx=0, scale_grad_by_freq=True, table=layer.embeddings, **kw)
    assert report.ok and not fastembed.gradcheck(layer, ids, call_kwargs=kwargs).ok    # id 5 twice: caught


# --- the layer ----------------------------------------------------------------------------------------------
def test_layer_mirrors_embedding(rng):
    layer = fastembed.EmbeddingBag(50, 4, padding_idx=7, seed=3)
    assert layer.mode == "mean" and layer.num_embeddings == 50 and layer.embedding_dim == 4
    assert not layer.embeddings[7].any() and layer.embeddings[8].any()
    assert layer.count_params() == 200
    np.testing.assert_array_equal(layer.embeddings, fastembed.EmbeddingBag(50, 4, padding_idx=7, seed=3).embeddings)
    assert repr(layer) == ("EmbeddingBag(name='embedding_bag', num_embeddings=50, embedding_dim=4, dtype=float32, "
                           "mode='mean', padding_idx=7, params=200)")
    ids, offsets = rng.integers(0, 50, size=30), np.array([0, 10, 12])
    np.testing.assert_array_equal(layer(ids, offsets), fastembed.embedding_bag(layer.embeddings, ids, offsets,
                                                                               mode="mean", padding_idx=7))
    first = layer.backward(ids, offsets, np.ones((3, 4)))
    layer.backward(ids[:10], [0], np.ones((1, 4)))
    assert 7 not in layer.grad.rows
    np.testing.assert_allclose(layer.grad.to_dense(), first.to_dense() + ref.embedding_bag_grad(
        layer.embeddings, ids[:10], np.ones((1, 4)), [0], "mean", padding_idx=7), rtol=1e-6)
    before = layer.embeddings.copy()
    grad = layer.grad
    layer.step(0.5)
    np.testing.assert_allclose(layer.embeddings[grad.rows], before[grad.rows] - 0.5 * grad.values, rtol=1e-6)
    assert layer.grad is None

    frozen = fastembed.EmbeddingBag.from_pretrained(before, mode="sum")
    assert frozen.embeddings.dtype == np.float32 and not frozen.trainable
    frozen.backward(ids, offsets, np.ones((3, 4)))
    assert frozen.grad is None and "trainable=False" in repr(frozen)
    frozen.set_weights([np.zeros((50, 4))])
    assert not frozen.get_weights()[0].any()
    kept = fastembed.EmbeddingBag(5, 2, padding_idx=1, weights=np.ones((5, 2)))
    assert kept.embeddings[1].tolist() == [1.0, 1.0]    # given weights are kept as they are


# --- corner cases -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_empty_ids_and_empty_bags_give_zeros(mode):
    table = np.arange(12.0).reshape(6, 2)
    assert fastembed.embedding_bag(table, [], [0, 0, 0], mode=mode).tolist() == [[0, 0]] * 3
    assert fastembed.embedding_bag(table, [], [], mode=mode).shape == (0, 2)
    assert fastembed.embedding_bag(table, [], [0], mode=mode, include_last_offset=True).shape == (0, 2)
    assert fastembed.embedding_bag(table, np.zeros((3, 0), np.int64), mode=mode).tolist() == [[0, 0]] * 3
    out = fastembed.embedding_bag(table, [1, 1, 2, 5], [0, 0, 2, 2, 3], mode=mode, padding_idx=5)
    assert out[[0, 2, 4]].tolist() == [[0, 0]] * 3        # empty, empty, and only padding
    grad = fastembed.embedding_bag_backward([], np.ones((2, 2)), [0, 0], mode=mode, table=table)
    assert grad.rows.shape == (0,) and grad.values.shape == (0, 2)


def test_empty_raise_names_the_first_empty_bag():
    table = np.ones((6, 2))
    with pytest.raises(ValueError, match=r"bag 2 \(ids\[2:2\]\) has no id to pool.*2 empty bags in all"):
        fastembed.embedding_bag(table, [1, 2, 5], [0, 1, 2, 2], empty="raise", padding_idx=5)
    layer = fastembed.EmbeddingBag(6, 2, empty="raise")
    with pytest.raises(ValueError, match=r"bag 1 \(ids\[2:2\]\)"):
        layer([1, 2], [0, 2])
    assert fastembed.embedding_bag(table, [1, 2], [0, 1], empty="raise").shape == (2, 2)


@pytest.mark.parametrize("bad_value", [-1, 10, np.iinfo(np.int64).max])
def test_out_of_range_ids_name_position_and_value(bad_value):
    table = np.ones((10, 3), np.float32)
    with pytest.raises(IndexError, match=rf"ids\[4\] = {bad_value} is out of range \[0, 10\)"):
        fastembed.embedding_bag(table, [1, 2, 3, 4, bad_value], [0, 2])
    with pytest.raises(IndexError, match=rf"ids\[1, 0\] = {bad_value}"):
        fastembed.embedding_bag(table, [[1, 2], [bad_value, 3]])
    layer = fastembed.EmbeddingBag(10, 3)
    with pytest.raises(IndexError, match=r"ids\[2\]"):
        layer.backward([1, 2, bad_value], [0], np.ones((1, 3)))
    assert layer.grad is None


@pytest.mark.parametrize("offsets, include_last, message", [
    ([1, 2], False, r"offsets\[0\] = 1: the first bag must start at 0"),
    ([0, 3, 2], False, r"offsets\[2\] = 2 is less than offsets\[1\] = 3: offsets must be non-decreasing"),
    ([0, 6], False, r"offsets\[1\] = 6 is beyond the number of ids \(5\)"),
    ([0, 2, 4], True, r"offsets\[2\] = 4 must equal the number of ids \(5\) with include_last_offset=True"),
    ([0, 2, 6], True, r"offsets\[2\] = 6 must equal the number of ids \(5\)"),
    ([], True, "n_bags \\+ 1 entries"),
    ([], False, "offsets is empty but there are 5 ids"),
    ([[0, 2]], False, r"offsets must be 1-D, got shape \(1, 2\)"),
])
def test_offsets_that_do_not_add_up(offsets, include_last, message):
    ids = [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=message):
        fastembed.embedding_bag(np.ones((10, 2)), ids, offsets, include_last_offset=include_last)
    with pytest.raises(ValueError, match=message):
        fastembed.embedding_bag_backward(ids, np.ones((2, 2)), offsets, include_last_offset=include_last)


def test_bad_arguments_raise_precise_errors():
    table, ids, offsets = np.ones((10, 2)), np.array([1, 2, 3]), np.array([0, 1])
    with pytest.raises(TypeError, match="offsets must be an integer array, got dtype float64"):
        fastembed.embedding_bag(table, ids, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="offsets is required when ids is 1-D"):
        fastembed.embedding_bag(table, ids)
    with pytest.raises(ValueError, match="offsets must be None when ids is 2-D"):
        fastembed.embedding_bag(table, ids.reshape(1, 3), offsets)
    with pytest.raises(ValueError, match="ids must be 1-D .* or 2-D"):
        fastembed.embedding_bag(table, np.zeros((1, 1, 1), np.int64))
    with pytest.raises(ValueError, match="mode must be one of 'sum', 'mean', 'max', 'sqrtn'; got 'avg'"):
        fastembed.embedding_bag(table, ids, offsets, mode="avg")
    with pytest.raises(ValueError, match="empty must be one of 'zeros', 'raise'"):
        fastembed.embedding_bag(table, ids, offsets, empty="nan")
    with pytest.raises(ValueError, match="per_sample_weights are not supported with mode='max'"):
        fastembed.embedding_bag(table, ids, offsets, mode="max", per_sample_weights=np.ones(3))
    with pytest.raises(ValueError, match=r"per_sample_weights must have the ids' shape \(3,\), got \(2,\)"):
        fastembed.embedding_bag(table, ids, offsets, per_sample_weights=np.ones(2))
    with pytest.raises(ValueError, match=r"padding_idx must be in \[-10, 10\) for a table of 10 rows, got 10"):
        fastembed.embedding_bag(table, ids, offsets, padding_idx=10)
    with pytest.raises(TypeError, match="padding_idx must be an int"):
        fastembed.EmbeddingBag(10, 2, padding_idx=1.5)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(number of bags, D\) = \(2, D\)"):
        fastembed.embedding_bag_backward(ids, np.ones((3, 2)), offsets)
    with pytest.raises(ValueError, match="mode='max' needs the table"):
        fastembed.embedding_bag_backward(ids, np.ones((2, 2)), offsets, mode="max")
    with pytest.raises(ValueError, match="grad_out has width 3 but the table has width 2"):
        fastembed.embedding_bag_backward(ids, np.ones((2, 3)), offsets, mode="max", table=table)


# --- threads ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_same_bits_for_any_thread_count(mode):
    rng = np.random.default_rng(5)
    table = rng.standard_normal((3000, 8)).astype(np.float32)
    lengths = rng.integers(0, 40, size=2000)
    ids = rng.integers(0, 3000, size=int(lengths.sum()))       # ~39,000 ids: the parallel paths run
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    weights = None if mode == "max" else rng.uniform(size=ids.shape).astype(np.float32)
    grad_out = rng.standard_normal((2000, 8)).astype(np.float32)
    outs, grads = set(), set()
    for n_threads in (1, 2, 3, 8):
        outs.add(fastembed.embedding_bag(table, ids, offsets, mode, weights, padding_idx=4,
                                         n_threads=n_threads).tobytes())
        grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode, weights, padding_idx=4, table=table,
                                                scale_grad_by_freq=True, n_threads=n_threads)
        grads.add(grad.rows.tobytes() + grad.values.tobytes())
    assert len(outs) == 1 and len(grads) == 1


# --- properties ---------------------------------------------------------------------------------------------
@st.composite
def bag_batches(draw):
    n_rows = draw(st.integers(1, 12))
    dim = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, 6), min_size=0, max_size=8))
    n_ids = sum(lengths)
    ids = np.array(draw(st.lists(st.integers(0, n_rows - 1), min_size=n_ids, max_size=n_ids)), np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0, np.int64)
    mode = draw(st.sampled_from(MODES))
    padding = draw(st.one_of(st.none(), st.integers(0, n_rows - 1)))
    weighted = mode != "max" and draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return n_rows, dim, ids, offsets, mode, padding, weighted, draw(st.booleans()), seed


@settings(max_examples=60, deadline=None)
@given(bag_batches())
def test_property_forward_and_backward_match_the_oracle(batch):
    n_rows, dim, ids, offsets, mode, padding, weighted, by_freq, seed = batch
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n_rows, dim))
    weights = rng.uniform(-1.0, 2.0, size=ids.shape) if weighted else None
    out = fastembed.embedding_bag(table, ids, offsets, mode, weights, padding_idx=padding, n_threads=2)
    np.testing.assert_allclose(out, ref.embedding_bag(table, ids, offsets, mode, weights, padding), rtol=1e-12,
                               atol=1e-12)
    grad_out = rng.standard_normal(out.shape)
    grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode, weights, padding_idx=padding, table=table,
                                            scale_grad_by_freq=by_freq, n_threads=2)
    np.testing.assert_allclose(grad.to_dense(), ref.embedding_bag_grad(table, ids, grad_out, offsets, mode, weights,
                                                                       padding, scale_grad_by_freq=by_freq),
                               rtol=1e-12, atol=1e-12)


def test_bag_layer_checkpoint_round_trip(tmp_path, rng):
    layer = fastembed.EmbeddingBag(30, 4, mode="sqrtn", padding_idx=2, scale_grad_by_freq=True,
                                   include_last_offset=True, seed=1, dtype="float64", name="bags")
    path = tmp_path / "bags.npz"
    layer.save(path)
    loaded = fastembed.EmbeddingBag.load(path)
    assert loaded.embeddings.tobytes() == layer.embeddings.tobytes()
    assert loaded.get_config() == layer.get_config()
    ids, offsets = rng.integers(0, 30, size=12), np.array([0, 5, 12])
    np.testing.assert_array_equal(loaded(ids, offsets), layer(ids, offsets))
    with pytest.raises(fastembed.checkpoint.CheckpointError, match="not an Embedding"):
        fastembed.Embedding.load(path)
