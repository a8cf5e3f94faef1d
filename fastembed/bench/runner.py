"""The side-by-side runner: checks every peer against fastembed, then times them interleaved.

``run(...)`` is the function API (the CLI in ``__main__`` is a thin layer over it). By default each thread
count runs in a worker process of its own (``python -m fastembed.bench --worker``): XLA fixes jax's thread
count when it starts, so the worker is started with the matching ``XLA_FLAGS``, and a worker for fewer threads
than the machine has cores is also pinned to that many cores (``os.sched_setaffinity``), so that no library
can use more than it was told. Inside a worker every implementation runs in the same process, interleaved.
``isolate=False`` runs everything in the calling process (jax is then skipped; used by the tests).
"""
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

from fastembed.bench import peers, registry, timing
from fastembed.bench.workloads import DEFAULT_WORKLOADS, QUICK_WORKLOADS, WORKLOADS, build_workload

SCHEMA_VERSION = 1
BYTES_FORMULA = ("bytes = 2*N*D*itemsize + N*id_itemsize (every looked-up row read and written once, every id "
                 "read); bag workloads: (N + B)*D*itemsize + N*id_itemsize (rows read, bags written, ids read)")
PROGRESS_PREFIX = "@@fastembed-bench-progress "


@dataclass
class Config:
    ops: List[str]
    workloads: List[str]
    threads: List[int]
    rounds: int = 10
    quick: bool = False
    scale: float = 1.0  # V and N of the large workloads are multiplied by it
    target_batch_s: float = 0.02  # calls per round: enough to fill this much time
    min_samples: int = 3
    warmup: int = 2
    libraries: Optional[List[str]] = None  # peer libraries to include (None: all)
    copy_mib: int = 512
    copy_repeats: int = 5
    budget_scale: float = 1.0  # multiplies each slow peer's time budget per cell

    @classmethod
    def make(cls, ops=None, workloads=None, threads=None, rounds=None, quick=False, libraries=None, **extra):
        default_ops = [name for name, op in registry.all_ops().items() if op.default]
        op_names = [op if isinstance(op, str) else op.name for op in (ops or default_ops)]
        for name in op_names:
            _resolve_op(name)  # unknown names raise here, before any work
        workloads = list(workloads or (QUICK_WORKLOADS if quick else DEFAULT_WORKLOADS))
        for name in workloads:
            if name not in WORKLOADS:
                raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
        threads = sorted(set(threads or [1, peers.usable_cores()]))
        if any(t < 1 for t in threads):
            raise ValueError(f"thread counts must be positive, got {threads}")
        if libraries is not None:
            unknown = set(libraries) - set(peers.PEER_LIBRARIES)
            if unknown:
                raise KeyError(f"unknown peer libraries {sorted(unknown)}; known: {', '.join(peers.PEER_LIBRARIES)}")
        defaults = dict(rounds=3, scale=1 / 16, target_batch_s=0.005, budget_scale=0.2, copy_repeats=3, copy_mib=256,
                        warmup=1) if quick else {}
        defaults.update({k: v for k, v in extra.items() if v is not None})
        if rounds is not None:
            defaults["rounds"] = rounds
        return cls(ops=op_names, workloads=workloads, threads=threads, quick=quick,
                   libraries=None if libraries is None else list(libraries), **defaults)


# Ops passed as objects (tests, experiments) rather than registered by name: in-process runs only.
_custom_ops = {}


def _resolve_op(name):
    return _custom_ops.get(name) or registry.get_op(name)


def _impl_record(impl, n_threads):
    return {"name": impl.name, "short": impl.label, "package": impl.package, "note": impl.note,
            "threads": peers.threads_note(impl.package, n_threads) if impl.package in peers.LIBRARIES else ""}


