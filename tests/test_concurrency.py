"""Python threads sharing one table: correct results, kernels that really release the GIL, and what a lookup
sees while another thread updates the table.

What a read during an update may see: fastembed takes no locks. A lookup running while another thread writes
the same table (``scatter_add`` into it, ``Embedding.step``, ``set_weights``) returns for every element either
its value before or its value after the write (aligned float loads and stores do not tear), but one row may mix
old and new elements, and different rows may come from different moments. Serialise writes and reads yourself
when a step needs a consistent table. ``Embedding.backward`` accumulates ``layer.grad`` in Python: call it on
one layer from one thread at a time (or run ``sparse_grad`` per thread and add the results).
"""
import hashlib
import sys
import threading
import time

import numpy as np
import pytest

import fastembed
from fastembed import _reference as ref
from fastembed import _bag, _gather, _index, _lowp, _optim, _remap, _rowscale, _scatter, lowp
from fastembed._plan import NO_ARGPOS, lookup_plan

N_THREADS = 8


def _run_threads(target, n=N_THREADS):
    """Run ``target(k, barrier)`` in n threads that start together; re-raise the first failure."""
    barrier = threading.Barrier(n)
    errors = []

    def run(k):
        try:
            target(k, barrier)
        except Exception as error:  # noqa: BLE001 -- re-raised in the main thread below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_many_threads_look_up_one_shared_table():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((20_000, 32)).astype(np.float32)
    table.flags.writeable = False          # and prove that nobody writes to it
    layer = fastembed.Embedding.from_pretrained(table)
    batches = [rng.integers(0, 20_000, size=(16, 200 + 13 * k)) for k in range(N_THREADS)]

    def work(k, barrier):
        ids = batches[k]
        expected = table[ids]
        grad_out = np.ones(ids.shape + (32,), np.float32)
        barrier.wait()
        for step in range(6):
            n_threads = 1 + (k + step) % 2
            np.testing.assert_array_equal(fastembed.gather(table, ids, n_threads=n_threads), expected)
            np.testing.assert_array_equal(layer(ids, n_threads=n_threads), expected)
            grad = fastembed.sparse_grad(ids, grad_out, num_rows=20_000, n_threads=n_threads)
            np.testing.assert_array_equal(grad.rows, np.unique(ids))

    _run_threads(work)


def test_many_threads_pool_bags_from_one_shared_table():
    """Every mode, with and without weights, each thread its own bags, one read-only table for all."""
    rng = np.random.default_rng(2)
    table = rng.standard_normal((20_000, 16)).astype(np.float32)
    table.flags.writeable = False
    layer = fastembed.EmbeddingBag.from_pretrained(table, mode="sum")
    modes = ("sum", "mean", "max", "sqrtn")
    batches = []
    for k in range(N_THREADS):
        lengths = rng.integers(0, 30, size=300 + 7 * k)
        offsets = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        ids = rng.integers(0, 20_000, size=int(lengths.sum()))
        weights = rng.uniform(0.5, 1.5, size=ids.shape[0]).astype(np.float32)
        mode = modes[k % 4]
        expected = ref.embedding_bag(table, ids, offsets, mode, None if mode == "max" else weights)
        batches.append((ids, offsets, weights, mode, expected))

    def work(k, barrier):
        ids, offsets, weights, mode, expected = batches[k]
        weights = None if mode == "max" else weights
        grad_out = np.ones((offsets.shape[0], 16), np.float32)
        barrier.wait()
        for step in range(6):
            n_threads = 1 + (k + step) % 2
            pooled = fastembed.embedding_bag(table, ids, offsets, mode=mode, per_sample_weights=weights,
                                             n_threads=n_threads)
            np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-5)
            if mode == "sum":
                np.testing.assert_array_equal(layer(ids, offsets, weights, n_threads=n_threads), pooled)
            grad = fastembed.embedding_bag_backward(ids, grad_out, offsets, mode=mode, per_sample_weights=weights,
                                                    table=table, n_threads=n_threads)
            np.testing.assert_array_equal(grad.rows, np.unique(ids))

    _run_threads(work)


def _other_thread_ran_during(call, tries=20):
    """Whether a second Python thread executed bytecode while ``call()`` ran in this one.

    The switch interval is made enormous, so this thread keeps the GIL unless ``call`` itself releases it;
    the second thread gives the GIL back at every step, so nothing waits for the interval either.
    """
    counter = [0]
    stop = threading.Event()
    ready = threading.Event()

    def spin():
        ready.set()
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)              # releases the GIL, so this thread never holds it for long

    old_interval = sys.getswitchinterval()
    spinner = threading.Thread(target=spin)
    sys.setswitchinterval(1000.0)
    try:
        spinner.start()
        ready.wait()
        for _ in range(tries):         # several tries: on a busy machine the spinner may miss one call
            before = counter[0]
            call()
            if counter[0] != before:
                return True
        return False
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(old_interval)


