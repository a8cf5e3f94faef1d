"""PyTorch integration: ``fastembed.torch.Embedding``, a drop-in for ``torch.nn.Embedding`` on the CPU.

``import fastembed.torch`` is the only place fastembed imports torch (an optional extra). Everything here
works on the tensors' own memory through numpy views: the forward pass is fastembed's ``gather`` into a new
tensor, the backward pass ``scatter_add`` into a new zero tensor (dense) or ``sparse_grad`` (``sparse=True``,
a coalesced COO tensor that ``Adagrad``/``SparseAdam`` use without sorting it again).

Limits: CPU tensors of float32/float64 only (a clear error otherwise); the kernels run with
``torch.get_num_threads()`` threads; ``torch.compile`` runs the lookup eagerly (a graph break, so
``fullgraph=True`` refuses it) and TorchScript cannot script it; the backward pass is not itself
differentiable (no double backward).

``EmbeddingBag`` belongs beside ``Embedding`` here once fastembed has bag kernels; until then
``swap_embeddings`` leaves ``torch.nn.EmbeddingBag`` modules as they are.
"""
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fastembed import _index
from fastembed._interop import from_dlpack
from fastembed._options import check_padding_idx
from fastembed._threads import get_num_threads, resolve_threads
from fastembed._validation import as_ids, as_table, check_rows
from fastembed.ops import gather, scatter_add, sparse_grad

