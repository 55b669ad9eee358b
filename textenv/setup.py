"""What `TextGenEnv` and `TextGenVectorEnv` share: argument checking, resolution and scoring.

Both envs take the same keyword arguments; this module turns them into one resolved :class:`EnvSetup`
(task, tokenizer, reward model, spaces, prompt source), so the single env and the native vector env
cannot drift apart.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from textenv.jsonl import read_jsonl, read_text_lines
from textenv.tasks import Task, get_task
from textenv.tasks.base import check_split

REWARD_MODES = ("terminal", "dense")
#: the largest ``max_prompt_tokens`` / ``max_new_tokens`` accepted (observations are allocated at this length)
MAX_TOKENS = 65536
#: the ``reset(options=...)`` keys of the single env; the vector env adds ``prompts`` and ``reset_mask``
RESET_OPTIONS = ("prompt", "split")
PROMPT_TRUNCATIONS = ("left", "error")


def _after_fork_in_child() -> None:
    """In a forked child (``gym.make_vec(..., vectorization_mode="async")`` forks by default), use one torch
    thread: torch's intra-op pool does not survive a fork, and a child that runs the reward model after the
    parent started it waits forever on its dead threads. PyTorch's DataLoader workers do the same. Torch is
    not imported here: a process that never used it is left alone."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX; registered once, when textenv's envs are first imported
    os.register_at_fork(after_in_child=_after_fork_in_child)


def check_reset_options(options: Any, valid: Sequence[str]) -> dict[str, Any]:
    """``options`` as a dict (``None``: empty), or a ``ValueError`` naming an unknown key (a misspelling is
    not ignored) or a bad ``split``; nothing is changed."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict or None, got {options!r}")
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"unknown reset option {unknown[0]!r}; valid options are {list(valid)}")
    if options.get("split") is not None:
        check_split(options["split"])
    return dict(options)


def check_seed(seed: Any, where: str = "seed") -> int | None:
    """``seed`` as a Python int >= 0 or None, or a ``ValueError`` naming it (bools, floats, str refused)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where} must be None or an integer >= 0, got {seed!r}")
    return int(seed)


