"""``Embedding``: a Keras-style embedding layer over fastembed's kernels."""
import numpy as np

from fastembed import _out_of_range, checkpoint, initializers, lowp
from fastembed._options import (check_max_norm, check_max_norm_mode, check_norm_type,
                                check_padding_idx)
from fastembed._threads import resolve_threads
from fastembed._validation import (
    FLOAT_DTYPES,
    as_float,
    as_ids,
    check_finite_scalar,
    check_positive_int,
    check_table_size,
)
from fastembed.ops import gather, sparse_grad
from fastembed.renorm import renorm_


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
        padding_idx: an id whose row starts as zeros (unless ``weights`` gives it) and never receives
            gradient; negative values count from the end. Independent of ``mask_zero``, which only tells
            later layers which positions to ignore.
        max_norm, norm_type: bound the norm_type-norm of looked-up rows by max_norm (PyTorch's rule:
            a longer row is scaled by ``max_norm / (norm + 1e-7)``).
        max_norm_mode: ``"inplace"`` (PyTorch's behaviour: every call rescales the looked-up rows of the
            table itself, then reads them) or ``"output"`` (the table is left as it is; the output rows are
            clipped and ``backward`` gives the exact derivative of the clip).
        scale_grad_by_freq: divide each row's gradient by the number of times its id occurs in the call.
        storage: None (a float table of ``dtype``) or a low-precision storage for inference, read into
            float32: ``"float16"``, ``"bfloat16"`` or ``"int8"`` (row-wise quantized, see ``lowp``). Needs
            ``trainable=False``; ``weights`` are converted unless they already are such a table.
        out_of_range: what an id outside ``[0, input_dim)`` does, in the call and in ``backward``:
            ``"raise"`` (an ``IndexError``), ``"clip"`` (reads, and trains, the nearest row), ``"zero"`` (a zero
            vector, no gradient) or an int row (an out-of-vocabulary row that reads and trains).

    Both sizes must be at least 1 (as in Keras), and the table must fit in one array.
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False,
                 trainable=True, weights=None, input_length=None, dtype="float32", seed=None, name=None,
                 padding_idx=None, max_norm=None, norm_type=2.0, max_norm_mode="inplace", scale_grad_by_freq=False,
                 storage=None, out_of_range="raise"):
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.output_dim = check_positive_int(output_dim, "output_dim")
        self.padding_idx = check_padding_idx(padding_idx, self.input_dim)
        self.max_norm = None if max_norm is None else check_max_norm(max_norm)
        self.norm_type = check_norm_type(norm_type)
        self.max_norm_mode = check_max_norm_mode(max_norm_mode)
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
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
        self.storage = self._checked_storage(storage)
        shape = (self.input_dim, self.output_dim)
        if weights is not None:
            source, name = _unwrap(weights), "weights"
        else:
            source, name = self.embeddings_initializer(shape, self.dtype, np.random.default_rng(seed)), "embeddings_initializer"
        if lowp.storage_of(source) is None or self.storage not in lowp.STORAGES:
            source = self._checked_matrix(source if lowp.storage_of(source) is None else lowp.decode(source), name)
            if weights is None and self.padding_idx is not None:
                source[self.padding_idx] = 0
        self.embeddings = self._encoded(source, name) if self.storage in lowp.STORAGES else source
        self.grad = None

    @classmethod
    def from_pretrained(cls, matrix, trainable=False, mask_zero=False, storage=None, **kwargs):
        """A layer whose table is (a copy of) ``matrix`` (V, D), frozen unless ``trainable=True``.

        matrix: a float matrix or a low-precision table (``lowp``). storage: as in the constructor, e.g.
        ``from_pretrained(vectors, storage="int8")`` for a quantized inference table.
        """
        if lowp.storage_of(matrix) is None:
            matrix = np.asarray(matrix)
        if len(matrix.shape) != 2:
            raise ValueError(f"a pre-trained matrix must be 2-D (V, D), got shape {matrix.shape}")
        dtype = matrix.dtype if isinstance(matrix, np.ndarray) else None   # np.dtype(None) would be float64
        kwargs.setdefault("dtype", dtype if dtype is not None and dtype in FLOAT_DTYPES else "float32")
        return cls(matrix.shape[0], matrix.shape[1], weights=matrix, trainable=trainable,
                   mask_zero=mask_zero, storage=storage, **kwargs)

    def _checked_matrix(self, matrix, name):
        matrix = np.asarray(_unwrap(matrix))
        expected = (self.input_dim, self.output_dim)
        if matrix.shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got {matrix.shape}")
        if matrix.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be numeric, got dtype {matrix.dtype}")
        return np.array(matrix, dtype=self.dtype, order="C", copy=True)

    def _checked_storage(self, storage):
        """The layer's storage name: its dtype's, or a low-precision one (inference only)."""
        if storage is None:
            return self.dtype.name
        if storage not in lowp.STORAGES:
            raise ValueError(f"storage must be None (a float table of dtype) or one of "
                             f"{', '.join(map(repr, lowp.STORAGES))}, got {storage!r}")
        if self.dtype != np.float32:
            raise ValueError(f"a {storage} table is read into float32: dtype must be float32, got {self.dtype}")
        if self.trainable:
            raise ValueError(f"a {storage} table is for inference: pass trainable=False (training needs "
                             f"float32 or float64 storage)")
        if self.max_norm is not None and self.max_norm_mode == "inplace":
            raise ValueError(f"max_norm_mode='inplace' rewrites table rows, which a {storage} table cannot "
                             f"hold exactly: use max_norm_mode='output'")
        return storage

    def _encoded(self, table, name):
        """``table`` (a float matrix or low-precision table of the layer's shape) in the layer's storage."""
        expected = (self.input_dim, self.output_dim)
        if tuple(table.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(table.shape)}")
        return lowp.encode(table, self.storage)

    def _clip_options(self):
        """The keyword arguments that clip looked-up rows in "output" mode (none otherwise)."""
        if self.max_norm is None or self.max_norm_mode != "output":
            return {}
        return {"max_norm": self.max_norm, "norm_type": self.norm_type}

    def _checked_ids(self, ids):
        ids = as_ids(ids)
        if self.input_length is not None and (ids.ndim == 0 or ids.shape[-1] != self.input_length):
            raise ValueError(f"input_length={self.input_length} but the ids have shape {ids.shape}")
        return ids

    def __call__(self, ids, n_threads=None):
        """Embed ``ids`` (any integer shape) → ``ids.shape + (output_dim,)``, the layer's dtype.

        With ``max_norm`` in "inplace" mode the looked-up rows of the table are rescaled first.
        """
        ids = self._checked_ids(ids)
        if self.max_norm is not None and self.max_norm_mode == "inplace":
            renorm_(self.embeddings, self._rows_read(ids, n_threads), self.max_norm, self.norm_type,
                    n_threads=n_threads)
        return gather(self.embeddings, ids, n_threads=n_threads, out_of_range=self.out_of_range,
                      **self._clip_options())

    def _rows_read(self, ids, n_threads):
        """The ids of the rows a call reads, after ``out_of_range`` (the ids themselves under "raise")."""
        policy = _out_of_range.parse(self.out_of_range, self.input_dim)
        if policy.code == _out_of_range.RAISE:
            return ids
        flat = ids.reshape(-1)
        return _out_of_range.rows_read(flat, self.input_dim, policy, resolve_threads(n_threads, flat.nbytes))

    def compute_mask(self, ids):
        """``ids != 0`` (bool, ids' shape) when ``mask_zero``, else None."""
        if not self.mask_zero:
            return None
        return as_ids(ids) != 0

    def backward(self, ids, grad_out, n_threads=None):
        """Gradient of the table for one call's ``grad_out`` (``ids.shape + (output_dim,)``).

        Returns the call's ``SparseGrad`` and, when trainable, adds it to ``self.grad``: a layer called on
        several inputs gets the sum of their gradients, as in a Keras functional model. Positions holding
        ``padding_idx`` contribute nothing; ``scale_grad_by_freq`` divides each row by its id's count.
        """
        if self.storage in lowp.STORAGES:
            raise ValueError(f"a {self.storage} table is for inference: backward needs float32 or float64 storage")
        ids = self._checked_ids(ids)
        grad_out = as_float(grad_out, "grad_out", dtype=self.dtype)
        if grad_out.shape != ids.shape + (self.output_dim,):
            raise ValueError(f"grad_out must have shape {ids.shape + (self.output_dim,)}, got {grad_out.shape}")
        clip = self._clip_options()
        if clip:
            clip["table"] = self.embeddings
        grad = sparse_grad(ids, grad_out, num_rows=self.input_dim, n_threads=n_threads,
                           padding_idx=self.padding_idx, scale_grad_by_freq=self.scale_grad_by_freq,
                           out_of_range=self.out_of_range, **clip)
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
        """``[embeddings]``, a copy, as in Keras (float32 values for a low-precision table)."""
        if self.storage in lowp.STORAGES:
            return [lowp.decode(self.embeddings)]
        return [self.embeddings.copy()]

    def set_weights(self, weights):
        """Replace the table with ``weights[0]`` (or a bare matrix); the shape must match. A low-precision
        layer converts them to its storage."""
        if self.storage in lowp.STORAGES:
            table = _unwrap(weights)
            if lowp.storage_of(table) is None:
                table = self._checked_matrix(table, "weights")
            self.embeddings = self._encoded(table, "weights")
            return
        # In place, so that whoever holds the table (an optimizer, a view) sees the new values.
        self.embeddings[...] = self._checked_matrix(weights, "weights")

    def get_config(self):
        """The constructor arguments that rebuild this layer, weights and initializer aside (a JSON-able dict)."""
        return {"input_dim": self.input_dim, "output_dim": self.output_dim, "mask_zero": self.mask_zero,
                "trainable": self.trainable, "input_length": self.input_length, "dtype": self.dtype.name,
                "name": self.name, "padding_idx": self.padding_idx, "max_norm": self.max_norm,
                "norm_type": self.norm_type, "max_norm_mode": self.max_norm_mode,
                "scale_grad_by_freq": self.scale_grad_by_freq,
                "storage": self.storage if self.storage in lowp.STORAGES else None,
                "out_of_range": _json_scalar(self.out_of_range)}

    @staticmethod
    def _table_shape(config):
        """The (rows, width) a saved config describes."""
        return config.get("input_dim"), config.get("output_dim")

    def save(self, path):
        """Write the table and the config to ``path`` (.npz) atomically; the gradient is not saved.

        See ``fastembed.checkpoint``: an interrupted save leaves the previous file intact.
        """
        return checkpoint.save_arrays(path, _table_arrays(self.embeddings),
                                      {"class": type(self).__name__, "config": self.get_config()})

    @classmethod
    def load(cls, path):
        """A layer rebuilt from ``save``'s file; ``checkpoint.CheckpointError`` when it is damaged or not a layer's."""
        arrays, meta = checkpoint.load_arrays(path)
        if meta.get("class") != cls.__name__ or not isinstance(meta.get("config"), dict):
            raise checkpoint.CheckpointError(f"{path}: holds a {meta.get('class')!r}, not an {cls.__name__}")
        config = meta["config"]
        table = _table_from_arrays(arrays, config, path)
        expected = cls._table_shape(config)
        if tuple(table.shape) != expected:
            raise checkpoint.CheckpointError(f"{path}: the table is {tuple(table.shape)}, the config says {expected}")
        try:
            return cls(weights=table, **config)
        except (TypeError, ValueError) as error:
            raise checkpoint.CheckpointError(f"{path}: the saved config does not make a layer: {error}") from None

    def __repr__(self):
        flags = [f"mask_zero={self.mask_zero}"] if self.mask_zero else []
        if not self.trainable:
            flags.append("trainable=False")
        if self.input_length is not None:
            flags.append(f"input_length={self.input_length}")
        if self.padding_idx is not None:
            flags.append(f"padding_idx={self.padding_idx}")
        if self.max_norm is not None:
            flags.append(f"max_norm={self.max_norm}, norm_type={self.norm_type}, max_norm_mode={self.max_norm_mode!r}")
        if self.scale_grad_by_freq:
            flags.append("scale_grad_by_freq=True")
        if self.storage in lowp.STORAGES:
            flags.append(f"storage={self.storage!r}")
        if not (isinstance(self.out_of_range, str) and self.out_of_range == "raise"):
            flags.append(f"out_of_range={self.out_of_range!r}")
        extra = (", " + ", ".join(flags)) if flags else ""
        return (f"Embedding(name={self.name!r}, input_dim={self.input_dim}, output_dim={self.output_dim}, "
                f"dtype={self.dtype.name}{extra}, params={self.count_params()})")


