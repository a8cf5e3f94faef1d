"""Time ``fastembed.pretrained.load_vectors`` against gensim's reader.

Writes synthetic GloVe, word2vec text and word2vec binary files into a
temporary directory, loads each several times with both libraries and
prints the median times as a markdown table.  gensim is optional: without
it only fastembed is timed.

    python bench/bench_loaders.py [--words 50000] [--dim 100] [--repeat 5]
"""

import argparse
import gc
import gzip
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Benchmark the checkout this script belongs to, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastembed.pretrained import load_vectors  # noqa: E402

try:
    from gensim.models import KeyedVectors
except ImportError:
    KeyedVectors = None


def write_files(directory, n, dim, seed=0):
    """Write the same n x dim vectors in every format; return {label: (path, kind)}."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    words = [f"word{i}" for i in range(n)]
    buf = io.StringIO()
    np.savetxt(buf, matrix, fmt="%.6f")
    lines = [f"{w} {nums}\n" for w, nums in zip(words, buf.getvalue().splitlines())]
    body = "".join(lines).encode()
    header = f"{n} {dim}\n".encode()
    little = matrix.astype("<f4")
    records = b"".join(w.encode() + b" " + row.tobytes() + b"\n" for w, row in zip(words, little))

    files = {
        "GloVe text": ("vectors.txt", "glove", body),
        "GloVe text .gz": ("vectors.txt.gz", "glove", body),
        "word2vec text": ("vectors.vec", "word2vec", header + body),
        "word2vec binary": ("vectors.bin", "word2vec-binary", header + records),
    }
    out = {}
    for label, (name, kind, data) in files.items():
        path = os.path.join(directory, name)
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "wb") as f:
            f.write(data)
        out[label] = (path, kind)
    return out


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gensim_load(path, kind):
    binary, no_header = kind == "word2vec-binary", kind == "glove"
    return KeyedVectors.load_word2vec_format(path, binary=binary, no_header=no_header)


def check_same(path, kind):
    ours = load_vectors(path, format=kind)
    theirs = gensim_load(path, kind)
    assert ours.words == list(theirs.index_to_key), path
    np.testing.assert_array_equal(ours.vectors, theirs.vectors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as directory:
        files = write_files(directory, args.words, args.dim)
        print(f"{args.words} words x {args.dim} dims, median of {args.repeat} loads\n")
        print("| file | size | fastembed | gensim | speed-up |")
        print("|---|---:|---:|---:|---:|")
        for label, (path, kind) in files.items():
            size = f"{os.path.getsize(path) / 2**20:.1f} MB"
            ours = median_time(lambda p=path, k=kind: load_vectors(p, format=k, progress=False), args.repeat)
            if KeyedVectors is None:
                print(f"| {label} | {size} | {ours:.3f} s | n/a | n/a |")
                continue
            check_same(path, kind)
            theirs = median_time(lambda p=path, k=kind: gensim_load(p, k), args.repeat)
            print(f"| {label} | {size} | {ours:.3f} s | {theirs:.3f} s | {theirs / ours:.1f}x |")

        path, kind = files["word2vec text"]
        load_vectors(path, format=kind, mmap=True)  # builds the cache
        cached = median_time(lambda: load_vectors(path, format=kind, mmap=True), args.repeat)
        size = f"{os.path.getsize(path + '.npy') / 2**20:.1f} MB"
        print(f"| word2vec text, mmap cache | {size} | {cached:.3f} s | n/a | n/a |")


if __name__ == "__main__":
    main()
