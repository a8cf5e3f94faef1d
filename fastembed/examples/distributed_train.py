"""Train a small click model whose embedding table is sharded over processes (torch.distributed, gloo, CPU).

Run with torchrun, or let the script start its own processes with torch.multiprocessing:

    torchrun --nproc-per-node 2 -m fastembed.examples.distributed_train
    python -m fastembed.examples.distributed_train --spawn 2

Each rank draws its own batches of bags (a user's recent item ids), pools them through a
``ShardedEmbeddingBag`` (each rank owns every W-th row), and feeds a dense layer replicated with
``DistributedDataParallel``. ``loss.backward()`` sends the table's gradients to the rows' owners; ``step()`` on
the table and on the dense optimizer update both. At the end the table is saved per shard, and rank 0 reloads it
in one process to check it.
"""
import argparse
import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist

from fastembed import distributed


def train(rank, world, args, init_method=None):
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    torch.manual_seed(0)
    threads = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    table = distributed.ShardedEmbeddingBag(args.items, args.dim, mode="mean", optimizer="rowwise_adagrad", lr=0.5,
                                            seed=0, timeout=60, n_threads=threads)
    embed = distributed.ShardedEmbeddingModule(table)
    head = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(args.dim, 1))
    head_optimizer = torch.optim.Adagrad(head.parameters(), lr=0.1)
    # The hidden truth: every item has a score; a user clicks when the mean score of their items is positive.
    item_score = np.random.default_rng(1).standard_normal(args.items)
    rng = np.random.default_rng(100 + rank)
    for step in range(args.steps + 1):
        ids = rng.integers(0, args.items, size=(args.batch, args.bag))
        clicked = torch.from_numpy((item_score[ids].mean(axis=1) > 0).astype(np.float32))
        logits = head(embed(torch.from_numpy(ids)).float()).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, clicked)
        head_optimizer.zero_grad()
        loss.backward()
        embed.step()
        head_optimizer.step()
        if step % args.report == 0:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            if rank == 0:
                print(f"step {step:4d}  loss {mean_loss.item() / world:.4f}  "
                      f"(rank 0: {table.comm_seconds:.2f} s in collectives so far)", flush=True)
    directory = args.checkpoint or os.path.join(tempfile.gettempdir(), "fastembed-distributed-example")
    table.save(directory)
    weights = table.full_weights()
    if rank == 0:
        single = distributed.ShardedEmbeddingBag.load(directory, group=dist.new_group([0]))
        assert np.array_equal(single.full_weights(), weights)
        print(f"saved {world} shards to {directory}; reloaded into one process: identical", flush=True)
    else:
        dist.new_group([0])  # group creation is collective, even for a group this rank is not in
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spawn", type=int, default=0, help="start this many processes (without torchrun)")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bag", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--report", type=int, default=50)
    parser.add_argument("--checkpoint", default=None, help="directory for the sharded checkpoint")
    args = parser.parse_args()
    if args.spawn:
        with tempfile.TemporaryDirectory() as folder:
            torch.multiprocessing.spawn(train, args=(args.spawn, args, f"file://{folder}/rendezvous"),
                                        nprocs=args.spawn)
    else:
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)


if __name__ == "__main__":
    main()
