"""Low-precision tables for inference: float16, bfloat16 and 8-bit row-wise quantized.

``fastembed.gather`` reads each of them straight into a float32 output, and ``fastembed.embedding_bag``
pools bags of their rows into float32 (each row converted as it is read, the sums accumulated in float32):

- float16: a numpy ``float16`` (V, D) array.
- bfloat16: a ``BFloat16Table`` (the bits as uint16), or an ``ml_dtypes.bfloat16`` array when the optional
  ``ml_dtypes`` package is installed. ``to_bfloat16`` converts a float table (round to nearest even),
  ``from_bfloat16`` converts back (exact).
- int8: a ``QuantizedTable``, FBGEMM's 8-bit row-wise format: ``value = code * scale + bias`` with one
  float32 (scale, bias) pair per row; ``QuantizedTable.from_float`` builds it, ``dequantize`` reverses it
  within half a step (``scale / 2``) per entry.
"""
import numpy as np

from fastembed import _lowp
from fastembed._threads import resolve_threads
from fastembed._validation import FLOAT_DTYPES

STORAGES = ("float16", "bfloat16", "int8")

# Rows quantized per block: bounds the float32 temporaries of from_float whatever the table's size.
_QUANTIZE_BLOCK_ROWS = 1 << 16
# FBGEMM's guard against a zero range when computing 255 / range.
_QUANTIZE_EPSILON = np.float32(1e-8)


class BFloat16Table:
    """A (V, D) bfloat16 table held as its bits.

    bits: (V, D) uint16; each entry is the upper half of a float32 (sign, 8 exponent, 7 mantissa bits).
    """

    __slots__ = ("bits",)

    def __init__(self, bits):
        bits = np.asarray(bits)
        if bits.dtype != np.uint16:
            raise TypeError(f"bfloat16 bits must be a uint16 array, got dtype {bits.dtype}")
        if bits.ndim != 2:
            raise ValueError(f"bfloat16 bits must be 2-D (rows, dim), got shape {bits.shape}")
        self.bits = np.ascontiguousarray(bits)

    @property
    def shape(self):
        return self.bits.shape

    @property
    def nbytes(self):
        return self.bits.nbytes

    def copy(self):
        return BFloat16Table(self.bits.copy())

    def to_float32(self):
        """The values as a (V, D) float32 array (exact)."""
        return from_bfloat16(self)

    def __repr__(self):
        return f"BFloat16Table(shape={self.shape})"


class QuantizedTable:
    """An 8-bit row-wise quantized (V, D) table: ``value[r, j] = codes[r, j] * scale[r] + bias[r]``.

    codes: (V, D) uint8. scale, bias: (V,) float32 (views of one (V, 2) array ``scale_bias``, so that a
    lookup reads both with one memory access). FBGEMM's convention: ``scale = (max - min) / 255`` and
    ``bias = min`` over each row.
    """

    __slots__ = ("codes", "scale_bias")

    def __init__(self, codes, scale, bias):
        codes = np.asarray(codes)
        if codes.dtype != np.uint8:
            raise TypeError(f"codes must be a uint8 array, got dtype {codes.dtype}")
        if codes.ndim != 2:
            raise ValueError(f"codes must be 2-D (rows, dim), got shape {codes.shape}")
        scale_bias = np.empty((codes.shape[0], 2), np.float32)
        for column, (name, values) in enumerate((("scale", scale), ("bias", bias))):
            values = np.asarray(values)
            if values.shape != (codes.shape[0],):
                raise ValueError(f"{name} must have shape ({codes.shape[0]},), one per row, got {values.shape}")
            if values.dtype.kind != "f":
                raise TypeError(f"{name} must be a float array, got dtype {values.dtype}")
            scale_bias[:, column] = values
        _check_finite(scale_bias, "scale and bias")
        self.codes = np.ascontiguousarray(codes)
        self.scale_bias = scale_bias

    @classmethod
    def from_float(cls, table):
        """Quantize a (V, D) float table row by row, exactly as FBGEMM's reference does in float32.

        ``code = rint((x - min) * 255 / (max - min + 1e-8))``; a constant row gets scale 0 and is exact.
        Raises ``ValueError`` naming the first non-finite entry.
        """
        table = _float_matrix(table, "table")
        _check_finite(table, "table")
        n_rows, dim = table.shape
        codes = np.empty((n_rows, dim), np.uint8)
        scale = np.zeros(n_rows, np.float32)
        bias = np.zeros(n_rows, np.float32)
        if dim == 0:
            return cls(codes, scale, bias)
        for start in range(0, n_rows, _QUANTIZE_BLOCK_ROWS):
            with np.errstate(over="ignore"):        # a float64 beyond float32's range: reported just below
                block = np.asarray(table[start:start + _QUANTIZE_BLOCK_ROWS], dtype=np.float32)
            _check_finite(block, "table", start, table, " in float32")
            low = block.min(axis=1)
            spread = block.max(axis=1) - low
            scale[start:start + block.shape[0]] = spread / np.float32(255)
            bias[start:start + block.shape[0]] = low
            inverse = np.float32(255) / (spread + _QUANTIZE_EPSILON)
            scaled = (block - low[:, None]) * inverse[:, None]
            codes[start:start + block.shape[0]] = np.clip(np.rint(scaled), 0, 255)
        return cls(codes, scale, bias)

    @property
    def scale(self):
        return self.scale_bias[:, 0]

    @property
    def bias(self):
        return self.scale_bias[:, 1]

    @property
    def shape(self):
        return self.codes.shape

    @property
    def nbytes(self):
        return self.codes.nbytes + self.scale_bias.nbytes

    def copy(self):
        return QuantizedTable(self.codes.copy(), self.scale, self.bias)

    def dequantize(self, n_threads=None):
        """The (V, D) float32 values, the same bits as ``gather`` returns for them."""
        from fastembed.ops import gather

        return gather(self, np.arange(self.shape[0]), n_threads=n_threads)

    def __repr__(self):
        return f"QuantizedTable(shape={self.shape}, int8 row-wise)"


