"""Reward plug-ins the ecosystem uses (issue 10, items A1-A3): TRL-style reward functions, transformers models
and pipelines as ``reward_model=``, and Hugging Face ids resolved through the local cache; each bad form is a
clear error naming the value, raised before anything is stepped, and leaves the env usable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers the envs)
from textenv.models import ModelLoadError, load_tokenizer, tiny_gpt2_config
from textenv.rewards import CallableReward, HFClassifierReward, resolve_reward_model
from textenv.rewards.adapters import calling_convention
from textenv.rewards.resolve import cached_hf_snapshot, hf_cache_dir
from textenv.rewards.spec import describe_reward_model
from textenv.tasks import get_task
from textenv.tasks.arithmetic import parse_problem
from textenv.vector import TextGenVectorEnv


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("default")


def _run_episode(env: Any, seed: int = 0) -> tuple[float, dict[str, Any]]:
    env.reset(seed=seed)
    digit = int(env.unwrapped.tokenizer.convert_tokens_to_ids("1"))
    while True:
        _, reward, terminated, _, info = env.step(digit)
        if terminated:
            return float(reward), info


# ---------------------------------------------------------------------------------------------- A1: TRL style
def test_trl_style_function_gets_prompts_ids_and_task_columns():
    calls: list[dict[str, Any]] = []

    def reward(completions, **kwargs):
        calls.append({"completions": completions, **kwargs})
        return [float(len(c)) for c in completions]

    env = gym.make("TextGen-v0", task="arithmetic", reward_model=reward)
    reward_value, info = _run_episode(env)
    call = calls[-1]
    assert set(call) == {"prompts", "completions", "completion_ids", "answer"}
    assert call["prompts"] == [info["prompt"]] and call["completions"] == [info["completion"]]
    assert call["completion_ids"] == [env.unwrapped.completion_ids().tolist()]
    assert call["answer"] == [str(parse_problem(info["prompt"]))]
    assert reward_value == float(len(info["completion"]))


def test_keyword_only_trl_function_in_the_vector_env_and_composite():
    seen: list[tuple[list[str], list[str]]] = []

    def kw_only(*, prompts, completions):
        seen.append((prompts, completions))
        return [1.0] * len(completions)

    envs = TextGenVectorEnv(num_envs=4, task="arithmetic", reward_model=[("gold", 1.0), (kw_only, 0.5)])
    envs.reset(seed=3)
    digit = int(envs.tokenizer.convert_tokens_to_ids("1"))
    for _ in range(envs.setup.max_new_tokens):
        _, rewards, terminated, _, info = envs.step(np.full(4, digit))
    assert terminated.all()
    prompts, completions = seen[-1]
    assert prompts == list(info["prompt"]) and completions == list(info["completion"])
    np.testing.assert_allclose(rewards, np.asarray(info["gold_score"]) + 0.5)


def test_names_not_positions_decide_for_trl_style():
    def swapped(completions, prompts):
        return [float(p == "P") for p in prompts]

    def with_answer(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    arithmetic = get_task("arithmetic")
    assert CallableReward(swapped)(["P"], ["C"]) == [1.0]
    rm = resolve_reward_model(with_answer, arithmetic)
    assert rm(["2+3=", "2+3="], ["5", "6"]) == [1.0, 0.0]


def test_our_positional_convention_stays():
    def ours(prompts, completions):
        return [float(len(p)) for p in prompts]

    class Scorer:
        def __call__(self, prompts, completions):
            return [2.0] * len(prompts)

    for fn in (ours, lambda p, c: [float(len(p[0]))], Scorer()):
        assert calling_convention(fn) == "positional"
        assert not CallableReward(fn).wants_extras
    assert CallableReward(ours)(["abc"], ["x"]) == [3.0]
    env = gym.make("TextGen-v0", task="arithmetic", reward_model=ours)
    reward_value, info = _run_episode(env)
    assert reward_value == float(len(info["prompt"]))


def _bad_x(x):
    return [0.0]


def _bad_three(prompts, completions, extra):
    return [0.0]


def _bad_unknown_column(*, completions, solution):
    return [0.0]


@pytest.mark.parametrize("fn, fragment", [
    (_bad_x, "_bad_x(x)"),
    (_bad_three, "_bad_three(prompts, completions, extra)"),
    (_bad_unknown_column, "_bad_unknown_column(*, completions, solution)"),
    (len, "len(obj, /)"),
])
def test_signature_that_fits_neither_is_refused_at_construction(fn, fragment):
    with pytest.raises(TypeError, match="fits neither calling convention") as err:
        gym.make("TextGen-v0", task="arithmetic", reward_model=fn)
    assert fragment in str(err.value) and "answer" in str(err.value)  # names the keywords on offer


async def _async_reward(prompts, completions):
    return [0.0] * len(prompts)


class _AsyncScorer:
    async def __call__(self, completions, **kwargs):
        return [0.0] * len(completions)


@pytest.mark.parametrize("fn, name", [(_async_reward, "_async_reward"), (_AsyncScorer(), "_AsyncScorer")])
def test_async_reward_functions_are_refused(fn, name):
    with pytest.raises(TypeError, match=f"reward function '{name}' is async"):
        TextGenVectorEnv(num_envs=2, task="arithmetic", reward_model=fn)


def test_awaitable_returned_at_call_time_is_an_error_and_the_env_is_unchanged():
    state = {"async": True}

    def sometimes(prompts, completions):
        if state["async"]:
            return _async_reward(prompts, completions)  # a coroutine object, not scores
        return [1.0] * len(prompts)

    env = gym.make("TextGen-v0", task="arithmetic", reward_model=sometimes, max_new_tokens=1)
    obs, _ = env.reset(seed=0)
    with pytest.raises(TypeError, match="sometimes' returned an awaitable"):
        env.step(5)
    assert env.unwrapped.completion_ids().size == 0  # the token was undone
    state["async"] = False
    _, reward_value, terminated, _, _ = env.step(5)
    assert terminated and reward_value == 1.0


def test_trl_function_needing_ids_called_without_them_names_the_keyword():
    def needs_ids(completions, completion_ids):
        return [float(len(i)) for i in completion_ids]

    rm = CallableReward(needs_ids)
    assert rm(["p"], ["c"], completion_ids=[[1, 2, 3]]) == [3.0]
    with pytest.raises(TypeError, match=r"needs_ids'.*completion_ids"):
        rm(["p"], ["c"])


def test_prompt_columns_of_the_tasks():
    assert get_task("arithmetic").prompt_columns(["23+58=", "hi"]) == {"answer": ["81", None]}
    assert get_task("keywords").prompt_columns(["Use: river, lamp, quiet ->"]) == {
        "keywords": [["river", "lamp", "quiet"]]}
    assert get_task("sentiment").prompt_columns(["Review: "]) == {}


# ---------------------------------------------------------------------------------------------- A2: HF objects
def _classifier(vocab: int, num_labels: int = 1, labels: dict[str, int] | None = None):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(0)
    kwargs = {"label2id": labels, "id2label": {v: k for k, v in labels.items()}} if labels else {}
    return GPT2ForSequenceClassification(tiny_gpt2_config(
        vocab, n_layer=1, n_embd=32, n_head=2, n_positions=64, num_labels=num_labels, **kwargs)).eval()


def _logits(model, tokenizer, texts: list[str], label: int) -> list[float]:
    with torch.inference_mode():
        return [float(model(input_ids=torch.tensor([tokenizer(t)["input_ids"]])).logits[0, label])
                for t in texts]


def test_pretrained_model_object_with_reward_tokenizer(tok):
    model = _classifier(len(tok))
    env = gym.make("TextGen-v0", task="arithmetic", reward_model=model, reward_tokenizer=tok)
    rm = env.unwrapped.reward_model
    assert isinstance(rm, HFClassifierReward) and rm.model is model
    reward_value, info = _run_episode(env)
    expected = _logits(model, tok, [info["prompt"] + info["completion"]], 0)[0]
    assert reward_value == pytest.approx(expected, abs=1e-5)
    assert describe_reward_model(rm)["kind"] == "object"
    assert describe_reward_model(model)["kind"] == "object"


def test_model_object_finds_its_tokenizer_in_its_directory(tmp_path, tok):
    from transformers import AutoModelForSequenceClassification

    _classifier(len(tok)).save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    rm = resolve_reward_model(model, get_task("arithmetic"))
    assert isinstance(rm, HFClassifierReward) and len(rm.tokenizer) == len(tok)


def test_model_object_without_a_tokenizer_says_what_is_missing(tok):
    model = _classifier(len(tok))
    with pytest.raises(ValueError, match="reward_tokenizer=") as err:
        gym.make("TextGen-v0", task="arithmetic", reward_model=model)
    assert "GPT2ForSequenceClassification" in str(err.value)
    # the env's own tokenizer=, chosen by the user, is used for the model too
    env = gym.make("TextGen-v0", task="arithmetic", reward_model=model, tokenizer=tok)
    assert env.unwrapped.reward_model.tokenizer is tok


def test_text_classification_pipeline(tok):
    from transformers import pipeline

    model = _classifier(len(tok), 2, {"NEGATIVE": 0, "POSITIVE": 1})
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    envs = TextGenVectorEnv(num_envs=2, task="arithmetic", reward_model=pipe)
    assert envs.reward_model.model is model and envs.reward_model.label_index == 1
    envs.reset(seed=0)
    for _ in range(envs.setup.max_new_tokens):
        _, rewards, _, _, info = envs.step(np.array([5, 6]))
    texts = [p + c for p, c in zip(info["prompt"], info["completion"], strict=True)]
    np.testing.assert_allclose(rewards, _logits(model, tok, texts, 1), atol=1e-5)
    assert describe_reward_model(pipe)["kind"] == "object"


def test_other_pipelines_and_models_are_refused(tok):
    from transformers import GPT2LMHeadModel, pipeline

    lm = GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(TypeError, match="GPT2LMHeadModel, not a sequence-classification model"):
        gym.make("TextGen-v0", reward_model=lm, reward_tokenizer=tok)
    with pytest.raises(TypeError, match="GPT2LMHeadModel, not a sequence-classification model"):
        HFClassifierReward(lm, tokenizer=tok)  # the adapter itself, not only the resolver
    pipe = pipeline("text-generation", model=lm, tokenizer=tok, device="cpu")
    with pytest.raises(TypeError, match="for task 'text-generation'"):
        gym.make("TextGen-v0", reward_model=pipe)


# ---------------------------------------------------------------------------------------------- A3: HF ids
def _fake_cache(root: Path, repo_id: str, tok) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    _classifier(len(tok)).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hf_id_resolves_through_the_local_cache(tmp_path, monkeypatch, tok, variable):
    hub = tmp_path / "hub"
    snapshot = _fake_cache(hub, "acme/tiny-rm", tok)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(hub if variable == "HF_HUB_CACHE" else tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf_cache_dir() == hub
    assert cached_hf_snapshot("acme/tiny-rm") == snapshot
    env = gym.make("TextGen-v0", task="arithmetic", reward_model="acme/tiny-rm")
    assert env.unwrapped.reward_model.path == snapshot.resolve()
    reward_value, info = _run_episode(env)
    expected = HFClassifierReward(snapshot)([info["prompt"]], [info["completion"]])[0]
    assert reward_value == pytest.approx(expected, abs=1e-6)


def test_uncached_hf_id_names_the_id_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelLoadError) as err:
        gym.make("TextGen-v0", reward_model="acme/not-here")
    message = str(err.value)
    assert "'acme/not-here'" in message and str(tmp_path / "empty-hub") in message
    assert "local Hugging Face cache" in message
    assert not (tmp_path / "empty-hub").exists()  # looking never creates the cache
    with pytest.raises(ModelLoadError, match="reward model path './nowhere' does not exist"):
        resolve_reward_model("./nowhere")


def test_cli_uncached_hf_id_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    from agents.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "run"
    assert main(["train", "--agent", "grpo", "--env", "TextGen-Arithmetic-v0", "--policy", "tiny",
                 "--reward-model", "acme/not-here", "--out", str(out), "--episodes", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'acme/not-here'" in err and str(tmp_path / "hub") in err
    assert not out.exists()


def test_cli_help_says_ids_come_from_the_cache(capsys):
    from agents.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "local Hugging Face cache" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------------- battery siblings
def test_tokenizer_larger_than_the_models_vocabulary_is_refused_naming_both_sizes(tok):
    small = _classifier(50)
    with pytest.raises(ValueError, match=f"has 50 token embeddings but its tokenizer has {len(tok)} tokens"):
        gym.make("TextGen-v0", reward_model=small, reward_tokenizer=tok)


@pytest.mark.parametrize("spec, error, fragment", [
    (3, TypeError, "got 3 (int)"),
    ("/no/such/tokenizer", ModelLoadError, "'/no/such/tokenizer' is not a directory"),
])
def test_bad_reward_tokenizer_names_the_value(tok, spec, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        gym.make("TextGen-v0", reward_model=_classifier(len(tok)), reward_tokenizer=spec)


def test_a_tokenizer_or_an_empty_string_is_not_a_reward_model(tok):
    with pytest.raises(TypeError, match="reward_model is a tokenizer"):
        gym.make("TextGen-v0", reward_model=tok)
    with pytest.raises(ValueError, match="reward_model is an empty string ''"):
        gym.make("TextGen-v0", reward_model="")


@pytest.mark.parametrize("returned, fragment", [
    ([None], "non-number None"), (None, "returned a NoneType"), ("1.0", "returned a str"), ({"r": 1.0}, "returned a dict"),
])
def test_trl_style_bad_returns_are_reward_model_errors_and_the_env_stays_usable(returned, fragment):
    from textenv.rewards import RewardModelError

    state = {"bad": True}

    def reward(completions, **kwargs):
        return returned if state["bad"] else [0.5] * len(completions)

    env = gym.make("TextGen-v0", task="arithmetic", reward_model=reward, max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(RewardModelError, match=fragment):
        env.step(5)
    state["bad"] = False
    assert env.step(5)[1] == 0.5


def test_hf_id_is_recorded_and_rebuilt_through_the_cache(tmp_path, monkeypatch, tok):
    from textenv.rewards.spec import rebuild_reward_model

    hub = tmp_path / "hub"
    snapshot = _fake_cache(hub, "acme/tiny-rm", tok)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    desc = describe_reward_model("acme/tiny-rm")
    assert desc == {"kind": "hf-id", "name": "acme/tiny-rm"}
    rm = resolve_reward_model(rebuild_reward_model(desc))
    assert rm.path == snapshot.resolve()


def test_docstring_examples():
    import doctest

    import textenv.rewards.adapters
    import textenv.tasks.arithmetic
    import textenv.tasks.keywords

    for module in (textenv.rewards.adapters, textenv.tasks.arithmetic, textenv.tasks.keywords):
        assert doctest.testmod(module).failed == 0, module.__name__
