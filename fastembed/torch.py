"""PyTorch integration: ``Embedding`` and ``EmbeddingBag``, drop-ins for ``torch.nn.Embedding`` and
``torch.nn.EmbeddingBag`` on the CPU, and ``SGD``, ``Adagrad``, ``SparseAdam``, drop-ins for the
``torch.optim`` classes that apply sparse gradients with fastembed's fused row kernels.

``import fastembed.torch`` is the only place fastembed imports torch (an optional extra). Everything here
works on the tensors' own memory through numpy views: the forward pass is fastembed's ``gather`` (bags: its
bag kernels) into a new tensor, the backward pass ``scatter_add`` into a new zero tensor (dense) or
``sparse_grad`` (``sparse=True``, a coalesced COO tensor that optimizers use without sorting it again); the
optimizers update the weight and their state tensors in place.

Limits: CPU tensors of float32/float64 only (a clear error otherwise); the kernels run with
``torch.get_num_threads()`` threads; ``torch.compile`` runs the lookup eagerly (a graph break, so
``fullgraph=True`` refuses it) and TorchScript cannot script it; the backward pass is not itself
differentiable (no double backward).
"""
import math
import weakref

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fastembed import _index
from fastembed._interop import from_dlpack
from fastembed._options import check_padding_idx
from fastembed._plan import bag_plan, row_plan
from fastembed._threads import get_num_threads, resolve_threads
from fastembed._validation import as_ids, as_table, check_rows
from fastembed.bags import _pool, check_mode, prepare_bags
from fastembed.ops import gather, scatter_add, sparse_grad
from fastembed.optim import ADAGRAD_KIND, SGD_KIND, SPARSE_ADAM_KIND, apply_plan

__all__ = ["SGD", "Adagrad", "BagLookup", "Embedding", "EmbeddingBag", "Lookup", "SparseAdam", "embedding",
           "embedding_bag", "embedding_renorm_", "swap_embeddings"]

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


def _sparse_weight_grad(found, num_rows, weight_ref):
    """A ``SparseGrad`` as a (num_rows, D) sparse COO tensor sharing its arrays, marked coalesced (its rows are
    sorted and unique) so that optimizers use it without sorting it again."""
    grad = torch.sparse_coo_tensor(torch.from_numpy(found.rows)[None], torch.from_numpy(found.values),
                                   (num_rows, found.values.shape[1]), is_coalesced=True, check_invariants=False)
    weight = weight_ref()
    if weight is not None and id(weight) in _COALESCED_MARKS:
        _COALESCED_MARKS[id(weight)] = _identity(grad)
    return grad


# id of a leaf weight with sparse gradients (an entry lives as long as its weight) -> the identity of the last
# coalesced gradient made for it. Autograd stores a fresh sparse gradient in ``.grad`` as a shallow copy that
# drops the coalesced flag, so torch's optimizers would sort it again; a hook puts the flag back when ``.grad``
# is exactly that gradient.
_COALESCED_MARKS = {}


def _identity(grad):
    return grad._indices().data_ptr(), grad._values().data_ptr(), grad._nnz()


def _keep_coalesced_flag(weight):
    """Watch a leaf weight that gets sparse gradients from this module (once per weight)."""
    if weight.is_leaf and weight.requires_grad and id(weight) not in _COALESCED_MARKS:
        _COALESCED_MARKS[id(weight)] = None
        weakref.finalize(weight, _COALESCED_MARKS.pop, id(weight), None)
        weight.register_post_accumulate_grad_hook(_restore_coalesced_flag)


def _restore_coalesced_flag(weight):
    mark, _COALESCED_MARKS[id(weight)] = _COALESCED_MARKS.get(id(weight)), None
    grad = weight.grad
    # A sum of several backward passes (or a gradient from elsewhere) has other buffers: left as it is.
    if mark is not None and grad is not None and grad.is_sparse and not grad.is_coalesced() and \
            _identity(grad) == mark:
        grad._coalesced_(True)


def _dense_weight_grad(found, num_rows):
    # numpy's zeros come from calloc (untouched pages cost nothing, touched ones are huge pages): cheaper
    # than torch.zeros, which writes every byte of a table-sized buffer.
    dense = np.zeros((num_rows, found.values.shape[1]), dtype=found.values.dtype)
    dense[found.rows] = found.values
    return torch.from_numpy(dense)


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
        ctx.weight_ref = weakref.ref(weight)
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
                return _sparse_weight_grad(found, num_rows, ctx.weight_ref), None, None, None, None
            return _dense_weight_grad(found, num_rows), None, None, None, None
        dense = np.zeros((num_rows, dim), dtype=grad.dtype)    # calloc: see _dense_weight_grad
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
    if sparse:
        _keep_coalesced_flag(weight)
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
        _check_float_dtype(type(self), _weight, dtype)
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse,
                         _weight=_weight, _freeze=_freeze, device=device, dtype=dtype)

    def forward(self, input):
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                         self.scale_grad_by_freq, self.sparse)


