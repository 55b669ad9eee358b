"""Built-in tasks: prompt sources, splits, gold scorers (known answers and robustness) and corpora."""

from __future__ import annotations

import numpy as np
import pytest

from textenv.tasks import TASKS, ArithmeticTask, KeywordsTask, SentimentTask, Task, get_task
from textenv.tasks.base import split_of
from textenv.tasks.keywords import NOUNS

ALL = sorted(TASKS)
REVIEW = "Review: The acting was"


def _spearman(x: list[float], y: list[float]) -> float:
    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for value in np.unique(a):  # average ranks over ties
            tie = a == value
            r[tie] = r[tie].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _sentiment(completion: str, prompt: str = REVIEW) -> float:
    return SentimentTask().gold_score([prompt], [completion])[0]


# ---------------------------------------------------------------------------- registry
def test_registry_and_get_task() -> None:
    assert {"sentiment", "arithmetic", "keywords", "translation", "summarization", "qa", "detox",
            "dialogue"} <= set(TASKS)
    for name, cls in TASKS.items():
        task = get_task(name)
        assert isinstance(task, cls) and task.name == name
    task = ArithmeticTask(partial_credit=True)
    assert get_task(task) is task
    assert get_task("arithmetic", partial_credit=True).partial_credit


def test_get_task_errors() -> None:
    with pytest.raises(ValueError, match="'nope'.*arithmetic.*keywords.*sentiment"):
        get_task("nope")
    with pytest.raises(ValueError, match="keyword arguments"):
        get_task(SentimentTask(), partial_credit=True)
    with pytest.raises(TypeError):
        get_task(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'\\*'"):
        ArithmeticTask(operations="*")


def test_defaults() -> None:
    assert (SentimentTask.default_max_prompt_tokens, SentimentTask.default_max_new_tokens) == (16, 24)
    assert (ArithmeticTask.default_max_prompt_tokens, ArithmeticTask.default_max_new_tokens) == (8, 4)
    assert (KeywordsTask.default_max_prompt_tokens, KeywordsTask.default_max_new_tokens) == (16, 20)


# ---------------------------------------------------------------------------- prompt source
@pytest.mark.parametrize("name", ALL)
def test_prompts_deterministic_and_splits_disjoint(name: str) -> None:
    task = get_task(name)
    train = task.prompts(2000, "train", seed=1)
    test = task.prompts(500, "test", seed=1)
    assert train == task.prompts(2000, "train", seed=1)
    assert train != task.prompts(2000, "train", seed=2)
    assert train and test and not set(train) & set(test)
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "test" for p in test)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        p = task.generate_prompt(rng_a)
        assert p == task.generate_prompt(rng_b)
        assert task.sample_response(p, rng_a, 0.5) == task.sample_response(p, rng_b, 0.5)


def test_prompt_formats_and_diversity() -> None:
    rng = np.random.default_rng(0)
    reviews = [SentimentTask().generate_prompt(rng) for _ in range(5000)]
    assert len(set(reviews)) >= 1000
    assert all(r.startswith("Review: ") and len(r.split()) <= 14 for r in reviews)
    sums = [ArithmeticTask().generate_prompt(rng) for _ in range(2000)]
    assert len(set(sums)) > 1500
    for p in sums:
        a, b = p[:-1].split("+")
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99 and p.endswith("=")
    for p in (ArithmeticTask(operations="+-").generate_prompt(rng) for _ in range(200)):
        if "-" in p:
            a, b = p[:-1].split("-")
            assert int(a) >= int(b)
    uses = [KeywordsTask().generate_prompt(rng) for _ in range(2000)]
    assert len(set(uses)) > 1900
    for p in uses:
        assert p.startswith("Use: ") and p.endswith(" ->")
        assert len(set(p[5:-3].split(", "))) == 3


