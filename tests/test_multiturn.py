"""The multi-turn contract (DESIGN "Turns and inserted tokens") and the dialogue task, env side."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import textenv  # noqa: F401  (registers the env ids)
from textenv.env import TextGenEnv
from textenv.tasks import DialogueTask, get_task
from textenv.tasks.base import split_of
from textenv.tasks.dialogue import SLOTS, agent_turns, goal_of, mentions
from textenv.vector import TextGenVectorEnv


def oracle_turns(prompt: str) -> list[str]:
    """A perfect agent's turns: ask for what the opening left out, confirm all three values, book."""
    goal = goal_of(prompt)
    said = mentions(prompt.split("User:", 1)[-1])
    missing = [s for s in SLOTS if not said[s]]
    asks = {"day": "what day", "time": "what time", "people": "how many people"}
    turns = [(" and ".join(asks[s] for s in missing)).capitalize() + "?"] if missing else []
    turns.append(f"{goal['people'].capitalize()} on {goal['day']} at {goal['time']}?")
    turns.append("Booked, thank you!")
    return [f" {t}\n" for t in turns]


def play(env: TextGenEnv, turns: Sequence[str]) -> tuple[list[int], list[float], list[dict]]:
    """Step ``env`` with the tokens of ``turns`` until it terminates; the actions, rewards and infos."""
    actions, rewards, infos = [], [], []
    tok = env.tokenizer
    for ids in (tok(t, add_special_tokens=False)["input_ids"] for t in turns):
        for a in ids:
            _, r, terminated, _, info = env.step(a)
            actions.append(a)
            rewards.append(float(r))
            infos.append(info)
            if terminated:
                return actions, rewards, infos
    raise AssertionError("the dialogue did not end")


def test_perfect_dialogue_single_env_inserts_the_users_replies():
    env = gym.make("TextGen-Dialogue-v0", reward_model="gold").unwrapped
    obs, info = env.reset(seed=3)
    prompt = info["prompt"]
    turns = oracle_turns(prompt)
    actions, rewards, infos = play(env, turns)
    end = infos[-1]
    assert end["gold_score"] == 1.0 and rewards[-1] == 1.0 and sum(rewards[:-1]) == 0.0
    assert end["turn"] == len(turns) and end["inserted_tokens"] == 0  # a booking ends the dialogue
    obs = env._obs()
    ids, mask, ins = obs["input_ids"], obs["attention_mask"], end["inserted_mask"]
    n_prompt = len(env.setup.encode_prompt(prompt))
    # the observation is prompt + agent tokens + inserted tokens; the actions are exactly the agent tokens
    assert int(mask.sum()) == n_prompt + len(actions) + int(ins.sum())
    n = int(mask.sum())
    assert ids[n_prompt:n][ins[n_prompt:n] == 0].tolist() == actions
    assert ins[:n_prompt].sum() == 0 and ins[mask == 0].sum() == 0
    # the inserted runs decode to the user's replies, each after the agent turn it answers
    runs = np.split(np.flatnonzero(ins), np.flatnonzero(np.diff(np.flatnonzero(ins)) > 1) + 1)
    replies = [env.tokenizer.decode(ids[r]) for r in runs]
    assert len(replies) == len(turns) - 1 and all(r.startswith("User: ") and r.endswith("\nAgent:") for r in replies)
    assert replies[-1] == "User: Yes, please.\nAgent:"
    assert end["completion"] == "".join(t + r for t, r in zip(turns, [*replies, ""], strict=True))
    # steps inside a turn carry no turn info; each turn end reports the tokens it inserted
    turn_ends = [i for i, inf in enumerate(infos) if "turn" in inf]
    assert [infos[i]["inserted_tokens"] for i in turn_ends] == [len(r) for r in runs] + [0]


