"""Stage 3: training a reward model R(s, a) on scored texts (MSE) or preference pairs (Bradley-Terry).

The model is a small transformer with a scalar head: ``GPT2ForSequenceClassification(num_labels=1)``
built from :func:`textenv.models.tiny_gpt2_config`, or any causal-LM checkpoint (``base=``) loaded with a
fresh one-logit head. It reads ``prompt + completion`` (plain concatenation, exactly what the env passes)
and its score is the logit at the last token.

Losses, for a batch of B rows:

- MSE regression on rows ``{"prompt", "completion", "score"}`` (or ``{"text", "score"}``):
  ``L = mean_b (R(s_b, a_b) - r_b)^2``. Targets are not standardised: the model predicts the score on the
  data's own scale (the built-in tasks score in [0, 1]), so the env's reward has that scale too.
- Bradley-Terry on rows ``{"prompt", "chosen", "rejected"}`` (Ouyang et al. 2022, "Training language
  models to follow instructions with human feedback", eq. 1):
  ``L = -mean_b log sigmoid(R(s_b, chosen_b) - R(s_b, rejected_b))``.

Training runs the stages' one loop (:mod:`textenv.training.loop`, resumable). The result is saved as a
Hugging Face directory (safetensors weights, tokenizer) plus ``textenv_reward.json``; load it with
``reward_model=<dir>`` or :class:`textenv.rewards.LearnedRewardModel`.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textenv.jsonl import read_jsonl
from textenv.models import load_tokenizer, quiet_progress, tiny_gpt2_config
from textenv.rewards.base import INPUT_FORMAT, REWARD_METADATA_FILE, check_scores, reward_name
from textenv.rewards.hf import HFClassifierReward, context_length, encode_texts, pad_batch
from textenv.training.loop import TrainConfig, install_final, latest_checkpoint, train

if TYPE_CHECKING:
    from textenv.tasks.base import Task

LOSSES = ("mse", "bt")
#: Architecture of a reward model trained from scratch (``model_kwargs`` overrides any of these).
DEFAULT_MODEL_KWARGS: dict[str, Any] = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 320}
#: Hyper-parameters of the shipped per-task reward models (:func:`build_default_reward_model`).
DEFAULT_BUILD: dict[str, Any] = {
    "n_train": 20000,  # scored texts generated for training
    "n_eval": 1000,  # held-out ("test" split) scored texts for the metrics
    "perturb": {"prefix": 0.2, "shuffle": 0.1, "repeat": 0.1},  # shares of perturbed training rows
    "steps": 1000,  # ~3 epochs; held-out sentiment Spearman ~0.99 (0.9 is reached well before)
    "batch_size": 64,
    "lr": 1e-3,
    "warmup_fraction": 0.05,
}
#: Per-task changes to :data:`DEFAULT_BUILD`, for tasks a small model learns slowly (held-out gold Spearman /
#: pairwise accuracy measured at the shared defaults -> with these):
#: arithmetic must add (the BPE merges digits into 2-digit tokens: a 100 x 100 lookup), 0.52 / 0.79 at 1500
#: steps -> 0.79 / 0.92; keywords must match prompt words in the completion, 0.60 / 0.73 -> 0.68 / 0.79.
#: ``reward_model="gold"`` gives their exact reward.
TASK_BUILD: dict[str, dict[str, Any]] = {
    # arithmetic starts from the pretrained LM, which already adds a little: a 2-layer model from scratch
    # reaches only 0.57 Spearman with the digit-split tokenizer, and RL then hacks it. 9,000 steps on 180,000
    # rows (against 3,000 on 60,000): Spearman 0.73 -> 0.80, pairwise 0.94 -> 0.96, and the exact sum is the
    # reward model's favourite of the 199 answers 0..198 for 38% of prompts, against 22% (it mostly knows
    # the tens digit; the units digit is what it learns slowly). lr 1e-3 did worse (0.74 / 0.94).
    "arithmetic": {"steps": 9000, "n_train": 180000, "init_from_pretrained": True, "lr": 5e-4},
    "keywords": {"steps": 3000, "n_train": 60000},
    # qa must find the asked-for fact in a ~70-token context (and chain two for most questions): 1,000 steps
    # on 20,000 rows reached Spearman 0.69 / pairwise 0.82 (summarization 0.93 / 0.92, dialogue 0.96 / 0.96
    # at the shared defaults). These 3,000 steps on 60,000 rows, which the shipped qa model was built with,
    # gave no better (0.70 / 0.83) for three times the time: the 2-layer model, not the data, is the limit.
    "qa": {"steps": 3000, "n_train": 60000},
}
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- losses and metrics (pure)
def mse_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean((predictions - targets)^2)`` over a batch of scalar rewards, both ``(B,)``.

    Example:
        >>> float(mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])))
        2.5
    """
    return ((predictions - targets) ** 2).mean()


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """``-mean(log sigmoid(chosen_rewards - rejected_rewards))``, both ``(B,)``: the negative log-likelihood
    of the preferences under the Bradley-Terry model P(chosen > rejected) = sigmoid(r_c - r_r).

    Example:
        >>> round(float(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0]))), 4)  # log 2
        0.6931
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their average rank (as ``scipy.stats.rankdata``).

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    values = np.asarray(x, dtype=np.float64).ravel()
    n = values.size
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1] if n else np.zeros(0, int)
    ends = np.r_[starts[1:], n] if n else np.zeros(0, int)
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); ``nan`` when either side is
    constant or there are fewer than two points.

    Example:
        >>> round(spearman([1, 2, 2, 3], [1, 3, 2, 4]), 6)
        0.948683
    """
    rx, ry = rankdata(x), rankdata(y)
    if rx.size != ry.size:
        raise ValueError(f"spearman needs equal lengths, got {rx.size} and {ry.size}")
    if rx.size < 2:
        return float("nan")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def pairwise_accuracy(
    chosen_scores: Sequence[float] | np.ndarray, rejected_scores: Sequence[float] | np.ndarray
) -> float:
    """Share of pairs where the chosen text scores higher; a tie counts one half (so a constant model gets 0.5).

    Example:
        >>> pairwise_accuracy([2.0, 1.0, 0.0], [1.0, 2.0, 0.0])
        0.5
    """
    c = np.asarray(chosen_scores, dtype=np.float64)
    r = np.asarray(rejected_scores, dtype=np.float64)
    if c.shape != r.shape or c.size == 0:
        raise ValueError(
            f"pairwise_accuracy needs two non-empty arrays of one shape, got {c.shape} and {r.shape}"
        )
    return float(np.mean((c > r) + 0.5 * (c == r)))


