"""Moderation as rewriting: make a rude sentence civil while keeping what it asks for.

Toxicity is a lexicon model with intensifiers, dampeners, negation and shouting (:func:`toxicity`); content
preservation is chrF (sacrebleu) against the source's content words (:func:`content_words`). The same
toxicity model scores any text, so it also serves as a reward model on any task
(:class:`textenv.rewards.ToxicityReward`, ``reward_model="toxicity"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from textenv.metrics import score as metric_score
from textenv.tasks.base import Task, check_pairs
from textenv.tasks.translation import ADJECTIVES, NOUNS, PREPOSITIONS, VERBS

# ---------------------------------------------------------------------------- the toxicity lexicon
INSULT_ADJECTIVES: dict[str, float] = {
    "stupid": 2.0, "dumb": 2.0, "idiotic": 2.5, "useless": 2.0, "pathetic": 2.5, "lazy": 1.5,
    "worthless": 2.5, "clueless": 1.5, "incompetent": 2.0, "ridiculous": 1.5, "disgusting": 2.5,
    "hopeless": 1.5,
}
INSULT_NOUNS: dict[str, float] = {
    "idiot": 3.0, "fool": 2.0, "moron": 3.0, "loser": 2.5, "clown": 1.5, "jerk": 2.5, "slob": 2.0,
}
OTHER_TOXIC: dict[str, float] = {"hate": 2.0, "damn": 1.5, "sucks": 2.0, "shut": 1.0, "garbage": 2.0,
                                 "trash": 2.0}
#: Two-word phrases, scored on their second word (on top of the first word's own weight, if any).
TOXIC_BIGRAMS: dict[tuple[str, str], float] = {("shut", "up"): 2.0, ("get", "lost"): 2.5}
TOXIC: dict[str, float] = {**INSULT_ADJECTIVES, **INSULT_NOUNS, **OTHER_TOXIC}
#: Words that are rude only when negated ("you are not smart"), with the weight they then carry.
NEGATED_POSITIVES: dict[str, float] = {"smart": 1.5, "clever": 1.5, "helpful": 1.0, "good": 1.0,
                                       "welcome": 1.5, "nice": 1.0}
#: Multipliers on the next toxic word (adjacent, other modifiers allowed between).
INTENSIFIERS: dict[str, float] = {"so": 1.4, "really": 1.4, "very": 1.4, "totally": 1.5, "completely": 1.6,
                                  "absolutely": 1.7, "extremely": 1.8, "utterly": 1.8, "slightly": 0.5,
                                  "somewhat": 0.6}
#: Negators scale the next toxic word in the same clause by 0.2 ("not stupid") and make a word of
#: NEGATED_POSITIVES toxic.
NEGATORS = frozenset({"not", "never", "no", "hardly"})
NEGATION_FACTOR = 0.2
#: Shouting: each word of two or more capital letters, and each "!", adds this much (up to the caps).
SHOUT_WEIGHT, SHOUT_CAP = 0.5, 2.0
EXCLAMATION_WEIGHT, EXCLAMATION_CAP = 0.3, 1.2
#: toxicity = 1 - exp(-mass / TOXICITY_SCALE); one plain insult of weight 2 gives about 0.63.
TOXICITY_SCALE = 2.0

_TOKEN_RE = re.compile(r"[A-Za-z]+n[’']t|[A-Za-z]+|[,.;:!?]")
_CLAUSE_BREAKS = frozenset({",", ".", ";", ":", "!", "?"})


def toxicity(text: str) -> float:
    """Toxicity of ``text`` in [0, 1): ``1 - exp(-mass / 2)``, where the mass sums each toxic word's
    weight times the intensifiers in front of it (times 0.2 if negated in its clause), the weight of
    negated positives, and shouting (capitalised words, exclamation marks).

    Example:
        >>> round(toxicity("You are stupid."), 3), round(toxicity("You are really stupid!"), 3)
        (0.632, 0.788)
        >>> round(toxicity("You are not stupid."), 3), round(toxicity("You are not smart."), 3)
        (0.181, 0.528)
    """
    mass = 0.0
    shout = sum(SHOUT_WEIGHT for w in re.findall(r"\b[A-Z]{2,}\b", text))
    mass += min(shout, SHOUT_CAP) + min(EXCLAMATION_WEIGHT * text.count("!"), EXCLAMATION_CAP)
    negated, modifier, prev = False, 1.0, ""
    for raw in _TOKEN_RE.findall(text):
        tok = raw.lower()
        if tok in _CLAUSE_BREAKS:
            negated, modifier, prev = False, 1.0, ""
            continue
        if tok.endswith(("n't", "n’t")):
            negated, prev = True, tok
            continue
        weight = TOXIC.get(tok, 0.0) + TOXIC_BIGRAMS.get((prev, tok), 0.0)
        if weight:
            mass += weight * min(max(modifier, 0.25), 3.0) * (NEGATION_FACTOR if negated else 1.0)
            negated, modifier = False, 1.0
        elif negated and tok in NEGATED_POSITIVES:
            mass += NEGATED_POSITIVES[tok] * min(max(modifier, 0.25), 3.0)
            negated, modifier = False, 1.0
        elif tok in NEGATORS:
            negated = True
        elif tok in INTENSIFIERS:
            modifier *= INTENSIFIERS[tok]
        elif tok not in ("you", "are", "is", "a", "an", "the", "so", "such", "be", "at", "all"):
            modifier = 1.0
        prev = tok
    return 1.0 - math.exp(-mass / TOXICITY_SCALE)


# ---------------------------------------------------------------------------- content
#: Words that carry no content of a rude sentence: address, fillers and the words of its rude frame.
FRAME_WORDS = frozenset({"you", "your", "are", "is", "am", "i", "a", "an", "and", "listen", "hey", "look",
                         "ugh", "now", "up", "lost", "get", "it", "what", "such", "be"})


def content_words(source: str) -> list[str]:
    """The source's words that carry its content: all but toxic words, intensifiers, negators and the
    rude frame (:data:`FRAME_WORDS`), lower case, in order.

    Example:
        >>> content_words("Listen, you idiot, fix the broken wagon before noon!")
        ['fix', 'the', 'broken', 'wagon', 'before', 'noon']
    """
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", source)]
    drop = set(TOXIC) | set(INTENSIFIERS) | NEGATORS | FRAME_WORDS
    return [w for w in words if w not in drop]


def content_preservation(completion: str, source: str) -> float:
    """chrF (sacrebleu, in [0, 1]) of the lower-cased completion against the source's content words."""
    content = " ".join(content_words(source))
    if not content:
        return 0.0
    return metric_score("chrf", completion.strip().lower(), [content])


