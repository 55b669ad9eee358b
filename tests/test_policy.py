"""LMPolicy and collect_rollout: KV-cached acting agrees with one full forward; the RolloutBatch layout."""

from __future__ import annotations

import pytest
import torch
from gymnasium.vector import AutoresetMode

from agents import GRPO, LMPolicy, collect_rollout
from textenv.vector import TextGenVectorEnv

T_MAX = 12
# prompts of 3 to 16 tokens, so the batch is left-padded by different amounts
PROMPTS = ["1+2=", "Review: the film was good and the plot was really quite fine.", "57+38=", "Review: bad",
           "9+9=", "Review: dull river lamp", "3+40=", "Review: the acting was not very great."]


def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Any deterministic function of the text will do; the length makes scores differ between episodes."""
    return [len(c) / 10 for c in completions]


def boost_eos(model: torch.nn.Module, eos_id: int, scale: float = 5.0) -> None:
    """Make EOS likely in some contexts and unlikely in others, so episodes end at different steps.

    The EOS row of the output embedding becomes ``scale * u`` for a random unit vector u: its logit is
    ``scale * (h . u)``, which varies with the hidden state h (the other logits stay near 0).
    """
    weight = model.get_output_embeddings().weight
    u = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weight[eos_id] = scale * u / u.norm()


def tiny_causal_lm(kind: str, tok, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer, 64-wide GPT-2 (learned absolute positions) or Llama (rotary positions)."""
    from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(seed)
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if kind == "gpt2":
        model = GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=2, n_embd=64, n_head=2, **ids))
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          tie_word_embeddings=False, **ids)
        model = LlamaForCausalLM(cfg)
    boost_eos(model, tok.eos_token_id)
    return model.eval()


def make_envs(tok, num_envs: int = len(PROMPTS), reward=length_reward, **kwargs) -> TextGenVectorEnv:
    kwargs = {"max_prompt_tokens": 32, "max_new_tokens": T_MAX, "terminate_on_eos": True, **kwargs}
    return TextGenVectorEnv(num_envs=num_envs, autoreset_mode=AutoresetMode.DISABLED, task="arithmetic",
                            tokenizer=tok, reward_model=reward, **kwargs)


