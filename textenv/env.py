"""`TextGenEnv`: text generation as a Gymnasium environment, one episode at a time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded

from textenv.setup import RESET_OPTIONS, EnvSetup, build_setup, check_reset_options, check_seed
from textenv.tasks import Task


def check_action(action: Any, vocab_size: int) -> int:
    """``action`` as a Python int token id, or a ``ValueError`` naming it (bools, floats and arrays of a shape
    other than ``()`` or ``(1,)`` are refused)."""
    if type(action) is int or isinstance(action, np.integer):
        a = int(action)
    elif isinstance(action, np.ndarray) and action.shape in ((), (1,)) and action.dtype.kind in "iu":
        a = int(action.reshape(()))
    elif hasattr(action, "dtype") and hasattr(action, "numel") and action.numel() == 1 and action.dim() <= 1 and not (
        action.dtype.is_floating_point or action.dtype.is_complex or str(action.dtype) == "torch.bool"
    ):  # a one-element integer torch tensor
        a = int(action.item())
    else:
        raise ValueError(f"action must be an integer token id in [0, {vocab_size}), got {action!r}")
    if not 0 <= a < vocab_size:
        raise ValueError(f"action must be an integer token id in [0, {vocab_size}), got {a}")
    return a


class TextGenEnv(gym.Env[dict[str, np.ndarray], int]):
    """Text generation as an MDP: the state is a token context, the action is the next token.

    ## Description
    Each episode draws a prompt (from the task's unlimited prompt source, or from ``prompts``), and the agent
    writes a completion one token at a time. A reward model scores the finished text. The built-in tasks
    (``sentiment``, ``arithmetic``, ``keywords``) also carry a gold scorer, the true objective, reported in
    ``info["gold_score"]`` so that reward hacking of a learned reward model can be measured.

    ## Action Space
    ``Discrete(V)`` with ``V = len(tokenizer)``: the id of the next token. Integers only (Python or NumPy);
    anything else, or an id outside ``[0, V)``, raises ``ValueError`` and leaves the episode unchanged.

    ## Observation Space
    ``Dict(input_ids=Box(0, V-1, (L,), int64), attention_mask=Box(0, 1, (L,), int8))`` with
    ``L = max_prompt_tokens + max_new_tokens``: the prompt tokens followed by the tokens generated so far,
    right-padded with the pad token (mask 0). Every call returns fresh arrays.

    ## Rewards
    ``reward_mode="terminal"`` (default): 0.0 on every step but the last, which gets the reward model's score
    of (prompt, completion). ``"dense"``: the potential-based difference ``R(prefix_t+1) - R(prefix_t)`` with
    ``R(empty prefix) = 0``, so the rewards of an episode sum to the terminal score (one reward-model call per
    step). Rewards are Python floats.

    ## Starting State
    The prompt tokens, drawn with ``self.np_random`` (seed it with ``reset(seed=...)``). Prompts longer than
    ``max_prompt_tokens`` are truncated from the left (the end of the prompt is kept), or rejected with
    ``prompt_truncation="error"``. ``reset(options={"prompt": str})`` starts from a given prompt and
    ``options={"split": "test"}`` draws from the held-out split.

    ## Episode End
    ``terminated=True`` when the agent emits EOS (if ``terminate_on_eos``) or after ``max_new_tokens``
    tokens: the text is finished and scored, so agents must not bootstrap past it. ``truncated`` is always
    False here and is left for outer time limits. At the end ``info`` holds ``prompt``, ``completion``
    (decoded text without special tokens), ``reward_model_score`` and ``gold_score``.

    ## Arguments
    - ``task``: ``"sentiment"`` (default), ``"arithmetic"``, ``"keywords"``, ``"reasoning_gym:<dataset>"``
      (:class:`~textenv.tasks.reasoning.ReasoningGymTask`) or a :class:`~textenv.tasks.Task`, e.g. a user's
      JSONL and metric as a :class:`~textenv.tasks.DatasetTask` (its gold score is also its default reward).
    - ``prompts``: a list of str, or a path to a ``.txt`` (one per line) or ``.jsonl`` (``{"prompt"}``) file;
      replaces the task's prompt source (the gold scorer still comes from the task).
    - ``tokenizer``: ``"default"`` (the shipped BPE), a Hugging Face tokenizer directory or object.
    - ``reward_model``: ``"default"`` (the task's shipped learned model), ``"gold"``, a directory, a Hugging
      Face id in the local cache, a callable ``(prompts, completions) -> scores`` or a TRL-style
      ``fn(completions, **kwargs)``, a ``transformers`` sequence-classification model or
      ``pipeline("text-classification")``, or a list of them / (model, weight) pairs.
    - ``reward_tokenizer``: the tokenizer of a reward model given as a model object (default: the one saved
      with it, else ``tokenizer=`` when that is not ``"default"``).
    - ``max_prompt_tokens``, ``max_new_tokens``: budgets in tokens (task defaults).
    - ``reward_mode``: ``"terminal"`` or ``"dense"``. ``terminate_on_eos``: end the episode on EOS.
    - ``render_mode``: ``"ansi"`` returns the decoded context, ``"human"`` prints it, ``"rgb_array"`` returns
      it drawn as an ``(H, W, 3)`` uint8 image (what SB3's ``make_vec_env`` and video recorders ask for).
    - ``split``: ``"train"`` (default) or ``"test"``, the task's prompt split.
    - ``device``: where a reward model loaded from a directory (``"default"``, a saved or HF model) runs:
      ``"cpu"`` (default, safe in forked async vector envs), ``"auto"`` (cuda when available) or
      ``"cuda[:N]"``. The native agents pass their own device. Model objects stay where they are.

    ## Version History
    - v0: initial release.

    Example:
        >>> import gymnasium as gym, textenv
        >>> env = gym.make("TextGen-v0", reward_model="gold")
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: str | Task = "sentiment",
        prompts: str | os.PathLike[str] | Sequence[str] | None = None,
        tokenizer: Any = "default",
        reward_model: Any = "default",
        reward_tokenizer: Any = None,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int | None = None,
        reward_mode: str = "terminal",
        terminate_on_eos: bool = True,
        render_mode: str | None = None,
        split: str = "train",
        prompt_truncation: str = "left",
        device: Any = "cpu",
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.setup: EnvSetup = build_setup(
            task=task, prompts=prompts, tokenizer=tokenizer, reward_model=reward_model,
            reward_tokenizer=reward_tokenizer, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, reward_mode=reward_mode,
            terminate_on_eos=terminate_on_eos, split=split, prompt_truncation=prompt_truncation, device=device,
        )
        self.render_mode = render_mode
        self.observation_space = self.setup.observation_space()  # type: ignore[assignment]
        self.action_space = self.setup.action_space()  # type: ignore[assignment]
        s = self.setup
        self._V, self._eos, self._max_new = s.vocab_size, s.eos_id, s.max_new_tokens
        self._stop_on_eos, self._dense = s.terminate_on_eos, s.reward_mode == "dense"
        self._ids = np.full(s.max_length, s.pad_id, dtype=np.int64)
        self._mask = np.zeros(s.max_length, dtype=np.int8)
        self._prompt = ""
        self._prompt_len = 0
        self._n_gen = 0
        self._potential = 0.0
        self._active = False  # an episode is running
        self._started = False  # reset has been called

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that defines the action space."""
        return self.setup.tokenizer

    @property
    def task(self) -> Task:
        """The task whose prompts and gold scorer the env uses."""
        return self.setup.task

    @property
    def max_new_tokens(self) -> int:
        """T, the completion budget: an episode is truncated after this many actions."""
        return int(self.setup.max_new_tokens)

    @property
    def reward_model(self) -> Any:
        return self.setup.reward_model

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # everything is checked before any state (the RNG included) changes: a refused reset leaves the env as it was
        options = check_reset_options(options, RESET_OPTIONS)
        seed = check_seed(seed)
        prompt = options.get("prompt")
        if prompt is not None:
            ids = self.setup.encode_prompt(prompt)
        super().reset(seed=seed)
        if prompt is None:
            prompt = self.setup.sample_prompt(self.np_random, options.get("split"))
            ids = self.setup.encode_prompt(prompt)
        self._ids.fill(self.setup.pad_id)
        self._mask.fill(0)
        n = len(ids)
        self._ids[:n] = ids
        self._mask[:n] = 1
        self._prompt, self._prompt_len, self._n_gen = prompt, n, 0
        self._potential = 0.0
        self._active = self._started = True
        if self.render_mode == "human":
            self.render()
        return self._obs(), {"prompt": prompt}

    def completion_ids(self) -> np.ndarray:
        """The generated token ids so far (a copy)."""
        return self._ids[self._prompt_len:self._prompt_len + self._n_gen].copy()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._active:
            raise ResetNeeded("call reset() before step()" if not self._started
                              else "the episode has ended; call reset() before step()")
        a = check_action(action, self._V)
        pos = self._prompt_len + self._n_gen
        self._ids[pos] = a
        self._mask[pos] = 1
        self._n_gen += 1
        terminated = (self._stop_on_eos and a == self._eos) or self._n_gen >= self._max_new
        reward = 0.0
        info: dict[str, Any] = {}
        if terminated or self._dense:
            try:
                completion = self.setup.decode(self._ids[self._prompt_len:pos + 1])
                ids = [self._ids[self._prompt_len:pos + 1].tolist()] if self.setup.wants_extras else None
                score = float(self.setup.score([self._prompt], [completion], ids)[0])
                if terminated:
                    info = {"prompt": self._prompt, "completion": completion, "reward_model_score": score,
                            "gold_score": self.setup.gold([self._prompt], [completion])[0]}
                    spread = getattr(self.setup.reward_model, "last_std", None)  # an Ensemble's members' std
                    if spread is not None:
                        info["reward_model_std"] = float(spread[0])
            except BaseException:
                # nothing half-written: undo the token so the env is as before the call
                self._ids[pos] = self.setup.pad_id
                self._mask[pos] = 0
                self._n_gen -= 1
                raise
            if self._dense:
                reward = score - self._potential
                self._potential = score
            else:
                reward = score
        if terminated:
            self._active = False
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, bool(terminated), False, info

    def render(self) -> str | np.ndarray | None:  # type: ignore[override]
        """The decoded context (prompt + completion so far); printed for ``render_mode="human"``, an image for
        ``"rgb_array"`` (:func:`textenv.render.render_text`)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi', 'human' or 'rgb_array'")
            return None
        completion = self.setup.decode(self._ids[self._prompt_len:self._prompt_len + self._n_gen])
        if self.render_mode == "rgb_array":
            from textenv.render import render_text

            return render_text(self._prompt, completion)
        text = self._prompt + completion
        if self.render_mode == "human":
            print(text)
            return None
        return text
