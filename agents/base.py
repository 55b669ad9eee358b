"""What every agent shares: construction, the learn loop, evaluation, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from agents.core import KLKind
from agents.policy import LMPolicy
from agents.rollout import (
    RolloutBatch,
    check_env,
    collect_rollout,
    evaluate_policy,
    rollout_metrics,
    sample_completions,
)

if TYPE_CHECKING:
    from textenv.vector import TextGenVectorEnv

@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters every agent has. Subclasses add their own; every field is validated."""

    batch_size: int = 64  # episodes per rollout (= vector env slots)
    learning_rate: float = 5e-5
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    kl_coef: float = 0.05  # beta: weight of the KL to the reference
    kl_estimator: KLKind = "k1"
    temperature: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"

    def __post_init__(self) -> None:
        self.validate()

    def check_ints(self, *names: str, minimum: int = 1) -> None:
        """Raise ``ValueError`` naming the first of ``names`` that is not an integer >= ``minimum``."""
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

    def check_group_size(self) -> None:
        """The config's ``group_size`` completions per prompt: at least 2, and dividing ``batch_size``."""
        self.check_ints("group_size", minimum=2)
        group_size = getattr(self, "group_size")  # noqa: B009 (declared by the subclasses that group)
        if self.batch_size % group_size:
            raise ValueError(f"group_size {group_size} does not divide batch_size {self.batch_size}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        self.check_ints("batch_size")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("max_grad_norm", "temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")
        for name in ("weight_decay", "kl_coef"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator must be 'k1', 'k2' or 'k3', got {self.kl_estimator!r}")
        if not (self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available")
    return torch.device(device)


def _atomic_dir_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a directory under a temporary name, then rename it into place (a kill leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves no debris; the old directory is intact
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    # a kill between the two renames leaves the previous directory at `old`: see `_previous_dir`
    os.replace(tmp, path)
    for stale in [old, *path.parent.glob(f".{path.name}.old-*")]:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _previous_dir(path: Path) -> Path:
    """``path``, or, when a save was killed between its two renames, the previous directory it moved aside."""
    if path.exists():
        return path
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return olds[-1] if olds else path


class Agent(ABC):
    """The one interface of every agent: ``Agent(env, policy, config, **overrides)``, ``learn``,
    ``evaluate``, ``save``, ``load``.

    - ``env``: an env id (a native ``TextGenVectorEnv`` with ``batch_size`` slots is built, with
      ``env_kwargs``) or a user's ``TextGenVectorEnv`` (autoreset DISABLED), used as given.
    - ``policy``: ``"default"`` (the shipped fine-tuned LM), ``"tiny"``, a model directory or an
      :class:`~agents.policy.LMPolicy`. The policy as given is also the frozen KL reference.
    - ``config``: the agent's Config dataclass; ``overrides`` replace its fields.
    """

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    name: ClassVar[str] = "agent"
    #: completions per prompt in one rollout (1: every slot draws its own prompt)
    uses_values: ClassVar[bool] = False

    def __init__(self, env: Any = "TextGen-v0", policy: str | os.PathLike[str] | LMPolicy = "default",
                 config: AgentConfig | None = None, env_kwargs: dict[str, Any] | None = None,
                 **overrides: Any) -> None:
        explicit_config = config is not None
        if config is None:
            config = self.Config()
        elif not isinstance(config, self.Config):
            raise ValueError(f"config must be a {self.Config.__name__}, got {type(config).__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(config)}
        if unknown:
            raise ValueError(f"unknown {self.Config.__name__} field(s) {sorted(unknown)}")
        self.config = dataclasses.replace(config, **overrides)
        self.device = resolve_device(self.config.device)
        torch.manual_seed(self.config.seed)
        if isinstance(policy, LMPolicy):
            self.policy = policy
            self.policy_source: str | None = None
            # one sampling temperature, recorded in the config (a checkpoint rebuilds the policy from it): an
            # explicit one is applied to the policy, otherwise the policy's own is kept
            if explicit_config or "temperature" in overrides:
                self.policy.temperature = float(self.config.temperature)
            else:
                self.config = dataclasses.replace(self.config, temperature=self.policy.temperature)
        else:
            self.policy = LMPolicy.from_pretrained(policy, temperature=self.config.temperature)
            # a directory is recorded absolute (the reference is reloaded from it); "tiny" is random, so a
            # checkpoint stores its reference (see save)
            self.policy_source = (str(Path(policy).resolve()) if str(policy) not in ("default", "tiny")
                                  else str(policy))
        self.policy.to(self.device)
        self.env_kwargs = dict(env_kwargs or {})
        self.env_id = env if isinstance(env, str) else None
        if isinstance(env, str):
            import gymnasium as gym
            from gymnasium.vector import AutoresetMode

            import textenv  # noqa: F401  (registers the ids)

            kwargs = {"tokenizer": self.policy.tokenizer, **self.env_kwargs}
            self.envs: TextGenVectorEnv = gym.make_vec(  # type: ignore[assignment]
                env, num_envs=self.rollout_size(), autoreset_mode=AutoresetMode.DISABLED, **kwargs).unwrapped
        else:
            self.envs = check_env(env)
            if self.envs.num_envs != self.rollout_size():
                raise ValueError(f"the vector env has {self.envs.num_envs} slots but this agent's batch is "
                                 f"{self.rollout_size()} episodes (batch_size)")
        n_actions = self.envs.setup.vocab_size
        n_logits = int(self.policy.lm_head.weight.shape[0])
        if n_actions > n_logits:
            raise ValueError(f"the env's action space has {n_actions} tokens but the policy's LM head only {n_logits}")
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=self.config.learning_rate,
                                           weight_decay=self.config.weight_decay)
        self.episodes = 0
        self.iteration = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------------------ per algorithm
    def rollout_size(self) -> int:
        return self.config.batch_size

    def group_size(self) -> int:
        """Completions per prompt in one rollout: the config's ``group_size`` where it has one, else 1."""
        return int(getattr(self.config, "group_size", 1))

    @abstractmethod
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """One optimisation phase on a rollout; returns the algorithm's metrics."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able algorithm state for checkpoints (e.g. an adaptive KL coefficient)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`extra_state` returned."""

    # ------------------------------------------------------------------------------ rollouts
    def _iteration_seed(self, iteration: int, salt: int = 0) -> int:
        return (self.config.seed * 1_000_003 + iteration * 7919 + salt) % (2**31 - 1)

    def collect(self, iteration: int | None = None, split: str | None = None) -> RolloutBatch:
        """One synchronised batch of episodes (groups of identical prompts when group_size > 1)."""
        it = self.iteration if iteration is None else iteration
        seed = self._iteration_seed(it, 0 if split is None else 1)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        prompts = None
        G = self.group_size()
        if G > 1:
            rng = np.random.default_rng(seed)
            n_prompts = self.envs.num_envs // G
            distinct = [self.envs.setup.sample_prompt(rng, split) for _ in range(n_prompts)]
            prompts = [p for p in distinct for _ in range(G)]
        return collect_rollout(self.policy, self.envs, seed=seed, prompts=prompts, split=split,
                               with_values=self.uses_values, generator=gen)

    def _to_device(self, batch: RolloutBatch) -> RolloutBatch:
        moved: dict[str, Any] = {k: v.to(self.device) for k, v in batch._asdict().items()
                                 if isinstance(v, torch.Tensor)}
        return batch._replace(**moved)

    # ------------------------------------------------------------------------------ the loop
    def learn(self, total_episodes: int, progress: bool = True,
              callback: Callable[[Agent, dict[str, float]], Any] | None = None) -> Agent:
        """Train until ``total_episodes`` more episodes have been collected; returns ``self``.

        ``callback(agent, metrics)`` runs after every iteration (return ``False`` to stop early).
        """
        if isinstance(total_episodes, bool) or not isinstance(total_episodes, int) or total_episodes < 1:
            raise ValueError(f"total_episodes must be an integer >= 1, got {total_episodes!r}")
        from tqdm.auto import tqdm

        target = self.episodes + total_episodes
        bar = tqdm(total=total_episodes, disable=not progress, unit="ep", dynamic_ncols=True)
        while self.episodes < target:
            t0 = time.perf_counter()
            batch = self.collect()
            metrics = rollout_metrics(batch)
            self.policy.train()
            self.policy.model.eval()  # dropout off: log-probs must match those of the rollout
            metrics.update(self.update(self._to_device(batch)))
            self.episodes += batch.scores.shape[0]
            self.iteration += 1
            metrics.update({"episodes": float(self.episodes), "iteration": float(self.iteration),
                            "time_s": time.perf_counter() - t0})
            self.history.append(metrics)
            bar.update(batch.scores.shape[0])
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", gold=f"{metrics['gold_score']:.3f}",
                            kl=f"{metrics['kl']:.3f}")
            if callback is not None and callback(self, metrics) is False:
                break
        bar.close()
        return self

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """Mean metrics over ``num_episodes`` sampled episodes on held-out prompts (``split="test"``).

        Returns ``reward``, ``gold_score``, ``kl`` (sequence KL to the reference, k1), ``entropy`` and
        ``completions/mean_length``. Sampling is seeded (by default from ``config.seed``), so the same policy
        gives the same numbers; pass ``seed`` to evaluate several agents on the same prompts and random stream.
        """
        seed = self._iteration_seed(0, 99) if seed is None else seed
        return evaluate_policy(self.policy, self.envs, num_episodes, split=split, seed=seed)

    def samples(self, n: int = 4, split: str = "test") -> list[tuple[str, str]]:
        """A few (prompt, completion) pairs sampled from the current policy on held-out prompts."""
        return sample_completions(self.policy, self.envs, n, split=split, seed=self._iteration_seed(0, 7))

    # ------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "agent": self.name,
            "config": dataclasses.asdict(self.config),
            "episodes": self.episodes,
            "iteration": self.iteration,
            "env_id": self.env_id,
            "env_kwargs": {k: v for k, v in self.env_kwargs.items() if isinstance(v, (str, int, float, bool))},
            "policy_source": self.policy_source,
            "extra": self.extra_state(),
            "history": self.history,
            "versions": {"torch": torch.__version__},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint directory atomically: ``policy/`` (safetensors), ``reference/`` (when the
        reference is not a named model), ``agent.json`` (state) and ``optimizer.pt`` (tensors only)."""
        path = Path(path)

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            self.policy.save(tmp / "policy")
            if self.policy_source in (None, "tiny") and self.policy.ref_model is not None:
                self.policy.ref_model.save_pretrained(str(tmp / "reference"))
            torch.save({"optimizer": self.optimizer.state_dict()}, tmp / "optimizer.pt")
            (tmp / "agent.json").write_text(json.dumps(self.state(), indent=1))

        _atomic_dir_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None, **overrides: Any) -> Agent:
        """Restore an agent saved by :meth:`save` (any subclass: the class is read from ``agent.json``)."""
        from agents.registry import AGENTS

        path = _previous_dir(Path(path))
        meta_file = path / "agent.json"
        if not meta_file.exists():
            raise ValueError(f"{str(path)!r} is not an agent checkpoint (no agent.json)")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(meta_file)!r} is corrupt: {exc}") from exc
        agent_cls = AGENTS.get(meta.get("agent", ""))
        if agent_cls is None:
            raise ValueError(f"{str(meta_file)!r} names unknown agent {meta.get('agent')!r}")
        if cls is not Agent and not issubclass(agent_cls, cls):
            raise ValueError(f"{str(path)!r} holds a {agent_cls.__name__}, not a {cls.__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(agent_cls.Config)}
        if unknown:
            raise ValueError(f"unknown {agent_cls.Config.__name__} field(s) {sorted(unknown)}")
        config = agent_cls.Config(**{**meta["config"], **overrides})
        from textenv.models import load_causal_lm

        source = meta.get("policy_source")
        ref_dir = path / "reference"
        ref = (load_causal_lm(ref_dir) if ref_dir.is_dir() else load_causal_lm(source) if source is not None
               else None)
        policy = LMPolicy.from_pretrained(path / "policy", ref_model=ref, temperature=config.temperature,
                                          with_reference=ref is not None)
        agent = agent_cls(env if env is not None else meta.get("env_id") or "TextGen-v0", policy=policy,
                          config=config, env_kwargs=meta.get("env_kwargs") or {})
        agent.policy_source = source
        opt = torch.load(path / "optimizer.pt", map_location=agent.device, weights_only=True)
        agent.optimizer.load_state_dict(opt["optimizer"])
        for group in agent.optimizer.param_groups:  # load_state_dict restores the saved ones; overrides win
            group["lr"], group["weight_decay"] = config.learning_rate, config.weight_decay
        agent.episodes, agent.iteration = int(meta["episodes"]), int(meta["iteration"])
        agent.history = list(meta.get("history", []))
        agent.load_extra_state(meta.get("extra", {}))
        return agent

    # ------------------------------------------------------------------------------ helpers
    def _step(self, loss: torch.Tensor) -> float:
        """Backward, clip, AdamW step; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(grad_norm)
