"""``info["gold_details"]`` at episode end (issue 12): the task's gold parts, present only at the end, in
Gymnasium's nested vector layout, and computed once (a task with its own details is never scored twice)."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401  (registers the env ids)
from textenv.tasks import Task
from textenv.vector import TextGenVectorEnv

DETAIL_KEYS = {"TextGen-Translation-v0": {"gold", "chrf", "bleu"}, "TextGen-QA-v0": {"gold", "f1", "exact_match"}}
IDS = sorted(DETAIL_KEYS)


def zero_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward model that never touches the task's gold scorers."""
    return [0.0] * len(completions)


def best_tokens(env: gym.Env, prompt: str) -> list[int]:
    """The token ids of the task's best response to ``prompt``, then EOS (an episode with non-zero parts)."""
    u = env.unwrapped
    text = u.task.sample_response(prompt, np.random.default_rng(0), 1.0)
    return [*u.tokenizer(text, add_special_tokens=False)["input_ids"], u.setup.eos_id]


def play(env: gym.Env, actions: Sequence[int] | None = None) -> tuple[list[dict], dict]:
    """Step one episode (``actions``, else random ones): the infos before the last step and the last one."""
    before, step = [], 0
    while True:
        a = env.action_space.sample() if actions is None else actions[step]
        _, _, terminated, truncated, info = env.step(int(a))
        step += 1
        if terminated or truncated:
            return before, info
        before.append(info)


def counting(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    """Patch ``cls.name`` to record the batch size of every call (and still do its work)."""
    calls: list[int] = []
    original = getattr(cls, name)

    def wrapped(self: Task, prompts: Sequence[str], completions: Sequence[str]) -> object:
        calls.append(len(prompts))
        return original(self, prompts, completions)

    monkeypatch.setattr(cls, name, wrapped)
    return calls


def assert_infos_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b), (set(a), set(b))
    for k in a:
        if isinstance(a[k], dict):
            assert_infos_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------------------------------- single env
@pytest.mark.parametrize("env_id", IDS)
def test_single_env_details_at_the_end_only_and_equal_to_the_task(env_id: str) -> None:
    env = gym.make(env_id, reward_model=zero_reward)
    task = env.unwrapped.task
    prompt = task.sample_prompt(np.random.default_rng(1))
    env.action_space.seed(0)
    for options in ({"prompt": prompt}, None):  # the best response (non-zero parts), then random tokens
        _, reset_info = env.reset(seed=0, options=options)
        actions = best_tokens(env, prompt) if options else None
        before, info = play(env, actions)
        assert "gold_details" not in reset_info and all("gold_details" not in i for i in before)
        details = info["gold_details"]
        assert set(details) == DETAIL_KEYS[env_id] and all(type(v) is float for v in details.values())
        assert details["gold"] == info["gold_score"]
        assert details == task.gold_details([info["prompt"]], [info["completion"]])[0]
        if options:
            assert details["gold"] > 0.5, (info["completion"], details)


