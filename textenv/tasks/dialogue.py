"""Multi-turn dialogue: book a restaurant table with a scripted user who holds the booking's details.

The env plays the user (:meth:`DialogueTask.next_turn`); the agent must ask for what it does not know,
confirm the booking back as a question, and book it once the user says yes. See :class:`DialogueTask`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from textenv.tasks.base import Task, check_pairs

#: The booking's slots and the values each can take.
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = ("5pm", "6pm", "7pm", "8pm", "9pm")
PEOPLE = ("two", "three", "four", "five", "six")
SLOTS: dict[str, tuple[str, ...]] = {"day": DAYS, "time": TIMES, "people": PEOPLE}

#: Words by which the user recognises a question about each slot ("when" asks for the day and the time).
ASK_WORDS: dict[str, tuple[str, ...]] = {
    "day": ("day", "date", "when"),
    "time": ("time", "hour", "when"),
    "people": ("how many", "people", "guests", "party"),
}
POLITE_WORDS = ("please", "thank")
RUDE_WORDS = ("hurry", "whatever", "stupid", "obviously")
#: Brevity: the agent's words over the whole dialogue; full marks up to BRIEF_WORDS, none from VERBOSE_WORDS.
BRIEF_WORDS, VERBOSE_WORDS = 20, 50
SEPARATOR = "\n"
USER, AGENT = "User:", "Agent:"

_WORD_RE = re.compile(r"[a-z]+")
_TIME_RE = re.compile(r"\b([5-9])\s?pm\b")


def mentions(text: str) -> dict[str, set[str]]:
    """The slot values ``text`` names, by slot (case-insensitive; ``"7 pm"`` counts as ``"7pm"``).

    Example:
        >>> sorted(mentions("Four on Friday at 7 pm?")["people"]), sorted(mentions("Four on Friday at 7 pm?")["time"])
        (['four'], ['7pm'])
    """
    low = text.lower()
    words = set(_WORD_RE.findall(low))
    return {
        "day": {d for d in DAYS if d.lower() in words},
        "time": {f"{m}pm" for m in _TIME_RE.findall(low)},
        "people": {p for p in PEOPLE if p in words},
    }


def asked_slots(text: str) -> list[str]:
    """The slots a turn asks about (it is a question that uses one of :data:`ASK_WORDS`)."""
    if "?" not in text:
        return []
    low = text.lower()
    words = set(_WORD_RE.findall(low))
    return [slot for slot, cues in ASK_WORDS.items()
            if any((cue in low) if " " in cue else (cue in words) for cue in cues)]


def is_booking(text: str) -> bool:
    """Whether an agent turn resolves the dialogue: it says "booked" and is not a question."""
    return "booked" in text.lower() and "?" not in text


def goal_of(prompt: str) -> dict[str, str]:
    """The booking the user wants: the values the prompt states, and for the others values fixed by a hash of
    the prompt (hidden: the agent has to ask for them).

    Example:
        >>> goal_of("Booking 1234. User: Hi, a table for four on Friday at 7pm, please.\\nAgent:")
        {'day': 'Friday', 'time': '7pm', 'people': 'four'}
    """
    said = mentions(prompt.split(USER, 1)[-1])
    h = zlib.crc32(b"dialogue-goal:" + prompt.encode("utf-8"))
    goal = {}
    for slot, values in SLOTS.items():
        found = [v for v in values if v in said[slot]]
        goal[slot] = found[0] if found else values[h % len(values)]
        h //= len(values)
    return goal


def agent_turns(completion: str) -> list[str]:
    """The agent's turns of a transcript: the segments between separators, alternating agent and user,
    starting with the agent (an agent turn never holds a separator: the separator ends it)."""
    segments = completion.split(SEPARATOR)
    turns = [segments[0]]
    for seg in segments[2::2]:
        s = seg.lstrip()
        turns.append(s[len(AGENT):] if s.startswith(AGENT) else seg)
    return [t for t in turns if t.strip()]


def _phrase(slot: str, value: str, rng: np.random.Generator | None) -> str:
    """How the user says a slot's value; the first (prepositional) form without ``rng``."""
    forms = {"day": ("on {}", "{}"), "time": ("at {}", "{}"), "people": ("for {}", "{} people")}[slot]
    return forms[0 if rng is None else int(rng.integers(len(forms)))].format(value)


