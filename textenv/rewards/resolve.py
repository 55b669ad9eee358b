"""Turning a ``reward_model=`` argument into a reward model (see DESIGN.md, "Reward models")."""

from __future__ import annotations

import functools
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from textenv.models import REWARD_DIR, ModelLoadError, quiet_progress, resolve_device
from textenv.rewards.adapters import CallableReward, CompositeReward, GoldReward
from textenv.rewards.base import REWARD_METADATA_FILE, RewardModel
from textenv.rewards.ensemble import ENSEMBLE_FILE, Ensemble, load_ensemble
from textenv.rewards.hf import (
    HFClassifierReward,
    LearnedRewardModel,
    check_classifier_object,
    check_model_dir,
)
from textenv.rewards.toxicity import ToxicityReward

if TYPE_CHECKING:
    from textenv.tasks.base import Task

_ADAPTERS = (CallableReward, GoldReward, CompositeReward, HFClassifierReward, ToxicityReward)


def resolve_reward_model(
    spec: Any, task: Task | None = None, device: str | torch.device = "cpu", tokenizer: Any = None
) -> RewardModel:
    """A reward model from any of the accepted forms:

    - ``"default"``: the task's shipped learned reward model (``textenv/data/rewards/<task.name>``), or its
      gold scorer for a task whose ``default_reward_model`` is ``"gold"`` (tasks from data);
    - ``"gold"``: the task's exact scorer, :class:`GoldReward`;
    - ``"toxicity"``: civility by the detox task's toxicity lexicon, :class:`ToxicityReward` (any task);
    - a directory (``str`` or ``Path``): a model saved by ``textenv train-reward``
      (:class:`LearnedRewardModel`; with ``--ensemble K``, an :class:`Ensemble` of its K members) or any Hugging Face sequence-classification model
      (:class:`HFClassifierReward`, ``num_labels=1`` or a label named like "positive"; for another label
      pass ``HFClassifierReward(path, label=...)`` itself);
    - a Hugging Face model id (``"org/name"``) that is not an existing path: the model's snapshot in the
      local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), loaded like a directory; nothing
      is downloaded (fetch it first, e.g. ``huggingface-cli download org/name``);
    - a ``transformers`` ``PreTrainedModel`` that is a sequence classifier, e.g. from
      ``AutoModelForSequenceClassification`` (:class:`HFClassifierReward`, kept on its device). Its
      tokenizer: ``tokenizer`` (the env's ``reward_tokenizer=``, or its ``tokenizer=`` when not
      ``"default"``), else the one saved in the local directory or cached id ``model.name_or_path``;
    - a ``transformers`` ``pipeline("text-classification")``: its model and tokenizer, score = the logit
      of the chosen label (the only one, else a label named like "positive"), not the pipeline's softmax;
    - a callable ``fn(prompts, completions)``, an object with ``__call__``, or a TRL-style
      ``fn(completions, **kwargs)`` (:class:`CallableReward`, which reads the convention off the signature
      and gets ``task``'s per-prompt columns); the adapters of this package are returned as they are;
    - a list of the above, each optionally as a ``(spec, weight)`` tuple: a :class:`CompositeReward`
      (weight 1 where none is given); elements are resolved recursively;
    - an :class:`~textenv.rewards.ensemble.Ensemble` of the above: a copy with its members resolved.

    Directory models (the default included) are loaded once per process, resolved path and device (see
    :func:`load_reward_model`) onto ``device``: ``"cpu"`` (default), ``"auto"`` (cuda when available) or
    ``"cuda[:N]"``; a bad value or CUDA asked for without CUDA is a ``ValueError`` naming it. Model and
    pipeline objects stay on their own device.

    Raises:
        ModelLoadError: a missing default, a missing directory that is not a cached HF id, or a directory
            that does not load; the message names the path (and the cache directory searched).
        TypeError: a callable whose signature fits no convention, an async one, a transformers model that
            is not a sequence classifier, or a pipeline of another task.
        ValueError: any other spec, naming it; a model object whose tokenizer cannot be found.

    Example:
        >>> rm = resolve_reward_model([(lambda p, c: [1.0] * len(c), 0.5), "gold"], task)  # doctest: +SKIP
        >>> rm.name  # doctest: +SKIP
        '0.5*<lambda> + 1*gold:sentiment'
    """
    device = resolve_device(device, "reward model device")
    if isinstance(spec, Ensemble):  # its members are resolved like any reward_model= (a copy; K models)
        return spec.resolve(lambda member: resolve_reward_model(member, task, device, tokenizer))
    if isinstance(spec, _ADAPTERS):
        return spec
    if isinstance(spec, str) and spec == "toxicity":
        return ToxicityReward()
    if isinstance(spec, str) and spec in ("default", "gold"):
        if task is None:
            raise ValueError(f"reward_model={spec!r} needs a task, got task=None")
        if spec == "gold" or getattr(task, "default_reward_model", "learned") == "gold":
            return GoldReward(task)
        path = REWARD_DIR / task.name
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"the default reward model for task {task.name!r} is missing from {str(path)!r}; "
                f"run `textenv build-defaults`"
            )
        return load_reward_model(path, device=device)
    if isinstance(spec, (str, os.PathLike)):
        if not str(spec).strip():
            raise ValueError(f"reward_model is an empty string {str(spec)!r}; give 'default', 'gold', a "
                             f"directory or a Hugging Face id")
        if not Path(spec).expanduser().exists():
            return load_reward_model(cached_hf_snapshot(str(spec)), device=device)
        if (Path(spec).expanduser() / ENSEMBLE_FILE).is_file():  # textenv train-reward --ensemble K
            return load_ensemble(Path(spec).expanduser(), lambda member: load_reward_model(member, device=device))
        return load_reward_model(spec, device=device)
    if isinstance(spec, tuple) and _is_weighted(spec):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("reward_model list is empty; give at least one reward model")
        components: list[tuple[RewardModel, float]] = []
        for item in spec:
            if isinstance(item, tuple) and _is_weighted(item):
                components.append((resolve_reward_model(item[0], task, device, tokenizer), float(item[1])))
            else:
                components.append((resolve_reward_model(item, task, device, tokenizer), 1.0))
        return CompositeReward(components)
    hf = _transformers_reward(spec, tokenizer)
    if hf is not None:
        return hf
    if callable(spec):
        return CallableReward(spec, task=task)
    raise ValueError(
        f"unknown reward_model {spec!r} ({type(spec).__name__}); expected 'default', 'gold', 'toxicity', a directory, "
        f"a callable, or a list of them with optional weights"
    )


