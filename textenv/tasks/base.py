"""The task contract: a prompt source with held-out splits, a gold scorer and corpus generators.

A task is everything that defines *what* the policy should write, independent of any model:

- ``sample_prompt(rng, split)``: an unlimited, seeded prompt source. Every prompt belongs to exactly one
  split (``"train"`` or ``"test"``) by a hash of its text, so held-out prompts never leak into training.
- ``gold_score(prompts, completions)``: the task's true objective, one float in ``[0, 1]`` per pair.
- ``sample_response(prompt, rng, quality)``: a synthetic response whose gold score grows with ``quality``
  in ``[0, 1]``; the corpus generators below are built on it. Optional: a task that never generates corpora
  (:class:`~textenv.tasks.dataset.DatasetTask`) leaves it out, and its corpora raise ``NotImplementedError``.
- corpora for the four pipeline stages: plain text (pretraining), (prompt, response) pairs (fine-tuning),
  scored texts (MSE reward model) and preference pairs (Bradley-Terry reward model).

Multi-turn tasks (the env inserts text between the agent's turns, see :class:`textenv.env.TextGenEnv`) set
``turn_separator`` (the text, one token of the tokenizer, that ends an agent turn), ``default_max_turns`` and
``default_max_inserted_tokens``, and implement ``next_turn(prompt, dialogue, rng)``: the other speaker's reply
(inserted into the observation, never an action) or ``None`` when the dialogue ends. For such a task a
"response" / "completion" is the whole transcript after the prompt: the agent's turns and the inserted
replies, in order, as the env decodes it.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "test")
#: Share of all prompts that fall in the held-out ``"test"`` split.
TEST_FRACTION = 0.1


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, fixed by a CRC32 hash of its text."""
    return "test" if zlib.crc32(prompt.encode("utf-8")) % 1000 < TEST_FRACTION * 1000 else "train"


