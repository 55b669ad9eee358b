"""Learning benchmark: every agent on every built-in task, from the shipped default policy, on CPU.

Each agent (REINFORCE, PPO, GRPO, RLOO, DAPO, GSPO, REINFORCE++, NLPO, stable-baselines3 PPO and A2C, and TRL's ``GRPOTrainer`` as a peer
when ``trl`` imports) trains the shipped fine-tuned policy (``policy="default"``) against the task's shipped
learned reward model (``reward_model="default"``) for the same budget of episodes (per task, see
:data:`TASK_BUDGET`), for several seeds. What is recorded per run:

- **held-out evaluation** of the initial and the final policy on ``test``-split prompts (256 episodes;
  1,024 for arithmetic), ``agent.evaluate(n, seed=...)`` with one evaluation seed per benchmark seed shared
  by all agents (see :func:`evaluate`): reward-model score, gold score, KL to the initial policy, entropy,
  mean completion length;
- **curves** against episodes and wall time, from ``agent.history`` (the training batches): reward-model
  score, gold score, sequence KL to the reference and entropy. The SB3 agents log neither KL nor entropy,
  so for them both are computed at the end of a rollout (about 16 times per run) on up to 64 steps of
  SB3's rollout buffer (k1 KL of the sampled token under the policy vs the initial LM, times steps per
  episode; the policy's entropy); that time is excluded from their wall time. TRL logs a per-token KL, multiplied here by the
  mean completion length so that every curve shows a per-sequence KL;
- **cost**: training wall time (evaluations excluded) and peak RSS. Every (agent, task, seed) runs in its
  own fresh Python process, so ``peak_rss_mb`` is that process's ``ru_maxrss`` (imports, models, reward
  model and training together; ``rss_start_mb`` is the same figure right after the imports).

Outputs (``--out``, default ``benchmarks/results``): ``learning-cpu.json`` (config, budget, versions,
every run with its curves, per (task, agent) summary), ``learning.md`` (the table), ``learning-<task>.png``
(proxy reward and gold score against episodes, mean over seeds with a min/max band) and
``learning-gold-vs-reward.png`` (gold against proxy reward, where reward hacking shows as a curve that
moves right without moving up).

Usage::

    python -m benchmarks.learning                      # the full run (all agents, tasks, 3 seeds)
    python -m benchmarks.learning --quick --agents reinforce --envs TextGen-Arithmetic-v0 --out /tmp/lb
    python -m benchmarks.learning --report-only        # rebuild the table and plots from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

#: Hyperparameters per agent. Every agent runs its own defaults (the Config dataclasses in ``agents/``,
#: ``agents.sb3_agent.SB3Agent``'s SB3 settings) except what is listed here; nothing has been tuned for this
#: benchmark. ``trl-grpo`` runs what our GRPO runs by default (batch, group size, learning rate, KL
#: coefficient, clip range: read from ``agents.grpo.GRPOConfig`` at run time, see :func:`trl_grpo_settings`),
#: so that the two rows compare implementations rather than TRL's defaults (learning rate 1e-6, beta 0,
#: "dapo" loss), which are made for billion-parameter models.
HYPERPARAMS: dict[str, dict[str, Any]] = {
    "reinforce": {},
    "ppo": {},
    "grpo": {},
    "dr-grpo": {"normalization": "dr_grpo"},
    "rloo": {},
    "dapo": {},
    "gspo": {},
    "reinforce-pp": {},
    "nlpo": {},
    "sb3-ppo": {},
    "sb3-a2c": {},
    "trl-grpo": {"loss_type": "grpo", "scale_rewards": "group", "num_iterations": 1, "temperature": 1.0,
                 "lr_scheduler_type": "constant", "optim": "adamw_torch", "weight_decay": 0.0,
                 "max_grad_norm": 1.0},
}
#: benchmark rows that are one of our agents with the settings of :data:`HYPERPARAMS` (Dr. GRPO is GRPO with
#: ``normalization="dr_grpo"``: advantages r - mean, and a loss summed over a constant number of tokens)
ALIASES = {"dr-grpo": "grpo"}
#: ``--quick``: episodes per rollout of our agents and TRL (so that a few iterations fit in a few episodes).
QUICK_BATCH = 16

AGENTS = ("reinforce", "ppo", "grpo", "dr-grpo", "rloo", "dapo", "gspo", "reinforce-pp", "nlpo", "sb3-ppo", "sb3-a2c", "trl-grpo")
ENVS = ("TextGen-Sentiment-v0", "TextGen-Arithmetic-v0", "TextGen-Keywords-v0")
#: the application tasks (issue 12), run as their own sweep (``--envs apps``, into their own ``--out``)
APP_ENVS = ("TextGen-Translation-v0", "TextGen-Summarization-v0", "TextGen-QA-v0", "TextGen-Dialogue-v0",
            "TextGen-Detox-v0")
#: names ``--envs`` expands
ENV_GROUPS = {"core": ENVS, "apps": APP_ENVS}
#: Training episodes per run and held-out evaluation episodes, per task (``--episodes`` and
#: ``--eval-episodes`` set one figure for every task). Arithmetic episodes are 3-4 tokens against 11-15 for
#: the other tasks, and its gold score is a rare exact match (the default policy gets about 5% of sums right):
#: it gets more episodes, and enough evaluation episodes that a 1-2 point change in gold is resolved.
#: Sentiment gets 1,024: at 512, GRPO at its learning rate of 1e-4 had barely moved.
TASK_BUDGET: dict[str, dict[str, int]] = {
    "TextGen-Sentiment-v0": {"episodes": 1024, "eval_episodes": 256},
    "TextGen-Arithmetic-v0": {"episodes": 8192, "eval_episodes": 1024},
    "TextGen-Keywords-v0": {"episodes": 512, "eval_episodes": 256},
    # the applications: 512 episodes of 5-60 agent tokens (qa's answers are 2-3 tokens: it gets twice as many),
    # each evaluated on 256 held-out episodes
    "TextGen-Translation-v0": {"episodes": 512, "eval_episodes": 256},
    "TextGen-Summarization-v0": {"episodes": 512, "eval_episodes": 256},
    "TextGen-QA-v0": {"episodes": 1024, "eval_episodes": 256},
    "TextGen-Dialogue-v0": {"episodes": 512, "eval_episodes": 256},
    "TextGen-Detox-v0": {"episodes": 512, "eval_episodes": 256},
}
#: ... for an env id not in TASK_BUDGET
DEFAULT_EPISODES = 512
DEFAULT_EVAL_EPISODES = 128
JSON_NAME = "learning-cpu.json"
MD_NAME = "learning.md"
#: curve keys beyond the headline ones, for the published comparisons of the report (:func:`comparisons`):
#: PPO's (and the other clipped agents') clip fraction, and the share and mean length of wrong answers
CURVE_EXTRA = ("clip_ratio", "completions/wrong_fraction", "completions/mean_length_wrong")
#: Steps of SB3's rollout buffer on which KL and entropy are computed after each rollout.
SB3_STAT_STEPS = 64
#: ... at about this many points of a run.
SB3_STAT_POINTS = 16
REPO = Path(__file__).resolve().parents[1]


# ============================================================================================ one run
def maxrss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def trl_status() -> dict[str, Any]:
    """Whether TRL's GRPOTrainer can run here, and its version (or why not)."""
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer  # noqa: F401
    except Exception as exc:  # any import failure (missing, or broken against this transformers) skips it
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "version": trl.__version__}


