"""Interleaved timing of several implementations, and the memory-bandwidth reference.

``measure`` warms every case up, then runs ``rounds`` rounds; in each round every implementation runs a
batch of calls, in an order rotated from round to round, so slow drifts of the machine (another process,
frequency, memory state) fall on every implementation alike. Each call is timed on its own (its ``prepare``
is not timed) and the samples are summarised by median, quartiles and min/max.

Slow implementations (``np.add.at`` takes ~0.2 s a call on the large workloads) get a time budget per cell:
they run in fewer rounds, spread over the whole run, with at least ``min_samples`` samples; the report
says how many samples each one got.
"""
import gc
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class Plan:
    reps: int  # calls per round it takes part in
    rounds: frozenset  # the rounds it takes part in
    estimate_s: float  # one call, from the warm-up
    capped: bool  # fewer samples than the others because of its time budget


def timed_call(case):
    if case.prepare is not None:
        case.prepare()
    start = time.perf_counter()
    value = case.call()
    elapsed = time.perf_counter() - start
    del value  # freeing the output is not timed
    return elapsed


def plan_for(estimate_s, rounds, target_batch_s, budget_s, min_samples, max_reps=200):
    estimate_s = max(estimate_s, 1e-7)
    reps = int(min(max_reps, max(1, target_batch_s // estimate_s)))
    if reps * rounds >= min_samples and reps * rounds * estimate_s <= budget_s:
        return Plan(reps, frozenset(range(rounds)), estimate_s, False)
    affordable = reps * rounds if math.isinf(budget_s) else int(budget_s // estimate_s)
    total = max(min_samples, min(reps * rounds, affordable))
    capped = total < reps * rounds
    if total <= rounds:
        picked = np.unique(np.linspace(0, rounds - 1, total).round().astype(int))
        return Plan(1, frozenset(int(r) for r in picked), estimate_s, capped)
    return Plan(math.ceil(total / rounds), frozenset(range(rounds)), estimate_s, capped)


def measure(cases, rounds, target_batch_s=0.02, budget_s=None, min_samples=3, warmup=2, pause_s=0.001):
    """Time ``cases`` ({name: Case}) interleaved; return ({name: [seconds, ...]}, {name: Plan}).

    budget_s: {name: seconds} for implementations with a time budget (the others get every round).
    """
    budget_s = budget_s or {}
    names = list(cases)
    plans = {}
    for name in names:
        estimate = min(timed_call(cases[name]) for _ in range(max(1, warmup)))
        plans[name] = plan_for(estimate, rounds, target_batch_s, budget_s.get(name, math.inf), min_samples)
    samples = {name: [] for name in names}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                plan = plans[name]
                if r not in plan.rounds:
                    continue
                if pause_s:
                    time.sleep(pause_s)  # let another runtime's spinning worker threads go idle
                case = cases[name]
                for _ in range(plan.reps):
                    samples[name].append(timed_call(case))
    finally:
        if enabled:
            gc.enable()
    return samples, plans


def summarize(seconds):
    """Median, quartiles, min and max in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {
        "median_ms": float(median),
        "q1_ms": float(q1),
        "q3_ms": float(q3),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "n_samples": int(ms.size),
    }


# ---- memory bandwidth reference ---------------------------------------------------------------------------------

COPY_METHOD = ("np.copyto of a {mib} MiB float32 array into a pre-faulted one, split into n contiguous chunks "
               "copied by n Python threads (numpy releases the GIL while copying; n = 1 is a plain np.copyto); "
               "bytes = 2 x size (read + write)")


def copy_seconds(n_threads, mib=512, repeats=5):
    """Seconds of ``repeats`` timed copies of ``mib`` MiB at ``n_threads`` (``COPY_METHOD``); the buffers live
    only for the measurement."""
    n = (mib << 20) // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    dst.fill(0.0)  # fault the pages in: no page fault is timed
    bounds = np.linspace(0, n, n_threads + 1).astype(np.int64)
    chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None

    def copy():
        if pool is None:
            np.copyto(dst, src)
        else:
            list(pool.map(lambda pair: np.copyto(*pair), chunks))

    try:
        copy()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            copy()
            seconds.append(time.perf_counter() - start)
        return seconds
    finally:
        if pool is not None:
            pool.shutdown()


def copy_result(seconds, mib):
    """The copy reference's record: its timing, GB/s (read + write counted) and how it was measured."""
    stats = summarize(seconds)
    stats["bytes"] = 2 * ((mib << 20) // 4) * 4
    stats["gbps"] = stats["bytes"] / (stats["median_ms"] * 1e-3) / 1e9
    stats["method"] = COPY_METHOD.format(mib=mib)
    return stats