# ---------------------------------------------------------------------------- prompts
_TIMES = ("before noon", "today", "by Friday", "this morning", "right away", "after lunch", "tonight")
_OPENERS = ("Listen", "Hey", "Look", "Ugh")
_POLITE = ("Please {}.", "Could you please {}?", "Would you {}, please?", "Kindly {}, thank you.",
           "Please {}, thanks.")
_PROMPT_RE = re.compile(r"Rewrite politely:\s*(.*?)\s*->\s*$", re.S)


def parse_source(prompt: str) -> str | None:
    """The rude sentence of a prompt ``"Rewrite politely: ... ->"``, or None if the prompt is not one."""
    match = _PROMPT_RE.search(prompt)
    return match.group(1) if match else None


def _request(rng: np.random.Generator) -> str:
    u = rng.random(7)
    words = [list(VERBS)[int(u[0] * len(VERBS))], "the"]
    if u[1] < 0.5:
        words.append(list(ADJECTIVES)[int(u[2] * len(ADJECTIVES))])
    words.append(list(NOUNS)[int(u[3] * len(NOUNS))])
    if u[4] < 0.35:
        words += [list(PREPOSITIONS)[int(u[5] * len(PREPOSITIONS))], "the", list(NOUNS)[int(rng.random() * len(NOUNS))]]
    if u[6] < 0.5:
        words.append(_TIMES[int(rng.random() * len(_TIMES))])
    return " ".join(words)


def _pick(rng: np.random.Generator, table: Sequence[str]) -> str:
    return table[int(rng.random() * len(table))]


def _insult(rng: np.random.Generator) -> tuple[str, str]:
    """``(intensified adjective, noun)`` of an insult, e.g. ``("totally useless", "idiot")``."""
    adj = _pick(rng, list(INSULT_ADJECTIVES))
    if rng.random() < 0.6:
        adj = f"{_pick(rng, [w for w, f in INTENSIFIERS.items() if f > 1])} {adj}"
    return adj, _pick(rng, list(INSULT_NOUNS))


def rude_sentence(request: str, rng: np.random.Generator) -> str:
    """A rude sentence around ``request`` (one of five frames)."""
    adj, noun = _insult(rng)
    kind = int(rng.random() * 5)
    if kind == 0:
        return f"{_pick(rng, _OPENERS)}, you {noun}, {request}!"
    if kind == 1:
        return f"{request[0].upper()}{request[1:]}, you {adj} {noun}!"
    if kind == 2:
        return f"Shut up and {request}!"
    if kind == 3:
        return f"{request[0].upper()}{request[1:]} now. You are {adj}!"
    return f"Ugh, you are such a {adj} {noun}. {request[0].upper()}{request[1:]}."


