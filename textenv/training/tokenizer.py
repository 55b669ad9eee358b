"""Training the byte-level BPE tokenizer that the package ships."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from textenv.models import EOS_TOKEN, PAD_TOKEN


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2,
                    split_digits: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with ``<|endoftext|>`` as eos and ``<|pad|>`` as pad.

    The 256 byte symbols are always in the vocabulary, so any text encodes (no unknown token).
    ``split_digits`` keeps every digit its own token (as LLaMA does), so numbers are written digit by
    digit and arithmetic is learnable by a small model instead of a lookup over number tokens.

    Example:
        >>> tok = train_tokenizer(["Review: a fine film."] * 50, vocab_size=300)
        >>> tok.decode(tok("a fine film")["input_ids"])
        'a fine film'
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {vocab_size}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def load_trained_tokenizer(directory: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """The tokenizer :func:`train_tokenizer` returned, rebuilt from the ``tokenizer.json`` that its
    ``save_pretrained`` wrote into ``directory``.

    It is the trained object again: ``name_or_path`` is empty and a ``save_pretrained`` of it writes the
    same bytes. ``AutoTokenizer.from_pretrained`` instead gives a copy that records how it was loaded (its
    ``name_or_path``, and ``is_local`` in a re-saved ``tokenizer_config.json``). ``textenv build-defaults
    --jobs`` hands its worker processes the tokenizer of the build this way.
    """
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {str(directory)!r} (a directory train_tokenizer's "
                                f"tokenizer was saved to)")
    return _wrap(Tokenizer.from_file(str(path)))


def _wrap(tok: Any) -> PreTrainedTokenizerFast:
    """The transformers tokenizer of a ``tokenizers.Tokenizer`` trained by :func:`train_tokenizer`."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, unk_token=None)
    fast.model_max_length = 1024
    return fast
