"""The one training loop of stages 1-3 (causal LM, SFT, reward model): config, optimizer, schedule, checkpoints.

- :class:`TrainConfig`: the hyper-parameters every stage shares (the reward model adds its own fields in
  :class:`textenv.training.reward.RewardTrainConfig`).
- :func:`make_optimizer`: AdamW, weight decay on matrices only.
- :func:`make_scheduler`: linear warm-up then cosine decay to :data:`MIN_LR_RATIO` of the peak at the last
  step, built on ``transformers.get_cosine_with_min_lr_schedule_with_warmup``.
- :func:`train`: the loop itself, given a batch function and a loss function of a batch: gradient clipping,
  an eval hook, a progress bar, atomic checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) and a
  resume that continues bitwise as the uninterrupted run would.
- :func:`install_final`: the final model, tokenizer and JSON files written into the output directory.

A checkpoint is a directory ``checkpoint-<step>`` written through :func:`textenv.io.atomic_dir`::

    checkpoint-00000500/
      config.json, model.safetensors, tokenizer files   model.save_pretrained (+ tokenizer.save_pretrained)
      optimizer.pt                                      optimizer, scheduler and torch RNG state (tensors and
                                                        plain containers only: torch.load(weights_only=True))
      trainer_state.json                                step, stage, config, loss and eval history (the marker)

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> opt = make_optimizer(model, TrainConfig(steps=6, warmup_steps=2, lr=1.0))
    >>> sched = make_scheduler(opt, TrainConfig(steps=6, warmup_steps=2, lr=1.0))
    >>> lrs = []
    >>> for _ in range(6):
    ...     lrs.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
    >>> lrs
    [0.5, 1.0, 1.0, 0.775, 0.325, 0.1]
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from textenv.io import (
    KEEP_CHECKPOINTS,
    atomic_dir,
    checkpoint_name,
    list_checkpoints,
    prune_checkpoints,
    read_json,
    remove_stale_temporaries,
    write_text,
)
from textenv.models import quiet_progress

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
"""The file a complete checkpoint holds (written last inside its atomic directory)."""
OPTIMIZER_NAME = "optimizer.pt"
MIN_LR_RATIO = 0.1
"""The learning rate at the last step, as a share of the peak."""

Batch = TypeVar("Batch")


class NonFiniteError(FloatingPointError, ValueError):
    """A training step produced a non-finite loss, gradient norm or weights: the run stops before the
    optimizer applies it (a ``ValueError`` too, so the CLI reports it as one line with exit status 2)."""


def check_finite(where: str, **values: float) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` (e.g. ``"pretrain step 7"``) and the first of ``values``
    (``loss=..., grad_norm=...``) that is NaN or infinite."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise NonFiniteError(f"{where}: the {name.replace('_', ' ')} is {value} (not finite); training "
                                 "stopped before applying it; checkpoints already written are kept, none is written "
                                 "from this state (lower the learning rate or check the data)")


def check_finite_weights(where: str, module: Any) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` and the first parameter of ``module`` holding a NaN or
    an infinity (checked before a checkpoint is written, so no checkpoint holds such weights)."""
    import torch

    for name, param in module.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            raise NonFiniteError(f"{where}: weight {name!r} holds non-finite values; not saved ("
                                 "checkpoints already written are kept; lower the learning rate)")


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (stages 1-3).

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this many).
        batch_size: examples per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (not biases or norms).
        warmup_steps: steps of linear warm-up from ``lr / warmup_steps`` to ``lr``; then cosine decay to
            ``0.1 * lr`` at the last step.
        grad_clip: maximum global gradient norm; 0 disables clipping.
        max_length: tokens per example; longer documents are chunked (pretraining), longer prompts are cut
            from the left (fine-tuning), longer texts keep their end (reward model).
        eval_every: evaluate on held-out data every this many steps (0: only at the end).
        eval_batches: held-out batches per evaluation (a fixed, evenly spread subset of the eval data).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        seed: seeds ``torch`` at the start and, with the step number, each step's batch.
        log_every: log the smoothed train loss every this many steps; also the smoothing window.
        progress: show a tqdm progress bar.
        bf16: use bfloat16 autocast on CUDA devices that support it (ignored on CPU).
        group_by_length: batch examples of similar length together (stages 1-2), so that little of a batch
            is padding (transformers' ``TrainingArguments.group_by_length``; see
            :func:`textenv.training.lm.length_grouped_batches`). Off: each step draws its batch uniformly.

    Example:
        >>> TrainConfig(steps=100, lr=1e-3).warmup_steps
        100
        >>> TrainConfig(steps=0)
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
    group_by_length: bool = False

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
        for name in ("progress", "bf16", "group_by_length"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


# --------------------------------------------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) over the trainable parameters: ``config.weight_decay`` on matrices, none on
    biases and norm gains (decaying those towards 0 hurts and is not what the AdamW papers do)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of 0-based step s: ``lr * (s + 1) / warmup_steps`` during warm-up, then
    cosine from ``lr`` to ``MIN_LR_RATIO * lr`` at the last step (``s = steps - 1``).

    It is ``transformers.get_cosine_with_min_lr_schedule_with_warmup`` over ``steps - 1`` decay-counted
    steps, read one step ahead during warm-up so that the first update already moves (transformers' step 0
    has learning rate 0).
    """
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    warmup = config.warmup_steps
    # A throwaway scheduler, only for its lambda; `initial_lr` it sets in the groups is the peak lr, kept below.
    hf_lambda = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=config.steps - 1, min_lr_rate=MIN_LR_RATIO,
    ).lr_lambdas[0]

    def multiplier(step: int) -> float:  # a plain function: LambdaLR.state_dict stores nothing of it
        return float(hf_lambda(step + 1 if step < warmup else step))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def autocast(device: torch.device, bf16: bool) -> Any:
    """bfloat16 autocast on a CUDA device that supports it when ``bf16``; otherwise a no-op context."""
    import torch

    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------------------
# Checkpoints


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step in ``out_dir``, or ``None``."""
    found = list_checkpoints(out_dir, TRAINER_STATE_NAME)
    return found[-1] if found else None


class TrainState(NamedTuple):
    """What :func:`load_checkpoint` restores besides the weights and optimizer: where the run stood."""

    step: int
    loss_history: list[float]
    eval_history: list[dict[str, float]]


def save_checkpoint(out_dir: str | os.PathLike[str], state: TrainState, model: PreTrainedModel,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    config: TrainConfig, stage: str, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write ``out_dir/checkpoint-<step>`` atomically and keep only the newest :data:`KEEP_CHECKPOINTS`."""
    import torch

    out = Path(out_dir)
    path = out / checkpoint_name(state.step)
    check_finite_weights(f"{stage} step {state.step}", model)
    with atomic_dir(path) as tmp:
        with quiet_progress():
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                   tmp / OPTIMIZER_NAME)
        _write_json(tmp / TRAINER_STATE_NAME, {"stage": stage, "step": state.step, "config": asdict(config),
                                               "loss_history": state.loss_history,
                                               "eval_history": state.eval_history})
    prune_checkpoints(out, TRAINER_STATE_NAME, KEEP_CHECKPOINTS)
    logger.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike[str], model: PreTrainedModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> TrainState:
    """Restore weights, optimizer, scheduler and torch RNG from a checkpoint of :func:`save_checkpoint`."""
    import torch

    path = Path(path)
    trainer_state = read_json(path / TRAINER_STATE_NAME, "trainer state")
    # from_pretrained handles tied weights and sharded files; its weights are then copied into the caller's model.
    with quiet_progress():
        loaded = type(model).from_pretrained(str(path), dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())
    del loaded
    state = torch.load(path / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return TrainState(int(trainer_state["step"]), list(trainer_state["loss_history"]),
                      list(trainer_state["eval_history"]))


_TEMP_RE = re.compile(r"^\.(.+)\.(?:tmp|old)-")


def remove_stale_checkpoint_temporaries(out_dir: str | os.PathLike[str]) -> None:
    """Remove what killed writers left in ``out_dir`` (temporaries of :func:`textenv.io.atomic_dir` whose
    process is gone); a live writer's temporaries and every other file stay."""
    out = Path(out_dir)
    if not out.is_dir():
        return
    for child in list(out.iterdir()):
        m = _TEMP_RE.match(child.name)
        if m:
            remove_stale_temporaries(out / m.group(1))


def install_final(out_dir: str | os.PathLike[str], model: PreTrainedModel,
                  tokenizer: PreTrainedTokenizerBase, json_files: dict[str, Any], replace: bool = False) -> None:
    """Write the final model, tokenizer and ``json_files`` (name -> object) at ``out_dir`` itself.

    ``replace=True`` replaces ``out_dir`` whole (its checkpoints go: the run is complete). Otherwise the files
    are written into a complete staging directory first and then renamed in beside the checkpoints, the last
    of ``json_files`` last: its presence says the files beside it are complete.
    """
    out = Path(out_dir)
    if replace:
        with atomic_dir(out) as tmp:
            _write_final(tmp, model, tokenizer, json_files)
        return
    marker = list(json_files)[-1] if json_files else None
    staging = out / ".final"
    with atomic_dir(staging) as tmp:
        _write_final(tmp, model, tokenizer, json_files)
    if marker is not None:
        with contextlib.suppress(FileNotFoundError):
            (out / marker).unlink()  # an older marker must not vouch for the files being replaced
    for name in sorted((p.name for p in staging.iterdir()), key=lambda n: n == marker):
        target = out / name
        if (staging / name).is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()


def _write_final(d: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 json_files: dict[str, Any]) -> None:
    with quiet_progress():
        model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    for name, obj in json_files.items():
        _write_json(d / name, obj)


def _write_json(path: Path, obj: Any) -> None:
    # NaN stays NaN (Python's json reads it back): a diverged loss is recorded, not a crash at the checkpoint.
    write_text(path, json.dumps(obj, indent=2))


# --------------------------------------------------------------------------------------------------------------
# The loop


class TrainResult(NamedTuple):
    """What :func:`train` returns: the final step, every step's loss, the evaluations and the seconds spent
    in this call's steps (not the ones a resumed run did before)."""

    step: int
    loss_history: list[float]
    eval_history: list[dict[str, float]]
    elapsed_s: float


def smoothed(losses: list[float], window: int) -> float:
    """Mean of the last ``window`` losses."""
    tail = losses[-window:]
    return float(sum(tail) / len(tail))


def train(model: PreTrainedModel, config: TrainConfig, out_dir: str | os.PathLike[str],
          batch_fn: Callable[[int], Batch], loss_fn: Callable[[Batch], torch.Tensor], *, stage: str,
          resume: bool = False, evaluate: Callable[[int], dict[str, float]] | None = None,
          tokenizer: PreTrainedTokenizerBase | None = None, final_checkpoint: bool = True) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` optimizer steps, checkpointing into ``out_dir``.

    Args:
        batch_fn: the batch of 1-based step ``step``, a function of the step alone (e.g. drawn from
            ``np.random.default_rng([seed, step])``), so a resumed run draws what the uninterrupted one did.
        loss_fn: the scalar loss of a batch (run under :func:`autocast`).
        stage: a name for logs, the progress bar and ``trainer_state.json`` (``"pretrain"``, ...).
        resume: continue from the latest checkpoint in ``out_dir``; without it, a directory that holds
            checkpoints is refused.
        evaluate: called with the step every ``config.eval_every`` steps and after the last; returns metrics
            (with ``"step"``) appended to the eval history. It may switch the model to eval mode.
        tokenizer: saved with each checkpoint.
        final_checkpoint: write a checkpoint at the last step (off when the caller replaces ``out_dir`` with
            the final model anyway).
    """
    import torch
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_checkpoint_temporaries(out)
    latest = latest_checkpoint(out)
    if latest is not None and not resume:
        raise ValueError(f"out_dir {str(out)!r} already holds checkpoints (latest {latest.name}); "
                         "pass resume=True to continue, or use an empty directory")

    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    state = TrainState(0, [], [])
    if resume:
        if latest is None:
            logger.warning("resume=True but %s holds no checkpoint; starting %s from step 0", out, stage)
        else:
            state = load_checkpoint(latest, model, optimizer, scheduler)
            logger.info("resumed %s from %s (step %d of %d)", stage, latest, state.step, config.steps)
            if state.step > config.steps:
                logger.warning("checkpoint step %d is past config.steps=%d; nothing left to train",
                               state.step, config.steps)
    step, loss_history, eval_history = state

    amp = autocast(device, config.bf16)
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=min(step, config.steps), desc=stage, disable=not config.progress,
               dynamic_ncols=True)
    model.train()
    try:
        while step < config.steps:
            step += 1
            batch = batch_fn(step)
            with amp:
                loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
            check_finite(f"{stage} step {step}", loss=loss_value)
            loss.backward()
            if config.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            else:
                grads = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
                grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
            check_finite(f"{stage} step {step}", grad_norm=grad_norm)
            optimizer.step()
            scheduler.step()

            loss_history.append(loss_value)
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                loss_now = smoothed(loss_history, config.log_every)
                bar.set_postfix(loss=f"{loss_now:.4f}")
                logger.info("%s step %d/%d loss %.4f lr %.3g", stage, step, config.steps, loss_now,
                            scheduler.get_last_lr()[0])
            if step == config.steps:
                break  # the final eval and checkpoint follow the loop
            if evaluate is not None and config.eval_every and step % config.eval_every == 0:
                eval_history.append(evaluate(step))
                model.train()
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save_checkpoint(out, TrainState(step, loss_history, eval_history), model, optimizer, scheduler,
                                config, stage, tokenizer)
    finally:
        bar.close()
        model.eval()
    elapsed = time.perf_counter() - t0

    if evaluate is not None and (not eval_history or eval_history[-1]["step"] != step):
        eval_history.append(evaluate(step))
    final = out / checkpoint_name(step)
    if final_checkpoint and not (final / TRAINER_STATE_NAME).is_file():
        save_checkpoint(out, TrainState(step, loss_history, eval_history), model, optimizer, scheduler, config,
                        stage, tokenizer)
    return TrainResult(step, loss_history, eval_history, elapsed)
