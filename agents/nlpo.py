"""NLPO: natural language policy optimisation (Ramamurthy et al. 2023, "Is Reinforcement Learning (Not) for
Natural Language Processing?", RL4LMs): PPO whose policy may only pick tokens in the top-p set of a masking
policy, a copy of the policy synced every ``mask_update_every`` iterations.

At every state the masking policy pi_psi (the copy) ranks the vocabulary; the smallest set of its most likely
tokens whose probability reaches ``top_p`` (at least the most likely one, :func:`top_p_mask`) is allowed,
and the policy acts with its own logits renormalised over that set. The training forward applies the same
mask (the masking policy does not change between a rollout and its update), so the stored log-probs, the
PPO ratios and the entropy are those of the masked policy; the KL to the reference is the masked policy's
(its log-probs) against the unmasked reference. The env's action space stays ``Discrete(V)``: the mask comes
from the agent (:attr:`agents.policy.LMPolicy.action_mask`), and the env never sees it.

Everything else is :class:`agents.ppo.PPO` (its config fields and defaults; RL4LMs' NLPO is PPO with this
mask). A checkpoint holds the policy; loading it starts the masking policy as a copy of the loaded policy.
The training forward builds the (minibatch, T, V) logits of both models, one row at a time.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from agents.policy import LMPolicy, PerTokenLogps, _lm_head, feed_step
from agents.ppo import PPO, PPOConfig
from agents.rollout import RolloutBatch
from textenv.decoding import KVDecoder


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The allowed tokens (bool, the shape of ``logits`` (..., V)): the most likely ones of softmax(logits)
    whose cumulative probability before them is at most ``top_p`` (so the set's mass reaches ``top_p`` and
    always holds the most likely token).

    Example: probabilities (0.5, 0.3, 0.15, 0.05), top_p 0.7 -> the first two; 0.9 -> the first three.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # (..., V): mass of the tokens ranked above
    keep_sorted = before <= top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


class TopPMask:
    """The masking policy of NLPO as an :attr:`~agents.policy.LMPolicy.action_mask`: a causal LM run with its
    own KV cache beside the policy's while acting; ``allowed`` is its top-p set at the current state."""

    def __init__(self, model: Any, top_p: float, vocab_size: int, temperature: float = 1.0) -> None:
        self.model = model
        self.model.eval()
        self.model.requires_grad_(False)
        self.top_p, self.vocab_size, self.temperature = float(top_p), int(vocab_size), float(temperature)
        self.allowed: torch.Tensor | None = None
        self._decoder: KVDecoder | None = None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The masking policy's logits of the tokenizer's tokens from its hidden states ``h`` (..., H)."""
        head = _lm_head(self.model)
        bias = None if head.bias is None else head.bias[:self.vocab_size]
        return F.linear(h, head.weight[:self.vocab_size], bias).float() / self.temperature

    @torch.no_grad()
    def start(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> None:
        self._decoder = KVDecoder(self.model.base_model)
        out = self._decoder.start(query_ids, query_mask)
        self.allowed = top_p_mask(self.logits(out.last_hidden_state[:, -1]), self.top_p)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, inserted: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Advance with the slots' last actions (and a multi-turn env's inserted tokens, as the policy does)."""
        if self._decoder is None:
            raise RuntimeError("TopPMask.step before start")
        self.allowed = top_p_mask(self.logits(feed_step(self._decoder, tokens, inserted)), self.top_p)

    def end(self) -> None:
        self._decoder, self.allowed = None, None

    def sync(self, model: Any) -> None:
        """Make the masking policy a copy of ``model``'s current weights."""
        self.model.load_state_dict(model.state_dict())


@dataclasses.dataclass
class NLPOConfig(PPOConfig):
    """NLPO hyperparameters: PPO's and the mask's (RL4LMs' ``top_mask`` and ``target_update_iterations``)."""

    top_p: float = 0.9  # probability mass of the masking policy's allowed tokens (RL4LMs' top_mask)
    mask_update_every: int = 5  # iterations between syncs of the masking policy with the policy

    def validate(self) -> None:
        super().validate()
        self.check_ints("mask_update_every")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


class NLPO(PPO):
    """PPO with NLPO's top-p masking policy; see the module docstring.

    Example:
        >>> agent = NLPO("TextGen-Sentiment-v0", batch_size=64, top_p=0.9).learn(1024)
    """

    Config = NLPOConfig
    config: NLPOConfig
    name = "nlpo"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pol = self.policy
        if type(pol).start is not LMPolicy.start or type(pol).step is not LMPolicy.step:
            raise ValueError(f"NLPO masks a decoder-only LMPolicy's acting; {type(pol).__name__} acts its own way "
                             f"(an encoder-decoder policy is not supported)")
        self.mask = TopPMask(copy.deepcopy(pol.model), self.config.top_p, pol.vocab_size, pol.temperature)
        pol.action_mask = self.mask
        self.mask_synced_at = self.iteration

    def token_logps(self, query_ids: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor,
                    mask: torch.Tensor) -> PerTokenLogps:
        """Log-probs, values and entropy of ``tokens`` under the masked policy (with grad), one row at a time."""
        pol = self.policy
        with pol.autocast():
            h = pol._completion_hidden(pol.model, query_ids, query_mask, tokens)  # (b, T, H)
            with torch.no_grad():
                h_mask = pol._completion_hidden(self.mask.model, query_ids, query_mask, tokens)
            values = pol.value_head(h).squeeze(-1).float()  # (b, T)
        logps, entropies = [], []
        for i in range(h.shape[0]):  # one (T, V) temporary at a time
            logits = pol._head_logits(h[i]).float() / pol.temperature  # (T, V)
            allowed = top_p_mask(self.mask.logits(h_mask[i]), self.mask.top_p)  # (T, V)
            logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # (T, V)
            logps.append(logp.gather(-1, tokens[i][:, None]).squeeze(-1))
            safe = logp.masked_fill(~allowed, 0.0)  # no 0 * -inf, in the forward or the backward
            entropies.append(-(safe.exp().masked_fill(~allowed, 0.0) * safe).sum(-1))
        # a padding token outside the mask has log-prob -inf: 0 there, so no loss term meets an inf
        logprobs = torch.where(mask.bool(), torch.stack(logps), torch.zeros((), device=h.device))
        return PerTokenLogps(logprobs, values, torch.stack(entropies))

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        out = super().update(batch)
        with torch.no_grad():  # the share of the vocabulary the mask allowed, at the rollout's first state
            allowed = top_p_mask(self.mask.logits(
                self.policy._completion_hidden(self.mask.model, batch.query_ids, batch.query_mask,
                                               batch.tokens[:, :1])[:, 0]), self.mask.top_p)
        out["mask/allowed_tokens"] = float(allowed.float().sum(-1).mean())
        if self.iteration + 1 - self.mask_synced_at >= self.config.mask_update_every:
            self.mask.sync(self.policy.model)
            self.mask_synced_at = self.iteration + 1
        return out

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "mask_synced_at": self.mask_synced_at}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        # the masking policy is rebuilt as a copy of the loaded policy: it was synced now
        self.mask.sync(self.policy.model)
        self.mask_synced_at = int(state.get("mask_synced_at", 0))
