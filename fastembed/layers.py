"""``Embedding``: a Keras-style embedding layer over fastembed's kernels."""
import numpy as np

from fastembed import _out_of_range, checkpoint, initializers
from fastembed._validation import (
    FLOAT_DTYPES,
    as_float,
    as_ids,
    check_finite_scalar,
    check_positive_int,
    check_table_size,
)
from fastembed.ops import gather, sparse_grad


class Embedding:
    """Turns integer ids into dense vectors: ``layer(ids)[..., :] == layer.embeddings[ids[...], :]``.

    Args:
        input_dim: vocabulary size V (ids must lie in ``[0, V)``).
        output_dim: vector width D.
        embeddings_initializer: a name (``"uniform"`` ±0.05 as in Keras, ``"normal"``,
            ``"truncated_normal"``, ``"glorot_uniform"``, ``"zeros"``, ``"ones"``, ``"constant"``), a
            ``(V, D)`` matrix, an ``initializers.Initializer`` or a callable ``f(shape, dtype)``.
        mask_zero: id 0 is padding; ``compute_mask(ids)`` returns ``ids != 0``.
        trainable: False freezes the table: no gradient is kept and ``step`` changes nothing.
        weights: the initial ``(V, D)`` matrix, or Keras' one-element list ``[matrix]``.
        input_length: when given, the ids' last axis must have this length.
        dtype: ``"float32"`` or ``"float64"``.
        seed: makes random initialisation reproducible.
        name: a label for ``repr``.
        out_of_range: what an id outside ``[0, input_dim)`` does, in the call and in ``backward``:
            ``"raise"`` (an ``IndexError``), ``"clip"`` (reads, and trains, the nearest row), ``"zero"`` (a zero
            vector, no gradient) or an int row (an out-of-vocabulary row that reads and trains).

    Both sizes must be at least 1 (as in Keras), and the table must fit in one array.
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False,
                 trainable=True, weights=None, input_length=None, dtype="float32", seed=None, name=None,
                 out_of_range="raise"):
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.output_dim = check_positive_int(output_dim, "output_dim")
        self.dtype = np.dtype(dtype)
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        check_table_size(self.input_dim, self.output_dim, self.dtype)
        _out_of_range.parse(out_of_range, self.input_dim)
        self.out_of_range = out_of_range
        if input_length is not None:
            input_length = check_positive_int(input_length, "input_length")
        self.input_length = input_length
        self.mask_zero = bool(mask_zero)
        self.trainable = bool(trainable)
        self.name = name or "embedding"
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        shape = (self.input_dim, self.output_dim)
        if weights is not None:
            self.embeddings = self._checked_matrix(weights, "weights")
        else:
            initial = self.embeddings_initializer(shape, self.dtype, np.random.default_rng(seed))
            self.embeddings = self._checked_matrix(initial, "embeddings_initializer")
        self.grad = None

    @classmethod
    def from_pretrained(cls, matrix, trainable=False, mask_zero=False, **kwargs):
        """A layer whose table is (a copy of) ``matrix`` (V, D), frozen unless ``trainable=True``."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"a pre-trained matrix must be 2-D (V, D), got shape {matrix.shape}")
        kwargs.setdefault("dtype", matrix.dtype if matrix.dtype in FLOAT_DTYPES else "float32")
        return cls(matrix.shape[0], matrix.shape[1], weights=matrix, trainable=trainable,
                   mask_zero=mask_zero, **kwargs)

    def _checked_matrix(self, matrix, name):
        if isinstance(matrix, (list, tuple)) and len(matrix) == 1 and np.ndim(matrix[0]) == 2:
            matrix = matrix[0]  # Keras passes weights=[matrix]
        matrix = np.asarray(matrix)
        expected = (self.input_dim, self.output_dim)
        if matrix.shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got {matrix.shape}")
        if matrix.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be numeric, got dtype {matrix.dtype}")
        return np.array(matrix, dtype=self.dtype, order="C", copy=True)

    def _checked_ids(self, ids):
        ids = as_ids(ids)
        if self.input_length is not None and (ids.ndim == 0 or ids.shape[-1] != self.input_length):
            raise ValueError(f"input_length={self.input_length} but the ids have shape {ids.shape}")
        return ids

    def __call__(self, ids, n_threads=None):
        """Embed ``ids`` (any integer shape) → ``ids.shape + (output_dim,)``, the layer's dtype."""
        return gather(self.embeddings, self._checked_ids(ids), n_threads=n_threads, out_of_range=self.out_of_range)

    def compute_mask(self, ids):
        """``ids != 0`` (bool, ids' shape) when ``mask_zero``, else None."""
        if not self.mask_zero:
            return None
        return as_ids(ids) != 0

    def backward(self, ids, grad_out, n_threads=None):
        """Gradient of the table for one call's ``grad_out`` (``ids.shape + (output_dim,)``).

        Returns the call's ``SparseGrad`` and, when trainable, adds it to ``self.grad``: a layer called on
        several inputs gets the sum of their gradients, as in a Keras functional model.
        """
        ids = self._checked_ids(ids)
        grad_out = as_float(grad_out, "grad_out", dtype=self.dtype)
        if grad_out.shape != ids.shape + (self.output_dim,):
            raise ValueError(f"grad_out must have shape {ids.shape + (self.output_dim,)}, got {grad_out.shape}")
        grad = sparse_grad(ids, grad_out, num_rows=self.input_dim,
                           n_threads=n_threads, out_of_range=self.out_of_range)
        if self.trainable:
            self.grad = grad if self.grad is None else self.grad + grad
        return grad

    def zero_grad(self):
        self.grad = None

    def step(self, lr):
        """Plain SGD on the rows in ``self.grad`` (``W[rows] -= lr * values``), then clear the gradient."""
        lr = check_finite_scalar(lr, "lr")
        if not self.trainable or self.grad is None:
            self.grad = None
            return
        grad, self.grad = self.grad, None
        # rows are unique, so a fancy-indexed update is exact; only those rows are touched.
        self.embeddings[grad.rows] -= np.asarray(lr, dtype=self.dtype) * grad.values

    def count_params(self):
        return self.input_dim * self.output_dim

    def get_weights(self):
        """``[embeddings]``, a copy, as in Keras."""
        return [self.embeddings.copy()]

    def set_weights(self, weights):
        """Replace the table with ``weights[0]`` (or a bare matrix); the shape must match."""
        # In place, so that whoever holds the table (an optimizer, a view) sees the new values.
        self.embeddings[...] = self._checked_matrix(weights, "weights")

    def get_config(self):
        """The constructor arguments that rebuild this layer, weights and initializer aside (a JSON-able dict)."""
        return {"input_dim": self.input_dim, "output_dim": self.output_dim, "mask_zero": self.mask_zero,
                "trainable": self.trainable, "input_length": self.input_length, "dtype": self.dtype.name,
                "name": self.name, "out_of_range": _json_scalar(self.out_of_range)}

    def save(self, path):
        """Write the table and the config to ``path`` (.npz) atomically; the gradient is not saved.

        See ``fastembed.checkpoint``: an interrupted save leaves the previous file intact.
        """
        return checkpoint.save_arrays(path, {"embeddings": self.embeddings},
                                      {"class": type(self).__name__, "config": self.get_config()})

    @classmethod
    def load(cls, path):
        """A layer rebuilt from ``save``'s file; ``checkpoint.CheckpointError`` when it is damaged or not a layer's."""
        arrays, meta = checkpoint.load_arrays(path)
        if meta.get("class") != cls.__name__ or "embeddings" not in arrays:
            raise checkpoint.CheckpointError(f"{path}: holds a {meta.get('class')!r}, not an {cls.__name__}")
        config = meta["config"]
        table = arrays["embeddings"]
        if table.shape != (config["input_dim"], config["output_dim"]) or table.dtype != np.dtype(config["dtype"]):
            raise checkpoint.CheckpointError(f"{path}: the table is {table.shape} {table.dtype}, the config says "
                                             f"({config['input_dim']}, {config['output_dim']}) {config['dtype']}")
        return cls(weights=table, **config)

    def __repr__(self):
        flags = [f"mask_zero={self.mask_zero}"] if self.mask_zero else []
        if not self.trainable:
            flags.append("trainable=False")
        if self.input_length is not None:
            flags.append(f"input_length={self.input_length}")
        if not (isinstance(self.out_of_range, str) and self.out_of_range == "raise"):
            flags.append(f"out_of_range={self.out_of_range!r}")
        extra = (", " + ", ".join(flags)) if flags else ""
        return (f"Embedding(name={self.name!r}, input_dim={self.input_dim}, output_dim={self.output_dim}, "
                f"dtype={self.dtype.name}{extra}, params={self.count_params()})")


def _json_scalar(value):
    """numpy integers are not JSON; an out_of_range row may be one."""
    return value if isinstance(value, str) else int(value)
