"""Synchronised batched episodes through `TextGenVectorEnv`, collected into a `RolloutBatch`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from agents.policy import LMPolicy
from textenv.vector import TextGenVectorEnv


class RolloutBatch(NamedTuple):
    """One batch of finished episodes, laid out for one forward pass: left-padded prompts + completions.

    Shapes: B episodes, P prompt tokens (left-padded), T completion tokens (right-padded).

    Multi-turn tasks: ``tokens`` is the whole transcript after the prompt, the agent's tokens and the tokens
    the env inserted between its turns, in order; ``mask`` is 1 on the agent's tokens only (so every loss,
    KL and entropy that weights by it ignores the inserted ones, whose log-probs and values are computed by
    the training forward but never used) and ``inserted_mask`` is 1 on the inserted ones. Rewards sit on the
    agent token of the step that earned them.
    """

    query_ids: torch.Tensor  # (B, P) prompt ids, left-padded
    query_mask: torch.Tensor  # (B, P) 1 on prompt tokens
    tokens: torch.Tensor  # (B, T) completion ids, pad after the episode's end
    mask: torch.Tensor  # (B, T) float, 1 on completion tokens (the EOS that ended an episode included)
    logprobs: torch.Tensor  # (B, T) log pi_old(token) at sampling time
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref(token); zeros if not computed
    values: torch.Tensor  # (B, T) V(state before token) at sampling time; zeros if not computed
    rewards: torch.Tensor  # (B, T) env rewards per token (terminal mode: the score on the last token)
    scores: torch.Tensor  # (B,) episode return from the env (= reward-model score)
    gold_scores: torch.Tensor  # (B,) the task's gold score
    prompts: list[str]
    completions: list[str]
    stats: dict[str, float]  # timing of the rollout: tokens_per_s, rollout_s
    inserted_mask: torch.Tensor | None = None  # (B, T) float, 1 on tokens the env inserted; None: single-turn


def left_pad(obs_ids: np.ndarray, obs_mask: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn right-padded prompt observations ``(B, L)`` into left-padded ``(B, P)`` tensors, P = longest prompt."""
    lengths = obs_mask.sum(1).astype(np.int64)  # (B,)
    P = int(lengths.max())
    B = obs_ids.shape[0]
    ids = np.full((B, P), pad_id, dtype=np.int64)
    mask = np.zeros((B, P), dtype=np.int64)
    cols = np.arange(P)[None, :] >= (P - lengths)[:, None]  # (B, P) where the prompt goes
    src = np.arange(obs_ids.shape[1])[None, :] < lengths[:, None]  # (B, L) where the prompt is
    ids[cols] = obs_ids[src]
    mask[cols] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def check_env(envs: Any) -> TextGenVectorEnv:
    """The `TextGenVectorEnv` under ``envs`` (any autoreset mode: rollouts switch it, see :func:`synchronised`)."""
    inner = getattr(envs, "unwrapped", envs)
    if not isinstance(inner, TextGenVectorEnv):
        raise ValueError(f"agents need a textenv TextGenVectorEnv (gym.make_vec(\"TextGen-v0\", num_envs=...)), "
                         f"got {type(envs).__name__}")
    return inner


@contextmanager
def synchronised(env: TextGenVectorEnv) -> Iterator[TextGenVectorEnv]:
    """Run ``env`` with autoreset DISABLED inside the block (synchronised episodes: all slots start together,
    finished slots idle) and restore its own autoreset mode after, so an agent takes the env as
    ``gym.make_vec`` gives it (NEXT_STEP by default). On leaving, a NEXT_STEP env's finished slots are marked
    to reset on the next step, as if their episodes had just ended under that mode."""
    mode = env.autoreset_mode
    if mode == AutoresetMode.DISABLED:
        yield env
        return
    env.set_autoreset_mode(AutoresetMode.DISABLED)
    try:
        yield env
    finally:
        env.set_autoreset_mode(mode)


@torch.no_grad()
def collect_rollout(policy: LMPolicy, envs: TextGenVectorEnv, *, seed: int | None = None,
                    prompts: list[str] | None = None, split: str | None = None, with_values: bool = True,
                    with_ref: bool = True, generator: torch.Generator | None = None) -> RolloutBatch:
    """Run one synchronised episode in every slot of ``envs`` (all start together, finished slots idle).

    Acting uses the policy's KV cache: one token of forward per slot per step. The batch's tensors are on
    the policy's device (built there: the only host copy per token is the actions the env steps with;
    rewards and scores come from the env and are uploaded once per rollout). After the episodes end,
    the reference log-probs come from one batched forward of the reference model (``with_ref``).
    ``prompts`` (one per slot) fixes the prompts, e.g. groups of identical prompts for GRPO/RLOO.
    """
    with synchronised(check_env(envs)) as env:
        return _collect_rollout(policy, env, seed=seed, prompts=prompts, split=split, with_values=with_values,
                                with_ref=with_ref, generator=generator)


