"""A first look at the layer: embed padded sentences, mask padding, train a few SGD steps.

Run: ``python -m fastembed.examples.quickstart``
"""
import numpy as np

import fastembed


def main():
    # Two padded sentences over a 6-word vocabulary (0 is padding).
    ids = np.array([[0, 0, 1, 2, 3, 4], [0, 1, 2, 5, 3, 4]])
    layer = fastembed.Embedding(6, 4, mask_zero=True, seed=0)
    vectors = layer(ids)                       # (2, 6, 4)
    mask = layer.compute_mask(ids)             # (2, 6) bool
    print(layer)
    print("output shape:", vectors.shape, " mask:", mask.astype(int).tolist())

    # Pull the masked mean of each sentence towards a target vector with plain SGD on touched rows.
    target = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    weights = mask / mask.sum(axis=1, keepdims=True)
    for step in range(201):
        pooled = np.einsum("bt,btd->bd", weights, layer(ids))
        diff = pooled - target
        loss = 0.5 * float(np.sum(diff * diff))
        layer.backward(ids, weights[:, :, None] * diff[:, None, :])
        layer.step(lr=0.5)
        if step % 50 == 0:
            print(f"step {step:3d}  loss {loss:.6f}")

    report = fastembed.gradcheck(layer, ids)
    print(f"gradcheck ok={report.ok} max_abs_err={report.max_abs_err:.2e} "
          f"(OpenMP: {fastembed.openmp_enabled()}, threads: {fastembed.get_num_threads()})")


if __name__ == "__main__":
    main()
