import bz2
import gzip
import os
import warnings

import numpy as np
import pytest

import fastembed.pretrained as pretrained
from fastembed.pretrained import EmbeddingStats, Vectors, embedding_matrix, load_vectors

WORDS = ["the", ",", "café", "über", "of", "a"]
N = len(WORDS)
DIM = 4


def _matrix(n=N, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _open(path, mode):
    if path.endswith(".gz"):
        return gzip.open(path, mode)
    if path.endswith(".bz2"):
        return bz2.open(path, mode)
    return open(path, mode)


def write_text(path, words, m, header=True, trailing="", newline="\n", encoding="utf-8"):
    path = str(path)
    with _open(path, "wb") as f:
        if header:
            f.write(f"{len(words)} {m.shape[1]}{newline}".encode())
        for w, row in zip(words, m):
            nums = " ".join(repr(float(x)) for x in row)
            f.write(f"{w} {nums}{trailing}{newline}".encode(encoding))
    return path


def write_binary(path, words, m, sep=b"\n", encoding="utf-8"):
    path = str(path)
    with _open(path, "wb") as f:
        f.write(f"{len(words)} {m.shape[1]}\n".encode())
        for w, row in zip(words, m):
            f.write(w.encode(encoding) + b" " + row.astype("<f4").tobytes() + sep)
    return path


def check(vec, words, m, dtype=np.float32):
    assert vec.words == list(words)
    assert vec.vectors.dtype == dtype
    assert vec.vectors.shape == (len(words), m.shape[1])
    np.testing.assert_array_equal(vec.vectors, m.astype(dtype))
    assert vec.index == {w: i for i, w in enumerate(words)}
    assert vec.dim == m.shape[1] and len(vec) == len(words)


# --- formats ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
@pytest.mark.parametrize("kind", ["glove", "word2vec", "word2vec-binary"])
@pytest.mark.parametrize("explicit", [False, True])
def test_formats_round_trip(tmp_path, kind, suffix, explicit):
    m = _matrix()
    name = str(tmp_path / ("vectors" + suffix))
    if kind == "word2vec-binary":
        path = write_binary(name, WORDS, m)
    else:
        path = write_text(name, WORDS, m, header=kind == "word2vec")
    vec = load_vectors(path, format=kind if explicit else "auto")
    check(vec, WORDS, m)


def test_word2vec_c_style_trailing_space_and_crlf(tmp_path):
    m = _matrix()
    check(load_vectors(write_text(tmp_path / "a.vec", WORDS, m, trailing=" ")), WORDS, m)
    check(load_vectors(write_text(tmp_path / "b.vec", WORDS, m, newline="\r\n")), WORDS, m)
    check(load_vectors(write_text(tmp_path / "c.txt", WORDS, m, header=False, newline="\r\n")), WORDS, m)


def test_binary_without_separators(tmp_path):
    m = _matrix()
    check(load_vectors(write_binary(tmp_path / "v.bin", WORDS, m, sep=b"")), WORDS, m)


def test_no_final_newline(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 1 2\nb 3 4")
    vec = load_vectors(path)
    assert vec.words == ["a", "b"]
    np.testing.assert_array_equal(vec.vectors, [[1, 2], [3, 4]])


def test_extra_leading_fields_belong_to_the_word(tmp_path):
    path = tmp_path / "v.vec"
    path.write_text("2 3\na 1 2 3\nb 1 2 3 4\n")
    assert load_vectors(path).words == ["a", "b 1"]


def test_glove_words_with_spaces(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 2 3\n. . . 4 5 6\nnew york 7 8 9\nx 1e-3 -2.5 0\n")
    vec = load_vectors(path)
    assert vec.words == ["the", ". . .", "new york", "x"]
    assert vec.dim == 3
    np.testing.assert_array_equal(vec["new york"], [7, 8, 9])
    np.testing.assert_allclose(vec.vectors[3], [1e-3, -2.5, 0])


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("a 1 2\n\n  \nb 3 4\n\n")
    assert load_vectors(path).words == ["a", "b"]


def test_latin1_words(tmp_path):
    m = _matrix()
    path = write_text(tmp_path / "v.vec", WORDS, m, encoding="latin-1")
    check(load_vectors(path, encoding="latin-1"), WORDS, m)
    with pytest.raises(ValueError, match=r"v\.vec, line 4: not valid utf-8"):
        load_vectors(path)
    path = write_binary(tmp_path / "v.bin", WORDS, m, encoding="latin-1")
    check(load_vectors(path, encoding="latin-1"), WORDS, m)
    with pytest.raises(ValueError, match=r"v\.bin, vector 3: word b'caf\\xe9'"):
        load_vectors(path)


def test_dtype_float64_parses_in_double_precision(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 0.1 0.2\nb 1e-300 3\n")
    vec = load_vectors(path, dtype="float64")
    assert vec.vectors.dtype == np.float64
    assert vec.vectors[0, 0] == 0.1 and vec.vectors[1, 0] == 1e-300
    assert load_vectors(path, dtype=np.float16).vectors.dtype == np.float16
    m = _matrix()
    check(load_vectors(write_binary(tmp_path / "v.bin", WORDS, m), dtype="float64"), WORDS, m, np.float64)


@pytest.mark.parametrize("kind", ["glove", "word2vec", "word2vec-binary"])
def test_limit(tmp_path, kind):
    m = _matrix()
    if kind == "word2vec-binary":
        path = write_binary(tmp_path / "v.bin", WORDS, m)
    else:
        path = write_text(tmp_path / "v.txt", WORDS, m, header=kind == "word2vec")
    check(load_vectors(path, limit=3), WORDS[:3], m[:3])
    check(load_vectors(path, limit=0), [], m[:0])
    check(load_vectors(path, limit=100), WORDS, m)


def test_duplicates_keep_first(tmp_path):
    words = ["a", "b", "a", "c", "b"]
    m = _matrix(len(words))
    text = write_text(tmp_path / "v.txt", words, m, header=False)
    for path in (text, write_binary(tmp_path / "v.bin", words, m)):
        with pytest.warns(UserWarning, match="2 duplicate words"):
            vec = load_vectors(path)
        check(vec, ["a", "b", "c"], m[[0, 1, 3]])
        assert vec.duplicates == 2


def test_empty_word2vec_file(tmp_path):
    path = tmp_path / "v.vec"
    path.write_text("0 7\n")
    vec = load_vectors(path)
    assert len(vec) == 0 and vec.dim == 7


# --- small chunks: block boundaries and line numbers ---------------------------


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(pretrained, "_CHUNK", 37)
    monkeypatch.setattr(pretrained, "_PROBE", 50)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_many_small_blocks(tmp_path, tiny_chunks, suffix):
    words = [f"w{i}" for i in range(300)]
    m = _matrix(300, 5)
    check(load_vectors(write_text(tmp_path / ("g.txt" + suffix), words, m, header=False)), words, m)
    check(load_vectors(write_text(tmp_path / ("t.vec" + suffix), words, m)), words, m)
    check(load_vectors(write_binary(tmp_path / ("b.bin" + suffix), words, m)), words, m)
    check(load_vectors(write_binary(tmp_path / ("c.bin" + suffix), words, m, sep=b"")), words, m)
    check(load_vectors(write_text(tmp_path / ("t.vec" + suffix), words, m), limit=123), words[:123], m[:123])


@pytest.mark.parametrize("capacity", [0, 1, 1000])
def test_matrix_grows_and_trims(tmp_path, tiny_chunks, monkeypatch, capacity):
    monkeypatch.setattr(pretrained, "_capacity", lambda *args: capacity)
    words = [f"w{i}" for i in range(300)]
    m = _matrix(300, 5)
    vec = load_vectors(write_text(tmp_path / "g.txt", words, m, header=False))
    check(vec, words, m)
    assert vec.vectors.flags.owndata and vec.vectors.flags.c_contiguous


def test_malformed_line_numbers_across_blocks(tmp_path, tiny_chunks):
    lines = [f"w{i} 1 2 3" for i in range(60)]
    lines[41] = "w41 1 2"
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 42: expected a word and 3 numbers"):
        load_vectors(path)
    lines[41] = "w41 1 x 3"
    path.write_text("60 3\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 43: could not convert string 'x'"):
        load_vectors(path)


def test_malformed_lines(tmp_path):
    path = tmp_path / "bad.vec"
    path.write_text("2 3\na 1 2 3\nb 1 2\n")
    with pytest.raises(ValueError, match=r"bad\.vec, line 3: expected a word and 3 numbers .* 3 fields"):
        load_vectors(path)
    path.write_text("2 3\na 1 2 3\nb 1 2 z\n")
    with pytest.raises(ValueError, match=r"bad\.vec, line 3: could not convert string 'z'"):
        load_vectors(path)
    path.write_text("2 3\na 1 2 3\n 1 2 3\n")
    with pytest.raises(ValueError, match=r"line 3: expected a word and 3 numbers"):
        load_vectors(path)
    path.write_text("a 1 2 3\nb 1  2 3\n")
    with pytest.raises(ValueError, match=r"line 2"):
        load_vectors(path)


def test_file_shorter_than_header(tmp_path):
    m = _matrix()
    path = tmp_path / "v.vec"
    with open(write_text(path, WORDS, m), "r+b") as f:
        f.seek(0)
        f.write(b"7")
    with pytest.raises(ValueError, match="after 6 vectors, but its header declares 7"):
        load_vectors(path)
    path = write_binary(tmp_path / "v.bin", WORDS, m)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5)
    with pytest.raises(ValueError, match="vector 6: truncated record"):
        load_vectors(path)


def test_header_required_for_word2vec(tmp_path):
    path = write_text(tmp_path / "g.txt", WORDS, _matrix(), header=False)
    with pytest.raises(ValueError, match="line 1: expected a 'count dim' header"):
        load_vectors(path, format="word2vec")


def test_bad_arguments(tmp_path):
    path = write_text(tmp_path / "g.txt", WORDS, _matrix(), header=False)
    with pytest.raises(ValueError, match="'xml'"):
        load_vectors(path, format="xml")
    with pytest.raises(ValueError, match="floating"):
        load_vectors(path, dtype="int32")
    with pytest.raises(ValueError, match="limit"):
        load_vectors(path, limit=-1)
    with pytest.raises(TypeError, match="limit"):
        load_vectors(path, limit=2.0)
    with pytest.raises(ValueError, match="ASCII-compatible"):
        load_vectors(path, encoding="utf-16")
    with pytest.raises(FileNotFoundError):
        load_vectors(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="no vectors"):
        load_vectors(empty)


def test_corrupt_gzip(tmp_path):
    path = write_text(tmp_path / "v.txt.gz", WORDS, _matrix())
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 12)
    with pytest.raises(ValueError, match="decompress"):
        load_vectors(path)


def test_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    m = _matrix()
    check(load_vectors(write_text(tmp_path / "v.vec", WORDS, m), progress=True), WORDS, m)
    assert "v.vec" in capsys.readouterr().err


# --- mmap cache -----------------------------------------------------------------


def test_mmap_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    m = _matrix()
    path = write_text(tmp_path / "v.vec", WORDS, m)
    vec = load_vectors(path, mmap=True)
    check(vec, WORDS, m)
    assert isinstance(vec.vectors, np.memmap) and not vec.vectors.flags.writeable
    assert os.path.exists(path + ".npy") and os.path.exists(path + ".words.json")
    assert os.stat(path + ".npy").st_mode == os.stat(path).st_mode  # not private to its owner

    calls = []
    real_load = pretrained._load
    monkeypatch.setattr(pretrained, "_load", lambda *a: calls.append(a) or real_load(*a))
    check(load_vectors(path, mmap=True), WORDS, m)
    assert calls == []  # served from the cache

    m2 = _matrix(seed=1)
    write_text(path, WORDS, m2)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    check(load_vectors(path, mmap=True), WORDS, m2)
    assert len(calls) == 1
    check(load_vectors(path, mmap=True, dtype="float64"), WORDS, m2, np.float64)
    check(load_vectors(path, mmap=True, limit=2), WORDS[:2], m2[:2])
    assert len(calls) == 3


def test_mmap_cache_rebuilt_when_corrupt(tmp_path):
    m = _matrix()
    path = write_binary(tmp_path / "v.bin", WORDS, m)
    load_vectors(path, mmap=True)
    with open(path + ".npy", "wb") as f:
        f.write(b"garbage")
    check(load_vectors(path, mmap=True), WORDS, m)


def test_mmap_cache_unwritable(tmp_path, monkeypatch):
    def refuse(path, write):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(pretrained, "_write_atomically", refuse)
    m = _matrix()
    path = write_text(tmp_path / "v.vec", WORDS, m)
    with pytest.warns(UserWarning, match="cannot write the vector cache"):
        vec = load_vectors(path, mmap=True)
    check(vec, WORDS, m)
    assert not isinstance(vec.vectors, np.memmap)


def test_mmap_empty(tmp_path):
    path = tmp_path / "v.vec"
    path.write_text("0 3\n")
    load_vectors(path, mmap=True)
    assert load_vectors(path, mmap=True).vectors.shape == (0, 3)


# --- Vectors --------------------------------------------------------------------


def test_vectors_api():
    m = _matrix()
    vec = Vectors(WORDS, m)
    assert "café" in vec and "nope" not in vec
    np.testing.assert_array_equal(vec.get("of"), m[4])
    np.testing.assert_array_equal(vec["of"], m[4])
    assert vec.get("nope") is None and vec.get("nope", 0) == 0
    with pytest.raises(KeyError):
        vec["nope"]
    assert list(vec) == WORDS
    assert "6 words, dim=4" in repr(vec)
    with pytest.raises(ValueError, match="duplicate word 'a'"):
        Vectors(["a", "a"], m[:2])
    with pytest.raises(ValueError, match="2 words but 6 vectors"):
        Vectors(["a", "b"], m)
    with pytest.raises(ValueError, match="2-D"):
        Vectors(["a"], m[0])


# --- against gensim's reader, on the files gensim ships ----------------------------


def _gensim_data(name):
    gensim = pytest.importorskip("gensim")
    path = os.path.join(os.path.dirname(gensim.__file__), "test", "data", name)
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", name)
    if not os.path.exists(path):
        pytest.skip(f"gensim test file {name} not installed")
    return path


@pytest.mark.parametrize(
    "name, binary, no_header, encoding",
    [
        ("pang_lee_polarity_fasttext.vec", False, False, "latin-1"),
        ("lee_fasttext.vec", False, False, "utf-8"),
        ("word2vec_pre_kv_c", False, False, "utf-8"),
        ("crime-and-punishment.vec", False, False, "utf-8"),
        ("high_precision.kv.txt", False, False, "utf-8"),
        ("test_glove.txt", False, True, "utf-8"),
        ("euclidean_vectors.bin", True, False, "utf-8"),
        ("high_precision.kv.bin", True, False, "utf-8"),
        ("poincare_vectors.bin", True, False, "utf-8"),
    ],
)
def test_same_as_gensim(name, binary, no_header, encoding):
    path = _gensim_data(name)
    from gensim.models import KeyedVectors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kv = KeyedVectors.load_word2vec_format(path, binary=binary, no_header=no_header, encoding=encoding)
    vec = load_vectors(path, encoding=encoding)
    assert vec.words == list(kv.index_to_key)
    assert vec.vectors.dtype == np.float32
    np.testing.assert_array_equal(vec.vectors, kv.vectors)
    fmt = "glove" if no_header else ("word2vec-binary" if binary else "word2vec")
    assert load_vectors(path, format=fmt, encoding=encoding).words == vec.words


# --- embedding_matrix -------------------------------------------------------------


@pytest.fixture
def small_vectors():
    words = ["the", "cat", "Paris", "dog"]
    return Vectors(words, np.arange(12, dtype=np.float32).reshape(4, 3))


def test_embedding_matrix_hits_and_misses(small_vectors):
    word_index = {"the": 1, "paris": 2, "zebra": 3, "Cat": 4, "dog": 5, "unicorn": 6}
    matrix, stats = embedding_matrix(word_index, small_vectors)
    assert matrix.shape == (7, 3) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], 0)
    np.testing.assert_array_equal(matrix[1], small_vectors["the"])
    np.testing.assert_array_equal(matrix[2], 0)  # "paris" is not "Paris"; only the word is lower-cased
    np.testing.assert_array_equal(matrix[4], small_vectors["cat"])  # via lower case
    np.testing.assert_array_equal(matrix[5], small_vectors["dog"])
    np.testing.assert_array_equal(matrix[[3, 6]], 0)
    assert stats == EmbeddingStats(hits=3, lowercase_hits=1, missing=["paris", "zebra", "unicorn"], skipped=0)
    assert stats.misses == 3 and stats.coverage == 0.5


