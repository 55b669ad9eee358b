"""`textenv build-defaults --jobs N`: the policy and the reward models built in worker processes, to the bytes
of the serial build; a failed job installs nothing; bad counts refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from textenv.training.defaults import BuildJobError, build_defaults, build_reward_models, check_jobs, run_jobs

SCALE = 0.005
TASKS = ("sentiment", "keywords")
#: The fields whose values depend on the machine's speed (and, through their length, MANIFEST's byte counts).
TIMING_KEYS = {"metrics.json": ("tokens_per_s",), "textenv_reward.json": ("time_s",)}
MANIFEST_UNCOMPARED = ("artifacts", "total_bytes", "build_seconds", "jobs")


def _quiet(*_: Any) -> None:
    pass


def _digest(out: Path) -> dict[str, Any]:
    """Each file under ``out``: its SHA-256, or for the JSON files with timing fields, the JSON without them."""
    digest: dict[str, Any] = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = str(f.relative_to(out))
        if rel == "MANIFEST.json":
            digest[rel] = {k: v for k, v in json.loads(f.read_text()).items() if k not in MANIFEST_UNCOMPARED}
        elif f.name in TIMING_KEYS:
            obj = json.loads(f.read_text())
            metrics = obj.get("metrics", obj)  # textenv_reward.json nests them
            for k in TIMING_KEYS[f.name]:
                assert k in metrics, (rel, k)
                del metrics[k]
            digest[rel] = obj
        else:
            digest[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digest


def _files(d: Path) -> dict[str, str]:
    return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.rglob("*"))
            if f.is_file()}


@pytest.mark.slow
def test_jobs_2_builds_the_bytes_of_jobs_1(tmp_path: Path) -> None:
    serial = build_defaults(tmp_path / "j1", scale=SCALE, progress=False, log=_quiet, tasks=TASKS, jobs=1)
    lines: list[str] = []
    pooled = build_defaults(tmp_path / "j2", scale=SCALE, progress=False, log=lines.append, tasks=TASKS, jobs=2)
    assert (serial["jobs"], pooled["jobs"]) == (1, 2)
    assert serial["quality"] == pooled["quality"]
    a, b = _digest(tmp_path / "j1"), _digest(tmp_path / "j2")
    assert sorted(a) == sorted(b)
    assert "rewards/keywords/model.safetensors" in a and "policy/model.safetensors" in a
    for rel in a:
        assert a[rel] == b[rel], rel
    # every job's log line, once (in the order they completed)
    assert sorted(ln.split(":")[0] for ln in lines if "policy:" in ln or "reward model" in ln) == [
        "[build-defaults] policy", "[build-defaults] reward model keywords", "[build-defaults] reward model sentiment"]


def _broken_task_class() -> type:
    """Sentiment, except that its scored texts (the reward model's training rows) cannot be drawn."""
    from textenv.tasks import get_task

    base = type(get_task("sentiment"))

    class BrokenScoresTask(base):  # type: ignore[misc, valid-type]
        name = "broken"

        def scored_texts(self, n: int, seed: int = 0, split: str = "train") -> list[dict[str, object]]:
            raise RuntimeError("no scored texts for the broken task")

    return BrokenScoresTask


def _old_build(out: Path) -> None:
    """Stand-ins for a previous build's policy and reward models (bytes a rebuild would not write)."""
    for sub in ("policy", "rewards/sentiment", "rewards/keywords"):
        (out / sub).mkdir(parents=True)
        (out / sub / "old.bin").write_bytes(f"old {sub}".encode())
    (out / "MANIFEST.json").write_text('{"old": true}')


def test_a_failed_reward_job_installs_neither_policy_nor_rewards(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs=1: the policy and the sentiment reward model are built, then the broken task's reward job fails."""
    from textenv.tasks import TASKS as REGISTRY

    monkeypatch.setitem(REGISTRY, "broken", _broken_task_class())
    _old_build(tmp_path)
    before = {sub: _files(tmp_path / sub) for sub in ("policy", "rewards")}
    lines: list[str] = []
    with pytest.raises(BuildJobError, match=r"^reward model 'broken' failed: RuntimeError: no scored texts") as exc:
        build_defaults(tmp_path, scale=SCALE, progress=False, log=lines.append, tasks=("sentiment", "broken"))
    assert isinstance(exc.value.__cause__, RuntimeError)
    assert any("reward model sentiment:" in ln for ln in lines)  # it was built, and then not installed
    assert {sub: _files(tmp_path / sub) for sub in ("policy", "rewards")} == before
    assert (tmp_path / "MANIFEST.json").read_text() == '{"old": true}'


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_job_of_rewards_only_installs_none(tmp_path: Path, jobs: int) -> None:
    """The arithmetic reward model starts from the pretrained LM, which is missing here: its job fails (in a
    worker process with jobs=2) while sentiment's succeeds, and neither is installed."""
    from textenv.tasks import get_task
    from textenv.training.tokenizer import train_tokenizer

    train_tokenizer(get_task("sentiment").pretrain_corpus(200, seed=1), vocab_size=512).save_pretrained(
        str(tmp_path / "tokenizer"))
    (tmp_path / "pretrained").mkdir()  # no config.json
    _old_build(tmp_path)
    before = _files(tmp_path / "rewards")
    with pytest.raises(BuildJobError, match=r"^reward model 'arithmetic' failed: ModelLoadError: base model "
                                            r"directory .*pretrained.* has no config.json") as exc:
        build_reward_models(["sentiment", "arithmetic"], tmp_path, scale=SCALE, progress=False, log=_quiet,
                            jobs=jobs)
    assert type(exc.value.__cause__).__name__ == "ModelLoadError"
    assert _files(tmp_path / "rewards") == before
    assert (tmp_path / "MANIFEST.json").read_text() == '{"old": true}'


def _twice(x: int) -> int:
    return 2 * x


def _fail(message: str) -> int:
    raise KeyError(message)


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_jobs_returns_in_order_and_names_the_failed_job(jobs: int) -> None:
    done: list[tuple[str, int]] = []
    assert run_jobs([("a", _twice, (1,)), ("b", _twice, (2,)), ("c", _twice, (3,))], jobs,
                    lambda name, r: done.append((name, r))) == [2, 4, 6]
    assert sorted(done) == [("a", 2), ("b", 4), ("c", 6)]
    with pytest.raises(BuildJobError, match=r"^reward model 'qa' failed: KeyError: 'no qa'$") as exc:
        run_jobs([("reward model 'qa'", _fail, ("no qa",))], jobs)
    assert isinstance(exc.value.__cause__, KeyError) and isinstance(exc.value, RuntimeError)


def test_run_jobs_1_stops_at_the_failed_job() -> None:
    ran: list[str] = []
    with pytest.raises(BuildJobError, match="^b failed"):
        run_jobs([("a", ran.append, ("a",)), ("b", _fail, ("x",)), ("c", ran.append, ("c",))], 1)
    assert ran == ["a"]


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2", None])
def test_bad_jobs_are_refused(tmp_path: Path, jobs: Any) -> None:
    with pytest.raises(ValueError, match=f"jobs must be an int >= 1, got {jobs!r}"):
        check_jobs(jobs)
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        build_defaults(tmp_path / "out", scale=SCALE, progress=False, log=_quiet, tasks=TASKS, jobs=jobs)
    assert not (tmp_path / "out").exists()  # refused before anything is built
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        build_reward_models(["sentiment"], tmp_path, scale=SCALE, progress=False, log=_quiet, jobs=jobs)
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        run_jobs([("a", _twice, (1,))], jobs)


def test_cli_refuses_jobs_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from textenv.cli import main

    assert main(["build-defaults", "--out", str(tmp_path / "out"), "--jobs", "0"]) == 2
    assert "textenv build-defaults: error: --jobs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_load_trained_tokenizer_is_the_trained_one(tmp_path: Path) -> None:
    """What the workers of a full build get: the same encoding, and the same bytes when saved again
    (AutoTokenizer's copy would add ``is_local`` to tokenizer_config.json)."""
    from textenv.tasks import get_task
    from textenv.training.tokenizer import load_trained_tokenizer, train_tokenizer

    texts = get_task("sentiment").pretrain_corpus(200, seed=1)
    tok = train_tokenizer(texts, vocab_size=512)
    tok.save_pretrained(str(tmp_path / "a"))
    again = load_trained_tokenizer(tmp_path / "a")
    again.save_pretrained(str(tmp_path / "b"))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert again(texts[:20])["input_ids"] == tok(texts[:20])["input_ids"]
    assert again.name_or_path == tok.name_or_path == ""
    with pytest.raises(FileNotFoundError, match="no tokenizer.json in"):
        load_trained_tokenizer(tmp_path / "missing")
