"""Fused sparse optimizers: update only the rows a batch touched, straight from the batch.

Each optimizer holds a layer (``Embedding`` or ``EmbeddingBag``) and its state as plain numpy arrays:

* ``step()`` consumes ``layer.grad`` (the ``SparseGrad`` accumulated by ``layer.backward``), then clears it;
* ``fused_step(ids, grad_out)`` (bags: ``fused_step(ids, grad_out, offsets=..., per_sample_weights=...)``)
  does the same update straight from the batch: ids are grouped by row and every touched row is reduced
  and updated once by one thread, without materialising a ``SparseGrad`` or anything of size V x D. It
  gives the same bits as ``layer.backward(...)`` followed by ``step()``, for any thread count.

Hyper-parameters mean what they mean in ``torch.optim``; the arithmetic follows it operation by operation.
Where the two differ, fastembed is lazy: only rows with a gradient in the batch change, so weight decay and
SGD momentum apply to touched rows only (with sparse gradients ``torch.optim.SGD`` and ``Adagrad`` refuse
weight decay, and SGD's momentum keeps moving every row its buffer has seen); with every row in every batch
both give PyTorch's dense results. ``SparseAdam`` matches PyTorch
exactly, including its single step count per table (bias correction uses the number of steps taken, not the
number of times a row was touched). A frozen layer (``trainable=False``) is never updated.
"""
import math

import numpy as np

from fastembed import _optim, checkpoint
from fastembed._plan import lookup_plan, row_plan
from fastembed._validation import as_float
from fastembed.bags import EmbeddingBag
from fastembed.ops import sparse_grad

# The update each kernel call applies (``_optim.fused_update``'s ``kind``).
SGD_KIND, ADAGRAD_KIND, ROWWISE_ADAGRAD_KIND, SPARSE_ADAM_KIND = 0, 1, 2, 3
_NO_STATE = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def _non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"Invalid {name}: {value} (must be finite and >= 0)")
    return value


def _json_value(value):
    """A hyper-parameter as JSON holds it (betas are a pair)."""
    return list(value) if isinstance(value, tuple) else value


def _beta(value, index):
    value = _non_negative(value, f"beta parameter at index {index}")
    if value >= 1.0:
        raise ValueError(f"Invalid beta parameter at index {index}: {value} (must be in [0, 1))")
    return value


def apply_plan(kind, table, states, plan, lr, step_size=0.0, momentum=0.0, beta1=0.0, beta2=0.0, eps=0.0,
               weight_decay=0.0):
    """Update the rows of ``plan`` (a ``GradPlan``) of ``table`` (V, D) and their state, in place.

    kind: ``SGD_KIND``, ``ADAGRAD_KIND``, ``ROWWISE_ADAGRAD_KIND`` or ``SPARSE_ADAM_KIND``. states: the
    method's state arrays (none, one or two), each flattened to (V * D,) (row-wise Adagrad: (V,)), the table's
    dtype. step_size: SparseAdam's bias-corrected step. The caller has checked shapes, dtypes and contiguity.
    """
    state1, state2 = (list(states) + [_NO_STATE[table.dtype]] * 2)[:2]
    scratch = np.empty((plan.threads, _optim.BLOCK_ROWS * table.shape[1]), table.dtype)
    _optim.fused_update(kind, table, state1, state2, plan.rows, *plan.kernel_args(), lr, momentum, beta1, beta2,
                        eps, weight_decay, step_size, scratch, plan.threads)


