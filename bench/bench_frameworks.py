"""Training-step timings on the CPU: ``torch.nn.Embedding``/``EmbeddingBag`` with ``torch.optim`` against
``fastembed.torch.Embedding``/``EmbeddingBag`` with ``torch.optim``, and with ``fastembed.torch``'s optimizers.

Run: ``python bench/bench_frameworks.py`` (options: ``--rounds``, ``--threads 1,2``, ``--only imdb,rec-dense``,
``--profile`` for a torch.profiler table of each variant's step).

Workloads (every variant starts from the same weights and sees the same batches):
  imdb                Embedding(5000, 32) → LSTM(100) → Linear(1) + sigmoid, binary cross-entropy, Adam;
                      64 reviews × 500 ids.
  imdb-bag            EmbeddingBag(5000, 32, mode="mean") over each review → Linear(1), BCE-with-logits, Adam.
  imdb-bag-sparse     the same with sparse=True: SparseAdam for the table, Adam for the rest.
  rec-dense           Embedding(1,000,000, 64) over 16,384 bags of 20 ids, mean-pooled → Linear(1),
                      BCE-with-logits; SGD on a dense gradient.
  rec-sparse          the same with sparse=True: SparseAdam for the table, Adam for the rest.
  rec-adagrad         sparse=True, Adagrad for the table (the classic recommender optimizer), Adam for the rest.
  rec-sparse-sgd      sparse=True, SGD for everything (torch adds its uncoalesced gradient without sorting it).
  rec-bag-*           the rec-* workloads with EmbeddingBag(1,000,000, 64, mode="mean") doing the pooling.
Ids are uniform over the vocabulary.

Variants: ``torch`` (torch modules, torch.optim), ``fastembed`` (fastembed.torch modules, torch.optim) and, for
sparse workloads, ``fastembed+optim`` (fastembed.torch modules and fastembed.torch.SGD/Adagrad/SparseAdam for
the table; Adam stays torch's).

Parts timed:
  lookup     the embedding alone: forward lookup and backward of a fixed upstream gradient into the weight;
  embedding  the same plus the optimizer step on the weight;
  step       zero_grad, forward, loss, backward and optimizer step(s) of the whole model.

Each round runs every variant once, in reversed order every other round; after one warm-up round the median of
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
    table = "Embedding"

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding
        self.lstm = nn.LSTM(embedding.embedding_dim, 100, batch_first=True)
        self.dense = nn.Linear(100, 1)

    def forward(self, ids):
        _, (hidden, _) = self.lstm(self.embedding(ids))
        return torch.sigmoid(self.dense(hidden[-1])).squeeze(-1)


class Recommender(nn.Module):
    """Pools each row of ids: by nn.Embedding then a mean over the sequence (``table = "Embedding"``), or by
    an EmbeddingBag in mean mode (``table = "EmbeddingBag"``)."""

    table = "Embedding"

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(embedding.embedding_dim, 1)

    def forward(self, bags):
        pooled = self.embedding(bags)
        if self.table == "Embedding":
            pooled = pooled.mean(dim=1)
        return self.head(pooled).squeeze(-1)


class BagRecommender(Recommender):
    table = "EmbeddingBag"


class BagClassifier(BagRecommender):
    """IMDB-style with a bag: each review's ids mean-pooled by an EmbeddingBag → Linear(1) (fastText-like)."""


# name: (vocabulary, dim, ids shape, sparse, table optimizer, model)
REC = (1_000_000, 64, (16384, 20))
IMDB = (5000, 32, (64, 500))
WORKLOADS = {
    "imdb": IMDB + (False, "adam", Imdb),
    "imdb-bag": IMDB + (False, "adam", BagClassifier),
    "imdb-bag-sparse": IMDB + (True, "sparse_adam", BagClassifier),
    "rec-dense": REC + (False, "sgd", Recommender),
    "rec-sparse": REC + (True, "sparse_adam", Recommender),
    "rec-adagrad": REC + (True, "adagrad", Recommender),
    "rec-sparse-sgd": REC + (True, "sgd", Recommender),
    "rec-bag-dense": REC + (False, "sgd", BagRecommender),
    "rec-bag-sparse": REC + (True, "sparse_adam", BagRecommender),
    "rec-bag-adagrad": REC + (True, "adagrad", BagRecommender),
    "rec-bag-sparse-sgd": REC + (True, "sgd", BagRecommender),
}
_OPTIMIZERS = {"adam": lambda ns, p: torch.optim.Adam(p, lr=1e-3), "sgd": lambda ns, p: ns.SGD(p, lr=0.1),
               "sparse_adam": lambda ns, p: ns.SparseAdam(p, lr=1e-3),
               "adagrad": lambda ns, p: ns.Adagrad(p, lr=0.05)}
# variant: (module namespace, optimizer namespace). fastembed's optimizers differ from torch's only for sparse
# gradients, so "fastembed+optim" runs for sparse workloads only.
VARIANTS = {"torch": (nn, torch.optim), "fastembed": (fet, torch.optim), "fastembed+optim": (fet, fet)}


def _build(name, variant):
    """The timed closures (whole step, embedding part, lookup) of one variant of a workload."""
    vocab, dim, shape, sparse, table_opt, model_cls = WORKLOADS[name]
    modules, optims = VARIANTS[variant]
    torch.manual_seed(0)
    model = model_cls(getattr(modules, model_cls.table)(vocab, dim, sparse=sparse, **(
        {"mode": "mean"} if model_cls.table == "EmbeddingBag" else {})))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, shape, generator=gen)
    labels = torch.randint(0, 2, shape[:1], generator=gen).float()
    upstream = torch.randn(shape[:1] + (dim,) if model_cls.table == "EmbeddingBag" else shape + (dim,),
                           generator=gen)
    table = [model.embedding.weight]
    rest = [p for p in model.parameters() if p is not model.embedding.weight]
    rest_opt = "sgd" if table_opt == "sgd" else "adam"
    optimizers = [_OPTIMIZERS[table_opt](optims, table), _OPTIMIZERS[rest_opt](torch.optim, rest)]
    embedding_opt = _OPTIMIZERS[table_opt](optims, table)
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
    print(f"{'workload':<19} {'part':<10} {'threads':>7} " + " ".join(f"{v + ' ms':>22}" for v in VARIANTS)
          + "   speed-up vs torch")
    for name in args.only.split(","):
        sparse = WORKLOADS[name][3]
        variants = {v: _build(name, v) for v in VARIANTS if sparse or v != "fastembed+optim"}
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for part in args.parts.split(","):
                closures = {v: parts[part] for v, parts in variants.items()}
                if args.profile:
                    print(f"\n===== {name} / {part} / {n_threads} thread(s)")
                    _profile(closures, rows=12)
                    continue
                times = _median_times(closures, args.rounds, clock)
                cells = [f"{statistics.median(times[v]) * 1e3:7.1f} ({min(times[v]) * 1e3:.0f}-"
                         f"{max(times[v]) * 1e3:.0f})" if v in times else "-" for v in VARIANTS]
                base = statistics.median(times["torch"])
                ratios = [f"{base / statistics.median(t):.2f}x" for v, t in times.items() if v != "torch"]
                print(f"{name:<19} {part:<10} {n_threads:>7} " + " ".join(f"{c:>22}" for c in cells)
                      + "   " + " ".join(ratios), flush=True)
        del variants
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
