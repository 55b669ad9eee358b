"""stable-baselines3's PPO and A2C behind the agents' interface (:class:`SB3Agent`), for ``textenv train``
and the learning benchmark. SB3 itself runs unmodified; see :mod:`agents.sb3` for the LM policy it trains."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.base import CHECKPOINT_MARKER, check_policy_fits_env, env_record, read_agent_meta, rebuild_env
from agents.contract import evaluation_seed
from agents.policy import LMPolicy
from agents.rollout import evaluate_policy, sample_completions
from textenv import io, memory
from textenv.vector import TextGenVectorEnv

#: SB3Config fields that only PPO takes
_PPO_ONLY = ("batch_size", "n_epochs", "clip_range")

#: the ``format`` of an SB3 checkpoint's agent.json. 1 (no ``format`` key): SB3's ``sb3_model.zip``, which
#: SB3's loader unpickles (so it can run code) and which is refused; 2: JSON, safetensors and plain tensors
SB3_FORMAT = 2
POLICY_FILE = "sb3_policy.safetensors"
STATE_FILE = "sb3_state.pt"
OLD_ZIP = "sb3_model.zip"


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
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("gamma", "gae_lambda"):
            v = getattr(self, name)
            if v is not None and v > 1:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.n_steps is not None and self.n_steps * self.n_envs < 2:
            raise ValueError(f"n_steps x n_envs must be >= 2 (SB3 needs two steps per rollout), got n_steps="
                             f"{self.n_steps}, n_envs={self.n_envs}")

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
    episodes have finished, so every collected step is trained on and ``learn`` can be called again. ``n``
    is a lower bound: the last rollout may finish up to about ``n_envs * n_steps`` more episodes, and those
    count toward the next ``learn`` call, so ``learn(a); learn(b)`` trains exactly as ``learn(a + b)`` (a call
    whose target is already met runs nothing). ``save``/``load`` in between, or a checkpoint written from
    the callback, continue bitwise as if uninterrupted on CPU (see :meth:`load`);
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

        from agents.distributed import launched_world_size
        from agents.sb3 import LM_LEARNING_RATE, LMActorCriticPolicy, make_sb3_env
        from textenv.models import load_tokenizer

        if launched_world_size() > 1:
            raise ValueError(f"sb3-{algo} is single-process: stable-baselines3 has no data-parallel training, but "
                             f"this process was launched as one of WORLD_SIZE={launched_world_size()} (torchrun); "
                             f"run it without torchrun, or use a native agent (ppo, grpo, reinforce, rloo)")
        algos = {"ppo": PPO, "a2c": A2C}
        if algo not in algos:
            raise ValueError(f"SB3 algorithm must be 'ppo' or 'a2c', got {algo!r}")
        _check_arguments(algo, algos[algo], seed, n_envs, overrides)
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
        self.n_envs = n_envs
        check_policy_fits_env(self.policy, self.envs, larger_head=False)  # SB3 samples from every logit
        self.episodes = 0
        #: the target of the last learn call if it was reached (its episodes past it count toward the next
        #: call's), ``None`` before any, while one runs, or after one stopped early
        self._goal: int | None = None
        self.history: list[dict[str, float]] = []

    @property
    def requested_episodes(self) -> int:
        """Where the next ``learn(n)`` counts from (it trains until ``requested_episodes + n`` episodes): the
        last ``learn`` call's target if it was reached, otherwise (none yet, stopped early, or a checkpoint
        written during a call) :attr:`episodes`. ``textenv train --resume`` counts ``--episodes`` from it."""
        return self.episodes if self._goal is None else self._goal

    def learn(self, total_episodes: int, progress: bool = True, callback: Any = None) -> SB3Agent:
        from stable_baselines3.common.callbacks import BaseCallback
        from tqdm.auto import tqdm

        if isinstance(total_episodes, bool) or not isinstance(total_episodes, int) or total_episodes < 1:
            raise ValueError(f"total_episodes must be an integer >= 1, got {total_episodes!r}")
        agent = self
        # the episodes the last call ran past its target count toward this one, so learn(a); learn(b) runs
        # what learn(a + b) runs; a checkpoint saved during a call (goal None) continues from its episodes
        target = self.requested_episodes + total_episodes
        self._goal = None
        bar = tqdm(total=max(target - self.episodes, 0), disable=not progress, unit="ep", dynamic_ncols=True)
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
        else:
            self._goal = target
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
        """Write the run atomically, without pickle: ``agent.json`` (``format`` 2: what the SB3 model is rebuilt
        from, i.e. the algorithm, its hyperparameters, the policy's source, the env record of
        :func:`agents.base.env_record`, plus SB3's counters and the envs' episode state), ``sb3_policy.safetensors``
        (the policy's weights) and ``sb3_state.pt`` (plain tensors: the optimizer state, the RNG states and
        SB3's last observation), with the sha256 of both binary files recorded in ``agent.json``."""
        from safetensors.torch import save_model

        path = Path(path)
        bad = {k: v for k, v in self.kwargs.items() if not _is_json_scalar(v)}
        if bad:
            raise ValueError(f"SB3Agent.save: SB3 arguments {sorted(bad)} are not JSON numbers, strings or "
                             f"booleans ({bad!r:.120}); a checkpoint can only rebuild the model from those")
        record = env_record(self.env_kwargs, self.env_id, self.envs)  # before the write: it may fail
        sb3_json, tensors = _capture_sb3_state(self.model)
        tensors["optimizer"] = self.model.policy.optimizer.state_dict()
        with io.atomic_dir(path) as tmp:
            save_model(self.model.policy, str(tmp / POLICY_FILE))
            torch.save(tensors, tmp / STATE_FILE)
            state = {"format": SB3_FORMAT, "agent": self.name, "env_id": self.env_id,
                     "policy_source": self.policy_source, "seed": self.seed, "n_envs": self.n_envs, **record,
                     "kwargs": self.kwargs, "episodes": self.episodes, "goal": self._goal, "history": self.history,
                     "sb3": sb3_json, "files": {name: _sha256(tmp / name) for name in (POLICY_FILE, STATE_FILE)}}
            (tmp / CHECKPOINT_MARKER).write_text(json.dumps(state, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None,
             env_kwargs: dict[str, Any] | None = None) -> SB3Agent:
        """Restore a checkpoint written by :meth:`save`; ``env`` (an env id: SB3 builds its own envs) or
        ``env_kwargs`` replace the recorded ones, which a callable or object reward model requires.

        Nothing is unpickled: the SB3 model is rebuilt from ``agent.json``, its weights are read from
        safetensors and the rest with ``torch.load(weights_only=True)``, after both files' sha256 are checked.
        A run saved by an older textenv as SB3's ``sb3_model.zip`` is refused (SB3's loader unpickles that zip,
        so loading it could run code); the zip is never opened. Training continues bitwise as if uninterrupted
        (CPU): this sets the process's torch, numpy and ``random`` RNG states to the saved ones, since SB3
        samples from those global generators."""
        from safetensors.torch import load_model

        if env is not None and not isinstance(env, str):
            raise ValueError(f"SB3Agent.load takes an env id (SB3 builds its own envs), got {type(env).__name__}")
        path = io.previous_dir(Path(path))
        meta_file = path / CHECKPOINT_MARKER
        if not meta_file.exists():
            raise ValueError(f"{str(path)!r} is not an agent checkpoint (no {CHECKPOINT_MARKER})")
        meta = read_agent_meta(meta_file)
        _check_meta(meta, path, meta_file)
        env_id, kwargs = rebuild_env(meta, str(meta_file), env, env_kwargs)
        try:
            agent = cls(meta["agent"].split("-", 1)[1], env_id, meta["policy_source"], meta["seed"],
                        n_envs=meta["n_envs"], env_kwargs=kwargs, **meta["kwargs"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{str(meta_file)!r}: cannot rebuild the SB3 model from it: {exc}") from None
        policy_file, state_file = path / POLICY_FILE, path / STATE_FILE
        try:
            missing, unexpected = load_model(agent.model.policy, str(policy_file), strict=False,
                                             device=str(agent.model.device))
        except Exception as exc:  # safetensors' own errors name no file
            raise ValueError(f"{str(policy_file)!r}: not the weights of this SB3 policy ({exc})") from None
        if missing or unexpected:
            raise ValueError(f"{str(policy_file)!r}: not the weights of this SB3 policy (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        try:
            state = torch.load(state_file, map_location=agent.model.device, weights_only=True)
            agent.model.policy.optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:
            raise ValueError(f"{str(state_file)!r}: damaged SB3 state ({type(exc).__name__}: {exc})") from None
        _restore_sb3_state(agent.model, meta["sb3"], state, str(state_file))
        agent.episodes, agent.history, agent._goal = meta["episodes"], list(meta["history"]), meta["goal"]
        return agent


def _check_arguments(algo: str, algo_cls: Any, seed: Any, n_envs: Any, overrides: dict[str, Any]) -> None:
    """Refuse, before SB3 sees them, a bad seed, an argument ``algo_cls`` does not take (or that the adapter sets
    itself), and a value :class:`SB3Config` refuses (wrong type, non-finite, out of range)."""
    import inspect

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    taken = set(inspect.signature(algo_cls.__init__).parameters) - {
        "self", "policy", "env", "policy_kwargs", "seed", "device", "verbose", "_init_setup_model"}
    unknown = sorted(set(overrides) - taken)
    if unknown:
        raise ValueError(f"sb3-{algo} does not take {unknown} (it takes {sorted(taken)})")
    known = {f.name for f in dataclasses.fields(SB3Config)} - {"n_envs"}
    SB3Config(n_envs=n_envs, **{k: v for k, v in overrides.items() if k in known})


# ---------------------------------------------------------------------------------------------- checkpoints
def _is_json_scalar(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return v is None or isinstance(v, (bool, int, str))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_meta(meta: dict[str, Any], path: Path, meta_file: Path) -> None:
    """Refuse an SB3 ``agent.json`` that is not format 2 (naming the old zip where there is one), has fields of
    the wrong type, or whose binary files do not match their recorded sha256. Never opens ``sb3_model.zip``."""
    where = repr(str(meta_file))
    if meta.get("format") != SB3_FORMAT:
        old = path / OLD_ZIP
        if old.exists():
            raise ValueError(
                f"{str(old)!r}: an SB3 run saved by an older textenv as SB3's zip, which SB3's loader unpickles, "
                "so loading it can run code stored in the file; it is refused and was not opened. Retrain the run, "
                "or, only if you trust the file, load it yourself with stable_baselines3's PPO.load / A2C.load")
        raise ValueError(f"{where}: 'format' must be {SB3_FORMAT} for an SB3 run, got {meta.get('format')!r:.40}")
    if meta["agent"] not in ("sb3-ppo", "sb3-a2c"):
        raise ValueError(f"{where} names {meta['agent']!r}, not an SB3 agent ('sb3-ppo' or 'sb3-a2c')")

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{where}: {key!r} must be {what}, got {meta.get(key)!r:.80}")

    def count(key: str, minimum: int) -> bool:
        v = meta.get(key)
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    need("policy_source", isinstance(meta.get("policy_source"), str), "a string")
    need("seed", count("seed", 0), "an integer >= 0")
    need("n_envs", count("n_envs", 1), "an integer >= 1")
    need("episodes", count("episodes", 0), "an integer >= 0")
    goal = meta.get("goal")
    need("goal", goal is None or (count("goal", 0) and goal <= meta["episodes"]), "null or an integer <= episodes")
    need("history", isinstance(meta.get("history"), list) and all(isinstance(r, dict) for r in meta["history"]),
         "a list of objects")
    kw: Any = meta.get("kwargs")
    need("kwargs", isinstance(kw, dict) and all(_is_json_scalar(v) for v in kw.values()),
         "an object of SB3 arguments (finite numbers, strings, booleans)")
    known = {f.name for f in dataclasses.fields(SB3Config)} - {"n_envs"}
    try:
        SB3Config(n_envs=meta["n_envs"], **{k: v for k, v in kw.items() if k in known})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    need("sb3", isinstance(meta.get("sb3"), dict), "an object")
    files: Any = meta.get("files")
    need("files", isinstance(files, dict) and set(files) == {POLICY_FILE, STATE_FILE}
         and all(isinstance(v, str) for v in files.values()), f"the sha256 of {POLICY_FILE} and {STATE_FILE}")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{str(f)!r} is missing (the SB3 checkpoint {str(path)!r} is incomplete)")
        if _sha256(f) != digest:
            raise ValueError(f"{str(f)!r} does not match the sha256 recorded in {where}: it was changed or damaged "
                             "after it was saved")


# The state SB3's learn() carries from one call to the next, beyond the weights and the optimizer. These two
# functions are the only places that read it. SB3 internals (private fields of BaseAlgorithm): _last_obs,
# _last_episode_starts, _n_updates, _episode_num, _current_progress_remaining; and DummyVecEnv._reset_seeds().
# Public: num_timesteps, ep_info_buffer, ep_success_buffer, the DummyVecEnv's envs and reset_infos, each
# Monitor's rewards and total_steps, each env's np_random, action_ids() and episode_rng_state. Each env's running
# episode is rebuilt with its public API: reset(options={"prompt": ...}), restart_rng (multi-turn), then its
# actions are stepped again (a multi-turn env inserts the other speaker's turns again by itself).
# Not restored (logging only, not used in training): the wall-clock time in SB3's ep_info_buffer ("t") and
# Monitor's start time and its lists of finished episodes' returns, lengths and times.
def _capture_sb3_state(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    venv = model.get_env()
    np_state: Any = np.random.get_state()
    py_state: Any = random.getstate()
    js: dict[str, Any] = {
        "num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num), "progress_remaining": float(model._current_progress_remaining),
        "ep_info_buffer": None if model.ep_info_buffer is None else [
            {k: float(v) for k, v in e.items()} for e in model.ep_info_buffer],
        "ep_success_buffer": None if model.ep_success_buffer is None else [bool(b) for b in model.ep_success_buffer],
        "numpy_rng": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_rng": [py_state[0], py_state[2]],
        "envs": None,
    }
    tensors: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng_keys": torch.as_tensor(np.asarray(np_state[1], dtype=np.int64)),
        "python_rng_keys": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available() and model.device.type == "cuda":
        tensors["cuda_rng"] = torch.cuda.get_rng_state_all()
    if model._last_obs is not None:
        tensors["last_obs"] = {k: torch.as_tensor(np.asarray(v)) for k, v in model._last_obs.items()}
        tensors["last_episode_starts"] = torch.as_tensor(np.asarray(model._last_episode_starts))
        js["envs"] = [{"prompt": venv.reset_infos[i]["prompt"],
                       # the agent's tokens (a multi-turn env inserts the rest again when they are replayed)
                       "completion_ids": [int(t) for t in mon.unwrapped.action_ids()],
                       "episode_rng": mon.unwrapped.episode_rng_state,
                       "monitor_rewards": [float(r) for r in mon.rewards], "monitor_total_steps": int(mon.total_steps),
                       "np_random": mon.unwrapped.np_random.bit_generator.state}
                      for i, mon in enumerate(venv.envs)]
    return js, tensors


def _restore_sb3_state(model: Any, js: dict[str, Any], tensors: dict[str, Any], state_file: str) -> None:
    """Put back what :func:`_capture_sb3_state` saved; the RNG states last. Any inconsistency is a
    ``ValueError`` naming ``state_file``."""
    from collections import deque

    venv = model.get_env()
    try:
        if js["envs"] is not None:
            if len(js["envs"]) != venv.num_envs:
                raise ValueError(f"{len(js['envs'])} envs saved, the model has {venv.num_envs}")
            last_obs = {k: v.cpu().numpy() for k, v in tensors["last_obs"].items()}
            for i, (mon, st) in enumerate(zip(venv.envs, js["envs"], strict=True)):
                obs, info = mon.reset(options={"prompt": st["prompt"]})
                if st.get("episode_rng") is not None:  # multi-turn: the inserted turns are drawn as before
                    mon.unwrapped.restart_rng(st["episode_rng"])
                for tok in st["completion_ids"]:
                    obs, *_ = mon.env.step(int(tok))  # below the Monitor, which gets its saved rewards back
                mon.rewards = [float(r) for r in st["monitor_rewards"]]
                mon.total_steps = int(st["monitor_total_steps"])
                venv.reset_infos[i] = info
                for k, v in obs.items():
                    if not np.array_equal(v, last_obs[k][i]):
                        raise ValueError(f"env {i}'s replayed episode (prompt {st['prompt']!r:.60}) does not give "
                                         f"the saved observation {k!r}: the envs are not built as when saved")
                rng = np.random.Generator(getattr(np.random, st["np_random"]["bit_generator"])())
                rng.bit_generator.state = st["np_random"]
                mon.unwrapped.np_random = rng
            venv._reset_seeds()  # the construction's seeds were used by the saved run's first reset
            model._last_obs = last_obs
            model._last_episode_starts = tensors["last_episode_starts"].cpu().numpy()
        model.num_timesteps, model._n_updates = int(js["num_timesteps"]), int(js["n_updates"])
        model._episode_num = int(js["episode_num"])
        model._current_progress_remaining = float(js["progress_remaining"])
        window = model._stats_window_size
        if js["ep_info_buffer"] is not None:
            model.ep_info_buffer = deque(js["ep_info_buffer"], maxlen=window)
            model.ep_success_buffer = deque(js["ep_success_buffer"], maxlen=window)
        np_rng = (js["numpy_rng"][0], tensors["numpy_rng_keys"].numpy().astype(np.uint32), *js["numpy_rng"][1:])
        py_rng = (js["python_rng"][0], tuple(int(x) for x in tensors["python_rng_keys"].tolist()), js["python_rng"][1])
        torch_rng = tensors["torch_rng"]
        cuda_rng = tensors.get("cuda_rng")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"{state_file!r} and agent.json: cannot restore the SB3 state ({type(exc).__name__}: "
                         f"{exc})") from None
    # the RNG states last: nothing after this may draw
    try:
        np.random.set_state(np_rng)
        random.setstate(py_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None and model.device.type == "cuda":
            torch.cuda.set_rng_state_all(cuda_rng)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{state_file!r}: damaged RNG state ({exc})") from None