def _unwrap(weights):
    """Keras passes ``weights=[matrix]``: the matrix (or table) itself."""
    if isinstance(weights, (list, tuple)) and len(weights) == 1 and (
            np.ndim(weights[0]) == 2 or lowp.storage_of(weights[0]) is not None):
        return weights[0]
    return weights


def _json_scalar(value):
    """numpy integers are not JSON; an out_of_range row may be one."""
    return value if isinstance(value, str) else int(value)


def _table_arrays(table):
    """The arrays that hold a layer's table in a checkpoint, for every storage."""
    if isinstance(table, lowp.QuantizedTable):
        return {"codes": table.codes, "scale_bias": table.scale_bias}
    if isinstance(table, lowp.BFloat16Table):
        return {"bfloat16_bits": table.bits}
    return {"embeddings": table}


def _table_from_arrays(arrays, config, path):
    """The table ``_table_arrays`` saved, checked against the config's dtype and storage."""
    storage = config.get("storage") or config.get("dtype")
    names = {"int8": {"codes", "scale_bias"}, "bfloat16": {"bfloat16_bits"}}.get(storage, {"embeddings"})
    if set(arrays) != names:
        raise checkpoint.CheckpointError(f"{path}: a {storage} table is stored as {sorted(names)}, "
                                         f"the file holds {sorted(arrays)}")
    if storage == "int8":
        scale_bias = arrays["scale_bias"]
        if scale_bias.ndim != 2 or scale_bias.shape[1:] != (2,):
            raise checkpoint.CheckpointError(f"{path}: scale_bias has shape {scale_bias.shape}, not (V, 2)")
        return lowp.QuantizedTable(arrays["codes"], scale_bias[:, 0], scale_bias[:, 1])
    if storage == "bfloat16":
        return lowp.BFloat16Table(arrays["bfloat16_bits"])
    table = arrays["embeddings"]
    if table.dtype != np.dtype(storage):
        raise checkpoint.CheckpointError(f"{path}: the table is {table.dtype}, the config says {storage}")
    return table
