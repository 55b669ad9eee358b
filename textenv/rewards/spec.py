"""What a checkpoint records about its reward model, and rebuilding the ``reward_model=`` argument from it.

:func:`describe_reward_model` turns any accepted ``reward_model=`` form (see
:func:`~textenv.rewards.resolve.resolve_reward_model`), or an already-resolved adapter, into a JSON-able
dict with a ``"kind"``:

- ``"builtin-default"``: the task's shipped learned reward model (``reward_model="default"``);
- ``"gold"``: the task's exact scorer (``"task"``: the task's name when it came from a :class:`GoldReward`);
- ``"directory"``: a reward-model directory, by absolute ``"path"`` and ``"sha256"`` of its files;
- ``"hf-id"``: a string that is not an existing path (``"name"``), passed back as given;
- ``"composite"``: ``"components"``, a list of ``{"weight": w, "reward": <spec>}``;
- ``"ensemble"``: an :class:`~textenv.rewards.ensemble.Ensemble`: ``"members"`` (a list of specs),
  ``"aggregate"`` and ``"uwo_lambda"``;
- ``"callable"`` / ``"object"``: a Python function or object, by its qualified ``"name"`` only.

:func:`rebuild_reward_model` goes the other way. The last two kinds cannot be rebuilt from a file: it
raises ``ValueError`` naming the reward; a directory whose files changed since the checkpoint was written
gives a :class:`RewardModelChangedWarning` (the directory still loads; the numbers may differ).

Example:
    >>> describe_reward_model("gold")
    {'kind': 'gold'}
    >>> rebuild_reward_model({"kind": "composite", "components": [{"weight": 0.5, "reward": {"kind": "gold"}}]})
    [('gold', 0.5)]
"""

from __future__ import annotations

import hashlib
import numbers
import os
import warnings
from pathlib import Path
from typing import Any

from textenv.rewards.adapters import CallableReward, CompositeReward, GoldReward
from textenv.rewards.ensemble import Ensemble
from textenv.rewards.hf import HFClassifierReward, LearnedRewardModel

REWARD_KINDS = ("builtin-default", "gold", "directory", "hf-id", "composite", "ensemble", "callable", "object")


class RewardModelChangedWarning(UserWarning):
    """A checkpoint's reward-model directory no longer holds the files it was trained against."""


def directory_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 over the relative names and bytes of every file under ``path``, in sorted order."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"reward model directory {str(root)!r} does not exist")
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _qualname(obj: Any) -> str:
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", type(obj).__name__)
    return f"{module}.{name}" if module else str(name)


def _is_weighted(item: Any) -> bool:
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], numbers.Real)
            and not isinstance(item[1], bool))


def _directory(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path).expanduser().resolve()
    return {"kind": "directory", "path": str(p), "sha256": directory_sha256(p)}


def describe_reward_model(spec: Any) -> dict[str, Any]:
    """The JSON-able description of ``spec`` (any ``reward_model=`` form or a resolved adapter)."""
    if spec is None or (isinstance(spec, str) and spec == "default"):
        return {"kind": "builtin-default"}
    if isinstance(spec, str) and spec == "gold":
        return {"kind": "gold"}
    if isinstance(spec, GoldReward):
        return {"kind": "gold", "task": spec.task.name}
    if isinstance(spec, (str, os.PathLike)):
        if Path(spec).expanduser().is_dir():
            return _directory(spec)
        return {"kind": "hf-id", "name": str(spec)}
    # a LearnedRewardModel has one scoring rule; a plain HFClassifierReward may carry a label choice, so it is
    # recorded by name only (rebuilding it from the directory could pick another logit)
    if isinstance(spec, LearnedRewardModel) and spec.path is not None:
        return _directory(spec.path)
    if isinstance(spec, Ensemble):
        return {"kind": "ensemble", "aggregate": spec.aggregate, "uwo_lambda": spec.uwo_lambda,
                "members": [describe_reward_model(m) for m in spec.members]}
    if isinstance(spec, CompositeReward):
        return {"kind": "composite", "components": [{"weight": float(w), "reward": describe_reward_model(rm)}
                                                    for rm, w in spec.components]}
    if _is_weighted(spec):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        components = []
        for item in spec:
            rm, w = (item[0], float(item[1])) if _is_weighted(item) else (item, 1.0)
            components.append({"weight": w, "reward": describe_reward_model(rm)})
        return {"kind": "composite", "components": components}
    if isinstance(spec, CallableReward):
        return {"kind": "callable", "name": spec.name, "qualname": _qualname(spec.fn)}
    if isinstance(spec, HFClassifierReward):
        return {"kind": "object", "name": spec.name, "qualname": _qualname(spec)}
    if callable(spec) and hasattr(spec, "__qualname__"):
        return {"kind": "callable", "name": str(spec.__qualname__), "qualname": _qualname(spec)}
    return {"kind": "object", "name": type(spec).__qualname__, "qualname": _qualname(spec)}


def is_rebuildable(desc: dict[str, Any]) -> bool:
    """Whether :func:`rebuild_reward_model` can rebuild ``desc`` (no Python callable or object inside)."""
    kind = desc.get("kind")
    if kind == "composite":
        return all(is_rebuildable(c["reward"]) for c in desc.get("components", []))
    if kind == "ensemble":
        return all(is_rebuildable(m) for m in desc.get("members", []))
    return kind in ("builtin-default", "gold", "directory", "hf-id")


def rebuild_reward_model(desc: dict[str, Any], where: str = "the checkpoint") -> Any:
    """The ``reward_model=`` argument ``desc`` describes (``where`` names its file in errors).

    Raises:
        ValueError: an unknown kind, or a callable/object reward (it cannot be rebuilt from a file).
    """
    if not isinstance(desc, dict) or desc.get("kind") not in REWARD_KINDS:
        raise ValueError(f"{where}: unknown reward model spec {desc!r}; kinds are {list(REWARD_KINDS)}")
    kind = desc["kind"]
    if kind == "builtin-default":
        return "default"
    if kind == "gold":
        if desc.get("task"):
            from textenv.tasks import get_task

            return GoldReward(get_task(desc["task"]))
        return "gold"
    if kind == "directory":
        path = Path(desc["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"{where}: reward model directory {str(path)!r} does not exist")
        if desc.get("sha256") and directory_sha256(path) != desc["sha256"]:
            warnings.warn(f"{where}: the reward model directory {str(path)!r} changed since the checkpoint was "
                          f"written (sha256 {desc['sha256'][:12]}...); loading it as it is now",
                          RewardModelChangedWarning, stacklevel=2)
        return str(path)
    if kind == "hf-id":
        return str(desc["name"])
    if kind == "composite":
        return [(rebuild_reward_model(c["reward"], where), float(c["weight"])) for c in desc["components"]]
    if kind == "ensemble":
        aggregate = str(desc.get("aggregate", "mean"))
        return Ensemble([rebuild_reward_model(m, where) for m in desc.get("members", [])], aggregate,
                        desc.get("uwo_lambda") if aggregate == "uwo" else None)
    raise ValueError(f"{where}: the reward model {desc.get('name')!r} ({desc.get('qualname', kind)}) is a Python "
                     f"{kind} and cannot be rebuilt from a file; pass env= or env_kwargs= (with reward_model=...) "
                     f"to load")
