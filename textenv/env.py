"""`TextGenEnv`: text generation as a Gymnasium environment, one episode at a time."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded

from textenv.setup import RESET_OPTIONS, EnvSetup, SetupView, build_setup, check_reset_options, check_seed
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


class TextGenEnv(SetupView, gym.Env[dict[str, np.ndarray], int]):
    """Text generation as an MDP: the state is a token context, the action is the next token.

    ## Description
    Each episode draws a prompt (from the task's unlimited prompt source, or from ``prompts``), and the agent
    writes a completion one token at a time. A reward model scores the finished text. The built-in tasks
    (``sentiment``, ``arithmetic``, ``keywords``) also carry a gold scorer, the true objective, reported in
    ``info["gold_score"]`` (its parts in ``info["gold_details"]``) so that reward hacking of a learned reward
    model can be measured.

    **Turns** (multi-turn tasks, e.g. ``"dialogue"``; a task with a ``turn_separator``): the env plays the
    other speaker. The agent's turn ends when it emits the separator token, after ``max_new_tokens`` tokens of
    the turn, or on EOS (which ends the dialogue). The env then asks the task for the reply
    (``task.next_turn(prompt, dialogue_so_far, np_random)``) and *appends its tokens to the observation*
    right after the agent's last token; the agent continues after them. They are context, never actions:
    the action space stays ``Discrete(V)``, one step is one agent token. ``info`` marks them (see Episode
    End). The dialogue ends when the task returns ``None``, on EOS, or after ``max_turns`` agent turns.
    Agents must feed inserted tokens through their KV cache, never sample them and mask them out of every
    loss (``agents.rollout`` and ``agents.sb3`` do).

    ## Action Space
    ``Discrete(V)`` with ``V = len(tokenizer)``: the id of the next token. Integers only (Python or NumPy);
    anything else, or an id outside ``[0, V)``, raises ``ValueError`` and leaves the episode unchanged.

    ## Observation Space
    ``Dict(input_ids=Box(0, V-1, (L,), int64), attention_mask=Box(0, 1, (L,), int8))`` with
    ``L = max_prompt_tokens + max_new_tokens``: the prompt tokens followed by the tokens generated so far,
    right-padded with the pad token (mask 0). Every call returns fresh arrays. Multi-turn: the tokens after
    the prompt are the agent's turns and the inserted replies in order, and
    ``L = max_prompt_tokens + max_turns * max_new_tokens + (max_turns - 1) * max_inserted_tokens``
    (``max_inserted_tokens``: the task's ``default_max_inserted_tokens``), so a whole dialogue fits.

    ## Rewards
    ``reward_mode="terminal"`` (default): 0.0 on every step but the last, which gets the reward model's score
    of (prompt, completion). ``"dense"``: the potential-based difference ``R(prefix_t+1) - R(prefix_t)`` with
    ``R(empty prefix) = 0``, so the rewards of an episode sum to the terminal score (one reward-model call per
    step). Multi-turn, ``"dense"`` is per turn: the difference comes at the last token of each agent turn,
    ``R(transcript up to this turn) - R(up to the previous one)``, 0 on the other steps; the sum is again the
    terminal score. Rewards are Python floats.

    ## Starting State
    The prompt tokens, drawn with ``self.np_random`` (seed it with ``reset(seed=...)``). Prompts longer than
    ``max_prompt_tokens`` are truncated from the left (the end of the prompt is kept), or rejected with
    ``prompt_truncation="error"``. ``reset(options={"prompt": str})`` starts from a given prompt and
    ``options={"split": "test"}`` draws from the held-out split.

    ## Episode End
    ``terminated=True`` when the agent emits EOS (if ``terminate_on_eos``) or after ``max_new_tokens``
    tokens: the text is finished and scored, so agents must not bootstrap past it. ``truncated`` is always
    False here and is left for outer time limits. At the end ``info`` holds ``prompt``, ``completion``
    (decoded text without special tokens), ``reward_model_score``, ``gold_score`` and ``gold_details``, a dict
    of the gold score's parts by name with the score itself as ``"gold"`` (the task's
    :meth:`~textenv.tasks.base.Task.gold_details`, e.g. ``{"gold", "chrf", "bleu"}`` for translation;
    ``{"gold": gold_score}`` for a task without parts). A task with parts is scored once, by its
    ``gold_details``, and ``gold_score`` is its ``"gold"`` entry. Multi-turn: the completion is the whole
    transcript (agent turns and inserted replies; the reward model and the gold scorer score it), and every
    step that ends an agent turn (the last one included) adds to ``info``: ``turn`` (agent turns finished),
    ``inserted_tokens`` (how many tokens the env appended after this action, 0 at the end) and
    ``inserted_mask`` (``(L,)`` int8, 1 on every inserted position of the episode so far; also
    :meth:`inserted_mask`). Other steps' infos are empty, as in single-turn episodes.

    ## Arguments
    - ``task``: ``"sentiment"`` (default), ``"arithmetic"``, ``"keywords"``, ``"translation"``,
      ``"summarization"``, ``"qa"``, ``"dialogue"`` (multi-turn), ``"detox"``, ``"reasoning_gym:<dataset>"``
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
    - ``max_prompt_tokens``, ``max_new_tokens``: budgets in tokens (task defaults); multi-turn,
      ``max_new_tokens`` is per agent turn.
    - ``max_turns``: multi-turn tasks only, the most agent turns (task default; 1 for single-turn tasks).
    - ``reward_mode``: ``"terminal"`` or ``"dense"``. ``terminate_on_eos``: end the episode on EOS.
    - ``render_mode``: ``"ansi"`` returns the decoded context, ``"human"`` prints it, ``"rgb_array"`` returns
      it drawn as an ``(H, W, 3)`` uint8 image (what SB3's ``make_vec_env`` and video recorders ask for).
    - ``split``: ``"train"`` (default) or ``"test"``, the task's prompt split.
    - ``device``: where a reward model loaded from a directory (``"default"``, a saved or HF model) runs:
      ``"cpu"`` (default, safe in forked async vector envs), ``"auto"`` (cuda when available) or
      ``"cuda[:N]"``. The native agents pass their own device. Model objects stay where they are.

    ## Version History
    - v0: initial release; multi-turn tasks (inserted tokens, ``max_turns``) added without changing
      single-turn episodes.

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
        max_turns: int | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.setup: EnvSetup = build_setup(
            task=task, prompts=prompts, tokenizer=tokenizer, reward_model=reward_model,
            reward_tokenizer=reward_tokenizer, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, reward_mode=reward_mode,
            terminate_on_eos=terminate_on_eos, split=split, prompt_truncation=prompt_truncation, device=device,
            max_turns=max_turns,
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
        self._n_gen = 0  # tokens after the prompt: the agent's and (multi-turn) the inserted ones
        self._turn = 0  # agent turns finished in this episode
        self._turn_len = 0  # tokens of the current agent turn
        self._segments: list[int] = [0]  # offset after the prompt where each transcript segment starts
        self._inserted = np.zeros(s.max_length, dtype=np.int8)  # 1 where the env inserted a token
        self._start_rng: Mapping[str, Any] | None = None
        self._potential = 0.0
        self._active = False  # an episode is running
        self._started = False  # reset has been called

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
        # multi-turn: the RNG state the episode's inserted turns start drawing from (for replays)
        self._start_rng = self.np_random.bit_generator.state if self.setup.multi_turn else None
        self._turn = self._turn_len = 0
        self._segments = [0]
        self._inserted.fill(0)
        self._potential = 0.0
        self._active = self._started = True
        if self.render_mode == "human":
            self.render()
        return self._obs(), {"prompt": prompt}

    def completion_ids(self) -> np.ndarray:
        """The generated token ids so far (a copy)."""
        return self._ids[self._prompt_len:self._prompt_len + self._n_gen].copy()

    def action_ids(self) -> np.ndarray:
        """The agent's token ids of the running episode, in order: :meth:`completion_ids` without the tokens
        the env inserted (a copy; single-turn: the same as :meth:`completion_ids`)."""
        ids = self.completion_ids()
        return ids[self._inserted[self._prompt_len:self._prompt_len + self._n_gen] == 0]

    @property
    def episode_rng_state(self) -> Mapping[str, Any] | None:
        """Multi-turn: the state of ``np_random`` when the running episode started (its inserted turns are
        drawn from there on); None for a single-turn task. With :meth:`restart_rng` it lets a checkpoint
        replay an episode: reset to its prompt, restart the RNG, step :meth:`action_ids` again."""
        return self._start_rng

    def restart_rng(self, state: Mapping[str, Any]) -> None:
        """Set ``np_random`` to ``state`` (an :attr:`episode_rng_state`) as the running episode's start state,
        right after a ``reset``: the turns the env inserts are then drawn as in the episode it came from."""
        if self._n_gen:
            raise ValueError(f"restart_rng must come right after reset, but the episode has {self._n_gen} tokens")
        self.np_random.bit_generator.state = state
        self._start_rng = self.np_random.bit_generator.state

    def inserted_mask(self) -> np.ndarray:
        """``(L,)`` int8: 1 at the observation positions the env inserted (another speaker's turns), 0 on the
        prompt, the agent's tokens and padding (a copy; all zeros for a single-turn task)."""
        return self._inserted.copy()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._active:
            raise ResetNeeded("call reset() before step()" if not self._started
                              else "the episode has ended; call reset() before step()")
        a = check_action(action, self._V)
        s = self.setup
        pos = self._prompt_len + self._n_gen
        self._ids[pos] = a
        self._mask[pos] = 1
        self._n_gen += 1
        self._turn_len += 1
        eos = self._stop_on_eos and a == self._eos
        turn_end = eos or a == s.separator_id or self._turn_len >= self._max_new
        terminated = eos or (turn_end and self._turn + 1 >= s.max_turns)
        # single-turn: a dense reward every token; multi-turn: at the end of every agent turn
        scored = terminated or (self._dense and (turn_end or not s.multi_turn))
        reward = 0.0
        info: dict[str, Any] = {}
        inserted: np.ndarray | None = None
        rng_state = self.np_random.bit_generator.state if turn_end and not terminated else None
        try:
            if rng_state is not None:
                dialogue = s.segments(self._ids[self._prompt_len:], self._segments, self._n_gen)
                inserted = s.insertion(self._prompt, dialogue, self.np_random)
                if inserted is None:
                    terminated = scored = True
            if scored:
                completion = s.decode(self._ids[self._prompt_len:pos + 1])
                ids = [self._ids[self._prompt_len:pos + 1].tolist()] if s.wants_extras else None
                score = float(s.score([self._prompt], [completion], ids)[0])
                if terminated:
                    gold, details = s.gold([self._prompt], [completion])
                    info = {"prompt": self._prompt, "completion": completion, "reward_model_score": score,
                            "gold_score": gold[0], "gold_details": {"gold": gold[0]} if details is None else details[0]}
                    spread = getattr(s.reward_model, "last_std", None)  # an Ensemble's members' std
                    if spread is not None:
                        info["reward_model_std"] = float(spread[0])
        except BaseException:
            # nothing half-written: undo the token (and the task's RNG draws) so the env is as before the call
            self._ids[pos] = s.pad_id
            self._mask[pos] = 0
            self._n_gen -= 1
            self._turn_len -= 1
            if rng_state is not None:
                self.np_random.bit_generator.state = rng_state
            raise
        if scored:
            if self._dense:
                reward = score - self._potential
                self._potential = score
            else:
                reward = score
        if turn_end and s.multi_turn:
            self._turn += 1
            self._turn_len = 0
            k = 0 if inserted is None else len(inserted)
            if inserted is not None:  # the other speaker's reply: in the observation, never an action
                start = pos + 1
                self._ids[start:start + k] = inserted
                self._mask[start:start + k] = 1
                self._inserted[start:start + k] = 1
                self._segments += [self._n_gen, self._n_gen + k]
                self._n_gen += k
            info.update(turn=self._turn, inserted_tokens=k, inserted_mask=self._inserted.copy())
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
