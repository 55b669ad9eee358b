"""Microseconds per env step of ``TextGen-v0``: the single env and the native vector env.

What is timed (no model anywhere: the agent's side is a list of token ids drawn beforehand):

- **single env**: ``gym.make("TextGen-v0", ...)``, Gymnasium's wrappers included (``OrderEnforcing``,
  ``PassiveEnvChecker``). Actions are random valid token ids that are never EOS or pad, so every episode
  runs ``max_new_tokens`` steps; the last step of an episode decodes the completion, calls the reward model
  and the task's gold scorer (``info["gold_score"]``). ``reset`` is timed separately: ``env_step_us`` is
  step time only, ``env_reset_us`` is per reset, ``env_step_us_incl_reset`` spreads the resets over the steps.
- **vector env**: ``gym.make_vec("TextGen-v0", num_envs=64)`` (the native ``TextGenVectorEnv``, Gymnasium's
  default ``NEXT_STEP`` autoreset). Resets happen inside ``step`` and are *included*:
  ``vector_env_step_us_per_env`` is the time of all batched steps / (steps x num_envs). The breakdown gives
  the median batched step of each kind: ``plain`` (no slot ends), ``end`` (slots end: decode, reward model,
  gold scorer) and ``reset`` (the autoreset step: new prompts drawn and encoded).

The reward model is a trivial callable returning zeros, so what is timed is the env itself. In the default
``reward_mode="terminal"`` the reward model is called only at the end of an episode (once per batch of
episodes that end together in the vector env), so its cost adds per episode, not per step.

Usage::

    python -m benchmarks.env_step            # full run, prints the figures
    python -m benchmarks.env_step --quick --json /tmp/env_step.json
    python -m benchmarks.env_step --profile  # cProfile of the vector env's step, top costs
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Targets, in microseconds (single env per step; vector env per env-step).
TARGET_ENV_STEP_US = 20.0
TARGET_VECTOR_STEP_US_PER_ENV = 2.0


def zero_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward model that costs nothing: 0.0 for every pair."""
    return [0.0] * len(completions)


@functools.lru_cache(maxsize=1)
def benchmark_tokenizer() -> Any:
    """The shipped tokenizer when it exists, else a realistic ~2k byte-level BPE trained here on the
    built-in tasks' pretraining corpora (a second or so)."""
    from textenv.models import TOKENIZER_DIR, load_tokenizer

    if (TOKENIZER_DIR / "tokenizer.json").exists():
        return load_tokenizer("default")
    from textenv.tasks import TASKS, get_task
    from textenv.training.tokenizer import train_tokenizer

    corpus = [text for name in sorted(TASKS) for text in get_task(name).pretrain_corpus(3000)]
    return train_tokenizer(corpus, vocab_size=2048)


def tokenizer_source() -> str:
    from textenv.models import TOKENIZER_DIR

    return "default" if (TOKENIZER_DIR / "tokenizer.json").exists() else "trained on the tasks' corpora"


def versions() -> dict[str, str]:
    """Versions of what the figures depend on."""
    import gymnasium
    import tokenizers
    import torch
    import transformers

    import textenv

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "gymnasium": gymnasium.__version__, "textenv": textenv.__version__}