def to_bfloat16(table, n_threads=None):
    """Round a (V, D) float32/float64 table to bfloat16, to nearest with ties to even.

    float64 is rounded to float32 first, as PyTorch and ml_dtypes do. Returns a ``BFloat16Table``.
    """
    values = np.ascontiguousarray(_float_matrix(table, "table"), dtype=np.float32)
    bits = np.empty(values.shape, np.uint16)
    _lowp.float_to_bf16(values.reshape(-1), bits.reshape(-1), resolve_threads(n_threads, values.nbytes))
    return BFloat16Table(bits)


def from_bfloat16(table):
    """A bfloat16 table (``BFloat16Table`` or ``ml_dtypes.bfloat16`` array) as float32 (exact)."""
    if isinstance(table, np.ndarray) and _is_ml_dtypes_bfloat16(table.dtype):
        table = BFloat16Table(table.view(np.uint16))
    if not isinstance(table, BFloat16Table):
        raise TypeError(f"expected a BFloat16Table or an ml_dtypes.bfloat16 array, got {type(table).__name__}")
    return (table.bits.astype(np.uint32) << 16).view(np.float32)


def storage_of(table):
    """The storage name of a low-precision table ("float16", "bfloat16", "int8"), else None."""
    if isinstance(table, QuantizedTable):
        return "int8"
    if isinstance(table, BFloat16Table):
        return "bfloat16"
    if isinstance(table, np.ndarray):
        if table.dtype == np.float16:
            return "float16"
        if _is_ml_dtypes_bfloat16(table.dtype):
            return "bfloat16"
    return None


