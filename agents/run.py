"""The RL commands of the ``textenv`` CLI: ``train``, ``evaluate`` and ``sample`` (see :mod:`agents.cli`).

Each command is a function of typed argument dataclasses (:class:`TrainArguments` and the agent's config,
:class:`EvaluateArguments`, :class:`SampleArguments`), whose fields are the command's flags.

A run directory (``--out``) holds ``metrics.csv`` (one row per iteration), ``learning_curve.png``,
``summary.json`` (initial and final evaluation, samples) and the latest two checkpoints
``checkpoint-<episodes>/`` (see :meth:`agents.base.Agent.save`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from io import StringIO
from pathlib import Path
from typing import Any

import torch

from agents import distributed
from agents.base import CHECKPOINT_MARKER, Agent, read_agent_meta
from agents.registry import DEFAULT_EPISODES, SB3_AGENTS, make_agent
from agents.reporting import ReportTo, check_report_to, make_reporter
from agents.rollout import sample_completions
from agents.sb3_agent import SB3Agent, SB3Config
from textenv import io


# ---------------------------------------------------------------------------------------------- run dirs
def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete agent checkpoints of a run, oldest first (:func:`textenv.io.list_checkpoints`)."""
    return io.list_checkpoints(run_dir, marker=CHECKPOINT_MARKER)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint directory: ``path`` itself, or the latest checkpoint of the run directory ``path``."""
    p = Path(path)
    if (p / CHECKPOINT_MARKER).exists():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise ValueError(f"{str(path)!r} is neither a checkpoint nor a run directory with checkpoints")
    return ckpts[-1]


def load_any(path: str | os.PathLike[str], task: Any = None) -> Agent | SB3Agent:
    """Load our agents or an SB3 run from a checkpoint directory; ``task`` (a task object, name or record)
    replaces the checkpoint's task, the rest of its env (reward model, budgets) is kept."""
    from agents.base import rebuild_env

    ckpt = resolve_checkpoint(path)
    meta = read_agent_meta(ckpt / CHECKPOINT_MARKER)
    env_kwargs = None
    if task is not None:
        _, env_kwargs = rebuild_env(meta, str(ckpt / CHECKPOINT_MARKER))
        env_kwargs["task"] = task
    if str(meta.get("agent", "")).startswith("sb3-"):
        return SB3Agent.load(ckpt, env_kwargs=env_kwargs)
    return Agent.load(ckpt, env_kwargs=env_kwargs)


def dataset_task(task_data: str | None, metric: str | None) -> Any:
    """The :class:`~textenv.tasks.DatasetTask` of ``--task-data``/``--metric`` (None without ``--task-data``;
    ``--metric`` alone is refused)."""
    _check_metric(metric, task_data)
    if task_data is None:
        return None
    from textenv.tasks import DatasetTask

    return DatasetTask(task_data, metric=metric if metric is not None else "chrf")


def _check_metric(metric: str | None, task_data: str | None) -> None:
    """``--metric`` is a known metric, and comes with ``--task-data`` (the file it scores against)."""
    if metric is not None:
        from textenv.metrics import METRICS

        if metric not in METRICS:
            raise ValueError(f"--metric must be one of {list(METRICS)}, got {metric!r}")
        if task_data is None:
            raise ValueError(f"--metric {metric!r} needs --task-data (the JSONL file the metric scores against)")


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    io.write_text(path, buf.getvalue())


