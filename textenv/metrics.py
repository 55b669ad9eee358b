"""Reference-based text metrics in [0, 1], computed by the libraries each field uses.

- ``exact_match`` and ``f1``: SQuAD's answer normalisation (lower case, no punctuation, no articles,
  single spaces) and its token-overlap F1, the maximum over the references. These are a dozen lines of
  the SQuAD v1.1 evaluation script; no maintained library exposes them without pulling in ``datasets``
  and ``evaluate``, so they are written here.
- ``bleu`` and ``chrf``: sentence-level BLEU (with effective order, as ``sacrebleu`` recommends for
  single sentences) and chrF from ``sacrebleu``, divided by 100.
- ``rouge1``, ``rouge2``, ``rougeL``: the F-measure from Google's ``rouge-score``, the maximum over the
  references.

``sacrebleu`` and ``rouge-score`` are the optional extra ``[metrics]``; a metric that needs one of them
raises :class:`ImportError` naming the extra when it is missing. Every metric takes a completion and a
non-empty list of references and returns one float in [0, 1].

Example:
    >>> score("f1", "the Eiffel tower", ["Eiffel Tower"])
    1.0
    >>> score("exact_match", "Paris.", ["paris"])
    1.0
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

#: Names accepted by :func:`get_metric` and :func:`score`.
METRICS = ("exact_match", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _exact_match(completion: str, references: Sequence[str]) -> float:
    pred = normalize_answer(completion)
    return float(any(pred == normalize_answer(ref) for ref in references))


def _token_f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1(completion: str, references: Sequence[str]) -> float:
    pred = normalize_answer(completion).split()
    return max(_token_f1(pred, normalize_answer(ref).split()) for ref in references)


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this metric needs {package!r}, part of the optional extra: pip install 'textenv[metrics]'"
        ) from e


@cache
def _sacrebleu_metric(name: str) -> Any:
    metrics = _require("sacrebleu.metrics", "sacrebleu")
    return metrics.BLEU(effective_order=True) if name == "bleu" else metrics.CHRF()


@cache
def _rouge_scorer(name: str) -> Any:
    rouge = _require("rouge_score.rouge_scorer", "rouge-score")
    return rouge.RougeScorer([name], use_stemmer=False)


def _bleu(completion: str, references: Sequence[str]) -> float:
    return float(_sacrebleu_metric("bleu").sentence_score(completion, list(references)).score) / 100.0


def _chrf(completion: str, references: Sequence[str]) -> float:
    return float(_sacrebleu_metric("chrf").sentence_score(completion, list(references)).score) / 100.0


def _rouge(name: str) -> Callable[[str, Sequence[str]], float]:
    def fn(completion: str, references: Sequence[str]) -> float:
        scorer = _rouge_scorer(name)
        return max(float(scorer.score(ref, completion)[name].fmeasure) for ref in references)

    fn.__name__ = name
    return fn


_FUNCTIONS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact_match": _exact_match,
    "f1": _f1,
    "bleu": _bleu,
    "chrf": _chrf,
    "rouge1": _rouge("rouge1"),
    "rouge2": _rouge("rouge2"),
    "rougeL": _rouge("rougeL"),
}


def get_metric(name: str) -> Callable[[str, Sequence[str]], float]:
    """The metric ``name`` (one of :data:`METRICS`) as ``fn(completion, references) -> float in [0, 1]``.

    The library a metric needs is imported on the first call, so an unknown name fails here and a missing
    extra fails when the metric is used.
    """
    if not isinstance(name, str) or name not in _FUNCTIONS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {list(METRICS)}")
    return _FUNCTIONS[name]


def check_references(references: Sequence[str] | str) -> list[str]:
    """``references`` as a non-empty list of strings (a lone string is one reference)."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"references must be a non-empty list of strings, got {references!r}")
    return refs


def score(name: str, completion: str, references: Sequence[str] | str) -> float:
    """Metric ``name`` of ``completion`` against ``references``, in [0, 1]."""
    fn = get_metric(name)
    value = fn(completion, check_references(references))
    return min(1.0, max(0.0, float(value)))


def corpus_scores(name: str, completions: Sequence[str], references: Sequence[Sequence[str] | str]) -> list[float]:
    """:func:`score` for each aligned (completion, references) pair."""
    if len(completions) != len(references):
        raise ValueError(f"got {len(completions)} completions but {len(references)} reference lists")
    return [score(name, c, r) for c, r in zip(completions, references)]


__all__ = ["METRICS", "check_references", "corpus_scores", "get_metric", "normalize_answer", "score"]
