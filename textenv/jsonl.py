"""Reading JSONL and text files with errors that name the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at column "
                         f"{exc.start + 1}); save the file as UTF-8") from None


def read_text_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 text file (without line endings; a BOM-free UTF-8 file is expected).

    Raises ``ValueError`` naming ``path:line`` for a line that is not UTF-8 (not a ``UnicodeDecodeError``).
    """
    path = Path(path)
    with path.open("rb") as f:
        return [_decode(raw, path, lineno).rstrip("\r\n") for lineno, raw in enumerate(f, start=1)]


def read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file.

    Raises ``ValueError`` naming ``path:line`` for a line that is not UTF-8, not JSON or not a JSON object.
    """
    path = Path(path)
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows
