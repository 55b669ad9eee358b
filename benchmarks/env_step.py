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

from benchmarks.report import command, load_average, spread
from textenv.io import write_text

#: Targets, in microseconds (single env per step; vector env per env-step).
TARGET_ENV_STEP_US = 20.0
TARGET_VECTOR_STEP_US_PER_ENV = 2.0
#: the smallest run (smoke tests): a second or two
SMOKE: dict[str, Any] = {"repeats": 1, "single_steps": 1_000, "vector_steps": 60, "num_envs": 8, "cold_resets": 3}


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


def time_single_env(env: Any, actions: list[int], chunk: int = 1_000) -> tuple[list[float], list[float]]:
    """Step ``env`` through ``actions``, resetting (with the same seed each call) when an episode ends.

    Returns the step time per step of each chunk of ``chunk`` steps (seconds; reset time taken out) and the
    duration of every reset (seconds). Medians over chunks keep a busy machine's hiccups out.
    """
    env.reset(seed=0)
    perf = time.perf_counter
    step = env.step
    per_step: list[float] = []
    resets: list[float] = []
    for start in range(0, len(actions) - chunk + 1, chunk):
        reset_s = 0.0
        t0 = perf()
        for a in actions[start:start + chunk]:
            if step(a)[2]:
                t = perf()
                env.reset()
                dt = perf() - t
                reset_s += dt
                resets.append(dt)
        per_step.append((perf() - t0 - reset_s) / chunk)
    return per_step, resets


def time_vector_env(envs: Any, actions: np.ndarray) -> dict[str, list[float]]:
    """Step ``envs`` through ``actions`` ``(n, N)`` after ``reset(seed=0)``; every batched step's duration
    (seconds), by kind: ``plain``, ``end`` (some slot ends) or ``reset`` (the NEXT_STEP autoreset step)."""
    envs.reset(seed=0)
    inner = envs.unwrapped
    kinds: dict[str, list[float]] = {"plain": [], "end": [], "reset": []}
    perf = time.perf_counter
    step = envs.step
    for a in actions:
        resetting = bool(inner._needs_reset.any())
        t = perf()
        terminated = step(a)[2]
        dt = perf() - t
        kinds["reset" if resetting else "end" if terminated.any() else "plain"].append(dt)
    return kinds


def robust_total(kinds: dict[str, list[float]]) -> float:
    """Total time of a run with each kind of step counted at its median: the time the same steps take on a
    quiet machine (preemptions by other processes inflate a plain sum)."""
    return sum(statistics.median(v) * len(v) for v in kinds.values() if v)


def time_cold_resets(envs: Any, n: int = 20) -> list[float]:
    """Durations of ``n`` full resets (every slot) with the env's prompt-encoding cache emptied first."""
    inner = envs.unwrapped
    out = []
    for i in range(n):
        inner.setup._prompt_cache.clear()
        t = time.perf_counter()
        envs.reset(seed=10_000 + i * inner.num_envs)
        out.append(time.perf_counter() - t)
    return out