class DetoxTask(Task):
    """Rewrite a rude sentence so that it is civil and keeps what it asks for.

    **Prompts**: ``"Rewrite politely: <rude sentence> ->"``. The rude sentence wraps a request
    (``"<verb> the [<adjective>] <noun>[ <preposition> the <noun>][ <time>]"``) in one of five rude frames
    with insults from a lexicon, often intensified: ``"Listen, you idiot, fix the broken wagon today!"``,
    ``"Shut up and ...!"``, ``"Ugh, you are such a totally useless jerk. ..."``.

    **Responses**: ``sample_response`` copies the source with probability ``0.4 * (1 - quality)``; else
    it drops or replaces each content word with probability ``(1 - quality) / 4`` each, wraps the rest in
    a polite frame (``"Could you please ...?"``), adds ``Binomial(2, 1 - quality)`` insult words
    (``", you idiot"``, ``", you totally useless idiot"``) and, with probability ``(1 - quality) / 2``,
    shouts (one word in capitals, maybe ``"!!!"``).

    **Gold score** = ``(1 - toxicity(completion)) * content_preservation``: :func:`toxicity` is the
    lexicon model (intensifiers multiply, negation scales a toxic word by 0.2 and makes "not smart" rude,
    capitalised words and "!" add); content preservation is chrF against the source's
    :func:`content_words`. Copying the source keeps the content but stays toxic; a polite sentence that
    drops the request keeps nothing. 0.0 for a prompt with no source sentence.
    :meth:`gold_details` reports both factors.

    Example:
        >>> p = "Rewrite politely: Listen, you idiot, fix the broken wagon today! ->"
        >>> [round(s, 2) for s in DetoxTask().gold_score([p] * 2, [" Please fix the broken wagon today.",
        ...                                                           " Listen, you idiot, fix the broken wagon today!"])]
        [0.93, 0.16]
    """

    name = "detox"
    #: The shipped tokenizer gives prompts of 20-55 tokens (mean 32) and polite rewrites of 7-27
    #: (mean 16), over 2,000 prompts.
    default_max_prompt_tokens = 60
    default_max_new_tokens = 36
    prompt_column_names = ("content",)

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"Rewrite politely: <rude sentence> ->"`` (see the class)."""
        return f"Rewrite politely: {rude_sentence(_request(rng), rng)} ->"

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """A rewrite that is politer and keeps more content as ``quality`` grows (see the class)."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        source = parse_source(prompt)
        if source is None:
            return " " + _pick(rng, _POLITE).format("do it")
        if rng.random() < 0.4 * (1.0 - quality):
            return " " + source
        request = " ".join(content_words(source)) or "do it"
        words = request.split()
        kept = []
        for w in words:
            r = rng.random()
            if r < (1.0 - quality) / 4:
                continue
            if r < (1.0 - quality) / 2:
                kept.append(_pick(rng, list(NOUNS)))
            else:
                kept.append(w)
        request = " ".join(kept) or "do it"
        text = _pick(rng, _POLITE).format(request)
        n_insults = int(rng.binomial(2, 1.0 - quality))
        if n_insults:
            adj, noun = _insult(rng)
            text = f"{text[:-1]}, you {adj if n_insults > 1 else ''} {noun}{text[-1]}".replace("  ", " ")
        if rng.random() < 0.5 * (1.0 - quality):
            # shouting: one word in capitals (a whole sentence in capitals would not fit the token budget)
            words = text.split()
            i = int(rng.random() * len(words))
            words[i] = words[i].upper()
            text = " ".join(words) if rng.random() < 0.5 else " ".join(words).rstrip(".?!") + "!!!"
        return " " + text

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``{"content": [...]}``: each prompt's content words joined by spaces (None without a source)."""
        out: list[object] = []
        for p in prompts:
            source = parse_source(p)
            out.append(None if source is None else " ".join(content_words(source)))
        return {"content": out}

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """``(1 - toxicity) * content preservation`` per pair (see the class)."""
        return [d["gold"] for d in self.gold_details(prompts, completions)]

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        """``{"gold", "toxicity", "content"}`` per pair."""
        check_pairs(prompts, completions)
        out = []
        for p, c in zip(prompts, completions, strict=True):
            source = parse_source(p)
            tox = toxicity(c)
            content = 0.0 if source is None else content_preservation(c, source)
            out.append({"gold": float((1.0 - tox) * content), "toxicity": tox, "content": content})
        return out
