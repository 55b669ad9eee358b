"""``python -m textenv`` is the ``textenv`` command."""

from textenv.cli import main

raise SystemExit(main())