def plot_learning_curve(path: Path, history: list[dict[str, float]], title: str) -> bool:
    """reward, gold_score and kl against episodes, as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ep = [r["episodes"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(ep, [r["reward"] for r in history], label="reward (reward model)")
    ax1.plot(ep, [r["gold_score"] for r in history], label="gold score")
    ax1.set_xlabel("episodes")
    ax1.legend()
    ax1.set_title(title)
    ax2.plot(ep, [r.get("kl", float("nan")) for r in history], color="tab:red")
    ax2.set_xlabel("episodes")
    ax2.set_ylabel("KL to reference (per sequence)")
    fig.tight_layout()
    with io.atomic_file(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return True


def format_table(initial: dict[str, float], final: dict[str, float]) -> str:
    keys = ["reward", "gold_score", "kl", "entropy", "completions/mean_length"]
    lines = [f"{'metric':<26}{'initial':>10}{'final':>10}", "-" * 46]
    for k in keys:
        if k in initial and k in final:
            lines.append(f"{k:<26}{initial[k]:>10.3f}{final[k]:>10.3f}")
    return "\n".join(lines)


def _print_samples(title: str, samples: list[tuple[str, str]]) -> None:
    print(title)
    for p, c in samples:
        print(f"  {p!r} -> {c!r}")


# ---------------------------------------------------------------------------------------------- arguments
@dataclasses.dataclass
class TrainArguments:
    """``textenv train``: what to train, where, and for how long (the agent's own settings come from its
    config dataclass, see :func:`agents.cli.train_types`)."""

    agent: str = "ppo"
    """the learner: ppo, grpo, reinforce, rloo, dapo, gspo, reinforce-pp, nlpo, best-of-n, sb3-ppo or sb3-a2c"""
    env: str = "TextGen-v0"
    """a registered TextGen env id (TextGen-v0, TextGen-Sentiment-v0, TextGen-Arithmetic-v0, ...)"""
    episodes: int | None = None
    """episodes to train (default: the agent's budget, agents.registry.DEFAULT_EPISODES); sb3-* agents train whole
    rollouts, so for them it is a lower bound (up to n_envs x n_steps more)"""
    policy: str = "default"
    """'default' (the shipped fine-tuned LM), 'tiny' or an HF causal-LM directory"""
    reward_model: str = "default"
    """'default' (the task's shipped model), 'gold', a reward-model directory, or an HF id (org/name) already in the local Hugging Face cache (HF_HUB_CACHE or HF_HOME/hub; never downloaded)"""
    out: str | None = None
    """run directory (default: runs/<agent>-<env>)"""
    resume: bool = False
    """continue the run in --out from its latest checkpoint"""
    seed: int = 0
    """seed of the agent, its rollouts and its evaluation stream (agents.contract.evaluation_seed)"""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N': the policy, its reference, the reward model and the rollout buffers"""
    dtype: str = "auto"
    """'auto' (bfloat16 on GPUs that support it, float32 on CPU), 'float32' or 'bfloat16' (fp32 master weights, forwards under autocast)"""
    eval_episodes: int = 128
    """held-out episodes of the initial and final evaluations"""
    progress: bool = True
    """show a progress bar (--no-progress: none)"""
    report_to: ReportTo = "none"
    """also send the metrics to: none, tensorboard (<out>/tensorboard) or wandb (offline, <out>/wandb)"""
    task: str | None = None
    """a task name instead of --env's: a built-in one or 'reasoning_gym:<dataset>' (the [reasoning] extra), whose
    reward is its gold scorer unless --reward-model says otherwise; exclusive with --task-data"""
    task_data: str | None = None
    """a .jsonl of {"prompt", "reference"|"references"|"answer", "split"?} rows: the task (textenv.tasks.DatasetTask)
    instead of --env's; its reward is the --metric unless --reward-model says otherwise"""
    metric: str | None = None
    """with --task-data: exact_match, f1, bleu, chrf (default), rouge1, rouge2 or rougeL"""

    def __post_init__(self) -> None:
        from agents.registry import agent_names

        if self.agent not in agent_names():
            raise ValueError(f"unknown agent {self.agent!r}; choose one of {agent_names()}")
        if self.episodes is not None and (isinstance(self.episodes, bool) or self.episodes < 1):
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if isinstance(self.eval_episodes, bool) or self.eval_episodes < 1:
            raise ValueError(f"--eval-episodes must be >= 1, got {self.eval_episodes}")
        from textenv.models import resolve_device, resolve_dtype

        # the values, and CUDA asked for without CUDA, are refused here: before any directory is made
        resolve_dtype(self.dtype, resolve_device(self.device, "--device"), "--dtype")
        if self.agent in SB3_AGENTS and self.dtype == "bfloat16":
            raise ValueError(f"--dtype 'bfloat16' is for the native agents; {self.agent} trains in float32 "
                             f"(use --dtype auto or float32)")
        check_textgen_env_id(self.env)
        _check_metric(self.metric, self.task_data)
        if self.task is not None and self.task_data is not None:
            raise ValueError(f"give --task or --task-data, not both (got --task {self.task!r} and --task-data "
                             f"{self.task_data!r})")
        check_report_to(self.report_to)  # a missing package fails here, before anything is written
        if self.out is not None and Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"--out {self.out!r} is a file, not a run directory")


def check_textgen_env_id(env_id: str) -> None:
    """Raise ``ValueError`` unless ``env_id`` is a registered TextGen env (its entry point is in ``textenv``)."""
    import gymnasium as gym

    import textenv  # noqa: F401 (registers the TextGen ids)

    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        raise ValueError(f"--env {env_id!r} is not a registered env id; TextGen ids: "
                         f"{sorted(i for i in gym.registry if i.startswith('TextGen'))}") from None
    entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
    if not str(entry).startswith("textenv"):
        raise ValueError(f"--env {env_id!r} is not a TextGen env (its entry point is {spec.entry_point!r}); "
                         "textenv trains LM policies on TextGen ids")


@dataclasses.dataclass
class EvaluateArguments:
    """``textenv evaluate``: held-out metrics of a checkpoint."""

    checkpoint: str
    """a run's --out directory (its latest checkpoint) or one checkpoint directory"""
    episodes: int = 128
    """held-out episodes to evaluate on"""
    seed: int | None = None
    """evaluation seed (default: the stream of the run's seed, agents.contract.evaluation_seed)"""
    task_data: str | None = None
    """evaluate on this .jsonl's test split (a DatasetTask) instead of the checkpoint's task"""
    metric: str | None = None
    """with --task-data: the metric (default chrf)"""

    def __post_init__(self) -> None:
        _check_metric(self.metric, self.task_data)


@dataclasses.dataclass
class SampleArguments:
    """``textenv sample``: completions of a checkpoint's policy for given prompts."""

    checkpoint: str
    """a run's --out directory (its latest checkpoint) or one checkpoint directory"""
    prompt: list[str]
    """one or more prompts (--prompt A B ...)"""
    num: int = dataclasses.field(default=4, metadata={"aliases": ["-n"]})
    """samples per prompt"""
    seed: int = 0
    """sampling seed"""
    task_data: str | None = None
    """sample with this .jsonl as the task (a DatasetTask; its metric scores the samples) instead of the checkpoint's"""
    metric: str | None = None
    """with --task-data: the metric (default chrf)"""

    def __post_init__(self) -> None:
        _check_metric(self.metric, self.task_data)
        if not self.prompt:
            raise ValueError("--prompt: give at least one prompt")
        if isinstance(self.num, bool) or self.num < 1:
            raise ValueError(f"--num must be >= 1, got {self.num}")


def config_overrides(config: Any) -> dict[str, Any]:
    """The fields of a native agent's ``train`` flags instance as config overrides (``None``: none)."""
    if config is None:
        return {}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _make_agent(args: TrainArguments, config: Any = None) -> Agent | SB3Agent:
    env_kwargs: dict[str, Any] = {} if args.reward_model == "default" else {"reward_model": args.reward_model}
    task = dataset_task(args.task_data, args.metric)
    if task is not None:
        env_kwargs["task"] = task
    elif args.task is not None:
        from textenv.tasks import get_task

        get_task(args.task)  # a bad name or a missing extra fails before any directory is made
        env_kwargs["task"] = args.task
    if args.agent in SB3_AGENTS:
        sb3 = config if isinstance(config, SB3Config) else SB3Config()
        return make_agent(args.agent, args.env, args.policy, seed=args.seed, device=args.device,
                          env_kwargs=env_kwargs, n_envs=sb3.n_envs, **sb3.overrides(args.agent.split("-", 1)[1]))
    return make_agent(args.agent, args.env, args.policy, seed=args.seed, device=args.device, dtype=args.dtype,
                      env_kwargs=env_kwargs, **config_overrides(config))


def _given(instance: Any) -> set[str]:
    """The fields of a flags instance the user set: those named on the command line, or (for a caller of the
    library, see :func:`textenv.cli_framework.passed_fields`) those that differ from their default."""
    from textenv.cli_framework import passed_fields

    passed = passed_fields(instance)
    if passed is not None:
        return set(passed)
    return {f.name for f in dataclasses.fields(instance)
            if f.default is not dataclasses.MISSING and getattr(instance, f.name) != f.default}


def _same_policy(given: str, recorded: Any) -> bool:
    if given == recorded:
        return True
    return given not in ("default", "tiny") and isinstance(recorded, str) and str(Path(given).resolve()) == recorded


#: agent settings that may change on --resume: how the ranks hold the weights (a checkpoint is the same
#: whole-weights format under DDP and FSDP)
RESUMABLE_SETTINGS = ("strategy",)


def resume_conflicts(args: TrainArguments, config: Any, meta: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` when a flag given with ``--resume`` disagrees with the checkpoint it resumes
    (``meta``: its ``agent.json``, in the file ``where``), naming the flag, both values and the file.

    ``--agent``, ``--env``, ``--seed``, ``--policy``, ``--reward-model`` and the agent's settings are the
    run's: given equal to the checkpoint's they are accepted, otherwise refused (even when the value given
    is the default). ``--episodes`` (the total to reach), ``--eval-episodes``, ``--progress`` and
    ``--strategy`` may change.
    """
    from textenv.rewards.spec import describe_reward_model

    given = _given(args)
    sb3 = str(meta.get("agent", "")).startswith("sb3-")
    recorded_config = meta.get("kwargs" if sb3 else "config") or {}
    seed = meta.get("seed") if sb3 else recorded_config.get("seed")
    conflicts: list[str] = []

    def conflict(flag: str, value: Any, recorded: Any) -> None:
        conflicts.append(f"--{flag} {value!r} (the checkpoint's: {recorded!r})")

    if "agent" in given and args.agent != meta.get("agent"):
        conflict("agent", args.agent, meta.get("agent"))
    if "env" in given and args.env != meta.get("env_id"):
        conflict("env", args.env, meta.get("env_id"))
    if "seed" in given and args.seed != seed:
        conflict("seed", args.seed, seed)
    if "policy" in given and not _same_policy(args.policy, meta.get("policy_source")):
        conflict("policy", args.policy, meta.get("policy_source"))
    if "reward_model" in given and "reward_model" in meta:
        try:
            same = describe_reward_model(args.reward_model) == meta["reward_model"]
        except (ValueError, OSError):
            same = False
        if not same:
            conflict("reward-model", args.reward_model, meta["reward_model"].get("name", meta["reward_model"])
                     if isinstance(meta["reward_model"], dict) else meta["reward_model"])
    if "task" in given and args.task != (meta.get("env_kwargs") or {}).get("task"):
        conflict("task", args.task, (meta.get("env_kwargs") or {}).get("task"))
    if given & {"task_data", "metric"}:
        task = (meta.get("env_kwargs") or {}).get("task")
        recorded_data = task.get("path") if isinstance(task, dict) else None
        recorded_metric = task.get("metric") if isinstance(task, dict) else None
        data = str(Path(args.task_data).expanduser().resolve()) if args.task_data is not None else None
        if data != recorded_data:
            conflict("task-data", args.task_data, recorded_data)
        if "metric" in given and args.metric != recorded_metric:
            conflict("metric", args.metric, recorded_metric)
    if config is not None:
        for name in sorted(_given(config)):
            if sb3 and name == "n_envs" and "n_envs" not in meta:
                continue  # not recorded by this checkpoint
            if name in RESUMABLE_SETTINGS:
                continue
            value = getattr(config, name)
            recorded = meta.get("n_envs") if name == "n_envs" else recorded_config.get(name)
            if value != recorded:
                conflict(name.replace("_", "-"), value, recorded)
    if conflicts:
        raise ValueError(f"--resume: {', '.join(conflicts)} conflict with the checkpoint {where!r}; drop the "
                         "flag(s) to continue the run as it was, or train a new run into another --out")


# ---------------------------------------------------------------------------------------------- commands
def train_command(args: TrainArguments, config: Any = None) -> int:
    """``textenv train``: train, checkpoint, and report initial vs final metrics and samples.

    ``config``: the agent's settings, an instance of the flags dataclass of ``args.agent``'s config (see
    :func:`agents.cli.train_types`) or an :class:`~agents.sb3_agent.SB3Config`; ``None``: the defaults.
    On ``--resume`` the checkpoint's settings are used; a flag that conflicts with them is refused (see
    :func:`resume_conflicts`); ``--device`` moves a native agent.
    """
    a = args
    out = Path(a.out or f"runs/{a.agent}-{a.env}")
    world = distributed.launched_world_size()
    if world > 1 and a.agent in SB3_AGENTS:
        raise ValueError(f"--agent {a.agent} is single-process (stable-baselines3 has no data-parallel training) "
                         f"but this is one of WORLD_SIZE={world} torchrun processes; run it without torchrun")
    if distributed.launched_rank() != 0:
        # under torchrun rank 0 checks, locks and writes the run directory; the other ranks train with it
        # (and wait at barriers while it writes); a failure on rank 0 makes torchrun stop them
        return _train(a, config, out)
    io.refuse_foreign_dir(out, is_run_dir(out))
    if a.resume and not list_checkpoints(out):  # before the lock, which makes the directory
        raise ValueError(f"--resume: no checkpoint in {str(out)!r}")
    with io.run_lock(out, "textenv train"):
        return _train(a, config, out)


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` holds a ``textenv train`` run: an agent checkpoint, or the ``summary.json`` of one."""
    if list_checkpoints(out):
        return True
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "agent" in summary and "initial" in summary


def _train(a: TrainArguments, config: Any, out: Path) -> int:
    episodes = a.episodes if a.episodes is not None else DEFAULT_EPISODES[a.agent]
    torch.manual_seed(a.seed)
    summary_file = out / "summary.json"
    # under torchrun every rank builds (or loads) the agent and trains; rank 0 alone evaluates, prints and
    # writes, the others wait for it at a barrier
    main = distributed.launched_rank() == 0
    summary: dict[str, Any] = {}
    agent: Agent | SB3Agent
    if a.resume:
        if not list_checkpoints(out):
            raise ValueError(f"--resume: no checkpoint in {str(out)!r}")
        ckpt = resolve_checkpoint(out)
        if main:
            # the initial evaluation lives in summary.json: without it a resumed run cannot report initial vs final
            summary = io.read_json(summary_file, "--resume: the run's summary")
            if not isinstance(summary, dict) or not isinstance(summary.get("initial"), dict):
                raise ValueError(f"{summary_file}: no initial evaluation in it; cannot resume this run")
        meta = read_agent_meta(ckpt / CHECKPOINT_MARKER)
        resume_conflicts(a, config, meta, str(ckpt / CHECKPOINT_MARKER))  # every rank: the same args, the same verdict
        moved: dict[str, Any] = {k: getattr(a, k) for k in ("device", "dtype") if k in _given(a)}
        moved.update({k: getattr(config, k) for k in RESUMABLE_SETTINGS if config is not None and k in _given(config)})
        if moved and not str(meta["agent"]).startswith("sb3-"):
            agent = Agent.load(ckpt, **moved)  # the device and dtype may change on resume
        else:
            agent = load_any(ckpt)
        if main:
            print(f"resuming {agent.name} from {ckpt} at {agent.episodes} episodes")
    else:
        if main and list_checkpoints(out):
            raise ValueError(f"{str(out)!r} already holds a run; pass --resume to continue it or choose another --out")
        agent = _make_agent(a, config)  # first: a bad --reward-model, --policy... leaves no directory behind
        if main:
            out.mkdir(parents=True, exist_ok=True)
            print(f"training {agent.name} on {a.env} for {episodes} episodes -> {out}"
                  + (f" ({world_of(agent)} processes)" if world_of(agent) > 1 else ""))
        if main or _collective(agent):
            initial, samples = agent.evaluate(a.eval_episodes), agent.samples(4)
        if main:
            summary = {"agent": agent.name, "env": a.env, "seed": a.seed, "episodes": episodes,
                       "initial": initial, "samples_before": samples}
            io.write_text(summary_file, json.dumps(summary, indent=1))
        _barrier(agent)
    # an SB3 run counts from its last target (its last rollout's extra episodes count toward this one)
    remaining = episodes - getattr(agent, "requested_episodes", agent.episodes)
    reporter = make_reporter(a.report_to if main else "none", out, config={"agent": agent.name, "env": a.env, "seed": a.seed,
                                                      "episodes": episodes}, run_name=out.name)
    try:
        return _train_loop(a, agent, out, summary, summary_file, remaining, reporter)
    finally:
        reporter.close()


def _train_loop(a: TrainArguments, agent: Any, out: Path, summary: dict[str, Any], summary_file: Path,
                remaining: int, reporter: Any) -> int:
    main = distributed.launched_rank() == 0  # under torchrun rank 0 alone evaluates, prints and writes
    every = 10  # iterations between checkpoints
    if main and not a.resume:
        reporter.log(summary["initial"], step=0, prefix="eval/")

    def save_checkpoint() -> None:
        agent.save(out / io.checkpoint_name(agent.episodes))  # every rank calls it; rank 0 writes
        if main:
            io.prune_checkpoints(out, marker=CHECKPOINT_MARKER)

    def on_iteration(ag: Any, metrics: dict[str, float]) -> None:
        if main:
            write_metrics_csv(out / "metrics.csv", ag.history)
            reporter.log(metrics, step=ag.episodes)
        if len(ag.history) % every == 0:
            save_checkpoint()

    if remaining > 0:
        t0 = time.perf_counter()
        agent.learn(remaining, progress=a.progress, callback=on_iteration)
        summary["train_seconds"] = summary.get("train_seconds", 0.0) + time.perf_counter() - t0
    save_checkpoint()
    if not main:
        if _collective(agent):  # rank 0's evaluation and samples gather the sharded weights from every rank
            agent.evaluate(a.eval_episodes)
            agent.samples(4)
        _barrier(agent)  # while rank 0 evaluates and writes the summary
        return 0
    write_metrics_csv(out / "metrics.csv", agent.history)
    try:
        summary["final"] = agent.evaluate(a.eval_episodes)
        reporter.log(summary["final"], step=agent.episodes, prefix="eval/")
        summary["samples_after"] = agent.samples(4)
        io.write_text(summary_file, json.dumps(summary, indent=1))
    finally:
        _barrier(agent)
    plotted = agent.history and plot_learning_curve(out / "learning_curve.png", agent.history, f"{agent.name} on {a.env}")
    print()
    print(format_table(summary["initial"], summary["final"]))
    print()
    _print_samples("samples before:", [tuple(s) for s in summary["samples_before"]])
    _print_samples("samples after:", [tuple(s) for s in summary["samples_after"]])
    print(f"\nwrote {out / 'metrics.csv'}, {out / 'summary.json'}"
          + (f", {out / 'learning_curve.png'}" if plotted else " (install matplotlib for learning_curve.png)")
          + f" and {resolve_checkpoint(out)}")
    return 0


def _collective(agent: Any) -> bool:
    """Whether ``agent``'s evaluation and sampling need every rank (an FSDP-sharded policy, see agents.fsdp)."""
    return bool(getattr(agent, "sharded", False))


def world_of(agent: Any) -> int:
    """The number of data-parallel processes ``agent`` trains in (1 for SB3 agents)."""
    ctx = getattr(agent, "dist", None)
    return ctx.world_size if ctx is not None else 1


def _barrier(agent: Any) -> None:
    ctx = getattr(agent, "dist", None)
    if ctx is not None:
        ctx.barrier()


def evaluate_command(args: EvaluateArguments) -> int:
    """``textenv evaluate``: held-out metrics of a checkpoint, as JSON."""
    agent = load_any(args.checkpoint, task=dataset_task(args.task_data, args.metric))
    print(json.dumps(agent.evaluate(args.episodes, seed=args.seed), indent=2))
    return 0


def sample_command(args: SampleArguments) -> int:
    """``textenv sample``: completions of a checkpoint's policy for the given prompts."""
    agent = load_any(args.checkpoint, task=dataset_task(args.task_data, args.metric))
    prompts = [p for p in args.prompt for _ in range(args.num)]
    for p, c in sample_completions(agent.policy, agent.envs, len(prompts), seed=args.seed, prompts=prompts):
        print(f"{p}{c}")
    return 0
