"""textenv.integrations.trl: tasks and envs as TRL's dataset and reward functions; one GRPOTrainer step (item 3)."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import pytest
import torch

import textenv  # noqa: F401 (registers the ids)
from textenv.integrations.trl import TRLReward, to_trl
from textenv.tasks import DatasetTask, get_task

pytest.importorskip("datasets")


def test_a_built_in_task_as_prompts_columns_and_reward_funcs():
    data = to_trl("arithmetic", n_prompts=16, seed=3, reward_model="gold")
    assert data.dataset.column_names == ["prompt", "answer"] and len(data.dataset) == 16
    assert data.dataset["prompt"] == get_task("arithmetic").prompts(16, seed=3)
    rm, gold = data.reward_funcs
    assert (rm.__name__, gold.__name__) == ("reward_model", "gold") and data.reward_weights == [1.0, 0.0]
    row = data.dataset[0]
    right, wrong = row["answer"], str(int(row["answer"]) + 1)
    # TRL calls every reward function with keywords, dataset columns and its own extras included
    kwargs = {"prompts": [row["prompt"]] * 2, "completions": [right, wrong], "completion_ids": [[1], [2]],
              "answer": [right] * 2, "trainer_state": None, "log_metric": print}
    assert gold(**kwargs) == [1.0, 0.0] and rm(**kwargs) == [1.0, 0.0]
    with pytest.raises(ValueError, match="plain text"):
        gold(prompts=[[{"role": "user", "content": "2+2="}]], completions=["4"])
    assert to_trl("arithmetic", n_prompts=4, split="test").dataset["prompt"] == get_task("arithmetic").prompts(
        4, split="test")


def test_a_dataset_task_and_an_env(tmp_path):
    rows = [{"prompt": f"Q{i}", "reference": f"answer {i}", "lang": "en"} for i in range(20)]
    task = DatasetTask(rows, metric="f1")
    data = to_trl(task)  # every train prompt once, its other fields as columns
    assert sorted(data.dataset["prompt"]) == sorted(task.split_prompts("train"))
    assert data.dataset.column_names == ["prompt", "reference", "lang"]
    assert data.reward_funcs[0](prompts=["Q1"], completions=["answer 1"]) == [1.0]  # the default reward is gold
    assert len(to_trl(task, n_prompts=40).dataset) == 40

    def trl_style(completions, reference, **kwargs):
        return [float(c == r) for c, r in zip(completions, reference)]

    env = gym.make("TextGen-v0", task=task, reward_model=trl_style, prompts=["Q1", "Q2"])
    data = to_trl(env)  # the env's prompt list and its own reward model
    assert data.dataset["prompt"] == ["Q1", "Q2"]
    assert data.reward_funcs[0](prompts=["Q1", "Q2"], completions=["answer 1", "x"], reference=["answer 1", "answer 2"]
                                ) == [1.0, 0.0]
    env.close()


def test_bad_inputs(monkeypatch):
    with pytest.raises(ValueError, match="n_prompts"):
        to_trl("arithmetic", n_prompts=0)
    with pytest.raises(ValueError, match="split"):
        to_trl("arithmetic", split="dev")
    with pytest.raises(ValueError, match="unknown task"):
        to_trl("chess")
    with pytest.raises(ValueError, match="'dialogue' is multi-turn"):
        to_trl("dialogue", n_prompts=2, reward_model="gold")
    bad = TRLReward("reward_model", get_task("arithmetic"), lambda p, c: [float("nan")] * len(c))
    with pytest.raises(Exception, match="NaN|finite"):
        bad(prompts=["1+1="], completions=["2"])
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"textenv\[trl\]"):
        to_trl("arithmetic", n_prompts=2)


def test_one_grpo_trainer_step_on_a_textenv_task(tmp_path, tiny_lm, tiny_tokenizer):
    pytest.importorskip("trl")
    from trl import GRPOConfig, GRPOTrainer

    model_dir = tmp_path / "model"
    tiny_lm.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    # chrF gives random completions different, non-zero scores: the group advantages are not all zero
    task = DatasetTask([{"prompt": f"{a}+{a}=", "reference": f"{2 * a} is {a}+{a}"} for a in range(30)], metric="chrf")
    data = to_trl(task, n_prompts=8)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=4, learning_rate=1e-2, beta=0.0, logging_steps=1,
                      report_to="none", save_strategy="no", disable_tqdm=True, bf16=False,
                      reward_weights=data.reward_weights, seed=0)
    before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=data.reward_funcs, args=args,
                          train_dataset=data.dataset, processing_class=tiny_tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/gold/mean" in h]
    assert logs and 0.0 <= logs[-1]["rewards/gold/mean"] <= 1.0 and "rewards/reward_model/mean" in logs[-1]
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before if k in after)
    json.dumps(logs[-1])  # plain numbers
