"""Summarisation of a short document with distractors, scored by ROUGE-L (rouge-score) with a length penalty.

The document tells what one person did, in sentences padded with detail (a time, a place, an adjective),
interleaved with distractor sentences about other people and the weather. The reference summary names the
person once and lists what they did, without the detail: the summary must select, compress and merge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from textenv.metrics import score as metric_score
from textenv.tasks.base import Task, check_pairs
from textenv.tasks.translation import ADJECTIVES, NOUNS, PREPOSITIONS, VERBS

#: People's names (each 2-3 tokens of the shipped tokenizer).
NAMES = ("Tom", "Ben", "Sam", "Dan", "Lou", "Ray", "Anna", "Mara", "Lena", "Eva", "Max", "Leo", "Ada", "Ella",
         "Finn", "Lily", "Ivy", "Owen", "Ruth", "Paul", "Mia", "Kim")
_THINGS = tuple(n for n in NOUNS if n not in ("dog", "bird", "child", "farmer", "sailor", "teacher"))
_DAYS = ("On Monday", "On Tuesday", "On Friday", "At noon", "Later", "That morning", "In the evening")
_WEATHER = ("The sky was grey.", "It rained all day.", "The wind was cold.", "The sun was warm.",
            "It was a quiet week.", "Snow fell in the night.")
#: A summary may run to this many times the reference's word count before the length penalty starts.
LENGTH_SLACK = 1.25
#: Key facts (what the main person did) per document, distractor sentences, and sentences in all.
N_FACTS = (2, 3)
N_DISTRACTORS = (2, 3)
MAX_SENTENCES = 5

_DOC_RE = re.compile(r"Summarize:\s*(.*?)\s*Summary:\s*$", re.S)
_FACT_RE = re.compile(r"(?:(?:On|At|In|That|Later)[A-Za-z ]*, )?([A-Z][a-z]+) ([a-z]+) the ([a-z ]+?)"
                      r"(?: (?:near|under|behind|across|inside|over|along|beside) the [a-z]+)?\.")
_PAST_TO_BASE = {past: base for base, (_, past, _) in VERBS.items()}


@dataclass(frozen=True)
class Fact:
    """``person`` did ``verb`` (base form) to the ``thing``; ``sentence`` is how the document says it."""

    person: str
    verb: str
    thing: str
    sentence: str


def _fact_sentence(person: str, verb: str, thing: str, rng: np.random.Generator) -> str:
    u = rng.random(5)
    words = [person, VERBS[verb][1], "the"]
    if u[0] < 0.5:
        words.append(list(ADJECTIVES)[int(u[1] * len(ADJECTIVES))])
    words.append(thing)
    if u[2] < 0.4:
        place = _THINGS[int(u[3] * len(_THINGS))]
        words += [list(PREPOSITIONS)[int(u[4] * len(PREPOSITIONS))], "the", place]
    text = " ".join(words) + "."
    if rng.random() < 0.35:
        text = f"{_DAYS[int(rng.random() * len(_DAYS))]}, {text}"
    return text


def summary_of(person: str, facts: Sequence[tuple[str, str]]) -> str:
    """The reference summary: ``"<person> <verb-ed> the <thing>, ... and <verb-ed> the <thing>."``.

    Example:
        >>> summary_of("Mara", [("paint", "wagon"), ("fix", "lamp")])
        'Mara painted the wagon and fixed the lamp.'
    """
    parts = [f"{VERBS[v][1]} the {t}" for v, t in facts]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{person} {body}."


def parse_document(prompt: str) -> str | None:
    """The document of a prompt ``"Summarize: ...\\nSummary:"``, or None if the prompt is not one."""
    match = _DOC_RE.search(prompt)
    return match.group(1) if match else None


def key_facts(document: str) -> tuple[str, list[tuple[str, str]]] | None:
    """The main person of a document (the one named in more than one sentence, first by first mention)
    and their (verb, thing) facts in order, or None if the document states no such person.

    The thing is the sentence's object noun (its last word before any prepositional phrase), so
    adjectives and places are detail, not key content.
    """
    facts: list[tuple[str, str, str]] = []
    for sentence in re.split(r"(?<=\.)\s+", document.strip()):
        m = _FACT_RE.fullmatch(sentence.strip())
        if m and m.group(2) in _PAST_TO_BASE:
            facts.append((m.group(1), _PAST_TO_BASE[m.group(2)], m.group(3).split()[-1]))
    counts: dict[str, int] = {}
    for person, _, _ in facts:
        counts[person] = counts.get(person, 0) + 1
    main = next((p for p, _, _ in facts if counts[p] > 1), None)
    if main is None:
        return None
    return main, [(v, t) for p, v, t in facts if p == main]


def reference(prompt: str) -> str | None:
    """The reference summary of a prompt, or None if its document has no main person."""
    doc = parse_document(prompt)
    found = None if doc is None else key_facts(doc)
    return None if found is None else summary_of(*found)


def _is_fact_of(sentence: str, person: str) -> bool:
    m = _FACT_RE.fullmatch(sentence)
    return m is not None and m.group(1) == person and m.group(2) in _PAST_TO_BASE


def length_penalty(completion: str, ref: str) -> float:
    """``min(1, LENGTH_SLACK * words(ref) / words(completion))``: 1 up to 1.25x the key content's length."""
    n = len(completion.split())
    return 1.0 if n == 0 else min(1.0, LENGTH_SLACK * len(ref.split()) / n)


