"""Data-parallel training of the native agents under ``torchrun`` (``torch.distributed``).

Launched by ``torchrun --nproc_per_node=N`` (or torchrun's multi-node flags), every process is a *rank*:
it builds the same agent, runs its own shard of the vector env with its own seeds, and the ranks combine
their gradients so that every optimizer step is the step one process would take on the whole batch.

How (the design, see also README "Scaling"):

- The process group is initialised from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``): backend ``nccl`` when the agent runs on CUDA (each rank on
  ``cuda:LOCAL_RANK``), ``gloo`` on the CPU. Without ``WORLD_SIZE`` > 1 (or a group the caller made) there is
  nothing to do: :func:`context` returns a one-process :class:`Context` whose methods are the identity.
- ``batch_size`` is the **global** batch (episodes per iteration over all ranks); each rank collects
  ``batch_size / world_size`` of them. A run's hyperparameters, episode counts and checkpoints therefore
  mean the same whatever the number of processes (TRL's ``per_device_train_batch_size`` is per device; ours
  is not: ``--batch-size 64`` on 4 processes is 16 episodes per process).
- Gradients: an explicit all-reduce of the flattened gradients after ``backward`` (in buckets), not a
  ``DistributedDataParallel`` wrapper: our learner calls the policy through ``per_token_logps`` rather than
  a module's ``forward``, GRPO leaves the value head unused, and a rank may hold no episode of a minibatch;
  an explicit reduce handles all three with a few lines and no hooks, at the price of not overlapping the
  communication with the backward pass. Each rank's loss is weighted by its share of the global
  normaliser (its tokens for token means, its sequences for sequence means): the ranks' weighted gradients
  are summed and divided by the total weight, which is exactly the gradient of the loss over the global
  minibatch (the parity test in ``tests/test_distributed.py`` checks it against one process).
- Batch statistics (GRPO group and batch-std advantages, PPO's whitening and explained variance, the
  REINFORCE mean / EMA baseline, the adaptive KL's mean) are computed over the global batch, from the
  gathered per-episode values. Minibatches are drawn from one permutation of the global batch (the same
  on every rank). PPO and GRPO gather the whole rollout batch once per update (token ids and per-token
  floats, :meth:`Context.gather_batch`) and each rank trains on an equal part of every minibatch
  (:meth:`Context.minibatch_part`), so that no rank waits at the all-reduce for one that holds more of
  the minibatch (issue 11: this lifted PPO's 2-process scaling, see README "Scaling").
- Rank 0 alone writes (metrics, checkpoints, summary) and shows the progress bar; the others wait at a
  barrier. Every rank loads a checkpoint to resume.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

#: seeds of rank r's rollouts are the one-process seeds shifted by r times this prime (deterministic)
RANK_SEED_STRIDE = 104_729
#: elements per gradient all-reduce (bounds the temporary flat buffer: 32M float32 = 128 MB)
BUCKET_ELEMENTS = 32 * 1024 * 1024


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r} must be >= 0")
    return value


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset), or the size of an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    world = _env_int("WORLD_SIZE", 1)
    assert world is not None
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world} must be >= 1")
    return world


def launched_rank() -> int:
    """This process's ``RANK`` (0 when not launched by torchrun), or its rank in an initialised group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    if launched_world_size() == 1:
        return 0
    rank = _env_int("RANK", 0)
    assert rank is not None
    return rank


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s share of a rollout seeded ``seed`` (rank 0 keeps ``seed``)."""
    return (seed + RANK_SEED_STRIDE * rank) % (2**31 - 1)


class Context:
    """This process's place in the data-parallel job: ``rank`` of ``world_size`` (``local_rank`` on its
    machine). With ``world_size == 1`` every method is the identity and nothing communicates."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    def __repr__(self) -> str:
        return f"Context(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    @property
    def active(self) -> bool:
        """Whether there is more than one process (and so a process group)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates in the CLI and writes files."""
        return self.rank == 0

    # -------------------------------------------------------------------------------------- shards
    def shard(self, n: int) -> slice:
        """This rank's part of ``n`` global items (``n`` divisible by ``world_size``): a contiguous slice."""
        b = n // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    # -------------------------------------------------------------------------------------- collectives
    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over ranks (a new tensor; ``x`` itself when there is one process)."""
        if not self.active:
            return x
        import torch.distributed as dist

        y = x.detach().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    def gather(self, x: torch.Tensor, pad_value: float = 0.0, left: bool = False) -> torch.Tensor:
        """The ranks' ``x`` concatenated along dim 0, in rank order (the global batch). Tensors of 2 dims
        may differ in dim 1 (e.g. each shard's longest completion): the shorter are right-padded with
        ``pad_value`` (left-padded with ``left``, e.g. left-padded prompts)."""
        if not self.active:
            return x
        import torch.distributed as dist

        x = x.detach().contiguous()
        if x.dim() == 2:
            width = self.all_max(float(x.shape[1]))
            if x.shape[1] < width:
                pad = x.new_full((x.shape[0], int(width) - x.shape[1]), pad_value)
                x = torch.cat([pad, x] if left else [x, pad], dim=1)
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    def gather_batch(self, batch: Any, pad_id: int) -> Any:
        """The global :class:`~agents.rollout.RolloutBatch` on every rank: each tensor of the ranks' shards
        gathered in rank order and re-padded as one process would hold it (prompts left-padded to the
        longest, completions right-padded with ``pad_id`` / mask 0); the text lists stay this rank's.

        Minibatch updates (PPO, GRPO) train on the global batch so that every rank can take an equal part
        of every minibatch (:meth:`minibatch_part`): the ranks then do the same work between two gradient
        all-reduces instead of waiting for the one that holds more of the minibatch's episodes. The batch
        is token ids and per-token floats, small next to the model, and gathered once per update."""
        if not self.active:
            return batch
        fields: dict[str, Any] = {
            "query_ids": self.gather(batch.query_ids, pad_id, left=True),
            "query_mask": self.gather(batch.query_mask, 0, left=True),
            "tokens": self.gather(batch.tokens, pad_id),
        }
        for name in ("mask", "logprobs", "ref_logprobs", "values", "rewards", "scores", "gold_scores"):
            fields[name] = self.gather(getattr(batch, name))
        return batch._replace(**fields)

    def local_indices(self, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, bool]:
        """The entries of global indices ``idx`` (into a batch of ``n``, sharded by :meth:`shard`) that fall in
        this rank's shard, as indices into the shard, and whether there were any. A rank with none gets index
        ``[0]`` back (and ``False``): it computes its loss on one episode with weight 0, so that it runs the
        same forward and backward as the others (FSDP's collectives included) and contributes nothing.

        For updates that keep each rank's own shard (DAPO, GSPO, REINFORCE++) instead of gathering the batch
        (:meth:`gather_batch` and :meth:`minibatch_part`, which balance the ranks' work)."""
        if not self.active:
            return idx, idx.numel() > 0
        s = self.shard(n)
        keep = (idx >= s.start) & (idx < s.stop)
        local = idx[keep] - s.start
        if local.numel() == 0:
            return torch.zeros(1, dtype=idx.dtype, device=idx.device), False
        return local, True

    def minibatch_part(self, idx: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """This rank's equal part of a minibatch's global indices ``idx`` (into the gathered global batch,
        :meth:`gather_batch`): ``idx`` split into ``world_size`` contiguous parts whose sizes differ by at
        most 1, and whether its part is not empty. A rank with none (a minibatch smaller than the number of
        ranks) gets ``idx[:1]`` back (and ``False``): it computes its loss on one episode with weight 0,
        so that it runs the same backward as the others and contributes nothing."""
        if not self.active:
            return idx, idx.numel() > 0
        part = idx.tensor_split(self.world_size)[self.rank]
        if part.numel() == 0:
            return idx[:1], False
        return part, True

    def all_max(self, value: float) -> float:
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (so every rank takes the same branch)."""
        return self.all_max(1.0 if flag else 0.0) > 0

    def weighted_mean(self, stats: dict[str, Any], weight: float) -> dict[str, float]:
        """Per-rank means ``stats`` (floats or 0-dim tensors), each over ``weight`` items, as the means over
        all ranks' items: sum_r weight_r * stat_r / sum_r weight_r. Every rank passes the same keys."""
        values = {k: float(v) for k, v in stats.items()}
        if not self.active:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64,
                         device=self._comm_device())
        t = self.all_sum(t)
        total = float(t[-1]) if float(t[-1]) > 0 else 1.0
        return {k: float(t[i]) / total for i, k in enumerate(keys)}

    def mean_metrics(self, metrics: dict[str, float], summed: Sequence[str] = ()) -> dict[str, float]:
        """Metrics of equal shards averaged over ranks (``summed`` keys are added instead, e.g. a rate)."""
        if not self.active:
            return metrics
        keys = sorted(metrics)
        t = self.all_sum(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                                      device=self._comm_device()))
        return {k: float(t[i]) if k in summed else float(t[i]) / self.world_size for i, k in enumerate(keys)}

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def broadcast_module(self, *modules: torch.nn.Module | None) -> None:
        """Copy rank 0's parameters and buffers of ``modules`` to every rank (as DDP does at wrap time)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for module in modules:
                if module is None:
                    continue
                for t in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(t.data, src=0)

    def reduce_gradients(self, params: Iterable[torch.nn.Parameter], loss: torch.Tensor, weight: float
                         ) -> float:
        """After ``(loss * weight).backward()`` on every rank: set each gradient to
        sum_r grad_r / sum_r weight_r (the gradient of the weighted global mean loss) and return that loss,
        sum_r loss_r * weight_r / sum_r weight_r. A parameter without a gradient on every rank keeps none
        (AdamW skips it, as in one process); one with a gradient on some rank only is read as 0 elsewhere."""
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        device = params[0].device if params else self._comm_device()
        head = torch.tensor([float(loss.detach()) * weight, weight] + [float(p.grad is not None) for p in params],
                            dtype=torch.float64, device=device)
        dist.all_reduce(head, op=dist.ReduceOp.SUM)
        total = float(head[1])
        has_grad = head[2:].tolist()
        live = [p for p, h in zip(params, has_grad) if h > 0]
        for p, h in zip(params, has_grad):
            if h == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = torch.zeros_like(p)
        scale = 1.0 / total if total > 0 else 0.0
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in live:
            if bucket and (size + p.numel() > BUCKET_ELEMENTS or p.device != bucket[0].device):
                self._reduce_bucket(bucket, scale)
                bucket, size = [], 0
            bucket.append(p)
            size += p.numel()
        if bucket:
            self._reduce_bucket(bucket, scale)
        return float(head[0]) * scale if total > 0 else float(loss.detach())

    @staticmethod
    def _reduce_bucket(bucket: list[torch.nn.Parameter], scale: float) -> None:
        import torch.distributed as dist

        grads = [p.grad for p in bucket if p.grad is not None]  # all of them: reduce_gradients filled them
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.mul_(scale)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


_CREATED = False


def context(device: torch.device) -> Context:
    """The :class:`Context` of this process for an agent on ``device``, initialising the process group from
    torchrun's environment the first time (``nccl`` on CUDA, ``gloo`` otherwise). A group the caller made
    with ``torch.distributed.init_process_group`` is used as it is."""
    import torch.distributed as dist

    world = launched_world_size()
    if world == 1:
        return Context()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    if not dist.is_initialized():
        rank = _env_int("RANK")
        if rank is None or rank >= world:
            raise ValueError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}: launch with torchrun, "
                             f"which sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ValueError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
        global _CREATED
        if not _CREATED:
            _CREATED = True
            atexit.register(shutdown)
    rank = int(dist.get_rank())
    local_rank = _env_int("LOCAL_RANK", rank)
    assert local_rank is not None
    return Context(rank, int(dist.get_world_size()), local_rank)


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank for an agent asking for ``device``: under torchrun a bare ``cuda`` (or
    ``auto`` resolved to it) is ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is kept."""
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        local_rank = _env_int("LOCAL_RANK", 0)
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def shutdown() -> None:
    """Destroy the process group this module created (at exit, or at the end of a CLI command)."""
    import torch.distributed as dist

    global _CREATED
    if _CREATED and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CREATED = False


def check_batch(batch_size: int, world_size: int) -> None:
    """Refuse a global ``batch_size`` that does not split into ``world_size`` equal shards (GRPO/RLOO groups
    may straddle two ranks: their advantages come from the gathered global scores)."""
    if world_size > 1 and batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} (the global batch) does not divide among WORLD_SIZE="
                         f"{world_size} processes; use a multiple of {world_size}")


