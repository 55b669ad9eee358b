"""The learning benchmark (``benchmarks/learning.py``) end to end on a tiny setting: it runs, and writes the
JSON, the Markdown table and the plots with the expected keys. No figure is asserted (a benchmark measures)."""

from __future__ import annotations

import json

import pytest

from benchmarks import learning
from textenv.models import DATA_DIR

needs_defaults = pytest.mark.skipif(not (DATA_DIR / "MANIFEST.json").exists(),
                                    reason="the shipped defaults are not built (textenv build-defaults)")

RUN_KEYS = {"agent", "env", "seed", "status", "episodes", "initial", "final", "curve", "train_s", "eval_s",
            "peak_rss_mb", "rss_after_imports_mb", "hyperparams"}
EVAL_KEYS = {"reward", "gold_score", "kl", "entropy", "completions/mean_length"}
CURVE_KEYS = {"episodes", "wall_s", "reward", "gold_score", "kl", "entropy", "completions/mean_length"}


def _check_outputs(out, agents, env):
    data = json.loads((out / learning.JSON_NAME).read_text())
    assert {"config", "budget", "versions", "runs", "summary", "trl", "plots"} <= set(data)
    assert {"episodes", "seeds", "agents", "envs", "policy", "reward_model", "eval_episodes",
            "hyperparams"} <= set(data["config"])
    assert {"episodes_per_run", "threads_per_run", "parallel_runs", "machine", "sweep_wall_s"} <= set(data["budget"])
    assert {"torch", "transformers", "gymnasium", "stable_baselines3"} <= set(data["versions"])
    assert [(r["agent"], r["env"]) for r in data["runs"]] == [(a, env) for a in agents]
    for run in data["runs"]:
        assert run["status"] == "ok", run.get("error")
        assert RUN_KEYS <= set(run)
        assert EVAL_KEYS <= set(run["initial"]) and EVAL_KEYS <= set(run["final"])
        assert run["curve"] and all(CURVE_KEYS <= set(p) for p in run["curve"])
        assert run["episodes"] >= 16 and run["peak_rss_mb"] > 0
    assert [(s["env"], s["agent"]) for s in data["summary"]] == [(env, a) for a in agents]
    assert all({"reward_initial", "reward_final", "gold_initial", "gold_final", "kl_final", "length_final",
                "train_s", "peak_rss_mb", "improved"} <= set(s) for s in data["summary"])
    for name in data["plots"]:
        assert (out / name).stat().st_size > 0
    md = (out / learning.MD_NAME).read_text()
    assert "| task | agent | reward (initial → final) | gold (initial → final) | final KL |" in md
    for a in agents:
        assert f"| {a} |" in md
    return data


@needs_defaults
def test_quick_run_writes_json_md_and_plots(tmp_path):
    out = tmp_path / "results"
    learning.main(["--quick", "--agents", "reinforce", "--envs", "TextGen-Arithmetic-v0", "--seeds", "1",
                   "--episodes", "16", "--eval-episodes", "16", "--policy", "tiny", "--out", str(out)])
    data = _check_outputs(out, ["reinforce"], "TextGen-Arithmetic-v0")
    assert data["config"]["quick"] is True
    assert data["config"]["hyperparams"]["reinforce"]["batch_size"] == learning.QUICK_BATCH
    assert "learning-arithmetic.png" in data["plots"] and "learning-gold-vs-reward.png" in data["plots"]
    # --resume keeps the finished runs: nothing is run again
    again = learning.main(["--quick", "--agents", "reinforce", "--envs", "TextGen-Arithmetic-v0", "--seeds", "1",
                           "--episodes", "16", "--eval-episodes", "16", "--policy", "tiny", "--out", str(out),
                           "--resume"])
    assert again["runs"] == data["runs"] and again["resumed_from"]["reused_runs"] == 1
    with pytest.raises(ValueError, match="other episodes"):  # other settings are not mixed in
        learning.main(["--quick", "--agents", "reinforce", "--envs", "TextGen-Arithmetic-v0", "--episodes", "24",
                       "--policy", "tiny", "--out", str(out), "--resume"])
    # the report is rebuilt from the JSON alone
    (out / learning.MD_NAME).unlink()
    learning.main(["--report-only", "--out", str(out)])
    assert (out / learning.MD_NAME).exists()


