"""textenv: text generation as a Gymnasium environment.

``import textenv`` registers ``TextGen-v0`` (the sentiment task) and one id per built-in task
(``TextGen-Sentiment-v0``, ``TextGen-Arithmetic-v0``, ``TextGen-Keywords-v0``, ``TextGen-Translation-v0``,
``TextGen-Dialogue-v0``, ...). Tasks whose shipped reward model is not built yet need ``reward_model="gold"``
(or another model). Entry points are strings,
so this import stays light and ``gym.make("textenv:TextGen-v0")`` works without it.

Example:
    >>> import gymnasium as gym, textenv
    >>> env = gym.make("TextGen-v0")
    >>> envs = gym.make_vec("TextGen-v0", num_envs=64)
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

ENV_IDS = {
    "TextGen-v0": "sentiment",
    "TextGen-Sentiment-v0": "sentiment",
    "TextGen-Arithmetic-v0": "arithmetic",
    "TextGen-Keywords-v0": "keywords",
    "TextGen-Translation-v0": "translation",
    "TextGen-Summarization-v0": "summarization",
    "TextGen-QA-v0": "qa",
    "TextGen-Dialogue-v0": "dialogue",
    "TextGen-Detox-v0": "detox",
}


def _register() -> None:
    for env_id, task in ENV_IDS.items():
        if env_id in registry:
            continue
        register(
            id=env_id,
            entry_point="textenv.env:TextGenEnv",
            vector_entry_point="textenv.vector:TextGenVectorEnv",
            kwargs={"task": task},
            # Gymnasium's PassiveEnvChecker marks its first reset as checked before calling it, so after a
            # first reset that raised (a refused prompt) every later step() fails inside the checker with
            # "cannot unpack non-iterable NoneType". The env is checked by our tests with Gymnasium's and
            # SB3's full checkers instead (tests/test_defaults.py).
            disable_env_checker=True,
        )


_register()

__all__ = ["ENV_IDS", "__version__"]
