"""``python -m textenv``: the stage 1-3 commands (the full ``textenv`` command, RL included, is ``python -m agents``)."""

from textenv.cli import main

raise SystemExit(main())
