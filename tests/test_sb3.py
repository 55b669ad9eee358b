"""stable-baselines3 integration: the env passes SB3's checker, LMActorCriticPolicy keeps the LM intact, its KV
cache matches full forwards, and unmodified PPO and A2C learn a tiny task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401  (registers the ids)
from agents.sb3 import LMActorCriticPolicy, make_sb3_env
from agents.sb3_agent import SB3Agent

PROMPTS = ["7+8=", "the film was", "Review: the plot was really quite", "12+30="]  # different lengths


def digit_reward(prompts, completions):
    """Fraction of the completion's characters that are digits (0 for an empty completion)."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]


@pytest.fixture
def make_env(tiny_tokenizer_dir):
    def _make(n_envs=4, seed=0, **kw):
        kw.setdefault("tokenizer", str(tiny_tokenizer_dir))
        kw.setdefault("reward_model", digit_reward)
        kw.setdefault("prompts", PROMPTS)
        kw.setdefault("max_new_tokens", 3)
        return make_sb3_env("TextGen-v0", n_envs=n_envs, seed=seed, **kw)
    return _make


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RolloutRewards(BaseCallback):
    """Mean episode reward of the episodes that finished in each rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.means: list[float] = []
        self._current: list[float] = []

    def _on_step(self) -> bool:
        self._current += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
        return True

    def _on_rollout_end(self) -> None:
        self.means.append(float(np.mean(self._current)) if self._current else float("nan"))
        self._current = []


def test_make_sb3_env(make_env):
    env = make_env(n_envs=3, seed=5)
    assert isinstance(env, DummyVecEnv) and env.num_envs == 3
    assert all(isinstance(e, Monitor) for e in env.envs)
    obs = env.reset()
    assert obs["input_ids"].shape == (3, env.observation_space["input_ids"].shape[0])
    again = make_env(n_envs=3, seed=5).reset()
    np.testing.assert_array_equal(obs["input_ids"], again["input_ids"])
    with pytest.raises(ValueError, match="n_envs"):
        make_sb3_env("TextGen-v0", n_envs=0)


def test_check_env(tiny_tokenizer_dir):
    env = gym.make("TextGen-Arithmetic-v0", tokenizer=str(tiny_tokenizer_dir), reward_model=digit_reward)
    check_env(env, warn=True)


def test_lm_head_is_the_action_net_and_nothing_is_reinitialised(make_env, tiny_lm):
    before = snapshot(tiny_lm)
    model = PPO(LMActorCriticPolicy, make_env(), policy_kwargs={"model": tiny_lm}, device="cpu", seed=0)
    policy = model.policy
    assert policy.lm is tiny_lm and policy.features_extractor.lm is tiny_lm
    assert policy.action_net is tiny_lm.get_output_embeddings()
    assert policy.action_net.weight is tiny_lm.lm_head.weight is tiny_lm.transformer.wte.weight  # tying kept
    after = tiny_lm.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # the only new parameters are the value head's
    lm_params = {id(p) for p in tiny_lm.parameters()}
    extra = [p for p in policy.parameters() if id(p) not in lm_params]
    assert sum(p.numel() for p in extra) == tiny_lm.config.n_embd + 1
    assert {id(p) for g in policy.optimizer.param_groups for p in g["params"]} >= lm_params
    # the action logits are the LM's own next-token logits
    obs = make_env().reset()
    with torch.no_grad():
        logits, values = policy.logits_and_values({k: torch.as_tensor(v) for k, v in obs.items()})
        ids, mask = torch.as_tensor(obs["input_ids"]), torch.as_tensor(obs["attention_mask"]).long()
        ref = tiny_lm(input_ids=ids, attention_mask=mask).logits  # (B, L, V)
    last = mask.sum(-1) - 1
    torch.testing.assert_close(logits, ref[torch.arange(len(ids)), last], atol=1e-4, rtol=1e-4)
    assert values.shape == (len(ids), 1)
    # observations that went through SB3's float preprocessing are read back as the same integers
    with torch.no_grad():
        as_float = policy.logits_and_values({k: torch.as_tensor(v).float() for k, v in obs.items()})[0]
    torch.testing.assert_close(as_float, logits)


@pytest.mark.parametrize("detach", [True, False])
def test_value_loss_reaches_the_trunk_only_when_not_detached(make_env, tiny_lm, detach):
    model = A2C(LMActorCriticPolicy, make_env(), policy_kwargs={"model": tiny_lm, "detach_value": detach},
                device="cpu", seed=0)
    policy = model.policy
    assert policy.detach_value is detach
    obs = {k: torch.as_tensor(v) for k, v in make_env().reset().items()}
    _, values = policy.logits_and_values(obs)
    assert float(values.detach().abs().max()) < 0.5  # a small fresh head: first advantages are about the returns
    (values ** 2).sum().backward()
    trunk_grad = sum(float(p.grad.abs().sum()) for p in tiny_lm.transformer.parameters() if p.grad is not None)
    assert policy.value_net.weight.grad is not None and float(policy.value_net.weight.grad.abs().sum()) > 0
    assert (trunk_grad == 0.0) is detach, trunk_grad
    policy.zero_grad(set_to_none=True)
    policy.predict_values(obs).sum().backward()  # SB3's bootstrap path reads the same head
    trunk_grad = sum(float(p.grad.abs().sum()) for p in tiny_lm.transformer.parameters() if p.grad is not None)
    assert (trunk_grad == 0.0) is detach


def test_kv_cached_steps_match_full_forwards(make_env, tiny_lm, tiny_tokenizer):
    env = make_env(n_envs=4, seed=1, max_new_tokens=4)
    policy = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_lm}, device="cpu", seed=0).policy
    eos = tiny_tokenizer.eos_token_id
    rng = np.random.default_rng(0)
    obs = env.reset()
    assert len(set(obs["attention_mask"].sum(-1).tolist())) > 1  # right padding of different lengths
    for t in range(12):
        obs_t = {k: torch.as_tensor(v) for k, v in obs.items()}
        with torch.no_grad():
            cached, v_cached = policy.logits_and_values(obs_t, use_cache=True)
            full, v_full = policy.logits_and_values(obs_t, use_cache=False)
        torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
        torch.testing.assert_close(v_cached, v_full, atol=1e-4, rtol=0)
        actions = rng.integers(2, len(tiny_tokenizer), size=4)
        if t == 5:
            actions[2] = eos  # slot 2 starts a new episode while the others go on: a full recompute
        obs, _, _, _ = env.step(actions)
    # episodes of 4 tokens: full forwards at t = 0 and 4 (every slot new), a mixed step at t = 6 (slot 2 new)
    # and from then on the slots are out of step, so every 4th step is mixed; the rest are one-token steps
    stats = policy.cache_stats
    assert stats["full_forwards"] == 2 and stats["mixed_steps"] >= 2 and stats["one_token_steps"] >= 6, stats
    assert sum(stats.values()) == 12


def test_cache_stays_exact_and_bounded_when_one_slot_keeps_restarting(make_env, tiny_lm, tiny_tokenizer):
    env = make_env(n_envs=2, seed=3, max_new_tokens=6)
    policy = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_lm}, device="cpu", seed=0).policy
    L = env.observation_space["input_ids"].shape[0]
    obs = env.reset()
    for t in range(16):
        obs_t = {k: torch.as_tensor(v) for k, v in obs.items()}
        with torch.no_grad():
            cached, _ = policy.logits_and_values(obs_t, use_cache=True)
            full, _ = policy.logits_and_values(obs_t, use_cache=False)
        torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
        assert policy._kv.decoder.num_columns <= 2 * L
        obs, *_ = env.step(np.array([tiny_tokenizer.eos_token_id, 5 + t]))  # slot 0 ends at once, every time
    stats = policy.cache_stats
    assert stats["mixed_steps"] >= 8 and stats["full_forwards"] >= 3, stats  # compactions, not just resets


def test_cache_is_dropped_when_weights_change(make_env, tiny_lm):
    env = make_env(n_envs=2, seed=2, max_new_tokens=3)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_lm}, device="cpu", seed=0,
                n_steps=2, batch_size=4, n_epochs=1)
    policy = model.policy
    obs = env.reset()
    with torch.no_grad():
        policy(obs_as := {k: torch.as_tensor(v) for k, v in obs.items()})
    assert policy._kv is not None
    policy.set_training_mode(True)
    assert policy._kv is None
    policy.set_training_mode(False)
    with torch.no_grad():
        policy(obs_as)
    loss = policy.evaluate_actions(obs_as, torch.zeros(2))[1].sum()
    policy.optimizer.zero_grad()
    (-loss).backward()
    policy.optimizer.step()
    assert policy._kv is None
    assert not policy.lm.training  # dropout off by default, even in training mode
    policy.set_training_mode(True)
    assert policy.training and not policy.lm.training


def _learn(algo, make_env, tiny_lm, n_updates, **kw):
    """Train on the digit task (8 envs, 2-token completions); the mean reward per rollout and the names of
    the parameters that changed. A random policy scores about 0.15."""
    env = make_env(n_envs=8, seed=0, max_new_tokens=2)
    model = algo(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_lm}, device="cpu", seed=0, **kw)
    before = snapshot(model.policy)
    rewards = RolloutRewards()
    model.learn(total_timesteps=kw["n_steps"] * 8 * n_updates, callback=rewards)
    changed = [k for k, v in model.policy.state_dict().items() if not torch.equal(v, before[k])]
    return model, rewards.means, changed


def test_ppo_learns(make_env, tiny_lm):
    model, means, changed = _learn(PPO, make_env, tiny_lm, n_updates=12, n_steps=8, batch_size=32, n_epochs=4,
                                   learning_rate=3e-3, gamma=1.0)
    assert any("lm.transformer" in k for k in changed) and any("value_net" in k for k in changed)
    assert model.policy.cache_stats["one_token_steps"] > 0
    first, last = float(np.mean(means[:2])), float(np.mean(means[-3:]))
    assert last > first + 0.3 and last > 0.5, means


def test_a2c_learns(make_env, tiny_lm):
    model, means, changed = _learn(A2C, make_env, tiny_lm, n_updates=24, n_steps=4, learning_rate=3e-3, gamma=1.0)
    assert any("lm.transformer" in k for k in changed) and any("value_net" in k for k in changed)
    first, last = float(np.mean(means[:3])), float(np.mean(means[-3:]))
    assert last > first + 0.3 and last > 0.5, means


def test_predict_single_and_batched(make_env, tiny_lm):
    env = make_env(n_envs=3, seed=3)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_lm}, device="cpu", seed=0)
    obs = env.reset()
    actions, state = model.predict(obs, deterministic=True)
    assert state is None and actions.shape == (3,)
    with torch.no_grad():
        logits, _ = model.policy.logits_and_values({k: torch.as_tensor(v) for k, v in obs.items()})
    np.testing.assert_array_equal(actions, logits.argmax(-1).numpy())
    single = {k: v[0] for k, v in obs.items()}
    action, _ = model.predict(single, deterministic=True)
    assert np.ndim(action) == 0 and int(action) == actions[0]
    sampled, _ = model.predict(obs)
    assert sampled.shape == (3,) and ((0 <= sampled) & (sampled < env.action_space.n)).all()
    # stepping with predict: a generation loop, served by the cache after the first step
    model.policy.reset_cache()
    for _ in range(2):
        obs, *_ = env.step(model.predict(obs, deterministic=True)[0])
    assert model.policy.cache_stats["one_token_steps"] >= 1


def test_save_and_load(make_env, tiny_lm, tmp_path):
    tiny_lm.save_pretrained(tmp_path / "lm")
    env = make_env(n_envs=2, seed=4)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": str(tmp_path / "lm")}, device="cpu", seed=0,
                n_steps=4, batch_size=8, n_epochs=1, learning_rate=1e-2)
    model.learn(8)
    model.save(tmp_path / "ppo.zip")
    loaded = PPO.load(tmp_path / "ppo.zip", device="cpu")
    obs = {k: torch.as_tensor(v) for k, v in env.reset().items()}
    with torch.no_grad():
        want = model.policy.logits_and_values(obs)
        got = loaded.policy.logits_and_values(obs)
        fresh = LMActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0,
                                    model=str(tmp_path / "lm")).logits_and_values(obs)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(w, g)
    assert not torch.allclose(want[0], fresh[0])  # the trained weights, not the pretrained ones, came back
    assert loaded.policy.action_net is loaded.policy.lm.get_output_embeddings()
    # a model object in policy_kwargs: SB3 pickles it along, and the saved weights are loaded over it
    from_obj = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_lm}, device="cpu", n_steps=4,
                   batch_size=8, n_epochs=1, learning_rate=1e-2)
    from_obj.learn(8)
    from_obj.save(tmp_path / "ppo_obj.zip")
    loaded_obj = PPO.load(tmp_path / "ppo_obj.zip", device="cpu")
    # policy.save stores only the config of an object-built LM and rebuilds from it
    from_obj.policy.save(tmp_path / "policy.pt")
    again = LMActorCriticPolicy.load(tmp_path / "policy.pt", device="cpu")
    with torch.no_grad():
        want = from_obj.policy.logits_and_values(obs)[0]
        torch.testing.assert_close(loaded_obj.policy.logits_and_values(obs)[0], want)
        torch.testing.assert_close(again.logits_and_values(obs)[0], want)


def test_vocabulary_mismatch_is_an_error(make_env, tiny_tokenizer):
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    lm = GPT2LMHeadModel(tiny_gpt2_config(len(tiny_tokenizer) + 5, n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="vocabulary"):
        PPO(LMActorCriticPolicy, make_env(), policy_kwargs={"model": lm}, device="cpu")


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_sb3_agent_trains_whole_rollouts_with_env_kwargs_and_round_trips(algo, tmp_path, tiny_lm, tiny_tokenizer):
    lm_dir = tmp_path / "lm"
    tiny_lm.save_pretrained(lm_dir)
    tiny_tokenizer.save_pretrained(lm_dir)
    sets = {"n_steps": 4, "learning_rate": 1e-3} | ({"batch_size": 16, "n_epochs": 1} if algo == "ppo" else {})
    agent = SB3Agent(algo, "TextGen-Arithmetic-v0", str(lm_dir), seed=0, device="cpu", n_envs=4,
                     env_kwargs={"reward_model": "gold", "max_new_tokens": 2}, **sets)
    sb3_envs = agent.model.get_env().envs
    assert all(e.unwrapped.setup.max_new_tokens == 2 for e in sb3_envs) and agent.envs.max_new_tokens == 2
    assert len(agent.envs.tokenizer) == len(tiny_tokenizer)  # the policy's tokenizer, not the default
    before = agent.evaluate(8, seed=3)
    assert agent.evaluate(8, seed=3) == before  # seeded
    seen: list[dict[str, float]] = []
    agent.learn(10, progress=False, callback=lambda ag, m: seen.append(m))
    assert agent.episodes >= 10 and seen == agent.history
    # whole rollouts only: every env step SB3 collected was trained on, and a second learn continues
    rollout = 4 * 4
    assert agent.model.num_timesteps == rollout * len(agent.history)
    agent.learn(5, progress=False)
    assert agent.model.num_timesteps == rollout * len(agent.history) and agent.episodes >= 15
    row = agent.history[-1]
    want = {"reward", "gold_score", "completions/mean_length", "entropy", "value_loss", "tokens_per_s", "episodes"}
    assert want <= set(row), row
    assert 0 < row["completions/mean_length"] <= 2 and row["entropy"] > 0
    assert row["reward"] == row["gold_score"]  # reward_model="gold" reached the envs
    after = agent.evaluate(8, seed=3)
    agent.save(tmp_path / "ckpt")
    loaded = SB3Agent.load(tmp_path / "ckpt")
    assert loaded.env_kwargs == {"reward_model": "gold", "max_new_tokens": 2}
    assert loaded.episodes == agent.episodes and loaded.history == agent.history
    assert loaded.evaluate(8, seed=3) == after
    n = len(agent.history)
    agent.learn(1000, progress=False, callback=lambda ag, m: False)  # False stops after one iteration
    assert len(agent.history) == n + 1
    with pytest.raises(ValueError, match="total_episodes"):
        agent.learn(0)
