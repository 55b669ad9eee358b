"""The `textenv` command: every stage on tiny settings, and the RL commands on a tiny policy."""

from __future__ import annotations

import csv
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents.cli import main as rl_main
from textenv.cli import main
from textenv.models import TOKENIZER_DIR

needs_defaults = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(),
                                    reason="the shipped artifacts are not built")


def test_pipeline_commands_on_user_files(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{a}+{b}={a + b}" for a in range(20) for b in range(5)))
    lm = tmp_path / "lm"
    assert main(["pretrain", "--out", str(lm), "--corpus", str(corpus), "--tokenizer", str(tiny_tokenizer_dir),
                 "--steps", "4", "--batch-size", "4", "--max-length", "32", "--no-progress"]) == 0
    AutoModelForCausalLM.from_pretrained(lm)
    AutoTokenizer.from_pretrained(lm)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"{a}+1=", "response": str(a + 1)}) for a in range(50)))
    sft = tmp_path / "sft"
    assert main(["finetune", "--model", str(lm), "--out", str(sft), "--pairs", str(pairs), "--steps", "3",
                 "--batch-size", "4", "--max-length", "32", "--no-progress"]) == 0
    AutoModelForCausalLM.from_pretrained(sft)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("\n".join(json.dumps({"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)})
                               for a in range(60)))
    rm = tmp_path / "rm"
    assert main(["train-reward", "--out", str(rm), "--data", str(prefs), "--loss", "bt", "--tokenizer",
                 str(tiny_tokenizer_dir), "--steps", "3", "--batch-size", "8", "--no-progress"]) == 0
    assert (rm / "textenv_reward.json").exists()


def test_bad_input_exits_with_a_message(tmp_path, capsys):
    assert main(["finetune", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--task", "arithmetic", "--steps", "1"]) == 2
    assert "missing" in capsys.readouterr().err


def test_the_console_script_is_the_stage_commands_plus_rl(capsys):
    from agents.cli import COMMANDS
    from textenv.cli import STAGE_COMMANDS

    assert COMMANDS[:len(STAGE_COMMANDS)] == STAGE_COMMANDS
    assert [c.name for c in COMMANDS[len(STAGE_COMMANDS):]] == ["train", "evaluate", "sample"]
    assert main(["train", "--agent", "ppo"]) == 2  # textenv alone knows no RL command
    assert "unknown command 'train'" in capsys.readouterr().err


def test_rl_flags_come_from_the_config_dataclasses(tmp_path, capsys):
    assert rl_main(["train", "--agent", "dqn"]) == 2
    assert "unknown agent 'dqn'" in capsys.readouterr().err
    # --set is gone: every config field is a flag; and a GRPO field is not a PPO flag
    assert rl_main(["train", "--agent", "ppo", "--set", "learning_rate=1e-4"]) == 2
    assert "['--set', 'learning_rate=1e-4']" in capsys.readouterr().err
    assert rl_main(["train", "--agent", "ppo", "--group-size", "4"]) == 2
    assert "'--group-size'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rl_main(["train", "--agent", "grpo", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "--group_size" in helped and "completions per prompt" in helped and "--no-progress" in helped
    out = str(tmp_path / "o")
    assert rl_main(["train", "--agent", "ppo", "--kl-coef", "-1", "--out", out]) == 2
    assert "kl_coef must be >= 0, got -1.0" in capsys.readouterr().err
    assert rl_main(["train", "--agent", "sb3-a2c", "--n-epochs", "3", "--out", out]) == 2
    assert "['n_epochs'] are PPO settings" in capsys.readouterr().err
    assert rl_main(["train", "--agent", "sb3-ppo", "--device", "tpu", "--out", out]) == 2
    assert "--device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'" in capsys.readouterr().err


@needs_defaults
@pytest.mark.slow
def test_train_evaluate_sample_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--agent", "grpo", "--env", "TextGen-Arithmetic-v0", "--out", str(out), "--episodes", "32",
            "--eval-episodes", "16", "--batch-size", "16", "--group-size", "4", "--no-progress"]
    assert rl_main(args) == 0
    printed = capsys.readouterr().out
    assert "initial" in printed and "final" in printed and "samples after" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 and {"reward", "gold_score", "kl", "episodes"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert {"initial", "final", "samples_before", "samples_after"} <= set(summary)
    assert rl_main(args) == 2  # a second run into the same directory is refused
    assert rl_main(args[:-1] + ["--episodes", "48", "--resume", "--no-progress"]) == 0
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 3
    capsys.readouterr()
    assert rl_main(["evaluate", "--checkpoint", str(out), "--episodes", "8"]) == 0
    assert "gold_score" in json.loads(capsys.readouterr().out)
    assert rl_main(["sample", "--checkpoint", str(out), "--prompt", "12+30=", "-n", "2"]) == 0
    assert capsys.readouterr().out.count("12+30=") == 2


def test_train_sb3_with_the_gold_reward(tmp_path, capsys):
    out = tmp_path / "run"
    assert rl_main(["train", "--agent", "sb3-a2c", "--env", "TextGen-Arithmetic-v0", "--reward-model", "gold",
                 "--out", str(out), "--episodes", "16", "--eval-episodes", "8", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for when in ("initial", "final"):
        assert summary[when]["reward"] == summary[when]["gold_score"]  # the reward model is the gold scorer
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and all(r["reward"] == r["gold_score"] for r in rows)
    capsys.readouterr()
    assert rl_main(["evaluate", "--checkpoint", str(out), "--episodes", "8"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reward"] == again["gold_score"]  # the checkpoint remembers its env kwargs
