"""Best-of-n: its KL formulas (known answers), selection, evaluation, the no-training learn, the registry and
the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agents import BestOfN, make_agent
from agents.best_of_n import best_of_n_kl, best_of_n_kl_analytic
from tests.test_agents import MAX_NEW_TOKENS, assert_same_params, digit_share, make_envs, params, tiny_policy


def test_analytic_kl():
    assert best_of_n_kl_analytic(1) == 0.0  # best-of-1 is the policy
    assert best_of_n_kl_analytic(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl_analytic(16) == pytest.approx(2.772588722 - 0.9375)  # log 16 - 15/16
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            best_of_n_kl_analytic(bad)  # type: ignore[arg-type]


def test_measured_kl_known_answers():
    # all equal: best-of-n is the policy
    torch.testing.assert_close(best_of_n_kl(torch.zeros(2, 5)), torch.zeros(2))
    # n = 2 distinct: P_bon = (1/4, 3/4) against (1/2, 1/2): 1/4 log(1/2) + 3/4 log(3/2)
    two = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    torch.testing.assert_close(best_of_n_kl(torch.tensor([[0.1, 0.7], [3.0, -1.0]])),
                               torch.tensor([two, two]), atol=1e-6, rtol=0)
    # n = 4 with two tied pairs: F(0) = 1/2, P_bon(1) = 1 - (1/2)^4 = 15/16, P_bon(0) = 1/16, P = 1/2 each
    tied = 15 / 16 * math.log(15 / 8) + 1 / 16 * math.log(1 / 8)
    torch.testing.assert_close(best_of_n_kl(torch.tensor([[0.0, 1.0, 1.0, 0.0]])), torch.tensor([tied]),
                               atol=1e-6, rtol=0)
    # n = 16 distinct: the discrete counterpart of log n - (n - 1) / n
    n = 16
    p = [(k / n) ** n - ((k - 1) / n) ** n for k in range(1, n + 1)]
    distinct = sum(q * math.log(n * q) for q in p)
    got = float(best_of_n_kl(torch.randperm(n).float()[None]))
    assert got == pytest.approx(distinct, abs=1e-5)
    assert 1.79 < got < best_of_n_kl_analytic(16)  # 1.794 < 1.835
    with pytest.raises(ValueError, match=r"shape \(P, n\)"):
        best_of_n_kl(torch.zeros(4))


def agent(tok, n: int = 4, batch_size: int = 8) -> BestOfN:
    return BestOfN(make_envs(tok, batch_size), policy=tiny_policy(tok), batch_size=batch_size, n=n)


def test_sample_best_keeps_the_reward_models_best(tiny_tokenizer):
    bon = agent(tiny_tokenizer, n=6, batch_size=8)  # 6 samples per prompt span rollouts of 8 slots
    prompts = ["1+2=", "30+4=", "5+5="]
    out = bon.sample_best(prompts, seed=3)
    assert out["scores"].shape == (3, 6) and len(out["completions"]) == 3
    for i in range(3):
        best = int(out["best"][i])
        assert float(out["scores"][i, best]) == float(out["scores"][i].max())
        # the reward model re-scores the chosen completion to the same number
        assert digit_share([prompts[i]], [out["completions"][i][best]])[0] == pytest.approx(
            float(out["scores"][i, best]), abs=1e-6)
    again = bon.sample_best(prompts, seed=3)
    assert torch.equal(out["scores"], again["scores"])  # seeded


def test_evaluate_and_learn_train_nothing(tiny_tokenizer):
    bon = agent(tiny_tokenizer, n=8, batch_size=16)
    start = params(bon)
    m = bon.evaluate(16)
    assert {"reward", "gold_score", "kl", "kl_analytic", "kl_policy", "reward/policy", "gold_score/policy",
            "completions/mean_length"} <= set(m)
    assert m["kl_analytic"] == pytest.approx(math.log(8) - 7 / 8)
    assert 0 <= m["kl"] <= m["kl_analytic"] + 1e-6
    assert m["kl_policy"] == pytest.approx(0.0, abs=1e-5)  # an untrained policy is its reference
    # the point of best-of-n: the chosen completions beat the policy's average (random policy: ~0.15)
    assert m["reward"] > m["reward/policy"] + 0.1, m
    assert bon.evaluate(16) == m  # seeded
    bon.learn(40, progress=False)  # 40 completions = 5 prompts of 8, 2 per row of 16
    assert bon.episodes == 40 and len(bon.history) == 3 and bon.history[-1]["episodes"] == 40.0
    assert_same_params(start, params(bon))
    pairs = bon.samples(2)
    assert len(pairs) == 2 and all(isinstance(c, str) for _, c in pairs)


def test_best_of_n_grows_with_n(tiny_tokenizer):
    """More samples, a better best (on the same prompts and stream) and a larger KL."""
    small, large = agent(tiny_tokenizer, n=2, batch_size=16).evaluate(16), agent(tiny_tokenizer, n=16,
                                                                                batch_size=16).evaluate(16)
    assert large["reward"] > small["reward"] and large["kl"] > small["kl"]


def test_registry_and_cli(tiny_tokenizer, tmp_path, capsys):
    from agents.cli import main

    built = make_agent("best-of-n", "TextGen-Arithmetic-v0", policy=tiny_policy(tiny_tokenizer), device="cpu",
                       env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS}, n=4,
                       batch_size=8)
    assert isinstance(built, BestOfN) and built.config.n == 4
    saved = built.save(tmp_path / "ckpt")
    loaded = BestOfN.load(saved, env_kwargs={"reward_model": digit_share, "max_new_tokens": MAX_NEW_TOKENS})
    assert loaded.config.n == 4 and loaded.evaluate(4) == built.evaluate(4)
    out = tmp_path / "run"
    assert main(["train", "--agent", "best-of-n", "--n", "4", "--env", "TextGen-Arithmetic-v0", "--reward-model",
                 "gold", "--policy", "tiny", "--episodes", "16", "--eval-episodes", "4", "--batch-size", "8",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent"] == "best-of-n" and summary["final"]["kl_analytic"] == pytest.approx(math.log(4) - 0.75)
    assert summary["initial"] == summary["final"]  # nothing was trained
    assert "initial" in capsys.readouterr().out
