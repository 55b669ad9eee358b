"""Shared fixtures: a tiny tokenizer and tiny models built from configs; nothing reaches the network."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("TEXTENV_TEST_THREADS", "1")))


def _fixture_corpus() -> list[str]:
    rng = np.random.default_rng(0)
    words = ("the film was good bad great awful not very really quite plot acting story fine dull "
             "river lamp quiet bright house walked saw Use Review").split()
    texts = []
    for _ in range(400):
        a, b = rng.integers(0, 100, size=2)
        texts.append(f"{a}+{b}={a + b}")
        texts.append("Review: " + " ".join(rng.choice(words, size=8)) + ".")
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 400-token byte-level BPE trained on a small synthetic corpus."""
    from textenv.training.tokenizer import train_tokenizer

    # digits merged (split_digits=False): the known-answer token ids in the tests were computed that way
    return train_tokenizer(_fixture_corpus(), vocab_size=400, split_digits=False)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_lm(tiny_tokenizer):
    """A fresh 2-layer, 64-wide GPT-2 for the tiny tokenizer."""
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    cfg = tiny_gpt2_config(len(tiny_tokenizer), n_layer=2, n_embd=64, n_head=2,
                           bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
                           pad_token_id=tiny_tokenizer.pad_token_id)
    return GPT2LMHeadModel(cfg).eval()
