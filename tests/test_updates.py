"""Known-answer tests of every native agent's ``update`` (in the style of stable-baselines3's tests/test_gae.py).

Each test runs one real rollout through a ``TextGenVectorEnv`` whose reward model is scripted (slot i scores
``scores[i]``; with ``terminate_on_eos=False`` every episode lasts ``MAX_NEW_TOKENS`` tokens and the env scores
all slots in one call), on a tiny GPT-2 policy whose frozen reference is a *different* tiny GPT-2 (so the KL
terms are not 0). It then checks, at the input of the update's loss (captured by wrapping the function the
update calls), the advantages and returns against numbers computed here by hand (literals, or plain Python
written without ``agents.core``), the loss values the update reports against the hand-written loss, the
gradient the optimizer receives against ``torch.autograd`` on the hand-written loss, and that the one AdamW
step moves every parameter against that gradient (Adam's first step is ``-lr * g / (|g| + eps)``).

Where the loss's inputs are shuffled into minibatch order, the rows are matched back by their old log-probs.
The batches are the env's, except where a test shifts the old log-probs (so that PPO's clip is active) or ends
episodes early (so that masks and aggregations matter), each as the env and rollout would lay them out.

The SB3 adapter: stable-baselines3 runs unmodified and its update is tested upstream, so its test checks what
that update receives from our env and ``LMActorCriticPolicy``, as SB3's own tests/test_gae.py does: the rollout
buffer's advantages and returns for a constant value and a scripted terminal reward.
"""

from __future__ import annotations

import math

import pytest
import torch
from gymnasium.vector import AutoresetMode

import agents.grpo
import agents.ppo
from agents import GRPO, PPO, REINFORCE, RLOO, Agent, LMPolicy
from agents.rollout import RolloutBatch
from textenv.vector import TextGenVectorEnv

MAX_NEW_TOKENS = 3
LR = 1e-3
ADAM_EPS = 1e-8  # torch.optim.AdamW's default


class ScriptedReward:
    """A reward model that gives slot i the score ``scores[i]`` (the env calls it once, on all slots)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = list(scores)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        assert len(completions) == len(self.scores), "the env scored a subset of the slots"
        return list(self.scores)


def tiny_lm(tok, seed: int):
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg).eval()


def make_agent(cls: type[Agent], tok, reward: ScriptedReward, **overrides) -> Agent:
    """``cls`` on a tiny policy (reference: another tiny GPT-2) and an env scored by ``reward``."""
    policy = LMPolicy(tiny_lm(tok, 0), tok, ref_model=tiny_lm(tok, 1))
    B = len(reward.scores)
    envs = TextGenVectorEnv(num_envs=B, autoreset_mode=AutoresetMode.DISABLED, task="arithmetic", tokenizer=tok,
                            reward_model=reward, max_new_tokens=MAX_NEW_TOKENS, terminate_on_eos=False)
    return cls(envs, policy=policy, batch_size=B, learning_rate=LR, device="cpu", **overrides)


def rollout(agent: Agent, scores: list[float]) -> RolloutBatch:
    """One rollout of ``agent``, checked to carry the scripted scores on the last token of every episode."""
    batch = agent.collect()
    B = len(scores)
    assert batch.mask.shape == (B, MAX_NEW_TOKENS) and bool((batch.mask == 1).all())
    assert batch.scores.tolist() == pytest.approx(scores)
    expected_rewards = torch.zeros(B, MAX_NEW_TOKENS)
    expected_rewards[:, -1] = torch.tensor(scores)
    torch.testing.assert_close(batch.rewards, expected_rewards)
    assert float((batch.logprobs - batch.ref_logprobs).abs().min()) > 0  # the reference differs on every token
    agent.policy.train()
    agent.policy.model.eval()  # as Agent.learn: dropout off
    return batch


def forward(agent: Agent, batch: RolloutBatch):
    """The policy's per-token log-probs, values and entropy of the batch, with grad (batch order)."""
    return agent.policy.per_token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)


def named_params(agent: Agent) -> dict[str, torch.Tensor]:
    return dict(agent.policy.named_parameters())


def hand_grads(agent: Agent, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    params = named_params(agent)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, grads, strict=True))


