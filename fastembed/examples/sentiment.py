"""Sentiment of movie-review snippets, from raw text to a trained classifier, in numpy + fastembed.

Run: ``python -m fastembed.examples.sentiment [--epochs 30] [--folds 5] [--seed 0] [--no-pretrained]``

The classic Keras text classifier, written out by hand::

    Tokenizer -> pad_sequences -> Embedding(mask_zero=True) -> masked mean -> Dense(1) -> sigmoid

trained on binary cross-entropy with Adam on the dense layer and, when the table is trainable, plain SGD on
just the embedding rows each batch looked up (``Embedding.backward`` then ``Embedding.step``).

Data, read in place from the installed gensim package, whose wheel ships them as test files (``pip install
"fastembed-kernels[examples]"``): ``pang_lee_polarity.cor``, 200 one-line snippets from Pang & Lee's
sentence-polarity reviews (100 positive, 100 negative), already lower-cased and split into tokens by spaces,
each line ``__label__pos <text>`` or ``__label__neg <text>``; and ``pang_lee_polarity_fasttext.vec``, 100-d
fastText vectors of the corpus' 1694 tokens in word2vec text format. Both files are cp1252, not UTF-8.

Two settings are compared by stratified k-fold cross-validation, the tokenizer fitted on each training fold
only: (a) the table initialised from those vectors and frozen, so that only the dense layer's D + 1 numbers
learn; (b) a randomly initialised table trained with the classifier.

What this can and cannot show. It shows the pipeline working end to end on real text: padding that never
reaches the model, a training loss that falls and a training accuracy that rises, sparse updates touching only
the rows a batch used. It does not show a model that generalises: held-out accuracy stays within the range of
a classifier that guesses (printed at the end), because 160 training snippets are far too few; most words
occur once in the whole corpus (some 390 of its 1693 tokens occur twice or more), so what the model learns
about a word seldom meets it again in a held-out snippet. A bag-of-words logistic regression on the same folds
does no better. Nor can it rank the settings: one snippet is 2.5 points of a fold's accuracy, and the spread
over folds is as large as any gap between them. The vectors were trained on this same corpus, held-out folds
included, which would make (a) optimistic; in fact they hardly moved from fastText's random initialisation
(entries uniform in +-1/dim = +-0.01, cosines between words as small as between random vectors: the example
prints both), so (a) measures a frozen random projection of the words, not the benefit of pre-training.
None of this predicts what GloVe-like vectors or a real-sized corpus would give.
"""
import argparse
import importlib.util
import os
import time

import numpy as np

import fastembed
from fastembed.masking import masked_mean, masked_mean_backward
from fastembed.pretrained import embedding_matrix, load_vectors
from fastembed.text import Tokenizer, pad_sequences

try:
    from tqdm.auto import tqdm
except ImportError:     # optional: without it only the per-fold lines show progress
    tqdm = None

CORPUS = "pang_lee_polarity.cor"
VECTORS = "pang_lee_polarity_fasttext.vec"
ENCODING = "cp1252"
INSTALL = 'pip install "fastembed-kernels[examples]"'
LABELS = {"__label__neg": 0, "__label__pos": 1}

BATCH_SIZE = 32
DENSE_LR = 0.01          # Adam, dense layer
EMBEDDING_LR = 20.0      # plain SGD, embedding rows: the mean over ~20 words makes their gradients small
# A batch is ~0.6 MB of vectors, copied by one thread in tens of microseconds: a team of threads would mostly
# wait, and on a machine busy with other jobs OpenMP's spin-waiting threads made the whole run 5x slower.
THREADS = 1
DIM = 100                # width of the random table, that of the file's vectors
SETTINGS = {"pretrained": "(a) pre-trained, frozen", "random": "(b) random, trainable"}


