"""The ``out_of_range=`` policy of gather, sparse_grad, Embedding and the bags against a numpy oracle of its
definition."""
import numpy as np
import pytest
from conftest import FLOAT_DTYPES, INDEX_DTYPES

import fastembed
from fastembed import _out_of_range, _remap
from fastembed import _reference as ref

POLICIES = ["clip", "zero", 3]


def _mapped(ids, n_rows, policy):
    """The numpy definition: the row each id reads, or -1 for none ("zero")."""
    ids = np.asarray(ids).astype(np.int64)
    valid = (ids >= 0) & (ids < n_rows)
    if policy == "clip":
        return np.clip(ids, 0, n_rows - 1)
    if policy == "zero":
        return np.where(valid, ids, -1)
    return np.where(valid, ids, policy)


def _oracle_gather(table, ids, policy):
    rows = _mapped(ids, table.shape[0], policy)
    out = table[np.maximum(rows, 0)] if table.shape[0] else np.zeros(rows.shape + (table.shape[1],), table.dtype)
    out[rows < 0] = 0
    return out


def _oracle_sparse_grad(ids, grad_out, n_rows, policy):
    rows = _mapped(ids, n_rows, policy).reshape(-1)
    grad = np.asarray(grad_out).reshape(rows.shape[0], np.shape(grad_out)[-1])
    keep = rows >= 0
    return ref.sparse_grad(rows[keep], grad[keep])


def _ids_with_strays(rng, shape, n_rows, index_dtype):
    """Valid ids with about a third replaced by -1, -n_rows, n_rows, n_rows + 5 and the dtype's extremes."""
    ids = rng.integers(0, n_rows, size=shape)
    info = np.iinfo(index_dtype)
    strays = np.array([-1, -n_rows, n_rows, n_rows + 5, info.min, info.max])
    mask = rng.random(shape) < 0.35
    ids[mask] = rng.choice(strays, size=int(mask.sum()))
    return ids.astype(index_dtype)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("shape", [(0,), (7,), (4, 9), (40_000,)])
def test_gather_policy_matches_definition(rng, policy, dtype, index_dtype, n_threads, shape):
    table = rng.standard_normal((12, 5)).astype(dtype)
    ids = _ids_with_strays(rng, shape, 12, index_dtype)
    out = fastembed.gather(table, ids, n_threads=n_threads, out_of_range=policy)
    np.testing.assert_array_equal(out, _oracle_gather(table, ids, policy))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("shape", [(0,), (7,), (4, 9), (40_000,)])
def test_sparse_grad_policy_routes_gradient_to_the_row_read(rng, policy, index_dtype, n_threads, shape):
    ids = _ids_with_strays(rng, shape, 12, index_dtype)
    grad_out = rng.standard_normal(shape + (3,))
    grad = fastembed.sparse_grad(ids, grad_out, num_rows=12, n_threads=n_threads, out_of_range=policy)
    rows, values = _oracle_sparse_grad(ids, grad_out, 12, policy)
    np.testing.assert_array_equal(grad.rows, rows)
    np.testing.assert_array_equal(grad.values, values)   # same summation order as np.add.at: same bits
    assert grad.num_rows == 12


def test_policies_on_a_hand_worked_example():
    table = np.arange(10.0).reshape(5, 2)
    ids = np.array([[0, -1, 5], [7, 2, -(2**40)]])
    expected_first_column = {
        "clip": [[0, 0, 8], [8, 4, 0]],
        "zero": [[0, 0, 0], [0, 4, 0]],
        3: [[0, 6, 6], [6, 4, 6]],
    }
    for policy, column in expected_first_column.items():
        np.testing.assert_array_equal(fastembed.gather(table, ids, out_of_range=policy)[..., 0], column)
    grads = {policy: fastembed.sparse_grad(ids, np.ones((2, 3, 2)), num_rows=5, out_of_range=policy)
             for policy in expected_first_column}
    np.testing.assert_array_equal(grads["clip"].rows, [0, 2, 4])
    np.testing.assert_array_equal(grads["clip"].values[:, 0], [3, 1, 2])
    np.testing.assert_array_equal(grads["zero"].rows, [0, 2])
    np.testing.assert_array_equal(grads["zero"].values[:, 0], [1, 1])
    np.testing.assert_array_equal(grads[3].rows, [0, 2, 3])
    np.testing.assert_array_equal(grads[3].values[:, 0], [1, 1, 4])


