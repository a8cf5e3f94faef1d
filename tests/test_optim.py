"""Fused sparse optimizers against numpy oracles, torch.optim and FBGEMM over several steps with duplicate ids;
fused steps against backward + step, bit for bit; state saving; frozen layers; thread counts."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastembed
from fastembed import _reference as ref
from fastembed import optim

V, D = 30, 4

OPTIMIZERS = {
    "SGD": dict(lr=0.1),
    "SGD-momentum-decay": dict(lr=0.1, momentum=0.9, weight_decay=0.01),
    "Adagrad": dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1, weight_decay=0.02),
    "RowWiseAdagrad": dict(lr=0.1, eps=1e-6, weight_decay=0.02),
    "SparseAdam": dict(lr=0.01, betas=(0.8, 0.95), eps=1e-7),
}


def _make(key, layer):
    return getattr(optim, key.split("-")[0])(layer, **OPTIMIZERS[key])


def _oracle_state(key, shape):
    hyper = OPTIMIZERS[key]
    if key.startswith("SGD"):
        return {"momentum_buffer": np.zeros(shape)} if hyper.get("momentum") else {}
    if key == "Adagrad":
        return {"sum": np.full(shape, hyper["initial_accumulator_value"])}
    if key == "RowWiseAdagrad":
        return {"sum": np.zeros(shape[0])}
    return {"exp_avg": np.zeros(shape), "exp_avg_sq": np.zeros(shape)}


def _oracle_update(key, table, state, rows, values, step):
    hyper = dict(OPTIMIZERS[key])
    if key.startswith("SGD"):
        ref.sgd_update(table, rows, values, buffer=state.get("momentum_buffer"), **hyper)
    elif key == "Adagrad":
        hyper.pop("initial_accumulator_value")
        ref.adagrad_update(table, rows, values, state["sum"], **hyper)
    elif key == "RowWiseAdagrad":
        ref.rowwise_adagrad_update(table, rows, values, state["sum"], **hyper)
    else:
        ref.sparse_adam_update(table, rows, values, state["exp_avg"], state["exp_avg_sq"], step, **hyper)


def _dense_rows(dense, touched):
    rows = np.unique(touched)
    return rows, dense[rows]


def _lookup_batches(rng, n_steps=4, n_ids=14, high=12):
    return [(rng.integers(0, high, size=(2, n_ids // 2)), rng.standard_normal((2, n_ids // 2, D)))
            for _ in range(n_steps)]


# --- numpy oracles ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(OPTIMIZERS))
@pytest.mark.parametrize("fused", [False, True])
def test_embedding_matches_the_oracle_and_leaves_other_rows_alone(rng, key, fused):
    w0 = rng.standard_normal((V, D))
    layer = fastembed.Embedding(V, D, weights=w0, dtype="float64")
    opt = _make(key, layer)
    table, state = w0.copy(), _oracle_state(key, (V, D))
    for step, (ids, grad_out) in enumerate(_lookup_batches(rng), start=1):
        if fused:
            opt.fused_step(ids, grad_out, n_threads=2)
        else:
            layer.backward(ids, grad_out)
            opt.step(n_threads=2)
            assert layer.grad is None
        rows, values = ref.sparse_grad(ids, grad_out)
        _oracle_update(key, table, state, rows, values, step)
        np.testing.assert_allclose(layer.embeddings, table, rtol=1e-12, atol=1e-14)
        for name, array in state.items():
            np.testing.assert_allclose(opt.state[name], array, rtol=1e-12, atol=1e-14)
    # Rows 12.. were never in a batch: same bits as at the start (no decay, no momentum, no stray write).
    assert layer.embeddings[12:].tobytes() == w0[12:].tobytes()


@pytest.mark.parametrize("key", list(OPTIMIZERS))
@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn", "max"])
def test_bags_match_the_oracle(rng, key, mode):
    w0 = rng.standard_normal((V, D))
    layer = fastembed.EmbeddingBag(V, D, mode=mode, padding_idx=2, scale_grad_by_freq=(mode == "mean"),
                                   weights=w0, dtype="float64")
    opt = _make(key, layer)
    table, state = w0.copy(), _oracle_state(key, (V, D))
    for step in range(1, 5):
        ids, offsets = rng.integers(0, 12, size=17), np.array([0, 5, 5, 11])
        weights = None if mode == "max" else rng.uniform(0.5, 1.5, size=17)
        grad_out = rng.standard_normal((4, D))
        dense = ref.embedding_bag_grad(table, ids, grad_out, offsets, mode, weights, padding_idx=2,
                                       scale_grad_by_freq=(mode == "mean"))
        opt.fused_step(ids, grad_out, offsets=offsets, per_sample_weights=weights)
        rows, values = _dense_rows(dense, ids[ids != 2])
        _oracle_update(key, table, state, rows, values, step)
        np.testing.assert_allclose(layer.embeddings, table, rtol=1e-12, atol=1e-14)
    assert layer.embeddings[2].tobytes() == w0[2].tobytes()      # padding is never updated


# --- PyTorch ------------------------------------------------------------------------------------------------
TORCH_CASES = {
    "SGD": ("SGD", dict(lr=0.1), dict(lr=0.1)),
    "Adagrad": ("Adagrad", dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1),
                dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1)),
    "SparseAdam": ("SparseAdam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-7), dict(lr=0.01, betas=(0.8, 0.95), eps=1e-7)),
}


def _torch_run(torch, module, optimizer, batches, bag_kwargs=None):
    weights = None
    for ids, grad_out, extra in batches:
        optimizer.zero_grad()
        if bag_kwargs is None:
            out = module(torch.tensor(ids))
        else:
            weights = None if extra.get("per_sample_weights") is None else torch.tensor(extra["per_sample_weights"])
            out = module(torch.tensor(ids), torch.tensor(extra["offsets"]), per_sample_weights=weights)
        out.backward(torch.tensor(grad_out))
        optimizer.step()
    return module.weight.detach().numpy()


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("name", list(TORCH_CASES))
@pytest.mark.parametrize("fused", [False, True])
def test_agrees_with_torch_on_a_sparse_embedding(rng, name, fused):
    torch = pytest.importorskip("torch")
    cls, ours, theirs = TORCH_CASES[name]
    w0 = rng.standard_normal((V, D))
    batches = [(ids, g, {}) for ids, g in _lookup_batches(rng, n_steps=5)]
    module = torch.nn.Embedding(V, D, sparse=True, dtype=torch.float64)
    module.weight.data[:] = torch.tensor(w0)
    expected = _torch_run(torch, module, getattr(torch.optim, cls)(module.parameters(), **theirs), batches)
    layer = fastembed.Embedding(V, D, weights=w0, dtype="float64")
    opt = getattr(optim, cls)(layer, **ours)
    for ids, grad_out, _ in batches:
        if fused:
            opt.fused_step(ids, grad_out)
        else:
            layer.backward(ids, grad_out)
            opt.step()
    np.testing.assert_allclose(layer.embeddings, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("name", ["Adagrad", "SparseAdam"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_agrees_with_torch_on_a_sparse_embedding_bag(rng, name, mode):
    torch = pytest.importorskip("torch")
    cls, ours, theirs = TORCH_CASES[name]
    w0 = rng.standard_normal((V, D))
    batches = []
    for _ in range(4):
        ids = rng.integers(0, 12, size=15)
        extra = {"offsets": np.array([0, 4, 4, 9]),
                 "per_sample_weights": rng.uniform(0.5, 1.5, size=15) if mode == "sum" else None}
        batches.append((ids, rng.standard_normal((4, D)), extra))
    module = torch.nn.EmbeddingBag(V, D, mode=mode, sparse=True, padding_idx=3, dtype=torch.float64)
    module.weight.data[:] = torch.tensor(w0)
    expected = _torch_run(torch, module, getattr(torch.optim, cls)(module.parameters(), **theirs), batches, {})
    layer = fastembed.EmbeddingBag(V, D, mode=mode, padding_idx=3, weights=w0, dtype="float64")
    opt = getattr(optim, cls)(layer, **ours)
    for ids, grad_out, extra in batches:
        opt.fused_step(ids, grad_out, **extra)
    np.testing.assert_allclose(layer.embeddings, expected, rtol=1e-13, atol=1e-15)


def test_weight_decay_and_momentum_agree_with_torch_when_every_row_is_touched(rng):
    """fastembed decays and applies momentum to touched rows only; when every batch touches every row that is
    exactly what PyTorch's dense SGD and Adagrad do (its sparse path refuses weight decay)."""
    torch = pytest.importorskip("torch")
    n_rows = 6
    w0 = rng.standard_normal((n_rows, D))
    batches = [(np.concatenate([np.arange(n_rows), rng.integers(0, n_rows, size=6)]), None, {}) for _ in range(4)]
    batches = [(ids, rng.standard_normal((ids.shape[0], D)), extra) for ids, _, extra in batches]
    for cls, hyper in [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05)),
                       ("Adagrad", dict(lr=0.1, weight_decay=0.05, initial_accumulator_value=0.2))]:
        module = torch.nn.Embedding(n_rows, D, dtype=torch.float64)
        module.weight.data[:] = torch.tensor(w0)
        expected = _torch_run(torch, module, getattr(torch.optim, cls)(module.parameters(), **hyper), batches)
        layer = fastembed.Embedding(n_rows, D, weights=w0, dtype="float64")
        opt = getattr(optim, cls)(layer, **hyper)
        for ids, grad_out, _ in batches:
            opt.fused_step(ids, grad_out)
        np.testing.assert_allclose(layer.embeddings, expected, rtol=1e-13, atol=1e-15, err_msg=cls)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rowwise_adagrad_agrees_with_fbgemm(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("fbgemm_gpu")
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)

    n_rows, dim = 50, 8
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(n_rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.05, eps=1e-6, pooling_mode=PoolingMode.SUM, weights_precision=SparseType.FP32)
    layer = fastembed.EmbeddingBag(n_rows, dim, mode="sum", weights=tbe.split_embedding_weights()[0].numpy())
    opt = optim.RowWiseAdagrad(layer, lr=0.05, eps=1e-6)
    for _ in range(4):
        ids, offsets = rng.integers(0, 20, size=24), np.array([0, 7, 7, 15, 24])
        grad_out = rng.standard_normal((4, dim)).astype(np.float32)
        out = tbe(torch.tensor(ids), torch.tensor(offsets))
        np.testing.assert_allclose(layer(ids, offsets[:-1]), out.detach().numpy(), rtol=1e-5, atol=1e-6)
        out.backward(torch.tensor(grad_out))
        opt.fused_step(ids, grad_out, offsets=offsets[:-1])
    np.testing.assert_allclose(layer.embeddings, tbe.split_embedding_weights()[0].numpy(), rtol=1e-5, atol=1e-6)