def data_folder():
    """gensim's ``test/test_data`` folder, found without importing gensim (which takes seconds).

    Raises ``FileNotFoundError`` saying what to install when gensim or one of its data files is absent.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this example reads its data from the gensim package, which is not installed: "
                                f"{INSTALL}")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "test", "test_data")
    missing = [name for name in (CORPUS, VECTORS) if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"the installed gensim has no {' or '.join(missing)} in {folder} (its wheels "
                                f"ship them): pip install --force-reinstall gensim")
    return folder


def read_corpus(path):
    """Texts and 0/1 labels (int8) of a ``__label__neg|pos <text>`` file; a bad line raises ``ValueError``."""
    texts, labels = [], []
    with open(path, encoding=ENCODING) as f:
        for lineno, line in enumerate(f, start=1):
            label, _, text = line.strip().partition(" ")
            if label not in LABELS or not text:
                raise ValueError(f"{path}, line {lineno}: expected '__label__neg <text>' or '__label__pos "
                                 f"<text>', got {line[:60]!r}")
            texts.append(text)
            labels.append(LABELS[label])
    return texts, np.array(labels, dtype=np.int8)


def stratified_folds(labels, k, rng):
    """Fold number (0..k-1) of each example: each class shuffled, then dealt out in turn."""
    smallest = int(np.bincount(labels).min())
    if not 2 <= k <= smallest:
        raise ValueError(f"the number of folds must be between 2 and {smallest} (the smallest class), got {k}")
    fold = np.empty(len(labels), dtype=np.intp)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(members.size) % k
    return fold


class Adam:
    """Adam (Kingma & Ba, 2015) over a list of dense arrays, updated in place."""

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-7):
        self.params, self.lr, self.beta1, self.beta2, self.eps = params, lr, beta1, beta2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        # The bias corrections folded into the step size, as in the paper's section 2.
        lr = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m += (1 - self.beta1) * (g - m)
            v += (1 - self.beta2) * (g * g - v)
            p -= lr * m / (np.sqrt(v) + self.eps)


class Classifier:
    """``sigmoid(masked_mean(layer(ids)) @ w + b)``: an embedding layer, mean pooling and one dense unit."""

    def __init__(self, layer, rng):
        self.layer = layer
        limit = np.sqrt(6.0 / (layer.output_dim + 1))          # glorot_uniform, Keras' Dense default
        self.w = rng.uniform(-limit, limit, layer.output_dim).astype(layer.dtype)
        self.b = np.zeros(1, layer.dtype)
        self.optimizer = Adam([self.w, self.b], DENSE_LR)

    def _forward(self, ids):
        mask = self.layer.compute_mask(ids)
        pooled = masked_mean(self.layer(ids, n_threads=THREADS), mask)   # (B, D); padding adds nothing
        return pooled @ self.w + self.b[0], pooled, mask

    def predict(self, ids):
        """Predicted labels (0/1) for padded ids (B, T)."""
        return (self._forward(ids)[0] > 0).astype(np.int8)

    def train_step(self, ids, labels):
        """One step on a batch; returns its mean binary cross-entropy (before the step)."""
        logits, pooled, mask = self._forward(ids)
        # BCE from logits, log(1 + e^z) - y z, and its derivative sigmoid(z) - y: both without overflow.
        loss = float(np.mean(np.logaddexp(0.0, logits) - labels * logits))
        d_logits = (0.5 + 0.5 * np.tanh(0.5 * logits) - labels) / len(labels)
        if self.layer.trainable:
            grad_pooled = np.outer(d_logits, self.w)                # with w as it was in the forward pass
            self.layer.backward(ids, masked_mean_backward(grad_pooled, mask), n_threads=THREADS)
            self.layer.step(EMBEDDING_LR)
        self.optimizer.step([pooled.T @ d_logits, d_logits.sum(keepdims=True)])
        return loss


def vector_report(vectors):
    """One line on what the vectors hold: their range, and cosines between words against random vectors."""
    table = vectors.vectors.astype(np.float64)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    cosines = unit @ unit.T
    mean_abs_cos = (np.abs(cosines).sum() - len(table)) / (len(table) * (len(table) - 1))
    return (f"vectors: {len(vectors)} x {vectors.dim} from {VECTORS}; entries in [{table.min():.4f}, "
            f"{table.max():.4f}], std {table.std():.4f} (uniform +-1/dim has {1 / vectors.dim / np.sqrt(3):.4f}); "
            f"mean |cosine| between words {mean_abs_cos:.3f} ({np.sqrt(2 / np.pi / vectors.dim):.3f} for random "
            f"vectors)")


def build_layer(setting, word_index, vectors, seed):
    """The embedding layer of a setting: the file's vectors, frozen, or a random trainable table."""
    if setting == "pretrained":
        weights, _ = embedding_matrix(word_index, vectors, oov="normal", seed=seed)
        # The file's entries are about +-0.01; at unit scale the dense layer's inputs suit Adam's step size,
        # as GloVe-sized vectors would. Row 0 (padding) stays zero, not that the masked mean ever reads it.
        weights /= weights[1:].std()
        return fastembed.Embedding.from_pretrained(weights, trainable=False, mask_zero=True)
    # Keras' default initialisation, uniform in +-0.05.
    return fastembed.Embedding(len(word_index) + 1, DIM, mask_zero=True, seed=seed)


def fit(model, x, y, epochs, rng, title):
    """Train ``model`` on padded ids ``x`` and labels ``y``; returns the mean training loss of each epoch."""
    losses = []
    # One bar per fold, ticking once an epoch (disable=None: none when stderr is not a terminal).
    bar = tqdm(total=epochs, desc=title, unit="epoch", leave=False, disable=None) if tqdm else None
    for _ in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            total += model.train_step(x[batch], y[batch]) * len(batch)
        losses.append(total / len(order))
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update()
    if bar is not None:
        bar.close()
    return np.array(losses)


