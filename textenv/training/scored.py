"""Reward-model data from a task of data: a policy's samples scored by the task's metric.

``textenv train-reward --task-data data.jsonl`` uses :func:`scored_policy_rows` for MSE rows
``{"prompt", "completion", "score"}`` and :func:`preference_rows` for Bradley-Terry rows
``{"prompt", "chosen", "rejected"}`` (per prompt, the best sample against the worst where they differ).
"""

from __future__ import annotations

from typing import Any

from textenv.tasks.base import Task


def scored_policy_rows(task: Task, model: Any, tokenizer: Any, split: str = "train", samples_per_prompt: int = 4,
                       max_new_tokens: int | None = None, seed: int = 0, include_references: bool = True,
                       batch_size: int = 64) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "completion", "score"}``: ``samples_per_prompt`` completions of ``model`` (temperature
    1, seeded) for every prompt of ``task``'s ``split`` (one per distinct prompt), each scored by
    ``task.gold_score``; with ``include_references`` each prompt's references are rows too (the top of the
    score range, which a weak policy rarely samples). ``task`` must list its prompts (``split_prompts``, as a
    :class:`~textenv.tasks.DatasetTask` does)."""
    import torch

    from textenv.training.defaults import generate_completions

    if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be an integer >= 1, got {samples_per_prompt!r}")
    split_prompts = getattr(task, "split_prompts", None)
    if split_prompts is None:
        raise ValueError(f"task {task.name!r} does not list its prompts (split_prompts); give a DatasetTask")
    prompts = list(dict.fromkeys(split_prompts(split)))
    if not prompts:
        raise ValueError(f"task {task.name!r} has no prompts in split {split!r}")
    n_new = int(max_new_tokens if max_new_tokens is not None else task.default_max_new_tokens)
    asked = [p for p in prompts for _ in range(samples_per_prompt)]
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        completions = generate_completions(model, tokenizer, asked, n_new, generator, batch_size=batch_size)
    references = getattr(task, "references", None)
    if include_references and references is not None:
        for p in prompts:
            for ref in references(p):
                asked.append(p)
                completions.append(ref)
    scores = task.gold_score(asked, completions)
    return [{"prompt": p, "completion": c, "score": float(s)} for p, c, s in zip(asked, completions, scores, strict=True)]


def preference_rows(scored: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per prompt of ``scored`` (rows of :func:`scored_policy_rows`), the best completion as ``chosen`` and the
    worst as ``rejected``, where their scores differ (ties in score give no pair)."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in scored:
        by_prompt.setdefault(row["prompt"], []).append(row)
    pairs = []
    for prompt, rows in by_prompt.items():
        best = max(rows, key=lambda r: r["score"])
        worst = min(rows, key=lambda r: r["score"])
        if best["score"] > worst["score"]:
            pairs.append({"prompt": prompt, "chosen": best["completion"], "rejected": worst["completion"]})
    return pairs
