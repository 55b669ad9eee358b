"""TRL interop: a textenv task (built-in, dataset or reasoning-gym) or env as TRL's dataset and reward functions.

:func:`to_trl` returns what ``trl.GRPOTrainer`` (or any TRL trainer that takes ``reward_funcs``) expects,
so it trains on our tasks unmodified::

    data = to_trl("arithmetic", n_prompts=512)
    trainer = GRPOTrainer(model, reward_funcs=data.reward_funcs, train_dataset=data.dataset,
                          args=GRPOConfig(..., reward_weights=data.reward_weights))

- ``dataset``: a ``datasets.Dataset`` with a ``"prompt"`` column (plain text, TRL's standard format) and the
  task's per-prompt columns (:meth:`~textenv.tasks.base.Task.prompt_columns`: ``answer`` for arithmetic,
  ``keywords`` for keywords, a data file's other fields, reasoning-gym's ``answer``/``metadata``), which TRL
  hands reward functions as keyword arguments.
- ``reward_funcs``: :class:`TRLReward` callables in TRL's convention, ``f(prompts, completions, **kwargs) ->
  list[float]``: the env's reward model (``"reward_model"``: the learned one by default, whatever
  ``reward_model=`` resolves to) and the task's gold scorer (``"gold"``).
- ``reward_weights``: ``[1.0, 0.0]``: train on the reward model and log the gold score beside it (TRL logs
  every function as ``rewards/<name>/mean``), which is how reward hacking shows. Without it TRL sums both.

A multi-turn task (``"dialogue"``) is refused with a ``ValueError``: TRL generates one completion per prompt,
with no env to insert the other speaker's turns.

``datasets`` comes with ``trl`` (the optional extra ``[trl]``); a missing package is an ``ImportError`` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from textenv.rewards.base import check_scores
from textenv.tasks import Task, get_task

#: Keywords TRL passes reward functions that are not dataset columns (and that our reward models ignore).
_TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


class TRLData(NamedTuple):
    """What :func:`to_trl` returns (unpacks as ``dataset, reward_funcs, reward_weights``)."""

    dataset: Any  # datasets.Dataset
    reward_funcs: list[TRLReward]
    reward_weights: list[float]


class TRLReward:
    """A textenv scorer in TRL's reward-function convention: ``f(prompts, completions, **kwargs) -> list[float]``.

    ``kind="reward_model"`` calls the reward model on (prompt, completion) pairs (a TRL-style callable reward
    also gets the task's columns and ``completion_ids``); ``kind="gold"`` calls ``task.gold_score``. TRL's
    other keywords (``trainer_state``, ``log_metric``...) are ignored. Conversational prompts (lists of
    messages) are refused: textenv prompts are plain text. Scores come back checked (one finite float each).
    """

    def __init__(self, kind: str, task: Task, reward_model: Any = None) -> None:
        if kind not in ("reward_model", "gold"):
            raise ValueError(f"kind must be 'reward_model' or 'gold', got {kind!r}")
        if kind == "reward_model" and reward_model is None:
            raise ValueError("kind='reward_model' needs a reward_model")
        self.kind, self.task, self.reward_model = kind, task, reward_model
        #: TRL's name for the function: its metrics are ``rewards/<__name__>/mean``.
        self.__name__ = kind

    def __repr__(self) -> str:
        what = getattr(self.reward_model, "name", repr(self.reward_model)) if self.kind == "reward_model" else self.task.name
        return f"TRLReward({self.kind!r}, {what})"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> list[float]:
        prompts_, completions_ = _texts(prompts, "prompts"), _texts(completions, "completions")
        if len(prompts_) != len(completions_):
            raise ValueError(f"reward {self.__name__!r}: got {len(prompts_)} prompts but {len(completions_)} "
                             f"completions")
        if self.kind == "gold":
            out: Any = self.task.gold_score(prompts_, completions_)
        elif getattr(self.reward_model, "wants_extras", False):
            columns = {k: v for k, v in kwargs.items() if k not in _TRL_KEYWORDS}
            out = self.reward_model(prompts_, completions_, completion_ids=completion_ids,
                                    columns=columns or self.task.prompt_columns(prompts_))
        else:
            out = self.reward_model(prompts_, completions_)
        return [float(x) for x in check_scores(out, len(prompts_), self.__name__)]


def _texts(items: Sequence[Any], what: str) -> list[str]:
    out = list(items)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise ValueError(f"{what}[{i}] must be a str (textenv prompts are plain text, not conversations), "
                             f"got {type(x).__name__}: {x!r:.80}")
    return out


def _require_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("to_trl needs the 'datasets' package (installed with trl), part of the optional extra: "
                          "pip install 'textenv[trl]'") from exc
    return datasets


def _unwrap_env(obj: Any) -> Any:
    """The textenv env under gymnasium wrappers, or None when ``obj`` is not an env."""
    from textenv.setup import EnvSetup

    env = obj
    for _ in range(64):
        if isinstance(getattr(env, "setup", None), EnvSetup):
            return env
        inner = getattr(env, "env", None)
        if inner is None or inner is env:
            return None
        env = inner
    return None


def to_trl(task_or_env: Any, n_prompts: int | None = None, split: str = "train", seed: int = 0,
           reward_model: Any = "default", device: Any = "cpu", columns: bool = True) -> TRLData:
    """A task or env as TRL's ``(dataset, reward_funcs, reward_weights)`` (see the module docstring).

    Args:
        task_or_env: a task name (``"arithmetic"``, ``"reasoning_gym:basic_arithmetic"``), a
            :class:`~textenv.tasks.Task` (e.g. a :class:`~textenv.tasks.DatasetTask`), or a textenv env
            (single or vector, wrapped or not): its task, its prompt list and its resolved reward model.
        n_prompts: rows of the dataset. Default: every prompt of ``split`` for a task that lists its prompts
            (a data file) or an env's prompt list, else 1024 drawn from the task's source.
        split: ``"train"`` (default) or ``"test"``; prompts of a generative task are drawn seeded by ``seed``.
        reward_model: for a task: any ``reward_model=`` form (default: the task's; gold for tasks from data).
            Ignored for an env, whose own reward model is used.
        device: where a reward model loaded from a directory runs.
        columns: add the task's per-prompt columns to the dataset.

    Example:
        >>> data = to_trl("arithmetic", n_prompts=4, reward_model="gold")
        >>> data.dataset.column_names
        ['prompt', 'answer']
        >>> data.reward_funcs[1](prompts=["2+3="], completions=["5"])
        [1.0]
    """
    import numpy as np

    from textenv.rewards import resolve_reward_model
    from textenv.tasks.base import check_split

    datasets = _require_datasets()
    check_split(split)
    if n_prompts is not None and (isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1):
        raise ValueError(f"n_prompts must be None or an integer >= 1, got {n_prompts!r}")
    env = _unwrap_env(task_or_env)
    listed: list[str] | None = None
    if env is not None:
        task, rm = env.setup.task, env.setup.reward_model
        listed = list(env.setup.prompts) if env.setup.prompts is not None else None
    else:
        task = get_task(task_or_env)
        rm = resolve_reward_model(reward_model, task, device=device)
    if task.turn_separator is not None:
        raise ValueError(f"task {task.name!r} is multi-turn (the env inserts the other speaker's turns between the "
                         "agent's), and TRL's trainers generate one completion per prompt: to_trl cannot give them "
                         "this task; train on the env with one of our agents (agents.PPO, agents.GRPO, ...) or SB3")
    if listed is None and hasattr(task, "split_prompts"):
        listed = list(dict.fromkeys(task.split_prompts(split)))
    if listed is not None:
        if not listed:
            raise ValueError(f"task {task.name!r} has no prompts in split {split!r}")
        if n_prompts is None:
            prompts = listed
        else:  # cycle through a shuffled copy: every prompt once before any twice
            order = np.random.default_rng(seed).permutation(len(listed))
            prompts = [listed[order[i % len(listed)]] for i in range(n_prompts)]
    else:
        prompts = task.prompts(n_prompts if n_prompts is not None else 1024, split=split, seed=seed)
    table: dict[str, list[Any]] = {"prompt": prompts}
    if columns:
        for name, values in task.prompt_columns(prompts).items():
            if name in table or name in _TRL_KEYWORDS or name == "completion":
                continue  # TRL reserves these names
            table[name] = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    dataset = datasets.Dataset.from_dict(table)
    funcs = [TRLReward("reward_model", task, rm), TRLReward("gold", task)]
    return TRLData(dataset, funcs, [1.0, 0.0])


__all__ = ["TRLData", "TRLReward", "to_trl"]
