"""The ``fedtwin`` command (typer + rich).

Exit codes: 0 ok, 1 failure, 2 bad input. User errors are one line on stderr, never a traceback.
"""

from fedtwin.cli.app import app, main

__all__ = ["app", "main"]
