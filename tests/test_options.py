"""padding_idx, scale_grad_by_freq and max_norm against numpy oracles, PyTorch and finite differences."""
import numpy as np
import pytest

import fastembed
from fastembed import _reference as ref
from conftest import FLOAT_DTYPES, INDEX_DTYPES, THREADS

NORM_TYPES = [1.0, 2.0, np.inf, 3.0, 0.5]


def _ids_with_duplicates(rng, rows, shape):
    ids = rng.integers(0, rows, size=shape)
    ids.reshape(-1)[: ids.size // 3] = 2          # one id many times, and the padding id below
    ids.reshape(-1)[ids.size // 3: ids.size // 2] = 0
    return ids


def _oracle_grad(ids, grad_out, padding_idx=None, scale_grad_by_freq=False):
    """np.unique + np.add.at over the kept positions, then division by the counts of all positions."""
    flat = ids.reshape(-1)
    grad = grad_out.reshape(flat.size, -1)
    keep = flat != padding_idx if padding_idx is not None else np.ones(flat.size, bool)
    rows, values = ref.sparse_grad(flat[keep], grad[keep])
    if scale_grad_by_freq:
        values /= np.array([np.count_nonzero(flat == r) for r in rows], dtype=values.dtype).reshape(-1, 1)
    return rows, values


def _oracle_renorm(table, ids, max_norm, p):
    table = table.copy()
    for row in np.unique(ids):
        norm = np.linalg.norm(table[row].astype(np.float64), ord=p)
        if norm > max_norm:
            table[row] = table[row] * table.dtype.type(max_norm / (norm + 1e-7))
    return table


# --- padding_idx and scale_grad_by_freq in sparse_grad -------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("padding_idx, by_freq", [(0, False), (None, True), (0, True), (49, True)])
def test_sparse_grad_options_match_oracle(rng, dtype, index_dtype, n_threads, padding_idx, by_freq):
    ids = _ids_with_duplicates(rng, 50, (40, 30)).astype(index_dtype)
    grad_out = rng.standard_normal(ids.shape + (5,)).astype(dtype)
    got = fastembed.sparse_grad(ids, grad_out, num_rows=50, n_threads=n_threads, padding_idx=padding_idx,
                                scale_grad_by_freq=by_freq)
    rows, values = _oracle_grad(ids, grad_out, padding_idx, by_freq)
    np.testing.assert_array_equal(got.rows, rows)
    # The same sums in the same order, then one correctly rounded division: the same bits.
    assert got.values.dtype == dtype and got.values.tobytes() == values.tobytes()
    if padding_idx is not None:
        assert padding_idx not in got.rows


def test_padding_idx_edge_cases(rng):
    grad_out = rng.standard_normal((6, 3))
    everything_padding = fastembed.sparse_grad(np.full(6, 4), grad_out, num_rows=5, padding_idx=-1)
    assert everything_padding.rows.shape == (0,) and everything_padding.values.shape == (0, 3)
    for ids in ([4, 0, 1, 2, 3, 3], [0, 1, 2, 3, 3, 4], [2, 2, 4, 2, 2, 2]):   # padding first, last, alone
        got = fastembed.sparse_grad(ids, grad_out, num_rows=5, padding_idx=4)
        rows, values = _oracle_grad(np.array(ids), grad_out, 4)
        np.testing.assert_array_equal(got.rows, rows)
        np.testing.assert_array_equal(got.values, values)
    absent = fastembed.sparse_grad([0, 1, 1], grad_out[:3], padding_idx=3)
    np.testing.assert_array_equal(absent.rows, [0, 1])


def test_options_are_deterministic_across_threads(rng):
    table = rng.standard_normal((3000, 24)).astype(np.float32)
    ids = _ids_with_duplicates(rng, 3000, (200, 300))
    grad_out = rng.standard_normal(ids.shape + (24,)).astype(np.float32)
    grads, clipped, renormed, clip_grads = set(), set(), set(), set()
    for n_threads in (1, 2, 3, 8):
        grads.add(fastembed.sparse_grad(ids, grad_out, padding_idx=0, scale_grad_by_freq=True,
                                        n_threads=n_threads).values.tobytes())
        clipped.add(fastembed.gather(table, ids, max_norm=3.0, n_threads=n_threads).tobytes())
        renormed.add(fastembed.renorm_(table.copy(), ids, 3.0, n_threads=n_threads).tobytes())
        clip_grads.add(fastembed.sparse_grad(ids, grad_out, max_norm=3.0, table=table, scale_grad_by_freq=True,
                                             n_threads=n_threads).values.tobytes())
    assert len(grads) == len(clipped) == len(renormed) == len(clip_grads) == 1


# --- max_norm: in place and on the output -------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_renorm_matches_oracle_and_touches_only_looked_up_rows(rng, dtype, norm_type, n_threads):
    table = (rng.standard_normal((400, 16)) * rng.uniform(0.05, 1.0, (400, 1))).astype(dtype)
    ids = _ids_with_duplicates(rng, 400, (30, 40))
    expected = _oracle_renorm(table, ids, 1.0, norm_type)
    got = table.copy()
    assert fastembed.renorm_(got, ids, 1.0, norm_type, n_threads=n_threads) is got
    rtol = 1e-14 if dtype == np.float64 else 2e-7     # the oracle sums in numpy's (pairwise) order
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)
    untouched = np.setdiff1d(np.arange(400), ids)
    assert got[untouched].tobytes() == table[untouched].tobytes()
    norms = np.linalg.norm(got[np.unique(ids)].astype(np.float64), ord=norm_type, axis=1)
    assert norms.max() <= 1.0 * (1 + 4 * np.finfo(dtype).eps)
    assert 0 < (norms < np.linalg.norm(table[np.unique(ids)].astype(np.float64), ord=norm_type, axis=1)).sum()


def test_renorm_on_a_strided_table_writes_back(rng):
    base = rng.standard_normal((60, 10)) * 3
    table, others = base[::2], base[1::2].copy()
    ids = np.array([0, 5, 5, 29])
    expected = _oracle_renorm(table, ids, 1.0, 2.0)
    fastembed.renorm_(table, ids, 1.0)
    np.testing.assert_allclose(table, expected, rtol=1e-15)
    assert base[1::2].tobytes() == others.tobytes()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_output_clip_is_renorm_without_the_side_effect(rng, dtype, norm_type):
    table = (rng.standard_normal((300, 12)) * 0.6).astype(dtype)
    ids = _ids_with_duplicates(rng, 300, (25, 17))
    before = table.copy()
    clipped = fastembed.gather(table, ids, max_norm=1.0, norm_type=norm_type, n_threads=2)
    assert table.tobytes() == before.tobytes()
    renormed = fastembed.renorm_(table.copy(), ids, 1.0, norm_type)
    assert clipped.tobytes() == renormed[ids].tobytes()
    out = np.empty_like(clipped)
    assert fastembed.gather(table, ids, out=out, max_norm=1.0, norm_type=norm_type) is out
    assert out.tobytes() == clipped.tobytes()


@pytest.mark.parametrize("norm_type", [1.0, 2.0, np.inf, 3.0])
@pytest.mark.parametrize("by_freq", [False, True])
def test_gradcheck_output_clip(norm_type, by_freq):
    ids = np.array([[1, 2, 2, 3, 11], [4, 4, 4, 5, 1]])
    table = np.random.default_rng(1).standard_normal((12, 5))
    # A bound between the middle norms: some rows are clipped, some not, none near the kink.
    norms = np.sort(np.linalg.norm(table[np.unique(ids)], ord=norm_type, axis=1))
    max_norm = float(norms[len(norms) // 2 - 1] + norms[len(norms) // 2]) / 2
    layer = fastembed.Embedding(12, 5, dtype="float64", weights=table, max_norm=max_norm, norm_type=norm_type,
                                max_norm_mode="output", scale_grad_by_freq=by_freq)
    report = fastembed.gradcheck(layer, ids)
    assert report.ok, report


@pytest.mark.parametrize("norm_type", [1.0, 2.0, np.inf, 3.0])
def test_output_clip_gradient_matches_torch_autograd(rng, norm_type):
    torch = pytest.importorskip("torch")
    table = rng.standard_normal((40, 6))
    ids = _ids_with_duplicates(rng, 40, (7, 9))
    grad_out = rng.standard_normal(ids.shape + (6,))
    weight = torch.tensor(table, requires_grad=True)
    rows = weight[torch.tensor(ids)]
    norm = torch.linalg.vector_norm(rows, ord=norm_type, dim=-1, keepdim=True)
    clipped = rows * torch.where(norm > 1.5, 1.5 / (norm + 1e-7), torch.ones_like(norm))
    clipped.backward(torch.tensor(grad_out))
    np.testing.assert_allclose(fastembed.gather(table, ids, max_norm=1.5, norm_type=norm_type),
                               clipped.detach().numpy(), rtol=1e-14)
    got = fastembed.sparse_grad(ids, grad_out, max_norm=1.5, norm_type=norm_type, table=table)
    np.testing.assert_allclose(got.to_dense(40), weight.grad.numpy(), rtol=1e-12, atol=1e-14)


# --- against PyTorch's nn.Embedding over several training steps ----------------------------------------

@pytest.mark.parametrize("options", [
    dict(padding_idx=0),
    dict(padding_idx=-3, scale_grad_by_freq=True),
    dict(max_norm=1.0),
    dict(max_norm=0.7, norm_type=1.0, padding_idx=2, scale_grad_by_freq=True),
    dict(max_norm=0.5, norm_type=np.inf),
])
def test_training_matches_torch_embedding(rng, options):
    torch = pytest.importorskip("torch")
    initial = rng.standard_normal((30, 4)) * 0.8
    ours = fastembed.Embedding.from_pretrained(initial, trainable=True, **options)
    theirs = torch.nn.Embedding.from_pretrained(torch.tensor(initial), freeze=False, **options)
    for step in range(4):
        ids = _ids_with_duplicates(rng, 30, (6, 8))
        target = rng.standard_normal(ids.shape + (4,))
        y_ours = ours(ids)
        y_theirs = theirs(torch.tensor(ids))
        np.testing.assert_allclose(y_ours, y_theirs.detach().numpy(), rtol=1e-13, atol=1e-15)
        ours.backward(ids, y_ours - target)
        ours.step(0.3)
        loss = 0.5 * ((y_theirs - torch.tensor(target)) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            theirs.weight -= 0.3 * theirs.weight.grad
            theirs.weight.grad = None
        np.testing.assert_allclose(ours.embeddings, theirs.weight.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, np.inf])
def test_float32_renorm_agrees_with_torch_to_rounding(rng, norm_type):
    torch = pytest.importorskip("torch")
    table = (rng.standard_normal((2000, 64)) * rng.uniform(0.01, 0.3, (2000, 1))).astype(np.float32)
    ids = rng.integers(0, 2000, size=5000)
    theirs = torch.tensor(table)
    torch.embedding_renorm_(theirs, torch.tensor(ids), 1.0, norm_type)
    ours = fastembed.renorm_(table.copy(), ids, 1.0, norm_type)
    # PyTorch accumulates float32 norms in float32, fastembed in double: the factors differ by rounding,
    # and fastembed's are the closer to the float64 oracle's.
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6, atol=0)
    exact = _oracle_renorm(table.astype(np.float64), ids, 1.0, norm_type)
    assert np.abs(ours - exact).max() <= np.abs(theirs.numpy() - exact).max()


# --- the layer -----------------------------------------------------------------------------------------

def test_layer_padding_row(rng):
    layer = fastembed.Embedding(10, 3, padding_idx=-1, mask_zero=True, seed=0)
    assert layer.padding_idx == 9 and not layer.embeddings[9].any() and layer.embeddings[:9].all()
    ids = np.array([[9, 9, 1, 0], [2, 9, 0, 1]])
    np.testing.assert_array_equal(layer.compute_mask(ids), ids != 0)   # mask_zero is independent
    for _ in range(3):
        layer.backward(ids, rng.standard_normal((2, 4, 3)).astype(np.float32))
        assert 9 not in layer.grad.rows
        layer.step(0.5)
    assert not layer.embeddings[9].any()
    matrix = np.ones((10, 3))
    assert fastembed.Embedding(10, 3, padding_idx=4, weights=matrix).embeddings[4].tolist() == [1, 1, 1]
    assert "padding_idx=9" in repr(layer)


def test_gradcheck_padding_and_frequency_rules():
    ids = np.array([[0, 0, 1, 2, 3, 4], [0, 1, 2, 5, 3, 3]])
    layer = fastembed.Embedding(9, 3, seed=0, padding_idx=0, scale_grad_by_freq=True, dtype="float64")
    layer.embeddings[0] = np.random.default_rng(0).standard_normal(3)   # the check must not rely on zeros
    assert fastembed.gradcheck(layer, ids).ok

    wrong = _forgets(fastembed.Embedding(9, 3, seed=0, scale_grad_by_freq=True), "scale_grad_by_freq", False)
    report = fastembed.gradcheck(wrong, ids)
    assert not report.ok and report.worst_row in (0, 3)
    leaky = _forgets(fastembed.Embedding(9, 3, seed=0, padding_idx=0), "padding_idx", None)
    assert not fastembed.gradcheck(leaky, ids).ok


def _forgets(layer, option, value):
    """The layer, with a backward that runs as if ``option`` were ``value`` (a bug gradcheck must catch)."""
    backward = layer.backward

    def wrong_backward(ids, grad_out, n_threads=None):
        saved = getattr(layer, option)
        setattr(layer, option, value)
        try:
            return backward(ids, grad_out, n_threads)
        finally:
            setattr(layer, option, saved)

    layer.backward = wrong_backward
    return layer


def test_layer_max_norm_modes(rng):
    matrix = rng.standard_normal((20, 4)) * 2
    ids = np.array([1, 1, 5])
    inplace = fastembed.Embedding.from_pretrained(matrix, max_norm=1.0)
    output = fastembed.Embedding.from_pretrained(matrix, max_norm=1.0, max_norm_mode="output")
    y = inplace(ids)
    np.testing.assert_array_equal(output(ids), y)
    np.testing.assert_array_equal(output.embeddings, matrix)           # the table is untouched
    assert np.linalg.norm(inplace.embeddings[[1, 5]], axis=1).max() <= 1.0
    np.testing.assert_array_equal(inplace.embeddings[[0, 2]], matrix[[0, 2]])
    with pytest.raises(ValueError, match="gradcheck needs max_norm_mode='output'"):
        fastembed.gradcheck(inplace, ids)
    assert "max_norm_mode='output'" in repr(output)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx, error, message", [
    (10, ValueError, r"padding_idx must be in \[-10, 10\) for a table of 10 rows, got 10"),
    (-11, ValueError, r"padding_idx must be in \[-10, 10\).*got -11"),
    (1.0, TypeError, "padding_idx must be an int or None, got 1.0"),
    (True, TypeError, "padding_idx must be an int or None"),
])
def test_bad_padding_idx(padding_idx, error, message):
    with pytest.raises(error, match=message):
        fastembed.Embedding(10, 2, padding_idx=padding_idx)
    with pytest.raises(error, match=message):
        fastembed.sparse_grad([0, 1], np.ones((2, 2)), num_rows=10, padding_idx=padding_idx)
    with pytest.raises(ValueError, match="counts from the end of the table: pass num_rows"):
        fastembed.sparse_grad([0, 1], np.ones((2, 2)), padding_idx=-1)


