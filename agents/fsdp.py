"""Fully sharded data parallelism (``strategy="fsdp"``): torch's ``fully_shard`` (FSDP2) on the policy.

Under ``torchrun`` with ``strategy="fsdp"`` each rank holds ``1/N`` of every weight, gradient and AdamW
state instead of a whole copy (``strategy="ddp"``, :mod:`agents.distributed`), for policies whose training
state does not fit one device. Rollouts, seeds, global batch statistics and the loss weighting are those of
DDP; only where the weights live and how the gradients are combined differ.

How (see also README "Scaling"):

- **Sharding** (:func:`shard_policy`): ``fully_shard`` on each transformer block of the policy's LM, then
  on the :class:`~agents.policy.LMPolicy` itself as the root (the embeddings, final norm, LM head and value
  head form the root's group). The policy's entry points that run the LM (``per_token_logps``, ``start``,
  ``step``) are registered as FSDP forward methods, so the root all-gathers its group before them and the
  blocks all-gather theirs as they run (FSDP only hooks ``forward`` by itself).
- **Gradients**: FSDP reduce-scatters the gradients in the backward and divides them by the number of
  ranks. Each rank's loss is scaled by ``N * weight_r / sum_r weight_r`` (one scalar all-reduce before the
  backward), so the averaged gradient is the gradient of the global minibatch's loss, as under DDP.
  Gradients and AdamW's states stay sharded; ``clip_grad_norm_`` computes the global norm of the shards.
- **Acting** (:func:`gathered`): a rollout (and an evaluation) first all-gathers the whole policy once and
  keeps it gathered until the episodes end, so decoding costs no communication per token and the ranks need
  not take the same number of steps (their episodes end at different times). Training memory (gradients,
  AdamW states, activations) is sharded; acting needs the whole weights once, as a rollout engine would.
- **Reference**: frozen, so it is not wrapped by FSDP: each of its weights is stored as a ``DTensor``
  sharded along dim 0 (:func:`shard_frozen`), and its one forward per rollout runs with the weights gathered
  whole (:func:`gathered_frozen`) and freed after.
- **Checkpoints**: every rank takes part in gathering the full (unsharded) state dicts of the model, the
  reference and the optimizer (torch.distributed.checkpoint's ``get_*_state_dict``, ``full_state_dict=True``);
  rank 0 writes them in the one-process format, so :meth:`agents.base.Agent.load` reads an FSDP checkpoint
  in one process unchanged, and a resumed FSDP run shards the loaded state again.
- **Collectives**: evaluation, sampling and checkpointing all-gather, so under FSDP every rank calls them
  (the CLI does; rank 0 alone reports and writes).
- **Not supported**: LoRA (a frozen base with small adapters hardly needs sharding; use ``strategy="ddp"``).
  With one process there is nothing to shard and ``strategy="fsdp"`` trains as ``"ddp"`` does (so an FSDP
  checkpoint resumes and evaluates in one process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: the LMPolicy methods that run the LM: FSDP's pre-/post-forward hooks must run around them
FORWARD_METHODS = ("per_token_logps", "start", "step")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a transformers causal LM (GPT-2's ``transformer.h``, Llama's /
    Qwen's ``model.layers``): the largest ``nn.ModuleList`` of the model, its units of sharding."""
    lists: list[nn.ModuleList] = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of transformer blocks (nn.ModuleList) to shard")
    sizes = [sum(p.numel() for p in m.parameters()) for m in lists]
    return list(lists[sizes.index(max(sizes))])


