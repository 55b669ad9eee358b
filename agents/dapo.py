"""DAPO: decoupled clip and dynamic sampling policy optimisation (Yu et al. 2025, "DAPO: An Open-Source LLM
Reinforcement Learning System at Scale"), critic-free, on groups of completions as GRPO.

Its four changes to GRPO, each a setting here:

- **clip-higher**: the ratio is clipped to [1 - ``clip_low``, 1 + ``clip_high``] with clip_high > clip_low
  (0.2 and 0.28, the paper's), so unlikely tokens can still grow (against entropy collapse);
- **dynamic sampling** (``dynamic_sampling``): groups whose rewards are all equal (all right or all wrong:
  zero advantage, no gradient) are dropped and more groups are sampled until the batch is full, at most
  ``max_sampling_rounds`` rollouts per update (then the update uses what it has; when nothing was kept it
  uses the last rollout, whose advantages are all 0);
- **token-level loss**: the clipped surrogate is averaged over all tokens of the batch (``"token_mean"``), so
  a long completion weighs by its tokens, not as one sequence;
- **soft overlong punishment** (:func:`soft_overlong_penalty`): a completion longer than
  L_max - L_cache tokens loses up to ``overlong_penalty`` of reward, linearly over the last L_cache =
  ``overlong_buffer`` * L_max tokens before the env's ``max_new_tokens`` (L_max). **Off by default**
  (``overlong_buffer=0``; the paper's share is 0.2). The paper sets it for long reasoning (L_max 20,480,
  L_cache 4,096), where the buffer lies far past the natural answer length. On the short budgets of the
  built-in tasks (4 to 16 tokens) a 20% buffer falls on the answers themselves, and its penalty of up to 1
  outweighs the reward-model differences. Measured in the learning benchmark with 0.2: DAPO shortened
  arithmetic answers to 3.0 tokens (a correct sum often needs 4) and its gold score fell from 0.050 to 0.019
  on every seed; sentiment completions shrank from 15 to 13 tokens.

The advantages are GRPO's (r - group mean) / (group std + eps) of the shaped reward. DAPO drops the KL
term: ``kl_coef`` defaults to 0 (set it to use ``kl_in`` / ``kl_estimator`` as every agent does).

The history's ``reward``, ``gold_score``, ``kl`` and ``completions/mean_length`` are over every sampled
episode (kept or dropped), so the curves measure the policy, not the filter; ``episodes`` counts the trained
batch. ``dynamic_sampling/rounds`` and ``dynamic_sampling/kept_fraction`` (groups kept over groups sampled)
are logged. Dynamic sampling runs in one process (under torchrun set ``dynamic_sampling=False``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from agents.base import Agent, AgentConfig
from agents.core import (
    KLKind,
    aggregate_loss,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
)
from agents.rollout import RolloutBatch, rollout_metrics


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_tokens: int, penalty: float = 1.0
                          ) -> torch.Tensor:
    """DAPO's soft overlong punishment, (B,): 0 for |y| <= L_max - L_cache, then
    -penalty * (|y| - (L_max - L_cache)) / L_cache up to |y| = L_max (and -penalty beyond).

    Example: L_max = 10, L_cache = 4: lengths 5, 6, 7, 10 -> 0, 0, -0.25, -1.
    """
    if max_len < 1 or not 1 <= buffer_tokens <= max_len:
        raise ValueError(f"need max_len >= 1 and 1 <= buffer_tokens <= max_len, got {max_len}, {buffer_tokens}")
    expected = max_len - buffer_tokens
    over = (lengths.float() - expected).clamp(min=0.0, max=float(buffer_tokens))
    return -penalty * over / buffer_tokens


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch of the episodes of ``batches``: prompts left-padded to the longest, completions right-padded
    to the longest (padding outside every mask, ``inserted_mask`` included), timing stats summed."""
    if len(batches) == 1:
        return batches[0]
    P = max(b.query_ids.shape[1] for b in batches)
    T = max(b.tokens.shape[1] for b in batches)

    def left(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)

    def right(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    seconds = sum(b.stats["rollout_s"] for b in batches)
    inserted = [b.inserted_mask for b in batches if b.inserted_mask is not None]
    tokens = sum(b.stats["tokens_per_s"] * b.stats["rollout_s"] for b in batches)
    return RolloutBatch(
        query_ids=torch.cat([left(b.query_ids, pad_id) for b in batches]),
        query_mask=torch.cat([left(b.query_mask, 0) for b in batches]),
        tokens=torch.cat([right(b.tokens, pad_id) for b in batches]),
        **{k: torch.cat([right(getattr(b, k), 0.0) for b in batches])
           for k in ("mask", "logprobs", "ref_logprobs", "values", "rewards")},
        scores=torch.cat([b.scores for b in batches]), gold_scores=torch.cat([b.gold_scores for b in batches]),
        prompts=[p for b in batches for p in b.prompts], completions=[c for b in batches for c in b.completions],
        stats={"rollout_s": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)},
        # a multi-turn env's inserted tokens (every rollout of one env has them, or none has)
        inserted_mask=torch.cat([right(m, 0.0) for m in inserted]) if len(inserted) == len(batches) else None,
    )


