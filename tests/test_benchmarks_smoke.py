"""Smoke tests of the benchmark scripts: they run in their smallest mode and write the JSON they promise.

No assertion on any time: a benchmark measures, a test checks that it runs and reports.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# --threads 1: on a busy 2-core machine two torch threads make tiny ops 10-100x slower
def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_env_step_smallest(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not an installed package
    from benchmarks import env_step

    r = env_step.measure(**{**env_step.SMOKE, "num_envs": 4})
    for key in ("env_step_us", "env_reset_us", "env_step_us_incl_reset", "vector_env_step_us_per_env",
                "vector_env_batched_step_us", "vector_reset_cold_us_per_env"):
        assert _positive(r[key]), (key, r[key])
    assert set(r["vector_breakdown"]) == {"plain", "end", "reset"}
    assert r["config"]["num_envs"] == 4 and r["config"]["repeats"] == 1
    json.dumps(r)  # serialisable as it is


def test_env_step_cli_writes_json(tmp_path):
    out = tmp_path / "env_step.json"
    proc = _run("benchmarks.env_step", "--smoke", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert _positive(r["env_step_us"]) and _positive(r["vector_env_step_us_per_env"])
    assert "single env" in proc.stdout
    _check_reproducible(r, "python -m benchmarks.env_step --smoke --json")
    assert r["spread"]["vector_env_step_us_per_env"]["rounds"] == 1


def _check_reproducible(r: dict, command_start: str) -> None:
    """What a figure needs to be reproduced: the command, and how busy the machine was."""
    assert r["command"].startswith(command_start), r["command"]
    if hasattr(os, "getloadavg"):
        for when in ("start", "end"):
            load = r["load_average"][when]
            assert len(load) == 3 and all(isinstance(x, float) and x >= 0 for x in load), load


def _check_throughput_json(r: dict) -> None:
    for key in ("rollout_vs_kv_limit", "train_vs_limit", "ppo_train_vs_limit", "env_step_us",
                "vector_env_step_us_per_env", "peak_rss_mib_process"):
        assert _positive(r[key]), (key, r[key])
    assert "grpo_vs_trl_grpo" in r
    if r["grpo_vs_trl_grpo"] is None:
        assert isinstance(r["grpo_vs_trl_grpo_reason"], str) and r["grpo_vs_trl_grpo_reason"]
    else:
        assert _positive(r["grpo_vs_trl_grpo"])
    for name in ("kv_limit", "train_limit", "rollout", "ppo_iteration", "grpo_iteration", "reinforce_iteration",
                 "rloo_iteration"):
        row = r["rows"][name]
        assert _positive(row["tokens_per_s"]) and _positive(row["seconds"]), name
        assert _positive(row["peak_rss_mib"]), name
    model = r["config"]["model"]
    assert _positive(model["parameters"]) and model["n_layer"] >= 1
    for key in ("batch", "prompt_tokens", "new_tokens", "group_size"):
        assert _positive(r["config"][key]), key
    assert r["versions"]["torch"] and r["versions"]["transformers"]
    _check_reproducible(r, "python -m benchmarks.throughput --smoke")
    # every agent is held to the limit loop doing its own work: all four have a KL penalty, so the reference
    # forward is in theirs; the worst of them is min_agent_vs_own_limit
    assert r["own_limit"] == {a: "train_limit_with_ref" for a in ("ppo", "grpo", "reinforce", "rloo")}
    assert r["min_agent_vs_own_limit"] == min(r[f"{a}_vs_own_limit"] for a in r["own_limit"])
    assert r["targets"]["agent_vs_own_limit"] == 0.95
    for name in ("rollout_vs_kv_limit", "train_vs_limit", "ppo_train_vs_limit", "grpo_vs_own_limit",
                 "rloo_vs_own_limit"):
        sp = r["spread"][name]
        assert sp["min"] <= r[name] <= sp["max"] and sp["rounds"] == r["config"]["rounds"], (name, sp)


def test_throughput_smoke_without_trl(tmp_path):
    out = tmp_path / "throughput.json"
    proc = _run("benchmarks.throughput", "--smoke", "--no-trl", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    _check_throughput_json(r)
    assert r["grpo_vs_trl_grpo"] is None and "no-trl" in r["grpo_vs_trl_grpo_reason"]
    assert r["grpo_vs_trl_grpo_defaults"] is None and "no-trl" in r["grpo_vs_trl_grpo_defaults_reason"]
    assert "rollout_vs_kv_limit" in proc.stdout


@pytest.mark.slow
def test_throughput_smoke_with_trl(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "throughput.json"
    proc = _run("benchmarks.throughput", "--smoke", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    _check_throughput_json(r)
    # TRL present: either a ratio, or the reason it could not run (e.g. an incompatible transformers)
    assert r["grpo_vs_trl_grpo"] is not None or r["grpo_vs_trl_grpo_reason"]
    if r["grpo_vs_trl_grpo"] is not None:
        assert _positive(r["rows"]["trl_grpo"]["tokens_per_s"])
    # TRL with its default GRPOConfig: only the shape set, the rest (checkpointing, bf16, beta...) TRL's own
    assert r["grpo_vs_trl_grpo_defaults"] is not None or r["grpo_vs_trl_grpo_defaults_reason"]
    if r["grpo_vs_trl_grpo_defaults"] is not None:
        assert _positive(r["grpo_vs_trl_grpo_defaults"]) and _positive(r["rows"]["trl_grpo_defaults"]["tokens_per_s"])
        assert r["spread"]["grpo_vs_trl_grpo_defaults"]["rounds"] == 1  # --smoke: one timed step
        config = r["trl_grpo_defaults_config"]
        assert "gradient_checkpointing" not in config and "bf16" not in config and "beta" not in config
        assert config["per_device_train_batch_size"] == r["config"]["batch"]


def test_task_stats_table():
    from benchmarks import task_stats

    table = task_stats.main(["--n", "20", "--tasks", "arithmetic,dialogue"])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| arithmetic | ") and lines[3].startswith("| dialogue | ")
    assert "32 x 4 turns" in lines[3]
    # quality 1 is the task's best response: gold 1.0 for arithmetic's exact sums
    assert lines[2].endswith("/ 1.00 |")
    with pytest.raises(ValueError, match="--n must be >= 1, got 0"):
        task_stats.main(["--n", "0"])
