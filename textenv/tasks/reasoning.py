"""`ReasoningGymTask`: a procedural dataset of the ``reasoning-gym`` package as a task (``task="reasoning_gym:<name>"``).

reasoning-gym generates questions with a verifiable answer (100+ datasets: arithmetic, puzzles, logic...)
and scores an answer with its dataset's ``score_answer``. Its docs prompt the model with a system prompt
that asks for the answer between ``<answer>`` and ``</answer>`` tags, extract the text of the last such
tag pair (``reasoning_gym.utils.extract_answer``) and score it; this task does the same:

- **Prompts**: entry ``i`` of the dataset (``create_dataset(name, size=size, seed=seed, **config)``, so
  the same questions on every machine, offline) for ``i`` drawn uniformly from ``rng``, formatted as the
  system prompt (``SYSTEM_PROMPTS["direct"]`` by default), a blank line, the question and a newline.
  Our splits apply: a question's split is the CRC32 hash of the prompt (:func:`textenv.tasks.base.split_of`).
- **Gold score**: ``score_answer(extract_answer(completion), entry)`` in [0, 1] (``extract="raw"``: the
  completion's first line, stripped, is the answer).

``reasoning-gym`` is the optional extra ``[reasoning]``; without it the task raises ``ImportError`` naming
the extra.

Example:
    >>> task = ReasoningGymTask("basic_arithmetic", size=100)  # doctest: +SKIP
    >>> prompt = task.prompts(1)[0]  # doctest: +SKIP
    >>> task.gold_score([prompt], [f"<answer>{task.entry(prompt)['answer']}</answer>"])  # doctest: +SKIP
    [1.0]
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from textenv.tasks.base import Task, check_pairs

#: The prefix of a task name that selects a reasoning-gym dataset: ``"reasoning_gym:basic_arithmetic"``.
PREFIX = "reasoning_gym:"
EXTRACTIONS = ("tag", "raw")


def require_reasoning_gym() -> Any:
    """The ``reasoning_gym`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError("reasoning-gym tasks need the 'reasoning-gym' package, part of the optional extra: "
                          "pip install 'textenv[reasoning]'") from exc
    return reasoning_gym


class ReasoningGymTask(Task):
    """A reasoning-gym dataset as a task (see the module docstring).

    Args:
        dataset: a reasoning-gym dataset name, e.g. ``"basic_arithmetic"``, ``"leg_counting"``.
        size: how many entries the dataset has (prompts are drawn from them).
        seed: the dataset's seed (which questions there are).
        system_prompt: a key of ``reasoning_gym.utils.SYSTEM_PROMPTS`` (default ``"direct"``), any other text
            to put before the question, or None for the question alone.
        extract: ``"tag"`` (the last ``<answer>...</answer>``, as reasoning-gym's docs do) or ``"raw"``.
        max_prompt_tokens, max_new_tokens: the env's default budgets for this task.
        **config: the dataset's own settings (e.g. ``min_terms=2, max_terms=2`` for basic_arithmetic).
    """

    default_max_prompt_tokens = 128
    default_max_new_tokens = 32
    #: An env on this task rewards with reasoning-gym's scorer when ``reward_model="default"``.
    default_reward_model = "gold"
    prompt_column_names = ("answer", "metadata")

    def __init__(self, dataset: str, size: int = 10_000, seed: int = 0, system_prompt: str | None = "direct",
                 extract: str = "tag", max_prompt_tokens: int | None = None, max_new_tokens: int | None = None,
                 **config: Any) -> None:
        rg = require_reasoning_gym()
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a reasoning-gym dataset name, got {dataset!r}")
        for flag, value, low in (("size", size, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
        if extract not in EXTRACTIONS:
            raise ValueError(f"extract must be one of {EXTRACTIONS}, got {extract!r}")
        for flag, budget in (("max_prompt_tokens", max_prompt_tokens), ("max_new_tokens", max_new_tokens)):
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1):
                raise ValueError(f"{flag} must be None or an integer >= 1, got {budget!r}")
        from reasoning_gym.factory import DATASETS
        from reasoning_gym.utils import SYSTEM_PROMPTS

        if dataset not in DATASETS:
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}; it has {len(DATASETS)}, e.g. "
                             f"{sorted(DATASETS)[:8]}")
        try:
            self.dataset = rg.create_dataset(dataset, size=int(size), seed=int(seed), **config)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"reasoning-gym dataset {dataset!r} refused its settings {config}: {exc}") from None
        self.dataset_name = dataset
        self.name = PREFIX + dataset
        self.size, self.seed, self.extract = int(size), int(seed), extract
        self.config = dict(config)
        if system_prompt is None:
            self.system_prompt = ""
        else:
            self.system_prompt = SYSTEM_PROMPTS.get(system_prompt, system_prompt)
        if max_prompt_tokens is not None:
            self.default_max_prompt_tokens = int(max_prompt_tokens)
        if max_new_tokens is not None:
            self.default_max_new_tokens = int(max_new_tokens)
        self._entries: dict[str, dict[str, Any]] = {}  # prompt -> its entry, for every prompt drawn

    def __repr__(self) -> str:
        return f"ReasoningGymTask({self.dataset_name!r}, size={self.size}, seed={self.seed})"

    def spec(self) -> dict[str, Any] | None:
        """The JSON record :func:`textenv.tasks.dataset.task_from_spec` rebuilds this task from (None when the
        dataset's settings are not JSON values)."""
        import json

        try:
            json.dumps(self.config)
        except (TypeError, ValueError):
            return None
        return {"kind": "reasoning_gym", "dataset": self.dataset_name, "size": self.size, "seed": self.seed,
                "system_prompt": self.system_prompt, "extract": self.extract, "config": self.config,
                "max_prompt_tokens": self.default_max_prompt_tokens, "max_new_tokens": self.default_max_new_tokens}

    def format_prompt(self, question: str) -> str:
        """The prompt of ``question``: the system prompt, a blank line, the question and a newline."""
        return f"{self.system_prompt.rstrip()}\n\n{question}\n" if self.system_prompt else f"{question}\n"

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """The prompt of a uniformly drawn entry of the dataset."""
        entry = self.dataset[int(rng.integers(self.size))]
        prompt = self.format_prompt(entry["question"])
        self._entries.setdefault(prompt, entry)
        return prompt

    def entry(self, prompt: str) -> dict[str, Any]:
        """The dataset entry (question, answer, metadata) of a prompt this task drew."""
        try:
            return self._entries[prompt]
        except (KeyError, TypeError):
            raise ValueError(f"prompt {str(prompt)[:80]!r} was not drawn from {self!r}; its gold score needs the "
                             f"reasoning-gym entry it came from") from None

    def answer_of(self, completion: str) -> str | None:
        """The answer a completion gives: its last ``<answer>`` tag's text (``extract="tag"``) or its first
        line (``"raw"``); None when it gives none."""
        if self.extract == "tag":
            from reasoning_gym.utils import extract_answer

            return extract_answer(completion)
        line = completion.strip().split("\n", 1)[0].strip()
        return line or None

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """reasoning-gym's ``score_answer`` of each completion's answer, in [0, 1]."""
        check_pairs(prompts, completions)
        scores = []
        for prompt, completion in zip(prompts, completions, strict=True):
            value = float(self.dataset.score_answer(self.answer_of(completion), self.entry(prompt)))
            scores.append(min(1.0, max(0.0, value)))
        return scores

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """``answer`` and ``metadata`` of each prompt's entry (what reasoning-gym's own reward functions read)."""
        entries = [self.entry(p) for p in prompts]
        return {"answer": [e["answer"] for e in entries], "metadata": [e.get("metadata") for e in entries]}
