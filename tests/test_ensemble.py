"""Reward-model ensembles: the aggregates (known answers), the members' spread in the envs' info, specs,
label noise and ``textenv train-reward --ensemble K``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textenv.env import TextGenEnv
from textenv.rewards import Ensemble, RewardModelError, resolve_reward_model
from textenv.rewards.spec import describe_reward_model, rebuild_reward_model
from textenv.tasks import get_task
from textenv.training.reward import add_label_noise, train_reward_ensemble
from textenv.vector import TextGenVectorEnv


def const(value: float):
    def fn(prompts: list[str], completions: list[str]) -> list[float]:
        return [value] * len(completions)

    fn.__qualname__ = f"const_{value:g}"
    return fn


def length(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(len(c)) for c in completions]


def test_aggregates_known_answers():
    members = [const(1.0), const(2.0), const(6.0)]  # mean 3, population variance (4 + 1 + 9) / 3 = 14/3
    mean = Ensemble(members)
    assert mean(["p", "q"], ["a", "b"]) == [3.0, 3.0]
    np.testing.assert_allclose(mean.last_std, [np.sqrt(14 / 3)] * 2)
    assert Ensemble(members, aggregate="min")(["p"], ["a"]) == [1.0]
    assert Ensemble(members, aggregate="uwo", uwo_lambda=0.5)(["p"], ["a"]) == pytest.approx([3.0 - 0.5 * 14 / 3])
    assert Ensemble(members, aggregate="uwo").uwo_lambda == 0.1  # the default lambda
    # per pair: members [len, 2] on "abcd" -> (4, 2): mean 3, min 2, std 1
    pair = Ensemble([length, const(2.0)], aggregate="min")
    assert pair(["", ""], ["abcd", "x"]) == [2.0, 1.0]
    np.testing.assert_allclose(pair.last_std, [1.0, 0.5])


def test_bad_ensembles():
    with pytest.raises(ValueError, match="at least 2 reward models"):
        Ensemble([const(1.0)])
    with pytest.raises(ValueError, match="aggregate must be one of"):
        Ensemble([const(1.0), const(2.0)], aggregate="max")
    with pytest.raises(ValueError, match="only for aggregate='uwo'"):
        Ensemble([const(1.0), const(2.0)], uwo_lambda=0.5)
    with pytest.raises(ValueError, match="uwo_lambda must be a finite number >= 0, got -1"):
        Ensemble([const(1.0), const(2.0)], aggregate="uwo", uwo_lambda=-1)
    with pytest.raises(ValueError, match="not resolved"):
        Ensemble(["gold", const(1.0)])(["p"], ["a"])

    def nan(prompts, completions):
        return [float("nan")] * len(completions)

    with pytest.raises(RewardModelError, match="nan"):
        Ensemble([const(1.0), nan])(["p"], ["a"])


def test_envs_report_the_members_spread(tiny_tokenizer):
    rm = Ensemble([length, const(0.0)])  # scores (len, 0): mean len / 2, std len / 2
    envs = TextGenVectorEnv(num_envs=3, task="arithmetic", tokenizer=tiny_tokenizer, reward_model=rm,
                            max_new_tokens=2, terminate_on_eos=False)
    envs.reset(seed=0)
    envs.step(np.array([5, 6, 7]))
    _, r, term, _, info = envs.step(np.array([8, 9, 10]))
    assert term.all() and info["_reward_model_std"].all()
    lengths = np.array([len(c) for c in info["completion"]], dtype=float)
    np.testing.assert_allclose(r, lengths / 2)
    np.testing.assert_allclose(info["reward_model_std"], lengths / 2)
    # the single env, with a string member resolved by the env (the gold scorer, in [0, 1])
    env = TextGenEnv(task="arithmetic", tokenizer=tiny_tokenizer, reward_model=Ensemble(["gold", const(1.0)]),
                     max_new_tokens=1, terminate_on_eos=False)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(5)
    assert terminated and info["reward_model_std"] == pytest.approx(abs(info["gold_score"] - 1.0) / 2)
    assert reward == pytest.approx((info["gold_score"] + 1.0) / 2)
    # a plain reward model adds no key
    plain = TextGenEnv(task="arithmetic", tokenizer=tiny_tokenizer, reward_model=length, max_new_tokens=1)
    plain.reset(seed=0)
    assert "reward_model_std" not in plain.step(5)[4]


def test_spec_round_trip():
    spec = Ensemble(["gold", "gold"], aggregate="uwo", uwo_lambda=0.3)
    desc = describe_reward_model(spec)
    assert desc == {"kind": "ensemble", "aggregate": "uwo", "uwo_lambda": 0.3,
                    "members": [{"kind": "gold"}, {"kind": "gold"}]}
    back = rebuild_reward_model(json.loads(json.dumps(desc)))
    assert isinstance(back, Ensemble) and back.members == ["gold", "gold"] and back.uwo_lambda == 0.3
    resolved = resolve_reward_model(back, get_task("arithmetic"))
    assert isinstance(resolved, Ensemble) and all(callable(m) for m in resolved.members)


def test_label_noise():
    rows = [{"text": f"t{i}", "score": float(i)} for i in range(2000)]
    assert add_label_noise(rows, 0.0) == rows
    noisy = add_label_noise(rows, 0.3, seed=1)
    changed = np.mean([a["score"] != b["score"] for a, b in zip(rows, noisy)])
    assert 0.27 < changed < 0.33  # 0.3 hit, of which 1/2000 draw their own score
    assert {r["score"] for r in noisy} <= {r["score"] for r in rows}  # scores come from the rows
    assert rows[0] == {"text": "t0", "score": 0.0}  # the input is not modified
    assert add_label_noise(rows, 0.3, seed=1) == noisy  # seeded
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 10
    assert all(r["chosen"] == "b" and r["rejected"] == "a" for r in add_label_noise(pairs, 1.0, "bt"))
    with pytest.raises(ValueError, match="label noise p must be a number in \\[0, 1\\], got 1.5"):
        add_label_noise(rows, 1.5)


def test_train_reward_ensemble_and_cli(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    from agents.cli import main

    rows = [{"text": f"{a}+{a}={2 * a}", "score": a / 50} for a in range(50)]
    out = tmp_path / "ens"
    m = train_reward_ensemble(rows, out, 2, seed=3, tokenizer=str(tiny_tokenizer_dir), steps=2, batch_size=8,
                              progress=False, model_kwargs={"n_layer": 1, "n_embd": 32, "n_head": 2})
    assert m["seeds"] == [3, 4] and len(m["members"]) == 2
    rm = resolve_reward_model(str(out))
    assert isinstance(rm, Ensemble) and len(rm.members) == 2
    scores = rm.member_scores(["1+1="], ["2"])
    assert scores.shape == (2, 1) and scores[0, 0] != scores[1, 0]  # members from different seeds differ
    with pytest.raises(ValueError, match="not empty"):
        train_reward_ensemble(rows, out, 2, tokenizer=str(tiny_tokenizer_dir), steps=2, progress=False)
    cli_out = tmp_path / "cli-ens"
    assert main(["train-reward", "--out", str(cli_out), "--task", "arithmetic", "--rows", "64", "--tokenizer",
                 str(tiny_tokenizer_dir), "--steps", "2", "--batch-size", "8", "--ensemble", "2",
                 "--label-noise", "0.25", "--no-progress"]) == 0
    meta = json.loads((cli_out / "textenv_ensemble.json").read_text())
    assert meta["members"] == ["member-0", "member-1"] and meta["aggregate"] == "mean"
    env = TextGenVectorEnv(num_envs=2, task="arithmetic", tokenizer=tiny_tokenizer, reward_model=str(cli_out),
                           max_new_tokens=1)
    env.reset(seed=0)
    info = env.step(np.array([5, 6]))[4]
    assert info["_reward_model_std"].all() and (info["reward_model_std"] > 0).all()
    assert main(["train-reward", "--out", str(tmp_path / "x"), "--task", "arithmetic", "--label-noise", "2"]) == 2
