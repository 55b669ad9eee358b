"""textenv.training.loop: the schedule, the optimizer groups, checkpoints and stale temporaries."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from transformers import GPT2LMHeadModel

from textenv.io import list_checkpoints
from textenv.models import tiny_gpt2_config
from textenv.training import loop
from textenv.training.loop import (
    TRAINER_STATE_NAME,
    TrainConfig,
    latest_checkpoint,
    make_optimizer,
    make_scheduler,
    remove_stale_checkpoint_temporaries,
    train,
)


def _old_lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """The schedule the LM stages used before the one loop (textenv.training.lm.lr_multiplier), verbatim."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps - 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _lrs(config: TrainConfig) -> list[float]:
    """The learning rate each of the ``config.steps`` optimizer steps uses."""
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    out = []
    for _ in range(config.steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("steps", "warmup"), [(1, 0), (1, 100), (2, 1), (6, 2), (20, 3), (50, 0), (97, 10),
                                               (300, 15), (1000, 100), (10, 10), (10, 9), (5, 30)])
def test_schedule_equals_the_old_formula_bitwise_at_every_step(steps, warmup):
    lr = 3e-4
    expected = [lr * _old_lr_multiplier(s, warmup, steps) for s in range(steps)]
    assert _lrs(TrainConfig(steps=steps, warmup_steps=warmup, lr=lr)) == expected  # exact float equality


def test_schedule_known_answer():
    assert [round(x, 3) for x in _lrs(TrainConfig(steps=6, warmup_steps=2, lr=1.0))] == [0.5, 1.0, 1.0, 0.775,
                                                                                        0.325, 0.1]


def test_optimizer_decays_matrices_only():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[0].weight.requires_grad_(False)  # frozen parameters are left out
    opt = make_optimizer(model, TrainConfig(weight_decay=0.05, lr=1e-3))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(3, 4)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(3,), (3,), (3,)]
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 1e-3


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2_config(32, n_layer=1, n_embd=16, n_head=2, n_positions=16))


def _batch_fn(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, 32, (4, 8), generator=g)  # (B, T)


def _run(model: GPT2LMHeadModel, out, config: TrainConfig, resume: bool = False) -> loop.TrainResult:
    def loss_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss  # dropout draws from torch's RNG: it must be restored too

    return train(model, config, out, _batch_fn, loss_fn, stage="test", resume=resume,
                 evaluate=lambda step: {"step": step, "norm": float(model.lm_head.weight.detach().norm())})


def test_resume_from_a_middle_checkpoint_is_bitwise_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = TrainConfig(steps=9, warmup_steps=2, checkpoint_every=3, eval_every=2, progress=False, lr=1e-2)
    full = _model()
    ref = _run(full, tmp_path / "full", cfg)
    assert [p.name for p in list_checkpoints(tmp_path / "full", TRAINER_STATE_NAME)] == [
        "checkpoint-00000006", "checkpoint-00000009"]  # the newest two

    real = loop.save_checkpoint

    def save_then_die(*args, **kwargs):  # a kill right after the first checkpoint (step 3)
        real(*args, **kwargs)
        raise KeyboardInterrupt

    killed = tmp_path / "killed"
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(_model(), killed, cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert latest_checkpoint(killed).name == "checkpoint-00000003"
    with pytest.raises(ValueError, match="resume=True"):
        _run(_model(), killed, cfg)
    torch.manual_seed(99)  # a new process: other RNG state, other initial weights
    resumed = GPT2LMHeadModel(tiny_gpt2_config(32, n_layer=1, n_embd=16, n_head=2, n_positions=16))
    got = _run(resumed, killed, cfg, resume=True)
    assert got.step == 9 and got.loss_history == ref.loss_history and got.eval_history == ref.eval_history
    for name, tensor in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = _dead_pid()
    stale = out / f".checkpoint-00000004.tmp-{dead}-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = out / ".checkpoint-00000008.tmp-1-89abcdef"  # pid 1 is alive: a writer still at work
    live.mkdir()
    unrelated = out / ".notes"
    unrelated.write_text("mine")
    remove_stale_checkpoint_temporaries(out)
    assert not stale.exists() and live.exists() and unrelated.exists()

    stale.mkdir()
    _run(_model(), out, TrainConfig(steps=2, warmup_steps=1, progress=False))  # train() sweeps them first
    assert not stale.exists() and live.exists()
    assert [p.name for p in list_checkpoints(out, TRAINER_STATE_NAME)] == ["checkpoint-00000002"]


@pytest.mark.parametrize("loss", ["mse", "bt"])
def test_reward_model_training_resumes_bitwise(tmp_path, monkeypatch, tiny_tokenizer_dir, loss):
    """Stage 3 runs on the same loop: killed after a checkpoint and resumed, it ends on the uninterrupted
    run's weights and loss, and its output directory is a loadable reward model."""
    from safetensors.torch import load_file

    from textenv.rewards import load_reward_model
    from textenv.training.reward import train_reward_model

    if loss == "mse":
        rows = [{"prompt": f"{a}+1=", "completion": str(a + 1 + (a % 3)), "score": float(a % 3 == 0)}
                for a in range(40)]
    else:
        rows = [{"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)} for a in range(40)]
    kwargs = dict(loss=loss, tokenizer=str(tiny_tokenizer_dir), steps=6, batch_size=4, lr=1e-2, progress=False,
                  model_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}, checkpoint_every=3)
    ref = train_reward_model(rows, tmp_path / "full", **kwargs)

    real = loop.save_checkpoint

    def save_then_die(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(rows, tmp_path / "killed", **kwargs)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert not (tmp_path / "killed" / "textenv_reward.json").exists()  # no final model from a killed run
    with pytest.raises(ValueError, match="resume=True"):
        train_reward_model(rows, tmp_path / "killed", **kwargs)
    got = train_reward_model(rows, tmp_path / "killed", resume=True, **kwargs)
    assert got["train/loss"] == ref["train/loss"] and got["steps"] == 6
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scores = load_reward_model(str(tmp_path / "killed"))(["1+1="], ["2"])
    assert len(scores) == 1 and math.isfinite(scores[0])
