"""One KV-cached decoder for every place that samples from a causal LM token by token.

:class:`KVDecoder` owns a batch's KV cache, the attention mask over its cached columns and each row's last
position, and runs a transformers model (a causal LM, or its trunk ``model.base_model``) over new columns:

- :meth:`KVDecoder.start`: the prompts (left- or right-padded, ``(B, P)``), positions from the mask;
- :meth:`KVDecoder.step`: one token per row at the next position (the usual decode step);
- :meth:`KVDecoder.extend`: W new columns per row with given positions and mask, optionally masking out a
  row's old columns (a row that restarts inside a running batch, as the SB3 policy's auto-reset needs).

Its users: ``agents.policy.LMPolicy`` acting (start/step/end), the SB3 policy's cached features
(``agents.sb3``), and ``textenv build-defaults``' sampling (:func:`sample_tokens`). Positions always come
from the attention mask (:func:`positions_from_mask`), so cached forwards see the positions a full forward
sees. :func:`cache_kwargs` is the one place that knows the cache argument's name.

Grouped batches (issue 15): ``KVDecoder(model, share_prefix=True)`` runs a prefill whose rows repeat prompts
(GRPO's G completions per prompt) on the distinct prompts only and copies their cache to the rows
(:func:`distinct_rows`, :func:`supports_shared_prefix`); the training forward of ``agents.policy`` shares
prompts with the same two functions.

Example:
    >>> import torch
    >>> from transformers import GPT2LMHeadModel
    >>> from textenv.models import tiny_gpt2_config
    >>> model = GPT2LMHeadModel(tiny_gpt2_config(64, n_layer=1, n_embd=32, n_head=2)).eval()
    >>> dec = KVDecoder(model)
    >>> out = dec.start(torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))
    >>> out = dec.step(out.logits[:, -1].argmax(-1))
    >>> dec.attention_mask.shape, dec.positions.tolist()
    (torch.Size([2, 4]), [2, 3])
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SHARED_PREFIX_MODEL_TYPES", "KVDecoder", "cache_arg_name", "cache_kwargs", "distinct_rows",
           "positions_from_mask", "sample_categorical", "sample_tokens", "supports_shared_prefix"]

#: ``config.model_type`` of the models whose repeated prompts may be run once and their KV cache copied to
#: the rows (the prefill of :class:`KVDecoder` with ``share_prefix``, the training forward of
#: ``agents.policy.LMPolicy`` with ``share_prompt_prefix``): a decoder whose forward over cached columns
#: equals its full forward given the mask and position ids (tests/test_shared_prefix.py checks each); layers
#: with sliding windows are excluded at run time
SHARED_PREFIX_MODEL_TYPES = frozenset({"gpt2", "llama", "qwen2", "qwen3"})


@functools.lru_cache(maxsize=64)
def _cache_arg(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_arg_name(model: Any) -> str:
    """The name of the KV-cache argument ``model.forward`` takes: ``cache`` in transformers 5.x (which
    deprecated the old name), ``past_key_values`` before. Looked up once per model class."""
    return _cache_arg(type(model).forward)


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{cache_arg_name(model): cache}``, to splat into ``model(...)``. The cache object is updated in
    place by the forward."""
    return {cache_arg_name(model): cache}


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids ``(B, L)`` for a padded batch: each row counts its real tokens from 0 (pads get the
    position of the real token before them, or 0), so left padding, right padding and holes all give the
    positions the model saw in training."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def supports_shared_prefix(model: nn.Module) -> bool:
    """Whether ``model`` (a causal LM or its trunk) may share a repeated prompt's KV cache between rows (see
    :data:`SHARED_PREFIX_MODEL_TYPES`): a supported architecture whose layers all attend to every column."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SHARED_PREFIX_MODEL_TYPES:
        return False
    layer_types = getattr(config, "layer_types", None) or ()
    return not getattr(config, "is_encoder_decoder", False) and all(t == "full_attention" for t in layer_types)


def distinct_rows(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(ids (U, P), mask (U, P), inverse (B,))``: the U distinct rows of padded prompts ``(B, P)`` (ids and
    mask alike: the same tokens with other padding are another row) and each row's index among them, when
    some row repeats (U < B); None when every row is distinct or there is nothing to share (B < 2, P = 0)."""
    B, P = input_ids.shape
    if B < 2 or P == 0:
        return None
    key = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)  # (B, 2P)
    rows, inverse = torch.unique(key, dim=0, return_inverse=True)  # (U, 2P), (B,)
    if rows.shape[0] == B:
        return None
    return rows[:, :P], rows[:, P:].to(attention_mask.dtype), inverse


