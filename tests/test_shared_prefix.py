"""The shared-prompt training forward (``LMPolicy.share_prompt_prefix``, issue 15): a batch that repeats
prompts runs the trunk once per distinct prompt, and gives the log-probs, values, entropy, reference
log-probs and parameter gradients of the full forward; it falls back to the full forward where it must."""

from __future__ import annotations

import pytest
import torch

from agents import GRPO, LMPolicy
from agents.policy import supports_shared_prefix
from textenv.decoding import KVDecoder

P, T = 9, 6  # prompt columns (left-padded), completion tokens


def tiny_model(kind: str, tok, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer, 64-wide causal LM from a config: GPT-2 (learned positions, tied head), Llama,
    Qwen2 (q/k/v biases) or Qwen3 (q/k norms); the last three rotary, with grouped-query attention."""
    import transformers as tf

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(seed)
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=2, n_embd=64, n_head=2, **ids)).eval()
    sizes = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
             "tie_word_embeddings": False, **ids}
    config, cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                   "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}[kind]
    extra = {"head_dim": 16} if kind == "qwen3" else {}
    return cls(config(**sizes, **extra)).eval()


def grouped_batch(tok, rows: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(query_ids, query_mask, tokens, mask)`` for the rows ``rows`` (indices of 4 distinct prompts of
    3, 5, 7 and 9 tokens, left-padded to P); each row gets its own random completion, which ends early
    (pads after it, masked) in some rows."""
    g = torch.Generator().manual_seed(seed)
    prompts_ids = torch.full((4, P), tok.pad_token_id)
    prompts_mask = torch.zeros(4, P, dtype=torch.long)
    for i, n in enumerate((3, 5, 7, 9)):
        prompts_ids[i, P - n:] = torch.randint(3, len(tok), (n,), generator=g)
        prompts_mask[i, P - n:] = 1
    idx = torch.tensor(rows)
    tokens = torch.randint(3, len(tok), (len(rows), T), generator=g)
    lengths = torch.randint(1, T + 1, (len(rows),), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()  # (B, T)
    tokens = tokens.masked_fill(mask == 0, tok.pad_token_id)
    return prompts_ids[idx], prompts_mask[idx], tokens, mask


#: contiguous groups of 3 (GRPO's layout), and one where the prompts repeat out of order
LAYOUTS = {"groups": [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], "scattered": [2, 0, 3, 0, 2, 1, 0, 3, 1, 2]}


def trunk_rows(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """A list that records the rows of every call of ``model``'s trunk, and the hook's handle."""
    calls: list[int] = []

    def hook(module, args, kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))

    return calls, model.base_model.register_forward_pre_hook(hook, with_kwargs=True)


def assert_grads_close(got: dict, expected: dict, rel: float = 1e-5) -> None:
    """Each gradient equals the expected one to ``rel`` of the tensor's largest entry (float32 rounding of
    sums that run in another order; a wrong gradient is off by about its own size)."""
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        scale = float(g.abs().max()) + 1e-12
        err = float((got[name] - g).abs().max())
        assert err <= rel * scale, f"{name}: off by {err:.3g}, gradients up to {scale:.3g}"


def forward_and_grads(policy: LMPolicy, batch: tuple[torch.Tensor, ...]) -> tuple[tuple, dict, torch.Tensor]:
    """The training forward's (logprobs, values, entropy), the gradients of a loss on all three (every
    trainable parameter, the value head included), and the reference log-probs."""
    policy.zero_grad(set_to_none=True)
    ev = policy.per_token_logps(*batch)
    w = torch.linspace(-1.0, 1.0, ev.logprobs.numel()).view_as(ev.logprobs)  # each position counts differently
    mask = batch[3]
    loss = ((ev.logprobs * w + 0.5 * ev.values ** 2 - 0.1 * ev.entropy) * mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return tuple(t.detach() for t in ev), grads, policy.ref_logprobs(*batch)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "qwen3"])
def test_shared_forward_gives_the_full_forwards_outputs_and_gradients(tiny_tokenizer, kind, layout):
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model(kind, tok), tok, temperature=0.8)
    with torch.no_grad():  # a value head with real weight, so the value term's gradient is not ~0
        policy.value_head.weight.normal_(std=0.3)
    batch = grouped_batch(tok, LAYOUTS[layout])
    B = batch[0].shape[0]
    calls, handle = trunk_rows(policy.model)
    ref_calls, ref_handle = trunk_rows(policy.ref_model)
    shared = forward_and_grads(policy, batch)
    assert calls == [4, B] and ref_calls == [4, B]  # the 4 distinct prompts once, then the completions
    policy.share_prompt_prefix = False
    calls.clear()
    ref_calls.clear()
    full = forward_and_grads(policy, batch)
    assert calls == [B] and ref_calls == [B]
    handle.remove()
    ref_handle.remove()

    for name, a, b in zip(("logprobs", "values", "entropy"), shared[0], full[0]):
        assert a.shape == (B, T)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(shared[2], full[2], atol=1e-5, rtol=1e-5)
    assert len(full[1]) == len(list(policy.parameters()))
    assert_grads_close(shared[1], full[1])
    # a prompt's gradient is the sum over its rows: the prompt tokens' embeddings get one
    emb = policy.model.get_input_embeddings().weight
    name = next(n for n, p in policy.named_parameters() if p is emb)
    prompt_token = int(batch[0][0, -1])
    assert full[1][name][prompt_token].abs().sum() > 0