def cross_validate(texts, labels, fold_of, vectors, settings, epochs, seed):
    """Train and test every setting on every fold, printing one line each.

    Returns ``{setting: {"losses": (folds, epochs), "train_accuracy": (folds,), "accuracy": (folds,)}}``,
    ``accuracy`` being on the held-out fold.
    """
    texts = np.array(texts, dtype=object)
    folds = int(fold_of.max()) + 1
    results = {s: {"losses": [], "train_accuracy": [], "accuracy": []} for s in settings}
    for k in range(folds):
        test = fold_of == k
        tok = Tokenizer(filters="")      # the corpus is already tokenised; filters would split "rom-com"
        tok.fit_on_texts(texts[~test])
        # Test words unseen in training are dropped (no oov_token): a snippet of only those pools to zeros.
        x_train = pad_sequences(tok.texts_to_sequences(texts[~test]))
        x_test = pad_sequences(tok.texts_to_sequences(texts[test]))
        y_train, y_test = labels[~test], labels[test]
        for setting in settings:
            title = f"{SETTINGS[setting]} fold {k + 1}/{folds}"
            rng = np.random.default_rng([seed, k])
            model = Classifier(build_layer(setting, tok.word_index, vectors, seed + k), rng)
            losses = fit(model, x_train, y_train, epochs, rng, title)
            train_accuracy = float(np.mean(model.predict(x_train) == y_train))
            accuracy = float(np.mean(model.predict(x_test) == y_test))
            for key, value in (("losses", losses), ("train_accuracy", train_accuracy), ("accuracy", accuracy)):
                results[setting][key].append(value)
            print(f"{title}: train loss {losses[0]:.3f} -> {losses[-1]:.3f}, train accuracy {train_accuracy:.3f}, "
                  f"held-out accuracy {accuracy:.3f} ({round(accuracy * test.sum())}/{test.sum()})")
    return {s: {key: np.array(v) for key, v in r.items()} for s, r in results.items()}


def summary(results, epochs, n_examples):
    """The table printed at the end: loss and accuracies per setting, and the range of a guessing classifier."""
    header = f"{'setting':<26}{f'train loss, epoch 1 -> {epochs}':<30}{'train acc.':<12}"
    lines = [header + "held-out accuracy over folds: mean, std, min-max"]
    for setting, r in results.items():
        first, last, acc = r["losses"][:, 0].mean(), r["losses"][:, -1].mean(), r["accuracy"]
        spread = f"{acc.std(ddof=1):.3f}" if len(acc) > 1 else "-"
        lines.append(f"{SETTINGS[setting]:<26}{f'{first:.3f} -> {last:.3f}':<30}{r['train_accuracy'].mean():<12.3f}"
                     f"{acc.mean():.3f}, {spread}, {acc.min():.3f}-{acc.max():.3f}")
    # Over n held-out predictions a coin flip scores 0.5 +- 1.96 * sqrt(0.25 / n) 95% of the time.
    half_width = 1.96 * np.sqrt(0.25 / n_examples)
    lines.append(f"A classifier that guesses scores {0.5 - half_width:.2f}-{0.5 + half_width:.2f} (95%) on "
                 f"{n_examples} held-out snippets; accuracies in that range show nothing learnt that generalises "
                 "(see the module docstring).")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastembed.examples.sentiment",
                                     description="Sentiment classifier on the Pang & Lee snippets that gensim ships.")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per fold (default 30)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds, initialisations and batches")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="only the randomly initialised trainable table (the vectors are not read)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    return args


def main(argv=None):
    """Run the comparison and print it; returns ``cross_validate``'s results."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        folder = data_folder()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    texts, labels = read_corpus(os.path.join(folder, CORPUS))
    try:
        fold_of = stratified_folds(labels, args.folds, np.random.default_rng(args.seed))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"{len(texts)} snippets ({np.sum(labels == 1)} positive, {np.sum(labels == 0)} negative) from {CORPUS}; "
          f"{args.folds}-fold cross-validation, {args.epochs} epochs, seed {args.seed}")
    vectors, settings = None, ["random"]
    if not args.no_pretrained:
        vectors = load_vectors(os.path.join(folder, VECTORS), format="word2vec", encoding=ENCODING)
        print(vector_report(vectors))
        settings = ["pretrained", "random"]
    results = cross_validate(texts, labels, fold_of, vectors, settings, args.epochs, args.seed)
    print(summary(results, args.epochs, len(texts)))
    print(f"{time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
