"""`Seq2SeqPolicy`: an encoder-decoder LM (T5, BART, ...) as the policy of the native agents.

The env is the same as for a causal LM: the observation is the prompt followed by the generated tokens, the
action the next token. The policy reads the two parts differently: the **encoder** reads the prompt once per
episode (at :meth:`Seq2SeqPolicy.start`), and the **decoder** acts token by token with its own KV cache,
starting from the model's ``decoder_start_token_id``, cross-attending to the encoder's states. For training,
:meth:`Seq2SeqPolicy.per_token_logps` runs the encoder over the prompts and the decoder teacher-forced over
``[start] + tokens[:-1]``: the decoder state before each completion token, as :class:`~agents.policy.LMPolicy`
does with the trunk's state before each token. The value head reads the same decoder states. The reference
model, the KL, LoRA (peft; the reference is then the base with its adapters disabled), gradient checkpointing,
bf16 autocast and chunked log-probs work as for causal LMs, because everything above the hidden states is
shared with :class:`LMPolicy`.

Two architecture details are honoured, so the log-probs are exactly those of ``model(...).logits``:
T5 scales the decoder output by ``d_model ** -0.5`` before its tied LM head (``config.scale_decoder_outputs``),
and BART-style models add ``final_logits_bias`` to the logits. The encoder gets its prompt right-padded (the
env's rollouts left-pad prompts), because models with absolute positions (BART) would otherwise shift them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import torch
from torch import nn

from agents.policy import LMPolicy, PerTokenLogps, StepOutput, _lm_head, chunked_logps_entropy
from textenv.decoding import cache_kwargs


class _HeadView(NamedTuple):
    """The LM head as :func:`chunked_logps_entropy` reads it: a weight and the bias the logits get."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def is_encoder_decoder(model: Any) -> bool:
    """Whether ``model`` is a transformers encoder-decoder (its config says ``is_encoder_decoder``)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def right_align(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(B, P)`` ids and mask, moved to right padding (each row's tokens kept in order).

    Example:
        >>> right_align(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]))
        (tensor([[5, 6, 0]]), tensor([[1, 1, 0]]))
    """
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
    return ids.gather(1, order), mask.gather(1, order)