# ---------------------------------------------------------------------------- sentiment gold
def test_sentiment_known_answers() -> None:
    neutral = _sentiment(" long.")
    assert neutral == 0.5
    assert _sentiment(" good.") > neutral > _sentiment(" bad.")
    assert _sentiment(" not good.") < 0.5 < _sentiment(" not bad.")
    assert _sentiment(" very good.") > _sentiment(" good.") > _sentiment(" a bit good.") > 0.5
    assert _sentiment(" bad, but great.") > 0.5
    assert _sentiment(" great, but bad.") < 0.5
    assert _sentiment(" great.") == pytest.approx(1 / (1 + np.exp(-1.5)))
    # A contraction negates; negation is scoped to its clause; a prompt's own sentiment counts.
    assert _sentiment(" good.", "Review: The acting wasn't") < 0.5
    assert _sentiment(" not what I expected, and the plot was good.") == _sentiment(" good.")
    mixed = "Review: The plot was awful, but the music"
    assert _sentiment("", mixed) < 0.5 < _sentiment(" was good.", mixed)
    # Repeating a word stops paying after two occurrences.
    assert _sentiment(" great great.") == _sentiment(" great great great great great.")


def test_sentiment_sample_response_shape() -> None:
    task, rng = SentimentTask(), np.random.default_rng(3)
    for _ in range(300):
        prompt = task.sample_prompt(rng)
        response = task.sample_response(prompt, rng, float(rng.uniform()))
        assert response.startswith(" ") and response.endswith(".")
        assert 6 <= len(response.split()) <= 18, response
    assert _sentiment(task.sample_response(REVIEW, rng, 0.0)) < 0.2
    assert _sentiment(task.sample_response(REVIEW, rng, 1.0)) > 0.8


# ---------------------------------------------------------------------------- arithmetic gold
def test_arithmetic_known_answers() -> None:
    exact, partial = ArithmeticTask(), ArithmeticTask(partial_credit=True)
    cases = {"81": 1.0, " 81": 1.0, "81\n": 1.0, "81\nmore text": 1.0, "81  ": 1.0, "71": 0.0, "18": 0.0,
             "81 apples": 0.0, "81.": 0.0, "x81": 0.0, "081": 0.0, "": 0.0, "-81": 0.0}
    for completion, expected in cases.items():
        assert exact.gold_score(["23+58="], [completion]) == [expected], completion
    assert partial.gold_score(["23+58="] * 6, ["81", "71", "82", "18", "181", "81 apples"]) == \
        [1.0, 0.5, 0.5, 0.0, pytest.approx(2 / 3), 0.0]
    assert partial.gold_score(["9+3="], ["2"]) == [0.5]  # "2" vs "12": one of two positions
    assert exact.gold_score(["50-8="], ["42"]) == [1.0]
    assert exact.gold_score(["no problem here"], ["81"]) == [0.0]


def test_arithmetic_sample_response() -> None:
    task, rng = ArithmeticTask(), np.random.default_rng(0)
    assert all(task.sample_response("23+58=", rng, 1.0) == "81" for _ in range(20))
    misses = [task.sample_response("23+58=", rng, 0.0) for _ in range(50)]
    assert all(m.isdigit() and m != "81" and (m == "0" or not m.startswith("0")) for m in misses)


# ---------------------------------------------------------------------------- keywords gold
def test_keywords_known_answers() -> None:
    task, prompt = KeywordsTask(), "Use: river, lamp, quiet ->"

    def gold(completion: str) -> float:
        return task.gold_score([prompt], [completion])[0]

    assert gold(" The quiet river passed the old lamp.") == 1.0
    assert gold(" The Quiet rivers passed a LAMP.") == 1.0  # case-insensitive, "rivers" counts
    assert gold(" The quiet river passed a stone.") == pytest.approx(2 / 3)
    assert gold(" The old man walked home.") == 0.0
    assert gold("The quiet river passed the lamp.") == 1.0  # no leading space needed
    assert gold(" The riverside lamp was quiet.") == pytest.approx(2 / 3)  # whole words only
    ill_formed = [" the quiet river passed the lamp.", " The quiet river passed the lamp",
                  " The quiet river passed the lamp 2.", " Quiet river.", " The quiet river. The lamp.",
                  " The lamp lamp lamp was quiet by the river.", " The quiet river passed the lamp!",
                  " The quiet river lamp " + " ".join(NOUNS[4:21]) + "."]  # 21 words
    for completion in ill_formed:
        assert gold(completion) == 0.0, completion
    assert task.gold_score(["no keywords here"], [" The quiet river passed the lamp."]) == [0.0]


