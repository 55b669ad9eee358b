"""The stage commands of `textenv`: flags from their dataclasses, range checks, exclusive data sources."""

from __future__ import annotations

import dataclasses

import pytest

from textenv.cli import STAGE_COMMANDS, BuildDefaultsArgs, FinetuneArgs, PretrainArgs, TrainRewardArgs, main
from textenv.cli_framework import field_docs

_ARGS = {"pretrain": PretrainArgs, "finetune": FinetuneArgs, "train-reward": TrainRewardArgs,
         "build-defaults": BuildDefaultsArgs}


def test_stage_commands_are_the_four_dataclasses():
    assert {c.name: c.types_for([]) for c in STAGE_COMMANDS} == {k: (v,) for k, v in _ARGS.items()}


@pytest.mark.parametrize("name", list(_ARGS))
def test_help_lists_every_field_with_its_doc(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    docs = field_docs(_ARGS[name])
    for field in dataclasses.fields(_ARGS[name]):
        assert f"--{field.name}" in text, field.name
        assert field.name in docs, f"{name}: field {field.name} has no docstring"
        assert docs[field.name] in text, field.name


@pytest.mark.parametrize(("argv", "needle"), [
    (["pretrain", "--out", "o", "--task", "arithmetic", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["pretrain", "--out", "o", "--task", "arithmetic", "--max-length", "1"], "--max-length must be >= 2, got 1"),
    (["pretrain", "--out", "o", "--task", "arithmetic", "--lr", "-0.5"], "--lr must be a finite number > 0, got -0.5"),
    (["finetune", "--model", "m", "--out", "o", "--task", "arithmetic", "--batch-size", "0"],
     "--batch-size must be >= 1, got 0"),
    (["finetune", "--model", "m", "--out", "o", "--task", "arithmetic", "--pairs-count", "-3"],
     "--pairs-count must be >= 1, got -3"),
    (["train-reward", "--out", "o", "--task", "arithmetic", "--rows", "0"], "--rows must be >= 1, got 0"),
    (["train-reward", "--out", "o", "--task", "arithmetic", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["build-defaults", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["build-defaults", "--scale", "0"], "--scale must be a finite number > 0, got 0.0"),
])
def test_bad_values_exit_2_naming_the_value(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"textenv {argv[0]}: error: {needle}" in err


@pytest.mark.parametrize(("argv", "flags"), [
    (["pretrain", "--out", "o", "--task", "arithmetic", "--corpus", "c.txt"], ("--task", "--corpus")),
    (["finetune", "--model", "m", "--out", "o", "--task", "arithmetic", "--pairs", "p.jsonl"], ("--task", "--pairs")),
    (["train-reward", "--out", "o", "--task", "arithmetic", "--data", "d.jsonl"], ("--task", "--data", "--task-data")),
])
def test_exclusive_sources(argv, flags, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("not both" if len(flags) == 2 else "not several") in err and all(f in err for f in flags)
    without = [a for a in argv if a not in ("--task", "arithmetic")][:-2]  # neither source
    assert main(without) == 2
    err = capsys.readouterr().err
    assert f"one of {', '.join(flags[:-1])} or {flags[-1]} is required" in err


def test_defaults_are_the_commands_own():
    assert PretrainArgs(out="o", task="t").steps == 1000 and PretrainArgs(out="o", task="t").lr == 1e-3
    assert FinetuneArgs(model="m", out="o", task="t").steps == 500
    assert FinetuneArgs(model="m", out="o", task="t").lr == 3e-4
    assert TrainRewardArgs(out="o", task="t").lr == 5e-4


def test_bad_type_and_choice_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["train-reward", "--out", "o", "--task", "arithmetic", "--loss", "l1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--out", "o", "--task", "arithmetic", "--steps", "many"])
    assert exc.value.code == 2