class SummarizationTask(Task):
    """Summarise what the document's main person did, briefly.

    **Prompts**: ``"Summarize: <document>\\nSummary:"``. The document has 2-3 sentences about the main
    person (each ``"[<time>, ]<Name> <verb-ed> the [<adjective>] <thing>[ <preposition> the <place>]."``)
    and 2-3 distractors (5 sentences at most; another person's single action in the same form, or a weather sentence), in a
    random order. The main person is the only one named in more than one sentence.

    **Reference**: ``"<Name> <verb-ed> the <thing>, ... and <verb-ed> the <thing>."`` (:func:`summary_of`):
    every key fact, in document order, without times, adjectives or places.

    **Responses**: ``sample_response`` writes ``floor(quality * n + U)`` of the ``n`` key facts compressed
    (``U`` uniform in [0, 1)), copies each other key sentence with probability ``1 - quality`` (else leaves
    it out) and copies ``floor(0.7 * (1 - quality) * d + U)`` of the ``d`` distractors. At quality 1 it
    is the reference; copying the whole document scores about 0.18.

    **Gold score**: ROUGE-L F-measure (Google's ``rouge-score``, no stemming) of the completion against
    the reference, times :func:`length_penalty` ``min(1, 1.25 * words(reference) / words(completion))``;
    0.0 for a prompt with no main person.

    Example:
        >>> p = ("Summarize: Mara painted the old wagon. Tom found a lamp. Later, Mara fixed the ladder near "
        ...      "the bridge.\\nSummary:")
        >>> SummarizationTask().gold_score([p], [" Mara painted the wagon and fixed the ladder."])
        [1.0]
    """

    name = "summarization"
    #: The shipped tokenizer gives prompts of 44-96 tokens (mean 67) and references of 10-24
    #: (mean 16), over 5,000 prompts.
    default_max_prompt_tokens = 100
    default_max_new_tokens = 28
    prompt_column_names = ("reference",)

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"Summarize: <document>\\nSummary:"`` (see the class)."""
        return "Summarize: " + " ".join(f.sentence for f in self._document(rng)[1]) + "\nSummary:"

    def _document(self, rng: np.random.Generator) -> tuple[str, list[Fact]]:
        names = rng.permutation(len(NAMES))
        main = NAMES[int(names[0])]
        n_facts = int(rng.integers(N_FACTS[0], N_FACTS[1] + 1))
        n_distractors = int(rng.integers(N_DISTRACTORS[0], min(N_DISTRACTORS[1], MAX_SENTENCES - n_facts) + 1))
        things = rng.permutation(len(_THINGS))
        verbs = list(VERBS)
        facts = []
        for i in range(n_facts):
            verb, thing = verbs[int(rng.random() * len(verbs))], _THINGS[int(things[i])]
            facts.append(Fact(main, verb, thing, _fact_sentence(main, verb, thing, rng)))
        distractors = []
        weather = rng.permutation(len(_WEATHER))
        for i in range(n_distractors):
            if rng.random() < 0.7:
                person = NAMES[int(names[1 + i])]
                verb, thing = verbs[int(rng.random() * len(verbs))], _THINGS[int(things[n_facts + i])]
                distractors.append(Fact(person, verb, thing, _fact_sentence(person, verb, thing, rng)))
            else:
                distractors.append(Fact("", "", "", _WEATHER[int(weather[i])]))
        sentences = [*facts, *distractors]
        return main, [sentences[int(i)] for i in rng.permutation(len(sentences))]

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """About ``quality * n`` key facts compressed, the others copied or dropped, and distractors
        copied, more at low quality (see the class)."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        doc = parse_document(prompt) or ""
        found = key_facts(doc)
        sentences = [s for s in re.split(r"(?<=\.)\s+", doc.strip()) if s]
        if found is None:
            return " " + " ".join(s for s in sentences if rng.random() < 0.5)
        main, facts = found
        # stratified counts (floor(expected + U)) keep the gold of one quality level tight
        keep = set(rng.permutation(len(facts))[:int(quality * len(facts) + rng.random())].tolist())
        others = [i for i, s in enumerate(sentences) if not _is_fact_of(s, main)]
        copy = set(rng.permutation(others)[:int((1.0 - quality) * 0.7 * len(others) + rng.random())].tolist())
        compressed: list[tuple[str, str]] = []
        copied: list[str] = []
        fact_i = 0
        for i, s in enumerate(sentences):
            if _is_fact_of(s, main):
                if fact_i in keep:
                    compressed.append(facts[fact_i])
                elif rng.random() < 1.0 - quality:
                    copied.append(s)
                fact_i += 1
            elif i in copy:
                copied.append(s)
        parts = ([summary_of(main, compressed)] if compressed else []) + copied
        return " " + " ".join(parts) if parts else " " + sentences[0]

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``{"reference": [...]}``: each prompt's reference summary (None without a main person)."""
        return {"reference": [reference(p) for p in prompts]}

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """ROUGE-L F of the completion against the reference, times the length penalty (see the class)."""
        return [d["gold"] for d in self.gold_details(prompts, completions)]

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        """``{"gold", "rougeL", "length_penalty"}`` per pair."""
        check_pairs(prompts, completions)
        out = []
        for p, c in zip(prompts, completions, strict=True):
            ref = reference(p)
            if ref is None:
                out.append({"gold": 0.0, "rougeL": 0.0, "length_penalty": 0.0})
                continue
            rouge = metric_score("rougeL", c, [ref])
            penalty = length_penalty(c, ref)
            out.append({"gold": float(rouge * penalty), "rougeL": rouge, "length_penalty": penalty})
        return out
