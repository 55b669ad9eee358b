"""GSPO: group sequence policy optimisation (Zheng et al. 2025, "Group Sequence Policy Optimization"),
critic-free, on groups of completions as GRPO.

GRPO weighs each token by its own importance ratio; GSPO uses one ratio per response, the length-normalised
sequence likelihood ratio

    s_i = (pi(y_i | x) / pi_old(y_i | x)) ^ (1 / |y_i|) = exp(mean_t (log pi(y_i,t) - log pi_old(y_i,t))),

clipped once per response:

    loss = -1/B sum_i min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i),

with GRPO's group advantages A_i = (r_i - mean_g r) / (std_g r + eps). The paper's clip range is tiny
(3e-4 / 4e-4: a sequence ratio moves far less than a token's) and it updates on minibatches of each batch
(so the ratio is not 1 after the first); both are the defaults. No KL term (``kl_coef`` 0) as in the
paper; set it to use ``kl_in`` / ``kl_estimator`` as every agent does (a loss-side KL is averaged per
sequence, as the surrogate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from agents.base import Agent, AgentConfig
from agents.core import KLKind, group_advantages, kl_penalty, masked_mean, masked_sum
from agents.rollout import RolloutBatch


def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_low: float, clip_high: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's sequence-level clipped surrogate (see the module docstring): ``logprobs``, ``old_logprobs`` and
    ``mask`` (B, T), ``advantages`` (B,). Returns ``(loss, stats)``: ``clip_ratio`` (share of responses
    where the clipped term is the larger: no gradient), ``ratio_mean`` (mean s_i) and ``approx_kl`` (mean of
    (s - 1) - log s over responses)."""
    if advantages.dim() != 1 or advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages must have shape (B,) = ({logprobs.shape[0]},), got {tuple(advantages.shape)}")
    if not (clip_low > 0 and clip_high > 0):
        raise ValueError(f"clip_low and clip_high must be > 0, got {clip_low}, {clip_high}")
    log_s = masked_mean(logprobs - old_logprobs, mask, dim=1)  # (B,): mean per-token log-ratio
    s = torch.exp(log_s)  # (B,)
    unclipped = -advantages * s
    clipped = -advantages * torch.clamp(s, 1.0 - clip_low, 1.0 + clip_high)
    per_seq = torch.maximum(unclipped, clipped)  # (B,)
    with torch.no_grad():
        stats = {"clip_ratio": (clipped > unclipped).float().mean(), "ratio_mean": s.mean(),
                 "approx_kl": ((s - 1.0) - log_s).mean()}
    return per_seq.mean(), stats


@dataclasses.dataclass
class GSPOConfig(AgentConfig):
    """GSPO hyperparameters (the paper's clip range and minibatching)."""

    learning_rate: float = 1e-4  # AdamW learning rate (GRPO's)
    kl_coef: float = 0.0  # GSPO has no KL term
    kl_estimator: KLKind = "k1"  # estimator of the per-token KL to the reference, when kl_coef > 0
    group_size: int = 8  # completions per prompt (G), dividing batch_size
    num_iterations: int = 1  # optimisation passes over each batch
    n_minibatches: int = 4  # minibatches per pass (the paper splits each batch in 4)
    clip_low: float = 3e-4  # sequence ratio clipped below at 1 - clip_low
    clip_high: float = 4e-4  # and above at 1 + clip_high

    def validate(self) -> None:
        super().validate()
        self.check_ints("num_iterations", "n_minibatches")
        self.check_group_size()
        self.check_minibatches()
        self.check_open_unit("clip_low", "clip_high")


class GSPO(Agent):
    """GSPO; see the module docstring.

    Example:
        >>> agent = GSPO("TextGen-Arithmetic-v0", batch_size=64, group_size=8).learn(1024)
    """

    Config = GSPOConfig
    config: GSPOConfig
    name = "gspo"

    def sequence_scores(self, batch: RolloutBatch) -> torch.Tensor:
        """The scores behind the advantages, (b,): minus ``kl_coef`` times the sequence KL estimate when
        ``kl_in="reward"`` and ``kl_coef`` > 0."""
        cfg = self.config
        if cfg.kl_in == "reward" and cfg.kl_coef > 0:
            kl = masked_sum(kl_penalty(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator), batch.mask, dim=1)
            return batch.scores - cfg.kl_coef * kl
        return batch.scores

    def loss(self, batch: RolloutBatch, advantages: torch.Tensor, idx: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The GSPO loss on the episodes ``idx`` of ``batch`` (a mean over responses)."""
        cfg = self.config
        mask = batch.mask[idx]
        ev = self.policy.per_token_logps(batch.query_ids[idx], batch.query_mask[idx], batch.tokens[idx], mask)
        loss, stats = gspo_loss(ev.logprobs, batch.logprobs[idx], advantages[idx], mask, cfg.clip_low,
                                cfg.clip_high)
        stats = {**stats, "policy_loss": loss.detach(), "entropy": masked_mean(ev.entropy.detach(), mask)}
        if cfg.kl_in == "loss" and cfg.kl_coef > 0:
            kl_loss = masked_mean(kl_penalty(ev.logprobs, batch.ref_logprobs[idx], cfg.kl_estimator), mask,
                                  dim=1).mean()
            stats["kl_loss"] = kl_loss.detach()
            loss = loss + cfg.kl_coef * kl_loss
        return loss, stats

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        dist = self.dist
        scores = dist.gather(self.sequence_scores(batch))
        B = scores.shape[0]
        advantages = group_advantages(scores, cfg.group_size, "grpo")[dist.shard(B)]  # (b,)

        def step(idx: torch.Tensor, any_here: bool) -> tuple[torch.Tensor, dict[str, Any], float]:
            loss, stats = self.loss(batch, advantages, idx)
            return loss, stats, float(idx.numel()) if any_here else 0.0  # a mean over responses

        return self.minibatch_updates(B, cfg.num_iterations, cfg.n_minibatches, step, gathered=False)

    def extra_state(self) -> dict[str, Any]:
        return {}
