"""Token lengths and graded-response gold of the built-in tasks under the shipped tokenizer (the README's task
table): ``python -m benchmarks.task_stats [--n 2000] [--tasks a,b]``.

Per task, on ``--n`` held-out (``test``) prompts: the prompt's tokens (min-max, mean), the best response's
(``sample_response`` at quality 1; for a multi-turn task the whole transcript, the user's replies included),
the env's default budgets, and the mean gold score of ``sample_response`` at quality 0, 0.5 and 1 (and of a
response without learning where the task has an obvious one, :func:`baseline`). Prints a
Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from textenv.models import load_tokenizer
from textenv.tasks import get_task
from textenv.training.defaults import RECIPE


def baseline(name: str) -> tuple[str, Any] | None:
    """A no-learning response of task ``name`` (its description and ``prompt -> response``), or None."""
    if name == "translation":
        from textenv.tasks.translation import parse_source, word_by_word

        return "word-by-word lookup", lambda p: " " + word_by_word(parse_source(p) or "")
    if name == "summarization":
        from textenv.tasks.summarization import parse_document

        return "copying the document", lambda p: " " + (parse_document(p) or "")
    if name == "detox":
        from textenv.tasks.detox import parse_source as detox_source

        return "copying the source", lambda p: " " + (detox_source(p) or "")
    return None


def task_row(name: str, tokenizer: object, n: int, seed: int = 0) -> dict[str, object]:
    """The figures of one task (see the module docstring)."""
    task = get_task(name)
    prompts = task.prompts(n, split="test", seed=seed)
    gold = {}
    best: list[str] = []
    for quality in (0.0, 0.5, 1.0):
        rng = np.random.default_rng([seed, int(quality * 10)])
        responses = [task.sample_response(p, rng, quality) for p in prompts]
        gold[quality] = float(np.mean(task.gold_score(prompts, responses)))
        if quality == 1.0:
            best = responses

    def lengths(texts: list[str]) -> np.ndarray:
        return np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])  # type: ignore[operator]

    base = baseline(name)
    baselines = {} if base is None else {base[0]: float(np.mean(task.gold_score(prompts, [base[1](p) for p in prompts])))}
    p, r = lengths(prompts), lengths(best)
    budget = f"{task.default_max_prompt_tokens} + {task.default_max_new_tokens}"
    if task.default_max_turns > 1:
        budget += f" x {task.default_max_turns} turns"
    return {"task": name, "prompt": (int(p.min()), int(p.max()), float(p.mean())),
            "response": (int(r.min()), int(r.max()), float(r.mean())), "budget": budget, "gold": gold, "baselines": baselines}


def markdown(rows: Sequence[dict[str, object]], n: int) -> str:
    lines = [f"| task | prompt tokens | best response tokens | budgets | gold of `sample_response` at quality "
             f"0 / 0.5 / 1 ({n} test prompts) |", "|---|---|---|---|---|"]
    for row in rows:
        p, r, g = row["prompt"], row["response"], row["gold"]
        lines.append(f"| {row['task']} | {p[0]}-{p[1]} (mean {p[2]:.0f}) | {r[0]}-{r[1]} (mean {r[2]:.0f}) | "  # type: ignore[index]
                     f"{row['budget']} | {g[0.0]:.2f} / {g[0.5]:.2f} / {g[1.0]:.2f}"  # type: ignore[index]
                     + "".join(f" ({k}: {v:.2f})" for k, v in row["baselines"].items())  # type: ignore[attr-defined]
                     + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="held-out prompts per task (default 2000)")
    ap.add_argument("--tasks", default=",".join(RECIPE["tasks"]), help="comma-separated task names "
                    "(default: the shipped build's)")
    a = ap.parse_args(argv)
    if a.n < 1:
        raise ValueError(f"--n must be >= 1, got {a.n}")
    tok = load_tokenizer("default")
    names = [t.strip() for t in a.tasks.split(",") if t.strip()]
    table = markdown([task_row(name, tok, a.n) for name in names], a.n)
    print(table)
    return table


if __name__ == "__main__":
    main()
