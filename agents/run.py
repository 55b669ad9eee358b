"""The RL commands of the ``textenv`` CLI: ``train``, ``evaluate`` and ``sample``.

A run directory (``--out``) holds ``metrics.csv`` (one row per iteration), ``learning_curve.png``,
``summary.json`` (initial and final evaluation, samples) and the latest two checkpoints
``checkpoint-<episodes>/`` (see :meth:`agents.base.Agent.save`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from agents.base import Agent
from agents.policy import LMPolicy
from agents.rollout import evaluate_policy, sample_completions
from textenv.vector import TextGenVectorEnv

#: Episodes of the default ``textenv train`` per agent: about 3 minutes on 2 CPU cores with the default policy.
DEFAULT_EPISODES = {"ppo": 3072, "grpo": 3072, "reinforce": 3072, "rloo": 3072, "sb3-ppo": 1024, "sb3-a2c": 1024}
KEEP_CHECKPOINTS = 2
_CKPT = re.compile(r"^checkpoint-(\d+)$")
EVAL_SEED = 12345


# ---------------------------------------------------------------------------------------------- SB3 runs
class SB3Agent:
    """stable-baselines3's PPO or A2C with :class:`agents.sb3.LMActorCriticPolicy`, behind the agents'
    interface (``learn``, ``evaluate``, ``save``, ``load``) so ``textenv train`` treats it like the others.

    SB3 itself runs unmodified; evaluation samples the SB3 policy's LM through the same seeded rollouts as
    the other agents, with the initial LM as the KL reference.

    Args:
        algo: ``"ppo"`` or ``"a2c"``.
        env: an env id; ``n_envs`` copies of ``gym.make(env, **env_kwargs)`` feed SB3.
        policy: the LM (``"default"``, ``"tiny"`` or a model directory).
        env_kwargs: keyword arguments of every env, e.g. ``{"reward_model": "gold"}``.
        **overrides: SB3 constructor arguments (``learning_rate``, ``n_steps``, ...) over this class's
            defaults: lr ``5 * LM_LEARNING_RATE``, ``n_steps`` 64 (PPO, with ``batch_size`` 128, 4 epochs) or
            16 (A2C); SB3's own defaults for the rest.

    ``learn(n)`` runs whole SB3 iterations (collect one rollout, then update on it) until at least ``n``
    episodes have finished, so every collected step is trained on and ``learn`` can be called again;
    ``callback(agent, metrics)`` runs after each iteration, and returning ``False`` stops early. A
    history row per iteration holds ``reward``, ``gold_score`` and ``completions/mean_length`` of the
    episodes that finished in the rollout, the update's ``entropy``, ``value_loss`` (and PPO's
    ``approx_kl`` and ``clip_ratio``), and ``tokens_per_s`` (env steps per second, collection and update).
    """

    def __init__(self, algo: str = "ppo", env: str = "TextGen-v0", policy: str = "default", seed: int = 0,
                 device: str = "auto", n_envs: int = 8, env_kwargs: dict[str, Any] | None = None,
                 **overrides: Any) -> None:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode
        from stable_baselines3 import A2C, PPO

        from agents.sb3 import LM_LEARNING_RATE, LMActorCriticPolicy, make_sb3_env
        from textenv.models import load_tokenizer

        algos = {"ppo": PPO, "a2c": A2C}
        if algo not in algos:
            raise ValueError(f"SB3 algorithm must be 'ppo' or 'a2c', got {algo!r}")
        self.algo, self.env_id, self.policy_source, self.seed = algo, env, str(policy), seed
        self.name = f"sb3-{algo}"
        self.env_kwargs = dict(env_kwargs or {})
        defaults: dict[str, Any] = {"learning_rate": LM_LEARNING_RATE * 5, "n_steps": 64 if algo == "ppo" else 16}
        if algo == "ppo":
            defaults.update(batch_size=128, n_epochs=4, ent_coef=0.0)
        kwargs = {**defaults, **overrides}
        self.kwargs = kwargs
        tok = load_tokenizer(policy if Path(policy, "tokenizer_config.json").exists() else "default")
        # the envs tokenize with the policy's tokenizer (a tokenizer in env_kwargs wins, as for our agents)
        make_kwargs = {"tokenizer": tok, **self.env_kwargs}
        venv = make_sb3_env(env, n_envs=n_envs, seed=seed, **make_kwargs)
        self.model = algos[algo](LMActorCriticPolicy, venv, policy_kwargs={"model": policy}, seed=seed,
                                 device=device if device != "auto" else "auto", verbose=0, **kwargs)
        lm = self.model.policy.lm
        self.policy = LMPolicy(lm, tok, ref_model=copy.deepcopy(lm))
        self.envs: TextGenVectorEnv = gym.make_vec(  # type: ignore[assignment]
            env, num_envs=64, autoreset_mode=AutoresetMode.DISABLED, **make_kwargs).unwrapped
        self.episodes = 0
        self.history: list[dict[str, float]] = []

    def learn(self, total_episodes: int, progress: bool = True, callback: Any = None) -> SB3Agent:
        from stable_baselines3.common.callbacks import BaseCallback
        from tqdm.auto import tqdm

        if isinstance(total_episodes, bool) or not isinstance(total_episodes, int) or total_episodes < 1:
            raise ValueError(f"total_episodes must be an integer >= 1, got {total_episodes!r}")
        agent = self
        target = self.episodes + total_episodes
        bar = tqdm(total=total_episodes, disable=not progress, unit="ep", dynamic_ncols=True)
        rows: list[dict[str, float]] = []

        class _Track(BaseCallback):
            def _on_step(self) -> bool:
                for info, done in zip(self.locals["infos"], self.locals["dones"]):
                    if done:
                        agent.episodes += 1
                        bar.update(1)
                        rows.append({"reward": float(info.get("reward_model_score", 0.0)),
                                     "gold_score": float(info.get("gold_score", 0.0)),
                                     "completions/mean_length": float(info["episode"]["l"])})
                return True

        steps_per_rollout = int(self.model.n_steps) * int(self.model.n_envs)
        while self.episodes < target:
            t0 = time.perf_counter()
            rows.clear()
            # one SB3 iteration: collect n_steps per env, then update on them
            self.model.learn(total_timesteps=steps_per_rollout, callback=_Track(), reset_num_timesteps=False)
            if not rows:  # no episode finished in this rollout (very long episodes): nothing to report yet
                continue
            m = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
            logged = self.model.logger.name_to_value
            for key, name in (("train/approx_kl", "approx_kl"), ("train/clip_fraction", "clip_ratio"),
                              ("train/value_loss", "value_loss")):
                if key in logged:
                    m[name] = float(logged[key])
            if "train/entropy_loss" in logged:
                m["entropy"] = -float(logged["train/entropy_loss"])
            elapsed = time.perf_counter() - t0
            m.update({"episodes": float(self.episodes), "iteration": float(len(self.history) + 1),
                      "time_s": elapsed, "tokens_per_s": steps_per_rollout / elapsed})
            self.history.append(m)
            bar.set_postfix(reward=f"{m['reward']:.3f}", gold=f"{m['gold_score']:.3f}")
            if callback is not None and callback(self, m) is False:  # as Agent.learn: False stops early
                break
        bar.close()
        return self

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """As :meth:`agents.base.Agent.evaluate` (seeded held-out episodes, KL to the initial LM)."""
        self.model.policy.set_training_mode(False)
        return evaluate_policy(self.policy, self.envs, num_episodes, split=split,
                               seed=EVAL_SEED if seed is None else seed)

    def samples(self, n: int = 4, split: str = "test") -> list[tuple[str, str]]:
        return sample_completions(self.policy, self.envs, n, split=split, seed=EVAL_SEED)

    def save(self, path: str | os.PathLike[str]) -> Path:
        from agents.base import _atomic_dir_write

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            self.model.save(str(tmp / "sb3_model.zip"))
            (tmp / "agent.json").write_text(json.dumps({
                "agent": self.name, "env_id": self.env_id, "policy_source": self.policy_source, "seed": self.seed,
                "env_kwargs": {k: v for k, v in self.env_kwargs.items() if isinstance(v, (str, int, float, bool))},
                "kwargs": self.kwargs, "episodes": self.episodes, "history": self.history}, indent=1))

        _atomic_dir_write(Path(path), write)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SB3Agent:
        meta = json.loads((Path(path) / "agent.json").read_text())
        agent = cls(meta["agent"].split("-", 1)[1], meta["env_id"], meta["policy_source"], meta["seed"],
                    env_kwargs=meta.get("env_kwargs", {}), **meta["kwargs"])
        agent.model = agent.model.load(str(Path(path) / "sb3_model.zip"), env=agent.model.get_env())
        agent.policy = LMPolicy(agent.model.policy.lm, agent.policy.tokenizer, ref_model=agent.policy.ref_model)
        agent.episodes, agent.history = int(meta["episodes"]), list(meta["history"])
        return agent


# ---------------------------------------------------------------------------------------------- run dirs
def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT.match(p.name)) and (p / "agent.json").exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint directory: ``path`` itself, or the latest checkpoint of the run directory ``path``."""
    p = Path(path)
    if (p / "agent.json").exists():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise ValueError(f"{str(path)!r} is neither a checkpoint nor a run directory with checkpoints")
    return ckpts[-1]


