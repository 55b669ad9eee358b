"""The device and dtype path (issue 11 item 4), tested on CPU: ``device=``/``dtype=`` values, the env's reward
model on the agent's device, bf16 mixed precision (fp32 master weights, bf16 activations under autocast,
float32 log-probs and losses) for PPO and GRPO, rollout buffers on the policy's device with one host copy per
token, fused AdamW on CUDA, and the CLI's refusals."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest
import torch

import textenv  # noqa: F401 (registers the env ids)
from agents import GRPO, PPO, REINFORCE
from agents.base import AgentConfig, adamw_kwargs
from agents.rollout import collect_rollout
from tests.test_agents import LEARN, MAX_NEW_TOKENS, digit_share, make_agent, params, tiny_policy
from textenv.models import load_causal_lm, resolve_device, resolve_dtype
from textenv.rewards.resolve import resolve_reward_model

CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu", "", 3, None, "cpu:0"])
def test_bad_device_values_are_refused_naming_them(bad):
    with pytest.raises(ValueError, match="device must be") as err:
        resolve_device(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        AgentConfig(device=bad)


@pytest.mark.skipif(CUDA, reason="tests the machine without CUDA")
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_naming_it(value):
    with pytest.raises(ValueError, match=f"'{value}' asked for but CUDA is not available"):
        resolve_device(value)


def test_a_torch_device_is_recorded_as_its_string():
    assert AgentConfig(device=torch.device("cpu")).device == "cpu"


def test_auto_device_and_dtype_on_this_machine():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32  # CPU: fp32 by default
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # asked for, bf16 works on CPU too
    assert resolve_dtype("float32", "cpu") == torch.float32


@pytest.mark.parametrize("bad", ["float8", "float16", "fp32", "bf16", None, 32])
def test_bad_dtype_values_are_refused_naming_them(bad):
    with pytest.raises(ValueError, match="dtype must be one of") as err:
        resolve_dtype(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="dtype must be one of"):
        AgentConfig(dtype=bad)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_causal_lm("tiny", dtype=bad)


def test_load_causal_lm_dtype(tiny_tokenizer):
    assert next(load_causal_lm("tiny", tiny_tokenizer, n_layer=1).parameters()).dtype == torch.float32
    model = load_causal_lm("tiny", tiny_tokenizer, dtype="bfloat16", n_layer=1)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------------------------------------- env device
@pytest.mark.parametrize("bad", ["tpu", "cuda:x"])
def test_env_device_kwarg_refuses_bad_values(bad):
    with pytest.raises(ValueError, match=f"device must be .*got '{bad}'"):
        gym.make("TextGen-v0", reward_model="gold", device=bad)
    with pytest.raises(ValueError, match=f"device must be .*got '{bad}'"):
        gym.make_vec("TextGen-v0", num_envs=2, reward_model="gold", device=bad)
    with pytest.raises(ValueError, match=f"reward model device must be .*got '{bad}'"):
        resolve_reward_model("gold", device=bad)


def test_the_agent_passes_its_device_to_the_envs_reward_model(tiny_tokenizer, monkeypatch):
    """An agent that builds its env from an id gives the env its device, and the env gives it to the
    reward model it resolves (the shipped default, a directory, an HF id all load there)."""
    import textenv.rewards as rewards

    seen = []
    real = rewards.resolve_reward_model

    def spy(spec, task=None, device=None, tokenizer=None):  # None: the env gave no device
        seen.append(device)
        return real(spec, task, "cpu" if device is None else device, tokenizer)

    monkeypatch.setattr(rewards, "resolve_reward_model", spy)
    agent = PPO("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), batch_size=4, device="cpu",
                env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS})
    assert seen == [agent.device]
    assert agent.envs.setup.reward_model is not None
    # env_kwargs win: a user who wants the reward model elsewhere says so
    seen.clear()
    PPO("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), batch_size=4, device="cpu",
        env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS, "device": "auto"})
    assert seen == [resolve_device("auto")]


def test_a_directory_reward_model_loads_on_the_device_given(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from textenv.models import load_tokenizer

    tok = load_tokenizer("default")
    cfg = GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=64, num_labels=1,
                     pad_token_id=tok.pad_token_id)
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    env = gym.make("TextGen-v0", reward_model=str(tmp_path / "rm"), device="cpu")
    rm = env.unwrapped.setup.reward_model
    assert rm.device == torch.device("cpu") and next(rm.model.parameters()).device.type == "cpu"
    assert len(rm(["a"], ["b"])) == 1


# ---------------------------------------------------------------------------------------------- bf16
def _dtypes_seen(policy):
    """Record the dtype of the LM head's output (the logits, a matmul's activations: bf16 under autocast;
    layer norms and the residual stream stay float32 by autocast's rules) on every forward."""
    seen: list[torch.dtype] = []
    policy.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("cls", [PPO, GRPO], ids=lambda c: c.name)
