"""The stage 1-3 commands of the ``textenv`` console script, and the defaults build.

Subcommands (``textenv SUBCOMMAND --help`` for the options):

- ``pretrain``      stage 1, causal-LM pretraining on plain text
- ``finetune``      stage 2, supervised fine-tuning on (prompt, response) pairs
- ``train-reward``  stage 3, a reward model by MSE regression or Bradley-Terry
- ``build-defaults`` rebuild everything shipped in ``textenv/data``

The RL commands (``train``, ``evaluate``, ``sample``) live a layer up, in :mod:`agents.cli`, which adds them
to :data:`STAGE_COMMANDS` for the console script: ``textenv`` never imports ``agents``.

The stage commands (:data:`STAGE_COMMANDS`) take their flags from one dataclass each (:class:`PretrainArgs`,
:class:`FinetuneArgs`, :class:`TrainRewardArgs`, :class:`BuildDefaultsArgs`) through
:mod:`textenv.cli_framework`; a field's docstring is its ``--help``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from textenv.cli_framework import Command, run

T = TypeVar("T")


# ------------------------------------------------------------------------------------- argument checks
def _check_min(values: dict[str, Any], low: int) -> None:
    for flag, value in values.items():
        if value < low:
            raise ValueError(f"--{flag} must be >= {low}, got {value}")


def _check_positive(flag: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--{flag} must be a finite number > 0, got {value}")


def _one_source(flags: dict[str, str | None]) -> None:
    """Exactly one of the mutually exclusive data sources ``flags`` (flag name -> value) is given."""
    given = {k: v for k, v in flags.items() if v is not None}
    flag_names = [f"--{k}" for k in flags]
    names = ", ".join(flag_names[:-1]) + f" or {flag_names[-1]}" if len(flag_names) > 1 else flag_names[0]
    if len(given) > 1:
        got = " and ".join(f"--{k} {v!r}" for k, v in given.items())
        raise ValueError(f"give one of {names}, not {'both' if len(flags) == 2 else 'several'} (got {got})")
    if not given:
        raise ValueError(f"one of {names} is required")


# ------------------------------------------------------------------------------------- argument dataclasses
@dataclass
class PretrainArgs:
    """Flags of ``textenv pretrain``."""

    out: str
    """output directory (save_pretrained layout + checkpoints)"""
    task: str | None = None
    """a built-in task's corpus (sentiment, arithmetic, keywords); exclusive with --corpus"""
    corpus: str | None = None
    """a .txt file (one document per non-empty line) or .jsonl file ({"text": ...} rows); exclusive with --task"""
    model: str = "tiny"
    """'tiny' (a fresh ~1M-parameter GPT-2) or an HF model directory"""
    tokenizer: str = "default"
    """'default' or an HF tokenizer directory"""
    docs: int = 20000
    """documents drawn from --task"""
    steps: int = 1000
    """optimizer steps"""
    batch_size: int = 16
    """examples per optimizer step"""
    lr: float = 1e-3
    """peak learning rate"""
    max_length: int = 128
    """tokens per example (longer documents are chunked)"""
    seed: int = 0
    """seed of the data draw and the training run"""
    resume: bool = False
    """continue from the latest checkpoint in --out"""
    progress: bool = True
    """show a progress bar (--no-progress hides it)"""

    def __post_init__(self) -> None:
        _one_source({"task": self.task, "corpus": self.corpus})
        _check_min({"docs": self.docs, "steps": self.steps, "batch-size": self.batch_size}, 1)
        _check_min({"max-length": self.max_length}, 2)
        _check_min({"seed": self.seed}, 0)
        _check_positive("lr", self.lr)


@dataclass
class FinetuneArgs:
    """Flags of ``textenv finetune``."""

    model: str
    """an HF causal-LM or encoder-decoder (T5, BART) directory (e.g. a pretrain --out), or tiny / tiny-t5"""
    out: str
    """output directory (save_pretrained layout + checkpoints)"""
    task: str | None = None
    """a built-in task's (prompt, response) pairs; exclusive with --pairs"""
    pairs: str | None = None
    """a .jsonl file of {"prompt", "response"} rows (or "reference"/"references"/"answer", as --task-data files
    have); exclusive with --task"""
    pairs_count: int = 20000
    """pairs drawn from --task"""
    steps: int = 500
    """optimizer steps"""
    batch_size: int = 16
    """examples per optimizer step"""
    lr: float = 3e-4
    """peak learning rate"""
    max_length: int = 128
    """tokens per example (longer prompts are cut from the left)"""
    seed: int = 0
    """seed of the data draw and the training run"""
    resume: bool = False
    """continue from the latest checkpoint in --out"""
    progress: bool = True
    """show a progress bar (--no-progress hides it)"""

    def __post_init__(self) -> None:
        _one_source({"task": self.task, "pairs": self.pairs})
        _check_min({"pairs-count": self.pairs_count, "steps": self.steps, "batch-size": self.batch_size}, 1)
        _check_min({"max-length": self.max_length}, 2)
        _check_min({"seed": self.seed}, 0)
        _check_positive("lr", self.lr)


