"""`TextGenVectorEnv`: a native batch of text-generation episodes (no per-env Python objects)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.setup import RESET_OPTIONS, EnvSetup, SetupView, build_setup, check_reset_options, check_seed

#: the ``reset(options=...)`` keys of the vector env
VECTOR_RESET_OPTIONS = (*RESET_OPTIONS, "prompts", "reset_mask")


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    if isinstance(mode, AutoresetMode):
        return mode
    for m in AutoresetMode:
        if mode in (m.value, m.name, m.name.lower()):
            return m
    raise ValueError(f"autoreset_mode must be one of {[m.name for m in AutoresetMode]}, got {mode!r}")


class TextGenVectorEnv(SetupView, VectorEnv):
    """``num_envs`` text-generation episodes stepped together, one reward-model call per step.

    Same MDP, arguments and observations as :class:`textenv.env.TextGenEnv` (read its docstring), batched:
    observations are ``(N, L)`` arrays, actions an ``(N,)`` integer array, rewards and flags ``(N,)`` arrays.
    The reward model is called once per step on the batch of episodes that finished in it (or, in dense
    mode, on every active prefix); the rest of the episode-end work is batched too: one decode of every
    finished completion (:meth:`~textenv.setup.EnvSetup.decode_block`) and one call of the task's gold
    scorer (its ``gold_details`` alone for a task that has them). Slot ``i`` reset with ``seed=s`` draws the
    same prompts as a single ``TextGenEnv`` reset with ``seed=s+i``, so results match
    ``gym.make_vec(..., vectorization_mode="sync")``.

    ``info["gold_details"]`` at episode end is nested as Gymnasium nests a dict-valued info:
    ``info["gold_details"][name]`` is an ``(N,)`` float64 array and ``info["gold_details"]["_" + name]`` its
    mask, one pair per part (``"gold"``/``"_gold"`` alone for a task without parts; a part that some
    episodes lack is masked out for them), beside the outer mask ``info["_gold_details"]``.

    Multi-turn tasks: each slot inserts the other speaker's tokens after its agent turns as the single env
    does; a step whose action ends slot ``i``'s turn sets ``info["_turn"][i]`` and gives ``info["turn"][i]``,
    ``info["inserted_tokens"][i]`` and ``info["inserted_mask"][i]`` (``(N, L)`` int8); with ``SAME_STEP``
    a finished slot's go into ``info["final_info"]``. :attr:`max_episode_tokens` is the widest transcript
    (a rollout buffer's width), :attr:`max_actions` the most agent tokens.

    Autoreset modes (``autoreset_mode=``, Gymnasium's names):
    - ``NEXT_STEP`` (default): the step after an episode ends resets that slot (its action is ignored,
      reward 0, flags False).
    - ``SAME_STEP``: a slot that ends is reset in the same step; its last observation and info are in
      ``info["final_obs"]`` and ``info["final_info"]``.
    - ``DISABLED``: finished slots stay idle until ``reset(options={"reset_mask": mask})``: their actions
      are ignored, they return their last observation, reward 0 and both flags False. This is what
      synchronised batched rollouts use.

    Reset options (besides ``reset_mask``): ``"prompt"`` (one prompt for every reset slot), ``"prompts"``
    (a list of ``num_envs`` prompts, slot ``i`` takes ``prompts[i]``: groups of identical prompts for
    GRPO), ``"split"`` (``"train"`` or ``"test"``).

    Example:
        >>> import gymnasium as gym, textenv
        >>> envs = gym.make_vec("TextGen-v0", num_envs=64, reward_model="gold")
        >>> obs, info = envs.reset(seed=0)
        >>> obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 8, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 render_mode: str | None = None, **env_kwargs: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.setup: EnvSetup = build_setup(**env_kwargs)
        self.num_envs = N = int(num_envs)
        self.render_mode = render_mode
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        s = self.setup
        self.single_observation_space = s.observation_space()
        self.single_action_space = s.action_space()
        self.observation_space = batch_space(self.single_observation_space, N)
        self.action_space = batch_space(self.single_action_space, N)
        L = s.max_length
        self._ids = np.full((N, L), s.pad_id, dtype=np.int64)  # (N, L)
        self._mask = np.zeros((N, L), dtype=np.int8)  # (N, L)
        self._prompt_len = np.zeros(N, dtype=np.int64)
        self._n_gen = np.zeros(N, dtype=np.int64)  # tokens after the prompt (agent's and inserted)
        self._turn = np.zeros(N, dtype=np.int64)  # multi-turn: agent turns finished
        self._turn_len = np.zeros(N, dtype=np.int64)  # tokens of the current agent turn
        self._segments: list[list[int]] = [[0] for _ in range(N)]  # where each transcript segment starts
        self._inserted = np.zeros((N, L), dtype=np.int8)  # (N, L) 1 where the env inserted a token
        self._potential = np.zeros(N, dtype=np.float64)
        self._active = np.zeros(N, dtype=bool)  # slot is inside an episode
        self._needs_reset = np.zeros(N, dtype=bool)  # NEXT_STEP: slot ended on the previous step
        self._started = False
        self._prompts: list[str] = [""] * N
        self._rngs = [seeding.np_random()[0] for _ in range(N)]
        self._rows = np.arange(N)

    def inserted_mask(self) -> np.ndarray:
        """``(N, L)`` int8: 1 at the observation positions the env inserted (a copy; zeros if single-turn)."""
        return self._inserted.copy()

    @property
    def vocab_size(self) -> int:
        """Size of the action space (token ids ``0 .. vocab_size - 1``)."""
        return int(self.setup.vocab_size)

    @property
    def pad_id(self) -> int:
        """The token id that pads observations (and that batched rollouts pad completions with)."""
        return int(self.setup.pad_id)

    def sample_prompt(self, rng: np.random.Generator, split: str | None = None) -> str:
        """One prompt drawn with ``rng`` from ``split`` (``"train"``, ``"test"``; ``None``: the env's split),
        as a slot's reset draws it; e.g. to build groups of identical prompts for ``reset(options=...)``."""
        return self.setup.sample_prompt(rng, split)

    def set_autoreset_mode(self, mode: AutoresetMode | str) -> None:
        """Switch the autoreset mode (``metadata["autoreset_mode"]`` follows), e.g. to run synchronised
        episodes on an env built with NEXT_STEP and switch back after. Slots that are finished when the switch
        is made are treated as if their episodes had just ended under the new mode: NEXT_STEP resets them on
        the next step, SAME_STEP resets them now, DISABLED leaves them idle until ``reset``."""
        self.autoreset_mode = _autoreset_mode(mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        finished = ~self._active
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._needs_reset |= finished
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            if finished.any():
                self._reset_slots(np.flatnonzero(finished), None, None)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}

    def _reset_slots(self, idx: np.ndarray, prompts: list[str | None] | None, split: str | None) -> None:
        """Start new episodes in slots ``idx`` (together: one write per buffer), slot ``idx[j]`` with
        ``prompts[j]``, or a prompt drawn with the slot's RNG where that is ``None`` (or ``prompts`` is)."""
        s = self.setup
        slots = idx.tolist()
        if prompts is None:
            prompts = [None] * len(slots)
        new = [s.sample_prompt(self._rngs[i], split) if p is None else p for i, p in zip(slots, prompts, strict=True)]
        encoded = [s.encode_prompt(p) for p in new]
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        inside = np.arange(s.max_length) < lengths[:, None]  # (B, L): the prompt's positions
        rows = np.full((len(slots), s.max_length), s.pad_id, dtype=np.int64)  # (B, L)
        rows[inside] = np.concatenate(encoded)  # row-major order: each prompt in its row, left-aligned
        self._ids[idx] = rows
        self._mask[idx] = inside
        self._prompt_len[idx] = lengths
        self._n_gen[idx] = 0
        if s.multi_turn:
            self._turn[idx] = 0
            self._turn_len[idx] = 0
            self._inserted[idx] = 0
        self._potential[idx] = 0.0
        self._active[idx] = True
        self._needs_reset[idx] = False
        for i, p in zip(slots, new, strict=True):
            self._prompts[i] = p
            if s.multi_turn:
                self._segments[i] = [0]

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # everything is checked before any slot (or its RNG) changes: a refused reset leaves the env as it was
        N = self.num_envs
        options = check_reset_options(options, VECTOR_RESET_OPTIONS)
        if seed is None:
            seeds: list[int | None] = [None] * N
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            first = check_seed(seed)
            assert first is not None
            seeds = [first + i for i in range(N)]
        else:
            if isinstance(seed, (str, bytes)) or not hasattr(seed, "__len__"):
                raise ValueError(f"seed must be None, an integer >= 0 or a list of {N} of them, got {seed!r}")
            seeds = [check_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]  # type: ignore[arg-type]
            if len(seeds) != N:
                raise ValueError(f"seed as a list must have num_envs={N} entries, got {len(seeds)}")
        reset_mask = options.pop("reset_mask", None)
        if reset_mask is None:
            reset_mask = np.ones(N, dtype=bool)
        else:
            reset_mask = np.asarray(reset_mask)
            if reset_mask.shape != (N,) or reset_mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({N},), got {reset_mask!r}")
            if not reset_mask.any():
                raise ValueError(f"options['reset_mask'] must have at least one True value, got {reset_mask!r}")
        prompts = options.get("prompts")
        if prompts is not None and (isinstance(prompts, str) or not hasattr(prompts, "__len__") or len(prompts) != N
                                    or not all(isinstance(p, str) for p in prompts)):
            raise ValueError(f"options['prompts'] must be a list of {N} str, got {prompts!r}")
        one_prompt = options.get("prompt")
        if prompts is not None and one_prompt is not None:
            raise ValueError("pass options['prompt'] (one for every slot) or options['prompts'] (one per slot), not both")
        split = options.get("split")
        idx = np.flatnonzero(reset_mask)
        for i in idx:  # encode first, so a bad prompt fails before any slot is touched
            p = prompts[i] if prompts is not None else one_prompt
            if p is not None:
                self.setup.encode_prompt(p)
        for i in idx:
            if seeds[i] is not None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        self._reset_slots(idx, [prompts[i] if prompts is not None else one_prompt for i in idx], split)
        self._started = True
        return self._obs(), self._prompt_infos(idx)

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be an integer array of shape ({self.num_envs},), got {a.dtype} array of shape {a.shape}"
            )
        given, a = a, a.astype(np.int64, copy=False)
        # one comparison catches both ends: as unsigned, a negative id is larger than any vocabulary
        # (np.count_nonzero and .nonzero(): several times cheaper than .any() on arrays this small)
        bad = a.view(np.uint64) >= self.setup.vocab_size
        if np.count_nonzero(bad):
            i = int(bad.nonzero()[0][0])
            raise ValueError(f"actions[{i}] must be a token id in [0, {self.setup.vocab_size}), got {int(given[i])}")
        return a

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise ResetNeeded("call reset() before step()")
        a = self._check_actions(actions)
        s = self.setup
        N = self.num_envs
        rewards = np.zeros(N, dtype=np.float64)
        terminated = np.zeros(N, dtype=bool)
        stepping = self._active.nonzero()[0]
        # every slot steps (the usual case): slices, views of the whole arrays instead of gathers
        sel: slice | np.ndarray = slice(None) if stepping.size == N else stepping
        pos = self._prompt_len[sel] + self._n_gen[sel]
        tok = a[sel]
        self._ids[stepping, pos] = tok
        self._mask[stepping, pos] = 1
        self._n_gen[sel] += 1
        turn_end: np.ndarray | None = None  # multi-turn: which stepping slots' agent turns end now
        inserted: dict[int, np.ndarray] = {}  # the other speaker's replies by slot, written after scoring
        rng_states: dict[int, Any] = {}
        if s.multi_turn:
            self._turn_len[stepping] += 1
            ends, turn_end = self._turn_ends(stepping, tok)
        else:
            ends = self._n_gen[sel] >= s.max_new_tokens
            if s.terminate_on_eos:
                ends |= tok == s.eos_id
        infos: dict[str, Any] = {}
        try:
            if turn_end is not None:
                # replies are asked for before anything is scored (a reply of None ends the dialogue)
                asked = np.flatnonzero(turn_end & ~ends)
                rng_states = {int(stepping[j]): self._rngs[stepping[j]].bit_generator.state for j in asked}
                for j in asked:
                    slot = int(stepping[j])
                    dialogue = s.segments(self._ids[slot, self._prompt_len[slot]:], self._segments[slot],
                                          int(self._n_gen[slot]))
                    reply = s.insertion(self._prompts[slot], dialogue, self._rngs[slot])
                    if reply is None:
                        ends[j] = True
                    else:
                        inserted[slot] = reply
            terminated[stepping] = ends
            done_idx = stepping[ends]
            if s.reward_mode != "dense":
                scored_idx = done_idx
            else:  # single-turn: every token; multi-turn: every agent turn's end
                scored_idx = stepping if turn_end is None else stepping[turn_end | ends]
            if scored_idx.size:
                # the whole batch's episode-end work at once: one decode call for every scored slot
                prompts = [self._prompts[i] for i in scored_idx.tolist()]
                block, lengths = self._completion_block(scored_idx)
                completions = s.decode_block(block, lengths)
                ids = ([row[:n] for row, n in zip(block.tolist(), lengths.tolist(), strict=True)]
                       if s.wants_extras else None)
                scores = s.score(prompts, completions, ids)
                spread = getattr(s.reward_model, "last_std", None)  # an Ensemble's members' std per pair
                if done_idx.size:
                    at_end: slice | np.ndarray
                    if scored_idx is done_idx:  # terminal rewards: exactly the finished slots were scored
                        at_end = slice(None)
                        end_prompts, end_completions = prompts, completions
                    else:
                        at_end = np.isin(scored_idx, done_idx)
                        end_prompts = [p for p, e in zip(prompts, at_end, strict=True) if e]
                        end_completions = [c for c, e in zip(completions, at_end, strict=True) if e]
                    gold, details = s.gold(end_prompts, end_completions)
        except BaseException:
            # nothing half-written: undo this step's tokens (and the tasks' RNG draws) so the batch is as before
            self._n_gen[stepping] -= 1
            if turn_end is not None:
                self._turn_len[stepping] -= 1
            self._ids[stepping, pos] = s.pad_id
            self._mask[stepping, pos] = 0
            for slot, state in rng_states.items():
                self._rngs[slot].bit_generator.state = state
            raise
        if scored_idx.size:
            if s.reward_mode == "dense":
                rewards[scored_idx] = scores - self._potential[scored_idx]
                self._potential[scored_idx] = scores
            else:
                rewards[scored_idx] = scores
            if done_idx.size:
                infos = self._end_infos(done_idx, end_prompts, end_completions, scores[at_end], gold, details)
                if spread is not None:
                    std = np.zeros(N, dtype=np.float64)
                    std[done_idx] = np.asarray(spread)[at_end]
                    infos.update(reward_model_std=std, _reward_model_std=infos["_gold_score"].copy())
        turned = stepping[turn_end] if turn_end is not None else None
        if turned is not None:
            self._write_replies(turned, inserted)
        if done_idx.size:
            self._active[done_idx] = False
        mode = self.autoreset_mode
        reset_idx = done_idx[:0]
        if mode == AutoresetMode.NEXT_STEP:
            reset_idx = self._needs_reset.nonzero()[0]
            if done_idx.size:
                self._needs_reset[done_idx] = True
        running = None
        if turned is not None and turned.size:
            # SAME_STEP: a finished slot's turn info goes into its final info, a running slot's on top
            same_step = mode == AutoresetMode.SAME_STEP
            running = turned[~np.isin(turned, done_idx)] if same_step else None
            finished = turned[np.isin(turned, done_idx)] if same_step else turned
            if finished.size:
                infos.update(self._turn_infos(finished, inserted))
        if mode == AutoresetMode.SAME_STEP and done_idx.size:
            final_obs = np.full(N, None, dtype=object)
            for i in done_idx:
                final_obs[i] = {"input_ids": self._ids[i].copy(), "attention_mask": self._mask[i].copy()}
            mask = np.zeros(N, dtype=bool)
            mask[done_idx] = True
            infos = {"final_obs": final_obs, "_final_obs": mask, "final_info": infos, "_final_info": mask.copy()}
            reset_idx = done_idx
        if running is not None and running.size:
            infos.update(self._turn_infos(running, inserted))
        if reset_idx.size:
            self._reset_slots(reset_idx, None, None)
            reset_info = self._prompt_infos(reset_idx)
            if "prompt" in infos:  # NEXT_STEP: other slots ended this step; merge slot-wise like Gymnasium
                m = reset_info["_prompt"]
                infos["prompt"][m] = reset_info["prompt"][m]
                infos["_prompt"] = infos["_prompt"] | m
            else:
                infos.update(reset_info)
        return self._obs(), rewards, terminated, np.zeros(N, dtype=bool), infos

    def _completion_block(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The generated token ids of slots ``idx``, gathered in one go: ``(len(idx), T)`` ids, row ``j``
        holding slot ``idx[j]``'s completion in its first ``lengths[j]`` entries, and ``lengths``."""
        lengths = self._n_gen[idx]
        T = int(lengths.max()) if lengths.size else 0
        cols = self._prompt_len[idx][:, None] + np.arange(T)  # (B, T)
        np.minimum(cols, self.setup.max_length - 1, out=cols)  # past a row's end: any valid index
        return self._ids[idx[:, None], cols], lengths

    def _prompt_infos(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The reset info of slots ``idx`` (their new prompt), in Gymnasium's vector layout."""
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[idx] = True
        slots = idx.tolist()
        return {"prompt": self._slot_values(slots, [self._prompts[i] for i in slots]), "_prompt": mask}

    def _slot_values(self, slots: list[int], values: list[Any]) -> np.ndarray:
        """An ``(N,)`` object array holding ``values[j]`` at ``slots[j]`` and ``None`` elsewhere."""
        out: list[Any] = [None] * self.num_envs
        for i, v in zip(slots, values, strict=True):
            out[i] = v
        arr = np.empty(self.num_envs, dtype=object)
        arr[:] = out
        return arr

    def _turn_ends(self, stepping: np.ndarray, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multi-turn: ``(ends, turn_end)`` of the stepping slots after their tokens ``tok``: a turn ends at
        the separator, EOS or the per-turn budget; the dialogue ends at EOS or after the last allowed turn."""
        s = self.setup
        eos = tok == s.eos_id if s.terminate_on_eos else np.zeros(stepping.size, dtype=bool)
        turn_end = eos | (self._turn_len[stepping] >= s.max_new_tokens) | (tok == s.separator_id)
        return eos | (turn_end & (self._turn[stepping] + 1 >= s.max_turns)), turn_end

    def _write_replies(self, turned: np.ndarray, inserted: dict[int, np.ndarray]) -> None:
        """Close the agent turns of slots ``turned`` and append the replies ``inserted`` to their
        observations (context, never actions)."""
        self._turn[turned] += 1
        self._turn_len[turned] = 0
        for i, reply in inserted.items():
            start = self._prompt_len[i] + self._n_gen[i]
            k = len(reply)
            self._ids[i, start:start + k] = reply
            self._mask[i, start:start + k] = 1
            self._inserted[i, start:start + k] = 1
            self._segments[i] += [int(self._n_gen[i]), int(self._n_gen[i]) + k]
            self._n_gen[i] += k

    def _turn_infos(self, idx: np.ndarray, inserted: dict[int, np.ndarray]) -> dict[str, Any]:
        """Multi-turn infos of the slots ``idx`` whose agent turn ended this step, in Gymnasium's vector layout:
        ``turn`` (agent turns finished), ``inserted_tokens`` (how many tokens the env appended after the
        action, 0 when the dialogue ended) and ``inserted_mask`` ``(N, L)`` (1 on every inserted position of
        the episode so far)."""
        N = self.num_envs
        mask = np.zeros(N, dtype=bool)
        mask[idx] = True
        turn = np.zeros(N, dtype=np.int64)
        k = np.zeros(N, dtype=np.int64)
        turn[idx] = self._turn[idx]
        for i in idx:
            k[i] = len(inserted[int(i)]) if int(i) in inserted else 0
        ins = np.zeros_like(self._inserted)
        ins[idx] = self._inserted[idx]
        return {"turn": turn, "_turn": mask, "inserted_tokens": k, "_inserted_tokens": mask.copy(),
                "inserted_mask": ins, "_inserted_mask": mask.copy()}

    def _end_infos(self, idx: np.ndarray, prompts: list[str], completions: list[str], scores: np.ndarray,
                   gold: list[float], details: list[dict[str, float]] | None) -> dict[str, Any]:
        """Per-slot end-of-episode infos in Gymnasium's vector layout (value arrays + ``_key`` masks).

        ``gold_details`` is a dict in the same layout, as Gymnasium nests a dict-valued info: one float64
        array and mask per detail name, the mask False for a slot whose details lack that name. ``details``
        None (a task without its own details) gives ``{"gold": gold_score, "_gold": mask}`` with no Python
        per slot."""
        N = self.num_envs
        mask = np.zeros(N, dtype=bool)
        mask[idx] = True
        slots = idx.tolist()
        p = self._slot_values(slots, prompts)
        c = self._slot_values(slots, completions)
        r = np.zeros(N, dtype=np.float64)
        g = np.zeros(N, dtype=np.float64)
        r[idx] = scores
        g[idx] = gold
        parts: dict[str, np.ndarray] = {}
        if details is None:
            parts.update(gold=g.copy(), _gold=mask.copy())
        else:
            for i, d in zip(slots, details, strict=True):
                for k, v in d.items():
                    if k not in parts:
                        parts[k], parts[f"_{k}"] = np.zeros(N, dtype=np.float64), np.zeros(N, dtype=bool)
                    parts[k][i] = v
                    parts[f"_{k}"][i] = True
        return {"prompt": p, "_prompt": mask, "completion": c, "_completion": mask.copy(),
                "reward_model_score": r, "_reward_model_score": mask.copy(),
                "gold_score": g, "_gold_score": mask.copy(), "gold_details": parts, "_gold_details": mask.copy()}

    def render(self) -> list[str] | tuple[np.ndarray, ...] | None:  # type: ignore[override]
        """The decoded contexts of all slots (``render_mode="ansi"``), or one image per slot (``"rgb_array"``,
        as Gymnasium's vector envs return them: a tuple)."""
        if self.render_mode is None:
            return None
        completions = self.setup.decode_block(*self._completion_block(self._rows))
        if self.render_mode == "rgb_array":
            from textenv.render import render_text

            return tuple(render_text(p, c) for p, c in zip(self._prompts, completions))
        return [p + c for p, c in zip(self._prompts, completions)]

    def prompts(self) -> list[str]:
        """The prompt of each slot's current (or last) episode."""
        return list(self._prompts)

    def completion_ids(self) -> list[np.ndarray]:
        """Each slot's generated token ids so far (copies)."""
        return [self._ids[i, self._prompt_len[i]:self._prompt_len[i] + self._n_gen[i]].copy() for i in range(self.num_envs)]