def encode(matrix, storage):
    """``matrix`` in ``storage``: a low-precision table already in that storage is copied, anything else is
    read as a float (V, D) matrix and converted."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(map(repr, STORAGES))}, got {storage!r}")
    if storage_of(matrix) == storage:
        if isinstance(matrix, np.ndarray) and storage == "bfloat16":
            return BFloat16Table(matrix.view(np.uint16).copy())
        return matrix.copy()
    values = decode(matrix) if storage_of(matrix) else matrix
    if storage == "float16":
        return np.ascontiguousarray(_float_matrix(values, "matrix"), dtype=np.float16)
    if storage == "bfloat16":
        return to_bfloat16(values)
    return QuantizedTable.from_float(values)


def decode(table):
    """Any low-precision table as a (V, D) float32 array."""
    storage = storage_of(table)
    if storage == "float16":
        return table.astype(np.float32)
    if storage == "bfloat16":
        return from_bfloat16(table)
    if storage == "int8":
        return table.dequantize()
    raise TypeError(f"not a low-precision table: {type(table).__name__}")


class Reader:
    """What ``gather`` and ``embedding_bag`` need from a low-precision table: its shape, a kernel filling
    float32 rows and one pooling bags of rows into float32."""

    __slots__ = ("shape", "_read", "_storage", "_raw", "_scale_bias")

    def __init__(self, shape, read, storage, raw, scale_bias):
        self.shape, self._read = shape, read
        self._storage, self._raw, self._scale_bias = storage, raw, scale_bias

    def read(self, flat_ids, out2d, n_threads):
        """``out2d[i] = float32(table[flat_ids[i]])``; flat_ids validated, out2d (N, D) float32 C-contiguous."""
        self._read(flat_ids, out2d, n_threads)

    def pool(self, ids, offsets, weights, mode_code, padding, out2d, n_threads):
        """``out2d[b] = pool(float32(table[ids[offsets[b]:offsets[b + 1]]]))``, accumulated in float32.

        ids (N,) validated; offsets (B + 1,) int64; weights (N,) float32 or empty; mode_code and padding as
        in ``fastembed.bags``; out2d (B, D) float32 C-contiguous.
        """
        _lowp.bag_forward_lowp(self._storage, self._raw, self._scale_bias, ids, offsets, weights, mode_code,
                               padding, out2d, n_threads)


# The storage codes of the kernels in _lowp.pyx.
_STORAGE_CODES = {"float16": 0, "bfloat16": 1, "int8": 2}
_NO_SCALE_BIAS = np.empty((0, 2), np.float32)


def _raw_bytes(matrix):
    """A C-contiguous (V, D) matrix of 1- or 2-byte entries as its (V, D * itemsize) bytes."""
    return matrix.view(np.uint8).reshape(matrix.shape[0], -1)


def reader(table):
    """A ``Reader`` for a low-precision table; None for a float32/float64 table (or anything array-like
    that ``as_table`` will judge). Raises ``TypeError`` for an ndarray of any other dtype."""
    storage = storage_of(table)
    if storage == "int8":
        return Reader(table.shape, lambda ids, out, t: _lowp.gather_rows_int8(table.codes, table.scale_bias,
                                                                               ids, out, t),
                      _STORAGE_CODES[storage], table.codes, table.scale_bias)
    if storage == "bfloat16":
        bits = table.bits if isinstance(table, BFloat16Table) else _matrix_bits(table)
        return Reader(bits.shape, lambda ids, out, t: _lowp.gather_rows_bf16(bits, ids, out, t),
                      _STORAGE_CODES[storage], _raw_bytes(bits), _NO_SCALE_BIAS)
    if storage == "float16":
        bits = _matrix_bits(table)
        return Reader(bits.shape, lambda ids, out, t: _lowp.gather_rows_f16(bits, ids, out, t),
                      _STORAGE_CODES[storage], _raw_bytes(bits), _NO_SCALE_BIAS)
    if isinstance(table, np.ndarray) and table.dtype not in FLOAT_DTYPES:
        raise TypeError(f"table must be float32, float64, float16 or bfloat16 (or a QuantizedTable), "
                        f"got dtype {table.dtype}")
    return None


def _matrix_bits(table):
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (rows, dim), got shape {table.shape}")
    return np.ascontiguousarray(table).view(np.uint16)


def _float_matrix(values, name):
    values = values if isinstance(values, np.ndarray) else np.asarray(values)
    if values.dtype.kind not in "fiu" or values.dtype == np.bool_:
        raise TypeError(f"{name} must be a float array, got dtype {values.dtype}")
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {values.shape}")
    return values


def _check_finite(values, name, row_offset=0, source=None, how=""):
    """Raise ``ValueError`` naming the first non-finite entry of a 2-D ``values``, a block of ``source``
    rows starting at ``row_offset`` (whose original value the message quotes)."""
    finite = np.isfinite(values)
    if not finite.all():
        row, column = np.unravel_index(int(np.argmin(finite)), values.shape)
        row += row_offset
        value = (values if source is None else source)[row, column]
        raise ValueError(f"{name}[{row}, {column}] = {value} is not finite{how}")


def _is_ml_dtypes_bfloat16(dtype):
    # Checked by name first so that ml_dtypes, an optional dependency, is imported only when such an array shows up.
    if dtype.kind != "V" or dtype.itemsize != 2 or dtype.name != "bfloat16":
        return False
    try:
        import ml_dtypes
    except ImportError:
        return False
    return dtype == np.dtype(ml_dtypes.bfloat16)
