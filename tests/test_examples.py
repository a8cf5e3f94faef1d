"""The runnable examples, on reduced settings."""
import importlib.util

import numpy as np
import pytest

from fastembed.examples import sentiment

needs_gensim = pytest.mark.skipif(importlib.util.find_spec("gensim") is None,
                                  reason="the sentiment example reads gensim's test data")


@needs_gensim
def test_sentiment_loss_falls_and_accuracy_is_a_fraction(capsys):
    results = sentiment.main(["--folds", "2", "--epochs", "3", "--seed", "1"])
    assert set(results) == {"pretrained", "random"}
    for r in results.values():
        assert r["losses"].shape == (2, 3)
        assert np.all(r["losses"][:, -1] < r["losses"][:, 0] - 0.02)     # falls by more than rounding
        for key in ("accuracy", "train_accuracy"):
            assert r[key].shape == (2,) and np.all((0 <= r[key]) & (r[key] <= 1))
    out = capsys.readouterr().out
    assert "200 snippets (100 positive, 100 negative)" in out and "A classifier that guesses" in out

    again = sentiment.main(["--folds", "2", "--epochs", "3", "--seed", "1"])
    for setting, r in results.items():                   # seeded: the same numbers on a second run
        for key, value in r.items():
            np.testing.assert_array_equal(again[setting][key], value)


@needs_gensim
def test_sentiment_without_pretrained_vectors(capsys):
    results = sentiment.main(["--folds", "2", "--epochs", "2", "--no-pretrained"])
    assert set(results) == {"random"}
    assert "vectors:" not in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--folds", "1"], "--folds must be at least 2, got 1"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    pytest.param(["--folds", "101"], "number of folds must be between 2 and 100 (the smallest class), got 101",
                 marks=needs_gensim),
])
def test_sentiment_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        sentiment.main(argv)
    assert message in str(excinfo.value.code) + capsys.readouterr().err


def test_sentiment_says_what_to_install_without_gensim(monkeypatch):
    monkeypatch.setattr(sentiment.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r'pip install "fastembed-kernels\[examples\]"'):
        sentiment.main([])


def test_read_corpus_decodes_cp1252_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "corpus.cor"
    path.write_bytes(b"__label__pos the clich\xe9s work \x97 somehow .\n__label__neg dull .\n")
    texts, labels = sentiment.read_corpus(path)
    assert texts == ["the clich\u00e9s work \u2014 somehow .", "dull ."]
    assert labels.tolist() == [1, 0]
    path.write_bytes(b"__label__pos fine\n__label__neutral meh\n")
    with pytest.raises(ValueError, match=r"corpus.cor, line 2: expected"):
        sentiment.read_corpus(path)


def test_stratified_folds_balance_the_classes():
    labels = np.array([0] * 10 + [1] * 7, dtype=np.int8)
    fold = sentiment.stratified_folds(labels, 3, np.random.default_rng(0))
    for k in range(3):
        counts = np.bincount(labels[fold == k], minlength=2)
        assert counts[0] in (3, 4) and counts[1] in (2, 3)
    with pytest.raises(ValueError, match=r"between 2 and 7 \(the smallest class\), got 8"):
        sentiment.stratified_folds(labels, 8, np.random.default_rng(0))


def test_adam_matches_the_textbook_update():
    rng = np.random.default_rng(0)
    start, grads = rng.standard_normal(5), rng.standard_normal((4, 5))
    ours = start.copy()
    adam = sentiment.Adam([ours], lr=0.1)
    adam.step([grads[0]])
    # With its bias corrections, Adam's first step moves every parameter by lr against its gradient's sign.
    np.testing.assert_allclose(ours, start - 0.1 * np.sign(grads[0]), atol=1e-4)
    for g in grads[1:]:
        adam.step([g])

    # Kingma & Ba's algorithm 1 with the reordering of their section 2 (bias corrections in the step size,
    # eps added to sqrt(v)), written the textbook way.
    p, m, v = start.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p -= 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + adam.eps)
    np.testing.assert_allclose(ours, p, rtol=1e-12)
