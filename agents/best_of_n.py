"""Best-of-n sampling: a baseline learner that trains nothing (Stiennon et al. 2020; Gao et al. 2022).

For each prompt the policy samples ``n`` completions and the reward model's best one is kept (ties: the
first). The policy never changes; what best-of-n buys is measured against what it costs in KL to the policy:

- analytically, ``KL(pi_bon || pi) = log n - (n - 1) / n`` (Stiennon et al. 2020, appendix G.3): exact when
  the n rewards of a prompt are almost surely distinct, an upper bound otherwise (Beirami et al. 2024,
  "Theoretical guarantees on the best-of-n alignment policy");
- measured (:func:`best_of_n_kl`): since pi_bon(y) / pi(y) depends on y only through its reward r(y), the KL
  over completions equals the KL over reward values, which is estimated per prompt from its n samples
  (plug-in: F the empirical CDF of their rewards, P_bon(r = v) = F(v)^n - F(v-)^n). With n distinct rewards
  it is the discrete counterpart of the analytic value (1.794 for n = 16 against 1.835); ties (a gold scorer,
  a saturated reward model) lower it, as they lower the true KL.

``learn(total_episodes)`` samples ``total_episodes`` completions on training prompts, n per prompt, and logs
one history row per rollout, without an optimizer step. ``evaluate`` reports the best completions' ``reward``
and ``gold_score``, the two KLs (``kl`` measured, ``kl_analytic``), the mean over all n samples
(``reward/policy``, ``gold_score/policy``) and ``kl_policy``, the sampled policy's own k1 sequence KL to its
reference (0 for an untrained policy).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.base import Agent, AgentConfig
from agents.contract import evaluation_seed
from agents.core import kl_penalty, masked_sum
from agents.rollout import RolloutBatch, collect_rollout


def best_of_n_kl_analytic(n: int) -> float:
    """``log n - (n - 1) / n``: the KL of best-of-n to the sampling policy when rewards do not tie."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_kl(scores: torch.Tensor) -> torch.Tensor:
    """Plug-in estimate of KL(pi_bon || pi) per prompt from the rewards ``scores`` (P, n) of n samples each.

    With F the empirical CDF of a prompt's n rewards and F(v-) its left limit, best-of-n picks reward value v
    with probability F(v)^n - F(v-)^n and the policy with F(v) - F(v-); the KL of those two distributions over
    the distinct values is returned, (P,). All n rewards equal: 0. All distinct:
    sum_k ((k/n)^n - ((k-1)/n)^n) log(n ((k/n)^n - ((k-1)/n)^n)).
    """
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must have shape (P, n) with n >= 1, got {tuple(scores.shape)}")
    s = scores.double()
    n = s.shape[1]
    at_most = (s[:, None, :] <= s[:, :, None]).sum(-1).double() / n  # (P, n): F(v_i)
    below = (s[:, None, :] < s[:, :, None]).sum(-1).double() / n  # (P, n): F(v_i-)
    p = at_most - below  # (P, n): P_pi(r = v_i), > 0
    p_bon = at_most**n - below**n  # (P, n): P_bon(r = v_i)
    # each distinct value appears p * n times among the n samples: weight each sample by 1 / (p n)
    terms = torch.where(p_bon > 0, p_bon * torch.log(p_bon / p), torch.zeros_like(p_bon)) / (p * n)
    return terms.sum(1).float()


@dataclasses.dataclass
class BestOfNConfig(AgentConfig):
    """Best-of-n settings: ``n`` samples per prompt; ``batch_size`` is the rollout's slots (any n works: a
    prompt's samples may span rollouts). Nothing is trained, so the optimizer settings are unused."""

    n: int = 16  # completions sampled per prompt; the reward model's best is kept

    def validate(self) -> None:
        super().validate()
        self.check_ints("n")


