"""DatasetTask: a user's JSONL rows and a metric as a task, in the env and through the CLI (issue 13 item 1)."""

from __future__ import annotations

import csv
import json
import math

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401 (registers the ids)
from textenv.metrics import METRICS
from textenv.tasks import DatasetTask, get_task
from textenv.tasks.base import split_of
from textenv.tasks.dataset import hashed_split


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(n=30):
    return [{"prompt": f"Q{i}: name {i}?", "reference": f"number {i}", "id": i} for i in range(n)]


# ---------------------------------------------------------------------------------------------- rows
def test_gold_is_the_metric_against_the_references(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [
        {"prompt": "capital of France?", "references": ["Paris", "paris, France"]},
        {"prompt": "2+2=", "answer": 4},
        {"prompt": "greet", "reference": "hello there"},
    ])
    em = DatasetTask(path, metric="exact_match")
    assert em.gold_score(["capital of France?", "2+2=", "greet"], ["The Paris.", "4", "hello"]) == [1.0, 1.0, 0.0]
    f1 = DatasetTask(path, metric="f1")
    # "hello" against "hello there": precision 1, recall 1/2 -> F1 = 2/3
    assert f1.gold_score(["greet"], ["hello"]) == [pytest.approx(2 / 3)]
    chrf = DatasetTask(path, metric="chrf")
    assert chrf.gold_score(["greet"], ["hello there"]) == [pytest.approx(1.0)]
    assert em.references("capital of France?") == ["Paris", "paris, France"]
    assert em.name == "dataset:d"


def test_a_callable_metric_gets_prompt_completion_and_row():
    seen = []

    def length_match(prompt, completion, row):
        seen.append((prompt, completion, row["target_len"]))
        return float(len(completion) == row["target_len"])

    task = DatasetTask([{"prompt": "p1", "target_len": 3}, {"prompt": "p2", "target_len": 1}], metric=length_match)
    assert task.gold_score(["p1", "p2"], ["abc", "ab"]) == [1.0, 0.0]
    assert seen == [("p1", "abc", 3), ("p2", "ab", 1)]
    assert task.prompt_column_names == ("target_len",)
    assert task.prompt_columns(["p2", "p1"]) == {"target_len": [1, 3]}
    bad = DatasetTask([{"prompt": "p"}, {"prompt": "q"}], metric=lambda p, c, r: float("nan"))
    with pytest.raises(ValueError, match="finite"):
        bad.gold_score(["p"], ["x"])


@pytest.mark.parametrize(("line", "match"), [
    ('{"reference": "x"}', 'non-empty string "prompt"'),
    ('{"prompt": "a"}', "no references for metric 'chrf'"),
    ('{"prompt": "a", "references": "x"}', "non-empty list of strings"),
    ('{"prompt": "a", "reference": 3}', '"reference" must be a string'),
    ('{"prompt": "a", "reference": "x", "split": "dev"}', '"split" must be one of'),
    ('not json', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
])
def test_a_bad_row_names_the_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "reference": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match) as err:
        DatasetTask(path)
    assert f"{path}:3" in str(err.value)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'bleurt'"):
        DatasetTask([{"prompt": "a", "reference": "b"}], metric="bleurt")
    with pytest.raises(ValueError, match="split_fraction"):
        DatasetTask([{"prompt": "a", "reference": "b"}], split_fraction=1.0)
    with pytest.raises(ValueError, match="does not exist"):
        DatasetTask(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="holds no rows"):
        DatasetTask(write_rows(tmp_path / "empty.jsonl", []))
    with pytest.raises(ValueError, match="in split 'test' here and 'train'"):
        DatasetTask([{"prompt": "a", "reference": "b", "split": "train"},
                     {"prompt": "a", "reference": "c", "split": "test"}])
    task = DatasetTask([{"prompt": "a", "reference": "b"}, {"prompt": "c", "reference": "d"}])
    with pytest.raises(ValueError, match="'zzz' is not in task"):
        task.gold_score(["zzz"], ["b"])