def test_zero_policy_on_a_table_without_rows():
    out = fastembed.gather(np.zeros((0, 3), np.float32), [[1, -1]], out_of_range="zero")
    assert out.shape == (1, 2, 3) and not out.any()
    with pytest.raises(ValueError, match="out_of_range='clip' needs a table with at least one row"):
        fastembed.gather(np.zeros((0, 3), np.float32), [1], out_of_range="clip")


def test_all_ids_out_of_range_under_zero_gives_an_empty_gradient():
    grad = fastembed.sparse_grad([-1, 9, 9], np.ones((3, 2)), num_rows=5, out_of_range="zero")
    assert grad.rows.shape == (0,) and grad.values.shape == (0, 2)
    assert not grad.to_dense().any()


@pytest.mark.parametrize("policy", ["clip", "zero"])
def test_int32_ids_with_more_rows_than_int32_holds(policy):
    """Remapping int32 ids against 2**40 rows must widen: the "zero" marker (2**40) does not fit in int32."""
    ids = np.array([5, -1, 7, -3], np.int32)
    grad = fastembed.sparse_grad(ids, np.ones((4, 1)), num_rows=2**40, out_of_range=policy)
    expected = {"clip": ([0, 5, 7], [2, 1, 1]), "zero": ([5, 7], [1, 1])}[policy]
    np.testing.assert_array_equal(grad.rows, expected[0])
    np.testing.assert_array_equal(grad.values[:, 0], expected[1])


def test_valid_ids_never_reach_the_mapping_kernels(monkeypatch, rng):
    """Only a batch with a stray id pays for mapping; valid ids run the plain kernels and copy nothing."""
    def refuse(*args):
        raise AssertionError("mapping kernel called for valid ids")

    monkeypatch.setattr(_remap, "gather_rows_mapped", refuse)
    monkeypatch.setattr(_out_of_range, "remap", refuse)
    table = rng.standard_normal((50, 4))
    ids = rng.integers(0, 50, size=(30, 7))
    for policy in POLICIES:
        np.testing.assert_array_equal(fastembed.gather(table, ids, out_of_range=policy), table[ids])
        grad = fastembed.sparse_grad(ids, np.ones(ids.shape + (4,)), num_rows=50, out_of_range=policy)
        np.testing.assert_array_equal(grad.rows, np.unique(ids))
    with pytest.raises(AssertionError, match="mapping kernel"):
        fastembed.gather(table, [50], out_of_range="clip")


@pytest.mark.parametrize("policy", POLICIES)
def test_layer_forward_backward_and_gradcheck_under_each_policy(rng, policy):
    layer = fastembed.Embedding(8, 3, out_of_range=policy, dtype="float64", seed=0)
    ids = np.array([[0, 8, 2, -1], [3, 3, 100, 7]])
    table = layer.embeddings.copy()
    np.testing.assert_array_equal(layer(ids), _oracle_gather(table, ids, policy))
    grad_out = rng.standard_normal((2, 4, 3))
    grad = layer.backward(ids, grad_out)
    rows, values = _oracle_sparse_grad(ids, grad_out, 8, policy)
    np.testing.assert_array_equal(grad.rows, rows)
    np.testing.assert_array_equal(grad.values, values)
    layer.step(0.5)
    expected = table.copy()
    expected[rows] -= 0.5 * values
    np.testing.assert_array_equal(layer.embeddings, expected)
    # Finite differences, independent of the analytic path: rows never read must get no gradient.
    report = fastembed.gradcheck(layer, ids)
    assert report.ok, report
    assert f"out_of_range={policy!r}" in repr(layer)


