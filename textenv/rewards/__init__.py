"""Reward models: the protocol, score checking, adapters and ``resolve_reward_model``.

Every reward model is called as ``reward_model(prompts, completions)`` and returns one float per pair;
see DESIGN.md, "Reward models", for the forms ``reward_model=`` accepts.
"""

from __future__ import annotations

from textenv.rewards.adapters import CallableReward, CompositeReward, GoldReward
from textenv.rewards.base import (
    INPUT_FORMAT,
    REWARD_METADATA_FILE,
    RewardModel,
    RewardModelError,
    check_inputs,
    check_scores,
    reward_name,
)
from textenv.rewards.ensemble import Ensemble
from textenv.rewards.hf import HFClassifierReward, LearnedRewardModel, read_reward_metadata
from textenv.rewards.resolve import load_reward_model, resolve_reward_model
from textenv.rewards.toxicity import ToxicityReward

__all__ = [
    "INPUT_FORMAT",
    "REWARD_METADATA_FILE",
    "CallableReward",
    "CompositeReward",
    "Ensemble",
    "GoldReward",
    "HFClassifierReward",
    "LearnedRewardModel",
    "RewardModel",
    "RewardModelError",
    "ToxicityReward",
    "check_inputs",
    "check_scores",
    "load_reward_model",
    "read_reward_metadata",
    "resolve_reward_model",
    "reward_name",
]
