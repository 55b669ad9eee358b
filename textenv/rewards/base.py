"""The reward-model protocol and the check every score batch goes through.

A reward model is any callable ``reward_model(prompts, completions) -> Sequence[float]`` that returns one
score per (prompt, completion) pair. :func:`check_scores` turns what comes back into a float64 array or
raises :class:`RewardModelError` naming the reward model and the bad value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: File that marks a directory as a reward model saved by :func:`textenv.training.reward.train_reward_model`.
REWARD_METADATA_FILE = "textenv_reward.json"
#: How a saved reward model joins its two inputs: the model reads ``prompt + completion`` (no separator).
INPUT_FORMAT = "prompt+completion"


class RewardModelError(ValueError):
    """A reward model returned something that is not one finite float per pair; the message names it."""


@runtime_checkable
class RewardModel(Protocol):
    """Anything called as ``reward_model(prompts, completions)`` returning one score per pair.

    The adapters in :mod:`textenv.rewards` also carry a ``name`` (used in error messages and logs);
    :func:`reward_name` falls back to a callable's qualified name or ``repr`` when there is none.

    Example:
        >>> def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
        ...     return [float(len(c)) for c in completions]
        >>> isinstance(length_reward, RewardModel)
        True
    """

    def __call__(self, prompts: list[str], completions: list[str]) -> Sequence[float]:
        """One score per (prompt, completion) pair."""
        ...


def reward_name(reward_model: Any) -> str:
    """A short human-readable name: the ``name`` attribute, else the qualified name, else ``repr``.

    Example:
        >>> reward_name(len)
        'len'
    """
    name = getattr(reward_model, "name", None)
    if isinstance(name, str) and name:
        return name
    qualname = getattr(reward_model, "__qualname__", None)
    if isinstance(qualname, str) and qualname:
        return qualname
    return repr(reward_model)


def check_scores(scores: Any, n: int, name: str) -> np.ndarray:
    """``scores`` as a float64 array of shape ``(n,)``, or :class:`RewardModelError` naming ``name``.

    Accepts a list or tuple of real numbers (Python or NumPy scalars, including bools), a 1-D NumPy array
    or a 1-D torch tensor. Rejects a wrong length, NaN, inf, non-numbers (str, None, complex...) and any
    other container type, naming the index and the value.

    Example:
        >>> check_scores([0.5, 1], 2, "demo")
        array([0.5, 1. ])
        >>> check_scores([0.5, float("nan")], 2, "demo")
        Traceback (most recent call last):
        ...
        textenv.rewards.base.RewardModelError: reward model 'demo' returned a non-finite score nan at index 1
    """
    if hasattr(scores, "detach") and hasattr(scores, "cpu"):  # a torch tensor; no import of torch needed
        scores = scores.detach().cpu().numpy()
    if isinstance(scores, np.ndarray):
        if scores.ndim != 1:
            raise RewardModelError(
                f"reward model {name!r} returned an array of shape {scores.shape}; expected shape ({n},)"
            )
        if scores.dtype.kind not in "biuf":
            raise RewardModelError(
                f"reward model {name!r} returned an array of dtype {scores.dtype}; expected real numbers"
            )
        values: Sequence[Any] = scores.tolist()
    elif isinstance(scores, (list, tuple)):
        values = scores
    else:
        raise RewardModelError(
            f"reward model {name!r} returned a {type(scores).__name__} ({_short(scores)}); "
            f"expected a list, tuple or 1-D array of {n} floats"
        )
    if len(values) != n:
        raise RewardModelError(
            f"reward model {name!r} returned {len(values)} scores for {n} (prompt, completion) pairs"
        )
    if all(type(v) is float for v in values):  # the usual case, checked at C speed: Python floats
        out = np.array(values, dtype=np.float64)
        if np.isfinite(out).all():
            return out
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if not isinstance(v, numbers.Real):
            raise RewardModelError(
                f"reward model {name!r} returned a non-number {_short(v)} ({type(v).__name__}) at index {i}"
            )
        f = float(v)
        if not math.isfinite(f):
            raise RewardModelError(f"reward model {name!r} returned a non-finite score {f} at index {i}")
        out[i] = f
    return out


def check_inputs(prompts: Any, completions: Any, name: str) -> tuple[list[str], list[str]]:
    """``prompts`` and ``completions`` as two lists of equal length (other sequences are copied into lists)."""
    for what, value in (("prompts", prompts), ("completions", completions)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(
                f"reward model {name!r}: {what} must be a list of str, got {type(value).__name__}"
            )
    if len(prompts) != len(completions):
        raise ValueError(
            f"reward model {name!r}: got {len(prompts)} prompts but {len(completions)} completions"
        )
    return list(prompts), list(completions)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
