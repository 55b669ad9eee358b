"""The shipped artifacts (textenv/data) and the registered env ids that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv
from textenv.models import DATA_DIR, POLICY_DIR, load_causal_lm, load_tokenizer
from textenv.training.defaults import RECIPE, sha256

MANIFEST = DATA_DIR / "MANIFEST.json"
pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="the shipped artifacts are not built")


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


def test_artifacts_match_manifest(manifest):
    assert manifest["artifacts"], "the manifest lists no artifacts"
    for rel, meta in manifest["artifacts"].items():
        path = DATA_DIR / rel
        assert path.is_file(), f"{rel} is listed in MANIFEST.json but missing"
        assert sha256(path) == meta["sha256"], f"{rel} does not match its checksum"
    assert manifest["total_bytes"] < 60e6  # the issue-12 budget: about 60 MB in all
    shipped = {str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert shipped == set(manifest["artifacts"]), "files in textenv/data that the manifest does not list"


def test_shipped_quality_meets_the_bar(manifest):
    q = manifest["quality"]
    assert q["rewards"]["sentiment"]["spearman"] >= 0.9
    for task in ("arithmetic", "keywords"):
        assert q["rewards"][task]["pairwise_accuracy"] > 0.7
    gold = q["policy"]["gold_score_at_temperature_1"]
    assert 0.15 < gold["sentiment"] < 0.85, "the default policy must leave room for RL on sentiment"
    # the eight-task build gives arithmetic an eighth of the pretraining mix (a third before): its policy
    # answers 0.8% of the build's 256 prompts at temperature 1 (2.7% of 512 others), against 5.5% before
    assert 0.0 < gold["arithmetic"] < 0.5, "the default policy answers some but not most sums"
    assert gold["keywords"] > 0.05
    for task in ("translation", "summarization", "qa", "dialogue", "detox"):
        assert 0.0 < gold[task] < 0.6, f"the default policy must leave room for RL on {task}"
        assert q["rewards"][task]["pairwise_accuracy"] > 0.75, task


def test_default_policy_and_tokenizer_load():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(POLICY_DIR)
    tok = AutoTokenizer.from_pretrained(POLICY_DIR)
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)
    assert load_causal_lm("default").config.n_layer == model.config.n_layer
    t = load_tokenizer("default")
    assert t.eos_token is not None and t.pad_token is not None and t.pad_token_id != t.eos_token_id
    assert load_tokenizer("default") is t  # cached per process


@pytest.mark.parametrize("env_id", sorted(textenv.ENV_IDS))
def test_registered_ids_pass_both_env_checkers(env_id):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    # a task the shipped build does not cover yet has no default reward model: check it with its gold scorer
    kwargs = {} if textenv.ENV_IDS[env_id] in RECIPE["tasks"] else {"reward_model": "gold"}
    env = gym.make(env_id, **kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make(env_id, **kwargs), warn=False)
    obs, info = env.reset(seed=0)
    done = False
    while not done:
        obs, r, terminated, truncated, info = env.step(int(np.random.default_rng(0).integers(2, 50)))
        done = terminated or truncated
    assert isinstance(info["reward_model_score"], float) and 0.0 <= info["gold_score"] <= 1.0


def test_make_vec_returns_native_vector_env():
    from textenv.vector import TextGenVectorEnv

    envs = gym.make_vec("TextGen-v0", num_envs=64)
    assert isinstance(envs.unwrapped, TextGenVectorEnv) and envs.num_envs == 64
    obs, _ = envs.reset(seed=0)
    assert obs["input_ids"].shape[0] == 64


def test_make_with_module_prefix_without_import():
    code = "import gymnasium as gym; env = gym.make('textenv:TextGen-v0'); print(env.reset(seed=0)[1]['prompt'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("Review:")


def test_default_reward_model_prefers_positive_reviews():
    from textenv.rewards import resolve_reward_model
    from textenv.tasks import get_task

    rm = resolve_reward_model("default", get_task("sentiment"))
    good, bad = rm(["Review: The film was"] * 2, [" wonderful and truly moving.", " dull and truly awful."])
    assert good > bad


@pytest.mark.slow
def test_build_defaults_in_miniature(tmp_path):
    from textenv.training.defaults import build_defaults

    m = build_defaults(tmp_path, scale=0.005, progress=False, log=lambda *_: None)
    for sub in ("tokenizer", "pretrained", "policy", *(f"rewards/{t}" for t in RECIPE["tasks"])):
        assert (tmp_path / sub).is_dir(), sub
    on_disk = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert on_disk["artifacts"] == m["artifacts"]
    for rel, meta in m["artifacts"].items():
        assert sha256(tmp_path / rel) == meta["sha256"]
    assert set(m["quality"]["rewards"]) == set(RECIPE["tasks"])
    assert set(m["quality"]["policy"]["gold_score_at_temperature_1"]) == set(RECIPE["tasks"])


def test_generate_dialogues_inserts_the_users_replies():
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from textenv.models import DATA_DIR, tiny_gpt2_config
    from textenv.tasks import get_task
    from textenv.training.defaults import generate_dialogues

    tok = AutoTokenizer.from_pretrained(str(DATA_DIR / "tokenizer"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=320,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    task = get_task("dialogue")
    prompts = task.prompts(6, split="test", seed=1)
    sep = tok(task.turn_separator, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # make the separator likely, so that turns end and the user replies
        model.lm_head.weight[sep] += 2.0
    out = generate_dialogues(model, tok, task, prompts, 8, torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert len(out) == 6
    assert any("User:" in text for text in out)
    for text in out:  # at most default_max_turns agent turns, each answered by one user reply at most
        assert text.count("User:") <= task.default_max_turns
    again = generate_dialogues(model, tok, task, prompts, 8, torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert again == out
    assert all(0.0 <= g <= 1.0 for g in task.gold_score(prompts, out))