# ---------------------------------------------------------------------------- data
def _row_error(row: Any, loss: str) -> str | None:
    """Why ``row`` is not a valid ``loss`` row, or ``None``."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if loss == "mse":
        keys = ("text",) if "text" in row else ("prompt", "completion")
        for key in (*keys, "score"):
            if key not in row:
                return f"missing key {key!r} (mse rows are {{'text', 'score'}} or {{'prompt', 'completion', 'score'}})"
        for key in keys:
            if not isinstance(row[key], str):
                return f"{key!r} must be a string, got {row[key]!r}"
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(float(score)):
            return f"'score' must be a finite number, got {score!r}"
        return None
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            return f"missing key {key!r} (bt rows are {{'prompt', 'chosen', 'rejected'}})"
        if not isinstance(row[key], str):
            return f"{key!r} must be a string, got {row[key]!r}"
    return None


def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def check_reward_rows(rows: Sequence[dict[str, Any]], loss: str, what: str = "rows") -> list[dict[str, Any]]:
    """``rows`` as a list after checking each is a valid ``loss`` row; ``ValueError`` names the bad row."""
    _check_loss(loss)
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, Sequence):
        raise ValueError(f"{what} must be a list of dicts, got {type(rows).__name__}")
    if not rows:
        raise ValueError(f"{what} is empty")
    for i, row in enumerate(rows):
        error = _row_error(row, loss)
        if error is not None:
            raise ValueError(f"{what}[{i}] is not a valid {loss} row: {error}")
    return list(rows)


def load_reward_rows(path: str | os.PathLike[str], loss: str) -> list[dict[str, Any]]:
    """Rows for ``loss`` from a JSONL file (one JSON object a line; blank lines skipped).

    Raises:
        ValueError: a line that is not JSON or not a valid row, naming the file and the line number.
    """
    _check_loss(loss)
    file = Path(path)
    rows: list[dict[str, Any]] = []
    for lineno, row in read_jsonl(file):
        error = _row_error(row, loss)
        if error is not None:
            raise ValueError(f"{file}:{lineno}: not a valid {loss} row: {error}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{file} holds no rows")
    return rows


def _mse_texts(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[float]]:
    texts = [r["text"] if "text" in r else r["prompt"] + r["completion"] for r in rows]
    return texts, [float(r["score"]) for r in rows]


def _bt_texts(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    return [r["prompt"] + r["chosen"] for r in rows], [r["prompt"] + r["rejected"] for r in rows]


# ---------------------------------------------------------------------------- model
def build_reward_model(
    tokenizer: PreTrainedTokenizerBase,
    base: str | os.PathLike[str] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """A fresh one-logit ``GPT2ForSequenceClassification`` sized for ``tokenizer`` (``model_kwargs``
    override :data:`DEFAULT_MODEL_KWARGS`), or the causal LM in ``base`` with a new scalar head."""
    from transformers import AutoModelForSequenceClassification, GPT2ForSequenceClassification

    from textenv.models import ModelLoadError

    if base is None:
        kwargs = {**DEFAULT_MODEL_KWARGS, **(model_kwargs or {})}
        cfg = tiny_gpt2_config(
            len(tokenizer),
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
        model = GPT2ForSequenceClassification(cfg)
    else:
        if model_kwargs:
            raise ValueError(
                f"model_kwargs only apply to a model built from scratch, got {model_kwargs!r} with base={str(base)!r}"
            )
        if not (Path(base) / "config.json").is_file():
            raise ModelLoadError(f"base model directory {str(base)!r} does not exist or has no config.json")
        try:
            with quiet_progress():
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(base), num_labels=1, dtype=torch.float32
                )
        except Exception as exc:
            raise ModelLoadError(f"could not load base model {str(base)!r} for a reward head: {exc}") from exc
        model.config.pad_token_id = tokenizer.pad_token_id
    vocab = int(model.config.vocab_size)
    if len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has only {vocab}")
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    return model


# ---------------------------------------------------------------------------- training
def train_reward_model(
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    loss: str = "mse",
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase = "default",
    base: str | os.PathLike[str] | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    eval_rows: Sequence[dict[str, Any]] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    task: Task | str | None = None,
    warmup_fraction: float = 0.05,
    weight_decay: float = 0.01,
    device: str | torch.device = "cpu",
    resume: bool = False,
    checkpoint_every: int = 500,
) -> dict[str, Any]:
    """Train a reward model on ``rows`` and save it to ``out_dir``; returns the metrics.

    Training runs the stages' one loop (:func:`textenv.training.loop.train`: AdamW with decay on matrices
    only, linear warm-up then cosine decay to 0.1 of ``lr``, gradient-norm clipping at 1), with a checkpoint
    every ``checkpoint_every`` steps in ``out_dir``; ``resume=True`` continues from the latest one and ends
    bitwise where the uninterrupted run would.

    Args:
        rows: ``loss="mse"``: ``{"prompt", "completion", "score"}`` or ``{"text", "score"}``;
            ``loss="bt"``: ``{"prompt", "chosen", "rejected"}``. See :func:`load_reward_rows` for JSONL.
        out_dir: where the model goes (a Hugging Face directory plus ``textenv_reward.json``, which is
            written last), with the run's latest checkpoints beside it.
        loss: ``"mse"`` (regression on the score) or ``"bt"`` (Bradley-Terry on preference pairs).
        tokenizer: ``"default"``, a directory or a tokenizer; saved with the model.
        base: a causal-LM directory to start from (a fresh scalar head is added); default: a new
            GPT-2 of :data:`DEFAULT_MODEL_KWARGS` updated with ``model_kwargs``.
        steps, batch_size, lr, warmup_fraction, weight_decay: optimisation.
        seed: seeds the initialisation and each step's batch (drawn from ``(seed, step)``).
        eval_rows: held-out rows of the same format: ``eval/spearman`` and ``eval/mse`` (mse) or
            ``eval/pairwise_accuracy`` (bt) are measured on them after training.
        progress: show a progress bar.
        task: a Task (its name is recorded and the model is scored against its gold scorer on held-out
            data: ``gold/spearman``, ``gold/pairwise_accuracy``) or a task name (recorded only).
        device: torch device to train on.
        resume: continue from the latest checkpoint in ``out_dir``.
        checkpoint_every: steps between checkpoints (0: only at the end).

    Returns:
        metrics: ``train/loss`` (mean of the last 10% of steps), ``steps``, ``time_s``, plus the eval and
        gold metrics above. They are also stored in ``textenv_reward.json``.

    Example:
        >>> rows = [{"prompt": "Review: ", "completion": "great.", "score": 1.0}] * 64  # doctest: +SKIP
        >>> train_reward_model(rows, "runs/rm", steps=100)["train/loss"]  # doctest: +SKIP
    """
    _check_loss(loss)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(warmup_fraction, numbers.Real) or not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    steps = int(steps)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_steps=max(1, round(warmup_fraction * steps)), grad_clip=1.0,
                         eval_every=0, checkpoint_every=checkpoint_every, seed=seed, log_every=10,
                         progress=progress)
    rows = check_reward_rows(rows, loss, "rows")
    if eval_rows is not None:
        eval_rows = check_reward_rows(eval_rows, loss, "eval_rows")
    out = _check_out_dir(out_dir, resume)
    tok = load_tokenizer(tokenizer)
    device = torch.device(device)

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_reward_model(tok, base, model_kwargs).to(device)
    max_length = context_length(model, tok)
    # Tokenise once: an MSE row is one sequence, a BT row two (chosen then rejected).
    if loss == "mse":
        texts, scores = _mse_texts(rows)
        ids: list[list[int]] = encode_texts(tok, texts, max_length)
        targets = torch.tensor(scores, dtype=torch.float32)
    else:
        chosen, rejected = _bt_texts(rows)
        ids_chosen = encode_texts(tok, chosen, max_length)
        ids_rejected = encode_texts(tok, rejected, max_length)

    def batch_fn(step: int) -> np.ndarray:
        # Seeded by (seed, step) alone, so a resumed run draws exactly the batches of an uninterrupted one.
        rng = np.random.default_rng([config.seed, step])
        return rng.choice(len(rows), size=config.batch_size, replace=len(rows) < config.batch_size)

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        if loss == "mse":
            input_ids, attention_mask = pad_batch([ids[i] for i in idx], tok.pad_token_id)  # (B, T)
            rewards = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[:, 0]
            return mse_loss(rewards.float(), targets[idx].to(device))
        seqs = [ids_chosen[i] for i in idx] + [ids_rejected[i] for i in idx]
        input_ids, attention_mask = pad_batch(seqs, tok.pad_token_id)  # (2B, T)
        rewards = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[:, 0]
        return bradley_terry_loss(rewards[: len(idx)].float(), rewards[len(idx) :].float())

    result = train(model, config, out, batch_fn, loss_fn, stage=f"reward model ({loss})", resume=resume,
                   tokenizer=tok)
    losses = result.loss_history
    metrics: dict[str, Any] = {
        "train/loss": float(np.mean(losses[-max(1, steps // 10) :])),
        "steps": result.step,
        "train_rows": len(rows),
        "time_s": round(time.perf_counter() - start, 2),
    }
    scorer = HFClassifierReward(
        model, tokenizer=tok, device=device, name=f"reward model being trained for {str(out)!r}"
    )
    if eval_rows is not None:
        metrics.update(_eval_metrics(scorer, eval_rows, loss))
    task_name = task if isinstance(task, str) or task is None else task.name
    if task is not None and not isinstance(task, str):
        gold = evaluate_reward_model(scorer, task, n=512, seed=seed)
        metrics.update({f"gold/{k}": v for k, v in gold.items()})

    model.to("cpu")
    model.config.problem_type = "regression"
    metadata = {
        "format_version": _FORMAT_VERSION,
        "loss": loss,
        "task": task_name,
        "input_format": INPUT_FORMAT,
        "steps": steps,
        "batch_size": config.batch_size,
        "lr": float(lr),
        "seed": seed,
        "base": None if base is None else str(base),
        "tokenizer": tokenizer
        if isinstance(tokenizer, str)
        else str(getattr(tok, "name_or_path", "") or "custom"),
        "metrics": {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()
        },
    }
    # textenv_reward.json is written last: its presence says the model files beside it are complete
    install_final(out, model, tok, {REWARD_METADATA_FILE: metadata})
    return metrics


def _eval_metrics(
    scorer: HFClassifierReward, eval_rows: Sequence[dict[str, Any]], loss: str
) -> dict[str, float]:
    if loss == "mse":
        texts, targets = _mse_texts(eval_rows)
        predictions = np.asarray(scorer.score_texts(texts))
        return {
            "eval/spearman": spearman(predictions, targets),
            "eval/mse": float(np.mean((predictions - np.asarray(targets)) ** 2)),
        }
    chosen, rejected = _bt_texts(eval_rows)
    return {
        "eval/pairwise_accuracy": pairwise_accuracy(scorer.score_texts(chosen), scorer.score_texts(rejected))
    }


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# ---------------------------------------------------------------------------- saving
def _check_out_dir(out_dir: str | os.PathLike[str], resume: bool = False) -> Path:
    """The resolved ``out_dir``; refuses a file, and a non-empty directory that is neither a reward model nor
    (with ``resume``) a run of :func:`train_reward_model` with checkpoints."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"out_dir {str(out_dir)!r} exists and is not a directory")
        ours = (out / "config.json").exists() or latest_checkpoint(out) is not None
        from textenv.io import LOCK_NAME

        if any(c.name != LOCK_NAME for c in out.iterdir()) and not ours:  # the lock of this very run aside
            raise ValueError(
                f"out_dir {str(out_dir)!r} is a non-empty directory without a model in it; refusing to replace it"
            )
    return out


