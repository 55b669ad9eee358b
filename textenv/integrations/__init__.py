"""Bridges to other libraries' conventions (each module imports its library lazily or on import).

- :mod:`textenv.integrations.trl`: a task or env as TRL's dataset and ``reward_funcs`` (:func:`~textenv.integrations.trl.to_trl`).
"""
