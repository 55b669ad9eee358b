"""Translation from English-like text into Velan, a small constructed language defined by a grammar.

Velan differs from English in word order, agreement and morphology, so a word-by-word lookup of the
lexicon scores poorly; the gold score is chrF (sacrebleu) against the grammar's reference translation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from textenv.metrics import score as metric_score
from textenv.tasks.base import Task, check_pairs

# ---------------------------------------------------------------------------- the lexicon
#: English noun -> Velan root. Roots end in a consonant so the suffixes below attach unambiguously.
NOUNS: dict[str, str] = {
    "river": "dur", "lamp": "lum", "garden": "hort", "window": "fen", "bridge": "pont", "forest": "silv",
    "letter": "brev", "candle": "kand", "mountain": "mont", "basket": "korb", "castle": "kast",
    "mirror": "spek", "ladder": "skal", "kettle": "ket", "blanket": "lan", "lantern": "fak",
    "meadow": "prat", "island": "ins", "engine": "mot", "tower": "tur", "market": "merk", "wagon": "vag",
    "village": "vik", "cottage": "dom", "dog": "kan", "bird": "av", "child": "pur", "farmer": "agr",
    "sailor": "naut", "teacher": "mag",
}
#: English adjective -> Velan root.
ADJECTIVES: dict[str, str] = {
    "quiet": "tak", "old": "vet", "bright": "klar", "tiny": "min", "heavy": "grav", "golden": "aur",
    "silent": "sil", "gentle": "mit", "narrow": "ang", "wooden": "lign", "broken": "frak", "dusty": "pulv",
    "purple": "purp", "brave": "fort", "clever": "sap", "empty": "vak", "wild": "fer", "soft": "mol",
}
#: English verb -> (third person singular, past, Velan root). Irregular pasts are listed as they are.
VERBS: dict[str, tuple[str, str, str]] = {
    "carry": ("carries", "carried", "port"), "paint": ("paints", "painted", "pikt"),
    "follow": ("follows", "followed", "sek"), "watch": ("watches", "watched", "vid"),
    "open": ("opens", "opened", "aper"), "lift": ("lifts", "lifted", "lev"),
    "find": ("finds", "found", "trov"), "hide": ("hides", "hid", "kel"),
    "build": ("builds", "built", "konstr"), "clean": ("cleans", "cleaned", "pur"),
    "push": ("pushes", "pushed", "puls"), "fix": ("fixes", "fixed", "rep"),
    "hold": ("holds", "held", "ten"), "read": ("reads", "read", "leg"),
    "catch": ("catches", "caught", "kap"), "guard": ("guards", "guarded", "gard"),
    "visit": ("visits", "visited", "vis"), "bring": ("brings", "brought", "fer"),
}
#: English preposition -> Velan postposition (it follows its noun phrase).
PREPOSITIONS: dict[str, str] = {
    "near": "pres", "under": "sub", "behind": "post", "across": "trans", "inside": "intra", "over": "supra",
    "along": "lon", "beside": "lat",
}
#: English possessive determiner -> Velan possessive (a suffix-taking word after the noun phrase).
POSSESSIVES: dict[str, str] = {"my": "mi", "her": "sha", "his": "shu", "our": "nos", "their": "vos"}
#: Plural nouns whose English plural is irregular or needs "-es".
_PLURALS: dict[str, str] = {"child": "children", "box": "boxes", "church": "churches"}

# Velan morphology (all suffixes):
PLURAL = "i"  #: on the noun and on every adjective of a plural noun phrase (number agreement)
OBJECT = "om"  #: accusative, on the last word of the object noun phrase (phrase-final case)
LOCATIVE = "e"  #: on the last word of a noun phrase governed by a postposition
TENSE = {"present": "a", "past": "u", "future": "ar"}  #: on the verb
PLURAL_SUBJECT = "n"  #: after the tense suffix when the subject is plural (subject-verb agreement)
#: Marks a definite ("the") noun phrase: a prefix on its first word.
DEFINITE = "el"

_WORD_RE = re.compile(r"[a-z]+")
_PROMPT_RE = re.compile(r"English:\s*(.*?)\s*Velan:\s*$", re.S)


def _plural(noun: str) -> str:
    return _PLURALS.get(noun, noun + "s")


_NOUN_FORMS: dict[str, tuple[str, bool]] = {
    **{n: (n, False) for n in NOUNS}, **{_plural(n): (n, True) for n in NOUNS}}
_VERB_FORMS: dict[str, tuple[str, str]] = {}
for _base, (_s3, _past, _) in VERBS.items():
    _VERB_FORMS.setdefault(_base, (_base, "present"))
    _VERB_FORMS.setdefault(_s3, (_base, "present"))
    _VERB_FORMS.setdefault(_past, (_base, "past"))


@dataclass(frozen=True)
class NounPhrase:
    """A parsed English noun phrase: determiner (``"the"``, ``"a"`` or a possessive), adjectives, noun."""

    det: str
    adjectives: tuple[str, ...]
    noun: str
    plural: bool


@dataclass(frozen=True)
class Clause:
    """A parsed English sentence: ``subject verb object [preposition noun-phrase]``."""

    subject: NounPhrase
    verb: str
    tense: str
    obj: NounPhrase
    preposition: str | None = None
    place: NounPhrase | None = None


# ---------------------------------------------------------------------------- English side
def english(clause: Clause) -> str:
    """The English sentence of ``clause``, capitalised, with a final period.

    Example:
        >>> np1 = NounPhrase("the", ("old",), "farmer", False)
        >>> english(Clause(np1, "carry", "past", NounPhrase("a", (), "lamp", False)))
        'The old farmer carried a lamp.'
    """
    s3, past, _ = VERBS[clause.verb]
    if clause.tense == "future":
        verb = f"will {clause.verb}"
    elif clause.tense == "past":
        verb = past
    else:
        verb = clause.verb if clause.subject.plural else s3
    words = [_english_np(clause.subject), verb, _english_np(clause.obj)]
    if clause.preposition is not None and clause.place is not None:
        words += [clause.preposition, _english_np(clause.place)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _english_np(np_: NounPhrase) -> str:
    noun = _plural(np_.noun) if np_.plural else np_.noun
    det = np_.det
    if det == "a" and np_.plural:
        det = "some"
    return " ".join([det, *np_.adjectives, noun])


def parse_english(text: str) -> Clause | None:
    """The clause of an English sentence of the task's grammar, or None if ``text`` is not one.

    Example:
        >>> parse_english("The dogs will follow my tiny bird.").tense
        'future'
    """
    words = _WORD_RE.findall(text.lower())
    pos = 0

    def noun_phrase() -> NounPhrase | None:
        nonlocal pos
        if pos >= len(words) or words[pos] not in ("the", "a", "some", *POSSESSIVES):
            return None
        det_word = words[pos]
        det = "a" if det_word == "some" else det_word
        pos += 1
        adjs: list[str] = []
        while pos < len(words) and words[pos] in ADJECTIVES:
            adjs.append(words[pos])
            pos += 1
        if pos >= len(words) or words[pos] not in _NOUN_FORMS:
            return None
        noun, plural = _NOUN_FORMS[words[pos]]
        pos += 1
        if det == "a" and (det_word == "some") != plural:
            return None  # "a dogs" / "some dog"
        return NounPhrase(det, tuple(adjs), noun, plural)

    subject = noun_phrase()
    if subject is None or pos >= len(words):
        return None
    tense = "present"
    if words[pos] == "will":
        tense, pos = "future", pos + 1
    if pos >= len(words) or words[pos] not in _VERB_FORMS:
        return None
    verb, form_tense = _VERB_FORMS[words[pos]]
    form = words[pos]
    pos += 1
    if tense == "future":
        if form != verb:
            return None
    else:
        tense = form_tense
        s3, past, _ = VERBS[verb]
        if tense == "present" and form != (verb if subject.plural else s3):
            tense = "past" if form == past else tense
            if form != past:
                return None  # agreement error in the source
    obj = noun_phrase()
    if obj is None:
        return None
    preposition = place = None
    if pos < len(words) and words[pos] in PREPOSITIONS:
        preposition = words[pos]
        pos += 1
        place = noun_phrase()
        if place is None:
            return None
    if pos != len(words):
        return None
    return Clause(subject, verb, tense, obj, preposition, place)


# ---------------------------------------------------------------------------- Velan side
def _velan_np(np_: NounPhrase, case: str = "") -> list[str]:
    """Noun first, then adjectives (agreeing in number), then a possessive; case on the last word."""
    num = PLURAL if np_.plural else ""
    words = [NOUNS[np_.noun] + num] + [ADJECTIVES[a] + num for a in np_.adjectives]
    if np_.det in POSSESSIVES:
        words.append(POSSESSIVES[np_.det])
    if np_.det == "the":
        words[0] = DEFINITE + words[0]
    words[-1] += case
    return words


def velan(clause: Clause) -> str:
    """The reference Velan translation of ``clause``.

    Word order is subject, [place + postposition], object, verb (verb-final). Nouns come before their
    adjectives; a plural noun phrase puts ``-i`` on the noun and every adjective; ``"the"`` is a prefix
    ``el-`` on the noun; a possessive follows the adjectives; the object takes ``-om`` and a postposition's
    noun phrase ``-e`` on its last word; the verb takes tense ``-a`` (present), ``-u`` (past) or ``-ar``
    (future), then ``-n`` if the subject is plural. Words are lower case; the sentence ends with ``"."``.

    Example:
        >>> velan(parse_english("The old farmers carried a lamp near my garden."))
        'elagri veti hort mie pres lumom portun.'
    """
    words = _velan_np(clause.subject)
    if clause.preposition is not None and clause.place is not None:
        words += _velan_np(clause.place, LOCATIVE) + [PREPOSITIONS[clause.preposition]]
    words += _velan_np(clause.obj, OBJECT)
    agree = PLURAL_SUBJECT if clause.subject.plural else ""
    words.append(VERBS[clause.verb][2] + TENSE[clause.tense] + agree)
    return " ".join(words) + "."


def word_by_word(text: str) -> str:
    """A lookup of each English word in the lexicon, in English order, with no morphology (the baseline
    the grammar is built to defeat); unknown words are dropped.

    Example:
        >>> word_by_word("The old farmer carried a lamp.")
        'vet agr port lum.'
    """
    out = []
    for w in _WORD_RE.findall(text.lower()):
        if w in _NOUN_FORMS:
            out.append(NOUNS[_NOUN_FORMS[w][0]])
        elif w in ADJECTIVES:
            out.append(ADJECTIVES[w])
        elif w in _VERB_FORMS:
            out.append(VERBS[_VERB_FORMS[w][0]][2])
        elif w in PREPOSITIONS:
            out.append(PREPOSITIONS[w])
        elif w in POSSESSIVES:
            out.append(POSSESSIVES[w])
    return " ".join(out) + "."


def parse_source(prompt: str) -> str | None:
    """The English sentence of a prompt ``"English: ...\\nVelan:"``, or None if the prompt is not one."""
    match = _PROMPT_RE.search(prompt)
    return match.group(1) if match else None


def reference(prompt: str) -> str | None:
    """The reference translation of a prompt, or None if its source is not a sentence of the grammar."""
    source = parse_source(prompt)
    clause = None if source is None else parse_english(source)
    return None if clause is None else velan(clause)


class TranslationTask(Task):
    """Translate an English-like sentence into Velan, a constructed language with its own grammar.

    **Prompts**: ``"English: The old farmers carried a lamp near my garden.\\nVelan:"``: subject, verb
    (present, past or ``will`` future), object, and with probability 0.4 a prepositional phrase. Noun
    phrases have a determiner (``the``, ``a``/``some``, or a possessive), up to two adjectives and a noun
    that is plural with probability 0.35. Lexicon: 30 nouns, 18 adjectives, 18 verbs, 8 prepositions.

    **Reference**: :func:`velan` (verb-final order, nouns before adjectives, number agreement on
    adjectives, subject agreement and tense on the verb, case suffixes), e.g.
    ``" elagri veti hort mie pres lumom portun."``. :func:`word_by_word` (the lexicon lookup with English
    order and no morphology) scores about 0.3 chrF.

    **Responses**: ``sample_response`` starts from the reference and, for each word with probability
    ``1 - quality``, applies one error: drop its suffixes, swap it with its neighbour, replace its root by
    another of the same class, or delete it; at quality 0 it is the word-by-word lookup with those errors.

    **Gold score**: sacrebleu's chrF (character 6-grams, beta 2) of the stripped completion against the
    reference, in [0, 1]; 0.0 for a prompt whose source is not a sentence of the grammar.
    :meth:`gold_details` also reports sentence BLEU.

    Example:
        >>> task = TranslationTask()
        >>> p = "English: The old farmers carried a lamp near my garden.\\nVelan:"
        >>> task.gold_score([p], [" elagri veti hort mie pres lumom portun."])
        [1.0]
    """

    name = "translation"
    #: The shipped tokenizer (trained before this task existed) gives prompts of 18-35 tokens (mean 23)
    #: and references of 10-46 (mean 23), over 2,000 prompts.
    default_max_prompt_tokens = 40
    default_max_new_tokens = 48
    prompt_column_names = ("reference",)

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"English: <sentence>\\nVelan:"`` with a sentence of the grammar (see the class)."""
        u = rng.random(4)
        subject = _random_np(rng)
        tense = ("present", "past", "future")[int(u[0] * 3)]
        verb = list(VERBS)[int(u[1] * len(VERBS))]
        obj = _random_np(rng)
        preposition = place = None
        if u[2] < 0.4:
            preposition = list(PREPOSITIONS)[int(u[3] * len(PREPOSITIONS))]
            place = _random_np(rng, max_adjs=1)
        return f"English: {english(Clause(subject, verb, tense, obj, preposition, place))}\nVelan:"

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """The reference with a per-word error rate of ``1 - quality`` (see the class)."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        ref = reference(prompt)
        source = parse_source(prompt) or ""
        if ref is None:
            return " " + word_by_word(source)
        base = ref if rng.random() < 0.5 + 0.5 * quality else word_by_word(source)
        words = base[:-1].split()
        out: list[str] = []
        i = 0
        while i < len(words):
            w = words[i]
            if rng.random() < 1.0 - quality:
                kind = int(rng.random() * 4)
                if kind == 0:
                    out.append(_strip_morphology(w))
                elif kind == 1 and i + 1 < len(words):
                    out += [words[i + 1], w]
                    i += 1
                elif kind == 2:
                    out.append(_ROOTS[int(rng.random() * len(_ROOTS))])
                # kind 3 (or a swap at the end): the word is dropped
            else:
                out.append(w)
            i += 1
        return " " + " ".join(out) + "."

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``{"reference": [...]}``: each prompt's reference translation (None outside the grammar)."""
        return {"reference": [reference(p) for p in prompts]}

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """chrF of each completion against its prompt's reference, in [0, 1] (see the class)."""
        check_pairs(prompts, completions)
        out = []
        for p, c in zip(prompts, completions, strict=True):
            ref = reference(p)
            out.append(0.0 if ref is None else metric_score("chrf", c.strip(), [ref]))
        return out

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        """``{"gold", "chrf", "bleu"}`` per pair (sacrebleu's sentence chrF and BLEU, in [0, 1]; ``gold`` is
        the chrF)."""
        check_pairs(prompts, completions)
        out = []
        for p, c in zip(prompts, completions, strict=True):
            ref = reference(p)
            if ref is None:
                out.append({"gold": 0.0, "chrf": 0.0, "bleu": 0.0})
            else:
                chrf = metric_score("chrf", c.strip(), [ref])
                out.append({"gold": chrf, "chrf": chrf, "bleu": metric_score("bleu", c.strip(), [ref])})
        return out


