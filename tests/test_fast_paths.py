"""The env's fast paths give exactly what the slow, obvious code gives: the byte-table decoder against the
tokenizer, the batched sentiment scorer against a plain transcription of its rules, the float fast path of
``check_scores`` against its checks, and the batched slot resets against the single env."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest

from textenv.env import TextGenEnv
from textenv.rewards.base import RewardModelError, check_scores
from textenv.setup import byte_level_table
from textenv.tasks import sentiment as S
from textenv.vector import TextGenVectorEnv


def zero_reward(prompts, completions):
    return [0.0] * len(completions)


@pytest.fixture
def make(tiny_tokenizer_dir):
    return lambda **kw: TextGenEnv(tokenizer=str(tiny_tokenizer_dir), reward_model=zero_reward, **kw)


@pytest.fixture
def make_vec(tiny_tokenizer_dir):
    return lambda num_envs=4, **kw: TextGenVectorEnv(num_envs=num_envs, tokenizer=str(tiny_tokenizer_dir),
                                                     reward_model=zero_reward, **kw)


# ------------------------------------------------------------------ decoding through the byte table
def _random_rows(V: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, size=int(rng.integers(0, 30))) for _ in range(n)]


def test_byte_table_decodes_exactly_as_the_tokenizer(tiny_tokenizer):
    backend = tiny_tokenizer.backend_tokenizer
    table = byte_level_table(backend)
    assert table is not None and len(table) == len(tiny_tokenizer)
    assert table[tiny_tokenizer.eos_token_id] == b"" and table[tiny_tokenizer.pad_token_id] == b""
    for row in _random_rows(len(tiny_tokenizer), 3000, seed=1):
        ours = b"".join(table[i] for i in row.tolist()).decode("utf-8", "replace")
        assert ours == tiny_tokenizer.decode(row, skip_special_tokens=True), row


def test_byte_table_keeps_added_tokens_that_are_not_special(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens(["<tag>", "Ünïcode"])  # not special: decoded as their own text
    table = byte_level_table(tok.backend_tokenizer)
    assert table is not None and len(table) == len(tok)
    for row in _random_rows(len(tok), 2000, seed=2):
        row = np.concatenate([row, [len(tok) - 2, len(tok) - 1]])
        ours = b"".join(table[i] for i in row.tolist()).decode("utf-8", "replace")
        assert ours == tok.decode(row, skip_special_tokens=True), row


def test_no_byte_table_for_other_decoders(tiny_tokenizer):
    from tokenizers import decoders

    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    backend.decoder = decoders.WordPiece()
    assert byte_level_table(backend) is None
    backend.decoder = None
    assert byte_level_table(backend) is None


def test_env_decode_block_and_decode_match_the_tokenizer(make_vec):
    envs = make_vec(num_envs=3)
    setup = envs.unwrapped.setup
    rng = np.random.default_rng(3)
    block = rng.integers(0, setup.vocab_size, size=(300, 25))
    lengths = rng.integers(0, 26, size=300)
    expected = [setup.tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(block, lengths)]
    assert setup.decode_block(block, lengths) == expected
    assert [setup.decode(row[:n]) for row, n in zip(block, lengths)] == expected
    assert setup._byte_table is not None  # the fast path was the one taken
    setup._byte_table = None  # the tokenizer's own path gives the same
    assert setup.decode_block(block, lengths) == expected
    assert setup.decode(block[0, :0]) == ""


def test_byte_table_is_shared_per_tokenizer_and_rebuilt_when_it_grows(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    a = TextGenVectorEnv(num_envs=2, tokenizer=tok, reward_model=zero_reward).setup
    b = TextGenVectorEnv(num_envs=2, tokenizer=tok, reward_model=zero_reward).setup
    assert a._table() is b._table() and len(a._table()) == len(tok) + 1
    tok.add_tokens(["<new>"])
    c = TextGenVectorEnv(num_envs=2, tokenizer=tok, reward_model=zero_reward).setup
    assert len(c._table()) == len(tok) + 1
    assert c.decode(np.array([len(tok) - 1])) == tok.decode([len(tok) - 1], skip_special_tokens=True)


# ------------------------------------------------------------------ the batched sentiment scorer
def _reference_polarity(text: str) -> float:
    """The rules of SentimentTask's gold scorer, written the plain way (regex tokens, one if-chain)."""
    tokens = re.findall(r"[a-z]+|[.!?;:,\n]", re.sub(r"n[’']t\b", " not", text.lower()))
    lo, hi = S.MODIFIER_RANGE
    total, seen, segments, negation, modifier, prev = 0.0, {}, [0.0], 1.0, 1.0, ""

    def weigh(segs: list[float]) -> float:
        if len(segs) == 1:
            return segs[0]
        last = len(segs) - 1
        return (sum(x * S.BEFORE_CONTRAST_DECAY ** (last - i) for i, x in enumerate(segs[:-1]))
                + S.AFTER_CONTRAST_WEIGHT * segs[-1])

    for tok in tokens:
        if tok in (".", "!", "?", "\n", ",", ";", ":") or tok in S.CONTRAST:
            negation = modifier = 1.0
            if tok in S.CONTRAST:
                segments.append(0.0)
            elif tok in (".", "!", "?", "\n"):
                total += weigh(segments)
                segments = [0.0]
        elif tok in S.LEXICON:
            if seen.get(tok, 0) < S.MAX_REPEATS:
                segments[-1] += S.LEXICON[tok] * negation * min(max(modifier, lo), hi)
            seen[tok] = seen.get(tok, 0) + 1
            negation = modifier = 1.0
        elif tok in S.NEGATORS:
            negation *= S.NEGATORS[tok]
        elif tok in S.INTENSIFIERS:
            modifier *= S.INTENSIFIERS[tok]
        elif (prev, tok) in S.BIGRAM_INTENSIFIERS:
            modifier = S.BIGRAM_INTENSIFIERS[(prev, tok)]
        else:
            modifier = 1.0
        prev = tok
    return total + weigh(segments)


