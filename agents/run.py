"""The RL commands of the ``textenv`` CLI: ``train``, ``evaluate`` and ``sample``.

A run directory (``--out``) holds ``metrics.csv`` (one row per iteration), ``learning_curve.png``,
``summary.json`` (initial and final evaluation, samples) and the latest two checkpoints
``checkpoint-<episodes>/`` (see :meth:`agents.base.Agent.save`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from io import StringIO
from pathlib import Path
from typing import Any

import torch

from agents.base import CHECKPOINT_MARKER, Agent
from agents.registry import DEFAULT_EPISODES, make_agent
from agents.rollout import sample_completions
from agents.sb3_agent import SB3Agent
from textenv import io


# ---------------------------------------------------------------------------------------------- run dirs
def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete agent checkpoints of a run, oldest first (:func:`textenv.io.list_checkpoints`)."""
    return io.list_checkpoints(run_dir, marker=CHECKPOINT_MARKER)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint directory: ``path`` itself, or the latest checkpoint of the run directory ``path``."""
    p = Path(path)
    if (p / CHECKPOINT_MARKER).exists():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise ValueError(f"{str(path)!r} is neither a checkpoint nor a run directory with checkpoints")
    return ckpts[-1]


def load_any(path: str | os.PathLike[str]) -> Agent | SB3Agent:
    """Load our agents or an SB3 run from a checkpoint directory."""
    ckpt = resolve_checkpoint(path)
    meta = io.read_json(ckpt / CHECKPOINT_MARKER, "agent checkpoint")
    if str(meta.get("agent", "")).startswith("sb3-"):
        return SB3Agent.load(ckpt)
    return Agent.load(ckpt)


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    io.write_text(path, buf.getvalue())


def plot_learning_curve(path: Path, history: list[dict[str, float]], title: str) -> bool:
    """reward, gold_score and kl against episodes, as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ep = [r["episodes"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(ep, [r["reward"] for r in history], label="reward (reward model)")
    ax1.plot(ep, [r["gold_score"] for r in history], label="gold score")
    ax1.set_xlabel("episodes")
    ax1.legend()
    ax1.set_title(title)
    ax2.plot(ep, [r.get("kl", float("nan")) for r in history], color="tab:red")
    ax2.set_xlabel("episodes")
    ax2.set_ylabel("KL to reference (per sequence)")
    fig.tight_layout()
    with io.atomic_file(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return True


def format_table(initial: dict[str, float], final: dict[str, float]) -> str:
    keys = ["reward", "gold_score", "kl", "entropy", "completions/mean_length"]
    lines = [f"{'metric':<26}{'initial':>10}{'final':>10}", "-" * 46]
    for k in keys:
        if k in initial and k in final:
            lines.append(f"{k:<26}{initial[k]:>10.3f}{final[k]:>10.3f}")
    return "\n".join(lines)


def _print_samples(title: str, samples: list[tuple[str, str]]) -> None:
    print(title)
    for p, c in samples:
        print(f"  {p!r} -> {c!r}")


def _make_agent(a: Any) -> Agent | SB3Agent:
    from textenv.cli import _parse_sets

    env_kwargs = {} if a.reward_model == "default" else {"reward_model": a.reward_model}
    return make_agent(a.agent, a.env, a.policy, seed=a.seed, device=a.device, env_kwargs=env_kwargs,
                      **_parse_sets(a.set))


def train_command(a: Any) -> int:
    """``textenv train``: train, checkpoint, and report initial vs final metrics and samples."""
    out = Path(a.out or f"runs/{a.agent}-{a.env}")
    episodes = a.episodes if a.episodes is not None else DEFAULT_EPISODES[a.agent]
    if isinstance(episodes, bool) or episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    torch.manual_seed(a.seed)
    summary_file = out / "summary.json"
    if a.resume:
        if not list_checkpoints(out):
            raise ValueError(f"--resume: no checkpoint in {str(out)!r}")
        agent = load_any(out)
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        print(f"resuming {agent.name} from {resolve_checkpoint(out)} at {agent.episodes} episodes")
    else:
        if list_checkpoints(out):
            raise ValueError(f"{str(out)!r} already holds a run; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        agent = _make_agent(a)
        print(f"training {agent.name} on {a.env} for {episodes} episodes -> {out}")
        summary = {"agent": agent.name, "env": a.env, "seed": a.seed, "episodes": episodes,
                   "initial": agent.evaluate(a.eval_episodes), "samples_before": agent.samples(4)}
        io.write_text(summary_file, json.dumps(summary, indent=1))
    remaining = episodes - agent.episodes
    every = 10  # iterations between checkpoints

    def save_checkpoint() -> None:
        agent.save(out / io.checkpoint_name(agent.episodes))
        io.prune_checkpoints(out, marker=CHECKPOINT_MARKER)

    def on_iteration(ag: Any, metrics: dict[str, float]) -> None:
        write_metrics_csv(out / "metrics.csv", ag.history)
        if len(ag.history) % every == 0:
            save_checkpoint()

    if remaining > 0:
        t0 = time.perf_counter()
        agent.learn(remaining, progress=not a.no_progress, callback=on_iteration)
        summary["train_seconds"] = summary.get("train_seconds", 0.0) + time.perf_counter() - t0
    save_checkpoint()
    write_metrics_csv(out / "metrics.csv", agent.history)
    summary["final"] = agent.evaluate(a.eval_episodes)
    summary["samples_after"] = agent.samples(4)
    io.write_text(summary_file, json.dumps(summary, indent=1))
    plotted = agent.history and plot_learning_curve(out / "learning_curve.png", agent.history, f"{agent.name} on {a.env}")
    print()
    print(format_table(summary["initial"], summary["final"]))
    print()
    _print_samples("samples before:", [tuple(s) for s in summary["samples_before"]])
    _print_samples("samples after:", agent.samples(4))
    print(f"\nwrote {out / 'metrics.csv'}, {out / 'summary.json'}"
          + (f", {out / 'learning_curve.png'}" if plotted else " (install matplotlib for learning_curve.png)")
          + f" and {resolve_checkpoint(out)}")
    return 0


def evaluate_command(a: Any) -> int:
    """``textenv evaluate``: held-out metrics of a checkpoint, as JSON."""
    agent = load_any(a.checkpoint)
    print(json.dumps(agent.evaluate(a.episodes), indent=2))
    return 0


def sample_command(a: Any) -> int:
    """``textenv sample``: completions of a checkpoint's policy for the given prompts."""
    agent = load_any(a.checkpoint)
    prompts = [p for p in a.prompt for _ in range(a.num)]
    for p, c in sample_completions(agent.policy, agent.envs, len(prompts), seed=a.seed, prompts=prompts):
        print(f"{p}{c}")
    return 0