# --- fused == backward + step -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(OPTIMIZERS))
@pytest.mark.parametrize("layer_kind", ["Embedding", "Embedding-options", "Embedding-clip", "sum", "mean", "sqrtn",
                                        "max"])
def test_fused_step_is_bitwise_backward_then_step(rng, key, layer_kind):
    w0 = rng.standard_normal((V, D)).astype(np.float32)

    def make():
        if layer_kind == "Embedding":
            return fastembed.Embedding(V, D, weights=w0)
        if layer_kind == "Embedding-options":
            return fastembed.Embedding(V, D, weights=w0, padding_idx=1, scale_grad_by_freq=True)
        if layer_kind == "Embedding-clip":
            return fastembed.Embedding(V, D, weights=w0, max_norm=1.0, max_norm_mode="output")
        return fastembed.EmbeddingBag(V, D, mode=layer_kind, weights=w0, padding_idx=1, scale_grad_by_freq=True)

    fused_layer, split_layer = make(), make()
    fused_opt, split_opt = _make(key, fused_layer), _make(key, split_layer)
    for _ in range(3):
        if layer_kind.startswith("Embedding"):
            ids, grad_out = rng.integers(0, V, size=(3, 9)), rng.standard_normal((3, 9, D)).astype(np.float32)
            fused_opt.fused_step(ids, grad_out, n_threads=3)
            split_layer.backward(ids, grad_out, n_threads=2)
        else:
            ids, offsets, grad_out = rng.integers(0, V, size=25), np.array([0, 3, 3, 20]), rng.standard_normal((4, D))
            weights = None if layer_kind == "max" else rng.uniform(size=25)
            fused_opt.fused_step(ids, grad_out, offsets=offsets, per_sample_weights=weights, n_threads=3)
            split_layer.backward(ids, offsets, grad_out, per_sample_weights=weights, n_threads=2)
        split_opt.step(n_threads=1)
    assert fused_layer.embeddings.tobytes() == split_layer.embeddings.tobytes()
    for name in fused_opt.state:
        assert fused_opt.state[name].tobytes() == split_opt.state[name].tobytes()


