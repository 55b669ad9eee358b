"""Pure functions shared by the policy-gradient agents: masked statistics, log-probs, KL estimators, the
KL-penalised per-token reward, advantage estimators, loss aggregation, the PPO losses, explained variance and
the KL-coefficient controllers.

Who uses what: PPO (``token_level_rewards``, ``gae``, ``masked_whiten``, ``ppo_policy_loss``,
``value_loss``, ``explained_variance``, the KL controllers), GRPO (``group_advantages``, ``aggregate_loss``,
``ppo_policy_loss``), REINFORCE and RLOO (``kl_penalty``, ``rloo_advantages``), the policy
(``logprobs_from_logits``, ``entropy_from_logits``).

Conventions (every function here):

- Sequences are right-padded tensors of shape ``(B, T)``: B batch, T completion tokens, V vocabulary,
  G group size.
- ``mask`` is 1 (or ``True``) on completion tokens and 0 on padding; float or bool is accepted and is read
  as a boolean (nonzero = valid). Padded positions may hold anything, even NaN: they are selected out with
  ``torch.where``, never multiplied by 0.
- A sequence's last valid token is terminal (the env sets ``terminated=True``), so nothing bootstraps past
  it: the value after the last valid token is 0.
- Outputs of shape ``(B, T)`` are 0 outside the mask.

Everything is a plain function of tensors (no state), except the two KL controllers at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "aggregate_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_advantages",
    "kl_penalty",
    "kl_surrogate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "rloo_advantages",
    "token_level_rewards",
    "value_loss",
]

KLKind = Literal["k1", "k2", "k3"]
KLPlacement = Literal["reward", "loss"]
GroupNormalization = Literal["grpo", "dr_grpo", "batch_std"]
LossMode = Literal["token_mean", "seq_mean", "constant"]
Dim = int | tuple[int, ...] | None


# --------------------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------------------


def _valid(mask: Tensor, x: Tensor) -> Tensor:
    """The mask as a bool tensor broadcast to ``x``'s shape (raises if the shapes cannot broadcast)."""
    return mask.bool().expand_as(x)