def trl_grpo_settings() -> dict[str, Any]:
    """TRL ``GRPOConfig`` fields that mirror our GRPO's defaults, then :data:`HYPERPARAMS` ``["trl-grpo"]``."""
    from agents.grpo import GRPOConfig

    ours = GRPOConfig()
    mirrored = {"per_device_train_batch_size": ours.batch_size, "num_generations": ours.group_size,
                "learning_rate": ours.learning_rate, "beta": ours.kl_coef, "epsilon": ours.clip_range}
    return {**mirrored, **HYPERPARAMS["trl-grpo"]}


class TRLGRPOAgent:
    """TRL's ``GRPOTrainer`` behind the agents' interface (``learn``, ``evaluate``, ``history``).

    Generation and the update are TRL's own; the reward functions are the env's reward model and, with
    weight 0 (logged, not optimised), the task's gold scorer. Evaluation samples the trained model through
    the same seeded textenv rollouts as :class:`agents.sb3_agent.SB3Agent`, with the initial LM as the reference.
    """

    name = "trl-grpo"

    def __init__(self, env_id: str, policy: str = "default", reward_model: Any = "default", seed: int = 0,
                 **overrides: Any) -> None:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode
        from trl import GRPOConfig

        import textenv
        from agents.policy import LMPolicy
        from textenv.models import POLICY_DIR, load_causal_lm, load_tokenizer
        from textenv.tasks import get_task

        self.task = get_task(textenv.ENV_IDS[env_id])
        self.env_id, self.seed, self.reward_model, self.overrides = env_id, seed, reward_model, dict(overrides)
        if str(policy) == "default":
            path = POLICY_DIR
        elif str(policy) == "tiny":  # TRL reloads its KL reference from the model's path: give it one
            self._tmp = tempfile.TemporaryDirectory()
            path = Path(self._tmp.name)
            load_causal_lm("tiny").save_pretrained(str(path))
        else:
            path = Path(policy)
        self.path = path
        self.tokenizer = load_tokenizer(path if (path / "tokenizer_config.json").exists() else "default")
        self.envs = gym.make_vec(env_id, num_envs=64, autoreset_mode=AutoresetMode.DISABLED,
                                 tokenizer=self.tokenizer, reward_model=reward_model).unwrapped
        self.kwargs = {**trl_grpo_settings(), **overrides}
        self.batch = int(self.kwargs["per_device_train_batch_size"])
        self._out = tempfile.TemporaryDirectory()
        self.args_cls = GRPOConfig
        self.model = load_causal_lm(path)
        self.policy = LMPolicy(self.model, self.tokenizer, ref_model=load_causal_lm(path))
        self.episodes = 0
        self.history: list[dict[str, float]] = []

    def learn(self, total_episodes: int, progress: bool = True,
              callback: Callable[[Any, dict[str, float]], Any] | None = None) -> TRLGRPOAgent:
        from transformers import TrainerCallback
        from trl import GRPOTrainer

        from textenv.integrations.trl import to_trl

        agent = self
        steps = math.ceil(total_episodes / self.batch)
        n_prompts = steps * self.batch // int(self.kwargs["num_generations"])
        # prompts, the reward model and the gold scorer in TRL's convention, as a user would get them
        data = to_trl(self.task, n_prompts=n_prompts + 8, split="train", seed=self.seed, reward_model=self.reward_model)
        args = self.args_cls(output_dir=self._out.name, use_cpu=True, max_steps=steps, logging_steps=1,
                             report_to="none", save_strategy="no", disable_tqdm=not progress, seed=self.seed,
                             bf16=False, max_completion_length=self.envs.max_new_tokens,
                             reward_weights=data.reward_weights, **self.kwargs)

        class _Track(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                       **kw: Any) -> None:
                if not logs or "rewards/reward_model/mean" not in logs:
                    return
                agent.episodes = state.global_step * agent.batch
                length = float(logs.get("completions/mean_length", float("nan")))
                m = {"reward": float(logs["rewards/reward_model/mean"]),
                     "gold_score": float(logs["rewards/gold/mean"]),
                     "kl": float(logs.get("kl", float("nan"))) * length,  # TRL's is per token
                     "entropy": float(logs.get("entropy", float("nan"))),
                     "completions/mean_length": length,
                     "episodes": float(agent.episodes), "iteration": float(state.global_step),
                     "time_s": float(logs.get("step_time", float("nan")))}
                agent.history.append(m)
                if callback is not None:
                    callback(agent, m)

        trainer = GRPOTrainer(model=self.model, reward_funcs=data.reward_funcs, args=args,
                              train_dataset=data.dataset,
                              processing_class=self.tokenizer, callbacks=[_Track()])
        trainer.train()
        self.policy.model = trainer.model
        return self

    def evaluate(self, num_episodes: int = 64, split: str = "test", seed: int | None = None) -> dict[str, float]:
        """As :meth:`agents.base.Agent.evaluate`, on the same seed stream
        (:func:`~agents.contract.evaluation_seed` of this run's seed)."""
        from agents.contract import evaluation_seed
        from agents.rollout import evaluate_policy

        return evaluate_policy(self.policy, self.envs, num_episodes, split=split,
                               seed=evaluation_seed(self.seed) if seed is None else seed)

    def samples(self, n: int = 4, split: str = "test", seed: int | None = None) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs of the current model, seeded as :meth:`evaluate`."""
        from agents.contract import evaluation_seed
        from agents.rollout import sample_completions

        return sample_completions(self.policy, self.envs, n, split=split,
                                  seed=evaluation_seed(self.seed) if seed is None else seed)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``policy/`` and ``reference/`` (``save_pretrained``) and ``agent.json`` (the run's settings, with
        the reward-model spec), written atomically."""
        from agents.base import CHECKPOINT_MARKER
        from textenv import io
        from textenv.rewards.spec import describe_reward_model

        path = Path(path)
        state = {"agent": self.name, "env_id": self.env_id, "seed": self.seed, "kwargs": self.overrides,
                 "reward_model": describe_reward_model(self.reward_model), "episodes": self.episodes,
                 "history": self.history}
        with io.atomic_dir(path) as tmp:
            self.policy.model.save_pretrained(str(tmp / "policy"))
            self.tokenizer.save_pretrained(str(tmp / "policy"))
            if self.policy.ref_model is not None:
                self.policy.ref_model.save_pretrained(str(tmp / "reference"))
                self.tokenizer.save_pretrained(str(tmp / "reference"))
            (tmp / CHECKPOINT_MARKER).write_text(json.dumps(state, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any = None,
             env_kwargs: dict[str, Any] | None = None) -> TRLGRPOAgent:
        """Restore :meth:`save`'s checkpoint: the reference is its initial model, the policy the trained one.
        ``env`` (an env id) and ``env_kwargs`` (``{"reward_model": ...}``) replace the recorded ones."""
        from agents.base import CHECKPOINT_MARKER
        from textenv import io
        from textenv.models import load_causal_lm
        from textenv.rewards.spec import rebuild_reward_model

        if env is not None and not isinstance(env, str):
            raise ValueError(f"TRLGRPOAgent.load takes an env id, got {type(env).__name__}")
        path = io.previous_dir(Path(path))
        meta_file = path / CHECKPOINT_MARKER
        meta = io.read_json(meta_file, "agent checkpoint")
        reward_model = ((env_kwargs or {}).get("reward_model", "default") if env_kwargs is not None
                        else rebuild_reward_model(meta["reward_model"], str(meta_file)))
        agent = cls(env or meta["env_id"], str(path / "reference"), reward_model, seed=int(meta["seed"]),
                    **meta["kwargs"])
        agent.model = load_causal_lm(path / "policy")
        agent.policy.model = agent.model
        agent.episodes, agent.history = int(meta["episodes"]), list(meta["history"])
        return agent


def not_applicable(agent: str, env_id: str) -> str | None:
    """Why benchmark row ``agent`` cannot run on ``env_id`` (recorded in the JSON's ``skipped``), or None."""
    import textenv
    from textenv.tasks import get_task

    if agent == "trl-grpo" and get_task(textenv.ENV_IDS[env_id]).turn_separator is not None:
        return ("TRL's GRPOTrainer generates one completion per prompt and has no env to insert the other "
                "speaker's turns (textenv.integrations.trl.to_trl refuses multi-turn tasks)")
    return None


def make_agent(name: str, env_id: str, policy: str, reward_model: str, seed: int,
               overrides: dict[str, Any]) -> Any:
    """Build agent ``name`` on ``env_id`` with this benchmark's settings (on CPU; TRL's GRPO as a peer)."""
    if name == "trl-grpo":
        return TRLGRPOAgent(env_id, policy, reward_model, seed=seed, **overrides)
    from agents.registry import make_agent as make_our_agent

    return make_our_agent(ALIASES.get(name, name), env_id, policy, seed=seed, device="cpu", env_kwargs={"reward_model": reward_model},
                          **overrides)


def agent_config(agent: Any) -> dict[str, Any]:
    """The settings a run actually used (defaults and overrides), JSON-able."""
    import dataclasses

    if dataclasses.is_dataclass(getattr(agent, "config", None)):
        cfg = dataclasses.asdict(agent.config)
    else:
        cfg = dict(getattr(agent, "kwargs", {}))
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v) for k, v in cfg.items()}


