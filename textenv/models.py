"""Loading tokenizers, causal (and seq2seq) LMs and configs by name or path.

Names:
- ``"default"``: the artifacts shipped in ``textenv/data`` (built by ``textenv build-defaults``).
- ``"tiny"`` (causal LM only): a fresh, randomly initialised tiny GPT-2 sized for the default tokenizer;
  ``"tiny-t5"``: the same as a tiny T5 encoder-decoder.
- any directory: a Hugging Face ``save_pretrained`` directory.

Tokenizers are cached per process (they are immutable); causal LMs are not, since a policy is trained in
place and every caller needs its own copy.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import GPT2Config, PreTrainedModel, PreTrainedTokenizerBase


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence transformers' own progress bars ("Loading weights", "Writing model shards") inside the block,
    so that they do not clutter our commands or nest inside our bar; the previous setting is restored after.

    Example:
        >>> from transformers.utils import logging as hf_logging
        >>> with quiet_progress():
        ...     hf_logging.is_progress_bar_enabled()
        False
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


DATA_DIR = Path(__file__).resolve().parent / "data"
TOKENIZER_DIR = DATA_DIR / "tokenizer"
PRETRAINED_DIR = DATA_DIR / "pretrained"
POLICY_DIR = DATA_DIR / "policy"
REWARD_DIR = DATA_DIR / "rewards"  # one sub-directory per task

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


class ModelLoadError(ValueError):
    """A model or tokenizer name or directory could not be loaded; the message names the path."""


#: the ``--device`` / ``device=`` values: ``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
DEVICE_CHOICES = "'auto', 'cpu' or 'cuda[:N]'"
#: the ``--dtype`` / ``dtype=`` values (float16 is not offered: it needs loss scaling, bf16 does not)
DTYPES = ("auto", "float32", "bfloat16")


def check_device(device: Any, what: str = "device") -> str:
    """``device`` as a string if it is one of :data:`DEVICE_CHOICES` (a ``torch.device`` of type cpu/cuda is
    accepted too), else a ``ValueError`` naming it. Does not look at the hardware (see :func:`resolve_device`)."""
    import re

    import torch

    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise ValueError(f"{what} must be {DEVICE_CHOICES}, got {device!r}")
    return text


def resolve_device(device: Any = "auto", what: str = "device") -> Any:
    """The ``torch.device`` for ``device`` (see :func:`check_device`): ``"auto"`` is cuda when CUDA is
    available, else cpu. ``"cuda"``/``"cuda:N"`` without CUDA, or with fewer GPUs than N + 1, is a
    ``ValueError`` naming the value.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    text = check_device(device, what)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {text!r} asked for but CUDA is not available on this machine "
                             f"(use 'cpu' or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {text!r} asked for but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s)")
    return dev


def resolve_dtype(dtype: Any = "auto", device: Any = "cpu", what: str = "dtype") -> Any:
    """The compute ``torch.dtype`` for ``dtype`` (one of :data:`DTYPES`) on ``device``: ``"auto"`` is bfloat16
    on a CUDA device that supports it (``torch.cuda.is_bf16_supported()``), float32 otherwise (CPU
    included). ``"bfloat16"`` on a GPU without bf16 support, or any other value (``"float8"``,
    ``"float16"``), is a ``ValueError`` naming it.

    Example:
        >>> resolve_dtype("auto", "cpu"), resolve_dtype("bfloat16", "cpu")
        (torch.float32, torch.bfloat16)
    """
    import torch

    if dtype in (torch.float32, torch.bfloat16):
        dtype = str(dtype).removeprefix("torch.")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"{what} must be one of {list(DTYPES)}, got {dtype!r}")
    dev = torch.device(device)
    bf16_ok = dev.type != "cuda" or torch.cuda.is_bf16_supported()
    if dtype == "auto":
        return torch.bfloat16 if dev.type == "cuda" and bf16_ok else torch.float32
    if dtype == "bfloat16" and not bf16_ok:
        raise ValueError(f"{what} 'bfloat16' asked for but CUDA device {str(dev)!r} does not support bf16 "
                         f"(use 'float32' or 'auto')")
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def _check_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{what} path {str(path)!r} does not exist")
    if not p.is_dir():
        raise ModelLoadError(f"{what} path {str(path)!r} is not a directory")
    return p.resolve()


def resolve_tokenizer_path(name_or_path: str | os.PathLike[str]) -> Path:
    if str(name_or_path) == "default":
        if not (TOKENIZER_DIR / "tokenizer.json").exists():
            raise ModelLoadError(
                f"the default tokenizer is missing from {TOKENIZER_DIR}; run `textenv build-defaults`"
            )
        return TOKENIZER_DIR
    return _check_dir(name_or_path, "tokenizer")


