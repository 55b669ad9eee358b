"""stable-baselines3 integration: a causal LM as an SB3 actor-critic policy, and a VecEnv of textenv envs.

stable-baselines3 runs unmodified::

    from stable_baselines3 import PPO
    from agents.sb3 import LM_LEARNING_RATE, LMActorCriticPolicy, make_sb3_env

    env = make_sb3_env("TextGen-v0", n_envs=8, seed=0)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"model": "default"},
                learning_rate=LM_LEARNING_RATE, n_steps=64, batch_size=64)
    model.learn(10_000)

How the LM maps onto SB3's actor-critic (``ActorCriticPolicy``):

- ``features_extractor`` is :class:`LMFeaturesExtractor`: the LM's trunk (``model.base_model``) run over the
  right-padded ``input_ids`` with positions from ``attention_mask``; the features are the last hidden state
  at the last non-pad position, shape ``(B, D)``.
- ``action_net`` *is* the LM head (``model.get_output_embeddings()``, the same module, tied weights kept), so
  the action distribution is SB3's ``CategoricalDistribution`` over the LM's next-token logits (temperature 1).
- ``value_net`` is a fresh ``Linear(D, 1)`` on the same features, initialised small
  (:func:`agents.policy.new_value_head`, as :class:`agents.policy.LMPolicy`'s value head) so that the first advantages are the returns
  rather than a random projection of the LM's large hidden states. By default it reads *detached* features
  (``detach_value=True``): the value loss trains the head only, and the LM trunk is moved by the policy
  gradient alone. With one optimizer and a shared trunk, a fresh critic's regression error otherwise flows
  into the LM: measured on the keywords task, SB3 A2C with the value gradient in the trunk lost gold score
  on most seeds, and with it detached raised it on every seed. ``mlp_extractor`` is the identity.
- Nothing pretrained is re-initialised (no orthogonal init), and observations are read as integers, not
  through SB3's float preprocessing.

Acting (``forward`` without grad, as in SB3's rollout collection, and ``predict``) keeps a KV cache: one
:class:`textenv.decoding.KVDecoder` (the project's one cached decoder) for the whole batch, plus the
observation it was built from. Each call sorts the rows:

- a row whose observation extends its previous one by k >= 1 tokens appended after its old last token
  feeds only those: its action (k = 1) or, in a multi-turn env, its action and the tokens the env inserted
  after it (the other speaker's turn), which thus go through the cache as context;
- any other row (a new episode after SB3's auto-reset, or anything unexpected) feeds its whole context, and
  its old cached columns are masked out.

If every row extends by one token, the step is one token per row ("one_token_steps"). Otherwise one forward
of width W (the longest replaced context, or the most new tokens of an extending row) serves the batch
("mixed_steps"). If none do, or the dead columns would
make the cache longer than ``2 L``, the batch is recomputed from scratch and the cache rebuilt compactly
("full_forwards"). ``policy.cache_stats`` counts the three. Mixed steps matter because a single early EOS
puts the slots out of step for good, and an all-or-nothing cache would then never be used again.
Positions come from the attention mask and the cache's attention mask tracks the holes, so cached logits
equal full-forward logits (tested to 1e-4).

Multi-turn envs (text inserted between the agent's turns, see :class:`textenv.env.TextGenEnv`): SB3 stores
one (observation, action) pair per env step, and the env's step takes exactly one action, the agent's
token; the inserted tokens only ever appear inside the next observation. So they are never actions in the
rollout buffer, never in SB3's log-probs, entropy or losses, and SB3's GAE runs over the agent's steps
only (the inserted tokens are part of the state transition). The features of a step are the hidden state
after the last inserted token, exactly the state a full forward over the observation gives.

Training (``evaluate_actions``) runs full forwards with grad and never touches the cache. The cache is
dropped whenever the weights may have changed: an optimizer step, ``train(True)`` (SB3 calls it at the
start of every update), ``load_state_dict`` and device moves. If you edit the weights by hand, call
:meth:`LMActorCriticPolicy.reset_cache`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from agents.policy import new_value_head
from textenv.decoding import KVDecoder, positions_from_mask

__all__ = ["LM_LEARNING_RATE", "LMActorCriticPolicy", "LMFeaturesExtractor", "make_sb3_env"]

#: A learning rate suited to fine-tuning a pretrained LM with PPO/A2C (SB3's defaults, 3e-4 for PPO and
#: 7e-4 for A2C, are tuned for small MLPs and tend to wreck a pretrained LM). Not forced: pass it as
#: ``PPO(..., learning_rate=LM_LEARNING_RATE)``; anything in 1e-5..1e-4 is a reasonable start, and a
#: randomly initialised tiny model can take 1e-3.
LM_LEARNING_RATE = 1e-5


def make_sb3_env(env_id: str = "TextGen-v0", n_envs: int = 8, seed: int | None = None, *,
                 vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] | None = None,
                 **env_kwargs: Any) -> VecEnv:
    """An SB3 ``VecEnv`` of ``n_envs`` copies of ``gym.make(env_id, **env_kwargs)``, each in a ``Monitor``.

    ``Monitor`` is what makes SB3 log ``rollout/ep_rew_mean`` and ``ep_len_mean``. With ``seed``, env ``i``
    is reset with ``seed + i`` and its action space seeded the same way (as ``make_vec_env`` does).
    ``vec_env_cls`` defaults to ``DummyVecEnv``, which is the right choice here: the work is in the policy,
    and the envs share one process's cached tokenizer and reward model. (SB3's own ``make_vec_env`` works too:
    the env supports the ``render_mode="rgb_array"`` it passes.)

    Example:
        >>> env = make_sb3_env("TextGen-Arithmetic-v0", n_envs=4, seed=0, reward_model="gold")
        >>> obs = env.reset()
        >>> obs["input_ids"].shape[0]
        4
    """
    import textenv  # noqa: F401  (registers the env ids)

    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}")

    def make_env(rank: int) -> Callable[[], gym.Env]:
        def _init() -> gym.Env:
            env = gym.make(env_id, **env_kwargs)
            if seed is not None:
                env.action_space.seed(seed + rank)
            return Monitor(env)
        return _init

    vec_env = (vec_env_cls or DummyVecEnv)([make_env(i) for i in range(n_envs)])
    vec_env.seed(seed)
    return vec_env


def _ids_and_mask(obs: PyTorchObs) -> tuple[Tensor, Tensor]:
    """``input_ids`` and ``attention_mask`` as int64 ``(B, L)`` tensors, whatever dtype SB3 handed over
    (its rollout buffer and preprocessing may have turned them into floats)."""
    if not isinstance(obs, dict) or "input_ids" not in obs or "attention_mask" not in obs:
        raise ValueError("LMActorCriticPolicy needs Dict observations with 'input_ids' and 'attention_mask', "
                         f"got {type(obs).__name__}")
    out = []
    for key in ("input_ids", "attention_mask"):
        x = torch.as_tensor(obs[key])
        if x.is_floating_point():
            x = x.round()
        x = x.long()
        out.append(x.reshape(1, -1) if x.dim() == 1 else x)
    return out[0], out[1]


def _last_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of ``mask`` ``(B, L)`` -> ``(B,)``."""
    L = mask.shape[-1]
    return L - 1 - mask.flip(-1).argmax(-1)