def capture_steps(agent: Agent) -> list[dict[str, torch.Tensor | None]]:
    """The gradients the optimizer holds at each of its steps (after the update's clipping)."""
    steps: list[dict[str, torch.Tensor | None]] = []
    params = named_params(agent)

    def hook(optimizer, args, kwargs):
        steps.append({n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()})

    agent.optimizer.register_step_pre_hook(hook)
    return steps


def row_order(sub: torch.Tensor, full: torch.Tensor) -> list[int]:
    """For each row of ``sub`` the index of the equal row of ``full`` (the update's minibatch permutation)."""
    order = [[i for i in range(full.shape[0]) if torch.equal(row, full[i])] for row in sub]
    assert all(len(o) == 1 for o in order), "rows are not distinct"
    idx = [o[0] for o in order]
    assert sorted(idx) == list(range(full.shape[0]))
    return idx


def check_step(agent: Agent, before: dict[str, torch.Tensor], expected: dict[str, torch.Tensor | None],
               steps: list[dict[str, torch.Tensor | None]]) -> None:
    """One optimizer step, on the hand-written loss's gradient (clipped to ``max_grad_norm``), moving every
    parameter by Adam's first step ``-lr * g / (|g| + eps)``: against the gradient, untouched where it is 0."""
    assert len(steps) == 1
    got = steps[0]
    total_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in expected.values() if g is not None))
    assert total_norm > 0
    clip = min(1.0, agent.config.max_grad_norm / (total_norm + 1e-6))  # torch's clip_grad_norm_
    scale = max(float(g.abs().max()) for g in expected.values() if g is not None)
    after = named_params(agent)
    n_moved = 0
    for name, g in expected.items():
        delta = after[name].detach() - before[name]
        if g is None:
            assert got[name] is None, name
            assert bool((delta == 0).all()), f"{name} has no gradient but moved"
            continue
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], g * clip, rtol=1e-4, atol=1e-5 * scale * clip, msg=name)
        g_used = got[name]
        torch.testing.assert_close(delta, -LR * g_used / (g_used.abs() + ADAM_EPS), rtol=0, atol=LR * 1e-3,
                                   msg=name)
        big = g.abs() > 1e-3 * scale
        assert bool((torch.sign(delta[big]) == -torch.sign(g[big])).all()), name
        n_moved += int(big.sum())
    assert n_moved > 100  # the check saw a real gradient, not a handful of entries