@pytest.mark.parametrize("key", list(OPTIMIZERS))
@pytest.mark.parametrize("policy", ["clip", "zero", 5])
@pytest.mark.parametrize("clip_rows", [False, True])
def test_fused_step_follows_the_layers_out_of_range_policy(rng, key, policy, clip_rows):
    """Stray ids (negative, V and beyond) go where the layer's backward sends them, bit for bit."""
    w0 = rng.standard_normal((V, D)).astype(np.float32)
    options = {"max_norm": 1.0, "max_norm_mode": "output"} if clip_rows else {}
    fused_layer, split_layer = (fastembed.Embedding(V, D, weights=w0, out_of_range=policy, padding_idx=2,
                                                    **options) for _ in range(2))
    fused_opt, split_opt = _make(key, fused_layer), _make(key, split_layer)
    for _ in range(3):
        ids = rng.integers(-3, V + 3, size=(4, 8))
        ids[0, :3] = (-1, V, np.iinfo(np.int64).max)
        grad_out = rng.standard_normal((4, 8, D)).astype(np.float32)
        fused_opt.fused_step(ids, grad_out, n_threads=2)
        split_layer.backward(ids, grad_out, n_threads=3)
        split_opt.step()
    assert fused_layer.embeddings.tobytes() == split_layer.embeddings.tobytes()
    assert {k: v.tobytes() for k, v in fused_opt.state.items()} == {k: v.tobytes() for k, v in split_opt.state.items()}