class SparseOptimizer:
    """The shared machinery; subclasses name their hyper-parameters and state arrays."""

    kind = None
    hyper_names = ("lr",)

    def __init__(self, layer, **hyper):
        if getattr(layer, "storage", "float32") not in ("float32", "float64"):
            raise ValueError(f"a {layer.storage} table is for inference: an optimizer needs float32 or float64 "
                             f"storage")
        table = getattr(layer, "embeddings", None)
        if not isinstance(table, np.ndarray) or table.ndim != 2 or not hasattr(layer, "trainable"):
            raise TypeError(f"an optimizer needs a layer with a 2-D table (Embedding or EmbeddingBag), "
                            f"got {type(layer).__name__}")
        self.layer = layer
        self._set_hyper(**hyper)
        self._allocate_state()

    # --- state -----------------------------------------------------------------------------------------
    def _state_shapes(self):
        """``{name: shape}`` of the state arrays this optimizer keeps with its current hyper-parameters."""
        return {}

    def _initial_value(self, name):
        return 0.0

    def _allocate_state(self):
        table = self.layer.embeddings
        self.state = {name: np.full(shape, self._initial_value(name), dtype=table.dtype)
                      for name, shape in self._state_shapes().items()}

    def state_dict(self):
        """Hyper-parameters and state as numpy arrays (``np.savez(path, **opt.state_dict())`` saves it).

        The state arrays are the optimizer's own (as in PyTorch): copy them to keep a snapshot while training.
        """
        out = {"optimizer": np.asarray(type(self).__name__)}
        for name in self.hyper_names:
            out[name] = np.asarray(getattr(self, name))
        out.update(self.state)
        return out

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by ``state_dict`` (arrays are copied in, cast to the table's
        dtype). Every key, hyper-parameter, shape and dtype is checked first: a failed load changes nothing."""
        saved = dict(state_dict)
        name = str(np.asarray(saved.pop("optimizer", "")))
        if name != type(self).__name__:
            raise ValueError(f"this state is for {name or 'an unknown optimizer'}, not {type(self).__name__}")
        missing = [key for key in self.hyper_names if key not in saved]
        if missing:
            raise KeyError(f"the state has no {', '.join(missing)}")
        hyper = {key: np.asarray(saved.pop(key)).tolist() for key in self.hyper_names}
        self._restore(hyper, saved, exact_dtype=False)

    def save(self, path):
        """Write the hyper-parameters and state arrays to ``path`` (.npz), atomically and with checksums (see
        ``fastembed.checkpoint``): an interrupted save leaves the previous file intact. The layer's table is not
        in it (``layer.save`` writes that); the file records the table's shape and dtype. Returns ``path``."""
        table = self.layer.embeddings
        hyper = {name: _json_value(getattr(self, name)) for name in self.hyper_names}
        meta = {"class": type(self).__name__, "hyper": hyper,
                "table": {"shape": list(table.shape), "dtype": table.dtype.name}}
        return checkpoint.save_arrays(path, self.state, meta)

    def load(self, path):
        """Restore what ``save`` wrote: hyper-parameters and state, into an optimizer of the same class whose
        layer has a table of the same shape and dtype.

        Raises ``checkpoint.CheckpointError`` (a ``ValueError``) naming the file and the problem when it is
        damaged, not an optimizer's, another optimizer's, or for another table; ``FileNotFoundError`` when it
        is missing. A failed load changes nothing.
        """
        arrays, meta = checkpoint.load_arrays(path)
        kind = meta.get("class")
        if kind != type(self).__name__:
            raise checkpoint.CheckpointError(f"{path}: holds the state of {kind!r}, not of {type(self).__name__!r}")
        table = self.layer.embeddings
        saved_table = meta.get("table")
        expected = {"shape": list(table.shape), "dtype": table.dtype.name}
        if saved_table != expected:
            described = (f"a {tuple(saved_table['shape'])} {saved_table['dtype']} table"
                         if isinstance(saved_table, dict) and isinstance(saved_table.get("shape"), list)
                         and "dtype" in saved_table else
                         f"an unknown table ({saved_table!r})")
            raise checkpoint.CheckpointError(f"{path}: the state is for {described}, this optimizer's layer has a "
                                             f"{table.shape} {table.dtype} table")
        hyper = meta.get("hyper")
        if not isinstance(hyper, dict) or set(hyper) != set(self.hyper_names):
            raise checkpoint.CheckpointError(f"{path}: the hyper-parameters are {hyper!r}, {type(self).__name__} "
                                             f"has {', '.join(self.hyper_names)}")
        try:
            self._restore(hyper, arrays, exact_dtype=True)
        except (KeyError, TypeError, ValueError) as error:
            message = error.args[0] if error.args else error
            raise checkpoint.CheckpointError(f"{path}: {message}") from None

    def _restore(self, hyper, arrays, exact_dtype):
        """Set ``hyper`` and copy in the state ``arrays`` once both fit; on any error nothing has changed."""
        previous = {key: getattr(self, key) for key in self.hyper_names}
        dtype = self.layer.embeddings.dtype
        try:
            self._set_hyper(**hyper)
            shapes = self._state_shapes()
            missing = [key for key in shapes if key not in arrays]
            if missing:
                raise KeyError(f"the state has no {', '.join(map(repr, missing))}")
            unexpected = sorted(set(arrays) - set(shapes))
            if unexpected:
                raise KeyError(f"the state has unexpected arrays {unexpected} ({type(self).__name__} with these "
                               f"hyper-parameters keeps {sorted(shapes) or 'none'})")
            for key, shape in shapes.items():
                array = arrays[key]
                array_dtype = getattr(array, "dtype", None)
                if array_dtype is None:
                    raise TypeError(f"state {key!r} must be an array, got {type(array).__name__}")
                if (array_dtype != dtype) if exact_dtype else (array_dtype.kind != "f"):
                    raise TypeError(f"state {key!r} must have dtype {dtype if exact_dtype else 'float'}, "
                                    f"got {array_dtype}")
                if np.shape(array) != shape:
                    raise ValueError(f"state {key!r} must have shape {shape}, got {np.shape(array)}")
        except (KeyError, ValueError, TypeError):
            self._set_hyper(**previous)
            raise
        self.state = {key: np.array(arrays[key], dtype=dtype, order="C", copy=True) for key in shapes}

    def _set_hyper(self, **hyper):
        """Validate and set the hyper-parameters named in ``hyper_names``."""
        raise NotImplementedError

    # --- updates ---------------------------------------------------------------------------------------
    def zero_grad(self):
        """Clear the layer's accumulated gradient."""
        self.layer.grad = None

    def step(self, n_threads=None):
        """Update the rows of ``layer.grad`` (from ``layer.backward``), then clear it."""
        layer = self.layer
        grad = layer.grad
        if grad is None or not layer.trainable:
            layer.grad = None
            return
        table = layer.embeddings
        if grad.dim != table.shape[1]:
            raise ValueError(f"layer.grad has width {grad.dim} but the table has width {table.shape[1]}")
        # Checked (rows, table, state) before it is consumed: a step that raises leaves layer.grad in place.
        self._apply(self._plan_of(grad, n_threads))
        layer.grad = None

    def _plan_of(self, grad, n_threads):
        """A plan that applies a ``SparseGrad`` as it is: one term per row."""
        table = self.layer.embeddings
        return row_plan(np.asarray(grad.rows, dtype=np.int64), np.ascontiguousarray(grad.values, dtype=table.dtype),
                        table.shape[0], n_threads)

    def fused_step(self, ids, grad_out, offsets=None, per_sample_weights=None, n_threads=None):
        """Backward and update in one pass, from one batch.

        Embedding: ids any shape, grad_out ``ids.shape + (D,)``. EmbeddingBag: ids/offsets as for the layer's
        call, grad_out (B, D), with the layer's mode, padding_idx and scale_grad_by_freq (max mode finds its
        arg-max in the table before updating it). An Embedding's ``out_of_range`` policy applies as in its
        ``backward``. ``layer.grad`` is neither read nor changed.
        """
        layer = self.layer
        if isinstance(layer, EmbeddingBag):
            plan = layer._grad_plan(ids, offsets, grad_out, per_sample_weights, n_threads)
        else:
            if offsets is not None or per_sample_weights is not None:
                raise TypeError("offsets and per_sample_weights apply to an EmbeddingBag layer only")
            checked = layer._checked_ids(ids) if hasattr(layer, "_checked_ids") else ids
            clip = layer._clip_options() if hasattr(layer, "_clip_options") else {}
            if clip:
                # Clipped output rows: the gradient needs the clip's derivative, which sparse_grad applies.
                grad = sparse_grad(checked, as_float(grad_out, "grad_out", dtype=layer.embeddings.dtype),
                                   num_rows=layer.embeddings.shape[0], n_threads=n_threads,
                                   padding_idx=layer.padding_idx, scale_grad_by_freq=layer.scale_grad_by_freq,
                                   table=layer.embeddings, out_of_range=layer.out_of_range, **clip)
                if layer.trainable:
                    self._apply(self._plan_of(grad, n_threads))
                return
            plan = lookup_plan(checked, grad_out, layer.embeddings.shape[0], layer.embeddings.dtype,
                               padding_idx=getattr(layer, "padding_idx", None),
                               scale_grad_by_freq=getattr(layer, "scale_grad_by_freq", False), n_threads=n_threads,
                               out_of_range=getattr(layer, "out_of_range", "raise"))
        if plan.grad.shape[1] != layer.embeddings.shape[1]:
            raise ValueError(f"grad_out has width {plan.grad.shape[1]} but the table has width "
                             f"{layer.embeddings.shape[1]}")
        if layer.trainable:
            self._apply(plan)

    def _advance(self):
        """Count one more update; return the scalar the kernel needs beyond the hyper-parameters."""
        return 0.0

    def _apply(self, plan):
        table = self.layer.embeddings
        if not (table.flags.c_contiguous and table.flags.writeable):
            raise ValueError("the layer's table must be a writeable C-contiguous array to be updated in place")
        for name, shape in self._state_shapes().items():
            array = self.state.get(name)
            if array is None or array.shape != shape or array.dtype != table.dtype:
                raise ValueError(f"state {name!r} does not fit the layer's table {table.shape} {table.dtype}: "
                                 f"was the table replaced? Create the optimizer again")
        step_size = self._advance()
        apply_plan(self.kind, table, [self.state[name].reshape(-1) for name in self._state_shapes()], plan,
                   self.lr, step_size, **self._kernel_hyper())

    def _kernel_hyper(self):
        return {}

    def __repr__(self):
        hyper = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.hyper_names)
        return f"{type(self).__name__}({hyper}, layer={getattr(self.layer, 'name', type(self.layer).__name__)!r})"