# ---------------------------------------------------------------------------- evaluation against gold
def evaluate_reward_model(reward_model: Any, task: Task, n: int = 512, seed: int = 0) -> dict[str, float]:
    """How well ``reward_model`` agrees with ``task``'s gold scorer on held-out (``split="test"``) data.

    Returns:
        ``spearman``: rank correlation with the gold score on ``n`` scored texts;
        ``pairwise_accuracy``: share of ``n`` preference pairs ranked like the gold scorer (ties count 1/2).

    ``reward_model`` is anything :func:`textenv.rewards.resolve_reward_model` accepts.
    """
    from textenv.rewards import resolve_reward_model

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    rm = resolve_reward_model(reward_model, task)
    name = reward_name(rm)
    rows = task.scored_texts(n, seed=seed, split="test")
    prompts = [str(r["prompt"]) for r in rows]
    predictions = check_scores(rm(prompts, [str(r["completion"]) for r in rows]), n, name)
    pairs = task.preference_pairs(n, seed=seed, split="test")
    pair_prompts = [r["prompt"] for r in pairs]
    chosen = check_scores(rm(pair_prompts, [r["chosen"] for r in pairs]), n, name)
    rejected = check_scores(rm(pair_prompts, [r["rejected"] for r in pairs]), n, name)
    return {
        "spearman": spearman(predictions, [float(r["score"]) for r in rows]),  # type: ignore[arg-type]
        "pairwise_accuracy": pairwise_accuracy(chosen, rejected),
    }