@pytest.fixture(scope="module")
def kernels():
    """Each kernel on work of a few milliseconds, all inputs prepared beforehand."""
    rng = np.random.default_rng(1)
    n, v, d = 1_000_000, 50_000, 8
    table = rng.standard_normal((v, d)).astype(np.float32)
    ids = rng.integers(0, v, size=n)
    strays = np.where(rng.random(n) < 0.1, -1, ids)
    out = np.empty((n, d), np.float32)
    grad = rng.standard_normal((n, d)).astype(np.float32)
    rows, order, seg_ptr = _index.group_rows(ids, v - 1, 1)
    values = np.empty((rows.shape[0], d), np.float32)
    dense = np.zeros((v, d), np.float32)
    remapped = np.empty_like(strays)
    quantized = lowp.QuantizedTable.from_float(table)
    half = table.astype(np.float16).view(np.uint16)
    offsets = np.arange(0, n, 20, dtype=np.int64)
    offsets = np.append(offsets, n)
    pooled = np.empty((offsets.shape[0] - 1, d), np.float32)
    plan = lookup_plan(ids, grad, v, np.float32, n_threads=1)
    adagrad_sum = np.zeros(v * d, np.float32)
    scratch = np.empty((1, _optim.BLOCK_ROWS * d), np.float32)
    return {
        "bag_forward": lambda: _bag.bag_forward(table, ids, offsets, np.empty(0, np.float32), 1, -1, pooled,
                                                NO_ARGPOS, 1),
        "segment_reduce": lambda: _bag.segment_reduce(*plan.kernel_args(), values, 1),
        "fused_update": lambda: _optim.fused_update(1, dense, adagrad_sum, np.empty(0, np.float32), plan.rows,
                                                    *plan.kernel_args(), 1e-3, 0.0, 0.0, 0.0, 1e-8, 0.0, 0.0,
                                                    scratch, 1),
        "gather_rows": lambda: _gather.gather_rows(table, ids, out, 1),
        "gather_rows_mapped": lambda: _remap.gather_rows_mapped(table, strays, out, _remap.ZERO, -1, 1),
        "remap_ids": lambda: _remap.remap_ids(strays, v, _remap.CLIP, -1, remapped, 1),
        "first_out_of_range": lambda: _index.first_out_of_range(ids, v, 1),
        "group_rows": lambda: _index.group_rows(ids, v - 1, 1),
        "segment_sum_rows": lambda: _scatter.segment_sum_rows(grad, order, seg_ptr, values, 1),
        "scatter_add_rows": lambda: _scatter.scatter_add_rows(dense, ids, grad, 1),
        "gather_rows_int8": lambda: _lowp.gather_rows_int8(quantized.codes, quantized.scale_bias, ids, out, 1),
        "gather_rows_f16": lambda: _lowp.gather_rows_f16(half, ids, out, 1),
        "clip_rows": lambda: _rowscale.clip_rows(out, 0.5, 2.0, 1),
        "renorm_rows": lambda: _rowscale.renorm_rows(table, rows, 1e30, 2.0, 1),
    }


KERNEL_NAMES = ["gather_rows", "gather_rows_mapped", "remap_ids", "first_out_of_range", "group_rows",
                "segment_sum_rows", "scatter_add_rows", "gather_rows_int8", "gather_rows_f16", "clip_rows",
                "renorm_rows", "bag_forward", "segment_reduce", "fused_update"]
gil_only = pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(), reason="no GIL in this build")


@gil_only
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_releases_the_gil(kernels, name):
    assert _other_thread_ran_during(kernels[name]), f"{name} held the GIL for its whole run"


@gil_only
def test_the_gil_probe_sees_code_that_holds_the_gil():
    """The probe can fail: C code that keeps the GIL (``sorted``) and plain Python never let the other thread in,
    while C code that releases it (``hashlib`` on a large buffer) does."""
    numbers = list(range(300_000))[::-1]
    data = bytes(20_000_000)
    assert not _other_thread_ran_during(lambda: sorted(numbers), tries=3)
    assert not _other_thread_ran_during(lambda: sum(i for i in range(100_000)), tries=3)
    assert _other_thread_ran_during(lambda: hashlib.sha256(data).digest())


def test_lookups_during_updates_see_old_or_new_values_only():
    """A writer adds +1 then -1 to every row, over and over; readers must only ever see base or base + 1."""
    v, d = 2048, 64
    base = np.arange(v * d, dtype=np.float32).reshape(v, d) % 1000       # small integers: +1 - 1 is exact
    table = base.copy()
    every_row = np.arange(v)
    plus, minus = np.ones((v, d), np.float32), -np.ones((v, d), np.float32)
    done = threading.Event()

    def work(k, barrier):
        barrier.wait()
        if k == 0:
            try:
                for _ in range(20):
                    fastembed.scatter_add(table, every_row, plus, n_threads=2)
                    fastembed.scatter_add(table, every_row, minus, n_threads=2)
            finally:
                done.set()
            return
        rng = np.random.default_rng(k)
        while not done.is_set():
            ids = rng.integers(0, v, size=2048)
            seen = fastembed.gather(table, ids, n_threads=1)
            delta = seen - base[ids]
            assert np.isin(delta, (0.0, 1.0)).all(), "a lookup saw a value that was never in the table"

    _run_threads(work, n=4)
    np.testing.assert_array_equal(table, base)
