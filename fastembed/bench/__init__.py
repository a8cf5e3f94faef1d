"""Benchmarks of fastembed against its peers: ``python -m fastembed.bench --help``.

``run(...)`` returns the results as a dict (the JSON document); ``build_workload(name)`` gives the inputs
of one workload; op families live in ``fastembed.bench.ops`` and register themselves (``registry``).
"""
from fastembed.bench.registry import Case, Dense, Impl, Op, Skip, Sparse, Updated, all_ops, get_op, register
from fastembed.bench.runner import run
from fastembed.bench.workloads import DEFAULT_WORKLOADS, WORKLOADS, build_workload

__all__ = ["Case", "DEFAULT_WORKLOADS", "Dense", "Impl", "Op", "Skip", "Sparse", "Updated", "WORKLOADS",
           "all_ops", "build_workload", "get_op", "register", "run"]
