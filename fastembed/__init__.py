"""fastembed: fast, exact embedding-table kernels for numpy, PyTorch and JAX.

The forward pass of an embedding is a row gather (``gather``); its backward pass is a sparse scatter-add
of output gradients into the rows that were looked up (``sparse_grad``, ``scatter_add``). ``Embedding`` is
a Keras-style layer over both; ``gradcheck`` verifies a layer's gradient numerically. ``renorm_`` bounds
looked-up rows' norms in place, as PyTorch's ``max_norm``; ``lowp`` holds float16, bfloat16 and int8 tables.
Every function also takes torch tensors and jax arrays on the CPU without a copy; ``fastembed.torch`` (a
drop-in ``nn.Embedding``) and ``fastembed.jax`` (a differentiable ``lookup``) are imported on demand only.
"""
import os as _os
import warnings as _warnings

# OpenMP reads its wait policy once, when the runtime loads (with the first kernel module below). Threads
# that spin while waiting make a team collapse on a shared or oversubscribed machine (a 4 MB gather ran
# 20x slower on two threads than on one under load; sleeping waiters fixed it), so fastembed asks for
# sleeping waiters unless the user chose a policy. The variable is removed again at once so that OpenMP
# runtimes loaded later (e.g. torch's own copy) see the user's environment unchanged.
_choose_wait_policy = not any(name in _os.environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
if _choose_wait_policy:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
try:
    from fastembed._build_info import openmp_enabled
finally:
    if _choose_wait_policy:
        del _os.environ["OMP_WAIT_POLICY"]
from fastembed._threads import get_num_threads, set_num_threads
from fastembed.bags import EmbeddingBag, embedding_bag, embedding_bag_backward, per_sample_weights_grad
from fastembed.gradcheck import GradcheckReport, gradcheck
from fastembed.layers import Embedding
from fastembed import lowp
from fastembed.ops import gather, scatter_add, sparse_grad
from fastembed.renorm import renorm_
from fastembed.sparse import SparseGrad
from fastembed import optim

__version__ = "0.1.0"

__all__ = [
    "Embedding",
    "EmbeddingBag",
    "GradcheckReport",
    "SparseGrad",
    "embedding_bag",
    "embedding_bag_backward",
    "gather",
    "get_num_threads",
    "gradcheck",
    "lowp",
    "openmp_enabled",
    "optim",
    "per_sample_weights_grad",
    "renorm_",
    "scatter_add",
    "set_num_threads",
    "sparse_grad",
]

if not openmp_enabled():
    if _os.environ.get("FASTEMBED_REQUIRE_OPENMP", "0") not in ("", "0"):
        raise ImportError("fastembed was built without OpenMP, and FASTEMBED_REQUIRE_OPENMP is set")
    _warnings.warn("fastembed was built without OpenMP: kernels run on one thread", RuntimeWarning, stacklevel=2)
