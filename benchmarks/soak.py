"""Soak: 20k episodes through the single env, the vector env and an agent's ``learn``, sampling resident
memory, open file descriptors and threads as they go; memory must stay flat after warm-up.

Each phase runs in its own fresh process (``--phase``), so one phase's memory does not count in another's:

- **env**: ``gym.make("TextGen-v0")`` (Gymnasium's wrappers included), random non-EOS token actions, so
  every episode runs ``max_new_tokens`` steps; reward model: zeros (what soaks is the env).
- **vector**: ``gym.make_vec("TextGen-v0", num_envs=64)`` (native vector env, NEXT_STEP autoreset), the same.
- **learn**: ``GRPO("TextGen-Arithmetic-v0", batch_size=64)`` with the shipped policy and reward model (the
  case of issue 10 A21), one torch thread.

Samples: ``rss`` (VmRSS) and ``rss_anon`` (RssAnon: heap and anonymous maps, the part that grows when memory
is retained; VmRSS also counts mapped files and libraries) in MiB, ``fds`` (entries of /proc/self/fd) and
``threads`` (OS threads of the process, /proc/self/status). Over the samples after warm-up (the first
``--warmup`` fraction of the episodes), ``growth`` of a series is ``(last - first) / first`` and
``peak_growth`` is ``(max - first) / first``; a phase passes when RssAnon and VmRSS never rise 3% above their
level at the end of warm-up (peak_growth < 3%) and fds and threads do not grow. ``--control`` adds
the learn phase without the fix (``TEXTENV_MALLOC_TRIM=0``, see :mod:`textenv.memory`), outside the verdict.

Usage::

    python -m benchmarks.soak --control  # full run (~10 min on 2 cores): writes benchmarks/results/soak-cpu.json
    python -m benchmarks.soak --quick    # ~1 min, fewer episodes: writes a temporary file, never the result
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "soak-cpu.json"
PHASES = ("env", "vector", "learn")
#: growth after warm-up a phase may show (issue 10 A21)
MAX_GROWTH = 0.03
FULL_EPISODES = 20_480
QUICK_EPISODES = 2_560


def proc_sample() -> dict[str, float]:
    """rss and rss_anon (MiB), fds and threads of this process, now."""
    from textenv.memory import rss_mib

    out: dict[str, float] = dict(rss_mib())
    try:
        out["fds"] = float(len(os.listdir("/proc/self/fd")))
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Threads:"):
                    out["threads"] = float(line.split()[1])
    except OSError:
        pass
    return out


class Sampler:
    """Collects :func:`proc_sample` rows against the episode count, every ``every`` episodes."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: list[dict[str, float]] = []
        self._next = 0
        self.t0 = time.perf_counter()

    def maybe(self, episodes: int) -> None:
        if episodes >= self._next:
            self.rows.append({"episodes": float(episodes), "t_s": time.perf_counter() - self.t0, **proc_sample()})
            self._next = episodes + self.every


def soak_env(episodes: int, sampler: Sampler, seed: int = 0) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    import textenv  # noqa: F401 (registers the ids)
    from benchmarks.env_step import _token_actions, benchmark_tokenizer, zero_reward

    tok = benchmark_tokenizer()
    env = gym.make("TextGen-v0", tokenizer=tok, reward_model=zero_reward)
    actions = [int(a) for a in _token_actions(tok, np.random.default_rng(seed), (65_536,))]
    n = i = 0
    env.reset(seed=seed)
    sampler.maybe(0)
    while n < episodes:
        terminated, truncated = env.step(actions[i % len(actions)])[2:4]
        i += 1
        if terminated or truncated:
            n += 1
            env.reset()
            sampler.maybe(n)
    env.close()
    return {"env_id": "TextGen-v0", "steps": i, "reward_model": "zeros"}


