"""SB3 runs (issue 10 B11, B16, C20): saved and loaded without pickle (an old or planted ``sb3_model.zip`` is
never opened), bitwise-equal resume and split ``learn`` on CPU, and damaged or edited checkpoints refused with
the file named and the run directory left as it was."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.sb3_agent import POLICY_FILE, STATE_FILE, SB3Agent

TIME_KEYS = ("time_s", "tokens_per_s")


@pytest.fixture
def lm_dir(tmp_path, tiny_lm, tiny_tokenizer):
    d = tmp_path / "lm"
    tiny_lm.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def make(lm_dir, algo="ppo", env_kwargs=None, **kw):
    sets = {"n_steps": 3, "learning_rate": 1e-3} | ({"batch_size": 6, "n_epochs": 2} if algo == "ppo" else {})
    return SB3Agent(algo, "TextGen-Arithmetic-v0", str(lm_dir), seed=3, device="cpu", n_envs=2,
                    env_kwargs=env_kwargs or {"reward_model": "gold", "max_new_tokens": 2}, **(sets | kw))


def weights(agent: SB3Agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.model.policy.state_dict().items()}


def same_weights(a: SB3Agent, b: SB3Agent) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def history(agent: SB3Agent) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in agent.history]


def snapshot_dir(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- B11: no pickle
def test_save_writes_no_pickle_and_load_round_trips(lm_dir, tmp_path):
    agent = make(lm_dir).learn(4, progress=False)
    agent.save(tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"agent.json", POLICY_FILE, STATE_FILE}
    meta = json.loads((tmp_path / "run" / "agent.json").read_text())
    assert meta["format"] == 2 and meta["n_envs"] == 2 and meta["kwargs"]["n_steps"] == 3
    # the state file holds only plain tensors and dicts: weights_only loading accepts it
    torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    loaded = SB3Agent.load(tmp_path / "run")
    assert same_weights(agent, loaded) and loaded.model.n_envs == 2
    assert loaded.model.policy.action_net is loaded.model.policy.lm.get_output_embeddings()  # ties kept
    assert loaded.evaluate(4, seed=1) == agent.evaluate(4, seed=1)


class _Payload:
    """Unpickling this creates the marker file: what a tampered SB3 zip does through ``os.system``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant_zip(path: Path, marker: Path) -> None:
    """An SB3-style zip whose ``data`` holds a ``:serialized:`` pickle that creates ``marker`` if loaded."""
    import base64

    blob = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()
    data = {"policy_kwargs": {":type:": "<class 'dict'>", ":serialized:": blob}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("_stable_baselines3_version", "2.9.2")


def test_an_old_zip_run_is_refused_without_opening_the_zip(lm_dir, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    marker = tmp_path / "pwned"
    _plant_zip(run / "sb3_model.zip", marker)
    # an agent.json as the old textenv wrote it (no format, no safetensors)
    (run / "agent.json").write_text(json.dumps({
        "agent": "sb3-ppo", "env_id": "TextGen-Arithmetic-v0", "policy_source": str(lm_dir), "seed": 0,
        "env_kwargs": {}, "unsaved_env_kwargs": [], "reward_model": "gold", "kwargs": {}, "episodes": 0,
        "history": []}))
    before = snapshot_dir(run)
    with pytest.raises(ValueError, match="sb3_model.zip") as exc:
        SB3Agent.load(run)
    assert "unpickles" in str(exc.value) and str(run) in str(exc.value)
    assert not marker.exists() and snapshot_dir(run) == before
    # the payload is real: unpickling the blob would have created the file
    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()


def test_a_zip_planted_in_a_new_run_is_never_opened(lm_dir, tmp_path, monkeypatch):
    agent = make(lm_dir)
    agent.save(tmp_path / "run")
    marker = tmp_path / "pwned"
    _plant_zip(tmp_path / "run" / "sb3_model.zip", marker)
    opened: list[str] = []
    real = zipfile.ZipFile.__init__

    def spy(self, file, *a, **k):
        opened.append(str(file))
        real(self, file, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", spy)
    SB3Agent.load(tmp_path / "run")
    assert not marker.exists() and not [f for f in opened if f.endswith("sb3_model.zip")]


def test_the_cli_evaluate_refuses_an_old_zip_run(lm_dir, tmp_path, capsys):
    from agents.cli import main

    run = tmp_path / "old"
    run.mkdir()
    marker = tmp_path / "pwned"
    _plant_zip(run / "sb3_model.zip", marker)
    (run / "agent.json").write_text(json.dumps({"agent": "sb3-ppo", "config": {}, "policy_source": str(lm_dir),
                                                "seed": 0, "kwargs": {}, "episodes": 0, "history": []}))
    before = snapshot_dir(run)
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "sb3_model.zip" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and snapshot_dir(run) == before


# ---------------------------------------------------------------------------------------------- damaged / edited
def _edit_meta(run: Path, **changes):
    meta = json.loads((run / "agent.json").read_text())
    meta.update(changes)
    (run / "agent.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change, named", [
    ({"format": 3}, "format"),
    ({"agent": "ppo"}, "'ppo'"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"n_envs": 0}, "n_envs"),
    ({"episodes": -4}, "episodes"),
    ({"goal": 10 ** 9}, "goal"),
    ({"history": "x"}, "history"),
    ({"kwargs": {"learning_rate": "fast"}}, "learning_rate"),
    ({"kwargs": {"n_steps": -3}}, "n_steps"),
    ({"kwargs": {"not_an_sb3_arg": 1}}, "not_an_sb3_arg"),
    ({"kwargs": [1]}, "kwargs"),
    ({"sb3": None}, "sb3"),
    ({"files": {}}, "files"),
])
def test_an_edited_agent_json_is_refused_naming_the_file(lm_dir, tmp_path, change, named):
    make(lm_dir).learn(2, progress=False).save(tmp_path / "run")
    _edit_meta(tmp_path / "run", **change)
    before = snapshot_dir(tmp_path / "run")
    with pytest.raises(ValueError) as exc:
        SB3Agent.load(tmp_path / "run")
    msg = str(exc.value)
    assert "agent.json" in msg and named in msg, msg
    assert snapshot_dir(tmp_path / "run") == before


@pytest.mark.parametrize("name", [POLICY_FILE, STATE_FILE])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_binary_file_is_refused_naming_it(lm_dir, tmp_path, name, damage):
    make(lm_dir).learn(2, progress=False).save(tmp_path / "run")
    f = tmp_path / "run" / name
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 3]))
    else:
        f.unlink()
    before = snapshot_dir(tmp_path / "run")
    with pytest.raises(ValueError, match=name) as exc:
        SB3Agent.load(tmp_path / "run")
    assert str(f) in str(exc.value)
    assert snapshot_dir(tmp_path / "run") == before