def test_vector_env_matches_single_env_and_reports_insertions_per_slot():
    N = 3
    single = [gym.make("TextGen-Dialogue-v0", reward_model="gold").unwrapped for _ in range(N)]
    prompts = [e.reset(seed=7 + i)[1]["prompt"] for i, e in enumerate(single)]
    envs = TextGenVectorEnv(num_envs=N, task="dialogue", reward_model="gold", autoreset_mode="DISABLED")
    obs, info = envs.reset(seed=7)
    assert list(info["prompt"]) == prompts
    tok = envs.tokenizer
    plans = [[a for t in oracle_turns(p) for a in tok(t, add_special_tokens=False)["input_ids"]] for p in prompts]
    plans[1] = plans[1][:5] + [tok.eos_token_id]  # slot 1 ends early on EOS
    done = np.zeros(N, dtype=bool)
    t = 0
    while not done.all():
        actions = np.array([p[t] if t < len(p) else 0 for p in plans])
        obs, r, term, _, info = envs.step(actions)
        for i in np.flatnonzero(~done):
            o, rs, ts, _, inf = single[i].step(int(actions[i]))
            assert np.array_equal(o["input_ids"], obs["input_ids"][i]) and np.array_equal(
                o["attention_mask"], obs["attention_mask"][i])
            assert rs == r[i] and ts == term[i]
            if "turn" in inf:
                assert info["_turn"][i] and info["inserted_tokens"][i] == inf["inserted_tokens"]
                assert np.array_equal(info["inserted_mask"][i], inf["inserted_mask"])
            elif "_turn" in info:
                assert not info["_turn"][i]
        done |= term
        t += 1
    assert np.array_equal(envs.inserted_mask()[0], single[0].inserted_mask())
    assert envs.completion_ids()[2].size == int(obs["attention_mask"][2].sum()) - len(
        envs.setup.encode_prompt(prompts[2]))


def test_dense_rewards_come_at_turn_ends_and_sum_to_the_terminal_score():
    env = TextGenEnv(task="dialogue", reward_model="gold", reward_mode="dense")
    _, info = env.reset(seed=11)
    turns = oracle_turns(info["prompt"])
    turns[-2] = turns[-2].replace("?", ", right?")  # a confirmation still
    _, rewards, infos = play(env, turns)
    ends = {i for i, inf in enumerate(infos) if "turn" in inf}
    assert all(r == 0.0 for i, r in enumerate(rewards) if i not in ends)
    assert sum(rewards) == pytest.approx(infos[-1]["gold_score"])
    # the confirmation turn earns its potential before the booking does
    assert [rewards[i] for i in sorted(ends)][-2] > 0


def test_turn_budgets_end_turns_and_the_dialogue():
    env = TextGenEnv(task="dialogue", reward_model="gold", max_turns=2, max_new_tokens=4)
    assert env.observation_space["input_ids"].shape == (56 + 2 * 4 + 40,)
    assert env.max_actions == 8 and env.max_episode_tokens == 48
    env.reset(seed=0)
    tok = env.tokenizer
    a = tok(" h", add_special_tokens=False)["input_ids"][0]
    assert tok.decode([a]) == " h"
    infos = []
    for _ in range(8):
        _, _, terminated, _, info = env.step(a)
        infos.append(info)
    assert terminated and infos[3]["turn"] == 1 and infos[-1]["turn"] == 2
    # a turn cut by the budget: the reply starts on a new line, so the transcript keeps its layout
    assert infos[-1]["completion"].count("\nUser: Sorry? I need a table.\nAgent:") == 1
    assert agent_turns(infos[-1]["completion"]) == [" h h h h", " h h h h"]
    with pytest.raises(gym.error.ResetNeeded):
        env.step(a)


def test_eos_ends_the_dialogue_and_single_turn_tasks_are_unchanged():
    env = TextGenEnv(task="dialogue", reward_model="gold")
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(env.tokenizer.eos_token_id)
    assert terminated and info["turn"] == 1 and info["inserted_tokens"] == 0 and info["gold_score"] == 0.0
    plain = TextGenEnv(task="arithmetic", reward_model="gold", max_new_tokens=3)
    assert plain.max_actions == plain.max_episode_tokens == 3 and plain.setup.separator_id is None
    plain.reset(seed=0)
    _, _, _, _, info = plain.step(5)
    assert info == {} and plain.inserted_mask().sum() == 0
    with pytest.raises(ValueError, match="max_turns=3 needs a multi-turn task"):
        TextGenEnv(task="arithmetic", reward_model="gold", max_turns=3)
    with pytest.raises(ValueError, match="max_turns must be an integer"):
        TextGenEnv(task="dialogue", reward_model="gold", max_turns=0)


class _BadTask(DialogueTask):
    name = "bad-dialogue"
    reply: object = "x" * 400

    def next_turn(self, prompt, dialogue, rng):
        rng.random()  # draws that a refused step must give back
        return self.reply


@pytest.mark.parametrize("reply, match", [("x " * 200, "more than max_inserted_tokens"), (3, "must return a str"),
                                          ("", "encodes to no tokens")])
