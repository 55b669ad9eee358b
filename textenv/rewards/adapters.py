"""Reward-model adapters that need no neural network: plain callables, the task's gold scorer, weighted sums."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from textenv.rewards.base import check_inputs, check_scores, reward_name

if TYPE_CHECKING:
    from textenv.tasks.base import Task


#: Keywords a TRL-style reward function may take besides the task's per-prompt columns.
TRL_KEYWORDS = ("prompts", "completions", "completion_ids")


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none; called positionally
        return None


def _is_async(fn: Any) -> bool:
    call = type(fn).__call__ if callable(fn) and not inspect.isfunction(fn) else None  # inherited too
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or (
        call is not None and inspect.iscoroutinefunction(call))


def calling_convention(fn: Callable[..., Any], columns: Sequence[str] = (), name: str | None = None) -> str:
    """How ``fn`` is called: ``"positional"`` (ours, ``fn(prompts, completions)``) or ``"trl"``
    (TRL's ``fn(prompts=..., completions=..., completion_ids=..., **columns)``), read off its signature.

    TRL's convention is used when ``fn`` has a parameter named ``completions`` or a ``**kwargs`` and a
    call with those keywords binds (a function without ``**kwargs`` is given only the keywords it names);
    otherwise ours, when ``fn(prompts, completions)`` binds. ``columns`` are the task's per-prompt field
    names (:meth:`textenv.tasks.base.Task.prompt_columns`).

    Raises:
        TypeError: ``fn`` is async, or fits neither convention; the message names ``fn`` and its signature.

    Example:
        >>> calling_convention(lambda prompts, completions: [])
        'positional'
        >>> calling_convention(lambda completions, **kwargs: [])
        'trl'
    """
    label = name or getattr(fn, "__qualname__", None) or type(fn).__name__
    if _is_async(fn):
        raise TypeError(
            f"reward function {label!r} is async; the env calls reward models synchronously, so pass a plain "
            f"function (e.g. one that runs asyncio.run(...) on your coroutine)"
        )
    sig = _signature(fn)
    if sig is None:
        return "positional"
    params = sig.parameters.values()
    has_varkw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    available = set(TRL_KEYWORDS) | set(columns)
    ours = ("prompt", "completion")  # placeholders, compared by identity below
    try:
        bound = sig.bind(*ours).arguments
    except TypeError:
        bound = None
    if (bound is not None and not has_varkw and not names & (available - {"prompts", "completions"})
            and bound.get("prompts", ours[0]) is ours[0] and bound.get("completions", ours[1]) is ours[1]):
        return "positional"  # fn(prompts, completions) and it takes nothing more that TRL would pass
    if has_varkw or "completions" in names:
        required = {p.name for p in params if p.default is p.empty
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        positional_only = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
        if not positional_only and required <= available:
            return "trl"
    if bound is not None:
        return "positional"
    known = ", ".join(sorted(available))
    raise TypeError(
        f"reward function {label!r} has signature {label}{sig}, which fits neither calling convention: "
        f"ours, fn(prompts, completions) with two positional lists, or TRL's, fn(completions, **kwargs) "
        f"called with the keywords {known} (a parameter without a default must be one of those)"
    )


class CallableReward:
    """Wraps a reward function (a function or an object with ``__call__``) in one of two conventions.

    - ours: ``fn(prompts, completions) -> Sequence[float]``, two positional lists of str;
    - TRL's: ``fn(completions, **kwargs)``, keyword-only ``fn(*, prompts, completions)`` and the like, called
      as TRL's ``GRPOTrainer`` calls its ``reward_funcs``: ``fn(prompts=..., completions=...,
      completion_ids=..., **columns)``, where ``completion_ids`` are the completions' token ids (lists of
      int, given when the env calls) and ``columns`` the task's per-prompt fields (e.g. ``answer`` for
      arithmetic, ``keywords`` for keywords; see :meth:`~textenv.tasks.base.Task.prompt_columns`). A function
      without ``**kwargs`` gets only the keywords it names.

    The convention is read off the signature at construction (:func:`calling_convention`); an async
    function, or one that fits neither, is a ``TypeError`` naming it and its signature. The scores are
    checked (:func:`~textenv.rewards.base.check_scores`; TRL's ``None`` for "not applicable" is refused
    like any non-number) and returned as a list of floats.

    Args:
        fn: the callable.
        name: name used in errors and logs; default: ``fn.name``, else its qualified name, else its class name.
        task: the task whose :meth:`~textenv.tasks.base.Task.prompt_columns` a TRL-style function gets
            (when the caller passes no ``columns``).

    Example:
        >>> rm = CallableReward(lambda prompts, completions: [len(c) for c in completions], name="length")
        >>> rm(["Q: ", "Q: "], ["ab", "abcd"])
        [2.0, 4.0]
        >>> trl = CallableReward(lambda completions, **kwargs: [len(c) for c in completions], name="trl")
        >>> trl.convention, trl(["Q: "], ["abc"])
        ('trl', [3.0])
    """

    def __init__(
        self, fn: Callable[..., Sequence[float]], name: str | None = None, task: Task | None = None
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
        self.task = task
        columns = tuple(task.prompt_column_names) if task is not None else ()
        self.convention: str = calling_convention(fn, columns, self.name)
        sig = _signature(fn)
        self._accepts: frozenset[str] | None = None  # keywords a TRL-style fn takes; None: all (**kwargs)
        if self.convention == "trl" and sig is not None and not any(
                p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            self._accepts = frozenset(sig.parameters)
        #: Whether the caller should pass ``completion_ids`` and ``columns`` (see EnvSetup.score).
        self.wants_extras: bool = self.convention == "trl"

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        columns: dict[str, Sequence[Any]] | None = None,
    ) -> list[float]:
        """One checked float per (prompt, completion) pair (``completion_ids``/``columns``: TRL style only)."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        if self.convention == "positional":
            out = self.fn(prompts, completions)
        else:
            out = self.fn(**self._trl_kwargs(prompts, completions, completion_ids, columns))
        if inspect.isawaitable(out):
            if inspect.iscoroutine(out):
                out.close()  # never awaited; close it so Python does not warn later
            raise TypeError(
                f"reward function {self.name!r} returned an awaitable; async reward functions are not "
                f"supported, pass a plain function"
            )
        return check_scores(out, len(prompts), self.name).tolist()

    def _trl_kwargs(self, prompts: list[str], completions: list[str],
                    completion_ids: Sequence[Sequence[int]] | None,
                    columns: dict[str, Sequence[Any]] | None) -> dict[str, Any]:
        given: dict[str, Sequence[Any]] = dict(columns) if columns is not None else (
            dict(self.task.prompt_columns(prompts)) if self.task is not None else {})
        kwargs: dict[str, Any] = {k: list(v) for k, v in given.items() if k not in TRL_KEYWORDS}
        kwargs["prompts"] = prompts
        kwargs["completions"] = completions
        if completion_ids is not None:
            kwargs["completion_ids"] = [list(map(int, ids)) for ids in completion_ids]
        if self._accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        sig = _signature(self.fn)
        if sig is not None:
            try:
                sig.bind(**kwargs)
            except TypeError as exc:
                raise TypeError(
                    f"reward function {self.name!r}{sig} cannot be called with the keywords {sorted(kwargs)} "
                    f"({exc}); completion_ids are given when the env calls it, columns when a task has them"
                ) from None
        return kwargs

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
        #: Whether any component takes ``completion_ids``/``columns`` (a TRL-style function).
        self.wants_extras: bool = any(getattr(rm, "wants_extras", False) for rm, _ in checked)

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        columns: dict[str, Sequence[Any]] | None = None,
    ) -> list[float]:
        """The weighted sum of the components' checked scores (extras go to the components that take them)."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        total = np.zeros(len(prompts), dtype=np.float64)
        for rm, weight in self.components:
            if getattr(rm, "wants_extras", False):
                out = rm(prompts, completions, completion_ids=completion_ids, columns=columns)
            else:
                out = rm(prompts, completions)
            total += weight * check_scores(out, len(prompts), reward_name(rm))
        return total.tolist()

    def __repr__(self) -> str:
        return f"CompositeReward({self.name!r})"
