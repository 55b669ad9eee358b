"""Hugging Face sequence-classification models as reward models, including the ones our trainer saves.

The model reads ``prompt + completion`` (plain concatenation, no separator) and the score is the logit of
one label. Text longer than the model's context keeps its *end* (the completion), since that is what is
being scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from textenv.models import ModelLoadError, load_tokenizer, quiet_progress
from textenv.rewards.base import INPUT_FORMAT, REWARD_METADATA_FILE, check_inputs, check_scores

#: Label names picked, case-insensitively, when a multi-label classifier is given no ``label=``.
POSITIVE_LABELS = ("positive", "pos", "label_positive")


# ---------------------------------------------------------------------------- encoding (shared with training)
def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> int | None:
    """The longest input the model (and tokenizer) accept, or ``None`` when neither says."""
    limits = [getattr(model.config, key, None) for key in ("n_positions", "max_position_embeddings")]
    if tokenizer is not None:
        limits.append(tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None)
    known = [int(x) for x in limits if isinstance(x, int) and x > 0]
    return min(known) if known else None


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None
) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length``.

    Tokenizers that add no special tokens (byte-level BPE, GPT-2) keep the *last* ``max_length`` tokens,
    so the completion survives; tokenizers that add special tokens (``[CLS] ... [SEP]``) truncate with
    their own rules so those tokens stay in place.
    """
    if max_length is not None and tokenizer.num_special_tokens_to_add() > 0:
        return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    ids = tokenizer(list(texts))["input_ids"]
    if max_length is not None:
        ids = [x[-max_length:] for x in ids]
    return [x if x else [tokenizer.pad_token_id] for x in ids]  # an empty text still needs one position


def pad_batch(seqs: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``(input_ids, attention_mask)``, both ``(B, T)`` int64.

    Example:
        >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Give ``tokenizer`` a pad token if it has none (eos, else sep, unk, cls, else token 0), and copy its
    id to ``model.config.pad_token_id``: GPT-2-style classifiers pool at the last non-pad token and refuse
    batches larger than one without it."""
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.sep_token, tokenizer.unk_token, tokenizer.cls_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def resolve_label(config: Any, label: int | str | None, where: str) -> int:
    """The logit index that is the reward: ``label`` as an index or a name in ``config.label2id``.

    ``num_labels == 1`` needs no label. With several labels and ``label=None``, a label named like
    "positive" / "pos" is used if the config has one; otherwise this asks for ``label=``.
    """
    num_labels = int(config.num_labels)
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    if isinstance(label, bool):
        raise ValueError(f"label must be an int index or a label name, got {label!r} for {where}")
    if isinstance(label, int):
        if not 0 <= label < num_labels:
            raise ValueError(f"label {label} is out of range for {where}, which has {num_labels} labels")
        return label
    if isinstance(label, str):
        lowered = {k.lower(): v for k, v in label2id.items()}
        if label in label2id:
            return label2id[label]
        if label.lower() in lowered:
            return lowered[label.lower()]
        raise ValueError(f"label {label!r} is not one of the labels of {where}: {sorted(label2id)}")
    if label is not None:
        raise ValueError(f"label must be an int index, a label name or None, got {label!r}")
    if num_labels == 1:
        return 0
    lowered = {k.lower(): v for k, v in label2id.items()}
    for name in POSITIVE_LABELS:
        if name in lowered:
            return lowered[name]
    raise ValueError(
        f"{where} has {num_labels} labels {sorted(label2id)} and none is named like 'positive'; "
        f"pass label= (an index or one of those names) to choose the logit used as reward"
    )


# ---------------------------------------------------------------------------- loading
def check_model_dir(path: str | os.PathLike[str]) -> Path:
    """The resolved directory, or :class:`~textenv.models.ModelLoadError` naming ``path`` if it is missing,
    not a directory or has no ``config.json``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"reward model path {str(path)!r} does not exist")
    if not p.is_dir():
        raise ModelLoadError(f"reward model path {str(path)!r} is not a directory")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"reward model directory {str(path)!r} has no config.json")
    return p.resolve()


def load_classifier(path: str | os.PathLike[str]) -> PreTrainedModel:
    """A float32 ``AutoModelForSequenceClassification`` in eval mode; any failure is a ``ModelLoadError``."""
    p = check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(str(p))
    except Exception as exc:  # JSON errors, unknown model_type, ...
        raise ModelLoadError(f"could not read the config of reward model {str(p)!r}: {exc}") from exc
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelLoadError(
            f"reward model directory {str(p)!r} holds a {architectures[0]}, not a sequence-classification "
            f"model; train one with `textenv train-reward` (it can start from this checkpoint)"
        )
    try:
        with quiet_progress():
            model = AutoModelForSequenceClassification.from_pretrained(str(p), dtype=torch.float32)
    except Exception as exc:  # missing or corrupt weights raise OSError, SafetensorError, RuntimeError...
        raise ModelLoadError(f"could not load the weights of reward model {str(p)!r}: {exc}") from exc
    return model.eval()