def test_a_bad_reply_is_refused_and_leaves_the_env_as_it_was(reply, match):
    task = _BadTask()
    task.reply = reply
    for env in (TextGenEnv(task=task, reward_model="gold"),
                TextGenVectorEnv(num_envs=2, task=task, reward_model="gold")):
        env.reset(seed=0)
        rng = env.np_random if isinstance(env, TextGenEnv) else env._rngs[0]
        state = rng.bit_generator.state
        before = env._obs()
        sep = env.setup.separator_id
        with pytest.raises(ValueError, match=match):
            env.step(sep if isinstance(env, TextGenEnv) else np.array([sep, sep]))
        after = env._obs()
        assert all(np.array_equal(before[k], after[k]) for k in before)
        assert rng.bit_generator.state == state


def test_separator_must_be_one_token():
    class Sep(DialogueTask):
        name = "sep"
        turn_separator = " Booking complete"

    with pytest.raises(ValueError, match="turn_separator ' Booking complete' must encode to one token"):
        TextGenEnv(task=Sep(), reward_model="gold")


@pytest.mark.parametrize("mode", ["NEXT_STEP", "SAME_STEP"])
def test_vector_autoreset_modes_keep_turn_infos_with_their_episode(mode):
    envs = TextGenVectorEnv(num_envs=2, task="dialogue", reward_model="gold", autoreset_mode=mode,
                            max_new_tokens=2, max_turns=2)
    envs.reset(seed=0)
    a = envs.tokenizer(" hm", add_special_tokens=False)["input_ids"][0]
    eos = envs.tokenizer.eos_token_id
    envs.step(np.array([a, a]))
    _, _, term, _, info = envs.step(np.array([eos, a]))  # slot 0 ends, slot 1's first turn ends
    assert term.tolist() == [True, False]
    top = info
    if mode == "SAME_STEP":
        assert info["final_info"]["_turn"].tolist() == [True, False]
        assert info["final_info"]["inserted_tokens"][0] == 0
    else:
        assert top["_turn"].tolist() == [True, True]
    assert top["_turn"][1] and top["inserted_tokens"][1] > 0 and top["inserted_mask"][1].sum() > 0


def test_dialogue_task_prompts_gold_and_graded_responses():
    task = get_task("dialogue")
    train, test = task.prompts(200, "train", seed=0), task.prompts(200, "test", seed=0)
    assert not set(train) & set(test) and all(split_of(p) == "test" for p in test)
    assert len(set(train)) > 150
    # the hidden slots differ across prompts: the agent cannot guess them from the opening's words alone
    hidden_days = {goal_of(p)["day"] for p in train if not mentions(p.split("User:")[1])["day"]}
    assert len(hidden_days) == 7
    rng = np.random.default_rng(0)
    means = []
    for q in (0.0, 0.5, 1.0):
        resp = [task.sample_response(p, rng, q) for p in train[:120]]
        g = task.gold_score(train[:120], resp)
        assert all(0.0 <= x <= 1.0 for x in g)
        means.append(np.mean(g))
    assert means[0] < 0.3 < means[1] < 0.8 < means[2] == 1.0
    p = train[0]
    goal = goal_of(p)
    good = "".join(oracle_turns(p)).replace("\n", "\nUser: ok\nAgent:", len(oracle_turns(p)) - 1)
    assert task.gold_score([p], [good]) == [1.0]
    wrong_day = next(d for d in SLOTS["day"] if d != goal["day"])
    bad = good.replace(f"on {goal['day']} at", f"on {wrong_day} at")
    assert task.gold_score([p], [bad])[0] < task.gold_score([p], [good])[0]
    unconfirmed = " Booked, thank you!\n"
    assert task.gold_score([p], [unconfirmed]) == [0.0]
    with pytest.raises(ValueError, match="quality must be in"):
        task.sample_response(p, rng, 1.5)


def test_dialogue_env_passes_gymnasium_and_sb3_env_checkers():
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    gym_check_env(gym.make("TextGen-Dialogue-v0", reward_model="gold").unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("TextGen-Dialogue-v0", reward_model="gold"), warn=False)
    envs = gym.make_vec("TextGen-Dialogue-v0", num_envs=2, reward_model="gold")
    assert isinstance(envs.unwrapped, TextGenVectorEnv)
    assert envs.unwrapped.autoreset_mode == AutoresetMode.NEXT_STEP
