"""NLPO: the top-p mask (known answers), acting and training under it, syncing, and learning a tiny task."""

from __future__ import annotations

import math

import pytest
import torch

from agents import NLPO
from agents.nlpo import top_p_mask
from tests.test_agents import MAX_NEW_TOKENS, digit_share, make_agent, tiny_policy


def test_top_p_mask_known_answers():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert top_p_mask(logits, 0.7).tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.7
    assert top_p_mask(logits, 0.9).tolist() == [True, True, True, False]  # mass before 0.15 is 0.8 <= 0.9
    assert top_p_mask(logits, 0.1).tolist() == [True, False, False, False]  # the top token always stays
    assert top_p_mask(logits, 1.0).all()
    shuffled = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()[None].repeat(2, 1)  # order does not matter, batched
    assert top_p_mask(shuffled, 0.7).tolist() == [[False, True, False, True]] * 2
    with pytest.raises(ValueError, match="top_p must be in"):
        top_p_mask(logits, 0.0)


def test_rollouts_and_training_use_the_mask(tiny_tokenizer):
    agent = make_agent(NLPO, tiny_tokenizer, batch_size=8, top_p=0.5)
    batch = agent.collect()
    pol, mask = agent.policy, agent.mask
    with torch.no_grad():
        h = pol._completion_hidden(mask.model, batch.query_ids, batch.query_mask, batch.tokens)
        allowed = top_p_mask(mask.logits(h), 0.5)  # (B, T, V)
        picked = allowed.gather(-1, batch.tokens[..., None]).squeeze(-1)  # (B, T)
        assert bool(picked[batch.mask.bool()].all())  # every sampled token is in the masking policy's set
        assert float(allowed.float().sum(-1).mean()) < 0.5 * pol.vocab_size  # and the set is small
        ev = agent.token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
        # the stored log-probs are the masked policy's: the first PPO ratio is exactly 1
        torch.testing.assert_close(ev.logprobs[batch.mask.bool()], batch.logprobs[batch.mask.bool()],
                                   atol=1e-4, rtol=0)
        unmasked = pol.per_token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
        assert bool((ev.logprobs >= unmasked.logprobs - 1e-5)[batch.mask.bool()].all())  # renormalised: larger
        assert bool((ev.entropy < unmasked.entropy).all())


def test_mask_syncs_every_k_iterations(tiny_tokenizer):
    agent = make_agent(NLPO, tiny_tokenizer, batch_size=8, mask_update_every=2, learning_rate=1e-2,
                       n_epochs=1, n_minibatches=1)
    first = {k: v.clone() for k, v in agent.mask.model.state_dict().items()}

    def same_as(model, ref):
        return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())

    agent.learn(8, progress=False)  # iteration 1: the policy moved, the mask did not
    assert same_as(agent.mask.model, first) and not same_as(agent.policy.model, first)
    agent.learn(8, progress=False)  # iteration 2: synced
    assert same_as(agent.mask.model, agent.policy.model.state_dict()) and agent.mask_synced_at == 2
    assert "mask/allowed_tokens" in agent.history[-1]


def test_nlpo_learns_tiny_task(tiny_tokenizer):
    agent = NLPO("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), batch_size=32, kl_coef=0.0,
                 learning_rate=3e-3, n_epochs=2, n_minibatches=2,
                 env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS})
    before = agent.evaluate(64)
    agent.learn(32 * 15, progress=False)
    after = agent.evaluate(64)
    assert after["reward"] > before["reward"] + 0.1, (before, after)


def test_save_load(tiny_tokenizer, tmp_path):
    agent = make_agent(NLPO, tiny_tokenizer, batch_size=4, top_p=0.8, mask_update_every=3)
    agent.learn(4, progress=False)
    loaded = NLPO.load(agent.save(tmp_path / "ckpt"), env=agent.envs)
    assert loaded.config == agent.config and loaded.mask_synced_at == 0
    assert loaded.policy.action_mask is loaded.mask
    assert all(torch.equal(v, agent.policy.model.state_dict()[k]) for k, v in loaded.mask.model.state_dict().items())


def test_nlpo_on_a_multi_turn_env():
    """The masking policy reads the env's inserted tokens through its own cache, as the policy does: every
    agent token of a dialogue is in the mask's top-p set at its state, and an update runs."""
    from tests.test_multiturn_agents import make_envs
    from tests.test_multiturn_agents import tiny_policy as dialogue_policy

    agent = NLPO(make_envs(4), policy=dialogue_policy(), batch_size=4, top_p=0.5, n_epochs=1, n_minibatches=1)
    batch = agent.collect()
    assert batch.inserted_mask is not None and batch.inserted_mask.sum() > 0
    with torch.no_grad():
        h = agent.policy._completion_hidden(agent.mask.model, batch.query_ids, batch.query_mask, batch.tokens)
        allowed = top_p_mask(agent.mask.logits(h), 0.5).gather(-1, batch.tokens[..., None]).squeeze(-1)
    assert bool(allowed[batch.mask.bool()].all())
    row = agent.update(batch)
    assert math.isfinite(row["policy_loss"]) and math.isfinite(row["grad_norm"])


def test_nlpo_refuses_an_encoder_decoder_policy(tiny_tokenizer):
    from tests.test_seq2seq import make_envs as seq2seq_envs
    from tests.test_seq2seq import t5_policy

    with pytest.raises(ValueError, match="Seq2SeqPolicy acts its own way"):
        NLPO(seq2seq_envs(tiny_tokenizer, 4), policy=t5_policy(tiny_tokenizer), batch_size=4)
