import json
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastembed.text import Tokenizer, pad_sequences, text_to_word_sequence, tokenizer_from_json

TWO = ["This is a text", "This is not a text"]
CATS = ["The cat sat on the mat.", "The dog sat on the log.", "Dogs and cats living together."]
KNOWN = ["This text has only known words this text"]
UNKNOWN = ["This text has some unknown words"]


# --- text_to_word_sequence ---------------------------------------------------


def test_text_to_word_sequence_filters_and_lowers():
    assert text_to_word_sequence("hello! ? world!") == ["hello", "world"]
    assert text_to_word_sequence("Hello World", lower=False) == ["Hello", "World"]


def test_text_to_word_sequence_multichar_split_and_unicode():
    assert text_to_word_sequence("hello!stop?world!", split="stop") == ["hello", "world"]
    assert text_to_word_sequence("ali! veli? kırk dokuz") == ["ali", "veli", "kırk", "dokuz"]


# --- Tokenizer ---------------------------------------------------------------


def test_two_sentence_example():
    tok = Tokenizer()
    tok.fit_on_texts(TWO)
    # Equal counts keep first-appearance order; "not" (1 occurrence) comes last.
    assert tok.word_index == {"this": 1, "is": 2, "a": 3, "text": 4, "not": 5}
    assert tok.index_word == {1: "this", 2: "is", 3: "a", 4: "text", 5: "not"}
    seqs = tok.texts_to_sequences(TWO)
    assert seqs == [[1, 2, 3, 4], [1, 2, 5, 3, 4]]
    x = pad_sequences(seqs, maxlen=6)
    assert x.dtype == np.int32
    np.testing.assert_array_equal(x, [[0, 0, 1, 2, 3, 4], [0, 1, 2, 5, 3, 4]])
    assert tok.document_count == 2
    assert tok.word_counts == OrderedDict([("this", 2), ("is", 2), ("a", 2), ("text", 2), ("not", 1)])
    assert tok.word_docs == {"this": 2, "is": 2, "a": 2, "text": 2, "not": 1}
    assert tok.index_docs == {1: 2, 2: 2, 3: 2, 4: 2, 5: 1}


def test_ranking_by_count_then_first_appearance():
    tok = Tokenizer()
    tok.fit_on_texts(CATS)
    assert list(tok.word_index.items()) == [
        ("the", 1), ("sat", 2), ("on", 3), ("cat", 4), ("mat", 5), ("dog", 6),
        ("log", 7), ("dogs", 8), ("and", 9), ("cats", 10), ("living", 11), ("together", 12),
    ]


def test_num_words_keeps_only_ids_below_it():
    tok = Tokenizer(num_words=4)
    tok.fit_on_texts(CATS)
    assert len(tok.word_index) == 12  # the vocabulary itself is complete
    assert tok.texts_to_sequences(CATS) == [[1, 2, 3, 1], [1, 2, 3, 1], []]
    assert tok.sequences_to_texts([[1, 2, 3, 4, 11]]) == ["the sat on"]


def test_num_words_zero_means_no_limit():
    tok = Tokenizer(num_words=0)
    tok.fit_on_texts(CATS)
    assert tok.texts_to_sequences(["living together"]) == [[11, 12]]


def test_oov_token_replaces_unknown_words():
    tok = Tokenizer()
    tok.fit_on_texts(KNOWN)
    assert len(tok.texts_to_sequences(UNKNOWN)[0]) == 4
    tok = Tokenizer(oov_token="<unk>")
    tok.fit_on_texts(KNOWN)
    assert tok.word_index["<unk>"] == 1
    assert tok.texts_to_sequences(UNKNOWN) == [[2, 3, 4, 1, 1, 7]]
    assert tok.sequences_to_texts(tok.texts_to_sequences(UNKNOWN)) == ["this text has <unk> <unk> words"]


def test_oov_token_with_num_words():
    tok = Tokenizer(num_words=3, oov_token="<unk>")
    tok.fit_on_texts(KNOWN)
    seq = tok.texts_to_sequences(UNKNOWN)
    assert " ".join(tok.index_word[i] for i in seq[0]) == "this <unk> <unk> <unk> <unk> <unk>"
    assert tok.sequences_to_texts(seq) == ["this <unk> <unk> <unk> <unk> <unk>"]


