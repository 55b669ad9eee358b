"""Wrappers of the text-generation env: :class:`ResponseLevel`, one whole response per step.

Turn-level LLM environments (GEM, verifiers, most RLHF tooling) take a whole response as the action and
score it; :class:`ResponseLevel` offers our tasks and reward models that way, so code written for them runs
here unchanged.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Characters the action space samples from (``action_space.sample()``); any ``str`` is accepted.
SAMPLE_CHARSET = string.ascii_letters + string.digits + string.punctuation + " \n"


class AnyText(spaces.Text):
    """A gymnasium :class:`~gymnasium.spaces.Text` space that contains every ``str`` of at most ``max_length``
    characters: the character set only says what :meth:`sample` draws (a task's prompts and a model's
    completions use any Unicode character, which no fixed character set covers)."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"AnyText({self.min_length}, {self.max_length}, sample charset of {len(self.character_set)})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, AnyText) and super().__eq__(other)


class ResponseLevel(gym.Wrapper[str, str | Sequence[int], dict[str, np.ndarray], int],
                    gym.utils.RecordConstructorArgs):
    """A :class:`~textenv.env.TextGenEnv` whose action is a whole response and whose step scores it.

    ## Description
    ``reset`` draws a prompt as the wrapped env does (seeded, split, ``options={"prompt": ...}``) and returns
    it as text. ``step(response)`` writes the response into the wrapped env token by token (its tokens,
    then EOS if the response has not ended the episode) and returns the episode's reward: one step is one
    episode, and the reward model, gold score and ``info`` are the wrapped env's.

    A multi-turn task (one that inserts the other speaker's text between the agent's turns, see
    :class:`~textenv.env.TextGenEnv`) is played one turn per step: the response's tokens, then the task's
    turn separator if the response has not ended the turn (instead of EOS, which would end the dialogue;
    a response may still end it with EOS). The env then appends the other speaker's reply, and the
    observation is the prompt followed by the whole transcript so far, reply included.

    ## Action Space
    :class:`AnyText` (a gymnasium ``Text`` space) of up to ``max_response_chars`` characters (default:
    ``16 * max_new_tokens``): the response as a ``str``, encoded with the env's tokenizer (no special tokens).
    A sequence of token ids (list, tuple or 1-D integer array) is fed as it is. A response longer than
    ``max_new_tokens`` tokens is cut there (``info["response_truncated"] = True``); an EOS inside it ends it.

    ## Observation Space
    :class:`AnyText`: the text so far, the prompt after ``reset`` and the prompt followed by the completion
    (as decoded, special tokens skipped) after ``step``.

    ## Rewards
    The sum of the wrapped env's rewards over the episode: the reward model's score of (prompt, completion)
    in either ``reward_mode`` (dense rewards sum to the terminal score). Multi-turn: the sum over this turn's
    tokens (terminal mode: the transcript's score at the dialogue's last turn, 0 before; dense: this turn's
    difference).

    ## Episode End
    Every step ends a single-turn episode (``terminated=True``). In a multi-turn task a step ends one agent
    turn, and ``terminated`` is the wrapped env's: the dialogue ended (the task had no reply, EOS, or the
    turn budget ``max_turns``). A response longer than a turn's ``max_new_tokens`` is cut there.

    ## Arguments
    - ``env``: a ``TextGenEnv`` (from ``gym.make("TextGen-v0", ...)``, wrapped or not); not a vector env.
    - ``max_response_chars``: the action space's length bound (what ``sample`` draws up to).

    Example:
        >>> import gymnasium as gym, textenv
        >>> env = ResponseLevel(gym.make("TextGen-Arithmetic-v0", reward_model="gold"))
        >>> prompt, info = env.reset(seed=0)
        >>> text, reward, terminated, truncated, info = env.step("81")
        >>> terminated
        True
    """

    def __init__(self, env: gym.Env[Any, Any], max_response_chars: int | None = None) -> None:
        from textenv.env import TextGenEnv

        base = env.unwrapped
        if not isinstance(base, TextGenEnv):
            raise TypeError(f"ResponseLevel wraps a TextGenEnv (gym.make('TextGen-v0', ...)), got "
                            f"{type(base).__name__}; a vector env is stepped by its own batch API")
        gym.utils.RecordConstructorArgs.__init__(self, max_response_chars=max_response_chars)
        gym.Wrapper.__init__(self, env)
        self._base = base
        T = base.max_new_tokens
        if max_response_chars is None:
            max_response_chars = 16 * T
        if isinstance(max_response_chars, bool) or not isinstance(max_response_chars, (int, np.integer)) or (
                max_response_chars < 1):
            raise ValueError(f"max_response_chars must be an integer >= 1, got {max_response_chars!r}")
        L = base.setup.max_length
        self.action_space = AnyText(int(max_response_chars), min_length=0, charset=SAMPLE_CHARSET)  # type: ignore[assignment]
        # a token decodes to a handful of characters; 64 per position bounds any context the env can hold
        self.observation_space = AnyText(64 * L, min_length=0, charset=SAMPLE_CHARSET)  # type: ignore[assignment]
        self._prompt = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        self._prompt = str(info["prompt"])
        return self._prompt, info

    def response_ids(self, action: Any) -> list[int]:
        """The token ids of a response: a ``str`` encoded by the env's tokenizer, or a token id sequence;
        anything else is a ``ValueError`` naming it."""
        from textenv.env import check_action

        if isinstance(action, str):
            return list(self._base.tokenizer(action, add_special_tokens=False)["input_ids"])
        if isinstance(action, np.ndarray) and action.ndim == 1:
            return [check_action(a, self._base.setup.vocab_size) for a in action]
        if isinstance(action, (list, tuple)):
            return [check_action(a, self._base.setup.vocab_size) for a in action]
        raise ValueError(f"a response must be a str or a sequence of token ids, got {type(action).__name__}: "
                         f"{action!r:.80}")

    def step(self, action: Any) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        ids = self.response_ids(action)  # checked before the wrapped env changes
        setup = self._base.setup
        T, multi_turn = self._base.max_new_tokens, setup.multi_turn
        # what ends the response if it has not ended by itself: the turn separator, or EOS (single-turn)
        end_id = setup.separator_id if multi_turn and setup.separator_id is not None else setup.eos_id
        truncated_response = len(ids) > T
        total = 0.0
        info: dict[str, Any] = {}
        terminated = False
        n = 0
        env_step: Any = self.env.step  # the wrapped env acts on token ids

        def turn_over() -> bool:  # the env reports a finished agent turn with "turn" in info
            return terminated or (multi_turn and "turn" in info)

        for tok in ids[:T]:
            _, reward, terminated, _, info = env_step(tok)
            total += float(reward)
            n += 1
            if turn_over():
                break
        while not turn_over():  # the response is over: end the turn (or the episode)
            _, reward, terminated, _, info = env_step(end_id)
            total += float(reward)
        info = dict(info)
        info["response_tokens"] = n
        info["response_truncated"] = truncated_response or n < len(ids)
        if terminated:
            return self._prompt + str(info["completion"]), total, True, False, info
        return self._prompt + setup.decode(self._base.completion_ids()), total, False, False, info