# ---------------------------------------------------------------------------- shipped defaults
def perturb_completion(completion: str, rng: np.random.Generator, kind: str) -> str:
    """A task-agnostic variant of ``completion`` (split on spaces):

    - ``"prefix"``: cut after a random word (the env's dense reward scores every prefix);
    - ``"shuffle"``: the words in random order (word salad, as an untrained policy writes);
    - ``"repeat"``: one word repeated 2-6 extra times in place (the classic reward hack).

    Example:
        >>> perturb_completion(" a fine film.", np.random.default_rng(0), "repeat")
        ' a fine film. film. film. film. film. film.'
    """
    words = completion.split(" ")
    if kind == "prefix":
        return " ".join(words[: int(rng.integers(0, len(words)))])
    lead = words[:1] if words and words[0] == "" else []  # keep a leading space where there was one
    body = words[len(lead) :]
    if not body:
        return completion
    if kind == "shuffle":
        body = [body[i] for i in rng.permutation(len(body))]
    elif kind == "repeat":
        i = int(rng.integers(0, len(body)))
        body = body[: i + 1] + [body[i]] * int(rng.integers(2, 7)) + body[i + 1 :]
    else:
        raise ValueError(f"kind must be 'prefix', 'shuffle' or 'repeat', got {kind!r}")
    return " ".join(lead + body)


