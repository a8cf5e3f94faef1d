"""fastembed.torch.EmbeddingBag against torch.nn.EmbeddingBag: same outputs, gradients and weights in training."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
fet = pytest.importorskip("fastembed.torch")

from torch import nn  # noqa: E402

VOCAB, DIM, BATCH, LENGTH = 40, 6, 5, 8
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


class Pooled(nn.Module):
    """bag → linear: the smallest model whose gradient reaches every id (and every per-sample weight)."""

    def __init__(self, bag):
        super().__init__()
        self.embedding = bag
        self.head = nn.Linear(bag.embedding_dim, 3, dtype=bag.weight.dtype)

    def forward(self, ids, offsets=None, per_sample_weights=None):
        return self.head(self.embedding(ids, offsets, per_sample_weights))


class LookupThenPool(nn.Module):
    """An independent reference for scale_grad_by_freq: torch.nn.Embedding's lookup (which scales by the id's
    count in the whole batch), padding masked out, then the bag's sum or mean. torch 2.13's own CPU
    EmbeddingBag divides some rows by another id's count (pytorch/pytorch#190063)."""

    def __init__(self, bag):
        super().__init__()
        self.bag = bag
        self.embedding_dim = bag.embedding_dim

    @property
    def weight(self):
        return self.bag.weight

    def forward(self, ids, offsets=None, per_sample_weights=None):
        assert offsets is None and per_sample_weights is None
        rows = nn.functional.embedding(ids, self.bag.weight, padding_idx=self.bag.padding_idx,
                                       scale_grad_by_freq=True)
        kept = (ids != self.bag.padding_idx if self.bag.padding_idx is not None else torch.ones_like(ids, dtype=bool))
        pooled = (rows * kept[..., None]).sum(1)
        return pooled / kept.sum(1, keepdim=True).clamp(min=1) if self.bag.mode == "mean" else pooled


