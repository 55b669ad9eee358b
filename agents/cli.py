"""The ``textenv`` console script: the stage 1-3 commands of :mod:`textenv.cli` plus the RL commands.

This module sits on top of both packages (``textenv`` never imports ``agents``)::

    textenv pretrain | finetune | train-reward | build-defaults ...   (textenv.cli.STAGE_COMMANDS)
    textenv train --agent ppo --env TextGen-Arithmetic-v0 --learning-rate 1e-4 --no-progress
    textenv evaluate --checkpoint runs/ppo-TextGen-v0
    textenv sample --checkpoint runs/ppo-TextGen-v0 --prompt "12+30=" -n 2

Every flag is a field of a dataclass (:class:`~agents.run.TrainArguments`, the agent's config such as
:class:`~agents.ppo.PPOConfig` or :class:`~agents.sb3_agent.SB3Config`, :class:`~agents.run.EvaluateArguments`,
:class:`~agents.run.SampleArguments`), parsed by ``transformers.HfArgumentParser`` with the field's docstring
as help. ``train --agent X --help`` lists X's settings.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from agents.registry import SB3_AGENTS, get_agent_class
from agents.run import (
    EvaluateArguments,
    SampleArguments,
    TrainArguments,
    evaluate_command,
    sample_command,
    train_command,
)
from agents.sb3_agent import SB3Config
from textenv.cli import STAGE_COMMANDS
from textenv.cli_framework import Command, field_docs, run

#: TrainArguments fields an agent config also has (seed, device): one flag each, set from TrainArguments
_SHARED = frozenset(f.name for f in dataclasses.fields(TrainArguments))


_FLAGS: dict[type, type] = {}


def config_flags(config_cls: type) -> type:
    """``config_cls`` (an agent's Config dataclass) without the fields :class:`TrainArguments` already has
    (``seed``, ``device``), with resolved types and the fields' docs as help: the ``train`` flags of an agent."""
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(config_cls):
        if f.name in _SHARED:
            continue
        default: dict[str, Any] = ({"default": f.default} if f.default is not dataclasses.MISSING
                                   else {"default_factory": f.default_factory})
        fields.append((f.name, hints[f.name], dataclasses.field(metadata={"help": docs.get(f.name, "")}, **default)))
    if config_cls not in _FLAGS:  # one class per config: HfArgumentParser and isinstance see the same one
        _FLAGS[config_cls] = dataclasses.make_dataclass(
            f"{config_cls.__name__}Flags", fields, namespace={"__doc__": f"{config_cls.__name__}'s train flags."})
    return _FLAGS[config_cls]


def _agent_in(argv: Sequence[str]) -> str:
    """The ``--agent`` value of a ``train`` argv (its default when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--agent" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--agent="):
            return arg.split("=", 1)[1]
    return TrainArguments.agent


def train_types(argv: list[str]) -> tuple[type, ...]:
    """``train``'s argument dataclasses for its argv: :class:`TrainArguments` and the flags of the chosen
    agent's settings (its config without ``seed``/``device``, or :class:`SB3Config`)."""
    name = _agent_in(argv)
    if name in SB3_AGENTS:
        return (TrainArguments, SB3Config)
    try:
        agent_cls = get_agent_class(name)
    except ValueError:
        return (TrainArguments,)  # TrainArguments names the unknown agent
    return (TrainArguments, config_flags(agent_cls.Config))


TRAIN = Command("train", "RL: train the LM policy in a TextGen env (the main job)", train_types, train_command)
EVALUATE = Command("evaluate", "evaluate a checkpoint on held-out prompts", (EvaluateArguments,), evaluate_command)
SAMPLE = Command("sample", "sample completions from a checkpoint", (SampleArguments,), sample_command)
#: the RL commands this package adds
RL_COMMANDS = [TRAIN, EVALUATE, SAMPLE]
#: every command of the console script
COMMANDS = [*STAGE_COMMANDS, *RL_COMMANDS]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``textenv`` console script; returns the exit status."""
    return run(argv, COMMANDS, prog="textenv")


if __name__ == "__main__":
    raise SystemExit(main())
