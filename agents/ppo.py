"""PPO for language models with a KL penalty to the reference (Ziegler et al. 2019; Ouyang et al. 2022).

Per-token reward: the env's reward (the reward-model score on the last token) minus ``kl_coef`` times the
per-token KL to the reference (``kl_in="reward"``, the default, k1: the unbiased combination; with
``kl_in="loss"`` the reward is the env's alone and ``kl_coef`` times the token mean of the KL estimate of the
current policy is added to the loss). Advantages by GAE over the completion (no bootstrap past the end), whitened;
the clipped surrogate, a clipped value loss and an optional entropy bonus, over minibatches and epochs.
The KL coefficient is fixed or adaptive (the proportional controller of Ziegler et al.).

Logged every iteration (cleanrl's names, averaged over minibatches): ``policy_loss``, ``value_loss``,
``entropy``, ``approx_kl`` (k3) and ``old_approx_kl`` (k1) of the new policy to the rollout policy,
``clip_ratio`` (cleanrl's ``clipfrac``), ``grad_norm``; once per batch, ``explained_variance`` of the
rollout values against the GAE returns, and ``kl_coef``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from agents.base import Agent, AgentConfig
from agents.core import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    explained_variance,
    gae_over_mask,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    token_level_rewards,
    value_loss,
)
from agents.policy import PerTokenLogps
from agents.rollout import RolloutBatch


@dataclasses.dataclass
class PPOConfig(AgentConfig):
    """PPO hyperparameters (names as in stable-baselines3 / TRL's PPOTrainer)."""

    learning_rate: float = 1e-4  # AdamW learning rate
    n_epochs: int = 4  # optimisation passes over each rollout
    n_minibatches: int = 4  # minibatches per pass
    clip_range: float = 0.2  # PPO ratio clip epsilon
    clip_range_vf: float | None = 0.2  # value clip around the rollout values
    vf_coef: float = 0.1  # value-loss weight
    ent_coef: float = 0.0  # entropy bonus weight
    gamma: float = 1.0  # discount of GAE
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool = True  # normalise advantages to zero mean, unit std
    adaptive_kl: bool = False  # adapt kl_coef towards kl_target (Ziegler et al. 2019)
    kl_target: float = 6.0  # sequence KL the adaptive controller aims at
    kl_horizon: int = 10_000  # horizon (episodes) of the adaptive KL controller
    target_kl: float | None = None  # stop the epochs early when approx_kl exceeds 1.5 x this

    def validate(self) -> None:
        super().validate()
        self.check_ints("n_epochs", "n_minibatches", "kl_horizon")
        self.check_minibatches()
        self.check_open_unit("clip_range")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ValueError(f"clip_range_vf must be None or > 0, got {self.clip_range_vf!r}")
        for name in ("vf_coef", "ent_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.kl_target > 0:
            raise ValueError(f"kl_target must be > 0, got {self.kl_target!r}")


class PPO(Agent):
    """PPO with a per-token KL penalty, GAE and a value head on the LM trunk; see the module docstring.

    Example:
        >>> agent = PPO("TextGen-v0", policy="default", batch_size=64).learn(1024)
        >>> agent.evaluate(64)["gold_score"]
    """

    Config = PPOConfig
    config: PPOConfig
    name = "ppo"
    uses_values = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.kl_ctl: KLController = (
            AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
            else FixedKLController(cfg.kl_coef))

    def token_logps(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                    mask: torch.Tensor) -> PerTokenLogps:
        """The training forward: log-probs, values and entropy of ``tokens`` (the policy's; NLPO masks them)."""
        return self.policy.per_token_logps(query_ids, query_mask, tokens, mask)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        dist = self.dist
        # under torchrun the global batch on every rank (gathered once): batch statistics are global and
        # every rank takes an equal part of each minibatch
        batch = dist.gather_batch(batch, self.envs.pad_id)
        mask = batch.mask
        kl_in_loss = cfg.kl_in == "loss"
        rewards, kl = token_level_rewards(batch.rewards, batch.logprobs, batch.ref_logprobs, mask,
                                          0.0 if kl_in_loss else self.kl_ctl.value, cfg.kl_estimator)  # (B, T)
        # over the agent's tokens only: a multi-turn episode's inserted tokens are not steps (mask 0 inside)
        advantages, returns = gae_over_mask(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        # how much of the returns' variance the rollout values explain (cleanrl logs it every iteration)
        explained_var = float(explained_variance(batch.values, returns, mask))
        if cfg.whiten_advantages and mask.sum() > 1:
            advantages = masked_whiten(advantages, mask)
        B = mask.shape[0]
        gen = torch.Generator().manual_seed(self._iteration_seed(self.iteration, 3))
        sums: dict[str, float] = {}
        n = 0
        stop = False
        for _ in range(cfg.n_epochs):
            perm = torch.randperm(B, generator=gen).to(self.device)
            for global_idx in perm.chunk(cfg.n_minibatches):
                idx, any_here = dist.minibatch_part(global_idx)
                m = mask[idx]
                ev = self.token_logps(batch.query_ids[idx], batch.query_mask[idx], batch.tokens[idx], m)
                pg_loss, stats = ppo_policy_loss(ev.logprobs, batch.logprobs[idx], advantages[idx], m, cfg.clip_range)
                vf_loss = value_loss(ev.values, batch.values[idx], returns[idx], m, cfg.clip_range_vf)
                entropy = masked_mean(ev.entropy, m)
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                logged = {
                    "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "entropy": entropy.detach(),
                    "approx_kl": stats["approx_kl"], "old_approx_kl": stats["old_approx_kl"],
                    "clip_ratio": stats["clip_ratio"]}
                if kl_in_loss:
                    kl_loss = masked_mean(kl_penalty(ev.logprobs, batch.ref_logprobs[idx], cfg.kl_estimator), m)
                    loss = loss + self.kl_ctl.value * kl_loss
                    logged["kl_loss"] = kl_loss.detach()
                weight = float(m.sum()) if any_here else 0.0  # every term is a mean over this rank's tokens
                grad_norm = self._step(loss, weight)
                row = dist.weighted_mean(logged, weight)
                row["grad_norm"] = grad_norm
                for k, v in row.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                if cfg.target_kl is not None and row["approx_kl"] > 1.5 * cfg.target_kl:
                    stop = True  # approx_kl is global: every rank stops at the same minibatch
                    break
            if stop:
                break
        mean_kl = float(kl.sum(1).mean())
        self.kl_ctl.update(mean_kl, B)
        out = {k: v / n for k, v in sums.items()}
        out["explained_variance"] = explained_var
        out["kl_coef"] = float(self.kl_ctl.value)
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"kl_coef": float(self.kl_ctl.value)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "kl_coef" in state:
            self.kl_ctl.value = float(state["kl_coef"])
