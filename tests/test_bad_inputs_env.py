"""Issue 10, env items: bad env inputs are refused before anything changes (C20), the ecosystem's own ways
of building the env work (A4 SB3's make_vec_env, A5 async vector envs, A6 make_vec's default autoreset),
and agents refuse a policy that does not fit the env (A10 vocabulary, C19 context length)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import textenv  # noqa: F401  (registers the ids)
from agents import PPO
from agents.base import check_policy_fits_env
from agents.policy import LMPolicy
from textenv.env import TextGenEnv
from textenv.setup import MAX_TOKENS, load_prompts
from textenv.vector import TextGenVectorEnv

ROOT = Path(__file__).resolve().parents[1]


def digit_share(prompts, completions):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def env_kwargs(tok, **kw):
    return {"task": "arithmetic", "tokenizer": tok, "reward_model": digit_share, "max_new_tokens": 3, **kw}


def tiny_policy(tok, vocab_size=None, n_positions=128, tokenizer=None):
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    cfg = tiny_gpt2_config(vocab_size or len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=n_positions,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LMPolicy(GPT2LMHeadModel(cfg).eval(), tokenizer or tok)


def rollout(env, seed=None, steps=3):
    """Observations and rewards of one reset (with ``seed``) and ``steps`` fixed actions."""
    obs, info = env.reset(seed=seed)
    out = [obs["input_ids"].copy(), info["prompt"]]
    for a in (5, 6, 7)[:steps]:
        obs, r, term, trunc, info = env.step(a)
        out += [obs["input_ids"].copy(), r, term]
        if term:
            break
    return out


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


# ---------------------------------------------------------------------------------------------- C20: reset
def test_failed_first_reset_of_a_gym_make_env_leaves_it_usable(tiny_tokenizer):
    env = gym.make("TextGen-v0", **env_kwargs(tiny_tokenizer))
    with pytest.raises(ValueError, match="prompt '' encodes to no tokens"):
        env.reset(options={"prompt": ""})
    # before: every later step() failed inside Gymnasium's passive checker (TypeError: cannot unpack None)
    same(rollout(env, seed=0), rollout(gym.make("TextGen-v0", **env_kwargs(tiny_tokenizer)), seed=0))


def test_registered_ids_run_without_the_passive_checker():
    from gymnasium.wrappers.common import PassiveEnvChecker

    for env_id in textenv.ENV_IDS:
        assert gym.spec(env_id).disable_env_checker, env_id
    env = gym.make("TextGen-Arithmetic-v0", reward_model="gold")
    while hasattr(env, "env"):
        assert not isinstance(env, PassiveEnvChecker)
        env = env.env


@pytest.mark.parametrize(("seed", "options", "match"), [
    (5, {"prompt": ""}, "prompt ''"),
    (5, {"promt": "7+8="}, r"unknown reset option 'promt'; valid options are \['prompt', 'split'\]"),
    (5, {"split": "validation"}, "split.*'validation'"),
    (1.5, None, "seed must be None or an integer >= 0, got 1.5"),
    (-1, None, "got -1"),
    ("3", None, "got '3'"),
    (True, None, "got True"),
    (5, ["prompt"], r"reset options must be a dict or None, got \['prompt'\]"),
], ids=["empty-prompt", "misspelt-key", "bad-split", "float-seed", "negative-seed", "str-seed", "bool-seed",
        "options-list"])
def test_refused_reset_changes_nothing(tiny_tokenizer, seed, options, match):
    env = TextGenEnv(**env_kwargs(tiny_tokenizer))
    ref = TextGenEnv(**env_kwargs(tiny_tokenizer))
    env.reset(seed=0)
    env.step(5)
    ref.reset(seed=0)
    ref.step(5)
    ids_before = env._ids.copy()
    with pytest.raises(ValueError, match=match):
        env.reset(seed=seed, options=options)
    np.testing.assert_array_equal(env._ids, ids_before)
    # the episode goes on, and the RNG was not reseeded: the next unseeded reset draws what ref's does
    same([env.step(6)[0]["input_ids"]], [ref.step(6)[0]["input_ids"]])
    same(rollout(env), rollout(ref))


def test_reset_options_that_are_valid_still_work(tiny_tokenizer):
    env = TextGenEnv(**env_kwargs(tiny_tokenizer))
    assert env.reset(options={"prompt": "7+8="})[1]["prompt"] == "7+8="
    assert env.reset(seed=np.int64(3), options={"split": "test", "prompt": None})[1]["prompt"]
    assert env.reset(options={})[1]["prompt"]


@pytest.mark.parametrize(("seed", "options", "match"), [
    ([1, 2, 3, "x"], None, "seed\\[3\\].*'x'"),
    ([1, 2, 3, 4.0], None, "seed\\[3\\].*4.0"),
    ([1, 2, 3], None, "4 entries, got 3"),
    ("1234", None, "seed must be None, an integer >= 0 or a list of 4"),
    (1.5, None, "got 1.5"),
    (0, {"promts": ["a"] * 4}, "unknown reset option 'promts'.*'prompts'.*'reset_mask'"),
    (0, {"prompts": ["7+8=", "1+1=", "2+2=", ""]}, "prompt ''"),
    (0, {"prompts": "7+8="}, "list of 4 str"),
    (0, {"prompt": "7+8=", "prompts": ["7+8="] * 4}, "not both"),
    (0, {"split": "dev"}, "'dev'"),
], ids=["str-seed", "float-seed", "short-list", "str-seed-list", "float-base-seed", "misspelt-key",
        "one-bad-prompt", "prompts-str", "prompt-and-prompts", "bad-split"])
def test_refused_vector_reset_changes_no_slot(tiny_tokenizer, seed, options, match):
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    ref = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    obs, _ = envs.reset(seed=0)
    ref.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        envs.reset(seed=seed, options=options)
    np.testing.assert_array_equal(envs._ids, obs["input_ids"])
    # no slot's RNG was reseeded: unseeded resets now draw what the untouched env draws
    a, _ = envs.reset()
    b, _ = ref.reset()
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(envs.step(np.full(4, 5))[0]["input_ids"], ref.step(np.full(4, 5))[0]["input_ids"])


# --------------------------------------------------------------------------------------------- C20: actions
@pytest.mark.parametrize("action", [np.array([[3]]), np.array([3, 4]), np.zeros((1, 1, 1), dtype=np.int64),
                                    torch.tensor([[3]]), np.array([3.0]), 3.0, "3", True],
                         ids=["2d", "two", "3d", "torch-2d", "float-array", "float", "str", "bool"])
def test_action_of_another_shape_or_type_is_refused(tiny_tokenizer, action):
    env = TextGenEnv(**env_kwargs(tiny_tokenizer))
    env.reset(seed=0)
    if isinstance(action, np.ndarray):
        assert not env.action_space.contains(action)  # the env agrees with its own action space
    before = env.completion_ids()
    with pytest.raises(ValueError, match="action must be an integer token id") as exc:
        env.step(action)
    assert repr(action)[:8] in str(exc.value) or str(action) in str(exc.value)
    np.testing.assert_array_equal(env.completion_ids(), before)
    for ok in (np.array([3]), np.array(3), np.int32(3), torch.tensor(3), torch.tensor([3])):
        env.reset(seed=0)
        env.step(ok)
        assert env.completion_ids().tolist() == [3]


# ------------------------------------------------------------------------------------- C20: token budgets
@pytest.mark.parametrize("name", ["max_new_tokens", "max_prompt_tokens"])
@pytest.mark.parametrize("cls", [TextGenEnv, TextGenVectorEnv])
def test_token_budget_has_an_upper_bound(tiny_tokenizer, name, cls):
    kw = {**env_kwargs(tiny_tokenizer), name: 10**9}
    with pytest.raises(ValueError, match=rf"{name} must be an integer in \[1, {MAX_TOKENS}\], got 1000000000"):
        cls(**kw)
    kw[name] = MAX_TOKENS + 1
    with pytest.raises(ValueError, match=str(MAX_TOKENS + 1)):
        cls(**kw)


def test_token_budget_cap_through_gym_make(tiny_tokenizer):
    with pytest.raises(ValueError, match="1000000000"):
        gym.make("TextGen-v0", tokenizer=tiny_tokenizer, reward_model="gold", max_new_tokens=10**9)
    with pytest.raises(ValueError, match="1000000000"):
        gym.make_vec("TextGen-v0", num_envs=2, tokenizer=tiny_tokenizer, reward_model="gold", max_new_tokens=10**9)


# ---------------------------------------------------------------------------------------- C20: non-UTF-8
def _assert_names(exc_info, path, line=None):
    assert type(exc_info.value) is ValueError  # not a bare UnicodeDecodeError
    msg = str(exc_info.value)
    assert str(path) in msg
    if line is not None:
        assert f"{path}:{line}:" in msg


@pytest.mark.parametrize(("suffix", "data", "line"), [
    (".txt", b"7+8=\n1+\xff1=\n", 2),
    (".jsonl", b'{"prompt": "7+8="}\n{"prompt": "\xe9t\xe9"}\n', 2),
])
def test_non_utf8_prompt_file_names_path_and_line(tiny_tokenizer, tmp_path, suffix, data, line):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError) as exc:
        load_prompts(path)
    _assert_names(exc, path, line)
    with pytest.raises(ValueError) as exc:
        TextGenEnv(**env_kwargs(tiny_tokenizer), prompts=str(path))
    _assert_names(exc, path, line)
    assert path.read_bytes() == data  # the file is left as it was


def test_non_utf8_corpus_and_pairs_files_name_path_and_line(tmp_path):
    from textenv.training.lm import load_pairs_jsonl, load_text_corpus
    from textenv.training.reward import load_reward_rows

    txt = tmp_path / "corpus.txt"
    txt.write_bytes(b"a fine line\n\xff\xfe latin-1 caf\xe9\n")
    with pytest.raises(ValueError) as exc:
        load_text_corpus(txt)
    _assert_names(exc, txt, 2)
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError) as exc:
        load_text_corpus(jsonl)
    _assert_names(exc, jsonl, 3)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(ValueError) as exc:
        load_pairs_jsonl(pairs)
    _assert_names(exc, pairs, 1)
    with pytest.raises(ValueError) as exc:
        load_reward_rows(pairs, "mse")
    _assert_names(exc, pairs, 1)


def test_utf8_files_still_load(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("café =\r\n\n7+8=\n", encoding="utf-8")
    assert load_prompts(path) == ["café =", "7+8="]


# -------------------------------------------------------------------------------------- A4: rgb_array / SB3
def test_rgb_array_render(tiny_tokenizer):
    env = gym.make("TextGen-v0", render_mode="rgb_array", **env_kwargs(tiny_tokenizer))
    assert "rgb_array" in env.metadata["render_modes"]
    env.reset(seed=0, options={"prompt": "7+8="})
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert (first < 255).any()  # the prompt is drawn
    env.step(5)
    second = env.render()
    assert second.shape == first.shape and not np.array_equal(first, second)  # the completion is drawn
    envs = TextGenVectorEnv(num_envs=2, render_mode="rgb_array", **env_kwargs(tiny_tokenizer))
    envs.reset(seed=0)
    frames = envs.render()
    assert isinstance(frames, tuple) and len(frames) == 2 and frames[0].shape == first.shape
    with pytest.raises(ValueError, match="'rgb'"):
        TextGenEnv(render_mode="rgb", **env_kwargs(tiny_tokenizer))


def test_render_text_wraps_and_keeps_the_end():
    from textenv.render import frame_shape, render_text

    long = render_text("x" * 10_000, "\u2603\n\tz")
    assert long.shape == frame_shape()
    assert render_text("", "").min() == 255


def test_sb3_make_vec_env_and_a_short_ppo_learn(tiny_tokenizer_dir, tiny_lm):
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env

    from agents.sb3 import LMActorCriticPolicy

    kw = {"tokenizer": str(tiny_tokenizer_dir), "reward_model": digit_share, "task": "arithmetic",
          "max_new_tokens": 2}
    venv = make_vec_env("TextGen-v0", n_envs=2, seed=0, env_kwargs=kw)  # SB3 passes render_mode="rgb_array"
    assert venv.render_mode == "rgb_array"
    assert venv.reset()["input_ids"].shape[0] == 2
    assert venv.get_images()[0].dtype == np.uint8
    model = SB3PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": tiny_lm}, device="cpu", seed=0,
                   n_steps=4, batch_size=8, n_epochs=1)
    model.learn(total_timesteps=8)
    assert model.num_timesteps == 8


# ---------------------------------------------------------------------------------------- A5: async fork
ASYNC_SCRIPT = textwrap.dedent("""
    import gymnasium as gym, numpy as np, torch, textenv
    torch.set_num_threads(2)  # the parent's intra-op pool runs threads, as on any multi-core machine
    env = gym.make("TextGen-Arithmetic-v0")  # the shipped learned reward model (torch)
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(env.action_space.sample())[2]
    x = torch.randn(256, 256)
    (x @ x).sum().item()
    envs = gym.make_vec("TextGen-Arithmetic-v0", num_envs=2, vectorization_mode="async")
    envs.reset(seed=0)
    ended = 0
    for _ in range(8):
        ended += int(envs.step(np.array([5, 6]))[2].sum())
    envs.close()
    print("ASYNC-OK", ended)