# ---------------------------------------------------------------------------------------------- splits
def test_splits_are_deterministic_disjoint_and_follow_the_split_field():
    rows = qa_rows(200)
    task = DatasetTask(rows)
    train, test = set(task.split_prompts("train")), set(task.split_prompts("test"))
    assert train.isdisjoint(test) and len(train | test) == 200
    assert test == {r["prompt"] for r in rows if split_of(r["prompt"]) == "test"}  # the built-in hash at seed 0
    assert set(DatasetTask(rows).split_prompts("test")) == test
    reseeded = set(DatasetTask(rows, seed=3).split_prompts("test"))
    assert reseeded == {r["prompt"] for r in rows if hashed_split(r["prompt"], 0.1, 3) == "test"} != test
    rng = np.random.default_rng(0)
    assert all(task.sample_prompt(rng, "test") in test for _ in range(50))
    explicit = DatasetTask([{**r, "split": "test" if i < 3 else "train"} for i, r in enumerate(rows[:10])])
    assert explicit.split_prompts("test") == [r["prompt"] for r in rows[:3]]


def test_a_small_file_still_has_a_test_prompt_and_duplicates_merge_references():
    rows = [{"prompt": f"p{i}", "reference": f"r{i}"} for i in range(4)] + [{"prompt": "p0", "reference": "other"}]
    task = DatasetTask(rows)
    assert len(task.split_prompts("test")) >= 1
    assert task.references("p0") == ["r0", "other"]
    only_train = DatasetTask([{"prompt": "a", "reference": "b", "split": "train"}])
    with pytest.raises(ValueError, match="no rows in split 'test'"):
        only_train.sample_prompt(np.random.default_rng(0), "test")


def test_no_synthetic_corpora_but_the_built_ins_keep_theirs():
    task = DatasetTask(qa_rows(5))
    with pytest.raises(NotImplementedError, match="dataset"):
        task.sample_response("Q0: name 0?", np.random.default_rng(0), 0.5)
    with pytest.raises(NotImplementedError, match="sft_pairs"):
        task.sft_pairs(2)
    assert len(get_task("arithmetic").sft_pairs(2)) == 2


