"""Bad command-line inputs give one line naming the value (and the file), exit status 2 and nothing written
(issue 10, items 17 and 18)."""

from __future__ import annotations

import json

import pytest

from agents.cli import main
from agents.run import check_textgen_env_id


@pytest.mark.parametrize("env_id, message", [
    ("CartPole-v1", "--env 'CartPole-v1' is not a TextGen env"),
    ("../../x", "--env '../../x' is not a registered env id"),
])
def test_train_refuses_an_env_that_is_not_textgen_before_writing(tmp_path, monkeypatch, capsys, env_id, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--env", env_id, "--episodes", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no runs/ directory made
    with pytest.raises(ValueError, match="not a"):
        check_textgen_env_id(env_id)


def test_train_refuses_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "metrics.csv"
    f.write_text("the user's own file\n")
    assert main(["train", "--out", str(f), "--episodes", "1", "--no-progress"]) == 2
    assert f"--out {str(f)!r} is a file" in capsys.readouterr().err
    assert f.read_text() == "the user's own file\n"


def test_finetune_refuses_pairs_with_nothing_to_learn(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": "", "response": ""}) for _ in range(3)))
    out = tmp_path / "sft"
    assert main(["finetune", "--model", "tiny", "--pairs", str(pairs), "--out", str(out), "--steps", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{pairs}:1: empty prompt and empty response" in err
    assert not out.exists()


def test_finetune_api_refuses_empty_pairs_naming_the_row():
    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.training.lm import finetune
    from textenv.training.loop import TrainConfig

    tok = load_tokenizer("default")
    with pytest.raises(ValueError, match=r"pairs\[1\] has an empty prompt and an empty response"):
        finetune(load_causal_lm("tiny", tokenizer=tok), tok, [("a", "b"), ("", "")], "unused",
                 TrainConfig(steps=1, progress=False))


def test_resume_without_summary_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--agent", "grpo", "--env", "TextGen-Arithmetic-v0", "--policy", "tiny", "--out", str(out),
            "--episodes", "16", "--eval-episodes", "8", "--batch-size", "8", "--group-size", "4", "--no-progress"]
    assert main(args) == 0
    (out / "summary.json").unlink()
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: the run's summary {str(out / 'summary.json')!r} does not exist" in err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing trained or written


@pytest.mark.parametrize("edit, message", [
    (lambda meta: [meta], "must hold a JSON object, got list"),
    (lambda meta: {**meta, "agent": 3}, "names no agent"),
    (lambda meta: {k: v for k, v in meta.items() if k != "config"}, "'config' must be an object, got None"),
    (lambda meta: {**meta, "episodes": -5}, "'episodes' must be an integer >= 0, got -5"),
    (lambda meta: {**meta, "config": {**meta["config"], "learning_rate": 1e400}},
     "learning_rate must be a finite number, got inf"),
    (lambda meta: {**meta, "config": {**meta["config"], "n_epochs": 2}}, "config field(s) ['n_epochs']"),
])
def test_an_edited_agent_json_is_refused_naming_the_file(tmp_path, capsys, edit, message):
    from agents import GRPO

    agent = GRPO("TextGen-Arithmetic-v0", policy="tiny", batch_size=8, group_size=4)
    ckpt = agent.save(tmp_path / "ckpt")
    meta_file = ckpt / "agent.json"
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))
    with pytest.raises(ValueError) as info:
        GRPO.load(ckpt)
    assert message in str(info.value) and str(meta_file) in str(info.value)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--episodes", "4"]) == 2
    assert str(meta_file) in capsys.readouterr().err
