"""Text preprocessing with Keras semantics: a word tokenizer and ``pad_sequences``.

``Tokenizer`` turns texts into lists of integer word ids ranked by frequency
(index 0 is never assigned, so it can serve as padding), and
``pad_sequences`` packs such ragged lists into the ``(n, maxlen)`` integer
matrix that an ``Embedding`` layer consumes::

    tok = Tokenizer(num_words=20000, oov_token="<unk>")
    tok.fit_on_texts(train_texts)
    x = pad_sequences(tok.texts_to_sequences(train_texts), maxlen=200)

Both follow ``keras.preprocessing.text.Tokenizer`` and
``keras.utils.pad_sequences``: for the same input they give the same ids, the
same arrays and the same JSON (``to_json`` / ``tokenizer_from_json`` read
and write the Keras layout), except where noted in their docstrings.
"""

import itertools
import json
import operator
from collections import OrderedDict, defaultdict

import numpy as np

__all__ = [
    "DEFAULT_FILTERS",
    "Tokenizer",
    "pad_sequences",
    "text_to_word_sequence",
    "tokenizer_from_json",
]

#: Characters removed by default: ASCII punctuation except ``'``, plus tab
#: and newline.
DEFAULT_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


def text_to_word_sequence(text, filters=DEFAULT_FILTERS, lower=True, split=" "):
    """Split ``text`` into a list of words.

    Every character of ``filters`` is replaced by ``split``, the text is
    optionally lower-cased, then split on ``split``; empty pieces are
    dropped.

    >>> text_to_word_sequence("Hello, World!  Hi")
    ['hello', 'world', 'hi']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if lower:
        text = text.lower()
    if filters:
        text = text.translate(str.maketrans(dict.fromkeys(filters, split)))
    return [w for w in text.split(split) if w]


def _check_texts(texts, what):
    # A bare string is iterable too, and would silently be fitted or encoded
    # one character at a time: almost always a forgotten pair of brackets.
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"{what} expects an iterable of texts, got a single "
            f"{type(texts).__name__}; wrap it in a list"
        )


class Tokenizer:
    """Map words to integer ids ranked by frequency (Keras ``Tokenizer``).

    Parameters
    ----------
    num_words : int or None
        If set, sequences keep only ids below ``num_words``, i.e. the
        ``num_words - 1`` most frequent words (counting the oov token).
        Dropped words become the oov token when there is one.  The
        vocabulary itself (``word_index``) always holds every word seen.
        ``0`` means no limit, as in Keras.
    filters : str
        Characters replaced by ``split`` before splitting (ignored when
        ``char_level`` is true or a text is already a list of tokens).
    lower : bool
        Lower-case texts (and pre-split tokens) first.
    split : str
        Word separator.
    char_level : bool
        Treat every character, spaces and punctuation included, as a token.
    oov_token : str or None
        If given, it gets index 1 and replaces words that are unknown or cut
        by ``num_words`` in ``texts_to_sequences``.

    Attributes (after ``fit_on_texts``)
    -----------------------------------
    word_counts : OrderedDict[str, int]
        Occurrences of each word, in order of first appearance.
    word_docs : defaultdict[str, int]
        Number of texts each word occurs in.
    index_docs : defaultdict[int, int]
        ``word_docs`` keyed by word id.
    word_index : dict[str, int]
        Word to id, ids from 1 (the oov token first, if any), then by
        decreasing count, ties broken by first appearance.
    index_word : dict[int, str]
        The inverse of ``word_index``.
    document_count : int
        Number of texts fitted on.

    Differences from Keras: an ``oov_token`` that also occurs in the texts
    keeps index 1 (Keras gives it a second, higher index, leaving 1
    unmapped); a bare string passed where a list of texts is expected
    raises ``TypeError`` instead of being read as one text per character.
    """

    def __init__(
        self,
        num_words=None,
        filters=DEFAULT_FILTERS,
        lower=True,
        split=" ",
        char_level=False,
        oov_token=None,
    ):
        if num_words is not None:
            num_words = operator.index(num_words)
            if num_words < 0:
                raise ValueError(f"num_words must be >= 0 or None, got {num_words}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty str, got {split!r}")
        if not isinstance(filters, str):
            raise TypeError(f"filters must be a str, got {type(filters).__name__}")
        if oov_token is not None and not isinstance(oov_token, str):
            raise TypeError(f"oov_token must be a str or None, got {type(oov_token).__name__}")
        self.num_words = num_words
        self.filters = filters
        self.lower = lower
        self.split = split
        self.char_level = char_level
        self.oov_token = oov_token
        self.document_count = 0
        self.word_counts = OrderedDict()
        self.word_docs = defaultdict(int)
        self.index_docs = defaultdict(int)
        self.word_index = {}
        self.index_word = {}

    def __repr__(self):
        return (
            f"Tokenizer(num_words={self.num_words!r}, words={len(self.word_counts)}, "
            f"documents={self.document_count}, oov_token={self.oov_token!r})"
        )

    def _tokens(self, text):
        if isinstance(text, (list, tuple)):
            return [t.lower() for t in text] if self.lower else list(text)
        if self.char_level:
            if not isinstance(text, str):
                raise TypeError(f"texts must be str or lists of str, got {type(text).__name__}")
            return text.lower() if self.lower else text
        return text_to_word_sequence(text, self.filters, self.lower, self.split)

    def fit_on_texts(self, texts):
        """Count the words of ``texts`` and rebuild ``word_index``.

        ``texts`` is an iterable (a generator is fine) of strings, or of
        lists of tokens that are used as they are (only lower-cased).  Calls
        accumulate: fitting twice counts both corpora.
        """
        _check_texts(texts, "fit_on_texts")
        counts = self.word_counts
        docs = self.word_docs
        for text in texts:
            self.document_count += 1
            seq = self._tokens(text)
            for w in seq:
                counts[w] = counts.get(w, 0) + 1
            # dict.fromkeys rather than set(): same counts, reproducible order.
            for w in dict.fromkeys(seq):
                docs[w] += 1

        # sort() is stable, so equal counts keep their first-seen order.
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        vocab = [] if self.oov_token is None else [self.oov_token]
        vocab.extend(w for w, _ in ranked if w != self.oov_token)
        self.word_index = {w: i for i, w in enumerate(vocab, start=1)}
        self.index_word = {i: w for w, i in self.word_index.items()}
        self.index_docs = defaultdict(int)
        for w, c in docs.items():
            self.index_docs[self.word_index[w]] = c

    def texts_to_sequences_generator(self, texts):
        """Yield one list of word ids per text (see ``texts_to_sequences``)."""
        _check_texts(texts, "texts_to_sequences")
        num_words = self.num_words
        word_index = self.word_index
        oov = word_index.get(self.oov_token) if self.oov_token is not None else None
        for text in texts:
            ids = []
            for w in self._tokens(text):
                i = word_index.get(w)
                if i is None or (num_words and i >= num_words):
                    if oov is not None:
                        ids.append(oov)
                else:
                    ids.append(i)
            yield ids

    def texts_to_sequences(self, texts):
        """Encode each text as a list of word ids.

        Words not in ``word_index``, and words whose id is ``>= num_words``,
        are replaced by the oov token's id, or dropped if there is none.
        Returns a list of lists of ``int``.
        """
        return list(self.texts_to_sequences_generator(texts))

    def sequences_to_texts_generator(self, sequences):
        """Yield one space-joined string per sequence (see ``sequences_to_texts``)."""
        num_words = self.num_words
        index_word = self.index_word
        oov_word = None
        if self.oov_token is not None and self.oov_token in self.word_index:
            oov_word = self.oov_token
        for seq in sequences:
            words = []
            for i in seq:
                w = index_word.get(int(i))
                if w is None or (num_words and i >= num_words):
                    if oov_word is not None:
                        words.append(oov_word)
                else:
                    words.append(w)
            yield " ".join(words)

    def sequences_to_texts(self, sequences):
        """Decode lists of word ids back into space-joined strings.

        Ids with no word (0 included) and ids ``>= num_words`` become the
        oov token, or are dropped if there is none -- as in Keras, padding
        zeros therefore decode to the oov token when one is set.
        """
        return list(self.sequences_to_texts_generator(sequences))

    def get_config(self):
        """The configuration and vocabulary as a dict, in the Keras layout.

        The count and index tables are themselves JSON strings inside the
        dict, as Keras writes them.
        """
        return {
            "num_words": self.num_words,
            "filters": self.filters,
            "lower": self.lower,
            "split": self.split,
            "char_level": self.char_level,
            "oov_token": self.oov_token,
            "document_count": self.document_count,
            "word_counts": json.dumps(self.word_counts),
            "word_docs": json.dumps(self.word_docs),
            "index_docs": json.dumps(self.index_docs),
            "index_word": json.dumps(self.index_word),
            "word_index": json.dumps(self.word_index),
        }

    def to_json(self, **kwargs):
        """Serialise to a JSON string readable by ``tokenizer_from_json``.

        Keyword arguments go to ``json.dumps``.  The layout is Keras's, so
        the string can also be read by ``keras``' own ``tokenizer_from_json``.
        """
        return json.dumps({"class_name": "Tokenizer", "config": self.get_config()}, **kwargs)

    def save(self, path):
        """Write ``to_json()`` to ``path`` (UTF-8)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json(ensure_ascii=False))

    @classmethod
    def load(cls, path):
        """Read a tokenizer written by ``save`` (or by Keras' ``to_json``)."""
        with open(path, encoding="utf-8") as f:
            return tokenizer_from_json(f.read())


