"""textenv.io: atomic directory and file writes, stale temporaries, checkpoint listing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from textenv.io import (
    atomic_dir,
    atomic_file,
    checkpoint_name,
    list_checkpoints,
    previous_dir,
    prune_checkpoints,
    read_json,
    remove_stale_temporaries,
    write_json,
    write_text,
)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no debris
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_atomic_dir_refuses_a_file(tmp_path):
    f = tmp_path / "x"
    f.write_text("user data")
    with pytest.raises(ValueError, match="not a directory"), atomic_dir(f):
        pass
    assert f.read_text() == "user data"


def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".run.tmp-{dead_pid}-0123abcd"
    stale.mkdir()
    live = tmp_path / f".run.tmp-{os.getpid()}-4567abcd"  # a writer still running (this process)
    live.mkdir()
    user = tmp_path / ".tmp-mine"  # a user's file that merely looks temporary
    user.write_text("keep")
    other = tmp_path / f".other.tmp-{dead_pid}-0123abcd"  # another target's temporary
    other.mkdir()
    removed = remove_stale_temporaries(target)
    assert removed == [stale]
    assert live.exists() and user.exists() and other.exists()


def test_previous_dir_recovers_a_kill_between_renames(tmp_path):
    target = tmp_path / "ckpt"
    old = tmp_path / f".ckpt.old-{os.getpid()}-89abcdef"
    old.mkdir()
    (old / "agent.json").write_text("{}")
    assert previous_dir(target) == old
    with atomic_dir(target) as tmp:
        (tmp / "agent.json").write_text("{}")
    assert previous_dir(target) == target
    assert not old.exists()  # superseded once the new version is in place


def test_atomic_file_and_json(tmp_path):
    p = tmp_path / "m.csv"
    write_text(p, "a,b\n")
    with pytest.raises(KeyError), atomic_file(p) as f:
        f.write("half")
        raise KeyError("boom")
    assert p.read_text() == "a,b\n"
    write_json(tmp_path / "s.json", {"x": [1, 2]})
    assert read_json(tmp_path / "s.json") == {"x": [1, 2]}
    with pytest.raises(ValueError):
        write_json(tmp_path / "s.json", {"x": float("nan")})
    assert read_json(tmp_path / "s.json") == {"x": [1, 2]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "m.csv", "s.json"]


def test_list_and_prune_checkpoints(tmp_path):
    for step in (3, 10, 200):
        d = tmp_path / checkpoint_name(step)
        d.mkdir()
        (d / "state.json").write_text("{}")
    (tmp_path / "checkpoint-000001").mkdir()  # incomplete: no marker
    (tmp_path / "checkpoint-xyz").mkdir()
    names = [p.name for p in list_checkpoints(tmp_path, "state.json")]
    assert names == ["checkpoint-00000003", "checkpoint-00000010", "checkpoint-00000200"]
    prune_checkpoints(tmp_path, "state.json", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path, "state.json")] == names[1:]
    assert (tmp_path / "checkpoint-000001").exists()  # not ours to delete