def select(batch: RolloutBatch, idx: torch.Tensor) -> RolloutBatch:
    """The episodes ``idx`` (a 1-D index tensor) of ``batch``."""
    picked: dict[str, Any] = {}
    cpu = idx.cpu().tolist()
    for k, v in batch._asdict().items():
        if isinstance(v, torch.Tensor):
            picked[k] = v[idx.to(v.device)]
        elif isinstance(v, list):
            picked[k] = [v[i] for i in cpu]
    return batch._replace(**picked)


@dataclasses.dataclass
class DAPOConfig(AgentConfig):
    """DAPO hyperparameters (the paper's names: epsilon_low / epsilon_high are ``clip_low`` / ``clip_high``)."""

    learning_rate: float = 1e-4  # AdamW learning rate (GRPO's)
    kl_coef: float = 0.0  # DAPO removes the KL term
    kl_estimator: KLKind = "k1"  # estimator of the per-token KL to the reference, when kl_coef > 0
    group_size: int = 8  # completions per prompt (G), dividing batch_size
    num_iterations: int = 1  # optimisation passes over each batch
    n_minibatches: int = 1  # minibatches per pass
    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low
    clip_high: float = 0.28  # ratio clipped above at 1 + clip_high (clip-higher)
    dynamic_sampling: bool = True  # drop groups of equal rewards and sample more to refill the batch
    max_sampling_rounds: int = 4  # rollouts at most per update when refilling
    overlong_buffer: float = 0.0  # L_cache as a share of max_new_tokens (0: no overlong penalty; see the docstring)
    overlong_penalty: float = 1.0  # reward lost at max_new_tokens

    def validate(self) -> None:
        super().validate()
        self.check_ints("num_iterations", "n_minibatches", "max_sampling_rounds")
        self.check_group_size()
        self.check_minibatches()
        self.check_open_unit("clip_low", "clip_high")
        if not 0 <= self.overlong_buffer <= 1:
            raise ValueError(f"overlong_buffer must be in [0, 1], got {self.overlong_buffer!r}")
        if not self.overlong_penalty >= 0:
            raise ValueError(f"overlong_penalty must be >= 0, got {self.overlong_penalty!r}")


