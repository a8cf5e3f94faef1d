"""One training epoch of the language-identification example, fastembed against the same model in PyTorch.

Both models: hashed character n-grams in a 2**20-row table, mean bag, linear softmax; the table trained by
lazy Adam (fastembed ``SparseAdam.fused_step`` / ``torch.optim.SparseAdam`` on ``nn.EmbeddingBag(sparse=True)``),
the linear layer by Adam; same data, batches, initial weights and hyper-parameters. Each epoch is timed alone
(data preparation excluded), at 1 thread and at all cores, and the held-out accuracy after the last epoch is
printed so that the speed is compared at equal accuracy.

Run: ``python bench/bench_langid.py [--epochs 3] [--threads 1 2] [--languages ...]`` (needs wordfreq and torch).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from fastembed.examples import langid


class TorchLangID:
    """The example's model in PyTorch, started from the same weights as a ``langid.LangID``."""

    def __init__(self, torch, model, lr):
        self.torch = torch
        self.embedding = torch.nn.EmbeddingBag.from_pretrained(
            torch.from_numpy(model.embedding.embeddings.copy()), freeze=False, mode="mean", sparse=True)
        self.linear = torch.nn.Linear(model.weight.shape[0], model.weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(model.weight.T.copy()))
            self.linear.bias.copy_(torch.from_numpy(model.bias))
        self.sparse_optimizer = torch.optim.SparseAdam(self.embedding.parameters(), lr=lr)
        self.dense_optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr)
        self.loss = torch.nn.CrossEntropyLoss()

    def train_step(self, ids, offsets, labels):
        torch = self.torch
        self.sparse_optimizer.zero_grad()
        self.dense_optimizer.zero_grad()
        logits = self.linear(self.embedding(torch.from_numpy(ids), torch.from_numpy(offsets[:-1])))
        loss = self.loss(logits, torch.from_numpy(labels))
        loss.backward()
        self.sparse_optimizer.step()
        self.dense_optimizer.step()
        return loss.item()

    def predict(self, bags):
        torch = self.torch
        with torch.no_grad():
            logits = self.linear(self.embedding(torch.from_numpy(bags.ids), torch.from_numpy(bags.offsets[:-1])))
        return logits.argmax(dim=1).numpy()


def run(name, model, train, test, epochs, batch_size, seed):
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        langid.train_epoch(model.train_step, train, batch_size, rng)
        times.append(time.perf_counter() - started)
    accuracy = float(np.mean(model.predict(test) == test.labels))
    return {"name": name, "epoch_s": statistics.median(times), "times": times, "accuracy": accuracy}


def main(argv=None):
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", nargs="+", default=list(langid.LANGUAGES))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))])
    parser.add_argument("--train-per-language", type=int, default=20_000)
    parser.add_argument("--test-per-language", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    wordlists = langid.load_wordlists(args.languages, 30_000)
    train, test = langid.make_datasets(wordlists, args.train_per_language, args.test_per_language)
    print(f"{len(args.languages)} languages, {len(train):,} training words, {len(test):,} held out; "
          f"dim {args.dim}, batch {args.batch_size}, lr {args.lr}, {args.epochs} epochs; median epoch time")
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        ours = langid.LangID(len(args.languages), dim=args.dim, lr=args.lr, n_threads=threads)
        theirs = TorchLangID(torch, langid.LangID(len(args.languages), dim=args.dim, lr=args.lr), args.lr)
        results = [run("fastembed", ours, train, test, args.epochs, args.batch_size, 0),
                   run("torch", theirs, train, test, args.epochs, args.batch_size, 0)]
        print(f"\n{threads} thread{'s' if threads > 1 else ''}:")
        for r in results:
            print(f"  {r['name']:10s} epoch {r['epoch_s']:7.3f} s  (epochs: "
                  f"{', '.join(f'{t:.2f}' for t in r['times'])})  held-out accuracy {r['accuracy']:.1%}")
        speedup = results[1]["epoch_s"] / results[0]["epoch_s"]
        gap = results[0]["accuracy"] - results[1]["accuracy"]
        print(f"  fastembed is {speedup:.2f}x faster per epoch (goal 2x: {'met' if speedup >= 2 else 'MISSED'}), "
              f"accuracy difference {gap:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