class BagLookup(torch.autograd.Function):
    """Pooled bags by fastembed's kernels, differentiable with respect to the weight and the per-sample weights.

    ``BagLookup.apply(weight, per_sample_weights, bags, scale_grad_by_freq, sparse)``: weight (V, D)
    float32/float64; per_sample_weights (N,) of the weight's dtype or None; bags the validated batch
    (``fastembed.bags.prepare_bags``, whose ``weights`` are per_sample_weights' values). Returns (B, D).

    The weight's gradient is ``fastembed.embedding_bag_backward``'s: dense (V, D), or with ``sparse=True`` a
    coalesced sparse COO tensor of the sorted unique rows looked up (``padding_idx`` left out). In sum mode the
    gradient of per-sample weight i is ``<grad_out[bag of i], weight[ids[i]]>`` (0 for padding ids).
    """

    @staticmethod
    def forward(ctx, weight, per_sample_weights, bags, scale_grad_by_freq, sparse):
        out = _pool(np.ascontiguousarray(as_table(weight, "weight")), bags, "zeros")
        # The weight is only read again for max mode's arg-max and the per-sample weights' gradient; saving it
        # makes autograd refuse a backward pass after it was changed in place.
        needs_weight = bags.mode == "max" or (per_sample_weights is not None and per_sample_weights.requires_grad)
        ctx.save_for_backward(weight if needs_weight else None)
        ctx.bags, ctx.options, ctx.weight_ref = bags, (scale_grad_by_freq, sparse), weakref.ref(weight)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        bags = ctx.bags
        scale_grad_by_freq, sparse = ctx.options
        grad = from_dlpack(grad_out, "grad_out")
        table = None if weight is None else np.ascontiguousarray(as_table(weight, "weight"))
        grad_weight = grad_weights = None
        if ctx.needs_input_grad[0]:
            found = bag_plan(bags, grad, grad.dtype, scale_grad_by_freq, table).sparse_grad()
            if sparse:
                grad_weight = _sparse_weight_grad(found, bags.num_rows, ctx.weight_ref)
            else:
                grad_weight = _dense_weight_grad(found, bags.num_rows)
        if ctx.needs_input_grad[1]:
            rows = torch.from_numpy(gather(table, bags.ids, n_threads=bags.threads))
            bag_of = torch.from_numpy(np.repeat(np.arange(bags.n_bags), np.diff(bags.offsets)))
            grad_weights = torch.linalg.vecdot(rows, grad_out[bag_of])
            if bags.padding >= 0:
                grad_weights[torch.from_numpy(bags.ids == bags.padding)] = 0
            grad_weights = grad_weights.reshape(bags.shape)
        return grad_weight, grad_weights, None, None, None


@torch.compiler.disable
def embedding_bag(input, weight, offsets=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                  mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False, padding_idx=None):
    """``torch.nn.functional.embedding_bag`` computed by fastembed: each bag's rows of ``weight`` pooled.

    input: (N,) int tensor with ``offsets``, the (B,) bag starts, or (B + 1,) ending with N when
    ``include_last_offset``; or (B, L) fixed-length bags with ``offsets=None``. weight: (V, D) float32/float64
    CPU tensor. mode: ``"sum"``, ``"mean"``, ``"max"`` (or fastembed's ``"sqrtn"``). per_sample_weights:
    input's shape, the weight's dtype, sum mode only (as in torch). padding_idx: ids equal to it are skipped
    and not counted; an empty bag gives zeros. With ``max_norm`` the looked-up rows are first renormalised in
    place (``embedding_renorm_``). Returns (B, D). ``torch.compile`` runs this eagerly.
    """
    _check_tensors(input, weight)
    check_mode(mode)
    if per_sample_weights is not None:
        if mode != "sum":
            raise NotImplementedError(f"per_sample_weights is only supported for mode='sum' (got mode={mode!r}), "
                                      f"as in torch.nn.functional.embedding_bag")
        if not isinstance(per_sample_weights, torch.Tensor) or per_sample_weights.dtype != weight.dtype:
            got = getattr(per_sample_weights, "dtype", type(per_sample_weights).__name__)
            raise TypeError(f"per_sample_weights must be a tensor of the weight's dtype {weight.dtype}, got {got}")
    if offsets is not None and not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a torch.Tensor or None, got {type(offsets).__name__}")
    bags = prepare_bags(input, offsets, per_sample_weights, mode, padding_idx, include_last_offset, weight.shape[0],
                        weight.shape[1], weight.element_size(), _threads())
    if max_norm is not None:
        with torch.no_grad():
            embedding_renorm_(weight, input, max_norm, norm_type)
    if sparse:
        _keep_coalesced_flag(weight)
    return BagLookup.apply(weight, per_sample_weights, bags, bool(scale_grad_by_freq), bool(sparse))