class Seq2SeqPolicy(LMPolicy):
    """An encoder-decoder LM with a value head on the decoder, and a frozen reference copy (see the module
    docstring). Built like :class:`LMPolicy`: ``Seq2SeqPolicy(T5ForConditionalGeneration(config), tokenizer)``;
    :meth:`LMPolicy.from_pretrained` returns one for a directory that holds an encoder-decoder model.

    Example:
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> from textenv.models import load_tokenizer, tiny_t5_config
        >>> tok = load_tokenizer("default")
        >>> policy = Seq2SeqPolicy(T5ForConditionalGeneration(tiny_t5_config(tok)), tok)
    """

    def __init__(self, model: nn.Module, tokenizer: Any, ref_model: nn.Module | None = None, **kwargs: Any) -> None:
        if not is_encoder_decoder(model):
            raise ValueError(f"Seq2SeqPolicy needs an encoder-decoder model (config.is_encoder_decoder), got "
                             f"{type(model).__name__}; use LMPolicy for a causal LM")
        for name in ("get_encoder", "get_decoder"):
            if not callable(getattr(model, name, None)):
                raise ValueError(f"{type(model).__name__} has no {name}(): not an encoder-decoder LM")
        config: Any = getattr(model, "config")  # noqa: B009 (checked by is_encoder_decoder)
        start = config.decoder_start_token_id
        if start is None:
            start = config.pad_token_id
        if start is None:
            raise ValueError(f"{type(model).__name__}'s config has neither decoder_start_token_id nor "
                             f"pad_token_id: the decoder cannot start")
        super().__init__(model, tokenizer, ref_model, **kwargs)
        self.decoder_start_token_id = int(start)
        self._encoded: tuple[torch.Tensor, torch.Tensor] | None = None  # acting: (encoder states, mask)
        self._cache: Any = None  # acting: the decoder's self- and cross-attention cache

    # ------------------------------------------------------------------------------------ the head
    def _head(self, model: Any) -> _HeadView:
        """``model``'s LM head restricted to the tokenizer's tokens, with BART's ``final_logits_bias``."""
        head = _lm_head(model)
        bias: torch.Tensor | None = head.bias
        extra = getattr(model, "final_logits_bias", None)
        if isinstance(extra, torch.Tensor):
            extra = extra.reshape(-1)[:head.weight.shape[0]]
            bias = extra if bias is None else bias + extra
        V = self.vocab_size
        return _HeadView(head.weight[:V], None if bias is None else bias[:V])

    @staticmethod
    def _scale(model: Any, h: torch.Tensor) -> torch.Tensor:
        """The decoder output as the LM head reads it (T5 rescales it when its head is tied)."""
        config = model.config
        scale = getattr(config, "scale_decoder_outputs", None)
        if scale is None:  # transformers before the flag: T5 scales exactly when the head is tied
            scale = config.model_type in ("t5", "mt5", "umt5", "longt5") and config.tie_word_embeddings
        return h * (config.d_model ** -0.5) if scale else h

    def _head_logits(self, h: torch.Tensor) -> torch.Tensor:
        head = self._head(self.model)
        return nn.functional.linear(h, head.weight, head.bias)

    # ------------------------------------------------------------------------------------ forwards
    def _encode(self, model: Any, query_ids: torch.Tensor, query_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = right_align(query_ids, query_mask.long())
        states = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return states, mask

    def _decode(self, model: Any, tokens: torch.Tensor, encoded: tuple[torch.Tensor, torch.Tensor],
                cache: Any = None) -> torch.Tensor:
        """The decoder's output ``(B, W, H)``, scaled for the head, for ``tokens`` ``(B, W)`` after ``cache``."""
        states, mask = encoded
        decoder = model.get_decoder()
        kwargs = {**cache_kwargs(decoder, cache), "use_cache": True} if cache is not None else {"use_cache": False}
        out = decoder(input_ids=tokens, encoder_hidden_states=states, encoder_attention_mask=mask, **kwargs)
        return self._scale(model, out.last_hidden_state)

    def _completion_hidden(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                           tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's states ``(B, T, H)`` before each completion token: encoder over the prompts, decoder
        teacher-forced over ``[start] + tokens[:-1]`` (one forward, no cache)."""
        start = tokens.new_full((tokens.shape[0], 1), self.decoder_start_token_id)
        inputs = torch.cat([start, tokens[:, :-1]], dim=1)  # (B, T)
        with self._checkpointed_layers():
            return self._decode(model, inputs, self._encode(model, query_ids, query_mask))

    def _completion_logits(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                           tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._completion_hidden(model, query_ids, query_mask, tokens)
        head = self._head(model)
        return nn.functional.linear(h, head.weight, head.bias).float() / self.temperature, h

    # ------------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def start(self, query_ids: torch.Tensor, query_mask: torch.Tensor, *, generator: torch.Generator | None = None,
              with_values: bool = True) -> StepOutput:
        """Encode the left-padded prompts ``(B, P)`` once, start the decoder and sample the first tokens."""
        from transformers import DynamicCache, EncoderDecoderCache

        with self.autocast():
            self._encoded = self._encode(self.model, query_ids, query_mask)
            self._cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            start = query_ids.new_full((query_ids.shape[0], 1), self.decoder_start_token_id)
            h = self._decode(self.model, start, self._encoded, self._cache)
            return self._act(h[:, -1], generator, with_values)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None,
             with_values: bool = True, inserted: tuple[torch.Tensor, torch.Tensor] | None = None) -> StepOutput:
        """Feed each slot's last sampled token ``(B,)`` through the decoder's cache and sample the next.

        Multi-turn tasks (``inserted``, the env's tokens between turns) are not supported by encoder-decoder
        policies yet: rows whose insertions differ in length would need padding inside the decoder's cache,
        which shifts BART's absolute positions. That is a ``NotImplementedError``."""
        if inserted is not None:
            raise NotImplementedError("an encoder-decoder policy (Seq2SeqPolicy) cannot act in a multi-turn task "
                                      "yet (the env inserted tokens between turns); use a causal LM policy")
        if self._encoded is None:
            raise RuntimeError("call start() before step()")
        with self.autocast():
            h = self._decode(self.model, tokens[:, None], self._encoded, self._cache)
            return self._act(h[:, -1], generator, with_values)

    def end(self) -> None:
        """Free the encoder states and the decoder's cache."""
        super().end()
        self._encoded = self._cache = None

    # ------------------------------------------------------------------------------------ training
    def per_token_logps(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                        mask: torch.Tensor) -> PerTokenLogps:
        """Log-probs, values and entropy of completion ``tokens`` ``(B, T)``, with grad (see
        :meth:`LMPolicy.per_token_logps`)."""
        with self.autocast():
            h = self._completion_hidden(self.model, query_ids, query_mask, tokens)
            logprobs, entropy = chunked_logps_entropy(h, tokens, cast(nn.Linear, self._head(self.model)),
                                                      temperature=self.temperature, chunk_tokens=self.logits_chunk)
            values = self.value_head(h).squeeze(-1).float()
        return PerTokenLogps(logprobs, values, entropy)

    def _ref_logprobs(self, model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor,
                      tokens: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            h = self._completion_hidden(model, query_ids, query_mask, tokens)
            logprobs, _ = chunked_logps_entropy(h, tokens, cast(nn.Linear, self._head(model)),
                                                temperature=self.temperature, chunk_tokens=self.logits_chunk,
                                                with_entropy=False)
        return logprobs
