"""The multi-turn contract, agent side: inserted tokens go through the KV cache, are never sampled and are
masked out of every loss (our agents), and stable-baselines3 runs on a multi-turn env."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import GRPO, PPO, REINFORCE, RLOO
from agents.core import gae, gae_over_mask
from agents.policy import LMPolicy
from agents.rollout import RolloutBatch, collect_rollout
from textenv.models import load_tokenizer, tiny_gpt2_config
from textenv.tasks import DialogueTask
from textenv.vector import TextGenVectorEnv

#: a short dialogue: turns of at most 5 tokens, at most 3 of them (random policies rarely end a turn early,
#: so most turns end on the budget and the user answers "Sorry? I need a table.")
ENV_KWARGS = {"task": "dialogue", "reward_model": "gold", "max_new_tokens": 5, "max_turns": 3}


def tiny_policy(seed: int = 0, **kwargs) -> LMPolicy:
    from transformers import GPT2LMHeadModel

    tok = load_tokenizer("default")
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=256,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LMPolicy(GPT2LMHeadModel(cfg).eval(), tok, **kwargs)


def make_envs(n: int = 4, **kwargs) -> TextGenVectorEnv:
    return TextGenVectorEnv(num_envs=n, autoreset_mode="DISABLED", **{**ENV_KWARGS, **kwargs})


@pytest.fixture(scope="module")
def rollout() -> tuple[LMPolicy, TextGenVectorEnv, RolloutBatch]:
    policy, envs = tiny_policy(), make_envs()
    batch = collect_rollout(policy, envs, seed=0, generator=torch.Generator().manual_seed(0))
    return policy, envs, batch


def test_rollout_holds_the_inserted_tokens_in_order_and_masks_them(rollout):
    policy, envs, batch = rollout
    ins = batch.inserted_mask
    assert ins is not None and ins.sum() > 0 and batch.mask.sum() > 0
    assert not (ins.bool() & batch.mask.bool()).any()
    obs_ins = envs.inserted_mask()
    for i, ids in enumerate(envs.completion_ids()):  # the env's last episode of each slot (DISABLED: idle)
        n = len(ids)
        P = len(ids) and int(envs._prompt_len[i])
        assert batch.tokens[i, :n].tolist() == ids.tolist()
        assert (batch.mask[i, :n] + ins[i, :n]).tolist() == [1.0] * n and batch.mask[i, n:].sum() == 0
        assert ins[i, :n].tolist() == obs_ins[i, P:P + n].astype(float).tolist()
    # the agent's tokens are the actions: one env step each (turn budget 5 per turn, at most 3 turns)
    assert float(batch.mask.sum(1).max()) <= envs.max_actions
    assert (batch.logprobs * ins).abs().sum() == 0 and (batch.rewards * ins).abs().sum() == 0


def test_acting_cache_consumes_inserted_tokens_as_a_full_forward_does(rollout):
    policy, envs, batch = rollout
    with torch.no_grad():
        ev = policy.per_token_logps(batch.query_ids, batch.query_mask, batch.tokens, batch.mask)
    m = batch.mask.bool()
    # every agent token after an inserted run was sampled from a cache that had the run in it
    torch.testing.assert_close(ev.logprobs[m], batch.logprobs[m], atol=1e-4, rtol=0)
    torch.testing.assert_close(ev.values[m], batch.values[m], atol=1e-4, rtol=0)
    # and not from one without it: a forward with the inserted tokens replaced gives other log-probs
    other = batch.tokens.masked_fill(batch.inserted_mask.bool(), 5)
    with torch.no_grad():
        ev2 = policy.per_token_logps(batch.query_ids, batch.query_mask, other, batch.mask)
    assert (ev2.logprobs[m] - batch.logprobs[m]).abs().max() > 1e-3


def test_policy_step_with_inserted_tokens_matches_a_full_forward():
    policy = tiny_policy(seed=1)
    q = torch.tensor([[0, 1, 7, 8], [9, 10, 11, 12]])
    qm = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    g = torch.Generator().manual_seed(0)
    out = policy.start(q, qm, generator=g)
    ins_ids = torch.tensor([[40, 41, 42], [50, 1, 1]])
    ins_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out2 = policy.step(out.actions, generator=g, inserted=(ins_ids, ins_mask))
    out3 = policy.step(out2.actions, generator=g)
    policy.end()
    for i, k in enumerate((3, 1)):
        toks = torch.cat([out.actions[i:i + 1], ins_ids[i, :k], out2.actions[i:i + 1], out3.actions[i:i + 1]])
        mask = torch.tensor([1.0] + [0.0] * k + [1.0, 1.0])
        ev = policy.per_token_logps(q[i:i + 1], qm[i:i + 1], toks[None], mask[None])
        want = torch.stack([out.logprobs[i], out2.logprobs[i], out3.logprobs[i]])
        torch.testing.assert_close(ev.logprobs[0][mask.bool()].detach(), want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="must both be"):
        policy.start(q, qm)
        policy.step(out.actions, inserted=(ins_ids, ins_mask[:, :2]))


def test_gae_over_mask_skips_inserted_positions():
    # an agent token, two inserted ones, two agent tokens: the same as GAE over the three agent tokens
    rewards = torch.tensor([[0.0, 5.0, 5.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 9.0, 9.0, 0.25, 0.75]])
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]])
    adv, ret = gae_over_mask(rewards, values, mask, gamma=1.0, lam=0.5)
    # hand-computed on [r] = [0, 0, 1], [V] = [0.5, 0.25, 0.75]: deltas -0.25, 0.5, 0.25;
    # A_3 = 0.25, A_2 = 0.5 + 0.5 * 0.25 = 0.625, A_1 = -0.25 + 0.5 * 0.625 = 0.0625
    torch.testing.assert_close(adv, torch.tensor([[0.0625, 0.0, 0.0, 0.625, 0.25]]))
    torch.testing.assert_close(ret, torch.tensor([[0.5625, 0.0, 0.0, 0.875, 1.0]]))
    # contiguous masks: identical to gae
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    m = (torch.arange(6)[None, :] < torch.tensor([[6], [2], [4]])).float()
    for a, b in zip(gae_over_mask(r, v, m, 0.9, 0.8), gae(r, v, m, 0.9, 0.8), strict=True):
        torch.testing.assert_close(a, b)


AGENTS = [
    (REINFORCE, {}),
    (RLOO, {"group_size": 2}),
    (GRPO, {"group_size": 2}),
    (GRPO, {"group_size": 2, "normalization": "dr_grpo"}),
    (PPO, {"n_epochs": 2, "n_minibatches": 2, "kl_coef": 0.1}),
]


@pytest.mark.parametrize("cls, overrides", AGENTS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(AGENTS)])
def test_inserted_tokens_do_not_change_any_loss_or_gradient(rollout, cls, overrides):
    """Whatever the policy (and the rollout buffers) say at inserted positions, the update is the same."""
    _, _, batch = rollout
    ins = batch.inserted_mask
    bumped = batch._replace(**{k: getattr(batch, k) + 3.0 * ins for k in ("logprobs", "ref_logprobs", "values",
                                                                          "rewards")})
    results = []
    for b, bump in ((batch, False), (bumped, True)):
        agent = cls(make_envs(4), policy=tiny_policy(seed=2), batch_size=4, learning_rate=1e-2, **overrides)
        if bump:  # the training forward's log-probs, values and entropy get a trainable change on inserted tokens
            inner = agent.policy.per_token_logps

            def per_token_logps(q, qm, t, m, inner=inner, agent=agent):
                ev = inner(q, qm, t, m)
                k = ins[:t.shape[0]] if t.shape[0] == ins.shape[0] else None
                if k is None:  # a minibatch: find its rows
                    rows = [next(j for j in range(batch.tokens.shape[0]) if torch.equal(batch.tokens[j], t[r]))
                            for r in range(t.shape[0])]
                    k = ins[rows]
                w = sum(p.sum() for p in agent.policy.parameters())
                return type(ev)(ev.logprobs + k * (2.0 + 0.1 * w), ev.values + k * (4.0 - 0.1 * w),
                                ev.entropy + k * (1.0 + 0.1 * w))

            agent.policy.per_token_logps = per_token_logps  # type: ignore[method-assign]
        stats = agent.update(b)
        results.append((stats, {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}))
    (s1, p1), (s2, p2) = results
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k] == pytest.approx(s2[k], rel=1e-5, abs=1e-6), k
    assert any(not torch.equal(p1[k], v) for k, v in tiny_policy(seed=2).state_dict().items())  # it trained
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], atol=1e-6, rtol=1e-5)


def test_an_agent_runs_on_the_dialogue_env_and_evaluates():
    agent = PPO(make_envs(4), policy=tiny_policy(seed=3), batch_size=4, n_epochs=1, learning_rate=1e-3)
    agent.learn(8)
    metrics = agent.evaluate(4)
    assert 0.0 <= metrics["gold_score"] <= 1.0 and metrics["completions/mean_length"] <= agent.envs.max_actions


# ------------------------------------------------------------------------------------------- stable-baselines3
def _sb3_env(n_envs: int, seed: int = 0):
    from agents.sb3 import make_sb3_env

    return make_sb3_env("TextGen-Dialogue-v0", n_envs=n_envs, seed=seed, **ENV_KWARGS)


def test_sb3_policy_cache_consumes_inserted_tokens_as_a_full_forward_does():
    from stable_baselines3 import PPO as SB3PPO

    from agents.sb3 import LMActorCriticPolicy

    env = _sb3_env(3)
    policy = SB3PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_policy(seed=4).model}, device="cpu",
                    seed=0).policy
    rng = np.random.default_rng(0)
    sep = env.envs[0].unwrapped.setup.separator_id
    extractor = policy.features_extractor
    keeps: list[list[bool]] = []

    def extend(decoder, tokens, positions, attn, keep, pick, inner=extractor.extend):
        keeps.append(keep.tolist())
        return inner(decoder, tokens, positions, attn, keep, pick)

    extractor.extend = extend  # type: ignore[method-assign]
    obs = env.reset()
    grew = np.zeros(3, dtype=bool)
    n_grew = 0
    for t in range(24):
        obs_t = {k: torch.as_tensor(v) for k, v in obs.items()}
        n_calls = len(keeps)
        with torch.no_grad():
            cached, v_cached = policy.logits_and_values(obs_t, use_cache=True)
            full, v_full = policy.logits_and_values(obs_t, use_cache=False)
        torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
        torch.testing.assert_close(v_cached, v_full, atol=1e-4, rtol=0)
        if grew.any():  # a slot whose observation took its action and an inserted turn kept its cache
            assert len(keeps) == n_calls + 1 and all(keeps[-1][i] for i in np.flatnonzero(grew)), (t, keeps[-1:])
        actions = rng.integers(2, 1361, size=3)
        if t == 2:
            actions[1] = sep  # slot 1 ends its first turn early: the slots' turns fall out of step
        before = obs["attention_mask"].sum(1)
        obs, _, dones, _ = env.step(actions)
        grew = (obs["attention_mask"].sum(1) - before > 1) & ~dones
        n_grew += int(grew.sum())
    assert n_grew >= 4, n_grew  # observations that took inserted tokens
    assert policy.cache_stats["mixed_steps"] >= 3, policy.cache_stats


def test_sb3_ppo_runs_on_the_dialogue_env_and_only_agent_tokens_are_actions():
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.sb3 import LMActorCriticPolicy

    env = _sb3_env(2)
    setup = env.envs[0].unwrapped.setup
    seen: list[tuple[int, int]] = []

    class Episodes(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:  # Monitor: SB3's steps in the episode vs the agent's tokens in it
                    final = info["terminal_observation"]
                    n_prompt = len(setup.encode_prompt(info["prompt"]))
                    agent_tokens = int(final["attention_mask"].sum()) - n_prompt - int(info["inserted_mask"].sum())
                    seen.append((int(info["episode"]["l"]), agent_tokens))
            return True

    model = SB3PPO(LMActorCriticPolicy, env, policy_kwargs={"model": tiny_policy(seed=5).model}, n_steps=24,
                   batch_size=24, n_epochs=1, learning_rate=1e-4, device="cpu", seed=0)
    model.learn(48, callback=Episodes())
    assert seen and all(steps == tokens for steps, tokens in seen), seen
    assert model.rollout_buffer.actions.size == 48  # 24 steps of 2 envs: one action, the agent's token, each


def test_sb3_agent_checkpoint_replays_running_dialogues(tmp_path):
    from agents.sb3_agent import SB3Agent

    policy = tiny_policy(seed=6)
    policy.model.save_pretrained(tmp_path / "lm")
    policy.tokenizer.save_pretrained(tmp_path / "lm")
    agent = SB3Agent("ppo", "TextGen-Dialogue-v0", str(tmp_path / "lm"), seed=0, device="cpu", n_envs=2,
                     env_kwargs=ENV_KWARGS, n_steps=7, batch_size=14, n_epochs=1, learning_rate=1e-4)
    agent.learn(1, progress=False)  # 7 steps per env: the envs stop inside a dialogue, after an inserted turn
    envs = [m.unwrapped for m in agent.model.get_env().envs]
    assert any(e.inserted_mask().any() for e in envs)
    agent.save(tmp_path / "ckpt")
    loaded = SB3Agent.load(tmp_path / "ckpt")  # replays each running dialogue and checks its observation
    for a, b in zip(envs, (m.unwrapped for m in loaded.model.get_env().envs), strict=True):
        assert np.array_equal(a.completion_ids(), b.completion_ids())
        assert np.array_equal(a.inserted_mask(), b.inserted_mask())
        assert a.np_random.bit_generator.state == b.np_random.bit_generator.state
    agent.learn(3, progress=False)
    loaded.learn(3, progress=False)
    assert agent.history[-1]["reward"] == loaded.history[-1]["reward"]


# ------------------------------------------------------------------------------------------- learning
class _DigitTurns(DialogueTask):
    """Two agent turns of 3 tokens around a fixed inserted reply without digits; gold: the digit share of
    the agent's turns (the reply's characters do not count)."""

    name = "digit-turns"
    default_max_prompt_tokens = 8
    default_max_new_tokens = 3
    default_max_turns = 2
    default_max_inserted_tokens = 8
    REPLY = "\nthe film was\n"

    def generate_prompt(self, rng):
        return f"{int(rng.integers(100))}+{int(rng.integers(100))}="

    def next_turn(self, prompt, dialogue, rng):
        return self.REPLY

    def gold_score(self, prompts, completions):
        agent_text = [c.replace(self.REPLY, "") for c in completions]
        return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in agent_text]


@pytest.mark.parametrize("cls", [REINFORCE, PPO], ids=lambda c: c.name)
def test_agent_learns_a_tiny_multi_turn_task(tiny_tokenizer, cls):
    """Learning goes through inserted turns: the digit share of both agent turns goes up."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = tiny_gpt2_config(len(tiny_tokenizer), n_layer=2, n_embd=64, n_head=2, bos_token_id=tiny_tokenizer.eos_token_id,
                           eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    policy = LMPolicy(GPT2LMHeadModel(cfg).eval(), tiny_tokenizer)
    envs = TextGenVectorEnv(num_envs=32, autoreset_mode="DISABLED", task=_DigitTurns(), tokenizer=tiny_tokenizer,
                            reward_model="gold")
    extra = {"n_epochs": 2, "n_minibatches": 2} if cls is PPO else {}
    agent = cls(envs, policy=policy, batch_size=32, kl_coef=0.0, learning_rate=3e-3, **extra)
    before = agent.evaluate(64)
    agent.learn(32 * 15, progress=False)
    after = agent.evaluate(64)
    batch = collect_rollout(agent.policy, envs, seed=1)
    assert batch.inserted_mask is not None and batch.inserted_mask.sum(1).min() > 0  # every episode had its reply
    # measured: 0.15 -> 0.42 (REINFORCE) and 0.89 (PPO)
    assert after["gold_score"] > before["gold_score"] + 0.1, (before, after)


def test_a_policy_too_short_for_the_dialogue_is_refused_naming_the_budgets():
    from transformers import GPT2LMHeadModel

    tok = load_tokenizer("default")
    cfg = tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=128)
    policy = LMPolicy(GPT2LMHeadModel(cfg).eval(), tok)
    with pytest.raises(ValueError, match=r"max_turns \* max_new_tokens .* = 56 \+ 4 \* 32 \+ 3 \* 40 = 304"):
        PPO(TextGenVectorEnv(num_envs=4, task="dialogue", reward_model="gold"), policy=policy, batch_size=4)
