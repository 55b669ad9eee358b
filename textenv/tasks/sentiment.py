"""Positive movie-review continuation (the classic RLHF task), scored by a compositional sentiment model."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from textenv.tasks.base import Task, check_pairs

# ---------------------------------------------------------------------------- lexicon (the gold model)
# Polarity of graded strength; the same tables drive the response grammar, so they are split by part of
# speech and by strength tier (weak ~1-1.5, medium ~2-2.5, strong >= 3).
_POS_ADJ: tuple[tuple[tuple[str, float], ...], ...] = (
    (("fine", 1.0), ("decent", 1.0), ("solid", 1.5), ("pleasant", 1.5), ("nice", 1.5), ("funny", 1.5),
     ("fresh", 1.5)),
    (("good", 2.0), ("enjoyable", 2.0), ("charming", 2.0), ("clever", 2.0), ("moving", 2.0),
     ("touching", 2.0), ("engaging", 2.0), ("memorable", 2.0), ("lovely", 2.5), ("gripping", 2.5),
     ("powerful", 2.5), ("compelling", 2.5), ("beautiful", 2.5), ("hilarious", 2.5), ("thrilling", 2.5)),
    (("great", 3.0), ("wonderful", 3.0), ("excellent", 3.0), ("delightful", 3.0), ("stunning", 3.0),
     ("brilliant", 3.5), ("superb", 3.5), ("amazing", 3.5), ("fantastic", 3.5), ("outstanding", 3.5),
     ("magnificent", 4.0), ("perfect", 4.0), ("masterful", 4.0)),
)
_NEG_ADJ: tuple[tuple[tuple[str, float], ...], ...] = (
    (("slow", -1.0), ("predictable", -1.5), ("bland", -1.5), ("flat", -1.5), ("messy", -1.5),
     ("mediocre", -1.5), ("confusing", -1.5), ("shallow", -1.5), ("weak", -1.5), ("silly", -1.5)),
    (("bad", -2.0), ("poor", -2.0), ("dull", -2.0), ("clumsy", -2.0), ("lazy", -2.0), ("annoying", -2.0),
     ("forgettable", -2.0), ("boring", -2.5), ("tedious", -2.5), ("disappointing", -2.5),
     ("stupid", -2.5)),
    (("awful", -3.0), ("terrible", -3.0), ("horrible", -3.0), ("painful", -3.0), ("pointless", -3.0),
     ("dreadful", -3.5), ("unbearable", -3.5), ("atrocious", -4.0)),
)
_POS_VERB: tuple[tuple[tuple[str, float], ...], ...] = (
    (("liked", 1.5), ("appreciated", 1.5)),
    (("enjoyed", 2.5), ("admired", 2.0)),
    (("loved", 3.0), ("adored", 3.5)),
)
_NEG_VERB: tuple[tuple[tuple[str, float], ...], ...] = (
    (("disliked", -2.0),),
    (("disliked", -2.0), ("resented", -2.0)),
    (("hated", -3.0), ("despised", -3.5), ("loathed", -3.5)),
)
_POS_NOUN = (("gem", 3.0), ("treat", 2.0), ("delight", 3.0), ("joy", 2.5), ("triumph", 3.5),
             ("masterpiece", 4.0))
_NEG_NOUN = (("mess", -2.5), ("disaster", -3.5), ("waste", -3.0), ("failure", -2.5), ("bore", -2.5),
             ("letdown", -2.5))
_EXTRA = (("best", 3.5), ("better", 1.0), ("worst", -3.5), ("worse", -1.0), ("love", 3.0), ("enjoy", 2.5),
          ("hate", -3.0), ("recommend", 2.0), ("impressed", 2.0), ("bored", -2.0), ("wasted", -2.5),
          ("ruined", -3.0), ("failed", -2.0), ("disappointed", -2.5), ("ugly", -2.0), ("fun", 2.0))

LEXICON: dict[str, float] = {
    word: value
    for table in (*_POS_ADJ, *_NEG_ADJ, *_POS_VERB, *_NEG_VERB, _POS_NOUN, _NEG_NOUN, _EXTRA)
    for word, value in table
}
#: Multipliers on the next sentiment word (the one immediately after, other modifiers allowed between).
INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.4, "so": 1.4, "truly": 1.5, "incredibly": 2.0, "extremely": 2.0,
    "absolutely": 1.8, "remarkably": 1.7, "quite": 1.2, "deeply": 1.6, "utterly": 1.8, "totally": 1.5,
    "genuinely": 1.4, "much": 1.2, "pretty": 1.2, "slightly": 0.5, "somewhat": 0.6, "fairly": 0.8,
    "rather": 0.8, "mildly": 0.5, "mostly": 0.8,
}
#: Two-word dampeners, keyed by (previous word, word).
BIGRAM_INTENSIFIERS: dict[tuple[str, str], float] = {
    ("a", "bit"): 0.5, ("a", "little"): 0.5, ("kind", "of"): 0.6, ("sort", "of"): 0.6,
}
#: Negators flip and dampen the first sentiment word after them in the same clause.
NEGATORS: dict[str, float] = {"not": -0.5, "never": -0.5, "no": -0.5, "cannot": -0.5, "hardly": -0.4,
                              "barely": -0.4, "scarcely": -0.4}
#: Contrast markers: within a sentence, what follows weighs more than what precedes.
CONTRAST = frozenset({"but", "however"})
_CLAUSE_BREAKS = frozenset({",", ";", ":"})
_SENTENCE_ENDS = frozenset({".", "!", "?", "\n"})
#: Weight of the segment after the last contrast marker, and per-marker decay of the segments before it.
AFTER_CONTRAST_WEIGHT = 1.5
BEFORE_CONTRAST_DECAY = 0.5
#: A sentiment word counts at most this many times in one text, so repeating "great" does not pay forever.
MAX_REPEATS = 2
#: Bounds on the product of intensifiers in front of one word (stops "very very very ..." from exploding).
MODIFIER_RANGE = (0.25, 3.0)
#: gold = logistic(polarity / TEMPERATURE).
TEMPERATURE = 2.0

_NOT_RE = re.compile(r"n[’']t\b")

# The scan works on bytes: the texts are encoded as UTF-8 and joined with 0xFF (a byte UTF-8 never writes),
# then one bytes.translate lower-cases A-Z, keeps a-z and the punctuation tokens, turns the joins into \x00
# (a token of its own that ends a text), "\n" into \x01 (which bytes.split keeps) and every other byte
# into a space: UTF-8 writes every non-ASCII character with bytes >= 0x80, so none survives, as none is
# part of a token.
_PUNCT = b".!?;:,"
_NEWLINE, _TEXT_SEP = b"\x01", b"\x00"
_BYTE_MAP = bytes(
    c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or c in _PUNCT) else 1 if c == 10 else 0 if c == 255 else 32
    for c in range(256)
)
_SPACED = [(bytes([c]), b" " + bytes([c]) + b" ") for c in _PUNCT + _NEWLINE]
# What each token does in the scan, in the order the rules are tried (the first rule that applies wins):
# sentence ends, clause breaks and contrast markers, then sentiment words, negators, intensifiers and the
# second words of two-word dampeners; any other word clears a pending intensifier.
_END, _BREAK, _CONTRAST, _SENTIMENT, _NEGATOR, _INTENSIFIER, _BIGRAM_TAIL, _TEXT_END = range(8)
_KIND: dict[bytes, tuple[int, float]] = {_TEXT_SEP: (_TEXT_END, 0.0)}
for _words, _kind in ((_SENTENCE_ENDS, _END), (_CLAUSE_BREAKS, _BREAK), (CONTRAST, _CONTRAST)):
    for _w in _words:
        _KIND.setdefault(_NEWLINE if _w == "\n" else _w.encode(), (_kind, 0.0))
for _table, _kind in ((LEXICON, _SENTIMENT), (NEGATORS, _NEGATOR), (INTENSIFIERS, _INTENSIFIER)):
    for _w, _v in _table.items():
        _KIND.setdefault(_w.encode(), (_kind, _v))
_BIGRAMS = {(a.encode(), b.encode()): v for (a, b), v in BIGRAM_INTENSIFIERS.items()}
for (_, _b) in _BIGRAMS:
    _KIND.setdefault(_b, (_BIGRAM_TAIL, 0.0))


def review_polarity(text: str) -> float:
    """Total polarity of ``text`` under the compositional model of :class:`SentimentTask` (0 if neutral).

    Example:
        >>> review_polarity("The plot was bad, but the acting was great.")
        3.5
    """
    return review_polarities([text])[0]


def review_polarities(texts: Sequence[str]) -> list[float]:
    """:func:`review_polarity` of each text, scanned as one batch: the texts are tokenised together by bytes
    methods (no regular expression unless a text has a quote) and read in one pass over the tokens, several
    times faster than text by text.

    Example:
        >>> review_polarities(["A great film.", "It was not good", ""])
        [3.0, -1.0, 0.0]
    """
    if not texts:
        return []
    parts = []
    for t in texts:
        # the str methods where bytes would differ: a quote (the "n't" rule), or one of the two characters
        # besides A-Z that str.lower turns into ASCII letters (U+0130 and the Kelvin sign)
        if "'" in t or "’" in t or "\u0130" in t or "\u212a" in t:
            t = _NOT_RE.sub(" not", t.lower())
        parts.append(t.encode("utf-8", "surrogatepass"))
    blob = b" \xff ".join(parts).translate(_BYTE_MAP)
    for p, spaced in _SPACED:
        blob = blob.replace(p, spaced)
    tokens = blob.split()
    tokens.append(_TEXT_SEP)
    lo, hi = MODIFIER_RANGE
    kind_of = _KIND.get
    out: list[float] = []
    total = 0.0
    seen: dict[bytes, int] = {}
    segments = [0.0]  # segment polarities of the current sentence, split at contrast markers
    negation = 1.0  # pending negation, scoped to the clause, consumed by the next sentiment word
    modifier = 1.0  # pending intensifier, only for the adjacent sentiment word
    prev = b""
    for tok in tokens:
        kv = kind_of(tok)
        if kv is None:
            modifier = 1.0
        else:
            kind, value = kv
            if kind == _SENTIMENT:
                count = seen.get(tok, 0)
                if count < MAX_REPEATS:
                    segments[-1] += value * negation * min(max(modifier, lo), hi)
                seen[tok] = count + 1
                negation = modifier = 1.0
            elif kind == _INTENSIFIER:
                modifier *= value
            elif kind == _NEGATOR:
                negation *= value
            elif kind == _BIGRAM_TAIL:
                modifier = _BIGRAMS.get((prev, tok), 1.0)
            elif kind == _END:
                negation = modifier = 1.0
                total += _weigh(segments)
                segments = [0.0]
            elif kind == _BREAK:
                negation = modifier = 1.0
            elif kind == _CONTRAST:
                negation = modifier = 1.0
                segments.append(0.0)
            else:  # the end of one text: its score, and a fresh state for the next
                out.append(total + _weigh(segments))
                total, seen, segments, negation, modifier = 0.0, {}, [0.0], 1.0, 1.0
        prev = tok
    return out


def _weigh(segments: list[float]) -> float:
    if len(segments) == 1:
        return segments[0]
    last = len(segments) - 1
    before = sum(s * BEFORE_CONTRAST_DECAY ** (last - i) for i, s in enumerate(segments[:-1]))
    return before + AFTER_CONTRAST_WEIGHT * segments[-1]


def polarity_to_score(polarity: float) -> float:
    """Logistic map of a polarity to [0, 1] (0.5 for no sentiment); never overflows."""
    return 0.5 * (1.0 + math.tanh(polarity / (2.0 * TEMPERATURE)))


# ---------------------------------------------------------------------------- prompt grammar
_ASPECTS: tuple[tuple[str, bool], ...] = tuple(
    [(a, False) for a in ("acting", "plot", "story", "script", "dialogue", "ending", "soundtrack", "music",
                          "cinematography", "pacing", "direction", "cast", "lead actor", "lead actress",
                          "villain", "humor", "writing", "editing", "score", "opening scene", "final act",
                          "premise", "camera work", "lighting")]
    + [(a, True) for a in ("characters", "special effects", "costumes", "action scenes", "jokes",
                           "performances")]
)
_KINDS = ("film", "movie", "sequel", "remake", "thriller", "comedy", "drama", "documentary", "western",
          "musical", "horror film", "romance", "war film", "cartoon", "mystery", "biopic")
_CONTEXTS = ("with my sister", "with my parents", "with friends", "last night", "at the cinema", "on a flight",
             "at a festival", "on television", "twice", "with my kids", "after work", "alone",
             "on a rainy day", "in one sitting", "with my class")
_TOPICS = ("a small town", "two brothers", "a stolen painting", "a lost dog", "an old sailor", "first love",
           "the war", "a chess player", "a family secret", "a haunted house", "a jazz band", "a road trip",
           "a boxer", "the moon landing")
_OPENERS = ("From the first scene", "Halfway through", "In the end", "At first", "For the most part",
            "To be honest", "On the whole", "By the final act")
_GENRES = ("westerns", "comedies", "thrillers", "musicals", "dramas", "horror films", "war films",
           "documentaries", "romances", "mysteries")
_RELATIONS = ("sister", "brother", "friend", "wife", "husband", "mother", "father", "roommate", "son",
              "daughter")
_WHENS = ("last week", "for movie night", "on a whim", "for my birthday", "last night", "yesterday")
_PROMPT_ADJ = tuple(w for tier in (_POS_ADJ[1], _NEG_ADJ[1]) for w, _ in tier)


def _be(plural: bool, present: bool = False) -> str:
    return ("are" if plural else "is") if present else ("were" if plural else "was")


def _pick(seq: Sequence[str], u: float) -> str:
    return seq[int(u * len(seq))]


def _t_aspect(u: list[float]) -> str:
    a, pl = _ASPECTS[int(u[1] * len(_ASPECTS))]
    return f"Review: The {a} {_be(pl)}"


def _t_aspect_in_kind(u: list[float]) -> str:
    a, pl = _ASPECTS[int(u[1] * len(_ASPECTS))]
    return f"Review: The {a} in this {_pick(_KINDS, u[2])} {_be(pl)}"


def _t_watched(u: list[float]) -> str:
    a, _ = _ASPECTS[int(u[1] * len(_ASPECTS))]
    return f"Review: I watched this {_pick(_KINDS, u[2])} {_pick(_CONTEXTS, u[3])} and the {a}"


def _t_saw_honestly(u: list[float]) -> str:
    return f"Review: I saw this {_pick(_KINDS, u[2])} {_pick(_CONTEXTS, u[3])}, and honestly I"


def _t_about(u: list[float]) -> str:
    return f"Review: This {_pick(_KINDS, u[2])} about {_pick(_TOPICS, u[3])} is"


def _t_opener(u: list[float]) -> str:
    a, pl = _ASPECTS[int(u[1] * len(_ASPECTS))]
    return f"Review: {_pick(_OPENERS, u[3])}, the {a} {_be(pl)}"


def _t_fan(u: list[float]) -> str:
    a, pl = _ASPECTS[int(u[1] * len(_ASPECTS))]
    return f"Review: As a fan of {_pick(_GENRES, u[3])}, I thought the {a} {_be(pl)}"


def _t_mixed(u: list[float]) -> str:
    # The one sentiment-laden opening: the completion must outweigh it after "but".
    n = len(_ASPECTS)
    i = int(u[1] * n)
    j = (i + 1 + int(u[2] * (n - 1))) % n
    a, pl = _ASPECTS[i]
    return f"Review: The {a} {_be(pl)} {_pick(_PROMPT_ADJ, u[3])}, but the {_ASPECTS[j][0]}"


def _t_relation(u: list[float]) -> str:
    return (f"Review: My {_pick(_RELATIONS, u[1])} picked this {_pick(_KINDS, u[2])} "
            f"{_pick(_WHENS, u[3])}, and I")


_TEMPLATES = (_t_aspect, _t_aspect_in_kind, _t_watched, _t_saw_honestly, _t_about, _t_opener, _t_fan,
              _t_mixed, _t_relation)
_TEMPLATE_WEIGHTS = np.array([1.0, 1.5, 2.0, 1.0, 1.0, 1.5, 1.0, 0.8, 0.7])
_TEMPLATE_CDF = tuple(np.cumsum(_TEMPLATE_WEIGHTS / _TEMPLATE_WEIGHTS.sum()).tolist())

# ---------------------------------------------------------------------------- response grammar
_NEUTRAL_ADJ = ("long", "short", "loud", "quiet", "simple", "unusual", "familiar", "dark", "busy", "serious",
                "different", "colorful")
_STRONG_INTENS = ("very", "truly", "incredibly", "absolutely", "really")
_MILD_INTENS = ("really", "quite", "very", "pretty")
_DAMPENERS = ("a bit", "somewhat", "slightly", "a little", "kind of")
_ADJ_NEGATORS = ("not", "never", "hardly", "not very")
_TAILS = ("from start to finish", "throughout", "in every scene", "for most of the film", "at times",
          "in the second half")
_COPULAS = frozenset({"was", "is", "were", "are", "seemed", "felt", "looked"})
_SUBJECTS = frozenset({"i", "we"})
_VOWELS = frozenset("aeiou")


class _Draw:
    """Small helper so the grammar reads as code: uniform picks from one Generator."""

    __slots__ = ("rng",)

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def u(self) -> float:
        return float(self.rng.random())

    def pick(self, seq: Sequence[str]) -> str:
        return seq[int(self.u() * len(seq))]

    def word(self, table: Sequence[tuple[str, float]]) -> str:
        return table[int(self.u() * len(table))][0]


def _tier(strength: float) -> int:
    return 0 if strength < 0.4 else (1 if strength < 0.75 else 2)


def _adj_phrase(v: float, d: _Draw) -> str:
    """A predicative adjective phrase of valence ``v`` in [-1, 1]: "superb", "not bad", "a bit dull"."""
    s = abs(v)
    same, other = (_POS_ADJ, _NEG_ADJ) if v > 0 else (_NEG_ADJ, _POS_ADJ)
    if s < 0.12:
        return d.pick(_NEUTRAL_ADJ)
    tier = _tier(s)
    r = d.u()
    if tier == 0:
        if r < 0.4:
            return d.word(same[0])
        if r < 0.7:
            return f"{d.pick(_DAMPENERS)} {d.word(same[1])}"
        return f"{d.pick(_ADJ_NEGATORS)} {d.word(other[1])}"
    if tier == 1:
        return d.word(same[1]) if r < 0.6 else f"{d.pick(_MILD_INTENS)} {d.word(same[0])}"
    return d.word(same[2]) if r < 0.5 else f"{d.pick(_STRONG_INTENS)} {d.word(same[2])}"


def _verb_phrase(v: float, d: _Draw) -> str:
    """A first-person verb phrase of valence ``v`` (subject "I" precedes it): "really loved"."""
    s = abs(v)
    table = _POS_VERB if v > 0 else _NEG_VERB
    if s < 0.12:
        return d.pick(("watched", "remember", "noticed"))
    tier = _tier(s)
    if tier == 0 and d.u() < 0.5:
        return "did not enjoy" if v < 0 else "mostly enjoyed"
    word = d.word(table[tier])
    return f"{d.pick(('really', 'truly', 'absolutely'))} {word}" if tier == 2 and d.u() < 0.5 else word


def _closer(v: float, d: _Draw) -> str:
    """An optional closing sentence carrying valence ``v``."""
    if abs(v) < 0.12:
        return f"It was a {d.pick(_NEUTRAL_ADJ)} {d.pick(_KINDS)}."
    r = d.u()
    if r < 0.35:
        return f"I {_verb_phrase(v, d)} it."
    if r < 0.6 and abs(v) >= 0.75:
        noun = d.word(_POS_NOUN if v > 0 else _NEG_NOUN)
        return f"What {'an' if noun[0] in _VOWELS else 'a'} {noun}."
    table = _POS_ADJ if v > 0 else _NEG_ADJ
    adj = d.word(table[_tier(abs(v))])
    if abs(v) >= 0.75 and d.u() < 0.5:
        adj = f"{d.pick(_STRONG_INTENS)} {adj}"
    return f"Overall, {'an' if adj[0] in _VOWELS else 'a'} {adj} {d.pick(_KINDS)}."


class SentimentTask(Task):
    """Continue the opening of a movie review so that the whole review reads positive (IMDB-style RLHF).

    **Prompts** are review openings from a grammar of nine templates over ~30 film aspects, 16 kinds of
    film, viewing contexts, topics and genres (tens of thousands of distinct openings), e.g.
    ``"Review: The acting was"``, ``"Review: I watched this thriller with my sister and the plot"``,
    ``"Review: My friend picked this comedy on a whim, and I"``. Most are neutral; about 7% carry a
    sentiment clause before "but" (``"Review: The plot was dull, but the music"``) that the completion has
    to outweigh.

    **Responses** (``sample_response``) continue the opening grammatically (a predicate after "was"/"is",
    "was ..." after a noun, a verb phrase after "I"), in 6-18 words ending with ".", e.g.
    ``" superb, and the story was very moving."``. They combine a graded lexicon with intensifiers,
    dampeners ("a bit"), negation ("not bad", "never boring") and contrast ("dull, but the ending was
    great"). ``quality`` sets a target valence ``2 * quality - 1`` (plus noise): 0 reads clearly negative,
    0.5 mixed or neutral, 1 clearly positive.

    **Gold score**: ``logistic(P / 2)`` of the polarity ``P`` of the whole review ``prompt + completion``
    (concatenated as is), computed by :func:`review_polarity`; 0.5 for text without sentiment words:

    - lowercase; ``n't`` becomes "not"; tokens are ASCII letter runs and the punctuation ``. ! ? ; : ,``;
    - each lexicon word (graded strength, e.g. good +2, great +3, superb +3.5, dull -2, awful -3) adds its
      value times the product of the intensifiers right before it (very x1.5, incredibly x2, a bit x0.5,
      ...; clamped to [0.25, 3]) and times any pending negation (not/never/no x-0.5, hardly/barely x-0.4),
      which applies to the first sentiment word after it in the same clause;
    - clauses end at ``, ; :`` and contrast markers; sentences end at ``. ! ?`` or a newline;
    - within a sentence split by "but"/"however" into segments, the last segment weighs 1.5 and each
      earlier one 0.5 per marker after it ("bad, but great" > 0.5, "great, but bad" < 0.5);
    - sentence polarities add up; each sentiment word counts at most twice in a text.

    Example:
        >>> task = SentimentTask()
        >>> round(task.gold_score(["Review: The acting was"], [" very good."])[0], 3)
        0.818
    """

    name = "sentiment"
    default_max_prompt_tokens = 16
    default_max_new_tokens = 24

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """A review opening from the prompt grammar (one ``rng.random(4)`` draw)."""
        u = rng.random(4).tolist()  # Python floats: the same values, and cheaper to index and multiply
        t = 0
        while t < len(_TEMPLATE_CDF) - 1 and u[0] >= _TEMPLATE_CDF[t]:
            t += 1
        return _TEMPLATES[t](u)

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """A 6-18 word continuation of ``prompt`` ending with "." whose gold score grows with ``quality``."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        d = _Draw(rng)
        target = min(max(2.0 * quality - 1.0 + 0.15 * float(rng.standard_normal()), -1.0), 1.0)
        words = prompt.split()
        last = words[-1].lower() if words else ""
        present = last in ("is", "are")

        def valence() -> float:
            return min(max(target + 0.25 * float(rng.standard_normal()), -1.0), 1.0)

        contrast = abs(target) > 0.25 and d.u() < 0.3
        first = -math.copysign(0.3 + 0.4 * d.u(), target) if contrast else valence()
        if last in _SUBJECTS:
            aspect, _ = _ASPECTS[int(d.u() * len(_ASPECTS))]
            head = f"{_verb_phrase(first, d)} the {aspect}"
        elif last in _COPULAS:
            head = _adj_phrase(first, d)
        else:
            plural = last.endswith("s") and not last.endswith("ss")
            head = f"{d.pick(('seemed', 'felt', _be(plural, present)))} {_adj_phrase(first, d)}"
        aspect, plural = _ASPECTS[int(d.u() * len(_ASPECTS))]
        link = "but" if contrast else "and"
        second = f"{link} the {aspect} {_be(plural, present)} {_adj_phrase(target if contrast else valence(), d)}"
        body = f"{head}, {second}"
        n_words = len(body.split())
        if n_words < 12 and d.u() < 0.5:
            body = f"{body} {d.pick(_TAILS)}"
        sentence = f" {body}."
        closer = _closer(target, d)
        if len(sentence.split()) < 6 or (d.u() < 0.5 and len(sentence.split()) + len(closer.split()) <= 18):
            sentence = f"{sentence} {closer}"
        return sentence

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """``logistic(polarity(prompt + completion) / 2)`` per pair (see the class docstring)."""
        check_pairs(prompts, completions)
        return [polarity_to_score(x) for x in review_polarities([p + c for p, c in zip(prompts, completions, strict=True)])]
