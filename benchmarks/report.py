"""What the benchmarks' results share: the command, the machine and how busy it was (load average at the
start and the end), the spread of a figure measured in rounds, and the common end of the small one-shot
benchmarks (``host_sync``, ``decode_compile``): print the result and write it where it belongs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from textenv import io

RESULTS = Path(__file__).resolve().parent / "results"


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (``os.getloadavg``), or ``None`` where there is none.
    On a machine with C cores, a 1-minute figure well above C - 1 means the run shared its cores."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def command(module: str, argv: list[str] | None) -> str:
    """The command line that reproduces a run: ``python -m benchmarks.<module> <args>``."""
    return " ".join([f"python -m benchmarks.{module}", *(argv if argv is not None else sys.argv[1:])])


def spread(values: list[float]) -> dict[str, float | int]:
    """How much a figure measured in rounds varies: median, min, max, ``relative`` = (max - min) / median
    (0 when every round agrees) and the number of rounds.

    Example:
        >>> spread([1.0, 1.2, 0.9])
        {'median': 1.0, 'min': 0.9, 'max': 1.2, 'relative': 0.3, 'rounds': 3}
    """
    if not values:
        raise ValueError("spread of no values")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi, "relative": round((hi - lo) / med, 4) if med else float("nan"),
            "rounds": len(values)}


def finish(result: dict[str, Any], name: str, argv: list[str] | None, json_path: str | None, smoke: bool,
           load_start: list[float] | None = None) -> None:
    """Add ``command``, ``machine`` and ``load_average`` (``load_start``, taken when the run began, and now) to
    ``result``, print it as JSON, and write it (atomically) to ``json_path``, or else, unless ``smoke``, to
    ``results/<name>-<device type>.json``: a smoke run writes only where ``--json`` says, never over a
    committed result."""
    result["command"] = command(name.replace("-", "_"), argv)
    result["load_average"] = {"start": load_start, "end": load_average()}
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "processor": platform.processor() or platform.machine()}
    text = json.dumps(result, indent=1)
    print(text)
    device_type = torch.device(result["config"]["device"]).type
    out = Path(json_path) if json_path else (None if smoke else RESULTS / f"{name}-{device_type}.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        io.write_text(out, text + "\n")
