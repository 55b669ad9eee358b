"""textenv.cli_framework: typed flags from dataclasses, help from field docs, one-line errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from textenv.cli_framework import Command, field_docs, make_parser, run


@dataclasses.dataclass
class _Args:
    steps: int = 10  # optimizer steps
    loss: Literal["mse", "bt"] = "mse"
    """the loss: mean squared error or Bradley-Terry"""
    progress: bool = True
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "learning rate"})

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


def test_field_docs_from_comments_docstrings_and_metadata():
    assert field_docs(_Args) == {"steps": "optimizer steps", "loss": "the loss: mean squared error or Bradley-Terry",
                                 "lr": "learning rate"}
    helps = {a.dest: a.help for a in make_parser("t", (_Args,))._actions}
    assert helps["steps"] == "optimizer steps" and helps["lr"].startswith("learning rate")


def test_run_parses_typed_flags_and_reports_errors(capsys):
    got = []
    cmds = [Command("x", "do x", (_Args,), lambda a: got.append(a) or 0)]
    assert run(["x", "--steps", "4", "--loss", "bt", "--no-progress", "--lr", "0.5"], cmds) == 0
    assert got == [_Args(steps=4, loss="bt", progress=False, lr=0.5)]
    assert run(["x", "--steps", "-1"], cmds) == 2
    assert "textenv x: error: steps must be >= 0, got -1" in capsys.readouterr().err
    assert run(["nope"], cmds) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run(["x", "--loss", "l1"], cmds)
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run(["x", "--steps", "four"], cmds)
    assert exc.value.code == 2


def test_arg_types_may_depend_on_argv():
    @dataclasses.dataclass
    class B:
        extra: int = 1

    seen = []
    cmd = Command("y", "y", lambda argv: (_Args, B) if "--extra" in argv else (_Args,),
                  lambda *inst: seen.append(inst) or 0)
    assert run(["y", "--extra", "3"], [cmd]) == 0 and seen[-1] == (_Args(), B(3))
    assert run(["y"], [cmd]) == 0 and seen[-1] == (_Args(),)
