"""The language-identification example on synthetic languages (no download, a few seconds)."""
import zlib

import numpy as np

from fastembed.examples import langid


def _synthetic_wordlists(rng, alphabets, n_words=300):
    lists = {}
    for name, letters in alphabets.items():
        words = {"".join(rng.choice(list(letters), size=rng.integers(2, 9))) for _ in range(n_words)}
        words = sorted(words)
        lists[name] = (words, rng.uniform(1e-6, 1e-3, size=len(words)))
    return lists


def test_word_features_are_marked_hashed_ngrams():
    expected = ["<ab", "abc", "bc>", "<abc", "abc>", "<abc>", " <abc>"]
    assert langid.word_features("abc") == [zlib.crc32(g.encode()) % langid.NUM_BUCKETS for g in expected]
    assert len(set(langid.word_features("abc"))) == 7        # the word and its 5-gram get different rows


def test_take_gathers_whole_bags():
    bags = langid.encode(["ab", "xyz", "q"], [0, 1, 2], {})
    ids, offsets, labels = bags.take(np.array([2, 0]))
    np.testing.assert_array_equal(ids, np.concatenate([langid.word_features("q"), langid.word_features("ab")]))
    np.testing.assert_array_equal(offsets, [0, len(langid.word_features("q")), ids.shape[0]])
    np.testing.assert_array_equal(labels, [2, 0])


def test_learns_synthetic_languages_and_reports():
    rng = np.random.default_rng(0)
    lists = _synthetic_wordlists(rng, {"aa": "abcdefg", "bb": "efghijk", "cc": "ijklmnop"})
    train, test = langid.make_datasets(lists, 1500, 300, seed=1)
    # Held-out words were never trained on in their language (a word may belong to two languages).
    assert not set(zip(train.words, train.labels.tolist())) & set(zip(test.words, test.labels.tolist()))
    model = langid.LangID(3, dim=16, lr=0.02, n_threads=2)
    rng = np.random.default_rng(2)
    losses = [langid.train_epoch(model.train_step, train, 64, rng) for _ in range(3)]
    assert losses[-1] < losses[0]
    predicted = model.predict(test)
    assert np.mean(predicted == test.labels) > 0.8
    lines = langid.report(["aa", "bb", "cc"], test.labels, predicted)
    assert lines[-1].split()[0] == "overall" and len(lines) == 5
