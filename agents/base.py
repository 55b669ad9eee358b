"""What every agent shares: construction, the learn loop, evaluation, checkpoints."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import numbers
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from agents import distributed, fsdp
from agents.contract import evaluation_seed
from agents.core import KL_PLACEMENTS, KLKind, KLPlacement
from agents.policy import LMPolicy, resolve_lora_targets
from agents.rollout import (
    RolloutBatch,
    check_env,
    collect_rollout,
    evaluate_policy,
    rollout_metrics,
    sample_completions,
)
from textenv import io, memory
from textenv.models import DTYPES, check_device, quiet_progress, resolve_dtype
from textenv.models import resolve_device as _resolve_device
from textenv.rewards.spec import describe_reward_model, rebuild_reward_model
from textenv.training.loop import check_finite, check_finite_weights

if TYPE_CHECKING:
    from textenv.vector import TextGenVectorEnv

#: policy names built with random weights: a checkpoint must store their reference (it cannot be rebuilt)
RANDOM_POLICIES = ("tiny", "tiny-t5")

#: the native agent classes by ``name``, filled as each concrete subclass is defined (see
#: ``Agent.__init_subclass__``); :mod:`agents.registry` exposes it, :meth:`Agent.load` reads it
AGENT_CLASSES: dict[str, type[Agent]] = {}
#: the file every agent checkpoint holds (its presence marks a complete checkpoint)
CHECKPOINT_MARKER = "agent.json"
_SCALARS = (str, int, float, bool)
#: how the ranks of a torchrun job hold the policy: whole (DDP-style all-reduce) or sharded (FSDP2)
STRATEGIES = ("ddp", "fsdp")

@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters every agent has. Subclasses add their own; every field is validated.

    The KL to the reference goes where ``kl_in`` says, estimated per token by ``kl_estimator`` (see
    :func:`agents.core.kl_surrogate` for the expected gradients of each combination):

    - ``"reward"`` (the default here): ``kl_coef`` times the estimate is subtracted from the reward, as in
      RLHF-PPO (Ziegler et al. 2019, Ouyang et al. 2022). With ``"k1"`` (the default estimator) this is the
      one combination whose gradient is an unbiased estimate of grad KL(pi || ref) over whole sequences,
      hence the defaults of PPO, REINFORCE and RLOO.
    - ``"loss"``: ``kl_coef`` times the estimate, aggregated as the agent's policy loss is, is added to the
      loss and differentiated. Unbiased per token only with ``"k2"``; ``"k1"`` gives no gradient in
      expectation and ``"k3"`` (GRPO's default, as DeepSeekMath and TRL) follows the reverse KL(ref || pi).
    """

    batch_size: int = 64  # episodes per rollout (= vector env slots)
    learning_rate: float = 5e-5  # AdamW learning rate
    max_grad_norm: float = 1.0  # gradient-norm clip of every update
    weight_decay: float = 0.0  # AdamW weight decay
    kl_coef: float = 0.05  # beta: weight of the KL to the reference
    kl_estimator: KLKind = "k1"  # estimator of the per-token KL to the reference (Schulman's k1/k2/k3)
    kl_in: KLPlacement = "reward"  # where the KL goes: "reward" (penalised reward) or "loss" (a loss term)
    temperature: float = 1.0  # sampling temperature of the policy
    seed: int = 0  # seed of the rollouts and of the evaluation stream
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (bf16 on GPUs that support it, else fp32) | "float32" | "bfloat16"
    gradient_checkpointing: bool = False  # recompute the trunk's activations in the backward (less memory)
    lora_r: int | None = None  # LoRA rank (peft, pip install 'textenv[lora]'); unset: full fine-tuning
    lora_alpha: float | None = None  # LoRA scale alpha (the update is alpha / r times B A); unset: 2 * lora_r
    lora_target_modules: str = "auto"  # LoRA layers: auto (by architecture), all-linear, or comma-separated names
    strategy: str = "ddp"  # under torchrun: "ddp" (whole weights on every rank) | "fsdp" (sharded: agents.fsdp)

    def __post_init__(self) -> None:
        self.check_types()
        self.validate()

    def check_types(self) -> None:
        """Raise ``ValueError`` naming the first field whose value does not have its default's type: an int
        field takes an int (not a bool or ``1.5``), a float field a finite number (not ``inf`` or NaN), a
        bool field a bool. Fields defaulting to ``None`` take ``None`` or a finite number where numeric."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise ValueError(f"{f.name} must be a bool, got {v!r}")
            elif isinstance(default, int):
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise ValueError(f"{f.name} must be an integer, got {v!r}")
                setattr(self, f.name, int(v))  # numpy ints become plain ints (JSON in checkpoints)
            elif default is None and f.type in ("int | None", "Optional[int]"):  # e.g. lora_r
                if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                    raise ValueError(f"{f.name} must be None or an integer, got {v!r}")
                if v is not None:
                    setattr(self, f.name, int(v))
            elif isinstance(default, float) or (default is None and isinstance(v, (int, float))):
                if v is None and default is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))

    def check_ints(self, *names: str, minimum: int = 1) -> None:
        """Raise ``ValueError`` naming the first of ``names`` that is not an integer >= ``minimum``."""
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

    def check_minibatches(self) -> None:
        """The config's ``n_minibatches`` (declared by the subclasses that split a batch) is at most
        ``batch_size``: every minibatch holds an episode."""
        n = getattr(self, "n_minibatches")  # noqa: B009 (declared by the subclasses that split)
        if n > self.batch_size:
            raise ValueError(f"n_minibatches {n} exceeds batch_size {self.batch_size}")

    def check_open_unit(self, *names: str) -> None:
        """Raise ``ValueError`` naming the first of ``names`` (clip ranges) that is not in (0, 1)."""
        for name in names:
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v!r}")

    def check_group_size(self) -> None:
        """The config's ``group_size`` completions per prompt: at least 2, and dividing ``batch_size``."""
        self.check_ints("group_size", minimum=2)
        group_size = getattr(self, "group_size")  # noqa: B009 (declared by the subclasses that group)
        if self.batch_size % group_size:
            raise ValueError(f"group_size {group_size} does not divide batch_size {self.batch_size}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        self.check_ints("batch_size")
        self.check_ints("seed", minimum=0)
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
        if self.kl_in not in KL_PLACEMENTS:
            raise ValueError(f"kl_in must be 'reward' or 'loss', got {self.kl_in!r}")
        self.device = check_device(self.device)  # a torch.device becomes its string (checkpoints are JSON)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.lora_r is not None:
            self.check_ints("lora_r")
        if self.lora_alpha is not None:
            if self.lora_r is None:
                raise ValueError(f"lora_alpha {self.lora_alpha!r} is given but lora_r is not (LoRA is off)")
            if not self.lora_alpha > 0:
                raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        resolve_lora_targets("", self.lora_target_modules)  # a bad name list raises here, naming it
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "fsdp" and self.lora_r is not None:
            raise ValueError(f"strategy 'fsdp' does not support LoRA (lora_r={self.lora_r}): a LoRA run trains a "
                             f"small adapter on a frozen base, which DDP replicates cheaply; use strategy 'ddp'")


def read_agent_meta(meta_file: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``agent.json`` of a checkpoint as a dict with a string ``"agent"``; anything else (a JSON list, an
    empty or truncated file, a missing name) is a ``ValueError`` naming the file."""
    meta = io.read_json(meta_file, "agent checkpoint")
    if not isinstance(meta, dict):
        raise ValueError(f"agent checkpoint {str(meta_file)!r} must hold a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("agent"), str):
        raise ValueError(f"agent checkpoint {str(meta_file)!r} names no agent (\"agent\": {meta.get('agent')!r})")
    return meta


def policy_context_length(model: Any) -> int | None:
    """The number of positions ``model`` can attend over (``n_positions`` / ``max_position_embeddings`` of its
    config), or None where the config does not say (e.g. rotary models without a limit)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(config, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_policy_fits_env(policy: LMPolicy, env: Any, *, larger_head: bool = True) -> None:
    """Refuse, with a ``ValueError`` naming both numbers, a policy that cannot act in ``env``:

    - its LM head has fewer logits than the env's action space has tokens (it cannot emit some), or more and
      ``larger_head`` is False or the policy would use them (its ``vocab_size``: it would sample ids the env
      refuses; an :class:`LMPolicy` uses only its tokenizer's first ``len(tokenizer)``), or its embedding has fewer rows than the env's
      vocabulary (it cannot read some tokens);
    - its tokenizer has another size, or the same size but other tokens, than the env's (the policy would read
      ids as other text);
    - its context length (``n_positions``) is shorter than the env's observation length (single-turn:
      ``max_prompt_tokens + max_new_tokens``).
    """
    env_tok = getattr(env, "tokenizer", None)
    n_actions = int(env.vocab_size)
    n_logits = int(policy.lm_head.weight.shape[0])
    # a head padded beyond the vocabulary (Qwen: 151936 rows, 151665 tokens) is fine for an LMPolicy, which
    # only uses its first vocab_size logits; SB3's policy samples from all of them (larger_head=False)
    if n_logits < n_actions or (n_logits > n_actions and (not larger_head or policy.vocab_size != n_actions)):
        raise ValueError(f"vocabulary mismatch: the env's tokenizer has {n_actions} tokens but the policy's LM head "
                         f"has {n_logits} logits; use a policy trained with the env's tokenizer (or pass the "
                         f"policy's tokenizer to the env: env_kwargs={{'tokenizer': ...}})")
    embed = policy.model.get_input_embeddings() if hasattr(policy.model, "get_input_embeddings") else None
    n_embed = int(embed.weight.shape[0]) if embed is not None and hasattr(embed, "weight") else n_actions
    if n_embed < n_actions:
        raise ValueError(f"vocabulary mismatch: the env's tokenizer has {n_actions} tokens but the policy's "
                         f"input embedding only {n_embed} rows")
    pol_tok = getattr(policy, "tokenizer", None)
    if pol_tok is not None and env_tok is not None and pol_tok is not env_tok:
        n_pol = len(pol_tok)
        if n_pol != n_actions:
            raise ValueError(f"vocabulary mismatch: the env's tokenizer has {n_actions} tokens but the policy's "
                             f"tokenizer has {n_pol}")
        if hasattr(pol_tok, "get_vocab") and hasattr(env_tok, "get_vocab") and pol_tok.get_vocab() != env_tok.get_vocab():
            raise ValueError(f"vocabulary mismatch: the env's tokenizer and the policy's both have {n_actions} tokens "
                             f"but map them to different ids; build the env with the policy's tokenizer")
    n_positions = policy_context_length(policy.model)
    setup = getattr(env, "setup", None)
    if n_positions is not None and setup is not None and n_positions < setup.max_length:
        need = (f"max_prompt_tokens + max_new_tokens = {setup.max_prompt_tokens} + {setup.max_new_tokens}"
                if not getattr(setup, "multi_turn", False) else
                f"max_prompt_tokens + max_turns * max_new_tokens + (max_turns - 1) * max_inserted_tokens = "
                f"{setup.max_prompt_tokens} + {setup.max_turns} * {setup.max_new_tokens} + "
                f"{setup.max_turns - 1} * {setup.max_inserted_tokens}")
        raise ValueError(
            f"the policy's context length is {n_positions} positions but the env needs {need} = "
            f"{setup.max_length}; lower max_new_tokens / max_prompt_tokens (env_kwargs) or use a policy with "
            f"n_positions >= {setup.max_length}"
        )


def resolve_device(device: str) -> torch.device:
    """The agent's ``torch.device`` (:func:`textenv.models.resolve_device`: ``"auto"`` = cuda if available)."""
    return _resolve_device(device)  # type: ignore[no-any-return]


def make_optimizer(params: Any, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``params``; torch's fused kernel (one kernel for all parameters) on CUDA and on the CPU,
    torch's default elsewhere."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adamw_kwargs(device))


#: devices whose AdamW step runs torch's fused kernel: CUDA (what TRL/HF use there) and the CPU, where it
#: is ~3x faster than the default per-tensor loop (issue 11: the step is replicated on every rank, so its
#: cost does not shrink with more processes and held PPO's scaling back)
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def adamw_kwargs(device: torch.device) -> dict[str, Any]:
    """``{"fused": True}`` on a device of :data:`FUSED_ADAMW_DEVICES`, ``{}`` elsewhere."""
    return {"fused": True} if torch.device(device).type in FUSED_ADAMW_DEVICES else {}


class Agent(ABC):
    """The one interface of every agent: ``Agent(env, policy, config, **overrides)``, ``learn``,
    ``evaluate``, ``save``, ``load``.

    - ``env``: an env id (a native ``TextGenVectorEnv`` with ``batch_size`` slots is built, with
      ``env_kwargs``) or a user's ``TextGenVectorEnv`` in any autoreset mode (``gym.make_vec``'s default
      NEXT_STEP included), used as given: each rollout runs with autoreset disabled and restores the mode.
      Without an explicit ``batch_size`` (or ``config``), the batch is the env's ``num_envs``.
    - ``policy``: ``"default"`` (the shipped fine-tuned LM), ``"tiny"``, a model directory or an
      :class:`~agents.policy.LMPolicy`. The policy as given is also the frozen KL reference.
    - ``config``: the agent's Config dataclass; ``overrides`` replace its fields.
    """

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    name: ClassVar[str] = "agent"
    #: completions per prompt in one rollout (1: every slot draws its own prompt)
    uses_values: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register every concrete subclass that names itself, so :meth:`load` finds it by name."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ or inspect.isabstract(cls):
            return
        known = AGENT_CLASSES.get(cls.name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"agent name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
        AGENT_CLASSES[cls.name] = cls

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
        if not isinstance(env, str) and not explicit_config and "batch_size" not in overrides:
            # a user's vector env sets the batch: gym.make_vec("TextGen-v0", num_envs=16) gives 16-episode rollouts
            overrides = {**overrides, "batch_size": check_env(env).num_envs * distributed.launched_world_size()}
        self.config = dataclasses.replace(config, **overrides)
        # under torchrun: batch_size is the global batch, split among the ranks (agents.distributed)
        distributed.check_batch(self.config.batch_size, distributed.launched_world_size())
        self.device = distributed.rank_device(resolve_device(self.config.device))
        self.dist = distributed.context(self.device)
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
        else:  # with LoRA the reference is the adapter-disabled base: no copy
            self.policy = LMPolicy.from_pretrained(policy, temperature=self.config.temperature,
                                                   with_reference=self.config.lora_r is None)
            # a directory is recorded absolute (the reference is reloaded from it); "tiny" is random, so a
            # checkpoint stores its reference (see save)
            self.policy_source = (str(Path(policy).resolve()) if str(policy) not in ("default", *RANDOM_POLICIES)
                                  else str(policy))
        self._apply_memory_settings()  # LoRA first: with it the reference is the model itself, not cast
        self.dtype: torch.dtype = resolve_dtype(self.config.dtype, self.device)
        self.policy.set_dtype(self.dtype)  # before the move: a bf16 reference goes to the GPU at half the size
        self.policy.to(self.device)
        self.env_kwargs = dict(env_kwargs or {})
        self.env_id = env if isinstance(env, str) else None
        if isinstance(env, str):
            import gymnasium as gym
            from gymnasium.vector import AutoresetMode

            import textenv  # noqa: F401  (registers the ids)

            # the env's reward model runs on the agent's device unless env_kwargs say otherwise
            kwargs = {"tokenizer": self.policy.tokenizer, "device": str(self.device), **self.env_kwargs}
            self.envs: TextGenVectorEnv = gym.make_vec(  # type: ignore[assignment]
                env, num_envs=self.rollout_size(), autoreset_mode=AutoresetMode.DISABLED, **kwargs).unwrapped
        else:
            self.envs = check_env(env)
            if self.envs.num_envs != self.rollout_size():
                per_rank = (f" per process (batch_size {self.config.batch_size} over {self.dist.world_size} "
                            f"processes)" if self.dist.active else " (batch_size)")
                raise ValueError(f"the vector env has {self.envs.num_envs} slots but this agent's batch is "
                                 f"{self.rollout_size()} episodes{per_rank}")
        check_policy_fits_env(self.policy, self.envs)
        self.dist.broadcast_module(self.policy, self.policy.ref_model)  # every rank starts from rank 0's weights
        #: whether this rank holds a shard of the policy (strategy "fsdp" under torchrun; one process: whole)
        self.sharded = self.dist.active and self.config.strategy == "fsdp"
        if self.sharded:  # before the optimizer, which must hold the shards
            fsdp.shard_policy(self.policy, fsdp.device_mesh(self.device, self.dist.world_size))
        self.optimizer = make_optimizer(self.policy.parameters(), self.config.learning_rate,
                                        self.config.weight_decay, self.device)
        self.episodes = 0
        self.iteration = 0
        self.history: list[dict[str, float]] = []

    def _apply_memory_settings(self) -> None:
        """LoRA and gradient checkpointing of the config on the policy (issue 11 item 5). A policy that already
        has an adapter (a loaded checkpoint, a user's) keeps it; the config then records its settings."""
        cfg, lora = self.config, self.policy.lora_settings
        if lora is not None:
            if cfg.lora_r is not None and (cfg.lora_r != lora["r"] or (cfg.lora_alpha is not None
                                                                       and cfg.lora_alpha != lora["alpha"])):
                raise ValueError(f"the policy already has a LoRA adapter (r={lora['r']}, alpha={lora['alpha']}) "
                                 f"but the config asks for lora_r={cfg.lora_r}, lora_alpha={cfg.lora_alpha}")
            self.config = dataclasses.replace(cfg, lora_r=lora["r"], lora_alpha=lora["alpha"])
        elif cfg.lora_r is not None:
            self.policy.enable_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
            self.config = dataclasses.replace(cfg, lora_alpha=self.policy.lora_settings["alpha"])  # type: ignore[index]
        if cfg.gradient_checkpointing:
            self.policy.set_gradient_checkpointing(True)

    # ------------------------------------------------------------------------------ per algorithm
    def rollout_size(self) -> int:
        """Episodes this process collects per iteration: its share of the global ``batch_size``."""
        return self.config.batch_size // self.dist.world_size

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
        """One synchronised batch of episodes (groups of identical prompts when group_size > 1): this
        process's shard of the global batch (all of it in one process)."""
        return self.collect_shard(self.envs, self.dist.rank, self.dist.world_size, iteration, split)

    def collect_shard(self, envs: TextGenVectorEnv, rank: int, world_size: int, iteration: int | None = None,
                      split: str | None = None) -> RolloutBatch:
        """Shard ``rank`` of ``world_size`` of an iteration's global batch, collected in ``envs`` (its
        ``num_envs`` slots). Rank r samples with the seed of rank 0 shifted by r
        (:func:`~agents.distributed.rank_seed`); with groups, every rank draws the same global list of
        prompts and takes its slots of it."""
        it = self.iteration if iteration is None else iteration
        base = self._iteration_seed(it, 0 if split is None else 1)
        seed = distributed.rank_seed(base, rank)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        prompts = None
        G = self.group_size()
        if G > 1:
            rng = np.random.default_rng(base)
            b = envs.num_envs
            n_prompts = b * world_size // G
            distinct = [envs.sample_prompt(rng, split) for _ in range(n_prompts)]
            prompts = [p for p in distinct for _ in range(G)][rank * b:(rank + 1) * b]
        if not self.sharded:
            return collect_rollout(self.policy, envs, seed=seed, prompts=prompts, split=split,
                                   with_values=self.uses_values, generator=gen)
        # FSDP: the policy is gathered whole for the episodes (no communication per token), then freed
        # before the reference is gathered for its one forward
        with fsdp.gathered(self.policy):
            batch = collect_rollout(self.policy, envs, seed=seed, prompts=prompts, split=split,
                                    with_values=self.uses_values, generator=gen, with_ref=False)
        if self.policy.has_reference:
            ref = self.policy.ref_logprobs(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
            batch = batch._replace(ref_logprobs=ref * batch.mask)
        return batch

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
        dist = self.dist
        bar = tqdm(total=total_episodes, disable=not progress or not dist.is_main, unit="ep", dynamic_ncols=True)
        while self.episodes < target:
            t0 = time.perf_counter()
            batch = self.collect()
            # per-episode means of equal shards: their mean over ranks is the global mean; rates add up
            metrics = dist.mean_metrics(rollout_metrics(batch), summed=("tokens_per_s",))
            self.policy.train()
            self.policy.model.eval()  # dropout off: log-probs must match those of the rollout
            metrics.update(self.update(self._to_device(batch)))
            n = batch.scores.shape[0] * dist.world_size  # the global batch
            self.episodes += n
            self.iteration += 1
            metrics.update({"episodes": float(self.episodes), "iteration": float(self.iteration),
                            "time_s": time.perf_counter() - t0})
            self.history.append(metrics)
            if self.iteration % memory.TRIM_EVERY == 0:
                # glibc keeps the freed rollout and autograd buffers and its heaps grow without bound
                # (issue 10 A21): hand them back (a no-op off glibc; see textenv.memory)
                memory.release_free_memory()
            bar.update(n)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", gold=f"{metrics['gold_score']:.3f}",
                            kl=f"{metrics['kl']:.3f}")
            stop = callback is not None and callback(self, metrics) is False
            if dist.any(stop):  # one rank's callback stopping stops them all (no rank is left waiting)
                break
        bar.close()
        return self

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """Mean metrics over ``num_episodes`` sampled episodes on held-out prompts (``split="test"``).

        Returns ``reward``, ``gold_score``, ``kl`` (sequence KL to the reference, k1), ``entropy`` and
        ``completions/mean_length``. Sampling is seeded, by default with
        :func:`~agents.contract.evaluation_seed` of ``config.seed``: every learner of a seed (native, SB3,
        TRL) evaluates on the same prompts with the same random stream. An FSDP-sharded agent
        (``strategy="fsdp"`` under torchrun) gathers its weights for it: every rank must call it.
        """
        seed = evaluation_seed(self.config.seed) if seed is None else seed
        with fsdp.gathered(self.policy):  # under FSDP a collective: every rank calls it
            return evaluate_policy(self.policy, self.envs, num_episodes, split=split, seed=seed)

    def samples(self, n: int = 4, split: str = "test", seed: int | None = None) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs sampled from the current policy on held-out prompts (seeded as
        :meth:`evaluate`)."""
        seed = evaluation_seed(self.config.seed) if seed is None else seed
        with fsdp.gathered(self.policy):  # under FSDP a collective: every rank calls it
            return sample_completions(self.policy, self.envs, n, split=split, seed=seed)

    # ------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "agent": self.name,
            "config": dataclasses.asdict(self.config),
            "episodes": self.episodes,
            "iteration": self.iteration,
            "env_id": self.env_id,
            **env_record(self.env_kwargs, self.env_id, self.envs),
            "policy_source": self.policy_source,
            "extra": self.extra_state(),
            "history": self.history,
            "versions": {"torch": torch.__version__},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint directory atomically: ``policy/`` (safetensors), ``reference/`` (when the
        reference is not a named model), ``agent.json`` (state, with the sha256 of every other file under
        ``"files"``, which :meth:`load` checks) and ``optimizer.pt`` (tensors only). Under torchrun every
        rank calls it and rank 0 writes; an FSDP-sharded agent's ranks first gather the full state dicts,
        so the checkpoint is the one-process format either way."""
        path = Path(path)
        check_finite_weights(f"{self.name} after {self.episodes} episodes", self.policy)
        with_ref = self.policy_source in (None, *RANDOM_POLICIES) and self.policy.ref_model is not None
        full: dict[str, Any] = {}
        if self.sharded:  # every rank takes part in gathering the full state dicts; rank 0 writes them
            full = {"policy": fsdp.full_model_state_dict(self.policy),
                    "reference": fsdp.frozen_full_state_dict(self.policy.ref_model) if with_ref else None,
                    "optimizer": fsdp.full_optimizer_state_dict(self.policy, self.optimizer)}
        if not self.dist.is_main:  # under torchrun rank 0 writes (the ranks hold the same weights)
            self.dist.barrier()
            return path
        try:
            self._write_checkpoint(path, with_ref, full)
        finally:
            self.dist.barrier()
        return path

    def _write_checkpoint(self, path: Path, with_ref: bool, full: dict[str, Any]) -> None:
        state = self.state()  # before the write: hashing a reward-model directory may fail
        with io.atomic_dir(path) as tmp:
            self.policy.save(tmp / "policy", state_dict=full.get("policy"))
            if with_ref:
                with quiet_progress():
                    self.policy.ref_model.save_pretrained(str(tmp / "reference"), state_dict=full.get("reference"))
            optimizer = full["optimizer"] if self.sharded else self.optimizer.state_dict()
            torch.save({"optimizer": optimizer}, tmp / "optimizer.pt")
            state["files"] = io.file_digests(tmp)  # checked by load: a changed byte is an error
            (tmp / CHECKPOINT_MARKER).write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None, env_kwargs: dict[str, Any] | None = None,
             **overrides: Any) -> Agent:
        """Restore an agent saved by :meth:`save` (any subclass: the class is read from ``agent.json``).

        The env is rebuilt from the checkpoint (its id, scalar keyword arguments and reward-model spec, see
        :mod:`textenv.rewards.spec`) unless ``env`` (an id or a ``TextGenVectorEnv``) or ``env_kwargs``
        (used as given, replacing the recorded ones) is passed. A checkpoint whose reward model was a Python
        callable or object, or whose env was a ``TextGenVectorEnv`` object, cannot be rebuilt that way: it
        raises ``ValueError`` unless the caller passes them. ``overrides`` replace config fields.
        """
        path = io.previous_dir(Path(path))
        meta_file = path / CHECKPOINT_MARKER
        if not meta_file.exists():
            raise ValueError(f"{str(path)!r} is not an agent checkpoint (no {CHECKPOINT_MARKER})")
        meta = read_agent_meta(meta_file)
        agent_cls = AGENT_CLASSES.get(meta["agent"])
        if agent_cls is None:
            raise ValueError(f"{str(meta_file)!r} names unknown agent {meta.get('agent')!r}")
        if not isinstance(meta.get("config"), dict):
            raise ValueError(f"{str(meta_file)!r}: 'config' must be an object, got {meta.get('config')!r:.80}")
        for key in ("episodes", "iteration"):
            value = meta.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{str(meta_file)!r}: {key!r} must be an integer >= 0, got {value!r:.80}")
        bad = set(meta["config"]) - {f.name for f in dataclasses.fields(agent_cls.Config)}
        if bad:
            raise ValueError(f"{str(meta_file)!r}: config field(s) {sorted(bad)} are not {agent_cls.Config.__name__}'s")
        if cls is not Agent and not issubclass(agent_cls, cls):
            raise ValueError(f"{str(path)!r} holds a {agent_cls.__name__}, not a {cls.__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(agent_cls.Config)}
        if unknown:
            raise ValueError(f"unknown {agent_cls.Config.__name__} field(s) {sorted(unknown)}")
        try:
            config = agent_cls.Config(**{**meta["config"], **overrides})
        except ValueError as exc:
            raise ValueError(f"{str(meta_file)!r}: {exc}") from None
        if "files" in meta:  # checkpoints from before file hashes load unchecked
            io.check_digests(path, meta["files"], str(meta_file))
        from textenv.models import load_causal_lm

        source = meta.get("policy_source")
        ref_dir = path / "reference"
        lora = (path / "policy" / "adapter").is_dir()  # the reference is the policy's own base
        ref = (None if lora else load_causal_lm(ref_dir) if ref_dir.is_dir()
               else load_causal_lm(source) if source is not None else None)
        policy = LMPolicy.from_pretrained(path / "policy", ref_model=ref, temperature=config.temperature,
                                          with_reference=ref is not None)
        env, env_kwargs = rebuild_env(meta, str(meta_file), env, env_kwargs)
        agent = agent_cls(env, policy=policy, config=config, env_kwargs=env_kwargs)
        agent.policy_source = source
        opt_file = path / "optimizer.pt"
        try:
            opt = torch.load(opt_file, map_location=agent.device, weights_only=True)
            if agent.sharded:  # every rank loaded the whole state: each keeps its shards
                fsdp.load_optimizer_state_dict(agent.policy, agent.optimizer, opt["optimizer"])
            else:
                agent.optimizer.load_state_dict(opt["optimizer"])
        except Exception as exc:  # truncated, not a torch file, or a state of another optimizer
            raise ValueError(f"cannot load the optimizer state {str(opt_file)!r}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400]) from None
        for group in agent.optimizer.param_groups:  # load_state_dict restores the saved ones; overrides win
            group["lr"], group["weight_decay"] = config.learning_rate, config.weight_decay
            group["fused"] = adamw_kwargs(agent.device).get("fused")  # the kernel of this device, not the saver's
        agent.episodes, agent.iteration = int(meta["episodes"]), int(meta["iteration"])
        agent.history = list(meta.get("history", []))
        agent.load_extra_state(meta.get("extra", {}))
        return agent

    # ------------------------------------------------------------------------------ helpers
    def minibatch_updates(self, n: int, passes: int, n_minibatches: int,
                          loss_fn: Callable[[torch.Tensor, bool], tuple[torch.Tensor, dict[str, Any], float]],
                          *, gathered: bool = True) -> dict[str, float]:
        """``passes`` shuffled passes over ``n`` episodes in ``n_minibatches`` minibatches, one optimizer step
        (:meth:`_step`) each; returns the mean over steps of the logged stats (weighted over ranks) and the
        gradient norm.

        ``loss_fn(idx, any_here)`` gives the loss on this rank's episodes ``idx`` of the minibatch, its stats
        and its weight: this rank's share of the minibatch's normaliser (tokens or sequences, as the loss
        normalises; 0 when ``any_here`` is False). ``gathered``: ``idx`` indexes the gathered global batch
        (:meth:`~agents.distributed.Context.minibatch_part`, equal parts per rank), else this rank's shard
        (:meth:`~agents.distributed.Context.local_indices`). The permutations come from the iteration's seed,
        so a resumed run draws the same minibatches."""
        dist = self.dist
        gen = torch.Generator().manual_seed(self._iteration_seed(self.iteration, 3))
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(passes):
            perm = torch.randperm(n, generator=gen).to(self.device)
            for global_idx in perm.chunk(n_minibatches):
                idx, any_here = dist.minibatch_part(global_idx) if gathered else dist.local_indices(global_idx, n)
                loss, stats, weight = loss_fn(idx, any_here)
                grad_norm = self._step(loss, weight)
                row = dist.weighted_mean(stats, weight)
                row["grad_norm"] = grad_norm
                for k, v in row.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                steps += 1
        return {k: v / steps for k, v in sums.items()}

    def _step(self, loss: torch.Tensor, weight: float = 1.0) -> float:
        """Backward, clip, AdamW step; returns the gradient norm before clipping.

        Under torchrun, ``loss`` is this rank's mean loss over ``weight`` items (tokens or sequences, as the
        loss normalises; 0 for a rank with no episode in the minibatch): the gradients of every rank's
        ``loss * weight`` are summed and divided by the summed weights, the gradient of the global
        minibatch's loss (:meth:`agents.distributed.Context.reduce_gradients`); one process ignores
        ``weight``.

        A non-finite loss or gradient norm raises :class:`~textenv.training.loop.NonFiniteError` naming the
        iteration, before the optimizer applies it (on every rank: both are global)."""
        where = f"{self.name} iteration {self.iteration + 1} (after {self.episodes} episodes)"
        self.optimizer.zero_grad(set_to_none=True)
        if self.sharded:  # FSDP averages the gradients over ranks: scale each rank's share before the backward
            head = self.dist.all_sum(torch.tensor([float(loss.detach()) * weight, weight], dtype=torch.float64,
                                                  device=self.dist._comm_device()))
            total = float(head[1])
            check_finite(where, loss=float(head[0]) / total if total > 0 else float(loss.detach()))
            (loss * (self.dist.world_size * weight / total if total > 0 else 0.0)).backward()
        elif self.dist.active:
            (loss * weight).backward()
            check_finite(where, loss=self.dist.reduce_gradients(self.policy.parameters(), loss, float(weight)))
        else:
            check_finite(where, loss=float(loss.detach()))
            loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm))
        check_finite(where, grad_norm=grad_norm)
        self.optimizer.step()
        return grad_norm


# ---------------------------------------------------------------------------------------------- env records
def env_record(env_kwargs: dict[str, Any], env_id: str | None, envs: Any) -> dict[str, Any]:
    """What a checkpoint records of its env: the scalar ``env_kwargs``, the names of those it cannot hold
    (``unsaved_env_kwargs``) and the reward model's spec (``reward_model``, see :mod:`textenv.rewards.spec`):
    the ``reward_model=`` argument for an env built from an id, the env's resolved one otherwise."""
    rm = env_kwargs.get("reward_model", "default") if env_id is not None else envs.reward_model
    # a task object that can describe itself (textenv.tasks.Task.spec, e.g. a DatasetTask of a file) is kept
    # as its JSON record, which the env's task= accepts back
    recorded = {k: _task_record(v) for k, v in env_kwargs.items() if k != "reward_model"}
    return {
        "env_kwargs": {k: v for k, v in recorded.items() if _recordable(k, v)},
        "unsaved_env_kwargs": sorted(k for k, v in recorded.items() if not _recordable(k, v)),
        "reward_model": describe_reward_model(rm),
    }


def _recordable(key: str, value: Any) -> bool:
    return isinstance(value, _SCALARS) or (key == "task" and isinstance(value, dict))


def _task_record(value: Any) -> Any:
    """``value`` itself, or the JSON record of a task object that has one (``Task.spec()``)."""
    from textenv.tasks import Task

    if isinstance(value, Task):
        spec = value.spec()
        return spec if spec is not None else value
    return value


def rebuild_env(meta: dict[str, Any], where: str, env: Any = None,
                env_kwargs: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(env, env_kwargs)`` to rebuild a checkpoint's env from its record ``meta`` (``where``: its file).

    What the caller passes wins: an ``env`` object is used as is, explicit ``env_kwargs`` replace the
    recorded ones. Otherwise the recorded env id, scalar kwargs and reward model are used; a record that
    cannot be rebuilt (an env object, a callable or object reward, a non-scalar keyword) raises
    ``ValueError`` saying what to pass.
    """
    if env is not None and not isinstance(env, str):
        return env, dict(env_kwargs or {})
    env_id = env if env is not None else meta.get("env_id")
    if env_id is None:
        raise ValueError(f"{where}: the agent was trained on a TextGenVectorEnv object, which a checkpoint "
                         f"cannot hold; pass env= to load it")
    if env_kwargs is not None:
        return env_id, dict(env_kwargs)
    kwargs = dict(meta.get("env_kwargs") or {})
    unsaved = meta.get("unsaved_env_kwargs") or []
    if unsaved:
        raise ValueError(f"{where}: env keyword argument(s) {unsaved} were Python objects and are not in the "
                         f"checkpoint; pass env= or env_kwargs= to load it")
    spec = meta.get("reward_model")
    if spec is None:  # a checkpoint from before reward-model specs: its scalar env_kwargs are all there is
        return env_id, kwargs
    rm = rebuild_reward_model(spec, where)  # a callable or object reward raises here, naming it
    if rm != "default":
        kwargs["reward_model"] = rm
    return env_id, kwargs
