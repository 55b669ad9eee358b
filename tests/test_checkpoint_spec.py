"""Checkpoints say what reward model they hold (textenv.rewards.spec) and refuse to rebuild what they cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agents import REINFORCE, LMPolicy
from agents.base import rebuild_env
from textenv.rewards import CallableReward, CompositeReward, GoldReward
from textenv.rewards.spec import (
    RewardModelChangedWarning,
    describe_reward_model,
    directory_sha256,
    is_rebuildable,
    rebuild_reward_model,
)

ENV = "TextGen-Arithmetic-v0"


def digit_share(prompts: list[str], completions: list[str]) -> list[float]:
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def tiny_policy(tok) -> LMPolicy:
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    cfg = tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LMPolicy(GPT2LMHeadModel(cfg).eval(), tok)


def reward_dir(path: Path, tokenizer) -> Path:
    from transformers import GPT2ForSequenceClassification

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(1)
    cfg = tiny_gpt2_config(len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=64, num_labels=1)
    GPT2ForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make(tok, reward_model, **env_kwargs) -> REINFORCE:
    return REINFORCE(ENV, policy=tiny_policy(tok), batch_size=4, device="cpu",
                     env_kwargs={"reward_model": reward_model, "max_new_tokens": 3, **env_kwargs})


def meta(path: Path) -> dict:
    return json.loads((path / "agent.json").read_text())


# ------------------------------------------------------------------------------------------ the spec itself
def test_kinds_and_round_trips(tmp_path):
    d = tmp_path / "rm"
    d.mkdir()
    (d / "weights.bin").write_bytes(b"123")
    assert describe_reward_model("default") == {"kind": "builtin-default"}
    assert describe_reward_model(None) == {"kind": "builtin-default"}
    assert describe_reward_model("gold") == {"kind": "gold"}
    assert describe_reward_model(d) == {"kind": "directory", "path": str(d.resolve()),
                                        "sha256": directory_sha256(d)}
    assert describe_reward_model("org/some-model") == {"kind": "hf-id", "name": "org/some-model"}
    comp = describe_reward_model([("gold", 0.5), str(d)])
    assert comp["kind"] == "composite" and [c["weight"] for c in comp["components"]] == [0.5, 1.0]
    assert rebuild_reward_model(comp) == [("gold", 0.5), (str(d.resolve()), 1.0)]
    assert rebuild_reward_model({"kind": "builtin-default"}) == "default"
    assert rebuild_reward_model({"kind": "hf-id", "name": "org/m"}) == "org/m"
    for spec in ("default", "gold", d, [("gold", 2.0)]):
        assert is_rebuildable(describe_reward_model(spec))


def test_adapters_are_described_by_what_they_wrap():
    from textenv.tasks import get_task

    gold = GoldReward(get_task("arithmetic"))
    assert describe_reward_model(gold) == {"kind": "gold", "task": "arithmetic"}
    assert isinstance(rebuild_reward_model(describe_reward_model(gold)), GoldReward)
    cr = describe_reward_model(CallableReward(digit_share))
    assert cr["kind"] == "callable" and cr["name"] == "digit_share" and cr["qualname"].endswith(".digit_share")
    comp = describe_reward_model(CompositeReward([(gold, 1.0), (digit_share, 0.25)]))
    assert [c["reward"]["kind"] for c in comp["components"]] == ["gold", "callable"]
    assert not is_rebuildable(comp)

    class Scorer:
        def __call__(self, prompts, completions):
            return [0.0] * len(completions)

    obj = describe_reward_model(Scorer())
    assert obj["kind"] == "object" and obj["name"].endswith("Scorer")


@pytest.mark.parametrize("spec", [digit_share, [("gold", 1.0), (digit_share, 0.5)]])
def test_callables_cannot_be_rebuilt(spec):
    with pytest.raises(ValueError, match=r"digit_share.*env= or env_kwargs="):
        rebuild_reward_model(describe_reward_model(spec), "ckpt/agent.json")


def test_unknown_kind_and_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="unknown reward model spec"):
        rebuild_reward_model({"kind": "martian"})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        rebuild_reward_model({"kind": "directory", "path": str(tmp_path / "nowhere"), "sha256": "0"})


def test_directory_hash_sees_names_and_bytes(tmp_path):
    d = tmp_path / "rm"
    d.mkdir()
    (d / "a").write_bytes(b"1")
    h = directory_sha256(d)
    (d / "a").write_bytes(b"2")
    assert directory_sha256(d) != h
    (d / "a").write_bytes(b"1")
    assert directory_sha256(d) == h
    (d / "a").rename(d / "b")
    assert directory_sha256(d) != h


# ------------------------------------------------------------------------------------------ agent checkpoints
def test_callable_reward_no_longer_falls_back_to_the_default(tiny_tokenizer, tmp_path):
    agent = make(tiny_tokenizer, digit_share)
    agent.save(tmp_path / "ckpt")
    m = meta(tmp_path / "ckpt")
    assert m["reward_model"]["kind"] == "callable" and m["reward_model"]["name"] == "digit_share"
    assert m["env_kwargs"] == {"max_new_tokens": 3}
    with pytest.raises(ValueError, match=r"digit_share.*pass env= or env_kwargs="):
        REINFORCE.load(tmp_path / "ckpt")
    loaded = REINFORCE.load(tmp_path / "ckpt", env_kwargs={"reward_model": digit_share, "max_new_tokens": 3})
    assert loaded.envs.reward_model.name == "digit_share" and loaded.envs.max_new_tokens == 3
    assert loaded.evaluate(4) == agent.evaluate(4)


def test_gold_and_directory_rewards_are_rebuilt(tiny_tokenizer, tmp_path):
    agent = make(tiny_tokenizer, "gold")
    agent.save(tmp_path / "gold")
    assert meta(tmp_path / "gold")["reward_model"] == {"kind": "gold"}
    loaded = REINFORCE.load(tmp_path / "gold")
    assert isinstance(loaded.envs.reward_model, GoldReward) and loaded.env_kwargs["max_new_tokens"] == 3

    rm = reward_dir(tmp_path / "rm", tiny_tokenizer)
    agent = make(tiny_tokenizer, str(rm))
    agent.save(tmp_path / "dir")
    spec = meta(tmp_path / "dir")["reward_model"]
    assert spec == {"kind": "directory", "path": str(rm.resolve()), "sha256": directory_sha256(rm)}
    loaded = REINFORCE.load(tmp_path / "dir")
    assert loaded.env_kwargs["reward_model"] == str(rm.resolve())
    assert loaded.evaluate(4) == agent.evaluate(4)
    (rm / "extra.txt").write_text("changed")
    with pytest.warns(RewardModelChangedWarning, match="changed since the checkpoint"):
        REINFORCE.load(tmp_path / "dir")


def test_env_objects_and_python_kwargs_need_the_caller(tiny_tokenizer, tmp_path):
    from textenv.vector import TextGenVectorEnv

    envs = TextGenVectorEnv(num_envs=4, autoreset_mode="DISABLED", task="arithmetic", tokenizer=tiny_tokenizer,
                            reward_model="gold", max_new_tokens=3)
    agent = REINFORCE(envs, policy=tiny_policy(tiny_tokenizer), batch_size=4, device="cpu")
    agent.save(tmp_path / "obj")
    m = meta(tmp_path / "obj")
    assert m["env_id"] is None and m["reward_model"] == {"kind": "gold", "task": "arithmetic"}
    with pytest.raises(ValueError, match="TextGenVectorEnv object.*pass env="):
        REINFORCE.load(tmp_path / "obj")
    assert REINFORCE.load(tmp_path / "obj", env=envs).envs is envs

    m = {"env_id": ENV, "env_kwargs": {}, "unsaved_env_kwargs": ["prompts_fn"], "reward_model": {"kind": "gold"}}
    with pytest.raises(ValueError, match=r"\['prompts_fn'\].*env= or env_kwargs="):
        rebuild_env(m, "x/agent.json")
    assert rebuild_env(m, "x/agent.json", env_kwargs={"max_new_tokens": 2}) == (ENV, {"max_new_tokens": 2})


def test_checkpoints_from_before_reward_specs_still_load():
    old = {"env_id": ENV, "env_kwargs": {"reward_model": "gold", "max_new_tokens": 3}}
    assert rebuild_env(old, "old/agent.json") == (ENV, {"reward_model": "gold", "max_new_tokens": 3})


def test_sb3_agent_records_the_reward_and_refuses_a_callable(tiny_lm, tiny_tokenizer, tmp_path):
    from agents.sb3_agent import SB3Agent

    lm_dir = tmp_path / "lm"
    tiny_lm.save_pretrained(lm_dir)
    tiny_tokenizer.save_pretrained(lm_dir)
    agent = SB3Agent("a2c", ENV, str(lm_dir), seed=0, device="cpu", n_envs=2, n_steps=2,
                     env_kwargs={"reward_model": digit_share, "max_new_tokens": 2})
    agent.save(tmp_path / "ckpt")
    assert meta(tmp_path / "ckpt")["reward_model"]["name"] == "digit_share"
    with pytest.raises(ValueError, match="digit_share"):
        SB3Agent.load(tmp_path / "ckpt")
    loaded = SB3Agent.load(tmp_path / "ckpt", env_kwargs={"reward_model": digit_share, "max_new_tokens": 2})
    assert loaded.envs.reward_model.name == "digit_share"


def test_docstring_examples_run():
    import doctest

    import textenv.rewards.spec

    assert doctest.testmod(textenv.rewards.spec).failed == 0