@pytest.mark.parametrize("max_norm, error", [(0, ValueError), (-1.0, ValueError), (np.nan, ValueError),
                                             (True, TypeError), ("1", TypeError)])
def test_bad_max_norm(max_norm, error):
    table = np.ones((4, 2))
    message = "max_norm must be a positive number"
    with pytest.raises(error, match=message):
        fastembed.gather(table, [0], max_norm=max_norm)
    with pytest.raises(error, match=message):
        fastembed.renorm_(table, [0], max_norm)
    with pytest.raises(error, match=message):
        fastembed.Embedding(4, 2, max_norm=max_norm)
    assert (table == 1).all()


@pytest.mark.parametrize("norm_type, error", [(0, ValueError), (-2.0, ValueError), (np.nan, ValueError),
                                              (-np.inf, ValueError), (None, TypeError), ("fro", TypeError)])
def test_bad_norm_type(norm_type, error):
    message = "norm_type must be a positive number or inf"
    with pytest.raises(error, match=message):
        fastembed.gather(np.ones((4, 2)), [0], max_norm=1.0, norm_type=norm_type)
    with pytest.raises(error, match=message):
        fastembed.Embedding(4, 2, norm_type=norm_type)


def test_bad_clip_arguments_and_renorm_targets():
    table, grad_out = np.ones((4, 2)), np.ones((3, 2))
    with pytest.raises(ValueError, match="max_norm needs the table the rows were read from: pass table="):
        fastembed.sparse_grad([0, 1, 2], grad_out, max_norm=1.0)
    with pytest.raises(TypeError, match="table has dtype float32 but grad_out has dtype float64"):
        fastembed.sparse_grad([0, 1, 2], grad_out, max_norm=1.0, table=table.astype(np.float32))
    with pytest.raises(ValueError, match="table has 3 columns but grad_out rows have 2"):
        fastembed.sparse_grad([0, 1, 2], grad_out, max_norm=1.0, table=np.ones((4, 3)))
    with pytest.raises(ValueError, match="num_rows=5 but the table has 4 rows"):
        fastembed.sparse_grad([0, 1, 2], grad_out, num_rows=5, max_norm=1.0, table=table)
    with pytest.raises(IndexError, match=r"ids\[2\] = 4 is out of range \[0, 4\)"):
        fastembed.sparse_grad([0, 1, 4], grad_out, max_norm=1.0, table=table)
    with pytest.raises(ValueError, match="max_norm_mode must be one of 'inplace', 'output', got 'clip'"):
        fastembed.Embedding(4, 2, max_norm=1.0, max_norm_mode="clip")
    big = np.full((4, 2), 5.0)
    with pytest.raises(IndexError, match=r"ids\[1, 0\] = -1 is out of range"):
        fastembed.renorm_(big, [[0, 1], [-1, 2]], 1.0)
    assert (big == 5.0).all()
    read_only = big.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="table is read-only"):
        fastembed.renorm_(read_only, [0], 1.0)
    with pytest.raises(TypeError, match="table must be float32 or float64"):
        fastembed.renorm_(np.ones((4, 2), np.float16), [0], 1.0)
