"""The README's speed table is generated from the committed throughput JSON and cannot drift from it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is not an installed package

from benchmarks import readme_table  # noqa: E402


def test_readme_speed_table_matches_the_committed_json(capsys):
    assert readme_table.main(["--check"]) == 0, capsys.readouterr().err


@pytest.fixture
def copies(tmp_path):
    readme, result = tmp_path / "README.md", tmp_path / "throughput-cpu.json"
    shutil.copy(readme_table.README, readme)
    shutil.copy(readme_table.RESULT, result)
    return readme, result


def test_a_changed_figure_fails_the_check_until_regenerated(copies, capsys):
    readme, result = copies
    r = json.loads(result.read_text())
    r["rollout_vs_kv_limit"] = 0.123
    r["grpo_vs_trl_grpo_defaults"] = 17.5
    r["rows"]["trl_grpo_defaults"] = {"tokens_per_s": 52.0, "all_seconds": [1.0]}
    result.write_text(json.dumps(r))
    args = ["--readme", str(readme), "--json", str(result)]
    assert readme_table.main(["--check", *args]) == 1
    assert "differs" in capsys.readouterr().err
    assert readme_table.main(args) == 0
    text = readme.read_text()
    assert "**0.12** (target" in text and "**17.50x** faster" in text and "| 52 |" in text
    assert readme_table.main(["--check", *args]) == 0
    # only the block between the markers changed
    before, after = readme_table.README.read_text(), text
    assert before.split(readme_table.START)[0] == after.split(readme_table.START)[0]
    assert before.split(readme_table.END)[1] == after.split(readme_table.END)[1]


def test_the_table_states_both_trl_ratios_and_the_run():
    r = json.loads(readme_table.RESULT.read_text())
    block = readme_table.table(r, "x.json")
    assert "tuned to ours" in block and "default `GRPOConfig`" in block
    assert f"**{r['grpo_vs_trl_grpo']:.2f}x**" in block
    assert "load average" in block


def test_missing_markers_are_a_clear_error(copies):
    readme, result = copies
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match="speed-table:start"):
        readme_table.main(["--check", "--readme", str(readme), "--json", str(result)])


def test_the_second_run_and_each_agents_own_limit_are_shown():
    r = json.loads(readme_table.RESULT.read_text())
    r2 = json.loads(readme_table.RESULT_RUN2.read_text())
    block = readme_table.table(r, "a.json", r2, "b.json")
    assert f"run 2: {r2['rollout_vs_kv_limit']:.2f}" in block and f"run 2: {r2['grpo_vs_trl_grpo']:.2f}" in block
    assert "**Run 2** (`b.json`" in block
    # a result with per-agent limits: one row per agent, against the limit loop that does its work
    r = {**r, "own_limit": {"grpo": "train_limit_with_ref", "rloo": "train_limit"},
         "grpo_vs_own_limit": 0.971, "rloo_vs_own_limit": 0.5, "targets": {**r["targets"], "agent_vs_own_limit": 0.95}}
    block = readme_table.table(r, "a.json")
    assert "| our GRPO iteration, against that |" in block and "**0.97** (target ≥ 0.95" in block
    assert "| our RLOO (group 4) iteration, against the limit without a reference |" in block
    assert "run 2" not in block