@pytest.mark.parametrize(("kind", "temperature"), [("gpt2", 1.0), ("gpt2", 0.7), ("llama", 1.0)])
def test_cached_logprobs_equal_full_forward(tiny_tokenizer, kind, temperature):
    """The log-probs and values recorded while acting with the KV cache are those of one full forward pass
    over the left-padded prompts and right-padded completions (position handling included)."""
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_causal_lm(kind, tok), tok, temperature=temperature)
    envs = make_envs(tok)
    batch = collect_rollout(policy, envs, seed=0, prompts=PROMPTS, generator=torch.Generator().manual_seed(0))

    prompt_lengths = batch.query_mask.sum(1)
    lengths = batch.mask.sum(1)
    assert len(set(prompt_lengths.tolist())) >= 3  # left padding is exercised
    assert len(set(lengths.tolist())) >= 3  # so is EOS mid-way, in several places
    assert lengths.min() < batch.tokens.shape[1]

    with torch.no_grad():
        ev = policy.per_token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
    m = batch.mask.bool()
    torch.testing.assert_close(ev.logprobs[m], batch.logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(ev.values[m], batch.values[m], atol=1e-5, rtol=0)
    # the reference is a frozen copy of the untrained policy: same log-probs
    torch.testing.assert_close(batch.ref_logprobs[m], batch.logprobs[m], atol=1e-5, rtol=0)
    # and with_values=False records no values but the same log-probs
    again = collect_rollout(policy, envs, seed=0, prompts=PROMPTS, with_values=False, with_ref=False,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, batch.tokens)
    torch.testing.assert_close(again.logprobs, batch.logprobs, atol=1e-6, rtol=0)
    assert not again.values.any() and not again.ref_logprobs.any()


def test_rollout_batch_layout(tiny_tokenizer):
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_causal_lm("gpt2", tok), tok)
    envs = make_envs(tok)
    batch = collect_rollout(policy, envs, seed=3, prompts=PROMPTS, generator=torch.Generator().manual_seed(3))
    B, T = batch.tokens.shape
    assert B == len(PROMPTS) and T <= T_MAX
    for name in ("mask", "logprobs", "ref_logprobs", "values", "rewards"):
        assert getattr(batch, name).shape == (B, T), name
    assert batch.scores.shape == batch.gold_scores.shape == (B,)
    assert batch.prompts == PROMPTS
    lengths = batch.mask.sum(1).long()
    assert int(lengths.max()) == T  # the batch is cut after the longest episode

    for i in range(B):
        n = int(lengths[i])
        # left-padded prompt that decodes to the prompt
        qm = batch.query_mask[i]
        p = int(qm.sum())
        assert qm[:qm.shape[0] - p].eq(0).all() and qm[qm.shape[0] - p:].eq(1).all()
        assert tok.decode(batch.query_ids[i, qm.shape[0] - p:]) == PROMPTS[i]
        # the mask is a prefix: 1 on the n completion tokens, the EOS that ended the episode included
        assert batch.mask[i, :n].eq(1).all() and batch.mask[i, n:].eq(0).all()
        real = batch.tokens[i, :n]
        assert batch.tokens[i, n:].eq(tok.pad_token_id).all()
        assert real[:-1].ne(tok.eos_token_id).all()
        assert (real[-1] == tok.eos_token_id) == (n < T_MAX)
        assert batch.completions[i] == tok.decode(real, skip_special_tokens=True)
        # nothing recorded past the end; terminal reward on the last token only
        for name in ("logprobs", "ref_logprobs", "values", "rewards"):
            assert getattr(batch, name)[i, n:].eq(0).all(), name
        assert batch.rewards[i, :n - 1].eq(0).all()
        assert batch.rewards[i, n - 1] == pytest.approx(float(batch.scores[i]))
        assert (batch.logprobs[i, :n] < 0).all()

    expected = torch.tensor(length_reward(batch.prompts, batch.completions), dtype=torch.float32)
    torch.testing.assert_close(batch.scores, expected)
    gold = envs.task.gold_score(batch.prompts, batch.completions)
    torch.testing.assert_close(batch.gold_scores, torch.tensor(gold, dtype=torch.float32))
    assert batch.stats["tokens_per_s"] > 0


def test_group_prompts_are_consecutive(tiny_tokenizer):
    """With G > 1 completions per prompt, groups of identical prompts are laid out consecutively."""
    tok = tiny_tokenizer
    G, B = 4, 12
    agent = GRPO(make_envs(tok, num_envs=B), policy=LMPolicy(tiny_causal_lm("gpt2", tok), tok),
                 batch_size=B, group_size=G)
    batch = agent.collect()
    groups = [batch.prompts[i:i + G] for i in range(0, B, G)]
    assert all(len(set(g)) == 1 for g in groups)
    assert len({g[0] for g in groups}) == B // G  # distinct prompts across groups (3 of 10,000)
    for i in range(0, B, G):
        assert (batch.query_ids[i:i + G] == batch.query_ids[i]).all()
    # the completions of a group are sampled independently
    assert len({tuple(batch.tokens[i].tolist()) for i in range(G)}) > 1


def test_step_before_start_and_bad_sampling_arguments(tiny_tokenizer, tiny_lm):
    policy = LMPolicy(tiny_lm, tiny_tokenizer)
    with pytest.raises(RuntimeError, match="start"):
        policy.step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature.*-1"):
        LMPolicy(tiny_lm, tiny_tokenizer, temperature=-1)
    with pytest.raises(ValueError, match="top_k.*0"):
        LMPolicy(tiny_lm, tiny_tokenizer, top_k=0)
    with pytest.raises(ValueError, match="top_p.*1.5"):
        LMPolicy(tiny_lm, tiny_tokenizer, top_p=1.5)