def _check_float_dtype(cls, _weight, dtype):
    """Before the table is allocated: fastembed's kernels need float32 or float64 weights."""
    if _weight is not None:
        resolved = _weight.dtype       # torch ignores dtype= when _weight is given
    else:
        resolved = dtype if dtype is not None else torch.get_default_dtype()
    if resolved not in _FLOAT_DTYPES:
        raise TypeError(f"fastembed.torch.{cls.__name__} needs float32 or float64 weights, got {resolved}")


class EmbeddingBag(torch.nn.EmbeddingBag):
    """``torch.nn.EmbeddingBag`` with fastembed's kernels: the same constructor, attributes (``weight``,
    ``max_norm``, ``norm_type``, ``scale_grad_by_freq``, ``mode``, ``sparse``, ``include_last_offset``,
    ``padding_idx``), ``from_pretrained``, ``reset_parameters``, ``extra_repr`` and ``state_dict`` keys, so either
    module loads the other's state. ``forward(input, offsets=None, per_sample_weights=None)`` is
    ``embedding_bag`` above. Weights must be float32/float64 on the CPU.
    """

    def __init__(self, num_embeddings, embedding_dim, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                 mode="mean", sparse=False, _weight=None, include_last_offset=False, padding_idx=None, device=None,
                 dtype=None):
        _check_float_dtype(type(self), _weight, dtype)
        check_mode(mode)
        super().__init__(num_embeddings, embedding_dim, max_norm=max_norm, norm_type=norm_type,
                         scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse, _weight=_weight,
                         include_last_offset=include_last_offset, padding_idx=padding_idx, device=device,
                         dtype=dtype)

    def forward(self, input, offsets=None, per_sample_weights=None):
        return embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                             self.mode, self.sparse, per_sample_weights, self.include_last_offset, self.padding_idx)


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


def _from_torch_embedding_bag(module):
    swapped = EmbeddingBag(module.num_embeddings, module.embedding_dim, max_norm=module.max_norm,
                           norm_type=module.norm_type, scale_grad_by_freq=module.scale_grad_by_freq, mode=module.mode,
                           sparse=module.sparse, _weight=module.weight.detach(),
                           include_last_offset=module.include_last_offset, padding_idx=module.padding_idx)
    swapped.weight = module.weight
    swapped.train(module.training)
    return swapped


# torch module type -> converter.
_SWAPS = {torch.nn.Embedding: _from_torch_embedding, torch.nn.EmbeddingBag: _from_torch_embedding_bag}


