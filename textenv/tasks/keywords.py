"""Keyword-constrained generation: write one well-formed sentence that uses the three given words."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from textenv.tasks.base import Task, check_pairs

NOUNS = ("river", "lamp", "garden", "window", "bridge", "forest", "letter", "candle", "mountain", "violin",
         "basket", "harbor", "castle", "mirror", "ladder", "kettle", "blanket", "lantern", "meadow", "island",
         "engine", "pocket", "feather", "pebble", "tower", "market", "wagon", "compass", "anchor", "orchard",
         "cottage", "barrel", "ribbon", "saddle", "tunnel", "village")
ADJECTIVES = ("quiet", "old", "bright", "tiny", "heavy", "golden", "silent", "gentle", "rusty", "narrow",
              "ancient", "wooden", "broken", "dusty", "frozen", "crooked", "purple", "hollow", "shiny",
              "sleepy", "brave", "clever", "empty", "wild", "soft", "distant", "humble")
#: Transitive verbs in base form: the grammar puts them after a modal ("will carry"), so they are used
#: exactly as the prompt gives them.
VERBS = ("carry", "paint", "follow", "watch", "open", "lift", "find", "hide", "build", "clean", "push",
         "pull", "move", "fix", "hold", "touch", "read", "throw", "catch", "fold", "chase", "guard", "visit",
         "leave", "bring", "shake", "mend")
#: The keyword vocabulary (90 words); a prompt names three distinct ones.
VOCABULARY: tuple[str, ...] = NOUNS + ADJECTIVES + VERBS
_POS: dict[str, str] = {**dict.fromkeys(NOUNS, "n"), **dict.fromkeys(ADJECTIVES, "a"),
                        **dict.fromkeys(VERBS, "v")}

_MODALS = ("will", "can", "could", "would", "must", "might", "should")
_DETERMINERS = ("her", "his", "my", "our", "their", "that", "this", "one")
_PREPOSITIONS = ("near", "under", "beside", "behind", "across", "past", "toward", "inside", "over", "along")
#: Suffixes under which a keyword still counts as used ("river" -> "rivers").
INFLECTIONS = ("", "s", "es", "d", "ed", "ing")

_WORD_RE = re.compile(r"[^\W\d_]+")
_SENTENCE_RE = re.compile(r"[A-Z][A-Za-z ,]*")
_ASCII_WORD_RE = re.compile(r"[A-Za-z]+")
MIN_WORDS, MAX_WORDS, MAX_REPEATS = 3, 20, 2


def parse_keywords(prompt: str) -> list[str]:
    """The keywords of a prompt: lowercased, comma-separated, between the last ``"Use:"`` and ``"->"``.

    Example:
        >>> parse_keywords("Use: river, lamp, quiet ->")
        ['river', 'lamp', 'quiet']
    """
    start = prompt.rfind("Use:")
    if start < 0:
        return []
    end = prompt.find("->", start)
    body = prompt[start + 4: end if end >= 0 else len(prompt)]
    keywords: list[str] = []
    for part in body.split(","):
        kw = " ".join(_WORD_RE.findall(part.lower()))
        if kw and kw not in keywords:
            keywords.append(kw)
    return keywords


def is_well_formed(completion: str) -> bool:
    """Whether ``completion`` is one well-formed sentence (the rule is in :class:`KeywordsTask`)."""
    text = completion.strip()
    if not text.endswith(".") or not _SENTENCE_RE.fullmatch(text[:-1]):
        return False
    words = [w.lower() for w in _ASCII_WORD_RE.findall(text)]
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    return max(Counter(words).values()) <= MAX_REPEATS


def keyword_share(keywords: Sequence[str], completion: str) -> float:
    """Share of ``keywords`` that ``completion`` uses as whole words, case-insensitively, maybe inflected."""
    if not keywords:
        return 0.0
    words = _WORD_RE.findall(completion.lower())
    vocab = set(words)
    joined = f" {' '.join(words)} "
    used = 0
    for kw in keywords:
        if " " in kw:
            used += f" {kw} " in joined
        else:
            used += any(kw + suffix in vocab for suffix in INFLECTIONS)
    return used / len(keywords)


def _noun_phrase(det: str, adjs: list[str], noun: str) -> str:
    return " ".join([det, ", ".join(adjs), noun]) if adjs else f"{det} {noun}"


class KeywordsTask(Task):
    """Write one well-formed sentence that uses the three keywords named in the prompt.

    **Prompts**: ``"Use: river, lamp, quiet ->"``: three distinct words from a 90-word vocabulary of
    nouns, adjectives and transitive verbs in base form (about 700,000 ordered triples).

    **Responses**: one sentence from a small grammar,
    ``" The [adj] noun modal verb[, verb and verb] det [adj] noun [prep the [adj] noun]."``, e.g.
    ``" The quiet river will carry her old lamp."``. ``sample_response`` uses ``k ~ Binomial(3, quality)``
    of the keywords (none at quality 0, all three at quality 1), fills the other slots with non-keyword
    words, and with probability ``0.3 * (1 - quality)`` breaks the sentence (no final period, lowercase
    start, a word said three times, a digit, or a single word).

    **Gold score** = ``share * well_formed``:

    - ``share``: the fraction of the prompt's keywords (parsed from the prompt text: comma-separated,
      lowercased, between the last ``"Use:"`` and the following ``"->"``) that occur in the completion as
      whole words, case-insensitively, either exactly or with one of the suffixes ``s, es, d, ed, ing``
      ("rivers" counts for "river"; irregular forms such as "carried" do not). A prompt with no keywords
      scores 0.0.
    - ``well_formed`` is 1 if the completion, stripped of surrounding whitespace, starts with an ASCII
      capital letter, ends with a single ".", contains otherwise only ASCII letters, spaces and commas, has
      3-20 words, and repeats no word (case-insensitively) more than twice; else 0.

    Example:
        >>> KeywordsTask().gold_score(["Use: river, lamp, quiet ->"], [" The quiet river passed a lamp."])
        [1.0]
    """

    name = "keywords"
    default_max_prompt_tokens = 16
    default_max_new_tokens = 20

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"Use: a, b, c ->"`` with three distinct vocabulary words (one ``rng.random(3)`` draw)."""
        u = rng.random(3)
        n = len(VOCABULARY)
        i = int(u[0] * n)
        j = int(u[1] * (n - 1))
        j += j >= i
        lo, hi = min(i, j), max(i, j)
        k = int(u[2] * (n - 2))
        k += k >= lo
        k += k >= hi
        return f"Use: {VOCABULARY[i]}, {VOCABULARY[j]}, {VOCABULARY[k]} ->"

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """A sentence using ``Binomial(3, quality)`` of the keywords, sometimes ill-formed at low quality."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        keywords = parse_keywords(prompt)
        k = int(rng.binomial(len(keywords), quality)) if keywords else 0
        chosen = [keywords[int(i)] for i in rng.permutation(len(keywords))[:k]] if k else []
        sentence = _sentence(chosen, set(keywords), rng)
        if rng.random() < 0.3 * (1.0 - quality):
            sentence = _break(sentence, rng)
        return " " + sentence

    prompt_column_names = ("keywords",)

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``{"keywords": [...]}``: the keywords each prompt names (see :func:`parse_keywords`).

        Example:
            >>> KeywordsTask().prompt_columns(["Use: river, lamp, quiet ->"])
            {'keywords': [['river', 'lamp', 'quiet']]}
        """
        return {"keywords": [parse_keywords(p) for p in prompts]}

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Share of the prompt's keywords used, times 1 if the sentence is well formed else 0 (see class)."""
        check_pairs(prompts, completions)
        return [keyword_share(parse_keywords(p), c) if is_well_formed(c) else 0.0
                for p, c in zip(prompts, completions, strict=True)]


