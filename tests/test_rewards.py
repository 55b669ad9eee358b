"""Reward models: score checking, adapters, ``resolve_reward_model``, loading, and reward-model training."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from textenv.models import ModelLoadError
from textenv.rewards import (
    REWARD_METADATA_FILE,
    CallableReward,
    CompositeReward,
    GoldReward,
    HFClassifierReward,
    LearnedRewardModel,
    RewardModel,
    RewardModelError,
    check_scores,
    load_reward_model,
    resolve_reward_model,
)
from textenv.tasks.base import Task
from textenv.training.reward import (
    bradley_terry_loss,
    build_default_reward_model,
    default_reward_rows,
    evaluate_reward_model,
    load_reward_rows,
    mse_loss,
    pairwise_accuracy,
    perturb_completion,
    rankdata,
    spearman,
    train_reward_model,
)

GOOD = ("good", "great", "fine")
BAD = ("bad", "awful", "dull")
TINY_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32}


class WordsTask(Task):
    """Tiny synthetic task: gold = share of "good" words in the completion (0.5 with none)."""

    name = "tiny-words"

    def generate_prompt(self, rng: np.random.Generator) -> str:
        return f"Review {int(rng.integers(0, 1000))}: the film was"

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float) -> str:
        n = int(rng.integers(2, 6))
        return (
            " " + " ".join(str(rng.choice(GOOD if rng.uniform() < quality else BAD)) for _ in range(n)) + "."
        )

    def gold_score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        out = []
        for c in completions:
            words = c.replace(".", "").split()
            good = sum(w in GOOD for w in words)
            bad = sum(w in BAD for w in words)
            out.append(0.5 if good + bad == 0 else good / (good + bad))
        return out


@pytest.fixture(scope="module")
def task() -> WordsTask:
    return WordsTask()


def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(len(c)) for c in completions]


class ConstantReward:
    name = "constant-two"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [2.0] * len(completions)


PROMPTS = ["Review 1: the film was", "Review 2: the film was", "Review 3: the film was"]
COMPLETIONS = [" good.", " bad awful dull.", " great fine good bad."]


# ---------------------------------------------------------------------------- check_scores
def test_check_scores_accepts_numbers_arrays_and_tensors() -> None:
    for scores in (
        [1, 2.5, np.float32(3.0)],
        (1.0, 2.5, 3.0),
        np.array([1.0, 2.5, 3.0]),
        torch.tensor([1.0, 2.5, 3.0]),
    ):
        out = check_scores(scores, 3, "rm")
        assert out.dtype == np.float64 and out.shape == (3,)
        np.testing.assert_allclose(out, [1.0, 2.5, 3.0])


@pytest.mark.parametrize(
    ("scores", "fragment"),
    [
        ([1.0, 2.0], "returned 2 scores for 3"),
        ([1.0, float("nan"), 2.0], "nan at index 1"),
        ([1.0, 2.0, float("inf")], "inf at index 2"),
        ([1.0, "high", 2.0], "'high' (str) at index 1"),
        ([None, 1.0, 2.0], "None (NoneType) at index 0"),
        (None, "returned a NoneType"),
        ("abc", "returned a str"),
        (np.zeros((3, 1)), "shape (3, 1)"),
    ],
)
def test_check_scores_errors_name_the_reward_model(scores: object, fragment: str) -> None:
    with pytest.raises(RewardModelError) as err:
        check_scores(scores, 3, "my-reward")
    assert "my-reward" in str(err.value) and fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_callable_reward_checks_what_comes_back() -> None:
    def broken(prompts: list[str], completions: list[str]) -> list[float]:
        return [float("nan")] * len(completions)

    rm = resolve_reward_model(broken)
    with pytest.raises(RewardModelError, match="broken"):
        rm(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardModelError, match="returned 1 scores for 3"):
        CallableReward(lambda p, c: [0.0], name="short")(PROMPTS, COMPLETIONS)


# ---------------------------------------------------------------------------- resolve: non-neural forms
def test_resolve_gold(task: WordsTask) -> None:
    rm = resolve_reward_model("gold", task)
    assert isinstance(rm, GoldReward) and rm.name == "gold:tiny-words"
    assert rm(PROMPTS, COMPLETIONS) == task.gold_score(PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="needs a task"):
        resolve_reward_model("gold", None)


def test_resolve_callable_and_object() -> None:
    fn = resolve_reward_model(length_reward)
    assert isinstance(fn, CallableReward) and fn.name == "length_reward"
    assert fn(PROMPTS, COMPLETIONS) == [6.0, 16.0, 21.0]
    obj = resolve_reward_model(ConstantReward())
    assert obj.name == "constant-two" and obj(PROMPTS, COMPLETIONS) == [2.0, 2.0, 2.0]
    assert isinstance(obj, RewardModel)
    assert resolve_reward_model(obj) is obj  # adapters pass through


def test_resolve_composite_is_exact_weighted_sum(task: WordsTask) -> None:
    rm = resolve_reward_model([(length_reward, 0.5), (ConstantReward(), -2.0), "gold"], task)
    assert isinstance(rm, CompositeReward)
    gold = task.gold_score(PROMPTS, COMPLETIONS)
    expected = [0.5 * len(c) - 4.0 + g for c, g in zip(COMPLETIONS, gold, strict=True)]
    assert rm(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-12)
    assert "length_reward" in rm.name and "constant-two" in rm.name
    nested = resolve_reward_model([([length_reward, length_reward], 0.25)])
    assert nested(PROMPTS, COMPLETIONS) == pytest.approx([0.5 * len(c) for c in COMPLETIONS])


def test_composite_error_names_the_component() -> None:
    def leaky(prompts: list[str], completions: list[str]) -> list[float]:
        return [1.0, float("inf"), 1.0]

    rm = CompositeReward([(CallableReward(length_reward), 1.0), (leaky, 1.0)])
    with pytest.raises(RewardModelError, match="leaky.*inf at index 1"):
        rm(PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="weight 0 must be a finite number"):
        CompositeReward([(length_reward, float("nan"))])


@pytest.mark.parametrize("spec", [42, {"path": "x"}, [], 3.5, b"gold"])
def test_resolve_unknown_spec(spec: object) -> None:
    with pytest.raises(ValueError, match=r"reward_model|empty"):
        resolve_reward_model(spec)


def test_resolve_missing_default_says_build_defaults(task: WordsTask) -> None:
    with pytest.raises(ModelLoadError, match="textenv build-defaults"):
        resolve_reward_model("default", task)


# ---------------------------------------------------------------------------- HF classifier directories
def _save_classifier(path: Path, tokenizer, num_labels: int, label2id: dict[str, int] | None = None) -> Path:
    from transformers import GPT2ForSequenceClassification

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(1)
    kwargs = {"label2id": label2id, "id2label": {v: k for k, v in label2id.items()}} if label2id else {}
    cfg = tiny_gpt2_config(
        len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=32, num_labels=num_labels, **kwargs
    )  # no pad_token_id on purpose: the adapter must set it
    GPT2ForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _unpadded_logits(rm: HFClassifierReward, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        rows = [rm.model(input_ids=torch.tensor([rm.tokenizer(t)["input_ids"]])).logits[0] for t in texts]
    return torch.stack(rows).numpy()


def test_hf_classifier_one_label_matches_unpadded_forward(tmp_path: Path, tiny_tokenizer) -> None:
    path = _save_classifier(tmp_path / "clf1", tiny_tokenizer, num_labels=1)
    rm = resolve_reward_model(str(path))
    assert isinstance(rm, HFClassifierReward) and not isinstance(rm, LearnedRewardModel)
    assert rm.model.config.pad_token_id == tiny_tokenizer.pad_token_id
    rm.batch_size = 2  # several padded batches of mixed lengths
    scores = rm(PROMPTS, COMPLETIONS)
    expected = _unpadded_logits(rm, [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])[:, 0]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert not rm.model.training


def test_hf_classifier_two_labels(tmp_path: Path, tiny_tokenizer) -> None:
    plain = _save_classifier(tmp_path / "clf2", tiny_tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="pass label="):
        HFClassifierReward(plain)
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    rm = HFClassifierReward(plain, label=1)
    np.testing.assert_allclose(
        rm(PROMPTS, COMPLETIONS), _unpadded_logits(rm, texts)[:, 1], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="out of range"):
        HFClassifierReward(plain, label=2)

    named = _save_classifier(
        tmp_path / "clf3", tiny_tokenizer, num_labels=2, label2id={"NEGATIVE": 0, "POSITIVE": 1}
    )
    auto = resolve_reward_model(named)  # picks "POSITIVE" by itself
    assert auto.label_index == 1
    assert HFClassifierReward(named, label="negative").label_index == 0
    with pytest.raises(ValueError, match="NEUTRAL"):
        HFClassifierReward(named, label="NEUTRAL")


def test_hf_classifier_model_object_needs_tokenizer(tiny_tokenizer) -> None:
    from transformers import GPT2ForSequenceClassification

    from textenv.models import tiny_gpt2_config

    model = GPT2ForSequenceClassification(
        tiny_gpt2_config(len(tiny_tokenizer), n_layer=1, n_embd=32, n_head=2, num_labels=1)
    )
    with pytest.raises(ValueError, match="tokenizer="):
        HFClassifierReward(model)
    rm = HFClassifierReward(model, tokenizer=tiny_tokenizer, name="in-memory")
    assert len(rm(PROMPTS, COMPLETIONS)) == 3 and rm.name == "in-memory"


def test_missing_and_corrupt_dirs_raise_model_load_error(tmp_path: Path, tiny_tokenizer) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match="nowhere"):
        resolve_reward_model(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="empty.*config.json"):
        resolve_reward_model(empty)

    bad_config = _save_classifier(tmp_path / "bad_config", tiny_tokenizer, num_labels=1)
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="bad_config"):
        resolve_reward_model(bad_config)

    bad_weights = _save_classifier(tmp_path / "bad_weights", tiny_tokenizer, num_labels=1)
    (bad_weights / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ModelLoadError, match="bad_weights"):
        resolve_reward_model(bad_weights)


def test_causal_lm_dir_is_refused(tmp_path: Path, tiny_lm, tiny_tokenizer) -> None:
    tiny_lm.save_pretrained(tmp_path / "lm")
    with pytest.raises(ModelLoadError, match="not a sequence-classification"):
        resolve_reward_model(tmp_path / "lm")


def test_directory_models_are_cached(tmp_path: Path, tiny_tokenizer) -> None:
    path = _save_classifier(tmp_path / "cached", tiny_tokenizer, num_labels=1)
    first = resolve_reward_model(str(path))
    assert resolve_reward_model(path) is first
    assert load_reward_model(str(path) + "/") is first
    assert resolve_reward_model([path])(PROMPTS, COMPLETIONS) == first(PROMPTS, COMPLETIONS)


# ---------------------------------------------------------------------------- pure losses and metrics
def test_mse_loss_known_answer() -> None:
    assert float(mse_loss(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 4.0, 0.5]))) == pytest.approx(
        5.0 / 3.0
    )


def test_bradley_terry_loss_known_answer() -> None:
    chosen, rejected = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.0, -1.0, 1.0])
    expected = (math.log(2.0) + math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 3.0
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected, rel=1e-6)


def test_spearman_with_ties_known_answer() -> None:
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): cov 4.5, variances 4.5 and 5 -> 4.5 / sqrt(22.5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert pairwise_accuracy([2.0, 1.0, 0.0, 5.0], [1.0, 2.0, 0.0, 4.0]) == pytest.approx(0.625)


# ---------------------------------------------------------------------------- data files and arguments
def test_load_reward_rows(tmp_path: Path) -> None:
    good = tmp_path / "rows.jsonl"
    good.write_text('{"text": "a b", "score": 0.5}\n\n{"prompt": "p", "completion": "c", "score": 1}\n')
    assert len(load_reward_rows(good, "mse")) == 2
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "score": 0.5}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_reward_rows(bad_json, "mse")
    bad_row = tmp_path / "pairs.jsonl"
    bad_row.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2.*'rejected'"):
        load_reward_rows(bad_row, "bt")
    nan_score = tmp_path / "nan.jsonl"
    nan_score.write_text('{"text": "a", "score": NaN}\n')
    with pytest.raises(ValueError, match=r"nan\.jsonl:1.*'score' must be a finite number"):
        load_reward_rows(nan_score, "mse")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"loss": "hinge"}, "'hinge'"),
        ({"steps": 0}, "got 0"),
        ({"lr": 0.0}, "got 0.0"),
        ({"lr": -1e-3}, "-0.001"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_train_reward_model_validates_arguments(
    tmp_path: Path, tiny_tokenizer, kwargs: dict, fragment: str
) -> None:
    rows = [{"text": "a", "score": 0.0}]
    with pytest.raises(ValueError, match=fragment):
        train_reward_model(rows, tmp_path / "rm", tokenizer=tiny_tokenizer, progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"rows\[0\].*'score'"):
        train_reward_model([{"text": "a"}], tmp_path / "rm", tokenizer=tiny_tokenizer, progress=False)


def test_refuses_to_replace_a_non_model_directory(tmp_path: Path, tiny_tokenizer) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        train_reward_model(
            [{"text": "a", "score": 0.0}],
            tmp_path / "notes",
            tokenizer=tiny_tokenizer,
            steps=1,
            progress=False,
        )
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def mse_run(task: WordsTask, tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rm") / "mse"
    rows = task.scored_texts(512, seed=0)
    eval_rows = task.scored_texts(200, seed=1, split="test")
    metrics = train_reward_model(
        rows,
        out,
        loss="mse",
        tokenizer=tiny_tokenizer,
        steps=150,
        batch_size=32,
        lr=3e-3,
        eval_rows=eval_rows,
        model_kwargs=TINY_MODEL,
        progress=False,
        task=task,
    )
    return out, metrics


def test_mse_training_beats_a_constant_predictor(mse_run: tuple[Path, dict], task: WordsTask) -> None:
    _, metrics = mse_run
    eval_scores = np.array([r["score"] for r in task.scored_texts(200, seed=1, split="test")])
    assert metrics["eval/spearman"] > 0.7
    assert metrics["eval/mse"] < 0.5 * eval_scores.var()  # the best constant predictor's MSE is the variance
    assert metrics["gold/spearman"] > 0.7 and metrics["gold/pairwise_accuracy"] > 0.75


def test_trained_directory_resolves_to_learned_reward_model(
    mse_run: tuple[Path, dict], task: WordsTask
) -> None:
    out, metrics = mse_run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert {"config.json", "model.safetensors", "tokenizer.json", REWARD_METADATA_FILE} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".mse")]  # no temp dirs left behind
    rm = resolve_reward_model(str(out), task)
    assert isinstance(rm, LearnedRewardModel)
    assert rm.metadata["loss"] == "mse" and rm.metadata["task"] == "tiny-words"
    assert rm.metadata["input_format"] == "prompt+completion"
    assert rm.metadata["metrics"]["eval/spearman"] == pytest.approx(metrics["eval/spearman"])
    again = evaluate_reward_model(rm, task, n=512, seed=0)
    assert again["spearman"] == pytest.approx(metrics["gold/spearman"], abs=1e-6)
    good, bad = rm(["Review 5: the film was"] * 2, [" great good fine.", " awful bad dull."])
    assert good > bad


def test_bt_training_beats_chance_and_replaces_atomically(
    tmp_path: Path, task: WordsTask, tiny_tokenizer
) -> None:
    out = tmp_path / "bt"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous (broken) model gets replaced whole
    rows = task.preference_pairs(512, seed=0)
    eval_rows = task.preference_pairs(200, seed=1, split="test")
    metrics = train_reward_model(
        rows,
        out,
        loss="bt",
        tokenizer=tiny_tokenizer,
        steps=120,
        batch_size=16,
        lr=3e-3,
        eval_rows=eval_rows,
        model_kwargs=TINY_MODEL,
        progress=False,
        task="tiny-words",
    )
    assert metrics["eval/pairwise_accuracy"] > 0.75
    meta = json.loads((out / REWARD_METADATA_FILE).read_text())
    assert meta["loss"] == "bt" and meta["task"] == "tiny-words"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bt"]


def test_evaluate_gold_is_perfect(task: WordsTask) -> None:
    result = evaluate_reward_model("gold", task, n=64, seed=3)
    assert result == {"spearman": pytest.approx(1.0), "pairwise_accuracy": 1.0}


def test_build_default_and_resolve_default(
    tmp_path: Path, task: WordsTask, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import textenv.rewards.resolve as resolve_module

    metrics = build_default_reward_model(
        task, tmp_path / task.name, tokenizer=tiny_tokenizer, steps=2, n_train=64, progress=False
    )
    assert {"train/loss", "eval/spearman", "gold/spearman"} <= set(metrics)
    monkeypatch.setattr(resolve_module, "REWARD_DIR", tmp_path)
    rm = resolve_reward_model("default", task)
    assert isinstance(rm, LearnedRewardModel) and rm.metadata["steps"] == 2
    assert len(rm(PROMPTS, COMPLETIONS)) == 3


def test_default_rows_perturbations_are_rescored_by_gold(task: WordsTask) -> None:
    rng = np.random.default_rng(0)
    assert perturb_completion(" good bad.", rng, "prefix") in ("", " good")
    assert sorted(perturb_completion(" good bad fine", rng, "shuffle").split()) == ["bad", "fine", "good"]
    repeated = perturb_completion(" good bad", rng, "repeat")
    assert repeated.startswith(" ") and len(repeated.split()) >= 4
    with pytest.raises(ValueError, match="'swap'"):
        perturb_completion(" good", rng, "swap")
    rows = default_reward_rows(task, 200, seed=0, perturb={"prefix": 0.3, "repeat": 0.3})
    plain = task.scored_texts(200, seed=0)
    changed = sum(r["completion"] != p["completion"] for r, p in zip(rows, plain, strict=True))
    assert 60 < changed < 150
    gold = task.gold_score([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [r["score"] for r in rows] == gold