def _token_actions(tok: Any, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random token ids in [0, V) that are neither EOS nor pad."""
    V = len(tok)
    special = sorted({int(tok.eos_token_id), int(tok.pad_token_id)})
    allowed = np.setdiff1d(np.arange(V), special)
    return allowed[rng.integers(0, allowed.size, size=shape)]


def time_single_env(env: Any, actions: list[int]) -> tuple[float, float, int]:
    """Step ``env`` through ``actions``, resetting when an episode ends.

    Returns (seconds spent in step, seconds spent in reset, number of resets).
    """
    env.reset(seed=0)
    reset_s = 0.0
    n_resets = 0
    perf = time.perf_counter
    step = env.step
    t0 = perf()
    for a in actions:
        terminated = step(a)[2]
        if terminated:
            t = perf()
            env.reset()
            reset_s += perf() - t
            n_resets += 1
    total = perf() - t0
    return total - reset_s, reset_s, n_resets


def time_vector_env(envs: Any, actions: np.ndarray) -> dict[str, list[float]]:
    """Step ``envs`` through ``actions`` ``(n, N)``; the duration of every batched step, by kind."""
    envs.reset(seed=0)
    inner = envs.unwrapped
    kinds: dict[str, list[float]] = {"plain": [], "end": [], "reset": []}
    perf = time.perf_counter
    step = envs.step
    for a in actions:
        resetting = bool(inner._needs_reset.any())  # NEXT_STEP: this step resets the slots that ended
        t = perf()
        terminated = step(a)[2]
        dt = perf() - t
        kinds["reset" if resetting else "end" if terminated.any() else "plain"].append(dt)
    return kinds


def make_envs(num_envs: int = 64, tokenizer: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """The single env and the vector env under test (zero reward model)."""
    import gymnasium as gym

    import textenv  # noqa: F401  (registers the ids)

    tok = benchmark_tokenizer() if tokenizer is None else tokenizer
    env = gym.make("TextGen-v0", tokenizer=tok, reward_model=zero_reward, **kwargs)
    envs = gym.make_vec("TextGen-v0", num_envs=num_envs, tokenizer=tok, reward_model=zero_reward, **kwargs)
    return env, envs


def measure(quick: bool = False, repeats: int | None = None, num_envs: int = 64, single_steps: int | None = None,
            vector_steps: int | None = None, tokenizer: Any = None, seed: int = 0) -> dict[str, Any]:
    """Run the measurement (single and vector env alternately, ``repeats`` times) and return the figures.

    ``quick`` shortens it to a few seconds; the medians over repeats are reported.
    """
    repeats = repeats if repeats is not None else (3 if quick else 7)
    single_steps = single_steps if single_steps is not None else (5_000 if quick else 50_000)
    vector_steps = vector_steps if vector_steps is not None else (300 if quick else 2_500)
    tok = benchmark_tokenizer() if tokenizer is None else tokenizer
    env, envs = make_envs(num_envs, tok)
    setup = envs.unwrapped.setup
    rng = np.random.default_rng(seed)
    single_actions = [int(a) for a in _token_actions(tok, rng, (single_steps,))]
    vector_actions = _token_actions(tok, rng, (vector_steps, num_envs))
    # warm up: caches, lazy imports, the passive env checker's first-call checks
    time_single_env(env, single_actions[: min(2_000, single_steps)])
    time_vector_env(envs, vector_actions[: min(100, vector_steps)])
    step_us, reset_us, incl_us, vec_us = [], [], [], []
    kinds_all: dict[str, list[float]] = {"plain": [], "end": [], "reset": []}
    for _ in range(repeats):
        step_s, reset_s, n_resets = time_single_env(env, single_actions)
        step_us.append(step_s / single_steps * 1e6)
        reset_us.append(reset_s / max(n_resets, 1) * 1e6)
        incl_us.append((step_s + reset_s) / single_steps * 1e6)
        kinds = time_vector_env(envs, vector_actions)
        total = sum(sum(v) for v in kinds.values())
        vec_us.append(total / (vector_steps * num_envs) * 1e6)
        for k, v in kinds.items():
            kinds_all[k].extend(v)
    env.close()
    envs.close()
    med = statistics.median
    breakdown = {k: {"count_per_repeat": len(v) // repeats, "median_us": med(v) * 1e6 if v else None,
                     "share_of_time": sum(v) / sum(sum(x) for x in kinds_all.values())}
                 for k, v in kinds_all.items()}
    return {
        "env_step_us": med(step_us),
        "env_reset_us": med(reset_us),
        "env_step_us_incl_reset": med(incl_us),
        "vector_env_step_us_per_env": med(vec_us),
        "vector_env_batched_step_us": med(vec_us) * num_envs,
        "vector_breakdown": breakdown,
        "targets": {"env_step_us": TARGET_ENV_STEP_US, "vector_env_step_us_per_env": TARGET_VECTOR_STEP_US_PER_ENV},
        "meets_targets": {"env_step_us": med(step_us) <= TARGET_ENV_STEP_US,
                          "vector_env_step_us_per_env": med(vec_us) <= TARGET_VECTOR_STEP_US_PER_ENV},
        "config": {"env_id": "TextGen-v0", "task": setup.task.name, "num_envs": num_envs,
                   "max_prompt_tokens": setup.max_prompt_tokens, "max_new_tokens": setup.max_new_tokens,
                   "vocab_size": setup.vocab_size, "tokenizer": tokenizer_source(),
                   "reward_model": "zeros (trivial callable; called once per finished episode / batch)",
                   "single_steps": single_steps, "vector_steps": vector_steps, "repeats": repeats,
                   "resets": "single: timed separately; vector: NEXT_STEP autoreset inside step(), included",
                   "actions": "uniform random token ids, never EOS or pad (every episode is max_new_tokens long)"},
        "all_runs": {"env_step_us": step_us, "env_reset_us": reset_us, "vector_env_step_us_per_env": vec_us},
        "versions": versions(),
    }


def profile_vector(num_envs: int = 64, steps: int = 1_000, top: int = 25) -> str:
    """cProfile of ``steps`` batched steps of the vector env; the top costs by own time, as text."""
    import cProfile
    import io
    import pstats

    tok = benchmark_tokenizer()
    _, envs = make_envs(num_envs, tok)
    actions = _token_actions(tok, np.random.default_rng(0), (steps, num_envs))
    envs.reset(seed=0)
    prof = cProfile.Profile()
    prof.enable()
    for a in actions:
        envs.step(a)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def report(r: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    c = r["config"]
    lines = [
        f"TextGen-v0 ({c['task']}, max_new_tokens={c['max_new_tokens']}, V={c['vocab_size']}), "
        f"reward model: {c['reward_model']}",
        f"single env  step  {r['env_step_us']:8.2f} us   (target <= {TARGET_ENV_STEP_US:g}; "
        f"{'met' if r['meets_targets']['env_step_us'] else 'MISSED'})",
        f"            reset {r['env_reset_us']:8.2f} us   (timed separately; step incl. resets "
        f"{r['env_step_us_incl_reset']:.2f} us)",
        f"vector env  {r['vector_env_step_us_per_env']:8.3f} us per env-step (num_envs={c['num_envs']}, "
        f"autoreset included; {r['vector_env_batched_step_us']:.1f} us per batched step; target <= "
        f"{TARGET_VECTOR_STEP_US_PER_ENV:g}: {'met' if r['meets_targets']['vector_env_step_us_per_env'] else 'MISSED'})",
    ]
    for kind, b in r["vector_breakdown"].items():
        if b["median_us"] is not None:
            lines.append(f"            {kind:5s} batched step: median {b['median_us']:9.1f} us, "
                         f"{b['count_per_repeat']} per run, {100 * b['share_of_time']:.0f}% of the time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps and repeats")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the vector env")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)  # nothing here uses torch, but keep the benchmarks' setting uniform
    r = measure(quick=args.quick, repeats=args.repeats, num_envs=args.num_envs)
    print(report(r))
    if args.profile:
        print(profile_vector(args.num_envs))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")
        print(f"wrote {args.json}")
    return r


if __name__ == "__main__":
    main(sys.argv[1:])