def snapshot(agent: Agent) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in named_params(agent).items()}


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-token PPO loss, written case by case: -A * min(r, 1 + eps) for A >= 0, -A * max(r, 1 - eps) else."""
    up = -adv * torch.minimum(ratio, torch.full_like(ratio, 1 + eps))
    down = -adv * torch.maximum(ratio, torch.full_like(ratio, 1 - eps))
    return torch.where(adv >= 0, up, down)


def end_early(batch: RolloutBatch, lengths: list[int], pad_id: int) -> RolloutBatch:
    """``batch`` as the env and ``collect_rollout`` lay out episodes that ended (on an EOS) after ``lengths``
    tokens: pad and mask 0 after the end, the score on the last valid token, columns trimmed to the longest.
    Log-probs and values of the kept tokens are unchanged (a causal LM's token t sees only tokens < t)."""
    T = max(lengths)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()  # (B, T)
    rewards = torch.zeros_like(mask)
    for i, n in enumerate(lengths):
        rewards[i, n - 1] = batch.scores[i]
    return batch._replace(mask=mask, tokens=batch.tokens[:, :T].masked_fill(mask == 0, pad_id), rewards=rewards,
                          logprobs=batch.logprobs[:, :T] * mask, ref_logprobs=batch.ref_logprobs[:, :T] * mask,
                          values=batch.values[:, :T] * mask)


# old log-prob offsets per token: ratios exp(+0.5) = 1.65 and exp(-0.5) = 0.61 lie outside [0.8, 1.2], so the
# clip is active on one of the two tokens of either sign of advantage
OLD_LOGPROB_SHIFT = torch.tensor([0.0, -0.5, 0.5])


# --------------------------------------------------------------------------------------------------------
# REINFORCE and RLOO: one advantage per sequence, loss -mean(A * log pi(y|x))
# --------------------------------------------------------------------------------------------------------

SCORES = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
LENGTHS = [3, 2, 3, 1, 3, 3, 2, 3]  # episodes that end early: log pi(y|x) and the KL sum over valid tokens only


def sequence_kl(batch: RolloutBatch) -> list[float]:
    """Per episode, sum over its tokens of log pi_old - log ref (k1, the rollout's log-probs)."""
    return [sum(float(batch.logprobs[i, t] - batch.ref_logprobs[i, t]) for t in range(n))
            for i, n in enumerate(LENGTHS)]


def sequence_update_check(agent: Agent, batch: RolloutBatch, expected_adv: list[float], kl_coef: float,
                          monkeypatch) -> None:
    """Run ``agent.update`` and check its advantages, loss, gradient and step against ``expected_adv``."""
    captured = {}
    real_advantages = agent.advantages

    def advantages(returns):
        captured["returns"] = returns.clone()
        captured["advantages"] = out = real_advantages(returns)
        return out

    monkeypatch.setattr(agent, "advantages", advantages)
    returns = [s - kl_coef * k for s, k in zip(SCORES, sequence_kl(batch), strict=True)]  # score - beta * KL
    ev = forward(agent, batch)
    adv = torch.tensor(expected_adv)
    seq_logprob = torch.stack([ev.logprobs[i, :n].sum() for i, n in enumerate(LENGTHS)])  # (B,) log pi(y|x)
    hand_loss = -(adv * seq_logprob).mean()
    expected = hand_grads(agent, hand_loss)
    before, steps = snapshot(agent), capture_steps(agent)

    metrics = agent.update(batch)

    torch.testing.assert_close(captured["returns"], torch.tensor(returns), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(captured["advantages"], adv, rtol=1e-5, atol=1e-6)
    assert metrics["policy_loss"] == pytest.approx(float(hand_loss.detach()), rel=1e-5, abs=1e-6)
    assert metrics["advantage_std"] == pytest.approx(float(adv.std()), rel=1e-5)
    entropy = sum(float(ev.entropy[i, t].detach()) for i, n in enumerate(LENGTHS) for t in range(n)) / sum(LENGTHS)
    assert metrics["entropy"] == pytest.approx(entropy, rel=1e-5)
    check_step(agent, before, expected, steps)


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_reinforce_update_mean_baseline(tiny_tokenizer, monkeypatch, kl_coef):
    """REINFORCE, baseline "mean": A_i = R_i - mean_j R_j with R_i = score_i - beta * KL_i."""
    agent = make_agent(REINFORCE, tiny_tokenizer, ScriptedReward(SCORES), kl_coef=kl_coef)
    batch = end_early(rollout(agent, SCORES), LENGTHS, tiny_tokenizer.pad_token_id)
    if kl_coef == 0:
        expected_adv = [0.625, -0.375, -0.375, 0.625, -0.375, -0.375, -0.375, 0.625]  # mean score 3/8
    else:
        returns = [s - kl_coef * k for s, k in zip(SCORES, sequence_kl(batch), strict=True)]
        expected_adv = [r - sum(returns) / len(returns) for r in returns]
    sequence_update_check(agent, batch, expected_adv, kl_coef, monkeypatch)


def test_reinforce_update_ema_baseline(tiny_tokenizer, monkeypatch):
    """REINFORCE, baseline "ema": the first batch is centred on its own mean; the second on the running mean
    ema = decay * mean_1 + (1 - decay) * mean_1 = mean_1 (then ema moves towards mean_2)."""
    reward = ScriptedReward(SCORES)
    agent = make_agent(REINFORCE, tiny_tokenizer, reward, kl_coef=0.0, baseline="ema", ema_decay=0.9)
    first = rollout(agent, SCORES)
    seen = []
    real_advantages = agent.advantages
    monkeypatch.setattr(agent, "advantages", lambda returns: seen.append(real_advantages(returns)) or seen[-1])
    agent.update(first)
    torch.testing.assert_close(seen[0], torch.tensor(SCORES) - 0.375)
    assert agent.ema == pytest.approx(0.375)
    reward.scores = second = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # mean 0.75
    agent.update(rollout(agent, second))
    torch.testing.assert_close(seen[1], torch.tensor(second) - 0.375)
    assert agent.ema == pytest.approx(0.9 * 0.375 + 0.1 * 0.75)


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_rloo_update(tiny_tokenizer, monkeypatch, kl_coef):
    """RLOO, G = 4: A_i = R_i - mean of the other three returns of its group."""
    agent = make_agent(RLOO, tiny_tokenizer, ScriptedReward(SCORES), kl_coef=kl_coef, group_size=4)
    batch = end_early(rollout(agent, SCORES), LENGTHS, tiny_tokenizer.pad_token_id)
    assert batch.prompts[0] == batch.prompts[3] != batch.prompts[4] == batch.prompts[7]
    if kl_coef == 0:
        # group [1, 0, 0, 1]: baselines [1/3, 2/3, 2/3, 1/3]; group [0, 0, 0, 1]: [1/3, 1/3, 1/3, 0]
        expected_adv = [2 / 3, -2 / 3, -2 / 3, 2 / 3, -1 / 3, -1 / 3, -1 / 3, 1.0]
    else:
        returns = [s - kl_coef * k for s, k in zip(SCORES, sequence_kl(batch), strict=True)]
        expected_adv = []
        for i, r in enumerate(returns):
            group = range(4 * (i // 4), 4 * (i // 4) + 4)
            expected_adv.append(r - sum(returns[j] for j in group if j != i) / 3)
    sequence_update_check(agent, batch, expected_adv, kl_coef, monkeypatch)


# --------------------------------------------------------------------------------------------------------
# GRPO: group-relative advantages, clipped surrogate + beta * k3 KL to the reference
# --------------------------------------------------------------------------------------------------------

GRPO_EPS = 1e-4  # the std's epsilon
# group [1, 0, 0, 1]: mean 1/2, unbiased std sqrt(1/3); group [0, 0, 0, 1]: mean 1/4, unbiased std 1/2;
# batch of 8 with 3 ones: unbiased std sqrt((3 * 25/64 + 5 * 9/64) / 7) = sqrt(15/56)
GRPO_EXPECTED = {
    "grpo": [0.5 / (math.sqrt(1 / 3) + GRPO_EPS) * s for s in (1, -1, -1, 1)]
            + [a / (0.5 + GRPO_EPS) for a in (-0.25, -0.25, -0.25, 0.75)],
    "dr_grpo": [0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75],
    "batch_std": [a / (math.sqrt(15 / 56) + GRPO_EPS) for a in (0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75)],
}


@pytest.mark.parametrize("normalization", ["grpo", "dr_grpo", "batch_std"])
def test_grpo_update(tiny_tokenizer, monkeypatch, normalization):
    kl_coef, clip_range = 0.1, 0.2
    agent = make_agent(GRPO, tiny_tokenizer, ScriptedReward(SCORES), group_size=4, kl_coef=kl_coef, clip_range=clip_range,
                       normalization=normalization)
    # episodes of 1 and 2 tokens: a sequence mean differs from a token mean, and T = 2 from max_new_tokens = 3
    lengths = [2, 2, 1, 2, 2, 1, 2, 2]
    batch = end_early(rollout(agent, SCORES), lengths, tiny_tokenizer.pad_token_id)
    shift = OLD_LOGPROB_SHIFT[1:]  # ratios 1.65 and 0.61 at the first step
    batch = batch._replace(logprobs=(batch.logprobs + shift) * batch.mask)
    m = batch.mask.bool()
    valid = [(i, t) for i in range(len(SCORES)) for t in range(lengths[i])]
    captured = {}
    real_loss = agents.grpo.ppo_policy_loss

    def ppo_policy_loss(logprobs, old_logprobs, advantages, *args, **kwargs):
        captured.update(old_logprobs=old_logprobs.clone(), advantages=advantages.detach().clone())
        return real_loss(logprobs, old_logprobs, advantages, *args, **kwargs)

    monkeypatch.setattr(agents.grpo, "ppo_policy_loss", ppo_policy_loss)

    adv = torch.tensor(GRPO_EXPECTED[normalization])  # (B,)
    ev = forward(agent, batch)
    ratio = torch.exp(ev.logprobs - batch.logprobs)  # (B, T)
    per_token = clipped_surrogate(ratio, adv[:, None], clip_range)  # (B, T)
    d = batch.ref_logprobs - ev.logprobs  # log(ref / pi)
    k3 = torch.exp(d) - d - 1  # (B, T)
    if normalization == "dr_grpo":  # sum over valid tokens / (B * max_new_tokens)
        pg_loss = per_token[m].sum() / (len(SCORES) * MAX_NEW_TOKENS)
        kl_loss = k3[m].sum() / (len(SCORES) * MAX_NEW_TOKENS)
    else:  # mean over each sequence's valid tokens, then over sequences
        pg_loss = sum(per_token[i, :n].mean() for i, n in enumerate(lengths)) / len(SCORES)
        kl_loss = sum(k3[i, :n].mean() for i, n in enumerate(lengths)) / len(SCORES)
    expected = hand_grads(agent, pg_loss + kl_coef * kl_loss)
    before, steps = snapshot(agent), capture_steps(agent)

    metrics = agent.update(batch)

    idx = row_order(captured["old_logprobs"], batch.logprobs)
    torch.testing.assert_close(captured["advantages"], adv[idx], rtol=1e-5, atol=1e-6)
    assert metrics["policy_loss"] == pytest.approx(float(pg_loss.detach()), rel=1e-5, abs=1e-6)
    assert metrics["kl_loss"] == pytest.approx(float(kl_loss.detach()), rel=1e-5, abs=1e-7)
    assert float(kl_loss.detach()) > 1e-3  # the reference is another model: the KL term is not 0
    # clipped: the ratio-1.65 tokens (t = 0) where A > 0 and the ratio-0.61 tokens (t = 1) where A < 0
    n_clipped = sum((t == 0 and adv[i] > 0) or (t == 1 and adv[i] < 0) for i, t in valid)
    assert 0 < n_clipped < len(valid)
    assert metrics["clip_ratio"] == pytest.approx(n_clipped / len(valid), abs=1e-6)
    check_step(agent, before, expected, steps)


# --------------------------------------------------------------------------------------------------------
# PPO: per-token reward with the KL penalty, GAE on a constant value, whitening, clipped surrogate, value loss
# --------------------------------------------------------------------------------------------------------

PPO_SCORES = [1.0, 0.0, 0.5, 1.0]
VALUE = 0.3  # the value head's constant output (zero weights, this bias)
GAMMA, LAM = 0.9, 0.8


def gae_by_hand(rewards: list[list[float]], lengths: list[int], value: float) -> list[list[float]]:
    """A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t, V = ``value`` up to the
    episode's end and 0 after it; padding 0."""
    out = []
    for r, n in zip(rewards, lengths, strict=True):
        deltas = [r[t] + GAMMA * (value if t + 1 < n else 0.0) - value for t in range(n)]
        adv = [sum((GAMMA * LAM) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        out.append(adv + [0.0] * (MAX_NEW_TOKENS - n))
    return out


@pytest.mark.parametrize("kl_coef", [0.0, 0.2])
def test_ppo_update(tiny_tokenizer, monkeypatch, kl_coef):
    """PPO, one epoch of one minibatch: per-token rewards, GAE, whitening, the three loss terms, the logged
    KL and clip statistics, and (with a KL penalty) the adaptive coefficient's update."""
    clip_range, vf_coef, ent_coef = 0.2, 0.5, 0.01
    kl_horizon = 100
    agent = make_agent(PPO, tiny_tokenizer, ScriptedReward(PPO_SCORES), kl_coef=kl_coef, gamma=GAMMA, lam=LAM,
                       n_epochs=1, n_minibatches=1, clip_range=clip_range, vf_coef=vf_coef, ent_coef=ent_coef,
                       adaptive_kl=kl_coef > 0, kl_horizon=kl_horizon)
    head = agent.policy.value_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(VALUE)
    batch = rollout(agent, PPO_SCORES)
    torch.testing.assert_close(batch.values, torch.full((4, MAX_NEW_TOKENS), VALUE))
    lengths = [3, 2, 3, 3]
    batch = end_early(batch, lengths, tiny_tokenizer.pad_token_id)
    batch = batch._replace(logprobs=(batch.logprobs + OLD_LOGPROB_SHIFT) * batch.mask)
    valid = [(i, t) for i in range(4) for t in range(lengths[i])]
    if kl_coef > 0:
        # the adaptive controller's target, set so that the measured KL (the mean over episodes of the summed
        # k1 of the rollout) is 1.1 times it: its proportional error 0.1 lies inside the +-0.2 clip
        mean_kl = sum(float(batch.logprobs[i, t] - batch.ref_logprobs[i, t]) for i, t in valid) / 4
        assert mean_kl > 0
        agent.kl_ctl.target = mean_kl / 1.1

    # per-token reward by hand: the score on the last token, minus beta * (log pi_old - log ref) on every token
    rewards = [[0.0] * MAX_NEW_TOKENS for _ in range(4)]
    for i, t in valid:
        rewards[i][t] = (PPO_SCORES[i] if t == lengths[i] - 1 else 0.0) - kl_coef * float(
            batch.logprobs[i, t] - batch.ref_logprobs[i, t])
    raw_adv = gae_by_hand(rewards, lengths, VALUE)
    if kl_coef == 0:  # the same numbers, literally: delta = -0.03 before the last token, score - 0.3 on it
        a1 = -0.03 + 0.72 * 0.7
        literal = [[-0.03 + 0.72 * a1, a1, 0.7], [-0.03 + 0.72 * -0.3, -0.3, 0.0],
                   [-0.03 + 0.72 * (-0.03 + 0.72 * 0.2), -0.03 + 0.72 * 0.2, 0.2], [-0.03 + 0.72 * a1, a1, 0.7]]
        assert raw_adv == [pytest.approx(row) for row in literal]
    returns = [[raw_adv[i][t] + VALUE if t < lengths[i] else 0.0 for t in range(MAX_NEW_TOKENS)] for i in range(4)]
    flat = [raw_adv[i][t] for i, t in valid]
    mean = sum(flat) / len(flat)
    var = sum((a - mean) ** 2 for a in flat) / (len(flat) - 1)
    adv = torch.tensor([[(raw_adv[i][t] - mean) / math.sqrt(var + 1e-8) if t < lengths[i] else 0.0
                         for t in range(MAX_NEW_TOKENS)] for i in range(4)])
    returns_t = torch.tensor(returns)

    captured = {}
    real_pg, real_vf = agents.ppo.ppo_policy_loss, agents.ppo.value_loss

    def ppo_policy_loss(logprobs, old_logprobs, advantages, *args, **kwargs):
        captured.update(old_logprobs=old_logprobs.clone(), advantages=advantages.detach().clone())
        return real_pg(logprobs, old_logprobs, advantages, *args, **kwargs)

    def value_loss(values, old_values, returns, *args, **kwargs):
        captured.update(values=values.detach().clone(), returns=returns.clone())
        return real_vf(values, old_values, returns, *args, **kwargs)

    monkeypatch.setattr(agents.ppo, "ppo_policy_loss", ppo_policy_loss)
    monkeypatch.setattr(agents.ppo, "value_loss", value_loss)

    m = batch.mask.bool()
    ev = forward(agent, batch)
    ratio = torch.exp(ev.logprobs - batch.logprobs)
    pg_loss = clipped_surrogate(ratio, adv, clip_range)[m].mean()
    # V = V_old = 0.3 at the first step, so the value clip is inactive: 0.5 * mean (V - R)^2
    vf_loss = 0.5 * ((ev.values - returns_t) ** 2)[m].mean()
    entropy = ev.entropy[m].mean()
    expected = hand_grads(agent, pg_loss + vf_coef * vf_loss - ent_coef * entropy)
    before, steps = snapshot(agent), capture_steps(agent)

    metrics = agent.update(batch)

    idx = row_order(captured["old_logprobs"], batch.logprobs)
    torch.testing.assert_close(captured["advantages"], adv[idx], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured["returns"], returns_t[idx], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(captured["values"][m[idx]], torch.full((len(valid),), VALUE))
    assert metrics["policy_loss"] == pytest.approx(float(pg_loss.detach()), rel=1e-5, abs=1e-6)
    assert metrics["value_loss"] == pytest.approx(float(vf_loss.detach()), rel=1e-5, abs=1e-7)
    assert metrics["entropy"] == pytest.approx(float(entropy.detach()), rel=1e-5)
    logratio = (ev.logprobs - batch.logprobs)[m].detach()  # new vs rollout policy, before the step
    assert metrics["old_approx_kl"] == pytest.approx(float((-logratio).mean()), rel=1e-5, abs=1e-7)
    assert metrics["approx_kl"] == pytest.approx(float((logratio.exp() - 1 - logratio).mean()), rel=1e-5)
    assert metrics["explained_variance"] == pytest.approx(0.0, abs=1e-6)  # a constant value explains nothing
    if kl_coef > 0:  # beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * B / horizon = 1 + 0.1 * 4 / 100
        assert metrics["kl_coef"] == pytest.approx(kl_coef * (1 + 0.1 * 4 / kl_horizon), rel=1e-6)
    else:
        assert metrics["kl_coef"] == 0.0
    # clipped: the ratio-1.65 tokens (t = 1) where A > 0 and the ratio-0.61 tokens (t = 2) where A < 0
    n_clipped = sum((t == 1 and adv[i, t] > 0) or (t == 2 and adv[i, t] < 0) for i, t in valid)
    assert 0 < n_clipped < len(valid)
    assert metrics["clip_ratio"] == pytest.approx(n_clipped / len(valid), abs=1e-6)
    check_step(agent, before, expected, steps)
    # a 1-parameter view: the value bias's gradient is vf_coef * mean(V - R), so it moves by lr towards the returns
    mean_return = sum(returns[i][t] for i, t in valid) / len(valid)
    assert float(head.bias.detach()) == pytest.approx(VALUE + LR * math.copysign(1.0, mean_return - VALUE), abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# The SB3 adapter: what unmodified stable-baselines3 PPO's update receives from our env and policy
# --------------------------------------------------------------------------------------------------------


class ScriptedByCall:
    """A reward model that gives the k-th call the score ``scores[k]`` (one single env scores one completion
    per call; ``DummyVecEnv`` steps its envs in order, so env i's episode gets ``scores[i]``)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = list(scores)
        self.calls = 0

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        assert len(completions) == 1
        self.calls += 1
        return [self.scores[self.calls - 1]]


def test_sb3_rollout_buffer_advantages(tiny_tokenizer, tiny_tokenizer_dir):
    """As SB3's tests/test_gae.py, on our env and LMActorCriticPolicy: a constant value (zero weights, bias 0.3)
    and a scripted terminal reward; the rollout buffer's advantages and returns (the input of SB3's update) are
    GAE of the terminal score with no bootstrap past the episode's last token."""
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.sb3 import LMActorCriticPolicy, make_sb3_env

    scores = [1.0, 0.5]
    reward = ScriptedByCall(scores)
    env = make_sb3_env("TextGen-v0", n_envs=2, seed=0, tokenizer=str(tiny_tokenizer_dir), reward_model=reward,
                       max_new_tokens=MAX_NEW_TOKENS, terminate_on_eos=False)
    model = SB3PPO(LMActorCriticPolicy, env, n_steps=MAX_NEW_TOKENS, batch_size=2 * MAX_NEW_TOKENS, n_epochs=1,
                   gamma=GAMMA, gae_lambda=LAM, policy_kwargs={"model": tiny_lm(tiny_tokenizer, 0)}, device="cpu",
                   seed=0)
    with torch.no_grad():
        model.policy.value_net.weight.zero_()
        model.policy.value_net.bias.fill_(VALUE)
    seen = {}

    class Check(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            buf = self.model.rollout_buffer
            seen.update(rewards=buf.rewards.copy(), values=buf.values.copy(), advantages=buf.advantages.copy(),
                        returns=buf.returns.copy(), starts=buf.episode_starts.copy())

    model.learn(2 * MAX_NEW_TOKENS, callback=Check())
    assert reward.calls == 2  # one episode per env, scored once at its end
    # (n_steps, n_envs): reward 0, 0, score; one episode per env, from the first step
    expected_rewards = [[0.0, 0.0], [0.0, 0.0], scores]
    assert seen["rewards"].tolist() == [pytest.approx(r) for r in expected_rewards]
    assert seen["starts"][0].tolist() == [1.0, 1.0] and seen["starts"][1:].sum() == 0
    assert seen["values"] == pytest.approx(VALUE)
    raw_adv = gae_by_hand([[0.0, 0.0, s] for s in scores], [MAX_NEW_TOKENS] * 2, VALUE)  # (n_envs, T)
    a1 = -0.03 + 0.72 * 0.7
    assert raw_adv[0] == pytest.approx([-0.03 + 0.72 * a1, a1, 0.7])  # the literal numbers of test_ppo_update
    expected_adv = [[raw_adv[e][t] for e in range(2)] for t in range(MAX_NEW_TOKENS)]  # (n_steps, n_envs)
    assert seen["advantages"].tolist() == [pytest.approx(row, abs=1e-6) for row in expected_adv]
    assert seen["returns"].tolist() == [pytest.approx([a + VALUE for a in row], abs=1e-6) for row in expected_adv]
