"""The common end of the small one-shot benchmarks (``host_sync``, ``decode_compile``): record the command and
the machine, print the result, and write it where it belongs."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from textenv import io

RESULTS = Path(__file__).resolve().parent / "results"


def finish(result: dict[str, Any], name: str, argv: list[str] | None, json_path: str | None, smoke: bool) -> None:
    """Add ``command`` and ``machine`` to ``result``, print it as JSON, and write it (atomically) to
    ``json_path``, or else, unless ``smoke``, to ``results/<name>-<device type>.json``: a smoke run writes only
    where ``--json`` says, never over a committed result."""
    result["command"] = f"python -m benchmarks.{name.replace('-', '_')} " + " ".join(
        argv if argv is not None else sys.argv[1:])
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "processor": platform.processor() or platform.machine()}
    text = json.dumps(result, indent=1)
    print(text)
    device_type = torch.device(result["config"]["device"]).type
    out = Path(json_path) if json_path else (None if smoke else RESULTS / f"{name}-{device_type}.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        io.write_text(out, text + "\n")
