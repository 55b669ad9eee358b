"""`TurnLevelEnv`: a text-generation env turn by turn (action = a whole response), for turn-level LLM code.

The token-level :class:`textenv.env.TextGenEnv` is the MDP agents learn in; this wrapper offers the same
tasks with one step per agent turn, as turn-level LLM environments do: the action is the response text,
the observation the decoded context (prompt and transcript so far).
"""

from __future__ import annotations

import string
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from textenv.env import TextGenEnv

#: the characters a sampled response may hold (any str is accepted as an action)
RESPONSE_CHARSET = string.printable


class TurnLevelEnv(gym.Wrapper[str, str, dict[str, Any], int]):
    """One step per agent turn over a :class:`~textenv.env.TextGenEnv` (single- or multi-turn).

    - Action: a ``str``, the agent's whole turn. It is encoded with the env's tokenizer and stepped token by
      token; a multi-turn task's turn separator is appended when the text does not end the turn by itself
      (a single-turn task's episode gets EOS instead), and tokens beyond the turn's budget are dropped, as the
      token-level env would end the turn there. ``Text`` action space (sampling draws printable ASCII).
    - Observation: the decoded context, prompt then transcript (the agent's turns and, multi-turn, the
      replies the env inserted), as a ``str``.
    - Reward: the sum of the token-level rewards of the turn (terminal mode: the score at the end).
    - ``info``: the token-level info of the turn's last step, plus ``response_tokens`` (how many tokens of
      the response were stepped) and ``response`` (their text).

    Example:
        >>> env = TurnLevelEnv(TextGenEnv(task="dialogue", reward_model="gold"))
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(" What day and what time?")
    """

    def __init__(self, env: gym.Env) -> None:
        inner = env.unwrapped
        if not isinstance(inner, TextGenEnv):
            raise ValueError(f"TurnLevelEnv wraps a textenv TextGenEnv, got {type(inner).__name__}")
        super().__init__(env)
        self._inner: TextGenEnv = inner
        s = inner.setup
        self.action_space = spaces.Text(max_length=max(1, 8 * s.max_new_tokens), charset=RESPONSE_CHARSET)
        self.observation_space = spaces.Text(max_length=1 << 20, min_length=0, charset=RESPONSE_CHARSET)
        self._end_id = s.separator_id if s.separator_id is not None else (s.eos_id if s.terminate_on_eos else None)

    def _context(self) -> str:
        s = self._inner.setup
        obs = self._inner._obs()
        return s.decode(obs["input_ids"][obs["attention_mask"] == 1])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        return self._context(), info

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise ValueError(f"a TurnLevelEnv action is the response text (a str), got {action!r}")
        s = self._inner.setup
        ids = s._encode(action)
        budget = s.max_new_tokens
        if self._end_id is not None and (not ids or ids[-1] != self._end_id) and len(ids) < budget:
            ids.append(self._end_id)  # the response ends the turn
        elif not ids:
            raise ValueError("the response encodes to no tokens and the env has no token that ends a turn")
        ids = ids[:budget]
        total = 0.0
        info: dict[str, Any] = {}
        terminated = truncated = False
        n = 0
        for token in ids:
            _, reward, terminated, truncated, info = self.env.step(token)  # type: ignore[arg-type]
            total += float(reward)
            n += 1
            if terminated or truncated or "turn" in info:
                break
        info = {**info, "response_tokens": n, "response": s.decode(np.asarray(ids[:n], dtype=np.int64))}
        return self._context(), total, bool(terminated), bool(truncated), info
