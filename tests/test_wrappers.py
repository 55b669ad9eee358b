"""textenv.wrappers.ResponseLevel: a whole response per step, scored by the env's reward model (item 4)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import textenv  # noqa: F401 (registers the ids)
from textenv.tasks import DatasetTask
from textenv.tasks.arithmetic import parse_problem
from textenv.wrappers import AnyText, ResponseLevel


def arithmetic(**kwargs):
    return ResponseLevel(gym.make("TextGen-Arithmetic-v0", reward_model="gold", **kwargs))


@pytest.mark.parametrize("env_id", ["TextGen-Arithmetic-v0", "TextGen-v0", "TextGen-Translation-v0"])
def test_passes_gymnasiums_env_checker(env_id):
    env = ResponseLevel(gym.make(env_id, reward_model="gold", render_mode="ansi").unwrapped)
    assert isinstance(env.action_space, gym.spaces.Text) and isinstance(env.observation_space, AnyText)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    others = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert others == []


def test_a_step_is_an_episode_scored_by_the_reward_model():
    env = arithmetic()
    prompt, info = env.reset(seed=0)
    assert prompt == info["prompt"] and parse_problem(prompt) is not None
    text, reward, terminated, truncated, info = env.step(str(parse_problem(prompt)))
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert text == prompt + info["completion"] and info["gold_score"] == 1.0 and not info["response_truncated"]
    prompt, _ = env.reset(options={"prompt": "2+3="})
    _, reward, _, _, info = env.step("6")
    assert prompt == "2+3=" and reward == 0.0 and info["completion"] == "6"


def test_token_ids_strings_eos_and_truncation():
    env = arithmetic()
    tok = env.unwrapped.tokenizer
    env.reset(options={"prompt": "2+3="})
    ids = tok("5", add_special_tokens=False)["input_ids"]
    assert env.step(np.array(ids))[1] == 1.0  # a token id array
    env.reset(options={"prompt": "2+3="})
    _, reward, _, _, info = env.step(ids + [tok.eos_token_id] + ids)  # EOS ends the response
    assert reward == 1.0 and info["completion"] == "5" and info["response_truncated"]
    env.reset(options={"prompt": "2+3="})
    _, reward, _, _, info = env.step("5" * 40)  # past max_new_tokens (4): cut there
    assert info["response_tokens"] == 4 and info["response_truncated"] and reward == 0.0
    env.reset(options={"prompt": "2+3="})
    _, _, terminated, _, info = env.step("")
    assert terminated and info["completion"] == ""


def test_dense_rewards_sum_to_the_score_and_a_dataset_task_works():
    rows = [{"prompt": f"Say {i}:", "reference": f"the number {i}"} for i in range(10)]
    env = ResponseLevel(gym.make("TextGen-v0", task=DatasetTask(rows, metric="chrf"), reward_mode="dense",
                                 max_new_tokens=12))
    env.reset(options={"prompt": "Say 3:"})
    _, reward, _, _, info = env.step("the number 3")
    assert reward == pytest.approx(info["reward_model_score"]) == pytest.approx(1.0)
    env.reset(options={"prompt": "Say 3:"})
    _, partial, _, _, info = env.step("the numb")
    assert 0.0 < partial < 1.0 and partial == pytest.approx(info["gold_score"])


def test_bad_actions_and_envs_are_refused():
    env = arithmetic()
    env.reset(options={"prompt": "2+3="})
    for bad in (5, 1.5, [1, -1], [1, 10**9], {"text": "5"}):
        with pytest.raises(ValueError, match="response|token id"):
            env.step(bad)
    assert env.step("5")[1] == 1.0  # the refused steps changed nothing
    with pytest.raises(TypeError, match="TextGenEnv"):
        ResponseLevel(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="max_response_chars"):
        ResponseLevel(gym.make("TextGen-Arithmetic-v0"), max_response_chars=0)
    assert env.action_space.contains("é ünïcode") and not env.action_space.contains(5)


def test_multi_turn_task_is_one_step_per_turn():
    """On TextGen-Dialogue-v0 a step is one agent turn: the separator ends it when the response does not, the
    observation carries the user's reply, and the dialogue's end is the wrapped env's."""
    from test_multiturn import oracle_turns

    env = ResponseLevel(gym.make("TextGen-Dialogue-v0", reward_model="gold"))
    prompt, info = env.reset(seed=3)
    turns = [t.strip() for t in oracle_turns(prompt)]  # no trailing separator: the wrapper adds it
    rewards, texts = [], [prompt]
    for k, turn in enumerate(turns):
        text, reward, terminated, truncated, info = env.step(turn)
        rewards.append(float(reward))
        texts.append(text)
        assert terminated == (k == len(turns) - 1) and not truncated
        assert info["turn"] == k + 1
        if not terminated:  # the user's reply follows the agent's turn in the observation
            assert text.startswith(texts[-2]) and text.endswith("\nAgent:") and "User: " in text[len(texts[-2]):]
            assert info["inserted_tokens"] > 0
    assert rewards[:-1] == [0.0] * (len(turns) - 1) and rewards[-1] == 1.0 and info["gold_score"] == 1.0
    # the whole transcript is what the env scored
    assert texts[-1] == prompt + info["completion"]
    # a response longer than the turn's budget (32 tokens) is cut there, and the turn ends
    env.reset(seed=4)
    _, _, terminated, _, info = env.step("la " * 100)
    assert not terminated and info["turn"] == 1 and info["response_tokens"] == 32 and info["response_truncated"]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        check_env(ResponseLevel(gym.make("TextGen-Dialogue-v0", reward_model="gold").unwrapped))