def evaluate(agent: Any, num_episodes: int, seed: int) -> dict[str, float]:
    """``agent.evaluate(num_episodes, seed=...)`` on held-out prompts, with one evaluation seed per benchmark
    seed shared by every agent: seed ``s`` of every agent samples the same test prompts with the same random
    stream, so initial figures are identical across agents and final ones differ only through the policy."""
    from agents.contract import evaluation_seed

    return dict(agent.evaluate(num_episodes, split="test", seed=evaluation_seed(seed)))


def sb3_rollout_stats(agent: Any, seed: int, max_steps: int = SB3_STAT_STEPS) -> dict[str, float]:
    """Sequence KL (k1) to the initial LM and the policy's entropy on up to ``max_steps`` steps of SB3's
    rollout buffer (the rollout just collected, before SB3 trains on it)."""
    import torch

    buf = agent.model.rollout_buffer
    ids = np.asarray(buf.observations["input_ids"]).reshape(-1, buf.observations["input_ids"].shape[-1])
    mask = np.asarray(buf.observations["attention_mask"]).reshape(ids.shape)
    actions = np.asarray(buf.actions).reshape(-1)
    n_episodes = max(float(np.asarray(buf.episode_starts).sum()), 1.0)
    steps_per_episode = ids.shape[0] / n_episodes
    pick = np.random.default_rng(seed).permutation(ids.shape[0])[:max_steps]
    ids_t = torch.as_tensor(np.rint(ids[pick])).long()  # (B, L), right-padded
    mask_t = torch.as_tensor(np.rint(mask[pick])).long()  # (B, L)
    act = torch.as_tensor(np.rint(actions[pick])).long()  # (B,)
    last = mask_t.sum(1) - 1  # (B,)
    positions = (mask_t.cumsum(1) - 1).clamp(min=0)
    rows = torch.arange(ids_t.shape[0])

    def next_logp(model: Any) -> torch.Tensor:
        logits = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions).logits  # (B, L, V)
        return torch.log_softmax(logits[rows, last].float(), -1)  # (B, V)

    with torch.no_grad():
        logp, ref_logp = next_logp(agent.policy.model), next_logp(agent.policy.ref_model)
    k1 = (logp[rows, act] - ref_logp[rows, act]).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    return {"kl": float(k1) * steps_per_episode, "entropy": float(entropy)}


def _import_all(agent: str) -> None:
    """Import what a run needs before anything is timed or measured (transformers imports lazily, and that
    costs seconds on a loaded machine)."""
    from transformers import GPT2LMHeadModel  # noqa: F401

    import agents  # noqa: F401
    import agents.registry  # noqa: F401
    import textenv.env  # noqa: F401
    import textenv.models  # noqa: F401
    import textenv.vector  # noqa: F401

    if agent.startswith("sb3-"):
        import agents.sb3  # noqa: F401
    if agent == "trl-grpo":
        import datasets  # noqa: F401
        import trl  # noqa: F401


def run_one(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one (agent, env, seed) from scratch and return its record."""
    import torch

    name = spec["agent"]
    rss_before = maxrss_mb()
    t_start = time.perf_counter()
    agent = make_agent(name, spec["env"], spec["policy"], spec["reward_model"], seed, spec["overrides"])
    build_s = time.perf_counter() - t_start
    t = time.perf_counter()
    initial = evaluate(agent, int(spec["eval_episodes"]), seed)
    eval_s = time.perf_counter() - t
    stamps: list[dict[str, float]] = []
    overhead = 0.0
    next_stat = [0.0]
    t_learn = time.perf_counter()

    def on_iteration(ag: Any, metrics: dict[str, float]) -> None:
        nonlocal overhead
        now = time.perf_counter()
        stamp = {"wall_s": now - t_learn - overhead}
        # SB3 logs neither KL nor entropy: computed here (not counted as training time) about SB3_STAT_POINTS
        # times per run, not after every rollout (A2C's are a few episodes each)
        if name.startswith("sb3-") and ag.episodes >= next_stat[0]:
            stamp.update(sb3_rollout_stats(ag, seed * 7919 + len(stamps)))
            next_stat[0] = ag.episodes + int(spec["episodes"]) / SB3_STAT_POINTS
            overhead += time.perf_counter() - now
        stamps.append(stamp)

    torch.manual_seed(seed)
    agent.learn(int(spec["episodes"]), progress=False, callback=on_iteration)
    train_s = time.perf_counter() - t_learn - overhead
    t = time.perf_counter()
    final = evaluate(agent, int(spec["eval_episodes"]), seed)
    eval_s += time.perf_counter() - t
    keys = ("reward", "gold_score", "kl", "entropy", "completions/mean_length", *CURVE_EXTRA)
    curve = []
    for row, stamp in zip(agent.history, stamps):
        point = {"episodes": float(row["episodes"]), "wall_s": stamp["wall_s"]}
        for k in keys:
            v = stamp.get(k, row.get(k, float("nan")))
            point[k] = float(v) if v is not None else float("nan")
        curve.append(point)
    return {"agent": name, "env": spec["env"], "seed": seed, "status": "ok", "agent_config": agent_config(agent),
            "episodes": int(getattr(agent, "episodes", spec["episodes"])), "iterations": len(agent.history),
            "initial": initial, "final": final, "curve": curve,
            "train_s": train_s, "eval_s": eval_s, "build_s": build_s, "total_s": time.perf_counter() - t_start,
            "stats_overhead_s": overhead, "peak_rss_mb": maxrss_mb(), "peak_rss_before_mb": rss_before}


def _worker_main(spec_path: str, result_dir: str) -> int:
    """Run every seed of one (agent, env) in this process; each seed's record is written when it ends."""
    import gc

    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec["threads"]))
    _import_all(spec["agent"])
    rss_imports = maxrss_mb()
    for seed in spec["seeds"]:
        record = {**run_one(spec, seed), "rss_after_imports_mb": rss_imports}
        Path(result_dir, f"seed{seed}.json").write_text(json.dumps(_finite(record)))
        gc.collect()
    return 0


