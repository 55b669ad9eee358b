"""Known-answer tests for agents.core: every expected number is derived by hand in the comment beside it."""

from __future__ import annotations

import math

import pytest
import torch

from agents.core import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    group_advantages,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    rloo_advantages,
    token_level_rewards,
    value_loss,
)

LN2 = math.log(2.0)
NAN = float("nan")


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---- masked statistics ---------------------------------------------------------------------------------

# Valid values {1, 2, 3, 4}; the padding holds NaN/100 to prove it never leaks in.
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, 100.0]])
M = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_masked_sum_and_mean():
    close(masked_sum(X, M), 10.0)  # 1 + 2 + 3 + 4
    close(masked_sum(X, M, dim=1), [6.0, 4.0])
    close(masked_mean(X, M), 2.5)  # 10 / 4
    close(masked_mean(X, M, dim=1), [2.0, 4.0])  # 6/3, 4/1
    close(masked_mean(X, M.bool(), dim=0), [2.5, 2.0, 3.0])  # (1+4)/2, 2/1, 3/1; bool mask accepted
    close(masked_mean(X, M.float()), 2.5)  # float mask accepted
    close(masked_mean(X, torch.zeros_like(M)), 0.0)  # empty mask -> 0, not NaN


def test_masked_var():
    # deviations from 2.5: -1.5, -0.5, 0.5, 1.5; squares sum to 2.25 + 0.25 + 0.25 + 2.25 = 5
    close(masked_var(X, M, unbiased=False), 1.25)  # 5 / 4
    close(masked_var(X, M), 5.0 / 3.0)  # 5 / (4 - 1)
    with pytest.raises(ValueError, match="got 1"):
        masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    close(masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]), unbiased=False), 0.0)


def test_masked_whiten():
    # std = sqrt(5/3) = 1.2909944; 1.5 / 1.2909944 = 1.161895, 0.5 / 1.2909944 = 0.387298
    close(masked_whiten(X, M), [[-1.161895, -0.387298, 0.387298], [1.161895, 0.0, 0.0]])
    # shift_mean=False adds the mean 2.5 back on valid tokens; padding stays 0
    close(masked_whiten(X, M, shift_mean=False), [[1.338105, 2.112702, 2.887298], [3.661895, 0.0, 0.0]])


# ---- log-probs and entropy -----------------------------------------------------------------------------

# Position (0,0): logits [0, 0, ln2] -> exp = [1, 1, 2], Z = 4 -> p = [1/4, 1/4, 1/2].
# Position (0,1): logits [5, 5, 5] -> uniform 1/3 (shift invariance).
LOGITS = torch.tensor([[[0.0, 0.0, LN2], [5.0, 5.0, 5.0]]])  # (B=1, T=2, V=3)


def test_logprobs_from_logits():
    tokens = torch.tensor([[2, 0]])
    close(logprobs_from_logits(LOGITS, tokens), [[-LN2, -math.log(3.0)]])  # log 1/2, log 1/3
    close(logprobs_from_logits(LOGITS, torch.tensor([[0, 1]])), [[-2 * LN2, -math.log(3.0)]])  # log 1/4
    lp = logprobs_from_logits(LOGITS.bfloat16(), tokens)
    assert lp.dtype == torch.float32
    close(lp, [[-LN2, -math.log(3.0)]], atol=2e-2)  # ln2 is rounded to bf16 in the input
    with pytest.raises(ValueError, match="do not match"):
        logprobs_from_logits(LOGITS, torch.tensor([[0]]))


def test_logprobs_from_logits_matches_log_softmax_and_backprops():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (3, 4))
    lp = logprobs_from_logits(logits, tokens)
    reference = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(lp, reference.detach())
    lp.sum().backward()
    # d log p_a / d l = onehot(a) - p; summed over the vocabulary it is 1 - 1 = 0
    close(logits.grad.sum(-1), torch.zeros(3, 4))


def test_entropy_from_logits():
    # H(1/4, 1/4, 1/2) = 2 * (1/4) ln 4 + (1/2) ln 2 = ln2 + ln2/2 = 1.5 ln2 = 1.039721;  H(uniform 3) = ln 3
    close(entropy_from_logits(LOGITS), [[1.5 * LN2, math.log(3.0)]])


