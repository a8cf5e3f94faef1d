"""fastembed.torch's SGD, Adagrad and SparseAdam against torch.optim: same constructor, state and results."""
import copy
import re

import pytest

torch = pytest.importorskip("torch")
fet = pytest.importorskip("fastembed.torch")

from torch import nn  # noqa: E402

VOCAB, DIM = 40, 6
OPTIONS = {
    "SGD": {"lr": 0.5},
    "Adagrad": {"lr": 0.3, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "eps": 1e-6},
    "SparseAdam": {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
}


class Model(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(DIM, 2, dtype=embedding.weight.dtype)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(1))


def _batches(n, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (5, 9), generator=gen)
        ids[:, :3] = torch.randint(0, 3, (5, 3), generator=gen)      # duplicates
        out.append((ids, torch.randn(5, 2, generator=gen, dtype=dtype)))
    return out


def _train(model, optimizer, batches):
    for ids, target in batches:
        optimizer.zero_grad()
        ((model(ids) - target) ** 2).sum().backward()
        optimizer.step()


def _pair(name, module, dtype, **overrides):
    """A model with torch.optim.<name> and a copy with fastembed.torch.<name>, over all its parameters (the
    head's dense gradients go to torch's update in both) or, for SparseAdam, the table's."""
    torch.manual_seed(0)
    reference = Model(module(VOCAB, DIM, sparse=True, dtype=dtype))
    ours = copy.deepcopy(reference)
    options = {**OPTIONS[name], **overrides}

    def params(model):
        return [model.embedding.weight] if name == "SparseAdam" else model.parameters()

    return (reference, getattr(torch.optim, name)(params(reference), **options),
            ours, getattr(fet, name)(params(ours), **options))


# With fastembed's modules the gradient is coalesced and the same for both: SGD and SparseAdam give torch's bits;
# torch's Adagrad adds the sparse update with a fused multiply-add, a last-bit difference.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "SparseAdam"])
def test_same_results_as_torch_optim(name, dtype):
    reference, ref_opt, ours, our_opt = _pair(name, fet.Embedding, dtype)
    assert isinstance(our_opt, getattr(torch.optim, name))
    batches = _batches(4, dtype=dtype)
    _train(reference, ref_opt, batches)
    _train(ours, our_opt, batches)
    for (key, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
        if name == "Adagrad":
            torch.testing.assert_close(mine, theirs, msg=key)
        else:
            assert torch.equal(mine, theirs), key
    for theirs, mine in zip(ref_opt.state.values(), our_opt.state.values()):
        assert theirs.keys() == mine.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0 if name != "Adagrad" else None,
                                       atol=0 if name != "Adagrad" else None, msg=key)


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "SparseAdam"])
def test_uncoalesced_gradients_of_torch_modules(name):
    # nn.Embedding's sparse gradient repeats rows: fastembed sums them in position order, torch's coalesce()
    # in its own order, so the results agree to rounding.
    reference, ref_opt, ours, our_opt = _pair(name, nn.Embedding, torch.float64)
    batches = _batches(4, seed=1)
    _train(reference, ref_opt, batches)
    _train(ours, our_opt, batches)
    for (key, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-13, atol=1e-13, msg=key)


@pytest.mark.parametrize("name,overrides", [("SGD", {"momentum": 0.9}), ("SGD", {"weight_decay": 0.1}),
                                            ("SGD", {"maximize": True}), ("Adagrad", {"maximize": True}),
                                            ("SparseAdam", {"maximize": True})])
def test_options_the_kernel_lacks_go_to_torch(name, overrides):
    reference, ref_opt, ours, our_opt = _pair(name, fet.Embedding, torch.float64, **overrides)
    batches = _batches(3, seed=2)
    try:
        _train(reference, ref_opt, batches)
    except RuntimeError as refused:          # and where torch refuses, so does its drop-in
        with pytest.raises(RuntimeError, match=re.escape(str(refused))):
            _train(ours, our_opt, batches)
        return
    _train(ours, our_opt, batches)
    for (key, theirs), (_, mine) in zip(reference.named_parameters(), ours.named_parameters()):
        assert torch.equal(mine, theirs), key


@pytest.mark.parametrize("name", ["Adagrad", "SparseAdam"])
def test_state_dict_loads_both_ways(name):
    reference, ref_opt, ours, our_opt = _pair(name, fet.Embedding, torch.float64)
    first, second = _batches(2, seed=3), _batches(2, seed=4)
    _train(reference, ref_opt, first)
    _train(ours, our_opt, first)
    # Swap the states across: each continues from the other's state.
    ref_state, our_state = copy.deepcopy(ref_opt.state_dict()), copy.deepcopy(our_opt.state_dict())
    assert ref_state["param_groups"] == our_state["param_groups"]
    ref_opt.load_state_dict(our_state)
    our_opt.load_state_dict(ref_state)
    _train(reference, ref_opt, second)
    _train(ours, our_opt, second)
    torch.testing.assert_close(ours.embedding.weight, reference.embedding.weight, rtol=1e-13, atol=1e-13)
    assert type(our_opt.state_dict()["state"][0]["step"]) is type(ref_opt.state_dict()["state"][0]["step"])


def test_hooks_run_once_and_closure_returns_the_loss():
    torch.optim.SparseAdam([nn.Parameter(torch.zeros(2, 2))])      # torch wraps its class's step once used
    model = Model(fet.Embedding(VOCAB, DIM, sparse=True))
    opt = fet.SparseAdam([model.embedding.weight], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    ids = torch.tensor([[1, 2, 2]])

    def closure():
        opt.zero_grad()
        loss = model(ids).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == ["pre", "post"] and loss.shape == ()
    assert opt.state[model.embedding.weight]["step"] == 1
    assert model.embedding.weight.grad is not None       # left for the caller, as torch does


def test_an_empty_sparse_gradient_counts_a_step_like_torch():
    start = torch.randn(VOCAB, DIM, dtype=torch.float64)
    weights = [nn.Parameter(start.clone()) for _ in range(2)]
    opts = [torch.optim.SparseAdam([weights[0]], lr=0.1), fet.SparseAdam([weights[1]], lr=0.1)]
    for ids in (torch.tensor([0, 0]), torch.tensor([3, 1])):
        for weight, opt in zip(weights, opts):
            opt.zero_grad()
            fet.embedding(ids, weight, padding_idx=0, sparse=True).sum().backward()
            opt.step()
    assert opts[1].state[weights[1]]["step"] == opts[0].state[weights[0]]["step"] == 2
    assert torch.equal(weights[1], weights[0])
