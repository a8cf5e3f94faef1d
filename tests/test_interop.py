"""Arrays from other libraries reach the kernels through DLPack without a copy; device arrays are refused."""
import subprocess
import sys

import numpy as np
import pytest

import fastembed
from fastembed._validation import as_float, as_ids, as_table


def _torch():
    return pytest.importorskip("torch")


def _jnp():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    return jnp


def test_torch_inputs_are_shared_not_copied():
    torch = _torch()
    table = torch.randn(30, 8, dtype=torch.float64)
    ids = torch.randint(0, 30, (4, 5), dtype=torch.int32)
    grad = torch.randn(4, 5, 8)
    weight = torch.nn.Parameter(torch.randn(30, 8))   # requires grad: read through detach()
    for array, tensor in ((as_table(table), table), (as_ids(ids), ids), (as_float(grad, "grad_out"), grad),
                          (as_table(weight), weight)):
        assert array.ctypes.data == tensor.data_ptr()
        assert np.shares_memory(array, tensor.detach().numpy())
        assert array.shape == tuple(tensor.shape) and array.flags.writeable
    assert as_ids(ids).dtype == np.int32 and as_table(table).dtype == np.float64


def test_torch_tensors_through_the_public_functions(rng):
    torch = _torch()
    table = torch.from_numpy(rng.standard_normal((40, 6)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 40, size=(3, 7)))
    out = torch.full((3, 7, 6), float("nan"))
    result = fastembed.gather(table, ids, out=out)
    assert isinstance(result, np.ndarray) and result.ctypes.data == out.data_ptr()
    assert torch.equal(out, torch.nn.functional.embedding(ids, table))
    assert isinstance(fastembed.gather(table, ids), np.ndarray)

    grad = torch.from_numpy(rng.standard_normal((3, 7, 6)).astype(np.float32))
    dense = torch.zeros(40, 6)
    assert fastembed.scatter_add(dense, ids, grad) is dense          # written in place, no copy
    expected = torch.zeros(40, 6).index_add_(0, ids.reshape(-1), grad.reshape(-1, 6))
    torch.testing.assert_close(dense, expected, rtol=1e-6, atol=1e-6)

    sparse = fastembed.sparse_grad(ids, grad, num_rows=40)
    np.testing.assert_array_equal(sparse.to_dense(), fastembed.scatter_add(np.zeros((40, 6), np.float32),
                                                                           ids.numpy(), grad.numpy()))


def test_non_contiguous_torch_tensors_are_copied_once(rng):
    torch = _torch()
    base = torch.from_numpy(rng.standard_normal((50, 12)))
    table = base[::2, ::3]
    ids = torch.from_numpy(rng.integers(0, 25, size=(6, 4))).T
    np.testing.assert_array_equal(fastembed.gather(table, ids), table.numpy()[ids.numpy()])
    flat = as_ids(ids)
    assert flat.flags.c_contiguous and not np.shares_memory(flat, ids.numpy())


def test_jax_arrays_are_shared_and_read_only_exports_still_read(rng):
    jnp = _jnp()
    table = jnp.asarray(rng.standard_normal((30, 4)).astype(np.float32))
    ids = jnp.asarray(rng.integers(0, 30, size=(5, 3)).astype(np.int32))
    for array, source in ((as_table(table), table), (as_ids(ids), ids), (as_float(table, "grad_out"), table)):
        assert array.ctypes.data == source.unsafe_buffer_pointer()
        assert not array.flags.writeable
    np.testing.assert_array_equal(fastembed.gather(table, ids), np.asarray(jnp.take(table, ids, axis=0)))
    sparse = fastembed.sparse_grad(ids, jnp.ones((5, 3, 4), jnp.float32), num_rows=30)
    np.testing.assert_array_equal(sparse.rows, np.unique(np.asarray(ids)))
    with pytest.raises(ValueError, match="dense_grad is read-only"):
        fastembed.scatter_add(jnp.zeros((30, 4), jnp.float32), ids, jnp.ones((5, 3, 4), jnp.float32))
    with pytest.raises(TypeError, match="table cannot be shared with numpy without a copy"):
        fastembed.gather(jnp.zeros((30, 4), jnp.bfloat16), ids)


class _DeviceArray:
    """Speaks DLPack from a CUDA device; exporting it would be a bug, so ``__dlpack__`` fails loudly."""

    def __dlpack_device__(self):
        return 2, 1

    def __dlpack__(self, **kwargs):
        raise AssertionError("a device array must be refused before it is exported")


def test_device_arrays_are_refused_naming_the_argument():
    table = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"ids is on a CUDA device \(id 1\); .*run on the CPU"):
        fastembed.gather(table, _DeviceArray())
    with pytest.raises(ValueError, match="table is on a CUDA device"):
        fastembed.gather(_DeviceArray(), [0])
    with pytest.raises(ValueError, match="grad_out is on a CUDA device"):
        fastembed.sparse_grad([0], _DeviceArray())
    out = np.full((1, 2), 7.0, np.float32)
    with pytest.raises(ValueError, match="out is on a CUDA device"):
        fastembed.gather(table, [0], out=_DeviceArray())
    assert (out == 7.0).all()


def test_torch_meta_and_unsupported_dtypes_are_refused():
    torch = _torch()
    with pytest.raises(ValueError, match="table is on meta; fastembed.s kernels run on the CPU"):
        fastembed.gather(torch.empty(4, 2, device="meta"), [0])
    with pytest.raises(TypeError, match="table cannot be shared with numpy without a copy"):
        fastembed.gather(torch.zeros(4, 2, dtype=torch.bfloat16), [0])
    half = torch.randn(4, 2).half()      # float16 tables are read through the low-precision path
    np.testing.assert_array_equal(fastembed.gather(half, [3, 1]), fastembed.gather(half.numpy(), [3, 1]))
    with pytest.raises(TypeError, match="dense_grad must be float32 or float64, got dtype float16"):
        fastembed.scatter_add(half, [0], np.ones((1, 2)))
    with pytest.raises(TypeError, match="ids must be an integer array"):
        fastembed.gather(torch.zeros(4, 2), torch.zeros(3))
    dense = torch.zeros(4, 2)
    with pytest.raises(IndexError, match=r"ids\[1\] = 4"):
        fastembed.scatter_add(dense, torch.tensor([0, 4]), torch.ones(2, 2))
    assert not dense.any()


def test_importing_fastembed_imports_neither_torch_nor_jax():
    code = "import sys, fastembed; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