def check_classifier_object(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` itself, or ``TypeError`` naming its class when it is not a sequence classifier."""
    kind = type(model).__name__
    if not kind.endswith("ForSequenceClassification"):
        raise TypeError(
            f"reward_model is a transformers {kind}, not a sequence-classification model; load one with "
            f"AutoModelForSequenceClassification (or train one with `textenv train-reward`)"
        )
    return model


def _load_dir_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load a tokenizer from reward model directory {str(path)!r} ({exc}); pass tokenizer="
        ) from exc


def _as_tokenizer(tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(
            f"a reward model's tokenizer must be a tokenizer object, 'default' or a directory, got "
            f"{tokenizer!r} ({type(tokenizer).__name__})"
        )
    if str(tokenizer) == "default":
        return load_tokenizer("default")
    p = Path(tokenizer).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"tokenizer path {str(tokenizer)!r} is not a directory")
    return _load_dir_tokenizer(p.resolve())


# ---------------------------------------------------------------------------- adapters
class HFClassifierReward:
    """Any Hugging Face ``AutoModelForSequenceClassification`` as a reward model.

    Score = the logit of ``label`` for the text ``prompt + completion``, computed in padded batches under
    ``torch.inference_mode`` with the model in eval mode.

    Args:
        path_or_model: a ``save_pretrained`` directory or an already-loaded model (used as is, not copied;
            it is moved to ``device`` and put in eval mode).
        tokenizer: a tokenizer, ``"default"`` or a directory; default: the one saved in the model directory.
            A tokenizer without a pad token gets one (see :func:`ensure_pad_token`).
        label: ``None`` (the only logit when ``num_labels == 1``, else a label named like "positive"), a
            logit index, or a label name from ``config.label2id``.
        batch_size: texts per forward pass.
        device: torch device for the forward passes.
        name: name used in errors and logs; default: the directory path or the model's ``name_or_path``.

    Example:
        >>> rm = HFClassifierReward("runs/rm", label="POSITIVE")  # doctest: +SKIP
        >>> rm(["Review: "], ["a wonderful film."])  # doctest: +SKIP
        [3.1]
    """

    def __init__(
        self,
        path_or_model: str | os.PathLike[str] | PreTrainedModel,
        tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
        label: int | str | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.path: Path | None
        if isinstance(path_or_model, (str, os.PathLike)):
            self.path = check_model_dir(path_or_model)
            model = load_classifier(self.path)
        elif isinstance(path_or_model, PreTrainedModel):
            self.path = None
            model = check_classifier_object(path_or_model)
        else:
            raise TypeError(
                f"path_or_model must be a directory or a PreTrainedModel, got {type(path_or_model).__name__}"
            )
        self.name: str = name or (
            str(self.path) if self.path is not None else str(model.name_or_path or type(model).__name__)
        )
        if tokenizer is None:
            if self.path is None:
                raise ValueError(
                    f"reward model {self.name!r} was given as a model object; pass tokenizer= as well"
                )
            tokenizer = _load_dir_tokenizer(self.path)
        self.tokenizer = _as_tokenizer(tokenizer)
        self.device = torch.device(device)
        model.to(self.device)  # type: ignore[arg-type]  # nn.Module.to, in place
        self.model = model.eval()
        ensure_pad_token(self.tokenizer, self.model)
        embeddings = self.model.get_input_embeddings()
        n_embed = getattr(embeddings, "num_embeddings", None)
        if isinstance(n_embed, int) and len(self.tokenizer) > n_embed:
            raise ValueError(
                f"reward model {self.name!r} has {n_embed} token embeddings but its tokenizer has "
                f"{len(self.tokenizer)} tokens; pass the tokenizer the model was trained with"
            )
        self.label_index = resolve_label(self.model.config, label, f"reward model {self.name!r}")
        self.batch_size = batch_size
        self.max_length = context_length(self.model, self.tokenizer)

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """The reward of each full text (already joined), in the input order."""
        if not texts:
            return []
        ids = encode_texts(self.tokenizer, texts, self.max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        out = torch.empty(len(ids), dtype=torch.float64)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                input_ids, attention_mask = pad_batch([ids[i] for i in idx], self.tokenizer.pad_token_id)
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
                ).logits  # (B, num_labels)
                out[torch.as_tensor(idx)] = logits[:, self.label_index].double().cpu()
        return out.tolist()

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The logit of the chosen label for each ``prompt + completion``."""
        prompts, completions = check_inputs(prompts, completions, self.name)
        scores = self.score_texts([p + c for p, c in zip(prompts, completions, strict=True)])
        return check_scores(scores, len(prompts), self.name).tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, label={self.label_index})"


class LearnedRewardModel(HFClassifierReward):
    """A reward model saved by :func:`textenv.training.reward.train_reward_model` (or ``textenv train-reward``).

    It is a one-logit classifier plus its tokenizer and a ``textenv_reward.json`` metadata file (loss,
    task, steps, held-out metrics, input format), available as :attr:`metadata`. MSE-trained models predict
    the score on the training data's scale; Bradley-Terry ones give a score whose differences are log-odds
    of preference.

    Example:
        >>> rm = LearnedRewardModel("textenv/data/rewards/sentiment")  # doctest: +SKIP
        >>> rm.metadata["loss"]  # doctest: +SKIP
        'mse'
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ) -> None:
        p = check_model_dir(path)
        self.metadata: dict[str, Any] = read_reward_metadata(p)
        if self.metadata.get("input_format", INPUT_FORMAT) != INPUT_FORMAT:
            raise ModelLoadError(
                f"reward model {str(p)!r} has input_format {self.metadata.get('input_format')!r}; "
                f"this version reads {INPUT_FORMAT!r}"
            )
        super().__init__(p, tokenizer=None, label=0, batch_size=batch_size, device=device, name=name)


def read_reward_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``textenv_reward.json`` of a saved reward model; a missing or corrupt file is a ``ModelLoadError``."""
    file = Path(path) / REWARD_METADATA_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read reward model metadata {str(file)!r}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelLoadError(f"reward model metadata {str(file)!r} is not a JSON object")
    return meta