@needs_defaults
def test_a_sweep_cut_off_part_way_resumes_from_its_partial_json(tmp_path, monkeypatch):
    out = tmp_path / "results"
    args = ["--quick", "--agents", "reinforce,rloo", "--envs", "TextGen-Arithmetic-v0", "--seeds", "1",
            "--episodes", "16", "--eval-episodes", "16", "--policy", "tiny", "--out", str(out)]
    real, calls = learning.run_in_subprocess, []

    def cut_off_at_the_second_row(spec, workdir, timeout=None):
        calls.append(spec["agent"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(spec, workdir, timeout)

    monkeypatch.setattr(learning, "run_in_subprocess", cut_off_at_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        learning.main(args)
    partial = json.loads((out / learning.JSON_NAME).read_text())
    assert partial["partial"] is True and [r["agent"] for r in partial["runs"]] == calls[:1]
    monkeypatch.setattr(learning, "run_in_subprocess", real)
    done = learning.main([*args, "--resume"])
    assert done["resumed_from"]["reused_runs"] == 1 and "partial" not in done
    assert [r["agent"] for r in done["runs"]] == ["reinforce", "rloo"]
    assert done["runs"][["reinforce", "rloo"].index(calls[0])] == partial["runs"][0]


@pytest.mark.slow
@needs_defaults
def test_quick_run_sb3_and_trl_rows(tmp_path):
    agents = ["sb3-a2c"] + (["trl-grpo"] if learning.trl_status()["available"] else [])
    out = tmp_path / "results"
    # SB3 logs at the end of a rollout: A2C's (16 steps x 8 envs) holds 32 arithmetic episodes
    learning.main(["--quick", "--agents", ",".join(agents), "--envs", "TextGen-Arithmetic-v0", "--seeds", "1",
                   "--episodes", "64", "--eval-episodes", "16", "--policy", "tiny", "--out", str(out)])
    data = _check_outputs(out, agents, "TextGen-Arithmetic-v0")
    sb3 = data["runs"][0]
    # SB3 logs no KL: the benchmark computes it on the rollout buffer
    assert any(p["kl"] is not None for p in sb3["curve"])


def test_unknown_agent_or_env_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown agent 'dqn'"):
        learning.main(["--agents", "dqn", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown env 'CartPole-v1'"):
        learning.main(["--envs", "CartPole-v1", "--out", str(tmp_path)])


def test_summary_marks_rows_that_do_not_improve():
    def run(agent, seed, r0, r1, g0, g1):
        ev = {"kl": 1.0, "entropy": 2.0, "completions/mean_length": 5.0}
        return {"agent": agent, "env": "E", "seed": seed, "status": "ok",
                "initial": {"reward": r0, "gold_score": g0, **ev}, "final": {"reward": r1, "gold_score": g1, **ev},
                "train_s": 10.0, "peak_rss_mb": 500.0}

    runs = [run("a", 0, 0.1, 0.5, 0.2, 0.4), run("a", 1, 0.1, 0.3, 0.2, 0.1),
            run("b", 0, 0.1, 0.9, 0.5, 0.2),  # reward up, gold down: reward hacking
            {"agent": "c", "env": "E", "seed": 0, "status": "error", "error": "boom"}]
    rows = {r["agent"]: r for r in learning.summarize(runs)}
    assert rows["a"]["improved"] and rows["a"]["seeds_reward_up"] == 2 and rows["a"]["seeds_gold_up"] == 1
    assert rows["a"]["reward_final"]["mean"] == pytest.approx(0.4)
    assert rows["a"]["reward_final"]["std"] == pytest.approx(0.1 * 2 ** 0.5)  # sample std (ddof=1)
    assert not rows["b"]["improved"]
    assert rows["c"]["ok"] == 0 and not rows["c"]["improved"]


def test_run_budget_is_per_task_unless_a_flag_sets_it():
    assert learning.run_budget("TextGen-Arithmetic-v0") == (learning.TASK_BUDGET["TextGen-Arithmetic-v0"]["episodes"],
                                                            learning.TASK_BUDGET["TextGen-Arithmetic-v0"]["eval_episodes"])
    assert learning.run_budget("TextGen-Arithmetic-v0") != learning.run_budget("TextGen-Sentiment-v0")
    assert learning.run_budget("TextGen-Arithmetic-v0", episodes=64)[0] == 64
    assert learning.run_budget("TextGen-Keywords-v0", eval_episodes=8, quick=True) == (32, 8)
    assert learning.run_budget("TextGen-v0") == (learning.DEFAULT_EPISODES, learning.DEFAULT_EVAL_EPISODES)


def test_comparisons_known_answers():
    """The report's two published comparisons, from hand-made curves: PPO's clip fraction is the mean (and the
    largest) over its iterations, and wrong-answer lengths are weighted by the share of wrong answers."""
    def run(agent, seed, curve, gold=0.5, reward=0.5):
        ev = {"reward": reward, "gold_score": gold, "kl": 1.0, "entropy": 2.0, "completions/mean_length": 4.0}
        return {"agent": agent, "env": "TextGen-Arithmetic-v0", "seed": seed, "status": "ok", "initial": ev,
                "final": ev, "curve": curve}

    ppo = [run("ppo", 0, [{"clip_ratio": 0.1}, {"clip_ratio": 0.3}], gold=0.2),
           run("ppo", 1, [{"clip_ratio": 0.0}, {"clip_ratio": 0.2}], gold=0.4)]
    rloo = [run("rloo", s, [{"clip_ratio": None}], gold=0.5) for s in (0, 1)]
    # 8 iterations: the first quarter is iterations 0-1, the last 6-7; weights are the wrong shares
    wrong = [(0.5, 2.0), (1.0, 4.0)] + [(0.5, 9.0)] * 4 + [(0.25, 6.0), (0.75, 10.0)]
    grpo = [run("grpo", 0, [{"completions/wrong_fraction": f, "completions/mean_length_wrong": n} for f, n in wrong])]
    flat = [{"completions/wrong_fraction": 0.5, "completions/mean_length_wrong": 3.0}] * 8
    dr = [run("dr-grpo", 0, flat)]
    comp = learning.comparisons(ppo + rloo + grpo + dr + [{"agent": "ppo", "env": "X", "status": "error"}])
    (rp,) = comp["rloo_vs_ppo"]
    assert rp["ppo_clip_fraction"]["mean"] == pytest.approx((0.2 + 0.1) / 2)
    assert rp["ppo_clip_fraction_max"]["mean"] == pytest.approx((0.3 + 0.2) / 2)
    assert rp["ppo_gold"]["mean"] == pytest.approx(0.3) and rp["rloo_gold"]["mean"] == pytest.approx(0.5)
    (gd,) = comp["grpo_vs_dr_grpo"]
    assert gd["grpo_wrong_length_early"]["mean"] == pytest.approx((0.5 * 2 + 1.0 * 4) / 1.5)
    assert gd["grpo_wrong_length_late"]["mean"] == pytest.approx((0.25 * 6 + 0.75 * 10) / 1.0)
    assert gd["grpo_wrong_fraction_late"]["mean"] == pytest.approx(0.5)
    assert gd["dr_grpo_wrong_length_early"]["mean"] == gd["dr_grpo_wrong_length_late"]["mean"] == pytest.approx(3.0)
    md = "\n".join(learning.comparison_lines(comp))
    assert "RLOO's mean final gold is at least PPO's on 1 of 1 tasks." in md
    assert "GRPO's wrong answers grew more (or shrank less) than Dr. GRPO's on 1 of 1 tasks (Arithmetic)." in md
    assert learning.comparison_lines({"rloo_vs_ppo": [], "grpo_vs_dr_grpo": []}) == []