__all__ = ["Embedding", "Lookup", "embedding", "embedding_renorm_", "swap_embeddings"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# torch.embedding_renorm_ scales a row by max_norm / (norm + this), which leaves it just below max_norm.
_RENORM_EPS = 1e-7


def _threads():
    """At most torch's intra-op thread count (the lookup runs between torch ops). When torch may use every
    core, None lets fastembed's own policy keep small work on one thread."""
    n_threads = torch.get_num_threads()
    return None if n_threads >= get_num_threads() else n_threads


def _check_tensors(input, weight):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor of ids, got {type(input).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    for name, tensor in (("weight", weight), ("input", input)):
        if not tensor.is_cpu:
            raise ValueError(f"fastembed.torch runs on the CPU, but {name} is on {tensor.device}: "
                             f"use torch.nn.Embedding there, or move the module with .cpu()")
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"weight must be float32 or float64, got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}")


class Lookup(torch.autograd.Function):
    """``weight[ids]`` by fastembed's kernels, differentiable with respect to ``weight``.

    ``Lookup.apply(weight, ids, padding_idx, scale_grad_by_freq, sparse)``: weight (V, D) float32/float64,
    ids an int tensor of any shape, padding_idx a row in ``[0, V)`` or None. Returns ``ids.shape + (D,)``.

    The gradient of ``weight`` is dense (V, D), built by ``scatter_add`` into a new zero tensor, or with
    ``sparse=True`` a coalesced sparse COO tensor holding the sorted unique rows looked up (``sparse_grad``).
    Rows equal to ``padding_idx`` get no gradient; ``scale_grad_by_freq`` divides each looked-up row's
    gradient by how often its id occurs in ``ids`` (torch refuses that with ``sparse=True``; here it works).
    """

    @staticmethod
    def forward(ctx, weight, ids, padding_idx, scale_grad_by_freq, sparse):
        # numpy allocates the output: large numpy buffers are backed by huge pages, so filling a fresh one
        # costs far fewer page faults than a tensor from torch's allocator.
        out = gather(weight, ids, n_threads=_threads())
        ctx.save_for_backward(ids)
        ctx.num_rows = weight.shape[0]
        ctx.options = (padding_idx, scale_grad_by_freq, sparse)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (ids,) = ctx.saved_tensors
        padding_idx, scale_grad_by_freq, sparse = ctx.options
        num_rows, dim = ctx.num_rows, grad_out.shape[-1]
        threads = _threads()
        flat = as_ids(ids).reshape(-1)
        grad = from_dlpack(grad_out, "grad_out").reshape(flat.shape[0], dim)
        if sparse or scale_grad_by_freq:
            found = sparse_grad(flat, grad, num_rows=num_rows, n_threads=threads, padding_idx=padding_idx,
                                scale_grad_by_freq=scale_grad_by_freq)
            if sparse:
                return (torch.sparse_coo_tensor(torch.from_numpy(found.rows)[None], torch.from_numpy(found.values),
                                                (num_rows, dim), is_coalesced=True, check_invariants=False),
                        None, None, None, None)
        # numpy's zeros come from calloc (untouched pages cost nothing, touched ones are huge pages): cheaper
        # than torch.zeros, which writes every byte of a table-sized buffer.
        dense = np.zeros((num_rows, dim), dtype=grad.dtype)
        if scale_grad_by_freq:
            dense[found.rows] = found.values
        else:
            # Each row sums its positions in increasing order, as torch does: the same bits as nn.Embedding.
            scatter_add(dense, flat, grad, n_threads=threads)
            if padding_idx is not None:
                dense[padding_idx] = 0
        return torch.from_numpy(dense), None, None, None, None


def embedding_renorm_(weight, input, max_norm, norm_type=2.0):
    """In place, as ``torch.embedding_renorm_``: each distinct row of ``weight`` (V, D) looked up by
    ``input`` whose ``norm_type``-norm exceeds ``max_norm`` is scaled by ``max_norm / (norm + 1e-7)``.

    The norm is taken in the weight's dtype by torch's reduction, the factor computed in double and applied
    in the weight's dtype, as torch does: the same bits as ``torch.embedding_renorm_`` (``fastembed.renorm_``
    accumulates norms in double, so a row may differ in its last bit), and any norm_type torch accepts. Ids
    are checked before anything is written. Returns ``weight``.
    """
    table = as_table(weight, "weight", writeable=True)
    flat = as_ids(input, "input").reshape(-1)
    threads = resolve_threads(_threads(), flat.shape[0] * table.shape[1] * table.itemsize)
    check_rows(flat, table.shape[0], threads, tuple(input.shape), name="input")
    if flat.shape[0]:
        rows = _index.group_rows(flat, int(flat.max()), threads)[0]
        picked = gather(table, rows, n_threads=threads)
        # torch's own reduction, so the norms (hence the factors) have exactly torch's bits; the batched
        # norm over dim 1 equals torch's per-row norm bit for bit.
        norms = torch.linalg.vector_norm(torch.from_numpy(picked), ord=norm_type, dim=1).numpy()
        norms = norms.astype(np.float64)
        over = norms > max_norm
        if over.any():
            factor = (max_norm / (norms[over] + _RENORM_EPS)).astype(table.dtype)
            table[rows[over]] = picked[over] * factor[:, None]
    # numpy wrote behind autograd's back: bump the version as torch's in-place op would, so that a graph
    # which saved this weight (a tied output layer) refuses to backpropagate through stale values.
    if not weight.is_inference():
        torch.autograd.graph.increment_version(weight)
    return weight


@torch.compiler.disable
def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """``torch.nn.functional.embedding`` computed by fastembed: ``weight[input]``, shape ``input.shape + (D,)``.

    input: int tensor of ids in ``[0, V)`` (any shape); weight: (V, D) float32/float64 CPU tensor. With
    ``max_norm`` the looked-up rows are first renormalised in place (``embedding_renorm_``, under no_grad).
    An id out of range raises ``IndexError`` naming its position. ``torch.compile`` runs this eagerly.
    """
    _check_tensors(input, weight)
    padding_idx = check_padding_idx(padding_idx, weight.shape[0])
    if max_norm is not None:
        with torch.no_grad():
            embedding_renorm_(weight, input, max_norm, norm_type)
    return Lookup.apply(weight, input, padding_idx, bool(scale_grad_by_freq), bool(sparse))


class Embedding(torch.nn.Embedding):
    """``torch.nn.Embedding`` with fastembed's kernels: the same constructor, attributes (``weight``,
    ``padding_idx``, ``max_norm``, ``norm_type``, ``scale_grad_by_freq``, ``sparse``), ``from_pretrained``,
    ``reset_parameters``, ``extra_repr`` and ``state_dict`` keys, so either module loads the other's state.

    It subclasses ``torch.nn.Embedding`` so that code testing ``isinstance(m, nn.Embedding)`` (weight
    initialisers, model surgery) treats it the same. Only ``forward`` differs: ``embedding`` above.
    Weights must be float32/float64 on the CPU.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None, dtype=None):
        # Checked before the table is allocated and initialised.
        if _weight is not None:
            resolved = _weight.dtype       # torch.nn.Embedding ignores dtype= when _weight is given
        else:
            resolved = dtype if dtype is not None else torch.get_default_dtype()
        if resolved not in _FLOAT_DTYPES:
            raise TypeError(f"fastembed.torch.Embedding needs float32 or float64 weights, got {resolved}")
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse,
                         _weight=_weight, _freeze=_freeze, device=device, dtype=dtype)

    def forward(self, input):
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                         self.scale_grad_by_freq, self.sparse)


def _from_torch_embedding(module):
    # The same Parameter object, not a copy: optimizers built before the swap, tied weights and
    # state_dict keys all stay valid.
    swapped = Embedding(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                        max_norm=module.max_norm, norm_type=module.norm_type,
                        scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse,
                        _weight=module.weight.detach(), _freeze=not module.weight.requires_grad)
    swapped.weight = module.weight
    swapped.train(module.training)
    return swapped


# torch module type -> converter; torch.nn.EmbeddingBag joins when fastembed.torch.EmbeddingBag exists.
_SWAPS = {torch.nn.Embedding: _from_torch_embedding}


def swap_embeddings(model):
    """Replace every ``torch.nn.Embedding`` in ``model`` (recursively) by ``fastembed.torch.Embedding``.

    The new modules hold the *same* ``weight`` Parameter objects (shared, not copied), so the model's
    outputs, ``state_dict`` keys, tied weights and any optimizer already built over its parameters are
    unchanged; every option (padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, frozen weights,
    train/eval mode) is carried over. Only modules of exactly that type are replaced (a subclass may change
    ``forward``); hooks registered on the old modules are not carried. A module shared by several parents is
    replaced by one new module. Every weight is checked (CPU, float32/float64) before anything is replaced.

    Returns ``model``, or the new module when ``model`` itself is an ``nn.Embedding``.
    """
    if type(model) in _SWAPS:
        _check_swappable(model, "model")
        return _SWAPS[type(model)](model)
    targets = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if type(child) in _SWAPS:
                _check_swappable(child, f"{parent_name}.{name}" if parent_name else name)
                targets.append((parent, name, child))
    swapped = {}
    for parent, name, child in targets:
        if id(child) not in swapped:
            swapped[id(child)] = _SWAPS[type(child)](child)
        setattr(parent, name, swapped[id(child)])
    return model


def _check_swappable(module, path):
    weight = module.weight
    if weight.device.type != "cpu" or weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"cannot swap {path}: fastembed.torch needs a float32/float64 CPU weight, got "
                         f"{weight.dtype} on {weight.device}")