def test_sequences_to_texts_variants():
    tok = Tokenizer(num_words=3)
    tok.fit_on_texts(KNOWN)
    assert tok.sequences_to_texts(tok.texts_to_sequences(UNKNOWN)) == ["this text"]
    tok = Tokenizer()
    tok.fit_on_texts(KNOWN)
    assert tok.sequences_to_texts(tok.texts_to_sequences(UNKNOWN)) == ["this text has words"]
    tok = Tokenizer(num_words=10, oov_token="<unk>")
    tok.fit_on_texts(CATS)
    assert tok.sequences_to_texts(tok.texts_to_sequences(CATS)) == [
        "the cat sat on the mat", "the dog sat on the log", "dogs <unk> <unk> <unk> <unk>",
    ]


def test_sequences_to_texts_padding_decodes_to_oov_like_keras():
    tok = Tokenizer(oov_token="<unk>")
    tok.fit_on_texts(TWO)
    assert tok.sequences_to_texts(np.array([[0, 2, 3]])) == ["<unk> this is"]
    tok = Tokenizer()
    tok.fit_on_texts(TWO)
    assert tok.sequences_to_texts([[0, 1, 99]]) == ["this"]


def test_oov_token_present_in_texts_keeps_index_one():
    tok = Tokenizer(oov_token="unk")
    tok.fit_on_texts(["unk unk a", "b"])
    assert tok.word_index == {"unk": 1, "a": 2, "b": 3}
    assert tok.index_word[1] == "unk"


def test_generators():
    tok = Tokenizer()
    tok.fit_on_texts(t for t in TWO)
    assert list(tok.texts_to_sequences_generator(iter(TWO))) == [[1, 2, 3, 4], [1, 2, 5, 3, 4]]
    assert list(tok.sequences_to_texts_generator([[5, 1]])) == ["not this"]


def test_lower_flag_and_pretokenised_lists():
    tok = Tokenizer(lower=True)
    tok.fit_on_texts(["The cat sat on the mat.", "The dog sat on the log.", "Dog and Cat living Together."])
    assert tok.word_counts == OrderedDict([
        ("the", 4), ("cat", 2), ("sat", 2), ("on", 2), ("mat", 1), ("dog", 2),
        ("log", 1), ("and", 1), ("living", 1), ("together", 1),
    ])
    tok = Tokenizer(lower=True)
    tok.fit_on_texts([["The", "cat", "is", "sitting"], ["The", "dog", "is", "standing"]])
    assert tok.word_counts == OrderedDict([
        ("the", 2), ("cat", 1), ("is", 2), ("sitting", 1), ("dog", 1), ("standing", 1),
    ])
    assert tok.texts_to_sequences([["THE", "Dog", "x"]]) == [[1, 5]]


def test_lower_false_keeps_case():
    tok = Tokenizer(lower=False)
    tok.fit_on_texts(["The the THE"])
    assert tok.word_index == {"The": 1, "the": 2, "THE": 3}


def test_char_level_counts_every_character():
    tok = Tokenizer(lower=True, char_level=True)
    tok.fit_on_texts(["The cat sat on the mat.", "The dog sat on the log.", "Dog and Cat living Together."])
    assert tok.word_counts == OrderedDict([
        ("t", 11), ("h", 5), ("e", 6), (" ", 14), ("c", 2), ("a", 6), ("s", 2), ("o", 6),
        ("n", 4), ("m", 1), (".", 3), ("d", 3), ("g", 5), ("l", 2), ("i", 2), ("v", 1), ("r", 1),
    ])
    ids = tok.word_index
    assert tok.texts_to_sequences(["tea"]) == [[ids["t"], ids["e"], ids["a"]]]


