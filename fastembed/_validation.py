"""Coercion and validation shared by the public functions: everything is checked here, before any kernel
writes, and every failure names the argument, the position and the value."""
import numpy as np

from fastembed import _index

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_INT64_MAX = np.iinfo(np.int64).max


def as_ids(ids, name="ids"):
    """Return ``ids`` as a C-contiguous int32/int64 array of the same shape (any rank, empty allowed).

    Other integer dtypes are widened to int64; bool, float, complex and object arrays raise ``TypeError``.
    """
    arr = ids if isinstance(ids, np.ndarray) else np.asarray(ids)
    dtype = arr.dtype
    if dtype not in INDEX_DTYPES:
        if dtype.kind not in "iu" or dtype == np.bool_:
            if arr.size == 0 and dtype.kind == "f" and not isinstance(ids, np.ndarray):
                # np.asarray([]) is float64: an empty list is a valid (empty) batch of ids.
                return np.zeros(arr.shape, np.int64)
            if dtype == object:
                _check_object_ints(arr, name)
            raise TypeError(f"{name} must be an integer array, got dtype {dtype}{_first_not_whole(arr, name)}")
        if dtype.kind == "u" and dtype.itemsize == 8 and arr.size and arr.max() > _INT64_MAX:
            position = int(np.argmax(arr > _INT64_MAX))
            raise IndexError(f"{name}{_where(arr.shape, position)} = {arr.reshape(-1)[position]} "
                             f"does not fit in int64")
        arr = arr.astype(np.int64)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def as_table(table, name="table", min_ndim=2, writeable=False):
    """Return ``table`` as an ndarray of float32/float64 with ``ndim == 2``; a non-contiguous one is copied
    (the caller copies back when it writes)."""
    if not isinstance(table, np.ndarray):
        if writeable:
            # A list would be converted to a temporary array, and the in-place result silently lost.
            raise TypeError(f"{name} must be a numpy array (it is written in place), got {type(table).__name__}")
        table = np.asarray(table)
    if table.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {table.dtype}")
    if table.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {table.shape}")
    if writeable and not table.flags.writeable:
        raise ValueError(f"{name} is read-only; it is written in place")
    return table


def as_float(values, name, dtype=None):
    """Return ``values`` as a float32/float64 ndarray (cast to ``dtype`` when given)."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    target = dtype if dtype is not None else (arr.dtype if arr.dtype in FLOAT_DTYPES else np.dtype(np.float64))
    if arr.dtype != target:
        arr = arr.astype(target)
    return arr


def check_rows(flat_ids, n_rows, n_threads, shape, name="ids"):
    """Raise ``IndexError`` for the first id outside ``[0, n_rows)``; ``shape`` locates it in the input."""
    bad = _index.first_out_of_range(flat_ids, n_rows, n_threads)
    if bad >= 0:
        raise_out_of_range(flat_ids, bad, n_rows, shape, name)


def raise_out_of_range(flat_ids, bad, n_rows, shape, name="ids"):
    """Raise the ``IndexError`` for ``flat_ids[bad]``, located in ``shape``."""
    value = int(flat_ids[bad])
    bound = f"[0, {n_rows})" if n_rows < _INT64_MAX else "[0, 2**63 - 1)"
    raise IndexError(f"{name}{_where(shape, bad)} = {value} is out of range {bound}"
                     + (f" for a table of {n_rows} rows" if n_rows < _INT64_MAX else ""))


def check_grad_shape(grad, ids_shape, dim, name="grad_out"):
    expected = tuple(ids_shape) + ((dim,) if dim is not None else ())
    if dim is None:
        if grad.shape[:-1] != tuple(ids_shape) or grad.ndim != len(ids_shape) + 1:
            raise ValueError(f"{name} must have shape ids.shape + (D,) = {tuple(ids_shape)} + (D,), "
                             f"got {grad.shape}")
    elif grad.shape != expected:
        raise ValueError(f"{name} must have shape ids.shape + (D,) = {expected}, got {grad.shape}")


def prepare_out(out, shape, dtype, name="out"):
    """Return a C-contiguous output array of ``shape``/``dtype``: the caller's ``out`` (checked) or a new one."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def check_positive_int(value, name, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return int(value)


def check_table_size(n_rows, dim, dtype, names=("input_dim", "output_dim")):
    """Refuse a (n_rows, dim) table whose byte size no array can have, before anything is allocated."""
    nbytes = n_rows * dim * np.dtype(dtype).itemsize
    if nbytes > np.iinfo(np.intp).max:
        raise ValueError(f"{names[0]} * {names[1]} = {n_rows} * {dim} {np.dtype(dtype).name} values "
                         f"({nbytes} bytes) exceed the largest possible array ({np.iinfo(np.intp).max} bytes)")


def check_finite_scalar(value, name):
    """Return ``value`` as a Python float; non-numbers are a ``TypeError``, NaN and infinities a ``ValueError``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_no_overlap(written, name, other, other_name):
    """Refuse an output that shares memory with an input: the result would depend on the order of writes."""
    if np.may_share_memory(written, other) and np.shares_memory(written, other):
        raise ValueError(f"{name} shares memory with {other_name}; pass a separate array")


def _check_object_ints(arr, name):
    """numpy makes an object array of Python ints beyond 64 bits: raise the ``IndexError`` naming the first one
    (an error path only; stops at the first element that is not an int)."""
    for position, value in enumerate(arr.flat):
        if not isinstance(value, int) or isinstance(value, bool):
            return
        if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            raise IndexError(f"{name}{_where(arr.shape, position)} = {value} does not fit in int64")


def _first_not_whole(arr, name):
    """For float ids, ``" (ids[i] = v)"`` naming the first NaN, infinite or fractional value, else ``""``."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return ""
    flat = arr.reshape(-1)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(flat) | (flat != np.floor(flat)))
    if bad.size == 0:
        return ""
    return f" ({name}{_where(arr.shape, bad[0])} = {flat[bad[0]]})"


def _where(shape, flat_position):
    if len(shape) == 0:
        return ""
    index = np.unravel_index(flat_position, shape)
    return "[" + ", ".join(str(int(i)) for i in index) + "]"
