"""`LMPolicy`: a causal LM with a value head on the shared trunk, acting with a KV cache.

Acting (:meth:`LMPolicy.start` / :meth:`LMPolicy.step` / :meth:`LMPolicy.end`) runs the trunk through
:class:`textenv.decoding.KVDecoder`, the one cached decoder of the project; training reads per-token
log-probs, values and entropy of whole completions from one forward (:meth:`LMPolicy.per_token_logps`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from agents.core import entropy_from_logits, logprobs_from_logits
from textenv.decoding import KVDecoder, positions_from_mask, sample_categorical
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


class LMPolicy(nn.Module):
    """A causal LM policy with a scalar value head on the last hidden state, and a frozen reference copy.

    Acting (:meth:`start` then :meth:`step`) keeps a KV cache for the batch, so each env step costs one token
    of forward pass per slot. :meth:`per_token_logps` gives per-token log-probs, values and entropy of given
    completions in one forward pass, for training; :meth:`ref_logprobs` does the same with the frozen
    reference model, for the KL term.

    Sampling is at ``temperature`` (1.0 by default: the log-probs are then those of the policy itself).
    ``top_k``/``top_p`` truncate the sampling distribution; the log-probs are those of the truncated
    distribution, which biases the KL to the reference (a warning says so).

    Example:
        >>> policy = LMPolicy.from_pretrained("default")
    """

    def __init__(self, model: nn.Module, tokenizer: Any, ref_model: nn.Module | None = None, *,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 with_reference: bool = True) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                                  or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
        if top_k is not None or top_p is not None:
            warnings.warn("top_k/top_p truncate the sampling distribution: log-probs and the KL to the "
                          "reference are those of the truncated policy (biased)", stacklevel=2)
        self.model: Any = fuse_activations(model)  # a transformers causal LM (any AutoModelForCausalLM)
        self.tokenizer = tokenizer
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        hidden = _lm_head(model).weight.shape[1]
        self.value_head = new_value_head(hidden)
        if ref_model is None and with_reference:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            fuse_activations(ref_model)
            ref_model.eval()
            ref_model.requires_grad_(False)
        # kept out of the module tree: it is frozen, not trained, not in state_dict / optimizer
        self.__dict__["ref_model"] = ref_model
        self._decoder: KVDecoder | None = None  # the acting KV cache, between start() and end()
        self.compute_dtype: torch.dtype = torch.float32  # see set_dtype: bfloat16 = every forward under autocast

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "default", tokenizer: Any = None,
                        **kwargs: Any) -> LMPolicy:
        """A policy from ``"default"`` (the shipped fine-tuned LM), ``"tiny"`` or a model directory.

        A directory written by :meth:`save` restores the value head and the sampling settings (temperature,
        top_k, top_p) too. The tokenizer defaults to the one saved with the model, else the shipped one.
        """
        from textenv.models import load_causal_lm, load_tokenizer

        path = Path(str(name_or_path))
        if tokenizer is None:
            tokenizer = (load_tokenizer(path) if path.is_dir() and (path / "tokenizer_config.json").exists()
                         else load_tokenizer("default"))
        else:
            tokenizer = load_tokenizer(tokenizer)
        model = load_causal_lm(name_or_path, tokenizer=tokenizer)  # "tiny" is sized for this tokenizer
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
        head = path / "value_head.safetensors"
        if path.is_dir() and head.exists():
            from safetensors.torch import load_file

            try:
                policy.value_head.load_state_dict(load_file(str(head)))
            except Exception as exc:  # truncated, not safetensors, or the wrong shapes
                raise ValueError(f"cannot load the value head {str(head)!r}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}"[:400]) from None
        return policy

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the LM (``save_pretrained``), tokenizer and value head into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with quiet_progress():
            self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        save_file({k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()},
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
        return self.__dict__["ref_model"]

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
        """Run the left-padded prompts ``(B, P)``, fill the KV cache and sample the first tokens."""
        self._decoder = KVDecoder(self.model.base_model)
        with self.autocast():
            out = self._decoder.start(query_ids, query_mask)
            return self._act(out.last_hidden_state[:, -1], generator, with_values)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None,
             with_values: bool = True) -> StepOutput:
        """Feed the last sampled token of every slot ``(B,)`` through the cache and sample the next."""
        if self._decoder is None:
            raise RuntimeError("call start() before step()")
        with self.autocast():
            out = self._decoder.step(tokens)
            return self._act(out.last_hidden_state[:, -1], generator, with_values)

    def _act(self, h: torch.Tensor, generator: torch.Generator | None, with_values: bool) -> StepOutput:
        logits = self.lm_head(h)  # (B, V)
        actions, logprobs = self._sample(logits, generator)
        values = self.value_head(h).squeeze(-1).float() if with_values else None
        return StepOutput(actions, logprobs, values)

    def end(self) -> None:
        """Free the KV cache."""
        self._decoder = None

    # ------------------------------------------------------------------------------------ training
    def _completion_logits(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                           tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        P = query_ids.shape[1]
        ids = torch.cat([query_ids, tokens], dim=1)  # (B, P+T)
        attn = torch.cat([query_mask.long(), torch.ones_like(tokens)], dim=1)  # (B, P+T)
        out = self._trunk(model, ids, attn, positions_from_mask(attn))
        h = out.last_hidden_state[:, P - 1:-1]  # (B, T, H): the state before each completion token
        logits = _lm_head(model)(h).float() / self.temperature  # (B, T, V)
        return logits, h

    def per_token_logps(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                        mask: torch.Tensor) -> PerTokenLogps:
        """Log-probs, values and entropy of completion ``tokens`` ``(B, T)`` after left-padded prompts, with
        grad (the training forward).

        ``mask`` marks real completion tokens; positions after an episode's end get values too, which the
        losses mask out.
        """
        with self.autocast():
            logits, h = self._completion_logits(self.model, query_ids, query_mask, tokens, mask)
            values = self.value_head(h).squeeze(-1).float()  # (B, T); h is bf16 under autocast
        return PerTokenLogps(logprobs_from_logits(logits, tokens), values, entropy_from_logits(logits))

    @torch.no_grad()
    def ref_logprobs(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs ``(B, T)`` of ``tokens`` under the frozen reference model."""
        if self.ref_model is None:
            raise RuntimeError("this policy was built with with_reference=False")
        with self.autocast():
            logits, _ = self._completion_logits(self.ref_model, query_ids, query_mask, tokens, mask)
        return logprobs_from_logits(logits, tokens)
