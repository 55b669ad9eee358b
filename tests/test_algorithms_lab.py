"""DAPO, GSPO and REINFORCE++: known answers of their losses, advantages and sampling, and each learns a
tiny task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents import DAPO, GSPO, REINFORCEPP
from agents.core import ppo_policy_loss
from agents.dapo import concat_batches, select, soft_overlong_penalty
from agents.gspo import gspo_loss
from agents.reinforce_pp import reinforce_pp_advantages
from tests.test_agents import MAX_NEW_TOKENS, digit_share, make_agent, params, tiny_policy


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---- DAPO ----------------------------------------------------------------------------------------------


def test_clip_higher():
    """ratio 1.25, A = +1: clip 0.2 caps the gain at 1.2; clip-higher 0.28 lets 1.25 through."""
    lp, old, m = torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1), torch.ones(1, 1)
    adv = torch.ones(1)
    symmetric, stats = ppo_policy_loss(lp, old, adv, m, 0.2)
    close(symmetric, -1.2)
    assert float(stats["clip_ratio"]) == 1.0
    higher, stats = ppo_policy_loss(lp, old, adv, m, 0.2, clip_range_high=0.28)
    close(higher, -1.25)
    assert float(stats["clip_ratio"]) == 0.0
    # the low side is unchanged: ratio 0.7, A = -1 -> max(0.7, 0.8) = 0.8 either way
    low, _ = ppo_policy_loss(torch.tensor([[math.log(0.7)]]), old, -adv, m, 0.2, clip_range_high=0.28)
    close(low, 0.8)
    with pytest.raises(ValueError, match="clip_range_high must be > 0"):
        ppo_policy_loss(lp, old, adv, m, 0.2, clip_range_high=0.0)


def test_soft_overlong_penalty():
    # L_max 10, L_cache 4: no penalty up to 6 tokens, then -1/4 per token to -1 at 10
    close(soft_overlong_penalty(torch.tensor([5, 6, 7, 10]), 10, 4), [0.0, 0.0, -0.25, -1.0])
    close(soft_overlong_penalty(torch.tensor([8]), 10, 4, penalty=0.5), [-0.25])
    with pytest.raises(ValueError, match="buffer_tokens"):
        soft_overlong_penalty(torch.tensor([1]), 10, 0)


def test_concat_and_select_batches(tiny_tokenizer):
    agent = make_agent(DAPO, tiny_tokenizer, batch_size=4, group_size=2, dynamic_sampling=False)
    a, b = agent.collect(0), agent.collect(1)
    both = concat_batches([a, b], agent.envs.pad_id)
    assert both.scores.shape == (8,) and both.tokens.shape[1] == max(a.tokens.shape[1], b.tokens.shape[1])
    assert both.prompts == a.prompts + b.prompts
    for batch, rows in ((a, slice(0, 4)), (b, slice(4, 8))):  # the valid tokens and prompts are unchanged
        mask = both.mask[rows]
        assert torch.equal(mask.sum(1), batch.mask.sum(1))
        assert torch.equal(both.tokens[rows][mask.bool()], batch.tokens[batch.mask.bool()])
        assert torch.equal(both.query_ids[rows][both.query_mask[rows].bool()], batch.query_ids[batch.query_mask.bool()])
    picked = select(both, torch.tensor([5, 0]))
    assert picked.prompts == [both.prompts[5], both.prompts[0]] and torch.equal(picked.scores, both.scores[[5, 0]])


def half_flat(prompts: list[str], completions: list[str]) -> list[float]:
    """digit share for prompts with an even first operand; a constant 0.5 (no signal) for the others."""
    share = digit_share(prompts, completions)
    return [s if int(p.split("+")[0]) % 2 == 0 else 0.5 for p, s in zip(prompts, share)]


def test_dynamic_sampling_keeps_only_groups_with_signal(tiny_tokenizer):
    envs_kwargs = {"batch_size": 16, "group_size": 4, "overlong_buffer": 0.0}
    agent = DAPO("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), max_sampling_rounds=6,
                 env_kwargs={"reward_model": half_flat, "max_new_tokens": MAX_NEW_TOKENS}, **envs_kwargs)
    batch = agent.collect()
    stats = agent._sampled_metrics
    groups = batch.scores.view(-1, 4)
    assert batch.scores.shape == (16,)  # refilled to the full batch
    assert bool(((groups.max(1).values - groups.min(1).values) > 0).all())  # no flat group kept
    assert all(int(p.split("+")[0]) % 2 == 0 for p in batch.prompts)  # the flat prompts were dropped
    assert stats["dynamic_sampling/rounds"] >= 2 and 0 < stats["dynamic_sampling/kept_fraction"] < 1
    # a reward without any signal: nothing is kept, the update falls back to the last rollout (A = 0)
    flat = DAPO("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), max_sampling_rounds=2,
                env_kwargs={"reward_model": lambda p, c: [0.5] * len(c), "max_new_tokens": MAX_NEW_TOKENS},
                **envs_kwargs)
    start = params(flat)
    flat.learn(16, progress=False)
    row = flat.history[-1]
    assert row["dynamic_sampling/rounds"] == 2 and row["dynamic_sampling/kept_fraction"] == 0
    assert all(torch.equal(v, start[k]) for k, v in params(flat).items() if not k.startswith("value_head"))


# ---- GSPO ----------------------------------------------------------------------------------------------


def test_gspo_loss_known_answer():
    # response 1: log-ratios 0.1, 0.3 -> s = exp(0.2) = 1.2214, A = +1; response 2: -0.5 -> s = 0.6065, A = -1
    lp = torch.tensor([[0.1, 0.3], [-0.5, 9.0]], requires_grad=True)  # 9.0 is padding
    old, mask, adv = torch.zeros(2, 2), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([1.0, -1.0])
    # clip 0.1: both are clipped (1.2214 > 1.1 with A > 0; 0.6065 < 0.9 with A < 0): (-1.1 + 0.9) / 2 = -0.1
    loss, stats = gspo_loss(lp, old, adv, mask, 0.1, 0.1)
    close(loss, -0.1)
    assert float(stats["clip_ratio"]) == 1.0
    (grad,) = torch.autograd.grad(loss, lp)
    close(grad, torch.zeros(2, 2))  # clipped once per response: no gradient at all
    # clip 0.5: none clipped: (-1.2214 + 0.6065) / 2, and d/dlp_t = -A s / (B |y|)
    loss, stats = gspo_loss(lp, old, adv, mask, 0.5, 0.5)
    s1, s2 = math.exp(0.2), math.exp(-0.5)
    close(loss, (-s1 + s2) / 2)
    assert float(stats["clip_ratio"]) == 0.0
    close(stats["ratio_mean"], (s1 + s2) / 2)
    (grad,) = torch.autograd.grad(loss, lp)
    close(grad, [[-s1 / 4, -s1 / 4], [s2 / 2, 0.0]])  # one ratio per response, shared by its tokens
    with pytest.raises(ValueError, match=r"advantages must have shape \(B,\)"):
        gspo_loss(lp, old, torch.ones(2, 2), mask, 0.1, 0.1)


# ---- REINFORCE++ ---------------------------------------------------------------------------------------


def test_reinforce_pp_advantages_known_answer():
    # rows: 2 tokens with k1 = 0.2, 0.4 and score 1; 1 token with k1 = 0.6 and score 0; kl_coef 0.5
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    lp, ref = torch.tensor([[0.2, 0.4], [0.6, 0.0]]), torch.zeros(2, 2)
    adv, kl = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), lp, ref, mask, 0.5)
    close(kl, [[0.2, 0.4], [0.6, 0.0]])
    # rewards [-0.1, 1 - 0.2], [-0.3]; returns-to-go [0.7, 0.8], [-0.3]; over the batch: mean 0.4,
    # unbiased variance (0.09 + 0.16 + 0.49) / 2 = 0.37
    sd = math.sqrt(0.37)
    close(adv, [[0.3 / sd, 0.4 / sd], [-0.7 / sd, 0.0]], atol=1e-4)
    # REINFORCE++-baseline: scores [1, 0, 3, 3] in groups of 2 -> [0.5, -0.5, 0, 0], then the global whitening
    scores = torch.tensor([1.0, 0.0, 3.0, 3.0])
    m4, z4 = torch.ones(4, 1), torch.zeros(4, 1)
    adv, _ = reinforce_pp_advantages(scores, z4, z4, m4, 0.0, group_size=2)
    centred = np.array([0.5, -0.5, 0.0, 0.0])
    close(adv[:, 0], centred / centred.std(ddof=1), atol=1e-4)
    # without the baseline the same scores give (r - 1.75) / std(r): the groups' offsets stay in
    adv, _ = reinforce_pp_advantages(scores, z4, z4, m4, 0.0)
    r = scores.numpy()
    close(adv[:, 0], (r - r.mean()) / r.std(ddof=1), atol=1e-4)
    with pytest.raises(ValueError, match="does not divide"):
        reinforce_pp_advantages(scores, z4, z4, m4, 0.0, group_size=3)


def test_reinforce_pp_returns_cross_the_inserted_tokens_of_a_multi_turn_row():
    # row 0: agent token, two inserted tokens (mask 0), agent token; k1 = 0.2 and 0.4, score 1, kl_coef 0.5.
    # The first turn's return must include the terminal score: [-0.1 + 0.8, 0.8] = [0.7, 0.8] on the agent's
    # tokens, exactly the returns of the same row without the inserted tokens (the known answer above).
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    lp = torch.tensor([[0.2, 9.0, 9.0, 0.4], [0.6, 0.0, 0.0, 0.0]])
    adv, _ = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), lp, torch.zeros(2, 4), mask, 0.5)
    sd = math.sqrt(0.37)
    close(adv, [[0.3 / sd, 0.0, 0.0, 0.4 / sd], [-0.7 / sd, 0.0, 0.0, 0.0]], atol=1e-4)


def test_configs_validate():
    with pytest.raises(ValueError, match="clip_high must be in"):
        DAPO.Config(clip_high=1.5)
    with pytest.raises(ValueError, match="overlong_buffer must be in"):
        DAPO.Config(overlong_buffer=2.0)
    with pytest.raises(ValueError, match="clip_low must be in"):
        GSPO.Config(clip_low=0.0)
    with pytest.raises(ValueError, match="group_size must be an integer >= 2"):
        REINFORCEPP.Config(group_baseline=True, group_size=1)
    assert REINFORCEPP.Config().group_size == 1 and DAPO.Config().kl_coef == 0.0 and GSPO.Config().kl_coef == 0.0


# ---- learning ------------------------------------------------------------------------------------------

LEARN = {
    DAPO: {"learning_rate": 3e-3, "group_size": 4},
    GSPO: {"learning_rate": 3e-3, "group_size": 4},
    REINFORCEPP: {"learning_rate": 3e-3},
    "reinforce-pp-baseline": {"learning_rate": 3e-3, "group_baseline": True, "group_size": 4},
}


@pytest.mark.parametrize("key", list(LEARN), ids=lambda k: k if isinstance(k, str) else k.name)
def test_new_agents_learn_tiny_task(tiny_tokenizer, key):
    """Every new agent raises the mean reward of the digit task within seconds on CPU."""
    cls = REINFORCEPP if key == "reinforce-pp-baseline" else key
    agent = cls("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), batch_size=32, kl_coef=0.0,
                env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS}, **LEARN[key])
    before = agent.evaluate(64)
    agent.learn(32 * 15, progress=False)
    after = agent.evaluate(64)
    assert agent.iteration == 15 and len(agent.history) == 15
    assert after["reward"] > before["reward"] + 0.1, (before, after)


@pytest.mark.parametrize("cls,overrides", [(DAPO, {"group_size": 2, "clip_high": 0.3}), (GSPO, {"group_size": 2}),
                                           (REINFORCEPP, {"group_baseline": True, "group_size": 2})],
                         ids=["dapo", "gspo", "reinforce-pp"])
def test_save_load_round_trip(tiny_tokenizer, tmp_path, cls, overrides):
    agent = make_agent(cls, tiny_tokenizer, batch_size=4, **overrides)
    agent.learn(4, progress=False)
    loaded = cls.load(agent.save(tmp_path / "ckpt"), env=agent.envs)
    assert type(loaded) is cls and loaded.config == agent.config and loaded.episodes == 4
    assert all(torch.equal(v, params(agent)[k]) for k, v in params(loaded).items())
