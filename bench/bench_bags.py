"""Pooled bags and fused sparse optimizer steps, side by side with PyTorch and FBGEMM's CPU TBE.

Workload (the issue's): a 1,000,000 x 64 float32 table, 16,384 bags of uniformly random ids, either 20 ids
each ("fixed20") or 1 to 39 ids ("var1_39", 20 on average), sum pooling.

* forward: ``fastembed.embedding_bag`` vs ``F.embedding_bag`` vs FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen``;
* backward: ``fastembed.embedding_bag_backward`` (a ``SparseGrad``) vs PyTorch's dense and sparse (+ coalesce)
  backward of ``F.embedding_bag``;
* fused: backward + update. fastembed ``fused_step`` of ``SGD``, ``Adagrad``, ``RowWiseAdagrad`` and
  ``SparseAdam`` vs PyTorch ``sparse=True`` backward + ``optim.SGD``/``Adagrad``/``SparseAdam``, and FBGEMM's
  fused backward (``EXACT_SGD``, ``EXACT_ROWWISE_ADAGRAD``). Forward passes of the peers run outside the
  timed region (``retain_graph=True``), so each timing is the backward and the update only.

Run ``python bench/bench_bags.py`` (options: ``--rounds``, ``--threads``, ``--layouts``, ``--ops``) for an
interleaved table of medians with ratios and the issue's goals, or ``pytest bench/bench_bags.py
--benchmark-only`` for pytest-benchmark. PyTorch and FBGEMM are optional: their rows are left out when absent.
"""
import argparse
import statistics
import sys
import time

import numpy as np

import fastembed
from fastembed import optim

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - the peers are optional
    torch = None
try:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )
except ImportError:  # pragma: no cover
    SplitTableBatchedEmbeddingBagsCodegen = None

NUM_ROWS, DIM, NUM_BAGS = 1_000_000, 64, 16_384
LAYOUTS = ("fixed20", "var1_39")
OPS = ("forward", "backward", "fused")
LR = 0.01


