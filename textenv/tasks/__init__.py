"""Built-in tasks: a prompt source, a gold scorer and corpus generators each (pure Python and numpy).

- ``"sentiment"`` (:class:`SentimentTask`): continue a movie review so that it reads positive.
- ``"arithmetic"`` (:class:`ArithmeticTask`): answer ``a+b=``; exact-match gold.
- ``"keywords"`` (:class:`KeywordsTask`): one well-formed sentence that uses three given words.
- ``"translation"`` (:class:`TranslationTask`): English-like text into a constructed language; chrF gold.
- ``"summarization"`` (:class:`SummarizationTask`): what a document's main person did; ROUGE-L gold.
- ``"qa"`` (:class:`QATask`): answer a question about a passage, some by combining two facts; SQuAD F1 gold.
- ``"dialogue"`` (:class:`DialogueTask`): multi-turn; book a table with a scripted user who holds the details.
- ``"detox"`` (:class:`DetoxTask`): rewrite a rude sentence civilly, keeping its content; (1 - toxicity) x chrF.

A user's own rows and metric make a :class:`DatasetTask` (:mod:`textenv.tasks.dataset`), and
``"reasoning_gym:<dataset>"`` names a procedural dataset of the ``reasoning-gym`` package
(:class:`~textenv.tasks.reasoning.ReasoningGymTask`, the optional extra ``[reasoning]``).

Example:
    >>> task = get_task("arithmetic")
    >>> task.gold_score(["23+58="], ["81"])
    [1.0]
"""

from __future__ import annotations

from typing import Any

from textenv.tasks.arithmetic import ArithmeticTask
from textenv.tasks.base import Task
from textenv.tasks.dataset import DatasetTask, task_from_spec
from textenv.tasks.detox import DetoxTask
from textenv.tasks.dialogue import DialogueTask
from textenv.tasks.keywords import KeywordsTask
from textenv.tasks.qa import QATask
from textenv.tasks.sentiment import SentimentTask
from textenv.tasks.summarization import SummarizationTask
from textenv.tasks.translation import TranslationTask

#: Built-in tasks by registry name.
TASKS: dict[str, type[Task]] = {
    SentimentTask.name: SentimentTask,
    ArithmeticTask.name: ArithmeticTask,
    KeywordsTask.name: KeywordsTask,
    TranslationTask.name: TranslationTask,
    SummarizationTask.name: SummarizationTask,
    QATask.name: QATask,
    DialogueTask.name: DialogueTask,
    DetoxTask.name: DetoxTask,
}


def get_task(name: str | Task | dict[str, Any], **kwargs: Any) -> Task:
    """A task by registry name (built with ``kwargs``), ``name`` itself if it is already a Task, or the task a
    record from :meth:`Task.spec` describes (a dict, as a checkpoint keeps it).

    Example:
        >>> get_task("arithmetic", partial_credit=True).partial_credit
        True
    """
    if isinstance(name, Task):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} need a task name, got the instance {name!r}")
        return name
    if isinstance(name, dict):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} need a task name, got the record {name!r}")
        return task_from_spec(name)
    if not isinstance(name, str):
        raise TypeError(f"task must be a name or a Task, got {type(name).__name__}: {name!r}")
    if name.strip().startswith("reasoning_gym:"):
        from textenv.tasks.reasoning import PREFIX, ReasoningGymTask

        return ReasoningGymTask(name.strip()[len(PREFIX):], **kwargs)
    try:
        cls = TASKS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}, or 'reasoning_gym:<dataset>'") from None
    return cls(**kwargs)


__all__ = ["TASKS", "ArithmeticTask", "DatasetTask", "DetoxTask", "DialogueTask", "KeywordsTask", "QATask",
           "SentimentTask", "SummarizationTask", "Task", "TranslationTask", "get_task"]