def _batches(seed, n, layout, padding_idx=None, weighted=False, include_last_offset=False):
    """(ids, offsets, per_sample_weights, target) batches with duplicate ids, padding ids and an empty bag."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
        ids[:, :3] = torch.randint(0, 4, (BATCH, 3), generator=gen)
        if padding_idx is not None:
            ids[:, -2:] = padding_idx % VOCAB
            ids[1] = padding_idx % VOCAB            # a bag of padding only: zeros, no gradient
        offsets = None
        if layout == "offsets":
            offsets = torch.tensor([0, 3, 3, 17, 25] + ([BATCH * LENGTH] if include_last_offset else []))
            ids = ids.reshape(-1)
        weights = torch.randn(ids.shape, generator=gen, dtype=torch.float64) if weighted else None
        batches.append((ids, offsets, weights, torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)))
    return batches


def _twins(kwargs, reference_kwargs=None, wrap=None):
    torch.manual_seed(0)
    reference = nn.EmbeddingBag(VOCAB, DIM, dtype=torch.float64, **(reference_kwargs or kwargs))
    ours = Pooled(fet.EmbeddingBag(VOCAB, DIM, dtype=torch.float64, **kwargs))
    reference = Pooled(wrap(reference) if wrap else reference)
    ours.load_state_dict(reference.state_dict(), strict=wrap is None)
    if wrap:
        ours.embedding.weight.data.copy_(reference.embedding.weight)
    return reference, ours


def _optimizers(model, name, namespace=torch.optim):
    rest = torch.optim.SGD(model.head.parameters(), lr=0.1)
    table = [model.embedding.weight]
    if name == "sgd":
        return [namespace.SGD(table, lr=0.5), rest]
    if name == "adagrad":
        return [namespace.Adagrad(table, lr=0.3), rest]
    return [namespace.SparseAdam(table, lr=0.05), rest]


def _dense(grad):
    return grad.to_dense() if grad.is_sparse else grad


def _train_and_compare(reference, ours, batches, optimizer, sparse_grad, namespace=torch.optim, tol=TIGHT):
    optimizers = {id(m): _optimizers(m, optimizer, namespace if m is ours else torch.optim)
                  for m in (reference, ours)}
    weighted = [[], []]
    for ids, offsets, weights, target in batches:
        outputs, grads = [], []
        for k, model in enumerate((reference, ours)):
            for opt in optimizers[id(model)]:
                opt.zero_grad()
            sample = None if weights is None else weights.clone().requires_grad_()
            out = model(ids, offsets, sample)
            ((out - target) ** 2).sum().backward()
            outputs.append(out.detach())
            grads.append(model.embedding.weight.grad)
            weighted[k].append(None if sample is None else sample.grad)
            for opt in optimizers[id(model)]:
                opt.step()
        torch.testing.assert_close(outputs[1], outputs[0], **tol)
        assert grads[1].is_sparse == sparse_grad
        if sparse_grad:
            assert grads[1].is_coalesced()
        torch.testing.assert_close(_dense(grads[1]), _dense(grads[0]), **tol)
        for (name, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
            torch.testing.assert_close(mine, theirs, msg=name, **tol)
    for theirs, mine in zip(*weighted):
        if theirs is not None:
            torch.testing.assert_close(mine, theirs, **tol)


# (constructor options, optimizers); every case runs with 2-D ids and with 1-D ids + offsets.
CASES = [
    ({"mode": "mean"}, ["sgd", "adagrad"]),
    ({"mode": "sum", "padding_idx": 0}, ["sgd"]),
    ({"mode": "max", "padding_idx": -1}, ["adagrad"]),
    ({"mode": "mean", "max_norm": 0.9}, ["sgd"]),
    ({"mode": "max", "max_norm": 1.5, "norm_type": 1.0}, ["sgd"]),
    ({"mode": "sum", "sparse": True}, ["sgd", "adagrad", "sparse_adam"]),
    ({"mode": "mean", "sparse": True, "padding_idx": 3}, ["adagrad", "sparse_adam"]),
    ({"mode": "sum", "sparse": True, "padding_idx": 0, "max_norm": 1.0}, ["sparse_adam"]),
    ({"mode": "mean", "include_last_offset": True, "padding_idx": 2}, ["sgd"]),
]


@pytest.mark.parametrize("layout", ["2d", "offsets"])
@pytest.mark.parametrize("kwargs,optimizer", [(k, o) for k, opts in CASES for o in opts])
def test_training_matches_torch(kwargs, optimizer, layout):
    reference, ours = _twins(kwargs)
    batches = _batches(7, 3, layout, kwargs.get("padding_idx"),
                       include_last_offset=kwargs.get("include_last_offset", False))
    _train_and_compare(reference, ours, batches, optimizer, kwargs.get("sparse", False))
    if "padding_idx" in kwargs:
        assert not ours.embedding.weight[kwargs["padding_idx"]].any()


@pytest.mark.parametrize("layout", ["2d", "offsets"])
@pytest.mark.parametrize("kwargs,optimizer", [({}, "adagrad"), ({"padding_idx": 1, "sparse": True}, "sparse_adam"),
                                              ({"max_norm": 1.0, "sparse": True}, "sgd")])
def test_per_sample_weights_and_their_gradient_match_torch(kwargs, optimizer, layout):
    reference, ours = _twins({"mode": "sum", **kwargs})
    _train_and_compare(reference, ours, _batches(5, 3, layout, kwargs.get("padding_idx"), weighted=True), optimizer,
                       kwargs.get("sparse", False))


@pytest.mark.parametrize("kwargs,optimizer", [({"mode": "max", "sparse": True}, "adagrad"),
                                              ({"mode": "max", "sparse": True, "padding_idx": 0}, "sgd")])
def test_max_mode_with_a_sparse_gradient_matches_torchs_dense_one(kwargs, optimizer):
    # torch refuses sparse=True in max mode; rows without gradient stay put under SGD and Adagrad either way.
    reference, ours = _twins(kwargs, reference_kwargs={**kwargs, "sparse": False})
    _train_and_compare(reference, ours, _batches(3, 3, "2d", kwargs.get("padding_idx")), optimizer, True)


@pytest.mark.parametrize("kwargs,optimizer", [({"mode": "sum", "padding_idx": 0}, "sgd"),
                                              ({"mode": "mean"}, "adagrad"),
                                              ({"mode": "mean", "padding_idx": 2, "sparse": True}, "adagrad")])
def test_scale_grad_by_freq_divides_by_the_ids_count_in_the_batch(kwargs, optimizer):
    full = {**kwargs, "scale_grad_by_freq": True}
    reference, ours = _twins(full, reference_kwargs={**kwargs, "sparse": False}, wrap=LookupThenPool)
    _train_and_compare(reference, ours, _batches(9, 3, "2d", kwargs.get("padding_idx")), optimizer,
                       kwargs.get("sparse", False))


def test_sparse_gradient_is_coalesced_without_the_padding_row():
    weight = torch.randn(VOCAB, DIM, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([7, 3, 7, 0, 0, 39, 3, 7])
    offsets = torch.tensor([0, 4])
    grad_out = torch.randn(2, DIM, dtype=torch.float64)
    for padding_idx, rows in ((None, [0, 3, 7, 39]), (0, [3, 7, 39]), (7, [0, 3, 39])):
        grad = torch.autograd.grad(fet.embedding_bag(ids, weight, offsets, mode="sum", padding_idx=padding_idx,
                                                     sparse=True), weight, grad_out)[0]
        assert grad.is_sparse and grad.is_coalesced() and grad.shape == (VOCAB, DIM)
        assert grad.indices().tolist() == [rows]
        dense = torch.autograd.grad(nn.functional.embedding_bag(ids, weight, offsets, mode="sum",
                                                                padding_idx=padding_idx), weight, grad_out)[0]
        torch.testing.assert_close(grad.to_dense(), dense, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_outputs_have_torchs_bits(dtype, mode):
    weight = torch.randn(VOCAB, DIM, dtype=dtype)
    ids = torch.randint(0, VOCAB, (30,), dtype=torch.int32)
    offsets = torch.tensor([0, 4, 4, 10, 20], dtype=torch.int32)
    for padding_idx in (None, int(ids[0])):
        expected = nn.functional.embedding_bag(ids, weight, offsets, mode=mode, padding_idx=padding_idx)
        assert torch.equal(fet.embedding_bag(ids, weight, offsets, mode=mode, padding_idx=padding_idx), expected)


def test_module_api_and_state_dict_match_torch():
    options = {"max_norm": 2.0, "norm_type": 3.0, "mode": "sum", "sparse": True, "include_last_offset": True,
               "padding_idx": -2}
    torch.manual_seed(5)
    reference = nn.EmbeddingBag(12, 4, **options)
    torch.manual_seed(5)
    ours = fet.EmbeddingBag(12, 4, **options)
    assert isinstance(ours, nn.EmbeddingBag) and repr(ours) == repr(reference)
    assert torch.equal(ours.weight, reference.weight) and not ours.weight[10].any()
    for attr in ("num_embeddings", "embedding_dim", "max_norm", "norm_type", "scale_grad_by_freq", "mode",
                 "sparse", "include_last_offset", "padding_idx"):
        assert getattr(ours, attr) == getattr(reference, attr), attr
    back = nn.EmbeddingBag(12, 4)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, ours.weight)
    ours.reset_parameters()
    ours.load_state_dict(reference.state_dict())
    assert torch.equal(ours.weight, reference.weight)

    for freeze in (True, False):
        matrix = torch.randn(6, 3, dtype=torch.float64)
        pretrained = fet.EmbeddingBag.from_pretrained(matrix, freeze=freeze, mode="max", padding_idx=1)
        assert type(pretrained) is fet.EmbeddingBag and (pretrained.mode, pretrained.padding_idx) == ("max", 1)
        assert pretrained.weight.requires_grad is (not freeze) and pretrained.weight.data_ptr() == matrix.data_ptr()
    with pytest.raises(TypeError, match="fastembed.torch.EmbeddingBag needs float32 or float64"):
        fet.EmbeddingBag(10, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="mode must be one of"):
        fet.EmbeddingBag(10, 3, mode="median")


def test_torch_compile_falls_back_to_eager_bags():
    reference, ours = _twins({"mode": "sum", "padding_idx": 0, "max_norm": 1.0})
    compiled = torch.compile(ours, backend="aot_eager")
    optimizers = {id(m): _optimizers(m, "sgd") for m in (reference, ours)}
    for ids, offsets, weights, target in _batches(11, 2, "offsets", padding_idx=0, weighted=True):
        for model, call in ((reference, reference), (ours, compiled)):
            for opt in optimizers[id(model)]:
                opt.zero_grad()
            ((call(ids, offsets, weights) - target) ** 2).sum().backward()
            for opt in optimizers[id(model)]:
                opt.step()
    for (name, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(mine, theirs, msg=name, **TIGHT)


def test_a_weight_changed_before_backward_is_refused_in_max_mode():
    bag = fet.EmbeddingBag(10, 3, mode="max")
    out = bag(torch.tensor([[1, 2], [3, 4]]))
    with torch.no_grad():
        bag.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_bad_input_raises_before_writing():
    bag = fet.EmbeddingBag(10, 3, max_norm=0.01, mode="sum")
    before = bag.weight.detach().clone()
    with pytest.raises(IndexError, match=r"\[1, 0\] = 10 is out of range \[0, 10\)"):
        bag(torch.tensor([[1, 2], [10, 3]]))
    with pytest.raises(ValueError, match="offsets is required when ids is 1-D"):
        bag(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="offsets must be None when ids is 2-D"):
        bag(torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"offsets\[0\] = 1: the first bag must start at 0"):
        bag(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="per_sample_weights must have the ids' shape"):
        bag(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(3))
    assert torch.equal(bag.weight, before)
    with pytest.raises(NotImplementedError, match="only supported for mode='sum'"):
        fet.EmbeddingBag(10, 3)(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2))
    with pytest.raises(TypeError, match="per_sample_weights must be a tensor of the weight's dtype"):
        bag(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        bag([[1, 2]])
    with pytest.raises(ValueError, match="runs on the CPU, but weight is on meta"):
        fet.EmbeddingBag(10, 3, device="meta")(torch.tensor([[1]]))


def test_bags_train_identically_after_the_swap():
    torch.manual_seed(3)
    original = Pooled(nn.EmbeddingBag(VOCAB, DIM, mode="sum", padding_idx=0, dtype=torch.float64))
    swapped = Pooled(nn.EmbeddingBag(VOCAB, DIM, mode="sum", padding_idx=0, dtype=torch.float64))
    swapped.load_state_dict(original.state_dict())
    fet.swap_embeddings(swapped)
    assert type(swapped.embedding) is fet.EmbeddingBag
    _train_and_compare(original, swapped, _batches(4, 3, "offsets", padding_idx=0, weighted=True), "adagrad", False)


def test_optimizers_with_bags_match_torch():
    reference, ours = _twins({"mode": "mean", "sparse": True, "padding_idx": 1})
    _train_and_compare(reference, ours, _batches(2, 4, "offsets", padding_idx=1), "sparse_adam", True, namespace=fet)
    assert np.isfinite(ours.embedding.weight.detach().numpy()).all()


@pytest.mark.parametrize("layout", ["2d", "offsets"])
def test_per_sample_weight_gradient_with_a_nonzero_padding_row(layout):
    # A pre-trained table keeps whatever its padding row holds: padding positions still get no gradient.
    weight = torch.randn(VOCAB, DIM, dtype=torch.float64, requires_grad=True)
    (ids, offsets, weights, _), = _batches(6, 1, layout, padding_idx=4, weighted=True)
    grads, grad_out = [], torch.randn(BATCH, DIM, dtype=torch.float64)
    for embedding_bag in (nn.functional.embedding_bag, fet.embedding_bag):
        sample = weights.clone().requires_grad_()
        out = embedding_bag(ids, weight, offsets, mode="sum", per_sample_weights=sample, padding_idx=4)
        grads.append(torch.autograd.grad(out, (weight, sample), grad_out))
    for theirs, mine in zip(*grads):
        torch.testing.assert_close(mine, theirs, **TIGHT)
    assert not grads[1][1][ids == 4].any() and grads[1][1][ids != 4].all()