class Workload:
    """The table and one batch of bags; torch views share the numpy memory."""

    def __init__(self, layout, seed=0):
        rng = np.random.default_rng(seed)
        lengths = np.full(NUM_BAGS, 20) if layout == "fixed20" else rng.integers(1, 40, size=NUM_BAGS)
        self.layout = layout
        self.table = rng.standard_normal((NUM_ROWS, DIM), dtype=np.float32) * np.float32(0.01)
        self.offsets_full = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.offsets = self.offsets_full[:-1]
        self.ids = rng.integers(0, NUM_ROWS, size=int(lengths.sum()), dtype=np.int64)
        self.grad_out = rng.standard_normal((NUM_BAGS, DIM), dtype=np.float32)
        self._tbe = {}
        if torch is not None:
            self.t_ids, self.t_offsets = torch.from_numpy(self.ids), torch.from_numpy(self.offsets)
            self.t_offsets_full = torch.from_numpy(self.offsets_full)
            self.t_grad = torch.from_numpy(self.grad_out)

    def tbe(self, optimizer):
        """An FBGEMM CPU TBE over a copy of the table (built once per optimizer)."""
        if optimizer not in self._tbe:
            module = SplitTableBatchedEmbeddingBagsCodegen(
                [(NUM_ROWS, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=optimizer,
                learning_rate=LR, eps=1e-8, pooling_mode=PoolingMode.SUM, weights_precision=SparseType.FP32)
            module.split_embedding_weights()[0].copy_(torch.from_numpy(self.table))
            self._tbe[optimizer] = module
        return self._tbe[optimizer]


def forward_cases(w, threads):
    yield "fastembed", lambda: fastembed.embedding_bag(w.table, w.ids, w.offsets, mode="sum", n_threads=threads)
    if torch is not None:
        weight = torch.from_numpy(w.table)
        yield "torch F.embedding_bag", lambda: F.embedding_bag(w.t_ids, weight, w.t_offsets, mode="sum")
    if SplitTableBatchedEmbeddingBagsCodegen is not None:
        tbe = w.tbe(EmbOptimType.EXACT_SGD)

        def fbgemm():
            with torch.no_grad():
                return tbe(w.t_ids, w.t_offsets_full)
        yield "FBGEMM TBE", fbgemm


def _torch_backward(w, sparse):
    weight = torch.nn.Parameter(torch.from_numpy(w.table.copy()))
    out = F.embedding_bag(w.t_ids, weight, w.t_offsets, mode="sum", sparse=sparse)

    def run():
        weight.grad = None
        out.backward(w.t_grad, retain_graph=True)
        return weight.grad.coalesce() if sparse else weight.grad
    return run


def backward_cases(w, threads):
    yield "fastembed", lambda: fastembed.embedding_bag_backward(w.ids, w.grad_out, w.offsets, mode="sum",
                                                                num_rows=NUM_ROWS, n_threads=threads)
    if torch is not None:
        yield "torch dense backward", _torch_backward(w, sparse=False)
        yield "torch sparse backward + coalesce", _torch_backward(w, sparse=True)


def _torch_fused(w, make_optimizer):
    module = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(w.table.copy()), freeze=False, mode="sum",
                                                   sparse=True)
    opt = make_optimizer(module.parameters())
    out = module(w.t_ids, w.t_offsets)

    def run():
        opt.zero_grad()
        out.backward(w.t_grad, retain_graph=True)
        opt.step()
    return run


def _fbgemm_fused(w, optimizer):
    out = w.tbe(optimizer)(w.t_ids, w.t_offsets_full)
    return lambda: out.backward(w.t_grad, retain_graph=True)


FASTEMBED_OPTIMIZERS = {
    "SGD": lambda layer: optim.SGD(layer, LR),
    "Adagrad": lambda layer: optim.Adagrad(layer, LR),
    "RowWiseAdagrad": lambda layer: optim.RowWiseAdagrad(layer, LR),
    "SparseAdam": lambda layer: optim.SparseAdam(layer, LR),
}


def fused_cases(w, threads):
    layer = fastembed.EmbeddingBag.from_pretrained(w.table, trainable=True, mode="sum")
    for name, make in FASTEMBED_OPTIMIZERS.items():
        opt = make(layer)
        yield f"fastembed {name}", (lambda opt=opt: opt.fused_step(w.ids, w.grad_out, offsets=w.offsets,
                                                                   n_threads=threads))
    if torch is not None:
        yield "torch sparse + SGD", _torch_fused(w, lambda p: torch.optim.SGD(p, lr=LR))
        yield "torch sparse + Adagrad", _torch_fused(w, lambda p: torch.optim.Adagrad(p, lr=LR))
        yield "torch sparse + SparseAdam", _torch_fused(w, lambda p: torch.optim.SparseAdam(p, lr=LR))
    if SplitTableBatchedEmbeddingBagsCodegen is not None:
        yield "FBGEMM fused SGD", _fbgemm_fused(w, EmbOptimType.EXACT_SGD)
        yield "FBGEMM fused RowWiseAdagrad", _fbgemm_fused(w, EmbOptimType.EXACT_ROWWISE_ADAGRAD)


# Each fastembed update beside PyTorch's path for the same update (torch has no row-wise Adagrad: its
# element-wise Adagrad is the nearest) and FBGEMM's fused kernel for it, when FBGEMM has one on CPU.
FUSED_PAIRS = [
    ("fastembed SGD", "torch sparse + SGD", "FBGEMM fused SGD"),
    ("fastembed Adagrad", "torch sparse + Adagrad", None),
    ("fastembed RowWiseAdagrad", "torch sparse + Adagrad", "FBGEMM fused RowWiseAdagrad"),
    ("fastembed SparseAdam", "torch sparse + SparseAdam", None),
]

CASES = {"forward": forward_cases, "backward": backward_cases, "fused": fused_cases}


def set_threads(threads):
    if torch is not None:
        torch.set_num_threads(threads)


def interleaved_medians(cases, rounds):
    """Median wall-clock milliseconds of each case, the cases taking turns within every round."""
    for _, run in cases:
        run()                                          # warm-up: first-touch page faults, JIT, caches
    times = {name: [] for name, _ in cases}
    for _ in range(rounds):
        for name, run in cases:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def _goal_lines(op, medians):
    fe = {name: ms for name, ms in medians.items() if name.startswith("fastembed")}
    peers = {name: ms for name, ms in medians.items() if not name.startswith("fastembed")}
    if not peers:
        return []
    if op == "forward":
        best_peer = min(peers, key=peers.get)
        ratio = peers[best_peer] / fe["fastembed"]
        return [f"goal forward >= 1.2x fastest peer ({best_peer}): {ratio:.2f}x "
                f"{'met' if ratio >= 1.2 else 'MISSED'}"]
    if op == "backward":
        best_peer = min(peers, key=peers.get)
        return [f"backward vs fastest peer ({best_peer}): {peers[best_peer] / fe['fastembed']:.2f}x"]
    lines = []
    for ours, torch_same, fbgemm_same in FUSED_PAIRS:
        if ours not in fe:
            continue
        parts = []
        if torch_same in peers:
            ratio = peers[torch_same] / fe[ours]
            parts.append(f"{ratio:.2f}x {torch_same} {'met' if ratio >= 3 else 'MISSED'} (goal 3x)")
        if "FBGEMM fused SGD" in peers:
            ratio = peers["FBGEMM fused SGD"] / fe[ours]
            parts.append(f"{ratio:.2f}x FBGEMM fused SGD {'met' if ratio >= 1.5 else 'MISSED'} (goal 1.5x)")
        if fbgemm_same in peers and fbgemm_same != "FBGEMM fused SGD":
            parts.append(f"{peers[fbgemm_same] / fe[ours]:.2f}x {fbgemm_same}")
        lines.append(f"goal {ours}: " + "; ".join(parts))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    args = parser.parse_args(argv)
    print(f"fastembed {fastembed.__version__} (OpenMP {fastembed.openmp_enabled()}), "
          f"torch {torch.__version__ if torch is not None else 'absent'}, "
          f"FBGEMM {'present' if SplitTableBatchedEmbeddingBagsCodegen is not None else 'absent'}; "
          f"table {NUM_ROWS:,} x {DIM} float32, {NUM_BAGS:,} bags; median of {args.rounds} interleaved rounds")
    for layout in args.layouts:
        workload = Workload(layout)
        print(f"\n## {layout}: {workload.ids.shape[0]:,} ids")
        for op in args.ops:
            for threads in args.threads:
                set_threads(threads)
                medians = interleaved_medians(list(CASES[op](workload, threads)), args.rounds)
                reference = min(ms for name, ms in medians.items() if name.startswith("fastembed"))
                print(f"\n{op}, {threads} thread{'s' if threads > 1 else ''}:")
                for name, ms in medians.items():
                    print(f"  {name:34s} {ms:9.2f} ms   {ms / reference:6.2f}x fastembed's best")
                for line in _goal_lines(op, medians):
                    print("  " + line)
    return 0


# --- pytest-benchmark ---------------------------------------------------------------------------------------
_LIVE = {}


def _case(layout, op, threads, name):
    """The named case, from the one set of cases kept alive (each set holds several copies of the table)."""
    key = (layout, op, threads)
    if key not in _LIVE:
        _LIVE.clear()
        _LIVE[key] = dict(CASES[op](Workload(layout), threads))
    return _LIVE[key].get(name)


def _test_cases():
    names = {"forward": ["fastembed", "torch F.embedding_bag", "FBGEMM TBE"],
             "backward": ["fastembed", "torch dense backward", "torch sparse backward + coalesce"],
             "fused": [f"fastembed {name}" for name in FASTEMBED_OPTIMIZERS]
             + ["torch sparse + SGD", "torch sparse + Adagrad", "torch sparse + SparseAdam", "FBGEMM fused SGD",
                "FBGEMM fused RowWiseAdagrad"]}
    # Grouped so that consecutive tests share one set of cases.
    return [(layout, op, threads, name) for layout in LAYOUTS for op in OPS for threads in (1, 2)
            for name in names[op]]


try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("layout, op, threads, name", _test_cases())
    def test_bags(benchmark, layout, op, threads, name):
        run = _case(layout, op, threads, name)
        if run is None:
            pytest.skip(f"{name} is not installed")
        set_threads(threads)
        benchmark.group = f"{op} {layout} {threads} thread(s)"
        benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
