"""``textenv train --report-to`` (issue 10 A8): TensorBoard event files read back, TRL metric names, the
missing-package error naming the extra, and metrics.csv unchanged."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from agents import reporting
from agents.cli import main

TRAIN = ["train", "--agent", "grpo", "--env", "TextGen-Arithmetic-v0", "--policy", "tiny", "--episodes", "128",
         "--eval-episodes", "16", "--batch-size", "64", "--no-progress"]


def test_trl_names():
    assert reporting.trl_name("clip_ratio") == "clip_ratio/region_mean"
    for same in ("reward", "kl", "entropy", "completions/mean_length", "policy_loss", "grad_norm"):
        assert reporting.trl_name(same) == same
    assert reporting._scalars({"reward": 1, "episodes": 64.0, "kl": float("nan"), "clip_ratio": 0.1,
                               "flag": True}, "train/") == {"train/reward": 1.0, "train/clip_ratio/region_mean": 0.1}


def test_unknown_reporter_is_refused():
    with pytest.raises(ValueError, match="'tensorbord'"):
        reporting.check_report_to("tensorbord")
    with pytest.raises(ValueError, match="'tensorbord'"):
        reporting.make_reporter("tensorbord", "unused")


def test_bad_wandb_mode_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "ofline")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="'ofline'"):
        reporting.check_report_to("wandb")
    assert main([*TRAIN, "--out", str(out), "--report-to", "wandb"]) == 2
    assert "WANDB_MODE" in capsys.readouterr().err and not out.exists()
    reporting.check_report_to("tensorboard")  # WANDB_MODE only matters to wandb


def test_none_reporter_writes_nothing(tmp_path):
    with reporting.make_reporter("none", tmp_path / "run") as r:
        r.log({"reward": 1.0}, step=1)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_missing_package_names_the_extra(kind, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kind else real(name, *a))
    with pytest.raises(ImportError, match=rf"textenv\[{kind}\]") as info:
        reporting.make_reporter(kind, tmp_path)
    assert isinstance(info.value, ValueError) and info.value.name == kind
    # the CLI: one line, exit 2, no run directory made
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--report-to", kind]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"textenv[{kind}]" in err[0] and "--report-to" in err[0]
    assert not out.exists()


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    with reporting.make_reporter("tensorboard", tmp_path) as r:
        r.log({"reward": 0.25, "clip_ratio": 0.5, "episodes": 64.0}, step=64)
        r.log({"reward": 0.75, "clip_ratio": 0.0, "episodes": 128.0}, step=128)
        r.log({"gold_score": 0.1}, step=128, prefix="eval/")
    s = _scalars(tmp_path / "tensorboard")
    assert s["train/reward"] == [(64, 0.25), (128, 0.75)]
    assert s["train/clip_ratio/region_mean"] == [(64, 0.5), (128, 0.0)]
    assert [v for _, v in s["eval/gold_score"]] == [pytest.approx(0.1)]
    assert "train/episodes" not in s


def test_train_report_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--report-to", "tensorboard"]) == 0
    s = _scalars(out / "tensorboard")
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # metrics.csv unchanged: our own names, one row per iteration
    assert "clip_ratio" in rows[0] and "clip_ratio/region_mean" not in rows[0]
    steps = [int(float(r["episodes"])) for r in rows]
    for tag in ("train/reward", "train/kl", "train/entropy", "train/completions/mean_length",
                "train/clip_ratio/region_mean", "train/policy_loss", "train/grad_norm"):
        assert [st for st, _ in s[tag]] == steps, tag
    assert [v for _, v in s["train/reward"]] == [pytest.approx(float(r["reward"])) for r in rows]
    assert [st for st, _ in s["eval/reward"]] == [0, steps[-1]]  # initial and final evaluation


def test_train_report_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--report-to", "wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