def test_the_spec_rebuilds_the_task(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", qa_rows(10))
    task = DatasetTask(path, metric="rouge1", seed=2, max_new_tokens=8)
    again = get_task(task.spec())
    assert isinstance(again, DatasetTask) and again.metric == "rouge1" and again.default_max_new_tokens == 8
    assert again.split_prompts("test") == task.split_prompts("test")
    assert DatasetTask(qa_rows(3)).spec() is None  # rows in memory cannot be rebuilt from a file


# ---------------------------------------------------------------------------------------------- the env
def test_gym_make_rewards_with_the_gold_score_by_default(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", qa_rows())
    env = gym.make("TextGen-v0", task=DatasetTask(path, metric="chrf"), max_new_tokens=4)
    obs, info = env.reset(seed=0)
    assert info["prompt"] in env.unwrapped.task.split_prompts("train")
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert reward == info["reward_model_score"] == info["gold_score"]
    assert info["gold_score"] == pytest.approx(DatasetTask(path).gold_score([info["prompt"]], [info["completion"]])[0])
    env.close()


def test_reward_model_overrides_the_gold_and_trl_functions_get_the_columns(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", qa_rows())
    calls = []

    def trl_reward(completions, id, **kwargs):  # noqa: A002 (the dataset's column name)
        calls.append(list(id))
        return [0.25] * len(completions)

    envs = gym.make_vec("TextGen-v0", num_envs=2, task=DatasetTask(path), reward_model=trl_reward, max_new_tokens=2)
    envs.reset(seed=1)
    infos = {}
    for _ in range(2):
        _, rewards, term, _, infos = envs.step(np.array([5, 6]))
    assert term.all() and rewards.tolist() == [0.25, 0.25]
    prompts = list(infos["prompt"])
    assert calls == [[int(p.split(":")[0][1:]) for p in prompts]]
    assert all(0.0 <= g <= 1.0 and not math.isnan(g) for g in infos["gold_score"])
    envs.close()


# ---------------------------------------------------------------------------------------------- the CLI
def _train(rl_main, tmp_path, data, metric, agent="grpo"):
    out = tmp_path / f"run-{metric}"
    args = ["train", "--agent", agent, "--policy", "tiny", "--task-data", str(data), "--metric", metric,
            "--out", str(out), "--episodes", "4", "--eval-episodes", "2", "--batch-size", "4", "--no-progress"]
    if agent == "grpo":
        args += ["--group-size", "2"]
    assert rl_main(args) == 0
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_cli_trains_on_a_users_jsonl_with_each_metric(tmp_path, capsys, metric):
    from agents.cli import main as rl_main

    data = write_rows(tmp_path / "data.jsonl", [{**r, "reference": f"name {r['id']}"} for r in qa_rows(12)])
    out = _train(rl_main, tmp_path, data, metric)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and all(float(r["reward"]) == float(r["gold_score"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["reward"] == summary["final"]["gold_score"]
    meta = json.loads(next(out.glob("checkpoint-*/agent.json")).read_text())
    assert meta["env_kwargs"]["task"]["metric"] == metric and meta["env_kwargs"]["task"]["path"] == str(data)


def test_cli_evaluate_sample_resume_and_bad_flags(tmp_path, capsys):
    from agents.cli import main as rl_main

    data = write_rows(tmp_path / "data.jsonl", qa_rows(12))
    out = _train(rl_main, tmp_path, data, "exact_match", agent="reinforce")
    capsys.readouterr()
    assert rl_main(["evaluate", "--checkpoint", str(out), "--episodes", "2"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["reward"] == evaluated["gold_score"]  # the checkpoint rebuilt the task and its gold reward
    prompt = DatasetTask(data).split_prompts("test")[0]
    assert rl_main(["sample", "--checkpoint", str(out), "--prompt", prompt, "-n", "2"]) == 0
    assert capsys.readouterr().out.count(prompt) == 2
    other = write_rows(tmp_path / "other.jsonl", [{"prompt": f"Other {i}?", "answer": str(i)} for i in range(12)])
    assert rl_main(["evaluate", "--checkpoint", str(out), "--episodes", "2", "--task-data", str(other),
                    "--metric", "f1"]) == 0  # another file's test split, the checkpoint's policy
    assert "gold_score" in json.loads(capsys.readouterr().out)
    other_prompt = DatasetTask(other).split_prompts("test")[0]
    assert rl_main(["sample", "--checkpoint", str(out), "--prompt", other_prompt, "-n", "1", "--task-data",
                    str(other)]) == 0
    assert capsys.readouterr().out.count(other_prompt) == 1
    assert rl_main(["evaluate", "--checkpoint", str(out), "--metric", "f1"]) == 2
    assert rl_main(["train", "--agent", "reinforce", "--policy", "tiny", "--task-data", str(other), "--out", str(out),
                    "--episodes", "8", "--resume", "--no-progress"]) == 2
    assert "--task-data" in capsys.readouterr().err
    assert rl_main(["train", "--metric", "chrf", "--out", str(tmp_path / "x")]) == 2
    assert "needs --task-data" in capsys.readouterr().err
    assert rl_main(["train", "--task-data", str(data), "--metric", "meteor", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_finetune_pairs_and_train_reward_task_data(tmp_path):
    from textenv.cli import main

    data = write_rows(tmp_path / "data.jsonl", [{"prompt": f"{a}+1=", "references": [str(a + 1), f"{a + 1}."]}
                                                for a in range(20)])
    from textenv.training.lm import load_pairs_jsonl

    pairs = load_pairs_jsonl(data)
    assert len(pairs) == 40 and pairs[:2] == [("0+1=", "1"), ("0+1=", "1.")]
    sft = tmp_path / "sft"
    assert main(["finetune", "--model", "tiny", "--out", str(sft), "--pairs", str(data), "--steps", "2",
                 "--batch-size", "4", "--max-length", "16", "--no-progress"]) == 0
    rm = tmp_path / "rm"
    assert main(["train-reward", "--out", str(rm), "--task-data", str(data), "--metric", "exact_match",
                 "--policy", str(sft), "--samples", "2", "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    meta = json.loads((rm / "textenv_reward.json").read_text())
    assert meta["task"] == "dataset:data"


def test_scored_policy_rows_score_samples_and_references(tiny_lm, tiny_tokenizer):
    from textenv.training.scored import preference_rows, scored_policy_rows

    task = DatasetTask([{"prompt": f"{a}+1=", "answer": str(a + 1)} for a in range(6)], metric="exact_match")
    rows = scored_policy_rows(task, tiny_lm, tiny_tokenizer, samples_per_prompt=3, max_new_tokens=3, seed=0)
    prompts = task.split_prompts("train")
    assert len(rows) == len(prompts) * 4  # 3 samples and one reference each
    refs = [r for r in rows if r["completion"] == task.references(r["prompt"])[0]]
    assert refs and all(r["score"] == 1.0 for r in refs)
    assert rows == scored_policy_rows(task, tiny_lm, tiny_tokenizer, samples_per_prompt=3, max_new_tokens=3, seed=0)
    pairs = preference_rows(rows)
    assert pairs and all(task.gold_score([p["prompt"]] * 2, [p["chosen"], p["rejected"]]) == [1.0, 0.0]
                         for p in pairs)