# ---- KL estimators -------------------------------------------------------------------------------------


def test_kl_penalty_estimators():
    logprobs = torch.tensor([0.0, 0.0, -1.0])
    ref_logprobs = torch.tensor([LN2, -LN2, -1.0])
    # d = logp - ref = [-ln2, ln2, 0]
    close(kl_penalty(logprobs, ref_logprobs, "k1"), [-LN2, LN2, 0.0])
    close(kl_penalty(logprobs, ref_logprobs, "k2"), [0.5 * LN2**2, 0.5 * LN2**2, 0.0])  # 0.240227
    # k3 = exp(ref - logp) - (ref - logp) - 1:  e^{ln2} - ln2 - 1 = 1 - ln2 = 0.306853;
    #      e^{-ln2} + ln2 - 1 = ln2 - 0.5 = 0.193147;  e^0 - 0 - 1 = 0
    close(kl_penalty(logprobs, ref_logprobs, "k3"), [1.0 - LN2, LN2 - 0.5, 0.0])
    close(kl_penalty(logprobs, ref_logprobs), [-LN2, LN2, 0.0])  # default k1
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(logprobs, ref_logprobs, "k4")  # type: ignore[arg-type]


def test_k3_nonnegative_and_unbiased_for_known_categorical():
    # p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]:
    # KL(p||q) = 0.5 ln(2.5) + 0.3 ln 1 + 0.2 ln(0.4) = (0.5 - 0.2) ln 2.5 = 0.3 * 0.916291 = 0.274887
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 20000, replacement=True, generator=gen)
    k3 = kl_penalty(p.log()[samples], q.log()[samples], "k3")
    assert (k3 >= 0).all()
    assert abs(k3.mean().item() - 0.274887) < 0.02
    # and on arbitrary log-prob pairs
    k3_random = kl_penalty(torch.randn(1000, generator=gen) * 3, torch.randn(1000, generator=gen) * 3, "k3")
    assert (k3_random >= 0).all()


# ---- returns and advantages ----------------------------------------------------------------------------


def test_gae_single_sequence():
    # gamma = 0.9, lam = 0.8 (gamma * lam = 0.72); r = [0, 0, 1], V = [0.5, 0.6, 0.7], V after the end = 0
    # t=2: delta = 1 + 0 - 0.7 = 0.3;            A2 = 0.3
    # t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03;     A1 = 0.03 + 0.72*0.3 = 0.246
    # t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04;     A0 = 0.04 + 0.72*0.246 = 0.21712
    # R = A + V = [0.71712, 0.846, 1.0]
    advantages, returns = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=0.9, lam=0.8
    )
    close(advantages, [[0.21712, 0.246, 0.3]])
    close(returns, [[0.71712, 0.846, 1.0]])


def test_gae_masked_batch_does_not_bootstrap_past_last_token():
    # row 0 as above; row 1 has length 2 and garbage (9, 7) in its padding
    # row 1: t=1 (terminal): delta = 2 + 0 - 0.5 = 1.5;       A1 = 1.5
    #        t=0: delta = 0.5 + 0.9*0.5 - 1.0 = -0.05;        A0 = -0.05 + 0.72*1.5 = 1.03
    #        R = [1.03 + 1.0, 1.5 + 0.5, 0] = [2.03, 2.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.21712, 0.246, 0.3], [1.03, 1.5, 0.0]])
    close(returns, [[0.71712, 0.846, 1.0], [2.03, 2.0, 0.0]])


def test_gae_errors():
    with pytest.raises(ValueError, match="shape"):
        gae(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="1.5"):
        gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), gamma=1.5)