def swap_embeddings(model):
    """Replace every ``torch.nn.Embedding`` and ``torch.nn.EmbeddingBag`` in ``model`` (recursively) by
    ``fastembed.torch.Embedding`` and ``fastembed.torch.EmbeddingBag``.

    The new modules hold the *same* ``weight`` Parameter objects (shared, not copied), so the model's
    outputs, ``state_dict`` keys, tied weights and any optimizer already built over its parameters are
    unchanged; every option (padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, mode,
    include_last_offset, frozen weights, train/eval mode) is carried over. Only modules of exactly those types
    are replaced (a subclass may change ``forward``); hooks registered on the old modules are not carried. A
    module shared by several parents is replaced by one new module. Every weight is checked (CPU,
    float32/float64) before anything is replaced.

    Returns ``model``, or the new module when ``model`` itself is an ``nn.Embedding`` or ``nn.EmbeddingBag``.
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


def _unhooked(step):
    """The torch class's own ``step``: torch.optim wraps a class's ``step`` in its hook runner once the class has
    an instance (marked ``hooked``), and torch.compile may wrap that again (copying the mark); the hooks must run
    once, around the whole step, not again around the fallback."""
    while getattr(step, "hooked", False):
        step = step.__wrapped__
    return step


def _state_fits(param, tensor):
    return (isinstance(tensor, torch.Tensor) and tensor.dtype == param.dtype and tensor.shape == param.shape
            and tensor.is_cpu and tensor.is_contiguous() and not tensor.requires_grad)


class _FusedSparseStep:
    """Mixed into a ``torch.optim`` class: a parameter whose gradient is a sparse COO tensor (a 2-D float32/float64
    contiguous CPU weight, e.g. an embedding table with ``sparse=True``) is updated in place by fastembed's fused
    row kernel (``fastembed.optim.apply_plan``) on numpy views of the weight and of the optimizer's own state
    tensors; every other parameter, and any option the kernel does not cover, goes to the torch class's ``step``.

    The state (``self.state``, ``state_dict``) keeps the torch class's layout, so either class loads the other's.
    A coalesced gradient (``fastembed.torch`` modules make one) is applied as it is; an uncoalesced one (torch's
    own modules) is grouped by row first, duplicates summed in position order, instead of ``coalesce()``.
    """

    @torch.compiler.disable
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused = []
        with torch.no_grad():
            for group in self.param_groups:
                if not self._fusable_group(group):
                    continue
                for param in group["params"]:
                    grad = param.grad
                    if grad is not None and self._fusable(param, grad) and self._fused_update(param, grad, group):
                        fused.append((param, grad))
        # The torch step skips parameters without a gradient: hide the ones done here from it.
        for param, _ in fused:
            param.grad = None
        try:
            _unhooked(super().step.__func__)(self)
        finally:
            for param, grad in fused:
                param.grad = grad
        return loss

    @staticmethod
    def _fusable(param, grad):
        return (grad.layout == torch.sparse_coo and param.dtype in _FLOAT_DTYPES and grad.dtype == param.dtype
                and param.dim() == 2 and grad.shape == param.shape and grad.sparse_dim() == 1 and param.is_cpu
                and param.is_contiguous())

    @staticmethod
    def _lr(group):
        lr = group["lr"]
        return float(lr) if not isinstance(lr, torch.Tensor) else float(lr.item())

    @staticmethod
    def _apply(kind, param, grad, states, lr, **hyper):
        """Apply ``grad`` to ``param`` and its ``states`` (tensors shaped like it) with the kernel ``kind``."""
        rows = grad._indices()[0].numpy()
        values = np.ascontiguousarray(grad._values().numpy())
        table = param.detach().numpy()
        plan = row_plan(rows, values, table.shape[0], _threads())
        apply_plan(kind, table, [state.numpy().reshape(-1) for state in states], plan, lr, **hyper)
        # Written through numpy: bump the version as torch's in-place update would.
        torch.autograd.graph.increment_version(param)


class SGD(_FusedSparseStep, torch.optim.SGD):
    """``torch.optim.SGD`` (same constructor, state and results) whose update of a sparse gradient runs in
    fastembed's fused row kernel: ``w[r] -= lr * g[r]`` for the rows r in the gradient. With momentum, weight
    decay, ``maximize`` or a differentiable step the parameter goes to ``torch.optim.SGD``'s own step."""

    @staticmethod
    def _fusable_group(group):
        return (group["momentum"] == 0 and group["weight_decay"] == 0 and not group["maximize"]
                and not group.get("differentiable") and not group.get("fused")
                and not (isinstance(group["lr"], torch.Tensor) and group["lr"].requires_grad))

    def _fused_update(self, param, grad, group):
        self._apply(SGD_KIND, param, grad, [], self._lr(group))
        return True


class Adagrad(_FusedSparseStep, torch.optim.Adagrad):
    """``torch.optim.Adagrad`` (same constructor, state and results, ``lr_decay`` included) whose update of a
    sparse gradient runs in fastembed's fused row kernel: ``sum[r] += g[r]^2; w[r] -= clr * g[r] / (sqrt(sum[r])
    + eps)`` for the rows r in the gradient. With ``maximize``, ``fused`` or a differentiable step the parameter
    goes to ``torch.optim.Adagrad``'s own step (as does weight decay, which torch refuses for sparse gradients)."""

    @staticmethod
    def _fusable_group(group):
        return (group["weight_decay"] == 0 and not group["maximize"] and not group.get("differentiable")
                and not group.get("fused"))

    def _fused_update(self, param, grad, group):
        state = self.state[param]
        if not _state_fits(param, state.get("sum")) or not isinstance(state.get("step"), torch.Tensor):
            return False
        state["step"] += 1
        step = state["step"].item()
        clr = self._lr(group) / (1 + (step - 1) * group["lr_decay"])
        self._apply(ADAGRAD_KIND, param, grad, [state["sum"]], clr, eps=group["eps"])
        return True


class SparseAdam(_FusedSparseStep, torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` (same constructor, state and results) whose update runs in fastembed's fused row
    kernel: the moments and weights of the rows in the gradient only, with torch's single step count per
    parameter. With ``maximize`` the parameter goes to ``torch.optim.SparseAdam``'s own step."""

    @staticmethod
    def _fusable_group(group):
        return not group["maximize"]

    def _fused_update(self, param, grad, group):
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if not (_state_fits(param, state["exp_avg"]) and _state_fits(param, state["exp_avg_sq"])):
            return False
        state["step"] += 1
        beta1, beta2 = group["betas"]
        step = state["step"]
        step_size = self._lr(group) * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        self._apply(SPARSE_ADAM_KIND, param, grad, [state["exp_avg"], state["exp_avg_sq"]], self._lr(group),
                    step_size=step_size, beta1=beta1, beta2=beta2, eps=group["eps"])
        return True
