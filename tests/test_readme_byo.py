"""The README section "Your own task, data and model": every python snippet runs, in order (issue 13 item 5)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from textenv.models import POLICY_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own task, data and model"


def section_snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


@pytest.mark.slow  # a reward model and a TRL step on the shipped policy: ~40 s on 2 shared cores
@pytest.mark.skipif(not (POLICY_DIR / "config.json").exists(), reason="the shipped artifacts are not built")
def test_the_byo_snippets_run(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    pytest.importorskip("reasoning_gym")
    snippets = section_snippets()
    assert len(snippets) >= 6  # JSONL + metric, reward model directory, seq2seq, reasoning-gym, TRL, wrapper
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "readme"}
    for code in snippets:
        exec(compile(code, f"{README.name} ({SECTION})", "exec"), scope)  # noqa: S102 (our own README)
    assert scope["reward"] == pytest.approx(1.0)  # the wrapper scored the reference
    assert (tmp_path / "runs" / "rm" / "textenv_reward.json").exists()
    assert scope["info"]["gold_score"] == pytest.approx(1.0)
    assert scope["agent"].episodes == 16  # the encoder-decoder policy trained on the dataset task
