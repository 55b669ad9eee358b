"""The ``textenv`` command: the four pipeline stages, the defaults build, and RL training.

Subcommands (``textenv SUBCOMMAND --help`` for the options):

- ``pretrain``      stage 1, causal-LM pretraining on plain text
- ``finetune``      stage 2, supervised fine-tuning on (prompt, response) pairs
- ``train-reward``  stage 3, a reward model by MSE regression or Bradley-Terry
- ``build-defaults`` rebuild everything shipped in ``textenv/data``
- ``train``         stage 4, RL: train the LM policy in a TextGen env (the main job)
- ``evaluate``      evaluate a training run's checkpoint on held-out prompts
- ``sample``        sample completions from a checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _add_common_lm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (save_pretrained layout + checkpoints)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    from textenv import ENV_IDS

    parser = argparse.ArgumentParser(prog="textenv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="stage 1: pretrain a causal LM on plain text")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a built-in task's corpus (sentiment, arithmetic, keywords)")
    src.add_argument("--corpus", help="a .txt file, one document per non-empty line")
    p.add_argument("--model", default="tiny", help="'tiny' (a fresh ~1M-parameter GPT-2) or an HF model directory")
    p.add_argument("--tokenizer", default="default", help="'default' or an HF tokenizer directory")
    p.add_argument("--docs", type=int, default=20000, help="documents drawn from --task")
    _add_common_lm(p)

    p = sub.add_parser("finetune", help="stage 2: fine-tune on (prompt, response) pairs, loss on responses")
    p.add_argument("--model", required=True, help="an HF causal-LM directory (e.g. a pretrain --out)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a built-in task's pairs")
    src.add_argument("--pairs", help='a .jsonl file of {"prompt", "response"} rows')
    p.add_argument("--pairs-count", type=int, default=20000, help="pairs drawn from --task")
    _add_common_lm(p)

    p = sub.add_parser("train-reward", help="stage 3: train a reward model (MSE or Bradley-Terry)")
    p.add_argument("--out", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a built-in task: gold-scored texts (mse) or preference pairs (bt)")
    src.add_argument("--data", help='.jsonl: {"text","score"} / {"prompt","completion","score"} (mse), '
                                    '{"prompt","chosen","rejected"} (bt)')
    p.add_argument("--loss", choices=["mse", "bt"], default="mse")
    p.add_argument("--base", default=None, help="start from this HF causal-LM directory")
    p.add_argument("--tokenizer", default="default")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rows", type=int, default=20000, help="rows drawn from --task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("build-defaults", help="rebuild the shipped tokenizer, LMs and reward models")
    p.add_argument("--out", default=None, help="default: the package's textenv/data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiply data and steps (small: a quick check)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; bytes are reproducible for a fixed count (the shipped set: see MANIFEST.json)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train", help="RL: train the LM policy in a TextGen env (the main job)")
    p.add_argument("--agent", default="ppo", choices=["ppo", "grpo", "reinforce", "rloo", "sb3-ppo", "sb3-a2c"])
    p.add_argument("--env", default="TextGen-v0", help=f"one of {sorted(ENV_IDS)} or any registered TextGen id")
    p.add_argument("--episodes", type=int, default=None, help="episodes to train (default: the agent's budget)")
    p.add_argument("--policy", default="default", help="'default', 'tiny' or an HF causal-LM directory")
    p.add_argument("--reward-model", default="default",
                   help="'default' (the task's shipped model), 'gold', a reward-model directory or an HF id")
    p.add_argument("--out", default=None, help="run directory (default: runs/<agent>-<env>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--eval-episodes", type=int, default=128)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an agent config field, e.g. --set learning_rate=1e-4 (repeatable)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on held-out prompts")
    p.add_argument("--checkpoint", required=True, help="a run's --out directory (its latest checkpoint) or one checkpoint")
    p.add_argument("--episodes", type=int, default=128)

    p = sub.add_parser("sample", help="sample completions from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prompt", required=True, action="append", help="a prompt (repeatable)")
    p.add_argument("-n", "--num", type=int, default=4, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _hold_out(items: list[T]) -> tuple[list[T], list[T]]:
    """(train, held-out): the first 2% (at least one item) held out for the perplexity."""
    n_eval = max(1, len(items) // 50)
    return items[n_eval:] or items, items[:n_eval]


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.tasks import get_task
    from textenv.training.lm import LMTrainConfig, load_text_corpus, pretrain

    tok = load_tokenizer(a.tokenizer)
    if a.task:
        task = get_task(a.task)
        texts = task.pretrain_corpus(a.docs, seed=a.seed)
        eval_texts = [p + r for p, r in task.sft_pairs(max(20, a.docs // 50), seed=a.seed + 1, split="test")]
    else:
        texts, eval_texts = _hold_out(load_text_corpus(a.corpus))
    model = load_causal_lm(a.model, tokenizer=tok)
    cfg = LMTrainConfig(steps=a.steps or 1000, batch_size=a.batch_size, lr=a.lr or 1e-3, max_length=a.max_length,
                        seed=a.seed, progress=not a.no_progress)
    m = pretrain(model, tok, texts, a.out, cfg, eval_texts=eval_texts, resume=a.resume)
    print(json.dumps(m, indent=2))
    return 0


def _cmd_finetune(a: argparse.Namespace) -> int:
    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.tasks import get_task
    from textenv.training.lm import LMTrainConfig, finetune, load_pairs_jsonl

    tok = load_tokenizer(a.model if (Path(a.model) / "tokenizer_config.json").exists() else "default")
    if a.task:
        task = get_task(a.task)
        pairs = task.sft_pairs(a.pairs_count, seed=a.seed)
        eval_pairs = task.sft_pairs(max(20, a.pairs_count // 50), seed=a.seed + 1, split="test")
    else:
        pairs, eval_pairs = _hold_out(load_pairs_jsonl(a.pairs))
    model = load_causal_lm(a.model, tokenizer=tok)
    cfg = LMTrainConfig(steps=a.steps or 500, batch_size=a.batch_size, lr=a.lr or 3e-4, max_length=a.max_length,
                        seed=a.seed, progress=not a.no_progress)
    m = finetune(model, tok, pairs, a.out, cfg, eval_pairs=eval_pairs, resume=a.resume)
    print(json.dumps(m, indent=2))
    return 0


def _cmd_train_reward(a: argparse.Namespace) -> int:
    from textenv.tasks import get_task
    from textenv.training.reward import load_reward_rows, train_reward_model

    task = None
    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]] | None
    if a.task:
        task = get_task(a.task)
        if a.loss == "mse":
            rows = task.scored_texts(a.rows, seed=a.seed)
            eval_rows = task.scored_texts(max(64, a.rows // 20), seed=a.seed + 1, split="test")
        else:
            rows = task.preference_pairs(a.rows, seed=a.seed)
            eval_rows = task.preference_pairs(max(64, a.rows // 20), seed=a.seed + 1, split="test")
    else:
        rows = load_reward_rows(a.data, a.loss)
        n_eval = max(1, len(rows) // 20) if len(rows) >= 40 else 0
        rows, eval_rows = (rows[n_eval:], rows[:n_eval]) if n_eval else (rows, None)
    m = train_reward_model(rows, a.out, loss=a.loss, tokenizer=a.tokenizer, base=a.base, steps=a.steps,
                           batch_size=a.batch_size, lr=a.lr, seed=a.seed, eval_rows=eval_rows,
                           progress=not a.no_progress, task=task)
    print(json.dumps(m, indent=2))
    return 0


def _cmd_build_defaults(a: argparse.Namespace) -> int:
    from textenv.training.defaults import build_defaults

    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {a.threads}")
        import torch

        torch.set_num_threads(a.threads)
    m = build_defaults(a.out, seed=a.seed, scale=a.scale, progress=not a.no_progress)
    print(json.dumps(m["quality"], indent=2))
    return 0


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textenv`` console script; returns the exit status."""
    parser = build_parser()
    a = parser.parse_args(argv)
    commands = {
        "pretrain": _cmd_pretrain,
        "finetune": _cmd_finetune,
        "train-reward": _cmd_train_reward,
        "build-defaults": _cmd_build_defaults,
        "train": _cmd_run,
        "evaluate": _cmd_run,
        "sample": _cmd_run,
    }
    try:
        return commands[a.command](a)
    except (ValueError, FileNotFoundError) as exc:
        print(f"textenv {a.command}: error: {exc}", file=sys.stderr)
        return 2


def _cmd_run(a: argparse.Namespace) -> int:
    # `agents` depends on `textenv`, never the reverse: the RL commands import it lazily
    from agents import run

    return {"train": run.train_command, "evaluate": run.evaluate_command, "sample": run.sample_command}[a.command](a)


if __name__ == "__main__":
    raise SystemExit(main())