def _select_rows(out: Any, rows: Tensor) -> Any:
    """``out`` (a transformers ``ModelOutput``) with every per-row field indexed by ``rows`` (B,): tensors
    and tuples of tensors (``hidden_states``, ``attentions``); the cache (already expanded) and None as
    they are."""
    def pick(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0:
            return value[rows]
        if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
            return tuple(v[rows] for v in value)
        return value

    return type(out)(**{key: pick(value) for key, value in out.items()})


def sample_categorical(logp: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row from log-probs ``(B, V)``.

    On CPU by inverse CDF (one uniform number per row): ``torch.multinomial`` draws an exponential for every
    vocabulary entry, which costs about 20% of a small model's decode step there. Elsewhere multinomial.
    Tokens of probability 0 are never drawn either way.
    """
    if logp.device.type != "cpu":
        return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    cdf = logp.exp().cumsum(-1, dtype=torch.float64)  # (B, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64)  # (B, 1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (B, 1)
    return idx.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


class KVDecoder:
    """Incremental forwards of ``model`` over a batch with one KV cache (see the module docstring).

    ``model`` is any transformers model taking ``input_ids``, ``attention_mask``, ``position_ids`` and a
    cache: a causal LM (the output has ``.logits``) or its trunk (``.last_hidden_state``). Every method
    returns the model's output for the new columns; the caller picks the rows and heads it needs.

    State, after :meth:`start`: ``cache`` (C columns), ``attention_mask`` ``(B, C)`` over them (int64, 0 on
    pads and dead columns) and ``positions`` ``(B,)``, each row's position of its last fed column.

    ``share_prefix``: when the prompts given to :meth:`start` repeat (ids and mask alike, see
    :func:`distinct_rows`) and the architecture allows it (:func:`supports_shared_prefix`; others take the
    full prefill), the prefill runs the U distinct prompts only and copies their cache to the B rows; its
    output is expanded to the B rows, so callers see what the full prefill gives (to float rounding).
    :meth:`step` and :meth:`extend` are the same either way.
    """

    def __init__(self, model: nn.Module, share_prefix: bool = False) -> None:
        if not isinstance(share_prefix, bool):
            raise ValueError(f"share_prefix must be a bool, got {share_prefix!r}")
        self.model: Any = model
        #: run a prefill's repeated prompts once (see the class docstring)
        self.share_prefix = share_prefix
        self.cache: Any = None
        self.attention_mask: Tensor | None = None
        self.positions: Tensor | None = None

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (and :meth:`reset` not since)."""
        return self.cache is not None

    @property
    def num_columns(self) -> int:
        """C, the number of cached columns (dead ones included; 0 before :meth:`start`)."""
        return 0 if self.attention_mask is None else int(self.attention_mask.shape[-1])

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **cache_kwargs(self.model, self.cache))

    def start(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        """Run the padded prompts ``(B, P)`` into a fresh cache; positions from ``attention_mask``. With
        ``share_prefix``, repeated prompts run once (see the class docstring)."""
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.attention_mask = attention_mask.long()
        pos = positions_from_mask(self.attention_mask)  # (B, P)
        distinct = None
        if self.share_prefix and supports_shared_prefix(self.model):
            distinct = distinct_rows(input_ids, self.attention_mask)
        if distinct is None:
            out = self._forward(input_ids, self.attention_mask, pos)
        else:
            ids, mask, inverse = distinct  # (U, P), (U, P), (B,)
            out = self._forward(ids, mask, positions_from_mask(mask))
            self.cache.batch_select_indices(inverse)  # (U, heads, P, d) -> (B, heads, P, d) per layer
            out = _select_rows(out, inverse)
        self.positions = pos[:, -1]
        return out

    def step(self, tokens: Tensor) -> Any:
        """Feed one token per row ``(B,)`` at each row's next position (every row attends to it)."""
        attn, pos = self._state()
        self.attention_mask = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)  # (B, C + 1)
        self.positions = pos + 1
        return self._forward(tokens[:, None], self.attention_mask, self.positions[:, None])

    def extend(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor,
               keep: Tensor | None = None) -> Any:
        """Feed W new columns per row: ``input_ids``, ``position_ids`` and ``attention_mask`` ``(B, W)``.

        ``keep`` ``(B,)`` bool: rows whose cached columns stay visible; the others' old columns are masked
        out (they start over inside the new columns). ``positions`` becomes each row's position at its last
        real new column.
        """
        attn, _ = self._state()
        old = attn if keep is None else attn * keep[:, None].to(attn.dtype)  # (B, C)
        new_attn = attention_mask.to(attn.dtype)  # (B, W)
        last = attention_mask.shape[1] - 1 - new_attn.flip(-1).argmax(-1)  # (B,) last real new column
        self.attention_mask = torch.cat([old, new_attn], dim=-1)  # (B, C + W)
        self.positions = position_ids.gather(1, last[:, None]).squeeze(1)
        try:
            return self._forward(input_ids, self.attention_mask, position_ids)
        except BaseException:
            self.reset()  # the cache may be half-updated
            raise

    def reset(self) -> None:
        """Free the cache."""
        self.cache = self.attention_mask = self.positions = None

    def _state(self) -> tuple[Tensor, Tensor]:
        if self.cache is None or self.attention_mask is None or self.positions is None:
            raise RuntimeError("KVDecoder: call start() before step() or extend()")
        return self.attention_mask, self.positions


@torch.no_grad()
def sample_tokens(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
                  sample: Callable[[Tensor], Tensor], eos_token_id: int | Sequence[int] | None) -> list[list[int]]:
    """Sample up to ``max_new_tokens`` tokens per row from causal LM ``model`` after padded prompts ``(B, P)``.

    ``sample`` maps next-token logits ``(B, V)`` to tokens ``(B,)``. A row stops after its first
    ``eos_token_id`` (kept in its list; a sequence of ids: the first of any of them, e.g. EOS and a turn
    separator); decoding stops when every row has. Returns one list per row.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B = input_ids.shape[0]
    stop_ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    dec = KVDecoder(model)
    logits = dec.start(input_ids, attention_mask).logits[:, -1]  # (B, V)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    outs: list[list[int]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        tok = sample(logits)  # (B,)
        for i, token in enumerate(tok.tolist()):
            if not done[i]:
                outs[i].append(token)
        for stop_id in stop_ids:
            done |= tok == stop_id
        if done.all() or step == max_new_tokens - 1:
            break
        logits = dec.step(tok).logits[:, -1]
    dec.reset()
    return outs