def load_prompts(prompts: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """A prompt list from a list of str, or a path to a ``.txt`` (one per non-empty line) or ``.jsonl``
    (rows ``{"prompt": ...}``) file. An empty result is an error."""
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise ValueError(f"prompts file {str(prompts)!r} does not exist")
        if path.suffix == ".jsonl":
            out = []
            for lineno, row in read_jsonl(path):
                prompt = row.get("prompt")
                if not isinstance(prompt, str):
                    raise ValueError(f"{path}:{lineno}: expected a string \"prompt\", got {prompt!r}")
                out.append(prompt)
        elif path.suffix == ".txt":
            out = [line for line in read_text_lines(path) if line.strip()]
        else:
            raise ValueError(f"prompts file must end in .txt or .jsonl, got {str(prompts)!r}")
        if not out:
            raise ValueError(f"prompts file {str(prompts)!r} holds no prompts")
        return out
    out = list(prompts)
    if not out:
        raise ValueError("prompts must not be empty, got []")
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a str, got {p!r}")
    return out


def check_details(task: Task, details: Any, n: int) -> list[dict[str, float]]:
    """What a task's ``gold_details`` returned, as ``n`` dicts of str -> float each with a ``"gold"`` entry,
    or a ``ValueError`` naming the task and the value. Key sets may differ between pairs."""
    name = task.name or type(task).__name__
    if isinstance(details, (str, bytes, Mapping)) or not isinstance(details, Sequence) or len(details) != n:
        raise ValueError(f"task {name!r}: gold_details must return a list of {n} dicts (one per pair), "
                         f"got {details!r:.200}")
    out = []
    for d in details:
        if not isinstance(d, Mapping) or "gold" not in d or not all(isinstance(k, str) for k in d):
            raise ValueError(f"task {name!r}: each gold_details entry must be a dict of str keys with a "
                             f"\"gold\" entry, got {d!r:.200}")
        try:
            out.append({k: float(v) for k, v in d.items()})
        except (TypeError, ValueError):
            raise ValueError(f"task {name!r}: gold_details values must be numbers, got {d!r:.200}") from None
    return out


#: byte tables of :meth:`EnvSetup.decode_block`, per tokenizer object (and its backend and size, which
#: ``add_tokens`` changes), so that every env on one cached tokenizer builds and checks it once
_BYTE_TABLES: weakref.WeakKeyDictionary[Any, tuple[tuple[int, int], np.ndarray | None]] = weakref.WeakKeyDictionary()


@dataclass
class EnvSetup:
    """The resolved configuration of a text-generation env (shared by the single and vector envs)."""

    task: Task
    tokenizer: Any
    reward_model: Any
    reward_name: str
    prompts: list[str] | None
    max_prompt_tokens: int
    max_new_tokens: int
    reward_mode: str
    terminate_on_eos: bool
    split: str
    prompt_truncation: str
    vocab_size: int = 0
    eos_id: int = 0
    pad_id: int = 0
    #: the most agent turns per episode (1: single-turn), and the most tokens inserted after one turn
    max_turns: int = 1
    max_inserted_tokens: int = 0
    #: the token id that ends an agent turn (the task's ``turn_separator``), or None (single-turn)
    separator_id: int | None = None
    _prompt_cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _fast: Any = field(default=None, repr=False)
    #: per token id, the bytes decoding turns it into (see :func:`byte_level_table`); built on first use
    _byte_table: np.ndarray | None = field(default=None, repr=False)
    _byte_table_built: bool = field(default=False, repr=False)
    #: whether the task overrides ``gold_details`` (then it is the one gold scorer the envs call)
    _own_details: bool = field(default=False, repr=False)

    @property
    def multi_turn(self) -> bool:
        """Whether the task inserts text between agent turns (``max_turns > 1``)."""
        return self.max_turns > 1

    @property
    def max_actions(self) -> int:
        """The most agent tokens (actions) in an episode: ``max_turns * max_new_tokens``."""
        return self.max_turns * self.max_new_tokens

    @property
    def max_episode_tokens(self) -> int:
        """The most tokens after the prompt: every agent turn's budget plus every inserted reply's."""
        return self.max_actions + (self.max_turns - 1) * self.max_inserted_tokens

    @property
    def max_length(self) -> int:
        """L, the observation length: prompt budget plus the episode's token budget (single-turn:
        ``max_prompt_tokens + max_new_tokens``)."""
        return self.max_prompt_tokens + self.max_episode_tokens

    def observation_space(self) -> spaces.Dict:
        L = self.max_length
        return spaces.Dict({
            "input_ids": spaces.Box(0, self.vocab_size - 1, (L,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, (L,), dtype=np.int8),
        })

    def action_space(self) -> spaces.Discrete:
        return spaces.Discrete(self.vocab_size)

    def sample_prompt(self, rng: np.random.Generator, split: str | None = None) -> str:
        """One prompt: uniformly from the user's list, else from the task's source for ``split``."""
        if self.prompts is not None:
            return self.prompts[int(rng.integers(len(self.prompts)))]
        return self.task.sample_prompt(rng, self.split if split is None else check_split(split))

    def encode_prompt(self, prompt: str) -> np.ndarray:
        """Token ids of ``prompt`` (no special tokens), left-truncated to ``max_prompt_tokens``; cached."""
        ids = self._prompt_cache.get(prompt)
        if ids is not None:
            return ids
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a str, got {prompt!r}")
        full = self._encode(prompt)
        if len(full) > self.max_prompt_tokens:
            if self.prompt_truncation == "error":
                raise ValueError(
                    f"prompt {prompt[:60]!r} has {len(full)} tokens, more than max_prompt_tokens={self.max_prompt_tokens}"
                )
            full = full[-self.max_prompt_tokens:]
        if not full:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
        ids = np.asarray(full, dtype=np.int64)
        if len(self._prompt_cache) < 200_000:
            self._prompt_cache[prompt] = ids
        return ids

    def _encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: np.ndarray) -> str:
        """Text of token ids, special tokens skipped (see :meth:`decode_block`)."""
        table = self._table()
        if table is not None:
            return b"".join(table[np.asarray(ids, dtype=np.int64)].tolist()).decode("utf-8", "replace")
        if self._fast is not None:
            return self._fast.decode(np.asarray(ids).tolist(), skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _table(self) -> np.ndarray | None:
        """The byte table of :meth:`decode_block` (built on first use, once per tokenizer object and size:
        envs built on the same cached tokenizer share it), with one more entry, ``b""``, for the positions
        past a row's length; ``None`` where the tokenizer is not byte-level BPE."""
        if not self._byte_table_built:
            key = (id(self._fast), len(self.tokenizer))
            cached = _BYTE_TABLES.get(self.tokenizer)
            if cached is not None and cached[0] == key:
                self._byte_table = cached[1]
            else:
                table = byte_level_table(self._fast) if self._fast is not None else None
                self._byte_table = None if table is None else np.array([*table, b""], dtype=object)
                try:
                    _BYTE_TABLES[self.tokenizer] = (key, self._byte_table)
                except TypeError:  # a tokenizer that takes no weak reference: built per env
                    pass
            self._byte_table_built = True
        return self._byte_table

    def decode_block(self, ids: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Texts of the rows of ``ids`` ``(B, T)``, row ``j`` cut to its first ``lengths[j]`` tokens, special
        tokens skipped: the strings ``tokenizer.decode(ids[j, :lengths[j]], skip_special_tokens=True)``.

        A byte-level BPE tokenizer (GPT-2's kind) is decoded through a per-token byte table: one gather for
        the whole block, then one join and one UTF-8 decode per row, several times faster than a call into
        the tokenizer per row. The table is checked against the tokenizer when it is built (on first use)
        and not used unless every token agrees.
        """
        table = self._table()
        if table is not None:
            inside = np.arange(ids.shape[1]) < lengths[:, None]  # (B, T)
            pieces = table[np.where(inside, ids, len(table) - 1)]  # (B, T) of bytes
            join = b"".join
            return [join(row).decode("utf-8", "replace") for row in pieces.tolist()]
        rows = [ids[j, :n].tolist() for j, n in enumerate(lengths.tolist())]
        if self._fast is not None:
            return [self._fast.decode(row, skip_special_tokens=True) for row in rows]
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]

    def __post_init__(self) -> None:
        # The Rust backend of a fast tokenizer, used directly for speed when the Python wrapper adds nothing
        # (no clean-up of tokenization spaces); otherwise None and the wrapper is used.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._fast = backend if backend is not None and not getattr(
            self.tokenizer, "clean_up_tokenization_spaces", False) else None
        self._own_details = getattr(self.task.gold_details, "__func__", None) is not Task.gold_details

    @property
    def wants_extras(self) -> bool:
        """Whether the reward model takes ``completion_ids`` and the task's columns (a TRL-style function)."""
        return bool(getattr(self.reward_model, "wants_extras", False))

    def score(self, prompts: list[str], completions: list[str],
              completion_ids: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """Reward-model scores, checked: one finite float per pair (float64 array).

        A reward model that :attr:`wants_extras` also gets ``completion_ids`` and ``columns``, the task's
        per-prompt fields (:meth:`~textenv.tasks.base.Task.prompt_columns`), as TRL passes them.
        """
        from textenv.rewards import check_scores

        if self.wants_extras:
            out = self.reward_model(prompts, completions, completion_ids=completion_ids,
                                    columns=self.task.prompt_columns(prompts))
        else:
            out = self.reward_model(prompts, completions)
        return check_scores(out, len(prompts), self.reward_name)

    def gold(self, prompts: list[str], completions: list[str]) -> tuple[list[float], list[dict[str, float]] | None]:
        """The task's gold scores of the pairs and its details (``info["gold_details"]``), from one scorer.

        A task that overrides :meth:`~textenv.tasks.base.Task.gold_details` is asked for its details only
        and the scores are their ``"gold"`` entries (``gold_score`` is not called on the same text again);
        any other task's ``gold_score`` alone is called and the details are ``None``, standing for
        ``{"gold": score}`` (the base task's details), which the envs build without a call per pair.
        """
        if not self._own_details:
            return [float(s) for s in self.task.gold_score(prompts, completions)], None
        details = check_details(self.task, self.task.gold_details(prompts, completions), len(prompts))
        return [d["gold"] for d in details], details

    def insertion(self, prompt: str, dialogue: list[str], rng: np.random.Generator) -> np.ndarray | None:
        """The token ids the env inserts after the agent's turn (the task's :meth:`~textenv.tasks.base.Task.next_turn`,
        encoded), or None when the dialogue ends. A reply that is not a str, encodes to no tokens or to more
        than ``max_inserted_tokens`` is a ``ValueError`` naming the task."""
        text = self.task.next_turn(prompt, dialogue, rng)
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"task {self.task.name!r}: next_turn must return a str or None, got {text!r}")
        ids = self._encode(text)
        if not ids:
            raise ValueError(f"task {self.task.name!r}: next_turn returned {text!r}, which encodes to no tokens")
        if len(ids) > self.max_inserted_tokens:
            raise ValueError(f"task {self.task.name!r}: next_turn returned {len(ids)} tokens, more than "
                             f"max_inserted_tokens={self.max_inserted_tokens}: {text[:80]!r}")
        return np.asarray(ids, dtype=np.int64)

    def segments(self, ids: np.ndarray, starts: list[int], end: int) -> list[str]:
        """The decoded transcript segments of one episode: ``ids`` are the tokens after the prompt, ``starts``
        the offset where each segment (agent turn, inserted reply, ...) begins, ``end`` the episode's length."""
        bounds = [*starts, end]
        return [self.decode(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters: the printable Latin-1 bytes
    stand for themselves, the others (controls, space, soft hyphen...) take the characters from U+0100 on,
    in byte order. Byte-level BPE vocabularies are written in these characters."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # "!".."~", "¡".."¬", "®".."ÿ"
    kept = set(keep)
    shifted = [b for b in range(256) if b not in kept]
    out = {b: chr(b) for b in keep}
    out.update({b: chr(256 + k) for k, b in enumerate(shifted)})
    return out


def byte_level_table(backend: Any) -> list[bytes] | None:
    """Per token id of a Hugging Face ``tokenizers.Tokenizer`` whose decoder is ``ByteLevel``, the bytes that
    decoding adds for it (``b""`` for special tokens, which ``skip_special_tokens`` drops), so that decoding
    a row is ``b"".join(table[i] for i in row).decode("utf-8", "replace")``; ``None`` for any other decoder.

    ByteLevel maps each character of a token back to its byte, and a token with a character outside the
    byte alphabet (an added token such as ``"<tag>"`` typed in plain text) to its own UTF-8 bytes; the
    joined bytes of a row are then decoded with invalid sequences replaced. The table is checked against
    the tokenizer on every id, in runs of a few tokens (so multi-byte characters split across tokens are
    covered), and ``None`` comes back if any text differs.
    """
    decoder = getattr(backend, "decoder", None)
    if decoder is None or type(decoder).__name__ != "ByteLevel":
        return None
    char_to_byte = {c: b for b, c in _byte_to_char().items()}
    special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    V = backend.get_vocab_size(with_added_tokens=True)
    table: list[bytes] = []
    for i in range(V):
        token = backend.id_to_token(i)
        if token is None or i in special:
            table.append(b"")
            continue
        mapped = [char_to_byte.get(c) for c in token]
        table.append(token.encode("utf-8") if None in mapped else bytes(mapped))  # type: ignore[arg-type]
    # the check: every id at least once, in shuffled runs of 1-8 tokens, against the tokenizer itself
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.concatenate([np.arange(V), rng.integers(0, V, size=V)])).tolist()
    start = 0
    while start < len(ids):
        run = ids[start:start + int(rng.integers(1, 9))]
        start += len(run)
        ours = b"".join([table[i] for i in run]).decode("utf-8", "replace")
        if ours != backend.decode(run, skip_special_tokens=True):
            return None
    return table


class SetupView:
    """The public read-only view of an env's :class:`EnvSetup` that :class:`~textenv.env.TextGenEnv` and
    :class:`~textenv.vector.TextGenVectorEnv` share (each sets ``self.setup``)."""

    setup: EnvSetup

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
        """T, the completion budget: an episode (multi-turn: an agent turn) ends after this many actions."""
        return int(self.setup.max_new_tokens)

    @property
    def max_actions(self) -> int:
        """The most agent tokens in an episode (``max_turns * max_new_tokens``; single-turn: ``max_new_tokens``)."""
        return int(self.setup.max_actions)

    @property
    def multi_turn(self) -> bool:
        """Whether the task inserts text between agent turns (see "Turns" in :class:`textenv.env.TextGenEnv`)."""
        return self.setup.multi_turn

    @property
    def max_episode_tokens(self) -> int:
        """The most tokens after the prompt, agent and inserted (``L - max_prompt_tokens``): the width of a
        rollout buffer."""
        return int(self.setup.max_episode_tokens)

    @property
    def reward_model(self) -> Any:
        """The resolved reward model (see :func:`textenv.rewards.resolve_reward_model`)."""
        return self.setup.reward_model


def build_setup(
    task: str | Task = "sentiment",
    prompts: str | os.PathLike[str] | Sequence[str] | None = None,
    tokenizer: Any = "default",
    reward_model: Any = "default",
    reward_tokenizer: Any = None,
    max_prompt_tokens: int | None = None,
    max_new_tokens: int | None = None,
    reward_mode: str = "terminal",
    terminate_on_eos: bool = True,
    split: str = "train",
    prompt_truncation: str = "left",
    device: Any = "cpu",
    max_turns: int | None = None,
) -> EnvSetup:
    """Check and resolve the env keyword arguments (see :class:`textenv.env.TextGenEnv`)."""
    from textenv.models import load_tokenizer, resolve_device
    from textenv.rewards import resolve_reward_model

    task_obj = get_task(task)
    if max_prompt_tokens is None:
        max_prompt_tokens = task_obj.default_max_prompt_tokens
    if max_new_tokens is None:
        max_new_tokens = task_obj.default_max_new_tokens
    for name, value in (("max_prompt_tokens", max_prompt_tokens), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_TOKENS:
            raise ValueError(f"{name} must be an integer in [1, {MAX_TOKENS}], got {value!r}")
    if max_turns is None:
        max_turns = task_obj.default_max_turns
    if isinstance(max_turns, bool) or not isinstance(max_turns, (int, np.integer)) or not 1 <= max_turns <= 1024:
        raise ValueError(f"max_turns must be an integer in [1, 1024], got {max_turns!r}")
    if max_turns > 1 and task_obj.turn_separator is None:
        raise ValueError(f"max_turns={max_turns} needs a multi-turn task (one with a turn_separator); "
                         f"task {task_obj.name!r} is single-turn")
    max_inserted = int(task_obj.default_max_inserted_tokens) if max_turns > 1 else 0
    if max_turns > 1 and max_inserted < 1:
        raise ValueError(f"task {task_obj.name!r}: default_max_inserted_tokens must be >= 1, got {max_inserted}")
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
    if prompt_truncation not in PROMPT_TRUNCATIONS:
        raise ValueError(f"prompt_truncation must be one of {PROMPT_TRUNCATIONS}, got {prompt_truncation!r}")
    if not isinstance(terminate_on_eos, (bool, np.bool_)):
        raise ValueError(f"terminate_on_eos must be a bool, got {terminate_on_eos!r}")
    check_split(split)
    # where a reward model loaded from a directory runs; checked before anything is loaded
    rm_device = resolve_device(device, "device")
    tok = load_tokenizer(tokenizer)
    # a reward model given as a transformers model object needs its tokenizer: reward_tokenizer=, else the
    # env's tokenizer= when the user chose one (the default one is not assumed to fit a foreign model)
    rm_tok = reward_tokenizer if reward_tokenizer is not None else (
        None if isinstance(tokenizer, str) and tokenizer == "default" else tok)
    rm = resolve_reward_model(reward_model, task_obj, device=rm_device, tokenizer=rm_tok)
    setup = EnvSetup(
        task=task_obj,
        tokenizer=tok,
        reward_model=rm,
        reward_name=str(getattr(rm, "name", repr(rm))),
        prompts=None if prompts is None else load_prompts(prompts),
        max_prompt_tokens=int(max_prompt_tokens),
        max_new_tokens=int(max_new_tokens),
        reward_mode=reward_mode,
        terminate_on_eos=bool(terminate_on_eos),
        split=split,
        prompt_truncation=prompt_truncation,
        vocab_size=len(tok),
        eos_id=int(tok.eos_token_id),
        pad_id=int(tok.pad_token_id),
        max_turns=int(max_turns),
        max_inserted_tokens=max_inserted,
    )
    if task_obj.turn_separator is not None:
        sep = setup._encode(task_obj.turn_separator)
        if len(sep) != 1:
            raise ValueError(f"task {task_obj.name!r}: turn_separator {task_obj.turn_separator!r} must encode to "
                             f"one token of the tokenizer, got {len(sep)} tokens {sep}")
        setup.separator_id = int(sep[0])
    if setup.multi_turn and setup.max_length > 2 * MAX_TOKENS:  # what a single-turn env can reach at most
        raise ValueError(f"the observation length {setup.max_length} (max_prompt_tokens + max_turns * "
                         f"max_new_tokens + inserted tokens) is over {2 * MAX_TOKENS}; lower max_turns or the budgets")
    if setup.prompts is not None:
        for p in setup.prompts:  # fail at construction, not at the first reset that draws a bad one
            setup.encode_prompt(p)
    return setup
