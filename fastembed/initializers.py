"""Table initializers with Keras' names and defaults, reproducible with a seed.

Each initializer is a callable ``init(shape, dtype, rng) -> ndarray``; ``get(spec)`` turns a name, a
matrix, an instance or a plain callable ``f(shape, dtype)`` into one.
"""
import math

import numpy as np


class Initializer:
    def __call__(self, shape, dtype, rng):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, np.ndarray))
        return f"{type(self).__name__}({fields})"


class RandomUniform(Initializer):
    """Uniform in ``[minval, maxval)``; Keras' ``Embedding`` default is ±0.05."""

    def __init__(self, minval=-0.05, maxval=0.05):
        self.minval, self.maxval = float(minval), float(maxval)

    def __call__(self, shape, dtype, rng):
        return rng.uniform(self.minval, self.maxval, size=shape).astype(dtype)


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05):
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, dtype, rng):
        return rng.normal(self.mean, self.stddev, size=shape).astype(dtype)


class TruncatedNormal(Initializer):
    """Normal with draws beyond two standard deviations redrawn (Keras' definition)."""

    def __init__(self, mean=0.0, stddev=0.05):
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, dtype, rng):
        values = rng.standard_normal(size=shape)
        outside = np.abs(values) > 2.0
        while outside.any():
            values[outside] = rng.standard_normal(size=int(outside.sum()))
            outside = np.abs(values) > 2.0
        return (self.mean + self.stddev * values).astype(dtype)


class GlorotUniform(Initializer):
    """Uniform in ±sqrt(6 / (fan_in + fan_out)) with fan_in = rows, fan_out = columns (Keras, 2-D)."""

    def __call__(self, shape, dtype, rng):
        limit = math.sqrt(6.0 / (shape[0] + shape[1]))
        return rng.uniform(-limit, limit, size=shape).astype(dtype)


class Constant(Initializer):
    """A scalar everywhere, or a whole pre-trained matrix (its shape must match the table's)."""

    def __init__(self, value=0.0):
        self.value = np.asarray(value)

    def __call__(self, shape, dtype, rng):
        if self.value.ndim == 0:
            return np.full(shape, self.value, dtype=dtype)
        if self.value.shape != tuple(shape):
            raise ValueError(f"the initial matrix has shape {self.value.shape}, the table needs {tuple(shape)}")
        return np.array(self.value, dtype=dtype, copy=True)

    def __repr__(self):
        if self.value.ndim == 0:
            return f"Constant(value={self.value.item()!r})"
        return f"Constant(matrix of shape {self.value.shape})"


class Zeros(Constant):
    def __init__(self):
        super().__init__(0.0)


class Ones(Constant):
    def __init__(self):
        super().__init__(1.0)


class _Callable(Initializer):
    """Wraps a user function ``f(shape, dtype)`` (Keras' initializer signature)."""

    def __init__(self, function):
        self.function = function

    def __call__(self, shape, dtype, rng):
        return np.asarray(self.function(tuple(shape), dtype))


_BY_NAME = {
    "uniform": RandomUniform,
    "random_uniform": RandomUniform,
    "normal": RandomNormal,
    "random_normal": RandomNormal,
    "truncated_normal": TruncatedNormal,
    "glorot_uniform": GlorotUniform,
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
}


def get(spec):
    """Return an ``Initializer`` for a name, an ndarray (a constant matrix), an instance or a callable."""
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec.lower()]()
        except KeyError:
            raise ValueError(f"unknown initializer {spec!r}; known: {sorted(_BY_NAME)}") from None
    if isinstance(spec, np.ndarray) or isinstance(spec, (list, tuple)):
        return Constant(spec)
    if callable(spec):
        return _Callable(spec)
    raise TypeError(f"embeddings_initializer must be a name, a matrix or a callable, got {type(spec).__name__}")