def test_embedding_matrix_input_dim_skips(small_vectors):
    matrix, stats = embedding_matrix({"the": 1, "cat": 2, "dog": 3, "zebra": 4}, small_vectors, input_dim=3)
    assert matrix.shape == (3, 3)
    assert stats.skipped == 2 and stats.hits == 2 and stats.missing == []
    matrix, stats = embedding_matrix({}, small_vectors)
    assert matrix.shape == (1, 3) and stats.coverage == 0.0


@pytest.mark.parametrize("oov", ["uniform", "normal"])
def test_embedding_matrix_random_oov(oov):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    vec = Vectors(words, (rng.standard_normal((500, 50)) * 2 + 1).astype(np.float32))
    word_index = {w: i + 1 for i, w in enumerate(words)}
    word_index.update({f"oov{i}": 501 + i for i in range(400)})
    matrix, stats = embedding_matrix(word_index, vec, oov=oov, seed=3)
    again, _ = embedding_matrix(word_index, vec, oov=oov, seed=3)
    np.testing.assert_array_equal(matrix, again)
    assert stats.misses == 400
    random_rows = matrix[501:]
    assert abs(random_rows.mean() - vec.vectors.mean()) < 0.05
    assert abs(random_rows.std() - vec.vectors.std()) < 0.05
    np.testing.assert_array_equal(matrix[0], 0)
    np.testing.assert_array_equal(matrix[1:501], vec.vectors)
    if oov == "uniform":
        half = np.sqrt(3) * vec.vectors.std()
        assert random_rows.max() <= vec.vectors.mean() + half + 1e-4
    different, _ = embedding_matrix(word_index, vec, oov=oov, seed=4)
    assert not np.array_equal(different[501:], random_rows)


