"""Numerical gradient checks of the layer under several losses."""
import numpy as np
import pytest

import fastembed


def _loss_sum_squares(y):
    return 0.5 * float(np.sum(y * y)), y


def _loss_masked_mean_logistic(mask):
    def loss(y):
        weights = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        pooled = np.einsum("bt,btd->bd", weights, y)
        logits = pooled.sum(axis=1)
        value = float(np.sum(np.log1p(np.exp(-logits))))
        d_logits = -1.0 / (1.0 + np.exp(logits))
        return value, weights[:, :, None] * d_logits[:, None, None] * np.ones_like(y)
    return loss


def _loss_cubic(y):
    return float(np.sum(y**3)) / 3.0, y * y


@pytest.mark.parametrize("loss_name", ["default", "sum_squares", "masked_logistic", "cubic"])
def test_gradcheck_passes_on_several_losses(loss_name):
    ids = np.array([[0, 0, 1, 2, 3, 4], [0, 1, 2, 5, 3, 3]])
    layer = fastembed.Embedding(9, 3, seed=0, mask_zero=True)
    loss = {
        "default": None,
        "sum_squares": _loss_sum_squares,
        "masked_logistic": _loss_masked_mean_logistic(ids != 0),
        "cubic": _loss_cubic,
    }[loss_name]
    weights_before = layer.embeddings.copy()
    report = fastembed.gradcheck(layer, ids, loss=loss)
    assert report.ok, report
    assert report.max_abs_err < 1e-8 and report.worst_row is not None
    assert report.checked_rows == 6 + 3     # 6 looked-up rows and the 3 untouched ones
    assert report.untouched_nonzero == []
    assert layer.embeddings.tobytes() == weights_before.tobytes() and layer.grad is None


class _WrongBackward(fastembed.Embedding):
    """A layer whose backward forgets duplicates: the check must catch it and name the row."""

    def backward(self, ids, grad_out, n_threads=None):
        flat = np.asarray(ids).reshape(-1)
        _, first = np.unique(flat, return_index=True)
        keep = np.zeros(flat.size, bool)
        keep[first] = True
        grad = np.asarray(grad_out).reshape(flat.size, -1) * keep[:, None]
        return super().backward(flat, grad, n_threads)


def test_gradcheck_detects_a_wrong_gradient():
    layer = _WrongBackward(10, 2, seed=0)
    report = fastembed.gradcheck(layer, np.array([1, 4, 4, 6]))
    assert not report.ok and report.worst_row == 4 and report.max_abs_err > 1e-3


class _LeakyBackward(fastembed.Embedding):
    """A backward that writes gradient into a row nobody looked up."""

    def backward(self, ids, grad_out, n_threads=None):
        flat = np.concatenate([np.asarray(ids).reshape(-1), [9]])
        grad = np.concatenate([np.asarray(grad_out).reshape(-1, self.output_dim), np.ones((1, self.output_dim))])
        return super().backward(flat, grad, n_threads)


def test_gradcheck_detects_gradient_in_untouched_rows():
    report = fastembed.gradcheck(_LeakyBackward(10, 2, seed=0), np.array([1, 2]))
    assert not report.ok and 9 in report.untouched_nonzero


def test_gradcheck_on_frozen_layer_restores_state():
    layer = fastembed.Embedding(6, 2, seed=0, trainable=False)
    assert fastembed.gradcheck(layer, np.array([1, 2, 2])).ok
    assert not layer.trainable and layer.grad is None and layer.dtype == np.float32