def test_keywords_sample_response() -> None:
    task, rng = KeywordsTask(), np.random.default_rng(0)
    for _ in range(100):
        prompt = task.sample_prompt(rng)
        assert task.gold_score([prompt], [task.sample_response(prompt, rng, 1.0)]) == [1.0]
        assert task.gold_score([prompt], [task.sample_response(prompt, rng, 0.0)]) == [0.0]


# ---------------------------------------------------------------------------- every task
GARBAGE = ["", " ", "\n\n", "!!!", "ééé ünïcödé 🙂 中文", "\x00\x01\ufffd", "123abc" * 50, "-" * 1000,
           "good " * 5000, "9" * 10000, "Use: ->", "1+1=", "The quiet river passed the lamp.",
           "very " * 2000 + "good", "not " * 3000 + "bad", " 2\n2", "−5", "٣"]


@pytest.mark.parametrize("name", ALL)
def test_gold_never_crashes(name: str) -> None:
    task = get_task(name)
    real = task.generate_prompt(np.random.default_rng(0))
    prompts = [real] * len(GARBAGE) + GARBAGE
    completions = GARBAGE + GARBAGE[::-1]
    for t in (task, ArithmeticTask(partial_credit=True)) if name == "arithmetic" else (task,):
        scores = t.gold_score(prompts, completions)
        assert len(scores) == len(prompts)
        assert all(type(s) is float and 0.0 <= s <= 1.0 for s in scores)
    assert task.gold_score([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        task.gold_score([real, real], [""])
    with pytest.raises(ValueError, match="1.5"):
        task.sample_response(real, np.random.default_rng(0), 1.5)


@pytest.mark.parametrize("name", ALL)
def test_quality_correlates_with_gold(name: str) -> None:
    task, rng = get_task(name), np.random.default_rng(0)
    qualities, golds = [], []
    for _ in range(400):
        prompt = task.sample_prompt(rng)
        q = float(rng.uniform())
        qualities.append(q)
        golds.append(task.gold_score([prompt], [task.sample_response(prompt, rng, q)])[0])
    assert _spearman(qualities, golds) > 0.6


@pytest.mark.parametrize("task", [SentimentTask(), ArithmeticTask(), ArithmeticTask(partial_credit=True),
                                  KeywordsTask()], ids=repr)
def test_corpora(task: Task) -> None:
    pairs = task.sft_pairs(20, seed=0)
    assert len(pairs) == 20 and all(isinstance(p, str) and isinstance(r, str) for p, r in pairs)
    assert pairs == task.sft_pairs(20, seed=0)
    docs = task.pretrain_corpus(10, seed=0)
    assert docs == [p + r for p, r in pairs[:10]]
    rows = task.scored_texts(20, seed=0, split="test")
    assert len(rows) == 20 and all(split_of(r["prompt"]) == "test" for r in rows)  # type: ignore[arg-type]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)  # type: ignore[operator]
    prefs = task.preference_pairs(20, seed=0)
    assert len(prefs) == 20 and all(set(r) == {"prompt", "chosen", "rejected"} for r in prefs)
    chosen = task.gold_score([r["prompt"] for r in prefs], [r["chosen"] for r in prefs])
    rejected = task.gold_score([r["prompt"] for r in prefs], [r["rejected"] for r in prefs])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))