class BestOfN(Agent):
    """Best-of-n sampling from the policy with the env's reward model; see the module docstring.

    Example:
        >>> BestOfN("TextGen-Sentiment-v0", n=16).evaluate(64)["gold_score"]
    """

    Config = BestOfNConfig
    config: BestOfNConfig
    name = "best-of-n"

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Nothing to optimise: best-of-n is a sampling procedure."""
        return {}

    # ------------------------------------------------------------------------------ sampling
    def sample_best(self, prompts: list[str], seed: int, split: str | None = None) -> dict[str, Any]:
        """``n`` completions for each of ``prompts``, in rollouts of the env's slots; returns the per-prompt
        tensors ``scores`` and ``gold`` (P, n), ``kl_policy`` (P, n) (k1 sequence KL to the reference),
        ``lengths`` (P, n), the chosen index ``best`` (P,) and the completions (P lists of n)."""
        n, B = self.config.n, self.envs.num_envs
        flat = [p for p in prompts for _ in range(n)]
        rows: dict[str, list[torch.Tensor]] = {"scores": [], "gold": [], "kl_policy": [], "lengths": []}
        completions: list[str] = []
        for k, start in enumerate(range(0, len(flat), B)):
            chunk = flat[start:start + B]
            take = len(chunk)
            chunk = chunk + [chunk[0]] * (B - take)  # the last rollout's spare slots are discarded
            s = seed + 1009 * k
            batch = collect_rollout(self.policy, self.envs, seed=s, prompts=chunk, split=split, with_values=False,
                                    with_ref=self.policy.has_reference,
                                    generator=torch.Generator(device=self.device).manual_seed(s))
            kl = masked_sum(kl_penalty(batch.logprobs, batch.ref_logprobs, "k1"), batch.mask, dim=1)
            rows["scores"].append(batch.scores[:take].cpu())
            rows["gold"].append(batch.gold_scores[:take].cpu())
            rows["kl_policy"].append(kl[:take].cpu())
            rows["lengths"].append(batch.mask.sum(1)[:take].cpu())
            completions += batch.completions[:take]
        out: dict[str, Any] = {k: torch.cat(v).view(len(prompts), n) for k, v in rows.items()}
        out["best"] = out["scores"].argmax(dim=1)  # (P,): the first of tied maxima
        out["completions"] = [completions[i * n:(i + 1) * n] for i in range(len(prompts))]
        return out

    def metrics(self, sampled: dict[str, Any]) -> dict[str, float]:
        """The mean metrics of :meth:`sample_best`'s output (see the module docstring)."""
        best = sampled["best"][:, None]

        def chosen(name: str) -> float:
            return float(sampled[name].gather(1, best).double().mean())

        return {
            "reward": chosen("scores"),
            "gold_score": chosen("gold"),
            "kl": float(best_of_n_kl(sampled["scores"]).double().mean()),
            "kl_analytic": best_of_n_kl_analytic(self.config.n),
            "kl_policy": float(sampled["kl_policy"].double().mean()),
            "reward/policy": float(sampled["scores"].double().mean()),
            "gold_score/policy": float(sampled["gold"].double().mean()),
            "completions/mean_length": chosen("lengths"),
        }

    def _prompts(self, count: int, seed: int, split: str | None) -> list[str]:
        rng = np.random.default_rng(seed)
        return [self.envs.sample_prompt(rng, split) for _ in range(count)]

    # ------------------------------------------------------------------------------ the agent interface
    def learn(self, total_episodes: int, progress: bool = True,
              callback: Callable[[Agent, dict[str, float]], Any] | None = None) -> Agent:
        """Sample ``total_episodes`` completions on training prompts (n per prompt, rounded up to whole
        prompts), one history row per rollout of ``batch_size`` completions; no parameter changes."""
        if isinstance(total_episodes, bool) or not isinstance(total_episodes, int) or total_episodes < 1:
            raise ValueError(f"total_episodes must be an integer >= 1, got {total_episodes!r}")
        n = self.config.n
        per_iteration = max(1, self.config.batch_size // n)  # prompts per history row
        target = self.episodes + total_episodes
        while self.episodes < target:
            t0 = time.perf_counter()
            count = min(per_iteration, math.ceil((target - self.episodes) / n))
            seed = self._iteration_seed(self.iteration)
            metrics = self.metrics(self.sample_best(self._prompts(count, seed, None), seed))
            self.episodes += count * n
            self.iteration += 1
            metrics.update({"episodes": float(self.episodes), "iteration": float(self.iteration),
                            "time_s": time.perf_counter() - t0})
            self.history.append(metrics)
            if callback is not None and callback(self, metrics) is False:
                break
        return self

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """Best-of-n on ``num_episodes`` held-out prompts (``n`` samples each), seeded as every agent's
        evaluation (:func:`~agents.contract.evaluation_seed`); the keys of the module docstring."""
        if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
            raise ValueError(f"num_episodes must be an integer >= 1, got {num_episodes!r}")
        seed = evaluation_seed(self.config.seed) if seed is None else seed
        return self.metrics(self.sample_best(self._prompts(num_episodes, seed, split), seed, split))

    def samples(self, n: int = 4, split: str = "test", seed: int | None = None) -> list[tuple[str, str]]:
        """``n`` (prompt, best completion) pairs on held-out prompts."""
        seed = evaluation_seed(self.config.seed) if seed is None else seed
        prompts = self._prompts(n, seed, split)
        sampled = self.sample_best(prompts, seed, split)
        return [(p, sampled["completions"][i][int(sampled["best"][i])]) for i, p in enumerate(prompts)]
