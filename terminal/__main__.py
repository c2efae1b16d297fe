"""``python -m terminal``: chat with Parley from a terminal."""

from terminal.cli import main

raise SystemExit(main())
