"""fastText-style language identification of single words, trained with a fused sparse optimizer.

Each word becomes a bag of hashed character n-grams (3 to 5 characters of ``<word>``, plus the marked word
itself) in a table of 2**20 rows; ``EmbeddingBag(mode="mean")`` pools the bag and a linear softmax over the
languages classifies it. The table is trained by ``fastembed.optim.SparseAdam.fused_step`` (only the rows in
the batch move), the small linear layer by dense Adam in numpy.

Data: the word-frequency lists that the ``wordfreq`` package ships (read offline from the installed package;
``pip install fastembed-kernels[examples]``). For each language the most frequent alphabetic words are split
by word type into training and held-out words, and words are drawn from each part with probability
proportional to frequency**alpha, so that the held-out words were never seen in training.

Run: ``python -m fastembed.examples.langid [--epochs 2] [--threads N] [--languages en de fr ...]``
"""
import argparse
import time
import zlib
from dataclasses import dataclass

import numpy as np

import fastembed
from fastembed import optim

LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "fi")
NUM_BUCKETS = 2**20
NGRAM_SIZES = (3, 4, 5)


def load_wordlists(languages, top_n):
    """``{language: (words, frequencies)}``: the ``top_n`` most frequent alphabetic words of each list."""
    import wordfreq

    lists = {}
    for language in languages:
        words, freqs = [], []
        # Bucket i of wordfreq's list holds the words of frequency 10**(-i / 100).
        for index, bucket in enumerate(wordfreq.get_frequency_list(language)):
            for word in bucket:
                if word.isalpha():
                    words.append(word)
                    freqs.append(10.0 ** (-index / 100.0))
            if len(words) >= top_n:
                break
        lists[language] = (words[:top_n], np.array(freqs[:top_n]))
    return lists


def word_features(word):
    """The hashed features of a word: its character n-grams and the word itself, with boundary marks.

    The whole word is hashed with a leading space (which no word contains) so that a three-letter word and
    its only 5-gram, both ``<abc>``, get different rows.
    """
    marked = f"<{word}>"
    grams = [marked[i:i + n] for n in NGRAM_SIZES for i in range(len(marked) - n + 1)]
    grams.append(" " + marked)
    return [zlib.crc32(gram.encode("utf-8")) % NUM_BUCKETS for gram in grams]


@dataclass
class Bags:
    """Words as bags: ``ids`` (N,) int64 feature rows, ``offsets`` (B + 1,), ``labels`` (B,), ``words``."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    words: list

    def __len__(self):
        return self.labels.shape[0]

    def take(self, index):
        """The bags ``index`` (an int array) as a new ``(ids, offsets, labels)`` batch."""
        starts, ends = self.offsets[index], self.offsets[index + 1]
        lengths = ends - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return self.ids[positions], offsets, self.labels[index]


def encode(words, labels, cache):
    """Bags of the given words (features cached per word)."""
    rows = []
    for word in words:
        if word not in cache:
            cache[word] = word_features(word)
        rows.append(cache[word])
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    ids = np.fromiter((i for r in rows for i in r), np.int64, int(lengths.sum()))
    return Bags(ids, np.concatenate([[0], np.cumsum(lengths)]), np.asarray(labels, np.int64), list(words))


def make_datasets(wordlists, train_per_language, test_per_language, test_fraction=0.2, alpha=0.5, seed=0):
    """Training and held-out ``Bags``: word types split per language, tokens drawn ∝ frequency**alpha."""
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "test": ([], [])}
    for label, (words, freqs) in enumerate(wordlists.values()):
        types = rng.permutation(len(words))
        n_test = int(round(test_fraction * len(words)))
        for part, chosen, count in (("test", types[:n_test], test_per_language),
                                    ("train", types[n_test:], train_per_language)):
            weights = freqs[chosen] ** alpha
            drawn = rng.choice(chosen, size=count, p=weights / weights.sum())
            parts[part][0].extend(words[i] for i in drawn)
            parts[part][1].extend([label] * count)
    cache = {}
    train = encode(*parts["train"], cache)
    test = encode(*parts["test"], cache)
    return train, test


def softmax_cross_entropy(logits, labels):
    """Mean loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    n = labels.shape[0]
    loss = -np.mean(np.log(probs[np.arange(n), labels] + 1e-30))
    probs[np.arange(n), labels] -= 1.0
    return float(loss), probs / n


class DenseAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) for a few small dense arrays, in place."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads):
        self.t += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.t)
        root_correction = np.sqrt(1 - beta2**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= step_size * m / (np.sqrt(v) / root_correction + self.eps)


class LangID:
    """Mean of hashed n-gram vectors, then a linear softmax; the table trained by fused lazy Adam."""

    def __init__(self, num_languages, dim=32, lr=0.003, seed=0, n_threads=None):
        rng = np.random.default_rng(seed)
        self.embedding = fastembed.EmbeddingBag(
            NUM_BUCKETS, dim, mode="mean", seed=seed,
            embeddings_initializer=fastembed.initializers.RandomUniform(-1.0 / dim, 1.0 / dim))
        self.weight = (rng.standard_normal((dim, num_languages)) / np.sqrt(dim)).astype(np.float32)
        self.bias = np.zeros(num_languages, np.float32)
        self.table_optimizer = optim.SparseAdam(self.embedding, lr=lr)
        self.dense_optimizer = DenseAdam([self.weight, self.bias], lr=lr)
        self.n_threads = n_threads

    def logits(self, ids, offsets):
        return self.embedding(ids, offsets[:-1], n_threads=self.n_threads) @ self.weight + self.bias

    def train_step(self, ids, offsets, labels):
        hidden = self.embedding(ids, offsets[:-1], n_threads=self.n_threads)
        loss, grad_logits = softmax_cross_entropy(hidden @ self.weight + self.bias, labels)
        grad_logits = grad_logits.astype(np.float32)
        grad_hidden = grad_logits @ self.weight.T
        self.dense_optimizer.step([hidden.T @ grad_logits, grad_logits.sum(axis=0)])
        self.table_optimizer.fused_step(ids, grad_hidden, offsets=offsets[:-1], n_threads=self.n_threads)
        return loss

    def predict(self, bags, batch_size=4096):
        out = np.empty(len(bags), np.int64)
        for start in range(0, len(bags), batch_size):
            ids, offsets, _ = bags.take(np.arange(start, min(start + batch_size, len(bags))))
            out[start:start + batch_size] = self.logits(ids, offsets).argmax(axis=1)
        return out


def batches(n, batch_size, rng):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_epoch(step, bags, batch_size, rng, progress=None):
    """One pass over ``bags`` in random batches; ``step(ids, offsets, labels) -> loss``. Returns the mean loss."""
    total, count = 0.0, 0
    for index in batches(len(bags), batch_size, rng):
        total += step(*bags.take(index)) * index.shape[0]
        count += index.shape[0]
        if progress is not None:
            progress.update(index.shape[0])
    return total / max(count, 1)


def report(languages, labels, predicted):
    """Per-language and overall accuracy, and the most frequent confusions, as printable lines."""
    n = len(languages)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    lines = [f"{'language':>8}  accuracy  most often mistaken for"]
    for i, language in enumerate(languages):
        row = confusion[i]
        wrong = [(row[j], languages[j]) for j in range(n) if j != i and row[j]]
        wrong.sort(reverse=True)
        mistakes = ", ".join(f"{lang} {count / row.sum():.1%}" for count, lang in wrong[:3])
        lines.append(f"{language:>8}  {row[i] / max(row.sum(), 1):8.1%}  {mistakes}")
    lines.append(f"{'overall':>8}  {np.trace(confusion) / max(confusion.sum(), 1):8.1%}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES))
    parser.add_argument("--top-n", type=int, default=30_000, help="words per language (most frequent)")
    parser.add_argument("--train-per-language", type=int, default=20_000)
    parser.add_argument("--test-per-language", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="fastembed threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        tqdm = None

    started = time.perf_counter()
    wordlists = load_wordlists(args.languages, args.top_n)
    train, test = make_datasets(wordlists, args.train_per_language, args.test_per_language, seed=args.seed)
    print(f"{len(args.languages)} languages, {len(train):,} training and {len(test):,} held-out words "
          f"({train.ids.shape[0]:,} n-grams), prepared in {time.perf_counter() - started:.1f} s")
    model = LangID(len(args.languages), dim=args.dim, lr=args.lr, seed=args.seed, n_threads=args.threads)
    rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        bar = tqdm(total=len(train), desc=f"epoch {epoch}", unit="word") if tqdm else None
        started = time.perf_counter()
        loss = train_epoch(model.train_step, train, args.batch_size, rng, bar)
        elapsed = time.perf_counter() - started
        if bar is not None:
            bar.close()
        accuracy = np.mean(model.predict(test) == test.labels)
        print(f"epoch {epoch}: loss {loss:.4f}, held-out accuracy {accuracy:.1%}, {elapsed:.2f} s")
    print("\n".join(report(args.languages, test.labels, model.predict(test))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
