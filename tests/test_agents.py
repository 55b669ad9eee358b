"""The policy-gradient agents: learning on a tiny task, evaluation, checkpoints, resuming, bad arguments."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gymnasium.vector import AutoresetMode

import agents
from agents import GRPO, PPO, REINFORCE, RLOO, Agent, LMPolicy
from textenv.vector import TextGenVectorEnv

MAX_NEW_TOKENS = 4


def digit_share(prompts: list[str], completions: list[str]) -> list[float]:
    """Share of digit characters in the completion: learnable in a few updates (about 1 token in 4 of the
    fixture vocabulary holds digits, so a random policy scores about 0.15)."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def tiny_policy(tok, seed: int = 0, **kwargs) -> LMPolicy:
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(len(tok), n_layer=2, n_embd=64, n_head=2, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LMPolicy(GPT2LMHeadModel(cfg).eval(), tok, **kwargs)


def make_envs(tok, num_envs: int, autoreset_mode=AutoresetMode.DISABLED) -> TextGenVectorEnv:
    return TextGenVectorEnv(num_envs=num_envs, autoreset_mode=autoreset_mode, task="arithmetic", tokenizer=tok,
                            reward_model=digit_share, max_new_tokens=MAX_NEW_TOKENS)


def make_agent(cls: type[Agent], tok, batch_size: int = 8, **overrides) -> Agent:
    return cls(make_envs(tok, batch_size), policy=tiny_policy(tok), batch_size=batch_size, **overrides)


def params(agent: Agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# small, fast settings per agent (kl_coef 0: the test is that the reward goes up)
LEARN = {
    REINFORCE: {"learning_rate": 3e-3},
    RLOO: {"learning_rate": 3e-3, "group_size": 4},
    GRPO: {"learning_rate": 3e-3, "group_size": 4},
    PPO: {"learning_rate": 3e-3, "n_epochs": 2, "n_minibatches": 2},
}


@pytest.mark.parametrize("cls", [REINFORCE, RLOO, GRPO, PPO], ids=lambda c: c.name)
def test_agent_learns_tiny_task(tiny_tokenizer, cls):
    """Every agent raises the mean reward of a tiny task within seconds on CPU (built from an env id)."""
    policy = tiny_policy(tiny_tokenizer)
    agent = cls("TextGen-Arithmetic-v0", policy=policy, batch_size=32, kl_coef=0.0,
                env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS}, **LEARN[cls])
    start = params(agent)
    before = agent.evaluate(64)
    agent.learn(32 * 15, progress=False)
    after = agent.evaluate(64)
    assert any(not torch.equal(start[k], v) for k, v in agent.policy.state_dict().items())
    assert agent.episodes == 32 * 15 and agent.iteration == 15 and len(agent.history) == 15
    # random policy: ~0.15; every agent reaches > 0.3 on seeds 0-2, so a 0.1 margin is robust
    assert after["reward"] > before["reward"] + 0.1, (before, after)
    # the reference stays where it was: the KL grows as the policy moves away from it
    assert after["kl"] > before["kl"] + 0.1


def test_evaluate_metrics(tiny_tokenizer):
    agent = make_agent(PPO, tiny_tokenizer)
    m = agent.evaluate(12)  # not a multiple of the batch: 8 + 4 episodes
    assert set(m) == {"reward", "gold_score", "kl", "entropy", "completions/mean_length"}
    assert all(isinstance(v, float) for v in m.values())
    assert 0 <= m["reward"] <= 1 and 0 <= m["gold_score"] <= 1
    assert 1 <= m["completions/mean_length"] <= MAX_NEW_TOKENS
    assert m["entropy"] > 1.0  # a random 400-token policy is far from deterministic
    assert m["kl"] == pytest.approx(0.0, abs=1e-4)  # untrained policy vs its own frozen copy
    assert agent.evaluate(12) == m  # seeded: the same policy gives the same numbers
    # evaluating does not disturb training: same weights after learn whether or not one evaluated
    other = make_agent(PPO, tiny_tokenizer)
    other.learn(8, progress=False)
    agent.learn(8, progress=False)
    assert_same_params(params(agent), params(other))
    assert agent.evaluate(12) != m


@pytest.mark.parametrize(("cls", "overrides"), [
    (PPO, {"adaptive_kl": True, "kl_coef": 0.2, "kl_target": 0.01}),
    (REINFORCE, {"baseline": "ema"}),
    (GRPO, {"group_size": 4}),
], ids=["ppo", "reinforce", "grpo"])
def test_save_load_round_trip(tiny_tokenizer, tmp_path, cls, overrides):
    agent = make_agent(cls, tiny_tokenizer, learning_rate=1e-3, **overrides)
    agent.learn(16, progress=False)
    before = agent.evaluate(8)
    agent.save(tmp_path / "ckpt")
    envs = make_envs(tiny_tokenizer, 8)  # a callable reward model is not saved: the user passes the env again
    loaded = Agent.load(tmp_path / "ckpt", env=envs)

    assert type(loaded) is cls
    assert loaded.envs is envs
    assert loaded.config == agent.config
    assert (loaded.episodes, loaded.iteration) == (16, 2)
    assert loaded.history == agent.history
    assert loaded.extra_state() == agent.extra_state()
    assert_same_params(params(agent), params(loaded))
    ref_a, ref_b = agent.policy.ref_model.state_dict(), loaded.policy.ref_model.state_dict()
    assert all(torch.equal(ref_a[k], ref_b[k]) for k in ref_a)
    opt_a, opt_b = agent.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for i in opt_a["state"]:
        for k, v in opt_a["state"][i].items():
            assert torch.equal(v, opt_b["state"][i][k]), (i, k)
    assert loaded.evaluate(8) == before
    # a subclass loads its own kind only
    other = GRPO if cls is not GRPO else PPO
    with pytest.raises(ValueError, match=cls.__name__):
        other.load(tmp_path / "ckpt", env=envs)
    assert type(cls.load(tmp_path / "ckpt", env=make_envs(tiny_tokenizer, 8))) is cls


def test_load_overrides(tiny_tokenizer, tmp_path):
    agent = make_agent(PPO, tiny_tokenizer, learning_rate=1e-3)
    agent.learn(8, progress=False)
    agent.save(tmp_path / "ckpt")
    loaded = PPO.load(tmp_path / "ckpt", env=make_envs(tiny_tokenizer, 8), learning_rate=2e-4)
    assert loaded.config.learning_rate == 2e-4
    assert all(g["lr"] == 2e-4 for g in loaded.optimizer.param_groups)  # not the saved optimizer's 1e-3
    with pytest.raises(ValueError, match="not_a_field"):
        PPO.load(tmp_path / "ckpt", env=make_envs(tiny_tokenizer, 8), not_a_field=1)
    with pytest.raises(ValueError, match="agent.json"):
        Agent.load(tmp_path / "nowhere")


def test_policy_temperature_is_kept_in_config(tiny_tokenizer, tmp_path):
    """A policy built with its own temperature keeps it, the config records it, a checkpoint restores it;
    an explicit temperature override is applied to the policy."""
    agent = PPO(make_envs(tiny_tokenizer, 8), policy=tiny_policy(tiny_tokenizer, temperature=0.7), batch_size=8)
    assert agent.config.temperature == agent.policy.temperature == 0.7
    before = agent.evaluate(8)
    agent.save(tmp_path / "ckpt")
    loaded = Agent.load(tmp_path / "ckpt", env=make_envs(tiny_tokenizer, 8))
    assert loaded.policy.temperature == 0.7
    assert loaded.evaluate(8) == before
    hot = PPO(make_envs(tiny_tokenizer, 8), policy=tiny_policy(tiny_tokenizer, temperature=0.7), batch_size=8,
              temperature=1.5)
    assert hot.config.temperature == hot.policy.temperature == 1.5


def test_failed_save_leaves_previous_checkpoint(tiny_tokenizer, tmp_path, monkeypatch):
    """A save killed midway leaves the previous checkpoint loadable, and no half-written directory."""
    import os

    agent = make_agent(PPO, tiny_tokenizer, learning_rate=1e-3)
    agent.learn(8, progress=False)
    ckpt = tmp_path / "ckpt"
    agent.save(ckpt)
    saved = params(agent)
    agent.learn(8, progress=False)
    assert any(not torch.equal(saved[k], v) for k, v in params(agent).items())

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the optimizer state")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", boom)
        with pytest.raises(KeyboardInterrupt):
            agent.save(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded = Agent.load(ckpt, env=make_envs(tiny_tokenizer, 8))
    assert_same_params(saved, params(loaded))
    assert loaded.episodes == 8

    # killed after the new checkpoint is written, between moving the old one aside and renaming the new one
    real_replace = os.replace

    def replace(src, dst):
        if ".tmp-" in os.fspath(src) and os.fspath(dst) == os.fspath(ckpt):
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            agent.save(ckpt)
    assert not ckpt.exists()
    loaded = Agent.load(ckpt, env=make_envs(tiny_tokenizer, 8))
    assert_same_params(saved, params(loaded))
    # the next save completes and clears the debris of the old one
    agent.save(ckpt)
    assert_same_params(params(agent), params(Agent.load(ckpt, env=make_envs(tiny_tokenizer, 8))))
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


@pytest.mark.parametrize(("cls", "overrides"), [
    (PPO, {"adaptive_kl": True, "kl_coef": 0.2, "kl_target": 0.01, "n_epochs": 2, "n_minibatches": 2}),
    (GRPO, {"group_size": 4, "num_iterations": 2, "n_minibatches": 2}),
    (REINFORCE, {"baseline": "ema"}),
    (RLOO, {"group_size": 4}),
], ids=["ppo", "grpo", "reinforce", "rloo"])
def test_resume_is_deterministic(tiny_tokenizer, tmp_path, cls, overrides):
    """learn(2N) == learn(N) + save + load + learn(N), bit for bit on CPU (RNG, optimizer, KL controller,
    baseline state all restored)."""
    straight = make_agent(cls, tiny_tokenizer, learning_rate=1e-3, **overrides)
    straight.learn(24, progress=False)

    first = make_agent(cls, tiny_tokenizer, learning_rate=1e-3, **overrides)
    first.learn(16, progress=False)
    first.save(tmp_path / "ckpt")
    del first
    resumed = Agent.load(tmp_path / "ckpt", env=make_envs(tiny_tokenizer, 8))
    resumed.learn(8, progress=False)

    assert resumed.episodes == straight.episodes == 24
    assert_same_params(params(straight), params(resumed))
    assert resumed.extra_state() == straight.extra_state()
    if cls is PPO:
        assert straight.kl_ctl.value != 0.2  # the adaptive controller did move, and resumed from where it was


@pytest.mark.parametrize(("make", "match"), [
    (lambda tok: GRPO(make_envs(tok, 8), policy=tiny_policy(tok), batch_size=8, group_size=3), "group_size 3"),
    (lambda tok: RLOO(make_envs(tok, 8), policy=tiny_policy(tok), batch_size=8, group_size=3), "group_size 3"),
    (lambda tok: PPO(make_envs(tok, 8), policy=tiny_policy(tok), batch_size=8, learning_rate=-1e-3),
     "learning_rate.*-0.001"),
    (lambda tok: PPO(make_envs(tok, 8), policy=tiny_policy(tok), batch_size=8, not_a_field=1), "not_a_field"),
    (lambda tok: PPO(make_envs(tok, 4), policy=tiny_policy(tok), batch_size=8), "4 slots.*8 episodes"),
    (lambda tok: PPO(make_envs(tok, 8), policy=tiny_policy(tok), config=agents.GRPOConfig(batch_size=8)),
     "GRPOConfig"),
    (lambda tok: PPO(make_envs(tok, 8), policy=tiny_policy(tok), batch_size=8, n_minibatches=0), "n_minibatches"),
    (lambda tok: REINFORCE(make_envs(tok, 8), policy=tiny_policy(tok), batch_size=8, baseline="median"),
     "median"),
    (lambda tok: PPO(object(), policy=tiny_policy(tok), batch_size=8), "object"),
], ids=["grpo-group", "rloo-group", "negative-lr", "unknown-field", "num-envs", "config-class",
        "minibatches", "baseline", "not-an-env"])
def test_bad_arguments(tiny_tokenizer, make, match):
    with pytest.raises(ValueError, match=match):
        make(tiny_tokenizer)


def test_bad_names_and_counts(tiny_tokenizer):
    with pytest.raises(ValueError, match="'a2c'"):
        agents.get_agent_class("a2c")
    assert agents.get_agent_class("PPO") is PPO
    agent = make_agent(REINFORCE, tiny_tokenizer)
    for bad in (0, -8, 2.5, True):
        with pytest.raises(ValueError, match="total_episodes"):
            agent.learn(bad, progress=False)
        with pytest.raises(ValueError, match="num_episodes"):
            agent.evaluate(bad)


def test_user_env_is_used_as_given(tiny_tokenizer):
    envs = make_envs(tiny_tokenizer, 8)
    agent = GRPO(envs, policy=tiny_policy(tiny_tokenizer), batch_size=8, group_size=4)
    assert agent.envs is envs
    assert agent.env_id is None
    agent.learn(8, progress=False)
    # the rollout ran in this env: its slots hold the last rollout's groups of prompts
    prompts = envs.prompts()
    assert prompts[0] == prompts[3] != prompts[4] == prompts[7]
    assert envs.reward_model is not None and envs.max_new_tokens == MAX_NEW_TOKENS


def test_config_dataclasses_validate_directly():
    for config_cls in (agents.PPOConfig, agents.GRPOConfig, agents.REINFORCEConfig, agents.RLOOConfig):
        config = config_cls()
        assert dataclasses.replace(config) == config
        with pytest.raises(ValueError, match="batch_size"):
            config_cls(batch_size=0)


def test_vector_env_public_api_matches_its_setup(tiny_tokenizer):
    import numpy as np

    envs = make_envs(tiny_tokenizer, 4)
    assert envs.max_new_tokens == MAX_NEW_TOKENS and envs.vocab_size == len(tiny_tokenizer)
    assert envs.pad_id == tiny_tokenizer.pad_token_id and envs.reward_model.name == "digit_share"
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    drawn = [envs.sample_prompt(rng_a, "test") for _ in range(3)]
    assert drawn == [envs.setup.sample_prompt(rng_b, "test") for _ in range(3)]
    assert drawn != [envs.sample_prompt(np.random.default_rng(5), "train") for _ in range(3)]
