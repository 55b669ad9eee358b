"""The agent registry: every learner ``textenv train --agent NAME`` and the learning benchmark can build.

A native :class:`~agents.base.Agent` subclass registers itself by its ``name`` when it is defined
(``Agent.__init_subclass__``); this module imports the shipped ones so :data:`AGENTS` holds them. Adding an
agent is one module with one class, imported here; an adapter (like the SB3 one) is a name handled by
:func:`make_agent`.
"""

from __future__ import annotations

from typing import Any

from agents import best_of_n, dapo, grpo, gspo, nlpo, ppo, reinforce, reinforce_pp, rloo  # noqa: F401  (defining the classes registers them)
from agents.base import AGENT_CLASSES, Agent

#: the native agents by name (the registry itself: later subclasses appear here too)
AGENTS: dict[str, type[Agent]] = AGENT_CLASSES
#: stable-baselines3 algorithms run through :class:`agents.sb3_agent.SB3Agent`
SB3_AGENTS = ("sb3-ppo", "sb3-a2c")
#: episodes of the default ``textenv train`` per agent: about 3 minutes on 2 CPU cores with the default policy
DEFAULT_EPISODES = {"ppo": 3072, "grpo": 3072, "reinforce": 3072, "rloo": 3072, "sb3-ppo": 1024, "sb3-a2c": 1024,
                    "best-of-n": 1024, "dapo": 3072, "gspo": 3072, "reinforce-pp": 3072,
                    "nlpo": 3072}


def agent_names() -> list[str]:
    """Every name :func:`make_agent` takes."""
    return [*AGENTS, *SB3_AGENTS]


def get_agent_class(name: str) -> type[Agent]:
    """The native agent class for ``name`` (``"ppo"``, ``"grpo"``, ``"reinforce"``, ``"rloo"``)."""
    try:
        return AGENTS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}") from None


def make_agent(name: str, env: str = "TextGen-v0", policy: str = "default", seed: int = 0, device: str = "auto",
               env_kwargs: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """The agent ``name`` (``ppo``, ``grpo``, ``reinforce``, ``rloo``, ``sb3-ppo`` or ``sb3-a2c``) on ``env``,
    as ``textenv train --agent name`` builds it; ``overrides`` are config fields (or SB3 arguments)."""
    if name in SB3_AGENTS:
        from agents.sb3_agent import SB3Agent

        return SB3Agent(name.split("-", 1)[1], env, policy, seed=seed, device=device, env_kwargs=env_kwargs,
                        **overrides)
    return get_agent_class(name)(env, policy=policy, seed=seed, device=device, env_kwargs=env_kwargs, **overrides)
