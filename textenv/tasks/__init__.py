"""Built-in tasks: a prompt source, a gold scorer and corpus generators each (pure Python and numpy).

- ``"sentiment"`` (:class:`SentimentTask`): continue a movie review so that it reads positive.
- ``"arithmetic"`` (:class:`ArithmeticTask`): answer ``a+b=``; exact-match gold.
- ``"keywords"`` (:class:`KeywordsTask`): one well-formed sentence that uses three given words.
- ``"dialogue"`` (:class:`DialogueTask`): multi-turn; book a table with a scripted user who holds the details.

Example:
    >>> task = get_task("arithmetic")
    >>> task.gold_score(["23+58="], ["81"])
    [1.0]
"""

from __future__ import annotations

from typing import Any

from textenv.tasks.arithmetic import ArithmeticTask
from textenv.tasks.base import Task
from textenv.tasks.dialogue import DialogueTask
from textenv.tasks.keywords import KeywordsTask
from textenv.tasks.sentiment import SentimentTask

#: Built-in tasks by registry name.
TASKS: dict[str, type[Task]] = {
    SentimentTask.name: SentimentTask,
    ArithmeticTask.name: ArithmeticTask,
    KeywordsTask.name: KeywordsTask,
    DialogueTask.name: DialogueTask,
}


def get_task(name: str | Task, **kwargs: Any) -> Task:
    """A task by registry name (built with ``kwargs``), or ``name`` itself if it is already a Task.

    Example:
        >>> get_task("arithmetic", partial_credit=True).partial_credit
        True
    """
    if isinstance(name, Task):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} need a task name, got the instance {name!r}")
        return name
    if not isinstance(name, str):
        raise TypeError(f"task must be a name or a Task, got {type(name).__name__}: {name!r}")
    try:
        cls = TASKS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
    return cls(**kwargs)


__all__ = ["TASKS", "ArithmeticTask", "DialogueTask", "KeywordsTask", "SentimentTask", "Task", "get_task"]
