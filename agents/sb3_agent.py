"""stable-baselines3's PPO and A2C behind the agents' interface (:class:`SB3Agent`), for ``textenv train``
and the learning benchmark. SB3 itself runs unmodified; see :mod:`agents.sb3` for the LM policy it trains."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from agents.base import CHECKPOINT_MARKER, env_record, read_agent_meta, rebuild_env
from agents.contract import evaluation_seed
from agents.policy import LMPolicy
from agents.rollout import evaluate_policy, sample_completions
from textenv import io, memory
from textenv.vector import TextGenVectorEnv

#: SB3Config fields that only PPO takes
_PPO_ONLY = ("batch_size", "n_epochs", "clip_range")


@dataclasses.dataclass
class SB3Config:
    """The settings of ``sb3-ppo`` / ``sb3-a2c`` (``textenv train`` flags); ``None``: :class:`SB3Agent`'s
    default for the algorithm, which is SB3's own where this class names none."""

    n_envs: int = 8
    """envs SB3 collects from in parallel"""
    learning_rate: float | None = None
    """SB3's learning rate (default: 5 x agents.sb3.LM_LEARNING_RATE)"""
    n_steps: int | None = None
    """steps per env per rollout (default: 64 for PPO, 16 for A2C)"""
    batch_size: int | None = None
    """PPO only: minibatch size (default: 128)"""
    n_epochs: int | None = None
    """PPO only: passes over each rollout (default: 4)"""
    clip_range: float | None = None
    """PPO only: the ratio clip (SB3's default 0.2)"""
    ent_coef: float | None = None
    """entropy bonus (default: 0.0)"""
    vf_coef: float | None = None
    """value-loss weight (SB3's default 0.5)"""
    gamma: float | None = None
    """discount (SB3's default 0.99)"""
    gae_lambda: float | None = None
    """GAE lambda (SB3's default: 0.95 for PPO, 1.0 for A2C)"""
    max_grad_norm: float | None = None
    """gradient clip (SB3's default 0.5)"""

    def __post_init__(self) -> None:
        if isinstance(self.n_envs, bool) or not isinstance(self.n_envs, int) or self.n_envs < 1:
            raise ValueError(f"n_envs must be an integer >= 1, got {self.n_envs!r}")
        for name in ("n_steps", "batch_size", "n_epochs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("learning_rate", "clip_range", "ent_coef", "vf_coef", "gamma", "gae_lambda", "max_grad_norm"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")

    def overrides(self, algo: str) -> dict[str, Any]:
        """The SB3 constructor arguments set here (not ``None``), for ``algo`` (``"ppo"`` or ``"a2c"``)."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "n_envs" and getattr(self, f.name) is not None}
        if algo != "ppo":
            bad = sorted(set(given) & set(_PPO_ONLY))
            if bad:
                raise ValueError(f"{bad} are PPO settings; sb3-{algo} does not take them")
        return given


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
            if len(self.history) % memory.TRIM_EVERY == 0:
                memory.release_free_memory()  # as Agent.learn (issue 10 A21; a no-op off glibc)
            bar.set_postfix(reward=f"{m['reward']:.3f}", gold=f"{m['gold_score']:.3f}")
            if callback is not None and callback(self, m) is False:  # as Agent.learn: False stops early
                break
        bar.close()
        return self

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """As :meth:`agents.base.Agent.evaluate` (seeded held-out episodes, KL to the initial LM); the default
        seed is :func:`~agents.contract.evaluation_seed` of this agent's seed, as for every learner."""
        self.model.policy.set_training_mode(False)
        return evaluate_policy(self.policy, self.envs, num_episodes, split=split,
                               seed=evaluation_seed(self.seed) if seed is None else seed)

    def samples(self, n: int = 4, split: str = "test", seed: int | None = None) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs of the current LM, seeded as :meth:`evaluate`."""
        return sample_completions(self.policy, self.envs, n, split=split,
                                  seed=evaluation_seed(self.seed) if seed is None else seed)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``sb3_model.zip`` (SB3's own format) and ``agent.json`` (what the run was built from,
        including the reward-model spec, see :func:`agents.base.env_record`) atomically."""
        path = Path(path)
        state = {"agent": self.name, "env_id": self.env_id, "policy_source": self.policy_source, "seed": self.seed,
                 **env_record(self.env_kwargs, self.env_id, self.envs),
                 "kwargs": self.kwargs, "episodes": self.episodes, "history": self.history}
        with io.atomic_dir(path) as tmp:
            self.model.save(str(tmp / "sb3_model.zip"))
            (tmp / CHECKPOINT_MARKER).write_text(json.dumps(state, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None,
             env_kwargs: dict[str, Any] | None = None) -> SB3Agent:
        """Restore a checkpoint written by :meth:`save`; ``env`` (an env id: SB3 builds its own envs) or
        ``env_kwargs`` replace the recorded ones, which a callable or object reward model requires."""
        if env is not None and not isinstance(env, str):
            raise ValueError(f"SB3Agent.load takes an env id (SB3 builds its own envs), got {type(env).__name__}")
        path = io.previous_dir(Path(path))
        meta_file = path / CHECKPOINT_MARKER
        meta = read_agent_meta(meta_file)
        env_id, kwargs = rebuild_env(meta, str(meta_file), env, env_kwargs)
        agent = cls(meta["agent"].split("-", 1)[1], env_id, meta["policy_source"], meta["seed"],
                    env_kwargs=kwargs, **meta["kwargs"])
        agent.model = agent.model.load(str(Path(path) / "sb3_model.zip"), env=agent.model.get_env())
        agent.policy = LMPolicy(agent.model.policy.lm, agent.policy.tokenizer, ref_model=agent.policy.ref_model)
        agent.episodes, agent.history = int(meta["episodes"]), list(meta["history"])
        return agent
