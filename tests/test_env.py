"""TextGenEnv and TextGenVectorEnv: the Gymnasium contract, seeding, rewards and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode

import textenv  # noqa: F401  (registers the ids)
from textenv.env import TextGenEnv
from textenv.vector import TextGenVectorEnv


def length_reward(prompts, completions):
    """A deterministic reward: longer completions score higher, with a dependence on the prompt."""
    return [len(c) / 10.0 + (len(p) % 3) / 10.0 for p, c in zip(prompts, completions)]


@pytest.fixture
def make(tiny_tokenizer_dir):
    def _make(**kw):
        kw.setdefault("tokenizer", str(tiny_tokenizer_dir))
        kw.setdefault("reward_model", length_reward)
        return TextGenEnv(**kw)
    return _make


@pytest.fixture
def make_vec(tiny_tokenizer_dir):
    def _make(num_envs=4, **kw):
        kw.setdefault("tokenizer", str(tiny_tokenizer_dir))
        kw.setdefault("reward_model", length_reward)
        return TextGenVectorEnv(num_envs=num_envs, **kw)
    return _make


def rollout(env, seed, actions_seed=0):
    rng = np.random.default_rng(actions_seed)
    obs, _ = env.reset(seed=seed)
    trace = [obs["input_ids"].tolist()]
    done = False
    rewards = []
    while not done:
        obs, r, terminated, truncated, info = env.step(int(rng.integers(2, env.action_space.n)))
        assert type(r) is float and type(terminated) is bool and type(truncated) is bool
        rewards.append(r)
        trace.append(obs["input_ids"].tolist())
        done = terminated or truncated
    return trace, rewards, info


def test_spaces_and_observation_layout(make):
    env = make(task="arithmetic", max_prompt_tokens=8, max_new_tokens=3)
    V = len(env.tokenizer)
    assert env.action_space == gym.spaces.Discrete(V)
    assert env.observation_space["input_ids"].shape == (11,)
    obs, info = env.reset(seed=1)
    n = int(obs["attention_mask"].sum())
    assert obs["attention_mask"].dtype == np.int8 and obs["input_ids"].dtype == np.int64
    assert obs["attention_mask"][:n].all() and not obs["attention_mask"][n:].any()
    assert (obs["input_ids"][n:] == env.tokenizer.pad_token_id).all()
    assert env.tokenizer.decode(obs["input_ids"][:n]) == info["prompt"]
    obs2, *_ = env.step(5)
    assert obs2["input_ids"][n] == 5 and obs2["attention_mask"][n] == 1
    obs2["input_ids"][0] = 999  # fresh arrays: mutating one must not change the env
    obs3, *_ = env.step(6)
    assert obs3["input_ids"][0] != 999 or obs["input_ids"][0] == 999


def test_episode_ends_at_max_new_tokens_and_on_eos(make):
    env = make(max_new_tokens=3)
    env.reset(seed=0)
    flags = [env.step(7)[2] for _ in range(3)]
    assert flags == [False, False, True]
    env.reset(seed=0)
    _, r, terminated, truncated, info = env.step(env.tokenizer.eos_token_id)
    assert terminated and not truncated
    assert info["completion"] == "" and set(info) >= {"prompt", "completion", "reward_model_score", "gold_score"}
    assert r == info["reward_model_score"]
    env2 = make(max_new_tokens=3, terminate_on_eos=False)
    env2.reset(seed=0)
    assert not env2.step(env2.tokenizer.eos_token_id)[2]


def test_terminal_reward_is_reward_model_score(make):
    env = make(max_new_tokens=4)
    trace, rewards, info = rollout(env, seed=3)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == pytest.approx(length_reward([info["prompt"]], [info["completion"]])[0])


def test_determinism(make):
    a = rollout(make(), seed=11)
    b = rollout(make(), seed=11)
    assert a == b
    c = rollout(make(), seed=12)
    assert c[0][0] != a[0][0] or c[2]["prompt"] != a[2]["prompt"]


def test_dense_rewards_sum_to_terminal_score(make):
    dense = make(reward_mode="dense", max_new_tokens=6)
    term = make(reward_mode="terminal", max_new_tokens=6)
    _, rd, info_d = rollout(dense, seed=5)
    _, rt, info_t = rollout(term, seed=5)
    assert info_d["completion"] == info_t["completion"]
    assert sum(rd) == pytest.approx(rt[-1])
    assert sum(rd) == pytest.approx(info_d["reward_model_score"])
    assert any(r != 0.0 for r in rd[:-1])


def test_render_modes(make, capsys):
    env = make(render_mode="ansi")
    _, info = env.reset(seed=0)
    assert env.render() == info["prompt"]
    env.step(5)
    assert env.render().startswith(info["prompt"]) and len(env.render()) > len(info["prompt"])
    human = make(render_mode="human")
    human.reset(seed=0)
    assert info["prompt"] in capsys.readouterr().out
    with pytest.raises(ValueError, match="render_mode"):
        make(render_mode="rgb")  # rgb_array is supported (issue 10 A4, tests/test_bad_inputs_env.py)


def test_custom_prompts_and_files(make, tmp_path):
    env = make(prompts=["1+1=", "2+2="], task="arithmetic")
    seen = {env.reset(seed=s)[1]["prompt"] for s in range(20)}
    assert seen == {"1+1=", "2+2="}
    txt = tmp_path / "p.txt"
    txt.write_text("3+3=\n\n4+4=\n")
    assert make(prompts=str(txt)).setup.prompts == ["3+3=", "4+4="]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "5+5="}\n')
    assert make(prompts=jl).setup.prompts == ["5+5="]
    _, info = env.reset(options={"prompt": "9+9="})
    assert info["prompt"] == "9+9="


def test_long_prompt_truncated_from_left(make):
    env = make(max_prompt_tokens=4)
    long = "Review: the film was good and the plot was very fine"
    obs, _ = env.reset(options={"prompt": long})
    full = env.tokenizer(long, add_special_tokens=False)["input_ids"]
    assert obs["input_ids"][:4].tolist() == full[-4:]
    strict = make(max_prompt_tokens=4, prompt_truncation="error")
    with pytest.raises(ValueError, match="max_prompt_tokens=4"):
        strict.reset(options={"prompt": long})


@pytest.mark.parametrize("action", [-1, 10**6, 2.0, "a", None, True, np.array([1, 2]), np.float32(3)])
def test_bad_action_names_value_and_env_stays_usable(make, action):
    env = make(max_new_tokens=3)
    obs0, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an integer token id"):
        env.step(action)
    obs, _, terminated, _, _ = env.step(np.int64(4))  # still usable, nothing was written
    n = int(obs0["attention_mask"].sum())
    assert obs["input_ids"][n] == 4 and not terminated


def test_step_before_reset_and_after_end(make):
    env = make(max_new_tokens=1)
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(3)
    env.reset(seed=0)
    env.step(3)
    with pytest.raises(ResetNeeded, match="ended"):
        env.step(3)


@pytest.mark.parametrize("bad, match", [
    (lambda p, c: [1.0] * (len(p) + 1), "returned 2 scores for 1"),
    (lambda p, c: [float("nan")] * len(p), "nan|NaN"),
    (lambda p, c: [float("inf")] * len(p), "inf"),
    (lambda p, c: ["high"] * len(p), "high|number|float"),
])
def test_bad_reward_model_output_is_named_and_env_stays_usable(make, bad, match):
    def broken_rm(prompts, completions):
        return bad(prompts, completions)
    env = make(reward_model=broken_rm, max_new_tokens=2)
    env.reset(seed=0)
    env.step(5)
    with pytest.raises(ValueError, match=match) as err:
        env.step(6)
    assert "broken_rm" in str(err.value)
    env.reset(seed=0)  # the env is usable after the failure
    _, r, terminated, _, _ = env.step(5)
    assert r == 0.0 and not terminated


def test_reward_model_failure_leaves_episode_unchanged(make):
    calls = {"n": 0}

    def flaky(prompts, completions):
        calls["n"] += 1
        if calls["n"] == 1:
            return [float("nan")] * len(prompts)
        return [1.0] * len(prompts)

    env = make(reward_model=flaky, max_new_tokens=1)
    obs0, _ = env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(5)
    obs, r, terminated, _, info = env.step(5)  # retried: same state as before the failed call
    n = int(obs0["attention_mask"].sum())
    assert terminated and r == 1.0 and obs["input_ids"][n] == 5 and obs["attention_mask"].sum() == n + 1


@pytest.mark.parametrize("kw, match", [
    ({"prompts": []}, "prompts"),
    ({"task": "poetry"}, "poetry"),
    ({"reward_model": "no-such-model"}, "no-such-model"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_prompt_tokens": -3}, "max_prompt_tokens"),
    ({"reward_mode": "sparse"}, "sparse"),
    ({"tokenizer": "/no/such/dir"}, "/no/such/dir"),
    ({"prompts": "/no/such/prompts.txt"}, "prompts.txt"),
    ({"split": "validation"}, "validation"),
])
def test_bad_arguments_name_the_value(make, kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_tokenizer_exposed_through_wrappers(tiny_tokenizer_dir):
    env = gym.make("TextGen-Arithmetic-v0", tokenizer=str(tiny_tokenizer_dir), reward_model="gold")
    assert len(env.unwrapped.tokenizer) == env.action_space.n


# ---------------------------------------------------------------------------------------------- vector env


def vec_actions(rng, n, V, eos, p_eos=0.1):
    a = rng.integers(2, V, size=n)
    a[rng.random(n) < p_eos] = eos
    return a


@pytest.mark.parametrize("mode", ["NEXT_STEP", "SAME_STEP"])
def test_native_vector_env_matches_sync(tiny_tokenizer_dir, mode):
    kw = dict(tokenizer=str(tiny_tokenizer_dir), reward_model=length_reward, max_new_tokens=3)
    autoreset = AutoresetMode[mode]
    native = gym.make_vec("TextGen-Arithmetic-v0", num_envs=4, autoreset_mode=autoreset, **kw)
    assert isinstance(native.unwrapped, TextGenVectorEnv)
    sync = gym.make_vec("TextGen-Arithmetic-v0", num_envs=4, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": autoreset}, **kw)
    o1, i1 = native.reset(seed=7)
    o2, i2 = sync.reset(seed=7)
    np.testing.assert_array_equal(o1["input_ids"], o2["input_ids"])
    assert list(i1["prompt"]) == list(i2["prompt"])
    rng = np.random.default_rng(0)
    V, eos = native.single_action_space.n, native.unwrapped.setup.eos_id
    for _ in range(12):
        a = vec_actions(rng, 4, V, eos)
        s1, s2 = native.step(a), sync.step(a)
        for x, y in zip(s1[:4], s2[:4]):
            if isinstance(x, dict):
                for k in x:
                    np.testing.assert_array_equal(x[k], y[k])
            else:
                np.testing.assert_array_equal(x, y)
        assert_infos_equal(s1[4], s2[4])


def assert_infos_equal(a, b):
    assert set(a) == set(b), (set(a), set(b))
    for k in a:
        if isinstance(a[k], dict):
            assert_infos_equal(a[k], b[k])
        elif k == "final_obs":
            for x, y in zip(a[k], b[k]):
                assert (x is None) == (y is None)
                if x is not None:
                    np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
        else:
            np.testing.assert_array_equal(a[k], b[k])


def test_vector_env_calls_reward_model_once_per_batch(make_vec):
    calls = []

    def counting(prompts, completions):
        calls.append(len(prompts))
        return [0.5] * len(prompts)

    envs = make_vec(num_envs=8, reward_model=counting, max_new_tokens=2, autoreset_mode="DISABLED")
    envs.reset(seed=0)
    envs.step(np.full(8, 5))
    _, rewards, terminated, _, info = envs.step(np.full(8, 5))
    assert calls == [8] and terminated.all() and (rewards == 0.5).all()
    assert info["_completion"].all() and info["gold_score"].shape == (8,)


def test_vector_disabled_mode_idles_finished_slots_and_reset_mask(make_vec):
    envs = make_vec(num_envs=3, max_new_tokens=4, autoreset_mode=AutoresetMode.DISABLED)
    obs, _ = envs.reset(seed=0)
    eos = envs.setup.eos_id
    _, _, term, _, _ = envs.step(np.array([eos, 5, 5]))
    assert term.tolist() == [True, False, False]
    obs1, r, term, _, _ = envs.step(np.array([7, 5, 5]))
    assert r[0] == 0.0 and not term[0]
    n0 = int(obs["attention_mask"][0].sum())
    assert obs1["attention_mask"][0].sum() == n0 + 1  # the idle slot did not take the action
    obs2, info = envs.reset(options={"reset_mask": np.array([True, False, False])})
    assert info["_prompt"].tolist() == [True, False, False]
    n_new = int(obs2["attention_mask"][0].sum())
    assert (obs2["input_ids"][0, n_new:] == envs.setup.pad_id).all()
    obs3, *_ = envs.step(np.array([9, 5, 5]))
    assert obs3["input_ids"][0, n_new] == 9  # the reset slot acts again
    np.testing.assert_array_equal(obs2["input_ids"][1:], obs1["input_ids"][1:])


def test_vector_reset_with_group_prompts(make_vec):
    envs = make_vec(num_envs=4)
    prompts = ["1+1=", "1+1=", "7+8=", "7+8="]
    obs, info = envs.reset(seed=0, options={"prompts": prompts})
    assert list(info["prompt"]) == prompts
    np.testing.assert_array_equal(obs["input_ids"][0], obs["input_ids"][1])


def test_vector_dense_rewards_sum_to_terminal(make_vec):
    envs = make_vec(num_envs=4, reward_mode="dense", max_new_tokens=3, autoreset_mode="DISABLED")
    envs.reset(seed=1)
    total = np.zeros(4)
    for _ in range(3):
        _, r, term, _, info = envs.step(np.array([5, 6, 7, 8]))
        total += r
    np.testing.assert_allclose(total, info["reward_model_score"])


def test_vector_bad_actions(make_vec):
    envs = make_vec(num_envs=2)
    with pytest.raises(ResetNeeded):
        envs.step(np.array([1, 2]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions\[1\].*-4"):
        envs.step(np.array([1, -4]))
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="float"):
        envs.step(np.array([1.0, 2.0]))
    envs.step(np.array([1, 2]))  # still usable


def test_fast_decode_matches_the_tokenizer(make):
    env = make()
    tok = env.tokenizer
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(0, len(tok), size=int(rng.integers(0, 12)))
        assert env.setup.decode(ids) == tok.decode(ids, skip_special_tokens=True)
    for text in ["Review: The film was great.", "12+30=42", "Use: river, lamp ->"]:
        assert env.setup.encode_prompt(text).tolist() == tok(text, add_special_tokens=False)["input_ids"]