def _collect_rollout(policy: LMPolicy, env: TextGenVectorEnv, *, seed: int | None, prompts: list[str] | None,
                     split: str | None, with_values: bool, with_ref: bool, generator: torch.Generator | None
                     ) -> RolloutBatch:
    device = policy.device
    options: dict[str, Any] = {}
    if prompts is not None:
        options["prompts"] = prompts
    if split is not None:
        options["split"] = split
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed, options=options)
    B, T = env.num_envs, env.max_episode_tokens  # T: agent and inserted tokens (single-turn: max_new_tokens)
    query_ids, query_mask = left_pad(obs["input_ids"], obs["attention_mask"], env.pad_id)
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    prompt_len = obs["attention_mask"].sum(1).astype(np.int64)  # (B,)
    # the per-token buffers live on the policy's device: the decode loop writes them there, and the only
    # copy to the host per token is the actions the env steps with. Column T is scratch: a finished slot
    # writes there until the batch ends.
    W = T + 1
    tokens = torch.full((B, W), env.pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, W, device=device)
    values = torch.zeros(B, W, device=device)
    agent = torch.zeros(B, W, device=device)  # 1 where an action was written
    rows = torch.arange(B, device=device)
    ptr = torch.zeros(B, dtype=torch.long, device=device)  # each slot's next column (T once it is done)
    ptr_host = np.zeros(B, dtype=np.int64)
    rewards = np.zeros((B, W), dtype=np.float64)
    scores = np.zeros(B, dtype=np.float64)
    gold = np.zeros(B, dtype=np.float64)
    completions: list[str] = [""] * B
    lengths = np.full(B, T, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    policy.eval()
    out = policy.start(query_ids, query_mask, generator=generator, with_values=with_values)
    for _ in range(env.max_actions):
        tokens[rows, ptr] = out.actions
        logprobs[rows, ptr] = out.logprobs
        agent[rows, ptr] = 1.0
        if out.values is not None:
            values[rows, ptr] = out.values
        obs, r, terminated, _, info = env.step(out.actions.cpu().numpy())  # the one host copy per token
        rewards[np.arange(B), ptr_host] = r
        scores += r
        ended = np.flatnonzero(terminated)
        ptr_host[~done] += 1
        moved = ended.size > 0
        inserted = None
        if "_inserted_tokens" in info:  # multi-turn: the env appended the other speaker's tokens
            k = np.where(info["_inserted_tokens"] & ~done, info["inserted_tokens"], 0)  # (B,)
            if k.any():
                K = int(k.max())
                cols = ptr_host[:, None] + np.arange(K)[None, :]  # (B, K) where they sit after the prompt
                ins_mask = np.arange(K)[None, :] < k[:, None]
                src = np.minimum(prompt_len[:, None] + cols, obs["input_ids"].shape[1] - 1)
                ins_ids = np.where(ins_mask, np.take_along_axis(obs["input_ids"], src, 1), env.pad_id)
                ins_ids_dev = torch.from_numpy(ins_ids).to(device)
                ins_mask_dev = torch.from_numpy(ins_mask).to(device)
                for i in np.flatnonzero(k):
                    tokens[i, ptr_host[i]:ptr_host[i] + k[i]] = ins_ids_dev[i, :k[i]]
                ptr_host += k
                inserted = (ins_ids_dev, ins_mask_dev)
                moved = True
        if ended.size:
            lengths[ended] = ptr_host[ended]
            gold[ended] = info["gold_score"][ended]
            for i in ended:
                completions[i] = info["completion"][i]
            done[ended] = True
            ptr_host[ended] = T
        if done.all():
            break
        if moved:  # a slot ended or took inserted tokens: upload the new columns (only then)
            ptr = torch.tensor(ptr_host, device=device)  # a copy: from_numpy would share ptr_host's memory on CPU
        else:
            ptr = (ptr + 1).clamp_(max=T)
        out = policy.step(out.actions, generator=generator, with_values=with_values, inserted=inserted)
    policy.end()
    T_used = int(lengths.max())
    lengths_dev = torch.from_numpy(lengths).to(device)
    within = torch.arange(T_used, device=device)[None, :] < lengths_dev[:, None]  # (B, T_used)
    mask = agent[:, :T_used] * within  # (B, T_used): the agent's tokens
    inserted_mask = within.float() - mask if env.multi_turn else None
    tokens = tokens[:, :T_used].masked_fill(~within, env.pad_id)
    batch_prompts = env.prompts()
    rollout_s = time.perf_counter() - t0
    ref = (policy.ref_logprobs(query_ids, query_mask, tokens, mask) if with_ref and policy.has_reference
           else torch.zeros(B, T_used, device=device))
    host = torch.from_numpy(np.concatenate([rewards[:, :T_used], scores[:, None], gold[:, None]], axis=1))
    host = host.float().to(device)  # (B, T_used + 2): rewards, scores and gold in one upload
    n_tokens = int(lengths.sum())  # from the host copy of the lengths: no device sync
    return RolloutBatch(
        query_ids=query_ids, query_mask=query_mask, tokens=tokens, mask=mask,
        logprobs=logprobs[:, :T_used] * mask, ref_logprobs=ref * mask, values=values[:, :T_used] * mask,
        rewards=host[:, :T_used], scores=host[:, T_used], gold_scores=host[:, T_used + 1], prompts=batch_prompts,
        completions=completions,
        stats={"rollout_s": rollout_s, "tokens_per_s": n_tokens / max(rollout_s, 1e-9)},
        inserted_mask=inserted_mask,
    )


#: a completion counts as a wrong answer in ``completions/mean_length_wrong`` when its gold score is below this
WRONG_BELOW = 0.5
#: the training-only rollout metrics, which :func:`evaluate_policy` leaves out
TRAIN_ONLY_METRICS = ("tokens_per_s", "completions/wrong_fraction", "completions/mean_length_wrong")


def rollout_metrics(batch: RolloutBatch) -> dict[str, float]:
    """The field's standard rollout metrics: reward, gold_score, kl (sequence k1), completions/mean_length;
    and for training ``tokens_per_s``, ``completions/wrong_fraction`` (the share of completions whose gold score
    is below :data:`WRONG_BELOW`) and ``completions/mean_length_wrong`` (their mean length; 0 when there are
    none), the measure of Liu et al. 2025 ("Understanding R1-Zero-like training"): GRPO's per-sequence length
    normalisation lengthens wrong answers."""
    from agents.core import kl_penalty

    kl = kl_penalty(batch.logprobs, batch.ref_logprobs, "k1") * batch.mask  # (B, T)
    lengths = batch.mask.sum(1).float()
    wrong = (batch.gold_scores < WRONG_BELOW).float()
    n_wrong = float(wrong.sum())
    return {
        "reward": float(batch.scores.mean()),
        "gold_score": float(batch.gold_scores.mean()),
        "kl": float(kl.sum(1).mean()),
        "completions/mean_length": float(lengths.mean()),
        "completions/wrong_fraction": n_wrong / max(len(lengths), 1),
        "completions/mean_length_wrong": float((lengths * wrong).sum()) / n_wrong if n_wrong else 0.0,
        "tokens_per_s": batch.stats["tokens_per_s"],
    }


def trim_batch(batch: RolloutBatch, n: int) -> RolloutBatch:
    """The first ``n`` episodes of ``batch`` (all of it when it has no more)."""
    if n >= batch.scores.shape[0]:
        return batch
    cut: dict[str, Any] = {k: v[:n] for k, v in batch._asdict().items() if k != "stats" and v is not None}
    return batch._replace(**cut)


@torch.no_grad()
def evaluate_policy(policy: LMPolicy, envs: TextGenVectorEnv, num_episodes: int = 64, split: str = "test",
                    seed: int = 0) -> dict[str, float]:
    """Mean ``reward``, ``gold_score``, ``kl``, ``entropy`` and ``completions/mean_length`` of ``policy``
    over ``num_episodes`` seeded episodes on ``split`` prompts (the same seed gives the same numbers).

    Episodes come in batches of the env's ``num_envs``; of the last batch only the first episodes up to
    ``num_episodes`` are counted, so exactly ``num_episodes`` episodes make the means."""
    from agents.core import masked_mean

    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes must be an integer >= 1, got {num_episodes!r}")
    device = policy.device
    rows: list[dict[str, float]] = []
    weights: list[int] = []
    n = k = 0
    while n < num_episodes:
        s = seed + 1009 * k
        batch = collect_rollout(policy, envs, seed=s, split=split, with_values=False,
                                generator=torch.Generator(device=device).manual_seed(s))
        take = min(batch.scores.shape[0], num_episodes - n)
        batch = trim_batch(batch, take)  # the last batch counts only the episodes asked for
        m = rollout_metrics(batch)
        for key in TRAIN_ONLY_METRICS:
            m.pop(key)
        ent = policy.per_token_logps(batch.query_ids.to(device), batch.query_mask.to(device),
                                     batch.tokens.to(device), batch.mask.to(device)).entropy
        m["entropy"] = float(masked_mean(ent, batch.mask.to(device)))
        rows.append(m)
        weights.append(take)
        n += take
        k += 1
    total = float(sum(weights))
    return {key: float(sum(w * r[key] for w, r in zip(weights, rows)) / total) for key in rows[0]}


def sample_completions(policy: LMPolicy, envs: TextGenVectorEnv, n: int = 4, split: str = "test",
                       seed: int = 0, prompts: list[str] | None = None) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs sampled from ``policy`` (on ``prompts`` if given, cycled).

    More than the env's ``num_envs`` pairs take several batches (the first batch is seeded with ``seed``, as
    a single batch always was), so exactly ``n`` pairs come back."""
    env = check_env(envs)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if prompts is not None and not prompts:
        raise ValueError("prompts must hold at least one prompt")
    pairs: list[tuple[str, str]] = []
    k = 0
    while len(pairs) < n:
        s = seed + 1009 * k
        chunk = None
        if prompts is not None:
            chunk = [prompts[(len(pairs) + i) % len(prompts)] for i in range(env.num_envs)]
        batch = collect_rollout(policy, envs, seed=s, split=split, prompts=chunk, with_values=False,
                                with_ref=False, generator=torch.Generator(device=policy.device).manual_seed(s))
        pairs += list(zip(batch.prompts, batch.completions))[:n - len(pairs)]
        k += 1
    return pairs
