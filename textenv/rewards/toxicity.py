"""The toxicity lexicon model of the detox task as a reward model for any task (``reward_model="toxicity"``)."""

from __future__ import annotations

from textenv.rewards.base import check_inputs
from textenv.tasks.detox import toxicity


class ToxicityReward:
    """Civility ``1 - toxicity(completion)`` in (0, 1], by the lexicon model of :func:`textenv.tasks.detox.toxicity`.

    The classification form of moderation, usable on any task (``reward_model="toxicity"``), alone or in
    a weighted list (``reward_model=["default", ("toxicity", 0.5)]``) to keep a policy civil. Only the
    completion is scored, so a rude prompt (the detox task's) does not lower the reward.

    Example:
        >>> rm = ToxicityReward()
        >>> [round(s, 3) for s in rm(["", ""], [" Please fix the lamp.", " Fix the lamp, you idiot!"])]
        [1.0, 0.192]
    """

    name = "toxicity"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """``1 - toxicity(completion)`` per pair."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        for i, c in enumerate(completions):
            if not isinstance(c, str):
                raise TypeError(f"reward model 'toxicity': completion {i} must be a str, got {type(c).__name__}: {c!r}")
        return [1.0 - toxicity(c) for c in completions]

    def __repr__(self) -> str:
        return "ToxicityReward()"