@pytest.mark.parametrize("clip_rows", [False, True])
def test_fused_step_raises_the_backward_message_for_stray_ids(clip_rows):
    options = {"max_norm": 1.0, "max_norm_mode": "output"} if clip_rows else {}
    layer = fastembed.Embedding(V, D, seed=0, **options)
    opt = optim.SparseAdam(layer, lr=0.1)
    before = layer.embeddings.copy()
    ids, grad_out = np.array([[1, 2], [3, V]]), np.ones((2, 2, D), np.float32)
    with pytest.raises(IndexError) as from_backward:
        layer.backward(ids, grad_out)
    with pytest.raises(IndexError) as from_fused:
        opt.fused_step(ids, grad_out)
    assert str(from_fused.value) == str(from_backward.value) == "ids[1, 1] = 30 is out of range [0, 30) for a table of 30 rows"
    assert layer.embeddings.tobytes() == before.tobytes() and opt.step_count == 0 and not opt.state["exp_avg"].any()


@pytest.mark.parametrize("key", list(OPTIMIZERS))
def test_fused_step_same_bits_for_any_thread_count(key):
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal((2000, 8)).astype(np.float32)
    ids = rng.zipf(1.3, size=40_000) % 2000                    # skewed: some rows very frequent
    lengths = rng.integers(1, 40, size=2000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    ids = ids[:int(lengths.sum())]
    offsets = offsets[offsets < ids.shape[0]]
    grad_out = rng.standard_normal((offsets.shape[0], 8)).astype(np.float32)
    results = set()
    for n_threads in (1, 2, 3, 8):
        layer = fastembed.EmbeddingBag(2000, 8, mode="mean", weights=w0)
        opt = _make(key, layer)
        for _ in range(2):
            opt.fused_step(ids, grad_out, offsets=offsets, n_threads=n_threads)
        results.add(layer.embeddings.tobytes() + b"".join(a.tobytes() for a in opt.state.values()))
    assert len(results) == 1


# --- state, frozen layers, bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(OPTIMIZERS))
def test_state_dict_round_trip_through_npz(rng, key):
    batches = _lookup_batches(rng, n_steps=4)
    w0 = rng.standard_normal((V, D))
    straight = fastembed.Embedding(V, D, weights=w0, dtype="float64")
    straight_opt = _make(key, straight)
    for ids, grad_out in batches:
        straight_opt.fused_step(ids, grad_out)

    first = fastembed.Embedding(V, D, weights=w0, dtype="float64")
    first_opt = _make(key, first)
    for ids, grad_out in batches[:2]:
        first_opt.fused_step(ids, grad_out)
    buffer = io.BytesIO()
    np.savez(buffer, **first_opt.state_dict())
    buffer.seek(0)
    resumed = fastembed.Embedding(V, D, weights=first.embeddings, dtype="float64")
    resumed_opt = getattr(optim, key.split("-")[0])(resumed, lr=123.0)
    resumed_opt.load_state_dict(np.load(buffer))
    assert repr(resumed_opt) == repr(first_opt)
    for ids, grad_out in batches[2:]:
        resumed_opt.fused_step(ids, grad_out)
    assert resumed.embeddings.tobytes() == straight.embeddings.tobytes()


def test_load_state_dict_rejects_foreign_or_misshapen_state():
    layer = fastembed.Embedding(V, D)
    adam = optim.SparseAdam(layer, lr=0.1)
    with pytest.raises(ValueError, match="this state is for Adagrad, not SparseAdam"):
        adam.load_state_dict(optim.Adagrad(layer, lr=0.1).state_dict())
    state = adam.state_dict()
    state["exp_avg"] = np.zeros((V + 1, D))
    with pytest.raises(ValueError, match=r"state 'exp_avg' must have shape \(30, 4\), got \(31, 4\)"):
        adam.load_state_dict(state)
    del state["exp_avg_sq"]
    state["exp_avg"], state["lr"] = np.zeros((V, D)), np.asarray(5.0)
    with pytest.raises(KeyError, match="exp_avg_sq"):
        adam.load_state_dict(state)
    assert adam.lr == 0.1                     # a failed load changes nothing


@pytest.mark.parametrize("key", list(OPTIMIZERS))
def test_frozen_layers_are_not_updated(rng, key):
    layer = fastembed.EmbeddingBag(V, D, mode="sum", trainable=False, seed=0)
    before = layer.embeddings.copy()
    opt = _make(key, layer)
    opt.fused_step(rng.integers(0, V, size=10), np.ones((2, D)), offsets=[0, 4])
    layer.grad = fastembed.sparse_grad([1, 2], np.ones((2, D)), num_rows=V)
    opt.step()
    assert layer.grad is None and layer.embeddings.tobytes() == before.tobytes()
    assert all(not array.any() for name, array in opt.state.items() if name != "sum" or key == "RowWiseAdagrad")


def test_step_checks_a_hand_made_gradient():
    layer = fastembed.Embedding(5, 2, embeddings_initializer="zeros", dtype="float64")
    # SparseGrad itself refuses rows that are not sorted and unique, so step only meets them in range or not.
    with pytest.raises(ValueError, match=r"rows must be sorted and unique: rows\[1\] = 1 follows 3"):
        fastembed.SparseGrad(np.array([3, 1, 3]), np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]))
    layer.grad = fastembed.SparseGrad(np.array([1, 3]), np.array([[2.0, 2.0], [5.0, 5.0]]))
    optim.SGD(layer, lr=1.0).step()
    np.testing.assert_array_equal(layer.embeddings[[1, 3]], [[-2.0, -2.0], [-5.0, -5.0]])
    layer.grad = fastembed.SparseGrad(np.array([7]), np.ones((1, 2)))
    with pytest.raises(IndexError, match=r"ids\[0\] = 7 is out of range \[0, 5\)"):
        optim.SGD(layer, lr=1.0).step()