class DAPO(Agent):
    """DAPO; see the module docstring.

    Example:
        >>> agent = DAPO("TextGen-Arithmetic-v0", batch_size=64, group_size=8).learn(1024)
    """

    Config = DAPOConfig
    config: DAPOConfig
    name = "dapo"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.dynamic_sampling and self.dist.active:
            raise ValueError("DAPO's dynamic sampling runs in one process; under torchrun pass dynamic_sampling=False")
        self._sampled_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------------------ rewards
    def shaped_scores(self, batch: RolloutBatch) -> torch.Tensor:
        """The reward the advantages use, (b,): the env's score, the soft overlong penalty, and (with
        ``kl_in="reward"`` and ``kl_coef`` > 0) minus ``kl_coef`` times the sequence KL estimate."""
        cfg = self.config
        scores = batch.scores
        L = int(self.envs.max_new_tokens)
        buffer = round(cfg.overlong_buffer * L)
        if buffer >= 1 and cfg.overlong_penalty > 0:
            scores = scores + soft_overlong_penalty(batch.mask.sum(1), L, buffer, cfg.overlong_penalty)
        if cfg.kl_in == "reward" and cfg.kl_coef > 0:
            kl = masked_sum(kl_penalty(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator), batch.mask, dim=1)
            scores = scores - cfg.kl_coef * kl
        return scores

    # ------------------------------------------------------------------------------ dynamic sampling
    def collect(self, iteration: int | None = None, split: str | None = None) -> RolloutBatch:
        """A batch of groups with unequal rewards (dynamic sampling), or one rollout when it is off."""
        cfg = self.config
        if not cfg.dynamic_sampling:
            return super().collect(iteration, split)
        it = self.iteration if iteration is None else iteration
        G, B = cfg.group_size, cfg.batch_size
        kept: list[RolloutBatch] = []
        sampled: list[RolloutBatch] = []
        n_kept = groups_kept = rounds = 0
        while n_kept < B and rounds < cfg.max_sampling_rounds:
            # a seed of its own per (iteration, round)
            batch = super().collect(it * cfg.max_sampling_rounds + rounds, split)
            rounds += 1
            sampled.append(batch)
            r = self.shaped_scores(batch).view(-1, G)  # (B/G, G)
            varied = torch.nonzero(r.max(1).values - r.min(1).values > 0).flatten()  # groups with a signal
            groups_kept += int(varied.numel())
            if varied.numel():
                idx = (varied[:, None] * G + torch.arange(G, device=varied.device)).flatten()[:B - n_kept]
                kept.append(select(batch, idx))
                n_kept += int(idx.numel())
        everything = concat_batches(sampled, self.envs.pad_id)
        metrics = rollout_metrics(everything)
        metrics.pop("tokens_per_s")  # the rollout's own rate (of the kept episodes) stays
        metrics.update({"dynamic_sampling/rounds": float(rounds),
                        "dynamic_sampling/kept_fraction": groups_kept / (rounds * B // G)})
        self._sampled_metrics = metrics
        return concat_batches(kept, self.envs.pad_id) if kept else sampled[-1]

    # ------------------------------------------------------------------------------ the update
    def loss(self, batch: RolloutBatch, advantages: torch.Tensor, idx: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The DAPO loss on the episodes ``idx`` of ``batch``: the token-mean clip-higher surrogate (plus the
        token-mean KL estimate with ``kl_in="loss"``)."""
        cfg = self.config
        mask = batch.mask[idx]
        ev = self.policy.per_token_logps(batch.query_ids[idx], batch.query_mask[idx], batch.tokens[idx], mask)
        pg_loss, stats = ppo_policy_loss(ev.logprobs, batch.logprobs[idx], advantages[idx], mask, cfg.clip_low,
                                         mode="token_mean", clip_range_high=cfg.clip_high)
        stats = {**stats, "policy_loss": pg_loss.detach(), "entropy": masked_mean(ev.entropy.detach(), mask)}
        if cfg.kl_in == "loss" and cfg.kl_coef > 0:
            kl_loss = aggregate_loss(kl_penalty(ev.logprobs, batch.ref_logprobs[idx], cfg.kl_estimator), mask)
            stats["kl_loss"] = kl_loss.detach()
            return pg_loss + cfg.kl_coef * kl_loss, stats
        return pg_loss, stats

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        dist = self.dist
        scores = dist.gather(self.shaped_scores(batch))
        B = scores.shape[0]
        advantages = group_advantages(scores, cfg.group_size, "grpo")[dist.shard(B)]  # (b,)

        def step(idx: torch.Tensor, any_here: bool) -> tuple[torch.Tensor, dict[str, Any], float]:
            loss, stats = self.loss(batch, advantages, idx)
            return loss, stats, float(batch.mask[idx].sum()) if any_here else 0.0  # a mean over tokens

        out = self.minibatch_updates(B, cfg.num_iterations, cfg.n_minibatches, step, gathered=False)
        out.update(self._sampled_metrics)  # the rollout metrics of every sampled episode (see the docstring)
        self._sampled_metrics = {}
        return out
