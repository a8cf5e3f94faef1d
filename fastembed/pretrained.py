"""Pretrained word vectors: fast loaders and embedding-matrix construction.

``load_vectors`` reads the common interchange formats into one ``(n, D)``
numpy array plus the list of words:

* GloVe text: ``word v1 ... vD`` per line, no header;
* word2vec / fastText ``.vec`` text: a ``count dim`` header line, then
  GloVe-style lines;
* word2vec binary: the same header, then for each word ``word<space>``
  followed by ``D`` little-endian float32 values (4 * D raw bytes), with an
  optional newline before the next word;

each optionally compressed as ``.gz`` or ``.bz2``.  ``embedding_matrix``
then lays the vectors out in the row order of a tokenizer's ``word_index``,
ready to initialise an ``Embedding`` layer::

    vecs = load_vectors("glove.6B.100d.txt")
    matrix, stats = embedding_matrix(tokenizer.word_index, vecs)
"""

import bz2
import contextlib
import gzip
import json
import os
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["FORMATS", "OOV_MODES", "EmbeddingStats", "Vectors", "embedding_matrix", "load_vectors"]

FORMATS = ("auto", "glove", "word2vec", "word2vec-binary")
OOV_MODES = ("zeros", "uniform", "normal")

# Reads are this big: large enough that the per-block numpy calls dominate
# the per-block Python overhead, small enough to keep temporaries modest.
_CHUNK = 1 << 22
# Bytes inspected to tell the formats apart and to find GloVe's dimension.
_PROBE = 1 << 18
# Without an explicit choice, only files at least this big get a progress bar.
_PROGRESS_MIN_BYTES = 100 << 20
_CACHE_VERSION = 1


class Vectors:
    """Word vectors: ``vectors[i]`` is the vector of ``words[i]``.

    Attributes
    ----------
    words : list of str
        Words in file order (first occurrence only).
    vectors : numpy.ndarray, shape ``(len(words), dim)``
        The matrix; a read-only ``numpy.memmap`` when loaded with ``mmap=True``.
    index : dict[str, int]
        Word to row of ``vectors``.
    duplicates : int
        Number of file entries skipped because their word had already
        appeared (``load_vectors`` keeps the first).

    ``word in v``, ``len(v)``, ``v[word]`` (``KeyError`` if absent),
    ``v.get(word, default)`` and iteration over the words work like a dict
    from word to row vector.
    """

    def __init__(self, words, vectors, duplicates=0):
        words = list(words)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
        if vectors.shape[0] != len(words):
            raise ValueError(f"{len(words)} words but {vectors.shape[0]} vectors")
        index = dict(zip(words, range(len(words))))
        if len(index) != len(words):
            dup = next(w for w, c in Counter(words).items() if c > 1)
            raise ValueError(f"duplicate word {dup!r}")
        self.words = words
        self.vectors = vectors
        self.index = index
        self.duplicates = duplicates

    @classmethod
    def _trusted(cls, words, vectors, index, duplicates):
        # For loaders whose words are already unique and indexed.
        self = cls.__new__(cls)
        self.words, self.vectors, self.index, self.duplicates = words, vectors, index, duplicates
        return self

    @property
    def dim(self):
        """Vector length ``D``."""
        return self.vectors.shape[1]

    def get(self, word, default=None):
        """The vector of ``word`` (a row view, shape ``(dim,)``), or ``default``."""
        i = self.index.get(word)
        return default if i is None else self.vectors[i]

    def __getitem__(self, word):
        return self.vectors[self.index[word]]

    def __contains__(self, word):
        return word in self.index

    def __len__(self):
        return len(self.words)

    def __iter__(self):
        return iter(self.words)

    def __repr__(self):
        return f"Vectors({len(self.words)} words, dim={self.dim}, dtype={self.vectors.dtype})"


