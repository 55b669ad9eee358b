"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").

Each prompt gets ``group_size`` completions in the same batch; completion i's baseline is the mean return
of the other ``group_size - 1``: ``A_i = R_i - mean_{j != i} R_j``. Critic-free, unbiased.
"""

from __future__ import annotations

import dataclasses

import torch

from agents.core import rloo_advantages
from agents.reinforce import REINFORCE, REINFORCEConfig


@dataclasses.dataclass
class RLOOConfig(REINFORCEConfig):
    """RLOO hyperparameters: ``group_size`` completions per prompt, dividing ``batch_size``."""

    group_size: int = 4  # completions per prompt, dividing batch_size

    def validate(self) -> None:
        super().validate()
        self.check_group_size()


class RLOO(REINFORCE):
    """REINFORCE with the leave-one-out baseline over groups of completions of one prompt.

    Example:
        >>> agent = RLOO("TextGen-v0", batch_size=32, group_size=4).learn(256)
    """

    Config = RLOOConfig
    config: RLOOConfig
    name = "rloo"

    def advantages(self, returns: torch.Tensor) -> torch.Tensor:
        return rloo_advantages(returns, self.config.group_size)