def test_bf16_learn_keeps_fp32_master_weights_and_float32_losses(tiny_tokenizer, cls):
    agent = make_agent(cls, tiny_tokenizer, dtype="bfloat16", **({"group_size": 4} if cls is GRPO else {}))
    assert agent.dtype == torch.bfloat16 and agent.policy.compute_dtype == torch.bfloat16
    start = params(agent)
    seen = _dtypes_seen(agent.policy)
    agent.learn(16, progress=False)
    # trained weights and AdamW's states stay float32 (master weights); the frozen reference is stored in bf16
    assert {p.dtype for p in agent.policy.parameters()} == {torch.float32}
    assert all(v.dtype == torch.float32 for st in agent.optimizer.state.values() for v in st.values()
               if torch.is_tensor(v) and v.is_floating_point())
    assert {p.dtype for p in agent.policy.ref_model.parameters()} == {torch.bfloat16}
    # acting and training forwards ran in bf16 (autocast)
    assert seen and set(seen) == {torch.bfloat16}
    # the losses and metrics are finite; the weights moved
    for row in agent.history:
        assert all(torch.isfinite(torch.tensor(v)) for v in row.values()), row
    assert any(not torch.equal(start[k], v) for k, v in agent.policy.state_dict().items())
    # log-probs, values, entropy are float32, from bf16 activations
    batch = collect_rollout(agent.policy, agent.envs, seed=0)
    assert batch.logprobs.dtype == batch.ref_logprobs.dtype == batch.values.dtype == torch.float32
    out = agent.policy.per_token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
    assert out.logprobs.dtype == out.values.dtype == out.entropy.dtype == torch.float32
    # the same agent keeps working after a save/load round trip, in bf16
    m = agent.evaluate(8)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_float32_is_plain(tiny_tokenizer):
    agent = make_agent(PPO, tiny_tokenizer, dtype="float32")
    seen = _dtypes_seen(agent.policy)
    agent.learn(8, progress=False)
    assert set(seen) == {torch.float32}
    assert {p.dtype for p in agent.policy.ref_model.parameters()} == {torch.float32}


@pytest.mark.parametrize("cls", [GRPO, PPO], ids=lambda c: c.name)
def test_bf16_still_learns_the_tiny_task(tiny_tokenizer, cls):
    """The tiny learning test of tests/test_agents.py, in bf16: the reward still goes up."""
    agent = cls("TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), batch_size=32, kl_coef=0.0,
                dtype="bfloat16", env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS},
                **LEARN[cls])
    before = agent.evaluate(64)
    agent.learn(32 * 15, progress=False)
    after = agent.evaluate(64)
    assert after["reward"] > before["reward"] + 0.1, (before, after)


def test_bf16_checkpoint_round_trip_and_dtype_override(tiny_tokenizer, tmp_path):
    agent = make_agent(PPO, tiny_tokenizer, dtype="bfloat16")
    agent.learn(8, progress=False)
    agent.save(tmp_path / "ckpt")
    loaded = PPO.load(tmp_path / "ckpt", env=agent.envs)
    assert loaded.config.dtype == "bfloat16" and loaded.policy.compute_dtype == torch.bfloat16
    assert {p.dtype for p in loaded.policy.parameters()} == {torch.float32}  # master weights saved in fp32
    for k, v in agent.policy.state_dict().items():
        assert torch.equal(v, loaded.policy.state_dict()[k]), k
    as_fp32 = PPO.load(tmp_path / "ckpt", env=agent.envs, dtype="float32")
    assert as_fp32.policy.compute_dtype == torch.float32
    as_fp32.learn(8, progress=False)
    with pytest.raises(ValueError, match="dtype must be one of .*'float8'"):
        PPO.load(tmp_path / "ckpt", env=agent.envs, dtype="float8")


