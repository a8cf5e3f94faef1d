"""fastembed: fast, exact embedding-table kernels for numpy, PyTorch and JAX.

The forward pass of an embedding is a row gather (``gather``); its backward pass is a sparse scatter-add
of output gradients into the rows that were looked up (``sparse_grad``, ``scatter_add``). ``Embedding`` is
a Keras-style layer over both; ``gradcheck`` verifies a layer's gradient numerically. ``renorm_`` bounds
looked-up rows' norms in place, as PyTorch's ``max_norm``; ``lowp`` holds float16, bfloat16 and int8 tables.
"""
import os as _os
import warnings as _warnings

from fastembed._build_info import openmp_enabled
from fastembed._threads import get_num_threads, set_num_threads
from fastembed.bags import EmbeddingBag, embedding_bag, embedding_bag_backward
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
    "renorm_",
    "scatter_add",
    "set_num_threads",
    "sparse_grad",
]

if not openmp_enabled():
    if _os.environ.get("FASTEMBED_REQUIRE_OPENMP", "0") not in ("", "0"):
        raise ImportError("fastembed was built without OpenMP, and FASTEMBED_REQUIRE_OPENMP is set")
    _warnings.warn("fastembed was built without OpenMP: kernels run on one thread", RuntimeWarning, stacklevel=2)
