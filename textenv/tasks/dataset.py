"""`DatasetTask`: a task from a user's rows (a JSONL file or a list of dicts) and a metric.

A row is a JSON object with a ``"prompt"`` (str) and its references: ``"references"`` (a list of str),
``"reference"`` (a str) or ``"answer"`` (a str or an integer), looked up in that order. An optional
``"split"`` (``"train"`` or ``"test"``) places the row; any other field is kept and offered to TRL-style
reward functions as a per-prompt column (:meth:`DatasetTask.prompt_columns`).

The gold score of a completion is the metric against the prompt's references: a name from
:data:`textenv.metrics.METRICS` (``exact_match``, ``f1``, ``bleu``, ``chrf``, ``rouge1``, ``rouge2``,
``rougeL``) or a callable ``metric(prompt, completion, row) -> float`` (rows then need no references). An
env built on a dataset task rewards with that gold score unless ``reward_model=`` says otherwise.

Example:
    >>> task = DatasetTask([{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}],
    ...                    metric="exact_match")
    >>> task.gold_score(["2+2=", "3+3="], ["4", "five"])
    [1.0, 0.0]
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textenv.jsonl import read_jsonl
from textenv.tasks.base import SPLITS, TEST_FRACTION, Task, check_pairs, check_split

#: Row fields that hold the references, in the order they are looked up.
REFERENCE_FIELDS = ("references", "reference", "answer")
#: Row fields that are not offered as TRL columns.
_RESERVED = ("prompt", "split")

Metric = Callable[[str, str, dict[str, Any]], float]


def hashed_split(prompt: str, test_fraction: float = TEST_FRACTION, seed: int = 0) -> str:
    """``"test"`` for a share ``test_fraction`` of all prompts, by a CRC32 hash of the prompt (and ``seed``).

    With ``seed=0`` and the default fraction this is :func:`textenv.tasks.base.split_of`.
    """
    key = prompt if seed == 0 else f"{seed}\0{prompt}"
    return "test" if zlib.crc32(key.encode("utf-8")) % 1000 < test_fraction * 1000 else "train"


def row_references(row: Mapping[str, Any], where: str) -> list[str] | None:
    """The references of ``row`` (None when it has none), or a ``ValueError`` naming ``where``."""
    for name in REFERENCE_FIELDS:
        if name not in row:
            continue
        value = row[name]
        if name == "references":
            if (isinstance(value, str) or not isinstance(value, list) or not value
                    or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{where}: \"references\" must be a non-empty list of strings, got {value!r:.80}")
            return list(value)
        if name == "answer" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return [str(value)]
        if not isinstance(value, str):
            raise ValueError(f"{where}: \"{name}\" must be a string, got {value!r:.80}")
        return [value]
    return None


class DatasetTask(Task):
    """A task from rows ``{"prompt", "references" | "reference" | "answer", "split"?, ...}`` and a metric.

    **Prompts**: the rows' prompts, drawn uniformly from the rows of the asked split (a prompt that appears
    in several rows is drawn as often as it appears). A row's split is its ``"split"`` field, else a CRC32
    hash of its prompt (seeded by ``seed``) puts a share ``split_fraction`` of the prompts in ``"test"``;
    when no row names a split and the hash leaves ``"test"`` empty, the prompt with the smallest hash goes
    there, so any file with two distinct prompts has both splits. Rows with the same prompt share a split
    and their references are merged.

    **Gold score**: the metric of the completion against the prompt's references, in [0, 1] for the named
    metrics; a callable metric gets ``(prompt, completion, row)`` (the prompt's first row) and must return
    a finite number. A prompt that is not in the rows has no references: scoring it is a ``ValueError``.

    **Responses**: none are generated (:meth:`sample_response` is not implemented), so the corpus
    generators of :class:`~textenv.tasks.base.Task` do not apply; fine-tune on the file's references
    (``textenv finetune --pairs``) and train a reward model on scored policy samples
    (``textenv train-reward --task-data``).

    Args:
        path_or_rows: a ``.jsonl`` file or a sequence of dicts.
        metric: a name from :data:`textenv.metrics.METRICS` or ``fn(prompt, completion, row) -> float``.
        split_fraction: the share of hashed prompts in ``"test"``, in (0, 1).
        seed: seed of the split hash (0: the built-in tasks' hash).
        name: the task's name (default ``"dataset:<file stem>"``, or ``"dataset"`` for rows).
        max_prompt_tokens, max_new_tokens: the env's default budgets for this task.
    """

    default_max_prompt_tokens = 64
    default_max_new_tokens = 32
    #: An env on this task rewards with the gold score when ``reward_model="default"``.
    default_reward_model = "gold"

    def __init__(
        self,
        path_or_rows: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
        metric: str | Metric = "chrf",
        split_fraction: float = TEST_FRACTION,
        seed: int = 0,
        name: str | None = None,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        from textenv.metrics import get_metric

        if isinstance(metric, str):
            get_metric(metric)  # an unknown name fails here
        elif not callable(metric):
            raise ValueError(f"metric must be a metric name or a callable (prompt, completion, row) -> float, "
                             f"got {metric!r}")
        if isinstance(split_fraction, bool) or not isinstance(split_fraction, numbers.Real) or not (
                0.0 < float(split_fraction) < 1.0):
            raise ValueError(f"split_fraction must be a number in (0, 1), got {split_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        for flag, value in (("max_prompt_tokens", max_prompt_tokens), ("max_new_tokens", max_new_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{flag} must be None or an integer >= 1, got {value!r}")
        self.metric: str | Metric = metric
        self.split_fraction: float = float(split_fraction)
        self.seed: int = int(seed)
        self.path: Path | None = None
        if isinstance(path_or_rows, (str, os.PathLike)):
            self.path = Path(path_or_rows).expanduser().resolve()
            numbered = self._read_file(self.path)
            source = str(path_or_rows)
        else:
            if isinstance(path_or_rows, Mapping) or not isinstance(path_or_rows, Sequence):
                raise ValueError(f"path_or_rows must be a .jsonl path or a list of dicts, got "
                                 f"{type(path_or_rows).__name__}")
            numbered = [(i, row) for i, row in enumerate(path_or_rows)]
            source = "rows"
        self.source: str = source
        self.name = name if name is not None else (f"dataset:{self.path.stem}" if self.path is not None else "dataset")
        if max_prompt_tokens is not None:
            self.default_max_prompt_tokens = int(max_prompt_tokens)
        if max_new_tokens is not None:
            self.default_max_new_tokens = int(max_new_tokens)
        self._build(numbered)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _read_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
        if not path.is_file():
            raise ValueError(f"dataset file {str(path)!r} does not exist or is not a file")
        if path.suffix != ".jsonl":
            raise ValueError(f"dataset file must end in .jsonl, got {str(path)!r}")
        return read_jsonl(path)

    def _where(self, index: int) -> str:
        return f"{self.path}:{index}" if self.path is not None else f"rows[{index}]"

    def _build(self, numbered: list[tuple[int, Any]]) -> None:
        named_metric = isinstance(self.metric, str)
        self._rows: dict[str, dict[str, Any]] = {}  # prompt -> its first row
        self._refs: dict[str, list[str]] = {}  # prompt -> references merged over its rows
        explicit: dict[str, str] = {}  # prompt -> its "split" field
        order: list[str] = []  # one entry per row (duplicates kept: drawn as often as they appear)
        columns: list[str] = []
        for index, row in numbered:
            where = self._where(index)
            if not isinstance(row, Mapping):
                raise ValueError(f"{where}: expected an object with a \"prompt\", got {type(row).__name__}")
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{where}: expected a non-empty string \"prompt\", got {prompt!r:.80}")
            refs = row_references(row, where)
            if refs is None and named_metric:
                raise ValueError(f"{where}: no references for metric {self.metric!r}: give \"references\" (a list "
                                 f"of str), \"reference\" or \"answer\"")
            split = row.get("split")
            if split is not None:
                if split not in SPLITS:
                    raise ValueError(f"{where}: \"split\" must be one of {SPLITS}, got {split!r}")
                if explicit.get(prompt, split) != split:
                    raise ValueError(f"{where}: prompt {prompt[:60]!r} is in split {split!r} here and "
                                     f"{explicit[prompt]!r} in an earlier row")
                explicit[prompt] = split
            if prompt not in self._rows:
                self._rows[prompt] = dict(row)
                self._refs[prompt] = []
            self._refs[prompt] += [r for r in refs or [] if r not in self._refs[prompt]]
            columns += [k for k in row if k not in _RESERVED and k not in columns]
            order.append(prompt)
        if not order:
            raise ValueError(f"dataset {self.source!r} holds no rows")
        split_of = {p: explicit.get(p) or hashed_split(p, self.split_fraction, self.seed) for p in self._rows}
        if not explicit and len(self._rows) > 1 and "test" not in split_of.values():
            smallest = min(self._rows, key=lambda p: zlib.crc32(
                (p if self.seed == 0 else f"{self.seed}\0{p}").encode("utf-8")))
            split_of[smallest] = "test"
        self._split_of = split_of
        self._by_split = {s: [p for p in order if split_of[p] == s] for s in SPLITS}
        self.prompt_column_names = tuple(columns)

    # ------------------------------------------------------------------ the task contract
    def __repr__(self) -> str:
        metric = self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", repr(self.metric))
        return f"DatasetTask({self.source!r}, metric={metric!r})"

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_split.values())

    def split_prompts(self, split: str = "train") -> list[str]:
        """The prompts of ``split``, one per row, in file order."""
        return list(self._by_split[check_split(split)])

    def generate_prompt(self, rng: np.random.Generator) -> str:
        """A row's prompt, uniformly over all rows (either split)."""
        rows = self._by_split["train"] + self._by_split["test"]
        return rows[int(rng.integers(len(rows)))]

    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        """A row's prompt, uniformly over the rows of ``split`` (one draw; no rejection sampling)."""
        rows = self._by_split[check_split(split)]
        if not rows:
            raise ValueError(f"task {self.name!r} ({self.source}) has no rows in split {split!r}; add rows with "
                             f"\"split\": {split!r} or change split_fraction")
        return rows[int(rng.integers(len(rows)))]

    def row(self, prompt: str) -> dict[str, Any]:
        """The (first) row of ``prompt``, or a ``ValueError`` naming it when it is not in the data."""
        try:
            return self._rows[prompt]
        except (KeyError, TypeError):
            raise ValueError(f"prompt {str(prompt)[:80]!r} is not in task {self.name!r} ({self.source}); its gold "
                             f"score needs the row's references") from None

    def references(self, prompt: str) -> list[str]:
        """The references of ``prompt`` (merged over its rows)."""
        self.row(prompt)
        return list(self._refs[prompt])

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The metric of each completion against its prompt's references (see the class docstring)."""
        from textenv.metrics import score

        check_pairs(prompts, completions)
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            row = self.row(prompt)
            if isinstance(self.metric, str):
                value = score(self.metric, completion, self._refs[prompt])
            else:
                raw = self.metric(prompt, completion, row)
                if isinstance(raw, bool) or not isinstance(raw, numbers.Real) or not math.isfinite(float(raw)):
                    raise ValueError(f"metric {getattr(self.metric, '__name__', self.metric)!r} of task {self.name!r} "
                                     f"returned {raw!r} for prompt {prompt[:60]!r}; expected a finite number")
                value = float(raw)
            out.append(value)
        return out

    def prompt_columns(self, prompts: Sequence[str]) -> dict[str, list[object]]:
        """The rows' other fields (everything but ``prompt`` and ``split``), None where a row lacks one."""
        rows = [self.row(p) for p in prompts]
        return {name: [r.get(name) for r in rows] for name in self.prompt_column_names}

    # ------------------------------------------------------------------ records
    def spec(self) -> dict[str, Any] | None:
        """A JSON-able record that :func:`task_from_spec` rebuilds this task from (a checkpoint keeps it), or
        None when it cannot be rebuilt (rows given in memory, or a callable metric)."""
        if self.path is None or not isinstance(self.metric, str):
            return None
        return {"kind": "dataset", "path": str(self.path), "sha256": _file_sha256(self.path),
                "metric": self.metric, "split_fraction": self.split_fraction, "seed": self.seed, "name": self.name,
                "max_prompt_tokens": self.default_max_prompt_tokens, "max_new_tokens": self.default_max_new_tokens}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DatasetChangedWarning(UserWarning):
    """A checkpoint's dataset file no longer holds the bytes it was trained on."""


def task_from_spec(spec: Mapping[str, Any], where: str = "the checkpoint") -> Task:
    """The task a ``spec()`` record describes: a :class:`DatasetTask` (a changed file warns and still loads) or
    a :class:`~textenv.tasks.reasoning.ReasoningGymTask`."""
    import warnings

    if isinstance(spec, Mapping) and spec.get("kind") == "reasoning_gym":
        from textenv.tasks.reasoning import ReasoningGymTask

        return ReasoningGymTask(spec["dataset"], size=spec.get("size", 10_000), seed=spec.get("seed", 0),
                                system_prompt=spec.get("system_prompt") or None, extract=spec.get("extract", "tag"),
                                max_prompt_tokens=spec.get("max_prompt_tokens"),
                                max_new_tokens=spec.get("max_new_tokens"), **dict(spec.get("config") or {}))
    if not isinstance(spec, Mapping) or spec.get("kind") != "dataset" or not isinstance(spec.get("path"), str):
        raise ValueError(f"{where}: unknown task record {spec!r}; expected {{'kind': 'dataset', 'path': ...}} or "
                         f"{{'kind': 'reasoning_gym', 'dataset': ...}}")
    path = Path(spec["path"])
    if not path.is_file():
        raise FileNotFoundError(f"{where}: the dataset file {str(path)!r} of task {spec.get('name')!r} does not exist")
    if spec.get("sha256") and _file_sha256(path) != spec["sha256"]:
        warnings.warn(f"{where}: the dataset file {str(path)!r} changed since the checkpoint was written; loading "
                      f"it as it is now", DatasetChangedWarning, stacklevel=2)
    return DatasetTask(path, metric=spec.get("metric", "chrf"), split_fraction=spec.get("split_fraction", TEST_FRACTION),
                       seed=spec.get("seed", 0), name=spec.get("name"), max_prompt_tokens=spec.get("max_prompt_tokens"),
                       max_new_tokens=spec.get("max_new_tokens"))
