"""textenv.decoding: the one KV-cached decoder gives the logits of full forwards (GPT-2 and Llama, left and
right padding, rows restarting mid-batch), finds the cache argument's name, and samples to EOS."""

from __future__ import annotations

import doctest

import pytest
import torch

import textenv.decoding
from textenv.decoding import KVDecoder, cache_arg_name, cache_kwargs, positions_from_mask, sample_tokens


def tiny_lm(kind: str, vocab: int = 50) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(tiny_gpt2_config(vocab, n_layer=2, n_embd=32, n_head=2)).eval()
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def full_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, L, V) of one uncached forward, positions from the mask as the decoder uses them."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits


def test_positions_from_mask():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 2], [0, 0, 1, 2]]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_start_and_step_give_the_full_forward_logits(kind):
    model = tiny_lm(kind)
    ids = torch.tensor([[0, 0, 5, 6, 7], [0, 9, 8, 7, 6], [1, 2, 3, 4, 5]])  # left-padded prompts
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    new = torch.tensor([[11, 12, 13], [14, 15, 16], [17, 18, 19]])  # (B, 3) tokens fed one step at a time
    dec = KVDecoder(model)
    with torch.no_grad():
        cached = [dec.start(ids, mask).logits[:, -1]]
        cached += [dec.step(new[:, t]).logits[:, -1] for t in range(new.shape[1])]
    assert dec.num_columns == 8 and dec.attention_mask is not None and dec.attention_mask.shape == (3, 8)
    assert dec.positions is not None and dec.positions.tolist() == [5, 6, 7]
    all_ids, all_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    ref = full_logits(model, all_ids, all_mask)  # (B, 8, V)
    for t, logits in enumerate(cached):
        torch.testing.assert_close(logits, ref[:, 4 + t], atol=1e-5, rtol=0)
    dec.reset()
    assert not dec.started and dec.num_columns == 0
    with pytest.raises(RuntimeError, match="start"):
        dec.step(new[:, 0])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_extend_restarts_a_row_inside_the_batch(kind):
    """Row 0 goes on by one token; row 1 starts over with a new 3-token context, its old columns masked out."""
    model = tiny_lm(kind)
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    mask = torch.ones_like(ids)
    dec = KVDecoder(model)
    with torch.no_grad():
        dec.start(ids, mask)
        tokens = torch.tensor([[9, 0, 0], [20, 21, 22]])  # (B, W=3)
        positions = torch.tensor([[3, 3, 3], [0, 1, 2]])
        attn = torch.tensor([[1, 0, 0], [1, 1, 1]])
        h = dec.extend(tokens, positions, attn, keep=torch.tensor([True, False])).logits  # (B, 3, V)
    assert dec.attention_mask is not None and dec.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert dec.positions is not None and dec.positions.tolist() == [3, 2]
    torch.testing.assert_close(h[0, 0], full_logits(model, torch.tensor([[3, 4, 5, 9]]), torch.ones(1, 4))[0, -1],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(h[1, 2], full_logits(model, torch.tensor([[20, 21, 22]]), torch.ones(1, 3))[0, -1],
                               atol=1e-5, rtol=0)


def test_cache_argument_name():
    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):  # transformers 4.x
            return input_ids

    assert cache_arg_name(OldStyle()) == "past_key_values"
    model = tiny_lm("gpt2")
    assert cache_arg_name(model) == cache_arg_name(model.base_model) == "cache"  # transformers 5.x
    marker = object()
    assert cache_kwargs(model, marker) == {"cache": marker}


def test_sample_tokens_stops_each_row_after_eos():
    model = tiny_lm("gpt2")
    eos = 7
    calls = []

    def sample(logits: torch.Tensor) -> torch.Tensor:  # row 0 ends at its 2nd token, row 1 runs out
        calls.append(logits.shape)
        return torch.tensor([eos if len(calls) == 2 else 3, 4])

    out = sample_tokens(model, torch.tensor([[0, 5], [6, 5]]), torch.tensor([[0, 1], [1, 1]]), 4, sample, eos)
    assert out == [[3, eos], [4, 4, 4, 4]]
    assert calls == [torch.Size([2, 50])] * 4
    calls.clear()
    out = sample_tokens(model, torch.tensor([[5], [6]]), torch.ones(2, 1, dtype=torch.long), 4,
                        lambda logits: torch.full((2,), eos), eos)
    assert out == [[eos], [eos]]  # every row done: no further step
    with pytest.raises(ValueError, match="max_new_tokens.*0"):
        sample_tokens(model, torch.tensor([[5]]), torch.ones(1, 1), 0, sample, eos)


def test_module_docstring_example_runs():
    result = doctest.testmod(textenv.decoding)
    assert result.attempted > 0 and result.failed == 0


def test_sample_tokens_runs_the_full_budget_whatever_the_token_ids():
    """A sampled token id equal to max_new_tokens - 1 must not end sampling early (the step counter and the
    token ids are different variables), and no forward runs after the last token."""
    model = tiny_lm("gpt2")
    forwards = []
    handle = model.register_forward_hook(lambda mod, args, out: forwards.append(1))
    try:
        out = sample_tokens(model, torch.tensor([[5], [6]]), torch.ones(2, 1, dtype=torch.long), 4,
                            lambda logits: torch.full((2,), 3), None)
    finally:
        handle.remove()
    assert out == [[3, 3, 3, 3], [3, 3, 3, 3]]
    assert len(forwards) == 4  # the prefill and 3 steps