def concat_rollouts(batches: Sequence[Any], pad_id: int) -> Any:
    """Several :class:`~agents.rollout.RolloutBatch` es as one, in order: prompts re-left-padded and
    completions re-right-padded to the longest (``pad_id``, mask 0). What ``world_size`` ranks collect,
    as one process would hold it (the parity test's single-process side)."""
    from agents.rollout import RolloutBatch

    P = max(b.query_ids.shape[1] for b in batches)
    T = max(b.tokens.shape[1] for b in batches)

    def left(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([x.new_full((x.shape[0], P - x.shape[1]), value), x], dim=1)

    def right(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([x, x.new_full((x.shape[0], T - x.shape[1]), value)], dim=1)

    fields: dict[str, Any] = {
        "query_ids": torch.cat([left(b.query_ids, pad_id) for b in batches]),
        "query_mask": torch.cat([left(b.query_mask, 0) for b in batches]),
        "tokens": torch.cat([right(b.tokens, pad_id) for b in batches]),
    }
    for name in ("mask", "logprobs", "ref_logprobs", "values", "rewards"):
        fields[name] = torch.cat([right(getattr(b, name), 0) for b in batches])
    if all(b.inserted_mask is not None for b in batches):  # multi-turn
        fields["inserted_mask"] = torch.cat([right(b.inserted_mask, 0) for b in batches])
    for name in ("scores", "gold_scores"):
        fields[name] = torch.cat([getattr(b, name) for b in batches])
    for name in ("prompts", "completions"):
        fields[name] = [x for b in batches for x in getattr(b, name)]
    s = sum(b.stats["rollout_s"] for b in batches)
    fields["stats"] = {"rollout_s": s, "tokens_per_s": float(fields["mask"].sum()) / max(s, 1e-9)}
    return RolloutBatch(**fields)