def check_pairs(prompts: Sequence[str], completions: Sequence[str]) -> None:
    """A ``ValueError`` naming both lengths unless there is one completion per prompt (every gold scorer's
    first check)."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


class Task(ABC):
    """A text-generation task: prompts, a gold scorer and corpus generators (see the module docstring)."""

    #: Registry name, e.g. ``"sentiment"``.
    name: str = ""
    #: Env defaults: prompt budget and completion budget, in tokens of the default tokenizer.
    default_max_prompt_tokens: int = 16
    default_max_new_tokens: int = 16
    #: Multi-turn tasks: the text that ends an agent turn (it must encode to one token), or None (single-turn).
    turn_separator: str | None = None
    #: The most agent turns in an episode (1: single-turn); ``max_new_tokens`` is then a per-turn budget.
    default_max_turns: int = 1
    #: The most tokens the env may insert after one agent turn (:meth:`next_turn`'s reply, encoded).
    default_max_inserted_tokens: int = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @abstractmethod
    def generate_prompt(self, rng: np.random.Generator) -> str:
        """One prompt from the task's unlimited source, before any split filtering."""

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        """A response to ``prompt`` whose gold score tends to grow with ``quality`` in [0, 1].

        Optional: the base raises ``NotImplementedError`` naming the task (the built-in tasks implement it;
        tasks from data do not, so their synthetic corpora are unavailable).
        """
        raise NotImplementedError(
            f"task {self.name or type(self).__name__!r} ({type(self).__name__}) generates no synthetic responses, "
            f"so its corpora (sft_pairs, scored_texts, preference_pairs, pretrain_corpus) are unavailable; "
            f"bring the data as files instead"
        )

    @abstractmethod
    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The task's true objective in [0, 1], one float per (prompt, completion) pair."""

    #: What ``reward_model="default"`` means for this task: ``"learned"`` (the shipped reward model in
    #: ``textenv/data/rewards/<name>``) or ``"gold"`` (the gold scorer; tasks from data ship no model).
    default_reward_model: str = "learned"

    def spec(self) -> dict[str, object] | None:
        """A JSON-able record that rebuilds this task (what a checkpoint keeps of a task object), or None when
        the task is known by its name alone or cannot be rebuilt from a file."""
        return None

    def next_turn(self, prompt: str, dialogue: Sequence[str], rng: np.random.Generator) -> str | None:
        """The text the env inserts after the agent's turn, or ``None`` when the dialogue ends there.

        ``dialogue`` is the transcript after ``prompt`` as decoded text segments, alternating and ending with
        the agent's turn that just ended: ``[agent_1, inserted_1, agent_2, ..., agent_k]`` (an agent turn
        includes its separator when it ended on one). Randomness only from ``rng`` (the env's). The base task
        is single-turn: always ``None``.
        """
        return None

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        """The parts of each gold score by name (e.g. BLEU beside chrF, exact match beside F1), one dict per
        pair, each with a ``"gold"`` entry equal to :meth:`gold_score`'s; the base task reports the gold
        score alone, as ``{"gold": score}``.

        A task that overrides this computes its parts and its gold score in one pass: the envs then call
        only this method at episode end (``info["gold_score"]`` is the ``"gold"`` entry) and never
        :meth:`gold_score` on the same text. A task that does not override it keeps the envs' fast path,
        :meth:`gold_score` alone.
        """
        return [{"gold": float(s)} for s in self.gold_score(prompts, completions)]

    #: Names of the per-prompt fields :meth:`prompt_columns` returns (TRL's "dataset columns").
    prompt_column_names: tuple[str, ...] = ()

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """Per-prompt fields, one list per name in :attr:`prompt_column_names`, aligned with ``prompts``.

        These are what TRL passes a reward function as keyword arguments besides ``prompts`` and
        ``completions`` (its dataset's other columns); see :class:`textenv.rewards.CallableReward`.
        The base task has none.
        """
        return {}

    # ------------------------------------------------------------------ prompt source
    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        """Draw prompts from ``rng`` until one falls in ``split`` (rejection sampling keeps splits disjoint)."""
        check_split(split)
        while True:
            prompt = self.generate_prompt(rng)
            if split_of(prompt) == split:
                return prompt

    def prompts(self, n: int, split: str = "train", seed: int = 0) -> list[str]:
        """``n`` prompts of ``split``, reproducible from ``seed``."""
        rng = np.random.default_rng(seed)
        return [self.sample_prompt(rng, split) for _ in range(n)]

    # ------------------------------------------------------------------ corpora
    def sft_pairs(self, n: int, seed: int = 0, split: str = "train") -> list[tuple[str, str]]:
        """``n`` (prompt, response) pairs for fine-tuning, with quality drawn uniformly in [0, 1].

        Mixed quality on purpose: the fine-tuned policy imitates a spread of good and bad responses, so
        it writes fluent task text and still leaves room for RL to improve the gold score.
        """
        rng = np.random.default_rng(seed)
        pairs = []
        for _ in range(n):
            prompt = self.sample_prompt(rng, split)
            pairs.append((prompt, self.sample_response(prompt, rng, float(rng.uniform()))))
        return pairs

    def pretrain_corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` plain-text documents (prompt immediately followed by its response)."""
        return [p + r for p, r in self.sft_pairs(n, seed=seed)]

    def scored_texts(self, n: int, seed: int = 0, split: str = "train") -> list[dict[str, object]]:
        """``n`` rows ``{"prompt", "completion", "score"}`` scored by the gold scorer (MSE reward data)."""
        pairs = self.sft_pairs(n, seed=seed, split=split)
        prompts = [p for p, _ in pairs]
        completions = [c for _, c in pairs]
        scores = self.gold_score(prompts, completions)
        return [{"prompt": p, "completion": c, "score": s} for p, c, s in zip(prompts, completions, scores, strict=True)]

    def preference_pairs(self, n: int, seed: int = 0, split: str = "train") -> list[dict[str, str]]:
        """``n`` rows ``{"prompt", "chosen", "rejected"}``; chosen has the strictly higher gold score."""
        rng = np.random.default_rng(seed)
        rows: list[dict[str, str]] = []
        while len(rows) < n:
            prompt = self.sample_prompt(rng, split)
            a = self.sample_response(prompt, rng, float(rng.uniform()))
            b = self.sample_response(prompt, rng, float(rng.uniform()))
            sa, sb = self.gold_score([prompt, prompt], [a, b])
            if sa == sb:
                continue
            chosen, rejected = (a, b) if sa > sb else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows
