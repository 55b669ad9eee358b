"""Typed subcommands from config dataclasses: the machinery under the ``textenv`` command.

A :class:`Command` names the dataclasses whose fields become its flags. ``transformers.HfArgumentParser``
(what TRL's CLI is built on) turns every field into a typed ``--flag`` (``--batch-size`` and ``--batch_size``
both work; a ``bool`` field ``x`` gets ``--x`` and ``--no-x``; a ``Literal`` field gets choices), and the
field's docstring or trailing ``# comment`` becomes its help. Library code receives the parsed dataclass
instances, never an ``argparse.Namespace``.

The stage 1-3 commands live in :mod:`textenv.cli`; the console script (:mod:`agents.cli`) adds the RL
commands on top and runs them all through :func:`run`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from typing import Any

ArgTypes = tuple[type, ...]


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``run(*instances)`` gets one instance of each of ``arg_types``, in order.

    ``arg_types`` is a tuple of dataclasses, or a function of the command's argv returning one (for flags
    that depend on another flag, e.g. ``train --agent grpo`` takes GRPO's config fields).
    """

    name: str
    help: str
    arg_types: ArgTypes | Callable[[list[str]], ArgTypes]
    run: Callable[..., int]

    def types_for(self, argv: list[str]) -> ArgTypes:
        return self.arg_types(argv) if callable(self.arg_types) else self.arg_types


def field_docs(cls: type) -> dict[str, str]:
    """Per-field documentation of a dataclass (and its bases): the string literal right after a field, or
    the ``# comment`` on the field's line; ``metadata["help"]`` wins where given."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        stmts = body.body
        for i, stmt in enumerate(stmts):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            nxt = stmts[i + 1] if i + 1 < len(stmts) else None
            if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[name] = " ".join(nxt.value.value.split())
            elif stmt.lineno in comments:
                docs[name] = comments[stmt.lineno]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("help"):
            docs[f.name] = str(f.metadata["help"])
    return docs


def make_parser(prog: str, types: ArgTypes, description: str | None = None) -> Any:
    """An ``HfArgumentParser`` over ``types`` whose flags carry the fields' docs as help."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(types), prog=prog, description=description)  # type: ignore[arg-type]
    docs: dict[str, str] = {}
    for t in types:
        docs.update(field_docs(t))
    for action in parser._actions:
        if not action.help and action.dest in docs:
            action.help = docs[action.dest]
    return parser


_PASSED = "_cli_passed_fields"


def passed_fields(instance: Any) -> frozenset[str] | None:
    """The fields of ``instance`` that were given on its command line (even when equal to the default), or
    ``None`` when it was not made by :func:`parse` (a caller of the library: any field may have been set)."""
    found = getattr(instance, _PASSED, None)
    return found if isinstance(found, frozenset) else None


def parse(command: Command, argv: Sequence[str], prog: str = "textenv") -> tuple[Any, ...]:
    """The dataclass instances of ``command`` from its argv (``--help`` and usage errors exit, as argparse).

    Each instance records which of its fields the argv named (see :func:`passed_fields`)."""
    argv = list(argv)
    types = command.types_for(argv)
    parser = make_parser(f"{prog} {command.name}", types, description=command.help)
    instances = tuple(parser.parse_args_into_dataclasses(argv, look_for_args_file=False))
    # the same flags with no defaults: what is left in the namespace is what the argv named
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    named = set(vars(parser.parse_known_args(argv)[0]))
    for instance in instances:
        fields = {f.name for f in dataclasses.fields(instance)}
        object.__setattr__(instance, _PASSED, frozenset(named & fields))
    return instances


def _usage(commands: Sequence[Command], prog: str) -> str:
    width = max(len(c.name) for c in commands)
    lines = [f"usage: {prog} COMMAND [--flags]   ({prog} COMMAND --help for a command's flags)", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.help}" for c in commands]
    return "\n".join(lines)


def run(argv: Sequence[str] | None, commands: Sequence[Command], prog: str = "textenv") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command it names, return its exit status.

    A ``ValueError`` or ``FileNotFoundError`` from the command is printed as one line
    (``textenv CMD: error: ...``) with exit status 2, as argparse does for bad flags.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in commands}
    if not args or args[0] in ("-h", "--help"):
        print(_usage(commands, prog), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command = by_name.get(args[0])
    if command is None:
        print(f"{prog}: error: unknown command {args[0]!r}; choose one of {', '.join(by_name)}", file=sys.stderr)
        return 2
    try:
        instances = parse(command, args[1:], prog)
        return int(command.run(*instances))
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog} {command.name}: error: {exc}", file=sys.stderr)
        return 2
