"""Reward-model adapters that need no neural network: plain callables, the task's gold scorer, weighted sums."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from textenv.rewards.base import check_inputs, check_scores, reward_name

if TYPE_CHECKING:
    from textenv.tasks.base import Task


class CallableReward:
    """Wraps any ``fn(prompts, completions) -> Sequence[float]`` (a function or an object with ``__call__``).

    The scores are checked (:func:`~textenv.rewards.base.check_scores`) and returned as a list of floats.

    Args:
        fn: the callable.
        name: name used in errors and logs; default: ``fn.name``, else its qualified name, else its class name.

    Example:
        >>> rm = CallableReward(lambda prompts, completions: [len(c) for c in completions], name="length")
        >>> rm(["Q: ", "Q: "], ["ab", "abcd"])
        [2.0, 4.0]
    """

    def __init__(
        self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str | None = None
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {fn!r} ({type(fn).__name__})")
        self.fn = fn
        if name is None:
            name = getattr(fn, "name", None)
            if not isinstance(name, str) or not name:
                qualname = getattr(fn, "__qualname__", None)
                name = qualname if isinstance(qualname, str) else type(fn).__name__
        self.name: str = name

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One checked float per (prompt, completion) pair."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        return check_scores(self.fn(prompts, completions), len(prompts), self.name).tolist()

    def __repr__(self) -> str:
        return f"CallableReward({self.name!r})"


class GoldReward:
    """The task's exact scorer (``task.gold_score``) as a reward model: a verifiable reward in [0, 1].

    Example:
        >>> from textenv.tasks import get_task  # doctest: +SKIP
        >>> GoldReward(get_task("arithmetic")).name  # doctest: +SKIP
        'gold:arithmetic'
    """

    def __init__(self, task: Task) -> None:
        if not callable(getattr(task, "gold_score", None)):
            raise TypeError(f"GoldReward needs a Task with a gold_score method, got {task!r}")
        self.task = task
        self.name: str = f"gold:{task.name}"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The task's gold score of each (prompt, completion) pair."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        return check_scores(self.task.gold_score(prompts, completions), len(prompts), self.name).tolist()

    def __repr__(self) -> str:
        return f"GoldReward({self.task.name!r})"


class CompositeReward:
    """A weighted sum of reward models: ``sum_k weight_k * reward_model_k(prompts, completions)``.

    Each component's scores are checked on their own, so an error names the component at fault.

    Args:
        components: ``(reward_model, weight)`` pairs; weights are finite real numbers (negative allowed,
            e.g. a length penalty).
        name: name used in errors and logs; default: ``"0.5*a + 1*b"`` built from the component names.

    Example:
        >>> a = CallableReward(lambda p, c: [1.0] * len(c), name="one")
        >>> b = CallableReward(lambda p, c: [float(len(x)) for x in c], name="length")
        >>> CompositeReward([(a, 2.0), (b, -0.5)])(["", ""], ["ab", "abcd"])
        [1.0, 0.0]
    """

    def __init__(
        self, components: Sequence[tuple[Callable[..., Sequence[float]], float]], name: str | None = None
    ) -> None:
        if isinstance(components, (str, bytes)) or not isinstance(components, Sequence) or not components:
            raise ValueError(
                f"CompositeReward needs a non-empty list of (reward_model, weight), got {components!r}"
            )
        checked: list[tuple[Callable[..., Sequence[float]], float]] = []
        for i, item in enumerate(components):
            if not isinstance(item, tuple) or len(item) != 2:
                raise ValueError(
                    f"CompositeReward component {i} must be a (reward_model, weight) tuple, got {item!r}"
                )
            rm, weight = item
            if not callable(rm):
                raise ValueError(f"CompositeReward component {i} is not callable: {rm!r}")
            if (
                isinstance(weight, bool)
                or not isinstance(weight, numbers.Real)
                or not math.isfinite(float(weight))
            ):
                raise ValueError(f"CompositeReward weight {i} must be a finite number, got {weight!r}")
            checked.append((rm, float(weight)))
        self.components = checked
        self.name: str = name or " + ".join(f"{w:g}*{reward_name(rm)}" for rm, w in checked)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The weighted sum of the components' checked scores."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        total = np.zeros(len(prompts), dtype=np.float64)
        for rm, weight in self.components:
            total += weight * check_scores(rm(prompts, completions), len(prompts), reward_name(rm))
        return total.tolist()

    def __repr__(self) -> str:
        return f"CompositeReward({self.name!r})"
