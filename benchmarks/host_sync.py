"""Host round-trips per generated token in :func:`agents.rollout.collect_rollout`, and rollout tokens/s.

A device -> host copy (``Tensor.cpu()``, ``.item()``, ``.numpy()``, ``.tolist()``, ``.to("cpu")``) stalls a
GPU's queue: the host waits for every kernel queued before it. The only one a rollout needs per token is
the actions the env steps with. This script counts those calls made while collecting rollouts (by
wrapping the ``torch.Tensor`` methods for the duration of the rollout), split into the decode loop (per
step) and the rest (per rollout: building the batch, the reference forward), and times the rollout.

The env uses a reward function without torch (``--reward gold``, the task's exact scorer) so that the
count is the agent's; ``--reward default`` adds the shipped reward model's own copies (one per call on a
batch of finished episodes).

Counting is independent of the device: a ``.cpu()`` on a CPU tensor is a no-op in time but the same call
on a GPU copies, so the CPU count is the GPU count. Only calls made from this repository's code
(``agents/``, ``textenv/``) count; transformers' own are not ours to remove. ``to`` counts
``.to(device)`` moves (on a GPU: host -> device uploads, or copies back), the other keys copies to the
host.

Writes ``benchmarks/results/host-sync-cpu.json`` (``--json PATH`` elsewhere; ``--smoke`` writes nowhere
unless ``--json`` is given, so it never overwrites the committed result).

Usage::

    python -m benchmarks.host_sync                 # the committed result
    python -m benchmarks.host_sync --smoke         # seconds; prints the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import finish, load_average, spread

#: calls are counted where our code makes them (agents/, textenv/), not inside transformers or torch
OURS = str(Path(__file__).resolve().parents[1])
METHODS = ("cpu", "item", "numpy", "tolist", "to")


@contextlib.contextmanager
def count_host_copies(counter: Counter[str], phase: list[str]) -> Iterator[None]:
    """Count calls of the ``torch.Tensor`` methods that copy to the host, under the key ``phase[0]/method``,
    made from this repository's code. ``.to(device)`` counts when it names a device: on a CPU run its
    direction is unknown (host -> device or back), so it is reported as its own key, ``to``."""
    originals = {name: getattr(torch.Tensor, name) for name in METHODS}

    def wrap(name: str, fn: Any) -> Any:
        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if OURS in caller and "/benchmarks/" not in caller and (name != "to" or _to_device(args, kwargs)):
                counter[f"{phase[0]}/{name}"] += 1
            return fn(self, *args, **kwargs)
        return counted

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _to_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device))


def measure(batch_size: int = 32, new_tokens: int = 32, rollouts: int = 5, policy: str = "default",
            reward: str = "gold", device: str = "cpu", with_values: bool = True) -> dict[str, Any]:
    """Host copies per decode step and per rollout, and rollout tokens/s (median over ``rollouts``)."""
    from agents import PPO
    from agents.policy import LMPolicy
    from agents.rollout import collect_rollout

    agent = PPO("TextGen-Sentiment-v0", policy=policy, batch_size=batch_size, device=device,
                env_kwargs={"reward_model": reward, "max_new_tokens": new_tokens, "terminate_on_eos": False})
    policy_obj = agent.policy
    counter: Counter[str] = Counter()
    phase = ["rollout"]
    steps = 0
    orig_step = LMPolicy.step
    orig_start = LMPolicy.start
    orig_end = LMPolicy.end

    def start(self: LMPolicy, *a: Any, **k: Any) -> Any:
        out = orig_start(self, *a, **k)
        phase[0] = "loop"  # from the first sampled token to end(): the decode loop
        return out

    def step(self: LMPolicy, *a: Any, **k: Any) -> Any:
        nonlocal steps
        steps += 1
        return orig_step(self, *a, **k)

    def end(self: LMPolicy) -> None:
        phase[0] = "rollout"
        orig_end(self)

    LMPolicy.start, LMPolicy.step, LMPolicy.end = start, step, end  # type: ignore[method-assign]
    times, tokens = [], []
    try:
        collect_rollout(policy_obj, agent.envs, seed=0, with_values=with_values)  # warm-up, not counted
        counter.clear()
        steps = 0
        with count_host_copies(counter, phase):
            for i in range(rollouts):
                t0 = time.perf_counter()
                batch = collect_rollout(policy_obj, agent.envs, seed=1 + i, with_values=with_values,
                                        generator=torch.Generator(device=agent.device).manual_seed(i))
                times.append(time.perf_counter() - t0)
                tokens.append(float(batch.mask.sum()))
    finally:
        LMPolicy.start, LMPolicy.step, LMPolicy.end = orig_start, orig_step, orig_end  # type: ignore[method-assign]
    decode_steps = steps + rollouts  # start() samples the first token: T tokens = T-1 step() calls + start
    loop = {k.split("/", 1)[1]: v for k, v in counter.items() if k.startswith("loop/")}
    rest = {k.split("/", 1)[1]: v for k, v in counter.items() if k.startswith("rollout/")}
    return {
        "host_copies_per_token_step": round(sum(loop.values()) / decode_steps, 3),
        "host_copies_per_token_step_by_method": {k: round(v / decode_steps, 3) for k, v in sorted(loop.items())},
        "host_copies_per_rollout_outside_loop": round(sum(rest.values()) / rollouts, 2),
        "host_copies_per_rollout_outside_loop_by_method": {k: round(v / rollouts, 2) for k, v in sorted(rest.items())},
        "rollout_tokens_per_s": round(statistics.median(t / s for t, s in zip(tokens, times, strict=True)), 1),
        "rollout_tokens_per_s_spread": spread([t / s for t, s in zip(tokens, times, strict=True)]),
        "decode_steps": decode_steps,
        "config": {"batch_size": batch_size, "new_tokens": new_tokens, "rollouts": rollouts, "policy": policy,
                   "reward": reward, "device": str(agent.device), "with_values": with_values,
                   "threads": torch.get_num_threads()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny policy, 2 rollouts; writes only with --json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reward", default="gold", help="'gold' (no torch) or 'default' (the shipped reward model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="output file (default: results/host-sync-<device>.json)")
    args = ap.parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(args.threads)
    kw: dict[str, Any] = ({"batch_size": 4, "new_tokens": 4, "rollouts": 2, "policy": "tiny"} if args.smoke
                          else {})
    result = measure(reward=args.reward, device=args.device, **kw)
    finish(result, "host-sync", argv, args.json, args.smoke, load_start)
    return result


if __name__ == "__main__":
    main()