def _adversarial_texts(n: int, seed: int) -> list[str]:
    """Texts of the scorer's words mixed with case, quotes, separators, control and non-ASCII characters
    (including the two whose lower case is ASCII, U+0130 and the Kelvin sign, and a lone surrogate)."""
    rng = np.random.default_rng(seed)
    pieces = [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,!?;:'’\n\t\r\x00\x01\x0b",
              "\u0130", "\u212a", "é", "É", "\ud800", "\u2028", "\x85", "\xa0", "\ufffd",
              "n't", "N'T", "n’t", "isn't", "a bit", "kind of", "sort of", "but", "however", "İnot", "Kgood",
              *S.LEXICON, *S.INTENSIFIERS, *S.NEGATORS, *(w.upper() for w in list(S.LEXICON)[:20])]
    return ["".join(rng.choice(pieces, size=int(rng.integers(0, 40)))) for _ in range(n)]


def test_batched_polarity_equals_the_plain_rules_on_adversarial_texts():
    texts = _adversarial_texts(6000, seed=0) + ["", "\x00", "not\x00good", "isn\x00't good", "a\x00bit great"]
    expected = [_reference_polarity(t) for t in texts]
    got: list[float] = []
    for k in range(0, len(texts), 37):  # batches of several texts: no state leaks from one to the next
        got += S.review_polarities(texts[k:k + 37])
    assert got == expected
    assert [S.review_polarity(t) for t in texts[:500]] == expected[:500]


def test_batched_polarity_on_the_task_corpus_and_known_answers():
    task = S.SentimentTask()
    texts = [p + r for p, r in task.sft_pairs(500, seed=4)]
    assert S.review_polarities(texts) == [_reference_polarity(t) for t in texts]
    assert S.review_polarities(["The plot was bad, but the acting was great.", "It wasn't GOOD!", "very great",
                                "a bit great", ""]) == [3.5, -1.0, 3.0 * 1.5, 3.0 * 0.5, 0.0]
    assert S.review_polarities([]) == []


# ------------------------------------------------------------------ check_scores' float fast path
def test_check_scores_fast_path_keeps_every_check():
    out = check_scores([0.5, 1.0, -2.0], 3, "demo")
    assert out.dtype == np.float64 and out.tolist() == [0.5, 1.0, -2.0]
    with pytest.raises(RewardModelError, match="non-finite score nan at index 1"):
        check_scores([0.5, math.nan, 1.0], 3, "demo")
    with pytest.raises(RewardModelError, match="non-finite score inf at index 2"):
        check_scores([0.5, 1.0, math.inf], 3, "demo")
    with pytest.raises(RewardModelError, match="returned 2 scores for 3"):
        check_scores([0.5, 1.0], 3, "demo")
    with pytest.raises(RewardModelError, match="non-number"):
        check_scores([0.5, "1.0"], 2, "demo")


# ------------------------------------------------------------------ batched resets
def test_batched_autoresets_draw_what_single_envs_draw(make, make_vec):
    """NEXT_STEP autoresets of many slots at once give every slot the prompt a single env seeded
    ``seed + i`` draws for the same episode, and observations that hold exactly that prompt."""
    N, T = 5, 3
    envs = make_vec(num_envs=N, max_new_tokens=T, terminate_on_eos=False)
    singles = [make(max_new_tokens=T, terminate_on_eos=False) for _ in range(N)]
    obs, info = envs.reset(seed=7)
    for i, env in enumerate(singles):
        env.reset(seed=7 + i)
    action = np.full(N, 5, dtype=np.int64)
    for _episode in range(3):
        for _ in range(T):
            envs.step(action)
        obs, _, _, _, info = envs.step(action)  # the autoreset step
        for i, env in enumerate(singles):
            o, _ = env.reset()
            assert info["prompt"][i] == env.unwrapped._prompt
            np.testing.assert_array_equal(obs["input_ids"][i], o["input_ids"])
            np.testing.assert_array_equal(obs["attention_mask"][i], o["attention_mask"])