def _finite(x: Any) -> Any:
    """JSON without NaN/inf (strict parsers reject them): non-finite floats become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _relative_cost(spec: dict[str, Any]) -> float:
    """A rough relative cost of a row (measured on 2 CPU cores), to schedule the longest rows first."""
    per_token = {"sb3-ppo": 3.5, "sb3-a2c": 2.0, "nlpo": 1.3, "ppo": 1.0, "trl-grpo": 0.9}.get(spec["agent"], 0.5)
    import textenv
    from textenv.tasks import get_task

    task = get_task(textenv.ENV_IDS[spec["env"]])
    tokens = task.default_max_new_tokens * task.default_max_turns
    return len(spec["seeds"]) * spec["episodes"] * per_token * tokens


def run_in_subprocess(spec: dict[str, Any], workdir: Path, timeout: float | None = None) -> list[dict[str, Any]]:
    """Run the seeds of one (agent, env) in a fresh interpreter (its own peak RSS; no state shared with
    other rows). Seeds that did not finish come back as ``status: "error"`` records."""
    tag = f"{spec['agent']}-{spec['env']}"
    result_dir, spec_path, log_path = workdir / tag, workdir / f"{tag}.spec.json", workdir / f"{tag}.log"
    result_dir.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            rc: int | str = subprocess.run(
                [sys.executable, "-m", "benchmarks.learning", "--worker", str(spec_path), str(result_dir)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = f"timeout after {timeout} s"
    records = []
    tail = log_path.read_text()[-3000:] if log_path.exists() else ""
    for seed in spec["seeds"]:
        f = result_dir / f"seed{seed}.json"
        if f.exists():
            records.append(json.loads(f.read_text()))
        else:
            records.append({"agent": spec["agent"], "env": spec["env"], "seed": seed, "status": "error",
                            "error": f"exit {rc}: {tail}", "process_s": time.perf_counter() - t})
    return records


# ============================================================================================ the sweep
def versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch
    import transformers

    import textenv

    v = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
         "gymnasium": gymnasium.__version__, "stable_baselines3": stable_baselines3.__version__,
         "numpy": np.__version__, "textenv": textenv.__version__}
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                         timeout=10).stdout.strip()
    except Exception:
        pass
    return v


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except Exception:
        model = platform.processor()
    return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def code_fingerprint() -> str:
    """sha256 of the code a run executes (``agents/``, ``textenv/`` sources, this script): a commit that
    touches only docs or other benchmarks leaves it unchanged."""
    import hashlib

    h = hashlib.sha256()
    files = sorted([*REPO.glob("agents/**/*.py"), *REPO.glob("textenv/**/*.py"), Path(__file__).resolve()])
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def defaults_manifest() -> dict[str, Any] | None:
    """What identifies the shipped defaults the runs used: the manifest's hash, seed, scale and quality."""
    import hashlib

    from textenv.models import DATA_DIR

    path = DATA_DIR / "MANIFEST.json"
    if not path.exists():
        return None
    raw = path.read_bytes()
    m = json.loads(raw)
    return {"sha256": hashlib.sha256(raw).hexdigest(), **{k: m[k] for k in ("seed", "scale", "quality") if k in m}}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (env, agent): mean, std, min, max over seeds of the headline figures."""
    out = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["env"], r["agent"]), []).append(r)
    for (env, agent), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        row: dict[str, Any] = {"env": env, "agent": agent, "runs": len(rs), "ok": len(ok)}
        if ok:
            fields = {
                "reward_initial": [r["initial"]["reward"] for r in ok],
                "reward_final": [r["final"]["reward"] for r in ok],
                "gold_initial": [r["initial"]["gold_score"] for r in ok],
                "gold_final": [r["final"]["gold_score"] for r in ok],
                "kl_final": [r["final"]["kl"] for r in ok],
                "entropy_final": [r["final"]["entropy"] for r in ok],
                "length_final": [r["final"]["completions/mean_length"] for r in ok],
                "train_s": [r["train_s"] for r in ok],
                "peak_rss_mb": [r["peak_rss_mb"] for r in ok],
            }
            for k, vals in fields.items():
                a = np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
                std = float(np.nanstd(a, ddof=1)) if np.isfinite(a).sum() > 1 else 0.0  # sample std over seeds
                row[k] = {"mean": float(np.nanmean(a)), "std": std, "min": float(np.nanmin(a)),
                          "max": float(np.nanmax(a))}
            row["seeds_reward_up"] = sum(r["final"]["reward"] > r["initial"]["reward"] for r in ok)
            row["seeds_gold_up"] = sum(r["final"]["gold_score"] > r["initial"]["gold_score"] for r in ok)
            row["improved"] = bool(row["reward_final"]["mean"] > row["reward_initial"]["mean"]
                                   and row["gold_final"]["mean"] > row["gold_initial"]["mean"])
        else:
            row["improved"] = False
        out.append(row)
    return out


def _curve_phase(run: dict[str, Any], key: str, phase: str, weight: str | None = None) -> float:
    """Mean of ``key`` over the first (``phase="early"``) or last (``"late"``) quarter of a run's iterations,
    weighted by ``weight`` (e.g. the share of wrong answers, for their mean length); NaN when nothing is logged."""
    pts = [p for p in run.get("curve", []) if p.get(key) is not None and math.isfinite(p[key])]
    if not pts:
        return float("nan")
    q = max(1, len(pts) // 4)
    part = pts[:q] if phase == "early" else pts[-q:]
    w = np.asarray([p.get(weight) or 0.0 for p in part] if weight else [1.0] * len(part), dtype=np.float64)
    if w.sum() <= 0:
        return float("nan")
    return float(np.dot(w, [p[key] for p in part]) / w.sum())


def _seed_stats(values: list[float]) -> dict[str, float] | None:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not a.size:
        return None
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min": float(a.min()),
            "max": float(a.max())}


def comparisons(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The two published comparisons the report reproduces, per task, from the runs' curves and evaluations.

    - ``rloo_vs_ppo`` (Ahmadian et al. 2024, "Back to basics"): RLOO with k = 4 against PPO, final held-out
      reward and gold, and PPO's clip fraction (the share of tokens whose ratio left the clip range, per
      iteration) over training: the paper found RLOO at least as good and PPO's clip rarely active.
    - ``grpo_vs_dr_grpo`` (Liu et al. 2025, "Understanding R1-Zero-like training"): the mean length of wrong
      answers (gold score below ``agents.rollout.WRONG_BELOW``) in the first and the last quarter of training,
      for GRPO (per-sequence length normalisation and std scaling) and Dr. GRPO (neither): the paper found
      GRPO lengthens wrong answers.
    """
    ok = [r for r in runs if r.get("status") == "ok"]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in ok:
        by.setdefault((r["env"], r["agent"]), []).append(r)
    envs = list(dict.fromkeys(r["env"] for r in ok))

    def finals(rs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
        return _seed_stats([r["final"][key] for r in rs])

    out: dict[str, list[dict[str, Any]]] = {"rloo_vs_ppo": [], "grpo_vs_dr_grpo": []}
    for env in envs:
        ppo, rloo = by.get((env, "ppo")), by.get((env, "rloo"))
        if ppo and rloo:
            clip = [float(np.nanmean([p["clip_ratio"] for p in r["curve"] if p.get("clip_ratio") is not None]
                                     or [np.nan])) for r in ppo]
            clip_max = [max((p["clip_ratio"] for p in r["curve"] if p.get("clip_ratio") is not None), default=np.nan)
                        for r in ppo]
            out["rloo_vs_ppo"].append({
                "env": env, "seeds": min(len(ppo), len(rloo)),
                **{f"{name}_{k}": finals(rs, key) for name, rs in (("ppo", ppo), ("rloo", rloo))
                   for k, key in (("reward", "reward"), ("gold", "gold_score"), ("kl", "kl"))},
                "ppo_clip_fraction": _seed_stats(clip), "ppo_clip_fraction_max": _seed_stats(clip_max)})
        grpo, dr = by.get((env, "grpo")), by.get((env, "dr-grpo"))
        if grpo and dr:
            row: dict[str, Any] = {"env": env, "seeds": min(len(grpo), len(dr))}
            for name, rs in (("grpo", grpo), ("dr_grpo", dr)):
                for phase in ("early", "late"):
                    row[f"{name}_wrong_length_{phase}"] = _seed_stats(
                        [_curve_phase(r, "completions/mean_length_wrong", phase, "completions/wrong_fraction")
                         for r in rs])
                    row[f"{name}_wrong_fraction_{phase}"] = _seed_stats(
                        [_curve_phase(r, "completions/wrong_fraction", phase) for r in rs])
                row[f"{name}_gold"] = finals(rs, "gold_score")
                row[f"{name}_length"] = finals(rs, "completions/mean_length")
            out["grpo_vs_dr_grpo"].append(row)
    return out


def comparison_lines(comp: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The report's section on the two published comparisons (see :func:`comparisons`)."""
    if not comp.get("rloo_vs_ppo") and not comp.get("grpo_vs_dr_grpo"):
        return []
    lines = ["", "## Two published comparisons at this scale", ""]
    if comp.get("rloo_vs_ppo"):
        lines += ["**RLOO (k = 4) against PPO** (Ahmadian et al. 2024 found RLOO at least as good as PPO, and PPO's "
                  "clipping rarely active). PPO's clip fraction is the share of tokens whose probability ratio "
                  "left [1 - ε, 1 + ε] in an update, averaged over training (and its largest iteration).", "",
                  "| task | PPO gold | RLOO gold | PPO reward | RLOO reward | PPO KL | RLOO KL | PPO clip fraction "
                  "(mean, max) |", "|---|---|---|---|---|---|---|---|"]
        for r in comp["rloo_vs_ppo"]:
            task = r["env"].removeprefix("TextGen-").removesuffix("-v0")
            cf, cm = r["ppo_clip_fraction"], r["ppo_clip_fraction_max"]
            lines.append(f"| {task} | {_pm(r['ppo_gold'])} | {_pm(r['rloo_gold'])} | {_pm(r['ppo_reward'])} | "
                         f"{_pm(r['rloo_reward'])} | {_pm(r['ppo_kl'], '.2f')} | {_pm(r['rloo_kl'], '.2f')} | "
                         f"{_pm(cf)}, {cm['mean'] if cm else float('nan'):.3f} |")
        wins = sum(1 for r in comp["rloo_vs_ppo"] if r["rloo_gold"] and r["ppo_gold"]
                   and r["rloo_gold"]["mean"] >= r["ppo_gold"]["mean"])
        lines += ["", f"RLOO's mean final gold is at least PPO's on {wins} of {len(comp['rloo_vs_ppo'])} tasks.", ""]
    if comp.get("grpo_vs_dr_grpo"):
        lines += ["**GRPO against Dr. GRPO on the length of wrong answers** (Liu et al. 2025 found that GRPO's "
                  "per-sequence length normalisation lengthens wrong answers over training). A wrong answer is a "
                  "completion whose gold score is below 0.5; lengths are in tokens, averaged over the first and "
                  "the last quarter of each run's training batches.", "",
                  "| task | GRPO wrong length (early → late) | Dr. GRPO wrong length (early → late) | "
                  "GRPO wrong share (early → late) | Dr. GRPO wrong share (early → late) | GRPO gold | Dr. GRPO gold |",
                  "|---|---|---|---|---|---|---|"]
        for r in comp["grpo_vs_dr_grpo"]:
            task = r["env"].removeprefix("TextGen-").removesuffix("-v0")
            lines.append(
                f"| {task} | {_pm(r['grpo_wrong_length_early'], '.2f')} → {_pm(r['grpo_wrong_length_late'], '.2f')} | "
                f"{_pm(r['dr_grpo_wrong_length_early'], '.2f')} → {_pm(r['dr_grpo_wrong_length_late'], '.2f')} | "
                f"{_pm(r['grpo_wrong_fraction_early'], '.2f')} → {_pm(r['grpo_wrong_fraction_late'], '.2f')} | "
                f"{_pm(r['dr_grpo_wrong_fraction_early'], '.2f')} → {_pm(r['dr_grpo_wrong_fraction_late'], '.2f')} | "
                f"{_pm(r['grpo_gold'])} | {_pm(r['dr_grpo_gold'])} |")

        def growth(r: dict[str, Any], name: str) -> float:
            e, late = r[f"{name}_wrong_length_early"], r[f"{name}_wrong_length_late"]
            return late["mean"] - e["mean"] if e and late else float("nan")

        longer = [r for r in comp["grpo_vs_dr_grpo"] if growth(r, "grpo") > growth(r, "dr_grpo")]
        lines += ["", f"GRPO's wrong answers grew more (or shrank less) than Dr. GRPO's on {len(longer)} of "
                  f"{len(comp['grpo_vs_dr_grpo'])} tasks"
                  + (f" ({', '.join(r['env'].removeprefix('TextGen-').removesuffix('-v0') for r in longer)})"
                     if longer else "") + ".", ""]
    return lines


def _pm(s: dict[str, float] | None, fmt: str = ".3f") -> str:
    if not s:
        return "n/a"
    return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"


def per_env(value: int | dict[str, int], env: str) -> int:
    """A config figure (``episodes``, ``eval_episodes``) for ``env``: per-env dict, or one int for all."""
    return int(value[env]) if isinstance(value, dict) else int(value)


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    cfg, budget = result["config"], result["budget"]
    per_task = "; ".join(
        f"{env.removeprefix('TextGen-').removesuffix('-v0')}: **{per_env(cfg['episodes'], env)} episodes**, "
        f"evaluated on {per_env(cfg['eval_episodes'], env)}" for env in cfg["envs"])
    lines = [
        "# Learning benchmark (CPU)",
        "",
        f"Every agent trains the shipped default policy (`policy={cfg['policy']!r}`) against the task's shipped "
        f"learned reward model (`reward_model={cfg['reward_model']!r}`), {len(cfg['seeds'])} seed(s) "
        f"({', '.join(map(str, cfg['seeds']))}); initial and final policies are evaluated on held-out (`test`) "
        "prompts, every agent of a seed on the same prompts and random stream. Cells are mean ± std over seeds.",
        "",
        f"Budget per run: {per_task} held-out episodes; {budget['threads_per_run']} CPU thread(s), "
        f"{budget['parallel_runs']} run(s) at a time on {budget['machine']['cpu_count']} cores "
        f"({budget['machine']['cpu']}); the whole sweep took {budget['sweep_wall_s'] / 60:.1f} min"
        + (f" (in two goes: {result['resumed_from']['reused_runs']} runs kept from a first sweep of "
           f"{budget['previous_sweeps_wall_s'] / 60:.1f} min that was interrupted)" if "resumed_from" in result else "")
        + ". "
        "`train s` is the training wall time (evaluations excluded); `peak RSS` is the row's own process "
        "(each (task, agent) row is a fresh Python process running its seeds in turn).",
        "",
        f"Command: `{result.get('command', 'python -m benchmarks.learning')}`",
        "",
        "| task | agent | reward (initial → final) | gold (initial → final) | final KL | mean length | "
        "train s | peak RSS MB | up (reward / gold) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        task = row["env"].removeprefix("TextGen-").removesuffix("-v0")
        if not row["ok"]:
            lines.append(f"| {task} | {row['agent']} | failed | | | | | | 0/{row['runs']} |")
            continue
        mark = "" if row["improved"] else " **no**"
        lines.append(
            f"| {task} | {row['agent']} | {_pm(row['reward_initial'])} → {_pm(row['reward_final'])} | "
            f"{_pm(row['gold_initial'])} → {_pm(row['gold_final'])} | {_pm(row['kl_final'], '.2f')} | "
            f"{_pm(row['length_final'], '.1f')} | {_pm(row['train_s'], '.0f')} | {_pm(row['peak_rss_mb'], '.0f')} | "
            f"{row['seeds_reward_up']}/{row['ok']} / {row['seeds_gold_up']}/{row['ok']}{mark} |")
    failed = [r for r in result["runs"] if r.get("status") != "ok"]
    not_up = [r for r in result["summary"] if r["ok"] and not r["improved"]]
    lines += ["", "`up`: seeds whose final policy beats the initial one on held-out prompts (reward / gold); "
              "**no** marks a row whose mean reward or mean gold score did not rise."]
    if "changed_during_run" in result:
        lines += ["", "**Warning: the shipped defaults or the code (agents/, textenv/, this script) changed "
                  "while this sweep ran; rows are not comparable.**"]
    if not_up:
        lines += ["", "Rows that did not raise both the mean reward and the mean gold score: "
                  + ", ".join(f"{r['agent']} on {r['env']}" for r in not_up) + "."]
    if failed:
        lines += ["", "Failed runs: " + ", ".join(f"{r['agent']} on {r['env']} seed {r['seed']}" for r in failed)
                  + " (the error is in the JSON)."]
    for skip in result.get("skipped", []):
        lines += ["", f"No row for {skip['agent']} on {skip['env']}: {skip['reason']}."]
    trl = result.get("trl", {})
    if not trl.get("available", False):
        lines += ["", f"TRL GRPOTrainer: skipped ({trl.get('reason', 'not requested')})."]
    lines += comparison_lines(result.get("comparisons", {}))
    plots = result.get("plots", [])
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots) + "."]
    lines += ["", f"Raw data, curves, hyperparameters and versions: [{JSON_NAME}]({JSON_NAME}).", ""]
    path.write_text("\n".join(lines))


# ============================================================================================ plots
def _curves_on_grid(runs: list[dict[str, Any]], key: str, grid: np.ndarray) -> np.ndarray | None:
    """Each run's curve of ``key``, lightly smoothed, interpolated on ``grid`` (episodes): ``(S, G)``."""
    ys = []
    for r in runs:
        pts = [(p["episodes"], p[key]) for p in r.get("curve", []) if p.get(key) is not None]
        if not pts:
            continue
        x, y = np.asarray(pts, dtype=np.float64).T
        k = max(1, len(y) // 10) | 1  # centred running mean over ~10% of the points (odd window)
        if k > 1:
            y = np.convolve(np.pad(y, (k // 2, k // 2), mode="edge"), np.ones(k) / k, mode="valid")
        ys.append(np.interp(grid, x, y))
    return np.asarray(ys) if ys else None


def write_plots(out: Path, result: dict[str, Any]) -> list[str]:
    """``learning-<task>.png`` per task and ``learning-gold-vs-reward.png``; returns the file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs = [r for r in result["runs"] if r.get("status") == "ok"]
    envs = [e for e in result["config"]["envs"] if any(r["env"] == e for r in runs)]
    agents = [a for a in result["config"]["agents"] if any(r["agent"] == a for r in runs)]
    colors = {a: plt.get_cmap("tab20")(i) for i, a in enumerate(AGENTS)}
    files = []

    def env_grid(env: str) -> np.ndarray:  # from the first logged batch: nothing is drawn before data exists
        firsts = [r["curve"][0]["episodes"] for r in runs if r["env"] == env and r.get("curve")]
        return np.linspace(min(firsts, default=0.0), per_env(result["config"]["episodes"], env), 65)

    for env in envs:
        grid = env_grid(env)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in ((axes[0], "reward", "reward-model score (proxy)"), (axes[1], "gold_score", "gold score")):
            for agent in agents:
                rs = [r for r in runs if r["env"] == env and r["agent"] == agent]
                ys = _curves_on_grid(rs, key, grid)
                if ys is None:
                    continue
                ax.plot(grid, ys.mean(0), color=colors[agent], label=agent)
                ax.fill_between(grid, ys.min(0), ys.max(0), color=colors[agent], alpha=0.15, linewidth=0)
                fin = [r["final"][key] for r in rs]
                ax.errorbar([grid[-1] * 1.03], [np.mean(fin)], yerr=[[np.mean(fin) - min(fin)], [max(fin) - np.mean(fin)]],
                            fmt="o", color=colors[agent], ms=4, capsize=2)
            init = [r["initial"][key] for r in runs if r["env"] == env]
            ax.axhline(float(np.mean(init)), color="grey", ls="--", lw=1, label="initial policy (held-out)")
            ax.set_xlabel("episodes")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{env}: training batches (mean over seeds, min/max band, smoothed);\n"
                     "dots: final policy on held-out prompts (mean, min/max over seeds)", fontsize=9)
        fig.tight_layout()
        name = f"learning-{env.removeprefix('TextGen-').removesuffix('-v0').lower()}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(name)
    if envs:
        fig, axes = plt.subplots(1, len(envs), figsize=(max(4.6 * len(envs), 9.0), 4.2), squeeze=False)
        for ax, env in zip(axes[0], envs):
            grid = env_grid(env)
            for agent in agents:
                rs = [r for r in runs if r["env"] == env and r["agent"] == agent]
                xs, ys = _curves_on_grid(rs, "reward", grid), _curves_on_grid(rs, "gold_score", grid)
                if xs is not None and ys is not None:
                    ax.plot(xs.mean(0), ys.mean(0), color=colors[agent], alpha=0.35, lw=1)
                for r in rs:
                    ax.annotate("", xy=(r["final"]["reward"], r["final"]["gold_score"]),
                                xytext=(r["initial"]["reward"], r["initial"]["gold_score"]),
                                arrowprops={"arrowstyle": "->", "color": colors[agent], "lw": 1})
                ax.scatter([r["final"]["reward"] for r in rs], [r["final"]["gold_score"] for r in rs],
                           color=colors[agent], s=14, label=agent, zorder=3)
            init = [r for r in runs if r["env"] == env]
            ax.scatter([r["initial"]["reward"] for r in init], [r["initial"]["gold_score"] for r in init],
                       facecolors="none", edgecolors="black", s=20, label="initial", zorder=3)
            ax.set_title(env, fontsize=9)
            ax.set_xlabel("reward-model score (proxy)")
            ax.set_ylabel("gold score")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("gold vs proxy reward: arrows go from the initial to the final policy (held-out, per seed);\n"
                     "faint lines: training batches (mean over seeds). Right without up = reward hacking", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "learning-gold-vs-reward.png", dpi=100)
        plt.close(fig)
        files.append("learning-gold-vs-reward.png")
    return files


def write_report(out: Path, result: dict[str, Any]) -> None:
    result["summary"] = summarize(result["runs"])
    result["comparisons"] = comparisons(result["runs"])
    result["plots"] = write_plots(out, result)
    write_json(out, result)
    write_markdown(out / MD_NAME, result)


def write_json(out: Path, result: dict[str, Any]) -> None:
    """Write ``result`` to ``out/learning-cpu.json`` atomically (a sweep still running writes what has finished
    with ``"partial": true``, and no report or plots)."""
    tmp = out / f".{JSON_NAME}.tmp"
    tmp.write_text(json.dumps(_finite(result), indent=1) + "\n")
    os.replace(tmp, out / JSON_NAME)


# ============================================================================================ main
def _resumable_runs(out: Path, result: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """``--resume``: the finished runs of the sweep in ``out`` when it had the same settings and defaults."""
    path = out / JSON_NAME
    if not path.exists():
        return {}
    prev = json.loads(path.read_text())
    keys = ("policy", "reward_model", "quick", "hyperparams")
    prev_cfg, cfg = prev.get("config", {}), result["config"]
    differ = [k for k in keys if prev_cfg.get(k) != cfg[k]]
    for k in ("episodes", "eval_episodes"):  # per task: only the tasks both sweeps have must agree
        common = set(prev_cfg.get("envs", [])) & set(cfg["envs"])
        if k not in prev_cfg or any(per_env(prev_cfg[k], env) != per_env(cfg[k], env) for env in common):
            differ.append(k)
    if differ:
        raise ValueError(f"--resume: {str(path)!r} was run with other {', '.join(differ)}; drop --resume")
    if (prev.get("defaults_manifest") or {}).get("sha256") != (result["defaults_manifest"] or {}).get("sha256"):
        raise ValueError(f"--resume: the shipped defaults changed since {str(path)!r} was written; drop --resume")
    if prev.get("code_sha256") != result["code_sha256"]:
        raise ValueError(f"--resume: the code (agents/, textenv/, this script) changed since {str(path)!r} was "
                         "written; drop --resume")
    runs = {(r["agent"], r["env"], r["seed"]): r for r in prev.get("runs", []) if r.get("status") == "ok"}
    result["resumed_from"] = {"created": prev.get("created"), "git_commit": prev.get("versions", {}).get("git_commit"),
                              "reused_runs": len(runs), "sweep_wall_s": prev.get("budget", {}).get("sweep_wall_s")}
    result["budget"]["previous_sweeps_wall_s"] = float(prev.get("budget", {}).get("sweep_wall_s") or 0.0)
    return runs


def run_budget(env: str, episodes: int | None = None, eval_episodes: int | None = None,
               quick: bool = False) -> tuple[int, int]:
    """(training episodes, evaluation episodes) of one run on ``env``: the flags when given, else 32 and 16
    with ``--quick``, else :data:`TASK_BUDGET` (or the defaults for an env not in it)."""
    task = TASK_BUDGET.get(env, {})
    if episodes is None:
        episodes = 32 if quick else task.get("episodes", DEFAULT_EPISODES)
    if eval_episodes is None:
        eval_episodes = 16 if quick else task.get("eval_episodes", DEFAULT_EVAL_EPISODES)
    return episodes, eval_episodes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=None, help="episodes per run, every task (default: per task, "
                   "TASK_BUDGET; --quick: 32)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default 3; --quick: 1)")
    p.add_argument("--agents", default=",".join(AGENTS), help="comma-separated, from " + ", ".join(AGENTS))
    p.add_argument("--envs", default=",".join(ENVS), help="comma-separated env ids, or a group: "
                   + "; ".join(f"{k} = {','.join(v)}" for k, v in ENV_GROUPS.items()))
    p.add_argument("--quick", action="store_true", help="a smoke run: 32 episodes, batch 16, 16 eval episodes, 1 seed")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--policy", default="default", help="'default', 'tiny' or a model directory")
    p.add_argument("--reward-model", default="default", help="'default', 'gold' or a reward-model directory")
    p.add_argument("--eval-episodes", type=int, default=None, help="held-out episodes per evaluation, every task "
                   "(default: per task, TASK_BUDGET; --quick: 16)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each its own process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a row's process is killed")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of the JSON in --out (same "
                   "settings and defaults) and run only the missing or failed ones")
    p.add_argument("--report-only", action="store_true", help="rebuild table and plots from the JSON in --out")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    out = Path(a.out)
    if a.report_only:
        result = json.loads((out / JSON_NAME).read_text())
        write_report(out, result)
        return result
    agents_ = [s.strip() for s in a.agents.split(",") if s.strip()]
    envs = [e for s in a.envs.split(",") if s.strip() for e in ENV_GROUPS.get(s.strip(), (s.strip(),))]
    for name in agents_:
        if name not in AGENTS:
            raise ValueError(f"unknown agent {name!r}; choose from {', '.join(AGENTS)}")
    import textenv

    for env in envs:
        if env not in textenv.ENV_IDS:
            raise ValueError(f"unknown env {env!r}; choose from {', '.join(textenv.ENV_IDS)}")
    n_seeds = a.seeds if a.seeds is not None else (1 if a.quick else 3)
    for flag, v in (("--episodes", a.episodes), ("--seeds", n_seeds), ("--eval-episodes", a.eval_episodes),
                    ("--jobs", a.jobs), ("--threads", a.threads)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} must be >= 1, got {v}")
    budgets = {env: run_budget(env, a.episodes, a.eval_episodes, a.quick) for env in envs}
    episodes = {env: b[0] for env, b in budgets.items()}
    eval_episodes = {env: b[1] for env, b in budgets.items()}
    trl = trl_status()
    if "trl-grpo" in agents_ and not trl["available"]:
        print(f"skipping trl-grpo: {trl['reason']}")
        agents_.remove("trl-grpo")
    overrides: dict[str, dict[str, Any]] = {name: dict(HYPERPARAMS[name]) for name in agents_}
    if a.quick:
        for name in ("reinforce", "ppo", "grpo", "dr-grpo", "rloo"):
            if name in overrides:
                overrides[name]["batch_size"] = QUICK_BATCH
        if "trl-grpo" in overrides:
            overrides["trl-grpo"]["per_device_train_batch_size"] = QUICK_BATCH
    seeds = list(range(n_seeds))
    # one process per (agent, env) row, its seeds in sequence: the imports (seconds each) are paid once per row
    why_not = {(env, ag): not_applicable(ag, env) for env in envs for ag in agents_}
    skipped = [{"agent": ag, "env": env, "reason": why} for (env, ag), why in why_not.items() if why is not None]
    pairs = [pair for pair, why in why_not.items() if why is None]
    specs = [{"agent": ag, "env": env, "seeds": seeds, "episodes": episodes[env], "eval_episodes": eval_episodes[env],
              "policy": a.policy, "reward_model": a.reward_model, "threads": a.threads, "overrides": overrides[ag]}
             for env, ag in pairs]
    result: dict[str, Any] = {
        "benchmark": "learning",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m benchmarks.learning", *(argv if argv is not None else sys.argv[1:])]),
        "config": {"episodes": episodes, "seeds": seeds, "agents": agents_, "envs": envs, "policy": a.policy,
                   "reward_model": a.reward_model, "eval_episodes": eval_episodes, "eval_split": "test",
                   "quick": a.quick, "hyperparams": overrides,
                   "curves": "per training iteration, from agent.history; x = episodes and wall_s (training "
                             "time so far, evaluations excluded)",
                   "peak_rss": "each (agent, env) row runs in its own Python subprocess, its seeds one after "
                               "the other (agent freed between seeds); a run's peak_rss_mb is that process's "
                               "ru_maxrss (RUSAGE_SELF) at the end of the run, i.e. the peak over this seed and "
                               "the row's earlier seeds; rss_after_imports_mb is the same figure after the "
                               "imports, before any model is loaded"},
        "budget": {"episodes_per_run": episodes, "eval_episodes_per_evaluation": eval_episodes,
                   "threads_per_run": a.threads, "parallel_runs": a.jobs, "machine": machine(), "device": "cpu"},
        "versions": {**versions(), **({"trl": trl["version"]} if trl["available"] else {})},
        "defaults_manifest": defaults_manifest(),
        "code_sha256": code_fingerprint(),
        "trl": trl,
        "skipped": skipped,
        "runs": [],
    }
    reused = _resumable_runs(out, result) if a.resume else {}
    for spec in specs:  # what a resumed sweep already has is not run again
        spec["seeds"] = [s for s in spec["seeds"] if (spec["agent"], spec["env"], s) not in reused]
    todo = [spec for spec in specs if spec["seeds"]]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lock = threading.Lock()
    finished: list[dict[str, Any]] = []
    n_runs = sum(len(spec["seeds"]) for spec in todo)
    with tempfile.TemporaryDirectory(prefix="textenv-learning-") as tmp:
        def one(spec: dict[str, Any]) -> list[dict[str, Any]]:
            records = run_in_subprocess(spec, Path(tmp), a.timeout)
            with lock:
                for r in records:
                    r["hyperparams"] = spec["overrides"]
                    finished.append(r)
                    head = f"[{len(finished)}/{n_runs} {time.perf_counter() - t0:5.0f}s] {r['agent']:<9} {r['env']:<22} seed {r['seed']}"
                    if r["status"] == "ok":
                        i, f = r["initial"], r["final"]
                        print(f"{head}: reward {i['reward']:.3f} -> {f['reward']:.3f}, gold {i['gold_score']:.3f} -> "
                              f"{f['gold_score']:.3f}, kl {f['kl']:.2f}, train {r['train_s']:.0f}s, "
                              f"rss {r['peak_rss_mb']:.0f} MB", flush=True)
                    else:
                        print(f"{head} FAILED: {r['error'][-800:]}", flush=True)
                # what has finished so far, so that a sweep cut off part-way resumes (--resume) from it
                write_json(out, {**result, "partial": True, "runs": [*reused.values(), *finished],
                                 "budget": {**result["budget"], "sweep_wall_s": time.perf_counter() - t0
                                            + result["budget"].get("previous_sweeps_wall_s", 0.0)}})
            return records

        # longest rows first, so that parallel jobs end together; the JSON keeps the canonical order
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            new_runs = [r for records in pool.map(one, sorted(todo, key=_relative_cost, reverse=True))
                        for r in records]
    by_key = {**reused, **{(r["agent"], r["env"], r["seed"]): r for r in new_runs}}
    result["runs"] = [by_key[(ag, env, s)] for env, ag in pairs for s in seeds]
    result["budget"]["sweep_wall_s"] = time.perf_counter() - t0 + result["budget"].get("previous_sweeps_wall_s", 0.0)
    end_state = {"defaults": defaults_manifest(), "code_sha256": code_fingerprint()}
    if end_state["defaults"] != result["defaults_manifest"] or end_state["code_sha256"] != result["code_sha256"]:
        # the rows would mix two sets of artifacts or two versions of the code: say so loudly
        result["changed_during_run"] = end_state
        print("WARNING: the shipped defaults or the code changed during the sweep; the rows are not "
              "comparable, run it again", flush=True)
    result["budget"]["machine"]["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    ok = [r for r in result["runs"] if r.get("status") == "ok"]
    if ok:
        result["budget"]["train_s_per_run_mean"] = float(np.mean([r["train_s"] for r in ok]))
        result["budget"]["total_s_per_run_mean"] = float(np.mean([r["total_s"] for r in ok]))
    write_report(out, result)
    print(f"wrote {out / JSON_NAME}, {out / MD_NAME} and {len(result['plots'])} plot(s) "
          f"in {result['budget']['sweep_wall_s'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":  # one row, started by run_in_subprocess
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    main()