class LMFeaturesExtractor(BaseFeaturesExtractor):
    """SB3 features extractor around a causal LM: the trunk's last hidden state at the last non-pad
    position, ``(B, D)``. ``self.lm`` is the whole causal LM (its head is the policy's ``action_net``).

    Positions are ``cumsum(attention_mask) - 1``, so right padding (textenv's layout) and masks with holes
    both give the positions the model saw in training.
    """

    def __init__(self, observation_space: spaces.Dict, lm: PreTrainedModel) -> None:
        head = lm.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise ValueError(f"the LM's output embeddings must be an nn.Linear, got {type(head).__name__}")
        super().__init__(observation_space, features_dim=head.in_features)
        self.lm = lm

    def full(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Features ``(B, D)`` from a full forward over ``(B, L)`` ids/mask (no cache), cut to the longest row."""
        last = _last_index(mask)  # (B,)
        T = int(last.max().item()) + 1
        ids, mask = ids[:, :T], mask[:, :T]
        h = self.lm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                               use_cache=False).last_hidden_state  # (B, T, D)
        return h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)

    def start(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, KVDecoder]:
        """As :meth:`full`, filling a fresh :class:`~textenv.decoding.KVDecoder` with the T columns run.

        Returns ``(features (B, D), the decoder)``."""
        last = _last_index(mask)  # (B,)
        T = int(last.max().item()) + 1
        decoder = KVDecoder(self.lm.base_model)
        h = decoder.start(ids[:, :T], mask[:, :T]).last_hidden_state  # (B, T, D)
        return h[torch.arange(h.shape[0], device=h.device), last], decoder

    @staticmethod
    def extend(decoder: KVDecoder, tokens: Tensor, positions: Tensor, attn: Tensor, keep: Tensor, pick: Tensor
               ) -> Tensor:
        """W new columns on top of the decoder's C cached ones: ``tokens``/``positions``/``attn`` ``(B, W)``;
        rows not in ``keep`` ``(B,)`` lose their cached columns. The features ``(B, D)`` are taken at column
        ``pick`` ``(B,)`` of the new ones."""
        h = decoder.extend(tokens, positions, attn, keep=keep).last_hidden_state  # (B, W, D)
        return h[torch.arange(h.shape[0], device=h.device), pick]

    def forward(self, observations: PyTorchObs) -> Tensor:
        ids, mask = _ids_and_mask(observations)
        return self.full(ids, mask)


class _KVState(NamedTuple):
    """The batch KV cache (its decoder) and the observation it was built from."""

    decoder: KVDecoder  # the cache, C columns, and its attention mask (B, C) over them
    ids: Tensor  # (B, L) int64, the last observation's input_ids
    mask: Tensor  # (B, L) bool, the last observation's attention_mask
    last: Tensor  # (B,) index of the last real token in the last observation


def _load_lm(model: Any) -> PreTrainedModel:
    return _causal_only(_load_any_lm(model), model)


def _causal_only(lm: PreTrainedModel, source: Any) -> PreTrainedModel:
    if getattr(lm.config, "is_encoder_decoder", False):
        raise ValueError(f"the SB3 policy acts with a causal LM; {source!r} is an encoder-decoder "
                         f"({type(lm).__name__}): train it with the native agents (ppo, grpo, reinforce, rloo)")
    return lm


def _load_any_lm(model: Any) -> PreTrainedModel:
    if isinstance(model, PreTrainedModel):
        return model
    if isinstance(model, PretrainedConfig):  # how a policy saved from a model object is rebuilt
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(model).eval()
    if isinstance(model, (str, os.PathLike)):
        from textenv.models import load_causal_lm

        return load_causal_lm(model)
    raise ValueError(f"model must be a name, a directory or a PreTrainedModel, got {type(model).__name__}: {model!r}")


class LMActorCriticPolicy(ActorCriticPolicy):
    """An SB3 actor-critic policy whose actor is a causal LM: features from its trunk, logits from its head.

    Use it like any SB3 policy class with PPO or A2C::

        PPO(LMActorCriticPolicy, make_sb3_env("TextGen-v0", n_envs=8),
            policy_kwargs={"model": "default"}, learning_rate=LM_LEARNING_RATE)

    Args (through ``policy_kwargs``):
        model: ``"default"`` (the shipped policy), any name or directory ``textenv.models.load_causal_lm``
            accepts, or a ``PreTrainedModel`` (used in place, not copied: training updates that object).
            Its vocabulary must equal the env's action space (``len(tokenizer)``).
        lm_dropout: keep the LM's dropout on during updates (default False: the LM stays in eval mode, as in
            TRL, so that PPO's ratio is exactly 1 before the first step).
        detach_value: the value head reads detached features, so the value loss does not reach the LM
            (default True; False trains the trunk on the value loss too, as SB3's shared extractor does).
        optimizer_class, optimizer_kwargs: as in SB3 (A2C passes RMSprop).

    Layout (see the module docstring): ``features_extractor.lm`` is the LM, ``action_net`` is its LM head
    (the same module), ``value_net`` is a ``Linear(D, 1)`` on the last hidden state. No pretrained weight is
    re-initialised. The logits are ``lm_head(last hidden state)``, which is the model's own output for GPT-2,
    Llama, Qwen and the like; a model that post-processes its logits (soft-capping, a logit scale) is
    sampled without that step. ``forward`` without grad (rollout collection) and ``predict`` use a batch KV cache;
    ``evaluate_actions``, ``get_distribution`` and ``predict_values`` run full forwards.

    Save/load: ``model.save(path)`` / ``PPO.load(path)`` work. Loading rebuilds the LM from
    ``policy_kwargs["model"]`` and then loads the saved weights over it, so a name or directory must still
    resolve at load time. If ``model`` was a ``PreTrainedModel`` object, SB3 pickles that object inside the
    saved ``policy_kwargs`` (the zip then holds the weights twice, and loading needs the model's class
    importable); to keep saves small and portable, ``save_pretrained`` the LM and pass its directory.
    ``policy.save`` / ``LMActorCriticPolicy.load`` store only the config for an object-built LM. SB3's zip
    and ``.pth`` files hold pickles (``PPO.load`` unpickles ``:serialized:`` entries), so load only files you
    trust; :class:`agents.sb3_agent.SB3Agent` (``textenv train``) saves without them (safetensors and JSON).
    """

    features_extractor: LMFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str | os.PathLike[str] | PreTrainedModel | PretrainedConfig = "default",
        lm_dropout: bool = False,
        detach_value: bool = True,
        use_sde: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if use_sde:
            raise ValueError("LMActorCriticPolicy has a discrete action space; use_sde must be False, got True")
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"LMActorCriticPolicy needs a Discrete action space, got {action_space}")
        if not isinstance(observation_space, spaces.Dict) or not {"input_ids", "attention_mask"} <= set(
            observation_space.spaces
        ):
            raise ValueError("LMActorCriticPolicy needs a Dict observation space with 'input_ids' and "
                             f"'attention_mask', got {observation_space}")
        lm = _load_lm(model)
        head = lm.get_output_embeddings()
        n_out = getattr(head, "out_features", None)
        if n_out != int(action_space.n):
            raise ValueError(
                f"the LM's vocabulary ({n_out} logits) must equal the action space Discrete({action_space.n}); "
                "use the env's tokenizer, or model.resize_token_embeddings(len(tokenizer))"
            )
        # nn.Module refuses module attributes before Module.__init__ (and the spec must not be registered as
        # a second copy of the LM), so these go straight into __dict__; make_features_extractor reads the LM
        self.__dict__["_pending_lm"] = lm
        self.__dict__["_model_spec"] = model
        self.lm_dropout = bool(lm_dropout)
        self.detach_value = bool(detach_value)
        self._kv: _KVState | None = None
        #: how acting forwards were served (see the module docstring)
        self.cache_stats = {"one_token_steps": 0, "mixed_steps": 0, "full_forwards": 0}
        super().__init__(
            observation_space, action_space, lr_schedule,
            net_arch=[], ortho_init=False, use_sde=False,
            features_extractor_class=LMFeaturesExtractor, share_features_extractor=True,
            normalize_images=False, optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs,
        )
        del self.__dict__["_pending_lm"]
        self.train(False)

    # ----- construction ---------------------------------------------------------------------------------

    def make_features_extractor(self) -> LMFeaturesExtractor:
        return LMFeaturesExtractor(self.observation_space, self.__dict__["_pending_lm"])  # type: ignore[arg-type]

    def _build(self, lr_schedule: Schedule) -> None:
        """The LM head as ``action_net``, a fresh value head, identity MLP; no re-initialisation of the LM."""
        self.mlp_extractor = MlpExtractor(self.features_dim, net_arch=[], activation_fn=self.activation_fn,
                                          device=self.device)
        self.action_net = self.features_extractor.lm.get_output_embeddings()
        self.value_net = new_value_head(self.features_dim, device=self.device)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        self.optimizer.register_step_post_hook(self._after_optimizer_step)

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.reset_cache()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        spec: Any = self.__dict__["_model_spec"]
        if isinstance(spec, PreTrainedModel):
            spec = spec.config  # the weights travel in the state dict
        return dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            lr_schedule=self._dummy_schedule,
            model=spec,
            lm_dropout=self.lm_dropout,
            detach_value=self.detach_value,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )

    @property
    def lm(self) -> PreTrainedModel:
        """The causal LM (trained in place)."""
        return self.features_extractor.lm

    # ----- cache bookkeeping ----------------------------------------------------------------------------

    def reset_cache(self) -> None:
        """Drop the acting KV cache (done automatically whenever the weights may have changed)."""
        self._kv = None

    def train(self, mode: bool = True) -> LMActorCriticPolicy:
        if mode:
            self.reset_cache()
        super().train(mode)
        if not self.lm_dropout and "features_extractor" in self._modules:
            self.features_extractor.lm.train(False)
        return self

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.reset_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        self.reset_cache()
        return super()._apply(*args, **kwargs)

    # ----- features -------------------------------------------------------------------------------------

    def _full_features(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.features_extractor.full(ids, mask)

    def _cached_features(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Features for acting, with the batch KV cache (no grad). See the module docstring."""
        bmask = mask.bool()
        kv = self._kv
        B, L = ids.shape
        if kv is not None and kv.ids.shape == ids.shape and kv.ids.device == ids.device:
            added = bmask & ~kv.mask  # (B, L)
            n_added = added.sum(-1)  # (B,)
            new_idx = added.long().argmax(-1)  # (B,) the first added position
            last = _last_index(mask)  # (B,)
            # a row extends its previous observation by k >= 1 tokens appended after the old last one: its
            # action, and in a multi-turn env the tokens the env inserted after it
            match = ~(kv.mask & ~bmask).any(-1) & (n_added >= 1) & ((ids == kv.ids) | ~kv.mask).all(-1) \
                & (new_idx > kv.last) & (last - new_idx + 1 == n_added)  # (B,)
            n_match = int(match.sum().item())
            K = int(n_added[match].max().item()) if n_match else 1  # the most new tokens of a matching row
            W = K if n_match == B else max(K, int(last[~match].max().item()) + 1)
            C = kv.decoder.num_columns
            # all rows new: nothing to reuse. Too many dead columns: compact by recomputing.
            if n_match > 0 and C + W <= self._cache_columns_limit(L):
                return self._mixed_step(ids, mask, bmask, kv, match, new_idx, n_added, last, W)
        feats, decoder = self.features_extractor.start(ids, mask)
        self._kv = _KVState(decoder, ids.clone(), bmask, _last_index(mask))
        self.cache_stats["full_forwards"] += 1
        return feats

    @staticmethod
    def _cache_columns_limit(L: int) -> int:
        # a mixed step appends W columns and leaves the replaced rows' old columns dead (masked out);
        # past this many columns a full recompute is cheaper than attending over them
        return 2 * L

    def _mixed_step(self, ids: Tensor, mask: Tensor, bmask: Tensor, kv: _KVState, match: Tensor,
                    new_idx: Tensor, n_added: Tensor, last: Tensor, W: int) -> Tensor:
        """One forward of W new columns: a matching row feeds its new tokens (then padding), any other row its
        whole context, with its old cached columns masked out. W = 1 when every row adds one token."""
        B, L = ids.shape
        m = match[:, None]  # (B, 1)
        j = torch.arange(W, device=ids.device)[None, :]  # (1, W)
        new_cols = (new_idx[:, None] + j).clamp_(max=L - 1)  # (B, W) a matching row's new positions
        tok = ids.gather(1, new_cols)  # (B, W)
        pos_new = kv.mask.sum(-1, keepdim=True) + j  # (B, W): the new tokens follow the old real ones
        new_mask = (j < n_added[:, None]).to(mask.dtype)  # (B, W)
        ctx_ids, ctx_mask = ids[:, :W], mask[:, :W]  # (B, W); W <= L: a row holds at most L tokens
        ctx_pos = positions_from_mask(ctx_mask)  # (B, W)
        tokens = torch.where(m, tok, ctx_ids)  # (B, W)
        positions = torch.where(m, pos_new, ctx_pos)  # (B, W)
        new_attn = torch.where(m, new_mask, ctx_mask)  # (B, W); a replaced row's old columns are masked out
        pick = torch.where(match, n_added - 1, last)  # (B,) column of each row's features within the W new ones
        try:
            feats = self.features_extractor.extend(kv.decoder, tokens, positions, new_attn, match, pick)
        except BaseException:
            self.reset_cache()  # the cache may be half-updated
            raise
        self._kv = _KVState(kv.decoder, ids.clone(), bmask, last)
        self.cache_stats["one_token_steps" if W == 1 else "mixed_steps"] += 1
        return feats

    def _features(self, obs: PyTorchObs, use_cache: bool) -> Tensor:
        ids, mask = _ids_and_mask(obs)
        ids, mask = ids.to(self.device), mask.to(self.device)
        if use_cache and not torch.is_grad_enabled():
            return self._cached_features(ids, mask)
        return self._full_features(ids, mask)

    def logits_and_values(self, obs: PyTorchObs, use_cache: bool = False) -> tuple[Tensor, Tensor]:
        """Next-token logits ``(B, V)`` (float32, the LM head at the last non-pad position) and values
        ``(B, 1)``. ``use_cache=True`` uses the acting KV cache (only when grad is disabled)."""
        feats = self._features(obs, use_cache)  # (B, D)
        return self.action_net(feats).float(), self._values(feats)  # (B, V), (B, 1)

    def _values(self, feats: Tensor) -> Tensor:
        if self.detach_value:
            feats = feats.detach()
        return self.value_net(feats.to(self.value_net.weight.dtype))

    def _dist(self, logits: Tensor) -> Distribution:
        assert isinstance(self.action_dist, CategoricalDistribution)
        return self.action_dist.proba_distribution(action_logits=logits)

    # ----- the SB3 entry points, reading integer observations ------------------------------------------

    def extract_features(self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor | None = None
                         ) -> Tensor:  # type: ignore[override]
        return self._features(obs, use_cache=False)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        logits, values = self.logits_and_values(obs, use_cache=True)
        distribution = self._dist(logits)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob  # type: ignore[misc]

    def evaluate_actions(self, obs: PyTorchObs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        self.reset_cache()  # an update is under way: the weights are about to change
        logits, values = self.logits_and_values(obs, use_cache=False)
        distribution = self._dist(logits)
        return values, distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        logits, _ = self.logits_and_values(obs, use_cache=False)
        return self._dist(logits)

    def predict_values(self, obs: PyTorchObs) -> Tensor:
        return self._values(self._features(obs, use_cache=False))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        logits, _ = self.logits_and_values(observation, use_cache=True)
        return self._dist(logits).get_actions(deterministic=deterministic)
