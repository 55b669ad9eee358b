"""Turning a ``reward_model=`` argument into a reward model (see DESIGN.md, "Reward models")."""

from __future__ import annotations

import functools
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from textenv.models import REWARD_DIR, ModelLoadError
from textenv.rewards.adapters import CallableReward, CompositeReward, GoldReward
from textenv.rewards.base import REWARD_METADATA_FILE, RewardModel
from textenv.rewards.hf import HFClassifierReward, LearnedRewardModel, check_model_dir

if TYPE_CHECKING:
    from textenv.tasks.base import Task

_ADAPTERS = (CallableReward, GoldReward, CompositeReward, HFClassifierReward)


def resolve_reward_model(
    spec: Any, task: Task | None = None, device: str | torch.device = "cpu"
) -> RewardModel:
    """A reward model from any of the accepted forms:

    - ``"default"``: the task's shipped learned reward model (``textenv/data/rewards/<task.name>``);
    - ``"gold"``: the task's exact scorer, :class:`GoldReward`;
    - a directory (``str`` or ``Path``): a model saved by ``textenv train-reward``
      (:class:`LearnedRewardModel`) or any Hugging Face sequence-classification model
      (:class:`HFClassifierReward`, ``num_labels=1`` or a label named like "positive"; for another label
      pass ``HFClassifierReward(path, label=...)`` itself);
    - a callable ``fn(prompts, completions)`` or an object with ``__call__`` (:class:`CallableReward`);
      the adapters of this package are returned as they are;
    - a list of the above, each optionally as a ``(spec, weight)`` tuple: a :class:`CompositeReward`
      (weight 1 where none is given); elements are resolved recursively.

    Directory models are loaded once per process and resolved path (see :func:`load_reward_model`).

    Raises:
        ModelLoadError: a missing default, a missing directory, or a directory that does not load; the
            message names the path.
        ValueError: any other spec, naming it.

    Example:
        >>> rm = resolve_reward_model([(lambda p, c: [1.0] * len(c), 0.5), "gold"], task)  # doctest: +SKIP
        >>> rm.name  # doctest: +SKIP
        '0.5*<lambda> + 1*gold:sentiment'
    """
    if isinstance(spec, _ADAPTERS):
        return spec
    if isinstance(spec, str) and spec in ("default", "gold"):
        if task is None:
            raise ValueError(f"reward_model={spec!r} needs a task, got task=None")
        if spec == "gold":
            return GoldReward(task)
        path = REWARD_DIR / task.name
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the default reward model for task {task.name!r} is missing from {str(path)!r}; "
                f"run `textenv build-defaults`"
            )
        return load_reward_model(path, device=device)
    if isinstance(spec, (str, os.PathLike)):
        if not Path(spec).expanduser().exists():
            raise ModelLoadError(
                f"reward model path {str(spec)!r} does not exist (a reward_model string is 'default', 'gold' "
                f"or a directory)"
            )
        return load_reward_model(spec, device=device)
    if isinstance(spec, tuple) and _is_weighted(spec):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("reward_model list is empty; give at least one reward model")
        components: list[tuple[RewardModel, float]] = []
        for item in spec:
            if isinstance(item, tuple) and _is_weighted(item):
                components.append((resolve_reward_model(item[0], task, device), float(item[1])))
            else:
                components.append((resolve_reward_model(item, task, device), 1.0))
        return CompositeReward(components)
    if callable(spec):
        return CallableReward(spec)
    raise ValueError(
        f"unknown reward_model {spec!r} ({type(spec).__name__}); expected 'default', 'gold', a directory, "
        f"a callable, or a list of them with optional weights"
    )


def load_reward_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> HFClassifierReward:
    """The reward model in directory ``path``, loaded once per process per (resolved path, device).

    A directory with ``textenv_reward.json`` gives a :class:`LearnedRewardModel`, any other
    sequence-classification directory an :class:`HFClassifierReward` with the default label. The same
    object is returned on every call (never copied); ``load_reward_model.cache_clear()`` forgets them.
    """
    return _load_reward_dir(str(check_model_dir(path)), str(torch.device(device)))


@functools.lru_cache(maxsize=16)
def _load_reward_dir(path: str, device: str) -> HFClassifierReward:
    if (Path(path) / REWARD_METADATA_FILE).exists():
        return LearnedRewardModel(path, device=device)
    return HFClassifierReward(path, device=device)


load_reward_model.cache_clear = _load_reward_dir.cache_clear  # type: ignore[attr-defined]


def _is_weighted(item: tuple[Any, ...]) -> bool:
    """``(spec, weight)`` with a real, non-bool weight."""
    return len(item) == 2 and isinstance(item[1], numbers.Real) and not isinstance(item[1], bool)
