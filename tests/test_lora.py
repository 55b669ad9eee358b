"""Issue 11 item 5, LoRA through peft: --lora-r / --lora-alpha / target modules by architecture, the reference
is the same model with the adapters disabled (no second copy), checkpoints save the adapter (safetensors) and
``textenv sample`` / ``evaluate`` / ``Agent.load`` load it; bad settings are refused naming the value."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("peft")

import textenv  # noqa: F401  (registers the ids)
from agents import GRPO, PPO, Agent
from agents.base import AgentConfig
from agents.cli import main
from agents.policy import LMPolicy, resolve_lora_targets
from textenv.vector import TextGenVectorEnv

ARITH = "TextGen-Arithmetic-v0"


def digit_share(prompts, completions):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def env_kwargs(tok, **kw):
    return {"task": "arithmetic", "tokenizer": tok, "reward_model": digit_share, "max_new_tokens": 6, **kw}


def gpt2(tok):
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=2, n_embd=32, n_head=2, bos_token_id=tok.eos_token_id,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()


def llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def batch(tok, B=4, P=5, T=6):
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, len(tok), (B, P), generator=g)
    return q, torch.ones(B, P, dtype=torch.long), torch.randint(0, len(tok), (B, T), generator=g), torch.ones(B, T)


def base_logps(model, policy, q, qm, t):
    """Log-probs of ``t`` under a plain (adapter-free) ``model``, as a reference."""
    plain = LMPolicy(model, policy.tokenizer, with_reference=False, temperature=policy.temperature)
    with torch.no_grad():
        return plain.per_token_logps(q, qm, t, torch.ones_like(t, dtype=torch.float)).logprobs


@pytest.mark.parametrize("build", [gpt2, llama])
def test_lora_trains_the_adapter_and_the_value_head_and_the_reference_is_the_base(tiny_tokenizer, build):
    model = build(tiny_tokenizer)
    pristine = copy.deepcopy(model)
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    agent = PPO(envs, policy=LMPolicy(model, tiny_tokenizer), batch_size=4, lora_r=4, learning_rate=1e-2)
    policy = agent.policy
    assert policy.ref_model is None and policy.has_reference  # no second copy of the weights
    assert agent.config.lora_alpha == 8.0  # default 2 r, recorded
    targets = set(resolve_lora_targets(model.config.model_type))
    adapted = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == targets
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    assert any(n.startswith("value_head.") for n in trainable)  # the value head stays trainable
    q, qm, t, m = batch(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    agent.learn(8, progress=False)
    after = dict(policy.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= trainable and any("lora_B" in n for n in changed)
    # the reference: the base without the adapters, which did not move
    want = base_logps(pristine, policy, q, qm, t)
    torch.testing.assert_close(policy.ref_logprobs(q, qm, t, m), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy.per_token_logps(q, qm, t, m).logprobs, want, atol=1e-4)  # the policy moved
    # after the disabled-adapter pass the adapters are on again
    torch.testing.assert_close(policy.per_token_logps(q, qm, t, m).logprobs,
                               policy.per_token_logps(q, qm, t, m).logprobs)
    assert policy.ref_model is None and all(not m.disable_adapters for m in model.modules() if hasattr(m, "lora_A"))


def test_lora_checkpoint_holds_the_adapter_and_loads_back(tiny_tokenizer, tmp_path):
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    agent = GRPO(envs, policy=LMPolicy(gpt2(tiny_tokenizer), tiny_tokenizer), batch_size=4, group_size=2,
                 lora_r=2, lora_alpha=4.0, learning_rate=1e-2)
    agent.learn(4, progress=False)
    ckpt = agent.save(tmp_path / "ckpt")
    assert (ckpt / "policy" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((ckpt / "policy" / "adapter" / "adapter_config.json").read_text())["r"] == 2
    assert not (ckpt / "reference").exists()  # the reference is the base in policy/
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (ckpt / "policy").rglob("*"))
    base_keys = json.loads((ckpt / "policy" / "config.json").read_text())["model_type"]
    assert base_keys == "gpt2"
    q, qm, t, m = batch(tiny_tokenizer)
    loaded = Agent.load(ckpt, env=envs)
    assert loaded.config.lora_r == 2 and loaded.config.lora_alpha == 4.0
    assert loaded.policy.lora_settings == agent.policy.lora_settings
    with torch.no_grad():
        for fn in ("per_token_logps",):
            a, b = getattr(agent.policy, fn)(q, qm, t, m), getattr(loaded.policy, fn)(q, qm, t, m)
            torch.testing.assert_close(a.logprobs, b.logprobs)
            torch.testing.assert_close(a.values, b.values)
    torch.testing.assert_close(agent.policy.ref_logprobs(q, qm, t, m), loaded.policy.ref_logprobs(q, qm, t, m))
    loaded.learn(4, progress=False)  # training resumes on the adapter
    # the policy directory alone is a LoRA policy too (what `textenv sample` and evaluate read)
    alone = LMPolicy.from_pretrained(ckpt / "policy")
    assert alone.lora_settings == agent.policy.lora_settings
    torch.testing.assert_close(alone.ref_logprobs(q, qm, t, m), agent.policy.ref_logprobs(q, qm, t, m))


def test_cli_train_sample_evaluate_with_lora(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--agent", "grpo", "--env", ARITH, "--policy", "tiny", "--episodes", "8",
                 "--eval-episodes", "4", "--batch-size", "4", "--group-size", "2", "--lora-r", "4",
                 "--gradient-checkpointing", "--no-progress", "--out", str(out)]) == 0
    ckpts = sorted(out.rglob("adapter_model.safetensors"))
    assert ckpts
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--episodes", "4"]) == 0
    assert "gold_score" in json.loads(capsys.readouterr().out)
    assert main(["sample", "--checkpoint", str(out), "--prompt", "12+30=", "-n", "2"]) == 0
    assert capsys.readouterr().out.count("12+30=") == 2


@pytest.mark.parametrize("flags, message", [
    (["--lora-r", "0"], "lora_r must be an integer >= 1, got 0"),
    (["--lora-r", "-2"], "lora_r must be an integer >= 1, got -2"),
    (["--lora-r", "4", "--lora-alpha", "0"], "lora_alpha must be > 0, got 0.0"),
    (["--lora-alpha", "8"], "lora_alpha 8.0 is given but lora_r is not"),
    (["--lora-r", "4", "--lora-target-modules", "c_attn,,x"], "lora_target_modules must be .* got 'c_attn,,x'"),
    (["--lora-r", "4", "--lora-target-modules", "nope"], r"lora_target_modules 'nope' .*do not fit"),
])
def test_cli_refuses_bad_lora_flags_in_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", "--agent", "grpo", "--env", ARITH, "--policy", "tiny", "--episodes", "4",
                 "--batch-size", "4", "--group-size", "2", "--no-progress", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_bad_lora_settings_in_the_api_leave_the_policy_usable(tiny_tokenizer):
    with pytest.raises(ValueError, match="lora_r must be None or an integer, got 1.5"):
        AgentConfig(lora_r=1.5)
    with pytest.raises(ValueError, match="lora_r must be None or an integer, got True"):
        AgentConfig(lora_r=True)
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    policy = LMPolicy(gpt2(tiny_tokenizer), tiny_tokenizer)
    with pytest.raises(ValueError, match=r"lora_target_modules 'q_proj' \(\['q_proj'\]\) do not fit this GPT2LMHeadModel"):
        GRPO(envs, policy=policy, batch_size=4, group_size=2, lora_r=4, lora_target_modules="q_proj")
    assert policy.peft_model is None and policy.ref_model is not None  # unchanged
    assert not any(hasattr(m, "lora_A") for m in policy.model.modules())
    with pytest.raises(ValueError, match="lora_r must be an integer >= 1, got 0"):
        policy.enable_lora(0)
    GRPO(envs, policy=policy, batch_size=4, group_size=2).learn(4, progress=False)  # still usable, full FT
    lora = LMPolicy(gpt2(tiny_tokenizer), tiny_tokenizer).enable_lora(2)
    with pytest.raises(ValueError, match="LoRA is already enabled"):
        lora.enable_lora(2)
    with pytest.raises(ValueError, match=r"already has a LoRA adapter \(r=2, alpha=4.0\) but the config asks for lora_r=8"):
        GRPO(envs, policy=lora, batch_size=4, group_size=2, lora_r=8)


def test_a_broken_adapter_is_refused_naming_the_file(tiny_tokenizer, tmp_path):
    policy = LMPolicy(gpt2(tiny_tokenizer), tiny_tokenizer).enable_lora(2)
    policy.save(tmp_path / "p")
    weights = tmp_path / "p" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=r"cannot load the LoRA adapter .*adapter"):
        LMPolicy.from_pretrained(tmp_path / "p")
    weights.unlink()
    with pytest.raises(ValueError, match=r"has no adapter_model.safetensors"):
        LMPolicy.from_pretrained(tmp_path / "p")


def test_target_modules_by_architecture():
    assert resolve_lora_targets("gpt2") == ["c_attn", "c_proj", "c_fc"]
    assert resolve_lora_targets("llama")[:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_lora_targets("qwen2") == resolve_lora_targets("llama")
    assert resolve_lora_targets("something-else") == "all-linear"
    assert resolve_lora_targets("gpt2", "c_attn, c_fc") == ["c_attn", "c_fc"]
    with pytest.raises(ValueError, match="got 3"):
        resolve_lora_targets("gpt2", 3)  # type: ignore[arg-type]
