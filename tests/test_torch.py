"""fastembed.torch against torch.nn.Embedding: same outputs, gradients and weights through training."""
import copy

import pytest

torch = pytest.importorskip("torch")
fet = pytest.importorskip("fastembed.torch")

from torch import nn  # noqa: E402

VOCAB, DIM, BATCH, SEQ = 40, 6, 5, 9


class Pooled(nn.Module):
    """embedding → mean over the sequence → linear: the smallest model whose gradient reaches every id."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(embedding.embedding_dim, 3, dtype=embedding.weight.dtype)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(dim=1))


def _batches(seed, n, padding_idx=None):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
        ids[:, :3] = torch.randint(0, 4, (BATCH, 3), generator=gen)   # duplicates in every batch
        if padding_idx is not None:
            ids[:, -2:] = padding_idx % VOCAB
        batches.append((ids, torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)))
    return batches


def _twin_models(kwargs, pretrained=None):
    """A torch.nn.Embedding model and its fastembed twin with the same initial weights (via state_dict)."""
    torch.manual_seed(0)
    if pretrained is not None:
        reference = Pooled(nn.Embedding.from_pretrained(pretrained.clone(), **kwargs))
        ours = Pooled(fet.Embedding.from_pretrained(pretrained.clone(), **kwargs))
    else:
        reference = Pooled(nn.Embedding(VOCAB, DIM, dtype=torch.float64, **kwargs))
        ours = Pooled(fet.Embedding(VOCAB, DIM, dtype=torch.float64, **kwargs))
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _optimizers(model, name):
    embedding = [p for p in model.embedding.parameters() if p.requires_grad]
    rest = torch.optim.SGD(model.head.parameters(), lr=0.1)
    if not embedding:
        return [rest]
    if name == "sgd":
        return [torch.optim.SGD(embedding, lr=0.5), rest]
    if name == "adagrad":
        return [torch.optim.Adagrad(embedding, lr=0.3), rest]
    return [torch.optim.SparseAdam(embedding, lr=0.05), rest]


def _dense(grad):
    return grad.to_dense() if grad.is_sparse else grad


CASES = [
    ({}, ["sgd", "adagrad"]),
    ({"padding_idx": 0}, ["sgd", "adagrad"]),
    ({"padding_idx": -1}, ["sgd"]),
    ({"max_norm": 0.9}, ["sgd", "adagrad"]),
    ({"max_norm": 1.5, "norm_type": 1.0, "padding_idx": 2}, ["sgd"]),
    ({"scale_grad_by_freq": True}, ["sgd", "adagrad"]),
    ({"scale_grad_by_freq": True, "padding_idx": 1, "max_norm": 1.2}, ["adagrad"]),
    ({"sparse": True}, ["sgd", "adagrad", "sparse_adam"]),
    ({"sparse": True, "padding_idx": 3}, ["sgd", "adagrad", "sparse_adam"]),
    ({"sparse": True, "padding_idx": 0, "max_norm": 1.0}, ["sparse_adam"]),
]


@pytest.mark.parametrize("kwargs,optimizer", [(k, o) for k, opts in CASES for o in opts])
def test_training_matches_torch(kwargs, optimizer):
    reference, ours = _twin_models(kwargs)
    optimizers = {id(m): _optimizers(m, optimizer) for m in (reference, ours)}
    for ids, target in _batches(7, 4, kwargs.get("padding_idx")):
        outputs, grads = [], []
        for model in (reference, ours):
            for opt in optimizers[id(model)]:
                opt.zero_grad()
            out = model(ids)
            ((out - target) ** 2).sum().backward()
            outputs.append(out.detach())
            grads.append(model.embedding.weight.grad)
            for opt in optimizers[id(model)]:
                opt.step()
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
        assert grads[1].is_sparse == grads[0].is_sparse == kwargs.get("sparse", False)
        torch.testing.assert_close(_dense(grads[1]), _dense(grads[0]), rtol=1e-12, atol=1e-12)
        for (name, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12, msg=name)
    if "padding_idx" in kwargs:
        assert not ours.embedding.weight[kwargs["padding_idx"]].any()


@pytest.mark.parametrize("freeze", [True, False])
def test_from_pretrained_trains_like_torch(freeze):
    pretrained = torch.randn(VOCAB, DIM, dtype=torch.float64)
    reference, ours = _twin_models({"freeze": freeze, "padding_idx": 0}, pretrained)
    assert type(ours.embedding) is fet.Embedding
    assert ours.embedding.weight.requires_grad is (not freeze)
    optimizers = {id(m): _optimizers(m, "adagrad") for m in (reference, ours)}
    for ids, target in _batches(3, 3, padding_idx=0):
        for model in (reference, ours):
            for opt in optimizers[id(model)]:
                opt.zero_grad()
            ((model(ids) - target) ** 2).sum().backward()
            for opt in optimizers[id(model)]:
                opt.step()
    assert (ours.embedding.weight.grad is None) is freeze
    torch.testing.assert_close(ours.embedding.weight, reference.embedding.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.head.weight, reference.head.weight, rtol=1e-12, atol=1e-12)
    if freeze:
        assert torch.equal(ours.embedding.weight, pretrained)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_dense_gradient_has_torchs_bits(dtype, index_dtype):
    weight = torch.randn(VOCAB, DIM, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, VOCAB, (7, 11), dtype=index_dtype)
    ids[:, :4] = 5
    grad_out = torch.randn(7, 11, DIM, dtype=dtype)
    expected = torch.autograd.grad(nn.functional.embedding(ids, weight, padding_idx=2), weight, grad_out)[0]
    got = torch.autograd.grad(fet.embedding(ids, weight, padding_idx=2), weight, grad_out)[0]
    assert torch.equal(got, expected)   # same summation order: increasing position within each row
    assert torch.equal(fet.embedding(ids, weight), nn.functional.embedding(ids, weight))


def test_sparse_gradient_is_coalesced_without_the_padding_row():
    weight = torch.randn(VOCAB, DIM, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[7, 3, 7, 0], [0, 39, 3, 7]])
    grad_out = torch.randn(2, 4, DIM, dtype=torch.float64)
    for padding_idx, rows in ((None, [0, 3, 7, 39]), (0, [3, 7, 39]), (7, [0, 3, 39]), (39, [0, 3, 7])):
        grad = torch.autograd.grad(fet.embedding(ids, weight, padding_idx=padding_idx, sparse=True), weight,
                                   grad_out)[0]
        assert grad.is_sparse and grad.is_coalesced() and grad.shape == (VOCAB, DIM)
        assert grad.indices().tolist() == [rows]
        dense = torch.autograd.grad(nn.functional.embedding(ids, weight, padding_idx=padding_idx), weight,
                                    grad_out)[0]
        torch.testing.assert_close(grad.to_dense(), dense, rtol=1e-15, atol=0)
    only_padding = torch.autograd.grad(fet.embedding(torch.zeros(3, dtype=torch.long), weight, padding_idx=0,
                                                     sparse=True), weight, torch.ones(3, DIM, dtype=torch.float64))[0]
    assert only_padding.indices().shape == (1, 0) and only_padding.values().shape == (0, DIM)


def test_scale_grad_by_freq_also_with_sparse_gradients():
    weight = torch.randn(VOCAB, DIM, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 1, 1, 4], [4, 9, 1, 0]])
    grad_out = torch.randn(2, 4, DIM, dtype=torch.float64)
    expected = torch.autograd.grad(nn.functional.embedding(ids, weight, padding_idx=0, scale_grad_by_freq=True),
                                   weight, grad_out)[0]
    with pytest.raises(RuntimeError, match="scale_grad_by_freq not supported with sparse"):
        torch.autograd.grad(nn.functional.embedding(ids, weight, scale_grad_by_freq=True, sparse=True),
                            weight, grad_out)
    for sparse in (False, True):
        got = torch.autograd.grad(fet.embedding(ids, weight, padding_idx=0, scale_grad_by_freq=True,
                                                sparse=sparse), weight, grad_out)[0]
        torch.testing.assert_close(_dense(got), expected, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(expected[1], grad_out.reshape(-1, DIM)[[0, 1, 2, 6]].sum(0) / 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, float("inf")])
def test_renorm_has_torchs_bits(dtype, norm_type):
    weight = torch.randn(200, 32, dtype=dtype) * 3
    ids = torch.randint(0, 200, (25, 20))
    max_norm = float(torch.linalg.vector_norm(weight, ord=norm_type, dim=1).median())
    expected = torch.embedding_renorm_(weight.clone(), ids, max_norm, norm_type)
    got = fet.embedding_renorm_(weight.clone(), ids, max_norm, norm_type)
    assert torch.equal(got, expected)
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[ids.reshape(-1)] = False
    assert torch.equal(got[untouched], weight[untouched]) and not torch.equal(got, weight)


def test_renorm_bumps_the_version_like_torch():
    weight = torch.randn(10, 4)
    before = weight._version
    fet.embedding_renorm_(weight, torch.tensor([1, 2]), 0.1)
    assert weight._version > before
    linear_input = torch.randn(3, 4, requires_grad=True)
    tied = nn.Parameter(torch.randn(10, 4))
    logits = linear_input @ tied.t()       # saves `tied` for its backward
    fet.embedding(torch.tensor([0, 1]), tied, max_norm=0.1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logits.sum().backward()


def test_module_api_matches_torch():
    torch.manual_seed(5)
    reference = nn.Embedding(12, 4, padding_idx=-2, max_norm=2.0, norm_type=3.0, scale_grad_by_freq=True,
                             sparse=True)
    torch.manual_seed(5)
    ours = fet.Embedding(12, 4, padding_idx=-2, max_norm=2.0, norm_type=3.0, scale_grad_by_freq=True,
                         sparse=True)
    assert isinstance(ours, nn.Embedding)
    assert torch.equal(ours.weight, reference.weight) and not ours.weight[10].any()
    assert repr(ours) == repr(reference)
    for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                 "scale_grad_by_freq", "sparse"):
        assert getattr(ours, attr) == getattr(reference, attr), attr
    ours.reset_parameters()
    assert not ours.weight[10].any() and not torch.equal(ours.weight, reference.weight)

    # state_dict both ways, strict
    back = nn.Embedding(12, 4)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, ours.weight)
    ours.load_state_dict(reference.state_dict())
    assert torch.equal(ours.weight, reference.weight)

    frozen = torch.randn(6, 3, dtype=torch.float64)
    pretrained = fet.Embedding.from_pretrained(frozen, padding_idx=1)
    assert type(pretrained) is fet.Embedding and pretrained.padding_idx == 1
    assert not pretrained.weight.requires_grad and pretrained.weight.data_ptr() == frozen.data_ptr()
    assert fet.Embedding(3, 2, _weight=torch.ones(3, 2), _freeze=True).weight.requires_grad is False
    # like torch, dtype= is ignored when _weight is given
    assert fet.Embedding(3, 2, _weight=torch.ones(3, 2), dtype=torch.float16).weight.dtype == torch.float32


@pytest.mark.parametrize("shape", [(), (0,), (7,), (2, 0, 3), (2, 3, 4)])
@pytest.mark.parametrize("layout", ["int64", "int32", "transposed"])
def test_id_shapes_dtypes_and_layouts(shape, layout):
    weight = torch.randn(VOCAB, DIM, requires_grad=True)
    ids = torch.randint(0, VOCAB, shape)
    if layout == "int32":
        ids = ids.to(torch.int32)
    elif layout == "transposed" and ids.dim() > 1:
        ids = ids.transpose(0, -1)
    out = fet.embedding(ids, weight)
    assert torch.equal(out, nn.functional.embedding(ids, weight))
    grad_out = torch.randn(out.shape)
    expected = torch.autograd.grad(nn.functional.embedding(ids, weight), weight, grad_out)[0]
    assert torch.equal(torch.autograd.grad(out, weight, grad_out)[0], expected)


@pytest.mark.parametrize("module, kwargs", [("Embedding", {}), ("EmbeddingBag", {"mode": "max"})])
def test_no_grad_and_inference_mode(module, kwargs):
    torch.manual_seed(1)
    reference = getattr(nn, module)(VOCAB, DIM, max_norm=1.0, **kwargs)
    ours = getattr(fet, module)(VOCAB, DIM, max_norm=1.0, **kwargs)
    ours.load_state_dict(reference.state_dict())
    ids = torch.randint(0, VOCAB, (4, 6))
    with torch.no_grad():
        out = ours(ids)
        assert out.grad_fn is None and torch.equal(out, reference(ids))
    with torch.inference_mode():
        more = torch.randint(0, VOCAB, (3, 6))
        out = ours(more)
        assert out.is_inference() and torch.equal(out, reference(more))
    assert torch.equal(ours.weight, reference.weight)


def test_functional_lookup_under_inference_mode():
    ids = torch.randint(0, VOCAB, (4, 6))
    with torch.inference_mode():
        inference_weight = torch.randn(VOCAB, DIM)
        out = fet.embedding(ids, inference_weight, max_norm=0.5)
        assert torch.equal(out, nn.functional.embedding(ids, inference_weight, max_norm=0.5))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_falls_back_to_eager_lookup(backend):
    reference, ours = _twin_models({"padding_idx": 0, "max_norm": 1.0})
    compiled = torch.compile(ours, backend=backend)
    optimizers = {id(m): _optimizers(m, "sgd") for m in (reference, ours)}
    for ids, target in _batches(11, 2, padding_idx=0):
        for model, call in ((reference, reference), (ours, compiled)):
            for opt in optimizers[id(model)]:
                opt.zero_grad()
            ((call(ids) - target) ** 2).sum().backward()
            for opt in optimizers[id(model)]:
                opt.step()
    for (name, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12, msg=name)


def test_bad_input_raises_before_writing():
    emb = fet.Embedding(10, 3, max_norm=0.01)
    before = emb.weight.detach().clone()
    with pytest.raises(IndexError, match=r"input\[1, 0\] = 10 is out of range \[0, 10\)"):
        emb(torch.tensor([[1, 2], [10, 3]]))
    with pytest.raises(IndexError, match=r"ids\[0\] = -1"):
        fet.embedding(torch.tensor([-1, 2]), emb.weight)
    assert torch.equal(emb.weight, before)
    with pytest.raises(TypeError, match="ids must be an integer array"):
        fet.embedding(torch.tensor([1.0]), emb.weight)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        emb([1, 2])
    with pytest.raises(TypeError, match="float32 or float64"):
        fet.Embedding(10, 3, dtype=torch.float16)
    with pytest.raises(TypeError, match="weight must be float32 or float64"):
        fet.Embedding(10, 3).half()(torch.tensor([1]))
    with pytest.raises(ValueError, match="runs on the CPU, but weight is on meta"):
        fet.Embedding(10, 3, device="meta")(torch.tensor([1]))
    with pytest.raises(ValueError, match=r"padding_idx must be in \[-10, 10\) for a table of 10 rows, got 10"):
        fet.embedding(torch.tensor([1]), emb.weight, padding_idx=10)
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        fet.Embedding(10, 3, padding_idx=-11)


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        shared = nn.Embedding(20, 4, padding_idx=0)
        self.words = shared
        self.blocks = nn.ModuleList([nn.Sequential(nn.Embedding(30, 4, max_norm=1.0, sparse=True)),
                                     nn.ModuleDict({"again": shared})])
        self.bag = nn.EmbeddingBag(15, 4, mode="max", padding_idx=3, include_last_offset=True)
        self.head = nn.Linear(4, 20, bias=False)
        self.head.weight = shared.weight     # tied

    def forward(self, words, other):
        hidden = self.words(words).mean(1) + self.blocks[0](other).mean(1) + self.bag(other % 15)
        return self.head(hidden + self.blocks[1]["again"](words).mean(1))


def test_swap_embeddings_keeps_parameters_options_and_outputs():
    torch.manual_seed(2)
    model = _Tower()
    words, other = torch.randint(0, 20, (3, 5)), torch.randint(0, 30, (3, 5))
    expected = model(words, other)
    params_before = list(model.parameters())
    keys_before = list(model.state_dict())
    model.eval()
    assert fet.swap_embeddings(model) is model
    assert type(model.words) is fet.Embedding and model.blocks[1]["again"] is model.words
    swapped = model.blocks[0][0]
    assert type(swapped) is fet.Embedding and swapped.max_norm == 1.0 and swapped.sparse and not swapped.training
    assert type(model.bag) is fet.EmbeddingBag and model.bag.weight is params_before[2]
    assert (model.bag.mode, model.bag.padding_idx, model.bag.include_last_offset) == ("max", 3, True)
    assert model.words.padding_idx == 0 and model.head.weight is model.words.weight
    assert all(a is b for a, b in zip(model.parameters(), params_before)) and list(model.state_dict()) == keys_before
    torch.testing.assert_close(model(words, other), expected, rtol=0, atol=0)
    assert fet.swap_embeddings(model) is model and type(model.words) is fet.Embedding   # idempotent

    lone = nn.Embedding(5, 2)
    new = fet.swap_embeddings(lone)
    assert type(new) is fet.Embedding and new.weight is lone.weight


def test_swap_embeddings_checks_everything_first():
    model = nn.Sequential(nn.Embedding(5, 2), nn.Sequential(nn.Embedding(5, 2, dtype=torch.float16)))
    with pytest.raises(ValueError, match=r"cannot swap 1\.0: .*float16"):
        fet.swap_embeddings(model)
    assert type(model[0]) is nn.Embedding


class _Imdb(nn.Module):
    """The seed's IMDB sentiment model: Embedding(5000, 32) → LSTM(100) → Dense(1, sigmoid)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(5000, 32)
        self.lstm = nn.LSTM(32, 100, batch_first=True)
        self.dense = nn.Linear(100, 1)

    def forward(self, ids):
        _, (hidden, _) = self.lstm(self.embedding(ids))
        return torch.sigmoid(self.dense(hidden[-1])).squeeze(-1)


def test_imdb_model_trains_identically_after_the_swap():
    torch.manual_seed(0)
    original = _Imdb()
    swapped = fet.swap_embeddings(copy.deepcopy(original))
    assert type(swapped.embedding) is fet.Embedding
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (original, swapped)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, 5000, (8, 50), generator=gen)
        labels = torch.randint(0, 2, (8,), generator=gen).float()
        losses = []
        for model, opt in zip((original, swapped), optimizers):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy(model(ids), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == losses[1]
    for (name, theirs), (_, mine) in zip(original.named_parameters(), swapped.named_parameters()):
        assert torch.equal(mine, theirs), name