def make_envs(num_envs: int = 64, tokenizer: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """The single env and the vector env under test (zero reward model)."""
    import gymnasium as gym

    import textenv  # noqa: F401  (registers the ids)

    tok = benchmark_tokenizer() if tokenizer is None else tokenizer
    env = gym.make("TextGen-v0", tokenizer=tok, reward_model=zero_reward, **kwargs)
    envs = gym.make_vec("TextGen-v0", num_envs=num_envs, tokenizer=tok, reward_model=zero_reward, **kwargs)
    return env, envs


def measure(quick: bool = False, repeats: int | None = None, num_envs: int = 64, single_steps: int | None = None,
            vector_steps: int | None = None, tokenizer: Any = None, seed: int = 0, cold_resets: int = 20
            ) -> dict[str, Any]:
    """Time the single env and the vector env, alternately, ``repeats`` times; return the figures.

    Every figure is a median: over chunks of 1,000 steps (single env), over batched steps of each kind
    (vector env), then over repeats. ``quick`` takes a few seconds. Prompts repeat across repeats, so the
    env's prompt-encoding cache is warm, as in a long run on a built-in task (about 10k distinct prompts);
    ``vector_reset_cold_us_per_env`` is the cost of a reset with that cache empty.
    """
    load_start = load_average()
    repeats = repeats if repeats is not None else (3 if quick else 7)
    single_steps = single_steps if single_steps is not None else (5_000 if quick else 30_000)
    vector_steps = vector_steps if vector_steps is not None else (250 if quick else 1_500)
    tok = benchmark_tokenizer() if tokenizer is None else tokenizer
    env, envs = make_envs(num_envs, tok)
    setup = envs.unwrapped.setup
    rng = np.random.default_rng(seed)
    single_actions = [int(a) for a in _token_actions(tok, rng, (single_steps,))]
    vector_actions = _token_actions(tok, rng, (vector_steps, num_envs))
    chunk = min(1_000, single_steps)
    # warm up: lazy imports, the passive env checker's first-call checks, the prompt-encoding cache
    time_single_env(env, single_actions, chunk)
    time_vector_env(envs, vector_actions)
    step_us, reset_us, incl_us, vec_us, vec_mean_us = [], [], [], [], []
    kinds_all: dict[str, list[float]] = {"plain": [], "end": [], "reset": []}
    steps_per_episode = setup.max_new_tokens
    for _ in range(repeats):
        per_step, resets = time_single_env(env, single_actions, chunk)
        s_us, r_us = statistics.median(per_step) * 1e6, statistics.median(resets) * 1e6
        step_us.append(s_us)
        reset_us.append(r_us)
        incl_us.append(s_us + r_us / steps_per_episode)
        kinds = time_vector_env(envs, vector_actions)
        vec_us.append(robust_total(kinds) / (vector_steps * num_envs) * 1e6)
        vec_mean_us.append(sum(sum(v) for v in kinds.values()) / (vector_steps * num_envs) * 1e6)
        for k, v in kinds.items():
            kinds_all[k].extend(v)
    cold = time_cold_resets(envs, cold_resets)
    env.close()
    envs.close()
    med = statistics.median
    total = robust_total(kinds_all)
    breakdown = {k: {"count_per_run": len(v) // repeats, "median_us": med(v) * 1e6 if v else None,
                     "median_us_per_env": med(v) * 1e6 / num_envs if v else None,
                     "share_of_time": med(v) * len(v) / total if v else 0.0}
                 for k, v in kinds_all.items()}
    return {
        "env_step_us": med(step_us),
        "env_reset_us": med(reset_us),
        "env_step_us_incl_reset": med(incl_us),
        "vector_env_step_us_per_env": med(vec_us),
        "vector_env_batched_step_us": med(vec_us) * num_envs,
        "vector_env_step_us_per_env_plain_mean": med(vec_mean_us),
        "vector_reset_cold_us_per_env": med(cold) * 1e6 / num_envs,
        "vector_breakdown": breakdown,
        "targets": {"env_step_us": TARGET_ENV_STEP_US, "vector_env_step_us_per_env": TARGET_VECTOR_STEP_US_PER_ENV},
        "meets_targets": {"env_step_us": med(step_us) <= TARGET_ENV_STEP_US,
                          "vector_env_step_us_per_env": med(vec_us) <= TARGET_VECTOR_STEP_US_PER_ENV},
        "config": {"env_id": "TextGen-v0", "task": setup.task.name, "num_envs": num_envs,
                   "max_prompt_tokens": setup.max_prompt_tokens, "max_new_tokens": setup.max_new_tokens,
                   "vocab_size": setup.vocab_size, "tokenizer": tokenizer_source(),
                   "reward_model": "zeros (a trivial callable; called once per finished episode, or once per "
                                   "batch of episodes that end together in the vector env)",
                   "single_steps": single_steps, "vector_steps": vector_steps, "repeats": repeats,
                   "resets": "single env: timed separately (env_reset_us); vector env: NEXT_STEP autoreset "
                             "inside step(), included",
                   "actions": "uniform random token ids, never EOS or pad: every episode is max_new_tokens long",
                   "statistic": "medians (per 1,000-step chunk / per batched-step kind, then over repeats)"},
        "all_repeats": {"env_step_us": step_us, "env_reset_us": reset_us, "vector_env_step_us_per_env": vec_us},
        "spread": {"env_step_us": spread(step_us), "vector_env_step_us_per_env": spread(vec_us)},
        "versions": versions(),
        "load_average": {"start": load_start, "end": load_average()},
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
        f"            (over repeats: {r['spread']['vector_env_step_us_per_env']['min']:.3f} to "
        f"{r['spread']['vector_env_step_us_per_env']['max']:.3f} us; load average {r['load_average']['start']} at the "
        f"start, {r['load_average']['end']} at the end)",
        f"            (plain mean, hiccups included: {r['vector_env_step_us_per_env_plain_mean']:.3f} us; a reset with "
        f"the prompt cache cold: {r['vector_reset_cold_us_per_env']:.1f} us per env)",
    ]
    for kind, b in r["vector_breakdown"].items():
        if b["median_us"] is not None:
            lines.append(f"            {kind:5s} batched step: median {b['median_us']:9.1f} us, "
                         f"{b['count_per_run']} per run, {100 * b['share_of_time']:.0f}% of the time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps and repeats")
    parser.add_argument("--smoke", action="store_true", help="the smallest run (tests): numbers meaningless")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the vector env")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)  # nothing here uses torch, but keep the benchmarks' setting uniform
    if args.smoke:
        r = measure(**SMOKE, **({"repeats": args.repeats} if args.repeats else {}))
    else:
        r = measure(quick=args.quick, repeats=args.repeats, num_envs=args.num_envs)
    print(report(r))
    if args.profile:
        print(profile_vector(args.num_envs))
    r["command"] = command("env_step", argv)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(r, indent=2) + "\n")
        print(f"wrote {args.json}")
    return r


if __name__ == "__main__":
    main(sys.argv[1:])
