"""float16, bfloat16 and int8 row-wise tables: conversions, lookups, the layer, and bad input."""
import numpy as np
import pytest

import fastembed
from fastembed import lowp
from conftest import INDEX_DTYPES

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _table(rng, rows=500, dim=37):
    return (rng.standard_normal((rows, dim)) * rng.uniform(0.01, 10.0, (rows, 1))).astype(np.float32)


def _bits(values):
    return np.ascontiguousarray(values).view(np.uint32)


# --- float16 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 8, 64, 37])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_float16_lookup_is_exact_for_every_bit_pattern(dim, n_threads):
    """All 65536 halves (zeros, subnormals, normals, infinities, NaN payloads) against numpy's conversion."""
    table = np.concatenate([ALL_BITS, ALL_BITS[: (-len(ALL_BITS)) % dim]]).view(np.float16).reshape(-1, dim)
    ids = np.random.default_rng(0).permutation(table.shape[0])
    out = fastembed.gather(table, ids, n_threads=n_threads)
    assert out.dtype == np.float32
    assert _bits(out).tobytes() == _bits(table[ids].astype(np.float32)).tobytes()


def test_float16_lookup_agrees_with_torch():
    torch = pytest.importorskip("torch")
    table = ALL_BITS.view(np.float16).reshape(-1, 16)
    ours = fastembed.gather(table, np.arange(table.shape[0]))
    theirs = torch.from_numpy(table.copy()).float().numpy()
    finite = ~np.isnan(theirs)        # torch canonicalises NaN payloads
    assert _bits(ours[finite]).tobytes() == _bits(theirs[finite]).tobytes()
    assert np.isnan(ours[~finite]).all()


# --- bfloat16 ------------------------------------------------------------------------------------------

def _special_floats(rng):
    ties = (np.arange(2000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)       # exactly halfway
    near = (np.arange(2000, dtype=np.uint32) << 16 | 0x7fff).view(np.float32)
    odd_ties = (np.arange(2000, dtype=np.uint32) << 16 | 0x18000).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3.4e38, -3.4e38, 1e-40, -1e-45,
                        np.finfo(np.float32).max, np.finfo(np.float32).tiny], np.float32)
    random = rng.standard_normal(20000).astype(np.float32) * np.float32(1e3)
    return np.concatenate([ties, near, odd_ties, special, random]).reshape(-1, 2)