def soak_vector(episodes: int, sampler: Sampler, seed: int = 0, num_envs: int = 64) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    import textenv  # noqa: F401
    from benchmarks.env_step import _token_actions, benchmark_tokenizer, zero_reward

    tok = benchmark_tokenizer()
    envs = gym.make_vec("TextGen-v0", num_envs=num_envs, tokenizer=tok, reward_model=zero_reward)
    actions = _token_actions(tok, np.random.default_rng(seed), (512, num_envs))
    envs.reset(seed=seed)
    n = i = 0
    sampler.maybe(0)
    while n < episodes:
        _, _, terminated, truncated, _ = envs.step(actions[i % len(actions)])
        i += 1
        n += int(np.sum(terminated | truncated))
        sampler.maybe(n)
    envs.close()
    return {"env_id": "TextGen-v0", "num_envs": num_envs, "batched_steps": i, "reward_model": "zeros",
            "autoreset": "NEXT_STEP"}


def soak_learn(episodes: int, sampler: Sampler, seed: int = 0, policy: str = "default",
               batch_size: int = 64) -> dict[str, Any]:
    from agents.grpo import GRPO
    from textenv import memory

    agent = GRPO("TextGen-Arithmetic-v0", policy=policy, batch_size=batch_size, seed=seed)
    sampler.maybe(0)
    agent.learn(episodes, progress=False, callback=lambda ag, m: sampler.maybe(ag.episodes))
    return {"agent": "grpo", "env_id": "TextGen-Arithmetic-v0", "policy": policy, "batch_size": batch_size,
            "group_size": agent.config.group_size, "iterations": agent.iteration,
            "malloc_trim": memory.trim_enabled(), "trim_every_iterations": memory.TRIM_EVERY}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"env": soak_env, "vector": soak_vector, "learn": soak_learn}


def growth(rows: list[dict[str, float]], key: str, warmup_episodes: float) -> dict[str, float] | None:
    """First and last value after warm-up of ``key``, their relative growth and the maximum."""
    after = [r[key] for r in rows if r["episodes"] >= warmup_episodes and key in r]
    if len(after) < 2:
        return None
    first, last, peak = after[0], after[-1], max(after)
    return {"after_warmup": first, "last": last, "max": peak,
            "growth": (last - first) / first if first else 0.0,
            "peak_growth": (peak - first) / first if first else 0.0}


def summarize_phase(rows: list[dict[str, float]], episodes: int, warmup: float) -> dict[str, Any]:
    """Growth after warm-up of every series and the phase's verdict."""
    w = warmup * episodes
    g = {k: growth(rows, k, w) for k in ("rss", "rss_anon", "fds", "threads")}
    checks = {
        "rss_anon": g["rss_anon"] is not None and g["rss_anon"]["peak_growth"] < MAX_GROWTH,
        "rss": g["rss"] is not None and g["rss"]["peak_growth"] < MAX_GROWTH,
        "fds": g["fds"] is not None and g["fds"]["last"] <= g["fds"]["after_warmup"],
        "threads": g["threads"] is not None and g["threads"]["last"] <= g["threads"]["after_warmup"],
    }
    return {"warmup_episodes": w, "growth": g, "checks": checks, "passed": all(checks.values())}


def run_phase(phase: str, episodes: int, every: int, warmup: float, **kwargs: Any) -> dict[str, Any]:
    """One phase in this process: its samples, what it ran and its verdict."""
    import torch

    torch.set_num_threads(1)  # the finding of A21 is on one thread; and phases do not fight for 2 cores
    sampler = Sampler(every)
    t0 = time.perf_counter()
    info = RUNNERS[phase](episodes, sampler, **kwargs)
    sampler.maybe(sampler._next)  # the last point, whatever the cadence
    return {"phase": phase, "episodes": episodes, "wall_s": time.perf_counter() - t0, "config": info,
            **summarize_phase(sampler.rows, episodes, warmup), "samples": sampler.rows}