def test_policy_without_reference(tiny_tokenizer, tiny_lm):
    policy = LMPolicy(tiny_lm, tiny_tokenizer, with_reference=False)
    assert policy.ref_model is None
    ids, mask = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="with_reference=False"):
        policy.ref_logprobs(ids, mask, ids, mask.float())


def test_save_and_from_pretrained(tiny_tokenizer, tiny_lm, tmp_path):
    """A saved policy comes back with the same LM, value head and sampling settings; the reference is a
    frozen copy, outside the trained parameters."""
    policy = LMPolicy(tiny_lm, tiny_tokenizer, temperature=0.8)
    assert all(p.requires_grad for p in policy.parameters())
    assert not any(p.requires_grad for p in policy.ref_model.parameters())
    assert not any(k.startswith("ref_model") for k in policy.state_dict())
    with torch.no_grad():
        policy.value_head.bias.fill_(0.25)
    policy.save(tmp_path / "p")
    loaded = LMPolicy.from_pretrained(tmp_path / "p")
    assert loaded.temperature == 0.8
    assert len(loaded.tokenizer) == len(tiny_tokenizer)
    before, after = policy.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sample_categorical_follows_the_distribution_and_skips_zero_probability():
    from textenv.decoding import sample_categorical

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2])
    logp = probs.log().expand(20000, 4)  # (B, V), log 0 = -inf
    gen = torch.Generator().manual_seed(0)
    draws = sample_categorical(logp, gen)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[1] == 0
    assert torch.allclose(freq, probs, atol=0.015)
    again = sample_categorical(logp, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # seeded


def test_fused_activations_compute_the_same_function(tiny_lm):
    import copy

    from agents.policy import fuse_activations

    fused = fuse_activations(copy.deepcopy(tiny_lm))
    assert not any(type(m).__name__ == "NewGELUActivation" for m in fused.modules())
    ids = torch.randint(0, tiny_lm.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, tiny_lm(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_ppo_logs_cleanrl_metrics(tiny_tokenizer):
    """PPO's update logs explained_variance (of the rollout values against the GAE returns, by hand here),
    old_approx_kl beside approx_kl, and clip_ratio; before the first step the new policy is the old one."""
    from agents import PPO
    from agents.core import gae

    tok = tiny_tokenizer
    agent = PPO(make_envs(tok), policy=LMPolicy(tiny_causal_lm("gpt2", tok), tok), batch_size=len(PROMPTS),
                n_epochs=1, n_minibatches=1, kl_coef=0.05, whiten_advantages=False)
    batch = agent.collect()
    with torch.no_grad():
        batch.values.copy_(torch.where(batch.mask.bool(), batch.values + 0.3 * batch.rewards, 0.0))
    metrics = agent.update(batch)
    m = batch.mask.bool()
    rewards = torch.where(m, batch.rewards - 0.05 * (batch.logprobs - batch.ref_logprobs), 0.0)
    _, returns = gae(rewards, batch.values, batch.mask, gamma=1.0, lam=0.95)
    R, V = returns[m].double(), batch.values[m].double()
    expected = 1.0 - (R - V).var(unbiased=False) / R.var(unbiased=False)
    assert metrics["explained_variance"] == pytest.approx(float(expected), abs=1e-5)
    # one minibatch, one epoch: the ratio is 1 up to the cached-vs-full forward rounding
    assert abs(metrics["approx_kl"]) < 1e-6 and abs(metrics["old_approx_kl"]) < 1e-5
    assert metrics["clip_ratio"] == 0.0
    assert {"policy_loss", "value_loss", "entropy", "grad_norm", "kl_coef"} <= metrics.keys()