# ---------------------------------------------------------------------------------------------- rollouts
def test_rollout_buffers_are_on_the_policy_device_with_one_host_copy_per_token(tiny_tokenizer, monkeypatch):
    """Per token, collect_rollout copies only the actions to the host (before: actions, log-probs and
    values, each with ``.cpu()``); the batch it returns is on the policy's device."""
    agent = make_agent(PPO, tiny_tokenizer, batch_size=4)
    counts = {"cpu": 0, "item": 0, "tolist": 0}
    originals = {name: getattr(torch.Tensor, name) for name in counts}

    def counting(name):
        def method(self, *a, **k):
            counts[name] += 1
            return originals[name](self, *a, **k)
        return method

    steps = []
    real_step = agent.policy.step
    monkeypatch.setattr(agent.policy, "step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    for name in counts:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    batch = collect_rollout(agent.policy, agent.envs, seed=0)
    monkeypatch.undo()
    tokens = len(steps) + 1  # start() samples the first token
    assert tokens == batch.tokens.shape[1] >= 2
    assert counts["cpu"] == tokens and counts["item"] == 0 and counts["tolist"] == 0, counts
    for name, value in batch._asdict().items():
        if torch.is_tensor(value):
            assert value.device == agent.policy.device, name


# ---------------------------------------------------------------------------------------------- optimizer
def test_fused_adamw_on_cuda_and_cpu(tiny_tokenizer):
    assert adamw_kwargs(torch.device("cuda")) == {"fused": True}
    assert adamw_kwargs(torch.device("cuda:1")) == {"fused": True}
    assert adamw_kwargs(torch.device("cpu")) == {"fused": True}
    assert adamw_kwargs(torch.device("meta")) == {}
    agent = make_agent(REINFORCE, tiny_tokenizer, device="cpu")
    assert agent.optimizer.defaults.get("fused") is True


def test_fused_cpu_adamw_takes_the_steps_of_the_default_one():
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(4)]
    out = []
    for kwargs in ({}, {"fused": True}):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **kwargs)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        out.append(params)
    for a, b, w in zip(*out, weights):
        assert float((a - w).detach().abs().max()) > 1e-2  # the steps moved the weights
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_config_records_dtype(tiny_tokenizer):
    agent = make_agent(REINFORCE, tiny_tokenizer)
    assert dataclasses.asdict(agent.config)["dtype"] == "auto"
    assert agent.dtype == (torch.bfloat16 if CUDA and torch.cuda.is_bf16_supported() else torch.float32)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "tpu"], "--device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
    (["--dtype", "float8"], "--dtype must be one of ['auto', 'float32', 'bfloat16'], got 'float8'"),
    (["--agent", "sb3-ppo", "--dtype", "bfloat16"], "--dtype 'bfloat16' is for the native agents"),
    *([] if CUDA else [(["--device", "cuda"], "--device 'cuda' asked for but CUDA is not available")]),
])
def test_cli_refuses_bad_device_and_dtype(tmp_path, capsys, flags, message):
    from agents.cli import main

    out = tmp_path / "run"
    assert main(["train", "--policy", "tiny", "--out", str(out), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- benchmarks
def test_host_sync_benchmark_counts_one_copy_per_token(monkeypatch):
    from benchmarks import host_sync

    r = host_sync.measure(batch_size=4, new_tokens=4, rollouts=2, policy="tiny")
    assert r["host_copies_per_token_step_by_method"].get("cpu") == 1.0  # the actions, and nothing else
    assert set(r["host_copies_per_token_step_by_method"]) <= {"cpu", "numpy"}  # numpy of a CPU tensor: no copy
    assert r["rollout_tokens_per_s"] > 0 and r["decode_steps"] >= 2
    assert torch.Tensor.cpu.__qualname__ == "TensorBase.cpu"  # the counting wrappers were removed


def test_static_cache_decoder_of_the_benchmark_decodes_the_same_tokens():
    """The static-KV-cache loop of benchmarks/decode_compile.py (eager; compiling takes a minute on CPU)
    gives the tokens of the rollout's dynamic-cache loop, from the same seed and left-padded prompts."""
    from benchmarks import decode_compile as dc

    model = dc._model(1, 64, torch.device("cpu"), torch.float32)
    ids, mask = dc._prompts(4, 6, model.config.vocab_size, torch.device("cpu"))
    ref = dc.eager_dynamic(model, ids, mask, 5, seed=3)
    static = dc.StaticDecoder(model, 4, 11, compiled=False)
    assert torch.equal(static.run(ids, mask, 5, seed=3), ref)
    assert torch.equal(static.run(ids, mask, 5, seed=3), ref)  # the cache resets between runs


def test_cuda_without_cuda_leaves_the_python_api_objects_usable(tiny_tokenizer):
    if CUDA:
        pytest.skip("tests the machine without CUDA")
    policy = tiny_policy(tiny_tokenizer)
    envs = make_agent(PPO, tiny_tokenizer, batch_size=4).envs
    with pytest.raises(ValueError, match="device 'cuda:0' asked for but CUDA is not available"):
        PPO(envs, policy=policy, batch_size=4, device="cuda:0")
    with pytest.raises(ValueError, match="device 'cuda' asked for but CUDA is not available"):
        gym.make("TextGen-v0", reward_model="gold", device="cuda")
    agent = PPO(envs, policy=policy, batch_size=4, device="cpu")  # the same env and policy still work
    agent.learn(4, progress=False)
    assert policy.device.type == "cpu" and policy.compute_dtype == torch.float32


def test_cli_train_in_bf16_then_resume_in_float32(tmp_path, capsys):
    """``textenv train --dtype bfloat16`` end to end (CPU), and ``--resume --dtype float32`` changes it."""
    import json

    from agents.cli import main

    out = tmp_path / "run"
    common = ["--no-progress", "--eval-episodes", "4", "--out", str(out)]
    assert main(["train", "--agent", "grpo", "--env", "TextGen-Arithmetic-v0", "--policy", "tiny",
                 "--reward-model", "gold", "--batch-size", "4", "--group-size", "2", "--episodes", "8",
                 "--device", "cpu", "--dtype", "bfloat16", *common]) == 0
    ckpt = sorted(out.glob("checkpoint-*"))[-1]
    assert json.loads((ckpt / "agent.json").read_text())["config"]["dtype"] == "bfloat16"
    assert main(["train", "--resume", "--episodes", "12", "--dtype", "float32", *common]) == 0
    ckpt = sorted(out.glob("checkpoint-*"))[-1]
    meta = json.loads((ckpt / "agent.json").read_text())
    assert meta["config"]["dtype"] == "float32" and meta["episodes"] == 12
    assert "resuming grpo" in capsys.readouterr().out