def test_a_one_token_completion_uses_the_prompts_last_state(tiny_tokenizer):
    """T = 1 (NLPO's first-state probe): the prompt forward alone gives it."""
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model("llama", tok), tok)
    q, qm, tokens, mask = grouped_batch(tok, LAYOUTS["scattered"])
    calls, _ = trunk_rows(policy.model)
    with torch.no_grad():
        shared = policy.per_token_logps(q, qm, tokens[:, :1], mask[:, :1])
        policy.share_prompt_prefix = False
        full = policy.per_token_logps(q, qm, tokens[:, :1], mask[:, :1])
    assert calls == [4, len(q)]
    for a, b in zip(shared, full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_distinct_prompts_take_the_full_forward(tiny_tokenizer):
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model("gpt2", tok), tok)
    batch = grouped_batch(tok, [0, 1, 2, 3])
    calls, _ = trunk_rows(policy.model)
    policy.per_token_logps(*batch)
    assert calls == [4]


def test_same_tokens_with_another_padding_are_another_prompt(tiny_tokenizer):
    """Rows are shared only when their ids and mask are equal: the same prompt with a column less of
    padding is a prompt of its own (its positions are the same, its padding is not)."""
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model("gpt2", tok), tok)
    q, qm, tokens, mask = grouped_batch(tok, [0, 0, 1])
    qm[1, 0] = 1  # one more real (pad-id) column in row 1
    calls, _ = trunk_rows(policy.model)
    with torch.no_grad():
        policy.per_token_logps(q, qm, tokens, mask)
    assert calls == [3]


def test_gradient_checkpointing_falls_back(tiny_tokenizer):
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model("gpt2", tok), tok).set_gradient_checkpointing(True)
    batch = grouped_batch(tok, LAYOUTS["groups"])
    calls, _ = trunk_rows(policy.model)
    ev = policy.per_token_logps(*batch)
    assert calls == [len(batch[0])]
    plain = LMPolicy(tiny_model("gpt2", tok), tok)
    with torch.no_grad():
        plain.value_head.load_state_dict(policy.value_head.state_dict())
        expected = plain.per_token_logps(*batch)
    torch.testing.assert_close(ev.logprobs.detach(), expected.logprobs, atol=1e-5, rtol=1e-5)