def test_token_level_rewards():
    # kl_coef = 0.1, k1 = logp - ref; env rewards in terminal mode: the score on the last valid token
    # row 0: logp = [-1, -1, -1], ref = [-1.5, -1, -0.5] -> kl = [0.5, 0, -0.5]
    #        r = env_r - 0.1*kl = [0, 0, 1.0] - [0.05, 0, -0.05] = [-0.05, 0, 1.05]
    # row 1: logp = [-2, -2, -2], ref = [-1, -3, pad] -> kl = [-1, 1, 0 (padding)]
    #        r = [0, 2.0, pad 100] - [-0.1, 0.1, 0] = [0.1, 1.9, 0]
    env_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 100.0]])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -3.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = token_level_rewards(env_rewards, logprobs, ref_logprobs, mask, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -0.5], [-1.0, 1.0, 0.0]])
    close(rewards, [[-0.05, 0.0, 1.05], [0.1, 1.9, 0.0]])
    # k2 = 0.5 d^2: row 0 kl = [0.125, 0, 0.125], r = [-0.0125, 0, -0.0125 + 1] = [-0.0125, 0, 0.9875]
    rewards_k2, kl_k2 = token_level_rewards(env_rewards, logprobs, ref_logprobs, mask, kl_coef=0.1, kind="k2")
    close(kl_k2[0], [0.125, 0.0, 0.125])
    close(rewards_k2[0], [-0.0125, 0.0, 0.9875])
    # dense mode: every token carries a reward, all kept
    dense, _ = token_level_rewards(torch.tensor([[0.5, -0.25, 1.0]]), logprobs[:1], ref_logprobs[:1],
                                   mask[:1], kl_coef=0.1)
    close(dense, [[0.45, -0.25, 1.05]])
    with pytest.raises(ValueError, match="shape"):
        token_level_rewards(torch.zeros(2), logprobs, ref_logprobs, mask, kl_coef=0.1)


def test_group_advantages_grpo_g2():
    # groups [1, 3], [2, 2]. Group 0: mean 2, unbiased std = sqrt((1 + 1) / (2 - 1)) = sqrt 2 = 1.414214
    #   A = -+1 / (1.414214 + 1e-4) = -+0.707057.   Group 1: all equal -> 0 / (0 + 1e-4) = 0
    adv = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2)
    close(adv, [-0.707057, 0.707057, 0.0, 0.0])


def test_group_advantages_g3_grpo_and_dr_grpo():
    rewards = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 8.0])
    # group 0: mean 1, dev [-1, 0, 1], var = 2/2 = 1, std 1        -> A = dev / 1.0001 = [-0.9999, 0, 0.9999]
    # group 1: mean 6, dev [-1, -1, 2], var = 6/2 = 3, std 1.732051 -> A = dev / 1.732151
    #          1 / 1.732151 = 0.577317, 2 / 1.732151 = 1.154634
    close(group_advantages(rewards, 3, "grpo"), [-0.99990, 0.0, 0.99990, -0.577317, -0.577317, 1.154634])
    close(group_advantages(rewards, 3, "dr_grpo"), [-1.0, 0.0, 1.0, -1.0, -1.0, 2.0])
    # batch_std: the same deviations from the group means, over the std of all six rewards: batch mean 3.5,
    # squared deviations 12.25 + 6.25 + 2.25 + 2.25 + 2.25 + 20.25 = 45.5, var = 45.5 / 5 = 9.1,
    # std 3.016621 -> A = dev / 3.016721; 1 / 3.016721 = 0.331485
    close(group_advantages(rewards, 3, "batch_std"), [-0.331485, 0.0, 0.331485, -0.331485, -0.331485, 0.662970])


def test_group_advantages_errors():
    with pytest.raises(ValueError, match=r"5.*\b2\b"):
        group_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="'ppo'"):
        group_advantages(torch.zeros(4), group_size=2, normalization="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 1"):
        group_advantages(torch.zeros(4), group_size=1)


def test_rloo_advantages():
    # G = 3 on [0, 1, 2 | 5, 5, 8]:
    #   0 - (1+2)/2 = -1.5,  1 - (0+2)/2 = 0,  2 - (0+1)/2 = 1.5
    #   5 - (5+8)/2 = -1.5,  5 - (5+8)/2 = -1.5,  8 - (5+5)/2 = 3
    rewards = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 8.0])
    close(rloo_advantages(rewards, 3), [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0])
    # G = 2 on [1, 3]: 1 - 3 = -2, 3 - 1 = 2
    close(rloo_advantages(torch.tensor([1.0, 3.0]), 2), [-2.0, 2.0])
    with pytest.raises(ValueError, match="got 1"):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError, match=r"6.*4"):
        rloo_advantages(rewards, 4)