_CONFIG_KEYS = {"num_words", "filters", "lower", "split", "char_level", "oov_token"}
_TABLE_KEYS = {"word_counts", "word_docs", "index_docs", "index_word", "word_index"}


def tokenizer_from_json(json_string):
    """Rebuild a ``Tokenizer`` from ``Tokenizer.to_json()`` output.

    Also reads JSON produced by Keras' ``Tokenizer.to_json``.  Raises
    ``ValueError`` if the string is not a tokenizer configuration.
    """
    try:
        data = json.loads(json_string)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a tokenizer JSON string: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError('not a tokenizer JSON string: expected an object with a "config" object')
    if data.get("class_name", "Tokenizer") != "Tokenizer":
        raise ValueError(f"expected class_name 'Tokenizer', got {data['class_name']!r}")
    config = dict(data["config"])
    unknown = set(config) - _CONFIG_KEYS - _TABLE_KEYS - {"document_count"}
    if unknown:
        raise ValueError(f"unknown tokenizer configuration keys: {sorted(unknown)}")

    def table(key):
        # Keras nests each table as a JSON string; accept a plain object too.
        value = config.get(key, "{}")
        return json.loads(value) if isinstance(value, str) else dict(value)

    tok = Tokenizer(**{k: config[k] for k in _CONFIG_KEYS if k in config})
    tok.document_count = int(config.get("document_count", 0))
    tok.word_counts = OrderedDict(table("word_counts"))
    tok.word_docs = defaultdict(int, table("word_docs"))
    # JSON object keys are strings; ids are ints.
    tok.index_docs = defaultdict(int, {int(k): v for k, v in table("index_docs").items()})
    tok.index_word = {int(k): v for k, v in table("index_word").items()}
    tok.word_index = table("word_index")
    return tok


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0):
    """Pad (or cut) sequences to one length; return a ``(n, maxlen)`` array.

    Same result as ``keras.utils.pad_sequences``, computed in bulk: all
    values are gathered in one pass and placed through a boolean mask, with
    no per-element Python work.

    Parameters
    ----------
    sequences : sized iterable of sequences
        A list of lists / tuples / 1-D arrays of numbers (or strings, with
        ``dtype=object`` or a string dtype), or a 2-D array.  Elements may
        themselves be arrays of a common shape ``S``: the result is then
        ``(n, maxlen) + S``.  Empty sequences give rows of pure padding.
    maxlen : int or None
        Output length; ``None`` means the longest sequence (0 if there is
        none).  ``maxlen=0`` gives an ``(n, 0)`` array (Keras fails there).
    dtype : numpy dtype
        Output dtype.  Values are cast as by ``np.asarray(seq, dtype)``
        (floats truncate towards zero into integer dtypes), except that
        values out of an integer dtype's range, and NaN or infinity, raise
        ``ValueError`` instead of wrapping around.
    padding : {"pre", "post"}
        Pad before (``"pre"``) or after each sequence.
    truncating : {"pre", "post"}
        For sequences longer than ``maxlen``, drop values from the start
        (``"pre"``) or the end.
    value : scalar
        Padding value.

    Returns
    -------
    numpy.ndarray of ``dtype``, shape ``(len(sequences), maxlen) + S``.

    Raises
    ------
    ValueError
        Bad ``padding`` / ``truncating`` / ``maxlen``, an element that is
        not a sequence, inconsistent element shapes, a string ``value``
        with a non-string dtype, or values that do not fit ``dtype``.
    """
    if padding not in ("pre", "post"):
        raise ValueError(f'padding must be "pre" or "post", got {padding!r}')
    if truncating not in ("pre", "post"):
        raise ValueError(f'truncating must be "pre" or "post", got {truncating!r}')
    if maxlen is not None:
        try:
            maxlen = operator.index(maxlen)
        except TypeError:
            raise ValueError(f"maxlen must be an int or None, got {maxlen!r}") from None
        if maxlen < 0:
            raise ValueError(f"maxlen must be >= 0, got {maxlen}")
    dtype = np.dtype(dtype)
    if isinstance(value, str) and dtype.kind not in "OUS":
        raise ValueError(
            f"dtype {dtype} cannot hold the string padding value {value!r}; "
            "use dtype=object (or a string dtype) to pad sequences of strings"
        )
    if not hasattr(sequences, "__len__"):
        raise ValueError(
            f"sequences must be a sized iterable such as a list, got {type(sequences).__name__}"
        )

    if isinstance(sequences, np.ndarray) and sequences.ndim >= 2:
        return _pad_array(sequences, maxlen, dtype, padding, truncating, value)

    n = len(sequences)
    try:
        lengths = np.fromiter(map(len, sequences), dtype=np.intp, count=n)
    except TypeError:
        for i, s in enumerate(sequences):
            if not hasattr(s, "__len__"):
                raise ValueError(
                    f"sequences must be a list of sequences; element {i} is not one: {s!r}"
                ) from None
        raise
    if maxlen is None:
        maxlen = int(lengths.max()) if n else 0

    kept = np.minimum(lengths, maxlen)
    total = int(kept.sum())
    if total == 0:
        return np.full((n, maxlen), value, dtype=dtype)
    # Cut long sequences first, so that memory follows the output size
    # rather than the input size.
    if total < lengths.sum():
        pre = truncating == "pre"
        sequences = [
            s if k <= maxlen else (s[k - maxlen:] if pre else s[:maxlen])
            for s, k in zip(sequences, lengths.tolist())
        ]
    flat = _flatten(sequences, total, dtype)
    if dtype.kind in "iu" and flat.dtype.kind in "iuf":
        _check_int_range(flat, dtype)

    # Row-major order of this mask is the order of ``flat``: row i keeps its
    # last (pre) or first (post) kept[i] cells for values.
    cols = np.arange(maxlen)
    if padding == "pre":
        mask = cols >= (maxlen - kept)[:, None]
    else:
        mask = cols < kept[:, None]
    x = np.full((n, maxlen) + flat.shape[1:], value, dtype=dtype)
    x[mask] = flat
    return x


