"""Where ``textenv train --report-to`` sends each iteration's metrics: TensorBoard, Weights & Biases, or nowhere.

``metrics.csv`` is always written (see :mod:`agents.run`); a reporter is an extra sink, as in TRL and
cleanrl. Metric names follow TRL's where TRL has one (``reward``, ``kl``, ``entropy``,
``completions/mean_length``, ``clip_ratio/region_mean``, ``policy_loss``, ``grad_norm``), under the prefixes the
Hugging Face ``Trainer`` integrations use: ``train/`` for the per-iteration metrics, ``eval/`` for the
initial and final held-out evaluations. The step is the number of episodes collected so far.

- ``tensorboard``: event files in ``<run dir>/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``;
  needs the ``tensorboard`` package: ``pip install 'textenv[tensorboard]'``).
- ``wandb``: an offline run in ``<run dir>/wandb/`` (``WANDB_MODE=offline`` unless the environment sets
  another mode; ``wandb sync`` uploads it later; needs ``pip install 'textenv[wandb]'``).

Example:
    >>> r = make_reporter("none", "runs/x")
    >>> r.log({"reward": 0.5}, step=64)
    >>> r.close()
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Literal

ReportTo = Literal["none", "tensorboard", "wandb"]
REPORT_TO: tuple[str, ...] = ("none", "tensorboard", "wandb")
#: our history keys whose TRL name differs (GRPOTrainer logs the clipped fraction as clip_ratio/region_mean)
TRL_NAMES = {"clip_ratio": "clip_ratio/region_mean"}
#: bookkeeping columns of metrics.csv that are the step or the x axis, not curves
NOT_CURVES = frozenset({"episodes", "iteration"})
#: the values of WANDB_MODE that wandb accepts
WANDB_MODES = ("offline", "online", "disabled", "shared", "dryrun", "run")
#: the package each reporter needs, and the extra of pyproject.toml that installs it
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class MissingReporterError(ImportError, ValueError):
    """A reporter's package is not installed (a ``ValueError`` too, so the CLI prints it as one line)."""


def trl_name(key: str) -> str:
    """Our metric ``key`` under TRL's name where TRL logs the same quantity, else unchanged."""
    return TRL_NAMES.get(key, key)


def check_report_to(report_to: str) -> None:
    """Raise ``ValueError`` for an unknown reporter and :class:`MissingReporterError` (naming the extra to
    install) when its package is missing, before anything is written."""
    if report_to not in REPORT_TO:
        raise ValueError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    mode = os.environ.get("WANDB_MODE", "offline")
    if report_to == "wandb" and mode not in WANDB_MODES:
        raise ValueError(f"--report-to wandb: WANDB_MODE must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    package = _PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise MissingReporterError(f"--report-to {report_to} needs the {package!r} package, which is not "
                                   f"installed: pip install 'textenv[{package}]'", name=package)


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}{trl_name(k)}": float(v) for k, v in metrics.items()
            if k not in NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v))}


class Reporter:
    """Sends metrics nowhere (``--report-to none``); the base of the others."""

    name = "none"

    def log(self, metrics: dict[str, Any], step: int, prefix: str = "train/") -> None:
        """Record the numeric, finite entries of ``metrics`` at ``step`` (episodes), under ``prefix``."""

    def close(self) -> None:
        """Flush and release what the reporter holds (idempotent)."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardReporter(Reporter):
    """Scalars in TensorBoard event files under ``log_dir``."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        check_report_to("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer: Any = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: dict[str, Any], step: int, prefix: str = "train/") -> None:
        for key, value in _scalars(metrics, prefix).items():
            self.writer.add_scalar(key, value, global_step=int(step))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbReporter(Reporter):
    """A Weights & Biases run, offline by default, whose files live under ``run_dir/wandb``."""

    name = "wandb"

    def __init__(self, run_dir: str | os.PathLike[str], config: dict[str, Any] | None = None,
                 run_name: str | None = None) -> None:
        check_report_to("wandb")
        import wandb

        self.dir = Path(run_dir)
        mode: Any = os.environ.get("WANDB_MODE", "offline")  # never reach the network unless the user says so
        self.run: Any = wandb.init(project=os.environ.get("WANDB_PROJECT", "textenv"), name=run_name,
                                   dir=str(self.dir), mode=mode, config=config or {}, reinit=True)

    def log(self, metrics: dict[str, Any], step: int, prefix: str = "train/") -> None:
        self.run.log({**_scalars(metrics, prefix), "train/episodes": int(step)}, step=int(step))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def make_reporter(report_to: str, run_dir: str | os.PathLike[str], config: dict[str, Any] | None = None,
                  run_name: str | None = None) -> Reporter:
    """The reporter ``report_to`` (``none``, ``tensorboard`` or ``wandb``) writing inside ``run_dir``."""
    check_report_to(report_to)
    if report_to == "tensorboard":
        return TensorBoardReporter(Path(run_dir) / "tensorboard")
    if report_to == "wandb":
        return WandbReporter(run_dir, config, run_name)
    return Reporter()