def load_reward_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> HFClassifierReward:
    """The reward model in directory ``path``, loaded once per process per (resolved path, device) onto
    ``device`` (``"cpu"``, ``"auto"``, ``"cuda[:N]"`` or a ``torch.device``).

    A directory with ``textenv_reward.json`` gives a :class:`LearnedRewardModel`, any other
    sequence-classification directory an :class:`HFClassifierReward` with the default label. The same
    object is returned on every call (never copied); ``load_reward_model.cache_clear()`` forgets them.
    """
    return _load_reward_dir(str(check_model_dir(path)), str(resolve_device(device, "reward model device")))


@functools.lru_cache(maxsize=16)
def _load_reward_dir(path: str, device: str) -> HFClassifierReward:
    if (Path(path) / REWARD_METADATA_FILE).exists():
        return LearnedRewardModel(path, device=device)
    return HFClassifierReward(path, device=device)


load_reward_model.cache_clear = _load_reward_dir.cache_clear  # type: ignore[attr-defined]


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache read now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hf_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of the Hugging Face model ``repo_id`` in :func:`hf_cache_dir`.

    Nothing is downloaded. Raises :class:`~textenv.models.ModelLoadError` naming ``repo_id`` and the cache
    directory when ``repo_id`` is not a valid id or not cached (so a mistyped path gets a clear error too).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    cache = hf_cache_dir()
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelLoadError(
            f"reward model path {repo_id!r} does not exist (a reward_model string is 'default', 'gold', a "
            f"directory or a Hugging Face id in the local cache)"
        ) from None
    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache), local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, a damaged cache entry, ...
        raise ModelLoadError(
            f"reward model {repo_id!r} is neither an existing directory nor a model in the local Hugging Face "
            f"cache {str(cache)!r}; fetch it first (e.g. `huggingface-cli download {repo_id}`), set "
            f"HF_HUB_CACHE, or give a directory"
        ) from None


def _transformers_reward(spec: Any, tokenizer: Any) -> HFClassifierReward | None:
    """An :class:`HFClassifierReward` for a transformers model or pipeline object; None for anything else."""
    from transformers import Pipeline, PreTrainedModel, PreTrainedTokenizerBase

    if isinstance(spec, PreTrainedTokenizerBase):
        raise TypeError(
            f"reward_model is a tokenizer ({type(spec).__name__}), not a reward model; pass it as "
            f"reward_tokenizer= next to a sequence-classification model"
        )
    if isinstance(spec, Pipeline):
        task = getattr(spec, "task", "")
        if task not in ("text-classification", "sentiment-analysis"):
            raise TypeError(
                f"reward_model is a transformers {type(spec).__name__} for task {task!r}; only a "
                f"pipeline('text-classification') (or a sequence-classification model) can be a reward model"
            )
        if spec.tokenizer is None:
            raise ValueError(f"reward_model pipeline {spec.model.name_or_path!r} has no tokenizer")
        return HFClassifierReward(spec.model, tokenizer=spec.tokenizer, device=spec.model.device)
    if not isinstance(spec, PreTrainedModel):
        return None
    kind = type(check_classifier_object(spec)).__name__
    name = str(getattr(spec, "name_or_path", "") or "")
    if tokenizer is None:
        tokenizer = _own_tokenizer(name)
    if tokenizer is None:
        raise ValueError(
            f"reward_model is a {kind} object ({name or 'no name_or_path'}) and its tokenizer was not found: "
            f"pass reward_tokenizer= to the env (a tokenizer object, a directory or 'default'), or save the "
            f"tokenizer in the model's directory"
        )
    return HFClassifierReward(spec, tokenizer=tokenizer, device=spec.device)


def _own_tokenizer(name_or_path: str) -> Any:
    """The tokenizer saved with a model: in the local directory ``name_or_path``, else in the HF cache."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer

    p = Path(name_or_path).expanduser()
    try:
        with quiet_progress():
            if p.is_dir():
                return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            return AutoTokenizer.from_pretrained(str(cached_hf_snapshot(name_or_path)), local_files_only=True)
    except Exception:  # no tokenizer files there, not cached, not an id
        return None


def _is_weighted(item: tuple[Any, ...]) -> bool:
    """``(spec, weight)`` with a real, non-bool weight."""
    return len(item) == 2 and isinstance(item[1], numbers.Real) and not isinstance(item[1], bool)
