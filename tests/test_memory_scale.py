"""Issue 11 item 5, memory: log-probs and entropy in chunks (never the whole (B, T, V) float32 logits, forward
or backward), gradient checkpointing (--gradient-checkpointing), and LM heads padded beyond the vocabulary."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import textenv  # noqa: F401  (registers the ids)
from agents import GRPO, PPO
from agents.base import AgentConfig, check_policy_fits_env
from agents.policy import LMPolicy, chunked_logps_entropy
from textenv.vector import TextGenVectorEnv


def digit_share(prompts, completions):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def env_kwargs(tok, **kw):
    return {"task": "arithmetic", "tokenizer": tok, "reward_model": digit_share, "max_new_tokens": 6, **kw}


def make_policy(tok, head_rows=None, **kwargs):
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    cfg = tiny_gpt2_config(head_rows or len(tok), n_layer=2, n_embd=32, n_head=2, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LMPolicy(GPT2LMHeadModel(cfg).eval(), tok, **kwargs)


def batch(tok, B=3, P=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = len(tok)
    query_ids = torch.randint(0, V, (B, P), generator=g)
    query_mask = torch.ones(B, P, dtype=torch.long)
    query_mask[0, :2] = 0  # left padding
    tokens = torch.randint(0, V, (B, T), generator=g)
    return query_ids, query_mask, tokens, torch.ones(B, T)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def saved_elements(fn):
    """The 4-byte elements of the distinct storages autograd saves for the backward while ``fn()`` runs (a
    weight saved by every chunk, or slices of one tensor, count once), and ``fn()``'s result."""
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()) // 4, out