def test_a_mismatched_state_is_refused_even_with_fixed_hashes(lm_dir, tmp_path):
    """A state file replaced by one of another shape (and the hash updated to match) is still an error
    naming the file, not a traceback."""
    run = tmp_path / "run"
    make(lm_dir).learn(2, progress=False).save(run)
    torch.save({"optimizer": {"state": {}, "param_groups": []}}, run / STATE_FILE)
    meta = json.loads((run / "agent.json").read_text())
    meta["files"][STATE_FILE] = hashlib.sha256((run / STATE_FILE).read_bytes()).hexdigest()
    (run / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=STATE_FILE):
        SB3Agent.load(run)


def test_save_refuses_arguments_it_cannot_record_before_writing(lm_dir, tmp_path):
    agent = make(lm_dir)
    agent.kwargs["learning_rate"] = lambda progress: 1e-3  # a schedule: not JSON
    with pytest.raises(ValueError, match="learning_rate"):
        agent.save(tmp_path / "run")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------------------------------------- B16: bitwise
THREE = {"reward_model": "gold", "max_new_tokens": 3}
DENSE = THREE | {"reward_mode": "dense"}


@pytest.mark.parametrize("algo, env_kwargs", [("ppo", THREE), ("a2c", THREE), ("ppo", DENSE)])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(lm_dir, tmp_path, algo, env_kwargs):
    # 4 steps per env per rollout, 3-token episodes: after 4 episodes every env is 2 tokens into one
    sets = {"n_steps": 4} | ({"batch_size": 8} if algo == "ppo" else {})
    whole = make(lm_dir, algo, env_kwargs, **sets).learn(12, progress=False)
    half = make(lm_dir, algo, env_kwargs, **sets).learn(4, progress=False)
    half.save(tmp_path / "half")
    saved_envs = json.loads((tmp_path / "half" / "agent.json").read_text())["sb3"]["envs"]
    assert any(e["completion_ids"] for e in saved_envs)  # saved mid-episode: the replay is exercised
    torch.manual_seed(123)
    np.random.seed(123)  # whatever ran in between, load restores the RNG states
    resumed = SB3Agent.load(tmp_path / "half").learn(8, progress=False)
    assert resumed.episodes == whole.episodes and resumed.model.num_timesteps == whole.model.num_timesteps
    assert history(resumed) == history(whole)
    assert same_weights(resumed, whole)
    assert resumed.model.policy.optimizer.state_dict()["state"].keys() == \
        whole.model.policy.optimizer.state_dict()["state"].keys()
    # the envs' running episodes were rebuilt too: the next rollout's observation is the same
    for k in whole.model._last_obs:
        np.testing.assert_array_equal(resumed.model._last_obs[k], whole.model._last_obs[k])