def test_filters():
    tok = Tokenizer(filters="")
    tok.fit_on_texts(["hi, there!"])
    assert tok.word_index == {"hi,": 1, "there!": 2}
    tok = Tokenizer(filters="x")
    tok.fit_on_texts(["axb"])
    assert tok.word_index == {"a": 1, "b": 2}


def test_custom_split():
    tok = Tokenizer(split="|")
    tok.fit_on_texts(["new york|paris|new york"])
    assert tok.word_index == {"new york": 1, "paris": 2}


def test_fitting_twice_accumulates():
    tok = Tokenizer()
    tok.fit_on_texts(CATS)
    tok.fit_on_texts([["The", "cat", "is", "sitting"], ["The", "dog", "is", "standing"]])
    assert tok.document_count == 5
    assert tok.word_counts["the"] == 6
    assert tok.word_docs["the"] == 4
    assert tok.word_index["the"] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_words"):
        Tokenizer(num_words=-1)
    with pytest.raises(TypeError):
        Tokenizer(num_words=2.5)
    with pytest.raises(ValueError, match="split"):
        Tokenizer(split="")
    with pytest.raises(TypeError, match="oov_token"):
        Tokenizer(oov_token=1)
    tok = Tokenizer()
    with pytest.raises(TypeError, match="single str"):
        tok.fit_on_texts("a text")
    with pytest.raises(TypeError, match="single str"):
        tok.texts_to_sequences("a text")
    with pytest.raises(TypeError):
        tok.fit_on_texts([3])


def test_unfitted_tokenizer_encodes_nothing():
    assert Tokenizer(oov_token="<unk>").texts_to_sequences(["a b"]) == [[]]


# --- JSON ---------------------------------------------------------------------


def _same(a, b):
    for attr in ("num_words", "filters", "lower", "split", "char_level", "oov_token", "document_count",
                 "word_counts", "word_docs", "index_docs", "word_index", "index_word"):
        assert getattr(a, attr) == getattr(b, attr), attr


def test_json_round_trip():
    tok = Tokenizer(num_words=5, oov_token="<unk>", filters="!", lower=False, split=" ")
    tok.fit_on_texts(CATS)
    back = tokenizer_from_json(tok.to_json())
    _same(tok, back)
    assert isinstance(back.word_counts, OrderedDict)
    assert back.texts_to_sequences(CATS) == tok.texts_to_sequences(CATS)
    back.fit_on_texts(["more text"])  # still a working, updatable tokenizer
    assert back.document_count == 4


def test_json_round_trip_unfitted():
    tok = Tokenizer(num_words=100)
    _same(tok, tokenizer_from_json(tok.to_json()))


def test_json_layout_is_keras():
    tok = Tokenizer()
    tok.fit_on_texts(["b a b"])
    data = json.loads(tok.to_json())
    assert data["class_name"] == "Tokenizer"
    config = data["config"]
    assert json.loads(config["word_index"]) == {"b": 1, "a": 2}
    assert json.loads(config["index_word"]) == {"1": "b", "2": "a"}
    assert config["document_count"] == 1


def test_reads_keras_json():
    keras_json = json.dumps({
        "class_name": "Tokenizer",
        "config": {
            "num_words": None, "filters": "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n", "lower": True,
            "split": " ", "char_level": False, "oov_token": None, "document_count": 2,
            "word_counts": '{"this": 2, "is": 2, "a": 2, "text": 2, "not": 1}',
            "word_docs": '{"is": 2, "text": 2, "this": 2, "a": 2, "not": 1}',
            "index_docs": '{"2": 2, "4": 2, "1": 2, "3": 2, "5": 1}',
            "index_word": '{"1": "this", "2": "is", "3": "a", "4": "text", "5": "not"}',
            "word_index": '{"this": 1, "is": 2, "a": 3, "text": 4, "not": 5}',
        },
    })
    tok = tokenizer_from_json(keras_json)
    assert tok.texts_to_sequences(["This is not a text"]) == [[1, 2, 5, 3, 4]]
    assert tok.index_docs[5] == 1
    assert tok.document_count == 2


def test_save_and_load(tmp_path):
    tok = Tokenizer(oov_token="<unk>")
    tok.fit_on_texts(["ünïcödé words", "words"])
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(path)
    _same(tok, back)