@dataclass
class TrainRewardArgs:
    """Flags of ``textenv train-reward``."""

    out: str
    """output directory of the reward model"""
    task: str | None = None
    """a built-in task: gold-scored texts (mse) or preference pairs (bt); exclusive with --data"""
    data: str | None = None
    """.jsonl: {"text","score"} / {"prompt","completion","score"} rows (mse), {"prompt","chosen","rejected"}
    (bt); exclusive with --task"""
    task_data: str | None = None
    """a .jsonl of {"prompt", "reference"|"references"|"answer"} rows (a DatasetTask): --policy's samples for its
    prompts (and the references) scored by --metric; exclusive with --task and --data"""
    metric: str = "chrf"
    """with --task-data: exact_match, f1, bleu, chrf, rouge1, rouge2 or rougeL"""
    policy: str = "default"
    """with --task-data: the causal LM that writes the scored samples ('default', 'tiny' or an HF directory)"""
    samples: int = 4
    """with --task-data: completions sampled per prompt"""
    loss: Literal["mse", "bt"] = "mse"
    """mse: regression on scores; bt: Bradley-Terry on preference pairs"""
    base: str | None = None
    """start from this HF causal-LM directory (default: a fresh tiny GPT-2)"""
    tokenizer: str = "default"
    """'default' or an HF tokenizer directory"""
    steps: int = 1000
    """optimizer steps"""
    batch_size: int = 32
    """rows per optimizer step"""
    lr: float = 5e-4
    """peak learning rate"""
    rows: int = 20000
    """rows drawn from --task"""
    seed: int = 0
    """seed of the data draw and the training run"""
    ensemble: int = 1
    """train K members (seeds seed..seed+K-1) into --out/member-<i>; --reward-model --out then scores with their mean"""
    label_noise: float = 0.0
    """corrupt this share of the training labels (mse: a random row's score; bt: chosen and rejected swapped)"""
    resume: bool = False
    """continue the run in --out from its latest checkpoint"""
    progress: bool = True
    """show a progress bar (--no-progress hides it)"""

    def __post_init__(self) -> None:
        _one_source({"task": self.task, "data": self.data, "task-data": self.task_data})
        _check_min({"rows": self.rows, "steps": self.steps, "batch-size": self.batch_size, "samples": self.samples,
                    "ensemble": self.ensemble}, 1)
        from textenv.metrics import METRICS

        if self.metric not in METRICS:
            raise ValueError(f"--metric must be one of {list(METRICS)}, got {self.metric!r}")
        _check_min({"seed": self.seed}, 0)
        _check_positive("lr", self.lr)
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"--label-noise must be in [0, 1], got {self.label_noise}")


@dataclass
class BuildDefaultsArgs:
    """Flags of ``textenv build-defaults``."""

    out: str | None = None
    """output directory (default: the package's textenv/data)"""
    seed: int = 0
    """seed of every stage of the build"""
    scale: float = 1.0
    """multiply data and steps (small: a quick check)"""
    threads: int | None = None
    """torch CPU threads; bytes are reproducible for a fixed count (the shipped set: see MANIFEST.json)"""
    progress: bool = True
    """show progress bars (--no-progress hides them)"""
    tasks: str | None = None
    """comma-separated tasks to build (default: the recipe's, RECIPE["tasks"] in textenv.training.defaults)"""
    rewards_only: bool = False
    """build only the reward models of --tasks, on the tokenizer and pretrained LM already in --out"""
    jobs: int = 1
    """worker processes that build the policy and the reward models after pretraining (the bytes of 1)"""

    def __post_init__(self) -> None:
        _check_min({"seed": self.seed}, 0)
        _check_min({"jobs": self.jobs}, 1)
        _check_positive("scale", self.scale)
        if self.threads is not None:
            _check_min({"threads": self.threads}, 1)
        if self.tasks is not None:
            from textenv.training.defaults import check_task_names

            names = [n.strip() for n in self.tasks.split(",") if n.strip()]
            try:
                check_task_names(names)
            except ValueError as e:
                raise ValueError(f"--tasks {self.tasks!r}: {e}") from None
        if self.rewards_only and self.tasks is None:
            raise ValueError("--rewards-only needs --tasks (the reward models to build)")

    def task_names(self) -> list[str] | None:
        """The ``--tasks`` names, or None for the recipe's."""
        return None if self.tasks is None else [n.strip() for n in self.tasks.split(",") if n.strip()]


