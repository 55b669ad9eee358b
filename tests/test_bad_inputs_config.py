"""Agent configs refuse values of the wrong type or non-finite numbers at construction, naming the field and
the value, instead of failing later in ``learn`` (issue 10, items 14 and 19)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.registry import AGENTS


@pytest.mark.parametrize("name", sorted(AGENTS))
@pytest.mark.parametrize("field, value, message", [
    ("seed", 1.5, "seed must be an integer, got 1.5"),
    ("seed", -1, "seed must be an integer >= 0, got -1"),
    ("batch_size", True, "batch_size must be an integer, got True"),
    ("learning_rate", math.inf, "learning_rate must be a finite number, got inf"),
    ("learning_rate", math.nan, "learning_rate must be a finite number, got nan"),
    ("temperature", math.inf, "temperature must be a finite number, got inf"),
    ("max_grad_norm", math.inf, "max_grad_norm must be a finite number, got inf"),
    ("kl_coef", "0.1", "kl_coef must be a finite number, got '0.1'"),
])
def test_every_agent_config_refuses_bad_values(name, field, value, message):
    with pytest.raises(ValueError) as info:
        AGENTS[name].Config(**{field: value})
    assert str(info.value) == message


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_numpy_scalars_and_ints_for_floats_are_accepted(name):
    cfg = AGENTS[name].Config(seed=np.int64(3), learning_rate=1, batch_size=np.int64(16))
    assert cfg.seed == 3 and type(cfg.seed) is int and cfg.learning_rate == 1.0 and type(cfg.learning_rate) is float


def test_optional_float_fields_take_none_or_a_finite_number():
    ppo = AGENTS["ppo"].Config
    assert ppo(target_kl=None).target_kl is None
    assert ppo(target_kl=0.5).target_kl == 0.5
    with pytest.raises(ValueError, match="target_kl must be a finite number, got inf"):
        ppo(target_kl=math.inf)