@pytest.mark.parametrize("env_id", IDS)
def test_single_env_scores_gold_once(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = gym.make(env_id, reward_model=zero_reward)
    cls = type(env.unwrapped.task)
    score_calls, detail_calls = counting(monkeypatch, cls, "gold_score"), counting(monkeypatch, cls, "gold_details")
    env.reset(seed=0)
    env.action_space.seed(0)
    _, info = play(env)
    assert score_calls == [] and detail_calls == [1]
    assert info["gold_details"]["gold"] == info["gold_score"]


def test_task_without_details_gets_gold_alone_from_gold_score(monkeypatch: pytest.MonkeyPatch) -> None:
    env = gym.make("TextGen-Arithmetic-v0", reward_model=zero_reward)
    score_calls = counting(monkeypatch, type(env.unwrapped.task), "gold_score")

    def boom(self: Task, prompts: Sequence[str], completions: Sequence[str]) -> object:
        raise AssertionError("gold_details must not be called for a task without its own")

    monkeypatch.setattr(Task, "gold_details", boom)
    env.reset(seed=0)
    env.action_space.seed(0)
    _, info = play(env)
    assert score_calls == [1] and info["gold_details"] == {"gold": info["gold_score"]}


# ---------------------------------------------------------------------------------------------- vector env
@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_details_per_slot_at_the_end_only(env_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    envs = gym.make_vec(env_id, num_envs=4, reward_model=zero_reward, autoreset_mode="DISABLED")
    assert isinstance(envs.unwrapped, TextGenVectorEnv)
    task = envs.unwrapped.task
    cls = type(task)
    rng = np.random.default_rng(2)
    prompts = [task.sample_prompt(rng) for _ in range(4)]
    # slot 0 writes the best response, slot 1 its first token (each ends at its own step), 2 and 3 random tokens
    V, eos = envs.unwrapped.vocab_size, envs.unwrapped.setup.eos_id
    plans = [best_tokens(envs, prompts[0]), best_tokens(envs, prompts[1])[:1] + [eos],
             rng.integers(0, V, 64).tolist(), rng.integers(0, V, 64).tolist()]
    envs.reset(seed=0, options={"prompts": prompts})
    score_calls, detail_calls = counting(monkeypatch, cls, "gold_score"), counting(monkeypatch, cls, "gold_details")
    done = np.zeros(4, dtype=bool)
    seen, positive = 0, 0
    for step in range(64):
        actions = np.array([plan[min(step, len(plan) - 1)] for plan in plans])
        calls_before = len(detail_calls)
        _, _, terminated, _, info = envs.step(actions)
        if not terminated.any():
            assert "gold_details" not in info and "_gold_details" not in info
            assert detail_calls[calls_before:] == []
            continue
        assert detail_calls[calls_before:] == [int(terminated.sum())]  # one call for the step's finished slots
        d = info["gold_details"]
        assert info["_gold_details"].tolist() == terminated.tolist()
        assert set(d) == DETAIL_KEYS[env_id] | {f"_{k}" for k in DETAIL_KEYS[env_id]}
        for k in DETAIL_KEYS[env_id]:
            assert d[k].dtype == np.float64 and d[f"_{k}"].tolist() == terminated.tolist()
        np.testing.assert_array_equal(d["gold"], info["gold_score"])
        for i in np.flatnonzero(terminated):
            expected = task.gold_details([info["prompt"][i]], [info["completion"][i]])[0]
            assert {k: d[k][i] for k in expected} == expected
            positive += expected["gold"] > 0
        seen += int(terminated.sum())
        done |= terminated
        if done.all():
            break
    assert seen == 4 and positive >= 1 and score_calls == []


def test_vector_env_layout_matches_gymnasium_sync() -> None:
    kw = dict(reward_model=zero_reward, max_new_tokens=4)
    native = gym.make_vec("TextGen-Translation-v0", num_envs=3, **kw)
    sync = gym.make_vec("TextGen-Translation-v0", num_envs=3, vectorization_mode="sync", **kw)
    native.reset(seed=3)
    sync.reset(seed=3)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(10):
        a = rng.integers(2, native.single_action_space.n, size=3)
        s1, s2 = native.step(a), sync.step(a)
        assert_infos_equal(s1[4], s2[4])
        ended += int("gold_details" in s1[4])
    assert ended >= 2


def test_vector_env_task_without_details_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    envs = gym.make_vec("TextGen-Arithmetic-v0", num_envs=4, reward_model=zero_reward, max_new_tokens=2,
                        autoreset_mode="DISABLED")
    monkeypatch.setattr(Task, "gold_details", lambda self, p, c: pytest.fail("gold_details called"))
    envs.reset(seed=0)
    envs.step(np.full(4, 5))
    _, _, terminated, _, info = envs.step(np.full(4, 5))
    assert terminated.all()
    assert set(info["gold_details"]) == {"gold", "_gold"} and info["_gold_details"].all()
    np.testing.assert_array_equal(info["gold_details"]["gold"], info["gold_score"])
    assert info["gold_details"]["gold"] is not info["gold_score"]  # a copy: editing one leaves the other


class _ShiftingTask(Task):
    """Details whose key set depends on the text: ``"first"`` only for a non-empty completion."""

    name = "shifting"

    def generate_prompt(self, rng: np.random.Generator) -> str:
        return "Review: fine"

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [d["gold"] for d in self.gold_details(prompts, completions)]

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        return [{"gold": min(1.0, len(c) / 10), **({"first": float(ord(c[0]))} if c else {})} for c in completions]


def test_vector_env_masks_a_part_some_episodes_lack() -> None:
    kw = dict(task=_ShiftingTask(), reward_model=zero_reward, max_new_tokens=1)
    envs = TextGenVectorEnv(num_envs=2, **kw)
    eos = envs.setup.eos_id
    word = envs.tokenizer(" good", add_special_tokens=False)["input_ids"][0]
    envs.reset(seed=0)
    _, _, terminated, _, info = envs.step(np.array([eos, word]))  # slot 0: empty completion
    d = info["gold_details"]
    assert terminated.all() and d["_gold"].tolist() == [True, True] and d["_first"].tolist() == [False, True]
    assert d["first"][1] == float(ord(info["completion"][1][0])) and d["gold"].tolist() == info["gold_score"].tolist()
    single = gym.make("TextGen-v0", **kw)
    single.reset(seed=0)
    assert single.step(eos)[4]["gold_details"] == {"gold": 0.0}


class _NoGoldTask(_ShiftingTask):
    name = "no_gold"

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        return [{"score": 1.0} for _ in completions]


class _ShortTask(_ShiftingTask):
    name = "short"

    def gold_details(self, prompts: Sequence[str], completions: Sequence[str]) -> list[dict[str, float]]:
        return []


@pytest.mark.parametrize(("task", "match"), [(_NoGoldTask(), "'no_gold'.*\"gold\" entry.*'score'"),
                                             (_ShortTask(), "'short'.*list of 1 dicts.*got \\[\\]")])
def test_bad_details_are_a_clear_error_and_change_nothing(task: Task, match: str) -> None:
    env = gym.make("TextGen-v0", task=task, reward_model=zero_reward, max_new_tokens=1)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(5)
    np.testing.assert_array_equal(env.unwrapped._ids, obs["input_ids"])  # the token was taken back


# ---------------------------------------------------------------------------------------------- checkers
def test_both_env_checkers_pass() -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    gym_check_env(gym.make("TextGen-QA-v0", reward_model=zero_reward).unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("TextGen-QA-v0", reward_model=zero_reward), warn=False)
