"""Generation and training throughput of textenv's agents against the hardware limit and TRL.

One process, one model directory (a randomly initialised GPT-2 saved with the tokenizer), one batch of
fixed-length prompts and a fixed completion length (``terminate_on_eos=False``: every row generates
``new_tokens`` tokens), measured side by side: the rows run one after another in every round, the order
rotating between rounds, and each figure is the median over rounds (each ratio is the median of the ratios
within a round).

Rows (tokens/s are completion tokens per second of wall time):

- ``kv_limit``: the limit of generation, a bare Hugging Face KV-cache decode loop (left-padded prompts,
  ``model(input_ids=next, cache=DynamicCache, attention_mask, position_ids)`` with the policy's kernels,
  no env, no Python per slot).
- ``train_limit``: ``kv_limit`` plus one forward-backward-AdamW step (policy-gradient loss on the
  completion tokens, gradient clipping) over the same sequences.
- ``train_limit_with_ref``: ``train_limit`` plus one no-grad forward of a frozen copy (the reference
  log-probs a KL penalty needs, which both our GRPO and PPO iterations compute and ``train_limit`` does
  not); ``train_vs_limit_with_ref`` and ``ppo_train_vs_limit_with_ref`` compare against it.
- ``rollout``: our rollout, :func:`agents.rollout.collect_rollout` through ``TextGenVectorEnv`` (autoreset
  DISABLED), without values or reference log-probs, like the bare loop.
- ``ppo_iteration`` / ``grpo_iteration`` / ``reinforce_iteration`` / ``rloo_iteration``: one full training
  iteration of :class:`agents.PPO` (``n_epochs=1, n_minibatches=1``), :class:`agents.GRPO`
  (``num_iterations=1, n_minibatches=1``), :class:`agents.REINFORCE` and :class:`agents.RLOO` (group 4):
  rollout (with the reference forward; values for PPO) and update, through ``Agent.learn``.

**Each agent's own limit.** ``<agent>_vs_own_limit`` holds each iteration to the limit loop that does the
work the algorithm must do: decode, one forward-backward-AdamW step and, when the agent has a KL penalty
(every one here: beta ``kl_coef``), the reference forward (``train_limit_with_ref``); an agent without a
reference would be held to ``train_limit``. The reference forward is not overhead an implementation could
remove: the KL term needs the frozen model's log-probs of every sampled token, which TRL's step computes too.
``min_agent_vs_own_limit`` is the worst of them. ``train_vs_limit`` and ``ppo_train_vs_limit`` (against the
limit without the reference forward) are kept: their gap is the reference forward's share of an iteration.
- ``trl_grpo``: one step of TRL's ``GRPOTrainer`` on the same model directory, batch, group size, lengths,
  KL coefficient (beta), learning rate and loss (``loss_type="grpo"``), gradient checkpointing off (as
  ours), ``min_new_tokens`` = ``max_completion_length`` (every row generates the full length, as ours).
  Only when ``trl`` is importable (the optional ``bench`` extra).
- ``trl_grpo_defaults``: TRL's ``GRPOTrainer`` with its *default* ``GRPOConfig``, only the shape set (batch,
  group size, completion length, full-length rows; ``use_cpu`` on CPU): gradient checkpointing and bf16
  mixed precision on, beta 0, its own loss. What a user who runs TRL's defaults gets; a few steps only
  (``--trl-defaults-rounds``, default 2, after one warm-up step), each paired with one of our GRPO
  iterations, so ``grpo_vs_trl_grpo_defaults`` is side by side like the other ratios.

Every ratio is the median of per-round ratios; ``spread`` gives each one's min, max and relative spread over
the rounds, ``load_average`` the machine's load at the start and the end, ``command`` the command line.

The reward model is a cheap callable (share of "e" in the completion) for ours and TRL alike, unless
``--reward-model default`` (the task's shipped reward model, for both). Configurations: CPU, GPT-2 4 x 256,
batch 64, 8 prompt tokens, 32 new tokens, group size 8 (float32); GPU (when CUDA is present), GPT-2-small
body 12 x 768 in bf16, batch 256, 32 prompt tokens, 64 new tokens.

Memory, per row: ``peak_rss_mib`` is the high-water RSS during the row's first run (sampled every 5 ms),
``rss_growth_mib`` that minus the RSS just before it, ``ru_maxrss_mib`` the process's peak
(``resource.getrusage``) after it. One process runs every row (TRL's first), so a later row reuses memory an
earlier one freed: read the growth as an order of magnitude. On GPU, ``peak_gpu_mib``
(``torch.cuda.max_memory_allocated`` during the first run) is exact per row.

Threads: ``--threads`` (default 2, the machine's cores). On a shared machine whose cores are busy, two torch
threads make every small op wait for a descheduled thread (runs 3-100x slower and erratic); measure with
``--threads 1`` there. ``load_average`` in the JSON says how busy the machine was.

Writes ``benchmarks/results/throughput-<device>.json`` (or ``--json PATH``).

Usage::

    python -m benchmarks.throughput            # the full run (a few minutes on CPU)
    python -m benchmarks.throughput --quick    # under a minute: smaller batch, fewer rounds
    python -m benchmarks.throughput --profile  # also cProfile one rollout and one GRPO iteration
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import env_step
from benchmarks.report import command, load_average, spread
from textenv.io import write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Targets of the CPU configuration.
TARGET_ROLLOUT_VS_KV_LIMIT = 0.85
TARGET_GRPO_VS_TRL_GRPO = 1.5
#: every agent iteration against its own limit (the work its algorithm must do; see the module docstring)
TARGET_AGENT_VS_OWN_LIMIT = 0.95
#: torch threads of a run (``--threads``); the machine has 2 cores, shared
BENCH_THREADS = 2


def set_threads(n: int) -> None:
    """Use ``n`` torch threads here and after TRL's set-up (which may change it)."""
    global BENCH_THREADS
    BENCH_THREADS = n
    torch.set_num_threads(n)


