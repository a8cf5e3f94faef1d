"""Gather from float32, float16, bfloat16 and int8 row-wise tables: 1,000,000 x 64, 262,144 random ids.

Run from the repository root after an in-place build: ``python bench/bench_lowp.py [--rounds 9]``.
Every configuration runs once per round, in a fresh random order, and the median over rounds is reported,
so that drift of a shared machine spreads over all of them alike. Output goes to a preallocated array.
"""
import argparse
import statistics
import time

import numpy as np

import fastembed
from fastembed import lowp


def _tables(rng, rows, dim):
    table = rng.standard_normal((rows, dim), dtype=np.float32)
    return {
        "float32": table,
        "float16": table.astype(np.float16),
        "bfloat16": lowp.to_bfloat16(table),
        "int8": lowp.QuantizedTable.from_float(table),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ids", type=int, default=262_144)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tables = _tables(rng, args.rows, args.dim)
    ids = rng.integers(0, args.rows, size=args.ids)
    out = np.empty((args.ids, args.dim), np.float32)
    configs = [(name, threads) for name in tables for threads in args.threads]
    times = {config: [] for config in configs}
    for name, threads in configs:                         # warm-up: page in tables and outputs
        fastembed.gather(tables[name], ids, out=out, n_threads=threads)
    for _ in range(args.rounds):
        for index in rng.permutation(len(configs)):
            name, threads = configs[index]
            start = time.perf_counter()
            fastembed.gather(tables[name], ids, out=out, n_threads=threads)
            times[(name, threads)].append(time.perf_counter() - start)

    print(f"gather {args.ids:,} random ids from {args.rows:,} x {args.dim}; median of {args.rounds} interleaved rounds")
    print(f"{'storage':>9} {'table MB':>9} " + " ".join(f"{f'{t} thr ms':>9} {'vs f32':>6}" for t in args.threads))
    for name, table in tables.items():
        cells = []
        for threads in args.threads:
            median = statistics.median(times[(name, threads)])
            base = statistics.median(times[("float32", threads)])
            cells.append(f"{median * 1e3:9.2f} {base / median:5.2f}x")
        print(f"{name:>9} {table.nbytes / 2**20:9.0f} " + " ".join(cells))


if __name__ == "__main__":
    main()