def load_any(path: str | os.PathLike[str]) -> Agent | SB3Agent:
    """Load our agents or an SB3 run from a checkpoint directory."""
    ckpt = resolve_checkpoint(path)
    meta = json.loads((ckpt / "agent.json").read_text())
    if str(meta.get("agent", "")).startswith("sb3-"):
        return SB3Agent.load(ckpt)
    return Agent.load(ckpt)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    _write_atomic(path, buf.getvalue())


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
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
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


def make_agent(name: str, env: str = "TextGen-v0", policy: str = "default", seed: int = 0, device: str = "auto",
               env_kwargs: dict[str, Any] | None = None, **overrides: Any) -> Agent | SB3Agent:
    """The agent ``name`` (``ppo``, ``grpo``, ``reinforce``, ``rloo``, ``sb3-ppo`` or ``sb3-a2c``) on ``env``,
    as ``textenv train --agent name`` builds it; ``overrides`` are config fields (or SB3 arguments)."""
    from agents import get_agent_class

    if name.startswith("sb3-"):
        return SB3Agent(name.split("-", 1)[1], env, policy, seed=seed, device=device, env_kwargs=env_kwargs,
                        **overrides)
    return get_agent_class(name)(env, policy=policy, seed=seed, device=device, env_kwargs=env_kwargs, **overrides)


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
        _write_atomic(summary_file, json.dumps(summary, indent=1))
    remaining = episodes - agent.episodes
    every = 10  # iterations between checkpoints

    def save_checkpoint() -> None:
        agent.save(out / f"checkpoint-{agent.episodes:08d}")
        for old in list_checkpoints(out)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

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
    _write_atomic(summary_file, json.dumps(summary, indent=1))
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
