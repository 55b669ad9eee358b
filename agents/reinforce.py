"""REINFORCE with a baseline (Williams 1992): the gradient of E[R] is E[(R - b) grad log pi(y|x)].

The sequence return is the reward-model score minus the KL to the reference, summed over the completion:
``R = score - kl_coef * sum_t kl_t`` (``kl_in="reward"``, the default, with the unbiased k1). With
``kl_in="loss"`` the return is the score alone and ``kl_coef * mean_b sum_t kl_t`` (the same sequence KL,
differentiated) is added to the loss. One gradient step per batch (on-policy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from agents.base import Agent, AgentConfig
from agents.core import kl_penalty, masked_mean, masked_sum
from agents.rollout import RolloutBatch

BASELINES = ("mean", "ema", "none")


@dataclasses.dataclass
class REINFORCEConfig(AgentConfig):
    """REINFORCE hyperparameters. ``baseline``: ``"mean"`` (batch mean), ``"ema"`` (running mean of
    past returns) or ``"none"``."""

    learning_rate: float = 2e-4  # one gradient step per batch, so above PPO's; 5e-4 collapsed arithmetic (measured)
    baseline: str = "mean"  # "mean" (batch mean), "ema" (running mean of returns) or "none"
    ema_decay: float = 0.9  # decay of the "ema" baseline

    def validate(self) -> None:
        super().validate()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")


class REINFORCE(Agent):
    """REINFORCE (``R log pi``) with a baseline; see the module docstring.

    Example:
        >>> agent = REINFORCE("TextGen-v0", policy="default", batch_size=32).learn(256)
    """

    Config = REINFORCEConfig
    config: REINFORCEConfig
    name = "reinforce"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ema: float | None = None

    def sequence_returns(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, kl)``: per-episode return (with the KL penalty when ``kl_in="reward"``) and the per-episode
        KL estimate of the rollout (both (B,))."""
        kl = masked_sum(kl_penalty(batch.logprobs, batch.ref_logprobs, self.config.kl_estimator), batch.mask, dim=1)
        if self.config.kl_in == "loss":
            return batch.scores, kl
        return batch.scores - self.config.kl_coef * kl, kl

    def advantages(self, returns: torch.Tensor) -> torch.Tensor:
        """``R - b`` per episode, (B,)."""
        cfg = self.config
        if cfg.baseline == "mean":
            return returns - returns.mean()
        if cfg.baseline == "ema":
            baseline = float(returns.mean()) if self.ema is None else self.ema
            self.ema = cfg.ema_decay * baseline + (1 - cfg.ema_decay) * float(returns.mean())
            return returns - baseline
        return returns

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        dist = self.dist
        returns, kl = self.sequence_returns(batch)
        # baselines over the global batch (the ranks' returns gathered), then this rank's shard
        all_returns = dist.gather(returns)
        all_advantages = self.advantages(all_returns)  # (B,)
        advantages = all_advantages[dist.shard(all_returns.shape[0])]  # (b,)
        ev = self.policy.per_token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
        seq_logprob = (ev.logprobs * batch.mask).sum(1)  # (b,) log pi(y|x)
        pg_loss = -(advantages * seq_logprob).mean()
        loss = pg_loss
        stats = {"policy_loss": pg_loss.detach(), "entropy": masked_mean(ev.entropy.detach(), batch.mask)}
        if self.config.kl_in == "loss":  # the sequence KL, differentiated: mean_b sum_t kl_t
            kl_loss = masked_sum(kl_penalty(ev.logprobs, batch.ref_logprobs, self.config.kl_estimator),
                                 batch.mask, dim=1).mean()
            loss = pg_loss + self.config.kl_coef * kl_loss
            stats["kl_loss"] = kl_loss.detach()
        weight = float(advantages.shape[0])  # the loss is a mean over sequences
        grad_norm = self._step(loss, weight)
        out = dist.weighted_mean(stats, weight)
        out["advantage_std"] = float(all_advantages.std()) if all_advantages.numel() > 1 else 0.0
        out["grad_norm"] = grad_norm
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema = state.get("ema")
