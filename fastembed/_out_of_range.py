"""The ``out_of_range=`` policy of lookups: what an id outside ``[0, V)`` reads.

``"raise"`` (the default): an ``IndexError`` naming the first such id, before anything is written.
``"clip"``: the nearest row, as ``np.take(mode="clip")``: negative ids read row 0, ids >= V read row V - 1.
``"zero"``: a zero vector, and no gradient flows from that position.
an int ``r`` in ``[0, V)``: row ``r`` (a dedicated out-of-vocabulary row), which also receives the gradient.

The mapping is integer logic in the kernels, the same on every platform and for every thread count. Lookups
pay one parallel range count (the same one "raise" needs); only when it finds an out-of-range id do the mapping
kernels of ``fastembed._remap`` run, so valid ids are never copied. Bags reuse ``parse``, ``needs_mapping`` and
``remap``: under "zero" a remapped id equals V, one past the table, meaning "reads nothing", and the bag prelude
drops those positions from their bags.
"""
from typing import NamedTuple

import numpy as np

from fastembed import _index, _remap
from fastembed._validation import raise_out_of_range

RAISE = 0
CLIP = _remap.CLIP
ZERO = _remap.ZERO
ROW = _remap.ROW

_BY_NAME = {"raise": RAISE, "clip": CLIP, "zero": ZERO}


class Policy(NamedTuple):
    """A parsed policy: ``code`` (RAISE, CLIP, ZERO or ROW) and, for ROW, the ``row`` read (else -1)."""

    code: int
    row: int = -1


RAISE_POLICY = Policy(RAISE)


def parse(policy, n_rows, name="out_of_range"):
    """Check ``policy`` against a table of ``n_rows`` rows (None: unknown, then only "raise" is allowed)."""
    expected = "'raise', 'clip', 'zero' or an int row"
    if isinstance(policy, str):
        if policy not in _BY_NAME:
            raise ValueError(f"{name} must be {expected}, got {policy!r}")
        code = _BY_NAME[policy]
        if code != RAISE and n_rows is None:
            raise ValueError(f"{name}={policy!r} needs the table's row count (num_rows)")
        if code == CLIP and n_rows == 0:
            raise ValueError(f"{name}='clip' needs a table with at least one row, this one has 0")
        return Policy(code)
    if isinstance(policy, bool) or not isinstance(policy, (int, np.integer)):
        raise TypeError(f"{name} must be {expected}, got {policy!r}")
    row = int(policy)
    if n_rows is None:
        raise ValueError(f"{name}={row} needs the table's row count (num_rows)")
    if not 0 <= row < n_rows:
        raise ValueError(f"{name}={row} is not a row of the table: it must lie in [0, {n_rows})")
    return Policy(ROW, row)


def needs_mapping(flat_ids, n_rows, policy, n_threads, shape, name="ids"):
    """True when some of ``flat_ids`` lie outside ``[0, n_rows)`` and ``policy`` maps them.

    Under "raise" such an id is an ``IndexError`` naming its position in ``shape`` and its value.
    """
    bad = _index.first_out_of_range(flat_ids, n_rows, n_threads)
    if bad < 0:
        return False
    if policy.code == RAISE:
        raise_out_of_range(flat_ids, bad, n_rows, shape, name)
    return True


def remap(flat_ids, n_rows, policy, n_threads):
    """A copy of ``flat_ids`` (N,) holding the row each id reads, ``n_rows`` for ids that read none ("zero").

    The result keeps int32 when ``n_rows`` fits in it, else it is int64.
    """
    dtype = flat_ids.dtype if n_rows <= np.iinfo(flat_ids.dtype).max else np.dtype(np.int64)
    source = flat_ids.astype(dtype, copy=False)
    mapped = np.empty_like(source)
    _remap.remap_ids(source, n_rows, policy.code, policy.row, mapped, n_threads)
    return mapped


def read_mapped(read, flat_ids, out2d, n_rows, policy, n_threads):
    """Fill ``out2d`` (N, D) through ``read(ids, out2d, n_threads)`` (a low-precision table's row reader), with
    ``flat_ids`` mapped by ``policy``; rows that read nothing ("zero") are zero. Called only with stray ids."""
    mapped = remap(flat_ids, n_rows, policy, n_threads)
    missing = mapped == n_rows
    if missing.all():
        out2d[...] = 0
        return
    mapped[missing] = 0
    read(mapped, out2d, n_threads)
    out2d[missing] = 0


def rows_read(flat_ids, n_rows, policy, n_threads=1):
    """The ids (N',) of the rows actually read, in input order: mapped by ``policy``, "zero" positions dropped."""
    if not needs_mapping(flat_ids, n_rows, policy, n_threads, flat_ids.shape):
        return flat_ids
    mapped = remap(flat_ids, n_rows, policy, n_threads)
    return mapped[mapped < n_rows]