def _flatten(sequences, total, dtype):
    """All values of ``sequences``, in order, as one array of ``total`` rows."""
    first = next(s for s in sequences if len(s))
    via = np.int64 if dtype.kind in "iu" else np.float64 if dtype.kind == "f" else None
    # Lists of numbers: one C-level pass over all values.  np.concatenate
    # would convert each list separately, which costs several times more.
    if via is not None and isinstance(first, (list, tuple)):
        try:
            return np.fromiter(itertools.chain.from_iterable(sequences), dtype=via, count=total)
        except (TypeError, ValueError, OverflowError):
            pass  # nested values, NaN, huge ints...: let numpy infer a dtype
    try:
        return np.concatenate([s for s in sequences if len(s)])
    except ValueError:
        _raise_shape_mismatch(sequences)
        raise


def _pad_array(arr, maxlen, dtype, padding, truncating, value):
    n, length = arr.shape[:2]
    if maxlen is None:
        maxlen = length
    k = min(length, maxlen)
    src = arr[:, length - k:] if truncating == "pre" else arr[:, :k]
    if dtype.kind in "iu" and src.dtype.kind in "iuf":
        _check_int_range(src, dtype)
    x = np.full((n, maxlen) + arr.shape[2:], value, dtype=dtype)
    if padding == "pre":
        x[:, maxlen - k:] = src
    else:
        x[:, :k] = src
    return x


def _check_int_range(values, dtype):
    if values.size == 0:
        return
    info = np.iinfo(dtype)
    lo, hi = values.min(), values.max()
    if values.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"sequences contain NaN or infinity, which dtype {dtype} cannot hold")
    if lo < info.min or hi > info.max:
        bad = lo if lo < info.min else hi
        raise ValueError(
            f"value {bad} is out of range for dtype {dtype} [{info.min}, {info.max}]"
        )


def _raise_shape_mismatch(sequences):
    expected = None
    for i, s in enumerate(sequences):
        if not len(s):
            continue
        try:
            shape = np.shape(s)[1:]
        except ValueError:
            raise ValueError(f"sequence at position {i} is ragged: its elements differ in shape") from None
        if expected is None:
            expected = shape
        elif shape != expected:
            raise ValueError(
                f"shape of elements {shape} of sequence at position {i} differs "
                f"from the shape {expected} of earlier sequences"
            )