# ---- losses --------------------------------------------------------------------------------------------


def test_aggregate_loss_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(aggregate_loss(loss, mask, "token_mean"), 2.5)  # (1+2+3+4) / 4
    close(aggregate_loss(loss, mask, "seq_mean"), 3.0)  # (6/3 + 4/1) / 2
    close(aggregate_loss(loss, mask, "constant"), 10.0 / 6.0)  # 10 / (B=2 * T=3)
    close(aggregate_loss(loss, mask, "constant", max_len=5), 1.0)  # 10 / (2 * 5)
    with pytest.raises(ValueError, match="'sum'"):
        aggregate_loss(loss, mask, "sum")  # type: ignore[arg-type]


def test_ppo_policy_loss_clipping():
    # clip_range 0.2, old_logprobs 0 so ratio = exp(logprobs). Per token (ratio, A) -> max(-A r, -A clip(r)):
    #   a (1.1, +1): max(-1.1, -1.1) = -1.1      inside the region
    #   b (1.5, +1): max(-1.5, -1.2) = -1.2      clipped above
    #   c (0.5, -1): max( 0.5,  0.8) =  0.8      clipped below
    #   d (1.5, -2): max( 3.0,  2.4) =  3.0      outside, but the unclipped (pessimistic) term wins
    #   e (0.5, +1): max(-0.5, -0.8) = -0.5      outside, unclipped term wins
    #   f padding (ratio 20, A = 100): ignored
    # loss = (-1.1 - 1.2 + 0.8 + 3.0 - 0.5) / 5 = 1.0 / 5 = 0.2;  clip_ratio = 2/5 (b, c)
    # ratio_mean = (1.1 + 1.5 + 0.5 + 1.5 + 0.5) / 5 = 1.02
    # approx_kl = mean(r - 1 - ln r): 1.1 -> 0.0046898, 1.5 -> 0.0945349, 0.5 -> 0.1931472
    #   (0.0046898 + 2*0.0945349 + 2*0.1931472) / 5 = 0.5800540 / 5 = 0.1160108
    # old_approx_kl = mean(-ln r): -0.0953102, -0.4054651, +0.6931472
    #   (-0.0953102 - 2*0.4054651 + 2*0.6931472) / 5 = 0.4800540 / 5 = 0.0960108
    ratio = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5, 20.0]])
    logprobs = ratio.log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0, 1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logprobs, torch.zeros(1, 6), advantages, mask, clip_range=0.2)
    close(loss.detach(), 0.2)
    close(stats["clip_ratio"], 0.4)
    close(stats["ratio_mean"], 1.02)
    close(stats["approx_kl"], 0.1160108)
    close(stats["old_approx_kl"], 0.0960108)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    # d loss / d logprob = -A * ratio / 5 where unclipped, 0 where clipped or padded:
    #   a: -1.1/5 = -0.22, b: 0, c: 0, d: 2*1.5/5 = 0.6, e: -0.5/5 = -0.1, f: 0
    loss.backward()
    close(logprobs.grad, [[-0.22, 0.0, 0.0, 0.6, -0.1, 0.0]])