def masked_sum(x: Tensor, mask: Tensor, dim: Dim = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is nonzero: sum_i x_i [m_i].

    Example:
        >>> masked_sum(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1, 1, 0]))
        tensor(3.)
    """
    return torch.where(_valid(mask, x), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Dim = None) -> Tensor:
    """Mean of ``x`` over valid positions: sum_i x_i [m_i] / sum_i [m_i] (over ``dim``, or everything).

    TRL's ``masked_mean``, except that an empty mask gives 0 instead of NaN (the count is clamped to 1), so
    a batch with no valid token cannot poison a loss.

    Example:
        >>> masked_mean(torch.tensor([[1.0, 3.0], [5.0, 9.0]]), torch.tensor([[1, 1], [1, 0]]), dim=1)
        tensor([2., 5.])
    """
    count = _valid(mask, x).sum(dim=dim).clamp(min=1)
    return masked_sum(x, mask, dim=dim) / count


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid positions (a 0-dim tensor), TRL semantics.

    var = n / (n - 1) * mean_m[(x - mean_m[x])^2] with n = number of valid positions (Bessel's correction
    when ``unbiased``, as ``torch.var``). Raises ``ValueError`` when ``unbiased`` and n < 2.
    """
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = int(_valid(mask, x).sum().item())
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 valid positions, got {n}")
        variance = variance * (n / (n - 1))
    return variance


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` with the statistics of its valid positions (TRL ``masked_whiten``).

    x_hat = (x - mean_m[x]) / sqrt(var_m[x] + eps), var unbiased; with ``shift_mean=False`` the mean is
    added back, (x - mean) / std + mean, so only the scale changes. Positions outside the mask are 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(_valid(mask, x), whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


# --------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# --------------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-token log-probabilities log pi(a_t | s_t) = logits[a_t] - logsumexp(logits), shape (B, T).

    ``logits[:, t]`` must be the distribution ``tokens[:, t]`` was drawn from (for a causal LM over a full
    sequence, pass ``logits[:, :-1]`` and ``input_ids[:, 1:]``). Computed in float32 whatever the input
    dtype (bf16 log-softmax is too coarse for PPO ratios), one batch row at a time, so at most one (T, V)
    temporary exists at once instead of a full (B, T, V) log-softmax (TRL ``selective_log_softmax``).
    For float32 logits autograd saves nothing of size (B, T, V) beyond the logits themselves; for lower
    precision it saves one float32 copy, row by row.

    Example:
        >>> logprobs_from_logits(torch.zeros(1, 1, 4), torch.tensor([[2]]))
        tensor([[-1.3863]])
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    selected = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float()  # (B, T)
    logsumexp = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (B, T)
    return selected - logsumexp


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-token entropy of the categorical given by ``logits`` (B, T, V), shape (B, T), float32.

    H = -sum_a p_a log p_a = logsumexp(l) - sum_a p_a l_a, one batch row at a time (one (T, V) temporary).
    """
    rows = []
    for row in logits:
        row = row.float()  # (T, V)
        p = torch.softmax(row, dim=-1)  # (T, V)
        rows.append(torch.logsumexp(row, dim=-1) - (p * row).sum(dim=-1))  # (T,)
    return torch.stack(rows)  # (B, T)


# --------------------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------------------


def _k1(logratio: Tensor) -> Tensor:
    return logratio


def _k2(logratio: Tensor) -> Tensor:
    return 0.5 * logratio**2


def _k3(logratio: Tensor) -> Tensor:
    # exp(-d) - (-d) - 1 with expm1 for precision when d is small
    return torch.expm1(-logratio) + logratio


_KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman, "Approximating KL
    Divergence", 2020). With d = log pi(a) - log ref(a):

    - k1 = d                              (unbiased, high variance, can be negative)
    - k2 = d^2 / 2                        (biased, low variance, >= 0)
    - k3 = exp(-d) - (-d) - 1 = r - 1 - log r,  r = ref(a)/pi(a)   (unbiased, low variance, >= 0)

    Same shape as the inputs; mask it yourself (or use :func:`token_level_rewards`).
    """
    try:
        estimator = _KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator kind {kind!r}; expected one of {sorted(_KL_ESTIMATORS)}"
        ) from None
    return estimator(logprobs - ref_logprobs)


KL_PLACEMENTS = ("reward", "loss")


def kl_surrogate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1",
                 placement: KLPlacement = "reward") -> Tensor:
    """Per-token surrogate whose gradient is the gradient estimate of KL(pi || ref) that an agent following
    ``placement`` uses, from a token sampled from pi (``logprobs`` carries the gradient).

    - ``"reward"``: the estimate k (detached) is subtracted from the reward, so it reaches the policy through
      the score function: surrogate = k.detach() * log pi(a), gradient k * grad log pi(a).
    - ``"loss"``: the estimate is added to the loss and differentiated through log pi(a): surrogate = k, with
      the sampling distribution held fixed (GRPO's k3 term, DeepSeekMath; TRL ``GRPOTrainer``).

    Expected gradients on one categorical, E_{a ~ pi}[grad surrogate(a)] (``tests/test_kl_placement.py``
    checks them exactly, by enumeration), against grad KL(pi || ref):

    ============  ====================================  ==================================================
    estimator     ``"reward"``                          ``"loss"``
    ============  ====================================  ==================================================
    k1            grad KL(pi || ref): **unbiased**      E[grad log pi] = 0: no gradient at all
    k2            biased (grad of E[d^2 / 2] misses     E[d grad log pi] = grad KL(pi || ref): **unbiased**
                  the pathwise term)
    k3            biased                                grad KL(ref || pi): the *reverse* KL's gradient
    ============  ====================================  ==================================================

    (d = log pi(a) - log ref(a).) Over sequences, k1 in the reward stays unbiased when the KL is part of the
    return every earlier token is credited with (REINFORCE's sequence return, PPO's per-token reward through
    GAE with gamma = lam = 1); k2 in the loss is unbiased only for each visited state's next-token KL and
    ignores how a token changes the KL of the states after it (Tang and Munos 2025, "On a few pitfalls in KL
    divergence gradient estimation for RL").
    """
    if placement not in KL_PLACEMENTS:
        raise ValueError(f"unknown KL placement {placement!r}; expected one of {list(KL_PLACEMENTS)}")
    kl = kl_penalty(logprobs, ref_logprobs, kind)
    if placement == "reward":
        return kl.detach() * logprobs
    return kl


# --------------------------------------------------------------------------------------------------------
# Returns and advantages
# --------------------------------------------------------------------------------------------------------


def _check_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected tensors of one shape (B, T), got {shapes}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation").

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   R_t = A_t + V_t,

    with V = 0 after a sequence's last valid token (terminal: no bootstrap) and A = R = 0 outside the mask.
    A 0 inside a row's mask acts as an episode end. Pass detached tensors; returns ``(advantages, returns)``,
    each (B, T).
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    valid = mask.bool()  # (B, T)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(valid, values, zero)  # V = 0 on padding, hence after the last valid token
    rewards = torch.where(valid, rewards, zero)
    B, T = values.shape
    next_values = torch.cat([values[:, 1:], values.new_zeros(B, 1)], dim=1)  # (B, T): V_{t+1}
    deltas = rewards + gamma * next_values - values  # (B, T)
    advantage = values.new_zeros(B)  # (B,): A_{t+1}
    advantages_reversed = []
    for t in reversed(range(T)):
        advantage = torch.where(valid[:, t], deltas[:, t] + gamma * lam * advantage, zero)
        advantages_reversed.append(advantage)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    returns = torch.where(valid, advantages + values, zero)
    return advantages, returns


def gae_over_mask(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """:func:`gae` along each row's masked tokens only: the positions outside the mask *inside* a row are
    skipped, as if they were not there, instead of ending the episode.

    This is GAE over the agent's steps of a multi-turn episode, whose tokens sit between tokens the env
    inserted (another speaker's turns, masked out): the state after an agent token is the state before its
    next agent token, so ``V_{t+1}`` is that token's value. With a mask that is contiguous from the start of
    each row (single-turn episodes) it equals :func:`gae`. Returns ``(advantages, returns)``, (B, T), 0
    outside the mask.
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    valid = mask.bool()  # (B, T)
    # each row's masked positions first, in order (a stable sort on "not masked")
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
    adv_p, ret_p = gae(rewards.gather(1, order), values.gather(1, order), mask.gather(1, order),
                       gamma, lam)  # (B, T) each, on the packed layout
    advantages = torch.zeros_like(adv_p).scatter(1, order, adv_p)
    returns = torch.zeros_like(ret_p).scatter(1, order, ret_p)
    return advantages, returns


def token_level_rewards(
    rewards: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float | Tensor,
    kind: KLKind = "k1",
) -> tuple[Tensor, Tensor]:
    """The RLHF-PPO per-token reward (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences"; TRL ``PPOTrainer``):

    r_t = env_r_t - kl_coef * kl_t,   kl_t = kl_penalty(logprobs, ref_logprobs, kind),

    where ``rewards`` holds the env's per-token rewards ``env_r`` (terminal mode: the reward-model score on
    the last valid token, 0 before; dense mode: the score differences). All inputs are (B, T). Returns
    ``(rewards, kl)``, both (B, T) and 0 outside the mask.
    """
    _check_shapes(rewards=rewards, logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    valid = mask.bool()  # (B, T)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    kl = torch.where(valid, kl_penalty(logprobs, ref_logprobs, kind), zero)  # (B, T)
    return torch.where(valid, rewards, zero) - kl_coef * kl, kl


def _group_view(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) -> (B / G, G), consecutive groups of G."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {rewards.shape[0]} is not divisible by group_size {group_size}"
            " (rewards must be laid out as consecutive groups of G)"
        )
    return rewards.view(-1, group_size)  # (B/G, G)


def _grpo_advantages(r: Tensor, eps: float) -> Tensor:
    return (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)


def _dr_grpo_advantages(r: Tensor, eps: float) -> Tensor:
    return r - r.mean(dim=1, keepdim=True)


def _batch_std_advantages(r: Tensor, eps: float) -> Tensor:
    return (r - r.mean(dim=1, keepdim=True)) / (r.std() + eps)


_GROUP_NORMALIZATIONS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "grpo": _grpo_advantages,
    "dr_grpo": _dr_grpo_advantages,
    "batch_std": _batch_std_advantages,
}


def group_advantages(
    rewards: Tensor, group_size: int, normalization: GroupNormalization = "grpo", eps: float = 1e-4
) -> Tensor:
    """Group-relative advantages for G completions of each prompt, laid out consecutively (B = n * G).

    - ``"grpo"`` (Shao et al. 2024, "DeepSeekMath", as TRL ``GRPOTrainer``):
      A_i = (r_i - mean_g r) / (std_g r + eps), std unbiased (``torch.std``'s default, divides by G - 1);
      needs G >= 2. A group of equal rewards gets A = 0.
    - ``"dr_grpo"`` (Liu et al. 2025, "Understanding R1-Zero-Like Training", Dr. GRPO): A_i = r_i - mean_g r,
      no std division (removes the difficulty bias).
    - ``"batch_std"`` (TRL's ``scale_rewards="batch"``; the group mean and batch std of Liu et al. 2025,
      "Tricks or Traps? A Deep Dive into RL for LLM Reasoning"): A_i = (r_i - mean_g r) / (std_batch r + eps),
      the unbiased std of all B rewards. A group whose rewards differ only by a learned reward model's noise
      keeps small advantages instead of being scaled up to unit std as ``"grpo"`` does.

    Returns (B,).
    """
    try:
        normalize = _GROUP_NORMALIZATIONS[normalization]
    except KeyError:
        raise ValueError(
            f"unknown normalization {normalization!r}; expected one of {sorted(_GROUP_NORMALIZATIONS)}"
        ) from None
    if normalization == "grpo" and group_size < 2:
        raise ValueError(f"grpo normalization needs group_size >= 2 (unbiased std), got {group_size}")
    return normalize(_group_view(rewards, group_size), eps).reshape(-1)  # (B,)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE Leave-One-Out advantages (Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE-Style Optimization for Learning from Human Feedback in LLMs"):

    A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean_g r),

    over consecutive groups of G >= 2. Returns (B,).
    """
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2 (a leave-one-out baseline), got {group_size}")
    r = _group_view(rewards, group_size)  # (B/G, G)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # (B/G, G)
    return (r - baseline).reshape(-1)  # (B,)


# --------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------


def _token_mean(loss: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    return masked_mean(loss, mask)


def _seq_mean(loss: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    return masked_mean(loss, mask, dim=1).mean()


def _constant(loss: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    B, T = loss.shape
    return masked_sum(loss, mask) / (B * (T if max_len is None else max_len))


_LOSS_AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, int | None], Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean": _seq_mean,
    "constant": _constant,
}


def aggregate_loss(
    per_token_loss: Tensor, mask: Tensor, mode: LossMode = "token_mean", max_len: int | None = None
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    - ``"token_mean"``: sum_{b,t} l m / sum_{b,t} m, every token weighs the same (DAPO, Yu et al. 2025; TRL
      default).
    - ``"seq_mean"``: 1/B sum_b (sum_t l m / sum_t m), the mean of per-sequence means (original GRPO).
    - ``"constant"``: sum_{b,t} l m / (B * max_len), ``max_len`` defaulting to T (Dr. GRPO, Liu et al. 2025).
    """
    try:
        aggregate = _LOSS_AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(
            f"unknown loss mode {mode!r}; expected one of {sorted(_LOSS_AGGREGATIONS)}"
        ) from None
    if per_token_loss.dim() != 2:
        raise ValueError(f"per_token_loss must have shape (B, T), got {tuple(per_token_loss.shape)}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return aggregate(per_token_loss, mask, max_len)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    mode: LossMode = "token_mean",
    max_len: int | None = None,
    clip_range_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"):

    ratio = exp(logprobs - old_logprobs),
    l_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps_high)),   loss = aggregate_loss(l, mask, mode),

    with eps = ``clip_range`` and eps_high = ``clip_range_high`` (default: eps, the symmetric clip; DAPO's
    "clip-higher", Yu et al. 2025, takes eps_high > eps).

    ``advantages`` is (B, T), or (B,) for one advantage per sequence (GRPO, RLOO, REINFORCE). Returns
    ``(loss, stats)``; ``stats`` holds detached 0-dim tensors over valid tokens:

    - ``clip_ratio``: fraction of tokens where the clipped term is the larger one (gradient is zero there);
    - ``approx_kl``: mean of k3 = (ratio - 1) - log ratio, an unbiased estimate of KL(old || new) from the
      old policy's samples (Schulman's estimator, as cleanrl; TRL's PPO logs 0.5 * logratio^2 instead);
    - ``old_approx_kl``: mean of k1 = -log ratio, the same KL's higher-variance estimate (cleanrl logs both);
    - ``ratio_mean``: mean of the ratio.
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    high = clip_range if clip_range_high is None else clip_range_high
    if high <= 0:
        raise ValueError(f"clip_range_high must be > 0, got {clip_range_high}")
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1): broadcasts over T
    if advantages.shape[0] != logprobs.shape[0] or advantages.shape[1] not in (1, logprobs.shape[1]):
        raise ValueError(
            f"advantages must have shape (B,) or (B, T) = {tuple(logprobs.shape)}, got {tuple(advantages.shape)}"
        )
    logratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(logratio)  # (B, T)
    pg_losses = -advantages * ratio  # (B, T)
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)  # (B, T)
    per_token_loss = torch.maximum(pg_losses, pg_losses_clipped)  # (B, T)
    loss = aggregate_loss(per_token_loss, mask, mode, max_len)
    with torch.no_grad():
        stats = {
            "clip_ratio": masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), mask),
            "approx_kl": masked_mean((ratio - 1.0) - logratio, mask),
            "old_approx_kl": masked_mean(-logratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_vf: float | None = None,
) -> Tensor:
    """Value-function loss, optionally clipped around the rollout values (cleanrl / TRL PPO):

    V_clip = old_V + clip(V - old_V, -eps_vf, eps_vf),
    loss = 0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2))    (just (V - R)^2 when ``clip_range_vf`` is None).
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    vf_losses = (values - returns) ** 2  # (B, T)
    if clip_range_vf is not None:
        if clip_range_vf <= 0:
            raise ValueError(f"clip_range_vf must be > 0 or None, got {clip_range_vf}")
        values_clipped = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
        vf_losses = torch.maximum(vf_losses, (values_clipped - returns) ** 2)  # (B, T)
    return 0.5 * masked_mean(vf_losses, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Explained variance 1 - Var[R - V] / Var[R] over valid positions (stable-baselines3), a 0-dim tensor.

    1 is a perfect value function, 0 no better than a constant, < 0 worse; NaN when Var[R] = 0.
    """
    if mask is None:
        mask = torch.ones_like(returns, dtype=torch.bool)
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    return torch.where(
        var_returns == 0, torch.full_like(var_returns, math.nan), 1.0 - var_residual / var_returns
    )


# --------------------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences")
# --------------------------------------------------------------------------------------------------------


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


class FixedKLController:
    """A constant KL coefficient beta; ``update`` does nothing.

    Example:
        >>> FixedKLController(0.05).value
        0.05
    """

    def __init__(self, coef: float) -> None:
        _check_finite("coef", coef)
        if coef < 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient (same signature as :meth:`AdaptiveKLController.update`)."""


class AdaptiveKLController:
    """Adaptive KL coefficient that steers the measured KL towards ``target`` (Ziegler et al. 2019, sec 2.2):

    e = clip(KL / target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon).

    Example:
        >>> kl_ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
        >>> kl_ctl.update(current_kl=9.0, n_steps=256)  # too far from ref: raise beta
        >>> round(kl_ctl.value, 6)
        0.100512
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        for name, value in (("init_coef", init_coef), ("target", target), ("horizon", horizon)):
            _check_finite(name, value)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Multiply beta by 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon."""
        _check_finite("current_kl", current_kl)
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


KLController = FixedKLController | AdaptiveKLController
"""Either controller: both have ``.value`` and ``.update(current_kl, n_steps)``."""