def test_bad_hyper_parameters_and_inputs():
    layer = fastembed.Embedding(V, D)
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        optim.SGD(layer, lr=-1)
    with pytest.raises(ValueError, match="Invalid momentum value: -0.5"):
        optim.SGD(layer, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        optim.SparseAdam(layer, lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid epsilon value"):
        optim.Adagrad(layer, lr=0.1, eps=float("nan"))
    with pytest.raises(TypeError, match="an optimizer needs a layer with a 2-D table"):
        optim.SGD(object(), lr=0.1)
    opt = optim.SGD(layer, lr=0.1)
    with pytest.raises(TypeError, match="offsets and per_sample_weights apply to an EmbeddingBag layer only"):
        opt.fused_step([1, 2], np.ones((2, D)), offsets=[0])
    before = layer.embeddings.copy()
    with pytest.raises(IndexError, match=r"ids\[1\] = 30 is out of range"):
        opt.fused_step([1, 30], np.ones((2, D)))
    with pytest.raises(ValueError, match=r"grad_out must have shape ids.shape \+ \(D,\)"):
        opt.fused_step([1, 2], np.ones((3, D)))
    with pytest.raises(ValueError, match="grad_out has width 5 but the table has width 4"):
        opt.fused_step([1, 2], np.ones((2, 5)))
    assert layer.embeddings.tobytes() == before.tobytes()


# --- properties ---------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(list(OPTIMIZERS)), seed=st.integers(0, 2**16), n_steps=st.integers(1, 4),
       n_ids=st.integers(0, 20), high=st.integers(1, V))
def test_property_every_optimizer_matches_its_oracle(key, seed, n_steps, n_ids, high):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((V, D))
    layer = fastembed.Embedding(V, D, weights=w0, dtype="float64")
    opt = _make(key, layer)
    table, state = w0.copy(), _oracle_state(key, (V, D))
    for step in range(1, n_steps + 1):
        ids, grad_out = rng.integers(0, high, size=n_ids), rng.standard_normal((n_ids, D))
        opt.fused_step(ids, grad_out, n_threads=2)
        rows, values = ref.sparse_grad(ids, grad_out)
        _oracle_update(key, table, state, rows, values, step)
    np.testing.assert_allclose(layer.embeddings, table, rtol=1e-12, atol=1e-14)