def test_gradcheck_detects_a_gradient_sent_to_the_wrong_row(monkeypatch):
    """The check above can fail: a backward that ignores the policy is caught."""
    layer = fastembed.Embedding(8, 2, out_of_range=3, dtype="float64", seed=0)
    ids = np.array([1, 9, 9])

    def wrong_backward(ids, grad_out, n_threads=None):
        return fastembed.sparse_grad(np.clip(ids, 0, 7), grad_out, num_rows=8)

    monkeypatch.setattr(layer, "backward", wrong_backward)
    assert not fastembed.gradcheck(layer, ids).ok


def test_layer_raises_by_default_and_validates_its_policy():
    with pytest.raises(IndexError, match=r"ids\[1\] = 8 is out of range \[0, 8\)"):
        fastembed.Embedding(8, 2)([0, 8])
    with pytest.raises(ValueError, match=r"out_of_range=8 is not a row of the table"):
        fastembed.Embedding(8, 2, out_of_range=8)
    layer = fastembed.Embedding(8, 2, out_of_range=np.int64(7), seed=1)
    np.testing.assert_array_equal(layer([-5, 2]), layer.embeddings[[7, 2]])


@pytest.mark.parametrize("storage", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("policy", POLICIES)
def test_low_precision_tables_follow_the_policy(rng, storage, policy):
    from fastembed import lowp

    table = lowp.encode(rng.standard_normal((12, 5)).astype(np.float32), storage)
    ids = _ids_with_strays(rng, (6, 7), 12, np.int64)
    expected = _oracle_gather(lowp.decode(table), ids, policy)
    for n_threads in (1, 2):
        np.testing.assert_array_equal(fastembed.gather(table, ids, n_threads=n_threads, out_of_range=policy),
                                      expected)


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_composes_with_the_lookup_options(rng, policy):
    """padding_idx, scale_grad_by_freq and max_norm act on the row that was read; gradcheck confirms it."""
    ids = np.array([[0, 8, 2, -1, 2], [3, 3, 100, 7, 5]])
    for options in ({"padding_idx": 3, "scale_grad_by_freq": True},
                    {"max_norm": 0.05, "max_norm_mode": "output"}):
        layer = fastembed.Embedding(8, 3, out_of_range=policy, dtype="float64", seed=0, **options)
        report = fastembed.gradcheck(layer, ids)
        assert report.ok, (options, report)


@pytest.mark.parametrize("policy", POLICIES)
def test_inplace_max_norm_renormalises_the_rows_read(policy):
    layer = fastembed.Embedding(8, 2, out_of_range=policy, max_norm=1.0, embeddings_initializer="ones",
                                dtype="float64")
    ids = np.array([1, -4, 9])
    rows = _mapped(ids, 8, policy)
    layer(ids)
    norms = np.linalg.norm(layer.embeddings, axis=1)
    read = np.unique(rows[rows >= 0])
    np.testing.assert_allclose(norms[read], 1.0, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(8), read)
    np.testing.assert_array_equal(norms[untouched], np.sqrt(2.0))


# --- bags ---------------------------------------------------------------------------------------------------
def _oracle_bag_inputs(ids, offsets, weights, n_rows, policy):
    """The bag batch the policy defines: mapped ids, and under "zero" the stray positions left out of their bags."""
    rows = _mapped(ids, n_rows, policy)
    bounds = np.append(offsets, ids.shape[0])
    keep = rows >= 0
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return rows[keep], kept_before[bounds[:-1]], None if weights is None else weights[keep]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_bags_follow_the_policy(rng, policy, mode, n_threads):
    table = rng.standard_normal((12, 5))
    ids = _ids_with_strays(rng, 60, 12, np.int64)
    offsets = np.array([0, 4, 4, 9, 30, 59])
    weights = None if mode == "max" else rng.uniform(0.5, 1.5, size=60)
    grad_out = rng.standard_normal((6, 5))
    mapped, mapped_offsets, mapped_weights = _oracle_bag_inputs(ids, offsets, weights, 12, policy)
    expected = ref.embedding_bag(table, mapped, mapped_offsets, mode, mapped_weights, padding_idx=1)
    got = fastembed.embedding_bag(table, ids, offsets, mode=mode, per_sample_weights=weights, padding_idx=1,
                                  out_of_range=policy, n_threads=n_threads)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                            padding_idx=1, table=table, out_of_range=policy, n_threads=n_threads)
    expected_grad = ref.embedding_bag_grad(table, mapped, grad_out, mapped_offsets, mode, mapped_weights,
                                           padding_idx=1)
    np.testing.assert_allclose(grad.to_dense(12), expected_grad, rtol=1e-12, atol=1e-12)
    layer = fastembed.EmbeddingBag.from_pretrained(table, mode=mode, padding_idx=1, out_of_range=policy)
    assert layer(ids, offsets, weights, n_threads=n_threads).tobytes() == got.tobytes()
    layer.trainable = True
    layer_grad = layer.backward(ids, offsets, grad_out, weights, n_threads=n_threads)
    assert layer_grad.rows.tobytes() == grad.rows.tobytes() and layer_grad.values.tobytes() == grad.values.tobytes()