# ------------------------------------------------------------------------------ chunked log-probs
def reference_logps_entropy(policy, q, qm, t, m):
    logits, _ = policy._completion_logits(policy.model, q, qm, t, m)  # (B, T, V), the unchunked way
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, t[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 4, 5, 1000])
def test_chunked_logps_entropy_and_grads_match_the_unchunked_ones(tiny_tokenizer, chunk):
    q, qm, t, m = batch(tiny_tokenizer)
    policy = make_policy(tiny_tokenizer, temperature=0.7)
    want_lp, want_ent = reference_logps_entropy(policy, q, qm, t, m)
    (want_lp.sum() + 0.3 * want_ent.sum()).backward()
    want_grads = [p.grad.clone() for p in policy.model.parameters()]
    policy.zero_grad(set_to_none=True)

    policy.logits_chunk = chunk
    ev = policy.per_token_logps(q, qm, t, m)
    torch.testing.assert_close(ev.logprobs, want_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ev.entropy, want_ent, rtol=1e-5, atol=1e-5)
    (ev.logprobs.sum() + 0.3 * ev.entropy.sum()).backward()
    for p, want in zip(policy.model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
    # the reference, chunked too
    torch.testing.assert_close(policy.ref_logprobs(q, qm, t, m), want_lp, rtol=1e-5, atol=1e-5)


def test_chunked_log_prob_step_never_holds_the_whole_logits(tiny_tokenizer):
    q, qm, t, m = batch(tiny_tokenizer, B=8, T=32)
    V, BT, chunk = len(tiny_tokenizer), 8 * 32, 4  # (B, T, V) logits: 102400 floats; the head (V, H): 12800
    policy = make_policy(tiny_tokenizer)

    with torch.no_grad():
        h0 = policy._completion_hidden(policy.model, q, qm, t)  # (B, T, H): the trunk's part is not measured

    def step(chunk_tokens):
        """The log-prob step alone (head, log-softmax, gather, entropy), forward and backward."""
        policy.zero_grad(set_to_none=True)
        h = h0.clone().requires_grad_(True)
        mode = LargestTensor()
        with mode:
            saved, (logp, ent) = saved_elements(lambda: chunked_logps_entropy(
                h, t, policy.lm_head, vocab_size=V, chunk_tokens=chunk_tokens))
            (logp.sum() + ent.sum()).backward()
        assert h.grad is not None and policy.lm_head.weight.grad is not None
        return mode.largest, saved

    largest_full, saved_full = step(BT)  # one chunk: the (B, T, V) logits exist and are saved
    largest_chunked, saved_chunked = step(chunk)
    assert largest_full >= BT * V
    assert largest_chunked < BT * V / 4  # forward and backward: one chunk's logits at most (plus weights)
    assert largest_chunked <= max(chunk * V, V * 32)  # a chunk of logits, or the head weight and its grad
    assert saved_full >= BT * V
    assert saved_chunked < BT * V / 4  # what waits for the backward: hidden states, not logits


def test_chunked_logps_entropy_refuses_bad_arguments():
    head = torch.nn.Linear(4, 10)
    h, t = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_tokens must be an integer >= 1, got 0"):
        chunked_logps_entropy(h, t, head, chunk_tokens=0)
    with pytest.raises(ValueError, match=r"vocab_size must be in \[1, 10\].*got 11"):
        chunked_logps_entropy(h, t, head, vocab_size=11)
    with pytest.raises(ValueError, match=r"do not match tokens \(2, 2\)"):
        chunked_logps_entropy(h, t[:, :2], head)
    with pytest.raises(ValueError, match="logits_chunk must be None or an integer >= 1, got 0"):
        LMPolicy(torch.nn.Module(), None, logits_chunk=0)


def test_agents_train_with_small_chunks_as_with_one(tiny_tokenizer):
    """A GRPO iteration with 3-token chunks gives the parameters of one with the whole batch in one chunk."""
    params = []
    for chunk in (None, 3):
        envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
        agent = GRPO(envs, policy=make_policy(tiny_tokenizer, logits_chunk=chunk), batch_size=4, group_size=2)
        agent.learn(4, progress=False)
        params.append(torch.cat([p.detach().flatten() for p in agent.policy.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ gradient checkpointing
def test_gradient_checkpointing_gives_the_same_grads_and_saves_less(tiny_tokenizer):
    q, qm, t, m = batch(tiny_tokenizer)
    results = []
    for on in (False, True):
        policy = make_policy(tiny_tokenizer).set_gradient_checkpointing(on)
        policy.model.eval()  # as the learn loop: dropout off
        saved, ev = saved_elements(lambda p=policy: p.per_token_logps(q, qm, t, m))
        (ev.logprobs.sum() + ev.values.sum()).backward()
        results.append((saved, ev.logprobs.detach(), [p.grad.clone() for p in policy.parameters()]))
        assert not any(mod.training for mod in policy.model.modules())  # restored to eval after the forward
    (saved_off, lp_off, g_off), (saved_on, lp_on, g_on) = results
    torch.testing.assert_close(lp_on, lp_off)
    for a, b in zip(g_on, g_off):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert saved_on < saved_off  # the layers' activations are recomputed, not kept


def test_gradient_checkpointing_flag_reaches_the_policy_and_a_checkpoint(tiny_tokenizer, tmp_path):
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    agent = PPO(envs, policy=make_policy(tiny_tokenizer), batch_size=4, gradient_checkpointing=True)
    assert agent.policy.gradient_checkpointing
    agent.learn(4, progress=False)
    loaded = PPO.load(agent.save(tmp_path / "ckpt"), env=envs)
    assert loaded.config.gradient_checkpointing and loaded.policy.gradient_checkpointing
    with pytest.raises(ValueError, match="gradient_checkpointing must be a bool, got 'yes'"):
        AgentConfig(gradient_checkpointing="yes")


def test_gradient_checkpointing_cli_flag(tiny_tokenizer):
    from agents.cli import train_types
    from textenv.cli_framework import make_parser

    flags = make_parser("textenv", train_types(["--agent", "grpo"])).parse_args_into_dataclasses(
        ["--gradient-checkpointing", "--lora-r", "4"], look_for_args_file=False)[1]
    assert flags.gradient_checkpointing is True and flags.lora_r == 4


# ------------------------------------------------------------------------------ padded LM heads
def test_a_head_padded_beyond_the_vocabulary_acts_and_trains_within_it(tiny_tokenizer):
    V = len(tiny_tokenizer)
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer, max_new_tokens=12))
    policy = make_policy(tiny_tokenizer, head_rows=V + 64)
    with torch.no_grad():  # make the padding rows overwhelmingly likely: they must still never be sampled
        policy.lm_head.weight[V:] = 0.0
        policy.lm_head.bias = torch.nn.Parameter(torch.zeros(V + 64))
        policy.lm_head.bias[V:] = 50.0
    assert policy.vocab_size == V
    check_policy_fits_env(policy, envs)
    agent = GRPO(envs, policy=policy, batch_size=4, group_size=2)
    batch_ = agent.collect()
    assert int(batch_.tokens.max()) < V
    agent.learn(4, progress=False)
    q, qm, t, m = batch(tiny_tokenizer)
    ev = agent.policy.per_token_logps(q, qm, t, m)
    logits, _ = agent.policy._completion_logits(agent.policy.model, q, qm, t, m)
    assert logits.shape[-1] == V  # the padding is never part of the distribution
    torch.testing.assert_close(ev.logprobs.exp().sum(), torch.log_softmax(logits, -1).gather(
        -1, t[..., None]).exp().sum(), rtol=1e-5, atol=1e-5)


def test_a_head_smaller_than_the_vocabulary_is_still_refused(tiny_tokenizer):
    V = len(tiny_tokenizer)
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    with pytest.raises(ValueError, match=rf"{V} tokens but the policy's LM head has {V - 3} logits"):
        GRPO(envs, policy=make_policy(tiny_tokenizer, head_rows=V - 3), batch_size=4, group_size=2)
    # SB3's policy samples from every logit: a larger head is refused there
    with pytest.raises(ValueError, match=rf"{V} tokens but the policy's LM head has {V + 2} logits"):
        check_policy_fits_env(make_policy(tiny_tokenizer, head_rows=V + 2), envs, larger_head=False)
    GRPO(envs, policy=make_policy(tiny_tokenizer), batch_size=4, group_size=2).learn(4, progress=False)


# ------------------------------------------------------------------------------ the memory benchmark
def test_memory_benchmark_cases_run_at_smoke_size(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed
    from benchmarks import memory

    for name in ("unchunked", "chunked"):
        r = memory.run_logprob_case(name, memory.SMOKE)
        assert r["peak_rss_mib"] >= r["baseline_rss_mib"] > 0 and r["V"] == memory.SMOKE["vocab"]
    r = memory.run_grpo_case("lora", memory.SMOKE)
    assert 0 < r["trainable_params"] < r["params"] and r["peak_rss_mib"] > 0


def test_memory_benchmark_smoke_never_writes_the_committed_results(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    results = repo / "benchmarks" / "results" / "memory-cpu.json"
    before = results.read_bytes() if results.exists() else None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--smoke", "--cases", "logprob:chunked",
                           "--threads", "1"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (results.read_bytes() if results.exists() else None) == before
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--cases", "grpo:nope"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown case 'grpo:nope'" in proc.stderr