@pytest.mark.parametrize("parts", [(1, 1, 1, 1), (5, 8)])
def test_split_learn_equals_one_learn(lm_dir, parts):
    whole = make(lm_dir).learn(sum(parts), progress=False)
    split = make(lm_dir)
    for n in parts:
        split.learn(n, progress=False)
    assert split.episodes == whole.episodes and history(split) == history(whole) and same_weights(split, whole)


def test_a_checkpoint_written_during_learn_resumes_bitwise(lm_dir, tmp_path):
    """As ``textenv train`` checkpoints from the callback and ``--resume`` calls ``learn(N - episodes)``."""
    whole = make(lm_dir).learn(12, progress=False)
    saved: list[int] = []

    def cb(agent, m):
        if not saved:
            agent.save(tmp_path / "mid")
            saved.append(agent.episodes)

    make(lm_dir).learn(12, progress=False, callback=cb)
    resumed = SB3Agent.load(tmp_path / "mid")
    resumed.learn(12 - resumed.episodes, progress=False)
    assert history(resumed) == history(whole) and same_weights(resumed, whole)


def test_the_cli_resume_is_bitwise_equal(lm_dir, tmp_path):
    from agents.cli import main

    args = ["train", "--agent", "sb3-ppo", "--env", "TextGen-Arithmetic-v0", "--policy", str(lm_dir),
            "--reward-model", "gold", "--seed", "1", "--eval-episodes", "2", "--n-envs", "2", "--n-steps", "2",
            "--batch-size", "4", "--n-epochs", "1", "--no-progress"]
    assert main([*args, "--episodes", "16", "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--episodes", "6", "--out", str(tmp_path / "part")]) == 0
    assert main([*args, "--episodes", "16", "--out", str(tmp_path / "part"), "--resume"]) == 0
    from agents.run import load_any

    a, b = load_any(tmp_path / "whole"), load_any(tmp_path / "part")
    assert isinstance(a, SB3Agent) and isinstance(b, SB3Agent)
    assert a.episodes == b.episodes and history(a) == history(b) and same_weights(a, b)



# ---------------------------------------------------------------------------------------------- C20: episodes
def test_learn_episodes_is_a_lower_bound_and_the_excess_counts_toward_the_next_call(lm_dir):
    agent = make(lm_dir)
    per_rollout = agent.model.n_steps * agent.model.n_envs  # at most this many episodes end in one rollout
    agent.learn(1, progress=False)
    first, steps = agent.episodes, agent.model.num_timesteps
    assert 1 <= first < 1 + per_rollout and agent.requested_episodes == 1
    assert first >= 2  # this setting finishes several episodes per rollout: the excess is real
    agent.learn(first - 1, progress=False)  # covered by the first call's excess: no rollout runs
    assert agent.model.num_timesteps == steps and agent.episodes == first == agent.requested_episodes
    agent.learn(1, progress=False)
    assert agent.episodes > first and agent.requested_episodes == first + 1
    stopped = make(lm_dir)
    stopped.learn(100, progress=False, callback=lambda ag, m: False)  # stopped early: counts from its episodes
    assert stopped.requested_episodes == stopped.episodes < 100


