"""``python -m spoolatp``: the ``spoolatp`` command."""

from spoolatp.cli import main

raise SystemExit(main())
