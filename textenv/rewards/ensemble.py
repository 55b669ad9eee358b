"""Reward-model ensembles (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization").

``Ensemble([rm_1, ..., rm_K], aggregate=...)`` scores every pair with each member and aggregates the K
scores R_1..R_K of a pair:

- ``"mean"``: mean_k R_k;
- ``"min"``: min_k R_k (worst-case optimisation, WCO);
- ``"uwo"``: mean_k R_k - ``uwo_lambda`` * var_k R_k (uncertainty-weighted optimisation), with the
  population variance 1/K sum_k (R_k - mean)^2, as the paper defines it.

The members' spread is the population standard deviation sqrt(var_k R_k) of each pair; after every call it is
in :attr:`Ensemble.last_std`, and the envs put it in ``info["reward_model_std"]`` at the end of an episode.
Members are any ``reward_model=`` form (``"default"``, ``"gold"``, directories, callables...): the env
resolves them with its task (:func:`textenv.rewards.resolve_reward_model`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from textenv.rewards.base import check_inputs, check_scores, reward_name

AGGREGATES = ("mean", "min", "uwo")


class Ensemble:
    """K reward models scored together and aggregated; see the module docstring.

    Args:
        members: at least 2 reward models (any ``reward_model=`` form; resolved by the env).
        aggregate: ``"mean"``, ``"min"`` or ``"uwo"``.
        uwo_lambda: the weight lambda >= 0 of the variance for ``"uwo"`` (Coste et al. sweep 0.01 to 1;
            the default 0.1 is in that range). Refused with another ``aggregate`` unless left at None.
        name: used in errors and logs; default ``"ensemble-<aggregate>(a, b, ...)"``.

    Example:
        >>> a = lambda p, c: [1.0] * len(c)
        >>> b = lambda p, c: [3.0] * len(c)
        >>> Ensemble([a, b], aggregate="uwo", uwo_lambda=0.5)(["x"], ["y"])  # 2 - 0.5 * 1
        [1.5]
    """

    def __init__(self, members: Sequence[Any], aggregate: str = "mean", uwo_lambda: float | None = None,
                 name: str | None = None) -> None:
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or len(members) < 2:
            raise ValueError(f"Ensemble needs a list of at least 2 reward models, got {members!r:.200}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"Ensemble aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
        if uwo_lambda is not None:
            if aggregate != "uwo":
                raise ValueError(f"uwo_lambda {uwo_lambda!r} is only for aggregate='uwo', got {aggregate!r}")
            if (isinstance(uwo_lambda, bool) or not isinstance(uwo_lambda, numbers.Real)
                    or not math.isfinite(float(uwo_lambda)) or uwo_lambda < 0):
                raise ValueError(f"uwo_lambda must be a finite number >= 0, got {uwo_lambda!r}")
        self.members = list(members)
        self.aggregate = aggregate
        self.uwo_lambda = float(uwo_lambda) if uwo_lambda is not None else (0.1 if aggregate == "uwo" else None)
        self.name: str = name or f"ensemble-{aggregate}({', '.join(_member_name(m) for m in self.members)})"
        #: the members' population std of each pair of the last call (None before the first)
        self.last_std: np.ndarray | None = None

    @property
    def resolved(self) -> bool:
        """Whether every member is callable (the env resolves string members, see :meth:`resolve`)."""
        return all(callable(m) for m in self.members)

    def resolve(self, resolve_one: Callable[[Any], Any]) -> Ensemble:
        """A copy with every member passed through ``resolve_one`` (the env's reward-model resolution)."""
        return Ensemble([resolve_one(m) for m in self.members], self.aggregate,
                        self.uwo_lambda if self.aggregate == "uwo" else None, name=self.name)

    def member_scores(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The members' checked scores, (K, n) float64 (an error names the member)."""
        if not self.resolved:
            raise ValueError(f"{self.name}: members {[m for m in self.members if not callable(m)]!r} are not "
                             f"resolved; pass the Ensemble as an env's reward_model= (or resolve_reward_model)")
        prompts, completions = check_inputs(prompts, completions, self.name)
        return np.stack([check_scores(m(prompts, completions), len(prompts), reward_name(m))
                         for m in self.members])

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The aggregated score of each pair; :attr:`last_std` holds the members' spread."""
        scores = self.member_scores(prompts, completions)  # (K, n)
        mean, var = scores.mean(axis=0), scores.var(axis=0)  # population variance, ddof = 0
        self.last_std = np.sqrt(var)
        if self.aggregate == "mean":
            out = mean
        elif self.aggregate == "min":
            out = scores.min(axis=0)
        else:
            out = mean - float(self.uwo_lambda) * var  # type: ignore[arg-type]
        return [float(x) for x in out]

    def __repr__(self) -> str:
        return f"Ensemble({self.name!r})"


def _member_name(member: Any) -> str:
    if isinstance(member, str):
        return member
    return reward_name(member)


#: The file that marks a directory as an ensemble saved by ``textenv train-reward --ensemble K``
#: (:func:`textenv.training.reward.train_reward_ensemble`): its members are subdirectories beside it.
ENSEMBLE_FILE = "textenv_ensemble.json"


def read_ensemble_file(path: str | Any) -> dict[str, Any]:
    """The checked contents of ``path/ENSEMBLE_FILE``: ``members`` (subdirectory names of ``path``, no path
    separators), ``aggregate`` and ``uwo_lambda``; anything else is a ``ValueError`` naming the file."""
    from pathlib import Path

    from textenv import io

    file = Path(path) / ENSEMBLE_FILE
    meta = io.read_json(file, "reward-model ensemble")
    members = meta.get("members") if isinstance(meta, dict) else None
    if (not isinstance(members, list) or len(members) < 2
            or not all(isinstance(m, str) and m and Path(m).name == m and m not in (".", "..") for m in members)):
        raise ValueError(f"{str(file)!r}: 'members' must list at least 2 subdirectory names, got {members!r:.200}")
    if meta.get("aggregate", "mean") not in AGGREGATES:
        raise ValueError(f"{str(file)!r}: 'aggregate' must be one of {list(AGGREGATES)}, got {meta['aggregate']!r}")
    for m in members:
        if not (Path(path) / m).is_dir():
            raise ValueError(f"{str(file)!r}: member directory {str(Path(path) / m)!r} does not exist")
    return meta


def load_ensemble(path: str | Any, resolve_one: Callable[[Any], Any]) -> Ensemble:
    """The :class:`Ensemble` saved in directory ``path`` (see :data:`ENSEMBLE_FILE`), its member directories
    passed through ``resolve_one`` (e.g. :func:`textenv.rewards.load_reward_model`)."""
    from pathlib import Path

    meta = read_ensemble_file(path)
    aggregate = meta.get("aggregate", "mean")
    return Ensemble([resolve_one(str(Path(path) / m)) for m in meta["members"]], aggregate,
                    meta.get("uwo_lambda") if aggregate == "uwo" else None,
                    name=f"ensemble-{aggregate}({Path(path).name}, K={len(meta['members'])})")