def test_the_flag_switches_it_off_and_is_checked(tiny_tokenizer, tiny_lm):
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_lm, tok, share_prompt_prefix=False)
    assert policy.share_prompt_prefix is False
    calls, _ = trunk_rows(policy.model)
    with torch.no_grad():
        policy.per_token_logps(*grouped_batch(tok, LAYOUTS["groups"]))
    assert calls == [12]
    with pytest.raises(ValueError, match="share_prompt_prefix must be a bool, got 'yes'"):
        LMPolicy(tiny_lm, tok, share_prompt_prefix="yes")
    assert LMPolicy(tiny_lm, tok).share_prompt_prefix is True


def test_unsupported_architectures_take_the_full_forward(tiny_tokenizer):
    """Sliding-window layers and architectures outside SHARED_PREFIX_MODEL_TYPES are not shared."""
    import transformers as tf

    tok = tiny_tokenizer
    sliding = tiny_model("qwen2", tok)
    sliding.config.layer_types = ["sliding_attention", "full_attention"]
    assert not supports_shared_prefix(sliding)
    assert supports_shared_prefix(tiny_model("qwen2", tok))
    torch.manual_seed(0)
    neox = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id)).eval()
    assert not supports_shared_prefix(neox)
    policy = LMPolicy(neox, tok)
    calls, _ = trunk_rows(policy.model)
    with torch.no_grad():
        policy.per_token_logps(*grouped_batch(tok, LAYOUTS["groups"]))
    assert calls == [12]