def test_bad_json():
    with pytest.raises(ValueError, match="not a tokenizer"):
        tokenizer_from_json("{nope")
    with pytest.raises(ValueError, match="config"):
        tokenizer_from_json("[]")
    with pytest.raises(ValueError, match="class_name"):
        tokenizer_from_json('{"class_name": "Other", "config": {}}')
    with pytest.raises(ValueError, match="bogus"):
        tokenizer_from_json('{"config": {"bogus": 1}}')


# --- pad_sequences ------------------------------------------------------------

ABC = [[1], [1, 2], [1, 2, 3]]


def test_pad_keras_doc_examples():
    seqs = [[1], [2, 3], [4, 5, 6]]
    np.testing.assert_array_equal(pad_sequences(seqs), [[0, 0, 1], [0, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(pad_sequences(seqs, value=-1), [[-1, -1, 1], [-1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(pad_sequences(seqs, padding="post"), [[1, 0, 0], [2, 3, 0], [4, 5, 6]])
    np.testing.assert_array_equal(pad_sequences(seqs, maxlen=2), [[0, 1], [2, 3], [5, 6]])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(maxlen=3, padding="pre"), [[0, 0, 1], [0, 1, 2], [1, 2, 3]]),
        (dict(maxlen=3, padding="post"), [[1, 0, 0], [1, 2, 0], [1, 2, 3]]),
        (dict(maxlen=2, truncating="pre"), [[0, 1], [1, 2], [2, 3]]),
        (dict(maxlen=2, truncating="post"), [[0, 1], [1, 2], [1, 2]]),
        (dict(maxlen=2, truncating="post", padding="post"), [[1, 0], [1, 2], [1, 2]]),
        (dict(maxlen=3, value=1), [[1, 1, 1], [1, 1, 2], [1, 2, 3]]),
        (dict(maxlen=5), [[0, 0, 0, 0, 1], [0, 0, 0, 1, 2], [0, 0, 1, 2, 3]]),
        (dict(), [[0, 0, 1], [0, 1, 2], [1, 2, 3]]),
    ],
)
def test_pad_keras_cases(kwargs, expected):
    x = pad_sequences(ABC, **kwargs)
    assert x.dtype == np.int32
    np.testing.assert_array_equal(x, expected)


def test_pad_vector_elements():
    a = [[[1, 1]], [[2, 1], [2, 2]], [[3, 1], [3, 2], [3, 3]]]
    np.testing.assert_array_equal(
        pad_sequences(a, maxlen=3, padding="post"),
        [[[1, 1], [0, 0], [0, 0]], [[2, 1], [2, 2], [0, 0]], [[3, 1], [3, 2], [3, 3]]],
    )
    np.testing.assert_array_equal(
        pad_sequences(a, maxlen=2, truncating="post"),
        [[[0, 0], [1, 1]], [[2, 1], [2, 2]], [[3, 1], [3, 2]]],
    )
    with pytest.raises(ValueError, match="position 1"):
        pad_sequences([[[1, 1]], [[2, 1, 0]]])


def test_pad_strings():
    a = [["1"], ["1", "2"], ["1", "2", "3"]]
    np.testing.assert_array_equal(
        pad_sequences(a, maxlen=3, value="pad", dtype=object),
        [["pad", "pad", "1"], ["pad", "1", "2"], ["1", "2", "3"]],
    )
    np.testing.assert_array_equal(
        pad_sequences(a, maxlen=2, truncating="post", padding="post", value="pad", dtype="<U3"),
        [["1", "pad"], ["1", "2"], ["1", "2"]],
    )
    with pytest.raises(ValueError, match="dtype=object"):
        pad_sequences(a, value="pad")


def test_pad_empty_sequences():
    np.testing.assert_array_equal(pad_sequences([[], [1, 2], []]), [[0, 0], [1, 2], [0, 0]])
    np.testing.assert_array_equal(pad_sequences([[], []], maxlen=3, value=7), [[7, 7, 7], [7, 7, 7]])
    assert pad_sequences([[], []]).shape == (2, 0)
    assert pad_sequences([]).shape == (0, 0)
    assert pad_sequences([], maxlen=4).shape == (0, 4)
    assert pad_sequences([[1, 2]], maxlen=0).shape == (1, 0)


def test_pad_dtypes_and_casting():
    x = pad_sequences([[0.5, 1.5]], maxlen=3, dtype="float32", value=-1.0)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, [[-1.0, 0.5, 1.5]])
    # Floats truncate towards zero into integer dtypes, like np.asarray(..., int32).
    np.testing.assert_array_equal(pad_sequences([[1.7, -1.7], [2]]), [[1, -1], [0, 2]])
    assert pad_sequences(ABC, dtype="int64").dtype == np.int64
    assert pad_sequences([np.array([1, 2], np.uint8), (3,)], dtype=np.int16).tolist() == [[1, 2], [0, 3]]


def test_pad_mixed_containers():
    seqs = [(1, 2), np.array([3, 4, 5]), [], [6.0]]
    np.testing.assert_array_equal(pad_sequences(seqs), [[0, 1, 2], [3, 4, 5], [0, 0, 0], [0, 0, 6]])
    x = pad_sequences([[0.25, 1], (2,)], dtype="float64", padding="post")
    assert x.dtype == np.float64 and x.tolist() == [[0.25, 1.0], [2.0, 0.0]]


def test_pad_numpy_inputs():
    arr = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(pad_sequences(arr, maxlen=3), arr[:, 1:])
    np.testing.assert_array_equal(pad_sequences(arr, maxlen=3, truncating="post"), arr[:, :3])
    np.testing.assert_array_equal(pad_sequences(arr, maxlen=5, padding="post")[:, :4], arr)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = [1], [2, 3]
    np.testing.assert_array_equal(pad_sequences(ragged), [[0, 1], [2, 3]])


def test_pad_values_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        pad_sequences([[2**31]])
    with pytest.raises(ValueError, match="out of range"):
        pad_sequences([[-1]], dtype="uint8")
    with pytest.raises(ValueError, match="NaN"):
        pad_sequences([[float("nan")]])
    with pytest.raises(ValueError, match="out of range"):
        pad_sequences(np.array([[300]]), dtype="uint8")


def test_pad_bad_arguments():
    with pytest.raises(ValueError, match="'middle'"):
        pad_sequences(ABC, padding="middle")
    with pytest.raises(ValueError, match="'both'"):
        pad_sequences(ABC, truncating="both")
    with pytest.raises(ValueError, match="maxlen"):
        pad_sequences(ABC, maxlen=-1)
    with pytest.raises(ValueError, match="maxlen"):
        pad_sequences(ABC, maxlen=2.5)
    with pytest.raises(ValueError, match="element 1"):
        pad_sequences([[1], 5])
    with pytest.raises(ValueError, match="sized iterable"):
        pad_sequences(iter(ABC))


def _naive_pad(seqs, maxlen, padding, truncating, value):
    if maxlen is None:
        maxlen = max((len(s) for s in seqs), default=0)
    out = []
    for s in seqs:
        s = list(s)
        if len(s) > maxlen:
            s = s[len(s) - maxlen:] if truncating == "pre" else s[:maxlen]
        pad = [value] * (maxlen - len(s))
        out.append(pad + s if padding == "pre" else s + pad)
    return out


@settings(max_examples=150, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12), max_size=8),
    maxlen=st.none() | st.integers(0, 10),
    padding=st.sampled_from(["pre", "post"]),
    truncating=st.sampled_from(["pre", "post"]),
    value=st.integers(-5, 5),
)
def test_pad_matches_naive(seqs, maxlen, padding, truncating, value):
    x = pad_sequences(seqs, maxlen=maxlen, padding=padding, truncating=truncating, value=value)
    expected = _naive_pad(seqs, maxlen, padding, truncating, value)
    assert x.dtype == np.int32
    assert x.shape == (len(seqs), len(expected[0]) if expected else (maxlen or 0))
    assert x.tolist() == expected
