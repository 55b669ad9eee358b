"""Data-parallel scaling on this machine: training tokens/s of 1 and 2 processes under torchrun (gloo).

Each configuration is a fresh ``python -m torch.distributed.run --nproc_per_node=N`` job of this script's
worker, every process with **one torch thread** (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``).
The worker builds the agent (the shipped default policy and reward model on ``TextGen-v0``, every episode
generating ``max_new_tokens`` tokens: ``terminate_on_eos=False``), trains one warm-up iteration, then times
``iterations`` full iterations (rollout, reference forward, update, the gradient all-reduce) between two
barriers. Training tokens/s = completion tokens trained on (over all ranks) / wall seconds.

Strong scaling: ``--batch-size`` is the global batch (the same training whatever the number of
processes), so 2 processes each collect half of it. The runs alternate 1, 2, 1, 2, ... (``--rounds``) and
each figure is the median over rounds. ``ratio`` = 2-process tokens/s / 1-process tokens/s (target >= 1.7).
``load_average`` says how busy the machine was: other work on its 2 cores takes from the 2-process run.
``cpu_ratio`` is the same ratio in tokens per CPU second of the busiest rank (``time.process_time``, all
its threads): the ratio the run would reach on free cores if no rank ever waited for another. On a loaded
machine, where wall-clock ratios are noise, it still shows work that does not shrink with more processes
(a replicated optimizer step, the all-reduce's own CPU time); it does not show waiting (imbalance, sync).

Writes ``benchmarks/results/scaling-cpu.json`` (``--json PATH`` elsewhere; ``--quick`` writes into a temp
directory and never over the committed result).

Usage::

    python -m benchmarks.scaling             # the committed run (a few minutes)
    python -m benchmarks.scaling --quick     # under a minute, smaller batch, one round
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "scaling-cpu.json"
TARGET = 1.7


def _worker(agent_name: str, batch_size: int, iterations: int, new_tokens: int, out: str, strategy: str) -> None:
    torch.set_num_threads(1)
    from agents.registry import get_agent_class

    cls = get_agent_class(agent_name)
    agent = cls("TextGen-v0", policy="default", batch_size=batch_size, device="cpu", seed=0, strategy=strategy,
                env_kwargs={"max_new_tokens": new_tokens, "terminate_on_eos": False})
    agent.learn(batch_size, progress=False)  # warm-up iteration
    agent.dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    agent.learn(batch_size * iterations, progress=False)
    cpu_s = agent.dist.all_max(time.process_time() - c0)  # the busiest rank's CPU seconds (all its threads)
    agent.dist.barrier()
    seconds = time.perf_counter() - t0
    rows = agent.history[1:]
    tokens = sum(row["completions/mean_length"] * batch_size for row in rows)
    if agent.dist.is_main:
        Path(out).write_text(json.dumps({
            "processes": agent.dist.world_size, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "iteration_s": [row["time_s"] for row in rows],
            "cpu_s_busiest_rank": cpu_s, "tokens_per_cpu_s": tokens / cpu_s,
            "episodes_per_rank": agent.envs.num_envs}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_config(n: int, agent: str, batch_size: int, iterations: int, new_tokens: int, workdir: Path,
               timeout: float, strategy: str = "ddp") -> dict[str, Any]:
    """One torchrun job of ``n`` processes; its rank 0's measurement."""
    out = workdir / f"{agent}-{n}-{time.monotonic_ns()}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(Path(__file__).resolve()),
           "--worker", agent, str(batch_size), str(iterations), str(new_tokens), str(out), strategy]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"torchrun with {n} processes failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def measure(agents: list[str], batch_size: int, iterations: int, new_tokens: int, rounds: int,
            workdir: Path, timeout: float = 900, strategy: str = "ddp") -> dict[str, Any]:
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    for agent in agents:
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for _ in range(rounds):
            for n in (1, 2):
                runs[n].append(run_config(n, agent, batch_size, iterations, new_tokens, workdir, timeout, strategy))
        tps = {n: statistics.median(r["tokens_per_s"] for r in runs[n]) for n in runs}
        ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(runs[1], runs[2])]
        cpu_ratios = [b["tokens_per_cpu_s"] / a["tokens_per_cpu_s"] for a, b in zip(runs[1], runs[2])]
        results[agent] = {
            "tokens_per_s_1_process": tps[1], "tokens_per_s_2_processes": tps[2],
            "ratio": statistics.median(ratios), "ratios_per_round": ratios,
            "meets_target": statistics.median(ratios) >= TARGET,
            "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratios_per_round": cpu_ratios, "runs": runs,
        }
    return {
        "what": "training tokens/s (completion tokens trained on / wall s, rollout + update), torchrun gloo, "
                "1 torch thread per process, strong scaling (the global batch split among the processes)",
        "config": {"agents": agents, "env": "TextGen-v0", "policy": "default", "reward_model": "default",
                   "global_batch_size": batch_size, "iterations_timed": iterations, "new_tokens": new_tokens,
                   "terminate_on_eos": False, "rounds": rounds, "threads_per_process": 1, "strategy": strategy,
                   "cpu_count": os.cpu_count()},
        "target_ratio": TARGET,
        "results": results,
        "load_average": {"start": load_start, "end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "wall_s": time.perf_counter() - t_start,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        _worker(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6] if len(argv) > 6 else "ddp")
        return {}
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", nargs="+", default=["grpo", "ppo"], help="native agents to measure")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (episodes per iteration)")
    p.add_argument("--iterations", type=int, default=4, help="timed iterations per run (after one warm-up)")
    p.add_argument("--new-tokens", type=int, default=32, help="completion tokens per episode")
    p.add_argument("--rounds", type=int, default=2, help="alternating 1- and 2-process runs; medians over them")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp",
                   help="how the 2 processes hold the policy (1 process: whole either way)")
    p.add_argument("--quick", action="store_true", help="batch 16, 1 iteration, 1 round, GRPO; a temp JSON")
    p.add_argument("--json", help=f"where to write the result (default {RESULT.relative_to(REPO)})")
    a = p.parse_args(argv)
    from agents.registry import AGENTS

    for name in a.agents:
        if name not in AGENTS:
            p.error(f"--agents: {name!r} is not a native agent (choose from {sorted(AGENTS)}); SB3 agents are "
                    f"single-process")
    for flag in ("batch_size", "iterations", "new_tokens", "rounds"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(a, flag)}")
    if a.batch_size % 2:
        p.error(f"--batch-size {a.batch_size} must be even (split between 2 processes)")
    if a.quick:
        a.agents, a.batch_size, a.iterations, a.rounds, a.new_tokens = ["grpo"], 16, 1, 1, 8
    workdir = Path(tempfile.mkdtemp(prefix="textenv-scaling-"))
    out = Path(a.json) if a.json else (workdir / "scaling-quick.json" if a.quick else RESULT)
    result = measure(a.agents, a.batch_size, a.iterations, a.new_tokens, a.rounds, workdir, strategy=a.strategy)
    result["command"] = "python -m benchmarks.scaling " + " ".join(argv)
    result["quick"] = bool(a.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    for name, r in result["results"].items():
        print(f"{name}: 1 process {r['tokens_per_s_1_process']:.0f} tok/s, 2 processes "
              f"{r['tokens_per_s_2_processes']:.0f} tok/s, ratio {r['ratio']:.2f} (target {TARGET}); "
              f"CPU-time ratio {r['cpu_ratio']:.2f}")
    print(f"load average {result['load_average']}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