def test_to_bfloat16_matches_ml_dtypes_bit_for_bit(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = _special_floats(rng)
    ours = lowp.to_bfloat16(values, n_threads=2)
    assert isinstance(ours, lowp.BFloat16Table) and ours.shape == values.shape
    assert ours.bits.tobytes() == values.astype(ml_dtypes.bfloat16).view(np.uint16).tobytes()


def test_to_bfloat16_matches_torch(rng):
    torch = pytest.importorskip("torch")
    values = _special_floats(rng)
    ours = lowp.to_bfloat16(values).bits
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(lowp.from_bfloat16(lowp.BFloat16Table(ours))[nan]).all()
    float64 = rng.standard_normal((50, 3))
    theirs64 = torch.from_numpy(float64).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(lowp.to_bfloat16(float64).bits, theirs64)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_bfloat16_lookup_every_bit_pattern_and_ml_dtypes_arrays(index_dtype):
    table = lowp.BFloat16Table(ALL_BITS.reshape(-1, 64))
    ids = np.random.default_rng(0).permutation(table.shape[0]).astype(index_dtype)
    expected = (ALL_BITS.astype(np.uint32) << 16).view(np.float32).reshape(-1, 64)[ids]
    assert _bits(fastembed.gather(table, ids, n_threads=2)).tobytes() == _bits(expected).tobytes()
    assert _bits(table.to_float32()).tobytes() == _bits(expected[np.argsort(ids)]).tobytes()
    ml_dtypes = pytest.importorskip("ml_dtypes")
    as_ml = ALL_BITS.view(ml_dtypes.bfloat16).reshape(-1, 64)
    assert _bits(fastembed.gather(as_ml, ids)).tobytes() == _bits(expected).tobytes()
    assert _bits(lowp.from_bfloat16(as_ml)).tobytes() == _bits(as_ml.astype(np.float32)).tobytes()


# --- int8 row-wise -------------------------------------------------------------------------------------

def test_quantize_matches_fbgemm(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("fbgemm_gpu")
    values = _table(rng)
    values[3] = 1.25                       # a constant row
    ours = lowp.QuantizedTable.from_float(values)
    fused = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(torch.from_numpy(values)).numpy()
    dim = values.shape[1]
    np.testing.assert_array_equal(ours.codes, fused[:, :dim])
    scale_bias = np.ascontiguousarray(fused[:, dim:]).view(np.float32)
    assert ours.scale.tobytes() == scale_bias[:, 0].tobytes() and ours.bias.tobytes() == scale_bias[:, 1].tobytes()
    # FBGEMM dequantizes with a fused multiply-add where the CPU has one: within an ulp of the result.
    theirs = torch.ops.fbgemm.Fused8BitRowwiseQuantizedToFloat(torch.from_numpy(fused)).numpy()
    np.testing.assert_allclose(ours.dequantize(), theirs, rtol=2e-7, atol=2e-7 * np.abs(values).max())


@pytest.mark.parametrize("n_threads", [1, 2])
def test_int8_lookup_matches_oracle_and_error_bound(rng, n_threads):
    values = _table(rng, rows=3000, dim=20)
    values[7] = -2.0
    table = lowp.QuantizedTable.from_float(values.astype(np.float64))
    ids = rng.integers(0, 3000, size=(40, 50))
    out = fastembed.gather(table, ids, n_threads=n_threads)
    oracle = table.codes[ids] * table.scale[ids][..., None] + table.bias[ids][..., None]
    np.testing.assert_allclose(out, oracle, rtol=1e-7, atol=1e-7 * np.abs(values).max())
    decoded = table.dequantize()
    assert decoded[ids].tobytes() == out.tobytes()
    assert (decoded[7] == -2.0).all() and table.scale[7] == 0
    # Each entry is within half a quantization step of the original, up to float32 rounding.
    error = np.abs(decoded - values)
    slack = 4 * np.finfo(np.float32).eps * np.abs(values).max(axis=1, keepdims=True)
    assert (error <= table.scale[:, None] / 2 + slack).all()
    assert (error.max(axis=1) > table.scale / 4).mean() > 0.9          # and the bound is not vacuous
    assert table.nbytes == 3000 * 20 + 3000 * 8


def test_quantized_table_from_parts_and_copy(rng):
    table = lowp.QuantizedTable.from_float(_table(rng, 10, 4))
    rebuilt = lowp.QuantizedTable(table.codes, table.scale.astype(np.float64), table.bias)
    assert rebuilt.dequantize().tobytes() == table.dequantize().tobytes()
    copy = table.copy()
    copy.codes[0, 0] ^= 1
    assert copy.codes[0, 0] != table.codes[0, 0]
    assert "int8" in repr(table) and "(10, 4)" in repr(table)


# --- every storage through gather ----------------------------------------------------------------------

def _storages(values):
    return {"float16": values.astype(np.float16), "bfloat16": lowp.to_bfloat16(values),
            "int8": lowp.QuantizedTable.from_float(values)}


@pytest.mark.parametrize("storage", lowp.STORAGES)
def test_gather_contract_for_low_precision_tables(rng, storage):
    values = _table(rng, 200, 9)
    table = _storages(values)[storage]
    decoded = lowp.decode(table)
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    ids = rng.integers(0, 200, size=(30, 20))
    outputs = {fastembed.gather(table, ids, n_threads=t).tobytes() for t in (1, 2, 3, 8)}
    assert outputs == {decoded[ids].tobytes()}
    assert fastembed.gather(table, 5).tobytes() == decoded[5].tobytes()
    assert fastembed.gather(table, np.zeros((0, 3), np.int32)).shape == (0, 3, 9)
    out = np.full((3, 9), np.nan, np.float32)
    assert fastembed.gather(table, [4, 0, 4], out=out) is out
    assert out.tobytes() == decoded[[4, 0, 4]].tobytes()
    clipped = fastembed.gather(table, ids, max_norm=1.0, norm_type=1.0)
    assert clipped.tobytes() == fastembed.gather(decoded, ids, max_norm=1.0, norm_type=1.0).tobytes()
    with pytest.raises(IndexError, match=r"ids\[1\] = 200 is out of range \[0, 200\)"):
        fastembed.gather(table, [3, 200], out=out[:2])
    assert out.tobytes() == decoded[[4, 0, 4]].tobytes()
    with pytest.raises(TypeError, match="out must have dtype float32"):
        fastembed.gather(table, [0], out=np.empty((1, 9), np.float64))


def test_encode_decode_roundtrips(rng):
    values = _table(rng, 30, 6)
    for storage, table in _storages(values).items():
        assert lowp.storage_of(table) == storage
        again = lowp.encode(table, storage)
        assert again is not table and lowp.decode(again).tobytes() == lowp.decode(table).tobytes()
    assert lowp.storage_of(values) is None
    np.testing.assert_array_equal(lowp.decode(lowp.encode(values, "float16")), values.astype(np.float16))


# --- the layer -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage", lowp.STORAGES)
def test_layer_with_low_precision_storage(rng, storage):
    values = _table(rng, 50, 8)
    layer = fastembed.Embedding.from_pretrained(values, storage=storage, padding_idx=0, mask_zero=True)
    decoded = lowp.decode(layer.embeddings)
    assert layer.storage == storage and lowp.storage_of(layer.embeddings) == storage
    ids = rng.integers(0, 50, size=(4, 7))
    out = layer(ids)
    assert out.dtype == np.float32 and out.tobytes() == decoded[ids].tobytes()
    np.testing.assert_array_equal(layer.get_weights()[0], decoded)
    layer.set_weights([values * 2])
    np.testing.assert_array_equal(layer(ids), lowp.decode(lowp.encode(values * 2, storage))[ids])
    assert f"storage={storage!r}" in repr(layer) and "trainable=False" in repr(layer)
    with pytest.raises(ValueError, match=f"a {storage} table is for inference: backward needs float32"):
        layer.backward(ids, np.ones(ids.shape + (8,), np.float32))
    with pytest.raises(ValueError, match="gradcheck needs a float32 or float64 table"):
        fastembed.gradcheck(layer, ids)
    clipping = fastembed.Embedding.from_pretrained(layer.embeddings, storage=storage, max_norm=1.0,
                                                   max_norm_mode="output")
    expected = fastembed.gather(lowp.decode(layer.embeddings), ids, max_norm=1.0)
    assert clipping(ids).tobytes() == expected.tobytes()
    assert fastembed.Embedding.from_pretrained(layer.embeddings).storage == "float32"


def test_layer_storage_bad_input(rng):
    values = _table(rng, 5, 2)
    with pytest.raises(ValueError, match="a int8 table is for inference: pass trainable=False"):
        fastembed.Embedding.from_pretrained(values, storage="int8", trainable=True)
    with pytest.raises(ValueError, match="max_norm_mode='inplace' rewrites table rows.*use max_norm_mode='output'"):
        fastembed.Embedding.from_pretrained(values, storage="float16", max_norm=1.0)
    with pytest.raises(ValueError, match="dtype must be float32, got float64"):
        fastembed.Embedding.from_pretrained(values, storage="bfloat16", dtype="float64")
    with pytest.raises(ValueError, match="storage must be None .* or one of 'float16', 'bfloat16', 'int8', got 'int4'"):
        fastembed.Embedding.from_pretrained(values, storage="int4")
    with pytest.raises(ValueError, match=r"weights must have shape \(5, 3\), got \(5, 2\)"):
        fastembed.Embedding(5, 3, weights=lowp.to_bfloat16(values), storage="bfloat16", trainable=False)
    # Without storage=, a float16 matrix still makes an ordinary float32 table.
    plain = fastembed.Embedding(5, 2, weights=values.astype(np.float16))
    assert plain.storage == "float32" and plain.embeddings.dtype == np.float32


def test_low_precision_bad_input(rng):
    with pytest.raises(TypeError, match="bfloat16 bits must be a uint16 array, got dtype int16"):
        lowp.BFloat16Table(np.zeros((2, 2), np.int16))
    with pytest.raises(ValueError, match=r"bfloat16 bits must be 2-D \(rows, dim\), got shape \(4,\)"):
        lowp.BFloat16Table(np.zeros(4, np.uint16))
    with pytest.raises(TypeError, match="codes must be a uint8 array, got dtype int8"):
        lowp.QuantizedTable(np.zeros((2, 2), np.int8), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"scale must have shape \(2,\), one per row, got \(3,\)"):
        lowp.QuantizedTable(np.zeros((2, 2), np.uint8), np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"scale and bias\[1, 1\] = nan is not finite"):
        lowp.QuantizedTable(np.zeros((2, 2), np.uint8), np.ones(2), [0.0, np.nan])
    bad = _table(rng, 4, 3)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"table\[2, 1\] = inf is not finite"):
        lowp.QuantizedTable.from_float(bad)
    with pytest.raises(ValueError, match=r"table\[0, 0\] = 1e\+39 is not finite in float32"):
        lowp.QuantizedTable.from_float(np.full((1, 2), 1e39))
    with pytest.raises(TypeError, match="table must be a float array, got dtype bool"):
        lowp.to_bfloat16(np.zeros((2, 2), bool))
    with pytest.raises(TypeError, match="expected a BFloat16Table or an ml_dtypes.bfloat16 array, got ndarray"):
        lowp.from_bfloat16(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="storage must be one of 'float16', 'bfloat16', 'int8', got 'fp8'"):
        lowp.encode(bad, "fp8")
    with pytest.raises(TypeError, match=r"table must be float32, float64, float16 or bfloat16 \(or a "
                                        r"QuantizedTable\), got dtype int32"):
        fastembed.gather(np.zeros((3, 2), np.int32), [0])
    with pytest.raises(ValueError, match=r"table must be 2-D \(rows, dim\), got shape \(3, 2, 1\)"):
        fastembed.gather(np.zeros((3, 2, 1), np.float16), [0])
