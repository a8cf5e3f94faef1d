"""JAX integration: ``fastembed.jax.lookup(table, ids)``, equal to ``jnp.take(table, ids, axis=0)`` for ids in
range, usable under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.

The forward pass is fastembed's ``gather`` and the gradient with respect to the table its transpose,
``scatter_add`` into a dense (V, D) zero array (duplicates summed): the same values as ``jnp.take``'s
gradient. Both run as ``jax.pure_callback`` on the host, so ``import fastembed.jax`` is the only place fastembed
imports jax (an optional extra).

Limits:
- The kernels run on the CPU. On an accelerator backend JAX copies the arguments to the host and the result
  back, which costs more than it saves; use ``jnp.take`` there.
- table: (V, D) float32 or float64 (float64 needs ``jax.config.update("jax_enable_x64", True)`` or the
  ``jax.enable_x64`` context, as everywhere in JAX); ids: int32/int64 of any shape (other integer dtypes are
  converted; int64 also needs x64).
- ids must lie in ``[0, V)``: concrete ids (numpy, lists, jax arrays outside ``jit``) are checked before JAX
  sees them, with fastembed's ``IndexError`` naming the position and value; traced ids (under ``jit``) are
  checked by the callback, whose failure JAX raises as a runtime error. ``jnp.take`` would fill NaN or wrap
  negative ids instead.
- Reverse mode only (``jax.grad``, ``jax.vjp``, any order, since the gradient's own gradient is the lookup
  again); ``jax.jvp``/``jacfwd`` are refused by ``custom_vjp``. Under ``vmap`` the callback runs once per
  batch element.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from fastembed._validation import as_ids, check_rows
from fastembed.ops import gather, scatter_add

__all__ = ["lookup"]

_FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
_INDEX_DTYPES = (jnp.dtype(jnp.int32), jnp.dtype(jnp.int64))


def lookup(table, ids):
    """``table[ids]``: table (V, D) float32/float64, ids integer of any shape → ``ids.shape + (D,)``.

    Differentiable with respect to ``table`` (the gradient is dense (V, D), duplicates summed); ids get no
    gradient. Raises ``TypeError``/``ValueError`` for a bad dtype or shape when traced.
    """
    table = jnp.asarray(table)
    if table.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"table must be float32 or float64, got dtype {table.dtype}")
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (rows, dim), got shape {table.shape}")
    if not isinstance(ids, jax.core.Tracer):
        # Concrete ids are checked here, where the error can name the position and value: inside the callback
        # it would surface as a JAX runtime error, and without x64 JAX would silently wrap int64 ids to int32.
        host = as_ids(ids)
        check_rows(host.reshape(-1), table.shape[0], 1, host.shape)
        ids = host
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}")
    if ids.dtype not in _INDEX_DTYPES:
        ids = ids.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    return _lookup(table.shape[0], table, ids)


def _gather_host(table, ids):
    return gather(table, ids)


def _scatter_host(grad_out, ids, num_rows):
    dense = np.zeros((num_rows, grad_out.shape[-1]), dtype=grad_out.dtype)
    return scatter_add(dense, ids, grad_out)


def _gather_call(table, ids):
    result = jax.ShapeDtypeStruct(ids.shape + (table.shape[1],), table.dtype)
    return jax.pure_callback(_gather_host, result, table, ids, vmap_method="sequential")


def _scatter_call(num_rows, grad_out, ids):
    result = jax.ShapeDtypeStruct((num_rows, grad_out.shape[-1]), grad_out.dtype)
    return jax.pure_callback(partial(_scatter_host, num_rows=num_rows), result, grad_out, ids,
                             vmap_method="sequential")


def _int_cotangent(ids):
    # custom_vjp wants a float0 zero cotangent for an integer argument.
    return np.zeros(ids.shape, dtype=jax.dtypes.float0)


# The lookup and the scatter are each other's transpose: each one's vjp is the other, so gradients of
# gradients (Hessian-vector products through the table) work too.
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lookup(num_rows, table, ids):
    return _gather_call(table, ids)


def _lookup_fwd(num_rows, table, ids):
    # Through the custom_vjp function itself, not the callback: an outer differentiation then sees a
    # differentiable function instead of a bare callback.
    return _lookup(num_rows, table, ids), ids


def _lookup_bwd(num_rows, ids, grad_out):
    return _scatter(num_rows, grad_out, ids), _int_cotangent(ids)


_lookup.defvjp(_lookup_fwd, _lookup_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scatter(num_rows, grad_out, ids):
    return _scatter_call(num_rows, grad_out, ids)


def _scatter_fwd(num_rows, grad_out, ids):
    return _scatter(num_rows, grad_out, ids), ids


def _scatter_bwd(num_rows, ids, grad_table):
    return _lookup(num_rows, grad_table, ids), _int_cotangent(ids)


_scatter.defvjp(_scatter_fwd, _scatter_bwd)
