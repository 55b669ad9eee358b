"""Run directories and checkpoints under bad inputs (issue 10 B12-B15, C17, C19, C20): locks, foreign
directories, resume conflicts, damaged files, non-finite training, exact evaluation counts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents import REINFORCE, Agent
from agents.cli import main
from agents.rollout import collect_rollout, evaluate_policy, sample_completions
from textenv import io
from textenv.training.loop import NonFiniteError

ARITH = "TextGen-Arithmetic-v0"
RUN = ["train", "--agent", "reinforce", "--env", ARITH, "--policy", "tiny", "--episodes", "8",
       "--eval-episodes", "4", "--batch-size", "4", "--no-progress"]


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _agent() -> REINFORCE:
    return REINFORCE(ARITH, policy="tiny", batch_size=4)


# ------------------------------------------------------------------------------------------------- C20
def test_evaluate_counts_exactly_the_episodes_asked():
    agent = _agent()
    seed = 77
    batch = collect_rollout(agent.policy, agent.envs, seed=seed, split="test", with_values=False,
                            generator=torch.Generator().manual_seed(seed))
    got = evaluate_policy(agent.policy, agent.envs, 3, seed=seed)
    assert got["reward"] == pytest.approx(float(batch.scores[:3].mean()))
    assert got["completions/mean_length"] == pytest.approx(float(batch.mask[:3].sum(1).mean()))
    # the agent's evaluate goes through the same helper (SB3Agent.evaluate too)
    assert agent.evaluate(3, seed=seed) == got


def test_sample_returns_exactly_n_pairs_beyond_one_batch():
    agent = _agent()
    pairs = sample_completions(agent.policy, agent.envs, 6, prompts=["1+2=", "3+4=", "5+6="])
    assert [p for p, _ in pairs] == ["1+2=", "3+4=", "5+6="] * 2
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        sample_completions(agent.policy, agent.envs, 0)


def test_cli_sample_n_zero_is_refused(tmp_path, capsys):
    ckpt = _agent().save(tmp_path / "ckpt")
    before = _tree(tmp_path)
    assert main(["sample", "--checkpoint", str(ckpt), "--prompt", "1+2=", "-n", "0"]) == 2
    assert "--num must be >= 1, got 0" in capsys.readouterr().err
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------------------------- B15 hashes
def test_a_flipped_byte_in_the_weights_is_an_error_naming_the_file(tmp_path, capsys):
    ckpt = _agent().save(tmp_path / "ckpt")
    meta = json.loads((ckpt / "agent.json").read_text())
    assert "policy/model.safetensors" in meta["files"] and "optimizer.pt" in meta["files"]
    weights = ckpt / "policy" / "model.safetensors"
    good = weights.read_bytes()
    bad = bytearray(good)
    bad[-7] ^= 1
    weights.write_bytes(bytes(bad))
    with pytest.raises(ValueError) as info:
        Agent.load(ckpt)
    assert str(weights) in str(info.value) and "damaged" in str(info.value)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--episodes", "4"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and len(err.strip().splitlines()) == 1
    weights.write_bytes(good)  # the checkpoint is usable again
    assert Agent.load(ckpt).episodes == 0


def test_a_missing_file_and_a_bad_hash_record_are_errors(tmp_path):
    ckpt = _agent().save(tmp_path / "ckpt")
    (ckpt / "policy" / "value_head.safetensors").unlink()
    with pytest.raises(ValueError, match="value_head.safetensors' is missing"):
        Agent.load(ckpt)
    meta_file = ckpt / "agent.json"
    meta = json.loads(meta_file.read_text())
    meta["files"] = {"../outside": "0" * 64}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"'\.\./outside' .* is not a name inside"):
        Agent.load(ckpt)


def test_a_checkpoint_without_hashes_still_loads(tmp_path):
    ckpt = _agent().save(tmp_path / "ckpt")
    meta_file = ckpt / "agent.json"
    meta = json.loads(meta_file.read_text())
    del meta["files"]
    meta_file.write_text(json.dumps(meta))
    assert Agent.load(ckpt).episodes == 0


# ------------------------------------------------------------------------------------------------- C17 / C19
def _unhashed(ckpt: Path) -> None:
    """Drop the hashes (an old checkpoint), so a damaged file reaches its own loader."""
    meta_file = ckpt / "agent.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("files")
    meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("name, damage, message", [
    ("optimizer.pt", lambda b: b[: len(b) // 2], "cannot load the optimizer state"),
    ("policy/value_head.safetensors", lambda b: b[:20], "cannot load the value head"),
    ("policy/policy.json", lambda b: b"[1, 2]", "must be an object with temperature"),
    ("policy/policy.json", lambda b: b"{\"temperature\": ", "is not valid JSON"),
    ("policy/policy.json", lambda b: b"{\"top_k\": 0}", "top_k must be None or an integer >= 1, got 0"),
])
def test_damaged_checkpoint_files_are_errors_naming_the_file(tmp_path, capsys, name, damage, message):
    ckpt = _agent().save(tmp_path / "ckpt")
    _unhashed(ckpt)
    f = ckpt / name
    good = f.read_bytes()
    f.write_bytes(damage(good))
    with pytest.raises(ValueError) as info:
        Agent.load(ckpt)
    assert message in str(info.value) and str(f) in str(info.value)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--episodes", "4"]) == 2
    assert str(f) in capsys.readouterr().err
    f.write_bytes(good)
    assert Agent.load(ckpt).episodes == 0


def test_policy_refuses_a_non_finite_temperature():
    from agents import LMPolicy

    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got inf"):
        LMPolicy.from_pretrained("tiny", temperature=float("inf"))


# ------------------------------------------------------------------------------------------------- B15 resume
def test_resume_refuses_flags_that_conflict_with_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out), "--seed", "3"]) == 0
    before = _tree(out)
    capsys.readouterr()
    # --seed 0 is the default, given explicitly: still a conflict with the checkpoint's seed 3
    assert main([*RUN, "--out", str(out), "--resume", "--episodes", "12", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "--seed 0 (the checkpoint's: 3)" in err and "agent.json" in err and len(err.strip().splitlines()) == 1
    assert main([*RUN, "--out", str(out), "--resume", "--episodes", "12", "--seed", "3", "--env", "TextGen-v0",
                 "--learning-rate", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"--env 'TextGen-v0' (the checkpoint's: '{ARITH}')" in err and "--learning-rate 0.5" in err
    assert _tree(out) == before  # nothing trained or written
    # flags equal to the checkpoint's are fine, and the run continues
    assert main([*RUN, "--out", str(out), "--resume", "--episodes", "12", "--seed", "3"]) == 0
    assert Agent.load(io.list_checkpoints(out, "agent.json")[-1]).episodes == 12


def test_passed_fields_knows_a_flag_given_at_its_default():
    from agents.cli import TRAIN
    from textenv.cli_framework import parse, passed_fields

    args, config = parse(TRAIN, ["--agent", "reinforce", "--seed", "0", "--batch-size", "64"])
    assert passed_fields(args) == {"agent", "seed"} and passed_fields(config) == {"batch_size"}
    assert passed_fields(object()) is None


# ------------------------------------------------------------------------------------------------- B14
def test_an_agent_update_stops_on_a_non_finite_loss_and_keeps_the_checkpoint(tmp_path):
    agent = REINFORCE(ARITH, policy="tiny", batch_size=4, learning_rate=1e10)
    good = agent.save(tmp_path / "ckpt")
    before = _tree(good)
    with pytest.raises(NonFiniteError) as info:
        agent.learn(400, progress=False)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, ValueError)
    assert "reinforce iteration" in str(info.value) and "not finite" in str(info.value)
    with torch.no_grad():
        next(agent.policy.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match="holds non-finite values; not saved"):
        agent.save(tmp_path / "ckpt")
    assert _tree(good) == before
    assert Agent.load(good, learning_rate=1e-4).learn(4, progress=False).episodes == 4


def test_cli_train_with_an_infinite_step_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out), "--episodes", "400", "--learning-rate", "1e10"]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err or "nan" in err
    assert not io.list_checkpoints(out, "agent.json")  # no checkpoint of non-finite weights


def test_pretrain_stops_on_a_non_finite_loss_naming_the_step(tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(["pretrain", "--task", "arithmetic", "--docs", "100", "--steps", "20", "--batch-size", "4",
                 "--lr", "1e10", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pretrain step" in err and "not finite" in err
    assert not out.exists()  # nothing written, not even the directory


def test_check_finite_names_the_quantity():
    from textenv.training.loop import check_finite

    with pytest.raises(NonFiniteError, match="step 5: the grad norm is inf"):
        check_finite("step 5", loss=1.0, grad_norm=float("inf"))


# ------------------------------------------------------------------------------------------------- B12 locks
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_lock_refuses_a_second_writer(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / io.LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(ValueError, match=f"pid {os.getppid()} holds its lock"):
        with io.run_lock(out):
            pass
    assert main([*RUN, "--out", str(out)]) == 2
    assert f"pid {os.getppid()}" in capsys.readouterr().err
    assert main(["pretrain", "--task", "arithmetic", "--steps", "1", "--out", str(out), "--no-progress"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [io.LOCK_NAME]  # nothing written, the lock kept


def test_our_own_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "a" / "run"
    with io.run_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        (out / "result.txt").write_text("x")
        with pytest.raises(ValueError, match="is in use"):
            with io.run_lock(out):
                pass
        assert lock.exists()
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def test_nothing_written_leaves_no_directory(tmp_path):
    with io.run_lock(tmp_path / "a" / "b"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_stale_lock_is_taken_over_and_reported(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / io.LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="taking over the stale lock"):
        with io.run_lock(out) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (out / io.LOCK_NAME).exists()


@pytest.mark.parametrize("content, message", [
    ({"pid": 1, "host": "elsewhere.example"}, "on host 'elsewhere.example'"),
    ("not json", "is not a textenv lock"),
])
def test_a_foreign_or_damaged_lock_is_refused(tmp_path, content, message):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / io.LOCK_NAME
    lock.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        with io.run_lock(out):
            pass
    assert lock.exists()


# ------------------------------------------------------------------------------------------------- B13
@pytest.mark.parametrize("command", [
    RUN,
    ["pretrain", "--task", "arithmetic", "--steps", "1", "--no-progress"],
    ["finetune", "--model", "tiny", "--task", "arithmetic", "--steps", "1", "--no-progress"],
    ["train-reward", "--task", "arithmetic", "--steps", "1", "--no-progress"],
    ["build-defaults", "--scale", "0.01", "--no-progress"],
])
def test_an_out_directory_holding_the_users_files_is_refused(tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("the user's own\n")
    (out / ".tmp-notes").write_text("the user's own\n")
    before = _tree(out)
    assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is a non-empty directory that is not a textenv run" in err and "'.tmp-notes'" in err
    assert _tree(out) == before


def test_temporary_cleanup_removes_only_names_we_wrote(tmp_path):
    target = tmp_path / "model"
    users = [tmp_path / ".tmp-x", tmp_path / ".model.tmp-deadbeef", tmp_path / ".model.tmp-1-notes"]
    for p in users:
        p.write_text("the user's")
    ours = tmp_path / f".model.tmp-{_dead_pid()}-0123abcd"
    ours.mkdir()
    assert io.remove_stale_temporaries(target) == [ours]
    assert all(p.read_text() == "the user's" for p in users)


def test_a_run_dir_of_ours_with_an_extra_user_file_resumes_and_keeps_it(tmp_path):
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*RUN, "--out", str(out), "--resume", "--episodes", "12"]) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_rollout_metrics_wrong_answer_length_known_answer():
    """``completions/mean_length_wrong`` is the mean length of the completions whose gold score is below 0.5
    (Liu et al.'s measure), ``completions/wrong_fraction`` their share; evaluation leaves both out."""
    from agents.rollout import RolloutBatch, rollout_metrics

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    z = torch.zeros(4, 4)
    batch = RolloutBatch(query_ids=torch.zeros(4, 1, dtype=torch.long), query_mask=torch.ones(4, 1),
                         tokens=torch.zeros(4, 4, dtype=torch.long), mask=mask, logprobs=z, ref_logprobs=z,
                         values=z, rewards=z, scores=torch.zeros(4), gold_scores=torch.tensor([0.0, 1.0, 0.4, 0.5]),
                         prompts=["a"] * 4, completions=["b"] * 4, stats={"tokens_per_s": 1.0})
    m = rollout_metrics(batch)
    assert m["completions/wrong_fraction"] == pytest.approx(0.5)  # gold 0.0 and 0.4
    assert m["completions/mean_length_wrong"] == pytest.approx((3 + 4) / 2)
    assert m["completions/mean_length"] == pytest.approx(10 / 4)
    right = batch._replace(gold_scores=torch.ones(4))
    assert rollout_metrics(right)["completions/mean_length_wrong"] == 0.0
    assert "completions/mean_length_wrong" not in _agent().evaluate(2, seed=1)
