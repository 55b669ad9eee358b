"""Stages 1 and 2 of the pipeline: causal-LM pretraining and supervised fine-tuning (SFT).

- :func:`pretrain` maximises sum_i log P(x_i | x_<i) over plain-text documents.
- :func:`finetune` maximises log P(y | x) over (prompt, response) pairs: loss on response tokens only.

Both run one training loop (:func:`_train`) on any ``AutoModelForCausalLM`` (GPT-2, Llama, ...): AdamW,
linear warm-up then cosine decay to 10% of the peak learning rate, gradient clipping, held-out loss and
perplexity, and atomic checkpoints that a killed run resumes from exactly.

Output layout of ``out_dir``::

    out_dir/
      config.json, model.safetensors, tokenizer.json, ...   final model + tokenizer (``from_pretrained(out_dir)``)
      metrics.json                                          final train loss, eval loss, perplexity, ...
      checkpoint-000500/                                    the latest two checkpoints, each with
        config.json, model.safetensors, tokenizer files       model.save_pretrained + tokenizer.save_pretrained
        trainer_state.json                                    step, config, loss history, eval history
        optimizer.pt                                          optimizer, scheduler and RNG state

Example:
    >>> from textenv.models import load_causal_lm, load_tokenizer
    >>> tok = load_tokenizer("default")                                     # doctest: +SKIP
    >>> model = load_causal_lm("tiny", tok)                                 # doctest: +SKIP
    >>> cfg = LMTrainConfig(steps=200, batch_size=8, max_length=64)
    >>> pretrain(model, tok, load_text_corpus("corpus.txt"), "runs/lm", cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from textenv.jsonl import read_jsonl

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that the loss skips (padding, and prompt tokens in SFT); the Hugging Face convention."""

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
METRICS_NAME = "metrics.json"
KEEP_CHECKPOINTS = 2
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d{{6,}})$")
_TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class LMTrainConfig:
    """Hyper-parameters of :func:`pretrain` and :func:`finetune`.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this many).
        batch_size: examples per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (not biases or norms).
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``; then cosine decay to
            ``0.1 * lr`` at the last step.
        grad_clip: maximum global gradient norm; 0 disables clipping.
        max_length: tokens per example; longer documents are chunked (pretraining), longer prompts are cut
            from the left (fine-tuning).
        eval_every: evaluate held-out loss every this many steps (0: only at the end).
        eval_batches: held-out batches per evaluation (a fixed, evenly spread subset of the eval data).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        seed: seeds ``torch`` at the start and, with the step number, each step's batch.
        log_every: log the smoothed train loss every this many steps; also the smoothing window.
        progress: show a tqdm progress bar.
        bf16: use bfloat16 autocast on CUDA devices that support it (ignored on CPU).

    Example:
        >>> LMTrainConfig(steps=100, lr=1e-3).warmup_steps
        100
        >>> LMTrainConfig(steps=0)
        Traceback (most recent call last):
        ...
        ValueError: steps must be >= 1, got 0
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    max_length: int = 128
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 500
    seed: int = 0
    log_every: int = 50
    progress: bool = True
    bf16: bool = True

    def __post_init__(self) -> None:
        minimums = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "max_length": 2, "eval_every": 0,
                    "eval_batches": 1, "checkpoint_every": 0, "seed": 0, "log_every": 1}
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        for name, positive in (("lr", True), ("weight_decay", False), ("grad_clip", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if positive and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("progress", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """The learning-rate factor for 0-based optimizer step ``step``: linear warm-up, then cosine to ``min_ratio``.

    Example:
        >>> [round(lr_multiplier(s, 2, 6), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.775, 0.325, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps - 1)  # 1.0 at the last step
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------------------------
# Data


def load_text_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents from a ``.txt`` file (one per non-empty line) or a ``.jsonl`` file (rows ``{"text": ...}``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown extension, a bad ``.jsonl`` row (naming the file and line), or no documents.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text corpus {str(path)!r} does not exist or is not a file")
    texts: list[str] = []
    if p.suffix == ".txt":
        with p.open(encoding="utf-8") as f:
            texts = [line.rstrip("\r\n") for line in f if line.strip()]
    elif p.suffix == ".jsonl":
        for lineno, row in read_jsonl(p):
            text = row.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{p}:{lineno}: expected a string field 'text', got {text!r:.80}")
            if text.strip():
                texts.append(text)
    else:
        raise ValueError(f"text corpus {str(path)!r} must be a .txt or .jsonl file, got suffix {p.suffix!r}")
    if not texts:
        raise ValueError(f"text corpus {str(path)!r} holds no non-empty documents")
    return texts


def load_pairs_jsonl(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a ``.jsonl`` file with rows ``{"prompt": str, "response": str}``.

    Blank lines are skipped. A row that is not a JSON object with both string fields raises ``ValueError``
    naming the file and the 1-based line number.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist or is not a file")
    pairs: list[tuple[str, str]] = []
    for lineno, row in read_jsonl(p):
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise ValueError(f"{p}:{lineno}: expected string fields 'prompt' and 'response', "
                             f"got prompt={prompt!r:.60}, response={response!r:.60}")
        pairs.append((prompt, response))
    if not pairs:
        raise ValueError(f"pairs file {str(path)!r} holds no rows")
    return pairs


class _Example(NamedTuple):
    """One training row before padding: token ids and their labels (``IGNORE_INDEX`` where no loss)."""

    input_ids: list[int]
    labels: list[int]


def _check_texts(texts: Sequence[str], name: str) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(text).__name__}: {text!r:.80}")


def _check_pairs(pairs: Sequence[tuple[str, str]], name: str) -> None:
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise ValueError(f"{name} must be a list of (prompt, response) tuples, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError(f"{name} is empty")
    for i, row in enumerate(pairs):
        if (not isinstance(row, tuple | list) or len(row) != 2
                or not isinstance(row[0], str) or not isinstance(row[1], str)):
            raise ValueError(f"{name}[{i}] must be a (prompt, response) tuple of two str, got {row!r:.80}")


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token")
    return int(tokenizer.eos_token_id)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # The pad id only fills masked positions, so eos is a safe stand-in when a tokenizer has no pad token.
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else _eos_id(tokenizer)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    # add_special_tokens=False: eos is appended explicitly, and no tokenizer-specific BOS sneaks in between
    # a prompt and its response.
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _lm_examples(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[_Example]:
    eos = _eos_id(tokenizer)
    examples = []
    for ids in _encode(tokenizer, texts):
        ids = ids + [eos]
        for start in range(0, len(ids), max_length):
            chunk = ids[start:start + max_length]
            if len(chunk) >= 2:  # a single token has nothing to predict it from
                examples.append(_Example(chunk, list(chunk)))
    return examples


def _sft_examples(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                  max_length: int) -> list[_Example]:
    eos = _eos_id(tokenizer)
    prompts = _encode(tokenizer, [p for p, _ in pairs])
    responses = _encode(tokenizer, [r for _, r in pairs])
    examples = []
    for prompt_ids, response_ids in zip(prompts, responses, strict=True):
        response_ids = response_ids + [eos]
        # Keep the response whole if it fits; cut the prompt from the left (its end conditions the response).
        # A response that alone overflows keeps one prompt token and is cut from the right.
        n_response = min(len(response_ids), max_length - (1 if prompt_ids else 0))
        response_ids = response_ids[:n_response]
        n_prompt = min(len(prompt_ids), max_length - n_response)
        prompt_ids = prompt_ids[len(prompt_ids) - n_prompt:]
        input_ids = prompt_ids + response_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
        examples.append(_Example(input_ids, labels))
    return examples


def _collate(examples: Sequence[_Example], pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    T = max(len(ex.input_ids) for ex in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[i, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor(ex.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_lm_batch(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                   max_length: int) -> dict[str, torch.Tensor]:
    """A right-padded pretraining batch: each text tokenized, eos appended, chunked to ``max_length`` tokens.

    A long text gives several rows (chunks of fewer than 2 tokens are dropped: nothing to predict). Labels
    equal the input ids on every real token (the eos included) and ``-100`` on padding; the model shifts
    them, so position t is trained to predict token t+1.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each a ``(B, T)`` long tensor, T = longest row.
    """
    _check_texts(texts, "texts")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    examples = _lm_examples(tokenizer, list(texts), max_length)
    if not examples:
        raise ValueError("texts hold no tokens to train on")
    return _collate(examples, _pad_id(tokenizer))


def build_sft_batch(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                    max_length: int) -> dict[str, torch.Tensor]:
    """A right-padded fine-tuning batch: one row per (prompt, response) pair, loss on the response only.

    Prompt and response are tokenized separately and concatenated, so the boundary is exact; eos follows
    the response. Labels are ``-100`` on prompt tokens and padding, and the token ids on the response and
    its eos. A row longer than ``max_length`` loses prompt tokens from the left.

    Example:
        A pair with prompt ids ``[5, 6]`` and response ids ``[7]`` (eos 0, pad 1), batched with a 5-token row,
        becomes ``input_ids [5, 6, 7, 0, 1]``, ``attention_mask [1, 1, 1, 1, 0]`` and
        ``labels [-100, -100, 7, 0, -100]``.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each a ``(B, T)`` long tensor, T = longest row.
    """
    _check_pairs(pairs, "pairs")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    return _collate(_sft_examples(tokenizer, pairs, max_length), _pad_id(tokenizer))


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def pretrain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
             out_dir: str | os.PathLike[str], config: LMTrainConfig | None = None,
             eval_texts: Sequence[str] | None = None, resume: bool = False) -> dict[str, Any]:
    """Pretrain ``model`` in place on ``texts`` (one document each): maximise sum_i log P(x_i | x_<i).

    Each document is tokenized, eos appended, and chunked to ``config.max_length`` tokens; every real token
    after the first of a chunk is a target. Checkpoints and the final model go to ``out_dir`` (see the module
    docstring). With ``resume=True`` training continues from the latest checkpoint in ``out_dir``.

    Returns:
        ``train_loss`` (mean of the last ``log_every`` step losses), ``eval_loss`` and ``perplexity`` on
        ``eval_texts`` (``None`` without them), ``steps`` (the final step) and ``tokens_per_s`` (real tokens
        per second in this call).
    """
    config = config if config is not None else LMTrainConfig()
    _check_texts(texts, "texts")
    examples = _lm_examples(tokenizer, list(texts), config.max_length)
    if not examples:
        raise ValueError("texts hold no tokens to train on")
    eval_examples = None
    if eval_texts is not None:
        _check_texts(eval_texts, "eval_texts")
        eval_examples = _lm_examples(tokenizer, list(eval_texts), config.max_length)
        if not eval_examples:
            raise ValueError("eval_texts hold no tokens to evaluate on")
    return _train(model, tokenizer, examples, eval_examples, out_dir, config, resume, "pretrain")


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
             out_dir: str | os.PathLike[str], config: LMTrainConfig | None = None,
             eval_pairs: Sequence[tuple[str, str]] | None = None, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` in place on (prompt, response) pairs: maximise log P(y | x).

    The loss covers the response tokens and the eos after them; prompt and padding are masked out (see
    :func:`build_sft_batch`). Everything else is as in :func:`pretrain`, including the returned dict.
    """
    config = config if config is not None else LMTrainConfig()
    _check_pairs(pairs, "pairs")
    examples = _sft_examples(tokenizer, pairs, config.max_length)
    eval_examples = None
    if eval_pairs is not None:
        _check_pairs(eval_pairs, "eval_pairs")
        eval_examples = _sft_examples(tokenizer, eval_pairs, config.max_length)
    return _train(model, tokenizer, examples, eval_examples, out_dir, config, resume, "finetune")


# --------------------------------------------------------------------------------------------------------------
# The training loop


def _train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[_Example],
           eval_examples: list[_Example] | None, out_dir: str | os.PathLike[str], config: LMTrainConfig,
           resume: bool, kind: str) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    _check_model_fits(model, tokenizer, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    latest = latest_checkpoint(out)
    if latest is not None and not resume:
        raise ValueError(f"out_dir {str(out)!r} already holds checkpoints (latest {latest.name}); "
                         "pass resume=True to continue, or use an empty directory")

    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    pad_id = _pad_id(tokenizer)
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, config.warmup_steps, config.steps))

    step = 0
    loss_history: list[float] = []
    eval_history: list[dict[str, float]] = []
    if resume:
        if latest is None:
            logger.warning("resume=True but %s holds no checkpoint; starting %s from step 0", out, kind)
        else:
            step, loss_history, eval_history = _load_checkpoint(latest, model, optimizer, scheduler)
            logger.info("resumed %s from %s (step %d of %d)", kind, latest, step, config.steps)
            if step > config.steps:
                logger.warning("checkpoint step %d is past config.steps=%d; nothing left to train",
                               step, config.steps)

    autocast = _autocast(device, config.bf16)
    n_tokens = 0
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=min(step, config.steps), desc=kind, disable=not config.progress,
               dynamic_ncols=True)
    model.train()
    try:
        while step < config.steps:
            step += 1
            # Seeded by (seed, step) alone, so a resumed run draws exactly the batches of an uninterrupted one.
            rng = np.random.default_rng([config.seed, step])
            idx = rng.choice(len(examples), size=config.batch_size, replace=len(examples) < config.batch_size)
            cpu_batch = _collate([examples[i] for i in idx], pad_id)
            n_tokens += int(cpu_batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
            with autocast:
                loss_sum, n_targets = _token_nll(model, batch)
            loss = loss_sum / max(n_targets, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()

            loss_history.append(float(loss.item()))
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                smoothed = _smoothed(loss_history, config.log_every)
                bar.set_postfix(loss=f"{smoothed:.4f}")
                logger.info("%s step %d/%d loss %.4f lr %.3g tokens/s %.0f", kind, step, config.steps, smoothed,
                            scheduler.get_last_lr()[0], n_tokens / max(time.perf_counter() - t0, 1e-9))
            if step == config.steps:
                break  # the final eval and checkpoint follow the loop
            if eval_examples and config.eval_every and step % config.eval_every == 0:
                eval_history.append(_evaluate(model, eval_examples, config, pad_id, device, step, autocast))
                model.train()
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                _save_checkpoint(out, step, model, tokenizer, optimizer, scheduler, config, kind,
                                 loss_history, eval_history)
    finally:
        bar.close()
        model.eval()
    elapsed = time.perf_counter() - t0

    if eval_examples and (not eval_history or eval_history[-1]["step"] != step):
        eval_history.append(_evaluate(model, eval_examples, config, pad_id, device, step, autocast))
    if not (out / f"{CHECKPOINT_PREFIX}{step:06d}").is_dir():
        _save_checkpoint(out, step, model, tokenizer, optimizer, scheduler, config, kind,
                         loss_history, eval_history)
    metrics: dict[str, Any] = {
        "train_loss": _smoothed(loss_history, config.log_every) if loss_history else None,
        "eval_loss": eval_history[-1]["eval_loss"] if eval_examples else None,
        "perplexity": eval_history[-1]["perplexity"] if eval_examples else None,
        "steps": step,
        "tokens_per_s": n_tokens / elapsed if n_tokens else 0.0,
    }
    _save_final(out, model, tokenizer, metrics)
    logger.info("%s done: %s", kind, metrics)
    return metrics


def _check_model_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: LMTrainConfig) -> None:
    n_embeddings = cast("torch.nn.Embedding", model.get_input_embeddings()).num_embeddings
    if n_embeddings < len(tokenizer):
        raise ValueError(f"the model has {n_embeddings} token embeddings but the tokenizer has {len(tokenizer)} "
                         "tokens; resize the model (model.resize_token_embeddings) or use its own tokenizer")
    cfg = model.config
    max_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if max_positions is not None and config.max_length > max_positions:
        raise ValueError(f"max_length={config.max_length} exceeds the model's {max_positions} positions")


def _make_optimizer(model: PreTrainedModel, config: LMTrainConfig) -> torch.optim.AdamW:
    import torch

    # Decay matrices only: decaying biases and norm gains towards 0 hurts and is not what AdamW papers do.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def _autocast(device: torch.device, bf16: bool) -> Any:
    import contextlib

    import torch

    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _token_nll(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over labelled positions, and the number of them."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    targets = batch["labels"][:, 1:]  # (B, T-1)
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((targets != IGNORE_INDEX).sum().item())


def _evaluate(model: PreTrainedModel, eval_examples: list[_Example], config: LMTrainConfig, pad_id: int,
              device: torch.device, step: int, autocast: Any) -> dict[str, float]:
    import torch

    n = min(len(eval_examples), config.eval_batches * config.batch_size)
    # A fixed, evenly spread subset: the same rows every evaluation, and not just the head of a sorted file.
    idx = np.unique(np.linspace(0, len(eval_examples) - 1, n).round().astype(int))
    rows = [eval_examples[i] for i in idx]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), config.batch_size):
            batch = {k: v.to(device) for k, v in _collate(rows[start:start + config.batch_size], pad_id).items()}
            with autocast:
                loss_sum, n_targets = _token_nll(model, batch)
            total += float(loss_sum.item())
            count += n_targets
    eval_loss = total / max(count, 1)
    perplexity = math.exp(min(eval_loss, 700.0))  # exp overflows a float past ~709
    logger.info("eval step %d loss %.4f perplexity %.2f", step, eval_loss, perplexity)
    return {"step": step, "eval_loss": eval_loss, "perplexity": perplexity}


def _smoothed(losses: list[float], window: int) -> float:
    tail = losses[-window:]
    return float(sum(tail) / len(tail))


# --------------------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints in ``out_dir``, oldest first (a directory ``checkpoint-NNNNNN`` with its state)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for child in out.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if (match and child.is_dir() and (child / TRAINER_STATE_NAME).is_file()
                and (child / OPTIMIZER_NAME).is_file() and (child / "config.json").is_file()):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step in ``out_dir``, or ``None``."""
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def _remove_stale_tmp(out: Path) -> None:
    for child in out.iterdir():
        if child.name.startswith(_TMP_PREFIX):  # left by a run killed mid-save
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _tmp_path(out: Path, name: str) -> Path:
    return out / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"


def _write_json(path: Path, obj: Any) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _save_checkpoint(out: Path, step: int, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                     config: LMTrainConfig, kind: str, loss_history: list[float],
                     eval_history: list[dict[str, float]]) -> Path:
    """Write ``out/checkpoint-{step:06d}`` atomically (a temporary directory, then one rename); prune old ones."""
    import torch

    final = out / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = _tmp_path(out, final.name)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / OPTIMIZER_NAME)
    _write_json(tmp / TRAINER_STATE_NAME, {"kind": kind, "step": step, "config": asdict(config),
                                           "loss_history": loss_history, "eval_history": eval_history})
    if final.exists():  # a stale copy of this very step (e.g. from an earlier run); the others stay intact
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)
    logger.info("saved checkpoint %s", final)
    return final


def _load_checkpoint(path: Path, model: PreTrainedModel, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, list[float], list[dict[str, float]]]:
    import torch

    # from_pretrained handles tied weights and sharded files; its weights are then copied into the caller's model.
    loaded = type(model).from_pretrained(str(path), dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())
    del loaded
    state = torch.load(path / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    with (path / TRAINER_STATE_NAME).open(encoding="utf-8") as f:
        trainer_state = json.load(f)
    return int(trainer_state["step"]), list(trainer_state["loss_history"]), list(trainer_state["eval_history"])


def _save_final(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                metrics: dict[str, Any]) -> None:
    """Model, tokenizer and ``metrics.json`` at ``out`` itself, each file written elsewhere then renamed in."""
    tmp = _tmp_path(out, "final")
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _write_json(tmp / METRICS_NAME, metrics)
    # metrics.json goes last: its presence says the files beside it are complete.
    names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == METRICS_NAME)
    for name in names:
        target = out / name
        if (tmp / name).is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    tmp.rmdir()