def test_evaluate_runs_through_the_shared_evaluation_with_the_requested_count(lm_dir, monkeypatch):
    """SB3Agent.evaluate has no episode loop of its own: the count goes to agents.rollout.evaluate_policy."""
    import agents.sb3_agent as mod

    seen: list[int] = []
    real = mod.evaluate_policy

    def spy(policy, envs, num_episodes, **kw):
        seen.append(num_episodes)
        return real(policy, envs, num_episodes, **kw)

    monkeypatch.setattr(mod, "evaluate_policy", spy)
    agent = make(lm_dir)
    assert agent.evaluate(3, seed=5) == agent.evaluate(3, seed=5) and seen == [3, 3]
    with pytest.raises(ValueError, match="num_episodes"):
        agent.evaluate(0)


# ---------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize("kw, shown", [
    ({"n_steps": 0}, "n_steps must be an integer >= 1, got 0"),
    ({"n_steps": 1, "n_envs": 1}, "n_steps=1, n_envs=1"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number >= 0, got inf"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number >= 0, got nan"),
    ({"max_grad_norm": float("inf")}, "max_grad_norm must be a finite number >= 0, got inf"),
    ({"batch_size": 1.5}, "batch_size must be an integer >= 1, got 1.5"),
    ({"gamma": 2.0}, "gamma must be in [0, 1], got 2.0"),
    ({"foo": 1}, "does not take ['foo']"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
])
def test_bad_sb3_arguments_are_refused_before_sb3_sees_them(lm_dir, kw, shown):
    args = {"seed": 3, "n_envs": 2} | {k: kw.pop(k) for k in ("seed", "n_envs") if k in kw}
    with pytest.raises(ValueError) as exc:
        SB3Agent("ppo", "TextGen-Arithmetic-v0", str(lm_dir), device="cpu", **args, **kw)
    assert shown in str(exc.value), str(exc.value)


def test_a2c_refuses_ppo_arguments(lm_dir):
    with pytest.raises(ValueError, match="batch_size"):
        SB3Agent("a2c", "TextGen-Arithmetic-v0", str(lm_dir), device="cpu", n_envs=2, batch_size=8)


def test_load_with_envs_unlike_the_saved_ones_names_the_state_file(lm_dir, tmp_path):
    make(lm_dir).learn(2, progress=False).save(tmp_path / "run")
    before = snapshot_dir(tmp_path / "run")
    with pytest.raises(ValueError, match=STATE_FILE) as exc:
        SB3Agent.load(tmp_path / "run", env_kwargs={"reward_model": "gold", "max_new_tokens": 3})
    assert "not built as when saved" in str(exc.value)
    assert snapshot_dir(tmp_path / "run") == before
    assert SB3Agent.load(tmp_path / "run").learn(1, progress=False).episodes >= 2  # still usable


def test_a_tiny_policy_run_gets_its_kl_reference_back(tmp_path):
    """"tiny" is random: the reference is rebuilt from the recorded seed (SB3 seeds before building the
    policy), so the loaded run's KL is the saved one's."""
    agent = SB3Agent("ppo", "TextGen-Arithmetic-v0", "tiny", seed=3, device="cpu", n_envs=2, n_steps=3,
                     batch_size=6, n_epochs=1, learning_rate=1e-2,
                     env_kwargs={"reward_model": "gold", "max_new_tokens": 2}).learn(2, progress=False)
    agent.save(tmp_path / "run")
    want = agent.evaluate(4, seed=1)
    assert want["kl"] > 0 and SB3Agent.load(tmp_path / "run").evaluate(4, seed=1) == want
