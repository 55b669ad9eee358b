"""Extractive question answering over a short passage, scored by SQuAD's token F1 (exact match reported).

About 40% of the questions are answered by one sentence of the passage; the others need two facts combined
(who has the thing that is in a place, where the thing someone has is, who is the oldest of three).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from textenv.metrics import score as metric_score
from textenv.tasks.base import Task, check_pairs
from textenv.tasks.summarization import NAMES

ITEMS = ("lamp", "letter", "candle", "basket", "mirror", "ladder", "kettle", "blanket", "lantern", "wagon",
         "violin", "compass", "anchor", "ribbon", "saddle", "barrel", "feather", "pebble")
PLACES = ("garden", "forest", "castle", "meadow", "island", "market", "village", "cottage", "tower", "bridge",
          "harbor", "orchard", "tunnel", "mountain")
#: Question kinds; the last three need two facts of the passage.
KINDS = ("where", "who_has", "where_owned", "who_has_in", "oldest", "youngest")
TWO_FACT_KINDS = frozenset({"where_owned", "who_has_in", "oldest", "youngest"})

_HAS_RE = re.compile(r"([A-Z][a-z]+) has the ([a-z]+)\.")
_IN_RE = re.compile(r"The ([a-z]+) is in the ([a-z]+)\.")
_OLDER_RE = re.compile(r"([A-Z][a-z]+) is older than ([A-Z][a-z]+)\.")
_PROMPT_RE = re.compile(r"Context:\s*(.*?)\s*Question:\s*(.*?)\s*Answer:\s*$", re.S)
_QUESTIONS: dict[str, re.Pattern[str]] = {
    "where": re.compile(r"Where is the ([a-z]+)\?"),
    "who_has": re.compile(r"Who has the ([a-z]+)\?"),
    "where_owned": re.compile(r"Where is the thing that ([A-Z][a-z]+) has\?"),
    "who_has_in": re.compile(r"Who has the thing in the ([a-z]+)\?"),
    "oldest": re.compile(r"Who is the oldest\?"),
    "youngest": re.compile(r"Who is the youngest\?"),
}


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """``(passage, question)`` of a prompt ``"Context: ... Question: ... Answer:"``, or None."""
    match = _PROMPT_RE.search(prompt)
    return (match.group(1), match.group(2)) if match else None


def answer_question(passage: str, question: str) -> str | None:
    """The answer span the passage gives to the question, or None if it gives none (or the question is
    not one of the task's kinds).

    Example:
        >>> answer_question("Tom has the lamp. The lamp is in the garden.", "Where is the thing that Tom has?")
        'the garden'
    """
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", passage.strip()) if s.strip()]
    owner: dict[str, str] = {}  # item -> person
    where: dict[str, str] = {}  # item -> place
    older: list[tuple[str, str]] = []
    for s in sentences:
        if m := _HAS_RE.fullmatch(s):
            owner[m.group(2)] = m.group(1)
        elif m := _IN_RE.fullmatch(s):
            where[m.group(1)] = m.group(2)
        elif m := _OLDER_RE.fullmatch(s):
            older.append((m.group(1), m.group(2)))
    q = question.strip()
    for kind, pattern in _QUESTIONS.items():
        m = pattern.fullmatch(q)
        if m is None:
            continue
        if kind == "where":
            return f"the {where[m.group(1)]}" if m.group(1) in where else None
        if kind == "who_has":
            return owner.get(m.group(1))
        if kind == "where_owned":
            items = [i for i, p in owner.items() if p == m.group(1) and i in where]
            return f"the {where[items[0]]}" if len(items) == 1 else None
        if kind == "who_has_in":
            items = [i for i, pl in where.items() if pl == m.group(1) and i in owner]
            return owner[items[0]] if len(items) == 1 else None
        return _extreme(older, oldest=kind == "oldest")
    return None


def _extreme(older: list[tuple[str, str]], oldest: bool) -> str | None:
    """The one person older (or younger) than everybody else by the transitive closure of ``older``."""
    people = {p for pair in older for p in pair}
    above: dict[str, set[str]] = {p: set() for p in people}  # person -> everyone younger, transitively
    for a, b in older:
        above[a].add(b)
    changed = True
    while changed:
        changed = False
        for p in people:
            new = set().union(*(above[y] for y in above[p])) - above[p]
            if new:
                above[p] |= new
                changed = True
    if oldest:
        found = [p for p in people if above[p] == people - {p}]
    else:
        found = [p for p in people if not above[p] and all(p in above[q] for q in people - {p})]
    return found[0] if len(found) == 1 else None


def references(prompt: str) -> list[str] | None:
    """The accepted answers of a prompt (a place also as ``"in the <place>"``), or None if unanswerable."""
    parsed = parse_prompt(prompt)
    answer = None if parsed is None else answer_question(*parsed)
    if answer is None:
        return None
    return [answer, f"in {answer}"] if answer.startswith("the ") else [answer]


class QATask(Task):
    """Answer a question about a short passage with a span of it.

    **Prompts**: ``"Context: <passage>\\nQuestion: <question>\\nAnswer:"``. The passage has 2-3 people,
    each holding one item (``"Tom has the lamp."``), each item in its own place (``"The lamp is in the
    garden."``) and, for three people, an age chain (``"Tom is older than Ada."``), sentences shuffled.
    Questions, uniformly: ``Where is the <item>?`` and ``Who has the <item>?`` (one fact), ``Where is
    the thing that <Name> has?``, ``Who has the thing in the <place>?``, ``Who is the oldest?`` and
    ``Who is the youngest?`` (two facts combined; the age questions only with three people).

    **Answers**: a person's name, or ``"the <place>"`` (``"in the <place>"`` is accepted as well).

    **Responses**: ``sample_response`` states the right answer with probability ``sqrt(quality)``, in one of
    five ever wordier forms (``"Tom"``, ``"Tom I think"``, ``"It is Tom."``, ...), the
    ``Binomial(4, 1 - quality)``-th; else a wrong answer: with probability ``quality`` one of the
    passage's other entities of the same type, otherwise a random span of the passage (1-5 words).

    **Gold score**: SQuAD v1.1 token F1 (lower case, punctuation and articles removed) against the
    accepted answers, the maximum over them; the first line of the completion is scored. Exact match is
    in :meth:`gold_details`. 0.0 for a prompt the passage does not answer.

    Example:
        >>> p = "Context: Tom has the lamp. The lamp is in the garden.\\nQuestion: Where is the lamp?\\nAnswer:"
        >>> QATask().gold_score([p, p, p], [" the garden", " in the garden", " Tom"])
        [1.0, 1.0, 0.0]
    """

    name = "qa"
    #: The shipped tokenizer gives prompts of 53-101 tokens (mean 76) and answers of 2-3, over 3,000
    #: prompts; the wordiest sample response is about 10.
    default_max_prompt_tokens = 108
    default_max_new_tokens = 12
    prompt_column_names = ("answers", "two_facts")

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"Context: <passage>\\nQuestion: <question>\\nAnswer:"`` (see the class)."""
        n = 2 + int(rng.random() < 0.5)
        people = [NAMES[int(i)] for i in rng.permutation(len(NAMES))[:n]]
        items = [ITEMS[int(i)] for i in rng.permutation(len(ITEMS))[:n]]
        places = [PLACES[int(i)] for i in rng.permutation(len(PLACES))[:n]]
        sentences = [f"{p} has the {i}." for p, i in zip(people, items, strict=True)]
        sentences += [f"The {i} is in the {pl}." for i, pl in zip(items, places, strict=True)]
        if n == 3:
            ages = [people[int(i)] for i in rng.permutation(n)]
            sentences += [f"{ages[0]} is older than {ages[1]}.", f"{ages[1]} is older than {ages[2]}."]
        passage = " ".join(sentences[int(i)] for i in rng.permutation(len(sentences)))
        kinds = KINDS if n == 3 else KINDS[:4]
        kind = kinds[int(rng.random() * len(kinds))]
        k = int(rng.random() * n)
        question = {
            "where": f"Where is the {items[k]}?",
            "who_has": f"Who has the {items[k]}?",
            "where_owned": f"Where is the thing that {people[k]} has?",
            "who_has_in": f"Who has the thing in the {places[k]}?",
            "oldest": "Who is the oldest?",
            "youngest": "Who is the youngest?",
        }[kind]
        return f"Context: {passage}\nQuestion: {question}\nAnswer:"

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """The right answer with probability ``sqrt(quality)`` (wordier at lower quality), else a wrong one
        (see the class)."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        parsed = parse_prompt(prompt)
        passage, question = parsed if parsed is not None else (prompt, "")
        answer = answer_question(passage, question)
        words = passage.split() or ["?"]
        if answer is not None and rng.random() < quality ** 0.5:
            return " " + _WRAPPINGS[int(rng.binomial(len(_WRAPPINGS) - 1, 1.0 - quality))].format(answer)
        if answer is not None and rng.random() < quality:
            wrong = [w for w in _entities(passage, answer) if w != answer]
            if wrong:
                return " " + wrong[int(rng.random() * len(wrong))]
        start = int(rng.random() * len(words))
        return " " + " ".join(words[start:start + 1 + int(rng.random() * 5)])

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``{"answers": [...], "two_facts": [...]}``: the accepted answers (None if unanswerable) and
        whether the question needs two facts combined."""
        two: list[object] = []
        for p in prompts:
            parsed = parse_prompt(p)
            q = "" if parsed is None else parsed[1].strip()
            two.append(any(_QUESTIONS[k].fullmatch(q) for k in TWO_FACT_KINDS))
        return {"answers": [references(p) for p in prompts], "two_facts": two}

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """SQuAD token F1 of the completion's first line against the accepted answers (see the class)."""
        return [d["gold"] for d in self.gold_details(prompts, completions)]

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        """``{"gold", "f1", "exact_match"}`` per pair (SQuAD's, in [0, 1]; ``gold`` is the F1)."""
        check_pairs(prompts, completions)
        out = []
        for p, c in zip(prompts, completions, strict=True):
            refs = references(p)
            line = c.strip().split("\n", 1)[0] if c.strip() else ""
            if refs is None:
                out.append({"gold": 0.0, "f1": 0.0, "exact_match": 0.0})
            else:
                f1 = metric_score("f1", line, refs)
                out.append({"gold": f1, "f1": f1, "exact_match": metric_score("exact_match", line, refs)})
        return out


#: Ways to state an answer, ever wordier (SQuAD F1 1.0, then about 0.67, 0.5, 0.4, 0.33 for a name).
_WRAPPINGS = ("{}", "{} I think", "It is {}.", "I think it is {}.", "I think that it is {} here.")


def _entities(passage: str, answer: str) -> list[str]:
    """The passage's entities of the answer's type: names for a name, ``"the <noun>"`` for a place."""
    if answer.startswith("the "):
        return [f"the {m.group(2)}" for m in _IN_RE.finditer(passage)] + \
            [f"the {m.group(2)}" for m in _HAS_RE.finditer(passage)]
    return [m.group(1) for m in _HAS_RE.finditer(passage)]
