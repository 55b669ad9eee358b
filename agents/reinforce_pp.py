"""REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"):
critic-free PPO-style updates on REINFORCE returns with global-batch advantage normalisation.

Per token, the reward is the score on the last token minus ``kl_coef`` times the KL estimate
(``kl_in="reward"``, k1: the unbiased default), the return is the reward-to-go (gamma = 1, no critic:
G_t = sum_{s >= t} r_s), and the advantages are the returns whitened over every token of the *global* batch
(not per prompt: the paper's point against GRPO's per-group std). The loss is PPO's clipped surrogate,
averaged over tokens.

``group_baseline=True`` is the paper's "REINFORCE++-baseline": first the group mean score of each prompt's
``group_size`` completions is subtracted from its scores (as RLOO and GRPO, without their std), then the
global normalisation; ``False`` samples one completion per prompt (``group_size`` 1) unless set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from agents.base import Agent, AgentConfig
from agents.core import (
    KLKind,
    aggregate_loss,
    gae_over_mask,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    token_level_rewards,
)
from agents.rollout import RolloutBatch


def reinforce_pp_advantages(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                            mask: torch.Tensor, kl_coef: float, kind: KLKind = "k1",
                            group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ advantages (B, T) and the per-token KL estimate (B, T) of a batch (see the module docstring).

    ``scores`` (B,); ``logprobs``, ``ref_logprobs``, ``mask`` (B, T). ``group_size``: subtract the mean
    score of each consecutive group first (REINFORCE++-baseline); None: no baseline. The whitening needs at
    least 2 valid tokens.
    """
    if group_size is not None:
        if group_size < 1 or scores.shape[0] % group_size:
            raise ValueError(f"group_size {group_size} does not divide the batch of {scores.shape[0]}")
        g = scores.view(-1, group_size)
        scores = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    valid = mask.bool()
    last = valid.long().cumsum(1) == valid.long().sum(1, keepdim=True)  # (B, T): the last valid token
    terminal = torch.where(valid & last, scores[:, None].to(logprobs.dtype), torch.zeros_like(logprobs))
    rewards, kl = token_level_rewards(terminal, logprobs, ref_logprobs, mask, kl_coef, kind)
    # reward-to-go along the agent's tokens: in a multi-turn batch the mask has holes (the inserted tokens),
    # which plain gae would read as episode ends, cutting earlier turns off from the terminal score
    returns, _ = gae_over_mask(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    return masked_whiten(returns, mask), kl


@dataclasses.dataclass
class REINFORCEPPConfig(AgentConfig):
    """REINFORCE++ hyperparameters."""

    learning_rate: float = 1e-4  # AdamW learning rate
    kl_coef: float = 0.01  # the paper's beta of the per-token KL penalty
    group_baseline: bool = False  # REINFORCE++-baseline: subtract each prompt's group mean score first
    group_size: int = 1  # completions per prompt (>= 2 with group_baseline), dividing batch_size
    num_iterations: int = 1  # optimisation passes over each batch
    n_minibatches: int = 1  # minibatches per pass
    clip_range: float = 0.2  # PPO ratio clip epsilon

    def validate(self) -> None:
        super().validate()
        self.check_ints("num_iterations", "n_minibatches", "group_size")
        if self.group_baseline:
            self.check_group_size()
        elif self.batch_size % self.group_size:
            raise ValueError(f"group_size {self.group_size} does not divide batch_size {self.batch_size}")
        self.check_minibatches()
        self.check_open_unit("clip_range")


class REINFORCEPP(Agent):
    """REINFORCE++ (``group_baseline=True``: REINFORCE++-baseline); see the module docstring.

    Example:
        >>> agent = REINFORCEPP("TextGen-v0", batch_size=64).learn(1024)
    """

    Config = REINFORCEPPConfig
    config: REINFORCEPPConfig
    name = "reinforce-pp"

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        dist = self.dist
        # the advantages over the global batch (the ranks' tensors gathered, right-padded), then this shard
        g_mask = dist.gather(batch.mask)
        T = batch.mask.shape[1]
        advantages, kl = reinforce_pp_advantages(
            dist.gather(batch.scores), dist.gather(batch.logprobs), dist.gather(batch.ref_logprobs), g_mask,
            cfg.kl_coef if cfg.kl_in == "reward" else 0.0, cfg.kl_estimator,
            cfg.group_size if cfg.group_baseline else None)
        B = g_mask.shape[0]
        advantages = advantages[dist.shard(B), :T]

        def step(idx: torch.Tensor, any_here: bool) -> tuple[torch.Tensor, dict[str, Any], float]:
            m = batch.mask[idx]
            ev = self.policy.per_token_logps(batch.query_ids[idx], batch.query_mask[idx], batch.tokens[idx], m)
            loss, stats = ppo_policy_loss(ev.logprobs, batch.logprobs[idx], advantages[idx], m, cfg.clip_range)
            stats = {**stats, "policy_loss": loss.detach(), "entropy": masked_mean(ev.entropy.detach(), m)}
            if cfg.kl_in == "loss":
                kl_loss = aggregate_loss(kl_penalty(ev.logprobs, batch.ref_logprobs[idx], cfg.kl_estimator), m)
                stats["kl_loss"] = kl_loss.detach()
                loss = loss + cfg.kl_coef * kl_loss
            return loss, stats, float(m.sum()) if any_here else 0.0  # a mean over tokens

        return self.minibatch_updates(B, cfg.num_iterations, cfg.n_minibatches, step, gathered=False)
