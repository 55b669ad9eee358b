"""Stages 1-2: causal-LM pretraining and SFT (batches, loop, checkpoints, resume, loading)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from textenv.io import list_checkpoints
from textenv.models import ModelLoadError, load_causal_lm, tiny_gpt2_config
from textenv.training import loop
from textenv.training.lm import (
    GROUP_BATCHES,
    build_lm_batch,
    build_sft_batch,
    finetune,
    length_grouped_batches,
    load_pairs_jsonl,
    load_text_corpus,
    pretrain,
)
from textenv.training.loop import TRAINER_STATE_NAME, TrainConfig, latest_checkpoint

FAST = {"batch_size": 4, "max_length": 32, "lr": 3e-3, "warmup_steps": 2, "eval_every": 0,
        "checkpoint_every": 0, "eval_batches": 2, "log_every": 5, "progress": False}


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the film was good bad great not very plot acting story fine dull".split()
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 50, size=2)
        out.append(f"{a}+{b}={a + b}")
        out.append("Review: " + " ".join(rng.choice(words, size=5)) + ".")
    return out


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(f"{a}+{b}=", f"{a + b}") for a, b in rng.integers(0, 50, size=(n, 2))]


def _gpt2(tok, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(len(tok), n_layer=2, n_embd=64, n_head=2, n_positions=64,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg).eval()


def _trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("batch_size", 0), ("lr", 0.0), ("lr", -1e-3),
                                              ("lr", float("nan")), ("weight_decay", -0.1), ("warmup_steps", -1),
                                              ("grad_clip", -1.0), ("max_length", 1), ("eval_every", -1),
                                              ("eval_batches", 0), ("checkpoint_every", -5), ("seed", -1),
                                              ("log_every", 0), ("steps", 2.5), ("progress", "yes"),
                                              ("group_by_length", 1)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


# ---------------------------------------------------------------------------------------------------- batches


def test_sft_batch_masks_prompt_and_padding_known_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert (eos, pad) == (0, 1)
    enc = {s: tok(s, add_special_tokens=False)["input_ids"] for s in ["12+7=", "19", "Review: the film", " was good."]}
    assert enc == {"12+7=": [353, 12, 24, 30], "19": [18, 26], "Review: the film": [262, 27, 296, 345],
                   " was good.": [329, 322, 15]}

    batch = build_sft_batch(tok, [("12+7=", "19"), ("Review: the film", " was good.")], max_length=32)
    assert batch["input_ids"].tolist() == [[353, 12, 24, 30, 18, 26, 0, 1],
                                           [262, 27, 296, 345, 329, 322, 15, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 18, 26, 0, -100],
                                        [-100, -100, -100, -100, 329, 322, 15, 0]]


def test_sft_batch_cuts_long_prompts_from_the_left(tiny_tokenizer):
    batch = build_sft_batch(tiny_tokenizer, [("12+7=", "19")], max_length=5)
    assert batch["input_ids"].tolist() == [[24, 30, 18, 26, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 18, 26, 0]]
    # A response longer than the budget keeps one prompt token and is cut from the right.
    batch = build_sft_batch(tiny_tokenizer, [("12+7=", "19")], max_length=2)
    assert batch["labels"].tolist() == [[-100, 18]]


def test_lm_batch_appends_eos_chunks_and_pads(tiny_tokenizer):
    batch = build_lm_batch(tiny_tokenizer, ["12+7=19", "Review: the film was good."], max_length=4)
    assert batch["input_ids"].tolist() == [[353, 12, 24, 30], [18, 26, 0, 1], [262, 27, 296, 345],
                                           [329, 322, 15, 0]]
    assert batch["labels"].tolist() == [[353, 12, 24, 30], [18, 26, 0, -100], [262, 27, 296, 345],
                                        [329, 322, 15, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize(("pairs", "match"), [([], "pairs is empty"), ([("a", "b", "c")], r"pairs\[0\]"),
                                              ([("a", "b"), ("a", 3)], r"pairs\[1\]"), (["ab"], r"pairs\[0\]"),
                                              ("ab", "list of")])
def test_bad_pairs_raise(tiny_tokenizer, tiny_lm, tmp_path, pairs, match):
    with pytest.raises(ValueError, match=match):
        build_sft_batch(tiny_tokenizer, pairs, 16)
    with pytest.raises(ValueError, match=match):
        finetune(tiny_lm, tiny_tokenizer, pairs, tmp_path, TrainConfig(steps=1, **FAST))


def test_bad_texts_and_mismatched_models_raise(tiny_tokenizer, tiny_lm, tmp_path):
    cfg = TrainConfig(steps=1, **FAST)
    with pytest.raises(ValueError, match="texts is empty"):
        pretrain(tiny_lm, tiny_tokenizer, [], tmp_path, cfg)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        pretrain(tiny_lm, tiny_tokenizer, ["ok", None], tmp_path, cfg)
    with pytest.raises(ValueError, match="eval_texts is empty"):
        pretrain(tiny_lm, tiny_tokenizer, ["ok"], tmp_path, cfg, eval_texts=[])
    with pytest.raises(ValueError, match="max_length=256"):
        pretrain(tiny_lm, tiny_tokenizer, ["ok"], tmp_path, TrainConfig(steps=1, max_length=256))
    small = GPT2LMHeadModel(tiny_gpt2_config(100, n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="100 token embeddings"):
        pretrain(small, tiny_tokenizer, ["ok"], tmp_path, cfg)


# ---------------------------------------------------------------------------------------------------- training


def test_pretrain_loss_falls_and_outputs_load(tiny_tokenizer, tiny_lm, tmp_path):
    out = tmp_path / "lm"
    cfg = TrainConfig(**{**FAST, "steps": 30, "batch_size": 8, "eval_every": 10, "checkpoint_every": 10})
    result = pretrain(tiny_lm, tiny_tokenizer, _texts(100), out, cfg, eval_texts=_texts(10, seed=1))

    assert set(result) >= {"train_loss", "eval_loss", "perplexity", "steps", "tokens_per_s"}
    assert result["steps"] == 30 and result["tokens_per_s"] > 0
    assert result["perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
    state = _trainer_state(out / "checkpoint-00000030")
    losses = state["loss_history"]
    assert len(losses) == 30 and state["step"] == 30 and state["config"]["steps"] == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    assert [e["step"] for e in state["eval_history"]] == [10, 20, 30]
    assert state["eval_history"][-1]["eval_loss"] < state["eval_history"][0]["eval_loss"]
    assert not tiny_lm.training

    # Latest two checkpoints only, no temporary leftovers, and the final model + tokenizer at out_dir.
    assert [p.name for p in list_checkpoints(out, TRAINER_STATE_NAME)] == ["checkpoint-00000020",
                                                                            "checkpoint-00000030"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(result)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("12+7=")["input_ids"] == tiny_tokenizer("12+7=")["input_ids"]
    for name, tensor in tiny_lm.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    opt_state = torch.load(out / "checkpoint-00000030" / "optimizer.pt", weights_only=True)
    assert set(opt_state) >= {"optimizer", "scheduler"}


@pytest.mark.parametrize("group_by_length", [False, True])
def test_killed_run_resumes_to_identical_losses_and_weights(tiny_tokenizer, tmp_path, monkeypatch, group_by_length):
    texts = _texts(5 if group_by_length else 40)  # grouped: 10 documents, 2 batches an epoch, so epochs turn over
    cfg = TrainConfig(**{**FAST, "steps": 12, "checkpoint_every": 6, "eval_every": 4,
                         "group_by_length": group_by_length})
    evals = _texts(4, seed=2)

    full = _gpt2(tiny_tokenizer)
    pretrain(full, tiny_tokenizer, texts, tmp_path / "full", cfg, eval_texts=evals)

    class Killed(Exception):
        pass

    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        pretrain(_gpt2(tiny_tokenizer), tiny_tokenizer, texts, tmp_path / "cut", cfg, eval_texts=evals)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert latest_checkpoint(tmp_path / "cut").name == "checkpoint-00000006"
    with pytest.raises(ValueError, match="resume=True"):
        pretrain(_gpt2(tiny_tokenizer), tiny_tokenizer, texts, tmp_path / "cut", cfg)

    # A fresh process: a differently initialised model, then resume from the checkpoint.
    resumed = _gpt2(tiny_tokenizer, seed=123)
    result = pretrain(resumed, tiny_tokenizer, texts, tmp_path / "cut", cfg, eval_texts=evals, resume=True)
    assert result["steps"] == 12
    a, b = _trainer_state(tmp_path / "full" / "checkpoint-00000012"), _trainer_state(tmp_path / "cut" / "checkpoint-00000012")
    assert b["loss_history"] == a["loss_history"]  # bitwise: same batches, same RNG, same optimizer state
    assert [e["step"] for e in b["eval_history"]] == [4, 8, 12]
    assert b["eval_history"] == a["eval_history"]
    for name, tensor in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_resume_extends_a_finished_run(tiny_tokenizer, tmp_path, caplog):
    texts = _texts(20)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="textenv.training.loop"):
        pretrain(_gpt2(tiny_tokenizer), tiny_tokenizer, texts, out, TrainConfig(**{**FAST, "steps": 4}),
                 resume=True)
    assert "holds no checkpoint" in caplog.text
    first = _trainer_state(out / "checkpoint-00000004")["loss_history"]
    result = pretrain(_gpt2(tiny_tokenizer, seed=5), tiny_tokenizer, texts, out,
                      TrainConfig(**{**FAST, "steps": 8}), resume=True)
    state = _trainer_state(out / "checkpoint-00000008")
    assert result["steps"] == 8 and len(state["loss_history"]) == 8
    assert state["loss_history"][:4] == first
    assert result["eval_loss"] is None and result["perplexity"] is None


def test_llama_from_dir_pretrains_and_finetunes(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "init")
    model = load_causal_lm(tmp_path / "init")
    assert isinstance(model, LlamaForCausalLM)

    pre = pretrain(model, tok, _texts(20), tmp_path / "pre", TrainConfig(**{**FAST, "steps": 6}),
                   eval_texts=_texts(3, seed=1))
    sft_cfg = TrainConfig(**{**FAST, "steps": 20, "eval_every": 10})
    model = load_causal_lm(tmp_path / "pre")
    sft = finetune(model, tok, _pairs(40), tmp_path / "sft", sft_cfg, eval_pairs=_pairs(8, seed=1))
    assert math.isfinite(pre["eval_loss"]) and math.isfinite(sft["eval_loss"])
    history = _trainer_state(tmp_path / "sft" / "checkpoint-00000020")["eval_history"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert isinstance(loaded, LlamaForCausalLM)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "sft")) == len(tok)


def test_bad_model_dirs_raise_model_load_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="nope"):
        load_causal_lm(missing)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json at all")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_causal_lm(corrupt)


# ---------------------------------------------------------------------------------------------------- files


def test_load_text_corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\n\n  \nsecond doc\n", encoding="utf-8")
    assert load_text_corpus(path) == ["first doc", "second doc"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        load_text_corpus(tmp_path / "empty.txt")
    (tmp_path / "c.csv").write_text("a\n")
    with pytest.raises(ValueError, match=r"\.csv"):
        load_text_corpus(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_corpus(tmp_path / "missing.txt")


def test_load_pairs_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+1=", "response": "2"}\n\n{"prompt": "2+2=", "response": "4"}\n')
    assert load_pairs_jsonl(path) == [("1+1=", "2"), ("2+2=", "4")]
    path.write_text('{"prompt": "1+1=", "response": "2"}\n{"prompt": "2+2="}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        load_pairs_jsonl(path)
    path.write_text('{"prompt": "1+1=", "response": "2"}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:3"):
        load_pairs_jsonl(path)
    path.write_text('garbage\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1"):
        load_pairs_jsonl(path)


# ---------------------------------------------------------------------------------------------------- grouping


def test_length_grouped_batches_cover_each_example_once_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000).tolist()
    B = 8
    b = length_grouped_batches(lengths, B, seed=3, epoch=0)
    assert b.shape == (1000 // B, B)
    assert len(set(b.ravel().tolist())) == b.size  # no example twice in an epoch
    L = np.asarray(lengths)[b]
    grouped_waste = float((L.max(1, keepdims=True) - L).sum() / (L.max(1) * B).sum())
    shuffled = rng.permutation(1000)[: b.size].reshape(-1, B)
    Ls = np.asarray(lengths)[shuffled]
    random_waste = float((Ls.max(1, keepdims=True) - Ls).sum() / (Ls.max(1) * B).sum())
    assert grouped_waste < 0.1 < 0.4 < random_waste  # padding share of the batches' cells
    # within a group of GROUP_BATCHES batches, lengths are sorted; the batch order is shuffled
    assert np.corrcoef(np.arange(len(b)), L.max(1))[0, 1] ** 2 < 0.1
    assert np.array_equal(b, length_grouped_batches(lengths, B, seed=3, epoch=0))
    assert not np.array_equal(b, length_grouped_batches(lengths, B, seed=3, epoch=1))
    assert not np.array_equal(b, length_grouped_batches(lengths, B, seed=4, epoch=0))
    assert GROUP_BATCHES * B < 1000  # the test spans several groups
    with pytest.raises(ValueError, match="batch_size=8 and 5 lengths"):
        length_grouped_batches([1, 2, 3, 4, 5], 8, seed=0, epoch=0)