def run_in_subprocess(phase: str, episodes: int, every: int, warmup: float, extra: list[str],
                      trim: bool = True) -> dict[str, Any]:
    """:func:`run_phase` in a fresh interpreter, so each phase starts from the same clean process
    (``trim=False``: with ``TEXTENV_MALLOC_TRIM=0``, the control run without the fix)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        env["TEXTENV_MALLOC_TRIM"] = "1" if trim else "0"
        cmd = [sys.executable, "-m", "benchmarks.soak", "--phase", phase, "--episodes", str(episodes),
               "--every", str(every), "--warmup", str(warmup), "--json", str(out), *extra]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"soak phase {phase!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def versions() -> dict[str, str]:
    import gymnasium
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "gymnasium": gymnasium.__version__,
            "libc": " ".join(platform.libc_ver())}


def report(result: dict[str, Any]) -> str:
    lines = []
    for name, p in [*result["phases"].items(), *result.get("control", {}).items()]:
        g = p["growth"]

        def pct(k: str, g: dict[str, Any] = g) -> str:
            return f"{100 * g[k]['growth']:+.2f}%, peak {100 * g[k]['peak_growth']:+.2f}%" if g[k] else "n/a"

        def span(k: str, g: dict[str, Any] = g) -> str:
            return f"{g[k]['after_warmup']:.0f}->{g[k]['last']:.0f}" if g[k] else "n/a"

        lines.append(f"{name:7s} {p['episodes']} episodes in {p['wall_s']:.0f} s: RssAnon {span('rss_anon')} MiB "
                     f"({pct('rss_anon')}), VmRSS {pct('rss')}, fds {span('fds')}, threads {span('threads')}: "
                     f"{'PASS' if p['passed'] else 'FAIL'}")
    lines.append(f"all phases {'PASS' if result['passed'] else 'FAIL'} (growth after warm-up < {MAX_GROWTH:.0%})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPISODES} episodes per phase; never writes "
                        f"the committed result")
    parser.add_argument("--episodes", type=int, default=None, help=f"episodes per phase (default {FULL_EPISODES})")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--phase", choices=PHASES, default=None, help=argparse.SUPPRESS)  # one, in-process
    parser.add_argument("--every", type=int, default=None, help="episodes between samples (default: 1/64 of them)")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the episodes left out as warm-up")
    parser.add_argument("--policy", default="default", help="the learn phase's policy ('tiny': fast, for tests)")
    parser.add_argument("--control", action="store_true", help="also run the learn phase without malloc_trim "
                        "(TEXTENV_MALLOC_TRIM=0), reported under 'control' and not part of the verdict")
    parser.add_argument("--json", type=Path, default=None, help="where to write the result")
    args = parser.parse_args(argv)
    if args.episodes is None:
        args.episodes = QUICK_EPISODES if args.quick else FULL_EPISODES
    if args.episodes < 2:
        parser.error(f"--episodes must be >= 2, got {args.episodes}")
    if not 0 <= args.warmup < 1:
        parser.error(f"--warmup must be in [0, 1), got {args.warmup}")
    if args.every is None:
        args.every = max(1, args.episodes // 64)
    partial = args.quick or args.episodes != FULL_EPISODES or args.phases != list(PHASES) or args.policy != "default"
    if args.json is None and args.phase is None:
        args.json = Path(tempfile.gettempdir()) / "textenv-soak-quick.json" if partial else RESULT
    if partial and args.json is not None and args.json.resolve() == RESULT.resolve():
        parser.error(f"a partial soak (--quick, --episodes, --phases, --policy) never writes {RESULT}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    kwargs = {"policy": args.policy} if args.policy != "default" else {}
    if args.phase is not None:  # a worker: one phase in this process
        r = run_phase(args.phase, args.episodes, args.every, args.warmup,
                      **(kwargs if args.phase == "learn" else {}))
        args.json.write_text(json.dumps(r))
        return r
    extra = ["--policy", args.policy] if kwargs else []
    t0 = time.perf_counter()
    phases = {p: run_in_subprocess(p, args.episodes, args.every, args.warmup, extra if p == "learn" else [])
              for p in args.phases}
    control = ({"learn_without_malloc_trim": run_in_subprocess("learn", args.episodes, args.every, args.warmup,
                                                               extra, trim=False)} if args.control else {})
    result = {"passed": all(p["passed"] for p in phases.values()), "max_growth": MAX_GROWTH,
              "episodes_per_phase": args.episodes, "warmup_fraction": args.warmup, "sample_every": args.every,
              "statistic": "over the samples after warm-up: growth = (last - first) / first, peak_growth = "
                           "(max - first) / first; pass: peak_growth < max_growth for rss and rss_anon, fds and "
                           "threads do not grow", "phases": phases, "control": control, "wall_s": time.perf_counter() - t0,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "versions": versions(),
              "command": "python -m benchmarks.soak" + (" " + " ".join(argv) if argv else "")}
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
