"""pytest-benchmark suite: fastembed and its numpy and torch peers on the benchmark workloads.

    pytest bench/ --benchmark-only [--bench-workloads rand,imdb] [--bench-scale 0.0625]

One group per (op, workload), holding every implementation at 1 thread and at all cores. The ops, peers,
workloads and correctness checks are those of ``python -m fastembed.bench`` (``fastembed.bench.registry``);
each peer is checked against fastembed's result before it is timed. jax and FBGEMM peers are left to the
side-by-side runner (jax's thread count needs a process of its own).
"""
import functools

import pytest

from fastembed.bench import peers, registry
from fastembed.bench.workloads import DEFAULT_WORKLOADS, build_workload

LIBRARIES = ("fastembed", "numpy", "torch")
THREADS = sorted({1, peers.usable_cores()})
SLOW_ROUNDS = 5  # rounds of the cases whose set-up must run before every call (autograd backward)


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    option = metafunc.config.getoption("--bench-workloads")
    workloads = option.split(",") if option else DEFAULT_WORKLOADS
    params = []
    for wl in workloads:
        for op in registry.all_ops().values():
            if not op.default or not op.applies_to(wl):
                continue
            for impl in op.impls():
                if impl.package not in LIBRARIES:
                    continue
                skip = pytest.mark.skipif(not peers.installed(impl.package), reason=f"{impl.package} is not installed")
                for n in THREADS:
                    label = impl.label.replace(" ", "_")
                    params.append(pytest.param((op.name, wl, impl.name, n), id=f"{op.name}-{wl}-{label}-{n}t",
                                               marks=skip))
    metafunc.parametrize("bench_case", params)


@functools.lru_cache(maxsize=1)
def _workload(name, scale):
    return build_workload(name, scale)


@functools.lru_cache(maxsize=1)
def _expected(op_name, wl_name, scale):
    op = registry.get_op(op_name)
    return op.fastembed.build(_workload(wl_name, scale), peers.usable_cores()).run_once()


def test_kernel(benchmark, bench_case, request):
    op_name, wl_name, impl_name, n_threads = bench_case
    scale = request.config.getoption("--bench-scale")
    op = registry.get_op(op_name)
    impl = op.impl(impl_name)
    try:
        peers.require(impl.package, n_threads)
    except peers.Unavailable as why:
        pytest.skip(str(why))
    wl = _workload(wl_name, scale)
    try:
        case = impl.build(wl, n_threads)
        if impl is not op.fastembed:
            wrong = op.check(_expected(op_name, wl_name, scale), case.run_once(), wl)
            assert wrong is None, f"{impl.name} disagrees with fastembed: {wrong}"
    except registry.Skip as why:
        pytest.skip(str(why))
    benchmark.group = f"{op_name} {wl_name}"
    benchmark.extra_info.update(package=impl.package, threads=n_threads, bytes=wl.bytes,
                                threads_set_by=peers.threads_note(impl.package, n_threads))
    if case.prepare is None:
        benchmark(case.call)
    else:
        benchmark.pedantic(case.call, setup=case.prepare, rounds=SLOW_ROUNDS, iterations=1, warmup_rounds=1)
