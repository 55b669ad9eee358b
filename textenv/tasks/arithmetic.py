"""Two-operand addition (optionally subtraction): a verifiable-reward task with an exact gold scorer."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from textenv.tasks.base import Task, check_pairs

#: The last "a+b=" or "a-b=" in a prompt (operands up to 18 digits, so ``int`` is always safe).
_PROMPT_RE = re.compile(r"(?<!\d)(-?\d{1,18})\s*([+-])\s*(-?\d{1,18})\s*=")
#: The answer: an integer at the start of the completion (after whitespace), then spaces or tabs, then
#: a newline or the end of the text.
_ANSWER_RE = re.compile(r"\s*(-?\d+)[ \t]*(?:\r?\n|\Z)")


def parse_problem(prompt: str) -> int | None:
    """The answer to the last ``a+b=`` / ``a-b=`` problem in ``prompt``, or None if there is none.

    Example:
        >>> parse_problem("23+58=")
        81
    """
    match = None
    for match in _PROMPT_RE.finditer(prompt):  # noqa: B007 (keep the last match)
        pass
    if match is None:
        return None
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    return a + b if op == "+" else a - b


def parse_answer(completion: str) -> str | None:
    """The integer a completion states, as written (e.g. ``"81"``), or None if it does not state one.

    Leading whitespace is skipped; the number may be followed by spaces or tabs and then must end the text
    or its line (anything after the first newline is ignored). ``"81"``, ``" 81\\n"``, ``"81\\nfoo"`` give
    ``"81"``; ``"81 apples"``, ``"81."``, ``"x81"`` and ``""`` give None.
    """
    match = _ANSWER_RE.match(completion)
    return None if match is None else match.group(1)


def digit_credit(pred: str, answer: str) -> float:
    """Share of digit positions, right-aligned, where ``pred`` matches ``answer`` (0 if the signs differ).

    The denominator is the longer of the two digit strings, so a missing or extra digit costs a position.

    Example:
        >>> digit_credit("71", "81")
        0.5
    """
    if pred.startswith("-") != answer.startswith("-"):
        return 0.0
    p, a = pred.lstrip("-"), answer.lstrip("-")
    n = max(len(p), len(a))
    if n == 0:
        return 0.0
    hits = sum(1 for x, y in zip(reversed(p), reversed(a), strict=False) if x == y)
    return hits / n


class ArithmeticTask(Task):
    """Answer ``a+b=`` (and ``a-b=`` with ``operations="+-"``) for operands in 0..99.

    **Prompts**: ``f"{a}+{b}="`` with ``a, b`` uniform in 0..99 (10,000 distinct prompts); with
    subtraction, ``f"{a}-{b}="`` with ``a >= b``, so answers are never negative.

    **Responses**: the answer's digits, nothing else (``"81"``). ``sample_response`` returns the exact
    answer with probability ``smoothstep(quality) = 3q^2 - 2q^3`` (0 at 0, 0.5 at 0.5, 1 at 1), else a
    near miss: off by one or ten, one digit changed, two digits swapped, or, more often at low quality,
    two digits changed or a random number.

    **Gold score**: the answer the completion states is read by :func:`parse_answer`: leading whitespace
    is skipped, then an integer, then optional spaces/tabs, then a newline or the end of the text (text after
    the first newline is ignored; ``"81 apples"`` or ``"81."`` state nothing). The score is 1.0 if that
    integer, as written, equals the answer (``"081"`` does not), else 0.0. With ``partial_credit=True`` it is
    :func:`digit_credit`: the share of right-aligned digit positions that match, over the longer of the
    two numbers (``"71"`` for 81 gives 0.5). A completion that states no integer, or a prompt with no
    ``a+b=`` problem in it, scores 0.0.

    Args:
        partial_credit: score the share of correct digits instead of exact match.
        operations: ``"+"`` (default) or ``"+-"`` (addition and subtraction, half each).
    """

    name = "arithmetic"
    default_max_prompt_tokens = 8
    default_max_new_tokens = 4

    def __init__(self, partial_credit: bool = False, operations: str = "+") -> None:
        if operations not in ("+", "-", "+-", "-+"):
            raise ValueError(f"operations must be '+', '-' or '+-', got {operations!r}")
        self.partial_credit = bool(partial_credit)
        self.operations = operations

    def __repr__(self) -> str:
        return f"ArithmeticTask(partial_credit={self.partial_credit}, operations={self.operations!r})"

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """``"a+b="`` (or ``"a-b="`` with ``a >= b``) with operands uniform in 0..99."""
        u = rng.random(3)
        a, b = int(u[0] * 100), int(u[1] * 100)
        op = self.operations[int(u[2] * len(self.operations))]
        if op == "-" and a < b:
            a, b = b, a
        return f"{a}{op}{b}="

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """The exact answer with probability ``3q^2 - 2q^3``, else a near miss (worse at low quality)."""
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        answer = parse_problem(prompt)
        if answer is None:
            return str(int(rng.integers(0, 199)))
        if rng.random() < quality * quality * (3.0 - 2.0 * quality):
            return str(answer)
        return _near_miss(answer, rng, quality)

    prompt_column_names = ("answer",)

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``{"answer": [...]}``: each prompt's answer as a string (``"81"``), or None for a prompt with no problem.

        Example:
            >>> ArithmeticTask().prompt_columns(["23+58=", "hello"])
            {'answer': ['81', None]}
        """
        answers = (parse_problem(p) for p in prompts)
        return {"answer": [None if a is None else str(a) for a in answers]}

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Exact match (1.0 / 0.0), or the share of right digits with ``partial_credit`` (see the class)."""
        check_pairs(prompts, completions)
        scores = []
        for prompt, completion in zip(prompts, completions, strict=True):
            answer = parse_problem(prompt)
            pred = parse_answer(completion)
            if answer is None or pred is None:
                scores.append(0.0)
            elif self.partial_credit:
                scores.append(digit_credit(pred, str(answer)))
            else:
                scores.append(1.0 if pred == str(answer) else 0.0)
        return scores


def _near_miss(answer: int, rng: np.random.Generator, quality: float) -> str:
    """A wrong answer close to ``answer``: mild errors at high quality, coarse ones at low quality."""
    digits = str(abs(answer))
    sign = "-" if answer < 0 else ""
    for _ in range(8):
        # Mild errors (index 0-3) dominate at high quality, coarse ones (4-5) at low quality.
        kind = int(rng.random() * 4) if rng.random() < 0.3 + 0.7 * quality else 4 + int(rng.random() * 2)
        if kind == 0:
            guess = sign + str(abs(answer + int(rng.choice((-1, 1)))))
        elif kind == 1:
            guess = sign + str(abs(answer + int(rng.choice((-10, 10)))))
        elif kind == 2 or (kind == 3 and len(digits) < 2):
            guess = sign + _change_digits(digits, 1, rng)
        elif kind == 3:
            i = int(rng.integers(0, len(digits) - 1))
            guess = sign + digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:]
        elif kind == 4:
            guess = sign + _change_digits(digits, min(2, len(digits)), rng)
        else:
            guess = sign + str(int(rng.integers(0, 199)))
        guess = sign + (guess.lstrip("-").lstrip("0") or "0")  # no leading zeros
        if guess != str(answer):
            return guess
    return str(answer + 1)


def _change_digits(digits: str, k: int, rng: np.random.Generator) -> str:
    chars = list(digits)
    for i in rng.choice(len(chars), size=k, replace=False):
        chars[int(i)] = str((int(chars[int(i)]) + int(rng.integers(1, 10))) % 10)
    return "".join(chars)