def default_reward_rows(
    task: Task, n: int, seed: int = 0, perturb: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """``n`` gold-scored training rows from ``task.scored_texts``, a share of them perturbed and rescored.

    ``perturb`` maps a :func:`perturb_completion` kind to the share of rows that get it (e.g.
    ``{"prefix": 0.2, "shuffle": 0.1, "repeat": 0.1}``), so the reward model has seen partial completions,
    word salad and repetition (what an RL policy writes on its way) with their true gold scores.
    """
    rows = task.scored_texts(n, seed=seed, split="train")
    perturb = perturb or {}
    if sum(perturb.values()) > 1.0 or any(v < 0 for v in perturb.values()):
        raise ValueError(f"perturb shares must be >= 0 and sum to at most 1, got {perturb!r}")
    rng = np.random.default_rng(seed + 1)
    kinds, shares = list(perturb), np.array(list(perturb.values()), dtype=np.float64)
    bounds = np.cumsum(shares)
    picked: list[int] = []
    completions: list[str] = []
    for i, u in enumerate(rng.uniform(size=n)):
        k = int(np.searchsorted(bounds, u, side="right"))
        if k < len(kinds):
            picked.append(i)
            completions.append(perturb_completion(str(rows[i]["completion"]), rng, kinds[k]))
    if not picked:
        return rows
    prompts = [str(rows[i]["prompt"]) for i in picked]
    scores = check_scores(task.gold_score(prompts, completions), len(picked), f"gold:{task.name}")
    for i, prompt, completion, score in zip(picked, prompts, completions, scores, strict=True):
        rows[i] = {"prompt": prompt, "completion": completion, "score": float(score)}
    return rows


def build_default_reward_model(
    task: Task,
    out_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase = "default",
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    n_train: int | None = None,
    pretrained: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train and save the shipped reward model of ``task``: MSE on gold-scored texts with
    :data:`DEFAULT_BUILD` (updated with ``TASK_BUILD[task.name]``) and :data:`DEFAULT_MODEL_KWARGS`.

    ``steps`` and ``n_train`` override the tuned step count and training-set size (tests use a handful).
    ``pretrained`` is the pretrained causal-LM directory that tasks with ``init_from_pretrained`` start from.
    Returns the metrics of :func:`train_reward_model`, including ``gold/spearman`` on held-out texts.
    """
    cfg = {**DEFAULT_BUILD, **TASK_BUILD.get(task.name, {})}
    # None means the tuned value; 0 is not replaced by it (it is refused downstream)
    rows = default_reward_rows(task, n_train if n_train is not None else cfg["n_train"], seed=seed,
                               perturb=cfg["perturb"])
    eval_rows = task.scored_texts(cfg["n_eval"], seed=seed + 1, split="test")
    base = None
    if cfg.get("init_from_pretrained"):
        if pretrained is None:
            raise ValueError(f"the {task.name} reward model starts from the pretrained LM: pass pretrained=<dir>")
        base = pretrained
    return train_reward_model(
        rows,
        out_dir,
        loss="mse",
        tokenizer=tokenizer,
        steps=steps if steps is not None else cfg["steps"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        seed=seed,
        eval_rows=eval_rows,
        base=base,
        model_kwargs=None if base is not None else dict(DEFAULT_MODEL_KWARGS),
        progress=progress,
        task=task,
        warmup_fraction=cfg["warmup_fraction"],
    )


# ---------------------------------------------------------------------------- label noise and ensembles
def add_label_noise(rows: Sequence[dict[str, Any]], p: float, loss: str = "mse", seed: int = 0
                    ) -> list[dict[str, Any]]:
    """``rows`` with a share ``p`` of their labels corrupted, for experiments on noisy reward models (Coste
    et al. 2023 train on 25% noisy labels). Each row is hit independently with probability ``p``:

    - ``loss="mse"``: its score is replaced by the score of a uniformly drawn row (the label marginal is
      kept, the row's information destroyed);
    - ``loss="bt"``: its ``chosen`` and ``rejected`` are swapped (a flipped preference).

    Seeded by ``seed``; the input rows are not modified. ``p = 0`` returns copies of the rows.
    """
    _check_loss(loss)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"label noise p must be a number in [0, 1], got {p!r}")
    rows = check_reward_rows(rows, loss, "rows")
    rng = np.random.default_rng([seed, 7])
    hit = rng.random(len(rows)) < float(p)
    donors = rng.integers(0, len(rows), size=len(rows))
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        if hit[i]:
            if loss == "mse":
                row["score"] = rows[int(donors[i])]["score"]
            else:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        out.append(row)
    return out


def train_reward_ensemble(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], k: int, seed: int = 0,
                          resume: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Train ``k`` reward models on the same ``rows``, member i with seed ``seed + i`` (its initialisation
    and batch order: Coste et al.'s ensembles differ only in seed), into ``out_dir/member-<i>``, then write
    ``out_dir/textenv_ensemble.json`` (last, atomically: its presence says the ensemble is complete).

    ``reward_model=out_dir`` then scores with the members' mean (edit ``"aggregate"`` / ``"uwo_lambda"`` in
    that file, or build :class:`textenv.rewards.Ensemble` yourself, for ``"min"`` or ``"uwo"``). ``kwargs``
    go to :func:`train_reward_model`. ``resume=True`` keeps finished members and resumes the others.
    Returns ``{"members": [metrics of each], "k": k, "seeds": [...]}``.
    """
    from textenv import io
    from textenv.rewards.ensemble import ENSEMBLE_FILE

    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2:
        raise ValueError(f"an ensemble needs k >= 2 members, got {k!r}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} exists and is not a directory")
    names = [f"member-{i}" for i in range(int(k))]
    if out.is_dir() and not resume:
        from textenv.io import LOCK_NAME

        foreign = [c.name for c in out.iterdir() if c.name != LOCK_NAME]
        if foreign:
            raise ValueError(f"out_dir {str(out_dir)!r} is not empty ({sorted(foreign)[:5]}); refusing to replace "
                             f"it (pass resume=True to continue an ensemble there)")
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for i, name in enumerate(names):
        member = out / name
        if resume and (member / REWARD_METADATA_FILE).is_file():
            members.append(io.read_json(member / REWARD_METADATA_FILE, "reward model metadata").get("metrics", {}))
            continue
        members.append(train_reward_model(rows, member, seed=seed + i, resume=resume and member.is_dir(), **kwargs))
    summary = {"members": names, "aggregate": "mean", "uwo_lambda": None, "k": int(k),
               "seeds": [seed + i for i in range(int(k))], "metrics": members}
    io.write_json(out / ENSEMBLE_FILE, summary)
    return {"members": members, "k": int(k), "seeds": summary["seeds"]}