def _hold_out(items: list[T]) -> tuple[list[T], list[T]]:
    """(train, held-out): the first 2% (at least one item) held out for the perplexity."""
    n_eval = max(1, len(items) // 50)
    return items[n_eval:] or items, items[:n_eval]


def _stage_dir_is_ours(out: Path, *markers: str) -> bool:
    """Whether ``out`` holds a stage run of ours: a checkpoint of the training loop or a final ``marker``."""
    from textenv.training.loop import latest_checkpoint

    return latest_checkpoint(out) is not None or any((out / m).is_file() for m in markers)


def _guarded(out: str | Path, ours: bool, what: str, fn: Any) -> int:
    """Run ``fn()`` holding the lock of the run directory ``out``, after refusing a foreign non-empty one
    (:func:`textenv.io.refuse_foreign_dir`, :func:`textenv.io.run_lock`)."""
    from textenv import io

    io.refuse_foreign_dir(out, ours)
    with io.run_lock(out, what):
        return int(fn())


def _cmd_pretrain(a: PretrainArgs) -> int:
    from textenv.training.lm import METRICS_NAME

    return _guarded(a.out, _stage_dir_is_ours(Path(a.out), METRICS_NAME), "textenv pretrain",
                    lambda: _pretrain(a))


def _cmd_finetune(a: FinetuneArgs) -> int:
    from textenv.training.lm import METRICS_NAME

    return _guarded(a.out, _stage_dir_is_ours(Path(a.out), METRICS_NAME), "textenv finetune",
                    lambda: _finetune(a))


def _cmd_train_reward(a: TrainRewardArgs) -> int:
    from textenv.rewards.base import REWARD_METADATA_FILE
    from textenv.rewards.ensemble import ENSEMBLE_FILE

    out = Path(a.out)
    ours = _stage_dir_is_ours(out, REWARD_METADATA_FILE, "config.json", ENSEMBLE_FILE) or (
        a.ensemble > 1 and (out / "member-0").is_dir())  # an ensemble interrupted before its file
    return _guarded(a.out, ours, "textenv train-reward", lambda: _train_reward(a))


def _cmd_build_defaults(a: BuildDefaultsArgs) -> int:
    from textenv.training.defaults import DATA_DIR

    out = Path(a.out) if a.out is not None else DATA_DIR
    return _guarded(out, (out / "MANIFEST.json").is_file(), "textenv build-defaults", lambda: _build_defaults(a))


def _pretrain(a: PretrainArgs) -> int:
    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.tasks import get_task
    from textenv.training.lm import load_text_corpus, pretrain
    from textenv.training.loop import TrainConfig

    tok = load_tokenizer(a.tokenizer)
    if a.task is not None:
        task = get_task(a.task)
        texts = task.pretrain_corpus(a.docs, seed=a.seed)
        eval_texts = [p + r for p, r in task.sft_pairs(max(20, a.docs // 50), seed=a.seed + 1, split="test")]
    else:
        assert a.corpus is not None  # PretrainArgs checks that one source is given
        texts, eval_texts = _hold_out(load_text_corpus(a.corpus))
    model = load_causal_lm(a.model, tokenizer=tok)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length,
                        seed=a.seed, progress=a.progress)
    m = pretrain(model, tok, texts, a.out, cfg, eval_texts=eval_texts, resume=a.resume)
    print(json.dumps(m, indent=2))
    return 0


def _finetune(a: FinetuneArgs) -> int:
    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.tasks import get_task
    from textenv.training.lm import finetune, load_pairs_jsonl
    from textenv.training.loop import TrainConfig

    tok = load_tokenizer(a.model if (Path(a.model) / "tokenizer_config.json").exists() else "default")
    if a.task is not None:
        task = get_task(a.task)
        pairs = task.sft_pairs(a.pairs_count, seed=a.seed)
        eval_pairs = task.sft_pairs(max(20, a.pairs_count // 50), seed=a.seed + 1, split="test")
    else:
        assert a.pairs is not None  # FinetuneArgs checks that one source is given
        pairs, eval_pairs = _hold_out(load_pairs_jsonl(a.pairs))
    model = load_causal_lm(a.model, tokenizer=tok)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length,
                        seed=a.seed, progress=a.progress)
    m = finetune(model, tok, pairs, a.out, cfg, eval_pairs=eval_pairs, resume=a.resume)
    print(json.dumps(m, indent=2))
    return 0


def _train_reward(a: TrainRewardArgs) -> int:
    from textenv.tasks import get_task
    from textenv.training.reward import (
        add_label_noise,
        load_reward_rows,
        train_reward_ensemble,
        train_reward_model,
    )

    task = None
    task_name: str | None = None
    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]] | None
    if a.task is not None:
        task = get_task(a.task)
        if a.loss == "mse":
            rows = task.scored_texts(a.rows, seed=a.seed)
            eval_rows = task.scored_texts(max(64, a.rows // 20), seed=a.seed + 1, split="test")
        else:
            rows = task.preference_pairs(a.rows, seed=a.seed)
            eval_rows = task.preference_pairs(max(64, a.rows // 20), seed=a.seed + 1, split="test")
    elif a.task_data is not None:
        task_name, rows, eval_rows = _task_data_rows(a)
    else:
        assert a.data is not None  # TrainRewardArgs checks that one source is given
        rows = load_reward_rows(a.data, a.loss)
        n_eval = max(1, len(rows) // 20) if len(rows) >= 40 else 0
        rows, eval_rows = (rows[n_eval:], rows[:n_eval]) if n_eval else (rows, None)
    if a.label_noise > 0:
        rows = add_label_noise(rows, a.label_noise, a.loss, seed=a.seed)  # the held-out rows stay clean
    kwargs: dict[str, Any] = dict(loss=a.loss, tokenizer=a.tokenizer, base=a.base, steps=a.steps,
                                  batch_size=a.batch_size, lr=a.lr, eval_rows=eval_rows, progress=a.progress,
                                  task=task if task is not None else task_name)
    if a.ensemble > 1:
        m = train_reward_ensemble(rows, a.out, a.ensemble, seed=a.seed, resume=a.resume, **kwargs)
    else:
        m = train_reward_model(rows, a.out, seed=a.seed, resume=a.resume, **kwargs)
    print(json.dumps(m, indent=2))
    return 0


def _task_data_rows(a: TrainRewardArgs) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(task name, rows, eval rows)`` of ``--task-data``: --policy's samples scored by --metric on the
    file's train prompts (eval: its test prompts), as MSE rows or (--loss bt) best-vs-worst pairs."""
    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.tasks import DatasetTask
    from textenv.training.scored import preference_rows, scored_policy_rows

    assert a.task_data is not None
    task = DatasetTask(a.task_data, metric=a.metric)
    tok_source = a.policy if (Path(a.policy) / "tokenizer_config.json").exists() else a.tokenizer
    tok = load_tokenizer(tok_source)
    model = load_causal_lm(a.policy, tokenizer=tok)
    split_rows = {}
    for split in ("train", "test"):
        scored = (scored_policy_rows(task, model, tok, split=split, samples_per_prompt=a.samples, seed=a.seed)
                  if task.split_prompts(split) else [])
        split_rows[split] = preference_rows(scored) if a.loss == "bt" else scored
    if not split_rows["train"]:
        raise ValueError(f"--task-data {a.task_data!r}: no {'preference pairs' if a.loss == 'bt' else 'rows'} "
                         f"from its train prompts (bt needs samples of different scores)")
    return task.name, split_rows["train"], split_rows["test"] or None


def _build_defaults(a: BuildDefaultsArgs) -> int:
    from textenv.training.defaults import build_defaults

    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    if a.rewards_only:
        from textenv.training.defaults import build_reward_models

        m = build_reward_models(a.task_names() or [], a.out, seed=a.seed, scale=a.scale, progress=a.progress,
                                jobs=a.jobs)
    else:
        m = build_defaults(a.out, seed=a.seed, scale=a.scale, progress=a.progress, tasks=a.task_names(),
                           jobs=a.jobs)
    print(json.dumps(m["quality"], indent=2))
    return 0


#: The stage 1-3 commands and the defaults build, each with its argument dataclass.
STAGE_COMMANDS: list[Command] = [
    Command("pretrain", "stage 1: pretrain a causal LM on plain text", (PretrainArgs,), _cmd_pretrain),
    Command("finetune", "stage 2: fine-tune on (prompt, response) pairs, loss on responses", (FinetuneArgs,),
            _cmd_finetune),
    Command("train-reward", "stage 3: train a reward model (MSE or Bradley-Terry)", (TrainRewardArgs,),
            _cmd_train_reward),
    Command("build-defaults", "rebuild the shipped tokenizer, LMs and reward models", (BuildDefaultsArgs,),
            _cmd_build_defaults),
]


def main(argv: Sequence[str] | None = None) -> int:
    """The stage commands alone (``python -m textenv``); returns the exit status. The ``textenv`` console
    script, with the RL commands on top, is :func:`agents.cli.main`."""
    return run(argv, STAGE_COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