def load_tokenizer(name_or_path: str | os.PathLike[str] | PreTrainedTokenizerBase = "default") -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer with ``pad_token`` and ``eos_token`` set, cached per resolved path.

    Accepts ``"default"``, a tokenizer (returned as is, after the pad/eos check) or a directory.
    A tokenizer without a pad token gets its eos token as pad (the usual choice for causal LMs).
    """
    if isinstance(name_or_path, PreTrainedTokenizerBase):
        return _ensure_special(name_or_path)
    return _load_tokenizer_cached(str(resolve_tokenizer_path(name_or_path)))


@functools.lru_cache(maxsize=16)
def _load_tokenizer_cached(path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a bad directory
        raise ModelLoadError(f"could not load a tokenizer from {path!r}: {exc}") from exc
    return _ensure_special(tok)


def _ensure_special(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.eos_token is None:
        raise ModelLoadError(f"tokenizer {getattr(tok, 'name_or_path', tok)!r} has no eos_token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_gpt2_config(vocab_size: int, n_layer: int = 4, n_embd: int = 128, n_head: int = 4,
                     n_positions: int = 128, **kwargs: Any) -> GPT2Config:
    """A small GPT-2 config (about 1M parameters at the defaults and a 2k vocabulary).

    Example:
        >>> cfg = tiny_gpt2_config(2048, n_layer=2, n_embd=64)
        >>> cfg.n_layer, cfg.n_embd
        (2, 64)
    """
    return GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                      n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kwargs)


def tiny_t5_config(tokenizer: PreTrainedTokenizerBase, num_layers: int = 2, d_model: int = 64, num_heads: int = 4,
                   d_ff: int = 128, **kwargs: Any) -> Any:
    """A small random T5 config (an encoder-decoder for :class:`agents.seq2seq.Seq2SeqPolicy`) sized for
    ``tokenizer``: its vocabulary, pad id as the decoder's start (as T5 does) and EOS; no dropout.

    Example:
        >>> cfg = tiny_t5_config(load_tokenizer("default"))
        >>> cfg.is_encoder_decoder, cfg.d_model
        (True, 64)
    """
    from transformers import T5Config

    return T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
                    num_layers=num_layers, num_heads=num_heads, dropout_rate=0.0,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id, **kwargs)  # type: ignore[call-arg]


def load_causal_lm(name_or_path: str | os.PathLike[str] = "default", tokenizer: PreTrainedTokenizerBase | None = None,
                   dtype: Any = "float32", **config_overrides: Any) -> PreTrainedModel:
    """A fresh (uncached) LM: ``"default"`` (the shipped policy), ``"tiny"``, ``"tiny-t5"`` or a directory.

    ``"tiny"`` builds a random GPT-2 from :func:`tiny_gpt2_config` sized for ``tokenizer`` (default: the
    shipped tokenizer); ``config_overrides`` go to that config. ``"tiny-t5"`` builds a random T5 from
    :func:`tiny_t5_config` the same way. A directory holding an encoder-decoder model (its config says
    ``is_encoder_decoder``: T5, BART, ...) is loaded with ``AutoModelForSeq2SeqLM``, anything else with
    ``AutoModelForCausalLM``. The model is returned in eval mode, with
    weights in ``dtype``: ``"float32"`` (default; what a trained policy keeps as master weights),
    ``"bfloat16"`` (half the memory: frozen models such as a KL reference) or a ``torch.dtype`` of those;
    ``"auto"`` is float32 here (no device is known). Any other value is a ``ValueError`` naming it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GPT2LMHeadModel

    weights_dtype = resolve_dtype(dtype, "cpu", what="load_causal_lm dtype")
    name = str(name_or_path)
    if name == "tiny":
        tok = tokenizer if tokenizer is not None else load_tokenizer("default")
        cfg = tiny_gpt2_config(len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, **config_overrides)
        return GPT2LMHeadModel(cfg).to(weights_dtype).eval()
    if name == "tiny-t5":
        from transformers import T5ForConditionalGeneration

        tok = tokenizer if tokenizer is not None else load_tokenizer("default")
        return T5ForConditionalGeneration(tiny_t5_config(tok, **config_overrides)).to(weights_dtype).eval()
    if name == "default":
        if not (POLICY_DIR / "config.json").exists():
            raise ModelLoadError(f"the default policy is missing from {POLICY_DIR}; run `textenv build-defaults`")
        path = POLICY_DIR
    else:
        path = _check_dir(name_or_path, "model")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"model directory {str(path)!r} has no config.json")
    try:
        with quiet_progress():
            seq2seq = bool(getattr(AutoConfig.from_pretrained(str(path)), "is_encoder_decoder", False))
            auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            model = auto.from_pretrained(str(path), dtype=weights_dtype)
    except Exception as exc:
        raise ModelLoadError(f"could not load a causal or seq2seq LM from {str(path)!r}: {exc}") from exc
    return model.eval()