""")


def test_async_vector_env_after_the_parent_ran_the_reward_model_does_not_hang(tmp_path):
    script = tmp_path / "async_after_torch.py"
    script.write_text(ASYNC_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("gym.make_vec(..., vectorization_mode='async') hung after the parent used torch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ASYNC-OK" in proc.stdout
    assert int(proc.stdout.split("ASYNC-OK")[1]) >= 2  # children scored episodes with the reward model


# --------------------------------------------------------------------------------- A6: make_vec's default
def test_agent_takes_make_vec_default_env(tiny_tokenizer):
    envs = gym.make_vec("TextGen-v0", num_envs=4, **env_kwargs(tiny_tokenizer))
    assert envs.unwrapped.autoreset_mode == AutoresetMode.NEXT_STEP
    agent = PPO(envs, policy=tiny_policy(tiny_tokenizer), batch_size=4)
    agent.learn(8, progress=False)
    assert agent.episodes == 8
    assert np.isfinite(agent.evaluate(num_episodes=4)["reward"])
    # the env keeps its own mode, and runs under it after the agent's synchronised episodes
    assert envs.unwrapped.autoreset_mode == AutoresetMode.NEXT_STEP
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _, term, _, info = envs.step(np.full(4, 5))  # finished slots reset on this step (NEXT_STEP)
    assert not term.any() and info["_prompt"].all() and obs["attention_mask"].sum(1).min() > 0
    for _ in range(3):
        envs.step(np.full(4, 5))


def test_issue_case_make_vec_16_with_a_reward_function():
    from agents import GRPO

    envs = gym.make_vec("TextGen-Arithmetic-v0", num_envs=16, reward_model=digit_share)
    agent = GRPO(envs)  # no batch_size: the env's 16 slots are the batch (GRPO's group_size 8 divides it)
    assert agent.config.batch_size == 16
    agent.learn(16, progress=False)
    assert agent.episodes == 16 and envs.unwrapped.autoreset_mode == AutoresetMode.NEXT_STEP
    with pytest.raises(ValueError, match="16 slots but this agent's batch is 8"):
        PPO(envs, batch_size=8)


def test_same_step_env_is_restored_with_every_slot_running(tiny_tokenizer):
    envs = TextGenVectorEnv(num_envs=4, autoreset_mode="SAME_STEP", **env_kwargs(tiny_tokenizer))
    agent = PPO(envs, policy=tiny_policy(tiny_tokenizer), batch_size=4)
    agent.learn(4, progress=False)
    assert envs.autoreset_mode == AutoresetMode.SAME_STEP and envs._active.all()


# ------------------------------------------------------------------------ A10 / C19: policy fits the env
def test_policy_vocabulary_mismatch_is_refused_naming_both_sizes(tiny_tokenizer):
    V = len(tiny_tokenizer)
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    n = V - 8  # a smaller head is refused; a larger (padded) one is sliced to the vocabulary (issue 11)
    with pytest.raises(ValueError, match=rf"{V} tokens but the policy's LM head has {n} logits"):
        PPO(envs, policy=tiny_policy(tiny_tokenizer, vocab_size=n), batch_size=4)
    from textenv.models import load_tokenizer

    other = load_tokenizer("default")  # the shipped tokenizer: another size
    with pytest.raises(ValueError, match=rf"{V} tokens but the policy's tokenizer has {len(other)}"):
        PPO(envs, policy=tiny_policy(tiny_tokenizer, tokenizer=other), batch_size=4)
    # the env is still usable by a policy that fits
    PPO(envs, policy=tiny_policy(tiny_tokenizer), batch_size=4).learn(4, progress=False)


def test_same_size_but_other_tokens_is_refused(tiny_tokenizer):
    from textenv.training.tokenizer import train_tokenizer

    other = train_tokenizer(["zzz yyy xxx www"] * 50 + [f"{i} {i * 7}" for i in range(300)],
                            vocab_size=len(tiny_tokenizer), split_digits=False)
    if len(other) != len(tiny_tokenizer):
        pytest.skip("could not train a tokenizer of the same size")
    envs = TextGenVectorEnv(num_envs=4, **env_kwargs(tiny_tokenizer))
    with pytest.raises(ValueError, match="different ids"):
        check_policy_fits_env(tiny_policy(tiny_tokenizer, tokenizer=other), envs)


def test_policy_context_shorter_than_the_env_is_refused(tiny_tokenizer):
    pol = tiny_policy(tiny_tokenizer, n_positions=16)
    with pytest.raises(ValueError, match=r"context length is 16 positions .* = 8 \+ 30 = 38"):
        PPO("TextGen-Arithmetic-v0", policy=pol, batch_size=4,
            env_kwargs={"reward_model": digit_share, "max_new_tokens": 30})
    agent = PPO("TextGen-Arithmetic-v0", policy=pol, batch_size=4,
                env_kwargs={"reward_model": digit_share, "max_new_tokens": 8})  # 8 + 8 fits
    agent.learn(4, progress=False)


def test_issue_case_max_new_tokens_past_the_default_policys_positions():
    with pytest.raises(ValueError, match=r"320 positions .* = 16 \+ 310 = 326"):  # the shipped policy has 320
        PPO(env_kwargs={"max_new_tokens": 310, "reward_model": "gold"}, batch_size=4)
