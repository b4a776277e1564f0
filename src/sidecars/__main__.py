"""``python -m sidecars``: the same as the ``sidecars`` command."""

from ._cli import main

raise SystemExit(main())
