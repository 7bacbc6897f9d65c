"""``python -m distill4d.cli``: the ``distill4d`` command."""

from . import main

raise SystemExit(main())