@dataclasses.dataclass
class BenchConfig:
    """Model, batch and lengths of one benchmark configuration."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    batch: int
    prompt_tokens: int
    new_tokens: int
    group_size: int = 8
    dtype: str = "float32"
    kl_coef: float = 0.04  # beta, for GRPO and TRL alike
    learning_rate: float = 1e-5
    rounds: int = 7  # timed rounds (each runs every row once)


CONFIGS = {
    "cpu": BenchConfig("cpu", n_layer=4, n_embd=256, n_head=4, batch=64, prompt_tokens=8, new_tokens=32),
    "cpu-quick": BenchConfig("cpu-quick", n_layer=4, n_embd=256, n_head=4, batch=16, prompt_tokens=8, new_tokens=32,
                             group_size=4, rounds=3),
    "gpu": BenchConfig("gpu", n_layer=12, n_embd=768, n_head=12, batch=256, prompt_tokens=32, new_tokens=64,
                       dtype="bfloat16"),
    "gpu-quick": BenchConfig("gpu-quick", n_layer=12, n_embd=768, n_head=12, batch=64, prompt_tokens=32,
                             new_tokens=64, dtype="bfloat16", rounds=3),
    # the smallest run, for the smoke test: seconds, numbers meaningless
    "smoke": BenchConfig("smoke", n_layer=1, n_embd=32, n_head=2, batch=4, prompt_tokens=4, new_tokens=4,
                         group_size=2, rounds=1),
}


def cheap_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """A reward model that costs next to nothing but varies: the share of "e" in each completion.

    The ``**kwargs`` let TRL call it too (it passes dataset columns as keywords).
    """
    return [c.count("e") / max(len(c), 1) for c in completions]


# ------------------------------------------------------------------------------------------ set-up
def fixed_length_prompts(tok: Any, n: int, length: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of exactly ``length`` tokens, cut from the built-in tasks' prompts (joined
    until long enough), kept only where decoding and encoding again gives ``length`` tokens."""
    from textenv.tasks import TASKS, get_task

    backend = tok.backend_tokenizer
    tasks = [get_task(name) for name in sorted(TASKS)]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        task = tasks[int(rng.integers(len(tasks)))]
        text = task.sample_prompt(rng)
        while len(backend.encode(text, add_special_tokens=False).ids) < length:
            text = text + " " + task.sample_prompt(rng)
        ids = backend.encode(text, add_special_tokens=False).ids[:length]
        prompt = backend.decode(ids, skip_special_tokens=True)
        if (prompt not in seen and prompt.strip() and
                len(backend.encode(prompt, add_special_tokens=False).ids) == length):
            seen.add(prompt)
            out.append(prompt)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not cut {n} prompts of {length} tokens from the tasks' prompts")


def save_model_dir(cfg: BenchConfig, tok: Any, path: Path) -> dict[str, Any]:
    """A randomly initialised GPT-2 of ``cfg`` saved with ``tok`` into ``path``; returns its size."""
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(0)
    gcfg = tiny_gpt2_config(len(tok), n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                            n_positions=max(128, cfg.prompt_tokens + cfg.new_tokens),
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(gcfg)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    n_params = sum(p.numel() for p in model.parameters())
    return {"architecture": "GPT-2", "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
            "vocab_size": len(tok), "parameters": n_params, "dtype": cfg.dtype}


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ the limit
def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def kv_decode(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: int,
              generator: torch.Generator) -> torch.Tensor:
    """The bare KV-cache decode loop: prefill, then one token per step, sampled with the same sampler as
    the policy (:func:`textenv.decoding.sample_categorical`: inverse CDF on CPU, multinomial on GPU).

    Returns the sampled tokens ``(B, new_tokens)``.
    """
    from transformers import DynamicCache

    from textenv.decoding import cache_kwargs, sample_categorical

    cache = DynamicCache()
    attn = prompt_mask.long()
    pos = positions(attn)
    out = model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                **cache_kwargs(model, cache))
    last = pos[:, -1:]
    ones = attn.new_ones(attn.shape[0], 1)
    tokens = []
    for t in range(new_tokens):
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        nxt = sample_categorical(logp, generator)[:, None]  # (B, 1)
        tokens.append(nxt)
        if t == new_tokens - 1:
            break
        attn = torch.cat([attn, ones], dim=1)
        last = last + 1
        out = model(input_ids=nxt, attention_mask=attn, position_ids=last, use_cache=True, logits_to_keep=1,
                    **cache_kwargs(model, cache))
    return torch.cat(tokens, dim=1)  # (B, T)


