"""The learning side of textenv: an LM policy and policy-gradient agents that train it in `TextGen-v0`.

One interface for every agent::

    from agents import PPO
    agent = PPO("TextGen-v0", policy="default").learn(total_episodes=1024)
    agent.evaluate(64)          # {"reward", "gold_score", "kl", "entropy", "completions/mean_length"}
    agent.save("runs/ppo"); PPO.load("runs/ppo")

Every learner (these, :class:`agents.sb3_agent.SB3Agent`, the benchmark's TRL peer) satisfies
:class:`agents.contract.Learner` and evaluates on the seed stream :func:`agents.contract.evaluation_seed`.
stable-baselines3 runs unmodified through :mod:`agents.sb3`; the ``textenv`` console script is :mod:`agents.cli`.
"""

from __future__ import annotations

from agents.base import Agent, AgentConfig
from agents.best_of_n import BestOfN, BestOfNConfig
from agents.contract import Learner, evaluation_seed
from agents.dapo import DAPO, DAPOConfig
from agents.grpo import GRPO, GRPOConfig
from agents.gspo import GSPO, GSPOConfig
from agents.nlpo import NLPO, NLPOConfig
from agents.policy import LMPolicy
from agents.ppo import PPO, PPOConfig
from agents.registry import AGENTS, get_agent_class, make_agent
from agents.reinforce import REINFORCE, REINFORCEConfig
from agents.reinforce_pp import REINFORCEPP, REINFORCEPPConfig
from agents.rloo import RLOO, RLOOConfig
from agents.rollout import RolloutBatch, collect_rollout

__all__ = ["AGENTS", "DAPO", "GSPO", "NLPO", "NLPOConfig", "REINFORCEPP", "BestOfN", "BestOfNConfig", "DAPOConfig", "GSPOConfig",
           "REINFORCEPPConfig", "GRPO", "PPO", "REINFORCE", "RLOO", "Agent", "AgentConfig", "GRPOConfig", "LMPolicy", "Learner",
           "PPOConfig", "REINFORCEConfig", "RLOOConfig", "RolloutBatch", "collect_rollout", "evaluation_seed",
           "get_agent_class", "make_agent"]
