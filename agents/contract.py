"""The agent contract: what ``textenv train``, ``evaluate``, ``sample`` and the learning benchmark rely on.

Every learner satisfies :class:`Learner`: the native agents (:class:`agents.base.Agent`), the
stable-baselines3 adapter (:class:`agents.sb3_agent.SB3Agent`) and the TRL peer of the learning benchmark
(``benchmarks.learning.TRLGRPOAgent``). ``tests/test_contract.py`` checks each of them against it,
parameter names and defaults included.

Every learner evaluates and samples on the one seed stream :func:`evaluation_seed`: two learners built with
the same ``seed`` see the same held-out prompts and the same random numbers, so their metrics compare.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agents.policy import LMPolicy
    from textenv.vector import TextGenVectorEnv

#: first seed of the evaluation stream (seed 0); each run seed moves it by :data:`EVALUATION_SEED_STRIDE`
EVALUATION_SEED_BASE = 12345
EVALUATION_SEED_STRIDE = 1000


def evaluation_seed(seed: int) -> int:
    """The seed every learner built with ``seed`` evaluates and samples with: ``12345 + 1000 * seed``.

    Rollout seeds of training are derived differently, so evaluation prompts never depend on how long an
    agent trained.

    Example:
        >>> evaluation_seed(0), evaluation_seed(2)
        (12345, 14345)
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return EVALUATION_SEED_BASE + EVALUATION_SEED_STRIDE * seed


@runtime_checkable
class Learner(Protocol):
    """A learner of the LM policy in a TextGen env.

    Attributes:
        name: the registry name (``"ppo"``, ``"sb3-a2c"``, ``"trl-grpo"``, ...).
        episodes: episodes trained on so far.
        history: one metrics row per training iteration (``reward``, ``gold_score``, ``episodes``, ...).
        policy: the :class:`~agents.policy.LMPolicy` being trained, with its frozen KL reference.
        envs: a ``TextGenVectorEnv`` (autoreset disabled) that evaluation and sampling roll out in.
    """

    name: str
    episodes: int
    history: list[dict[str, float]]
    policy: LMPolicy
    envs: TextGenVectorEnv

    def learn(self, total_episodes: int, progress: bool = True,
              callback: Callable[[Any, dict[str, float]], Any] | None = None) -> Any:
        """Train for ``total_episodes`` more episodes; ``callback(learner, metrics)`` after every iteration
        (returning ``False`` stops early). Returns the learner."""
        ...

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """Mean ``reward``, ``gold_score``, ``kl``, ``entropy``, ``completions/mean_length`` over
        ``num_episodes`` episodes on ``split`` prompts; ``seed`` default: :func:`evaluation_seed` of the
        learner's seed."""
        ...

    def samples(self, n: int = 4, split: str = "test", seed: int | None = None) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs of the current policy; same default seed as :meth:`evaluate`."""
        ...

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint directory atomically (``agent.json`` says what it holds); returns ``path``."""
        ...

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None,
             env_kwargs: dict[str, Any] | None = None) -> Any:
        """Restore a checkpoint; ``env`` / ``env_kwargs`` replace the env it records (needed when its
        reward model was a Python callable or object)."""
        ...
