"""task="reasoning_gym:<dataset>": reasoning-gym's generator and scorer as a task, offline (issue 13 item 2)."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401 (registers the ids)
from textenv.tasks import get_task
from textenv.tasks.base import split_of

pytest.importorskip("reasoning_gym")

from textenv.tasks.reasoning import ReasoningGymTask  # noqa: E402


def test_prompts_come_from_the_generator_with_our_splits():
    task = get_task("reasoning_gym:basic_arithmetic", size=200, min_terms=2, max_terms=2)
    assert isinstance(task, ReasoningGymTask) and task.name == "reasoning_gym:basic_arithmetic"
    train, test = task.prompts(30, "train", seed=1), task.prompts(10, "test", seed=1)
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "test" for p in test)
    assert train == get_task("reasoning_gym:basic_arithmetic", size=200, min_terms=2, max_terms=2).prompts(
        30, "train", seed=1)  # the same questions on every machine: seeded, no download
    entry = task.entry(train[0])
    assert train[0].startswith("Answer the question directly") and train[0].endswith(entry["question"] + "\n")
    assert entry["metadata"]["num_terms"] == 2


def test_gold_is_its_score_answer_on_the_tagged_answer():
    task = ReasoningGymTask("basic_arithmetic", size=50, seed=3)
    prompt = task.prompts(1)[0]
    answer = task.entry(prompt)["answer"]
    assert task.gold_score([prompt] * 4, [f"I think <answer>{answer}</answer>", f"<answer>x</answer> <answer>{answer}</answer>",
                                          answer, "<answer>not it</answer>"]) == [1.0, 1.0, 0.0, 0.0]
    raw = ReasoningGymTask("basic_arithmetic", size=50, seed=3, extract="raw", system_prompt=None)
    prompt = raw.prompts(1)[0]
    assert prompt == raw.entry(prompt)["question"] + "\n"
    assert raw.gold_score([prompt, prompt], [f" {raw.entry(prompt)['answer']}\nmore", ""]) == [1.0, 0.0]
    assert raw.prompt_columns([prompt])["answer"] == [raw.entry(prompt)["answer"]]
    with pytest.raises(ValueError, match="was not drawn"):
        task.gold_score(["Calculate 1 + 1."], ["2"])


def test_a_second_dataset_and_bad_settings():
    task = ReasoningGymTask("leg_counting", size=20)
    prompt = task.prompts(1)[0]
    assert task.gold_score([prompt], [f"<answer>{task.entry(prompt)['answer']}</answer>"]) == [1.0]
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'no_such_set'"):
        get_task("reasoning_gym:no_such_set")
    with pytest.raises(ValueError, match="extract"):
        ReasoningGymTask("leg_counting", extract="json")
    with pytest.raises(ValueError, match="refused its settings"):
        ReasoningGymTask("basic_arithmetic", no_such_setting=1)


def test_the_spec_rebuilds_the_task():
    task = ReasoningGymTask("basic_arithmetic", size=30, seed=4, system_prompt=None, extract="raw", max_terms=2,
                            max_new_tokens=6)
    again = get_task(task.spec())
    assert isinstance(again, ReasoningGymTask) and again.spec() == task.spec()
    assert again.prompts(5, seed=2) == task.prompts(5, seed=2) and again.default_max_new_tokens == 6


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import reasoning_gym now raises ImportError
    with pytest.raises(ImportError, match=r"textenv\[reasoning\]"):
        get_task("reasoning_gym:basic_arithmetic")


def test_an_env_episode_rewards_with_its_scorer():
    env = gym.make("TextGen-v0", task="reasoning_gym:basic_arithmetic", max_new_tokens=3)
    obs, info = env.reset(seed=0)
    terminated = False
    while not terminated:
        obs, reward, terminated, _, info = env.step(env.action_space.sample())
    assert reward == info["gold_score"] == info["reward_model_score"]
    task = env.unwrapped.task
    assert task.gold_score([info["prompt"]], [info["completion"]]) == [reward]
    env.close()
    # the right answer between tags, written token by token, scores 1
    tagged = f"<answer>{task.entry(info['prompt'])['answer']}</answer>"
    ids = env.unwrapped.tokenizer(tagged, add_special_tokens=False)["input_ids"]
    env = gym.make("TextGen-v0", task=task, max_new_tokens=len(ids))
    env.reset(options={"prompt": info["prompt"]})
    for tok in ids:
        _, reward, terminated, _, end = env.step(tok)
    assert terminated and end["completion"] == tagged and reward == 1.0
    assert np.isfinite(reward)
    env.close()


def test_cli_trains_and_evaluates_a_reasoning_gym_task(tmp_path, capsys):
    import json

    from agents.cli import main as rl_main
    from textenv.models import load_causal_lm, load_tokenizer

    policy = tmp_path / "policy"  # a tiny GPT-2 with room for the system prompt (160 positions)
    load_causal_lm("tiny", n_layer=1, n_embd=32, n_head=2, n_positions=256).save_pretrained(policy)
    load_tokenizer("default").save_pretrained(policy)
    out = tmp_path / "run"
    assert rl_main(["train", "--agent", "grpo", "--policy", str(policy), "--task", "reasoning_gym:basic_arithmetic",
                    "--out", str(out), "--episodes", "4", "--eval-episodes", "2", "--batch-size", "4",
                    "--group-size", "2", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["reward"] == summary["final"]["gold_score"]
    capsys.readouterr()
    assert rl_main(["evaluate", "--checkpoint", str(out), "--episodes", "2"]) == 0
    assert "gold_score" in json.loads(capsys.readouterr().out)
    assert rl_main(["train", "--task", "reasoning_gym:nope", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