def run_cell(op, wl, n_threads, config, notes):
    """Check and time one (op, workload, thread count). Returns the cell's record."""
    started = time.perf_counter()
    impls = []
    cases = {}
    budgets = {}
    fe = op.fastembed
    fe_case = fe.build(wl, n_threads)
    expected = fe_case.run_once()
    cases[fe.name] = fe_case
    impls.append(dict(_impl_record(fe, n_threads), status="ok"))
    for impl in op.peers:
        record = _impl_record(impl, n_threads)
        impls.append(record)
        if config.libraries is not None and impl.package not in config.libraries:
            record.update(status="excluded", message=f"{impl.package} not selected (--peers)")
            continue
        try:
            peers.require(impl.package, n_threads)
        except peers.Unavailable as why:
            record.update(status="skipped", message=str(why))
            notes.add(str(why))
            continue
        try:
            case = impl.build(wl, n_threads)
            got = case.run_once()
            wrong = op.check(expected, got, wl)
            del got
        except registry.Skip as why:
            record.update(status="skipped", message=str(why))
            notes.add(f"{impl.name} skipped on {wl.name}: {why}")
            continue
        except Exception as error:  # a peer that fails to run is reported, not fatal
            record.update(status="error", message=f"{type(error).__name__}: {error}")
            notes.add(f"{impl.name} failed on {wl.name}: {type(error).__name__}: {error}")
            continue
        if wrong:
            record.update(status="wrong", message=f"wrong result, not timed: {wrong}")
            notes.add(f"{impl.name} gave a wrong result on {wl.name} ({op.name}): {wrong}")
            continue
        record["status"] = "ok"
        cases[impl.name] = case
        if impl.budget_s is not None:
            budgets[impl.name] = impl.budget_s * config.budget_scale
    del expected
    samples, plans = timing.measure(cases, rounds=config.rounds, target_batch_s=config.target_batch_s,
                                    budget_s=budgets, min_samples=config.min_samples, warmup=config.warmup)
    for record in impls:
        if record["status"] != "ok":
            continue
        stats = timing.summarize(samples[record["name"]])
        plan = plans[record["name"]]
        record.update(stats, capped=plan.capped, gbps=wl.bytes / (stats["median_ms"] * 1e-3) / 1e9)
        if plan.capped:
            record["message"] = (f"time-capped: {stats['n_samples']} samples in "
                                 f"{len(plan.rounds)} of {config.rounds} rounds")
    fe_median = impls[0]["median_ms"]
    timed_peers = [record for record in impls[1:] if record["status"] == "ok"]
    for record in timed_peers:
        record["speedup"] = record["median_ms"] / fe_median  # > 1: fastembed is faster
    fastest = min(timed_peers, key=lambda r: r["median_ms"]) if timed_peers else None
    return {
        "op": op.name,
        "workload": wl.name,
        "threads": n_threads,
        "bytes": wl.bytes,
        "fastembed_ms": fe_median,
        "fastembed_gbps": wl.bytes / (fe_median * 1e-3) / 1e9,
        "fastest_peer": fastest["name"] if fastest else None,
        "speedup_vs_fastest_peer": fastest["speedup"] if fastest else None,
        "impls": impls,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def run_threads(config, n_threads, progress=None, notes=None):
    """Every selected (op, workload) at ``n_threads``, in this process. Returns the thread count's record."""
    notes = set() if notes is None else notes
    limiter = _limit_blas(n_threads, notes)
    started = time.perf_counter()
    # The bandwidth reference is measured before and after the cells, so that it spans the run.
    copy = timing.copy_seconds(n_threads, config.copy_mib, config.copy_repeats)
    cells = []
    workloads_seen = {}
    try:
        for wl_name in config.workloads:
            ops = [op for op in map(_resolve_op, config.ops) if op.applies_to(wl_name)]
            if not ops:
                continue
            wl = build_workload(wl_name, config.scale)
            workloads_seen[wl_name] = wl.describe()
            for op in ops:
                cells.append(run_cell(op, wl, n_threads, config, notes))
                if progress is not None:
                    progress(f"{op.name} {wl_name} {n_threads}t")
            del wl
            gc.collect()
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    copy += timing.copy_seconds(n_threads, config.copy_mib, config.copy_repeats)
    bandwidth = timing.copy_result(copy, config.copy_mib)
    for cell in cells:
        cell["copy_fraction"] = cell["fastembed_gbps"] / bandwidth["gbps"]
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"threads": n_threads, "copy": bandwidth, "cells": cells, "workloads": workloads_seen,
            "notes": sorted(notes), "elapsed_s": round(time.perf_counter() - started, 1), "affinity": affinity}


def _limit_blas(n_threads, notes):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        notes.add("threadpoolctl is not installed: BLAS thread pools were not capped")
        return None
    return threadpool_limits(limits=n_threads)


# ---- orchestration ------------------------------------------------------------------------------------------------