def _answer(slots: Sequence[str], goal: dict[str, str], rng: np.random.Generator, capital: bool = True) -> str:
    text = ", ".join(_phrase(s, goal[s], rng) for s in slots)
    return text[0].upper() + text[1:] if capital else text


class DialogueTask(Task):
    """Book a table in a dialogue with a scripted user (multi-turn: the env inserts the user's replies).

    **Prompts**: ``"Booking 4821. User: Hi, a table for four, please.\\nAgent:"``. The user wants a table on
    a day (Monday..Sunday), at a time (5pm..9pm) for a number of people (two..six). The opening states some of
    the three (none to all); the others are fixed by a hash of the prompt (:func:`goal_of`), so the agent can
    only learn them by asking.

    **Turns**: an agent turn ends at ``"\\n"`` (the turn separator, one token), at EOS (which ends the
    dialogue) or after ``max_new_tokens`` tokens; at most ``default_max_turns`` agent turns. After each turn
    the user (:meth:`next_turn`) replies ``"User: ....\\nAgent:"`` (with a leading ``"\\n"`` if the agent's
    turn did not end on one):

    - a booking (the turn says "booked" and is no question): the dialogue ends (``None``);
    - a question naming slot values is a confirmation: ``"Yes, please."`` if it names all three and only
      the user's values, else ``"No, "`` and the right values of the slots it got wrong or left out;
    - a question about slots (:data:`ASK_WORDS`): the values asked for;
    - anything else: ``"Sorry? I need a table."``.

    **Gold score** in [0, 1], from the agent's turns (:func:`agent_turns`):
    ``share * (0.5 + 0.5 * booked) * (0.8 + 0.1 * polite + 0.1 * brief)``, where

    - ``share``: of the last confirmation (an agent question naming a slot value) before the first booking
      turn, the fraction of the three slots it names with the user's value and no other value (0 with no
      confirmation: booking unconfirmed details is not success);
    - ``booked``: 1 if a booking turn follows that confirmation;
    - ``polite``: 1 if some agent turn says "please" or "thank" and none is rude (:data:`RUDE_WORDS`);
    - ``brief``: 1 up to 20 words said by the agent in all, falling linearly to 0 at 50.

    ``sample_response`` plays an agent whose every turn is right with probability ``quality`` (ask for the
    missing slots, confirm, book politely) and otherwise makes a mistake (chatter, guessed or wrong values,
    booking before confirming, rudeness, verbosity), against the same scripted user; the response is the
    whole transcript, user replies included, as the env would decode it.

    Example:
        >>> task = DialogueTask()
        >>> p = "Booking 1234. User: Hi, a table for four on Friday at 7pm, please.\\nAgent:"
        >>> task.gold_score([p], [" Four, Friday, 7pm?\\nUser: Yes, please.\\nAgent: Booked, thank you!\\n"])
        [1.0]
    """

    name = "dialogue"
    default_max_prompt_tokens = 56
    default_max_new_tokens = 32  # per agent turn
    turn_separator = SEPARATOR
    default_max_turns = 4
    default_max_inserted_tokens = 40

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"Booking NNNN. User: <opening>\\nAgent:"``; the opening states a random subset of the slots."""
        ref = int(rng.integers(1000, 10000))
        stated = [slot for slot in SLOTS if rng.random() < 0.4]
        values = {slot: SLOTS[slot][int(rng.integers(len(SLOTS[slot])))] for slot in stated}
        greeting = ("Hi", "Hello", "Evening")[int(rng.integers(3))]
        if stated:
            details = " ".join(_phrase(s, values[s], None) for s in stated)
            opening = f"{greeting}, a table {details}, please."
        else:
            opening = f"{greeting}, {('I would like a table.', 'a table, please.', 'can I book a table?')[int(rng.integers(3))]}"
        return f"Booking {ref}. {USER} {opening}{SEPARATOR}{AGENT}"

    def next_turn(self, prompt: str, dialogue: Sequence[str], rng: np.random.Generator) -> str | None:
        """The user's reply to the agent's last turn ``dialogue[-1]``, or None after a booking (see class)."""
        if not dialogue:
            raise ValueError("next_turn needs the dialogue so far, got an empty one")
        turn = dialogue[-1]
        if is_booking(turn):
            return None
        goal = goal_of(prompt)
        named = mentions(turn)
        if "?" in turn and any(named.values()):
            wrong = [s for s in SLOTS if named[s] != {goal[s]}]
            reply = "Yes, please." if not wrong else f"No, {_answer(wrong, goal, rng, capital=False)}."
        elif asked := asked_slots(turn):
            reply = _answer(asked, goal, rng) + "."
        else:
            reply = "Sorry? I need a table."
        lead = "" if turn.endswith(SEPARATOR) else SEPARATOR
        return f"{lead}{USER} {reply}{SEPARATOR}{AGENT}"

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """A whole dialogue (agent turns and the user's replies) whose gold score grows with ``quality``."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        goal = goal_of(prompt)
        said = mentions(prompt.split(USER, 1)[-1])
        known = {s: goal[s] for s in SLOTS if said[s]}
        confirmed = False
        dialogue: list[str] = []
        out = ""
        for _ in range(self.default_max_turns):
            good = rng.random() < quality
            turn = self._agent_turn(goal, known, confirmed, good, rng)
            text = f" {turn}{SEPARATOR}"
            dialogue.append(text)
            out += text
            reply = self.next_turn(prompt, dialogue, rng)
            if reply is None:
                break
            dialogue.append(reply)
            out += reply
            heard = mentions(reply)
            known.update({s: next(iter(v)) for s, v in heard.items() if v})
            confirmed = reply.lstrip(SEPARATOR).startswith(f"{USER} Yes")
        return out

    @staticmethod
    def _agent_turn(goal: dict[str, str], known: dict[str, str], confirmed: bool, good: bool,
                    rng: np.random.Generator) -> str:
        """One agent turn: the right move when ``good``, else one of the mistakes listed in the class."""
        missing = [s for s in SLOTS if s not in known]
        polite = " please" if rng.random() < 0.5 else ""

        def question(slots: Sequence[str]) -> str:
            asks = {"day": "what day", "time": "what time", "people": "how many people"}
            text = " and ".join(asks[s] for s in slots)
            return text[0].upper() + text[1:] + f"{',' if polite else ''}{polite}?"

        def confirm(values: dict[str, str]) -> str:
            return f"{values['people'].capitalize()} on {values['day']} at {values['time']}?"

        if good:
            if missing:
                return question(missing)
            if not confirmed:
                return confirm(known)
            return "Booked, thank you!"
        kind = int(rng.integers(5))
        if kind == 0:
            return "How are you today?"
        if kind == 1:
            return "Hurry up, whatever." if rng.random() < 0.5 else "Booked."
        if kind == 2:  # guessed or wrong values
            guess = {s: SLOTS[s][int(rng.integers(len(SLOTS[s])))] for s in SLOTS}
            return confirm({**known, **guess} if missing else {**known, "day": guess["day"]})
        if kind == 3:
            return "Okay, let me just have a look at the book for tonight."
        if missing:
            return question(missing[:1]).replace("?", " then, if you do not mind?")
        return "Booked for you, that is all done now, enjoy the evening." if confirmed else confirm(known)

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Task success times politeness and brevity (see the class docstring), one float per pair."""
        check_pairs(prompts, completions)
        return [self._score(p, c) for p, c in zip(prompts, completions, strict=True)]

    @staticmethod
    def _score(prompt: str, completion: str) -> float:
        turns = agent_turns(completion)
        if not turns:
            return 0.0
        goal = goal_of(prompt)
        book_at = next((j for j, t in enumerate(turns) if is_booking(t)), None)
        before = turns if book_at is None else turns[:book_at]
        confirmations = [t for t in before if "?" in t and any(mentions(t).values())]
        if not confirmations:
            return 0.0
        named = mentions(confirmations[-1])
        share = sum(named[s] == {goal[s]} for s in SLOTS) / len(SLOTS)
        booked = float(book_at is not None)
        low = [t.lower() for t in turns]
        polite = float(any(w in t for t in low for w in POLITE_WORDS) and
                       not any(w in t for t in low for w in RUDE_WORDS))
        n_words = sum(len(t.split()) for t in turns)
        brief = min(1.0, max(0.0, (VERBOSE_WORDS - n_words) / (VERBOSE_WORDS - BRIEF_WORDS)))
        return share * (0.5 + 0.5 * booked) * (0.8 + 0.1 * polite + 0.1 * brief)