class SGD(SparseOptimizer):
    """``w -= lr * g`` on touched rows; with momentum, ``buf = momentum * buf + g; w -= lr * buf`` (PyTorch's
    form, dampening 0), lazily: a row's buffer only decays and applies when the row is in the batch.
    weight_decay adds ``weight_decay * w`` to the gradient of touched rows."""

    kind = SGD_KIND
    hyper_names = ("lr", "momentum", "weight_decay")

    def __init__(self, layer, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(layer, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def _set_hyper(self, lr, momentum, weight_decay):
        self.lr = _non_negative(lr, "learning rate")
        self.momentum = _non_negative(momentum, "momentum value")
        self.weight_decay = _non_negative(weight_decay, "weight_decay value")

    def _state_shapes(self):
        return {"momentum_buffer": self.layer.embeddings.shape} if self.momentum else {}

    def _kernel_hyper(self):
        return {"momentum": self.momentum, "weight_decay": self.weight_decay}


class Adagrad(SparseOptimizer):
    """PyTorch's Adagrad on touched rows: ``sum += g^2; w -= lr * g / (sqrt(sum) + eps)`` element-wise
    (lr_decay 0), the accumulator starting at ``initial_accumulator_value``; weight_decay adds
    ``weight_decay * w`` to the gradient of touched rows. State: ``sum`` (V, D)."""

    kind = ADAGRAD_KIND
    hyper_names = ("lr", "eps", "initial_accumulator_value", "weight_decay")

    def __init__(self, layer, lr, eps=1e-10, initial_accumulator_value=0.0, weight_decay=0.0):
        super().__init__(layer, lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                         weight_decay=weight_decay)

    def _set_hyper(self, lr, eps, initial_accumulator_value, weight_decay):
        self.lr = _non_negative(lr, "learning rate")
        self.eps = _non_negative(eps, "epsilon value")
        self.initial_accumulator_value = _non_negative(initial_accumulator_value, "initial_accumulator_value")
        self.weight_decay = _non_negative(weight_decay, "weight_decay value")

    def _state_shapes(self):
        return {"sum": self.layer.embeddings.shape}

    def _initial_value(self, name):
        return self.initial_accumulator_value

    def _kernel_hyper(self):
        return {"eps": self.eps, "weight_decay": self.weight_decay}


class RowWiseAdagrad(SparseOptimizer):
    """Adagrad with one accumulator per row (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``, its default for large
    tables): ``sum[r] += mean(g^2); w -= lr * g / (sqrt(sum[r]) + eps)``; weight_decay adds
    ``weight_decay * w`` to the gradient first (FBGEMM's L2 mode). State: ``sum`` (V,)."""

    kind = ROWWISE_ADAGRAD_KIND
    hyper_names = ("lr", "eps", "weight_decay")

    def __init__(self, layer, lr, eps=1e-10, weight_decay=0.0):
        super().__init__(layer, lr=lr, eps=eps, weight_decay=weight_decay)

    def _set_hyper(self, lr, eps, weight_decay):
        self.lr = _non_negative(lr, "learning rate")
        self.eps = _non_negative(eps, "epsilon value")
        self.weight_decay = _non_negative(weight_decay, "weight_decay value")

    def _state_shapes(self):
        return {"sum": self.layer.embeddings.shape[:1]}

    def _kernel_hyper(self):
        return {"eps": self.eps, "weight_decay": self.weight_decay}


class SparseAdam(SparseOptimizer):
    """PyTorch's ``SparseAdam`` ("lazy Adam"): the moments of touched rows only are updated,
    ``m += (g - m) * (1 - b1); v += (g^2 - v) * (1 - b2)``, and those rows move by
    ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, where t counts the optimizer's steps (one
    count per table, as in PyTorch, incremented by every ``step()`` that finds a gradient and every
    ``fused_step``, even an empty one). State: ``exp_avg``, ``exp_avg_sq`` (V, D) and ``step``."""

    kind = SPARSE_ADAM_KIND
    hyper_names = ("lr", "betas", "eps", "step_count")

    def __init__(self, layer, lr, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(layer, lr=lr, betas=betas, eps=eps, step_count=0)

    def _set_hyper(self, lr, betas, eps, step_count):
        self.lr = _non_negative(lr, "learning rate")
        try:
            betas = tuple(betas)
        except TypeError:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_beta(betas[0], 0), _beta(betas[1], 1))
        self.eps = _non_negative(eps, "epsilon value")
        if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"step_count must be a non-negative int, got {step_count!r}")
        self.step_count = int(step_count)

    def _state_shapes(self):
        shape = self.layer.embeddings.shape
        return {"exp_avg": shape, "exp_avg_sq": shape}

    def _advance(self):
        """One more step; returns the bias-corrected step size."""
        self.step_count += 1
        beta1, beta2 = self.betas
        return self.lr * math.sqrt(1 - beta2 ** self.step_count) / (1 - beta1 ** self.step_count)

    def _kernel_hyper(self):
        return {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps}
