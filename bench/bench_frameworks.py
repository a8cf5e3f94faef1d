"""Training-step timings on the CPU: ``torch.nn.Embedding`` against ``fastembed.torch.Embedding``.

Run: ``python bench/bench_frameworks.py`` (options: ``--rounds``, ``--threads 1,2``, ``--only imdb,rec-dense``,
``--profile`` for a torch.profiler table of each variant's step).

Workloads (both variants start from the same weights and see the same batches):
  imdb            Embedding(5000, 32) → LSTM(100) → Linear(1) + sigmoid, binary cross-entropy, Adam;
                  64 reviews × 500 ids.
  rec-dense       Embedding(1,000,000, 64) over 16,384 bags of 20 ids, mean-pooled → Linear(1),
                  BCE-with-logits; SGD on a dense gradient.
  rec-sparse      the same with sparse=True: SparseAdam for the table, Adam for the rest.
  rec-adagrad     sparse=True, Adagrad for the table (the classic recommender optimizer), Adam for the rest.
  rec-sparse-sgd  sparse=True, SGD for everything (torch adds its uncoalesced gradient without sorting it).
Bags are fixed-length rows pooled by mean through nn.Embedding (nn.EmbeddingBag is compared once fastembed
has a bag module). Ids are uniform over the vocabulary.

Parts timed:
  lookup     the embedding alone: forward lookup and backward of a fixed upstream gradient into the weight;
  embedding  the same plus the optimizer step on the weight;
  step       zero_grad, forward, loss, backward and optimizer step(s) of the whole model.

Each round runs every variant once, alternating which goes first; after one warm-up round the median of
``--rounds`` rounds is reported with the fastest and slowest (wall clock, or ``--clock cpu``: the process's
CPU time). fastembed.torch follows torch.set_num_threads.
"""
import argparse
import os
import statistics
import time

import torch
from torch import nn

import fastembed
import fastembed.torch as fet


class Imdb(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding
        self.lstm = nn.LSTM(embedding.embedding_dim, 100, batch_first=True)
        self.dense = nn.Linear(100, 1)

    def forward(self, ids):
        _, (hidden, _) = self.lstm(self.embedding(ids))
        return torch.sigmoid(self.dense(hidden[-1])).squeeze(-1)


class Recommender(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(embedding.embedding_dim, 1)

    def forward(self, bags):
        return self.head(self.embedding(bags).mean(dim=1)).squeeze(-1)


# name: (vocabulary, dim, ids shape, sparse, table optimizer, model)
WORKLOADS = {
    "imdb": (5000, 32, (64, 500), False, "adam", Imdb),
    "rec-dense": (1_000_000, 64, (16384, 20), False, "sgd", Recommender),
    "rec-sparse": (1_000_000, 64, (16384, 20), True, "sparse_adam", Recommender),
    "rec-adagrad": (1_000_000, 64, (16384, 20), True, "adagrad", Recommender),
    "rec-sparse-sgd": (1_000_000, 64, (16384, 20), True, "sgd", Recommender),
}
_OPTIMIZERS = {"adam": lambda p: torch.optim.Adam(p, lr=1e-3), "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
               "sparse_adam": lambda p: torch.optim.SparseAdam(p, lr=1e-3),
               "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05)}


def _build(name, embedding_cls):
    """The two timed closures (whole step, embedding part) of one variant of a workload."""
    vocab, dim, shape, sparse, table_opt, model_cls = WORKLOADS[name]
    torch.manual_seed(0)
    model = model_cls(embedding_cls(vocab, dim, sparse=sparse))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, shape, generator=gen)
    labels = torch.randint(0, 2, shape[:1], generator=gen).float()
    upstream = torch.randn(shape + (dim,), generator=gen)
    table = [model.embedding.weight]
    rest = [p for p in model.parameters() if p is not model.embedding.weight]
    rest_opt = "sgd" if table_opt == "sgd" else "adam"
    optimizers = [_OPTIMIZERS[table_opt](table), _OPTIMIZERS[rest_opt](rest)]
    embedding_opt = _OPTIMIZERS[table_opt](table)
    loss_fn = nn.BCELoss() if model_cls is Imdb else nn.BCEWithLogitsLoss()

    def step():
        for opt in optimizers:
            opt.zero_grad()
        loss_fn(model(ids), labels).backward()
        for opt in optimizers:
            opt.step()

    def lookup():
        model.embedding.weight.grad = None
        model.embedding(ids).backward(upstream)

    def embedding_part():
        lookup()
        embedding_opt.step()

    return {"step": step, "embedding": embedding_part, "lookup": lookup}


def _median_times(closures, rounds, clock):
    """{variant: [seconds per round]}, variants interleaved and their order alternated every round."""
    names = list(closures)
    times = {n: [] for n in names}
    for r in range(rounds + 1):
        for n in (names if r % 2 == 0 else names[::-1]):
            start = clock()
            closures[n]()
            if r:                      # round 0 warms up allocators, caches and optimizer state
                times[n].append(clock() - start)
    return times


def _profile(closures, rows):
    from torch.profiler import ProfilerActivity, profile

    for name, fn in closures.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
            fn()
        print(f"\n--- {name}: torch.profiler, 2 steps, sorted by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--parts", default="lookup,embedding,step")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (all threads, kernel included), steadier on a busy "
                             "machine at 1 thread")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    args = parser.parse_args()
    threads = sorted({int(t) for t in args.threads.split(",")})
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, fastembed {fastembed.__version__} (OpenMP: {fastembed.openmp_enabled()}), "
          f"{len(os.sched_getaffinity(0))} cores, {args.clock} clock, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'workload':<15} {'part':<10} {'threads':>7} {'nn.Embedding ms':>22} {'fastembed ms':>22} {'speed-up':>9}")
    for name in args.only.split(","):
        variants = {"nn.Embedding": _build(name, nn.Embedding), "fastembed": _build(name, fet.Embedding)}
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for part in args.parts.split(","):
                closures = {v: parts[part] for v, parts in variants.items()}
                if args.profile:
                    print(f"\n===== {name} / {part} / {n_threads} thread(s)")
                    _profile(closures, rows=12)
                    continue
                times = _median_times(closures, args.rounds, clock)
                cells = [f"{statistics.median(t) * 1e3:7.1f} ({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f})"
                         for t in times.values()]
                ratio = statistics.median(times["nn.Embedding"]) / statistics.median(times["fastembed"])
                print(f"{name:<15} {part:<10} {n_threads:>7} {cells[0]:>22} {cells[1]:>22} {ratio:>8.2f}x",
                      flush=True)
        del variants
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
