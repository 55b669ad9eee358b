"""Stages 1 and 2 of the pipeline: causal-LM pretraining and supervised fine-tuning (SFT).

- :func:`pretrain` maximises sum_i log P(x_i | x_<i) over plain-text documents.
- :func:`finetune` maximises log P(y | x) over (prompt, response) pairs: loss on response tokens only. An
  encoder-decoder model (T5, BART, ...; ``config.is_encoder_decoder``) is fine-tuned as seq2seq: the encoder
  reads the prompt, the decoder is trained on the response (``model(input_ids, labels=...)``, which shifts the
  labels right into the decoder's inputs). :func:`pretrain` is causal-LM only.

Both run the stages' one training loop (:func:`textenv.training.loop.train`, configured by
:class:`~textenv.training.loop.TrainConfig`) on any ``AutoModelForCausalLM`` (GPT-2, Llama, ...): AdamW,
linear warm-up then cosine decay to 10% of the peak learning rate, gradient clipping, held-out loss and
perplexity, and atomic checkpoints that a killed run resumes from exactly.

Output layout of ``out_dir``::

    out_dir/
      config.json, model.safetensors, tokenizer.json, ...   final model + tokenizer (``from_pretrained(out_dir)``)
      metrics.json                                          final train loss, eval loss, perplexity, ...
      checkpoint-00000500/                                  the latest two checkpoints, each with
        config.json, model.safetensors, tokenizer files       model.save_pretrained + tokenizer.save_pretrained
        trainer_state.json                                    step, config, loss history, eval history
        optimizer.pt                                          optimizer, scheduler and RNG state

Example:
    >>> from textenv.models import load_causal_lm, load_tokenizer
    >>> tok = load_tokenizer("default")                                     # doctest: +SKIP
    >>> model = load_causal_lm("tiny", tok)                                 # doctest: +SKIP
    >>> cfg = TrainConfig(steps=200, batch_size=8, max_length=64)
    >>> pretrain(model, tok, load_text_corpus("corpus.txt"), "runs/lm", cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from textenv.jsonl import read_jsonl, read_text_lines
from textenv.training.loop import TrainConfig, autocast, install_final, smoothed, train

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that the loss skips (padding, and prompt tokens in SFT); the Hugging Face convention."""

METRICS_NAME = "metrics.json"


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
        texts = [line for line in read_text_lines(p) if line.strip()]
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

    A row without ``"response"`` may give its target as a :class:`~textenv.tasks.DatasetTask` row does:
    ``"references"`` (one pair per reference), ``"reference"`` or ``"answer"``, so a task's data file
    fine-tunes as it is. Blank lines are skipped. A row that is not a JSON object with a string prompt and a
    target raises ``ValueError`` naming the file and the 1-based line number.
    """
    from textenv.tasks.dataset import row_references

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist or is not a file")
    pairs: list[tuple[str, str]] = []
    for lineno, row in read_jsonl(p):
        prompt, response = row.get("prompt"), row.get("response")
        targets: list[Any] | None = [response] if "response" in row else row_references(row, f"{p}:{lineno}")
        if not isinstance(prompt, str) or targets is None or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"{p}:{lineno}: expected a string 'prompt' and a string 'response' (or 'reference', "
                             f"'references', 'answer'), got prompt={prompt!r:.60}, response={response!r:.60}")
        for target in targets:
            if not prompt and not target:
                raise ValueError(f"{p}:{lineno}: empty prompt and empty response: nothing to learn from")
            pairs.append((prompt, target))
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
        if not row[0] and not row[1]:
            # one token (EOS) after an empty prompt: no next-token target, a loss of 0 that trains nothing
            raise ValueError(f"{name}[{i}] has an empty prompt and an empty response: nothing to learn from")


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


def _seq2seq_examples(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                      max_length: int) -> list[_Example]:
    """Seq2seq rows: the prompt's ids (cut from the left to ``max_length``; an empty prompt reads as one eos,
    so the encoder has a token) as ``input_ids``, the response's ids and eos (cut from the right) as ``labels``."""
    eos = _eos_id(tokenizer)
    prompts = _encode(tokenizer, [p for p, _ in pairs])
    responses = _encode(tokenizer, [r for _, r in pairs])
    return [_Example((prompt_ids or [eos])[-max_length:], (response_ids + [eos])[:max_length])
            for prompt_ids, response_ids in zip(prompts, responses, strict=True)]