def test_embedding_matrix_other_inputs(small_vectors):
    as_dict = {w: small_vectors[w].tolist() for w in small_vectors}
    matrix, stats = embedding_matrix({"cat": 1, "dog": 2}, as_dict, dtype="float64")
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix[1:], small_vectors.vectors[[1, 3]])
    gensim = pytest.importorskip("gensim")
    kv = gensim.models.KeyedVectors(3)
    kv.add_vectors(small_vectors.words, small_vectors.vectors)
    matrix, stats = embedding_matrix({"cat": 1, "dog": 2, "x": 3}, kv)
    np.testing.assert_array_equal(matrix[1:3], small_vectors.vectors[[1, 3]])
    assert stats.missing == ["x"]


def test_embedding_matrix_bad_arguments(small_vectors):
    with pytest.raises(ValueError, match="indices must be >= 1"):
        embedding_matrix({"the": 0}, small_vectors)
    with pytest.raises(ValueError, match="'random'"):
        embedding_matrix({"the": 1}, small_vectors, oov="random")
    with pytest.raises(ValueError, match="input_dim"):
        embedding_matrix({"the": 1}, small_vectors, input_dim=0)
    with pytest.raises(ValueError, match="floating"):
        embedding_matrix({"the": 1}, small_vectors, dtype=int)
    with pytest.raises(TypeError, match="word_index"):
        embedding_matrix(["the"], small_vectors)
    with pytest.raises(TypeError, match="vectors"):
        embedding_matrix({"the": 1}, [1, 2])
    with pytest.raises(ValueError, match="one length"):
        embedding_matrix({"the": 1}, {"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="empty"):
        embedding_matrix({"the": 1}, {})