@pytest.mark.parametrize("policy", POLICIES)
def test_bag_fused_step_follows_the_policy(rng, policy):
    w0 = rng.standard_normal((12, 5)).astype(np.float32)
    fused, split = (fastembed.EmbeddingBag(12, 5, mode="mean", weights=w0, out_of_range=policy) for _ in range(2))
    fused_opt, split_opt = fastembed.optim.SparseAdam(fused, lr=0.1), fastembed.optim.SparseAdam(split, lr=0.1)
    for _ in range(3):
        ids, offsets = _ids_with_strays(rng, 40, 12, np.int64), np.array([0, 10, 10, 25])
        grad_out = rng.standard_normal((4, 5)).astype(np.float32)
        fused_opt.fused_step(ids, grad_out, offsets=offsets, n_threads=2)
        split.backward(ids, offsets, grad_out)
        split_opt.step()
    assert fused.embeddings.tobytes() == split.embeddings.tobytes()


def test_every_lookup_raises_the_same_message(rng):
    table = rng.standard_normal((12, 5))
    ids = np.array([[1, 2, 3], [4, 12, 5]])
    message = r"^ids\[1, 1\] = 12 is out of range \[0, 12\) for a table of 12 rows$"
    calls = [lambda: fastembed.gather(table, ids), lambda: fastembed.embedding_bag(table, ids),
             lambda: fastembed.Embedding.from_pretrained(table)(ids),
             lambda: fastembed.EmbeddingBag.from_pretrained(table)(ids),
             lambda: fastembed.sparse_grad(ids, np.ones((2, 3, 5)), num_rows=12),
             lambda: fastembed.embedding_bag_backward(ids, np.ones((2, 5)), num_rows=12)]
    for call in calls:
        with pytest.raises(IndexError, match=message):
            call()
    for make in (fastembed.Embedding, fastembed.EmbeddingBag):
        with pytest.raises(ValueError, match=r"^out_of_range=12 is not a row of the table: it must lie in \[0, 12\)$"):
            make(12, 5, out_of_range=12)
    with pytest.raises(ValueError, match=r"^out_of_range must be 'raise', 'clip', 'zero' or an int row, got 'wrap'$"):
        fastembed.embedding_bag(table, ids, out_of_range="wrap")
    with pytest.raises(ValueError, match=r"^out_of_range='clip' needs the table's row count \(num_rows\)$"):
        fastembed.embedding_bag_backward(ids, np.ones((2, 5)), out_of_range="clip")


@pytest.mark.parametrize("policy", POLICIES)
def test_bag_layer_checkpoint_keeps_the_policy(tmp_path, rng, policy):
    layer = fastembed.EmbeddingBag(12, 3, mode="sum", seed=0, out_of_range=policy)
    layer.save(tmp_path / "bag.npz")
    loaded = fastembed.EmbeddingBag.load(tmp_path / "bag.npz")
    assert loaded.out_of_range == policy and repr(loaded) == repr(layer)
    ids = _ids_with_strays(rng, (4, 6), 12, np.int64)
    assert loaded(ids).tobytes() == layer(ids).tobytes()