def test_lora_shared_forward_matches_the_full_one(tiny_tokenizer):
    """With LoRA the adapters' gradients and the reference (the base, adapters disabled) agree too."""
    pytest.importorskip("peft")
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model("llama", tok), tok).enable_lora(4)
    for name, p in policy.model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0: move off it so the adapted model differs from the base
            torch.nn.init.normal_(p, std=0.1)
    batch = grouped_batch(tok, LAYOUTS["scattered"])
    shared = forward_and_grads(policy, batch)
    policy.share_prompt_prefix = False
    full = forward_and_grads(policy, batch)
    for a, b in zip(shared[0], full[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[2], full[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[2], full[0][0], atol=1e-3)  # the reference is the base, not the adapted LM
    assert any("lora_A" in n for n in full[1])
    assert_grads_close(shared[1], full[1])


def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Scores that differ within a group, so the group advantages (and the updates) are not 0."""
    return [len(c) / 10 for c in completions]


ENV_KWARGS = {"reward_model": length_reward, "max_new_tokens": 8}
LR = 1e-4


def test_grpo_learns_the_same_with_and_without_sharing():
    """Two GRPO iterations from the same seed end at the same parameters whether prompts are shared: to a
    tenth of the learning rate (AdamW's normalised step turns the float rounding of a near-zero gradient
    entry into a visible fraction of a step in a few entries), while the parameters moved by about it."""
    def run(share: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
        agent = GRPO("TextGen-Arithmetic-v0", policy="tiny", batch_size=8, group_size=4, seed=3,
                     learning_rate=LR, env_kwargs=ENV_KWARGS)
        agent.policy.share_prompt_prefix = share
        calls, _ = trunk_rows(agent.policy.model)
        agent.learn(16)
        return {n: p.detach().clone() for n, p in agent.policy.named_parameters()}, calls

    on, calls_on = run(True)
    off, calls_off = run(False)
    assert 2 in calls_on and 2 not in calls_off  # 2 distinct prompts of 4 completions each
    start = GRPO("TextGen-Arithmetic-v0", policy="tiny", batch_size=8, group_size=4, seed=3,
                 env_kwargs=ENV_KWARGS).policy
    moved = 0
    for (name, p0), (_, p_on), (_, p_off) in zip(start.named_parameters(), on.items(), off.items()):
        torch.testing.assert_close(p_on, p_off, atol=0.1 * LR, rtol=0, msg=name)
        moved += int((p0.detach() - p_on).abs().max() > LR)
    assert moved > 10  # the runs trained


# ------------------------------------------------------------------ the rollout's prefill (KVDecoder share_prefix)
def decode_trace(dec: KVDecoder, ids: torch.Tensor, mask: torch.Tensor, head: str) -> list[torch.Tensor]:
    """The outputs ``head`` (``logits`` or ``last_hidden_state``) of ``dec``'s prefill, 3 steps, an extend
    that restarts row 1 with a 2-token context (the others go on by one token), and one more step, plus the
    decoder's mask and positions after it."""
    B, V = ids.shape[0], 50
    g = torch.Generator().manual_seed(1)
    outs = [getattr(dec.start(ids, mask), head)]
    for _ in range(3):
        outs.append(getattr(dec.step(torch.randint(3, V, (B,), generator=g)), head))
    assert dec.positions is not None
    new = torch.randint(3, V, (B, 2), generator=g)  # (B, W=2)
    attn = torch.ones_like(new)
    attn[0::2, 1] = 0  # even rows: one real column, a pad after it
    keep = torch.ones(B, dtype=torch.bool)
    keep[1] = False
    positions = dec.positions[:, None] + attn.cumsum(1)  # (B, 2)
    positions[1] = torch.tensor([0, 1])
    outs.append(getattr(dec.extend(new, positions, attn, keep=keep), head))
    outs.append(getattr(dec.step(torch.randint(3, V, (B,), generator=g)), head))
    assert dec.attention_mask is not None
    return [*outs, dec.attention_mask, dec.positions]


def rows_seen(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """A list that records the rows of every call of ``model`` itself, and the hook's handle."""
    calls: list[int] = []

    def hook(module, args, kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("part", ["lm", "trunk"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2", "qwen3"])
def test_shared_prefill_gives_the_full_prefills_outputs_and_next_steps(tiny_tokenizer, kind, part):
    """With repeated (scattered) prompts the shared prefill runs the 4 distinct ones only, and the prefill,
    3 steps, an extend and a step after it give the full prefill's outputs, masks and positions."""
    tok = tiny_tokenizer
    lm = tiny_model(kind, tok)
    model, head = (lm, "logits") if part == "lm" else (lm.base_model, "last_hidden_state")
    ids, mask, _, _ = grouped_batch(tok, LAYOUTS["scattered"])
    B = ids.shape[0]
    calls, handle = rows_seen(model)
    with torch.no_grad():
        shared = decode_trace(KVDecoder(model, share_prefix=True), ids, mask, head)
        assert calls == [4] + [B] * 5  # the prefill on the distinct prompts, then every row
        calls.clear()
        full = decode_trace(KVDecoder(model), ids, mask, head)
        assert calls == [B] * 6
    handle.remove()
    assert shared[0].shape[:2] == (B, P)
    for i, (a, b) in enumerate(zip(shared, full)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"output {i}")


def test_shared_prefill_expands_every_per_row_field(tiny_tokenizer):
    """Fields beside the head (here ``hidden_states``) come back with B rows too; the cache is the decoder's."""
    tok = tiny_tokenizer
    model = tiny_model("gpt2", tok)
    ids, mask, _, _ = grouped_batch(tok, LAYOUTS["groups"])
    with torch.no_grad():
        dec = KVDecoder(model, share_prefix=True)
        shared = dec.start(ids, mask)
        full = KVDecoder(model).start(ids, mask)
        model.config.output_hidden_states = True
        shared_h = KVDecoder(model, share_prefix=True).start(ids, mask).hidden_states
        full_h = KVDecoder(model).start(ids, mask).hidden_states
    assert shared.past_key_values is dec.cache
    assert set(shared.keys()) == set(full.keys())
    assert len(shared_h) == len(full_h) == 3
    for a, b in zip(shared_h, full_h):
        assert a.shape[0] == len(ids)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shared_prefill_falls_back_and_checks_its_flag(tiny_tokenizer):
    """Distinct prompts, the same prompt with other padding and architectures outside
    SHARED_PREFIX_MODEL_TYPES take the full prefill; the flag is off by default and must be a bool."""
    import transformers as tf

    tok = tiny_tokenizer
    model = tiny_model("gpt2", tok)
    calls, _ = rows_seen(model)
    with torch.no_grad():
        KVDecoder(model, share_prefix=True).start(*grouped_batch(tok, [0, 1, 2, 3])[:2])
        ids, mask, _, _ = grouped_batch(tok, [0, 0, 1])
        mask[1, 0] = 1  # one more real (pad-id) column in row 1: another prompt
        KVDecoder(model, share_prefix=True).start(ids, mask)
        KVDecoder(model).start(*grouped_batch(tok, LAYOUTS["groups"])[:2])
    assert calls == [4, 3, 12]
    assert KVDecoder(model).share_prefix is False
    torch.manual_seed(0)
    neox = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id)).eval()
    neox_calls, _ = rows_seen(neox)
    with torch.no_grad():
        KVDecoder(neox, share_prefix=True).start(*grouped_batch(tok, LAYOUTS["groups"])[:2])
    assert neox_calls == [12]
    with pytest.raises(ValueError, match="share_prefix must be a bool, got 'yes'"):
        KVDecoder(model, share_prefix="yes")


def test_sample_tokens_keeps_the_full_prefill(tiny_tokenizer):
    """``textenv build-defaults``' sampling (the one KVDecoder user in textenv) does not share prompts."""
    from textenv.decoding import sample_tokens

    tok = tiny_tokenizer
    model = tiny_model("gpt2", tok)
    ids, mask, _, _ = grouped_batch(tok, LAYOUTS["groups"])
    calls, _ = rows_seen(model)
    with torch.no_grad():
        sample_tokens(model, ids, mask, 2, lambda logits: logits.argmax(-1), None)
    assert calls and set(calls) == {12}  # the prefill and the steps, all on the 12 rows


def test_policy_start_shares_the_prefill_with_its_flag(tiny_tokenizer):
    tok = tiny_tokenizer
    policy = LMPolicy(tiny_model("llama", tok), tok)
    ids, mask, _, _ = grouped_batch(tok, LAYOUTS["groups"])
    calls, _ = trunk_rows(policy.model)
    shared = policy.start(ids, mask, generator=torch.Generator().manual_seed(0))
    assert policy._decoder is not None and policy._decoder.share_prefix is True
    policy.share_prompt_prefix = False
    full = policy.start(ids, mask, generator=torch.Generator().manual_seed(0))
    policy.end()
    assert calls == [4, 12]
    assert torch.equal(shared.actions, full.actions)
    torch.testing.assert_close(shared.logprobs, full.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.values, full.values, atol=1e-5, rtol=1e-5)


def test_grpo_rollout_samples_the_same_tokens_with_and_without_sharing():
    """A seeded GRPO rollout (4 prompts x 4 completions, the tiny policy, CPU) samples the same tokens with
    the shared prefill as with the full one, and the same log-probs, values and reference log-probs. (A
    float-rounding difference could flip a draw that lands within it of a CDF step; on CPU the prefill of
    the U rows is bitwise that of the B rows for this model, so no draw is that close here.)"""
    def run(share: bool):
        agent = GRPO("TextGen-Arithmetic-v0", policy="tiny", batch_size=16, group_size=4, seed=5,
                     env_kwargs={**ENV_KWARGS, "max_new_tokens": 12})
        agent.policy.share_prompt_prefix = share
        calls, _ = trunk_rows(agent.policy.model)
        return agent.collect(), calls  # Agent.collect -> collect_rollout, the groups of identical prompts

    on, calls_on = run(True)
    off, calls_off = run(False)
    assert calls_on[0] == 4 and calls_off[0] == 16  # the prefill; the steps and the training forwards after
    assert on.prompts == off.prompts and len(set(on.prompts)) == 4
    assert torch.equal(on.tokens, off.tokens) and torch.equal(on.mask, off.mask)
    assert on.completions == off.completions
    assert len(set(on.completions)) > 4  # the completions of a group differ: they were sampled
    for name in ("logprobs", "values", "ref_logprobs"):
        torch.testing.assert_close(getattr(on, name), getattr(off, name), atol=1e-5, rtol=1e-5, msg=name)
