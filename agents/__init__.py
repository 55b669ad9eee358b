"""The learning side of textenv: an LM policy and policy-gradient agents that train it in `TextGen-v0`.

One interface for every agent::

    from agents import PPO
    agent = PPO("TextGen-v0", policy="default").learn(total_episodes=1024)
    agent.evaluate(64)          # {"reward", "gold_score", "kl", "entropy", "completions/mean_length"}
    agent.save("runs/ppo"); PPO.load("runs/ppo")

stable-baselines3 runs unmodified through :mod:`agents.sb3`.
"""

from __future__ import annotations

from agents.base import Agent, AgentConfig
from agents.grpo import GRPO, GRPOConfig
from agents.policy import LMPolicy
from agents.ppo import PPO, PPOConfig
from agents.registry import AGENTS, get_agent_class, make_agent
from agents.reinforce import REINFORCE, REINFORCEConfig
from agents.rloo import RLOO, RLOOConfig
from agents.rollout import RolloutBatch, collect_rollout

__all__ = ["AGENTS", "GRPO", "PPO", "REINFORCE", "RLOO", "Agent", "AgentConfig", "GRPOConfig", "LMPolicy",
           "PPOConfig", "REINFORCEConfig", "RLOOConfig", "RolloutBatch", "collect_rollout", "get_agent_class",
           "make_agent"]