def test_ppo_policy_loss_sequence_advantages_and_modes():
    # one advantage per sequence broadcasts over T. ratio 1 everywhere, A = [2, -1]:
    # per-token loss = [[-2, -2], [1, pad]]; token_mean = (-2 - 2 + 1) / 3 = -1; seq_mean = (-2 + 1) / 2 = -0.5
    logprobs = torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    advantages = torch.tensor([2.0, -1.0])
    loss, stats = ppo_policy_loss(logprobs, logprobs, advantages, mask, clip_range=0.2)
    close(loss, -1.0)
    close(stats["clip_ratio"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(ppo_policy_loss(logprobs, logprobs, advantages, mask, 0.2, mode="seq_mean")[0], -0.5)
    with pytest.raises(ValueError, match="-0.1"):
        ppo_policy_loss(logprobs, logprobs, advantages, mask, clip_range=-0.1)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(logprobs, logprobs, torch.zeros(3), mask, clip_range=0.2)


def test_value_loss_clipped_and_unclipped():
    # clip 0.2; V = [1, 2, 0], old V = [0, 2, 0.5], R = [1.5, 0, 0], padding ignored
    #   t0: (1 - 1.5)^2 = 0.25;  V_clip = 0 + clip(1) = 0.2,       (0.2 - 1.5)^2 = 1.69  -> 1.69
    #   t1: (2 - 0)^2 = 4;       V_clip = 2 + clip(0) = 2,         4                     -> 4
    #   t2: (0 - 0)^2 = 0;       V_clip = 0.5 + clip(-0.5) = 0.3,  0.09                  -> 0.09
    # clipped: 0.5 * (1.69 + 4 + 0.09) / 3 = 0.963333;  unclipped: 0.5 * (0.25 + 4 + 0) / 3 = 0.708333
    values = torch.tensor([[1.0, 2.0, 0.0, 50.0]])
    old_values = torch.tensor([[0.0, 2.0, 0.5, 0.0]])
    returns = torch.tensor([[1.5, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(value_loss(values, old_values, returns, mask, clip_range_vf=0.2), 0.963333)
    close(value_loss(values, old_values, returns, mask), 0.708333)
    with pytest.raises(ValueError, match="-1"):
        value_loss(values, old_values, returns, mask, clip_range_vf=-1.0)


def test_explained_variance():
    # R = [1, 2, 3, 4], V = [1, 2, 3, 5]: residual [0, 0, 0, -1], mean -0.25,
    #   Var = (3 * 0.0625 + 0.5625) / 4 = 0.1875;  Var[R] = 1.25  ->  1 - 0.1875 / 1.25 = 0.85
    close(explained_variance(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])), 0.85)
    # masked: the padded (value 9, return 0) position is ignored
    close(
        explained_variance(
            torch.tensor([[1.0, 2.0, 3.0, 5.0, 9.0]]),
            torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0]]),
            torch.tensor([[1, 1, 1, 1, 0]]),
        ),
        0.85,
    )
    assert explained_variance(torch.zeros(3), torch.ones(3)).isnan()  # Var[R] = 0


# ---- KL controllers ------------------------------------------------------------------------------------


def test_fixed_kl_controller():
    kl_ctl = FixedKLController(0.05)
    kl_ctl.update(current_kl=100.0, n_steps=1000)
    assert kl_ctl.value == 0.05
    with pytest.raises(ValueError, match="-0.1"):
        FixedKLController(-0.1)


def test_adaptive_kl_controller():
    # target 6, horizon 10000
    # KL 9:   e = clip(9/6 - 1 = 0.5)  = 0.2;   0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512 = 0.100512
    kl_ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    kl_ctl.update(current_kl=9.0, n_steps=256)
    assert kl_ctl.value == pytest.approx(0.100512)
    # KL 3:   e = clip(-0.5) = -0.2;            0.1 * (1 - 0.2 * 1000 / 10000) = 0.1 * 0.98 = 0.098
    kl_ctl = AdaptiveKLController(0.1, 6.0, 10000)
    kl_ctl.update(3.0, 1000)
    assert kl_ctl.value == pytest.approx(0.098)
    # KL 6.6: e = 0.1 (inside the clip);       0.1 * (1 + 0.1 * 1000 / 10000) = 0.101
    kl_ctl = AdaptiveKLController(0.1, 6.0, 10000)
    kl_ctl.update(6.6, 1000)
    assert kl_ctl.value == pytest.approx(0.101)
    with pytest.raises(ValueError, match="-0.1"):
        AdaptiveKLController(-0.1, 6.0, 10000)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 10000)
    with pytest.raises(ValueError, match="nan"):
        kl_ctl.update(float("nan"), 10)
