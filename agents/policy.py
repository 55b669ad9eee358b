"""`LMPolicy`: a causal LM with a value head on the shared trunk, acting with a KV cache.

Acting (:meth:`LMPolicy.start` / :meth:`LMPolicy.step` / :meth:`LMPolicy.end`) runs the trunk through
:class:`textenv.decoding.KVDecoder`, the one cached decoder of the project; training reads per-token
log-probs, values and entropy of whole completions from one forward (:meth:`LMPolicy.per_token_logps`).

Memory (issue 11 item 5): the LM head is applied in chunks of completion tokens (:func:`chunked_logps_entropy`),
so the ``(B, T, V)`` float32 logits never exist at once, in the forward or the backward; a LoRA policy
(:meth:`LMPolicy.enable_lora`, through ``peft``) uses its own base with the adapters disabled as the reference
instead of a second copy; :meth:`LMPolicy.set_gradient_checkpointing` recomputes the trunk's layers in the
backward of the training forward.

Grouped batches (issue 15): GRPO-style batches repeat each prompt G times; the rollout's prefill and the
training and reference forwards run the trunk once per distinct prompt and share its KV cache between the
prompt's rows (:attr:`LMPolicy.share_prompt_prefix`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from textenv.decoding import (
    KVDecoder,
    cache_kwargs,
    distinct_rows,
    positions_from_mask,
    sample_categorical,
    supports_shared_prefix,
)
from textenv.models import quiet_progress


class StepOutput(NamedTuple):
    """What one cached decoding step gives: the sampled tokens and what the learner needs of them."""

    actions: torch.Tensor  # (B,) sampled token ids
    logprobs: torch.Tensor  # (B,) log pi(action | context) at the sampling temperature
    values: torch.Tensor | None  # (B,) V(context), or None when values are not asked for


class PerTokenLogps(NamedTuple):
    """Per-token log-probs, values and entropy of completion tokens, from one forward pass (TRL's
    ``per_token_logps``, with the value head's values and the entropy of the same logits)."""

    logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    entropy: torch.Tensor  # (B, T)


def _lm_head(model: nn.Module) -> nn.Linear:
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear LM head (get_output_embeddings() gave {head!r})")
    return head


def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap transformers' Python-level GELU modules for torch's fused kernels, in place (same function).

    GPT-2's ``NewGELUActivation`` is the tanh approximation written as five elementwise ops;
    ``nn.GELU(approximate="tanh")`` computes the same values (to float rounding) in one kernel, forward and
    backward. Holds no weights, so saved checkpoints are unchanged.
    """
    from transformers.activations import GELUActivation, NewGELUActivation

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, nn.GELU(approximate="tanh"))
            elif type(child) is GELUActivation:
                setattr(parent, name, nn.GELU())
    return model


def new_value_head(hidden: int, device: torch.device | str | None = None) -> nn.Linear:
    """A fresh scalar value head ``Linear(hidden, 1)``, initialised small (std ``0.1 / sqrt(hidden + 1)``,
    zero bias), so that its first values are about 0 rather than a random projection of the LM's large
    hidden states, and the first advantages are about the returns."""
    head = nn.Linear(hidden, 1, device=device)
    nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5 * 0.1)
    nn.init.zeros_(head.bias)
    return head


#: the most float32 logits one chunk of :func:`chunked_logps_entropy` holds (64 MiB): 440 tokens at a 150k
#: vocabulary, the whole batch at the shipped 1.4k one (where the chunking is then a no-op)
LOGITS_CHUNK_ELEMENTS = 2**24

#: LoRA target modules by ``config.model_type`` (every linear layer of the blocks; the LM head is never
#: adapted); other architectures get peft's ``"all-linear"``
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
       for t in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3")},
}

def _chunk_logps_entropy(h: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``tokens`` (N,) and entropy (N,) (empty unless ``with_entropy``) under
    ``h (N, H) @ weight.T`` at ``temperature``, in float32."""
    logits = F.linear(h, weight, bias).float() / temperature  # (N, V)
    logz = torch.logsumexp(logits, dim=-1)  # (N,)
    logp = logits.gather(-1, tokens[:, None]).squeeze(-1) - logz  # (N,)
    if not with_entropy:
        return logp, logp.new_empty(0)
    entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # (N,)
    return logp, entropy


def chunked_logps_entropy(h: torch.Tensor, tokens: torch.Tensor, head: nn.Linear, *, temperature: float = 1.0,
                          vocab_size: int | None = None, chunk_tokens: int | None = None,
                          with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropy ``(B, T)`` (float32) of ``tokens`` under ``head(h) / temperature``,
    without the ``(B, T, V)`` logits: the head is applied to ``chunk_tokens`` tokens at a time (default: as
    many as :data:`LOGITS_CHUNK_ELEMENTS` float32 logits allow; the entropy is empty without
    ``with_entropy``). Under autograd each chunk is checkpointed
    (``torch.utils.checkpoint``), so the backward recomputes one chunk's logits at a time instead of keeping
    every chunk's; with one chunk it is the plain computation.

    Only the first ``vocab_size`` logits are used (the tokenizer's tokens): a head padded beyond the
    vocabulary (Qwen's 151936 rows for 151665 tokens) never gives the padding any probability.

    Example:
        >>> head = nn.Linear(4, 10)
        >>> logp, ent = chunked_logps_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), head,
        ...                                   chunk_tokens=2)
        >>> logp.shape, ent.shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
    """
    if h.shape[:-1] != tokens.shape:
        raise ValueError(f"hidden states {tuple(h.shape)} do not match tokens {tuple(tokens.shape)}")
    n_rows = int(head.weight.shape[0])
    V = n_rows if vocab_size is None else int(vocab_size)
    if not 1 <= V <= n_rows:
        raise ValueError(f"vocab_size must be in [1, {n_rows}] (the head's rows), got {vocab_size!r}")
    weight = head.weight if V == n_rows else head.weight[:V]  # (V, H)
    bias = head.bias if head.bias is None or V == n_rows else head.bias[:V]
    if chunk_tokens is None:
        chunk_tokens = max(1, LOGITS_CHUNK_ELEMENTS // V)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    B, T = tokens.shape
    flat_h, flat_tokens = h.reshape(B * T, h.shape[-1]), tokens.reshape(B * T)  # (N, H), (N,)
    if B * T <= chunk_tokens:
        logp, entropy = _chunk_logps_entropy(flat_h, flat_tokens, weight, bias, temperature, with_entropy)
        return logp.view(B, T), entropy.view(B, T) if with_entropy else entropy
    grad = torch.is_grad_enabled() and (flat_h.requires_grad or weight.requires_grad)
    logps, entropies = [], []
    for start in range(0, B * T, chunk_tokens):
        h_c, t_c = flat_h[start:start + chunk_tokens], flat_tokens[start:start + chunk_tokens]
        if grad:  # saves h_c only; the backward recomputes this chunk's logits
            lp, ent = checkpoint(_chunk_logps_entropy, h_c, t_c, weight, bias, temperature, with_entropy,
                                 use_reentrant=False)
        else:
            lp, ent = _chunk_logps_entropy(h_c, t_c, weight, bias, temperature, with_entropy)
        logps.append(lp)
        entropies.append(ent)
    entropy = torch.cat(entropies)
    return torch.cat(logps).view(B, T), entropy.view(B, T) if with_entropy else entropy


def feed_step(decoder: KVDecoder, tokens: torch.Tensor,
              inserted: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Feed each slot's last action ``tokens`` (B,) (and the env's ``inserted = (ids, mask)`` after it, see
    :meth:`LMPolicy.step`) through ``decoder``'s cache; the trunk's hidden state after each row's last real
    column, (B, H)."""
    if inserted is None:
        return decoder.step(tokens).last_hidden_state[:, -1]
    ins_ids, ins_mask = inserted
    if ins_ids.shape != ins_mask.shape or ins_ids.dim() != 2 or ins_ids.shape[0] != tokens.shape[0]:
        raise ValueError(f"inserted ids {tuple(ins_ids.shape)} and mask {tuple(ins_mask.shape)} must both "
                         f"be (B, K) with B = {tokens.shape[0]}")
    ids = torch.cat([tokens[:, None], ins_ids.to(tokens.device)], dim=1)  # (B, 1 + K)
    attn = torch.cat([torch.ones_like(tokens)[:, None], ins_mask.to(tokens.device).long()], dim=1)
    assert decoder.positions is not None
    # the real columns continue each row's positions; a row's padding columns are masked out
    positions = decoder.positions[:, None] + attn.cumsum(1)  # (B, 1 + K)
    out = decoder.extend(ids, positions, attn)
    last = attn.sum(1) - 1  # (B,) each row's last real column
    return out.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), last]  # (B, H)