def load_vectors(
    path,
    format="auto",
    dtype="float32",
    limit=None,
    encoding="utf-8",
    mmap=False,
    progress=None,
):
    """Load word vectors from a GloVe, word2vec text or word2vec binary file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; a ``.gz`` or ``.bz2`` suffix means it is compressed.
    format : {"auto", "glove", "word2vec", "word2vec-binary"}
        ``"auto"`` looks at the start of the file: without a ``count dim``
        header line it is GloVe; with one, it is word2vec text if the next
        line is a word and ``dim`` numbers, binary otherwise.  (A GloVe
        file of dimension 1 whose first line is two integers reads as a
        header: pass the format explicitly there.)
    dtype : float dtype
        dtype of the returned matrix.  Text is parsed in float64 when
        ``dtype`` is float64, in float32 otherwise.
    limit : int or None
        Read at most this many entries (duplicates included) from the start.
    encoding : str
        Encoding of the words (and of the numbers in text files); must be
        ASCII-compatible, e.g. ``"utf-8"`` or ``"latin-1"``.
    mmap : bool
        Cache the matrix next to the file as ``<path>.npy`` (and the words
        and metadata as ``<path>.words.json``) on the first call, and on
        later calls memory-map that cache instead of parsing.  The cache is
        rebuilt when the source's size or modification time, or ``format``,
        ``dtype``, ``limit`` or ``encoding`` differ from when it was written.
        If the cache cannot be written, a warning is issued and the vectors
        are returned in memory.
    progress : bool or None
        Show a ``tqdm`` progress bar (if tqdm is installed).  ``None``: only
        for files over 100 MB when stderr is a terminal.

    Returns
    -------
    Vectors

    Text lines are split on single spaces and trailing whitespace is
    ignored; the word is everything before the last ``dim`` numbers, so it
    may itself contain spaces.  Blank lines are skipped.  A word seen again
    keeps its first vector; later ones are counted in ``Vectors.duplicates``
    and reported with a warning.  For word2vec files, reading stops after
    the number of entries in the header.

    Memory stays close to one copy of the result: the matrix is allocated
    once from the header's count (for GloVe, from an estimate that is then
    grown or trimmed in place), and text is parsed a few MB at a time.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Bad arguments, a malformed line or record (the message names the
        file and the line or entry number), words that do not decode with
        ``encoding``, or a file shorter than its header says.
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
            raise TypeError(f"limit must be an int or None, got {limit!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        limit = int(limit)
    if "\n".encode(encoding) != b"\n" or " ".encode(encoding) != b" ":
        raise ValueError(f"encoding must be ASCII-compatible, got {encoding!r}")
    if mmap:
        vec, dup_examples = _load_cached(path, format, dtype, limit, encoding, progress)
    else:
        vec, dup_examples = _load(path, format, dtype, limit, encoding, progress)
    if dup_examples:
        warnings.warn(
            f"{path}: {vec.duplicates} duplicate words (e.g. {', '.join(map(repr, dup_examples))}); "
            "kept the first vector of each",
            stacklevel=2,
        )
    return vec


class _Input:
    """A (possibly compressed) file read in chunks, feeding a progress bar.

    Progress counts bytes of the file on disk, so compressed files advance
    by their compressed size.
    """

    def __init__(self, path, progress):
        self.name = path
        self._stack = contextlib.ExitStack()
        self._raw = self._stack.enter_context(open(path, "rb"))
        self.size = os.fstat(self._raw.fileno()).st_size
        lower = path.lower()
        if lower.endswith(".gz"):
            self._stream = self._stack.enter_context(gzip.GzipFile(fileobj=self._raw))
        elif lower.endswith(".bz2"):
            self._stream = self._stack.enter_context(bz2.BZ2File(self._raw))
        else:
            self._stream = self._raw
        self.compressed = self._stream is not self._raw
        self._bar = _progress_bar(progress, self.size, os.path.basename(path))
        if self._bar is not None:
            self._stack.callback(self._bar.close)

    def read(self, n):
        try:
            data = self._stream.read(n)
        except (OSError, EOFError) as e:
            # Corrupt or truncated compressed data.
            raise ValueError(f"{self.name}: cannot decompress: {e}") from e
        if self._bar is not None:
            self._bar.update(self._raw.tell() - self._bar.n)
        return data

    def read_probe(self):
        """Return ``(data, at_eof)``: ``_PROBE`` bytes or more, up to at least
        two line ends, unless the file ends first."""
        parts, size, newlines = [], 0, 0
        while size < _PROBE or newlines < 2:
            data = self.read(_PROBE)
            if not data:
                return b"".join(parts), True
            parts.append(data)
            size += len(data)
            newlines += data.count(b"\n")
        return b"".join(parts), False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()


def _progress_bar(progress, size, desc):
    if progress is None:
        stderr = sys.stderr
        progress = size >= _PROGRESS_MIN_BYTES and stderr is not None and stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def _load(path, fmt, dtype, limit, encoding, progress):
    with _Input(path, progress) as inp:
        head, at_eof = inp.read_probe()
        fmt, dim, count, header_len = _sniff(head, at_eof, fmt, encoding, path)
        total = count if limit is None else (limit if count is None else min(count, limit))
        collector = _Collector(dim, dtype, _capacity(inp, fmt, dim, total, head))
        rest = head[header_len:]
        if fmt == "word2vec-binary":
            _read_binary(inp, rest, dim, total, collector, encoding)
        else:
            _read_text(inp, rest, 2 if header_len else 1, dim, total, collector, dtype, encoding)
        if count is not None and collector.entries < total:
            raise ValueError(
                f"{path}: file ends after {collector.entries} vectors, "
                f"but its header declares {count}"
            )
        return collector.finish(), collector.dup_examples


def _capacity(inp, fmt, dim, total, head):
    """Rows to allocate up front: the header's count, else an estimate."""
    if total is not None:
        if inp.compressed:
            return total
        # Each entry takes at least 4 * dim bytes (binary) or "0 " per number
        # (text): a bound that keeps a corrupt header from allocating terabytes.
        return min(total, inp.size // (4 * dim if fmt == "word2vec-binary" else 2 * dim) + 1)
    # GloVe: the probe's bytes per line into the file size (assuming 3:1
    # compression for compressed files); the collector adjusts either way.
    per_line = max(1, len(head) // max(1, head.count(b"\n")))
    return (3 if inp.compressed else 1) * inp.size // per_line + 1024


def _sniff(head, at_eof, fmt, encoding, name):
    """Return ``(format, dim, count or None, header length in bytes)``."""
    nl = head.find(b"\n")
    first = head if nl < 0 else head[:nl]
    fields = first.split()
    has_header = len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit()
    if fmt == "glove" or (fmt == "auto" and not has_header):
        return "glove", _glove_dim(head, at_eof, name), None, 0
    if not has_header:
        raise ValueError(
            f"{name}, line 1: expected a 'count dim' header for format {fmt!r}, "
            f"got {first[:80]!r}"
        )
    count, dim = int(fields[0]), int(fields[1])
    if dim < 1:
        raise ValueError(f"{name}, line 1: the header declares dimension {dim}")
    header_len = len(head) if nl < 0 else nl + 1
    if fmt == "auto":
        rest = head[header_len:]
        is_text = not rest or _is_text_record(rest, at_eof, dim, encoding)
        fmt = "word2vec" if is_text else "word2vec-binary"
    return fmt, dim, count, header_len


def _is_text_record(data, at_eof, dim, encoding):
    nl = data.find(b"\n")
    if nl < 0 and not at_eof:
        return False
    try:
        line = (data if nl < 0 else data[:nl]).decode(encoding)
    except UnicodeDecodeError:
        return False
    parts = line.rstrip().rsplit(" ", dim)
    if len(parts) != dim + 1:
        return False
    try:
        np.array(parts[1:], dtype=np.float64)
    except ValueError:
        return False
    return True


def _glove_dim(head, at_eof, name):
    lines = head.split(b"\n")
    if not at_eof:
        lines.pop()  # possibly cut short by the probe
    # The most common field count resists the odd word containing spaces.
    counts = Counter(len(line.split()) - 1 for line in lines[:1000] if line.strip())
    if not counts:
        raise ValueError(f"{name}: no vectors found (empty file?)")
    dim = counts.most_common(1)[0][0]
    if dim < 1:
        raise ValueError(f"{name}, line 1: expected a word followed by numbers")
    return dim


class _Collector:
    """Accumulates rows into one matrix and indexes the words.

    Duplicate entries are dropped before they are stored.  The matrix grows
    and shrinks with ``ndarray.resize``, i.e. ``realloc``, which can usually
    remap a large block rather than copy it, so no second copy is held.
    """

    def __init__(self, dim, dtype, capacity):
        self.matrix = np.empty((capacity, dim), dtype)
        self.entries = 0  # entries read, duplicates included
        self.words = []
        self.index = {}
        self.duplicates = 0
        self.dup_examples = []

    def add(self, words, values):
        index = self.index
        start = len(self.words)
        if index.keys().isdisjoint(words) and len(set(words)) == len(words):
            index.update(zip(words, range(start, start + len(words))))
            self.words.extend(words)
        else:
            keep = []
            for j, w in enumerate(words):
                if w in index:
                    self.duplicates += 1
                    if len(self.dup_examples) < 3:
                        self.dup_examples.append(w)
                else:
                    index[w] = len(self.words)
                    self.words.append(w)
                    keep.append(j)
            values = values[keep]
        self.entries += len(words)
        end = len(self.words)
        if end > len(self.matrix):
            self._resize(max(end, len(self.matrix) * 3 // 2 + 1024))
        self.matrix[start:end] = values

    def _resize(self, rows):
        # The collector holds the only reference to its matrix.
        self.matrix.resize((rows, self.matrix.shape[1]), refcheck=False)

    def finish(self):
        if len(self.matrix) != len(self.words):
            self._resize(len(self.words))
        return Vectors._trusted(self.words, self.matrix, self.index, self.duplicates)


def _read_text(inp, pending, lineno, dim, total, collector, dtype, encoding):
    """Parse text lines from ``pending`` + the rest of ``inp`` into ``collector``.

    ``lineno`` is the file line number of the first line of ``pending``;
    ``total`` caps the entries read (``None``: to the end of the file).
    """
    parse_dtype = np.float64 if dtype.itemsize > 4 else np.float32
    eof = False
    while not eof and (total is None or collector.entries < total):
        chunk = inp.read(_CHUNK)
        if chunk:
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                pending = data
                continue
            data, pending = data[:cut], data[cut:]
        else:
            eof = True
            data, pending = pending, b""
            if not data:
                break
        text = _decode(data, encoding, inp.name, lineno)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        start = 0
        while start < len(lines) and (total is None or collector.entries < total):
            stop = len(lines) if total is None else min(len(lines), start + total - collector.entries)
            words, values = _parse_lines(lines[start:stop], dim, parse_dtype, inp.name, lineno + start)
            collector.add(words, values)
            start = stop
        lineno += len(lines)


def _decode(data, encoding, name, lineno):
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = lineno + data.count(b"\n", 0, e.start)
        raise ValueError(f"{name}, line {line}: not valid {encoding}: {e.reason}") from e


def _loadtxt(rests, parse_dtype):
    return np.loadtxt(rests, dtype=parse_dtype, delimiter=" ", comments=None, quotechar=None, ndmin=2)


def _parse_lines(lines, dim, parse_dtype, name, lineno):
    """Parse ``word n1 ... n<dim>`` lines; return ``(words, (k, dim) array)``."""
    stripped = [line.rstrip() for line in lines]
    # Fast path: words without spaces, so the word ends at the first space,
    # and all the numbers of the block go through one loadtxt call.
    heads = [s.partition(" ") for s in stripped]
    words = [h[0] for h in heads]
    if all(words):
        try:
            values = _loadtxt([h[2] for h in heads], parse_dtype)
        except ValueError:
            values = None
        if values is not None and values.shape == (len(lines), dim):
            return words, values
    return _parse_lines_carefully(stripped, dim, parse_dtype, name, lineno)


def _parse_lines_carefully(stripped, dim, parse_dtype, name, lineno):
    # Taken for blocks with blank lines, words containing spaces or errors:
    # split each line from the right, and pin any error to its line.
    words, rests, linenos = [], [], []
    for j, s in enumerate(stripped):
        if not s:
            continue
        parts = s.rsplit(" ", dim)
        word = parts[0].rstrip(" ")
        if len(parts) != dim + 1 or not word:
            raise ValueError(
                f"{name}, line {lineno + j}: expected a word and {dim} numbers "
                f"separated by spaces, found {len(s.split())} fields"
            )
        words.append(word)
        rests.append(s[len(parts[0]) + 1:])
        linenos.append(lineno + j)
    if not words:
        return [], np.empty((0, dim), parse_dtype)
    # Each rest now holds exactly ``dim`` space-separated fields, so the
    # only possible failure is a field that is not a number.
    try:
        return words, _loadtxt(rests, parse_dtype)
    except ValueError:
        for rest, line in zip(rests, linenos):
            try:
                _loadtxt([rest], parse_dtype)
            except ValueError as e:
                # loadtxt's own row number is meaningless here.
                reason = str(e).split(" at row ")[0]
                raise ValueError(f"{name}, line {line}: {reason}") from None
        raise


def _read_binary(inp, buf, dim, total, collector, encoding):
    """Parse word2vec binary records from ``buf`` + the rest of ``inp``."""
    nbytes = 4 * dim
    little_f4 = np.dtype("<f4")
    while collector.entries < total:
        find = buf.find
        end = len(buf)
        pos = 0
        raw_words, offsets = [], []
        for _ in range(total - collector.entries):
            i = find(b" ", pos)
            if i < 0 or i + 1 + nbytes > end:
                break
            raw_words.append(buf[pos:i])
            offsets.append(i + 1)
            pos = i + 1 + nbytes
        if offsets:
            words = _decode_words(raw_words, encoding, inp.name, collector.entries)
            # Gather the vectors' bytes; numpy then casts them all at once.
            packed = bytearray(len(offsets) * nbytes)
            with memoryview(buf) as view:
                o = 0
                for off in offsets:
                    packed[o:o + nbytes] = view[off:off + nbytes]
                    o += nbytes
            collector.add(words, np.frombuffer(packed, little_f4).reshape(-1, dim))
            if collector.entries >= total:
                break
        buf = buf[pos:]
        chunk = inp.read(_CHUNK)
        if not chunk:
            if buf.strip(b"\n"):
                raise ValueError(
                    f"{inp.name}, vector {collector.entries + 1}: truncated record "
                    f"({len(buf)} bytes left; a record is a word, a space and {nbytes} bytes)"
                )
            break
        buf += chunk


def _decode_words(raw_words, encoding, name, first):
    # Words cannot contain b" " (it ends them), so one join/decode/split
    # decodes them all and keeps them apart.
    joined = b" ".join(raw_words)
    try:
        text = joined.decode(encoding)
    except UnicodeDecodeError:
        for j, w in enumerate(raw_words):
            try:
                w.decode(encoding)
            except UnicodeDecodeError as e:
                word = w.lstrip(b"\n")
                raise ValueError(
                    f"{name}, vector {first + j + 1}: word {word!r} is not valid {encoding} "
                    f"({e.reason}); is the file really word2vec binary with this dimension?"
                ) from None
        raise
    words = text.split(" ")
    if "\n" in text:
        # Writers put a newline after each vector; it reads as a word prefix.
        words = [w.lstrip("\n") for w in words]
    if not all(words):
        j = words.index("")
        raise ValueError(f"{name}, vector {first + j + 1}: empty word")
    return words


def _cache_paths(path):
    return path + ".npy", path + ".words.json"


def _load_cached(path, fmt, dtype, limit, encoding, progress):
    st = os.stat(path)
    key = {
        "version": _CACHE_VERSION,
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "format": fmt,
        "dtype": dtype.str,
        "limit": limit,
        "encoding": encoding,
    }
    npy_path, meta_path = _cache_paths(path)
    cached = _read_cache(npy_path, meta_path, key)
    if cached is not None:
        return cached, []
    vec, dup_examples = _load(path, fmt, dtype, limit, encoding, progress)
    try:
        _write_atomically(npy_path, lambda f: np.save(f, vec.vectors))
        meta = {"key": key, "dim": vec.dim, "duplicates": vec.duplicates, "words": vec.words}
        _write_atomically(meta_path, lambda f: f.write(json.dumps(meta, ensure_ascii=False).encode("utf-8")))
    except OSError as e:
        warnings.warn(f"cannot write the vector cache for {path} ({e}); vectors stay in memory", stacklevel=3)
        return vec, dup_examples
    cached = _read_cache(npy_path, meta_path, key)
    return (vec if cached is None else cached), dup_examples


def _read_cache(npy_path, meta_path, key):
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("key") != key:
            return None
        words = meta["words"]
        if words:
            matrix = np.load(npy_path, mmap_mode="r")
        else:
            matrix = np.load(npy_path)  # an empty array cannot be memory-mapped
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if matrix.shape != (len(words), meta["dim"]) or matrix.dtype.str != key["dtype"]:
        return None
    index = dict(zip(words, range(len(words))))
    return Vectors._trusted(words, matrix, index, meta.get("duplicates", 0))


def _write_atomically(path, write):
    # Write beside the target and rename, so that a crash or a concurrent
    # reader never sees a half-written cache file.  A plain exclusive open
    # (not mkstemp, which makes the file private to its owner) keeps the
    # usual permissions, so a cache in a shared directory stays readable.
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@dataclass(frozen=True)
class EmbeddingStats:
    """What ``embedding_matrix`` found.

    Attributes
    ----------
    hits : int
        Words that got a pretrained vector (exact or lower-cased match).
    lowercase_hits : int
        Of ``hits``, those found only through their lower-cased form.
    missing : list of str
        Words with no vector, in increasing index order.
    skipped : int
        Words left out because their index is ``>= input_dim``.
    """

    hits: int
    lowercase_hits: int
    missing: list
    skipped: int

    @property
    def misses(self):
        """Number of words with no vector (``len(missing)``)."""
        return len(self.missing)

    @property
    def coverage(self):
        """``hits / (hits + misses)``; 0.0 when there were no words."""
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


def embedding_matrix(word_index, vectors, input_dim=None, oov="zeros", seed=None, dtype=None):
    """Build the weight matrix of an ``Embedding`` layer from pretrained vectors.

    Row ``i`` holds the vector of the word whose index is ``i`` in
    ``word_index``: its exact form if present, else its lower-cased form.
    Row 0 (padding) and rows no word maps to are zeros.

    Parameters
    ----------
    word_index : Mapping[str, int]
        Word to row, indices >= 1 -- e.g. ``Tokenizer.word_index``.
    vectors : Vectors, gensim ``KeyedVectors`` or Mapping[str, array-like]
        The pretrained vectors, all of one length ``D``.
    input_dim : int or None
        Number of rows; default ``max(word_index.values()) + 1``.  Words
        with index ``>= input_dim`` are skipped, as ``num_words`` does in
        ``Tokenizer``.
    oov : {"zeros", "uniform", "normal"}
        Rows of words with no vector: zeros, or random values with the mean
        and standard deviation of all the found vectors' entries (of the
        whole table when nothing was found) -- uniform on
        ``mean +- sqrt(3) * std``, or normal.
    seed : int, numpy Generator or None
        Seeds the random rows, for reproducibility.
    dtype : float dtype or None
        Output dtype; default: the dtype of the vectors.

    Returns
    -------
    (matrix, stats) : (numpy.ndarray of shape ``(input_dim, D)``, EmbeddingStats)
    """
    if not isinstance(word_index, Mapping):
        raise TypeError(f"word_index must be a mapping from word to index, got {type(word_index).__name__}")
    if oov not in OOV_MODES:
        raise ValueError(f"oov must be one of {OOV_MODES}, got {oov!r}")
    lookup, table = _as_table(vectors)
    dtype = np.dtype(dtype) if dtype is not None else table.dtype
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")

    items = sorted(word_index.items(), key=lambda kv: kv[1])
    if items and items[0][1] < 1:
        w, i = items[0]
        raise ValueError(f"word_index maps {w!r} to {i}; indices must be >= 1 (0 is padding)")
    if input_dim is None:
        input_dim = items[-1][1] + 1 if items else 1
    elif isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
    input_dim = int(input_dim)

    rows, sources, missing_rows, missing = [], [], [], []
    lowercase_hits = skipped = 0
    for w, i in items:
        if i >= input_dim:
            skipped += 1
            continue
        src = lookup.get(w)
        if src is None:
            lw = w.lower()
            if lw != w:
                src = lookup.get(lw)
                if src is not None:
                    lowercase_hits += 1
        if src is None:
            missing_rows.append(i)
            missing.append(w)
        else:
            rows.append(i)
            sources.append(src)

    matrix = np.zeros((input_dim, table.shape[1]), dtype)
    found = table[np.asarray(sources, dtype=np.intp)]
    matrix[np.asarray(rows, dtype=np.intp)] = found
    if missing and oov != "zeros":
        reference = found if rows else table
        if reference.size == 0:
            raise ValueError("the vectors are empty: no scale for the random rows")
        mean = float(np.mean(reference, dtype=np.float64))
        std = float(np.std(reference, dtype=np.float64))
        rng = np.random.default_rng(seed)
        shape = (len(missing), table.shape[1])
        if oov == "uniform":
            half = np.sqrt(3.0) * std
            random_rows = rng.uniform(mean - half, mean + half, size=shape)
        else:
            random_rows = rng.normal(mean, std, size=shape)
        matrix[np.asarray(missing_rows, dtype=np.intp)] = random_rows
    stats = EmbeddingStats(hits=len(rows), lowercase_hits=lowercase_hits, missing=missing, skipped=skipped)
    return matrix, stats


def _as_table(vectors):
    """Return ``(lookup, table)``: word -> row of the 2-D float array ``table``."""
    if isinstance(vectors, Vectors):
        return vectors.index, vectors.vectors
    # gensim >= 4 KeyedVectors, recognised without importing gensim.
    if hasattr(vectors, "key_to_index") and hasattr(vectors, "vectors"):
        return vectors.key_to_index, np.asarray(vectors.vectors)
    if not isinstance(vectors, Mapping):
        raise TypeError(
            f"vectors must be a Vectors, a gensim KeyedVectors or a mapping, got {type(vectors).__name__}"
        )
    words = list(vectors)
    if not words:
        raise ValueError("vectors is empty: the vector length is unknown")
    arrays = [np.asarray(vectors[w]) for w in words]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(arrays[0].shape) != 1:
        raise ValueError(f"vectors must all be 1-D of one length, got shapes {sorted(shapes)[:3]}")
    table = np.stack(arrays)
    if table.dtype.kind != "f":
        table = table.astype(np.float32)
    return dict(zip(words, range(len(words)))), table
