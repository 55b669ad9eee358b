"""textenv.metrics: known answers for each metric, bounds, multiple references and bad input."""

import pytest

from textenv import metrics


def test_squad_normalisation_and_exact_match():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.score("exact_match", "an apple", ["Apple"]) == 1.0
    assert metrics.score("exact_match", "apples", ["apple"]) == 0.0
    assert metrics.score("exact_match", "pear", ["apple", "pear"]) == 1.0


def test_token_f1_known_answer():
    # pred tokens {red, big, dog}, ref {big, dog}: precision 2/3, recall 1, F1 = 0.8
    assert metrics.score("f1", "red big dog", ["big dog"]) == pytest.approx(0.8)
    assert metrics.score("f1", "cat", ["big dog"]) == 0.0
    # the maximum over references
    assert metrics.score("f1", "big dog", ["cat", "big dog"]) == 1.0
    assert metrics.score("f1", "", [""]) == 1.0
    assert metrics.score("f1", "the", ["dog"]) == 0.0  # "the" normalises to nothing


def test_sacrebleu_metrics_match_the_library():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyp, refs = "the cat sat on a mat", ["the cat sat on the mat"]
    want_chrf = sacrebleu.metrics.CHRF().sentence_score(hyp, refs).score / 100
    want_bleu = sacrebleu.metrics.BLEU(effective_order=True).sentence_score(hyp, refs).score / 100
    assert metrics.score("chrf", hyp, refs) == pytest.approx(want_chrf)
    assert metrics.score("bleu", hyp, refs) == pytest.approx(want_bleu)
    assert metrics.score("chrf", refs[0], refs) == pytest.approx(1.0)
    assert 0.0 < metrics.score("bleu", hyp, refs) < 1.0


def test_rouge_known_answer():
    pytest.importorskip("rouge_score")
    # ROUGE-1: 2 of 3 predicted unigrams match the 4-word reference: P=2/3, R=1/2, F=4/7
    assert metrics.score("rouge1", "cat dog fish", ["cat dog bird cow"]) == pytest.approx(4 / 7)
    assert metrics.score("rougeL", "a b c d", ["a b c d"]) == pytest.approx(1.0)
    assert metrics.score("rouge2", "a b", ["c d"]) == 0.0
    assert metrics.corpus_scores("rougeL", ["x y", "z"], [["x y"], "q"]) == [pytest.approx(1.0), 0.0]


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="'bleurt'"):
        metrics.get_metric("bleurt")
    with pytest.raises(ValueError, match=r"\[\]"):
        metrics.score("f1", "x", [])
    with pytest.raises(ValueError, match="2 completions but 1"):
        metrics.corpus_scores("f1", ["a", "b"], [["a"]])
