"""KL placement (``kl_in``) and estimators (``kl_estimator``): which combinations give an unbiased gradient of
KL(pi || ref), by exact enumeration over a small categorical, and that every agent minimises the KL when it is
the only objective."""

from __future__ import annotations

import pytest
import torch

from agents import GRPO, PPO, REINFORCE, RLOO
from agents.core import kl_surrogate
from tests.test_agents import MAX_NEW_TOKENS, digit_share, tiny_policy

V = 5
THETA = torch.tensor([0.3, -1.2, 0.8, 0.0, 2.0], dtype=torch.float64)  # the policy's logits
PHI = torch.tensor([1.0, 0.5, -0.7, 0.2, -0.3], dtype=torch.float64)  # the reference's logits


def expected_gradient(kind: str, placement: str) -> torch.Tensor:
    """E_{a ~ pi}[grad_theta surrogate(a)], exactly: sum over the V actions weighted by pi(a)."""
    theta = THETA.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=0)
    ref = torch.log_softmax(PHI, dim=0)
    total = torch.zeros((), dtype=torch.float64)
    for a in range(V):
        s = kl_surrogate(logp[a].view(1, 1), ref[a].view(1, 1), kind, placement)  # type: ignore[arg-type]
        total = total + logp[a].exp().detach() * s.sum()  # the sampling weight pi(a) carries no gradient
    (grad,) = torch.autograd.grad(total, theta)
    return grad


def closed_forms() -> dict[str, torch.Tensor]:
    """Hand-derived gradients for pi = softmax(theta) (grad_theta_j log pi_a = [a = j] - pi_j):

    - grad KL(pi || ref)_j = pi_j (d_j - KL), d = log pi - log ref, KL = sum_a pi_a d_a;
    - grad KL(ref || pi)_j = pi_j - ref_j;
    - a detached per-action reward k in the score function: E[k grad log pi]_j = pi_j (k_j - E_pi[k]).
    """
    pi, ref = torch.softmax(THETA, 0), torch.softmax(PHI, 0)
    d = pi.log() - ref.log()
    kl = (pi * d).sum()
    k2, k3 = 0.5 * d**2, ref / pi - 1 - (ref / pi).log()
    return {"forward": pi * (d - kl), "reverse": pi - ref,
            "reward_k2": pi * (k2 - (pi * k2).sum()), "reward_k3": pi * (k3 - (pi * k3).sum())}


def test_kl_placement_and_estimator_expected_gradients():
    """The point of kl_in/kl_estimator: only reward+k1 and loss+k2 follow grad KL(pi || ref)."""
    forms = closed_forms()
    forward = forms["forward"]
    expected = {
        ("reward", "k1"): forward,  # unbiased: the score-function gradient of the KL itself
        ("reward", "k2"): forms["reward_k2"],
        ("reward", "k3"): forms["reward_k3"],
        ("loss", "k1"): torch.zeros(V, dtype=torch.float64),  # E[grad log pi] = 0: no gradient at all
        ("loss", "k2"): forward,  # unbiased: E[d grad d] = grad KL(pi || ref)
        ("loss", "k3"): forms["reverse"],  # GRPO's term follows the reverse KL(ref || pi)
    }
    unbiased = set()
    for (placement, kind), want in expected.items():
        got = expected_gradient(kind, placement)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=f"{placement}+{kind}")
        if torch.allclose(got, forward, atol=1e-6, rtol=0):
            unbiased.add((placement, kind))
    assert unbiased == {("reward", "k1"), ("loss", "k2")}
    # the biased ones are far off, not just numerically different (here by > 0.05 in some coordinate)
    for key in expected.keys() - unbiased:
        assert (expected[key] - forward).abs().max() > 0.05, key


def test_kl_surrogate_rejects_unknown_placement():
    with pytest.raises(ValueError, match="'both'"):
        kl_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), "k1", "both")  # type: ignore[arg-type]


def test_config_rejects_unknown_kl_in():
    with pytest.raises(ValueError, match="kl_in must be 'reward' or 'loss', got 'sideways'"):
        PPO.Config(kl_in="sideways")  # type: ignore[arg-type]


def test_kl_defaults():
    """Defaults: the unbiased reward+k1 for PPO / REINFORCE / RLOO; DeepSeekMath's loss+k3 for GRPO."""
    for cls in (PPO, REINFORCE, RLOO):
        assert (cls.Config().kl_in, cls.Config().kl_estimator) == ("reward", "k1"), cls.name
    assert (GRPO.Config().kl_in, GRPO.Config().kl_estimator) == ("loss", "k3")


FAST = {PPO: {"n_epochs": 2, "n_minibatches": 2}, RLOO: {"group_size": 4}, GRPO: {"group_size": 4}, REINFORCE: {}}


def late_kl(cls, tok, kl_coef: float, placement: str, kind: str) -> float:
    """Mean rollout KL to the reference over the last 4 of 25 iterations on the digit task."""
    agent = cls("TextGen-Arithmetic-v0", policy=tiny_policy(tok), batch_size=32, kl_coef=kl_coef, kl_in=placement,
                kl_estimator=kind, learning_rate=3e-3,
                env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS}, **FAST[cls])
    agent.learn(32 * 25, progress=False)
    return sum(row["kl"] for row in agent.history[-4:]) / 4


@pytest.mark.parametrize("cls", [REINFORCE, RLOO, GRPO, PPO], ids=lambda c: c.name)
def test_kl_term_holds_every_agent_near_its_reference(tiny_tokenizer, cls):
    """Both unbiased combinations reach the update of every agent: unpenalised, the policy runs far from its
    reference on the digit task (sequence KL about 3-15 after 25 updates, measured); with kl_coef 2 in the
    reward (k1) or in the loss (k2) it stays within about 0.1-0.35 (measured)."""
    free = late_kl(cls, tiny_tokenizer, 0.0, "reward", "k1")
    in_reward = late_kl(cls, tiny_tokenizer, 2.0, "reward", "k1")
    in_loss = late_kl(cls, tiny_tokenizer, 2.0, "loss", "k2")
    assert free > 1.0, free
    assert in_reward < 0.25 * free and in_loss < 0.25 * free, (free, in_reward, in_loss)