def device_mesh(device: torch.device, world_size: int) -> Any:
    """The 1-D device mesh of all ranks on ``device``'s type (``cuda`` under nccl, ``cpu`` under gloo)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,))


def shard_policy(policy: Any, mesh: Any) -> None:
    """Apply ``fully_shard`` to ``policy`` (an :class:`~agents.policy.LMPolicy`, in place): each transformer
    block, then the policy as the root; register its LM-running methods as FSDP forward methods, and shard
    its frozen reference (:func:`shard_frozen`). Call after the weights are on their device and equal on
    every rank, and before the optimizer is built (it must see the sharded parameters)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if policy.peft_model is not None:
        raise ValueError("strategy='fsdp' does not support LoRA (lora_r is set): a LoRA run trains a small "
                         "adapter on a frozen base, which DDP replicates cheaply; use strategy='ddp'")
    for block in transformer_blocks(policy.model):
        fully_shard(block, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    for name in FORWARD_METHODS:
        register_fsdp_forward_method(policy, name)
    if policy.ref_model is not None:
        shard_frozen(policy.ref_model, mesh)


def is_sharded(module: Any) -> bool:
    """Whether ``module`` was sharded by :func:`shard_policy`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _fsdp_modules(module: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(policy: Any) -> Iterator[None]:
    """The whole sharded ``policy`` all-gathered for the block (every rank enters together), with FSDP's
    resharding after each forward turned off, so the forwards inside communicate nothing; resharded (the
    gathered weights freed) at the end. A no-op for a policy that is not sharded."""
    if not is_sharded(policy):
        yield
        return
    modules = _fsdp_modules(policy)
    policy.set_reshard_after_forward(False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        policy.set_reshard_after_forward(True)
        policy.set_reshard_after_forward(False, recurse=False)  # FSDP's default for the root
        for m in modules:
            m.reshard()


def shard_frozen(model: nn.Module, mesh: Any) -> None:
    """Store each weight of the frozen ``model`` as a ``DTensor`` sharded along dim 0 over
    ``mesh`` (replicated when 0-dim), in place: ``1/N`` of it per rank. :func:`gathered_frozen` makes it
    usable. Tied weights stay tied (one parameter, sharded once)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    done: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in done:
                placement = [Shard(0)] if p.dim() > 0 else [Replicate()]
                done[id(p)] = nn.Parameter(distribute_tensor(p.detach(), mesh, placement), requires_grad=False)
            module._parameters[name] = done[id(p)]


@contextlib.contextmanager
def gathered_frozen(model: nn.Module | None) -> Iterator[None]:
    """The weights of a ``model`` sharded by :func:`shard_frozen` gathered whole for the block (every rank
    enters together) and sharded again after; a no-op for a model that is not sharded."""
    from torch.distributed.tensor import DTensor

    if model is None:
        yield
        return
    saved: list[tuple[nn.Module, str, nn.Parameter]] = []
    full: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if isinstance(p, DTensor):
                if id(p) not in full:
                    full[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=False)
                saved.append((module, name, p))
                module._parameters[name] = full[id(p)]
    try:
        yield
    finally:
        for module, name, p in saved:
            module._parameters[name] = p


def frozen_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a model sharded by :func:`shard_frozen` (every rank calls it; all get it)."""
    with gathered_frozen(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def full_model_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The policy's full (unsharded) state dict on the CPU, on rank 0 (empty on the others); every rank
    calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd: Any = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return dict(sd)


def full_optimizer_state_dict(policy: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state in ``Optimizer.state_dict()``'s one-process format (states keyed by the
    index of their parameter in ``policy.parameters()``), on rank 0 (empty on the others); every rank calls
    it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd: Any = get_optimizer_state_dict(policy, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:
        return {}
    index = {name: i for i, (name, _) in enumerate(policy.named_parameters())}
    return {
        "state": {index[name]: state for name, state in sd["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in sd["param_groups"]],
    }


def load_optimizer_state_dict(policy: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a one-process optimizer state (``Optimizer.state_dict()``'s format, as
    :func:`full_optimizer_state_dict` writes it) into the optimizer of the sharded ``policy``; every rank
    calls it with the same state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [name for name, _ in policy.named_parameters()]
    n_saved = sum(len(g["params"]) for g in state["param_groups"])
    if n_saved != len(names):
        raise ValueError(f"the optimizer state holds {n_saved} parameters but the policy has {len(names)}")
    fqn: Any = {
        "state": {names[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
    # strict=False: a parameter that never had a gradient (GRPO's value head) has no state, as in one process
    set_optimizer_state_dict(policy, optimizer, fqn, options=StateDictOptions(full_state_dict=True, strict=False))