def is_seq2seq(model: Any) -> bool:
    """Whether ``model`` is an encoder-decoder (its config says ``is_encoder_decoder``)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _collate(examples: Sequence[_Example], pad_id: int, seq2seq: bool = False) -> dict[str, torch.Tensor]:
    import torch

    if seq2seq:  # inputs and labels are separate sequences: pad each to its own longest row
        batch = _collate([_Example(ex.input_ids, ex.input_ids) for ex in examples], pad_id)
        T = max(len(ex.labels) for ex in examples)
        labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            labels[i, :len(ex.labels)] = torch.tensor(ex.labels, dtype=torch.long)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}

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


#: Batches per length-sorted group in :func:`length_grouped_batches` (transformers' LengthGroupedSampler uses
#: 50 too): larger groups pad less, smaller ones mix lengths (and with them tasks) more within a group.
GROUP_BATCHES = 50


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch of batches of similar-length examples (``TrainConfig.group_by_length``), as a
    ``(len(lengths) // batch_size, batch_size)`` array of indices into ``lengths``.

    A permutation seeded by ``(seed, epoch)`` is cut into groups of :data:`GROUP_BATCHES` batches; each group
    is sorted by length (longest first) and cut into batches, and the epoch's batches are then shuffled, so
    that consecutive steps are not sorted by length. Every example is in at most one batch of an epoch; the
    ``len(lengths) % batch_size`` left at the end of the permutation sit this epoch out.

    Example:
        >>> b = length_grouped_batches([1, 9, 2, 8, 3, 7], batch_size=3, seed=0, epoch=0)
        >>> sorted(sorted([1, 9, 2, 8, 3, 7][i] for i in row) for row in b)
        [[1, 2, 3], [7, 8, 9]]
    """
    if batch_size < 1 or len(lengths) < batch_size:
        raise ValueError(f"length_grouped_batches needs batch_size >= 1 and at least batch_size lengths, got "
                         f"batch_size={batch_size} and {len(lengths)} lengths")
    rng = np.random.default_rng([seed, epoch, 1])  # three words: never the stream of a step's (seed, step)
    n = len(lengths) - len(lengths) % batch_size
    perm = rng.permutation(len(lengths))[:n]
    size = np.asarray(lengths)
    group = batch_size * GROUP_BATCHES
    parts = [chunk[np.argsort(-size[chunk], kind="stable")] for chunk in np.split(perm, range(group, n, group))]
    batches = np.concatenate(parts).reshape(-1, batch_size)
    return batches[rng.permutation(len(batches))]


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def pretrain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
             out_dir: str | os.PathLike[str], config: TrainConfig | None = None,
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
    config = config if config is not None else TrainConfig()
    if is_seq2seq(model):
        raise ValueError(f"pretrain trains causal LMs; {type(model).__name__} is an encoder-decoder: fine-tune it "
                         f"on (prompt, response) pairs with finetune instead")
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
             out_dir: str | os.PathLike[str], config: TrainConfig | None = None,
             eval_pairs: Sequence[tuple[str, str]] | None = None, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` in place on (prompt, response) pairs: maximise log P(y | x).

    The loss covers the response tokens and the eos after them; prompt and padding are masked out (see
    :func:`build_sft_batch`). Everything else is as in :func:`pretrain`, including the returned dict.
    """
    config = config if config is not None else TrainConfig()
    _check_pairs(pairs, "pairs")
    make = _seq2seq_examples if is_seq2seq(model) else _sft_examples
    examples = make(tokenizer, pairs, config.max_length)
    eval_examples = None
    if eval_pairs is not None:
        _check_pairs(eval_pairs, "eval_pairs")
        eval_examples = make(tokenizer, eval_pairs, config.max_length)
    return _train(model, tokenizer, examples, eval_examples, out_dir, config, resume, "finetune")


# --------------------------------------------------------------------------------------------------------------
# The training step: next-token NLL on one loop.train


def _train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[_Example],
           eval_examples: list[_Example] | None, out_dir: str | os.PathLike[str], config: TrainConfig,
           resume: bool, kind: str) -> dict[str, Any]:
    _check_model_fits(model, tokenizer, config)
    device = next(model.parameters()).device
    pad_id = _pad_id(tokenizer)
    amp = autocast(device, config.bf16)
    seq2seq = is_seq2seq(model)
    n_tokens = 0

    grouped = config.group_by_length and len(examples) >= config.batch_size
    lengths = [len(ex.input_ids) + (len(ex.labels) if seq2seq else 0) for ex in examples] if grouped else []
    epoch_batches: dict[int, np.ndarray] = {}  # the current epoch's batches, when grouped by length

    def batch_fn(step: int) -> dict[str, torch.Tensor]:
        nonlocal n_tokens
        # Seeded by (seed, step) alone (grouped: by (seed, epoch)), so a resumed run draws exactly the
        # batches of an uninterrupted one.
        if grouped:
            epoch, k = divmod(step, len(examples) // config.batch_size)
            if epoch not in epoch_batches:
                epoch_batches.clear()
                epoch_batches[epoch] = length_grouped_batches(lengths, config.batch_size, config.seed, epoch)
            idx = epoch_batches[epoch][k]
        else:
            rng = np.random.default_rng([config.seed, step])
            idx = rng.choice(len(examples), size=config.batch_size, replace=len(examples) < config.batch_size)
        cpu_batch = _collate([examples[i] for i in idx], pad_id, seq2seq)
        n_tokens += int(cpu_batch["attention_mask"].sum())
        if seq2seq:  # the decoder's tokens as well as the encoder's
            n_tokens += int((cpu_batch["labels"] != IGNORE_INDEX).sum())
        return {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss_sum, n_targets = _token_nll(model, batch)
        return loss_sum / max(n_targets, 1)

    def evaluate(step: int) -> dict[str, float]:
        assert eval_examples is not None
        return _evaluate(model, eval_examples, config, pad_id, device, step, amp)

    result = train(model, config, out_dir, batch_fn, loss_fn, stage=kind, resume=resume,
                   evaluate=evaluate if eval_examples else None, tokenizer=tokenizer)
    metrics: dict[str, Any] = {
        "train_loss": smoothed(result.loss_history, config.log_every) if result.loss_history else None,
        "eval_loss": result.eval_history[-1]["eval_loss"] if eval_examples else None,
        "perplexity": result.eval_history[-1]["perplexity"] if eval_examples else None,
        "steps": result.step,
        "tokens_per_s": n_tokens / result.elapsed_s if n_tokens else 0.0,
    }
    install_final(out_dir, model, tokenizer, {METRICS_NAME: metrics})
    logger.info("%s done: %s", kind, metrics)
    return metrics


def _check_model_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TrainConfig) -> None:
    n_embeddings = cast("torch.nn.Embedding", model.get_input_embeddings()).num_embeddings
    if n_embeddings < len(tokenizer):
        raise ValueError(f"the model has {n_embeddings} token embeddings but the tokenizer has {len(tokenizer)} "
                         "tokens; resize the model (model.resize_token_embeddings) or use its own tokenizer")
    cfg = model.config
    max_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if max_positions is not None and config.max_length > max_positions:
        raise ValueError(f"max_length={config.max_length} exceeds the model's {max_positions} positions")


def _token_nll(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over labelled positions, and the number of them."""
    import torch.nn.functional as F

    if is_seq2seq(model):  # the model shifts the labels right into the decoder: logit t predicts label t
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"], use_cache=False).logits.float()  # (B, T, V)
        targets = batch["labels"]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
        targets = batch["labels"][:, 1:]  # (B, T-1)
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((targets != IGNORE_INDEX).sum().item())


def _evaluate(model: PreTrainedModel, eval_examples: list[_Example], config: TrainConfig, pad_id: int,
              device: torch.device, step: int, amp: Any) -> dict[str, float]:
    import torch

    n = min(len(eval_examples), config.eval_batches * config.batch_size)
    # A fixed, evenly spread subset: the same rows every evaluation, and not just the head of a sorted file.
    idx = np.unique(np.linspace(0, len(eval_examples) - 1, n).round().astype(int))
    rows = [eval_examples[i] for i in idx]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), config.batch_size):
            rows_b = rows[start:start + config.batch_size]
            batch = {k: v.to(device) for k, v in _collate(rows_b, pad_id, is_seq2seq(model)).items()}
            with amp:
                loss_sum, n_targets = _token_nll(model, batch)
            total += float(loss_sum.item())
            count += n_targets
    eval_loss = total / max(count, 1)
    perplexity = math.exp(min(eval_loss, 700.0))  # exp overflows a float past ~709
    logger.info("eval step %d loss %.4f perplexity %.2f", step, eval_loss, perplexity)
    return {"step": step, "eval_loss": eval_loss, "perplexity": perplexity}
