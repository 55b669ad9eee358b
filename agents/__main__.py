"""``python -m agents``: the ``textenv`` console script (:mod:`agents.cli`)."""

from agents.cli import main

raise SystemExit(main())
