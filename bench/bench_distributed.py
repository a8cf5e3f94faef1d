"""Training-step throughput of a sharded table at several world sizes, all on this machine.

Run from the repository root (after building in place):

    PYTHONPATH=. python bench/bench_distributed.py                      # worlds 1 2 4, batches 2048 16384
    PYTHONPATH=. python bench/bench_distributed.py --worlds 1 2 --batches 65536 --ids zipf

Each world size runs as that many local processes on gloo over loopback TCP. Every rank looks up its own batch
(weak scaling: the global batch is W x --batch), sends the gradients to the owners and steps its optimizer:
``table(ids); table.backward(ids, grad); table.step()``. Per world size and batch it prints the median step time
(the slowest rank's), the global ids per second, how a rank's step splits into time inside collectives (waiting
for slower peers included) and the rest (fastembed's kernels, routing, Python), and the CPU time of a step summed
over the ranks (every thread, the transport's included): on a machine that other jobs also load, wall times
stretch but CPU times hold, so ids per CPU-second compare world sizes fairly. The first lines, "plain", are one
process with an unsharded ``fastembed.Embedding`` and the same fused optimizer: the kernels alone.

Ranks get ``cores // W`` threads each (at least one), or ``--threads``: with more ranks than cores they share
cores, and the figures show what the exchange costs rather than a speed-up. On a machine other jobs also load,
give ``--threads 1``: an OpenMP team whose threads cannot all run at once waits at every barrier.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def _ids(rng, args, size):
    if args.ids == "zipf":
        # Hot ids first, then scattered over the table by an odd multiplier so they do not share a shard.
        return ((rng.zipf(args.zipf_a, size=size) - 1) * 2654435761) % args.rows
    return rng.integers(0, args.rows, size=size)


def _batches(args, rank, batch):
    rng = np.random.default_rng([rank, batch])
    ids = [_ids(rng, args, batch) for _ in range(args.warmup + args.steps)]
    return ids, rng.standard_normal((batch, args.dim)).astype(args.dtype)


def _threads(args, world):
    return args.threads or max(1, (os.cpu_count() or 1) // world)


def _rank_main(rank, world, args, rendezvous, queue):
    import torch
    import torch.distributed as dist

    from fastembed import distributed

    threads = _threads(args, world)
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
        table = distributed.ShardedEmbedding(args.rows, args.dim, partition=args.partition, optimizer=args.optimizer,
                                             lr=0.01, dtype=args.dtype, timeout=300, n_threads=threads)
        results = {}
        for batch in args.batches:
            batches, grad = _batches(args, rank, batch)
            dist.barrier()
            steps, comms, cpus = [], [], []
            for i, ids in enumerate(batches):
                began, comm, cpu = time.perf_counter(), table.comm_seconds, time.process_time()
                table(ids)
                table.backward(ids, grad)
                table.step()
                if i >= args.warmup:
                    steps.append(time.perf_counter() - began)
                    comms.append(table.comm_seconds - comm)
                    cpus.append(time.process_time() - cpu)
            results[batch] = (steps, comms, cpus)
        queue.put((rank, results, None))
    except BaseException as error:
        queue.put((rank, None, f"{type(error).__name__}: {error}"))


def _plain(args, batch):
    """One process, no sharding: the same lookup, backward and fused update on an unsharded table."""
    import fastembed

    table = fastembed.Embedding(args.rows, args.dim, dtype=args.dtype, seed=0)
    opt = {"adam": fastembed.optim.SparseAdam, "rowwise_adagrad": fastembed.optim.RowWiseAdagrad,
           "adagrad": fastembed.optim.Adagrad, "sgd": fastembed.optim.SGD}[args.optimizer](table, lr=0.01)
    batches, grad = _batches(args, 0, batch)
    steps, cpus = [], []
    for i, ids in enumerate(batches):
        began, cpu = time.perf_counter(), time.process_time()
        table(ids, n_threads=_threads(args, 1))
        opt.fused_step(ids, grad, n_threads=_threads(args, 1))
        if i >= args.warmup:
            steps.append(time.perf_counter() - began)
            cpus.append(time.process_time() - cpu)
    return statistics.median(steps), statistics.median(cpus)


def _launch(world, args):
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed", "fastembed.distributed"])
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        processes = [context.Process(target=_rank_main, args=(rank, world, args, os.path.join(folder, "rdzv"), queue))
                     for rank in range(world)]
        for process in processes:
            process.start()
        try:
            answers = [queue.get(timeout=args.deadline) for _ in range(world)]
        finally:
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
                    process.join()
    failures = [f"rank {rank}: {error}" for rank, _, error in answers if error]
    if failures:
        raise RuntimeError(f"world of {world} failed: " + "; ".join(failures))
    return {rank: results for rank, results, _ in answers}


def _summary(per_rank, batch):
    """Median over steps of: the slowest rank's step, the mean over ranks of time in / out of collectives, and
    the CPU time summed over ranks."""
    steps, comms, cpus = (np.array([per_rank[rank][batch][k] for rank in sorted(per_rank)]) for k in range(3))
    return (float(np.median(steps.max(axis=0))), float(np.median(comms.mean(axis=0))),
            float(np.median((steps - comms).mean(axis=0))), float(np.median(cpus.sum(axis=0))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[2048, 16384], help="ids per rank per step")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--optimizer", default="rowwise_adagrad", choices=["sgd", "adagrad", "rowwise_adagrad", "adam"])
    parser.add_argument("--partition", default="mod", choices=["mod", "range"])
    parser.add_argument("--ids", default="uniform", choices=["uniform", "zipf"])
    parser.add_argument("--zipf-a", type=float, default=1.1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="threads per rank (default: cores // world)")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before a world is given up")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    print(f"# {args.rows:,} x {args.dim} {args.dtype}, {args.optimizer}, partition {args.partition}, "
          f"{args.ids} ids, {args.steps} steps; {cores} cores on this machine, "
          + (f"{args.threads} thread(s) per rank" if args.threads else "cores // W threads per rank"))
    print("| world | ids/rank | step ms | global ids/s | in collectives ms | local ms | CPU ms, all ranks "
          "| ids per CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        step, cpu = _plain(args, batch)
        print(f"| plain | {batch} | {step * 1e3:.2f} | {batch / step:,.0f} | – | {step * 1e3:.2f} | {cpu * 1e3:.2f} "
              f"| {batch / cpu:,.0f} |", flush=True)
    for world in args.worlds:
        per_rank = _launch(world, args)
        for batch in args.batches:
            step, comm, local, cpu = _summary(per_rank, batch)
            print(f"| {world} | {batch} | {step * 1e3:.2f} | {world * batch / step:,.0f} | {comm * 1e3:.2f} | "
                  f"{local * 1e3:.2f} | {cpu * 1e3:.2f} | {world * batch / cpu:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