class LMPolicy(nn.Module):
    """A causal LM policy with a scalar value head on the last hidden state, and a frozen reference copy.

    Acting (:meth:`start` then :meth:`step`) keeps a KV cache for the batch, so each env step costs one token
    of forward pass per slot. :meth:`per_token_logps` gives per-token log-probs, values and entropy of given
    completions in one forward pass, for training; :meth:`ref_logprobs` does the same with the frozen
    reference model, for the KL term.

    Sampling is at ``temperature`` (1.0 by default: the log-probs are then those of the policy itself).
    ``top_k``/``top_p`` truncate the sampling distribution; the log-probs are those of the truncated
    distribution, which biases the KL to the reference (a warning says so).

    ``share_prompt_prefix`` (default True, also an attribute): when the rows of a training or reference
    forward repeat prompts (GRPO's groups), run the trunk once per distinct prompt and feed the completions
    after its KV cache, expanded to the rows (the gradients of a shared prompt are summed over its rows); the
    prefill of :meth:`start` does the same (``KVDecoder(share_prefix=True)``). The results are those of the
    full forward (to float rounding). It falls back to the full forward when every prompt is distinct, for
    architectures outside :data:`textenv.decoding.SHARED_PREFIX_MODEL_TYPES`, or with the flag off; the
    training forward also under gradient checkpointing (with grad) and for an FSDP-sharded policy (a
    rollout's prefill is one forward either way, on the gathered policy).

    Example:
        >>> policy = LMPolicy.from_pretrained("default")
    """

    def __init__(self, model: nn.Module, tokenizer: Any, ref_model: nn.Module | None = None, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 with_reference: bool = True, logits_chunk: int | None = None,
                 share_prompt_prefix: bool = True) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                                  or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
        if logits_chunk is not None and (isinstance(logits_chunk, bool) or not isinstance(logits_chunk, int)
                                         or logits_chunk < 1):
            raise ValueError(f"logits_chunk must be None or an integer >= 1, got {logits_chunk!r}")
        if not isinstance(share_prompt_prefix, bool):
            raise ValueError(f"share_prompt_prefix must be a bool, got {share_prompt_prefix!r}")
        if top_k is not None or top_p is not None:
            warnings.warn("top_k/top_p truncate the sampling distribution: log-probs and the KL to the "
                          "reference are those of the truncated policy (biased)", stacklevel=2)
        self.model: Any = fuse_activations(model)  # a transformers causal LM (any AutoModelForCausalLM)
        self.tokenizer = tokenizer
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        head_rows, hidden = _lm_head(model).weight.shape
        #: the logits used: the tokenizer's tokens (a head padded beyond them never samples the padding ids)
        self.vocab_size = min(int(head_rows), len(tokenizer)) if hasattr(tokenizer, "__len__") else int(head_rows)
        #: completion tokens per chunk of the LM head in training forwards (None: LOGITS_CHUNK_ELEMENTS logits)
        self.logits_chunk = logits_chunk
        #: run a repeated prompt's trunk once in training and reference forwards (see the class docstring)
        self.share_prompt_prefix = share_prompt_prefix
        self.gradient_checkpointing = False
        self.value_head = new_value_head(hidden)
        if ref_model is None and with_reference:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            fuse_activations(ref_model)
            ref_model.eval()
            ref_model.requires_grad_(False)
        # kept out of the module tree: it is frozen, not trained, not in state_dict / optimizer
        self.__dict__["ref_model"] = ref_model
        self.__dict__["peft_model"] = None  # the peft wrapper of ``model`` once LoRA is on (enable_lora)
        self._decoder: KVDecoder | None = None  # the acting KV cache, between start() and end()
        #: an optional mask on the sampled tokens (e.g. NLPO's top-p set, :class:`agents.nlpo.TopPMask`): an
        #: object with ``start(query_ids, query_mask)``, ``step(tokens, inserted)``, ``end()`` and, after start/step,
        #: ``allowed`` (B, V) bool; acting samples from the logits renormalised over the allowed tokens
        self.action_mask: Any = None
        self.compute_dtype: torch.dtype = torch.float32  # see set_dtype: bfloat16 = every forward under autocast

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "default", tokenizer: Any = None,
                        **kwargs: Any) -> LMPolicy:
        """A policy from ``"default"`` (the shipped fine-tuned LM), ``"tiny"``, ``"tiny-t5"`` or a model directory.

        An encoder-decoder model (T5, BART, ...; ``"tiny-t5"``) gives a :class:`~agents.seq2seq.Seq2SeqPolicy`.

        A directory written by :meth:`save` restores the value head, the sampling settings (temperature,
        top_k, top_p) and a LoRA adapter (``adapter/``, see :meth:`save`) too. The tokenizer defaults to the one saved with the model, else the shipped one.
        """
        from textenv.models import load_causal_lm, load_tokenizer

        path = Path(str(name_or_path))
        if tokenizer is None:
            tokenizer = (load_tokenizer(path) if path.is_dir() and (path / "tokenizer_config.json").exists()
                         else load_tokenizer("default"))
        else:
            tokenizer = load_tokenizer(tokenizer)
        model = load_causal_lm(name_or_path, tokenizer=tokenizer)  # "tiny" is sized for this tokenizer
        if cls is LMPolicy and getattr(model.config, "is_encoder_decoder", False):
            from agents.seq2seq import Seq2SeqPolicy  # an encoder-decoder directory (or "tiny-t5")

            cls = Seq2SeqPolicy
        saved = path / "policy.json"
        if path.is_dir() and saved.exists():  # the sampling settings :meth:`save` wrote, unless given here
            from textenv.io import read_json

            settings = read_json(saved, "policy settings")
            if not isinstance(settings, dict) or set(settings) - {"temperature", "top_k", "top_p"}:
                raise ValueError(f"policy settings {str(saved)!r} must be an object with temperature, top_k "
                                 f"and top_p, got {settings!r:.80}")
            kwargs = {**settings, **kwargs}
        try:
            policy = cls(model, tokenizer, **kwargs)
        except (TypeError, ValueError) as exc:
            where = f" (from {str(saved)!r})" if path.is_dir() and saved.exists() else ""
            raise ValueError(f"bad policy settings{where}: {exc}") from None
        adapter = path / "adapter"
        if path.is_dir() and adapter.is_dir():
            policy.load_lora(adapter)
        head = path / "value_head.safetensors"
        if path.is_dir() and head.exists():
            from safetensors.torch import load_file

            try:
                policy.value_head.load_state_dict(load_file(str(head)))
            except Exception as exc:  # truncated, not safetensors, or the wrong shapes
                raise ValueError(f"cannot load the value head {str(head)!r}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}"[:400]) from None
        return policy

    def save(self, path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the LM (``save_pretrained``), tokenizer and value head into directory ``path``.

        With LoRA on, the LM written is the frozen base (a plain model directory) and ``adapter/`` holds the
        adapter (peft's ``save_pretrained``: ``adapter_config.json``, ``adapter_model.safetensors``).
        ``state_dict``: this policy's full state dict (``model.*`` and ``value_head.*`` keys) to write instead
        of its own tensors (an FSDP policy holds shards; :mod:`agents.fsdp` gathers them)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        head_sd = self.value_head.state_dict()
        model_sd = None
        if state_dict is not None:
            model_sd = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
            head_sd = {k[len("value_head."):]: v for k, v in state_dict.items() if k.startswith("value_head.")}
        with quiet_progress():
            if self.peft_model is None:
                self.model.save_pretrained(str(path), state_dict=model_sd)
            else:  # the frozen base as a plain model directory, and the adapter beside it
                self.model.save_pretrained(str(path), state_dict=base_state_dict(self.model))
                self.peft_model.save_pretrained(str(path / "adapter"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))
        save_file({k: v.detach().contiguous() for k, v in head_sd.items()},
                  str(path / "value_head.safetensors"))
        (path / "policy.json").write_text(json.dumps(
            {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}, indent=2))

    @property
    def lm_head(self) -> nn.Linear:
        """The LM's output layer (hidden state -> vocabulary logits)."""
        return _lm_head(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def ref_model(self) -> Any:
        """The frozen reference model, or None (no reference, or LoRA: see :attr:`has_reference`)."""
        return self.__dict__["ref_model"]

    @property
    def peft_model(self) -> Any:
        """The peft wrapper of :attr:`model` when LoRA is on, else None."""
        return self.__dict__["peft_model"]

    @property
    def has_reference(self) -> bool:
        """Whether :meth:`ref_logprobs` works: a reference model, or LoRA (the base without the adapters)."""
        return self.ref_model is not None or self.peft_model is not None

    @property
    def lora_settings(self) -> dict[str, Any] | None:
        """``{"r", "alpha", "target_modules"}`` of the LoRA adapter, or None when LoRA is off."""
        if self.peft_model is None:
            return None
        cfg = self.peft_model.peft_config["default"]
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
        return {"r": int(cfg.r), "alpha": float(cfg.lora_alpha), "target_modules": targets}

    # ------------------------------------------------------------------------------------ memory
    def enable_lora(self, r: int, alpha: float | None = None, target_modules: str | list[str] = "auto") -> LMPolicy:
        """Train a LoRA adapter (``peft``) of rank ``r`` and scale ``alpha / r`` (default alpha: ``2 r``)
        instead of the LM's weights, which are frozen; the value head stays trainable.

        ``target_modules``: ``"auto"`` (every linear layer of the blocks, by architecture, see
        :data:`LORA_TARGET_MODULES`), ``"all-linear"``, or module names (a list or a comma-separated string).
        The reference model is dropped: the reference is now this model with the adapters disabled.
        """
        if self.peft_model is not None:
            raise ValueError("LoRA is already enabled on this policy")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"lora_r must be an integer >= 1, got {r!r}")
        alpha = 2.0 * r if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"lora_alpha must be a finite number > 0, got {alpha!r}")
        try:
            import peft
        except ImportError:
            raise ImportError("LoRA needs peft: pip install 'textenv[lora]'") from None
        model_type = str(getattr(self.model.config, "model_type", ""))
        targets = resolve_lora_targets(model_type, target_modules)
        # peft annotates lora_alpha as int but scales by lora_alpha / r: a float alpha works (and is saved)
        config = peft.LoraConfig(r=r, lora_alpha=float(alpha), target_modules=targets,  # type: ignore[arg-type]
                                 lora_dropout=0.0, bias="none",
                                 fan_in_fan_out=model_type == "gpt2")  # GPT-2's Conv1D is (in, out)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
                peft_model = peft.get_peft_model(self.model, config)
        except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
            raise ValueError(f"lora_target_modules {target_modules!r} ({targets!r}) do not fit this "
                             f"{type(self.model).__name__}: {str(exc).splitlines()[0]}"[:400]) from None
        self._adopt_peft(peft_model)
        return self

    def load_lora(self, adapter_dir: str | os.PathLike[str]) -> LMPolicy:
        """Put the LoRA adapter saved in ``adapter_dir`` (by :meth:`save`) on this policy's LM, trainable."""
        path = Path(adapter_dir)
        if self.peft_model is not None:
            raise ValueError("LoRA is already enabled on this policy")
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (path / name).is_file():
                raise ValueError(f"LoRA adapter directory {str(path)!r} has no {name}")
        try:
            import peft
        except ImportError:
            raise ImportError(f"{str(path)!r} holds a LoRA adapter, which needs peft: "
                              f"pip install 'textenv[lora]'") from None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
                peft_model = peft.PeftModel.from_pretrained(self.model, str(path), is_trainable=True)
        except Exception as exc:  # a bad config, other shapes, a truncated file
            raise ValueError(f"cannot load the LoRA adapter {str(path)!r}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}"[:400]) from None
        self._adopt_peft(peft_model)
        return self

    def _adopt_peft(self, peft_model: Any) -> None:
        if peft_model.get_base_model() is not self.model:
            raise RuntimeError("peft wrapped a copy of the LM instead of injecting the adapter in place")
        self.__dict__["peft_model"] = peft_model  # kept out of the module tree: its modules are self.model's
        self.__dict__["ref_model"] = None  # the reference is the base: ref_logprobs disables the adapters

    def set_gradient_checkpointing(self, enabled: bool = True) -> LMPolicy:
        """Recompute the trunk's layer activations in the backward of training forwards (less memory, about a
        third more compute). Acting (the KV cache) and the reference are not affected."""
        if not isinstance(enabled, bool):
            raise ValueError(f"gradient_checkpointing must be a bool, got {enabled!r}")
        if enabled:
            if not getattr(self.model, "supports_gradient_checkpointing", False):
                raise ValueError(f"{type(self.model).__name__} does not support gradient checkpointing")
            # transformers 5.x renamed it activation_checkpointing_enable; earlier versions have only the old name
            kwargs = {"use_reentrant": False}  # no inputs that need grad (LoRA freezes the embeddings)
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif self.gradient_checkpointing:
            disable = getattr(self.model, "activation_checkpointing_disable", None) or \
                self.model.gradient_checkpointing_disable
            disable()
        self.gradient_checkpointing = enabled
        return self

    @contextlib.contextmanager
    def _checkpointed_layers(self) -> Iterator[None]:
        """While a training forward runs, mark the checkpointing layers as training (transformers only
        checkpoints a layer in training mode), leaving their dropout modules in eval."""
        layers = ([m for m in self.model.modules() if getattr(m, "gradient_checkpointing", False) is True
                   and not m.training] if self.gradient_checkpointing and torch.is_grad_enabled() else [])
        for m in layers:
            m.training = True
        try:
            yield
        finally:
            for m in layers:
                m.training = False

    def to(self, *args: Any, **kwargs: Any) -> LMPolicy:  # type: ignore[override]
        super().to(*args, **kwargs)
        if self.ref_model is not None:
            self.ref_model.to(*args, **kwargs)
        return self

    # ------------------------------------------------------------------------------------ precision
    def set_dtype(self, dtype: torch.dtype) -> LMPolicy:
        """Compute in ``dtype`` (``torch.float32`` or ``torch.bfloat16``); returns ``self``.

        bfloat16 is mixed precision: the trained weights (LM and value head) stay float32 master weights, so
        AdamW's states and small updates keep full precision, and every forward (acting, training, the
        reference) runs under ``torch.autocast(dtype=bfloat16)``: matmuls and their outputs in bf16, layer norms
        and the residual stream in float32 (autocast's rules). A
        reference that is a model of its own is frozen, so it is stored in bf16 (half its memory). Logits are
        cast to float32 before any log-softmax: log-probs, entropy, values and losses are float32.
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
        self.compute_dtype = dtype
        ref = self.ref_model
        if ref is not None and ref is not self.model and any(p.is_floating_point() for p in ref.parameters()):
            ref.to(dtype)
        return self

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this policy's forwards (a no-op in float32)."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    # ------------------------------------------------------------------------------------ trunk
    @staticmethod
    def _trunk(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
               ) -> Any:
        """A full forward of ``model``'s trunk without a cache (training, reference log-probs)."""
        return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False)

    def _sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float() / self.temperature  # (B, V)
        if self.top_k is not None:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None:
            sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > self.top_p
            logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)  # (B, V)
        actions = sample_categorical(logp, generator)  # (B,)
        return actions, logp.gather(-1, actions[:, None]).squeeze(-1)

    # ------------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def start(self, query_ids: torch.Tensor, query_mask: torch.Tensor, *, generator: torch.Generator | None = None,
              with_values: bool = True) -> StepOutput:
        """Run the left-padded prompts ``(B, P)``, fill the KV cache and sample the first tokens. With
        :attr:`share_prompt_prefix`, repeated prompts (a GRPO group's) run once and their cache is copied to
        their rows (``KVDecoder(share_prefix=True)``, which checks the architecture)."""
        self._decoder = KVDecoder(self.model.base_model, share_prefix=self.share_prompt_prefix)
        with self.autocast():
            out = self._decoder.start(query_ids, query_mask)
            if self.action_mask is not None:
                self.action_mask.start(query_ids, query_mask)
            return self._act(out.last_hidden_state[:, -1], generator, with_values)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None,
             with_values: bool = True, inserted: tuple[torch.Tensor, torch.Tensor] | None = None) -> StepOutput:
        """Feed the last sampled token of every slot ``(B,)`` through the cache and sample the next.

        ``inserted = (ids, mask)``, both ``(B, K)``: tokens the env appended after a slot's action (another
        speaker's turn; ``mask`` 1 on a row's first real ones, 0 after). They go through the cache right after
        the action, at the next positions, and the next token is sampled after the last of them: they are
        context, never sampled (a multi-turn env's contract, see :class:`textenv.env.TextGenEnv`).
        """
        if self._decoder is None:
            raise RuntimeError("call start() before step()")
        with self.autocast():
            h = feed_step(self._decoder, tokens, inserted)
            if self.action_mask is not None:
                self.action_mask.step(tokens, inserted)
            return self._act(h, generator, with_values)

    def _act(self, h: torch.Tensor, generator: torch.Generator | None, with_values: bool) -> StepOutput:
        logits = self._head_logits(h)  # (B, V)
        if self.action_mask is not None:
            logits = logits.masked_fill(~self.action_mask.allowed, float("-inf"))
        actions, logprobs = self._sample(logits, generator)
        values = self.value_head(h).squeeze(-1).float() if with_values else None
        return StepOutput(actions, logprobs, values)

    def _head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head's logits of the tokenizer's tokens only (``vocab_size``; a padded head has more rows)."""
        head = self.lm_head
        if head.weight.shape[0] == self.vocab_size:
            return head(h)
        bias = None if head.bias is None else head.bias[:self.vocab_size]
        return F.linear(h, head.weight[:self.vocab_size], bias)

    def end(self) -> None:
        """Free the KV cache."""
        self._decoder = None
        if self.action_mask is not None:
            self.action_mask.end()

    # ------------------------------------------------------------------------------------ training
    def _completion_hidden(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                           tokens: torch.Tensor) -> torch.Tensor:
        """The trunk's hidden states ``(B, T, H)`` before each completion token: one forward without a cache,
        or, when rows repeat prompts, the shared-prompt forward (:meth:`_shared_prompt_hidden`)."""
        P = query_ids.shape[1]
        attn = torch.cat([query_mask.long(), torch.ones_like(tokens)], dim=1)  # (B, P+T)
        distinct = self._distinct_prompts(model, query_ids, query_mask)
        with self._checkpointed_layers():
            if distinct is not None:
                return self._shared_prompt_hidden(model, *distinct, tokens, attn)
            ids = torch.cat([query_ids, tokens], dim=1)  # (B, P+T)
            out = self._trunk(model, ids, attn, positions_from_mask(attn))
        return out.last_hidden_state[:, P - 1:-1]  # (B, T, H): the state before each completion token

    def _distinct_prompts(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(prompt_ids (U, P), prompt_mask (U, P), inverse (B,))``, the batch's U distinct prompts (ids and
        mask alike) and each row's index among them, when the shared-prompt forward applies and U < B;
        else None (see :attr:`share_prompt_prefix`)."""
        if not self.share_prompt_prefix or not supports_shared_prefix(model):
            return None
        if self.gradient_checkpointing and torch.is_grad_enabled():  # the layers would drop the cache
            return None
        from agents.fsdp import is_sharded

        if is_sharded(self):  # FSDP's hooks gather the blocks per forward of a sharded policy: not tried
            return None
        return distinct_rows(query_ids, query_mask)

    @staticmethod
    def _shared_prompt_hidden(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                              inverse: torch.Tensor, tokens: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The hidden states of :meth:`_completion_hidden` with the trunk run once on the U distinct prompts
        (with a cache; under grad its K/V carry the graph), the cache expanded to the B rows by ``inverse``
        (autograd sums a prompt's gradients over its rows), then the completions ``tokens[:, :-1]`` after it
        with the full mask ``attn`` ``(B, P+T)`` and their positions from it."""
        from transformers import DynamicCache

        trunk = model.base_model
        P, T = prompt_ids.shape[1], tokens.shape[1]
        cache = DynamicCache(config=trunk.config)
        out = trunk(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                    position_ids=positions_from_mask(prompt_mask), use_cache=True, **cache_kwargs(trunk, cache))
        first = out.last_hidden_state[inverse, -1:]  # (B, 1, H): the state before the first completion token
        if T == 1:
            return first
        cache.batch_select_indices(inverse)  # (U, heads, P, d) -> (B, heads, P, d) per layer
        attn = attn[:, :-1]  # (B, P+T-1): the state after the last token is never needed
        rest = trunk(input_ids=tokens[:, :-1], attention_mask=attn, position_ids=positions_from_mask(attn)[:, P:],
                     use_cache=True, **cache_kwargs(trunk, cache)).last_hidden_state  # (B, T-1, H)
        return torch.cat([first, rest], dim=1)  # (B, T, H)

    def _completion_logits(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                           tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole ``(B, T, V)`` float32 logits and ``(B, T, H)`` hidden states; for tests and probes only
        (training goes through :func:`chunked_logps_entropy`, which never builds them)."""
        h = self._completion_hidden(model, query_ids, query_mask, tokens)
        head = _lm_head(model)
        bias = None if head.bias is None else head.bias[:self.vocab_size]
        logits = F.linear(h, head.weight[:self.vocab_size], bias).float() / self.temperature  # (B, T, V)
        return logits, h

    def per_token_logps(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                        mask: torch.Tensor) -> PerTokenLogps:
        """Log-probs, values and entropy of completion ``tokens`` ``(B, T)`` after left-padded prompts, with
        grad (the training forward).

        ``mask`` marks real completion tokens; positions after an episode's end get values too, which the
        losses mask out. The logits are computed in chunks of :attr:`logits_chunk` tokens (see
        :func:`chunked_logps_entropy`).
        """
        with self.autocast():
            h = self._completion_hidden(self.model, query_ids, query_mask, tokens)
            logprobs, entropy = chunked_logps_entropy(h, tokens, self.lm_head, temperature=self.temperature,
                                                      vocab_size=self.vocab_size, chunk_tokens=self.logits_chunk)
            values = self.value_head(h).squeeze(-1).float()  # (B, T); h is bf16 under autocast
        # tensors of their own, not views: FSDP hooks the backward of a sharded policy's outputs, which an
        # in-place op on a view would bypass (and FSDP warns of views on every call)
        return PerTokenLogps(*(t if t._base is None else t.clone() for t in (logprobs, values, entropy)))

    @torch.no_grad()
    def ref_logprobs(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs ``(B, T)`` of ``tokens`` under the frozen reference model (with LoRA: this
        model with its adapters disabled)."""
        if self.peft_model is not None:
            with self.peft_model.disable_adapter():
                return self._ref_logprobs(self.model, query_ids, query_mask, tokens)
        if self.ref_model is None:
            raise RuntimeError("this policy was built with with_reference=False")
        from agents.fsdp import gathered_frozen

        with gathered_frozen(self.ref_model):  # a reference sharded under FSDP is gathered for this forward
            return self._ref_logprobs(self.ref_model, query_ids, query_mask, tokens)

    def _ref_logprobs(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                      tokens: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            h = self._completion_hidden(model, query_ids, query_mask, tokens)
            logprobs, _ = chunked_logps_entropy(h, tokens, _lm_head(model), temperature=self.temperature,
                                                vocab_size=self.vocab_size, chunk_tokens=self.logits_chunk,
                                                with_entropy=False)
        return logprobs


def resolve_lora_targets(model_type: str, target_modules: str | list[str] = "auto") -> str | list[str]:
    """The LoRA target modules for ``target_modules`` on a ``model_type`` model: ``"auto"`` gives
    :data:`LORA_TARGET_MODULES` of the architecture (``"all-linear"`` for others); a comma-separated string
    or list gives those names.

    Example:
        >>> resolve_lora_targets("gpt2")
        ['c_attn', 'c_proj', 'c_fc']
    """
    if isinstance(target_modules, str):
        if target_modules == "auto":
            return list(LORA_TARGET_MODULES[model_type]) if model_type in LORA_TARGET_MODULES else "all-linear"
        if target_modules == "all-linear":
            return "all-linear"
        names = [n.strip() for n in target_modules.split(",")]
    elif isinstance(target_modules, (list, tuple)) and all(isinstance(n, str) for n in target_modules):
        names = [n.strip() for n in target_modules]
    else:
        raise ValueError(f"lora_target_modules must be 'auto', 'all-linear' or module names, got {target_modules!r}")
    if not names or any(not n or not n.replace("_", "").replace(".", "").isalnum() for n in names):
        raise ValueError(f"lora_target_modules must be 'auto', 'all-linear' or comma-separated module names, "
                         f"got {target_modules!r}")
    return names


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a model with LoRA layers injected (peft), as the plain model's: the adapters'
    tensors dropped and ``base_layer.`` removed from the wrapped layers' names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if any(part.startswith("lora_") for part in key.split(".")):
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out