def _sentence(chosen: list[str], avoid: set[str], rng: np.random.Generator) -> str:
    """One grammatical sentence that places every word of ``chosen`` (unknown words are used as nouns)."""
    nouns = [w for w in chosen if _POS.get(w, "n") == "n"]
    adjs = [w for w in chosen if _POS.get(w) == "a"]
    verbs = [w for w in chosen if _POS.get(w) == "v"]
    used = set(avoid)

    def filler(pool: Sequence[str]) -> str:
        free = [w for w in pool if w not in used]
        w = free[int(rng.random() * len(free))] if free else pool[0]
        used.add(w)
        return w

    n_np = 3 if len(nouns) >= 3 or rng.random() < 0.3 else 2
    while len(nouns) < n_np:
        nouns.insert(int(rng.random() * (len(nouns) + 1)), filler(NOUNS))
    if len(nouns) > n_np:  # only with hand-written prompts of more than three keywords
        nouns = [*nouns[:n_np - 1], " and ".join(nouns[n_np - 1:])]
    slot_adjs: list[list[str]] = [[] for _ in range(n_np)]
    order = rng.permutation(n_np)
    for i, adj in enumerate(adjs):
        slot_adjs[int(order[i % n_np])].append(adj)
    for slot in slot_adjs:
        if not slot and rng.random() < 0.3:
            slot.append(filler(ADJECTIVES))
    if not verbs:
        verbs = [filler(VERBS)]
    verb_group = verbs[0] if len(verbs) == 1 else f"{', '.join(verbs[:-1])} and {verbs[-1]}"
    modal = _MODALS[int(rng.random() * len(_MODALS))]
    det = _DETERMINERS[int(rng.random() * len(_DETERMINERS))]
    words = [_noun_phrase("The", slot_adjs[0], nouns[0]), modal, verb_group,
             _noun_phrase(det, slot_adjs[1], nouns[1])]
    if n_np == 3:
        prep = _PREPOSITIONS[int(rng.random() * len(_PREPOSITIONS))]
        words += [prep, _noun_phrase("the", slot_adjs[2], nouns[2])]
    return " ".join(words) + "."


def _break(sentence: str, rng: np.random.Generator) -> str:
    """An ill-formed variant of a well-formed sentence."""
    kind = int(rng.random() * 5)
    if kind == 0:
        return sentence[:-1]
    if kind == 1:
        return sentence[0].lower() + sentence[1:]
    if kind == 2:
        words = sentence[:-1].split()
        w = words[-1]
        return " ".join([*words, w, w]) + "."
    if kind == 3:
        return sentence[:-1] + " 2."
    return sentence.split()[1].capitalize() + "."