_ROOTS: tuple[str, ...] = (*NOUNS.values(), *ADJECTIVES.values(), *(v[2] for v in VERBS.values()))
_SUFFIXES = sorted({PLURAL + OBJECT, PLURAL + LOCATIVE, OBJECT, LOCATIVE, PLURAL,
                    *(t + PLURAL_SUBJECT for t in TENSE.values()), *TENSE.values()}, key=len, reverse=True)


def _strip_morphology(word: str) -> str:
    """A Velan word without its definite prefix and inflection (the bare root where one matches)."""
    if word.startswith(DEFINITE) and word[len(DEFINITE):]:
        word = word[len(DEFINITE):]
    for root in sorted(_ROOTS, key=len, reverse=True):
        if word.startswith(root) and word[len(root):] in ("", *_SUFFIXES):
            return root
    return word


def _random_np(rng: np.random.Generator, max_adjs: int = 2) -> NounPhrase:
    u = rng.random(5)
    det = ("the", "the", "a", *POSSESSIVES)[int(u[0] * (3 + len(POSSESSIVES)))]
    n_adj = 0 if u[1] < 0.45 else (1 if u[1] < 0.85 or max_adjs < 2 else 2)
    adjs: list[str] = []
    names = list(ADJECTIVES)
    while len(adjs) < n_adj:
        a = names[int(rng.random() * len(names))]
        if a not in adjs:
            adjs.append(a)
    noun = list(NOUNS)[int(u[2] * len(NOUNS))]
    return NounPhrase(det, tuple(adjs), noun, bool(u[3] < 0.35))