def machine_info():
    model = None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import fastembed

    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": peers.usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": peers.versions(),
        "openmp": fastembed.openmp_enabled(),
    }


def run(ops=None, workloads=None, threads=None, rounds=None, quick=False, libraries=None, isolate=True,
        progress=True, **extra):
    """Run the benchmark and return its results (the JSON document, as a dict).

    ops: op names or ``registry.Op`` objects (objects need ``isolate=False``); workloads, threads: lists;
    libraries: peer libraries to include; isolate: one worker process per thread count (needed for jax);
    progress: show a progress bar (tqdm when installed). ``extra``: ``Config`` fields (scale, copy_mib, ...).
    """
    op_objects = [op for op in (ops or []) if not isinstance(op, str)]
    if op_objects and isolate:
        raise ValueError("ops given as objects run only in-process (isolate=False)")
    _custom_ops.clear()
    _custom_ops.update({op.name: op for op in op_objects})
    try:
        config = Config.make(ops, workloads, threads, rounds, quick, libraries, **extra)
        load_start = _load_average()
        notes = set()
        total = len(config.threads) * sum(
            1 for wl in config.workloads for name in config.ops if _resolve_op(name).applies_to(wl))
        bar = _progress_bar(total, progress)
        started = time.time()
        per_thread = []
        try:
            for n in config.threads:
                if isolate:
                    per_thread.append(_run_worker(config, n, bar))
                else:
                    per_thread.append(run_threads(config, n, bar, notes))
        finally:
            bar.close()
    finally:
        _custom_ops.clear()
    for record in per_thread:
        notes.update(record["notes"])
    workloads_seen = {}
    for record in per_thread:
        workloads_seen.update(record["workloads"])
    return {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": _load_average()},
        "config": dict(asdict(config), isolate=isolate, bytes_formula=BYTES_FORMULA),
        "copy_bandwidth": {str(r["threads"]): r["copy"] for r in per_thread},
        "affinity": {str(r["threads"]): r["affinity"] for r in per_thread},
        "workloads": workloads_seen,
        "results": [cell for record in per_thread for cell in record["cells"]],
        "notes": sorted(notes),
    }


def _load_average():
    """The 1-minute load average (other processes competing for the cores), or None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


class _NoBar:
    def __init__(self, total, enabled):
        self.total, self.done, self.enabled = total, 0, enabled

    def __call__(self, label):
        self.done += 1
        if self.enabled:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self):
        pass


class _TqdmBar:
    def __init__(self, tqdm, total):
        self.bar = tqdm(total=total, unit="cell", desc="fastembed.bench", file=sys.stderr)

    def __call__(self, label):
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _progress_bar(total, enabled):
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _NoBar(total, True)
        return _TqdmBar(tqdm, total)
    return _NoBar(total, False)


def _run_worker(config, n_threads, progress):
    """Run one thread count in a fresh process (jax's XLA_FLAGS, CPU affinity), relaying its progress."""
    env = dict(os.environ)
    env.update(peers.jax_env(n_threads))
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="fastembed-bench-") as tmp:
        config_path = os.path.join(tmp, "config.json")
        out_path = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "stderr.log")
        with open(config_path, "w") as handle:
            json.dump(asdict(config), handle)
        command = [sys.executable, "-m", "fastembed.bench", "--worker", config_path, str(n_threads), out_path]
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            for line in process.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    progress(line[len(PROGRESS_PREFIX):].strip())
                else:
                    sys.stderr.write(line)
            code = process.wait()
        if code != 0 or not os.path.exists(out_path):
            with open(log_path) as log:
                tail = log.read()[-4000:]
            raise RuntimeError(f"benchmark worker for {n_threads} thread(s) failed (exit {code}):\n{tail}")
        with open(out_path) as handle:
            return json.load(handle)


def worker_main(config_path, n_threads, out_path):
    """Entry point of a worker process (``python -m fastembed.bench --worker CONFIG N OUT``)."""
    n_threads = int(n_threads)
    with open(config_path) as handle:
        config = Config(**json.load(handle))
    if hasattr(os, "sched_setaffinity") and n_threads < peers.usable_cores():
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores[:n_threads])

    def progress(label):
        print(PROGRESS_PREFIX + label, flush=True)

    record = run_threads(config, n_threads, progress)
    with open(out_path, "w") as handle:
        json.dump(record, handle, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