def train_step(model: Any, optimizer: torch.optim.Optimizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
               tokens: torch.Tensor, advantages: torch.Tensor) -> float:
    """One forward-backward-AdamW step of a policy-gradient loss over prompt + completion sequences."""
    P = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, tokens], dim=1)  # (B, P+T)
    attn = torch.cat([prompt_mask.long(), torch.ones_like(tokens)], dim=1)  # (B, P+T)
    model.train()
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits[:, P - 1:-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)
    loss = -(logprobs * advantages[:, None]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def ref_forward(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs ``(B, T)`` of ``tokens`` under a frozen model: one no-grad forward over prompt +
    completion, what a KL penalty to a reference costs (not part of ``train_limit``)."""
    P = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, tokens], dim=1)  # (B, P+T)
    attn = torch.cat([prompt_mask.long(), torch.ones_like(tokens)], dim=1)  # (B, P+T)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits[:, P - 1:-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)


# ------------------------------------------------------------------------------------------ memory
class PeakRSS:
    """High-water mark of this process's resident memory while the block runs (sampled every 5 ms from
    /proc; falls back to ``resource.getrusage``'s process peak where /proc is missing)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return ru_maxrss_bytes()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())


def ru_maxrss_bytes() -> int:
    """The process's peak RSS so far (``resource.getrusage``; KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


# ------------------------------------------------------------------------------------------ rows
@dataclasses.dataclass
class Row:
    """One measured thing: ``run()`` does one timed unit of work and returns its seconds."""

    name: str
    what: str
    tokens: int  # completion tokens per run
    run: Callable[[], float]
    seconds: list[float] = dataclasses.field(default_factory=list)
    extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    peak_rss_mib: float | None = None  # high-water RSS during the row's first run
    rss_growth_mib: float | None = None  # that high-water minus the RSS just before the run
    ru_maxrss_mib: float | None = None  # the process's peak RSS after the row's first run (cumulative)
    peak_gpu_mib: float | None = None  # torch.cuda.max_memory_allocated during the first run


class Bench:
    """Builds every row of one configuration on one model directory."""

    def __init__(self, cfg: BenchConfig, device: torch.device, reward_model: str = "cheap", use_trl: bool = True,
                 workdir: Path | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.dtype = getattr(torch, cfg.dtype)
        self.tok = env_step.benchmark_tokenizer()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="textenv-throughput-"))
        self.model_dir = self.workdir / "model"
        self.model_info = save_model_dir(cfg, self.tok, self.model_dir)
        B, G = cfg.batch, cfg.group_size
        if B % G:
            raise ValueError(f"group_size {G} must divide batch {B}")
        self.prompts = fixed_length_prompts(self.tok, max(4 * B, 256), cfg.prompt_tokens)
        self.reward_name = reward_model
        self.reward: Any = cheap_reward if reward_model == "cheap" else reward_model
        self.rows: dict[str, Row] = {}
        self.trl_reason: str | None = None
        self._build_limit()
        self._build_rollout()
        self._build_agents()
        self.trl_trainer: Any = None
        self.trl_defaults_reason: str | None = "not run"
        if use_trl:
            self._build_trl()
        else:
            self.trl_reason = "skipped (--no-trl)"

    # -------------------------------------------------------------------- helpers
    def _env(self) -> Any:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode

        import textenv  # noqa: F401  (registers the ids)

        return gym.make_vec("TextGen-v0", num_envs=self.cfg.batch, autoreset_mode=AutoresetMode.DISABLED,
                            tokenizer=self.tok, prompts=self.prompts, reward_model=self.reward,
                            max_prompt_tokens=self.cfg.prompt_tokens, max_new_tokens=self.cfg.new_tokens,
                            terminate_on_eos=False).unwrapped

    def _policy(self, with_reference: bool) -> Any:
        from agents.policy import LMPolicy

        model = self._load()
        policy = LMPolicy(model, self.tok, with_reference=with_reference)
        return policy.to(self.device, dtype=self.dtype) if self.dtype != torch.float32 else policy.to(self.device)

    def _load(self) -> Any:
        """The model every row starts from (a hook: benchmarks/gpu.py adds LoRA here)."""
        return load_model(self.model_dir, self.device, self.dtype)

    def _trl_kwargs(self) -> dict[str, Any]:
        """Extra keywords for TRL's ``GRPOTrainer`` (a hook: benchmarks/gpu.py passes ``peft_config``)."""
        return {}

    def _timed(self, fn: Callable[[], Any]) -> float:
        sync(self.device)
        t = time.perf_counter()
        fn()
        sync(self.device)
        return time.perf_counter() - t

    # -------------------------------------------------------------------- rows
    def _build_limit(self) -> None:
        from agents.policy import fuse_activations

        cfg, dev = self.cfg, self.device
        # the limit gets the same kernels as our policy (fused GELU, inverse-CDF sampling on CPU), so the
        # ratios measure what the env and the agents add, not which sampler or activation each side uses
        model = fuse_activations(self._load())
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
        # a frozen copy for the reference forward that a KL penalty needs (timed apart: ref_forward_s)
        ref = fuse_activations(self._load()).requires_grad_(False)
        backend = self.tok.backend_tokenizer
        enc = [backend.encode(p, add_special_tokens=False).ids for p in self.prompts]
        gen = torch.Generator(device=dev).manual_seed(0)
        state = {"i": 0}
        B = cfg.batch

        def run() -> float:
            # a new slice of prompts each time, as a rollout would draw them (all exactly P tokens)
            start = (state["i"] * B) % (len(enc) - B + 1)
            state["i"] += 1
            ids = torch.tensor(enc[start:start + B], dtype=torch.long, device=dev)  # (B, P)
            mask = torch.ones_like(ids)
            sync(dev)
            t0 = time.perf_counter()
            tokens = kv_decode(model, ids, mask, cfg.new_tokens, gen)
            sync(dev)
            t1 = time.perf_counter()
            adv = torch.randn(B, device=dev, generator=gen)
            train_step(model, optimizer, ids, mask, tokens, adv)
            sync(dev)
            t2 = time.perf_counter()
            ref_forward(ref, ids, mask, tokens)
            sync(dev)
            t3 = time.perf_counter()
            limit.extra.setdefault("decode_s", []).append(t1 - t0)
            limit.extra.setdefault("train_step_s", []).append(t2 - t1)
            limit.extra.setdefault("ref_forward_s", []).append(t3 - t2)
            return t2 - t0

        limit = Row("limit", "bare KV-cache decode loop (kv_limit) + one fwd-bwd-AdamW step (train_limit)",
                    B * cfg.new_tokens, run)
        self.rows["limit"] = limit

    def _build_rollout(self) -> None:
        from agents.rollout import collect_rollout

        cfg = self.cfg
        policy = self._policy(with_reference=False)
        envs = self._env()
        gen = torch.Generator(device=self.device).manual_seed(1)
        state = {"i": 0}

        def run() -> float:
            state["i"] += 1
            t = time.perf_counter()
            batch = collect_rollout(policy, envs, seed=state["i"], with_values=False, with_ref=False, generator=gen)
            sync(self.device)
            dt = time.perf_counter() - t
            assert int(batch.mask.sum()) == cfg.batch * cfg.new_tokens, "every row must generate new_tokens tokens"
            return dt

        self.rows["rollout"] = Row("rollout", "agents.rollout.collect_rollout through TextGenVectorEnv "
                                   "(autoreset DISABLED, no values, no reference)", cfg.batch * cfg.new_tokens, run)
        self._rollout_parts = (policy, envs, gen)

    def _build_agents(self) -> None:
        from agents import GRPO, PPO, REINFORCE, RLOO

        cfg = self.cfg
        dev = "cuda" if self.device.type == "cuda" else "cpu"
        common = {"batch_size": cfg.batch, "kl_coef": cfg.kl_coef, "learning_rate": cfg.learning_rate, "device": dev}
        self.agents = {
            "ppo": PPO(self._env(), policy=self._policy(with_reference=True), n_epochs=1, n_minibatches=1, **common),
            "grpo": GRPO(self._env(), policy=self._policy(with_reference=True), group_size=cfg.group_size,
                         num_iterations=1, n_minibatches=1, **common),
            "reinforce": REINFORCE(self._env(), policy=self._policy(with_reference=True), **common),
            "rloo": RLOO(self._env(), policy=self._policy(with_reference=True), group_size=4, **common),
        }
        for name, agent in self.agents.items():
            def run(agent: Any = agent) -> float:
                return self._timed(lambda: agent.learn(cfg.batch, progress=False))

            self.rows[f"{name}_iteration"] = Row(
                f"{name}_iteration", f"agents.{name.upper()} Agent.learn for one iteration (rollout + update)",
                cfg.batch * cfg.new_tokens, run)

    def _trl_reward(self) -> Any:
        """The reward function TRL gets: the same as ours."""
        if self.reward_name == "cheap":
            return cheap_reward
        from textenv.rewards import resolve_reward_model
        from textenv.tasks import get_task

        rm = resolve_reward_model(self.reward_name, get_task("sentiment"))

        def reward_fn(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
            return [float(x) for x in rm(list(prompts), list(completions))]

        reward_fn.__name__ = f"textenv_{self.reward_name}"
        return reward_fn

    def _trl_args(self, defaults: bool) -> dict[str, Any]:
        """``GRPOConfig`` keywords. Both sets give TRL the same work as ours (batch, group size, completion
        length, every row generating the full length) and keep its bookkeeping out of the timing (no saving,
        logging, progress bar). ``defaults=False`` (the tuned row) also sets our beta, learning rate and loss
        and turns off gradient checkpointing (mixed precision only where ours has it); ``defaults=True``
        leaves the rest at TRL's defaults, as a user who only sets the shape runs it (on CPU ``use_cpu``,
        without which TRL's default ``bf16=True`` refuses to start)."""
        cfg = self.cfg
        on_gpu = self.device.type == "cuda"
        shape: dict[str, Any] = dict(
            output_dir=str(self.workdir / ("trl-defaults" if defaults else "trl")),
            per_device_train_batch_size=cfg.batch, num_generations=cfg.group_size,
            max_completion_length=cfg.new_tokens, generation_kwargs={"min_new_tokens": cfg.new_tokens},
            use_cpu=not on_gpu, max_steps=10_000, logging_steps=10_000, save_strategy="no", report_to="none",
            disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        )
        if defaults:
            return shape
        return {**shape, "gradient_accumulation_steps": 1, "beta": cfg.kl_coef, "learning_rate": cfg.learning_rate,
                "num_iterations": 1, "loss_type": "grpo", "scale_rewards": "group", "epsilon": 0.2,
                "max_grad_norm": 1.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "gradient_checkpointing": False,
                "bf16": on_gpu and cfg.dtype == "bfloat16", "model_init_kwargs": {"dtype": self.dtype},
                "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0, "seed": 0}

    def _make_trl_trainer(self, defaults: bool) -> tuple[Any, str | None]:
        """TRL's ``GRPOTrainer`` on our model directory, prompts and reward, or ``(None, why not)``."""
        try:
            import trl
            from datasets import Dataset
            from trl import GRPOConfig, GRPOTrainer
        except Exception as exc:  # ImportError, or an incompatible install failing at import
            return None, f"trl is not importable: {type(exc).__name__}: {exc}"
        cfg = self.cfg
        n_prompts = cfg.batch // cfg.group_size
        ds = Dataset.from_dict({"prompt": [self.prompts[i % len(self.prompts)] for i in range(n_prompts * 200)]})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gradient_checkpointing's rename in transformers 5
                args = GRPOConfig(**self._trl_args(defaults))
                trainer = GRPOTrainer(model=str(self.model_dir), reward_funcs=[self._trl_reward()], args=args,
                                      train_dataset=ds, **self._trl_kwargs())
        except Exception as exc:
            return None, f"TRL {trl.__version__} GRPOTrainer failed to build: {type(exc).__name__}: {exc}"
        torch.set_num_threads(BENCH_THREADS)  # in case anything on TRL's side changed it
        self.trl_version = trl.__version__
        return trainer, None

    def _build_trl(self) -> None:
        self.trl_trainer, self.trl_reason = self._make_trl_trainer(defaults=False)
        if self.trl_trainer is not None:
            self.rows["trl_grpo"] = Row("trl_grpo", f"TRL {self.trl_version} GRPOTrainer, one training step "
                                        "(generate + reward + reference + loss + backward + AdamW)",
                                        self.cfg.batch * self.cfg.new_tokens, lambda: float("nan"))

    def run_trl_defaults(self, rounds: int) -> None:
        """TRL's ``GRPOTrainer`` with its default ``GRPOConfig`` (:meth:`_trl_args`): one warm-up step, then
        ``rounds`` timed steps, each followed by one of our GRPO iterations (``grpo_defaults_pair_s``), so
        the ratio is taken side by side like the others. Run after :meth:`run` (the tuned trainer freed)."""
        self.trl_trainer = None
        gc.collect()
        trainer, self.trl_defaults_reason = self._make_trl_trainer(defaults=True)
        if trainer is None:
            return
        row = Row("trl_grpo_defaults", f"TRL {self.trl_version} GRPOTrainer with its default GRPOConfig (only "
                  "the shape set: batch, group, lengths; use_cpu on CPU), one training step",
                  self.cfg.batch * self.cfg.new_tokens, lambda: float("nan"))
        ours = self.rows["grpo_iteration"]

        def after(step: int, dt: float, control: Any) -> None:
            if step >= 2:  # step 1 is the warm-up
                row.seconds.append(dt)
                torch.set_num_threads(BENCH_THREADS)
                row.extra.setdefault("grpo_defaults_pair_s", []).append(ours.run())
            if step >= rounds + 1:
                control.should_training_stop = True

        trainer.add_callback(timed_steps(self, row, after))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        torch.set_num_threads(BENCH_THREADS)
        self.rows["trl_grpo_defaults"] = row

    # -------------------------------------------------------------------- running
    def our_rows(self) -> list[Row]:
        return [r for name, r in self.rows.items() if not name.startswith("trl_")]

    def run_round(self, k: int) -> None:
        rows = self.our_rows()
        k = k % len(rows)
        for row in rows[k:] + rows[:k]:
            row.seconds.append(row.run())

    @contextlib.contextmanager
    def memory(self, row: Row) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        before = PeakRSS()._rss()
        with PeakRSS() as peak:
            yield
        row.peak_rss_mib = peak.peak_bytes / 2**20
        row.rss_growth_mib = (peak.peak_bytes - before) / 2**20
        row.ru_maxrss_mib = ru_maxrss_bytes() / 2**20
        if self.device.type == "cuda":
            row.peak_gpu_mib = torch.cuda.max_memory_allocated(self.device) / 2**20

    def warmup(self) -> None:
        """Every row twice, untimed; memory is measured in the first run (where allocations happen)."""
        for row in self.our_rows():
            with self.memory(row):
                row.run()
        for row in self.our_rows():
            row.run()
            row.extra.clear()

    def run(self) -> None:
        """Warm-up, then ``rounds`` timed rounds; with TRL, each round starts with one TRL step."""
        rounds = self.cfg.rounds
        if self.trl_trainer is None:
            self.warmup()
            for k in range(rounds):
                self.run_round(k)
            return
        bench = self
        trl_row = self.rows["trl_grpo"]

        def after(step: int, dt: float, control: Any) -> None:
            """TRL's step i, then every other row once, then TRL's step i+1..."""
            if step == 1:
                bench.warmup()
            elif step >= 3:  # steps 1-2 are TRL's warm-up
                trl_row.seconds.append(dt)
                # TRL's own figure (generation + loss + backward, without the optimizer step), as a check
                own = getattr(bench.trl_trainer, "_metrics", {}).get("train", {}).get("step_time")
                if own:
                    trl_row.extra.setdefault("trl_reported_step_time_s", []).append(float(own[-1]))
                bench.run_round(step - 3)
            if step >= rounds + 2:
                control.should_training_stop = True

        self.trl_trainer.add_callback(timed_steps(self, trl_row, after))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trl_trainer.train()
        torch.set_num_threads(BENCH_THREADS)

    # -------------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        cfg = self.cfg
        med = statistics.median
        rows: dict[str, Any] = {}
        limit = self.rows["limit"]
        decode = limit.extra["decode_s"]
        train = limit.extra["train_step_s"]
        tokens = cfg.batch * cfg.new_tokens

        def row_json(name: str, seconds: list[float], row: Row, what: str) -> dict[str, Any]:
            return {"what": what, "tokens_per_s": tokens / med(seconds), "seconds": med(seconds),
                    "all_seconds": seconds, "peak_rss_mib": row.peak_rss_mib, "rss_growth_mib": row.rss_growth_mib,
                    "ru_maxrss_mib": row.ru_maxrss_mib, "peak_gpu_mib": row.peak_gpu_mib}

        rows["kv_limit"] = row_json("kv_limit", decode, limit, "bare HF KV-cache decode loop (fused GELU, the policy's sampler)")
        rows["train_limit"] = row_json("train_limit", limit.seconds, limit,
                                       "kv_limit + one forward-backward-AdamW step over the same sequences")
        rows["train_limit"]["train_step_seconds"] = med(train)
        ref_s = limit.extra.get("ref_forward_s")
        if ref_s:
            with_ref = [a + b for a, b in zip(limit.seconds, ref_s)]
            rows["train_limit_with_ref"] = row_json(
                "train_limit_with_ref", with_ref, limit,
                "train_limit + one no-grad reference forward (the work a KL penalty adds)")
            rows["train_limit_with_ref"]["ref_forward_seconds"] = med(ref_s)
        for name, row in self.rows.items():
            if name != "limit" and row.seconds:
                rows[name] = row_json(name, row.seconds, row, row.what)
                for key, values in row.extra.items():
                    rows[name][key] = med(values)

        def per_round(num: list[float], den: list[float]) -> list[float]:
            """den_seconds / num_seconds of each round (= the tokens/s ratio num / den, side by side)."""
            return [d / n for n, d in zip(num, den)]

        per: dict[str, list[float]] = {
            "rollout_vs_kv_limit": per_round(self.rows["rollout"].seconds, decode),
            "train_vs_limit": per_round(self.rows["grpo_iteration"].seconds, limit.seconds),
            "ppo_train_vs_limit": per_round(self.rows["ppo_iteration"].seconds, limit.seconds),
        }
        if ref_s:  # against the limit that also does the reference forward, as every one of our iterations does
            per["train_vs_limit_with_ref"] = per_round(self.rows["grpo_iteration"].seconds, with_ref)
            per["ppo_train_vs_limit_with_ref"] = per_round(self.rows["ppo_iteration"].seconds, with_ref)
        # every agent against its own limit: the limit loop doing the work its iteration must do (decode, the
        # reference forward when it has a KL penalty, one forward-backward-AdamW), see the module docstring
        own: dict[str, str] = {}
        for name, agent in self.agents.items():
            key = f"{name}_iteration"
            if not self.rows[key].seconds:
                continue
            needs_ref = bool(agent.policy.has_reference) and bool(ref_s)
            per[f"{name}_vs_own_limit"] = per_round(self.rows[key].seconds, with_ref if needs_ref else limit.seconds)
            own[name] = "train_limit_with_ref" if needs_ref else "train_limit"
        out: dict[str, Any] = {name: med(v) for name, v in per.items()}
        out["own_limit"] = own
        own_ratios = [out[f"{n}_vs_own_limit"] for n in own]
        out["min_agent_vs_own_limit"] = min(own_ratios) if own_ratios else None
        out["grpo_vs_trl_grpo"] = None
        out["grpo_vs_trl_grpo_reason"] = self.trl_reason
        if "trl_grpo" in self.rows and self.rows["trl_grpo"].seconds:
            per["grpo_vs_trl_grpo"] = per_round(self.rows["grpo_iteration"].seconds, self.rows["trl_grpo"].seconds)
            out["grpo_vs_trl_grpo"] = med(per["grpo_vs_trl_grpo"])
            out["grpo_vs_trl_grpo_reason"] = None
        defaults = self.rows.get("trl_grpo_defaults")
        out["grpo_vs_trl_grpo_defaults"] = None
        out["grpo_vs_trl_grpo_defaults_reason"] = getattr(self, "trl_defaults_reason", "not run")
        if defaults is not None and defaults.seconds:
            per["grpo_vs_trl_grpo_defaults"] = per_round(defaults.extra["grpo_defaults_pair_s"], defaults.seconds)
            out["grpo_vs_trl_grpo_defaults"] = med(per["grpo_vs_trl_grpo_defaults"])
            out["grpo_vs_trl_grpo_defaults_reason"] = None
            out["trl_grpo_defaults_config"] = {k: v for k, v in self._trl_args(defaults=True).items()
                                               if k != "output_dir"}
        out["spread"] = {name: spread(v) for name, v in per.items()}
        out["rows"] = rows
        return out



# ------------------------------------------------------------------------------------------ profiling
def timed_steps(bench: Bench, row: Row, after: Callable[[int, float, Any], None]) -> Any:
    """A ``transformers.TrainerCallback`` that times each of a TRL trainer's steps (device-synchronised),
    measures the first step's memory into ``row`` (:meth:`Bench.memory`), then calls
    ``after(step, seconds, control)`` with the step counted from 1 (set ``control.should_training_stop``
    there to end the run)."""
    from transformers import TrainerCallback

    class TimedSteps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.peak = bench.memory(row) if state.global_step == 0 else None
            if self.peak is not None:
                self.peak.__enter__()
            sync(bench.device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(bench.device)
            dt = time.perf_counter() - self.t0
            if self.peak is not None:
                self.peak.__exit__(None, None, None)
            after(state.global_step, dt, control)  # global_step is already incremented: 1 after the first

    return TimedSteps()


def profile(bench: Bench, top: int = 25) -> str:
    """cProfile of one rollout and one GRPO iteration: the stages (cumulative) and the top own-time costs."""
    import cProfile
    import io
    import pstats

    out = io.StringIO()
    for name in ("rollout", "grpo_iteration"):
        prof = cProfile.Profile()
        prof.enable()
        bench.rows[name].run()
        prof.disable()
        out.write(f"\n===== {name}: top {top} by own time\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
        out.write(f"===== {name}: stages (cumulative)\n")
        pstats.Stats(prof, stream=out).sort_stats("cumtime").print_stats(
            r"collect_rollout|policy.py.*(start|step|_act|_sample|evaluate|ref_logprobs)|vector.py.*step|"
            r"update|backward|optim.*step|clip_grad|_step|learn")
    return out.getvalue()


# ------------------------------------------------------------------------------------------ main
def pick_config(device: torch.device, quick: bool, smoke: bool) -> BenchConfig:
    if smoke:
        return copy.deepcopy(CONFIGS["smoke"])
    base = "gpu" if device.type == "cuda" else "cpu"
    return copy.deepcopy(CONFIGS[f"{base}-quick" if quick else base])


def versions() -> dict[str, str]:
    v = env_step.versions()
    for mod in ("trl", "accelerate", "datasets"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as exc:
            v[mod] = f"not importable ({type(exc).__name__})"
    return v


def run_benchmark(quick: bool = False, smoke: bool = False, device: str | None = None, reward_model: str = "cheap",
                  use_trl: bool = True, rounds: int | None = None, json_path: Path | None = None,
                  do_profile: bool = False, env_step_kwargs: dict[str, Any] | None = None,
                  note: str | None = None, trl_defaults_rounds: int | None = None,
                  argv: list[str] | None = None) -> dict[str, Any]:
    """Build, run and report one configuration; returns (and writes) the JSON result.

    ``trl_defaults_rounds``: timed steps of TRL with its default config (default 2, 1 with ``smoke``; 0 skips
    it). ``argv``: the command-line arguments, recorded as ``command``.
    """
    load_start = load_average()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = pick_config(dev, quick, smoke)
    if rounds is not None:
        cfg.rounds = rounds
    t_start = time.perf_counter()
    bench = Bench(cfg, dev, reward_model=reward_model, use_trl=use_trl)
    bench.run()
    if trl_defaults_rounds is None:
        trl_defaults_rounds = 1 if smoke else 2
    if not use_trl:
        bench.trl_defaults_reason = "skipped (--no-trl)"
    elif trl_defaults_rounds < 1:
        bench.trl_defaults_reason = "skipped (--trl-defaults-rounds 0)"
    else:
        bench.run_trl_defaults(trl_defaults_rounds)
    res = bench.results()
    if do_profile:
        print(profile(bench))
    if env_step_kwargs is None:
        env_step_kwargs = env_step.SMOKE if smoke else {"quick": True, "repeats": 2} if quick else {}
    es = env_step.measure(**env_step_kwargs)
    result: dict[str, Any] = {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "config": {**dataclasses.asdict(cfg), "model": bench.model_info,
                   "completion_tokens_per_run": cfg.batch * cfg.new_tokens,
                   "reward_model": ("cheap callable (share of 'e' in the completion), the same for ours and TRL"
                                    if reward_model == "cheap" else f"{reward_model!r} (textenv), the same for TRL"),
                   "prompts": f"{cfg.prompt_tokens} tokens each (fixed length), cut from the built-in tasks' prompts",
                   "terminate_on_eos": False, "torch_threads": torch.get_num_threads(),
                   "tokenizer": env_step.tokenizer_source(),
                   "statistic": "median over rounds; ratios are medians of per-round ratios"},
        **{k: v for k, v in res.items() if k != "rows"},
        "env_step_us": es["env_step_us"],
        "vector_env_step_us_per_env": es["vector_env_step_us_per_env"],
        "targets": {"rollout_vs_kv_limit": TARGET_ROLLOUT_VS_KV_LIMIT, "grpo_vs_trl_grpo": TARGET_GRPO_VS_TRL_GRPO,
                    "agent_vs_own_limit": TARGET_AGENT_VS_OWN_LIMIT,
                    "env_step_us": env_step.TARGET_ENV_STEP_US,
                    "vector_env_step_us_per_env": env_step.TARGET_VECTOR_STEP_US_PER_ENV},
        "rows": res["rows"],
        "env_step": es,
        "peak_rss_mib_process": ru_maxrss_bytes() / 2**20,
        "versions": versions(),
        "wall_s": time.perf_counter() - t_start,
        "load_average": {"start": load_start, "end": load_average()},
        "command": command("throughput", argv),
        "note": note,
    }
    print(report(result))
    path = json_path if json_path is not None else RESULTS_DIR / f"throughput-{dev.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result, indent=2, default=_json_default) + "\n")
    print(f"wrote {path}")
    return result


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def report(r: dict[str, Any]) -> str:
    c = r["config"]
    m = c["model"]
    lines = [f"{r['device_name']}: GPT-2 {m['n_layer']}x{m['n_embd']} ({m['parameters'] / 1e6:.1f}M params, "
             f"V={m['vocab_size']}, {m['dtype']}), batch {c['batch']}, prompts {c['prompt_tokens']} tokens, "
             f"{c['new_tokens']} new tokens, group {c['group_size']}, beta {c['kl_coef']}, {c['rounds']} rounds",
             f"reward model: {c['reward_model']}", ""]
    for name, row in r["rows"].items():
        mem = (f"peak RSS {row['peak_rss_mib']:.0f} MiB (+{row['rss_growth_mib']:.0f})" if row["peak_rss_mib"]
               else "")
        if row.get("peak_gpu_mib"):
            mem += f", peak GPU {row['peak_gpu_mib']:.0f} MiB"
        lines.append(f"{name:16s} {row['tokens_per_s']:9.0f} tok/s  {row['seconds']:7.3f} s/run   {mem}")

    def fmt(x: float | None) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    lines += ["",
              f"rollout_vs_kv_limit  {fmt(r['rollout_vs_kv_limit'])}  (target >= {TARGET_ROLLOUT_VS_KV_LIMIT})",
              f"train_vs_limit       {fmt(r['train_vs_limit'])}  (GRPO iteration vs decode + fwd-bwd-AdamW)",
              f"ppo_train_vs_limit   {fmt(r['ppo_train_vs_limit'])}",
              f"train_vs_limit_with_ref {fmt(r.get('train_vs_limit_with_ref'))}, ppo "
              f"{fmt(r.get('ppo_train_vs_limit_with_ref'))}  (the limit + the reference forward a KL penalty needs)",
              *(f"{name}_vs_own_limit {fmt(r.get(f'{name}_vs_own_limit'))}  (against {lim})"
                for name, lim in r.get("own_limit", {}).items()),
              f"min_agent_vs_own_limit {fmt(r.get('min_agent_vs_own_limit'))}  (target >= {TARGET_AGENT_VS_OWN_LIMIT})",
              f"grpo_vs_trl_grpo     {fmt(r['grpo_vs_trl_grpo'])}  (target >= {TARGET_GRPO_VS_TRL_GRPO})"
              + (f"  [{r['grpo_vs_trl_grpo_reason']}]" if r["grpo_vs_trl_grpo_reason"] else ""),
              f"grpo_vs_trl_grpo_defaults {fmt(r.get('grpo_vs_trl_grpo_defaults'))}  (ours vs TRL's default GRPOConfig)"
              + (f"  [{r['grpo_vs_trl_grpo_defaults_reason']}]" if r.get("grpo_vs_trl_grpo_defaults_reason") else ""),
              f"env_step_us {r['env_step_us']:.2f}, vector_env_step_us_per_env {r['vector_env_step_us_per_env']:.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="under a minute: smaller batch, fewer rounds")
    parser.add_argument("--smoke", action="store_true", help="the smallest run (tests): a tiny model, seconds")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--reward-model", default="cheap",
                        help="'cheap' (a trivial callable, the default) or 'default' (the shipped reward model)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/throughput-<device>.json")
    parser.add_argument("--profile", action="store_true", help="cProfile one rollout and one GRPO iteration")
    parser.add_argument("--threads", type=int, default=BENCH_THREADS, help="torch threads (default 2)")
    parser.add_argument("--note", default=None, help="a remark stored in the JSON (e.g. why --threads 1)")
    parser.add_argument("--trl-defaults-rounds", type=int, default=None,
                        help="timed steps of TRL's GRPOTrainer with its default GRPOConfig (default 2; 0 skips)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from textenv.models import quiet_progress

    with quiet_progress():  # restored after: main() may run in-process
        return run_benchmark(quick=args.quick, smoke=args.smoke, device=args.device, reward_model=args.reward_model,
                             use_trl=not args.no_trl, rounds=args.rounds, json_path=args.json,
                             do_profile=args.profile, note=args.note, trl_defaults_rounds=args.trl_defaults_rounds,
                             argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])
